from __future__ import annotations

import asyncpg

from meshkit.uow import UnitOfWork
from order_svc.adapters.repository import OrderRepository


class OrderUnitOfWork(UnitOfWork):
    orders: OrderRepository

    def _open(self, conn: asyncpg.Connection) -> None:
        self.orders = OrderRepository(conn)
