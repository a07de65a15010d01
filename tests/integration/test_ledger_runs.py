"""The ledger applies a consumer's backlog of fills and ends in runs (settlement.apply_executions):
one transaction of a few statements per run. What a run leaves must be exactly what applying
its executions one at a time (apply_execution) leaves: balances, holds, positions, proceeds,
statement lines and audit events, in the same order."""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from ledger_svc.domain.model import HoldNotFound
from ledger_svc.service_layer import commands, handlers as ledger, settlement
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit import calendar
from meshkit.executions import CANCEL_REJECTED, CANCELLED, EXPIRED, FILL, REJECTED, Execution
from tests.integration.conftest import own_database_fixtures

pytestmark = pytest.mark.integration
D = Decimal
ROLES = ("b1", "b2", "b3", "s1", "s2")
ORDERS = {"b1o": ("b1", "USD", "1000"), "b2o": ("b2", "USD", "500"), "b3o": ("b3", "USD", "300"),
          "s1o": ("s1", "AAPL", "10"), "s2o": ("s2", "AAPL", "5")}
TOGETHER_FAILED = "could not be applied together"


# A database of this module's own: its fills are today's and some stay unsettled on purpose,
# which a settlement of the day in another test (test_settlement.py) would see. checked_pool
# (tests/conftest.py) checks the ledger's invariants on it after each test.
pool, database_url, namespace, ledger_addr = own_database_fixtures()


class World:
    """Three buyers and two sellers, each order with its hold placed, under names of its own."""

    def __init__(self, pool) -> None:
        self.uow = lambda: LedgerUnitOfWork(pool)  # noqa: E731
        self.tag = uuid.uuid4().hex[:8]

    def acct(self, role: str) -> str:
        return f"{role}-{self.tag}"

    def order(self, name: str) -> str:
        return f"{name}-{self.tag}"

    async def open(self) -> "World":
        for role in ("b1", "b2", "b3"):
            await ledger.deposit(commands.Deposit(self.acct(role), D("2000"), "fund"), self.uow)
        await ledger.credit_shares(commands.CreditShares(self.acct("s1"), "AAPL", D(20), "seed", D("90")), self.uow)
        await ledger.credit_shares(commands.CreditShares(self.acct("s2"), "AAPL", D(5), "seed"), self.uow)
        for name, (role, asset, amount) in ORDERS.items():
            await ledger.place_hold(commands.PlaceHold(self.order(name), self.acct(role), self.order(name), asset,
                                                       D(amount)), self.uow)
        return self

    def fill(self, n: int, taker: str, buy: str, sell: str, qty: int, price: str, b_leaves: int,
             s_leaves: int) -> Execution:
        now = datetime.now(timezone.utc)
        (t_order, t_leaves), (m_order, m_leaves) = (((buy, b_leaves), (sell, s_leaves)) if taker == "BUY"
                                                    else ((sell, s_leaves), (buy, b_leaves)))
        return Execution(
            execution_id=f"x{n}-{self.tag}", symbol="AAPL", type=FILL, order_id=self.order(t_order),
            account_id=self.acct(ORDERS[t_order][0]), side=taker, counter_order_id=self.order(m_order),
            counter_account_id=self.acct(ORDERS[m_order][0]), price=D(price), quantity=qty, leaves=t_leaves,
            counter_leaves=m_leaves, executed_at=now, trade_date=calendar.trading_day(now))

    def end(self, n: int, kind: str, order: str, reason: str = "") -> Execution:
        now = datetime.now(timezone.utc)
        return Execution(execution_id=f"x{n}-{self.tag}", symbol="AAPL", type=kind, order_id=self.order(order),
                         account_id=self.acct(ORDERS[order][0]), reason=reason, executed_at=now,
                         trade_date=calendar.trading_day(now))

    def flow(self) -> list[Execution]:
        """Partial fills of both sides, an order filled whole (its hold captured in full), a
        sub-penny-free cancel, an expiry and a rejection, with one execution given twice."""
        second = self.fill(2, "SELL", "b2o", "s1o", 2, "98.75", 3, 5)
        return [
            self.fill(1, "BUY", "b1o", "s1o", 3, "99.50", 7, 7),
            second,
            self.fill(3, "BUY", "b1o", "s2o", 5, "99.01", 2, 0),
            second,  # a repeat in the same run
            self.end(4, CANCELLED, "b1o", "CANCELLED_BY_USER"),
            self.fill(5, "SELL", "b2o", "s1o", 3, "100", 0, 2),
            self.end(6, EXPIRED, "s1o", "SESSION_CLOSE"),
            self.end(7, REJECTED, "b3o", "FOK_NOT_FILLABLE"),
        ]

    async def state(self) -> dict:
        """Everything the flow moved, with this world's names and ids taken out."""
        def plain(value) -> str:
            return str(value).replace(self.tag, "T")

        out: dict = {}
        async with self.uow() as uow:
            conn = uow.ledger.conn
            for role in ROLES:
                a = self.acct(role)
                out[role, "cash"] = await uow.ledger.balance(a, "USD")
                out[role, "shares"] = await uow.ledger.balance(a, "AAPL")
                p = await uow.settlement.position(a, "AAPL")
                out[role, "position"] = (p.quantity, p.cost)
                out[role, "statement"] = [(r.kind, r.asset, r.amount, plain(r.description), plain(r.reference), r.own)
                                          for r in await uow.ledger.activities(a, None, 100)]
                out[role, "proceeds"] = [tuple(map(plain, r)) for r in await conn.fetch(
                    "SELECT fill_id, amount, description FROM ledger.unsettled WHERE account_id = $1 "
                    "ORDER BY activity_id", a)]
                events = await conn.fetch("SELECT event_type, payload FROM audit.events WHERE stream = $1 ORDER BY seq",
                                          f"ledger:{a}")
                # Entry ids are new uuids in either world: everything else must match.
                out[role, "audit"] = [(e["event_type"], _without_entry_id(plain(e["payload"]))) for e in events]
            for name in ORDERS:
                h = await uow.ledger.get_hold(self.order(name))
                out[name, "hold"] = (h.captured, h.released, h.status)
                out[name, "fills"] = (h.filled, h.notional)  # its order's fills counted (GetPortfolio's)
        return out


