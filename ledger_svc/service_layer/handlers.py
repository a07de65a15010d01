"""The ledger's use cases: plain async functions over a unit of work."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from decimal import Decimal
from typing import AsyncIterator, Awaitable, Callable, Iterable, TypeVar

import asyncpg

from ledger_svc.adapters.repository import ActivityRow, HoldRow
from ledger_svc.domain import model
from ledger_svc.service_layer import commands
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit.errors import DomainError, FieldViolation, InvalidArgument, Unavailable
from meshkit.status import OUTAGE_RETRY_SECONDS

UowFactory = Callable[[], LedgerUnitOfWork]
# Waits (bounded) until the ledger's execution consumers have applied what the engine published
# so far (meshkit.executions.wait_applied, bound by bootstrap).
ExecutionsApplied = Callable[[], Awaitable[bool]]
log = logging.getLogger("ledger_svc.holds")
T = TypeVar("T")
# How long a batch of holds waits for one account's lock (held by another ledger transaction:
# a fill, a deposit, the other batch in flight take milliseconds) before that account's holds
# are answered ACCOUNT_BUSY and the others placed; and for how long such an account is asked
# after, before each batch it is in, whether it is still held (BusyAccounts). Every other call
# a caller waits on that takes accounts (PlaceHold, CaptureHold, ReleaseHold, TransferHold,
# CancelHoldTransfer, Deposit, Withdraw) waits as long at most for any lock, then is answered
# ACCOUNT_BUSY too (`bounded`): before, those waited out the pool's 30 s command timeout, and
# order_svc's ReplaceOrder its 5 s deadline, ending in a bare UNAVAILABLE. The ledger's
# LEDGER_LOCK_WAIT_SECONDS (bootstrap.lock_wait) sets it.
HOLD_LOCK_WAIT = 1.0
HOLD_BUSY_SECONDS = 60.0
# How long an account found held when a batch timed out is waited for once more, alone: enough
# for a fill's or a release's transaction (milliseconds) that the timed-out batch itself kept
# waiting, not another full wait for every placement in the reply (round 19 lock re-test: 2 s).
HELD_RETRY_WAIT = 0.1


async def post_once(entry: model.JournalEntry, uow: LedgerUnitOfWork) -> bool:
    """Post a keyed entry once; False when its key was applied before (a retry). The caller
    holds the lock of the entry's account (lock_accounts), which claim_key relies on. Also
    settlement's, for the proceeds it settles."""
    existing = await uow.ledger.claim_key(entry)
    if existing is not None:
        if not model.same_request(existing, entry):
            raise model.DuplicateIdempotencyKey(
                f"idempotency key {entry.idempotency_key!r} was used for a {existing.kind.lower()} of "
                f"{model.amount_text(existing.asset, existing.amount)} {existing.asset}, not a {entry.kind.lower()} of "
                f"{model.amount_text(entry.asset, entry.amount)} {entry.asset}",
                metadata={"idempotencyKey": entry.idempotency_key or ""})
        return False
    await uow.ledger.post(entry)
    return True


async def _move_cash(entry: model.JournalEntry, uow_factory: UowFactory, lock_wait: float) -> model.CashBalance:
    async with bounded(uow_factory, lock_wait, [entry.account_id], "no cash was moved",
                       "the same idempotency key") as uow:
        await uow.ledger.lock_accounts([entry.account_id], lock_wait)
        try:
            applied = await post_once(entry, uow)
        except asyncpg.NumericValueOutOfRangeError:  # a balance past the column's largest
            raise model.BalanceLimit(entry.account_id) from None
        except model.InsufficientFunds as exc:  # a withdrawal beyond what is available
            cash = await uow.ledger.cash(entry.account_id)
            if not cash.unsettled:
                raise
            raise model.insufficient(model.CASH, cash.available, Decimal(exc.metadata["requested"]),
                                     unsettled=cash.unsettled) from None
        if not applied:  # a retry: applied once already; answered as the request was
            return await uow.ledger.reply(entry) or await uow.ledger.cash(entry.account_id)
        cash = await uow.ledger.cash(entry.account_id)
        await uow.ledger.save_reply(entry, cash)  # a deposit's or withdrawal's key is required (API.md)
        await uow.commit()
        return cash


async def deposit(cmd: commands.Deposit, uow_factory: UowFactory, lock_wait: float = HOLD_LOCK_WAIT
                  ) -> model.CashBalance:
    return await _move_cash(model.deposit_entry(cmd.account_id, cmd.amount, cmd.idempotency_key), uow_factory,
                            lock_wait)


