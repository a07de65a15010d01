"""SymbolEngine (service layer, no I/O): deterministic ids, dedupe bounded and snapshotted,
snapshot + replay equals an uninterrupted run."""
from __future__ import annotations

import pytest

from matching_svc.service_layer.engine import SymbolEngine
from stockmesh.common.v1 import common_pb2 as c
from stockmesh.matching.v1 import matching_pb2 as pb
from tests.support.engine import BUY, SELL, Flow, cancel, new_order

E = pb.ExecutionType


def test_ids_and_both_sides_of_a_fill():
    eng = SymbolEngine("AAPL")
    eng.apply(7, 1_000, new_order("s", "alice", SELL, 10, limit="10.5"))
    out = eng.apply(9, 6_000_000_000, new_order("b", "bob", BUY, 4, limit="11", at_ns=5_000_000_123))
    assert [e.execution_id for e in out.executions] == ["AAPL:9:0", "AAPL:9:1"]
    fill = out.executions[1]
    assert (fill.type, fill.price, fill.counter_order_id, fill.counter_leaves_quantity) == (
        E.EXECUTION_TYPE_FILL, "10.50", "s", 6)
    assert (fill.time.seconds, fill.time.nanos) == (5, 123)  # accepted_at, not a clock
    [md] = out.market_data
    assert (md.sequence, md.trade_price, md.trade_quantity, md.ask_price, md.ask_size, md.last_price, md.volume) == (
        2, "10.50", 4, "10.50", 6, "10.50", 4)
    with pytest.raises(ValueError):
        eng.apply(9, 0, cancel("s", "alice"))  # inputs only move forward


def test_event_times_never_go_back_as_the_sequence_rises():
    """accepted_at comes from order_svc's clocks, in an order that is not the stream's: an
    input stamped earlier than the one before it gets the earlier input's time, kept across a
    snapshot."""
    eng = SymbolEngine("AAPL")
    first = eng.apply(1, 5_100_000_000, new_order("s", "alice", SELL, 10, limit="10", at_ns=5_000_000_900))
    late = eng.apply(2, 5_200_000_000, new_order("b", "bob", BUY, 4, limit="11", at_ns=5_000_000_100))  # stamped before
    times = [(m.time.seconds, m.time.nanos) for out in (first, late) for m in [*out.executions, *out.market_data]]
    assert times and times == sorted(times) and set(times[-3:]) == {(5, 900)}
    again = SymbolEngine.from_bytes(eng.to_bytes())
    [ex, *_] = again.apply(3, 1_000, cancel("s", "alice")).executions  # the stream's own time, earlier still
    assert (ex.time.seconds, ex.time.nanos) == (5, 900)
    later = again.apply(4, 6_500_000_000, new_order("c", "carol", BUY, 1, limit="9", at_ns=6_000_000_000))
    assert {(m.time.seconds, m.time.nanos) for m in [*later.executions, *later.market_data]} == {(6, 0)}


def test_an_order_stamped_by_a_clock_ahead_does_not_carry_the_symbol_into_the_future():
    """accepted_at later than the stream stored the input (a replica whose clock runs an hour
    ahead) is capped at the stream's time: the symbol's later events keep their own times
    (round 17: every later fill and quote of the symbol came out an hour ahead)."""
    eng = SymbolEngine("AAPL")
    eng.apply(1, 10_000_000_000, new_order("s", "alice", SELL, 10, limit="10", at_ns=9_000_000_000))
    ahead = eng.apply(2, 11_000_000_000, new_order("b", "bob", BUY, 4, limit="11", at_ns=3_611_000_000_000))
    assert {(m.time.seconds, m.time.nanos) for m in [*ahead.executions, *ahead.market_data]} == {(11, 0)}
    after = eng.apply(3, 12_000_000_000, new_order("c", "carol", BUY, 1, limit="10", at_ns=11_900_000_000))
    assert {(m.time.seconds, m.time.nanos) for m in [*after.executions, *after.market_data]} == {(11, 900_000_000)}


def test_cancel_of_another_accounts_order_is_refused():
    eng = SymbolEngine("AAPL")
    eng.apply(1, 0, new_order("s", "alice", SELL, 10, limit="10"))
    [ex] = eng.apply(2, 0, cancel("s", "mallory")).executions
    assert (ex.type, ex.order_id, ex.reason) == (E.EXECUTION_TYPE_CANCEL_REJECTED, "s", "UNKNOWN_ORDER")
    assert eng.book.get_order("s") is not None


