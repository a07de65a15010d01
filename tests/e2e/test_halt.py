"""An operator halts a symbol with `stockmesh engine halt` (EngineControlService on
matching_svc, which Envoy does not route): orders through Envoy are REJECTED / SYMBOL_HALTED,
the quote says halted, `engine status` shows it; after `engine resume` orders are accepted."""
from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from meshkit.launcher.mesh import engine_instance_id
from tests.support.wait import eventually
from stockmesh.common.v1 import common_pb2
from stockmesh.ledger.v1 import ledger_service_pb2 as lpb, ledger_service_pb2_grpc
from stockmesh.order.v1 import order_pb2, order_service_pb2 as opb, order_service_pb2_grpc
from stockmesh.quote.v1 import quote_service_pb2 as qpb, quote_service_pb2_grpc

pytestmark = pytest.mark.e2e
SYMBOL = "TSLA"  # no other end-to-end test trades it


def engine_cli(mesh, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshkit.cli", "engine", *args, "--data-dir", str(mesh.data_dir)],
                          capture_output=True, text=True, timeout=60)


async def test_operator_halts_and_resumes_a_symbol(mesh):
    account = f"halt-{uuid.uuid4().hex[:6]}"
    md = mesh.auth(account)
    async with mesh.channel() as ch:
        orders = order_service_pb2_grpc.OrderServiceStub(ch)
        quotes = quote_service_pb2_grpc.QuoteServiceStub(ch)
        ledger = ledger_service_pb2_grpc.LedgerServiceStub(ch)
        await ledger.Deposit(
            lpb.DepositRequest(amount="1000.00", idempotency_key="h"), metadata=md)

        def buy(coid: str) -> opb.PlaceOrderRequest:
            return opb.PlaceOrderRequest(client_order_id=coid, symbol=SYMBOL, side=common_pb2.SIDE_BUY,
                                         type=common_pb2.ORDER_TYPE_LIMIT, quantity=1, limit_price="240.00",
                                         time_in_force=common_pb2.TIME_IN_FORCE_GTC)

        bad = engine_cli(mesh, "halt", "NOPE")
        assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr, bad.stderr
        done = engine_cli(mesh, "halt", SYMBOL, "--reason", "volatility")
        assert done.returncode == 0, done.stderr

        async def quote_halted() -> bool:
            try:
                return (await quotes.GetQuote(qpb.GetQuoteRequest(symbol=SYMBOL), metadata=md)).quote.halted
            except Exception:  # noqa: BLE001 - no quote yet
                return False

        assert await eventually(quote_halted)

        async def refused() -> bool:  # order_svc hears of the halt from the same feed
            coid = uuid.uuid4().hex
            order = (await orders.PlaceOrder(buy(coid), metadata=md)).order
            if order.status != common_pb2.ORDER_STATUS_REJECTED:
                await orders.CancelOrder(opb.CancelOrderRequest(order_id=order.order_id), metadata=md)
                cancelled.append(order.order_id)
                return False
            assert order.reject_reason == order_pb2.ORDER_REJECT_REASON_SYMBOL_HALTED, order
            return True

        cancelled: list[str] = []
        assert await eventually(refused)
        status = engine_cli(mesh, "status")
        assert status.returncode == 0 and f"{SYMBOL:<6} HALTED" in status.stdout, status.stdout
        assert "(volatility)" in status.stdout, status.stdout  # and why
        assert f"{SYMBOL:<6} HALTED   last input " in status.stdout and "closed through " in status.stdout, status.stdout
        # The launcher names the engine the same at every start, so one started again after a
        # crash takes its leases back at once (meshkit.launcher.mesh.engine_instance_id).
        assert f"engine instance {engine_instance_id(mesh.data_dir, 'matching_svc')}" in status.stdout, status.stdout

        assert engine_cli(mesh, "resume", SYMBOL).returncode == 0
        async def trading() -> bool:
            return not await quote_halted()

        assert await eventually(trading)
        order = (await orders.PlaceOrder(buy("after"), metadata=md)).order
        assert order.status in (common_pb2.ORDER_STATUS_PENDING_NEW, common_pb2.ORDER_STATUS_NEW), order
        await orders.CancelOrder(opb.CancelOrderRequest(order_id=order.order_id), metadata=md)
        cancelled.append(order.order_id)

        async def all_cancelled() -> bool:  # order_svc and the ledger each apply the engine's CANCELLED
            for order_id in cancelled:
                got = (await orders.GetOrder(opb.GetOrderRequest(order_id=order_id), metadata=md)).order
                if got.status != common_pb2.ORDER_STATUS_CANCELLED:
                    return False
            p = (await ledger.GetPortfolio(lpb.GetPortfolioRequest(), metadata=md)).portfolio
            return p.cash.held == "0.00"

        assert await eventually(all_cancelled)
