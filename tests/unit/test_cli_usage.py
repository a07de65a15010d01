"""Usage errors (exit 2, click's message) that the command line finds itself, before it starts
or sends anything (round 19)."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from meshkit.cli import main
from stockmesh.common.v1 import common_pb2
from stockmesh.order.v1 import order_pb2, order_service_pb2, order_service_pb2_grpc
from tests.support.stand_ins import serving


@pytest.mark.parametrize("entry, words", [("foo=2", "no service 'foo' to run replicas of (one of order_svc, "),
                                          ("=2", "no service ''"), ("ledger_svc=0", "N at least 1")],
                         ids=["unknown", "unnamed", "zero"])
def test_up_refuses_a_bad_replicas_value_as_a_usage_error(tmp_path: Path, monkeypatch, entry, words):
    """An unknown service was the launcher's LaunchError, exit 1, where a bad N is exit 2."""
    from meshkit.launcher import mesh

    started = []
    monkeypatch.setattr(mesh, "up", lambda opts: started.append(opts) or 1)  # as the launcher refused it
    done = CliRunner().invoke(main, ["up", "--data-dir", str(tmp_path / "d"), "--replicas", "quote_svc=2",
                                     "--replicas", entry])
    assert done.exit_code == 2, done.output
    assert "Invalid value for --replicas: " in done.stderr and words in done.stderr, done.stderr
    assert not started and not (tmp_path / "d").exists()
    done = CliRunner().invoke(main, ["up", "--data-dir", str(tmp_path / "d"), "--replicas", " ledger_svc = 2"])
    assert done.exit_code == 1 and started[0].replicas == {"ledger_svc": 2}, done.output  # a good one goes on


class Working(order_service_pb2_grpc.OrderServiceServicer):
    """A working LIMIT order of 10 at 186.50; the replaces asked for, answered with a new order."""

    def __init__(self) -> None:
        self.replaces: list = []

    def GetOrder(self, request, context):
        return order_service_pb2.GetOrderResponse(order=order_pb2.Order(
            order_id=request.order_id, symbol="AAPL", quantity=10, limit_price="186.50",
            type=common_pb2.ORDER_TYPE_LIMIT, status=common_pb2.ORDER_STATUS_NEW))

    def ReplaceOrder(self, request, context):
        self.replaces.append(request)
        return order_service_pb2.ReplaceOrderResponse(order=order_pb2.Order(
            order_id="new", symbol="AAPL", quantity=request.quantity, limit_price=request.limit_price,
            type=common_pb2.ORDER_TYPE_LIMIT, status=common_pb2.ORDER_STATUS_NEW))


def _replace(*args: str):
    stand_in = Working()
    with serving(order_service_pb2_grpc.add_OrderServiceServicer_to_server, stand_in, workers=2) as address:
        return CliRunner().invoke(main, ["replace", "o1", *args, "--address", address, "--token", "t"]), \
            stand_in.replaces


@pytest.mark.parametrize("given, said", [(["--limit", "186.5"], "limit price 186.50"),
                                         (["--limit", "186.500", "--quantity", "10"],
                                          "quantity 10 and limit price 186.50"),
                                         (["--quantity", "10"], "quantity 10")],
                         ids=["same-price", "same-both", "same-quantity"])
def test_replace_that_changes_nothing_is_a_usage_error_and_sends_nothing(given, said):
    """It made a new order the same as the old (round 19); prices compare as numbers."""
    done, replaces = _replace(*given)
    assert done.exit_code == 2, done.output
    assert f"nothing would change: order o1 has {said} already" in done.stderr, done.stderr
    assert replaces == []


@pytest.mark.parametrize("given, sent", [(["--limit", "186.51"], (10, "186.51", "")),
                                         (["--limit", "186.5", "--quantity", "12"], (12, "186.5", "")),
                                         (["--stop", "186.50"], (10, "186.50", "186.50"))],
                         ids=["price", "quantity", "a-stop-it-has-none-of"])
def test_replace_that_changes_something_is_sent(given, sent):
    done, replaces = _replace(*given)
    assert done.exit_code == 0, done.output
    assert [(r.quantity, r.limit_price, r.stop_price) for r in replaces] == [sent]
