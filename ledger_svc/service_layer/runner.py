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


async def settle_and_reconcile(day: date, uow, js, namespace: str, *,
                               progress: Callable[[int], None] | None = None) -> SettlementReport:
    """Settle the day's fills, then reconcile the ledger against the execution journal on
    JetStream (`js` None: against the ledger's own records only). What `stockmesh settle` and
    SettlementService.RunSettlement both do."""
    report = await settlement.settle(day, uow, progress=progress)
    ids = await journal.fill_ids(js, namespace, day) if js is not None else None
    return await settlement.reconcile(day, uow, ids, report)


async def run_settlement(day: date, database_url: str, nats_url: str | None, namespace: str, *,
                         progress: Callable[[int], None] | None = None) -> SettlementReport:
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    nc = await bus.connect(nats_url, "stockmesh-settle") if nats_url else None
    try:
        return await settle_and_reconcile(day, lambda: LedgerUnitOfWork(pool), nc.jetstream() if nc else None,
                                          namespace, progress=progress)
    finally:
        if nc is not None:
            await nc.close()
        await pool.close()
