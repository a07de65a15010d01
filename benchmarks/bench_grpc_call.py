"""The CPU a service spends on one unary gRPC call, whatever the call does: the floor under
every hop of the mesh (docs/benchmarks/place_order.md § "What one gRPC call costs").

    .venv/bin/python benchmarks/bench_grpc_call.py [--calls 3000]

Starts its own mesh (`stockmesh up --no-simulator` through meshkit/launcher/harness.py: fresh
data folder, database and namespace, all removed at the end, also on Ctrl-C or SIGTERM) and
calls ledger_svc straight on its internal port (no Envoy), sequentially and 32 at a time:

- `grpc.health.v1.Health/Check`: nothing but gRPC, the interceptor and the servicer;
- `HoldService/GetHold` of an unknown hold: one indexed SELECT and a NOT_FOUND with its
  ErrorInfo (the error path of a call that touches PostgreSQL).

For each it prints the calls a second, ledger_svc's CPU time per call (user + system from
/proc, over the timed calls only, after 100 warm-up calls) and the CPU time per call of the
caller, this script (grpc.aio, the same client as the PlaceOrder benchmark's load generator
and as order_svc's calls to the ledger): what the other end of every hop costs.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "gen")]

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from bench_quotes import cpu_seconds  # noqa: E402  (this folder is on sys.path when run as a script)
from meshkit.launcher.harness import MeshProcess, unwind_on_signals  # noqa: E402
from stockmesh.ledger.v1 import hold_service_pb2 as pb, hold_service_pb2_grpc  # noqa: E402


async def measure(pid: int, call, calls: int, concurrency: int) -> tuple[float, float, float]:
    """(calls a second, server CPU seconds per call, client CPU seconds per call)."""
    async def one(i: int) -> None:
        try:
            await call(i)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise

    for i in range(100):
        await one(i)
    c0, t0, mine = cpu_seconds(pid), time.monotonic(), time.process_time()  # process_time: all our threads
    for start in range(0, calls, concurrency):
        await asyncio.gather(*(one(i) for i in range(start, start + concurrency)))
    return (calls / (time.monotonic() - t0), (cpu_seconds(pid) - c0) / calls,
            (time.process_time() - mine) / calls)


async def main(calls: int) -> None:
    with MeshProcess(extra_args=["--no-simulator"]) as mesh:
        state = mesh.state()
        pid, port = state["pids"]["ledger_svc"], state["ports"]["ledger_svc"]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            holds = hold_service_pb2_grpc.HoldServiceStub(ch)
            kinds = (("Health/Check", lambda i: health.Check(health_pb2.HealthCheckRequest())),
                     ("HoldService/GetHold, unknown hold", lambda i: holds.GetHold(pb.GetHoldRequest(hold_id=f"none-{i}"))))
            print(f"{'call':36s} {'concurrency':>11s} {'calls/s':>8s} {'ledger_svc CPU per call':>24s} "
                  f"{'caller CPU per call':>20s}")
            for name, call in kinds:
                for concurrency in (1, 32):
                    rate, per_call, client = await measure(pid, call, calls, concurrency)
                    print(f"{name:36s} {concurrency:>11d} {rate:>8.0f} {per_call * 1e6:>21.0f} µs "
                          f"{client * 1e6:>17.0f} µs", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=3000)
    args = ap.parse_args()
    unwind_on_signals()  # SIGTERM / SIGHUP / Ctrl-C (even in a background job) stop the mesh
    asyncio.run(main(args.calls))
