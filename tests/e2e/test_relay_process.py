"""order_svc's outbox relay runs as a process of its own in `stockmesh up` (order_relay): orders
are acknowledged while it is down, wait in the outbox, and reach the engine once the launcher
has restarted it; a relay that hangs (stopped: it exits never) is restarted when it has not
answered its liveness check for the mesh's --hang-seconds (round 17)."""
from __future__ import annotations

import os
import signal

import asyncpg
import pytest

from tests.support.trades import filled_and_settled, place_crossing_pair
from tests.support.wait import eventually

pytestmark = pytest.mark.e2e
SYMBOL = "AMZN"  # no other end-to-end test trades it
HANG_SECONDS = 15  # the shared mesh's --hang-seconds (conftest)


async def unpublished(database_url: str, msg_ids: list[str]) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM orders.outbox WHERE msg_id = ANY($1) AND published_at IS NULL", msg_ids)
    finally:
        await conn.close()


async def test_orders_wait_in_the_outbox_while_the_relay_is_hung_and_trade_once_it_is_restarted(mesh):
    victim = mesh.state()["pids"]["order_relay"]
    os.kill(victim, signal.SIGSTOP)  # frozen: it keeps its election (advisory lock) but relays nothing
    try:
        async with mesh.channel() as ch:
            placed = await place_crossing_pair(mesh, ch, SYMBOL, "185.10", "rl")  # acknowledged all the same
            # The elected relay is frozen: both commands are still in the outbox.
            assert await unpublished(mesh.database_url, list(placed.values())) == 2

            # The launcher finds it answers nothing and kills it: its connection closes, the lock
            # is free, and the relay it restarts publishes them.
            restarted = await eventually(lambda: mesh.state()["pids"].get("order_relay") not in (None, victim),
                                         timeout=HANG_SECONDS + 45)
            assert restarted, mesh.diagnostics()
            with pytest.raises(ProcessLookupError):
                os.kill(victim, 0)  # killed, not merely replaced
            assert await eventually(lambda: filled_and_settled(mesh, ch, placed), timeout=30)
            assert await unpublished(mesh.database_url, list(placed.values())) == 0
    finally:
        try:
            os.kill(victim, signal.SIGCONT)  # if the test failed before the kill, do not leave it frozen
        except ProcessLookupError:
            pass
