"""A restarted simulator's walk goes on from each symbol's last trade (round 17: it started at
the listing's reference price again, a jump in every chart, and past the price band every quote
of the symbol would have been refused)."""
from __future__ import annotations

from decimal import Decimal

import grpc

from meshkit.symbols import listed
from simulator.runner import Simulator
from stockmesh.quote.v1 import quote_pb2, quote_service_pb2 as qpb, quote_service_pb2_grpc


class Quotes(quote_service_pb2_grpc.QuoteServiceServicer):
    async def GetQuote(self, request, context):
        if request.symbol != "AAPL":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no quote yet")
        return qpb.GetQuoteResponse(quote=quote_pb2.Quote(symbol="AAPL", last_price="250.00", bid_price="249.99"))


async def test_the_walk_starts_at_the_last_trade_where_there_is_one(tmp_path, monkeypatch):
    server = grpc.aio.server()
    quote_service_pb2_grpc.add_QuoteServiceServicer_to_server(Quotes(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    started: dict[str, Decimal] = {}

    async def symbol(self, stub, name: str, reference: Decimal) -> None:
        started[name] = reference

    monkeypatch.setattr(Simulator, "_symbol", symbol)
    try:
        await Simulator(f"127.0.0.1:{port}", tmp_path).run()
    finally:
        await server.stop(None)
    assert started["AAPL"] == Decimal("250.00")
    assert {s: p for s, p in started.items() if s != "AAPL"} == {
        s.symbol: s.reference_price for s in listed().values() if s.symbol != "AAPL"}  # never traded: the listing's
