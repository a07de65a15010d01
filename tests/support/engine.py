"""Helpers for the matching-engine tests and benchmark: commands, a seeded random order flow,
reading a whole stream back, and the engine in this process or as a subprocess."""
from __future__ import annotations

import asyncio
import os
import random
import sys
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import AsyncIterator

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from matching_svc.adapters.jetstream import Names, input_position
from matching_svc.bootstrap import build
from matching_svc.service_layer.engine import SymbolEngine, journaled
from matching_svc.service_layer.runner import Engine, EngineConfig
from meshkit import bus, calendar
from meshkit.launcher.net import free_port
from stockmesh.common.v1 import common_pb2 as c
from stockmesh.matching.v1 import matching_pb2 as pb

BUY, SELL = c.SIDE_BUY, c.SIDE_SELL


def new_order(oid: str, account: str, side: int, qty: int, *, limit: str = "", otype: int = c.ORDER_TYPE_LIMIT,
              tif: int = c.TIME_IN_FORCE_GTC, stop: str = "", collar: str = "", symbol: str = "AAPL",
              at_ns: int = 0) -> pb.EngineCommand:
    cmd = pb.EngineCommand(command_id=oid, symbol=symbol, new_order=pb.NewOrder(
        order_id=oid, account_id=account, side=side, type=otype, time_in_force=tif, quantity=qty,
        limit_price=limit, stop_price=stop, collar_price=collar))
    if at_ns:
        cmd.new_order.accepted_at.seconds, cmd.new_order.accepted_at.nanos = divmod(at_ns, 1_000_000_000)
    return cmd


def cancel(oid: str, account: str, symbol: str = "AAPL") -> pb.EngineCommand:
    return pb.EngineCommand(command_id=f"{oid}:cancel", symbol=symbol,
                            cancel_order=pb.CancelOrder(order_id=oid, account_id=account))


async def publish(js: JetStreamContext, namespace: str, cmd: pb.EngineCommand, msg_id: str | None = None) -> int:
    ack = await js.publish(Names(namespace).orders_subject(cmd.symbol), cmd.SerializeToString(),
                           headers={"Nats-Msg-Id": msg_id or cmd.command_id})
    return ack.seq


async def read_stream(js: JetStreamContext, stream: str, subject: str) -> list:
    """Every message stored on ``subject`` in ``stream``, in order (an ephemeral consumer)."""
    info = await js.stream_info(stream, subjects_filter=subject)
    total = (info.state.subjects or {}).get(subject, 0)
    if not total:
        return []
    sub = await js.pull_subscribe(subject, stream=stream, config=ConsumerConfig(
        deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30.0))
    out: list = []
    try:
        while len(out) < total:
            out.extend(await sub.fetch(min(1000, total - len(out)), timeout=5))
    finally:
        await sub.unsubscribe()
    return out


async def executions(js: JetStreamContext, namespace: str, symbol: str) -> list[tuple[pb.Execution, object]]:
    names = Names(namespace)
    msgs = await read_stream(js, names.executions, names.executions_subject(symbol))
    return [(pb.Execution.FromString(m.data), m.headers or {}) for m in msgs]


def distinct(execs: list[pb.Execution]) -> list[pb.Execution]:
    """First occurrence of each execution id, in stream order; a repeat must be identical."""
    seen: dict[str, pb.Execution] = {}
    out = []
    for ex in execs:
        prior = seen.get(ex.execution_id)
        if prior is None:
            seen[ex.execution_id] = ex
            out.append(ex)
        else:
            assert prior == ex, f"execution {ex.execution_id} republished with different content"
    return out


async def expected_run(js: JetStreamContext, namespace: str, symbol: str,
                       dedupe_capacity: int = 100_000) -> tuple[SymbolEngine, list[pb.Execution]]:
    """The uninterrupted run: the pure engine driven in-process by the inputs as stored, and
    what it journals (its executions but the acceptances, which are notices)."""
    names = Names(namespace)
    engine = SymbolEngine(symbol, dedupe_capacity=dedupe_capacity)
    out: list[pb.Execution] = []
    for m in await read_stream(js, names.orders, names.orders_subject(symbol)):
        seq, time_ns = input_position(m)
        out.extend(ex for ex in engine.apply(seq, time_ns, pb.EngineCommand.FromString(m.data)).executions
                   if journaled(ex))
    return engine, out


