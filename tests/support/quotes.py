"""Helpers for quote_svc tests and its benchmark: market-data events published straight to
the MD stream (as the engine would), and quote_svc running in-process."""
from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import grpc

from meshkit import bus
from meshkit.server import App, create_server
from quote_svc.bootstrap import Parts, build, run_background
from stockmesh.matching.v1 import matching_pb2 as mpb
from stockmesh.quote.v1 import quote_service_pb2_grpc


def md_event(symbol: str, seq: int, *, price: str = "", qty: int = 0, bid: str = "", ask: str = "",
             bid_size: int = 100, ask_size: int = 100, volume: int = 0, at: datetime | None = None,
             at_ns: int | None = None) -> mpb.MarketDataEvent:
    ev = mpb.MarketDataEvent(symbol=symbol, sequence=seq, trade_price=price, trade_quantity=qty,
                             bid_price=bid, bid_size=bid_size if bid else 0, ask_price=ask,
                             ask_size=ask_size if ask else 0, last_price=price, volume=volume)
    if at is not None:
        ev.time.FromDatetime(at)
    else:
        ns = at_ns if at_ns is not None else time.time_ns()
        ev.time.seconds, ev.time.nanos = divmod(ns, 1_000_000_000)
    return ev


async def next_md_sequence(js, namespace: str, symbol: str) -> int:
    """The market-data sequence after the symbol's last event on the session's stream: a test
    publishing its own events after another module's engine traded the symbol (the session's
    namespace is shared) would have sequence 1 dropped as that engine's repeat (its Nats-Msg-Id
    in JetStream's duplicate window) and read as older than the feed's (round 26: the market
    buy of test_order_crash, run after test_replace_crash, was never placed)."""
    import nats.js.errors

    stream = await bus.ensure_stream(js, namespace, "md")
    try:
        last = await bus.last_msg(js, stream, bus.subject(namespace, "md", symbol))
    except nats.js.errors.NotFoundError:
        return 1
    return mpb.MarketDataEvent.FromString(last.data).sequence + 1


async def publish_md(js, namespace: str, ev: mpb.MarketDataEvent) -> None:
    await js.publish(bus.subject(namespace, "md", ev.symbol), ev.SerializeToString(),
                     headers={"Nats-Msg-Id": f"{ev.symbol}:md:{ev.sequence}"})


@dataclass
class RunningQuotes:
    port: int
    parts: Parts
    channel: grpc.aio.Channel
    app: App

    @property
    def stub(self) -> quote_service_pb2_grpc.QuoteServiceStub:
        return quote_service_pb2_grpc.QuoteServiceStub(self.channel)


@asynccontextmanager
async def quote_service(pool, nats_url: str, namespace: str, redis=None, **kw):
    """quote_svc's server on a free port, with its background tasks, caught up with the feed."""
    nc = await bus.connect(nats_url, "test-quote-svc")
    await bus.ensure_stream(nc.jetstream(), namespace, "md")
    app, parts = build(pool, nc, redis, namespace, **kw)
    server, port, _ = await create_server("127.0.0.1:0", app)
    await server.start()
    tasks = await run_background(app)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await asyncio.wait_for(parts.book.ready.wait(), 10)
        yield RunningQuotes(port, parts, channel, app)
    finally:
        await channel.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.stop(0)
        await nc.close()
