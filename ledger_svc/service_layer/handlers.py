"""The ledger's use cases: plain async functions over a unit of work."""
from __future__ import annotations

from decimal import Decimal
from typing import Callable

from ledger_svc.adapters.repository import ActivityRow, HoldRow
from ledger_svc.domain import model
from ledger_svc.service_layer import commands
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit.errors import FieldViolation, InvalidArgument

UowFactory = Callable[[], LedgerUnitOfWork]


async def _apply(entry: model.JournalEntry, uow: LedgerUnitOfWork) -> bool:
    """Post a keyed entry once; False when its key was applied before (a retry)."""
    existing = await uow.ledger.claim_key(entry)
    if existing is not None:
        if not model.same_request(existing, entry):
            raise model.DuplicateIdempotencyKey(
                f"idempotency key {entry.idempotency_key!r} was used for a "
                f"{entry.kind.lower()} of {existing[0]} {existing[1]}, not {entry.amount} {entry.asset}",
                metadata={"idempotencyKey": entry.idempotency_key or ""})
        return False
    await uow.ledger.post(entry)
    return True


async def _move_cash(entry: model.JournalEntry, uow_factory: UowFactory) -> model.CashBalance:
    async with uow_factory() as uow:
        if not await _apply(entry, uow):
            return await uow.ledger.cash(entry.account_id)  # a retry: applied once already
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


async def book_balance(owner: str, asset: str, uow_factory: UowFactory) -> model.Balance:
    async with uow_factory() as uow:
        return await uow.ledger.balance(owner, asset)


async def credit_shares(cmd: commands.CreditShares, uow_factory: UowFactory) -> model.Balance:
    """Shares enter an account from outside, idempotent on the key. Internal: used by tests
    and the simulator's funding, never exposed as a public RPC."""
    if not model.is_symbol(cmd.symbol):
        raise InvalidArgument([FieldViolation("symbol", f"{cmd.symbol!r} is not a symbol")])
    model.check_amount(cmd.symbol, cmd.quantity, "quantity")
    entry = model.share_deposit_entry(cmd.account_id, cmd.symbol, cmd.quantity, cmd.idempotency_key)
    async with uow_factory() as uow:
        applied = await _apply(entry, uow)
        if applied:  # the position keeps the shares' cost basis (the transfer's price, else zero)
            position = await uow.settlement.position(cmd.account_id, cmd.symbol)
            position.buy(int(cmd.quantity), cmd.cost_price)
            await uow.settlement.save_position(cmd.account_id, cmd.symbol, position)
        balance = await uow.ledger.balance(cmd.account_id, cmd.symbol)
        if applied:
            await uow.commit()
        return balance


# --- holds ---------------------------------------------------------------------------------

def _same_hold(existing: model.Hold, asked: model.Hold) -> model.Hold:
    if not existing.same_request(asked):
        raise model.DuplicateHoldId(
            f"hold id {asked.hold_id!r} was used for a hold of {existing.amount} {existing.asset} "
            f"on {existing.account_id} for order {existing.order_id}",
            metadata={"holdId": asked.hold_id})
    return existing  # a retry: placed once already


async def place_hold(cmd: commands.PlaceHold, uow_factory: UowFactory) -> model.Hold:
    """Reserve `amount` of the account's book, idempotent on hold_id."""
    hold = model.Hold.new(cmd.hold_id, cmd.account_id, cmd.order_id, cmd.asset, cmd.amount)
    async with uow_factory() as uow:
        existing = await uow.ledger.get_hold(hold.hold_id)
        if existing is not None:
            return _same_hold(existing, hold)
        book_id = await uow.ledger.find_book_id(model.BookRef(hold.account_id, hold.asset))
        if book_id is None:  # the account never had any of this asset
            raise model.insufficient(hold.asset, Decimal(0), hold.amount)
        placed = await uow.ledger.insert_hold(hold, book_id)
        if placed is None:  # the same id, placed concurrently and committed while we waited
            existing = await uow.ledger.get_hold(hold.hold_id)
            assert existing is not None
            return _same_hold(existing, hold)
        await uow.ledger.reserve(book_id, hold.asset, hold.amount)
        await uow.ledger.audit_hold(placed, "HOLD_PLACED", {})
        await uow.commit()
        return placed


