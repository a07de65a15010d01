"""order_svc as a subprocess for the crash tests: started (optionally with a failpoint armed, at
which the process SIGKILLs itself), called over gRPC as a client would, and restarted."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshkit.launcher.net import free_port
from stockmesh.order.v1 import order_service_pb2_grpc

OrderStub = order_service_pb2_grpc.OrderServiceStub


def identity(account: str, exp: float | None = None) -> tuple[tuple[str, str], ...]:
    """The metadata Envoy adds for a signed-in account (whose token expires at `exp`, when given)."""
    claims = {"sub": account, **({"exp": int(exp)} if exp is not None else {})}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return (("x-jwt-payload", payload),)


def order_svc_env(database_url: str, nats_url: str, ledger_addr: str, namespace: str) -> dict[str, str]:
    """order_svc's settings for this test run, on a free port (kept across restarts)."""
    env = {**os.environ, "GRPC_LISTEN": f"127.0.0.1:{free_port()}", "DATABASE_URL": database_url, "NATS_URL": nats_url,
           "LEDGER_ADDR": ledger_addr, "STOCKMESH_NAMESPACE": namespace, "STOCKMESH_MARKET_ALWAYS_OPEN": "1",
           "LOG_LEVEL": "WARNING"}
    env.pop("REDIS_URL", None)
    env.pop("STOCKMESH_FAILPOINTS", None)
    return env


async def start_order_svc(env: dict[str, str]) -> asyncio.subprocess.Process:
    """`python -m order_svc`, once its health check says SERVING."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "order_svc", env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    async with grpc.aio.insecure_channel(env["GRPC_LISTEN"]) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for _ in range(200):
            try:
                r = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return proc
            except grpc.aio.AioRpcError:
                pass
            if proc.returncode is not None:
                raise RuntimeError(f"order_svc exited with {proc.returncode}")
            await asyncio.sleep(0.1)
    proc.kill()
    await proc.wait()
    raise RuntimeError("order_svc did not become SERVING")


@asynccontextmanager
async def running_order_svc(env: dict[str, str]) -> AsyncIterator[OrderStub]:
    """order_svc (without failpoints) for the block; stopped with SIGTERM after it."""
    proc = await start_order_svc(env)
    try:
        async with grpc.aio.insecure_channel(env["GRPC_LISTEN"]) as ch:
            yield OrderStub(ch)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), timeout=20)


async def killed_at(failpoint: str, env: dict[str, str], call: Callable[[OrderStub], Awaitable[object]]) -> None:
    """Start order_svc with `failpoint` armed, make `call` (which reaches it, or starts work that
    does) and see the process SIGKILL itself there."""
    proc = await start_order_svc({**env, "STOCKMESH_FAILPOINTS": failpoint})
    try:
        async with grpc.aio.insecure_channel(env["GRPC_LISTEN"]) as ch:
            try:
                await call(OrderStub(ch))
            except grpc.aio.AioRpcError as exc:  # the server died under the call
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                      grpc.StatusCode.UNKNOWN), exc
        assert await asyncio.wait_for(proc.wait(), timeout=20) == -signal.SIGKILL, f"not killed at {failpoint}"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
