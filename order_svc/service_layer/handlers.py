"""Order placement as a saga whose every step is persisted and idempotent:

  1. validate (a business rejection is recorded at once, as a REJECTED order);
  2. place the hold in the ledger (hold id = order id, derived from the account, the
     client_order_id and the request: every retry and duplicate asks for the same hold);
  3. record the order, accepted (NEW) with its engine command in the outbox, or REJECTED when
     the ledger refused the hold, in one statement that also claims the order's id;
  4. the relay publishes the outbox to JetStream (`orders.<SYMBOL>`, Nats-Msg-Id = the command
     id: a new order's is its order id).

A process killed between 2 and 3 leaves a hold without an order: the reaper
(reap_orphaned_holds) finds it among the holds not yet checked against their order, claims the
order's id (so no late insert can record it any more) and gives the hold back. A retry or a
duplicate of the request finds the order recorded (the insert's conflict), or asks for the same
hold again and records it, or, once the reaper has undone the first attempt, hears that the
client_order_id's placement was undone (PlacementUndone).

Replacements are recorded before their hold transfer (PENDING_NEW with `replaces`) and driven
forward by whoever comes next (a retry, the recovery loop), as are orders recorded PENDING_NEW
by earlier versions.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import AsyncIterator, Awaitable, Callable, Protocol

import asyncpg

from meshkit import aio, bus, calendar, failpoints
from meshkit.errors import ResourceExhausted, Unavailable
from meshkit.money import fmt_price
from meshkit.prototime import set_time
from meshkit.ratelimit import Limit, RateLimiter
from meshkit.symbols import listed
from meshkit.marketdata import Touch
from order_svc.domain import model
from order_svc.domain.model import Order, OrderRequest, OrderType, RejectReason, Side, Status
from order_svc.service_layer.unit_of_work import OrderUnitOfWork
from order_svc.service_layer.writes import SagaWrites
from stockmesh.common.v1 import common_pb2
from stockmesh.matching.v1 import matching_pb2

log = logging.getLogger("order_svc.saga")


class Holds(Protocol):
    async def place(self, hold_id: str, account_id: str, order_id: str, asset: str,
                    amount: Decimal, client_key: str = "", answer_kept_key: bool = False) -> model.Refusal | None: ...

    async def get(self, hold_id: str) -> tuple[str, str, Decimal, bool] | None: ...

    async def release(self, hold_id: str) -> None: ...

    async def await_executions(self, account_id: str) -> bool: ...

    async def unchecked(self, older_than: float, orphan_age: float, limit: int,
                        after: model.UncheckedHold | None = None) -> list[model.UncheckedHold]: ...

    async def mark_checked(self, hold_ids: list[str]) -> None: ...

    async def transfer(self, from_hold_id: str, to_hold_id: str, order_id: str, account_id: str, asset: str,
                       unit: Decimal, reserve: Decimal, client_key: str = "") -> model.Refusal | None: ...

    async def register_key(self, account_id: str, client_key: str, order_id: str) -> None: ...

    async def cancel_transfer(self, to_hold_id: str) -> None: ...


class Quotes(Protocol):
    async def touch(self, symbol: str) -> Touch: ...


class HaltList(Protocol):
    async def is_halted(self, symbol: str) -> bool: ...


@dataclass
class Deps:
    uow: Callable[[], OrderUnitOfWork]
    holds: Holds
    quotes: Quotes
    halts: HaltList
    limiter: RateLimiter
    account_limit: Limit
    symbol_limit: Limit
    namespace: str
    wake_relay: Callable[[], None]
    market_collar: Decimal = Decimal("0.05")  # market buys hold ask × (1 + collar)
    price_band: Decimal = Decimal("0.20")  # limit / stop prices within ±20 % of the reference
    write_batches_in_flight: int = 1  # saga statements in flight per step; more orders wait and share the next
    # Seconds a cancel's or a replace's transaction waits for a lock (its order's row, held by
    # an execution run for milliseconds, or by a stuck session for ever) before it is answered
    # UNAVAILABLE ORDER_BUSY, rather than the pool's 30 s command timeout (ORDER_LOCK_WAIT_SECONDS).
    lock_wait: float = 2.0
    writes: SagaWrites = field(init=False)
    # Placements in flight, each finished whatever its caller does (place_order); waited for at
    # shutdown before the pool and the ledger's channel close.
    placing: aio.Finishing = field(init=False)

    def __post_init__(self) -> None:
        self.writes = SagaWrites(self.uow, in_flight=self.write_batches_in_flight)
        self.placing = aio.Finishing(log, "placement")


def now() -> datetime:
    return datetime.now(timezone.utc)


REJECT_MESSAGES = {
    RejectReason.SYMBOL_HALTED: "trading in this symbol is halted",
    RejectReason.NO_LIQUIDITY: "no quote on the other side of the book to price a market order",
    RejectReason.INSUFFICIENT_FUNDS: "available cash does not cover the order",
    RejectReason.INSUFFICIENT_SHARES: "available shares do not cover the order",
    RejectReason.ORDER_NOT_ACTIVE: "the order being replaced has ended",
}


_SHORT = (RejectReason.INSUFFICIENT_FUNDS, RejectReason.INSUFFICIENT_SHARES)


def _reject(o: Order, refused: model.Refusal) -> None:
    """The ledger refused the order's hold: REJECTED, in the ledger's words when it gave any."""
    o.reject(refused.reason, refused.message or REJECT_MESSAGES[refused.reason])


async def _market_checks(req: OrderRequest, deps: Deps, at: datetime, *,
                         stop_applies: bool = True) -> tuple[Touch | None, RejectReason | None, str]:
    """Session, halt and price band: the checks every new order (placed or replacing) passes.
    The band leaves out the stop of a replaced order that has triggered (`stop_applies`)."""
    if (closed := calendar.why_closed(at)) is not None:
        return None, RejectReason.MARKET_CLOSED, closed
    touch = await deps.quotes.touch(req.symbol)
    # Halted by the engine (HaltSymbol; the feed says so), or by an operator's row in orders.halts.
    if touch.halted or await deps.halts.is_halted(req.symbol):
        return None, RejectReason.SYMBOL_HALTED, REJECT_MESSAGES[RejectReason.SYMBOL_HALTED]
    reference = touch.last or listed()[req.symbol].reference_price
    # The band is around the last trade; before any, around the symbol's listed reference price.
    around = "the last trade" if touch.last else "the reference price (no trade yet)"
    for name, price in (("limit", req.limit_price), ("stop", req.stop_price if stop_applies else None)):
        if price is not None and model.outside_band(price, reference, deps.price_band):
            return None, RejectReason.PRICE_OUT_OF_COLLAR, (
                f"{name} price {fmt_price(price)} is more than {deps.price_band * 100:.0f}% from {around} "
                f"{fmt_price(reference)}")  # written as the order's prices are
    return touch, None, ""


async def _business_checks(req: OrderRequest, deps: Deps, at: datetime) -> tuple[model.HoldPlan | None, RejectReason | None, str]:
    touch, reason, message = await _market_checks(req, deps, at)
    if touch is None:
        return None, reason, message
    plan = model.plan_hold(req, best_bid=touch.bid, best_ask=touch.ask, collar=deps.market_collar)
    if isinstance(plan, RejectReason):
        return None, plan, REJECT_MESSAGES[plan]
    return plan, None, ""


async def _within_limits(req: OrderRequest, deps: Deps) -> None:
    """A token from the account's bucket and the symbol's (RESOURCE_EXHAUSTED when either is empty)."""
    await deps.limiter.check([(f"acct:{req.account_id}", deps.account_limit, "this account"),
                              (f"sym:{req.symbol}", deps.symbol_limit, req.symbol)])


async def place_order(req: OrderRequest, deps: Deps) -> Order:
    """PlaceOrder: the order, NEW or REJECTED, or the error.

    A caller that goes away (its deadline passed, its connection dropped: the server cancels
    the call) stops the placement while it is checked (rate limits, market, funds' plan), as
    any call; from its hold on, it is finished without its caller (_hold_and_record in
    deps.placing). Before, a placement cancelled between its hold and its record (the hold's
    batch goes on without it: meshkit.batching) left the hold without an order, cash or shares
    the customer could neither use nor see as an order's, until the reaper gave it back two
    minutes later (round 23: 17 of 30 PlaceOrders sent with a deadline of a few milliseconds).
    The client's retry with the same client_order_id then gets the order. Only the hold's and
    the record's batched statements go on without a caller, and the hold's went on before; the
    checks do not, so callers that give up add no work past Envoy's limit of commands in flight
    but their records (review, round 23)."""
    mine = req.fingerprint()
    try:
        await _within_limits(req, deps)
    except ResourceExhausted:
        # A retry of a placement recorded before gets its order, limited or not (round 17: a
        # client retrying an accepted order while over its limit got RESOURCE_EXHAUSTED). Read
        # only when refused (a lookup before every placement cost the p50 14 ms: benchmarks),
        # and the refused ones' lookups share one statement at a time (a flood past the limits
        # must not take the pool's connections).
        found = await deps.writes.recorded(req.account_id, req.client_order_id)
        if found is None:
            raise
        at = now()
        return await _placed_before(Order(order_id=model.order_id_for(req.account_id, req.client_order_id, mine),
                                          request=req, status=Status.PENDING_NEW, created_at=at, updated_at=at),
                                    mine, found, False, deps, looked_up=True)
    at = now()
    plan, reason, message = await _business_checks(req, deps, at)
    order = Order(order_id=model.order_id_for(req.account_id, req.client_order_id, mine), request=req,
                  status=Status.PENDING_NEW, created_at=at, updated_at=at)
    if plan is None:
        assert reason is not None
        order.reject(reason, message)  # a business rejection is an order, recorded like any other
    return await deps.placing.run(_hold_and_record(order, plan, mine, deps))


async def _hold_and_record(order: Order, plan: model.HoldPlan | None, mine: str, deps: Deps) -> Order:
    """The rest of a placement, from its hold (none for an order rejected already) to its
    record: finished whatever its caller does (place_order)."""
    outbox = None
    if plan is None:  # rejected before any hold: the ledger keeps its client_order_id all the same
        try:
            await _keep_client_key(order, deps)
        except model.ClientKeyTaken as taken:  # the id was used for another order: nothing recorded
            return await _placed_before(order, mine, None, False, deps, key_holder=taken.order_id,
                                        key_holder_undone=taken.released)
        failpoints.hit("place.after_key")
    else:
        order.hold_asset, order.hold_amount, order.collar_price = plan.asset, plan.amount, plan.collar_price
        try:
            try:
                refused = await _place_hold(order, deps, answer_kept_key=True)
            except model.ClientKeyKept:  # this request was answered before without a hold: nothing held now
                found = await deps.writes.recorded(order.account_id, order.request.client_order_id)
                if found is not None:
                    return await _placed_before(order, mine, found, False, deps, looked_up=True)
                # None recorded: its first attempt died between the key and its record (or is
                # still there): this one places the order, past its key.
                refused = await _place_hold(order, deps)
            # The customer may be ahead of the ledger (an order just shown FILLED or CANCELLED,
            # its shares or cash not applied there yet): the refusal stands once they are. The
            # refusal kept the key for this order: asked again past it.
            if refused is not None and refused.reason in _SHORT and await deps.holds.await_executions(
                    order.account_id):
                refused = await _place_hold(order, deps)
        except model.HoldResolved:  # placed by an earlier attempt, and resolved since
            return await _placed_before(order, mine, None, False, deps)
        except model.ClientKeyTaken as taken:  # the id was used for another order: no hold placed
            return await _placed_before(order, mine, None, False, deps, key_holder=taken.order_id,
                                        key_holder_undone=taken.released)
        failpoints.hit("place.after_hold")
        if refused is not None:
            _reject(order, refused)
        else:
            order.transition(Status.NEW)
            outbox = (order_subject(deps.namespace, order), str(order.order_id),
                      new_order_command(order).SerializeToString())
    # One statement (the insert, its id's claim, the change it records, the engine command),
    # its own transaction, shared with the orders recorded at the same moment.
    stored, fingerprint = await deps.writes.record(order, mine, outbox)
    failpoints.hit("place.after_accept")
    if stored is None or fingerprint is not None:  # not ours to insert: recorded or undone before
        return await _placed_before(order, mine, (stored, fingerprint) if stored else None, outbox is not None, deps,
                                    looked_up=True)
    if stored.status is Status.NEW:
        deps.wake_relay()
    return stored


async def _keep_client_key(order: Order, deps: Deps) -> None:
    """Have the ledger keep the client_order_id of an order that gets no hold of its own (one
    rejected before its hold; a replacement rejected), for that order. The ledger's hold
    statement refuses a hold under a client_order_id that another order of the account has
    (ClientKeyTaken), so a placement reusing the id with other parameters is refused before
    it holds anything. Before, it knew only the ids of orders that had a hold: such a
    placement held the cash or shares until its order's insert found the id taken, and a
    concurrent order of the account could be rejected for want of them (round 27, F1). Only
    rejections pay this call; accepted orders' hold statements keep their ids themselves.

    ClientKeyTaken: another order of the account has the id. The ledger unreachable (or the
    account busy there): logged, and the rejection is recorded and answered all the same; the
    orders table still refuses the id's reuse, only a first reuse with other parameters may
    then hold and give back as before."""
    try:
        await deps.holds.register_key(order.account_id, order.request.client_order_id, str(order.order_id))
    except Unavailable as exc:
        log.warning("the ledger could not keep a rejected order's client_order_id; the rejection is recorded "
                    "without it", extra={"orderId": str(order.order_id), "error": str(exc)})


async def _keep_replacement_key(o: Order, deps: Deps) -> None:
    """_keep_client_key of a replacement (before its record; again when the ledger refuses its
    transfer, for one recorded by an earlier version): the orders table decides whose the
    client_order_id is, so another order that has the key in the ledger keeps it there (the
    record finds that order, or, if it was never recorded, the replacement takes the id)."""
    with contextlib.suppress(model.ClientKeyTaken):
        await _keep_client_key(o, deps)


async def _place_hold(order: Order, deps: Deps, *, answer_kept_key: bool = False) -> model.Refusal | None:
    """Place a new order's hold. An earlier attempt of this placement (the same id, so the same
    request) that died before recording its order may have placed it with another amount: a
    market buy's hold follows the ask of its moment. That hold is then the order's, adopted
    with the collar it covers, so the retry completes the placement instead of waiting for the
    reaper to undo it. `answer_kept_key`: ClientKeyKept, nothing held, when the ledger kept the
    order's client_order_id for it without a hold (an earlier attempt was refused or rejected)."""
    try:
        return await deps.holds.place(order.hold_id, order.account_id, str(order.order_id),
                                      order.hold_asset, order.hold_amount, order.request.client_order_id,
                                      answer_kept_key)
    except model.HoldTaken:
        req = order.request
        found = await deps.holds.get(order.hold_id)
        if (found is None or found[:2] != (str(order.order_id), order.hold_asset)
                or (req.type, req.side) != (OrderType.MARKET, Side.BUY)):
            raise Unavailable(f"the ledger holds something else under hold id {order.hold_id}") from None
        _, _, amount, pending = found
        if not pending:
            raise model.HoldResolved(order.hold_id) from None
        order.hold_amount, order.collar_price = amount, model.collar_of_hold(req, amount)
        return None


