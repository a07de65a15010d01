"""Readiness (grpc.health.v1, which Envoy's active health checks follow) says whether a service
can serve, not whether it is busy: PostgreSQL is asked on a connection of the check's own, so
a pool whose every connection is taken still leaves the service SERVING; and the ledger, whose
calls are all answered from PostgreSQL, stays SERVING while NATS does not answer (round 22)."""
from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from nats.aio.client import Client

from meshkit import db
from meshkit.launcher.net import free_port
from meshkit.server import App, check_ready
from tests.integration.conftest import own_database_fixtures
from tests.support.wait import eventually

# A database of the module's own: the probes' sessions counted on it are only this module's.
pool, database_url, namespace, ledger_addr = own_database_fixtures()

PROBE = "stockmesh readiness"  # its application_name in pg_stat_activity


def _app(*checks) -> App:
    return App(name="probe_svc", servicers=[], checks=list(checks))


async def _probes(pool: asyncpg.Pool) -> list[int]:
    """The backends of readiness probes on the pool's database (the module's own)."""
    return [r["pid"] for r in await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1", PROBE)]


async def _closed(pool: asyncpg.Pool) -> bool:
    """No probe's session is left (closed with the service: App.on_close)."""
    return await _probes(pool) == []


async def test_postgres_is_ready_while_every_connection_of_the_pool_is_taken(database_url, pool):
    """Before: the check waited for a connection of the pool, the only one held (as a burst or
    a lock storm holds them all), timed out after 2 s, and the service went NOT_SERVING."""
    small = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    probe = db.pool_check(small, database_url)
    try:
        async with small.acquire():  # the pool's only connection, kept
            assert await check_ready(_app(probe)) is None
        assert len(await _probes(pool)) == 1
    finally:
        await probe.close()
        await small.close()
    assert await eventually(lambda: _closed(pool), timeout=10)


async def test_the_probe_keeps_one_connection_and_opens_another_once_it_is_lost(database_url, pool):
    probe = db.pool_check(None, database_url)  # the relay's: no pool at all
    try:
        await asyncio.gather(*(probe() for _ in range(5)))  # however many ask at once
        [pid] = await _probes(pool)
        assert await pool.fetchval("SELECT pg_terminate_backend($1)", pid)
        await probe()  # answered on a new connection, not NOT_SERVING for the old one's loss
        [again] = await _probes(pool)
        assert again != pid
    finally:
        await probe.close()
    assert await eventually(lambda: _closed(pool), timeout=10)


async def test_postgres_that_does_not_answer_is_not_ready():
    port = free_port()  # nothing listens there
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    unreachable = await asyncpg.create_pool(url, min_size=0, max_size=1)
    probe = db.pool_check(unreachable, url)
    try:
        problem = await check_ready(_app(probe))
    finally:
        await probe.close()
        await unreachable.close()
    assert problem is not None and "PostgreSQL does not answer" in problem, problem


async def test_the_ledger_is_ready_while_nats_is_not_connected(pool, database_url):
    """Every call of the ledger is answered from PostgreSQL (bootstrap.build says why): while it
    went NOT_SERVING with NATS, a NATS stall left Envoy no ledger to send PlaceOrder's holds to.
    NATS is still watched, and its failure logged (App.soft_checks)."""
    from ledger_svc.bootstrap import build

    nc = Client()  # never connected: NATS does not answer
    app = build(pool, nc, f"t{uuid.uuid4().hex[:8]}", database_url=database_url)
    try:
        assert await check_ready(app) is None
        [nats] = app.soft_checks
        with pytest.raises(ConnectionError, match="not connected to NATS"):
            await nats()
    finally:
        for check in app.checks:  # (not app.on_close: that would close the session's pool)
            if isinstance(check, db.PostgresProbe):
                await check.close()
