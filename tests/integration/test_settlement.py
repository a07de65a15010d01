"""Fills settled in the ledger from the execution stream: holds captured, cash and shares moved
exactly once, positions' average cost, unsettled proceeds until `stockmesh settle`."""
from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from ledger_svc.service_layer import commands, handlers as ledger, settlement
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit import bus, calendar
from order_svc.domain.model import OrderRequest, OrderType, Side, Status, TimeInForce
from order_svc.service_layer import handlers, lifecycle
from tests.support.funding import funded_ledger
from tests.support.wait import executions_drained
from stockmesh.common.v1 import common_pb2
from stockmesh.matching.v1 import matching_pb2

pytestmark = pytest.mark.integration


def order(account: str, side: Side, qty: int, price: str) -> OrderRequest:
    return OrderRequest(account_id=account, client_order_id=uuid.uuid4().hex, symbol="AAPL", side=side,
                        type=OrderType.LIMIT, quantity=qty, limit_price=Decimal(price), stop_price=None,
                        time_in_force=TimeInForce.GTC)


async def publish(js, namespace: str, ex: matching_pb2.Execution, msg_id: str | None = None) -> None:
    ex.time.FromDatetime(datetime.now(timezone.utc))
    await js.publish(bus.subject(namespace, "executions", ex.symbol), ex.SerializeToString(),
                     headers={"Nats-Msg-Id": msg_id or ex.execution_id})


async def wait_applied(pool, ids: list[str]) -> None:
    """Until both the ledger and order_svc have applied every execution in `ids`."""
    for _ in range(200):
        async with pool.acquire() as conn:
            n = await conn.fetchval("SELECT count(*) FROM ledger.executions WHERE execution_id = ANY($1)", ids)
            m = await conn.fetchval("SELECT count(*) FROM orders.executions_applied WHERE execution_id = ANY($1)", ids)
        if n == m == len(ids):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"ledger applied {n}, orders {m} of {len(ids)} executions")


