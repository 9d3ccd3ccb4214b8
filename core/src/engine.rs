//! The sandboxed engine, per-call state (deadline, logs, metrics) and the
//! `CompiledScript` / `CallResult` Python classes.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use rhai::packages::{
    ArithmeticPackage, BasicArrayPackage, BasicFnPackage, BasicIteratorPackage, BasicMapPackage,
    BasicMathPackage, BasicStringPackage, LogicPackage, MoreStringPackage, Package,
};
use rhai::{
    CallFnOptions, Dynamic, Engine, EvalAltResult, ImmutableString, Module, OptimizationLevel,
    Scope, Shared, AST, FLOAT, INT,
};

use crate::clock;
use crate::convert::{dynamic_to_py, nested_deeper_than, py_to_dynamic};
use crate::errors::{Class, ScriptError, DEADLINE_TOKEN};
use crate::limits::{
    Limits, DEADLINE_CHECK_EVERY_OPS, MAX_BUDGET_MS, MAX_CONVERSION_DEPTH, MAX_METRIC_NAME_BYTES,
};
use crate::stack::on_engine_stack;

// ---------------------------------------------------------------------------
// Per-call state. The engine is shared (`Arc<Engine>`) and may run on several
// threads at once; the state of one call lives in thread-locals of the thread
// running it, set before the call and taken after it.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct CallBuffers {
    logs: Vec<(&'static str, String)>,
    dropped_logs: u64,
    metrics: Vec<(String, f64)>,
    dropped_metrics: u64,
}

thread_local! {
    /// Deadline of the running call in [`clock::now_ns`] units; 0 = none.
    static DEADLINE_NS: Cell<u64> = const { Cell::new(0) };
    static OPS: Cell<u64> = const { Cell::new(0) };
    static BUFFERS: RefCell<CallBuffers> = RefCell::new(CallBuffers::default());
}

/// Installs the per-call state on this thread; restores the previous state on
/// drop (so nesting, which should not happen, stays correct).
struct CallGuard {
    prev_deadline: u64,
    prev_ops: u64,
    prev_buffers: Option<CallBuffers>,
}

impl CallGuard {
    fn enter(deadline_ns: u64) -> Self {
        Self {
            prev_deadline: DEADLINE_NS.replace(deadline_ns),
            prev_ops: OPS.replace(0),
            prev_buffers: Some(BUFFERS.with(|b| b.replace(CallBuffers::default()))),
        }
    }

    /// Take this call's buffers and operation count.
    fn finish(mut self) -> (CallBuffers, u64) {
        let ops = OPS.get();
        let prev = self.prev_buffers.take().unwrap_or_default();
        (BUFFERS.with(|b| b.replace(prev)), ops)
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        DEADLINE_NS.set(self.prev_deadline);
        OPS.set(self.prev_ops);
        if let Some(prev) = self.prev_buffers.take() {
            BUFFERS.with(|b| *b.borrow_mut() = prev);
        }
    }
}

/// The first `max` bytes of `s` (cut on a character boundary), copied.
fn prefix(s: &str, max: usize) -> String {
    let mut cut = s.len().min(max);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s[..cut].to_string()
}

/// A `fmt::Write` that keeps at most `max` bytes and then aborts formatting, so
/// logging a huge value costs no more than the bytes kept.
struct BoundedWriter {
    buf: String,
    max: usize,
}

impl std::fmt::Write for BoundedWriter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.buf.len() + s.len() <= self.max {
            self.buf.push_str(s);
            Ok(())
        } else {
            let mut cut = self.max - self.buf.len();
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            self.buf.push_str(&s[..cut]);
            Err(std::fmt::Error)
        }
    }
}

fn push_log(level: &'static str, max_lines: usize, render: impl FnOnce() -> String) {
    BUFFERS.with(|b| {
        let mut b = b.borrow_mut();
        if b.logs.len() < max_lines {
            let line = render();
            b.logs.push((level, line));
        } else {
            b.dropped_logs += 1;
        }
    });
}

fn push_metric(name: &str, value: f64, max_metrics: usize) -> Result<(), Box<EvalAltResult>> {
    if !value.is_finite() {
        return Err(format!("emit_metric: value of {name:?} must be a finite number").into());
    }
    BUFFERS.with(|b| {
        let mut b = b.borrow_mut();
        if b.metrics.len() < max_metrics {
            b.metrics.push((prefix(name, MAX_METRIC_NAME_BYTES), value));
        } else {
            b.dropped_metrics += 1;
        }
    });
    Ok(())
}

