//! Rhai errors mapped onto one Python exception hierarchy.
//!
//! ```text
//! RhaiError                  base; every instance has kind, message, line, column,
//! |                          source, traceback, logs and thrown attributes
//! +-- RhaiCompileError       parse errors, parse-time limits, prelude collisions
//! +-- RhaiRuntimeError       throw, type errors, unknown function/variable/property...
//! +-- RhaiLimitExceeded      operations, call levels, variables, data sizes
//! +-- RhaiTimeout            the wall-clock budget of one call (kind "timeout")
//! +-- RhaiConversionError    an argument or the return value cannot cross the boundary
//! ```

use std::collections::HashSet;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyList;
use rhai::{Dynamic, EvalAltResult, LexError, ParseError, ParseErrorType, Position};

use crate::convert::dynamic_to_py;

create_exception!(
    orchestrator_core._rhai,
    RhaiError,
    PyException,
    "Base class of every error raised by the Rhai engine binding."
);
create_exception!(
    orchestrator_core._rhai,
    RhaiCompileError,
    RhaiError,
    "The script or its prelude does not compile (syntax, parse-time limit, collision)."
);
create_exception!(
    orchestrator_core._rhai,
    RhaiRuntimeError,
    RhaiError,
    "The script failed while running (throw, type error, unknown name, ...)."
);
create_exception!(
    orchestrator_core._rhai,
    RhaiLimitExceeded,
    RhaiError,
    "The script exceeded a sandbox limit; `kind` names the limit."
);
create_exception!(
    orchestrator_core._rhai,
    RhaiTimeout,
    RhaiError,
    "The script exceeded the wall-clock budget of the call."
);
create_exception!(
    orchestrator_core._rhai,
    RhaiConversionError,
    RhaiError,
    "An argument or the return value cannot cross the Python/Rhai boundary."
);

/// The exception class an error maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Compile,
    Runtime,
    Limit,
    Timeout,
    Conversion,
}

/// The termination token returned by the progress callback at the deadline.
pub const DEADLINE_TOKEN: &str = "deadline";

/// A script error, ready to become a Python exception.
#[derive(Debug)]
pub struct ScriptError {
    pub class: Class,
    pub kind: &'static str,
    pub message: String,
    pub source: Option<String>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub traceback: Vec<String>,
    pub thrown: Option<Dynamic>,
}

fn split_position(pos: Position) -> (Option<usize>, Option<usize>) {
    (pos.line(), pos.position())
}

fn parse_kind(err: &ParseErrorType) -> &'static str {
    match err {
        ParseErrorType::ExprTooDeep => "expr_too_deep",
        ParseErrorType::TooManyFunctions => "too_many_functions",
        ParseErrorType::LiteralTooLarge(..) => "literal_too_large",
        ParseErrorType::VariableUndefined(..) => "undefined_variable",
        ParseErrorType::ModuleUndefined(..) => "undefined_module",
        ParseErrorType::FnDuplicatedDefinition(..) => "duplicate_function",
        ParseErrorType::Reserved(..) => "forbidden_symbol",
        ParseErrorType::BadInput(LexError::ImproperSymbol(..)) => "forbidden_symbol",
        _ => "syntax",
    }
}

fn is_anonymous(fn_name: &str) -> bool {
    fn_name.starts_with("anon$")
}

