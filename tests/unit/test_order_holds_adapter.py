"""order_svc's HoldService client: what a PlaceOrder's client hears when the ledger fails."""
from __future__ import annotations

from decimal import Decimal

import grpc
import pytest

from meshkit.errors import Unavailable
from order_svc.adapters.holds import GrpcHolds
from stockmesh.ledger.v1 import hold_service_pb2 as pb, hold_service_pb2_grpc


async def test_a_ledger_that_does_not_answer_is_unavailable_without_its_address() -> None:
    """The transport's details ("ipv4:127.0.0.1:52267: Failed to connect") name internal
    addresses (a pod's, in Kubernetes): they go to the log; the client hears the code
    (acceptance round 10)."""
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
        with pytest.raises(Unavailable) as err:
            await GrpcHolds(channel, timeout=2).place("h", "acct", "o", "USD", Decimal("1"))
    assert "UNAVAILABLE" in err.value.message and "retry" in err.value.message
    assert "127.0.0.1" not in err.value.message and "ipv4" not in err.value.message


class Ledger(hold_service_pb2_grpc.HoldServiceServicer):
    def __init__(self, code: str) -> None:
        self.code = code

    async def PlaceHolds(self, request, context):
        return pb.PlaceHoldsResponse(results=[pb.PlaceHoldResult(error=pb.HoldError(
            code=self.code, reason=self.code, message="from the ledger")) for _ in request.holds])


@pytest.mark.parametrize("code, raised", [("UNAVAILABLE", Unavailable), ("INVALID_ARGUMENT", RuntimeError)])
async def test_a_hold_the_ledger_finds_wrong_is_a_bug_not_a_retry(code: str, raised: type) -> None:
    """A transient error of the ledger's is UNAVAILABLE (ask again); one that says the request
    itself is wrong would never succeed, so it is not passed off as one to retry (INTERNAL)."""
    server = grpc.aio.server()
    hold_service_pb2_grpc.add_HoldServiceServicer_to_server(Ledger(code), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(raised):
                await GrpcHolds(channel, timeout=5).place("h", "acct", "o", "USD", Decimal("1"))
    finally:
        await server.stop(None)
