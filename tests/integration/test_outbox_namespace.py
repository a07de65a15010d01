"""A session close queued by hand for the wrong namespace (`stockmesh session close --namespace
nope`) once stopped the whole order flow: the relay could not publish its rows (no stream
takes `nope.orders.*`), gave up its round at the first, and every accepted order, cancel and
replace behind them waited; and the day's right close queued nothing (its ids were taken), so
DAY orders would never expire. The relay now publishes only its own namespace's rows, the right
close takes the ids over, and the command refuses a namespace the database's flow does not go
to. Each test has a database of its own."""
from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import date

import asyncpg
import pytest

from meshkit import bus
from meshkit.symbols import listed
from order_svc.adapters.outbox import OutboxRelay
from order_svc.service_layer.session import close_msg_id, close_session
from order_svc.service_layer.unit_of_work import OrderUnitOfWork
from tests.conftest import fresh_database

pytestmark = pytest.mark.integration

DAY = date(2024, 3, 5)


async def _rows(conn, like: str) -> list[tuple[str, str, bool]]:
    return [(r["subject"], r["msg_id"], r["published_at"] is not None) for r in await conn.fetch(
        "SELECT subject, msg_id, published_at FROM orders.outbox WHERE msg_id LIKE $1 ORDER BY id", like)]


async def test_rows_of_another_namespace_do_not_stop_the_relay(pg_server_url, nats_conn):
    js = nats_conn.jetstream()
    ns = f"ob{uuid.uuid4().hex[:8]}"
    await bus.ensure_stream(js, ns, "orders")
    async with fresh_database(pg_server_url) as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("INSERT INTO orders.outbox (subject, msg_id, payload) VALUES "
                               "('nope.orders.AAPL', 'close:2024-03-05:AAPL', ''), ($1, 'mine-1', '')",
                               bus.subject(ns, "orders", "AAPL"))
            relay = OutboxRelay(url, js, namespace=ns)

            assert await relay.relay_once(conn) == 1  # its own row only

            assert await _rows(conn, "%") == [("nope.orders.AAPL", "close:2024-03-05:AAPL", False),
                                              (bus.subject(ns, "orders", "AAPL"), "mine-1", True)]
            msg = await js.get_last_msg(bus.stream_name(ns, "ORDERS"), bus.subject(ns, "orders", "AAPL"))
            assert msg.headers["Nats-Msg-Id"] == "mine-1"
        finally:
            await conn.close()


async def test_a_row_of_another_namespace_does_not_stop_the_pruning_behind_it(pg_server_url):
    """Round 19 review: the prune scan stopped at the first row not yet published, and a row
    queued for another namespace is never published by this relay: every later scan started
    before it and deleted at most one batch past it (~1,000 rows a minute, less than the
    outbox takes in above ~17 orders/s), so the table grew for good. Such a row no longer
    stops the scan (it stays, and so do this namespace's unpublished rows, which do stop it)."""
    from datetime import timedelta

    from order_svc.adapters.repository import CLOSE_KEPT

    ns = f"ob{uuid.uuid4().hex[:8]}"
    mine = bus.subject(ns, "orders", "AAPL")
    old = CLOSE_KEPT + timedelta(days=1)
    async with fresh_database(pg_server_url) as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("INSERT INTO orders.outbox (subject, msg_id, payload, published_at) "
                               "VALUES ($1, 'close:2020-01-01:AAPL', '', now() - $2::interval)", mine, old)
            await conn.execute("INSERT INTO orders.outbox (subject, msg_id, payload) "
                               "VALUES ('nope.orders.AAPL', 'close:2020-01-02:AAPL', '')")
            for d in range(3, 9):
                await conn.execute("INSERT INTO orders.outbox (subject, msg_id, payload, published_at) "
                                   "VALUES ($1, $2, '', now() - $3::interval)", mine, f"close:2020-01-0{d}:AAPL", old)
            await conn.execute("INSERT INTO orders.outbox (subject, msg_id, payload) "  # ours, not yet published
                               "VALUES ($1, 'close:2020-01-09:AAPL', '')", mine)
            await conn.execute("INSERT INTO orders.outbox (subject, msg_id, payload, published_at) "
                               "VALUES ($1, 'close:2020-01-10:AAPL', '', now() - $2::interval)", mine, old)
            relay = OutboxRelay(url, None, retention=timedelta(hours=1), namespace=ns, prune_batch=2)
            deleted, resume = await relay.prune_scan(conn, timedelta(hours=1), 0)
            # All eight old rows of ours (the last in the batch of the unpublished one), none of the others.
            assert (deleted, await relay.prune_scan(conn, timedelta(hours=1), resume)) == (8, (0, resume))
            assert [m for _, m, _ in await _rows(conn, "close:%")] == ["close:2020-01-02:AAPL", "close:2020-01-09:AAPL"]
            assert resume == await conn.fetchval("SELECT id - 1 FROM orders.outbox "
                                                 "WHERE msg_id = 'close:2020-01-09:AAPL'")
        finally:
            await conn.close()


