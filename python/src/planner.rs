//! `pompc.Planner` and `pompc.Plan`: TD-MPC2's MPPI planner over a `WorldModel`.

use crate::arrays::{bool_flags, f32_input, f32_output, f32_vec};
use crate::errors::{Exclusive, guard, py_result, type_error, uint, value_error};
use crate::gpu::WorldModel;
use pompc::planner::{PlanMode, PlannerConfig, PlannerMode};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyDictMethods};
use std::sync::Arc;

/// What a planner borrows: the device and the model, kept alive here.
pub struct PlannerOwner {
    gpu: Arc<pompc::Gpu>,
    model: Arc<pompc::model::WorldModel>,
}

type RsPlanner<'a> = pompc::planner::Planner<'a>;

self_cell::self_cell!(
    /// The core planner next to the Arcs it borrows from.
    pub struct PlannerCell {
        owner: PlannerOwner,
        #[not_covariant]
        dependent: RsPlanner,
    }
);

/// The names `Planner(**config)` accepts, with `PlannerConfig`'s fields.
pub const PLANNER_KEYS: [&str; 13] = [
    "horizon",
    "num_samples",
    "num_elites",
    "num_pi_trajs",
    "iterations",
    "min_std",
    "max_std",
    "temperature",
    "discount",
    "mode",
    "mppi_lambda",
    "plan_mode",
    "seed",
];

/// Apply `PlannerConfig` keywords from `kwargs` to `cfg`; unknown names are a `TypeError`.
pub fn apply_planner_kwargs(
    cfg: &mut PlannerConfig,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<()> {
    let Some(kwargs) = kwargs else {
        return Ok(());
    };
    let mut mode: Option<String> = None;
    let mut lambda: Option<f32> = None;
    for (k, v) in kwargs.iter() {
        let key: String = k.extract()?;
        let bad = |e: PyErr| crate::errors::named(&format!("planner setting {key}"), e);
        match key.as_str() {
            "horizon" => cfg.horizon = uint(&v).map_err(bad)?,
            "num_samples" => cfg.num_samples = uint(&v).map_err(bad)?,
            "num_elites" => cfg.num_elites = uint(&v).map_err(bad)?,
            "num_pi_trajs" => cfg.num_pi_trajs = uint(&v).map_err(bad)?,
            "iterations" => cfg.iterations = uint(&v).map_err(bad)?,
            "min_std" => cfg.min_std = v.extract().map_err(bad)?,
            "max_std" => cfg.max_std = v.extract().map_err(bad)?,
            "temperature" => cfg.temperature = v.extract().map_err(bad)?,
            "discount" => cfg.discount = v.extract().map_err(bad)?,
            "seed" => cfg.seed = uint(&v).map_err(bad)?,
            "mode" => mode = Some(v.extract().map_err(bad)?),
            "mppi_lambda" => lambda = Some(v.extract().map_err(bad)?),
            "plan_mode" => {
                let m: String = v.extract().map_err(bad)?;
                cfg.plan_mode = match m.to_ascii_lowercase().as_str() {
                    "train" => PlanMode::Train,
                    "eval" => PlanMode::Eval,
                    _ => {
                        return Err(value_error(format!(
                            "plan_mode {m:?}: \"train\" (exploration noise) or \"eval\""
                        )));
                    }
                };
            }
            _ => {
                return Err(type_error(format!(
                    "unknown planner setting {key:?}; known: {}",
                    PLANNER_KEYS.join(", ")
                )));
            }
        }
    }
    if let Some(m) = mode {
        let key: String = m
            .to_ascii_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        cfg.mode = match key.as_str() {
            "elitemppi" | "elite" => PlannerMode::EliteMppi,
            "mppi" => PlannerMode::Mppi {
                lambda: lambda.unwrap_or(1.0),
            },
            "cem" => PlannerMode::Cem,
            _ => {
                return Err(value_error(format!(
                    "mode {m:?}: \"elite-mppi\" (TD-MPC2), \"mppi\" or \"cem\""
                )));
            }
        };
    }
    match (cfg.mode, lambda) {
        (PlannerMode::Mppi { .. }, _) | (_, None) => Ok(()),
        (_, Some(_)) => Err(value_error(
            "mppi_lambda applies to mode=\"mppi\" only".to_string(),
        )),
    }
}

/// The settings as a dict (the keywords `Planner` takes).
pub fn planner_config_dict<'py>(
    py: Python<'py>,
    c: &PlannerConfig,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("horizon", c.horizon)?;
    d.set_item("num_samples", c.num_samples)?;
    d.set_item("num_elites", c.num_elites)?;
    d.set_item("num_pi_trajs", c.num_pi_trajs)?;
    d.set_item("iterations", c.iterations)?;
    d.set_item("min_std", c.min_std)?;
    d.set_item("max_std", c.max_std)?;
    d.set_item("temperature", c.temperature)?;
    d.set_item("discount", c.discount)?;
    let (mode, lambda) = match c.mode {
        PlannerMode::EliteMppi => ("elite-mppi", None),
        PlannerMode::Mppi { lambda } => ("mppi", Some(lambda)),
        PlannerMode::Cem => ("cem", None),
    };
    d.set_item("mode", mode)?;
    if let Some(l) = lambda {
        d.set_item("mppi_lambda", l)?;
    }
    d.set_item(
        "plan_mode",
        match c.plan_mode {
            PlanMode::Train => "train",
            PlanMode::Eval => "eval",
        },
    )?;
    d.set_item("seed", c.seed)?;
    Ok(d)
}

