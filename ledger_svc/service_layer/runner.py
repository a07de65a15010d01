"""Settle a day, then reconcile against the execution journal: `stockmesh settle` and
SettlementService.RunSettlement."""
from __future__ import annotations

from datetime import date
from typing import Callable

from ledger_svc.adapters import journal
from ledger_svc.domain.settlement import SettlementReport
from ledger_svc.service_layer import settlement
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit import bus, db


async def settle_and_reconcile(day: date, uow, js, namespace: str, *, catch_up: float = 60.0,
                               progress: Callable[[str], None] | None = None) -> SettlementReport:
    """Settle the day's fills, then reconcile the ledger against the execution journal on
    JetStream (`js` None: against the ledger's own records only). What `stockmesh settle` and
    SettlementService.RunSettlement both do.

    The journal is read first, and settling waits (at most `catch_up` seconds) until the
    ledger has applied every fill in it: after a crash or under load the ledger's consumer can
    be behind the engine, and its missing fills would otherwise be left unsettled."""
    checked = await _ledger_fills(day, uow)
    ids = await journal.fill_ids(js, namespace, day) if js is not None else None
    # What the ledger has once it has caught up (or given up) is what this run settles.
    before = (await settlement.catch_up(day, uow, ids, timeout=catch_up, progress=progress) if ids
              else await _ledger_fills(day, uow))
    report = await settlement.settle(day, uow, progress=progress)
    return await settlement.reconcile(day, uow, ids, report, checked=checked, settled=before)


async def _ledger_fills(day: date, uow) -> set[str]:
    async with uow() as u:
        return await u.settlement.fill_ids(day)


async def run_settlement(day: date, database_url: str, nats_url: str | None, namespace: str, *,
                         catch_up: float = 60.0, progress: Callable[[str], None] | None = None) -> SettlementReport:
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    nc = await bus.connect(nats_url, "stockmesh-settle") if nats_url else None
    try:
        return await settle_and_reconcile(day, lambda: LedgerUnitOfWork(pool), nc.jetstream() if nc else None,
                                          namespace, catch_up=catch_up, progress=progress)
    finally:
        if nc is not None:
            await nc.close()
        await pool.close()