async def _placed_before(order: Order, mine: str, found: tuple[Order, str] | None, placed: bool,
                         deps: Deps, *, looked_up: bool = False, key_holder: str = "",
                         key_holder_undone: bool = False) -> Order:
    """The answer to a placement whose order was not ours to insert (`placed`: whether we put
    a hold in place under its id; `key_holder`: the other order whose hold carries the
    client_order_id, `key_holder_undone`: that hold was given back): the account's order with
    this client_order_id, `found` or (unless already `looked_up`) read now, if any."""
    req = order.request
    if found is None and not looked_up:
        async with deps.uow().reads() as uow:
            found = await uow.orders.by_client_order_id(req.account_id, req.client_order_id)
    if found is None and key_holder and key_holder_undone:  # that placement died after its hold, and was undone
        raise model.DuplicateClientOrderId(
            f"client_order_id {req.client_order_id!r} was used for another order ({key_holder}) whose placement "
            "was interrupted and undone (its hold given back): use a new client_order_id",
            metadata={"clientOrderId": req.client_order_id, "orderId": key_holder})
    if found is None and key_holder:  # that order's placement is in flight, or died after its hold
        raise model.DuplicateClientOrderId(
            f"client_order_id {req.client_order_id!r} was used for another order ({key_holder}) whose placement "
            "has not completed: retry that request, or use a new client_order_id",
            metadata={"clientOrderId": req.client_order_id, "orderId": key_holder})
    if found is None:  # the reaper claimed the id: the first attempt died after its hold
        if placed:
            await deps.holds.release(order.hold_id)
        raise model.PlacementUndone(
            f"the first placement with client_order_id {req.client_order_id!r} was interrupted and undone "
            "(its hold given back); place the order again with a new client_order_id",
            metadata={"clientOrderId": req.client_order_id})
    stored, fingerprint = found
    ours = stored.order_id == order.order_id
    if placed and (not ours or stored.status is Status.REJECTED):
        # Our hold went in under another id than the stored order's, or after it was rejected.
        await deps.holds.release(order.hold_id)
    if fingerprint != mine:
        raise model.DuplicateClientOrderId(
            f"client_order_id {req.client_order_id!r} was used for another order ({stored.order_id})",
            metadata={"clientOrderId": req.client_order_id, "orderId": str(stored.order_id)})
    if stored.status is Status.PENDING_NEW:  # recorded by an earlier version, before its hold
        return await advance(stored, deps)
    return stored


