"""quote_svc's live quotes, in-process against the project's nats-server, PostgreSQL and a
private Redis: snapshot then updates, 50 subscribers, a stalled subscriber that delays no one
and gets conflated quotes, and Redis flushed or dead while the service keeps going."""
from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from meshkit import bus, cache
from meshkit.status import DOMAIN, error_info
from quote_svc.adapters.cache import quote_key
from stockmesh.quote.v1 import quote_pb2, quote_service_pb2 as qpb
from tests.support.crash import identity
from tests.support.quotes import md_event, publish_md, quote_service
from tests.support.wait import eventually

pytestmark = pytest.mark.integration




@pytest.fixture
def ns() -> str:
    return f"tq{uuid.uuid4().hex[:8]}"


@pytest.fixture
def private_redis(tmp_path):
    """A Redis of our own, so that flushing or killing it touches nobody else."""
    from meshkit.launcher.infra import start_local_redis
    from meshkit.launcher.supervisor import Supervisor

    sup = Supervisor(say=lambda _: None)
    url = start_local_redis(tmp_path, sup)
    yield url, sup
    sup.stop_all()


@pytest.fixture
async def js(nats_conn):
    return nats_conn.jetstream()


async def quote_seq(stub, symbol: str) -> int:
    try:
        return (await stub.GetQuote(qpb.GetQuoteRequest(symbol=symbol))).quote.sequence
    except grpc.aio.AioRpcError:
        return 0


