"""HoldService over gRPC (internal: order_svc calls it; Envoy's public listener does not route
it). Thin: proto -> command, call the handler, domain -> proto."""
from __future__ import annotations

from datetime import timezone
from decimal import Decimal

import grpc

from ledger_svc.domain import model
from ledger_svc.entrypoints import mapping
from ledger_svc.service_layer import commands, handlers
from ledger_svc.service_layer.handlers import UowFactory
from meshkit import auth, validate
from meshkit.errors import DomainError, FieldViolation, InvalidArgument, Violations
from meshkit.money import MAX_CASH, parse_decimal
from stockmesh.ledger.v1 import hold_service_pb2 as pb, hold_service_pb2_grpc

MAX_SHARES = Decimal(10) ** 12
# A cash hold (and a capture of one) may be as large as its column holds (numeric(24, 4)), not
# only as large as one deposit (MAX_CASH, 1e15): an order's largest cost, MAX_PRICE x order_svc's
# MAX_QUANTITY with the collar, is ~1.05e17, and an account funded by several deposits can pay
# it (round 16: such a buy was INTERNAL, the ledger refusing its hold as malformed).
MAX_HOLD_CASH = Decimal("99999999999999999999.9999")
MAX_HOLDS_PER_BATCH = 500
DEFAULT_UNCHECKED, MAX_UNCHECKED = 500, 1000


def _account(text: str, field: str, v: Violations, *, required: bool = True) -> str:
    """A customer account id, by the rule a token's subject follows (auth.account_problem: up
    to 128 characters, never a system book '$...'); an optional one (a fill's counter account)
    may be a system book. Before, this took a key's 64 characters: an account of 65-128 could
    deposit, but its every order held failed with INTERNAL (round 15)."""
    if not text:
        if required:
            v.add(field, f"is required (1-{auth.MAX_ACCOUNT} characters)")
        return text
    problem = auth.account_problem(text) if required else validate.text_problem(text, auth.MAX_ACCOUNT)
    if problem is not None:
        v.add(field, problem)
    return text


def _asset(text: str, v: Violations) -> str | None:
    if not text:
        v.add("asset", 'is required ("USD" or a symbol)')
    elif text != model.CASH and not model.is_symbol(text):
        v.add("asset", f'must be "USD" or a symbol such as "AAPL", got {text[:16]!r}')
    else:
        return text
    return None


def _amount(text: str, asset: str | None, v: Violations) -> Decimal | None:
    """Cash with up to four places (limit price x quantity); shares whole. An amount of an
    unknown asset is parsed at four places so its own mistakes are reported too."""
    places = model.amount_places(asset) if asset else model.CASH_HOLD_PLACES
    maximum = MAX_HOLD_CASH if asset in (None, model.CASH) else MAX_SHARES
    return parse_decimal(text, "amount", v, places=places, maximum=maximum)


def _place_command(request: pb.PlaceHoldRequest) -> commands.PlaceHold:
    v = Violations()
    hold_id = validate.key(request.hold_id, "hold_id", v)
    account = _account(request.account_id, "account_id", v)
    order_id = validate.key(request.order_id, "order_id", v)
    asset = _asset(request.asset, v)
    amount = _amount(request.amount, asset, v)
    client_key = validate.key(request.client_key, "client_key", v) if request.client_key else None
    v.raise_if_any()
    assert asset is not None and amount is not None
    return commands.PlaceHold(hold_id, account, order_id, asset, amount, client_key,
                              request.answer_kept_key and client_key is not None)


def _hold_result(answer: model.Hold | DomainError) -> pb.PlaceHoldResult:
    if isinstance(answer, DomainError):
        return pb.PlaceHoldResult(error=pb.HoldError(code=answer.code, reason=answer.reason, message=answer.message,
                                                     metadata=answer.metadata))
    return pb.PlaceHoldResult(hold=mapping.hold_to_proto(answer))