async def withdraw(cmd: commands.Withdraw, uow_factory: UowFactory, applied: ExecutionsApplied | None = None,
                   lock_wait: float = HOLD_LOCK_WAIT) -> model.CashBalance:
    entry = model.withdrawal_entry(cmd.account_id, cmd.amount, cmd.idempotency_key)
    return await _refused_once_applied(lambda: _move_cash(entry, uow_factory, lock_wait), cmd.account_id,
                                       uow_factory, applied)


async def _refused_once_applied(attempt: Callable[[], Awaitable[T]], account_id: str, uow_factory: UowFactory,
                                applied: ExecutionsApplied | None) -> T:
    """`attempt()`, made once more when it is refused for want of cash or shares while
    executions for the account were in flight (await_executions)."""
    try:
        return await attempt()
    except (model.InsufficientFunds, model.InsufficientShares):
        if not await await_executions([account_id], uow_factory, applied):
            raise
    return await attempt()


async def await_executions(accounts: Iterable[str], uow_factory: UowFactory,
                               applied: ExecutionsApplied | None) -> set[str]:
    """Before refusing accounts for want of cash or shares: those to ask once more, once the
    executions that may have changed their books since are applied.

    order_svc and the ledger apply the engine's executions through consumers of their own, so a
    customer can see an order FILLED or CANCELLED (order_svc) a few ms before the ledger has
    its shares or has released its cash, and sell or withdraw at once. Only an account with
    something held can be changed by an execution (its live orders hold; a fill of a resting
    order reaches its account through that order's hold), so the others' refusals stand
    without asking JetStream; for these the ledger waits (bounded) for its consumers to reach
    every execution published so far, and they are asked again (what the consumers applied
    between the refusal and the wait counts too)."""
    if applied is None:
        return set()
    async with uow_factory() as uow:
        holding = await uow.ledger.accounts_holding(accounts)
    if holding:
        await applied()
    return holding


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
        await uow.ledger.lock_accounts([cmd.account_id])
        applied = await post_once(entry, uow)
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
            f"hold id {asked.hold_id!r} was used for a hold of {model.amount_text(existing.asset, existing.amount)} "
            f"{existing.asset} "
            f"on {existing.account_id} for order {existing.order_id}",
            metadata={"holdId": asked.hold_id})
    return existing  # a retry: placed once already


async def place_hold(cmd: commands.PlaceHold, uow_factory: UowFactory, applied: ExecutionsApplied | None = None,
                     busy: BusyAccounts | None = None, lock_wait: float = HOLD_LOCK_WAIT) -> model.Hold:
    """Reserve `amount` of the account's book, idempotent on hold_id. Refused for want of cash
    or shares only once the executions in flight for the account are applied (`applied`).
    Placed as a batch of one (place_holds, with `busy` and `lock_wait`): an account held by
    another transaction longer is answered UNAVAILABLE ACCOUNT_BUSY, nothing held."""
    return await _refused_once_applied(lambda: _place_hold(cmd, uow_factory, busy, lock_wait), cmd.account_id,
                                       uow_factory, applied)


async def _place_hold(cmd: commands.PlaceHold, uow_factory: UowFactory, busy: BusyAccounts | None,
                      lock_wait: float) -> model.Hold:
    [answer] = await place_holds([cmd], uow_factory, busy, lock_wait)
    if isinstance(answer, DomainError):
        raise answer
    return answer


