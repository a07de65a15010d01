"""Settlement use cases: apply each execution once, settle a trading day, reconcile."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Callable, Collection, Mapping

import asyncpg
from prometheus_client import Counter, Gauge

from ledger_svc.adapters.settlement import Claim
from ledger_svc.domain import model
from ledger_svc.domain.settlement import Discrepancy, Position, SettlementReport, legs, settlement_entry
from ledger_svc.service_layer import commands
from ledger_svc.service_layer.handlers import (UowFactory, cancel_transfer_in, capture_in, complete_transfer_in,
                                               held_accounts_now, release_in)
from meshkit.executions import (BATCH, CANCEL_REJECTED, CANCELLED, ENDS_ORDER, FILL, NO_EFFECT, REPLACED, Execution,
                                accounts, claimed, from_json, in_runs, units)
from meshkit.money import amount_text, fmt_at_tick, fmt_cents, fmt_price
from meshkit.symbols import price_tick

log = logging.getLogger("ledger_svc.settlement")
# Exported by unpark each round, on the replica elected to apply the journal (the others' stay
# 0): an age that only grows is a parked execution that cannot apply, and every later execution
# of its accounts on its symbol waits behind it (docs/operations.md).
PARKED = Gauge("stockmesh_parked_executions", "Executions parked behind a held account, by symbol", ["symbol"])
PARKED_OLDEST = Gauge("stockmesh_parked_oldest_seconds", "Age of the oldest parked execution, by symbol", ["symbol"])
UNPARK_FAILURES = Counter("stockmesh_unpark_failures_total",
                          "Parked executions that failed when applied (left parked), by symbol", ["symbol"])
_exported: set[str] = set()  # the symbols last exported with something parked
# How long a consumer's transaction waits for a lock before its executions are parked (a run of
# another symbol holds its accounts for milliseconds; a stuck transaction for good), and how
# long unpark waits for a parked one's.
EXECUTION_LOCK_WAIT = 2.0
UNPARK_LOCK_WAIT = 0.1
# How long a consumer's batch that meets a parked execution applies its symbol's parked ones
# first, at most, before it parks behind those left (well within JetStream's ack wait).
DRAIN_BUDGET = 5.0
# A run holds all its accounts (up to 64) while it waits for one: it waits less than a hold
# placement waits for its account (handlers.HOLD_LOCK_WAIT), so that an account of the run not
# party to the wait is never answered ACCOUNT_BUSY meanwhile (round 20 review: with the run
# waiting 2 s, an uninvolved account's hold was refused). Then the held accounts' executions are
# parked and the run's others go together again.
RUN_LOCK_WAIT = 0.5
# The fills settle settles in one transaction, which holds their sellers' accounts throughout.
# Written a statement per fill, 500 took 0.9 s on an idle machine, long enough under load for the
# ledger's consumer to park a market maker's executions behind it and for its hold placements to
# be refused ACCOUNT_BUSY (round 23 rechaos, `settle --before-close` during trading); in a few
# statements (_settle_batch) 100 take some milliseconds (benchmarks/bench_settle.py).
SETTLE_BATCH = 100
# A batch takes its sellers' accounts in account order, so while it waited for one another
# transaction holds (a consumer's run, a hold placement) it held every account before it, and
# their hold placements waited for it. It waits this long at most, then lets them all go and
# tries again after as long: after SETTLE_LOCK_TRIES tries in a row (a seller's account held for
# good, a few seconds), it waits as long as it takes, so that a day always settles.
SETTLE_LOCK_WAIT = 0.1
SETTLE_LOCK_TRIES = 30


async def apply_execution(ex: Execution, uow_factory: UowFactory, lock_wait: float | None = None, *,
                          parked_here: Collection[str] | None = None, unpark: bool = False) -> bool:
    """Apply one execution in one transaction; False for a repeat (dropped by its id).

    A fill captures the buyer's cash (price × quantity rounded down to the cent, `fill_cash`)
    into clearing and the seller's shares
    into the buyer's book, moves both positions' cost basis, and records the seller's proceeds
    as unsettled; an order that ended (no leaves, or cancelled / expired / rejected) has what is
    left of its hold released. A replace confirmed by the engine (REPLACED) moves the old
    order's hold to the new order (the transfer prepared when the customer asked); a replace
    the engine refused (CANCEL_REJECTED naming a new order, or the old order cancelled because
    the new quantity was already filled) releases the transfer's reserve. A refused cancel
    changes nothing, and so do an acceptance and a trigger (passed by without a transaction).

    With `lock_wait`, no lock is waited for longer (asyncpg's LockNotAvailableError, nothing
    applied: apply_executions parks it); with `parked_here` (what the batch parked so far),
    nothing is applied when it touches an account of another parked execution of its symbol
    (_Parked: apply_executions parks it behind). With `unpark` (a parked execution, applied by
    unpark), its parked row is deleted in the same transaction, also when it was applied before."""
    if ex.type in NO_EFFECT:
        return False
    async with uow_factory() as uow:
        claim = await uow.settlement.claim_executions([ex], lock_wait=lock_wait, parked_here=parked_here,
                                                      unpark=unpark)
        _check_parked(claim, [ex])
        if not claim.ids:
            if unpark:
                await uow.commit()
            return False
        await _apply_in(uow, ex)
        await uow.commit()
        return True


async def _apply_in(uow, ex: Execution) -> None:
    """apply_execution's effect, inside the caller's transaction (the execution claimed)."""
    # Both accounts before any of their rows, in account order (migration 0007).
    await uow.ledger.lock_accounts([ex.account_id, ex.counter_account_id])
    ended: list[str] = []
    if ex.type == FILL:
        f = legs(ex)
        memo = _memo(ex, f)
        if f.cash:  # a fill worth less than a cent moves shares only (fill_cash)
            await capture_in(uow, commands.CaptureHold(f.buyer_order, f"{ex.execution_id}:cash", f.cash,
                                                       model.CLEARING), memo)
        else:  # but is a fill of the buy all the same (Hold.count_fill)
            await uow.ledger.count_fill(f.buyer_order, memo)
        await capture_in(uow, commands.CaptureHold(f.seller_order, f"{ex.execution_id}:shares",
                                                   Decimal(f.quantity), f.buyer_account), memo)
        bought = await uow.settlement.position(f.buyer_account, ex.symbol)
        bought.buy(f.quantity, f.price)
        await uow.settlement.save_position(f.buyer_account, ex.symbol, bought)
        sold = await uow.settlement.position(f.seller_account, ex.symbol)
        _sell(sold, ex, f)
        await uow.settlement.save_position(f.seller_account, ex.symbol, sold)
        assert ex.trade_date is not None
        if f.cash:
            await uow.settlement.add_unsettled(ex.execution_id, f.seller_account, f.cash, ex.trade_date,
                                               memo.trade)
        ended = [o for o, leaves in ((f.buyer_order, f.buyer_leaves), (f.seller_order, f.seller_leaves)) if leaves == 0]
    elif ex.type == REPLACED:
        await complete_transfer_in(uow, ex.order_id, ex.new_order_id, ex.leaves)
    elif ex.type == CANCEL_REJECTED:
        if ex.new_order_id:
            t = await uow.ledger.get_transfer(ex.new_order_id, for_update=True)
            if t is not None:
                await cancel_transfer_in(uow, t)
    elif ex.type in ENDS_ORDER:
        ended = [ex.order_id]
        if ex.type == CANCELLED and ex.reason == "REPLACED":  # the new quantity was already filled
            t = await uow.ledger.pending_transfer_from(ex.order_id)
            if t is not None:
                await cancel_transfer_in(uow, t)
    for order_id in ended:
        if await uow.ledger.get_hold(order_id) is not None:
            await release_in(uow, order_id)


async def apply_executions(exs: list[Execution], uow_factory: UowFactory, *,
                           lock_wait: float | None = EXECUTION_LOCK_WAIT) -> int:
    """Apply executions (a consumer's, of one symbol) in stream order: each run of fills and
    ends (cancels, expiries, rejections) in one transaction of about fifteen statements however
    long it is, anything else one at a time (apply_execution). Returns how many were applied,
    the symbol's parked ones it applied first included (repeats, acceptances and executions it
    parked are not).

    A consumer behind applies its backlog in few transactions (round 20: ~37 statements and a
    commit per fill, one fill after the other, applied ~30-80 fills a second per symbol). A run
    that cannot be applied together (a hold missing or resolved, a capture made before: what
    apply_execution refuses or tells apart) is applied one execution at a time instead, so each
    is applied, or refused, exactly as apply_execution does.

    No lock is waited for longer than `lock_wait`: an execution whose account another
    transaction holds that long (a stuck transaction, a session stopped mid-statement, a row
    locked by hand) is parked (ledger.parked_executions, migration 0020), and so is every later
    one that touches an account of a parked one, so that each account's executions still apply
    in stream order; the symbol's others go on. A batch that meets a parked execution applies
    the symbol's parked ones first (unpark_symbol), and unpark_loop applies them once their
    accounts are free (round 19's lock tester: one held account stopped its symbols' executions
    for every account; an innocent account's sale of shares it had just bought was refused).
    Each transaction's claim finds the parked executions its own touch (claim_executions'
    parked_here), and sets its lock wait, in the statement that claims: a batch pays no
    statement of its own for either (round 21 review: a read of the parked accounts, in a
    round trip before the batch, and a set_config in each transaction)."""
    pending = [ex for ex in exs if ex.type not in NO_EFFECT]
    position: dict[int, int] = {}  # each execution's first place in the stream (one may come twice)
    for i, ex in enumerate(pending):
        position.setdefault(id(ex), i)
    blocked: set[str] = set()  # accounts whose executions park behind a parked one
    parked_here: set[str] = set()  # kept in stream order by `blocked`, not waited behind by a claim
    to_park: list[Execution] = []
    applied = 0
    drained = False
    while pending:
        ready, behind = _behind(pending, blocked)
        to_park += behind
        parked_here |= {ex.execution_id for ex in behind}
        try:
            applied += await _apply_in_order(ready, uow_factory, lock_wait, parked_here)
            pending = []
        except _Parked as parked:
            applied += parked.applied
            pending = parked.rest
            if not drained:
                # The symbol's parked executions first, in order, as unpark applies them (all
                # came before the batch): once their accounts are free, the batch applies behind
                # them rather than park behind them too (round 24 chaos: every later execution
                # of a symbol touching its market maker parked, faster than one loop unparked
                # them, and the backlog grew for as long as the market traded).
                drained = True
                applied += await unpark_symbol(pending[0].symbol, uow_factory, budget=DRAIN_BUDGET)
                continue
            # Those left parked block their accounts: the unit's executions that touch one
            # park behind, and the rest of the batch is split again.
            blocked |= parked.accounts
        except _Held as held:
            applied += held.applied
            assert lock_wait is not None
            # The accounts held now are blocked, and the rest of the batch is split again; when
            # none is found that was not blocked already (a row of the unit locked some other
            # way, or let go meanwhile), the unit's own accounts are, so that it is parked.
            blocked |= (await held_accounts_now(held.accounts, uow_factory, lock_wait) - blocked) or held.accounts
            pending = held.rest
    if to_park:
        # Parked once the batch is through, in stream order: an execution that parked behind a
        # blocked account could come before (in the stream) one of its accounts' executions that
        # was applied only later found held, and unpark applies them in the order parked (round
        # 23 chaos: a replace's FILL, parked at once behind the market maker's account, ahead of
        # its REPLACED, parked after its account was found held: the fill found no hold, for
        # ever, and every later execution of both accounts stayed parked behind it).
        to_park.sort(key=lambda ex: position[id(ex)])
        async with uow_factory() as uow:
            await uow.settlement.park(to_park)
            await uow.commit()
        log.warning("executions parked behind an account another transaction holds",
                    extra={"executions": len(to_park), "first": to_park[0].execution_id,
                           "accounts": sorted({a for ex in to_park for a in accounts(ex)})[:20]})
    return applied


def _behind(exs: list[Execution], blocked: set[str]) -> tuple[list[Execution], list[Execution]]:
    """Split `exs` (stream order) into those to apply and those to park: any that touches a
    blocked account, whose accounts are then blocked too (`blocked` grows)."""
    ready, behind = [], []
    for ex in exs:
        if accounts(ex) & blocked:
            blocked |= accounts(ex)
            behind.append(ex)
        else:
            ready.append(ex)
    return ready, behind


class _Parked(Exception):
    """A unit touches an account of a parked execution of its symbol (`accounts`: every such
    account of the symbol, found by the unit's claim, which then claimed nothing): it parks
    behind, and so does `rest` (from the unit) where it touches those accounts."""

    def __init__(self, accounts: set[str]) -> None:
        super().__init__("executions parked before touch an account of the unit")
        self.accounts = accounts
        self.rest: list[Execution] = []
        self.applied = 0


def _check_parked(claim: Claim, unit: list[Execution]) -> None:
    """Raise _Parked when the claim of `unit` found it behind a parked execution."""
    if claim.parked & {a for ex in unit for a in accounts(ex)}:
        raise _Parked(claim.parked)


class _Held(Exception):
    """A lock wait ran out: `rest` (from the unit that waited on) is not applied yet."""

    def __init__(self, rest: list[Execution], unit: list[Execution], applied: int) -> None:
        super().__init__(f"a lock held longer than the wait, applying {unit[0].execution_id}")
        self.rest, self.applied = rest, applied
        self.accounts = {a for ex in unit for a in accounts(ex)}


async def _apply_in_order(exs: list[Execution], uow_factory: UowFactory, lock_wait: float | None,
                          parked_here: set[str]) -> int:
    applied = 0
    for start, unit in units(exs):
        try:
            if in_runs(unit[0]):
                applied += await _apply_run_or_one_by_one(unit, uow_factory, lock_wait, parked_here)
            else:
                applied += await apply_execution(unit[0], uow_factory, lock_wait, parked_here=parked_here)
        except asyncpg.LockNotAvailableError:
            raise _Held(exs[start:], unit, applied) from None
        except _Parked as parked:
            parked.rest, parked.applied = exs[start:], applied
            raise
    return applied


async def _apply_run_or_one_by_one(run: list[Execution], uow_factory: UowFactory, lock_wait: float | None,
                                   parked_here: set[str]) -> int:
    try:
        return await _apply_run(run, uow_factory, lock_wait, parked_here)
    except (asyncio.CancelledError, asyncpg.LockNotAvailableError, _Parked):
        raise
    except _Together as why:  # foreseen: no traceback
        log.warning("a run of executions could not be applied together; applying them one at a time",
                    extra={"executions": len(run), "first": run[0].execution_id, "reason": str(why)})
    except Exception:  # noqa: BLE001 - each again on its own, which applies it or raises the same
        log.warning("a run of executions could not be applied together; applying them one at a time",
                    exc_info=True, extra={"executions": len(run), "first": run[0].execution_id})
    return sum([await apply_execution(ex, uow_factory, lock_wait, parked_here=parked_here) for ex in run])


async def unpark(uow_factory: UowFactory, *, lock_wait: float = UNPARK_LOCK_WAIT, limit: int = 1000) -> int:
    """Apply the parked executions whose accounts are free now, in the order parked, each
    symbol's in runs of up to a consumer's batch (_unpark_in_runs), each run's rows deleted in
    the transaction that applies them; one whose account is still held (or that fails) is left,
    and so is every later one of its symbol that touches its accounts. At most `limit` of each
    symbol are tried a round. Returns how many were applied (a repeat, applied before it was
    parked again, is only deleted).

    Round 24: applied one transaction each, about 125 a second on an idle machine and 9 under
    the chaos test's load, parked executions came in faster than they went: every new execution
    of a market maker parks behind its parked ones, so once parking began (a settlement holding
    accounts during trading) it went on while the market traded, up to 2,929 rows and 229 s of
    lag, with replaces answered LEDGER_CATCHING_UP and portfolios minutes behind.

    Which to try is chosen from every parked row's symbol and accounts (round 23 chaos: the
    oldest 1,000 rows of all symbols were read, and once one that could never apply had that
    many behind it, no symbol's, nor its own unrelated accounts', were applied any more); each
    execution is decoded alone, so one that cannot be decoded holds back only its own accounts.
    One that failed is not tried again for UNPARK_RETRY_FAILED seconds (its accounts' rows wait
    behind it meanwhile). What is parked, per symbol, and since when, is exported each round
    (stockmesh_parked_executions, stockmesh_parked_oldest_seconds), and each failure counted
    (stockmesh_unpark_failures_total): a row that never applies shows as an age that grows."""
    async with uow_factory().reads() as uow:
        rows = await uow.settlement.parked()
    _export_parked([(symbol, at) for _, symbol, _, _, at in rows])
    _forget_failures()
    by_symbol: dict[str, list[tuple[int, str, frozenset[str]]]] = {}
    for seq, symbol, execution_id, accounts_of, _ in rows:
        by_symbol.setdefault(symbol, []).append((seq, execution_id, accounts_of))
    done = 0
    for symbol, parked in by_symbol.items():
        done += await _unpark_symbol(symbol, parked, uow_factory, lock_wait, limit)
    if done:
        log.info("parked executions applied", extra={"applied": done, "left": len(rows) - done})
    return done


# Parked executions that failed when applied, and until when (time.monotonic) they are not
# tried again (review of round 24: a row that could never apply was tried, and its traceback
# logged, on every round, twenty a second while the others' rounds applied something).
_failed: dict[str, float] = {}
UNPARK_RETRY_FAILED = 10.0


def _forget_failures() -> None:
    now = time.monotonic()
    for execution_id in [e for e, until in _failed.items() if until <= now]:
        del _failed[execution_id]


async def unpark_symbol(symbol: str, uow_factory: UowFactory, *, lock_wait: float = UNPARK_LOCK_WAIT,
                        limit: int = 1000, budget: float | None = None) -> int:
    """unpark of one symbol's parked executions: what its consumer does before a batch that
    touches an account of one (apply_executions), with unpark's short lock wait (review of
    round 24: with the consumer's 2 s, every batch of the symbol waited 2 s while an account
    stayed held, holding the market maker's account meanwhile) and no new batch of them read
    after `budget` seconds (a backlog of 1,000 took the consumer's batch past JetStream's ack
    wait). Returns how many were applied."""
    async with uow_factory().reads() as uow:
        rows = await uow.settlement.parked(symbol)
    if not rows:
        return 0
    _forget_failures()
    done = await _unpark_symbol(symbol, [(seq, e, a) for seq, _, e, a, _ in rows], uow_factory, lock_wait, limit,
                                None if budget is None else time.monotonic() + budget)
    if done:
        log.info("parked executions applied by the symbol's consumer", extra={"symbol": symbol, "applied": done})
    return done


async def _unpark_symbol(symbol: str, parked: list[tuple[int, str, frozenset[str]]], uow_factory: UowFactory,
                         lock_wait: float, limit: int, deadline: float | None = None) -> int:
    """unpark of one symbol's parked rows (seq, execution id, accounts; in the order parked):
    read a batch at a time, those behind a blocked account left unread; none read after
    `deadline` (time.monotonic)."""
    blocked: set[str] = set()  # accounts whose rows stay parked this round, as the consumer's `blocked`
    tried = done = 0
    rows = iter(parked)
    while tried < limit and (deadline is None or time.monotonic() < deadline):
        batch: list[tuple[int, str, frozenset[str]]] = []
        for seq, execution_id, accounts_of in rows:
            if accounts_of & blocked or execution_id in _failed:
                blocked |= accounts_of  # kept in order behind it
                continue
            batch.append((seq, execution_id, accounts_of))
            if len(batch) >= min(BATCH, limit - tried):
                break
        if not batch:
            return done
        async with uow_factory().reads() as uow:
            stored = await uow.settlement.parked_executions([seq for seq, _, _ in batch])
        exs: list[Execution] = []
        for seq, execution_id, accounts_of in batch:
            if seq not in stored:  # applied meanwhile (by a replica elected before this one)
                continue
            if accounts_of & blocked:  # behind one of the batch that could not be decoded
                blocked |= accounts_of
                continue
            try:
                ex = from_json(json.loads(stored[seq]))
                if ex.execution_id != execution_id:  # its row is deleted by the id it names
                    raise ValueError(f"the parked execution names {ex.execution_id!r}, its row {execution_id!r}")
            except Exception:  # noqa: BLE001 - left parked: held back with its accounts
                _unpark_failed(symbol, execution_id, accounts_of)
                blocked |= accounts_of
                continue
            exs.append(ex)
        applied, attempted = await _unpark_in_runs(symbol, exs, uow_factory, lock_wait, blocked)
        done, tried = done + applied, tried + attempted
    return done


async def _unpark_in_runs(symbol: str, exs: list[Execution], uow_factory: UowFactory, lock_wait: float,
                          blocked: set[str]) -> tuple[int, int]:
    """Apply parked executions (stream order) in the consumer's units (_unpark_unit), those
    behind a blocked account left (`blocked` grows). Returns how many were applied and how many
    tried (those behind a blocked account are not)."""
    done = tried = 0
    for _, unit in units(exs):
        applied, attempted = await _unpark_unit(symbol, unit, uow_factory, lock_wait, blocked)
        done, tried = done + applied, tried + attempted
    return done, tried


async def _unpark_unit(symbol: str, unit: list[Execution], uow_factory: UowFactory, lock_wait: float,
                       blocked: set[str]) -> tuple[int, int]:
    """A run in one transaction, or one execution alone. A run that cannot be applied together
    (one of it held, or failing, or what apply_execution tells apart) is split in two, each half
    tried likewise after the first: an execution that cannot apply costs a few transactions,
    not one per execution of its batch (review of round 24: 261 parked rows behind one that
    failed took 129), and, alone, blocks its accounts for the rest."""
    ready, _ = _behind(unit, blocked)
    if not ready:
        return 0, 0
    if len(ready) == 1:
        [ex] = ready
        try:
            return await apply_execution(ex, uow_factory, lock_wait, unpark=True), 1
        except asyncpg.LockNotAvailableError:
            blocked |= accounts(ex)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - left parked, tried again UNPARK_RETRY_FAILED seconds on
            _unpark_failed(symbol, ex.execution_id, accounts(ex))
            blocked |= accounts(ex)
        return 0, 1
    try:
        return await _apply_run(ready, uow_factory, lock_wait, None, unpark=True), len(ready)
    except (asyncio.CancelledError, _Parked):
        raise
    except asyncpg.LockNotAvailableError:
        # The accounts held now are blocked and the rest goes again as a run (as the consumer
        # finds them); when none is found, split.
        if held := await held_accounts_now({a for ex in ready for a in accounts(ex)}, uow_factory, lock_wait):
            blocked |= held
            return await _unpark_unit(symbol, ready, uow_factory, lock_wait, blocked)
    except Exception:  # noqa: BLE001 - split: each half applied, held or failed on its own
        log.debug("a run of parked executions could not be applied together; splitting it", exc_info=True,
                  extra={"executions": len(ready), "first": ready[0].execution_id})
    half = len(ready) // 2
    first = await _unpark_unit(symbol, ready[:half], uow_factory, lock_wait, blocked)
    second = await _unpark_unit(symbol, ready[half:], uow_factory, lock_wait, blocked)
    return first[0] + second[0], first[1] + second[1]


def _unpark_failed(symbol: str, execution_id: str, accounts_of: Collection[str]) -> None:
    UNPARK_FAILURES.labels(symbol).inc()
    _failed[execution_id] = time.monotonic() + UNPARK_RETRY_FAILED
    log.exception("a parked execution could not be applied; it and every later one of its accounts stay parked",
                  extra={"execution": execution_id, "symbol": symbol, "accounts": sorted(accounts_of),
                         "retryInSeconds": UNPARK_RETRY_FAILED})


def _export_parked(rows: list[tuple[str, datetime]]) -> None:
    """stockmesh_parked_executions and stockmesh_parked_oldest_seconds of (symbol, parked at),
    oldest first."""
    now = datetime.now(timezone.utc)
    count: dict[str, int] = {}
    oldest: dict[str, datetime] = {}
    for symbol, at in rows:
        count[symbol] = count.get(symbol, 0) + 1
        oldest.setdefault(symbol, at)
    for symbol in set(_exported) - set(count):  # none parked any more
        PARKED.labels(symbol).set(0)
        PARKED_OLDEST.labels(symbol).set(0)
    for symbol, n in count.items():
        PARKED.labels(symbol).set(n)
        PARKED_OLDEST.labels(symbol).set((now - oldest[symbol]).total_seconds())
    _exported.clear()
    _exported.update(count)


async def unpark_loop(uow_factory: UowFactory, every: float = 1.0, again: float = 0.05) -> None:
    """unpark, for good (the replica elected for it): every `every` seconds, or after `again`
    when a round applied something (round 24: what parks behind those it applies is applied in
    the next round, not a second later)."""
    while True:
        done = 0
        try:
            done = await unpark(uow_factory)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the next round tries again
            log.exception("applying parked executions failed")
        await asyncio.sleep(again if done else every)


class _Together(Exception):
    """Something in a run that apply_execution tells apart: the run goes one at a time."""


class _RunWrites:
    """What a run of executions writes, gathered in stream order and written in one statement
    per table (LedgerRepository's and SettlementRepository's many-row methods); the books it
    names are resolved to their ids in one statement too, when it writes."""

    def __init__(self) -> None:
        self.entries: list[model.JournalEntry] = []
        self.postings: list[tuple[int, object, model.BookRef, Decimal]] = []  # (slot, entry, book, amount)
        self.moves: dict[model.BookRef, tuple[Decimal, Decimal]] = {}  # customer book -> (posted, held) deltas
        self.captures: list[tuple[str, str, Decimal, object, str]] = []
        self.holds: dict[str, model.Hold] = {}
        self.unsettled: list[tuple[int, str, str, Decimal, date, str]] = []  # (slot, ...)
        self.events: list[tuple[str, str, dict]] = []
        self.slots = 0  # postings and proceeds lines take the postings' sequence in this order

    def slot(self) -> int:
        self.slots += 1
        return self.slots - 1

    def move(self, book: model.BookRef, posted: Decimal, held: Decimal) -> None:
        p, h = self.moves.get(book, (Decimal(0), Decimal(0)))
        self.moves[book] = (p + posted, h + held)

    def post(self, uow, entry: model.JournalEntry, *, from_held: model.BookRef | None = None,
             audit_type: str | None = None, audit_extra: dict | None = None) -> None:
        """LedgerRepository.post's effect (its arguments' meaning too), written with the rest.
        A debit beyond a balance is refused by the balances' CHECK constraints when written."""
        self.entries.append(entry)
        for p in entry.postings:
            self.postings.append((self.slot(), entry.entry_id, p.book, p.amount))
            if p.book.is_customer:
                self.move(p.book, p.amount, p.amount if p.book == from_held else Decimal(0))
        self.events.append(uow.ledger.entry_event(entry, audit_type, audit_extra))

    def capture(self, uow, hold: model.Hold | None, capture_id: str, amount: Decimal, counter: str,
                memo: model.FillMemo) -> None:
        """capture_in's effect for a trade (a FILL entry naming `memo`)."""
        counter = counter or model.CLEARING  # as capture_in
        if hold is None or counter == hold.account_id:
            raise _Together(f"capture {capture_id}: no such hold, or its own account as counter")
        hold.capture(amount)
        hold.count_fill(memo)
        entry = model.capture_entry(hold, amount, counter, memo)
        self.post(uow, entry, from_held=model.BookRef(hold.account_id, hold.asset), audit_type="HOLD_CAPTURED",
                  audit_extra={"holdId": hold.hold_id, "captureId": capture_id, "orderId": hold.order_id,
                               "counterAccount": counter, "captured": hold.captured, "status": hold.status.value})
        self.captures.append((hold.hold_id, capture_id, amount, entry.entry_id, counter))
        self.holds[hold.hold_id] = hold

    def count_fill(self, hold: model.Hold | None, memo: model.FillMemo) -> None:
        """LedgerRepository.count_fill's effect (a buy's fill worth less than a cent)."""
        if hold is not None and not hold.is_resolved:
            hold.count_fill(memo)
            self.holds[hold.hold_id] = hold

    def release(self, uow, hold: model.Hold) -> None:
        """release_in's effect."""
        left = hold.release()
        if left == 0:
            return
        self.move(model.BookRef(hold.account_id, hold.asset), Decimal(0), -left)
        self.holds[hold.hold_id] = hold
        self.events.append(uow.ledger.hold_event(hold, "HOLD_RELEASED", {"releasedNow": left}))

    async def write(self, uow, positions: dict[tuple[str, str], Position]) -> None:
        # The holds' books are known (lock_holds): those of the counter-accounts are looked up.
        books = await uow.ledger.book_ids([book for _, _, book, _ in self.postings] + list(self.moves))
        ids = await uow.ledger.posting_ids(self.slots) if self.slots else []
        if self.entries:
            await uow.ledger.add_entries(self.entries)
            await uow.ledger.add_postings([(ids[slot], entry, books[book], book.asset, amount)
                                           for slot, entry, book, amount in self.postings])
        if self.captures:
            await uow.ledger.add_captures(self.captures)
        if self.moves:
            await uow.ledger.move_balances({books[book]: moved for book, moved in self.moves.items()})
        if self.holds:
            await uow.ledger.save_holds(list(self.holds.values()))
        if positions:
            await uow.settlement.save_positions(positions)
        if self.unsettled:
            await uow.settlement.add_unsettled_many([(ids[slot], *rest) for slot, *rest in self.unsettled])
        # By account (their heads are locked already), each account's events in stream order.
        await uow.ledger.append_events(sorted(self.events, key=lambda e: e[0]))


