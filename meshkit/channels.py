"""gRPC channels from one service straight to another (not through Envoy), written once.

gRPC reconnects a channel whose server went away with an exponential backoff that grows to
two minutes by default; a service restarted after a crash is back within seconds, and its
callers must find it again as soon: the backoff here starts at 0.1 s and stays under 1 s. A
call made meanwhile fails at once with UNAVAILABLE (never waits for the connection), which
the caller maps as it does any transport failure.
"""
from __future__ import annotations

import grpc

RECONNECT_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # A target of several replicas (the launcher's "ipv4:127.0.0.1:A,127.0.0.1:B", a headless
    # Kubernetes Service's DNS name): calls go round the ready ones, so a replica that died
    # or stopped takes no new call while it comes back. One address: the same as pick_first.
    ("grpc.lb_policy_name", "round_robin"),
)


def internal_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=list(RECONNECT_OPTIONS))