class BusyAccounts:
    """Accounts lately found held by another transaction (a stuck one, a row locked by hand)
    for longer than a hold may wait, remembered for `seconds`. A batch asks first whether those
    of its accounts are still held (one statement that waits for nothing): the held ones' holds
    are answered ACCOUNT_BUSY at once and the rest placed, so that a held account costs the
    other accounts' placements one wait of HOLD_LOCK_WAIT when first met, not one per batch or
    per retry (round 19's lock tester: every batch paid 3-5 s while one account was held)."""

    def __init__(self, seconds: float = HOLD_BUSY_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.clock = seconds, clock
        self._until: dict[str, float] = {}

    def add(self, account_id: str) -> None:
        now = self.clock()
        self._until = {a: t for a, t in self._until.items() if t > now}  # a few at most: the held ones
        self._until[account_id] = now + self.seconds

    def discard(self, account_id: str) -> None:
        self._until.pop(account_id, None)

    def __contains__(self, account_id: object) -> bool:
        until = self._until.get(account_id)  # type: ignore[call-overload]
        return until is not None and until > self.clock()


def account_busy(account_id: str, outcome: str = "nothing was held", same: str = "the same ids") -> Unavailable:
    return Unavailable(
        f"account {account_id} is busy with another operation that holds it; {outcome}: try again shortly "
        f"with {same}", reason="ACCOUNT_BUSY", metadata={"accountId": account_id},
        retry_after_seconds=OUTAGE_RETRY_SECONDS)


# The accounts a call takes, in the order to name them, as a list or read (without locking)
# once the call has waited in vain: a hold's or a transfer's owner is known only to its row.
Accounts = Iterable[str] | Callable[[LedgerUnitOfWork], Awaitable[Iterable[str]]]


@contextlib.asynccontextmanager
async def bounded(uow_factory: UowFactory, lock_wait: float, accounts: Accounts, outcome: str,
                  same: str) -> AsyncIterator[LedgerUnitOfWork]:
    """The unit of work of a call a caller waits on, whose first statement takes its accounts
    with `lock_wait` (ledger.lock_accounts and its kin): when it or a later statement would
    wait longer for a lock held by another transaction (a stuck session, a row locked by hand),
    the transaction is rolled back, nothing done, and the call is answered UNAVAILABLE
    ACCOUNT_BUSY with RetryInfo (account_busy, `outcome` and `same` its words), naming the
    first of `accounts` found held (held_accounts_now), else the first of them (what was held
    is then one of its rows: a hold's, say). As place_holds answers a held account's holds."""
    try:
        async with uow_factory() as uow:
            yield uow
    except asyncpg.LockNotAvailableError as exc:
        try:  # which account: only the answer's words, so a failure here does not change the answer
            if callable(accounts):
                async with uow_factory().reads() as uow:
                    accounts = list(await accounts(uow))
            named = [a for a in accounts if a]
            held = await held_accounts_now(set(named), uow_factory, lock_wait)
        except Exception as lookup:  # noqa: BLE001 - the pool, the connection, the server: none changes the answer
            log.warning("could not tell which account a busy call waited for", extra={"error": repr(lookup)})
            named, held = ([] if callable(accounts) else [a for a in accounts if a]), set()
        account = next((a for a in named if a in held), named[0] if named else "")
        log.warning(f"a call waited {lock_wait} s for a lock of account {account} held by another transaction; "
                    "answered ACCOUNT_BUSY", extra={"account": account})
        raise account_busy(account, outcome, same) from exc


async def place_holds(cmds: list[commands.PlaceHold], uow_factory: UowFactory, busy: BusyAccounts | None = None,
                      lock_wait: float = HOLD_LOCK_WAIT) -> list[model.Hold | DomainError]:
    """place_hold for each command, one after the other in the order given, in one statement;
    each answered as place_hold would answer it alone (the hold, or the error it would raise),
    except that a refusal for want of cash or shares is answered at once: the caller asks
    await_executions for its account (a wait here would hold back the whole batch).

    The holds go in (account, asset) order, whatever the order given (a stable sort keeps the
    order of holds on one book), and each takes its account before its book's balance row
    (migration 0007), so the batch takes accounts in account order like every other ledger
    transaction and none waits for it in a cycle. Should the batch fail as a whole all the
    same, its holds are placed one at a time.

    No lock is waited for longer than `lock_wait` (migration 0019). A batch that would wait
    longer fails as a whole; then the accounts held by another transaction at that moment are
    found (ledger.held_accounts, waiting for none), and at once the others' holds go together
    again while each held account's go alone, each waiting at most HELD_RETRY_WAIT: one held for
    a moment (a fill) is placed, one still held is answered UNAVAILABLE ACCOUNT_BUSY and goes
    into `busy`. For a while after, a batch with such an account first asks whether it is
    still held: answered ACCOUNT_BUSY at once while it is. A hold placed before under its id
    is answered as placed (EXISTS), never busy. Round 18: one account's lock held back every
    placement for as long as it was held; round 19: a batch per retry paid the wait."""
    busy = busy if busy is not None else BusyAccounts()
    holds = [_new_hold(c) for c in cmds]
    answers: dict[int, model.Hold | DomainError] = {}
    todo = list(range(len(cmds)))
    suspects = {c.account_id for c in cmds if c.account_id in busy}
    if suspects:
        held = await held_accounts_now(suspects, uow_factory, lock_wait)
        for account in suspects:
            if account in held:
                busy.add(account)
            else:
                busy.discard(account)
        await _answer_held([i for i in todo if cmds[i].account_id in held], cmds, holds, uow_factory, answers)
        todo = [i for i in todo if i not in answers]
    try:
        answers.update(await _place_together(todo, cmds, holds, uow_factory, lock_wait))
    except asyncpg.LockNotAvailableError:
        held = await held_accounts_now({cmds[i].account_id for i in todo}, uow_factory, lock_wait)
        log.warning(f"a batch of holds waited {lock_wait} s for an account held by another transaction "
                    f"({', '.join(sorted(held)) or 'none held now'}); the others placed together again",
                    extra={"count": len(todo)})
        rest = [i for i in todo if cmds[i].account_id not in held]
        alone = [[i for i in todo if cmds[i].account_id == a] for a in sorted(held)]
        for placed in await asyncio.gather(_place_rest(rest, cmds, holds, uow_factory, busy, lock_wait),
                                           *(_place_one_by_one(one, cmds, holds, uow_factory, busy,
                                                               min(lock_wait, HELD_RETRY_WAIT))
                                             for one in alone)):
            answers.update(placed)
    except Exception:  # noqa: BLE001 - nothing of the batch was applied: one at a time instead
        log.warning("a batch of holds failed as a whole; placing them one at a time", exc_info=True,
                    extra={"count": len(todo)})
        answers.update(await _place_one_by_one(todo, cmds, holds, uow_factory, busy, lock_wait))
    assert len(answers) == len(cmds), "every hold answered"
    return [answers[i] for i in range(len(cmds))]


async def held_accounts_now(accounts: set[str], uow_factory: UowFactory, lock_wait: float) -> set[str]:
    """Which of `accounts` another transaction holds now; none when that cannot be told within
    `lock_wait` (a table locked, say: the placing statement's own limit still applies). Also
    settlement's, for the accounts an execution waited for in vain."""
    try:
        async with uow_factory().single_statement() as uow:
            return await uow.ledger.held_accounts(accounts, timeout=lock_wait)
    except asyncio.TimeoutError:
        return set()


async def _answer_held(indices: list[int], cmds: list[commands.PlaceHold], holds: list[model.Hold],
                       uow_factory: UowFactory, answers: dict[int, model.Hold | DomainError]) -> None:
    """Answer the holds `indices` (of held accounts) in `answers` without placing them: as
    placed when one was placed before under the id (a retry), else ACCOUNT_BUSY."""
    if not indices:
        return
    async with uow_factory().reads() as uow:
        placed = await uow.ledger.holds_by_id(cmds[i].hold_id for i in indices)
    for i in indices:
        before = placed.get(cmds[i].hold_id)
        answers[i] = (account_busy(cmds[i].account_id) if before is None
                      else _answer(holds[i], cmds[i].client_key, "EXISTS", before, None))


async def _place_rest(indices: list[int], cmds: list[commands.PlaceHold], holds: list[model.Hold],
                      uow_factory: UowFactory, busy: BusyAccounts,
                      lock_wait: float) -> dict[int, model.Hold | DomainError]:
    """The holds of a timed-out batch whose accounts were not found held: together again, or
    one at a time should that fail too."""
    try:
        return await _place_together(indices, cmds, holds, uow_factory, lock_wait)
    except Exception:  # noqa: BLE001 - nothing of it was applied: one at a time instead
        log.warning("a batch of holds failed as a whole again; placing them one at a time", exc_info=True,
                    extra={"count": len(indices)})
        return await _place_one_by_one(indices, cmds, holds, uow_factory, busy, lock_wait)


async def _place_together(indices: list[int], cmds: list[commands.PlaceHold], holds: list[model.Hold],
                          uow_factory: UowFactory, lock_wait: float) -> dict[int, model.Hold | DomainError]:
    """The holds `indices` of a batch in one statement, in (account, asset) order (see
    place_holds), each answered as place_hold answers; raises with nothing applied when the
    statement fails (asyncpg's LockNotAvailableError after `lock_wait` for a lock)."""
    order = sorted(indices, key=lambda i: (holds[i].account_id, holds[i].asset))
    if not order:
        return {}
    async with uow_factory().single_statement() as uow:
        placements = await uow.ledger.place_holds([holds[i] for i in order], [cmds[i].client_key for i in order],
                                                  lock_wait, [cmds[i].answer_kept_key for i in order])
    return {i: _answer(holds[i], cmds[i].client_key, *placement)
            for i, placement in zip(order, placements, strict=True)}


async def _place_one_by_one(indices: list[int], cmds: list[commands.PlaceHold], holds: list[model.Hold],
                            uow_factory: UowFactory, busy: BusyAccounts,
                            lock_wait: float) -> dict[int, model.Hold | DomainError]:
    """The holds `indices`, each in a statement of its own, in the order given (no wait for
    executions, see place_holds), each waiting at most `lock_wait` for a lock: one that waits
    in vain puts its account in `busy`, and it and the account's later ones are answered as
    _answer_held answers."""
    answers: dict[int, model.Hold | DomainError] = {}
    for i in indices:
        cmd = cmds[i]
        if cmd.account_id not in busy:
            try:
                async with uow_factory().single_statement() as uow:
                    [placement] = await uow.ledger.place_holds([holds[i]], [cmd.client_key], lock_wait,
                                                               [cmd.answer_kept_key])
                answers[i] = _answer(holds[i], cmd.client_key, *placement)
                continue
            except asyncpg.LockNotAvailableError:
                busy.add(cmd.account_id)
                log.warning(f"account {cmd.account_id} is held by another transaction for over {lock_wait} s; its "
                            "holds are answered ACCOUNT_BUSY while it is", extra={"account": cmd.account_id})
        await _answer_held([i], cmds, holds, uow_factory, answers)
    return answers


def _new_hold(cmd: commands.PlaceHold) -> model.Hold:
    return model.Hold.new(cmd.hold_id, cmd.account_id, cmd.order_id, cmd.asset, cmd.amount)


def _answer(hold: model.Hold, client_key: str | None, outcome: str,
            placed: model.Hold | model.ClientKeyHolder | None, available: Decimal | None) -> model.Hold | DomainError:
    """_placed's answer, its refusal returned instead of raised (a batch's answer for one hold)."""
    try:
        return _placed(hold, client_key, outcome, placed, available)
    except DomainError as exc:
        return exc


def _placed(hold: model.Hold, client_key: str | None, outcome: str, placed: model.Hold | model.ClientKeyHolder | None,
            available: Decimal | None) -> model.Hold:
    """ledger.place_holds' answer for a hold as place_hold gives it: the hold, or the refusal raised."""
    if outcome == "INSUFFICIENT":
        raise model.insufficient(hold.asset, available or Decimal(0), hold.amount)
    if outcome == "KEY_TAKEN":  # `placed` is what carries the key: a hold, or an order without one
        assert isinstance(placed, model.ClientKeyHolder)
        raise model.client_key_taken(hold.account_id, client_key or "", placed)
    if outcome == "KEPT":  # the key was kept for this very order, without a hold: answered before
        assert isinstance(placed, model.ClientKeyHolder)
        raise model.client_key_kept(hold.account_id, client_key or "", placed.order_id)
    assert isinstance(placed, model.Hold)
    if outcome == "EXISTS":
        return _same_hold(placed, hold)
    return placed


async def capture_in(uow: LedgerUnitOfWork, cmd: commands.CaptureHold, fill: model.FillMemo | None = None) -> model.Hold:
    """Move part or all of what is still held to the counter-account, as one balanced journal
    entry (a FILL entry naming `fill` for a trade's), idempotent on (hold_id, capture_id),
    inside the caller's transaction."""
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
                f"capture id {cmd.capture_id!r} of hold {cmd.hold_id!r} captured "
                f"{model.amount_text(hold.asset, prior.amount)} "
                f"to {prior.counter_account_id}", metadata={"holdId": cmd.hold_id, "captureId": cmd.capture_id})
        return hold  # a retry: applied once already
    hold.capture(cmd.amount)
    if fill is not None:  # a trade's: its order's fill, counted in the statement that saves the capture
        hold.count_fill(fill)
    entry = model.capture_entry(hold, cmd.amount, counter, fill)
    await uow.ledger.add_entry(entry)
    await uow.ledger.post(entry, from_held=model.BookRef(hold.account_id, hold.asset),
                          audit_type="HOLD_CAPTURED", audit_extra={
                              "holdId": hold.hold_id, "captureId": cmd.capture_id, "orderId": hold.order_id,
                              "counterAccount": counter, "captured": hold.captured,
                              "status": hold.status.value})
    await uow.ledger.add_capture(hold.hold_id, cmd.capture_id, cmd.amount, entry.entry_id, counter)
    return await uow.ledger.save_hold(hold)


