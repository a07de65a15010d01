"""JSON through Envoy (the gRPC-JSON transcoder): a web client POSTs JSON to
/<package>.<Service>/<Method> with its bearer token and gets JSON back — the proto3 JSON
mapping with the .proto's field names, money as exact decimal strings; errors as HTTP
statuses with the google.rpc.Status and its details; internal services stay unreachable."""
from __future__ import annotations

import asyncio
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from decimal import Decimal

import pytest

from tests.support.wait import eventually

pytestmark = pytest.mark.e2e


def post(mesh, path: str, body: dict, account: str | None = None,
         extra_headers: dict[str, str] | None = None) -> tuple[int, dict | list | str]:
    headers = {"content-type": "application/json", **(extra_headers or {})}
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
    assert portfolio["portfolio"]["open_orders_truncated"] is False, portfolio  # (round 27) in the descriptor set

    # A malformed order: 400 with the field violations, and nothing recorded.
    status, error = post(mesh, "/stockmesh.order.v1.OrderService/PlaceOrder",
                         {"client_order_id": "j", "symbol": "AAPL", "side": "SIDE_BUY", "type": "ORDER_TYPE_LIMIT",
                          "quantity": "0", "limit_price": "1.001", "time_in_force": "TIME_IN_FORCE_DAY"}, account)
    assert status == 400 and error["code"] == 3, error  # INVALID_ARGUMENT
    details = {d["@type"].rsplit("/", 1)[1]: d for d in error["details"]}
    fields = {v["field"] for v in details["google.rpc.BadRequest"]["field_violations"]}
    assert {"quantity", "limit_price"} <= fields, fields
    assert details["google.rpc.ErrorInfo"]["reason"] == "INVALID_ARGUMENT"
    # JSON the transcoder cannot read (an unknown enum name, a fraction of a share, a number for
    # a decimal string): Envoy's own 400, in the same shape as the services' errors.
    for bad, field in (({"type": "ORDER_TYPE_BOGUS"}, "type"), ({"quantity": "1.5"}, "quantity"),
                       ({"limit_price": 160.5, "type": "ORDER_TYPE_LIMIT"}, "limit_price")):
        status, error = post(mesh, "/stockmesh.order.v1.OrderService/PlaceOrder",
                             {"client_order_id": "j", "symbol": "AAPL", "side": "SIDE_BUY", "quantity": "1",
                              "type": "ORDER_TYPE_MARKET", "time_in_force": "TIME_IN_FORCE_DAY", **bad}, account)
        assert status == 400 and isinstance(error, dict) and error["code"] == 3, error
        assert field in error["message"], error
        details = {d["@type"].rsplit("/", 1)[1]: d for d in error["details"]}
        assert details["google.rpc.ErrorInfo"]["reason"] == "INVALID_ARGUMENT"
        # The violation names the field, as the services' do (round 17: it was "request body").
        assert details["google.rpc.BadRequest"]["field_violations"] == [
            {"field": field, "description": error["message"]}], error
    # A bad value of megabytes (the 400 repeats it twice): still the JSON 400, not a bare 500
    # from buffering it to name the field (round 17).
    status, error = post(mesh, "/stockmesh.order.v1.OrderService/PlaceOrder",
                         {"client_order_id": "j", "symbol": "AAPL", "side": "SIDE_BUY", "type": "ORDER_TYPE_MARKET",
                          "time_in_force": "TIME_IN_FORCE_DAY", "quantity": "a" * 2_500_000}, account)
    assert status == 400 and isinstance(error, dict) and error["code"] == 3, (status, str(error)[:200])
    status, error = post(mesh, "/stockmesh.ledger.v1.LedgerService/Deposit", {"amount": 5, "idempotency_key": "n"},
                         account)
    assert status == 400 and error["code"] == 3 and "amount" in error["message"], error
    status, error = post(mesh, "/stockmesh.quote.v1.QuoteService/GetCandles",
                         {"symbol": "AAPL", "interval": "CANDLE_INTERVAL_1M", "start_time": "2026-13-01T00:00:00Z"}, account)
    assert status == 400 and error["code"] == 3, error
    assert [v["field"] for d in error["details"] for v in d.get("field_violations", [])] == ["start_time"], error
    status, listed = post(mesh, "/stockmesh.order.v1.OrderService/ListOrders", {}, account)
    assert status == 200 and not listed.get("orders"), listed
    # By order id (round 26): an id of no order of the account is left out, one that is no order
    # id is the service's 400 at its index (a field missing from the transcoder's descriptor set
    # is dropped without a word: that call was a 200 listing every order).
    status, listed = post(mesh, "/stockmesh.order.v1.OrderService/ListOrders",
                          {"order_ids": [str(uuid.uuid4())], "statuses": ["ORDER_STATUS_FILLED"]}, account)
    assert status == 200 and not listed.get("orders"), listed
    status, error = post(mesh, "/stockmesh.order.v1.OrderService/ListOrders", {"order_ids": ["nope"]}, account)
    assert status == 400 and error["code"] == 3, error
    assert [v["field"] for d in error["details"] for v in d.get("field_violations", [])] == ["order_ids[0]"], error
    # An id given many times is one order, counted once towards the 500 (round 27).
    status, listed = post(mesh, "/stockmesh.order.v1.OrderService/ListOrders", {"order_ids": [str(uuid.uuid4())] * 501},
                          account)
    assert status == 200 and not listed.get("orders"), listed

    # No token: 401 before anything is transcoded, as the services' errors read (UNAUTHENTICATED).
    status, error = post(mesh, "/stockmesh.ledger.v1.LedgerService/GetPortfolio", {})
    assert status == 401 and isinstance(error, dict) and error["code"] == 16 and "Jwt" in error["message"], error
    # A method no public service has (misspelt, or an internal service's): 404 UNIMPLEMENTED, not
    # a 503 that looks like an outage a client would retry.
    for path in ("/stockmesh.order.v1.OrderService/GetOrderX", "/stockmesh.quote.v1.QuoteService/Nope",
                 "/stockmesh.ledger.v1.HoldService/GetHold"):
        status, error = post(mesh, path, {}, account)
        assert status == 404 and isinstance(error, dict) and error["code"] == 12, (path, status, error)



