"""The launcher's engine instance names (meshkit.launcher.mesh.engine_instance_id): the same at
every start of one matching_svc process of one mesh, so a process the supervisor starts again
after a crash takes its symbols' leases back at once instead of waiting a lease TTL for its
dead self's to expire (acceptance round 14: no matching for 9-12 s after a SIGKILL; the lease
takes back a key holding its own id: tests/integration/test_engine_lease.py); never the same
for two processes or two data folders."""
from __future__ import annotations

from pathlib import Path

from meshkit.launcher.mesh import engine_instance_id


def test_the_engine_is_named_the_same_at_every_start_and_only_there(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert engine_instance_id(a, "matching_svc") == engine_instance_id(a / ".." / "a", "matching_svc")
    names = {engine_instance_id(folder, name) for folder in (a, b) for name in ("matching_svc", "matching_svc-2")}
    assert len(names) == 4


def test_a_namespace_s_default_database_is_its_own() -> None:
    """Round 23: every `stockmesh up` given no database used `stockmesh`, whatever its namespace
    (tests/integration/test_launcher_database.py runs one)."""
    from meshkit.launcher.infra import DEFAULT_DATABASE_URL, default_database_url

    server = DEFAULT_DATABASE_URL.rpartition("/")[0]
    assert default_database_url("stockmesh") == DEFAULT_DATABASE_URL  # the default namespace keeps its data
    assert default_database_url("explore23") == f"{server}/stockmesh_explore23"
    assert default_database_url("team-a.dev") == f"{server}/stockmesh_team_a_dev"  # as its stream names are made
    assert default_database_url("x" * 100) == f"{server}/stockmesh_{'x' * 53}"  # PostgreSQL's 63 at most
