//! `pompc.Mppi`: classic MPPI over dynamics and costs written in WGSL.

use crate::arrays::{f32_input, f32_output, f32_vec};
use crate::errors::{Exclusive, guard, lock, py_result, type_error};
use crate::gpu::Gpu;
use pompc::planner::custom::{MppiConfig, MppiStep, Problem};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::{Arc, Mutex};

type RsMppi<'a> = pompc::planner::custom::Mppi<'a>;

self_cell::self_cell!(
    /// The core MPPI next to the Gpu it borrows.
    pub struct MppiCell {
        owner: Arc<pompc::Gpu>,
        #[not_covariant]
        dependent: RsMppi,
    }
);

/// A float or one float per control.
fn per_control(obj: &Bound<'_, PyAny>, what: &str, c: usize) -> PyResult<Vec<f32>> {
    if let Ok(v) = obj.extract::<f32>() {
        return Ok(vec![v; c]);
    }
    if let Ok(v) = obj.extract::<Vec<f32>>() {
        return Ok(v);
    }
    Err(type_error(format!(
        "{what} must be a float or {c} floats (one per control)"
    )))
}

/// Classic MPPI (Williams et al.) over dynamics you write in WGSL, on the GPU: every sample's
/// rollout, the weights, the update and the warm-start shift in one submit per ``step``.
///
/// ``Mppi(dynamics_wgsl, state_dim, control_dim, horizon=100, samples=1024, *,
/// param_len=0, lambda_=1.0, gamma=None, sigma=0.2, u_min=-1.0, u_max=1.0, dt=0.02,
/// seed=1, trusted=False, keep_rollouts=0, name="user", gpu=None)``.
///
/// ``dynamics_wgsl`` defines ``fn dynamics(x: State, u: Control, t: u32) -> State``,
/// ``fn running_cost(x: State, u: Control, t: u32) -> f32`` and
/// ``fn terminal_cost(x: State) -> f32``; pompc provides ``State``, ``Control``, ``DT``,
/// ``STATE_DIM``, ``CONTROL_DIM`` and ``fn param(i: u32) -> f32`` (the array given to
/// ``set_params``). WGSL that does not compile raises ``pompc.ShaderError`` with your own
/// line numbers in ``.lines``. ``gamma`` weighs the control cost (default: ``lambda_``, as
/// Williams et al.); ``sigma``, ``u_min``, ``u_max`` are a float or one per control;
/// ``keep_rollouts=n`` keeps the states of the first n samples of each step for
/// ``rollouts()``. ``gpu`` defaults to a new ``Gpu()``.
#[pyclass(frozen, module = "pompc")]
pub struct Mppi {
    cell: Exclusive<MppiCell>,
    gpu: Py<Gpu>,
    state_dim: usize,
    control_dim: usize,
    horizon: usize,
    param_len: usize,
    last: Mutex<Option<MppiStep>>,
}

impl Mppi {
    // As `Planner::with`: the lock is taken with the GIL released.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl for<'a> FnOnce(&mut RsMppi<'a>) -> PyResult<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            guard(|| {
                let mut cell = self.cell.lock()?;
                cell.with_dependent_mut(|_, m| f(m))
            })
        })
    }
}

