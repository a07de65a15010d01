"""The customer's side of the `stockmesh` command line (MISSION F8): deposit and withdraw, place,
replace, cancel and list orders, watch quotes and order updates live, show the portfolio,
draw a candle chart. Every command is a plain client of the public API through Envoy, with a
token for --account minted from the mesh's development keys (or --token), so it sees exactly
what any customer's application sees.

Where the mesh is: --address (Envoy, HOST:PORT), else the `endpoint` of the mesh running in
--data-dir (its mesh.json)."""
from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterable

import click

from meshkit.config import default_data_dir
from meshkit.symbols import tick_size


class Client:
    """A channel to Envoy and the metadata of one account's token."""

    def __init__(self, address: str, token: str, timeout: float, mint: Callable[[], str] | None = None) -> None:
        import grpc

        from meshkit.channels import RECONNECT_OPTIONS

        self.timeout = timeout
        self.mint = mint  # makes a fresh token, when this client minted its own
        # Reconnects within a second of the mesh being back, as the services do: gRPC's own
        # backoff grows to two minutes, and a watch came back up to 25 s after a restarted mesh
        # was ready, near its give-up (round 17).
        self.channel = grpc.insecure_channel(address, options=list(RECONNECT_OPTIONS))
        self.metadata = (("authorization", f"Bearer {token}"),)

    def call(self, stub_class, method: str, request, *, doing: str | None = None, retry: str | None = None):
        """One unary call; a failure is printed (code, reason, field violations) as the failure
        of `doing` (the command's own RPC, when this call only prepares it), with `retry` (how to
        send it again safely: the key it was sent with), and exits 1."""
        import grpc

        try:
            return getattr(stub_class(self.channel), method)(request, metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as exc:
            fail(exc, doing or method, retry)
        except KeyboardInterrupt:
            if retry:  # sent, perhaps applied: the key made up here is the only safe way again (review)
                click.echo(f"{doing or method}: interrupted, its outcome unknown; to send it again safely: {retry}",
                           err=True)
            raise

    # How long a watch keeps opening its stream again while it is UNAVAILABLE (a service
    # restarting, a rolling deploy) before it gives up.
    RECONNECT_PATIENCE = 120.0

    def stream(self, stub_class, method: str, request, resume=None, on_open=None) -> Iterable:
        """A server stream, iterated; a failure is printed and exits 1 (Ctrl-C: meshkit.cli.interrupted).
        With `resume` ((the ending stream's ErrorInfo or None, its response headers) -> the request
        to open it again with), a
        stream that ends UNAVAILABLE (its service shutting down or restarting: what the server
        asks its clients to do) or is reset (its service killed) is opened again, said on stderr,
        for up to RECONNECT_PATIENCE seconds of failing in a row. A first open that finds no mesh
        fails at once. `on_open()` is called once, when the service has taken the stream (its
        headers, or its first message, came): a request it refuses never gets that far."""
        import time

        import grpc

        from meshkit.status import error_info

        failing_since: float | None = None
        streamed = False  # a stream has been open: an UNAVAILABLE now is a restart, not a wrong address
        while True:
            call = getattr(stub_class(self.channel), method)(request, metadata=self.metadata)
            try:
                if any(k.startswith("x-stockmesh-") for k, _ in call.initial_metadata() or ()):
                    # Open again (its headers say where it starts or what it sends): a stream
                    # quiet for longer than the patience is not failing (review of round 24: a
                    # watch of a quiet account exited at its second token's end, an hour on).
                    failing_since = None
                    on_open = _called(on_open)
                for message in call:
                    failing_since, streamed = None, True
                    on_open = _called(on_open)
                    yield message
                return
            except grpc.RpcError as exc:
                if exc.code() is grpc.StatusCode.CANCELLED:
                    return
                now = time.monotonic()
                info, _ = error_info(exc)
                headers = dict(call.initial_metadata() or ())  # none: it never opened
                # A stream of ours opened (its headers name where it starts or what it sends),
                # not a proxy's answer for a wrong address.
                opened = any(k.startswith("x-stockmesh-") for k in headers)
                # Envoy answering that the service is not (yet) there: a mesh, restarting it
                # (round 17: a watch opened just as order_svc was killed exited at once).
                restarting = exc.code() is grpc.StatusCode.UNAVAILABLE and not _no_connection(exc)
                streamed = streamed or opened or restarting or (info is not None and info.reason == "SHUTTING_DOWN")
                # A service killed outright (kill -9, a crash) resets its streams, and Envoy
                # resets the client's: INTERNAL "Received RST_STREAM", a broken connection, not
                # an answer. The launcher (or the orchestrator) brings the service back.
                # A stream outlives no token (round 24): one this client minted is minted anew.
                expired = self.mint is not None and info is not None and info.reason == "TOKEN_EXPIRED"
                broken = expired or exc.code() is grpc.StatusCode.UNAVAILABLE or (
                    exc.code() is grpc.StatusCode.INTERNAL and "RST_STREAM" in (exc.details() or ""))
                if resume is None or not broken or not streamed or (
                        failing_since is not None and now - failing_since > self.RECONNECT_PATIENCE):
                    fail(exc, method)
                if failing_since is None:
                    failing_since = now
                    click.echo(f"({method} ended: {exc.details()}; opening it again)", err=True)
                request = resume(info, headers)
                if self.mint is not None:  # a watch outlives its token (an hour): a fresh one each time
                    self.metadata = (("authorization", f"Bearer {self.mint()}"),)  # (round 18: "Jwt is expired")
                time.sleep(min(2.0, 0.2 + (now - failing_since) / 10))
            finally:
                call.cancel()


def _called(callback) -> None:
    """Calls `callback`, if any, once: returns what is left to call (nothing)."""
    if callback is not None:
        callback()


def _no_connection(exc) -> bool:
    """Whether a call failed for want of any connection (nothing was sent: gRPC's words for it),
    not for a connection reset mid-call, after which a write may have been applied (the diff
    review of round 18)."""
    import grpc

    return exc.code() is grpc.StatusCode.UNAVAILABLE and "failed to connect" in (exc.details() or "").lower()


def _outcome_unknown_or_passing():
    import grpc

    S = grpc.StatusCode
    return {S.UNAVAILABLE, S.DEADLINE_EXCEEDED, S.RESOURCE_EXHAUSTED, S.ABORTED, S.INTERNAL, S.UNKNOWN, S.CANCELLED}


def fail(exc, method: str, retry: str | None = None):
    """Print a failed call as every command does (its status, reason and each field violation,
    or that no mesh answers there; with `retry`, how to send it again safely) and exit 1."""

    from meshkit.status import error_info

    code = exc.code()
    if _no_connection(exc):
        click.echo(f"{method}: no mesh answers there ({exc.details()}); is `stockmesh up` running?", err=True)
        sys.exit(1)
    info, bad = error_info(exc)
    reason = f" [{info.reason}]" if info is not None and info.reason and info.reason != code.name else ""
    violations = [f"{v.field}: {v.description}" for v in (bad.field_violations if bad is not None else ())]
    details = exc.details() or ""
    # The message is the violations themselves when there is one (round 18: said twice).
    click.echo(f"{method} failed: {code.name}{reason}" + ("" if violations == [details] else f": {details}"), err=True)
    for v in violations:
        click.echo(f"  {v}", err=True)
    if info is not None and info.reason == "AFTER_SEQUENCE_AHEAD" and info.metadata.get("latestSequence"):
        # The server speaks of its field (round 25 explorer: "after_sequence = 10" to a user of --after).
        click.echo(f"  watch again with --after {info.metadata['latestSequence']} (or lower, to replay more)",
                   err=True)
    if retry and code in _outcome_unknown_or_passing():  # the write may have been applied, or may pass later
        # A key made up here is shown: the safe retry the message speaks of needs it (round 18).
        # Not after a refusal that sending it again cannot change (round 25 explorer: after
        # ORDER_NOT_ACTIVE), nor as a command line missing its --account or --data-dir.
        click.echo(f"  to send it again safely: {retry}", err=True)
    sys.exit(1)


def mesh_state(data_dir: Path, address_hint: str) -> dict:
    """The state (mesh.json) of the mesh `stockmesh up` runs in `data_dir`; none there is a usage
    error that says to start one or to pass --address (`address_hint`: whose address)."""
    try:
        state = json.loads((data_dir / "mesh.json").read_text())
        if isinstance(state, dict):
            return state
    except (OSError, ValueError):
        pass
    raise click.UsageError(f"no running mesh in {data_dir} (mesh.json); start one with `stockmesh up` "
                           f"or pass --address HOST:PORT of {address_hint}")


def _endpoint(data_dir: Path) -> str:
    state = mesh_state(data_dir, "Envoy")
    if not state.get("endpoint"):
        raise click.UsageError(f"the mesh in {data_dir} is not ready yet (mesh.json has no endpoint)")
    return state["endpoint"]


# The largest numbers the messages' integer fields hold: larger is a usage error, not a
# protobuf ValueError's traceback (round 18).
INT64_MAX, INT32_MAX = 2**63 - 1, 2**31 - 1


def _not_empty(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A key or id given empty (an unset shell variable) is a mistake, not "make one up": a
    retry would make up another, and do it again (round 18)."""
    if value is not None and not value.strip():
        raise click.BadParameter("must not be empty (leave the option out for a new one)")
    return value


def account_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An --account option's check (every command that mints a token for one): a usage error
    (exit 2), not a traceback, for an id no service would take."""
    from meshkit.auth import account_problem

    problem = None if value is None else account_problem(value)
    if problem:
        raise click.BadParameter(problem)
    return value


def client_options(f):
    """--account, --token, --address, --data-dir, --timeout: who calls, and where."""
    for option in reversed([
        click.option("--account", envvar="STOCKMESH_ACCOUNT", default=None, callback=account_id,
                     help="Account to act as (a development token is minted for it). [env STOCKMESH_ACCOUNT]"),
        click.option("--token", envvar="STOCKMESH_TOKEN", default=None,
                     help="A bearer token to use instead of minting one. [env STOCKMESH_TOKEN]"),
        click.option("--address", envvar="STOCKMESH_ADDRESS", default=None,
                     help="Envoy's public address HOST:PORT (default: the mesh in --data-dir). [env STOCKMESH_ADDRESS]"),
        click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Data folder of a running `stockmesh up`. Default: $STOCKMESH_DATA_DIR, else ./.stockmesh"),
        click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
                     help="Seconds to wait for each call."),
    ]):
        f = option(f)
    return f


def mint_token(folder: Path, account: str, ttl: int) -> str:
    """A development token signed with the keys in `folder` (made there if missing); a folder
    that cannot hold them, or a key that cannot be read, is one line, exit 1, not a traceback
    (round 18)."""
    from meshkit.launcher import keys

    try:
        return keys.mint_token(folder, account, ttl=ttl)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot sign a token with the keys in {keys.keys_dir(folder)}: "
                                   f"{type(exc).__name__}: {exc}") from None