async def advance(order: Order | uuid.UUID, deps: Deps) -> Order:
    """Drive a PENDING_NEW order (as just read, or by id) to NEW (hold placed, command in the
    outbox) or REJECTED."""
    if isinstance(order, Order):
        o = order
    else:
        async with deps.uow().single_statement() as uow:
            found = await uow.orders.get(order)
        assert found is not None
        o = found
    order_id = o.order_id
    if o.status is not Status.PENDING_NEW:
        return o
    if o.replaces is not None:
        return await advance_replace(o, deps)
    try:
        refused = await deps.holds.place(o.hold_id, o.account_id, str(o.order_id), o.hold_asset, o.hold_amount)
    except model.HoldResolved:  # placed, and resolved since: another driver ended the order
        refused = None
    failpoints.hit("place.after_hold")
    # Accept or reject as one statement (its own transaction, shared with the orders decided at
    # the same moment): the order's transition if it is still PENDING_NEW (one driver wins),
    # the change it records and, for an accepted order, its engine command in the outbox.
    decided = replace(o)
    outbox = None
    if refused is not None:
        _reject(decided, refused)
    else:
        decided.transition(Status.NEW)
        outbox = (order_subject(deps.namespace, decided), str(order_id), new_order_command(decided).SerializeToString())
    if await deps.writes.decide(decided, Status.PENDING_NEW, now(), outbox):
        o = decided
    else:  # another driver finished first
        async with deps.uow().reads() as uow:
            current = await uow.orders.get(order_id)
        assert current is not None
        o = current
    failpoints.hit("place.after_accept")
    if o.status is Status.REJECTED and refused is None:
        # Our hold went in after another driver rejected the order: give it back.
        await deps.holds.release(o.hold_id)
    if o.status is Status.NEW:
        deps.wake_relay()
    return o