def test_invalid_prices_and_enums_are_rejected():
    """Also a price whose exponent overflows and a DAY order's accepted_at no calendar has
    (round 18: they raised out of apply, and the runner replayed the same input for good)."""
    eng = SymbolEngine("AAPL")
    for i, cmd in enumerate([new_order("x1", "a", BUY, 1, limit="abc"), new_order("x2", "a", BUY, 1, limit="1.00001"),
                             new_order("x3", "a", c.SIDE_UNSPECIFIED, 1, limit="1"),
                             new_order("x4", "a", BUY, 1, limit="1e999999999"),
                             new_order("x5", "a", BUY, 1, limit="10", tif=c.TIME_IN_FORCE_DAY, at_ns=10**22)], start=1):
        [ex] = eng.apply(i, 10**18, cmd).executions
        assert (ex.type, ex.reason) == (E.EXECUTION_TYPE_REJECTED, "INVALID")
    [ex] = eng.apply(9, 10**18, new_order("ok", "a", BUY, 1, limit="10", tif=c.TIME_IN_FORCE_DAY)).executions
    assert ex.type == E.EXECUTION_TYPE_ACCEPTED


def test_dedupe_is_bounded_fifo_and_survives_a_snapshot():
    eng = SymbolEngine("AAPL", dedupe_capacity=3)
    for i in range(1, 5):
        eng.apply(i, 0, new_order(f"o{i}", "a", BUY, 1, limit="1"))
    assert eng.snapshot()["seen"] == ["o2", "o3", "o4"]
    again = SymbolEngine.from_bytes(eng.to_bytes())
    assert again.apply(5, 0, new_order("o3", "a", BUY, 1, limit="1")).duplicate
    # o1 fell out of the window, and is live: a repeat too, with nothing said about it. The
    # book's DUPLICATE_ORDER_ID named the live order, which order_svc and the ledger then ended
    # (its hold released) while it worked on in the book (round 14 review).
    out = again.apply(6, 0, new_order("o1", "a", BUY, 1, limit="1"))
    assert out.duplicate and out.executions == [] and again.book.get_order("o1") is not None
    # A capacity lowered by configuration (ENGINE_DEDUPE_IDS) applies from the next new id on
    # (round 18 review: the restored window dropped one id per id added, never shrinking).
    again.dedupe_capacity = 1
    again.apply(7, 0, new_order("o7", "a", BUY, 1, limit="1"))
    assert again.snapshot()["seen"] == ["o7"]


def test_snapshot_then_replay_equals_uninterrupted_run():
    flow = Flow(seed=5)
    inputs = [(seq, seq * 1000, flow.next()[0]) for seq in range(1, 3001)]

    def outputs(eng: SymbolEngine, part: list) -> list:
        return [m for s, t, cmd in part for out in [eng.apply(s, t, cmd)] for m in [*out.executions, *out.market_data]]

    whole = SymbolEngine("AAPL")
    expected = outputs(whole, inputs)
    first = SymbolEngine("AAPL")
    got = outputs(first, inputs[:1234])
    resumed = SymbolEngine.from_bytes(first.to_bytes())
    got += outputs(resumed, inputs[1234:])
    assert got == expected  # market data too: the same events with the same sequences
    assert resumed.state_hash() == whole.state_hash()


def test_market_data_only_when_the_shown_depth_halt_or_trades_change():
    eng = SymbolEngine("AAPL")
    for i in range(10):  # ten bid levels: each one changes what the feed shows
        assert len(eng.apply(i + 1, 0, new_order(f"b{i}", "a", BUY, 1, limit=f"{100 - i}")).market_data) == 1
    below = eng.apply(11, 0, new_order("deep", "a", BUY, 5, limit="50"))  # the 11th level: not shown
    assert [ex.type for ex in below.executions] == [E.EXECUTION_TYPE_ACCEPTED] and below.market_data == []
    assert eng.apply(12, 0, cancel("deep", "a")).market_data == []
    assert eng.apply(13, 0, new_order("x", "a", BUY, 1, limit="1")).market_data == []
    # A shown level, a halt and a trade each publish; a resume of a symbol not halted does not.
    [md] = eng.apply(14, 0, new_order("top", "a", BUY, 2, limit="100")).market_data
    assert (md.sequence, md.bid_price, md.bid_size) == (11, "100.00", 3)
    assert len(eng.apply(15, 0, halt(cid="h")).market_data) == 1
    assert len(eng.apply(16, 0, pb.EngineCommand(command_id="r", symbol="AAPL", resume=pb.Resume())).market_data) == 1
    assert eng.apply(17, 0, pb.EngineCommand(command_id="r2", symbol="AAPL", resume=pb.Resume())).market_data == []
    [md] = eng.apply(18, 0, new_order("s", "b", SELL, 1, limit="50")).market_data
    assert (md.trade_price, md.trade_quantity, md.sequence) == ("100.00", 1, 14)
    # The end of the session is published even when it leaves the shown book as it was (GTC only).
    [md] = eng.apply(19, 0, pb.EngineCommand(command_id="close", symbol="AAPL", session_close=pb.SessionClose())).market_data
    assert (md.sequence, md.bid_price, md.volume) == (15, "100.00", 1)


