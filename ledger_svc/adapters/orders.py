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
    def __init__(self, channel: grpc.aio.Channel, timeout: float = 2.0) -> None:
        self.stub = order_service_pb2_grpc.OrderServiceStub(channel)
        self.timeout = timeout

    async def open_orders(self) -> list[order_pb2.Order]:
        """The caller's open orders (first page, up to the maximum page size). order_svc not
        answering (restarting, say) is UNAVAILABLE, which the client retries, never INTERNAL."""
        try:
            reply = await self.stub.ListOrders(order_service_pb2.ListOrdersRequest(statuses=OPEN, page_size=500),
                                               metadata=on_behalf_of_caller(), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in TRANSIENT:
                raise  # order_svc answered something else: a bug, INTERNAL
            raise upstream_unavailable(exc, "the portfolio's open orders could not be read from order_svc", log) \
                from exc
        return list(reply.orders)
