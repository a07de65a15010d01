"""`python -m simulator`: started by `stockmesh up` (STOCKMESH_ENDPOINT, STOCKMESH_DATA_DIR), or by
deploy/compose.yaml, which also sets SIM_FUND_DATABASE_URL: the simulator's accounts are funded
there first (idempotent; `stockmesh up` funds them itself). SIM_REPLAY_FILE: a CSV of
historical candles whose prices the symbols in it follow (`stockmesh up --replay`),
SIM_REPLAY_STEPS quotes a candle (default 4)."""
from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from meshkit import logs
from meshkit.config import env_int
from quote_svc.domain.history import MalformedRow
from simulator.runner import Simulator, fund, replay_file


async def main() -> None:
    endpoint = os.environ.get("STOCKMESH_ENDPOINT")
    data_dir = os.environ.get("STOCKMESH_DATA_DIR")
    if not endpoint or not data_dir:
        raise SystemExit("simulator: set STOCKMESH_ENDPOINT (Envoy host:port) and STOCKMESH_DATA_DIR (dev keys)")
    if os.environ.get("SIM_FUND_DATABASE_URL"):
        await fund(os.environ["SIM_FUND_DATABASE_URL"])
    replay = None
    if os.environ.get("SIM_REPLAY_FILE"):
        try:
            replay = replay_file(Path(os.environ["SIM_REPLAY_FILE"]))
        except (OSError, MalformedRow) as exc:
            raise SystemExit(f"simulator: SIM_REPLAY_FILE {os.environ['SIM_REPLAY_FILE']}: {exc}") from None
    sim = Simulator(endpoint, Path(data_dir), seed=int(os.environ["SIM_SEED"]) if os.environ.get("SIM_SEED") else None,
                    tick_seconds=float(os.environ.get("SIM_TICK_SECONDS", "1.0")), replay=replay,
                    replay_steps=env_int("SIM_REPLAY_STEPS", 4, minimum=1))
    task = asyncio.create_task(sim.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass


logs.setup("simulator", os.environ.get("LOG_LEVEL", "INFO"))
asyncio.run(main())
