"""Wires matching_svc: the engine runners (background), MarketDataService.GetOrderBook,
EngineControlService (status, halts). Health is SERVING only while NATS answers.

Engine settings, read once from the environment:

* ``ENGINE_SYMBOLS``  comma-separated symbols this instance may own, or
* ``ENGINE_SHARD``    ``i/n``: the i-th of n slices of the listed symbols (sorted), else all;
* ``ENGINE_INSTANCE_ID`` the lease owner name (default host-pid-random);
* ``ENGINE_LEASE_TTL_SECONDS`` (10), ``ENGINE_SNAPSHOT_EVERY`` inputs (10000),
  ``ENGINE_SNAPSHOT_SECONDS`` (60: a symbol with any input since its last snapshot is
  snapshotted after that long), ``ENGINE_BATCH`` (500), ``ENGINE_DEDUPE_IDS`` (100000);
* ``ENGINE_TRIM_INPUTS`` (1): after each snapshot, purge the symbol's inputs older than the
  previous snapshot from the ORDERS stream (0 keeps them all).
"""
from __future__ import annotations

import os
import socket
import uuid

from matching_svc.entrypoints.grpc_server import EngineControlServicer, MarketDataServicer
from matching_svc.service_layer.runner import Engine, EngineConfig
from meshkit import bus, config, symbols
from meshkit.config import ConfigError
from meshkit.server import App
from stockmesh.matching.v1 import engine_control_service_pb2_grpc, market_data_service_pb2_grpc


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _number(name: str, default: float, kind=int):
    raw = _env(name)
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"setting {name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"setting {name} must be positive, got {raw!r}")
    return value


def owned_symbols(listed: list[str], symbols_env: str, shard_env: str) -> tuple[str, ...]:
    listed = sorted(listed)
    if symbols_env:
        chosen = [s.strip().upper() for s in symbols_env.split(",") if s.strip()]
        unknown = [s for s in chosen if s not in listed]
        if unknown:
            raise ConfigError(f"setting ENGINE_SYMBOLS names unlisted symbols: {', '.join(unknown)}")
        return tuple(dict.fromkeys(chosen))
    if shard_env:
        try:
            i, n = (int(x) for x in shard_env.split("/"))
            if not 0 <= i < n:
                raise ValueError
        except ValueError:
            raise ConfigError(f"setting ENGINE_SHARD must look like 0/2 (index/count), got {shard_env!r}") from None
        return tuple(s for k, s in enumerate(listed) if k % n == i)
    return tuple(listed)


def engine_config(namespace: str) -> EngineConfig:
    return EngineConfig(
        namespace=namespace,
        symbols=owned_symbols(list(symbols.listed()), _env("ENGINE_SYMBOLS"), _env("ENGINE_SHARD")),
        instance_id=_env("ENGINE_INSTANCE_ID") or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        lease_ttl=_number("ENGINE_LEASE_TTL_SECONDS", 10.0, float),
        snapshot_every=_number("ENGINE_SNAPSHOT_EVERY", 10_000),
        snapshot_seconds=_number("ENGINE_SNAPSHOT_SECONDS", 60.0, float),
        batch=_number("ENGINE_BATCH", 500),
        dedupe_capacity=_number("ENGINE_DEDUPE_IDS", 100_000),
        trim_inputs=config.env_flag("ENGINE_TRIM_INPUTS", True),
    )


def build(nc, cfg: EngineConfig) -> tuple[App, Engine]:
    js = nc.jetstream()
    engine = Engine(nc, cfg)
    app = App(
        name="matching_svc",
        servicers=[
            (market_data_service_pb2_grpc.add_MarketDataServiceServicer_to_server,
             MarketDataServicer(engine, js), "stockmesh.matching.v1.MarketDataService"),
            (engine_control_service_pb2_grpc.add_EngineControlServiceServicer_to_server,
             EngineControlServicer(engine), "stockmesh.matching.v1.EngineControlService"),
        ],
        checks=[bus.nats_check(nc)],
        background=[engine.run],
        on_close=[nc.drain],
    )
    return app, engine


async def bootstrap(settings: config.Settings) -> App:
    assert settings.nats_url
    cfg = engine_config(settings.namespace)
    nc = await bus.connect(settings.nats_url, "matching_svc")
    app, _ = build(nc, cfg)
    return app
