"""The whole mesh, started by the launcher inside the test run, called through Envoy.

`mesh` (session scope) runs `stockmesh up` as a subprocess with:
- its own data folder (keys, logs, NATS JetStream store) under pytest's tmp folder;
- a free public port (`--port 0` would also do; we pick one so the endpoint is known early);
- a fresh database `stockmesh_e2e_<hex>` on the PostgreSQL at $DATABASE_URL (or the default
  local one), dropped at the end; where no PostgreSQL answers, the launcher starts its own
  inside the data folder and it goes away with it;
- its own namespace `e2e_<hex>` (NATS streams/subjects, Redis keys), and the pinned NATS
  started by the launcher (NATS_URL is removed from its environment),
so a run never sees another run's data nor a developer's running mesh.

Use it as:

    async def test_x(mesh):
        async with mesh.channel() as ch:
            stub = ledger_service_pb2_grpc.LedgerServiceStub(ch)
            await stub.GetPortfolio(req, metadata=mesh.auth("alice"))
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from meshkit.launcher import infra, keys
from meshkit.launcher.net import free_port

START_TIMEOUT = 240.0  # generous: a cold machine may have to initdb a local PostgreSQL
STOP_BOUND = 60.0


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying a bearer token."""
    return (("authorization", f"Bearer {token}"),)


@dataclass
class RunningMesh:
    endpoint: str
    data_dir: Path
    namespace: str
    database_url: str
    proc: subprocess.Popen[bytes]
    output: Path
    _tokens: dict[str, str] = field(default_factory=dict)

    def state(self) -> dict:
        return json.loads((self.data_dir / "mesh.json").read_text())

    def token(self, account: str, ttl: int = 3600) -> str:
        """A token for `account`, signed by this mesh's development key."""
        return keys.mint_token(self.data_dir, account, ttl=ttl)

    def auth(self, account: str) -> tuple[tuple[str, str], ...]:
        """Metadata for a call as `account` (tokens are cached per account)."""
        if account not in self._tokens:
            self._tokens[account] = self.token(account)
        return bearer(self._tokens[account])

    def channel(self) -> grpc.aio.Channel:
        """A grpc.aio channel to Envoy's public listener (use as `async with`)."""
        return grpc.aio.insecure_channel(self.endpoint)

    def log(self, name: str, lines: int = 60) -> str:
        from meshkit.launcher.supervisor import tail

        return tail(self.data_dir / "logs" / f"{name}.log", lines)

    def diagnostics(self) -> str:
        parts = [f"--- stockmesh up output ({self.output}):\n{_tail(self.output, 80)}"]
        logs = self.data_dir / "logs"
        if logs.exists():
            for path in sorted(logs.glob("*.log")):
                parts.append(f"--- {path.name}:\n{_tail(path, 30)}")
        return "\n".join(parts)


def _tail(path: Path, lines: int) -> str:
    from meshkit.launcher.supervisor import tail

    return tail(path, lines)


def _create_database(server_url: str) -> tuple[str, str] | None:
    """Create a fresh database on the server at `server_url`; None when nothing answers."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    if not infra.postgres_answers(server_url):
        return None
    name = f"stockmesh_e2e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(make_conninfo(server_url, dbname="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, _ = server_url.partition("?")[0].rpartition("/")
    return name, f"{base}/{name}"


def _drop_database(server_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    with psycopg.connect(make_conninfo(server_url, dbname="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _stop(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, wait up to STOP_BOUND; returns the exit code, or None when it had to be killed."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=STOP_BOUND)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    data_dir = tmp_path_factory.mktemp("mesh")
    namespace = f"e2e_{uuid.uuid4().hex[:10]}"
    server_url = os.environ.get("DATABASE_URL") or infra.DEFAULT_DATABASE_URL
    created = _create_database(server_url)
    # Nothing answers: hand the launcher the unreachable URL, it starts its own PostgreSQL.
    database_url = created[1] if created else server_url
    port = free_port("0.0.0.0")
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "STOCKMESH_DATA_DIR")}
    env.update(PYTHONUNBUFFERED="1", STOCKMESH_NAMESPACE=namespace)
    output = data_dir / "launcher.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshkit.cli", "up", "--data-dir", str(data_dir),
             "--port", str(port), "--database-url", database_url, "--namespace", namespace,
             "--no-simulator"],  # tests trade against each other; the simulator has its own test
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
    running = RunningMesh(endpoint=f"localhost:{port}", data_dir=data_dir, namespace=namespace,
                          database_url=database_url, proc=proc, output=output)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"stockmesh up exited with code {proc.returncode} before the mesh was "
                            f"ready\n{running.diagnostics()}", pytrace=False)
            try:
                state = running.state()
            except (FileNotFoundError, json.JSONDecodeError):
                state = {}
            if state.get("ready") and state.get("launcher_pid") == proc.pid:
                running.endpoint = state["endpoint"]
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the mesh was not ready after {START_TIMEOUT:.0f}s\n"
                            f"{running.diagnostics()}", pytrace=False)
            time.sleep(0.25)
        yield running
    finally:
        code = _stop(proc)
        if created:
            _drop_database(server_url, created[0])
    assert code is not None, f"stockmesh up did not stop within {STOP_BOUND:.0f}s of SIGTERM " \
                             f"and was killed\n{running.diagnostics()}"
    assert code == 0, f"stockmesh up exited with {code}\n{running.diagnostics()}"


@pytest.fixture(autouse=True)
async def ledger_invariants(request):
    """After every end-to-end test, the mesh's ledger and orders must still be consistent."""
    yield
    if "mesh" not in request.fixturenames:
        return
    import asyncpg

    from tests.support import invariants

    running = request.getfixturevalue("mesh")
    pool = await asyncpg.create_pool(running.database_url, min_size=1, max_size=2)
    try:
        problems = await invariants.check(pool)
    finally:
        await pool.close()
    assert not problems, "invariants broken after the test:\n" + "\n".join(problems)
