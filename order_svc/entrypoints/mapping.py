"""proto <-> domain for order_svc, beside the servicer."""
from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Sequence

from meshkit import validate
from meshkit.errors import InvalidArgument, Violations
from meshkit.money import MAX_PRICE, fmt_price, parse_decimal
from meshkit.paging import MAX_PAGE_SIZE
from meshkit.prototime import set_time
from meshkit.symbols import known, on_tick, tick_size
from order_svc.domain import model
from order_svc.domain.model import Fill, Order, OrderRequest, OrderType, Side, Status, TimeInForce
from stockmesh.common.v1 import common_pb2
from stockmesh.order.v1 import order_pb2, order_service_pb2 as pb

SIDES = {common_pb2.SIDE_BUY: Side.BUY, common_pb2.SIDE_SELL: Side.SELL}
TYPES = {common_pb2.ORDER_TYPE_MARKET: OrderType.MARKET, common_pb2.ORDER_TYPE_LIMIT: OrderType.LIMIT,
         common_pb2.ORDER_TYPE_STOP: OrderType.STOP, common_pb2.ORDER_TYPE_STOP_LIMIT: OrderType.STOP_LIMIT}
TIFS = {common_pb2.TIME_IN_FORCE_DAY: TimeInForce.DAY, common_pb2.TIME_IN_FORCE_GTC: TimeInForce.GTC,
        common_pb2.TIME_IN_FORCE_IOC: TimeInForce.IOC, common_pb2.TIME_IN_FORCE_FOK: TimeInForce.FOK}
STATUSES = {getattr(common_pb2, f"ORDER_STATUS_{s.value}"): s for s in Status}
STATUS_TO_PB = {s: n for n, s in STATUSES.items()}
SIDE_TO_PB = {v: k for k, v in SIDES.items()}
TYPE_TO_PB = {v: k for k, v in TYPES.items()}
TIF_TO_PB = {v: k for k, v in TIFS.items()}
REASON_TO_PB = {r: getattr(order_pb2, f"ORDER_REJECT_REASON_{r.value}") for r in model.RejectReason}
END_TO_PB = {r: getattr(order_pb2, f"ORDER_END_REASON_{r.value}") for r in model.EndReason}
MAX_QUANTITY = 1_000_000_000


def _price(text: str, name: str, needed: bool, order_type: OrderType, v: Violations) -> Decimal | None:
    if not needed:
        if text:
            v.add(name, f"must be empty for a {order_type.value} order")
        return None
    price = parse_decimal(text, name, v, places=4, maximum=MAX_PRICE)
    if price is not None and not on_tick(price):
        v.add(name, f"must be a multiple of the tick size {tick_size(price)}")
        return None
    return price


def place_request(req: pb.PlaceOrderRequest, account_id: str) -> OrderRequest:
    v = Violations()
    validate.key(req.client_order_id, "client_order_id", v)
    symbol = req.symbol
    if not symbol:
        v.add("symbol", "is required")
    validate.enum(req.side, "side", common_pb2.Side, v)
    validate.enum(req.type, "type", common_pb2.OrderType, v)
    validate.enum(req.time_in_force, "time_in_force", common_pb2.TimeInForce, v)
    if req.quantity <= 0:
        v.add("quantity", "must be a whole number of shares greater than 0")
    elif req.quantity > MAX_QUANTITY:
        v.add("quantity", f"must not exceed {MAX_QUANTITY}")
    order_type = TYPES.get(req.type)
    limit = stop = None
    if order_type is not None:
        limit = _price(req.limit_price, "limit_price", order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT),
                       order_type, v)
        stop = _price(req.stop_price, "stop_price", order_type in (OrderType.STOP, OrderType.STOP_LIMIT),
                      order_type, v)
    if v.items and symbol:  # named with the others (round 15: a form needed two round trips)
        try:
            known(symbol)
        except InvalidArgument as exc:
            v.items.extend(exc.violations)
    v.raise_if_any()
    known(symbol)  # alone: reason UNKNOWN_SYMBOL
    assert order_type is not None
    return OrderRequest(account_id=account_id, client_order_id=req.client_order_id, symbol=symbol,
                        side=SIDES[req.side], type=order_type, quantity=req.quantity, limit_price=limit,
                        stop_price=stop, time_in_force=TIFS[req.time_in_force])


