"""Order placement as a saga whose every step is persisted and idempotent:

  1. validate and record the order (PENDING_NEW, or REJECTED for a business reason),
  2. place its hold in the ledger (hold id = order id),
  3. accept it (NEW) and write the engine command to the outbox in the same transaction,
  4. the relay publishes the outbox to JetStream (`orders.<SYMBOL>`, Nats-Msg-Id = order id).

Any caller may drive a PENDING_NEW order forward (a retried PlaceOrder, the recovery loop):
each step asks for the same thing again, so a process killed between any two steps is
completed by whoever comes next, and duplicates of one request all see the same result.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Callable, Protocol

from meshkit import bus, calendar, failpoints
from meshkit.ratelimit import Limit, RateLimiter
from meshkit.symbols import listed
from meshkit.marketdata import Touch
from order_svc.domain import model
from order_svc.domain.model import Order, OrderRequest, OrderType, RejectReason, Status
from order_svc.service_layer.unit_of_work import OrderUnitOfWork
from stockmesh.common.v1 import common_pb2
from stockmesh.matching.v1 import matching_pb2

log = logging.getLogger("order_svc.saga")


class Holds(Protocol):
    async def place(self, hold_id: str, account_id: str, order_id: str, asset: str,
                    amount: Decimal) -> RejectReason | None: ...

    async def release(self, hold_id: str) -> None: ...


class Quotes(Protocol):
    async def touch(self, symbol: str) -> Touch: ...


class HaltList(Protocol):
    async def is_halted(self, symbol: str) -> bool: ...


@dataclass
class Deps:
    uow: Callable[[], OrderUnitOfWork]
    holds: Holds
    quotes: Quotes
    halts: HaltList
    limiter: RateLimiter
    account_limit: Limit
    symbol_limit: Limit
    namespace: str
    wake_relay: Callable[[], None]
    market_collar: Decimal = Decimal("0.05")  # market buys hold ask × (1 + collar)
    price_band: Decimal = Decimal("0.20")  # limit / stop prices within ±20 % of the reference


def now() -> datetime:
    return datetime.now(timezone.utc)


REJECT_MESSAGES = {
    RejectReason.MARKET_CLOSED: "the market is closed",
    RejectReason.SYMBOL_HALTED: "trading in this symbol is halted",
    RejectReason.NO_LIQUIDITY: "no quote on the other side of the book to price a market order",
    RejectReason.INSUFFICIENT_FUNDS: "available cash does not cover the order",
    RejectReason.INSUFFICIENT_SHARES: "available shares do not cover the order",
}


async def _business_checks(req: OrderRequest, deps: Deps, at: datetime) -> tuple[model.HoldPlan | None, RejectReason | None, str]:
    if not calendar.is_open(at):
        return None, RejectReason.MARKET_CLOSED, REJECT_MESSAGES[RejectReason.MARKET_CLOSED]
    if await deps.halts.is_halted(req.symbol):
        return None, RejectReason.SYMBOL_HALTED, REJECT_MESSAGES[RejectReason.SYMBOL_HALTED]
    touch = await deps.quotes.touch(req.symbol)
    reference = touch.last or listed()[req.symbol].reference_price
    for name, price in (("limit", req.limit_price), ("stop", req.stop_price)):
        if price is not None and model.outside_band(price, reference, deps.price_band):
            return None, RejectReason.PRICE_OUT_OF_COLLAR, (
                f"{name} price {price} is more than {deps.price_band * 100:.0f}% from the reference price {reference}")
    plan = model.plan_hold(req, best_bid=touch.bid, best_ask=touch.ask, collar=deps.market_collar)
    if isinstance(plan, RejectReason):
        return None, plan, REJECT_MESSAGES[plan]
    return plan, None, ""


async def place_order(req: OrderRequest, deps: Deps) -> Order:
    await deps.limiter.check([(f"acct:{req.account_id}", deps.account_limit, "this account"),
                              (f"sym:{req.symbol}", deps.symbol_limit, req.symbol)])
    at = now()
    plan, reason, message = await _business_checks(req, deps, at)
    order = Order(order_id=uuid.uuid4(), request=req, status=Status.PENDING_NEW, created_at=at, updated_at=at)
    if plan is not None:
        order.hold_asset, order.hold_amount, order.collar_price = plan.asset, plan.amount, plan.collar_price
    else:
        assert reason is not None
        order.reject(reason, message)  # a business rejection is an order, recorded like any other
    async with deps.uow() as uow:
        stored, created = await uow.orders.insert_or_get(order)
        if not created and await uow.orders.fingerprint_of(stored.order_id) != req.fingerprint():
            raise model.DuplicateClientOrderId(
                f"client_order_id {req.client_order_id!r} was used for another order ({stored.order_id})",
                metadata={"clientOrderId": req.client_order_id, "orderId": str(stored.order_id)})
        await uow.commit()
    failpoints.hit("place.after_record")
    if stored.status is Status.PENDING_NEW:
        stored = await advance(stored, deps)
    return stored


async def advance(order: Order | uuid.UUID, deps: Deps) -> Order:
    """Drive a PENDING_NEW order (as just read, or by id) to NEW (hold placed, command in the
    outbox) or REJECTED."""
    if isinstance(order, Order):
        o = order
    else:
        async with deps.uow() as uow:
            found = await uow.orders.get(order)
        assert found is not None
        o = found
    order_id = o.order_id
    if o.status is not Status.PENDING_NEW:
        return o
    refused = await deps.holds.place(o.hold_id, o.account_id, str(o.order_id), o.hold_asset, o.hold_amount)
    failpoints.hit("place.after_hold")
    async with deps.uow() as uow:
        current = await uow.orders.get(order_id, for_update=True)
        assert current is not None
        if current.status is not Status.PENDING_NEW:
            o = current  # another driver finished first
        else:
            o = current
            if refused is not None:
                o.reject(refused, REJECT_MESSAGES[refused])
            else:
                o.transition(Status.NEW)
                await uow.orders.add_outbox(order_subject(deps.namespace, o), str(o.order_id),
                                            new_order_command(o).SerializeToString())
            await uow.orders.save_transition(o, Status.PENDING_NEW, now())
            await uow.commit()
    failpoints.hit("place.after_accept")
    if o.status is Status.REJECTED and refused is None:
        # Our hold went in after another driver rejected the order: give it back.
        await deps.holds.release(o.hold_id)
    if o.status is Status.NEW:
        deps.wake_relay()
    return o


async def recover_stalled(deps: Deps, *, older_than: timedelta = timedelta(seconds=2)) -> int:
    """Finish every placement saga left half-way (e.g. by a crash); returns how many."""
    async with deps.uow() as uow:
        stalled = await uow.orders.stalled(now() - older_than)
    for order_id in stalled:
        try:
            await advance(order_id, deps)
        except Exception:  # noqa: BLE001 - the next round retries
            log.exception("recovery of order failed; retrying later", extra={"orderId": str(order_id)})
    return len(stalled)


async def recovery_loop(deps: Deps, interval: float = 1.0) -> None:
    while True:
        n = await recover_stalled(deps)
        if n:
            log.info("recovered stalled orders", extra={"count": n})
        await asyncio.sleep(interval)


async def cancel_order(account_id: str, order_id: uuid.UUID, deps: Deps) -> Order:
    """Ask the engine to cancel; the order turns CANCELLED when the engine confirms."""
    async with deps.uow() as uow:
        o = await uow.orders.get(order_id, for_update=True)
        if o is None or o.account_id != account_id:
            raise model.OrderNotFound(f"no order {order_id}", metadata={"orderId": str(order_id)})
        if o.status is Status.CANCELLED or o.cancel_requested:
            return o
        if o.status is Status.PENDING_NEW:
            raise model.OrderNotActive("the order is still being placed; retry the cancel shortly",
                                       metadata={"orderId": str(order_id), "status": o.status.value})
        if o.status.is_terminal:
            raise model.OrderNotActive(f"the order is already {o.status.value}",
                                       metadata={"orderId": str(order_id), "status": o.status.value})
        await uow.orders.mark_cancel_requested(o, now())
        cmd = matching_pb2.EngineCommand(
            command_id=f"{o.order_id}:cancel", symbol=o.request.symbol,
            cancel_order=matching_pb2.CancelOrder(order_id=str(o.order_id), account_id=o.account_id))
        await uow.orders.add_outbox(order_subject(deps.namespace, o), cmd.command_id, cmd.SerializeToString())
        await uow.commit()
    deps.wake_relay()
    return o


async def get_order(account_id: str, order_id: uuid.UUID, deps: Deps) -> Order:
    async with deps.uow() as uow:
        o = await uow.orders.get(order_id)
    if o is None or o.account_id != account_id:  # another account's order does not exist for you
        raise model.OrderNotFound(f"no order {order_id}", metadata={"orderId": str(order_id)})
    return o


async def list_orders(account_id: str, symbol: str | None, statuses: list[str], limit: int,
                      before: tuple[datetime, uuid.UUID] | None, deps: Deps) -> list[Order]:
    async with deps.uow() as uow:
        return await uow.orders.list(account_id, symbol, statuses, limit, before)


def order_subject(namespace: str, o: Order) -> str:
    return bus.subject(namespace, "orders", o.request.symbol)


_SIDE = {model.Side.BUY: common_pb2.SIDE_BUY, model.Side.SELL: common_pb2.SIDE_SELL}
_TYPE = {OrderType.MARKET: common_pb2.ORDER_TYPE_MARKET, OrderType.LIMIT: common_pb2.ORDER_TYPE_LIMIT,
         OrderType.STOP: common_pb2.ORDER_TYPE_STOP, OrderType.STOP_LIMIT: common_pb2.ORDER_TYPE_STOP_LIMIT}
_TIF = {model.TimeInForce.DAY: common_pb2.TIME_IN_FORCE_DAY, model.TimeInForce.GTC: common_pb2.TIME_IN_FORCE_GTC,
        model.TimeInForce.IOC: common_pb2.TIME_IN_FORCE_IOC, model.TimeInForce.FOK: common_pb2.TIME_IN_FORCE_FOK}


def _p(d: Decimal | None) -> str:
    return "" if d is None else f"{d.normalize():f}"


def new_order_command(o: Order) -> matching_pb2.EngineCommand:
    q = o.request
    cmd = matching_pb2.EngineCommand(command_id=str(o.order_id), symbol=q.symbol, new_order=matching_pb2.NewOrder(
        order_id=str(o.order_id), account_id=q.account_id, side=_SIDE[q.side], type=_TYPE[q.type],
        time_in_force=_TIF[q.time_in_force], quantity=q.quantity, limit_price=_p(q.limit_price),
        stop_price=_p(q.stop_price), collar_price=_p(o.collar_price)))
    cmd.new_order.accepted_at.FromDatetime(o.updated_at)
    return cmd