async def capture_in(uow: LedgerUnitOfWork, cmd: commands.CaptureHold) -> model.Hold:
    """Move part or all of what is still held to the counter-account, as one balanced journal
    entry, idempotent on (hold_id, capture_id), inside the caller's transaction."""
    counter = cmd.counter_account_id or model.CLEARING
    hold = await uow.ledger.get_hold(cmd.hold_id, for_update=True)
    if hold is None:
        raise model.HoldNotFound(f"no hold {cmd.hold_id!r}", metadata={"holdId": cmd.hold_id})
    if counter == hold.account_id:
        raise InvalidArgument([FieldViolation(
            "counter_account_id", "must not be the account the hold belongs to")])
    prior = await uow.ledger.get_capture(cmd.hold_id, cmd.capture_id)
    if prior is not None:
        if (prior.amount, prior.counter_account_id) != (cmd.amount, counter):
            raise model.DuplicateCaptureId(
                f"capture id {cmd.capture_id!r} of hold {cmd.hold_id!r} captured {prior.amount} "
                f"to {prior.counter_account_id}", metadata={"holdId": cmd.hold_id, "captureId": cmd.capture_id})
        return hold  # a retry: applied once already
    hold.capture(cmd.amount)
    entry = model.capture_entry(hold, cmd.amount, counter)
    await uow.ledger.add_entry(entry)
    await uow.ledger.post(entry, from_held=model.BookRef(hold.account_id, hold.asset),
                          audit_type="HOLD_CAPTURED", audit_extra={
                              "holdId": hold.hold_id, "captureId": cmd.capture_id, "orderId": hold.order_id,
                              "counterAccount": counter, "captured": hold.captured,
                              "status": hold.status.value})
    await uow.ledger.add_capture(hold.hold_id, cmd.capture_id, cmd.amount, entry.entry_id, counter)
    return await uow.ledger.save_hold(hold)


async def capture_hold(cmd: commands.CaptureHold, uow_factory: UowFactory) -> model.Hold:
    async with uow_factory() as uow:
        hold = await capture_in(uow, cmd)
        await uow.commit()
        return hold


async def release_in(uow: LedgerUnitOfWork, hold_id: str) -> model.Hold:
    """Release what is left and resolve the hold, inside the caller's transaction. A resolved
    hold is returned unchanged."""
    hold = await uow.ledger.get_hold(hold_id, for_update=True)
    if hold is None:
        raise model.HoldNotFound(f"no hold {hold_id!r}", metadata={"holdId": hold_id})
    left = hold.release()
    if left == 0:
        return hold
    await uow.ledger.unreserve(hold.hold_id, left)
    hold = await uow.ledger.save_hold(hold)
    await uow.ledger.audit_hold(hold, "HOLD_RELEASED", {"releasedNow": left})
    return hold


async def release_hold(cmd: commands.ReleaseHold, uow_factory: UowFactory) -> model.Hold:
    async with uow_factory() as uow:
        hold = await release_in(uow, cmd.hold_id)
        await uow.commit()
        return hold


async def get_hold(hold_id: str, uow_factory: UowFactory) -> model.Hold:
    async with uow_factory() as uow:
        hold = await uow.ledger.get_hold(hold_id)
    if hold is None:
        raise model.HoldNotFound(f"no hold {hold_id!r}", metadata={"holdId": hold_id})
    return hold


async def list_holds(account_id: str, before: int | None, limit: int, uow_factory: UowFactory) -> list[HoldRow]:
    async with uow_factory() as uow:
        return await uow.ledger.list_holds(account_id, before, limit)
