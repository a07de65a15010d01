"""A single-writer limit order book for one symbol: price-time priority matching.

Data structures (chosen for CPython speed, measured in
``benchmarks/bench_order_book.py``):

* ``_orders``: order id → live ``Order`` (resting limit orders and pending stops).
* ``_bids`` / ``_asks``: price → ``_Level``; a level keeps its orders in a
  ``deque`` in time priority, with its live quantity and order count.
* ``_bid_heap`` / ``_ask_heap``: heaps of level keys (``-price`` for bids,
  ``price`` for asks, so the best level is always ``heap[0]``) with lazy
  deletion: a key whose level is gone is dropped when it reaches the top.
* Cancelled orders are removed lazily from their level's deque too: the order
  is marked dead (``leaves == 0``) and skipped; a deque is compacted when dead
  entries outnumber live ones, so a cancel is O(1) amortised.
* Pending stops sit in two heaps ordered by (stop price, arrival), likewise
  with lazy deletion.

Everything is deterministic: the same sequence of calls yields the same events
and the same ``state_hash()``, also after ``snapshot()`` / ``restore()``.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from heapq import heapify, heappop, heappush, nlargest, nsmallest
from operator import attrgetter

from matching_svc.domain.events import (
    Accepted,
    Cancelled,
    CancelReason,
    Event,
    Expired,
    Fill,
    Rejected,
    RejectReason,
    Replaced,
    Triggered,
)
from matching_svc.domain.model import Order, OrderType, Side, StpMode, TimeInForce

SNAPSHOT_FORMAT = 1

# Module-level aliases: the hot path compares enum members by identity.
BUY = Side.BUY
SELL = Side.SELL
MARKET = OrderType.MARKET
LIMIT = OrderType.LIMIT
STOP = OrderType.STOP
STOP_LIMIT = OrderType.STOP_LIMIT
DAY = TimeInForce.DAY
GTC = TimeInForce.GTC
FOK = TimeInForce.FOK
CANCEL_NEWEST = StpMode.CANCEL_NEWEST
CANCEL_OLDEST = StpMode.CANCEL_OLDEST
_SIDES = frozenset(Side)
_TIFS = frozenset(TimeInForce)

_NO_HIGH = -1
_NO_LOW = 1 << 62
_by_seq = attrgetter("seq")


class _Level:
    """The orders resting at one price, in time priority (dead entries skipped)."""

    __slots__ = ("orders", "qty", "count")

    def __init__(self) -> None:
        self.orders: deque[Order] = deque()
        self.qty = 0  # live quantity
        self.count = 0  # live orders


def _is_price(value: object) -> bool:
    return type(value) is int and value > 0


def _plain_limit(order: Order) -> bool:
    """Fast path of ``_fields_valid`` for the most common order: a valid LIMIT."""
    q = order.quantity
    limit = order.limit
    return (
        order.type is LIMIT
        and type(q) is int
        and q > 0
        and type(limit) is int
        and limit > 0
        and order.stop is None
        and order.collar is None
        and order.side in _SIDES
        and order.tif in _TIFS
        and type(order.order_id) is str
        and order.order_id != ""
        and type(order.account_id) is str
    )


def _fields_valid(order: Order) -> bool:
    """The field rules of ``Order`` (see its docstring)."""
    q = order.quantity
    if type(q) is not int or q <= 0 or order.side not in _SIDES or order.tif not in _TIFS:
        return False
    if not order.order_id or type(order.order_id) is not str or type(order.account_id) is not str:
        return False
    t = order.type
    if t is LIMIT:
        return _is_price(order.limit) and order.stop is None and order.collar is None
    if t is MARKET:
        return order.limit is None and order.stop is None and _is_price(order.collar)
    if t is STOP:
        return order.limit is None and _is_price(order.stop) and _is_price(order.collar)
    if t is STOP_LIMIT:
        return _is_price(order.limit) and _is_price(order.stop) and order.collar is None
    return False


class OrderBook:
    """The order book of one symbol. Not thread-safe: one writer, by design.

    Every mutating method returns the ``list[Event]`` it produced, in order.
    """

    def __init__(self, symbol: str, stp_mode: StpMode = StpMode.CANCEL_NEWEST) -> None:
        self.symbol = symbol
        self.stp_mode = StpMode(stp_mode)
        self.last_trade_price: int | None = None
        """Ticks of the latest fill, ``None`` before the first one."""
        self._orders: dict[str, Order] = {}
        self._bids: dict[int, _Level] = {}
        self._asks: dict[int, _Level] = {}
        self._bid_heap: list[int] = []  # -price
        self._ask_heap: list[int] = []  # price
        self._buy_stops: list[tuple[int, int, Order]] = []  # (stop, seq, order)
        self._sell_stops: list[tuple[int, int, Order]] = []  # (-stop, seq, order)
        self._pending_stops = 0
        self._seq = 0
        # Extreme trade prices since pending stops were last examined.
        self._hi = _NO_HIGH
        self._lo = _NO_LOW

    # ------------------------------------------------------------------ commands

    def submit(self, order: Order) -> list[Event]:
        """Enter a new order; the book takes ownership of the ``Order`` object.

        Events: ``Rejected`` (INVALID, DUPLICATE_ORDER_ID, FOK_NOT_FILLABLE) and
        nothing else; or ``Accepted`` then ``Fill``s, then possibly a
        ``Cancelled`` remainder (IOC_REMAINDER, MARKET_REMAINDER,
        NO_LIQUIDITY, SELF_TRADE), then events of any stops the fills
        triggered (``Triggered`` followed by that order's events). A stop
        whose price the last trade has already reached triggers at once.
        """
        oid = order.order_id
        if oid in self._orders:
            return [Rejected(oid, order.account_id, RejectReason.DUPLICATE_ORDER_ID)]
        if not (_plain_limit(order) or _fields_valid(order)):
            return [Rejected(oid, order.account_id, RejectReason.INVALID)]
        order.filled = 0
        order.leaves = order.quantity
        t = order.type
        if t is LIMIT or t is MARKET:
            if order.tif is FOK and not self._fok_fillable(order):
                return [Rejected(oid, order.account_id, RejectReason.FOK_NOT_FILLABLE)]
            self._seq += 1
            order.seq = self._seq
            events: list[Event] = [Accepted(oid, order.account_id)]
            self._execute(order, events)
        else:
            self._seq += 1
            order.seq = self._seq
            events = [Accepted(oid, order.account_id)]
            self._add_stop(order, events)
        if self._hi != _NO_HIGH:
            self._run_stops(events)
        return events

    def cancel(self, order_id: str) -> list[Event]:
        """Cancel a live order (resting, or a pending stop): ``Cancelled(USER)``,
        or ``Rejected(UNKNOWN_ORDER)`` with ``account_id=None``."""
        order = self._orders.pop(order_id, None)
        if order is None:
            return [Rejected(order_id, None, RejectReason.UNKNOWN_ORDER)]
        leaves = order.leaves
        self._remove(order)
        return [Cancelled(order_id, order.account_id, CancelReason.USER, leaves)]

    def replace(
        self,
        order_id: str,
        new_order_id: str,
        quantity: int,
        limit: int | None = None,
        stop: int | None = None,
        collar: int | None = None,
    ) -> list[Event]:
        """Cancel/replace a live order under a new id.

        ``quantity`` is the new *total* quantity (FIX ``OrderQty``): the new
        order's open quantity is ``quantity`` minus what the old order has
        already filled, so a replace racing with fills never over-executes.
        ``limit`` / ``stop`` follow the field rules of the order's type (side,
        type, time in force and account are kept; so is the collar, unless a
        STOP's replacement brings its own: that of its new stop price). A
        triggered STOP_LIMIT is a LIMIT order.

        * Same limit and stop, open quantity not increased: ``Replaced``
          with ``kept_priority=True``; the new id takes the old one's place.
        * Otherwise ``Replaced(kept_priority=False)``: the new order goes to
          the back and is matched as a new order (fills etc. follow); a
          pending stop goes to the back of the trigger queue.
        * ``quantity`` not above the filled quantity: the old order is
          cancelled (``Cancelled(REPLACED)``) and no new order exists.
        * ``Rejected`` (with ``orig_order_id``): UNKNOWN_ORDER (not live,
          e.g. already filled), DUPLICATE_ORDER_ID (``new_order_id`` is live),
          INVALID; the book is untouched.
        """
        old = self._orders.get(order_id)
        if old is None:
            return [Rejected(new_order_id, None, RejectReason.UNKNOWN_ORDER, order_id)]
        account = old.account_id
        if new_order_id in self._orders:
            return [Rejected(new_order_id, account, RejectReason.DUPLICATE_ORDER_ID, order_id)]
        t = old.type
        valid = type(new_order_id) is str and new_order_id and type(quantity) is int and quantity > 0
        if t is LIMIT:
            valid = valid and _is_price(limit) and stop is None
        elif t is STOP:
            valid = valid and limit is None and _is_price(stop) and (collar is None or _is_price(collar))
        else:  # STOP_LIMIT
            valid = valid and _is_price(limit) and _is_price(stop)
        if not valid:
            return [Rejected(new_order_id, account, RejectReason.INVALID, order_id)]

        old_leaves = old.leaves
        new_leaves = quantity - old.filled
        orders = self._orders
        if new_leaves <= 0:
            del orders[order_id]
            self._remove(old)
            return [Cancelled(order_id, account, CancelReason.REPLACED, old_leaves)]

        if limit == old.limit and stop == old.stop and new_leaves <= old_leaves:
            del orders[order_id]
            old.order_id = new_order_id
            old.quantity = quantity
            old.leaves = new_leaves
            orders[new_order_id] = old
            if t is LIMIT:
                levels = self._bids if old.side is BUY else self._asks
                levels[old.limit].qty -= old_leaves - new_leaves
            return [Replaced(order_id, new_order_id, account, True, old_leaves, quantity, new_leaves, limit, stop)]

        del orders[order_id]
        self._remove(old)
        self._seq += 1
        new = Order(
            new_order_id, account, old.side, t, old.tif, quantity, limit, stop,
            collar if t is STOP and collar is not None else old.collar,
            filled=old.filled, leaves=new_leaves, seq=self._seq, trading_day=old.trading_day,
        )
        events: list[Event] = [
            Replaced(order_id, new_order_id, account, False, old_leaves, quantity, new_leaves, limit, stop)
        ]
        if t is LIMIT:
            self._execute(new, events)
        else:
            self._add_stop(new, events)
        if self._hi != _NO_HIGH:
            self._run_stops(events)
        return events

    def expire_day_orders(self, through: str | None = None) -> list[Event]:
        """Session close: every resting DAY order and pending DAY stop of the trading day
        ``through`` or an earlier one (every one when None) gets ``Expired``, in arrival
        order. A replaced order keeps the day of the order it replaced."""
        day = sorted((o for o in self._orders.values()
                      if o.tif is DAY and (through is None or o.trading_day <= through)), key=_by_seq)
        events: list[Event] = []
        for order in day:
            del self._orders[order.order_id]
            leaves = order.leaves
            self._remove(order)
            events.append(Expired(order.order_id, order.account_id, leaves))
        return events

    # ------------------------------------------------------------------ queries

    def best_bid(self) -> int | None:
        heap, levels = self._bid_heap, self._bids
        while heap and -heap[0] not in levels:
            heappop(heap)
        return -heap[0] if heap else None

    def best_ask(self) -> int | None:
        heap, levels = self._ask_heap, self._asks
        while heap and heap[0] not in levels:
            heappop(heap)
        return heap[0] if heap else None

    def depth(self, levels: int = 10) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """Aggregated depth, best first: ``(bids, asks)``, each a list of
        ``(price_ticks, quantity, order_count)`` of at most ``levels`` entries."""
        bids = [(p, self._bids[p].qty, self._bids[p].count) for p in nlargest(levels, self._bids)]
        asks = [(p, self._asks[p].qty, self._asks[p].count) for p in nsmallest(levels, self._asks)]
        return bids, asks

    def get_order(self, order_id: str) -> Order | None:
        """The live order with this id (resting or pending stop), else ``None``.
        Read only: the book owns it."""
        return self._orders.get(order_id)

    def __len__(self) -> int:
        """Number of live orders (resting and pending stops)."""
        return len(self._orders)

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict:
        """The whole state as plain JSON-able data (levels best first, orders in
        priority order, pending stops in arrival order)."""

        def side(levels: dict[int, _Level], reverse: bool) -> list:
            return [
                [price, [o.to_dict() for o in levels[price].orders if o.leaves]]
                for price in sorted(levels, reverse=reverse)
            ]

        stops = sorted((o for o in self._orders.values() if o.type is STOP or o.type is STOP_LIMIT), key=_by_seq)
        return {
            "format": SNAPSHOT_FORMAT,
            "symbol": self.symbol,
            "stp_mode": self.stp_mode.value,
            "seq": self._seq,
            "last_trade_price": self.last_trade_price,
            "bids": side(self._bids, True),
            "asks": side(self._asks, False),
            "stops": [o.to_dict() for o in stops],
        }

    @classmethod
    def restore(cls, snapshot: dict) -> OrderBook:
        """Rebuild a book from ``snapshot()``; it behaves exactly as the original."""
        if snapshot.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unsupported order book snapshot format {snapshot.get('format')!r}")
        book = cls(snapshot["symbol"], StpMode(snapshot["stp_mode"]))
        book._seq = snapshot["seq"]
        book.last_trade_price = snapshot["last_trade_price"]
        for key in ("bids", "asks"):
            for price, orders in snapshot[key]:
                for data in orders:
                    order = Order.from_dict(data)
                    if order.limit != price:
                        raise ValueError(f"order {order.order_id} at {order.limit} filed under level {price}")
                    book._rest(order)
        for data in snapshot["stops"]:
            book._park_stop(Order.from_dict(data))
        return book

    def state_hash(self) -> str:
        """SHA-256 of the canonical JSON of ``snapshot()``: equal states, equal hashes."""
        canonical = json.dumps(self.snapshot(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()

    # ------------------------------------------------------------------ matching

    def _execute(self, order: Order, events: list[Event]) -> None:
        """Match an active LIMIT / MARKET order, then rest or cancel what is left."""
        is_limit = order.type is LIMIT
        bound = order.limit if is_limit else order.collar
        if order.side is BUY:
            heap = self._ask_heap
            if heap and heap[0] <= bound:
                self._match(order, bound, events)
        else:
            heap = self._bid_heap
            if heap and -heap[0] >= bound:
                self._match(order, bound, events)
        leaves = order.leaves
        if not leaves:
            return
        if is_limit:
            tif = order.tif
            if tif is GTC or tif is DAY:
                self._rest(order)
                return
            reason = CancelReason.IOC_REMAINDER
        else:
            reason = CancelReason.MARKET_REMAINDER if order.filled else CancelReason.NO_LIQUIDITY
        order.leaves = 0
        events.append(Cancelled(order.order_id, order.account_id, reason, leaves))

    def _match(self, taker: Order, bound: int, events: list[Event]) -> None:
        """Trade ``taker`` against the opposite side while prices are within ``bound``."""
        if taker.side is BUY:
            levels, heap, sign = self._asks, self._ask_heap, 1
        else:
            levels, heap, sign = self._bids, self._bid_heap, -1
        key_bound = sign * bound
        orders = self._orders
        stp = self.stp_mode
        append = events.append
        tid = taker.order_id
        tacct = taker.account_id
        tside = taker.side
        tl = taker.leaves
        filled = 0
        while tl and heap:
            key = heap[0]
            if key > key_bound:
                break
            price = sign * key
            level = levels.get(price)
            if level is None:  # stale key
                heappop(heap)
                continue
            q = level.orders
            removed = 0
            filled_before = filled
            while True:
                maker = q[0]
                ml = maker.leaves
                if not ml:  # dead (cancelled) entry
                    q.popleft()
                    continue
                if maker.account_id == tacct:
                    if stp is not CANCEL_NEWEST:  # CANCEL_OLDEST / CANCEL_BOTH: the maker goes
                        q.popleft()
                        del orders[maker.order_id]
                        maker.leaves = 0
                        level.count -= 1
                        removed += ml
                        append(Cancelled(maker.order_id, maker.account_id, CancelReason.SELF_TRADE, ml))
                    if stp is not CANCEL_OLDEST:  # CANCEL_NEWEST / CANCEL_BOTH: the taker goes
                        append(Cancelled(tid, tacct, CancelReason.SELF_TRADE, tl))
                        tl = 0
                        break
                    if not level.count:
                        break
                    continue
                qty = ml if ml < tl else tl
                ml -= qty
                tl -= qty
                filled += qty
                removed += qty
                maker.leaves = ml
                maker.filled += qty
                append(Fill(maker.order_id, maker.account_id, tid, tacct, tside, price, qty, ml, tl))
                if not ml:
                    q.popleft()
                    del orders[maker.order_id]
                    level.count -= 1
                    if not level.count:
                        break
                if not tl:
                    break
            level.qty -= removed
            if filled != filled_before:
                self.last_trade_price = price
                if price > self._hi:
                    self._hi = price
                if price < self._lo:
                    self._lo = price
            if not level.count:
                del levels[price]
                heappop(heap)
        taker.leaves = tl
        taker.filled += filled

    def _fok_fillable(self, order: Order) -> bool:
        """Would ``order`` fill entirely right now (self-trade prevention included)?"""
        need = order.leaves
        bound = order.limit if order.type is LIMIT else order.collar
        account = order.account_id
        skip_own = self.stp_mode is CANCEL_OLDEST
        if order.side is BUY:
            levels = self._asks
            prices = sorted(p for p in levels if p <= bound)
        else:
            levels = self._bids
            prices = sorted((p for p in levels if p >= bound), reverse=True)
        for price in prices:
            for maker in levels[price].orders:
                if not maker.leaves:
                    continue
                if maker.account_id == account:
                    if skip_own:
                        continue
                    return False
                need -= maker.leaves
                if need <= 0:
                    return True
        return False

    # ------------------------------------------------------------------ stops

    def _add_stop(self, order: Order, events: list[Event]) -> None:
        """A new pending stop: trigger it now if the last trade already reached it."""
        last = self.last_trade_price
        if last is not None and (last >= order.stop if order.side is BUY else last <= order.stop):
            self._trigger(order, events, last)
        else:
            self._park_stop(order)

    def _park_stop(self, order: Order) -> None:
        self._orders[order.order_id] = order
        if order.side is BUY:
            heappush(self._buy_stops, (order.stop, order.seq, order))
        else:
            heappush(self._sell_stops, (-order.stop, order.seq, order))
        self._pending_stops += 1

    def _run_stops(self, events: list[Event]) -> None:
        """Trigger the stops elected by the trades since the last look, in arrival
        order, then those elected by their own trades, until none is elected."""
        if not self._pending_stops:
            self._hi, self._lo = _NO_HIGH, _NO_LOW
            return
        while self._hi != _NO_HIGH:
            hi, lo = self._hi, self._lo
            self._hi, self._lo = _NO_HIGH, _NO_LOW
            elected = []
            heap = self._buy_stops
            while heap and heap[0][0] <= hi:
                order = heappop(heap)[2]
                if order.leaves:
                    elected.append(order)
            heap = self._sell_stops
            while heap and -heap[0][0] >= lo:
                order = heappop(heap)[2]
                if order.leaves:
                    elected.append(order)
            elected.sort(key=_by_seq)
            for order in elected:
                del self._orders[order.order_id]
                self._pending_stops -= 1
                self._trigger(order, events, hi if order.side is BUY else lo)

    def _trigger(self, order: Order, events: list[Event], at: int) -> None:
        """A stop becomes a MARKET (STOP) or LIMIT (STOP_LIMIT) order and is executed; `at` is
        the trade price that elected it (at or through its stop).

        A sell STOP elected by a trade below its stop (the market gapped through it) keeps its
        collar's distance below that trade, not below the stop: a stop-loss is for a falling
        market, and the collar below a stop of 405 (384.75) found no bid after a trade at 370
        while 370 was bid (round 14 B). A sell holds shares, so its collar is price protection
        only. A buy STOP keeps its collar: its hold (stop × (1 + collar) × quantity) pays for
        no more."""
        if order.type is STOP and order.side is SELL and at < order.stop:
            order.collar = max(1, order.collar * at // order.stop)
        events.append(Triggered(order.order_id, order.account_id, order.stop, order.collar))
        order.type = MARKET if order.type is STOP else LIMIT
        order.stop = None
        if order.tif is FOK and not self._fok_fillable(order):
            events.append(Cancelled(order.order_id, order.account_id, CancelReason.FOK_NOT_FILLABLE, order.leaves))
            order.leaves = 0
            return
        self._execute(order, events)

    # ------------------------------------------------------------------ book keeping

    def _rest(self, order: Order) -> None:
        price = order.limit
        if order.side is BUY:
            levels, heap, key = self._bids, self._bid_heap, -price
        else:
            levels, heap, key = self._asks, self._ask_heap, price
        level = levels.get(price)
        if level is None:
            level = levels[price] = _Level()
            heappush(heap, key)
        level.orders.append(order)
        level.qty += order.leaves
        level.count += 1
        self._orders[order.order_id] = order

    def _remove(self, order: Order) -> None:
        """Take a live order (already popped from ``_orders``) out of the book; it becomes dead."""
        if order.type is STOP or order.type is STOP_LIMIT:
            order.leaves = 0
            self._pending_stops -= 1
            live = self._pending_stops
            if len(self._buy_stops) + len(self._sell_stops) > 2 * live + 64:
                for heap in (self._buy_stops, self._sell_stops):
                    heap[:] = [entry for entry in heap if entry[2].leaves]
                    heapify(heap)
            return
        price = order.limit
        if order.side is BUY:
            levels, heap, sign = self._bids, self._bid_heap, -1
        else:
            levels, heap, sign = self._asks, self._ask_heap, 1
        level = levels[price]
        level.count -= 1
        level.qty -= order.leaves
        order.leaves = 0
        if not level.count:
            del levels[price]
            if len(heap) > 2 * len(levels) + 64:
                heap[:] = [sign * p for p in levels]
                heapify(heap)
            return
        q = level.orders
        while not q[0].leaves:
            q.popleft()
        if len(q) > 2 * level.count + 16:
            level.orders = deque(o for o in q if o.leaves)
