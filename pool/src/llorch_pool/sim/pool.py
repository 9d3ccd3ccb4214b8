"""The simulated pool: the real pool agent with simulated engines and simulated GPUs.

This is a **simulator** (a test and benchmark tool). A :class:`SimulatedPool` *is* a
:class:`~llorch_pool.agent.runtime.PoolAgent` — same HTTP API, same registration and
heartbeats, same VRAM accounting, same readiness polling over HTTP — whose engine launcher
starts :class:`~llorch_pool.sim.engine.SimulatedEngine` servers in-process, each on its own
loopback port, instead of engine processes. Its GPUs are N simulated devices of a given VRAM.
So the orchestrator cannot tell it from a real pool, except by the ``/sim/*`` control routes:

=================================  ===================================================
``GET /sim/faults``                 the pool's current faults
``POST /sim/faults``                ``{heartbeat_paused?, heartbeat_delay_s?,
                                    engine_faults?: EngineFaults, apply_to_running?}``
``POST /sim/workers/{id}/crash``    kill that worker's engine (its process "dies")
``GET /sim/stats[?job_id=…]``       the runs of every engine this pool started
                                    (:class:`~llorch_pool.sim.ledger.JobLedger` JSON
                                    plus ``pool_id``): ``max_concurrent`` of a job id
                                    counts its runs on *all* those engines at once
=================================  ===================================================

Each engine's ledger has the pool's as its parent; give several pools one ``ledger`` (its
own parent) to see runs across pools.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from orchestrator_core.api import ApiModel
from orchestrator_core.errors import OrchestratorError
from pydantic import ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llorch_pool.agent.launcher import LaunchSpec, ModelSpec
from llorch_pool.agent.runtime import PoolAgent
from llorch_pool.agent.workers import GpuSpec
from llorch_pool.errors import WorkerNotFound
from llorch_pool.protocol import WorkerProtocol
from llorch_pool.serving import RunningServer, error_response, read_json, serve_app
from llorch_pool.sim.engine import EngineFaults, SimEngineConfig, SimulatedEngine
from llorch_pool.sim.ledger import JobLedger

__all__ = [
    "InProcessEngineHandle",
    "SimModel",
    "SimPoolFaults",
    "SimulatedEngineLauncher",
    "SimulatedPool",
    "parse_models",
]

log = logging.getLogger("llorch_pool.sim.pool")

_GB = 1_000_000_000


@dataclass(frozen=True, slots=True)
class SimModel:
    """A model a simulated pool can load: its VRAM and, optionally, its own engine timings
    (``None`` = the pool's defaults)."""

    model_ref: str
    vram_bytes: int
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    load_time_s: float | None = None
    max_concurrency: int | None = None


_MODEL_KEYS = {
    "ttft_ms": ("ttft_s", 1e-3),
    "tps": ("tokens_per_s", 1.0),
    "load_s": ("load_time_s", 1.0),
    "concurrency": ("max_concurrency", 1),
}


def parse_models(text: str) -> list[SimModel]:
    """Parse ``name:vram_gb[:key=value…],…`` (keys: ttft_ms, tps, load_s, concurrency),
    e.g. ``m1:6,m2:12:load_s=2:tps=30``. Raises ``ValueError`` naming the bad item."""
    models: list[SimModel] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, rest = item.partition(":")
        if not name or not re.fullmatch(r"[A-Za-z0-9._/@-]+", name):
            raise ValueError(f"models: bad model name in {item!r}")
        size, *options = rest.split(":") if rest else ("",)
        try:
            vram = round(float(size) * _GB)
        except ValueError:
            raise ValueError(f"models: {item!r} needs name:vram_gb, e.g. m1:6") from None
        if vram < 0:
            raise ValueError(f"models: {item!r}: VRAM must be >= 0")
        extra: dict[str, Any] = {}
        for option in options:
            key, _, value = option.partition("=")
            if key not in _MODEL_KEYS:
                raise ValueError(
                    f"models: {item!r}: unknown option {key!r} ({', '.join(_MODEL_KEYS)})"
                )
            attr, scale = _MODEL_KEYS[key]
            try:
                extra[attr] = int(value) if attr == "max_concurrency" else float(value) * scale
            except ValueError:
                raise ValueError(f"models: {item!r}: {key} must be a number") from None
        models.append(SimModel(name, vram, **extra))
    if not models:
        raise ValueError("models: at least one model is required")
    return models


class SimPoolFaults(ApiModel):
    """Faults of a simulated pool. Also the :class:`~llorch_pool.agent.link.BeatGate` of its
    orchestrator link: a paused pool sends nothing (it looks dead to the orchestrator while
    its workers keep serving), a slow one waits ``heartbeat_delay_s`` before each beat."""

    model_config = ConfigDict(strict=True, extra="forbid", validate_assignment=True)

    heartbeat_paused: bool = False
    heartbeat_delay_s: Annotated[float, Field(ge=0, le=3600)] = 0.0
    engine_faults: EngineFaults = Field(default_factory=EngineFaults)

    async def before_send(self) -> bool:
        """The beat gate."""
        if self.heartbeat_paused:
            return False
        if self.heartbeat_delay_s > 0:
            await asyncio.sleep(self.heartbeat_delay_s)
        return not self.heartbeat_paused


class _FaultsUpdate(ApiModel):
    heartbeat_paused: bool | None = None
    heartbeat_delay_s: Annotated[float, Field(ge=0, le=3600)] | None = None
    engine_faults: EngineFaults | None = None
    apply_to_running: bool = False


@dataclass(eq=False)
class InProcessEngineHandle:
    """A simulated engine served by uvicorn inside this process, on its own port."""

    engine: SimulatedEngine
    server: RunningServer
    crash_reason: str | None = None
    _stopping: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def uri(self) -> str:
        """The engine's base URL."""
        return self.server.url

    async def wait_exit(self) -> str:
        """Wait until the engine's server stops; say why."""
        await asyncio.shield(self.server.task)
        return self.crash_reason or "simulated engine stopped"

    def crash(self, reason: str = "simulated engine crashed") -> None:
        """Kill the engine now: every open stream is dropped, the port closes."""
        if self.crash_reason is None:
            self.crash_reason = reason
        self.engine.kill()
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self.server.stop(force=True))

    async def stop(self, grace_s: float) -> None:
        """Stop the engine (like a killed process, open streams are dropped)."""
        self.engine.kill()
        await self.server.stop(force=True, timeout_s=max(grace_s, 0.5))


