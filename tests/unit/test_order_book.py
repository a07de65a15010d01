"""Classic matching scenarios for the pure order book (matching_svc.domain).

Each scenario runs some set-up operations, then one action, and checks the
action's events (in a compact form) and the whole depth afterwards. Prices are
ticks; small numbers keep the table readable.
"""

from __future__ import annotations

import copy
import json
import random
from decimal import Decimal

import pytest

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
    from_ticks,
    to_ticks,
)

BUY, SELL = Side.BUY, Side.SELL
GTC, DAY, IOC, FOK = TimeInForce.GTC, TimeInForce.DAY, TimeInForce.IOC, TimeInForce.FOK


# ---------------------------------------------------------------- order builders
# The account defaults to one per order id, so self-trade prevention only
# applies where a scenario names an account.


def limit(oid, side, qty, px, tif=GTC, acct=None):
    return Order(oid, acct or f"acct-{oid}", side, OrderType.LIMIT, tif, qty, limit=px)


def market(oid, side, qty, collar, tif=IOC, acct=None):
    return Order(oid, acct or f"acct-{oid}", side, OrderType.MARKET, tif, qty, collar=collar)


def stop(oid, side, qty, stop_px, collar, tif=GTC, acct=None):
    return Order(oid, acct or f"acct-{oid}", side, OrderType.STOP, tif, qty, stop=stop_px, collar=collar)


def stop_limit(oid, side, qty, stop_px, px, tif=GTC, acct=None):
    return Order(oid, acct or f"acct-{oid}", side, OrderType.STOP_LIMIT, tif, qty, limit=px, stop=stop_px)


def cancel(oid):
    return ("cancel", oid)


def replace(oid, new_oid, qty, px=None, stop_px=None):
    return ("replace", oid, new_oid, qty, px, stop_px)


EXPIRE = ("expire",)


def apply(book: OrderBook, op) -> list:
    if isinstance(op, Order):
        return book.submit(op)
    kind, *args = op
    if kind == "cancel":
        return book.cancel(*args)
    if kind == "replace":
        return book.replace(*args)
    assert kind == "expire"
    return book.expire_day_orders()


def compact(event) -> tuple:
    """A short, readable form of an event for the table."""
    match event:
        case Accepted(order_id=oid):
            return ("acc", oid)
        case Fill(maker_order_id=maker, taker_order_id=taker, price=px, quantity=qty):
            return ("fill", maker, taker, px, qty)
        case Cancelled(order_id=oid, reason=reason, quantity=qty):
            return ("cxl", oid, reason.value, qty)
        case Expired(order_id=oid, quantity=qty):
            return ("exp", oid, qty)
        case Rejected(order_id=oid, reason=reason):
            return ("rej", oid, reason.value)
        case Replaced(old_order_id=old, new_order_id=new, kept_priority=kept, leaves=leaves):
            return ("repl", old, new, kept, leaves)
        case Triggered(order_id=oid):
            return ("trig", oid)
    raise AssertionError(f"unknown event {event!r}")


# ---------------------------------------------------------------- the table

def scenario(setup, action, events, depth, id, stp=StpMode.CANCEL_NEWEST):
    return pytest.param(setup, action, events, depth, stp, id=id)


