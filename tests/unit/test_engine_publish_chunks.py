"""The engine publishes a batch's outputs in pipelined chunks (meshkit.bus.pipelined) that
never hold two executions of one order. A chunk whose first publish is refused while the later
ones are stored (a stream leader elected in its middle), replayed from the snapshot, stored an
order's last fill before an earlier one, and the consumers stopped on that order (round 14
review 2, F3)."""
from __future__ import annotations

import asyncio

import nats.js.errors
import pytest

from matching_svc.service_layer import runner
from matching_svc.service_layer.engine import SymbolEngine
from meshkit import bus
from stockmesh.matching.v1 import matching_pb2 as pb
from tests.support.engine import BUY, SELL, new_order

E = pb.ExecutionType


class Stream:
    """JetStream as seen at a leader election: once armed, the next execution's publish is
    refused and everything after it stored (an id is stored once, as the duplicate window
    does)."""

    def __init__(self) -> None:
        self.stored: list[tuple[str, bytes]] = []
        self.ids: set[str] = set()
        self.refuse_next_execution = False
        self.refuse_next_md = False

    async def publish_async(self, subject, payload, headers):
        fut = asyncio.get_running_loop().create_future()
        if (self.refuse_next_execution and ".executions." in subject) or (self.refuse_next_md and ".md." in subject):
            self.refuse_next_execution = self.refuse_next_md = False
            fut.set_exception(nats.js.errors.NoStreamResponseError())
        else:
            if headers["Nats-Msg-Id"] not in self.ids:
                self.ids.add(headers["Nats-Msg-Id"])
                self.stored.append((subject, payload))
            fut.set_result(None)
        return fut


class Conn:
    def __init__(self, js: Stream) -> None:
        self.js = js

    def jetstream(self) -> Stream:
        return self.js

    async def publish(self, subject, payload) -> None:  # the acceptances' core NATS notices
        pass


class Lease:
    def check(self) -> None:
        pass


class Input:
    def __init__(self, seq: int, cmd: pb.EngineCommand) -> None:
        self.reply = f"$JS.ACK.ns_ORDERS.engine.1.{seq}.{seq}.{seq}000.0"
        self.data = cmd.SerializeToString()

    async def ack(self) -> None:
        pass


def fills_of(stored: list[tuple[str, bytes]], order_id: str) -> list[int]:
    """The taker's leaves quantity after each of its fills, in stream order."""
    out = []
    for subject, payload in stored:
        if ".executions." in subject:
            ex = pb.Execution.FromString(payload)
            if ex.type == E.EXECUTION_TYPE_FILL and ex.order_id == order_id:
                out.append(ex.leaves_quantity)
    return out


async def test_an_orders_fills_are_stored_in_order_when_a_publish_in_their_batch_is_refused():
    js = Stream()
    cfg = runner.EngineConfig(namespace="ns", symbols=("AAPL",), instance_id="i1")
    run = runner.SymbolRunner("AAPL", Conn(js), cfg, store=None, kv=None, ttl=10.0)
    makers = [Input(1, new_order("m1", "alice", SELL, 5, limit="10")),
              Input(2, new_order("m2", "alice", SELL, 5, limit="11")),
              Input(3, new_order("m3", "alice", SELL, 5, limit="12"))]
    taker = [Input(4, new_order("t", "bob", BUY, 15, limit="12"))]  # three fills, the last one ends it

    engine = SymbolEngine("AAPL")
    await run._process(engine, makers, Lease())
    js.refuse_next_execution = True
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await run._process(engine, taker, Lease())
    # The runner starts again from its snapshot (none here) and replays every input.
    await run._process(SymbolEngine("AAPL"), makers + taker, Lease())
    assert fills_of(js.stored, "t") == [10, 5, 0]


async def test_the_symbols_last_stored_market_data_is_its_newest_when_a_publish_is_refused():
    """Followers keep the newest sequence, but a reader that starts from the symbol's last stored
    event (quote_svc, order_svc's prices) took an older one after a refused publish and a
    republish (round 15 review)."""
    js = Stream()
    cfg = runner.EngineConfig(namespace="ns", symbols=("AAPL",), instance_id="i1")
    run = runner.SymbolRunner("AAPL", Conn(js), cfg, store=None, kv=None, ttl=10.0)
    inputs = [Input(i, new_order(f"m{i}", "alice", SELL, 5, limit=f"{10 + i}")) for i in range(1, 5)]
    js.refuse_next_md = True
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await run._process(SymbolEngine("AAPL"), inputs, Lease())
    await run._process(SymbolEngine("AAPL"), inputs, Lease())  # the replay
    md = [pb.MarketDataEvent.FromString(p).sequence for s, p in js.stored if ".md." in s]
    assert md and md[-1] == max(md), md


def test_chunks_never_hold_two_items_with_a_key_in_common():
    items = [("a", {"x"}), ("b", {"y"}), ("c", {"x", "z"}), ("d", set()), ("e", {bus.ALONE}), ("f", set()), ("g", {"w"})]
    chunks = [[name for name, _ in chunk] for chunk in bus.pipelined(items, 64, lambda item: item[1])]
    assert chunks == [["a", "b"], ["c", "d"], ["e"], ["f", "g"]]
    assert [[n for n, _ in c] for c in bus.pipelined(items[5:], 1, lambda item: item[1])] == [["f"], ["g"]]


def test_an_execution_names_its_order_its_counter_order_and_a_replaces_new_order():
    ex = pb.Execution(order_id="t", counter_order_id="m1")
    assert runner.orders_of_execution(ex) == {"t", "m1"}
    assert runner.orders_of_execution(pb.Execution(order_id="o", new_order_id="o2")) == {"o", "o2"}
