"""How fast the ledger applies executions parked behind a held account (settlement.unpark).

    .venv/bin/python benchmarks/bench_unpark.py                      # 640 fills, 3 repeats
    .venv/bin/python benchmarks/bench_unpark.py --fills 2000 --server-url postgresql://postgres@host/postgres

A market maker's executions park behind its parked ones while the market trades (the ledger
keeps each account's executions in stream order), so once a settlement during trading has
parked some, they drain only if unpark applies them faster than the market maker trades
(round 23 rechaos: applied one transaction each, about 9 a second under load, the backlog grew
to 2,929 rows while the market traded).

On a database of its own (created on the server at --server-url, every migration applied,
dropped at the end), a market maker sells one share at a time to 20 buyers, each buyer's
order ending now and then (a cancel): --fills executions, parked. Measured, alternately,
--repeat times each, on a fresh set of accounts and holds:

- one at a time: each parked execution applied and its row deleted in a transaction of its
  own (apply_execution with unpark=True: what unpark did before round 24);
- unpark: rounds of settlement.unpark until nothing is left (runs of up to a consumer's batch,
  32, a transaction each; a round tries at most 1,000 of a symbol).

Printed: executions per second of each, and unpark's ratio to one at a time. Figures only.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

import asyncpg  # noqa: E402

from ledger_svc.service_layer import commands, handlers as ledger, settlement  # noqa: E402
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork  # noqa: E402
from meshkit import calendar  # noqa: E402
from meshkit.executions import CANCELLED, FILL, Execution  # noqa: E402
from meshkit.migrate import scratch_database  # noqa: E402

BUYERS, ENDS_EVERY = 20, 50


async def parked_backlog(uow, fills: int) -> list[Execution]:
    """A market maker's fills with 20 buyers (and a buyer's cancel every ENDS_EVERY), its
    accounts funded and holds placed, parked; returned in stream order."""
    tag = uuid.uuid4().hex[:8]
    mm, now = f"mm-{tag}", datetime.now(timezone.utc)
    day = calendar.trading_day(now)
    await ledger.credit_shares(commands.CreditShares(mm, "AAPL", Decimal(fills), "seed", Decimal("90")), uow)
    await ledger.place_hold(commands.PlaceHold(f"mmo-{tag}", mm, f"mmo-{tag}", "AAPL", Decimal(fills)), uow)
    orders = {}
    exs: list[Execution] = []
    for i in range(fills):
        b = i % BUYERS
        if b not in orders:
            orders[b] = f"bo{b}-{i}-{tag}"
            await ledger.deposit(commands.Deposit(f"b{b}-{tag}", Decimal("100000"), f"fund-{i}"), uow)
            await ledger.place_hold(commands.PlaceHold(orders[b], f"b{b}-{tag}", orders[b], "USD", Decimal("10000")),
                                    uow)
        exs.append(Execution(execution_id=f"x{i}-{tag}", symbol="AAPL", type=FILL, order_id=orders[b],
                             account_id=f"b{b}-{tag}", side="BUY", counter_order_id=f"mmo-{tag}",
                             counter_account_id=mm, price=Decimal("100"), quantity=1, leaves=1000,
                             counter_leaves=fills - i - 1, executed_at=now, trade_date=day))
        if i % ENDS_EVERY == ENDS_EVERY - 1:
            exs.append(Execution(execution_id=f"c{i}-{tag}", symbol="AAPL", type=CANCELLED, order_id=orders.pop(b),
                                 account_id=f"b{b}-{tag}", reason="CANCELLED_BY_USER", executed_at=now, trade_date=day))
    async with uow() as u:
        await u.settlement.park(exs)
        await u.commit()
    return exs


async def one_at_a_time(uow, exs: list[Execution]) -> int:
    return sum([await settlement.apply_execution(ex, uow, settlement.UNPARK_LOCK_WAIT, unpark=True) for ex in exs])


async def unpark_all(uow) -> int:
    applied = 0
    while done := await settlement.unpark(uow):
        applied += done
    return applied


async def run(server_url: str, fills: int, repeat: int) -> None:
    async with scratch_database(server_url, "stockmesh_bench_unpark") as url:
        pool = await asyncpg.create_pool(url, min_size=2, max_size=4)
        uow = lambda: LedgerUnitOfWork(pool)  # noqa: E731
        rates: dict[str, list[float]] = {"one at a time": [], "unpark": []}
        for i in range(repeat):
            for how, drain in (("one at a time", lambda exs: one_at_a_time(uow, exs)),
                               ("unpark", lambda exs: unpark_all(uow))):
                exs = await parked_backlog(uow, fills)
                t = time.perf_counter()
                applied = await drain(exs)
                seconds = time.perf_counter() - t
                left = await pool.fetchval("SELECT count(*) FROM ledger.parked_executions")
                assert applied == len(exs) and left == 0, (how, applied, len(exs), left)
                rates[how].append(applied / seconds)
                print(f"  {how:14} {applied} executions in {seconds:.2f} s: {applied / seconds:,.0f}/s", flush=True)
        await pool.close()
        base = statistics.median(rates["one at a time"])
        print(f"\n{fills} parked fills (+ cancels), {repeat} repeats, median:")
        for how, r in rates.items():
            m = statistics.median(r)
            print(f"  {how:14} {m:8,.0f}/s  [{min(r):,.0f}-{max(r):,.0f}]  x{m / base:.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fills", type=int, default=640)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--server-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="a PostgreSQL server's URL (its database is only used to create and drop the benchmark's)")
    args = ap.parse_args()
    asyncio.run(run(args.server_url, args.fills, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
