"""A market buy's hold and the collar it covers: a retry that adopts an earlier attempt's hold
(priced at another ask) takes the collar that hold pays for, never one it does not cover."""
from __future__ import annotations

from decimal import Decimal

from hypothesis import given, strategies as st

from order_svc.domain import model
from order_svc.domain.model import OrderRequest, OrderType, Side, TimeInForce

COLLAR = Decimal("0.05")


def market_buy(qty: int) -> OrderRequest:
    return OrderRequest("acct", "c1", "AAPL", Side.BUY, OrderType.MARKET, qty, None, None, TimeInForce.DAY)


@given(cents=st.integers(min_value=100, max_value=5_000_000), qty=st.integers(min_value=1, max_value=100_000))
def test_the_collar_of_a_market_buys_hold_is_the_collar_it_was_planned_with(cents, qty):
    req = market_buy(qty)
    plan = model.plan_hold(req, best_bid=None, best_ask=Decimal(cents) / 100, collar=COLLAR)
    assert isinstance(plan, model.HoldPlan)
    assert model.collar_of_hold(req, plan.amount) == plan.collar_price


@given(ten_thousandths=st.integers(min_value=1, max_value=9_999), qty=st.integers(min_value=1, max_value=100_000))
def test_below_a_dollar_the_collar_of_a_hold_is_covered_by_it_and_no_lower_than_planned(ten_thousandths, qty):
    # Sub-dollar prices tick in 0.0001 while holds round up to the cent: the hold may pay for
    # a slightly higher collar than planned, and that is the one adopted.
    req = market_buy(qty)
    plan = model.plan_hold(req, best_bid=None, best_ask=Decimal(ten_thousandths) / 10_000, collar=COLLAR)
    assert isinstance(plan, model.HoldPlan) and plan.collar_price is not None
    collar = model.collar_of_hold(req, plan.amount)
    assert collar >= plan.collar_price
    assert model.cents_up(collar * qty) <= plan.amount
    assert collar == model.round_price(collar, up=False)  # on the tick grid