async def _apply_run(exs: list[Execution], uow_factory: UowFactory, lock_wait: float | None,
                     parked_here: set[str] | None, *, unpark: bool = False) -> int:
    """Fills and ends in one transaction: what apply_execution does for each, in stream order,
    with the run's ids claimed, accounts, holds and positions locked, and everything written,
    in one statement each. `unpark`: as apply_execution's."""
    async with uow_factory() as uow:
        claim = await uow.settlement.claim_executions(
            exs, lock_wait=None if lock_wait is None else min(lock_wait, RUN_LOCK_WAIT), parked_here=parked_here,
            unpark=unpark)
        _check_parked(claim, exs)
        todo = claimed(exs, claim.ids)
        if not todo:
            if unpark:
                await uow.commit()
            return 0
        # Accounts first, in account order (migration 0007), then their rows.
        await uow.ledger.lock_accounts(a for ex in todo for a in (ex.account_id, ex.counter_account_id))
        steps = [(ex, legs(ex) if ex.type == FILL else None) for ex in todo]  # each fill's legs, once
        fills = [(ex, f) for ex, f in steps if f is not None]
        holds = await uow.ledger.lock_holds(
            [o for _, f in fills for o in (f.buyer_order, f.seller_order)] + [ex.order_id for ex in todo if ex.type != FILL])
        if fills and await uow.ledger.any_capture(
                [(f.buyer_order, f"{ex.execution_id}:cash") for ex, f in fills]
                + [(f.seller_order, f"{ex.execution_id}:shares") for ex, f in fills]):
            raise _Together("a capture of the run was made before")
        positions = await uow.settlement.lock_positions(
            {(a, ex.symbol) for ex, f in fills for a in (f.buyer_account, f.seller_account)})
        w = _RunWrites()
        for ex, f in steps:
            ended: list[str] = [ex.order_id]
            if f is not None:
                memo = _memo(ex, f)
                if f.cash:
                    w.capture(uow, holds.get(f.buyer_order), f"{ex.execution_id}:cash", f.cash, model.CLEARING,
                              memo)
                else:
                    w.count_fill(holds.get(f.buyer_order), memo)
                w.capture(uow, holds.get(f.seller_order), f"{ex.execution_id}:shares", Decimal(f.quantity),
                          f.buyer_account, memo)
                positions[(f.buyer_account, ex.symbol)].buy(f.quantity, f.price)
                _sell(positions[(f.seller_account, ex.symbol)], ex, f)
                if f.cash:
                    assert ex.trade_date is not None
                    w.unsettled.append((w.slot(), ex.execution_id, f.seller_account, f.cash, ex.trade_date, memo.trade))
                ended = [o for o, leaves in ((f.buyer_order, f.buyer_leaves), (f.seller_order, f.seller_leaves))
                         if leaves == 0]
            for order_id in ended:
                if (hold := holds.get(order_id)) is not None:
                    w.release(uow, hold)
        await w.write(uow, positions)
        await uow.commit()
        return len(todo)