SCENARIOS = [
    scenario(
        [limit("s1", SELL, 10, 101), limit("s2", SELL, 10, 100), limit("s3", SELL, 10, 100)],
        limit("b1", BUY, 25, 101),
        [("acc", "b1"), ("fill", "s2", "b1", 100, 10), ("fill", "s3", "b1", 100, 10), ("fill", "s1", "b1", 101, 5)],
        ([], [(101, 5, 1)]),
        id="price-time priority: better price first, then earlier order",
    ),
    scenario(
        [limit("b1", BUY, 10, 100), limit("b2", BUY, 10, 100)],
        limit("s1", SELL, 15, 90),
        [("acc", "s1"), ("fill", "b1", "s1", 100, 10), ("fill", "b2", "s1", 100, 5)],
        ([(100, 5, 1)], []),
        id="sell taker trades at the maker's price, not its own limit",
    ),
    scenario(
        [limit("s1", SELL, 10, 100), limit("s2", SELL, 10, 101)],
        limit("b1", BUY, 30, 101),
        [("acc", "b1"), ("fill", "s1", "b1", 100, 10), ("fill", "s2", "b1", 101, 10)],
        ([(101, 10, 1)], []),
        id="partial fills across levels, remainder rests",
    ),
    scenario(
        [limit("s1", SELL, 10, 100), limit("s2", SELL, 10, 102)],
        limit("b1", BUY, 15, 101, tif=IOC),
        [("acc", "b1"), ("fill", "s1", "b1", 100, 10), ("cxl", "b1", "IOC_REMAINDER", 5)],
        ([], [(102, 10, 1)]),
        id="IOC remainder cancelled",
    ),
    scenario(
        [limit("s1", SELL, 10, 102)],
        limit("b1", BUY, 15, 101, tif=IOC),
        [("acc", "b1"), ("cxl", "b1", "IOC_REMAINDER", 15)],
        ([], [(102, 10, 1)]),
        id="IOC that cannot trade is cancelled whole",
    ),
    scenario(
        [limit("s1", SELL, 10, 100), limit("s2", SELL, 10, 101)],
        limit("b1", BUY, 20, 101, tif=FOK),
        [("acc", "b1"), ("fill", "s1", "b1", 100, 10), ("fill", "s2", "b1", 101, 10)],
        ([], []),
        id="FOK fillable: fills entirely",
    ),
    scenario(
        [limit("s1", SELL, 10, 100), limit("s2", SELL, 10, 101)],
        limit("b1", BUY, 21, 101, tif=FOK),
        [("rej", "b1", "FOK_NOT_FILLABLE")],
        ([], [(100, 10, 1), (101, 10, 1)]),
        id="FOK not fillable: rejected, book untouched",
    ),
    scenario(
        [limit("s1", SELL, 10, 100), limit("s2", SELL, 10, 101)],
        limit("b1", BUY, 15, 100, tif=FOK),
        [("rej", "b1", "FOK_NOT_FILLABLE")],
        ([], [(100, 10, 1), (101, 10, 1)]),
        id="FOK not fillable within its limit",
    ),
    scenario(
        [limit("s1", SELL, 10, 100), limit("s2", SELL, 10, 101), limit("s3", SELL, 10, 105)],
        market("m1", BUY, 30, collar=102),
        [
            ("acc", "m1"),
            ("fill", "s1", "m1", 100, 10),
            ("fill", "s2", "m1", 101, 10),
            ("cxl", "m1", "MARKET_REMAINDER", 10),
        ],
        ([], [(105, 10, 1)]),
        id="market buy stops at its collar, remainder cancelled",
    ),
    scenario(
        [limit("b1", BUY, 10, 100), limit("b2", BUY, 10, 97)],
        market("m1", SELL, 15, collar=98, tif=DAY),
        [("acc", "m1"), ("fill", "b1", "m1", 100, 10), ("cxl", "m1", "MARKET_REMAINDER", 5)],
        ([(97, 10, 1)], []),
        id="market sell never trades below its collar",
    ),
    scenario(
        [],
        market("m1", BUY, 10, collar=100),
        [("acc", "m1"), ("cxl", "m1", "NO_LIQUIDITY", 10)],
        ([], []),
        id="market order on an empty book: no liquidity",
    ),
    scenario(
        [limit("s1", SELL, 10, 103)],
        market("m1", BUY, 10, collar=102),
        [("acc", "m1"), ("cxl", "m1", "NO_LIQUIDITY", 10)],
        ([], [(103, 10, 1)]),
        id="market order with nothing inside its collar: no liquidity",
    ),
    scenario(
        [limit("s1", SELL, 10, 100)],
        market("m1", BUY, 15, collar=110, tif=FOK),
        [("rej", "m1", "FOK_NOT_FILLABLE")],
        ([], [(100, 10, 1)]),
        id="market FOK not fillable: rejected",
    ),
    scenario(
        [
            limit("s1", SELL, 5, 100),
            limit("s2", SELL, 5, 101),
            limit("s3", SELL, 10, 102),
            stop("st", BUY, 5, stop_px=101, collar=110),
        ],
        limit("b1", BUY, 10, 101),
        [
            ("acc", "b1"),
            ("fill", "s1", "b1", 100, 5),
            ("fill", "s2", "b1", 101, 5),
            ("trig", "st"),
            ("fill", "s3", "st", 102, 5),
        ],
        ([], [(102, 5, 1)]),
        id="buy stop triggers when last >= stop and trades as market",
    ),
    scenario(
        [
            limit("b1", BUY, 5, 100),
            limit("b2", BUY, 5, 99),
            stop_limit("sl", SELL, 10, stop_px=100, px=99),
        ],
        limit("s1", SELL, 5, 100),
        [
            ("acc", "s1"),
            ("fill", "b1", "s1", 100, 5),
            ("trig", "sl"),
            ("fill", "b2", "sl", 99, 5),
        ],
        ([], [(99, 5, 1)]),
        id="sell stop-limit triggers when last <= stop, remainder rests at its limit",
    ),
    scenario(
        [
            limit("s1", SELL, 5, 100),
            limit("s2", SELL, 5, 101),
            limit("s3", SELL, 5, 102),
            limit("s4", SELL, 5, 103),
            stop("stB", BUY, 5, stop_px=102, collar=200),
            stop("stA", BUY, 5, stop_px=101, collar=200),
        ],
        limit("b1", BUY, 10, 101),
        [
            ("acc", "b1"),
            ("fill", "s1", "b1", 100, 5),
            ("fill", "s2", "b1", 101, 5),
            ("trig", "stA"),
            ("fill", "s3", "stA", 102, 5),
            ("trig", "stB"),
            ("fill", "s4", "stB", 103, 5),
        ],
        ([], []),
        id="stop cascade: a triggered stop's fill triggers the next",
    ),
    scenario(
        [
            limit("s1", SELL, 5, 100),
            limit("s2", SELL, 20, 102),
            stop("first", BUY, 5, stop_px=100, collar=200),
            stop("second", BUY, 5, stop_px=95, collar=200),
        ],
        limit("b1", BUY, 5, 100),
        [
            ("acc", "b1"),
            ("fill", "s1", "b1", 100, 5),
            ("trig", "first"),
            ("fill", "s2", "first", 102, 5),
            ("trig", "second"),
            ("fill", "s2", "second", 102, 5),
        ],
        ([], [(102, 10, 1)]),
        id="stops elected together trigger in arrival order",
    ),
    # Round 14 B: a sell stop-loss at 405 (collar 384.75, 5 % below) was cancelled NO_LIQUIDITY
    # after the market gapped to 370, with 370 bid. Its collar keeps its distance below the
    # trade that elected it instead (405 -> 370: 351.50); a buy stop keeps its own (its hold).
    scenario(
        [limit("b1", BUY, 5, 370), limit("b2", BUY, 10, 370), limit("b3", BUY, 10, 340),
         stop("sl", SELL, 10, stop_px=405, collar=384)],
        limit("s1", SELL, 5, 370),
        [("acc", "s1"), ("fill", "b1", "s1", 370, 5), ("trig", "sl"), ("fill", "b2", "sl", 370, 10)],
        ([(340, 10, 1)], []),
        id="a sell stop gapped through trades within its collar below the electing trade",
    ),
    scenario(
        [limit("s1", SELL, 5, 370), limit("b1", BUY, 5, 370), limit("b2", BUY, 10, 360), limit("b3", BUY, 10, 300)],
        stop("sl", SELL, 20, stop_px=405, collar=384),
        [("acc", "sl"), ("trig", "sl"), ("fill", "b2", "sl", 360, 10), ("cxl", "sl", "MARKET_REMAINDER", 10)],
        ([(300, 10, 1)], []),
        id="a sell stop through the market on arrival: its collar below the last trade, not the stop",
    ),
    scenario(
        [limit("b1", BUY, 5, 100), limit("s1", SELL, 5, 100), limit("s2", SELL, 10, 120)],
        stop("st", BUY, 5, stop_px=90, collar=94),
        [("acc", "st"), ("trig", "st"), ("cxl", "st", "NO_LIQUIDITY", 5)],
        ([], [(120, 10, 1)]),
        id="a buy stop keeps its collar, which its hold pays for",
    ),
    scenario(
        [limit("s1", SELL, 5, 100), limit("b1", BUY, 5, 100), limit("s2", SELL, 5, 101)],
        stop("st", BUY, 5, stop_px=99, collar=110),
        [("acc", "st"), ("trig", "st"), ("fill", "s2", "st", 101, 5)],
        ([], []),
        id="stop already reached by the last trade triggers on arrival",
    ),
    scenario(
        [],
        stop("st", BUY, 5, stop_px=99, collar=110),
        [("acc", "st")],
        ([], []),
        id="stop waits off-book while there is no last trade",
    ),
    scenario(
        [limit("s0", SELL, 5, 100), limit("s1", SELL, 10, 100, acct="X"), limit("s2", SELL, 10, 100)],
        limit("b1", BUY, 15, 100, acct="X"),
        [("acc", "b1"), ("fill", "s0", "b1", 100, 5), ("cxl", "b1", "SELF_TRADE", 10)],
        ([], [(100, 20, 2)]),
        id="self-trade CANCEL_NEWEST: taker remainder cancelled",
    ),
    scenario(
        [limit("s0", SELL, 5, 100), limit("s1", SELL, 10, 100, acct="X"), limit("s2", SELL, 10, 100)],
        limit("b1", BUY, 15, 100, acct="X"),
        [
            ("acc", "b1"),
            ("fill", "s0", "b1", 100, 5),
            ("cxl", "s1", "SELF_TRADE", 10),
            ("fill", "s2", "b1", 100, 10),
        ],
        ([], []),
        id="self-trade CANCEL_OLDEST: resting order cancelled, matching goes on",
        stp=StpMode.CANCEL_OLDEST,
    ),
    scenario(
        [limit("s0", SELL, 5, 100), limit("s1", SELL, 10, 100, acct="X"), limit("s2", SELL, 10, 100)],
        limit("b1", BUY, 15, 100, acct="X"),
        [
            ("acc", "b1"),
            ("fill", "s0", "b1", 100, 5),
            ("cxl", "s1", "SELF_TRADE", 10),
            ("cxl", "b1", "SELF_TRADE", 10),
        ],
        ([], [(100, 10, 1)]),
        id="self-trade CANCEL_BOTH: both cancelled",
        stp=StpMode.CANCEL_BOTH,
    ),
    scenario(
        [limit("s1", SELL, 10, 100, acct="X"), limit("s2", SELL, 10, 100)],
        limit("b1", BUY, 10, 100, tif=FOK, acct="X"),
        [("rej", "b1", "FOK_NOT_FILLABLE")],
        ([], [(100, 20, 2)]),
        id="FOK blocked by self-trade prevention is rejected, book untouched",
    ),
    scenario(
        [limit("s1", SELL, 10, 100), limit("s2", SELL, 10, 100), replace("s1", "s1b", 5, px=100)],
        limit("b1", BUY, 10, 100),
        [("acc", "b1"), ("fill", "s1b", "b1", 100, 5), ("fill", "s2", "b1", 100, 5)],
        ([], [(100, 5, 1)]),
        id="replace: quantity decrease keeps time priority",
    ),
    scenario(
        [limit("s1", SELL, 10, 100), limit("s2", SELL, 10, 100), replace("s1", "s1b", 15, px=100)],
        limit("b1", BUY, 10, 100),
        [("acc", "b1"), ("fill", "s2", "b1", 100, 10)],
        ([], [(100, 15, 1)]),
        id="replace: quantity increase loses time priority",
    ),
    scenario(
        [limit("s1", SELL, 10, 100), limit("s2", SELL, 10, 101), replace("s1", "s1b", 10, px=101)],
        limit("b1", BUY, 10, 101),
        [("acc", "b1"), ("fill", "s2", "b1", 101, 10)],
        ([], [(101, 10, 1)]),
        id="replace: price change goes to the back of the new level",
    ),
    scenario(
        [limit("b1", BUY, 10, 99), limit("s1", SELL, 10, 101)],
        replace("s1", "s1b", 10, px=99),
        [("repl", "s1", "s1b", False, 10), ("fill", "b1", "s1b", 99, 10)],
        ([], []),
        id="replace: a crossing price is matched as a new order",
    ),
    scenario(
        [limit("s1", SELL, 10, 100), limit("b1", BUY, 4, 100)],
        replace("s1", "s1b", 8, px=100),
        [("repl", "s1", "s1b", True, 4)],
        ([], [(100, 4, 1)]),
        id="replace quantity is the new total, what was filled counts",
    ),
    scenario(
        [limit("s1", SELL, 10, 100), limit("b1", BUY, 6, 100)],
        replace("s1", "s1b", 5, px=100),
        [("cxl", "s1", "REPLACED", 4)],
        ([], []),
        id="replace to no more than the filled quantity cancels the rest",
    ),
    scenario(
        [stop("st", BUY, 10, stop_px=105, collar=120)],
        replace("st", "st2", 6, stop_px=105),
        [("repl", "st", "st2", True, 6)],
        ([], []),
        id="replace of a pending stop",
    ),
    scenario(
        [],
        replace("nope", "new", 5, px=100),
        [("rej", "new", "UNKNOWN_ORDER")],
        ([], []),
        id="replace of an unknown order",
    ),
    scenario(
        [limit("s1", SELL, 10, 100), limit("b1", BUY, 10, 100)],
        replace("s1", "s1b", 5, px=100),
        [("rej", "s1b", "UNKNOWN_ORDER")],
        ([], []),
        id="replace of an already filled order",
    ),
    scenario(
        [limit("s1", SELL, 10, 100)],
        replace("s1", "s1b", 5, px=100, stop_px=90),
        [("rej", "s1b", "INVALID")],
        ([], [(100, 10, 1)]),
        id="replace with fields invalid for the order type",
    ),
    scenario(
        [limit("s1", SELL, 10, 100), limit("s2", SELL, 10, 100)],
        cancel("s1"),
        [("cxl", "s1", "USER", 10)],
        ([], [(100, 10, 1)]),
        id="cancel a resting order",
    ),
    scenario(
        [limit("s1", SELL, 10, 100), cancel("s1")],
        cancel("s1"),
        [("rej", "s1", "UNKNOWN_ORDER")],
        ([], []),
        id="cancel twice",
    ),
    scenario(
        [stop("st", SELL, 10, stop_px=90, collar=80)],
        cancel("st"),
        [("cxl", "st", "USER", 10)],
        ([], []),
        id="cancel a pending stop",
    ),
    scenario(
        [
            limit("d1", BUY, 10, 99, tif=DAY),
            limit("g1", BUY, 10, 98),
            stop("d2", SELL, 5, stop_px=90, collar=80, tif=DAY),
            limit("d3", SELL, 7, 101, tif=DAY),
        ],
        EXPIRE,
        [("exp", "d1", 10), ("exp", "d2", 5), ("exp", "d3", 7)],
        ([(98, 10, 1)], []),
        id="DAY orders and DAY stops expire at the close, GTC stays",
    ),
    scenario(
        [limit("s1", SELL, 10, 100)],
        limit("s1", SELL, 5, 101),
        [("rej", "s1", "DUPLICATE_ORDER_ID")],
        ([], [(100, 10, 1)]),
        id="duplicate order id",
    ),
    scenario(
        [limit("s1", SELL, 10, 100), limit("s2", SELL, 10, 100)],
        replace("s1", "s2", 5, px=100),
        [("rej", "s2", "DUPLICATE_ORDER_ID")],
        ([], [(100, 20, 2)]),
        id="replace to a live order id",
    ),
    scenario(
        [],
        Order("x", "a", BUY, OrderType.LIMIT, GTC, 10),
        [("rej", "x", "INVALID")],
        ([], []),
        id="limit order without a limit price",
    ),
    scenario(
        [],
        Order("x", "a", BUY, OrderType.MARKET, IOC, 10),
        [("rej", "x", "INVALID")],
        ([], []),
        id="market order without a collar",
    ),
    scenario(
        [],
        limit("x", BUY, 0, 100),
        [("rej", "x", "INVALID")],
        ([], []),
        id="zero quantity",
    ),
]


