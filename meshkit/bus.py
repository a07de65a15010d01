"""NATS / JetStream connection and names. Every stream name and subject is prefixed by the
deployment's namespace, so test runs never see a developer's mesh."""
from __future__ import annotations

import asyncio
import json
import logging
import time

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import Counter, Gauge

from meshkit import aio
from meshkit.errors import causes

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


def servers(url: str) -> list[str]:
    """NATS_URL may name several servers of a cluster, comma-separated
    ("nats://nats-1:4222,nats://nats-2:4222"): the client connects to one and fails over to
    the others (and to those the cluster announces)."""
    found = [part.strip() for part in url.split(",") if part.strip()]
    if not found:
        raise ValueError(f"no NATS server in {url!r}")
    return found


# Tries per NATS server before an operator's command (settle, journal trim, consumers) says
# NATS does not answer; services keep trying for ever.
COMMAND_ATTEMPTS = 3


def unreachable(exc: BaseException | None) -> bool:
    """Whether `exc` (or what caused it) is NATS not answering (a request or publish timed
    out, no server, the connection closed or reconnecting, no stream answering) rather than an
    error of the call itself: the caller may try again once it is back."""
    import nats.errors
    import nats.js.errors

    gone = (nats.errors.TimeoutError, nats.errors.NoServersError, nats.errors.ConnectionClosedError,
            nats.errors.ConnectionReconnectingError, nats.errors.NoRespondersError,
            nats.errors.OutboundBufferLimitError, nats.errors.FlushTimeoutError,
            nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError)
    return any(isinstance(e, gone) for e in causes(exc))


