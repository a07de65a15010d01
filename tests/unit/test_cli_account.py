"""`stockmesh token --account ""` (or "   ") and the customer commands' --account: a bad account id is a
usage error (exit 2, click's message), never a traceback, and no key or token is made for it."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from meshkit.cli import main

BAD = [("", "must not be empty"), ("x" * 129, "must be at most 128 characters"), ("   ", "must not be blank"),
       (" alice", "must not begin or end with white space"), ("al\x07ice", "must not contain control characters"),
       ("$clearing", "must not begin with '$' (the brokerage's own books are named so)"),
       ("e\u0301lise", "must be in Unicode normal form NFC (one spelling per account)")]
COMMANDS = [["token"], ["deposit", "10"], ["withdraw", "10"], ["portfolio"], ["orders"], ["cancel", "x"],
            ["place", "buy", "1", "AAPL", "--limit", "1.00"], ["replace", "x", "--quantity", "2"], ["chart", "AAPL"],
            ["watch", "quotes", "AAPL"],
            ["watch", "orders"]]


@pytest.mark.parametrize("account,problem", BAD, ids=["empty", "too-long", "blank", "padded", "control", "system-book", "not-nfc"])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_bad_account_is_a_usage_error(tmp_path, command, account, problem):
    done = CliRunner().invoke(main, [*command, "--account", account, "--data-dir", str(tmp_path)])
    assert done.exit_code == 2, done.output
    assert "Invalid value for '--account'" in done.output and problem in done.output
    assert done.exception is None or isinstance(done.exception, SystemExit)
    assert "Traceback" not in done.output
    assert not (tmp_path / "keys").exists()  # nothing minted


@pytest.mark.parametrize("command", COMMANDS[1:], ids=lambda c: " ".join(c[:2]))
def test_a_customer_command_with_an_address_and_no_keys_says_so_and_makes_none(tmp_path, command):
    """Round 15: it made a key pair in a folder without one and signed with it, and Envoy answered
    "Jwks doesn't have key to match kid"."""
    done = CliRunner().invoke(main, [*command, "--account", "alice", "--data-dir", str(tmp_path),
                                     "--address", "127.0.0.1:1"])
    assert done.exit_code == 2 and "no keys in" in done.output and "--token" in done.output, done.output
    assert not (tmp_path / "keys").exists()


def test_a_good_account_gets_its_token(tmp_path):
    import jwt

    done = CliRunner().invoke(main, ["token", "--account", "x" * 128, "--data-dir", str(tmp_path)])
    assert done.exit_code == 0, done.output
    # stdout is the token alone (a note about the new key pair goes to stderr)
    assert jwt.decode(done.stdout.strip(), options={"verify_signature": False})["sub"] == "x" * 128


def test_a_token_whose_subject_is_no_account_id_names_no_account_and_says_why():
    """A token Envoy verified whose subject cannot be an account (blank, or one of the ledger's
    own books, `$clearing`, `$external`: acceptance round 10 withdrew the brokerage's money with
    such a subject) names no account; the services' UNAUTHENTICATED says what is wrong with it."""
    import base64
    import json

    from meshkit.auth import account_from_payload, current_account
    from meshkit.errors import Unauthenticated
    from meshkit.interceptors import bind_call

    def payload(claims: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    assert account_from_payload(payload({"sub": "alice"})) == ("alice", "")
    assert account_from_payload(payload({"sub": "   "})) == (
        None, "the token's subject is not an account id: it must not be blank")
    assert account_from_payload(payload({"sub": "$clearing"})) == (
        None, "the token's subject is not an account id: it must not begin with '$' (the brokerage's own books are "
              "named so)")
    # One spelling per account: the NFC "élise" is an account, the same letters with a combining
    # accent (which look alike) are refused rather than made a second account.
    assert account_from_payload(payload({"sub": "\u00e9lise"})) == ("\u00e9lise", "")
    assert account_from_payload(payload({"sub": "e\u0301lise"})) == (
        None, "the token's subject is not an account id: it must be in Unicode normal form NFC (one spelling per "
              "account)")
    assert account_from_payload(payload({"iss": "x"})) == (None, "the token has no subject (sub) naming the account")
    for claims, words in (({"sub": "$external"}, "must not begin with '$'"), ({"sub": 7}, "has no subject"),
                          (None, "this call needs a verified bearer token (call through Envoy)")):
        bind_call([("x-jwt-payload", payload(claims))] if claims else [])
        with pytest.raises(Unauthenticated) as refused:
            current_account()
        assert words in refused.value.message
    bind_call([("x-jwt-payload", payload({"sub": "alice"}))])
    assert current_account() == "alice"


@pytest.mark.parametrize("command", ["deposit", "withdraw"])
@pytest.mark.parametrize("amount", ["-5", "-0.01", "0", "0.00"])
def test_an_amount_not_above_zero_is_a_usage_error_that_says_so(tmp_path, command, amount):
    """Not click's "No such option '-5'" (acceptance round 10), and nothing is sent."""
    done = CliRunner().invoke(main, [command, amount, "--account", "alice", "--data-dir", str(tmp_path)])
    assert done.exit_code == 2, done.output
    assert f"Invalid value for AMOUNT: '{amount}' must be positive" in done.output


@pytest.mark.parametrize("amount", ["1e3", " 5", "5 ", "１０", "1_000", "1,000", "abc", "NaN"])
def test_an_amount_not_in_plain_notation_is_a_usage_error(tmp_path, amount):
    """Python's Decimal takes them, the server does not: they were sent and came back
    INVALID_ARGUMENT, exit 1, where "abc" is a usage error, exit 2 (round 17); "1,000" was "not
    a number" where "1e3" was "not a plain decimal number" (round 25 explorer)."""
    done = CliRunner().invoke(main, ["deposit", amount, "--account", "alice", "--data-dir", str(tmp_path)])
    assert done.exit_code == 2, done.output
    assert "must be a plain decimal number such as \"100.25\"" in done.output, done.output


@pytest.mark.parametrize("amount, says", [("0.001", "must have at most 2 decimal places"),
                                          ("1000000000000000", "must not exceed 999999999999999.99")])
def test_an_amount_the_api_does_not_take_is_a_usage_error(tmp_path, amount, says):
    """Round 25 explorer: a thousandth of a cent, or more than one deposit's largest, was sent
    and came back INVALID_ARGUMENT (exit 1); the server's own rules, checked before sending."""
    done = CliRunner().invoke(main, ["deposit", amount, "--account", "alice", "--data-dir", str(tmp_path)])
    assert done.exit_code == 2, done.output
    assert f"Invalid value for AMOUNT: '{amount}' {says}" in done.output, done.output
