"""Customers trade through the mesh while its processes are SIGKILLed one after another; once
the load stops, nothing is lost and the books agree: every acknowledged order is there under
its id, the ledger's invariants hold, the audit trail verifies and the day's settlement
reconciles the ledger with the execution journal without a discrepancy; and two customers'
order update streams, reopened after whatever ended them, gave every update once and in order.

Its own mesh (the shared one's services would be restarted under the other tests' feet). What
it found (2026-12-05): ledger_svc killed while executions were in flight applied an order's
later fills first once restarted (JetStream hands a dead reader's unacked messages out again
only after ack_wait, behind the next ones); the last fill released what was left of the hold,
the earlier fill could then never capture its part, and the ledger's consumer stopped for good
(meshkit.bus.resume_at_ack_floor). And with nats-server killed, PlaceOrder answered INTERNAL
where a quote had to be read from JetStream (now UNAVAILABLE, which clients retry). With
PostgreSQL killed, calls answered INTERNAL ("rpc crashed") where the database connection was
lost under them (now UNAVAILABLE / DATABASE_UNAVAILABLE, meshkit.db.connection_lost).

The mesh runs its own PostgreSQL and Redis (DATABASE_URL and REDIS_URL point where nothing
answers, so the launcher starts them in the data folder and restarts them like any child), so
that they too can be killed.
"""
from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from decimal import Decimal

import asyncpg
import grpc
import pytest

from meshkit import calendar
from meshkit.launcher.harness import MeshProcess
from meshkit.launcher.net import free_port
from meshkit.symbols import listed
from stockmesh.common.v1 import common_pb2
from stockmesh.ledger.v1 import ledger_service_pb2 as lpb, ledger_service_pb2_grpc
from stockmesh.order.v1 import order_service_pb2 as opb, order_service_pb2_grpc
from tests.support import invariants
from tests.support.funding import transfer_in_shares
from tests.support.meshes import start_or_fail
from tests.support.wait import eventually

pytestmark = pytest.mark.e2e

LOAD_SECONDS = 65
# One after another while the load runs, each a few seconds after the last came back; the
# ledger and the engine twice (executions in flight to the ledger, orders in flight to the engine),
# NATS itself once (every service reconnects; JetStream keeps what it acknowledged),
# PostgreSQL twice (crash recovery keeps every commit; what was in flight is retried) and Redis
# once (it holds no money state: rate limits fail open, the quote cache is rebuilt); and
# nats-server stalled (SIGSTOP, then SIGCONT), which once left every service's NATS connection
# reading nothing for good (meshkit.bus._Client); at the end, several at the same moment ("a+b").
VICTIMS = ("ledger_svc", "matching_svc", "postgres", "order_svc", "order_relay", "nats", "redis", "stall:nats",
           "ledger_svc", "envoy", "postgres+nats", "matching_svc", "order_svc", "postgres+ledger_svc+order_svc")
STALL_SECONDS = 6  # longer than the services' health checks' 1 s flush timeout
SYMBOLS = ("AAPL", "MSFT")
WATCHED = ("chaos-00", "chaos-01")  # accounts whose order updates a client follows through it all
# Transient while a process is down or restarting: the client asks again, with the same
# client_order_id (placement is idempotent on it). Anything else (INTERNAL: a crash) fails the test.
RETRIED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


