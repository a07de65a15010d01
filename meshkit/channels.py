"""gRPC channels from one service straight to another (not through Envoy), written once.

gRPC reconnects a channel whose server went away with an exponential backoff that grows to
two minutes by default; a service restarted after a crash is back within seconds, and its
callers must find it again as soon: the backoff here starts at 0.1 s and stays under 1 s. A
call made meanwhile fails at once with UNAVAILABLE (never waits for the connection), which
the caller maps as it does any transport failure.

A call that fails in transport (its replica killed mid-call, or reset) is sent again by the
channel, to the next ready replica, at most twice (gRPC's own retries, `SERVICE_CONFIG`): every
internal call is idempotent (holds, captures, releases and transfers by their ids; reads), and
with two ledger_svc replicas a SIGKILL of one failed the placements in flight on it, which the
other could have answered (round 26 explorer). A status the service answered itself is never
sent again (meshkit.interceptors sends it with `grpc-retry-pushback-ms: -1`): the ledger's
ACCOUNT_BUSY, say, reaches the customer at once, with its RetryInfo, as before. No retry
throttle: gRPC's counts the statuses a service answers itself as failures too, so a few
ACCOUNT_BUSY answers switched the retries off until some fifty calls had succeeded (review of
round 26). A service down for good costs each call to it its two retries, about 0.2 s, before
UNAVAILABLE (under 1 ms before): a call to a service with no ready replica fails at once, so
the retries add no load to speak of.
"""
from __future__ import annotations

import json

import grpc

SERVICE_CONFIG = json.dumps({
    "methodConfig": [{
        "name": [{}],  # every method of every service on the channel
        "retryPolicy": {
            "maxAttempts": 3,
            "initialBackoff": "0.05s",
            "maxBackoff": "0.2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
})

RECONNECT_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # A target of several replicas (the launcher's "ipv4:127.0.0.1:A,127.0.0.1:B", a headless
    # Kubernetes Service's DNS name): calls go round the ready ones, so a replica that died
    # or stopped takes no new call while it comes back. One address: the same as pick_first.
    ("grpc.lb_policy_name", "round_robin"),
)
# Only the services' channels to each other send a call again (SERVICE_CONFIG): the command
# line and the launcher take RECONNECT_OPTIONS alone. Through Envoy a command gets statuses
# without the pushback (Envoy's own, a bridged command's ACCOUNT_BUSY; Envoy strips it from
# the services' too), which its channel would have sent twice more at once whatever their
# RetryInfo said (review of round 26).
INTERNAL_OPTIONS = RECONNECT_OPTIONS + (
    ("grpc.enable_retries", 1),
    ("grpc.service_config", SERVICE_CONFIG),
)


def internal_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=list(INTERNAL_OPTIONS))
