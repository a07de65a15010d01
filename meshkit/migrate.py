"""Database migrations, one PostgreSQL schema per service, applied with yoyo-migrations.

Each service keeps plain SQL files in `<service>/migrations/` (`NNNN.<service>-<what>.sql`,
with a `.rollback.sql` beside it where a rollback makes sense). yoyo records what it applied
in its own tables and takes a lock, so concurrent `stockmesh migrate` runs are safe.
"""
from __future__ import annotations

import logging
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


def apply_all(database_url: str) -> int:
    """Apply every pending migration of every service; returns how many were applied."""
    backend = get_backend(yoyo_url(database_url))
    try:
        migrations = read_migrations(*migration_dirs())
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
        for m in pending:
            log.info("migration applied", extra={"migration": m.id})
        return len(pending)
    finally:
        backend.connection.close()
