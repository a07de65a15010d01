"""Failpoints for crash tests: STOCKMESH_FAILPOINTS names step boundaries (comma separated)
at which the process SIGKILLs itself, so tests can prove every step is recoverable."""
from __future__ import annotations

import os
import signal

_ACTIVE = frozenset(p for p in os.environ.get("STOCKMESH_FAILPOINTS", "").split(",") if p)


def hit(name: str) -> None:
    if name in _ACTIVE:
        os.kill(os.getpid(), signal.SIGKILL)
