"""The latest market of a symbol, read from the engine's market-data stream: the last
MarketDataEvent on `<ns>.md.<SYMBOL>` carries the top of the book and the last trade price."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable, Iterable

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from meshkit import bus
from meshkit.errors import Unavailable
from meshkit.symbols import listed

log = logging.getLogger("meshkit.marketdata")


@dataclass(frozen=True)
class Touch:
    bid: Decimal | None
    ask: Decimal | None
    last: Decimal | None
    halted: bool = False  # the engine halted the symbol (its latest market-data event says so)


NO_MARKET = Touch(None, None, None)

def _d(text: str) -> Decimal | None:
    return Decimal(text) if text else None


class FeedStalled(ConnectionError):
    """The market-data stream held messages a whole interval ago that the subscription following
    it has not reached, and it delivered nothing further in that interval (or the stream was
    made anew)."""


async def follow_feed(js: JetStreamContext, namespace: str, symbols: Iterable[str],
                      on_msg: Callable[[Msg], None], ready: asyncio.Event, *, check_every: float = 10.0) -> None:
    """Hand every market-data message to `on_msg` (a plain function, called in stream order
    per symbol): first the last stored message of each symbol, then everything after, until
    cancelled. Sets `ready` once the last message of each symbol has been handed over.

    An *ordered consumer* (ephemeral, in memory, no acks, re-created by the client on a gap):
    each process follows the whole feed on its own, sharing nothing with others. Every
    `check_every` seconds the stream's last sequence is read: if the last message delivered is
    still before what the stream held a whole interval ago and nothing further came in that
    interval, the consumer is not delivering (nats-py re-creates it from a background task that
    can fail, and says so only to the error callback) and FeedStalled is raised, so the
    caller's supervisor follows the feed afresh instead of serving frozen quotes while healthy
    (round 18 review). NATS not answering is waited out: the client recovers."""
    stream = await bus.ensure_stream(js, namespace, "md")
    info = await js.stream_info(stream)
    start = info.state.last_seq + 1
    for symbol in symbols:
        try:
            on_msg(await js.get_last_msg(stream, bus.subject(namespace, "md", symbol)))
        except NotFoundError:
            continue

    latest: Msg | None = None  # the last message delivered (its stream sequence is read only when checked)

    async def deliver(msg: Msg) -> None:
        nonlocal latest
        latest = msg
        on_msg(msg)

    def reached() -> int:
        """The stream sequence of the last message delivered (start - 1: none yet)."""
        return latest.metadata.sequence.stream if latest is not None else start - 1

    # Everything stored after the moment we looked: nothing falls between the two reads.
    sub = await js.subscribe(
        bus.subject(namespace, "md", ">"), stream=stream, cb=deliver, ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start,
                              inactive_threshold=60.0),
        idle_heartbeat=2.0)
    ready.set()
    try:  # the subscription's callback does the work; this watches it
        known: int | None = start - 1  # the stream's last sequence a whole interval ago (None: not known)
        was = start - 1  # reached() then
        while True:
            await asyncio.sleep(check_every)
            try:
                now = (await js.stream_info(stream)).state.last_seq
            except Exception as exc:  # noqa: BLE001
                if not bus.unreachable(exc):
                    raise
                known = None  # the client catches up once NATS answers: judged from the next check on
                continue
            got = reached()
            # What the stream held an interval ago should have been delivered by now (every
            # message of it is on our subjects). Short of it, and not a message further for a
            # whole interval: gone (one merely slow, a busy process, still moves on). A stream
            # whose sequence went back was made anew under us: followed afresh too.
            if known is not None and ((got < known and got == was) or now < known):
                raise FeedStalled(f"the market-data stream {stream} was at sequence {known} {check_every:g} s ago "
                                  f"and is at {now}; the feed delivered up to {got}, nothing since; following it "
                                  "afresh")
            known, was = now, got
    finally:
        ready.clear()
        try:
            await sub.unsubscribe()
        except (nats.errors.Error, nats.js.errors.Error):
            pass


class JetStreamQuotes:
    """With `follow` running (order_svc runs it in the background: it prices every order),
    the latest market of every symbol arrives as the engine publishes it (an ordered consumer
    on `<ns>.md.>` that starts from each symbol's last event), and `touch` answers from
    memory: no request to JetStream in the order's path, and as fresh as the feed. Following
    costs a decode per market-data event, so a service that asks rarely (ledger_svc, for
    portfolios) does not follow.

    Without it (or for a symbol the feed has not brought yet, or while NATS is disconnected)
    `touch` reads the last event (when NATS does not answer: the last market known here, if
    any, else UNAVAILABLE; once a read found NATS not answering, the last market known is
    answered at once while the next read tries, until one succeeds): reads are cached for
    `max_age` seconds per symbol (a hot symbol's orders share one read instead of each asking
    JetStream), and a symbol has at
    most one read in flight: callers arriving while it runs wait for it instead of each
    asking again (no stampede of reads every time the cached value expires)."""

    def __init__(self, js: JetStreamContext, namespace: str, max_age: float = 0.05) -> None:
        self.js = js
        self.stream = bus.stream_name(namespace, "MD")
        self.namespace = namespace
        self.max_age = max_age
        self._cache: dict[str, tuple[float, Touch]] = {}
        self._reading: dict[str, asyncio.Future[Touch]] = {}
        self._live: dict[str, Touch] = {}
        self._live_seq: dict[str, int] = {}  # the feed's sequence of each symbol's _live touch
        self._unanswered = False  # the latest read found NATS not answering
        self._nc: Client | None = None
        self.ready = asyncio.Event()

    async def follow(self, nc: Client) -> None:
        """Keep every listed symbol's latest market from the feed, until cancelled."""
        from stockmesh.matching.v1 import matching_pb2

        def on_msg(msg) -> None:
            try:
                ev = matching_pb2.MarketDataEvent.FromString(msg.data)
            except Exception:  # noqa: BLE001 - a message we cannot read is logged and passed over
                log.warning("undecodable market-data message", extra={"subject": msg.subject})
                return
            if ev.sequence and ev.sequence <= self._live_seq.get(ev.symbol, 0):
                # An older event stored again late (a stale engine's buffered publish, a replay
                # past the duplicate window): the market never goes back (round 14 review 2).
                return
            self._live[ev.symbol] = _touch(ev)
            self._live_seq[ev.symbol] = ev.sequence

        self._nc = nc
        try:
            await follow_feed(self.js, self.namespace, sorted(listed()), on_msg, self.ready)
        finally:
            self._nc = None
            self._live.clear()
            self._live_seq.clear()

    def _live_touch(self, symbol: str) -> Touch | None:
        """From the feed, when it is followed, caught up and connected (a listed symbol it
        brought nothing for has no market yet)."""
        if self.ready.is_set() and self._nc is not None and self._nc.is_connected:
            if symbol in self._live:
                return self._live[symbol]
            if symbol in listed():
                return NO_MARKET
        return None

    async def touch(self, symbol: str) -> Touch:
        live = self._live_touch(symbol)
        if live is not None:
            return live
        hit = self._cache.get(symbol)
        if hit is not None and time.monotonic() - hit[0] < self.max_age:
            return hit[1]
        reading = self._reading.get(symbol)
        if reading is None:
            reading = self._reading[symbol] = asyncio.ensure_future(self._refresh(symbol))
            reading.add_done_callback(lambda done: self._read_done(symbol, done))
        # NATS does not answer. Nothing trades meanwhile (the engines take their orders and
        # publish their trades through it), so the last market known here is still the
        # latest: a portfolio is valued, a market order priced, at it.
        known = self._live.get(symbol) or (hit[1] if hit is not None else None)
        if self._unanswered and known is not None:
            return known  # at once, while the read above tries again (round 12: each waited for it)
        # Shielded: a caller that gives up (a cancelled RPC) does not cancel the others' read.
        try:
            return await asyncio.shield(reading)
        except Unavailable:
            if known is None:
                raise
            return known

    def _read_done(self, symbol: str, done: asyncio.Future[Touch]) -> None:
        self._reading.pop(symbol, None)
        if not done.cancelled():
            self._unanswered = isinstance(done.exception(), Unavailable)  # (retrieved: none is left unread)

    async def _refresh(self, symbol: str) -> Touch:
        at = time.monotonic()
        value = await self._read(symbol)
        self._cache[symbol] = (at, value)
        return value

    async def _read(self, symbol: str) -> Touch:
        from stockmesh.matching.v1 import matching_pb2

        try:
            msg = await bus.last_msg(self.js, self.stream, bus.subject(self.namespace, "md", symbol))
        except NotFoundError:
            return NO_MARKET
        except (nats.errors.Error, OSError, TimeoutError) as exc:  # NATS down or restarting: a retry will do
            raise Unavailable(f"the market of {symbol} cannot be read now ({type(exc).__name__}); retry") from exc
        return _touch(matching_pb2.MarketDataEvent.FromString(msg.data))


def _touch(ev) -> Touch:
    return Touch(_d(ev.bid_price), _d(ev.ask_price), _d(ev.last_price or ev.trade_price), ev.halted)
