"""Engine launchers: how a pool turns "start model M on GPU G" into a running engine.

The agent's one seam for starting engines. :class:`SubprocessEngineLauncher` runs real engine
processes (for example llama.cpp's OpenAI server); the simulator plugs in its own launcher
that runs simulated engines in-process. Readiness is *not* the launcher's business: the
worker manager polls the engine's health path over HTTP, the same way for every launcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

from llorch_pool.agent.config import ModelLaunchConfig
from llorch_pool.protocol import WorkerProtocol
from llorch_pool.serving import free_port

__all__ = [
    "EngineHandle",
    "EngineLauncher",
    "LaunchSpec",
    "ModelSpec",
    "ProcessEngineHandle",
    "SubprocessEngineLauncher",
    "resolve_model_path",
]

log = logging.getLogger("llorch_pool.agent.launcher")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What the pool must know about a model it can start: its VRAM, protocol, slots and
    readiness path."""

    model_ref: str
    vram_bytes: int
    protocol: WorkerProtocol = WorkerProtocol.OPENAI
    max_concurrency: int = 1
    health_path: str = "/v1/models"
    ready_timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """One engine to start."""

    worker_id: str
    model: ModelSpec
    gpu_id: str
    cuda_device: str | None = None
    """The CUDA device index to expose (``CUDA_VISIBLE_DEVICES``), when GPUs were detected."""


@runtime_checkable
class EngineHandle(Protocol):
    """A started engine."""

    @property
    def uri(self) -> str:
        """The engine's base URL (``http://host:port``)."""
        ...

    async def wait_exit(self) -> str:
        """Wait until the engine dies; return why (e.g. ``exited with code 1``)."""
        ...

    async def stop(self, grace_s: float) -> None:
        """Stop the engine: politely, then by force after ``grace_s`` seconds."""
        ...


@runtime_checkable
class EngineLauncher(Protocol):
    """Starts engines for the models in its catalogue."""

    def catalog(self) -> Mapping[str, ModelSpec]:
        """The models this launcher can start, by model ref."""
        ...

    async def launch(self, spec: LaunchSpec) -> EngineHandle:
        """Start an engine (without waiting for it to be ready)."""
        ...


@dataclass(eq=False)
class ProcessEngineHandle:
    """An engine running as a child process in its own process group."""

    process: asyncio.subprocess.Process
    uri: str
    log_path: Path | None = None
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """The engine's process id."""
        return self.process.pid

    async def wait_exit(self) -> str:
        """Wait for the process to exit; return its exit code and the end of its log."""
        code = await self.process.wait()
        self._close_log()
        reason = f"engine process exited with code {code}"
        tail = self.log_tail()
        return f"{reason}: {tail}" if tail else reason

    def log_tail(self, max_chars: int = 300) -> str:
        """The last characters of the engine's log (one line), for failure reports."""
        if self.log_path is None:
            return ""
        try:
            data = self.log_path.read_bytes()[-max_chars:]
        except OSError:
            return ""
        return " | ".join(line for line in data.decode(errors="replace").splitlines() if line)

    async def stop(self, grace_s: float) -> None:
        """SIGTERM to the process group, SIGKILL after ``grace_s``; waits for the exit."""
        if self.process.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace_s)
            except TimeoutError:
                log.warning("engine %s ignored SIGTERM for %.1fs; killing it", self.pid, grace_s)
                self._signal(signal.SIGKILL)
                await self.process.wait()
        else:
            # The leader is gone; make sure no child of it lingers in the group.
            self._signal(signal.SIGKILL)
        self._close_log()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def resolve_model_path(config: ModelLaunchConfig) -> str | None:
    """The model file of ``config`` for ``{model_path}``: ``model_path`` (``~`` expanded), or
    what the ``model_path_from`` function returns (it is imported and called: slow the first
    time for packages that assemble their file). ``None`` when neither is set. Raises
    ``OSError`` naming the setting when the function cannot be loaded or called, or the file
    does not exist."""
    if config.model_path is not None:
        path = Path(config.model_path).expanduser()
        setting = f"model_path {config.model_path!r}"
    elif config.model_path_from is not None:
        setting = f"model_path_from {config.model_path_from!r}"
        module_name, _, func_name = config.model_path_from.partition(":")
        try:
            func = getattr(importlib.import_module(module_name), func_name)
            path = Path(func())
        except Exception as exc:
            raise OSError(f"{setting}: {type(exc).__name__}: {exc}") from exc
    else:
        return None
    if not path.is_file():
        raise OSError(f"{setting}: no such file {str(path)!r}")
    return str(path)