def replace_request(req: pb.ReplaceOrderRequest, account_id: str):
    """Syntax only (ids, quantity, prices on tick); the rules that depend on the old order's
    type and state are the domain's (model.replacement_request)."""
    from order_svc.service_layer.handlers import ReplaceRequest

    v = Violations()
    oid = order_id(req.order_id, v)
    validate.key(req.client_order_id, "client_order_id", v)
    if req.quantity <= 0:
        v.add("quantity", "must be a whole number of shares greater than 0 (the new total)")
    elif req.quantity > MAX_QUANTITY:
        v.add("quantity", f"must not exceed {MAX_QUANTITY}")
    prices = []
    for name, text in (("limit_price", req.limit_price), ("stop_price", req.stop_price)):
        price = parse_decimal(text, name, v, places=4, maximum=MAX_PRICE, required=False) if text else None
        if price is not None and not on_tick(price):
            v.add(name, f"must be a multiple of the tick size {tick_size(price)}")
        prices.append(price)
    v.raise_if_any()
    assert oid is not None
    return ReplaceRequest(account_id=account_id, order_id=oid, client_order_id=req.client_order_id,
                          quantity=req.quantity, limit_price=prices[0], stop_price=prices[1])


# An order id as PlaceOrder writes it (any case): not the other spellings uuid.UUID takes
# ("{...}", "urn:uuid:...", no dashes), which named the same order by another text (round 16).


def order_id(text: str, v: Violations, field: str = "order_id") -> uuid.UUID | None:
    if validate.ORDER_ID.fullmatch(text):
        return uuid.UUID(text)
    v.add(field, "must be an order id returned by PlaceOrder" if text else "is required")
    return None


# ListOrders' order_ids: at most a page's worth of orders (meshkit.paging.MAX_PAGE_SIZE).
MAX_ORDER_IDS = MAX_PAGE_SIZE
MAX_ORDER_ID_TEXTS = 4 * MAX_ORDER_IDS  # ids given, repeats included


def order_ids(texts: Sequence[str], v: Violations) -> list[uuid.UUID] | None:
    """ListOrders' order_ids filter: None when not given; each id read as order_id reads one
    (its violation at its own index, the first ten said), at most MAX_ORDER_IDS distinct
    orders. An id given twice (in any case) is one order, listed once, and counts once towards
    the limit (round 27: 500 orders with an id repeated were refused, though they fit one
    page); the request's own size is bounded by the largest message a service takes."""
    if not texts:
        return None
    if len(texts) > MAX_ORDER_ID_TEXTS:  # repeats are forgiven, not without bound: each is read
        v.add("order_ids", f"at most {MAX_ORDER_IDS} distinct order ids in at most {MAX_ORDER_ID_TEXTS}, "
                           f"not {len(texts)}")
        return None
    ids: set[uuid.UUID] = set()
    wrong = 0
    for i, text in enumerate(texts):
        if validate.ORDER_ID.fullmatch(text):
            ids.add(uuid.UUID(text))
        elif (wrong := wrong + 1) <= 10:  # not 500 violations in one reply
            order_id(text, v, f"order_ids[{i}]")
    if len(ids) > MAX_ORDER_IDS:
        v.add("order_ids", f"at most {MAX_ORDER_IDS} distinct order ids, not {len(ids)}")
        return None
    return sorted(ids)


def order_to_proto(o: Order) -> order_pb2.Order:
    q = o.request
    msg = order_pb2.Order(
        order_id=str(o.order_id), client_order_id=q.client_order_id, account_id=q.account_id, symbol=q.symbol,
        side=SIDE_TO_PB[q.side], type=TYPE_TO_PB[q.type], time_in_force=TIF_TO_PB[q.time_in_force],
        quantity=q.quantity, limit_price=fmt_price(q.limit_price) if q.limit_price is not None else "",
        stop_price=fmt_price(q.stop_price) if q.stop_price is not None else "", status=STATUS_TO_PB[o.status],
        filled_quantity=o.filled_quantity,
        average_fill_price=fmt_price(o.average_fill_price) if o.average_fill_price is not None else "",
        reject_reason=REASON_TO_PB[o.reject_reason] if o.reject_reason else order_pb2.ORDER_REJECT_REASON_UNSPECIFIED,
        reject_message=o.reject_message, replaced_by=str(o.replaced_by) if o.replaced_by else "",
        replaces=str(o.replaces) if o.replaces else "")
    if o.end_reason is not None:
        msg.end_reason = END_TO_PB[o.end_reason]
        msg.end_message = o.end_message
    set_time(msg.created_at, o.created_at)
    set_time(msg.updated_at, o.updated_at)
    if o.triggered_at is not None:
        set_time(msg.triggered_at, o.triggered_at)
    return msg


def update_to_proto(sequence: int, o: Order, fill: Fill | None) -> order_pb2.OrderUpdate:
    u = order_pb2.OrderUpdate(sequence=sequence, order=order_to_proto(o))
    set_time(u.event_time, o.updated_at)
    if fill is not None:
        u.fill.fill_id, u.fill.price, u.fill.quantity = fill.fill_id, fmt_price(fill.price), fill.quantity
        set_time(u.fill.executed_at, fill.executed_at)
    return u