def replace(oid: str, new_oid: str, account: str, qty: int, *, limit: str = "", stop: str = "",
            collar: str = "") -> pb.EngineCommand:
    return pb.EngineCommand(command_id=f"{new_oid}:replace", symbol="AAPL", replace_order=pb.ReplaceOrder(
        order_id=oid, new_order_id=new_oid, account_id=account, quantity=qty, limit_price=limit, stop_price=stop,
        collar_price=collar))


def test_a_stop_replaced_at_another_stop_price_trades_within_the_collar_of_its_new_stop():
    """A buy STOP's replacement at a higher stop brings the collar of its new stop price
    (order_svc holds cash for it): once triggered it buys within that collar, not the old one,
    which lay below the new stop. A replacement without a collar keeps the old order's."""
    eng = SymbolEngine("AAPL")
    eng.apply(1, 0, new_order("st", "alice", BUY, 10, otype=c.ORDER_TYPE_STOP, stop="100", collar="105"))
    [ex] = eng.apply(2, 0, replace("st", "st2", "alice", 10, stop="120", collar="126")).executions
    assert (ex.type, ex.new_order_id) == (E.EXECUTION_TYPE_REPLACED, "st2")
    eng.apply(3, 0, new_order("s1", "bob", SELL, 10, limit="125"))  # above the old collar, inside the new
    eng.apply(4, 0, new_order("p4", "carol", SELL, 1, limit="120"))
    out = eng.apply(5, 0, new_order("p5", "dave", BUY, 1, limit="120"))  # the print at 120 triggers st2
    fills = [(e.price, e.quantity) for e in out.executions
             if e.type == E.EXECUTION_TYPE_FILL and "st2" in (e.order_id, e.counter_order_id)]
    assert fills == [("125.00", 10)]
    eng.apply(6, 0, new_order("st3", "alice", BUY, 5, otype=c.ORDER_TYPE_STOP, stop="200", collar="210"))
    eng.apply(7, 0, replace("st3", "st4", "alice", 5, stop="190"))
    assert eng.book.get_order("st4").collar == 2_100_000  # 210.0000 in ticks: the old order's


def test_a_triggered_stop_limit_can_be_replaced():
    """A STOP_LIMIT that triggered rests as a limit order; its replace (which still names a
    stop, as for any STOP_LIMIT) moves the limit instead of being refused as invalid."""
    eng = SymbolEngine("AAPL")
    eng.apply(1, 0, new_order("sl", "alice", BUY, 7, otype=c.ORDER_TYPE_STOP_LIMIT, stop="101", limit="100"))
    eng.apply(2, 0, new_order("p2", "carol", SELL, 1, limit="101"))
    eng.apply(3, 0, new_order("p3", "dave", BUY, 1, limit="101"))  # the print at 101 triggers it
    assert eng.book.depth(5) == ([(1_000_000, 7, 1)], [])  # resting at its limit
    [ex] = eng.apply(4, 0, replace("sl", "sl2", "alice", 7, limit="99.5", stop="101")).executions
    assert (ex.type, ex.new_order_id) == (E.EXECUTION_TYPE_REPLACED, "sl2")
    assert eng.book.depth(5) == ([(995_000, 7, 1)], [])


def halt(reason: str = "news pending", symbol: str = "AAPL", cid: str = "h1") -> pb.EngineCommand:
    return pb.EngineCommand(command_id=cid, symbol=symbol, halt=pb.Halt(reason=reason))


