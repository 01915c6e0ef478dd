//! pompc's `Error` kinds as Python exceptions, and the guard that keeps panics from crossing
//! into Python.

use pyo3::exceptions::{
    PyFileNotFoundError, PyOSError, PyPermissionError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::PyList;

pyo3::create_exception!(
    pompc,
    ShaderError,
    PyValueError,
    "WGSL that does not preprocess or compile. `lines` holds the line numbers of the user's \
     own source that the message names (`user:LINE`), `shader` the problem's name."
);

/// The Python exception for a pompc error: `ValueError` for shapes and arguments (sizes over
/// the device's limits included), `ShaderError` (a `ValueError`) for WGSL, `OSError` and its
/// subclasses for files, `RuntimeError` for the device.
pub fn to_py(e: pompc::Error) -> PyErr {
    use pompc::Error as E;
    let text = e.to_string();
    match e {
        E::Shape(_) | E::InvalidArgument(_) | E::Weights(_) | E::Limit(_) => {
            PyValueError::new_err(text)
        }
        E::Shader { name, message } => shader_error(&name, &message, text),
        E::Io { source, .. } => match source.kind() {
            std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(text),
            std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(text),
            _ => PyOSError::new_err(text),
        },
        E::NoAdapter { .. }
        | E::RequestDevice { .. }
        | E::Validation { .. }
        | E::OutOfMemory { .. }
        | E::DeviceLost(_)
        | E::Timeout { .. }
        | E::Internal { .. }
        | E::Map { .. }
        | E::Unsupported(_) => PyRuntimeError::new_err(text),
    }
}

/// The line numbers of the user's WGSL that a shader message names (`user:LINE`).
pub fn user_lines(message: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    for (i, _) in message.match_indices("user:") {
        let digits: String = message[i + 5..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        if let Ok(n) = digits.parse::<usize>()
            && !lines.contains(&n)
        {
            lines.push(n);
        }
    }
    lines
}

fn shader_error(name: &str, message: &str, text: String) -> PyErr {
    let err = ShaderError::new_err(text);
    Python::attach(|py| {
        let value = err.value(py);
        // Attributes on a fresh exception object cannot fail short of memory exhaustion;
        // the message carries the same facts if they do.
        let lines = PyList::new(py, user_lines(message)).ok();
        if let Some(lines) = lines {
            let _ = value.setattr("lines", lines);
        }
        let _ = value.setattr("shader", name);
    });
    err
}

/// `to_py` for results.
pub fn py_result<T>(r: pompc::Result<T>) -> PyResult<T> {
    r.map_err(to_py)
}

/// Run `f`, turning a panic (a bug in pompc: the library returns errors for bad input) into a
/// `RuntimeError` rather than letting it unwind into Python as a `PanicException`, which
/// `except Exception` does not catch.
pub fn guard<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(PyRuntimeError::new_err(format!(
                "internal error in pompc (please report it): {what}"
            )))
        }
    }
}

/// A lock on an object's Rust state; a poisoned lock (an earlier call panicked while holding
/// it) is a `RuntimeError` that says to build a new object.
pub fn lock<'a, T>(
    m: &'a std::sync::Mutex<T>,
    what: &str,
) -> PyResult<std::sync::MutexGuard<'a, T>> {
    m.lock().map_err(|_| poisoned(what))
}

fn poisoned(what: &str) -> PyErr {
    PyRuntimeError::new_err(format!(
        "this {what} was left in an unknown state by an earlier internal error; create a new \
         one"
    ))
}

/// A number that tells the threads apart (the address of a thread-local), never 0.
fn thread_token() -> usize {
    thread_local!(static TOKEN: u8 = const { 0 });
    TOKEN.with(|t| t as *const u8 as usize)
}

