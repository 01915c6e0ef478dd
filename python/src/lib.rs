//! Python bindings of pompc (module `pompc._pompc`, re-exported by the `pompc` package):
//! thin wrappers over the Rust types with numpy float32 arrays in and out, the GIL released
//! while the GPU works, pompc's errors as Python exceptions, and no panic across the boundary.
//!
//! The core's `Planner<'m>`, `Mppi<'g>` and `Trainer<'g>` borrow their device and model;
//! the Python objects hold those in `Arc`s next to the borrowing value (`self_cell`), and
//! keep the Python parents (`Gpu`, `WorldModel`) referenced, so a planner outlives nothing it
//! uses.

mod arrays;
mod env;
mod errors;
mod gpu;
mod mppi;
mod planner;
mod population;
mod trainer;

use pyo3::prelude::*;

/// The WGSL of a ready-made MPPI problem ("cartpole" or "diff-drive") with its sizes: a dict
/// of wgsl, state_dim, control_dim, param_len. The cart-pole's state is [x, x_dot, theta,
/// theta_dot] (theta 0 upright), its control the force over 10 N, its parameter the target
/// cart position; `pompc::planner::problems` documents both.
#[pyfunction]
fn builtin_problem<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
    let p = match name {
        "cartpole" => pompc::planner::problems::cartpole(),
        "diff-drive" | "diff_drive" => pompc::planner::problems::diff_drive(),
        _ => {
            return Err(errors::value_error(format!(
                "unknown problem {name:?}; \"cartpole\" or \"diff-drive\""
            )));
        }
    };
    let d = pyo3::types::PyDict::new(py);
    d.set_item("wgsl", p.wgsl)?;
    d.set_item("state_dim", p.state_dim)?;
    d.set_item("control_dim", p.control_dim)?;
    d.set_item("param_len", p.param_len)?;
    Ok(d)
}

#[pymodule]
fn _pompc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("ShaderError", py.get_type::<errors::ShaderError>())?;
    m.add("DTypeError", errors::dtype_error_type(py)?)?;
    m.add_function(wrap_pyfunction!(gpu::adapters, m)?)?;
    m.add_function(wrap_pyfunction!(env::make_env, m)?)?;
    m.add_function(wrap_pyfunction!(env::env_names, m)?)?;
    m.add_function(wrap_pyfunction!(builtin_problem, m)?)?;
    m.add_class::<gpu::Gpu>()?;
    m.add_class::<gpu::WorldModel>()?;
    m.add_class::<planner::Planner>()?;
    m.add_class::<planner::Plan>()?;
    m.add_class::<mppi::Mppi>()?;
    m.add_class::<env::Env>()?;
    m.add_class::<trainer::Trainer>()?;
    m.add_class::<population::Population>()?;
    Ok(())
}