def test_a_halt_refuses_new_orders_and_replaces_keeps_cancels_and_survives_a_snapshot():
    eng = SymbolEngine("AAPL")
    eng.apply(1, 0, new_order("s", "alice", SELL, 10, limit="10"))
    eng.apply(2, 0, new_order("r", "carol", SELL, 5, limit="11"))
    out = eng.apply(3, 0, halt())
    assert not out.executions
    [md] = out.market_data  # the feed says so at once, with the book as it is
    assert (md.halted, md.ask_price, md.ask_size) == (True, "10.00", 10)

    # Restored from a snapshot, still halted.
    eng = SymbolEngine.from_bytes(eng.to_bytes())
    assert eng.halted == "news pending"
    [ex] = eng.apply(4, 0, new_order("b", "bob", BUY, 4, limit="10")).executions  # would have crossed
    assert (ex.type, ex.order_id, ex.reason, ex.quantity) == (E.EXECUTION_TYPE_REJECTED, "b", "SYMBOL_HALTED", 4)
    replace = pb.EngineCommand(command_id="rp", symbol="AAPL", replace_order=pb.ReplaceOrder(
        order_id="s", new_order_id="s2", account_id="alice", quantity=10, limit_price="9.5"))
    [ex] = eng.apply(5, 0, replace).executions
    assert (ex.type, ex.order_id, ex.new_order_id, ex.reason) == (
        E.EXECUTION_TYPE_CANCEL_REJECTED, "s", "s2", "SYMBOL_HALTED")
    out = eng.apply(6, 0, cancel("r", "carol"))
    assert [(ex.type, ex.order_id) for ex in out.executions] == [(E.EXECUTION_TYPE_CANCELLED, "r")]
    assert all(md.halted for md in out.market_data)
    assert eng.book.get_order("s") is not None and eng.book.get_order("r") is None

    out = eng.apply(7, 0, pb.EngineCommand(command_id="go", symbol="AAPL", resume=pb.Resume()))
    assert eng.halted is None and [md.halted for md in out.market_data] == [False]
    out = eng.apply(8, 0, new_order("b2", "bob", BUY, 4, limit="10"))
    assert [ex.type for ex in out.executions] == [E.EXECUTION_TYPE_ACCEPTED, E.EXECUTION_TYPE_FILL]
    assert out.market_data[-1].halted is False
    # Resuming what trades already changes nothing and says nothing.
    assert not eng.apply(9, 0, pb.EngineCommand(command_id="go2", symbol="AAPL", resume=pb.Resume())).market_data


def ny_ns(day: str, hh: int, mm: int = 0) -> int:
    """ns since the epoch of `day` hh:mm New York time."""
    from datetime import datetime
    from zoneinfo import ZoneInfo
    at = datetime.fromisoformat(f"{day}T{hh:02d}:{mm:02d}").replace(tzinfo=ZoneInfo("America/New_York"))
    return int(at.timestamp()) * 1_000_000_000


def close(day: str, cid: str | None = None) -> pb.EngineCommand:
    return pb.EngineCommand(command_id=cid or f"close:{day}", symbol="AAPL", session_close=pb.SessionClose(trading_day=day))


