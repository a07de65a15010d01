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
