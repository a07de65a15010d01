"""ReplaceOrder's rules in plain Python: what a replacement may change, what it must reserve
on top of the old hold, and the ledger's arithmetic when the engine confirms it."""
from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from hypothesis import given, strategies as st

from ledger_svc.domain.model import HoldResolved, HoldTransfer, TransferStatus
from meshkit.errors import InvalidArgument
from order_svc.domain import model
from order_svc.domain.model import (Order, OrderRequest, OrderType, Side, Status, TimeInForce, check_replaceable,
                                    hold_unit, replacement_request, replacement_reserve)

D = Decimal
NOW = datetime(2024, 1, 2, 15, tzinfo=timezone.utc)


def order(otype=OrderType.LIMIT, side=Side.BUY, qty=10, limit="100.00", stop=None, tif=TimeInForce.GTC,
          status=Status.NEW, filled=0, collar=None) -> Order:
    req = OrderRequest("acct", "c1", "AAPL", side, otype, qty, D(limit) if limit else None, D(stop) if stop else None,
                       tif)
    return Order(uuid.uuid4(), req, status, NOW, NOW, filled_quantity=filled,
                 collar_price=D(collar) if collar else None)


def test_replacement_keeps_side_symbol_type_and_tif():
    old = order(tif=TimeInForce.DAY, side=Side.SELL)
    new = replacement_request(old, "c2", 15, D("101.00"), None)
    assert (new.symbol, new.side, new.type, new.time_in_force, new.quantity, new.limit_price) == (
        "AAPL", Side.SELL, OrderType.LIMIT, TimeInForce.DAY, 15, D("101.00"))
    assert new.client_order_id == "c2"


@pytest.mark.parametrize("status", [Status.FILLED, Status.CANCELLED, Status.EXPIRED, Status.REJECTED])
def test_only_working_orders(status):
    old = order(status=status)
    replacement_request(old, "c2", 10, D("100.00"), None)  # a retry's reply does not depend on it
    with pytest.raises(model.OrderNotActive):
        check_replaceable(old, 10)


