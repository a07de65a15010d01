"""The simulator process: one task per symbol (its liquidity provider re-quotes around the
random walk, or around a replay of historical candles, and takers trade against it), through
Envoy like any customer."""
from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import grpc

from meshkit.launcher import keys
from meshkit.money import fmt
from meshkit.symbols import listed, tick_size
from simulator.market import BUY, HOT, SELL, PricePath, Replay, Walk, levels, quote_around
from stockmesh.common.v1 import common_pb2
from stockmesh.order.v1 import order_pb2, order_service_pb2 as pb, order_service_pb2_grpc

log = logging.getLogger("simulator")

TAKERS = [f"sim-taker-{i}" for i in range(1, 5)]
CASH = Decimal("10000000.00")
SHARES = Decimal(100_000)


def maker(symbol: str) -> str:
    return f"sim-mm-{symbol.lower()}"


def accounts() -> list[str]:
    return [maker(s) for s in listed()] + TAKERS


def replay_file(path: Path) -> dict[str, list]:
    """The candles of a CSV file (the format of `stockmesh candles import`, every row checked;
    MalformedRow names the first bad line), per symbol, oldest first."""
    from quote_svc.service_layer.history import read_file

    by_symbol: dict[str, list] = {}
    for c in sorted(read_file(path), key=lambda c: (c.symbol, c.start)):
        by_symbol.setdefault(c.symbol, []).append(c)
    return by_symbol


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


OPEN = (common_pb2.ORDER_STATUS_PENDING_NEW, common_pb2.ORDER_STATUS_NEW, common_pb2.ORDER_STATUS_PARTIALLY_FILLED)
CALL_TIMEOUT = 10.0  # seconds a call may take; then it counts as unanswered (Envoy's own limit is 30 s)
RETRY_FIRST, RETRY_MAX = 0.2, 5.0  # seconds between the sendings of an unanswered call: doubling, at most
PAGE = 500  # ListOrders' largest page
# A symbol whose orders come back REJECTED for these (halted, the session closed) is not traded:
# the simulator asks again every STOPPED_TICKS ticks instead of several times a tick (round 19
# soak: ~30 rejected orders a second, 160 MB of orders and audit events in 17 minutes of a halt).
STOPPED = frozenset({order_pb2.ORDER_REJECT_REASON_SYMBOL_HALTED, order_pb2.ORDER_REJECT_REASON_MARKET_CLOSED})
STOPPED_TICKS = 10
TOKEN_TTL = 86_400  # seconds a maker's token is valid; renewed after half of it
# Answers that settle a call: the request was refused and changed nothing (a cancel: the order is
# not working, or a rate limit). Anything else that is not a reply leaves the outcome unknown.
REFUSALS = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNIMPLEMENTED})


def unanswered(exc: grpc.aio.AioRpcError) -> bool:
    """Whether a failed call says nothing of its outcome and may be sent again as it was (API.md:
    UNAVAILABLE is safe to retry with the same ids): the service down or restarting, a broken
    connection (UNAVAILABLE), no answer in time (DEADLINE_EXCEEDED), or the service killed under
    the call (kill -9 behind Envoy: INTERNAL "Received RST_STREAM"). Its request may have been
    carried out all the same: the order placed, its acknowledgement lost."""
    code = exc.code()
    return code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or (
        code is grpc.StatusCode.INTERNAL and "RST_STREAM" in (exc.details() or ""))


class OutcomeUnknown(Exception):
    """A call that got no answer the simulator could act on (unanswered for the whole patience,
    or a server's own INTERNAL error): whatever it asked for may or may not have been done."""


@dataclass
class Maker:
    """A symbol's liquidity provider as the simulator knows it: the ids of its working orders by
    side, and when it next checks them against the account's open orders in order_svc."""

    symbol: str
    account: str
    resting: dict[int, list[str]] = field(default_factory=lambda: {BUY: [], SELL: []})
    reconcile_at: float = 0.0  # the event loop's time; 0: before the next round (as at start)


