"""After acceptance: the engine's executions move orders through their lifecycle, and every
change reaches the account's stream of order updates."""
from __future__ import annotations

import asyncio
import uuid
from typing import AsyncIterator, Protocol

from meshkit.executions import CANCELLED, EXPIRED, FILL, REJECTED, Execution
from order_svc.domain.model import Fill, Order, RejectReason, Status
from order_svc.service_layer.handlers import Deps, now

_ENGINE_REJECTS = {"FOK_NOT_FILLABLE": RejectReason.FOK_NOT_FILLABLE}


async def apply_execution(ex: Execution, deps: Deps) -> bool:
    """Apply one execution in one transaction; False for a repeat (dropped by its id)."""
    async with deps.uow() as uow:
        if not await uow.orders.claim_execution(ex.execution_id):
            return False
        at = now()
        if ex.type == FILL:
            assert ex.price is not None and ex.executed_at is not None
            for order_id in (ex.order_id, ex.counter_order_id):
                o = await _order(uow, order_id)
                if o is None:
                    continue
                o.fill(ex.quantity, ex.price)
                await uow.orders.save_execution_result(o, at)
                await uow.orders.record_change(o, Fill(ex.execution_id, ex.price, ex.quantity, ex.executed_at))
        elif ex.type in (CANCELLED, EXPIRED, REJECTED):
            o = await _order(uow, ex.order_id)
            if o is not None and not o.status.is_terminal:
                if ex.type == REJECTED:
                    reason = _ENGINE_REJECTS.get(ex.reason, RejectReason.FOK_NOT_FILLABLE)
                    o.reject(reason, f"the engine rejected the order: {ex.reason or reason.value}")
                else:
                    o.transition(Status.CANCELLED if ex.type == CANCELLED else Status.EXPIRED)
                await uow.orders.save_execution_result(o, at)
                await uow.orders.record_change(o)
        await uow.commit()
        return True


async def _order(uow, order_id: str) -> Order | None:
    try:
        oid = uuid.UUID(order_id)
    except ValueError:
        return None  # not one of ours
    return await uow.orders.get(oid, for_update=True)


class Wakeups(Protocol):
    def subscribe(self, account_id: str) -> asyncio.Event: ...

    def unsubscribe(self, account_id: str, event: asyncio.Event) -> None: ...


async def stream_updates(account_id: str, after: int, deps: Deps, wakeups: Wakeups, *,
                         page: int = 500, poll: float = 5.0) -> AsyncIterator[tuple[int, Order, Fill | None]]:
    """Every update of the account with a sequence above `after`, then live ones, forever.

    The listener is registered before the first read, and each read asks for what follows the
    last sequence sent, so nothing is missed and nothing is sent twice at the switch from
    replay to live."""
    event = wakeups.subscribe(account_id)
    try:
        last = after
        while True:
            event.clear()
            async with deps.uow() as uow:
                batch = await uow.orders.updates_after(account_id, last, page)
            for seq, order, fill in batch:
                yield seq, order, fill
                last = seq
            if len(batch) < page:
                try:
                    await asyncio.wait_for(event.wait(), timeout=poll)
                except asyncio.TimeoutError:
                    pass  # a missed notification costs at most one poll interval
    finally:
        wakeups.unsubscribe(account_id, event)

