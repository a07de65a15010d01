from decimal import Decimal

import pytest

from ledger_svc.domain import model


def test_deposit_entry_balances_against_the_external_counter_account():
    e = model.deposit_entry("alice", Decimal("100.25"), "k1")
    assert sum(p.amount for p in e.postings) == 0
    assert {p.book.owner: p.amount for p in e.postings} == {"alice": Decimal("100.25"), model.EXTERNAL: Decimal("-100.25")}
    assert e.kind == "DEPOSIT" and e.idempotency_key == "k1"


def test_withdrawal_entry_mirrors_a_deposit():
    e = model.withdrawal_entry("alice", Decimal("40"), "k2")
    assert {p.book.owner: p.amount for p in e.postings} == {"alice": Decimal("-40"), model.EXTERNAL: Decimal("40")}


def test_an_unbalanced_entry_cannot_be_built():
    with pytest.raises(model.UnbalancedEntry):
        model.JournalEntry(
            entry_id=model.uuid.uuid4(), kind="DEPOSIT", account_id="a", asset="USD", amount=Decimal(1),
            postings=(model.Posting(model.BookRef("a", "USD"), Decimal("1.00")),
                      model.Posting(model.BookRef(model.EXTERNAL, "USD"), Decimal("-0.99"))))


def test_an_entry_balances_per_asset_not_across_assets():
    with pytest.raises(model.UnbalancedEntry):
        model.JournalEntry(
            entry_id=model.uuid.uuid4(), kind="FILL", account_id="a", asset="USD", amount=Decimal(1),
            postings=(model.Posting(model.BookRef("a", "USD"), Decimal("5")),
                      model.Posting(model.BookRef("b", "AAPL"), Decimal("-5"))))


def test_a_single_posting_is_not_an_entry():
    with pytest.raises(model.UnbalancedEntry):
        model.JournalEntry(entry_id=model.uuid.uuid4(), kind="DEPOSIT", account_id="a", asset="USD",
                           amount=Decimal(1), postings=(model.Posting(model.BookRef("a", "USD"), Decimal(1)),))


def test_postings_refuse_floats_zero_and_non_finite_amounts():
    ref = model.BookRef("a", "USD")
    with pytest.raises(TypeError):
        model.Posting(ref, 0.1)  # type: ignore[arg-type]
    for bad in (Decimal(0), Decimal("NaN"), Decimal("Infinity")):
        with pytest.raises(ValueError):
            model.Posting(ref, bad)


def test_amounts_are_exact_decimals():
    b = model.Balance()
    for _ in range(10):
        b.apply(Decimal("0.10"))
    assert b.posted == Decimal("1.00")  # 0.1 * 10 is exactly 1 in Decimal, not 0.9999999999999999
    b.apply(Decimal("-1.00"))
    assert b.available == 0


def test_a_debit_beyond_available_is_refused_and_changes_nothing():
    b = model.Balance(posted=Decimal("100"), held=Decimal("30"))
    with pytest.raises(model.InsufficientFunds) as err:
        b.apply(Decimal("-70.01"))
    assert err.value.reason == "INSUFFICIENT_FUNDS" and err.value.code == "FAILED_PRECONDITION"
    assert (b.posted, b.held, b.available) == (Decimal("100"), Decimal("30"), Decimal("70"))
    b.apply(Decimal("-70"))
    assert b.available == 0


def test_cash_balance_view():
    c = model.CashBalance.of(Decimal("100"), Decimal("25"), unsettled=Decimal("10"))
    assert (c.total, c.available, c.held, c.settled, c.unsettled) == (
        Decimal("110"), Decimal("75"), Decimal("25"), Decimal("100"), Decimal("10"))


def test_a_retried_key_must_carry_the_same_amount():
    entry = model.deposit_entry("a", Decimal("10.00"), "k")
    assert model.same_request(model.KeyHolder("DEPOSIT", Decimal("10"), "USD"), entry)
    assert not model.same_request(model.KeyHolder("DEPOSIT", Decimal("10.01"), "USD"), entry)
    shares = model.share_deposit_entry("a", "MSFT", Decimal(10), "k")
    # the same key for another symbol
    assert not model.same_request(model.KeyHolder("SHARE_DEPOSIT", Decimal("10"), "AAPL"), shares)


def test_a_request_key_names_one_request_whatever_its_kind():
    withdrawal = model.withdrawal_entry("a", Decimal("10"), "k")
    assert not model.same_request(model.KeyHolder("DEPOSIT", Decimal("10"), "USD"), withdrawal)
    assert model.key_kinds("DEPOSIT") == model.key_kinds("WITHDRAWAL") == ("DEPOSIT", "WITHDRAWAL")
    # The ledger's own keys (settlement's 'settle:<fill>') stay out of a customer's reach.
    assert model.key_kinds("SETTLEMENT") == ("SETTLEMENT",)
    assert model.key_kinds("SHARE_DEPOSIT") == ("SHARE_DEPOSIT",)
