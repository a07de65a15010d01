"""Round 18 (infrastructure chaos): one PostgreSQL session that stops answering (a SIGSTOPped
backend, a half-open connection) held every accepted order back from the engines, silently: the
relay's statement waited for good, its lock stayed with the stopped session, the relay said
nothing and stayed SERVING. And order_svc's LISTEN connection for order updates, once closed
(a PostgreSQL restart), was never opened again. Round 22: a NATS stall ended the relay's task as a
crash. Each test has a database of its own."""
from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg
import pytest

from meshkit import bus
from meshkit.errors import Lasting
from meshkit.transient import transient
from order_svc.adapters.notifications import UpdateNotifier
from order_svc.adapters.outbox import OutboxRelay
from tests.conftest import fresh_database
from tests.support.wait import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def flow(nats_conn):
    """A JetStream context and a namespace of its own with its ORDERS stream."""
    ns = f"os{uuid.uuid4().hex[:8]}"
    await bus.ensure_stream(nats_conn.jetstream(), ns, "orders")
    return nats_conn.jetstream(), ns


async def _published(conn, msg_id: str) -> bool:
    return await conn.fetchval("SELECT published_at IS NOT NULL FROM orders.outbox WHERE msg_id = $1", msg_id)


async def test_a_relay_statement_that_does_not_answer_fails_its_round(pg_server_url, flow):
    js, ns = flow
    async with fresh_database(pg_server_url) as url:
        blocker = await asyncpg.connect(url)
        try:
            await blocker.execute("INSERT INTO orders.outbox (subject, msg_id, payload) VALUES ($1, 'o-1', '')",
                                  bus.subject(ns, "orders", "AAPL"))
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("SELECT 1 FROM orders.outbox WHERE msg_id = 'o-1' FOR UPDATE")  # its mark waits
            relay = OutboxRelay(url, js, namespace=ns, idle_poll=0.05, statement_timeout=1.0)
            stuck = asyncio.create_task(relay.run())
            done, _ = await asyncio.wait({stuck}, timeout=30)
            if not done:
                stuck.cancel()
            # Ended by itself, not a wait for good: the supervisor starts it again.
            assert done and isinstance(stuck.exception(), TimeoutError)
            await tx.rollback()
            task = asyncio.create_task(relay.run())
            try:
                assert await eventually(lambda: _published(blocker, "o-1"), timeout=20)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        finally:
            await blocker.close()


async def test_rows_kept_waiting_by_another_session_holding_the_relay_lock_are_said(pg_server_url, flow, caplog):
    js, ns = flow
    async with fresh_database(pg_server_url) as url:
        holder = await asyncpg.connect(url, server_settings={"application_name": "stuck relay"})
        relay = OutboxRelay(url, js, namespace=ns, idle_poll=0.05, stuck_after=0.5)
        await holder.execute("SELECT pg_advisory_lock($1)", relay.lock)
        await holder.execute("INSERT INTO orders.outbox (subject, msg_id, payload, created_at) "
                             "VALUES ($1, 'o-1', '', now() - interval '1 minute')", bus.subject(ns, "orders", "AAPL"))
        caplog.set_level(logging.WARNING, logger="order_svc.outbox")
        task = asyncio.create_task(relay.run())
        try:
            def said():
                return [r for r in caplog.records if r.getMessage().startswith("orders wait to be relayed")]

            assert await eventually(lambda: bool(said()), timeout=20)
            record = said()[0]
            assert (record.holderPid, record.holderApplication) == (holder.get_server_pid(), "stuck relay")
            assert record.oldestWaitingSeconds >= 59
            await holder.execute("SELECT pg_advisory_unlock($1)", relay.lock)
            assert await eventually(lambda: _published(holder, "o-1"), timeout=20)  # taken over
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await holder.close()


