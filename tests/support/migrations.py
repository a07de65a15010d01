"""Migrations in tests: one rolled back, to be applied again over data written without it."""
from __future__ import annotations


def roll_back(database_url: str, migration_id: str) -> None:
    """Roll back the migration `migration_id` (only it) on the database at `database_url`;
    meshkit.migrate.apply_all applies it again."""
    from yoyo import get_backend, read_migrations

    from meshkit.migrate import migration_dirs, yoyo_url

    backend = get_backend(yoyo_url(database_url))
    try:
        with backend.lock():
            backend.rollback_migrations(backend.to_rollback(read_migrations(*migration_dirs()).filter(
                lambda m: m.id == migration_id)))
    finally:
        backend.connection.close()
