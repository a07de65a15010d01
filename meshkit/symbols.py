"""The listed symbols: a CSV in the repo (meshkit/symbols.csv, a dozen real tickers), or the
file named by STOCKMESH_SYMBOLS_FILE. Tick size follows the price: 0.01 at 1.00 and above,
0.0001 below."""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

from meshkit.errors import FieldViolation, InvalidArgument

DEFAULT_FILE = Path(__file__).with_name("symbols.csv")
CENT = Decimal("0.01")
SUB_PENNY = Decimal("0.0001")


def tick_size(price: Decimal) -> Decimal:
    return CENT if price >= 1 else SUB_PENNY


def tick_places(price: Decimal) -> int:
    """Decimal places of the tick at `price` (2 or 4): the precision prices are written in."""
    return -int(tick_size(price).as_tuple().exponent)


def price_tick(symbol: str, price: Decimal) -> Decimal:
    """The precision a per-share price of `symbol` (a quote, an average cost) is shown at: the
    symbol's tick (from its reference price; 0.01 for an unlisted one), or 0.0001 when the price
    itself is below a dollar."""
    s = listed().get(symbol)
    tick = s.tick_size if s is not None else CENT
    return min(tick, tick_size(price)) if price > 0 else tick


def on_tick(price: Decimal) -> bool:
    return price % tick_size(price) == 0


@dataclass(frozen=True)
class Symbol:
    symbol: str
    name: str
    reference_price: Decimal

    @property
    def tick_size(self) -> Decimal:
        return tick_size(self.reference_price)


# A symbol is one token of a NATS subject (`<ns>.orders.<SYMBOL>`) and part of consumer names
# (`engine_<SYMBOL>`): letters, digits, '_' and '-' only (a class share is e.g. BRK-B).
_SYMBOL = re.compile(r"[A-Z0-9][A-Z0-9_-]{0,15}")


@lru_cache(maxsize=4)
def _load(path: str) -> dict[str, Symbol]:
    out: dict[str, Symbol] = {}
    with open(path, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            s = Symbol(row["symbol"].strip().upper(), row["name"].strip(), Decimal(row["reference_price"]))
            if not _SYMBOL.fullmatch(s.symbol):
                raise ValueError(f"{path}, line {line}: symbol {s.symbol!r} must be 1-16 letters, digits, "
                                 "'_' or '-' (it names NATS subjects and consumers)")
            out[s.symbol] = s
    return out


def listed() -> dict[str, Symbol]:
    return _load(os.environ.get("STOCKMESH_SYMBOLS_FILE") or str(DEFAULT_FILE))


def well_formed(text: str) -> bool:
    """Whether `text` could be a symbol at all (a listed one, or one delisted since)."""
    return _SYMBOL.fullmatch(text) is not None


def known(text: str, field: str = "symbol") -> str:
    """A request's symbol, the one check of every service: missing is INVALID_ARGUMENT
    (`symbol: is required`), not listed is INVALID_ARGUMENT with reason UNKNOWN_SYMBOL."""
    if not text:
        raise InvalidArgument([FieldViolation(field, "is required")])
    if text not in listed():
        raise InvalidArgument([FieldViolation(field, f"unknown symbol {text[:16]!r}")], reason="UNKNOWN_SYMBOL")
    return text
