"""How fast the ledger settles a day's sale proceeds, and how long each batch holds its sellers'
accounts (settlement.settle).

    .venv/bin/python benchmarks/bench_settle.py                      # 2,000 fills, 3 repeats
    .venv/bin/python benchmarks/bench_settle.py --fills 10000 --sellers 1000 --server-url postgresql://...

A settlement batch locks its sellers' accounts for the whole transaction, and a hold placement
of one of them waits for it (0.5 s at most, then ACCOUNT_BUSY): round 24's chaos run, with
`settle --before-close` running during trading, had hold placements refused in bursts that
followed the settles.

On a database of its own (created on the server at --server-url, every migration applied,
dropped at the end), --sellers sellers each sell to 20 buyers: --fills fills, applied, their
proceeds unsettled. Measured, alternately, --repeat times each, on a fresh day's worth:

- per statement: a batch of 100 writing each fill's entry, postings, balance, audit event and
  mark one statement at a time (post_once and a mark per fill: settle before round 25);
- settle, batch 100 and batch 500: each batch in a few statements whatever its size
  (settlement._settle_batch, _RunWrites).

Printed: fills settled per second, and the time each batch's transaction took, from BEGIN to
COMMIT (what its sellers' accounts are held for): median and largest. Meanwhile four customers
place holds of one share on random sellers' accounts, each one after the other, released at
once (four market makers' quotes): each placement's time (median, p99, largest) and how many were
refused ACCOUNT_BUSY (a placement waits 1 s for its account), next to the same placements with
no settlement running, measured first. Figures only.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

import asyncpg  # noqa: E402

from ledger_svc.domain.settlement import settlement_entry  # noqa: E402
from ledger_svc.service_layer import commands, handlers as ledger, settlement  # noqa: E402
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork  # noqa: E402
from meshkit import calendar  # noqa: E402
from meshkit.errors import Unavailable  # noqa: E402
from meshkit.executions import FILL, Execution  # noqa: E402
from meshkit.migrate import scratch_database  # noqa: E402

BUYERS = 20


class Timed(LedgerUnitOfWork):
    """A unit of work whose time from BEGIN to its end is recorded when it wrote something."""

    def __init__(self, pool, took: list[float]) -> None:
        super().__init__(pool)
        self.took = took

    async def __aenter__(self):
        await super().__aenter__()
        self.started = time.perf_counter()
        return self

    async def commit(self) -> None:
        await super().commit()
        self.took.append(time.perf_counter() - self.started)


async def a_days_sales(uow, fills: int, sellers: int) -> list[str]:
    """`fills` fills of one share at 100.00, seller i % sellers to buyer i % 20, applied; each
    seller keeps a share more than it sold for each placer: the sellers' accounts."""
    tag = uuid.uuid4().hex[:8]
    now = datetime.now(timezone.utc)
    day = calendar.trading_day(now)
    each = -(-fills // sellers)
    for s in range(sellers):
        await ledger.credit_shares(commands.CreditShares(f"s{s}-{tag}", "AAPL", Decimal(each + Placements.PLACERS),
                                                         "seed", Decimal("90")), uow)
        await ledger.place_hold(commands.PlaceHold(f"so{s}-{tag}", f"s{s}-{tag}", f"so{s}-{tag}", "AAPL",
                                                   Decimal(each)), uow)
    for b in range(BUYERS):
        await ledger.deposit(commands.Deposit(f"b{b}-{tag}", Decimal(100 * fills), "fund"), uow)
        await ledger.place_hold(commands.PlaceHold(f"bo{b}-{tag}", f"b{b}-{tag}", f"bo{b}-{tag}", "USD",
                                                   Decimal(100 * fills)), uow)
    left = [each] * sellers
    exs = []
    for i in range(fills):
        s, b = i % sellers, i % BUYERS
        left[s] -= 1
        exs.append(Execution(execution_id=f"x{i}-{tag}", symbol="AAPL", type=FILL, order_id=f"bo{b}-{tag}",
                             account_id=f"b{b}-{tag}", side="BUY", counter_order_id=f"so{s}-{tag}",
                             counter_account_id=f"s{s}-{tag}", price=Decimal("100"), quantity=1, leaves=fills,
                             counter_leaves=left[s], executed_at=now, trade_date=day))
    for i in range(0, fills, 32):
        await settlement.apply_executions(exs[i:i + 32], uow)
    return [f"s{s}-{tag}" for s in range(sellers)]


class Placements:
    """Holds of one share placed on random accounts of `sellers` by PLACERS customers, each one
    after the other, each released at once, until stopped: each placement's time, and those
    refused ACCOUNT_BUSY."""

    PLACERS = 4

    def __init__(self, uow, sellers: list[str]) -> None:
        self.uow, self.sellers, self.took, self.busy = uow, sellers, [], 0
        self.stopping = False
        self.task = asyncio.gather(*(self.run() for _ in range(self.PLACERS)))

    async def run(self) -> None:
        while not self.stopping:  # not cancelled: a placement finishes whatever its caller does
            hold = uuid.uuid4().hex
            t = time.perf_counter()
            try:
                await ledger.place_hold(commands.PlaceHold(hold, random.choice(self.sellers), hold, "AAPL", Decimal(1)),
                                        self.uow)
            except Unavailable:
                self.busy += 1
                continue
            self.took.append(time.perf_counter() - t)
            await ledger.release_hold(commands.ReleaseHold(hold), self.uow)

    async def stop(self) -> None:
        self.stopping = True
        await self.task

    def said(self) -> str:
        took = sorted(self.took)
        return (f"{len(took)} placements, {statistics.median(took) * 1000:.1f} / "
                f"{took[int(0.99 * (len(took) - 1))] * 1000:.1f} / {took[-1] * 1000:.1f} ms, {self.busy} ACCOUNT_BUSY")


async def per_statement(uow, batch: int = 100) -> int:
    """settle's batches as they were before round 25: a statement or more per fill."""
    day, settled = calendar.trading_day(datetime.now(timezone.utc)), 0
    while True:
        async with uow() as u:
            rows = await u.settlement.due(day, batch)
            await u.ledger.lock_accounts(r["account_id"] for r in rows)
            for r in rows:
                entry = settlement_entry(r["fill_id"], r["account_id"], r["amount"])
                await ledger.post_once(entry, u)
                await u.settlement.mark_settled([(r["fill_id"], entry.entry_id)])
            await u.commit()
        settled += len(rows)
        if len(rows) < batch:
            return settled


async def run(server_url: str, fills: int, sellers: int, repeat: int) -> None:
    async with scratch_database(server_url, "stockmesh_bench_settle") as url:
        pool = await asyncpg.create_pool(url, min_size=2, max_size=4)
        uow = lambda: LedgerUnitOfWork(pool)  # noqa: E731
        day = calendar.trading_day(datetime.now(timezone.utc))
        hows = {
            "per statement": lambda timed: per_statement(timed),
            "settle, batch 100": lambda timed: settlement.settle(day, timed, batch=100),
            "settle, batch 500": lambda timed: settlement.settle(day, timed, batch=500),
        }
        rates: dict[str, list[float]] = {how: [] for how in hows}
        held: dict[str, list[float]] = {how: [] for how in hows}
        placed: dict[str, Placements] = {}
        alone = Placements(uow, await a_days_sales(uow, fills, sellers))  # no settlement running
        await asyncio.sleep(3)
        await alone.stop()
        await settlement.settle(day, uow)  # that day's sales, out of the way
        print(f"  no settlement: {alone.said()}", flush=True)
        for i in range(repeat):
            for how, settle in hows.items():
                meanwhile = Placements(uow, await a_days_sales(uow, fills, sellers))
                took: list[float] = []
                t = time.perf_counter()
                done = await settle(lambda: Timed(pool, took))
                seconds = time.perf_counter() - t
                await meanwhile.stop()
                if how in placed:
                    placed[how].took += meanwhile.took
                    placed[how].busy += meanwhile.busy
                else:
                    placed[how] = meanwhile
                settled = done if isinstance(done, int) else done.fills_settled
                assert settled == fills, (how, settled, fills)
                rates[how].append(settled / seconds)
                held[how] += took
                print(f"  {how:18} {settled} fills in {seconds:.2f} s: {settled / seconds:,.0f}/s, "
                      f"batches {statistics.median(took) * 1000:.1f} ms median; {meanwhile.said()}", flush=True)
        await pool.close()
        base = statistics.median(rates["per statement"])
        print(f"\n{fills} fills of {sellers} sellers, {repeat} repeats, median:")
        print(f"  {'':18} {'fills/s':>9}  {'':14} {'ratio':>6}  batch held (median, largest)")
        for how, r in rates.items():
            m = statistics.median(r)
            print(f"  {how:18} {m:9,.0f}  [{min(r):,.0f}-{max(r):,.0f}]  x{m / base:5.1f}  "
                  f"{statistics.median(held[how]) * 1000:6.1f} ms, {max(held[how]) * 1000:6.1f} ms")
        print("\nhold placements of the sellers' accounts meanwhile (median / p99 / largest):")
        print(f"  {'no settlement':18} {alone.said()}")
        for how, p in placed.items():
            print(f"  {how:18} {p.said()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fills", type=int, default=2000)
    ap.add_argument("--sellers", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--server-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="a PostgreSQL server's URL (its database is only used to create and drop the benchmark's)")
    args = ap.parse_args()
    asyncio.run(run(args.server_url, args.fills, args.sellers, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