/// The result of ``Planner.plan`` for a batch of B environments: ``action`` ``[B, A]`` (to
/// execute), ``mean`` and ``std`` ``[B, H, A]`` (the final sampling distribution over the
/// horizon H; ``[B, 1, A]``, the first step only, for a planner built with
/// ``full_distribution=False``), ``value`` ``[B]`` (of the chosen sample) and ``chosen``
/// ``[B]`` (its index; below ``num_pi_trajs``: a policy trajectory). All float32 except
/// ``chosen`` (uint32).
#[pyclass(frozen, module = "pompc", get_all)]
pub struct Plan {
    /// Actions to execute, ``[B, A]``.
    pub action: Py<PyAny>,
    /// Mean of the sampling distribution, ``[B, H, A]``.
    pub mean: Py<PyAny>,
    /// Std of the sampling distribution, ``[B, H, A]``.
    pub std: Py<PyAny>,
    /// Value of the chosen sample, ``[B]``.
    pub value: Py<PyAny>,
    /// Index of the chosen sample, ``[B]``.
    pub chosen: Py<PyAny>,
}

#[pymethods]
impl Plan {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "pompc.Plan(action={})",
            self.action.bind(py).repr()?
        ))
    }
}

/// TD-MPC2's MPPI planner on the GPU, batched over environments: one submit per ``plan``.
///
/// ``Planner(model, full_distribution=True, **config)``: ``config`` takes every
/// ``PlannerConfig`` field as a keyword, defaults TD-MPC2's for the model's action size:
/// ``horizon`` (3), ``num_samples`` (512), ``num_elites`` (64), ``num_pi_trajs`` (24),
/// ``iterations`` (6; 8 from 20 actions), ``min_std`` (0.05), ``max_std`` (2),
/// ``temperature`` (0.5), ``discount`` (0.99), ``mode`` (``"elite-mppi"``, ``"mppi"`` with
/// ``mppi_lambda``, or ``"cem"``), ``plan_mode`` (``"train"`` adds exploration noise to the
/// action, ``"eval"`` does not) and ``seed`` (1). Bad settings are a ``ValueError``, unknown
/// names a ``TypeError``.
///
/// ``full_distribution=False`` skips the extra read-back that fetches the mean and std of
/// the whole horizon; ``Plan.mean`` and ``Plan.std`` then hold the first step only.
/// The GIL is released while the GPU plans; calls on one planner run one at a time.
#[pyclass(frozen, module = "pompc")]
pub struct Planner {
    cell: Exclusive<PlannerCell>,
    model: Py<WorldModel>,
    cfg: PlannerConfig,
    full: bool,
}

impl Planner {
    /// Run `f` on the core planner with the GIL released. The lock is taken only after the
    /// GIL is let go, so a thread waiting for it never holds the GIL that the thread inside
    /// needs to return.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl for<'a> FnOnce(&mut RsPlanner<'a>) -> PyResult<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            guard(|| {
                let mut cell = self.cell.lock()?;
                cell.with_dependent_mut(|_, p| f(p))
            })
        })
    }
}

