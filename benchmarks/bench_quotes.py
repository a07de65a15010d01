"""Market data through Envoy: quote fan-out to many StreamQuotes clients, GetCandles and GetPortfolio.

1. Starts its own mesh with `stockmesh up` (meshkit/launcher/harness.py, as the other mesh
   benchmarks and tests/e2e do): a data folder under /tmp, a fresh database on the PostgreSQL at
   $DATABASE_URL, its own namespace, a free port and its own nats-server; no simulator, the
   market always open. The mesh is stopped, the database dropped, the namespace's Redis keys
   deleted and the data folder removed at the end, also on Ctrl-C or SIGTERM.
2. Fan-out: for each N in --streams, N concurrent StreamQuotes clients on one hot symbol
   (spread over --clients client processes, 100 streams per HTTP/2 connection, each with a
   bearer token, through Envoy's public listener; all of one account, so the mesh runs with
   QUOTE_STREAMS_PER_ACCOUNT at the largest N instead of 50) while this process publishes a
   MarketDataEvent for that symbol --rate times a second straight to the `<ns>_MD` stream (as
   the engine would). Lag = the client's receipt time − the event's time (set when it is
   published; one clock, one machine). Figures: p50/p99/max lag, messages delivered per second
   (against N × rate offered), quote_svc's memory per open stream (RSS growth / N) and CPU
   (of quote_svc, Envoy and the client processes, in cores). With --quote-replicas N the mesh
   runs N quote_svc processes behind Envoy; their memory and CPU are summed.
3. GetCandles: a day of 1-minute candles (built by quote_svc from a day of trades published to
   the MD stream), open loop at --candle-rate requests a second through Envoy; latency from the
   intended send time (no coordinated omission).
4. GetPortfolio: an account with cash and 4 positions (shares transferred in) whose symbols
   have live quotes, so every reply values them at the latest quote; open loop at
   --portfolio-rate requests a second through Envoy, latency from the intended send time.

Usage:  .venv/bin/python benchmarks/bench_quotes.py [--streams 500,1000,2000] [--seconds 20]
                                                    [--parts fanout,candles,portfolio] [--quote-replicas 2]
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402

from meshkit.launcher.harness import MeshProcess, unwind_on_signals  # noqa: E402
from stockmesh.quote.v1 import quote_pb2, quote_service_pb2 as qpb, quote_service_pb2_grpc  # noqa: E402

HOT = "TSLA"
CANDLE_SYMBOL = "MSFT"
STREAMS_PER_CHANNEL = 100
TICK = os.sysconf("SC_CLK_TCK")


def pct_from_hist(hist: dict[float, int], p: float) -> float:
    total = sum(hist.values())
    if not total:
        return float("nan")
    rank, seen = p / 100 * (total - 1), 0
    for k in sorted(hist):
        seen += hist[k]
        if seen > rank:
            return k
    return max(hist)


# ---------------------------------------------------------------- client process

def connection(endpoint: str) -> grpc.aio.Channel:
    """A channel with a TCP connection of its own: by default gRPC shares one subchannel (one
    HTTP/2 connection) among every channel to the same target in a process."""
    return grpc.aio.insecure_channel(endpoint, options=[("grpc.use_local_subchannel_pool", 1)])


async def client_main(endpoint: str, token: str, streams: int, start_at: float, end_at: float) -> None:
    md = (("authorization", f"Bearer {token}"),)
    channels = [connection(endpoint) for _ in range(-(-streams // STREAMS_PER_CHANNEL))]
    hist: collections.Counter = collections.Counter()
    count = 0
    ready = 0
    all_ready = asyncio.Event()

    async def one(i: int) -> None:
        nonlocal count, ready
        stub = quote_service_pb2_grpc.QuoteServiceStub(channels[i // STREAMS_PER_CHANNEL])
        for attempt in range(5):  # a stream that fails to open is opened again, as a real client would
            call = stub.StreamQuotes(qpb.StreamQuotesRequest(symbols=[HOT]), metadata=md)
            try:
                await call.read()  # the snapshot
                break
            except grpc.aio.AioRpcError as exc:
                print(f"stream {i} failed to open ({exc.code().name}: {exc.details()}); opening it again",
                      file=sys.stderr, flush=True)
                await asyncio.sleep(0.1 * (attempt + 1))
        else:
            raise RuntimeError(f"stream {i} could not be opened")
        ready += 1
        if ready == streams:
            all_ready.set()
        try:
            while True:
                q = await call.read()
                if q is grpc.aio.EOF:
                    break
                now = time.time()
                sent = q.time.seconds + q.time.nanos / 1e9
                if start_at <= sent < end_at:
                    count += 1
                    hist[round((now - sent) * 1000, 1)] += 1
                if now >= end_at + 2:
                    break
        finally:
            call.cancel()

    tasks = [asyncio.create_task(one(i)) for i in range(streams)]
    await asyncio.wait_for(all_ready.wait(), 60 + streams / 5)
    gc.collect()
    gc.disable()  # no cyclic GC pause of the client inside the measured lag (as in open_loop)
    print("READY", flush=True)
    await asyncio.wait(tasks, timeout=max(0.0, end_at + 5 - time.time()))
    for t in tasks:
        t.cancel()
    print(json.dumps({"count": count, "hist": {str(k): v for k, v in hist.items()}}), flush=True)
    for ch in channels:
        await ch.close(grace=None)


# ---------------------------------------------------------------- helpers

def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def publish(js, ns: str, symbol: str, seq: int, price: str, qty: int, *, at_ns: int | None = None,
                  at: datetime | None = None, bid: str | None = None, ask: str | None = None) -> None:
    from stockmesh.matching.v1 import matching_pb2 as mpb

    ev = mpb.MarketDataEvent(symbol=symbol, sequence=seq, trade_price=price, trade_quantity=qty, last_price=price,
                             bid_price=bid or price, bid_size=100, ask_price=ask or price, ask_size=100,
                             volume=seq * qty)
    if at is not None:
        ev.time.FromDatetime(at)
    else:
        ev.time.seconds, ev.time.nanos = divmod(at_ns or time.time_ns(), 1_000_000_000)
    await js.publish(f"{ns}.md.{symbol}", ev.SerializeToString(), headers={"Nats-Msg-Id": f"{symbol}:md:{seq}"})


# ---------------------------------------------------------------- fan-out round

NODE_CLIENT = Path(__file__).resolve().parent / "quote_client"


def client_argv(runtime: str) -> list[str]:
    """The command of one client process: this script in client mode, or the Node client
    (benchmarks/quote_client/client.js: the same work for a fraction of the CPU), its pinned
    packages installed on first use."""
    if runtime == "python":
        return [sys.executable, __file__, "--client"]
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        raise SystemExit("--client-runtime node needs node and npm (Debian: apt install nodejs npm); "
                         "or use --client-runtime python")
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").exists():
        print("installing the Node client's packages (npm ci) ...", flush=True)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=NODE_CLIENT, check=True)
    return [node, str(NODE_CLIENT / "client.js")]


async def fanout_round(js, mesh: MeshProcess, token: str, n: int, clients: int, seconds: float,
                       warmup: float, rate: int, seq0: int, direct: bool = False,
                       runtime: str = "node") -> tuple[dict, int]:
    state = mesh.state()
    pids = state["pids"]
    qpids = [pid for name, pid in pids.items() if name.split("-")[0] == "quote_svc"]  # every replica
    epid = pids["envoy"]
    rss0 = sum(map(rss_mb, qpids))
    endpoint = mesh.endpoint if not direct else f"127.0.0.1:{state['ports']['quote_svc']}"
    per = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
    # Clients learn the measuring window from their arguments: it starts once they have all
    # had time to open their streams, plus a warm-up.
    open_by = time.time() + 30 + n / 100
    start_at = open_by + warmup
    end_at = start_at + seconds
    argv = client_argv(runtime)
    procs: list[asyncio.subprocess.Process] = []
    try:
        for k in per:
            if k:
                procs.append(await asyncio.create_subprocess_exec(
                    *argv, "--endpoint", endpoint, "--token", token,
                    "--client-streams", str(k), "--start-at", repr(start_at), "--end-at", repr(end_at),
                    stdout=asyncio.subprocess.PIPE))
        for p in procs:
            line = await asyncio.wait_for(p.stdout.readline(), 120 + n / 5)
            assert line.strip() == b"READY", line
        if time.time() > open_by:
            print(f"  (opening {n} streams took longer than planned; the window starts late)", flush=True)
        rss1 = sum(map(rss_mb, qpids))
        # Publish from now until the end of the window, `rate` a second.
        seq = seq0
        t0 = time.monotonic()
        wall0 = time.time()
        cpu_marks = None
        i = 0
        price = 248.50
        while True:
            target = t0 + i / rate
            now = time.monotonic()
            if target > now:
                await asyncio.sleep(target - now)
            wall = time.time()
            if cpu_marks is None and wall >= start_at:
                cpu_marks = (time.monotonic(), sum(map(cpu_seconds, qpids)), cpu_seconds(epid),
                             sum(cpu_seconds(p.pid) for p in procs))
            if wall >= end_at:
                break
            seq += 1
            price += 0.01 if i % 2 else -0.01
            await publish(js, mesh.namespace, HOT, seq, f"{price:.2f}", 1)
            i += 1
        t_end = time.monotonic()
        cpu = ((sum(map(cpu_seconds, qpids)) - cpu_marks[1]) / (t_end - cpu_marks[0]),
               (cpu_seconds(epid) - cpu_marks[2]) / (t_end - cpu_marks[0]),
               (sum(cpu_seconds(p.pid) for p in procs) - cpu_marks[3]) / (t_end - cpu_marks[0]))
        published_in_window = int(seconds * rate)
        hist: collections.Counter = collections.Counter()
        count = 0
        for p in procs:
            out, _ = await p.communicate()
            data = json.loads(out.decode().strip().splitlines()[-1])
            count += data["count"]
            hist.update({float(k): v for k, v in data["hist"].items()})
        return {
            "streams": n, "offered_per_s": n * rate, "delivered_per_s": count / seconds,
            "delivered_ratio": count / (n * published_in_window) if published_in_window else 0,
            "p50_ms": pct_from_hist(hist, 50), "p99_ms": pct_from_hist(hist, 99), "max_ms": max(hist) if hist else 0,
            "rss_before_mb": rss0, "rss_open_mb": rss1, "kb_per_stream": (rss1 - rss0) * 1024 / n,
            "cpu_quote": cpu[0], "cpu_envoy": cpu[1], "cpu_clients": cpu[2], "wall_start": wall0,
        }, seq
    finally:  # also when interrupted (Ctrl-C, SIGTERM): the client processes must not outlive the run
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()


# ---------------------------------------------------------------- candles

async def seed_candles(js, ns: str, database_url: str) -> int:
    """A day of trades (one every 4 s, 2024-03-04 UTC) -> 1,440 one-minute candles."""
    import asyncpg

    start = datetime(2024, 3, 4, tzinfo=timezone.utc)
    n = 86400 // 4
    pending = []
    for i in range(n):
        cents = 41550 + (i % 200) - 100
        pending.append(publish(js, ns, CANDLE_SYMBOL, i + 1, f"{cents // 100}.{cents % 100:02d}", 1 + i % 50,
                               at=start + timedelta(seconds=4 * i)))
        if len(pending) >= 500:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    conn = await asyncpg.connect(database_url)
    try:
        for _ in range(1200):
            if await conn.fetchval("SELECT count(*) FROM quotes.trades WHERE symbol = $1", CANDLE_SYMBOL) >= n:
                return n
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    raise SystemExit("quote_svc did not record the seeded trades")


async def open_loop(call, rate: int, seconds: float, pids: dict[str, int] | None = None) -> dict:
    """`call(k)` started at rate a second for `seconds` whatever the replies do (open loop);
    latency from each call's intended send time, so a queue shows in the figures. With `pids`,
    also the CPU time each of those processes (and this one, the client) spent per request —
    less disturbed by a busy machine than the latencies."""
    spies = profile(pids or {}, seconds)
    pids = dict(pids or {}, client=os.getpid())
    cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
    lat: list[float] = []
    errors = 0

    async def one(k: int, intended: float) -> None:
        nonlocal errors
        try:
            await call(k)
            lat.append(time.perf_counter() - intended)
        except grpc.aio.AioRpcError:
            errors += 1

    # The load generator must not stall its own measurement: no cyclic GC pauses (tens of ms
    # once the heap is large) while the window runs; collected right after.
    gc.collect()
    gc.disable()
    t0 = time.perf_counter()
    tasks = []
    for i in range(int(rate * seconds)):
        intended = t0 + i / rate
        delay = intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, intended)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    gc.enable()
    for spy in spies:
        spy.wait()
    cpu_ms = {k: (cpu_seconds(v) - cpu0[k]) * 1000 / max(1, len(lat) + errors) for k, v in pids.items()}
    lat.sort()
    p = lambda q: lat[min(len(lat) - 1, int(q / 100 * (len(lat) - 1)))] * 1000 if lat else float("nan")  # noqa: E731
    return {"requests": len(lat), "errors": errors, "achieved_per_s": len(lat) / elapsed,
            "p50_ms": p(50), "p99_ms": p(99), "max_ms": lat[-1] * 1000 if lat else float("nan"), "cpu_ms": cpu_ms}


PROFILE_DIR: Path | None = None  # --profile-dir


def profile(pids: dict[str, int], seconds: float) -> list[subprocess.Popen]:
    """With --profile-dir, py-spy samples each of `pids` for `seconds` (raw stacks, one file each)."""
    if PROFILE_DIR is None:
        return []
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    pyspy = Path(sys.executable).with_name("py-spy")
    return [subprocess.Popen([str(pyspy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
                              "--format", "raw", "--output", str(PROFILE_DIR / f"{name}.txt"), "--nonblocking"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, pid in pids.items() if name != "envoy"]


def mesh_pids(mesh: MeshProcess, *names: str) -> dict[str, int]:
    pids = mesh.state()["pids"]
    return {n: pids[n] for n in names if n in pids}


def cpu_line(r: dict) -> str:
    return "  CPU per request: " + ", ".join(f"{k} {v:.2f} ms" for k, v in r["cpu_ms"].items())


async def candles_round(endpoint: str, token: str, rate: int, seconds: float, clients: int = 8,
                        pids: dict[str, int] | None = None) -> dict:
    md = (("authorization", f"Bearer {token}"),)
    start = datetime(2024, 3, 4, tzinfo=timezone.utc)
    req = qpb.GetCandlesRequest(symbol=CANDLE_SYMBOL, interval=quote_pb2.CANDLE_INTERVAL_1M, page_size=1440)
    req.start_time.FromDatetime(start)
    req.end_time.FromDatetime(start + timedelta(days=1))
    channels = [connection(endpoint) for _ in range(clients)]
    # The reply's bytes, not decoded: decoding 1,440 candles is the client's CPU (1+ ms of
    # Python here), which on one 2-core machine would be taken from the mesh being measured.
    # The first reply is decoded and checked in full; every other must be exactly as long.
    calls = [c.unary_unary("/stockmesh.quote.v1.QuoteService/GetCandles",
                           request_serializer=qpb.GetCandlesRequest.SerializeToString) for c in channels]
    raw = await calls[0](req, metadata=md)
    check = qpb.GetCandlesResponse.FromString(raw)
    assert len(check.candles) == 1440 and not check.next_page_token, len(check.candles)
    for _ in range(50):  # warm up
        await calls[0](req, metadata=md)

    async def call(k: int) -> None:
        reply = await calls[k % clients](req, metadata=md)
        if len(reply) != len(raw):
            raise grpc.aio.AioRpcError(grpc.StatusCode.DATA_LOSS, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                       f"a reply of {len(reply)} bytes, not {len(raw)}")

    r = await open_loop(call, rate, seconds, pids)
    for c in channels:
        await c.close()
    return dict(r, candles_per_reply=len(check.candles))


# ---------------------------------------------------------------- portfolio

PORTFOLIO_ACCOUNT = "bench-portfolio"
# (symbol, shares transferred in, cost price, quote published: bid, ask, last)
PORTFOLIO_POSITIONS = [("AAPL", 120, "170.00", "189.90", "190.10", "190.00"),
                       ("MSFT", 40, "350.00", "415.40", "415.60", "415.50"),
                       ("KO", 300, "58.00", "61.19", "61.21", "61.20"),
                       ("JPM", 75, "150.00", "198.70", "198.90", "198.80")]


async def seed_portfolio(js, mesh: MeshProcess) -> tuple[str, object]:
    """An account with cash and a few positions, each with a live quote; returns its token and
    the portfolio as GetPortfolio shows it (checked to be valued at the quotes)."""
    from stockmesh.ledger.v1 import ledger_service_pb2 as lpb, ledger_service_pb2_grpc as lgrpc
    from tests.support.funding import transfer_in_shares

    token = mesh.token(PORTFOLIO_ACCOUNT)
    md = mesh.auth(PORTFOLIO_ACCOUNT)
    async with mesh.channel() as ch:
        ledger = lgrpc.LedgerServiceStub(ch)
        await ledger.Deposit(lpb.DepositRequest(amount="250000.00", idempotency_key="bench-portfolio-cash"),
                             metadata=md, timeout=30)
        for i, (sym, qty, cost, bid, ask, last) in enumerate(PORTFOLIO_POSITIONS):
            await transfer_in_shares(mesh.database_url, PORTFOLIO_ACCOUNT, sym, qty, cost)
            await publish(js, mesh.namespace, sym, 1_000_000 + i, last, 1, bid=bid, ask=ask)  # after any seeded trades
        for _ in range(100):  # the quotes reach Redis behind the feed
            pf = (await ledger.GetPortfolio(lpb.GetPortfolioRequest(), metadata=md, timeout=10)).portfolio
            if len(pf.positions) == len(PORTFOLIO_POSITIONS) and all(p.market_price for p in pf.positions):
                return token, pf
            await asyncio.sleep(0.1)
    raise SystemExit(f"GetPortfolio never showed the positions valued at the quotes: {pf}")


async def place_resting_orders(endpoint: str, token: str) -> int:
    """Two limit orders of the portfolio account that rest in the book (a buy below the quote,
    a sell above it); returns how many open orders GetPortfolio then lists (checked: 2)."""
    from stockmesh.common.v1 import common_pb2
    from stockmesh.ledger.v1 import ledger_service_pb2 as lpb, ledger_service_pb2_grpc as lgrpc
    from stockmesh.order.v1 import order_service_pb2 as opb, order_service_pb2_grpc as ogrpc

    md = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(endpoint) as ch:
        orders = ogrpc.OrderServiceStub(ch)
        for coid, sym, side, qty, price in (("pf-buy", "AAPL", common_pb2.SIDE_BUY, 10, "185.00"),
                                            ("pf-sell", "KO", common_pb2.SIDE_SELL, 50, "65.00")):
            o = (await orders.PlaceOrder(opb.PlaceOrderRequest(
                client_order_id=coid, symbol=sym, side=side, type=common_pb2.ORDER_TYPE_LIMIT, quantity=qty,
                limit_price=price, time_in_force=common_pb2.TIME_IN_FORCE_GTC), metadata=md, timeout=30)).order
            if o.status != common_pb2.ORDER_STATUS_NEW:
                raise SystemExit(f"a resting order of the portfolio account was not accepted: {o}")
        pf = (await lgrpc.LedgerServiceStub(ch).GetPortfolio(lpb.GetPortfolioRequest(), metadata=md)).portfolio
    if len(pf.open_orders) != 2:
        raise SystemExit(f"GetPortfolio lists {len(pf.open_orders)} open orders, expected 2")
    return len(pf.open_orders)


async def portfolio_round(endpoint: str, token: str, rate: int, seconds: float, clients: int = 8,
                          pids: dict[str, int] | None = None) -> dict:
    from stockmesh.ledger.v1 import ledger_service_pb2 as lpb, ledger_service_pb2_grpc as lgrpc

    md = (("authorization", f"Bearer {token}"),)
    channels = [connection(endpoint) for _ in range(clients)]
    stubs = [lgrpc.LedgerServiceStub(c) for c in channels]
    req = lpb.GetPortfolioRequest()
    for _ in range(50):  # warm up
        await stubs[0].GetPortfolio(req, metadata=md)
    r = await open_loop(lambda k: stubs[k % clients].GetPortfolio(req, metadata=md), rate, seconds, pids)
    for c in channels:
        await c.close()
    return r


async def measured_portfolio_round(mesh: MeshProcess, token: str, args) -> None:
    """One GetPortfolio round through Envoy, printed with the CPU of the processes it uses."""
    r = await portfolio_round(mesh.endpoint, token, args.portfolio_rate, args.portfolio_seconds,
                              pids=mesh_pids(mesh, "ledger_svc", "order_svc", "envoy"))
    print(f"  {r['requests']} requests at {r['achieved_per_s']:.0f}/s, errors {r['errors']}: "
          f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms", flush=True)
    print(cpu_line(r), flush=True)


# ---------------------------------------------------------------- main

async def run(args, mesh: MeshProcess) -> None:
    from meshkit import bus
    from meshkit.launcher import envoy

    token = mesh.token("bench")
    nc = await bus.connect(mesh.state()["nats_url"], "bench")
    try:
        js = nc.jetstream()
        ns = mesh.namespace
        await publish(js, ns, HOT, 1, "248.50", 1)  # a snapshot to start from
        seq = 1
        if "fanout" in args.parts:
            print(f"\nQuote fan-out {'DIRECT to quote_svc (no Envoy)' if args.direct else 'through Envoy'}: one hot symbol ({HOT}), {args.rate} updates/s, "
                  f"{args.seconds:.0f} s measured after {args.warmup:.0f} s warm-up, {args.clients} client processes "
                  f"({args.client_runtime}), {args.quote_replicas} quote_svc replica(s) (CPU and memory: their sum), "
                  f"Envoy workers {args.envoy_workers or envoy.default_workers()}",
                  flush=True)
            print(f"{'streams':>8} {'offered/s':>10} {'delivered/s':>12} {'ratio':>6} {'p50 ms':>8} {'p99 ms':>8} "
                  f"{'max ms':>8} {'KiB/stream':>10} {'CPU quote':>9} {'envoy':>6} {'clients':>7}", flush=True)
            rows = []
            for n in args.streams:
                r, seq = await fanout_round(js, mesh, token, n, args.clients, args.seconds, args.warmup, args.rate, seq,
                                              args.direct, args.client_runtime)
                rows.append(r)
                print(f"{n:>8} {r['offered_per_s']:>10,} {r['delivered_per_s']:>12,.0f} {r['delivered_ratio']:>6.3f} "
                      f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['max_ms']:>8.1f} {r['kb_per_stream']:>10.1f} "
                      f"{r['cpu_quote']:>9.2f} {r['cpu_envoy']:>6.2f} {r['cpu_clients']:>7.2f}", flush=True)
                await asyncio.sleep(3)
        if "candles" in args.parts:
            print(f"\nGetCandles: a day of 1-minute candles ({CANDLE_SYMBOL}), open loop through Envoy", flush=True)
            n = await seed_candles(js, ns, mesh.database_url)
            print(f"  seeded {n} trades (one every 4 s over 2024-03-04)", flush=True)
            c = await candles_round(mesh.endpoint, token, args.candle_rate, args.candle_seconds,
                                    pids=mesh_pids(mesh, "quote_svc", "envoy"))
            print(f"  {c['requests']} requests at {c['achieved_per_s']:.0f}/s ({c['candles_per_reply']} candles each), "
                  f"errors {c['errors']}: p50 {c['p50_ms']:.1f} ms, p99 {c['p99_ms']:.1f} ms, max {c['max_ms']:.1f} ms",
                  flush=True)
            print(cpu_line(c), flush=True)
        if "portfolio" in args.parts:
            print(f"\nGetPortfolio: {len(PORTFOLIO_POSITIONS)} positions valued at live quotes, open loop through "
                  f"Envoy", flush=True)
            ptoken, pf = await seed_portfolio(js, mesh)
            print("  " + ", ".join(f"{p.symbol} {p.quantity} @ {p.market_price} = {p.market_value}"
                                   for p in pf.positions), flush=True)
            await measured_portfolio_round(mesh, ptoken, args)
            # The same account with open orders: GetPortfolio then also asks order_svc for them
            # (it skips that call when the ledger holds nothing for the account).
            n_open = await place_resting_orders(mesh.endpoint, ptoken)
            print(f"\nGetPortfolio: the same account with {n_open} open orders (cash and shares held)", flush=True)
            await measured_portfolio_round(mesh, ptoken, args)
    finally:
        await nc.close()


def main(args) -> int:
    unwind_on_signals()  # Ctrl-C, SIGTERM, SIGHUP: the mesh is stopped and everything of it removed
    # Every stream is the token "bench"'s: its account may hold them all (quote_svc's limit is 50).
    mesh = MeshProcess(env={"STOCKMESH_MARKET_ALWAYS_OPEN": "1", "LOG_LEVEL": "WARNING",
                            "QUOTE_STREAMS_PER_ACCOUNT": str(max(args.streams))},
                       extra_args=["--log-level", "WARNING", "--no-simulator", "--quote-replicas", str(args.quote_replicas),
                                   *(["--envoy-workers", str(args.envoy_workers)] if args.envoy_workers else [])],
                       db_prefix="stockmesh_bench", namespace_prefix="bench")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; mesh data {mesh.data_dir}", flush=True)
    try:
        mesh.start()
        asyncio.run(run(args, mesh))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the mesh", file=sys.stderr)
        return 130
    finally:
        mesh.stop()
    return 0


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=lambda s: [int(x) for x in s.split(",")], default=[500, 1000, 2000])
    ap.add_argument("--rate", type=int, default=50, help="updates a second on the hot symbol")
    ap.add_argument("--quote-replicas", type=int, default=1, help="quote_svc processes behind Envoy")
    ap.add_argument("--envoy-workers", type=int, default=None, help="Envoy's worker threads (default: the launcher's)")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--clients", type=int, default=2, help="client processes")
    ap.add_argument("--client-runtime", choices=("node", "python"), default="node",
                    help="the fan-out clients: Node (benchmarks/quote_client, default: ~1/3 of the CPU) or "
                         "this script's own grpc.aio clients")
    ap.add_argument("--direct", action="store_true",
                    help="fan-out clients connect to quote_svc's own port, not through Envoy (for comparison)")
    ap.add_argument("--candle-rate", type=int, default=200)
    ap.add_argument("--candle-seconds", type=float, default=15.0)
    ap.add_argument("--portfolio-rate", type=int, default=200)
    ap.add_argument("--portfolio-seconds", type=float, default=15.0)
    ap.add_argument("--parts", type=lambda s: set(s.split(",")), default={"fanout", "candles", "portfolio"},
                    help="what to measure: fanout,candles,portfolio (default all)")
    # client-process mode (internal)
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    ap.add_argument("--token", help=argparse.SUPPRESS)
    ap.add_argument("--client-streams", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--end-at", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--profile-dir", type=Path, default=None,
                    help="py-spy the services of each GetCandles / GetPortfolio round into this folder")
    args = ap.parse_args()
    global PROFILE_DIR
    PROFILE_DIR = args.profile_dir
    if args.client:
        asyncio.run(client_main(args.endpoint, args.token, args.client_streams, args.start_at, args.end_at))
    else:
        sys.exit(main(args))


if __name__ == "__main__":
    cli()
