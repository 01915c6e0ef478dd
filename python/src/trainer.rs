//! `pompc.Trainer`: the Rust training loop (TD-MPC2's world-model update and the PO-MPC
//! family's policy update on the GPU) over a built-in task or a Python environment.

use crate::env::{Env, ErrorSlot, PyEnv};
use crate::errors::{Exclusive, guard, py_result, to_py, type_error, uint, value_error};
use crate::gpu::{Gpu, WorldModel, parse_size};
use crate::planner::{apply_planner_kwargs, planner_config_dict};
use pompc::env::Env as RsEnv;
use pompc::train::{Event, Method, TrainConfig};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

type RsTrainer<'a> = pompc::train::Trainer<'a>;

self_cell::self_cell!(
    /// The core trainer next to the Gpu it borrows.
    pub struct TrainerCell {
        owner: Arc<pompc::Gpu>,
        #[not_covariant]
        dependent: RsTrainer,
    }
);

/// The `**config` names `Trainer` accepts (`TrainConfig`'s scalar fields).
const TRAIN_KEYS: [&str; 9] = [
    "seed_steps",
    "batch",
    "buffer_capacity",
    "eval_every",
    "eval_episodes",
    "log_every",
    "pretrain_policy",
    "planner_precision",
    "tensor_core_updates",
];

