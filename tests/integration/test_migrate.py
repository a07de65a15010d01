"""`stockmesh migrate` (and `stockmesh up`, which runs the same) names each migration as it
starts and ends, with how long it took: an upgrade's index build may take minutes, and round 18's
upgrade tester saw only "8 migration(s) applied" at the end, none of them named."""
from __future__ import annotations

import subprocess
import sys

import asyncpg
import pytest

from meshkit.launcher import harness
from meshkit.migrate import drop_database, migration_dirs, scratch_database

pytestmark = pytest.mark.integration


async def test_each_migration_is_named_as_it_starts_and_ends(pg_server_url):
    from yoyo import read_migrations

    ids = [m.id for m in read_migrations(*migration_dirs())]
    async with scratch_database(pg_server_url, migrated=False) as url:
        cmd = [sys.executable, "-m", "meshkit.cli", "migrate", "--database-url", url]
        first = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        assert first.returncode == 0 and first.stdout.strip() == f"migrations applied: {len(ids)}", first
        lines = first.stderr.splitlines()
        for n, migration in enumerate(ids, start=1):
            started = lines.index(f"  migration {n}/{len(ids)} {migration} ...")
            assert lines[started + 1].startswith(f"  migration {n}/{len(ids)} {migration} applied in "), lines
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        assert (again.returncode, again.stdout.strip(), again.stderr) == (0, "database is up to date", ""), again


async def test_a_database_migrated_by_a_newer_release_is_said_so(pg_server_url):
    """Round 19 upgrade tester: an older release started on a database a newer one had migrated
    without a word (there is no downgrade). `migrate` (and `up`) names the migrations it does
    not know, and goes on."""
    async with scratch_database(pg_server_url, migrated=False) as url:
        cmd = [sys.executable, "-m", "meshkit.cli", "migrate", "--database-url", url]
        assert subprocess.run(cmd, capture_output=True, text=True, timeout=180).returncode == 0
        conn = await asyncpg.connect(url)
        try:  # what a newer release's migration leaves in yoyo's table
            await conn.execute("INSERT INTO _yoyo_migration (migration_hash, migration_id, applied_at_utc) "
                               "VALUES ('f' || md5('future'), '9999.ledger-from-the-future', now())")
        finally:
            await conn.close()
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        assert again.returncode == 0 and again.stdout.strip() == "database is up to date", again
        assert ("warning: the database has 1 migration(s) this release does not know, applied by a newer one: "
                "9999.ledger-from-the-future; there is no downgrade") in again.stderr, again.stderr


async def test_a_test_mesh_s_database_keeps_the_server_url_s_query(pg_server_url):
    """The harness's mesh database is on the same server, reached the same way: a URL's query
    (a socket's `?host=/run/postgresql`, `sslmode`) was dropped from it (round 25 review)."""
    server = f"{pg_server_url.partition('?')[0]}?application_name=stockmesh_harness_check"
    created = harness.create_database(server, "stockmesh_test")
    assert created is not None
    name, url = created
    try:
        assert url.endswith(f"/{name}?application_name=stockmesh_harness_check"), url
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT current_setting('application_name')") == "stockmesh_harness_check"
        finally:
            await conn.close()
    finally:
        drop_database(pg_server_url, name)
