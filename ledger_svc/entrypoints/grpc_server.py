"""LedgerService over gRPC: proto -> command, call the handler, domain -> proto."""
from __future__ import annotations

from datetime import datetime, timezone

import grpc

from ledger_svc.entrypoints import mapping
from ledger_svc.adapters.orders import GrpcOpenOrders, more_than_listed
from ledger_svc.service_layer import commands, handlers, portfolio
from ledger_svc.service_layer.handlers import UowFactory
from meshkit import paging, validate
from meshkit.auth import current_account
from meshkit.errors import Violations
from meshkit.money import parse_cash
from stockmesh.ledger.v1 import ledger_service_pb2 as pb, ledger_service_pb2_grpc


def _cash_request(request: pb.DepositRequest | pb.WithdrawRequest):
    v = Violations()
    amount = parse_cash(request.amount, "amount", v)
    key = validate.key(request.idempotency_key, "idempotency_key", v)
    v.raise_if_any()
    return current_account(), amount, key


class LedgerServicer(ledger_service_pb2_grpc.LedgerServiceServicer):
    def __init__(self, uow_factory: UowFactory, quotes: portfolio.Quotes | None = None,
                 orders: GrpcOpenOrders | None = None, applied: handlers.ExecutionsApplied | None = None,
                 lock_wait: float = handlers.HOLD_LOCK_WAIT) -> None:
        self.uow = uow_factory
        self.quotes = quotes
        self.orders = orders
        self.applied = applied  # a withdrawal refused waits for executions in flight (handlers.withdraw)
        self.lock_wait = lock_wait  # for the account's lock, then ACCOUNT_BUSY (handlers.bounded)

    async def Deposit(self, request: pb.DepositRequest, context: grpc.aio.ServicerContext) -> pb.DepositResponse:
        account, amount, key = _cash_request(request)
        cash = await handlers.deposit(commands.Deposit(account, amount, key), self.uow, self.lock_wait)
        return pb.DepositResponse(cash=mapping.cash_to_proto(cash))

    async def Withdraw(self, request: pb.WithdrawRequest, context: grpc.aio.ServicerContext) -> pb.WithdrawResponse:
        account, amount, key = _cash_request(request)
        cash = await handlers.withdraw(commands.Withdraw(account, amount, key), self.uow, self.applied,
                                       self.lock_wait)
        return pb.WithdrawResponse(cash=mapping.cash_to_proto(cash))

    async def GetPortfolio(self, request: pb.GetPortfolioRequest,
                           context: grpc.aio.ServicerContext) -> pb.GetPortfolioResponse:
        account = current_account()
        view = await portfolio.portfolio(account, self.uow, self.quotes)
        # The orders of the snapshot's open holds, with the ledger's fills of them: order_svc
        # applies executions on its own, ahead or behind (docs/architecture.md § Portfolio).
        # It is asked only when something is held: no hold, no live order.
        held = [h.order_id for h in view.held_orders]
        found = (await self.orders.orders(held, context.time_remaining())
                 if self.orders is not None and view.holds_anything else {})
        open_orders = mapping.open_orders_as_of(view.held_orders, found)
        # At most a page of them (the newest holds'); the reply says when more are held (round 27).
        # (Not when order_svc is not asked at all: none is listed, none cut.)
        truncated = self.orders is not None and more_than_listed(held)
        return pb.GetPortfolioResponse(portfolio=mapping.portfolio_to_proto(
            account, view, open_orders, datetime.now(timezone.utc), truncated=truncated))

    async def ListActivities(self, request: pb.ListActivitiesRequest,
                             context: grpc.aio.ServicerContext) -> pb.ListActivitiesResponse:
        v = Violations()
        size = paging.page_size(request.page_size, v)
        account = current_account()
        scope = f"activities|{account}"  # a token pages only this list of this account
        cursor = paging.decode_token(request.page_token, v, fields={"before": paging.positive}, scope=scope)
        v.raise_if_any()
        rows = await handlers.activities(account, cursor["before"] if cursor else None, size + 1, self.uow)
        more = len(rows) > size
        rows = rows[:size]
        return pb.ListActivitiesResponse(
            activities=[mapping.activity_to_proto(r) for r in rows],
            next_page_token=paging.encode_token({"before": rows[-1].activity_id}, scope=scope) if more else "")

    async def ListHolds(self, request: pb.ListHoldsRequest,
                        context: grpc.aio.ServicerContext) -> pb.ListHoldsResponse:
        v = Violations()
        size = paging.page_size(request.page_size, v)
        account = current_account()
        scope = f"holds|{account}"  # a token pages only this list of this account
        cursor = paging.decode_token(request.page_token, v, fields={"before": paging.positive}, scope=scope)
        v.raise_if_any()
        rows = await handlers.list_holds(account, cursor["before"] if cursor else None, size + 1, self.uow)
        more = len(rows) > size
        rows = rows[:size]
        return pb.ListHoldsResponse(
            holds=[mapping.hold_to_proto(r.hold, r.transferred_to) for r in rows],
            next_page_token=paging.encode_token({"before": rows[-1].hold_seq}, scope=scope) if more else "")
