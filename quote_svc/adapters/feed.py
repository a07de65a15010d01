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
from typing import Awaitable, Callable, Iterable

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from meshkit import bus
from quote_svc.adapters.codec import md_from_bytes
from quote_svc.domain.quotes import MarketData

log = logging.getLogger("quote_svc.feed")

# The engine's settings for the stream (matching_svc/adapters/jetstream.py): whoever starts
# first creates it, with the same configuration.
MD_PER_SUBJECT = 10_000
MD_DUPLICATE_WINDOW = 300.0
CANDLES_DURABLE = "quotes_candles"


async def ensure_md_stream(js: JetStreamContext, namespace: str) -> str:
    name = bus.stream_name(namespace, "MD")
    try:
        await js.add_stream(StreamConfig(
            name=name, subjects=[bus.subject(namespace, "md", ">")], storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS, discard=DiscardPolicy.OLD, max_msgs_per_subject=MD_PER_SUBJECT,
            duplicate_window=MD_DUPLICATE_WINDOW, num_replicas=1))
    except nats.js.errors.BadRequestError:
        await js.stream_info(name)  # exists already (perhaps with the engine's own settings)
    return name


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
    stream = await ensure_md_stream(js, namespace)
    info = await js.stream_info(stream)
    start = info.state.last_seq + 1
    for symbol in symbols:
        try:
            msg = await js.get_last_msg(stream, bus.subject(namespace, "md", symbol))
        except nats.js.errors.NotFoundError:
            continue
        ev = _decode(msg)
        if ev is not None:
            apply(ev)

    async def on_msg(msg) -> None:
        ev = _decode(msg)
        if ev is not None:
            apply(ev)

    # Everything stored after the moment we looked: nothing falls between the two reads.
    sub = await js.subscribe(
        bus.subject(namespace, "md", ">"), stream=stream, cb=on_msg, ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start,
                              inactive_threshold=60.0),
        idle_heartbeat=2.0)
    ready.set()
    try:
        await asyncio.Event().wait()  # the subscription's callback does the work
    finally:
        ready.clear()
        try:
            await sub.unsubscribe()
        except (nats.errors.Error, nats.js.errors.Error):
            pass


async def consume_trades(js: JetStreamContext, namespace: str,
                         handle: Callable[[list[MarketData]], Awaitable[object]], *,
                         batch: int = 500, durable: str = CANDLES_DURABLE) -> None:
    """Fetch batches from the shared durable consumer; `handle` each batch (retried in place
    until it succeeds), then ack it."""
    stream = await ensure_md_stream(js, namespace)

    async def handle_batch(msgs) -> None:
        await handle([ev for ev in map(_decode, msgs) if ev is not None])

    await bus.consume(js, stream=stream, subject_filter=bus.subject(namespace, "md", ">"), durable=durable,
                      handle_batch=handle_batch, batch=batch, ack_wait=60, max_ack_pending=20_000)
