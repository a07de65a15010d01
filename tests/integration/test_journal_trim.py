"""Trimming the execution journal (`stockmesh journal trim`): only settled days, never past what
a consumer has not acknowledged, and a trimmed day's later reconciliation knows its journal is
gone. A database and a namespace of their own: no other test's fills or executions in them."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import asyncpg
import pytest

from ledger_svc.entrypoints.settlement_server import SettlementServicer
from ledger_svc.service_layer import commands, handlers as ledger, settlement
from ledger_svc.service_layer.runner import JOURNAL_LOCK, settle_and_reconcile, trim_journal
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit import bus, calendar, db, executions
from meshkit.errors import FailedPrecondition, InvalidArgument
from stockmesh.common.v1 import common_pb2
from stockmesh.ledger.v1 import settlement_service_pb2 as spb
from stockmesh.matching.v1 import matching_pb2
from tests.support import invariants
from tests.support.funding import funded_ledger
from tests.support.wait import eventually, executions_drained

pytestmark = pytest.mark.integration

D1, D2, D3 = date(2026, 11, 2), date(2026, 11, 3), date(2026, 11, 4)  # Monday to Wednesday


async def test_trim_purges_settled_days_up_to_what_every_consumer_acknowledged(pg_server_url, nats_conn, nats_url):
    from tests.conftest import fresh_database

    async with fresh_database(pg_server_url) as url:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=5)
        uow = lambda: LedgerUnitOfWork(pool)  # noqa: E731
        js = nats_conn.jetstream()
        ns = f"jt{uuid.uuid4().hex[:8]}"
        stream = await bus.ensure_stream(js, ns, "EXECUTIONS")
        applier = asyncio.create_task(executions.consume(js, ns, "ledger",
                                                         lambda ex: settlement.apply_execution(ex, uow)))
        try:
            # One fill a day, Monday to Wednesday, in the journal in that order.
            await ledger.deposit(commands.Deposit("buyer", Decimal("1000.00"), "fund"), uow)
            await ledger.credit_shares(commands.CreditShares("seller", "AAPL", Decimal(30), "seed"), uow)
            fills = []
            for n, day in enumerate((D1, D2, D3), 1):
                buy, sell = str(uuid.uuid4()), str(uuid.uuid4())
                await ledger.place_hold(commands.PlaceHold(buy, "buyer", buy, "USD", Decimal("100.00")), uow)
                await ledger.place_hold(commands.PlaceHold(sell, "seller", sell, "AAPL", Decimal(10)), uow)
                ex = matching_pb2.Execution(
                    execution_id=f"AAPL:{ns}:{n}", symbol="AAPL", type=matching_pb2.EXECUTION_TYPE_FILL,
                    order_id=buy, account_id="buyer", side=common_pb2.SIDE_BUY, counter_order_id=sell,
                    counter_account_id="seller", price="10.00", quantity=10, leaves_quantity=0,
                    counter_leaves_quantity=0)
                ex.time.FromDatetime(datetime.combine(day, time(11, 30), tzinfo=calendar.NEW_YORK))
                await js.publish(bus.subject(ns, "executions", "AAPL"), ex.SerializeToString(),
                                 headers={"Nats-Msg-Id": ex.execution_id})
                fills.append(ex.execution_id)
            assert await executions_drained(js, ns, "ledger", ["AAPL"])

            # Monday and Tuesday not settled: refused, naming the first unsettled day.
            with pytest.raises(FailedPrecondition) as refused:
                await trim_journal(D3, uow, js, ns)
            assert refused.value.reason == "FILLS_NOT_SETTLED" and "2 fills" in refused.value.message
            assert "first on 2026-11-02" in refused.value.message
            monday = await settle_and_reconcile(D1, uow, js, ns, catch_up=1)
            assert (monday.fills_settled, monday.discrepancies) == (1, [])
            assert monday.reconciled_against == "the execution journal"
            with pytest.raises(FailedPrecondition) as refused:
                await trim_journal(D3, uow, js, ns)
            assert "1 fills" in refused.value.message and "first on 2026-11-03" in refused.value.message
            assert (await settle_and_reconcile(D2, uow, js, ns, catch_up=1)).discrepancies == []

            # Settled, but order_svc has never read AAPL's executions: refused.
            with pytest.raises(FailedPrecondition) as refused:
                await trim_journal(D3, uow, js, ns)
            assert refused.value.reason == "CONSUMER_MISSING" and f"orders_AAPL on {stream}" in refused.value.message

            # order_svc's consumer (played here) took all three and acknowledged only Monday's.
            sub = await js.pull_subscribe(bus.subject(ns, "executions", "AAPL"), durable="orders_AAPL", stream=stream)
            taken = await sub.fetch(3, timeout=5)
            assert [m.metadata.sequence.stream for m in taken] == [1, 2, 3]
            await taken[0].ack_sync()

            dry = await trim_journal(D3, uow, js, ns, dry_run=True)
            assert (dry.first_seq, dry.cut, dry.purged, dry.held_back_by) == (1, 2, 1, "orders_AAPL")
            assert (await js.stream_info(stream)).state.first_seq == 1  # a dry run purges nothing
            said: list[str] = []
            trim = await trim_journal(D3, uow, js, ns, progress=said.append)
            assert (trim.cut, trim.purged, trim.held_back_by) == (2, 1, "orders_AAPL")
            assert any("orders_AAPL has not acknowledged beyond sequence 1" in s for s in said), said
            assert (await js.stream_info(stream)).state.first_seq == 2

            # Once it has acknowledged the rest, the CLI trims Tuesday too and stops at Wednesday.
            for m in taken[1:]:
                await m.ack_sync()
            assert await eventually(lambda: _acked(js, stream, "orders_AAPL", 3))
            cmd = [sys.executable, "-m", "meshkit.cli", "journal", "trim", "--before", D3.isoformat(),
                   "--database-url", url, "--nats-url", nats_url, "--namespace", ns]
            done = subprocess.run(cmd, capture_output=True, text=True)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "purged 1 executions published before 2026-11-04 (below sequence 3)" in done.stdout, done.stdout
            assert "stopped short" not in done.stdout
            state = (await js.stream_info(stream)).state
            assert (state.first_seq, state.last_seq, state.messages) == (3, 3, 1)
            again = subprocess.run(cmd, capture_output=True, text=True)
            assert again.returncode == 0 and "purged 0 executions" in again.stdout, again.stdout + again.stderr
            bad = subprocess.run(cmd[:6] + ["2026-11-31"] + cmd[7:], capture_output=True, text=True)
            assert bad.returncode == 2 and "is not a date" in bad.stderr

            # Monday and Tuesday are gone from the journal: reconciled against the ledger alone, with
            # nothing called missing from the journal; Wednesday still against the journal.
            for day in (D1, D2):
                again_day = await settle_and_reconcile(day, uow, js, ns, catch_up=1)
                assert again_day.discrepancies == [], again_day.discrepancies
                assert again_day.reconciled_against == ("the ledger's own records "
                                                        "(the execution journal was trimmed before 2026-11-04)")
            wednesday = await settle_and_reconcile(D3, uow, js, ns, catch_up=1)
            assert (wednesday.fills_settled, wednesday.discrepancies) == (1, [])
            assert wednesday.reconciled_against == "the execution journal"
            async with pool.acquire() as conn:
                trims = [tuple(r) for r in await conn.fetch(
                    "SELECT before_day, before_seq FROM ledger.journal_trims ORDER BY trim_id")]
            assert trims == [(D3, 2), (D3, 3)]

            # The same over SettlementService (a scheduler's way), on ledger_svc's own port.
            servicer = SettlementServicer(uow, js, ns)
            reply = await servicer.TrimJournal(spb.TrimJournalRequest(before="2026-11-05", dry_run=True), None)
            assert (reply.first_sequence, reply.cut_sequence, reply.purged, reply.held_back_by) == (3, 4, 1, "")
            with pytest.raises(InvalidArgument):
                await servicer.TrimJournal(spb.TrimJournalRequest(before="Thursday"), None)
            tomorrow = calendar.trading_day(datetime.now(timezone.utc)) + timedelta(days=1)
            with pytest.raises(InvalidArgument) as refused:  # it would purge the day still trading
                await servicer.TrimJournal(spb.TrimJournalRequest(before=tomorrow.isoformat(), dry_run=True), None)
            assert [v.field for v in refused.value.violations] == ["before"]
            assert "has not come yet" in refused.value.violations[0].description
            assert not await invariants.check(pool)
        finally:
            applier.cancel()
            await asyncio.gather(applier, return_exceptions=True)
            await js.delete_stream(stream)
            await pool.close()


async def test_trim_refused_without_a_journal(pool, nats_conn):
    with pytest.raises(FailedPrecondition) as refused:
        await trim_journal(D3, lambda: LedgerUnitOfWork(pool), nats_conn.jetstream(), f"none{uuid.uuid4().hex[:6]}")
    assert refused.value.reason == "JOURNAL_NOT_FOUND"


async def test_a_trim_and_a_settlement_never_read_and_purge_the_journal_at_once(pool, nats_conn):
    uow = lambda: LedgerUnitOfWork(pool)  # noqa: E731
    js, ns, long_ago = nats_conn.jetstream(), f"none{uuid.uuid4().hex[:6]}", date(2000, 1, 3)
    async with db.advisory_lock(pool, JOURNAL_LOCK, shared=True):  # as a settlement running holds it
        with pytest.raises(FailedPrecondition) as refused:
            await trim_journal(D3, uow, js, ns)
        assert refused.value.reason == "SETTLEMENT_RUNNING"
    with pytest.raises(FailedPrecondition) as refused:  # the settlement over: the trim's own checks
        await trim_journal(D3, uow, js, ns)
    assert refused.value.reason == "JOURNAL_NOT_FOUND"

    async def waiting_for_the_lock() -> int:
        return await pool.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                                   "AND objid = ($1::bigint & 4294967295)", db.lock_key(JOURNAL_LOCK))

    async with db.advisory_lock(pool, JOURNAL_LOCK):  # as a trim running holds it
        settling = asyncio.create_task(settle_and_reconcile(long_ago, uow, None, ns, catch_up=0))
        assert await eventually(waiting_for_the_lock) == 1 and not settling.done()
    report = await asyncio.wait_for(settling, 30)  # the trim over: the settlement goes on
    assert report.fills_settled == 0 and report.reconciled_against.startswith("the ledger's own records")
    assert await waiting_for_the_lock() == 0


async def _acked(js, stream: str, durable: str, seq: int) -> bool:
    info = await js.consumer_info(stream, durable)
    return info.ack_floor.stream_seq >= seq and not info.num_ack_pending



async def sell_all_at_9_99(uow) -> None:
    """The seller's 10 AAPL to the buyer at 9.99 on D1, the buyer's hold 100.00: proceeds 99.90."""
    buy, sell = str(uuid.uuid4()), str(uuid.uuid4())
    await ledger.place_hold(commands.PlaceHold(buy, "buyer", buy, "USD", Decimal("100.00")), uow)
    await ledger.place_hold(commands.PlaceHold(sell, "seller", sell, "AAPL", Decimal(10)), uow)
    ex = matching_pb2.Execution(
        execution_id="AAPL:clearing:1", symbol="AAPL", type=matching_pb2.EXECUTION_TYPE_FILL, order_id=buy,
        account_id="buyer", side=common_pb2.SIDE_BUY, counter_order_id=sell, counter_account_id="seller",
        price="9.99", quantity=10, leaves_quantity=0, counter_leaves_quantity=0)
    ex.time.FromDatetime(datetime.combine(D1, time(11, 30), tzinfo=calendar.NEW_YORK))
    assert await settlement.apply_execution(executions.from_proto(ex), uow)


async def test_balances_and_settled_proceeds_changed_by_hand_are_reported(pg_server_url):
    """The figures a customer's withdrawal is checked against are materialised in
    ledger.balances, which the database cannot make append-only (every movement updates
    them): the reconciliation compares them with the postings and holds they come from, and
    settled proceeds with their settlement entries (acceptance round 12: a balance raised by
    0.01 by hand was withdrawn, and settlement said "discrepancies none")."""
    async with funded_ledger(pg_server_url) as uow:
        await sell_all_at_9_99(uow)
        settled = await settle_and_reconcile(D1, uow, None, "x", catch_up=0)
        assert (settled.fills_settled, settled.discrepancies) == (1, [])
        async with uow() as u:
            await u.conn.execute("""
                UPDATE ledger.balances b SET posted = posted + 0.01 FROM ledger.books k
                 WHERE k.book_id = b.book_id AND (k.owner, k.asset) = ('seller', 'USD')""")
            await u.conn.execute("""
                UPDATE ledger.balances b SET held = held + 2 FROM ledger.books k
                 WHERE k.book_id = b.book_id AND (k.owner, k.asset) = ('buyer', 'AAPL')""")
            # Proceeds are history (migration 0014): changed only with the triggers off, as a
            # superuser can; the reconciliation still says so.
            await u.conn.execute("SET LOCAL session_replication_role = replica")
            await u.conn.execute("UPDATE ledger.unsettled SET amount = 99.95 WHERE fill_id = 'AAPL:clearing:1'")
            await u.commit()
        report = await settlement.reconcile(D1, uow, None, settlement.SettlementReport(D1))
        assert [(d.kind, d.reference, d.detail) for d in report.discrepancies] == [
            ("HELD_OFF_HOLDS", "buyer AAPL", "held 2, pending holds reserve 0"),
            ("BALANCE_OFF_POSTINGS", "seller USD", "balance 99.91, postings sum to 99.90"),
            ("PROCEEDS_OFF_SETTLEMENT", "AAPL:clearing:1", "proceeds 99.95, settled 99.90"),
        ]


async def test_proceeds_owed_cannot_be_changed_and_forged_ones_are_not_paid(pg_server_url):
    """Acceptance round 14 A: an UPDATE adding 1,000.00 to a sale's proceeds owed showed in the
    customer's portfolio at once, and settlement paid it out into cash they could withdraw. Now
    the row refuses the change; and one changed with the triggers off (as a superuser can) is
    left unpaid, and the report names the fill, the seller and both amounts."""
    async with funded_ledger(pg_server_url) as uow:
        await sell_all_at_9_99(uow)
        async with uow() as u:
            for change in ("UPDATE ledger.unsettled SET amount = amount + 1000 WHERE fill_id = 'AAPL:clearing:1'",
                           "DELETE FROM ledger.unsettled WHERE fill_id = 'AAPL:clearing:1'"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="proceeds owed are history"):
                    async with u.conn.transaction():
                        await u.conn.execute(change)
            await u.conn.execute("SET LOCAL session_replication_role = replica")
            await u.conn.execute("UPDATE ledger.unsettled SET amount = amount + 1000 WHERE fill_id = 'AAPL:clearing:1'")
            await u.commit()
        report = await settle_and_reconcile(D1, uow, None, "x", catch_up=0)
        assert report.fills_settled == 0 and report.amount_settled == 0
        kinds = {(d.kind, d.reference): d.detail for d in report.discrepancies}
        assert kinds[("PROCEEDS_OFF_FILL", "AAPL:clearing:1")] == (
            "proceeds of seller 1099.90, the buyer paid 99.90 into clearing: not paid out")
        assert ("FILL_UNSETTLED", "AAPL:clearing:1") in kinds
        async with uow() as u:
            assert await u.conn.fetchval("SELECT settled_at FROM ledger.unsettled WHERE fill_id = 'AAPL:clearing:1'") \
                is None


async def test_clearing_holds_exactly_the_unsettled_proceeds_and_the_report_says_when_not(pg_server_url):
    """Every cent in $clearing came from a buyer's fill and is owed to its seller until it
    settles: the reconciliation compares the two (acceptance round 10: $clearing was drawn to
    -999,900.00 and settlement still reported no discrepancy)."""

    async with funded_ledger(pg_server_url) as uow:
        await sell_all_at_9_99(uow)

        def clearing(report) -> list[str]:
            return [d.detail for d in report.discrepancies if d.kind == "CLEARING_UNBALANCED"]
        # Before and after the day settles: 99.90 in clearing, owed to the seller; then none.
        assert clearing(await settlement.reconcile(D1, uow, None, settlement.SettlementReport(D1))) == []
        settled = await settle_and_reconcile(D1, uow, None, "x", catch_up=0)
        assert (settled.fills_settled, settled.discrepancies) == (1, [])
        # A cent into clearing from anywhere else than a fill (here a capture without one).
        stray = str(uuid.uuid4())
        await ledger.place_hold(commands.PlaceHold(stray, "buyer", stray, "USD", Decimal("5.00")), uow)
        await ledger.capture_hold(commands.CaptureHold(stray, f"{stray}:c", Decimal("5.00")), uow)
        again = await settlement.reconcile(D1, uow, None, settlement.SettlementReport(D1))
        assert clearing(again) == ["holds 5.00 of cash and owes 0.00 of unsettled proceeds: they should be equal"]