class SimulatedEngineLauncher:
    """Launches :class:`SimulatedEngine` servers in-process for a simulated pool; every
    engine's ledger reports to :attr:`ledger` too."""

    def __init__(
        self,
        models: Sequence[SimModel],
        *,
        engine: SimEngineConfig | None = None,
        faults: SimPoolFaults | None = None,
        protocol: WorkerProtocol = WorkerProtocol.NATIVE,
        host: str = "127.0.0.1",
        ledger: JobLedger | None = None,
    ) -> None:
        self.ledger = ledger or JobLedger()
        self.defaults = engine or SimEngineConfig()
        self.faults = faults or SimPoolFaults()
        self.protocol = protocol
        self.host = host
        self.models = {m.model_ref: m for m in models}
        self.handles: dict[str, InProcessEngineHandle] = {}
        health = "/health" if protocol is WorkerProtocol.NATIVE else "/v1/models"
        self._catalog = {
            m.model_ref: ModelSpec(
                model_ref=m.model_ref,
                vram_bytes=m.vram_bytes,
                protocol=protocol,
                max_concurrency=m.max_concurrency or self.defaults.max_concurrency,
                health_path=health,
            )
            for m in models
        }

    def catalog(self) -> Mapping[str, ModelSpec]:
        """The simulated models."""
        return self._catalog

    def engine_config(self, model_ref: str, worker_id: str) -> SimEngineConfig:
        """The engine configuration for one worker of ``model_ref``."""
        m = self.models[model_ref]
        update: dict[str, Any] = {"model_ref": model_ref, "worker_id": worker_id}
        update["vram_bytes"] = m.vram_bytes
        for attr in ("ttft_s", "tokens_per_s", "load_time_s", "max_concurrency"):
            value = getattr(m, attr)
            if value is not None:
                update[attr] = value
        return SimEngineConfig(**(self.defaults.model_dump() | update))

    async def launch(self, spec: LaunchSpec) -> InProcessEngineHandle:
        """Start a simulated engine on a free port of ``host``."""
        engine = SimulatedEngine(
            self.engine_config(spec.model.model_ref, spec.worker_id),
            self.faults.engine_faults.model_copy(),
            ledger=JobLedger(parent=self.ledger),
        )
        server = await serve_app(engine.app, host=self.host, port=0)
        handle = InProcessEngineHandle(engine, server)
        engine.on_crash = handle.crash
        self.handles[spec.worker_id] = handle
        server.task.add_done_callback(lambda _: self.handles.pop(spec.worker_id, None))
        return handle


