//! Environments: the built-in Rust tasks as `pompc.Env` (Gymnasium-style `reset`/`step`), and
//! the core's `Env` trait over any Python object with Gymnasium's API (`PyEnv`), which is how
//! the Rust trainer drives a Python simulator.

use crate::arrays::{f32_input, f32_vec, type_name};
use crate::errors::{lock, missing_attr, py_result, type_error, value_error};
use pompc::env::{Env as RsEnv, Step};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The first Python exception raised inside a Rust call (an environment's `reset`/`step` or a
/// callback), kept so that the call re-raises it unchanged once the Rust side has stopped.
#[derive(Clone, Default)]
pub struct ErrorSlot(Arc<Mutex<Option<PyErr>>>);

impl ErrorSlot {
    /// Keep `e` unless an earlier error is already kept (that one caused the stop).
    pub fn store(&self, e: PyErr) {
        if let Ok(mut slot) = self.0.lock()
            && slot.is_none()
        {
            *slot = Some(e);
        }
    }

    /// The kept error, if any, leaving the slot empty.
    pub fn take(&self) -> Option<PyErr> {
        self.0.lock().ok().and_then(|mut s| s.take())
    }
}

/// A built-in task (`pompc.make_env(name)`), with Gymnasium's call shapes: ``reset(seed=None)``
/// returns ``(obs, info)``, ``step(action)`` returns ``(obs, reward, terminated, truncated,
/// info)``. Actions are float32 in [-1, 1] (clipped); episodes end by time limit
/// (``truncated``) after ``episode_len`` steps of ``action_repeat`` simulator steps each.
#[pyclass(frozen, module = "pompc")]
pub struct Env {
    inner: Mutex<Box<dyn RsEnv>>,
    /// Task name.
    #[pyo3(get)]
    name: String,
    /// Observation length.
    #[pyo3(get)]
    obs_dim: usize,
    /// Action length.
    #[pyo3(get)]
    action_dim: usize,
    /// Agent steps per episode.
    #[pyo3(get)]
    episode_len: usize,
    /// Simulator steps per agent step.
    #[pyo3(get)]
    action_repeat: usize,
    next_seed: AtomicU64,
}

/// A built-in Rust task by name: "pendulum-swingup", "cartpole-swingup", "cartpole-balance",
/// "acrobot-swingup", "reacher-easy". Unknown names are a ValueError.
#[pyfunction]
pub fn make_env(name: &str) -> PyResult<Env> {
    let e = py_result(pompc::env::make(name))?;
    Ok(Env {
        name: e.name().to_string(),
        obs_dim: e.obs_dim(),
        action_dim: e.action_dim(),
        episode_len: e.episode_len(),
        action_repeat: e.action_repeat(),
        inner: Mutex::new(e),
        next_seed: AtomicU64::new(0),
    })
}

/// The names `make_env` accepts.
#[pyfunction]
pub fn env_names() -> Vec<&'static str> {
    pompc::env::NAMES.to_vec()
}

impl Env {
    /// The task's name.
    pub fn task_name(&self) -> &str {
        &self.name
    }
}

#[pymethods]
impl Env {
    /// Start an episode; the same seed gives the same episode (None: the next of a counter).
    #[pyo3(signature = (seed=None))]
    fn reset<'py>(
        &self,
        py: Python<'py>,
        #[pyo3(from_py_with = crate::errors::opt_uint_u64)] seed: Option<u64>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyDict>)> {
        let seed = seed.unwrap_or_else(|| self.next_seed.fetch_add(1, Ordering::Relaxed));
        let obs = lock(&self.inner, "Env")?.reset(seed);
        Ok((f32_vec(py, obs), PyDict::new(py)))
    }

    /// One agent step with a float32 action ``[action_dim]``.
    #[allow(clippy::type_complexity)]
    fn step<'py>(
        &self,
        py: Python<'py>,
        action: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyAny>, f32, bool, bool, Bound<'py, PyDict>)> {
        let (a, _) = f32_input(action, "action", &[Some(self.action_dim)])?;
        let s = py_result(lock(&self.inner, "Env")?.step(&a))?;
        Ok((f32_vec(py, s.obs), s.reward, false, s.done, PyDict::new(py)))
    }

    fn __repr__(&self) -> String {
        format!("pompc.make_env({:?})", self.name)
    }
}

/// The core's `Env` over a Python object with Gymnasium's API: ``reset(seed=...)`` returning
/// ``(obs, info)`` and ``step(action)`` returning ``(obs, reward, terminated, truncated,
/// info)``, a Box ``action_space`` and an ``observation_space`` with a shape. Actions in
/// [-1, 1] are mapped onto the action space's bounds; observations are flattened to float32.
/// Every call takes the GIL for itself.
///
/// A Python exception (or Ctrl-C) inside a call is kept in the `ErrorSlot` for the binding
/// to re-raise; the Rust side sees an error (`step`) or NaN observations (`reset`, which
/// cannot fail in the trait: the trainer refuses NaN observations, so the run stops there).
pub struct PyEnv {
    obj: Py<PyAny>,
    name: String,
    obs_dim: usize,
    action_dim: usize,
    episode_len: usize,
    action_repeat: usize,
    // Affine map from [-1, 1] onto [low, high], when the bounds are finite.
    bounds: Option<(Vec<f32>, Vec<f32>)>,
    t: usize,
    errors: ErrorSlot,
}