def _memo(ex: Execution, f) -> model.FillMemo:
    """What a fill's captures say on both statements: "3 AAPL at 187.25"."""
    return model.FillMemo(ex.execution_id,
                          f"{f.quantity} {ex.symbol} at {fmt_at_tick(f.price, price_tick(ex.symbol, f.price))}",
                          f.quantity, f.price)


def _sell(sold: Position, ex: Execution, f) -> None:
    """The seller's position gives up a fill's shares. The book had them (the sell's hold was
    placed against it) but a position never told of some takes them at zero cost rather than
    stop every later execution of the symbol on this one (round 16 code review 2)."""
    if sold.quantity < f.quantity:
        log.error("a fill sells more shares than the seller's position knows of; the rest taken at zero "
                  "cost", extra={"executionId": ex.execution_id, "account": f.seller_account,
                                 "symbol": ex.symbol, "position": sold.quantity, "sold": f.quantity})
        sold.receive(f.quantity - sold.quantity, Decimal(0))
    sold.sell(f.quantity)


async def catch_up(day: date, uow_factory: UowFactory, journal: set[str], *, timeout: float,
                   progress: Callable[[str], None] | None = None, poll: float = 0.5) -> set[str]:
    """Wait, at most `timeout` seconds, until the ledger has applied every fill of the day in
    `journal` (a snapshot of the execution journal); returns the day's fills the ledger has
    then (those of the journal still missing are reconcile's to report). After a crash or
    under load the ledger's consumer may be behind the engine: settling then would leave the
    fills it has not applied yet for the next run and call them discrepancies."""
    deadline = time.monotonic() + timeout
    said = None
    while True:
        async with uow_factory() as uow:
            applied = await uow.settlement.fill_ids(day)
        missing = journal - applied
        if not missing:
            return applied
        if time.monotonic() >= deadline:
            if progress:  # round 16: a ledger only behind read as fills lost, with no word of the wait ending
                progress(f"stopped waiting after {timeout:g} s with {len(missing)} fills of the journal not applied by "
                         "the ledger yet (its execution consumer is behind or stopped): they are reported as "
                         "FILL_NOT_APPLIED; run settle again once it has caught up")
            return applied
        if progress and len(missing) != said:
            progress(f"waiting for the ledger to apply {len(missing)} fills of the journal")
            said = len(missing)
        await asyncio.sleep(poll)


