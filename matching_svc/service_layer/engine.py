"""The engine of one symbol: EngineCommand in, Executions and MarketDataEvents out.

``SymbolEngine.apply(seq, time_ns, command)`` is a deterministic function of the engine's
state and its arguments: no clock, no randomness, no I/O. Everything it emits is named after
the input it came from (``<SYMBOL>:<input seq>:<index>`` for executions,
``<SYMBOL>:md:<md seq>`` for market data), so processing the same input again, after a crash
or by a second engine, yields byte-identical messages with the same ids.

Repeated commands (the same ``command_id`` published twice, e.g. by order_svc's outbox relay
after a crash, outside JetStream's duplicate window) are dropped: the engine remembers the
last ``dedupe_capacity`` command ids in arrival order (a FIFO, so the set is bounded and its
content is a function of the input sequence), and the set is part of the snapshot.

Every execution goes to the journal (the EXECUTIONS stream) except an ACCEPTED: an acceptance
changes nothing for anyone (the order was NEW, its hold in place, before the engine saw it),
so it is a notice rather than a record (``journaled``); the runner sends it with core NATS on
``<ns>.accepted.<SYMBOL>``, stored nowhere. Its id keeps its place in the input's numbering.
"""
from __future__ import annotations

import functools
import hashlib
import json
import zlib
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal

from matching_svc.domain import (
    Accepted,
    Cancelled,
    Event,
    Expired,
    Fill,
    Order,
    OrderBook,
    OrderType,
    Rejected,
    RejectReason,
    Replaced,
    Side,
    TimeInForce,
    Triggered,
    from_ticks,
    to_ticks,
)
from meshkit import calendar
from meshkit.money import fmt_price
from stockmesh.common.v1 import common_pb2
from stockmesh.matching.v1 import matching_pb2 as pb
from stockmesh.matching.v1.price_level_pb2 import PriceLevel

SNAPSHOT_FORMAT = 1
MD_DEPTH = 10
DEFAULT_DEDUPE_CAPACITY = 100_000

_SIDE = {common_pb2.SIDE_BUY: Side.BUY, common_pb2.SIDE_SELL: Side.SELL}
_SIDE_PB = {Side.BUY: common_pb2.SIDE_BUY, Side.SELL: common_pb2.SIDE_SELL}
_TYPE = {common_pb2.ORDER_TYPE_MARKET: OrderType.MARKET, common_pb2.ORDER_TYPE_LIMIT: OrderType.LIMIT,
         common_pb2.ORDER_TYPE_STOP: OrderType.STOP, common_pb2.ORDER_TYPE_STOP_LIMIT: OrderType.STOP_LIMIT}
_TIF = {common_pb2.TIME_IN_FORCE_DAY: TimeInForce.DAY, common_pb2.TIME_IN_FORCE_GTC: TimeInForce.GTC,
        common_pb2.TIME_IN_FORCE_IOC: TimeInForce.IOC, common_pb2.TIME_IN_FORCE_FOK: TimeInForce.FOK}

E = pb.ExecutionType
# Executions that are notices, not journal entries: see the module's docstring.
NOTICES = frozenset({E.EXECUTION_TYPE_ACCEPTED})


def journaled(ex: pb.Execution) -> bool:
    """Whether the execution belongs in the journal (the EXECUTIONS stream) or is a notice."""
    return ex.type not in NOTICES


class BadPrice(ValueError):
    pass


def price_ticks(text: str) -> int | None:
    """A wire price ("187.25") in ticks; "" is None. Raises BadPrice for anything else."""
    if not text:
        return None
    try:
        ticks = to_ticks(Decimal(text))
    except (ArithmeticError, ValueError, TypeError) as exc:  # decimal.Overflow too: "1e999999999"
        raise BadPrice(text) from exc
    if ticks <= 0:
        raise BadPrice(text)
    return ticks


_PRICE_TEXT: dict[int, str] = {}


def price_text(ticks: int | None) -> str:
    """Ticks as a wire price; memoised (a book trades around few prices, and the formatting
    of Decimal is a large share of the cost of a market-data event)."""
    if ticks is None:
        return ""
    text = _PRICE_TEXT.get(ticks)
    if text is None:
        if len(_PRICE_TEXT) > 100_000:
            _PRICE_TEXT.clear()
        text = _PRICE_TEXT[ticks] = fmt_price(from_ticks(ticks))
    return text


@dataclass
class Output:
    """What one input produced, in order."""

    executions: list[pb.Execution] = field(default_factory=list)
    market_data: list[pb.MarketDataEvent] = field(default_factory=list)
    duplicate: bool = False


