"""Orders: what a valid order is, what it must hold, and how its state may change.

Plain Python: no gRPC, no SQL. Prices are exact Decimals; quantities whole shares.
"""
from __future__ import annotations

import enum
import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from meshkit.errors import (AlreadyExists, FailedPrecondition, FieldViolation, InvalidArgument, NotFound, Unavailable,
                            Violations)
from meshkit.money import CASH, average_price, fmt_price
from meshkit.symbols import tick_size


class Side(enum.Enum):
    BUY = "BUY"
    SELL = "SELL"


class OrderType(enum.Enum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"
    STOP = "STOP"
    STOP_LIMIT = "STOP_LIMIT"


class TimeInForce(enum.Enum):
    DAY = "DAY"
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"


class Status(enum.Enum):
    PENDING_NEW = "PENDING_NEW"
    NEW = "NEW"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    REJECTED = "REJECTED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.FILLED, Status.CANCELLED, Status.EXPIRED, Status.REJECTED})

ALLOWED = {
    Status.PENDING_NEW: {Status.NEW, Status.REJECTED},
    # The engine may still reject an accepted order (a FOK it cannot fill whole).
    Status.NEW: {Status.PARTIALLY_FILLED, Status.FILLED, Status.CANCELLED, Status.EXPIRED, Status.REJECTED},
    Status.PARTIALLY_FILLED: {Status.PARTIALLY_FILLED, Status.FILLED, Status.CANCELLED, Status.EXPIRED},
}


class RejectReason(enum.Enum):
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    INSUFFICIENT_SHARES = "INSUFFICIENT_SHARES"
    MARKET_CLOSED = "MARKET_CLOSED"
    SYMBOL_HALTED = "SYMBOL_HALTED"
    PRICE_OUT_OF_COLLAR = "PRICE_OUT_OF_COLLAR"
    NO_LIQUIDITY = "NO_LIQUIDITY"
    FOK_NOT_FILLABLE = "FOK_NOT_FILLABLE"
    ORDER_NOT_ACTIVE = "ORDER_NOT_ACTIVE"  # a replacement whose old order ended before the engine replaced it
    INTERNAL = "INTERNAL"  # the engine refused what order_svc had validated (a bug, not the client's doing)


class EndReason(enum.Enum):
    """Why a CANCELLED or EXPIRED order ended (the engine's reason, or order_svc's own)."""
    CUSTOMER_CANCEL = "CUSTOMER_CANCEL"
    IOC_REMAINDER = "IOC_REMAINDER"
    MARKET_REMAINDER = "MARKET_REMAINDER"
    NO_LIQUIDITY = "NO_LIQUIDITY"
    SELF_TRADE = "SELF_TRADE"
    FOK_NOT_FILLABLE = "FOK_NOT_FILLABLE"
    REPLACED = "REPLACED"
    SESSION_CLOSE = "SESSION_CLOSE"


END_MESSAGES = {
    EndReason.CUSTOMER_CANCEL: "cancelled at the customer's request",
    EndReason.IOC_REMAINDER: "the part of the immediate-or-cancel order that could not fill at once was cancelled",
    EndReason.MARKET_REMAINDER: "the rest of the market order found no liquidity within its price collar "
                                "and was cancelled",
    EndReason.NO_LIQUIDITY: "the market order found no liquidity within its price collar",
    EndReason.SELF_TRADE: "cancelled to prevent a trade with another order of the same account",
    EndReason.FOK_NOT_FILLABLE: "the fill-or-kill order could not fill entirely when its stop triggered",
    EndReason.REPLACED: "replaced by a new order",
    EndReason.SESSION_CLOSE: "the day order expired at the close of the trading session",
}

# The engine's reasons (matching_svc.domain.events.CancelReason, and its expiry's) as ours.
ENGINE_END_REASONS = {"USER": EndReason.CUSTOMER_CANCEL, "SESSION_CLOSE": EndReason.SESSION_CLOSE,
                      **{r.value: r for r in EndReason}}


class IllegalTransition(Exception):
    pass


class OrderNotFound(NotFound):
    default_reason = "ORDER_NOT_FOUND"


class DuplicateClientOrderId(AlreadyExists):
    default_reason = "DUPLICATE_CLIENT_ORDER_ID"


class OrderNotActive(FailedPrecondition):
    default_reason = "ORDER_NOT_ACTIVE"


class OrderStillPending(Unavailable):
    """A cancel or replace of an order still being placed (a replacement waiting for its hold
    transfer, PENDING_NEW): not refused for good, as for an order that ended, but to be sent
    again shortly (UNAVAILABLE with RetryInfo), when the order is working."""
    default_reason = "ORDER_PENDING_NEW"

    def __init__(self, what: str, order_id: str) -> None:
        super().__init__(f"the order is still being placed; retry the {what} shortly",
                         metadata={"orderId": order_id, "status": "PENDING_NEW"}, retry_after_seconds=0.05)


class OrderBusy(Unavailable):
    """A cancel or replace that waited its limit (Deps.lock_wait) for its order's row, held by
    another transaction (a stuck session, a row locked by an operator; an execution run or
    another change holds it for milliseconds): the transaction that waited is rolled back, and
    the same call sent again (the same order id, the same client_order_id for a replace) takes
    effect once (a replace whose replacement was recorded before completes that one), so it is
    UNAVAILABLE with RetryInfo, not the pool's 30 s command timeout ending as INTERNAL. As the
    ledger's ACCOUNT_BUSY."""
    default_reason = "ORDER_BUSY"

    def __init__(self, what: str, order_id: str) -> None:
        super().__init__(f"order {order_id} is being changed by another operation right now; it is safe to retry "
                         f"the {what} shortly with the same ids (it takes effect once)",
                         metadata={"orderId": order_id}, retry_after_seconds=1.0)  # the ledger's ACCOUNT_BUSY's


class OrderNotReplaceable(FailedPrecondition):
    default_reason = "ORDER_NOT_REPLACEABLE"


class OrderChangePending(FailedPrecondition):
    default_reason = "ORDER_CHANGE_PENDING"


class ReplaceChangesNothing(InvalidArgument):
    """A replace whose quantity and prices are all the order's own: it would make a new order
    id, move the hold and use up a client_order_id, for nothing (round 23; most brokerage APIs
    refuse it too). Nothing is recorded: the same client_order_id can still be used for a
    replace that changes something."""
    default_reason = "REPLACE_CHANGES_NOTHING"

    def __init__(self, order_id: str, violations: list[FieldViolation], message: str) -> None:
        super().__init__(violations, message=message)
        self.metadata = {"orderId": order_id}


class PlacementUndone(FailedPrecondition):
    """The first placement under this client_order_id died between its hold and its order's
    record, and the reaper has given the hold back: there is no order, and none can be recorded
    under this client_order_id's id any more."""
    default_reason = "PLACEMENT_UNDONE"


@dataclass(frozen=True)
class Refusal:
    """The ledger refused a hold (or its transfer): why, and in the ledger's words when it gave
    any ("available cash 100.00 is less than 187.2500", and the proceeds not yet settled),
    which the order's reject_message carries; empty: the reason's own words."""
    reason: RejectReason
    message: str = ""


@dataclass(frozen=True)
class UncheckedHold:
    """A pending hold the ledger lists as not yet checked against its order (the reaper's
    input): `created_at` and `hold_id` are where the listing goes on after it; `orphan_age`:
    placed more than the reaper's orphan age ago, by the ledger's clock."""
    hold_id: str
    order_id: str
    created_at: datetime
    orphan_age: bool


class HoldResolved(Exception):
    """The ledger resolved (captured or released) the hold asked for under this id before."""


class HoldTaken(Exception):
    """The ledger holds another amount under this id: an earlier attempt of the same placement
    priced it otherwise (a market buy's hold follows the ask at the time)."""


class HoldNotYet(Unavailable):
    """The ledger has no hold of the order being replaced yet: that order is itself a
    replacement, which order_svc has seen confirmed before the ledger applied the same execution
    (their consumers are apart). Transient: the replacement is recorded, and retrying with the
    same ids (or the recovery loop) completes it (round 15)."""
    default_reason = "LEDGER_CATCHING_UP"  # not FAILED_PRECONDITION ORDER_CHANGE_PENDING: retry, do not wait

    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id} has just changed, and the ledger is still applying that change; "
                         "retry the replace shortly with the same client_order_id",
                         metadata={"orderId": order_id}, retry_after_seconds=0.2)


