//! `pompc.Population`: several training runs (methods, lambdas and seeds of one task) as one
//! `pompc::train::Population` on one device, planning and updating together where they can.

use crate::env::ErrorSlot;
use crate::errors::{Exclusive, guard, py_result, to_py, type_error, value_error};
use crate::gpu::{Gpu, WorldModel, parse_size};
use crate::planner::apply_planner_kwargs;
use crate::trainer::{apply_train_kwargs, event_dict, locked_call, make_envs};
use pompc::train::{AgentSetup, Event, Method, TrainConfig};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

type RsPopulation<'a> = pompc::train::Population<'a>;

self_cell::self_cell!(
    /// The core population next to the Gpu it borrows.
    pub struct PopulationCell {
        owner: Arc<pompc::Gpu>,
        #[not_covariant]
        dependent: RsPopulation,
    }
);

/// Several PO-MPC-family runs of one task trained together on one Gpu.
///
/// ``Population(env, methods=("po-mpc",), lams=None, seeds=(0,), model=None, *,
/// steps=1_000_000, quick=False, gpu=None, episode_len=None, name=None, planner=None,
/// **config)``
///
/// One agent per combination of ``methods``, ``lams`` (PO-MPC's KL strengths, default 1; for
/// ``"po-mpc"`` only) and ``seeds``, each with its own model, optimizers, replay buffer,
/// environments and random streams; the other arguments are ``Trainer``'s, for every agent.
/// ``env`` is a built-in task's name or a function of no arguments that returns a new
/// Gymnasium-style environment (called twice per agent: training and evaluation).
///
/// Agents of the same model and planner plan in one shared plan step per environment step;
/// those of one method that differ only in seed and lambda also run their updates in the same
/// dispatches (``shares_updates``). Each agent's results are those its own ``Trainer`` gives
/// with the same seed.
#[pyclass(frozen, module = "pompc")]
pub struct Population {
    cell: Exclusive<PopulationCell>,
    gpu: Py<Gpu>,
    errors: ErrorSlot,
    /// (method slug, lambda, seed) of each agent.
    agents: Vec<(String, Option<f32>, u64)>,
    env_name: String,
}

struct BuildArgs<'a, 'py> {
    env: &'a Bound<'py, PyAny>,
    methods: Vec<String>,
    lams: Option<Vec<f32>>,
    seeds: Vec<u64>,
    model: Option<&'a Bound<'py, PyAny>>,
    steps: usize,
    quick: bool,
    gpu: Option<Py<Gpu>>,
    episode_len: Option<usize>,
    name: Option<String>,
    planner: Option<&'a Bound<'py, PyDict>>,
    config: Option<&'a Bound<'py, PyDict>>,
}

impl Population {
    fn build(py: Python<'_>, a: BuildArgs<'_, '_>, resume: Option<PathBuf>) -> PyResult<Self> {
        if a.methods.is_empty() || a.seeds.is_empty() {
            return Err(value_error(
                "a population needs at least one method and one seed",
            ));
        }
        let mut seen = a.seeds.clone();
        seen.sort_unstable();
        if seen.windows(2).any(|w| w[0] == w[1]) {
            return Err(value_error("seeds lists a seed twice"));
        }
        let mut settings = Vec::new();
        for m in &a.methods {
            let lams: Vec<Option<f32>> = match (&a.lams, py_result(Method::parse(m, None))?) {
                (Some(ls), Method::Pompc { .. }) => ls.iter().copied().map(Some).collect(),
                _ => vec![None],
            };
            for l in lams {
                let method = py_result(Method::parse(m, l))?;
                if settings.contains(&method) {
                    return Err(value_error(format!(
                        "{} is asked for twice",
                        method.label()
                    )));
                }
                settings.push(method);
            }
        }
        if a.lams.is_some() && !settings.iter().any(|m| matches!(m, Method::Pompc { .. })) {
            return Err(value_error(
                "lams applies to po-mpc, which methods does not list",
            ));
        }
        let errors = ErrorSlot::default();
        let factory = !a.env.is_instance_of::<pyo3::types::PyString>();
        if factory && !a.env.is_callable() {
            return Err(type_error(
                "env: a built-in task's name or a function that returns a new environment",
            ));
        }
        let mut setups = Vec::new();
        let mut agents = Vec::new();
        let mut env_name = String::new();
        for &method in &settings {
            for &seed in &a.seeds {
                let (env, eval_env) = if factory {
                    let (train, eval) = (a.env.call0()?, a.env.call0()?);
                    make_envs(
                        py,
                        &train,
                        Some(&eval),
                        a.episode_len,
                        a.name.clone(),
                        &errors,
                    )?
                } else {
                    make_envs(py, a.env, None, a.episode_len, a.name.clone(), &errors)?
                };
                env_name = env.name().to_string();
                let mut cfg = if a.quick {
                    py_result(TrainConfig::quick(env.as_ref(), method, a.steps, seed))?
                } else {
                    let mut c = py_result(TrainConfig::new(env.as_ref(), method, a.steps, seed))?;
                    c.model = pompc::train::ModelPreset::Small;
                    c
                };
                if let Some(m) = a.model {
                    cfg.model = parse_size(m)?;
                }
                apply_train_kwargs(&mut cfg, a.config)?;
                apply_planner_kwargs(&mut cfg.planner, a.planner)?;
                let lam = match method {
                    Method::Pompc { lambda } => Some(lambda),
                    _ => None,
                };
                agents.push((method.slug(), lam, seed));
                setups.push(AgentSetup { env, eval_env, cfg });
            }
        }
        let gpu = match a.gpu {
            Some(g) => g,
            None => Py::new(py, Gpu::create(py, None, None, None)?)?,
        };
        let rs_gpu = gpu.get().inner.clone();
        let cell = py.detach(move || {
            guard(|| {
                PopulationCell::try_new(rs_gpu, |g| match resume {
                    Some(dir) => py_result(RsPopulation::resume(g, dir, setups)),
                    None => py_result(RsPopulation::create(g, setups)),
                })
            })
        });
        if let Some(e) = errors.take() {
            return Err(e);
        }
        Ok(Population {
            cell: Exclusive::new(cell?, "Population"),
            gpu,
            errors,
            agents,
            env_name,
        })
    }

