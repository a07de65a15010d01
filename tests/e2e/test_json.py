"""JSON through Envoy (the gRPC-JSON transcoder): a web client POSTs JSON to
/<package>.<Service>/<Method> with its bearer token and gets JSON back — the proto3 JSON
mapping with the .proto's field names, money as exact decimal strings; errors as HTTP
statuses with the google.rpc.Status and its details; internal services stay unreachable."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import pytest

pytestmark = pytest.mark.e2e


def post(mesh, path: str, body: dict, account: str | None = None) -> tuple[int, dict | list | str]:
    headers = {"content-type": "application/json"}
    if account is not None:
        headers["authorization"] = f"Bearer {mesh.token(account)}"
    req = urllib.request.Request(f"http://{mesh.endpoint}{path}", data=json.dumps(body).encode(),
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def test_json_calls_through_envoy(mesh):
    account = f"json-{uuid.uuid4().hex[:6]}"
    status, listing = post(mesh, "/stockmesh.quote.v1.QuoteService/ListSymbols", {}, account)
    assert status == 200, listing
    aapl = next(s for s in listing["symbols"] if s["symbol"] == "AAPL")
    assert aapl["tick_size"] == "0.01" and isinstance(aapl["reference_price"], str)

    status, deposit = post(mesh, "/stockmesh.ledger.v1.LedgerService/Deposit",
                           {"amount": "250.10", "idempotency_key": "json-1"}, account)
    assert status == 200, deposit
    assert deposit["cash"]["total"] == "250.10" and deposit["cash"]["available"] == "250.10"
    status, portfolio = post(mesh, "/stockmesh.ledger.v1.LedgerService/GetPortfolio", {}, account)
    assert status == 200 and portfolio["portfolio"]["cash"]["total"] == "250.10", portfolio

    # A malformed order: 400 with the field violations, and nothing recorded.
    status, error = post(mesh, "/stockmesh.order.v1.OrderService/PlaceOrder",
                         {"client_order_id": "j", "symbol": "AAPL", "side": "SIDE_BUY", "type": "ORDER_TYPE_LIMIT",
                          "quantity": "0", "limit_price": "1.001", "time_in_force": "TIME_IN_FORCE_DAY"}, account)
    assert status == 400 and error["code"] == 3, error  # INVALID_ARGUMENT
    details = {d["@type"].rsplit("/", 1)[1]: d for d in error["details"]}
    fields = {v["field"] for v in details["google.rpc.BadRequest"]["field_violations"]}
    assert {"quantity", "limit_price"} <= fields, fields
    assert details["google.rpc.ErrorInfo"]["reason"] == "INVALID_ARGUMENT"
    status, listed = post(mesh, "/stockmesh.order.v1.OrderService/ListOrders", {}, account)
    assert status == 200 and not listed.get("orders"), listed

    # No token: 401 before anything is transcoded; an internal service: no route.
    assert post(mesh, "/stockmesh.ledger.v1.LedgerService/GetPortfolio", {})[0] == 401
    assert post(mesh, "/stockmesh.ledger.v1.HoldService/GetHold", {}, account)[0] == 404
