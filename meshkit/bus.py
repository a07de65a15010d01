"""NATS / JetStream connection and names. Every stream name and subject is prefixed by the
deployment's namespace, so test runs never see a developer's mesh."""
from __future__ import annotations

import logging
import time

from nats.aio.client import Client
from prometheus_client import Counter, Gauge

log = logging.getLogger("meshkit.bus")

# A consumer retries a failing message in place, forever (nothing is skipped: an execution
# may be a fill that moves money), so a message that always fails stops its consumer. These
# make that visible: alert on stockmesh_consumer_stuck_seconds > 0 for more than a minute.
CONSUMER_FAILURES = Counter("stockmesh_consumer_failures_total",
                            "Handler failures of a durable consumer (each is retried)", ["durable"])
CONSUMER_STUCK = Gauge("stockmesh_consumer_stuck_seconds",
                       "How long the consumer's current message has been failing (0: not stuck)", ["durable"])


class _Client(Client):
    """nats-py's client with one fix. A flush that times out (the server stalled: a slow disk,
    a paused VM) cancels its PONG future but leaves it queued; when the server answers again,
    nats-py 2.16 sets that cancelled future's result, the InvalidStateError ends the client's
    read loop, and the connection stays "connected" reading nothing: no acks, no messages, no
    reconnect, for good (seen with nats-server SIGSTOPped for 8 s: every service wedged).
    Each PONG answers the oldest PING, so one whose flush gave up is only taken off the queue."""

    async def _process_pong(self) -> None:
        if self._pongs and self._pongs[0].done():
            self._pongs.pop(0)
            self._pongs_received += 1
            self._pings_outstanding = 0
            return
        await super()._process_pong()


async def connect(url: str, name: str) -> Client:
    async def on_error(exc: Exception) -> None:
        log.warning("nats error", extra={"error": repr(exc)})

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    nc = _Client()
    await nc.connect(url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                     error_cb=on_error, disconnected_cb=on_disconnect, reconnected_cb=on_reconnect)
    return nc


def nats_check(nc: Client):
    async def nats_server() -> None:
        if not nc.is_connected:
            raise ConnectionError("not connected to NATS")
        # (With its read loop ended, nats-py's flush returns at once without a round trip.)
        if nc._reading_task is None or nc._reading_task.done():
            raise ConnectionError("the NATS connection stopped reading")
        await nc.flush(timeout=1)
    return nats_server


def stream_name(namespace: str, base: str) -> str:
    """JetStream stream names allow no dots: e.g. ('e2e_ab12', 'ORDERS') -> 'e2e_ab12_ORDERS'."""
    return f"{namespace}_{base}".replace(".", "_").replace("-", "_")


def subject(namespace: str, *parts: str) -> str:
    """e.g. ('stockmesh', 'orders', 'AAPL') -> 'stockmesh.orders.AAPL'."""
    return ".".join((namespace, *parts))


async def ensure_stream(js, namespace: str, base: str, *, max_msgs_per_subject: int = -1) -> str:
    """Create the file-backed stream `<ns>_<BASE>` on subjects `<ns>.<base>.>` unless it
    exists (whoever creates it first sets its configuration)."""
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    name = stream_name(namespace, base.upper())
    try:
        await js.stream_info(name)
    except NotFoundError:
        try:
            await js.add_stream(StreamConfig(
                name=name, subjects=[subject(namespace, base.lower(), ">")], storage=StorageType.FILE,
                duplicate_window=120.0, max_msgs_per_subject=max_msgs_per_subject))
        except Exception:  # noqa: BLE001 - created concurrently by another process
            await js.stream_info(name)
    return name