REJECTED_HOLD_AGE = 30.0  # seconds: a hold whose order was recorded REJECTED is given back after this


async def reap_orphaned_holds(deps: Deps, *, older_than: float = REJECTED_HOLD_AGE, orphan_age: float = 120.0,
                              page: int = 500) -> int:
    """Check every hold placed more than `older_than` seconds ago against its order, once, and
    give back those whose order was recorded REJECTED (its retry rejected by the checks of a
    later moment; a replacement's reserve) and, once `orphan_age` old, those whose order was
    never recorded (a placement that died between its hold and its insert: until then a retry
    with the same ids completes it, so such a hold is left unchecked until that age); returns
    how many. An order id is claimed before its hold goes, so a late insert of it can no longer
    record an order whose hold is gone (round 17: the two ages; one of 120 s kept a rejected
    retry's hold two minutes, one of 30 s undid placements a client was still retrying)."""
    released, after = 0, None
    while True:
        # One call a page: the ledger says which holds are past the orphan age (its clock, as
        # for older_than). The page goes on after the last hold of the previous one (round 22:
        # re-read from the start, a page of holds left waiting ended the round, and every hold
        # behind it, a rejected retry's too, waited until they were orphan_age old).
        holds = await deps.holds.unchecked(older_than, orphan_age, page, after)
        ids: dict[str, uuid.UUID] = {}
        for h in holds:
            try:
                ids[h.hold_id] = uuid.UUID(h.order_id)
            except ValueError:
                pass  # not a hold of one of our orders
        old = {h.hold_id for h in holds if h.orphan_age}
        waiting: set[str] = set()  # holds of placements that may still be completed by a retry
        if ids:
            async with deps.uow().reads() as uow:
                recorded = await uow.orders.recorded(sorted(set(ids.values())))
            judged = {o for h, o in ids.items() if o in recorded or h in old}
            waiting = {h for h, o in ids.items() if o not in judged}
            if judged:
                async with deps.uow() as uow:
                    orphans, rejected = await uow.orders.claim_orphans(sorted(judged))
                    await uow.commit()
                missing = set(orphans)
                for hold_id in sorted(h for h, o in ids.items() if o in missing):
                    log.warning("releasing a hold that no order needs", extra={"holdId": hold_id})
                    if await _unless_busy(deps.holds.release(hold_id), hold_id):
                        released += 1
                    else:
                        waiting.add(hold_id)
                # A reserve of a replacement recorded REJECTED: the driver that should have
                # cancelled its transfer failed or died (two drivers of one replace: the refused
                # one rejected it, the other's transfer had gone through).
                for order_id in rejected:
                    if not await _unless_busy(cancel_abandoned_transfers([order_id], deps), str(order_id)):
                        waiting.update(h for h, o in ids.items() if o == order_id)
                    else:
                        released += 1
        done = [h.hold_id for h in holds if h.hold_id not in waiting]
        if done:
            # Holds the ledger skips (a fill holds their row: SKIP LOCKED) stay unchecked for a
            # later round; this one goes on past them, so it never meets a page twice.
            await deps.holds.mark_checked(done)
        if len(holds) < page:
            return released
        after = holds[-1]