class TransferPending(Unavailable):
    """The ledger is still transferring the old order's hold to an earlier replacement (one
    transfer from a hold at a time): that replace has not been decided yet. Transient: retry."""


class ClientKeyKept(Exception):
    """The ledger kept this order's client_order_id without a hold (a hold of it refused for want
    of cash or shares, or the order rejected before any hold): the same request was answered
    before, and nothing was held now."""


class ClientKeyTaken(Exception):
    """Another hold of the account carries this client_order_id: the id was used for another
    order (`order_id`, recorded or still being placed), and no hold was placed. `released`:
    that hold was given back (an order recorded and ended, or a placement undone)."""

    def __init__(self, order_id: str, released: bool = False) -> None:
        super().__init__(order_id)
        self.order_id, self.released = order_id, released


_ORDER_IDS = uuid.UUID("5b0e1c52-3f7e-4c4e-9d55-7f1d2b8c9a60")  # the namespace of order ids


def order_id_for(account_id: str, client_order_id: str, fingerprint: str) -> uuid.UUID:
    """A new order's id, derived from what makes it itself: every retry and every concurrent
    duplicate of one request asks the ledger for the same hold and records the same order."""
    return uuid.uuid5(_ORDER_IDS, "\x1f".join((account_id, client_order_id, fingerprint)))


