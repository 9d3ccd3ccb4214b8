"""The pool agent: one GPU machine (or a set of engines) managed for orchestratord.

Public API: :class:`PoolAgent` (build one from :class:`PoolAgentConfig` with
:meth:`PoolAgent.from_config`), the launcher seam (:class:`EngineLauncher`,
:class:`SubprocessEngineLauncher`), :class:`WorkerManager`, :class:`OrchestratorLink` and
:class:`VramLedger`.
"""

from llorch_pool.agent.config import (
    GpuConfig,
    ModelLaunchConfig,
    PoolAgentConfig,
    StaticWorkerConfig,
)
from llorch_pool.agent.gpus import DetectedGpu, parse_nvidia_smi, query_nvidia_smi
from llorch_pool.agent.launcher import (
    EngineHandle,
    EngineLauncher,
    LaunchSpec,
    ModelSpec,
    ProcessEngineHandle,
    SubprocessEngineLauncher,
)
from llorch_pool.agent.link import BeatGate, LinkStats, OrchestratorLink
from llorch_pool.agent.runtime import PoolAgent, resolve_gpus
from llorch_pool.agent.vram import Reservation, VramLedger
from llorch_pool.agent.workers import GpuSpec, ManagedWorker, StaticWorker, WorkerManager

__all__ = [
    "BeatGate",
    "DetectedGpu",
    "EngineHandle",
    "EngineLauncher",
    "GpuConfig",
    "GpuSpec",
    "LaunchSpec",
    "LinkStats",
    "ManagedWorker",
    "ModelLaunchConfig",
    "ModelSpec",
    "OrchestratorLink",
    "PoolAgent",
    "PoolAgentConfig",
    "ProcessEngineHandle",
    "Reservation",
    "StaticWorker",
    "StaticWorkerConfig",
    "SubprocessEngineLauncher",
    "VramLedger",
    "WorkerManager",
    "parse_nvidia_smi",
    "query_nvidia_smi",
    "resolve_gpus",
]