def test_json_quote_stream_through_envoy(mesh):
    """StreamQuotes as JSON: one array, written element by element as the quotes come, the
    snapshot first; an unknown symbol is a 400 before anything is streamed."""
    account = f"json-q-{uuid.uuid4().hex[:6]}"
    seller = f"json-s-{uuid.uuid4().hex[:6]}"
    status, _ = post(mesh, "/stockmesh.ledger.v1.LedgerService/Deposit",
                     {"amount": "100.00", "idempotency_key": "q"}, account)
    assert status == 200
    # A market in SIRI (no other end-to-end test trades it): a resting buy makes a bid.
    status, placed = post(mesh, "/stockmesh.order.v1.OrderService/PlaceOrder",
                          {"client_order_id": "bid", "symbol": "SIRI", "side": "SIDE_BUY", "type": "ORDER_TYPE_LIMIT",
                           "quantity": "10", "limit_price": "0.85", "time_in_force": "TIME_IN_FORCE_GTC"}, account)
    assert status == 200 and placed["order"]["status"] in ("ORDER_STATUS_PENDING_NEW", "ORDER_STATUS_NEW"), placed
    order_id = placed["order"]["order_id"]
    host, port = mesh.endpoint.rsplit(":", 1)
    headers = {"content-type": "application/json", "authorization": f"Bearer {mesh.token(seller)}"}
    try:
        conn = http.client.HTTPConnection(host, int(port), timeout=15)
        conn.request("POST", "/stockmesh.quote.v1.QuoteService/StreamQuotes", json.dumps({"symbols": ["NOPE"]}), headers)
        bad = conn.getresponse()
        assert bad.status == 400 and json.loads(bad.read())["code"] == 3
        conn.close()

        first = None
        for _ in range(50):  # until the engine's book event has reached quote_svc
            conn = http.client.HTTPConnection(host, int(port), timeout=15)
            conn.request("POST", "/stockmesh.quote.v1.QuoteService/StreamQuotes", json.dumps({"symbols": ["SIRI"]}),
                         headers)
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("content-type", "").startswith("application/json")
            text = ""
            while first is None:
                chunk = resp.read1(4096).decode()
                assert chunk, "the stream ended"
                text += chunk
                try:
                    first, _ = json.JSONDecoder().raw_decode(text.lstrip().removeprefix("[").lstrip(","))
                except ValueError:
                    continue
            conn.close()
            if first.get("bid_price") and Decimal(first["bid_price"]) == Decimal("0.85"):
                break
            first = None
        assert first is not None and (first["symbol"], Decimal(first["bid_price"]), first["bid_size"]) == (
            "SIRI", Decimal("0.85"), "10")
    finally:
        status, _ = post(mesh, "/stockmesh.order.v1.OrderService/CancelOrder", {"order_id": order_id}, account)
        assert status == 200

    def cancelled() -> bool:  # order_svc and the ledger each apply the engine's CANCELLED
        got = post(mesh, "/stockmesh.order.v1.OrderService/GetOrder", {"order_id": order_id}, account)[1]
        cash = post(mesh, "/stockmesh.ledger.v1.LedgerService/GetPortfolio", {}, account)[1]["portfolio"]["cash"]
        return got["order"]["status"] == "ORDER_STATUS_CANCELLED" and cash["held"] == "0.00"

    assert asyncio.run(eventually(cancelled, timeout=15, delay=0.1))


