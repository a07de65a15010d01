"""Settle a day, then reconcile against the execution journal (`stockmesh settle`,
SettlementService.RunSettlement, and by itself after each session's close: settlement_loop);
trim the journal of settled days (`stockmesh journal trim` and SettlementService.TrimJournal)."""
from __future__ import annotations

import asyncio
import logging
from datetime import date, datetime, timedelta, timezone
from typing import Callable

from ledger_svc.adapters import journal
from ledger_svc.adapters.sessions import session_closed
from ledger_svc.domain.settlement import JournalTrim, SettlementReport
from ledger_svc.service_layer import settlement
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit import bus, calendar, db, executions
from meshkit.errors import FailedPrecondition

# The services that apply every execution, each through one durable consumer per symbol.
APPLIERS = ("ledger", "orders")
# Settlements read the execution journal under this lock, shared; a trim purges it exclusive.
JOURNAL_LOCK = "ledger.execution-journal"
# After a session's close the batch waits this long (the engines expire the day's orders, the
# ledger applies what they sent), then settles the day.
SETTLE_AFTER_CLOSE = timedelta(minutes=5)

log = logging.getLogger("ledger_svc.settlement")


async def require_session_closed(day: date, pool, *, override: str) -> None:
    """Refuse (FailedPrecondition SESSION_NOT_CLOSED, nothing settled) a day whose session has
    not closed: until a close of it or of a later day was made (order_svc's session closes,
    `orders.outbox`, in the same database: every deployment gives the services one
    DATABASE_URL), the day is still trading, its fills are not final and a later run would
    settle more. What `stockmesh settle` and SettlementService.RunSettlement both check, unless
    told to settle what has traded so far (`override` names how: `--before-close`,
    `before_close`); the automatic batch runs after the close by the calendar."""
    if await session_closed(day, pool):  # ledger_svc.adapters.sessions: order_svc's records
        return
    raise FailedPrecondition(
        f"the session of {day} has not closed (no close of it or of a later day was made), so its fills are not "
        "final and a later run would settle more. In regular hours order_svc closes it at the close; a market "
        f"kept always open is closed with `stockmesh session close --date {day}`. {override} settles what has "
        "traded so far.", reason="SESSION_NOT_CLOSED", metadata={"tradingDay": day.isoformat()})


async def settle_and_reconcile(day: date, uow, js, namespace: str, *, catch_up: float = 60.0,
                               progress: Callable[[str], None] | None = None) -> SettlementReport:
    """Settle the day's fills, then reconcile the ledger against the execution journal on
    JetStream (`js` None: against the ledger's own records only). What `stockmesh settle` and
    SettlementService.RunSettlement both do.

    The journal is read first, and settling waits (at most `catch_up` seconds) until the
    ledger has applied every fill in it: after a crash or under load the ledger's consumer can
    be behind the engine, and its missing fills would otherwise be left unsettled. A trim of
    the journal waits for the settlements running (JOURNAL_LOCK), and they wait for it."""
    async with db.advisory_lock(uow().pool, JOURNAL_LOCK, shared=True):
        return await _settle_and_reconcile(day, uow, js, namespace, catch_up=catch_up, progress=progress)


async def _settle_and_reconcile(day: date, uow, js, namespace: str, *, catch_up: float,
                                progress: Callable[[str], None] | None) -> SettlementReport:
    checked = await _ledger_fills(day, uow)
    async with uow() as u:
        trimmed = await u.settlement.trimmed_before()
    fills = None
    if js is None:
        against = "the ledger's own records (no NATS was given: the execution journal was not read)"
    elif trimmed is not None and day < trimmed:
        against = f"the ledger's own records (the execution journal was trimmed before {trimmed})"
    elif (fills := await journal.fills(js, namespace, day)) is None:  # nothing settled yet
        raise FailedPrecondition(
            f"there is no execution journal (stream {bus.stream_name(namespace, 'EXECUTIONS')}) on this NATS "
            f"server: is the namespace {namespace!r} the mesh's? (without NATS the day is reconciled against the "
            "ledger's own records only)", reason="JOURNAL_NOT_FOUND")
    else:
        against = "the execution journal"
    # What the ledger has once it has caught up (or given up) is what this run settles.
    before = (await settlement.catch_up(day, uow, set(fills), timeout=catch_up, progress=progress) if fills
              else await _ledger_fills(day, uow))
    report = await settlement.settle(day, uow, progress=progress)
    report.reconciled_against = against
    return await settlement.reconcile(day, uow, fills, report, checked=checked, settled=before)


