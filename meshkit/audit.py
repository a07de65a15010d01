"""The audit trail: every order state change and every ledger movement is an append-only,
hash-chained event (schema in meshkit/migrations). Append inside the transaction that makes
the change, so the event exists exactly when the change does."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

import asyncpg


def canonical(payload: dict[str, Any]) -> str:
    """Canonical JSON: sorted keys, no spaces; Decimals and other values as strings."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


async def append(conn: asyncpg.Connection, stream: str, event_type: str, payload: dict[str, Any]) -> int:
    """Append one event to `stream` (e.g. 'ledger:<account>'); returns its sequence."""
    return await conn.fetchval("SELECT audit.append($1, $2, $3)", stream, event_type, canonical(payload))


async def append_many(conn: asyncpg.Connection, events: list[tuple[str, str, dict[str, Any]]]) -> None:
    """append of each (stream, event_type, payload), in the order given, in one statement."""
    if events:
        await conn.execute(
            "SELECT audit.append(v.stream, v.event_type, v.payload) "
            "FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS v(stream, event_type, payload, n) "
            "ORDER BY v.n", [e[0] for e in events], [e[1] for e in events], [canonical(e[2]) for e in events])


def link_hash(prev: bytes, stream: str, seq: int, event_type: str, payload: str) -> bytes:
    return hashlib.sha256(prev + f"{stream}|{seq}|{event_type}|{payload}".encode()).digest()


@dataclass(frozen=True)
class Broken:
    stream: str
    seq: int
    problem: str

    def __str__(self) -> str:
        return f"stream {self.stream!r}, event {self.seq}: {self.problem}"


Progress = Callable[[int, int], None]  # (events checked so far, events in the snapshot)


async def verify(conn: asyncpg.Connection, progress: Progress | None = None,
                 every: int = 10_000) -> tuple[int, list[Broken]]:
    """Walk every chain in order, in one snapshot; returns (events found intact, every broken
    link: empty when all are intact). Events are intact up to their chain's first broken link;
    past it the walk goes on along the links as stored, so that each further alteration,
    removal or insertion of the chain is named too, not only the first (an investigation needs
    the whole extent of the tampering), and a broken chain does not stop the walk of the others
    (round 16: a trail broken once hid any later tampering of every other chain). `progress`,
    if given, hears every `every` events how far the walk is."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        if progress is None:
            return await _verify(conn, lambda _: None, every)
        total = await conn.fetchval("SELECT count(*) FROM audit.events")
        return await _verify(conn, lambda checked: progress(checked, total), every)


async def _verify(conn: asyncpg.Connection, progress: Callable[[int], None],
                  every: int) -> tuple[int, list[Broken]]:
    checked, walked = 0, 0
    heads = {r["stream"]: (r["seq"], bytes(r["hash"])) for r in await conn.fetch("SELECT * FROM audit.heads")}
    seen: set[str] = set()
    broken: list[Broken] = []
    # prev: the stored hash of the chain's previous event. Up to the first broken link it is
    # also the one computed from the chain's start; past it, the walk checks each link against
    # its neighbour as stored (a break found once is not found again at every later event).
    stream, expected_seq, prev, intact = None, 0, b"", True
    async for r in conn.cursor(
            "SELECT stream, seq, event_type, payload, prev_hash, hash FROM audit.events ORDER BY stream, seq",
            prefetch=2000):
        walked += 1
        if walked % every == 0:
            progress(walked)
        if r["stream"] != stream:
            if stream is not None and (bad := _head_mismatch(heads, stream, expected_seq, prev)):
                broken.append(bad)
            stream, expected_seq, prev, intact = r["stream"], 0, b"", True
            seen.add(stream)
        expected_seq += 1
        bad = None
        if r["seq"] != expected_seq:
            broken.append(Broken(stream, expected_seq, f"missing; the chain jumps to event {r['seq']}"))
            intact, expected_seq = False, r["seq"]
            if bytes(r["hash"]) != link_hash(bytes(r["prev_hash"]), stream, r["seq"], r["event_type"], r["payload"]):
                bad = Broken(stream, r["seq"], "content does not match its hash (altered)")
        elif bytes(r["prev_hash"]) != prev:
            bad = Broken(stream, r["seq"], "prev_hash does not match the previous event's hash")
        elif bytes(r["hash"]) != link_hash(prev, stream, r["seq"], r["event_type"], r["payload"]):
            bad = Broken(stream, r["seq"], "content does not match its hash (altered)")
        prev = bytes(r["hash"])
        if bad is not None:
            broken.append(bad)
            intact = False
        elif intact:
            checked += 1
    if stream is not None and (bad := _head_mismatch(heads, stream, expected_seq, prev)):
        broken.append(bad)
    broken += [Broken(s, 1, "the chain's events are gone") for s in sorted(set(heads) - seen) if heads[s][0] > 0]
    return checked, broken


def _head_mismatch(heads: dict[str, tuple[int, bytes]], stream: str, seq: int, last: bytes) -> Broken | None:
    head = heads.get(stream)
    if head is None:
        return Broken(stream, seq, "no chain head recorded for this stream")
    if head != (seq, last):
        return Broken(stream, seq + 1 if head[0] > seq else seq,
                      f"chain head says {head[0]} events, found {seq} (events removed or added)")
    return None

