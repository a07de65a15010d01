"""meshkit.logs: what a client sends cannot make a service log errors."""
from __future__ import annotations

import json
import subprocess
import sys

# A service's gRPC server (with the services' logging) called over HTTP/2 by curl with an
# x-request-id that is not UTF-8: Python's gRPC clients refuse to send such a value.
_SERVED = r"""
import asyncio
import grpc
from grpc_health.v1 import health, health_pb2_grpc
from meshkit import logs

async def main():
    logs.setup("test")
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    curl = await asyncio.create_subprocess_exec(
        "curl", "-s", "-m", "20", "--http2-prior-knowledge", "-o", "/dev/null", "-D", "-", "-X", "POST",
        "-H", "content-type: application/grpc", "-H", "te: trailers", "-H", b"x-request-id: caf\xe9",
        "--data-binary", "@-", f"http://127.0.0.1:{port}/grpc.health.v1.Health/Check",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    print((await curl.communicate(b"\0\0\0\0\0"))[0].decode().lower(), flush=True)
    await server.stop(None)

asyncio.run(main())
"""


def test_a_header_value_that_is_not_utf8_is_one_warning_not_an_error_with_a_traceback():
    """Round 27: an x-request-id of `caf\\xe9` made gRPC log ERROR with a traceback in the
    service, at any client's will; the call is served on (the value read as Latin-1)."""
    done = subprocess.run([sys.executable, "-c", _SERVED], capture_output=True, text=True, timeout=60)
    assert "grpc-status: 0" in done.stdout, done.stdout + done.stderr  # served
    logged = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    said = [r for r in logged if "not UTF-8" in r["message"] or "Invalid encoding" in r["message"]]
    assert [(r["level"], r["logger"]) for r in said] == [("WARNING", "grpc._cython.cygrpc")], done.stderr
    assert "exc_info" not in said[0] and "caf\\xe9" in said[0]["message"], said
    assert not [r for r in logged if r["level"] in ("ERROR", "CRITICAL")], done.stderr
