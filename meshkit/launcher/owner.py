"""Which mesh namespace a database belongs to: `stockmesh up` never shares one between two.

A namespace keeps a mesh's NATS streams, subjects and Redis keys apart from another's, not its
rows: two meshes of different namespaces on one database would share the ledger (and the
simulator's accounts), the orders, the audit trail and the candles, and the orders one mesh
accepted would rest in the other's database where its engines never see them (round 23).

So `stockmesh up` claims its database for its namespace (mesh.owner, migration
meshkit/0004: one row, the first claim stays) once it has migrated it, and refuses, before it
migrates anything, a database claimed by another namespace, or, for a database used before the
claim existed, one whose order flow goes to another namespace (its latest outbox row's, what
`stockmesh session close` checks too). Two meshes starting at once on one new database both
claim it after migrating: the second is refused then.

A mesh given no database uses its namespace's (infra.default_database_url); one whose data is
in `stockmesh`, where meshes of every namespace went before, goes on with it (Mesh._database_url).
"""
from __future__ import annotations

import asyncpg

from meshkit import db
from order_svc.adapters.repository import OrderRepository


async def owner(conn: asyncpg.Connection) -> str | None:
    """The namespace whose mesh data the database holds: its claim, else where its order flow
    goes; None for a database no mesh has used (or whose tables are not there yet)."""
    if await conn.fetchval("SELECT to_regclass('mesh.owner') IS NOT NULL"):
        if (claimed := await conn.fetchval("SELECT namespace FROM mesh.owner")) is not None:
            return claimed
    if await conn.fetchval("SELECT to_regclass('orders.outbox') IS NOT NULL"):
        return await OrderRepository(conn).outbox_namespace()
    return None


async def database_owner(url: str) -> str | None:
    """owner() of the database at `url`; None when the server has no such database (or refuses
    us: what uses it says so)."""
    try:
        conn = await db.connect(url, "launcher", command_timeout=30)
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        return await owner(conn)
    finally:
        await conn.close()


async def other_namespace(url: str, namespace: str, *, claim: bool) -> str | None:
    """The other namespace the database at `url` belongs to, or None when it is `namespace`'s or
    no mesh's. With `claim` (the database migrated), one that is `namespace`'s or no mesh's is
    claimed for `namespace`: of two claiming at once, the first one's claim stays."""
    conn = await db.connect(url, "launcher", command_timeout=30)
    try:
        found = await owner(conn)
        if claim and found in (None, namespace):
            await conn.execute("INSERT INTO mesh.owner (namespace) VALUES ($1) ON CONFLICT DO NOTHING", namespace)
            found = await owner(conn)
    finally:
        await conn.close()
    return found if found not in (None, namespace) else None