# What can keep one fill's proceeds from settling whatever the others' (a seller's cash past
# the largest balance the ledger keeps, numeric(24,4); a settlement entry's key taken by another
# entry): a batch failing so is settled again one of its fills at a time, and a fill that fails
# alone is passed by and reported (SETTLE_FAILED), so that one account never stops every other
# seller's settlement (round 24 explorer). Anything else (the database gone, a deadlock, a bug)
# stops the settlement as before.
_ONE_FILL_FAILS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


class _BatchFailed(Exception):
    """A batch's writes failed with one of _ONE_FILL_FAILS (its __cause__): nothing written;
    `rows`, the proceeds it was settling."""

    def __init__(self, rows: list) -> None:
        super().__init__(f"a settlement batch of {len(rows)} failed")
        self.rows = rows


async def settle(day: date, uow_factory: UowFactory, *, batch: int = SETTLE_BATCH,
                 progress: Callable[[str], None] | None = None) -> SettlementReport:
    """Settle every fill traded on or before `day` that is still unsettled: its proceeds move
    from clearing to the seller's cash. Running it again settles nothing new. `progress` hears
    how many of how many after each batch (round 19: the count of a batch alone), and each fill
    that could not settle, which the report names too (SETTLE_FAILED) and the rest settle past."""
    report = SettlementReport(trading_day=day)
    passed: dict[str, tuple[asyncpg.Record, str]] = {}  # fill_id -> (its proceeds, why they did not settle)
    total = 0
    if progress:
        async with uow_factory() as uow:
            total = await uow.settlement.count_due(day)
    tries = 0
    while True:
        try:
            rows = await _settle_batch(day, uow_factory, batch, passed,
                                       lock_wait=SETTLE_LOCK_WAIT if tries < SETTLE_LOCK_TRIES else None)
            seen, tries = len(rows), 0
        except asyncpg.LockNotAvailableError:
            tries += 1
            await asyncio.sleep(SETTLE_LOCK_WAIT)
            continue
        except _BatchFailed as failed:  # its fills one at a time (review: not whatever is due first)
            seen, rows, before = len(failed.rows), [], len(passed)
            for r in failed.rows:
                try:
                    rows += await _settle_batch(day, uow_factory, 1, passed, only=[r["fill_id"]])
                except _BatchFailed as alone:
                    why = _why_not_settled(alone.__cause__)
                    passed[r["fill_id"]] = (r, why)
                    log.error("proceeds could not settle; passed by", extra={
                        "fill": r["fill_id"], "account": r["account_id"], "amount": str(r["amount"]), "why": why})
                    if progress:
                        progress(f"could not settle fill {r['fill_id']} ({r['account_id']} {fmt_cents(r['amount'])}): "
                                 f"{why}")
            if not rows and len(passed) == before:  # another settlement took them meanwhile: let it
                await asyncio.sleep(SETTLE_LOCK_WAIT)
        report.fills_settled += len(rows)
        report.amount_settled += sum((r["amount"] for r in rows), Decimal(0))
        if progress and rows:
            if report.fills_settled + len(passed) > total:  # a day still trading: fills applied since (--before-close)
                async with uow_factory() as uow:
                    total = report.fills_settled + await uow.settlement.count_due(day)  # the passed among them
            progress(f"settled {report.fills_settled} of {total} fills")
        if seen < batch:
            break
    report.discrepancies += [
        Discrepancy("SETTLE_FAILED", fill_id, f"proceeds of {r['account_id']} {fmt_cents(r['amount'])} not settled: {why}")
        for fill_id, (r, why) in sorted(passed.items())]
    async with uow_factory() as uow:
        report.fills_already_settled = await uow.settlement.count_settled(day) - report.fills_settled
    return report


