"""Whether a mesh.json's mesh still runs: its launcher's pid alive, and the same process."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from meshkit.cli import _running
from meshkit.launcher.supervisor import process_started


def test_a_pid_given_to_another_process_since_is_not_the_mesh_running():
    me = {"ready": True, "launcher_pid": os.getpid(), "launcher_started": process_started(os.getpid())}
    assert me["launcher_started"] and _running(me)
    # The same pid, started at another moment (or another boot): a process that took the
    # number of a launcher that has gone (round 15 review: the pid alone was trusted).
    boot, ticks = me["launcher_started"].rsplit(":", 1)
    assert not _running({**me, "launcher_started": f"{boot}:{int(ticks) + 1}"})
    assert not _running({**me, "launcher_started": f"another-boot:{ticks}"})
    assert _running({"ready": True, "launcher_pid": os.getpid()})  # a mesh.json of before: the pid alone
    assert not _running({**me, "ready": False})


def test_a_launcher_that_has_exited_is_not_running():
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)
    assert process_started(pid) is None
    assert not _running({"ready": True, "launcher_pid": pid, "launcher_started": "x:1"})


def test_process_started_reads_a_command_name_with_spaces_and_parentheses(tmp_path):
    odd = tmp_path / "x) 1 2 (y"
    shutil.copy("/bin/sleep", odd)
    odd.chmod(0o755)
    child = subprocess.Popen([str(odd), "30"])
    try:
        for _ in range(500):  # until the child has exec'd (its name was the forking python's before)
            if ")" in Path(f"/proc/{child.pid}/comm").read_text():
                break
            time.sleep(0.01)
        assert ")" in Path(f"/proc/{child.pid}/comm").read_text()
        boot, ticks = process_started(child.pid).rsplit(":", 1)
        mine = int(process_started(os.getpid()).rsplit(":", 1)[1])
        now = float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK")
        assert boot == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        assert mine <= int(ticks) <= now + 1  # started after this test's process, and not in the future
    finally:
        child.kill()
        child.wait()