async def _ledger_fills(day: date, uow) -> set[str]:
    async with uow() as u:
        return await u.settlement.fill_ids(day)


async def trim_journal(before: date, uow, js, namespace: str, *, dry_run: bool = False,
                       progress: Callable[[str], None] | None = None) -> JournalTrim:
    """Purge the executions published before the trading day `before` began from the execution
    journal (the EXECUTIONS stream), which otherwise grows forever; the ledger and order_svc
    keep what they applied. Refused (FailedPrecondition) while a fill traded before `before`
    is unsettled (settling and reconciling a day reads its journal) or while a symbol on the
    stream has no consumer of one of the services that apply it (it would never see the
    purged executions). Never purges what a durable consumer has not acknowledged: the cut
    stops there (`held_back_by`). The trim is recorded in the ledger before the purge, so a
    later settlement of a trimmed day reconciles against the ledger's own records instead.
    Refused too while a settlement is reading the journal (SETTLEMENT_RUNNING)."""
    async with db.advisory_lock(uow().pool, JOURNAL_LOCK, wait=False) as alone:
        if not alone:
            raise FailedPrecondition("a settlement is reading the execution journal; trim when it has finished",
                                     reason="SETTLEMENT_RUNNING")
        return await _trim_journal(before, uow, js, namespace, dry_run=dry_run, progress=progress)


async def _trim_journal(before: date, uow, js, namespace: str, *, dry_run: bool,
                        progress: Callable[[str], None] | None) -> JournalTrim:
    def say(message: str) -> None:
        if progress:
            progress(message)

    ext = await journal.extent(js, namespace)
    if ext is None:
        raise FailedPrecondition(f"there is no execution journal (stream {bus.stream_name(namespace, 'EXECUTIONS')})",
                                 reason="JOURNAL_NOT_FOUND")
    async with uow() as u:
        unsettled, first = await u.settlement.unsettled_before(before)
    if unsettled:
        raise FailedPrecondition(
            f"{unsettled} fills traded before {before} are not settled yet (the first on {first}); settle them "
            f"first: stockmesh settle --date {before - timedelta(days=1)}", reason="FILLS_NOT_SETTLED",
            metadata={"unsettledFills": str(unsettled), "firstTradingDay": str(first)})
    durables = {c.name: c for c in ext.consumers if c.config.durable_name}
    prefix = bus.subject(namespace, "executions", "")
    for subject in sorted(ext.subjects):
        symbol = subject.removeprefix(prefix)
        for applier in APPLIERS:
            name = executions.consumer_name(applier, symbol)
            if name not in durables and applier not in durables:  # nor the shared one of earlier versions
                raise FailedPrecondition(
                    f"no consumer {name} on {ext.stream}: the service that applies {symbol}'s executions with it "
                    "has not started reading them; start it, then trim", reason="CONSUMER_MISSING",
                    metadata={"consumer": name})
    # No further than any durable consumer has acknowledged, then no further than the day.
    bound, held_back_by = ext.last_seq + 1, None
    for name, c in sorted(durables.items()):
        if (c.num_pending or c.num_ack_pending) and c.ack_floor.stream_seq + 1 < bound:
            bound, held_back_by = c.ack_floor.stream_seq + 1, name
    cut = await journal.first_seq_of(js, namespace, before, ext.first_seq, bound,
                                     progress=lambda n: say(f"read {n} executions"))
    if cut < bound:
        held_back_by = None  # the day, not the consumer, ended it
    elif held_back_by:
        say(f"{held_back_by} has not acknowledged beyond sequence {cut - 1}: the trim stops there")
    purged = max(0, cut - ext.first_seq)
    if purged and not dry_run:
        async with uow() as u:  # first: a reconciliation from now on knows these days are gone
            await u.settlement.record_trim(before, cut)
            await u.commit()
        say(f"purging {purged} executions (sequences {ext.first_seq}..{cut - 1}) from {ext.stream}")
        await journal.purge_below(js, namespace, cut)
    return JournalTrim(before=before, stream=ext.stream, first_seq=ext.first_seq, last_seq=ext.last_seq, cut=cut,
                       purged=purged, held_back_by=held_back_by, dry_run=dry_run)