async def _hold_owner(uow: LedgerUnitOfWork, hold_id: str, *others: str) -> list[str]:
    """bounded's accounts of a call on a hold: its owner (if there is such a hold), then `others`."""
    hold = (await uow.ledger.holds_by_id([hold_id])).get(hold_id)
    return [hold.account_id, *others] if hold is not None else list(others)


async def capture_hold(cmd: commands.CaptureHold, uow_factory: UowFactory,
                       lock_wait: float = HOLD_LOCK_WAIT) -> model.Hold:
    """HoldService.CaptureHold: a capture outside a trade. Shares keep their positions in step
    with the books, as a fill does: the cost basis of the shares captured leaves the holder's
    position and, to a customer, goes with them (round 16 code review 2: the books moved
    alone, and the receiver's later sale stopped the symbol's execution consumer). A lock
    waited for longer than `lock_wait`: ACCOUNT_BUSY (bounded), nothing captured."""
    async with bounded(uow_factory, lock_wait, lambda u: _hold_owner(u, cmd.hold_id, cmd.counter_account_id),
                       "nothing was captured", "the same capture id") as uow:
        await uow.ledger.lock_hold_accounts(cmd.hold_id, [cmd.counter_account_id], lock_wait)  # accounts first (0007)
        retry = await uow.ledger.get_capture(cmd.hold_id, cmd.capture_id) is not None
        hold = await capture_in(uow, cmd)
        if not retry and model.is_symbol(hold.asset):
            quantity = int(cmd.amount)
            held = await uow.settlement.position(hold.account_id, hold.asset)
            cost = held.sell(min(quantity, held.quantity)) if held.quantity else Decimal(0)
            await uow.settlement.save_position(hold.account_id, hold.asset, held)
            if cmd.counter_account_id and model.BookRef(cmd.counter_account_id, hold.asset).is_customer:
                got = await uow.settlement.position(cmd.counter_account_id, hold.asset)
                got.receive(quantity, cost)
                await uow.settlement.save_position(cmd.counter_account_id, hold.asset, got)
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


