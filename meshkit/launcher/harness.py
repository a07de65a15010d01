"""Run a whole mesh (`stockmesh up`) as a child process, for end-to-end tests and benchmarks:

- its own data folder (keys, logs, the JetStream store), removed at the end unless kept;
- a fresh database `<prefix>_<hex>` on the PostgreSQL at $DATABASE_URL (default 127.0.0.1:5432,
  user postgres), dropped at the end; where no PostgreSQL answers, the launcher is handed that
  URL and starts its own inside the data folder;
- its own namespace `<namespace_prefix>_<hex>`, a free public port, and the pinned NATS started
  by the launcher (NATS_URL is removed from its environment);
- extra environment for the services (e.g. rate limits) and extra `up` arguments.

A benchmark calls unwind_on_signals() first, so SIGTERM unwinds to its stop() like Ctrl-C.

The launcher runs in a session of its own, so a terminal's Ctrl-C reaches only the caller, which
stops the mesh with SIGTERM (the launcher stops its children in order). Use as a context manager
or with start() / stop():

    with MeshProcess(extra_args=["--no-simulator"]) as mesh:
        ... mesh.endpoint, mesh.auth("alice"), mesh.state()["pids"] ...
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

from meshkit import migrate
from meshkit.launcher import infra, keys
from meshkit.launcher.net import free_port
from meshkit.launcher.supervisor import tail

START_TIMEOUT = 240.0  # generous: a cold machine may have to initdb a local PostgreSQL
STOP_BOUND = 60.0


class MeshFailed(RuntimeError):
    pass


def create_database(server_url: str, prefix: str) -> tuple[str, str] | None:
    """A fresh database on the server at `server_url`: (name, its URL); None when nothing answers."""
    if not infra.postgres_answers(server_url):
        return None
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    migrate.create_database(server_url, name)
    return name, migrate.database_url_on(server_url, name)  # the server URL's query kept (a socket's host)


def forget_keys(redis_url: str, namespace: str) -> int:
    """Delete a finished mesh's keys (`<namespace>:*`: its quote cache, its rate limits) from
    the Redis it used; 0 when that Redis does not answer (a local one went with the data
    folder). Test and benchmark meshes left 12 keys each behind for good (round 18)."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=500))
        return client.delete(*keys) if keys else 0
    except redis.RedisError:
        return 0
    finally:
        client.close()


def unwind_on_signals() -> None:
    """For a script that runs a mesh (a benchmark): SIGTERM and SIGHUP raise KeyboardInterrupt
    like Ctrl-C, and Ctrl-C works even when the shell started the script with SIGINT ignored (a
    background job), so its `finally: mesh.stop()` runs however it is stopped and leaves no
    database, Redis keys, data folder or processes behind (README of docs/benchmarks)."""
    def terminate(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)


