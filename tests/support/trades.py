"""One share changing hands between two new accounts through the mesh, for end-to-end tests."""
from __future__ import annotations

import asyncio
import contextlib
import uuid

import grpc

from tests.support.funding import transfer_in_shares
from stockmesh.common.v1 import common_pb2
from stockmesh.ledger.v1 import ledger_service_pb2 as lpb, ledger_service_pb2_grpc
from stockmesh.order.v1 import order_service_pb2 as opb, order_service_pb2_grpc


RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def _retried(call, failures: list[str] | None):
    """`call()`, or with `failures` given, again (the same request: same ids) after each
    UNAVAILABLE or DEADLINE_EXCEEDED, as a client does, noting each as "CODE: details"."""
    for attempt in range(100):
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if failures is None or exc.code() not in RETRYABLE or attempt == 99:
                raise
            failures.append(f"{exc.code().name}: {exc.details()}")
            await asyncio.sleep(0.2)


async def place_crossing_pair(mesh, ch, symbol: str, price: str, tag: str,
                              failures: list[str] | None = None) -> dict[str, str]:
    """A seller (one share transferred in) and a buyer (cash deposited) each place a GTC limit
    order for one share at `price`, seller first; both must be acknowledged NEW. Returns
    account -> order id. With `failures`, calls the mesh refuses are retried (see _retried)."""
    buyer, seller = f"{tag}-b-{uuid.uuid4().hex[:6]}", f"{tag}-s-{uuid.uuid4().hex[:6]}"
    await transfer_in_shares(mesh.database_url, seller, symbol, 1, price)
    ledger = ledger_service_pb2_grpc.LedgerServiceStub(ch)
    await _retried(lambda: ledger.Deposit(lpb.DepositRequest(amount="1000.00", idempotency_key=tag),
                                          metadata=mesh.auth(buyer)), failures)
    orders = order_service_pb2_grpc.OrderServiceStub(ch)
    placed = {}
    for account, side in ((seller, common_pb2.SIDE_SELL), (buyer, common_pb2.SIDE_BUY)):
        request = opb.PlaceOrderRequest(
            client_order_id=tag, symbol=symbol, side=side, type=common_pb2.ORDER_TYPE_LIMIT, quantity=1,
            limit_price=price, time_in_force=common_pb2.TIME_IN_FORCE_GTC)
        reply = await _retried(lambda: orders.PlaceOrder(request, metadata=mesh.auth(account), timeout=10), failures)
        assert reply.order.status == common_pb2.ORDER_STATUS_NEW, reply.order
        placed[account] = reply.order.order_id
    return placed


async def unsettled(mesh, ch, placed: dict[str, str]) -> list[str]:
    """What is not yet FILLED in order_svc, or still held in the ledger, among `placed`
    (account -> order id): one line each; empty once both services have applied every fill
    (each applies executions on its own)."""
    orders = order_service_pb2_grpc.OrderServiceStub(ch)
    ledger = ledger_service_pb2_grpc.LedgerServiceStub(ch)
    left = []
    for account, order_id in placed.items():
        md = mesh.auth(account)
        got = await orders.GetOrder(opb.GetOrderRequest(order_id=order_id), metadata=md)
        p = (await ledger.GetPortfolio(lpb.GetPortfolioRequest(), metadata=md)).portfolio
        held = [f"{x.symbol} {x.held}" for x in p.positions if x.held]
        if got.order.status != common_pb2.ORDER_STATUS_FILLED or p.cash.held != "0.00" or held:
            left.append(f"{account} {order_id}: {common_pb2.OrderStatus.Name(got.order.status)}, "
                        f"cash held {p.cash.held}, shares held {held}")
    return left


async def filled_and_settled(mesh, ch, placed: dict[str, str]) -> bool:
    """Every order FILLED in order_svc and nothing left held in the ledger for its account. A
    service answering UNAVAILABLE (a replica killed by the test, not yet back behind Envoy) is
    "not yet", as any client retries it."""
    try:
        return not await unsettled(mesh, ch, placed)
    except grpc.aio.AioRpcError as exc:
        if exc.code() is not grpc.StatusCode.UNAVAILABLE:
            raise
        return False


@contextlib.asynccontextmanager
async def trading(mesh, ch, symbol: str, price: str, placed: dict[str, str], failures: list[str]):
    """Customers trading without pause for as long as the block runs: one crossing pair after
    the other (place_crossing_pair), each acknowledged pair added to `placed`; a placement the
    mesh refused goes to `failures` as "CODE: details" and is retried with the same ids, as a
    client does, until it is answered (so no pair is left half-placed)."""
    stop = asyncio.Event()

    async def trade() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            placed.update(await place_crossing_pair(mesh, ch, symbol, price, f"t{n}-{uuid.uuid4().hex[:4]}",
                                                    failures))
            await asyncio.sleep(0.05)

    trader = asyncio.create_task(trade())
    try:
        yield
    finally:
        stop.set()
        await trader
