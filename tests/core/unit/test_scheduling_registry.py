"""Choosing policies by name from the configuration, and the package's public API."""

from __future__ import annotations

import inspect
import pkgutil
from typing import Any

import orchestrator_core.scheduling as scheduling
import pytest
from orchestrator_core import ConfigInvalid, OrchestratorConfig
from orchestrator_core.scheduling import (
    BuiltinScheduler,
    ClusterState,
    Decision,
    FairShareOrder,
    FifoOrder,
    PriorityOrder,
    Scheduler,
    SchedulerMismatch,
    SchedulingSnapshot,
    Wait,
    build_eviction,
    build_placement,
    build_queue_order,
    build_scheduler,
    builtin_scheduler_from_config,
    default_registry,
)


def config(**sections: Any) -> OrchestratorConfig:
    return OrchestratorConfig.from_mapping(sections)


@pytest.mark.parametrize(
    ("scheduler", "queue", "order"),
    [
        ({"policy": "fifo"}, {}, FifoOrder),
        ({"policy": "priority"}, {}, PriorityOrder),
        ({"policy": "priority"}, {"fairness": "session"}, FairShareOrder),
        ({"policy": "fair-share"}, {}, FairShareOrder),
    ],
    ids=[
        "fifo is plain arrival order",
        "priority is interactive first",
        "priority with fairness is fair within each priority",
        "fair-share is fair between tenants by default",
    ],
)
def test_the_queue_order_comes_from_the_policy_name(
    scheduler: dict[str, str], queue: dict[str, str], order: type
) -> None:
    cfg = config(scheduler=scheduler, queue=queue)
    assert isinstance(build_queue_order(cfg), order)
    built = build_scheduler(cfg)
    assert isinstance(built, Scheduler)
    assert built.name == scheduler["policy"]
    state = ClusterState.from_config(cfg)
    assert isinstance(built.schedule(state.snapshot(1.0)), Wait)


def test_placement_and_eviction_come_from_their_names() -> None:
    cfg = config(
        scheduler={"placement": "most-vram-free"}, eviction={"policy": "lfu", "min_idle_s": 7}
    )
    assert build_placement(cfg).name == "most-vram-free"
    eviction = build_eviction(cfg)
    assert (eviction.name, eviction.min_idle_s) == ("lfu", 7)
    built = build_scheduler(cfg)
    assert isinstance(built, BuiltinScheduler)
    assert built.eviction.name == "lfu"


def test_unknown_plugin_names_are_config_errors_naming_the_key() -> None:
    with pytest.raises(ConfigInvalid, match=r"scheduler\.placement"):
        build_placement("fastest")
    with pytest.raises(ConfigInvalid, match=r"eviction\.policy"):
        build_eviction("random")


def test_a_scripted_policy_needs_a_registered_scheduler() -> None:
    cfg = config(scheduler={"policy": "rhai", "script": "policy.rhai"})
    with pytest.raises(
        ConfigInvalid, match=r"scheduler\.policy: no scheduler registered for 'rhai'"
    ):
        build_scheduler(cfg)


def test_other_engineers_register_their_schedulers_without_globals() -> None:
    class Scripted:
        name = "rhai"

        def schedule(self, snapshot: SchedulingSnapshot) -> Decision:
            return Wait("scripted")

    registry = default_registry()
    registry.register("rhai", lambda cfg: Scripted())
    cfg = config(scheduler={"policy": "rhai", "script": "policy.rhai"})
    assert build_scheduler(cfg, registry).name == "rhai"
    assert "rhai" not in default_registry()  # a fresh registry is untouched
    with pytest.raises(ValueError, match="already registered"):
        registry.register("rhai", lambda cfg: Scripted())


def test_the_fallback_for_a_scripted_policy_is_the_platform_builtin() -> None:
    cfg = config(scheduler={"policy": "rhai", "script": "policy.rhai"})
    fallback = builtin_scheduler_from_config(cfg)
    assert fallback.name == "platform"
    assert isinstance(fallback.schedule(ClusterState.from_config(cfg).snapshot(1.0)), Wait)


def test_a_scheduler_refuses_a_state_indexed_for_another_policy() -> None:
    fifo = build_scheduler(config(scheduler={"policy": "fifo"}))
    state = ClusterState.from_config(config(scheduler={"policy": "priority"}))
    with pytest.raises(SchedulerMismatch, match="reindex"):
        fifo.schedule(state.snapshot(1.0))


def test_the_public_api_is_exactly_a_sorted_all() -> None:
    names = scheduling.__all__
    assert names == sorted(names, key=lambda n: (not n.isupper(), n))
    for name in names:
        obj = getattr(scheduling, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, name
    exported = {n for n in dir(scheduling) if not n.startswith("_")}
    modules = {m.name for m in pkgutil.iter_modules(scheduling.__path__)}
    assert exported - modules == set(names)