class Simulator:
    """`retry_patience`: seconds a call is sent again (the same client_order_id, the same order
    id) while its outcome is unknown, before the simulator gives up on it and finds out from the
    maker's open orders instead; `reconcile_every`: seconds (±25 %) between those checks anyway.
    `replay`: historical candles per symbol (replay_file), whose prices a symbol's quotes follow,
    `replay_steps` quotes a candle, before its random walk takes over."""

    def __init__(self, endpoint: str, data_dir: Path, *, seed: int | None = None, tick_seconds: float = 1.0,
                 retry_patience: float = 120.0, reconcile_every: float = 60.0,
                 replay: dict[str, list] | None = None, replay_steps: int = 4) -> None:
        self.endpoint, self.data_dir = endpoint, data_dir
        self.replay, self.replay_steps = replay or {}, replay_steps
        self.rng = random.Random(seed)
        self.tick = tick_seconds
        self.retry_patience, self.reconcile_every = retry_patience, reconcile_every
        self.run_id = uuid.uuid4().hex[:8]
        self.clock = time.monotonic
        self.tokens: dict[str, tuple[str, float]] = {}  # account -> (token, when it was minted)
        self.trades_sent = 0

    def md(self, account: str) -> tuple[tuple[str, str], ...]:
        """The maker's call metadata. Its token is minted anew half-way through its life, so a
        market left running for days never trades with an expired one."""
        token, minted = self.tokens.get(account, ("", -TOKEN_TTL))
        if self.clock() - minted >= TOKEN_TTL / 2:
            token, minted = keys.mint_token(self.data_dir, account, ttl=TOKEN_TTL), self.clock()
            self.tokens[account] = (token, minted)
        return (("authorization", f"Bearer {token}"),)

    async def run(self) -> None:
        async with grpc.aio.insecure_channel(self.endpoint) as channel:
            stub = order_service_pb2_grpc.OrderServiceStub(channel)
            starts = await asyncio.gather(*(self.last_price(channel, s.symbol) for s in listed().values()))
            await asyncio.gather(*(self._symbol(stub, s.symbol, last or s.reference_price)
                                   for s, last in zip(listed().values(), starts)))

    async def last_price(self, channel, symbol: str) -> Decimal | None:
        """The symbol's last trade, where a restarted simulator's walk goes on from (round 17:
        it started again at the listing's reference price, a jump in the charts and the
        portfolios, and one of more than the price band (20 %) would have every quote of the
        symbol refused); None when it never traded or the quote is not to be had now."""
        from stockmesh.quote.v1 import quote_service_pb2 as qpb, quote_service_pb2_grpc

        try:
            quote = (await quote_service_pb2_grpc.QuoteServiceStub(channel).GetQuote(
                qpb.GetQuoteRequest(symbol=symbol), metadata=self.md(maker(symbol)), timeout=CALL_TIMEOUT)).quote
        except grpc.aio.AioRpcError:
            return None
        return Decimal(quote.last_price) if quote.last_price else None

    async def _symbol(self, stub, symbol: str, reference: Decimal) -> None:
        """Quote and trade `symbol` for ever, its walk starting at `reference` (its last trade,
        else its listing's price)."""
        rng = random.Random(self.rng.random())
        candles = self.replay.get(symbol)
        walk: PricePath = Replay.of(candles, reference, self.replay_steps) if candles else Walk.at(reference)
        if candles:
            log.info("replaying historical candles", extra={"symbol": symbol, "candles": len(candles),
                                                             "from": candles[0].start.isoformat()})
        interval = self.tick / 5 if symbol in HOT else self.tick
        taker_chance = 0.6 if symbol in HOT else 0.25
        book = Maker(symbol, maker(symbol))
        loop = asyncio.get_running_loop()
        mid = traded = reference  # `traded`: where a taker of ours last took the quote
        n, waiting = 0, False
        while True:
            n += 1
            stopped = False  # this round's quotes were refused: the symbol halted, or closed
            try:
                if loop.time() >= book.reconcile_at:  # at start (an earlier run's orders), then now and then
                    await self._reconcile(stub, book)
                    book.reconcile_at = loop.time() + self.reconcile_every * (0.75 + random.random() / 2)
                # Make before break: a side's new quotes rest before its old ones go, so it is
                # never empty between them. The side the price moves towards goes first: its
                # new quotes cannot cross the other side's old ones, and those old ones are gone
                # (cancelled ahead in the symbol's ordered flow) before the other side's new
                # quotes could meet them (the maker's own orders: self-trade prevention would
                # cancel the newcomer). Two levels a side, the outer one deeper, so a taker
                # never takes a side out. Every order is tracked from its acknowledgement on,
                # and one whose acknowledgement is lost is asked for again (_send): an order
                # the maker forgot would stay in the book, and cross its next quotes.
                replaying = isinstance(walk, Replay) and walk.replaying
                q = quote_around(walk.step(rng), rng)
                if replaying and not walk.replaying:
                    log.info("replay ended; the random walk goes on from its last price",
                             extra={"symbol": symbol, "price": str(walk.price)})
                up = q.bid + q.ask >= 2 * mid
                mid = (q.bid + q.ask) / 2
                wanted = levels(q, tick_size(q.bid))
                for side in ((SELL, BUY) if up else (BUY, SELL)):
                    old = list(book.resting[side])
                    complete = True
                    for level, (price, size) in enumerate(wanted[side]):
                        order = await self._place(stub, book.account, self._limit(
                            f"{symbol}-{n}-{side}-{level}", symbol, side, size, price, common_pb2.TIME_IN_FORCE_GTC))
                        if order is not None and order.status in OPEN:
                            book.resting[side].append(order.order_id)
                        else:
                            complete = False
                            stopped = order is not None and order.reject_reason in STOPPED
                    if not complete:  # one did not rest (a refusal): the old quotes stay too,
                        break         # and the other side waits for the next round
                    for order_id in old:
                        if await self._cancel(stub, book.account, order_id):
                            book.resting[side].remove(order_id)
                # order_svc's price band is around the last trade: a replay's jump trades at each
                # of its quotes, and so does any quote 10 % off our last trade (steps under the
                # jump's 5 %, one after the other with no trade, add up; round 15 review).
                drifted = abs(mid - traded) > traded / 10
                if stopped:
                    pass  # nothing trades: no taker either
                elif rng.random() < taker_chance or getattr(walk, "jumping", False) or drifted:
                    buy = rng.random() < 0.5
                    await self._place(stub, rng.choice(TAKERS), self._limit(
                        f"{symbol}-{n}-t", symbol, common_pb2.SIDE_BUY if buy else common_pb2.SIDE_SELL,
                        rng.randint(1, 50), q.ask if buy else q.bid, common_pb2.TIME_IN_FORCE_IOC))
                    traded = q.ask if buy else q.bid
                    self.trades_sent += 1
            except asyncio.CancelledError:
                raise
            except OutcomeUnknown as exc:
                log.warning("%s; checking the maker's open orders next", exc, extra={"symbol": symbol})
                book.reconcile_at = 0.0
            except Exception:  # noqa: BLE001 - the simulator keeps the market going whatever happens
                log.exception("simulator step failed", extra={"symbol": symbol})
                book.reconcile_at = 0.0
            if stopped != waiting:
                waiting = stopped
                log.info(f"{symbol} does not trade (halted or closed); asking again every {STOPPED_TICKS} ticks"
                         if stopped else f"{symbol} trades again", extra={"symbol": symbol})
            await asyncio.sleep(self.tick * STOPPED_TICKS if stopped else interval * (0.5 + rng.random()))

    async def _reconcile(self, stub, book: Maker) -> None:
        """Cancel the maker's working orders it does not track (one whose placement got no
        answer for the whole patience, one of an earlier run of the simulator), and forget the
        tracked ones that are not working any more (filled). One ListOrders page, as a rule."""
        working, token = [], ""
        while True:
            reply = await self._send(stub.ListOrders, pb.ListOrdersRequest(
                statuses=OPEN, page_size=PAGE, page_token=token), book.account)
            working += reply.orders
            if not (token := reply.next_page_token):
                break
        ids = {o.order_id for o in working}
        for side, tracked in book.resting.items():
            book.resting[side] = [order_id for order_id in tracked if order_id in ids]
        known = {order_id for tracked in book.resting.values() for order_id in tracked}
        for o in working:
            if o.order_id not in known:
                log.warning("cancelling an order the simulator had lost track of", extra={
                    "symbol": book.symbol, "orderId": o.order_id, "clientOrderId": o.client_order_id})
                await self._cancel(stub, book.account, o.order_id)

    def _limit(self, tag: str, symbol: str, side: int, qty: int, price: Decimal, tif: int) -> pb.PlaceOrderRequest:
        return pb.PlaceOrderRequest(client_order_id=f"sim-{self.run_id}-{tag}", symbol=symbol, side=side,
                                    type=common_pb2.ORDER_TYPE_LIMIT, quantity=qty, limit_price=fmt(price),
                                    time_in_force=tif)

    async def _place(self, stub, account: str, request: pb.PlaceOrderRequest):
        """The order placed, or None when it was refused (a rate limit, a reused id): refusals
        are part of a live market and only logged."""
        try:
            return (await self._send(stub.PlaceOrder, request, account)).order
        except grpc.aio.AioRpcError as exc:
            log.debug("order refused", extra={"code": exc.code().name, "details": exc.details()})
            return None

    async def _cancel(self, stub, account: str, order_id: str) -> bool:
        """Whether the order is cancelled or not working any more (filled); False when the
        cancel was refused for now (a rate limit), the order still working."""
        try:
            await self._send(stub.CancelOrder, pb.CancelOrderRequest(order_id=order_id), account)
        except grpc.aio.AioRpcError as exc:
            log.debug("cancel refused", extra={"code": exc.code().name, "details": exc.details()})
            return exc.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED
        return True

    async def _send(self, rpc, request, account: str):
        """The reply to one call, sent again as it was (the same client_order_id, the same order
        id: order_svc answers a repeat with the order it made the first time) while its outcome
        is unknown, after a pause that doubles from RETRY_FIRST to RETRY_MAX, for up to
        `retry_patience` seconds. A refusal raises its AioRpcError; no usable answer at all,
        OutcomeUnknown."""
        what = type(request).__name__.removesuffix("Request")
        loop = asyncio.get_running_loop()
        started, pause, sent = loop.time(), RETRY_FIRST, 0
        while True:
            sent += 1
            try:
                reply = await rpc(request, metadata=self.md(account), timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in REFUSALS:
                    raise
                failure = f"{what} failed: {exc.code().name}: {exc.details()}"
                if not unanswered(exc):
                    raise OutcomeUnknown(failure) from exc
                if loop.time() - started >= self.retry_patience:
                    raise OutcomeUnknown(f"{failure} (unanswered {sent} times, giving up)") from exc
                if sent == 1:
                    log.warning("call unanswered; sending it again until it is", extra={
                        "call": what, "code": exc.code().name, "details": exc.details()})
                await asyncio.sleep(pause * (0.5 + random.random()))
                pause = min(2 * pause, RETRY_MAX)
            else:
                if sent > 1:
                    log.info("call answered", extra={"call": what, "sent": sent})
                return reply