async def test_two_fills_settle_exactly_once_then_t_plus_1(order_deps, execution_consumers, checked_pool, namespace,
                                                           database_url, nats_url, tmp_path):
    js = execution_consumers
    uow = lambda: LedgerUnitOfWork(checked_pool)  # noqa: E731
    buyer, seller = f"buy-{uuid.uuid4().hex[:6]}", f"sell-{uuid.uuid4().hex[:6]}"
    await ledger.deposit(commands.Deposit(buyer, Decimal("10000.00"), "fund"), uow)
    await ledger.credit_shares(commands.CreditShares(seller, "AAPL", Decimal(100), "seed"), uow)
    await ledger.credit_shares(commands.CreditShares(buyer, "AAPL", Decimal(10), "seed"), uow)
    buy = await handlers.place_order(order(buyer, Side.BUY, 10, "187.25"), order_deps)
    sell = await handlers.place_order(order(seller, Side.SELL, 10, "187.00"), order_deps)
    assert buy.status is sell.status is Status.NEW
    tag = uuid.uuid4().hex[:6]

    def fill(n: int, qty: int, leaves: int) -> matching_pb2.Execution:
        return matching_pb2.Execution(
            execution_id=f"AAPL:{tag}:{n}", symbol="AAPL", type=matching_pb2.EXECUTION_TYPE_FILL,
            order_id=str(buy.order_id), account_id=buyer, side=common_pb2.SIDE_BUY,
            counter_order_id=str(sell.order_id), counter_account_id=seller, price="187.00", quantity=qty,
            leaves_quantity=leaves, counter_leaves_quantity=leaves)

    await publish(js, namespace, fill(1, 4, 6))
    await publish(js, namespace, fill(2, 6, 0))
    await publish(js, namespace, fill(1, 4, 6), msg_id=f"again-{tag}")  # a repeat past the duplicate window
    await wait_applied(checked_pool, [f"AAPL:{tag}:1", f"AAPL:{tag}:2"])
    for durable in ("ledger", "orders"):  # both consumers have taken the repeat too
        assert await executions_drained(js, namespace, durable, ["AAPL"])

    b = await ledger.cash_balance(buyer, uow)
    assert (b.total, b.held, b.available) == (Decimal("8130.00"), 0, Decimal("8130.00"))  # 10 × 187.00 paid
    done = await handlers.get_order(buyer, buy.order_id, order_deps)
    assert (done.status, done.filled_quantity, done.average_fill_price) == (Status.FILLED, 10, Decimal("187.0000"))
    # Both accounts' update streams hold every change, in gapless sequence.
    for account, placed in ((buyer, buy), (seller, sell)):
        updates = []
        stream = lifecycle.stream_updates(account, 0, order_deps, NoWakeups())
        async for seq, o, f in stream:
            updates.append((seq, o.status, o.filled_quantity, f.quantity if f else None))
            if len(updates) == 3:
                break
        await stream.aclose()
        assert updates == [(1, Status.NEW, 0, None), (2, Status.PARTIALLY_FILLED, 4, 4), (3, Status.FILLED, 10, 6)]
    s = await ledger.cash_balance(seller, uow)
    assert (s.total, s.settled, s.unsettled, s.available) == (Decimal("1870.00"), 0, Decimal("1870.00"), 0)
    # The proceeds count in the total and cannot be withdrawn yet: the refusal says why.
    from ledger_svc.domain.model import InsufficientFunds

    with pytest.raises(InsufficientFunds) as refused:
        await ledger.withdraw(commands.Withdraw(seller, Decimal("1.00"), "too-soon"), uow)
    assert refused.value.message == ("available cash 0.00 is less than 1.00 "
                                     "(sale proceeds of 1870.00 are not available until they settle)")
    assert refused.value.metadata["unsettled"] == "1870.00"
    async with checked_pool.acquire() as conn:
        holds = {r["hold_id"]: r["status"] for r in await conn.fetch(
            "SELECT hold_id, status FROM ledger.holds WHERE hold_id = ANY($1)", [str(buy.order_id), str(sell.order_id)])}
        positions = {r["account_id"]: (r["quantity"], r["cost"]) for r in await conn.fetch(
            "SELECT account_id, quantity, cost FROM ledger.positions WHERE account_id = ANY($1)", [buyer, seller])}
    assert holds == {str(buy.order_id): "RELEASED", str(sell.order_id): "CAPTURED"}  # 2.50 of the buy hold came back
    assert (await ledger.book_balance(buyer, "AAPL", uow)).posted == 20
    assert (await ledger.book_balance(seller, "AAPL", uow)).posted == 90
    assert positions[buyer] == (20, Decimal("1870.00000000"))  # the seeded 10 came in at a cost of zero
    assert positions[seller] == (90, 0)

    day = calendar.trading_day(datetime.now(timezone.utc))
    cmd = [sys.executable, "-m", "meshkit.cli", "settle", "--date", day.isoformat(), "--database-url", database_url,
           "--before-close", "--nats-url", nats_url, "--namespace", namespace]  # other tests trade today
    # A namespace mistyped: refused, naming the database's own (its order flow's), nothing settled.
    wrong = subprocess.run([*cmd[:-1], f"nope{uuid.uuid4().hex[:6]}"], capture_output=True, text=True)
    assert wrong.returncode == 2 and f"holds the mesh data of namespace {namespace!r}" in wrong.stderr, wrong.stderr
    assert "Traceback" not in wrong.stderr
    assert (await ledger.cash_balance(seller, uow)).unsettled == Decimal("1870.00")  # nothing settled
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert "fills settled now       2" in first.stdout, first.stdout + first.stderr
    assert "  settled 2 of 2 fills\n" in first.stderr, first.stderr  # its progress (round 19: no total)
    s = await ledger.cash_balance(seller, uow)
    assert (s.total, s.settled, s.unsettled, s.available) == (Decimal("1870.00"), Decimal("1870.00"), 0, Decimal("1870.00"))
    assert re.search(r"proceeds settled now +\d+\.\d\d\n", first.stdout), first.stdout  # money in cents
    second = subprocess.run(cmd, capture_output=True, text=True)
    before = int(first.stdout.split("fills settled before")[1].split()[0])  # other tests' fills of the day
    assert "fills settled now       0" in second.stdout and f"fills settled before    {before + 2}" in second.stdout
    assert (await ledger.cash_balance(seller, uow)) == s
    assert second.returncode == first.returncode  # other tests' fills may be in the same day's report
    assert "reconciled against      the execution journal\n" in second.stdout
    # Without --nats-url: the NATS of the mesh in --data-dir, if it runs this namespace; else
    # the ledger's own records, and the report and stderr say why.
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "STOCKMESH_DATA_DIR")}
    without = [*cmd[:cmd.index("--nats-url")], *cmd[cmd.index("--namespace"):], "--data-dir"]
    (tmp_path / "mesh").mkdir()
    running = {"ready": True, "launcher_pid": os.getpid()}  # a mesh up: its launcher alive
    (tmp_path / "mesh" / "mesh.json").write_text(json.dumps({"namespace": namespace, "nats_url": nats_url, **running}))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mesh.json").write_text(json.dumps({"namespace": "another", "nats_url": nats_url, **running}))
    mesh = subprocess.run([*without, str(tmp_path / "mesh")], capture_output=True, text=True, env=env)
    assert f"read the execution journal on {nats_url}" in mesh.stderr, mesh.stderr
    assert "reconciled against      the execution journal\n" in mesh.stdout, mesh.stdout
    for folder in ("other", "none"):
        alone = subprocess.run([*without, str(tmp_path / folder)], capture_output=True, text=True, env=env)
        assert "no NATS given" in alone.stderr, alone.stderr
        assert ("reconciled against      the ledger's own records (no NATS was given: the execution journal was not "
                "read)") in alone.stdout, alone.stdout


async def test_settle_takes_the_namespace_of_the_database_it_is_given(pg_server_url, nats_url, tmp_path):
    """Round 23: `settle --database-url` of a mesh of another namespace, without --namespace,
    took the default one: it read no journal and said only "no NATS given". Now it takes the
    namespace the database belongs to (its `mesh.owner` claim, else its order flow's), and
    refuses another given by hand; a database no mesh has used keeps the one given."""
    import asyncpg

    from tests.conftest import fresh_database

    today = calendar.trading_day(datetime.now(timezone.utc))
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "STOCKMESH_DATA_DIR", "STOCKMESH_NAMESPACE")}
    async with fresh_database(pg_server_url) as url:
        def settle(*more: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "meshkit.cli", "settle", "--date", today.isoformat(),
                                   "--before-close", "--database-url", url, "--data-dir", str(tmp_path), *more],
                                  capture_output=True, text=True, env=env, timeout=120)
        # No mesh's yet: the namespace given, whose journal is not there, which is not "no discrepancies".
        missing = settle("--nats-url", nats_url, "--namespace", f"nope{uuid.uuid4().hex[:6]}")
        assert missing.returncode == 1 and "day not settled: there is no execution journal" in missing.stderr, \
            missing.stderr
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("INSERT INTO mesh.owner (namespace) VALUES ('ownerns')")
        finally:
            await conn.close()
        own = settle()
        assert own.returncode == 0, own.stdout + own.stderr
        assert "a mesh of namespace 'ownerns' running in" in own.stderr, own.stderr  # its NATS looked up
        other = settle("--namespace", "another")
        assert other.returncode == 2 and "holds the mesh data of namespace 'ownerns', not 'another'" in other.stderr \
            and "Traceback" not in other.stderr, other.stderr


