"""When a stream's token stops being accepted (meshkit.auth.token_ends_at): its `exp` plus the
clock skew Envoy allows; none for a payload without an `exp` a clock can reach (only a call on a
service's own port can carry one: Envoy refuses such tokens), rather than a stream that ends at
once or a crash."""
from __future__ import annotations

import base64

import pytest

from meshkit import auth


def _payload(exp_json: str) -> str:
    return base64.urlsafe_b64encode(f'{{"sub": "alice", "exp": {exp_json}}}'.encode()).decode().rstrip("=")


def _ends_at(payload: str) -> float | None:
    token = auth.caller_payload.set(payload)
    try:
        return auth.token_ends_at()
    finally:
        auth.caller_payload.reset(token)


def test_a_token_ends_when_envoy_stops_accepting_it():
    assert _ends_at(_payload("1800000000")) == 1800000000 + auth.CLOCK_SKEW_SECONDS
    assert _ends_at("") is None  # no token: a service's own port


@pytest.mark.parametrize("exp", ["1" + "0" * 400, "NaN", "Infinity", "true", '"1800000000"', "null", "[]"])
def test_an_exp_no_clock_reaches_is_none(exp):
    assert _ends_at(_payload(exp)) is None
