"""After acceptance: the engine's executions move orders through their lifecycle, and every
change reaches the account's stream of order updates."""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import datetime
from typing import AsyncIterator, Awaitable, Callable, Protocol

from prometheus_client import Counter

from meshkit import aio
from meshkit.auth import token_expired
from meshkit.errors import DomainError, Unavailable
from meshkit.executions import (ACCEPTED, CANCEL_REJECTED, CANCELLED, EXPIRED, FILL, REJECTED, REPLACED, TRIGGERED,
                                Execution, claimed, units)
from order_svc.domain.model import ENGINE_END_REASONS, Fill, IllegalTransition, Order, RejectReason, Status
from order_svc.service_layer.handlers import REJECT_MESSAGES, Deps, now

log = logging.getLogger("order_svc.lifecycle")
UNKNOWN_ORDERS = Counter("stockmesh_executions_unknown_order_total",
                         "Executions naming an order this database does not have (passed over)")

_ENGINE_REJECTS = {"FOK_NOT_FILLABLE": RejectReason.FOK_NOT_FILLABLE, "SYMBOL_HALTED": RejectReason.SYMBOL_HALTED}
_ENGINE_REJECT_MESSAGES = {
    RejectReason.FOK_NOT_FILLABLE: "the fill-or-kill order could not fill entirely at once at its price",
    RejectReason.SYMBOL_HALTED: REJECT_MESSAGES[RejectReason.SYMBOL_HALTED],
}

# Why the engine refused a replace (CANCEL_REJECTED reasons), as the rejected replacement says.
_REPLACE_REFUSALS = {
    "UNKNOWN_ORDER": f"{REJECT_MESSAGES[RejectReason.ORDER_NOT_ACTIVE]} (it filled, expired or was cancelled before "
                     "the engine came to the replace)",
    "DUPLICATE_ORDER_ID": "the engine already knows the replacement's order id",
    "INVALID": "the engine found the replacement invalid",
}

# What order_svc applies in runs: every execution that changes orders. An acceptance changes
# nothing (no transaction at all) and stands alone between runs.
_TOGETHER = frozenset({FILL, CANCELLED, EXPIRED, REJECTED, REPLACED, CANCEL_REJECTED, TRIGGERED})


def in_runs(ex: Execution) -> bool:
    """Whether order_svc applies `ex` with its neighbours in one run (units' predicate; the
    ledger's is meshkit.executions.in_runs)."""
    return ex.type in _TOGETHER


async def apply_execution(ex: Execution, deps: Deps) -> bool:
    """Apply one execution in one transaction (a run of one, _apply_run); False for a repeat
    (dropped by its id) and for an acceptance, which changes nothing (no transaction at all)."""
    if ex.type == ACCEPTED:
        return False
    return await _apply_run([ex], deps) == 1


async def apply_executions(exs: list[Execution], deps: Deps) -> int:
    """Apply executions in stream order: each run of those that change orders (fills, ends,
    replaces, refused cancels and replaces, triggers) in one transaction of five statements
    however long it is; an acceptance, which changes nothing, alone (apply_execution). Returns
    how many were applied (repeats and acceptances are not).

    A consumer behind applies its backlog in few transactions (round 20: one transaction of ~8
    statements per fill, one after the other, applied ~40-80 fills a second per symbol; round
    21: replaces and refused cancels, ~9 % of executions, still one at a time, cut the runs
    short). One execution alone is a run of one: there is one implementation of what each
    kind does to its orders (_Run)."""
    applied = 0
    for _, unit in units(exs, in_runs):
        applied += await (_apply_run_or_alone(unit, deps) if in_runs(unit[0]) else apply_execution(unit[0], deps))
    return applied


async def _apply_run_or_alone(exs: list[Execution], deps: Deps) -> int:
    """_apply_run; when an execution of the run does not fit its order (IllegalTransition: the
    engine and order_svc disagree), the run's executions one at a time (apply_execution). That
    execution stops the consumer, retried in place for ever; one at a time, those before it are
    applied meanwhile, as they were before runs, rather than wait with it (round 20 review: the
    whole run, up to 32, did, its fills unseen by customers). Anything else (a lost connection,
    a deadlock) fails the batch, which is retried whole."""
    try:
        return await _apply_run(exs, deps)
    except IllegalTransition:
        if len(exs) == 1:
            raise
        log.warning("an execution of a run does not fit its order; applying the run one at a time",
                    extra={"count": len(exs), "symbol": exs[0].symbol, "firstExecutionId": exs[0].execution_id})
    applied = 0
    for ex in exs:
        applied += await apply_execution(ex, deps)
    return applied


