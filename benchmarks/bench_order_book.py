"""In-process benchmark of the order book (matching_svc.domain), side by side
with a pure-Python order book from PyPI (``pyorderbook``) doing the same work.

    .venv/bin/python benchmarks/bench_order_book.py [--ops 300000] [--seed 7]

A seeded, realistic stream of operations on one symbol is generated first
(generation is not timed): mostly limit orders near the touch (most of them
rest, some cross), many cancels, some replaces, IOC and market orders, around
a reference price that moves as a random walk. Each book then runs the stream
twice: once untimed per operation, for throughput, and once timing every
operation with ``time.perf_counter_ns``, for latency percentiles per type. The
timed work includes building each book's own order object.

"The same work": ``pyorderbook`` has only resting limit orders and cancel, so
its adapter does an IOC as match-then-cancel-the-rest, a market order as a
limit at the collar then cancel-the-rest, a quantity decrease in place (its
queues keep priority as ours does) and a price change as cancel + new order.
Each order gets its own account, so self-trade prevention never fires. Both
books must end with the same traded volume and number of fills, which the
script checks.
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import statistics
import sys
import time
from collections import Counter

from matching_svc.domain import Fill, Order, OrderBook, OrderType, Side, TimeInForce

MID = 1_000_000  # $100.0000 in ticks
CENT = 100  # ticks

# Operation tuples: (kind, order_id, side, quantity, price, target_id)
LIMIT, CANCEL, REPLACE_QTY, REPLACE_PX, IOC, MARKET = "limit", "cancel", "replace qty", "replace px", "ioc", "market"
KINDS = (LIMIT, CANCEL, REPLACE_QTY, REPLACE_PX, IOC, MARKET)


def generate(n_ops: int, seed: int) -> list[tuple]:
    """A seeded stream: 55% limit, 30% cancel, 2.5% + 2.5% replace, 5% IOC, 5% market."""
    rng = random.Random(seed)
    mid = MID
    ops: list[tuple] = []
    resting: list[tuple[str, int]] = []  # (id, price) of limit orders that may still rest
    next_id = 0
    for i in range(n_ops):
        if i % 50 == 0:
            mid += rng.choice((-CENT, 0, CENT))
        r = rng.random()
        side = BUY if rng.random() < 0.5 else SELL
        sign = 1 if side is BUY else -1  # +: towards / through the other side
        qty = rng.randint(1, 10) * 100
        if 0.55 <= r < 0.90 and resting:
            # cancel / replace an earlier limit order (it may have filled meanwhile)
            j = rng.randrange(len(resting))
            resting[j], resting[-1] = resting[-1], resting[j]
            target, price = resting.pop()
            if r < 0.85:
                ops.append((CANCEL, None, None, 0, 0, target))
                continue
            next_id += 1
            oid = f"o{next_id}"
            if r < 0.875:
                ops.append((REPLACE_QTY, oid, None, 100, price, target))
            else:
                price += rng.choice((-CENT, CENT))
                ops.append((REPLACE_PX, oid, None, 0, price, target))
            resting.append((oid, price))
            continue
        next_id += 1
        oid = f"o{next_id}"
        if r < 0.90:
            if rng.random() < 0.2:  # aggressive: at or through the mid
                price = mid + sign * rng.randint(0, 3) * CENT
            else:  # passive: 1..31 cents behind the mid, mostly close
                price = mid - sign * (1 + min(int(rng.expovariate(0.3)), 30)) * CENT
            ops.append((LIMIT, oid, side, qty, price, None))
            resting.append((oid, price))
        elif r < 0.95:
            ops.append((IOC, oid, side, qty, mid + sign * rng.randint(0, 5) * CENT, None))
        else:
            ops.append((MARKET, oid, side, qty, mid + sign * 50 * CENT, None))
    return ops


BUY, SELL = Side.BUY, Side.SELL


# ---------------------------------------------------------------- adapters
# Each adapter turns the stream into calls on its book and counts fills and
# traded volume, so both can be checked to have done the same work.


class StockMeshAdapter:
    name = "stockmesh OrderBook"

    def __init__(self) -> None:
        self.book = OrderBook("BENCH")
        self.fills = 0
        self.volume = 0

    def handlers(self):
        book = self.book
        LIMIT_T, MARKET_T = OrderType.LIMIT, OrderType.MARKET
        GTC, IOC_T = TimeInForce.GTC, TimeInForce.IOC

        def limit(oid, side, qty, price, _):
            return book.submit(Order(oid, oid, side, LIMIT_T, GTC, qty, price))

        def ioc(oid, side, qty, price, _):
            return book.submit(Order(oid, oid, side, LIMIT_T, IOC_T, qty, price))

        def market(oid, side, qty, collar, _):
            return book.submit(Order(oid, oid, side, MARKET_T, IOC_T, qty, None, None, collar))

        def cancel(_oid, _side, _qty, _price, target):
            return book.cancel(target)

        def replace_qty(oid, _side, lot, price, target):
            # the open quantity down by a lot, same price: keeps priority
            order = book.get_order(target)
            if order is None or order.leaves <= lot:
                return book.cancel(target)
            return book.replace(target, oid, order.quantity - lot, price)

        def replace_px(oid, _side, _qty, price, target):
            # same open quantity at a new price: loses priority, may trade
            order = book.get_order(target)
            return book.replace(target, oid, order.quantity if order is not None else 1, price)

        return {
            LIMIT: limit,
            IOC: ioc,
            MARKET: market,
            CANCEL: cancel,
            REPLACE_QTY: replace_qty,
            REPLACE_PX: replace_px,
        }

    def count(self, events) -> None:
        for e in events:
            if type(e) is Fill:
                self.fills += 1
                self.volume += e.quantity

    def resting_orders(self) -> int:
        return len(self.book)


class PyOrderBookAdapter:
    name = "pyorderbook 0.4.9"

    def __init__(self) -> None:
        import pyorderbook

        self.mod = pyorderbook
        self.book = pyorderbook.Book()
        self.orders: dict[str, object] = {}  # our id -> their Order
        self.fills = 0
        self.volume = 0

    def handlers(self):
        pob = self.mod
        book = self.book
        orders = self.orders
        BID, ASK = pob.Side.BID, pob.Side.ASK

        def submit(oid, side, qty, price):
            order = pob.Order(BID if side is BUY else ASK, "BENCH", price, qty)
            blotter = book.match(order)
            return order, blotter

        def limit(oid, side, qty, price, _):
            order, blotter = submit(oid, side, qty, price)
            if order.quantity:
                orders[oid] = order
            return blotter

        def ioc(oid, side, qty, price, _):
            order, blotter = submit(oid, side, qty, price)
            if order.quantity:
                book.cancel(order)
            return blotter

        def cancel(_oid, _side, _qty, _price, target):
            order = orders.pop(target, None)
            if order is not None and order.id in book.order_map:
                book.cancel(order)
            return None

        def replace_qty(oid, _side, lot, _price, target):
            order = orders.pop(target, None)
            if order is not None and order.id in book.order_map:
                if order.quantity > lot:
                    order.quantity -= lot  # in place: keeps its place in the queue
                    orders[oid] = order
                else:
                    book.cancel(order)
            return None

        def replace_px(oid, _side, _qty, price, target):
            order = orders.pop(target, None)
            if order is None or order.id not in book.order_map:
                return None
            book.cancel(order)
            new, blotter = submit(oid, BUY if order.side is BID else SELL, order.quantity, price)
            if new.quantity:
                orders[oid] = new
            return blotter

        return {
            LIMIT: limit,
            IOC: ioc,
            MARKET: ioc,  # a limit at the collar, remainder cancelled
            CANCEL: cancel,
            REPLACE_QTY: replace_qty,
            REPLACE_PX: replace_px,
        }

    def count(self, blotter) -> None:
        if blotter is not None:
            self.fills += len(blotter.trades)
            self.volume += sum(t.fill_quantity for t in blotter.trades)

    def resting_orders(self) -> int:
        return len(self.book.order_map)


# ---------------------------------------------------------------- runs


def run_throughput(adapter_cls, ops) -> tuple[float, float, object]:
    """Wall-clock and CPU seconds for the whole stream (CPU time is steadier on a busy machine)."""
    adapter = adapter_cls()
    handlers = adapter.handlers()
    count = adapter.count
    cpu_start, start = time.process_time(), time.perf_counter()
    for kind, oid, side, qty, price, target in ops:
        count(handlers[kind](oid, side, qty, price, target))
    return time.perf_counter() - start, time.process_time() - cpu_start, adapter


def run_latency(adapter_cls, ops) -> dict[str, list[int]]:
    adapter = adapter_cls()
    handlers = adapter.handlers()
    clock = time.perf_counter_ns
    samples: dict[str, list[int]] = {kind: [] for kind in KINDS}
    for kind, oid, side, qty, price, target in ops:
        handler = handlers[kind]
        t0 = clock()
        handler(oid, side, qty, price, target)
        samples[kind].append(clock() - t0)
    return samples


def percentile(sorted_values: list[int], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(p / 100 * len(sorted_values)))] / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs per book; the best is reported")
    parser.add_argument("--no-compare", action="store_true", help="skip pyorderbook")
    args = parser.parse_args()

    ops = generate(args.ops, args.seed)
    mix = Counter(op[0] for op in ops)
    print(f"python {platform.python_version()} on {platform.machine()}, {args.ops:,} operations, seed {args.seed}")
    print("mix: " + ", ".join(f"{k} {100 * mix[k] / len(ops):.1f}%" for k in KINDS))

    adapters = [StockMeshAdapter]
    if not args.no_compare:
        try:
            import pyorderbook  # noqa: F401
        except ImportError:
            sys.exit("pyorderbook is not installed: pip install -e '.[dev]' (or pass --no-compare)")
        adapters.append(PyOrderBookAdapter)

    results = {}
    for adapter_cls in adapters:
        gc.collect()
        runs = [run_throughput(adapter_cls, ops) for _ in range(args.repeat)]
        wall = min(r[0] for r in runs)
        cpu = min(r[1] for r in runs)
        gc.collect()
        lat = run_latency(adapter_cls, ops)
        results[adapter_cls.name] = (wall, cpu, runs[0][2], lat)

    print()
    print(f"throughput, best of {args.repeat} runs")
    print(f"{'book':<22}{'ops/s wall':>12}{'ops/s CPU':>12}{'fills':>10}{'volume':>12}{'resting':>10}")
    for name, (wall, cpu, adapter, _) in results.items():
        print(
            f"{name:<22}{len(ops) / wall:>12,.0f}{len(ops) / cpu:>12,.0f}{adapter.fills:>10,}"
            f"{adapter.volume:>12,}{adapter.resting_orders():>10,}"
        )
    print()
    print(f"{'latency µs':<22}{'op':<13}{'n':>8}{'p50':>8}{'p99':>8}{'p99.9':>8}{'mean':>8}")
    for name, (_, _, _, lat) in results.items():
        for kind in KINDS:
            values = sorted(lat[kind])
            print(
                f"{name:<22}{kind:<13}{len(values):>8,}{percentile(values, 50):>8.2f}"
                f"{percentile(values, 99):>8.2f}{percentile(values, 99.9):>8.2f}"
                f"{statistics.fmean(values) / 1000:>8.2f}"
            )

    if len(results) == 2:
        (ours, (w_ours, c_ours, a_ours, _)), (theirs, (w_theirs, c_theirs, a_theirs, _)) = results.items()
        same = (a_ours.fills, a_ours.volume) == (a_theirs.fills, a_theirs.volume)
        print()
        print(
            f"ratio: {ours} does {w_theirs / w_ours:.2f}x (wall) / {c_theirs / c_ours:.2f}x (CPU) "
            f"the throughput of {theirs}"
        )
        print(f"same work (equal fills and traded volume): {'yes' if same else 'NO'}")
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()
