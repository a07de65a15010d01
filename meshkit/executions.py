"""The engine's executions as plain data, shared by every service that consumes them
(ledger_svc settles fills, order_svc moves orders through their lifecycle)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal

FILL, ACCEPTED, CANCELLED, EXPIRED, REJECTED, REPLACED, TRIGGERED, CANCEL_REJECTED = (
    "FILL", "ACCEPTED", "CANCELLED", "EXPIRED", "REJECTED", "REPLACED", "TRIGGERED", "CANCEL_REJECTED")
# What the engine reports that changes nothing for the ledger or the order lifecycle: the order
# was already NEW with its hold in place when the engine rested (or triggered) it. Consumers
# pass these by without a transaction. The engine no longer journals ACCEPTED (a core NATS
# notice instead, matching_svc.service_layer.engine.journaled); a journal written before may
# still hold some.
NO_EFFECT = frozenset({ACCEPTED, TRIGGERED})


@dataclass(frozen=True)
class Execution:
    execution_id: str
    symbol: str
    type: str
    order_id: str
    account_id: str
    side: str = ""  # the (taker) order's side
    counter_order_id: str = ""
    counter_account_id: str = ""
    price: Decimal | None = None
    quantity: int = 0
    leaves: int = 0
    counter_leaves: int = 0
    reason: str = ""
    executed_at: datetime | None = None
    trade_date: date | None = None
    # REPLACED: the new order (and whether it kept the old one's priority); CANCEL_REJECTED of a
    # replace: the refused new order id.
    new_order_id: str = ""
    kept_priority: bool = False


def from_proto(m) -> Execution:
    """A `stockmesh.matching.v1.Execution` message as an Execution."""
    from meshkit import calendar
    from stockmesh.common.v1 import common_pb2
    from stockmesh.matching.v1 import matching_pb2

    at = m.time.ToDatetime(tzinfo=timezone.utc) if m.HasField("time") else datetime.now(timezone.utc)
    side = {common_pb2.SIDE_BUY: "BUY", common_pb2.SIDE_SELL: "SELL"}.get(m.side, "")
    return Execution(
        execution_id=m.execution_id, symbol=m.symbol,
        type=matching_pb2.ExecutionType.Name(m.type).removeprefix("EXECUTION_TYPE_"),
        order_id=m.order_id, account_id=m.account_id, side=side, counter_order_id=m.counter_order_id,
        counter_account_id=m.counter_account_id, price=Decimal(m.price) if m.price else None,
        quantity=m.quantity, leaves=m.leaves_quantity, counter_leaves=m.counter_leaves_quantity,
        reason=m.reason, executed_at=at, trade_date=calendar.trading_day(at), new_order_id=m.new_order_id,
        kept_priority=m.kept_priority)


async def consume(js, namespace: str, durable: str, apply, *, elect_on: str | None = None) -> None:
    """Apply every execution of every symbol, in stream order, through a durable consumer.
    With `elect_on` (the service's PostgreSQL URL), only the replica elected for the durable
    consumes (meshkit.db.elected): one reader applies the journal in order, however many
    replicas of the service run, and another takes over when it dies."""
    from meshkit import bus

    if elect_on:
        from meshkit import db

        await db.elected(elect_on, f"{namespace}.executions.{durable}",
                         lambda: consume(js, namespace, durable, apply))
        return
    from stockmesh.matching.v1 import matching_pb2

    stream = await bus.ensure_stream(js, namespace, "executions")

    async def handle(msg) -> None:
        await apply(from_proto(matching_pb2.Execution.FromString(msg.data)))

    await bus.consume(js, stream=stream, subject_filter=bus.subject(namespace, "executions", ">"),
                      durable=durable, handle=handle)