async def _unless_busy(call: Awaitable[object], what: str) -> bool:
    """Whether the reaper's `call` to the ledger went through. One the ledger answered
    ACCOUNT_BUSY (an account held by another transaction) is left for the next round, its hold
    unchecked, and the round goes on with the rest (round 22 review: a busy release ended the
    round, and every round after it met the same hold first, so nothing behind it was reaped
    while that account stayed held). The ledger not answering at all still ends the round: the
    rest would fail alike, each after its deadline."""
    try:
        await call
        return True
    except Unavailable as exc:
        if exc.reason != "ACCOUNT_BUSY":
            raise
        log.warning("the ledger could not take a hold back now (its account is busy); the next round tries again",
                    extra={"holdId": what, "error": exc.message})
        return False


async def cancel_abandoned_transfers(rejected: list[uuid.UUID], deps: Deps) -> int:
    """Cancel the hold transfers the ledger prepared for the replacements `rejected` (recorded
    REJECTED), releasing their reserves; returns how many were asked. Safe to repeat: a
    transfer already resolved, or never made, stays as it is."""
    for order_id in rejected:
        await deps.holds.cancel_transfer(str(order_id))
    if rejected:
        log.warning("cancelled the hold transfers of rejected replacements",
                    extra={"orderIds": [str(i) for i in rejected]})
    return len(rejected)


async def reaper_loop(deps: Deps, *, orphan_age: float = 120.0, interval: float = 5.0) -> None:
    while True:
        try:
            await reap_orphaned_holds(deps, older_than=min(REJECTED_HOLD_AGE, orphan_age), orphan_age=orphan_age)
        except Unavailable as exc:  # the ledger not answering (yet: at start-up): no bug to trace
            log.warning("checking holds against their orders failed; retrying later", extra={"error": exc.message})
        except Exception:  # noqa: BLE001 - the next round retries
            log.exception("checking holds against their orders failed; retrying later")
        await asyncio.sleep(interval)


async def recover_stalled(deps: Deps, *, older_than: timedelta = timedelta(seconds=2)) -> int:
    """Finish every placement saga left half-way (e.g. by a crash); returns how many."""
    async with deps.uow() as uow:
        stalled = await uow.orders.stalled(now() - older_than)
    for order_id in stalled:
        try:
            await advance(order_id, deps)
        except Unavailable as exc:  # a dependency down for a while (the ledger stalled): expected, retried
            log.warning("recovery of order waits for a service; retrying later",
                        extra={"orderId": str(order_id), "error": exc.message})
        except Exception:  # noqa: BLE001 - the next round retries
            log.exception("recovery of order failed; retrying later", extra={"orderId": str(order_id)})
    return len(stalled)


async def recovery_loop(deps: Deps, interval: float = 1.0) -> None:
    while True:
        n = await recover_stalled(deps)
        if n:
            log.info("recovered stalled orders", extra={"count": n})
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def _changing(deps: Deps, what: str, order_id: uuid.UUID) -> AsyncIterator[OrderUnitOfWork]:
    """The unit of work of a change of an order (a cancel, a replace) whose first statement
    locks the order's row with `lock_wait=deps.lock_wait`: when a lock of it is held longer by
    another transaction, the transaction is rolled back and the caller hears OrderBusy
    (UNAVAILABLE ORDER_BUSY, retry with the same ids) naming `order_id`, the order it asked to
    change."""
    try:
        async with deps.uow() as uow:
            yield uow
    except asyncpg.LockNotAvailableError as exc:
        raise model.OrderBusy(what, str(order_id)) from exc


