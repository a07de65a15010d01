"""Envoy's access log through the whole mesh: one JSON object per call, whose grpc_status is the
gRPC status its client got, whatever route the call takes (gRPC clients' order commands through
the reverse bridge too, gRPC-Web successes whose status travels in the body), and for a JSON call
the status the service answered beside the HTTP status; never a status guessed from the HTTP
one. Nothing a client sends can make a field of its own."""
from __future__ import annotations

import json
import uuid

import grpc
import pytest

from stockmesh.common.v1 import common_pb2
from stockmesh.ledger.v1 import ledger_service_pb2 as lpb, ledger_service_pb2_grpc
from stockmesh.order.v1 import order_service_pb2 as opb, order_service_pb2_grpc
from tests.e2e.test_json import grpc_web, post
from tests.support.wait import eventually

pytestmark = pytest.mark.e2e
PLACE = "/stockmesh.order.v1.OrderService/PlaceOrder"
GET = "/stockmesh.order.v1.OrderService/GetOrder"
DEPOSIT = "/stockmesh.ledger.v1.LedgerService/Deposit"


def access_log(mesh) -> list[dict]:
    """Envoy's access-log lines (one JSON object each; its own log lines around them are text)."""
    text = (mesh.data_dir / "logs" / "envoy.log").read_text(errors="replace")
    return [entry for entry in map(_json_or_none, text.splitlines())
            if isinstance(entry, dict) and entry.get("logger") == "envoy.access"]


def _json_or_none(line: str):
    try:
        return json.loads(line)
    except ValueError:
        return None


def _logged(mesh, prefix: str) -> dict[str, tuple[str, int, str | None]]:
    """request id -> (path, http status, gRPC status) of the access-log lines of the calls whose
    x-request-id starts with `prefix`."""
    return {e["request_id"]: (e["path"], e["http_status"], e["grpc_status"]) for e in access_log(mesh)
            if (e.get("request_id") or "").startswith(prefix)}


def _order(coid: str, quantity: int) -> opb.PlaceOrderRequest:
    return opb.PlaceOrderRequest(client_order_id=coid, symbol="KO", side=common_pb2.SIDE_BUY,
                                 type=common_pb2.ORDER_TYPE_LIMIT, quantity=quantity, limit_price="50.00",
                                 time_in_force=common_pb2.TIME_IN_FORCE_GTC)


def _json_order(coid: str, quantity: str) -> dict[str, str]:
    return {"client_order_id": coid, "symbol": "KO", "side": "SIDE_BUY", "type": "ORDER_TYPE_LIMIT",
            "quantity": quantity, "limit_price": "50.00", "time_in_force": "TIME_IN_FORCE_GTC"}