async def test_snapshot_then_updates_to_fifty_subscribers(pool, nats_url, js, ns):
    async with quote_service(pool, nats_url, ns, candles_writer=False) as svc:
        stub = svc.stub
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetQuote(qpb.GetQuoteRequest(symbol="AAPL"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_info(err.value)[0].reason == "QUOTE_NOT_FOUND"

        await publish_md(js, ns, md_event("AAPL", 1, price="187.25", qty=10, bid="187.20", ask="187.30", volume=10))
        assert await eventually(lambda: quote_seq(stub, "AAPL"))
        q = (await stub.GetQuote(qpb.GetQuoteRequest(symbol="AAPL"))).quote
        assert (q.last_price, q.last_size, q.bid_price, q.ask_price, q.volume) == ("187.25", 10, "187.20", "187.30", 10)

        # A stream of a symbol never quoted is open at once, its headers say so (no snapshot
        # follows); a stream's headers name the symbols whose snapshot follows.
        quiet = stub.StreamQuotes(qpb.StreamQuotesRequest(symbols=["MSFT"]))
        assert dict(await asyncio.wait_for(quiet.initial_metadata(), 15))["x-stockmesh-snapshot"] == ""
        quiet.cancel()
        streams = [stub.StreamQuotes(qpb.StreamQuotesRequest(symbols=["AAPL", "MSFT"])) for _ in range(50)]
        assert {dict(await s.initial_metadata())["x-stockmesh-snapshot"] for s in streams} == {"AAPL"}
        firsts = await asyncio.gather(*(s.read() for s in streams))
        assert all(f.symbol == "AAPL" and f.sequence == 1 and f.last_price == "187.25" for f in firsts)

        await publish_md(js, ns, md_event("AAPL", 2, price="187.30", qty=5, bid="187.25", ask="187.35", volume=15))
        seconds = await asyncio.wait_for(asyncio.gather(*(s.read() for s in streams)), 15)
        assert all((m.symbol, m.sequence, m.last_price, m.last_size, m.volume) == ("AAPL", 2, "187.30", 5, 15)
                   for m in seconds)
        # A symbol with no quote yet has no snapshot; its first trade arrives as an update.
        await publish_md(js, ns, md_event("MSFT", 1, price="415.50", qty=1, volume=1))
        thirds = await asyncio.wait_for(asyncio.gather(*(s.read() for s in streams)), 15)
        assert all((m.symbol, m.sequence) == ("MSFT", 1) for m in thirds)
        for s in streams:
            s.cancel()
        assert await eventually(lambda: asyncio.sleep(0, svc.parts.book.subscribers() == 0))


async def test_bad_requests(pool, nats_url, ns):
    async with quote_service(pool, nats_url, ns, candles_writer=False) as svc:
        for symbols in ([], ["AAPL", "NOPE"], ["AAPL", ""]):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await svc.stub.StreamQuotes(qpb.StreamQuotesRequest(symbols=symbols)).read()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            info, bad = error_info(err.value)
            assert info.reason == ("UNKNOWN_SYMBOL" if "NOPE" in symbols else "INVALID_ARGUMENT")
            assert bad.field_violations
            if "" in symbols:  # missing, as an empty symbol is everywhere else (round 15)
                assert [(f.field, f.description) for f in bad.field_violations] == [("symbols[1]", "is required")]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await svc.stub.GetQuote(qpb.GetQuoteRequest(symbol="NOPE"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(err.value)[0].reason == "UNKNOWN_SYMBOL"
        listed = (await svc.stub.ListSymbols(qpb.ListSymbolsRequest())).symbols
        by = {s.symbol: s for s in listed}
        assert (by["AAPL"].tick_size, by["AAPL"].reference_price) == ("0.01", "187.25")
        assert (by["SIRI"].tick_size, by["SIRI"].reference_price) == ("0.0001", "0.8750")


async def test_a_stalled_subscriber_delays_nobody_and_gets_the_newest_quotes(pool, nats_url, js, ns):
    symbols = ["AAPL", "MSFT"]
    rounds = 200  # 10 s at 20 updates a second per symbol
    async with quote_service(pool, nats_url, ns, candles_writer=False) as svc:
        for i, s in enumerate(symbols):
            await publish_md(js, ns, md_event(s, 1, price="100.00", qty=1, volume=1))
        assert await eventually(lambda: quote_seq(svc.stub, "MSFT"))

        # HTTP/2 flow control lets a client's receive window (64 KiB by default, growing with
        # BDP probes) of older messages sit in the transport; the server's conflation works
        # behind it. This client takes the smallest window, so what we see below is the
        # server's behaviour: one message in flight, then the newest quote per symbol.
        slow_channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{svc.port}", options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1)])
        slow = quote_service_stub(slow_channel).StreamQuotes(qpb.StreamQuotesRequest(symbols=symbols))
        fast = svc.stub.StreamQuotes(qpb.StreamQuotesRequest(symbols=symbols))
        assert {(await slow.read()).sequence for _ in symbols} == {1}
        assert {(await fast.read()).sequence for _ in symbols} == {1}

        fast_seen: dict[str, list[int]] = {s: [] for s in symbols}
        done = asyncio.Event()

        async def read_fast() -> None:
            while not all(seen and seen[-1] == rounds + 1 for seen in fast_seen.values()):
                m = await fast.read()
                fast_seen[m.symbol].append(m.sequence)
            done.set()

        reader = asyncio.create_task(read_fast())
        slow_pending_max = 0
        for r in range(2, rounds + 2):  # the slow client reads nothing for these 10 seconds
            for s in symbols:
                await publish_md(js, ns, md_event(s, r, price=f"{100 + r / 100:.2f}", qty=r, volume=r))
            await asyncio.sleep(0.05)
            # While it is stalled, the server holds at most one quote per symbol for it.
            slow_sub = max((sub for subs in svc.parts.book._subs.values() for sub in subs),
                           key=lambda sub: sub.conflated)
            slow_pending_max = max(slow_pending_max, slow_sub.pending)
        await asyncio.wait_for(done.wait(), 15)
        await reader
        # The fast subscriber saw every update, in order, while the slow one was stalled.
        for s in symbols:
            assert fast_seen[s] == list(range(2, rounds + 2)), s
        assert slow_pending_max <= len(symbols)
        assert slow_sub.conflated > rounds  # it was really stalled: most updates were replaced

        # Reading again, the slow client gets the newest quote of each symbol, not a backlog:
        # the one message that was in flight when it stalled, then one (the newest) per symbol.
        got: list[tuple[str, int]] = []
        newest: dict[str, int] = {}
        while not all(newest.get(s) == rounds + 1 for s in symbols):
            m = await asyncio.wait_for(slow.read(), 10)
            got.append((m.symbol, m.sequence))
            newest[m.symbol] = m.sequence
        assert len(got) <= len(symbols) + 1, got
        assert sorted(got[-len(symbols):]) == [(s, rounds + 1) for s in symbols], got
        slow.cancel()
        fast.cancel()
        await slow_channel.close()


async def test_shutdown_ends_streams_with_unavailable_shutting_down(pool, nats_url, js, ns):
    """SIGTERM runs the App's on_shutdown hooks (meshkit.server.serve): every open stream, and
    any opened after, ends at once with UNAVAILABLE carrying an ErrorInfo (reason SHUTTING_DOWN),
    as every error does, so a client knows to open it again elsewhere."""
    async with quote_service(pool, nats_url, ns, candles_writer=False) as svc:
        await publish_md(js, ns, md_event("AAPL", 1, price="187.25", qty=10, volume=10))
        assert await eventually(lambda: quote_seq(svc.stub, "AAPL"))
        streams = [svc.stub.StreamQuotes(qpb.StreamQuotesRequest(symbols=["AAPL", "MSFT"])) for _ in range(3)]
        assert [(await s.read()).sequence for s in streams] == [1, 1, 1]  # open, past the snapshot

        for hook in svc.app.on_shutdown:
            hook()
        late = svc.stub.StreamQuotes(qpb.StreamQuotesRequest(symbols=["AAPL"]))
        for s in streams + [late]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(s.read(), 15)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, (err.value.code(), err.value.details())
            assert "shutting down" in err.value.details()
            info, _ = error_info(err.value)
            assert info is not None, err.value.details()
            assert (info.reason, info.domain) == ("SHUTTING_DOWN", DOMAIN)
        assert await eventually(lambda: asyncio.sleep(0, svc.parts.book.subscribers() == 0))


async def test_an_account_has_a_bounded_number_of_quote_streams_open_at_once(pool, nats_url, ns):
    """One token could open thousands of quote streams on a replica, each holding a
    subscription, a queue and a task. Past the account's limit (QUOTE_STREAMS_PER_ACCOUNT) a
    stream is refused at once, RESOURCE_EXHAUSTED / TOO_MANY_STREAMS without RetryInfo (as
    order_svc's order-update streams); another account's is not, and closing one frees its
    place. A call without a token, possible only on the replica's own port, is not counted."""
    a, b = f"quotes-{uuid.uuid4().hex[:10]}", f"quotes-{uuid.uuid4().hex[:10]}"
    async with quote_service(pool, nats_url, ns, candles_writer=False, streams_per_account=2) as svc:
        async def opened(*metadata):
            call = svc.stub.StreamQuotes(qpb.StreamQuotesRequest(symbols=["AAPL"]), metadata=metadata)
            await asyncio.wait_for(call.initial_metadata(), 15)  # open (or refused)
            return call

        def is_open(headers) -> bool:
            return "x-stockmesh-snapshot" in dict(headers)

        first, second = await opened(*identity(a)), await opened(*identity(a))
        third = await opened(*identity(a))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(third.read(), 15)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.value.code(), err.value.details())
        info, _ = error_info(err.value)
        assert (info.reason, dict(info.metadata)) == ("TOO_MANY_STREAMS", {"limit": "2"})
        assert "2 quote streams open already" in err.value.details()
        # No RetryInfo: waiting does not help while the other streams stay open.
        details = rpc_status.from_call(err.value).details
        assert not [d for d in details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert not is_open(await third.initial_metadata())

        other = await opened(*identity(b))  # another account's
        assert is_open(await other.initial_metadata())
        untokened = [await opened() for _ in range(3)]  # the replica's own port, no token
        assert [is_open(await s.initial_metadata()) for s in untokened] == [True] * 3
        # A token naming no account (here a book of the brokerage's own) is refused, as every
        # account's call is: it could not be counted.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await (await opened(*identity("$clearing"))).read()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

        first.cancel()

        async def a_place_again() -> bool:
            call = await opened(*identity(a))
            ok = is_open(await call.initial_metadata())
            call.cancel()
            return ok
        # (once the server has seen the cancel)
        assert await eventually(a_place_again, timeout=30), "closing a stream did not free its place"
        for call in (second, other, *untokened):
            call.cancel()


def quote_service_stub(channel):
    from stockmesh.quote.v1 import quote_service_pb2_grpc

    return quote_service_pb2_grpc.QuoteServiceStub(channel)


async def test_redis_flushed_or_dead_the_feed_rebuilds_everything(pool, nats_url, js, ns, private_redis):
    url, redis_sup = private_redis
    redis = cache.connect(url)
    reader = cache.connect(url)
    try:
        async with quote_service(pool, nats_url, ns, redis=redis, cache_refresh=0.5, candles_writer=False) as svc:
            await publish_md(js, ns, md_event("AAPL", 1, price="187.25", qty=10, bid="187.20", ask="187.30",
                                              volume=10))
            await publish_md(js, ns, md_event("KO", 1, price="62.15", qty=3, volume=3))

            async def cached(symbol: str, seq: int) -> bool:
                raw = await reader.get(quote_key(ns, symbol))
                return bool(raw) and quote_pb2.Quote.FromString(raw).sequence == seq

            assert await eventually(lambda: cached("AAPL", 1))
            assert await eventually(lambda: cached("KO", 1))
            cached_quote = quote_pb2.Quote.FromString(await reader.get(quote_key(ns, "AAPL")))
            assert (cached_quote.last_price, cached_quote.bid_price, cached_quote.volume) == ("187.25", "187.20", 10)

            stream = svc.stub.StreamQuotes(qpb.StreamQuotesRequest(symbols=["AAPL"]))
            assert (await stream.read()).sequence == 1

            await reader.flushall()  # Redis loses everything mid-test
            assert (await svc.stub.GetQuote(qpb.GetQuoteRequest(symbol="AAPL"))).quote.sequence == 1
            await publish_md(js, ns, md_event("AAPL", 2, price="187.30", qty=1, volume=11))
            assert (await asyncio.wait_for(stream.read(), 10)).sequence == 2
            # Rewritten from the feed: the changed symbol at once, a quiet one by the refresh.
            assert await eventually(lambda: cached("AAPL", 2))
            assert await eventually(lambda: cached("KO", 1))

            # A replica starting on an empty Redis has every quote from the feed at once.
            await reader.flushall()
            async with quote_service(pool, nats_url, ns, redis=cache.connect(url), candles_writer=False) as fresh:
                q = (await fresh.stub.GetQuote(qpb.GetQuoteRequest(symbol="AAPL"))).quote
                assert (q.sequence, q.last_price, q.volume) == (2, "187.30", 11)
                s2 = fresh.stub.StreamQuotes(qpb.StreamQuotesRequest(symbols=["KO", "AAPL"]))
                snap = {m.symbol: m.sequence for m in [await s2.read(), await s2.read()]}
                assert snap == {"AAPL": 2, "KO": 1}
                s2.cancel()

            # Redis dies: quotes, streams and GetQuote go on from the feed.
            redis_sup.stop_all()
            await publish_md(js, ns, md_event("AAPL", 3, price="187.35", qty=2, volume=13))
            assert (await asyncio.wait_for(stream.read(), 10)).sequence == 3
            assert (await svc.stub.GetQuote(qpb.GetQuoteRequest(symbol="AAPL"))).quote.sequence == 3
            # And a replica starting while Redis is down still has the quotes from the feed.
            async with quote_service(pool, nats_url, ns, redis=cache.connect(url), candles_writer=False) as fresh:
                assert (await fresh.stub.GetQuote(qpb.GetQuoteRequest(symbol="AAPL"))).quote.sequence == 3
            stream.cancel()
    finally:
        await redis.aclose()
        await reader.aclose()


async def test_a_cached_quote_of_another_market_data_history_is_not_seeded(pool, nats_url, js, ns, private_redis,
                                                                           caplog):
    """Round 15: a mesh started afresh (a new data folder: JetStream empty) with the same
    namespace and Redis served the old mesh's quotes, frozen, since the feed's sequences were
    all below the cached ones. A cached quote is seeded only if the feed could have made it."""
    from quote_svc.adapters.codec import md_from_bytes, quote_to_proto
    from quote_svc.domain.quotes import next_quote

    url, _ = private_redis
    writer = cache.connect(url)
    try:
        old = next_quote(None, md_from_bytes(md_event("AAPL", 2357, price="190.37", qty=1, volume=99).SerializeToString()))
        ok = next_quote(None, md_from_bytes(md_event("KO", 1, price="62.15", qty=3, volume=3).SerializeToString()))
        await writer.set(quote_key(ns, "AAPL"), quote_to_proto(old).SerializeToString())  # another history's
        await writer.set(quote_key(ns, "KO"), quote_to_proto(ok).SerializeToString())  # this feed's own
        await bus.ensure_stream(js, ns, "md")
        await publish_md(js, ns, md_event("AAPL", 5, price="185.25", qty=1, volume=1))
        await publish_md(js, ns, md_event("KO", 1, price="62.15", qty=3, volume=3))
        async with quote_service(pool, nats_url, ns, redis=cache.connect(url), candles_writer=False) as svc:
            q = (await svc.stub.GetQuote(qpb.GetQuoteRequest(symbol="AAPL"))).quote
            assert (q.sequence, q.last_price) == (5, "185.25")
            await publish_md(js, ns, md_event("AAPL", 6, price="185.30", qty=1, volume=2))

            async def live() -> bool:
                return (await svc.stub.GetQuote(qpb.GetQuoteRequest(symbol="AAPL"))).quote.sequence == 6
            assert await eventually(live)
            assert (await svc.stub.GetQuote(qpb.GetQuoteRequest(symbol="KO"))).quote.sequence == 1
        # Said of AAPL only: KO's cached quote is the feed's own last one, a quiet symbol (round
        # 18: every quiet symbol was called another history on every restart).
        assert [r.symbol for r in caplog.records if r.getMessage().startswith("cached quote from another")] == ["AAPL"]
    finally:
        await writer.aclose()


async def test_the_last_trades_size_outlives_a_restart_after_a_book_change(pool, nats_url, js, ns, private_redis,
                                                                           caplog):
    """Round 27: after a restart, last_size was 0 for a symbol whose last market-data event was
    not a trade: the cached quote of that very event was dropped ("the feed applies it at
    once"), and the event alone does not carry the size. It is kept; one of the same sequence
    that the event did not make (another history's) is still dropped."""
    from quote_svc.adapters.codec import md_from_bytes, quote_to_proto
    from quote_svc.domain.quotes import next_quote

    url, _ = private_redis
    writer = cache.connect(url)
    try:
        trade = md_event("KO", 1, price="62.15", qty=3, volume=3)
        book_change = md_event("KO", 2, bid="62.10", volume=3)
        book_change.last_price = "62.15"
        other = md_event("AAPL", 1, price="185.25", qty=4, volume=4)
        quote = next_quote(None, md_from_bytes(trade.SerializeToString()))
        quote = next_quote(quote, md_from_bytes(book_change.SerializeToString()))
        assert (quote.last, quote.last_size) == (Decimal("62.15"), 3)
        not_this_one = next_quote(None, md_from_bytes(md_event("AAPL", 1, price="190.00", qty=9,
                                                               volume=9).SerializeToString()))
        await writer.set(quote_key(ns, "KO"), quote_to_proto(quote).SerializeToString())
        await writer.set(quote_key(ns, "AAPL"), quote_to_proto(not_this_one).SerializeToString())
        await bus.ensure_stream(js, ns, "md")
        for ev in (trade, book_change, other):
            await publish_md(js, ns, ev)
        async with quote_service(pool, nats_url, ns, redis=cache.connect(url), candles_writer=False) as svc:
            ko = (await svc.stub.GetQuote(qpb.GetQuoteRequest(symbol="KO"))).quote
            aapl = (await svc.stub.GetQuote(qpb.GetQuoteRequest(symbol="AAPL"))).quote
        assert (ko.sequence, ko.last_price, ko.last_size, ko.bid_price) == (2, "62.15", 3, "62.10")
        assert (aapl.sequence, aapl.last_price, aapl.last_size) == (1, "185.25", 4)
        assert [r.symbol for r in caplog.records if r.getMessage().startswith("cached quote from another")] == ["AAPL"]
    finally:
        await writer.aclose()


async def test_a_quote_stream_ends_when_its_token_does(pool, nats_url, ns):
    """Round 24 explorer: a quote stream opened with a token that then expired went on. It ends
    UNAUTHENTICATED TOKEN_EXPIRED once Envoy would no longer accept its token, even with no
    quote to send; one whose token lives on, and one on the replica's own port without a
    token, go on."""
    import time

    from meshkit.auth import CLOCK_SKEW_SECONDS

    a = f"quotes-{uuid.uuid4().hex[:10]}"
    async with quote_service(pool, nats_url, ns, candles_writer=False) as svc:
        def opened(*metadata):
            return svc.stub.StreamQuotes(qpb.StreamQuotesRequest(symbols=["AAPL"]), metadata=metadata)

        short = opened(*identity(a, exp=time.time() - CLOCK_SKEW_SECONDS + 2))
        lasting, untokened = opened(*identity(a, exp=time.time() + 3600)), opened()
        try:
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                while True:
                    await asyncio.wait_for(short.read(), 15)
            assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED, ended.value
            assert error_info(ended.value)[0].reason == "TOKEN_EXPIRED"
            assert "open the quote stream again with a new token" in ended.value.details()
            for call in (lasting, untokened):
                assert "x-stockmesh-snapshot" in dict(await asyncio.wait_for(call.initial_metadata(), 15))
                assert not call.done()
        finally:
            for call in (short, lasting, untokened):
                call.cancel()
