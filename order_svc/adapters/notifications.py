"""Wake-ups for live order-update streams: one PostgreSQL LISTEN connection per process,
fanned out to every stream of the notified account; at shutdown, one last wake-up of every
stream, which then ends (order_svc.service_layer.lifecycle.stream_updates)."""
from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from meshkit import db
from order_svc.adapters.repository import UPDATES_CHANNEL

log = logging.getLogger("order_svc.notifications")


class UpdateNotifier:
    def __init__(self, database_url: str, check: float = 2.0) -> None:
        self.database_url, self.check = database_url, check
        self._waiting: dict[str, set[asyncio.Event]] = defaultdict(set)
        self.closing = False

    def close(self) -> None:
        """Shutdown has begun: wake every stream, so each ends at once with UNAVAILABLE and its
        client reopens it (on another replica, or on this one restarted) instead of waiting out
        the grace period; streams opened from now on end as soon as they start."""
        self.closing = True
        self._wake_all()

    def _wake_all(self) -> None:
        for events in list(self._waiting.values()):
            for e in events:
                e.set()

    def subscribe(self, account_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiting[account_id].add(event)
        return event

    def unsubscribe(self, account_id: str, event: asyncio.Event) -> None:
        events = self._waiting.get(account_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._waiting[account_id]

    def _notified(self, _conn, _pid, _channel, account_id: str) -> None:
        for event in self._waiting.get(account_id, ()):
            event.set()

    async def run(self) -> None:
        """Hold the LISTEN connection, checked every `check` seconds; if it drops or does not
        answer, wake everyone (they re-read) and raise, so the supervisor connects again (round
        18: a closed connection ended this loop normally, and it was never started again: after
        a PostgreSQL restart the streams saw updates only by their own polls; a half-open one
        never said it was closed)."""
        conn = await db.connect(self.database_url, "orders.updates-listener")
        try:
            await conn.add_listener(UPDATES_CHANNEL, self._notified)
            while True:
                await asyncio.sleep(self.check)
                await db.answers(conn, self.check, "the LISTEN connection of order updates")
        finally:
            self._wake_all()
            conn.terminate()  # at once: a connection that does not answer would not close
