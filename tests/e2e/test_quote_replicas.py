"""Two quote_svc replicas behind Envoy (the e2e mesh runs `--quote-replicas 2`): streams are
spread over both, each replica takes the whole feed itself, so every stream sees a new trade;
when one replica is killed its streams end, new streams and GetQuote go to the other at once
(Envoy retries elsewhere), and the replica the launcher restarts serves the latest quote from
the feed; a replica asked to stop ends its streams with UNAVAILABLE / SHUTTING_DOWN at once."""
from __future__ import annotations

import asyncio
import os
import signal
import urllib.request

import grpc
import pytest

from meshkit.status import error_info
from tests.support.trades import filled_and_settled, place_crossing_pair
from tests.support.wait import eventually
from stockmesh.quote.v1 import quote_service_pb2 as qpb, quote_service_pb2_grpc

pytestmark = pytest.mark.e2e
SYMBOL = "META"  # no other end-to-end test trades it
STREAMS = 16
REPLICAS = ("quote_svc", "quote_svc-2")


def open_streams(mesh) -> dict[str, int]:
    """replica -> StreamQuotes calls it is serving (its stockmesh_quote_streams gauge)."""
    counts = {}
    for name in REPLICAS:
        port = mesh.state()["metrics_ports"][name]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        line = next(x for x in text.splitlines() if x.startswith("stockmesh_quote_streams "))
        counts[name] = int(float(line.split()[1]))
    return counts


async def trade(mesh, ch, price: str) -> None:
    """One share of SYMBOL changes hands at `price` between two new accounts; returns once
    order_svc and the ledger have both applied the fill (the invariants are checked after the
    test, and both apply executions on their own)."""
    placed = await place_crossing_pair(mesh, ch, SYMBOL, price, "qr")
    assert await eventually(lambda: filled_and_settled(mesh, ch, placed))


def all_see(watchers: list["Watcher"], price: str) -> bool:
    return all(w.last is not None and w.last.last_price == price for w in watchers)


class Watcher:
    """A StreamQuotes call read in the background: its last quote, and how it ended."""

    def __init__(self, stub, md) -> None:
        self.call = stub.StreamQuotes(qpb.StreamQuotesRequest(symbols=[SYMBOL]), metadata=md)
        self.last = None
        self.ended: grpc.StatusCode | None = None
        self.details = ""
        self.reason = ""  # its ErrorInfo's
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for q in self.call:
                self.last = q
        except grpc.aio.AioRpcError as exc:
            self.ended, self.details = exc.code(), exc.details() or ""
            info, _ = error_info(exc)
            self.reason = info.reason if info is not None else ""

    def cancel(self) -> None:
        self.call.cancel()


async def test_streams_spread_over_replicas_and_survive_one_dying(mesh):
    state = mesh.state()
    assert set(REPLICAS) <= set(state["pids"]), state["pids"]
    async with mesh.channel() as ch:
        quotes = quote_service_pb2_grpc.QuoteServiceStub(ch)
        md = mesh.auth("quote-watcher")
        watchers = [Watcher(quotes, md) for _ in range(STREAMS)]
        try:
            # Envoy balances the calls over both replicas (round robin per call).
            def all_open() -> dict[str, int] | None:
                counts = open_streams(mesh)
                return counts if sum(counts.values()) == STREAMS else None

            spread = await eventually(all_open)
            assert spread and all(spread[name] > 0 for name in REPLICAS), spread

            await trade(mesh, ch, "505.50")
            seen = await eventually(lambda: all_see(watchers, "505.50"))
            assert seen, [(w.last.last_price if w.last else None, w.ended) for w in watchers]

            # One replica dies: exactly its streams end; the others go on.
            victim = state["pids"]["quote_svc-2"]
            on_victim = spread["quote_svc-2"]
            os.kill(victim, signal.SIGKILL)
            assert await eventually(lambda: sum(w.ended is not None for w in watchers) == on_victim)
            await asyncio.sleep(0.5)
            assert sum(w.ended is not None for w in watchers) == on_victim
            # Envoy resets a stream whose upstream died after it began (HTTP/2 RST_STREAM), which
            # gRPC clients report as INTERNAL; a stream never ends silently, so the client knows
            # to open it again.
            assert {w.ended for w in watchers if w.ended is not None} <= {grpc.StatusCode.INTERNAL,
                                                                           grpc.StatusCode.UNAVAILABLE}

            # At once, before any health check has noticed: new calls land on the live replica.
            reply = await quotes.GetQuote(qpb.GetQuoteRequest(symbol=SYMBOL), metadata=md)
            assert reply.quote.last_price == "505.50"
            again = [Watcher(quotes, md) for _ in range(on_victim)]
            watchers += again
            assert await eventually(lambda: all_see(again, "505.50"))

            # The launcher restarts the replica; it takes the quote from the feed and serves streams.
            restarted = await eventually(lambda: mesh.state()["pids"].get("quote_svc-2") not in (None, victim),
                                         timeout=60)
            assert restarted, mesh.state()
            assert mesh.state()["restarts"]["quote_svc-2"] >= 1
            late: list[Watcher] = []

            async def restarted_serves_one() -> bool:
                try:
                    served = open_streams(mesh)["quote_svc-2"]
                except OSError:  # its metrics port is not up yet
                    served = 0
                if served == 0:
                    late.append(Watcher(quotes, md))
                    await asyncio.sleep(0.2)
                return served > 0

            assert await eventually(restarted_serves_one, timeout=60)
            watchers += late
            assert await eventually(lambda: all_see([w for w in late if w.ended is None], "505.50"))

            await trade(mesh, ch, "506.00")
            live = [w for w in watchers if w.ended is None]
            assert await eventually(lambda: all_see(live, "506.00")), \
                [w.last.last_price for w in live]

            # A replica asked to stop (SIGTERM, as in a rolling restart) ends its streams at once
            # with UNAVAILABLE, the status every gRPC client retries; the others go on.
            on_it = open_streams(mesh)["quote_svc-2"]
            assert on_it > 0
            os.kill(mesh.state()["pids"]["quote_svc-2"], signal.SIGTERM)
            assert await eventually(lambda: sum(w.ended is not None for w in live) == on_it)
            stopped = [w for w in live if w.ended is not None]
            assert {w.ended for w in stopped} == {grpc.StatusCode.UNAVAILABLE}, [(w.ended, w.details) for w in stopped]
            assert all("shutting down" in w.details for w in stopped), [w.details for w in stopped]
            assert {w.reason for w in stopped} == {"SHUTTING_DOWN"}, [w.reason for w in stopped]  # through Envoy
        finally:
            for w in watchers:
                w.cancel()
            await asyncio.gather(*(w.task for w in watchers), return_exceptions=True)