def trading_day_before(day: date) -> date:
    """The last day before `day` with a session: one whose close settlement waits for (a day
    without one counts as closed once it is over, ledger_svc.adapters.sessions)."""
    return next(d for d in (day - timedelta(days=back) for back in range(1, 11)) if calendar.session(d) is not None)


async def test_settle_refuses_a_day_whose_session_has_not_closed(pg_server_url, tmp_path):
    """A day still trading is not final: settled now, a second run would settle the fills made
    since (acceptance round 12: 624 fills, then 14 more seconds later, both "discrepancies
    none"). `stockmesh settle` waits for the day's close (or a later day's), unless told
    --before-close; a day older than the closes kept closed long ago."""
    import asyncpg

    from order_svc.service_layer.session import close_session
    from order_svc.service_layer.unit_of_work import OrderUnitOfWork
    from tests.conftest import fresh_database

    today = calendar.trading_day(datetime.now(timezone.utc))
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "STOCKMESH_DATA_DIR")}
    async with fresh_database(pg_server_url) as url:
        def settle(day, *more: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "meshkit.cli", "settle", "--date", day.isoformat(),
                                   "--database-url", url, "--namespace", "closing", "--data-dir", str(tmp_path),
                                   *more], capture_output=True, text=True, env=env)
        yesterday = trading_day_before(today)  # a day without a session that is over is closed
        for day in (today, yesterday):
            refused = settle(day)
            assert refused.returncode == 1 and f"day not settled: the session of {day} has not closed" in \
                refused.stderr and f"stockmesh session close --date {day}" in refused.stderr, refused.stderr
            assert "Settlement of" not in refused.stdout
        assert settle(today, "--before-close").returncode == 0
        assert settle(today - calendar.CLOSES_KEPT).returncode == 0  # long closed
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        try:
            assert await close_session(today, lambda: OrderUnitOfWork(pool), "closing")
        finally:
            await pool.close()
        for day in (today, yesterday):  # today's close came after yesterday's trading too
            done = settle(day)
            assert done.returncode == 0 and "fills settled now       0" in done.stdout, done.stdout + done.stderr


async def test_the_end_of_day_runbook_needs_only_the_mesh_s_data_folder(pg_server_url, nats_url, nats_conn, tmp_path):
    """On `stockmesh up`'s always-open market, `settle` waits for `session close`, which took
    only --database-url: the launcher's PostgreSQL gets a new port at every start, so the
    operator copied it out of mesh.json by hand (round 15). Now `session close`, `settle`,
    `journal trim`, `consumers` and `candles import` all take the mesh's database and NATS from
    --data-dir, and say so when there is no mesh of that namespace there."""
    from tests.conftest import fresh_database

    namespace = f"runbook{uuid.uuid4().hex[:8]}"
    day = calendar.trading_day(datetime.now(timezone.utc))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL", "STOCKMESH_DATA_DIR")}
    for base in bus.STREAMS:
        await bus.ensure_stream(nats_conn.jetstream(), namespace, base)
    async with fresh_database(pg_server_url) as url:
        state = {"namespace": namespace, "database_url": url, "nats_url": nats_url, "ready": True,
                 "launcher_pid": os.getpid()}  # a mesh up: its launcher alive
        (tmp_path / "mesh.json").write_text(json.dumps(state))
        csv = tmp_path / "candles.csv"
        csv.write_text("symbol,start_time,interval,open,high,low,close,volume\n"
                       "AAPL,2026-01-05T14:30:00Z,1m,180.00,181.00,179.50,180.50,1000\n")

        def cli(*args: str, folder=tmp_path) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "meshkit.cli", *args, "--data-dir", str(folder)],
                                  capture_output=True, text=True, env=env, timeout=120)

        closed = cli("session", "close", "--date", day.isoformat(), "--namespace", namespace)
        assert closed.returncode == 0 and f"session {day} closed" in closed.stdout, closed.stdout + closed.stderr
        settled = cli("settle", "--date", day.isoformat(), "--namespace", namespace)
        assert settled.returncode == 0 and "fills settled now       0" in settled.stdout, settled.stdout + settled.stderr
        trimmed = cli("journal", "trim", "--before", day.isoformat(), "--dry-run", "--namespace", namespace)
        assert "Missing option" not in trimmed.stderr and "no --" not in trimmed.stderr, trimmed.stderr
        listed = cli("consumers")  # the mesh's namespace, from mesh.json
        assert listed.returncode == 0 and "0 of 0 durable consumers" in listed.stdout, listed.stdout + listed.stderr
        migrated = cli("migrate")
        assert migrated.returncode == 0 and "up to date" in migrated.stdout, migrated.stdout + migrated.stderr
        imported = cli("candles", "import", str(csv))
        assert imported.returncode == 0 and "1 candles: 1 new" in imported.stdout, imported.stdout + imported.stderr

        other = cli("session", "close", "--namespace", "another")
        assert other.returncode == 2 and "runs namespace" in other.stderr, other.stderr
        # No --namespace: the mesh's own (round 15: every command of the runbook needed it).
        again = cli("settle", "--date", day.isoformat())
        assert again.returncode == 0 and "fills settled now       0" in again.stdout, again.stdout + again.stderr
        # A mesh that has stopped: its mesh.json stays, its servers do not (round 15).
        (tmp_path / "mesh.json").write_text(json.dumps({**state, "ready": False}))
        stopped = cli("session", "close", "--namespace", namespace)
        assert stopped.returncode == 2 and "is not running" in stopped.stderr, stopped.stderr
        (tmp_path / "none").mkdir()
        nowhere = cli("consumers", "--namespace", namespace, folder=tmp_path / "none")
        assert nowhere.returncode == 2 and "no --nats-url (or $NATS_URL) given, and no mesh runs in" in nowhere.stderr, \
            nowhere.stderr


