"""Stopping the whole mesh (Ctrl-C or SIGTERM to `stockmesh up`) ends a client's open streams
as a service's own shutdown does: UNAVAILABLE with ErrorInfo SHUTTING_DOWN (and, for the order
updates, where to resume), not "Socket closed" because Envoy went first (acceptance round 9).
A mesh of its own, since the test stops it."""
from __future__ import annotations

import asyncio
import signal

import grpc

from meshkit.launcher.harness import MeshProcess
from meshkit.status import error_info
from stockmesh.common.v1 import common_pb2
from stockmesh.ledger.v1 import ledger_service_pb2 as lpb, ledger_service_pb2_grpc
from stockmesh.order.v1 import order_service_pb2 as opb, order_service_pb2_grpc
from stockmesh.quote.v1 import quote_service_pb2 as qpb, quote_service_pb2_grpc
from tests.support.meshes import start_or_fail
from tests.support.wait import eventually


async def test_stopping_the_mesh_ends_streams_with_shutting_down():
    mesh = start_or_fail(MeshProcess(db_prefix="stockmesh_e2e_stop", namespace_prefix="e2estop",
                                     extra_args=["--no-simulator"]))
    try:
        async with mesh.channel() as ch:
            md = mesh.auth("stopper")
            await ledger_service_pb2_grpc.LedgerServiceStub(ch).Deposit(
                lpb.DepositRequest(amount="1000.00", idempotency_key="stop-1"), metadata=md, timeout=30)
            placed = await order_service_pb2_grpc.OrderServiceStub(ch).PlaceOrder(opb.PlaceOrderRequest(
                client_order_id="stop-bid", symbol="AAPL", side=common_pb2.SIDE_BUY, type=common_pb2.ORDER_TYPE_LIMIT,
                quantity=1, limit_price="187.00", time_in_force=common_pb2.TIME_IN_FORCE_GTC), metadata=md, timeout=30)
            assert placed.order.status == common_pb2.ORDER_STATUS_NEW, placed

            async def quoted() -> bool:  # AAPL has a quote: the stream's snapshot comes at once
                try:
                    reply = await quote_service_pb2_grpc.QuoteServiceStub(ch).GetQuote(
                        qpb.GetQuoteRequest(symbol="AAPL"), metadata=md, timeout=10)
                except grpc.aio.AioRpcError:
                    return False
                return reply.quote.bid_price == "187.00"
            assert await eventually(quoted, timeout=60), mesh.diagnostics()
            quotes = quote_service_pb2_grpc.QuoteServiceStub(ch).StreamQuotes(
                qpb.StreamQuotesRequest(symbols=["AAPL"]), metadata=mesh.auth("stopper"))
            await asyncio.wait_for(quotes.read(), 60)  # the snapshot: the stream is open
            updates = order_service_pb2_grpc.OrderServiceStub(ch).StreamOrderUpdates(
                opb.StreamOrderUpdatesRequest(), metadata=mesh.auth("stopper"))
            await asyncio.wait_for(updates.initial_metadata(), 30)  # sent once it listens

            assert mesh.proc is not None
            mesh.proc.send_signal(signal.SIGTERM)  # as `stockmesh up` is stopped
            ended = {}
            for name, stream in (("quotes", quotes), ("updates", updates)):
                try:
                    while await asyncio.wait_for(stream.read(), 60) is not grpc.aio.EOF:  # the test's own bound
                        pass
                except grpc.aio.AioRpcError as exc:
                    ended[name] = exc
            assert await asyncio.get_running_loop().run_in_executor(None, mesh.proc.wait) == 0
    finally:
        mesh.stop()
    assert set(ended) == {"quotes", "updates"}, ended
    for name, exc in ended.items():
        info, _ = error_info(exc)
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, (name, exc)
        assert info is not None and info.reason == "SHUTTING_DOWN", (name, exc)
    updates_info, _ = error_info(ended["updates"])
    assert "afterSequence" in updates_info.metadata


async def test_calls_racing_a_stopping_service_are_answered_or_unavailable_never_cancelled():
    """A service stopping (SIGTERM: a restart, a rolling deploy) while calls arrive: gRPC itself
    answered CANCELLED to the calls that reached it as it began to stop (acceptance round 11:
    a Deposit; ~3 per SIGTERM here), which clients do not retry. Envoy sends those again; the
    client sees its answer or UNAVAILABLE, and a deposit retried with its key until answered
    is applied once (the balance is the number of keys)."""
    import os
    import uuid

    mesh = start_or_fail(MeshProcess(db_prefix="stockmesh_e2e_race", namespace_prefix="e2erace",
                                     extra_args=["--no-simulator"]))
    codes: dict[str, int] = {}
    try:
        stop = asyncio.Event()
        keys: list[str] = []

        async def depositor(n: int) -> None:
            async with mesh.channel() as ch:
                stub, md = ledger_service_pb2_grpc.LedgerServiceStub(ch), mesh.auth(f"racer-{n}")
                while not stop.is_set():
                    key = uuid.uuid4().hex
                    while True:  # as a client does: the same key until it is answered
                        try:
                            await stub.Deposit(lpb.DepositRequest(amount="1.00", idempotency_key=key), metadata=md,
                                               timeout=10)
                            codes["OK"] = codes.get("OK", 0) + 1
                            keys.append(f"{n}")
                            break
                        except grpc.aio.AioRpcError as exc:
                            codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
                            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                                break
                            await asyncio.sleep(0.05)

        workers = [asyncio.create_task(depositor(n)) for n in range(10)]
        for _ in range(3):
            await asyncio.sleep(2)  # deposits flowing before each kill
            served = codes.get("OK", 0)
            for _ in range(50):  # the restarted one, once mesh.json names it
                try:
                    os.kill(mesh.state()["pids"]["ledger_svc"], signal.SIGTERM)
                    break
                except (KeyError, ProcessLookupError):
                    await asyncio.sleep(0.2)
            assert await eventually(lambda: codes.get("OK", 0) > served + 20, timeout=60), (codes, mesh.diagnostics())
        stop.set()
        await asyncio.gather(*workers)
        assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
        async with mesh.channel() as ch:
            for n in range(10):
                cash = (await ledger_service_pb2_grpc.LedgerServiceStub(ch).GetPortfolio(
                    lpb.GetPortfolioRequest(), metadata=mesh.auth(f"racer-{n}"), timeout=30)).portfolio.cash
                assert cash.total == f"{keys.count(str(n))}.00", (n, cash)
    finally:
        mesh.stop()
