"""The shipped example policies (examples/policies/) and the policy tools: validate,
dry-run, load, snapshot JSON.

Each example is tested for what it is meant to do, on a cluster built for it, not only for
compiling.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from orchestrator_core.rhai import (
    PolicyInvalid,
    RhaiScheduler,
    SnapshotInvalid,
    builtin_fallback_for,
    dry_run,
    load_policy,
    make_policy,
    prelude_helpers,
    sample_snapshot,
    sample_snapshot_json,
    snapshot_document,
    snapshot_from_json,
    snapshot_to_json,
    validate_policy,
)
from orchestrator_core.scheduling import (
    Batch,
    BuiltinScheduler,
    Dispatch,
    EvictWorker,
    Reject,
    StartWorker,
    Wait,
    iter_actions,
)
from orchestrator_core.testing import cluster

EXAMPLES = Path(__file__).parents[3] / "examples" / "policies"
GB = 10**9
NOW = 10_000.0


def gpu(gpu_id: str, name: str, total_gb: float, free_gb: float) -> dict[str, Any]:
    return {
        "gpu_id": gpu_id,
        "name": name,
        "vram_total_bytes": int(total_gb * GB),
        "vram_free_bytes": int(free_gb * GB),
    }


def worker(
    worker_id: str,
    model: str,
    gpu_id: str = "gpu0",
    *,
    status: str = "ready",
    active: int = 0,
    slots: int = 1,
    vram_gb: float = 8,
    last_used: float | None = None,
    completed: int = 0,
) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "model_ref": model,
        "gpu_ids": [gpu_id],
        "status": status,
        "active_jobs": active,
        "max_concurrency": slots,
        "vram_bytes": int(vram_gb * GB),
        "last_used_at": last_used,
        "jobs_completed": completed,
    }


def pool(pool_id: str, gpus: list[Any], workers: list[Any], **kw: Any) -> dict[str, Any]:
    return {
        "pool_id": pool_id,
        "endpoint": f"http://{pool_id}:9200",
        "registered_at": 0.0,
        "last_heartbeat": NOW,
        "gpus": gpus,
        "workers": workers,
        **kw,
    }


def job(job_id: str, model: str, waited_s: float, **kw: Any) -> dict[str, Any]:
    params = {"max_tokens": kw.pop("max_tokens", 16), "seed": kw.pop("seed", None)}
    return {
        "job_id": job_id,
        "model_ref": model,
        "queued_at": NOW - waited_s,
        "params": params,
        **kw,
    }


def doc(pools: list[Any], jobs: list[Any], **kw: Any) -> dict[str, Any]:
    return {"format": "llorch-snapshot/1", "now": NOW, "pools": pools, "jobs": jobs, **kw}


def run_example(name: str, document: dict[str, Any]) -> Any:
    snap = snapshot_from_json(document)
    policy = load_policy(EXAMPLES / name)
    scheduler = RhaiScheduler(
        policy.source, name=name, policy=policy.kind, fallback=builtin_fallback_for(snap)
    )
    call = scheduler.run(snap)
    assert call.failure is None, call.failure
    return call


MODELS = [
    {"model_ref": "llama", "vram_bytes": 8 * GB},
    {"model_ref": "qwen", "vram_bytes": 16 * GB},
    {"model_ref": "mistral", "vram_bytes": 16 * GB},
    {"model_ref": "big", "vram_bytes": 40 * GB},
]


# --------------------------------------------------------------------------------------------
# examples
# --------------------------------------------------------------------------------------------

TESTED = {
    "priority.rhai",
    "gpu_specific.rhai",
    "seeded_first.rhai",
    "vram_aware_eviction.rhai",
    "fair_share.rhai",
    "platform_twin.rhai",  # tests/core/property/test_rhai_parity.py
    "rules.yaml",
    "sample_snapshot.json",
}


def test_every_shipped_example_is_tested_and_valid() -> None:
    shipped = {p.name for p in EXAMPLES.iterdir()}
    assert shipped == TESTED
    for name in shipped - {"sample_snapshot.json"}:
        report = validate_policy((EXAMPLES / name).read_text(), name=name)
        assert report.valid, report.to_dict()["problems"]
        assert report.warnings == []


def test_every_helper_is_documented_in_the_policy_guide() -> None:
    guide = (Path(__file__).parents[3] / "docs" / "policies.md").read_text()
    missing = [name for name, _ in prelude_helpers() if f"{name}(" not in guide]
    assert missing == []


def test_the_prelude_and_the_sample_ship_as_package_data() -> None:

    package = resources.files("orchestrator_core.rhai")
    assert package.joinpath("prelude.rhai").is_file()
    assert package.joinpath("sample_snapshot.json").is_file()


def test_the_example_snapshot_is_the_packaged_sample() -> None:
    assert json.loads((EXAMPLES / "sample_snapshot.json").read_text()) == json.loads(
        sample_snapshot_json()
    )


def test_priority_ages_batch_jobs_past_fresh_interactive_ones() -> None:
    def scenario(batch_waited_s: float) -> dict[str, Any]:
        return doc(
            [pool("p", [gpu("gpu0", "L40S", 48, 40)], [worker("w1", "llama")])],
            [
                job("i1", "llama", 10),
                job("b1", "llama", batch_waited_s, priority="batch"),
                job("q1", "qwen", 5),
            ],
            models=MODELS,
            settings={"promote_after_s": None},
        )

    # b1 waited 2000 s: score 2000 beats i1's 1010 (the built-in policy would take i1)
    call = run_example("priority.rhai", scenario(2000))
    assert call.decision == Batch(
        (Dispatch("b1", "w1"), StartWorker("p", "gpu0", "qwen", "cold_start"))
    )
    assert call.metrics == (("priority.queued", 3.0),)
    # b1 waited 500 s: i1 (1010) goes first
    call = run_example("priority.rhai", scenario(500))
    assert next(iter(iter_actions(call.decision))) == Dispatch("i1", "w1")


def gpu_cluster(*, a_small_busy: bool = False) -> dict[str, Any]:
    return doc(
        [
            pool(
                "pool-a",
                [gpu("gpu0", "NVIDIA A100-SXM4-80GB", 80, 30)],
                [
                    worker("a-big", "big", vram_gb=40),
                    worker(
                        "a-small",
                        "llama",
                        status="busy" if a_small_busy else "ready",
                        active=1 if a_small_busy else 0,
                    ),
                ],
            ),
            pool(
                "pool-b",
                [gpu("gpu0", "NVIDIA GeForce RTX 4090", 24, 8)],
                [worker("b-small", "llama"), worker("b-small-2", "llama")],
            ),
        ],
        [
            job("i1", "llama", 3),
            job("b1", "llama", 20, priority="batch"),
            job("b2", "big", 10, priority="batch"),
        ],
        models=MODELS,
    )


def test_gpu_specific_places_by_gpu_name_and_pool() -> None:
    call = run_example("gpu_specific.rhai", gpu_cluster())
    assert list(iter_actions(call.decision)) == [
        Dispatch("i1", "a-small"),  # interactive: the preferred pool-a
        Dispatch("b1", "b-small"),  # batch of a small model: an RTX GPU
        Dispatch("b2", "a-big"),  # a large model: only on an A100
    ]
    # pool-a has no free llama worker: the interactive job goes elsewhere
    call = run_example("gpu_specific.rhai", gpu_cluster(a_small_busy=True))
    assert next(iter(iter_actions(call.decision))) == Dispatch("i1", "b-small")


def test_gpu_specific_keeps_large_models_off_other_gpus() -> None:
    document = gpu_cluster()
    document["pools"][0]["workers"][0]["status"] = "busy"  # the A100 big worker
    document["pools"][0]["workers"][0]["active_jobs"] = 1
    document["pools"][1]["workers"].append(worker("b-big", "big", "gpu0", vram_gb=16))
    call = run_example("gpu_specific.rhai", document)
    assert "b2" not in {a.job_id for a in iter_actions(call.decision) if isinstance(a, Dispatch)}
    assert ("debug", "large model big waits for an A100: b2") in call.logs


def test_seeded_first_runs_reproducible_jobs_before_others() -> None:
    document = doc(
        [pool("p", [gpu("gpu0", "L4", 24, 16)], [worker("w1", "llama")])],
        [job("i1", "llama", 60), job("s1", "llama", 1, priority="batch", seed=1234)],
        models=MODELS,
    )
    call = run_example("seeded_first.rhai", document)
    assert call.decision == Dispatch("s1", "w1")
    assert call.logs == (("info", "seeded jobs first: 1"),)


def eviction_cluster(*, idle: bool) -> dict[str, Any]:
    return doc(
        [
            pool(
                "pool-a",
                [gpu("gpu0", "L40S", 24, 0)],
                [
                    worker(
                        "old",
                        "mistral",
                        vram_gb=16,
                        last_used=NOW - 5000,
                        status="ready" if idle else "busy",
                        active=0 if idle else 1,
                    ),
                    worker("busy", "llama", status="busy", active=1),
                ],
            )
        ],
        [job("q1", "qwen", 30)],
        models=MODELS,
    )


def test_vram_aware_eviction_evicts_the_lru_idle_worker_and_starts_the_model() -> None:
    call = run_example("vram_aware_eviction.rhai", eviction_cluster(idle=True))
    assert call.decision == Batch(
        (
            EvictWorker("old", reason="make_room_for:qwen"),
            StartWorker("pool-a", "gpu0", "qwen", "cold_start_after_eviction"),
        )
    )
    assert call.logs == (("info", "evicting old (mistral) for qwen"),)


def test_vram_aware_eviction_never_evicts_a_busy_worker() -> None:
    call = run_example("vram_aware_eviction.rhai", eviction_cluster(idle=False))
    assert call.decision == Wait("nothing_to_do")


def test_vram_aware_eviction_starts_where_the_model_fits_without_evicting() -> None:
    document = eviction_cluster(idle=True)
    document["pools"][0]["gpus"].append(gpu("gpu1", "L40S", 48, 20))
    call = run_example("vram_aware_eviction.rhai", document)
    assert call.decision == StartWorker("pool-a", "gpu1", "qwen", "cold_start")


def test_fair_share_interleaves_tenants() -> None:
    document = doc(
        [pool("p", [gpu("gpu0", "L40S", 48, 32)], [worker("w1", "llama"), worker("w2", "llama")])],
        [job(f"a{i}", "llama", 100 - i, tenant_id="A") for i in range(5)]
        + [job("b0", "llama", 1, tenant_id="B")],
        models=MODELS,
    )
    call = run_example("fair_share.rhai", document)
    dispatched = {a.job_id for a in iter_actions(call.decision) if isinstance(a, Dispatch)}
    assert dispatched == {"a0", "b0"}
    builtin = builtin_fallback_for(snapshot_from_json(document)).schedule(
        snapshot_from_json(document)
    )
    assert {a.job_id for a in iter_actions(builtin) if isinstance(a, Dispatch)} == {"a0", "a1"}


def test_fair_share_serves_the_tenant_using_least_of_its_share_first() -> None:
    document = doc(
        [pool("p", [gpu("gpu0", "L40S", 48, 40)], [worker("w1", "llama")])],
        [job("a0", "llama", 100, tenant_id="A"), job("b0", "llama", 1, tenant_id="B")],
        models=MODELS,
        tenants=[{"tenant_id": "A", "running": 2}, {"tenant_id": "B", "weight": 1.0}],
    )
    call = run_example("fair_share.rhai", document)
    assert call.decision == Dispatch("b0", "w1")


def test_the_example_rules() -> None:
    document = doc(
        [
            pool(
                "pool-a",
                [gpu("gpu0", "NVIDIA A100", 80, 24)],
                [worker("a-big", "big", vram_gb=40), worker("a-llama", "llama")],
            ),
            pool(
                "pool-b",
                [gpu("gpu0", "RTX 4090", 24, 8)],
                [worker("b-llama", "llama"), worker("b-llama-2", "llama")],
            ),
        ],
        [
            job("huge", "llama", 50, priority="batch", max_tokens=8000),
            job("eval", "llama", 40, priority="batch", seed=1, tenant_id="initech"),
            job("retry", "llama", 30, priority="batch", attempts=3),
            job("big1", "big", 20, priority="batch"),
            job("chat", "llama", 1),
        ],
        models=MODELS,
    )
    call = run_example("rules.yaml", document)
    actions = list(iter_actions(call.decision))
    assert actions == [
        Dispatch("chat", "a-llama"),  # interactive-fast (queue order: interactive first)
        Reject("huge", "CONTEXT_TOO_LARGE", "batch jobs are limited to 4096 new tokens"),
        Dispatch("eval", "b-llama"),  # evaluation-runs-on-pool-b, round-robin
        Dispatch("big1", "a-big"),  # large-models-on-a100
    ]  # retry: held by retry-storm-brake


# --------------------------------------------------------------------------------------------
# tools
# --------------------------------------------------------------------------------------------


def test_load_policy_reads_scripts_and_rules(tmp_path: Path) -> None:
    script = load_policy(EXAMPLES / "priority.rhai")
    assert (script.kind, script.source) == ("rhai", script.text)
    rules = load_policy(EXAMPLES / "rules.yaml")
    assert rules.kind == "rules"
    assert rules.source.startswith("// Generated from")
    with pytest.raises(PolicyInvalid) as info:
        load_policy(tmp_path / "missing.rhai")
    assert "cannot read policy: No such file or directory" in info.value.problems[0]
    binary = tmp_path / "bin.rhai"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyInvalid, match="not UTF-8 text"):
        load_policy(binary)
    assert make_policy("rules: []", name="x.YML").kind == "rules"


@pytest.mark.parametrize(
    ("source", "name", "expected"),
    [
        ("fn schedule(ctx) {\n  let = 1;\n}", "p.rhai", "p.rhai:2:"),
        ("fn run(ctx) { 1 }", "p.rhai", "error[missing_entry_point]"),
        (
            'fn schedule(ctx) {\n  let w = find_ready_worker(ctx, "m");\n  w\n}',
            "p.rhai",
            "p.rhai:2:11: error[calling_convention]",
        ),
        (
            'fn schedule(ctx) {\n  #{ action: "dispatch", job_id: "job-i-2", worker_id: "a-qwen-1" }\n}',
            "p.rhai",
            "error[refused_decision]: on the sample snapshot: worker a-qwen-1 is busy",
        ),
        (
            "fn schedule(ctx) {\n  ctx.queue[0].colour\n}",
            "p.rhai",
            "p.rhai:2:16: error[property_not_found]",
        ),
        ("rules:\n  - action: fly\n", "r.yaml", "r.yaml:2:13: error[unknown_action]"),
    ],
)
def test_validate_policy_reports_problems_with_positions(
    source: str, name: str, expected: str
) -> None:
    report = validate_policy(source, name=name)
    assert not report.valid
    assert any(expected in p for p in report.to_dict()["problems"]), report.to_dict()["problems"]


def test_validate_policy_reports_the_sample_run() -> None:
    report = validate_policy('fn schedule(ctx) { log_info("ok"); ctx.platform_schedule() }')
    data = report.to_dict()
    assert data["valid"] is True
    assert data["problems"] == [] and data["functions"] == ["schedule/1"]
    assert data["sample"]["logs"] == [{"level": "info", "message": "ok"}]
    assert data["sample"]["decision"]["action"] == "batch"
    rules = validate_policy("rules:\n  - {action: wait}\n  - {action: dispatch}\n", name="r.yaml")
    assert rules.valid
    assert [w.kind for w in rules.warnings] == ["unreachable_rule"]
    assert rules.source is not None and rules.source.startswith("// Generated")


def test_dry_run_shows_the_decision_logs_and_the_builtin_decision() -> None:
    result = dry_run(
        'fn schedule(ctx) { log_warn("careful"); emit_metric("n", 2);'
        ' #{ action: "wait", reason: "by_hand" } }',
        sample_snapshot_json(),
    )
    data = result.to_dict()
    assert data["valid"] is True
    assert data["decision"] == {
        "action": "wait",
        "reason": "by_hand",
        "explanation": {"policy": "rhai", "script": "policy.rhai"},
    }
    assert data["logs"] == ["warn: careful"]
    assert data["metrics"] == {"n": 2.0}
    assert data["fallback"] is None
    assert data["builtin_decision"]["action"] == "batch"


def test_dry_run_of_a_failing_policy_shows_the_fallback() -> None:
    result = dry_run('fn schedule(ctx) {\n  throw "nope";\n}', json.loads(sample_snapshot_json()))
    data = result.to_dict()
    assert data["valid"] is True
    assert data["fallback"]["kind"] == "throw"
    assert data["fallback"]["line"] == 2
    assert data["decision"] == data["builtin_decision"]
    assert data["problems"] == ["policy.rhai:2:3: error[throw]: Runtime error: nope"]


def test_dry_run_of_a_policy_that_does_not_compile() -> None:
    result = dry_run("fn schedule(ctx) {", sample_snapshot_json())
    assert not result.valid and result.call is None
    assert result.to_dict()["problems"][0].startswith("policy.rhai:1:")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"format": "v2"}, "format: must be one of llorch-snapshot/1"),
        ({"now": "soon"}, "now: must be a number"),
        ({"jobs": [{"job_id": "x"}]}, "jobs[0].model_ref: is required"),
        ({"jobs": [{"job_id": "x", "model_ref": "m", "priority": "urgent"}]}, "jobs[0].priority"),
        (
            {
                "pools": [
                    {
                        "pool_id": "p",
                        "endpoint": "e",
                        "registered_at": 0,
                        "last_heartbeat": 0,
                        "gpus": [{"gpu_id": "g", "vram_total_bytes": 1, "vram_free_bytes": -1}],
                    }
                ]
            },
            "pools[0].gpus[0].vram_free_bytes: must be >= 0",
        ),
        ({"settings": {"placement": "random"}}, "settings.placement: must be one of"),
        ({"settings": {"colour": "red"}}, "settings.colour: unknown field"),
        (
            {"tenants": [{"tenant_id": "a"}, {"tenant_id": "a"}]},
            "tenants[1].tenant_id: duplicate 'a'",
        ),
        (
            {"models": [{"model_ref": "m"}, {"model_ref": "m"}]},
            "models[1]: name 'm' is already used",
        ),
    ],
)
def test_a_malformed_snapshot_is_refused_naming_the_field(
    change: dict[str, Any], problem: str
) -> None:
    document = {"format": "llorch-snapshot/1", "now": NOW, **change}
    with pytest.raises(SnapshotInvalid) as info:
        snapshot_from_json(document)
    assert any(problem in p for p in info.value.problems), info.value.problems
    assert str(info.value.code) == "INVALID_REQUEST"


def test_snapshot_json_that_is_not_json_or_not_an_object() -> None:
    with pytest.raises(SnapshotInvalid, match="not valid JSON"):
        snapshot_from_json("{")
    with pytest.raises(SnapshotInvalid, match="must be a JSON object"):
        snapshot_from_json("[1]")


def test_a_snapshot_survives_the_round_trip_through_json() -> None:
    snap = sample_snapshot()
    text = snapshot_to_json(snap)
    again = snapshot_from_json(text)
    assert snapshot_document(again) == snapshot_document(snap)
    builtin = builtin_fallback_for(snap)
    assert builtin.schedule(again) == builtin.schedule(snap)


def test_a_live_state_with_pending_starts_and_running_jobs_round_trips() -> None:
    state = (
        cluster(enforce_quotas=True)
        .model("llama", vram_gb=8)
        .model("qwen", vram_gb=10)
        .tenant("acme", max_running=2)
        .pool("p1")
        .gpu("g0", vram_gb=24)
        .worker("w1", "llama")
        .job("j1", "llama", tenant="acme")
        .job("j2", "qwen", tenant="acme", priority="batch")
        .job("j3", "llama", tenant="acme")
        .build()
    )
    state.job_dispatched("j1", "w1", now=5.0)
    state.start_requested("p1", "g0", "qwen", now=5.0)
    snap = state.snapshot(10.0)
    document = snapshot_document(snap)
    assert [w["worker_id"] for w in document["pools"][0]["workers"]] == ["w1", "pending-start-1"]
    assert document["pools"][0]["workers"][1]["status"] == "starting"
    assert {t["tenant_id"]: t["running"] for t in document["tenants"]} == {"acme": 1}
    again = snapshot_from_json(document)
    builtin = BuiltinScheduler()
    assert builtin.schedule(again) == builtin.schedule(snap)
    assert again.tenant("acme").running == 1
