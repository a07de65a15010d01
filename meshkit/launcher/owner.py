"""Which mesh namespace a database belongs to: `stockmesh up` never shares one between two.

A namespace keeps a mesh's NATS streams, subjects and Redis keys apart from another's, not its
rows: two meshes of different namespaces on one database would share the ledger (and the
simulator's accounts), the orders, the audit trail and the candles, and the orders one mesh
accepted would rest in the other's database where its engines never see them (round 23).

So `stockmesh up` claims its database for its namespace (mesh.owner, migration
meshkit/0004: one row, the first claim stays) once it has migrated it, and refuses, before it
migrates anything, a database claimed by another namespace, or, for a database used before the
claim existed, one whose order flow went to another namespace (its published outbox rows'), and
one whose order flow went to several (meshes of several namespaces shared it before: Mixed,
which only a claim made by hand settles). Two meshes starting at once on one new database both
claim it after migrating: the second is refused then.

A mesh given no database uses its namespace's (infra.default_database_url); one whose data is
in `stockmesh`, where meshes of every namespace went before, goes on with it (Mesh._database_url).
"""
from __future__ import annotations

import asyncio

import asyncpg

from meshkit import db
from order_svc.adapters.repository import OrderRepository


class Mixed(Exception):
    """The database holds the order flow of several namespaces and no claim: meshes of them all
    shared it before the claim existed (round 23: the default namespace's and an explorer's),
    so none of them can be told its own."""

    def __init__(self, namespaces: list[str]) -> None:
        super().__init__(", ".join(namespaces))
        self.namespaces = namespaces


async def owner(conn: asyncpg.Connection) -> str | None:
    """The namespace whose mesh data the database holds: its claim, else the one namespace its
    order flow went to (Mixed when several); None for a database no mesh has used (or whose
    tables are not there yet)."""
    if await conn.fetchval("SELECT to_regclass('mesh.owner') IS NOT NULL"):
        if (claimed := await conn.fetchval("SELECT namespace FROM mesh.owner")) is not None:
            return claimed
    if await conn.fetchval("SELECT to_regclass('orders.outbox') IS NOT NULL"):
        found = await OrderRepository(conn).published_namespaces()
        if len(found) > 1:
            raise Mixed(found)
        return found[0] if found else None
    return None


async def emptiness(url: str) -> str | None:
    """Why the database at `url` holds no mesh's data ("no StockMesh tables", or "no order and no
    mesh's claim"), or None when it holds some: a claim, a published order flow (owner), or an
    order. An order the engines heard of came from a database that kept it (orders are never
    deleted), so a mesh whose JetStream holds an order flow and whose database has none of this
    is on the wrong database (Mesh._refuse_a_history_without_its_database)."""
    conn = await db.connect(url, "launcher", command_timeout=30)
    try:
        if not await conn.fetchval("SELECT to_regclass('orders.orders') IS NOT NULL"):
            return "no StockMesh tables: a new database, or one dropped and created again"
        if await owner(conn) is not None or await conn.fetchval("SELECT EXISTS (SELECT 1 FROM orders.orders)"):
            return None
        return "no order, and no mesh's claim"
    finally:
        await conn.close()


async def database_owner(url: str, *, timeout: float = 30) -> str | None:
    """owner() of the database at `url`; None when the server has no such database, does not
    answer within `timeout`, or refuses us (a role without access to the schemas: what uses
    the database says so)."""
    try:
        conn = await db.connect(url, "launcher", command_timeout=timeout, timeout=timeout)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError):
        return None
    try:
        return await owner(conn)
    except (Mixed, asyncpg.PostgresError, asyncio.TimeoutError):
        return None  # nobody's alone (other_namespace refuses it to each), or not ours to read
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
