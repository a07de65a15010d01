"""Wake-ups for live order-update streams: one PostgreSQL LISTEN connection per process,
fanned out to every stream of the notified account; at shutdown, one last wake-up of every
stream, which then ends (order_svc.service_layer.lifecycle.stream_updates)."""
from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import asyncpg

from order_svc.adapters.repository import UPDATES_CHANNEL

log = logging.getLogger("order_svc.notifications")


class UpdateNotifier:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
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
        """Hold the LISTEN connection; if it drops, wake everyone (they re-read) and reconnect."""
        conn = await asyncpg.connect(self.database_url)
        try:
            await conn.add_listener(UPDATES_CHANNEL, self._notified)
            while not conn.is_closed():
                await asyncio.sleep(1)
        finally:
            self._wake_all()
            if not conn.is_closed():
                await conn.close()
