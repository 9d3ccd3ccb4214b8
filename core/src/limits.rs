//! Sandbox limits: defaults, validation and parsing from Python.
//!
//! Every limit is set explicitly on the engine, so debug and release builds of
//! Rhai (whose built-in defaults differ) behave the same.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyString};

/// Hard ceiling for `max_call_levels`. Every Rhai call level costs native stack;
/// the engine runs on a stack segment of [`ENGINE_STACK_BYTES`], sized so this
/// many levels (each with the deepest allowed expressions) fit.
pub const MAX_CALL_LEVELS_CEILING: u64 = 256;
/// Hard ceiling for `max_expr_depth` and `max_function_expr_depth` (both cost
/// native stack in the parser and, for function bodies, at run time).
pub const MAX_EXPR_DEPTH_CEILING: u64 = 256;
/// Size of the stack segment the engine runs on (see `engine.rs`).
pub const ENGINE_STACK_BYTES: usize = 256 * 1024 * 1024;
/// Ceiling of the wall-clock budget of one call (10 minutes). Together with the
/// quadratic cost of Rhai's size checks this bounds how deeply a script can nest
/// data, and so the native stack it can use (see `stack.rs`).
pub const MAX_BUDGET_MS: u64 = 600_000;
/// Maximum nesting of containers crossing the Python/Rhai boundary.
pub const MAX_CONVERSION_DEPTH: usize = 64;
/// Metric names longer than this (in bytes) are truncated.
pub const MAX_METRIC_NAME_BYTES: usize = 128;
/// The deadline is checked once every this many operations. On Linux the clock
/// read is `CLOCK_MONOTONIC_COARSE` (a few ns, 1-4 ms resolution), cheap enough
/// to check at every operation: one operation can be expensive (copying or
/// size-checking a large ctx takes milliseconds), so checking rarely would let
/// a call overshoot its budget by hundreds of operations.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub const DEADLINE_CHECK_EVERY_OPS: u64 = 1;
/// The deadline is checked once every this many operations (precise clock).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub const DEADLINE_CHECK_EVERY_OPS: u64 = 16;

/// All configurable limits of one compiled script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_operations: u64,
    pub max_call_levels: u64,
    pub max_expr_depth: u64,
    pub max_function_expr_depth: u64,
    pub max_string_size: u64,
    pub max_array_size: u64,
    pub max_map_size: u64,
    pub max_variables: u64,
    pub max_functions: u64,
    pub budget_ms: u64,
    pub max_log_lines: u64,
    pub max_log_line_bytes: u64,
    pub max_metrics: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_operations: 1_000_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_function_expr_depth: 32,
            // Size limits count nested totals and Rhai checks the whole object
            // of every native method call (`ctx.queue.len()` checks the queue),
            // so they must exceed the largest ctx part a policy touches: a
            // 1e4-job queue holds ~1.6 MB of strings, 150k map entries and 10k
            // array elements (measured by benchmarks/bench_rhai_binding.py).
            max_string_size: 8 * 1024 * 1024,
            max_array_size: 100_000,
            max_map_size: 1_000_000,
            max_variables: 1_000,
            max_functions: 1_000,
            budget_ms: 50,
            max_log_lines: 100,
            max_log_line_bytes: 1_024,
            max_metrics: 100,
        }
    }
}

/// Field names, in documentation order.
pub const FIELDS: [&str; 13] = [
    "max_operations",
    "max_call_levels",
    "max_expr_depth",
    "max_function_expr_depth",
    "max_string_size",
    "max_array_size",
    "max_map_size",
    "max_variables",
    "max_functions",
    "budget_ms",
    "max_log_lines",
    "max_log_line_bytes",
    "max_metrics",
];

