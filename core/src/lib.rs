//! `orchestrator_core._rhai`: the Rhai policy engine bound to Python.
//!
//! The Rust layer stays thin: value conversion, sandbox limits and calling.
//! Policy logic lives in Rhai scripts and in Python.

use pyo3::prelude::*;
use pyo3::types::PyList;

mod clock;
mod convert;
mod engine;
mod errors;
mod limits;
mod stack;

/// Version of the embedded Rhai engine crate.
const RHAI_VERSION: &str = "1.27";

#[pymodule]
fn _rhai(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("RHAI_VERSION", RHAI_VERSION)?;
    m.add("DEFAULT_LIMITS", limits::Limits::default().to_dict(py)?)?;
    m.add("MAX_CONVERSION_DEPTH", limits::MAX_CONVERSION_DEPTH)?;
    m.add("MAX_CALL_LEVELS_CEILING", limits::MAX_CALL_LEVELS_CEILING)?;
    m.add("MAX_EXPR_DEPTH_CEILING", limits::MAX_EXPR_DEPTH_CEILING)?;
    m.add("DEADLINE_CHECK_EVERY_OPS", limits::DEADLINE_CHECK_EVERY_OPS)?;
    m.add("MAX_METRIC_NAME_BYTES", limits::MAX_METRIC_NAME_BYTES)?;
    m.add_class::<engine::CompiledScript>()?;
    m.add_class::<engine::CallResult>()?;

    let base = py.get_type::<errors::RhaiError>();
    // Class-level defaults, so the attributes exist even on hand-made instances.
    base.setattr("kind", "error")?;
    base.setattr("message", "")?;
    base.setattr("line", py.None())?;
    base.setattr("column", py.None())?;
    base.setattr("source", py.None())?;
    base.setattr("traceback", PyList::empty(py))?;
    base.setattr("logs", PyList::empty(py))?;
    base.setattr("thrown", py.None())?;
    m.add("RhaiError", base)?;
    m.add(
        "RhaiCompileError",
        py.get_type::<errors::RhaiCompileError>(),
    )?;
    m.add(
        "RhaiRuntimeError",
        py.get_type::<errors::RhaiRuntimeError>(),
    )?;
    m.add(
        "RhaiLimitExceeded",
        py.get_type::<errors::RhaiLimitExceeded>(),
    )?;
    m.add("RhaiTimeout", py.get_type::<errors::RhaiTimeout>())?;
    m.add(
        "RhaiConversionError",
        py.get_type::<errors::RhaiConversionError>(),
    )?;
    Ok(())
}
