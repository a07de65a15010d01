"""PlaceOrder through Envoy under an open-loop load, next to the floor that any order pays.

    .venv/bin/python benchmarks/bench_place_order.py            # 100, 250, 500, 1,000 orders/s, 15 s each
    .venv/bin/python benchmarks/bench_place_order.py --quick    # smoke run: 50 and 100 orders/s, 2 s each
    .venv/bin/python benchmarks/bench_place_order.py --mesh-per-rate --rates 500 --repeat 3   # median of three

What it does, in one run:

1. Starts its own mesh with `stockmesh up` (meshkit/launcher/harness.py): a data folder under /tmp,
   a fresh database on the PostgreSQL at $DATABASE_URL (default 127.0.0.1:5432, user
   postgres), its own namespace, a free port and its own pinned nats-server (JetStream on
   file storage, `sync_interval: always`). The services get STOCKMESH_MARKET_ALWAYS_OPEN=1
   and rate limits far above the offered load (the Redis token buckets are still consulted
   on every order, as in production; they just never refuse).
2. Funds N accounts (default 200) with one Deposit each, through Envoy.
3. Measures the floor, sequentially in a closed loop on the idle mesh:
   (a) the cheapest gRPC call through Envoy to order_svc: a PlaceOrder with an empty request,
       refused INVALID_ARGUMENT by the servicer's validation before any I/O: the same route,
       JWT check, HTTP/2 hops, interceptor and servicer as a real PlaceOrder, and nothing
       else (reflection's list_services and an empty account's GetPortfolio are printed
       beside it for comparison, not added);
   (b) one PostgreSQL commit: a one-row INSERT in its own transaction (asyncpg, as the
       services use) against the mesh's database;
   (c) one JetStream publish acknowledgement on the mesh's NATS (a file-storage stream of
       its own, ~150-byte message with a Nats-Msg-Id, as the outbox relay publishes);
   and their sum, the floor.
4. For each offered rate: a warm-up at that rate (discarded), then the measured window. The
   generator is open loop: request i is due at t0 + i / rate and is sent by its own asyncio
   task at that moment whatever earlier requests are doing; its latency runs from the
   *intended* send time to the reply, so a stalled client or server cannot hide queueing
   (no coordinated omission). Requests are LIMIT DAY buys of 1-10 shares, 0.5-5 % below the
   reference price of a listed symbol (so they rest and never trade), unique client order
   ids, accounts round-robin, spread over several channels (one HTTP/2 connection each).
   The sender is, by default, the compiled generator in benchmarks/loadgen (Go, built on
   first use with Debian's golang-go and golang-google-grpc-dev into ~/.cache/stockmesh): the
   same open loop at a fraction of grpc.aio's CPU, and late by less (its own lateness is part
   of the latency it measures). This script builds the requests and reads the replies; the
   generator sends bytes and never parses a message. Without Go it falls back to this
   script's own grpc.aio loop (`--generator python` asks for it).
5. Prints, per rate: p50 / p90 / p99 / p99.9 / max acknowledgement latency, the achieved
   rate, errors by status code, the split of order statuses, how late the generator itself
   sent, the outbox backlog after the step, how long after its acknowledgement each order was
   working in the book (the engine's ACCEPTED notice, seen on a NATS subscription to the
   mesh's acceptances), where the time goes inside the mesh (p50 / p99 of Envoy's upstream time to
   order_svc, of PlaceOrder's handler and of each of its batched steps, of ledger_svc's
   PlaceHolds handler per call (a batch), and of both services' event loop lag, read off the
   histograms Envoy, order_svc and ledger_svc export, as differences of two scrapes around the
   window; with each of order_svc's batchers' flushes a second and items per flush;
   approximate within a bucket), the NATS server's messages in and out per order (its
   /varz), and the CPU used by each process of the mesh
   (and by everything else on the machine) during the window; then the ratio of each
   PlaceOrder percentile to the floor.

The mesh is stopped (SIGTERM) and the database dropped at the end, also on Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import random
import resource
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from pathlib import Path


import grpc  # noqa: E402
import psutil  # noqa: E402

from meshkit.launcher.harness import MeshProcess as BenchMesh, unwind_on_signals  # noqa: E402
from meshkit.launcher.infra import varz  # noqa: E402
from meshkit.symbols import listed  # noqa: E402
from stockmesh.common.v1 import common_pb2  # noqa: E402
from stockmesh.ledger.v1 import ledger_service_pb2 as ledger_pb, ledger_service_pb2_grpc  # noqa: E402
from stockmesh.order.v1 import order_pb2, order_service_pb2 as order_pb, order_service_pb2_grpc  # noqa: E402

STATUS_NAMES = {v: k.removeprefix("ORDER_STATUS_") for k, v in common_pb2.OrderStatus.items()}
REJECT_NAMES = {v: k.removeprefix("ORDER_REJECT_REASON_") for k, v in order_pb2.OrderRejectReason.items()}
MESH_ENV = {
    "STOCKMESH_MARKET_ALWAYS_OPEN": "1",
    # Far above the offered load: the buckets are still checked in Redis on every order.
    "ORDER_RATE_PER_ACCOUNT": "100000", "ORDER_BURST_PER_ACCOUNT": "100000",
    "ORDER_RATE_PER_SYMBOL": "100000", "ORDER_BURST_PER_SYMBOL": "100000",
}
DEPOSIT = "10000000.00"  # per account: far more than the orders of a full run can hold
REQUEST_TIMEOUT = 10.0


# ---------------------------------------------------------------------------- statistics

def pct(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (p in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(-(-p * len(sorted_values) // 100)) - 1))
    return sorted_values[k]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f}"


@dataclass
class Floor:
    name: str
    samples: list[float]

    @property
    def sorted(self) -> list[float]:
        return sorted(self.samples)


# ------------------------------------------------------------------------------ requests

def limit_price(reference: Decimal, rng: random.Random) -> Decimal:
    """0.5-5 % below the reference, on the tick: valid, inside the price band, never crossing."""
    tick = Decimal("0.01") if reference >= 1 else Decimal("0.0001")
    raw = reference * (Decimal(1) - Decimal(rng.randint(5, 50)) / Decimal(1000))
    return (raw / tick).to_integral_value(rounding=ROUND_DOWN) * tick


def build_requests(n: int, tag: str, accounts: list[str], metadata: dict[str, tuple], rng: random.Random,
                   start: int) -> list[tuple[order_pb.PlaceOrderRequest, tuple]]:
    symbols = listed()
    names = sorted(symbols)
    out = []
    for i in range(n):
        account = accounts[(start + i) % len(accounts)]
        sym = names[rng.randrange(len(names))]
        req = order_pb.PlaceOrderRequest(
            client_order_id=f"{tag}-{i}", symbol=sym, side=common_pb2.SIDE_BUY,
            type=common_pb2.ORDER_TYPE_LIMIT, quantity=rng.randint(1, 10),
            limit_price=str(limit_price(symbols[sym].reference_price, rng)),
            time_in_force=common_pb2.TIME_IN_FORCE_DAY)
        out.append((req, metadata[account]))
    return out


# ------------------------------------------------------------------------------ CPU use

CHILD_GENERATOR = "load generator (Go, child of this script)"


class CpuMeter:
    """CPU seconds of the mesh's processes (and of everything else) between two snapshots."""

    def __init__(self, mesh: BenchMesh, db_name: str) -> None:
        self.mesh, self.db_name = mesh, db_name
        self.me = psutil.Process()

    def _procs(self) -> dict[str, list[psutil.Process]]:
        groups: dict[str, list[psutil.Process]] = {}
        for name, pid in (self.mesh.state().get("pids") or {}).items():
            try:
                groups.setdefault(name, []).append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        # PostgreSQL backends serving this mesh's database (the server itself is shared).
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or ())
            if cmd.startswith("postgres: ") and f" {self.db_name} " in cmd:
                groups.setdefault("postgres (backends of our db)", []).append(p)
        groups["load generator (this script)"] = [self.me]
        return groups

    def snapshot(self) -> tuple[float, dict[str, dict[int, float]], psutil._common.scputimes]:
        snap: dict[str, dict[int, float]] = {}
        for name, procs in self._procs().items():
            for p in procs:
                try:
                    t = p.cpu_times()
                    snap.setdefault(name, {})[p.pid] = t.user + t.system
                except psutil.Error:
                    pass
        # The compiled generator runs as a child for one window and is gone before the next
        # snapshot: its CPU is in the children's rusage once it has been waited for.
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        snap[CHILD_GENERATOR] = {0: r.ru_utime + r.ru_stime}
        return time.perf_counter(), snap, psutil.cpu_times()

    @staticmethod
    def diff(a, b) -> tuple[dict[str, float], float, float]:
        """Per group: cores used (1.0 = one core busy); the whole machine's busy cores; wall s."""
        (t0, s0, c0), (t1, s1, c1) = a, b
        wall = t1 - t0
        used: dict[str, float] = {}
        for name, pids in s1.items():
            total = sum(v - s0.get(name, {}).get(pid, v) for pid, v in pids.items())
            used[name] = total / wall
        busy = lambda c: c.user + c.nice + c.system + c.irq + c.softirq + c.steal  # noqa: E731
        machine = (busy(c1) - busy(c0)) / wall
        return used, machine, wall