async def test_two_namespaces_sharing_a_database_each_have_their_relay_elected(pg_server_url, nats_conn):
    """Each namespace's relay publishes its own rows only, so each needs an election of its own
    (round 17 review: one lock per database left the second namespace's orders unpublished)."""
    import asyncio

    from tests.support.wait import eventually

    js = nats_conn.jetstream()
    spaces = [f"ob{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for ns in spaces:
        await bus.ensure_stream(js, ns, "orders")
    async with fresh_database(pg_server_url) as url:
        conn = await asyncpg.connect(url)
        relays = [asyncio.create_task(OutboxRelay(url, js, namespace=ns, idle_poll=0.05).run()) for ns in spaces]
        try:
            for ns in spaces:
                await conn.execute("INSERT INTO orders.outbox (subject, msg_id, payload) VALUES ($1, $2, '')",
                                   bus.subject(ns, "orders", "AAPL"), f"{ns}-1")

            async def all_published() -> bool:
                return all(published for _, _, published in await _rows(conn, "ob%"))

            assert await eventually(all_published, timeout=20), await _rows(conn, "ob%")
        finally:
            for task in relays:
                task.cancel()
            await asyncio.gather(*relays, return_exceptions=True)
            await conn.close()


async def test_the_right_close_takes_over_a_close_queued_for_another_namespace(pg_server_url):
    async with fresh_database(pg_server_url) as url:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        uow = lambda: OrderUnitOfWork(pool)  # noqa: E731
        try:
            symbols = sorted(listed())
            assert await close_session(DAY, uow, "nope") == len(symbols)
            async with pool.acquire() as conn:  # one of them was published (before relays kept to their own)
                await conn.execute("UPDATE orders.outbox SET published_at = now() WHERE msg_id = $1",
                                   close_msg_id(DAY, symbols[0]))

            assert await close_session(DAY, uow, "mesh") == len(symbols) - 1
            assert await close_session(DAY, uow, "mesh") == 0  # and once only

            async with pool.acquire() as conn:
                rows = await _rows(conn, "close:%")
            assert rows == [(f"nope.orders.{symbols[0]}", close_msg_id(DAY, symbols[0]), True)] + [
                (f"mesh.orders.{s}", close_msg_id(DAY, s), False) for s in symbols[1:]]
        finally:
            await pool.close()


async def test_session_close_refuses_a_namespace_the_order_flow_does_not_go_to(pg_server_url):
    async with fresh_database(pg_server_url) as url:
        conn = await asyncpg.connect(url)
        try:
            cmd = [sys.executable, "-m", "meshkit.cli", "session", "close", "--date", str(DAY), "--database-url", url]
            # An empty outbox says nothing about where the flow goes: the close is queued.
            first = subprocess.run([*cmd, "--namespace", "mesh"], capture_output=True, text=True, timeout=60)
            assert first.returncode == 0 and "symbols queued" in first.stdout, first.stderr
            await conn.execute("INSERT INTO orders.outbox (subject, msg_id, payload) VALUES "
                               "('mesh.orders.AAPL', 'an-order', '')")

            wrong = subprocess.run([*cmd, "--namespace", "nope"], capture_output=True, text=True, timeout=60)

            assert wrong.returncode == 2, wrong.stdout
            assert "this database's order flow goes to namespace 'mesh', not 'nope'" in wrong.stderr, wrong.stderr
            assert "Traceback" not in wrong.stderr
            assert not await conn.fetchval("SELECT count(*) FROM orders.outbox WHERE subject LIKE 'nope.%'")
        finally:
            await conn.close()


async def test_the_elected_relay_says_so_in_stockmesh_elected(pg_server_url, nats_conn):
    """Which of the relay's replicas relays is in stockmesh_elected{role}, as for the other
    elections (acceptance round 12: the relay's own lock showed nowhere)."""
    import asyncio

    from prometheus_client import REGISTRY

    from order_svc.adapters.outbox import RELAY_ROLE
    from tests.support.wait import eventually

    elected = lambda: REGISTRY.get_sample_value("stockmesh_elected", {"role": RELAY_ROLE})  # noqa: E731
    async with fresh_database(pg_server_url) as url:
        relay = asyncio.create_task(OutboxRelay(url, nats_conn.jetstream(), idle_poll=3600).run())
        try:
            assert await eventually(lambda: elected() == 1.0, timeout=30)
        finally:
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)
        assert elected() == 0.0
