"""Wires ledger_svc's dependencies; tests pass their own pool through it."""
from __future__ import annotations

import asyncpg

from ledger_svc.entrypoints.grpc_server import LedgerServicer
from ledger_svc.entrypoints.hold_server import HoldServicer
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit import config, db
from meshkit.server import App
from stockmesh.ledger.v1 import hold_service_pb2_grpc, ledger_service_pb2_grpc, settlement_service_pb2_grpc


def build(pool: asyncpg.Pool) -> App:
    uow = lambda: LedgerUnitOfWork(pool)  # noqa: E731
    servicer = LedgerServicer(uow)
    return App(
        name="ledger_svc",
        servicers=[
            (ledger_service_pb2_grpc.add_LedgerServiceServicer_to_server, servicer,
             "stockmesh.ledger.v1.LedgerService"),
            (hold_service_pb2_grpc.add_HoldServiceServicer_to_server,
             HoldServicer(uow), "stockmesh.ledger.v1.HoldService"),
            # Not built yet: every RPC answers UNIMPLEMENTED, naming itself.
            (settlement_service_pb2_grpc.add_SettlementServiceServicer_to_server,
             settlement_service_pb2_grpc.SettlementServiceServicer(), "stockmesh.ledger.v1.SettlementService"),
        ],
        checks=[db.pool_check(pool)],
        on_close=[pool.close],
    )


async def bootstrap(settings: config.Settings) -> App:
    assert settings.database_url
    return build(await db.create_pool(settings.database_url))
