"""The ledger's use cases: plain async functions over a unit of work."""
from __future__ import annotations

from typing import Callable

from ledger_svc.adapters.repository import ActivityRow
from ledger_svc.domain import model
from ledger_svc.service_layer import commands
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork

UowFactory = Callable[[], LedgerUnitOfWork]


async def _move_cash(entry: model.JournalEntry, uow_factory: UowFactory) -> model.CashBalance:
    async with uow_factory() as uow:
        existing = await uow.ledger.claim_key(entry)
        if existing is not None:
            if not model.same_request(existing, entry.amount):
                raise model.DuplicateIdempotencyKey(
                    f"idempotency key {entry.idempotency_key!r} was used for a "
                    f"{entry.kind.lower()} of {existing}, not {entry.amount}",
                    metadata={"idempotencyKey": entry.idempotency_key or ""})
            return await uow.ledger.cash(entry.account_id)  # a retry: applied once already
        await uow.ledger.post(entry)
        cash = await uow.ledger.cash(entry.account_id)
        await uow.commit()
        return cash


async def deposit(cmd: commands.Deposit, uow_factory: UowFactory) -> model.CashBalance:
    return await _move_cash(model.deposit_entry(cmd.account_id, cmd.amount, cmd.idempotency_key), uow_factory)


async def withdraw(cmd: commands.Withdraw, uow_factory: UowFactory) -> model.CashBalance:
    return await _move_cash(model.withdrawal_entry(cmd.account_id, cmd.amount, cmd.idempotency_key), uow_factory)


async def cash_balance(account_id: str, uow_factory: UowFactory) -> model.CashBalance:
    async with uow_factory() as uow:
        return await uow.ledger.cash(account_id)


async def activities(account_id: str, after: int | None, limit: int,
                     uow_factory: UowFactory) -> list[ActivityRow]:
    async with uow_factory() as uow:
        return await uow.ledger.activities(account_id, after, limit)
