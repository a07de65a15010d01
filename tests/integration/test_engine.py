"""The engine process in-process against the project's nats-server: commands on the ORDERS
stream become executions and market data; repeats are dropped; GetOrderBook over gRPC."""
from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from matching_svc.adapters.jetstream import Names
from matching_svc.bootstrap import build, owned_symbols
from matching_svc.service_layer.runner import EngineConfig
from meshkit import bus
from meshkit.server import create_server
from meshkit.status import error_info
from stockmesh.matching.v1 import market_data_service_pb2 as md, market_data_service_pb2_grpc
from stockmesh.matching.v1 import matching_pb2 as pb
from tests.support.engine import BUY, SELL, Acceptances, cancel, executions, new_order, publish
from tests.support.wait import drained, eventually

pytestmark = pytest.mark.integration
E = pb.ExecutionType




@pytest.fixture
async def engine_app(nats_url):
    ns = f"te{uuid.uuid4().hex[:8]}"
    nc = await bus.connect(nats_url, "test-engine")
    cfg = EngineConfig(namespace=ns, symbols=("AAPL", "MSFT"), instance_id="test", lease_ttl=3.0)
    app, engine = build(nc, cfg)
    task = asyncio.create_task(engine.run())
    await asyncio.wait_for(engine.ready.wait(), 10)
    server, port, _ = await create_server("127.0.0.1:0", app)
    await server.start()
    yield ns, nc.jetstream(), engine, port
    await server.stop(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await nc.close()


async def wait_executions(js, ns, symbol, n):
    async def enough():
        got = await executions(js, ns, symbol)
        return got if len(got) >= n else None
    got = await eventually(enough)
    assert got is not None, "engine did not publish the expected executions"
    return [ex for ex, _ in got]


async def test_cross_cancel_and_duplicate(engine_app, nats_url):
    ns, js, engine, _ = engine_app
    names = Names(ns)
    listener = await bus.connect(nats_url, "test-acceptances")
    heard = Acceptances()
    await heard.listen(listener, ns)
    s1 = await publish(js, ns, new_order("s1", "alice", SELL, 100, limit="187.25"))
    b1 = await publish(js, ns, new_order("b1", "bob", BUY, 40, limit="187.30"))
    # The same command again under another Nats-Msg-Id (as after JetStream's window): dropped.
    await publish(js, ns, new_order("b1", "bob", BUY, 40, limit="187.30"), msg_id="b1-again")
    await publish(js, ns, cancel("s1", "alice"))
    await publish(js, ns, cancel("nope", "alice"))

    # The journal holds what changes something; the acceptances are notices, stored nowhere.
    got = await wait_executions(js, ns, "AAPL", 3)
    assert [ex.type for ex in got] == [E.EXECUTION_TYPE_FILL, E.EXECUTION_TYPE_CANCELLED,
                                       E.EXECUTION_TYPE_CANCEL_REJECTED]
    fill = got[0]
    assert (fill.order_id, fill.account_id, fill.side) == ("b1", "bob", BUY)
    assert (fill.counter_order_id, fill.counter_account_id) == ("s1", "alice")
    assert (fill.price, fill.quantity, fill.leaves_quantity, fill.counter_leaves_quantity) == ("187.25", 40, 0, 60)
    assert fill.execution_id == f"AAPL:{b1}:1" and fill.input_sequence == b1  # :0 is b1's acceptance
    assert (got[1].order_id, got[1].reason, got[1].quantity) == ("s1", "USER", 60)
    assert (got[2].order_id, got[2].reason) == ("nope", "UNKNOWN_ORDER")
    assert len({ex.execution_id for ex in got}) == len(got)
    assert await eventually(lambda: heard.seen("b1")) and await heard.seen("s1")
    accepted = heard.notices["s1"]
    assert (accepted.type, accepted.execution_id, accepted.quantity, accepted.price) == (
        E.EXECUTION_TYPE_ACCEPTED, f"AAPL:{s1}:0", 100, "187.25")
    assert heard.notices["b1"].execution_id == f"AAPL:{b1}:0"
    await listener.close()
    assert await drained(js, names.orders, names.consumer("AAPL"))  # every input acked, the repeat too
    assert len(await executions(js, ns, "AAPL")) == 3  # nothing for the repeat

    last = await js.get_last_msg(names.md, names.md_subject("AAPL"))
    ev = pb.MarketDataEvent.FromString(last.data)
    assert ev.last_price == "187.25" and ev.volume == 40
    assert ev.bid_price == "" and ev.ask_price == "" and not ev.asks  # s1 cancelled: empty book
    trades = [pb.MarketDataEvent.FromString(m.data) for m in await _md(js, names)]
    assert [(t.trade_price, t.trade_quantity) for t in trades if t.trade_quantity] == [("187.25", 40)]
    assert [t.sequence for t in trades] == list(range(1, len(trades) + 1))


async def test_an_input_that_never_reaches_the_engine_is_applied_in_its_place(engine_app, nats_url):
    """An input delivered to the engine's consumer that never reaches the engine (lost in flight
    with its NATS server, or taken by a stale engine's pull request) came again only after
    ack_wait, behind later inputs, and the engine skipped it as already applied: the order never
    reached the book (round 14 review). The engine sees its consumer's delivery numbers skip,
    and starts again from its snapshot: every order is in the book. Here a rogue pull request
    of `engine_AAPL` takes some inputs and never acknowledges them."""
    import json

    ns, js, engine, _ = engine_app
    names = Names(ns)
    rogue_nc = await bus.connect(nats_url, "test-rogue")
    stolen: list[str] = []

    async def steal(msg) -> None:  # taken, never acknowledged
        stolen.append(pb.EngineCommand.FromString(msg.data).new_order.order_id)
    try:
        await publish(js, ns, new_order("r0", "alice", BUY, 1, limit="100.00"))
        assert await eventually(lambda: engine.owned_engine("AAPL") is not None
                                and engine.owned_engine("AAPL").book.get_order("r0") is not None)
        inbox = rogue_nc.new_inbox()
        rogue = await rogue_nc.subscribe(inbox, cb=steal)
        for _ in range(3):
            await rogue_nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{names.orders}.{names.consumer('AAPL')}",
                                   json.dumps({"batch": 2, "expires": 1_000_000_000}).encode(), reply=inbox)
        await rogue_nc.flush()
        ids = [f"r{i}" for i in range(1, 13)]
        for oid in ids:
            await publish(js, ns, new_order(oid, "alice", BUY, 1, limit="100.00"))
            await asyncio.sleep(0.02)
        assert await eventually(lambda: bool(stolen), timeout=10), \
            "the rogue pull requests took nothing: the test exercises nothing"
        await rogue.unsubscribe()  # (what its requests still take meanwhile is lost the same way)
        await publish(js, ns, new_order("last", "alice", BUY, 1, limit="100.00"))

        def in_book() -> list[str]:
            eng = engine.owned_engine("AAPL")
            return [] if eng is None else [o for o in ["r0", *ids, "last"] if eng.book.get_order(o) is not None]
        assert await eventually(lambda: len(in_book()) == len(ids) + 2, timeout=20), (in_book(), stolen)
    finally:
        await rogue_nc.close()