class HoldServicer(hold_service_pb2_grpc.HoldServiceServicer):
    def __init__(self, uow_factory: UowFactory, applied: handlers.ExecutionsApplied | None = None,
                 lock_wait: float = handlers.HOLD_LOCK_WAIT) -> None:
        self.uow = uow_factory
        self.applied = applied  # refusals for want of cash or shares wait for executions in flight
        self.busy = handlers.BusyAccounts()  # accounts held by another transaction lately (PlaceHold(s))
        self.lock_wait = lock_wait  # then ACCOUNT_BUSY (every call here that takes accounts)

    async def PlaceHold(self, request: pb.PlaceHoldRequest, context: grpc.aio.ServicerContext) -> pb.PlaceHoldResponse:
        hold = await handlers.place_hold(_place_command(request), self.uow, self.applied, self.busy,
                                         self.lock_wait)
        return pb.PlaceHoldResponse(hold=mapping.hold_to_proto(hold))

    async def PlaceHolds(self, request: pb.PlaceHoldsRequest,
                         context: grpc.aio.ServicerContext) -> pb.PlaceHoldsResponse:
        if len(request.holds) > MAX_HOLDS_PER_BATCH:
            raise InvalidArgument([FieldViolation("holds", f"at most {MAX_HOLDS_PER_BATCH} holds per call")])
        answers: list[model.Hold | DomainError | None] = []
        valid: list[commands.PlaceHold] = []
        for item in request.holds:
            try:
                valid.append(_place_command(item))
                answers.append(None)  # placed below, in the order given
            except InvalidArgument as exc:
                answers.append(exc)
        placed = iter(await handlers.place_holds(valid, self.uow, self.busy, self.lock_wait) if valid else [])
        return pb.PlaceHoldsResponse(results=[_hold_result(a if a is not None else next(placed)) for a in answers])

    async def AwaitExecutions(self, request: pb.AwaitExecutionsRequest,
                              context: grpc.aio.ServicerContext) -> pb.AwaitExecutionsResponse:
        v = Violations()
        if len(request.account_ids) > MAX_HOLDS_PER_BATCH:
            v.add("account_ids", f"at most {MAX_HOLDS_PER_BATCH} accounts per call")
        accounts = [_account(a, f"account_ids[{i}]", v) for i, a in enumerate(request.account_ids)]
        v.raise_if_any()
        retry = await handlers.await_executions(set(accounts), self.uow, self.applied)
        return pb.AwaitExecutionsResponse(retry_account_ids=sorted(retry))

    async def CaptureHold(self, request: pb.CaptureHoldRequest,
                          context: grpc.aio.ServicerContext) -> pb.CaptureHoldResponse:
        v = Violations()
        hold_id = validate.key(request.hold_id, "hold_id", v)
        capture_id = validate.key(request.capture_id, "capture_id", v)
        # The hold's asset decides the scale; whole shares are checked against the hold itself.
        amount = parse_decimal(request.amount, "amount", v, places=model.CASH_HOLD_PLACES, maximum=MAX_HOLD_CASH)
        counter = _account(request.counter_account_id, "counter_account_id", v, required=False)
        v.raise_if_any()
        assert amount is not None
        hold = await handlers.capture_hold(commands.CaptureHold(hold_id, capture_id, amount, counter), self.uow,
                                           self.lock_wait)
        return pb.CaptureHoldResponse(hold=mapping.hold_to_proto(hold))

    async def ReleaseHold(self, request: pb.ReleaseHoldRequest,
                          context: grpc.aio.ServicerContext) -> pb.ReleaseHoldResponse:
        v = Violations()
        hold_id = validate.key(request.hold_id, "hold_id", v)
        v.raise_if_any()
        hold = await handlers.release_hold(commands.ReleaseHold(hold_id), self.uow, self.lock_wait)
        return pb.ReleaseHoldResponse(hold=mapping.hold_to_proto(hold))

    async def GetHold(self, request: pb.GetHoldRequest, context: grpc.aio.ServicerContext) -> pb.GetHoldResponse:
        v = Violations()
        hold_id = validate.key(request.hold_id, "hold_id", v)
        v.raise_if_any()
        return pb.GetHoldResponse(hold=mapping.hold_to_proto(await handlers.get_hold(hold_id, self.uow)))

    async def TransferHold(self, request: pb.TransferHoldRequest,
                           context: grpc.aio.ServicerContext) -> pb.TransferHoldResponse:
        v = Violations()
        from_id = validate.key(request.from_hold_id, "from_hold_id", v)
        to_id = validate.key(request.to_hold_id, "to_hold_id", v)
        account = _account(request.account_id, "account_id", v)
        order_id = validate.key(request.order_id, "order_id", v)
        asset = _asset(request.asset, v)
        unit = parse_decimal(request.unit_amount, "unit_amount", v, places=model.CASH_HOLD_PLACES, maximum=MAX_CASH)
        reserve: Decimal | None = Decimal(0)
        if request.reserve_amount not in ("", "0"):
            reserve = _amount(request.reserve_amount, asset, v)
        client_key = validate.key(request.client_key, "client_key", v) if request.client_key else None
        v.raise_if_any()
        assert asset is not None and unit is not None and reserve is not None
        t = await handlers.transfer_hold(
            commands.TransferHold(from_id, to_id, order_id, account, asset, unit, reserve, client_key), self.uow,
            self.applied, self.lock_wait)
        return pb.TransferHoldResponse(transfer=mapping.transfer_to_proto(t))

    async def RegisterClientKeys(self, request: pb.RegisterClientKeysRequest,
                                 context: grpc.aio.ServicerContext) -> pb.RegisterClientKeysResponse:
        v = Violations()
        if len(request.keys) > MAX_HOLDS_PER_BATCH:
            v.add("keys", f"at most {MAX_HOLDS_PER_BATCH} keys per call")
        cmds = [commands.RegisterClientKey(_account(k.account_id, f"keys[{i}].account_id", v),
                                           validate.key(k.client_key, f"keys[{i}].client_key", v),
                                           validate.key(k.order_id, f"keys[{i}].order_id", v))
                for i, k in enumerate(request.keys)]
        v.raise_if_any()
        holders = await handlers.register_client_keys(cmds, self.uow, self.lock_wait) if cmds else []
        return pb.RegisterClientKeysResponse(results=[
            pb.ClientKeyResult() if h is None else
            pb.ClientKeyResult(holder_order_id=h.order_id, holder_hold_id=h.hold_id, holder_hold_status=h.status)
            for h in holders])

    async def CancelHoldTransfer(self, request: pb.CancelHoldTransferRequest,
                                 context: grpc.aio.ServicerContext) -> pb.CancelHoldTransferResponse:
        v = Violations()
        to_id = validate.key(request.to_hold_id, "to_hold_id", v)
        v.raise_if_any()
        t = await handlers.cancel_transfer(to_id, self.uow, self.lock_wait)
        return pb.CancelHoldTransferResponse(transfer=mapping.transfer_to_proto(t))

    async def ListUncheckedHolds(self, request: pb.ListUncheckedHoldsRequest,
                                 context: grpc.aio.ServicerContext) -> pb.ListUncheckedHoldsResponse:
        v = Violations()
        if request.older_than_seconds < 0:
            v.add("older_than_seconds", "must not be negative")
        if not 0 <= request.limit <= MAX_UNCHECKED:
            v.add("limit", f"must be between 1 and {MAX_UNCHECKED} (0: {DEFAULT_UNCHECKED})")
        if request.orphan_age_seconds < 0:
            v.add("orphan_age_seconds", "must not be negative")
        if request.after_hold_id and not request.HasField("after_created_at"):
            v.add("after_hold_id", "given only with after_created_at")
        v.raise_if_any()
        after = ((request.after_created_at.ToDatetime(tzinfo=timezone.utc), request.after_hold_id)
                 if request.HasField("after_created_at") else None)
        listed = await handlers.unchecked_holds(request.older_than_seconds, request.limit or DEFAULT_UNCHECKED,
                                                self.uow, after=after, orphan_age=request.orphan_age_seconds)
        return pb.ListUncheckedHoldsResponse(holds=[mapping.hold_to_proto(h) for h, _ in listed],
                                             past_orphan_age=[old for _, old in listed])

    async def MarkHoldsChecked(self, request: pb.MarkHoldsCheckedRequest,
                               context: grpc.aio.ServicerContext) -> pb.MarkHoldsCheckedResponse:
        v = Violations()
        if len(request.hold_ids) > MAX_UNCHECKED:
            v.add("hold_ids", f"at most {MAX_UNCHECKED} per call")
        for hold_id in request.hold_ids:
            validate.key(hold_id, "hold_ids", v)
        v.raise_if_any()
        await handlers.mark_holds_checked(list(request.hold_ids), self.uow)
        return pb.MarkHoldsCheckedResponse()
