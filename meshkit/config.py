"""Configuration, read once from the environment.

A missing required setting stops start-up with a message naming it.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path


class ConfigError(SystemExit):
    """Raised at start-up for a missing or malformed setting (exits with its message)."""


def _get(name: str, default: str | None = None, *, required: bool = False) -> str | None:
    value = os.environ.get(name, "").strip()
    if value:
        return value
    if required:
        raise ConfigError(f"missing required setting {name}: set the environment variable {name}")
    return default


def _int(name: str, default: int) -> int:
    raw = _get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"setting {name} must be a whole number, got {raw!r}") from None


_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def env_host(name: str, default: str) -> str:
    """An address to listen on: an IP address (v4 or v6, without brackets) or a host name."""
    raw = _get(name)
    if raw is None:
        return default
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        pass
    if _HOSTNAME.fullmatch(raw) and not raw.replace(".", "").isdigit():
        return raw
    raise ConfigError(f"setting {name} must be an IP address or a host name (no port), got {raw!r}")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    value = _int(name, default)
    if value < minimum:
        raise ConfigError(f"setting {name} must be at least {minimum}, got {value}")
    return value


def default_data_dir() -> Path:
    return Path(os.environ.get("STOCKMESH_DATA_DIR") or ".stockmesh").resolve()


@dataclass(frozen=True)
class Settings:
    service: str
    listen: str
    database_url: str | None
    nats_url: str | None
    redis_url: str | None
    # Prefix of every stream, subject family and key this deployment owns, so that
    # test runs and developers' meshes never see each other's data.
    namespace: str
    log_level: str
    data_dir: Path
    metrics_port: int
    grace_seconds: float
    # The address /metrics listens on: loopback by default (stockmesh up); a deployment whose
    # Prometheus scrapes the pod sets 0.0.0.0 (deploy/).
    metrics_host: str = "127.0.0.1"
    # Internal addresses of other services (host:port), where a service calls another.
    ledger_addr: str | None = None
    order_addr: str | None = None
    # host:port for the unary calls a service also serves behind Envoy's gRPC reverse bridge
    # (protobuf over HTTP/1.1, meshkit.bridge); unset: none.
    bridge_listen: str | None = None


def load(service: str, *, needs: tuple[str, ...] = ()) -> Settings:
    """Read the settings of `service`. `needs` names the URLs it cannot start without:
    any of "DATABASE_URL", "NATS_URL", "REDIS_URL"."""
    return Settings(
        service=service,
        listen=_get("GRPC_LISTEN", required=True) or "",
        database_url=_get("DATABASE_URL", required="DATABASE_URL" in needs),
        nats_url=_get("NATS_URL", required="NATS_URL" in needs),
        redis_url=_get("REDIS_URL", required="REDIS_URL" in needs),
        namespace=_get("STOCKMESH_NAMESPACE", "stockmesh") or "stockmesh",
        log_level=(_get("LOG_LEVEL", "INFO") or "INFO").upper(),
        data_dir=default_data_dir(),
        metrics_port=_int("METRICS_PORT", 0),
        grace_seconds=float(_int("SHUTDOWN_GRACE_SECONDS", 5)),
        metrics_host=env_host("METRICS_LISTEN", "127.0.0.1"),
        ledger_addr=_get("LEDGER_ADDR", required="LEDGER_ADDR" in needs),
        order_addr=_get("ORDER_ADDR", required="ORDER_ADDR" in needs),
        bridge_listen=_get("BRIDGE_LISTEN") or None,
    )


def env_flag(name: str, default: bool) -> bool:
    """A yes/no setting: 1/true/yes or 0/false/no (any case); unset or empty is `default`."""
    raw = (_get(name, "") or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("0", "false", "no"):
        return False
    raise ConfigError(f"setting {name} must be 1 or 0 (true/false, yes/no), got {raw!r}")


def env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    """One of `choices` (any case); unset or empty is `default`."""
    raw = (_get(name, "") or "").strip().lower()
    if not raw:
        return default
    if raw not in choices:
        raise ConfigError(f"setting {name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def env_decimal(name: str, default: str, *, minimum: str = "0") -> Decimal:
    raw = _get(name, default) or default
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ConfigError(f"setting {name} must be a decimal number, got {raw!r}") from None
    if not value.is_finite() or value < 0:
        raise ConfigError(f"setting {name} must be a finite, non-negative number, got {raw!r}")
    if value < Decimal(minimum):
        raise ConfigError(f"setting {name} must be at least {minimum}, got {raw!r}")
    return value
