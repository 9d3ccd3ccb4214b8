"""The helper prelude, helper by helper, on the shipped sample snapshot.

The sample (orchestrator_core/rhai/sample_snapshot.json): pool-a online with two A100s
(a-llama-1 ready 1/2 busy, a-mistral-1 idle, a-qwen-1 busy), pool-b degraded with RTX 4090s
that may load llama and mistral only (b-llama-1 idle, b-mistral-1 starting), pool-c offline;
tenants acme (1 of 4 running), globex (1 of 1: at quota), initech; six jobs, one of them a
promoted batch job. Helpers that read the cluster are called as methods on ctx.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from orchestrator_core.rhai import (
    PRELUDE_SOURCE,
    ContextBuilder,
    compile_script,
    empty_plan,
    prelude_helpers,
    sample_snapshot_json,
    snapshot_from_json,
)

NOW = 1_760_000_000_000
GB = 10**9

TESTS = """
fn t_filter_busy() { this.filter_workers(|w| w.status == "busy") }
fn t_filter_seeded() { this.filter_jobs(|j| j.seed != ()) }
fn t_ids(list) { let out = []; for x in list { out.push(x.id); } out }
fn t_gpus(bytes) {
    let out = [];
    for g in this.find_gpus_with_vram(bytes) { out.push(g.pool_id + "/" + g.id); }
    out
}
fn t_job(id) { this.get_job(id) }
fn t_fit(job_id, worker_id) {
    let w = ();
    for p in this.pools { for x in p.workers { if x.id == worker_id { w = x; } } }
    this.can_job_fit(this.get_job(job_id), w)
}
fn t_score(job_id) { this.job_priority_score(this.get_job(job_id)) }
fn t_wait(job_id) { this.calculate_wait_time(this.get_job(job_id)) }
fn t_quota(tenant) { this.check_tenant_quota(tenant, this.get_job("job-i-1")) }
fn t_taken() { this.find_free_worker("llama-8b", #{ "a-llama-1": 1 }) }
fn t_take_slot() { let t = #{}; t.take_slot(#{ id: "w" }); t.take_slot(#{ id: "w" }); t }
fn t_plan_start() { this.plan_start(); this.plan }
fn t_actions() {
    decision_actions(#{ action: "batch", actions: [#{ action: "wait" }, #{ action: "wait" }] })
}
"""


@pytest.fixture(scope="module")
def script() -> Any:
    return compile_script(TESTS, prelude=PRELUDE_SOURCE, name="helpers")


def ctx_of(doc: dict[str, Any]) -> dict[str, Any]:
    return ContextBuilder().build(snapshot_from_json(doc))


@pytest.fixture(scope="module")
def sample() -> dict[str, Any]:
    return json.loads(sample_snapshot_json())


@pytest.fixture(scope="module")
def ctx(sample: dict[str, Any]) -> dict[str, Any]:
    return ctx_of(sample)


CASES: list[tuple[str, list[Any], Any]] = [
    # worker selection
    ("find_least_loaded_worker", ["llama-8b"], "a-llama-1"),  # online before degraded
    ("find_least_loaded_worker", ["llama-3.1-8b-instruct", "pool-b"], "b-llama-1"),
    ("find_least_loaded_worker", ["qwen-32b"], None),  # its worker is busy
    ("find_least_loaded_worker", ["gpt-5"], None),
    ("find_most_vram_free_worker", ["llama-8b"], "a-llama-1"),
    ("find_ready_worker", ["mistral-7b-instruct"], "a-mistral-1"),  # b-mistral-1 is starting
    ("find_worker_round_robin", ["llama-8b"], "a-llama-1"),
    ("t_taken", [], "b-llama-1"),  # a-llama-1's free slot is taken
    # pools and GPUs
    ("is_pool_healthy", ["pool-a"], True),
    ("is_pool_healthy", ["pool-b"], False),
    ("is_pool_healthy", ["nope"], False),
    ("get_pool_utilization", ["pool-a"], 0.625),
    ("get_pool_utilization", ["pool-c"], 0.0),
    ("get_pool_utilization", ["nope"], None),
    ("get_pool", ["nope"], None),
    ("get_gpu", ["pool-a", "nope"], None),
    ("t_gpus", [16 * GB], ["pool-b/gpu1", "pool-a/gpu1", "pool-a/gpu0"]),  # best fit first
    ("t_gpus", [64 * GB], []),
    # catalog
    ("resolve_model", ["qwen-32b"], "qwen2.5-32b-instruct"),
    ("resolve_model", ["unknown"], "unknown"),
    ("model_exists", ["llama-70b"], True),
    ("model_exists", ["gpt-5"], False),
    ("get_model_vram", ["llama-8b"], 9 * GB),
    ("get_model_vram", ["gpt-5"], 0),
    ("get_model", ["gpt-5"], None),
    # jobs
    ("t_job", ["nope"], None),
    ("t_wait", ["job-i-1"], 5000),
    ("t_fit", ["job-i-1", "a-llama-1"], True),
    ("t_fit", ["job-i-1", "a-qwen-1"], False),  # other model, busy
    ("t_fit", ["job-i-1", "c-llama-1"], False),  # offline pool: no free slot
    ("t_score", ["job-i-1"], 1005),  # interactive + 5 s
    ("t_score", ["job-b-1"], 100),  # batch + 100 s
    ("t_score", ["job-b-3"], 2000),  # promoted batch + 1000 s
    # quotas
    ("t_quota", ["acme"], True),
    ("t_quota", ["globex"], False),
    ("t_quota", [None], True),
    ("t_quota", ["stranger"], True),
    # eviction (min_idle_s is 60 in the sample)
    ("find_worker_to_evict_lru", [], "a-mistral-1"),  # idle longest
    ("find_worker_to_evict_lru", ["pool-b"], "b-llama-1"),
    ("find_worker_to_evict_lfu", [], "a-mistral-1"),  # 3 jobs completed vs 40
    ("find_worker_to_evict_lfu", ["pool-c"], None),  # offline
    ("should_evict", ["pool-a"], False),  # every queued model has a live worker
    ("should_evict", ["nope"], False),
    # time and math
    ("now", [], NOW),
    ("elapsed_since", [NOW - 1000], 1000),
    ("min", [[3, 1, 2]], 1),
    ("max", [[3, 1.5, 2]], 3),
    ("sum", [[3, 1, 2]], 6),
    ("average", [[3, 1, 2]], 2.0),
    ("min", [[]], None),
    ("max", [[]], None),
    ("average", [[]], None),
    ("sum", [[]], 0),
    ("t_actions", [], [{"action": "wait"}, {"action": "wait"}]),
    ("make_decision", [[], "idle"], {"action": "wait", "reason": "idle"}),
    ("make_decision", [[{"action": "wait"}], "x"], {"action": "wait"}),
    (
        "make_decision",
        [[{"action": "wait"}, {"action": "wait"}], "x"],
        {"action": "batch", "actions": [{"action": "wait"}, {"action": "wait"}]},
    ),
    ("t_take_slot", [], {"w": 2}),
]


def _id(value: Any) -> Any:
    return value["id"] if isinstance(value, dict) and "id" in value else value


@pytest.mark.parametrize(
    ("fn", "args", "expected"), CASES, ids=[f"{c[0]}{tuple(c[1])}"[:60] for c in CASES]
)
def test_helper(script: Any, ctx: dict[str, Any], fn: str, args: list[Any], expected: Any) -> None:
    assert _id(script.call(fn, args, this=ctx).value) == expected


def test_worker_lists(script: Any, ctx: dict[str, Any]) -> None:
    ids = script.call("t_ids", [script.call("free_workers_of", ["llama-8b"], this=ctx).value])
    assert ids.value == ["a-llama-1", "b-llama-1"]  # c-llama-1: offline pool
    assert script.call("t_filter_busy", this=ctx).value[0]["id"] == "a-qwen-1"
    seeded = script.call("t_filter_seeded", this=ctx).value
    assert [j["id"] for j in seeded] == ["job-b-1", "job-b-2"]
    pools = script.call("find_pools_with_capacity", [15 * GB], this=ctx).value
    assert [p["id"] for p in pools] == ["pool-a", "pool-b"]  # not offline pool-c
    assert [
        p["id"] for p in script.call("find_pools_with_capacity", [50 * GB], this=ctx).value
    ] == ["pool-a"]
    gpu = script.call("get_gpu", ["pool-a", "gpu1"], this=ctx).value
    assert gpu["vram_free_bytes"] == 40 * GB
    assert script.call("get_pool", ["pool-b"], this=ctx).value["status"] == "degraded"
    model = script.call("get_model", ["llama-8b"], this=ctx).value
    assert model["model_ref"] == "llama-3.1-8b-instruct"
    usage = script.call("get_tenant_usage", ["acme"], this=ctx).value
    assert (usage["running"], usage["max_running"], usage["at_quota"]) == (1, 4, False)
    nobody = script.call("get_tenant_usage", ["nobody"], this=ctx).value
    assert (nobody["running"], nobody["max_running"], nobody["at_quota"]) == (0, None, False)


def test_least_loaded_prefers_load_then_free_vram(script: Any, sample: dict[str, Any]) -> None:
    doc = copy.deepcopy(sample)
    pool_b = doc["pools"][1]
    pool_b["status"] = "online"
    ctx = ctx_of(doc)
    # both online now: b-llama-1 (load 0) beats a-llama-1 (load 0.5)
    assert _id(script.call("find_least_loaded_worker", ["llama-8b"], this=ctx).value) == (
        "b-llama-1"
    )
    # most VRAM free: a-llama-1's A100 (63 GB free) beats b-llama-1's RTX (15 GB)
    assert _id(script.call("find_most_vram_free_worker", ["llama-8b"], this=ctx).value) == (
        "a-llama-1"
    )
    # round robin: the worker used least recently (b-llama-1, 500 s ago)
    assert _id(script.call("find_worker_round_robin", ["llama-8b"], this=ctx).value) == (
        "b-llama-1"
    )


def test_eviction_respects_min_idle_and_should_evict_sees_a_model_waiting_for_room(
    script: Any, sample: dict[str, Any]
) -> None:
    doc = copy.deepcopy(sample)
    doc["settings"]["min_idle_s"] = 750.0  # b-llama-1 (idle 500 s) is too recent now
    doc["models"].append({"model_ref": "big", "vram_bytes": 70 * GB})
    doc["jobs"].append({"job_id": "job-big", "model_ref": "big", "queued_at": 1759999999.0})
    ctx = ctx_of(doc)
    assert _id(script.call("find_worker_to_evict_lru", ["pool-b"], this=ctx).value) is None
    assert _id(script.call("find_worker_to_evict_lru", [], this=ctx).value) == "a-mistral-1"
    # big (70 GB) fits on pool-a's gpu0 (63 GB free) once idle a-mistral-1 (8 GB) is gone
    assert script.call("should_evict", ["pool-a"], this=ctx).value is True
    assert script.call("should_evict", ["pool-b"], this=ctx).value is False  # may not load it


def test_every_public_helper_is_tested() -> None:
    tested = {c[0] for c in CASES} | {
        "free_workers_of",
        "filter_workers",
        "filter_jobs",
        "find_pools_with_capacity",
        "get_gpu",
        "get_pool",
        "get_model",
        "get_tenant_usage",
        "find_free_worker",
        "take_slot",
        "decision_actions",
        "get_job",
        "can_job_fit",
        "job_priority_score",
        "calculate_wait_time",
        "check_tenant_quota",
        "find_gpus_with_vram",
    }
    # the plan helpers, find_free_worker_by and platform_schedule are exercised by
    # test_rhai_policies.py and test_rhai_scheduler.py
    elsewhere = {
        "find_free_worker_by",
        "platform_schedule",
        "plan_start",
        "plan_dispatch",
        "plan_find_worker",
        "plan_reject",
        "plan_hold",
        "plan_delegate",
        "plan_decision",
    }
    assert {name for name, _ in prelude_helpers()} - tested - elsewhere == set()


def test_ctx_arrives_with_the_plan_that_plan_start_makes(script: Any, ctx: dict[str, Any]) -> None:
    assert ctx["plan"] == empty_plan()
    assert script.call("t_plan_start", this=ctx).value == empty_plan()