class MeshProcess:
    def __init__(self, *, data_dir: Path | None = None, keep_data: bool = False, env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None, db_prefix: str = "stockmesh_run",
                 namespace_prefix: str = "run", say: Callable[[str], None] = print) -> None:
        self.extra_env = dict(env or {})
        self.extra_args = list(extra_args or [])
        self.keep_data = keep_data or data_dir is not None
        self.say = say
        self.db_prefix = db_prefix
        self.server_url = os.environ.get("DATABASE_URL") or infra.DEFAULT_DATABASE_URL
        self.redis_url = os.environ.get("REDIS_URL") or infra.DEFAULT_REDIS_URL
        self.namespace = f"{namespace_prefix}_{uuid.uuid4().hex[:10]}"
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="stockmesh-run-"))
        self.db_name: str | None = None
        self.database_url = ""
        self.endpoint = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = self.data_dir / "launcher.out"
        self._tokens: dict[str, str] = {}

    # ------------------------------------------------------------------ use

    def state(self) -> dict:
        return json.loads((self.data_dir / "mesh.json").read_text())

    def token(self, account: str, ttl: int = 3600) -> str:
        """A token for `account`, signed by this mesh's development key (cached per account)."""
        if account not in self._tokens:
            self._tokens[account] = keys.mint_token(self.data_dir, account, ttl=ttl)
        return self._tokens[account]

    def auth(self, account: str) -> tuple[tuple[str, str], ...]:
        """gRPC metadata for a call as `account`."""
        return (("authorization", f"Bearer {self.token(account)}"),)

    def channel(self):
        """A grpc.aio channel to Envoy's public listener (use as `async with`)."""
        import grpc

        return grpc.aio.insecure_channel(self.endpoint)

    def log(self, name: str, lines: int = 60) -> str:
        return tail(self.data_dir / "logs" / f"{name}.log", lines)

    def diagnostics(self) -> str:
        parts = [f"--- stockmesh up output ({self.output}):\n{tail(self.output, 80)}"]
        logs = self.data_dir / "logs"
        if logs.exists():
            for path in sorted(logs.glob("*.log")):
                parts.append(f"--- {path.name}:\n{tail(path, 30)}")
        return "\n".join(parts)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "MeshProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        created = create_database(self.server_url, self.db_prefix)
        if created:
            self.db_name, self.database_url = created
        else:  # nothing answers: the launcher starts its own PostgreSQL in the data folder
            self.database_url = self.server_url
        port = free_port("0.0.0.0")
        env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "STOCKMESH_DATA_DIR")}
        env.update(PYTHONUNBUFFERED="1", STOCKMESH_NAMESPACE=self.namespace)
        env.update(self.extra_env)
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meshkit.cli", "up", "--data-dir", str(self.data_dir),
                 "--port", str(port), "--database-url", self.database_url, "--namespace", self.namespace,
                 *self.extra_args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise MeshFailed(f"stockmesh up exited with code {self.proc.returncode} before the mesh "
                                 f"was ready\n{self.diagnostics()}")
            try:
                state = self.state()
            except (FileNotFoundError, json.JSONDecodeError):
                state = {}
            if state.get("ready") and state.get("launcher_pid") == self.proc.pid:
                self.endpoint = state["endpoint"]
                if not created and state.get("local_servers") and "postgres" in state["local_servers"]:
                    self.database_url = state["database_url"]  # the launcher's own (no password to redact)
                return self
            if time.monotonic() > deadline:
                raise MeshFailed(f"the mesh was not ready after {START_TIMEOUT:.0f}s\n{self.diagnostics()}")
            time.sleep(0.25)

    def stop(self) -> int | None:
        """SIGTERM the launcher (it stops its children in order), drop the database and the
        namespace's Redis keys, remove the data folder unless kept. Returns the launcher's exit
        code, or None when it had to be killed (and cleans up all the same: it returned before
        and left the database). Safe to call twice and after a failed start."""
        code: int | None = None
        killed = False
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave debris
        try:
            if self.proc is not None:
                if self.proc.poll() is None:
                    self.proc.send_signal(signal.SIGTERM)
                    try:
                        self.proc.wait(timeout=STOP_BOUND)
                    except subprocess.TimeoutExpired:
                        self.say(f"stockmesh up did not stop within {STOP_BOUND:.0f}s of SIGTERM: killing it")
                        os.killpg(self.proc.pid, signal.SIGKILL)
                        self.proc.wait()
                        killed = True
                code = None if killed else self.proc.returncode
            if self.proc is not None:
                forget_keys(self.redis_url, self.namespace)
            if self.db_name is not None:
                try:
                    migrate.drop_database(self.server_url, self.db_name)
                except Exception as exc:  # noqa: BLE001 - report, keep cleaning
                    self.say(f"could not drop database {self.db_name}: {exc!r}")
                else:
                    self.db_name = None
            if not self.keep_data:
                shutil.rmtree(self.data_dir, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, old)
        return code

    def __enter__(self) -> "MeshProcess":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