async def _blocked_by(pool, holder) -> bool:
    """Whether a backend of the database waits for a lock `holder`'s transaction has."""
    return await pool.fetchval("SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database()"
                               " AND $1 = ANY(pg_blocking_pids(pid)))", holder.get_server_pid())


def _without_entry_id(payload: str) -> str:
    import json

    d = json.loads(payload)
    d.pop("entryId", None)
    return json.dumps(d, sort_keys=True)


async def test_a_run_leaves_exactly_what_one_at_a_time_leaves(checked_pool, caplog):
    one, run = await World(checked_pool).open(), await World(checked_pool).open()
    for ex in one.flow():
        await settlement.apply_execution(ex, one.uow)
    with caplog.at_level(logging.WARNING, logger="ledger_svc.settlement"):
        applied = await settlement.apply_executions(run.flow(), run.uow)
    assert TOGETHER_FAILED not in caplog.text  # applied as one run, not one at a time after a failure
    assert applied == 7  # eight given, one of them twice
    expected, got = await one.state(), await run.state()
    assert got == expected
    # The flow moved something on every line compared (a vacuous match would prove nothing).
    assert got["s1", "proceeds"] and got["b1", "position"][0] == 8 and got["s1o", "hold"][2].value == "RELEASED"
    assert [t for t, _ in got["b1", "audit"]].count("HOLD_CAPTURED") == 2
    # Each hold counts its order's fills, as the incoming order and as the resting one, the
    # repeat once (round 26 review: GetPortfolio reads them instead of summing the journal).
    assert got["b1o", "fills"] == (8, 3 * D("99.50") + 5 * D("99.01"))
    assert got["s1o", "fills"] == (8, 3 * D("99.50") + 2 * D("98.75") + 3 * D(100))
    assert got["b2o", "fills"] == (5, 2 * D("98.75") + 3 * D(100)) and got["b3o", "fills"] == (0, 0)


async def test_a_fill_worth_less_than_a_cent_is_counted_by_the_buy_s_hold_too(checked_pool):
    """A buy's fill worth less than a cent captures no cash (fill_cash), yet is a fill of the
    order: its hold counts it, applied alone and in a run alike, as the sell's does."""
    one, run = await World(checked_pool).open(), await World(checked_pool).open()
    for w in (one, run):
        flow = [w.fill(1, "BUY", "b1o", "s1o", 1, "0.004", 9, 9), w.fill(2, "SELL", "b2o", "s2o", 2, "99", 3, 3)]
        if w is one:
            for ex in flow:
                await settlement.apply_execution(ex, w.uow)
        else:
            assert await settlement.apply_executions(flow, w.uow) == 2
    expected, got = await one.state(), await run.state()
    assert got == expected
    assert got["b1o", "fills"] == got["s1o", "fills"] == (1, D("0.004"))
    assert got["b1o", "hold"][0] == 0  # nothing captured


async def test_a_run_applied_before_applies_nothing_and_a_mixed_one_only_the_new(checked_pool, caplog):
    w = await World(checked_pool).open()
    flow = w.flow()
    assert await settlement.apply_executions(flow[:3], w.uow) == 3
    before = await w.state()
    assert await settlement.apply_executions(flow[:3], w.uow) == 0
    assert await w.state() == before
    with caplog.at_level(logging.WARNING, logger="ledger_svc.settlement"):
        assert await settlement.apply_executions(flow, w.uow) == 4  # the five others, one of them twice
    assert TOGETHER_FAILED not in caplog.text


async def test_a_run_that_cannot_go_together_is_applied_one_at_a_time(checked_pool, caplog):
    """A fill of an order the ledger has no hold for: the run goes one at a time, so what comes
    before it is applied, and the fill itself is refused as apply_execution refuses it (the
    consumer retries it in place, as before runs)."""
    w = await World(checked_pool).open()
    flow = w.flow()
    ghost = w.fill(9, "BUY", "b1o", "s1o", 1, "99", 6, 6)
    ghost = Execution(**{**ghost.__dict__, "order_id": "no-such-order"})
    with caplog.at_level(logging.WARNING, logger="ledger_svc.settlement"), pytest.raises(HoldNotFound):
        await settlement.apply_executions(flow[:2] + [ghost], w.uow)
    assert TOGETHER_FAILED in caplog.text
    assert await settlement.apply_executions(flow[:2], w.uow) == 0  # applied one at a time before the refusal
    async with w.uow() as uow:
        assert await uow.settlement.claim_execution(ghost)  # not recorded as applied: free to claim


