"""The pool agent: its API server, worker manager and orchestrator link, wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import httpx
from starlette.routing import BaseRoute

from llorch_pool import __version__
from llorch_pool.agent.app import create_pool_app
from llorch_pool.agent.config import PoolAgentConfig
from llorch_pool.agent.gpus import DetectedGpu, query_nvidia_smi
from llorch_pool.agent.launcher import EngineLauncher, SubprocessEngineLauncher
from llorch_pool.agent.link import BeatGate, OrchestratorLink
from llorch_pool.agent.workers import GpuProbe, GpuSpec, StaticWorker, WorkerManager
from llorch_pool.protocol import PoolInventory, WorkerProtocol
from llorch_pool.serving import RunningServer, serve_app

__all__ = ["PoolAgent", "resolve_gpus"]

log = logging.getLogger("llorch_pool.agent")


async def resolve_gpus(config: PoolAgentConfig) -> tuple[list[GpuSpec], GpuProbe | None]:
    """The pool's GPUs: from ``nvidia-smi`` when it is present and wanted, else from the
    configuration. Also returns the probe used to re-measure them (or None)."""
    if config.gpu_detection != "config":
        detected = await query_nvidia_smi()
        if detected:
            log.info("detected %d GPU(s) with nvidia-smi", len(detected))
            return [_from_detected(d) for d in detected], query_nvidia_smi
        if config.gpu_detection == "nvidia-smi":
            raise RuntimeError("gpu_detection = 'nvidia-smi' but nvidia-smi found no GPU")
    return [GpuSpec(g.gpu_id, g.name, g.vram_total_bytes) for g in config.gpus], None


def _from_detected(d: DetectedGpu) -> GpuSpec:
    return GpuSpec(d.index, d.name, d.vram_total_bytes, cuda_device=d.index)


class PoolAgent:
    """One pool: serves the pool API, manages workers through ``launcher`` and keeps the
    orchestrator informed. Build it directly, or from a config file with :meth:`from_config`.

    ``endpoint`` is the URL registered with the orchestrator; by default the URL the API
    server listens on (useful with ``listen_port = 0``).
    """

    def __init__(
        self,
        *,
        pool_id: str,
        orchestrator_url: str | Sequence[str],
        gpus: Sequence[GpuSpec],
        launcher: EngineLauncher,
        token: str | None = None,
        api_token: str | None = None,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        endpoint: str | None = None,
        heartbeat_interval_s: float = 5.0,
        health_interval_s: float = 1.0,
        max_backoff_s: float = 10.0,
        ready_timeout_s: float = 120.0,
        stop_grace_s: float = 10.0,
        failed_worker_ttl_s: float = 600.0,
        static_workers: Sequence[StaticWorker] = (),
        gpu_probe: GpuProbe | None = None,
        unregister_on_exit: bool = True,
        beat_gate: BeatGate | None = None,
        extra_routes: Sequence[BaseRoute] = (),
    ) -> None:
        self.pool_id = pool_id
        self.orchestrator_url = orchestrator_url
        self.api_token = api_token
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.unregister_on_exit = unregister_on_exit
        self._endpoint = endpoint
        self._token = token
        self._heartbeat_interval_s = heartbeat_interval_s
        self._max_backoff_s = max_backoff_s
        self._beat_gate = beat_gate
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(10.0), trust_env=False)
        self.workers = WorkerManager(
            pool_id=pool_id,
            gpus=gpus,
            launcher=launcher,
            http=self.http,
            static_workers=static_workers,
            ready_timeout_s=ready_timeout_s,
            stop_grace_s=stop_grace_s,
            health_interval_s=health_interval_s,
            failed_ttl_s=failed_worker_ttl_s,
            gpu_probe=gpu_probe,
        )
        self.link: OrchestratorLink | None = None
        self.app = create_pool_app(self, extra_routes)
        self._server: RunningServer | None = None
        self._link_task: asyncio.Task[None] | None = None

    @classmethod
    async def from_config(cls, config: PoolAgentConfig) -> PoolAgent:
        """An agent for ``config``: GPUs detected or configured, engines started as
        subprocesses from the configured commands, static workers reported."""
        gpus, probe = await resolve_gpus(config)
        launcher = SubprocessEngineLauncher(
            config.models,
            host=config.engine_host,
            log_dir=config.log_dir,
            default_ready_timeout_s=config.ready_timeout_s,
        )
        statics = [
            StaticWorker(
                worker_id=s.worker_id or f"{config.pool_id}-static{i}",
                model_ref=s.model_ref,
                uri=s.uri,
                protocol=WorkerProtocol(s.protocol),
                health_path=s.probe_path,
                gpu_id=s.gpu_id,
                vram_bytes=s.vram_total_bytes,
                max_concurrency=s.max_concurrency,
            )
            for i, s in enumerate(config.static_workers, start=1)
        ]
        return cls(
            pool_id=config.pool_id,
            orchestrator_url=config.orchestrator_urls,
            gpus=gpus,
            launcher=launcher,
            token=config.token,
            api_token=config.api_token,
            listen_host=config.listen_host,
            listen_port=config.listen_port,
            endpoint=config.advertise_url,
            heartbeat_interval_s=config.heartbeat_interval_s,
            health_interval_s=config.health_interval_s,
            max_backoff_s=config.max_backoff_s,
            ready_timeout_s=config.ready_timeout_s,
            stop_grace_s=config.stop_grace_s,
            failed_worker_ttl_s=config.failed_worker_ttl_s,
            static_workers=statics,
            gpu_probe=probe,
            unregister_on_exit=config.unregister_on_exit,
        )

    @property
    def url(self) -> str:
        """The URL the API server listens on (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("the pool agent is not started")
        return self._server.url

    @property
    def accepted_tokens(self) -> tuple[str, ...]:
        """Bearer tokens the pool API accepts: none needed without an ``api_token``; with
        one, the ``api_token`` and the pool's orchestrator ``token`` (the orchestrator knows
        it — the pool registered with it — and sends it on worker starts and stops)."""
        if not self.api_token:
            return ()
        return tuple(t for t in (self.api_token, self._token) if t)

    @property
    def endpoint(self) -> str:
        """The URL registered with the orchestrator."""
        return self._endpoint or self.url

    def inventory(self) -> PoolInventory:
        """GPUs, workers, models and worker protocols, stamped now."""
        return PoolInventory(
            pool_id=self.pool_id,
            endpoint=self.endpoint,
            sent_at=time.time(),
            gpus=self.workers.gpu_infos(),
            workers=self.workers.worker_infos(),
            models=self.workers.models(),
            model_vram_bytes={ref: m.vram_bytes for ref, m in self.workers.catalog().items()},
            protocols=self.workers.protocols(),
        )

    async def start(self) -> None:
        """Serve the API, start watching workers, and start the orchestrator link."""
        self._server = await serve_app(self.app, host=self.listen_host, port=self.listen_port)
        await self.workers.start()
        self.link = OrchestratorLink(
            orchestrator_url=self.orchestrator_url,
            pool_id=self.pool_id,
            inventory=self.inventory,
            http=self.http,
            token=self._token,
            interval_s=self._heartbeat_interval_s,
            max_backoff_s=self._max_backoff_s,
            version=f"llorch-pool/{__version__}",
            changed=self.workers.changed,
            gate=self._beat_gate,
        )
        self._link_task = asyncio.create_task(self.link.run(), name=f"link:{self.pool_id}")
        log.info("pool %s listening on %s, endpoint %s", self.pool_id, self.url, self.endpoint)

    async def stop(self) -> None:
        """Stop the link (unregistering if configured), every started worker, and the API."""
        if self._link_task is not None:
            self._link_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._link_task
        await self.workers.close()
        if self.link is not None and self.unregister_on_exit:
            await self.link.unregister()
        if self._server is not None:
            await self._server.stop()
        await self.http.aclose()

    async def serve_forever(self) -> None:
        """Start, then run until cancelled; stops cleanly on the way out."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()
