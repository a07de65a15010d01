"""The operator's commands that talk to PostgreSQL or NATS directly: a server that does not
answer, a bad URL or a missing database is one line naming it (exit 1), never a traceback;
anything else (a bug) keeps its traceback."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from meshkit.cli import main, timed_out, unreachable

NOWHERE_PG = "postgresql://postgres@127.0.0.1:1/x"
NOWHERE_NATS = "nats://127.0.0.1:1"


@pytest.mark.parametrize("args, says", [
    (["settle", "--date", "2026-12-04", "--database-url", NOWHERE_PG], "stockmesh settle: cannot connect"),
    (["settle", "--date", "2026-12-04", "--database-url", "notaurl"], "stockmesh settle: PostgreSQL: invalid DSN"),
    (["session", "close", "--database-url", NOWHERE_PG], "stockmesh session: cannot connect"),
    (["audit", "verify", "--database-url", NOWHERE_PG], "stockmesh audit: cannot connect"),
    (["migrate", "--database-url", NOWHERE_PG], "stockmesh migrate: PostgreSQL: connection failed"),
    (["consumers", "--nats-url", NOWHERE_NATS], "stockmesh consumers: NATS: nats: no servers available"),
], ids=lambda a: a if isinstance(a, str) else " ".join(a[:2]))
def test_a_server_that_does_not_answer_is_one_line(args, says):
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 1, done.output
    assert done.output.startswith(f"Error: {says}"), done.output
    assert "Traceback" not in done.output and len(done.output.strip().splitlines()) <= 2, done.output


def test_other_errors_are_not_taken_for_an_unreachable_server():
    assert unreachable(ValueError("a bug")) is None
    assert unreachable(KeyError("x")) is None
    assert unreachable(TimeoutError()) is None  # a statement out of time (asyncpg's command_timeout)
    import asyncpg
    # A server at max_connections is one that does not answer now (round 13: a traceback).
    assert unreachable(asyncpg.TooManyConnectionsError("sorry, too many clients already")) == (
        "PostgreSQL: sorry, too many clients already")
    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed")
        except OSError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as outer:
        assert unreachable(outer) == "cannot connect: [Errno 111] Connect call failed"


@pytest.mark.parametrize("args", [["settle", "--database-url", NOWHERE_PG, "--date"],
                                  ["session", "close", "--database-url", NOWHERE_PG, "--date"],
                                  ["journal", "trim", "--database-url", NOWHERE_PG, "--nats-url", "nats://127.0.0.1:1",
                                   "--before"]],
                         ids=["settle", "session close", "journal trim"])
def test_a_day_that_has_not_come_is_a_usage_error(args):
    """Settling tomorrow would pay today's proceeds before their day's close; closing it early would leave its
    own close with nothing to do (its DAY orders would not expire); trimming before it would
    purge the executions of the day still trading. Refused before any server is asked."""
    from datetime import date, timedelta

    tomorrow = (date.today() + timedelta(days=2)).isoformat()  # after today in New York, whatever the zone
    done = CliRunner().invoke(main, [*args, tomorrow])
    assert done.exit_code == 2, done.output
    assert "has not come yet" in done.output and "Traceback" not in done.output


@pytest.mark.parametrize("text", ["", "20261204", "2026-12-4", "2026-W49-5", "tomorrow"])
@pytest.mark.parametrize("args", [["settle", "--database-url", NOWHERE_PG, "--date"],
                                  ["session", "close", "--database-url", NOWHERE_PG, "--date"]],
                         ids=["settle", "session close"])
def test_a_date_not_written_yyyy_mm_dd_is_a_usage_error(args, text):
    """Not today by default when empty, nor another ISO form read some other way."""
    done = CliRunner().invoke(main, [*args, text])
    assert done.exit_code == 2, done.output
    assert "is not a date like 2026-11-23" in done.output and "Traceback" not in done.output


def test_engine_halt_and_resume_take_several_symbols_or_all(monkeypatch):
    """Round 15: a final settlement on an always-open market took twelve `engine halt`s."""
    from meshkit import cli
    from meshkit.symbols import listed

    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(cli, "_engine_call", lambda address, data_dir, method, request: calls.append(
        (method, request.symbol)))
    done = CliRunner().invoke(main, ["engine", "halt", "all", "--reason", "end of day", "--address", "x:1"])
    assert done.exit_code == 0, done.output
    assert calls == [("HaltSymbol", s) for s in sorted(listed())]
    calls.clear()
    done = CliRunner().invoke(main, ["engine", "resume", "AAPL", "KO", "--address", "x:1"])
    assert done.exit_code == 0 and calls == [("ResumeSymbol", "AAPL"), ("ResumeSymbol", "KO")], done.output


def test_a_statement_out_of_time_is_one_line_saying_what_may_hold_it(monkeypatch):
    """Acceptance round 16: `settle` beside a ledger_svc frozen mid-transaction waited out
    asyncpg's command timeout on an account lock, then printed a 60-line TimeoutError."""
    import asyncpg
    import nats.errors

    from ledger_svc.service_layer import runner

    async def frozen(*args, **kwargs):
        raise TimeoutError

    monkeypatch.setattr(runner, "run_settlement", frozen)
    done = CliRunner().invoke(main, ["settle", "--date", "2026-12-04", "--before-close", "--database-url",
                                     "postgresql://postgres@127.0.0.1:1/x", "--nats-url", "nats://127.0.0.1:1"])
    assert done.exit_code == 1, done.output
    assert done.output.startswith("Error: stockmesh settle: a statement or request did not finish in time"), \
        done.output
    assert "pg_stat_activity" in done.output and "Traceback" not in done.output
    assert timed_out(asyncpg.QueryCanceledError("canceling statement due to statement timeout")) is not None
    assert timed_out(nats.errors.TimeoutError()).startswith("NATS did not answer in time")
    assert timed_out(ValueError("a bug")) is None