def _client(account: str | None, token: str | None, address: str | None, data_dir: Path | None,
            timeout: float, *, need_account: bool = True) -> Client:
    folder = (data_dir or default_data_dir()).resolve()
    if token is None:
        if not account:
            if need_account:
                raise click.UsageError("say who you are: --account NAME (or --token, or STOCKMESH_ACCOUNT)")
            account = "viewer"  # market data needs a token, not a particular account
        from meshkit.launcher import keys

        if not (keys.keys_dir(folder) / "private.pem").exists():
            if address is None:
                _endpoint(folder)  # the clearer message: no mesh here at all
            # A key pair made here would sign tokens no mesh accepts (round 15: Envoy's raw
            # "Jwks doesn't have key to match kid", and a stray key pair left behind).
            raise click.UsageError(f"no keys in {folder} to sign a token for the mesh at {address}: pass --data-dir "
                                   "of that mesh (where `stockmesh up` keeps its keys), or --token")
        def mint() -> str:
            return mint_token(folder, account, 3600)
        return Client(address or _endpoint(folder), mint(), timeout, mint)
    return Client(address or _endpoint(folder), token, timeout)


def _decimal(text: str, what: str, *, cash: bool = False) -> str:
    """A decimal string as typed, checked here as the server checks it (meshkit.money's parsing:
    a cash amount, or else a price) for a friendlier message, in the plain notation the server
    takes: "1e3", " 5", "1,000", a negative price, a thousandth of a cent or an amount past the
    API's largest are usage errors here (exit 2), as "abc" is (round 17: they went to the server
    and came back INVALID_ARGUMENT, exit 1; round 25 explorer: some still did)."""
    from meshkit.errors import Violations
    from meshkit.money import MAX_PRICE, parse_cash, parse_decimal
    from meshkit.symbols import on_tick, tick_size

    v = Violations()
    if cash:
        parse_cash(text, what, v)
    elif (price := parse_decimal(text, what, v, places=4, maximum=MAX_PRICE)) is not None and not on_tick(price):
        v.add(what, f"must be a multiple of the tick size {tick_size(price)}")  # review: as order_svc's mapping
    if v.items:
        raise click.BadParameter(f"{text!r} {v.items[0].description.split(', got ')[0]}", param_hint=what)
    return text


