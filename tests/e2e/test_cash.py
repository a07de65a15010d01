"""Cash through Envoy, as a client sees it: deposits, portfolio, isolation between accounts,
and malformed input refused with field violations, nothing written, the service still SERVING."""
from __future__ import annotations

import uuid

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshkit.status import error_info
from stockmesh.ledger.v1 import ledger_service_pb2 as pb, ledger_service_pb2_grpc

pytestmark = pytest.mark.e2e


def account() -> str:
    return f"e2e-{uuid.uuid4().hex[:8]}"


async def test_deposit_then_portfolio_shows_it_only_to_its_account(mesh):
    alice, bob = account(), account()
    async with mesh.channel() as ch:
        ledger = ledger_service_pb2_grpc.LedgerServiceStub(ch)
        r = await ledger.Deposit(pb.DepositRequest(amount="1000.50", idempotency_key="d1"), metadata=mesh.auth(alice))
        assert (r.cash.total, r.cash.available, r.cash.held) == ("1000.50", "1000.50", "0.00")
        again = await ledger.Deposit(pb.DepositRequest(amount="1000.50", idempotency_key="d1"), metadata=mesh.auth(alice))
        assert again.cash.total == "1000.50"  # the same key applies once
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ledger.Deposit(pb.DepositRequest(amount="5", idempotency_key="d1"), metadata=mesh.auth(alice))
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        w = await ledger.Withdraw(pb.WithdrawRequest(amount="0.50", idempotency_key="w1"), metadata=mesh.auth(alice))
        assert w.cash.total == "1000.00"
        # A key names one request of the account, whatever its kind.
        for call, req in ((ledger.Withdraw, pb.WithdrawRequest(amount="10", idempotency_key="d1")),
                          (ledger.Deposit, pb.DepositRequest(amount="0.50", idempotency_key="w1"))):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(req, metadata=mesh.auth(alice))
            info, _ = error_info(err.value)
            assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and info.reason == "DUPLICATE_IDEMPOTENCY_KEY"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ledger.Withdraw(pb.WithdrawRequest(amount="1000.01", idempotency_key="w2"), metadata=mesh.auth(alice))
        info, _ = error_info(err.value)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and info.reason == "INSUFFICIENT_FUNDS"

        p = (await ledger.GetPortfolio(pb.GetPortfolioRequest(), metadata=mesh.auth(alice))).portfolio
        assert (p.account_id, p.cash.total, p.cash.available, p.equity) == (alice, "1000.00", "1000.00", "1000.00")
        other = (await ledger.GetPortfolio(pb.GetPortfolioRequest(), metadata=mesh.auth(bob))).portfolio
        assert (other.account_id, other.cash.total) == (bob, "0.00")
        acts = await ledger.ListActivities(pb.ListActivitiesRequest(page_size=1), metadata=mesh.auth(alice))
        assert len(acts.activities) == 1 and acts.activities[0].amount == "-0.50" and acts.next_page_token
        assert not (await ledger.ListActivities(pb.ListActivitiesRequest(), metadata=mesh.auth(bob))).activities


async def test_a_forged_identity_header_is_ignored(mesh):
    """A client cannot claim another account by sending Envoy's payload header itself."""
    import base64
    import json

    victim, attacker = account(), account()
    forged = base64.urlsafe_b64encode(json.dumps({"sub": victim}).encode()).decode().rstrip("=")
    async with mesh.channel() as ch:
        ledger = ledger_service_pb2_grpc.LedgerServiceStub(ch)
        await ledger.Deposit(pb.DepositRequest(amount="7", idempotency_key="v"), metadata=mesh.auth(victim))
        p = (await ledger.GetPortfolio(pb.GetPortfolioRequest(),
                                       metadata=mesh.auth(attacker) + (("x-jwt-payload", forged),))).portfolio
    assert (p.account_id, p.cash.total) == (attacker, "0.00")


BAD_AMOUNTS = ["-5", "abc", "1e400", "NaN", "0", "1.001", "x" * 1_000_000, "٣", "１００"]


@pytest.mark.parametrize("amount", BAD_AMOUNTS, ids=lambda a: a[:10])
async def test_bad_input_is_invalid_argument_and_writes_nothing(mesh, amount):
    acct = account()
    async with mesh.channel() as ch:
        ledger = ledger_service_pb2_grpc.LedgerServiceStub(ch)
        for call, req in ((ledger.Deposit, pb.DepositRequest(amount=amount, idempotency_key="k")),
                          (ledger.Withdraw, pb.WithdrawRequest(amount=amount, idempotency_key="k"))):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(req, metadata=mesh.auth(acct))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
            info, bad = error_info(err.value)
            assert info.reason == "INVALID_ARGUMENT" and [v.field for v in bad.field_violations] == ["amount"]
        # Still serving, and nothing was written for the account.
        r = await ledger.Deposit(pb.DepositRequest(amount="1", idempotency_key="ok"), metadata=mesh.auth(acct))
        assert r.cash.total == "1.00"
    conn = await asyncpg.connect(mesh.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ledger.entries WHERE account_id = $1", acct) == 1
    finally:
        await conn.close()
    ledger_port = next(v for k, v in mesh.state()["ports"].items() if "ledger" in k)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ledger_port}") as direct:
        h = await health_pb2_grpc.HealthStub(direct).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert h.status == health_pb2.HealthCheckResponse.SERVING


async def test_unspecified_enum_is_invalid_argument(mesh):
    from stockmesh.common.v1 import common_pb2
    from stockmesh.order.v1 import order_service_pb2 as opb, order_service_pb2_grpc

    async with mesh.channel() as ch:
        orders = order_service_pb2_grpc.OrderServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await orders.PlaceOrder(opb.PlaceOrderRequest(
                client_order_id="e1", symbol="AAPL", side=common_pb2.SIDE_UNSPECIFIED, type=common_pb2.ORDER_TYPE_LIMIT,
                quantity=1, limit_price="187.25", time_in_force=common_pb2.TIME_IN_FORCE_DAY), metadata=mesh.auth(account()))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, bad = error_info(err.value)
    assert [v.field for v in bad.field_violations] == ["side"]
