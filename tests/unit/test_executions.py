"""Executions that change nothing for the ledger (the engine accepted or triggered an order)
are passed by without a transaction there; order_svc's consumer passes acceptances by and opens
one for a trigger (the customer sees it); every other kind opens one in both."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from ledger_svc.service_layer import settlement
from meshkit.executions import ACCEPTED, CANCELLED, NO_EFFECT, TRIGGERED, Execution
from order_svc.service_layer import lifecycle


class Opened(Exception):
    """A unit of work was asked for."""


def no_uow():
    raise Opened


def execution(kind: str) -> Execution:
    return Execution(execution_id=f"x-{kind}", symbol="AAPL", type=kind, order_id="o-1", account_id="a-1")


def test_acceptances_and_triggers_are_the_executions_with_no_effect():
    assert NO_EFFECT == {ACCEPTED, TRIGGERED}


@pytest.mark.parametrize("kind", sorted(NO_EFFECT))
async def test_no_effect_executions_open_no_unit_of_work_in_the_ledger(kind):
    assert await settlement.apply_execution(execution(kind), no_uow) is False


async def test_order_svc_passes_acceptances_by_and_applies_triggers():
    assert await lifecycle.apply_execution(execution(ACCEPTED), SimpleNamespace(uow=no_uow)) is False
    with pytest.raises(Opened):
        await lifecycle.apply_execution(execution(TRIGGERED), SimpleNamespace(uow=no_uow))


async def test_an_execution_with_an_effect_opens_one():
    with pytest.raises(Opened):
        await settlement.apply_execution(execution(CANCELLED), no_uow)
    with pytest.raises(Opened):
        await lifecycle.apply_execution(execution(CANCELLED), SimpleNamespace(uow=no_uow))


async def test_the_refusal_barrier_gives_up_on_a_stalled_nats_as_a_read_in_a_call_does():
    """wait_applied's JetStream requests took nats-py's 5 s each while NATS stalled (acceptance
    round 13: a Withdraw answered UNAVAILABLE after 5.1 s); each gives up after
    bus.READ_TIMEOUT now, with the error that is UNAVAILABLE / BUS_UNAVAILABLE to the client."""
    import asyncio

    import nats.errors

    from meshkit import bus, executions

    class Stalled:
        async def consumers_info(self, stream, offset=0):
            await asyncio.Event().wait()  # never answers

    with pytest.raises(nats.errors.TimeoutError) as err:
        await asyncio.wait_for(executions.wait_applied(Stalled(), "ns", "ledger"), timeout=bus.READ_TIMEOUT + 20)
    assert bus.unreachable(err.value)


def test_units_are_the_longest_runs_and_everything_else_alone():
    """Both consumers apply in these units: fills and plain ends together, a replace's cancel, a
    replace, a trigger or a refused cancel alone, and stream order kept."""
    from meshkit.executions import CANCEL_REJECTED, EXPIRED, FILL, REJECTED, REPLACED, units

    def ex(i: int, kind: str, reason: str = "") -> Execution:
        return Execution(execution_id=str(i), symbol="AAPL", type=kind, order_id="o", account_id="a", reason=reason)

    kinds = [(FILL, ""), (CANCELLED, "CLIENT"), (FILL, ""), (CANCELLED, "REPLACED"), (REPLACED, ""), (FILL, ""),
             (EXPIRED, ""), (REJECTED, "FOK"), (TRIGGERED, ""), (CANCEL_REJECTED, ""), (FILL, "")]
    exs = [ex(i, k, r) for i, (k, r) in enumerate(kinds)]
    got = [(start, [e.execution_id for e in unit]) for start, unit in units(exs)]
    assert got == [(0, ["0", "1", "2"]), (3, ["3"]), (4, ["4"]), (5, ["5", "6", "7"]), (8, ["8"]), (9, ["9"]),
                   (10, ["10"])]
    assert list(units([])) == []


def test_order_svc_takes_replaces_refused_cancels_and_triggers_into_its_runs():
    """order_svc's predicate (units' other than the ledger's default): everything that changes
    orders in one run; an acceptance alone."""
    from meshkit.executions import CANCEL_REJECTED, EXPIRED, FILL, REJECTED, REPLACED, units

    def ex(i: int, kind: str, reason: str = "") -> Execution:
        return Execution(execution_id=str(i), symbol="AAPL", type=kind, order_id="o", account_id="a", reason=reason)

    kinds = [(FILL, ""), (CANCELLED, "REPLACED"), (REPLACED, ""), (TRIGGERED, ""), (CANCEL_REJECTED, ""),
             (EXPIRED, ""), (ACCEPTED, ""), (REJECTED, "FOK"), (FILL, "")]
    exs = [ex(i, k, r) for i, (k, r) in enumerate(kinds)]
    got = [(start, [e.execution_id for e in unit]) for start, unit in units(exs, lifecycle.in_runs)]
    assert got == [(0, ["0", "1", "2", "3", "4", "5"]), (6, ["6"]), (7, ["7", "8"])]
