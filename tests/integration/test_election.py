"""meshkit.db.elected: of the replicas of a service, one does the work (e.g. applies the
execution journal in order); when it dies, or loses the connection that holds its election,
it stops and another takes over."""
from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from meshkit import db
from tests.support.wait import eventually

pytestmark = pytest.mark.integration


async def _holder_pid(conn: asyncpg.Connection, role: str) -> int | None:
    """The backend holding the role's advisory lock (a bigint key: classid high, objid low half)."""
    key = db.lock_key(role) & 0xFFFF_FFFF_FFFF_FFFF
    return await conn.fetchval(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
        " AND classid::bigint = $1 AND objid::bigint = $2 AND database = (SELECT oid FROM pg_database"
        " WHERE datname = current_database())", key >> 32, key & 0xFFFF_FFFF)


async def test_one_replica_works_and_another_takes_over_when_its_election_is_lost(database_url):
    role = f"test.{uuid.uuid4().hex[:8]}"
    working: list[str] = []

    def work_of(name: str):
        async def work() -> None:
            working.append(name)
            try:
                await asyncio.Event().wait()  # forever, until cancelled
            finally:
                working.remove(name)
        return work

    replicas = {name: asyncio.create_task(db.elected(database_url, role, work_of(name), poll=0.2))
                for name in ("a", "b")}
    admin = await asyncpg.connect(database_url)
    try:
        assert await eventually(lambda: len(working) == 1, timeout=5)
        await asyncio.sleep(0.6)  # three polls of the other: still one
        assert len(working) == 1, working
        first = working[0]

        # The elected replica's lock connection is cut (its process frozen, a network fault):
        # it stops working and its election ends with ConnectionError; the other takes over.
        pid = await _holder_pid(admin, role)
        assert pid is not None
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(replicas[first], timeout=5)
        assert await eventually(lambda: working == [n for n in replicas if n != first], timeout=5), working
    finally:
        for task in replicas.values():
            task.cancel()
        await asyncio.gather(*replicas.values(), return_exceptions=True)
        await admin.close()
    assert working == []
    # Every election's connection is gone with it: the lock is free again.
    check = await asyncpg.connect(database_url)
    try:
        async def free() -> bool:
            return await _holder_pid(check, role) is None

        assert await eventually(free, timeout=5)
    finally:
        await check.close()


async def test_the_work_s_own_failure_ends_the_election(database_url):
    async def failing() -> None:
        raise RuntimeError("handler broke")

    with pytest.raises(RuntimeError, match="handler broke"):
        await asyncio.wait_for(db.elected(database_url, f"test.{uuid.uuid4().hex[:8]}", failing, poll=0.2), 5)


async def test_a_standby_whose_connection_stops_answering_gives_up_its_election(database_url):
    """Round 19 review: the standby's tries for the lock had no time limit, so on a connection
    that stopped answering without closing (a network cut, a paused server) it waited for TCP
    to give up (~15 minutes) and did not take over meanwhile. Here a proxy between it and
    PostgreSQL stops passing bytes on; the election ends with TimeoutError (its supervisor
    starts it again, on a new connection). Without the limit, it still waits after 30 s."""
    from urllib.parse import urlsplit, urlunsplit

    role = f"test.{uuid.uuid4().hex[:8]}"
    url = urlsplit(database_url)
    cut = asyncio.Event()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if cut.is_set():
                    await asyncio.Event().wait()  # passes nothing on, closes nothing: half-open
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def proxy(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(url.hostname, url.port or 5432)
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w), return_exceptions=True)

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    via_proxy = urlunsplit(url._replace(netloc=f"{url.username or 'postgres'}@127.0.0.1:{port}"))
    holder = await db.connect(database_url, "test holder")
    standby = asyncio.create_task(asyncio.sleep(0))
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", db.lock_key(role))
        standby = asyncio.create_task(db.elected(via_proxy, role, asyncio.Event().wait, poll=0.1, timeout=1.0))
        assert await eventually(lambda: _standby_seen(holder, role)), "the standby never tried for the lock"
        cut.set()
        await asyncio.wait({standby}, timeout=30)
        assert standby.done(), "the standby still waits for an answer"
        assert isinstance(standby.exception(), asyncio.TimeoutError), standby.exception()
    finally:
        standby.cancel()
        await holder.close()
        server.close()


async def _standby_seen(conn: asyncpg.Connection, role: str) -> bool:
    return bool(await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                                    f"stockmesh {role}"))