async def _apply_run(exs: list[Execution], deps: Deps) -> int:
    """A run in one transaction: its ids claimed, the orders it touches locked (in account
    order; a replace's cancel locks its pending replacement too), the orders moved in memory in
    stream order (_Run), the changes recorded (by account, each account's in stream order) and
    then the orders' rows written (with the sequence of the update that told a trigger): five
    statements however long the run. Returns how many were applied (not repeats)."""
    async with deps.uow() as uow:
        todo = claimed(exs, await uow.orders.claim_executions([ex.execution_id for ex in exs]))
        if not todo:
            return 0
        named = {ref for ex in todo for ref in _named(ex)}
        replacing = {ex.order_id for ex in todo if ex.type == CANCELLED and ex.reason == "REPLACED"}
        orders = await uow.orders.lock_orders([i for i in map(_uuid, named) if i is not None],
                                              [i for i in map(_uuid, replacing) if i is not None])
        run = _Run(orders, now(), uow.orders.change)
        for ex in todo:
            run.apply(ex)
        order = sorted(range(len(run.changes)), key=lambda i: run.changes[i][0])  # by account; stable
        sequences = await uow.orders.record_changes([run.changes[i] for i in order])
        triggered_in = {run.triggers[i]: seq for i, seq in zip(order, sequences) if i in run.triggers}
        await uow.orders.save_execution_results(list(run.written.values()), triggered_in)
        await uow.commit()
        return len(todo)


def _named(ex: Execution) -> tuple[str, ...]:
    """The orders an execution names (lock_orders), besides a replace's pending replacement."""
    if ex.type == FILL:
        return ex.order_id, ex.counter_order_id
    if ex.type == REPLACED:
        return ex.order_id, ex.new_order_id
    if ex.type == CANCEL_REJECTED and ex.new_order_id:
        return (ex.new_order_id,)
    return (ex.order_id,)