@pytest.mark.parametrize(("setup", "action", "expected_events", "expected_depth", "stp"), SCENARIOS)
def test_scenario(setup, action, expected_events, expected_depth, stp):
    book = OrderBook("TEST", stp_mode=stp)
    for op in setup:
        apply(book, op)
    events = apply(book, action)
    assert [compact(e) for e in events] == expected_events
    assert book.depth(100) == expected_depth


# ---------------------------------------------------------------- other behaviour


def test_fill_carries_both_sides_and_leaves():
    book = OrderBook("TEST")
    book.submit(limit("s1", SELL, 10, 100, acct="seller"))
    events = book.submit(limit("b1", BUY, 4, 100, acct="buyer"))
    assert events[1] == Fill(
        maker_order_id="s1",
        maker_account_id="seller",
        taker_order_id="b1",
        taker_account_id="buyer",
        taker_side=BUY,
        price=100,
        quantity=4,
        maker_leaves=6,
        taker_leaves=0,
    )
    assert book.last_trade_price == 100
    assert (book.best_bid(), book.best_ask()) == (None, 100)


def test_best_prices_skip_emptied_levels():
    book = OrderBook("TEST")
    for i, px in enumerate([100, 101, 102]):
        book.submit(limit(f"s{i}", SELL, 1, px))
        book.submit(limit(f"b{i}", BUY, 1, px - 10))
    book.cancel("s0")
    book.cancel("b2")
    assert (book.best_bid(), book.best_ask()) == (91, 101)
    assert book.depth(1) == ([(91, 1, 1)], [(101, 1, 1)])


