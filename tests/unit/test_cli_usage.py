"""Usage errors (exit 2, click's message) that the command line finds itself, before it starts
or sends anything (round 19)."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from meshkit.cli import main


@pytest.mark.parametrize("entry, words", [("foo=2", "no service 'foo' to run replicas of (one of order_svc, "),
                                          ("=2", "no service ''"), ("ledger_svc=0", "N at least 1")],
                         ids=["unknown", "unnamed", "zero"])
def test_up_refuses_a_bad_replicas_value_as_a_usage_error(tmp_path: Path, monkeypatch, entry, words):
    """An unknown service was the launcher's LaunchError, exit 1, where a bad N is exit 2."""
    from meshkit.launcher import mesh

    started = []
    monkeypatch.setattr(mesh, "up", lambda opts: started.append(opts) or 1)  # as the launcher refused it
    done = CliRunner().invoke(main, ["up", "--data-dir", str(tmp_path / "d"), "--replicas", "quote_svc=2",
                                     "--replicas", entry])
    assert done.exit_code == 2, done.output
    assert "Invalid value for --replicas: " in done.stderr and words in done.stderr, done.stderr
    assert not started and not (tmp_path / "d").exists()
    done = CliRunner().invoke(main, ["up", "--data-dir", str(tmp_path / "d"), "--replicas", " ledger_svc = 2"])
    assert done.exit_code == 1 and started[0].replicas == {"ledger_svc": 2}, done.output  # a good one goes on
