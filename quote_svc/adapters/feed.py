"""The engine's market data on JetStream (`<ns>_MD`, subjects `<ns>.md.<SYMBOL>`).

Two ways of reading it:

* `follow_quotes`: each replica follows the whole feed on its own, with an *ordered
  consumer* (ephemeral, in memory, no acks, re-created by the client on a gap), after
  reading the last message of every listed symbol: so it has every symbol's latest quote
  at once and every change after it, without sharing anything with other replicas.
* `consume_trades`: one *durable* pull consumer (`quotes_candles`) shared by all replicas,
  so each trade is folded into the candles by one of them; applying is idempotent and
  commutative (see the migration), so a redelivery or two replicas racing change nothing.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Awaitable, Callable, Iterable

from nats.js import JetStreamContext

from meshkit import bus
from meshkit.marketdata import follow_feed
from quote_svc.adapters.codec import md_from_bytes
from quote_svc.domain.quotes import MarketData, Quote, next_quote, visible

log = logging.getLogger("quote_svc.feed")

CANDLES_DURABLE = "quotes_candles"
# How long the candle writer waits, once a trade has come, for more to fold in with it: its
# transaction costs about the same for one trade as for a hundred, and a busy session's trades
# came one or two at a time, a transaction each in each replica (round 26). Candles are read
# (GetCandles) behind the feed anyway.
CANDLES_LINGER = 0.1


def _decode(msg) -> MarketData | None:
    try:
        return md_from_bytes(msg.data)
    except Exception:  # noqa: BLE001 - a message we cannot read is logged and passed over
        log.warning("undecodable market-data message", extra={"subject": msg.subject})
        return None


async def follow_quotes(js: JetStreamContext, namespace: str, symbols: Iterable[str],
                        apply: Callable[[MarketData], None], ready: asyncio.Event) -> None:
    """Hand every market-data event to `apply` (a plain function, called in stream order per
    symbol): first the last stored event of each symbol, then everything after. Sets `ready`
    once the latest event of each symbol has been applied."""
    def on_msg(msg) -> None:
        ev = _decode(msg)
        if ev is not None:
            apply(ev)

    await follow_feed(js, namespace, symbols, on_msg, ready)


async def of_this_feed(js: JetStreamContext, namespace: str, cached: Iterable) -> list:
    """The cached quotes (Redis) to seed the book with: those no newer than the last event the
    stream holds of their symbol, which the feed then applies over them at once (one of the
    same sequence is that event's quote, and keeps what the event alone does not carry: the
    last trade's size, if all else the event says is the same). A cache of the same namespace
    left by another history (a data folder started afresh, JetStream restored to an earlier
    point) holds the same or higher sequences, and a quote seeded from it stayed frozen until
    the feed overtook it, hours on a quiet symbol (round 15). The others are dropped, with a warning;
    with NATS not answering, all of them (the feed rebuilds every quote)."""
    import nats.errors
    from nats.js.errors import NotFoundError

    stream = await bus.ensure_stream(js, namespace, "md")
    kept = []
    for q in cached:
        try:
            last = _decode(await bus.last_msg(js, stream, bus.subject(namespace, "md", q.symbol)))
        except NotFoundError:
            last = None
        except nats.errors.TimeoutError:
            log.warning("could not check the cached quotes against the feed; none taken")
            return []
        if last is not None and (q.sequence < last.sequence or q.sequence == last.sequence and _made_by(q, last)):
            # One of the feed's own last event (a symbol quiet since) is kept too: it is that
            # event's quote, and only it still knows the last trade's size when the event was
            # not a trade (round 27: rebuilt from a book change alone, last_size was 0 after
            # every restart). The event, applied next, is then no newer and adds nothing.
            kept.append(q)
        else:
            log.warning("cached quote from another market-data history dropped",
                        extra={"symbol": q.symbol, "cached_sequence": q.sequence,
                               "feed_sequence": None if last is None else last.sequence})
    return kept


def _made_by(q: Quote, ev: MarketData) -> bool:
    """Whether `q` (of the same sequence as `ev`) is `ev`'s quote: all a client sees of it the
    same (the last trade's size aside, which a book change does not carry)."""
    rebuilt = next_quote(None, ev)
    return rebuilt is not None and visible(replace(rebuilt, last_size=q.last_size)) == visible(q)


async def consume_trades(js: JetStreamContext, namespace: str,
                         handle: Callable[[list[MarketData]], Awaitable[object]], *,
                         batch: int = 500, durable: str = CANDLES_DURABLE, linger: float = CANDLES_LINGER) -> None:
    """Fetch batches from the shared durable consumer (what comes within `linger` of a trade goes
    with it); `handle` each batch (retried in place until it succeeds), then ack it."""
    stream = await bus.ensure_stream(js, namespace, "md")

    async def handle_batch(msgs) -> None:
        await handle([ev for ev in map(_decode, msgs) if ev is not None])

    await bus.consume(js, stream=stream, subject_filter=bus.subject(namespace, "md", ">"), durable=durable,
                      handle_batch=handle_batch, batch=batch, ack_wait=60, max_ack_pending=20_000,
                      one_reader=False,  # every replica reads it; folding trades in does not depend on order
                      linger=linger)
