"""The engine's executions as plain data, shared by every service that consumes them
(ledger_svc settles fills, order_svc moves orders through their lifecycle)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Callable, Iterator

log = logging.getLogger("meshkit.executions")

FILL, ACCEPTED, CANCELLED, EXPIRED, REJECTED, REPLACED, TRIGGERED, CANCEL_REJECTED = (
    "FILL", "ACCEPTED", "CANCELLED", "EXPIRED", "REJECTED", "REPLACED", "TRIGGERED", "CANCEL_REJECTED")
# What the engine reports that changes nothing for the ledger: the order was already NEW with
# its hold in place when the engine rested (or triggered) it. The ledger passes these by without
# a transaction; order_svc does so for ACCEPTED only (a trigger is shown to the customer: the
# order's triggered_at). The engine no longer journals ACCEPTED (a core NATS notice instead,
# matching_svc.service_layer.engine.journaled); a journal written before may still hold some.
NO_EFFECT = frozenset({ACCEPTED, TRIGGERED})
# Executions that end the order they name. Not CANCEL_REJECTED: a refused cancel or replace
# leaves its order as it was. Not REPLACED: the old order goes on as the new one.
ENDS_ORDER = frozenset({CANCELLED, EXPIRED, REJECTED})
# Executions handed to a consumer's apply_batch at most at once: enough to apply a backlog in few
# transactions, few enough that a batch's transaction holds its accounts' rows only briefly (a
# placement waits for them).
BATCH = 32


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


def to_json(ex: Execution) -> dict:
    """An Execution as JSON values (exact: the price as a decimal string, times in ISO 8601)."""
    out = {}
    for name, value in ex.__dict__.items():
        out[name] = (str(value) if isinstance(value, Decimal) else
                     value.isoformat() if isinstance(value, (datetime, date)) else value)
    return out


def from_json(d: dict) -> Execution:
    """to_json's inverse."""
    price, at, day = d.get("price"), d.get("executed_at"), d.get("trade_date")
    return Execution(**{**d, "price": Decimal(price) if price is not None else None,
                        "executed_at": datetime.fromisoformat(at) if at else None,
                        "trade_date": date.fromisoformat(day) if day else None})


def accounts(ex: Execution) -> frozenset[str]:
    """The accounts an execution touches."""
    return frozenset(a for a in (ex.account_id, ex.counter_account_id) if a)


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


def in_runs(ex: Execution) -> bool:
    """Whether the ledger's consumer applies `ex` with its neighbours in one transaction of a
    few statements (a run): a fill, and an order's end that touches no other order (a CANCELLED
    of reason REPLACED ends a replace, whose new order it settles too). order_svc's runs take
    more (order_svc.service_layer.lifecycle.in_runs)."""
    return ex.type == FILL or (ex.type in ENDS_ORDER and ex.reason != "REPLACED")


def units(exs: list[Execution], together: Callable[[Execution], bool] = in_runs
          ) -> Iterator[tuple[int, list[Execution]]]:
    """`exs` (stream order) in the units a consumer applies them in: each longest stretch of
    executions that go `together` (by default in_runs, the ledger's) as one list, every other
    execution alone; each with its offset in `exs`."""
    start = 0
    while start < len(exs):
        end = start + 1
        if together(exs[start]):
            while end < len(exs) and together(exs[end]):
                end += 1
        yield start, exs[start:end]
        start = end


def claimed(exs: list[Execution], fresh: set[str]) -> list[Execution]:
    """Those of `exs` that a claim of all their ids just took (`fresh`: the ids it inserted),
    in stream order, each once: a repeat within the list, or of one applied before, drops out."""
    out: list[Execution] = []
    left = set(fresh)
    for ex in exs:
        if ex.execution_id in left:
            left.discard(ex.execution_id)
            out.append(ex)
    return out


def consumer_name(durable: str, symbol: str) -> str:
    """The durable consumer of one symbol's executions: ('ledger', 'AAPL') -> 'ledger_AAPL'."""
    return f"{durable}_{symbol}"


async def consume(js, namespace: str, durable: str, apply=None, *, apply_batch=None, batch: int = BATCH,
                  elect_on: str | None = None, symbols: list[str] | None = None) -> None:
    """Apply every execution, in stream order for each symbol, through one durable consumer per
    listed symbol (`<durable>_<SYM>` on `<ns>.executions.<SYM>`, as the engine reads
    `engine_<SYM>`): an execution that cannot be applied (retried in place, never skipped) stops
    its own symbol only, and the symbols are applied side by side. An order's executions are all
    on its symbol, so nothing a fill's effect depends on is in another consumer; accounts and
    order rows are taken in account order, so consumers of two symbols never wait for each
    other in a cycle.

    `apply` takes one execution at a time; `apply_batch` instead takes the list of those that
    have come (up to `batch`, in stream order: one when the flow is light, more when the
    consumer is behind), so that a consumer behind applies many in one transaction; a batch that
    fails is retried whole, in place.

    With `elect_on` (the service's PostgreSQL URL), only the replica elected for the durable
    consumes (meshkit.db.elected), all symbols: one reader per symbol, however many replicas of
    the service run, and another takes over when it dies. `symbols` defaults to the listing."""
    import asyncio

    from meshkit import bus
    from meshkit.symbols import listed

    if elect_on:
        from meshkit import db

        await db.elected(elect_on, f"{namespace}.executions.{durable}",
                         lambda: consume(js, namespace, durable, apply, apply_batch=apply_batch, batch=batch,
                                         symbols=symbols))
        return
    if (apply is None) == (apply_batch is None):
        raise TypeError("pass exactly one of apply and apply_batch")
    from stockmesh.matching.v1 import matching_pb2

    stream = await bus.ensure_stream(js, namespace, "executions")
    wanted = set(listed() if symbols is None else symbols)
    await split_shared_consumer(js, namespace, durable, sorted(wanted))
    # A symbol taken off the listing keeps its consumer: executions of it may still be waiting.
    names = sorted(wanted | await consumed_symbols(js, namespace, durable))

    def parsed(msg) -> Execution:
        return from_proto(matching_pb2.Execution.FromString(msg.data))

    async def handle(msg) -> None:
        await apply(parsed(msg))

    async def handle_batch(msgs) -> None:
        await apply_batch([parsed(m) for m in msgs])

    handler = {"handle": handle} if apply is not None else {"handle_batch": handle_batch}
    async with asyncio.TaskGroup() as group:
        for symbol in names:
            group.create_task(bus.consume(
                js, stream=stream, subject_filter=bus.subject(namespace, "executions", symbol),
                durable=consumer_name(durable, symbol), batch=batch, **handler), name=f"{durable} {symbol}")