// ---------------------------------------------------------------------------
// Engine construction
// ---------------------------------------------------------------------------

/// The packages of the sandbox: the standard library minus `LanguageCorePackage`
/// (which holds `sleep`, `exit`, `parse_json` and reflection), time, BLOBs and
/// bit fields. Built once per process.
fn sandbox_packages() -> &'static [Shared<Module>] {
    static PACKAGES: OnceLock<Vec<Shared<Module>>> = OnceLock::new();
    PACKAGES.get_or_init(|| {
        vec![
            ArithmeticPackage::new().as_shared_module(),
            LogicPackage::new().as_shared_module(),
            BasicStringPackage::new().as_shared_module(),
            MoreStringPackage::new().as_shared_module(),
            BasicIteratorPackage::new().as_shared_module(),
            BasicFnPackage::new().as_shared_module(),
            BasicMathPackage::new().as_shared_module(),
            BasicArrayPackage::new().as_shared_module(),
            BasicMapPackage::new().as_shared_module(),
        ]
    })
}

/// Build a sandboxed engine with `limits`.
pub fn build_engine(limits: &Limits) -> Engine {
    // No module resolver, no print/debug to stdout, no standard packages.
    let mut engine = Engine::new_raw();
    for package in sandbox_packages() {
        engine.register_global_module(package.clone());
    }

    engine.set_optimization_level(OptimizationLevel::Simple);
    engine.disable_symbol("eval");
    engine.disable_symbol("import");
    engine.set_strict_variables(true);
    engine.set_fail_on_invalid_map_property(true);

    engine.set_max_operations(limits.max_operations);
    engine.set_max_call_levels(limits.max_call_levels as usize);
    engine.set_max_expr_depths(
        limits.max_expr_depth as usize,
        limits.max_function_expr_depth as usize,
    );
    engine.set_max_string_size(limits.max_string_size as usize);
    engine.set_max_array_size(limits.max_array_size as usize);
    engine.set_max_map_size(limits.max_map_size as usize);
    engine.set_max_variables(limits.max_variables as usize);
    engine.set_max_functions(limits.max_functions as usize);
    engine.set_max_modules(0);

    // Wall-clock budget: compare a cheap clock with the per-call deadline.
    engine.on_progress(|ops| {
        OPS.set(ops);
        if ops.is_multiple_of(DEADLINE_CHECK_EVERY_OPS) {
            let deadline = DEADLINE_NS.get();
            if deadline != 0 && clock::now_ns() >= deadline {
                return Some(Dynamic::from(DEADLINE_TOKEN));
            }
        }
        None
    });

    let max_lines = limits.max_log_lines as usize;
    let max_bytes = limits.max_log_line_bytes as usize;
    engine.on_print(move |s| push_log("info", max_lines, || prefix(s, max_bytes)));
    engine.on_debug(move |s, _source, _pos| push_log("debug", max_lines, || prefix(s, max_bytes)));
    for (name, level) in [
        ("log_debug", "debug"),
        ("log_info", "info"),
        ("log_warn", "warn"),
        ("log_error", "error"),
    ] {
        engine.register_fn(name, move |msg: Dynamic| {
            push_log(level, max_lines, || {
                let mut w = BoundedWriter {
                    buf: String::new(),
                    max: max_bytes,
                };
                let _ = write!(w, "{msg}");
                w.buf
            })
        });
    }

    let max_metrics = limits.max_metrics as usize;
    engine.register_fn("emit_metric", move |name: ImmutableString, value: FLOAT| {
        push_metric(&name, value, max_metrics)
    });
    engine.register_fn("emit_metric", move |name: ImmutableString, value: INT| {
        push_metric(&name, value as f64, max_metrics)
    });
    engine
}

// ---------------------------------------------------------------------------
// Calling
// ---------------------------------------------------------------------------

struct CallOutcome {
    result: Result<Dynamic, ScriptError>,
    buffers: CallBuffers,
    operations: u64,
    elapsed: Duration,
}