def _busy_book() -> tuple[OrderBook, list]:
    """A book after a mix of operations, and more operations to apply later."""
    book = OrderBook("TEST", stp_mode=StpMode.CANCEL_OLDEST)
    history = [
        limit("s1", SELL, 10, 101),
        limit("s2", SELL, 10, 101, tif=DAY),
        limit("s3", SELL, 5, 103, acct="X"),
        limit("b1", BUY, 10, 99),
        limit("b2", BUY, 8, 98, tif=DAY),
        stop("st1", BUY, 5, stop_px=102, collar=110),
        stop_limit("st2", SELL, 4, stop_px=99, px=97, tif=DAY),
        limit("b3", BUY, 3, 101),
        replace("s2", "s2b", 6, px=101),
        cancel("b1"),
    ]
    for op in history:
        apply(book, op)
    future = [
        limit("b4", BUY, 20, 103, acct="X"),
        limit("s4", SELL, 9, 98),
        replace("b2", "b2b", 20, px=97),
        EXPIRE,
        limit("s5", SELL, 3, 96),
    ]
    return book, future


def test_snapshot_restore_same_hash_and_same_future():
    book, future = _busy_book()
    snapshot = json.loads(json.dumps(book.snapshot()))  # must survive JSON as is
    restored = OrderBook.restore(snapshot)
    assert restored.state_hash() == book.state_hash()
    assert restored.snapshot() == book.snapshot()
    for op in future:
        # The book takes ownership of a submitted Order: each book gets its own.
        assert apply(restored, copy.copy(op)) == apply(book, copy.copy(op))
        assert restored.state_hash() == book.state_hash()


