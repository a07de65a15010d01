"""Ctrl-C ends every `stockmesh` command alike, whenever it comes: "interrupted" on stderr, exit
status 130, no traceback (round 19: 0 from a watch, 1 and "Aborted!" from the others, and a
traceback while the command line was still being imported)."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshkit.cli import main
from stockmesh.order.v1 import order_pb2, order_service_pb2_grpc
from tests.support.stand_ins import serving

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _ctrl_c_as_from_a_terminal():
    """The children's Ctrl-C as a terminal gives it: a test run started in the background of a
    shell without job control has SIGINT ignored, which children inherit across exec, and
    Python then leaves it ignored (a fresh-clone run started so saw every Ctrl-C here do
    nothing). A handler of ours becomes the default at exec."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture(autouse=True)
def _pytests_own_ctrl_c():
    """meshkit.cli.interrupted leaves SIGINT to its default (a second Ctrl-C kills): not pytest's."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


COMMANDS = [["deposit", "10"], ["withdraw", "10"], ["place", "buy", "1", "AAPL", "--limit", "1.00"],
            ["replace", "x", "--quantity", "2"], ["cancel", "x"], ["orders"], ["portfolio"], ["chart", "AAPL"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_ctrl_c_during_a_call_ends_with_130_and_one_line(monkeypatch, command):
    from meshkit.cli_client import Client

    def pressed(*_args, **_kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(Client, "call", pressed)
    done = CliRunner().invoke(main, [*command, "--token", "t", "--address", "127.0.0.1:1"])
    assert (done.exit_code, done.stderr, done.stdout) == (130, "interrupted\n", ""), done.output


def test_ctrl_c_in_an_operator_command_and_in_up_before_its_own_handler_ends_alike(monkeypatch, tmp_path):
    from meshkit import cli
    from meshkit.launcher import mesh

    def pressed(*_args, **_kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_engine_call", pressed)
    monkeypatch.setattr(mesh, "up", pressed)  # (the mesh's own handler stops a mesh once it is set)
    for command in (["engine", "status", "--address", "127.0.0.1:1"], ["up", "--data-dir", str(tmp_path)]):
        done = CliRunner().invoke(main, command)
        assert (done.exit_code, done.stderr) == (130, "interrupted\n"), (command, done.output)


class Streaming(order_service_pb2_grpc.OrderServiceServicer):
    def __init__(self) -> None:
        self.done = threading.Event()

    def StreamOrderUpdates(self, request, context):
        yield order_pb2.OrderUpdate(sequence=1, order=order_pb2.Order(order_id="o1"))
        self.done.wait(60)


def test_ctrl_c_in_a_watch_ends_it_with_130_and_one_line():
    """A real SIGINT to a `stockmesh watch orders` waiting on its stream (it ended 0)."""
    stand_in = Streaming()
    with serving(order_service_pb2_grpc.add_OrderServiceServicer_to_server, stand_in, workers=2) as address:
        try:
            proc = subprocess.Popen([sys.executable, "-m", "meshkit.cli", "watch", "orders", "--address",
                                     address, "--token", "t"], cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            try:
                assert proc.stdout.readline().startswith("#1 ")  # waiting for the next update
                proc.send_signal(signal.SIGINT)
                _, err = proc.communicate(timeout=60)
            finally:
                proc.kill()
        finally:
            stand_in.done.set()
    assert (proc.returncode, err.splitlines()[-1:]) == (130, ["interrupted"]), err
    assert "Traceback" not in err


IMPORTED = textwrap.dedent("""
    import builtins
    import os
    import signal
    import sys

    import click

    def ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)

    if sys.argv[1] == "imports":  # as the client commands' module is imported
        real = builtins.__import__

        def importing(name, *args, **kw):
            if name == "meshkit.cli_client":
                ctrl_c()
            return real(name, *args, **kw)
        builtins.__import__ = importing
    elif sys.argv[1] == "commands":  # as the commands' options are made
        made = click.Option.__init__

        def option(self, *args, **kw):
            ctrl_c()
            made(self, *args, **kw)
        click.Option.__init__ = option
    from meshkit.cli import main
    print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)
""")


@pytest.mark.parametrize("moment", ["imports", "commands"])
def test_ctrl_c_while_the_command_line_is_imported_ends_alike(moment):
    """The imports and the commands' making take a second or more on a busy machine: a Ctrl-C
    then was a traceback."""
    done = subprocess.run([sys.executable, "-c", IMPORTED, moment], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stderr, done.stdout) == (130, "interrupted\n", ""), done.stderr


def test_after_the_import_ctrl_c_is_pythons_own_again():
    """For the commands: KeyboardInterrupt, which _Main.invoke ends with, and asyncio.run's
    handling of Ctrl-C, which only a default handler gets."""
    done = subprocess.run([sys.executable, "-c", IMPORTED, "none"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout) == (0, "True\n"), done.stderr


def test_ctrl_c_while_a_write_is_sent_says_its_key(monkeypatch):
    """Review of round 25: a deposit (or placement) interrupted while it was sent said only
    "interrupted": its outcome unknown, and the key made up for it, the only way to send it
    again safely, never shown."""
    from stockmesh.ledger.v1 import ledger_service_pb2_grpc

    class Pressed:
        def __init__(self, channel) -> None:
            pass

        def Deposit(self, *_args, **_kw):
            raise KeyboardInterrupt
    monkeypatch.setattr(ledger_service_pb2_grpc, "LedgerServiceStub", Pressed)
    done = CliRunner().invoke(main, ["deposit", "10", "--token", "t", "--address", "127.0.0.1:1"])
    assert done.exit_code == 130, done.output
    assert re.fullmatch(r"Deposit: interrupted, its outcome unknown; to send it again safely: the same command with "
                        r"--key [0-9a-f]{32}\ninterrupted\n", done.stderr), done.stderr