def test_json_order_stream_refuses_a_sequence_past_the_accounts_latest(mesh):
    """StreamOrderUpdates as JSON from a sequence the account has not reached (kept from another
    account, or from before a restore): a 400 at once with OUT_OF_RANGE and the latest sequence
    in its ErrorInfo, not a stream that stays open and silent; from that latest it opens."""
    account = f"json-o-{uuid.uuid4().hex[:6]}"
    status, placed = post(mesh, "/stockmesh.order.v1.OrderService/PlaceOrder",
                          {"client_order_id": "unfunded", "symbol": "KO", "side": "SIDE_BUY",
                           "type": "ORDER_TYPE_LIMIT", "quantity": "1", "limit_price": "60.00",
                           "time_in_force": "TIME_IN_FORCE_DAY"}, account)
    assert status == 200 and placed["order"]["status"] == "ORDER_STATUS_REJECTED", placed  # sequence 1
    # By its id in capitals (round 26 explorer: reported left out over JSON; found over gRPC).
    status, listed = post(mesh, "/stockmesh.order.v1.OrderService/ListOrders",
                          {"order_ids": [placed["order"]["order_id"].upper()]}, account)
    assert status == 200 and [o["order_id"] for o in listed["orders"]] == [placed["order"]["order_id"]], listed
    path = "/stockmesh.order.v1.OrderService/StreamOrderUpdates"
    status, error = post(mesh, path, {"after_sequence": "100000"}, account)
    assert status == 400 and isinstance(error, dict) and error["code"] == 11, error  # OUT_OF_RANGE
    info = next(d for d in error["details"] if d["@type"].endswith("google.rpc.ErrorInfo"))
    assert info["reason"] == "AFTER_SEQUENCE_AHEAD" and info["metadata"]["latestSequence"] == "1", info

    conn = http.client.HTTPConnection(*mesh.endpoint.rsplit(":", 1), timeout=15)
    try:
        conn.request("POST", path, json.dumps({"after_sequence": info["metadata"]["latestSequence"]}),
                     {"content-type": "application/json", "authorization": f"Bearer {mesh.token(account)}"})
        resp = conn.getresponse()  # the stream's headers come once it listens; it stays open
        assert resp.status == 200 and resp.getheader("x-stockmesh-after-sequence") == "1", resp.getheaders()
    finally:
        conn.close()


