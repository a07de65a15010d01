"""The customer's command line (MISSION F8) against the whole mesh, through Envoy: deposit,
place, watch orders, list, replace, cancel, portfolio, watch quotes, chart; its errors.

Trades V (Visa), which no other end-to-end test trades, so no one else's order meets ours."""
from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid

import pytest

from meshkit.launcher.harness import MeshProcess
from tests.support.funding import transfer_in_shares
from tests.support.wait import eventually

pytestmark = pytest.mark.e2e

SYMBOL, PRICE = "V", "276.90"  # the listed reference price: inside the collar with no trade yet


def cli(mesh: MeshProcess, *args: str, account: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    who = ["--account", account] if account else []
    return subprocess.run([sys.executable, "-m", "meshkit.cli", *args, *who, "--data-dir", str(mesh.data_dir)],
                          capture_output=True, text=True, timeout=timeout)


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def order_id_of(line: str) -> str:
    found = re.match(r"([0-9a-f-]{36}) ", line)
    assert found, line
    return found.group(1)


async def test_a_customer_trades_from_the_command_line(mesh: MeshProcess) -> None:
    tag = uuid.uuid4().hex[:6]
    buyer, seller = f"cli-buy-{tag}", f"cli-sell-{tag}"

    first = ok(cli(mesh, "deposit", "10000", "--key", "k1", account=buyer))
    assert "deposit of 10000.00 done (key k1)\ncash: total 10000.00  available 10000.00  held 0" in first, first
    again = ok(cli(mesh, "deposit", "10000.00", "--key", "k1", account=buyer))  # the same key: nothing new
    assert "total 10000.00" in again, again
    await transfer_in_shares(mesh.database_url, seller, SYMBOL, 20, PRICE)

    # Watch the buyer's orders (a new account: its whole history) while it trades: NEW, then FILLED.
    watcher = subprocess.Popen([sys.executable, "-m", "meshkit.cli", "watch", "orders", "--after", "0", "--count",
                                "2", "--account", buyer, "--data-dir", str(mesh.data_dir)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        bought = ok(cli(mesh, "place", "buy", "10", SYMBOL, "--limit", PRICE, "--tif", "gtc", account=buyer))
        assert " NEW " in bought and f" BUY      10 {SYMBOL} " in bought, bought
        buy_id = order_id_of(bought)
        sold = ok(cli(mesh, "place", "sell", "10", SYMBOL, "--limit", PRICE, account=seller))
        assert " NEW " in sold, sold
        out, err = watcher.communicate(timeout=60)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, out + err
    updates = out.strip().splitlines()
    assert len(updates) == 2 and all(buy_id in u for u in updates), out
    assert " NEW " in updates[0] and " FILLED " in updates[1] and f"FILL 10 @ {PRICE}" in updates[1], out

    listed = ok(cli(mesh, "orders", "--symbol", SYMBOL, account=buyer))
    assert listed.splitlines()[0].startswith(buy_id) and " FILLED " in listed, listed

    # The portfolio: 10 V at 276.90, cash paid.
    portfolio = ok(cli(mesh, "portfolio", account=buyer))
    assert "cash      total 7231.00  available 7231.00  held 0" in portfolio, portfolio
    assert re.search(rf"^{SYMBOL}\s+10\s+10\s+0\s+276\.9", portfolio, re.M), portfolio

    # A resting order, replaced, then cancelled: it ends CANCELLED when the engine confirms.
    resting = ok(cli(mesh, "place", "buy", "1", SYMBOL, "--limit", "270.00", "--tif", "gtc", account=buyer))
    first_id = order_id_of(resting)
    # Replaced (a new price, the rest unchanged): the new order (PENDING_NEW until the engine
    # confirms) works, the old one ends replaced by it.
    replaced = ok(cli(mesh, "replace", first_id, "--limit", "271.00", account=buyer))
    assert re.search(r" (PENDING_NEW|NEW) .* BUY       1 V      LIMIT      271\.00 ", replaced), replaced
    rest_id = order_id_of(replaced)
    assert rest_id != first_id
    assert await eventually(lambda: asyncio.to_thread(
        lambda: f"replaced by {rest_id}" in ok(cli(mesh, "orders", "--symbol", SYMBOL, account=buyer))), timeout=30)
    assert rest_id in ok(cli(mesh, "orders", "--open", account=buyer))
    assert "cancel requested" in ok(cli(mesh, "cancel", rest_id, account=buyer))
    assert await eventually(lambda: asyncio.to_thread(
        lambda: rest_id not in ok(cli(mesh, "orders", "--open", account=buyer))), timeout=30)
    assert "already cancelled: nothing to do" in ok(cli(mesh, "cancel", rest_id, account=buyer))

    # A business rejection is an order, and the command says so with its own exit code.
    broke = cli(mesh, "place", "buy", "1000", SYMBOL, "--limit", PRICE, account=buyer)
    assert broke.returncode == 3 and " REJECTED " in broke.stdout and "available cash" in broke.stdout, broke

    # Market data: the quote after the trade, and a chart of the last five minutes of 1 s candles.
    watched = cli(mesh, "watch", "quotes", SYMBOL, "--count", "1")
    quote = ok(watched)
    assert re.search(rf"\b{SYMBOL}\s+bid .* last\s+{re.escape(PRICE)}\b", quote), quote
    assert watched.stderr.startswith(f"watching {SYMBOL}: "), watched.stderr  # said at once (round 16)
    drawn = ok(cli(mesh, "chart", SYMBOL, "--interval", "1s", "--last", "300", "--height", "8"))
    rows = drawn.splitlines()
    assert len(rows) == 9 and all("┤" in r for r in rows[:8]), drawn
    assert any("█" in r or "▒" in r or "│" in r for r in rows[:8]), drawn
    assert rows[8].startswith(f"{SYMBOL} 1s") and "volume 10" in rows[8], drawn


def test_the_command_line_names_what_is_wrong(mesh: MeshProcess, tmp_path) -> None:
    account = f"cli-err-{uuid.uuid4().hex[:6]}"
    # Refused by the service: the status, the reason and each field.
    bad = cli(mesh, "place", "buy", "1", "NOPE", "--limit", "1.00", account=account)
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "symbol:" in bad.stderr, bad
    short = cli(mesh, "withdraw", "5.00", account=account)
    assert short.returncode == 1 and "FAILED_PRECONDITION" in short.stderr, short
    # Refused before any call.
    assert cli(mesh, "place", "buy", "1", SYMBOL, "--limit", "abc", account=account).returncode == 2
    nobody = cli(mesh, "portfolio")
    assert nobody.returncode == 2 and "--account" in nobody.stderr, nobody
    nowhere = subprocess.run([sys.executable, "-m", "meshkit.cli", "portfolio", "--account", account,
                              "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert nowhere.returncode == 2 and "no running mesh" in nowhere.stderr, nowhere