async def release_hold(cmd: commands.ReleaseHold, uow_factory: UowFactory,
                       lock_wait: float = HOLD_LOCK_WAIT) -> model.Hold:
    """A lock waited for longer than `lock_wait`: ACCOUNT_BUSY (bounded), nothing released. The
    callers ask again (order_svc's saga answers its client UNAVAILABLE; its reaper's next round
    finds the hold unchecked still)."""
    async with bounded(uow_factory, lock_wait, lambda u: _hold_owner(u, cmd.hold_id),
                       "nothing was released",
                       "the same hold id") as uow:
        await uow.ledger.lock_hold_accounts(cmd.hold_id, (), lock_wait)  # accounts first (migration 0007)
        hold = await release_in(uow, cmd.hold_id)
        await uow.commit()
        return hold


async def get_hold(hold_id: str, uow_factory: UowFactory) -> model.Hold:
    async with uow_factory() as uow:
        hold = await uow.ledger.get_hold(hold_id)
    if hold is None:
        raise model.HoldNotFound(f"no hold {hold_id!r}", metadata={"holdId": hold_id})
    return hold


async def unchecked_holds(older_than: float, limit: int, uow_factory: UowFactory, *,
                          after: tuple[datetime, str] | None = None,
                          orphan_age: float = 0) -> list[tuple[model.Hold, bool]]:
    """Pending holds placed more than `older_than` seconds ago and not yet checked against
    their order, oldest first (by created_at, then hold_id), after the hold `after` (its
    created_at and hold_id: the last of the previous page) if given; each with whether it was
    placed more than `orphan_age` seconds ago (order_svc's reaper)."""
    async with uow_factory().single_statement() as uow:
        return await uow.ledger.unchecked_holds(older_than, limit, after, orphan_age)


