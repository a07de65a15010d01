"""`./dev --help`: the entry point's own lines, then every stockmesh command (README: "Run
`./dev --help` for the list"); `python -m meshkit.codegen --help` (usage, gen/ untouched)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_dev_help_lists_the_commands():
    env = {**os.environ, "STOCKMESH_VENV": sys.prefix}  # this interpreter's venv: nothing installed
    done = subprocess.run(["bash", str(REPO / "dev"), "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("StockMesh developer entry point.")
    assert "set -euo" not in done.stdout
    assert "Commands:" in done.stdout and "  token " in done.stdout and "  settle " in done.stdout


def test_codegen_help_writes_nothing():
    """`python -m meshkit.codegen --help` prints its usage and leaves gen/ alone (it used to
    ignore every argument but --check and regenerate)."""
    descriptor = REPO / "gen" / "stockmesh" / "descriptor.binpb"
    before = descriptor.stat().st_mtime_ns
    done = subprocess.run([sys.executable, "-m", "meshkit.codegen", "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--check" in done.stdout
    assert descriptor.stat().st_mtime_ns == before
    wrong = subprocess.run([sys.executable, "-m", "meshkit.codegen", "--chek"], capture_output=True, text=True,
                           cwd=REPO, timeout=60)
    assert wrong.returncode == 2 and "unrecognized arguments: --chek" in wrong.stderr
    assert descriptor.stat().st_mtime_ns == before