impl ScriptError {
    pub fn new(class: Class, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            class,
            kind,
            message: message.into(),
            source: None,
            line: None,
            column: None,
            traceback: Vec::new(),
            thrown: None,
        }
    }

    /// A parse error of `source_name` (the script name or "prelude").
    pub fn from_parse(err: &ParseError, source_name: &str) -> Self {
        let (line, column) = split_position(err.position());
        Self {
            line,
            column,
            source: Some(source_name.to_string()),
            ..Self::new(
                Class::Compile,
                parse_kind(err.err_type()),
                err.err_type().to_string(),
            )
        }
    }

    /// A runtime error of a call to `entry`. `prelude_only` holds the names of
    /// functions defined only by the prelude, to attribute positions to it.
    pub fn from_eval(
        err: Box<EvalAltResult>,
        entry: &str,
        script_name: &str,
        prelude_only: &HashSet<String>,
    ) -> Self {
        let source_of = |fn_name: &str| {
            if prelude_only.contains(fn_name) {
                "prelude".to_string()
            } else {
                script_name.to_string()
            }
        };
        let frame = |fn_name: &str, pos: Position| {
            let name = if is_anonymous(fn_name) {
                "<closure>"
            } else {
                fn_name
            };
            let at = match (pos.line(), pos.position()) {
                (Some(l), Some(c)) => format!("{l}:{c}"),
                (Some(l), None) => format!("{l}:?"),
                _ => "?".to_string(),
            };
            if prelude_only.contains(fn_name) {
                format!("{name} @ {at} (prelude)")
            } else {
                format!("{name} @ {at}")
            }
        };

        // Walk the ErrorInFunctionCall chain: each link is a call made from the
        // current function at `pos`; the innermost error happened in the last one.
        let mut current = entry.to_string();
        let mut traceback = Vec::new();
        let mut err = err;
        loop {
            match *err {
                EvalAltResult::ErrorInFunctionCall(callee, _src, inner, pos) => {
                    traceback.push(frame(&current, pos));
                    current = callee;
                    err = inner;
                }
                EvalAltResult::ErrorInModule(_, inner, _) => err = inner,
                _ => break,
            }
        }
        let mut inner = err;
        let pos = inner.take_position();
        traceback.push(frame(&current, pos));
        let (line, column) = split_position(pos);

        let (class, kind) = classify(&inner);
        let thrown = match *inner {
            EvalAltResult::ErrorRuntime(ref value, _) => Some(value.clone()),
            _ => None,
        };
        let message = match (&*inner, class) {
            (EvalAltResult::ErrorTerminated(..), Class::Timeout) => {
                "wall-clock budget of the call exceeded".to_string()
            }
            (EvalAltResult::ErrorTooManyOperations(..), _) => {
                "too many operations (max_operations exceeded)".to_string()
            }
            (EvalAltResult::ErrorStackOverflow(..), _) => {
                "call stack too deep (max_call_levels exceeded)".to_string()
            }
            (EvalAltResult::ErrorTooManyVariables(..), _) => {
                "too many variables (max_variables exceeded)".to_string()
            }
            (EvalAltResult::ErrorDataTooLarge(..), _) => format!("{inner} ({kind} exceeded)"),
            _ => inner.to_string(),
        };
        Self {
            class,
            kind,
            message,
            source: Some(source_of(&current)),
            line,
            column,
            traceback,
            thrown,
        }
    }

    fn display(&self) -> String {
        let mut out = String::new();
        let source = self.source.as_deref().unwrap_or("script");
        match (self.line, self.column) {
            (Some(l), Some(c)) => out.push_str(&format!("{source} line {l}, column {c}: ")),
            (Some(l), None) => out.push_str(&format!("{source} line {l}: ")),
            _ => out.push_str(&format!("{source}: ")),
        }
        out.push_str(&self.message);
        out.push_str(&format!(" [{}]", self.kind));
        if self.traceback.len() > 1 {
            out.push_str("\ntraceback (outermost first): ");
            out.push_str(&self.traceback.join(" -> "));
        }
        out
    }

    /// Build the Python exception. `logs` are the log lines recorded before the
    /// error (an empty list when `None`).
    pub fn into_pyerr(self, py: Python<'_>, logs: Option<Bound<'_, PyList>>) -> PyErr {
        let text = self.display();
        let err = match self.class {
            Class::Compile => RhaiCompileError::new_err(text),
            Class::Runtime => RhaiRuntimeError::new_err(text),
            Class::Limit => RhaiLimitExceeded::new_err(text),
            Class::Timeout => RhaiTimeout::new_err(text),
            Class::Conversion => RhaiConversionError::new_err(text),
        };
        let thrown = match self.thrown {
            Some(ref v) => match dynamic_to_py(py, v, 0) {
                Ok(obj) => obj,
                Err(_) => v
                    .to_string()
                    .into_pyobject(py)
                    .map(|s| s.into_any())
                    .unwrap_or_else(|_| py.None().into_bound(py)),
            },
            None => py.None().into_bound(py),
        };
        let set = || -> PyResult<()> {
            let value = err.value(py);
            value.setattr("kind", self.kind)?;
            value.setattr("message", &self.message)?;
            value.setattr("line", self.line)?;
            value.setattr("column", self.column)?;
            value.setattr("source", self.source.as_deref())?;
            value.setattr("traceback", PyList::new(py, &self.traceback)?)?;
            value.setattr(
                "logs",
                match logs {
                    Some(ref l) => l.clone(),
                    None => PyList::empty(py),
                },
            )?;
            value.setattr("thrown", thrown)?;
            Ok(())
        };
        match set() {
            Ok(()) => err,
            Err(e) => e,
        }
    }
}

