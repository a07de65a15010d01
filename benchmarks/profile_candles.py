"""GetCandles in-process, without gRPC transport or Envoy: a day of 1-minute candles (1,440
per reply) from a scratch database, through QuoteServicer.GetCandles, with and without the
cache of final candles. Prints per-reply times and, with --profile, the top functions.

With --history N: instead, N imported 1-minute rows of one symbol (round 27's case: 200,000
rows, 139 days from 2026-06-01), and GetCandles at 1d and at 1h over all of them, uncached:
per reply the wall time and the longest the event loop was held meanwhile (what every live
quote stream of the process waits).

Usage:  .venv/bin/python benchmarks/profile_candles.py [--replies 200] [--profile]
        .venv/bin/python benchmarks/profile_candles.py --history 200000 [--nested] [--replies 5]

--nested: the 1h and 1d candles of those minutes are imported too (history imported at several
widths: which rows a coarser one covers is part of the work).
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402

from meshkit.migrate import scratch_database  # noqa: E402
from quote_svc.domain.candles import Interval, bucket_start  # noqa: E402
from quote_svc.entrypoints.grpc_server import QuoteServicer  # noqa: E402
from quote_svc.service_layer.quotes import QuoteBook  # noqa: E402
from quote_svc.service_layer.unit_of_work import QuoteUnitOfWork  # noqa: E402
from stockmesh.quote.v1 import quote_pb2, quote_service_pb2 as qpb  # noqa: E402

SYMBOL = "MSFT"
DAY = datetime(2024, 3, 4, tzinfo=timezone.utc)


async def seed(pool: asyncpg.Pool) -> None:
    rows = []
    for m in range(1440):
        start = DAY + timedelta(minutes=m)
        px = Decimal(415) + Decimal(m % 40 - 20) / 100
        for width, at in ((60, start), (1, start)):
            rows.append((SYMBOL, width, at, px, px + Decimal("0.05"), px - Decimal("0.05"), px + Decimal("0.01"), 150,
                         15, px * 150, at, 1, at, 2))
    await pool.executemany(
        "INSERT INTO quotes.candles (symbol, width_s, start_time, open, high, low, close, volume, trade_count, pv,"
        " first_at, first_seq, last_at, last_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        rows)


HISTORY_FROM = datetime(2026, 6, 1, tzinfo=timezone.utc)


async def seed_history(pool: asyncpg.Pool, n: int, nested: bool = False) -> None:
    """n imported 1m candles of SYMBOL, one a minute from HISTORY_FROM on; `nested`: also the
    1h and 1d candles of those minutes, as history imported at several widths is."""
    def row(width: int, at: datetime, m: int) -> tuple:
        px = Decimal(415) + Decimal(m % 400 - 200) / 100
        return (SYMBOL, width, at, px, px + Decimal("0.05"), px - Decimal("0.05"), px + Decimal("0.01"),
                150 + m % 7, 15, px)
    minutes = [HISTORY_FROM + timedelta(minutes=m) for m in range(n)]
    rows = [row(60, at, m) for m, at in enumerate(minutes)]
    if nested:
        for interval in (Interval.H1, Interval.D1):
            starts = sorted({bucket_start(at, interval) for at in minutes})
            rows += [row(interval.seconds, at, i) for i, at in enumerate(starts)]
    async with pool.acquire() as conn:
        await conn.copy_records_to_table(
            "imported_candles", schema_name="quotes", records=rows,
            columns=["symbol", "width_s", "start_time", "open", "high", "low", "close", "volume", "trade_count",
                     "vwap"])
        await conn.execute("ANALYZE quotes.imported_candles")


async def history(pool: asyncpg.Pool, args) -> None:
    await seed_history(pool, args.history, args.nested)
    servicer = QuoteServicer(QuoteBook(), lambda: QuoteUnitOfWork(pool))
    servicer.candle_cache = None
    end = HISTORY_FROM + timedelta(minutes=args.history)
    stalls: list[float] = []

    async def ticker() -> None:
        # How late a 1 ms sleep wakes up: the event loop held by something else.
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            stalls.append(time.perf_counter() - t - 0.001)

    tick = asyncio.create_task(ticker())
    try:
        for label, interval, page in (("1d", quote_pb2.CANDLE_INTERVAL_1D, 1000),
                                      ("1h", quote_pb2.CANDLE_INTERVAL_1H, 5000)):
            req = qpb.GetCandlesRequest(symbol=SYMBOL, interval=interval, page_size=page)
            req.start_time.FromDatetime(HISTORY_FROM)
            req.end_time.FromDatetime(end)
            wall, held = [], []
            for _ in range(args.replies):
                stalls.clear()
                await asyncio.sleep(0.01)
                stalls.clear()
                w = time.perf_counter()
                resp = await servicer.GetCandles(req, None)
                wall.append(time.perf_counter() - w)
                await asyncio.sleep(0.005)
                held.append(max(stalls, default=0.0))
            if isinstance(resp, bytes):
                resp = qpb.GetCandlesResponse.FromString(resp)
            print(f"{label}: {args.history:,} imported 1m rows -> {len(resp.candles):,} candles: "
                  f"{args.replies} replies, wall median {statistics.median(wall) * 1e3:.1f} ms, "
                  f"max {max(wall) * 1e3:.1f} ms; event loop held at most {max(held) * 1e3:.1f} ms "
                  f"(median of the replies' longest {statistics.median(held) * 1e3:.1f} ms)", flush=True)
    finally:
        tick.cancel()


async def run(args) -> None:
    server = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    async with scratch_database(server, "stockmesh_prof") as url:
        pool = await asyncpg.create_pool(url, min_size=2, max_size=4)
        if args.history:
            await history(pool, args)
            await pool.close()
            return
        await seed(pool)
        servicer = QuoteServicer(QuoteBook(), lambda: QuoteUnitOfWork(pool))
        req = qpb.GetCandlesRequest(symbol=SYMBOL, interval=quote_pb2.CANDLE_INTERVAL_1M, page_size=1440)
        req.start_time.FromDatetime(DAY)
        req.end_time.FromDatetime(DAY + timedelta(days=1))
        ref = None
        for label, cache in (("uncached", None), ("cached", servicer.candle_cache)):
            servicer.candle_cache = cache
            for _ in range(10):
                resp = await servicer.GetCandles(req, None)
                if isinstance(resp, bytes):  # the reply serialized once (what the servicer sends)
                    resp = qpb.GetCandlesResponse.FromString(resp)
            ref = ref or resp
            assert resp == ref and len(resp.candles) == 1440
            wall, cpu = [], []
            for _ in range(args.replies):
                w, c = time.perf_counter(), time.process_time()
                await servicer.GetCandles(req, None)
                wall.append(time.perf_counter() - w)
                cpu.append(time.process_time() - c)
            wall.sort()
            print(f"{label:>9}: {args.replies} replies of 1,440 candles: wall p50 {statistics.median(wall) * 1e3:.2f} ms, "
                  f"p99 {wall[int(0.99 * (len(wall) - 1))] * 1e3:.2f} ms; CPU (this process) "
                  f"{statistics.mean(cpu) * 1e3:.2f} ms/reply", flush=True)
            if args.profile:
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(20):
                    await servicer.GetCandles(req, None)
                prof.disable()
                pstats.Stats(prof).sort_stats("tottime").print_stats(8)
        await pool.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--replies", type=int, default=200)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--history", type=int, default=0, metavar="N",
                    help="N imported 1m rows, GetCandles 1d and 1h over them (see above)")
    ap.add_argument("--nested", action="store_true",
                    help="with --history: the 1h and 1d candles of those minutes imported too")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