async def _replaced(uow: OrderUnitOfWork, o: Order, change: str) -> model.OrderNotActive:
    """The refusal of a cancel or a replace (`change`) of `o`, an order a replace ended: it
    names the order's replacement (`replacedBy`) and the last of its replacements, working or
    ended (`lastReplacement`, `lastStatus`; round 15: "working in its place" of one that had
    ended), for the client to `change` that one instead (round 23: a replace said only "already
    CANCELLED")."""
    assert o.replaced_by is not None
    last = o
    while last.replaced_by is not None and (nxt := await uow.orders.get(last.replaced_by)) is not None:
        last = nxt
    metadata = {"orderId": str(o.order_id), "status": o.status.value, "replacedBy": str(o.replaced_by),
                "lastReplacement": str(last.order_id), "lastStatus": last.status.value}
    if last.status.is_terminal:
        return model.OrderNotActive(
            f"the order was replaced by order {o.replaced_by}; the last of its replacements, order "
            f"{last.order_id}, has ended too ({last.status.value})", metadata=metadata)
    return model.OrderNotActive(
        f"the order was replaced by order {last.order_id}, which is working in its place: {change} that one"
        if last.replaces == o.order_id else
        f"the order was replaced (by order {o.replaced_by}, then again): order {last.order_id} is working in "
        f"its place: {change} that one", metadata=metadata)


async def cancel_order(account_id: str, order_id: uuid.UUID, deps: Deps) -> Order:
    """Ask the engine to cancel; the order turns CANCELLED when the engine confirms."""
    async with _changing(deps, "cancel", order_id) as uow:
        # Another account's order is not locked, nor waited for (it does not exist for you).
        o = await uow.orders.get(order_id, for_update=True, lock_wait=deps.lock_wait, account_id=account_id)
        if o is None or o.account_id != account_id:
            raise model.OrderNotFound(f"no order {order_id}", metadata={"orderId": str(order_id)})
        if o.status is Status.CANCELLED and o.replaced_by is not None:
            # Not the idempotent answer of a cancelled order: the order goes on as its
            # replacement, and a client told "cancelled" here believed itself flat while that
            # one could still fill (round 14 B; FIX rejects such a cancel too).
            raise await _replaced(uow, o, "cancel")
        if o.status.is_terminal and o.status is not Status.CANCELLED:
            # Before the pending cancel's answer below: an order that filled or expired while
            # its cancel was on the way is ended, whether or not the engine's refusal of that
            # cancel has come back yet (round 16: OK with the FILLED order, then
            # FAILED_PRECONDITION for the same order once it had).
            raise model.OrderNotActive(f"the order is already {o.status.value}",
                                       metadata={"orderId": str(order_id), "status": o.status.value})
        if o.status is Status.CANCELLED or o.cancel_requested:
            return o
        if o.status is Status.PENDING_NEW:
            raise model.OrderStillPending("cancel", str(order_id))
        if await uow.orders.pending_replacement(o.order_id) is not None:
            raise model.OrderChangePending("a replace of this order is waiting for the engine; cancel the "
                                           "replacing order once it is working", metadata={"orderId": str(order_id)})
        await uow.orders.mark_cancel_requested(o)
        cmd = matching_pb2.EngineCommand(
            command_id=f"{o.order_id}:cancel", symbol=o.request.symbol,
            cancel_order=matching_pb2.CancelOrder(order_id=str(o.order_id), account_id=o.account_id))
        if not await uow.orders.add_outbox(order_subject(deps.namespace, o), cmd.command_id,
                                           cmd.SerializeToString()):
            # Asked before and refused by the engine (CANCEL_REJECTED cleared the request): a new
            # command id, or the engine would drop it as a repeat.
            cmd.command_id = f"{o.order_id}:cancel:{uuid.uuid4().hex[:12]}"
            await uow.orders.add_outbox(order_subject(deps.namespace, o), cmd.command_id, cmd.SerializeToString())
        await uow.commit()
    deps.wake_relay()
    return o


# --- replacing an order --------------------------------------------------------------------

@dataclass(frozen=True)
class ReplaceRequest:
    account_id: str
    order_id: uuid.UUID
    client_order_id: str
    quantity: int
    limit_price: Decimal | None
    stop_price: Decimal | None


def replace_msg_id(o: Order) -> str:
    return f"{o.order_id}:replace"