def test_state_hash_ignores_dict_order_and_tracks_changes():
    book, _ = _busy_book()
    snapshot = book.snapshot()
    reordered = {key: snapshot[key] for key in reversed(list(snapshot))}
    assert OrderBook.restore(reordered).state_hash() == book.state_hash()
    before = book.state_hash()
    book.submit(limit("new", BUY, 1, 50))
    assert book.state_hash() != before


def test_restore_refuses_an_unknown_format():
    with pytest.raises(ValueError):
        OrderBook.restore({**OrderBook("TEST").snapshot(), "format": 99})


def test_ticks_are_exact():
    assert to_ticks(Decimal("187.1234")) == 1_871_234
    assert to_ticks(Decimal("0.0001")) == 1
    assert to_ticks(Decimal("5")) == 50_000
    assert from_ticks(1_871_234) == Decimal("187.1234")
    assert to_ticks(from_ticks(123_456_789)) == 123_456_789
    with pytest.raises(ValueError):
        to_ticks(Decimal("1.00005"))
    with pytest.raises(ValueError):
        to_ticks(Decimal("NaN"))
    with pytest.raises(TypeError):
        to_ticks(1.5)


def test_heavy_cancelling_compacts_without_changing_behaviour():
    """Enough cancels to compact level queues, the level heaps and the stop heaps."""
    rng = random.Random(3)
    book = OrderBook("TEST")
    live = []
    for i in range(600):
        px = 100 - rng.randrange(10)
        book.submit(limit(f"b{i}", BUY, 1 + i % 7, px))
        live.append((f"b{i}", px, 1 + i % 7, i))
    for i in range(300):  # deep levels of one order each, all cancelled again
        book.submit(limit(f"deep{i}", BUY, 1, 80 - i % 70))
    for i in range(300):
        book.cancel(f"deep{i}")
    for i in range(300):
        book.submit(stop(f"st{i}", SELL, 5, stop_px=50 - i % 10, collar=1))
    rng.shuffle(live)
    for oid, *_ in live[:520]:
        assert compact(book.cancel(oid)[0]) == ("cxl", oid, "USER", int(oid[1:]) % 7 + 1)
    for i in range(295):
        book.cancel(f"st{i}")
    remaining = sorted(live[520:], key=lambda o: (-o[1], o[3]))  # price-time priority
    expected_depth: dict[int, list[int]] = {}
    for _, px, qty, _ in remaining:
        expected_depth.setdefault(px, [0, 0])
        expected_depth[px][0] += qty
        expected_depth[px][1] += 1
    assert book.depth(100)[0] == [(px, q, n) for px, (q, n) in sorted(expected_depth.items(), reverse=True)]
    assert len(book) == len(remaining) + 5
    total = sum(qty for _, _, qty, _ in remaining)
    events = book.submit(limit("sweep", SELL, total, 1, tif=IOC))
    assert [(e.maker_order_id, e.price) for e in events if isinstance(e, Fill)] == [
        (oid, px) for oid, px, _, _ in remaining
    ]