impl Limits {
    fn slot(&mut self, key: &str) -> Option<(&mut u64, u64, u64)> {
        // (field, minimum, maximum)
        Some(match key {
            "max_operations" => (&mut self.max_operations, 1, u64::MAX),
            "max_call_levels" => (&mut self.max_call_levels, 1, MAX_CALL_LEVELS_CEILING),
            "max_expr_depth" => (&mut self.max_expr_depth, 1, MAX_EXPR_DEPTH_CEILING),
            "max_function_expr_depth" => {
                (&mut self.max_function_expr_depth, 1, MAX_EXPR_DEPTH_CEILING)
            }
            "max_string_size" => (&mut self.max_string_size, 1, usize::MAX as u64),
            "max_array_size" => (&mut self.max_array_size, 1, usize::MAX as u64),
            "max_map_size" => (&mut self.max_map_size, 1, usize::MAX as u64),
            "max_variables" => (&mut self.max_variables, 1, usize::MAX as u64),
            "max_functions" => (&mut self.max_functions, 1, usize::MAX as u64),
            "budget_ms" => (&mut self.budget_ms, 1, MAX_BUDGET_MS),
            "max_log_lines" => (&mut self.max_log_lines, 0, 1_000_000),
            "max_log_line_bytes" => (&mut self.max_log_line_bytes, 1, 16 * 1024 * 1024),
            "max_metrics" => (&mut self.max_metrics, 0, 1_000_000),
            _ => return None,
        })
    }

    /// Set one limit by name, checking its range.
    pub fn set(&mut self, key: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some((slot, min, max)) = self.slot(key) else {
            return Err(PyValueError::new_err(format!(
                "unknown Rhai limit {key:?}; known limits: {}",
                FIELDS.join(", ")
            )));
        };
        if value.is_instance_of::<PyBool>() {
            return Err(PyTypeError::new_err(format!(
                "limit {key} must be an int, not bool"
            )));
        }
        let v: i128 = value
            .extract()
            .map_err(|_| PyTypeError::new_err(format!("limit {key} must be an int")))?;
        if v < i128::from(min) || v > i128::from(max) {
            return Err(PyValueError::new_err(format!(
                "limit {key} must be between {min} and {max}, got {v}"
            )));
        }
        *slot = v as u64;
        Ok(())
    }

    /// Read limits from `None`, a dict (unknown keys refused) or any object with
    /// limit attributes (such as the `RhaiLimits` dataclass); missing entries keep
    /// their defaults.
    pub fn from_py(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let mut limits = Self::default();
        let Some(obj) = obj else {
            return Ok(limits);
        };
        if obj.is_none() {
            return Ok(limits);
        }
        if let Ok(dict) = obj.cast::<PyDict>() {
            for (k, v) in dict.iter() {
                let key = k
                    .cast::<PyString>()
                    .map_err(|_| PyTypeError::new_err("limit names must be str"))?;
                limits.set(&key.to_cow()?, &v)?;
            }
            return Ok(limits);
        }
        let mut found = 0;
        for key in FIELDS {
            if let Some(v) = obj.getattr_opt(key)? {
                limits.set(key, &v)?;
                found += 1;
            }
        }
        if found == 0 {
            return Err(PyTypeError::new_err(format!(
                "limits must be None, a dict or an object with limit attributes, not {}",
                obj.get_type().name()?
            )));
        }
        Ok(limits)
    }

    /// The limits as `(name, value)` pairs, in documentation order.
    pub fn items(&self) -> [(&'static str, u64); 13] {
        [
            ("max_operations", self.max_operations),
            ("max_call_levels", self.max_call_levels),
            ("max_expr_depth", self.max_expr_depth),
            ("max_function_expr_depth", self.max_function_expr_depth),
            ("max_string_size", self.max_string_size),
            ("max_array_size", self.max_array_size),
            ("max_map_size", self.max_map_size),
            ("max_variables", self.max_variables),
            ("max_functions", self.max_functions),
            ("budget_ms", self.budget_ms),
            ("max_log_lines", self.max_log_lines),
            ("max_log_line_bytes", self.max_log_line_bytes),
            ("max_metrics", self.max_metrics),
        ]
    }

    /// The limits as a Python dict.
    pub fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in self.items() {
            d.set_item(k, v)?;
        }
        Ok(d)
    }
}