class _Run:
    """A run's executions applied in memory, in stream order, to the orders locked for it:
    what each kind of execution does to its orders, the changes to record (a refused cancel's:
    its audit event only), which of them tells an order's trigger, and the orders to write."""

    def __init__(self, orders: dict[uuid.UUID, Order], at: datetime, change: Callable[..., tuple]) -> None:
        self.orders, self.at, self._change = orders, at, change
        self.changes: list[tuple] = []
        self.triggers: dict[int, uuid.UUID] = {}  # index in changes -> the order whose trigger it tells
        self.written: dict[uuid.UUID, Order] = {}

    def changed(self, o: Order, fill: Fill | None = None, event: str | None = None, *, trigger: bool = False) -> None:
        o.updated_at, self.written[o.order_id] = self.at, o
        if trigger:
            self.triggers[len(self.changes)] = o.order_id
        self.changes.append(self._change(o, fill, event))

    def apply(self, ex: Execution) -> None:
        orders, at = self.orders, self.at
        if ex.type == FILL:
            assert ex.price is not None and ex.executed_at is not None
            fill = Fill(ex.execution_id, ex.price, ex.quantity, ex.executed_at)
            # The two sides in account order, as every change is recorded (by account).
            for _, order_id in sorted(((ex.account_id, ex.order_id), (ex.counter_account_id, ex.counter_order_id))):
                if (o := _known(orders, order_id, ex)) is not None:
                    o.fill(ex.quantity, ex.price)
                    self.changed(o, fill)
        elif ex.type in (CANCELLED, EXPIRED, REJECTED):
            o = _known(orders, ex.order_id, ex)
            if o is not None and not o.status.is_terminal:
                _end(o, ex)
                self.changed(o)
            if o is not None and ex.type == CANCELLED and ex.reason == "REPLACED":
                new = next((r for r in orders.values() if r.replaces == o.order_id and r.status is Status.PENDING_NEW),
                           None)  # locked with the run (lock_orders' `replacing`)
                if new is not None:  # the replace asked for no more than the order had filled
                    new.reject(RejectReason.ORDER_NOT_ACTIVE, _filled_before_replace(o))
                    self.changed(new)
        elif ex.type == TRIGGERED:
            # The stop was reached: still NEW (or PARTIALLY_FILLED), now working as a market or
            # limit order; the customer sees it (an OrderUpdate with triggered_at).
            o = _known(orders, ex.order_id, ex)
            if o is not None and o.triggered(ex.executed_at or at):  # the engine's time, as a fill's
                self.changed(o, event="ORDER_TRIGGERED", trigger=True)
        elif ex.type == REPLACED:
            old, new = _known(orders, ex.order_id, ex), _known(orders, ex.new_order_id, ex)
            # The old order ends before the new one works, in the account's updates too: a
            # client that keeps its open orders from them never sees both working (round 27:
            # the new order's NEW came one sequence before the old one's CANCELLED, and the
            # quantity counted twice for that update). Both in one transaction, as before.
            if old is not None and not old.status.is_terminal:
                old.replaced(uuid.UUID(ex.new_order_id))  # its cancel request, if any, ends with it
                self.changed(old)
            if new is not None and new.status is Status.PENDING_NEW and old is not None:
                new.confirm_replacement(old)
                # A triggered STOP_LIMIT's replacement shows the trigger from this update on, in
                # a replay as it did live (round 19: without its own trigger sequence, the replay
                # judged by times and showed it on the PENDING_NEW update before).
                self.changed(new, trigger=new.triggered_at is not None)
        elif ex.type == CANCEL_REJECTED:
            if ex.new_order_id:
                new = _known(orders, ex.new_order_id, ex)
                if new is not None and new.status is Status.PENDING_NEW:
                    new.reject(*_replace_refusal(ex))
                    self.changed(new)
                return
            o = _known(orders, ex.order_id, ex)
            if o is not None and (o.cancel_requested or o.status.is_terminal):
                # The flag only: not the order's updated_at, which is its last OrderUpdate's
                # (round 16: it moved with no update sent); no OrderUpdate, an audit event. An
                # order that ended while its cancel was on the way had the flag cleared by its
                # end (Order.transition): the engine's refusal of that cancel is still recorded.
                o.cancel_requested = False
                self.written[o.order_id] = o
                self.changes.append(self._change(o, event="CANCEL_REJECTED", update=False))