def _as_proto(ex: Execution):
    from stockmesh.common.v1 import common_pb2
    from stockmesh.matching.v1 import matching_pb2

    m = matching_pb2.Execution(
        execution_id=ex.execution_id, symbol=ex.symbol, type=matching_pb2.ExecutionType.Value(f"EXECUTION_TYPE_{ex.type}"),
        order_id=ex.order_id, account_id=ex.account_id, counter_order_id=ex.counter_order_id,
        counter_account_id=ex.counter_account_id, price=str(ex.price) if ex.price is not None else "",
        quantity=ex.quantity, leaves_quantity=ex.leaves, counter_leaves_quantity=ex.counter_leaves, reason=ex.reason,
        side={"BUY": common_pb2.SIDE_BUY, "SELL": common_pb2.SIDE_SELL}.get(ex.side, common_pb2.SIDE_UNSPECIFIED))
    m.time.FromDatetime(ex.executed_at)
    return m


async def test_the_consumer_applies_a_backlog_in_runs(checked_pool, nats_conn, caplog):
    """Through meshkit.executions.consume: a backlog published before the ledger's consumer
    starts is applied in runs, and leaves what one at a time leaves."""
    import asyncio

    from meshkit import bus, executions
    from tests.support.wait import eventually

    one, run = await World(checked_pool).open(), await World(checked_pool).open()
    for ex in one.flow():
        await settlement.apply_execution(ex, one.uow)
    js, ns = nats_conn.jetstream(), f"lr{uuid.uuid4().hex[:8]}"
    await bus.ensure_stream(js, ns, "EXECUTIONS")
    for ex in run.flow():
        await js.publish(bus.subject(ns, "executions", "AAPL"), _as_proto(ex).SerializeToString())
    sizes: list[int] = []

    async def apply_batch(exs):
        await settlement.apply_executions(exs, run.uow)
        sizes.append(len(exs))  # once applied: the test compares what was applied

    with caplog.at_level(logging.WARNING, logger="ledger_svc.settlement"):
        task = asyncio.create_task(executions.consume(js, ns, "ledger", apply_batch=apply_batch, symbols=["AAPL"]))
        try:
            assert await eventually(lambda: sum(sizes) >= 8), sizes
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert TOGETHER_FAILED not in caplog.text
    assert max(sizes) > 1  # a backlog: more than one execution in a call
    assert await run.state() == await one.state()


async def test_a_held_account_parks_its_executions_and_those_behind_it_the_others_apply(checked_pool):
    """Round 19's lock tester: one account held by another transaction stopped its symbol's
    executions for every account. Now the executions touching it, and those behind them on the
    same accounts, are parked, the others apply, and the parked ones apply once it is free, in
    stream order, as if nothing had happened."""
    one, w = await World(checked_pool).open(), await World(checked_pool).open()
    for ex in one.flow():
        await settlement.apply_execution(ex, one.uow)
    holder = await checked_pool.acquire()
    tx = holder.transaction()
    await tx.start()
    await holder.execute("SELECT ledger.lock_accounts($1::text[])", [w.acct("b1")])  # held, as by a stuck transaction
    try:
        # b1's fills park, then s1's and s2's behind them (their accounts); only b3's rejection applies.
        assert await settlement.apply_executions(w.flow(), w.uow, lock_wait=0.3) == 1
        parked = await checked_pool.fetch("SELECT execution_id FROM ledger.parked_executions WHERE execution_id "
                                          "LIKE $1 ORDER BY seq", f"%-{w.tag}")
        assert [r[0] for r in parked] == [f"x{n}-{w.tag}" for n in (1, 2, 3, 4, 5, 6)]
        assert (await w.state())["b3o", "hold"][2].value == "RELEASED"
        # The consumer killed before it acknowledged, the batch comes again: nothing twice.
        assert await settlement.apply_executions(w.flow(), w.uow, lock_wait=0.3) == 0
        assert await checked_pool.fetchval("SELECT count(*) FROM ledger.parked_executions WHERE execution_id "
                                           "LIKE $1", f"%-{w.tag}") == 6
        assert await settlement.unpark(w.uow) == 0  # still held: all stay
    finally:
        await tx.rollback()
        await checked_pool.release(holder)
    assert await settlement.unpark(w.uow) == 6
    assert not await checked_pool.fetchval("SELECT count(*) FROM ledger.parked_executions WHERE execution_id "
                                           "LIKE $1", f"%-{w.tag}")
    assert await w.state() == await one.state()