# ------------------------------------------------------------- where the time goes

# (source, metric family, label to match, value, what it is); all histograms, read before and
# after the window from order_svc's /metrics and Envoy's /stats/prometheus.
TIME_PARTS = (
    ("envoy", "envoy_cluster_upstream_rq_time", "envoy_cluster_name", "order_svc_commands",
     "Envoy -> order_svc -> Envoy"),
    ("order_svc", "stockmesh_rpc_seconds", "method", "/stockmesh.order.v1.OrderService/PlaceOrder",
     "PlaceOrder's handler"),
    ("order_svc", "stockmesh_batch_wait_seconds", "batcher", "rate_limits", "rate limits"),
    ("order_svc", "stockmesh_batch_wait_seconds", "batcher", "record_orders", "record"),
    ("order_svc", "stockmesh_batch_wait_seconds", "batcher", "place_holds", "hold"),
    ("order_svc", "stockmesh_batch_wait_seconds", "batcher", "decide_orders", "decide"),
    # Per call (a batch of holds), not per order: how much of the hold step the ledger's handler is.
    ("ledger_svc", "stockmesh_rpc_seconds", "method", "/stockmesh.ledger.v1.HoldService/PlaceHolds",
     "PlaceHolds' handler in ledger_svc, per call"),
    # How long a ready callback waits for its turn on each service's event loop (sampled).
    ("order_svc", "stockmesh_event_loop_lag_seconds", None, "order_svc loop", "order_svc's event loop lag"),
    ("ledger_svc", "stockmesh_event_loop_lag_seconds", None, "ledger_svc loop", "ledger_svc's event loop lag"),
)
Buckets = dict[tuple[str, str], list[tuple[float, float]]]  # (source, part) -> [(le, cumulative count)]
# order_svc's batchers: how often each flushed and how many items a flush carried.
BATCHERS = ("rate_limits", "place_holds", "record_orders")
Flushes = dict[str, tuple[float, float]]  # batcher -> (items so far, flushes so far)


