"""`stockmesh health ADDRESS`: a container's health check (deploy/), asking a process for its
gRPC health."""
from __future__ import annotations

import subprocess
import sys

import pytest

from meshkit.launcher.net import free_port

pytestmark = pytest.mark.e2e


def _health(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshkit.cli", "health", *args], capture_output=True, text=True,
                          timeout=30)


def test_health_says_serving_or_why_not(mesh) -> None:
    ports = mesh.state()["ports"]
    for service in ("ledger_svc", "order_svc", "quote_svc", "matching_svc", "order_relay"):  # the relay: its own port
        ok = _health(f"127.0.0.1:{ports[service]}")
        assert ok.returncode == 0 and ok.stdout.strip().endswith(": SERVING"), (service, ok.stdout, ok.stderr)
    unknown = _health(f"127.0.0.1:{ports['ledger_svc']}", "--service", "no.such.Service")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr, unknown.stderr
    assert "reports no health for service 'no.such.Service'" in unknown.stderr, unknown.stderr  # not an empty message
    nobody = _health(f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert nobody.returncode == 1 and "UNAVAILABLE" in nobody.stderr, nobody.stderr


def test_health_without_an_address_asks_every_process_of_the_mesh(mesh) -> None:
    """Round 15: a bare `stockmesh health` asked 127.0.0.1:50051, where `stockmesh up` never
    listens, while every other operator command found the mesh in --data-dir."""
    everyone = _health("--data-dir", str(mesh.data_dir))
    assert everyone.returncode == 0, everyone.stdout + everyone.stderr
    lines = dict(line.split(" ", 1) for line in everyone.stdout.strip().splitlines())
    assert {"ledger_svc", "order_svc", "quote_svc", "matching_svc", "order_relay"} <= set(lines), lines
    assert all(v.endswith(": SERVING") for v in lines.values()), lines