def grpc_web(mesh, path: str, message, account: str,
             extra_headers: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    """A gRPC-Web unary call (binary, as a browser client sends it): the reply message's bytes
    and the trailers, read from the response body's frames (or, for a trailers-only reply such
    as an error, from its headers)."""
    body = message.SerializeToString()
    conn = http.client.HTTPConnection(*mesh.endpoint.rsplit(":", 1), timeout=15)
    try:
        conn.request("POST", path, b"\x00" + len(body).to_bytes(4, "big") + body,
                     {"content-type": "application/grpc-web+proto", "x-grpc-web": "1",
                      "authorization": f"Bearer {mesh.token(account)}", **(extra_headers or {})})
        resp = conn.getresponse()
        assert resp.status == 200, resp.status
        data = resp.read()
        trailers_only = {k: v for k, v in resp.getheaders() if k.lower() in ("grpc-status", "grpc-message")}
    finally:
        conn.close()
    reply, trailers = b"", trailers_only
    while data:
        flag, size = data[0], int.from_bytes(data[1:5], "big")
        frame, data = data[5:5 + size], data[5 + size:]
        if flag & 0x80:
            trailers = dict(line.split(":", 1) for line in frame.decode().split("\r\n") if line)
        else:
            reply = frame
    return reply, {k.strip().lower(): v.strip() for k, v in trailers.items()}


def test_grpc_web_order_commands_through_envoy(mesh):
    """A browser's gRPC-Web PlaceOrder and its error: gRPC-Web commands go to order_svc's gRPC
    port (gRPC clients' commands take Envoy's reverse bridge), with the same replies and errors."""
    from stockmesh.common.v1 import common_pb2
    from stockmesh.order.v1 import order_service_pb2 as pb

    account = f"web-{uuid.uuid4().hex[:6]}"
    status, _ = post(mesh, "/stockmesh.ledger.v1.LedgerService/Deposit", {"amount": "500.00", "idempotency_key": "w"},
                     account)
    assert status == 200
    request = pb.PlaceOrderRequest(client_order_id="web-1", symbol="KO", side=common_pb2.SIDE_BUY,
                                   type=common_pb2.ORDER_TYPE_LIMIT, quantity=2, limit_price="60.00",
                                   time_in_force=common_pb2.TIME_IN_FORCE_GTC)
    reply, trailers = grpc_web(mesh, "/stockmesh.order.v1.OrderService/PlaceOrder", request, account)
    assert trailers["grpc-status"] == "0", trailers
    order = pb.PlaceOrderResponse.FromString(reply).order
    assert (order.client_order_id, order.account_id, order.status) == ("web-1", account, common_pb2.ORDER_STATUS_NEW)

    request.quantity = 3  # the same client_order_id for another order
    reply, trailers = grpc_web(mesh, "/stockmesh.order.v1.OrderService/PlaceOrder", request, account)
    assert trailers["grpc-status"] == "6" and reply == b"", trailers  # ALREADY_EXISTS
    assert "web-1" in urllib.parse.unquote(trailers["grpc-message"])


def test_a_browser_app_on_another_origin_calls_through_envoy(mesh):
    """CORS as `stockmesh up` sets it (development: this machine's pages, any port): a web app
    on http://localhost:5173 has its preflight answered without a token (its own x-request-id
    allowed), then calls with JSON and gRPC-Web and may read the replies' status and
    x-stockmesh-* headers (StreamOrderUpdates says where it starts); another origin's page gets
    no CORS approval. Every reply says `vary: Origin`, for the caches between."""
    from stockmesh.order.v1 import order_service_pb2 as pb

    app = "http://localhost:5173"
    account = f"cors-{uuid.uuid4().hex[:6]}"
    path = "/stockmesh.order.v1.OrderService/StreamOrderUpdates"

    def request(method: str, headers: dict[str, str], body: bytes = b"") -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection(*mesh.endpoint.rsplit(":", 1), timeout=15)
        conn.request(method, path, body=body or None, headers=headers)
        return conn.getresponse()

    def names(header: str | None) -> set[str]:
        return {name.strip().lower() for name in (header or "").split(",") if name.strip()}

    sent = "authorization,content-type,x-grpc-web,x-request-id"
    for origin, allowed in ((app, True), ("https://elsewhere.example", False)):
        resp = request("OPTIONS", {"origin": origin, "access-control-request-method": "POST",
                                   "access-control-request-headers": sent})
        resp.read()
        assert resp.status == 200 and (resp.getheader("access-control-allow-origin") == origin) is allowed, \
            resp.getheaders()
        assert names(sent) <= names(resp.getheader("access-control-allow-headers")), resp.getheaders()
        assert "origin" in names(resp.getheader("vary")), resp.getheaders()

    body = pb.StreamOrderUpdatesRequest(from_now=True).SerializeToString()
    resp = request("POST", {"origin": app, "content-type": "application/grpc-web+proto", "x-grpc-web": "1",
                            "x-request-id": f"page-{uuid.uuid4().hex[:8]}",
                            "authorization": f"Bearer {mesh.token(account)}"},
                   b"\x00" + len(body).to_bytes(4, "big") + body)
    try:  # the stream's headers come once it listens; it stays open
        assert resp.status == 200 and resp.getheader("access-control-allow-origin") == app, resp.getheaders()
        assert resp.getheader("x-stockmesh-after-sequence") == "0", resp.getheaders()
        exposed = {h.strip() for h in resp.getheader("access-control-expose-headers", "").split(",")}
        assert {"x-stockmesh-after-sequence", "grpc-status", "grpc-message"} <= exposed, exposed
        assert "origin" in names(resp.getheader("vary")), resp.getheaders()
    finally:
        resp.close()

    status, _ = post(mesh, "/stockmesh.ledger.v1.LedgerService/GetPortfolio", {})
    assert status == 401


def test_a_query_string_is_ignored_as_browsers_cache_busters_send_it(mesh):
    """`?_=<timestamp>` (jQuery's and others' cache-buster) or any other query parameter: the
    call is the same call (acceptance round 10: 503 "not answering ... retry shortly", forever)."""
    account = f"json-{uuid.uuid4().hex[:6]}"
    for query in ("?_=1733470000000", "?anything=x&_=2"):
        status, reply = post(mesh, f"/stockmesh.ledger.v1.LedgerService/GetPortfolio{query}", {}, account)
        assert status == 200, (query, status, reply)
        assert reply["portfolio"]["account_id"] == account
    # Nor does a query parameter named like a field set it: every field comes from the body.
    status, reply = post(mesh, "/stockmesh.ledger.v1.LedgerService/Deposit?amount=999.00&idempotency_key=q",
                         {"amount": "1.00", "idempotency_key": "b"}, account)
    assert status == 200 and reply["cash"]["total"] == "1.00", reply


def test_the_token_is_read_from_the_authorization_header_only(mesh):
    """Not from an access_token query parameter (Envoy's other default location), which would
    leave it in browser histories, Referer headers and proxies' logs."""
    account = f"json-{uuid.uuid4().hex[:6]}"
    status, reply = post(mesh, "/stockmesh.ledger.v1.LedgerService/GetPortfolio?access_token="
                         + mesh.token(account), {})
    assert status == 401, (status, reply)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_a_public_method_asked_without_post_says_to_post(mesh, method):
    """405 with `allow: POST` and a JSON status saying how to call it (acceptance round 10: a
    404 that called GetPortfolio "not a public method")."""
    account = f"json-{uuid.uuid4().hex[:6]}"
    req = urllib.request.Request(f"http://{mesh.endpoint}/stockmesh.ledger.v1.LedgerService/GetPortfolio?_=1",
                                 headers={"authorization": f"Bearer {mesh.token(account)}"}, method=method)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=15)
    assert (err.value.code, err.value.headers["allow"]) == (405, "POST")
    reply = json.loads(err.value.read())
    assert reply["message"] == (f"/stockmesh.ledger.v1.LedgerService/GetPortfolio?_=1 is called with POST (a JSON "
                                f"body, gRPC or gRPC-Web), not {method}")
    assert reply["details"][0]["reason"] == "METHOD_NOT_ALLOWED"
    # An internal service's path is still no public method, whatever the HTTP method.
    req = urllib.request.Request(f"http://{mesh.endpoint}/stockmesh.ledger.v1.HoldService/GetHold",
                                 headers={"authorization": f"Bearer {mesh.token(account)}"}, method=method)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=15)
    assert err.value.code == 404


def test_a_json_error_carries_no_channel_pushback(mesh):
    """Review of round 26: the services' grpc-retry-pushback-ms (for their channels to each
    other) came out as a header of every JSON error."""
    req = urllib.request.Request(f"http://{mesh.endpoint}/stockmesh.order.v1.OrderService/GetOrder",
                                 data=json.dumps({"order_id": str(uuid.uuid4())}).encode(),
                                 headers={"content-type": "application/json",
                                          "authorization": f"Bearer {mesh.token('json-pushback')}"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(req, timeout=15)
    headers = {k.lower() for k in failed.value.headers.keys()}
    assert failed.value.code == 404 and "grpc-retry-pushback-ms" not in headers, headers
