"""order_svc, as the ledger sees it: the caller's open orders for the portfolio."""
from __future__ import annotations

import logging

import grpc

from meshkit.auth import on_behalf_of_caller
from meshkit.status import TRANSIENT, upstream_unavailable
from stockmesh.common.v1 import common_pb2
from stockmesh.order.v1 import order_pb2, order_service_pb2, order_service_pb2_grpc

log = logging.getLogger("ledger_svc.orders")
OPEN = [common_pb2.ORDER_STATUS_PENDING_NEW, common_pb2.ORDER_STATUS_NEW, common_pb2.ORDER_STATUS_PARTIALLY_FILLED]


class GrpcOpenOrders:
    def __init__(self, channel: grpc.aio.Channel, timeout: float = 10.0) -> None:
        self.stub = order_service_pb2_grpc.OrderServiceStub(channel)
        self.timeout = timeout  # when the caller set no deadline (Envoy's own limit is 30 s)

    async def open_orders(self, time_left: float | None = None) -> list[order_pb2.Order]:
        """The caller's open orders (first page, up to the maximum page size), asked within the
        caller's own deadline (`time_left` seconds; round 19: a fixed 2 s made a loaded
        order_svc's portfolio UNAVAILABLE to a client that allowed 10). order_svc not answering
        (restarting, say) is UNAVAILABLE, which the client retries, never INTERNAL."""
        timeout = self.timeout if time_left is None else max(0.05, time_left - 0.05)  # the reply's way back
        try:
            reply = await self.stub.ListOrders(order_service_pb2.ListOrdersRequest(statuses=OPEN, page_size=500),
                                               metadata=on_behalf_of_caller(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in TRANSIENT:
                raise  # order_svc answered something else: a bug, INTERNAL
            raise upstream_unavailable(exc, "the portfolio's open orders could not be read from order_svc", log) \
                from exc
        return list(reply.orders)