async def mark_holds_checked(hold_ids: list[str], uow_factory: UowFactory) -> None:
    async with uow_factory().single_statement() as uow:
        await uow.ledger.mark_checked(hold_ids)


async def list_holds(account_id: str, before: int | None, limit: int, uow_factory: UowFactory) -> list[HoldRow]:
    async with uow_factory() as uow:
        return await uow.ledger.list_holds(account_id, before, limit)


# --- hold transfers (ReplaceOrder) ------------------------------------------------------

def _same_transfer(existing: model.HoldTransfer, asked: model.HoldTransfer) -> model.HoldTransfer:
    if not existing.same_request(asked):
        raise model.DuplicateHoldId(
            f"hold id {asked.to_hold_id!r} was used for a transfer from {existing.from_hold_id} reserving "
            f"{model.amount_text(existing.asset, existing.reserve)} {existing.asset}",
            metadata={"holdId": asked.to_hold_id})
    return existing  # a retry: recorded once already (it may have completed or been cancelled since)


async def transfer_hold(cmd: commands.TransferHold, uow_factory: UowFactory,
                        applied: ExecutionsApplied | None = None, lock_wait: float = HOLD_LOCK_WAIT
                        ) -> model.HoldTransfer:
    """Phase 1 of a hold transfer: reserve `cmd.reserve` more (refused, changing nothing, when
    less is available once the executions in flight for the account are applied: `applied`, as
    place_hold) and record the transfer, idempotent on to_hold_id. Phase 2 is
    `complete_transfer_in` (the engine replaced the order) or `cancel_transfer_in` (it refused).
    A lock waited for longer than `lock_wait` (the account's, the old hold's row): ACCOUNT_BUSY
    (bounded), nothing recorded; order_svc passes it on to ReplaceOrder's client."""
    return await _refused_once_applied(lambda: _transfer_hold(cmd, uow_factory, lock_wait), cmd.account_id,
                                       uow_factory, applied)


