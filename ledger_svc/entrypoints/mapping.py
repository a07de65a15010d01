"""proto <-> domain, beside the servicer."""
from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from ledger_svc.adapters.repository import ActivityRow
from ledger_svc.domain import model
from meshkit.money import fmt
from stockmesh.ledger.v1 import ledger_pb2

ACTIVITY_TYPES = {
    "DEPOSIT": ledger_pb2.ACTIVITY_TYPE_DEPOSIT,
    "WITHDRAWAL": ledger_pb2.ACTIVITY_TYPE_WITHDRAWAL,
    "HOLD_CAPTURE": ledger_pb2.ACTIVITY_TYPE_FILL,
    "FILL": ledger_pb2.ACTIVITY_TYPE_FILL,
    "SETTLEMENT": ledger_pb2.ACTIVITY_TYPE_SETTLEMENT,
}


def timestamp(dt: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt)
    return ts


def cash_to_proto(c: model.CashBalance) -> ledger_pb2.CashBalance:
    return ledger_pb2.CashBalance(total=fmt(c.total), available=fmt(c.available), held=fmt(c.held),
                                  settled=fmt(c.settled), unsettled=fmt(c.unsettled))


def activity_to_proto(a: ActivityRow) -> ledger_pb2.Activity:
    return ledger_pb2.Activity(
        activity_id=str(a.posting_id), type=ACTIVITY_TYPES.get(a.kind, ledger_pb2.ACTIVITY_TYPE_UNSPECIFIED),
        asset=a.asset, amount=fmt(a.amount), description=a.description,
        created_at=timestamp(a.created_at), reference=a.reference)