async def test_a_batch_behind_parked_executions_applies_them_first_once_their_accounts_are_free(checked_pool):
    """Round 24 chaos: a later batch touching an account with a parked execution parked behind
    it even though nothing held the account any more, until the unpark loop had applied what
    was parked first; a market maker's executions all touch its account, so once some were
    parked every later one of its symbol was, faster than the loop applied them, and the
    backlog grew for as long as the market traded. Now the batch's consumer applies its
    symbol's parked executions first, in order, then the batch: nothing is left parked. (While
    the account is still held, the batch parks behind them as before: the tests below.)"""
    one, w = await World(checked_pool).open(), await World(checked_pool).open()
    for ex in one.flow():
        await settlement.apply_execution(ex, one.uow)
    flow = w.flow()
    holder = await checked_pool.acquire()
    try:  # released whatever happens: the pool's close waits for it (a failure here hung the run)
        async with holder.transaction():
            await holder.execute("SELECT ledger.lock_accounts($1::text[])", [w.acct("s2")])
            assert await settlement.apply_executions(flow[:3], w.uow, lock_wait=0.3) == 2  # x3 (b1-s2) parked
    finally:
        await checked_pool.release(holder)
    # s2 is free now: b1's cancel (x4) meets x3, which its consumer applies first, then the
    # batch (x4-x7; x2 again, a repeat).
    assert await settlement.apply_executions(flow[3:], w.uow, lock_wait=0.3) == 5
    assert await _parked_ids(checked_pool, w) == []
    assert await settlement.unpark(w.uow) == 0
    assert await w.state() == await one.state()


async def _parked_ids(pool, w: "World") -> list[str]:
    return [r[0] for r in await pool.fetch("SELECT execution_id FROM ledger.parked_executions WHERE execution_id "
                                           "LIKE $1 ORDER BY seq", f"%-{w.tag}")]


async def test_executions_of_one_account_are_parked_in_stream_order_whatever_parks_them(checked_pool):
    """Round 23 chaos: a batch's later execution parked at once behind a blocked account (the
    market maker's), while an earlier one of the same customer, applied after it and only then
    found held, was parked after it. unpark applies them in the order parked: a replace's FILL
    came before its REPLACED and found no hold, for ever, and every later execution of both
    accounts stayed parked behind it. A batch now parks what it parks in stream order."""
    w = await World(checked_pool).open()
    holder = await checked_pool.acquire()
    try:
        async with holder.transaction():  # s2 held: b1-s2 parked, s2 blocked from now on
            await holder.execute("SELECT ledger.lock_accounts($1::text[])", [w.acct("s2")])
            assert await settlement.apply_executions([w.fill(1, "BUY", "b1o", "s2o", 1, "99", 9, 4)], w.uow,
                                                     lock_wait=0.3) == 0
        # b2 held (s2 still): its fill with s1 (first in the stream) waits for b2 in vain and
        # parks; its fill with s2 (second) parks behind s2's parked execution.
        first, second = w.fill(2, "BUY", "b2o", "s1o", 1, "99", 4, 9), w.fill(3, "BUY", "b2o", "s2o", 1, "99", 3, 3)
        async with holder.transaction():
            await holder.execute("SELECT ledger.lock_accounts($1::text[])", [w.acct("b2"), w.acct("s2")])
            assert await settlement.apply_executions([first, second], w.uow, lock_wait=0.3) == 0
    finally:
        await checked_pool.release(holder)
    assert await _parked_ids(checked_pool, w) == [f"x{n}-{w.tag}" for n in (1, 2, 3)]
    assert await settlement.unpark(w.uow) == 3


async def test_a_parked_execution_that_cannot_apply_holds_back_only_its_own_accounts(checked_pool, caplog):
    """Round 23 chaos: unpark read the oldest 1,000 parked executions of every symbol together;
    once one that could not apply had that many behind it, no symbol's, nor its own symbol's
    other accounts', were applied any more. Now the rows behind it on its accounts wait, unread,
    and every other account's are tried, whatever their symbol; the failure is counted and the
    age of what is parked exported."""
    from ledger_svc.service_layer.settlement import PARKED, PARKED_OLDEST, UNPARK_FAILURES

    w = await World(checked_pool).open()
    stuck = [Execution(**{**w.fill(n, "BUY", "b1o", "s1o", 1, "99", 9, 9).__dict__,
                          "order_id": w.order(f"gone{n}")}) for n in (1, 2, 3)]  # no such hold: never applies
    other_account = w.end(4, CANCELLED, "b3o", "CANCELLED_BY_USER")  # AAPL too, b3 only
    other_symbol = Execution(**{**w.end(5, CANCELLED, "b2o", "CANCELLED_BY_USER").__dict__, "symbol": "MSFT"})
    async with w.uow() as uow:
        await uow.settlement.park([*stuck, other_account, other_symbol])
        await uow.commit()
    failures = UNPARK_FAILURES.labels("AAPL")._value.get()
    try:
        with caplog.at_level(logging.ERROR, logger="ledger_svc.settlement"):
            await settlement.unpark(w.uow, limit=2)  # AAPL: the first stuck one and b3's; MSFT's
        assert await _parked_ids(checked_pool, w) == [ex.execution_id for ex in stuck]
        state = await w.state()
        assert (state["b3o", "hold"][2].value, state["b2o", "hold"][2].value) == ("RELEASED", "RELEASED")
        assert UNPARK_FAILURES.labels("AAPL")._value.get() == failures + 1  # the first; those behind it not tried
        assert PARKED.labels("AAPL")._value.get() >= 3 and PARKED_OLDEST.labels("AAPL")._value.get() >= 0
    finally:
        await checked_pool.execute("DELETE FROM ledger.parked_executions WHERE execution_id LIKE $1", f"%-{w.tag}")


