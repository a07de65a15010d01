"""StreamOrderUpdates over gRPC against real PostgreSQL: where a stream may start. An
after_sequence the account has not reached is refused at once (OUT_OF_RANGE, with the latest
sequence to start from) instead of a stream that stays silent; the latest itself, or one a
client was just sent while the account goes on changing, is never refused."""
from __future__ import annotations

import asyncio
import contextlib
import uuid
from decimal import Decimal

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from meshkit.server import App, create_server
from meshkit.status import error_info
from order_svc.adapters.notifications import UpdateNotifier
from order_svc.domain.model import OrderRequest, OrderType, Side, Status, TimeInForce
from meshkit.status import POSITION_HEADER
from order_svc.entrypoints.grpc_server import OrderServicer
from order_svc.service_layer import handlers
from stockmesh.order.v1 import order_service_pb2 as pb, order_service_pb2_grpc
from tests.support.crash import identity
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

READ = 15  # seconds: only so that a stream that never answers fails the test instead of hanging it


@contextlib.asynccontextmanager
async def order_service(order_deps, database_url, **servicer_options):
    """order_svc's OrderService on a real gRPC server (port 0), with its live-update listener:
    a stub of it."""
    notifier = UpdateNotifier(database_url)
    app = App(name="order_svc", servicers=[(order_service_pb2_grpc.add_OrderServiceServicer_to_server,
                                            OrderServicer(order_deps, notifier, **servicer_options),
                                            "stockmesh.order.v1.OrderService")])
    server, port, _ = await create_server("127.0.0.1:0", app)
    await server.start()
    listening = asyncio.create_task(notifier.run())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield order_service_pb2_grpc.OrderServiceStub(ch)
    finally:
        notifier.close()
        await server.stop(None)
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)


@pytest.fixture
async def orders(order_deps, database_url):
    async with order_service(order_deps, database_url) as stub:
        yield stub


def acct() -> str:
    return f"stream-{uuid.uuid4().hex[:10]}"


async def unfunded_buy(account: str, deps) -> None:
    """One order update: a buy the account has no cash for is recorded REJECTED."""
    order = await handlers.place_order(OrderRequest(
        account_id=account, client_order_id=uuid.uuid4().hex, symbol="AAPL", side=Side.BUY, type=OrderType.LIMIT,
        quantity=1, limit_price=Decimal("187.25"), stop_price=None, time_in_force=TimeInForce.DAY), deps)
    assert order.status is Status.REJECTED


async def refusal(orders, account: str, after: int) -> grpc.aio.AioRpcError:
    call = orders.StreamOrderUpdates(pb.StreamOrderUpdatesRequest(after_sequence=after), metadata=identity(account))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call.read(), READ)
        # Refused before it listened: no header saying where it starts.
        assert POSITION_HEADER not in dict(await call.initial_metadata())
        return err.value
    finally:
        call.cancel()


async def test_an_after_sequence_past_the_accounts_latest_is_refused_with_the_latest(orders, order_deps):
    a = acct()
    for _ in range(2):
        await unfunded_buy(a, order_deps)  # sequences 1 and 2

    for after in (100_000, 3):  # far ahead, and just past the latest
        err = await refusal(orders, a, after)
        assert err.code() == grpc.StatusCode.OUT_OF_RANGE, err
        info, _ = error_info(err)
        assert info is not None and info.reason == "AFTER_SEQUENCE_AHEAD" and info.domain == "stockmesh.dev"
        assert dict(info.metadata) == {"afterSequence": str(after), "latestSequence": "2"}
        assert "2" in err.details()

    # An account with no update yet: only 0 is a place to start.
    fresh = acct()
    info, _ = error_info(await refusal(orders, fresh, 1))
    assert info.reason == "AFTER_SEQUENCE_AHEAD" and info.metadata["latestSequence"] == "0"

    # The latest itself (what the refusal named) is where a resumed stream starts: it opens,
    # and the next change comes.
    call = orders.StreamOrderUpdates(pb.StreamOrderUpdatesRequest(after_sequence=2), metadata=identity(a))
    try:
        assert dict(await asyncio.wait_for(call.initial_metadata(), READ))[POSITION_HEADER] == "2"
        await unfunded_buy(a, order_deps)
        update = await asyncio.wait_for(call.read(), READ)
        assert update.sequence == 3 and update.order.account_id == a
    finally:
        call.cancel()


