"""The ledger's HoldService, as order_svc sees it."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timezone
from decimal import Decimal

import grpc

from meshkit.batching import Batcher
from meshkit.errors import Unavailable
from meshkit.money import amount_text, fmt
from meshkit.prototime import set_time
from meshkit.status import TRANSIENT_NAMES, error_info, unavailable, upstream_unavailable
from order_svc.domain.model import (ClientKeyKept, ClientKeyTaken, HoldNotYet, HoldResolved, HoldTaken, Refusal,
                                    RejectReason, TransferPending, UncheckedHold)
from stockmesh.ledger.v1 import hold_service_pb2 as pb, hold_service_pb2_grpc, ledger_pb2

log = logging.getLogger("order_svc.holds")
_REFUSALS = {"INSUFFICIENT_FUNDS": RejectReason.INSUFFICIENT_FUNDS,
             "INSUFFICIENT_SHARES": RejectReason.INSUFFICIENT_SHARES}
# A transfer from a hold that already resolved: the old order ended in the ledger's view.
_TRANSFER_REFUSALS = {**_REFUSALS, "HOLD_RESOLVED": RejectReason.ORDER_NOT_ACTIVE}


def _account_busy(message: str, metadata: Mapping[str, str], account_id: str) -> Unavailable:
    """The ledger's ACCOUNT_BUSY (an account held by another transaction longer than its lock
    wait) as order_svc answers it: UNAVAILABLE with the reason, RetryInfo and the account, in
    the ledger's words (they name the account), for the client to send the same request again."""
    busy = unavailable(f"{message} (the same client_order_id)", "ACCOUNT_BUSY")
    busy.metadata = {"accountId": metadata.get("accountId", account_id)}
    return busy


