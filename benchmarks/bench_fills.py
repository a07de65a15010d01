"""How fast the mesh applies fills: order_svc's and ledger_svc's execution consumers of one symbol.

    .venv/bin/python benchmarks/bench_fills.py                     # 100, 200, 400 fills/s, 15 s each
    .venv/bin/python benchmarks/bench_fills.py --rates 300 --duration 20
    .venv/bin/python benchmarks/bench_fills.py --rates 150 --baseline-tree /tmp/base --repeats 2

Every fill the engine publishes is applied twice, each on its own: order_svc moves the two
orders (FILLED, an OrderUpdate and an audit event each) and the ledger moves cash and shares
(captures, positions, unsettled proceeds). Each service reads one symbol's executions through
one consumer, in order, so a symbol's fills per second are bounded by how fast that consumer
applies them; behind it, customers see their orders' states and portfolios late.

For each offered rate, on a fresh mesh of its own (meshkit/launcher/harness.py, no simulator,
the market always open, rate limits far above the load):

1. 20 sellers get shares of AAPL (a transfer in, straight through the ledger's service layer)
   and place rate x duration resting sells of one share each at the reference price; 100
   buyers are funded. Not measured; the sells are all working in the book before step 2.
2. The buyers send as many one-share limit buys at that price, open loop at the offered rate
   (request i due at t0 + i / rate): each fills one resting sell at once, one FILL execution.
3. Every 0.2 s the two consumers (`orders_AAPL`, `ledger_AAPL`) are read off JetStream: how
   many executions wait for them (pending + delivered and not yet acknowledged; a consumer
   acknowledges after it applied).

Printed per rate: buys acknowledged per second, each consumer's fills applied per second while
the buys came, its largest backlog, and how long after the last buy's acknowledgement it had
applied everything (0: it kept up); the CPU of each process over the window; and at the end a
check that every order is FILLED and the ledger holds nothing. Figures only: nothing asserts a
timing.

With `--baseline-tree DIR` (another checkout, e.g. `git archive <commit> | tar -x -C DIR`),
every rate runs on a mesh of that tree's services too (PYTHONPATH=DIR:DIR/gen: the services,
started in their data folder, import that tree's code), the two alternated `--repeats` times
(`--profile-dir` keeps the last run's profiles of each rate), and a last table gives
each process's CPU milliseconds per fill, baseline against this tree: a figure that holds on a
machine shared with other work, where fills per second and backlogs do not.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import grpc  # noqa: E402
import psutil  # noqa: E402

from bench_place_order import MESH_ENV, BenchMesh, CpuMeter, fund, start_profile  # noqa: E402
from meshkit.launcher.harness import unwind_on_signals  # noqa: E402
from meshkit.symbols import listed  # noqa: E402
from stockmesh.common.v1 import common_pb2  # noqa: E402
from stockmesh.ledger.v1 import ledger_service_pb2_grpc  # noqa: E402
from stockmesh.order.v1 import order_service_pb2 as order_pb, order_service_pb2_grpc  # noqa: E402

SYMBOL = "AAPL"
SELLERS, BUYERS, CHANNELS, SETUP_CONCURRENCY = 20, 100, 8, 64
CONSUMERS = ("orders", "ledger")


@dataclass
class Result:
    rate: float
    tree: str = "this tree"
    fills: int = 0
    acked: int = 0
    errors: int = 0
    send_seconds: float = 0.0
    applied_per_s: dict[str, float] = field(default_factory=dict)
    max_backlog: dict[str, int] = field(default_factory=dict)
    drain_after: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    machine: float = 0.0
    states: dict[str, int] = field(default_factory=dict)
    held: Decimal = Decimal(0)
    wall: float = 0.0


def request(side: int, price: str, tag: str) -> order_pb.PlaceOrderRequest:
    return order_pb.PlaceOrderRequest(
        client_order_id=tag, symbol=SYMBOL, side=side, type=common_pb2.ORDER_TYPE_LIMIT, quantity=1,
        limit_price=price, time_in_force=common_pb2.TIME_IN_FORCE_GTC)


async def place_all(stubs, mesh: BenchMesh, orders: list[tuple[str, order_pb.PlaceOrderRequest]]) -> list[str]:
    """Place every (account, request) with bounded concurrency (setup, not measured)."""
    sem = asyncio.Semaphore(SETUP_CONCURRENCY)
    ids: list[str] = []

    async def one(i: int, account: str, req) -> None:
        async with sem:
            reply = await stubs[i % len(stubs)].PlaceOrder(req, metadata=mesh.auth(account), timeout=30)
            if reply.order.status != common_pb2.ORDER_STATUS_NEW:
                raise RuntimeError(f"setup order not NEW: {reply.order}")
            ids.append(reply.order.order_id)

    await asyncio.gather(*(one(i, a, r) for i, (a, r) in enumerate(orders)))
    return ids


async def watch_book(nc, namespace: str):
    """Subscribe to the engine's ACCEPTED notices (core NATS, the acceptances subject) before the
    orders are placed; returns a function that waits for every order id given to be seen."""
    from meshkit import bus
    from stockmesh.matching.v1 import matching_pb2

    seen: set[str] = set()

    async def on_notice(msg) -> None:
        seen.add(matching_pb2.Execution.FromString(msg.data).order_id)

    sub = await nc.subscribe(bus.subject(namespace, "accepted", ">"), cb=on_notice)
    await nc.flush()

    async def all_in_book(order_ids: list[str], patience: float = 60.0) -> None:
        deadline = time.perf_counter() + patience
        while not seen.issuperset(order_ids):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{len(set(order_ids) - seen)} resting orders never reached the book")
            await asyncio.sleep(0.1)
        await sub.unsubscribe()

    return all_in_book


async def backlogs(js, namespace: str) -> dict[str, tuple[int, int]]:
    """Per consumer: (executions waiting for it, its ack floor's stream sequence)."""
    from meshkit import bus
    from meshkit.executions import consumer_name

    stream = bus.stream_name(namespace, "EXECUTIONS")
    out = {}
    for durable in CONSUMERS:
        info = await js.consumer_info(stream, consumer_name(durable, SYMBOL))
        out[durable] = (info.num_pending + info.num_ack_pending, info.ack_floor.stream_seq or 0)
    return out


async def run_rate(mesh: BenchMesh, rate: float, duration: float, profile_dir: Path | None = None) -> Result:
    import nats

    from tests.support.funding import transfer_in_shares

    res = Result(rate=rate)
    n = int(rate * duration)
    price = str(listed()[SYMBOL].reference_price)
    sellers = [f"fs{i:02d}" for i in range(SELLERS)]
    buyers = [f"fb{i:03d}" for i in range(BUYERS)]
    per_seller = -(-n // SELLERS)
    for s in sellers:
        await transfer_in_shares(mesh.database_url, s, SYMBOL, per_seller, price)
    channels = [mesh.channel() for _ in range(CHANNELS)]
    nc = await nats.connect(mesh.state()["nats_url"])
    js = nc.jetstream()
    try:
        stubs = [order_service_pb2_grpc.OrderServiceStub(c) for c in channels]
        await fund(ledger_service_pb2_grpc.LedgerServiceStub(channels[0]), mesh, buyers)
        t = time.perf_counter()
        sells = [(sellers[i % SELLERS], request(common_pb2.SIDE_SELL, price, f"s{i}")) for i in range(n)]
        all_in_book = await watch_book(nc, mesh.namespace)
        await all_in_book(await place_all(stubs, mesh, sells))
        print(f"  {n} resting sells placed in {time.perf_counter() - t:.1f}s", flush=True)

        buys = [(buyers[i % BUYERS], request(common_pb2.SIDE_BUY, price, f"b{i}")) for i in range(n)]
        for account, _ in buys[:BUYERS]:
            mesh.auth(account)  # tokens minted before the clock starts
        samples: list[tuple[float, dict[str, tuple[int, int]]]] = []
        sending = True

        async def sample() -> None:
            while sending or any(b for b, _ in samples[-1][1].values()):
                samples.append((time.perf_counter(), await backlogs(js, mesh.namespace)))
                await asyncio.sleep(0.2)

        meter = CpuMeter(mesh, mesh.db_name or "")
        samples.append((time.perf_counter(), await backlogs(js, mesh.namespace)))
        before = meter.snapshot()
        sampler = asyncio.create_task(sample())
        profilers = start_profile(mesh, duration, profile_dir / f"{rate:g}") if profile_dir else []
        t0 = time.perf_counter()
        last_ack = t0

        async def one(i: int, account: str, req) -> None:
            nonlocal last_ack
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            try:
                await stubs[i % len(stubs)].PlaceOrder(req, metadata=mesh.auth(account), timeout=30)
                res.acked += 1
                last_ack = max(last_ack, time.perf_counter())
            except grpc.aio.AioRpcError:
                res.errors += 1

        await asyncio.gather(*(one(i, a, r) for i, (a, r) in enumerate(buys)))
        res.send_seconds = last_ack - t0
        sending = False
        await sampler
        after = meter.snapshot()
        for p in profilers:
            p.wait()
        used, res.machine, res.wall = CpuMeter.diff(before, after)
        res.cpu = {k: v for k, v in used.items() if v >= 0.005}
        res.fills = samples[-1][1]["orders"][1] - samples[0][1]["orders"][1]
        for durable in CONSUMERS:
            floor0 = samples[0][1][durable][1]
            sent = [floor for at, b in samples if at <= last_ack for floor in [b[durable][1]]]
            res.applied_per_s[durable] = (sent[-1] - floor0) / res.send_seconds if sent else 0.0
            res.max_backlog[durable] = max(b[durable][0] for _, b in samples)
            caught_up = next((at for at, b in samples if at >= last_ack and b[durable][0] == 0), samples[-1][0])
            res.drain_after[durable] = max(0.0, caught_up - last_ack)
        res.states, res.held = await outcome(mesh)
    finally:
        await nc.close()
        for c in channels:
            await c.close()
    return res


async def outcome(mesh: BenchMesh) -> tuple[dict[str, int], Decimal]:
    """Orders by status in order_svc, and what the ledger still holds (cash and shares)."""
    import asyncpg

    conn = await asyncpg.connect(mesh.database_url)
    try:
        states = {r["status"]: r["n"] for r in await conn.fetch(
            "SELECT status, count(*) AS n FROM orders.orders GROUP BY status")}
        held = await conn.fetchval("SELECT coalesce(sum(held), 0) FROM ledger.balances")
        return states, held
    finally:
        await conn.close()


def report(r: Result) -> None:
    print(f"\n{r.rate:g} fills/s offered ({r.tree}): {r.acked} buys acknowledged in {r.send_seconds:.1f}s "
          f"({r.acked / r.send_seconds:.0f}/s), {r.errors} errors, {r.fills} executions applied")
    for durable in CONSUMERS:
        print(f"  {durable + '_' + SYMBOL:12} applied {r.applied_per_s[durable]:6.0f}/s while the buys came; "
              f"largest backlog {r.max_backlog[durable]:5d}; all applied {r.drain_after[durable]:5.1f}s after "
              "the last acknowledgement")
    print(f"  CPU (cores): machine {r.machine:.2f}; " + ", ".join(
        f"{k} {v:.2f}" for k, v in sorted(r.cpu.items(), key=lambda kv: -kv[1])))
    print(f"  orders by status: {dict(sorted(r.states.items()))}; ledger still holds {r.held}")


def cpu_per_fill(results: list[Result]) -> None:
    """Per process, CPU ms per fill applied: each tree's median over its runs, and their ratio."""
    from statistics import median

    def ms(r: Result, name: str) -> float:
        return r.cpu.get(name, 0.0) * r.wall / max(r.fills, 1) * 1000

    for rate in dict.fromkeys(r.rate for r in results):
        runs = {t: [r for r in results if r.rate == rate and r.tree == t] for t in ("baseline", "this tree")}
        names = sorted({n for r in results if r.rate == rate for n in r.cpu},
                       key=lambda n: -sum(ms(r, n) for r in runs["baseline"]))
        print(f"\nCPU ms per fill at {rate:g}/s, median of {len(runs['this tree'])} runs each "
              "(baseline -> this tree):")
        for name in names + ["all of the mesh"]:
            pick = (lambda r: sum(ms(r, n) for n in names if not n.startswith("load generator"))) \
                if name == "all of the mesh" else (lambda r, n=name: ms(r, n))
            before, after = (median(pick(r) for r in runs[t]) for t in ("baseline", "this tree"))
            print(f"  {name:34} {before:6.3f} -> {after:6.3f}  {after / before - 1:+6.1%}" if before else
                  f"  {name:34} {before:6.3f} -> {after:6.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[100.0, 200.0, 400.0],
                    help="offered fills per second, comma-separated (default 100,200,400)")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of buys per rate (default 15)")
    ap.add_argument("--profile-dir", type=Path, default=None,
                    help="record order_svc and ledger_svc with py-spy during each rate's buys, into DIR/<rate>/")
    ap.add_argument("--baseline-tree", type=Path, default=None,
                    help="also run every rate on this checkout's services, alternated with this tree's")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each rate (and tree) (default 1)")
    ap.add_argument("--quote-replicas", type=int, default=1,
                    help="quote_svc replicas (default 1; the end-to-end tests' mesh runs 2)")
    args = ap.parse_args()
    if any(r <= 0 for r in args.rates) or args.duration <= 0 or args.repeats <= 0:
        ap.error("rates, duration and repeats must be positive")
    if args.baseline_tree and not (args.baseline_tree / "meshkit").is_dir():
        ap.error(f"{args.baseline_tree} is not a StockMesh checkout")
    trees = [("this tree", {})]
    if args.baseline_tree:
        base = args.baseline_tree.resolve()
        trees.insert(0, ("baseline", {"PYTHONPATH": f"{base}:{base / 'gen'}"}))
    unwind_on_signals()  # SIGTERM / SIGHUP / Ctrl-C (even in a background job) stop the mesh
    load = os.getloadavg()
    print(f"bench_fills: {platform.python_implementation()} {platform.python_version()}, {psutil.cpu_count()} "
          f"CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; one mesh per rate")
    results = []
    for rate, _, (tree, env) in [(r, i, t) for r in args.rates for i in range(args.repeats) for t in trees]:
        mesh = BenchMesh(env={**MESH_ENV, **env}, db_prefix="stockmesh_bench", namespace_prefix="bench",
                         extra_args=["--no-simulator", "--quote-replicas", str(args.quote_replicas)])
        try:
            print(f"\nstarting a mesh for {rate:g} fills/s ({tree}) ...", flush=True)
            mesh.start()
            results.append(asyncio.run(run_rate(mesh, rate, args.duration, args.profile_dir)))
            results[-1].tree = tree
            report(results[-1])
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the mesh", file=sys.stderr)
            return 130
        finally:
            mesh.stop()
    print("\noffered/s  acked/s  " + "  ".join(f"{d}: applied/s  backlog  drained s" for d in CONSUMERS)
          + "  tree")
    for r in results:
        print(f"{r.rate:9g}  {r.acked / r.send_seconds:7.0f}  " + "  ".join(
            f"{r.applied_per_s[d]:>{len(d) + 12}.0f}  {r.max_backlog[d]:7d}  {r.drain_after[d]:9.1f}"
            for d in CONSUMERS) + f"  {r.tree}")
    if args.baseline_tree:
        cpu_per_fill(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