async def consumed_symbols(js, namespace: str, durable: str) -> set[str]:
    """The symbols whose executions have a consumer of `durable` on the stream."""
    from meshkit import bus

    prefix = bus.subject(namespace, "executions", "")
    found: set[str] = set()
    for info in await bus.consumers(js, bus.stream_name(namespace, "EXECUTIONS")):
        symbol = (info.config.filter_subject or "").removeprefix(prefix)
        if symbol and "." not in symbol and info.name == consumer_name(durable, symbol):
            found.add(symbol)
    return found


async def split_shared_consumer(js, namespace: str, durable: str, symbols: list[str]) -> None:
    """Before one consumer per symbol, each service read every symbol's executions through one
    durable (`<durable>` on `<ns>.executions.>`). If it is still there, each symbol's consumer
    not yet made starts right after its ack floor (what it had acked individually beyond comes
    again and is dropped as a repeat by id), and then it is removed. Idempotent: run again after
    a crash half-way, it makes only the consumers still missing."""
    import nats.js.errors

    from meshkit import bus

    stream = bus.stream_name(namespace, "EXECUTIONS")
    try:
        shared = await js.consumer_info(stream, durable)
    except nats.js.errors.NotFoundError:
        return
    start = shared.ack_floor.stream_seq + 1
    for symbol in symbols:
        name = consumer_name(durable, symbol)
        try:
            await js.consumer_info(stream, name)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(stream, config=bus.consumer_config(
                bus.subject(namespace, "executions", symbol), name, start_seq=start))
    await js.delete_consumer(stream, durable)
    log.info("the shared execution consumer was split by symbol",
             extra={"durable": durable, "startSequence": start, "symbols": len(symbols)})


async def wait_applied(js, namespace: str, durable: str, *, timeout: float = 2.0) -> bool:
    """Wait until every symbol's consumer of `durable` (`<durable>_<SYM>`) has applied the
    executions published on its symbol up to now: a read-your-writes barrier for a service
    about to refuse something that an execution already shown elsewhere may change (order_svc
    and the ledger apply the same executions through consumers of their own, so a customer can
    see an order FILLED a few ms before the ledger has its shares).

    True at once when no consumer has anything outstanding (one JetStream request: the list of
    the stream's consumers), or once those that had have acknowledged the last execution
    published on their symbol at the call (a consumer acknowledges after it applied); False
    when `timeout` passed first (logged). Either way what was applied may have changed the
    caller's answer since it was given: the caller asks again."""
    import asyncio

    import nats.js.errors

    from meshkit import bus

    stream = bus.stream_name(namespace, "EXECUTIONS")
    prefix = consumer_name(durable, "")
    try:
        # Each request to JetStream gives up after bus.READ_TIMEOUT: a caller waiting on a NATS
        # that stalls is UNAVAILABLE within it (round 13: nats-py's 5 s).
        infos = [c for c in await bus.answered(bus.consumers(js, stream)) if c.name.startswith(prefix)]
    except nats.js.errors.NotFoundError:
        return True
    targets: dict[str, int] = {}
    for c in infos:
        if c.num_pending:  # not all delivered yet: the subject's last message is the target
            try:
                targets[c.name] = (await bus.last_msg(js, stream, c.config.filter_subject)).seq
            except nats.js.errors.NotFoundError:
                continue
        elif c.num_ack_pending and c.delivered is not None:
            targets[c.name] = c.delivered.stream_seq
    if not targets:
        return True
    loop = asyncio.get_running_loop()
    deadline, pause = loop.time() + timeout, 0.002
    while True:
        await asyncio.sleep(pause)  # polling JetStream's view of the consumers, backing off
        pause = min(pause * 2, 0.05)
        for name, target in list(targets.items()):
            floor = (await bus.answered(js.consumer_info(stream, name))).ack_floor
            if floor is not None and (floor.stream_seq or 0) >= target:
                del targets[name]
        if not targets:
            return True
        if loop.time() >= deadline:
            log.warning("consumers still behind the executions published before a refusal",
                        extra={"consumers": sorted(targets), "timeoutSeconds": timeout})
            return False
