"""`stockmesh watch orders` follows the server's "open the stream again" when its stream ends
UNAVAILABLE (a rolling restart of order_svc): it resumes after the last update it printed, or
after the sequence the ending stream named, instead of exiting (acceptance round 8). A stand-in
OrderService on a local gRPC server."""
from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
from click.testing import CliRunner
from grpc_status import rpc_status

from meshkit.cli import main
from meshkit.errors import Unavailable
from meshkit.status import to_rpc_status
from stockmesh.order.v1 import order_pb2, order_service_pb2_grpc
from stockmesh.quote.v1 import quote_pb2, quote_service_pb2_grpc


def _shutting_down(after: int):
    return rpc_status.to_status(to_rpc_status(Unavailable(
        "order_svc is shutting down; open the stream again", reason="SHUTTING_DOWN",
        metadata={"afterSequence": str(after)})))


class StandIn(order_service_pb2_grpc.OrderServiceServicer):
    def __init__(self) -> None:
        self.requests: list = []
        self.done = threading.Event()

    def StreamOrderUpdates(self, request, context):
        self.requests.append(request)
        if len(self.requests) == 1:  # from now on: nothing yet, then a restart
            context.abort_with_status(_shutting_down(4))
        first = request.after_sequence + 1
        for sequence in range(first, first + 2):
            yield order_pb2.OrderUpdate(sequence=sequence, order=order_pb2.Order(order_id=f"o{sequence}"))
        if len(self.requests) == 2:
            context.abort_with_status(_shutting_down(first + 1))
        self.done.wait(10)


