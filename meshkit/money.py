"""Exact decimals from the wire. Money and prices are never floats.

Only plain decimal notation is accepted ("187.25", "1000"): ASCII digits 0-9 only (Python's
Decimal would also take "٣" or "３" as 3), no exponents, no NaN or infinity, no whitespace,
no signs other than the ones a field allows, no absurd lengths.
"""
from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal

from meshkit.errors import Violations
from meshkit.symbols import CENT, tick_places

MAX_TEXT = 32
# [0-9], not \d: \d matches any Unicode decimal digit. Used with fullmatch (a `$` would let a
# trailing newline through, which Decimal() then strips).
_PLAIN = re.compile(r"(-)?([0-9]+)(?:\.([0-9]+))?")
# Largest cash amount a single request may carry (a 15-digit integer part).
MAX_CASH = Decimal("999999999999999.99")
MAX_PRICE = Decimal("99999999.9999")
CASH = "USD"  # the currency every cash amount is in


def parse_decimal(text: str, field: str, v: Violations, *, places: int,
                  maximum: Decimal, positive: bool = True, required: bool = True) -> Decimal | None:
    """Parse `text` into a Decimal with at most `places` fractional digits; zeros past them
    are taken ("187.25000" is 187.2500: the same number; round 15) and dropped.

    Records a field violation in `v` and returns None when the text is not acceptable.
    """
    if text == "":
        if required:
            v.add(field, "is required")
        return None
    if len(text) > MAX_TEXT:
        v.add(field, f"must be a decimal of at most {MAX_TEXT} characters")
        return None
    m = _PLAIN.fullmatch(text)
    if m is None:
        v.add(field, f"must be a plain decimal number such as \"100.25\", got {text[:MAX_TEXT]!r}")
        return None
    if m.group(1) and positive:
        v.add(field, "must be positive")
        return None
    if m.group(3) and len(m.group(3).rstrip("0")) > places:
        v.add(field, f"must have at most {places} decimal places")
        return None
    if m.group(3) and len(m.group(3)) > places:  # only zeros past the places: dropped from the text
        text = text[:len(text) - (len(m.group(3)) - places)]
    value = Decimal(text)
    if positive and value <= 0:
        v.add(field, "must be positive")
        return None
    if abs(value) > maximum:
        v.add(field, f"must not exceed {maximum}")
        return None
    return value


def parse_cash(text: str, field: str, v: Violations) -> Decimal | None:
    """A positive cash amount with at most two decimal places."""
    return parse_decimal(text, field, v, places=2, maximum=MAX_CASH)


def fmt(value: Decimal | int, places: int = 2) -> str:
    """Decimal to its wire string: no exponent, at least `places` fractional digits (two for
    money: "100.00", "187.25", "0.1234"), more only where the value has them; never rounded."""
    text = f"{Decimal(value).normalize():f}"
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(places, '0')}"


def fmt_price(value: Decimal | int) -> str:
    """A price to its wire string, the one rule of every service: at the precision of its tick
    (meshkit.symbols.tick_size): two decimals at 1.00 and above, four below ("187.25", "0.8000",
    "0.8936"). An average (a fill price, a VWAP) keeps the further digits it has."""
    value = Decimal(value)
    return fmt(value, tick_places(abs(value)))


AVERAGE_PLACES = Decimal("0.000001")


def average_price(notional: Decimal, quantity: int | Decimal) -> Decimal:
    """An average price, Σ(price × quantity) / Σ quantity (an order's average fill price, a
    candle's VWAP), rounded half-even to 6 decimal places; fmt_price shows the digits it has."""
    return (Decimal(notional) / Decimal(quantity)).quantize(AVERAGE_PLACES, rounding=ROUND_HALF_EVEN)


def amount_text(asset: str, value: Decimal | int) -> str:
    """An amount of an asset as the API shows it (in replies, messages and metadata alike):
    cash (CASH) as a money string ("1000.00", "187.25"), shares as a whole number ("100")."""
    return fmt(value) if asset == CASH else str(int(value))


def cents(value: Decimal | int) -> Decimal:
    """Money rounded half-up to the cent (a valuation: price × quantity, a P&L)."""
    return Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP) + 0  # + 0: never "-0.00"


def fmt_cents(value: Decimal | int) -> str:
    """Money to its wire string with exactly two fractional digits ("2.68", "-10.90")."""
    return f"{cents(value):f}"


def fmt_at_tick(value: Decimal, tick: Decimal) -> str:
    """A per-share figure (an average cost, a valuation's price) rounded half-up to `tick` and
    written at its precision ("188.14", "0.8936")."""
    return f"{value.quantize(tick, rounding=ROUND_HALF_UP) + 0:f}"