    // As `Trainer::with`.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl for<'a> FnOnce(&mut RsPopulation<'a>) -> PyResult<T> + Send,
    ) -> PyResult<T> {
        locked_call(py, &self.cell, &self.errors, |cell| {
            cell.with_dependent_mut(|_, p| f(p))
        })
    }

    fn agent_index(&self, agent: usize) -> PyResult<usize> {
        if agent < self.agents.len() {
            Ok(agent)
        } else {
            Err(value_error(format!(
                "agent {agent} of a population of {}",
                self.agents.len()
            )))
        }
    }
}

#[pymethods]
impl Population {
    #[new]
    #[pyo3(signature = (env, methods=vec!["po-mpc".to_string()], lams=None, seeds=vec![0],
        model=None, *, steps=1_000_000, quick=false, gpu=None, episode_len=None, name=None,
        planner=None, **config))]
    #[allow(clippy::too_many_arguments)]
    fn new<'py>(
        py: Python<'py>,
        env: &Bound<'py, PyAny>,
        methods: Vec<String>,
        lams: Option<Vec<f32>>,
        seeds: Vec<u64>,
        model: Option<&Bound<'py, PyAny>>,
        #[pyo3(from_py_with = crate::errors::uint_usize)] steps: usize,
        quick: bool,
        gpu: Option<Py<Gpu>>,
        #[pyo3(from_py_with = crate::errors::opt_uint_usize)] episode_len: Option<usize>,
        name: Option<String>,
        planner: Option<&Bound<'py, PyDict>>,
        config: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Self> {
        let args = BuildArgs {
            env,
            methods,
            lams,
            seeds,
            model,
            steps,
            quick,
            gpu,
            episode_len,
            name,
            planner,
            config,
        };
        Population::build(py, args, None)
    }

    /// Resume the population saved in ``dir`` by ``save``. Takes ``Population``'s arguments;
    /// the agents (methods, lambdas, seeds), the model and the environment must be the
    /// saved ones.
    #[staticmethod]
    #[pyo3(signature = (dir, env, methods=vec!["po-mpc".to_string()], lams=None, seeds=vec![0],
        model=None, *, steps=1_000_000, quick=false, gpu=None, episode_len=None, name=None,
        planner=None, **config))]
    #[allow(clippy::too_many_arguments)]
    fn resume<'py>(
        py: Python<'py>,
        dir: PathBuf,
        env: &Bound<'py, PyAny>,
        methods: Vec<String>,
        lams: Option<Vec<f32>>,
        seeds: Vec<u64>,
        model: Option<&Bound<'py, PyAny>>,
        #[pyo3(from_py_with = crate::errors::uint_usize)] steps: usize,
        quick: bool,
        gpu: Option<Py<Gpu>>,
        #[pyo3(from_py_with = crate::errors::opt_uint_usize)] episode_len: Option<usize>,
        name: Option<String>,
        planner: Option<&Bound<'py, PyDict>>,
        config: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Self> {
        let args = BuildArgs {
            env,
            methods,
            lams,
            seeds,
            model,
            steps,
            quick,
            gpu,
            episode_len,
            name,
            planner,
            config,
        };
        Population::build(py, args, Some(dir))
    }

    /// Train every agent for ``steps`` more environment steps (within the budget given at
    /// construction) and return each agent's steps. ``callback(agent, event)`` receives the
    /// agent's index and an event dict as ``Trainer.run``'s; returning ``False`` stops the
    /// population (agents planning together stop at the end of the step), an exception stops
    /// it and is re-raised.
    #[pyo3(signature = (steps, callback=None))]
    fn run(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::errors::uint_usize)] steps: usize,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<Vec<usize>> {
        if let Some(cb) = &callback
            && !cb.bind(py).is_callable()
        {
            return Err(type_error(format!(
                "callback must be callable (a function of the agent and the event dict) or \
                 None, got {}",
                crate::arrays::type_name(cb.bind(py))
            )));
        }
        let errors = self.errors.clone();
        let stopped = AtomicBool::new(false);
        self.with(py, |p| {
            let at = p.agents().iter().map(|t| t.step()).min().unwrap_or(0);
            let until = at.saturating_add(steps);
            let on = |i: usize, e: &Event| -> pompc::Result<()> {
                Python::attach(|py| {
                    let r = py.check_signals().and_then(|()| match &callback {
                        Some(cb) => {
                            let d = event_dict(py, e)?;
                            let out = cb.call1(py, (i, d))?;
                            Ok(out.bind(py).extract::<bool>().is_ok_and(|b| !b))
                        }
                        None => Ok(false),
                    });
                    match r {
                        Ok(false) => Ok(()),
                        Ok(true) => {
                            stopped.store(true, Ordering::Relaxed);
                            Err(pompc::Error::InvalidArgument(
                                "stopped by the callback".into(),
                            ))
                        }
                        Err(err) => {
                            errors.store(err);
                            Err(pompc::Error::InvalidArgument(
                                "the callback raised an exception".into(),
                            ))
                        }
                    }
                })
            };
            let steps = |p: &RsPopulation| p.agents().iter().map(|t| t.step()).collect();
            match p.run(until, &on) {
                Ok(()) => Ok(steps(p)),
                Err(_) if stopped.load(Ordering::Relaxed) => Ok(steps(p)),
                Err(e) => Err(to_py(e)),
            }
        })
    }

    /// Write every agent's checkpoint into ``dir`` (created if missing).
    fn save(&self, py: Python<'_>, dir: PathBuf) -> PyResult<()> {
        self.with(py, |p| py_result(p.save(&dir)))
    }

    /// Each agent: a dict of ``method``, ``lam`` (None but for PO-MPC) and ``seed``, in the
    /// order of the callbacks' indices.
    #[getter]
    fn agents<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.agents
            .iter()
            .map(|(m, l, s)| {
                let d = PyDict::new(py);
                d.set_item("method", m)?;
                d.set_item("lam", l)?;
                d.set_item("seed", s)?;
                Ok(d)
            })
            .collect()
    }

    /// Environment steps each agent has taken.
    #[getter]
    fn steps(&self, py: Python<'_>) -> PyResult<Vec<usize>> {
        self.with(py, |p| Ok(p.agents().iter().map(|t| t.step()).collect()))
    }

    /// ``None`` when the agents plan in shared plan steps, else why not.
    #[getter]
    fn shares_plan_steps(&self, py: Python<'_>) -> PyResult<Option<String>> {
        self.with(py, |p| Ok(p.shares_plan_steps().err()))
    }

    /// ``None`` when the agents also run their updates in the same dispatches, else why not.
    #[getter]
    fn shares_updates(&self, py: Python<'_>) -> PyResult<Option<String>> {
        self.with(py, |p| Ok(p.shares_updates().err()))
    }

    /// Agent ``agent``'s training and evaluation returns (as ``Trainer.history``).
    fn history<'py>(&self, py: Python<'py>, agent: usize) -> PyResult<Bound<'py, PyDict>> {
        let i = self.agent_index(agent)?;
        let h = self.with(py, |p| Ok(p.agents()[i].history().to_vec()))?;
        let d = PyDict::new(py);
        d.set_item("step", h.iter().map(|r| r.step).collect::<Vec<_>>())?;
        d.set_item("eval", h.iter().map(|r| r.eval).collect::<Vec<_>>())?;
        d.set_item("return", h.iter().map(|r| r.ret).collect::<Vec<_>>())?;
        Ok(d)
    }

    /// Agent ``agent``'s current weights as a ``WorldModel`` on the same Gpu.
    fn world_model(&self, py: Python<'_>, agent: usize) -> PyResult<WorldModel> {
        let i = self.agent_index(agent)?;
        let w = self.with(py, |p| py_result(p.agents()[i].weights()))?;
        WorldModel::from_weights(py, self.gpu.clone_ref(py), w)
    }

    /// The Gpu it trains on.
    #[getter]
    fn gpu(&self, py: Python<'_>) -> Py<Gpu> {
        self.gpu.clone_ref(py)
    }

    fn __len__(&self) -> usize {
        self.agents.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "pompc.Population(env={:?}, agents={})",
            self.env_name,
            self.agents.len()
        )
    }
}