class SymbolEngine:
    """The single writer of one symbol's book. Not thread-safe, by design."""

    def __init__(self, symbol: str, *, dedupe_capacity: int = DEFAULT_DEDUPE_CAPACITY,
                 book: OrderBook | None = None) -> None:
        self.symbol = symbol
        self.book = book if book is not None else OrderBook(symbol)
        self.last_seq = 0  # stream sequence of the last input applied
        self.md_seq = 0  # sequence of the last MarketDataEvent emitted
        self.volume = 0  # shares traded this session
        # Time of the last input's events (ns): no event is stamped earlier than an event before it.
        self.last_time_ns = 0
        self.last_trade_ns = 0  # time of the last trade's events (ns)
        # The latest trading day (YYYY-MM-DD) closed by a SessionClose: a close of it or of an
        # earlier day (a repeat, or a missed close made late) expires nothing more.
        self.closed_day = ""
        # The time of that close's input (ns): a DAY order of the closed day accepted before it
        # and handed to the engine after it expires on arrival (new_order).
        self.closed_at_ns = 0
        self.dedupe_capacity = dedupe_capacity
        # command id -> None; a dict keeps insertion order, so it is a bounded FIFO set.
        self._seen: dict[str, None] = {}
        # The reason trading is halted (a Halt input), None while it trades.
        self.halted: str | None = None
        # What the feed last showed (depth to MD_DEPTH levels, halted): an input that leaves it
        # as it is and trades nothing publishes no market data. Always the book's current view
        # between inputs, so a restored engine recomputes it and replays publish the same events.
        self.shown = self._view()

    def _view(self) -> tuple:
        return (*self.book.depth(MD_DEPTH), self.halted is not None)

    # ------------------------------------------------------------------ inputs

    def apply(self, seq: int, time_ns: int, cmd: pb.EngineCommand | None) -> Output:
        """Apply the input at stream sequence ``seq`` (``cmd`` None: undecodable, skipped)."""
        if seq <= self.last_seq:
            raise ValueError(f"{self.symbol}: input {seq} is not after {self.last_seq}")
        self.last_seq = seq
        out = Output()
        if cmd is None:
            return out
        cid = cmd.command_id
        if cid:
            if cid in self._seen:
                out.duplicate = True
                return out
            self._seen[cid] = None
            while len(self._seen) > self.dedupe_capacity:  # a capacity lowered since the snapshot too
                del self._seen[next(iter(self._seen))]
        ctx = _Ctx(self, seq, time_ns, out)
        kind = cmd.WhichOneof("command")
        if kind == "new_order":
            ctx.new_order(cmd.new_order)
        elif kind == "cancel_order":
            ctx.cancel(cmd.cancel_order)
        elif kind == "replace_order":
            ctx.replace(cmd.replace_order)
        elif kind == "session_close":
            ctx.close_session(cmd.session_close)
        elif kind == "halt":
            self.halted = cmd.halt.reason or "halted"
            ctx.changed = True  # the feed tells everyone at once
        elif kind == "resume":
            ctx.changed = self.halted is not None
            self.halted = None
        ctx.market_data()
        self.last_time_ns = ctx.time_ns
        if ctx.session_ended:
            self.volume = 0  # the next session starts from zero
        return out

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict:
        return {
            "format": SNAPSHOT_FORMAT,
            "symbol": self.symbol,
            "last_seq": self.last_seq,
            "md_seq": self.md_seq,
            "volume": self.volume,
            "last_time_ns": self.last_time_ns,
            "last_trade_ns": self.last_trade_ns,
            "closed_day": self.closed_day,
            "closed_at_ns": self.closed_at_ns,
            "dedupe_capacity": self.dedupe_capacity,
            "seen": list(self._seen),
            "book": self.book.snapshot(),
            "halted": self.halted,
        }

    @classmethod
    def restore(cls, data: dict) -> SymbolEngine:
        if data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unsupported engine snapshot format {data.get('format')!r}")
        eng = cls(data["symbol"], dedupe_capacity=data["dedupe_capacity"], book=OrderBook.restore(data["book"]))
        eng.last_seq, eng.md_seq, eng.volume = data["last_seq"], data["md_seq"], data["volume"]
        eng._seen = dict.fromkeys(data["seen"])
        eng.halted = data.get("halted")  # absent from snapshots taken before halts existed
        eng.last_time_ns = data.get("last_time_ns", 0)  # absent from snapshots taken before it was kept
        eng.last_trade_ns = data.get("last_trade_ns", 0)  # ditto
        eng.closed_day = data.get("closed_day", "")  # ditto
        eng.closed_at_ns = data.get("closed_at_ns", 0)  # ditto
        eng.shown = eng._view()
        return eng

    def to_bytes(self) -> bytes:
        # Level 1: a full id FIFO (100,000 ids) compresses in ~50 ms instead of ~190 at level 6,
        # for 4 % more bytes (the ids barely compress); snapshots are taken every minute.
        return zlib.compress(json.dumps(self.snapshot(), separators=(",", ":")).encode(), 1)

    @classmethod
    def from_bytes(cls, blob: bytes) -> SymbolEngine:
        return cls.restore(json.loads(zlib.decompress(blob)))

    def state_hash(self) -> str:
        """Hash of everything the engine keeps (book, sequences, volume, seen ids)."""
        canonical = json.dumps(self.snapshot(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    # ------------------------------------------------------------------ queries

    def depth(self, levels: int) -> tuple[list[PriceLevel], list[PriceLevel]]:
        bids, asks = self.book.depth(levels)
        return _levels(bids), _levels(asks)


def _trading_day(time_ns: int) -> str:
    """The trading day (YYYY-MM-DD, New York) of a moment in ns since the epoch."""
    return _trading_day_of_second(time_ns // 1_000_000_000)


@functools.lru_cache(maxsize=256)  # the orders of one second share it
def _trading_day_of_second(second: int) -> str:
    return calendar.trading_day(datetime.fromtimestamp(second, timezone.utc)).isoformat()


def _is_day(text: str) -> bool:
    try:
        return len(text) == 10 and date.fromisoformat(text) is not None
    except ValueError:
        return False


def _levels(rows: list[tuple[int, int, int]]) -> list[PriceLevel]:
    return [PriceLevel(price=price_text(p), quantity=q, order_count=n) for p, q, n in rows]


class _Ctx:
    """Turns the book's events for one input into Executions and market data."""

    def __init__(self, engine: SymbolEngine, seq: int, time_ns: int, out: Output) -> None:
        self.engine, self.seq, self.out = engine, seq, out
        self.stream_ns = time_ns  # when JetStream stored the input (NATS's clock)
        self.stamp(time_ns)
        self.changed = False
        self.always = False  # publish market data even if what the feed shows is unchanged
        self.session_ended = False  # the session's volume starts again from zero after this input
        self.trades: list[tuple[int, int]] = []

    def stamp(self, time_ns: int) -> None:
        """The time of this input's events: `time_ns`, or the last input's if that is later
        (order_svc's replicas stamp accepted_at on their own clocks, and the stream's order is
        not theirs), so the events of one symbol never go back in time as their sequence rises.
        A caller with a time from another clock than the stream's caps it at the stream's."""
        self.time_ns = max(time_ns, self.engine.last_time_ns)
        self.secs, self.nanos = divmod(self.time_ns, 1_000_000_000)

    # -- commands

    def new_order(self, no: pb.NewOrder) -> None:
        accepted_ns = self.time_ns
        if no.accepted_at.seconds or no.accepted_at.nanos:
            accepted_ns = no.accepted_at.seconds * 1_000_000_000 + no.accepted_at.nanos
            # Never later than the input was stored: a replica whose clock runs ahead would
            # otherwise carry every later event of the symbol into its future (round 17).
            self.stamp(min(accepted_ns, self.stream_ns))
        side, otype, tif = _SIDE.get(no.side), _TYPE.get(no.type), _TIF.get(no.time_in_force)
        sides = {no.order_id: side}
        try:
            limit = price_ticks(no.limit_price) if otype in (OrderType.LIMIT, OrderType.STOP_LIMIT) else None
            stop = price_ticks(no.stop_price) if otype in (OrderType.STOP, OrderType.STOP_LIMIT) else None
            collar = price_ticks(no.collar_price) if otype in (OrderType.MARKET, OrderType.STOP) else None
            day = _trading_day(accepted_ns) if tif is TimeInForce.DAY else ""
        except (BadPrice, OverflowError, ValueError, OSError):  # an accepted_at no calendar has
            side = None
        if side is None or otype is None or tif is None:
            self._execution(E.EXECUTION_TYPE_REJECTED, no.order_id, no.account_id, side=no.side,
                            quantity=no.quantity, reason=RejectReason.INVALID.value)
            return
        if self.engine.book.get_order(no.order_id) is not None:
            # The same order again, past the dedupe window (order_svc picks every order id, a
            # uuid, once): a repeat, not an order to refuse. The book's DUPLICATE_ORDER_ID named
            # the live order itself, and order_svc and the ledger ended it (its hold released)
            # while it went on working here (round 14 review).
            self.out.duplicate = True
            return
        if self.engine.halted is not None:
            self._execution(E.EXECUTION_TYPE_REJECTED, no.order_id, no.account_id, side=no.side,
                            quantity=no.quantity, reason=RejectReason.SYMBOL_HALTED.value)
            return
        order = Order(no.order_id, no.account_id, side, otype, tif, no.quantity, limit, stop, collar,
                      trading_day=day)
        eng = self.engine
        if order.trading_day and order.trading_day <= eng.closed_day and accepted_ns < eng.closed_at_ns:
            # A DAY order accepted before its session's close but handed over after it (the
            # outbox relays in commit order: a placement checked at 15:59:59.9 can commit after
            # the close was queued). Its session is over: it ends as the close ended the others,
            # unmatched; it never rests into the next session (round 14 review).
            self.emit([Accepted(order.order_id, order.account_id),
                       Expired(order.order_id, order.account_id, order.quantity)], sides, order=order)
            return
        self.emit(eng.book.submit(order), sides, order=order)

    def close_session(self, close: pb.SessionClose) -> None:
        """Expire the DAY orders of trading day `day` and earlier ones (all of them when `day`
        is empty or no date). A close of a day closed before, or of an earlier one, expires
        nothing: so a close missed and made late, during the next session, leaves that
        session's DAY orders alone. The session's volume starts again from zero unless the
        book has traded on a later day than `day` (a close made late). The close's time, which
        a DAY order's accepted_at is compared with when it arrives after the close (new_order),
        is when the close was queued (queued_at, on the clock accepted_at is stamped on; round
        17: NATS's clock a second behind order_svc's let such an order rest a whole session),
        else the input's."""
        eng = self.engine
        day = close.trading_day if _is_day(close.trading_day) else ""
        if day and day <= eng.closed_day:
            return
        self.emit(eng.book.expire_day_orders(day or None), {})
        self.changed = self.always = True  # the feed marks the session's end, changed book or not
        if day:
            queued = close.queued_at.seconds * 1_000_000_000 + close.queued_at.nanos
            eng.closed_day, eng.closed_at_ns = day, queued if close.HasField("queued_at") else self.time_ns
        self.session_ended = not day or not eng.last_trade_ns or _trading_day(eng.last_trade_ns) <= day

    def cancel(self, c: pb.CancelOrder) -> None:
        live = self.engine.book.get_order(c.order_id)
        if live is None or live.account_id != c.account_id:
            self.cancel_reject(c.order_id, "", c.account_id, "UNKNOWN_ORDER")
            return
        self.emit(self.engine.book.cancel(c.order_id), {c.order_id: live.side})

    def replace(self, r: pb.ReplaceOrder) -> None:
        live = self.engine.book.get_order(r.order_id)
        if live is None or live.account_id != r.account_id:
            self.cancel_reject(r.order_id, r.new_order_id, r.account_id, "UNKNOWN_ORDER")
            return
        if self.engine.halted is not None:
            self.cancel_reject(r.order_id, r.new_order_id, r.account_id, RejectReason.SYMBOL_HALTED.value)
            return
        try:
            limit, stop = price_ticks(r.limit_price), price_ticks(r.stop_price)
            collar = price_ticks(r.collar_price)
        except BadPrice:
            self.cancel_reject(r.order_id, r.new_order_id, r.account_id, "INVALID")
            return
        if live.type is OrderType.LIMIT:
            # A STOP_LIMIT that triggered is a LIMIT order in the book, which order_svc (it
            # replaces a STOP_LIMIT) still sends a stop price for: that stop has done its work.
            stop = None
        sides = {r.order_id: live.side, r.new_order_id: live.side}
        events = self.engine.book.replace(r.order_id, r.new_order_id, r.quantity, limit, stop, collar)
        self.emit(events, sides)

    # -- events

    def _execution(self, etype: int, order_id: str, account_id: str, **fields) -> pb.Execution:
        out = self.out.executions
        ex = pb.Execution(
            execution_id=f"{self.engine.symbol}:{self.seq}:{len(out)}", symbol=self.engine.symbol,
            type=etype, order_id=order_id, account_id=account_id or "", input_sequence=self.seq, **fields)
        ex.time.seconds, ex.time.nanos = self.secs, self.nanos
        out.append(ex)
        return ex

    def cancel_reject(self, order_id: str, new_order_id: str, account_id: str, reason: str) -> None:
        self._execution(E.EXECUTION_TYPE_CANCEL_REJECTED, order_id, account_id, new_order_id=new_order_id,
                        reason=reason)

    def emit(self, events: list[Event], sides: dict[str, Side | None], order: Order | None = None) -> None:
        def side_of(oid: str) -> int:
            s = sides.get(oid)
            return _SIDE_PB[s] if s is not None else common_pb2.SIDE_UNSPECIFIED

        for ev in events:
            t = type(ev)
            if t is Fill:
                self.changed = True
                self.trades.append((ev.price, ev.quantity))
                self._execution(
                    E.EXECUTION_TYPE_FILL, ev.taker_order_id, ev.taker_account_id, side=_SIDE_PB[ev.taker_side],
                    counter_order_id=ev.maker_order_id, counter_account_id=ev.maker_account_id,
                    price=price_text(ev.price), quantity=ev.quantity, leaves_quantity=ev.taker_leaves,
                    counter_leaves_quantity=ev.maker_leaves)
            elif t is Accepted:
                self.changed = True
                qty = order.quantity if order is not None and order.order_id == ev.order_id else 0
                limit = order.limit if order is not None and order.order_id == ev.order_id else None
                self._execution(E.EXECUTION_TYPE_ACCEPTED, ev.order_id, ev.account_id, side=side_of(ev.order_id),
                                price=price_text(limit), quantity=qty, leaves_quantity=qty)
            elif t is Cancelled:
                self.changed = True
                self._execution(E.EXECUTION_TYPE_CANCELLED, ev.order_id, ev.account_id, side=side_of(ev.order_id),
                                quantity=ev.quantity, reason=ev.reason.value)
            elif t is Expired:
                self._execution(E.EXECUTION_TYPE_EXPIRED, ev.order_id, ev.account_id, side=side_of(ev.order_id),
                                quantity=ev.quantity, reason="SESSION_CLOSE")
            elif t is Rejected:
                if ev.orig_order_id is not None:  # a replace the book refused
                    self.cancel_reject(ev.orig_order_id, ev.order_id, ev.account_id or "", ev.reason.value)
                elif order is None:  # a cancel the book refused
                    self.cancel_reject(ev.order_id, "", ev.account_id or "", ev.reason.value)
                else:
                    self._execution(E.EXECUTION_TYPE_REJECTED, ev.order_id, ev.account_id or order.account_id,
                                    side=side_of(ev.order_id), quantity=order.quantity, reason=ev.reason.value)
            elif t is Replaced:
                self.changed = True
                self._execution(E.EXECUTION_TYPE_REPLACED, ev.old_order_id, ev.account_id,
                                side=side_of(ev.old_order_id), new_order_id=ev.new_order_id,
                                kept_priority=ev.kept_priority, price=price_text(ev.limit), quantity=ev.quantity,
                                leaves_quantity=ev.leaves)
            elif t is Triggered:
                self.changed = True
                self._execution(E.EXECUTION_TYPE_TRIGGERED, ev.order_id, ev.account_id, side=side_of(ev.order_id),
                                price=price_text(ev.stop))

    # -- market data

    def market_data(self) -> None:
        if not self.changed:
            return
        eng = self.engine
        if eng.volume and _trading_day(self.time_ns) != _trading_day(eng.last_trade_ns):
            # A later trading day: its volume starts from zero, also where no session close
            # comes to reset it (an always-open market; acceptance round 9: a quote's volume
            # went on from the day before). From the input's time alone: replays agree.
            eng.volume = 0
        book = eng.book
        view = eng._view()
        if not self.trades and not self.always and view == eng.shown:
            return  # e.g. an order resting below the levels the feed shows: nothing to tell
        eng.shown = view
        bids, asks, _ = view
        bid_levels, ask_levels = _levels(bids), _levels(asks)
        common = {
            "symbol": eng.symbol,
            "bid_price": price_text(bids[0][0]) if bids else "",
            "bid_size": bids[0][1] if bids else 0,
            "ask_price": price_text(asks[0][0]) if asks else "",
            "ask_size": asks[0][1] if asks else 0,
            "bids": bid_levels,
            "asks": ask_levels,
            "halted": eng.halted is not None,
        }
        # Before this input's trades: the price before the first of them (or the book's last).
        last = self.trades[0][0] if self.trades else book.last_trade_price
        for price, qty in self.trades or [(None, 0)]:
            eng.md_seq += 1
            if price is not None:
                eng.volume += qty
                eng.last_trade_ns = self.time_ns
                last = price
            ev = pb.MarketDataEvent(sequence=eng.md_seq, trade_price=price_text(price), trade_quantity=qty,
                                    last_price=price_text(last), volume=eng.volume, **common)
            ev.time.seconds, ev.time.nanos = self.secs, self.nanos
            self.out.market_data.append(ev)