@dataclass(frozen=True)
class OrderRequest:
    """A validated PlaceOrder: the parameters idempotency compares."""

    account_id: str
    client_order_id: str
    symbol: str
    side: Side
    type: OrderType
    quantity: int
    limit_price: Decimal | None
    stop_price: Decimal | None
    time_in_force: TimeInForce

    def fingerprint(self) -> str:
        """Same parameters ⇔ same fingerprint (prices compared as numbers: 10 == 10.00)."""
        def norm(p: Decimal | None) -> str:
            return "" if p is None else f"{p.normalize():f}"
        raw = "|".join([self.symbol, self.side.value, self.type.value, str(self.quantity),
                        norm(self.limit_price), norm(self.stop_price), self.time_in_force.value])
        return hashlib.sha256(raw.encode()).hexdigest()


@dataclass
class Order:
    order_id: uuid.UUID
    request: OrderRequest
    status: Status
    created_at: datetime
    updated_at: datetime
    hold_asset: str = CASH
    hold_amount: Decimal = Decimal(0)
    collar_price: Decimal | None = None
    filled_quantity: int = 0
    fill_notional: Decimal = Decimal(0)  # Σ price × quantity of the fills, exact
    reject_reason: RejectReason | None = None
    reject_message: str = ""
    end_reason: EndReason | None = None  # CANCELLED or EXPIRED: why
    replaced_by: uuid.UUID | None = None
    replaces: uuid.UUID | None = None
    cancel_requested: bool = False
    # STOP / STOP_LIMIT: when its stop was reached; it then works as a market / limit order.
    triggered_at: datetime | None = None

    @property
    def account_id(self) -> str:
        return self.request.account_id

    @property
    def hold_id(self) -> str:
        # One hold per order, named after it: any retry of any step asks for the same hold.
        return str(self.order_id)

    @property
    def average_fill_price(self) -> Decimal | None:
        if not self.filled_quantity:
            return None
        return average_price(self.fill_notional, self.filled_quantity)

    @property
    def leaves(self) -> int:
        return self.request.quantity - self.filled_quantity

    def fill(self, quantity: int, price: Decimal) -> None:
        """A fill of `quantity` at `price`: PARTIALLY_FILLED, or FILLED when nothing is left."""
        if not 0 < quantity <= self.leaves:
            raise IllegalTransition(f"order {self.order_id}: fill of {quantity} with {self.leaves} left")
        self.filled_quantity += quantity
        self.fill_notional += price * quantity
        self.transition(Status.FILLED if self.leaves == 0 else Status.PARTIALLY_FILLED)

    def transition(self, to: Status) -> None:
        if to not in ALLOWED.get(self.status, set()):
            raise IllegalTransition(f"order {self.order_id}: {self.status.value} -> {to.value} is not allowed")
        self.status = to
        if to.is_terminal:
            # An ended order has no cancel pending: one on the way when it filled or ended is
            # answered by that end (or refused by the engine, which changes nothing more).
            self.cancel_requested = False

    def reject(self, reason: RejectReason, message: str) -> None:
        self.transition(Status.REJECTED)
        self.reject_reason, self.reject_message = reason, message

    def end(self, to: Status, reason: EndReason | None) -> None:
        """CANCELLED or EXPIRED, for `reason`."""
        if to not in (Status.CANCELLED, Status.EXPIRED):
            raise IllegalTransition(f"order {self.order_id}: {to.value} is not an end with a reason")
        self.transition(to)
        self.end_reason = reason

    @property
    def end_message(self) -> str:
        """Why it ended, in words. A replace asking for no more than the order had filled by
        the time the engine reached it ends the order with no replacement (that is REJECTED
        ORDER_NOT_ACTIVE): said so, rather than "replaced by a new order" with none to show."""
        if self.end_reason is None:
            return ""
        if self.end_reason is EndReason.REPLACED and self.replaced_by is None:
            return (f"cancelled by a replace whose new quantity was not above the {self.filled_quantity} "
                    "shares filled by then; no replacement order was made")
        message = END_MESSAGES[self.end_reason]
        if self.request.type is OrderType.STOP and self.end_reason in (EndReason.NO_LIQUIDITY,
                                                                       EndReason.MARKET_REMAINDER):
            # A triggered STOP works as a market order: said so, not as if it had been one.
            message = message.replace("the market order", "the stop order, triggered as a market order,", 1)
        return message

    def triggered(self, at: datetime) -> bool:
        """The engine reached the stop of this working STOP / STOP_LIMIT order; False when it
        changes nothing (already triggered, or ended in the meantime)."""
        if self.request.type not in (OrderType.STOP, OrderType.STOP_LIMIT):
            raise IllegalTransition(f"order {self.order_id}: a {self.request.type.value} order has no stop")
        if self.triggered_at is not None or self.status.is_terminal:
            return False
        self.triggered_at = at
        return True

    def replaced(self, new_order_id: uuid.UUID) -> None:
        """The engine replaced this order by `new_order_id`: it ends CANCELLED, pointing at it."""
        self.end(Status.CANCELLED, EndReason.REPLACED)
        self.replaced_by = new_order_id

    def confirm_replacement(self, old: "Order") -> None:
        """The engine replaced `old` by this order. Like FIX's CumQty, the new order carries
        what the old one filled (its quantity is the new total): NEW, or PARTIALLY_FILLED when
        the old order had fills."""
        if self.status is not Status.PENDING_NEW or self.replaces != old.order_id:
            raise IllegalTransition(f"order {self.order_id}: {self.status.value} is not a pending replacement "
                                    f"of {old.order_id}")
        if not old.filled_quantity < self.request.quantity:
            raise IllegalTransition(f"order {self.order_id}: {old.filled_quantity} filled already, "
                                    f"quantity {self.request.quantity}")
        self.filled_quantity, self.fill_notional = old.filled_quantity, old.fill_notional
        self.status = Status.PARTIALLY_FILLED if self.filled_quantity else Status.NEW
        self.triggered_at = old.triggered_at  # a triggered STOP_LIMIT's replacement works as a limit order


