"""RhaiScheduler: a Rhai policy behind the Scheduler protocol, with the built-in fallback.

Hostile or broken scripts end within their budget with a clear error, the built-in policy
decides that call, the failure is logged and counted, and the same scheduler decides the
next call normally.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from orchestrator_core import OrchestratorConfig
from orchestrator_core.rhai import (
    EVENT_POLICY_FAILED,
    EVENT_POLICY_LOG,
    PolicyCall,
    PolicyInvalid,
    RhaiLimits,
    RhaiScheduler,
    build_policy_scheduler,
    policy_registry,
    register_policies,
)
from orchestrator_core.scheduling import (
    BuiltinScheduler,
    Dispatch,
    Scheduler,
    SchedulingSnapshot,
    Wait,
    build_scheduler,
    default_registry,
)
from orchestrator_core.scheduling.state import ClusterState
from orchestrator_core.testing import cluster, make_job


def small_state(*, evil: bool = False) -> ClusterState:
    """llama on p1 (w1 ready, w2 busy), qwen cold; j1 interactive, j2 batch (+ 'evil')."""
    builder = (
        cluster()
        .model("llama", vram_gb=8)
        .model("qwen", vram_gb=10)
        .pool("p1")
        .gpu("g0", vram_gb=24)
        .worker("w1", "llama")
        .worker("w2", "llama", status="busy", active=1)
        .job("j1", "llama")
        .job("j2", "qwen", priority="batch")
    )
    if evil:
        builder.job("evil", "llama", priority="batch")
    return builder.build()


def snap(*, evil: bool = False) -> SchedulingSnapshot:
    return small_state(evil=evil).snapshot(100.0)


BUILTIN = BuiltinScheduler(name="platform")

GOOD = """
fn schedule(ctx) {
    let w = ctx.find_least_loaded_worker("llama");
    if w == () { return #{ action: "wait", reason: "no_worker" }; }
    #{ action: "dispatch", job_id: ctx.queue[0].id, worker_id: w.id }
}
"""


def scheduler(source: str, **kw: Any) -> RhaiScheduler:
    kw.setdefault("fallback", BUILTIN)
    return RhaiScheduler(source, name="test.rhai", **kw)


# --------------------------------------------------------------------------------------------
# the protocol and the ctx
# --------------------------------------------------------------------------------------------


def test_a_rhai_scheduler_is_a_scheduler_and_decides_with_the_script() -> None:
    s = scheduler(GOOD)
    assert isinstance(s, Scheduler)
    assert s.name == "rhai"
    decision = s.schedule(snap())
    assert decision == Dispatch("j1", "w1")
    assert decision.explanation == {"policy": "rhai", "script": "test.rhai"}
    assert s.stats.calls == 1
    assert s.stats.decided == 1
    assert s.stats.fallbacks == 0


def test_ctx_follows_the_contract_and_says_the_queue_is_windowed() -> None:
    state = small_state()
    for i in range(5):
        state.add_job(_job(f"extra{i}"))
    call = RhaiScheduler("fn schedule(ctx) { ctx }", fallback=BUILTIN, window=2).run(
        state.snapshot(100.0)
    )
    ctx = call.returned
    assert set(ctx) >= {
        "queue",
        "queue_info",
        "pools",
        "catalog",
        "tenants",
        "metrics",
        "config",
        "now",
        "free_workers",
        "gpus",
        "live_slots",
        "plan",
    }
    assert ctx["platform"] is None  # the source does not name platform_schedule
    assert ctx["live_slots"] == {"llama": 2}
    assert [(g["pool_id"], g["id"], g["idle_vram_bytes"]) for g in ctx["gpus"]] == [
        ("p1", "g0", 8 * 10**9)
    ]
    assert ctx["now"] == 100_000
    assert [j["id"] for j in ctx["queue"]] == ["j1", "extra0", "j2"]  # 2 per class
    assert ctx["queue_info"]["truncated"] is True
    assert ctx["queue_info"]["total"] == 7
    job = ctx["queue"][0]
    assert "prompt" not in job
    assert {"id", "tenant_id", "priority", "model_ref", "prompt_hash", "max_tokens", "seed"} <= set(
        job
    )
    assert [w["id"] for w in ctx["free_workers"]["llama"]] == ["w1"]
    assert ctx["free_workers"]["llama"][0]["gpu_names"] == ["gpu-g0"]
    assert call.failure is not None  # a ctx is not a decision
    assert call.failure.kind == "invalid_decision"


def _job(job_id: str) -> Any:

    return make_job(job_id, "llama", queued_at=50.0)


def test_the_builtin_decision_is_in_ctx_only_for_policies_that_name_it() -> None:
    s = scheduler(
        "// falls back to platform_schedule\nfn schedule(ctx) { ctx.platform_schedule() }"
    )
    decision = s.schedule(snap())
    assert decision == BUILTIN.schedule(snap())
    assert decision.explanation == BUILTIN.schedule(snap()).explanation  # the same object
    s2 = scheduler('fn schedule(ctx) { call(Fn("platform_" + "schedule"), ctx) }')
    call = s2.run(snap())
    assert call.failure is not None
    assert call.failure.kind == "throw"
    assert "only computed for policies whose source names" in call.failure.message


def test_function_style_platform_schedule_works_too() -> None:
    s = scheduler("fn schedule(ctx) { platform_schedule(ctx) }")
    assert s.schedule(snap()) == BUILTIN.schedule(snap())


def test_log_lines_and_metrics_of_each_call_are_exposed_and_forwarded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[PolicyCall] = []
    s = scheduler(
        'fn schedule(ctx) { log_info("queued " + ctx.queue.len()); log_warn("hm");'
        ' emit_metric("depth", ctx.queue.len()); #{ action: "wait", reason: "x" } }',
        on_call=calls.append,
    )
    with caplog.at_level(logging.DEBUG, logger="orchestrator_core.rhai"):
        call = s.run(snap())
    assert call.logs == (("info", "queued 2"), ("warn", "hm"))
    assert call.metrics == (("depth", 2.0),)
    assert calls == [call]
    assert s.last_call is call
    records = [r for r in caplog.records if getattr(r, "event", None) == EVENT_POLICY_LOG]
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.INFO, "policy test.rhai: queued 2"),
        (logging.WARNING, "policy test.rhai: hm"),
    ]
    assert s.stats.log_lines == 2


def test_a_print_flood_is_bounded_and_counted() -> None:
    s = scheduler(
        'fn schedule(ctx) { for i in 0..1000 { print("line " + i); } #{ action: "wait" } }',
        forward_logs=False,
    )
    call = s.run(snap())
    assert call.failure is None
    assert len(call.logs) == 100
    assert call.dropped_logs == 900
    assert s.stats.dropped_logs == 900


def test_ctx_changes_made_by_a_script_do_not_leak_into_the_next_call() -> None:
    s = scheduler(
        "fn schedule(ctx) { let n = ctx.queue.len(); ctx.queue.clear(); ctx.now = 0;"
        ' #{ action: "wait", reason: "n" + n } }'
    )
    state = small_state()
    assert s.schedule(state.snapshot(100.0)) == Wait("n2")
    assert s.schedule(state.snapshot(100.0)) == Wait("n2")


# --------------------------------------------------------------------------------------------
# hostile and broken scripts: the built-in policy decides, the next call works
# --------------------------------------------------------------------------------------------

# Each script misbehaves only when the job "evil" is queued, so the same compiled
# scheduler can show that the next call (without it) decides normally.
HOSTILE = {
    "endless loop": ("loop {}", "max_operations"),
    "endless loop in try/catch": (
        'try { loop {} } catch { return #{ action: "wait" }; }',
        "max_operations",
    ),
    "deep recursion": ("down(0)", "max_call_levels"),
    "string growth": ('let s = "x"; loop { s += s; }', "max_string_size"),
    "array growth": ("let a = [1]; loop { a += a; }", "max_array_size"),
    "map growth": (
        "let m = #{}; let i = 0; loop { let e = #{}; e[`k${i}`] = i; m.mixin(e); i += 1; }",
        "max_operations",
    ),
    "eval through a function pointer": ('call(Fn("eval"), "1 + 1")', "syntax"),
    "file access": ('open("/etc/passwd")', "function_not_found"),
    "network access": ('http_get("http://example.com")', "function_not_found"),
    "process": ('system("rm -rf /")', "function_not_found"),
    "sleep": ("sleep(10)", "function_not_found"),
    "throw": ('throw "no way"', "throw"),
    "unknown ctx field": ("ctx.qeueu", "property_not_found"),
    "garbage: a number": ("return 42", "invalid_decision"),
    "garbage: a string": ('return "dispatch everything"', "invalid_decision"),
    "garbage: unknown action": ('return #{ action: "fly", job_id: "j1" }', "invalid_decision"),
    "garbage: missing field": ('return #{ action: "dispatch", job_id: "j1" }', "invalid_decision"),
    "garbage: extra field": ('return #{ action: "wait", colour: "red" }', "invalid_decision"),
    "garbage: unknown error code": (
        'return #{ action: "reject", job_id: "j1", code: "NOPE" }',
        "invalid_decision",
    ),
    "garbage: a function pointer": ('return Fn("schedule")', "unconvertible_return"),
    "garbage: a closure": ("return |x| x + 1", "unconvertible_return"),
    "invalid: dispatch to a busy worker": (
        'return #{ action: "dispatch", job_id: "j1", worker_id: "w2" }',
        "refused_decision",
    ),
    "invalid: unknown job": (
        'return #{ action: "dispatch", job_id: "nope", worker_id: "w1" }',
        "refused_decision",
    ),
    "invalid: model mismatch": (
        'return #{ action: "dispatch", job_id: "j2", worker_id: "w1" }',
        "refused_decision",
    ),
    "invalid: one worker twice": (
        'return #{ action: "batch", actions: [#{ action: "dispatch", job_id: "j1", worker_id: "w1" },'
        ' #{ action: "dispatch", job_id: "evil", worker_id: "w1" }] }',
        "refused_decision",
    ),
    "invalid: evict a busy worker": (
        'return #{ action: "evict_worker", worker_id: "w2" }',
        "refused_decision",
    ),
    "invalid: start on an unknown GPU": (
        'return #{ action: "start_worker", pool_id: "p1", gpu_id: "g9", model_ref: "qwen" }',
        "refused_decision",
    ),
}


def hostile_source(body: str) -> str:
    return (
        "fn down(n) { down(n + 1) }\n"
        "fn schedule(ctx) {\n"
        '    if ctx.get_job("evil") != () {\n'
        f"        {body};\n"
        "    }\n"
        '    #{ action: "dispatch", job_id: ctx.queue[0].id, worker_id: "w1" }\n'
        "}\n"
    )


@pytest.mark.parametrize(("body", "kind"), list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_misbehaving_script_gets_the_builtin_decision_and_the_next_call_works(
    body: str, kind: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    s = scheduler(hostile_source(body), limits=RhaiLimits(max_operations=200_000, budget_ms=2_000))
    evil = snap(evil=True)
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="orchestrator_core.rhai"):
        call = s.run(evil)
    assert time.perf_counter() - started < 3.0
    assert call.failure is not None
    if kind is not None:
        assert call.failure.kind == kind
    assert call.decision == BUILTIN.schedule(evil)
    assert call.fallback
    assert call.failure.message
    stats = s.stats
    assert stats.fallbacks == 1
    assert stats.errors_by_kind == {call.failure.kind: 1}
    assert stats.last_failure == call.failure
    [record] = [r for r in caplog.records if getattr(r, "event", None) == EVENT_POLICY_FAILED]
    assert record.script == "test.rhai"  # type: ignore[attr-defined]
    assert record.kind == call.failure.kind  # type: ignore[attr-defined]
    assert "the built-in policy decided" in record.getMessage()
    # the same scheduler decides the next snapshot with the script
    assert s.schedule(snap()) == Dispatch("j1", "w1")
    assert s.stats.decided == 1


def test_a_runtime_error_names_the_script_line_and_column() -> None:
    s = scheduler("fn schedule(ctx) {\n    let x = 1;\n    x.nope()\n}\n")
    failure = s.run(snap()).failure
    assert failure is not None
    assert failure.kind == "function_not_found"
    assert (failure.where, failure.line, failure.column) == ("test.rhai", 3, 7)
    assert failure.traceback == ("schedule @ 3:7",)
    assert "test.rhai:3:7" in failure.describe()


def test_an_error_inside_a_helper_points_at_the_calling_script_line() -> None:
    # find_least_loaded_worker(model, pool) exists: called function-style, `this` is unbound
    s = scheduler('fn schedule(ctx) {\n  find_least_loaded_worker(ctx, "llama")\n}\n')
    failure = s.run(snap()).failure
    assert failure is not None
    assert failure.kind == "unbound_this"
    assert (failure.where, failure.line, failure.column) == ("test.rhai", 2, 3)
    assert "inside prelude helper find_least_loaded_worker" in failure.message
    # a wrong arity is a plain function_not_found with the calling-convention hint
    failure = (
        scheduler('fn schedule(ctx) {\n  find_ready_worker(ctx, "llama")\n}\n').run(snap()).failure
    )
    assert failure is not None and failure.kind == "function_not_found"
    assert failure.hint is not None and "ctx.find_least_loaded_worker(model)" in failure.hint


def test_a_refused_decision_is_counted_by_refusal_code() -> None:
    s = scheduler('fn schedule(ctx) { #{ action: "dispatch", job_id: "j1", worker_id: "w2" } }')
    call = s.run(snap())
    assert call.failure is not None
    assert [str(r.code) for r in call.failure.refusals] == ["worker_not_ready"]
    assert call.failure.field == "worker_id"
    assert s.stats.refusals_by_code == {"worker_not_ready": 1}


def test_the_wall_clock_budget_ends_an_endless_loop(caplog: pytest.LogCaptureFixture) -> None:
    s = scheduler(
        "fn schedule(ctx) { loop {} }",
        limits=RhaiLimits(max_operations=10**12, budget_ms=30),
    )
    started = time.perf_counter()
    call = s.run(snap())
    elapsed = time.perf_counter() - started
    assert call.failure is not None and call.failure.kind == "timeout"
    assert call.decision == BUILTIN.schedule(snap())
    assert 0.02 < elapsed < 1.0


@pytest.mark.parametrize(
    "body",
    ["loop {}", "down(0)", 'let s = "x"; loop { s += s; }', "let a = [1]; loop { a += a; }"],
)
def test_default_limits_end_hostile_scripts_within_the_default_budget(body: str) -> None:
    s = scheduler(hostile_source(body))  # default limits: 1e6 operations, 50 ms
    started = time.perf_counter()
    call = s.run(snap(evil=True))
    assert time.perf_counter() - started < 1.0
    assert call.failure is not None
    assert call.failure.kind in {
        "max_operations",
        "timeout",
        "max_call_levels",
        "max_string_size",
        "max_array_size",
    }
    assert call.decision == BUILTIN.schedule(snap(evil=True))
    assert s.schedule(snap()) == Dispatch("j1", "w1")


def test_repeated_identical_failures_are_logged_once_then_every_hundredth(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = scheduler('fn schedule(ctx) { throw "broken" }')
    with caplog.at_level(logging.WARNING, logger="orchestrator_core.rhai"):
        for _ in range(201):
            s.run(snap())
    logged = [r for r in caplog.records if getattr(r, "event", None) == EVENT_POLICY_FAILED]
    assert [r.repeats for r in logged] == [0, 100, 200]  # type: ignore[attr-defined]
    assert s.stats.fallbacks == 201
    assert s.stats.errors_by_kind == {"throw": 201}


def test_failure_log_records_carry_structured_fields(caplog: pytest.LogCaptureFixture) -> None:
    s = scheduler("fn schedule(ctx) {\n  ctx.nope\n}")
    with caplog.at_level(logging.WARNING, logger="orchestrator_core.rhai"):
        s.run(snap())
    [record] = caplog.records
    fields = record.fields  # type: ignore[attr-defined]
    assert record.event == EVENT_POLICY_FAILED  # type: ignore[attr-defined]
    assert fields["script"] == "test.rhai"
    assert fields["kind"] == "property_not_found"
    assert (fields["line"], fields["column"]) == (2, 7)
    assert "nope" in fields["error"]


def test_concurrent_decisions_on_several_threads_count_every_call() -> None:
    s = scheduler(GOOD)
    bad = scheduler('fn schedule(ctx) { throw "x" }')
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                assert s.schedule(snap()) == Dispatch("j1", "w1")
                bad.schedule(snap())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert s.stats.calls == 80 and s.stats.decided == 80
    assert bad.stats.fallbacks == 80


# --------------------------------------------------------------------------------------------
# policies that cannot be used at all
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "kind", "line"),
    [
        ("fn schedule(ctx) {\n  let x = ;\n}", "syntax", 2),
        ('fn schedule(ctx) {\n  eval("1")\n}', "forbidden_symbol", 2),
        ('import "os" as os;\nfn schedule(ctx) { 1 }', "forbidden_symbol", 1),
        ("fn plan() { 1 }", "missing_entry_point", None),
        ("fn schedule() { 1 }", "missing_entry_point", None),
        ("fn schedule(ctx) { 1 }\nfn get_pool(id) { 2 }", "prelude_collision", 2),
    ],
)
def test_a_policy_that_does_not_compile_is_refused_with_its_position(
    source: str, kind: str, line: int | None
) -> None:
    with pytest.raises(PolicyInvalid) as info:
        scheduler(source)
    [diag] = info.value.diagnostics
    assert diag.kind == kind
    assert diag.line == line
    assert info.value.problems == [str(diag)]
    assert str(info.value.code) == "INVALID_REQUEST"


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


def config(**scheduler: Any) -> OrchestratorConfig:
    return OrchestratorConfig.from_mapping({"scheduler": scheduler}, env={})


def test_build_policy_scheduler_builds_rhai_rules_and_builtin_policies() -> None:
    files = {"p.rhai": GOOD, "r.yaml": "rules:\n  - {when: {priority: batch}, action: wait}\n"}
    rhai = build_policy_scheduler(
        config(policy="rhai", script="p.rhai", budget_ms=20, max_operations=5000),
        read_file=files.__getitem__,
    )
    assert isinstance(rhai, RhaiScheduler)
    assert rhai.name == "rhai" and rhai.script_name == "p.rhai"
    assert rhai.limits.budget_ms == 20 and rhai.limits.max_operations == 5000
    assert rhai.schedule(snap()) == Dispatch("j1", "w1")
    rules = build_policy_scheduler(
        config(policy="rules", rules="r.yaml"), read_file=files.__getitem__
    )
    assert isinstance(rules, RhaiScheduler) and rules.name == "rules"
    # j1 goes to the built-in policy (its dispatch), j2 waits: no worker start for qwen
    assert rules.schedule(snap()) == Dispatch("j1", "w1", "p1")
    builtin = build_policy_scheduler(config(policy="fifo"))
    assert isinstance(builtin, BuiltinScheduler) and builtin.name == "fifo"
    text = build_policy_scheduler(config(policy="rhai", script="<request>"), text=GOOD)
    assert isinstance(text, RhaiScheduler)


def test_build_policy_scheduler_reports_problems_under_the_config_key() -> None:
    def missing(path: str) -> str:
        raise FileNotFoundError(2, "No such file or directory", path)

    with pytest.raises(PolicyInvalid) as bad:
        build_policy_scheduler(
            config(policy="rhai", script="p.rhai"), text="fn schedule(ctx) {\n  let = 1;\n}"
        )
    assert bad.value.problems[0].startswith("scheduler.script: p.rhai:2:")
    with pytest.raises(Exception) as unreadable:
        build_policy_scheduler(config(policy="rules", rules="r.yaml"), read_file=missing)
    assert "scheduler.rules: cannot read 'r.yaml': No such file or directory" in str(
        unreadable.value
    )
    with pytest.raises(Exception) as no_reader:
        build_policy_scheduler(config(policy="rhai", script="p.rhai"))
    assert "scheduler.script" in str(no_reader.value)
    with pytest.raises(PolicyInvalid) as bad_rules:
        build_policy_scheduler(
            config(policy="rules", rules="r.yaml"), text="rules:\n  - action: fly\n"
        )
    assert bad_rules.value.problems[0].startswith("scheduler.rules: r.yaml:2:")


def test_the_registry_builds_rhai_and_rules_policies_by_name() -> None:
    files = {"p.rhai": GOOD}
    registry = policy_registry(read_file=files.__getitem__)
    assert registry.names() == ["fair-share", "fifo", "priority", "rhai", "rules"]
    built = build_scheduler(config(policy="rhai", script="p.rhai"), registry)
    assert isinstance(built, RhaiScheduler)
    with pytest.raises(ValueError, match="already registered"):
        register_policies(registry, read_file=files.__getitem__)
    register_policies(default_registry(), read_file=files.__getitem__)


def test_the_factory_passes_hooks_and_log_forwarding_to_the_scheduler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[PolicyCall] = []
    source = 'fn schedule(ctx) { log_info("hello"); #{ action: "wait", reason: "r" } }'
    registry = policy_registry(
        read_file={"p.rhai": source}.__getitem__, on_call=seen.append, forward_logs=False
    )
    built = build_scheduler(config(policy="rhai", script="p.rhai"), registry)
    with caplog.at_level(logging.DEBUG, logger="orchestrator_core.rhai"):
        assert built.schedule(snap()) == Wait("r")
    assert [c.logs for c in seen] == [(("info", "hello"),)]
    assert caplog.records == []
