"""Wires matching_svc. Its RPCs are contract-only until the matching work lands: they answer
UNIMPLEMENTED, naming themselves. Health is real: SERVING once NATS answers."""
from __future__ import annotations

from meshkit import bus, config
from meshkit.server import App
from stockmesh.matching.v1 import engine_control_service_pb2_grpc, market_data_service_pb2_grpc


async def bootstrap(settings: config.Settings) -> App:
    assert settings.nats_url
    nc = await bus.connect(settings.nats_url, "matching_svc")
    return App(
        name="matching_svc",
        servicers=[
            (market_data_service_pb2_grpc.add_MarketDataServiceServicer_to_server,
             market_data_service_pb2_grpc.MarketDataServiceServicer(), "stockmesh.matching.v1.MarketDataService"),
            (engine_control_service_pb2_grpc.add_EngineControlServiceServicer_to_server,
             engine_control_service_pb2_grpc.EngineControlServiceServicer(),
             "stockmesh.matching.v1.EngineControlService"),
        ],
        checks=[bus.nats_check(nc)],
        on_close=[nc.drain],
    )
