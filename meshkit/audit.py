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
                 every: int = 10_000) -> tuple[int, Broken | None]:
    """Walk every chain in order, in one snapshot; returns (events checked, the first broken
    link or None). `progress`, if given, hears every `every` events how far the walk is."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        if progress is None:
            return await _verify(conn, lambda _: None, every)
        total = await conn.fetchval("SELECT count(*) FROM audit.events")
        return await _verify(conn, lambda checked: progress(checked, total), every)


async def _verify(conn: asyncpg.Connection, progress: Callable[[int], None], every: int) -> tuple[int, Broken | None]:
    checked = 0
    heads = {r["stream"]: (r["seq"], bytes(r["hash"])) for r in await conn.fetch("SELECT * FROM audit.heads")}
    seen: set[str] = set()
    stream, expected_seq, prev = None, 0, b""
    async for r in conn.cursor(
            "SELECT stream, seq, event_type, payload, prev_hash, hash FROM audit.events ORDER BY stream, seq",
            prefetch=2000):
        if r["stream"] != stream:
            if stream is not None and (bad := _head_mismatch(heads, stream, expected_seq, prev)):
                return checked, bad
            stream, expected_seq, prev = r["stream"], 0, b""
            seen.add(stream)
        expected_seq += 1
        if r["seq"] != expected_seq:
            return checked, Broken(stream, expected_seq, f"missing; the chain jumps to event {r['seq']}")
        if bytes(r["prev_hash"]) != prev:
            return checked, Broken(stream, r["seq"], "prev_hash does not match the previous event's hash")
        want = link_hash(prev, stream, r["seq"], r["event_type"], r["payload"])
        if bytes(r["hash"]) != want:
            return checked, Broken(stream, r["seq"], "content does not match its hash (altered)")
        prev = want
        checked += 1
        if checked % every == 0:
            progress(checked)
    if stream is not None and (bad := _head_mismatch(heads, stream, expected_seq, prev)):
        return checked, bad
    for s in sorted(set(heads) - seen):
        if heads[s][0] > 0:
            return checked, Broken(s, 1, "the chain's events are gone")
    return checked, None


def _head_mismatch(heads: dict[str, tuple[int, bytes]], stream: str, seq: int, last: bytes) -> Broken | None:
    head = heads.get(stream)
    if head is None:
        return Broken(stream, seq, "no chain head recorded for this stream")
    if head != (seq, last):
        return Broken(stream, seq + 1 if head[0] > seq else seq,
                      f"chain head says {head[0]} events, found {seq} (events removed or added)")
    return None