async def replace_order(r: ReplaceRequest, deps: Deps) -> Order:
    """Replace a working order by a new one (its own client_order_id, idempotent like
    PlaceOrder): the new order is recorded PENDING_NEW with `replaces`, the ledger prepares the
    hold transfer (reserving now only what the new order may need beyond the old hold), and the
    engine command goes to the outbox. The engine's REPLACED makes the new order NEW and the old
    one CANCELLED with `replaced_by` (and moves the hold); its refusal makes the new order
    REJECTED / ORDER_NOT_ACTIVE. A business rejection (funds, shares, session, halt, band) is
    the new order in REJECTED, and the old order is untouched. Refused with nothing recorded: a
    replace of an order already replaced (naming its replacement, as a cancel of it does) and
    one that changes nothing (REPLACE_CHANGES_NOTHING)."""
    async with deps.uow() as uow:
        old = await uow.orders.get(r.order_id)
    if old is None or old.account_id != r.account_id:
        raise model.OrderNotFound(f"no order {r.order_id}", metadata={"orderId": str(r.order_id)})
    req = model.replacement_request(old, r.client_order_id, r.quantity, r.limit_price, r.stop_price)
    # Of the request as sent: a stop price a triggered STOP_LIMIT ignores still tells two
    # requests apart, and a retry's reply does not depend on when the trigger was seen.
    fingerprint = model.replacement_fingerprint(replace(req, stop_price=r.stop_price), old.order_id)

    def same_or_duplicate(found: Order, found_fingerprint: str) -> Order:
        if found_fingerprint != fingerprint:
            raise model.DuplicateClientOrderId(
                f"client_order_id {req.client_order_id!r} was used for another order ({found.order_id})",
                metadata={"clientOrderId": req.client_order_id, "orderId": str(found.order_id)})
        return found

    async with deps.uow() as uow:  # a retry: the old order may have been replaced by this very request
        existing = await uow.orders.by_client_order_id(req.account_id, req.client_order_id)
    if existing is not None:  # answered whatever the rate limits (round 17), as a placement's retry is
        stored = same_or_duplicate(*existing)
        return await advance(stored, deps) if stored.status is Status.PENDING_NEW else stored
    await _within_limits(req, deps)

    at = now()
    _, reason, message = await _market_checks(req, deps, at, stop_applies=not model.stop_no_longer_applies(old))
    async with _changing(deps, "replace", old.order_id) as uow:
        # One change of an order at a time.
        current = await uow.orders.get(old.order_id, for_update=True, lock_wait=deps.lock_wait)
        assert current is not None
        existing = await uow.orders.by_client_order_id(req.account_id, req.client_order_id)
        if existing is not None:
            stored = same_or_duplicate(*existing)
        else:  # a new request (a retry of one refused below is refused again: nothing was recorded)
            if current.status is Status.CANCELLED and current.replaced_by is not None:
                raise await _replaced(uow, current, "replace")
            model.check_replaceable(current, req.quantity)
            if current.cancel_requested or await uow.orders.pending_replacement(current.order_id) is not None:
                raise model.OrderChangePending(
                    "a cancel or replace of this order is still waiting for the engine; retry when it is done",
                    metadata={"orderId": str(current.order_id)})
            # After the client_order_id's look-up (a retry of a replace accepted before is
            # answered its order, whatever it changed) and the old order's state (a change of an
            # order replaced, or about to be, is to be made to its replacement).
            model.check_changes_something(current, req)
            new = Order(order_id=uuid.uuid4(), request=req, status=Status.PENDING_NEW, created_at=at, updated_at=at,
                        hold_asset=current.hold_asset,
                        collar_price=model.replacement_collar(current, req, deps.market_collar),
                        replaces=current.order_id)
            if reason is not None:
                new.reject(reason, message)
            else:
                new.hold_amount = model.replacement_reserve(
                    model.hold_unit(current.request, current.collar_price), current.request.quantity,
                    current.filled_quantity, model.hold_unit(req, new.collar_price), req.quantity)
            # The ledger keeps the replacement's client_order_id before it is recorded, rejected
            # or not: a placement reusing it with other parameters is refused by its hold
            # statement from now on, holding nothing (review of round 27: it was kept only when
            # the transfer was recorded, so a reuse in between, up to the transfer's two minutes
            # of waiting for the old hold, held and gave back). After the checks above, so a
            # refused replace keeps nothing; a kill before the commit leaves a key no order has
            # (its reuse: "has not completed", as a placement's). The orders table decides the id.
            await _keep_replacement_key(new, deps)
            stored, created = await uow.orders.insert_or_get(new, fingerprint)
            if not created:
                stored = same_or_duplicate(stored, await uow.orders.fingerprint_of(stored.order_id))
        await uow.commit()
    failpoints.hit("replace.after_record")
    if stored.status is Status.PENDING_NEW:
        stored = await advance(stored, deps)
    return stored


# How long a replacement waits for the ledger to show the replaced order's hold before it is
# rejected (HoldNotYet: normally gone within a second, once the ledger has applied the
# execution that made the hold).
HOLD_MISSING_GIVE_UP = timedelta(minutes=2)