async def test_reconciliation_names_what_the_ledger_missed(checked_pool):
    uow = lambda: LedgerUnitOfWork(checked_pool)  # noqa: E731
    day = calendar.trading_day(datetime.now(timezone.utc))
    report = await settlement.reconcile(day, uow, {"AAPL:never-applied:1": (Decimal("1.00"), 1)},
                                        settlement.SettlementReport(day))
    kinds = {(d.kind, d.reference) for d in report.discrepancies}
    assert ("FILL_NOT_APPLIED", "AAPL:never-applied:1") in kinds


async def test_reconciliation_names_a_fill_whose_captures_are_missing(pg_server_url):
    """FILL_CAPTURES: each fill's two captures are looked up by their key (the side's hold and
    the fill's id), so a day of many fills reconciles in time; a fill with none is named."""
    from meshkit.executions import FILL, Execution

    day = datetime(2026, 11, 4).date()
    async with funded_ledger(pg_server_url) as uow:
        fills = []
        for n, taker in enumerate(("BUY", "SELL")):  # the buyer is the taker, then the maker
            buy, sell = str(uuid.uuid4()), str(uuid.uuid4())
            await ledger.place_hold(commands.PlaceHold(buy, "buyer", buy, "USD", Decimal("50.00")), uow)
            await ledger.place_hold(commands.PlaceHold(sell, "seller", sell, "AAPL", Decimal(5)), uow)
            (order, account), (counter, counter_account) = (((buy, "buyer"), (sell, "seller")) if taker == "BUY"
                                                            else ((sell, "seller"), (buy, "buyer")))
            fill = Execution(f"AAPL:1:{n}", "AAPL", FILL, order, account, side=taker, counter_order_id=counter,
                             counter_account_id=counter_account, price=Decimal("10.00"), quantity=5,
                             executed_at=datetime(2026, 11, 4, 16, tzinfo=timezone.utc), trade_date=day)
            assert await settlement.apply_execution(fill, uow)
            fills.append(fill)
        # A fill recorded as applied whose captures never happened (a ledger put wrong by hand).
        ghost = Execution("AAPL:2:0", "AAPL", FILL, "no-buy", "buyer", side="BUY", counter_order_id="no-sell",
                          counter_account_id="seller", price=Decimal("10.00"), quantity=1,
                          executed_at=fills[0].executed_at, trade_date=day)
        async with uow() as u:
            assert await u.settlement.claim_execution(ghost)
            await u.commit()
        report = await settlement.reconcile(day, uow, None, settlement.SettlementReport(day))
        captures = [(d.reference, d.detail) for d in report.discrepancies if d.kind == "FILL_CAPTURES"]
        assert captures == [("AAPL:2:0", "0 captures, expected 2")]


async def test_reconciliation_names_a_fill_that_moved_other_amounts_than_it_traded(pg_server_url):
    """Acceptance round 16: reconciliation compared only each fill's presence. A fill applied
    (and settled) 100.00 short of its price x quantity, every ledger figure agreeing with the
    others (a restored copy edited by hand standing in for a bug in applying fills), was
    "discrepancies none". Now each fill's captures and their postings are compared with what
    it traded (FILL_AMOUNTS), and the ledger's record of it with the journal's (FILL_OFF_JOURNAL)."""
    from meshkit.executions import FILL, Execution

    day = datetime(2026, 11, 4).date()
    async with funded_ledger(pg_server_url, cash="1000.00", shares=10) as uow:
        fills = {}
        for n in range(3):
            buy, sell = str(uuid.uuid4()), str(uuid.uuid4())
            await ledger.place_hold(commands.PlaceHold(buy, "buyer", buy, "USD", Decimal("200.00")), uow)
            await ledger.place_hold(commands.PlaceHold(sell, "seller", sell, "AAPL", Decimal(2)), uow)
            fill = Execution(f"AAPL:7:{n}", "AAPL", FILL, buy, "buyer", side="BUY", counter_order_id=sell,
                             counter_account_id="seller", price=Decimal("91.33"), quantity=2,
                             executed_at=datetime(2026, 11, 4, 16, tzinfo=timezone.utc), trade_date=day)
            assert await settlement.apply_execution(fill, uow)
            fills[fill.execution_id] = (Decimal("91.33"), 2)
        journal = {**fills, "AAPL:7:2": (Decimal("91.34"), 2)}  # the engine traded it otherwise
        await settlement.settle(day, uow)
        clean = await settlement.reconcile(day, uow, fills, settlement.SettlementReport(day))
        assert not clean.discrepancies, clean.discrepancies
        async with uow() as u:  # 100.00 short on every leg of the first fill's cash, consistently
            await u.conn.execute("SET session_replication_role = replica")  # past the append-only triggers
            entry = await u.conn.fetchval("SELECT entry_id FROM ledger.hold_captures WHERE capture_id = $1",
                                          "AAPL:7:0:cash")
            await u.conn.execute("UPDATE ledger.hold_captures SET amount = amount - 100 WHERE entry_id = $1", entry)
            await u.conn.execute("UPDATE ledger.entries SET amount = amount - 100 WHERE entry_id = $1", entry)
            await u.conn.execute("UPDATE ledger.postings SET amount = amount - 100 * sign(amount) "
                                 "WHERE entry_id = $1", entry)
            # ... and the second fill's shares posted as 1 while its capture says 2.
            shares = await u.conn.fetchval("SELECT entry_id FROM ledger.hold_captures WHERE capture_id = $1",
                                           "AAPL:7:1:shares")
            await u.conn.execute("UPDATE ledger.postings SET amount = sign(amount) WHERE entry_id = $1", shares)
            await u.commit()
        report = await settlement.reconcile(day, uow, journal, settlement.SettlementReport(day))
        found = sorted((d.kind, d.reference, d.detail) for d in report.discrepancies if d.kind.startswith("FILL"))
        assert found == [
            ("FILL_AMOUNTS", "AAPL:7:0", "2 at 91.33: the buyer paid 82.66, not 182.66"),
            ("FILL_AMOUNTS", "AAPL:7:1", "2 at 91.33: the seller delivered 2 (posted 1), not 2"),
            ("FILL_OFF_JOURNAL", "AAPL:7:2", "the journal says 2 at 91.34, the ledger's record 2 at 91.33"),
        ], found


