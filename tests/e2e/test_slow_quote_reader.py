"""MISSION F4 through Envoy: a StreamQuotes client that stops reading gets conflated updates,
not a replay of every stale quote. quote_svc conflates per stream once its writes block; Envoy
must push back early for that to happen, instead of taking in (up to its defaults, hundreds of
MiB) every quote the stalled client has not read (envoy/envoy.yaml.tmpl: the public listener's
and the quote_svc_streams cluster's HTTP/2 stream windows, the cluster's buffer limit).
On the same mesh (one quote_svc replica): the per-account limit on quote streams counts the
account of the token Envoy verified."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest

from meshkit import bus
from meshkit.launcher.harness import MeshProcess
from meshkit.status import error_info
from stockmesh.quote.v1 import quote_service_pb2 as qpb, quote_service_pb2_grpc
from tests.support.meshes import own_mesh
from tests.support.quotes import md_event, publish_md
from tests.support.wait import eventually

pytestmark = pytest.mark.e2e
SYMBOLS = ["AAPL", "MSFT"]
UPDATES = 3_000  # per symbol, published while the client reads nothing: ~400 KB of quotes
RATE = 150  # updates a second per symbol: 20 s
# This mesh's QUOTE_STREAMS_PER_ACCOUNT, set here whatever the environment running the tests says.
STREAMS_PER_ACCOUNT = 12


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshProcess]:
    yield from own_mesh(tmp_path_factory.mktemp("slowquotes"), "stockmesh_e2e", "e2eslow",
                        env={"QUOTE_STREAMS_PER_ACCOUNT": str(STREAMS_PER_ACCOUNT)})


async def test_a_stalled_stream_through_envoy_reads_few_stale_quotes_then_the_newest(mesh: MeshProcess) -> None:
    nc = await bus.connect(mesh.state()["nats_url"], "slow-quote-reader")
    js = nc.jetstream()
    md = mesh.auth("slow-reader")
    # The smallest receive window a client can have: what piles up is Envoy's and quote_svc's.
    channel = grpc.aio.insecure_channel(mesh.endpoint, options=[("grpc.http2.bdp_probe", 0),
                                                                ("grpc.http2.lookahead_bytes", 1)])
    try:
        stub = quote_service_pb2_grpc.QuoteServiceStub(channel)
        for s in SYMBOLS:
            await publish_md(js, mesh.namespace, md_event(s, 1, price="100.00", qty=1, volume=1))

        async def quoted() -> bool:
            try:
                return all([(await stub.GetQuote(qpb.GetQuoteRequest(symbol=s), metadata=md, timeout=5)).quote.sequence
                            for s in SYMBOLS])
            except grpc.aio.AioRpcError:
                return False
        assert await eventually(quoted, timeout=30)
        stream = stub.StreamQuotes(qpb.StreamQuotesRequest(symbols=SYMBOLS), metadata=md)
        assert {(await stream.read()).sequence for _ in SYMBOLS} == {1}  # the snapshot

        # A steady feed (a burst would be conflated by quote_svc even for a client that reads:
        # its writer takes the newest quote whenever it is free), while the client reads nothing.
        last = UPDATES + 1
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for r in range(2, last + 1):
            await asyncio.gather(*(publish_md(js, mesh.namespace, md_event(s, r, price=f"{100 + r / 100:.2f}", qty=1,
                                                                          volume=r, bid=f"{99 + r / 100:.2f}",
                                                                          ask=f"{101 + r / 100:.2f}")) for s in SYMBOLS))
            if (ahead := t0 + r / RATE - loop.time()) > 0:
                await asyncio.sleep(ahead)

        async def caught_up() -> bool:
            return all([(await stub.GetQuote(qpb.GetQuoteRequest(symbol=s), metadata=md, timeout=5)).quote.sequence
                        == last for s in SYMBOLS])
        assert await eventually(caught_up, timeout=60), "quote_svc did not take in the whole feed"

        read, newest = 0, {}
        while not all(newest.get(s) == last for s in SYMBOLS):
            m = await asyncio.wait_for(stream.read(), 30)
            read += 1
            newest[m.symbol] = m.sequence
        stream.cancel()
    finally:
        await channel.close()
        await nc.close()
    # Stale quotes held for it: some hundred KiB of flow-control windows and buffers at most,
    # never the whole backlog (without the windows: nearly all 6,000).
    assert read < 3_600, f"read {read} of {2 * UPDATES} updates before the newest quotes"


async def test_an_account_holds_at_most_its_limit_of_quote_streams_through_envoy(mesh: MeshProcess) -> None:
    """The account counted is the token's, as Envoy verified it: past QUOTE_STREAMS_PER_ACCOUNT
    (as this mesh sets it) the next stream is RESOURCE_EXHAUSTED / TOO_MANY_STREAMS, another
    account's opens, and closing one frees its place."""
    channel = grpc.aio.insecure_channel(mesh.endpoint)
    stub = quote_service_pb2_grpc.QuoteServiceStub(channel)
    calls: list[grpc.aio.Call] = []

    async def opened(account: str) -> bool:
        call = stub.StreamQuotes(qpb.StreamQuotesRequest(symbols=["KO"]), metadata=mesh.auth(account))
        calls.append(call)
        return "x-stockmesh-snapshot" in dict(await asyncio.wait_for(call.initial_metadata(), 15))

    try:
        assert [await opened("stream-limit-a") for _ in range(STREAMS_PER_ACCOUNT)] == [True] * STREAMS_PER_ACCOUNT
        assert not await opened("stream-limit-a")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(calls[-1].read(), 15)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.value.code(), err.value.details())
        info, _ = error_info(err.value)
        assert (info.reason, dict(info.metadata)) == ("TOO_MANY_STREAMS", {"limit": str(STREAMS_PER_ACCOUNT)})
        assert await opened("stream-limit-b")  # another account's
        calls[0].cancel()
        # (once quote_svc has seen the cancel)
        assert await eventually(lambda: opened("stream-limit-a"), timeout=30), "closing a stream did not free its place"
    finally:
        for call in calls:
            call.cancel()
        await channel.close()
