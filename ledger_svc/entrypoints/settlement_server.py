"""SettlementService over gRPC (internal: operators and schedulers call it on ledger_svc's own
port; Envoy's public listener does not route it). The same work as `stockmesh settle` and
`stockmesh journal trim`."""
from __future__ import annotations

from datetime import date

from ledger_svc.service_layer.handlers import UowFactory
from ledger_svc.service_layer.runner import require_session_closed, settle_and_reconcile, trim_journal
from meshkit import calendar
from meshkit.errors import FailedPrecondition, FieldViolation, InvalidArgument
from meshkit.money import fmt_cents
from stockmesh.ledger.v1 import settlement_service_pb2 as pb, settlement_service_pb2_grpc

CATCH_UP_SECONDS = 30.0


def _trading_day(text: str, name: str = "date") -> date:
    if not text:
        raise InvalidArgument([FieldViolation(name, "is required (YYYY-MM-DD)")])
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidArgument([FieldViolation(name, f"{text[:32]!r} is not a date like 2026-11-23")]) from None


class SettlementServicer(settlement_service_pb2_grpc.SettlementServiceServicer):
    def __init__(self, uow: UowFactory, js, namespace: str, *, catch_up: float = CATCH_UP_SECONDS) -> None:
        self.uow, self.js, self.namespace, self.catch_up = uow, js, namespace, catch_up

    async def RunSettlement(self, request: pb.RunSettlementRequest, context) -> pb.RunSettlementResponse:
        day = _trading_day(request.date)
        if why := calendar.after_today(day):  # it would settle fills of a day not traded yet
            raise InvalidArgument([FieldViolation("date", why)])
        if not request.before_close:  # as `stockmesh settle`: its fills are final only after the close
            await require_session_closed(day, self.uow().pool, override="before_close")
        # Wait for the ledger to catch up with the journal for at most half the caller's deadline.
        left = context.time_remaining() if context is not None else None
        wait = self.catch_up if left is None else max(0.0, min(self.catch_up, left / 2))
        report = await settle_and_reconcile(day, self.uow, self.js, self.namespace, catch_up=wait)
        return pb.RunSettlementResponse(
            fills_settled=report.fills_settled, fills_already_settled=report.fills_already_settled,
            discrepancies=[pb.Discrepancy(kind=d.kind, reference=d.reference, detail=d.detail)
                           for d in report.discrepancies or []],
            reconciled_against=report.reconciled_against, amount_settled=fmt_cents(report.amount_settled))

    async def TrimJournal(self, request: pb.TrimJournalRequest, context) -> pb.TrimJournalResponse:
        before = _trading_day(request.before, "before")
        if why := calendar.after_today(before):  # it would purge the executions of the day still trading
            raise InvalidArgument([FieldViolation("before", why)])
        if self.js is None:
            raise FailedPrecondition("this ledger_svc runs without NATS: there is no journal to trim",
                                     reason="JOURNAL_NOT_FOUND")
        t = await trim_journal(before, self.uow, self.js, self.namespace, dry_run=request.dry_run)
        return pb.TrimJournalResponse(first_sequence=t.first_seq, last_sequence=t.last_seq, cut_sequence=t.cut,
                                      purged=t.purged, held_back_by=t.held_back_by or "")
