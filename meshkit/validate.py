"""Field checks shared by every service's request parsing."""
from __future__ import annotations

import re

from meshkit.errors import Violations

KEY_LENGTH = 64  # characters of an idempotency key or a client order id
MAX_HALT_REASON = 200  # characters of an operator's reason for a halt (EngineControlService.HaltSymbol)
# An order id as order_svc makes them (a UUID, in either case), the hold of an order named after it.
ORDER_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def text_problem(text: str, maximum: int) -> str | None:
    """Why `text` cannot be an id a client chose (a client order id, an idempotency key, an
    account), or None when it can: 1 to `maximum` characters of any script, spaces inside
    allowed, no control characters and no white space around it."""
    if not text:
        return "must not be empty"
    if len(text) > maximum:
        return f"must be at most {maximum} characters"
    if text != text.strip():
        return "must not begin or end with white space" if text.strip() else "must not be blank"
    if not text.isprintable():
        return "must not contain control characters"
    return None


def key(text: str, field: str, v: Violations) -> str:
    """An idempotency key / client order id (the contract: "1-64 chars"): text_problem's rule."""
    if not text:
        v.add(field, f"is required (1-{KEY_LENGTH} characters)")
    elif (problem := text_problem(text, KEY_LENGTH)) is not None:
        v.add(field, problem)
    return text


def enum(value: int, field: str, enum_type, v: Violations) -> int:
    """A proto enum: _UNSPECIFIED (0) and numbers the contract does not define are violations."""
    if value == 0:
        v.add(field, "is required")
    elif value not in enum_type.values():
        v.add(field, f"unknown value {value}")
    return value