async def run_settlement(day: date, database_url: str, nats_url: str | None, namespace: str, *,
                         catch_up: float = 60.0, progress: Callable[[str], None] | None = None) -> SettlementReport:
    pool = await db.create_pool(database_url, min_size=1, max_size=3)  # the journal's lock, and work
    nc = await bus.connect(nats_url, "stockmesh-settle", attempts=bus.COMMAND_ATTEMPTS) if nats_url else None
    try:
        return await settle_and_reconcile(day, lambda: LedgerUnitOfWork(pool), nc.jetstream() if nc else None,
                                          namespace, catch_up=catch_up, progress=progress)
    finally:
        if nc is not None:
            await nc.close()
        await pool.close()


async def run_trim(before: date, database_url: str, nats_url: str, namespace: str, *, dry_run: bool = False,
                   progress: Callable[[str], None] | None = None) -> JournalTrim:
    pool = await db.create_pool(database_url, min_size=1, max_size=3)  # the journal's lock, and work
    nc = await bus.connect(nats_url, "stockmesh-journal", attempts=bus.COMMAND_ATTEMPTS)
    try:
        return await trim_journal(before, lambda: LedgerUnitOfWork(pool), nc.jetstream(), namespace,
                                  dry_run=dry_run, progress=progress)
    finally:
        await nc.close()
        await pool.close()


async def settlement_loop(uow, js, namespace: str, *, interval: float = 60.0,
                          now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
    """MISSION F7's batch: after each trading day's close (meshkit.calendar.closes_due, plus
    SETTLE_AFTER_CLOSE), settle and reconcile the day once per process; the report is logged
    (a discrepancy at WARNING). Also a day the ledger has nothing to settle for: its execution
    consumer may have applied nothing (a poison message, a wedged task), which only the
    journal shows (FILL_NOT_APPLIED); the day was marked done unreconciled (round 14 review).
    A market kept always open has no close: its days are settled on demand (`stockmesh
    settle`). Run by one replica (meshkit.db.elected); a run repeated after a restart settles
    nothing twice."""
    done: date | None = None
    while True:
        day = calendar.closes_due(now() - SETTLE_AFTER_CLOSE)
        if day is not None and day != done:
            try:
                report = await settle_and_reconcile(day, uow, js, namespace)
                extra = {"tradingDay": day.isoformat(), "fillsSettled": report.fills_settled,
                         "amountSettled": str(report.amount_settled), "discrepancies": len(report.discrepancies),
                         "reconciledAgainst": report.reconciled_against}
                if report.discrepancies:
                    log.warning("day settled with discrepancies: run `stockmesh settle --date %s` for the report",
                                day.isoformat(), extra=extra)
                else:
                    log.info("day settled", extra=extra)
                done = day
            except Exception:  # noqa: BLE001 - the next round retries
                log.exception("settling the day failed; retrying", extra={"tradingDay": day.isoformat()})
        await asyncio.sleep(interval)
