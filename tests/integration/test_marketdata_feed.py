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
