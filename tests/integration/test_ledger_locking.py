"""Transactions on money and orders never deadlock one another. In the ledger each takes its
accounts first, in account order, then their rows (migration 0007); in order_svc a batch of new
orders and a fill both take their accounts in account order. Found under trading load
(2026-12-05, ~20 deadlocks per run of the end-to-end tests): a batch of holds (or of new
orders) and a fill between two of its accounts deadlocked, and PostgreSQL undid one of them
only after deadlock_timeout (a second): every order of the batch waited that long. Each test
fails without its fix (the races are random: 3-4 deadlocks a run in the ledger's, one or
two in order_svc's)."""
from __future__ import annotations

import asyncio
import logging
import random
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from ledger_svc.service_layer import commands, handlers as ledger, settlement
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit import calendar
from meshkit.errors import DomainError
from meshkit.executions import FILL, Execution
from tests.integration.conftest import own_database_fixtures

pytestmark = pytest.mark.integration

ASSETS = ("USD", "AAPL", "MSFT")
ROUNDS = 40

# A database of this module's own (and for its order_svc, a namespace and a ledger on it): its
# fills are applied straight to the ledger, never through the execution journal, which a
# settlement of the day in another test (test_settlement.py) would report as fills not in the
# journal. checked_pool (tests/conftest.py) checks the ledger's invariants on it after each test.
pool, database_url, namespace, ledger_addr = own_database_fixtures()


async def _errors_of(*works) -> list[BaseException]:
    """Run the works at once; what each raised (a deadlock's victim raises DeadlockDetectedError)."""
    async def one(work) -> BaseException | None:
        try:
            await work()
        except Exception as exc:  # noqa: BLE001 - collected: every one is a failure of the test
            return exc
        return None
    return [e for e in await asyncio.gather(*(one(w) for w in works)) if e is not None]


async def test_holds_fills_deposits_and_releases_racing_on_few_accounts_never_deadlock(checked_pool, caplog):
    uow = lambda: LedgerUnitOfWork(checked_pool)  # noqa: E731
    tag = uuid.uuid4().hex[:6]
    accounts = [f"lock-{tag}-{i}" for i in range(5)]
    for a in accounts:
        await ledger.deposit(commands.Deposit(a, Decimal("1000000.00"), "fund"), uow)
        for s in ASSETS[1:]:
            await ledger.credit_shares(commands.CreditShares(a, s, Decimal(100000), f"seed-{s}"), uow)
    rng = random.Random(11)
    placed: list[str] = []

    def hold(account: str, asset: str) -> commands.PlaceHold:
        hid = str(uuid.uuid4())
        amount = Decimal(rng.randint(1, 50)) if asset != "USD" else Decimal(rng.randint(100, 5000)) / 100
        return commands.PlaceHold(hid, account, hid, asset, amount)

    async def batches() -> None:  # order_svc's PlaceHolds: several accounts and assets in one statement
        for _ in range(ROUNDS):
            cmds = [hold(rng.choice(accounts), rng.choice(ASSETS)) for _ in range(6)]
            for answer in await ledger.place_holds(cmds, uow):
                assert not isinstance(answer, DomainError), answer
            placed.extend(c.hold_id for c in cmds)

    async def fills() -> None:  # the ledger's execution consumer: both sides of a trade
        for n in range(ROUNDS):
            buyer, seller = rng.sample(accounts, 2)
            symbol = rng.choice(ASSETS[1:])
            qty, price = rng.randint(1, 20), Decimal("101.25")
            b, s = hold(buyer, "USD"), hold(seller, symbol)
            await ledger.place_hold(commands.PlaceHold(b.hold_id, buyer, b.order_id, "USD", price * qty), uow)
            await ledger.place_hold(commands.PlaceHold(s.hold_id, seller, s.order_id, symbol, Decimal(qty)), uow)
            now = datetime.now(timezone.utc)
            await settlement.apply_execution(Execution(
                execution_id=f"{symbol}:{tag}-{n}:1", symbol=symbol, type=FILL, order_id=b.order_id,
                account_id=buyer, side="BUY", counter_order_id=s.order_id, counter_account_id=seller, price=price,
                quantity=qty, leaves=0, counter_leaves=0, executed_at=now, trade_date=calendar.trading_day(now)), uow)

    async def deposits() -> None:
        for n in range(ROUNDS):
            await ledger.deposit(commands.Deposit(rng.choice(accounts), Decimal("10.00"), f"dep-{n}"), uow)

    async def releases() -> None:
        for _ in range(ROUNDS):
            if placed:
                await ledger.release_hold(commands.ReleaseHold(rng.choice(placed)), uow)
            await asyncio.sleep(0)

    with caplog.at_level(logging.WARNING, logger="ledger_svc.holds"):
        errors = await _errors_of(batches, batches, fills, fills, deposits, releases)
    assert errors == []  # a deadlock's victim raises DeadlockDetectedError
    fell_back = [r for r in caplog.records if "failed as a whole" in r.getMessage()]
    assert fell_back == [], fell_back[0].exc_text if fell_back else ""  # a batch undone by a deadlock