async def test_the_hold_reaper_logs_a_ledger_not_answering_without_a_traceback(monkeypatch, caplog):
    """At every start order_svc asks the ledger for unchecked holds before ledger_svc answers:
    a warning, not an ERROR with a traceback (it read like a crash in every clean start's log).
    A bug still logs its traceback."""
    import asyncio
    import logging

    from meshkit.errors import Unavailable
    from order_svc.service_layer import handlers
    from tests.support.wait import eventually

    failures = iter([Unavailable("ledger could not list unchecked holds: UNAVAILABLE"), RuntimeError("a bug")])

    async def reap(_deps, *, older_than, orphan_age):
        raise next(failures)

    monkeypatch.setattr(handlers, "reap_orphaned_holds", reap)
    with caplog.at_level(logging.INFO, logger="order_svc"):
        task = asyncio.create_task(handlers.reaper_loop(None, interval=0.001))

        def logged():
            return [r for r in caplog.records if "checking holds" in r.getMessage()]

        assert await eventually(lambda: len(logged()) >= 2, timeout=10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    first, second = logged()[:2]
    assert (first.levelname, first.exc_info) == ("WARNING", None)
    assert "UNAVAILABLE" in first.error
    assert second.levelname == "ERROR" and second.exc_info is not None


def test_a_triggered_stop_that_found_no_liquidity_says_it_was_a_stop():
    """A STOP works as a market order once triggered; its end message said "the market order
    found no liquidity", as if the customer had placed one (acceptance round 8)."""
    import uuid
    from datetime import datetime, timezone

    at = datetime(2024, 1, 2, 15, tzinfo=timezone.utc)
    for otype, stop, expected in ((OrderType.STOP, Decimal("100.00"), "the stop order, triggered as a market order,"),
                                  (OrderType.MARKET, None, "the market order")):
        for reason in (model.EndReason.NO_LIQUIDITY, model.EndReason.MARKET_REMAINDER):
            req = OrderRequest("acct", "c1", "AAPL", Side.BUY, otype, 5, None, stop, TimeInForce.DAY)
            o = model.Order(uuid.uuid4(), req, model.Status.NEW, at, at)
            o.end(model.Status.CANCELLED, reason)
            assert expected in o.end_message
            assert "found no liquidity within its price collar" in o.end_message


def test_an_order_id_is_taken_as_placeorder_writes_it_and_not_in_uuids_other_spellings():
    import uuid

    from meshkit.errors import Violations
    from order_svc.entrypoints import mapping

    oid = uuid.uuid4()
    v = Violations()
    assert mapping.order_id(str(oid), v) == oid and mapping.order_id(str(oid).upper(), v) == oid and not v.items
    for other in (f"{{{oid}}}", f"urn:uuid:{oid}", oid.hex, f" {oid}", f"{oid}\n", ""):
        v = Violations()
        assert mapping.order_id(other, v) is None and [i.field for i in v.items] == ["order_id"], other


def _uow_of(orders):
    """The reaper's unit of work, in memory: `orders` its repository."""
    class Uow:
        def reads(self):
            return self

        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            pass

        async def commit(self):
            pass

    Uow.orders = orders
    return Uow


async def test_the_hold_reaper_does_not_spin_on_a_full_page_it_cannot_mark():
    """Round 19 review: the ledger marks holds checked skipping those locked (by a fill, or a
    stuck transaction); a full page of such holds came back whole at once, and the reaper asked
    again and again without pause for as long as they stayed locked. Round 22: the reaper goes
    on after the last hold of each page (a cursor), so a page it cannot mark is never asked
    again in its round, and the round ends at the short page behind it. Without that, wait_for
    ends the reaper."""
    import asyncio
    import uuid
    from datetime import datetime, timezone

    from order_svc.domain.model import UncheckedHold
    from order_svc.service_layer import handlers

    at = datetime(2024, 1, 2, 15, tzinfo=timezone.utc)
    page = [UncheckedHold(f"h{i}", str(uuid.uuid4()), at, True) for i in range(2)]

    class Holds:  # every hold of the page locked: none is marked
        asked = 0

        async def unchecked(self, older_than, orphan_age, limit, after=None):
            self.asked += 1
            await asyncio.sleep(0)
            return [h for h in page if after is None or (h.created_at, h.hold_id) > (after.created_at, after.hold_id)]

        async def mark_checked(self, hold_ids):
            pass

    class Orders:
        async def recorded(self, order_ids):
            return set(order_ids)  # every order recorded, live: nothing to give back

        async def claim_orphans(self, order_ids):
            return [], []

    deps = type("Deps", (), {"holds": Holds(), "uow": _uow_of(Orders())})()
    assert await asyncio.wait_for(handlers.reap_orphaned_holds(deps, older_than=0, orphan_age=0, page=2), 10) == 0
    assert deps.holds.asked == 2  # the page, then what is after it (nothing): the round ends


async def test_the_hold_reaper_goes_past_a_busy_account_but_stops_when_the_ledger_does_not_answer():
    """Round 22 review: a release answered ACCOUNT_BUSY (its account held by another
    transaction) leaves that hold unchecked for the next round and the round goes on with the
    others; the ledger not answering at all (no reason) still ends the round, since every
    release after it would fail alike, each after its deadline."""
    import asyncio
    import uuid
    from datetime import datetime, timezone

    import pytest

    from meshkit.errors import Unavailable
    from order_svc.domain.model import UncheckedHold
    from order_svc.service_layer import handlers

    at = datetime(2024, 1, 2, 15, tzinfo=timezone.utc)
    page = [UncheckedHold(f"h{i}", str(uuid.uuid4()), at, True) for i in range(3)]

    class Holds:
        def __init__(self, refusal: Unavailable) -> None:
            self.refusal, self.released, self.marked = refusal, [], []

        async def unchecked(self, older_than, orphan_age, limit, after=None):
            return [h for h in page if after is None or (h.created_at, h.hold_id) > (after.created_at, after.hold_id)]

        async def release(self, hold_id):
            if hold_id == "h0":
                raise self.refusal
            self.released.append(hold_id)

        async def mark_checked(self, hold_ids):
            self.marked += hold_ids

    class Orders:
        async def recorded(self, order_ids):
            return set()  # no order recorded: every hold an orphan

        async def claim_orphans(self, order_ids):
            return list(order_ids), []

    busy = Holds(Unavailable("account a is busy", reason="ACCOUNT_BUSY"))
    deps = type("Deps", (), {"holds": busy, "uow": _uow_of(Orders())})()
    assert await asyncio.wait_for(handlers.reap_orphaned_holds(deps, older_than=0, orphan_age=0, page=3), 10) == 2
    assert (busy.released, busy.marked) == (["h1", "h2"], ["h1", "h2"])  # h0 left for the next round

    down = Holds(Unavailable("the ledger could not release hold h0: UNAVAILABLE; retry shortly"))
    deps = type("Deps", (), {"holds": down, "uow": _uow_of(Orders())})()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(handlers.reap_orphaned_holds(deps, older_than=0, orphan_age=0, page=3), 10)
    assert (down.released, down.marked) == ([], [])