async def test_a_sequence_just_sent_is_never_ahead_while_the_account_changes(orders, order_deps):
    """Every sequence a stream delivers, while more changes of the account commit meanwhile,
    opens a new stream from there: a check racing the writes never calls a sequence the client
    was sent ahead of the account."""
    a, changes = acct(), 30
    follower = orders.StreamOrderUpdates(pb.StreamOrderUpdatesRequest(after_sequence=0), metadata=identity(a))
    writes = asyncio.gather(*(unfunded_buy(a, order_deps) for _ in range(changes)))
    try:
        for expected in range(1, changes + 1):
            seen = (await asyncio.wait_for(follower.read(), READ)).sequence
            assert seen == expected
            resumed = orders.StreamOrderUpdates(pb.StreamOrderUpdatesRequest(after_sequence=seen),
                                                metadata=identity(a))
            try:
                header = dict(await asyncio.wait_for(resumed.initial_metadata(), READ))
                if header.get(POSITION_HEADER) != str(seen):  # ended instead: say with what
                    raise AssertionError(f"after_sequence={seen}: headers {header}, "
                                         f"{await resumed.code()} {await resumed.details()!r}")
            finally:
                resumed.cancel()
        await writes
    finally:
        follower.cancel()
        await asyncio.gather(writes, return_exceptions=True)


async def test_an_account_has_a_bounded_number_of_streams_open_at_once(order_deps, database_url):
    """Acceptance round 13: one account opened 2,000 order-update streams, each reading the
    database, and slowed everyone's calls. Past the limit a stream is refused at once
    (RESOURCE_EXHAUSTED / TOO_MANY_STREAMS), another account's is not, and closing one frees
    its place."""
    a, b = acct(), acct()
    async with order_service(order_deps, database_url, streams_per_account=2) as stub:
        async def opened(account: str):
            call = stub.StreamOrderUpdates(pb.StreamOrderUpdatesRequest(from_now=True), metadata=identity(account))
            await asyncio.wait_for(call.initial_metadata(), READ)  # listening (or refused)
            return call
        first, second = await opened(a), await opened(a)
        third = await opened(a)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(third.read(), READ)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(err.value)[0].reason == "TOO_MANY_STREAMS"
        # No RetryInfo: waiting does not help while the other streams stay open (round 16).
        details = rpc_status.from_call(err.value).details
        assert not [d for d in details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        other = await opened(b)  # another account's
        assert POSITION_HEADER in dict(await other.initial_metadata())
        first.cancel()

        async def a_place_again() -> bool:
            call = await opened(a)
            ok = POSITION_HEADER in dict(await call.initial_metadata())
            call.cancel()
            return ok
        # (once the server has seen the cancel)
        assert await eventually(a_place_again, timeout=30), "closing a stream did not free its place"
        for call in (second, other):
            call.cancel()


async def test_a_stream_ends_when_its_token_does(orders, order_deps):
    """Round 24 explorer: a token is checked when a call starts, and a stream opened with one
    that then expired went on delivering order updates. It ends UNAUTHENTICATED TOKEN_EXPIRED
    once Envoy would no longer accept its token (exp plus the 30 s Envoy allows for clocks),
    saying where to resume; a stream whose token lives on is not ended."""
    import time

    from meshkit.auth import CLOCK_SKEW_SECONDS

    a = acct()
    await unfunded_buy(a, order_deps)
    short = orders.StreamOrderUpdates(pb.StreamOrderUpdatesRequest(after_sequence=0),
                                      metadata=identity(a, exp=time.time() - CLOCK_SKEW_SECONDS + 3))
    lasting = orders.StreamOrderUpdates(pb.StreamOrderUpdatesRequest(after_sequence=0),
                                        metadata=identity(a, exp=time.time() + 3600))
    try:
        first = await asyncio.wait_for(short.read(), READ)  # delivered while the token is good
        assert first.sequence == 1
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:
                await asyncio.wait_for(short.read(), READ)
        assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED, ended.value
        info, _ = error_info(ended.value)
        assert (info.reason, dict(info.metadata)) == ("TOKEN_EXPIRED", {"afterSequence": str(first.sequence)})
        assert "open the stream with after_sequence = 1" in ended.value.details()
        assert (await asyncio.wait_for(lasting.read(), READ)).sequence == 1
        await unfunded_buy(a, order_deps)
        assert (await asyncio.wait_for(lasting.read(), READ)).sequence > 1  # still open
    finally:
        short.cancel()
        lasting.cancel()
