"""`stockmesh settle`: settle a day, then reconcile against the execution journal."""
from __future__ import annotations

from datetime import date
from typing import Callable

from ledger_svc.adapters import journal
from ledger_svc.domain.settlement import SettlementReport
from ledger_svc.service_layer import settlement
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit import bus, db


async def run_settlement(day: date, database_url: str, nats_url: str | None, namespace: str, *,
                         progress: Callable[[int], None] | None = None) -> SettlementReport:
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    try:
        uow = lambda: LedgerUnitOfWork(pool)  # noqa: E731
        report = await settlement.settle(day, uow, progress=progress)
        ids = None
        if nats_url:
            nc = await bus.connect(nats_url, "stockmesh-settle")
            try:
                ids = await journal.fill_ids(nc.jetstream(), namespace, day)
            finally:
                await nc.close()
        return await settlement.reconcile(day, uow, ids, report)
    finally:
        await pool.close()
