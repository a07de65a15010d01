"""datetime → google.protobuf.Timestamp, written once (and without protobuf's pure-Python
`FromDatetime`, which showed in order_svc's profile: several per order)."""
from __future__ import annotations

from datetime import datetime, timezone

from google.protobuf.timestamp_pb2 import Timestamp

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def set_time(ts: Timestamp, dt: datetime) -> None:
    """ts = dt, as `ts.FromDatetime(dt)` sets it (a naive datetime is taken as UTC)."""
    d = (dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)) - _EPOCH
    ts.seconds, ts.nanos = d.days * 86_400 + d.seconds, d.microseconds * 1000


def timestamp(dt: datetime) -> Timestamp:
    ts = Timestamp()
    set_time(ts, dt)
    return ts