class GrpcHolds:
    """HoldService for the saga. `place` gathers the holds of concurrent placements into
    PlaceHolds calls (meshkit.batching): at most `batches_in_flight` calls wait for the ledger
    at once, and the holds asked for meanwhile go together in the next call (up to
    `max_batch`). An order placed alone goes at once, in a call of its own; under load the
    calls grow instead of multiplying (one gRPC call and one statement in the ledger for many
    holds)."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float = 5.0, *, batches_in_flight: int = 2,
                 max_batch: int = 200) -> None:
        self.stub = hold_service_pb2_grpc.HoldServiceStub(channel)
        self.timeout = timeout
        self._batcher: Batcher[pb.PlaceHoldRequest, pb.PlaceHoldResult] = Batcher(
            self._place_holds, in_flight=batches_in_flight, max_batch=max_batch, name="place_holds")
        self._awaits: Batcher[str, bool] = Batcher(self._await_executions, in_flight=batches_in_flight,
                                                   max_batch=max_batch, name="await_executions")
        self._keys: Batcher[pb.ClientKey, pb.ClientKeyResult] = Batcher(
            self._register_keys, in_flight=batches_in_flight, max_batch=max_batch, name="register_client_keys")

    @property
    def calls(self) -> int:
        """PlaceHolds calls made (for tests and benchmarks)."""
        return self._batcher.batches

    async def place(self, hold_id: str, account_id: str, order_id: str, asset: str,
                    amount: Decimal, client_key: str = "", answer_kept_key: bool = False) -> Refusal | None:
        """None when the hold is in place (now or by an earlier call with this id); the
        reason when the ledger refuses it; HoldResolved when an earlier call placed it and it
        has been captured or released since; HoldTaken when an earlier call placed another
        amount under this id; ClientKeyTaken when another hold of the account carries
        `client_key` (the order's client_order_id; empty: none); with `answer_kept_key`,
        ClientKeyKept when the ledger kept `client_key` for this very order without a hold
        (nothing held: the request was answered before). Transport trouble, or a
        transient error of the ledger's, raises Unavailable: nothing is recorded, and asking
        again with the same id is safe; any other error of the ledger's is a bug (INTERNAL). A
        caller that gives up (its deadline) leaves the hold to its batch."""
        result = await self._batcher.submit(pb.PlaceHoldRequest(
            hold_id=hold_id, account_id=account_id, order_id=order_id, asset=asset, amount=amount_text(asset, amount),
            client_key=client_key, answer_kept_key=answer_kept_key))
        if result.HasField("hold"):
            if result.hold.status != ledger_pb2.HOLD_STATUS_PENDING:
                raise HoldResolved(hold_id)
            return None
        error = result.error
        if error.code == "FAILED_PRECONDITION" and error.reason in _REFUSALS:
            return Refusal(_REFUSALS[error.reason], error.message)
        if error.code == "ALREADY_EXISTS" and error.reason == "DUPLICATE_HOLD_ID":
            raise HoldTaken(hold_id)
        if error.code == "ALREADY_EXISTS" and error.reason == "CLIENT_KEY_KEPT":
            raise ClientKeyKept(hold_id)
        if error.code == "ALREADY_EXISTS" and error.reason == "DUPLICATE_CLIENT_KEY":
            raise ClientKeyTaken(error.metadata.get("orderId", ""), error.metadata.get("holdStatus") == "RELEASED")
        if error.code in TRANSIENT_NAMES and error.reason == "ACCOUNT_BUSY":
            raise _account_busy(error.message, error.metadata, account_id)
        if error.code in TRANSIENT_NAMES:
            raise unavailable(f"the ledger could not place the order's hold now ({error.code}); retry shortly with "
                              "the same client_order_id", error.reason)
        # The ledger found the request itself wrong: a bug here, not a state to wait out.
        raise RuntimeError(f"ledger refused hold {hold_id}: {error.code} {error.reason} {error.message}")

    async def await_executions(self, account_id: str) -> bool:
        """Whether a hold of the account refused for want of cash or shares should be asked for
        again: the ledger had executions in flight for it, and has applied them now
        (HoldService.AwaitExecutions). The refusals of concurrent placements go together, in a
        call made after each was refused. Transport trouble raises Unavailable."""
        return await self._awaits.submit(account_id)

    async def register_key(self, account_id: str, client_key: str, order_id: str) -> None:
        """Have the ledger keep `client_key` (an order's client_order_id) for `order_id`, an
        order with no hold of its own (HoldService.RegisterClientKeys): a hold asked under it
        for another order is refused then. ClientKeyTaken when another order of the account has
        it. The keys of concurrent callers go together, in one call. Transport trouble, or the
        ledger's transient errors, raise Unavailable: nothing is kept, and asking again is safe."""
        result = await self._keys.submit(pb.ClientKey(account_id=account_id, client_key=client_key,
                                                      order_id=order_id))
        if result.holder_order_id:
            raise ClientKeyTaken(result.holder_order_id, result.holder_hold_status == "RELEASED")

    async def _register_keys(self, batch: list[pb.ClientKey]) -> list[pb.ClientKeyResult]:
        try:
            reply = await self.stub.RegisterClientKeys(pb.RegisterClientKeysRequest(keys=batch), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise upstream_unavailable(exc, "the ledger could not register the client_order_id", log) from exc
        return list(reply.results)

    async def _await_executions(self, accounts: list[str]) -> list[bool]:
        try:
            reply = await self.stub.AwaitExecutions(pb.AwaitExecutionsRequest(account_ids=sorted(set(accounts))),
                                                    timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise upstream_unavailable(exc, "the ledger could not wait for executions in flight", log) from exc
        retry = set(reply.retry_account_ids)
        return [a in retry for a in accounts]

    async def _place_holds(self, batch: list[pb.PlaceHoldRequest]) -> list[pb.PlaceHoldResult]:
        try:
            reply = await self.stub.PlaceHolds(pb.PlaceHoldsRequest(holds=batch), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise upstream_unavailable(exc, "the ledger could not place the order's hold (retrying with the same "
                                            "client_order_id is safe)", log) from exc
        return list(reply.results)

    async def unchecked(self, older_than: float, orphan_age: float, limit: int,
                        after: UncheckedHold | None = None) -> list[UncheckedHold]:
        """Pending holds placed more than `older_than` seconds ago and not yet checked against
        their order, oldest first, after the hold `after` (the last of the previous page) if
        given; each says whether it is older than `orphan_age` seconds."""
        request = pb.ListUncheckedHoldsRequest(older_than_seconds=int(older_than), limit=limit,
                                               orphan_age_seconds=int(orphan_age))
        if after is not None:
            set_time(request.after_created_at, after.created_at)
            request.after_hold_id = after.hold_id
        try:
            reply = await self.stub.ListUncheckedHolds(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"ledger could not list unchecked holds: {exc.code().name}") from exc
        if len(reply.past_orphan_age) != len(reply.holds):
            # A ledger older than the cursor and the ages: its pages would repeat, and nothing
            # would say which holds are old enough to be orphans.
            raise Unavailable("ledger could not list unchecked holds: it answers without their ages (an older ledger)")
        return [UncheckedHold(h.hold_id, h.order_id, h.created_at.ToDatetime(tzinfo=timezone.utc), old)
                for h, old in zip(reply.holds, reply.past_orphan_age)]

    async def get(self, hold_id: str) -> tuple[str, str, Decimal, bool] | None:
        """The hold's order id, asset, amount and whether it is still pending; None if there is none."""
        try:
            hold = (await self.stub.GetHold(pb.GetHoldRequest(hold_id=hold_id), timeout=self.timeout)).hold
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise Unavailable(f"ledger could not read hold {hold_id}: {exc.code().name}") from exc
        return hold.order_id, hold.asset, Decimal(hold.amount), hold.status == ledger_pb2.HOLD_STATUS_PENDING

    async def mark_checked(self, hold_ids: list[str]) -> None:
        try:
            await self.stub.MarkHoldsChecked(pb.MarkHoldsCheckedRequest(hold_ids=hold_ids), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"ledger could not mark holds checked: {exc.code().name}") from exc

    async def release(self, hold_id: str) -> None:
        try:
            await self.stub.ReleaseHold(pb.ReleaseHoldRequest(hold_id=hold_id), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:  # the ledger's ACCOUNT_BUSY passed on (a retry releases)
                raise upstream_unavailable(exc, f"the ledger could not release hold {hold_id}", log) from exc

    async def transfer(self, from_hold_id: str, to_hold_id: str, order_id: str, account_id: str, asset: str,
                       unit: Decimal, reserve: Decimal, client_key: str = "") -> Refusal | None:
        """Prepare moving `from_hold_id` to `to_hold_id` (reserving `reserve` more now), the
        ledger keeping `client_key` (the new order's client_order_id) for `order_id`. None
        when the transfer is recorded (now or by an earlier call with this id); the reason when
        the ledger refuses it. Transport trouble raises Unavailable; so does the account held by
        another transaction (the ledger's ACCOUNT_BUSY, passed on with its RetryInfo)."""
        try:
            await self.stub.TransferHold(pb.TransferHoldRequest(
                from_hold_id=from_hold_id, to_hold_id=to_hold_id, order_id=order_id, account_id=account_id,
                asset=asset, unit_amount=fmt(unit), reserve_amount=amount_text(asset, reserve) if reserve else "0",
                client_key=client_key),
                timeout=self.timeout)
            return None
        except grpc.aio.AioRpcError as exc:
            info, _ = error_info(exc)
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and info and info.reason in _TRANSFER_REFUSALS:
                # A resolved hold's words are the ledger's own business; a shortfall's are the customer's.
                return Refusal(_TRANSFER_REFUSALS[info.reason], exc.details() if info.reason in _REFUSALS else "")
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and info and info.reason == "HOLD_TRANSFER_PENDING":
                raise TransferPending(f"hold {from_hold_id} is still being transferred to an earlier replacement; "
                                      "retry shortly")
            if exc.code() == grpc.StatusCode.NOT_FOUND and info and info.reason == "HOLD_NOT_FOUND":
                raise HoldNotYet(order_id=from_hold_id) from exc  # the old order's hold id is its order id
            if exc.code() == grpc.StatusCode.UNAVAILABLE and info and info.reason == "ACCOUNT_BUSY":
                raise _account_busy(exc.details() or "", info.metadata, account_id) from exc
            raise upstream_unavailable(exc, f"the ledger could not transfer hold {from_hold_id} to {to_hold_id}",
                                       log) from exc

    async def cancel_transfer(self, to_hold_id: str) -> None:
        try:
            await self.stub.CancelHoldTransfer(pb.CancelHoldTransferRequest(to_hold_id=to_hold_id),
                                               timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:  # the ledger's ACCOUNT_BUSY passed on (a retry cancels)
                raise upstream_unavailable(exc, f"the ledger could not cancel the transfer to {to_hold_id}",
                                           log) from exc
