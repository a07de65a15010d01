"""The hold rules alone: partial captures, exceeding, release of the rest, resolution at most once."""
from decimal import Decimal

import pytest

from ledger_svc.domain import model
from ledger_svc.domain.model import Hold, HoldStatus
from meshkit.errors import InvalidArgument

D = Decimal


def cash_hold(amount: str = "100.00") -> Hold:
    return Hold.new("h1", "alice", "o1", "USD", D(amount))


def test_partial_captures_then_the_last_one_resolves_as_captured():
    h = cash_hold("100")
    h.capture(D("30.25"))
    h.capture(D("19.75"))
    assert (h.captured, h.remaining, h.status) == (D("50"), D("50"), HoldStatus.PENDING)
    h.capture(D("50"))
    assert (h.captured, h.released, h.remaining, h.status) == (D("100"), D(0), D(0), HoldStatus.CAPTURED)
    assert h.is_resolved


def test_capturing_more_than_remains_is_refused_and_changes_nothing():
    h = cash_hold("10")
    h.capture(D("4"))
    with pytest.raises(model.HoldExceeded) as err:
        h.capture(D("6.0001"))
    assert err.value.reason == "HOLD_EXCEEDED" and err.value.code == "FAILED_PRECONDITION"
    assert (err.value.metadata["remaining"], err.value.metadata["requested"]) == ("6.00", "6.0001")
    assert (h.captured, h.status) == (D("4"), HoldStatus.PENDING)


def test_release_gives_back_the_rest_after_partial_captures():
    h = cash_hold("10")
    h.capture(D("3.5"))
    assert h.release() == D("6.5")
    assert (h.captured, h.released, h.remaining, h.status) == (D("3.5"), D("6.5"), D(0), HoldStatus.RELEASED)


def test_a_hold_resolves_at_most_once():
    released = cash_hold("10")
    released.release()
    assert released.release() == 0  # releasing again changes nothing
    with pytest.raises(model.HoldResolved) as err:
        released.capture(D("1"))
    assert err.value.reason == "HOLD_RESOLVED"
    assert (released.captured, released.released, released.status) == (D(0), D("10"), HoldStatus.RELEASED)

    captured = cash_hold("10")
    captured.capture(D("10"))
    assert captured.release() == 0  # nothing left: still CAPTURED, nothing released
    assert (captured.released, captured.status) == (D(0), HoldStatus.CAPTURED)
    with pytest.raises(model.HoldResolved):
        captured.capture(D("0.0001"))


def test_amount_scales_cash_to_four_places_and_shares_whole():
    assert Hold.new("h", "a", "o", "USD", D("1234.5678")).amount == D("1234.5678")
    assert Hold.new("h", "a", "o", "AAPL", D("100")).amount == D("100")
    for asset, bad in [("USD", "0.00001"), ("USD", "0"), ("USD", "-1"), ("AAPL", "1.5"), ("AAPL", "NaN")]:
        with pytest.raises(InvalidArgument) as err:
            Hold.new("h", "a", "o", asset, D(bad))
        assert [v.field for v in err.value.violations] == ["amount"]
    h = Hold.new("h", "a", "o", "AAPL", D("10"))
    with pytest.raises(InvalidArgument):
        h.capture(D("0.5"))
    with pytest.raises(TypeError):
        Hold.new("h", "a", "o", "USD", 1.5)  # type: ignore[arg-type]


def test_a_retried_hold_must_carry_the_same_parameters():
    h = cash_hold("10")
    assert h.same_request(Hold.new("h1", "alice", "o1", "USD", D("10.0000")))
    assert not h.same_request(Hold.new("h1", "alice", "o1", "USD", D("10.01")))
    assert not h.same_request(Hold.new("h1", "alice", "o2", "USD", D("10")))
    assert not h.same_request(Hold.new("h1", "bob", "o1", "USD", D("10")))
    assert not h.same_request(Hold.new("h1", "alice", "o1", "AAPL", D("10")))


def test_balance_holds_capture_and_release_keep_available_right():
    b = model.Balance(posted=D("100"))
    b.hold("USD", D("60"))
    with pytest.raises(model.InsufficientFunds):
        b.hold("USD", D("40.01"))
    b.capture(D("25"))  # posted and held drop together: available unchanged
    assert (b.posted, b.held, b.available) == (D("75"), D("35"), D("40"))
    b.release(D("35"))
    assert (b.posted, b.held, b.available) == (D("75"), D(0), D("75"))
    shares = model.Balance(posted=D("5"))
    with pytest.raises(model.InsufficientShares) as err:
        shares.hold("AAPL", D("6"))
    assert err.value.reason == "INSUFFICIENT_SHARES" and err.value.code == "FAILED_PRECONDITION"


def test_a_capture_is_a_balanced_entry_to_the_counter_account():
    h = Hold.new("h", "alice", "o9", "AAPL", D("10"))
    e = model.capture_entry(h, D("4"), "bob")
    assert e.kind == "HOLD_CAPTURE" and e.reference == "o9"
    assert {(p.book.owner, p.book.asset): p.amount for p in e.postings} == {
        ("alice", "AAPL"): D("-4"), ("bob", "AAPL"): D("4")}


def test_symbols():
    assert model.is_symbol("AAPL") and model.is_symbol("BRK.B")
    assert not any(model.is_symbol(s) for s in ("USD", "aapl", "", "$external", "TOOLONGSYMBOL1"))