class Stalled(nats.errors.TimeoutError):
    """JetStream answers but does not deliver what a consumer has pending (a read that gave
    up): NATS not answering, for `unreachable` and the CLI, with what was seen."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "nats: timeout"


# How long a read in a call's path (a symbol's last market) waits for JetStream: less than a
# client's usual deadline, so a NATS that stalls is UNAVAILABLE (BUS_UNAVAILABLE), which
# clients retry, not DEADLINE_EXCEEDED after the client gave up (round 12: 10 s).
READ_TIMEOUT = 2.0


async def answered(request, *, timeout: float = READ_TIMEOUT):
    """The answer of a JetStream request in a call's path (a coroutine), or
    nats.errors.TimeoutError after `timeout` seconds (nats-py's own default is 5)."""
    import nats.errors

    try:
        return await asyncio.wait_for(request, timeout)
    except nats.errors.TimeoutError:
        raise
    except TimeoutError as exc:  # wait_for's own
        raise nats.errors.TimeoutError from exc


async def last_msg(js, stream: str, subject: str, *, timeout: float = READ_TIMEOUT):
    """The last message of `subject` in `stream` (NotFoundError when none), or
    nats.errors.TimeoutError after `timeout` seconds."""
    return await answered(js.get_last_msg(stream, subject), timeout=timeout)


async def connect(url: str, name: str, *, attempts: int = -1) -> Client:
    """A connection that reconnects by itself. A service keeps trying for ever (-1); a
    command gives up after `attempts` tries per server and raises, so an operator hears that
    NATS does not answer instead of waiting."""
    async def on_error(exc: Exception) -> None:
        log.warning("nats error", extra={"error": repr(exc)})

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected", extra={"server": str(nc.connected_url.netloc if nc.connected_url else "")})

    nc = _Client()
    await nc.connect(servers(url), name=name, max_reconnect_attempts=attempts, reconnect_time_wait=0.5,
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


# The mesh's streams, each defined once: whichever process starts first creates it. Every
# stream is file-backed, keeps messages until its limits (retention LIMITS, discard OLD), and
# has JETSTREAM_REPLICAS copies. The duplicate window is a transport convenience only: the
# consumers drop repeats by id forever (PostgreSQL, the engine's dedupe set).
STREAMS: dict[str, dict] = {
    # order commands, one subject per symbol (order_svc's outbox relay -> the engine)
    "ORDERS": {"duplicate_window": 120.0},
    # the engine's execution journal (fills, cancels, expiries) -> order_svc, ledger_svc, settlement
    "EXECUTIONS": {"duplicate_window": 300.0},
    # market data: the latest 10,000 events of each symbol (quote_svc, the market price of orders)
    "MD": {"duplicate_window": 300.0, "max_msgs_per_subject": 10_000},
}
DEFAULT_DUPLICATE_WINDOW = 120.0


def replicas() -> int:
    """JETSTREAM_REPLICAS: copies of every stream, bucket and consumer (1 by default, one
    server; 3 on a clustered JetStream, deploy/), so a server lost loses nothing acknowledged."""
    from meshkit.config import env_int

    count = env_int("JETSTREAM_REPLICAS", 1, minimum=1)
    if count > 5:
        from meshkit.config import ConfigError

        raise ConfigError(f"setting JETSTREAM_REPLICAS must be at most 5 (JetStream's limit), got {count}")
    return count


def stream_config(namespace: str, base: str):
    """The StreamConfig of `<ns>_<BASE>` on subjects `<ns>.<base>.>` (STREAMS; other bases,
    e.g. tests' own, get the defaults)."""
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

    settings = {"duplicate_window": DEFAULT_DUPLICATE_WINDOW, **STREAMS.get(base.upper(), {})}
    return StreamConfig(
        name=stream_name(namespace, base.upper()), subjects=[subject(namespace, base.lower(), ">")],
        storage=StorageType.FILE, retention=RetentionPolicy.LIMITS, discard=DiscardPolicy.OLD,
        num_replicas=replicas(), **settings)


async def ensure_stream(js, namespace: str, base: str) -> str:
    """Create the stream `<ns>_<BASE>` (stream_config) unless it exists. An existing one keeps
    its configuration, but for its copies: a deployment that raises JETSTREAM_REPLICAS
    (one server grown into a cluster) has its streams replicated at the next start."""
    import nats.js.errors

    config = stream_config(namespace, base)
    try:
        info = await js.stream_info(config.name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:  # created concurrently by another process
            # On a cluster the other process's stream can be known by name before its group
            # answers (STREAM.INFO 404 for a moment): wait for it, a bounded while.
            for attempt in range(50):
                try:
                    await js.stream_info(config.name)
                    break
                except nats.js.errors.NotFoundError:
                    if attempt == 49:
                        raise
                    await asyncio.sleep(0.2)
        return config.name
    if (info.config.num_replicas or 1) != config.num_replicas:
        info.config.num_replicas = config.num_replicas
        try:
            await js.update_stream(info.config)
            log.info("stream replicas changed", extra={"stream": config.name, "replicas": config.num_replicas})
        except nats.js.errors.Error as exc:  # e.g. more copies than servers: keep serving with what is there
            log.warning("could not change the stream's replicas",
                        extra={"stream": config.name, "replicas": config.num_replicas, "error": repr(exc)})
    return config.name


# A key of `pipelined` that every other key shares: its item goes in a chunk of its own.
ALONE = "*"


def pipelined(items: list, size: int, keys) -> list[list]:
    """`items` in order, cut into chunks of at most `size` whose publishes are pipelined (all
    sent, then all their acknowledgements awaited; the next chunk is sent only once every
    publish of this one is stored). Two items that share a key (`keys(item)`, a set; `ALONE`
    shares with everything) never go in one chunk: a chunk whose first publishes are refused
    while the later ones are stored (a stream leader elected in its middle) is sent again from
    its first refused item, which would then be stored after a later item of the same key
    (round 14 review 2, F3). Across chunks an item is sent only once everything before it is
    stored, so what is stored is always a prefix of each key's items, in order."""
    chunks: list[list] = []
    chunk: list = []
    named: set = set()
    for item in items:
        mine = keys(item)
        if chunk and (len(chunk) >= size or ALONE in mine or ALONE in named or not named.isdisjoint(mine)):
            chunks.append(chunk)
            chunk, named = [], set()
        chunk.append(item)
        named |= mine
    if chunk:
        chunks.append(chunk)
    return chunks


def consumer_config(subject_filter: str, durable: str, *, ack_wait: float = 30, max_ack_pending: int = 10_000,
                    start_seq: int | None = None):
    """The ConsumerConfig of `consume`'s durables: explicit acks, from the stream's first
    message (or from `start_seq`)."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    return ConsumerConfig(
        durable_name=durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait, max_ack_pending=max_ack_pending,
        filter_subject=subject_filter,
        deliver_policy=DeliverPolicy.ALL if start_seq is None else DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start_seq)


async def consumers(js, stream: str) -> list:
    """Every consumer of the stream (ConsumerInfo), all pages of JetStream's list."""
    found: list = []
    while page := await js.consumers_info(stream, offset=len(found)):
        found += page
    return found


class ConsumerGone(Exception):
    """The consumer was deleted (another engine took the symbol over) or the pull failed."""


class DeliveryGap(ConsumerGone):
    """A delivery of the consumer never reached this reader (lost in flight when its NATS
    server went, or taken by a stale pull request): JetStream gives it again only after
    ack_wait, behind the messages delivered since. Read again from the first message not
    acknowledged, or an order's last fill is applied before an earlier one (round 14 review)."""


class Puller:
    """Continuous pull from a durable consumer: keeps pull requests outstanding (credit
    between batch/2 and 2×batch) so messages flow without a round trip each, and hands them
    out as soon as they arrive, in delivery order, up to ``batch`` at a time.

    (nats-py's ``fetch(n)`` waits for the whole batch or its timeout once one message has
    arrived, which costs up to the timeout in latency when the flow is light.)
    """

    def __init__(self, nc, stream: str, durable: str, batch: int, expires: float = 5.0, *,
                 delivered: int | None = None) -> None:
        self.nc, self.batch, self.expires = nc, batch, expires
        # Given `delivered` (the durable's only reader: the consumer's delivered sequence as it
        # starts), every delivery must come: the consumer numbers its deliveries (redeliveries
        # too), and a number skipped raises DeliveryGap.
        self.gapless = delivered is not None
        self.delivered = delivered  # the consumer sequence of the last delivery taken
        self.api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.inbox = nc.new_inbox()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.credit = 0
        self.requested_at = 0.0  # monotonic time of the latest pull request
        self.sub = None

    async def start(self) -> None:
        async def on_msg(msg: Msg) -> None:
            self.queue.put_nowait(msg)
        self.sub = await self.nc.subscribe(self.inbox, cb=on_msg)

    async def _request(self) -> None:
        body = json.dumps({"batch": self.batch, "expires": int(self.expires * 1e9)}).encode()
        await self.nc.publish(self.api, body, reply=self.inbox)
        self.credit += self.batch
        self.requested_at = time.monotonic()

    def _take(self, msg: Msg, out: list) -> None:
        status = msg.headers.get("Status") if msg.headers and not msg.data else None
        if status is None:
            self.credit -= 1
            if self.gapless:
                delivered = msg.metadata.sequence.consumer
                if delivered != self.delivered + 1:
                    raise DeliveryGap(f"delivery {delivered} came after {self.delivered}: "
                                      f"{delivered - self.delivered - 1} never reached this reader")
                self.delivered = delivered
            out.append(msg)
        elif status in ("408", "409"):  # a request expired or ended: its unused credit is gone
            desc = msg.headers.get("Description", "")
            if status == "409" and ("Deleted" in desc or "Leadership" in desc):
                raise ConsumerGone(desc)
            self.credit -= int(msg.headers.get("Nats-Pending-Messages", "0") or 0)
        elif status == "503":  # no responders: the request reached no consumer (a clustered
            self.credit -= self.batch  # consumer between leaders, or just made) and is gone whole
        # 100 (heartbeat / flow control) and 404 carry nothing for us

    async def next_batch(self, timeout: float) -> list[Msg]:
        if self.credit > 0 and time.monotonic() - self.requested_at > self.expires + 1.0:
            # Every request outstanding has expired on the server by now, whether or not its
            # 408 came (a request lost with a server or a consumer leader never answers).
            self.credit = 0
        if self.credit < self.batch:
            await self._request()
        out: list[Msg] = []
        try:
            async with asyncio.timeout(timeout):  # not wait_for: see meshkit/aio.py
                self._take(await self.queue.get(), out)
        except TimeoutError:
            return out
        return out + self.ready(self.batch - len(out))

    def ready(self, n: int) -> list[Msg]:
        """Up to `n` of the messages that have come, without waiting."""
        out: list[Msg] = []
        q = self.queue
        while not q.empty() and len(out) < n:
            self._take(q.get_nowait(), out)
        if self.credit <= 0:
            self.credit = 0
        return out

    async def stop(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()

    async def hand_back(self) -> None:
        """Stop, and give back at once (nak) every message delivered and not yet taken by
        next_batch, so it comes again first rather than after its ack_wait."""
        await self.stop()
        pending = []
        while not self.queue.empty():
            msg = self.queue.get_nowait()
            if not (msg.headers and not msg.data and msg.headers.get("Status")):
                pending.append(msg)
        await _nak_all(pending)


async def consume(js, *, stream: str, subject_filter: str, durable: str, handle=None, handle_batch=None,
                  batch: int = 100, idle_wait: float = 1.0, ack_wait: float = 30,
                  max_ack_pending: int = 10_000, one_reader: bool = True, linger: float = 0.0) -> None:
    """Run a durable pull consumer forever: fetch a batch and hand it over in stream order,
    either message by message to `handle` (an async function of one message) or whole to
    `handle_batch` (an async function of the list), acking only after the handler returned.
    A failing handler is retried in place with backoff (keeping the order of what follows),
    telling JetStream the messages are still in progress; nothing is skipped or lost.

    With `one_reader` (the durable has one reader at a time, which handles it in order), the
    consumer is first reset to its ack floor (resume_at_ack_floor): what an earlier reader
    fetched and never acked, because it was killed, comes again first and in order. Pass False
    for a durable that several processes read at once (their handling must not depend on the
    order: a reset by one would hand the others' messages in flight out once more).

    `linger`: once a message has come, wait that long for more before handling what has come
    (up to `batch`), for a handler whose cost is per batch more than per message and whose
    readers can wait (the candle writer's transaction)."""
    if (handle is None) == (handle_batch is None):
        raise TypeError("pass exactly one of handle and handle_batch")
    from nats.js.errors import NotFoundError

    # The consumer's series exist from its start (0: not stuck, no failures), so an alert on
    # them sees a healthy consumer, not a missing series.
    CONSUMER_STUCK.labels(durable).set(0)
    CONSUMER_FAILURES.labels(durable)
    while True:
        delivered = await resume_at_ack_floor(js, stream, durable) if one_reader else None
        try:
            info = await js.consumer_info(stream, durable)
        except NotFoundError:
            info = await js.add_consumer(stream, consumer_config(subject_filter, durable, ack_wait=ack_wait,
                                                                 max_ack_pending=max_ack_pending))
        if one_reader and delivered is None:  # made just now
            delivered = info.delivered.consumer_seq
        # Not nats-py's fetch(): once one message has come it waits for the whole batch or the
        # timeout, so a second message close behind the first could wait up to `idle_wait` (a
        # fill reached the ledger ~1 s after order_svc had applied it). The Puller hands out
        # what has come as soon as it comes. (js._nc: JetStreamContext keeps its connection
        # private.) The only reader of a durable checks that no delivery skips it.
        puller = Puller(js._nc, stream, durable, batch, delivered=delivered)
        await puller.start()
        try:
            await _consume_loop(puller, handle, handle_batch, idle_wait, durable, linger)
        except DeliveryGap as gap:
            # Again from the first message not acknowledged (the reset above), in order.
            log.warning("a delivery never reached this reader; reading again from the first message not "
                        "acknowledged", extra={"durable": durable, "error": str(gap)})
        finally:
            # Withdraw the inbox of the pull requests still outstanding: without interest the
            # server drops them, instead of delivering the next messages to a reader that is
            # gone; what was delivered and not handled goes back at once, in order.
            try:
                await asyncio.shield(puller.hand_back())
            except Exception:  # noqa: BLE001 - closing anyway
                pass


class ConsumerResetUnsupported(RuntimeError):
    """The NATS server cannot reset a consumer ($JS.API.CONSUMER.RESET, server 2.14+)."""


async def resume_at_ack_floor(js, stream: str, durable: str) -> int | None:
    """Reset the durable consumer to its ack floor (ADR-60, nats-server 2.14+), so its next
    deliveries start with the first message not acked. A reader killed with messages fetched
    and not acked leaves them pending; JetStream would hand them out again only when their
    ack_wait ran out, after what the next reader takes meanwhile: a later message of the
    stream handled before an earlier one (for the ledger, an order's last fill releasing what
    is left of its hold before an earlier fill captured its part, which then can never apply).
    No consumer yet: nothing to do (it is created starting at the stream's first message).
    A server without the API is refused with ConsumerResetUnsupported rather than consumed out
    of order after a crash. Returns the consumer's delivered sequence as the reset left it (the
    next delivery is the one after it), or None when there is no consumer: read from the reset's
    own answer, since a stale pull request may take a delivery right after it."""
    from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

    try:
        await js.consumer_info(stream, durable)
    except NotFoundError:  # (the reset API does not answer for a consumer that does not exist)
        return None
    try:
        reset = await js._api_request(f"{js._prefix}.CONSUMER.RESET.{stream}.{durable}", b"", timeout=5)
    except (APIError, ServiceUnavailableError, TimeoutError) as exc:  # nats' TimeoutError is asyncio's
        raise ConsumerResetUnsupported(
            f"could not reset consumer {durable} on {stream} to its ack floor ({exc!r}); StockMesh needs "
            "nats-server 2.14 or later (the launcher's own is pinned: unset NATS_URL to use it)") from exc
    log.info("consumer resumed at its ack floor", extra={"durable": durable, "stream": stream})
    return int(reset.get("delivered", {}).get("consumer_seq", 0))


async def _until_done(work, msgs, durable: str) -> None:
    """Await `work()` until it succeeds, backing off and keeping `msgs` in progress."""
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
        except Exception as exc:  # noqa: BLE001 - retried in place, never skipped
            attempts += 1
            failing_since = failing_since or time.monotonic()
            CONSUMER_FAILURES.labels(durable).inc()
            CONSUMER_STUCK.labels(durable).set(time.monotonic() - failing_since)
            _say_failed(exc, {"subject": msgs[0].subject, "durable": durable, "attempts": attempts})
            for m in msgs:
                await m.in_progress()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _say_failed(exc: Exception, about: dict) -> None:
    """A handler's failure: at WARNING in one line when a connection failed under it (PostgreSQL's
    session ended, NATS reconnecting: the retry gets over it), else at ERROR with the traceback
    (what keeps failing so is what stockmesh_consumer_stuck_seconds shows)."""
    from meshkit.transient import one_line, transient  # (it imports this module)

    if (reason := transient(exc)) is None:
        log.exception("message handling failed; retrying", extra=about)
    else:
        log.warning("message handling failed; retrying", extra={**about, "reason": reason, "error": one_line(exc)})


async def _consume_loop(puller: Puller, handle, handle_batch, idle_wait: float, durable: str,
                        linger: float = 0.0) -> None:
    while True:
        aio.honour_cancellation()  # one lost in nats-py's requests (start-up) ends the loop here
        msgs = await puller.next_batch(timeout=idle_wait)
        if not msgs:
            continue
        done = 0
        try:
            if linger and len(msgs) < puller.batch:
                await asyncio.sleep(linger)  # (cancelled here: every message is handed back below)
                msgs += puller.ready(puller.batch - len(msgs))
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
