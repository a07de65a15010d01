"""List pagination (AIP-158): page_size 0 = default, above the maximum = the maximum,
negative = INVALID_ARGUMENT; page tokens are opaque and checked."""
from __future__ import annotations

import base64
import json
from typing import Any

from meshkit.errors import Violations

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(value: int, v: Violations, *, default: int = DEFAULT_PAGE_SIZE,
              maximum: int = MAX_PAGE_SIZE) -> int:
    if value < 0:
        v.add("page_size", "must not be negative")
        return default
    return default if value == 0 else min(value, maximum)


def encode_token(cursor: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(cursor, separators=(",", ":")).encode()).decode()


def decode_token(token: str, v: Violations, *, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """The cursor in `token`, or None for the first page; a token not made by us is a violation."""
    if not token:
        return None
    try:
        cursor = json.loads(base64.urlsafe_b64decode(token.encode()))
        if isinstance(cursor, dict) and set(cursor) == set(keys):
            return cursor
    except (ValueError, TypeError, UnicodeError):
        pass
    v.add("page_token", "is not a token returned by a previous call")
    return None
