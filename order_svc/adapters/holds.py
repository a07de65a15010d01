"""The ledger's HoldService, as order_svc sees it."""
from __future__ import annotations

import asyncio
from decimal import Decimal

import grpc

from meshkit.errors import Unavailable
from meshkit.money import fmt
from meshkit.status import error_info
from order_svc.domain.model import RejectReason
from stockmesh.ledger.v1 import hold_service_pb2 as pb, hold_service_pb2_grpc

_REFUSALS = {"INSUFFICIENT_FUNDS": RejectReason.INSUFFICIENT_FUNDS,
             "INSUFFICIENT_SHARES": RejectReason.INSUFFICIENT_SHARES}
# A transfer from a hold that already resolved: the old order ended in the ledger's view.
_TRANSFER_REFUSALS = {**_REFUSALS, "HOLD_RESOLVED": RejectReason.ORDER_NOT_ACTIVE}


def _amount(asset: str, amount: Decimal) -> str:
    return fmt(amount) if asset == "USD" else str(int(amount))


class GrpcHolds:
    """HoldService for the saga. `place` gathers the holds of concurrent placements into
    PlaceHolds calls: at most `batches_in_flight` calls wait for the ledger at once, and the
    holds asked for meanwhile go together in the next call (up to `max_batch`). An order
    placed alone goes at once, in a call of its own; under load the calls grow instead of
    multiplying (one gRPC call and one statement in the ledger for many holds)."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float = 5.0, *, batches_in_flight: int = 2,
                 max_batch: int = 200) -> None:
        if batches_in_flight < 1 or max_batch < 1:
            raise ValueError("batches_in_flight and max_batch must be at least 1")
        self.stub = hold_service_pb2_grpc.HoldServiceStub(channel)
        self.timeout = timeout
        self.batches_in_flight, self.max_batch = batches_in_flight, max_batch
        self._waiting: list[tuple[pb.PlaceHoldRequest, asyncio.Future[pb.PlaceHoldResult]]] = []
        self._senders: set[asyncio.Task[None]] = set()
        self.calls = 0  # PlaceHolds calls made (for tests and benchmarks)

    async def place(self, hold_id: str, account_id: str, order_id: str, asset: str,
                    amount: Decimal) -> RejectReason | None:
        """None when the hold is in place (now or by an earlier call with this id); the
        reason when the ledger refuses it. Transport trouble, or any other error of the
        ledger's, raises Unavailable: the saga stays pending and the recovery loop asks again
        with the same id."""
        request = pb.PlaceHoldRequest(hold_id=hold_id, account_id=account_id, order_id=order_id, asset=asset,
                                      amount=_amount(asset, amount))
        answer: asyncio.Future[pb.PlaceHoldResult] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, answer))
        if len(self._senders) < self.batches_in_flight:
            sender = asyncio.ensure_future(self._send())
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        # A caller that gives up (its deadline) leaves the hold to its batch; the order stays
        # PENDING_NEW and whoever drives it next asks again with the same id.
        result = await answer
        if result.HasField("hold"):
            return None
        error = result.error
        if error.code == "FAILED_PRECONDITION" and error.reason in _REFUSALS:
            return _REFUSALS[error.reason]
        raise Unavailable(f"ledger could not place hold {hold_id}: {error.code} {error.message}")

    async def _send(self) -> None:
        """Send what is waiting, a batch at a time, until nothing is."""
        while self._waiting:
            batch, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
            self.calls += 1
            try:
                reply = await self.stub.PlaceHolds(pb.PlaceHoldsRequest(holds=[r for r, _ in batch]),
                                                   timeout=self.timeout)
                if len(reply.results) != len(batch):
                    raise RuntimeError(f"the ledger answered {len(reply.results)} of {len(batch)} holds")
            except BaseException as exc:  # every waiter of the batch hears of it
                detail = f"{exc.code().name} {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)
                error = Unavailable(f"ledger could not place holds: {detail}")
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(error)
                if not isinstance(exc, Exception):
                    raise  # cancelled (shutting down)
                continue
            for (_, answer), result in zip(batch, reply.results):
                if not answer.done():
                    answer.set_result(result)

    async def release(self, hold_id: str) -> None:
        try:
            await self.stub.ReleaseHold(pb.ReleaseHoldRequest(hold_id=hold_id), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise Unavailable(f"ledger could not release hold {hold_id}: {exc.code().name}") from exc

    async def transfer(self, from_hold_id: str, to_hold_id: str, order_id: str, account_id: str, asset: str,
                       unit: Decimal, reserve: Decimal) -> RejectReason | None:
        """Prepare moving `from_hold_id` to `to_hold_id` (reserving `reserve` more now). None
        when the transfer is recorded (now or by an earlier call with this id); the reason when
        the ledger refuses it. Transport trouble raises Unavailable."""
        try:
            await self.stub.TransferHold(pb.TransferHoldRequest(
                from_hold_id=from_hold_id, to_hold_id=to_hold_id, order_id=order_id, account_id=account_id,
                asset=asset, unit_amount=fmt(unit), reserve_amount=_amount(asset, reserve) if reserve else "0"),
                timeout=self.timeout)
            return None
        except grpc.aio.AioRpcError as exc:
            info, _ = error_info(exc)
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and info and info.reason in _TRANSFER_REFUSALS:
                return _TRANSFER_REFUSALS[info.reason]
            raise Unavailable(f"ledger could not transfer hold {from_hold_id} to {to_hold_id}: "
                              f"{exc.code().name} {exc.details()}") from exc

    async def cancel_transfer(self, to_hold_id: str) -> None:
        try:
            await self.stub.CancelHoldTransfer(pb.CancelHoldTransferRequest(to_hold_id=to_hold_id),
                                               timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise Unavailable(f"ledger could not cancel the transfer to {to_hold_id}: {exc.code().name}") from exc
