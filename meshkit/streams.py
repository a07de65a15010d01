"""How many streams of one kind an account may hold open at once on one process.

A server-streaming call holds its task, its buffers and whatever it follows for as long as the
client keeps it open; one account's thousands would slow everyone's calls (acceptance round 13:
2,000 order-update streams of one account). Past the limit the next stream is refused at once
with RESOURCE_EXHAUSTED / `TOO_MANY_STREAMS` (ErrorInfo metadata `limit`) and no RetryInfo:
waiting does not help while the others stay open, the client has to close one.
"""
from __future__ import annotations

import collections
import contextlib
from typing import Iterator

from meshkit.errors import ResourceExhausted


class StreamLimit:
    """At most `limit` open streams of `kind` (e.g. "order-update", as the refusal names them) per
    account in this process; `hint`, when given, tells in the refusal why one is enough."""

    def __init__(self, kind: str, limit: int, *, hint: str = "") -> None:
        if limit < 1:
            raise ValueError(f"a stream limit must be at least 1, got {limit}")
        self.kind, self.limit, self.hint = kind, limit, hint
        self._open: collections.Counter[str] = collections.Counter()  # account -> its open streams

    @contextlib.contextmanager
    def open(self, account: str | None) -> Iterator[None]:
        """Hold one of the account's places while the block runs (the stream is served); raises
        ResourceExhausted when the account holds all of them already. None (a caller without an
        account, see meshkit.auth.caller_account) is not counted."""
        if account is None:
            yield
            return
        if self._open[account] >= self.limit:
            hint = f" ({self.hint})" if self.hint else ""
            raise ResourceExhausted(
                f"this account has {self.limit} {self.kind} streams open already; close one{hint}",
                retry_after_seconds=None,  # waiting does not help
                reason="TOO_MANY_STREAMS", metadata={"limit": str(self.limit)})
        self._open[account] += 1
        try:
            yield
        finally:
            self._open[account] -= 1
            if not self._open[account]:
                del self._open[account]
