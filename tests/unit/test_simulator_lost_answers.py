"""The simulator never forgets an order it may have placed (acceptance: order_svc kill -9 while
it ran). A PlaceOrder whose answer was lost (UNAVAILABLE, a reset stream, no answer in time) was
neither sent again nor cancelled: the forgotten bid stayed in the book, and self-trade
prevention cancelled every new ask of the same maker for minutes. Now a call whose outcome is
unknown is sent again as it was until it is answered, and the maker's open orders are checked
(at start, now and then, and after giving up on a call): what it does not track is cancelled.
A stand-in OrderService on a local gRPC server, in memory."""
from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import pytest

from simulator.runner import Simulator, maker
from stockmesh.common.v1 import common_pb2
from stockmesh.order.v1 import order_pb2, order_service_pb2 as pb, order_service_pb2_grpc
from tests.support.wait import eventually

NEW, CANCELLED = common_pb2.ORDER_STATUS_NEW, common_pb2.ORDER_STATUS_CANCELLED
AAPL = maker("AAPL")


@dataclass(frozen=True)
class Fault:
    """How a call fails: with `code`, after it was carried out (`done`) or before."""

    code: grpc.StatusCode
    details: str
    done: bool


# fault(method, account, request, times this request was received) -> a Fault, or None: answered
FaultRule = Callable[[str, str, object, int], "Fault | None"]


class StandIn(order_service_pb2_grpc.OrderServiceServicer):
    """order_svc as the simulator sees it: a GTC order works (NEW) until cancelled, any other
    ends at once; a repeated PlaceOrder (the account's client_order_id) answers the order it
    made. ListOrders pages by two, newest first."""

    PAGE = 2

    def __init__(self, fault: FaultRule | None = None) -> None:
        self.fault = fault or (lambda *_: None)
        self.orders: dict[str, order_pb2.Order] = {}  # by order id, in the order they were made
        self.keys: dict[tuple[str, str], str] = {}  # (account, client_order_id) -> order id
        self.received: dict[tuple[str, str], list[object]] = {}  # (method, account|key) -> requests

    def add(self, account: str, request: pb.PlaceOrderRequest) -> order_pb2.Order:
        key = (account, request.client_order_id)
        if key not in self.keys:
            order_id = str(uuid.uuid4())
            working = request.time_in_force == common_pb2.TIME_IN_FORCE_GTC
            self.orders[order_id] = order_pb2.Order(
                order_id=order_id, client_order_id=request.client_order_id, account_id=account,
                symbol=request.symbol, side=request.side, type=request.type, quantity=request.quantity,
                limit_price=request.limit_price, time_in_force=request.time_in_force,
                status=NEW if working else CANCELLED)
            self.keys[key] = order_id
        return self.orders[self.keys[key]]

    def by_client_order_id(self, prefix: str, account: str = AAPL) -> list[order_pb2.Order]:
        return [o for o in self.orders.values() if o.account_id == account and o.client_order_id.startswith(prefix)]

    async def _faulted(self, method: str, key: str, request, context, carry_out: Callable[[], object]):
        account = _account(context)
        sent = self.received.setdefault((method, key), [])
        sent.append(request)
        fault = self.fault(method, account, request, len(sent))
        if fault is None:
            return carry_out()
        if fault.done:
            carry_out()
        await context.abort(fault.code, fault.details)

    async def PlaceOrder(self, request, context):
        account = _account(context)
        return await self._faulted("PlaceOrder", f"{account}|{request.client_order_id}", request, context,
                                   lambda: pb.PlaceOrderResponse(order=self.add(account, request)))

    async def CancelOrder(self, request, context):
        account = _account(context)
        o = self.orders.get(request.order_id)
        if o is None or o.account_id != account:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such order")
        if o.status not in (NEW, CANCELLED):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not working")

        def cancel():
            o.status = CANCELLED
            return pb.CancelOrderResponse(order=o)
        return await self._faulted("CancelOrder", request.order_id, request, context, cancel)

    async def ListOrders(self, request, context):
        account = _account(context)
        mine = [o for o in reversed(self.orders.values()) if o.account_id == account
                and (not request.statuses or o.status in request.statuses)
                and (not request.symbol or o.symbol == request.symbol)]
        start = int(request.page_token or 0)
        page = mine[start:start + self.PAGE]
        more = start + self.PAGE < len(mine)
        return pb.ListOrdersResponse(orders=page, next_page_token=str(start + self.PAGE) if more else "")


def _account(context) -> str:
    token = dict(context.invocation_metadata())["authorization"].removeprefix("Bearer ")
    claims = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["sub"]


