"""JSON logs, one line an event, carrying the request id of the call being served."""
from __future__ import annotations

import contextvars
import logging
import sys
from datetime import datetime, timezone

from pythonjsonlogger.json import JsonFormatter

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
account_id: contextvars.ContextVar[str] = contextvars.ContextVar("account_id", default="")


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        rid = request_id.get()
        if rid:
            record.request_id = rid
        acct = account_id.get()
        if acct:
            record.account_id = acct
        return True


class _Formatter(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's
        """ISO 8601 in UTC with its offset, to the millisecond ("2026-12-06T04:34:21.826+00:00"):
        logging's default ("2026-12-06 04:34:21,826") says neither the zone nor the format."""
        return datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")


class _ClientsBytes(logging.Filter):
    """gRPC logs a header value that is not UTF-8 (an `x-request-id` of `caf\\xe9`, say) at ERROR
    with a traceback, and serves the call on (the value read as Latin-1): a client could fill
    a service's log with errors at will (round 27). It is what a client sent, not a fault of
    the service: one line at WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith("Invalid encoding on"):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = "a client sent a header value that is not UTF-8 (read as Latin-1): %s"
            record.exc_info = record.exc_text = None
        return True


def outside_any_call(log_call, *args, **kwargs) -> None:
    """Log from code that runs in whatever call happens to be current (a garbage collector's
    callback), without that call's request and account ids."""
    contextvars.Context().run(log_call, *args, **kwargs)


def setup(service: str, level: str = "INFO") -> None:
    """Send every log record to stderr as JSON (timestamp, level, logger, service, request id)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _Formatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    handler.addFilter(_ContextFilter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    cygrpc = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(f, _ClientsBytes) for f in cygrpc.filters):
        cygrpc.addFilter(_ClientsBytes())
    root.setLevel(level)