class StalledJetStream:
    """A JetStream context whose first `stalled` publishes are never acknowledged (a NATS server
    stopped mid-round), the rest the real one's."""

    def __init__(self, js, stalled: int) -> None:
        self.js, self.stalled, self.calls = js, stalled, 0

    async def publish_async(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.stalled:
            return asyncio.get_running_loop().create_future()  # no acknowledgement, ever
        return await self.js.publish_async(*args, **kwargs)


async def test_a_nats_stall_is_retried_in_place_with_a_warning_not_a_crash(pg_server_url, flow, caplog):
    """Round 22 soak: each NATS stall under load ended the relay's task (its publish
    acknowledgements timed out), logged at ERROR with a traceback as a crash, and the supervisor
    started it again. The relay now says it as a warning and tries again in place: the same
    task, its election and connection kept, publishes the rows once NATS answers."""
    js, ns = flow
    async with fresh_database(pg_server_url) as url:
        conn = await asyncpg.connect(url)
        stalled = StalledJetStream(js, stalled=2)
        relay = OutboxRelay(url, stalled, namespace=ns, idle_poll=0.05, ack_timeout=0.2)
        await conn.execute("INSERT INTO orders.outbox (subject, msg_id, payload) VALUES ($1, 'o-1', '')",
                           bus.subject(ns, "orders", "AAPL"))
        caplog.set_level(logging.INFO, logger="order_svc.outbox")
        task = asyncio.create_task(relay.run())
        try:
            assert await eventually(lambda: _published(conn, "o-1"), timeout=20)
            assert not task.done(), task.exception() if task.done() else None  # the same task did it
            said = [r for r in caplog.records if r.name == "order_svc.outbox"]
            failed = [r for r in said if r.getMessage().startswith("JetStream did not take the orders to relay")]
            assert [(r.levelno, r.failedRounds) for r in failed] == [(logging.WARNING, 1), (logging.WARNING, 2)]
            assert "TimeoutError" in failed[0].error
            assert any(r.getMessage() == "relaying again" and r.failedRounds == 2 for r in said)
            assert not [r for r in said if r.levelno >= logging.ERROR]
            assert stalled.calls == 3
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await conn.close()


async def test_a_relay_whose_publishes_keep_failing_gives_its_election_up(pg_server_url, flow, monkeypatch):
    """Review of round 22's retry in place: a relay cut off from NATS (or pointed at the wrong
    one) that retried for ever kept its election, and with it every order from the engines,
    though another replica's NATS answered. After PUBLISH_GIVE_UP_AFTER of failures its task
    ends (its supervisor logs it and starts it again) and the lock is free for another."""
    from order_svc.adapters import outbox

    js, ns = flow
    monkeypatch.setattr(outbox, "PUBLISH_GIVE_UP_AFTER", 0.5)
    async with fresh_database(pg_server_url) as url:
        conn = await asyncpg.connect(url)
        try:
            relay = OutboxRelay(url, StalledJetStream(js, stalled=10**9), namespace=ns, idle_poll=0.05,
                                ack_timeout=0.1)
            await conn.execute("INSERT INTO orders.outbox (subject, msg_id, payload) VALUES ($1, 'o-1', '')",
                               bus.subject(ns, "orders", "AAPL"))
            task = asyncio.create_task(relay.run())
            done, _ = await asyncio.wait({task}, timeout=30)
            if not done:
                task.cancel()
            assert done and isinstance(task.exception(), outbox.PublishFailed)
            # Logged at ERROR by its supervisor, whatever NATS error caused it: it lasted.
            assert isinstance(task.exception(), Lasting) and transient(task.exception()) is None
            assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", relay.lock)  # free for another replica
            assert not await _published(conn, "o-1")
        finally:
            await conn.close()


async def test_the_order_updates_listener_whose_connection_ends_says_so_and_wakes_every_stream(pg_server_url):
    async with fresh_database(pg_server_url) as url:
        admin = await asyncpg.connect(url)
        notifier = UpdateNotifier(url, check=0.1)
        woken = notifier.subscribe("alice")
        task = asyncio.create_task(notifier.run())
        try:
            listener = "stockmesh orders.updates-listener"
            find = "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()"
            assert await eventually(lambda: admin.fetchval(find, listener), timeout=20)
            await admin.execute(f"SELECT pg_terminate_backend(pid) FROM ({find}) x", listener)
            # Raised, not returned: the supervisor (meshkit.server) starts it again only then.
            with pytest.raises(Exception):
                await asyncio.wait_for(task, timeout=20)
            assert woken.is_set()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await admin.close()
