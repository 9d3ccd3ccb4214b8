"""InMemoryPoolRegistry: registration, conflicts, heartbeats and status over time."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from orchestrator_core import (
    ErrorCode,
    GpuInfo,
    HeartbeatRules,
    InMemoryPoolRegistry,
    OrchestratorConfig,
    PoolConflict,
    PoolHeartbeat,
    PoolNotFound,
    PoolRegistration,
    PoolRegistry,
    PoolStatus,
    RequestInvalid,
    StaleHeartbeat,
    WorkerInfo,
    WorkerStatus,
)


class FakeClock:
    def __init__(self, t: float = 10_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def reg(pool_id: str = "p1", endpoint: str = "http://10.0.0.1:9000") -> PoolRegistration:
    return PoolRegistration(
        pool_id=pool_id,
        endpoint=endpoint,
        gpus=[GpuInfo(gpu_id="0", vram_total_bytes=24 << 30, vram_free_bytes=24 << 30)],
    )


def beat(clock: FakeClock, **kw: Any) -> PoolHeartbeat:
    return PoolHeartbeat(sent_at=clock.t, **kw)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> InMemoryPoolRegistry:
    return InMemoryPoolRegistry(heartbeat_interval_s=15, missed_threshold=3, clock=clock)


def test_the_in_memory_registry_implements_the_protocol(registry: InMemoryPoolRegistry) -> None:
    assert isinstance(registry, PoolRegistry)


def test_a_registered_pool_is_online_and_listed(registry: InMemoryPoolRegistry) -> None:
    info = registry.register(reg())
    assert info.status is PoolStatus.ONLINE
    assert [p.pool_id for p in registry.list()] == ["p1"]
    assert registry.get("p1").gpus[0].vram_total_bytes == 24 << 30


@pytest.mark.parametrize(
    ("case", "silence_s", "expected"),
    [
        ("a pool heard from just now is online", 0, PoolStatus.ONLINE),
        ("one late beat is tolerated", 22.5, PoolStatus.ONLINE),
        ("a missed beat makes it degraded", 23, PoolStatus.DEGRADED),
        ("still degraded right at interval x threshold", 45, PoolStatus.DEGRADED),
        ("past interval x threshold it is offline", 45.01, PoolStatus.OFFLINE),
        ("long silence is offline", 3600, PoolStatus.OFFLINE),
    ],
)
def test_status_follows_heartbeat_age(
    registry: InMemoryPoolRegistry,
    clock: FakeClock,
    case: str,
    silence_s: float,
    expected: PoolStatus,
) -> None:
    registry.register(reg())
    clock.t += silence_s
    assert registry.get("p1").status is expected


def test_a_heartbeat_brings_an_offline_pool_back_online(
    registry: InMemoryPoolRegistry, clock: FakeClock
) -> None:
    registry.register(reg())
    clock.t += 100
    assert registry.get("p1").status is PoolStatus.OFFLINE
    assert registry.heartbeat("p1", beat(clock)).status is PoolStatus.ONLINE


def test_a_heartbeat_replaces_the_inventory(
    registry: InMemoryPoolRegistry, clock: FakeClock
) -> None:
    registry.register(reg())
    clock.t += 5
    info = registry.heartbeat(
        "p1",
        beat(
            clock,
            gpus=[GpuInfo(gpu_id="0", vram_total_bytes=100, vram_free_bytes=40)],
            workers=[WorkerInfo(worker_id="w1", model_ref="m", gpu_ids=["0"], status="ready")],  # type: ignore[arg-type]
            models=["m"],
            model_vram_bytes={"m": 7 << 30},
        ),
    )
    assert info.model_vram_bytes == {"m": 7 << 30}
    assert info.gpus[0].vram_free_bytes == 40
    assert info.workers[0].status is WorkerStatus.READY
    assert info.models == ["m"]
    assert info.last_heartbeat == clock.t


def test_a_pool_reporting_itself_degraded_is_degraded(
    registry: InMemoryPoolRegistry, clock: FakeClock
) -> None:
    registry.register(reg())
    assert registry.heartbeat("p1", beat(clock, reported_status="degraded")).status is (  # type: ignore[arg-type]
        PoolStatus.DEGRADED
    )


def test_heartbeats_older_than_the_last_one_are_refused(
    registry: InMemoryPoolRegistry, clock: FakeClock
) -> None:
    registry.register(reg())
    registry.heartbeat("p1", beat(clock))
    with pytest.raises(StaleHeartbeat) as info:
        registry.heartbeat("p1", PoolHeartbeat(sent_at=clock.t - 1))
    assert info.value.code is ErrorCode.INVALID_REQUEST


def test_heartbeats_stamped_far_from_the_clock_are_refused(
    registry: InMemoryPoolRegistry, clock: FakeClock
) -> None:
    registry.register(reg())
    with pytest.raises(StaleHeartbeat, match="off the clock"):
        registry.heartbeat("p1", PoolHeartbeat(sent_at=clock.t - 3600))


def test_heartbeat_of_an_unknown_pool_is_pool_not_found(
    registry: InMemoryPoolRegistry, clock: FakeClock
) -> None:
    with pytest.raises(PoolNotFound) as info:
        registry.heartbeat("ghost", beat(clock))
    assert info.value.http_status == 404


def test_re_registering_a_live_pool_elsewhere_is_a_conflict(registry: InMemoryPoolRegistry) -> None:
    registry.register(reg())
    with pytest.raises(PoolConflict) as info:
        registry.register(reg(endpoint="http://10.0.0.2:9000"))
    assert info.value.http_status == 409
    assert registry.get("p1").endpoint == "http://10.0.0.1:9000"


def test_re_registering_the_same_pool_refreshes_it(
    registry: InMemoryPoolRegistry, clock: FakeClock
) -> None:
    first = registry.register(reg())
    clock.t += 40
    again = registry.register(reg())
    assert again.registered_at == first.registered_at
    assert again.last_heartbeat == clock.t
    assert again.status is PoolStatus.ONLINE


def test_an_offline_pool_id_may_be_taken_over(
    registry: InMemoryPoolRegistry, clock: FakeClock
) -> None:
    registry.register(reg())
    clock.t += 1000
    assert (
        registry.register(reg(endpoint="http://10.0.0.9:9000")).endpoint == "http://10.0.0.9:9000"
    )


def test_unregistering_removes_the_pool(registry: InMemoryPoolRegistry) -> None:
    registry.register(reg())
    assert registry.unregister("p1").status is PoolStatus.OFFLINE
    assert registry.list() == []
    with pytest.raises(PoolNotFound):
        registry.get("p1")
    with pytest.raises(PoolNotFound):
        registry.unregister("p1")


def test_sweep_reports_each_status_change_once(
    registry: InMemoryPoolRegistry, clock: FakeClock
) -> None:
    registry.register(reg())
    assert [(c.old, c.new) for c in registry.sweep()] == [(PoolStatus.OFFLINE, PoolStatus.ONLINE)]
    assert registry.sweep() == []
    clock.t += 30
    assert [(c.old, c.new) for c in registry.sweep()] == [(PoolStatus.ONLINE, PoolStatus.DEGRADED)]
    clock.t += 30
    assert [(c.old, c.new) for c in registry.sweep()] == [(PoolStatus.DEGRADED, PoolStatus.OFFLINE)]
    assert registry.sweep() == []


def test_gpu_free_vram_may_not_exceed_total() -> None:
    with pytest.raises(RequestInvalid, match="vram_free_bytes must not exceed"):
        GpuInfo(gpu_id="0", vram_total_bytes=10, vram_free_bytes=11)


@given(
    interval=st.floats(min_value=0.5, max_value=60),
    threshold=st.integers(min_value=1, max_value=10),
    gaps=st.lists(st.floats(min_value=0, max_value=200), max_size=20),
)
def test_status_is_a_function_of_heartbeat_age_alone(
    interval: float, threshold: int, gaps: list[float]
) -> None:
    clock = FakeClock(0.0)
    registry = InMemoryPoolRegistry(
        heartbeat_interval_s=interval,
        missed_threshold=threshold,
        max_clock_skew_s=1e9,
        clock=clock,
    )
    registry.register(reg())
    last = clock.t
    for i, gap in enumerate(gaps):
        clock.t += gap
        age = clock.t - last
        status = registry.get("p1").status
        if age > interval * threshold:
            assert status is PoolStatus.OFFLINE
        elif age > 1.5 * interval:
            assert status is PoolStatus.DEGRADED
        else:
            assert status is PoolStatus.ONLINE
        if i % 2 == 0:
            registry.heartbeat("p1", PoolHeartbeat(sent_at=clock.t))
            last = clock.t


# -- HeartbeatRules: the registry's rules as pure functions -----------------------------------


def test_heartbeat_rules_from_config_read_the_heartbeat_section() -> None:
    cfg = OrchestratorConfig.from_mapping(
        {"heartbeat": {"interval_s": 5, "missed_threshold": 4, "max_clock_skew_s": 9}}
    )
    rules = HeartbeatRules.from_config(cfg)
    assert rules == HeartbeatRules(5.0, 4, 9.0)
    assert rules.offline_after_s == 20.0
    assert HeartbeatRules() == HeartbeatRules(15.0, 3, 30.0)


@pytest.mark.parametrize("kw", [{"heartbeat_interval_s": 0}, {"missed_threshold": 0}])
def test_heartbeat_rules_refuse_nonsense(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        HeartbeatRules(**kw)


def test_registered_gives_the_new_record_with_its_status() -> None:
    rules = HeartbeatRules()
    info = rules.registered(reg(), None, 100.0)
    assert (info.registered_at, info.last_heartbeat, info.status) == (100.0, 100.0, "online")
    again = rules.registered(reg(), info, 130.0)
    assert (again.registered_at, again.last_heartbeat) == (100.0, 130.0)


def test_registered_refuses_a_live_pool_elsewhere_and_lets_an_offline_one_go() -> None:
    rules = HeartbeatRules()
    info = rules.registered(reg(), None, 100.0)
    with pytest.raises(PoolConflict):
        rules.registered(reg(endpoint="http://10.0.0.2:9000"), info, 140.0)
    moved = rules.registered(reg(endpoint="http://10.0.0.2:9000"), info, 146.0)
    assert moved.endpoint == "http://10.0.0.2:9000"


def test_heartbeat_gives_the_updated_record_and_refuses_stale_beats() -> None:
    rules = HeartbeatRules()
    info = rules.registered(reg(), None, 100.0)
    beat = PoolHeartbeat(sent_at=120.0, reported_status="degraded", models=["m"])
    after = rules.heartbeat(info, beat, 121.0, None)
    assert (after.last_heartbeat, after.status, after.models) == (121.0, "degraded", ["m"])
    assert info.last_heartbeat == 100.0  # the given record is not changed
    with pytest.raises(StaleHeartbeat, match="older than"):
        rules.heartbeat(after, PoolHeartbeat(sent_at=119.0), 122.0, 120.0)
    with pytest.raises(StaleHeartbeat, match="off the clock"):
        rules.heartbeat(after, PoolHeartbeat(sent_at=200.0), 122.0, 120.0)


def test_the_registry_applies_the_rules(registry: InMemoryPoolRegistry, clock: FakeClock) -> None:
    assert registry.rules == HeartbeatRules(15, 3, 30.0)
    info = registry.register(reg())
    assert registry.status_of(info, clock.t + 50) is registry.rules.status(info, clock.t + 50)