async def advance_replace(o: Order, deps: Deps) -> Order:
    """Drive a PENDING_NEW replacement until its replace is in the outbox (then the engine
    decides), or to REJECTED when the ledger refuses the hold transfer."""
    assert o.replaces is not None
    async with deps.uow() as uow:
        if await uow.orders.has_outbox(replace_msg_id(o)):
            return o  # handed to the engine already
    prepare = functools.partial(deps.holds.transfer, str(o.replaces), str(o.order_id), str(o.order_id),
                                o.account_id, o.hold_asset, model.hold_unit(o.request, o.collar_price), o.hold_amount,
                                o.request.client_order_id)

    async def transfer() -> model.Refusal | None:
        try:
            return await prepare()
        except model.HoldNotYet:
            # The old order is a replacement the ledger has not completed yet (order_svc saw it
            # confirmed first): once the ledger has caught up with the executions in flight,
            # its hold is there (round 15: the client got UNAVAILABLE, and the replace went
            # through 2 s later by the recovery loop).
            if await deps.holds.await_executions(o.account_id):
                try:
                    return await prepare()
                except model.HoldNotYet:
                    pass
            if now() - o.created_at < HOLD_MISSING_GIVE_UP:
                raise
            # Caught up, and still no hold long after: the ledger lacks the old order's hold for
            # good (a ledger database restored alone). The transfer never happened, so
            # rejecting the replacement leaves the old order as it stands; retrying for ever
            # left it PENDING_NEW for ever. (Whatever AwaitExecutions answered: it says "retry"
            # for any account that holds anything, which such an account always does.)
            log.error("the ledger has no hold of the order being replaced; replacement rejected",
                      extra={"orderId": str(o.order_id), "replaces": str(o.replaces)})
            return model.Refusal(RejectReason.INTERNAL,
                                 f"the ledger has no hold of order {o.replaces}; the order stands unchanged")
    try:
        refused = await transfer()
    except model.TransferPending:
        # The ledger still holds a transfer of the old hold to an earlier replacement. One
        # recorded REJECTED is abandoned (its cancel failed or its driver died): cancel it and
        # try again; otherwise the earlier replace is in flight and this one waits for it.
        async with deps.uow() as uow:
            rejected = await uow.orders.rejected_replacements(o.replaces)
        if not await cancel_abandoned_transfers(rejected, deps):
            raise
        refused = await transfer()
    failpoints.hit("replace.after_hold")
    if refused is not None:  # the refused transfer kept nothing in the ledger
        await _keep_replacement_key(o, deps)
    handed: bool | None = False
    # The client named the replaced order: a retry of the replace (same client_order_id) or the
    # recovery loop completes this one (the transfer above is idempotent).
    async with _changing(deps, "replace", o.replaces) as uow:
        current = await uow.orders.get(o.order_id, for_update=True, lock_wait=deps.lock_wait)
        assert current is not None
        o = current
        sent = await uow.orders.has_outbox(replace_msg_id(o))
        if o.status is Status.PENDING_NEW and not sent:
            if refused is not None:
                _reject(o, refused)
                await uow.orders.save_transition(o, Status.PENDING_NEW, now())
            else:
                await uow.orders.add_outbox(order_subject(deps.namespace, o), replace_msg_id(o),
                                            replace_command(o).SerializeToString())
                handed = True
            await uow.commit()
        elif refused is None and not sent:
            handed = None  # another driver rejected it first: our transfer must not stay
    failpoints.hit("replace.after_accept")
    if handed is None:
        await deps.holds.cancel_transfer(str(o.order_id))
    elif handed:
        deps.wake_relay()
    return o


def replace_command(o: Order) -> matching_pb2.EngineCommand:
    q = o.request
    assert o.replaces is not None
    return matching_pb2.EngineCommand(command_id=replace_msg_id(o), symbol=q.symbol, replace_order=matching_pb2.ReplaceOrder(
        order_id=str(o.replaces), new_order_id=str(o.order_id), account_id=q.account_id, quantity=q.quantity,
        limit_price=_p(q.limit_price), stop_price=_p(q.stop_price), collar_price=_p(o.collar_price)))


async def get_order(account_id: str, order_id: uuid.UUID, deps: Deps) -> Order:
    async with deps.uow().single_statement() as uow:
        o = await uow.orders.get(order_id)
    if o is None or o.account_id != account_id:  # another account's order does not exist for you
        raise model.OrderNotFound(f"no order {order_id}", metadata={"orderId": str(order_id)})
    return o


async def list_orders(account_id: str, symbol: str | None, statuses: list[str], limit: int,
                      before: tuple[datetime, uuid.UUID] | None, deps: Deps,
                      order_ids: list[uuid.UUID] | None = None) -> list[Order]:
    async with deps.uow().single_statement() as uow:
        return await uow.orders.list(account_id, symbol, statuses, limit, before, order_ids)


def order_subject(namespace: str, o: Order) -> str:
    return bus.subject(namespace, "orders", o.request.symbol)


_SIDE = {model.Side.BUY: common_pb2.SIDE_BUY, model.Side.SELL: common_pb2.SIDE_SELL}
_TYPE = {OrderType.MARKET: common_pb2.ORDER_TYPE_MARKET, OrderType.LIMIT: common_pb2.ORDER_TYPE_LIMIT,
         OrderType.STOP: common_pb2.ORDER_TYPE_STOP, OrderType.STOP_LIMIT: common_pb2.ORDER_TYPE_STOP_LIMIT}
_TIF = {model.TimeInForce.DAY: common_pb2.TIME_IN_FORCE_DAY, model.TimeInForce.GTC: common_pb2.TIME_IN_FORCE_GTC,
        model.TimeInForce.IOC: common_pb2.TIME_IN_FORCE_IOC, model.TimeInForce.FOK: common_pb2.TIME_IN_FORCE_FOK}


def _p(d: Decimal | None) -> str:
    return "" if d is None else f"{d.normalize():f}"


def new_order_command(o: Order) -> matching_pb2.EngineCommand:
    q = o.request
    cmd = matching_pb2.EngineCommand(command_id=str(o.order_id), symbol=q.symbol, new_order=matching_pb2.NewOrder(
        order_id=str(o.order_id), account_id=q.account_id, side=_SIDE[q.side], type=_TYPE[q.type],
        time_in_force=_TIF[q.time_in_force], quantity=q.quantity, limit_price=_p(q.limit_price),
        stop_price=_p(q.stop_price), collar_price=_p(o.collar_price)))
    set_time(cmd.new_order.accepted_at, o.updated_at)
    return cmd
