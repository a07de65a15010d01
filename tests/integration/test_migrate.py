"""`stockmesh migrate` (and `stockmesh up`, which runs the same) names each migration as it
starts and ends, with how long it took: an upgrade's index build may take minutes, and round 18's
upgrade tester saw only "8 migration(s) applied" at the end, none of them named."""
from __future__ import annotations

import subprocess
import sys
import uuid

import asyncpg
import pytest

from meshkit.migrate import migration_dirs
from tests.conftest import _with_db

pytestmark = pytest.mark.integration


async def test_each_migration_is_named_as_it_starts_and_ends(pg_server_url):
    from yoyo import read_migrations

    ids = [m.id for m in read_migrations(*migration_dirs())]
    name = f"stockmesh_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        cmd = [sys.executable, "-m", "meshkit.cli", "migrate", "--database-url", _with_db(pg_server_url, name)]
        first = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        assert first.returncode == 0 and first.stdout.strip() == f"migrations applied: {len(ids)}", first
        lines = first.stderr.splitlines()
        for n, migration in enumerate(ids, start=1):
            started = lines.index(f"  migration {n}/{len(ids)} {migration} ...")
            assert lines[started + 1].startswith(f"  migration {n}/{len(ids)} {migration} applied in "), lines
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        assert (again.returncode, again.stdout.strip(), again.stderr) == (0, "database is up to date", ""), again
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_a_database_migrated_by_a_newer_release_is_said_so(pg_server_url):
    """Round 19 upgrade tester: an older release started on a database a newer one had migrated
    without a word (there is no downgrade). `migrate` (and `up`) names the migrations it does
    not know, and goes on."""
    name = f"stockmesh_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_db(pg_server_url, name)
    try:
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
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
