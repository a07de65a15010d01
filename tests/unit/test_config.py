"""meshkit.config's typed settings: a bad value stops start-up with a message naming it."""
from __future__ import annotations

from datetime import timedelta

import pytest

from meshkit.config import ConfigError, env_choice, load
from meshkit.server import start_metrics
from order_svc.adapters.outbox import retention
from order_svc.bootstrap import relays_in_process
from quote_svc.bootstrap import streams_per_account


def test_a_choice_is_one_of_its_values_in_any_case_and_unset_is_the_default(monkeypatch):
    monkeypatch.delenv("X_MODE", raising=False)
    assert env_choice("X_MODE", ("a", "b"), "a") == "a"
    monkeypatch.setenv("X_MODE", " B ")
    assert env_choice("X_MODE", ("a", "b"), "a") == "b"
    monkeypatch.setenv("X_MODE", "c")
    with pytest.raises(ConfigError, match="X_MODE must be one of a, b, got 'c'"):
        env_choice("X_MODE", ("a", "b"), "a")


def test_order_svc_relays_its_outbox_itself_unless_told_another_process_does(monkeypatch):
    monkeypatch.delenv("ORDER_OUTBOX_RELAY", raising=False)
    assert relays_in_process()
    monkeypatch.setenv("ORDER_OUTBOX_RELAY", "external")
    assert not relays_in_process()
    monkeypatch.setenv("ORDER_OUTBOX_RELAY", "elsewhere")
    with pytest.raises(ConfigError, match="ORDER_OUTBOX_RELAY"):
        relays_in_process()


def test_published_outbox_rows_are_kept_a_week_unless_told_otherwise_and_zero_keeps_them(monkeypatch):
    monkeypatch.delenv("ORDER_OUTBOX_RETENTION_HOURS", raising=False)
    assert retention() == timedelta(days=7)
    monkeypatch.setenv("ORDER_OUTBOX_RETENTION_HOURS", "36")
    assert retention() == timedelta(hours=36)
    monkeypatch.setenv("ORDER_OUTBOX_RETENTION_HOURS", "0")
    assert retention() is None
    for bad in ("-1", "a week"):
        monkeypatch.setenv("ORDER_OUTBOX_RETENTION_HOURS", bad)
        with pytest.raises(ConfigError, match="ORDER_OUTBOX_RETENTION_HOURS"):
            retention()


def test_quote_streams_per_account_is_fifty_unless_told_otherwise_and_at_least_one(monkeypatch):
    monkeypatch.delenv("QUOTE_STREAMS_PER_ACCOUNT", raising=False)
    assert streams_per_account() == 50
    monkeypatch.setenv("QUOTE_STREAMS_PER_ACCOUNT", "5000")
    assert streams_per_account() == 5000
    for bad in ("0", "-1", "many", "2.5"):
        monkeypatch.setenv("QUOTE_STREAMS_PER_ACCOUNT", bad)
        with pytest.raises(ConfigError, match="QUOTE_STREAMS_PER_ACCOUNT"):
            streams_per_account()


def test_metrics_listen_is_an_address_or_a_host_name_and_anything_else_is_named(monkeypatch):
    monkeypatch.setenv("GRPC_LISTEN", "127.0.0.1:0")
    for good, taken in (("0.0.0.0", "0.0.0.0"), ("::", "::"), ("pod-3.metrics.svc", "pod-3.metrics.svc"),
                        ("", "127.0.0.1")):
        monkeypatch.setenv("METRICS_LISTEN", good)
        assert load("x").metrics_host == taken
    for bad in ("0.0.0.0:9100", "http://0.0.0.0", "[::]", "1.2.3", "a b", "-x"):
        monkeypatch.setenv("METRICS_LISTEN", bad)
        with pytest.raises(ConfigError, match="METRICS_LISTEN must be an IP address or a host name"):
            load("x")


def test_metrics_that_cannot_listen_stop_start_up_with_a_message_not_a_traceback(monkeypatch):
    monkeypatch.setenv("GRPC_LISTEN", "127.0.0.1:0")
    from meshkit.launcher.net import free_port

    port = free_port()  # free, and above 1023: only the address can be what fails
    monkeypatch.setenv("METRICS_PORT", str(port))
    monkeypatch.setenv("METRICS_LISTEN", "192.0.2.1")  # TEST-NET-1: never this machine's
    with pytest.raises(ConfigError, match=f"x: cannot serve /metrics on METRICS_LISTEN=192.0.2.1 METRICS_PORT={port}"):
        start_metrics(load("x"))


@pytest.mark.parametrize("name, lock_wait", [("ORDER_LOCK_WAIT_SECONDS", "order_svc.bootstrap"),
                                             ("LEDGER_LOCK_WAIT_SECONDS", "ledger_svc.bootstrap")])
def test_a_lock_wait_below_a_tenth_of_a_second_is_refused(monkeypatch, name, lock_wait):
    """Review of round 22: 0 was taken as 1 ms, so every momentary lock (a fill's) would have
    answered the calls busy."""
    import importlib

    read = importlib.import_module(lock_wait).lock_wait
    for bad in ("0", "0.05"):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ConfigError, match=f"{name} must be at least 0.1, got '{bad}'"):
            read()
    monkeypatch.setenv(name, "0.1")
    assert read() == 0.1