fn shape_len(space: &Bound<'_, PyAny>, what: &str) -> PyResult<usize> {
    let no_shape = || type_error(format!("the environment's {what} has no integer shape"));
    let shape: Vec<usize> = space
        .getattr("shape")
        .map_err(|e| missing_attr(space.py(), e, no_shape()))?
        .extract()
        .map_err(|_| no_shape())?;
    // A product that wraps around would pass for a small (or zero) size.
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            value_error(format!(
                "the environment's {what} shape {shape:?} is too large"
            ))
        })
}

fn flat_f64(obj: &Bound<'_, PyAny>) -> PyResult<Vec<f64>> {
    let np = obj.py().import("numpy")?;
    let a = np.call_method1("asarray", (obj, "float64"))?;
    a.call_method1("reshape", (-1,))?
        .call_method0("tolist")?
        .extract()
}

impl PyEnv {
    /// Wrap `obj`. `episode_len` defaults to ``obj.spec.max_episode_steps`` (Gymnasium's time
    /// limit) or ``obj.episode_len``; `name` to ``obj.spec.id``, ``obj.name`` or the type's
    /// name; the action repeat is ``obj.action_repeat`` (default 1).
    pub fn new(
        obj: &Bound<'_, PyAny>,
        episode_len: Option<usize>,
        name: Option<String>,
        errors: ErrorSlot,
    ) -> PyResult<PyEnv> {
        for m in ["reset", "step"] {
            if !obj.hasattr(m)? {
                return Err(type_error(format!(
                    "the environment ({}) has no {m}(); pompc needs Gymnasium's API: \
                     reset(seed=...) and step(action)",
                    type_name(obj)
                )));
            }
        }
        let py = obj.py();
        let action_space = obj.getattr("action_space").map_err(|e| {
            let no = type_error("the environment has no action_space (Gymnasium's Box of actions)");
            missing_attr(py, e, no)
        })?;
        let action_dim = shape_len(&action_space, "action_space")?;
        let obs_space = obj.getattr("observation_space").map_err(|e| {
            let no = type_error("the environment has no observation_space (with a shape)");
            missing_attr(py, e, no)
        })?;
        let obs_dim = shape_len(&obs_space, "observation_space")?;
        if action_dim == 0 || obs_dim == 0 {
            return Err(value_error(format!(
                "the environment has {obs_dim} observations and {action_dim} actions; both \
                 must be positive"
            )));
        }
        let bounds = match (action_space.getattr("low"), action_space.getattr("high")) {
            (Ok(lo), Ok(hi)) => {
                let (lo, hi) = (flat_f64(&lo)?, flat_f64(&hi)?);
                if lo.len() != action_dim || hi.len() != action_dim {
                    return Err(value_error(format!(
                        "action_space bounds have {} and {} values for {action_dim} actions",
                        lo.len(),
                        hi.len()
                    )));
                }
                let finite = lo
                    .iter()
                    .zip(&hi)
                    .all(|(l, h)| l.is_finite() && h.is_finite() && l < h);
                finite.then(|| {
                    (
                        lo.iter().map(|&v| v as f32).collect(),
                        hi.iter().map(|&v| v as f32).collect(),
                    )
                })
            }
            _ => None,
        };
        let spec = obj.getattr("spec").ok().filter(|s| !s.is_none());
        let episode_len = match episode_len {
            Some(n) => n,
            None => {
                let from_spec = spec
                    .as_ref()
                    .and_then(|s| s.getattr("max_episode_steps").ok())
                    .and_then(|v| v.extract::<usize>().ok());
                let from_attr = obj
                    .getattr("episode_len")
                    .ok()
                    .and_then(|v| v.extract::<usize>().ok());
                from_spec.or(from_attr).ok_or_else(|| {
                    value_error(
                        "the environment's episode length is unknown (no spec.max_episode_steps \
                         and no episode_len attribute); pass episode_len=...",
                    )
                })?
            }
        };
        if episode_len == 0 {
            return Err(value_error("episode_len must be at least 1"));
        }
        let action_repeat = obj
            .getattr("action_repeat")
            .ok()
            .and_then(|v| v.extract::<usize>().ok())
            .unwrap_or(1)
            .max(1);
        let name = match name {
            Some(n) => n,
            None => spec
                .as_ref()
                .and_then(|s| s.getattr("id").ok())
                .and_then(|v| v.extract::<String>().ok())
                .or_else(|| obj.getattr("name").ok().and_then(|v| v.extract().ok()))
                .unwrap_or_else(|| type_name(obj)),
        };
        Ok(PyEnv {
            obj: obj.clone().unbind(),
            name,
            obs_dim,
            action_dim,
            episode_len,
            action_repeat,
            bounds,
            t: 0,
            errors,
        })
    }

