"""Exceptions as they arrive in the code under test."""
from __future__ import annotations


def chained(outer: Exception, cause: BaseException) -> Exception:
    """`outer` raised from `cause` (its __cause__ and __context__ set, with a traceback)."""
    try:
        try:
            raise cause
        except BaseException as inner:
            raise outer from inner
    except Exception as exc:  # noqa: BLE001 - returned for the test
        return exc