async def test_a_run_meeting_a_held_account_does_not_keep_its_other_accounts_from_their_holds(checked_pool):
    """A run takes all its accounts, in account order, then waits for the held one (round 20
    review: while it waited 2 s, the run's other accounts, most not party to the fill that
    waits, were locked too, and a hold placement of one of them, waiting 1 s, was answered
    ACCOUNT_BUSY). The run waits less than a placement does, then parks what waits."""
    import asyncio

    from tests.support.wait import eventually

    one, w = await World(checked_pool).open(), await World(checked_pool).open()
    for ex in one.flow():
        await settlement.apply_execution(ex, one.uow)
    await ledger.deposit(commands.Deposit(w.acct("b2"), D("1"), "more"), w.uow)
    holder = await checked_pool.acquire()
    tx = holder.transaction()
    await tx.start()
    await holder.execute("SELECT ledger.lock_accounts($1::text[])", [w.acct("s2")])  # sorts after b2
    try:
        applying = asyncio.create_task(settlement.apply_executions(w.flow(), w.uow))
        # The run holds b1, b2, b3, s1 once its backend waits for s2, which only the holder has.
        assert await eventually(lambda: _blocked_by(checked_pool, holder), timeout=10, delay=0.01), \
            "the run never waited for s2's lock"
        [answer] = await ledger.place_holds([commands.PlaceHold(w.order("b2x"), w.acct("b2"), w.order("b2x"), "USD",
                                                                D("1"))], w.uow)
        assert isinstance(answer, ledger.model.Hold), answer  # placed, not ACCOUNT_BUSY
        # s2's fill and what is behind it parked (and b2's, if the probe met the placement).
        applied = await applying
    finally:
        await tx.rollback()
        await checked_pool.release(holder)
    await ledger.release_hold(commands.ReleaseHold(w.order("b2x")), w.uow)
    assert applied + await settlement.unpark(w.uow) == 7
    got, expected = await w.state(), await one.state()
    b2_moved_more = {("b2", "cash"), ("b2", "statement"), ("b2", "audit")}  # its own deposit and hold
    assert {k: v for k, v in got.items() if k not in b2_moved_more} == \
        {k: v for k, v in expected.items() if k not in b2_moved_more}


async def test_a_fill_without_the_buyers_account_goes_where_one_at_a_time_sends_it(checked_pool):
    """A malformed fill naming no account for its maker (the buyer here): one at a time, the
    seller's shares go to clearing (capture_in: no counter-account is clearing); a run did the
    same only after the round 20 review (it made a customer book owned by '')."""
    one, w = await World(checked_pool).open(), await World(checked_pool).open()
    captures = []
    for world, apply in ((one, lambda ex: settlement.apply_execution(ex, one.uow)),
                         (w, lambda ex: settlement.apply_executions([ex], w.uow))):
        ex = world.flow()[1]  # s1 sells to b2 (the maker)
        await apply(Execution(**{**ex.__dict__, "counter_account_id": ""}))
        captures.append([tuple(r) for r in await checked_pool.fetch(
            "SELECT counter_account_id, amount FROM ledger.hold_captures WHERE hold_id = $1", world.order("s1o"))])
    assert captures[0] == captures[1] == [("$clearing", D(2))]


async def test_an_execution_applied_alone_parks_behind_a_parked_one_of_its_account(checked_pool):
    """A refused cancel is applied alone, not in a run: its claim, too, finds the parked fill of
    its account (round 21 review: the parked accounts, read before the batch, are now found by
    each transaction's claim), and it parks behind it rather than apply before it."""
    w = await World(checked_pool).open()
    flow = w.flow()
    holder = await checked_pool.acquire()
    try:
        async with holder.transaction():
            await holder.execute("SELECT ledger.lock_accounts($1::text[])", [w.acct("s2")])
            assert await settlement.apply_executions(flow[:3], w.uow, lock_wait=0.3) == 2  # x3 (b1-s2) parked
            refused = w.end(8, CANCEL_REJECTED, "b1o", "TOO_LATE_TO_CANCEL")  # s2 held still: x3 cannot go first
            assert await settlement.apply_executions([refused], w.uow, lock_wait=0.3) == 0
    finally:
        await checked_pool.release(holder)
    parked = await checked_pool.fetch("SELECT execution_id FROM ledger.parked_executions WHERE execution_id LIKE $1 "
                                      "ORDER BY seq", f"%-{w.tag}")
    assert [r[0] for r in parked] == [f"x3-{w.tag}", refused.execution_id]
    assert await settlement.unpark(w.uow) == 2


class _Commits:
    """A unit-of-work factory that counts the transactions committed through it."""

    def __init__(self, w: World) -> None:
        self.w, self.commits = w, 0

    def __call__(self):
        uow = self.w.uow()
        commit = uow.commit

        async def counted():
            self.commits += 1
            await commit()

        uow.commit = counted
        return uow


