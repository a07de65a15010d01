"""Exact decimals from the wire. Money and prices are never floats.

Only plain decimal notation is accepted ("187.25", "1000"): no exponents, no NaN or
infinity, no signs other than the ones a field allows, no absurd lengths.
"""
from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

from meshkit.errors import Violations

MAX_TEXT = 32
_PLAIN = re.compile(r"^(-)?(\d+)(?:\.(\d+))?$")
# Largest cash amount a single request may carry (a 15-digit integer part).
MAX_CASH = Decimal("999999999999999.99")
MAX_PRICE = Decimal("99999999.9999")
CENT = Decimal("0.01")


def parse_decimal(text: str, field: str, v: Violations, *, places: int,
                  maximum: Decimal, positive: bool = True, required: bool = True) -> Decimal | None:
    """Parse `text` into a Decimal with at most `places` fractional digits.

    Records a field violation in `v` and returns None when the text is not acceptable.
    """
    if text == "":
        if required:
            v.add(field, "is required")
        return None
    if len(text) > MAX_TEXT:
        v.add(field, f"must be a decimal of at most {MAX_TEXT} characters")
        return None
    m = _PLAIN.match(text)
    if not m:
        v.add(field, f"must be a plain decimal number such as \"100.25\", got {text[:MAX_TEXT]!r}")
        return None
    if m.group(1) and positive:
        v.add(field, "must be positive")
        return None
    if m.group(3) and len(m.group(3)) > places:
        v.add(field, f"must have at most {places} decimal places")
        return None
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


def fmt(value: Decimal | int) -> str:
    """Decimal to its wire string: no exponent, at least two fractional digits ("100.00",
    "187.25", "0.1234")."""
    text = f"{Decimal(value).normalize():f}"
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def amount_text(asset: str, value: Decimal | int) -> str:
    """An amount of an asset as the API shows it (in replies, messages and metadata alike):
    cash ("USD") as a money string ("1000.00", "187.25"), shares as a whole number ("100")."""
    return fmt(value) if asset == "USD" else str(int(value))


def cents(value: Decimal | int) -> Decimal:
    """Money rounded half-up to the cent (a valuation: price × quantity, a P&L)."""
    return Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP) + 0  # + 0: never "-0.00"


def fmt_cents(value: Decimal | int) -> str:
    """Money to its wire string with exactly two fractional digits ("2.68", "-10.90")."""
    return f"{cents(value):f}"


def fmt_price(value: Decimal, tick: Decimal) -> str:
    """A per-share price to its wire string at the precision of `tick` ("188.14", "0.8936")."""
    return f"{value.quantize(tick, rounding=ROUND_HALF_UP) + 0:f}"
