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


@pytest.mark.parametrize("entry", [model.deposit_entry, model.withdrawal_entry,
                                   lambda a, q, k: model.share_deposit_entry(a, "AAPL", q, k)])
@pytest.mark.parametrize("book", [model.EXTERNAL, "$clearing"])
def test_the_brokerages_own_books_take_no_deposit_or_withdrawal(entry, book):
    """They skip the balance check, so a withdrawal from one would take money from nowhere
    (acceptance round 10: $clearing went to -999,900.00 with no discrepancy reported)."""
    with pytest.raises(model.FailedPrecondition) as refused:
        entry(book, Decimal("5"), "k")
    assert refused.value.reason == "SYSTEM_BOOK"


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
    assert err.value.message == "available cash 70.00 is less than 70.01"
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


# --- cents: a fill's cash and a position's cost (docs/architecture.md § Cents) -------------

def test_a_fills_cash_is_rounded_down_to_the_cent_and_is_the_same_on_both_legs():
    from ledger_svc.domain.settlement import fill_cash, legs
    from meshkit.executions import FILL, Execution
    assert fill_cash(Decimal("0.8936"), 3) == Decimal("2.68")  # 2.6808
    assert fill_cash(Decimal("0.8950"), 1) == Decimal("0.89")  # half a cent: down, never up
    assert fill_cash(Decimal("187.25"), 3) == Decimal("561.75")  # tick 0.01: exact
    assert fill_cash(Decimal("0.0040"), 2) == 0  # worth less than a cent: no cash moves
    f = legs(Execution("x", "SIRI", FILL, "ob", "buyer", side="BUY", counter_order_id="os",
                       counter_account_id="seller", price=Decimal("0.8936"), quantity=3))
    assert f.cash == Decimal("2.68") and f.cash == f.cash.quantize(model.CENT)


def test_captures_rounded_per_fill_never_exceed_a_hold_rounded_up_to_the_cent():
    """A limit buy of 2 at 0.8950 holds 1.79; filled 1 + 1 at its limit, half-up rounding would
    capture 0.90 + 0.90 = 1.80 and the second capture would be refused."""
    from ledger_svc.domain.settlement import fill_cash
    hold = model.Hold.new("h", "a", "o", model.CASH, (Decimal("0.8950") * 2).quantize(model.CENT, "ROUND_CEILING"))
    for _ in range(2):
        hold.capture(fill_cash(Decimal("0.8950"), 1))
    assert (hold.captured, hold.remaining) == (Decimal("1.78"), Decimal("0.01"))


def test_a_positions_cost_is_cents_and_its_average_is_their_exact_quotient():
    from ledger_svc.domain.settlement import Position
    p = Position()
    p.buy(3, Decimal("0.8936"))
    p.buy(4, Decimal("188.59"))
    assert (p.quantity, p.cost) == (7, Decimal("2.68") + Decimal("754.36"))
    assert p.average_cost == Decimal("757.04") / 7 == Decimal("108.1485714285714285714285714")
    p.sell(3)  # 757.04 × 3/7 = 324.445714… leaves, rounded half-up to the cent
    assert (p.quantity, p.cost) == (4, Decimal("432.59"))
    assert p.cost == p.cost.quantize(model.CENT) and p.average_cost == Decimal("108.1475")  # 432.59 / 4
    p.sell(4)
    assert (p.quantity, p.cost) == (0, 0)


def test_a_transferred_cash_hold_is_rounded_up_to_the_cent():
    t = model.HoldTransfer.new("old", "new", "new", "acct", model.CASH, Decimal("0.8936"), Decimal(0))
    assert t.need(3) == Decimal("2.69")  # 2.6808 up
    shares = model.HoldTransfer.new("old", "new", "new", "acct", "SIRI", Decimal(1), Decimal(0))
    assert shares.need(3) == 3


def test_refusals_show_cash_as_money_and_shares_whole():
    cash = model.insufficient(model.CASH, Decimal("1000.0000"), Decimal("5000"))
    assert cash.message == "available cash 1000.00 is less than 5000.00"
    assert cash.metadata == {"asset": "USD", "available": "1000.00", "requested": "5000.00"}
    shares = model.insufficient("AAPL", Decimal("3.0000"), Decimal(5))
    assert shares.message == "available AAPL shares 3 is less than 5" and shares.metadata["available"] == "3"
    h = model.Hold.new("h", "a", "o", model.CASH, Decimal("10.00"))
    with pytest.raises(model.HoldExceeded) as err:
        h.capture(Decimal("10.5"))
    assert err.value.metadata["remaining"] == "10.00" and err.value.metadata["requested"] == "10.50"


def test_statement_lines_read_from_the_accounts_side():
    line = model.statement_line
    assert line("FILL", "AAPL", Decimal(3), "3 AAPL at 187.25", False, None) == "Bought 3 AAPL at 187.25"
    assert line("FILL", "USD", Decimal("-561.75"), "3 AAPL at 187.25", True, None) == "Bought 3 AAPL at 187.25"
    assert line("FILL", "AAPL", Decimal(-3), "3 AAPL at 187.25", True, None) == "Sold 3 AAPL at 187.25"
    assert line("PROCEEDS", "USD", Decimal("561.75"), "3 AAPL at 187.25", True, False) == \
        "Sold 3 AAPL at 187.25: proceeds, unsettled until settlement"
    # A capture of another account's hold, recorded before trades had FILL entries: its text
    # named the other side's order, so only what moved is said.
    assert line("HOLD_CAPTURE", "AAPL", Decimal("3.0000"), "Capture of 3 AAPL held for order ace5d252", False,
                None) == "Received 3 AAPL in a trade"
    assert line("DEPOSIT", "USD", Decimal("10"), "Deposit", True, None) == "Deposit"


def test_a_trades_capture_names_the_fill_not_the_order():
    hold = model.Hold.new("os", "seller", "os", "AAPL", Decimal(3))
    e = model.capture_entry(hold, Decimal(3), "buyer", model.FillMemo("AAPL:1", "3 AAPL at 187.25"))
    assert (e.kind, e.reference, e.description) == ("FILL", "AAPL:1", "3 AAPL at 187.25")
    assert "os" not in e.description
