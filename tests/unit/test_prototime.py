from datetime import datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, strategies as st

from meshkit.prototime import set_time, timestamp


@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31),
                    timezones=st.sampled_from([None, timezone.utc, timezone(timedelta(hours=-5, minutes=-30))])))
def test_the_same_as_protobufs_from_datetime(dt):
    expected = Timestamp()
    expected.FromDatetime(dt)
    assert timestamp(dt) == expected
    ts = Timestamp()
    set_time(ts, dt)
    assert (ts.seconds, ts.nanos) == (expected.seconds, expected.nanos)