async def test_unpark_applies_a_market_makers_backlog_in_runs(checked_pool):
    """Round 23 rechaos: unpark applied parked executions one transaction each (about 9 a
    second under load), fewer than a market maker's new ones, which park behind its parked
    ones: once a settlement during trading had parked some, the backlog grew for as long as the
    market traded. unpark now applies them in the consumer's runs, each run's rows deleted in
    the transaction that applies it, exactly as one at a time would have."""
    one, w = await World(checked_pool).open(), await World(checked_pool).open()
    # A market maker (s1) selling to every buyer, round after round, with cancels between.
    def flow(world: World) -> list[Execution]:
        exs, n = [], 0
        for _ in range(3):
            for buyer in ("b1o", "b2o", "b3o"):
                n += 1
                exs.append(world.fill(n, "BUY", buyer, "s1o", 1, "99", 1, 10 - n))
        return exs + [world.end(99, CANCELLED, "b3o", "CANCELLED_BY_USER")]

    for ex in flow(one):
        await settlement.apply_execution(ex, one.uow)
    async with w.uow() as uow:
        await uow.settlement.park(flow(w))
        await uow.commit()
    counting = _Commits(w)
    assert await settlement.unpark(counting) == 10
    assert counting.commits == 1  # one run (10 is less than a batch)
    assert await _parked_ids(checked_pool, w) == []
    assert await w.state() == await one.state()
    # A repeat parked again (the consumer killed before it acknowledged) is only deleted.
    async with w.uow() as uow:
        await uow.settlement.park(flow(w)[:5])
        await uow.commit()
    assert await settlement.unpark(counting) == 0
    assert await _parked_ids(checked_pool, w) == []
    assert await w.state() == await one.state()


async def test_unpark_of_a_run_meeting_a_held_account_applies_the_others(checked_pool):
    """A parked run one of whose accounts is still held goes one execution at a time: the held
    account's executions, and those behind them on their accounts, stay parked; the rest apply."""
    one, w = await World(checked_pool).open(), await World(checked_pool).open()
    for ex in one.flow():
        await settlement.apply_execution(ex, one.uow)
    async with w.uow() as uow:
        await uow.settlement.park(w.flow())
        await uow.commit()
    holder = await checked_pool.acquire()
    try:
        async with holder.transaction():
            await holder.execute("SELECT ledger.lock_accounts($1::text[])", [w.acct("s2")])
            # x3 (b1-s2) waits for s2 and stays, and b1's cancel (x4) behind it; the others apply.
            assert await settlement.unpark(w.uow) == 5
            assert await _parked_ids(checked_pool, w) == [f"x{n}-{w.tag}" for n in (3, 4)]
    finally:
        await checked_pool.release(holder)
    assert await settlement.unpark(w.uow) == 2
    assert await w.state() == await one.state()


async def _innocents(w: World, n: int, first: int = 1) -> list[Execution]:
    """`n` one-share fills between a buyer and a seller of their own (ib, is), funded and held."""
    buyer, seller = w.acct("ib"), w.acct("is")
    await ledger.deposit(commands.Deposit(buyer, D("100"), "fund"), w.uow)
    await ledger.credit_shares(commands.CreditShares(seller, "AAPL", D(n), "seed", D("1")), w.uow)
    for name, account, asset, amount in (("ibo", buyer, "USD", D(n)), ("iso", seller, "AAPL", D(n))):
        await ledger.place_hold(commands.PlaceHold(w.order(name), account, w.order(name), asset, amount), w.uow)
    now = datetime.now(timezone.utc)
    return [Execution(execution_id=f"i{k}-{w.tag}", symbol="AAPL", type=FILL, order_id=w.order("ibo"),
                      account_id=buyer, side="BUY", counter_order_id=w.order("iso"), counter_account_id=seller,
                      price=D("1"), quantity=1, leaves=n - k + first - 1, counter_leaves=n - k + first - 1,
                      executed_at=now, trade_date=calendar.trading_day(now)) for k in range(first, first + n)]


async def test_a_parked_run_meeting_a_held_account_leaves_only_that_account_s(checked_pool):
    """A parked run one of whose accounts is held: the accounts held now are asked for, and the
    run goes on without their executions, in one transaction (not split down to the held one)."""
    w = await World(checked_pool).open()
    innocent = await _innocents(w, 7)
    first = w.fill(1, "BUY", "b1o", "s1o", 1, "99", 9, 9)
    async with w.uow() as uow:
        await uow.settlement.park([first, *innocent])
        await uow.commit()
    holder = await checked_pool.acquire()
    counting = _Commits(w)
    try:
        async with holder.transaction():
            await holder.execute("SELECT ledger.lock_accounts($1::text[])", [w.acct("b1")])
            assert await settlement.unpark(counting) == 7
            assert counting.commits == 1
            assert await _parked_ids(checked_pool, w) == [first.execution_id]
    finally:
        await checked_pool.release(holder)
    assert await settlement.unpark(w.uow) == 1