pub(crate) fn apply_train_kwargs(
    cfg: &mut TrainConfig,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<()> {
    let Some(kwargs) = kwargs else {
        return Ok(());
    };
    for (k, v) in kwargs.iter() {
        let key: String = k.extract()?;
        let bad = |e: PyErr| crate::errors::named(&format!("training setting {key}"), e);
        match key.as_str() {
            "seed_steps" => cfg.seed_steps = uint(&v).map_err(bad)?,
            "batch" => cfg.batch = uint(&v).map_err(bad)?,
            "buffer_capacity" => cfg.buffer_capacity = uint(&v).map_err(bad)?,
            "eval_every" => cfg.eval_every = uint(&v).map_err(bad)?,
            "eval_episodes" => cfg.eval_episodes = uint(&v).map_err(bad)?,
            "log_every" => cfg.log_every = uint(&v).map_err(bad)?,
            "pretrain_policy" => cfg.pretrain_policy = v.extract().map_err(bad)?,
            "tensor_core_updates" => {
                let on: bool = v.extract().map_err(bad)?;
                cfg.update.tensor_cores = on;
                cfg.policy.tensor_cores = on;
            }
            "planner_precision" => {
                let p: String = v.extract().map_err(bad)?;
                cfg.planner_precision = py_result(pompc::Precision::parse(&p))?
                    .ok_or_else(|| value_error("planner_precision: f32, f16 or coop (not auto)"))?;
            }
            _ => {
                return Err(type_error(format!(
                    "unknown training setting {key:?}; known: {}, and planner=dict(...) for \
                     the planner's",
                    TRAIN_KEYS.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// The training and evaluation environments for `env` (a task name, a `pompc.Env`, or a
/// Python object with Gymnasium's API) and the optional separate `eval_env`.
pub(crate) fn make_envs(
    py: Python<'_>,
    env: &Bound<'_, PyAny>,
    eval_env: Option<&Bound<'_, PyAny>>,
    episode_len: Option<usize>,
    name: Option<String>,
    errors: &ErrorSlot,
) -> PyResult<(Box<dyn RsEnv>, Box<dyn RsEnv>)> {
    let builtin = if let Ok(s) = env.extract::<String>() {
        Some(s)
    } else if let Ok(e) = env.cast::<Env>() {
        Some(e.get().task_name().to_string())
    } else {
        None
    };
    if let Some(task) = builtin {
        if eval_env.is_some() || episode_len.is_some() || name.is_some() {
            return Err(value_error(
                "eval_env, episode_len and name apply to Python environments; a built-in \
                 task makes its own evaluation instance",
            ));
        }
        let a = py_result(pompc::env::make(&task))?;
        let b = py_result(pompc::env::make(&task))?;
        return Ok((a, b));
    }
    let train = PyEnv::new(env, episode_len, name.clone(), errors.clone())?;
    // Evaluation episodes run between training episodes, but `Trainer.evaluate` can run in
    // the middle of one: a second instance keeps the training episode intact.
    let eval_obj = match eval_env {
        Some(e) => e.clone(),
        None => py
            .import("copy")?
            .call_method1("deepcopy", (env,))
            .map_err(|e| {
                // KeyboardInterrupt and other non-Exceptions are not a copying problem.
                if !e.is_instance_of::<pyo3::exceptions::PyException>(py) {
                    return e;
                }
                let err = value_error(format!(
                    "could not copy the environment for evaluation ({e}); pass eval_env=..."
                ));
                err.set_cause(py, Some(e));
                err
            })?,
    };
    let eval = PyEnv::new(&eval_obj, episode_len, name, errors.clone())?;
    if eval.obs_dim() != train.obs_dim() || eval.action_dim() != train.action_dim() {
        return Err(value_error(
            "eval_env has other observation or action sizes than env",
        ));
    }
    Ok((Box::new(train), Box::new(eval)))
}

pub(crate) fn event_dict<'py>(py: Python<'py>, e: &Event) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match e {
        Event::Episode { step, episode, ret } => {
            d.set_item("kind", "episode")?;
            d.set_item("step", step)?;
            d.set_item("episode", episode)?;
            d.set_item("return", ret)?;
        }
        Event::Eval {
            step,
            mean,
            returns,
        } => {
            d.set_item("kind", "eval")?;
            d.set_item("step", step)?;
            d.set_item("return", mean)?;
            d.set_item("returns", returns.clone())?;
        }
        Event::Losses {
            step,
            updates,
            world,
            policy,
        } => {
            d.set_item("kind", "losses")?;
            d.set_item("step", step)?;
            d.set_item("updates", updates)?;
            d.set_item("consistency", world.consistency)?;
            d.set_item("reward", world.reward)?;
            d.set_item("value", world.value)?;
            d.set_item("total", world.total)?;
            d.set_item("grad_norm", world.grad_norm)?;
            if let Some(p) = policy {
                let pd = PyDict::new(py);
                pd.set_item("q", p.q)?;
                pd.set_item("entropy", p.entropy)?;
                pd.set_item("kl", p.kl)?;
                pd.set_item("ll", p.ll)?;
                pd.set_item("total", p.total)?;
                pd.set_item("prior_fit", p.prior_fit)?;
                pd.set_item("grad_norm", p.grad_norm)?;
                d.set_item("policy", pd)?;
            }
        }
        Event::Pretraining {
            step,
            updates,
            total,
        } => {
            d.set_item("kind", "pretraining")?;
            d.set_item("step", step)?;
            d.set_item("updates", updates)?;
            d.set_item("total", total)?;
        }
        Event::Pretrained { updates, seconds } => {
            d.set_item("kind", "pretrained")?;
            d.set_item("updates", updates)?;
            d.set_item("seconds", seconds)?;
        }
    }
    Ok(d)
}

/// PO-MPC-family training with TD-MPC2's world model, on the GPU.
///
/// ``Trainer(env, method="po-mpc", lam=None, model=None, seed=0, *, steps=1_000_000,
/// quick=False, gpu=None, eval_env=None, episode_len=None, name=None, planner=None,
/// **config)``
///
/// ``env`` is a built-in task's name (``"cartpole-swingup"``), a ``pompc.Env``, or any object
/// with Gymnasium's API (``reset(seed=...)``, ``step(action)``, a Box ``action_space``, an
/// ``observation_space``); actions in [-1, 1] are mapped onto the action space's bounds.
/// Evaluation runs on ``eval_env`` (default: a deep copy of ``env``). ``episode_len`` defaults
/// to the environment's ``spec.max_episode_steps`` or ``episode_len``; ``name`` (checked on
/// resume) to its ``spec.id``.
///
/// ``method``: ``"tdmpc2"``, ``"bmpc"``, ``"tdmpc-square"`` or ``"po-mpc"`` (``lam``: its KL
/// strength, default 1). ``model``: ``"tiny"``, ``"small"`` (default) or a TD-MPC2 size (1,
/// 5, 19, 48, 317). ``steps``: the run's budget of environment steps. ``quick=True`` starts
/// from the setting sized for CPU adapters (tiny model, 64 samples, batch 32, one episode of
/// seed steps). ``planner``: a dict of ``Planner`` keywords. ``config``: ``seed_steps``,
/// ``batch``, ``buffer_capacity``, ``eval_every``, ``eval_episodes``, ``log_every``,
/// ``pretrain_policy``, ``planner_precision``, ``tensor_core_updates`` (the updates' matrix
/// products on tensor cores, f16 with scaled gradients; needs cooperative matrices).
///
/// ``run`` releases the GIL; a Python environment takes it back for each ``reset`` and
/// ``step``, and its exceptions (and Ctrl-C) stop the run and are re-raised.
#[pyclass(frozen, module = "pompc")]
pub struct Trainer {
    cell: Exclusive<TrainerCell>,
    gpu: Py<Gpu>,
    errors: ErrorSlot,
    cfg: TrainConfig,
    env_name: String,
}

struct BuildArgs<'a, 'py> {
    env: &'a Bound<'py, PyAny>,
    method: &'a str,
    lam: Option<f32>,
    model: Option<&'a Bound<'py, PyAny>>,
    seed: u64,
    steps: usize,
    quick: bool,
    gpu: Option<Py<Gpu>>,
    eval_env: Option<&'a Bound<'py, PyAny>>,
    episode_len: Option<usize>,
    name: Option<String>,
    planner: Option<&'a Bound<'py, PyDict>>,
    config: Option<&'a Bound<'py, PyDict>>,
}

impl Trainer {
    fn build(py: Python<'_>, a: BuildArgs<'_, '_>, resume: Option<PathBuf>) -> PyResult<Self> {
        let errors = ErrorSlot::default();
        let (env, eval_env) = make_envs(py, a.env, a.eval_env, a.episode_len, a.name, &errors)?;
        let method = py_result(Method::parse(a.method, a.lam))?;
        let mut cfg = if a.quick {
            py_result(TrainConfig::quick(env.as_ref(), method, a.steps, a.seed))?
        } else {
            let mut c = py_result(TrainConfig::new(env.as_ref(), method, a.steps, a.seed))?;
            c.model = pompc::train::ModelPreset::Small;
            c
        };
        if let Some(m) = a.model {
            cfg.model = parse_size(m)?;
        }
        apply_train_kwargs(&mut cfg, a.config)?;
        apply_planner_kwargs(&mut cfg.planner, a.planner)?;
        let gpu = match a.gpu {
            Some(g) => g,
            None => Py::new(py, Gpu::create(py, None, None, None)?)?,
        };
        let env_name = env.name().to_string();
        let rs_gpu = gpu.get().inner.clone();
        let c = cfg.clone();
        let cell = py.detach(move || {
            guard(|| {
                TrainerCell::try_new(rs_gpu, |g| match resume {
                    Some(path) => py_result(RsTrainer::resume(g, env, eval_env, c, path)),
                    None => py_result(RsTrainer::new(g, env, eval_env, c)),
                })
            })
        });
        // A Python environment's own exception comes first.
        if let Some(e) = errors.take() {
            return Err(e);
        }
        Ok(Trainer {
            cell: Exclusive::new(cell?, "Trainer"),
            gpu,
            errors,
            cfg,
            env_name,
        })
    }

    // As `Planner::with`: the lock is taken with the GIL released. A call from inside one of
    // this trainer's own calls (its callback, its Python environment) is refused before it
    // touches the error slot, and the slot is read while the lock is held, so a call from
    // another thread cannot take (or clear) the error of the call that owns the lock.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl for<'a> FnOnce(&mut RsTrainer<'a>) -> PyResult<T> + Send,
    ) -> PyResult<T> {
        locked_call(py, &self.cell, &self.errors, |cell| {
            cell.with_dependent_mut(|_, t| f(t))
        })
    }
}

/// Run `f` on the locked `cell` with the GIL released and panics caught; a Python exception
/// kept in `errors` during the call (a callback's, an environment's) is the call's error.
pub(crate) fn locked_call<C: Send, T: Send>(
    py: Python<'_>,
    cell: &Exclusive<C>,
    errors: &ErrorSlot,
    f: impl FnOnce(&mut C) -> PyResult<T> + Send,
) -> PyResult<T> {
    cell.check()?;
    py.detach(|| {
        guard(|| {
            let mut c = cell.lock()?;
            // Left over from an earlier call that failed before reading it.
            drop(errors.take());
            let r = f(&mut c);
            match errors.take() {
                Some(e) => Err(e),
                None => r,
            }
        })
    })
}

#[pymethods]
impl Trainer {
    #[new]
    #[pyo3(signature = (env, method="po-mpc", lam=None, model=None, seed=0, *, steps=1_000_000,
        quick=false, gpu=None, eval_env=None, episode_len=None, name=None, planner=None,
        **config))]
    #[allow(clippy::too_many_arguments)]
    fn new<'py>(
        py: Python<'py>,
        env: &Bound<'py, PyAny>,
        method: &str,
        lam: Option<f32>,
        model: Option<&Bound<'py, PyAny>>,
        #[pyo3(from_py_with = crate::errors::uint_u64)] seed: u64,
        #[pyo3(from_py_with = crate::errors::uint_usize)] steps: usize,
        quick: bool,
        gpu: Option<Py<Gpu>>,
        eval_env: Option<&Bound<'py, PyAny>>,
        #[pyo3(from_py_with = crate::errors::opt_uint_usize)] episode_len: Option<usize>,
        name: Option<String>,
        planner: Option<&Bound<'py, PyDict>>,
        config: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Self> {
        let args = BuildArgs {
            env,
            method,
            lam,
            model,
            seed,
            steps,
            quick,
            gpu,
            eval_env,
            episode_len,
            name,
            planner,
            config,
        };
        Trainer::build(py, args, None)
    }

    /// Resume the run saved at ``path`` by ``save``. Takes ``Trainer``'s arguments; method,
    /// model, seed and the environment's name must be the run's, the step budget and the
    /// other settings may change.
    #[staticmethod]
    #[pyo3(signature = (path, env, method="po-mpc", lam=None, model=None, seed=0, *,
        steps=1_000_000, quick=false, gpu=None, eval_env=None, episode_len=None, name=None,
        planner=None, **config))]
    #[allow(clippy::too_many_arguments)]
    fn resume<'py>(
        py: Python<'py>,
        path: PathBuf,
        env: &Bound<'py, PyAny>,
        method: &str,
        lam: Option<f32>,
        model: Option<&Bound<'py, PyAny>>,
        #[pyo3(from_py_with = crate::errors::uint_u64)] seed: u64,
        #[pyo3(from_py_with = crate::errors::uint_usize)] steps: usize,
        quick: bool,
        gpu: Option<Py<Gpu>>,
        eval_env: Option<&Bound<'py, PyAny>>,
        #[pyo3(from_py_with = crate::errors::opt_uint_usize)] episode_len: Option<usize>,
        name: Option<String>,
        planner: Option<&Bound<'py, PyDict>>,
        config: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Self> {
        let args = BuildArgs {
            env,
            method,
            lam,
            model,
            seed,
            steps,
            quick,
            gpu,
            eval_env,
            episode_len,
            name,
            planner,
            config,
        };
        Trainer::build(py, args, Some(path))
    }

    /// Train for ``steps`` more environment steps (within the budget ``steps`` given at
    /// construction) and return the steps taken in all. ``callback(event)`` receives a dict
    /// per event: ``kind`` "episode" (step, episode, return), "eval" (step, return, returns),
    /// "losses" (step, updates, consistency, reward, value, total, grad_norm, policy),
    /// "pretraining" (step, updates, total: every 50 pre-training updates) or "pretrained"
    /// (updates, seconds); returning ``False`` stops the run after that event (a stop during
    /// pre-training keeps its progress: a saved and resumed run finishes it first), an
    /// exception stops it and is re-raised.
    #[pyo3(signature = (steps, callback=None))]
    fn run(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::errors::uint_usize)] steps: usize,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<usize> {
        // Not at the first event, after some training already ran.
        if let Some(cb) = &callback
            && !cb.bind(py).is_callable()
        {
            return Err(type_error(format!(
                "callback must be callable (a function of the event dict) or None, got {}",
                crate::arrays::type_name(cb.bind(py))
            )));
        }
        let errors = self.errors.clone();
        let stopped = AtomicBool::new(false);
        self.with(py, |t| {
            let until = t.step().saturating_add(steps);
            let mut on = |e: &Event| -> pompc::Result<()> {
                Python::attach(|py| {
                    let r = py.check_signals().and_then(|()| match &callback {
                        Some(cb) => {
                            let d = event_dict(py, e)?;
                            let out = cb.call1(py, (d,))?;
                            // False stops, numpy's False too; anything else continues.
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
            match t.run(until, &mut on) {
                Ok(()) => Ok(t.step()),
                Err(_) if stopped.load(Ordering::Relaxed) => Ok(t.step()),
                Err(e) => Err(to_py(e)),
            }
        })
    }

    /// Returns of ``episodes`` evaluation episodes (planner in eval mode, no exploration
    /// noise) on the evaluation environment, episode seeds drawn from ``seed``.
    #[pyo3(signature = (episodes=10, seed=0))]
    fn evaluate(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::errors::uint_usize)] episodes: usize,
        #[pyo3(from_py_with = crate::errors::uint_u64)] seed: u64,
    ) -> PyResult<Vec<f32>> {
        self.with(py, |t| py_result(t.evaluate(episodes, seed)))
    }

    /// Write a checkpoint (safetensors: weights under TD-MPC2's names, optimizer state,
    /// replay buffer, history), replaced atomically. ``Trainer.resume`` continues from it and
    /// ``WorldModel.load`` reads its weights.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        self.with(py, |t| py_result(t.save(&path)))
    }

    /// The current weights as a ``WorldModel`` on the same Gpu (for a ``Planner``).
    fn world_model(&self, py: Python<'_>) -> PyResult<WorldModel> {
        let w = self.with(py, |t| py_result(t.weights()))?;
        WorldModel::from_weights(py, self.gpu.clone_ref(py), w)
    }

    /// Environment steps taken.
    #[getter]
    fn step(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |t| Ok(t.step()))
    }

    /// Updates run.
    #[getter]
    fn updates(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |t| Ok(t.updates()))
    }

    /// Training and evaluation returns so far: a dict of lists ``step``, ``eval`` (bool) and
    /// ``return``.
    #[getter]
    fn history<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.with(py, |t| Ok(t.history().to_vec()))?;
        let d = PyDict::new(py);
        d.set_item("step", h.iter().map(|r| r.step).collect::<Vec<_>>())?;
        d.set_item("eval", h.iter().map(|r| r.eval).collect::<Vec<_>>())?;
        d.set_item("return", h.iter().map(|r| r.ret).collect::<Vec<_>>())?;
        Ok(d)
    }

    /// The settings: method, model, steps, seed, the ``config`` keywords and ``planner``.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.cfg;
        let d = PyDict::new(py);
        d.set_item("env", &self.env_name)?;
        d.set_item("method", c.method.slug())?;
        d.set_item("model", format!("{:?}", c.model))?;
        d.set_item("steps", c.steps)?;
        d.set_item("seed", c.seed)?;
        d.set_item("seed_steps", c.seed_steps)?;
        d.set_item("batch", c.batch)?;
        d.set_item("buffer_capacity", c.buffer_capacity)?;
        d.set_item("eval_every", c.eval_every)?;
        d.set_item("eval_episodes", c.eval_episodes)?;
        d.set_item("log_every", c.log_every)?;
        d.set_item("pretrain_policy", c.pretrain_policy)?;
        d.set_item("planner_precision", c.planner_precision.name())?;
        d.set_item("tensor_core_updates", c.update.tensor_cores)?;
        d.set_item("planner", planner_config_dict(py, &c.planner)?)?;
        Ok(d)
    }

    /// The Gpu it trains on.
    #[getter]
    fn gpu(&self, py: Python<'_>) -> Py<Gpu> {
        self.gpu.clone_ref(py)
    }

    fn __repr__(&self) -> String {
        format!(
            "pompc.Trainer(env={:?}, method={:?}, model={:?}, seed={})",
            self.env_name,
            self.cfg.method.label(),
            self.cfg.model,
            self.cfg.seed
        )
    }
}
