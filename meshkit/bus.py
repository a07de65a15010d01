"""NATS / JetStream connection and names. Every stream name and subject is prefixed by the
deployment's namespace, so test runs never see a developer's mesh."""
from __future__ import annotations

import logging

import nats
from nats.aio.client import Client

log = logging.getLogger("meshkit.bus")


async def connect(url: str, name: str) -> Client:
    async def on_error(exc: Exception) -> None:
        log.warning("nats error", extra={"error": repr(exc)})

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    return await nats.connect(url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                              error_cb=on_error, disconnected_cb=on_disconnect,
                              reconnected_cb=on_reconnect)


def nats_check(nc: Client):
    async def nats_server() -> None:
        if not nc.is_connected:
            raise ConnectionError("not connected to NATS")
        await nc.flush(timeout=1)
    return nats_server


def stream_name(namespace: str, base: str) -> str:
    """JetStream stream names allow no dots: e.g. ('e2e_ab12', 'ORDERS') -> 'e2e_ab12_ORDERS'."""
    return f"{namespace}_{base}".replace(".", "_").replace("-", "_")


def subject(namespace: str, *parts: str) -> str:
    """e.g. ('stockmesh', 'orders', 'AAPL') -> 'stockmesh.orders.AAPL'."""
    return ".".join((namespace, *parts))