/// Run one call (no GIL). Everything that can be deeply nested is dropped here.
#[allow(clippy::too_many_arguments)]
fn run_call(
    engine: &Engine,
    ast: &AST,
    fn_name: &str,
    args: Vec<Dynamic>,
    this: Option<Dynamic>,
    budget: Duration,
    script_name: &str,
    prelude_only: &HashSet<String>,
) -> CallOutcome {
    let start = Instant::now();
    let budget_ns = u64::try_from(budget.as_nanos()).unwrap_or(u64::MAX);
    let guard = CallGuard::enter(clock::now_ns().saturating_add(budget_ns).max(1));
    let mut scope = Scope::new();
    let mut this = this;
    // eval_ast(false): top-level statements never run. rewind_scope(true): the
    // scope is fresh per call anyway. Note that the arguments are moved into
    // the function and torn down inside the engine call (a 1e4-job ctx takes
    // ~20 ms to free); a ctx bound as `this` is freed below, after timing.
    let options = CallFnOptions::new().eval_ast(false).rewind_scope(true);
    let options = match this.as_mut() {
        Some(value) => options.bind_this_ptr(value),
        None => options,
    };
    let result = engine.call_fn_with_options::<Dynamic>(options, &mut scope, ast, fn_name, args);
    let elapsed = start.elapsed();
    let (buffers, operations) = guard.finish();
    drop(scope);
    drop(this);

    let result = match result {
        Ok(value) => {
            let value = value.flatten();
            if nested_deeper_than(&value, MAX_CONVERSION_DEPTH) {
                drop(value);
                Err(ScriptError::new(
                    Class::Conversion,
                    "unconvertible_return",
                    format!(
                        "return value of {fn_name}: nested deeper than {MAX_CONVERSION_DEPTH} levels"
                    ),
                ))
            } else {
                Ok(value)
            }
        }
        Err(mut err) => {
            // A thrown value crosses into Python too: refuse absurd nesting.
            if let EvalAltResult::ErrorRuntime(ref mut value, _) = *err {
                if nested_deeper_than(value, MAX_CONVERSION_DEPTH) {
                    *value = Dynamic::from(format!("<{} nested too deep>", value.type_name()));
                }
            }
            Err(ScriptError::from_eval(
                err,
                fn_name,
                script_name,
                prelude_only,
            ))
        }
    };
    CallOutcome {
        result,
        buffers,
        operations,
        elapsed,
    }
}

// ---------------------------------------------------------------------------
// Python classes
// ---------------------------------------------------------------------------

/// Best-effort position of `fn name(` with `arity` parameters in `source`.
fn find_fn_definition(source: &str, name: &str, arity: usize) -> (Option<usize>, Option<usize>) {
    for (lineno, line) in source.lines().enumerate() {
        let mut from = 0;
        while let Some(idx) = line[from..].find("fn ") {
            let at = from + idx;
            from = at + 3;
            let boundary_ok = at == 0 || !line.as_bytes()[at - 1].is_ascii_alphanumeric();
            let rest = line[at + 3..].trim_start();
            if !boundary_ok || !rest.starts_with(name) {
                continue;
            }
            let after = rest[name.len()..].trim_start();
            let Some(params) = after.strip_prefix('(') else {
                continue;
            };
            let params = params.split(')').next().unwrap_or("");
            let count = params.split(',').filter(|p| !p.trim().is_empty()).count();
            if count == arity {
                return (Some(lineno + 1), Some(at + 1));
            }
        }
    }
    (None, None)
}

/// The output of [`compile`].
struct Compiled {
    engine: Engine,
    ast: AST,
    functions: Vec<(String, usize)>,
    prelude_functions: Vec<(String, usize)>,
    prelude_only: HashSet<String>,
}

/// Build the engine, compile prelude and script on it, refuse collisions and
/// merge them (no GIL; runs on the engine stack).
fn compile(
    limits: &Limits,
    source: &str,
    prelude: Option<&str>,
    name: &str,
) -> Result<Compiled, Box<ScriptError>> {
    let engine = build_engine(limits);
    let prelude_ast = match prelude {
        Some(text) => Some(
            engine
                .compile(text)
                .map_err(|e| ScriptError::from_parse(&e, "prelude"))?,
        ),
        None => None,
    };
    let user_ast = engine
        .compile(source)
        .map_err(|e| ScriptError::from_parse(&e, name))?;
    let functions = script_functions(&user_ast);
    let prelude_functions = prelude_ast
        .as_ref()
        .map(script_functions)
        .unwrap_or_default();
    for (fname, arity) in &functions {
        if prelude_functions
            .iter()
            .any(|(p, a)| p == fname && a == arity)
        {
            let (line, column) = find_fn_definition(source, fname, *arity);
            let mut err = ScriptError::new(
                Class::Compile,
                "prelude_collision",
                format!("function {fname}/{arity} is already defined by the prelude; rename it"),
            );
            err.line = line;
            err.column = column;
            err.source = Some(name.to_string());
            return Err(Box::new(err));
        }
    }
    let mut ast = match prelude_ast {
        Some(p) => p.merge(&user_ast),
        None => user_ast,
    };
    // Top-level statements never run (calls use eval_ast(false)).
    ast.clear_statements();
    ast.set_source(name);
    let user_names: HashSet<&str> = functions.iter().map(|(n, _)| n.as_str()).collect();
    let prelude_only = prelude_functions
        .iter()
        .filter(|(n, _)| !user_names.contains(n.as_str()))
        .map(|(n, _)| n.clone())
        .collect();
    Ok(Compiled {
        engine,
        ast,
        functions,
        prelude_functions,
        prelude_only,
    })
}