async def _settle_batch(day: date, uow_factory: UowFactory, batch: int, passed: Collection[str], *,
                        only: list[str] | None = None, lock_wait: float | None = None) -> list:
    """Settle the next `batch` proceeds due (not those `passed`; with `only`, among those
    fills) in one transaction of a few statements whatever the batch's size (_RunWrites), so
    that it holds its sellers' accounts for milliseconds, not a statement per fill's entry,
    postings, balance, audit event and mark (round 24 rechaos: a batch of 100 so held them
    about 0.2 s, and hold placements of those accounts were refused ACCOUNT_BUSY meanwhile).
    `lock_wait`: no lock is waited for longer (LockNotAvailableError, nothing settled)."""
    async with uow_factory() as uow:
        rows = await uow.settlement.due(day, batch, passed=passed, only=only)
        if rows:
            await uow.ledger.lock_accounts((r["account_id"] for r in rows), lock_wait)
            w = _RunWrites()
            settled = []
            for r in rows:
                entry = settlement_entry(r["fill_id"], r["account_id"], r["amount"])
                w.post(uow, entry)
                settled.append((r["fill_id"], entry.entry_id))
            try:
                await w.write(uow, {})
                await uow.settlement.mark_settled(settled)
            except _ONE_FILL_FAILS as exc:
                raise _BatchFailed(rows) from exc
            await uow.commit()
        return rows


