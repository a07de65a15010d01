"""The engine process: one runner per symbol this instance may own.

A runner loops: acquire the symbol's lease → restore the snapshot → (re)position the durable
pull consumer after the snapshot's last input → process batches (fetch many, apply in stream
order, publish every result and await JetStream's acks, send the acceptances' core NATS
notices, then ack the inputs) → snapshot every
``snapshot_every`` inputs, or ``snapshot_seconds`` after the last one once inputs were applied,
and at clean shutdown. An error starts the runner again (after a lost lease: once it has won
the lease again): from the book it kept in memory if the error left it whole and nobody wrote
the symbol meanwhile (`_resume`), else from the durable state (snapshot + replay). See
docs/matching.md.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

from nats.aio.client import Client
from prometheus_client import Counter, Gauge

from matching_svc.adapters.jetstream import (
    Head,
    Lease,
    LeaseLost,
    Names,
    Snapshot,
    SnapshotMoved,
    SnapshotStore,
    ensure_streams,
    input_consumer,
    input_consumer_token,
    input_position,
    lease_bucket,
    legacy_snapshots,
    snapshot_name,
)
from matching_svc.service_layer.engine import DEFAULT_DEDUPE_CAPACITY, SymbolEngine, journaled
from meshkit import bus
from meshkit.bus import DeliveryGap
from stockmesh.matching.v1 import matching_pb2 as pb

log = logging.getLogger("matching_svc.engine")

# What an operator watches of each symbol's engine (round 15: matching_svc had no metrics, so a
# stalled engine showed only in `stockmesh consumers --behind`).
OWNED = Gauge("stockmesh_engine_owned", "1 while this instance owns the symbol and applies its inputs", ["symbol"])
INPUT_SEQUENCE = Gauge("stockmesh_engine_input_sequence",
                       "The last input of the symbol this instance applied and published the results of", ["symbol"])
RESTARTS = Counter("stockmesh_engine_restarts_total",
                   "The symbol's runner started again, by why: lease_lost, delivery_gap, snapshot_moved, "
                   "nats_unavailable, error",
                   ["symbol", "reason"])

# Outputs whose publishes are awaited together (bus.pipelined).
PIPELINE = 1024


def orders_of_execution(ex: pb.Execution) -> frozenset[str]:
    """The orders an execution is about (its order, a fill's counter order, a replace's new
    order): two of them go in one pipelined chunk only if they share none."""
    return frozenset(i for i in (ex.order_id, ex.counter_order_id, ex.new_order_id) if i)


@dataclass(frozen=True)
class EngineConfig:
    namespace: str
    symbols: tuple[str, ...]
    instance_id: str
    lease_ttl: float = 10.0
    snapshot_every: int = 10_000
    # Also snapshot once this many seconds have passed with inputs applied since the last one:
    # a restart after a kill -9 then replays at most this much, and the outputs it publishes
    # again fall inside the EXECUTIONS and MD streams' duplicate windows (300 s), where
    # JetStream drops them before any consumer sees them. With only the count, a quiet symbol
    # was replayed from its first input after each crash (a whole day: minutes, every output
    # delivered again to order_svc and the ledger to drop by id).
    snapshot_seconds: float = 60.0
    batch: int = 500
    dedupe_capacity: int = DEFAULT_DEDUPE_CAPACITY
    # After each snapshot, purge the symbol's inputs from <ns>_ORDERS up to the previous
    # snapshot: the stream keeps about one snapshot interval of history, not everything ever.
    trim_inputs: bool = True


@dataclass
class Kept:
    """A book kept in memory when the runner stopped on an error that left it whole (every
    input it applied is applied entirely; `outputs` and `notices` are those of the batch whose
    publishing failed, if any), to go on from if nobody wrote the symbol meanwhile."""
    engine: SymbolEngine
    consumer: str  # the token of the input consumer it was reading
    outputs: list = field(default_factory=list)
    notices: list = field(default_factory=list)
    # Inputs applied since the last snapshot, and when the first of them was: the next snapshot
    # comes as if the runner had not stopped (round 15 review: lease losses less than a minute
    # apart put it off for as long as they went on).
    since_snapshot: int = 0
    snapshot_at: float = 0.0


class SymbolRunner:
    def __init__(self, symbol: str, nc: Client, cfg: EngineConfig, store: SnapshotStore,
                 kv, ttl: float) -> None:
        self.symbol, self.nc, self.js, self.cfg, self.store = symbol, nc, nc.jetstream(), cfg, store
        self.names = Names(cfg.namespace)
        self.kv, self.ttl = kv, ttl
        self.engine: SymbolEngine | None = None  # set only while this instance owns the symbol
        self.lease: Lease | None = None
        # The last input whose results JetStream has stored (<= engine.last_seq mid-batch).
        self.published_seq = 0
        self._head: Head | None = None  # the symbol's snapshot head as this runner last saw or moved it
        self._base: Snapshot | None = None  # the snapshot this runner started from or saved last
        self._kept: Kept | None = None
        # The batch being published: its outputs, its notices and how many inputs it applied
        # (applied: they are in the engine).
        self._unsent: tuple[list, list, int] | None = None
        self._headers = {"Engine-Instance": cfg.instance_id}

    @property
    def owned(self) -> bool:
        return self.engine is not None and self.lease is not None and self.lease.valid()

    async def run(self) -> None:
        while True:
            lease = Lease(self.kv, self.symbol, self.cfg.instance_id, self.ttl)
            while not await lease.try_acquire():
                await asyncio.sleep(self.ttl / 4)
            self.lease = lease
            log.info("lease acquired", extra={"symbol": self.symbol, "instance": self.cfg.instance_id})
            try:
                while lease.valid():
                    try:
                        await self._own(lease)
                    except LeaseLost:
                        RESTARTS.labels(self.symbol, "lease_lost").inc()
                        log.warning("lease lost; stopped writing", extra={"symbol": self.symbol})
                        break
                    except (asyncio.CancelledError, KeyboardInterrupt):
                        raise
                    except DeliveryGap as gap:  # expected after a NATS server went: not a bug
                        RESTARTS.labels(self.symbol, "delivery_gap").inc()
                        log.warning("an input never reached the engine; starting again (from the book kept, "
                                    "or the snapshot)",
                                    extra={"symbol": self.symbol, "error": str(gap)})
                    except SnapshotMoved as moved:  # another engine wrote while this one was paused
                        RESTARTS.labels(self.symbol, "snapshot_moved").inc()
                        log.warning("the snapshot head moved under this engine; starting again from it",
                                    extra={"symbol": self.symbol, "error": str(moved)})
                    except Exception as exc:  # noqa: BLE001 - start again from the durable state
                        if bus.unreachable(exc) or isinstance(exc, TimeoutError):
                            # NATS not answering (a stall, a leader election): expected, and said
                            # once per attempt without a traceback (round 15 review: one every
                            # 0.5 s for as long as it lasted, counted as an engine error).
                            RESTARTS.labels(self.symbol, "nats_unavailable").inc()
                            log.warning("NATS not answering; starting again shortly",
                                        extra={"symbol": self.symbol, "error": repr(exc)})
                            await asyncio.sleep(0.5)
                            continue
                        RESTARTS.labels(self.symbol, "error").inc()
                        log.exception("engine error; restarting (from the book kept, or the snapshot)",
                                      extra={"symbol": self.symbol})
                        await asyncio.sleep(0.5)
            finally:
                self.engine = None
                await asyncio.shield(lease.release())
                self.lease = None

    async def _load(self) -> SymbolEngine:
        """The newest snapshot the symbol's head names; if it cannot be read, the one before it
        (the inputs since that one are still in the stream: `_trim` keeps them); with none
        stored, an empty engine. Snapshots named but none readable is an error, never an empty
        engine: the inputs before them may have been trimmed, so a replay from the start would
        build a wrong book. A store of the older layout (no head) is read the same way."""
        self._head = head = await self.store.head(self.symbol)
        self._base = None
        if head is not None:
            await self._no_older_writer(head)
        stored = head is not None
        for snap in head.named() if head is not None else legacy_snapshots(self.symbol):
            blob = await self.store.load(snap.name)
            if blob is None:
                continue
            stored = True
            try:
                engine = SymbolEngine.from_bytes(blob)
            except Exception:  # noqa: BLE001 - a damaged snapshot: fall back to the previous one
                log.error("snapshot cannot be read; trying the previous one",
                          extra={"symbol": self.symbol, "key": snap.name})
                continue
            engine.dedupe_capacity = self.cfg.dedupe_capacity
            self._base = Snapshot(snap.name, engine.last_seq)
            if head is not None:
                try:
                    await self.store.sweep(self.symbol, head)
                except Exception:  # noqa: BLE001 - storage only; the next start sweeps again
                    log.exception("deleting old snapshots failed", extra={"symbol": self.symbol})
            return engine
        if stored:
            raise RuntimeError(f"{self.symbol}: no stored snapshot can be read; not starting from an empty book")
        return SymbolEngine(self.symbol, dedupe_capacity=self.cfg.dedupe_capacity)

    async def _no_older_writer(self, head: Head) -> None:
        """Refuse the symbol when an engine of the previous version (the older layout: one
        object under the symbol's name) saved after the head was made: it trimmed by its own
        snapshots, so the head's may lack inputs, and no book built here would be right. This
        version must not run beside the previous one (docs/matching.md, upgrading)."""
        legacy = legacy_snapshots(self.symbol)[0]
        if legacy.name in {s.name for s in head.named()}:
            return
        blob = await self.store.load(legacy.name)
        if blob is None:
            return
        try:
            seq = SymbolEngine.from_bytes(blob).last_seq
        except Exception:  # noqa: BLE001 - unreadable: it says nothing
            return
        if seq > head.current.seq:
            raise RuntimeError(f"{self.symbol}: an engine of the previous version saved a snapshot at input {seq}, "
                               f"after this version's (input {head.current.seq}); not starting the symbol (see "
                               "docs/matching.md, upgrading)")

    async def _save(self, engine: SymbolEngine, lease: Lease) -> None:
        """Store a snapshot under a name of its own, then move the head to it, keeping the one
        this runner started from or saved last as the previous one; then trim the inputs before
        *that* one. So a damaged newest snapshot still leaves a way back. The head moves only
        if nobody else moved it since this runner read or moved it (SnapshotMoved otherwise)."""
        lease.check()
        base = self._base
        if base is not None and engine.last_seq == base.seq:
            return
        snap = Snapshot(snapshot_name(self.symbol, engine.last_seq), engine.last_seq)
        await self.store.save(snap.name, engine.to_bytes())
        try:
            head = await self.store.advance(self.symbol, self._head, Head(snap, base))
        except SnapshotMoved:
            await self._forget(snap.name)
            raise
        dropped = {s.name for s in (self._head.named() if self._head is not None else ())} - {
            s.name for s in head.named()}
        self._head, self._base = head, snap
        for name in sorted(dropped):
            await self._forget(name)
        if self.cfg.trim_inputs and base is not None:
            await self._trim(base.seq)

    async def _forget(self, name: str) -> None:
        try:
            await self.store.delete(name)
        except Exception:  # noqa: BLE001 - storage only: the next start sweeps what is left
            log.exception("deleting a snapshot failed", extra={"symbol": self.symbol, "key": name})

    async def _trim(self, upto: int) -> None:
        """Purge the symbol's inputs up to and including `upto` (the previous snapshot's last
        input): no engine will ever read them again, since every start loads a snapshot that
        is past them. The inputs since then stay, to look into. Best effort: a failure is
        logged and the next snapshot trims further."""
        if upto <= 0:
            return
        try:
            await self.js.purge_stream(self.names.orders, seq=upto + 1, subject=self.names.orders_subject(self.symbol))
        except Exception:  # noqa: BLE001 - retention only; correctness does not depend on it
            log.exception("trimming the inputs failed", extra={"symbol": self.symbol, "upto": upto})

    async def _resume(self) -> Kept | None:
        """The book kept when this runner last stopped, if nobody wrote the symbol since: its
        snapshot head is the one this runner last saw, and its input consumer the one this
        runner made (any engine that takes the symbol over makes it again, before it reads or
        publishes anything). Then a lease lost to a NATS stall, or a publish that failed,
        costs no reload and no replay (acceptance round 14: a 10 s stall cost ~11 s more,
        replaying some 4,700 inputs)."""
        kept = self._kept
        if kept is None:
            return None
        # NATS not answering (still stalled): the book stays kept and the runner tries again.
        head = await self.store.head(self.symbol)
        token = await input_consumer_token(self.js, self.names, self.symbol)
        self._kept = None
        revision = lambda h: 0 if h is None else h.revision  # noqa: E731
        if revision(head) != revision(self._head) or token != kept.consumer:
            log.info("another engine wrote the symbol meanwhile; starting from the snapshot",
                     extra={"symbol": self.symbol})
            return None
        return kept

    async def _own(self, lease: Lease) -> None:
        kept = await self._resume()
        engine = kept.engine if kept is not None else await self._load()
        token = f"{self.cfg.instance_id}:{uuid.uuid4().hex}"
        try:
            sub = await input_consumer(self.nc, self.js, self.names, self.symbol, engine.last_seq + 1,
                                       batch=self.cfg.batch, token=token)
        except BaseException:
            # Kept still; the next start checks it again (and drops it if this removed the
            # consumer it knew without making the new one: who else did, it cannot tell).
            self._kept = kept
            raise
        log.info("engine started", extra={"symbol": self.symbol, "from_sequence": engine.last_seq + 1,
                                          "kept_book": kept is not None})
        self.engine = engine
        clean = True  # every applied input's results are published and acked
        since_snapshot = kept.since_snapshot if kept is not None else 0
        snapshot_at = kept.snapshot_at if kept is not None else time.monotonic()
        try:
            if kept is not None and (kept.outputs or kept.notices):
                # The batch whose publishing failed: published again, as a replay would, in
                # the same chunks (what was stored of it is dropped by id).
                clean = False
                self._unsent = (kept.outputs, kept.notices, 0)  # its inputs are counted already
                await self._publish(kept.outputs, kept.notices)
                self._unsent = None
                clean = True
            self.published_seq = engine.last_seq
            OWNED.labels(self.symbol).set(1)
            INPUT_SEQUENCE.labels(self.symbol).set(engine.last_seq)
            while True:
                lease.check()
                msgs = await sub.next_batch(timeout=min(1.0, self.ttl / 4))
                if msgs:
                    clean = False
                    since_snapshot += await self._process(engine, msgs, lease)
                    clean = True
                if since_snapshot >= self.cfg.snapshot_every or (
                        since_snapshot and time.monotonic() - snapshot_at >= self.cfg.snapshot_seconds):
                    await self._save(engine, lease)
                    since_snapshot = 0
                    snapshot_at = time.monotonic()
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except BaseException:
            # Whole (no batch in flight, or every input of it applied and only its publishing
            # cut short): kept, for _resume to check at the next start.
            if clean or self._unsent is not None:
                outputs, notices, inputs = self._unsent or ([], [], 0)
                self._kept = Kept(engine, token, outputs, notices, since_snapshot + inputs, snapshot_at)
            raise
        finally:
            OWNED.labels(self.symbol).set(0)
            self._unsent = None
            self.engine = None
            if clean and since_snapshot and lease.valid():
                try:
                    await asyncio.shield(self._save(engine, lease))
                    log.info("snapshot at shutdown", extra={"symbol": self.symbol, "sequence": engine.last_seq})
                except Exception:  # noqa: BLE001 - replay from the older snapshot instead
                    log.exception("snapshot at shutdown failed", extra={"symbol": self.symbol})
            try:
                await sub.stop()
            except Exception:  # noqa: BLE001
                pass

    async def _process(self, engine: SymbolEngine, msgs: list, lease: Lease) -> int:
        names, symbol = self.names, self.symbol
        ex_subject, md_subject = names.executions_subject(symbol), names.md_subject(symbol)
        outputs: list[tuple[str, bytes, str, frozenset[str]]] = []  # subject, payload, id, orders named
        notices: list[bytes] = []
        applied = 0
        last_md: int | None = None  # where the batch's last market-data event is in `outputs`
        for msg in msgs:
            seq, time_ns = input_position(msg)
            if seq <= engine.last_seq:
                continue  # a redelivery of something already applied
            try:
                cmd = pb.EngineCommand.FromString(msg.data)
            except Exception:  # noqa: BLE001 - a poison message must not stop the symbol
                log.error("undecodable engine command skipped", extra={"symbol": symbol, "sequence": seq})
                cmd = None
            out = engine.apply(seq, time_ns, cmd)
            applied += 1
            for ex in out.executions:
                if journaled(ex):
                    outputs.append((ex_subject, ex.SerializeToString(), ex.execution_id, orders_of_execution(ex)))
                else:
                    notices.append(ex.SerializeToString())
            for md in out.market_data:
                last_md = len(outputs)
                outputs.append((md_subject, md.SerializeToString(), f"{symbol}:md:{md.sequence}", frozenset()))
        if last_md is not None:
            # Market data needs no order among itself (its followers keep the newest sequence),
            # but a reader that starts from the symbol's last stored event (quote_svc, order_svc's
            # prices) must find the newest: the batch's last one goes in a chunk of its own,
            # after everything before it is stored, a republish included (round 15 review).
            subject, payload, msg_id, _ = outputs[last_md]
            outputs[last_md] = (subject, payload, msg_id, frozenset({bus.ALONE}))
        self._unsent = (outputs, notices, applied)
        if outputs or notices:
            lease.check()
        await self._publish(outputs, notices)
        self.published_seq = engine.last_seq
        INPUT_SEQUENCE.labels(symbol).set(engine.last_seq)
        for msg in msgs:
            await msg.ack()
        self._unsent = None
        return applied

    async def _publish(self, outputs: list, notices: list) -> None:
        """A batch's outputs, then its acceptances' notices.

        Chunks never hold two executions of one order: a refused publish followed by stored
        ones, replayed, would store an order's last fill before an earlier one, which stops
        the consumers on that order (round 14 review 2, F3)."""
        headers = self._headers
        for chunk in bus.pipelined(outputs, PIPELINE, lambda output: output[3]):
            futures = [await self.js.publish_async(subject, payload, headers={**headers, "Nats-Msg-Id": msg_id})
                       for subject, payload, msg_id, _ in chunk]
            await asyncio.wait_for(asyncio.gather(*futures), timeout=max(5.0, self.ttl))
        if notices:  # after the journal's acks: whoever hears one can read what came before it
            subject = self.names.accepted_subject(self.symbol)
            for payload in notices:
                await self.nc.publish(subject, payload)


class Engine:
    """Every runner of this instance, and what the gRPC side asks of them."""

    def __init__(self, nc: Client, cfg: EngineConfig) -> None:
        self.nc, self.js, self.cfg = nc, nc.jetstream(), cfg
        self.names = Names(cfg.namespace)
        self.runners: dict[str, SymbolRunner] = {}
        self.ready = asyncio.Event()

    async def run(self) -> None:
        await ensure_streams(self.js, self.names)
        kv, ttl = await lease_bucket(self.js, self.names, self.cfg.lease_ttl)
        store = SnapshotStore(self.js, self.names)
        self.runners = {s: SymbolRunner(s, self.nc, self.cfg, store, kv, ttl) for s in self.cfg.symbols}
        self.ready.set()
        log.info("engine instance up", extra={"instance": self.cfg.instance_id, "symbols": list(self.cfg.symbols),
                                              "lease_ttl": ttl})
        tasks = [asyncio.create_task(r.run(), name=f"engine-{s}") for s, r in self.runners.items()]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def published_seq(self, symbol: str) -> int:
        r = self.runners.get(symbol)
        return r.published_seq if r is not None else 0

    def owned_engine(self, symbol: str) -> SymbolEngine | None:
        r = self.runners.get(symbol)
        return r.engine if r is not None and r.owned else None