/// A Rhai script compiled once on a sandboxed engine, callable many times and
/// from several threads. `prelude` (Rhai helper functions) is compiled on the
/// same engine and merged; a script function with the name and arity of a
/// prelude function is refused. `limits` is None, a dict or an object with limit
/// attributes (such as `RhaiLimits`). Top-level statements never run.
#[pyclass(frozen, module = "orchestrator_core._rhai")]
pub struct CompiledScript {
    engine: Arc<Engine>,
    ast: Arc<AST>,
    name: String,
    limits: Limits,
    functions: Vec<(String, usize)>,
    prelude_functions: Vec<(String, usize)>,
    prelude_only: Arc<HashSet<String>>,
}

fn script_functions(ast: &AST) -> Vec<(String, usize)> {
    let mut fns: Vec<(String, usize)> = ast
        .iter_functions()
        .filter(|f| !f.name.starts_with("anon$"))
        .map(|f| (f.name.to_string(), f.params.len()))
        .collect();
    fns.sort();
    fns.dedup();
    fns
}

#[pymethods]
impl CompiledScript {
    #[new]
    #[pyo3(signature = (source, *, prelude = None, limits = None, name = "policy"))]
    fn new(
        py: Python<'_>,
        source: &str,
        prelude: Option<&str>,
        limits: Option<&Bound<'_, PyAny>>,
        name: &str,
    ) -> PyResult<Self> {
        let limits = Limits::from_py(limits)?;
        if name.is_empty() || name == "prelude" {
            return Err(PyValueError::new_err(
                "name must be non-empty and not \"prelude\"",
            ));
        }
        let source = source.to_string();
        let prelude = prelude.map(str::to_string);
        let name_owned = name.to_string();
        let engine_limits = limits.clone();
        let compiled = py
            .detach(move || {
                on_engine_stack(move || {
                    compile(&engine_limits, &source, prelude.as_deref(), &name_owned)
                })
            })
            .map_err(|e| e.into_pyerr(py, None))?;
        let Compiled {
            engine,
            ast,
            functions,
            prelude_functions,
            prelude_only,
        } = compiled;
        Ok(Self {
            engine: Arc::new(engine),
            ast: Arc::new(ast),
            name: name.to_string(),
            limits,
            functions,
            prelude_functions,
            prelude_only: Arc::new(prelude_only),
        })
    }

