"""The symbol listing: every symbol is usable as a NATS subject token and in consumer names."""
from __future__ import annotations

import pytest

from meshkit import symbols


def test_the_default_listing_loads_a_dozen_symbols():
    listed = symbols._load(str(symbols.DEFAULT_FILE))
    assert len(listed) == 12 and listed["SIRI"].tick_size == symbols.SUB_PENNY


@pytest.mark.parametrize("bad", ["BRK.B", "A B", "X*", "Y>", "TOOLONGSYMBOLNAME1"])
def test_a_symbol_that_cannot_name_a_subject_is_refused_with_its_line(tmp_path, bad):
    f = tmp_path / "symbols.csv"
    f.write_text(f"symbol,name,reference_price\nAAPL,Apple Inc.,187.25\n{bad},Bad,10.00\n")
    with pytest.raises(ValueError, match=r"line 3: symbol"):
        symbols._load(str(f))


def test_a_class_share_with_a_dash_is_listed(tmp_path):
    f = tmp_path / "symbols.csv"
    f.write_text("symbol,name,reference_price\nBRK-B,Berkshire Hathaway Inc. Class B,412.00\n")
    assert list(symbols._load(str(f))) == ["BRK-B"]


def test_a_requests_symbol_is_checked_one_way_everywhere():
    from meshkit.errors import InvalidArgument

    assert symbols.known("AAPL") == "AAPL"
    for text, reason, description in [("", "INVALID_ARGUMENT", "is required"),
                                      ("NOPE", "UNKNOWN_SYMBOL", "unknown symbol 'NOPE'")]:
        with pytest.raises(InvalidArgument) as err:
            symbols.known(text)
        assert err.value.reason == reason
        assert [(v.field, v.description) for v in err.value.violations] == [("symbol", description)]
