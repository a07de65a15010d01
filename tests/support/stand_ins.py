"""Stand-in services for the command line's tests: a synchronous gRPC server on a local port."""
from __future__ import annotations

import contextlib
from concurrent import futures
from typing import Iterator

import grpc


@contextlib.contextmanager
def serving(add, servicer, workers: int = 4) -> Iterator[str]:
    """Serve `servicer` (added by its generated `add_..._to_server`); yields its address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    add(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)
