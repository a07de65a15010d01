"""The launcher's own PostgreSQL (started where none answers at DATABASE_URL) comes back after
it was killed, even when a folder above its data lost the permission its account needs to pass
through (round 20: a second pytest session reset /tmp/pytest-of-root to 0700, and every restart
of the chaos test's PostgreSQL failed with "Permission denied")."""
from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from meshkit.launcher import infra
from meshkit.launcher.supervisor import Supervisor

pytestmark = pytest.mark.integration


def test_a_local_postgres_killed_restarts_though_a_parent_folder_lost_its_x_bit(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    said: list[str] = []
    sup = Supervisor(say=said.append)
    try:
        url = infra.start_local_postgres(parent / "mesh", sup)
        child = next(c for c in sup.children if c.spec.name == "postgres")
        # As root the server runs as another account, which passes through `parent` by its o+x.
        parent.chmod(0o700)
        child.proc.kill()
        deadline = time.monotonic() + 60
        while True:
            sup.poll()
            if child.restarts and child.running():
                try:
                    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", connect_timeout=2) as conn:
                        assert conn.execute("SELECT 1").fetchone() == (1,)
                    break
                except psycopg.OperationalError:
                    pass
            assert time.monotonic() < deadline, f"not back after 60 s:\n{child.log_tail(10)}\n" + "\n".join(said)
            time.sleep(0.1)
    finally:
        sup.stop_all()