    /// The script name used in error messages.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// The effective limits, as a dict.
    #[getter]
    fn limits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.limits.to_dict(py)
    }

    /// Functions defined by the user script: sorted (name, arity) pairs.
    fn functions(&self) -> Vec<(String, usize)> {
        self.functions.clone()
    }

    /// Functions defined by the prelude: sorted (name, arity) pairs.
    fn prelude_functions(&self) -> Vec<(String, usize)> {
        self.prelude_functions.clone()
    }

    /// Whether the user script defines `name` with `arity` parameters.
    fn has_function(&self, name: &str, arity: usize) -> bool {
        self.functions.iter().any(|(n, a)| n == name && *a == arity)
    }

    /// Call script or prelude function `fn_name` with `args` (a list or tuple).
    ///
    /// `budget_ms` (default: the `budget_ms` limit) bounds the wall-clock time of the
    /// call; `this`, when given, is bound as Rhai's `this`, so method-style helpers reach
    /// it by reference. Arguments are converted with the GIL held; the engine runs
    /// without it. Returns a `CallResult`; raises a `RhaiError` subclass.
    #[pyo3(signature = (fn_name, args = None, *, budget_ms = None, this = None))]
    fn call(
        &self,
        py: Python<'_>,
        fn_name: &str,
        args: Option<&Bound<'_, PyAny>>,
        budget_ms: Option<u64>,
        this: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<CallResult> {
        let budget_ms = budget_ms.unwrap_or(self.limits.budget_ms);
        if budget_ms == 0 || budget_ms > MAX_BUDGET_MS {
            return Err(PyValueError::new_err(format!(
                "budget_ms must be between 1 and {MAX_BUDGET_MS}"
            )));
        }
        let conversion_error = |root: String, e: crate::convert::ConvError| {
            ScriptError::new(Class::Conversion, "unconvertible_argument", e.render(&root))
                .into_pyerr(py, None)
        };
        // Arguments cross with the GIL held.
        let mut dyn_args = Vec::new();
        if let Some(args) = args {
            let seq: Vec<Bound<'_, PyAny>> = if let Ok(l) = args.cast::<PyList>() {
                l.iter().collect()
            } else if let Ok(t) = args.cast::<PyTuple>() {
                t.iter().collect()
            } else {
                return Err(pyo3::exceptions::PyTypeError::new_err(
                    "args must be a list or a tuple",
                ));
            };
            for (i, a) in seq.iter().enumerate() {
                dyn_args.push(
                    py_to_dynamic(a, 0).map_err(|e| conversion_error(format!("args[{i}]"), e))?,
                );
            }
        }
        let this_dyn = match this {
            Some(obj) => {
                Some(py_to_dynamic(obj, 0).map_err(|e| conversion_error("this".to_string(), e))?)
            }
            None => None,
        };

        let engine = Arc::clone(&self.engine);
        let ast = Arc::clone(&self.ast);
        let prelude_only = Arc::clone(&self.prelude_only);
        let name = self.name.clone();
        let fn_name_owned = fn_name.to_string();
        let budget = Duration::from_millis(budget_ms);
        // The engine runs without the GIL.
        let outcome = py.detach(move || {
            on_engine_stack(|| {
                run_call(
                    &engine,
                    &ast,
                    &fn_name_owned,
                    dyn_args,
                    this_dyn,
                    budget,
                    &name,
                    &prelude_only,
                )
            })
        });

        let logs = PyList::empty(py);
        for (level, line) in &outcome.buffers.logs {
            logs.append((*level, line.as_str()))?;
        }
        let value = match outcome.result {
            Ok(value) => match dynamic_to_py(py, &value, 0) {
                Ok(obj) => obj,
                Err(e) => {
                    let mut err = ScriptError::new(
                        Class::Conversion,
                        "unconvertible_return",
                        e.render(&format!("return value of {fn_name}")),
                    );
                    err.source = Some(self.name.clone());
                    // Drop the value without the GIL (it may be large).
                    py.detach(move || on_engine_stack(move || drop(value)));
                    return Err(err.into_pyerr(py, Some(logs)));
                }
            },
            Err(err) => return Err(err.into_pyerr(py, Some(logs))),
        };
        let metrics = PyList::empty(py);
        for (name, v) in &outcome.buffers.metrics {
            metrics.append((name.as_str(), *v))?;
        }
        Ok(CallResult {
            value: value.unbind(),
            logs: logs.unbind(),
            metrics: metrics.unbind(),
            operations: outcome.operations,
            elapsed_us: outcome.elapsed.as_micros() as u64,
            dropped_logs: outcome.buffers.dropped_logs,
            dropped_metrics: outcome.buffers.dropped_metrics,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "<CompiledScript {:?}: {} function(s), {} prelude function(s)>",
            self.name,
            self.functions.len(),
            self.prelude_functions.len()
        )
    }
}

/// The outcome of one successful call.
#[pyclass(frozen, module = "orchestrator_core._rhai")]
pub struct CallResult {
    /// The return value, converted to Python.
    #[pyo3(get)]
    value: Py<PyAny>,
    /// (level, message) pairs from print/debug/log_* in call order.
    #[pyo3(get)]
    logs: Py<PyList>,
    /// (name, value) pairs from emit_metric in call order.
    #[pyo3(get)]
    metrics: Py<PyList>,
    /// Operations the engine counted for this call.
    #[pyo3(get)]
    operations: u64,
    /// Time spent inside the engine, in microseconds (conversions excluded).
    #[pyo3(get)]
    elapsed_us: u64,
    /// Log lines dropped because `max_log_lines` was reached.
    #[pyo3(get)]
    dropped_logs: u64,
    /// Metrics dropped because `max_metrics` was reached.
    #[pyo3(get)]
    dropped_metrics: u64,
}

#[pymethods]
impl CallResult {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "<CallResult value={} logs={} metrics={} operations={} elapsed_us={}>",
            self.value.bind(py).repr()?,
            self.logs.bind(py).len(),
            self.metrics.bind(py).len(),
            self.operations,
            self.elapsed_us
        ))
    }
}
