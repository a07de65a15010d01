"""The whole mesh, started by the launcher inside the test run, called through Envoy.

`mesh` (session scope) runs `stockmesh up` as a subprocess with:
- its own data folder (keys, logs, NATS JetStream store) under pytest's tmp folder;
- a free public port (`--port 0` would also do; we pick one so the endpoint is known early);
- a fresh database `stockmesh_e2e_<hex>` on the PostgreSQL at $DATABASE_URL (or the default
  local one), dropped at the end; where no PostgreSQL answers, the launcher starts its own
  inside the data folder and it goes away with it;
- two quote_svc replicas behind Envoy (`--quote-replicas 2`);
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

import subprocess
import sys
from collections.abc import Iterator

import pytest

from meshkit.launcher.harness import STOP_BOUND, MeshProcess
from tests.support.meshes import invariant_problems, start_or_fail


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshProcess]:
    running = start_or_fail(MeshProcess(
        data_dir=tmp_path_factory.mktemp("mesh"), db_prefix="stockmesh_e2e", namespace_prefix="e2e",
        # tests trade against each other; the simulator has its own test.
        # Two quote_svc replicas, as a real deployment runs (test_quote_replicas). A hung
        # service is restarted after 15 s (test_relay_process) instead of 30.
        extra_args=["--no-simulator", "--quote-replicas", "2", "--hang-seconds", "15"]))
    try:
        yield running
        verified = subprocess.run([sys.executable, "-m", "meshkit.cli", "audit", "verify",
                                   "--database-url", running.database_url], capture_output=True, text=True)
        assert verified.returncode == 0, f"audit trail broken after the e2e suite: {verified.stderr}"
    finally:
        code = running.stop()
    assert code is not None, f"stockmesh up did not stop within {STOP_BOUND:.0f}s of SIGTERM " \
                             f"and was killed\n{running.diagnostics()}"
    assert code == 0, f"stockmesh up exited with {code}\n{running.diagnostics()}"


@pytest.fixture(autouse=True)
async def ledger_invariants(request):
    """After every end-to-end test, the mesh's ledger and orders must still be consistent."""
    yield
    if "mesh" not in request.fixturenames:
        return
    problems = await invariant_problems(request.getfixturevalue("mesh"))
    assert not problems, "invariants broken after the test:\n" + "\n".join(problems)
