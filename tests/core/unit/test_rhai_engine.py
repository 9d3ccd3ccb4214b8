"""The embedded Rhai engine: sandbox, limits, conversion, errors, calling conventions.

Hostile scripts end with their own error kind inside their budget, and the same compiled
script answers the next call. Deterministic cases use the operation budget; wall-clock
checks are generous backstops.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from orchestrator_core import _rhai
from orchestrator_core.rhai.engine import (
    DEFAULT_RHAI_LIMITS,
    CompiledScript,
    RhaiCompileError,
    RhaiConversionError,
    RhaiError,
    RhaiLimitExceeded,
    RhaiLimits,
    RhaiRuntimeError,
    RhaiTimeout,
    compile_script,
)

I64_MIN = -(2**63)
I64_MAX = 2**63 - 1

HOSTILE = """
fn ok() { #{ action: "wait", reason: "still alive" } }
fn spin() { loop {} }
fn spin_caught() { try { loop {} } catch (e) { "swallowed" } }
fn spin_in_helper() { loop {} }
fn spin_helper_caught() { try { spin_in_helper() } catch { "swallowed" } }
fn recurse(n) { recurse(n + 1) }
fn runaway() { recurse(0) }
fn recurse_caught() { try { recurse(0) } catch { "swallowed" } }
fn string_doubling() { let s = "x"; loop { s += s; } }
fn array_doubling() { let a = [1]; loop { a += a; } }
fn map_growth() { let m = #{}; let i = 0; loop { m["k" + i] = i; i += 1; } }
fn map_growth_checked() {
    let m = #{}; let i = 0;
    loop { let e = #{}; e["k" + i] = i; m.mixin(e); i += 1; }
}
fn size_caught() { try { let s = "x"; loop { s += s; } } catch { "swallowed" } }
fn deep_nesting() { let a = []; loop { a = [a]; } }
fn sleeper() { sleep(10); "woke up" }
fn sleeper_float() { sleep(10.0); "woke up" }
fn print_flood() { for i in 0..10000 { print("line " + i); } "done" }
fn long_line() { let s = "é"; for i in 0..12 { s += s; } log_warn(s); s.len() }
fn fn_pointer() { Fn("ok") }
fn closure() { let y = 1; |x| x + y }
fn garbage_in_map() { #{ action: "wait", cb: Fn("ok") } }
fn range_value() { 0..10 }
fn timestamp_value() { timestamp() }
"""


def expect_ok(script: CompiledScript) -> None:
    result = script.call("ok", [])
    assert result.value == {"action": "wait", "reason": "still alive"}


@pytest.fixture(scope="module")
def hostile() -> CompiledScript:
    return compile_script(HOSTILE, name="hostile")


# --------------------------------------------------------------------------------------------
# Hostile scripts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fn_name", "exc", "kind"),
    [
        ("spin", RhaiLimitExceeded, "max_operations"),
        ("spin_caught", RhaiLimitExceeded, "max_operations"),
        ("spin_helper_caught", RhaiLimitExceeded, "max_operations"),
        ("runaway", RhaiLimitExceeded, "max_call_levels"),
        ("recurse_caught", RhaiLimitExceeded, "max_call_levels"),
        ("string_doubling", RhaiLimitExceeded, "max_string_size"),
        ("array_doubling", RhaiLimitExceeded, "max_array_size"),
        ("size_caught", RhaiLimitExceeded, "max_string_size"),
        ("sleeper", RhaiRuntimeError, "function_not_found"),
        ("sleeper_float", RhaiRuntimeError, "function_not_found"),
        ("timestamp_value", RhaiRuntimeError, "function_not_found"),
        ("fn_pointer", RhaiConversionError, "unconvertible_return"),
        ("closure", RhaiConversionError, "unconvertible_return"),
        ("garbage_in_map", RhaiConversionError, "unconvertible_return"),
        ("range_value", RhaiConversionError, "unconvertible_return"),
    ],
)
def test_hostile_call_ends_with_its_own_error_and_the_script_survives(
    hostile: CompiledScript, fn_name: str, exc: type[RhaiError], kind: str
) -> None:
    started = time.perf_counter()
    with pytest.raises(exc) as info:
        hostile.call(fn_name, [], budget_ms=10_000)
    assert time.perf_counter() - started < 5.0  # the operation/size/level limits bind first
    assert type(info.value) is exc
    assert info.value.kind == kind
    assert kind in str(info.value)
    expect_ok(hostile)


def test_try_catch_does_not_swallow_limits_but_catches_ordinary_errors() -> None:
    script = compile_script(
        """
        fn ordinary() { let r = ""; try { throw "boom"; } catch (e) { r = "caught " + e; } r }
        fn limit() { let r = ""; try { loop {} } catch (e) { r = "caught"; } r }
        """
    )
    assert script.call("ordinary").value == "caught boom"
    with pytest.raises(RhaiLimitExceeded):
        script.call("limit")


def test_endless_loop_ends_on_the_wall_clock_budget() -> None:
    script = compile_script(HOSTILE, limits=RhaiLimits(max_operations=10**12))
    started = time.perf_counter()
    with pytest.raises(RhaiTimeout) as info:
        script.call("spin", [], budget_ms=50)
    elapsed = time.perf_counter() - started
    assert info.value.kind == "timeout"
    assert 0.03 < elapsed < 1.0
    expect_ok(script)


def test_timeout_inside_try_catch_is_not_swallowed() -> None:
    script = compile_script(
        HOSTILE, limits=RhaiLimits(max_operations=10**12, max_string_size=1 << 30)
    )
    started = time.perf_counter()
    with pytest.raises(RhaiTimeout):
        script.call("spin_helper_caught", [], budget_ms=20)
    assert time.perf_counter() - started < 1.0
    expect_ok(script)


def test_map_growth_hits_the_map_size_limit() -> None:
    script = compile_script(HOSTILE, limits={"max_map_size": 1_000})
    with pytest.raises(RhaiLimitExceeded) as info:
        script.call("map_growth_checked")
    assert info.value.kind == "max_map_size"
    expect_ok(script)


def test_map_growth_through_the_indexer_is_bounded_by_operations(hostile: CompiledScript) -> None:
    # Rhai 1.27 does not size-check `m[new_key] = v`: the operation budget bounds such
    # growth (about one entry per 6 operations), and the next method call on the map
    # (here none) would check it.
    started = time.perf_counter()
    with pytest.raises(RhaiLimitExceeded) as info:
        hostile.call("map_growth", [], budget_ms=10_000)
    assert info.value.kind == "max_operations"
    assert time.perf_counter() - started < 5.0
    expect_ok(hostile)


def test_map_growth_with_default_limits_ends_within_budget(hostile: CompiledScript) -> None:
    # Every mixin size-checks the whole map, so growth is quadratic: the time budget ends
    # it long before the default map-size limit.
    started = time.perf_counter()
    with pytest.raises((RhaiLimitExceeded, RhaiTimeout)):
        hostile.call("map_growth_checked", [], budget_ms=50)
    assert time.perf_counter() - started < 1.0
    expect_ok(hostile)


def test_deep_data_nesting_ends_cleanly(hostile: CompiledScript) -> None:
    started = time.perf_counter()
    with pytest.raises((RhaiLimitExceeded, RhaiTimeout)):
        hostile.call("deep_nesting", [], budget_ms=200)
    assert time.perf_counter() - started < 2.0
    expect_ok(hostile)


def test_eval_is_refused_at_compile_time() -> None:
    with pytest.raises(RhaiCompileError) as info:
        compile_script('fn f() {\n  eval("1")\n}')
    assert info.value.kind == "forbidden_symbol"
    assert info.value.line == 2


def test_eval_through_a_function_pointer_is_refused() -> None:
    script = compile_script('fn f() { call(Fn("eval"), "40 + 2") }\nfn ok() { 1 }')
    with pytest.raises(RhaiError):
        script.call("f")
    assert script.call("ok").value == 1


@pytest.mark.parametrize(
    "source",
    ['import "x" as y;\nfn f() { 1 }', 'fn f() {\n  import "x" as y;\n  1\n}'],
)
def test_import_is_refused_at_compile_time(source: str) -> None:
    with pytest.raises(RhaiCompileError) as info:
        compile_script(source)
    assert info.value.kind == "forbidden_symbol"


def test_sleep_is_unknown_and_costs_no_time(hostile: CompiledScript) -> None:
    started = time.perf_counter()
    with pytest.raises(RhaiRuntimeError, match="sleep"):
        hostile.call("sleeper")
    assert time.perf_counter() - started < 1.0


def test_print_flood_is_bounded(hostile: CompiledScript) -> None:
    result = hostile.call("print_flood", [], budget_ms=10_000)  # debug builds are slow
    assert result.value == "done"
    assert len(result.logs) == DEFAULT_RHAI_LIMITS.max_log_lines
    assert result.logs[0] == ("info", "line 0")
    assert result.dropped_logs == 10_000 - DEFAULT_RHAI_LIMITS.max_log_lines


def test_long_log_lines_are_truncated_on_a_character_boundary(hostile: CompiledScript) -> None:
    result = hostile.call("long_line")
    assert result.value == 4096  # characters: the string itself is intact
    ((level, line),) = result.logs
    assert level == "warn"
    assert len(line.encode()) <= DEFAULT_RHAI_LIMITS.max_log_line_bytes
    assert line == "é" * (DEFAULT_RHAI_LIMITS.max_log_line_bytes // 2)


def test_print_never_reaches_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    script = compile_script('fn f() { print("to the buffer"); debug("and this"); 1 }')
    result = script.call("f")
    out, err = capfd.readouterr()
    assert "to the buffer" not in out + err
    assert result.logs == [("info", "to the buffer"), ("debug", '"and this"')]


def test_deep_recursion_ends_cleanly_on_a_small_thread_stack() -> None:
    # The engine runs on its own large stack segment: even at the ceiling of call levels
    # and on a 256 KiB thread stack, recursion ends with an error, not a crash.
    code = textwrap.dedent(
        """
        import threading
        from orchestrator_core import _rhai
        out = []
        def run():
            s = _rhai.CompiledScript(
                "fn f(n) { let a = [n, n + 1]; f(n + 1) + a[0] }",
                limits={"max_call_levels": _rhai.MAX_CALL_LEVELS_CEILING},
            )
            try:
                s.call("f", [0])
            except _rhai.RhaiLimitExceeded as e:
                out.append(e.kind)
            nest = _rhai.CompiledScript("fn g() { let a = []; loop { a = [a]; } }")
            try:
                nest.call("g", budget_ms=300)
            except (_rhai.RhaiLimitExceeded, _rhai.RhaiTimeout) as e:
                out.append("nest " + e.kind)
        threading.stack_size(256 * 1024)
        t = threading.Thread(target=run)
        t.start()
        t.join()
        print(out)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "['max_call_levels', 'nest " in proc.stdout


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------

ECHO = compile_script(
    """
    fn echo(x) { x }
    fn type_name(x) { type_of(x) }
    fn add(a, b) { a + b }
    """
)


def test_round_trip_of_nested_values() -> None:
    value = {
        "queue": [
            {"id": "j1", "seed": None, "temperature": 0.7, "max_tokens": 128, "retry": False},
            {"id": "j2", "seed": 42, "temperature": 1.0, "max_tokens": 1, "retry": True},
        ],
        "nested": {"a": [[1, 2], [], [{"b": None}]], "empty": {}},
        "unicode": "héllo ✓",
        "now": 1_760_000_000_000,
        "neg": -1.5e-300,
        "inf": math.inf,
    }
    assert ECHO.call("echo", [value]).value == value


def test_tuples_become_lists_and_dicts_come_back_with_sorted_keys() -> None:
    result = ECHO.call("echo", [{"b": (1, 2), "a": ()}]).value
    assert result == {"a": [], "b": [1, 2]}
    assert list(result) == ["a", "b"]


@pytest.mark.parametrize(
    ("value", "rhai_type"),
    [
        (True, "bool"),
        (False, "bool"),
        (1, "i64"),
        (0, "i64"),
        (1.0, "f64"),
        ("1", "string"),
        (None, "()"),
        ([True], "array"),
        ({"k": 1}, "map"),
    ],
)
def test_bool_is_not_int_and_types_map_as_documented(value: object, rhai_type: str) -> None:
    assert ECHO.call("type_name", [value]).value == rhai_type


def test_bool_and_int_come_back_as_their_own_types() -> None:
    out = ECHO.call("echo", [[True, 1, 0, False]]).value
    assert [type(v) for v in out] == [bool, int, int, bool]


def test_int_range_is_64_bit_signed() -> None:
    assert ECHO.call("echo", [I64_MAX]).value == I64_MAX
    assert ECHO.call("echo", [I64_MIN]).value == I64_MIN
    for too_big in (I64_MAX + 1, I64_MIN - 1, 10**30):
        with pytest.raises(RhaiConversionError) as info:
            ECHO.call("echo", [{"n": [too_big]}])
        assert info.value.kind == "unconvertible_argument"
        assert 'args[0]["n"][0]' in str(info.value)


def test_integer_overflow_inside_the_script_is_a_runtime_error() -> None:
    with pytest.raises(RhaiRuntimeError) as info:
        ECHO.call("add", [I64_MAX, 1])
    assert info.value.kind == "arithmetic"


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ({1: "x"}, "only str keys"),
        ({"s": {1, 2}}, "set"),
        (b"bytes", "bytes"),
        (object(), "object"),
        ({"f": lambda: 1}, "function"),
    ],
)
def test_unsupported_arguments_are_refused_with_their_path(value: object, needle: str) -> None:
    with pytest.raises(RhaiConversionError, match=needle) as info:
        ECHO.call("echo", [value])
    assert info.value.kind == "unconvertible_argument"


def test_nesting_deeper_than_the_limit_is_refused_both_ways() -> None:
    deep: Any = 1
    for _ in range(_rhai.MAX_CONVERSION_DEPTH + 1):
        deep = [deep]
    with pytest.raises(RhaiConversionError, match="nested deeper"):
        ECHO.call("echo", [deep])
    script = compile_script("fn deep() { let a = 1; for i in 0..100 { a = [a]; } a }")
    with pytest.raises(RhaiConversionError) as info:
        script.call("deep")
    assert info.value.kind == "unconvertible_return"


def test_args_must_be_a_list_or_tuple() -> None:
    assert ECHO.call("add", (1, 2)).value == 3
    with pytest.raises(TypeError):
        ECHO.call("add", {"a": 1, "b": 2})  # type: ignore[arg-type]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=I64_MIN, max_value=I64_MAX)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=40,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_property_json_like_values_round_trip(value: object) -> None:
    assert ECHO.call("echo", [value]).value == value


# --------------------------------------------------------------------------------------------
# Calling conventions
# --------------------------------------------------------------------------------------------


def test_this_binding_reaches_ctx_by_reference() -> None:
    script = compile_script(
        """
        fn mark() { this.marked = true; }
        fn mark_arg(c) { c.marked = true; }
        fn method_style() { this.mark(); this.marked }
        fn function_style() { mark_arg(this); "marked" in this }
        fn count() { this.queue.len() }
        fn needs_this() { this.queue }
        """
    )
    ctx = {"queue": [{"id": "a"}, {"id": "b"}]}
    # A method-style helper changes the caller's value: it was not copied.
    assert script.call("method_style", this=ctx).value is True
    # A function-style helper gets a copy: the caller's value is unchanged.
    assert script.call("function_style", this=ctx).value is False
    assert script.call("count", this=ctx).value == 2
    assert ctx == {"queue": [{"id": "a"}, {"id": "b"}]}  # Python's object is never touched
    with pytest.raises(RhaiRuntimeError) as info:
        script.call("needs_this")
    assert info.value.kind == "unbound_this"


def test_top_level_statements_never_run() -> None:
    script = compile_script(
        """
        print("top level");
        throw "top level throw";
        fn schedule(ctx) { log_info("in schedule"); ctx.n + 1 }
        """
    )
    result = script.call("schedule", [{"n": 1}])
    assert result.value == 2
    assert result.logs == [("info", "in schedule")]


def test_functions_and_has_function() -> None:
    script = compile_script(
        "fn schedule(ctx) { 1 }\nfn helper(a, b) { 2 }\nprivate fn hidden() { 3 }",
        prelude="fn prelude_helper(x) { x }",
    )
    assert script.functions() == [("helper", 2), ("hidden", 0), ("schedule", 1)]
    assert script.prelude_functions() == [("prelude_helper", 1)]
    assert script.has_function("schedule", 1)
    assert not script.has_function("schedule", 2)
    assert not script.has_function("prelude_helper", 1)
    with pytest.raises(RhaiRuntimeError) as info:
        script.call("missing", [])
    assert info.value.kind == "function_not_found"


def test_logs_levels_and_metrics() -> None:
    script = compile_script(
        """
        fn f() {
            log_debug("d"); log_info("i"); log_warn("w"); log_error(42);
            emit_metric("queue_depth", 3); emit_metric("ratio", 0.5);
            for i in 0..500 { emit_metric("m", i); }
            "ok"
        }
        fn bad_metric() { emit_metric("x", 1.0 / 0.0) }
        """
    )
    result = script.call("f")
    assert result.logs == [("debug", "d"), ("info", "i"), ("warn", "w"), ("error", "42")]
    assert result.metrics[:2] == [("queue_depth", 3.0), ("ratio", 0.5)]
    assert len(result.metrics) == DEFAULT_RHAI_LIMITS.max_metrics
    assert result.dropped_metrics == 502 - DEFAULT_RHAI_LIMITS.max_metrics
    assert result.operations > 500
    assert result.elapsed_us >= 0
    with pytest.raises(RhaiRuntimeError, match="finite"):
        script.call("bad_metric")


def test_logs_recorded_before_an_error_travel_with_it() -> None:
    script = compile_script('fn f() { log_info("before"); throw #{ code: "E1" }; }')
    with pytest.raises(RhaiRuntimeError) as info:
        script.call("f")
    assert info.value.logs == [("info", "before")]
    assert info.value.thrown == {"code": "E1"}
    assert info.value.kind == "throw"


def test_gil_is_released_while_the_script_runs() -> None:
    script = compile_script("fn spin() { loop {} }", limits={"max_operations": 10**12})
    counter = 0
    stop = threading.Event()
    started = threading.Event()

    def count() -> None:
        nonlocal counter
        started.set()
        while not stop.is_set():
            counter += 1

    thread = threading.Thread(target=count)
    thread.start()
    started.wait()
    try:
        time.sleep(0.01)
        before = counter
        with pytest.raises(RhaiTimeout):
            script.call("spin", budget_ms=30)
        advanced = counter - before
    finally:
        stop.set()
        thread.join()
    # With the GIL held for 30 ms the counter could not move at all.
    assert advanced > 1_000


def test_concurrent_calls_keep_their_own_logs_and_deadlines() -> None:
    script = compile_script(
        """
        fn work(tag, n) { for i in 0..n { log_info(tag); } tag }
        fn spin() { loop {} }
        """,
        limits={"max_operations": 10**12},
    )
    errors: list[BaseException] = []

    def worker(tag: str) -> None:
        try:
            for _ in range(50):
                result = script.call("work", [tag, 20])
                assert result.value == tag
                assert result.logs == [("info", tag)] * 20
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(4)]
    spinner_done: list[float] = []

    def spinner() -> None:
        started = time.perf_counter()
        try:
            script.call("spin", budget_ms=100)
        except RhaiTimeout:
            spinner_done.append(time.perf_counter() - started)

    threads.append(threading.Thread(target=spinner))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert spinner_done
    assert spinner_done[0] < 2.0


def test_budget_ms_argument_and_limit() -> None:
    script = compile_script("fn spin() { loop {} }", limits={"max_operations": 10**12})
    for budget in (0, -1, 600_001):
        with pytest.raises((ValueError, OverflowError)):
            script.call("spin", budget_ms=budget)
    quick = compile_script(
        "fn spin() { loop {} }", limits=RhaiLimits(max_operations=10**12, budget_ms=5)
    )
    started = time.perf_counter()
    with pytest.raises(RhaiTimeout):
        quick.call("spin")  # the limit's budget_ms is the default of the call
    assert time.perf_counter() - started < 0.5


# --------------------------------------------------------------------------------------------
# Errors and positions
# --------------------------------------------------------------------------------------------


def test_runtime_error_reports_its_line_and_column() -> None:
    script = compile_script(
        "fn schedule(ctx) {\n    let q = ctx.queue;\n    q[5].id\n}\n", name="my_policy"
    )
    with pytest.raises(RhaiRuntimeError) as info:
        script.call("schedule", [{"queue": []}])
    err = info.value
    assert err.kind == "index_out_of_bounds"
    assert (err.line, err.column) == (3, 7)  # the index expression
    assert err.source == "my_policy"
    assert "my_policy line 3, column 7" in str(err)
    assert err.traceback == ["schedule @ 3:7"]


def test_nested_errors_carry_a_traceback() -> None:
    script = compile_script(
        """fn schedule(ctx) {
    helper(ctx)
}
fn helper(ctx) {
    let x = 1;
    inner(x)
}
fn inner(x) {
    x.missing_property
}"""
    )
    with pytest.raises(RhaiRuntimeError) as info:
        script.call("schedule", [{}])
    err = info.value
    assert (err.line, err.column) == (9, 7)
    assert err.traceback == ["schedule @ 2:5", "helper @ 6:5", "inner @ 9:7"]
    assert "schedule @ 2:5 -> helper @ 6:5 -> inner @ 9:7" in str(err)


def test_strict_variables_and_invalid_map_properties_are_errors() -> None:
    with pytest.raises(RhaiCompileError) as info:
        compile_script("fn f() {\n  undefined_thing + 1\n}")
    assert info.value.kind == "undefined_variable"
    assert info.value.line == 2
    script = compile_script("fn f(ctx) { ctx.typo }")
    with pytest.raises(RhaiRuntimeError) as rt:
        script.call("f", [{"queue": []}])
    assert rt.value.kind == "property_not_found"


def test_compile_errors_carry_line_and_column() -> None:
    with pytest.raises(RhaiCompileError) as info:
        compile_script("fn ok() { 1 }\nfn broken() {\n    let x = ;\n}", name="p.rhai")
    err = info.value
    assert err.kind == "syntax"
    assert (err.line, err.column) == (3, 13)
    assert err.source == "p.rhai"
    assert "p.rhai line 3, column 13" in str(err)


def test_expression_depth_is_a_compile_time_limit() -> None:
    deep = "(" * 40 + "1" + ")" * 40  # each parenthesis costs about two levels
    with pytest.raises(RhaiCompileError) as info:
        compile_script(f"fn f() {{ {deep} }}")
    assert info.value.kind == "expr_too_deep"
    compile_script(
        f"fn f() {{ {deep} }}", limits={"max_expr_depth": 200, "max_function_expr_depth": 200}
    )


def test_prelude_collisions_are_refused_with_the_position_of_the_user_function() -> None:
    prelude = "fn find_worker(ctx, model) { () }\nfn average(xs) { 0 }"
    with pytest.raises(RhaiCompileError) as info:
        compile_script("fn schedule(ctx) { 1 }\n\n  fn find_worker(c, m) { 2 }", prelude=prelude)
    err = info.value
    assert err.kind == "prelude_collision"
    assert "find_worker/2" in str(err)
    assert (err.line, err.column) == (3, 3)
    # Same name, other arity: an overload, allowed.
    script = compile_script(
        "fn average(a, b) { (a + b) / 2 }\nfn schedule(ctx) { average([1]) + average(1, 3) }",
        prelude=prelude,
    )
    assert script.call("schedule", [{}]).value == 2


def test_prelude_functions_are_callable_and_their_errors_name_the_prelude() -> None:
    prelude = "fn first_job(ctx) {\n  ctx.queue[0]\n}\nfn queue_len() { this.queue.len() }"
    script = compile_script(
        "fn schedule(ctx) {\n  let j = first_job(ctx);\n  j.id\n}\nfn n() { this.queue_len() }",
        prelude=prelude,
    )
    assert script.call("schedule", [{"queue": [{"id": "j1"}]}]).value == "j1"
    assert script.call("n", this={"queue": [1, 2, 3]}).value == 3
    with pytest.raises(RhaiRuntimeError) as info:
        script.call("schedule", [{"queue": []}])
    err = info.value
    assert err.source == "prelude"
    assert (err.line, err.column) == (2, 13)
    assert err.traceback == ["schedule @ 2:11", "first_job @ 2:13 (prelude)"]


def test_prelude_syntax_errors_name_the_prelude() -> None:
    with pytest.raises(RhaiCompileError) as info:
        compile_script("fn f() { 1 }", prelude="fn helper( { }")
    assert info.value.source == "prelude"


def test_exception_hierarchy() -> None:
    for cls in (
        RhaiCompileError,
        RhaiRuntimeError,
        RhaiLimitExceeded,
        RhaiTimeout,
        RhaiConversionError,
    ):
        assert issubclass(cls, RhaiError)
        assert cls.__module__ == "orchestrator_core._rhai"
    assert issubclass(RhaiError, Exception)


# --------------------------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------------------------


def test_dataclass_defaults_match_the_extension() -> None:
    assert DEFAULT_RHAI_LIMITS.as_dict() == _rhai.DEFAULT_LIMITS
    assert compile_script("fn f() { 1 }").limits == _rhai.DEFAULT_LIMITS


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown Rhai limit"):
        compile_script("fn f() { 1 }", limits={"max_opperations": 5})
    with pytest.raises(TypeError):
        compile_script("fn f() { 1 }", limits={"max_operations": True})
    with pytest.raises(ValueError, match="between"):
        compile_script("fn f() { 1 }", limits={"max_call_levels": 100_000})
    with pytest.raises(ValueError, match="between"):
        compile_script("fn f() { 1 }", limits=RhaiLimits(max_operations=0))
    with pytest.raises(TypeError):
        CompiledScript("fn f() { 1 }", limits=42)  # type: ignore[arg-type]
    script = CompiledScript("fn f() { 1 }", limits=RhaiLimits(max_operations=77))
    assert script.limits["max_operations"] == 77


def test_operations_limit_is_exact() -> None:
    script = compile_script(
        "fn count(n) { let i = 0; while i < n { i += 1; } i }", limits={"max_operations": 1_000}
    )
    small = script.call("count", [10])
    assert small.value == 10
    assert 0 < small.operations < 1_000
    with pytest.raises(RhaiLimitExceeded):
        script.call("count", [10_000])


def test_variables_limit() -> None:
    few = "; ".join(f"let v{i} = {i}" for i in range(10))
    many = "; ".join(f"let v{i} = {i}" for i in range(30))
    script = compile_script(
        f"fn few() {{ {few}; v9 }}\nfn many() {{ {many}; v29 }}", limits={"max_variables": 20}
    )
    assert script.call("few").value == 9
    with pytest.raises(RhaiLimitExceeded) as info:
        script.call("many")
    assert info.value.kind == "max_variables"


def make_ctx(n_jobs: int) -> dict[str, Any]:
    return {
        "queue": [
            {
                "id": f"job-{i:032d}",
                "tenant_id": f"tenant-{i % 20:02d}",
                "session_id": None if i % 2 else f"session-{i:028d}",
                "priority": "interactive" if i % 3 == 0 else "batch",
                "model_ref": "llama-3-8b-instruct-q4",
                "prompt_hash": f"{i:064x}",
                "max_tokens": 256,
                "seed": None if i % 3 else i,
                "temperature": 0.7,
                "created_at": 1_760_000_000_000 + i,
                "queued_at": 1_760_000_000_000 + i,
                "wait_time_ms": i,
                "retry_count": 0,
                "estimated_vram_bytes": 8 * 2**30,
                "status": "queued",
            }
            for i in range(n_jobs)
        ],
        "pools": [
            {
                "id": f"pool-{p}",
                "status": "online",
                "workers": [
                    {"id": f"w-{p}-{w}", "status": "ready", "gpu_ids": [w % 4]} for w in range(50)
                ],
            }
            for p in range(2)
        ],
        "now": 1_760_000_000_000,
    }


def test_a_ten_thousand_job_ctx_fits_the_default_limits() -> None:
    script = compile_script(
        """
        fn schedule() {
            let interactive = this.queue.filter(|j| j.priority == "interactive");
            this.decided = true;   // a write size-checks the whole ctx
            #{ action: "dispatch", job_id: interactive[0].id, n: interactive.len(),
               total: this.queue.len() }
        }
        """
    )
    result = script.call("schedule", this=make_ctx(10_000), budget_ms=5_000)
    assert result.value == {
        "action": "dispatch",
        "job_id": "job-" + "0" * 32,
        "n": 3334,
        "total": 10_000,
    }


def test_size_limits_count_the_nested_total_of_ctx() -> None:
    # Documented interaction: a method call on a ctx part checks that whole part.
    script = compile_script("fn n() { this.queue.len() }", limits={"max_map_size": 1_000})
    assert script.call("n", this=make_ctx(50)).value == 50  # 50 jobs x 15 fields = 750
    with pytest.raises(RhaiLimitExceeded) as info:
        script.call("n", this=make_ctx(100))  # 1500 entries > 1000
    assert info.value.kind == "max_map_size"
