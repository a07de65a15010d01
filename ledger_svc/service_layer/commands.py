from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class Deposit:
    account_id: str
    amount: Decimal
    idempotency_key: str


@dataclass(frozen=True)
class Withdraw:
    account_id: str
    amount: Decimal
    idempotency_key: str
