"""A namespace keeps a mesh's NATS and Redis names apart, not its rows (round 23): `stockmesh up
--namespace explore23` used the default database `stockmesh`, as every other `stockmesh up` on
the machine, so two meshes of different namespaces would have shared ledger, orders, audit trail
and candles, silently. Now the database given none follows the namespace
(infra.default_database_url), and `up` refuses a database holding another namespace's mesh data
(meshkit.launcher.owner), naming both, before it migrates or starts anything.

The launches here stop at NATS (a NATS_URL nothing answers at) or before: the database step is
what they are about; those given a NATS that answers are refused at step 2, or run in this
process and stop where the migrations would start. Each test drops the databases it made."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import psycopg
import pytest

from meshkit import bus
from meshkit.launcher import infra, owner
from meshkit.launcher.net import free_port
from meshkit.migrate import drop_database
from tests.conftest import _with_db, fresh_database

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _up(folder: Path, *args: str, env: dict[str, str] | None = None,
        nats_url: str | None = None) -> subprocess.CompletedProcess:
    """`stockmesh up` in `folder`, with NATS where nothing answers: it ends at step 2 at the latest
    (given `nats_url`, a NATS that answers: only for a launch refused at step 2)."""
    env = env or {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "STOCKMESH_NAMESPACE")}
    return subprocess.run([sys.executable, "-m", "meshkit.cli", "up", "--data-dir", str(folder), "--port", "0",
                           "--nats-url", nats_url or f"nats://127.0.0.1:{free_port()}", *args],
                          capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)


def _databases(server_url: str, name: str) -> int:  # (on the default server, where a mesh given none goes)
    with psycopg.connect(_with_db(server_url, "postgres"), autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone()[0]


def test_the_default_database_follows_the_namespace(tmp_path: Path) -> None:
    """Given no --database-url and no DATABASE_URL, a mesh of namespace X uses (and creates)
    `stockmesh_X` on the default server; the default namespace keeps `stockmesh`."""
    namespace = f"nsdb{uuid.uuid4().hex[:10]}"
    url = infra.default_database_url(namespace)
    name = url.rpartition("/")[2]
    assert name == f"stockmesh_{namespace}" and url.startswith(infra.DEFAULT_DATABASE_URL + "_")
    try:
        result = _up(tmp_path, "--namespace", namespace)
        assert result.returncode == 1 and "NATS_URL" in result.stdout, result.stdout + result.stderr
        assert f"using {url} (created now)" in result.stdout, result.stdout
        assert _databases(infra.DEFAULT_DATABASE_URL, name) == 1
        assert json.loads((tmp_path / "mesh.json").read_text())["namespace"] == namespace
    finally:
        drop_database(infra.DEFAULT_DATABASE_URL, name)


async def test_up_refuses_a_database_holding_another_namespace_s_order_flow(tmp_path: Path, pg_server_url: str) -> None:
    """A database a mesh of namespace `theirs` used before the claim existed (its order flow in
    the outbox, no mesh.owner row) is refused to a mesh of namespace `mine`: exit 2, both named,
    nothing migrated, claimed or started after PostgreSQL. `theirs` itself may use it."""
    theirs, mine = f"theirs{uuid.uuid4().hex[:8]}", f"mine{uuid.uuid4().hex[:8]}"
    async with fresh_database(pg_server_url) as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("INSERT INTO orders.outbox (subject, msg_id, payload, published_at) "
                               "VALUES ($1, 'o-1', '', now())", bus.subject(theirs, "orders", "AAPL"))
            # A row queued by hand for a third namespace and never published says nothing.
            await conn.execute("INSERT INTO orders.outbox (subject, msg_id, payload) VALUES ($1, 'o-2', '')",
                               bus.subject(f"typo{theirs}", "orders", "AAPL"))
            await conn.execute("DELETE FROM _yoyo_migration WHERE migration_id = '0004.mesh-owner'")
            await conn.execute("DROP TABLE mesh.owner")  # as before the claim's migration

            refused = _up(tmp_path / "mine", "--namespace", mine, "--database-url", url)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert (f"the database {url} holds the mesh data of namespace {theirs!r}, and this mesh's namespace is "
                    f"{mine!r}") in refused.stdout, refused.stdout
            assert (f"Give this mesh a database of its own (--database-url; with neither it nor DATABASE_URL, "
                    f"namespace {mine!r} uses {infra.default_database_url(mine)}), or run the mesh of that data "
                    f"with --namespace {theirs}") in refused.stdout, refused.stdout
            assert "- Redis" not in refused.stdout and "3/7" not in refused.stdout, refused.stdout
            assert await conn.fetchval("SELECT to_regclass('mesh.owner')") is None  # not migrated

            theirs_up = _up(tmp_path / "theirs", "--namespace", theirs, "--database-url", url)
            assert theirs_up.returncode == 1 and "NATS_URL" in theirs_up.stdout, theirs_up.stdout
        finally:
            await conn.close()


async def test_up_refuses_a_database_that_meshes_of_several_namespaces_shared_until_it_is_claimed(
        tmp_path: Path, pg_server_url: str) -> None:
    """Before the claim, meshes of every namespace given no database shared `stockmesh` (round
    23: the default namespace's and an explorer's). Its outbox then names several namespaces,
    none of which can be told its own (the latest row's won: review, round 23): each is refused,
    exit 2, all named, with the way to claim it by hand; once claimed, that namespace's mesh
    goes on with it."""
    a, b = f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"
    async with fresh_database(pg_server_url) as url:
        conn = await asyncpg.connect(url)
        try:
            for n, ns in enumerate((a, b, a)):
                await conn.execute("INSERT INTO orders.outbox (subject, msg_id, payload, published_at) "
                                   "VALUES ($1, $2, '', now())", bus.subject(ns, "orders", "AAPL"), f"o-{n}")
            await conn.execute("DELETE FROM _yoyo_migration WHERE migration_id = '0004.mesh-owner'")
            await conn.execute("DROP TABLE mesh.owner")
            for ns in (a, b):
                refused = _up(tmp_path / ns, "--namespace", ns, "--database-url", url)
                assert refused.returncode == 2, refused.stdout + refused.stderr
                assert (f"the database {url} holds the mesh data of several namespaces ({', '.join(sorted((a, b)))})"
                        in refused.stdout), refused.stdout
                assert f"INSERT INTO mesh.owner (namespace) VALUES ('{ns}')" in refused.stdout, refused.stdout
            migrated = subprocess.run([sys.executable, "-m", "meshkit.cli", "migrate", "--database-url", url],
                                      capture_output=True, text=True)
            assert migrated.returncode == 0, migrated.stdout + migrated.stderr
            await conn.execute("INSERT INTO mesh.owner (namespace) VALUES ($1)", b)
            claimed = _up(tmp_path / "b-again", "--namespace", b, "--database-url", url)
            assert claimed.returncode == 1 and "NATS_URL" in claimed.stdout, claimed.stdout  # past the check
            other = _up(tmp_path / "a-again", "--namespace", a, "--database-url", url)
            assert other.returncode == 2 and f"holds the mesh data of namespace {b!r}" in other.stdout, other.stdout
        finally:
            await conn.close()


async def test_a_claimed_database_stays_its_namespace_s_with_no_order_flow_at_all(pg_server_url: str) -> None:
    """An outbox says nothing about a mesh that has only deposits, or whose rows were pruned: once
    a mesh claimed its database (after migrating it), another namespace is refused all the same;
    of two meshes claiming one new database at once, the first claim stays and the other is told."""
    first, second = f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"
    async with fresh_database(pg_server_url) as url:
        assert await owner.other_namespace(url, first, claim=False) is None  # no mesh's yet: not claimed by a check
        assert await owner.other_namespace(url, second, claim=False) is None
        claims = await asyncio.gather(*(owner.other_namespace(url, ns, claim=True) for ns in (first, second) * 3))
        winner = (set(claims) - {None}).pop()
        assert sorted(claims, key=str) == sorted([None] * 3 + [winner] * 3, key=str), claims
        loser = first if winner == second else second
        assert await owner.other_namespace(url, loser, claim=False) == winner
        assert await owner.other_namespace(url, winner, claim=True) is None
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM orders.outbox") == 0
            assert await conn.fetchval("SELECT namespace FROM mesh.owner") == winner
        finally:
            await conn.close()


async def test_a_namespace_whose_data_is_in_the_old_default_database_goes_on_with_it(
        tmp_path: Path, pg_server_url: str, monkeypatch) -> None:
    """Before, a mesh of any namespace given no database used `stockmesh`: started again after an
    upgrade, with the same data folder (its engines' books on its NATS), it must not find an empty
    database of the namespace's own. A namespace whose data is in `stockmesh` goes on with it; a
    namespace whose data is not gets its own. (The old default here is a fresh database of the
    test's, in place of the server's `stockmesh`.)"""
    from meshkit.launcher.mesh import Mesh, UpOptions

    async def launch(namespace: str) -> list[str]:
        lines: list[str] = []
        mesh = Mesh(UpOptions(data_dir=tmp_path / namespace, namespace=namespace,
                              nats_url=f"nats://127.0.0.1:{free_port()}"), say=lines.append)
        try:
            with pytest.raises(infra.InfraError, match="NATS_URL"):  # the database step done
                await asyncio.to_thread(mesh.start)
        finally:
            mesh.stop()
        return lines

    upgraded, other = f"old{uuid.uuid4().hex[:8]}", f"new{uuid.uuid4().hex[:8]}"
    async with fresh_database(pg_server_url) as old_default:
        monkeypatch.setattr(infra, "DEFAULT_DATABASE_URL", old_default)
        conn = await asyncpg.connect(old_default)
        try:
            await conn.execute("INSERT INTO orders.outbox (subject, msg_id, payload, published_at) "
                               "VALUES ($1, 'o-1', '', now())",
                               bus.subject(upgraded, "orders", "AAPL"))
        finally:
            await conn.close()
        lines = await launch(upgraded)
        assert f"  namespace {upgraded!r}'s mesh data is in {old_default}, where a mesh given no database went " \
               "before, whatever its namespace: going on with it (a new mesh of the namespace gets " \
               f"{infra.default_database_url(upgraded)})" in lines, lines
        assert f"  using {old_default}" in lines, lines

        own = infra.default_database_url(other)
        try:
            lines = await launch(other)
            assert f"  using {own} (created now)" in lines, lines
        finally:
            drop_database(pg_server_url, own.rpartition("/")[2])


async def test_up_refuses_a_database_another_up_of_its_namespace_runs_on(tmp_path: Path, pg_server_url: str) -> None:
    """Two `stockmesh up` of one namespace in two data folders, given one database, would share
    its ledger and orders and each service's election (one mesh's orders went out on the other's
    NATS). The launcher holds a session advisory lock on its database while it runs: the second
    is refused, exit 2, before anything else starts; once the first is gone, it starts."""
    from meshkit.db import lock_key

    namespace = f"twice{uuid.uuid4().hex[:8]}"
    async with fresh_database(pg_server_url) as url:
        running = await asyncpg.connect(url)  # the first mesh's launcher, as far as the database can tell
        try:
            assert await running.fetchval("SELECT pg_try_advisory_lock($1)", lock_key(f"{namespace}.launcher"))
            refused = _up(tmp_path / "second", "--namespace", namespace, "--database-url", url)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert (f"another `stockmesh up` of namespace {namespace!r} runs on the database {url} (its session: "
                    f"backend pid {running.get_server_pid()}") in refused.stdout, refused.stdout
            assert "- Redis" not in refused.stdout and "3/7" not in refused.stdout, refused.stdout
        finally:
            await running.close()
        after = _up(tmp_path / "second", "--namespace", namespace, "--database-url", url)
        assert after.returncode == 1 and "NATS_URL" in after.stdout, after.stdout  # past the check


async def test_a_running_up_takes_its_database_lock_again_when_its_session_is_lost(tmp_path: Path,
                                                                                   pg_server_url: str) -> None:
    """Review of round 24: the launcher's lock was never checked once taken; a PostgreSQL
    restart or a session ended by hand let it go, and a second `up` of the namespace then
    passed. The running launcher checks its session (every DATABASE_LOCK_CHECK) and takes the
    lock again, or says that another `up` has it now."""
    from meshkit.db import lock_key
    from meshkit.launcher.mesh import Mesh, UpOptions

    namespace = f"keep{uuid.uuid4().hex[:8]}"
    said: list[str] = []
    key = lock_key(f"{namespace}.launcher")
    async with fresh_database(pg_server_url) as url:
        mesh = Mesh(UpOptions(data_dir=tmp_path, namespace=namespace, database_url=url), say=said.append)
        await asyncio.to_thread(mesh._check_database, url)
        first = mesh._database_lock.info.backend_pid
        conn = await asyncpg.connect(url)
        try:
            async def holder() -> int | None:
                return await conn.fetchval(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
                    "AND ((classid::bigint << 32) | objid::bigint) = $1", key)

            assert await holder() == first
            # pg_terminate_backend only signals the backend, which lets its locks go a moment
            # later (a CI run: the try-lock below came first): its timeout waits for it to end.
            await conn.execute("SELECT pg_terminate_backend($1, 10000)", first)  # an operator, or a restart
            await asyncio.to_thread(mesh._keep_database)
            assert await holder() == mesh._database_lock.info.backend_pid != first
            await conn.execute("SELECT pg_terminate_backend($1, 10000)", mesh._database_lock.info.backend_pid)
            assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", key)  # a second `up` got in
            await asyncio.to_thread(mesh._keep_database)
            assert mesh._database_lock is None
            assert [m for m in said if "lost its lock on its database" in m and namespace in m], said
        finally:
            await conn.close()
            mesh._release_database()


class _PastTheChecks(Exception):
    """Raised in place of the migrations: the launch got past every check of step 2."""


async def _launch_until_migrations(folder: Path, namespace: str, database_url: str, nats_url: str) -> list[str]:
    """`Mesh.start` in this process up to step 3, where it stops (nothing of the mesh started
    after NATS): what it said. Fails if a check of step 2 refused it."""
    from meshkit.launcher.mesh import Mesh, UpOptions

    lines: list[str] = []
    mesh = Mesh(UpOptions(data_dir=folder, port=0, namespace=namespace, database_url=database_url,
                          nats_url=nats_url), say=lines.append)

    def migrate(_url: str) -> None:
        raise _PastTheChecks

    mesh._migrate = migrate  # type: ignore[method-assign]
    mesh._lock()  # as Mesh.run: its stop writes mesh.json
    try:
        with pytest.raises(_PastTheChecks):
            await asyncio.to_thread(mesh.start)
    finally:
        mesh.stop()
    return lines


async def test_up_refuses_an_empty_database_for_a_namespace_whose_jetstream_holds_an_order_flow(
        tmp_path: Path, pg_server_url: str, nats_conn, nats_url: str) -> None:
    """Explorer, round 26: a data folder whose JetStream held the namespace's orders and
    executions, given a new database (a mistyped --database-url, or `dropdb stockmesh` then
    `./dev up`), came up ready, "created now", while every ledger consumer retried an execution
    of an order the database never had (HoldNotFound), forever. Refused now, exit 2, before
    anything is migrated or started, saying what each side holds and what to do; an empty
    database migrated by hand likewise. A database the namespace's mesh claimed goes on, and a
    new database with a JetStream that holds nothing (a new mesh) starts."""
    namespace = f"hist{uuid.uuid4().hex[:8]}"
    js = nats_conn.jetstream()
    for base in ("ORDERS", "EXECUTIONS"):
        await bus.ensure_stream(js, namespace, base)
    try:
        new_name = f"stockmesh_test_hist_{uuid.uuid4().hex[:8]}"
        new = _with_db(pg_server_url, new_name)
        try:
            # A new mesh: the streams are there (a first start made them), with nothing in them.
            lines = await _launch_until_migrations(tmp_path / "first", namespace, new, nats_url)
            assert f"  using {new} (created now)" in lines, lines
            for n, base in enumerate(("orders", "orders", "executions")):
                await js.publish(bus.subject(namespace, base, "AAPL"), b"", headers={"Nats-Msg-Id": f"m-{n}"})

            refused = _up(tmp_path / "first", "--namespace", namespace, "--database-url", new, nats_url=nats_url)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert (f"the JetStream of namespace {namespace!r} ({nats_url}) already holds an order flow (2 message(s) in "
                    f"{namespace}_ORDERS, 1 message(s) in {namespace}_EXECUTIONS), but the database {new} holds no "
                    "StockMesh data (no StockMesh tables: a new database, or one dropped and created again): on it, "
                    "every ledger consumer would stop") in refused.stdout, refused.stdout
            assert ("Give this mesh the database of that history (--database-url), or restore the database and the "
                    "data folder together") in refused.stdout, refused.stdout
            assert "another --namespace, or delete the namespace's streams from that NATS" in refused.stdout
            assert "3/7" not in refused.stdout, refused.stdout  # nothing migrated, nothing started
        finally:
            drop_database(pg_server_url, new_name)

        async with fresh_database(pg_server_url) as migrated:  # every schema, no order, no claim
            refused = _up(tmp_path / "first", "--namespace", namespace, "--database-url", migrated,
                          nats_url=nats_url)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert (f"the database {migrated} holds no StockMesh data (no order, and no mesh's claim)"
                    in refused.stdout), refused.stdout
            # The database the folder's mesh last used, not the one refused just before it.
            assert f"(--database-url; this data folder's last mesh used {new})" in refused.stdout, refused.stdout
            assert await owner.other_namespace(migrated, namespace, claim=True) is None  # a mesh of it ran here
            lines = await _launch_until_migrations(tmp_path / "second", namespace, migrated, nats_url)
            assert f"  using {migrated}" in lines, lines
    finally:
        for base in ("ORDERS", "EXECUTIONS"):
            await js.delete_stream(bus.stream_name(namespace, base))


def test_a_second_up_on_a_data_folder_in_use_is_refused_as_the_other_refusals_are(tmp_path: Path) -> None:
    """`<data-dir>/launcher.lock` held by a running `up`: refused with exit 2, as a database of
    another namespace or a history without its database are (round 26 explorer 2: exit 1)."""
    import fcntl

    folder = tmp_path / "in-use"
    folder.mkdir()
    with open(folder / "launcher.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        done = _up(folder)
    assert done.returncode == 2, done
    assert f"another `stockmesh up` (pid 4242) uses {folder}; stop it first or pass another --data-dir" in \
        done.stdout + done.stderr, done