async def _md(js, names):
    from tests.support.engine import read_stream
    return await read_stream(js, names.md, names.md_subject("AAPL"))


async def test_get_order_book_over_grpc(engine_app):
    ns, js, engine, port = engine_app
    for i, (side, price, qty) in enumerate([(BUY, "415.10", 10), (BUY, "415.10", 5), (BUY, "415.00", 7),
                                            (SELL, "415.50", 3), (SELL, "416", 4)]):
        last = await publish(js, ns, new_order(f"m{i}", f"acct{i}", side, qty, limit=price, symbol="MSFT"))
    assert await eventually(lambda: engine.published_seq("MSFT") >= last)  # all five rest in the book

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = market_data_service_pb2_grpc.MarketDataServiceStub(ch)
        reply = await stub.GetOrderBook(md.GetOrderBookRequest(symbol="MSFT"))
        assert [(lv.price, lv.quantity, lv.order_count) for lv in reply.bids] == [("415.10", 15, 2),
                                                                                  ("415.00", 7, 1)]
        assert [(lv.price, lv.quantity, lv.order_count) for lv in reply.asks] == [("415.50", 3, 1),
                                                                                  ("416.00", 4, 1)]
        assert reply.sequence == 5
        one = await stub.GetOrderBook(md.GetOrderBookRequest(symbol="MSFT", depth=1))
        assert len(one.bids) == 1 and len(one.asks) == 1

        # Not owned here (e.g. another instance's symbol): the last market-data event answers.
        engine.runners["MSFT"].engine = None
        from_md = await stub.GetOrderBook(md.GetOrderBookRequest(symbol="MSFT", depth=500))
        assert from_md.bids == reply.bids and from_md.asks == reply.asks and from_md.sequence == 5

        for request, reason, violation in [
                (md.GetOrderBookRequest(symbol="NOPE"), "UNKNOWN_SYMBOL", ("symbol", "unknown symbol 'NOPE'")),
                (md.GetOrderBookRequest(depth=1), "INVALID_ARGUMENT", ("symbol", "is required")),  # as GetQuote
                # As GetQuote, GetCandles and PlaceOrder: the symbol as listed (it was upper-cased).
                (md.GetOrderBookRequest(symbol="msft"), "UNKNOWN_SYMBOL", ("symbol", "unknown symbol 'msft'")),
                (md.GetOrderBookRequest(symbol=" "), "UNKNOWN_SYMBOL", ("symbol", "unknown symbol ' '")),
                (md.GetOrderBookRequest(symbol="MSFT", depth=-1), "INVALID_ARGUMENT", ("depth", "must not be negative"))]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetOrderBook(request)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            info, bad = error_info(err.value)
            assert info is not None and info.reason == reason
            assert [(f.field, f.description) for f in bad.field_violations] == [violation]