class SubprocessEngineLauncher:
    """Starts one engine process per worker from the configured launch commands.

    The command's ``{port}`` is a free port picked on ``host``; ``{python}`` is this
    interpreter. Output goes to ``log_dir/<worker_id>.log``. With a CUDA device, the child
    sees only that GPU (``CUDA_VISIBLE_DEVICES``).
    """

    def __init__(
        self,
        models: Mapping[str, ModelLaunchConfig],
        *,
        host: str = "127.0.0.1",
        log_dir: str | Path | None = None,
        default_ready_timeout_s: float | None = None,
    ) -> None:
        self._models = dict(models)
        self._host = host
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._model_paths: dict[str, str | None] = {}
        self._path_locks: dict[str, asyncio.Lock] = {}
        self._specs = {
            ref: ModelSpec(
                model_ref=ref,
                vram_bytes=m.vram_total_bytes,
                protocol=m.worker_protocol,
                max_concurrency=m.max_concurrency,
                health_path=m.health_path,
                ready_timeout_s=m.ready_timeout_s or default_ready_timeout_s,
            )
            for ref, m in self._models.items()
        }

    def catalog(self) -> Mapping[str, ModelSpec]:
        """Models with a launch command."""
        return self._specs

    def argv(self, spec: LaunchSpec, port: int, model_path: str | None = None) -> list[str]:
        """The command line for ``spec`` with its placeholders filled in."""
        values = {
            "python": sys.executable,
            "host": self._host,
            "port": str(port),
            "model_ref": spec.model.model_ref,
            "gpu_id": spec.gpu_id,
            "worker_id": spec.worker_id,
            "model_path": model_path or "",
        }
        return [arg.format_map(values) for arg in self._models[spec.model.model_ref].argv]

    async def model_path(self, model_ref: str) -> str | None:
        """The model file for ``{model_path}`` (see :func:`resolve_model_path`), resolved once
        per model, in a thread; a failure is not cached (the next start tries again)."""
        async with self._path_locks.setdefault(model_ref, asyncio.Lock()):
            if model_ref not in self._model_paths:
                config = self._models[model_ref]
                path = await asyncio.to_thread(resolve_model_path, config)
                self._model_paths[model_ref] = path
            return self._model_paths[model_ref]

    async def launch(self, spec: LaunchSpec) -> ProcessEngineHandle:
        """Start the engine process; raises ``OSError`` if it cannot be started (also when
        its model file cannot be resolved)."""
        config = self._models[spec.model.model_ref]
        model_path = await self.model_path(spec.model.model_ref)
        port = free_port(self._host)
        argv = self.argv(spec, port, model_path)
        env = dict(os.environ)
        env.update(config.env)
        if spec.cuda_device is not None:
            env["CUDA_VISIBLE_DEVICES"] = spec.cuda_device
        log_path: Path | None = None
        log_file: IO[bytes] | None = None
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self._log_dir / f"{spec.worker_id}.log"
            log_file = log_path.open("wb")
        log.info("starting engine %s: %s", spec.worker_id, " ".join(argv))
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file if log_file is not None else asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=config.cwd,
                start_new_session=True,  # its own process group: stop() signals the group
            )
        except OSError:
            if log_file is not None:
                log_file.close()
            raise
        host = f"[{self._host}]" if ":" in self._host else self._host
        return ProcessEngineHandle(process, f"http://{host}:{port}", log_path, log_file)
