"""PostgreSQL connection pools (asyncpg). NUMERIC columns come back as exact Decimals."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
from prometheus_client import Gauge

from meshkit.errors import causes

log = logging.getLogger("meshkit.db")

ELECTION = Gauge("stockmesh_elected", "1 while this process holds the role's election (meshkit.db.elected)", ["role"])


async def _rollback_only(conn: asyncpg.Connection) -> None:
    """Our services keep no session state on pooled connections (no SET, no LISTEN, no
    advisory locks: those use dedicated connections, or advisory_lock below, which unlocks
    before it hands its connection back), so releasing one needs no reset query;
    the pool still rolls back an open transaction before calling this. One round trip less
    per transaction."""


def pool_max(default: int) -> int:
    """A service's pool size: DB_POOL_MAX when set (PostgreSQL's max_connections is shared by
    every replica of every service), else the service's default."""
    raw = os.environ.get("DB_POOL_MAX", "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else default


# Every session asks the server to probe its client while idle (TCP keepalives): a client gone
# without a word (a half-open connection: a partition, a dropped NAT mapping, a lost host) ends
# its session within ~25 s, and the locks it held (an election's, the outbox relay's) with it,
# not after the kernel's default two hours (round 18). Ignored over a Unix socket.
KEEPALIVES = {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3"}


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, command_timeout=30, reset=_rollback_only,
        max_inactive_connection_lifetime=60,
        server_settings={
            "application_name": "stockmesh",
            # Backstop: a connection left idle inside a transaction is closed by the server.
            "idle_in_transaction_session_timeout": "60000",
            **KEEPALIVES,
        })


def lock_wait_text(seconds: float) -> str:
    """A lock wait as PostgreSQL's lock_timeout takes it (`set_config('lock_timeout', ...)`,
    transaction-local: a statement that would wait longer for a lock fails with
    lock_not_available, asyncpg's LockNotAvailableError): whole milliseconds, at least one (0
    would be no limit at all)."""
    return f"{max(1, round(seconds * 1000))}ms"


def sets_lock_wait(param: str) -> str:
    """A SQL condition, true, that sets lock_timeout (transaction-local) to the text of the
    statement's `param` (e.g. "$3", given lock_wait_text) when PostgreSQL evaluates it: put in
    the WHERE of a transaction's first statement, before it takes any lock, it bounds every lock
    wait of the rest of the transaction with no round trip of its own."""
    return f"set_config('lock_timeout', {param}, true) IS NOT NULL"


async def connect(url: str, role: str, *, command_timeout: float | None = None,
                  timeout: float = 60) -> asyncpg.Connection:
    """A connection of its own (an election's, the outbox relay's, a listener's), named
    `stockmesh <role>` in pg_stat_activity, its client probed by the server (KEEPALIVES), and
    with `command_timeout` a statement that does not answer in time raises TimeoutError;
    `timeout`: for the connection itself."""
    return await asyncpg.connect(url, command_timeout=command_timeout, timeout=timeout,
                                 server_settings={"application_name": f"stockmesh {role}", **KEEPALIVES})


async def answers(conn: asyncpg.Connection, timeout: float, what: str) -> None:
    """ConnectionError unless `conn` answers a statement within `timeout` seconds (closed,
    cut, half-open, or its server stopped): for the connections a process holds for good (an
    election's lock, a LISTEN), which would otherwise never say they are gone."""
    try:
        await conn.fetchval("SELECT 1", timeout=timeout)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ConnectionError(f"lost {what}: {exc!r}") from exc


# The connection to PostgreSQL failed under the statement (the server restarting, shut down
# or gone, the connection cut), as opposed to the statement's or the program's own error.
_CONNECTION_LOST = (asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError,
                    asyncpg.CrashShutdownError, ConnectionError,
                    # A connection refused because the server is full (max_connections): it
                    # answers again once others close (acceptance round 13: INTERNAL).
                    asyncpg.TooManyConnectionsError)


def connection_lost(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is PostgreSQL's connection failing rather than an error
    of the statement or the program: the caller may try again once the server is back. Also
    asyncpg's InterfaceError on a connection that was closed meanwhile, and its
    InternalClientError about the protocol's state, which a connection the server terminated
    mid-operation raises on its next use (MagicStack/asyncpg#784, sqlalchemy#13241)."""
    return any(isinstance(e, _CONNECTION_LOST)
               or (isinstance(e, asyncpg.InterfaceError) and "connection is closed" in str(e))
               or (isinstance(e, asyncpg.InternalClientError) and "state" in str(e)) for e in causes(exc))


# How long readiness's probe waits for PostgreSQL, connecting included: within the 2 s that
# meshkit.server.check_ready gives a check, so that a server that does not answer is told
# apart, in the check's message, from one that refuses.
PROBE_TIMEOUT = 1.5


class PostgresProbe:
    """Readiness's question to PostgreSQL, "is it reachable and answering?", asked on a
    connection of its own (`stockmesh readiness` in pg_stat_activity) rather than through the
    service's pool. Through the pool, a check waited for a free connection: with every one busy
    for longer than the check may take (a burst, a lock storm) the service went NOT_SERVING and
    Envoy took a busy but healthy host out, which turned load into an outage (round 22).

    One connection per process (PostgreSQL's max_connections is shared by everything), opened
    on the first check, opened again after any failure (a statement that fails or does not
    answer in time leaves it unusable), closed with the service (App.on_close). A server that
    refuses a new connection because it is full (max_connections) still answers: then the
    pool's own connections are asked, as before; and so they are always when no `url` is given
    (a pool built by a test without one)."""

    def __init__(self, pool: asyncpg.Pool | None, url: str | None, *, timeout: float = PROBE_TIMEOUT) -> None:
        if pool is None and url is None:
            raise TypeError("a readiness probe needs the database's URL or a pool")
        self.pool, self.url, self.timeout = pool, url, timeout
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()  # one connection, however many ask at once

    async def __call__(self) -> None:
        if self.url is None:
            await self.pool.fetchval("SELECT 1", timeout=self.timeout)
            return
        async with self._lock:
            try:
                await asyncio.wait_for(self._select_1(), self.timeout)
            except asyncpg.TooManyConnectionsError:
                if self.pool is None:  # nothing else to ask on: it cannot connect, so it cannot work
                    raise
                await self.pool.fetchval("SELECT 1", timeout=self.timeout)
            except Exception as exc:  # noqa: BLE001 - whatever it was, PostgreSQL did not answer
                self._drop()
                why = f"no answer within {self.timeout:g} s" if isinstance(exc, TimeoutError) else repr(exc)
                raise ConnectionError(f"PostgreSQL does not answer: {why}") from exc
            except BaseException:  # cancelled mid-statement: the connection is in no state to reuse
                self._drop()
                raise

    async def _select_1(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            try:
                await self._conn.fetchval("SELECT 1")
                return
            except Exception as exc:  # noqa: BLE001
                if not connection_lost(exc):
                    raise
                # Lost while it sat idle (its session ended by an administrator, a proxy's idle
                # limit): a new connection answers for the server, not the old one.
                self._drop()
        self._conn = await connect(self.url, "readiness", command_timeout=self.timeout)
        await self._conn.fetchval("SELECT 1")

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close(timeout=self.timeout)
            except Exception:  # noqa: BLE001 - a server that does not answer: the session ends with the socket
                conn.terminate()


def pool_check(pool: asyncpg.Pool | None, url: str | None) -> PostgresProbe:
    """The readiness check of the database at `url`, which `pool` (if any) connects to (see
    PostgresProbe): the service's checks, and its closers (`.close`)."""
    return PostgresProbe(pool, url)


def lock_key(name: str) -> int:
    """A PostgreSQL advisory lock key (a signed 64-bit number) for a role's name."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def terminate(conn: asyncpg.Connection) -> None:
    """Close a pool's connection at once (its session, and with it any transaction or lock it
    holds, ends on the server). One asyncpg saw lost is already back in the pool, and its
    proxy refuses every call: nothing is left to close."""
    try:
        conn.terminate()
    except asyncpg.InterfaceError:
        pass


@asynccontextmanager
async def advisory_lock(pool: asyncpg.Pool, name: str, *, shared: bool = False,
                        wait: bool = True) -> AsyncIterator[bool]:
    """Hold the session advisory lock of `name` for the block, shared or exclusive, on one of
    the pool's connections kept for it. With `wait` False the block runs at once and gets
    False when a conflicting holder has it (and nothing is held), else True. Unlocked before
    the connection goes back to the pool; if unlocking fails, the connection is closed (the
    lock goes with its session)."""
    key = lock_key(name)
    mode = "_shared" if shared else ""
    conn = await pool.acquire()
    held = failed = False
    try:
        if wait:
            await conn.execute(f"SELECT pg_advisory_lock{mode}($1)", key)
            held = True
        else:
            held = await conn.fetchval(f"SELECT pg_try_advisory_lock{mode}($1)", key)
        yield held
    except BaseException:
        failed = True
        raise
    finally:
        # When the block failed (the database went away under it, say), its error is what the
        # caller must hear, not the unlock's on the same dead connection (round 14: `stockmesh
        # settle` ended in a traceback about a connection released to the pool).
        try:
            if held:
                await conn.execute(f"SELECT pg_advisory_unlock{mode}($1)", key)
        except BaseException:
            terminate(conn)
            if not failed:
                raise
        finally:
            try:
                await pool.release(conn)
            except BaseException:
                if not failed:
                    raise


async def elected(database_url: str, role: str, work: Callable[[], Awaitable[None]], *,
                  poll: float = 1.0, timeout: float = 10.0) -> None:
    """Run `work` only while this process holds the advisory lock of `role`, so that of all the
    replicas of a service exactly one does it (e.g. applies the execution journal in order) and
    another takes over within `poll` seconds when it dies: the lock is held by a connection of
    its own, and dies with it. While working, the connection is checked every `poll` seconds;
    if it is lost, `work` is cancelled and ConnectionError raised (the caller's supervisor
    restarts the election), so a replica that can no longer prove it holds the lock stops.
    A standby's try for the lock that gets no answer in `timeout` seconds raises TimeoutError
    too (round 19 review: on a half-open connection the standby waited for TCP to give up,
    ~15 minutes, and took over that late when the working replica died)."""
    key = lock_key(role)
    conn = await connect(database_url, role, command_timeout=timeout)
    try:
        while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
            ELECTION.labels(role).set(0)
            await asyncio.sleep(poll)  # another replica holds it
        ELECTION.labels(role).set(1)
        log.info("elected", extra={"role": role})
        task = asyncio.create_task(work(), name=f"elected {role}")
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=poll)
                if not task.done():
                    await answers(conn, poll, f"the connection holding the {role} election")
            await task  # its result or its exception
        finally:
            ELECTION.labels(role).set(0)
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        conn.terminate()  # the lock goes with the session
