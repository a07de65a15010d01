"""The ledger's HoldService, as order_svc sees it."""
from __future__ import annotations

from decimal import Decimal

import grpc

from meshkit.errors import Unavailable
from meshkit.money import fmt
from meshkit.status import error_info
from order_svc.domain.model import RejectReason
from stockmesh.ledger.v1 import hold_service_pb2 as pb, hold_service_pb2_grpc

_REFUSALS = {"INSUFFICIENT_FUNDS": RejectReason.INSUFFICIENT_FUNDS,
             "INSUFFICIENT_SHARES": RejectReason.INSUFFICIENT_SHARES}


class GrpcHolds:
    def __init__(self, channel: grpc.aio.Channel, timeout: float = 5.0) -> None:
        self.stub = hold_service_pb2_grpc.HoldServiceStub(channel)
        self.timeout = timeout

    async def place(self, hold_id: str, account_id: str, order_id: str, asset: str,
                    amount: Decimal) -> RejectReason | None:
        """None when the hold is in place (now or by an earlier call with this id); the
        reason when the ledger refuses it. Transport trouble raises Unavailable: the saga
        stays pending and the recovery loop asks again with the same id."""
        try:
            await self.stub.PlaceHold(pb.PlaceHoldRequest(
                hold_id=hold_id, account_id=account_id, order_id=order_id, asset=asset,
                amount=fmt(amount) if asset == "USD" else str(int(amount))), timeout=self.timeout)
            return None
        except grpc.aio.AioRpcError as exc:
            info, _ = error_info(exc)
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and info and info.reason in _REFUSALS:
                return _REFUSALS[info.reason]
            raise Unavailable(f"ledger could not place hold {hold_id}: {exc.code().name} {exc.details()}") from exc

    async def release(self, hold_id: str) -> None:
        try:
            await self.stub.ReleaseHold(pb.ReleaseHoldRequest(hold_id=hold_id), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise Unavailable(f"ledger could not release hold {hold_id}: {exc.code().name}") from exc