async def test_the_access_log_shows_the_status_each_client_got(mesh):
    """Bridged PlaceOrders were all logged grpc=-, and JSON errors with the gRPC code Envoy
    guesses from their HTTP status (NOT_FOUND's 404 as 12, ALREADY_EXISTS's 409 as 2,
    INVALID_ARGUMENT's 400 as 13 INTERNAL), gRPC-Web successes as 2 UNKNOWN, then as - (none:
    the gRPC-Web filter had moved the trailers into the body; round 27)."""
    account, prefix = f"log-{uuid.uuid4().hex[:6]}", f"r26-log-{uuid.uuid4().hex[:8]}-"

    def rid(name: str) -> dict[str, str]:
        return {"x-request-id": prefix + name}

    def md(name: str) -> tuple[tuple[str, str], ...]:
        return mesh.auth(account) + tuple(rid(name).items())

    async with mesh.channel() as ch:
        await ledger_service_pb2_grpc.LedgerServiceStub(ch).Deposit(
            lpb.DepositRequest(amount="500.00", idempotency_key="d"), metadata=md("deposit"))
        orders = order_service_pb2_grpc.OrderServiceStub(ch)
        # A gRPC client's commands go through the reverse bridge: refused, then placed.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await orders.PlaceOrder(_order("log-1", 0), metadata=md("bridged-refused"))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        await orders.PlaceOrder(_order("log-1", 2), metadata=md("bridged-placed"))
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await orders.GetOrder(opb.GetOrderRequest(order_id=str(uuid.uuid4())), metadata=md("grpc-missing"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    status, reply = post(mesh, "/stockmesh.ledger.v1.LedgerService/GetPortfolio", {}, account, rid("json-ok"))
    assert status == 200, reply
    status, reply = post(mesh, GET, {"order_id": str(uuid.uuid4())}, account, rid("json-missing"))
    assert status == 404 and reply["code"] == 5, reply  # NOT_FOUND
    status, reply = post(mesh, PLACE, _json_order("log-1", "3"), account, rid("json-duplicate"))
    assert status == 409 and reply["code"] == 6, reply  # ALREADY_EXISTS
    status, reply = post(mesh, PLACE, _json_order("log-2", "0"), account, rid("json-refused"))
    assert status == 400 and reply["code"] == 3, reply  # INVALID_ARGUMENT
    status, reply = post(mesh, GET, {"order_id": str(uuid.uuid4())}, None, rid("json-no-token"))
    assert status == 401, reply  # Envoy's own reply, before the transcoder: no gRPC status
    _, trailers = grpc_web(mesh, PLACE, _order("log-3", 1), account, rid("web-placed"))
    assert trailers["grpc-status"] == "0", trailers
    _, trailers = grpc_web(mesh, PLACE, _order("log-3", 4), account, rid("web-duplicate"))
    assert trailers["grpc-status"] == "6", trailers

    expected = {
        "deposit": (DEPOSIT, "200", "0"),
        "bridged-refused": (PLACE, "200", "3"),
        "bridged-placed": (PLACE, "200", "0"),
        "grpc-missing": (GET, "200", "5"),
        "json-ok": ("/stockmesh.ledger.v1.LedgerService/GetPortfolio", "200", "0"),
        "json-missing": (GET, "404", "5"),
        "json-duplicate": (PLACE, "409", "6"),
        "json-refused": (PLACE, "400", "3"),
        "json-no-token": (GET, "401", None),
        "web-duplicate": (PLACE, "200", "6"),
        # A gRPC-Web success's status is in its body (the gRPC-Web filter moves the trailers
        # there): kept before, not guessed from the 200.
        "web-placed": (PLACE, "200", "0"),
    }
    # Envoy writes its access log every few seconds.
    logged = await eventually(lambda: (lambda got: len(got) >= len(expected) and got)(_logged(mesh, prefix)),
                              timeout=30)
    assert {k.removeprefix(prefix): v for k, v in (logged or {}).items()} == \
        {k: (path, int(http), grpc) for k, (path, http, grpc) in expected.items()}


async def test_a_request_id_a_client_sends_cannot_forge_fields_of_the_access_log(mesh):
    """Round 27: the client's x-request-id was written raw into a text line, so one with spaces
    and quotes (`x grpc=0 flags=- ...`) could make a failed call read as a success, or its
    line as another call's. Each value is a JSON string now, the request id whole in its own
    field; a gRPC client's, a JSON client's and a gRPC-Web client's alike."""
    account, prefix = f"log-{uuid.uuid4().hex[:6]}", f"r27-forge-{uuid.uuid4().hex[:8]}"
    forged = ' grpc=0 flags=- "} {"grpc_status": "0", "path": "/elsewhere'
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        async with mesh.channel() as ch:
            await order_service_pb2_grpc.OrderServiceStub(ch).GetOrder(
                opb.GetOrderRequest(order_id=str(uuid.uuid4())),
                metadata=mesh.auth(account) + (("x-request-id", prefix + "-grpc" + forged),))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    status, reply = post(mesh, GET, {"order_id": str(uuid.uuid4())}, account,
                         {"x-request-id": prefix + "-json" + forged})
    assert status == 404, reply
    _, trailers = grpc_web(mesh, PLACE, _order("forge-1", 0), account, {"x-request-id": prefix + "-web" + forged})
    assert trailers["grpc-status"] == "3", trailers

    logged = await eventually(lambda: (lambda got: len(got) >= 3 and got)(_logged(mesh, prefix)), timeout=30)
    assert logged == {prefix + "-grpc" + forged: (GET, 200, "5"), prefix + "-json" + forged: (GET, 404, "5"),
                      prefix + "-web" + forged: (PLACE, 200, "3")}
    # ... and nothing else was read out of those lines (no line for /elsewhere, no status 0).
    assert not [e for e in access_log(mesh) if e.get("path") == "/elsewhere"]
