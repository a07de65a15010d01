"""Child processes of the launcher.

Every child:
- writes stdout and stderr to its own log file (`<data-dir>/logs/<name>.log`, appended, so a
  crashed run's last lines stay next to the restarted one's);
- runs in its own session, so a Ctrl-C in the terminal reaches only the launcher, which then
  stops the children in order;
- dies with the launcher even when the launcher is SIGKILLed: a tiny `python -I -S` shim sets
  PR_SET_PDEATHSIG and then execs the real program (same pid). The shim is used instead of
  `preexec_fn`, which is unsafe in a process that has threads (gRPC's);
- is restarted with exponential backoff when it exits on its own, each restart logged;
- with a liveness probe (`ChildSpec.alive`), is asked every few seconds, by a thread of the
  supervisor, whether it still answers; once it has answered, a child whose probes then fail
  for `hang_after` seconds, at least HUNG_PROBES of them in a row (stopped, deadlocked, its
  event loop blocked), is SIGKILLed and so restarted like one that exited (acceptance round 17:
  a ledger_svc stopped with SIGSTOP stayed down for as long as it stayed stopped). Only probes
  made and failed count: a launcher paused itself (Ctrl-Z, a VM pause) judges nobody.

`stop_all()` stops children in the reverse order of their start: signal, wait, SIGKILL.

Start children from one long-lived thread (the launcher's main thread): the kernel sends the
parent-death signal when the *thread* that forked the child exits, not only the process.
"""
from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

# Runs between fork and the real program: drop to another user if asked (PostgreSQL when we
# are root), then ask the kernel to send `sig` to this process when the launcher dies (after
# the user change, which would clear it), check the launcher did not die before we asked,
# and exec the real program under the same pid.
_PDEATHSIG_SHIM = (
    "import ctypes,os,sys\n"
    "sig,ppid,uid,gid=(int(a) for a in sys.argv[1:5])\n"
    "if uid>=0:\n"
    " os.setgroups([]);os.setgid(gid);os.setuid(uid)\n"
    "libc=ctypes.CDLL(None,use_errno=True)\n"
    "if libc.prctl(1,sig,0,0,0)!=0: sys.exit('prctl(PR_SET_PDEATHSIG) failed')\n"
    "if os.getppid()!=ppid: os._exit(1)\n"
    "os.execvpe(sys.argv[5],sys.argv[5:],os.environ)\n"
)


class ChildFailed(RuntimeError):
    """A child could not be started or did not become ready; carries its log tail."""

    def __init__(self, name: str, message: str, log_tail: str = "") -> None:
        self.name = name
        self.log_tail = log_tail
        super().__init__(message)



