"""Starting a whole mesh (the launcher, as `stockmesh up`) for end-to-end tests."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone

import asyncpg
import pytest

from meshkit.launcher.harness import MeshFailed, MeshProcess


def own_mesh(data_dir, db_prefix: str, namespace_prefix: str, *args: str,
             env: dict[str, str] | None = None) -> Iterator[MeshProcess]:
    """A test's own mesh (`stockmesh up --no-simulator *args`, with `env` besides the test run's
    environment), for a fixture to yield: stopped afterwards, and it must have stopped cleanly."""
    mesh = start_or_fail(MeshProcess(data_dir=data_dir, db_prefix=db_prefix, namespace_prefix=namespace_prefix,
                                     extra_args=["--no-simulator", *args], env=env))
    try:
        yield mesh
    finally:
        code = mesh.stop()
    assert code == 0, f"stockmesh up exited with {code}\n{mesh.diagnostics()}"


def start_or_fail(running: MeshProcess) -> MeshProcess:
    """Start the mesh; if it does not come up, stop what did and fail with the launcher's account."""
    try:
        running.start()
    except MeshFailed as exc:
        running.stop()
        pytest.fail(str(exc), pytrace=False)
    except BaseException:  # anything else (a bug, Ctrl-C): still drop its database and folder
        running.stop()
        raise
    return running


async def invariant_problems(mesh: MeshProcess) -> list[str]:
    """tests.support.invariants.check on the mesh's database, once both services have applied
    every execution so far: the invariants hold at every point of the execution journal both
    have applied, and in between an order can be seen ended before the ledger gave back its hold
    (each service applies each symbol's executions at its own pace)."""
    from meshkit import bus
    from tests.support import invariants
    from tests.support.wait import executions_drained

    nc = await bus.connect(mesh.state()["nats_url"], "invariants")
    try:
        for durable in ("ledger", "orders"):
            assert await executions_drained(nc.jetstream(), mesh.namespace, durable), \
                f"the {durable} execution consumers did not catch up"
    finally:
        await nc.close()
    pool = await asyncpg.create_pool(mesh.database_url, min_size=1, max_size=2)
    try:
        return await invariants.check(pool)
    finally:
        await pool.close()


async def assert_consistent_and_settled(mesh: MeshProcess) -> None:
    """The ledger's invariants hold, the audit trail verifies, and the day's settlement (New
    York's trading day, as the engine stamps fills) settles fills and finds no discrepancy."""
    from meshkit import calendar

    problems = await invariant_problems(mesh)
    assert not problems, "\n".join(problems)
    cli = [sys.executable, "-m", "meshkit.cli"]
    # Both find the mesh's database (and settle its NATS) from the data folder alone, as an
    # operator's runbook does (acceptance round 14: the database had to be looked up each time).
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")}
    verified = subprocess.run([*cli, "audit", "verify", "--data-dir", str(mesh.data_dir)],
                              capture_output=True, text=True, env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    today = calendar.trading_day(datetime.now(timezone.utc)).isoformat()
    settled = subprocess.run([*cli, "settle", "--date", today, "--data-dir", str(mesh.data_dir),
                              "--namespace", mesh.namespace,
                              "--before-close"],  # the simulated market is always open
                             capture_output=True, text=True, env=env)
    assert settled.returncode == 0 and re.search(r"discrepancies\s+none", settled.stdout), \
        settled.stdout[-3000:] + settled.stderr[-2000:]
    assert int(re.search(r"fills settled now\s+(\d+)", settled.stdout).group(1)) > 0, settled.stdout