async def test_a_parked_row_whose_execution_names_another_id_is_a_failure(checked_pool, caplog):
    """unpark deletes a parked row by the id its execution names: one that names another (a row
    edited by hand) would be applied, and never deleted, on every round. It is a failure instead,
    left parked, and holds back only its own accounts."""
    from ledger_svc.service_layer.settlement import UNPARK_FAILURES

    w = await World(checked_pool).open()
    odd, other = w.fill(1, "BUY", "b1o", "s1o", 1, "99", 9, 9), w.end(2, CANCELLED, "b3o", "CANCELLED_BY_USER")
    async with w.uow() as uow:
        await uow.settlement.park([odd, other])
        await uow.commit()
    await checked_pool.execute("UPDATE ledger.parked_executions SET execution = jsonb_set(execution, "
                               "'{execution_id}', to_jsonb('elsewhere'::text)) WHERE execution_id = $1",
                               odd.execution_id)
    failures = UNPARK_FAILURES.labels("AAPL")._value.get()
    try:
        with caplog.at_level(logging.ERROR, logger="ledger_svc.settlement"):
            assert await settlement.unpark(w.uow) == 1  # b3's
        assert await _parked_ids(checked_pool, w) == [odd.execution_id]
        assert UNPARK_FAILURES.labels("AAPL")._value.get() == failures + 1
        assert not await checked_pool.fetchval("SELECT count(*) FROM ledger.executions WHERE execution_id = "
                                               "'elsewhere'")
    finally:
        await checked_pool.execute("DELETE FROM ledger.parked_executions WHERE execution_id LIKE $1", f"%-{w.tag}")


async def test_a_batch_behind_a_still_held_account_waits_briefly_for_its_parked_ones(checked_pool):
    """Review of round 24: the consumer applied its symbol's parked executions with its own 2 s
    lock wait, so while an account stayed held every batch of the symbol waited 2 s, holding
    the parked fill's other account (a market maker's, taken first in account order)
    meanwhile, and that account's hold placements (which wait 1 s) were refused ACCOUNT_BUSY.
    It waits as unpark does (UNPARK_LOCK_WAIT), then parks behind them."""
    import asyncio

    from tests.support.wait import eventually

    w = await World(checked_pool).open()
    maker, held = w.acct("b2"), w.acct("s2")  # the market maker sorts before the held account
    async with w.uow() as uow:
        await uow.settlement.park([w.fill(1, "BUY", "b2o", "s2o", 1, "99", 9, 4)])
        await uow.commit()
    holder = await checked_pool.acquire()
    try:
        async with holder.transaction():
            await holder.execute("SELECT ledger.lock_accounts($1::text[])", [held])
            for n in range(3):  # the market maker's batches, one after the other, as its consumer sends them
                batch = asyncio.create_task(settlement.apply_executions(
                    [w.fill(10 + n, "BUY", "b2o", "s1o", 1, "99", 8 - n, 9 - n)], w.uow))
                assert await eventually(lambda: _blocked_by(checked_pool, holder) if not batch.done() else True,
                                        timeout=10, delay=0.01)
                [placed] = await ledger.place_holds([commands.PlaceHold(
                    w.order(f"mm{n}"), maker, w.order(f"mm{n}"), "USD", D(1))], w.uow)
                assert isinstance(placed, ledger.model.Hold), placed  # not ACCOUNT_BUSY
                assert await batch == 0  # parked behind the held one
                await ledger.release_hold(commands.ReleaseHold(w.order(f"mm{n}")), w.uow)
    finally:
        await checked_pool.release(holder)
    assert await settlement.apply_executions([w.end(20, CANCELLED, "b2o", "CANCELLED_BY_USER")], w.uow) == 5


async def test_a_parked_execution_that_cannot_apply_costs_its_batch_a_few_transactions(checked_pool, caplog):
    """Review of round 24: a run that could not be applied together went one execution at a
    time, so one parked row that could never apply sent every other row of its batch (other
    accounts') through a transaction each, on every round, twenty rounds a second while the
    others applied, each logging its traceback. Now the run is split in two until the one that
    fails is alone; that one is not tried again for UNPARK_RETRY_FAILED seconds."""
    from ledger_svc.service_layer.settlement import UNPARK_FAILURES

    w = await World(checked_pool).open()
    buyer = w.acct("ib")
    innocent = await _innocents(w, 20)
    stuck = Execution(**{**w.fill(0, "BUY", "b1o", "s1o", 1, "99", 9, 9).__dict__, "order_id": w.order("gone")})
    async with w.uow() as uow:
        await uow.settlement.park([stuck, *innocent])
        await uow.commit()
    failures = UNPARK_FAILURES.labels("AAPL")._value.get()
    counting = _Commits(w)
    try:
        with caplog.at_level(logging.ERROR, logger="ledger_svc.settlement"):
            assert await settlement.unpark(counting) == 20
            assert counting.commits <= 5, counting.commits  # 21 split: 10 (5 (2 (1 + 1) + 3) + 5) + 11
            assert await _parked_ids(checked_pool, w) == [stuck.execution_id]
            assert UNPARK_FAILURES.labels("AAPL")._value.get() == failures + 1
            assert len([r for r in caplog.records if "could not be applied" in r.getMessage()]) == 1
            assert await settlement.unpark(counting) == 0  # not tried again at once
            assert UNPARK_FAILURES.labels("AAPL")._value.get() == failures + 1
            settlement._failed[stuck.execution_id] = 0  # its time is up
            assert await settlement.unpark(counting) == 0
            assert UNPARK_FAILURES.labels("AAPL")._value.get() == failures + 2
        state = await w.state()
        assert state["b1o", "hold"][0] == 0  # the stuck one moved nothing
        async with w.uow() as uow:
            assert (await uow.settlement.position(buyer, "AAPL")).quantity == 20
    finally:
        await checked_pool.execute("DELETE FROM ledger.parked_executions WHERE execution_id LIKE $1", f"%-{w.tag}")


