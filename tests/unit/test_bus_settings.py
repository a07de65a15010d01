"""meshkit.bus: the NATS servers of NATS_URL and the copies of each stream (JETSTREAM_REPLICAS)."""
from __future__ import annotations

import pytest

from meshkit import bus
from meshkit.config import ConfigError


def test_nats_url_may_name_a_cluster_s_servers() -> None:
    assert bus.servers("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]
    assert bus.servers(" nats://n1:4222, nats://n2:4222 ,nats://n3:4222,") == \
        ["nats://n1:4222", "nats://n2:4222", "nats://n3:4222"]
    with pytest.raises(ValueError):
        bus.servers(" , ")


def test_streams_have_jetstream_replicas_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JETSTREAM_REPLICAS", raising=False)
    assert bus.stream_config("ns", "orders").num_replicas == 1
    monkeypatch.setenv("JETSTREAM_REPLICAS", "3")
    config = bus.stream_config("ns", "md")
    assert (config.name, config.subjects, config.num_replicas) == ("ns_MD", ["ns.md.>"], 3)
    assert config.max_msgs_per_subject == 10_000 and config.duplicate_window == 300.0
    assert bus.stream_config("ns", "work").duplicate_window == bus.DEFAULT_DUPLICATE_WINDOW
    for bad in ("0", "6", "three"):
        monkeypatch.setenv("JETSTREAM_REPLICAS", bad)
        with pytest.raises(ConfigError, match="JETSTREAM_REPLICAS"):
            bus.replicas()