    fn observation(&self, obs: &Bound<'_, PyAny>) -> PyResult<Vec<f32>> {
        let np = obs.py().import("numpy")?;
        let flat = np
            .call_method1("ascontiguousarray", (obs, "float32"))?
            .call_method1("reshape", (-1,))?;
        let (v, _) = f32_input(&flat, "observation", &[None])?;
        if v.len() != self.obs_dim {
            return Err(value_error(format!(
                "{} returned an observation of {} values; its observation_space has {}",
                self.name,
                v.len(),
                self.obs_dim
            )));
        }
        Ok(v)
    }

    fn try_reset(&self, py: Python<'_>, seed: u64) -> PyResult<Vec<f32>> {
        py.check_signals()?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("seed", seed)?;
        let out = self.obj.bind(py).call_method("reset", (), Some(&kwargs))?;
        // Gymnasium returns (obs, info); a bare observation is accepted too.
        let obs = match out.cast::<PyTuple>() {
            Ok(t) if t.len() == 2 => t.get_item(0)?,
            _ => out,
        };
        self.observation(&obs)
    }

    fn try_step(&self, py: Python<'_>, action: &[f32]) -> PyResult<(Vec<f32>, f32, bool)> {
        py.check_signals()?;
        let a: Vec<f32> = match &self.bounds {
            Some((lo, hi)) => action
                .iter()
                .zip(lo.iter().zip(hi))
                .map(|(&u, (&l, &h))| l + (u.clamp(-1.0, 1.0) + 1.0) * 0.5 * (h - l))
                .collect(),
            None => action.to_vec(),
        };
        let arr = numpy::PyArray1::from_vec(py, a);
        let out = self.obj.bind(py).call_method1("step", (arr,))?;
        let t = out.cast::<PyTuple>().map_err(|_| {
            type_error(format!(
                "{}.step returned {}, expected (obs, reward, terminated, truncated, info)",
                self.name,
                type_name(&out)
            ))
        })?;
        let (obs, reward, done) = match t.len() {
            5 => (
                t.get_item(0)?,
                t.get_item(1)?,
                t.get_item(2)?.is_truthy()? || t.get_item(3)?.is_truthy()?,
            ),
            // The older Gym API: (obs, reward, done, info).
            4 => (t.get_item(0)?, t.get_item(1)?, t.get_item(2)?.is_truthy()?),
            n => {
                return Err(type_error(format!(
                    "{}.step returned {n} values, expected (obs, reward, terminated, \
                     truncated, info)",
                    self.name
                )));
            }
        };
        let reward: f64 = reward.extract().map_err(|_| {
            type_error(format!(
                "{}.step returned a reward that is not a number",
                self.name
            ))
        })?;
        Ok((self.observation(&obs)?, reward as f32, done))
    }

    fn fail(&self, e: PyErr) -> pompc::Error {
        let msg = Python::attach(|py| e.to_string() + &format!(" ({})", e.get_type(py)));
        self.errors.store(e);
        pompc::Error::InvalidArgument(format!(
            "the Python environment {} raised: {msg}",
            self.name
        ))
    }
}

impl RsEnv for PyEnv {
    fn name(&self) -> &str {
        &self.name
    }
    fn obs_dim(&self) -> usize {
        self.obs_dim
    }
    fn action_dim(&self) -> usize {
        self.action_dim
    }
    fn episode_len(&self) -> usize {
        self.episode_len
    }
    fn action_repeat(&self) -> usize {
        self.action_repeat
    }
    fn reset(&mut self, seed: u64) -> Vec<f32> {
        self.t = 0;
        match Python::attach(|py| self.try_reset(py, seed)) {
            Ok(obs) => obs,
            Err(e) => {
                let _ = self.fail(e);
                vec![f32::NAN; self.obs_dim]
            }
        }
    }
    fn step(&mut self, action: &[f32]) -> pompc::Result<Step> {
        if action.len() != self.action_dim {
            return Err(pompc::Error::Shape(format!(
                "{}: action has {} entries, the task takes {}",
                self.name,
                action.len(),
                self.action_dim
            )));
        }
        if self.t >= self.episode_len {
            return Err(pompc::Error::InvalidArgument(format!(
                "{}: the episode is over; call reset before stepping again",
                self.name
            )));
        }
        match Python::attach(|py| self.try_step(py, action)) {
            Ok((obs, reward, done)) => {
                self.t += 1;
                Ok(Step {
                    obs,
                    reward,
                    done: done || self.t >= self.episode_len,
                })
            }
            Err(e) => Err(self.fail(e)),
        }
    }
}
