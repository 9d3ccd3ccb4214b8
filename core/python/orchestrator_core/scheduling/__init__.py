"""Scheduling: which job runs where, and which model to load or unload.

Pure logic, no I/O, no clock. The pieces, Kubernetes-scheduler-framework style:

* :class:`ClusterState` — the daemon's indexed, incrementally updated cluster (queue,
  pools, GPUs, workers, tenants), a facade over one index per concern (``queue_index``,
  ``demand_index``, ``running``, ``fleet_index`` with ``fleet_counts`` and ``gpu_index``,
  ``model_index``); :meth:`ClusterState.snapshot` gives a :class:`SchedulingSnapshot`, a
  free read-only view for one decision — the one read API schedulers use (and the Rhai
  ``ctx`` via :meth:`SchedulingSnapshot.to_ctx`);
* admission: :func:`admit` decides whether a new job may be queued (tenant quota, capacity,
  full-queue policy) under :class:`AdmissionLimits`, as :class:`Admitted` or
  :class:`Refused`;
* plugins chosen by name (``plugins``): queue orders (:class:`FifoOrder`,
  :class:`PriorityOrder`, :class:`FairShareOrder`), placements
  (:class:`LeastLoadedPlacement`, :class:`MostVramFreePlacement`,
  :class:`RoundRobinPlacement`), evictions (:class:`LruEviction`, :class:`LfuEviction`,
  :class:`ManualEviction`);
* the :class:`Scheduler` protocol and :class:`BuiltinScheduler` (its passes in
  ``dispatching``, ``placing`` and ``gpu_search``), built from the config by
  :func:`build_scheduler` through a :class:`SchedulerRegistry`;
* decisions as immutable values (:class:`Dispatch`, :class:`Wait`, :class:`StartWorker`,
  :class:`EvictWorker`, :class:`Reject`, :class:`Batch`) with their Rhai dict form
  (:func:`decision_to_dict`, :func:`decision_from_dict`) and :func:`validate_decision`.

See docs/scheduling.md for how the daemon drives it.
"""

from orchestrator_core.scheduling.admission import (
    AdmissionLimits,
    Admitted,
    FullQueuePolicy,
    Refused,
    admit,
)
from orchestrator_core.scheduling.catalog import ModelCatalog, ModelInfo
from orchestrator_core.scheduling.decisions import (
    REJECT_CODES,
    Action,
    Batch,
    Decision,
    DecisionInvalid,
    Dispatch,
    EvictWorker,
    Reject,
    StartWorker,
    Wait,
    decision_from_dict,
    decision_to_dict,
    iter_actions,
)
from orchestrator_core.scheduling.eviction import (
    EvictionCandidate,
    EvictionPolicy,
    LfuEviction,
    LruEviction,
    ManualEviction,
)
from orchestrator_core.scheduling.ordering import (
    BATCH_CLASS,
    INTERACTIVE_CLASS,
    FairShareOrder,
    FifoOrder,
    PriorityOrder,
    QueueOrder,
)
from orchestrator_core.scheduling.placement import (
    LeastLoadedPlacement,
    MostVramFreePlacement,
    Placement,
    PlacementKey,
    RoundRobinPlacement,
)
from orchestrator_core.scheduling.scheduler import (
    BUILTIN_POLICIES,
    EVICTIONS,
    PLACEMENTS,
    BuiltinScheduler,
    Scheduler,
    SchedulerFactory,
    SchedulerMismatch,
    SchedulerRegistry,
    build_eviction,
    build_placement,
    build_queue_order,
    build_scheduler,
    builtin_scheduler_from_config,
    default_registry,
)
from orchestrator_core.scheduling.snapshot import SchedulingSnapshot, SnapshotStale
from orchestrator_core.scheduling.state import (
    PENDING_PREFIX,
    ClusterState,
    TenantQuota,
    WorkerNotFound,
)
from orchestrator_core.scheduling.validation import Refusal, RefusalCode, validate_decision
from orchestrator_core.scheduling.views import (
    GpuView,
    PoolView,
    QueuedJob,
    TenantView,
    WorkerView,
    placeable_vram,
    vram_share,
)

__all__ = [
    "BATCH_CLASS",
    "BUILTIN_POLICIES",
    "EVICTIONS",
    "INTERACTIVE_CLASS",
    "PENDING_PREFIX",
    "PLACEMENTS",
    "REJECT_CODES",
    "Action",
    "AdmissionLimits",
    "Admitted",
    "Batch",
    "BuiltinScheduler",
    "ClusterState",
    "Decision",
    "DecisionInvalid",
    "Dispatch",
    "EvictWorker",
    "EvictionCandidate",
    "EvictionPolicy",
    "FairShareOrder",
    "FifoOrder",
    "FullQueuePolicy",
    "GpuView",
    "LeastLoadedPlacement",
    "LfuEviction",
    "LruEviction",
    "ManualEviction",
    "ModelCatalog",
    "ModelInfo",
    "MostVramFreePlacement",
    "Placement",
    "PlacementKey",
    "PoolView",
    "PriorityOrder",
    "QueueOrder",
    "QueuedJob",
    "Refusal",
    "RefusalCode",
    "Refused",
    "Reject",
    "RoundRobinPlacement",
    "Scheduler",
    "SchedulerFactory",
    "SchedulerMismatch",
    "SchedulerRegistry",
    "SchedulingSnapshot",
    "SnapshotStale",
    "StartWorker",
    "TenantQuota",
    "TenantView",
    "Wait",
    "WorkerNotFound",
    "WorkerView",
    "admit",
    "build_eviction",
    "build_placement",
    "build_queue_order",
    "build_scheduler",
    "builtin_scheduler_from_config",
    "decision_from_dict",
    "decision_to_dict",
    "default_registry",
    "iter_actions",
    "placeable_vram",
    "validate_decision",
    "vram_share",
]