class SimulatedPool(PoolAgent):
    """A pool agent with ``gpus`` simulated GPUs of ``vram_bytes_per_gpu`` each, able to
    start simulated engines for ``models``. ``ledger`` gathers its engines' runs (default:
    one of its own). See the module docstring."""

    def __init__(
        self,
        *,
        pool_id: str,
        orchestrator_url: str | Sequence[str],
        models: Sequence[SimModel],
        gpus: int = 1,
        vram_bytes_per_gpu: int = 24 * _GB,
        engine: SimEngineConfig | None = None,
        faults: SimPoolFaults | None = None,
        protocol: WorkerProtocol = WorkerProtocol.NATIVE,
        ledger: JobLedger | None = None,
        **agent_options: Any,
    ) -> None:
        if gpus < 1:
            raise ValueError("a simulated pool needs at least one GPU")
        self.faults = faults or SimPoolFaults()
        self.launcher = SimulatedEngineLauncher(
            models,
            engine=engine,
            faults=self.faults,
            protocol=protocol,
            host=agent_options.get("listen_host", "127.0.0.1"),
            ledger=ledger,
        )
        self.ledger = self.launcher.ledger
        gb = vram_bytes_per_gpu / _GB
        specs = [
            GpuSpec(str(i), f"Simulated GPU ({gb:g} GB)", vram_bytes_per_gpu) for i in range(gpus)
        ]
        routes = [
            Route("/sim/faults", self._get_faults, methods=["GET"]),
            Route("/sim/faults", self._set_faults, methods=["POST"]),
            Route("/sim/workers/{worker_id}/crash", self._crash_worker, methods=["POST"]),
            Route("/sim/stats", self._get_stats, methods=["GET"]),
        ]
        super().__init__(
            pool_id=pool_id,
            orchestrator_url=orchestrator_url,
            gpus=specs,
            launcher=self.launcher,
            beat_gate=self.faults,
            extra_routes=routes,
            **agent_options,
        )

    def engine(self, worker_id: str) -> SimulatedEngine:
        """The simulated engine of a running worker (KeyError if none)."""
        return self.launcher.handles[worker_id].engine

    def crash_worker(self, worker_id: str) -> None:
        """Kill a worker's engine as if its process died (KeyError if it has none)."""
        self.launcher.handles[worker_id].crash("simulated engine process died")

    def set_faults(
        self,
        *,
        heartbeat_paused: bool | None = None,
        heartbeat_delay_s: float | None = None,
        engine_faults: EngineFaults | None = None,
        apply_to_running: bool = False,
    ) -> None:
        """Change the pool's faults (engine faults apply to engines started from now on, and
        to running ones with ``apply_to_running``)."""
        if heartbeat_paused is not None:
            self.faults.heartbeat_paused = heartbeat_paused
        if heartbeat_delay_s is not None:
            self.faults.heartbeat_delay_s = heartbeat_delay_s
        if engine_faults is not None:
            self.faults.engine_faults = self.faults.engine_faults.merged(engine_faults)
            if apply_to_running:
                for handle in self.launcher.handles.values():
                    handle.engine.faults = handle.engine.faults.merged(engine_faults)

    async def _get_faults(self, request: Request) -> Response:
        return JSONResponse(self.faults.model_dump(mode="json"))

    async def _set_faults(self, request: Request) -> Response:
        try:
            update = _FaultsUpdate.parse(await read_json(request))
        except OrchestratorError as exc:
            return error_response(exc)
        self.set_faults(
            heartbeat_paused=update.heartbeat_paused,
            heartbeat_delay_s=update.heartbeat_delay_s,
            engine_faults=update.engine_faults,
            apply_to_running=update.apply_to_running,
        )
        return JSONResponse(self.faults.model_dump(mode="json"))

    async def _get_stats(self, request: Request) -> Response:
        job_ids = request.query_params.getlist("job_id") or None
        return JSONResponse({"pool_id": self.pool_id} | self.ledger.snapshot(job_ids))

    async def _crash_worker(self, request: Request) -> Response:
        worker_id = request.path_params["worker_id"]
        try:
            self.crash_worker(worker_id)
        except KeyError:
            return error_response(WorkerNotFound(worker_id))
        return JSONResponse({"worker_id": worker_id, "crashed": True}, status_code=202)
