"""Fault injection for ReplaceOrder: order_svc is SIGKILLed at every step boundary of the replace
saga (a failpoint) and restarted; then the replace completes (by the client's retry, or by the
recovery loop alone) to exactly one replacement, the old order CANCELLED with replaced_by, the
new one NEW with the one open hold, and the ledger's and orders' invariants hold (checked_pool).

The matching engine runs in this process on AMZN, which no other integration test trades; the
ledger's execution consumer runs here too, order_svc's own runs in the subprocess."""
from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from ledger_svc.service_layer import commands, handlers as ledger
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from stockmesh.common.v1 import common_pb2
from stockmesh.order.v1 import order_service_pb2 as pb
from tests.support.crash import identity, killed_at, order_svc_env, running_order_svc
from tests.support.engine import engine_in_process
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

SYMBOL = "AMZN"  # reference 185.10
FAILPOINTS = ["replace.after_record", "replace.after_hold", "replace.after_accept"]


@pytest.fixture(scope="module")
async def engine(nats_url, namespace):
    async with engine_in_process(nats_url, namespace, (SYMBOL,)) as eng:
        yield eng


async def end_state(pool, account: str) -> dict:
    """What a finished replace is judged by: the account's orders, its open holds and transfers,
    its held cash, the engine's REPLACED executions, and order_svc's unsent outbox."""
    async with pool.acquire() as conn:
        orders = {str(r["order_id"]): (r["status"], r["replaces"] and str(r["replaces"]),
                                       r["replaced_by"] and str(r["replaced_by"]))
                  for r in await conn.fetch("SELECT order_id, status, replaces, replaced_by FROM orders.orders "
                                            "WHERE account_id = $1", account)}
        holds = {r["hold_id"]: r["left"] for r in await conn.fetch(
            "SELECT hold_id, amount - captured - released AS left FROM ledger.holds "
            "WHERE account_id = $1 AND status = 'PENDING'", account)}
        transfers = {r["to_hold_id"]: r["status"] for r in await conn.fetch(
            "SELECT to_hold_id, status FROM ledger.hold_transfers WHERE account_id = $1", account)}
        replaced = await conn.fetchval("SELECT count(*) FROM ledger.executions WHERE type = 'REPLACED' "
                                       "AND order_id = ANY($1)", list(orders))
        unsent = await conn.fetchval("SELECT count(*) FROM orders.outbox WHERE published_at IS NULL "
                                     "AND split_part(msg_id, ':', 1) = ANY($1)", list(orders))
    held = (await ledger.cash_balance(account, lambda: LedgerUnitOfWork(pool))).held
    return {"orders": orders, "pending holds": holds, "transfers": transfers, "held": held,
            "REPLACED executions": replaced, "unsent outbox": unsent}


async def in_outbox(pool, msg_id: str) -> bool:
    async with pool.acquire() as conn:
        return bool(await conn.fetchval("SELECT true FROM orders.outbox WHERE msg_id = $1", msg_id))


@pytest.mark.parametrize("client_retries", [True, False], ids=["client-retry", "recovery-alone"])
@pytest.mark.parametrize("failpoint", FAILPOINTS)
async def test_replace_killed_at_every_step_boundary_then_completed(
        failpoint, client_retries, engine, ledger_consumer, checked_pool, database_url, nats_url, namespace,
        ledger_addr, nats_conn, acceptances):
    account = f"rcrash-{uuid.uuid4().hex[:8]}"
    await ledger.deposit(commands.Deposit(account, Decimal("1000.00"), "fund"), lambda: LedgerUnitOfWork(checked_pool))
    env = order_svc_env(database_url, nats_url, ledger_addr, namespace)
    me = identity(account)

    async with running_order_svc(env) as stub:  # a resting buy, accepted by the engine: 2 x 180.00 held
        old = (await stub.PlaceOrder(pb.PlaceOrderRequest(
            client_order_id="resting", symbol=SYMBOL, side=common_pb2.SIDE_BUY, type=common_pb2.ORDER_TYPE_LIMIT,
            quantity=2, limit_price="180.00", time_in_force=common_pb2.TIME_IN_FORCE_GTC),
            metadata=me, timeout=10)).order
        assert old.status == common_pb2.ORDER_STATUS_NEW
        assert await eventually(lambda: acceptances.seen(old.order_id)), "the engine did not accept the order"

    # Up to 3 x 181.00 = 543.00: the transfer reserves the 183.00 more.
    request = pb.ReplaceOrderRequest(order_id=old.order_id, client_order_id="replace-1", quantity=3,
                                     limit_price="181.00")
    await killed_at(failpoint, env, lambda stub: stub.ReplaceOrder(request, metadata=me, timeout=10))

    async with running_order_svc(env) as stub:  # restarted without the failpoint
        retried = None
        if client_retries:
            retried = (await stub.ReplaceOrder(request, metadata=me, timeout=10)).order
            assert retried.replaces == old.order_id
            # Its answer comes once the replace is handed to the engine, as the first answer would have.
            assert await in_outbox(checked_pool, f"{retried.order_id}:replace")

        async def replaced():
            s = await end_state(checked_pool, account)
            # The relay marks its rows once JetStream acknowledged them, which may be after the
            # engine's answer has been applied: wait for that too.
            return (s["orders"][old.order_id][0] == "CANCELLED" and "PENDING" not in s["transfers"].values()
                    and s["unsent outbox"] == 0)

        await eventually(replaced)  # a bounded wait: the assert below says what was there at the end
        state = await end_state(checked_pool, account)
        new_id = state["orders"][old.order_id][2]
        assert state == {
            "orders": {old.order_id: ("CANCELLED", None, new_id), new_id: ("NEW", old.order_id, None)},
            "pending holds": {new_id: Decimal("543.00")}, "transfers": {new_id: "COMPLETED"},
            "held": Decimal("543.00"), "REPLACED executions": 1, "unsent outbox": 0}, f"after a kill at {failpoint}"
        # Every reply, before or after the replace completed, names the one replacement.
        again = (await stub.ReplaceOrder(request, metadata=me, timeout=10)).order
        assert (again.order_id, again.replaces, again.status) == (new_id, old.order_id, common_pb2.ORDER_STATUS_NEW)
        if retried is not None:
            assert retried.order_id == new_id
        got = (await stub.GetOrder(pb.GetOrderRequest(order_id=old.order_id), metadata=me, timeout=10)).order
        assert (got.status, got.replaced_by) == (common_pb2.ORDER_STATUS_CANCELLED, new_id)
