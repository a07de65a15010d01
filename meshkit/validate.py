"""Field checks shared by every service's request parsing."""
from __future__ import annotations

import re

from meshkit.errors import Violations

_KEY = re.compile(r"^[\x21-\x7e]{1,64}$")  # printable ASCII, no spaces


def key(text: str, field: str, v: Violations) -> str:
    """An idempotency key / client order id: 1-64 printable ASCII characters."""
    if not text:
        v.add(field, "is required (1-64 printable ASCII characters)")
    elif not _KEY.match(text):
        v.add(field, "must be 1-64 printable ASCII characters without spaces")
    return text


def enum(value: int, field: str, enum_type, v: Violations) -> int:
    """A proto enum: _UNSPECIFIED (0) and numbers the contract does not define are violations."""
    if value == 0:
        v.add(field, "is required")
    elif value not in enum_type.values():
        v.add(field, f"unknown value {value}")
    return value