async def _transfer_hold(cmd: commands.TransferHold, uow_factory: UowFactory, lock_wait: float
                         ) -> model.HoldTransfer:
    t = model.HoldTransfer.new(cmd.from_hold_id, cmd.to_hold_id, cmd.order_id, cmd.account_id, cmd.asset,
                               cmd.unit_amount, cmd.reserve)
    async with bounded(uow_factory, lock_wait, [t.account_id], "nothing was transferred", "the same ids") as uow:
        await uow.ledger.lock_hold_accounts(t.from_hold_id, [t.account_id], lock_wait)  # accounts first (0007)
        # The old hold's row lock serialises every transfer from it (and its captures).
        old = await uow.ledger.get_hold(t.from_hold_id, for_update=True)
        existing = await uow.ledger.get_transfer(t.to_hold_id)
        if existing is not None:
            return _same_transfer(existing, t)
        if old is None:
            raise model.HoldNotFound(f"no hold {t.from_hold_id!r}", metadata={"holdId": t.from_hold_id})
        if (old.account_id, old.asset) != (t.account_id, t.asset):
            raise InvalidArgument([FieldViolation(
                "from_hold_id", f"holds {old.asset} of another account or asset than {t.asset} of {t.account_id}")])
        if old.is_resolved:
            raise model.HoldResolved(f"hold {old.hold_id} is already {old.status.value.lower()}",
                                     metadata={"holdId": old.hold_id, "status": old.status.value})
        if await uow.ledger.get_hold(t.to_hold_id) is not None:
            raise model.DuplicateHoldId(f"hold id {t.to_hold_id!r} is taken", metadata={"holdId": t.to_hold_id})
        if t.reserve_hold_id is not None:
            reserve = model.Hold.new(t.reserve_hold_id, t.account_id, t.order_id, t.asset, t.reserve)
            book_id = await uow.ledger.find_book_id(model.BookRef(t.account_id, t.asset))
            assert book_id is not None  # the old hold's book
            placed = await uow.ledger.insert_hold(reserve, book_id)
            if placed is None:  # the same transfer, recorded concurrently
                return _same_transfer(await _transfer(uow, t.to_hold_id), t)
            await uow.ledger.reserve(book_id, t.asset, t.reserve)
            await uow.ledger.audit_hold(placed, "HOLD_PLACED", {"reserveFor": t.to_hold_id})
        if not await uow.ledger.insert_transfer(t):
            existing = await uow.ledger.get_transfer(t.to_hold_id)
            if existing is not None:
                return _same_transfer(existing, t)
            raise model.TransferPending(f"hold {t.from_hold_id} is already being transferred",
                                        metadata={"holdId": t.from_hold_id})
        if cmd.client_key:
            # The replacing order's client_order_id is taken from now on: a placement reusing
            # it with other parameters is refused by its hold's statement, holding nothing
            # (round 27, F1). Best effort: order_svc's orders hold the id already; a key kept
            # for another order (a refused placement's, say) stays that order's.
            await uow.ledger.keep_client_key(t.account_id, cmd.client_key, t.order_id)
        await uow.ledger.audit_transfer(t, "HOLD_TRANSFER_PREPARED", {})
        await uow.commit()
        return t


async def register_client_keys(cmds: list[commands.RegisterClientKey], uow_factory: UowFactory,
                               lock_wait: float = HOLD_LOCK_WAIT) -> list[model.ClientKeyHolder | None]:
    """HoldService.RegisterClientKeys: each key kept for its order (None), unless the account
    has it for another order already (what carries it), in one statement. A lock waited for
    longer than `lock_wait`: ACCOUNT_BUSY (bounded), nothing recorded."""
    accounts = sorted({c.account_id for c in cmds})
    async with bounded(uow_factory, lock_wait, accounts, "no key was registered", "the same keys") as uow:
        holders = await uow.ledger.register_client_keys(
            [(c.account_id, c.client_key, c.order_id) for c in cmds], lock_wait)
        await uow.commit()
    return holders


async def _transfer(uow: LedgerUnitOfWork, to_hold_id: str) -> model.HoldTransfer:
    t = await uow.ledger.get_transfer(to_hold_id)
    assert t is not None
    return t