def _invoke(stand_in, *args, minting_in=None, add=order_service_pb2_grpc.add_OrderServiceServicer_to_server):
    """`stockmesh ARGS` against `stand_in` (an OrderService, or what `add` serves, with a `done`
    event, set when the command has ended) on a local gRPC server: with the token `t`, or, given
    `minting_in` (a data folder with keys), minting its own for the account `alice`."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add(stand_in, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    who = ["--token", "t"] if minting_in is None else ["--data-dir", str(minting_in), "--account", "alice"]
    try:
        return CliRunner().invoke(main, [*args, "--address", f"127.0.0.1:{port}", *who])
    finally:
        stand_in.done.set()
        server.stop(None)


def test_watch_orders_opens_its_stream_again_where_it_left_off():
    stand_in = StandIn()
    done = _invoke(stand_in, "watch", "orders", "--count", "4")
    assert done.exit_code == 0, done.output
    printed = [line.split()[0] for line in done.output.splitlines() if line.startswith("#")]
    assert printed == ["#5", "#6", "#7", "#8"]  # after the sequence the first ending named, then after #6
    assert [(r.from_now, r.after_sequence) for r in stand_in.requests] == [(True, 0), (False, 4), (False, 6)]
    assert "opening it again" in done.output


def test_watch_with_no_mesh_there_fails_at_once():
    from meshkit.launcher.net import free_port

    done = CliRunner().invoke(main, ["watch", "orders", "--address", f"127.0.0.1:{free_port()}", "--token", "t"])
    assert done.exit_code == 1 and "no mesh answers there" in done.output, done.output


class Killed(order_service_pb2_grpc.OrderServiceServicer):
    """The first stream ends as a client sees it when order_svc is killed outright behind Envoy
    (seen with kill -9 on a running mesh): INTERNAL, "Received RST_STREAM"; the second as a bug
    on the server would end it."""

    def __init__(self, then: str) -> None:
        self.requests: list = []
        self.then = then
        self.done = threading.Event()

    def StreamOrderUpdates(self, request, context):
        self.requests.append(request)
        first = request.after_sequence + 1
        yield order_pb2.OrderUpdate(sequence=first, order=order_pb2.Order(order_id=f"o{first}"))
        if len(self.requests) == 1:
            context.abort(grpc.StatusCode.INTERNAL, "Stream removed (RST_STREAM (Received RST_STREAM with error code 2))")
        if self.then == "bug":
            context.abort(grpc.StatusCode.INTERNAL, "Unexpected <class 'RuntimeError'>: a bug")
        yield order_pb2.OrderUpdate(sequence=first + 1, order=order_pb2.Order(order_id=f"o{first + 1}"))
        self.done.wait(10)


def test_watch_orders_opens_its_stream_again_after_its_service_was_killed():
    """A watch exited on a kill -9 of order_svc ("StreamOrderUpdates failed: INTERNAL: Stream
    removed"), although the launcher had it back within a second."""
    stand_in = Killed(then="resume")
    done = _invoke(stand_in, "watch", "orders", "--count", "3")
    assert done.exit_code == 0, done.output
    printed = [line.split()[0] for line in done.output.splitlines() if line.startswith("#")]
    assert printed == ["#1", "#2", "#3"]
    assert [(r.from_now, r.after_sequence) for r in stand_in.requests] == [(True, 0), (False, 1)]
    assert "opening it again" in done.output


def test_watch_orders_still_fails_on_a_servers_own_internal_error():
    stand_in = Killed(then="bug")
    done = _invoke(stand_in, "watch", "orders", "--count", "5")
    assert done.exit_code == 1, done.output
    assert "StreamOrderUpdates failed: INTERNAL: Unexpected" in done.output
    assert len(stand_in.requests) == 2


class Pages(order_service_pb2_grpc.OrderServiceServicer):
    """Five orders, newest first, in pages of what was asked."""

    def __init__(self) -> None:
        self.done = threading.Event()

    def ListOrders(self, request, context):
        from stockmesh.order.v1 import order_service_pb2 as opb

        start = int(request.page_token or 0)
        end = min(5, start + (request.page_size or 50))
        return opb.ListOrdersResponse(orders=[order_pb2.Order(order_id=f"o{i}") for i in range(start, end)],
                                      next_page_token=str(end) if end < 5 else "")


def test_orders_says_when_there_are_more_than_it_showed():
    """`stockmesh orders` stopped at its --limit (50 by default) without a word (acceptance
    round 9: 50 lines of 120 orders, no hint); the hint goes to stderr."""
    some = _invoke(Pages(), "orders", "--limit", "3")
    every = _invoke(Pages(), "orders", "--limit", "5")
    assert some.exit_code == 0 and every.exit_code == 0, (some.output, every.output)
    shown = some.stdout.splitlines()
    assert len(shown) == 3 and all(f"o{i}" in line for i, line in enumerate(shown)), some.stdout
    assert "there are more: --limit N shows more" in some.stderr
    assert "there are more" not in every.output


class Restarting(order_service_pb2_grpc.OrderServiceServicer):
    """Each attempt ends as `endings` says, before any update: "named" as a service shutting
    down ends it (afterSequence 4), "headers" after the stream's position header (7) as a
    killed service's, "plain" UNAVAILABLE with no details as Envoy says while its upstream is
    down; after those, two updates after what was asked."""

    def __init__(self, *endings: str) -> None:
        self.endings = list(endings)
        self.requests: list = []
        self.done = threading.Event()

    def StreamOrderUpdates(self, request, context):
        from meshkit.status import POSITION_HEADER

        self.requests.append(request)
        if self.endings:
            ending = self.endings.pop(0)
            if ending == "named":
                context.abort_with_status(_shutting_down(4))
            if ending == "headers":
                context.send_initial_metadata(((POSITION_HEADER, "7"),))
                context.abort(grpc.StatusCode.INTERNAL, "Stream removed (RST_STREAM (Received RST_STREAM with error code 2))")
            context.abort(grpc.StatusCode.UNAVAILABLE, "upstream connect error or disconnect/reset before headers")
        first = request.after_sequence + 1
        for sequence in range(first, first + 2):
            yield order_pb2.OrderUpdate(sequence=sequence, order=order_pb2.Order(order_id=f"o{sequence}"))
        self.done.wait(10)


def test_watch_orders_keeps_where_its_stream_started_across_failed_attempts():
    """Round 17: a watch from now whose stream ended before printing anything opened it again
    after the sequence the ending named, but a second failed attempt (Envoy: upstream down, no
    details) took it back to "from now", and the updates made meanwhile were never printed. The
    position header of a stream that opened counts as much as an ending's afterSequence."""
    for endings, after in ((("named", "plain", "plain"), 4), (("headers", "plain"), 7)):
        stand_in = Restarting(*endings)
        done = _invoke(stand_in, "watch", "orders", "--count", "2")
        assert done.exit_code == 0, (endings, done.output)
        printed = [line.split()[0] for line in done.output.splitlines() if line.startswith("#")]
        assert printed == [f"#{after + 1}", f"#{after + 2}"], (endings, done.output)
        assert [(r.from_now, r.after_sequence) for r in stand_in.requests] == [
            (True, 0), *[(False, after)] * len(endings)], endings


def test_engine_commands_say_the_reason_and_each_field_violation():
    """Round 17: `engine halt` printed only the status and its message, where every other
    command prints the reason and each field violation too."""
    from meshkit.errors import FieldViolation, InvalidArgument
    from stockmesh.matching.v1 import engine_control_service_pb2_grpc

    class Engine(engine_control_service_pb2_grpc.EngineControlServiceServicer):
        def HaltSymbol(self, request, context):
            context.abort_with_status(rpc_status.to_status(to_rpc_status(InvalidArgument(
                [FieldViolation("reason", "at most 200 characters")], reason="TOO_LONG"))))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    engine_control_service_pb2_grpc.add_EngineControlServiceServicer_to_server(Engine(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        done = CliRunner().invoke(main, ["engine", "halt", "AAPL", "--reason", "x", "--address", f"127.0.0.1:{port}"])
    finally:
        server.stop(None)
    assert done.exit_code == 1, done.output
    assert "HaltSymbol failed: INVALID_ARGUMENT [TOO_LONG]" in done.output and "  reason: at most 200" in done.output, \
        done.output


class NoSuchOrder(order_service_pb2_grpc.OrderServiceServicer):
    def __init__(self) -> None:
        self.done = threading.Event()

    def GetOrder(self, request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, f"no order {request.order_id}")


def test_replace_of_an_unknown_order_says_the_replace_failed():
    """Round 17: it said "GetOrder failed", an RPC the user did not ask for (replace reads the
    order first)."""
    done = _invoke(NoSuchOrder(), "replace", "3f1c0f4e-0000-4000-8000-000000000000", "--limit", "10.00")
    assert done.exit_code == 1, done.output
    assert "ReplaceOrder failed: NOT_FOUND" in done.output and "GetOrder" not in done.output, done.output


def test_a_watch_whose_first_open_meets_a_restarting_service_waits_for_it():
    """Round 17: a watch opened just as order_svc was killed heard Envoy's UNAVAILABLE ("not
    answering (restarting, or down)") before any header and exited 1, as if no mesh were there;
    it opens its stream again, as first asked (nothing was missed before it had started)."""
    stand_in = Restarting("plain", "plain")
    done = _invoke(stand_in, "watch", "orders", "--count", "2")
    assert done.exit_code == 0, done.output
    assert [line.split()[0] for line in done.output.splitlines() if line.startswith("#")] == ["#1", "#2"]
    assert [(r.from_now, r.after_sequence) for r in stand_in.requests] == [(True, 0)] * 3


class Expiring(order_service_pb2_grpc.OrderServiceServicer):
    """Each stream ends as order_svc ends one whose token expired: UNAUTHENTICATED
    TOKEN_EXPIRED, with where to resume."""

    def __init__(self) -> None:
        self.requests: list = []
        self.tokens: list[str] = []
        self.done = threading.Event()

    def StreamOrderUpdates(self, request, context):
        from meshkit.auth import token_expired

        self.requests.append(request)
        self.tokens.append(dict(context.invocation_metadata())["authorization"])
        first = request.after_sequence + 1
        yield order_pb2.OrderUpdate(sequence=first, order=order_pb2.Order(order_id=f"o{first}"))
        context.abort_with_status(rpc_status.to_status(to_rpc_status(token_expired(
            "the stream", {"afterSequence": str(first)}))))


def test_a_watch_outlives_its_tokens_and_a_given_token_s_end_is_said(tmp_path):
    """Round 24: order_svc ends a stream once its token has expired. A watch that mints its
    own tokens (from the mesh's data folder; an hour each) opens the stream again with a new
    one where it left off; one given --token exits, saying so."""
    from meshkit.launcher import keys

    keys.ensure_keys(tmp_path)
    stand_in = Expiring()
    minted = _invoke(stand_in, "watch", "orders", "--after", "0", "--count", "3", minting_in=tmp_path)
    assert minted.exit_code == 0, minted.output
    assert [line.split()[0] for line in minted.output.splitlines() if line.startswith("#")] == ["#1", "#2", "#3"]
    assert [r.after_sequence for r in stand_in.requests] == [0, 1, 2]
    assert len(stand_in.tokens) == 3 and stand_in.tokens[0] != stand_in.tokens[1]  # a new token each time
    given = _invoke(Expiring(), "watch", "orders", "--after", "0")
    assert given.exit_code == 1 and "TOKEN_EXPIRED" in given.output, given.output


class Quiet(order_service_pb2_grpc.OrderServiceServicer):
    """An account with no update at all: each stream opens, then ends TOKEN_EXPIRED after a
    token's life with nothing sent (here a second against a patience of half a second); the
    fourth ends as no watch resumes, to end the test."""

    def __init__(self) -> None:
        self.requests: list = []
        self.done = threading.Event()

    def StreamOrderUpdates(self, request, context):
        from meshkit.auth import token_expired

        self.requests.append(request)
        context.send_initial_metadata((("x-stockmesh-after-sequence", "7"),))
        if len(self.requests) >= 4:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the end of this test")
        time.sleep(1.0)
        context.abort_with_status(rpc_status.to_status(to_rpc_status(token_expired(
            "the stream", {"afterSequence": "7"}))))
        yield  # pragma: no cover


def test_a_quiet_watch_outlives_its_tokens(tmp_path, monkeypatch):
    """Review of round 24: the patience of a watch was counted from its first ending until a
    message came, so a watch of an account with no update exited at its second token's end (an
    hour on, against 120 s of patience). A stream open again is not failing."""
    from meshkit.cli_client import Client
    from meshkit.launcher import keys

    monkeypatch.setattr(Client, "RECONNECT_PATIENCE", 0.5)  # stands for 120 s against a 3,600 s token
    keys.ensure_keys(tmp_path)
    stand_in = Quiet()
    done = _invoke(stand_in, "watch", "orders", minting_in=tmp_path)
    assert len(stand_in.requests) == 4, done.output
    assert [r.after_sequence for r in stand_in.requests[1:]] == [7, 7, 7]
    assert done.exit_code == 1 and "the end of this test" in done.output, done.output


class Ahead(order_service_pb2_grpc.OrderServiceServicer):
    def __init__(self) -> None:
        self.done = threading.Event()

    def StreamOrderUpdates(self, request, context):
        from order_svc.service_layer.lifecycle import AfterSequenceAhead

        context.abort_with_status(rpc_status.to_status(to_rpc_status(AfterSequenceAhead(request.after_sequence, 10))))
        yield order_pb2.OrderUpdate()


def test_a_watch_after_the_latest_update_says_what_to_watch_after_in_its_own_terms():
    """Round 25 explorer: `watch orders --after 100` past the latest (10) said only to open the
    stream again with after_sequence = 10, the gRPC field, not the command's --after."""
    done = _invoke(Ahead(), "watch", "orders", "--after", "100")
    assert done.exit_code == 1, done.output
    assert "OUT_OF_RANGE [AFTER_SEQUENCE_AHEAD]" in done.output, done.output
    assert "watch again with --after 10 (or lower, to replay more)" in done.output, done.output


class Quotes(quote_service_pb2_grpc.QuoteServiceServicer):
    """StreamQuotes as quote_svc answers it: a symbol it does not list is refused before the
    stream opens; else its headers say which snapshots follow, then the quotes come."""

    def __init__(self) -> None:
        self.done = threading.Event()

    def StreamQuotes(self, request, context):
        from meshkit.errors import DomainError
        from meshkit.symbols import known

        try:
            for symbol in request.symbols:
                known(symbol)
        except DomainError as exc:  # INVALID_ARGUMENT, UNKNOWN_SYMBOL
            context.abort_with_status(rpc_status.to_status(to_rpc_status(exc)))
        context.send_initial_metadata((("x-stockmesh-snapshot", ",".join(request.symbols)),))
        for symbol in request.symbols:
            yield quote_pb2.Quote(symbol=symbol, last_price="1.00")
        self.done.wait(10)


def test_watch_quotes_says_it_is_watching_only_once_the_stream_is_taken():
    """Round 26: `watch quotes ZZZZ` printed "watching ZZZZ" before failing UNKNOWN_SYMBOL."""
    add = quote_service_pb2_grpc.add_QuoteServiceServicer_to_server
    refused = _invoke(Quotes(), "watch", "quotes", "ZZZZ", add=add)
    assert refused.exit_code == 1 and "UNKNOWN_SYMBOL" in refused.output, refused.output
    assert "watching" not in refused.output, refused.output
    watched = _invoke(Quotes(), "watch", "quotes", "AAPL", "--count", "1", add=add)
    assert watched.exit_code == 0, watched.output
    said, quote = watched.output.splitlines()
    assert said.startswith("watching AAPL: ") and " AAPL " in quote, watched.output
