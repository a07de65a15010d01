"""meshkit.streams.StreamLimit: an account's open streams of one kind, counted while they are
served and given back however they end."""
from __future__ import annotations

import pytest

from meshkit.errors import ResourceExhausted
from meshkit.streams import StreamLimit


def test_past_the_limit_the_account_is_refused_with_the_kind_and_the_limit_named() -> None:
    limit = StreamLimit("quote", 2, hint="one stream carries up to 100 symbols")
    with limit.open("alice"), limit.open("alice"):
        with pytest.raises(ResourceExhausted) as err:
            with limit.open("alice"):
                pass
        assert str(err.value) == ("this account has 2 quote streams open already; close one "
                                  "(one stream carries up to 100 symbols)")
        assert (err.value.reason, err.value.metadata, err.value.retry_after_seconds) == (
            "TOO_MANY_STREAMS", {"limit": "2"}, None)
        with limit.open("bob"), limit.open(None), limit.open(None), limit.open(None):
            pass  # another account, and callers without one (not counted)
    with limit.open("alice"), limit.open("alice"):  # both places given back
        pass


def test_a_stream_that_fails_gives_its_place_back() -> None:
    limit = StreamLimit("order-update", 1)
    with pytest.raises(RuntimeError):
        with limit.open("alice"):
            raise RuntimeError("the stream broke")
    with limit.open("alice"):
        pass
    assert not limit._open  # no account left behind with zero streams


def test_a_limit_below_one_is_a_mistake() -> None:
    with pytest.raises(ValueError):
        StreamLimit("quote", 0)
