"""The simulated market of `stockmesh up` (MISSION: it keeps every configured symbol trading so
that market orders find liquidity): once it has quoted, every symbol's book shows both sides
at every moment sampled (its liquidity provider rests new quotes before it cancels the old
ones), and a market buy of every symbol fills. One symbol replays historical candles from a
CSV file (`--replay`, MISSION's "optional replay"), and its quotes follow them."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal

import pytest

from meshkit.launcher.harness import MeshProcess
from meshkit.symbols import listed
from stockmesh.common.v1 import common_pb2
from stockmesh.ledger.v1 import ledger_service_pb2, ledger_service_pb2_grpc
from stockmesh.matching.v1 import market_data_service_pb2 as md, market_data_service_pb2_grpc
from stockmesh.order.v1 import order_service_pb2 as opb, order_service_pb2_grpc
from tests.support.meshes import start_or_fail
from tests.support.wait import eventually

pytestmark = pytest.mark.e2e


REPLAYED = "KO"  # reference 62.15; its candles swing it between 60.00 and 66.00


def replay_csv(folder) -> str:
    rows = ["symbol,start_time,interval,open,high,low,close,volume"]
    for i in range(60):  # four quotes each: the replay lasts minutes, longer than the tests
        rows.append(f"{REPLAYED},2024-03-04T{14 + i // 60:02d}:{i % 60:02d}:00Z,1m,62.00,66.00,60.00,63.00,1000")
    path = folder / "ko-history.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshProcess]:
    folder = tmp_path_factory.mktemp("simulated")
    mesh = start_or_fail(MeshProcess(data_dir=folder / "mesh", db_prefix="stockmesh_e2e", namespace_prefix="e2esim",
                                     extra_args=["--replay", replay_csv(folder)]))  # the simulator on, as by default
    try:
        yield mesh
    finally:
        code = mesh.stop()
    assert code == 0, f"stockmesh up exited with {code}\n{mesh.diagnostics()}"


async def test_every_symbol_keeps_a_two_sided_book_and_market_orders_fill(simulated: MeshProcess) -> None:
    symbols = sorted(listed())
    async with simulated.channel() as ch:
        books = market_data_service_pb2_grpc.MarketDataServiceStub(ch)
        md_auth = simulated.auth("sim-watcher")

        async def one_sided() -> list[str]:
            replies = await asyncio.gather(*(books.GetOrderBook(md.GetOrderBookRequest(symbol=s, depth=1),
                                                                metadata=md_auth, timeout=10) for s in symbols))
            return [s for s, b in zip(symbols, replies) if not (b.bids and b.asks)]

        assert await eventually(lambda: _empty(one_sided), timeout=60), \
            f"not every symbol was quoted on both sides within 60 s\n{simulated.diagnostics()}"
        gaps: list[tuple[int, list[str]]] = []
        for i in range(40):  # ~10 s of the market: the hot symbols re-quote ~50 times meanwhile
            if missing := await one_sided():
                gaps.append((i, missing))
            await asyncio.sleep(0.25)
        assert gaps == [], f"samples with a side of the book empty: {gaps}"

        buyer = simulated.auth("sim-market-buyer")
        await ledger_service_pb2_grpc.LedgerServiceStub(ch).Deposit(
            ledger_service_pb2.DepositRequest(amount="100000.00", idempotency_key="fund"), metadata=buyer, timeout=10)
        orders = order_service_pb2_grpc.OrderServiceStub(ch)
        placed = {}
        for s in symbols:
            reply = await orders.PlaceOrder(opb.PlaceOrderRequest(
                client_order_id=f"mkt-{s}", symbol=s, side=common_pb2.SIDE_BUY, type=common_pb2.ORDER_TYPE_MARKET,
                quantity=1, time_in_force=common_pb2.TIME_IN_FORCE_IOC), metadata=buyer, timeout=10)
            assert reply.order.status != common_pb2.ORDER_STATUS_REJECTED, reply.order
            placed[s] = reply.order.order_id

        seen: dict[str, str] = {}

        async def all_filled() -> bool:
            for s, oid in placed.items():
                o = (await orders.GetOrder(opb.GetOrderRequest(order_id=oid), metadata=buyer, timeout=10)).order
                seen[s] = common_pb2.OrderStatus.Name(o.status)
            return set(seen.values()) == {"ORDER_STATUS_FILLED"}

        assert await eventually(all_filled, timeout=30), f"market buys not all filled: {seen}"


async def _empty(one_sided) -> bool:
    return not await one_sided()


async def test_a_replayed_symbol_s_quotes_follow_its_candles(simulated: MeshProcess) -> None:
    """Its candles go from 60.00 to 66.00 and back, again and again; a random walk from 62.15
    moves a few tenths of a percent in the time this watches."""
    from stockmesh.quote.v1 import quote_service_pb2 as qpb, quote_service_pb2_grpc

    seen: list[tuple[str, str]] = []
    async with simulated.channel() as ch:
        stream = quote_service_pb2_grpc.QuoteServiceStub(ch).StreamQuotes(
            qpb.StreamQuotesRequest(symbols=[REPLAYED]), metadata=simulated.auth("replay-watcher"), timeout=90)

        async def swung() -> bool:
            async for q in stream:
                seen.append((q.bid_price, q.ask_price))
                bids = [Decimal(b) for b, _ in seen if b]
                asks = [Decimal(a) for _, a in seen if a]
                if bids and asks and min(bids) <= Decimal("60.10") and max(asks) >= Decimal("65.90"):
                    return True
            return False
        try:
            assert await asyncio.wait_for(swung(), 80), seen[-10:]
        finally:
            stream.cancel()
    assert "replaying historical candles" in simulated.log("simulator", 400)