def scrape_histograms(mesh: BenchMesh) -> tuple[Buckets, Flushes]:
    """The cumulative buckets of TIME_PARTS now, in seconds (Envoy counts milliseconds), and
    the items and flushes of BATCHERS so far."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    state = mesh.state()
    urls = {**{svc: f"http://127.0.0.1:{state['metrics_ports'][svc]}/metrics" for svc in ("order_svc", "ledger_svc")},
            "envoy": f"http://127.0.0.1:{state['ports']['admin']}/stats/prometheus"}
    out: Buckets = {}
    flushes: Flushes = {}
    for source, url in urls.items():
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        scale = 1000.0 if source == "envoy" else 1.0
        for family in text_string_to_metric_families(text):
            if source == "order_svc" and family.name == "stockmesh_batch_size":
                for batcher in BATCHERS:
                    got = {x.name: x.value for x in family.samples if x.labels.get("batcher") == batcher}
                    if got:
                        flushes[batcher] = (got.get(family.name + "_sum", 0.0), got.get(family.name + "_count", 0.0))
            for src, name, label, value, _ in TIME_PARTS:
                if src != source or family.name != name:
                    continue
                rows = [(float(x.labels["le"]) / scale, x.value) for x in family.samples
                        if x.name == name + "_bucket" and (label is None or x.labels.get(label) == value)]
                if rows:
                    out[(source, value)] = sorted(rows)
    return out, flushes


def flush_rates(before: Flushes, after: Flushes, window: float) -> list[tuple[str, float, float]]:
    """(batcher, flushes a second, mean items per flush) over the window."""
    rows = []
    for batcher, (items, n) in after.items():
        items0, n0 = before.get(batcher, (0.0, 0.0))
        if n > n0:
            rows.append((batcher, (n - n0) / window, (items - items0) / (n - n0)))
    return rows


def bucket_pct(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float) -> float | None:
    """The q-th percentile of what was observed between two scrapes of one histogram, read off
    its buckets (linear within a bucket, as Prometheus's histogram_quantile does)."""
    was = dict(before)
    counts = [(le, n - was.get(le, 0.0)) for le, n in after]
    total = counts[-1][1] if counts else 0.0
    if total <= 0:
        return None
    rank, lower, below = q / 100 * total, 0.0, 0.0
    for le, n in counts:
        if n >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * ((rank - below) / (n - below) if n > below else 1.0)
        lower, below = le, n
    return lower


def time_parts(before: Buckets, after: Buckets) -> list[tuple[str, float, float]]:
    """(what, p50 s, p99 s) of each TIME_PARTS histogram over the window."""
    rows = []
    for source, _, _, value, what in TIME_PARTS:
        key = (source, value)
        if key in after:
            p50, p99 = (bucket_pct(before.get(key, []), after[key], q) for q in (50, 99))
            if p50 is not None and p99 is not None:
                rows.append((what, p50, p99))
    return rows


# ------------------------------------------------------------------------------- the run

@dataclass
class StepResult:
    rate: float
    sent: int
    latencies: list[float] = field(default_factory=list)  # OK replies, seconds from intended send
    send_lag: list[float] = field(default_factory=list)  # actual send - intended send
    codes: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    window: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    machine_cores: float = 0.0
    backlog: int | None = None
    drain_s: float = 0.0
    pg_xacts: int = 0
    nats_msgs: tuple[int, int, int] = (0, 0, 0)  # in, out, in bytes over the window (the server's /varz)
    stuck: int = 0
    time_parts: list[tuple[str, float, float]] = field(default_factory=list)  # (what, p50, p99) in the mesh
    flushes: list[tuple[str, float, float]] = field(default_factory=list)  # (batcher, flushes/s, items per flush)
    acked: dict[str, float] = field(default_factory=dict)  # order id -> when its NEW reply came
    in_book: dict[str, float] = field(default_factory=dict)  # order id -> when the engine's ACCEPTED came


async def open_loop(stubs: list, requests: list, rate: float, result: StepResult) -> None:
    """Send request i at t0 + i / rate, each from its own task; never wait for replies first."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()
    n_stubs = len(stubs)
    record = result.latencies.append
    lag = result.send_lag.append
    codes, statuses = result.codes, result.statuses
    acked = result.acked

    async def one(i: int, intended: float) -> None:
        req, md = requests[i]
        lag(time.perf_counter() - intended)
        try:
            reply = await stubs[i % n_stubs].PlaceOrder(req, metadata=md, timeout=REQUEST_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            codes[exc.code().name] += 1
            return
        done = time.perf_counter()
        codes["OK"] += 1
        record(done - intended)
        o = reply.order
        if o.status == common_pb2.ORDER_STATUS_NEW:
            acked[o.order_id] = done
        name = STATUS_NAMES.get(o.status, str(o.status))
        if o.reject_reason:
            name += f" {REJECT_NAMES.get(o.reject_reason, o.reject_reason)}"
        statuses[name] += 1

    n = len(requests)
    # The load generator must not stall its own measurement: no cyclic GC pauses (tens of ms
    # once the heap is large) while the window runs; collected right after.
    gc.collect()
    gc.disable()
    t0 = time.perf_counter() + 0.02
    i = 0
    while i < n:
        now = time.perf_counter()
        due = t0 + i / rate
        if due > now:
            await asyncio.sleep(due - now)
            continue
        while i < n and t0 + i / rate <= now:  # everything already due (a late wake-up)
            t = loop.create_task(one(i, t0 + i / rate))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            i += 1
        await asyncio.sleep(0)
    if tasks:
        await asyncio.wait(tasks)
    gc.enable()
    result.window = time.perf_counter() - t0
    result.sent = n


LOADGEN_SRC = Path(__file__).with_name("loadgen") / "main.go"
CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


def build_go_generator() -> tuple[Path | None, str]:
    """The compiled generator (benchmarks/loadgen), built once per version of its source into
    ~/.cache/stockmesh with Debian's Go and grpc-go (GOPATH mode: no module download); (None,
    why) when it cannot be built."""
    import hashlib
    import shutil

    go = shutil.which("go")
    gopath = Path("/usr/share/gocode")
    if go is None or not (gopath / "src/google.golang.org/grpc").is_dir():
        return None, "no Go toolchain with grpc-go (apt-get install golang-go golang-google-grpc-dev)"
    digest = hashlib.sha256(LOADGEN_SRC.read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stockmesh"
    binary = cache / f"loadgen-{digest}"
    if binary.exists():
        return binary, "cached"
    cache.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(gopath), "GOCACHE": str(cache / "go-build"),
           "GOFLAGS": ""}
    done = subprocess.run([go, "build", "-o", str(binary), "."], cwd=LOADGEN_SRC.parent, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        return None, f"go build failed: {done.stderr.strip()[-500:]}"
    return binary, "built"


async def open_loop_go(binary: Path, endpoint: str, conns: int, requests: list, rate: float,
                       result: StepResult) -> None:
    """The same open loop as `open_loop`, sent by the compiled generator: request i at t0 + i / rate
    on connection i % conns, latency from the intended send time; the replies are read here."""
    import struct
    import tempfile

    with tempfile.TemporaryDirectory(prefix="stockmesh-loadgen-") as tmp:
        src, dst = Path(tmp) / "requests", Path(tmp) / "results"
        with src.open("wb") as f:
            for req, md in requests:
                auth = dict(md)["authorization"].encode()
                body = req.SerializeToString()
                f.write(struct.pack("<I", len(auth)) + auth + struct.pack("<I", len(body)) + body)
        gc.collect()
        proc = await asyncio.create_subprocess_exec(
            str(binary), "-target", endpoint, "-rate", repr(rate), "-conns", str(conns),
            "-timeout", f"{REQUEST_TIMEOUT}s", "-in", str(src), "-out", str(dst), stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"the Go load generator failed ({proc.returncode}): {err.decode().strip()}")
        result.window = float(err.decode().split()[-1])
        wall_minus_perf = time.time() - time.perf_counter()  # its completion times are Unix ns
        data, at = dst.read_bytes(), 0
    record, lag = result.latencies.append, result.send_lag.append
    codes, statuses, acked = result.codes, result.statuses, result.acked
    head = struct.Struct("<IqqqI")
    for _ in requests:
        code, lag_ns, latency_ns, done_ns, n = head.unpack_from(data, at)
        at += head.size
        reply, at = data[at:at + n], at + n
        lag(lag_ns / 1e9)
        if code != 0:
            codes[CODE_NAMES.get(code, str(code))] += 1
            continue
        codes["OK"] += 1
        record(latency_ns / 1e9)
        o = order_pb.PlaceOrderResponse.FromString(reply).order
        if o.status == common_pb2.ORDER_STATUS_NEW:
            acked[o.order_id] = done_ns / 1e9 - wall_minus_perf
        name = STATUS_NAMES.get(o.status, str(o.status))
        if o.reject_reason:
            name += f" {REJECT_NAMES.get(o.reject_reason, o.reject_reason)}"
        statuses[name] += 1
    result.sent = len(requests)


async def fund(stub, mesh: BenchMesh, accounts: list[str], concurrency: int = 16) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(a: str) -> None:
        async with sem:
            await stub.Deposit(ledger_pb.DepositRequest(amount=DEPOSIT, idempotency_key=f"bench-fund-{a}"),
                               metadata=mesh.auth(a), timeout=30)

    await asyncio.gather(*(one(a) for a in accounts))


async def measure_floor(mesh: BenchMesh, channel: grpc.aio.Channel, n: int, warm: int) -> dict[str, Floor]:
    import asyncpg
    import nats
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    md = mesh.auth("bench-floor")
    orders = order_service_pb2_grpc.OrderServiceStub(channel)
    ledger = ledger_service_pb2_grpc.LedgerServiceStub(channel)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    out: dict[str, Floor] = {}

    async def loop(name: str, call) -> None:
        for _ in range(warm):
            await call()
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - t)
        out[name] = Floor(name, samples)

    empty = order_pb.PlaceOrderRequest()

    async def invalid_place() -> None:
        try:
            await orders.PlaceOrder(empty, metadata=md, timeout=5)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
        else:
            raise AssertionError("an empty PlaceOrder was accepted")

    async def list_services() -> None:
        req = reflection_pb2.ServerReflectionRequest(list_services="*")
        async for _ in reflection.ServerReflectionInfo(iter([req]), metadata=md, timeout=5):
            pass

    async def portfolio() -> None:
        await ledger.GetPortfolio(ledger_pb.GetPortfolioRequest(), metadata=md, timeout=5)

    await loop("grpc: empty PlaceOrder via Envoy (INVALID_ARGUMENT)", invalid_place)
    await loop("grpc: reflection list_services via Envoy", list_services)
    await loop("grpc: GetPortfolio of an empty account via Envoy", portfolio)

    conn = await asyncpg.connect(mesh.database_url)
    try:
        settings = {k: await conn.fetchval(f"SHOW {k}") for k in ("synchronous_commit", "fsync", "wal_sync_method")}
        await conn.execute("CREATE TABLE public.bench_floor (id bigserial PRIMARY KEY, v int NOT NULL, "
                           "at timestamptz NOT NULL DEFAULT now())")
        counter = iter(range(10**9))
        await loop("postgres: one-row INSERT, own transaction",
                   lambda: conn.execute("INSERT INTO public.bench_floor (v) VALUES ($1)", next(counter)))
        await conn.execute("DROP TABLE public.bench_floor")
    finally:
        await conn.close()
    print(f"  PostgreSQL: {', '.join(f'{k}={v}' for k, v in settings.items())}")

    state = mesh.state()
    nc = await nats.connect(state["nats_url"], name="bench-floor")
    try:
        js = nc.jetstream()
        stream = f"{mesh.namespace}_BENCH_FLOOR"
        subject = f"{mesh.namespace}.benchfloor"
        from nats.js.api import StorageType
        await js.add_stream(name=stream, subjects=[subject], storage=StorageType.FILE)
        payload = os.urandom(150)
        seq = iter(range(10**9))
        await loop("jetstream: publish ack (file storage)",
                   lambda: js.publish(subject, payload, headers={"Nats-Msg-Id": f"floor-{next(seq)}"}))
        await js.delete_stream(stream)
    finally:
        await nc.close()
    conf = Path(mesh.data_dir / "nats.conf").read_text()
    print("  NATS: " + ("sync_interval: always" if "sync_interval: always" in conf else "sync_interval NOT always!")
          + f", store under {mesh.data_dir / 'nats'}")
    return out


FLOOR_PARTS = ("grpc: empty PlaceOrder via Envoy (INVALID_ARGUMENT)", "postgres: one-row INSERT, own transaction",
               "jetstream: publish ack (file storage)")


async def watch_the_book(mesh: BenchMesh, result: StepResult):
    """Note when the engine's ACCEPTED notice of each order arrives (a core NATS subscription
    to the mesh's acceptances): how long after its acknowledgement an order is working in the book.
    Returns the connection, to close once the step's orders are all there (or given up on)."""
    import nats

    from meshkit import bus
    from stockmesh.matching.v1 import matching_pb2

    accepted, book = matching_pb2.EXECUTION_TYPE_ACCEPTED, result.in_book

    async def seen(msg) -> None:
        ex = matching_pb2.Execution.FromString(msg.data)
        if ex.type == accepted and ex.order_id not in book:
            book[ex.order_id] = time.perf_counter()

    nc = await nats.connect(mesh.state()["nats_url"])
    await nc.subscribe(bus.subject(mesh.namespace, "accepted", ">"), cb=seen)  # the engine's notices
    await nc.flush()
    return nc