async def _sold(uow, day: date, sellers: list[str], tag: str) -> list[str]:
    """One fill of one AAPL at 10.00 from each of `sellers` (each seeded with a share first) to
    the "buyer", applied: their fill ids, in order."""
    from meshkit.executions import FILL, Execution

    ids = []
    for n, seller in enumerate(sellers):
        buy, sell = str(uuid.uuid4()), str(uuid.uuid4())
        await ledger.credit_shares(commands.CreditShares(seller, "AAPL", Decimal(1), f"seed-{n}"), uow)
        await ledger.place_hold(commands.PlaceHold(buy, "buyer", buy, "USD", Decimal("10.00")), uow)
        await ledger.place_hold(commands.PlaceHold(sell, seller, sell, "AAPL", Decimal(1)), uow)
        fill = Execution(f"AAPL:{tag}:{n}", "AAPL", FILL, buy, "buyer", side="BUY", counter_order_id=sell,
                         counter_account_id=seller, price=Decimal("10.00"), quantity=1, leaves=0, counter_leaves=0,
                         executed_at=datetime(2026, 11, 4, 16, tzinfo=timezone.utc), trade_date=day)
        assert await settlement.apply_execution(fill, uow)
        ids.append(fill.execution_id)
    return ids


async def test_a_seller_whose_cash_cannot_take_its_proceeds_is_passed_by_and_the_others_settle(pg_server_url):
    """Round 24 explorer: a seller's cash balance that its proceeds would take past the
    largest the ledger keeps (numeric(24,4)) failed the whole settlement batch, for every seller
    in it, run after run. Now the batch is settled one fill at a time, the fill that cannot
    settle is passed by and named (SETTLE_FAILED, once: not again as FILL_UNSETTLED), and the
    others settle; once the balance is mended, a run settles it."""
    from ledger_svc.domain.model import MAX_BALANCE

    day = datetime(2026, 11, 4).date()
    async with funded_ledger(pg_server_url, cash="1000.00") as uow:
        await ledger.deposit(commands.Deposit("full", Decimal("1.00"), "fund"), uow)
        ids = await _sold(uow, day, ["seller", "full", "seller", "other"], "9")
        async with uow() as u:  # a balance a cent short of the largest (a hand edit standing in for years)
            await u.conn.execute("UPDATE ledger.balances b SET posted = $1 FROM ledger.books k "
                                 "WHERE k.book_id = b.book_id AND k.owner = 'full' AND k.asset = 'USD'",
                                 MAX_BALANCE - Decimal("0.01"))
            await u.commit()
        said: list[str] = []
        report = await settlement.settle(day, uow, batch=2, progress=said.append)
        why = f"the seller's cash would pass {MAX_BALANCE}, the largest balance the ledger keeps"
        assert [(d.kind, d.reference, d.detail) for d in report.discrepancies] == [
            ("SETTLE_FAILED", ids[1], f"proceeds of full 10.00 not settled: {why}")]
        assert (report.fills_settled, report.amount_settled) == (3, Decimal("30.00"))
        assert f"could not settle fill {ids[1]} (full 10.00): {why}" in said, said
        assert (await ledger.cash_balance("seller", uow)).settled == Decimal("20.00")
        assert (await ledger.cash_balance("other", uow)).settled == Decimal("10.00")
        assert (await ledger.cash_balance("full", uow)).unsettled == Decimal("10.00")
        reconciled = await settlement.reconcile(day, uow, None, report)
        named = [(d.kind, d.reference) for d in reconciled.discrepancies if d.reference == ids[1]]
        assert named == [("SETTLE_FAILED", ids[1])], reconciled.discrepancies
        async with uow() as u:  # mended
            await u.conn.execute("UPDATE ledger.balances b SET posted = 1.00 FROM ledger.books k "
                                 "WHERE k.book_id = b.book_id AND k.owner = 'full' AND k.asset = 'USD'")
            await u.commit()
        again = await settlement.settle(day, uow, batch=2)
        assert (again.fills_settled, again.discrepancies) == (1, [])
        assert (await ledger.cash_balance("full", uow)).settled == Decimal("11.00")
        assert not (await settlement.reconcile(day, uow, None, again)).discrepancies


async def test_a_settlement_batch_is_a_few_statements_however_many_sellers_it_pays(pg_server_url):
    """Round 24 rechaos: a settlement batch of 100 took its entries, postings, balances, audit
    events and marks one statement each per fill, and held its sellers' accounts about 0.2 s
    (their hold placements refused ACCOUNT_BUSY meanwhile). Now it is one statement of each for
    the batch: counted on the connection, the same for 3 sellers as for 40."""
    from tests.integration.test_ledger_run_statements import FRAME, Counted

    day = datetime(2026, 11, 4).date()
    async with funded_ledger(pg_server_url, cash="1000.00") as uow:
        for n, tag in ((3, "5"), (40, "6")):
            await _sold(uow, day, [f"s{tag}-{i}" for i in range(n)], tag)
            units: list[list[str]] = []
            report = await settlement.settle(day, lambda: Counted(uow().pool, units))
            assert report.fills_settled == n
            batch = [q for q in units[0] if q not in FRAME]
            assert len(batch) <= 9, batch  # due, locks, books, ids, entries, postings, balances, events, marks
            assert (await ledger.cash_balance(f"s{tag}-{n - 1}", uow)).settled == Decimal("10.00")
        assert not (await settlement.reconcile(day, uow, None, report)).discrepancies


