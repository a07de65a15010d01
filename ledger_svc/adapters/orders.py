"""order_svc, as the ledger sees it: the orders a portfolio lists (those its holds are open for)."""
from __future__ import annotations

import contextlib
import logging
from typing import Iterable, Iterator

import grpc

from meshkit.auth import on_behalf_of_caller
from meshkit.paging import MAX_PAGE_SIZE
from meshkit.status import TRANSIENT, upstream_unavailable
from meshkit.validate import ORDER_ID
from stockmesh.order.v1 import order_pb2, order_service_pb2, order_service_pb2_grpc

log = logging.getLogger("ledger_svc.orders")
# ListOrders' largest page, and the most order ids it takes: the most orders a portfolio lists.
PAGE = MAX_PAGE_SIZE


class GrpcOpenOrders:
    def __init__(self, channel: grpc.aio.Channel, timeout: float = 10.0) -> None:
        self.stub = order_service_pb2_grpc.OrderServiceStub(channel)
        self.timeout = timeout  # when the caller set no deadline (Envoy's own limit is 30 s)

    def _timeout(self, time_left: float | None) -> float:
        """Within the caller's own deadline (`time_left` seconds; round 19: a fixed 2 s made a
        loaded order_svc's portfolio UNAVAILABLE to a client that allowed 10)."""
        return self.timeout if time_left is None else max(0.05, time_left - 0.05)  # the reply's way back

    async def orders(self, order_ids: Iterable[str], time_left: float | None = None) -> dict[str, order_pb2.Order]:
        """The caller's orders `order_ids` (those a portfolio's holds are open for), by id, the
        first PAGE of them, whatever order_svc's status of each (it applies the engine's
        executions on its own consumer, ahead of the ledger or behind), in one ListOrders call
        filtered by their ids, asked within the caller's own deadline: however far behind the
        ledger is, one call (round 26 review: one GetOrder per order order_svc had ended, 300
        for a market maker's portfolio while the ledger was behind). An id order_svc does not
        know is left out, and so is a hold not named after an order (asked for nothing).
        order_svc not answering (restarting, say) is UNAVAILABLE, which the client retries,
        never INTERNAL."""
        wanted = listable(order_ids)[:PAGE]
        if not wanted:
            return {}
        with _asking():
            reply = await self.stub.ListOrders(order_service_pb2.ListOrdersRequest(order_ids=wanted, page_size=PAGE),
                                               metadata=on_behalf_of_caller(), timeout=self._timeout(time_left))
        return {o.order_id: o for o in reply.orders}


def listable(order_ids: Iterable[str]) -> list[str]:
    """The ids among `order_ids` that may name an order, each once, in their order (a hold a
    tool placed through HoldService under another name has no order to list)."""
    return list(dict.fromkeys(i for i in order_ids if ORDER_ID.fullmatch(i)))


def more_than_listed(order_ids: Iterable[str]) -> bool:
    """More orders than `orders` asks for (the first PAGE): a portfolio's open_orders_truncated."""
    return len(listable(order_ids)) > PAGE


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
