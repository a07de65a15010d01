"""OrderService over gRPC: proto -> command, call the handler, domain -> proto."""
from __future__ import annotations

from typing import AsyncIterator

import grpc

from meshkit import paging, symbols
from meshkit.auth import current_account, token_ends_at
from meshkit.errors import FieldViolation, InvalidArgument, Violations
from meshkit.status import POSITION_HEADER
from meshkit.streams import StreamLimit
from order_svc.entrypoints import mapping
from order_svc.service_layer import handlers, lifecycle
from order_svc.service_layer.handlers import Deps
from stockmesh.common.v1 import common_pb2
from stockmesh.order.v1 import order_pb2, order_service_pb2 as pb, order_service_pb2_grpc


# Order-update streams one account may have open at once on one order_svc process: an app has
# one or two; each stream reads the database when the account changes and every few seconds,
# so one account's thousands would slow everyone's (acceptance round 13: 2,000 were taken).
STREAMS_PER_ACCOUNT = 20


class OrderServicer(order_service_pb2_grpc.OrderServiceServicer):
    def __init__(self, deps: Deps, wakeups: lifecycle.Wakeups, *,
                 streams_per_account: int = STREAMS_PER_ACCOUNT) -> None:
        self.deps = deps
        self.wakeups = wakeups
        self.streams = StreamLimit("order-update", streams_per_account,
                                   hint="one stream carries every change of every order")

    async def PlaceOrder(self, request: pb.PlaceOrderRequest, context: grpc.aio.ServicerContext) -> pb.PlaceOrderResponse:
        req = mapping.place_request(request, current_account())
        order = await handlers.place_order(req, self.deps)
        return pb.PlaceOrderResponse(order=mapping.order_to_proto(order))

    async def CancelOrder(self, request: pb.CancelOrderRequest, context: grpc.aio.ServicerContext) -> pb.CancelOrderResponse:
        v = Violations()
        oid = mapping.order_id(request.order_id, v)
        v.raise_if_any()
        assert oid is not None
        order = await handlers.cancel_order(current_account(), oid, self.deps)
        return pb.CancelOrderResponse(order=mapping.order_to_proto(order))

    async def ReplaceOrder(self, request: pb.ReplaceOrderRequest,
                           context: grpc.aio.ServicerContext) -> pb.ReplaceOrderResponse:
        order = await handlers.replace_order(mapping.replace_request(request, current_account()), self.deps)
        return pb.ReplaceOrderResponse(order=mapping.order_to_proto(order))

    async def GetOrder(self, request: pb.GetOrderRequest, context: grpc.aio.ServicerContext) -> pb.GetOrderResponse:
        v = Violations()
        oid = mapping.order_id(request.order_id, v)
        v.raise_if_any()
        assert oid is not None
        return pb.GetOrderResponse(order=mapping.order_to_proto(await handlers.get_order(current_account(), oid, self.deps)))

    async def ListOrders(self, request: pb.ListOrdersRequest, context: grpc.aio.ServicerContext) -> pb.ListOrdersResponse:
        v = Violations()
        size = paging.page_size(request.page_size, v)
        statuses = []
        for s in request.statuses:
            if s == common_pb2.ORDER_STATUS_UNSPECIFIED or s not in mapping.STATUSES:
                v.add("statuses", f"unknown or unspecified status {s}")
            else:
                statuses.append(mapping.STATUSES[s].value)
        ids = mapping.order_ids(request.order_ids, v)
        account = current_account()
        scope = f"{account}|{request.symbol}|{','.join(sorted(set(statuses)))}"  # a token pages what made it
        if ids is not None:  # (a token made without them keeps its scope)
            scope += "|" + ",".join(map(str, ids))
        cursor = paging.decode_token(request.page_token, v, fields={"createdAt": paging.instant, "orderId": paging.identifier},
                                     scope=scope, scope_hint="symbol, statuses and order_ids must not change")
        if request.symbol and not symbols.well_formed(request.symbol):
            symbols.known(request.symbol)  # never a symbol, said before a query (round 16: a NUL was INTERNAL)
        v.raise_if_any()
        before = (cursor["createdAt"], cursor["orderId"]) if cursor else None
        orders = await handlers.list_orders(account, request.symbol or None, statuses, size + 1, before, self.deps,
                                            ids)
        if not orders and request.symbol:
            symbols.known(request.symbol)  # a mistyped filter says so; a delisted symbol's orders still list
        more = len(orders) > size
        orders = orders[:size]
        token = paging.encode_token({"createdAt": orders[-1].created_at.isoformat(),
                                     "orderId": str(orders[-1].order_id)}, scope=scope) if more else ""
        return pb.ListOrdersResponse(orders=[mapping.order_to_proto(o) for o in orders], next_page_token=token)

    async def StreamOrderUpdates(self, request: pb.StreamOrderUpdatesRequest,
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[order_pb2.OrderUpdate]:
        if request.after_sequence < 0:
            raise InvalidArgument([FieldViolation("after_sequence", "must not be negative")])
        if request.from_now and request.after_sequence:
            raise InvalidArgument([FieldViolation("from_now", "cannot be combined with after_sequence")])
        after = None if request.from_now else request.after_sequence
        account = current_account()

        async def positioned(last: int) -> None:
            # The stream's headers say where it starts, once it is listening: a client that waits
            # for them (from_now) knows that every later change will reach it.
            await context.send_initial_metadata(((POSITION_HEADER, str(last)),))

        with self.streams.open(account):  # RESOURCE_EXHAUSTED / TOO_MANY_STREAMS past the limit
            async for seq, order, fill in lifecycle.stream_updates(account, after, self.deps, self.wakeups,
                                                                   positioned=positioned, ends_at=token_ends_at()):
                yield mapping.update_to_proto(seq, order, fill)
