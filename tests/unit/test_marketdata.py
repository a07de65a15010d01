"""The latest market read from JetStream: cached briefly, and one read in flight per symbol."""
from __future__ import annotations

import asyncio
from decimal import Decimal
from types import SimpleNamespace

import nats.errors
import pytest

from meshkit.errors import Unavailable
from meshkit.marketdata import JetStreamQuotes, Touch
from stockmesh.matching.v1 import matching_pb2


class SlowStream:
    """A JetStream stand-in whose last-message read takes a while and is counted."""

    def __init__(self) -> None:
        self.reads = 0
        self.release = asyncio.Event()
        self.fail = False

    async def get_last_msg(self, stream: str, subject: str):
        self.reads += 1
        await self.release.wait()
        if self.fail:
            raise self.fail if isinstance(self.fail, Exception) else ConnectionError("nats is gone")
        ev = matching_pb2.MarketDataEvent(bid_price="10.00", ask_price="10.02", last_price="10.01")
        return SimpleNamespace(data=ev.SerializeToString())


async def test_concurrent_callers_share_one_read_then_the_cache():
    js = SlowStream()
    quotes = JetStreamQuotes(js, "ns", max_age=60)
    callers = [asyncio.create_task(quotes.touch("AAPL")) for _ in range(20)]
    await asyncio.sleep(0.01)
    assert js.reads == 1  # the other 19 wait for the read already in flight
    js.release.set()
    want = Touch(Decimal("10.00"), Decimal("10.02"), Decimal("10.01"))
    assert await asyncio.gather(*callers) == [want] * 20
    assert await quotes.touch("AAPL") == want and js.reads == 1  # then from the cache


async def test_a_cancelled_caller_does_not_cancel_the_read_the_others_wait_for():
    js = SlowStream()
    quotes = JetStreamQuotes(js, "ns", max_age=60)
    first, second = asyncio.create_task(quotes.touch("KO")), asyncio.create_task(quotes.touch("KO"))
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.sleep(0.01)
    js.release.set()
    assert (await second).last == Decimal("10.01") and js.reads == 1
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_failed_read_reaches_every_waiter_and_the_next_call_reads_again():
    js = SlowStream()
    js.fail = True
    quotes = JetStreamQuotes(js, "ns", max_age=60)
    callers = [asyncio.create_task(quotes.touch("IBM")) for _ in range(3)]
    await asyncio.sleep(0.01)
    js.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    # UNAVAILABLE to the client (retry), not a crash: INTERNAL before, seen with NATS killed.
    assert all(isinstance(r, Unavailable) and "IBM" in str(r) for r in results) and js.reads == 1
    js.fail = False
    assert (await quotes.touch("IBM")).bid == Decimal("10.00") and js.reads == 2


async def test_a_nats_timeout_is_unavailable():
    js = SlowStream()
    js.fail = nats.errors.TimeoutError()  # the request to a restarting server times out
    js.release.set()
    with pytest.raises(Unavailable):
        await JetStreamQuotes(js, "ns", max_age=60).touch("KO")


async def test_while_nats_does_not_answer_the_last_market_known_stands():
    """Acceptance round 7: with NATS stopped, every portfolio holding a position answered
    UNAVAILABLE. Nothing trades while NATS is down, so the last market read is still the latest."""
    js = SlowStream()
    js.release.set()
    quotes = JetStreamQuotes(js, "ns", max_age=0)  # every call reads
    known = await quotes.touch("KO")
    js.fail = nats.errors.TimeoutError()
    assert await quotes.touch("KO") == known and js.reads == 2  # it asked, then fell back
    with pytest.raises(Unavailable):
        await quotes.touch("IBM")  # never read here: nothing to fall back on


async def test_once_nats_did_not_answer_the_last_market_known_is_answered_at_once():
    """Acceptance round 12: with NATS stalled (not closed), every portfolio waited for a read
    of its own to time out, past a client's 5 s deadline. Once a read found NATS not answering,
    a symbol known here is answered at once while the next read tries; a read that succeeds
    ends that."""
    js = SlowStream()
    js.release.set()
    quotes = JetStreamQuotes(js, "ns", max_age=0)
    known = await quotes.touch("KO")
    js.fail = nats.errors.TimeoutError()
    assert await quotes.touch("KO") == known and js.reads == 2  # waited for that read: it failed
    js.release.clear()  # NATS stalls: a read now hangs
    assert await asyncio.wait_for(quotes.touch("KO"), timeout=1) == known and js.reads == 3
    assert await asyncio.wait_for(quotes.touch("KO"), timeout=1) == known and js.reads == 3  # one read at a time
    js.fail = False
    js.release.set()  # NATS answers again: the hanging read succeeds
    await asyncio.sleep(0.01)
    js.release.clear()
    waiting = asyncio.create_task(quotes.touch("KO"))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # a fresh read is waited for again, as before the stall
    js.release.set()
    assert await waiting == known


async def test_a_read_in_a_calls_path_gives_up_before_a_clients_deadline():
    from meshkit import bus

    js = SlowStream()  # never released: NATS stalls
    with pytest.raises(nats.errors.TimeoutError):
        await bus.last_msg(js, "S", "s.md.KO", timeout=0.05)
    with pytest.raises(Unavailable):
        await asyncio.wait_for(JetStreamQuotes(js, "ns", max_age=60).touch("KO"), timeout=bus.READ_TIMEOUT + 3)


async def test_the_feeds_market_never_goes_back_to_an_older_event(monkeypatch):
    """An older market-data event stored again late (a stale engine's buffered publish, or a
    replay past the duplicate window) set order_svc's price and halt back until the symbol's
    next event (round 14 review 2). The followed market keeps the newest sequence's."""
    from meshkit import marketdata

    def event(seq: int, last: str) -> SimpleNamespace:
        ev = matching_pb2.MarketDataEvent(symbol="AAPL", sequence=seq, bid_price=last, ask_price=last,
                                          last_price=last)
        return SimpleNamespace(data=ev.SerializeToString(), subject="ns.md.AAPL")

    async def feed(js, namespace, symbols, on_msg, ready):
        for seq, last in ((1, "10.00"), (3, "12.00"), (2, "11.00")):
            on_msg(event(seq, last))
        ready.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(marketdata, "follow_feed", feed)
    quotes = JetStreamQuotes(SlowStream(), "ns", max_age=60)
    connected = SimpleNamespace(is_connected=True)
    task = asyncio.create_task(quotes.follow(connected))
    await asyncio.wait_for(quotes.ready.wait(), 5)
    try:
        assert (await quotes.touch("AAPL")).last == Decimal("12.00")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
