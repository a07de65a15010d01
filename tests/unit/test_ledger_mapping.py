"""The ledger's domain -> proto mapping: how money, prices and quantities read on the wire."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

from ledger_svc.domain.model import CashBalance
from ledger_svc.entrypoints import mapping
from ledger_svc.service_layer.portfolio import PortfolioView, PositionView

D = Decimal
NOW = datetime(2024, 1, 2, 15, tzinfo=timezone.utc)


def test_portfolio_money_is_in_cents_and_per_share_prices_at_the_symbols_precision():
    view = PortfolioView(
        cash=CashBalance.of(D("1000.00"), D("0"), D("2.68")),
        positions=[
            # the average as shown is rounded once, to the tick; the value and P&L are cents
            PositionView("AAPL", 7, 7, 0, D("188.1404"), D("186.58"), D("1306.06"), D("-10.90")),
            PositionView("KO", 4, 4, 0, D("62.0000"), D("62.155"), D("248.62"), D("0.62")),  # a mid
            PositionView("SIRI", 3, 3, 0, D("0.8936"), D("0.89"), D("2.67"), D("-0.01")),
            PositionView("MSFT", 1, 1, 0, D("0"), None, None, None),  # transferred in at no cost, no quote
        ],
        equity=D("2559.35"))
    p = mapping.portfolio_to_proto("acct", view, [], NOW)
    assert (p.cash.total, p.cash.unsettled, p.equity) == ("1002.68", "2.68", "2559.35")
    assert [(x.symbol, x.average_cost, x.market_price, x.market_value, x.unrealized_pnl) for x in p.positions] == [
        ("AAPL", "188.14", "186.58", "1306.06", "-10.90"),
        ("KO", "62.00", "62.16", "248.62", "0.62"),
        ("SIRI", "0.8936", "0.8900", "2.67", "-0.01"),
        ("MSFT", "0.00", "", "", ""),
    ]


def test_money_is_formatted_with_exactly_two_places():
    from meshkit.money import fmt_cents
    assert [fmt_cents(v) for v in (D("7.80"), D(7), D("-10.90357144"), D("35.6367857"), D("-0.001"))] == [
        "7.80", "7.00", "-10.90", "35.64", "0.00"]


def test_a_statement_line_says_whether_it_is_settled_and_since_when():
    """A sale's proceeds are unsettled (no settled_at) until settlement pays them; every other
    line (a posting) is settled when it is made."""
    from datetime import timedelta

    from ledger_svc.adapters.repository import ActivityRow

    paid = NOW + timedelta(days=1)
    owed = ActivityRow(7, "PROCEEDS", "USD", D("2.68"), "3 SIRI at 0.8936", "SIRI:1", NOW)
    lines = [mapping.activity_to_proto(r) for r in (
        owed, owed._replace(settled_at=paid),
        ActivityRow(3, "DEPOSIT", "USD", D("10.00"), "Deposit", "fund", NOW, settled_at=NOW))]
    assert [(a.description, a.settled, a.HasField("settled_at") and a.settled_at.ToDatetime(timezone.utc))
            for a in lines] == [
        ("Sold 3 SIRI at 0.8936: proceeds, unsettled until settlement", False, False),
        ("Sold 3 SIRI at 0.8936: proceeds, settled", True, paid),
        ("Deposit", True, NOW)]


def test_an_average_cost_is_rounded_once_to_the_tick():
    """6567.22 paid for 105 shares is 62.544952… a share: 62.54. Rounded to four places first
    (62.5450) and then to the cent, it read 62.55 (acceptance round 10)."""
    from ledger_svc.domain.settlement import Position

    avg = Position(105, D("6567.22")).average_cost
    view = PortfolioView(cash=CashBalance.of(D("0"), D("0"), D("0")),
                         positions=[PositionView("KO", 105, 105, 0, avg, None, None, None),
                                    PositionView("SIRI", 3, 3, 0, Position(3, D("2.68")).average_cost, None, None, None)],
                         equity=D("0"))
    assert [x.average_cost for x in mapping.portfolio_to_proto("acct", view, [], NOW).positions] == ["62.54", "0.8933"]