def test_an_order_still_being_placed_is_replaced_once_it_works_not_refused_for_good():
    from google.rpc import error_details_pb2

    from meshkit.status import to_rpc_status

    with pytest.raises(model.OrderStillPending) as err:
        check_replaceable(order(status=Status.PENDING_NEW), 10)
    assert (err.value.code, err.value.reason) == ("UNAVAILABLE", "ORDER_PENDING_NEW")
    retry = [d for d in to_rpc_status(err.value).details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(retry) == 1


@pytest.mark.parametrize("end", ["fill", "cancel", "expire", "reject", "replace"])
def test_an_order_that_ends_has_no_cancel_pending(end):
    """Whatever ends an order with a cancel on the way (the cancel itself, a fill, an expiry,
    a rejection, a replace), no cancel is pending any more."""
    o = order(qty=10)
    o.cancel_requested = True
    if end != "reject":  # the engine rejects only an order not yet filled (a FOK)
        o.fill(4, D("100.00"))
        assert o.cancel_requested  # still working: the cancel is still on the way
    {"fill": lambda: o.fill(o.leaves, D("100.00")), "cancel": lambda: o.end(Status.CANCELLED, model.EndReason.CUSTOMER_CANCEL),
     "expire": lambda: o.end(Status.EXPIRED, model.EndReason.SESSION_CLOSE),
     "reject": lambda: o.reject(model.RejectReason.INTERNAL, "refused"),
     "replace": lambda: o.replaced(uuid.uuid4())}[end]()
    assert o.status.is_terminal and not o.cancel_requested


def test_a_busy_order_is_retried_with_the_same_ids():
    from google.rpc import error_details_pb2

    from meshkit.status import to_rpc_status

    err = model.OrderBusy("cancel", "o-1")
    assert (err.code, err.reason, err.metadata) == ("UNAVAILABLE", "ORDER_BUSY", {"orderId": "o-1"})
    assert "safe to retry the cancel" in err.message and "same ids" in err.message
    retry = [d for d in to_rpc_status(err).details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(retry) == 1


@pytest.mark.parametrize("otype,tif", [(OrderType.MARKET, TimeInForce.GTC), (OrderType.LIMIT, TimeInForce.IOC),
                                       (OrderType.LIMIT, TimeInForce.FOK)])
def test_only_limit_stop_stop_limit_day_or_gtc(otype, tif):
    with pytest.raises(model.OrderNotReplaceable):
        replacement_request(order(otype=otype, tif=tif, limit=None if otype is OrderType.MARKET else "100.00"),
                            "c2", 10, D("100.00"), None)


def test_price_fields_follow_the_type_and_quantity_exceeds_the_fills():
    with pytest.raises(InvalidArgument) as e:
        replacement_request(order(filled=4), "c2", 4, None, D("99.00"))
    assert {v.field for v in e.value.violations} == {"limit_price", "stop_price"}
    with pytest.raises(InvalidArgument) as e:
        check_replaceable(order(filled=4, status=Status.PARTIALLY_FILLED), 4)
    assert [v.field for v in e.value.violations] == ["quantity"]
    check_replaceable(order(filled=4, status=Status.PARTIALLY_FILLED), 5)
    stop = order(OrderType.STOP, limit=None, stop="105.00", collar="110.25")
    with pytest.raises(InvalidArgument):
        replacement_request(stop, "c2", 10, D("105.00"), D("106.00"))
    assert replacement_request(stop, "c2", 10, None, D("106.00")).stop_price == D("106.00")
    sl = order(OrderType.STOP_LIMIT, limit="106.00", stop="105.00")
    with pytest.raises(InvalidArgument):
        replacement_request(sl, "c2", 10, D("106.00"), None)


def test_a_triggered_stop_limit_keeps_its_stop_whatever_the_replace_names():
    sl = order(OrderType.STOP_LIMIT, limit="106.00", stop="105.00")
    sl.triggered_at = NOW
    for named in (None, D("105.00"), D("90.00")):
        req = replacement_request(sl, "c2", 10, D("107.00"), named)
        assert (req.limit_price, req.stop_price) == (D("107.00"), D("105.00"))
    with pytest.raises(InvalidArgument) as e:
        replacement_request(sl, "c2", 10, None, D("105.00"))
    assert [v.field for v in e.value.violations] == ["limit_price"]


@pytest.mark.parametrize("old, qty, limit, stop, fields, said", [
    (order(), 10, "100.0", None, ["quantity", "limit_price"], "quantity 10 and limit price 100.00"),
    (order(OrderType.STOP, limit=None, stop="90.00", side=Side.SELL), 10, None, "90", ["quantity", "stop_price"],
     "quantity 10 and stop price 90.00"),
    (order(OrderType.STOP_LIMIT, limit="106.00", stop="105.00"), 10, "106", "105.000",
     ["quantity", "limit_price", "stop_price"], "quantity 10 and limit price 106.00 and stop price 105.00"),
    (order(limit="0.8750"), 10, "0.875", None, ["quantity", "limit_price"], "quantity 10 and limit price 0.8750"),
], ids=["limit", "stop", "stop-limit", "sub-dollar"])
def test_a_replace_that_changes_nothing_is_invalid_naming_the_fields(old, qty, limit, stop, fields, said):
    """A new order id and a client_order_id used up for nothing (round 23): prices compare as
    numbers, and each value that is the order's own is a field violation."""
    from meshkit.status import to_rpc_status

    req = replacement_request(old, "c2", qty, D(limit) if limit else None, D(stop) if stop else None)
    with pytest.raises(model.ReplaceChangesNothing) as e:
        model.check_changes_something(old, req)
    err = e.value
    assert (err.code, err.reason, err.metadata) == ("INVALID_ARGUMENT", "REPLACE_CHANGES_NOTHING",
                                                   {"orderId": str(old.order_id)})
    assert err.message == (f"nothing would change: order {old.order_id} has {said} already; a replace must change "
                           "the quantity or a price")
    assert [v.field for v in err.violations] == fields
    assert len(to_rpc_status(err).details) == 2  # ErrorInfo and BadRequest
    for changed in ({"quantity": qty + 1}, {"limit_price": D("100.01")} if limit else {"stop_price": D("90.01")}):
        model.check_changes_something(old, replace(req, **changed))  # changes something: no error


def test_a_new_stop_price_changes_nothing_of_a_triggered_stop_limit():
    sl = order(OrderType.STOP_LIMIT, limit="106.00", stop="105.00")
    sl.triggered_at = NOW
    with pytest.raises(model.ReplaceChangesNothing) as e:
        model.check_changes_something(sl, replacement_request(sl, "c2", 10, D("106.00"), D("90.00")))
    assert [v.field for v in e.value.violations] == ["quantity", "limit_price"]
    assert "(its stop has triggered: a stop price changes nothing)" in e.value.message
    # Triggered after the request was read, before the old order's row was locked: its new
    # stop price is ignored too.
    fresh = order(OrderType.STOP_LIMIT, limit="106.00", stop="105.00")
    req = replacement_request(fresh, "c2", 10, D("106.00"), D("90.00"))
    model.check_changes_something(fresh, req)  # not triggered: the stop price changes
    fresh.triggered_at = NOW
    with pytest.raises(model.ReplaceChangesNothing):
        model.check_changes_something(fresh, req)


def test_fingerprint_includes_the_replaced_order():
    old = order()
    req = replacement_request(old, "c2", 10, D("101.00"), None)
    assert model.replacement_fingerprint(req, old.order_id) == model.replacement_fingerprint(req, old.order_id)
    assert model.replacement_fingerprint(req, old.order_id) != model.replacement_fingerprint(req, uuid.uuid4())
    assert model.replacement_fingerprint(req, old.order_id) != req.fingerprint()


def test_hold_unit():
    assert hold_unit(order().request, None) == D("100.00")
    assert hold_unit(order(side=Side.SELL).request, None) == 1
    assert hold_unit(order(OrderType.STOP, limit=None, stop="105.00").request, D("110.25")) == D("110.25")


@pytest.mark.parametrize("old_unit,old_qty,filled,new_unit,new_qty,reserve", [
    ("100", 10, 0, "101", 10, "10"),      # price up: exactly the difference
    ("100", 10, 0, "100", 15, "500"),     # quantity up: exactly the difference
    ("100", 10, 0, "99", 10, "0"),        # price down: nothing more
    ("100", 10, 0, "100", 6, "0"),        # quantity down: nothing more
    ("100", 10, 4, "101", 10, "6"),       # 6 still open: 6 x 1
    ("100", 10, 0, "90", 11, "80"),       # cheaper but more: the old order may fill 9 at 100 first
    ("1", 100, 0, "1", 150, "50"),        # a sell's shares
    ("1", 100, 30, "1", 80, "0"),
])
def test_replacement_reserve(old_unit, old_qty, filled, new_unit, new_qty, reserve):
    assert replacement_reserve(D(old_unit), old_qty, filled, D(new_unit), new_qty) == D(reserve)


@given(old_unit=st.integers(1, 50_000), old_qty=st.integers(1, 200), new_unit=st.integers(1, 50_000),
       new_qty=st.integers(1, 300), data=st.data())
def test_reserve_covers_any_fills_before_the_engine_replaces(old_unit, old_qty, new_unit, new_qty, data):
    """Whatever the old order fills (at any price up to its unit) before the engine applies the
    replace, the old hold's remainder plus the reserve covers the new hold."""
    filled = data.draw(st.integers(0, min(old_qty, new_qty) - 1))
    u_old, u_new = D(old_unit) / 100, D(new_unit) / 100
    reserve = replacement_reserve(u_old, old_qty, filled, u_new, new_qty)
    assert reserve >= 0
    more = data.draw(st.integers(0, min(old_qty, new_qty) - 1 - filled))
    price = D(data.draw(st.integers(1, old_unit))) / 100
    old_left = u_old * (old_qty - filled) - price * more  # the old hold, at its smallest
    t = HoldTransfer.new("a", "b", "b", "acct", "USD", u_new, reserve)
    change = t.complete(old_left, reserve, new_qty - filled - more)
    assert change <= 0 and t.new_amount == u_new * (new_qty - filled - more)


def test_transfer_completion_arithmetic():
    t = HoldTransfer.new("old", "new", "new", "acct", "USD", D("101.00"), D("10.00"))
    assert t.reserve_hold_id == "new:reserve"
    # Nothing filled meanwhile: 1000 + 10 move, the new hold is 1010; held does not change.
    assert t.complete(D("1000.00"), D("10.00"), 10) == 0
    assert (t.status, t.moved, t.new_amount) == (TransferStatus.COMPLETED, D("1010.00"), D("1010.00"))
    with pytest.raises(HoldResolved):
        t.complete(D("1000.00"), D("10.00"), 10)
    # A lower price: the excess is released (held changes by -10).
    t = HoldTransfer.new("old", "new", "new", "acct", "USD", D("99.00"), D(0))
    assert t.reserve_hold_id is None
    assert t.complete(D("1000.00"), D(0), 10) == D("-10.00")
    # A sell down from 100 to 60 shares with 30 filled meanwhile: 70 left, 30 needed.
    t = HoldTransfer.new("old", "new", "new", "acct", "AAPL", D(1), D(0))
    assert t.complete(D(70), D(0), 30) == -40


def test_transfer_validation_and_cancel():
    with pytest.raises(InvalidArgument):
        HoldTransfer.new("old", "new", "new", "acct", "AAPL", D(2), D(0))  # shares: one per share
    with pytest.raises(InvalidArgument):
        HoldTransfer.new("old", "old", "old", "acct", "USD", D(1), D(0))
    with pytest.raises(InvalidArgument):
        HoldTransfer.new("old", "new", "new", "acct", "AAPL", D(1), D("1.5"))
    t = HoldTransfer.new("old", "new", "new", "acct", "USD", D(1), D(0))
    t.cancel()
    assert t.status is TransferStatus.CANCELLED
    with pytest.raises(HoldResolved):
        t.cancel()


def test_confirm_replacement_carries_the_fills():
    old = order(qty=10, filled=4, status=Status.PARTIALLY_FILLED)
    old.fill_notional = D("400.00")
    new = order(qty=12, status=Status.PENDING_NEW)
    new.replaces = old.order_id
    new.confirm_replacement(old)
    assert (new.status, new.filled_quantity, new.leaves, new.average_fill_price) == (
        Status.PARTIALLY_FILLED, 4, 8, D("100.0000"))
    old.replaced(new.order_id)
    assert (old.status, old.replaced_by) == (Status.CANCELLED, new.order_id)
    stranger = order(status=Status.PENDING_NEW)
    stranger.replaces = uuid.uuid4()
    with pytest.raises(model.IllegalTransition):
        stranger.confirm_replacement(old)


def test_a_cash_reserve_is_rounded_up_to_the_cent():
    # 3 × 0.8937 − 3 × 0.8936 = 0.0003: held as a whole cent; shares stay whole.
    assert replacement_reserve(D("0.8936"), 3, 0, D("0.8937"), 3) == D("0.01")
    assert replacement_reserve(D(1), 100, 0, D(1), 150) == 50


@given(old_unit=st.integers(1, 9999), old_qty=st.integers(1, 50), new_unit=st.integers(1, 9999),
       new_qty=st.integers(1, 60), data=st.data())
def test_sub_penny_holds_in_cents_cover_any_fills_before_the_replace(old_unit, old_qty, new_unit, new_qty, data):
    """Sub-penny limit prices, holds in whole cents (rounded up), fills captured in cents
    (rounded down): the old hold's remainder plus the reserve still covers the new hold."""
    from ledger_svc.domain.settlement import fill_cash
    filled = data.draw(st.integers(0, min(old_qty, new_qty) - 1))
    u_old, u_new = D(old_unit) / 10000, D(new_unit) / 10000
    reserve = replacement_reserve(u_old, old_qty, filled, u_new, new_qty)
    assert reserve >= 0 and reserve == reserve.quantize(D("0.01"))
    old_left = model.cents_up(u_old * (old_qty - filled))  # the old hold as placed for what is open
    for _ in range(data.draw(st.integers(0, min(old_qty, new_qty) - 1 - filled))):
        old_left -= fill_cash(D(data.draw(st.integers(1, old_unit))) / 10000, 1)
        filled += 1
    assert old_left >= 0
    t = HoldTransfer.new("a", "b", "b", "acct", "USD", u_new, reserve)
    assert t.complete(old_left, reserve, new_qty - filled) <= 0
    assert t.new_amount == model.cents_up(u_new * (new_qty - filled))


def test_an_order_ended_by_a_replace_says_whether_a_replacement_exists():
    """Replaced: it names its replacement. Cancelled because the replace asked for no more than
    it had filled (the replacement is REJECTED ORDER_NOT_ACTIVE): it says that no replacement
    was made (it said "replaced by a new order", with none to show)."""
    from order_svc.entrypoints.mapping import order_to_proto

    replaced = order(qty=100, filled=20, status=Status.PARTIALLY_FILLED)
    replaced.replaced(uuid.uuid4())
    assert order_to_proto(replaced).end_message == "replaced by a new order"
    overtaken = order(qty=100, filled=65, status=Status.PARTIALLY_FILLED)
    overtaken.end(Status.CANCELLED, model.EndReason.REPLACED)
    pb = order_to_proto(overtaken)
    assert pb.replaced_by == ""
    assert pb.end_message == ("cancelled by a replace whose new quantity was not above the 65 shares filled by "
                              "then; no replacement order was made")


def test_a_stop_replacement_takes_the_collar_of_its_new_stop_and_keeps_the_old_one_otherwise():
    collar = D("0.05")
    buy = order(OrderType.STOP, limit=None, stop="100.00", collar="105.00")
    moved = replacement_request(buy, "c2", 10, None, D("120.00"))
    assert model.replacement_collar(buy, moved, collar) == D("126.00")
    same_stop = replacement_request(buy, "c3", 5, None, D("100.00"))  # the collar setting may have changed since
    assert model.replacement_collar(buy, same_stop, collar) == D("105.00")
    sell = order(OrderType.STOP, side=Side.SELL, limit=None, stop="100.00", collar="95.00")
    assert model.replacement_collar(sell, replacement_request(sell, "c4", 10, None, D("80.01")), collar) == D("76.00")
    stop_limit = order(OrderType.STOP_LIMIT, limit="99.00", stop="100.00")
    assert model.replacement_collar(stop_limit, replacement_request(stop_limit, "c5", 10, D("98.00"), D("99.00")),
                                    collar) is None