@dataclass
class Flow:
    """A seeded random order flow on one symbol around 100.00."""

    seed: int
    symbol: str = "AAPL"
    accounts: int = 20
    rng: random.Random = field(init=False)
    live: list[tuple[str, str]] = field(default_factory=list)  # (order id, account)
    sent: list[pb.EngineCommand] = field(default_factory=list)
    n: int = 0
    days: int = 0  # sessions closed so far
    mid: int = 10_000  # cents

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def _price(self, cents: int) -> str:
        return f"{cents // 100}.{cents % 100:02d}"

    def next(self) -> tuple[pb.EngineCommand, str]:
        """The next command and the Nats-Msg-Id to publish it with."""
        r, rng = self.rng.random(), self.rng
        self.n += 1
        self.mid = max(9_000, min(11_000, self.mid + rng.choice((-1, 0, 0, 1))))
        oid = f"o{self.seed}-{self.n}"
        acct = f"acct{rng.randrange(self.accounts)}"
        side = rng.choice((BUY, SELL))
        qty = rng.randint(1, 20) * 10
        at = 1_700_000_000_000_000_000 + self.days * 86_400_000_000_000 + self.n * 1_000_000
        near = self.mid + (rng.randint(-8, 2) if side == BUY else rng.randint(-2, 8))
        if r < 0.01 and self.sent:  # a repeat of an earlier command, outside JetStream's dedupe window
            cmd = rng.choice(self.sent[-200:])
            return cmd, f"replay-{self.n}"
        if r < 0.13 and self.live:
            oid0, acct0 = self.live.pop(rng.randrange(len(self.live)))
            cmd = cancel(oid0, acct0, self.symbol)
        elif r < 0.19 and self.live:
            k = rng.randrange(len(self.live))
            oid0, acct0 = self.live[k]
            self.live[k] = (oid, acct0)
            cmd = pb.EngineCommand(command_id=f"{oid}:replace", symbol=self.symbol, replace_order=pb.ReplaceOrder(
                order_id=oid0, new_order_id=oid, account_id=acct0, quantity=rng.randint(1, 25) * 10,
                limit_price=self._price(self.mid + rng.randint(-6, 6))))
        elif r < 0.29:
            tif = rng.choice((c.TIME_IN_FORCE_IOC, c.TIME_IN_FORCE_IOC, c.TIME_IN_FORCE_FOK))
            cmd = new_order(oid, acct, side, qty, limit=self._price(near), tif=tif, symbol=self.symbol, at_ns=at)
        elif r < 0.37:
            collar = self._price(self.mid + (15 if side == BUY else -15))
            cmd = new_order(oid, acct, side, qty, otype=c.ORDER_TYPE_MARKET, tif=c.TIME_IN_FORCE_IOC,
                            collar=collar, symbol=self.symbol, at_ns=at)
        elif r < 0.40:
            stop = self.mid + (rng.randint(2, 10) if side == BUY else -rng.randint(2, 10))
            if rng.random() < 0.5:
                collar = self._price(stop + (20 if side == BUY else -20))
                cmd = new_order(oid, acct, side, qty, otype=c.ORDER_TYPE_STOP, stop=self._price(stop),
                                collar=collar, symbol=self.symbol, at_ns=at)
            else:
                cmd = new_order(oid, acct, side, qty, otype=c.ORDER_TYPE_STOP_LIMIT, stop=self._price(stop),
                                limit=self._price(stop), symbol=self.symbol, at_ns=at)
            self.live.append((oid, acct))
        elif r < 0.401:
            day = calendar.trading_day(datetime.fromtimestamp(at // 1_000_000_000, timezone.utc)).isoformat()
            cmd = pb.EngineCommand(command_id=f"close-{self.n}", symbol=self.symbol,
                                   session_close=pb.SessionClose(trading_day=day))
            self.days += 1  # the next session's orders come a day later
        else:
            tif = c.TIME_IN_FORCE_DAY if rng.random() < 0.3 else c.TIME_IN_FORCE_GTC
            cmd = new_order(oid, acct, side, qty, limit=self._price(near), tif=tif, symbol=self.symbol, at_ns=at)
            self.live.append((oid, acct))
        if len(self.live) > 400:
            self.live = self.live[-400:]
        self.sent.append(cmd)
        return cmd, cmd.command_id


def engine_env(nats_url: str, namespace: str, port: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"NATS_URL": nats_url, "STOCKMESH_NAMESPACE": namespace, "GRPC_LISTEN": f"127.0.0.1:{port}",
                "LOG_LEVEL": "WARNING"})
    env.update(extra)
    return env


async def start_engine(nats_url: str, namespace: str, *, log_path=None, **extra: str):
    """``python -m matching_svc`` with its settings; returns (process, gRPC port)."""
    port = free_port()
    out = open(log_path, "ab") if log_path else asyncio.subprocess.DEVNULL
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "matching_svc", env=engine_env(nats_url, namespace, port, **extra),
        stdout=out, stderr=out)
    if log_path:
        out.close()
    return proc, port


async def kill(proc) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


@asynccontextmanager
async def engine_in_process(nats_url: str, namespace: str, symbols: tuple[str, ...]) -> AsyncIterator[Engine]:
    """The matching engine for `symbols` running in this process, once it owns them. Its snapshot
    and consumers persist in the namespace: a later engine for the same symbols carries on."""
    nc = await bus.connect(nats_url, "test-engine")
    cfg = EngineConfig(namespace=namespace, symbols=symbols, instance_id=f"test-{uuid.uuid4().hex[:6]}", lease_ttl=3.0)
    _, eng = build(nc, cfg)
    task = asyncio.create_task(eng.run())
    try:
        await asyncio.wait_for(eng.ready.wait(), 20)
        yield eng
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await nc.close()


class Acceptances:
    """The engine's acceptances (core NATS notices on `<ns>.accepted.>`, stored nowhere) heard
    since `listen`: `acceptances.seen(order_id)` once the order is working in the book."""

    def __init__(self) -> None:
        self.notices: dict[str, pb.Execution] = {}

    async def listen(self, nc, namespace: str):
        async def heard(msg) -> None:
            ex = pb.Execution.FromString(msg.data)
            self.notices.setdefault(ex.order_id, ex)

        sub = await nc.subscribe(bus.subject(namespace, "accepted", ">"), cb=heard)
        await nc.flush()
        return sub

    async def seen(self, order_id) -> bool:  # a coroutine, as the tests' polling helpers want
        return str(order_id) in self.notices
