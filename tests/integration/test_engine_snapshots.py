"""Engine snapshots are fenced (round 14 review 2, F4): each is written once under a name of its
own, and the symbol's head (a KV key naming the newest and the one before it) moves only by
compare-and-set. A stale owner paused inside a save, past its lease, used to put its older
snapshot back after the new owner had trimmed the inputs that snapshot needs: the next start
would have built a wrong book from it. Driven here with real JetStream, runner by runner."""
from __future__ import annotations

import uuid

import nats.js.errors
import pytest

from matching_svc.adapters.jetstream import Head, Names, Snapshot, SnapshotMoved, SnapshotStore, ensure_streams
from matching_svc.service_layer.engine import SymbolEngine
from matching_svc.service_layer.runner import EngineConfig, SymbolRunner
from tests.support.engine import BUY, SELL, new_order, publish

pytestmark = pytest.mark.integration


class Lease:
    def check(self) -> None:  # the stale writer believes its lease is still good: it was paused
        pass


async def stored_inputs(js, names: Names, symbol: str) -> int:
    subject = names.orders_subject(symbol)
    return (await js.stream_info(names.orders, subjects_filter=subject)).state.subjects.get(subject, 0)


async def objects(js, names: Names) -> set[str]:
    obs = await js.object_store(names.snapshots)
    return {info.name for info in await obs.list(ignore_deletes=True)}


class Flow:
    """Inputs published to the symbol's stream, applied by hand to whichever engine asks."""

    def __init__(self, js, ns: str, symbol: str) -> None:
        self.js, self.ns, self.symbol = js, ns, symbol
        self.inputs: list[tuple[int, object]] = []

    async def publish(self, n: int) -> None:
        for _ in range(n):
            i = len(self.inputs)
            cmd = new_order(f"o{i}", f"acct{i % 3}", BUY if i % 2 else SELL, 1 + i % 5,
                            limit=f"{100 + i % 7}.00", symbol=self.symbol)
            self.inputs.append((await publish(self.js, self.ns, cmd), cmd))

    def apply(self, engine: SymbolEngine, upto: int) -> SymbolEngine:
        """Apply the inputs after the engine's last one, up to the `upto`-th."""
        for seq, cmd in self.inputs[:upto]:
            if seq > engine.last_seq:
                engine.apply(seq, 0, cmd)
        return engine


async def symbol_under_test(nats_conn, prefix: str, symbol: str, inputs: int):
    """A namespace of its own with `inputs` inputs of `symbol` published: its names, JetStream,
    the flow, and a maker of runners for it."""
    ns = f"{prefix}{uuid.uuid4().hex[:8]}"
    names, js = Names(ns), nats_conn.jetstream()
    await ensure_streams(js, names)
    flow = Flow(js, ns, symbol)
    await flow.publish(inputs)
    cfg = EngineConfig(namespace=ns, symbols=(symbol,), instance_id="x")

    def runner() -> SymbolRunner:
        return SymbolRunner(symbol, nats_conn, cfg, SnapshotStore(js, names), kv=None, ttl=10.0)
    return names, js, flow, runner


async def test_a_stale_owner_cannot_put_an_older_snapshot_back(nats_conn):
    symbol = "AAPL"
    names, js, flow, runner = await symbol_under_test(nats_conn, "sf", symbol, 60)

    stale = runner()
    old = flow.apply(await stale._load(), 10)
    await stale._save(old, Lease())  # the stale owner's last good snapshot, at input 10

    # Its lease expires while it is paused; another engine takes the symbol over, replays and
    # snapshots twice, trimming the inputs before its previous snapshot each time.
    owner = runner()
    new = flow.apply(await owner._load(), 30)
    await owner._save(new, Lease())
    flow.apply(new, 50)
    await owner._save(new, Lease())
    assert await stored_inputs(js, names, symbol) == 60 - 30  # inputs 1-30 trimmed
    head = await SnapshotStore(js, names).head(symbol)
    assert (head.current.seq, head.previous.seq) == (flow.inputs[49][0], flow.inputs[29][0])

    # The stale owner wakes up inside its save, with its book at input 20.
    flow.apply(old, 20)
    with pytest.raises(SnapshotMoved):
        await stale._save(old, Lease())
    assert await SnapshotStore(js, names).head(symbol) == head  # unmoved
    assert await objects(js, names) == {head.current.name, head.previous.name}  # its own deleted

    restarted = await runner()._load()
    assert restarted.last_seq == new.last_seq
    assert restarted.book.state_hash() == new.book.state_hash()


async def test_the_older_layout_is_read_and_replaced(nats_conn):
    """A store written before heads existed (`<SYMBOL>`, `<SYMBOL>-previous`) is read as before;
    the first save starts a head whose previous snapshot is the older layout's newest, and the
    older objects go once nothing names them."""
    symbol = "MSFT"
    names, js, flow, runner = await symbol_under_test(nats_conn, "sl", symbol, 30)
    store = SnapshotStore(js, names)
    await store.save(f"{symbol}-previous", flow.apply(SymbolEngine(symbol), 5).to_bytes())
    legacy = flow.apply(SymbolEngine(symbol), 10)
    await store.save(symbol, legacy.to_bytes())

    first = runner()
    engine = await first._load()
    assert engine.last_seq == legacy.last_seq
    await first._save(flow.apply(engine, 20), Lease())
    head = await store.head(symbol)
    assert head.previous == Snapshot(symbol, legacy.last_seq)

    second = runner()
    assert (await second._load()).last_seq == flow.inputs[19][0]
    assert await objects(js, names) == {head.current.name, symbol}  # `-previous` swept
    await second._save(flow.apply(engine, 30), Lease())
    assert symbol not in await objects(js, names)  # dropped from the head: deleted


