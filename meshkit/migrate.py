"""Database migrations, one PostgreSQL schema per service, applied with yoyo-migrations.

Each service keeps plain SQL files in `<service>/migrations/` (`NNNN.<service>-<what>.sql`,
with a `.rollback.sql` beside it where a rollback makes sense). yoyo records what it applied
in its own tables and takes a lock, so concurrent `stockmesh migrate` runs are safe.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from yoyo import get_backend, read_migrations

REPO = Path(__file__).resolve().parent.parent
SERVICES = ("ledger_svc", "order_svc", "quote_svc", "matching_svc")

log = logging.getLogger("meshkit.migrate")


def migration_dirs() -> list[str]:
    # The platform's own schemas (the audit trail) first, then each service's.
    dirs = [REPO / "meshkit" / "migrations", *(REPO / s / "migrations" for s in SERVICES)]
    return [str(d) for d in dirs if d.is_dir()]


def yoyo_url(database_url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix):]
    return database_url


def newer_migrations(backend, migrations) -> list[str]:
    """The ids of migrations the database has applied that are not among `migrations` (this
    release's): what a newer release applied (round 19: an older release started on such a
    database without a word)."""
    known = {m.hash for m in migrations}
    backend.ensure_internal_schema_updated()  # yoyo's own tables, on a database new to it
    rows = backend.execute(f"SELECT migration_hash, migration_id FROM {backend.migration_table_quoted} "
                           "ORDER BY applied_at_utc").fetchall()
    return [migration_id for migration_hash, migration_id in rows if migration_hash not in known]


def apply_all(database_url: str, progress: Callable[[str], None] | None = None) -> int:
    """Apply every pending migration of every service, one at a time in order; returns how
    many were applied. `progress` is told of each as it starts and as it ends, with how long it
    took (an upgrade's index build can take minutes: an operator sees which, round 18)."""
    backend = get_backend(yoyo_url(database_url))
    try:
        migrations = read_migrations(*migration_dirs())
        with backend.lock():
            unknown = newer_migrations(backend, migrations)
            if unknown:  # a downgrade: said, not refused (the older release may still work)
                said = (f"the database has {len(unknown)} migration(s) this release does not know, applied by a "
                        f"newer one: {', '.join(unknown)}; there is no downgrade (docs/operations.md): run the "
                        "release that applied them")
                log.warning(said, extra={"migrations": unknown})
                if progress is not None:
                    progress(f"warning: {said}")
            pending = backend.to_apply(migrations)
            for n, m in enumerate(pending, start=1):
                if progress is not None:
                    progress(f"migration {n}/{len(pending)} {m.id} ...")
                started = time.monotonic()
                # (filter() carries the list's post-apply hooks along: there are none; with one,
                # it would run after each migration, not once.)
                backend.apply_migrations(pending.filter(lambda x, m=m: x is m))
                took = time.monotonic() - started
                log.info("migration applied", extra={"migration": m.id, "seconds": round(took, 3)})
                if progress is not None:
                    progress(f"migration {n}/{len(pending)} {m.id} applied in {took:.1f} s")
        return len(pending)
    finally:
        backend.connection.close()


def migrations_missing(database_url: str) -> list[str] | None:
    """The ids of this release's migrations the database has not applied (every one when yoyo
    never ran there), read without writing anything; None when the database cannot be read."""
    import psycopg

    migrations = read_migrations(*migration_dirs())
    try:
        with psycopg.connect(database_url, connect_timeout=5) as conn:
            if conn.execute("SELECT to_regclass('_yoyo_migration')").fetchone()[0] is None:
                return [m.id for m in migrations]
            applied = {r[0] for r in conn.execute("SELECT migration_hash FROM _yoyo_migration")}
    except psycopg.Error:
        return None
    return [m.id for m in migrations if m.hash not in applied]


def database_url_on(server_url: str, name: str) -> str:
    """The URL of the database `name` on the server of `server_url` (its query, e.g. a socket's
    `?host=/tmp/...` or `sslmode`, kept: review of round 25)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _admin_conninfo(server_url: str) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(server_url, dbname="postgres")


def create_database(server_url: str, name: str, *, template: str | None = None) -> None:
    """CREATE DATABASE `name` on the server at `server_url` (a copy of `template`, if given)."""
    import psycopg
    from psycopg import sql

    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(_admin_conninfo(server_url), autocommit=True) as conn:
        conn.execute(statement)


def drop_database(server_url: str, name: str) -> None:
    """DROP DATABASE `name`, if it exists, with whatever is still connected to it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(_admin_conninfo(server_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@asynccontextmanager
async def scratch_database(server_url: str, prefix: str = "stockmesh_test", *, template: str | None = None,
                           migrated: bool = True) -> AsyncIterator[str]:
    """A new database `<prefix>_<random>` on the server at `server_url`, every migration
    applied (none, with `migrated` False): its URL; dropped afterwards, with whatever is still
    connected to it (a test's or a benchmark's own, never a mesh's). With `template` (a
    database every migration was applied to, that nothing is connected to: migrated_template),
    a copy of it, made in a fifth of the time the migrations take."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    await asyncio.to_thread(create_database, server_url, name, template=template)
    url = database_url_on(server_url, name)
    try:
        if template is None and migrated:
            await asyncio.to_thread(apply_all, url)
        yield url
    finally:
        await asyncio.to_thread(drop_database, server_url, name)


def migrated_template(server_url: str, prefix: str) -> str:
    """A new database `<prefix>_<random>` with every migration applied, for scratch_database
    to copy: its name (drop it with drop_database). Nothing stays connected to it."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    create_database(server_url, name)
    try:
        apply_all(database_url_on(server_url, name))
    except BaseException:
        drop_database(server_url, name)
        raise
    return name