@pytest.fixture
async def market(tmp_path) -> AsyncIterator[Callable[..., object]]:
    """market(stand_in, **simulator settings): the simulator trading against `stand_in`."""
    servers, tasks = [], []

    async def start(stand_in: StandIn, **settings) -> Simulator:
        server = grpc.aio.server()
        order_service_pb2_grpc.add_OrderServiceServicer_to_server(stand_in, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        sim = Simulator(f"127.0.0.1:{port}", tmp_path, seed=7, tick_seconds=0.1, **settings)
        tasks.append(asyncio.create_task(sim.run()))
        return sim

    yield start
    for task in tasks:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    for server in servers:
        await server.stop(None)


def _first_aapl_bid(method: str, account: str, request, _: int) -> bool:
    return method == "PlaceOrder" and account == AAPL and request.client_order_id.endswith(
        f"-AAPL-1-{common_pb2.SIDE_BUY}-0")


@pytest.mark.parametrize("code, details", [
    (grpc.StatusCode.UNAVAILABLE, "the service of /stockmesh.order.v1.OrderService/PlaceOrder is not answering"),
    (grpc.StatusCode.UNAVAILABLE, "Connection reset by peer"),
    (grpc.StatusCode.INTERNAL, "Stream removed (RST_STREAM (Received RST_STREAM with error code 2))"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
])
async def test_a_placement_whose_answer_was_lost_is_sent_again_and_its_order_later_cancelled(
        market, code: grpc.StatusCode, details: str) -> None:
    stand_in = StandIn(lambda method, account, request, n: Fault(code, details, done=True)
                       if n == 1 and _first_aapl_bid(method, account, request, n) else None)
    await market(stand_in)
    assert await eventually(lambda: stand_in.by_client_order_id("sim-"), timeout=30)
    [lost] = [o for o in stand_in.orders.values() if _first_aapl_bid("PlaceOrder", o.account_id, o, 1)]
    sent = stand_in.received[("PlaceOrder", f"{AAPL}|{lost.client_order_id}")]
    assert await eventually(lambda: len(sent) >= 2, timeout=30), "the placement was not sent again"
    assert all(r == sent[0] for r in sent)  # the same client_order_id, price and size
    # Tracked from its answer on, the bid goes with the maker's next quotes like any other.
    assert await eventually(lambda: lost.status == CANCELLED, timeout=30), lost


async def test_an_unanswered_cancel_is_sent_again_until_the_order_is_cancelled(market) -> None:
    first: list[str] = []

    def fault(method, account, request, n):
        if method == "CancelOrder" and account == AAPL and (not first or first == [request.order_id]):
            first[:] = [request.order_id]
            return Fault(grpc.StatusCode.UNAVAILABLE, "upstream connect error", done=False) if n <= 3 else None
        return None
    stand_in = StandIn(fault)
    await market(stand_in)
    assert await eventually(lambda: first, timeout=30)
    order = stand_in.orders[first[0]]
    assert await eventually(lambda: order.status == CANCELLED, timeout=30), order
    assert len(stand_in.received[("CancelOrder", first[0])]) == 4


async def test_orders_of_an_earlier_run_are_cancelled_at_start(market) -> None:
    stand_in = StandIn()
    earlier = [stand_in.add(maker("MSFT"), pb.PlaceOrderRequest(
        client_order_id=f"sim-0ld-MSFT-{i}-1-0", symbol="MSFT", side=common_pb2.SIDE_BUY,
        type=common_pb2.ORDER_TYPE_LIMIT, quantity=100, limit_price="400.00",
        time_in_force=common_pb2.TIME_IN_FORCE_GTC)) for i in range(5)]  # more than a ListOrders page
    await market(stand_in)
    assert await eventually(lambda: all(o.status == CANCELLED for o in earlier), timeout=30), earlier


async def test_a_placement_unanswered_for_the_whole_patience_is_found_and_cancelled(market) -> None:
    stand_in = StandIn(lambda method, account, request, n: Fault(
        grpc.StatusCode.UNAVAILABLE, "the service is not answering", done=True)
        if _first_aapl_bid(method, account, request, n) else None)
    await market(stand_in, retry_patience=0.5)
    assert await eventually(lambda: stand_in.by_client_order_id("sim-"), timeout=30)
    [lost] = [o for o in stand_in.orders.values() if _first_aapl_bid("PlaceOrder", o.account_id, o, 1)]
    # Never answered: the maker's open orders tell it the bid exists, and it is cancelled.
    assert await eventually(lambda: lost.status == CANCELLED, timeout=30), lost
    assert len(stand_in.received[("PlaceOrder", f"{AAPL}|{lost.client_order_id}")]) > 1


class Halting(StandIn):
    """Orders of the symbols in `halted` are REJECTED SYMBOL_HALTED, as order_svc answers them."""

    def __init__(self, halted: set[str]) -> None:
        super().__init__()
        self.halted, self.refused = halted, 0

    async def PlaceOrder(self, request, context):
        if request.symbol in self.halted:
            self.refused += 1
            return pb.PlaceOrderResponse(order=order_pb2.Order(
                order_id=str(uuid.uuid4()), client_order_id=request.client_order_id, symbol=request.symbol,
                status=common_pb2.ORDER_STATUS_REJECTED, reject_reason=order_pb2.ORDER_REJECT_REASON_SYMBOL_HALTED))
        return await super().PlaceOrder(request, context)


async def test_a_halted_symbol_is_asked_now_and_then_not_traded_and_trades_again_once_resumed(market) -> None:
    """Round 19 soak: through a halt the simulator kept quoting and taking the halted symbols
    several times a tick, every order REJECTED (~30 a second: 31k orders, 150k audit events,
    160 MB in 17 minutes). It now asks again every STOPPED_TICKS ticks (here 10 x 0.1 s) and
    takes nothing meanwhile; the other symbols go on. AAPL, a hot symbol, had a round every
    0.02 s: ~50 refusals in the second MSFT takes for ten rounds."""
    from simulator.runner import STOPPED_TICKS

    stand_in = Halting({"AAPL"})
    loop = asyncio.get_running_loop()
    started = loop.time()
    await market(stand_in)
    assert await eventually(lambda: len(stand_in.by_client_order_id("sim-", maker("MSFT"))) >= 40, timeout=60)
    # A round every STOPPED_TICKS ticks of 0.1 s, for as long as MSFT took (longer on a loaded
    # machine: a fixed bound of 5 failed there with 6), each of a quote's two sides and a take
    # at most; 5 the first second (4 seen), as before.
    rounds = (loop.time() - started) / (0.1 * STOPPED_TICKS)
    assert stand_in.refused <= 5 + 2 * rounds, (stand_in.refused, rounds)
    stand_in.halted.clear()  # resumed
    assert await eventually(lambda: stand_in.by_client_order_id("sim-", AAPL), timeout=30)
