"""The simulator process: one task per symbol (its liquidity provider re-quotes around the
random walk and takers trade against it), through Envoy like any customer."""
from __future__ import annotations

import asyncio
import logging
import random
import uuid
from decimal import Decimal
from pathlib import Path

import grpc

from meshkit.launcher import keys
from meshkit.money import fmt
from meshkit.symbols import listed, tick_size
from simulator.market import BUY, HOT, SELL, Walk, levels, quote_around
from stockmesh.common.v1 import common_pb2
from stockmesh.order.v1 import order_service_pb2 as pb, order_service_pb2_grpc

log = logging.getLogger("simulator")

TAKERS = [f"sim-taker-{i}" for i in range(1, 5)]
CASH = Decimal("10000000.00")
SHARES = Decimal(100_000)


def maker(symbol: str) -> str:
    return f"sim-mm-{symbol.lower()}"


def accounts() -> list[str]:
    return [maker(s) for s in listed()] + TAKERS


async def fund(database_url: str) -> None:
    """Give every simulator account cash and shares of every symbol, once (idempotent keys)."""
    from ledger_svc.service_layer import commands, handlers
    from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
    from meshkit import db

    pool = await db.create_pool(database_url, min_size=1, max_size=4)
    try:
        uow = lambda: LedgerUnitOfWork(pool)  # noqa: E731
        for account in accounts():
            await handlers.deposit(commands.Deposit(account, CASH, "sim-funding"), uow)
            for sym in listed().values():
                await handlers.credit_shares(commands.CreditShares(account, sym.symbol, SHARES, f"sim-funding-{sym.symbol}",
                                                                   sym.reference_price), uow)
    finally:
        await pool.close()


class Simulator:
    def __init__(self, endpoint: str, data_dir: Path, *, seed: int | None = None, tick_seconds: float = 1.0) -> None:
        self.endpoint, self.data_dir = endpoint, data_dir
        self.rng = random.Random(seed)
        self.tick = tick_seconds
        self.run_id = uuid.uuid4().hex[:8]
        self.tokens = {a: keys.mint_token(data_dir, a, ttl=7 * 86_400) for a in accounts()}
        self.trades_sent = 0

    def md(self, account: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[account]}"),)

    async def run(self) -> None:
        async with grpc.aio.insecure_channel(self.endpoint) as channel:
            stub = order_service_pb2_grpc.OrderServiceStub(channel)
            await asyncio.gather(*(self._symbol(stub, s.symbol, s.reference_price) for s in listed().values()))

    async def _symbol(self, stub, symbol: str, reference: Decimal) -> None:
        rng = random.Random(self.rng.random())
        walk = Walk.at(reference)
        interval = self.tick / 5 if symbol in HOT else self.tick
        taker_chance = 0.6 if symbol in HOT else 0.25
        resting: dict[int, list[str]] = {BUY: [], SELL: []}  # the maker's live quotes, by side
        mid = reference
        n = 0
        while True:
            n += 1
            try:
                # Make before break: a side's new quotes rest before its old ones go, so it is
                # never empty between them. The side the price moves towards goes first: its
                # new quotes cannot cross the other side's old ones, and those old ones are gone
                # (cancelled ahead in the symbol's ordered flow) before the other side's new
                # quotes could meet them (the maker's own orders: self-trade prevention would
                # cancel the newcomer). Two levels a side, the outer one deeper, so a taker
                # never takes a side out.
                q = quote_around(walk.step(rng), rng)
                up = q.bid + q.ask >= 2 * mid
                mid = (q.bid + q.ask) / 2
                wanted = levels(q, tick_size(q.bid))
                for side in ((SELL, BUY) if up else (BUY, SELL)):
                    mine = wanted[side]
                    placed = []
                    for level, (price, size) in enumerate(mine):
                        reply = await self._call(stub.PlaceOrder(self._limit(
                            f"{symbol}-{n}-{side}-{level}", symbol, side, size, price, common_pb2.TIME_IN_FORCE_GTC),
                            metadata=self.md(maker(symbol))))
                        if reply is not None and reply.order.status == common_pb2.ORDER_STATUS_NEW:
                            placed.append(reply.order.order_id)
                    if len(placed) < len(mine):  # one did not rest (a refusal): the old quotes stay too,
                        resting[side] += placed  # and the other side waits for the next round
                        break
                    for order_id in resting[side]:
                        await self._call(stub.CancelOrder(pb.CancelOrderRequest(order_id=order_id),
                                                          metadata=self.md(maker(symbol))))
                    resting[side] = placed
                if rng.random() < taker_chance:
                    buy = rng.random() < 0.5
                    taker = rng.choice(TAKERS)
                    await self._call(stub.PlaceOrder(self._limit(
                        f"{symbol}-{n}-t", symbol, common_pb2.SIDE_BUY if buy else common_pb2.SIDE_SELL,
                        rng.randint(1, 50), q.ask if buy else q.bid, common_pb2.TIME_IN_FORCE_IOC),
                        metadata=self.md(taker)))
                    self.trades_sent += 1
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the simulator keeps the market going whatever happens
                log.exception("simulator step failed", extra={"symbol": symbol})
            await asyncio.sleep(interval * (0.5 + rng.random()))

    def _limit(self, tag: str, symbol: str, side: int, qty: int, price: Decimal, tif: int) -> pb.PlaceOrderRequest:
        return pb.PlaceOrderRequest(client_order_id=f"sim-{self.run_id}-{tag}", symbol=symbol, side=side,
                                    type=common_pb2.ORDER_TYPE_LIMIT, quantity=qty, limit_price=fmt(price),
                                    time_in_force=tif)

    async def _call(self, call):
        """One RPC; refusals (a cancel of an order that already filled, a rate limit) are
        part of a live market and only logged."""
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            level = logging.WARNING if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL) else logging.DEBUG
            log.log(level, "call refused", extra={"code": exc.code().name, "details": exc.details()})
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                await asyncio.sleep(1)
            return None
