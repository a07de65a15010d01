"""proto <-> domain, beside the servicer."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from ledger_svc.adapters.repository import ActivityRow
from ledger_svc.domain import model
from ledger_svc.service_layer.portfolio import HeldOrder, PortfolioView
from meshkit.money import fmt, fmt_at_tick, fmt_cents, fmt_price
from meshkit.symbols import price_tick
from meshkit.prototime import timestamp
from stockmesh.common.v1 import common_pb2
from stockmesh.ledger.v1 import hold_service_pb2, ledger_pb2
from stockmesh.order.v1 import order_pb2

ACTIVITY_TYPES = {
    "DEPOSIT": ledger_pb2.ACTIVITY_TYPE_DEPOSIT,
    "SHARE_DEPOSIT": ledger_pb2.ACTIVITY_TYPE_DEPOSIT,
    "WITHDRAWAL": ledger_pb2.ACTIVITY_TYPE_WITHDRAWAL,
    "HOLD_CAPTURE": ledger_pb2.ACTIVITY_TYPE_FILL,
    "FILL": ledger_pb2.ACTIVITY_TYPE_FILL,
    "PROCEEDS": ledger_pb2.ACTIVITY_TYPE_FILL,  # a sale's proceeds, owed until settlement
    "SETTLEMENT": ledger_pb2.ACTIVITY_TYPE_SETTLEMENT,
}


HOLD_STATUSES = {
    model.HoldStatus.PENDING: ledger_pb2.HOLD_STATUS_PENDING,
    model.HoldStatus.CAPTURED: ledger_pb2.HOLD_STATUS_CAPTURED,
    model.HoldStatus.RELEASED: ledger_pb2.HOLD_STATUS_RELEASED,
}


def cash_to_proto(c: model.CashBalance) -> ledger_pb2.CashBalance:
    return ledger_pb2.CashBalance(total=fmt(c.total), available=fmt(c.available), held=fmt(c.held),
                                  settled=fmt(c.settled), unsettled=fmt(c.unsettled))


def activity_to_proto(a: ActivityRow) -> ledger_pb2.Activity:
    """A statement line: cash as money, shares whole; a trade's lines read from the account's
    side and reference the fill; nothing names another account's order. Settled, with when,
    unless it is a sale's proceeds not paid yet (the proto's comment says so per kind)."""
    return ledger_pb2.Activity(
        activity_id=str(a.activity_id), type=ACTIVITY_TYPES.get(a.kind, ledger_pb2.ACTIVITY_TYPE_UNSPECIFIED),
        asset=a.asset, amount=model.amount_text(a.asset, a.amount),
        description=model.statement_line(a.kind, a.asset, a.amount, a.description, a.own, a.settled),
        created_at=timestamp(a.created_at), reference=a.reference if a.own or a.kind == "FILL" else "",
        settled=a.settled, settled_at=timestamp(a.settled_at) if a.settled_at else None)


def hold_to_proto(h: model.Hold, transferred_to: str | None = None) -> ledger_pb2.Hold:
    """`transferred_to`: the hold a completed replace moved this one's remainder to, shown as
    TRANSFERRED (what it released went there, not back to the account)."""
    return ledger_pb2.Hold(
        hold_id=h.hold_id, order_id=h.order_id, asset=h.asset, amount=model.amount_text(h.asset, h.amount),
        captured=model.amount_text(h.asset, h.captured), released=model.amount_text(h.asset, h.released),
        status=ledger_pb2.HOLD_STATUS_TRANSFERRED if transferred_to else HOLD_STATUSES[h.status],
        created_at=timestamp(h.created_at) if h.created_at else None, transferred_to=transferred_to or "")


def _money(d: Decimal | None) -> str:
    return fmt_cents(d) if d is not None else ""


def _price(symbol: str, d: Decimal | None) -> str:
    return fmt_at_tick(d, price_tick(symbol, d)) if d is not None else ""


def portfolio_to_proto(account: str, view: PortfolioView, open_orders, as_of: datetime,
                       truncated: bool = False) -> ledger_pb2.Portfolio:
    """Money (values, P&L, equity) in cents; per-share prices (average cost, market price) at
    the symbol's price precision (docs/architecture.md § Portfolio). `truncated`: more orders
    are held for than `open_orders` lists (open_orders_truncated)."""
    return ledger_pb2.Portfolio(
        account_id=account, cash=cash_to_proto(view.cash), equity=fmt_cents(view.equity), open_orders=open_orders,
        open_orders_truncated=truncated, as_of=timestamp(as_of), positions=[
            ledger_pb2.Position(symbol=p.symbol, quantity=p.quantity, available=p.available, held=p.held,
                                average_cost=_price(p.symbol, p.average_cost),
                                market_price=_price(p.symbol, p.market_price),
                                market_value=_money(p.market_value), unrealized_pnl=_money(p.unrealized_pnl))
            for p in view.positions])


# What order_svc may know of an order's end that the ledger's snapshot does not show yet.
_ENDED_FIELDS = ("reject_reason", "reject_message", "replaced_by", "end_reason", "end_message")


def open_orders_as_of(held: list[HeldOrder], found: dict[str, order_pb2.Order]) -> list[order_pb2.Order]:
    """The orders of the snapshot's open holds that order_svc has (`found`, by id), as the
    snapshot has them (docs/architecture.md § Portfolio), newest first as ListOrders lists them."""
    shown = [open_order_as_of(found[h.order_id], h) for h in held if h.order_id in found]
    return sorted(shown, key=lambda o: (o.created_at.seconds, o.created_at.nanos, o.order_id), reverse=True)


def open_order_as_of(order: order_pb2.Order, held: HeldOrder) -> order_pb2.Order:
    """order_svc's order (its terms, ids and times) with the ledger's fills of it: open, since
    its hold is, whatever order_svc has applied since (or not yet)."""
    shown = order_pb2.Order()
    shown.CopyFrom(order)
    for name in _ENDED_FIELDS:
        shown.ClearField(name)
    shown.filled_quantity = held.filled
    avg = held.average_fill_price
    shown.average_fill_price = fmt_price(avg) if avg is not None else ""
    if held.replacing:  # a replacement the ledger has not applied (its fills, the replaced order's)
        shown.status = common_pb2.ORDER_STATUS_PENDING_NEW
    elif held.filled:
        shown.status = common_pb2.ORDER_STATUS_PARTIALLY_FILLED
    elif order.status == common_pb2.ORDER_STATUS_PENDING_NEW:
        shown.status = common_pb2.ORDER_STATUS_PENDING_NEW  # not yet confirmed by the engine
    else:
        shown.status = common_pb2.ORDER_STATUS_NEW
    return shown


TRANSFER_STATUSES = {
    model.TransferStatus.PENDING: hold_service_pb2.HOLD_TRANSFER_STATUS_PENDING,
    model.TransferStatus.COMPLETED: hold_service_pb2.HOLD_TRANSFER_STATUS_COMPLETED,
    model.TransferStatus.CANCELLED: hold_service_pb2.HOLD_TRANSFER_STATUS_CANCELLED,
}


def transfer_to_proto(t: model.HoldTransfer) -> hold_service_pb2.HoldTransfer:
    def amount(v: Decimal | None) -> str:
        return "" if v is None else model.amount_text(t.asset, v)
    return hold_service_pb2.HoldTransfer(
        from_hold_id=t.from_hold_id, to_hold_id=t.to_hold_id, order_id=t.order_id, asset=t.asset,
        unit_amount=fmt(t.unit_amount), reserve_amount=amount(t.reserve), reserve_hold_id=t.reserve_hold_id or "",
        status=TRANSFER_STATUSES[t.status], moved_amount=amount(t.moved), new_amount=amount(t.new_amount))