#[pymethods]
impl Mppi {
    #[new]
    #[pyo3(signature = (dynamics_wgsl, state_dim, control_dim, horizon=100, samples=1024, *,
        param_len=0, lambda_=1.0, gamma=None, sigma=None, u_min=None, u_max=None, dt=0.02,
        seed=1, trusted=false, keep_rollouts=0, name="user", gpu=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        dynamics_wgsl: String,
        #[pyo3(from_py_with = crate::errors::uint_usize)] state_dim: usize,
        #[pyo3(from_py_with = crate::errors::uint_usize)] control_dim: usize,
        #[pyo3(from_py_with = crate::errors::uint_usize)] horizon: usize,
        #[pyo3(from_py_with = crate::errors::uint_usize)] samples: usize,
        #[pyo3(from_py_with = crate::errors::uint_usize)] param_len: usize,
        lambda_: f32,
        gamma: Option<f32>,
        sigma: Option<&Bound<'_, PyAny>>,
        u_min: Option<&Bound<'_, PyAny>>,
        u_max: Option<&Bound<'_, PyAny>>,
        dt: f32,
        #[pyo3(from_py_with = crate::errors::uint_u64)] seed: u64,
        trusted: bool,
        #[pyo3(from_py_with = crate::errors::uint_usize)] keep_rollouts: usize,
        name: &str,
        gpu: Option<Py<Gpu>>,
    ) -> PyResult<Self> {
        let c = control_dim;
        let mut cfg = MppiConfig::new(c);
        cfg.horizon = horizon;
        cfg.samples = samples;
        cfg.lambda = lambda_;
        cfg.gamma = gamma.unwrap_or(lambda_);
        if let Some(s) = sigma {
            cfg.sigma = per_control(s, "sigma", c)?;
        }
        if let Some(u) = u_min {
            cfg.u_min = per_control(u, "u_min", c)?;
        }
        if let Some(u) = u_max {
            cfg.u_max = per_control(u, "u_max", c)?;
        }
        cfg.dt = dt;
        cfg.seed = seed;
        cfg.trusted = trusted;
        let problem = Problem {
            name: name.to_string(),
            state_dim,
            control_dim,
            param_len,
            wgsl: dynamics_wgsl,
        };
        let gpu = match gpu {
            Some(g) => g,
            None => Py::new(py, Gpu::create(py, None, None, None)?)?,
        };
        let rs_gpu = gpu.get().inner.clone();
        let cell = py.detach(move || {
            guard(|| {
                MppiCell::try_new(rs_gpu, |g| {
                    let mut m = py_result(RsMppi::new(g, problem, cfg))?;
                    if keep_rollouts > 0 {
                        py_result(m.keep_rollouts(keep_rollouts))?;
                    }
                    Ok(m)
                })
            })
        })?;
        Ok(Mppi {
            cell: Exclusive::new(cell, "Mppi"),
            gpu,
            state_dim,
            control_dim,
            horizon,
            param_len,
            last: Mutex::new(None),
        })
    }

    /// One MPPI iteration from ``state`` (float32 ``[state_dim]``): returns the control to
    /// apply now (float32 ``[control_dim]``); the sequence is kept and shifted for the next
    /// call. ``last_step`` has the step's lowest cost, weight mass and finite samples.
    fn step<'py>(&self, py: Python<'py>, state: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let (x, _) = f32_input(state, "state", &[Some(self.state_dim)])?;
        let step = self.with(py, |m| py_result(m.step(&x)))?;
        let control = f32_vec(py, step.control.clone());
        *lock(&self.last, "Mppi")? = Some(step);
        Ok(control)
    }

    /// Replace the parameter array that ``param(i)`` reads (float32 ``[param_len]``).
    fn set_params(&self, py: Python<'_>, params: &Bound<'_, PyAny>) -> PyResult<()> {
        let (p, _) = f32_input(params, "params", &[Some(self.param_len)])?;
        self.with(py, |m| py_result(m.set_params(&p)))
    }

    /// The states of the kept sample rollouts of the last step, float32
    /// ``[n, horizon + 1, state_dim]`` (starting state first), and their weights ``[n]``
    /// (``keep_rollouts`` or ``keep_rollouts(n)`` choose n).
    fn rollouts<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let r = self.with(py, |m| py_result(m.rollouts()))?;
        let states = f32_output(py, r.states, &[r.n, self.horizon + 1, self.state_dim])?;
        Ok((states, f32_vec(py, r.weights)))
    }

    /// Keep the states of the first ``n`` samples of each step for ``rollouts()``.
    fn keep_rollouts(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::errors::uint_usize)] n: usize,
    ) -> PyResult<()> {
        self.with(py, |m| py_result(m.keep_rollouts(n)))
    }

    /// The control sequence, float32 ``[horizon, control_dim]``.
    fn controls<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let u = self.with(py, |m| py_result(m.controls()))?;
        f32_output(py, u, &[self.horizon, self.control_dim])
    }

    /// Set the control sequence (float32 ``[horizon, control_dim]``, within the bounds); the
    /// next step starts from it without shifting.
    fn set_controls(&self, py: Python<'_>, controls: &Bound<'_, PyAny>) -> PyResult<()> {
        let (u, _) = f32_input(
            controls,
            "controls",
            &[Some(self.horizon), Some(self.control_dim)],
        )?;
        self.with(py, |m| py_result(m.set_controls(&u)))
    }

    /// Zero the control sequence (clamped into the bounds).
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |m| py_result(m.reset()))
    }

    /// The last step's ``min_cost``, ``eta`` (weight normalizer) and ``finite_samples``, or
    /// None before the first step.
    #[getter]
    fn last_step<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let last = lock(&self.last, "Mppi")?;
        let Some(s) = last.as_ref() else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("min_cost", s.min_cost)?;
        d.set_item("eta", s.eta)?;
        d.set_item("finite_samples", s.finite_samples)?;
        Ok(Some(d))
    }

    /// Steps so far.
    #[getter]
    fn calls(&self, py: Python<'_>) -> PyResult<u32> {
        self.with(py, |m| Ok(m.calls()))
    }

    /// The Gpu it runs on.
    #[getter]
    fn gpu(&self, py: Python<'_>) -> Py<Gpu> {
        self.gpu.clone_ref(py)
    }

    fn __repr__(&self) -> String {
        format!(
            "pompc.Mppi(state_dim={}, control_dim={}, horizon={})",
            self.state_dim, self.control_dim, self.horizon
        )
    }
}
