"""order_svc's and ledger_svc's view of the market (meshkit.marketdata.JetStreamQuotes)
following the feed: answered from memory, as fresh as the feed, without a JetStream request
per call; reading again once it stops following."""
from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from meshkit import bus
from meshkit.marketdata import NO_MARKET, JetStreamQuotes, Touch
from tests.support.quotes import md_event, publish_md
from tests.support.wait import eventually

pytestmark = pytest.mark.integration


class CountingStream:
    """The JetStream context, with its last-message reads counted."""

    def __init__(self, js) -> None:
        self.js, self.reads = js, 0

    def __getattr__(self, name):
        return getattr(self.js, name)

    async def get_last_msg(self, *args, **kwargs):
        self.reads += 1
        return await self.js.get_last_msg(*args, **kwargs)


async def test_following_the_feed_answers_from_memory_and_stays_fresh(nats_conn, namespace):
    js = CountingStream(nats_conn.jetstream())
    await bus.ensure_stream(js, namespace, "md")
    await publish_md(js, namespace, md_event("AAPL", 1, bid="189.10", ask="189.20", price="189.15"))
    quotes = JetStreamQuotes(js, namespace, max_age=0)
    follower = asyncio.create_task(quotes.follow(nats_conn))
    try:
        await asyncio.wait_for(quotes.ready.wait(), 10)
        reads = js.reads  # the start: the last event of each listed symbol
        assert await quotes.touch("AAPL") == Touch(Decimal("189.10"), Decimal("189.20"), Decimal("189.15"))
        assert await quotes.touch("MSFT") == NO_MARKET  # listed, nothing published yet
        await publish_md(js, namespace, md_event("AAPL", 2, bid="189.30", ask="189.40", price="189.35"))
        await publish_md(js, namespace, md_event("MSFT", 1, bid="410.00", ask="410.10"))

        async def fresh():
            return (await quotes.touch("AAPL")).ask == Decimal("189.40") and (await quotes.touch("MSFT")).bid

        assert await eventually(fresh, timeout=10)
        assert js.reads == reads  # every answer came from the feed, none from a request
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
    assert not quotes.ready.is_set()
    assert (await quotes.touch("AAPL")).ask == Decimal("189.40") and js.reads == reads + 1  # read again


class DeafStream:
    """The JetStream context, except that its subscriptions deliver nothing: as a consumer that
    nats-py failed to re-create after a gap (it says so only to the error callback)."""

    def __init__(self, js) -> None:
        self.js = js

    def __getattr__(self, name):
        return getattr(self.js, name)

    async def subscribe(self, *args, cb=None, **kwargs):
        async def deaf(msg) -> None:
            pass
        return await self.js.subscribe(*args, cb=deaf, **kwargs)


class LossyStream(DeafStream):
    """Its subscriptions miss the first message and deliver the rest (as nats-py drops messages
    from a subscription whose queue is full)."""

    async def subscribe(self, *args, cb=None, **kwargs):
        missed = []

        async def lossy(msg) -> None:
            if not missed:
                missed.append(msg)
                return
            await cb(msg)
        return await self.js.subscribe(*args, cb=lossy, **kwargs)


async def test_a_feed_whose_subscription_delivers_nothing_while_the_stream_grows_is_followed_afresh(
        nats_conn, namespace):
    """Round 18 review: the feed waited for ever on a subscription that had stopped, `ready`
    still set: frozen quotes and market prices behind a SERVING health check. Now it raises,
    and its supervisor follows the feed again; a quiet feed that delivers all it has does not."""
    from meshkit.marketdata import FeedStalled, follow_feed

    js = nats_conn.jetstream()
    stream = await bus.ensure_stream(js, namespace, "md")
    before = (await js.stream_info(stream)).state.consumer_count
    seen: list = []
    ready = asyncio.Event()
    healthy = asyncio.create_task(follow_feed(js, namespace, ["KO"], seen.append, ready, check_every=0.3))
    deaf = asyncio.create_task(follow_feed(DeafStream(js), namespace, ["KO"], lambda m: None, asyncio.Event(),
                                           check_every=0.3))
    # One that missed a message and has the later ones is caught up, not stalled (the diff
    # review: a count of messages against the stream's sequences called it stalled for good).
    lossy = asyncio.create_task(follow_feed(LossyStream(js), namespace, ["KO"], lambda m: None, asyncio.Event(),
                                            check_every=0.3))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        async def all_subscribed() -> bool:  # the three followers' consumers
            return (await js.stream_info(stream)).state.consumer_count >= before + 3
        assert await eventually(all_subscribed, timeout=20)
        await publish_md(js, namespace, md_event("KO", 1, bid="62.10", ask="62.20", price="62.15"))
        await publish_md(js, namespace, md_event("KO", 2, bid="62.10", ask="62.30", price="62.15"))
        with pytest.raises(FeedStalled):
            await asyncio.wait_for(deaf, 20)
        await asyncio.sleep(1.5)  # several checks of the quiet, caught-up ones
        assert not healthy.done() and len(seen) == 2
        assert not lossy.done()
    finally:
        for task in (healthy, deaf, lossy):
            task.cancel()
        await asyncio.gather(healthy, deaf, lossy, return_exceptions=True)
