"""The launcher's supervisor restarts a child that stops answering its liveness probe (a
process stopped or deadlocked does not exit, so it was never restarted: round 17)."""
from __future__ import annotations

import threading
import time

from meshkit.launcher.supervisor import ChildSpec, Supervisor


def _until(condition, sup: Supervisor, patience: float = 30.0) -> bool:
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        sup.poll()
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_a_child_that_stops_answering_is_killed_and_restarted() -> None:
    answering = threading.Event()
    answering.set()
    said: list[str] = []
    sup = Supervisor(say=said.append, hang_after=0.3, probe_every=0.02)
    child = sup.start(ChildSpec(name="svc", argv=["sleep", "300"], alive=answering.is_set))
    try:
        first = child.pid
        assert _until(lambda: child.answered, sup), "the probe never asked"
        answering.clear()  # hung: still running, answering nothing
        assert _until(lambda: child.restarts == 1 and child.running(), sup), said
        assert child.pid != first
        assert any(line.startswith(f"! svc (pid {first}) has not answered its liveness check") for line in said), said
        assert any(f"(pid {first}) exited with signal 9" in line for line in said), said
        # Answering again, it is judged afresh: a restarted child must answer before it can hang.
        assert not child.answered and child.failures == 0
        answering.set()
        assert _until(lambda: child.answered, sup)
        assert child.restarts == 1
    finally:
        sup.stop_all()


def test_a_probe_that_raises_is_a_child_that_did_not_answer() -> None:
    calls = []

    def probe() -> bool:
        calls.append(1)
        if len(calls) > 2:
            raise OSError("connection refused")
        return True

    said: list[str] = []
    sup = Supervisor(say=said.append, hang_after=0.3, probe_every=0.02)
    child = sup.start(ChildSpec(name="svc", argv=["sleep", "300"], alive=probe))
    try:
        first = child.pid
        assert _until(lambda: child.restarts == 1, sup), said
        assert child.pid != first
    finally:
        sup.stop_all()


def test_a_launcher_that_was_paused_judges_nobody_hung() -> None:
    """Round 17 review: a child counted as hung when the last "yes" was old, so a launcher
    stopped for longer than hang_after (Ctrl-Z then fg, a VM pause) killed every healthy
    service as soon as it ran again. Only probes made and failed count. Here the probe thread
    is held (as a stopped launcher's is) while the main loop goes on polling."""
    resume = threading.Event()
    held = threading.Event()
    calls: list[float] = []

    def probe() -> bool:
        calls.append(time.monotonic())
        if len(calls) == 3:  # the launcher stops here, mid-round
            held.set()
            resume.wait(30)
        return True

    said: list[str] = []
    sup = Supervisor(say=said.append, hang_after=0.2, probe_every=0.02)
    child = sup.start(ChildSpec(name="svc", argv=["sleep", "300"], alive=probe))
    try:
        assert _until(lambda: held.is_set(), sup)
        stalled = time.monotonic()
        assert _until(lambda: time.monotonic() - stalled > 1.0, sup)  # five times hang_after, polled all along
        resume.set()
        assert _until(lambda: len(calls) >= 6, sup)
        assert child.restarts == 0 and child.running(), said
        assert not any("has not answered" in line for line in said), said
    finally:
        resume.set()
        sup.stop_all()