/// Class and stable kind of an (innermost) evaluation error.
fn classify(err: &EvalAltResult) -> (Class, &'static str) {
    use EvalAltResult as E;
    match err {
        E::ErrorTerminated(token, _) => {
            let is_deadline = token
                .as_immutable_string_ref()
                .map(|s| s.as_str() == DEADLINE_TOKEN)
                .unwrap_or(false);
            if is_deadline {
                (Class::Timeout, "timeout")
            } else {
                (Class::Runtime, "terminated")
            }
        }
        E::ErrorTooManyOperations(..) => (Class::Limit, "max_operations"),
        E::ErrorStackOverflow(..) => (Class::Limit, "max_call_levels"),
        E::ErrorTooManyVariables(..) => (Class::Limit, "max_variables"),
        E::ErrorTooManyModules(..) => (Class::Limit, "max_modules"),
        E::ErrorDataTooLarge(what, _) => {
            let kind = if what.starts_with("Length of string") {
                "max_string_size"
            } else if what.starts_with("Size of array") {
                "max_array_size"
            } else if what.starts_with("Size of object map") {
                "max_map_size"
            } else {
                "data_too_large"
            };
            (Class::Limit, kind)
        }
        E::ErrorRuntime(..) => (Class::Runtime, "throw"),
        E::ErrorFunctionNotFound(..) => (Class::Runtime, "function_not_found"),
        E::ErrorVariableNotFound(..) => (Class::Runtime, "variable_not_found"),
        E::ErrorPropertyNotFound(..) => (Class::Runtime, "property_not_found"),
        E::ErrorIndexNotFound(..) => (Class::Runtime, "index_not_found"),
        E::ErrorMismatchDataType(..) | E::ErrorMismatchOutputType(..) => {
            (Class::Runtime, "type_mismatch")
        }
        E::ErrorIndexingType(..) => (Class::Runtime, "not_indexable"),
        E::ErrorArrayBounds(..) | E::ErrorStringBounds(..) | E::ErrorBitFieldBounds(..) => {
            (Class::Runtime, "index_out_of_bounds")
        }
        E::ErrorFor(..) => (Class::Runtime, "not_iterable"),
        E::ErrorArithmetic(..) => (Class::Runtime, "arithmetic"),
        E::ErrorDotExpr(..) => (Class::Runtime, "dot_expr"),
        E::ErrorUnboundThis(..) => (Class::Runtime, "unbound_this"),
        E::ErrorAssignmentToConstant(..) | E::ErrorNonPureMethodCallOnConstant(..) => {
            (Class::Runtime, "constant")
        }
        E::ErrorDataRace(..) => (Class::Runtime, "data_race"),
        E::ErrorModuleNotFound(..) | E::ErrorInModule(..) => (Class::Runtime, "module"),
        E::ErrorVariableExists(..) | E::ErrorForbiddenVariable(..) => (Class::Runtime, "variable"),
        E::ErrorParsing(..) => (Class::Compile, "syntax"),
        _ => (Class::Runtime, "internal"),
    }
}