def round_price(price: Decimal, *, up: bool) -> Decimal:
    tick = tick_size(price)
    steps = (price / tick).to_integral_value(rounding=ROUND_CEILING if up else ROUND_FLOOR)
    return steps * tick


def cents_up(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.01"), rounding=ROUND_CEILING)


@dataclass(frozen=True)
class Fill:
    fill_id: str
    price: Decimal
    quantity: int
    executed_at: datetime


@dataclass(frozen=True)
class HoldPlan:
    asset: str
    amount: Decimal
    collar_price: Decimal | None


def plan_hold(req: OrderRequest, *, best_bid: Decimal | None, best_ask: Decimal | None,
              collar: Decimal) -> HoldPlan | RejectReason:
    """What the order must reserve. A sell holds shares. A buy holds cash: limit × quantity;
    a market buy quantity × ask × (1 + collar), a stop buy quantity × stop × (1 + collar)
    (each rounded up to the cent). A market order with no opposite quote has no liquidity."""
    collar_price: Decimal | None = None
    if req.type in (OrderType.MARKET, OrderType.STOP):
        if req.type is OrderType.MARKET:
            ref = best_ask if req.side is Side.BUY else best_bid
            if ref is None:
                return RejectReason.NO_LIQUIDITY
        else:
            ref = req.stop_price
        assert ref is not None
        collar_price = collar_from(ref, req.side, collar)
    if req.side is Side.SELL:
        return HoldPlan(req.symbol, Decimal(req.quantity), collar_price)
    unit = req.limit_price if req.type in (OrderType.LIMIT, OrderType.STOP_LIMIT) else collar_price
    assert unit is not None
    return HoldPlan(CASH, cents_up(unit * req.quantity), collar_price)


def collar_from(ref: Decimal, side: Side, collar: Decimal) -> Decimal:
    """The worst price a market order (or a triggered STOP) may trade at: `collar` above the
    reference price for a buy (rounded up to the tick), below it for a sell (rounded down)."""
    return round_price(ref * (1 + collar), up=True) if side is Side.BUY else round_price(ref * (1 - collar), up=False)


def replacement_collar(old: Order, req: OrderRequest, collar: Decimal) -> Decimal | None:
    """A replacement's collar: a STOP whose stop price moves gets the collar of its new stop
    (as a STOP placed at that price would; the engine trades the triggered order within it and
    the buy's hold covers it); otherwise the old order's, which the engine keeps."""
    if req.type is OrderType.STOP and req.stop_price is not None and req.stop_price != old.request.stop_price:
        return collar_from(req.stop_price, req.side, collar)
    return old.collar_price


def collar_of_hold(req: OrderRequest, amount: Decimal) -> Decimal:
    """The collar a market buy's hold of `amount` covers: the highest price on the tick grid at
    which the order's quantity still costs no more than it (plan_hold's collar for the hold it
    made; cents_up(collar × quantity) <= amount)."""
    return round_price(amount / req.quantity, up=False)


def outside_band(price: Decimal, reference: Decimal, band: Decimal) -> bool:
    """A limit or stop price further than `band` (a fraction) from the reference price."""
    return abs(price - reference) > reference * band


# --- replacing an order -------------------------------------------------------------------

REPLACEABLE_TYPES = (OrderType.LIMIT, OrderType.STOP, OrderType.STOP_LIMIT)


def replacement_request(old: Order, client_order_id: str, quantity: int, limit_price: Decimal | None,
                        stop_price: Decimal | None) -> OrderRequest:
    """The new order of a ReplaceOrder: the old one's symbol, side, type and time in force with a
    new total `quantity` (what the old order filled included, as FIX's OrderQty) and prices.

    Only LIMIT / STOP / STOP_LIMIT orders, DAY or GTC, can be replaced (FAILED_PRECONDITION
    ORDER_NOT_REPLACEABLE); prices follow the type's field rules (INVALID_ARGUMENT). Whether
    the old order is still working is `check_replaceable`'s business (a retried replace must
    get its reply after the old order ended)."""
    q = old.request
    if q.type not in REPLACEABLE_TYPES or q.time_in_force not in (TimeInForce.DAY, TimeInForce.GTC):
        raise OrderNotReplaceable(
            f"only working LIMIT, STOP and STOP_LIMIT orders can be replaced, not a {q.type.value} "
            f"{q.time_in_force.value} order", metadata={"orderId": str(old.order_id)})
    v = Violations()
    needs_limit = q.type in (OrderType.LIMIT, OrderType.STOP_LIMIT)
    needs_stop = q.type in (OrderType.STOP, OrderType.STOP_LIMIT)
    triggered = stop_no_longer_applies(old)
    if triggered:
        # A triggered STOP_LIMIT is a limit order in the book: a stop price given with its
        # replace (the client may not have seen the trigger yet) is ignored, as the engine
        # ignores it; the replacement keeps the stop that triggered it.
        needs_stop, stop_price = False, None
    for name, price, needed in (("limit_price", limit_price, needs_limit), ("stop_price", stop_price, needs_stop)):
        if needed and price is None:
            v.add(name, f"is required to replace a {q.type.value} order")
        elif not needed and price is not None:
            v.add(name, f"must be empty for a {q.type.value} order")
    v.raise_if_any()
    if triggered:
        stop_price = q.stop_price
    return OrderRequest(account_id=q.account_id, client_order_id=client_order_id, symbol=q.symbol, side=q.side,
                        type=q.type, quantity=quantity, limit_price=limit_price, stop_price=stop_price,
                        time_in_force=q.time_in_force)


def stop_no_longer_applies(o: Order) -> bool:
    """A STOP_LIMIT the engine triggered works as a limit order: its stop price is history."""
    return o.request.type is OrderType.STOP_LIMIT and o.triggered_at is not None


def check_replaceable(old: Order, quantity: int) -> None:
    """The old order is working (FAILED_PRECONDITION ORDER_NOT_ACTIVE when it ended; UNAVAILABLE
    ORDER_PENDING_NEW with RetryInfo while it is still being placed) and the new total quantity
    exceeds what it filled (INVALID_ARGUMENT)."""
    meta = {"orderId": str(old.order_id), "status": old.status.value}
    if old.status.is_terminal:
        raise OrderNotActive(f"the order is already {old.status.value}", metadata=meta)
    if old.status is Status.PENDING_NEW:
        raise OrderStillPending("replace", str(old.order_id))
    if quantity <= old.filled_quantity:
        raise InvalidArgument([FieldViolation(
            "quantity", f"must exceed the {old.filled_quantity} shares already filled (it is the new total)")])


def check_changes_something(old: Order, req: OrderRequest) -> None:
    """The replace `req` of the working order `old` changes its quantity or a price that
    applies to it (INVALID_ARGUMENT REPLACE_CHANGES_NOTHING, with a field violation for each
    value that is the order's own, otherwise). Prices compare as numbers (186.5 is 186.50); the
    stop price of a triggered STOP_LIMIT no longer applies, so a new one changes nothing."""
    q = old.request
    triggered = stop_no_longer_applies(old)
    same = [("quantity", "quantity", req.quantity, q.quantity)]
    if q.type in (OrderType.LIMIT, OrderType.STOP_LIMIT):
        same.append(("limit_price", "limit price", req.limit_price, q.limit_price))
    if q.type in (OrderType.STOP, OrderType.STOP_LIMIT) and not triggered:
        same.append(("stop_price", "stop price", req.stop_price, q.stop_price))
    if any(given != own for _, _, given, own in same):
        return
    shown = [(field, name, str(own) if field == "quantity" else fmt_price(own)) for field, name, _, own in same]
    message = f"nothing would change: order {old.order_id} has {' and '.join(f'{n} {v}' for _, n, v in shown)} already"
    if triggered:
        message += " (its stop has triggered: a stop price changes nothing)"
    raise ReplaceChangesNothing(str(old.order_id), [FieldViolation(f, f"is the order's {n} already ({v})")
                                                    for f, n, v in shown],
                                message + "; a replace must change the quantity or a price")


def replacement_fingerprint(req: OrderRequest, replaces: uuid.UUID) -> str:
    """A replacement's parameters include the order it replaces (so a PlaceOrder reusing its
    client_order_id is a different request)."""
    return hashlib.sha256(f"{req.fingerprint()}|replaces:{replaces}".encode()).hexdigest()


def hold_unit(req: OrderRequest, collar_price: Decimal | None) -> Decimal:
    """What an order's hold reserves per open share: a share for a sell; for a buy its limit
    price (LIMIT, STOP_LIMIT) or its collar (STOP), the most one share can cost."""
    if req.side is Side.SELL:
        return Decimal(1)
    unit = req.limit_price if req.type in (OrderType.LIMIT, OrderType.STOP_LIMIT) else collar_price
    assert unit is not None
    return unit


def replacement_reserve(old_unit: Decimal, old_quantity: int, filled: int, new_unit: Decimal,
                        new_quantity: int) -> Decimal:
    """What a replace must hold on top of the old order's hold, when asked.

    The engine applies the replace later; meanwhile the old order may fill F more shares
    (filled <= F < min(old, new quantity); at the old quantity it is filled and the replace is
    refused, at the new quantity the old order is just cancelled). Each such share takes at
    most `old_unit` from the old hold, which therefore still holds at least
    old_unit x (old_quantity - F), while the new hold needs new_unit x (new_quantity - F). The
    reserve covers the largest shortfall over F; the shortfall is linear in F, so it is the
    larger of the two ends (and never negative). With the old unit price not above the new
    one this is exactly the difference at the current fill; lowering the price while raising
    the quantity reserves for the old order filling at the old price first."""
    assert old_quantity > filled and new_quantity > filled
    def shortfall(f: int) -> Decimal:
        return new_unit * (new_quantity - f) - old_unit * (old_quantity - f)
    reserve = max(Decimal(0), shortfall(filled), shortfall(min(old_quantity, new_quantity) - 1))
    # Cash is held in whole cents (the ledger rounds the new hold up to the cent, and the old
    # hold's remainder is in cents): rounded up, the reserve still covers it. Shares are whole.
    return reserve if reserve == reserve.to_integral_value() else cents_up(reserve)