def _enum_name(enum, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix)


def _when(ts) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return ts.ToDatetime(tzinfo=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def order_line(o) -> str:
    from stockmesh.common.v1 import common_pb2 as c

    price = o.limit_price or "MKT"
    if o.stop_price:
        price = f"{price} stop {o.stop_price}" + (" (triggered)" if o.HasField("triggered_at") else "")
    status = _enum_name(c.OrderStatus, o.status, "ORDER_STATUS_")
    extra = ""
    if o.filled_quantity:
        extra += f"  filled {o.filled_quantity} @ {o.average_fill_price}"
    if o.reject_message or (o.end_message and not o.replaced_by):
        extra += f"  ({o.reject_message or o.end_message})"
    if o.replaced_by:
        extra += f"  replaced by {o.replaced_by}"
    return (f"{o.order_id}  {status:<16} {_enum_name(c.Side, o.side, 'SIDE_'):<4} {o.quantity:>6} {o.symbol:<6} "
            f"{_enum_name(c.OrderType, o.type, 'ORDER_TYPE_'):<10} {price:<12} "
            f"{_enum_name(c.TimeInForce, o.time_in_force, 'TIME_IN_FORCE_'):<4} {o.client_order_id}{extra}")


def _check_prices(**prices: str | None) -> None:
    for option, value in prices.items():
        if value is not None:
            _decimal(value, f"--{option}")


def _same_price(given: str | None, current: str) -> bool:
    """Whether a price option leaves the order's price as it is: not given, or the same number
    ("186.5" is "186.50"; compared as Decimals, never floats). A price the order has none of
    (a --stop for a limit order) is a change."""
    return given is None or (current != "" and Decimal(given) == Decimal(current))


def _show_order(order) -> None:
    """Print a new order; REJECTED by the business checks exits 3: recorded, and refused
    (distinct from a failed call, 1, and bad usage, 2)."""
    from stockmesh.common.v1 import common_pb2 as c

    click.echo(order_line(order))
    if order.status == c.ORDER_STATUS_REJECTED:
        sys.exit(3)


def _timestamp(when: datetime):
    from google.protobuf import timestamp_pb2

    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def register(main: click.Group) -> None:
    """Add the customer commands to the `stockmesh` group."""

    def cash_command(method: str, doc: str) -> None:
        # "-5" is an amount to refuse for its sign, not an unknown option.
        @main.command(method.lower(), help=doc, context_settings={"ignore_unknown_options": True})
        @click.argument("amount")
        @click.option("--key", "idempotency_key", default=None, callback=_not_empty,
                      help="Idempotency key: the same key again changes nothing (default: a new one).")
        @client_options
        def command(amount: str, idempotency_key: str | None, **where) -> None:
            from stockmesh.ledger.v1 import ledger_service_pb2 as pb, ledger_service_pb2_grpc

            from meshkit.money import fmt_cents

            key = idempotency_key or uuid.uuid4().hex
            _decimal(amount, "AMOUNT", cash=True)
            request = getattr(pb, f"{method}Request")(amount=amount, idempotency_key=key)
            cash = _client(**where).call(ledger_service_pb2_grpc.LedgerServiceStub, method, request,
                                         retry=f"the same command with --key {key}").cash
            click.echo(f"{method.lower()} of {fmt_cents(Decimal(amount))} done (key {key})")
            click.echo(f"cash: total {cash.total}  available {cash.available}  held {cash.held}")

    cash_command("Deposit", "Deposit AMOUNT of cash into the account: stockmesh deposit 1000.00")
    cash_command("Withdraw", "Withdraw AMOUNT of available cash from the account.")

    @main.command()
    @click.argument("side", type=click.Choice(["buy", "sell"], case_sensitive=False))
    @click.argument("quantity", type=click.IntRange(1, INT64_MAX))
    @click.argument("symbol")
    @click.option("--limit", "limit_price", default=None, help="Limit price (a LIMIT order; with --stop, STOP_LIMIT).")
    @click.option("--stop", "stop_price", default=None, help="Stop price (a STOP order; with --limit, STOP_LIMIT).")
    @click.option("--tif", type=click.Choice(["day", "gtc", "ioc", "fok"], case_sensitive=False), default=None,
                  help="Time in force.  [default: day; ioc for a market order]")
    @click.option("--client-order-id", default=None, callback=_not_empty,
                  help="Your id for the order: sending it again returns the same order (default: a new one).")
    @client_options
    def place(side: str, quantity: int, symbol: str, limit_price: str | None, stop_price: str | None,
              tif: str | None, client_order_id: str | None, **where) -> None:
        """Place an order: stockmesh place buy 10 AAPL --limit 187.25

        No price: a MARKET order. The reply is the order as recorded: NEW (held and on its way
        to the book), or REJECTED with the reason (exit status 3)."""
        from stockmesh.common.v1 import common_pb2 as c
        from stockmesh.order.v1 import order_service_pb2 as pb, order_service_pb2_grpc

        _check_prices(limit=limit_price, stop=stop_price)
        kind = {(False, False): "MARKET", (True, False): "LIMIT", (False, True): "STOP",
                (True, True): "STOP_LIMIT"}[(limit_price is not None, stop_price is not None)]
        tif = (tif or ("ioc" if kind == "MARKET" else "day")).upper()
        client_order_id = client_order_id or uuid.uuid4().hex
        request = pb.PlaceOrderRequest(
            client_order_id=client_order_id, symbol=symbol.upper(),
            side=c.Side.Value(f"SIDE_{side.upper()}"), type=c.OrderType.Value(f"ORDER_TYPE_{kind}"),
            quantity=quantity, limit_price=limit_price or "", stop_price=stop_price or "",
            time_in_force=c.TimeInForce.Value(f"TIME_IN_FORCE_{tif}"))
        _show_order(_client(**where).call(order_service_pb2_grpc.OrderServiceStub, "PlaceOrder", request,
                                          retry=f"the same command with --client-order-id {client_order_id}").order)

    @main.command()
    @click.argument("order_id")
    @client_options
    def cancel(order_id: str, **where) -> None:
        """Ask to cancel ORDER_ID; it turns CANCELLED when the engine confirms (see `watch orders`).
        An order already cancelled is left as it is (said so; exit 0); one that ended otherwise
        (filled, expired, rejected) cannot be cancelled (FAILED_PRECONDITION; exit 1)."""
        from stockmesh.common.v1 import common_pb2 as c
        from stockmesh.order.v1 import order_service_pb2 as pb, order_service_pb2_grpc

        reply = _client(**where).call(order_service_pb2_grpc.OrderServiceStub, "CancelOrder",
                                      pb.CancelOrderRequest(order_id=order_id))
        click.echo(order_line(reply.order))
        if reply.order.status == c.ORDER_STATUS_CANCELLED:
            click.echo("already cancelled: nothing to do")
        else:
            click.echo("cancel requested")

    @main.command()
    @click.argument("order_id")
    @click.option("--quantity", type=click.IntRange(1, INT64_MAX), default=None,
                  help="The new total quantity (what is filled included).  [default: unchanged]")
    @click.option("--limit", "limit_price", default=None, help="The new limit price.  [default: unchanged]")
    @click.option("--stop", "stop_price", default=None, help="The new stop price.  [default: unchanged]")
    @click.option("--client-order-id", default=None, callback=_not_empty,
                  help="Your id for the new order (default: a new one).")
    @client_options
    def replace(order_id: str, quantity: int | None, limit_price: str | None, stop_price: str | None,
                client_order_id: str | None, **where) -> None:
        """Replace a working order's quantity or prices: stockmesh replace ORDER_ID --limit 186.50

        The reply is the new order; the old one ends CANCELLED (replaced by it) when the engine
        confirms, its hold moved to the new order. Values that change nothing (the order's own:
        --limit 186.5 of an order at 186.50) are a usage error, and nothing is sent."""
        from stockmesh.order.v1 import order_service_pb2 as pb, order_service_pb2_grpc

        if quantity is None and limit_price is None and stop_price is None:
            raise click.UsageError("say what changes: --quantity, --limit and/or --stop")
        _check_prices(limit=limit_price, stop=stop_price)
        client = _client(**where)
        old = client.call(order_service_pb2_grpc.OrderServiceStub, "GetOrder",  # what it changes
                          pb.GetOrderRequest(order_id=order_id), doing="ReplaceOrder").order
        # Every value given already the order's: a new order id, its hold moved and a trip
        # through the engine, for nothing (round 19). The server refuses it too (INVALID_ARGUMENT
        # REPLACE_CHANGES_NOTHING, model.check_changes_something, round 23), for every client;
        # refused here, with the order in hand, before ReplaceOrder is sent and in the words typed.
        if (quantity in (None, old.quantity) and _same_price(limit_price, old.limit_price)
                and _same_price(stop_price, old.stop_price)):
            said = [f"quantity {old.quantity}"] * (quantity is not None) + [
                f"{name} price {price}" for name, given, price in (("limit", limit_price, old.limit_price),
                                                                  ("stop", stop_price, old.stop_price))
                if given is not None]
            raise click.UsageError(f"nothing would change: order {order_id} has {' and '.join(said)} already")
        client_order_id = client_order_id or uuid.uuid4().hex
        reply = client.call(order_service_pb2_grpc.OrderServiceStub, "ReplaceOrder", pb.ReplaceOrderRequest(
            order_id=order_id, client_order_id=client_order_id,
            quantity=quantity or old.quantity, limit_price=old.limit_price if limit_price is None else limit_price,
            stop_price=old.stop_price if stop_price is None else stop_price),
            retry=f"the same command with --client-order-id {client_order_id}")
        _show_order(reply.order)

    @main.command()
    @click.option("--symbol", default=None, help="Only this symbol's orders.")
    @click.option("--open", "open_only", is_flag=True,
                  help="Only orders still live (PENDING_NEW, NEW, PARTIALLY_FILLED), as the portfolio lists them.")
    @click.option("--limit", type=click.IntRange(1, INT32_MAX), default=50, show_default=True, help="At most this many.")
    @client_options
    def orders(symbol: str | None, open_only: bool, limit: int, **where) -> None:
        """List the account's orders, newest first."""
        from stockmesh.common.v1 import common_pb2 as c
        from stockmesh.order.v1 import order_service_pb2 as pb, order_service_pb2_grpc

        client = _client(**where)
        # A replacement waiting for the engine (PENDING_NEW) is live too: it holds its reserve and
        # will be worked (round 19: --open left it out, the portfolio's open orders did not).
        statuses = [c.ORDER_STATUS_PENDING_NEW, c.ORDER_STATUS_NEW, c.ORDER_STATUS_PARTIALLY_FILLED] if open_only else []
        shown, token = 0, ""
        while shown < limit:
            reply = client.call(order_service_pb2_grpc.OrderServiceStub, "ListOrders", pb.ListOrdersRequest(
                symbol=(symbol or "").upper(), statuses=statuses, page_size=min(100, limit - shown), page_token=token))
            for o in reply.orders:
                click.echo(order_line(o))
            shown += len(reply.orders)
            token = reply.next_page_token
            if not token:
                break
        if shown == 0:
            click.echo("no orders")
        elif token:  # stopped at --limit with more to show (said on stderr: stdout stays the orders)
            click.echo(f"(the newest {shown} shown; there are more: --limit N shows more)", err=True)

    @main.command()
    @client_options
    def portfolio(**where) -> None:
        """Cash, positions at the latest quotes, equity and open orders."""
        from stockmesh.ledger.v1 import ledger_service_pb2 as pb, ledger_service_pb2_grpc

        p = _client(**where).call(ledger_service_pb2_grpc.LedgerServiceStub, "GetPortfolio",
                                  pb.GetPortfolioRequest()).portfolio
        click.echo(f"account {p.account_id}  as of {_when(p.as_of)} UTC")
        cash = p.cash
        click.echo(f"cash      total {cash.total}  available {cash.available}  held {cash.held}  "
                   f"settled {cash.settled}  unsettled {cash.unsettled}")
        if p.positions:
            click.echo(f"{'symbol':<7}{'qty':>8}{'avail':>8}{'held':>7}{'avg cost':>14}{'price':>12}"
                       f"{'value':>16}{'unrealized':>14}")
            for s in p.positions:
                click.echo(f"{s.symbol:<7}{s.quantity:>8}{s.available:>8}{s.held:>7}{s.average_cost:>14}"
                           f"{s.market_price or '-':>12}{s.market_value or '-':>16}{s.unrealized_pnl or '-':>14}")
        else:
            click.echo("no positions")
        click.echo(f"equity    {p.equity}")
        if p.open_orders:
            click.echo(f"open orders ({len(p.open_orders)}):")
            for o in p.open_orders:
                click.echo("  " + order_line(o))

    @main.group()
    def watch() -> None:
        """Follow live streams until Ctrl-C (or --count)."""

    @watch.command("quotes")
    @click.argument("symbols", nargs=-1, required=True)
    @click.option("--count", type=click.IntRange(min=1), default=None,
                  help="Stop after this many quotes (the snapshot of each symbol counts).")
    @client_options
    def watch_quotes(symbols: tuple[str, ...], count: int | None, **where) -> None:
        """Print each symbol's quote, then every change: stockmesh watch quotes AAPL MSFT"""
        from stockmesh.quote.v1 import quote_service_pb2 as pb, quote_service_pb2_grpc

        client = _client(**where, need_account=False)
        request = pb.StreamQuotesRequest(symbols=[s.upper() for s in symbols])

        def watching() -> None:
            # Once quote_svc has taken the stream (its headers come at once, quotes or not): a
            # refused one (an unknown symbol) was announced as watched before its error (round 26).
            click.echo(f"watching {', '.join(request.symbols)}: each one's quote, then every change (a symbol "
                       "never traded shows from its first trade or order on); Ctrl-C stops", err=True)
        # Opened again (a fresh snapshot) when quote_svc restarts.
        for n, q in enumerate(client.stream(quote_service_pb2_grpc.QuoteServiceStub, "StreamQuotes", request,
                                            resume=lambda _info, _headers: request, on_open=watching), 1):
            flag = "  HALTED" if q.halted else ""
            click.echo(f"{_when(q.time)}  {q.symbol:<6} bid {q.bid_price or '-':>10} x {q.bid_size:<6} "
                       f"ask {q.ask_price or '-':>10} x {q.ask_size:<6} last {q.last_price or '-':>10} "
                       f"vol {q.volume}{flag}")
            if count is not None and n >= count:
                break

    @watch.command("orders")
    @click.option("--after", "after_sequence", type=click.IntRange(0, INT64_MAX), default=None,
                  help="Replay the updates after this sequence first (0: the whole history). "
                       "[default: only changes from now on]")
    @click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after this many updates.")
    @client_options
    def watch_orders(after_sequence: int | None, count: int | None, **where) -> None:
        """Print every change of the account's orders as it happens (fills with their price)."""
        from meshkit.status import POSITION_HEADER
        from stockmesh.order.v1 import order_service_pb2 as pb, order_service_pb2_grpc

        client = _client(**where)
        request = pb.StreamOrderUpdatesRequest(after_sequence=after_sequence or 0, from_now=after_sequence is None)
        n, last, start = 0, None, None

        def resume(info, headers: dict[str, str]) -> pb.StreamOrderUpdatesRequest:
            """Open it again after the last update printed; with none yet, after where a stream
            said it started (its x-stockmesh-after-sequence header, or an ending stream's
            ErrorInfo afterSequence), kept across attempts; else as first asked (round 17: a
            second failed attempt, with neither, went back to "from now" and lost updates)."""
            nonlocal start
            for said in (headers.get(POSITION_HEADER, ""),
                         (info.metadata.get("afterSequence") if info is not None else None) or ""):
                if said.isdigit() and start is None:
                    start = int(said)
            after = last if last is not None else start
            return request if after is None else pb.StreamOrderUpdatesRequest(after_sequence=after)

        for u in client.stream(order_service_pb2_grpc.OrderServiceStub, "StreamOrderUpdates", request, resume=resume):
            last = u.sequence
            fill = f"  FILL {u.fill.quantity} @ {u.fill.price}" if u.fill.fill_id else ""
            click.echo(f"#{u.sequence}  {_when(u.event_time)}  {order_line(u.order)}{fill}")
            n += 1
            if count is not None and n >= count:
                break

    @main.command()
    @click.argument("symbol")
    @click.option("--interval", type=click.Choice(["1s", "1m", "5m", "15m", "1h", "1d"]), default="1m",
                  show_default=True, help="Candle interval.")
    @click.option("--last", "count", type=click.IntRange(2, 500), default=None,
                  help="How many candles, up to now.  [default: as many as fit the terminal]")
    @click.option("--height", type=click.IntRange(5, 100), default=20, show_default=True, help="Chart rows.")
    @client_options
    def chart(symbol: str, interval: str, count: int | None, height: int, **where) -> None:
        """Draw SYMBOL's candles up to now in the terminal (GetCandles): green up, red down."""
        from stockmesh.quote.v1 import quote_pb2, quote_service_pb2 as pb, quote_service_pb2_grpc

        width = shutil.get_terminal_size((100, 24)).columns - 14
        count = count or max(2, min(120, width))
        step = {"1s": 1, "1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86400}[interval]
        end = datetime.now(timezone.utc)
        start, stop = _timestamp(end - timedelta(seconds=step * count)), _timestamp(end)
        client = _client(**where, need_account=False)
        candles, token = [], ""
        while True:
            reply = client.call(quote_service_pb2_grpc.QuoteServiceStub, "GetCandles", pb.GetCandlesRequest(
                symbol=symbol.upper(), interval=quote_pb2.CandleInterval.Value(f"CANDLE_INTERVAL_{interval.upper()}"),
                start_time=start, end_time=stop, page_size=500, page_token=token))
            candles += reply.candles
            token = reply.next_page_token
            if not token:
                break
        candles = candles[-count:]
        if not candles:
            click.echo(f"no {interval} candles for {symbol.upper()} in the last {count} intervals")
            return
        for line in draw(candles, height, color=sys.stdout.isatty() and not os.environ.get("NO_COLOR")):
            click.echo(line)
        first, last = candles[0], candles[-1]
        if interval == "1d":  # a session day (round 27: its start, New York midnight, in UTC: "05:00:00")
            from meshkit.calendar import trading_day

            days = [trading_day(c.start_time.ToDatetime(tzinfo=timezone.utc)).isoformat() for c in (first, last)]
            span = f"{days[0]} .. {days[1]}"
        else:
            span = f"{_when(first.start_time)} .. {_when(last.start_time)} UTC"
        click.echo(f"{symbol.upper()} {interval}  {span}  "
                   f"open {first.open}  close {last.close}  volume {sum(c.volume for c in candles)}"
                   f"{'' if last.is_final else '  (last candle still building)'}")


def draw(candles, height: int, *, color: bool = False) -> list[str]:
    """Rows of a candle chart, one column per candle, the price scale on the left: a wick `│`
    from low to high, a body `█` (up) or `▒` (down) from open to close; flat intervals without
    trades are a `·` at the close. Exact decimals throughout (only the row a price falls in is
    computed)."""
    lows = [Decimal(c.low) for c in candles]
    highs = [Decimal(c.high) for c in candles]
    lo, hi = min(lows), max(highs)
    span = hi - lo or Decimal(1)

    def row(price: Decimal) -> int:  # 0 = top row
        return int(((hi - price) / span * (height - 1)).to_integral_value())

    grid = [[" "] * len(candles) for _ in range(height)]
    for x, c in enumerate(candles):
        o, cl = Decimal(c.open), Decimal(c.close)
        if c.volume == 0:  # not trade_count: an imported candle without a count reports 0 trades
            grid[row(cl)][x] = "·"
            continue
        up = cl >= o
        body = "█" if up else "▒"
        if color:
            body = click.style(body, fg="green" if up else "red")
        top, bottom = row(max(o, cl)), row(min(o, cl))
        for y in range(row(Decimal(c.high)), row(Decimal(c.low)) + 1):
            grid[y][x] = body if top <= y <= bottom else "│"
    labels = {0: hi, height - 1: lo, (height - 1) // 2: (hi + lo) / 2}
    out = []
    for y, cells in enumerate(grid):
        label = str(labels[y].quantize(tick_size(labels[y]))) if y in labels else ""  # the symbol's tick: 0.8703
        out.append(f"{label:>12} ┤" + "".join(cells))
    return out