async def test_a_head_whose_snapshots_are_gone_is_refused(nats_conn):
    """Never an empty book when a head names snapshots: the inputs before them may be trimmed."""
    ns, symbol = f"sg{uuid.uuid4().hex[:8]}", "KO"
    names, js = Names(ns), nats_conn.jetstream()
    await ensure_streams(js, names)
    store = SnapshotStore(js, names)
    await store.advance(symbol, None, Head(Snapshot(f"{symbol}@7", 7), None))
    cfg = EngineConfig(namespace=ns, symbols=(symbol,), instance_id="x")
    with pytest.raises(RuntimeError, match="no stored snapshot can be read"):
        await SymbolRunner(symbol, nats_conn, cfg, store, kv=None, ttl=10.0)._load()


async def test_a_head_move_whose_reply_was_lost_is_recognised(nats_conn):
    ns, symbol = f"sr{uuid.uuid4().hex[:8]}", "TSLA"
    store = SnapshotStore(nats_conn.jetstream(), Names(ns))
    first = await store.advance(symbol, None, Head(Snapshot(f"{symbol}@3", 3), None))
    new = Head(Snapshot(f"{symbol}@9", 9), first.current)
    moved = await store.advance(symbol, first, new)
    assert await store.advance(symbol, first, new) == moved  # sent again: it had landed
    with pytest.raises(SnapshotMoved):
        await store.advance(symbol, first, Head(Snapshot(f"{symbol}@8", 8), first.current))


async def test_two_writers_saving_at_one_input_do_not_share_a_snapshot(nats_conn):
    """A quiet symbol: the stale owner and the new one both save at input K. With one name per
    input, the stale owner's clean-up after SnapshotMoved deleted the snapshot the new head
    names (round 15 review)."""
    symbol = "JPM"
    names, js, flow, runner = await symbol_under_test(nats_conn, "sk", symbol, 20)

    stale = runner()
    old = flow.apply(await stale._load(), 10)
    await stale._save(old, Lease())
    owner = runner()
    new = flow.apply(await owner._load(), 20)
    await owner._save(new, Lease())
    head = await SnapshotStore(js, names).head(symbol)
    flow.apply(old, 20)  # the stale owner, woken up, at the same input
    with pytest.raises(SnapshotMoved):
        await stale._save(old, Lease())
    assert await SnapshotStore(js, names).head(symbol) == head
    assert head.current.name in await objects(js, names)
    assert (await runner()._load()).last_seq == new.last_seq


async def test_a_previous_version_saving_after_the_head_stops_the_symbol(nats_conn):
    """Beside this version (a rolling update, a rollback), an engine of the previous one saves
    `<SYMBOL>` and trims by its own snapshots: the head's may lack inputs then, and a book built
    from it would be wrong. The symbol is refused, not started wrong (round 15 review)."""
    symbol = "XOM"
    names, js, flow, runner = await symbol_under_test(nats_conn, "sv", symbol, 30)
    first = runner()
    await first._save(flow.apply(await first._load(), 10), Lease())
    await SnapshotStore(js, names).save(symbol, flow.apply(SymbolEngine(symbol), 30).to_bytes())  # the previous version
    with pytest.raises(RuntimeError, match="an engine of the previous version saved a snapshot"):
        await runner()._load()


async def test_a_deleted_snapshot_leaves_no_marker_and_old_markers_are_swept(nats_conn):
    """Round 19 soak: nats-py's delete of an object leaves a meta message marking it deleted, for
    good; a snapshot is written under a name of its own and deleted once two newer ones exist,
    so the markers grew by ~12 a minute and every engine start read them all. The store's
    delete purges the marker too, and a start's sweep purges those earlier releases left."""
    symbol = "KO"
    names, js, flow, runner = await symbol_under_test(nats_conn, "sm", symbol, 30)
    store = SnapshotStore(js, names)
    await store.save(f"{symbol}@1.x", b"one")
    await store.delete(f"{symbol}@1.x")
    obs = await js.object_store(names.snapshots)

    async def listed() -> set[tuple[str, bool]]:
        try:
            return {(i.name, bool(i.deleted)) for i in await obs.list()}
        except nats.js.errors.NotFoundError:  # nats-py's answer for an empty store
            return set()
    assert await listed() == set()  # not even marked deleted: gone

    # A marker an earlier release left (nats-py's own delete), then a start of the symbol.
    await store.save(f"{symbol}@2.x", b"two")
    await obs.delete(f"{symbol}@2.x")
    assert await listed() == {(f"{symbol}@2.x", True)}
    first = runner()
    engine = await first._load()
    await first._save(flow.apply(engine, 10), Lease())
    await first._save(flow.apply(engine, 20), Lease())
    head = await store.head(symbol)
    assert (await runner()._load()).last_seq == flow.inputs[19][0]  # a start: it sweeps
    assert await listed() == {(s.name, False) for s in head.named()}
