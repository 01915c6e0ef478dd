//! numpy arrays in and out: inputs are checked (type, dtype, rank, sizes, layout) before any
//! GPU work, outputs are fresh float32 arrays.

use crate::errors::{dtype_error, type_error, value_error};
use numpy::{
    PyArray1, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

/// The values of `obj`, which must be a C-contiguous float32 numpy array whose shape matches
/// `shape` (`None`: any size on that axis). Returns the values and the actual shape.
///
/// A wrong type is a `TypeError`, a wrong dtype a `pompc.DTypeError` (a `ValueError` and a
/// `TypeError`), wrong rank, size or layout a `ValueError`; the messages say how to fix it. Values are not checked here: the library rejects NaN where it
/// matters, with the index of the bad value.
pub fn f32_input(
    obj: &Bound<'_, PyAny>,
    what: &str,
    shape: &[Option<usize>],
) -> PyResult<(Vec<f32>, Vec<usize>)> {
    let py = obj.py();
    let arr = obj.cast::<PyUntypedArray>().map_err(|_| {
        type_error(format!(
            "{what} must be a numpy float32 array, got {}",
            type_name(obj)
        ))
    })?;
    if !arr.dtype().is_equiv_to(&numpy::dtype::<f32>(py)) {
        return Err(dtype_error(
            py,
            format!(
                "{what} must have dtype float32, got {} (convert with \
                 arr.astype(numpy.float32))",
                arr.dtype()
            ),
        ));
    }
    let got: Vec<usize> = arr.shape().to_vec();
    let want = shape
        .iter()
        .map(|d| d.map_or("n".to_string(), |d| d.to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    if got.len() != shape.len()
        || got
            .iter()
            .zip(shape)
            .any(|(g, w)| w.is_some_and(|w| w != *g))
    {
        return Err(value_error(format!(
            "{what} has shape {got:?}, expected [{want}]"
        )));
    }
    if !arr.is_c_contiguous() {
        return Err(value_error(format!(
            "{what} is not C-contiguous (a slice or transpose); pass \
             numpy.ascontiguousarray({what})"
        )));
    }
    let typed = obj
        .cast::<PyArrayDyn<f32>>()
        .map_err(|_| type_error(format!("{what} must be a numpy float32 array")))?;
    let ro = typed
        .try_readonly()
        .map_err(|_| value_error(format!("{what} is being written elsewhere; pass a copy")))?;
    let values = ro
        .as_slice()
        .map_err(|_| value_error(format!("{what} is not contiguous; pass a copy")))?
        .to_vec();
    Ok((values, got))
}

/// A float32 array of `shape` holding `values` (whose length is the shape's product).
pub fn f32_output<'py>(
    py: Python<'py>,
    values: Vec<f32>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    let a = PyArray1::from_vec(py, values);
    Ok(a.reshape(shape.to_vec())?.into_any())
}

/// A `[n]` float32 array.
pub fn f32_vec<'py>(py: Python<'py>, values: Vec<f32>) -> Bound<'py, PyAny> {
    PyArray1::from_vec(py, values).into_any()
}

/// The flags of `obj`: a bool (every environment alike) or a sequence of `n` bools
/// (a numpy bool array, a list).
pub fn bool_flags(obj: &Bound<'_, PyAny>, what: &str, n: usize) -> PyResult<Vec<bool>> {
    if let Ok(b) = obj.extract::<bool>() {
        return Ok(vec![b; n]);
    }
    let v: Vec<bool> = obj.extract().map_err(|_| {
        type_error(format!(
            "{what} must be a bool or a sequence of {n} bools, got {}",
            type_name(obj)
        ))
    })?;
    if v.len() != n {
        return Err(value_error(format!(
            "{what} has {} entries for {n} environments",
            v.len()
        )));
    }
    Ok(v)
}

/// The Python type name of `obj`, for messages.
pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "object".into())
}