def test_a_session_close_expires_the_day_orders_of_its_day_and_earlier_ones_only():
    """A close missed on Tuesday and made late, during Wednesday's session, ends Tuesday's
    DAY orders (and a replace of one keeps its day) but not Wednesday's; a repeat of it, or a
    close of an earlier day, expires nothing; Wednesday's close ends the rest."""
    DAY = c.TIME_IN_FORCE_DAY
    eng = SymbolEngine("AAPL")

    def stored(cmd: pb.EngineCommand) -> int:  # a stream time just after the order's acceptance
        return cmd.new_order.accepted_at.seconds * 1_000_000_000 + 100_000_000

    for seq, cmd in enumerate([
            new_order("mon", "a", BUY, 1, limit="10", tif=DAY, at_ns=ny_ns("2026-11-23", 10)),
            new_order("tue", "a", BUY, 2, limit="11", tif=DAY, at_ns=ny_ns("2026-11-24", 23, 30)),  # 04:30 UTC, the 25th
            new_order("gtc", "a", BUY, 3, limit="9", at_ns=ny_ns("2026-11-24", 11)),
            new_order("wed", "a", BUY, 4, limit="12", tif=DAY, at_ns=ny_ns("2026-11-25", 9, 31))], start=1):
        eng.apply(seq, max(stored(cmd), eng.last_time_ns), cmd)
    replace = pb.EngineCommand(command_id="tue:replace", symbol="AAPL", replace_order=pb.ReplaceOrder(
        order_id="tue", new_order_id="tue2", account_id="a", quantity=5, limit_price="11.5"))
    eng.apply(5, ny_ns("2026-11-25", 9, 40), replace)  # on Wednesday: still Tuesday's order
    trade = new_order("s", "b", SELL, 1, limit="12", at_ns=ny_ns("2026-11-25", 9, 45))
    eng.apply(6, stored(trade), trade)  # trades with wed, on Wednesday
    assert eng.volume == 1

    out = eng.apply(7, ny_ns("2026-11-25", 10), close("2026-11-24"))
    assert {(e.type, e.order_id) for e in out.executions} == {
        (E.EXECUTION_TYPE_EXPIRED, "mon"), (E.EXECUTION_TYPE_EXPIRED, "tue2")}
    assert len(out.market_data) == 1  # the feed shows the book without them
    assert eng.volume == 1  # Wednesday has traded: its volume stands
    survived = SymbolEngine.from_bytes(eng.to_bytes())  # the closed day and each order's day kept
    for e in (eng, survived):
        for seq, again in ((8, close("2026-11-24", "again")), (9, close("2026-11-23"))):
            out = e.apply(seq, ny_ns("2026-11-25", 11), again)
            assert (out.executions, out.market_data, out.duplicate) == ([], [], False)
        assert [o for o in ("mon", "tue", "tue2", "gtc", "wed") if e.book.get_order(o)] == ["gtc", "wed"]

    out = survived.apply(10, ny_ns("2026-11-25", 16), close("2026-11-25"))
    assert [(e.type, e.order_id, e.quantity) for e in out.executions] == [(E.EXECUTION_TYPE_EXPIRED, "wed", 3)]
    [md] = out.market_data
    assert md.volume == 1 and survived.volume == 0  # the session's end shows its volume; the next starts at 0
    assert survived.state_hash() != eng.state_hash()


def test_a_day_order_accepted_before_the_close_and_handed_over_after_it_expires_on_arrival():
    """The outbox relays in commit order: a DAY buy checked open at 15:59:59 can reach the
    engine after the close, queued at 16:00 (round 14 review: it rested, and filled against
    the next morning's first seller). It ends as the close ended the others, unmatched, also
    on an engine restored from a snapshot; a DAY order accepted after the close (a close made
    by hand on an always-open market: the next session's) and a GTC one still rest."""
    DAY = c.TIME_IN_FORCE_DAY
    eng = SymbolEngine("AAPL")
    eng.apply(1, 0, new_order("s", "b", SELL, 5, limit="10", tif=DAY, at_ns=ny_ns("2026-11-24", 15, 30)))
    [ex] = eng.apply(2, ny_ns("2026-11-24", 16) + 5_000_000_000, close("2026-11-24")).executions
    assert (ex.type, ex.order_id) == (E.EXECUTION_TYPE_EXPIRED, "s")
    restored = SymbolEngine.from_bytes(eng.to_bytes())
    for e in (eng, restored):
        late = ny_ns("2026-11-24", 15, 59) + 59_000_000_000  # 15:59:59, accepted before the close
        out = e.apply(3, 0, new_order("late", "a", BUY, 5, limit="10", tif=DAY, at_ns=late))
        assert [(x.type, x.order_id, x.quantity) for x in out.executions] == [
            (E.EXECUTION_TYPE_ACCEPTED, "late", 5), (E.EXECUTION_TYPE_EXPIRED, "late", 5)]
        assert out.executions[1].reason == "SESSION_CLOSE" and e.book.get_order("late") is None
        after = ny_ns("2026-11-24", 16, 1)  # accepted after the close: it rests
        e.apply(4, 0, new_order("after", "a", BUY, 1, limit="9", tif=DAY, at_ns=after))
        e.apply(5, 0, new_order("gtc", "a", BUY, 1, limit="8", at_ns=late))
        assert [o for o in ("late", "after", "gtc") if e.book.get_order(o)] == ["after", "gtc"]
        # The next morning's seller finds no order of the closed day.
        out = e.apply(6, 0, new_order("s2", "b", SELL, 5, limit="10", at_ns=ny_ns("2026-11-25", 9, 30)))
        assert [x.type for x in out.executions] == [E.EXECUTION_TYPE_ACCEPTED]
    assert eng.state_hash() == restored.state_hash()