async def test_new_orders_and_fills_racing_on_few_accounts_never_deadlock(order_deps, checked_pool, caplog):
    """The same in order_svc: a batch of new orders takes its accounts' sequences and audit heads
    in account order, and a fill's two orders go in account order too (taker first, before, and
    a batch and a fill deadlocked)."""
    from order_svc.domain.model import OrderRequest, OrderType, Side, Status, TimeInForce
    from order_svc.service_layer import handlers, lifecycle

    uow = lambda: LedgerUnitOfWork(checked_pool)  # noqa: E731
    tag = uuid.uuid4().hex[:6]
    accounts = [f"olock-{tag}-{i}" for i in range(5)]
    for a in accounts:
        await ledger.deposit(commands.Deposit(a, Decimal("1000000.00"), "fund"), uow)
        await ledger.credit_shares(commands.CreditShares(a, "AAPL", Decimal(100000), "seed"), uow)
    rng = random.Random(12)
    n = 0

    async def place(account: str, side: Side):
        nonlocal n
        n += 1
        return await handlers.place_order(OrderRequest(
            account_id=account, client_order_id=f"{tag}-{n}", symbol="AAPL", side=side, type=OrderType.LIMIT,
            quantity=1, limit_price=Decimal("187.00"), stop_price=None, time_in_force=TimeInForce.GTC), order_deps)

    resting = await asyncio.gather(*(place(a, side) for a in accounts for side in (Side.BUY, Side.SELL) for _ in range(24)))
    assert all(o.status is Status.NEW for o in resting)
    buys = [o for o in resting if o.request.side is Side.BUY]
    sells = [o for o in resting if o.request.side is Side.SELL]

    async def placements() -> None:  # concurrent placements share record batches
        for _ in range(24):
            await asyncio.gather(*(place(rng.choice(accounts), rng.choice((Side.BUY, Side.SELL))) for _ in range(20)))

    async def fills(k0: int, mine: list) -> None:  # order_svc's execution consumer
        for k, b in enumerate(mine, k0):
            s = next((x for x in sells if x.account_id != b.account_id), None)
            if s is None:
                return
            sells.remove(s)
            taker, maker = (b, s) if k % 2 else (s, b)  # either account first
            now = datetime.now(timezone.utc)
            ex = Execution(
                execution_id=f"AAPL:{tag}-{k}:1", symbol="AAPL", type=FILL, order_id=str(taker.order_id),
                account_id=taker.account_id, side=taker.request.side.value, counter_order_id=str(maker.order_id),
                counter_account_id=maker.account_id, price=Decimal("187.00"), quantity=1, leaves=0,
                counter_leaves=0, executed_at=now, trade_date=calendar.trading_day(now))
            await lifecycle.apply_execution(ex, order_deps)
            await settlement.apply_execution(ex, uow)  # the ledger's side, so the books agree afterwards

    with caplog.at_level(logging.WARNING, logger="order_svc.writes"):
        half = len(buys) // 2
        errors = await _errors_of(placements, lambda: fills(0, buys[:half]), lambda: fills(half, buys[half:]))
    assert errors == []
    fell_back = [r for r in caplog.records if "failed as a whole" in r.getMessage()]
    assert fell_back == [], fell_back[0].exc_text if fell_back else ""


async def test_a_placement_on_an_account_held_by_another_transaction_is_unavailable_and_the_others_go_on(
        order_deps, checked_pool):
    """Round 18's chaos tester: a transaction holding one account's lock (a session stopped
    mid-statement, a row locked by hand) held back every account's placements, for as long as
    it held it, since their holds go to the ledger together. Now the held account's placement
    is UNAVAILABLE ACCOUNT_BUSY with RetryInfo after the ledger's lock wait (nothing recorded,
    nothing held), the others' are placed, and a retry with the same ids places it once the
    account is free. Without the lock wait, wait_for ends the placements."""
    from meshkit.errors import Unavailable
    from order_svc.domain.model import OrderRequest, OrderType, Side, Status, TimeInForce
    from order_svc.service_layer import handlers

    uow = lambda: LedgerUnitOfWork(checked_pool)  # noqa: E731
    tag = uuid.uuid4().hex[:6]
    busy, free = f"busy-{tag}", [f"free-{tag}-{i}" for i in range(3)]
    for a in (busy, *free):
        await ledger.deposit(commands.Deposit(a, Decimal("1000.00"), "fund"), uow)

    def buy(account: str) -> OrderRequest:
        return OrderRequest(account_id=account, client_order_id=f"{tag}-1", symbol="AAPL", side=Side.BUY,
                            type=OrderType.LIMIT, quantity=2, limit_price=Decimal("187.00"), stop_price=None,
                            time_in_force=TimeInForce.GTC)

    async with checked_pool.acquire() as locker:
        async with locker.transaction():
            await locker.execute("SELECT 1 FROM audit.heads WHERE stream = $1 FOR UPDATE", f"ledger:{busy}")
            results = await asyncio.wait_for(asyncio.gather(
                *(handlers.place_order(buy(a), order_deps) for a in (busy, *free)), return_exceptions=True), 60)
    refused, *placed = results
    assert isinstance(refused, Unavailable), refused
    assert (refused.reason, refused.retry_after_seconds) == ("ACCOUNT_BUSY", 1.0)
    assert f"account {busy} is busy" in refused.message, refused.message  # the ledger's words, the account named
    assert refused.metadata == {"accountId": busy}
    assert [o.status for o in placed] == [Status.NEW] * 3
    assert (await ledger.book_balance(busy, "USD", uow)).held == 0
    for _ in range(100):  # the client's retries, as RetryInfo says, with the same client_order_id
        try:
            order = await handlers.place_order(buy(busy), order_deps)
            break
        except Unavailable as exc:
            assert exc.reason == "ACCOUNT_BUSY"
            await asyncio.sleep(0.2)
    assert order.status is Status.NEW
    assert (await ledger.book_balance(busy, "USD", uow)).held == Decimal("374.00")
