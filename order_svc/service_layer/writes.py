"""The placement saga's writes, for many concurrent orders at once.

Recording a new order (NEW with its engine command in the outbox, or REJECTED, once its hold is
decided) is one statement, and so is deciding an order recorded PENDING_NEW (a replacement, or
one left by an earlier version); under load, the orders placed at the same moment share them
(meshkit.batching): one statement and one transaction for a batch instead of one per order,
and an order placed alone still goes at once. Each order's rules are those of
OrderRepository.insert_new / save_transition, unchanged.

A batch takes the accounts' audit heads in account order, so two batches never wait for each
other in a cycle; should one fail as a whole all the same (e.g. a deadlock with another
transaction), its orders are written one at a time, each answered alone.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Awaitable, Callable, Sequence, TypeVar

from meshkit.batching import Batcher
from order_svc.adapters.repository import OrderRepository
from order_svc.domain.model import Order, Status
from order_svc.service_layer.unit_of_work import OrderUnitOfWork

log = logging.getLogger("order_svc.writes")

T = TypeVar("T")
Outbox = tuple[str, str, bytes]  # subject, msg_id, payload
Transition = tuple[Order, Status, datetime, Outbox | None]


class SagaWrites:
    def __init__(self, uow: Callable[[], OrderUnitOfWork], *, in_flight: int = 2, max_batch: int = 100) -> None:
        self.uow = uow
        self._records: Batcher[tuple[Order, str, Outbox | None], Order | None] = Batcher(
            self._record_batch, in_flight=in_flight, max_batch=max_batch, name="record_orders")
        self._decisions: Batcher[Transition, bool] = Batcher(
            self._decide_batch, in_flight=in_flight, max_batch=max_batch, name="decide_orders")
        # The lookups of placements the rate limits refused: one statement in flight at once
        # for any number of them, so a flood past the limits costs the database one connection.
        self._lookups: Batcher[tuple[str, str], tuple[Order, str] | None] = Batcher(
            self._lookup_batch, in_flight=1, max_batch=500, name="refused_lookups")

    @property
    def statements(self) -> int:
        """Batches written so far (for tests and benchmarks)."""
        return self._records.batches + self._decisions.batches

    async def record(self, o: Order, fingerprint: str, outbox: Outbox | None = None) -> tuple[Order | None, str | None]:
        """Insert a new order (with its outbox message, if any): (the order as stored, None);
        or, when its account already used the client_order_id, (that order, its fingerprint);
        or (None, None) when its id was claimed by the reaper of orphaned holds (no order)."""
        inserted = await self._records.submit((o, fingerprint, outbox))
        if inserted is not None:
            return inserted, None
        async with self.uow().reads() as uow:
            found = await uow.orders.by_client_order_id(o.account_id, o.request.client_order_id)
        return found or (None, None)

    @property
    def lookups(self) -> int:
        """Statements made by `recorded` so far (for tests)."""
        return self._lookups.batches

    async def recorded(self, account_id: str, client_order_id: str) -> tuple[Order, str] | None:
        """The account's order with this client_order_id and its fingerprint, if any; the
        lookups of concurrent callers share one statement, one at a time."""
        return await self._lookups.submit((account_id, client_order_id))

    async def _lookup_batch(self, keys: list[tuple[str, str]]) -> list[tuple[Order, str] | None]:
        async with self.uow().reads() as uow:
            found = await uow.orders.by_client_order_ids(keys)
        return [found.get(k) for k in keys]

    async def decide(self, o: Order, expected: Status, now: datetime, outbox: Outbox | None) -> bool:
        """save_transition: o's new state (and its outbox message) written if the order is
        still in `expected`; False when another driver changed it first."""
        return await self._decisions.submit((o, expected, now, outbox))

    async def _record_batch(self, items: list[tuple[Order, str, Outbox | None]]) -> Sequence[Order | None | BaseException]:
        # One order twice in a batch (a request and its duplicate at once): the first is inserted,
        # the second finds it.
        kept = _first_of_each(items)
        written = await self._in_one_statement(
            [items[i] for i in kept], lambda it: (it[0].account_id, it[0].request.client_order_id),
            lambda repo, its: repo.insert_new([(o, fp) for o, fp, _ in its], [ob for *_, ob in its]))
        by_index = dict(zip(kept, written))
        return [by_index.get(i) for i in range(len(items))]

    async def _decide_batch(self, items: list[Transition]) -> Sequence[bool | BaseException]:
        # One order twice in a batch (two drivers at once): the first decides, the second lost.
        kept = _first_of_each(items)
        written = await self._in_one_statement([items[i] for i in kept], lambda it: it[0].account_id,
                                               OrderRepository.save_transitions)
        by_index = dict(zip(kept, written))
        return [by_index.get(i, False) for i in range(len(items))]

    async def _in_one_statement(self, items: list[T], key: Callable[[T], Any],
                                write: Callable[[OrderRepository, list[T]], Awaitable[list]]) -> list:
        """`write` the items in one statement, sorted by `key` (lock order); the answers in the
        order given. If the batch fails as a whole, one at a time, each error its item's own."""
        order = sorted(range(len(items)), key=lambda i: key(items[i]))
        try:
            async with self.uow().single_statement() as uow:
                results = await write(uow.orders, [items[i] for i in order])
        except Exception:
            if len(items) == 1:
                raise
            log.warning("a batch of saga writes failed as a whole; writing them one at a time", exc_info=True,
                        extra={"count": len(items)})
            return [await self._alone(item, write) for item in items]
        answers: list = [None] * len(items)
        for i, result in zip(order, results):
            answers[i] = result
        return answers

    async def _alone(self, item: T, write: Callable[[OrderRepository, list[T]], Awaitable[list]]) -> Any:
        try:
            async with self.uow().single_statement() as uow:
                [result] = await write(uow.orders, [item])
            return result
        except Exception as exc:  # noqa: BLE001 - this item's caller hears of it
            return exc


def _first_of_each(items: Sequence[tuple]) -> list[int]:
    """The index of each order's first item (items start with the order), in order."""
    first: dict[Any, int] = {}
    for i, (o, *_) in enumerate(items):
        first.setdefault(o.order_id, i)
    return list(first.values())  # in order: dict keeps insertion order