async def test_the_migration_s_backfill_loses_no_fill_applied_while_it_runs(checked_pool):
    """Review of round 26: migration 0021's backfill may run while a ledger of the new release
    applies fills (its pods may start once the columns exist; or the migration runs again after a
    failed index build). It wrote each hold the journal's sum as it read it, over a fill applied
    meanwhile (one it then waited for the row of): the hold counted 3 of its 5 shares."""
    import asyncio
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "ledger_svc/migrations/0021.ledger-hold-fill-totals.sql").read_text()
    backfill = text[text.index("WITH RECURSIVE"):text.index("DROP INDEX CONCURRENTLY")]
    w = await World(checked_pool).open()
    await settlement.apply_execution(w.fill(1, "BUY", "b1o", "s1o", 3, "99.50", 7, 7), w.uow)
    # ... applied by a ledger of the previous release, which counted it nowhere (made so with the
    # triggers off, as a superuser can: the totals only grow, migration 0022).
    async with checked_pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute("UPDATE ledger.holds SET filled = 0, notional = 0 WHERE hold_id = ANY($1::text[])",
                           [w.order("b1o"), w.order("s1o")])
    second = w.fill(2, "BUY", "b1o", "s1o", 2, "99.50", 5, 5)  # by one of this release, during the backfill
    async with w.uow() as uow:
        assert (await uow.settlement.claim_executions([second])).ids
        await settlement._apply_in(uow, second)
        running = asyncio.create_task(checked_pool.execute(backfill))
        for _ in range(100):  # the backfill has read the journal and waits for the hold's row
            if await _blocked_by(checked_pool, uow.ledger.conn):
                break
            await asyncio.sleep(0.05)
        await uow.commit()
    await running
    async with w.uow() as uow:
        hold = await uow.ledger.get_hold(w.order("b1o"))
    assert (hold.filled, hold.notional) == (5, D("497.50"))


async def test_a_holds_fill_totals_are_never_lowered(checked_pool):
    """A hold's `filled` and `notional` (its order's fills applied, which GetPortfolio lists the
    order with; migration 0021) only grow (migration 0022): a statement writing less is a lost
    update or a hand-made correction, refused with the hold and both values. The ledger's own
    writes add to them or write them back as they are (a later fill, the hold's release)."""
    import asyncpg

    w = await World(checked_pool).open()
    await settlement.apply_execution(w.fill(1, "BUY", "b1o", "s1o", 3, "99.50", 7, 7), w.uow)
    hold = w.order("b1o")
    for change, said in (("filled = 2", "filled 3 -> 2, notional 298.5000 -> 298.5000"),
                         ("notional = 298.49", "filled 3 -> 3, notional 298.5000 -> 298.4900"),
                         ("filled = 0, notional = 0", "filled 3 -> 0, notional 298.5000 -> 0.0000"),
                         ("filled = 4, notional = 1", "filled 3 -> 4, notional 298.5000 -> 1.0000")):
        with pytest.raises(asyncpg.CheckViolationError) as err:
            await checked_pool.execute(f"UPDATE ledger.holds SET {change} WHERE hold_id = $1", hold)
        assert str(err.value) == f"hold {hold}: filled and notional (its order's fills applied) never decrease: {said}"
    await checked_pool.execute("UPDATE ledger.holds SET filled = 3, notional = 298.50 WHERE hold_id = $1", hold)
    await settlement.apply_execution(w.fill(2, "BUY", "b1o", "s1o", 2, "99.00", 5, 5), w.uow)
    await settlement.apply_execution(w.end(3, CANCELLED, "b1o", "CANCELLED_BY_USER"), w.uow)
    row = await checked_pool.fetchrow("SELECT filled, notional, status FROM ledger.holds WHERE hold_id = $1", hold)
    assert tuple(row) == (5, D("496.50"), "RELEASED")


async def test_a_replace_without_a_recorded_transfer_carries_no_fills_to_the_new_hold(checked_pool):
    """The engine's REPLACED of an order no transfer was prepared for (a replace that did not
    come through order_svc) opens the new hold without the old one's fills: the totals follow
    recorded transfers only, as the invariant and migration 0021 do (review of round 26: the
    new hold counted 3 shares the journal gave it none of)."""
    from meshkit.executions import REPLACED
    from tests.support.invariants import check_holds

    w = await World(checked_pool).open()
    await settlement.apply_execution(w.fill(1, "BUY", "b1o", "s1o", 3, "99.50", 7, 7), w.uow)
    now = datetime.now(timezone.utc)
    new = f"b1n-{w.tag}"
    await settlement.apply_execution(Execution(
        execution_id=f"x2-{w.tag}", symbol="AAPL", type=REPLACED, order_id=w.order("b1o"), account_id=w.acct("b1"),
        side="BUY", leaves=7, new_order_id=new, executed_at=now, trade_date=calendar.trading_day(now)), w.uow)
    async with w.uow() as uow:
        h = await uow.ledger.get_hold(new)
        problems = await check_holds(uow.ledger.conn)
    assert (h.filled, h.notional) == (0, 0)
    assert not [p for p in problems if new in p], problems
