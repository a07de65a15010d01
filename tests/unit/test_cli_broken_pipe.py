"""`stockmesh <command> | head`: when the reader of the output stops reading, the command ends
quietly with the status of a death by SIGPIPE (141), not with "cannot connect" or a traceback."""
from __future__ import annotations

import subprocess
import sys
import textwrap

SPEW = textwrap.dedent("""
    import click
    from meshkit.cli import _Main

    @click.group(cls=_Main)
    def main():
        pass

    @main.command()
    def spew():
        for i in range(1_000_000):
            click.echo(f"line {i}")

    main(["spew"], prog_name="stockmesh")
""")


def test_a_reader_that_goes_away_ends_the_command_quietly():
    proc = subprocess.Popen([sys.executable, "-c", SPEW], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"line 0\n"
    proc.stdout.close()  # as `head -1` does once it has its line
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err.decode()) == (141, "")


HALT_ALL = textwrap.dedent("""
    import sys, time
    from meshkit import cli

    def engine_call(address, data_dir, method, request):
        if calls:  # each call after the first once the reader has gone, as `| head -1` goes
            ends = time.monotonic() + 30
            while not cli._stdout_gone() and time.monotonic() < ends:
                time.sleep(0.01)
        calls.append(request.symbol)
        print(method, request.symbol, file=sys.stderr, flush=True)

    calls = []
    cli._engine_call = engine_call
    cli.main(["engine", "halt", "all", "--address", "x:1"], prog_name="stockmesh")
""")


def test_halt_all_into_a_reader_that_goes_away_still_halts_every_symbol():
    """Round 26 explorer: `stockmesh engine halt all | head -1` halted 2 of 12 symbols, said
    nothing and exited 141: an end-of-day halt that left most of the market trading."""
    from meshkit.symbols import listed

    proc = subprocess.Popen([sys.executable, "-c", HALT_ALL], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = sorted(listed())[0]
    assert proc.stdout.readline() == f"{first} halted\n".encode()
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert err.decode().splitlines() == [f"HaltSymbol {s}" for s in sorted(listed())]
    assert proc.returncode == 141
