"""A benchmark that runs a mesh cleans up however it is stopped: after the harness's
unwind_on_signals(), SIGTERM, SIGHUP and a Ctrl-C (even to a background job, started with SIGINT
ignored) unwind through the script's `finally: mesh.stop()` (docs/benchmarks/README.md's common
rule; bench_quotes.py stopped by SIGTERM left its database and data folder behind)."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import sys, time
    from meshkit.launcher.harness import unwind_on_signals
    unwind_on_signals()
    try:
        print("ready", flush=True)
        time.sleep(120)
    except KeyboardInterrupt as exc:
        print(f"interrupted {exc}", flush=True)
    finally:
        print("stopped the mesh", flush=True)
""")


def ignore_sigint() -> None:  # as a shell starts a background job
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_unwinds_to_the_scripts_cleanup(signum):
    child = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             preexec_fn=ignore_sigint)
    try:
        assert child.stdout.readline() == "ready\n"
        child.send_signal(signum)
        out, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert out.endswith("stopped the mesh\n"), out
    assert child.returncode == 0, (child.returncode, out)