async def test_a_settlement_waiting_for_a_held_account_keeps_none_of_the_others(pg_server_url):
    """Round 24 rechaos: a settlement batch took its sellers' accounts in account order and
    waited for one another transaction held as long as it was held, keeping every account
    before it meanwhile: their hold placements waited for it and were refused ACCOUNT_BUSY. Now
    a batch waits 0.1 s at most, lets them all go and tries again, so a placement of an account
    of the batch goes through while another seller's account is held; the batch settles once
    that one is free."""
    from tests.support.wait import eventually

    day = datetime(2026, 11, 4).date()
    async with funded_ledger(pg_server_url) as uow:
        ids = await _sold(uow, day, ["a-first", "z-held"], "4")
        await ledger.credit_shares(commands.CreditShares("a-first", "AAPL", Decimal(1), "more"), uow)
        async with uow() as holder:
            await holder.ledger.lock_accounts(["z-held"])  # a transaction holding the later seller's account
            settling = asyncio.create_task(settlement.settle(day, uow))

            async def settle_waits() -> bool:
                async with uow() as u:
                    return bool(await u.conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock' AND query LIKE '%lock_accounts%'"))
            assert await eventually(settle_waits)
            hold = await ledger.place_hold(commands.PlaceHold("h-a", "a-first", "h-a", "AAPL", Decimal(1)), uow)
            assert hold.amount == 1 and not settling.done()
        report = await settling
        assert (report.fills_settled, report.discrepancies) == (2, [])
        assert (await ledger.cash_balance("z-held", uow)).settled == Decimal("10.00"), ids


async def test_a_failed_batch_retries_its_own_fills_beside_another_settlement(pg_server_url, monkeypatch):
    """Review of round 25: a failed batch retried whatever was due first, one fill at a time;
    those another settlement had locked were skipped, the loop went again at once and the
    batch failed again, for as long as the other held them (735 tries in 2 s). Now a failed
    batch retries its own fills: this settlement passes its failing fill by and ends while the
    other still waits for a held account; then that one ends too, every fill settled once."""
    from ledger_svc.domain.model import MAX_BALANCE
    from tests.support.wait import eventually

    day = datetime(2026, 11, 4).date()
    async with funded_ledger(pg_server_url) as uow:
        await ledger.deposit(commands.Deposit("full", Decimal("1.00"), "fund"), uow)
        # In fill order: a-first and z-held (the waiting settlement's batch), full (fails), other.
        ids = await _sold(uow, day, ["a-first", "z-held", "full", "other"], "3")
        async with uow() as u:
            await u.conn.execute("UPDATE ledger.balances b SET posted = $1 FROM ledger.books k "
                                 "WHERE k.book_id = b.book_id AND k.owner = 'full' AND k.asset = 'USD'",
                                 MAX_BALANCE - Decimal("0.01"))
            await u.commit()

        async def waiting() -> bool:
            async with uow() as u:
                return bool(await u.conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE '%lock_accounts%'"))
        async with uow() as holder:
            await holder.ledger.lock_accounts(["z-held"])
            monkeypatch.setattr(settlement, "SETTLE_LOCK_TRIES", 0)  # as after 30 tries: it waits
            other = asyncio.create_task(settlement.settle(day, uow, batch=2))
            assert await eventually(waiting)  # holding the first two fills' rows
            monkeypatch.setattr(settlement, "SETTLE_LOCK_TRIES", 30)
            this = await asyncio.wait_for(settlement.settle(day, uow, batch=2), 60)
            assert [(d.kind, d.reference) for d in this.discrepancies] == [("SETTLE_FAILED", ids[2])]
            assert this.fills_settled == 1 and not other.done()  # "other"'s fill
        that = await other
        assert this.fills_settled + that.fills_settled == 3
        for seller in ("a-first", "z-held", "other"):
            assert (await ledger.cash_balance(seller, uow)).settled == Decimal("10.00")


class NoWakeups:
    closing = False

    def subscribe(self, account_id):
        return asyncio.Event()

    def unsubscribe(self, account_id, event):
        pass


async def test_run_settlement_over_grpc_settles_once_and_reconciles_against_the_journal(ledger_addr, nats_conn,
                                                                                         checked_pool):
    import grpc

    from ledger_svc.entrypoints.settlement_server import SettlementServicer
    from stockmesh.ledger.v1 import settlement_service_pb2 as spb, settlement_service_pb2_grpc

    today = calendar.trading_day(datetime.now(timezone.utc))
    day, tomorrow = today.isoformat(), (today + timedelta(days=1)).isoformat()
    async with grpc.aio.insecure_channel(ledger_addr) as ch:
        stub = settlement_service_pb2_grpc.SettlementServiceStub(ch)
        for bad in ("", "2026-13-45", "yesterday", tomorrow):  # tomorrow: a day not traded yet
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.RunSettlement(spb.RunSettlementRequest(date=bad))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # The session's database: the day is still trading (other modules' fills), not closed.
        first = await stub.RunSettlement(spb.RunSettlementRequest(date=day, before_close=True))
        second = await stub.RunSettlement(spb.RunSettlementRequest(date=day, before_close=True))
    assert second.fills_settled == 0 and second.amount_settled == "0.00"  # running it twice changes nothing
    assert (first.amount_settled == "0.00") == (first.fills_settled == 0)  # what it paid out (round 16)
    assert second.fills_already_settled == first.fills_settled + first.fills_already_settled

    # With the journal (a namespace of its own): a fill the engine published and the ledger
    # never applied is named.
    js = nats_conn.jetstream()
    ns = f"st{uuid.uuid4().hex[:8]}"
    await bus.ensure_stream(js, ns, "EXECUTIONS")
    missed = matching_pb2.Execution(execution_id=f"AAPL:{ns}:1", symbol="AAPL", type=matching_pb2.EXECUTION_TYPE_FILL,
                                    order_id=str(uuid.uuid4()), account_id="nobody", price="1.00", quantity=1)
    missed.time.FromDatetime(datetime.now(timezone.utc))
    await js.publish(bus.subject(ns, "executions", "AAPL"), missed.SerializeToString())
    servicer = SettlementServicer(lambda: LedgerUnitOfWork(checked_pool), js, ns, catch_up=0.5)
    reply = await servicer.RunSettlement(spb.RunSettlementRequest(date=day, before_close=True), None)
    assert ("FILL_NOT_APPLIED", missed.execution_id) in {(d.kind, d.reference) for d in reply.discrepancies}


async def test_run_settlement_refuses_a_day_whose_session_has_not_closed_as_settle_does(pg_server_url):
    """`stockmesh settle` waited for the day's close (or a later day's), unless --before-close;
    RunSettlement, a scheduler's, settled a day still trading, whose fills are not final (a
    later run settled more). Now it refuses it too, FAILED_PRECONDITION SESSION_NOT_CLOSED
    with the day, settling nothing, unless before_close; after a close it settles."""
    import grpc
    from grpc_status import rpc_status
    from google.rpc import error_details_pb2

    from meshkit.executions import FILL, Execution
    from order_svc.service_layer.session import close_session
    from order_svc.service_layer.unit_of_work import OrderUnitOfWork
    from stockmesh.ledger.v1 import settlement_service_pb2 as spb, settlement_service_pb2_grpc
    from tests.integration.conftest import ledger_server

    now = datetime.now(timezone.utc)
    today = calendar.trading_day(now)
    yesterday = trading_day_before(today)  # a day without a session that is over is closed
    async with funded_ledger(pg_server_url) as uow:
        pool = uow().pool
        for n, (at, day) in enumerate(((now - (today - yesterday), yesterday), (now, today))):  # a fill on each
            buy, sell = str(uuid.uuid4()), str(uuid.uuid4())
            await ledger.place_hold(commands.PlaceHold(buy, "buyer", buy, "USD", Decimal("50.00")), uow)
            await ledger.place_hold(commands.PlaceHold(sell, "seller", sell, "AAPL", Decimal(5)), uow)
            assert await settlement.apply_execution(Execution(
                f"AAPL:close:{n}", "AAPL", FILL, buy, "buyer", side="BUY", counter_order_id=sell,
                counter_account_id="seller", price=Decimal("10.00"), quantity=5, executed_at=at, trade_date=day), uow)

        async def ledger_state():
            async with pool.acquire() as conn:
                return (await conn.fetch("SELECT fill_id, settled_at, settle_entry FROM ledger.unsettled "
                                         "ORDER BY fill_id"),
                        await conn.fetchval("SELECT count(*) FROM ledger.entries"))

        before = await ledger_state()
        async with ledger_server(pool) as addr, grpc.aio.insecure_channel(addr) as ch:
            stub = settlement_service_pb2_grpc.SettlementServiceStub(ch)
            for day in (today, yesterday):  # no close of either, nor of a later day
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.RunSettlement(spb.RunSettlementRequest(date=day.isoformat()))
                err = refused.value
                assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
                assert f"the session of {day} has not closed" in err.details(), err.details()
                assert f"stockmesh session close --date {day}" in err.details() and "before_close" in err.details()
                [detail] = rpc_status.from_call(err).details
                info = error_details_pb2.ErrorInfo()
                assert detail.Unpack(info)
                assert (info.reason, dict(info.metadata)) == ("SESSION_NOT_CLOSED", {"tradingDay": day.isoformat()})
            assert await ledger_state() == before  # nothing settled

            # before_close: what has traded so far (yesterday's fill; today's is not due by it).
            early = await stub.RunSettlement(spb.RunSettlementRequest(date=yesterday.isoformat(), before_close=True))
            assert (early.fills_settled, early.amount_settled) == (1, "50.00")

            # Today's close, which came after yesterday's trading too: both are settled unasked.
            assert await close_session(today, lambda: OrderUnitOfWork(pool), "closing")
            closed = await stub.RunSettlement(spb.RunSettlementRequest(date=today.isoformat()))
            assert (closed.fills_settled, closed.fills_already_settled, closed.amount_settled) == (1, 1, "50.00")
            again = await stub.RunSettlement(spb.RunSettlementRequest(date=yesterday.isoformat()))
            assert (again.fills_settled, again.fills_already_settled) == (0, 1)


async def test_settlement_waits_for_a_ledger_behind_the_journal(order_deps, checked_pool, nats_conn):
    """The ledger's consumer may be catching up after a restart when settlement runs: the fills
    the engine journaled are waited for and settled, not reported unsettled (seen once in the
    e2e chaos test)."""
    from ledger_svc.service_layer.runner import settle_and_reconcile
    from meshkit import executions

    uow = lambda: LedgerUnitOfWork(checked_pool)  # noqa: E731
    js = nats_conn.jetstream()
    ns = f"cu{uuid.uuid4().hex[:8]}"  # a journal of its own: only this test's fill in it
    await bus.ensure_stream(js, ns, "EXECUTIONS")
    buyer, seller = f"buy-{uuid.uuid4().hex[:6]}", f"sell-{uuid.uuid4().hex[:6]}"
    await ledger.deposit(commands.Deposit(buyer, Decimal("1000.00"), "fund"), uow)
    await ledger.credit_shares(commands.CreditShares(seller, "AAPL", Decimal(5), "seed"), uow)
    buy = await handlers.place_order(order(buyer, Side.BUY, 5, "187.00"), order_deps)
    sell = await handlers.place_order(order(seller, Side.SELL, 5, "187.00"), order_deps)
    fill = matching_pb2.Execution(
        execution_id=f"AAPL:{ns}:1", symbol="AAPL", type=matching_pb2.EXECUTION_TYPE_FILL,
        order_id=str(buy.order_id), account_id=buyer, side=common_pb2.SIDE_BUY, counter_order_id=str(sell.order_id),
        counter_account_id=seller, price="187.00", quantity=5, leaves_quantity=0, counter_leaves_quantity=0)
    orders_consumer = asyncio.create_task(executions.consume(
        js, ns, "orders", lambda ex: lifecycle.apply_execution(ex, order_deps)))  # order_svc keeps up
    await publish(js, ns, fill)

    said: list[str] = []
    waiting = asyncio.Event()

    def progress(message: str) -> None:
        said.append(message)
        if message.startswith("waiting for the ledger"):
            waiting.set()

    day = calendar.trading_day(datetime.now(timezone.utc))
    run = asyncio.create_task(settle_and_reconcile(day, uow, js, ns, catch_up=60, progress=progress))
    await asyncio.wait_for(waiting.wait(), 30)  # the ledger has not applied the fill: settlement waits
    assert not run.done()
    consumer = asyncio.create_task(executions.consume(js, ns, "ledger", lambda ex: settlement.apply_execution(ex, uow)))
    try:
        report = await asyncio.wait_for(run, 60)
        await wait_applied(checked_pool, [fill.execution_id])
    finally:
        for task in (consumer, orders_consumer):
            task.cancel()
        await asyncio.gather(consumer, orders_consumer, return_exceptions=True)
    assert said[0] == "waiting for the ledger to apply 1 fills of the journal", said
    mine = [d for d in report.discrepancies if ns in d.reference or d.reference in (str(buy.order_id), str(sell.order_id))]
    assert mine == []
    s = await ledger.cash_balance(seller, uow)
    assert (s.total, s.settled, s.unsettled) == (Decimal("935.00"), Decimal("935.00"), 0)  # 5 × 187.00, settled


async def test_settle_says_when_it_stops_waiting_for_a_ledger_behind_the_journal(pg_server_url):
    """Acceptance round 16: a ledger only behind was reported FILL_NOT_APPLIED ("in the
    execution journal, not in the ledger", which reads as lost) with no word that the wait for
    it had ended."""
    said: list[str] = []
    day = datetime(2026, 11, 4).date()
    async with funded_ledger(pg_server_url) as uow:
        applied = await settlement.catch_up(day, uow, {"AAPL:9:0", "AAPL:9:1"}, timeout=0.3, progress=said.append,
                                            poll=0.05)
    assert applied == set()
    assert said[0] == "waiting for the ledger to apply 2 fills of the journal"
    assert said[-1].startswith("stopped waiting after 0.3 s with 2 fills of the journal not applied by the ledger yet")


async def test_reconciliation_names_a_hold_left_open_by_a_filled_order_or_a_decided_replace(pg_server_url):
    """Round 16 code review 4: HOLD_OPEN looked only at orders the engine ended, not at one a
    fill ended (the ledger kept no fill's leaves), nor at a replace's reserve once its transfer
    was decided; a replace never decided was not looked at either. The code releases all of
    them: these checks are there for the day it does not (here, rows put wrong by hand)."""
    from meshkit.executions import FILL, Execution

    day = datetime(2026, 11, 4).date()
    async with funded_ledger(pg_server_url, cash="1000.00", shares=10) as uow:
        buy, sell, other = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
        await ledger.place_hold(commands.PlaceHold(buy, "buyer", buy, "USD", Decimal("100.00")), uow)
        await ledger.place_hold(commands.PlaceHold(sell, "seller", sell, "AAPL", Decimal(5)), uow)
        await ledger.place_hold(commands.PlaceHold(other, "buyer", other, "USD", Decimal("10.00")), uow)
        # A fill that ended both orders, recorded without its effects (a ledger put wrong).
        ghost = Execution("AAPL:8:0", "AAPL", FILL, buy, "buyer", side="BUY", counter_order_id=sell,
                          counter_account_id="seller", price=Decimal("10.00"), quantity=5, leaves=0, counter_leaves=0,
                          executed_at=datetime(2026, 11, 4, 16, tzinfo=timezone.utc), trade_date=day)
        async with uow() as u:
            assert await u.settlement.claim_execution(ghost)
            await u.commit()
        # A replace of `other` with a reserve; then a second transfer decided by hand with its
        # reserve left held, and the first left undecided for two days.
        new = str(uuid.uuid4())
        await ledger.transfer_hold(commands.TransferHold(other, new, new, "buyer", "USD", Decimal("1.00"),
                                                         Decimal("5.00")), uow)
        async with uow() as u:
            await u.conn.execute("SET session_replication_role = replica")  # past the forward-only triggers
            await u.conn.execute("UPDATE ledger.hold_transfers SET created_at = now() - interval '2 days' "
                                 "WHERE to_hold_id = $1", new)
            await u.commit()
        report = await settlement.reconcile(day, uow, None, settlement.SettlementReport(day))
        found = sorted((d.kind, d.reference) for d in report.discrepancies if d.kind in ("HOLD_OPEN",
                                                                                       "TRANSFER_PENDING"))
        assert found == sorted([("HOLD_OPEN", buy), ("HOLD_OPEN", sell), ("TRANSFER_PENDING", new)]), found
        async with uow() as u:
            await u.conn.execute("SET session_replication_role = replica")
            await u.conn.execute("UPDATE ledger.hold_transfers SET status = 'CANCELLED', resolved_at = now() "
                                 "WHERE to_hold_id = $1", new)
            reserve = await u.conn.fetchval("SELECT reserve_hold_id FROM ledger.hold_transfers WHERE to_hold_id = $1",
                                            new)
            await u.commit()
        report = await settlement.reconcile(day, uow, None, settlement.SettlementReport(day))
        found = sorted((d.kind, d.reference) for d in report.discrepancies if d.kind in ("HOLD_OPEN",
                                                                                       "TRANSFER_PENDING"))
        assert found == sorted([("HOLD_OPEN", buy), ("HOLD_OPEN", sell), ("HOLD_OPEN", reserve)]), found
