"""Small network helpers: free ports, "does anything answer here", waiting."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_taken: set[int] = set()
_taken_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, never the same one twice in this process."""
    with _taken_lock:
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
            if port not in _taken:
                _taken.add(port)
                return port
    raise RuntimeError("no free TCP port found")


def reserve(port: int) -> None:
    """Never hand out `port` (one chosen by the caller, e.g. --port) from free_port."""
    with _taken_lock:
        _taken.add(port)


def tcp_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Cancelled(Exception):
    """The launcher was asked to stop while it was waiting."""


def wait_for(check: Callable[[], T | None], *, timeout: float, what: str,
             interval: float = 0.2, abort: Callable[[], str | None] | None = None,
             stop: threading.Event | None = None) -> T:
    """Call `check` until it returns something truthy. `abort` returns a reason to give up
    early (e.g. the child exited); `stop` is the launcher's shutdown flag."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        if stop is not None and stop.is_set():
            raise Cancelled(what)
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - the last error explains the timeout
            last_error = exc
        if abort is not None:
            reason = abort()
            if reason:
                raise TimeoutError(f"{what}: {reason}")
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"{what}: not ready after {timeout:.0f}s{detail}")
        if stop is not None:
            stop.wait(interval)
        else:
            time.sleep(interval)
