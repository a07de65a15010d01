"""gRPC servicers of matching_svc: thin, request → query → reply.

``GetOrderBook`` reads the live book when this instance owns the symbol, else the last
market-data event on JetStream (which carries the top ten levels, so a non-owner answers at
most ten levels). ``GetEngineStatus`` reports what this instance owns. ``HaltSymbol`` and
``ResumeSymbol`` append a Halt / Resume command to the symbol's input subject, so the engine
applies it in order with the orders: every order sequenced after a halt is refused, every
one before it was matched as usual.
"""
from __future__ import annotations

import uuid

import nats.js.errors
from nats.js import JetStreamContext

from matching_svc.service_layer.engine import MD_DEPTH
from matching_svc.service_layer.runner import Engine
from meshkit import bus, symbols
from meshkit.validate import MAX_HALT_REASON
from meshkit.errors import FieldViolation, InvalidArgument
from stockmesh.matching.v1 import (
    engine_control_service_pb2 as ec,
    engine_control_service_pb2_grpc,
    market_data_service_pb2 as md,
    market_data_service_pb2_grpc,
    matching_pb2,
)

DEFAULT_DEPTH = 10
MAX_DEPTH = 100


def parse_depth(depth: int) -> int:
    if depth < 0:
        raise InvalidArgument([FieldViolation("depth", "must not be negative")])
    if depth == 0:
        return DEFAULT_DEPTH
    return min(depth, MAX_DEPTH)


def parse_symbol(text: str) -> str:
    """An operator's symbol (HaltSymbol, ResumeSymbol: internal, typed at `stockmesh engine
    halt`), in any case ("msft" is MSFT); missing is `symbol: is required`. The public
    GetOrderBook takes the symbol exactly as listed, as every public RPC (meshkit.symbols.known)."""
    return symbols.known(text.strip().upper())


class MarketDataServicer(market_data_service_pb2_grpc.MarketDataServiceServicer):
    def __init__(self, engine: Engine, js: JetStreamContext) -> None:
        self.engine, self.js = engine, js

    async def GetOrderBook(self, request: md.GetOrderBookRequest, context) -> md.GetOrderBookResponse:
        symbol = symbols.known(request.symbol)  # as GetQuote, GetCandles, PlaceOrder: "msft" is UNKNOWN_SYMBOL
        depth = parse_depth(request.depth)
        live = self.engine.owned_engine(symbol)
        if live is not None:
            bids, asks = live.depth(depth)
            return md.GetOrderBookResponse(bids=bids, asks=asks, sequence=live.md_seq)
        names = self.engine.names
        try:
            msg = await bus.last_msg(self.js, names.md, names.md_subject(symbol))
        except nats.js.errors.NotFoundError:
            return md.GetOrderBookResponse()
        ev = matching_pb2.MarketDataEvent.FromString(msg.data)
        n = min(depth, MD_DEPTH)
        return md.GetOrderBookResponse(bids=ev.bids[:n], asks=ev.asks[:n], sequence=ev.sequence)


class EngineControlServicer(engine_control_service_pb2_grpc.EngineControlServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def _sequence(self, cmd: matching_pb2.EngineCommand) -> None:
        """Append `cmd` to its symbol's input subject (durably stored once this returns)."""
        names = self.engine.names
        cmd.command_id = f"{cmd.symbol}:control:{uuid.uuid4().hex}"
        await self.engine.js.publish(names.orders_subject(cmd.symbol), cmd.SerializeToString(), stream=names.orders,
                                     headers={"Nats-Msg-Id": cmd.command_id})

    async def HaltSymbol(self, request: ec.HaltSymbolRequest, context) -> ec.HaltSymbolResponse:
        symbol = parse_symbol(request.symbol)
        reason = request.reason.strip()
        if len(reason) > MAX_HALT_REASON:
            raise InvalidArgument([FieldViolation("reason", f"at most {MAX_HALT_REASON} characters")])
        await self._sequence(matching_pb2.EngineCommand(
            symbol=symbol, halt=matching_pb2.Halt(reason=reason or "halted by an operator")))
        return ec.HaltSymbolResponse()

    async def ResumeSymbol(self, request: ec.ResumeSymbolRequest, context) -> ec.ResumeSymbolResponse:
        symbol = parse_symbol(request.symbol)
        await self._sequence(matching_pb2.EngineCommand(symbol=symbol, resume=matching_pb2.Resume()))
        return ec.ResumeSymbolResponse()

    async def GetEngineStatus(self, request: ec.GetEngineStatusRequest, context) -> ec.GetEngineStatusResponse:
        """Per owned symbol: the last input whose results are published, the book's hash, whether
        it is halted, and the last trading day it has closed."""
        reply = ec.GetEngineStatusResponse(instance_id=self.engine.cfg.instance_id)
        for symbol in sorted(self.engine.runners):
            live = self.engine.owned_engine(symbol)
            if live is not None:
                reply.symbols.append(ec.SymbolStatus(symbol=symbol, last_input_sequence=self.engine.published_seq(symbol),
                                                     book_hash=live.book.state_hash(),
                                                     halted=live.halted is not None, halt_reason=live.halted or "",
                                                     last_closed_day=live.closed_day))
        return reply
