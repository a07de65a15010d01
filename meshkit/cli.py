"""The `stockmesh` command line: start the mesh, mint tokens, migrate, regenerate code."""
from __future__ import annotations

import sys

import click

from meshkit.config import default_data_dir


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """StockMesh: a stock-trading backend of gRPC services behind Envoy."""


@main.command()
@click.option("--check", is_flag=True, help="Fail if gen/ differs from what protos/ produce.")
def gen(check: bool) -> None:
    """Regenerate gen/ (Python, gRPC stubs, .pyi) from protos/."""
    from meshkit import codegen

    sys.exit(codegen.main(check=check))


@main.command()
@click.option("--database-url", envvar="DATABASE_URL", required=True, help="PostgreSQL URL.")
def migrate(database_url: str) -> None:
    """Apply every service's database migrations (one schema per service)."""
    from meshkit import migrate as m

    applied = m.apply_all(database_url)
    click.echo(f"migrations applied: {applied}" if applied else "database is up to date")


@main.group()
def audit() -> None:
    """The tamper-evident audit trail."""


@audit.command("verify")
@click.option("--database-url", envvar="DATABASE_URL", required=True, help="PostgreSQL URL.")
def audit_verify(database_url: str) -> None:
    """Recompute every hash chain; name the first broken link (exit 1) or confirm it is intact."""
    import asyncio

    import asyncpg

    from meshkit import audit as trail

    async def run() -> tuple[int, object]:
        conn = await asyncpg.connect(database_url)
        try:
            return await trail.verify(conn)
        finally:
            await conn.close()

    checked, broken = asyncio.run(run())
    if broken is not None:
        click.echo(f"audit trail BROKEN after {checked} good events: {broken}", err=True)
        sys.exit(1)
    click.echo(f"audit trail intact: {checked} events verified")
if __name__ == "__main__":
    main()
