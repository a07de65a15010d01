"""order_svc, as the ledger sees it: the orders a portfolio lists (those its holds are open for)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Collection, Iterator

import grpc

from meshkit.auth import on_behalf_of_caller
from meshkit.status import TRANSIENT, upstream_unavailable
from stockmesh.common.v1 import common_pb2
from stockmesh.order.v1 import order_pb2, order_service_pb2, order_service_pb2_grpc

log = logging.getLogger("ledger_svc.orders")
OPEN = [common_pb2.ORDER_STATUS_PENDING_NEW, common_pb2.ORDER_STATUS_NEW, common_pb2.ORDER_STATUS_PARTIALLY_FILLED]
# ListOrders' largest page: the most orders a portfolio lists.
PAGE = 500
# GetOrder calls in flight at once for one portfolio (the orders order_svc has ended already).
LOOKUPS_AT_ONCE = 8
# An order id as order_svc makes them; a hold named otherwise (placed through HoldService by
# a tool) is no order of order_svc's.
_ORDER_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class GrpcOpenOrders:
    def __init__(self, channel: grpc.aio.Channel, timeout: float = 10.0) -> None:
        self.stub = order_service_pb2_grpc.OrderServiceStub(channel)
        self.timeout = timeout  # when the caller set no deadline (Envoy's own limit is 30 s)

    def _timeout(self, time_left: float | None) -> float:
        """Within the caller's own deadline (`time_left` seconds; round 19: a fixed 2 s made a
        loaded order_svc's portfolio UNAVAILABLE to a client that allowed 10)."""
        return self.timeout if time_left is None else max(0.05, time_left - 0.05)  # the reply's way back

    async def open_orders(self, time_left: float | None = None) -> list[order_pb2.Order]:
        """The caller's open orders at order_svc (first page, up to the maximum page size),
        asked within the caller's own deadline. order_svc not answering (restarting, say) is
        UNAVAILABLE, which the client retries, never INTERNAL."""
        with _asking():
            reply = await self.stub.ListOrders(order_service_pb2.ListOrdersRequest(statuses=OPEN, page_size=PAGE),
                                               metadata=on_behalf_of_caller(), timeout=self._timeout(time_left))
        return list(reply.orders)

    async def orders(self, order_ids: Collection[str], time_left: float | None = None) -> dict[str, order_pb2.Order]:
        """The caller's orders `order_ids` (those a portfolio's holds are open for), by id, at
        most PAGE of them: the open ones in one call (as a rule all of them), then, one by one,
        those order_svc has ended already (it applies the engine's executions ahead of the
        ledger, by moments). An id order_svc does not know is left out."""
        loop = asyncio.get_running_loop()
        ends = loop.time() + self._timeout(time_left)  # the caller's deadline, for every call
        wanted = set(order_ids)
        found = {o.order_id: o for o in await self.open_orders(time_left) if o.order_id in wanted}
        rest = sorted(i for i in wanted - found.keys() if _ORDER_ID.fullmatch(i))[:max(0, PAGE - len(found))]
        if rest:
            at_once = asyncio.Semaphore(LOOKUPS_AT_ONCE)

            async def get(order_id: str) -> order_pb2.Order | None:
                async with at_once:
                    return await self._get(order_id, max(0.05, ends - loop.time()))

            found.update((o.order_id, o) for o in await asyncio.gather(*map(get, rest)) if o is not None)
        return found

    async def _get(self, order_id: str, timeout: float) -> order_pb2.Order | None:
        try:
            with _asking():
                reply = await self.stub.GetOrder(order_service_pb2.GetOrderRequest(order_id=order_id),
                                                 metadata=on_behalf_of_caller(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:  # a hold whose order was never recorded
                return None
            raise
        return reply.order


@contextlib.contextmanager
def _asking() -> Iterator[None]:
    """order_svc not answering (restarting, say) is UNAVAILABLE, which the client retries, never
    INTERNAL; order_svc answering something else is a bug (INTERNAL), raised as it came."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        if exc.code() not in TRANSIENT:
            raise
        raise upstream_unavailable(exc, "the portfolio's open orders could not be read from order_svc", log) \
            from exc
