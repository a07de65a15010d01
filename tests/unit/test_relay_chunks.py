"""The outbox relay pipelines its publishes in chunks, and never two rows of one order (or a
session close with anything) in one chunk (order_svc.adapters.outbox.pipelined): a chunk whose
first publishes are refused while the later ones are stored (a stream leader elected in the
middle) is published again from the first refused row, and within one chunk that stored a
cancel or a replace before its order, which the engine then refused (round 14 review 2, F3)."""
from __future__ import annotations

import asyncio

import nats.js.errors
import pytest

from order_svc.adapters import outbox
from stockmesh.matching.v1 import matching_pb2 as pb


def row(i: int, cmd: pb.EngineCommand) -> dict:
    return {"id": i, "subject": f"ns.orders.{cmd.symbol}", "payload": cmd.SerializeToString(),
            "msg_id": cmd.command_id}


def new(oid: str) -> pb.EngineCommand:
    return pb.EngineCommand(command_id=oid, symbol="AAPL", new_order=pb.NewOrder(order_id=oid))


def cancel(oid: str) -> pb.EngineCommand:
    return pb.EngineCommand(command_id=f"{oid}:cancel", symbol="AAPL", cancel_order=pb.CancelOrder(order_id=oid))


def replace(oid: str, new_oid: str) -> pb.EngineCommand:
    return pb.EngineCommand(command_id=f"{new_oid}:replace", symbol="AAPL",
                            replace_order=pb.ReplaceOrder(order_id=oid, new_order_id=new_oid))


def close() -> pb.EngineCommand:
    return pb.EngineCommand(command_id="close:2026-12-04:AAPL", symbol="AAPL",
                            session_close=pb.SessionClose(trading_day="2026-12-04"))


def test_rows_of_one_order_and_closes_go_in_chunks_of_their_own():
    rows = [row(i, c) for i, c in enumerate(
        [new("x"), new("y"), cancel("x"), new("z"), replace("z", "z2"), close(), new("w"), new("v")], 1)]
    chunks = [[r["id"] for r in chunk] for chunk in outbox.pipelined(rows, 64)]
    assert chunks == [[1, 2], [3, 4], [5], [6], [7, 8]]
    assert [[r["id"] for r in c] for c in outbox.pipelined(rows[6:], 1)] == [[7], [8]]  # and the size


class Stream:
    """JetStream as seen at a leader election: the first publish of the round is refused, the
    others are stored (a stored id is stored once, as the duplicate window does)."""

    def __init__(self) -> None:
        self.stored: list[str] = []
        self.refuse_next = True

    async def publish_async(self, subject, payload, headers):
        fut = asyncio.get_running_loop().create_future()
        if self.refuse_next:
            self.refuse_next = False
            fut.set_exception(nats.js.errors.NoStreamResponseError())
        else:
            if headers["Nats-Msg-Id"] not in self.stored:
                self.stored.append(headers["Nats-Msg-Id"])
            fut.set_result(None)
        return fut


async def test_an_order_is_on_the_stream_before_its_cancel_even_when_its_publish_is_refused(monkeypatch):
    rows = [row(1, new("x")), row(2, cancel("x"))]
    marked: list[int] = []

    class Repo:
        def __init__(self, conn) -> None:
            pass

        async def unpublished(self, batch, prefix):
            return [r for r in rows if r["id"] not in marked]

        async def mark_published(self, ids):
            marked.extend(ids)
            return []

    monkeypatch.setattr(outbox, "OutboxRepository", Repo)
    js = Stream()
    relay = outbox.OutboxRelay("postgresql://unused", js)
    with pytest.raises(outbox.PublishFailed) as refused:
        await relay.relay_once(None)  # x refused: the round ends before its cancel is sent
    assert isinstance(refused.value.__cause__, nats.js.errors.NoStreamResponseError)
    assert await relay.relay_once(None) == 2
    assert js.stored == ["x", "x:cancel"]