#[pymethods]
impl Planner {
    #[new]
    #[pyo3(signature = (model, full_distribution=true, **config))]
    fn new(
        py: Python<'_>,
        model: Py<WorldModel>,
        full_distribution: bool,
        config: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let m = model.get();
        let mut cfg = PlannerConfig::tdmpc2(m.model.spec.action_dim);
        apply_planner_kwargs(&mut cfg, config)?;
        let owner = PlannerOwner {
            gpu: m.rs_gpu.clone(),
            model: m.model.clone(),
        };
        let c = cfg.clone();
        let cell = py.detach(move || {
            guard(|| {
                PlannerCell::try_new(owner, |o| {
                    py_result(pompc::planner::Planner::new(&o.gpu, &o.model, c))
                })
            })
        })?;
        Ok(Planner {
            cell: Exclusive::new(cell, "Planner"),
            model,
            cfg,
            full: full_distribution,
        })
    }

    /// Plan one action per environment: ``obs`` is a float32 array ``[B, obs_dim]`` (or
    /// ``[obs_dim]`` for one environment), ``first_step`` a bool or B bools (True where an
    /// episode starts: no warm start from the previous call). Wrong shapes or dtypes, NaN
    /// observations and non-contiguous arrays raise before anything runs.
    fn plan(
        &self,
        py: Python<'_>,
        obs: &Bound<'_, PyAny>,
        first_step: &Bound<'_, PyAny>,
    ) -> PyResult<Plan> {
        let o = self.model.get().model.spec.obs_dim;
        let single = obs
            .cast::<numpy::PyUntypedArray>()
            .is_ok_and(|a| numpy::PyUntypedArrayMethods::ndim(a) == 1);
        let (values, shape) = if single {
            f32_input(obs, "obs", &[Some(o)])?
        } else {
            f32_input(obs, "obs", &[None, Some(o)])?
        };
        let b = if single { 1 } else { shape[0] };
        if b == 0 {
            return Err(value_error("obs holds no environments"));
        }
        let first = bool_flags(first_step, "first_step", b)?;
        let full = self.full;
        let (plan, dist) = self.with(py, |p| {
            let plan = py_result(p.plan(&values, &first))?;
            let dist = if full {
                Some(py_result(p.last_distribution())?)
            } else {
                None
            };
            Ok((plan, dist))
        })?;
        let a = plan.action_dim;
        let (mean, std, h) = match dist {
            Some((m, s)) => (m, s, self.cfg.horizon),
            None => (plan.mean, plan.std, 1),
        };
        let action_shape: Vec<usize> = if single { vec![a] } else { vec![b, a] };
        let dist_shape: Vec<usize> = if single { vec![h, a] } else { vec![b, h, a] };
        let chosen = numpy::PyArray1::from_vec(py, plan.chosen);
        let (value, chosen): (Bound<'_, PyAny>, Bound<'_, PyAny>) = if single {
            (
                plan.value[0].into_pyobject(py)?.into_any(),
                chosen.get_item(0)?,
            )
        } else {
            (f32_vec(py, plan.value), chosen.into_any())
        };
        Ok(Plan {
            action: f32_output(py, plan.action, &action_shape)?.unbind(),
            mean: f32_output(py, mean, &dist_shape)?.unbind(),
            std: f32_output(py, std, &dist_shape)?.unbind(),
            value: value.unbind(),
            chosen: chosen.unbind(),
        })
    }

    /// Number of ``plan`` calls so far (the next call's index in the random streams).
    #[getter]
    fn calls(&self, py: Python<'_>) -> PyResult<u32> {
        self.with(py, |p| Ok(p.calls()))
    }

    /// The largest batch this device can plan for at once.
    #[getter]
    fn max_batch(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |p| Ok(p.max_batch()))
    }

    /// The settings, as the keywords ``Planner`` takes.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        planner_config_dict(py, &self.cfg)
    }

    /// The model this planner plans with.
    #[getter]
    fn model(&self, py: Python<'_>) -> Py<WorldModel> {
        self.model.clone_ref(py)
    }

    fn __repr__(&self) -> String {
        format!(
            "pompc.Planner(horizon={}, num_samples={}, iterations={}, mode={:?})",
            self.cfg.horizon, self.cfg.num_samples, self.cfg.iterations, self.cfg.mode
        )
    }
}