async def _until_answered(call, patience: float = 60.0):
    deadline = time.monotonic() + patience
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRIED or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest.fixture
def chaos_mesh(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/stockmesh")  # nobody there
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nor there
    running = start_or_fail(MeshProcess(data_dir=tmp_path, db_prefix="stockmesh_e2e", namespace_prefix="e2e",
                                        extra_args=["--no-simulator"]))
    try:
        yield running
    finally:
        running.stop()


async def test_processes_killed_while_customers_trade_lose_nothing(chaos_mesh: MeshProcess) -> None:
    mesh = chaos_mesh
    rng = random.Random(5)
    accounts = [f"chaos-{i:02d}" for i in range(20)]
    reference = {s: listed()[s].reference_price for s in SYMBOLS}
    acked: dict[tuple[str, str], str] = {}  # (account, client_order_id) -> order id

    async with mesh.channel() as ch:
        ledger = ledger_service_pb2_grpc.LedgerServiceStub(ch)
        orders = order_service_pb2_grpc.OrderServiceStub(ch)
        for a in accounts:
            await ledger.Deposit(lpb.DepositRequest(amount="100000.00", idempotency_key="fund"), metadata=mesh.auth(a))
            for s in SYMBOLS:
                await transfer_in_shares(mesh.database_url, a, s, 400, str(reference[s]))
        stop = time.monotonic() + LOAD_SECONDS

        async def trader(w: int) -> None:
            n = 0
            while time.monotonic() < stop:
                account, symbol = rng.choice(accounts), rng.choice(SYMBOLS)
                md = mesh.auth(account)
                if rng.random() < 0.8:
                    n += 1
                    coid = f"t{w}-{n}"
                    market = rng.random() < 0.15
                    price = (reference[symbol] * (1 + Decimal(rng.randint(-80, 80)) / 10000)).quantize(Decimal("0.01"))
                    req = opb.PlaceOrderRequest(
                        client_order_id=coid, symbol=symbol, side=rng.choice((common_pb2.SIDE_BUY, common_pb2.SIDE_SELL)),
                        type=common_pb2.ORDER_TYPE_MARKET if market else common_pb2.ORDER_TYPE_LIMIT,
                        quantity=rng.randint(1, 5), limit_price="" if market else str(price),
                        time_in_force=common_pb2.TIME_IN_FORCE_IOC if market else common_pb2.TIME_IN_FORCE_GTC)
                    reply = await _until_answered(lambda: orders.PlaceOrder(req, metadata=md, timeout=5))
                    acked[(account, coid)] = reply.order.order_id
                else:
                    mine = [oid for (a, _), oid in acked.items() if a == account]
                    if mine:
                        cancel = opb.CancelOrderRequest(order_id=rng.choice(mine))
                        try:
                            await _until_answered(lambda: orders.CancelOrder(cancel, metadata=md, timeout=5))
                        except grpc.aio.AioRpcError as exc:  # it ended before the cancel came
                            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
                await asyncio.sleep(rng.uniform(0.01, 0.04))

        async def killer() -> None:
            await asyncio.sleep(4)
            for victim in VICTIMS:
                before = mesh.state()
                if victim.startswith("stall:"):  # stopped, not killed: a hung server, then back
                    pid = before["pids"][victim.removeprefix("stall:")]
                    os.kill(pid, signal.SIGSTOP)
                    await asyncio.sleep(STALL_SECONDS)
                    os.kill(pid, signal.SIGCONT)
                    await asyncio.sleep(rng.uniform(2, 4))
                    continue
                together = victim.split("+")  # killed at the same moment
                # Each running first (one may still be coming back from an earlier kill: a
                # PostgreSQL restarted with NATS, on a loaded machine).
                assert await eventually(lambda: all(name in mesh.state()["pids"] for name in together), timeout=60), \
                    f"{victim} not running\n{mesh.diagnostics()}"
                before = mesh.state()
                for name in together:
                    try:
                        os.kill(before["pids"][name], signal.SIGKILL)
                    except ProcessLookupError:  # it exited by itself after mesh.json named it (seen once
                        pass                    # in CI, cause unknown): the launcher restarts it, as waited for below
                restarted = await eventually(
                    lambda: all(mesh.state()["restarts"][name] > before["restarts"][name]
                                and name in mesh.state()["pids"] for name in together), timeout=60)
                assert restarted, f"{victim} was not restarted\n{mesh.diagnostics()}"
                await asyncio.sleep(rng.uniform(2, 4))

        seen: dict[str, list[int]] = {a: [] for a in WATCHED}

        async def watcher(account: str) -> None:
            """A customer's app following its order updates: whatever ends the stream (a process
            killed under it), it opens it again after the last update it saw."""
            while True:
                last = seen[account][-1] if seen[account] else 0
                call = orders.StreamOrderUpdates(opb.StreamOrderUpdatesRequest(after_sequence=last),
                                                 metadata=mesh.auth(account))
                try:
                    async for u in call:
                        seen[account].append(u.sequence)
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.2)

        watchers = [asyncio.create_task(watcher(a)) for a in WATCHED]
        await asyncio.gather(killer(), *(trader(w) for w in range(6)))

        pool = await asyncpg.create_pool(mesh.database_url, min_size=1, max_size=2)
        try:
            quiet = await eventually(lambda: pool.fetchval(
                "SELECT (SELECT count(*) FROM orders.orders WHERE status = 'PENDING_NEW')"
                " + (SELECT count(*) FROM orders.outbox WHERE published_at IS NULL) = 0"), timeout=60, delay=0.5)
            assert quiet, f"orders still mid-saga or unrelayed a minute after the load\n{mesh.diagnostics()}"
            stored = {(r["account_id"], r["client_order_id"]): str(r["order_id"]) for r in await pool.fetch(
                "SELECT account_id, client_order_id, order_id FROM orders.orders")}
            assert len(acked) > 500, len(acked)  # the load ran
            lost = {k: v for k, v in acked.items() if stored.get(k) != v}
            assert not lost, f"acknowledged orders missing or under another id: {list(lost.items())[:10]}"
            # The services apply executions on their own: the ledger may still be catching up.
            deadline = time.monotonic() + 90
            while (problems := await invariants.check(pool)) and time.monotonic() < deadline:
                await asyncio.sleep(1)
            assert not problems, "\n".join(problems[:20]) + "\n" + mesh.diagnostics()

            # Each watched account's stream gave every update once, in order, across the crashes.
            async def newest() -> dict[str, int]:
                return {r["account_id"]: r["n"] for r in await pool.fetch(
                    "SELECT account_id, max(sequence) AS n FROM orders.updates WHERE account_id = ANY($1) "
                    "GROUP BY 1", list(WATCHED))}

            async def caught_up() -> bool:
                n = await newest()
                return all(seen[a][-1:] == [n.get(a)] for a in WATCHED)

            assert await eventually(caught_up, timeout=60, delay=0.2), \
                ({a: seen[a][-3:] for a in WATCHED}, await newest(), [w.done() and w.exception() for w in watchers])
            last = await newest()
        finally:
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            await pool.close()
    for a in WATCHED:
        assert seen[a] == list(range(1, last[a] + 1)), (a, last[a], len(seen[a]), seen[a][-5:])

    cli = [sys.executable, "-m", "meshkit.cli"]
    verified = subprocess.run([*cli, "audit", "verify", "--database-url", mesh.database_url],
                              capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    today = calendar.trading_day(datetime.now(timezone.utc)).isoformat()  # New York's day, as the engine's
    settled = subprocess.run([*cli, "settle", "--date", today, "--database-url", mesh.database_url,
                              "--nats-url", mesh.state()["nats_url"], "--namespace", mesh.namespace,
                              "--before-close"],  # the simulated market is always open
                             capture_output=True, text=True)
    assert settled.returncode == 0 and re.search(r"discrepancies\s+none", settled.stdout), \
        settled.stdout[-3000:] + settled.stderr[-2000:] + "\n" + mesh.diagnostics()
    assert int(re.search(r"fills settled now\s+(\d+)", settled.stdout).group(1)) > 0, settled.stdout
