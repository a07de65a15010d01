"""The caller's identity, taken from the JWT payload that Envoy verified.

Envoy's jwt_authn filter checks the bearer token's signature, issuer, audience and expiry,
then forwards the verified payload (base64url JSON) in `x-jwt-payload`, replacing anything
a client sent under that name. Services never see an unverified token: only Envoy listens
publicly, the services listen on 127.0.0.1.
"""
from __future__ import annotations

import base64
import contextvars
import functools
import json
import math
import unicodedata

from meshkit import logs, validate
from meshkit.errors import Unauthenticated

PAYLOAD_HEADER = "x-jwt-payload"
MAX_ACCOUNT = 128  # characters of an account id (a token's subject)
# The longest a token may live (exp - iat): Envoy refuses longer ones (max_lifetime), and
# `stockmesh token --ttl` mints none.
MAX_TOKEN_SECONDS = 30 * 86_400
# The verified payload of the call being served, forwarded as is when a service calls
# another on the caller's behalf (e.g. the ledger asking order_svc for open orders).
caller_payload: contextvars.ContextVar[str] = contextvars.ContextVar("caller_payload", default="")


# Why the verified token of the call being served names no usable account (its subject's
# problem), for the words of current_account's UNAUTHENTICATED; empty when there is none.
subject_refused: contextvars.ContextVar[str] = contextvars.ContextVar("subject_refused", default="")
# The ledger's own books (ledger_svc.domain.model.BookRef: `$clearing`, `$external`, ...) are
# named so; no caller may act as one.
SYSTEM_PREFIX = "$"


@functools.lru_cache(maxsize=65_536)  # a client sends the same token with every call
def account_from_payload(raw: str | None) -> tuple[str | None, str]:
    """(the account of a verified payload, or None; why its subject is none, or "")."""
    if not raw:
        return None, ""
    try:
        padded = raw + "=" * (-len(raw) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, TypeError):
        return None, "the verified token could not be read"
    sub = claims.get("sub") if isinstance(claims, dict) else None
    if not isinstance(sub, str):
        return None, "the token has no subject (sub) naming the account"
    problem = account_problem(sub)
    return (sub, "") if problem is None else (None, f"the token's subject is not an account id: it {problem}")


def account_problem(account: str) -> str | None:
    """Why `account` cannot be an account id (a token's subject), or None when it can: the one
    rule of the services and of the tools that mint tokens."""
    if account.startswith(SYSTEM_PREFIX):
        return f"must not begin with {SYSTEM_PREFIX!r} (the brokerage's own books are named so)"
    if (problem := validate.text_problem(account, MAX_ACCOUNT)) is not None:
        return problem
    # One spelling per account: "é" as one code point and as "e" plus a combining accent look
    # alike and would be two accounts, each with its own cash and positions. An issuer that
    # sends a subject in another form is refused, not silently folded into someone's account.
    if not unicodedata.is_normalized("NFC", account):
        return "must be in Unicode normal form NFC (one spelling per account)"
    return None


def current_account() -> str:
    """The account of the call being served; UNAUTHENTICATED when there is none."""
    acct = logs.account_id.get()
    if not acct:
        raise Unauthenticated(subject_refused.get() or "this call needs a verified bearer token (call through Envoy)")
    return acct


def caller_account() -> str | None:
    """The account of the call being served, or None for a call without a verified token at all:
    possible only on a service's own port (tests, tools on the host), never through Envoy, which
    requires one on every call. A token that names no usable account is UNAUTHENTICATED, as in
    current_account."""
    if not logs.account_id.get() and not subject_refused.get():
        return None
    return current_account()


# Envoy accepts a token until this long after its `exp` (clock_skew_seconds in
# envoy/envoy.yaml.tmpl): a stream opened with it ends then (token_ends_at).
CLOCK_SKEW_SECONDS = 30


@functools.lru_cache(maxsize=65_536)
def _expiry(raw: str) -> float | None:
    """The `exp` of a verified payload, or None when it has none a clock can reach (Envoy
    refuses a token without one, or past its max_lifetime; a call on a service's own port may
    carry anything)."""
    try:
        claims = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            return None
        exp = float(exp)
    except (ValueError, TypeError, OverflowError):
        return None
    return exp if math.isfinite(exp) else None


def token_ends_at() -> float | None:
    """When Envoy stops accepting the verified token of the call being served (its `exp` plus
    CLOCK_SKEW_SECONDS), in seconds since the epoch; None for a call without one (a service's
    own port). A token is checked when a call starts: a stream ends itself then (round 24
    explorer: one opened with a token that expired went on delivering order updates)."""
    raw = caller_payload.get()
    exp = _expiry(raw) if raw else None
    return None if exp is None else exp + CLOCK_SKEW_SECONDS


def token_expired(what: str, metadata: dict[str, str] | None = None) -> Unauthenticated:
    """The status a stream ends with once its token has expired: UNAUTHENTICATED TOKEN_EXPIRED."""
    return Unauthenticated(f"the token this stream was opened with has expired: open {what} again with a new "
                           "token", reason="TOKEN_EXPIRED", metadata=metadata)


def on_behalf_of_caller() -> tuple[tuple[str, str], ...]:
    """Metadata that carries the current caller's verified identity to another service."""
    payload = caller_payload.get()
    return ((PAYLOAD_HEADER, payload),) if payload else ()
