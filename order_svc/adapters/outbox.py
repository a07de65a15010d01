"""The outbox relay: publishes what the order transactions wrote to orders.outbox to the
JetStream stream of order flow, in id order, one relay at a time (a PostgreSQL advisory
lock elects it), marking each row once JetStream has acknowledged it.

It runs inside order_svc, or as a process of its own (order_svc.entrypoints.relay; the
launcher's choice), so that under load the hand-off to the engine does not wait for turns
on the front door's busy event loop. Either way it wakes on the PostgreSQL notification that
every commit writing to the outbox sends (migration 0006), so a relay elsewhere than the
transaction that wrote the row starts at once; order_svc's in-process wake() is the same
signal without the round trip, and an idle poll is the safety net.

A crash between the publish and the mark republishes the row: JetStream's duplicate window
drops it by Nats-Msg-Id, and the engine drops repeats by id anyway.

Published rows are kept for a while (ORDER_OUTBOX_RETENTION_HOURS, a week by default), then
the elected relay deletes those nothing will ask about again (OutboxRepository.prune: session
closes and the commands of orders that have ended), on a connection of its own so that pruning
never holds up relaying (a session close at least 16 days: see repository.CLOSE_KEPT): every minute a scan of the rows that have come of age since the last
one, every hour a scan from the oldest row (the rows of orders that were live when a scan
passed them and have ended since). The table holds about a week of order flow and the live
orders' commands instead of all history.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

import asyncpg
import nats.errors
from nats.js import JetStreamContext

from prometheus_client import Counter, Gauge, Histogram

from meshkit import aio, bus, config, db, failpoints
from meshkit.errors import Lasting
from order_svc.adapters.repository import OUTBOX_CHANNEL, OutboxRepository

log = logging.getLogger("order_svc.outbox")
RELAY_LOCK = 0x5F0C_0B0E  # advisory lock key of the outbox relay of every namespace (namespace None)
RELAY_ROLE = "orders.outbox-relay"  # its label in stockmesh_elected{role}
# How long accepted orders (and cancels, replaces) wait before the engine can have them.
HANDOFF = Histogram("stockmesh_outbox_handoff_seconds",
                    "From the transaction that wrote an outbox row to its JetStream acknowledgement",
                    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30))
PENDING = Gauge("stockmesh_outbox_pending", "Unpublished outbox rows the relay's last round found (at most a batch)")
PRUNED = Counter("stockmesh_outbox_pruned", "Published outbox rows deleted after the retention period")
# Seconds before a round whose publish failed is tried again: doubled each failed round, up to
# the last (a NATS outage costs a warning every few seconds, not a busy loop).
PUBLISH_RETRY_FIRST, PUBLISH_RETRY_MAX = 0.5, 5.0
# Seconds of failed publishes after which the relay's task ends (an ERROR; its election given
# up for a replica whose NATS answers, and the supervisor starts it again).
PUBLISH_GIVE_UP_AFTER = 30.0


# The oldest unpublished row of a namespace's flow if it has waited $3 seconds, and the session
# holding the relay's advisory lock $2 (a bigint key: classid its high half, objid its low).
_STUCK = """
SELECT extract(epoch FROM now() - o.created_at)::float8 AS waited, a.pid, a.application_name, a.state,
       extract(epoch FROM now() - a.state_change)::int AS state_for, left(a.query, 120) AS query
FROM (SELECT created_at FROM orders.outbox WHERE published_at IS NULL AND starts_with(subject, $1)
      ORDER BY id LIMIT 1) o
