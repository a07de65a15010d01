"""GetCandles in-process, without gRPC transport or Envoy: a day of 1-minute candles (1,440
per reply) from a scratch database, through QuoteServicer.GetCandles, with and without the
cache of final candles. Prints per-reply times and, with --profile, the top functions.

Usage:  .venv/bin/python benchmarks/profile_candles.py [--replies 200] [--profile]
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


async def run(args) -> None:
    server = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    async with scratch_database(server, "stockmesh_prof") as url:
        pool = await asyncpg.create_pool(url, min_size=2, max_size=4)
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
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
