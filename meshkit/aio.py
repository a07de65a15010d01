"""asyncio helpers written once.

`asyncio.wait_for` on Python 3.11 can swallow a cancellation that arrives just as the awaited
thing finishes or times out (CPython gh-86296, fixed in 3.12): a loop that waits with it can
then go on after being cancelled, and whoever cancelled it waits for ever (seen: a test's
teardown hung on the outbox relay). `asyncio.timeout` does not have that flaw.
"""
from __future__ import annotations

import asyncio


async def wait_set(event: asyncio.Event, timeout: float) -> bool:
    """Wait at most `timeout` seconds for `event`; True if it is set."""
    try:
        async with asyncio.timeout(max(0.0, timeout)):
            await event.wait()
        return True
    except TimeoutError:
        return event.is_set()