def _why_not_settled(exc: BaseException | None) -> str:
    if isinstance(exc, asyncpg.NumericValueOutOfRangeError):
        return f"the seller's cash would pass {model.MAX_BALANCE}, the largest balance the ledger keeps"
    if isinstance(exc, asyncpg.UniqueViolationError):
        return f"its settlement entry's key is another entry's ({exc.detail or exc})"
    return f"{type(exc).__name__}: {exc}"


def _terms(price: Decimal | None, quantity: int) -> str:
    return f"{quantity} at {fmt_price(price) if price is not None else 'no price'}"


def _moved_off(r) -> list[str]:
    """What a fill's captures moved that is not its price x quantity and its quantity."""
    said = []
    for what, asset, expected, moved, posted, also in (
            ("the buyer paid", model.CASH, r["cash"], r["paid"], r["paid_posted"], r["exact"]),
            ("the seller delivered", "shares", Decimal(r["quantity"]), r["moved"], r["moved_posted"], None)):
        if moved is None or (moved in (expected, also) and posted == moved):
            continue
        told = "nothing" if posted is None else _amount(asset, posted)
        said.append(f"{what} {_amount(asset, moved)}" + (f" (posted {told})" if posted != moved else "")
                    + f", not {_amount(asset, expected)}")
    return said


