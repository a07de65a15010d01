"""Hypothesis: invariants of the order book under any sequence of operations.

A state machine submits orders of every type and time in force, cancels,
replaces and expires them, on a narrow band of prices and a few accounts (so
orders cross, stops trigger and self-trade prevention fires), and checks
after every step:

* the book is never crossed (best bid < best ask);
* quantity is conserved for every order, from the events alone: what it
  entered with = filled + resting + cancelled / expired / replaced;
* every fill is at the maker's limit price and within the taker's limit
  (or collar for market orders and stops);
* IOC, FOK and market orders never rest; aggregated depth matches the orders;
* the state survives snapshot / restore with the same hash.
"""

from __future__ import annotations

from dataclasses import dataclass

import hypothesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from matching_svc.domain import (
    Accepted,
    Cancelled,
    Expired,
    Fill,
    Order,
    OrderBook,
    OrderType,
    Rejected,
    Replaced,
    Side,
    StpMode,
    TimeInForce,
    Triggered,
)

PRICES = st.integers(min_value=97, max_value=103)
QUANTITIES = st.integers(min_value=1, max_value=20)
ACCOUNTS = st.sampled_from(["A", "B", "C"])
TYPES = st.sampled_from(
    [OrderType.LIMIT] * 5 + [OrderType.MARKET, OrderType.STOP, OrderType.STOP_LIMIT]
)
TIFS = st.sampled_from([TimeInForce.GTC, TimeInForce.GTC, TimeInForce.DAY, TimeInForce.IOC, TimeInForce.FOK])


@dataclass
class Tracked:
    """What the test knows about one order id, from its own inputs and the events."""

    side: Side
    limit: int | None
    collar: int | None
    entered: int = 0  # quantity it entered the book with
    filled: int = 0
    closed: int = 0  # cancelled, expired or handed over by a replace
    inherited: int = 0  # filled by the orders it replaced (FIX CumQty carries over)
    ended: bool = False

    @property
    def remaining(self) -> int:
        return self.entered - self.filled - self.closed


class OrderBookMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.book = OrderBook("PROP")
        self.tracked: dict[str, Tracked] = {}
        self.next_id = 0

    @initialize(stp=st.sampled_from(list(StpMode)))
    def choose_stp_mode(self, stp):
        self.book = OrderBook("PROP", stp_mode=stp)

    def _new_id(self) -> str:
        self.next_id += 1
        return f"o{self.next_id}"

    # ------------------------------------------------------------- rules

    @rule(
        side=st.sampled_from(list(Side)),
        otype=TYPES,
        tif=TIFS,
        qty=QUANTITIES,
        px=PRICES,
        stop_px=PRICES,
        account=ACCOUNTS,
    )
    def submit(self, side, otype, tif, qty, px, stop_px, account):
        oid = self._new_id()
        limit = px if otype in (OrderType.LIMIT, OrderType.STOP_LIMIT) else None
        stop = stop_px if otype in (OrderType.STOP, OrderType.STOP_LIMIT) else None
        collar = px if otype in (OrderType.MARKET, OrderType.STOP) else None
        self.tracked[oid] = Tracked(side, limit, collar)
        order = Order(oid, account, side, otype, tif, qty, limit=limit, stop=stop, collar=collar)
        events = self.book.submit(order)
        if isinstance(events[0], Accepted):
            self.tracked[oid].entered = qty
        self._consume(events)

    def _pick(self, data) -> str:
        """Mostly a live order, sometimes any id the test has used (live or ended)."""
        live = [oid for oid in self.tracked if self.book.get_order(oid) is not None]
        if live and data.draw(st.integers(0, 3), label="pick live") > 0:
            return data.draw(st.sampled_from(live))
        return data.draw(st.sampled_from(sorted(self.tracked)))

    @precondition(lambda self: self.tracked)
    @rule(data=st.data())
    def cancel(self, data):
        oid = self._pick(data)
        live = self.book.get_order(oid) is not None
        events = self.book.cancel(oid)
        assert isinstance(events[0], Cancelled if live else Rejected)
        self._consume(events)

    @precondition(lambda self: self.tracked)
    @rule(data=st.data(), qty=st.integers(min_value=1, max_value=30), px=PRICES, stop_px=PRICES)
    def replace(self, data, qty, px, stop_px):
        oid = self._pick(data)
        order = self.book.get_order(oid)
        otype = order.type if order is not None else OrderType.LIMIT
        limit = px if otype in (OrderType.LIMIT, OrderType.STOP_LIMIT) else None
        stop = stop_px if otype in (OrderType.STOP, OrderType.STOP_LIMIT) else None
        if order is not None and data.draw(st.booleans(), label="same prices"):
            limit, stop = order.limit, order.stop
        new_id = self._new_id()
        old = self.tracked[oid]
        self.tracked[new_id] = Tracked(old.side, limit, old.collar)
        self._consume(self.book.replace(oid, new_id, qty, limit, stop))

    @rule()
    def expire(self):
        self._consume(self.book.expire_day_orders())

    # ------------------------------------------------------------- event checks

    def _consume(self, events) -> None:
        for event in events:
            reason = getattr(event, "reason", None) or getattr(event, "kept_priority", "")
            hypothesis.event(f"{type(event).__name__} {reason}".strip())
            match event:
                case Fill():
                    self._check_fill(event)
                case Cancelled(order_id=oid, quantity=qty) | Expired(order_id=oid, quantity=qty):
                    t = self.tracked[oid]
                    assert qty == t.remaining > 0
                    t.closed += qty
                    t.ended = True
                case Replaced():
                    old = self.tracked[event.old_order_id]
                    assert event.old_leaves == old.remaining > 0
                    old.closed += event.old_leaves
                    old.ended = True
                    new = self.tracked[event.new_order_id]
                    new.entered = event.leaves
                    new.inherited = old.inherited + old.filled
                    assert event.leaves == event.quantity - new.inherited
                case Triggered(order_id=oid, collar=collar):
                    t = self.tracked[oid]
                    assert not t.ended and t.filled == 0
                    # A triggered STOP trades within its collar; a sell stop the market gapped
                    # through, within a lower one (below the electing trade), never a higher one.
                    if t.collar is not None:
                        assert collar is not None and (collar == t.collar if t.side is Side.BUY
                                                       else 1 <= collar <= t.collar)
                        t.collar = collar
                case Accepted() | Rejected():
                    pass

    def _check_fill(self, fill: Fill) -> None:
        maker = self.tracked[fill.maker_order_id]
        taker = self.tracked[fill.taker_order_id]
        assert fill.quantity > 0
        assert maker.side is not taker.side and fill.taker_side is taker.side
        assert fill.price == maker.limit, "a trade happens at the maker's price"
        bound = taker.limit if taker.limit is not None else taker.collar
        if taker.side is Side.BUY:
            assert fill.price <= bound
        else:
            assert fill.price >= bound
        assert fill.maker_account_id != fill.taker_account_id, "self-trade prevented"
        maker.filled += fill.quantity
        taker.filled += fill.quantity
        assert fill.maker_leaves == maker.remaining
        assert fill.taker_leaves == taker.remaining
        assert not maker.ended and not taker.ended
        if fill.maker_leaves == 0:
            maker.ended = True
        if fill.taker_leaves == 0:
            taker.ended = True

    # ------------------------------------------------------------- invariants

    @invariant()
    def never_crossed(self):
        bid, ask = self.book.best_bid(), self.book.best_ask()
        assert bid is None or ask is None or bid < ask

    @invariant()
    def quantity_conserved(self):
        for oid, t in self.tracked.items():
            live = self.book.get_order(oid)
            resting = live.leaves if live is not None else 0
            assert t.entered == t.filled + t.closed + resting, oid
            assert (live is None) == (t.ended or t.entered == 0), oid

    @invariant()
    def only_resting_kinds_rest_and_depth_adds_up(self):
        snapshot = self.book.snapshot()
        bids, asks = self.book.depth(1000)
        for levels, side in ((snapshot["bids"], bids), (snapshot["asks"], asks)):
            assert [(p, sum(o["leaves"] for o in orders), len(orders)) for p, orders in levels] == side
            for _, orders in levels:
                for o in orders:
                    assert o["type"] == "LIMIT" and o["tif"] in ("GTC", "DAY") and o["leaves"] > 0
        assert len(self.book) == sum(len(o) for _, o in snapshot["bids"] + snapshot["asks"]) + len(snapshot["stops"])

    @invariant()
    def snapshot_round_trip(self):
        assert OrderBook.restore(self.book.snapshot()).state_hash() == self.book.state_hash()


OrderBookMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestOrderBookProperties = OrderBookMachine.TestCase
