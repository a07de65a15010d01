"""Waiting for a condition, with a bound, instead of sleeping for a guess."""
from __future__ import annotations

import asyncio
import inspect


async def eventually(check, timeout: float = 15.0, delay: float = 0.05):
    """Call `check` (a function or a coroutine function) until it returns something true or
    `timeout` passes; returns its last result (so the caller's assert shows what it saw)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result or loop.time() > deadline:
            return result
        await asyncio.sleep(delay)


async def drained(js, stream: str, durable: str, timeout: float = 15.0) -> bool:
    """True once the durable consumer has taken and acknowledged everything in its stream: what
    it does with a message (or a repeat) has been done by then."""
    import nats.js.errors

    async def check() -> bool:
        try:
            info = await js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:  # not made yet
            return False
        return info.num_pending == 0 and info.num_ack_pending == 0
    return await eventually(check, timeout)


async def executions_drained(js, namespace: str, durable: str, symbols: list[str] | None = None,
                             timeout: float = 15.0) -> bool:
    """drained() for every symbol's consumer of a service's executions (meshkit.executions:
    `<durable>_<SYM>`), the listed symbols unless told."""
    from meshkit import bus, executions
    from meshkit.symbols import listed

    stream = bus.stream_name(namespace, "EXECUTIONS")
    for symbol in sorted(listed() if symbols is None else symbols):
        if not await drained(js, stream, executions.consumer_name(durable, symbol), timeout):
            return False
    return True