def process_started(pid: int) -> str | None:
    """Who `pid` is, beyond its number: the boot and the moment the process started
    ("<boot id>:<start time in clock ticks>"), so that a pid reused by another process, or
    by one after a reboot, is not taken for it. None where /proc cannot say (not Linux, or
    no such process)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        # Field 22 of stat, counted after the command name, which may hold spaces and parentheses.
        started = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    return f"{boot}:{started}"

@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    cwd: Path | None = None
    # What the launcher sends to stop it, and what the kernel sends if the launcher dies.
    stop_signal: int = signal.SIGTERM
    death_signal: int = signal.SIGTERM
    stop_timeout: float = 10.0
    user: str | None = None
    restart: bool = True
    # Whether the child answers now (a health check with a short timeout of its own); None:
    # never asked. Called from the supervisor's probe thread.
    alive: Callable[[], bool] | None = None
    # Run before every start, restarts included (e.g. the folders it needs made reachable again).
    prepare: Callable[[], None] | None = None


def tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64_000))
        data = fh.read().decode("utf-8", "replace")
    return "\n".join(data.splitlines()[-lines:])


class Child:
    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.started_at = 0.0
        self.restart_at: float | None = None
        self.backoff = 0.5
        self.stopping = False
        # The liveness probe's verdicts since the spawn (written by the probe thread): whether it
        # answered once, since when its probes fail (monotonic) and how many in a row, hung.
        self.answered = False
        self.failing_since: float | None = None
        self.failures = 0
        self.hung = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.spec.log_path, lines)

    def spawn(self) -> None:
        spec = self.spec
        if spec.prepare is not None:
            spec.prepare()
        env = {**os.environ, **spec.env}
        uid = gid = -1
        if spec.user is not None:
            entry = pwd.getpwnam(spec.user)
            uid, gid = entry.pw_uid, entry.pw_gid
            env.update(HOME=entry.pw_dir, USER=spec.user, LOGNAME=spec.user)
        argv = [sys.executable, "-I", "-S", "-c", _PDEATHSIG_SHIM,
                str(int(spec.death_signal)), str(os.getpid()), str(uid), str(gid), *spec.argv]
        if spec.log_path is not None:
            spec.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(spec.log_path, "ab")
            # One line in the services' own JSON log shape (meshkit.logs), so a log shipper
            # reading a service's log as JSON lines parses it too (round 12: a plain banner).
            banner = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "level": "INFO",
                      "logger": "meshkit.launcher", "message": "starting", "service": spec.name,
                      "argv": spec.argv}
            out.write((json.dumps(banner) + "\n").encode())
            out.flush()
        else:
            out = open(os.devnull, "ab")
        try:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise ChildFailed(spec.name, f"{spec.name}: cannot start {spec.argv[0]}: {exc}") from exc
        finally:
            out.close()
        self.started_at = time.monotonic()
        self.restart_at = None
        self.answered, self.failing_since, self.failures, self.hung = False, None, 0, False

    def signal(self, sig: int) -> None:
        if self.running():
            assert self.proc is not None
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass


class Supervisor:
    """Starts children, restarts the ones that exit, stops them all in reverse order.

    Not thread-safe: call it from one thread (the launcher's main thread)."""

    MAX_BACKOFF = 15.0
    HUNG_PROBES = 3  # failed probes in a row, at the least, before a child is judged hung

    def __init__(self, say: Callable[[str], None] = print, *, hang_after: float = 30.0,
                 probe_every: float = 2.0) -> None:
        self.children: list[Child] = []
        self.say = say
        self.on_restart: Callable[[Child], None] | None = None
        self.hang_after = hang_after  # 0: children with a probe are never judged hung
        self.probe_every = probe_every
        self._probing: threading.Thread | None = None
        self._quit = threading.Event()

    def start(self, spec: ChildSpec) -> Child:
        child = Child(spec)
        child.spawn()
        self.children.append(child)
        if spec.alive is not None and self.hang_after and self._probing is None:
            self._probing = threading.Thread(target=self._probe, name="liveness", daemon=True)
            self._probing.start()
        return child

    def _probe(self) -> None:
        """Ask each running child with a probe whether it answers, every `probe_every` s, and
        judge it hung once its probes have failed for `hang_after` s, HUNG_PROBES in a row at
        the least, after it had answered."""
        while not self._quit.wait(self.probe_every):
            for child in list(self.children):
                probe = child.spec.alive
                if probe is None or child.stopping or not child.running():
                    continue
                try:
                    ok = probe()
                except Exception:  # noqa: BLE001 - a probe that fails is a child that did not answer
                    ok = False
                now = time.monotonic()
                if ok:
                    child.answered, child.failing_since, child.failures = True, None, 0
                elif child.answered:
                    child.failures += 1
                    if child.failing_since is None:
                        child.failing_since = now
                    child.hung = child.failures >= self.HUNG_PROBES and now - child.failing_since >= self.hang_after

    def get(self, name: str) -> Child:
        for child in self.children:
            if child.spec.name == name:
                return child
        raise KeyError(name)

    def poll(self) -> None:
        """Notice exited children and restart them when their backoff has passed."""
        now = time.monotonic()
        for child in self.children:
            if child.stopping or child.proc is None:
                continue
            code = child.proc.poll()
            if code is None:
                if child.hung:
                    since = child.failing_since or now
                    self.say(f"! {child.spec.name} (pid {child.proc.pid}) has not answered its liveness check for "
                             f"{now - since:.0f}s ({child.failures} checks in a row; hung); killing it to restart it")
                    child.hung = False
                    child.signal(signal.SIGKILL)
                    continue
                # A child that stayed up for a while earns its quick restart back.
                if now - child.started_at > 30:
                    child.backoff = 0.5
                continue
            if not child.spec.restart:
                continue
            if child.restart_at is None:
                how = f"signal {-code}" if code < 0 else f"code {code}"
                child.restart_at = now + child.backoff
                self.say(f"! {child.spec.name} (pid {child.proc.pid}) exited with {how}; "
                         f"restarting in {child.backoff:.1f}s (log: {child.spec.log_path})")
                child.backoff = min(child.backoff * 2, self.MAX_BACKOFF)
            elif now >= child.restart_at:
                try:
                    child.spawn()
                except ChildFailed as exc:
                    child.restart_at = now + child.backoff
                    self.say(f"! {exc}")
                    continue
                child.restarts += 1
                self.say(f"  {child.spec.name} restarted (pid {child.pid}, restart #{child.restarts})")
                if self.on_restart is not None:
                    self.on_restart(child)

    def stop(self, child: Child) -> None:
        self.stop_group([child])

    def stop_group(self, group: list[Child]) -> None:
        """Signal every child of the group, wait up to their stop_timeout, then SIGKILL."""
        for child in group:
            child.stopping = True
            child.signal(child.spec.stop_signal)
        deadline = time.monotonic() + max((c.spec.stop_timeout for c in group), default=0)
        for child in group:
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"! {child.spec.name} did not stop within {child.spec.stop_timeout:.0f}s; killing it")
                child.signal(signal.SIGKILL)
                child.proc.wait()

    def stop_all(self, stages: list[list[str]] | None = None) -> None:
        """Stop everything. `stages` lists names stopped together, first stage first; children
        not named are stopped afterwards one by one in reverse start order."""
        self._quit.set()
        done: set[int] = set()
        for names in stages or []:
            group = [c for c in self.children if c.spec.name in names and id(c) not in done]
            if group:
                self.stop_group(group)
                done.update(id(c) for c in group)
        for child in reversed(self.children):
            if id(child) not in done:
                self.stop_group([child])
                done.add(id(child))
