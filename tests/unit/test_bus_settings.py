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


async def test_a_stream_created_meanwhile_on_a_cluster_is_waited_for() -> None:
    """Two processes start at once on a JetStream cluster: the second's create is refused (the
    name is taken) while the first's stream does not answer STREAM.INFO yet (404 for a moment;
    seen once in the cluster e2e test, where order_relay then died at start). It waits."""
    import nats.js.errors

    class ClusterJustCreating:
        def __init__(self) -> None:
            self.infos = 0

        async def stream_info(self, name: str):
            self.infos += 1
            if self.infos <= 3:  # the first look, then two while the other's stream settles
                raise nats.js.errors.NotFoundError(code=404, err_code=10059, description="stream not found")
            return object()

        async def add_stream(self, config) -> None:
            raise nats.js.errors.BadRequestError(code=400, err_code=10058, description="stream name already in use")

    js = ClusterJustCreating()
    assert await bus.ensure_stream(js, "ns", "orders") == "ns_ORDERS"
    assert js.infos == 4
