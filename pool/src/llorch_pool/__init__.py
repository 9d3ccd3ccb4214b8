"""llorch-pool — the pool agent of llama-orch and a simulator of engines and pools.

* :mod:`llorch_pool.agent` — the real pool agent (``llorch-pool``): registers a GPU machine
  with orchestratord, heartbeats its GPU and worker inventory, starts and stops engine
  processes on request, accounts VRAM.
* :mod:`llorch_pool.sim` — the **simulator** (``llorch-sim``): simulated engines (native and
  OpenAI-compatible protocols, configurable timings and faults) and simulated pools (the
  real agent with simulated engines and GPUs). A test and benchmark tool, not an engine.
* :mod:`llorch_pool.protocol` — the wire types both share (SSE framing comes from
  :mod:`orchestrator_core.sse`).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