async def complete_transfer_in(uow: LedgerUnitOfWork, from_hold_id: str, to_hold_id: str,
                               open_quantity: int) -> model.Hold | None:
    """Phase 2, inside the caller's transaction (the ledger applying the engine's REPLACED):
    the old hold and the reserve resolve, the new hold opens for `open_quantity`, and the
    book's held moves by the difference only. Without a prepared transfer (a replace that did
    not come through order_svc) the new hold takes over what the old one still holds."""
    t = await uow.ledger.get_transfer(to_hold_id, for_update=True)
    if t is not None and t.status is not model.TransferStatus.PENDING:
        return await uow.ledger.get_hold(to_hold_id)  # applied before
    old = await uow.ledger.get_hold(t.from_hold_id if t else from_hold_id, for_update=True)
    if old is None:
        return None  # not an order the ledger holds anything for
    reserve = await uow.ledger.get_hold(t.reserve_hold_id, for_update=True) if t and t.reserve_hold_id else None
    old_left = old.release()
    reserve_left = reserve.release() if reserve is not None else Decimal(0)
    if t is not None:
        change = t.complete(old_left, reserve_left, open_quantity)
        amount = t.new_amount
    else:
        change, amount = Decimal(0), old_left
    assert amount is not None
    book_id = await uow.ledger.find_book_id(model.BookRef(old.account_id, old.asset))
    assert book_id is not None
    new = None
    if amount > 0:
        opened = model.Hold.new(to_hold_id, old.account_id, t.order_id if t else to_hold_id, old.asset, amount)
        if t is not None:
            # The replaced order's fills (its own and those it carried) are the new order's too,
            # as order_svc's filled_quantity counts them (FIX's CumQty); only through a recorded
            # transfer, which the invariant and migration 0021 follow (review of round 26: an
            # engine-level replace with none carried them, and the two disagreed).
            opened.filled, opened.notional = old.filled, old.notional
        new = await uow.ledger.insert_hold(opened, book_id)
        if new is None:
            raise model.DuplicateHoldId(f"hold id {to_hold_id!r} is taken", metadata={"holdId": to_hold_id})
    if change < 0:
        await uow.ledger.release_held(book_id, -change)
    elif change > 0:  # never with a worst-case reserve; refused like any hold if not available
        await uow.ledger.reserve(book_id, old.asset, change)
    for h, left in ((old, old_left), (reserve, reserve_left)):
        if h is not None and left > 0:
            await uow.ledger.save_hold(h)
    if new is not None:
        await uow.ledger.audit_hold(new, "HOLD_PLACED", {"transferredFrom": old.hold_id})
    if t is not None:
        await uow.ledger.save_transfer(t)
        await uow.ledger.audit_transfer(t, "HOLD_TRANSFERRED", {"heldChange": change})
    return new


async def cancel_transfer_in(uow: LedgerUnitOfWork, t: model.HoldTransfer) -> None:
    """The engine refused the replace: release the reserve; the old hold stays as it is."""
    if t.status is not model.TransferStatus.PENDING:
        return
    if t.reserve_hold_id is not None:
        await release_in(uow, t.reserve_hold_id)
    t.cancel()
    await uow.ledger.save_transfer(t)
    await uow.ledger.audit_transfer(t, "HOLD_TRANSFER_CANCELLED", {})


async def _transfer_owner(uow: LedgerUnitOfWork, to_hold_id: str) -> list[str]:
    """bounded's accounts of a call on a hold transfer: its account (if there is such a transfer)."""
    t = await uow.ledger.get_transfer(to_hold_id)
    return [t.account_id] if t is not None else []


async def cancel_transfer(to_hold_id: str, uow_factory: UowFactory,
                          lock_wait: float = HOLD_LOCK_WAIT) -> model.HoldTransfer:
    """Give up a PENDING transfer the engine never saw; a resolved one is returned as it is. A
    lock waited for longer than `lock_wait`: ACCOUNT_BUSY (bounded), nothing cancelled."""
    async with bounded(uow_factory, lock_wait, lambda u: _transfer_owner(u, to_hold_id),
                       "nothing was cancelled",
                       "the same hold id") as uow:
        await uow.ledger.lock_transfer_account(to_hold_id, lock_wait)  # accounts first (migration 0007)
        t = await uow.ledger.get_transfer(to_hold_id, for_update=True)
        if t is None:
            raise model.HoldNotFound(f"no hold transfer to {to_hold_id!r}", metadata={"holdId": to_hold_id})
        await cancel_transfer_in(uow, t)
        await uow.commit()
        return t