def _amount(asset: str, value: Decimal) -> str:
    """An amount in a discrepancy: as the API writes it, or exactly when a share count is not whole."""
    return amount_text(asset, value) if value == value.to_integral_value() or asset == model.CASH else str(value)


# A replace the engine has not answered for this long is a discrepancy (it answers in moments).
STALE_TRANSFER = timedelta(days=1)


async def reconcile(day: date, uow_factory: UowFactory, journal_fills: Mapping[str, tuple[Decimal | None, int]] | None,
                    report: SettlementReport, *, checked: set[str] | None = None,
                    settled: set[str] | None = None) -> SettlementReport:
    """Compare the ledger with the execution journal: every fill of the day applied and settled
    exactly once (two captures each), every hold of an ended order resolved, every asset
    summing to zero, clearing holding what it owes, every fill moving its own price x quantity
    and quantity (as the journal and the ledger's record of it say); and the ledger's
    materialised figures with its records (balances with postings and holds, settled proceeds
    with their entries). `journal_fills` are the day's fills (id: price, quantity) read from
    the execution stream itself (None when the stream is not reachable: then the ledger's own
    journal is used).

    Trading may go on while this runs, so two checks are limited to what a snapshot could see:
    a fill in the ledger and not in the journal is a discrepancy only among `checked` (the
    ledger's fills read before the journal was), and an unsettled fill only among `settled`
    (the ledger's fills read before settling began). None: every fill of the day."""
    d = report.discrepancies
    assert d is not None
    async with uow_factory() as uow:
        s = uow.settlement
        recorded = await s.fill_terms(day)
        applied = set(recorded)
        if journal_fills is not None:
            journal = set(journal_fills)
            d += [Discrepancy("FILL_NOT_APPLIED", f, "in the execution journal, not in the ledger")
                  for f in sorted(journal - applied)]
            d += [Discrepancy("FILL_NOT_IN_JOURNAL", f, "in the ledger, not in the execution journal")
                  for f in sorted((applied if checked is None else checked) - journal)]
            # Round 16: only each fill's presence was compared, not what it traded.
            d += [Discrepancy("FILL_OFF_JOURNAL", f, f"the journal says {_terms(*journal_fills[f])}, the ledger's "
                              f"record {_terms(*recorded[f])}")
                  for f in sorted(journal & applied) if journal_fills[f] != recorded[f]]  # 182.66 == 182.6600
        # ... nor whether what the ledger moved for it is what it traded (its entries and their
        # postings, which balances and proceeds then agree with).
        off = await s.fills_off_their_captures(day)
        d += [Discrepancy("FILL_AMOUNTS", r["execution_id"], f"{_terms(r['price'], r['quantity'])}: " + "; ".join(moved))
              for r in off if (moved := _moved_off(r))]
        d += [Discrepancy("FILL_CAPTURES", r["execution_id"], f"{r['captures']} captures, expected {r['expected']}")
              for r in off if r["captures"] != r["expected"]]
        failed = {x.reference for x in d if x.kind == "SETTLE_FAILED"}  # said why already
        d += [Discrepancy("FILL_UNSETTLED", r["execution_id"], "no settled proceeds")
              for r in await s.fills_not_settled(day)
              if (settled is None or r["execution_id"] in settled) and r["execution_id"] not in failed]
        d += [Discrepancy("HOLD_OPEN", r["hold_id"], f"order {r['order_id']} ended with {r['left']} still held")
              for r in await s.pending_holds_of_ended_orders()]
        d += [Discrepancy("TRANSFER_PENDING", r["to_hold_id"],
                          f"the replace of {r['from_hold_id']} asked at {r['created_at']:%Y-%m-%d %H:%M:%S} UTC is still "
                          f"undecided, and its reserve still holds {r['held']}")
              for r in await s.stale_transfers(STALE_TRANSFER)]
        d += [Discrepancy("ASSET_UNBALANCED", r["asset"], f"postings sum to {r['total']}")
              for r in await s.unbalanced_assets()]
        for r in await s.balances_off_the_books():
            book = f"{r['owner']} {r['asset']}"
            if r["posted"] != r["postings"]:
                d.append(Discrepancy("BALANCE_OFF_POSTINGS", book, f"balance {_amount(r['asset'], r['posted'])}, "
                                     f"postings sum to {_amount(r['asset'], r['postings'])}"))
            if r["held"] != r["pending"]:
                d.append(Discrepancy("HELD_OFF_HOLDS", book, f"held {_amount(r['asset'], r['held'])}, pending "
                                     f"holds reserve {_amount(r['asset'], r['pending'])}"))
        d += [Discrepancy("PROCEEDS_OFF_FILL", r["fill_id"],
                          f"proceeds of {r['account_id']} {fmt_cents(r['amount'])}, the buyer paid "
                          f"{fmt_cents(r['paid']) if r['paid'] is not None else 'nothing'} into clearing: not paid out")
              for r in await s.proceeds_off_their_fill()]
        d += [Discrepancy("PROCEEDS_OFF_SETTLEMENT", r["fill_id"],
                          f"proceeds {fmt_cents(r['amount'])}, settled {fmt_cents(r['settled'])}")
              for r in await s.proceeds_off_their_settlement()]
        clearing, owed = await s.clearing_and_owed()
        if clearing != owed:
            d.append(Discrepancy("CLEARING_UNBALANCED", model.CLEARING,
                                 f"holds {fmt_cents(clearing)} of cash and owes {fmt_cents(owed)} of unsettled "
                                 "proceeds: they should be equal"))
    return report