/// An object's Rust state behind a lock that other threads wait for, but that the thread
/// holding it cannot take again: a call that re-enters the object from a Python callback or
/// environment running inside one of its own calls (a `Trainer` callback calling the
/// trainer) is a `RuntimeError` instead of a deadlock.
pub struct Exclusive<T> {
    m: std::sync::Mutex<T>,
    // The `thread_token` of the thread holding `m`, 0 when free.
    owner: std::sync::atomic::AtomicUsize,
    what: &'static str,
}

/// `Exclusive::lock`'s guard.
pub struct ExclusiveGuard<'a, T> {
    guard: std::sync::MutexGuard<'a, T>,
    owner: &'a std::sync::atomic::AtomicUsize,
}

impl<T> Drop for ExclusiveGuard<'_, T> {
    fn drop(&mut self) {
        // Before the mutex itself is released (the field drops after this).
        self.owner.store(0, std::sync::atomic::Ordering::SeqCst);
    }
}

impl<T> std::ops::Deref for ExclusiveGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> std::ops::DerefMut for ExclusiveGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T> Exclusive<T> {
    /// `value` behind the lock; `what` names the Python class in messages.
    pub fn new(value: T, what: &'static str) -> Self {
        Exclusive {
            m: std::sync::Mutex::new(value),
            owner: std::sync::atomic::AtomicUsize::new(0),
            what,
        }
    }

    /// A `RuntimeError` if this thread holds the lock already (only this thread can have
    /// stored its own token, so the answer is exact).
    pub fn check(&self) -> PyResult<()> {
        if self.owner.load(std::sync::atomic::Ordering::SeqCst) == thread_token() {
            return Err(PyRuntimeError::new_err(format!(
                "this {w} is busy: it was called from inside one of its own calls (a \
                 callback or a Python environment calling the {w} that runs it); use it \
                 after that call returns",
                w = self.what
            )));
        }
        Ok(())
    }

    /// Take the lock, waiting for other threads (call it with the GIL released); re-entry
    /// from this thread and a poisoned lock are `RuntimeError`s.
    pub fn lock(&self) -> PyResult<ExclusiveGuard<'_, T>> {
        self.check()?;
        let guard = self.m.lock().map_err(|_| poisoned(self.what))?;
        self.owner
            .store(thread_token(), std::sync::atomic::Ordering::SeqCst);
        Ok(ExclusiveGuard {
            guard,
            owner: &self.owner,
        })
    }
}

/// Largest values of the unsigned types that `uint` reads.
pub trait UMax: TryFrom<i128> {
    /// `Self::MAX`.
    const MAX: u128;
}
impl UMax for u32 {
    const MAX: u128 = u32::MAX as u128;
}
impl UMax for u64 {
    const MAX: u128 = u64::MAX as u128;
}
impl UMax for usize {
    const MAX: u128 = usize::MAX as u128;
}

/// An unsigned integer from Python: a negative or too large int is a `ValueError` (what
/// Python answers for a bad count or size) rather than PyO3's `OverflowError`; anything that
/// is not an int (a float, a str) stays a `TypeError`. numpy integers and bools are ints.
pub fn uint<T: UMax>(obj: &Bound<'_, PyAny>) -> PyResult<T> {
    let py = obj.py();
    let v: i128 = match obj.extract::<i128>() {
        Ok(v) => v,
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyOverflowError>(py) => {
            return Err(value_error(format!(
                "{} is too large (at most {})",
                obj.repr().map(|r| r.to_string()).unwrap_or_default(),
                T::MAX
            )));
        }
        Err(e) => return Err(e),
    };
    if v < 0 {
        return Err(value_error(format!(
            "expected a non-negative integer, got {v}"
        )));
    }
    T::try_from(v).map_err(|_| value_error(format!("{v} is too large (at most {})", T::MAX)))
}

/// `uint` for `#[pyo3(from_py_with = ...)]` arguments (PyO3 notes the argument's name).
pub fn uint_usize(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    uint(obj)
}

/// `uint` for `u64` arguments (seeds).
pub fn uint_u64(obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    uint(obj)
}

/// `uint` for optional arguments: None stays None.
pub fn opt_uint_usize(obj: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
    if obj.is_none() {
        return Ok(None);
    }
    uint(obj).map(Some)
}

