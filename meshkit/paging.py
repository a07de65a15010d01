"""List pagination (AIP-158): page_size 0 = default, above the maximum = the maximum,
negative = INVALID_ARGUMENT; page tokens are opaque and checked, and a token is bound to the
scope that made it (the account and the query's filters): another's is refused."""
from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

from meshkit.errors import Violations

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(value: int, v: Violations, *, default: int = DEFAULT_PAGE_SIZE,
              maximum: int = MAX_PAGE_SIZE) -> int:
    if value < 0:
        v.add("page_size", "must not be negative")
        return default
    return default if value == 0 else min(value, maximum)


def _scope_digest(scope: str) -> str:
    return hashlib.blake2b(scope.encode(), digest_size=9).hexdigest()


def encode_token(cursor: dict[str, Any], *, scope: str | None = None) -> str:
    """`cursor` as a token; with `scope` (e.g. the account and the filters), only a call of the
    same scope may use it. The scope is carried as a digest, so it says nothing of the account."""
    if scope is not None:
        cursor = {**cursor, "scope": _scope_digest(scope)}
    return base64.urlsafe_b64encode(json.dumps(cursor, separators=(",", ":")).encode()).decode()


def integer(value: Any) -> int:
    """A cursor's integer: a JSON integer within PostgreSQL's bigint."""
    if isinstance(value, bool) or not isinstance(value, int) or not -2 ** 63 <= value < 2 ** 63:
        raise ValueError(f"not a bigint: {value!r}")
    return value


def positive(value: Any) -> int:
    """A cursor's row id: an integer above zero (what a sequence gives)."""
    if integer(value) < 1:
        raise ValueError(f"not a row id: {value!r}")
    return value


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"not a string: {value!r}")
    return value


def identifier(value: Any) -> uuid.UUID:
    """A cursor's UUID, written as text (round 16: a number there was INTERNAL)."""
    return uuid.UUID(text(value))


def instant(value: Any) -> datetime:
    """A cursor's time written with isoformat(), with its offset; in UTC, so one whose offset
    takes it past the years a datetime holds is refused here (OverflowError), not by the
    driver's encoding in the query (round 24 explorer: 9999-12-31T23:59:59-00:01 was INTERNAL)."""
    at = datetime.fromisoformat(text(value))
    if at.tzinfo is None:
        raise ValueError(f"no offset: {value!r}")
    return at.astimezone(timezone.utc)


def epoch_seconds(value: Any) -> datetime:
    """A cursor's time as whole seconds since the epoch (UTC)."""
    return datetime.fromtimestamp(integer(value), tz=timezone.utc)


def decode_token(token: str, v: Violations, *, fields: dict[str, Callable[[Any], Any]],
                 scope: str | None = None, scope_hint: str = "",
                 scope_name: str = "account or query") -> dict[str, Any] | None:
    """The cursor in `token`, each field read by its parser (integer, text, instant,
    epoch_seconds, uuid.UUID, ...), or None for the first page. A token not made by us (not
    our encoding, other fields, or a value its parser refuses) is a violation, and so is one
    made for another `scope` than this call's (encode_token's; the message names it as
    another `scope_name`, and `scope_hint` says what must not change)."""
    if not token:
        return None
    expected = set(fields) | ({"scope"} if scope is not None else set())
    try:
        cursor = json.loads(base64.urlsafe_b64decode(token.encode()))
        if isinstance(cursor, dict) and set(cursor) == expected:
            if scope is not None and cursor["scope"] != _scope_digest(scope):
                v.add("page_token", f"was returned for another {scope_name}" + (f" ({scope_hint})" if scope_hint
                                                                                 else ""))
                return None
            return {key: parse(cursor[key]) for key, parse in fields.items()}
    except (ValueError, TypeError, UnicodeError, OverflowError, OSError):
        pass
    v.add("page_token", "is not a token returned by a previous call")
    return None
