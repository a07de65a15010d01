"""meshkit.config's typed settings: a bad value stops start-up with a message naming it."""
from __future__ import annotations

import pytest

from meshkit.config import ConfigError, env_choice
from order_svc.bootstrap import relays_in_process


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
