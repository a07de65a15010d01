"""The audit trail: append-only in the database, and verification names every broken link of every chain."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from contextlib import asynccontextmanager
from decimal import Decimal

import asyncpg
import pytest

from ledger_svc.service_layer import commands, handlers
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit import audit

pytestmark = pytest.mark.integration


@asynccontextmanager
async def _scratch(pg_server_url: str):
    """A database of its own with every schema (the trail alone in it): its URL and a
    connection; dropped afterwards."""
    from tests.conftest import fresh_database

    async with fresh_database(pg_server_url) as url:
        conn = await asyncpg.connect(url)
        try:
            yield url, conn
        finally:
            await conn.close()


async def test_ledger_movements_are_chained_and_verify(checked_pool):
    acct = f"a-{uuid.uuid4().hex[:8]}"
    uow = lambda: LedgerUnitOfWork(checked_pool)  # noqa: E731
    await handlers.deposit(commands.Deposit(acct, Decimal("10"), "d1"), uow)
    await handlers.withdraw(commands.Withdraw(acct, Decimal("4"), "w1"), uow)
    async with checked_pool.acquire() as conn:
        rows = await conn.fetch("SELECT seq, event_type FROM audit.events WHERE stream = $1 ORDER BY seq",
                                f"ledger:{acct}")
        assert [(r["seq"], r["event_type"]) for r in rows] == [(1, "DEPOSIT"), (2, "WITHDRAWAL")]
        checked, broken = await audit.verify(conn)
        assert broken == [] and checked >= 2
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("UPDATE audit.events SET payload = '{}' WHERE stream = $1", f"ledger:{acct}")
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("DELETE FROM audit.events WHERE stream = $1", f"ledger:{acct}")


async def test_verify_names_the_first_link_tampered_with_by_hand(pg_server_url):
    async with _scratch(pg_server_url) as (url, conn):
        for i in range(5):
            await audit.append(conn, "order:x", "ORDER_NEW", {"i": i})
        await audit.append(conn, "order:y", "ORDER_NEW", {"i": 0})
        assert (await audit.verify(conn))[1] == []
        ok = subprocess.run([sys.executable, "-m", "meshkit.cli", "audit", "verify", "--database-url", url,
                             "--progress-every", "2"], capture_output=True, text=True)
        assert ok.returncode == 0 and "6 events verified" in ok.stdout
        # A long walk says how far it is, on stderr.
        assert [line.split(" events")[0].strip() for line in ok.stderr.splitlines()] == [
            "verified 2 of 6", "verified 4 of 6", "verified 6 of 6"], ok.stderr
        # An attacker with table rights bypasses the guard trigger and edits event 3.
        async with conn.transaction():
            await conn.execute("ALTER TABLE audit.events DISABLE TRIGGER events_append_only")
            await conn.execute("""UPDATE audit.events SET payload = '{"i":99}' WHERE stream = 'order:x' AND seq = 3""")
            await conn.execute("ALTER TABLE audit.events ENABLE TRIGGER events_append_only")
        _, broken = await audit.verify(conn)
        assert [(b.stream, b.seq) for b in broken] == [("order:x", 3)]
        bad = subprocess.run([sys.executable, "-m", "meshkit.cli", "audit", "verify", "--database-url", url],
                             capture_output=True, text=True)
        assert bad.returncode == 1 and "'order:x', event 3" in bad.stderr
        # Removing the last event of a chain is caught by the chain head.
        async with conn.transaction():
            await conn.execute("ALTER TABLE audit.events DISABLE TRIGGER events_append_only")
            await conn.execute("DELETE FROM audit.events WHERE stream = 'order:y'")
            await conn.execute("UPDATE audit.events SET payload = '{\"i\":2}' WHERE stream = 'order:x' AND seq = 3")
            await conn.execute("ALTER TABLE audit.events ENABLE TRIGGER events_append_only")
        _, broken = await audit.verify(conn)
        assert [b.stream for b in broken] == ["order:y"]


async def test_verify_names_every_broken_chain_not_only_the_first(pg_server_url):
    """Acceptance round 16: the walk stopped at the first broken link, so once one chain was
    broken (and a trail cannot be repaired), tampering with any chain after it in the walk's
    order was never reported. Each broken chain is now named at its first broken link, and the
    other chains are still checked."""
    async with _scratch(pg_server_url) as (url, conn):
        for stream in ("order:a", "order:b", "order:c"):
            for i in range(4):
                await audit.append(conn, stream, "ORDER_NEW", {"i": i})
        async with conn.transaction():
            await conn.execute("ALTER TABLE audit.events DISABLE TRIGGER events_append_only")
            await conn.execute("""UPDATE audit.events SET payload = '{"i":9}' WHERE stream = 'order:a' AND seq = 2""")
            await conn.execute("""UPDATE audit.events SET payload = '{"i":9}' WHERE stream = 'order:c' AND seq = 4""")
            await conn.execute("ALTER TABLE audit.events ENABLE TRIGGER events_append_only")
        checked, broken = await audit.verify(conn)
        assert [(b.stream, b.seq) for b in broken] == [("order:a", 2), ("order:c", 4)]
        assert checked == 1 + 4 + 3  # a's first event, all of b, c's first three
        bad = subprocess.run([sys.executable, "-m", "meshkit.cli", "audit", "verify", "--database-url", url],
                             capture_output=True, text=True)
        assert bad.returncode == 1 and "2 chains broken" in bad.stderr and "8 events intact" in bad.stderr
        assert "'order:a', event 2" in bad.stderr and "'order:c', event 4" in bad.stderr


async def test_verify_names_every_broken_link_of_a_chain_not_only_its_first(pg_server_url):
    """Round 22: past a chain's first broken link the walk stopped for that chain, so an
    investigation saw one altered event of several, and nothing of the events removed after it.
    Every broken link is now named; the links between them, consistent as stored, are not."""
    async with _scratch(pg_server_url) as (url, conn):
        for i in range(8):
            await audit.append(conn, "order:a", "ORDER_NEW", {"i": i})
        for i in range(3):
            await audit.append(conn, "order:b", "ORDER_NEW", {"i": i})
        async with conn.transaction():
            await conn.execute("ALTER TABLE audit.events DISABLE TRIGGER events_append_only")
            # event 2 altered; event 4 removed; event 6 altered and its hash recomputed, so that
            # the break shows at event 7, whose prev_hash no longer matches.
            await conn.execute("""UPDATE audit.events SET payload = '{"i":9}' WHERE stream = 'order:a' AND seq = 2""")
            await conn.execute("DELETE FROM audit.events WHERE stream = 'order:a' AND seq = 4")
            prev6 = bytes(await conn.fetchval("SELECT prev_hash FROM audit.events WHERE stream = 'order:a' AND seq = 6"))
            await conn.execute("""UPDATE audit.events SET payload = '{"i":9}', hash = $1
                                   WHERE stream = 'order:a' AND seq = 6""",
                               audit.link_hash(prev6, "order:a", 6, "ORDER_NEW", '{"i":9}'))
            await conn.execute("ALTER TABLE audit.events ENABLE TRIGGER events_append_only")
        checked, broken = await audit.verify(conn)
        assert [(b.stream, b.seq, b.problem.split(" ")[0]) for b in broken] == [
            ("order:a", 2, "content"), ("order:a", 4, "missing;"), ("order:a", 7, "prev_hash")]
        assert checked == 1 + 3  # a's event before its first break, and all of b
        bad = subprocess.run([sys.executable, "-m", "meshkit.cli", "audit", "verify", "--database-url", url],
                             capture_output=True, text=True)
        assert bad.returncode == 1 and "1 chain broken, 3 broken links in all; 4 events intact" in bad.stderr
        for seq in (2, 4, 7):
            assert f"'order:a', event {seq}:" in bad.stderr, bad.stderr


def test_verify_without_a_database_url_or_a_mesh_says_what_to_give(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run([sys.executable, "-m", "meshkit.cli", "audit", "verify", "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "no --database-url (or $DATABASE_URL) given, and no mesh runs in" in result.stderr


async def test_a_chains_head_only_moves_forward_by_an_append(pg_server_url):
    """Acceptance round 14 A: a chain's last event deleted (triggers off) and its head, which no
    trigger guarded, moved back onto the event before by a plain UPDATE: `audit verify` said
    intact, the fill's audit record gone. The head now takes no change but an append's."""
    async with _scratch(pg_server_url) as (url, conn):
        for i in range(3):
            await audit.append(conn, "order:x", "ORDER_NEW", {"i": i})
        async with conn.transaction():
            await conn.execute("ALTER TABLE audit.events DISABLE TRIGGER events_append_only")
            await conn.execute("DELETE FROM audit.events WHERE stream = 'order:x' AND seq = 3")
            await conn.execute("ALTER TABLE audit.events ENABLE TRIGGER events_append_only")
        for change in ("""UPDATE audit.heads h SET seq = e.seq, hash = e.hash, prev_hash = e.prev_hash
                            FROM audit.events e WHERE h.stream = 'order:x' AND e.stream = h.stream AND e.seq = 2""",
                       "DELETE FROM audit.heads WHERE stream = 'order:x'"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="only moves forward by an append"):
                await conn.execute(change)
        _, broken = await audit.verify(conn)
        assert [b.stream for b in broken] == ["order:x"]  # the missing tail still shows


async def test_a_chain_begun_by_the_four_statement_append_goes_on_under_the_upsert_with_racing_appends(pg_server_url):
    """Migration 0002 (audit.append as one upsert of the head and one insert): its rollback
    brings back the old function, a chain begun by it is carried on by the new one, and
    appends racing on one stream still queue on its head (gapless, verifiable)."""
    from pathlib import Path

    migrations = Path(__file__).resolve().parents[2] / "meshkit" / "migrations"
    async with _scratch(pg_server_url) as (url, conn):
        pool = await asyncpg.create_pool(url, min_size=8, max_size=8)
        try:
            await conn.execute((migrations / "0003.audit-heads-forward-only.rollback.sql").read_text())
            await conn.execute((migrations / "0002.audit-append-upsert.rollback.sql").read_text())
            for i in range(3):
                await audit.append(conn, "order:z", "ORDER_NEW", {"i": i})
            await conn.execute((migrations / "0002.audit-append-upsert.sql").read_text())
            await conn.execute((migrations / "0003.audit-heads-forward-only.sql").read_text())

            async def one(i: int) -> int:
                async with pool.acquire() as c, c.transaction():
                    return await audit.append(c, "order:z", "ORDER_FILL", {"i": i})

            seqs = await asyncio.gather(*(one(i) for i in range(3, 43)))
            assert sorted(seqs) == list(range(4, 44))
            assert await audit.append(conn, "order:new", "ORDER_NEW", {}) == 1  # a stream's first event
            checked, broken = await audit.verify(conn)
            assert broken == [] and checked == 44
        finally:
            await pool.close()