async def consume(js, *, stream: str, subject_filter: str, durable: str, handle=None, handle_batch=None,
                  batch: int = 100, idle_wait: float = 1.0, ack_wait: float = 30,
                  max_ack_pending: int = 10_000, one_reader: bool = True) -> None:
    """Run a durable pull consumer forever: fetch a batch and hand it over in stream order,
    either message by message to `handle` (an async function of one message) or whole to
    `handle_batch` (an async function of the list), acking only after the handler returned.
    A failing handler is retried in place with backoff (keeping the order of what follows),
    telling JetStream the messages are still in progress; nothing is skipped or lost.

    With `one_reader` (the durable has one reader at a time, which handles it in order), the
    consumer is first reset to its ack floor (resume_at_ack_floor): what an earlier reader
    fetched and never acked, because it was killed, comes again first and in order. Pass False
    for a durable that several processes read at once (their handling must not depend on the
    order: a reset by one would hand the others' messages in flight out once more)."""
    import asyncio

    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    if (handle is None) == (handle_batch is None):
        raise TypeError("pass exactly one of handle and handle_batch")
    if one_reader:
        await resume_at_ack_floor(js, stream, durable)
    sub = await js.pull_subscribe(subject_filter, durable=durable, stream=stream, config=ConsumerConfig(
        durable_name=durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait, max_ack_pending=max_ack_pending, filter_subject=subject_filter))
    try:
        await _consume_loop(sub, handle, handle_batch, batch, idle_wait, durable)
    finally:
        # Withdraw the inbox of the pull request still outstanding: without interest the
        # server drops it, instead of delivering the next messages to a reader that is gone
        # (they would come back only after ack_wait, behind what a new consumer took meanwhile).
        try:
            await asyncio.shield(sub.unsubscribe())
        except Exception:  # noqa: BLE001 - closing anyway
            pass


class ConsumerResetUnsupported(RuntimeError):
    """The NATS server cannot reset a consumer ($JS.API.CONSUMER.RESET, server 2.14+)."""


async def resume_at_ack_floor(js, stream: str, durable: str) -> None:
    """Reset the durable consumer to its ack floor (ADR-60, nats-server 2.14+), so its next
    deliveries start with the first message not acked. A reader killed with messages fetched
    and not acked leaves them pending; JetStream would hand them out again only when their
    ack_wait ran out, after what the next reader takes meanwhile: a later message of the
    stream handled before an earlier one (for the ledger, an order's last fill releasing what
    is left of its hold before an earlier fill captured its part, which then can never apply).
    No consumer yet: nothing to do (it is created starting at the stream's first message).
    A server without the API is refused with ConsumerResetUnsupported rather than consumed out
    of order after a crash."""
    from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

    try:
        await js.consumer_info(stream, durable)
    except NotFoundError:  # (the reset API does not answer for a consumer that does not exist)
        return
    try:
        await js._api_request(f"{js._prefix}.CONSUMER.RESET.{stream}.{durable}", b"", timeout=5)
    except (APIError, ServiceUnavailableError, TimeoutError) as exc:  # nats' TimeoutError is asyncio's
        raise ConsumerResetUnsupported(
            f"could not reset consumer {durable} on {stream} to its ack floor ({exc!r}); StockMesh needs "
            "nats-server 2.14 or later (the launcher's own is pinned: unset NATS_URL to use it)") from exc
    log.info("consumer resumed at its ack floor", extra={"durable": durable, "stream": stream})


async def _until_done(work, msgs, durable: str) -> None:
    """Await `work()` until it succeeds, backing off and keeping `msgs` in progress."""
    import asyncio

    delay = 0.2
    failing_since = None
    attempts = 0
    while True:
        try:
            await work()
            if failing_since is not None:
                CONSUMER_STUCK.labels(durable).set(0)
                log.info("message handled after failures", extra={"durable": durable, "attempts": attempts + 1})
            return
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - retried in place, never skipped
            attempts += 1
            failing_since = failing_since or time.monotonic()
            CONSUMER_FAILURES.labels(durable).inc()
            CONSUMER_STUCK.labels(durable).set(time.monotonic() - failing_since)
            log.exception("message handling failed; retrying",
                          extra={"subject": msgs[0].subject, "durable": durable, "attempts": attempts})
            for m in msgs:
                await m.in_progress()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _consume_loop(sub, handle, handle_batch, batch: int, idle_wait: float, durable: str) -> None:
    import asyncio

    while True:
        try:
            msgs = await sub.fetch(batch, timeout=idle_wait)
        except asyncio.TimeoutError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # nats-py turns a cancel into a timeout
                raise asyncio.CancelledError from None
            continue
        done = 0
        try:
            if handle_batch is not None:
                await _until_done(lambda: handle_batch(msgs), msgs, durable)
                for m in msgs:
                    await m.ack()
                done = len(msgs)
            else:
                for msg in msgs:
                    await _until_done(lambda: handle(msg), [msg], durable)
                    await msg.ack()
                    done += 1
        except asyncio.CancelledError:
            # Stopping mid-batch: hand back what was fetched and not handled, at once and in
            # order, rather than after ack_wait behind what the next consumer takes meanwhile.
            await asyncio.shield(_nak_all(msgs[done:]))
            raise


async def _nak_all(msgs) -> None:
    for m in msgs:
        try:
            await m.nak()
        except Exception:  # noqa: BLE001 - redelivered after ack_wait anyway
            pass