/// `uint` for optional seeds.
pub fn opt_uint_u64(obj: &Bound<'_, PyAny>) -> PyResult<Option<u64>> {
    if obj.is_none() {
        return Ok(None);
    }
    uint(obj).map(Some)
}

static DTYPE_ERROR: pyo3::sync::PyOnceLock<Py<pyo3::types::PyType>> = pyo3::sync::PyOnceLock::new();

/// `pompc.DTypeError`: an array of the wrong dtype. Both a `ValueError` (the array is the
/// right kind of object with a wrong property, like a wrong shape) and a `TypeError` (what
/// pompc raised before, and what numpy's casting errors are), as numpy's `AxisError` is
/// both a `ValueError` and an `IndexError`.
pub fn dtype_error_type(py: Python<'_>) -> PyResult<&Bound<'_, pyo3::types::PyType>> {
    DTYPE_ERROR
        .get_or_try_init(py, || -> PyResult<_> {
            let bases = pyo3::types::PyTuple::new(
                py,
                [py.get_type::<PyValueError>(), py.get_type::<PyTypeError>()],
            )?;
            let ns = pyo3::types::PyDict::new(py);
            ns.set_item("__module__", "pompc")?;
            ns.set_item(
                "__doc__",
                "An array of the wrong dtype (pompc takes float32): both a ValueError and a \
                 TypeError.",
            )?;
            let t = py
                .get_type::<pyo3::types::PyType>()
                .call1(("DTypeError", bases, ns))?
                .cast_into::<pyo3::types::PyType>()?;
            Ok(t.unbind())
        })
        .map(|t| t.bind(py))
}

/// A `pompc.DTypeError` with a message.
pub fn dtype_error(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    match dtype_error_type(py) {
        Ok(t) => PyErr::from_type(t.clone(), msg.into()),
        Err(e) => e,
    }
}

/// `e` with `what` before its message, of the same exception type (a bad keyword's
/// `TypeError` or `ValueError` names the keyword). Only the built-in `TypeError`,
/// `ValueError` and `OverflowError` are rebuilt that way; any other exception (one raised
/// by the value's own `__index__` or `__float__`, whose class may take other arguments,
/// or `KeyboardInterrupt`) comes back unchanged, with `what` as a note.
pub fn named(what: &str, e: PyErr) -> PyErr {
    Python::attach(|py| {
        let t = e.get_type(py);
        let plain = [
            py.get_type::<PyTypeError>(),
            py.get_type::<PyValueError>(),
            py.get_type::<pyo3::exceptions::PyOverflowError>(),
        ]
        .iter()
        .any(|b| t.is(b));
        if plain {
            let msg = format!("{what}: {}", e.value(py));
            PyErr::from_type(t, msg)
        } else {
            let _ = e
                .value(py)
                .call_method1("add_note", (format!("while reading {what}"),));
            e
        }
    })
}

/// The exception for an attribute `getattr` could not read: an `AttributeError` (it is
/// missing) becomes `missing` with the original as its cause; anything else the attribute
/// raised (a property that fails) comes back unchanged.
pub fn missing_attr(py: Python<'_>, e: PyErr, missing: PyErr) -> PyErr {
    if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) {
        missing.set_cause(py, Some(e));
        missing
    } else {
        e
    }
}

/// `TypeError` with a message.
pub fn type_error(msg: impl Into<String>) -> PyErr {
    PyTypeError::new_err(msg.into())
}

/// `ValueError` with a message.
pub fn value_error(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

#[cfg(test)]
mod tests {
    use super::user_lines;

    #[test]
    fn finds_user_lines_once_each() {
        let m = "error at user:3:5: expected ';'\n  ┌─ user:3:5\nnote user:12";
        assert_eq!(user_lines(m), vec![3, 12]);
        assert!(user_lines("no lines here").is_empty());
        assert!(user_lines("user:").is_empty());
    }
}
