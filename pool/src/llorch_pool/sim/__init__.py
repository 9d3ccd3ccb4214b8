"""The simulator of engines and pools — a test and benchmark tool, not an engine.

* :class:`SimulatedEngine` — an ASGI app serving one model over the native worker protocol
  and the OpenAI-compatible one, with configurable timings (:class:`SimEngineConfig`) and
  fault injection (:class:`EngineFaults`).
* :class:`SimulatedPool` — the real pool agent whose engines are simulated engines started
  in-process on their own ports, on N simulated GPUs; heartbeat faults via
  :class:`SimPoolFaults`.
* :class:`JobLedger` — what engines ran, per job id (``GET /sim/stats`` of an engine or a
  simulated pool), for tests that check the engine's side.
* ``llorch-sim engine …`` / ``llorch-sim pool …`` — the same as programs.
"""

from llorch_pool.sim.engine import EngineFaults, EngineStats, SimEngineConfig, SimulatedEngine
from llorch_pool.sim.ledger import JobLedger, JobRun
from llorch_pool.sim.pool import (
    InProcessEngineHandle,
    SimModel,
    SimPoolFaults,
    SimulatedEngineLauncher,
    SimulatedPool,
    parse_models,
)
from llorch_pool.sim.tokens import (
    VOCABULARY,
    StopScanner,
    TokenSource,
    count_tokens,
    render_chat,
)

__all__ = [
    "VOCABULARY",
    "EngineFaults",
    "EngineStats",
    "InProcessEngineHandle",
    "JobLedger",
    "JobRun",
    "SimEngineConfig",
    "SimModel",
    "SimPoolFaults",
    "SimulatedEngine",
    "SimulatedEngineLauncher",
    "SimulatedPool",
    "StopScanner",
    "TokenSource",
    "count_tokens",
    "parse_models",
    "render_chat",
]
