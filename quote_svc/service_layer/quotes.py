"""Live quotes: the latest quote per symbol in memory, and its fan-out to streams.

Fan-out never waits for a client. Each subscription holds at most one pending quote per
symbol (a dict, newest wins: conflation) and an Event; `publish` replaces the entry and sets
the Event, which is O(1) and never awaits. The stream's task takes pending quotes one at a
time and hands them to gRPC; while gRPC waits for a slow client (HTTP/2 flow control), new
quotes only overwrite the pending entries, so a stalled client costs one quote per symbol it
asked for, however long it stalls, and delays nobody."""
from __future__ import annotations

import asyncio
from typing import Callable, Iterable

from meshkit import symbols as listing
from meshkit.errors import FieldViolation, InvalidArgument, NotFound, Unavailable
from quote_svc.domain.quotes import MarketData, Quote, next_quote, visible

MAX_STREAM_SYMBOLS = 100


class Closing(Unavailable):
    """The service is shutting down: the stream ends with UNAVAILABLE, the one status every
    gRPC client retries (through Envoy it lands on another replica, which starts with a fresh
    snapshot), and ErrorInfo reason SHUTTING_DOWN, as order_svc's streams end."""

    def __init__(self) -> None:
        super().__init__("quote_svc is shutting down; open the stream again", reason="SHUTTING_DOWN")


class Subscription:
    __slots__ = ("symbols", "_pending", "_sent", "_wake", "conflated", "closed", "_why")

    def __init__(self, symbols: frozenset[str]) -> None:
        self.symbols = symbols
        self._pending: dict[str, Quote] = {}
        self._sent: dict[str, tuple] = {}  # what the client last got of each symbol (visible())
        self._wake = asyncio.Event()
        self.conflated = 0  # quotes replaced before the client got them
        self.closed = False
        self._why: Exception | None = None  # what get raises once closed (None: Closing)

    def offer(self, quote: Quote) -> None:
        if quote.symbol in self._pending:
            self.conflated += 1
        self._pending[quote.symbol] = quote
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def close(self, why: Exception | None = None) -> None:
        """Closed: get raises `why` (its stream's token expired, say), else Closing."""
        if not self.closed:
            self._why = why
        self.closed = True
        self._wake.set()

    async def get(self) -> Quote:
        """The next pending quote (the newest of its symbol), waiting for one if need be;
        raises Closing (or what it was closed with) once the subscription is closed. A quote
        that looks like the last one the client got of its symbol is skipped: conflation can
        drop the change in between (a bid size up, then down again)."""
        while True:
            while not self._pending:
                if self.closed:
                    raise self._why or Closing()
                self._wake.clear()
                await self._wake.wait()
            if self.closed:
                raise self._why or Closing()
            symbol = next(iter(self._pending))
            quote = self._pending.pop(symbol)
            seen = visible(quote)
            if self._sent.get(symbol) != seen:
                self._sent[symbol] = seen
                return quote


class QuoteBook:
    """The latest quote of each symbol, and the subscriptions that want to hear of changes."""

    def __init__(self) -> None:
        self.quotes: dict[str, Quote] = {}
        self._subs: dict[str, set[Subscription]] = {}
        self.listeners: list[Callable[[Quote], None]] = []
        self.ready = asyncio.Event()
        self.closing = False

    def _set(self, q: Quote) -> None:
        before = self.quotes.get(q.symbol)
        self.quotes[q.symbol] = q
        # A change the quote does not show (the engine's feed also tells depth below the top)
        # is not sent to streams: they already hold a quote that looks the same. GetQuote and
        # the cache still take its sequence.
        if before is None or visible(before) != visible(q):
            for sub in self._subs.get(q.symbol, ()):
                sub.offer(q)
        for listener in self.listeners:
            listener(q)

    def apply(self, ev: MarketData) -> Quote | None:
        """Apply a market-data event; the new quote, or None for a repeat / older event."""
        q = next_quote(self.quotes.get(ev.symbol), ev)
        if q is not None:
            self._set(q)
        return q

    def seed(self, q: Quote) -> None:
        """A quote from the cache, taken only if newer than what we hold."""
        cur = self.quotes.get(q.symbol)
        if cur is None or q.sequence > cur.sequence:
            self._set(q)

    def subscribe(self, symbols: frozenset[str]) -> Subscription:
        """A subscription whose first pending quotes are the current snapshot."""
        sub = Subscription(symbols)
        if self.closing:
            sub.close()
        for s in sorted(symbols):
            self._subs.setdefault(s, set()).add(sub)
            if s in self.quotes:
                sub.offer(self.quotes[s])
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        for s in sub.symbols:
            subs = self._subs.get(s)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[s]

    def subscribers(self) -> int:
        return len({id(s) for subs in self._subs.values() for s in subs})

    def close(self) -> None:
        """End every subscription (shutdown): their streams end at once with UNAVAILABLE, and
        so do any opened from now on."""
        self.closing = True
        for subs in self._subs.values():
            for sub in subs:
                sub.close()


def stream_symbols(symbols: Iterable[str]) -> frozenset[str]:
    wanted = list(symbols)
    if not wanted:
        raise InvalidArgument([FieldViolation("symbols", "name at least one symbol")])
    if len(wanted) > MAX_STREAM_SYMBOLS:
        raise InvalidArgument([FieldViolation("symbols", f"at most {MAX_STREAM_SYMBOLS} symbols per stream")])
    missing = [i for i, s in enumerate(wanted) if not s]
    if missing:  # as every other empty symbol is, not UNKNOWN_SYMBOL (round 15)
        raise InvalidArgument([FieldViolation(f"symbols[{i}]", "is required") for i in missing[:10]])
    unknown = [(i, s) for i, s in enumerate(wanted) if s not in listing.listed()]
    if unknown:  # each at its own index, a repeated one too (round 18: all at the first's)
        raise InvalidArgument([FieldViolation(f"symbols[{i}]", f"unknown symbol {s[:16]!r}")
                               for i, s in unknown[:10]], reason="UNKNOWN_SYMBOL")
    return frozenset(wanted)


def get_quote(book: QuoteBook, symbol: str) -> Quote:
    """The symbol's latest quote. None yet: NOT_FOUND / QUOTE_NOT_FOUND once this replica has
    read the feed up to its present (the symbol has not traded or quoted since its listing),
    UNAVAILABLE with RetryInfo while it is still catching up (just started or restarted: the
    symbol may well be trading)."""
    listing.known(symbol)
    q = book.quotes.get(symbol)
    if q is None:
        if not book.ready.is_set():
            raise Unavailable(f"no quote for {symbol} here yet: this replica is catching up with the market-data "
                              "feed; retry shortly", reason="QUOTES_CATCHING_UP", metadata={"symbol": symbol},
                              retry_after_seconds=0.2)
        raise NotFound(f"no quote for {symbol} yet", reason="QUOTE_NOT_FOUND", metadata={"symbol": symbol})
    return q