async def until_in_book(result: StepResult, patience: float = 10.0) -> None:
    deadline = time.perf_counter() + patience
    while time.perf_counter() < deadline and any(o not in result.in_book for o in result.acked):
        await asyncio.sleep(0.1)


async def outbox_backlog(mesh: BenchMesh) -> int:
    import asyncpg
    conn = await asyncpg.connect(mesh.database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM orders.outbox WHERE published_at IS NULL")
    finally:
        await conn.close()


async def pg_transactions(mesh: BenchMesh) -> int:
    """Transactions committed or rolled back in our database so far (a single statement outside
    BEGIN counts as one, e.g. asyncpg's reset query on every pool release)."""
    import asyncpg
    conn = await asyncpg.connect(mesh.database_url)
    try:
        return await conn.fetchval("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                                   "WHERE datname = current_database()")
    finally:
        await conn.close()


def nats_counters(mesh: BenchMesh) -> tuple[int, int, int]:
    """The NATS server's message counters so far (in, out, bytes in), from its /varz; zeros if
    the mesh reports no monitoring URL (a NATS_URL given from outside)."""
    url = mesh.state().get("nats_monitor_url")
    if not url:
        return 0, 0, 0
    v = varz(url)
    return v["in_msgs"], v["out_msgs"], v["in_bytes"]


async def stuck_transactions(mesh: BenchMesh, older_than: float = 5.0) -> int:
    """Connections of the services to our database left idle inside a transaction for more
    than `older_than` seconds: nobody will ever finish them (evidence of a leaked pool slot)."""
    import asyncpg
    conn = await asyncpg.connect(mesh.database_url)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = "
            "'idle in transaction' AND now() - state_change > make_interval(secs => $1)", older_than)
    finally:
        await conn.close()


async def drain(mesh: BenchMesh, bound: float = 120.0) -> tuple[float, int]:
    """Wait until the outbox relay has published everything (so one rate's backlog does not
    spill into the next); returns (seconds waited, rows still unpublished)."""
    t = time.perf_counter()
    while (left := await outbox_backlog(mesh)) and time.perf_counter() - t < bound:
        await asyncio.sleep(0.5)
    return time.perf_counter() - t, left


def start_profile(mesh: BenchMesh, seconds: float, out_dir: Path) -> list[subprocess.Popen]:
    pyspy = Path(sys.executable).with_name("py-spy")
    procs = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("order_svc", "ledger_svc"):
        pid = mesh.state()["pids"][name]
        procs.append(subprocess.Popen(
            [str(pyspy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100",
             "--format", "raw", "--output", str(out_dir / f"{name}.txt"), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


async def run(args: argparse.Namespace, mesh: BenchMesh, rates: list[float], results: list[StepResult],
              floor: list[float]) -> None:
    """Fund the accounts, measure the floor (once, into `floor`), then run `rates` on `mesh`."""
    rng = random.Random(args.seed)
    run_id = uuid.uuid4().hex[:6]
    accounts = [f"bench-{i:04d}" for i in range(args.accounts)]
    metadata = {a: mesh.auth(a) for a in accounts}
    options = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per channel
    channels = [grpc.aio.insecure_channel(mesh.endpoint, options=options) for _ in range(args.channels)]
    try:
        await asyncio.gather(*(ch.channel_ready() for ch in channels))
        stubs = [order_service_pb2_grpc.OrderServiceStub(ch) for ch in channels]

        async def send(reqs: list, rate: float, res: StepResult) -> None:
            if args.go_binary:
                await open_loop_go(args.go_binary, mesh.endpoint, args.channels, reqs, rate, res)
            else:
                await open_loop(stubs, reqs, rate, res)

        t = time.perf_counter()
        await fund(ledger_service_pb2_grpc.LedgerServiceStub(channels[0]), mesh, accounts)
        print(f"funded {len(accounts)} accounts with {DEPOSIT} USD each in {time.perf_counter() - t:.1f}s")

        if not floor:
            print(f"\nfloor: {args.floor_n} sequential calls each (after {args.floor_n // 10} warm-up), idle mesh")
            floors = await measure_floor(mesh, channels[0], args.floor_n, max(10, args.floor_n // 10))
            print(f"  {'what':58s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
            for f in floors.values():
                s = f.sorted
                mark = "*" if f.name in FLOOR_PARTS else " "
                print(f" {mark}{f.name:58s} {ms(pct(s, 50))} {ms(pct(s, 99))} {ms(s[-1])}")
            floor[:] = [sum(pct(floors[k].sorted, 50) for k in FLOOR_PARTS),
                        sum(pct(floors[k].sorted, 99) for k in FLOOR_PARTS)]
            print(f"  {'floor = sum of the three marked *':59s} {ms(floor[0])} {ms(floor[1])}")

        meter = CpuMeter(mesh, mesh.db_name or "")
        before = meter.snapshot()
        await asyncio.sleep(args.idle)
        idle, idle_machine, _ = CpuMeter.diff(before, meter.snapshot())
        print(f"\nidle mesh, {args.idle:g}s: CPU (cores) "
              + "  ".join(f"{k} {v:.3f}" for k, v in sorted(idle.items(), key=lambda kv: -kv[1]))
              + f"; whole machine {idle_machine:.2f}")
        start = 0
        for step, rate in enumerate(rates):
            if args.warmup > 0:
                warm = build_requests(int(rate * args.warmup), f"{run_id}-w{step}", accounts, metadata, rng, start)
                start += len(warm)
                await send(warm, rate, StepResult(rate, 0))
            reqs = build_requests(int(rate * args.duration), f"{run_id}-s{step}", accounts, metadata, rng, start)
            start += len(reqs)
            res = StepResult(rate, 0)
            profilers = (start_profile(mesh, args.duration, Path(args.profile_dir) / f"{rate:g}")
                         if args.profile_dir and rate == args.profile_rate else [])
            xacts = await pg_transactions(mesh)
            nats_before = nats_counters(mesh)
            watcher = await watch_the_book(mesh, res)
            histograms, flushed = scrape_histograms(mesh)
            before = meter.snapshot()
            await send(reqs, rate, res)
            res.cpu, res.machine_cores, _ = CpuMeter.diff(before, meter.snapshot())
            histograms_after, flushed_after = scrape_histograms(mesh)
            res.time_parts = time_parts(histograms, histograms_after)
            res.flushes = flush_rates(flushed, flushed_after, res.window)
            res.pg_xacts = await pg_transactions(mesh) - xacts - 1  # minus our own query
            res.nats_msgs = tuple(b - a for a, b in zip(nats_before, nats_counters(mesh)))
            for p in profilers:
                p.wait()
            res.backlog = await outbox_backlog(mesh)
            res.drain_s, _ = await drain(mesh)
            await until_in_book(res)
            await watcher.close()
            res.stuck = await stuck_transactions(mesh)
            results.append(res)
            report_step(res)
            await asyncio.sleep(args.pause)
    finally:
        await asyncio.gather(*(ch.close() for ch in channels), return_exceptions=True)


def report_step(r: StepResult) -> None:
    lat = sorted(r.latencies)
    ok = len(lat)
    errors = {k: v for k, v in r.codes.items() if k != "OK"}
    print(f"\n== {r.rate:g} orders/s offered: {r.sent} sent over {r.sent / r.rate:.1f}s, "
          f"{ok} acknowledged, achieved {ok / r.window:.0f}/s")
    if lat:
        print(f"   ack latency ms  p50 {pct(lat, 50) * 1000:.2f}  p90 {pct(lat, 90) * 1000:.2f}  "
              f"p99 {pct(lat, 99) * 1000:.2f}  p99.9 {pct(lat, 99.9) * 1000:.2f}  max {lat[-1] * 1000:.2f}")
    lag = sorted(r.send_lag)
    print(f"   generator send lag ms  p50 {pct(lag, 50) * 1000:.2f}  p99 {pct(lag, 99) * 1000:.2f}  "
          f"max {lag[-1] * 1000:.2f}  (how late the client itself sent; included in the latency)")
    print(f"   errors: {dict(errors) or 'none'}   statuses: {dict(r.statuses)}")
    print(f"   outbox rows not yet relayed to JetStream when the window ended: {r.backlog} "
          f"(relayed within {r.drain_s:.1f}s after)   PostgreSQL transactions per order sent: "
          f"{r.pg_xacts / r.sent:.1f}")
    if any(r.nats_msgs):
        m_in, m_out, b_in = r.nats_msgs
        print(f"   NATS messages per order sent (the server's counters, every client and JetStream's own): "
              f"in {m_in / r.sent:.1f}, out {m_out / r.sent:.1f}, bytes in {b_in / r.sent:.0f}")
    to_book = sorted(r.in_book[o] - t for o, t in r.acked.items() if o in r.in_book)
    missing = sum(1 for o in r.acked if o not in r.in_book)
    if to_book:
        print(f"   working in the book (engine ACCEPTED) after the acknowledgement, ms: p50 {pct(to_book, 50) * 1000:.2f}  "
              f"p99 {pct(to_book, 99) * 1000:.2f}  max {to_book[-1] * 1000:.2f}"
              + (f"   !! {missing} acknowledged orders not seen in the book within 10 s" if missing else ""))
    if r.time_parts:
        print("   where the time goes (p50 / p99 ms, read off the mesh's histograms; the handler's steps "
              "each include the wait for the batch in flight): "
              + "; ".join(f"{what} {p50 * 1000:.1f} / {p99 * 1000:.1f}" for what, p50, p99 in r.time_parts))
    if r.flushes:
        print("   order_svc's batches (flushes a second x items per flush): "
              + "; ".join(f"{name} {per_s:.0f}/s x {size:.1f}" for name, per_s, size in r.flushes))
    if r.stuck:
        print(f"   !! {r.stuck} service connections idle in transaction for > 5 s after the step "
              f"(leaked pool slots; see docs/benchmarks/place_order.md)")
    parts = "  ".join(f"{k} {v:.2f}" for k, v in sorted(r.cpu.items(), key=lambda kv: -kv[1]) if v >= 0.005)
    ours = sum(r.cpu.values())
    print(f"   CPU (cores; 2 = both busy): {parts}")
    mesh_cpu = sum(v for k, v in r.cpu.items() if not k.startswith("load generator"))
    print(f"   CPU total: ours {ours:.2f}, whole machine {r.machine_cores:.2f}, "
          f"everything else on the machine {max(0.0, r.machine_cores - ours):.2f}; "
          f"mesh CPU per acknowledged order {mesh_cpu * r.window / max(1, ok) * 1000:.1f} ms")


def summary(results: list[StepResult], floor50: float, floor99: float) -> None:
    print("\n== summary (latency from the intended send time to the reply, ms)")
    print(f"{'offered/s':>9s} {'achieved/s':>10s} {'p50':>7s} {'p99':>8s} {'max':>8s} {'errors':>7s} "
          f"{'NEW':>6s} {'REJ':>5s} {'p50/floor':>9s} {'p99/floor':>9s} {'mesh CPU':>8s} {'machine':>7s} "
          f"{'book p99':>8s}")
    for r in results:
        lat = sorted(r.latencies)
        errors = sum(v for k, v in r.codes.items() if k != "OK")
        new = r.statuses.get("NEW", 0)
        rej = sum(v for k, v in r.statuses.items() if k.startswith("REJECTED"))
        p50, p99, mx = (pct(lat, 50), pct(lat, 99), lat[-1]) if lat else (float("nan"),) * 3
        mesh_cpu = sum(v for k, v in r.cpu.items() if not k.startswith("load generator"))
        to_book = sorted(r.in_book[o] - t for o, t in r.acked.items() if o in r.in_book)
        print(f"{r.rate:9g} {len(lat) / r.window:10.0f} {p50 * 1000:7.2f} {p99 * 1000:8.2f} {mx * 1000:8.2f} "
              f"{errors:7d} {new:6d} {rej:5d} {p50 / floor50:9.1f} {p99 / floor99:9.1f} {mesh_cpu:8.2f} "
              f"{r.machine_cores:7.2f} {pct(to_book, 99) * 1000 if to_book else float('nan'):8.2f}")
    print(f"floor (empty gRPC via Envoy + PostgreSQL commit + JetStream ack): p50 {floor50 * 1000:.2f} ms, "
          f"p99 {floor99 * 1000:.2f} ms; book p99: from an order's acknowledgement to the engine's "
          f"ACCEPTED of it (working in the book)")


def spread(results: list[StepResult]) -> None:
    """Each rate over its runs: the median, and the range in brackets."""
    import statistics

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):8.1f} [{min(values):.1f}-{max(values):.1f}]" if values else "n/a"

    print("\n== over the runs of each rate: median [min-max]")
    print(f"{'offered/s':>9s} {'runs':>4s}  {'achieved/s':>24s}  {'p50 ms':>24s}  {'p99 ms':>24s}  {'book p99 ms':>24s}")
    for rate in sorted({r.rate for r in results}):
        runs = [r for r in results if r.rate == rate]
        achieved = [len(r.latencies) / r.window for r in runs]
        p50 = [pct(sorted(r.latencies), 50) * 1000 for r in runs if r.latencies]
        p99 = [pct(sorted(r.latencies), 99) * 1000 for r in runs if r.latencies]
        book = []
        for r in runs:
            to_book = sorted(r.in_book[o] - t for o, t in r.acked.items() if o in r.in_book)
            if to_book:
                book.append(pct(to_book, 99) * 1000)
        print(f"{rate:9g} {len(runs):4d}  {cell(achieved):>24s}  {cell(p50):>24s}  {cell(p99):>24s}  {cell(book):>24s}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: rates 50 and 100, 2 s each, 1 s warm-up")
    ap.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=None,
                    help="offered rates, comma-separated (default 100,250,500,1000)")
    ap.add_argument("--duration", type=float, default=None, help="measured seconds per rate (default 15)")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up seconds per rate, discarded (default 3)")
    ap.add_argument("--pause", type=float, default=3.0, help="idle seconds between rates (default 3)")
    ap.add_argument("--idle", type=float, default=3.0, help="seconds of idle-mesh CPU measured first")
    ap.add_argument("--accounts", type=int, default=200)
    ap.add_argument("--channels", type=int, default=6, help="channels (TCP connections) to Envoy")
    ap.add_argument("--generator", choices=("auto", "go", "python"), default="auto",
                    help="who sends the orders: the compiled generator (benchmarks/loadgen, Debian's Go), "
                         "this script on grpc.aio, or (auto, the default) Go when it can be built")
    ap.add_argument("--floor-n", type=int, default=None, help="calls per floor measurement (default 1000)")
    ap.add_argument("--mesh-per-rate", action="store_true",
                    help="a fresh mesh (and database) for each rate, so an overloaded rate cannot spoil the next")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the whole list of rates this many times (a fresh mesh each time) and summarize each "
                         "rate's runs by their median and range: on 2 busy cores one run's p99 is not a figure")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep-data", action="store_true", help="keep the mesh's data folder (logs) afterwards")
    ap.add_argument("--profile-dir", default=None,
                    help="py-spy record order_svc and ledger_svc (raw folded stacks) into this folder ...")
    ap.add_argument("--profile-rate", type=float, default=500, help="... during this rate's window (default 500)")
    args = ap.parse_args()
    quick = args.quick
    args.rates = args.rates or ([50, 100] if quick else [100, 250, 500, 1000])
    args.duration = args.duration if args.duration is not None else (2 if quick else 15)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    args.floor_n = args.floor_n or (200 if quick else 1000)
    if quick:
        args.pause = min(args.pause, 1.0)

    unwind_on_signals()  # SIGTERM / SIGHUP / Ctrl-C (even in a background job) stop the mesh

    args.go_binary = None
    if args.generator != "python":
        args.go_binary, how = build_go_generator()
        if args.go_binary is None and args.generator == "go":
            ap.error(f"--generator go: {how}")
    generator = (f"the compiled generator ({args.go_binary.name}, {how})" if args.go_binary
                 else "this script (grpc.aio)" + (f"; Go: {how}" if args.generator == "auto" else ""))

    load = os.getloadavg()
    print(f"bench_place_order: {platform.python_implementation()} {platform.python_version()}, "
          f"{psutil.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"rates {', '.join(f'{r:g}' for r in args.rates)} orders/s; {args.duration:g}s each after "
          f"{args.warmup:g}s warm-up; {args.accounts} accounts; {args.channels} channels; "
          f"orders sent by {generator}")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    # Repetitions one after the other, each over every rate, so a drift of the machine touches all rates alike.
    groups = ([[r] for _ in range(args.repeat) for r in args.rates] if args.mesh_per_rate
              else [args.rates] * args.repeat)
    results: list[StepResult] = []
    floor: list[float] = []
    for rates in groups:
        mesh = BenchMesh(env=MESH_ENV, keep_data=args.keep_data, extra_args=["--no-simulator"],
                         db_prefix="stockmesh_bench", namespace_prefix="bench")
        try:
            t = time.perf_counter()
            print("\nstarting a mesh ...", flush=True)
            mesh.start()
            print(f"mesh ready in {time.perf_counter() - t:.1f}s: Envoy {mesh.endpoint}, namespace "
                  f"{mesh.namespace}, database {mesh.db_name}")
            asyncio.run(run(args, mesh, rates, results, floor))
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the mesh", file=sys.stderr)
            return 130
        finally:
            mesh.stop()
            print(f"mesh stopped, database dropped{'' if args.keep_data else ', data folder removed'}"
                  + (f" (kept: {mesh.data_dir})" if args.keep_data else ""))
    summary(results, *floor)
    if args.repeat > 1:
        spread(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