def test_a_day_order_accepted_before_the_close_is_judged_on_the_clock_of_its_acceptance():
    """The close carries when order_svc queued it (queued_at), and a DAY order arriving after
    it is compared with that, not with the close's stream time: with NATS's clock a second
    behind order_svc's, a buy accepted at 15:59:59.7 reached the engine after a close queued at
    16:00:00.2 but stored at 15:59:59.2, and rested through the next session (round 17)."""
    DAY = c.TIME_IN_FORCE_DAY
    eng = SymbolEngine("AAPL")
    queued = close("2026-11-24")
    queued.session_close.queued_at.seconds, queued.session_close.queued_at.nanos = divmod(
        ny_ns("2026-11-24", 16) + 200_000_000, 1_000_000_000)
    eng.apply(1, ny_ns("2026-11-24", 15, 59) + 59_200_000_000, queued)  # NATS's clock: 15:59:59.2
    out = eng.apply(2, ny_ns("2026-11-24", 16), new_order(
        "late", "a", BUY, 5, limit="10", tif=DAY, at_ns=ny_ns("2026-11-24", 15, 59) + 59_700_000_000))
    assert [(x.type, x.order_id) for x in out.executions] == [
        (E.EXECUTION_TYPE_ACCEPTED, "late"), (E.EXECUTION_TYPE_EXPIRED, "late")]
    eng.apply(3, ny_ns("2026-11-24", 16, 1), new_order(
        "after", "a", BUY, 1, limit="9", tif=DAY, at_ns=ny_ns("2026-11-24", 16) + 300_000_000))
    assert eng.book.get_order("after") is not None  # accepted after the close was queued: the next session's


def test_a_close_without_a_day_and_orders_without_one_keep_the_old_behaviour():
    """A SessionClose without a (valid) day expires every DAY order, as before days were
    kept; so does any close for an order restored from a snapshot taken before (no day)."""
    DAY = c.TIME_IN_FORCE_DAY
    eng = SymbolEngine("AAPL")
    eng.apply(1, 0, new_order("today", "a", BUY, 1, limit="10", tif=DAY, at_ns=ny_ns("2026-11-25", 10)))
    [ex] = eng.apply(2, 0, close("not-a-day")).executions
    assert (ex.type, ex.order_id) == (E.EXECUTION_TYPE_EXPIRED, "today")
    eng.apply(3, 0, new_order("old", "a", BUY, 1, limit="10", tif=DAY, at_ns=ny_ns("2026-11-25", 10)))
    data = eng.snapshot()
    for level in data["book"]["bids"]:
        for order in level[1]:
            del order["trading_day"]  # as a snapshot of an earlier version has it
    del data["closed_day"], data["last_trade_ns"]
    old = SymbolEngine.restore(data)
    [ex] = old.apply(4, 0, close("2026-01-02")).executions  # a close of any day ends it
    assert (ex.type, ex.order_id) == (E.EXECUTION_TYPE_EXPIRED, "old")


def test_the_volume_starts_from_zero_on_a_later_trading_day_without_a_session_close():
    """An always-open market has no session close: the quote's volume (the feed's) went on from
    the day before (acceptance round 9). A trade of a later New York day restarts it, and so
    does the first change the feed shows that day; replays and snapshots agree."""
    eng = SymbolEngine("AAPL")
    eng.apply(1, ny_ns("2026-12-04", 23, 50), new_order("s", "a", SELL, 10, limit="10"))
    out = eng.apply(2, ny_ns("2026-12-04", 23, 55), new_order("b1", "b", BUY, 3, limit="10"))
    assert [md.volume for md in out.market_data] == [3]
    survived = SymbolEngine.from_bytes(eng.to_bytes())
    for e in (eng, survived):
        out = e.apply(3, ny_ns("2026-12-05", 0, 5), new_order("b2", "b", BUY, 2, limit="10"))  # after midnight
        assert [md.volume for md in out.market_data] == [2]
        assert e.volume == 2
    assert survived.state_hash() == eng.state_hash()

    quiet = SymbolEngine("AAPL")
    quiet.apply(1, ny_ns("2026-12-04", 15), new_order("s", "a", SELL, 10, limit="10"))
    quiet.apply(2, ny_ns("2026-12-04", 15, 1), new_order("b1", "b", BUY, 4, limit="10"))
    out = quiet.apply(3, ny_ns("2026-12-05", 9, 30), new_order("bid", "c", BUY, 1, limit="9"))  # no trade
    assert [md.volume for md in out.market_data] == [0]
    out = quiet.apply(4, ny_ns("2026-12-05", 9, 31), new_order("b2", "b", BUY, 1, limit="10"))
    assert [md.volume for md in out.market_data] == [1]
