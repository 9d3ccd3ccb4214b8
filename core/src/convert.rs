//! Hand-written conversion between Python objects and Rhai `Dynamic` values.
//!
//! Python -> Rhai: `None` -> `()`, `bool` -> bool (checked before `int`, since
//! `bool` is an `int` subclass), `int` -> i64 (out of range is an error),
//! `float` -> f64, `str` -> string, `list`/`tuple` -> array, `dict` with `str`
//! keys -> object map. Anything else is an error naming the path of the value.
//!
//! Rhai -> Python: `()` -> `None`, bool, int, float, string (and char) -> `str`,
//! array -> `list`, object map -> `dict` (keys in sorted order). Anything else
//! (function pointers, closures, ranges, timestamps...) is an error.
//!
//! Both directions refuse nesting deeper than [`MAX_CONVERSION_DEPTH`].

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use rhai::{Array, Dynamic, ImmutableString, Map};

use crate::limits::MAX_CONVERSION_DEPTH;

/// A value that cannot cross the boundary. `path` holds the segments leading to
/// it, innermost first (they are pushed while unwinding).
#[derive(Debug)]
pub struct ConvError {
    path: Vec<String>,
    message: String,
}

impl ConvError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            path: Vec::new(),
            message: message.into(),
        }
    }

    fn within(mut self, segment: String) -> Self {
        self.path.push(segment);
        self
    }

    /// Render as `root[...]...: message`.
    pub fn render(&self, root: &str) -> String {
        let mut out = String::from(root);
        for seg in self.path.iter().rev() {
            out.push_str(seg);
        }
        out.push_str(": ");
        out.push_str(&self.message);
        out
    }
}

fn too_deep() -> ConvError {
    ConvError::new(format!("nested deeper than {MAX_CONVERSION_DEPTH} levels"))
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_string())
}

fn py_str(s: &Bound<'_, PyString>) -> Result<ImmutableString, ConvError> {
    s.to_str()
        .map(ImmutableString::from)
        .map_err(|e| ConvError::new(format!("str is not valid UTF-8: {e}")))
}

/// Convert a Python object into a Rhai value (the GIL is held).
pub fn py_to_dynamic(obj: &Bound<'_, PyAny>, depth: usize) -> Result<Dynamic, ConvError> {
    // Exact types first: they are by far the most common and the cheapest checks.
    if let Ok(s) = obj.cast_exact::<PyString>() {
        return py_str(s).map(Dynamic::from);
    }
    if obj.is_none() {
        return Ok(Dynamic::UNIT);
    }
    // `bool` before `int`: `True` is an `int` in Python.
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Dynamic::from_bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        return obj.extract::<i64>().map(Dynamic::from_int).map_err(|_| {
            ConvError::new(format!(
                "int {} does not fit in a 64-bit signed integer",
                obj.repr().map(|r| r.to_string()).unwrap_or_default()
            ))
        });
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Dynamic::from_float(f.value()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return py_str(s).map(Dynamic::from);
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        if depth >= MAX_CONVERSION_DEPTH {
            return Err(too_deep());
        }
        let mut map = Map::new();
        for (k, v) in dict.iter() {
            let Ok(key) = k.cast::<PyString>() else {
                return Err(ConvError::new(format!(
                    "dict key {} is a {}, only str keys can cross into Rhai",
                    k.repr().map(|r| r.to_string()).unwrap_or_default(),
                    type_name(&k)
                )));
            };
            let key = py_str(key)?;
            let value = py_to_dynamic(&v, depth + 1)
                .map_err(|e| e.within(format!("[{:?}]", key.as_str())))?;
            map.insert(key.as_str().into(), value);
        }
        return Ok(Dynamic::from_map(map));
    }
    if let Ok(list) = obj.cast::<PyList>() {
        if depth >= MAX_CONVERSION_DEPTH {
            return Err(too_deep());
        }
        let mut arr = Array::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            arr.push(py_to_dynamic(&item, depth + 1).map_err(|e| e.within(format!("[{i}]")))?);
        }
        return Ok(Dynamic::from_array(arr));
    }
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        if depth >= MAX_CONVERSION_DEPTH {
            return Err(too_deep());
        }
        let mut arr = Array::with_capacity(tuple.len());
        for (i, item) in tuple.iter().enumerate() {
            arr.push(py_to_dynamic(&item, depth + 1).map_err(|e| e.within(format!("[{i}]")))?);
        }
        return Ok(Dynamic::from_array(arr));
    }
    Err(ConvError::new(format!(
        "values of type {} cannot cross into Rhai (use None, bool, int, float, str, list, tuple or dict)",
        type_name(obj)
    )))
}

/// Convert a Rhai value back into a Python object (the GIL is held).
pub fn dynamic_to_py<'py>(
    py: Python<'py>,
    value: &Dynamic,
    depth: usize,
) -> Result<Bound<'py, PyAny>, ConvError> {
    if value.is_shared() {
        return dynamic_to_py(py, &value.flatten_clone(), depth);
    }
    if value.is_unit() {
        return Ok(py.None().into_bound(py));
    }
    if let Ok(s) = value.as_immutable_string_ref() {
        return Ok(PyString::new(py, s.as_str()).into_any());
    }
    if let Ok(i) = value.as_int() {
        return Ok(PyInt::new(py, i).into_any());
    }
    if let Ok(b) = value.as_bool() {
        return Ok(PyBool::new(py, b).to_owned().into_any());
    }
    if let Ok(f) = value.as_float() {
        return Ok(PyFloat::new(py, f).into_any());
    }
    if let Ok(c) = value.as_char() {
        return Ok(PyString::new(py, c.encode_utf8(&mut [0; 4])).into_any());
    }
    if let Ok(arr) = value.as_array_ref() {
        if depth >= MAX_CONVERSION_DEPTH {
            return Err(too_deep());
        }
        let list = PyList::empty(py);
        for (i, item) in arr.iter().enumerate() {
            let item =
                dynamic_to_py(py, item, depth + 1).map_err(|e| e.within(format!("[{i}]")))?;
            list.append(item)
                .map_err(|e| ConvError::new(e.to_string()))?;
        }
        return Ok(list.into_any());
    }
    if let Ok(map) = value.as_map_ref() {
        if depth >= MAX_CONVERSION_DEPTH {
            return Err(too_deep());
        }
        let dict = PyDict::new(py);
        for (k, v) in map.iter() {
            let item = dynamic_to_py(py, v, depth + 1)
                .map_err(|e| e.within(format!("[{:?}]", k.as_str())))?;
            dict.set_item(k.as_str(), item)
                .map_err(|e| ConvError::new(e.to_string()))?;
        }
        return Ok(dict.into_any());
    }
    Err(ConvError::new(format!(
        "a Rhai value of type '{}' cannot cross into Python (only (), bool, int, float, string, array and map can)",
        value.type_name()
    )))
}

/// Whether `value` nests containers deeper than `limit` levels. Recursion is
/// bounded by `limit`, so this is safe to call on any value.
pub fn nested_deeper_than(value: &Dynamic, limit: usize) -> bool {
    fn walk(value: &Dynamic, depth: usize, limit: usize) -> bool {
        if let Ok(arr) = value.as_array_ref() {
            if depth >= limit {
                return true;
            }
            return arr.iter().any(|v| walk(v, depth + 1, limit));
        }
        if let Ok(map) = value.as_map_ref() {
            if depth >= limit {
                return true;
            }
            return map.values().any(|v| walk(v, depth + 1, limit));
        }
        false
    }
    if value.is_shared() {
        return walk(&value.flatten_clone(), 0, limit);
    }
    walk(value, 0, limit)
}
