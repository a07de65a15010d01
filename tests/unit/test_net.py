"""The launcher's free ports: a port the caller chose is never handed out again."""
from __future__ import annotations

import socket

from meshkit.launcher import net


class _FakeSocket:
    """A socket whose bind to port 0 gets the next port of a fixed list (as the kernel may
    give a just-released port again)."""
    ports: list[int] = []

    def __init__(self, *args) -> None:
        self.port = 0

    def __enter__(self) -> "_FakeSocket":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def bind(self, address) -> None:
        self.port = _FakeSocket.ports.pop(0)

    def getsockname(self):
        return ("127.0.0.1", self.port)


def test_a_reserved_port_is_skipped_even_when_the_kernel_offers_it_again(monkeypatch):
    monkeypatch.setattr(socket, "socket", _FakeSocket)
    monkeypatch.setattr(net, "_taken", set())
    _FakeSocket.ports = [40001, 40001, 40002]
    net.reserve(40001)  # e.g. --port, found free by the caller a moment ago
    assert net.free_port() == 40002
