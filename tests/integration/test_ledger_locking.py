"""The ledger's transactions never deadlock one another: each takes its accounts first, in
account order, then their rows (migration 0007). Found under trading load (2026-12-05): a batch
of holds and a fill between two of its accounts deadlocked, and PostgreSQL undid one of them
only after deadlock_timeout (a second) — every order of the batch waited that long."""
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

pytestmark = pytest.mark.integration

ASSETS = ("USD", "AAPL", "MSFT")
ROUNDS = 40


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
    errors: list[BaseException] = []

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

    async def guarded(work) -> None:
        try:
            await work()
        except Exception as exc:  # noqa: BLE001 - collected: every one is a failure of the test
            errors.append(exc)

    with caplog.at_level(logging.WARNING, logger="ledger_svc.holds"):
        await asyncio.gather(*(guarded(w) for w in (batches, batches, fills, fills, deposits, releases)))
    assert errors == []  # a deadlock's victim raises DeadlockDetectedError
    fell_back = [r for r in caplog.records if "failed as a whole" in r.getMessage()]
    assert fell_back == [], fell_back[0].exc_text if fell_back else ""  # a batch undone by a deadlock