def test_symbol_sharding():
    listed = ["AAPL", "MSFT", "TSLA", "AMZN"]
    assert owned_symbols(listed, "", "") == ("AAPL", "AMZN", "MSFT", "TSLA")
    assert owned_symbols(listed, "", "0/2") == ("AAPL", "MSFT")
    assert owned_symbols(listed, "", "1/2") == ("AMZN", "TSLA")
    assert owned_symbols(listed, "tsla, AAPL", "0/2") == ("TSLA", "AAPL")
    with pytest.raises(SystemExit):
        owned_symbols(listed, "XXX", "")
    with pytest.raises(SystemExit):
        owned_symbols(listed, "", "2/2")


async def test_the_pull_comes_back_after_a_request_that_reached_no_consumer(nats_conn, namespace):
    """The engine's continuous pull asks again when its request went nowhere: a 503 (no
    responders: a consumer just made, or between leaders in a cluster) or no answer at all (a
    request lost with its server). Before, the request's credit stayed counted and the engine
    waited for messages forever."""
    from nats.js.api import AckPolicy, ConsumerConfig

    from matching_svc.adapters.jetstream import Names, ensure_streams
    from meshkit.bus import Puller

    ns = f"{namespace}_pull"
    names = Names(ns)
    js = nats_conn.jetstream()
    await ensure_streams(js, names)
    puller = Puller(nats_conn, names.orders, "late", batch=10, expires=1.0)
    await puller.start()
    try:
        # No consumer "late" yet: the request is answered 503 and its credit is gone.
        assert await puller.next_batch(timeout=0.5) == []
        assert puller.credit == 0
        await js.add_consumer(names.orders, ConsumerConfig(
            durable_name="late", filter_subject=names.orders_subject("AAPL"), ack_policy=AckPolicy.EXPLICIT))
        await js.publish(names.orders_subject("AAPL"), b"order", headers={"Nats-Msg-Id": f"{ns}-1"})
        got = await puller.next_batch(timeout=2.0)
        assert [m.data for m in got] == [b"order"]

        # A request nobody ever answers (lost with its server): credit counted, no 408 coming.
        puller.credit, puller.requested_at = puller.batch, puller.requested_at - 10.0
        await js.publish(names.orders_subject("AAPL"), b"next", headers={"Nats-Msg-Id": f"{ns}-2"})
        got = []
        for _ in range(4):
            got += await puller.next_batch(timeout=0.5)
        assert [m.data for m in got] == [b"next"]
    finally:
        await puller.stop()
