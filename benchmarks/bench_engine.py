"""The matching engine end to end: publish an EngineCommand to JetStream → its first execution
is published by the engine (a separate `python -m matching_svc` process).

Open loop: orders are sent at a fixed arrival rate on one symbol; each order's latency is
measured from its *intended* send time (so a stall on the sending side counts against us,
no coordinated omission) to the moment this process receives the order's first execution:
its ACCEPTED notice (core NATS on the acceptances subject, sent once the engine's journal
entries before it are stored) or its REJECTED (on the executions subject, stored by then).

Usage:  .venv/bin/python benchmarks/bench_engine.py [--rates 1000,5000] [--seconds 10]
It starts its own nats-server in a scratch folder unless --nats-url is given.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matching_svc.adapters.jetstream import Names, ensure_streams  # noqa: E402
from meshkit import bus  # noqa: E402
from stockmesh.common.v1 import common_pb2 as c  # noqa: E402
from stockmesh.matching.v1 import matching_pb2 as pb  # noqa: E402
from tests.support.engine import kill, new_order, start_engine  # noqa: E402

SYMBOL = "AAPL"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def run_rate(nc, ns: str, rate: int, seconds: float, warmup: float) -> dict:
    names = Names(ns)
    subject = names.orders_subject(SYMBOL)
    rng = random.Random(rate)
    run = uuid.uuid4().hex[:6]
    intended: dict[str, float] = {}
    latency: dict[str, float] = {}
    done = asyncio.Event()
    total = int(rate * (seconds + warmup))

    async def on_execution(msg) -> None:
        ex = pb.Execution.FromString(msg.data)
        if ex.type == pb.EXECUTION_TYPE_ACCEPTED or ex.type == pb.EXECUTION_TYPE_REJECTED:
            t0 = intended.get(ex.order_id)
            if t0 is not None and ex.order_id not in latency:
                latency[ex.order_id] = time.perf_counter() - t0
                if len(latency) == total:
                    done.set()

    sub = await nc.subscribe(names.executions_subject(SYMBOL), cb=on_execution)
    notices = await nc.subscribe(names.accepted_subject(SYMBOL), cb=on_execution)
    mid = 18_725
    start = time.perf_counter() + 0.2
    for i in range(total):
        t = start + i / rate
        delay = t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        # A realistic mix: limits near the touch on both sides, some crossing; some IOC.
        mid += rng.choice((-1, 0, 0, 1))
        side = c.SIDE_BUY if rng.random() < 0.5 else c.SIDE_SELL
        offset = rng.randint(-3, 8)
        cents = mid - offset if side == c.SIDE_BUY else mid + offset
        tif = c.TIME_IN_FORCE_IOC if rng.random() < 0.1 else c.TIME_IN_FORCE_DAY
        oid = f"{run}-{i}"
        cmd = new_order(oid, f"acct{rng.randrange(50)}", side, rng.randint(1, 10) * 10,
                        limit=f"{cents // 100}.{cents % 100:02d}", tif=tif, symbol=SYMBOL)
        intended[oid] = t
        # Fire and forget into the stream (JetStream stores a plain publish on its subject).
        await nc.publish(subject, cmd.SerializeToString(), headers={"Nats-Msg-Id": oid})
    sent_at = time.perf_counter()
    try:
        await asyncio.wait_for(done.wait(), timeout=30)
    except asyncio.TimeoutError:
        pass
    await sub.unsubscribe()
    await notices.unsubscribe()
    offered_seconds = sent_at - start
    measured_from = start + warmup
    samples = [v * 1000 for k, v in latency.items() if intended[k] >= measured_from]
    return {
        "rate": rate,
        "sent": total,
        "answered": len(latency),
        "achieved_send_rate": total / offered_seconds,
        "samples": len(samples),
        "p50": pct(samples, 50) if samples else float("nan"),
        "p99": pct(samples, 99) if samples else float("nan"),
        "max": max(samples) if samples else float("nan"),
        "mean": statistics.fmean(samples) if samples else float("nan"),
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="1000,5000")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--nats-url")
    ap.add_argument("--nats-sync", default="always",
                    help="JetStream sync_interval of the nats-server this script starts: 'always' "
                         "(the project's setting: fsync every write) or e.g. '2m' (nats-server's default)")
    args = ap.parse_args()

    sup = None
    if args.nats_url:
        url = args.nats_url
    else:
        from meshkit.launcher import infra
        from meshkit.launcher.infra import start_nats
        from meshkit.launcher.supervisor import Supervisor

        project_config = infra.nats_config
        infra.nats_config = lambda *a, **k: project_config(*a, **k).replace(
            "sync_interval: always", f"sync_interval: {args.nats_sync}")

        sup = Supervisor(say=lambda _: None)
        url, _ = start_nats(Path(tempfile.mkdtemp(prefix="bench-engine-")), sup)
    nc = await bus.connect(url, "bench-engine")
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
          f"engine: separate process; one symbol ({SYMBOL}); open loop; "
          f"JetStream sync_interval: {args.nats_sync if not args.nats_url else 'as configured'}")
    print(f"{'offered/s':>10} {'sent':>7} {'answered':>8} {'send/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    try:
        for rate in (int(r) for r in args.rates.split(",")):
            ns = f"bench{uuid.uuid4().hex[:8]}"
            await ensure_streams(nc.jetstream(), Names(ns))
            proc, _ = await start_engine(url, ns, ENGINE_SYMBOLS=SYMBOL, LOG_LEVEL="WARNING")
            try:
                await asyncio.sleep(2.5)  # the engine process starts and takes its lease
                r = await run_rate(nc, ns, rate, args.seconds, args.warmup)
            finally:
                await kill(proc)
            print(f"{r['rate']:>10} {r['sent']:>7} {r['answered']:>8} {r['achieved_send_rate']:>8.0f} "
                  f"{r['p50']:>8.2f} {r['p99']:>8.2f} {r['max']:>8.2f}")
    finally:
        await nc.close()
        if sup is not None:
            sup.stop_all()


if __name__ == "__main__":
    asyncio.run(main())