def _uuid(order_id: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(order_id)
    except ValueError:
        return None  # not an id of ours: _known reports it


def _known(orders: dict[uuid.UUID, Order], order_id: str, ex: Execution) -> Order | None:
    """The locked order an execution of a run names; None (logged and counted) for one
    order_svc does not have. Every order the engine knows came from order_svc's outbox, so that
    happens only when the database was restored alone to an earlier point (docs/operations.md:
    not supported): the execution is passed over, but no longer in silence (round 15)."""
    o = orders.get(_uuid(order_id))  # type: ignore[arg-type]
    if o is None:
        _unknown(ex, order_id)
    return o


def _end(o: Order, ex: Execution) -> None:
    """A CANCELLED, EXPIRED or REJECTED execution's effect on its order (not yet ended)."""
    if ex.type == REJECTED:
        # Any other reason (INVALID, DUPLICATE_ORDER_ID) is the engine refusing what
        # order_svc validated: INTERNAL, not the FOK's reason (round 15).
        reason = _ENGINE_REJECTS.get(ex.reason, RejectReason.INTERNAL)
        o.reject(reason, _ENGINE_REJECT_MESSAGES[reason] if ex.reason in _ENGINE_REJECTS
                 else f"the engine rejected the order: {ex.reason or reason.value}")
    else:
        o.end(Status.CANCELLED if ex.type == CANCELLED else Status.EXPIRED,
              ENGINE_END_REASONS.get(ex.reason or ("SESSION_CLOSE" if ex.type == EXPIRED else "")))


def _replace_refusal(ex: Execution) -> tuple[RejectReason, str]:
    """Why a replace the engine refused (CANCEL_REJECTED) rejects its replacement."""
    reason = _ENGINE_REJECTS.get(ex.reason, RejectReason.ORDER_NOT_ACTIVE)
    return reason, (_ENGINE_REJECT_MESSAGES[reason] if ex.reason in _ENGINE_REJECTS
                    else _REPLACE_REFUSALS.get(ex.reason or "UNKNOWN_ORDER",
                                               f"the engine refused to replace the order ({ex.reason})"))


def _filled_before_replace(o: Order) -> str:
    """Why the replacement of `o` is rejected when the engine ended `o` instead (CANCELLED of
    reason REPLACED: the replace asked for no more than it had filled)."""
    return f"order {o.order_id} had already filled {o.filled_quantity} shares; it was cancelled instead"


def _unknown(ex: Execution, order_id: str) -> None:
    UNKNOWN_ORDERS.inc()
    log.error("execution for an order this database does not have passed over",
              extra={"executionId": ex.execution_id, "orderId": order_id, "symbol": ex.symbol})


class AfterSequenceAhead(DomainError):
    """A stream asked to start after a sequence the account has not reached: a sequence kept
    from another account, or from before a database restore. Such a stream would stay silent
    until the account caught up, live updates included, so it is refused at once with the
    account's latest sequence, where the client can start again (gRPC's OUT_OF_RANGE: past the
    end). Sequences are taken in the transaction of the change and sent only once committed,
    so any sequence a client was sent is at most the latest one a later read sees: a correct
    after_sequence is never refused."""
    code = "OUT_OF_RANGE"
    default_reason = "AFTER_SEQUENCE_AHEAD"

    def __init__(self, after: int, latest: int) -> None:
        super().__init__(f"after_sequence {after} is past the account's latest order update, {latest}: "
                         f"open the stream again with after_sequence = {latest} (or lower, to replay more)",
                         metadata={"afterSequence": str(after), "latestSequence": str(latest)})


class Wakeups(Protocol):
    closing: bool  # the process is shutting down: streams end

    def subscribe(self, account_id: str) -> asyncio.Event: ...

    def unsubscribe(self, account_id: str, event: asyncio.Event) -> None: ...


async def stream_updates(account_id: str, after: int | None, deps: Deps, wakeups: Wakeups, *,
                         page: int = 500, poll: float = 5.0,
                         positioned: Callable[[int], Awaitable[None]] | None = None,
                         ends_at: float | None = None) -> AsyncIterator[tuple[int, Order, Fill | None]]:
    """Every update of the account with a sequence above `after` (None: above its latest one
    now), then live ones, until `ends_at` (seconds since the epoch: its token's end, when it
    ends UNAUTHENTICATED TOKEN_EXPIRED, within a poll interval); `positioned` is told that
    sequence once the stream listens.
    An `after` above the account's latest sequence is refused (AfterSequenceAhead) before that.

    The listener is registered before the first read, and each read asks for what follows the
    last sequence sent, so nothing is missed and nothing is sent twice at the switch from
    replay to live."""
    event = wakeups.subscribe(account_id)
    try:
        async with deps.uow().reads() as uow:
            latest = await uow.orders.latest_update(account_id)
        if after is None:
            after = latest
        elif after > latest:
            raise AfterSequenceAhead(after, latest)
        if positioned is not None:
            await positioned(after)
        last = after
        while True:
            if wakeups.closing:
                # UNAVAILABLE: the status every gRPC client retries; through Envoy the stream
                # opens again on a running order_svc, from the last update the client saw.
                raise Unavailable(f"order_svc is shutting down: open the stream again with after_sequence = "
                                  f"{last}, the last update sent on this one", reason="SHUTTING_DOWN",
                                  # lowerCamelCase like every ErrorInfo key; the snake_case one for
                                  # clients written against its first form
                                  metadata={"afterSequence": str(last), "after_sequence": str(last)})
            if ends_at is not None and time.time() >= ends_at:
                raise token_expired(f"the stream with after_sequence = {last}, the last update sent on this one,",
                                    {"afterSequence": str(last)})
            event.clear()
            async with deps.uow() as uow:
                batch = await uow.orders.updates_after(account_id, last, page)
            for seq, order, fill in batch:
                yield seq, order, fill
                last = seq
            if len(batch) < page:
                await aio.wait_set(event, poll)  # a missed notification costs at most one poll interval
    finally:
        wakeups.unsubscribe(account_id, event)