LEFT JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
     AND ((l.classid::bigint << 32) | l.objid::bigint) = $2
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE o.created_at < now() - make_interval(secs => $3)
"""


def retention() -> timedelta | None:
    """ORDER_OUTBOX_RETENTION_HOURS: how long published outbox rows are kept (168, a week, by
    default; 0 keeps them forever)."""
    hours = config.env_int("ORDER_OUTBOX_RETENTION_HOURS", 168)
    return timedelta(hours=hours) if hours else None


def orders_of_command(payload: bytes) -> frozenset[str]:
    """The orders an outbox row's EngineCommand names (a new order; the order cancelled; the
    order replaced and its replacement), or, for a session close or a halt, its symbol's whole
    flow (`bus.ALONE`); empty when it cannot be read."""
    from stockmesh.matching.v1 import matching_pb2

    try:
        cmd = matching_pb2.EngineCommand.FromString(payload)
    except Exception:  # noqa: BLE001 - published as it is; the engine skips what it cannot read
        return frozenset()
    kind = cmd.WhichOneof("command")
    if kind == "new_order":
        return frozenset({cmd.new_order.order_id})
    if kind == "cancel_order":
        return frozenset({cmd.cancel_order.order_id})
    if kind == "replace_order":
        return frozenset({cmd.replace_order.order_id, cmd.replace_order.new_order_id})
    return frozenset({bus.ALONE})


def pipelined(rows: list, size: int) -> list[list]:
    """`rows` in order, in chunks to publish at once (bus.pipelined): never two rows of one
    order, or a session close or halt with anything, in one chunk; otherwise a cancel or
    replace could be stored before its order, which the engine then refuses."""
    return bus.pipelined(rows, size, lambda r: orders_of_command(bytes(r["payload"])))


class PublishFailed(Exception):
    """A relay round's publish that JetStream refused or did not acknowledge in time (NATS
    stalled, unreachable, restarting): the round's rows stay unpublished, and the relay tries
    again in place (OutboxRelay.run), keeping its election and its PostgreSQL connection."""


class PublishesKeepFailing(PublishFailed, Lasting):
    """Publishes failed for PUBLISH_GIVE_UP_AFTER seconds: the relay gives its election up (an
    ERROR, though its cause is NATS not answering: meshkit.transient)."""


class OutboxRelay:
    """With `namespace`, relays only the rows of that namespace's order flow
    (`<namespace>.orders.<SYMBOL>`): a row queued for another (a session close run by hand
    with the wrong --namespace) has no stream here, and would stop every row behind it."""

    def __init__(self, database_url: str, js: JetStreamContext, batch: int = 500, pipeline: int = 64,
                 ack_timeout: float = 5.0, idle_poll: float = 1.0, retention: timedelta | None = None,
                 prune_every: float = 60.0, full_prune_every: float = 3600.0, prune_batch: int = 1000,
                 namespace: str | None = None, statement_timeout: float = 10.0, stuck_after: float = 15.0) -> None:
        self.database_url, self.js, self.batch, self.pipeline = database_url, js, batch, pipeline
        # A statement of the relay's that does not answer within `statement_timeout` fails its
        # round (a hung or half-open connection: the relay starts again on a new one); while
        # another session holds the relay's lock and rows have waited `stuck_after` seconds,
        # a warning names that session (round 18: a stopped backend held every order back, said
        # nothing, and the relay stayed SERVING).
        self.statement_timeout, self.stuck_after = statement_timeout, stuck_after
        self.prefix = "" if namespace is None else bus.subject(namespace, "orders", "")
        # One relay per namespace: each publishes its own namespace's rows only, so one lock for
        # the database left a second namespace's orders unpublished for good (round 17 review).
        self.lock = RELAY_LOCK if namespace is None else db.lock_key(f"{namespace}.outbox-relay")
        self.ack_timeout, self.idle_poll = ack_timeout, idle_poll
        self.retention, self.prune_batch = retention, prune_batch
        self.prune_every, self.full_prune_every = prune_every, full_prune_every
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def _notified(self, _conn, _pid, _channel, _payload) -> None:
        self._wake.set()

    async def run(self) -> None:
        # A connection of its own: the election is a session lock, which dies with it.
        conn = await db.connect(self.database_url, RELAY_ROLE, command_timeout=self.statement_timeout)
        pruner: asyncio.Task | None = None
        try:
            db.ELECTION.labels(RELAY_ROLE).set(0)
            look_at = time.monotonic() + self.stuck_after  # who holds the lock, if rows wait
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.lock):
                if time.monotonic() >= look_at:
                    look_at = time.monotonic() + self.stuck_after
                    await self._say_if_stuck(conn)
                await asyncio.sleep(1)  # another replica relays; take over if it dies
            db.ELECTION.labels(RELAY_ROLE).set(1)  # which replica relays, as meshkit.db.elected says
            log.info("outbox relay elected")
            await conn.add_listener(OUTBOX_CHANNEL, self._notified)
            if self.retention is not None:
                pruner = asyncio.create_task(self._prune_forever(self.retention), name="outbox-pruner")
            failing, since = 0, 0.0  # rounds in a row whose publish failed, since when
            while True:
                aio.honour_cancellation()
                self._wake.clear()  # what is committed from here on wakes the next round
                try:
                    published = await self.relay_once(conn)
                except PublishFailed as exc:
                    # A stall of NATS, not a fault of the relay: said as a warning, and tried
                    # again in place after a pause that grows to PUBLISH_RETRY_MAX. (Round 22:
                    # each NATS stall under load ended the relay's task, logged at ERROR with a
                    # traceback as a crash, and it was restarted by its supervisor.) What is
                    # wrong with PostgreSQL still ends the round and the task: a new connection.
                    failing, since = failing + 1, since if failing else time.monotonic()
                    lasted = time.monotonic() - since
                    if lasted >= PUBLISH_GIVE_UP_AFTER:
                        # A failure that lasts (this process cut off from NATS, a stream gone, a
                        # relay pointed at the wrong NATS) ends the task after all, an ERROR,
                        # and with it the election: a replica whose NATS answers takes over
                        # (review: one that kept retrying kept every order from the engines).
                        raise PublishesKeepFailing(f"publishes failed for {lasted:.0f} s: {exc}") from exc
                    pause = min(PUBLISH_RETRY_FIRST * 2 ** min(failing - 1, 8), PUBLISH_RETRY_MAX)
                    log.warning("JetStream did not take the orders to relay; trying again", extra={
                        "error": str(exc), "failedRounds": failing, "failingSeconds": round(lasted, 1),
                        "retryInSeconds": pause})
                    await asyncio.sleep(pause)
                    continue
                if failing:
                    log.info("relaying again", extra={"failedRounds": failing})
                    failing = 0
                if published < self.batch:
                    await aio.wait_set(self._wake, self.idle_poll)
        finally:
            db.ELECTION.labels(RELAY_ROLE).set(0)
            if pruner is not None:
                pruner.cancel()
                await asyncio.gather(pruner, return_exceptions=True)
            conn.terminate()

    async def _say_if_stuck(self, conn: asyncpg.Connection) -> None:
        """While another session holds the relay's lock: a warning if the oldest row waiting to
        be published has waited `stuck_after` seconds, naming that session (a relay whose
        connection hangs, or a backend stopped: `pg_terminate_backend(pid)` ends it)."""
        try:
            row = await conn.fetchrow(_STUCK, self.prefix, self.lock, self.stuck_after)
        except (asyncpg.PostgresError, TimeoutError) as exc:  # only a warning's content: waiting goes on
            log.warning("could not look at who holds the relay's lock", extra={"error": repr(exc)})
            return
        if row is not None:
            log.warning("orders wait to be relayed to the engines while another session holds the relay's lock",
                        extra={"oldestWaitingSeconds": round(row["waited"], 1), "holderPid": row["pid"],
                               "holderApplication": row["application_name"], "holderState": row["state"],
                               "holderStateSeconds": row["state_for"], "holderQuery": row["query"]})

    async def relay_once(self, conn: asyncpg.Connection) -> int:
        """Publish up to a batch in id order. Publishes are pipelined (up to `pipeline` awaiting
        their acknowledgement at once, written to the connection in order, so each symbol's
        subject keeps the outbox order; `publish_async` answers them all on one reply
        subscription); a row is marked once JetStream acknowledged it, and an acknowledgement
        that does not come within `ack_timeout` fails the round like a refused publish."""
        repo = OutboxRepository(conn)
        rows = await repo.unpublished(self.batch, self.prefix)
        PENDING.set(len(rows))
        done: list[int] = []
        try:
            for chunk in pipelined(rows, self.pipeline):
                try:
                    acks = [await self.js.publish_async(r["subject"], bytes(r["payload"]),
                                                        headers={"Nats-Msg-Id": r["msg_id"]})
                            for r in chunk]
                    async with asyncio.timeout(self.ack_timeout):  # an ack that never comes is an error
                        results = await asyncio.gather(*acks, return_exceptions=True)
                except (TimeoutError, nats.errors.Error) as exc:
                    raise PublishFailed(f"{len(chunk)} publishes: {exc!r}") from exc
                for r, result in zip(chunk, results):
                    if isinstance(result, Exception):
                        raise PublishFailed(f"the publish of {r['msg_id']}: {result!r}") from result
                    if isinstance(result, BaseException):
                        raise result
                    done.append(r["id"])
                    failpoints.hit("relay.after_publish")
        finally:
            if done:
                for waited in await repo.mark_published(done):
                    HANDOFF.observe(waited)
        return len(rows)

    async def prune_scan(self, conn: asyncpg.Connection, retention: timedelta, after_id: int = 0) -> tuple[int, int]:
        """Prune from id `after_id` on, a batch at a time, until the rows are too recent (or
        not yet published). Returns (rows deleted, the id the next scan of new rows starts
        after)."""
        deleted, cursor = 0, after_id
        repo = OutboxRepository(conn)
        while True:
            n, more, resume = await repo.prune(cursor, retention, self.prune_batch, self.prefix)
            deleted += n
            PRUNED.inc(n)
            if more is None:
                return deleted, resume
            cursor = more

    async def _prune_forever(self, retention: timedelta) -> None:
        """While elected: a scan every `prune_every` seconds from where the last one stopped, and
        every `full_prune_every` seconds from the oldest row."""
        conn: asyncpg.Connection | None = None
        resume, next_full = 0, 0.0
        try:
            while True:
                try:
                    if conn is None or conn.is_closed():
                        conn = await db.connect(self.database_url, "orders.outbox-pruner", command_timeout=60)
                    start = 0 if time.monotonic() >= next_full else resume
                    if start == 0:
                        next_full = time.monotonic() + self.full_prune_every
                    n, resume = await self.prune_scan(conn, retention, start)
                    if n:
                        log.info("outbox pruned", extra={"rows": n})
                except Exception:  # noqa: BLE001 - relaying goes on; the next scan retries
                    log.exception("pruning the outbox failed; retrying at the next scan")
                await asyncio.sleep(self.prune_every)
        finally:
            if conn is not None:
                conn.terminate()
