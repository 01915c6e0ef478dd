//! The host-side training loop of `../shared/docs/algorithm.md` a.5: act with the planner,
//! store (observation, action, reward, planner Gaussian), and after a seed phase of random
//! actions and as many pre-training updates, run one world-model update and one policy update
//! per environment step, all recorded into one submit that also copies the new parameters into
//! the planner's model. Evaluation episodes, BMPC's lazy reanalysis, and checkpoints that
//! resume a run are part of it.
//!
//! ```no_run
//! # fn main() -> pompc::Result<()> {
//! use pompc::train::{Event, Method, TrainConfig, Trainer};
//! let gpu = pompc::Gpu::new(Default::default())?;
//! let env = pompc::env::make("pendulum-swingup")?;
//! let cfg = TrainConfig::new(env.as_ref(), Method::Pompc { lambda: 1.0 }, 100_000, 0)?;
//! let eval_env = pompc::env::make("pendulum-swingup")?;
//! let mut trainer = Trainer::new(&gpu, env, eval_env, cfg)?;
//! trainer.run(100_000, &mut |e: &Event| {
//!     if let Event::Episode { step, ret, .. } = e {
//!         println!("step {step}: return {ret:.1}");
//!     }
//!     Ok(())
//! })?;
//! trainer.save("pendulum.ckpt.safetensors")?;
//! # Ok(()) }
//! ```
//!
//! Differences from the reference implementations, stated: the planner's policy proposals use
//! TD-MPC2's squashed Gaussian for every method (BMPC samples `clamp(tanh(mu) + sigma eps)`;
//! the means agree, the proposal noise differs); the stored planner Gaussian is the MPPI mean
//! and std of the first step (BMPC stores the chosen elite's first action as the mean); the
//! critic is TD-MPC2's Q ensemble for every method (BMPC's default is a V ensemble); the
//! KL-regularized critic target (lambda_Q) is not driven by the loop.

use super::buffer::{BufferData, ReplayBuffer};
use super::params::ParamLayout;
use super::policy::{PolicyLosses, PolicyTrainer, PolicyUpdateConfig, PriorKind};
use super::world::{UpdateConfig, UpdateLosses, WorldModelTrainer};
use crate::env::Env;
use crate::gpu::{BindCache, Encoded, Gpu, GpuBuffer, PendingReadback, ReadbackHandle, Recorder};
use crate::kernels::optim::{Adam, AdamState, STATE_WORDS};
use crate::model::{ModelSpec, Net, Weights, WorldModel};
use crate::planner::{PlanMode, Planner, PlannerConfig};
use crate::{Error, Result};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;

/// Which member of the PO-MPC family trains the policy (`../shared/docs/algorithm.md` a.4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// TD-MPC2 (lambda = 0): maximize Q with an entropy bonus.
    Tdmpc2,
    /// BMPC (lambda -> infinity): imitate the planner by KL, lazy reanalysis on.
    Bmpc,
    /// TD-M(PC)²: TD-MPC2 plus the planner log-likelihood of the policy sample.
    TdmpcSquare,
    /// PO-MPC: Q against lambda times the KL to an adaptive prior fitted to the planner.
    Pompc {
        /// KL strength lambda (the paper's grid: 0.1, 1, 9).
        lambda: f32,
    },
}

impl Method {
    /// Names accepted by [`Method::parse`].
    pub const NAMES: [&'static str; 4] = ["tdmpc2", "bmpc", "tdmpc-square", "po-mpc"];

    /// Parse a method name (`tdmpc2`, `bmpc`, `tdmpc-square`, `po-mpc`; case and the
    /// punctuation of `TD-MPC2`, `TD-M(PC)2`, `PO-MPC` are ignored); `lambda` is PO-MPC's
    /// (default 1) and an error for the others.
    pub fn parse(name: &str, lambda: Option<f32>) -> Result<Method> {
        let lower = name.to_lowercase();
        // TD-M(PC)² and TD-MPC2 differ only in punctuation: the parentheses or the square
        // mark decide before the punctuation is dropped.
        let square = lower.contains("(pc)") || lower.contains('²') || lower.contains("square");
        let key: String = lower
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        let m = match key.as_str() {
            _ if square && key.starts_with("tdm") => Method::TdmpcSquare,
            "tdmpc2" => Method::Tdmpc2,
            "bmpc" => Method::Bmpc,
            "pompc" => Method::Pompc {
                lambda: lambda.unwrap_or(1.0),
            },
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown method {name:?}; known: {}",
                    Method::NAMES.join(", ")
                )));
            }
        };
        if let Some(l) = lambda {
            if !matches!(m, Method::Pompc { .. }) {
                return Err(Error::InvalidArgument(format!(
                    "--lambda {l} applies to po-mpc only ({name} fixes its own)"
                )));
            }
            if !l.is_finite() || l < 0.0 {
                return Err(Error::InvalidArgument(format!("lambda {l}: finite, >= 0")));
            }
        }
        Ok(m)
    }

    /// Display name, e.g. `PO-MPC (lambda 1)`.
    pub fn label(&self) -> String {
        match self {
            Method::Tdmpc2 => "TD-MPC2".into(),
            Method::Bmpc => "BMPC".into(),
            Method::TdmpcSquare => "TD-M(PC)²".into(),
            Method::Pompc { lambda } => format!("PO-MPC (lambda {lambda})"),
        }
    }

    /// File-name form, e.g. `po-mpc-l1`.
    pub fn slug(&self) -> String {
        match self {
            Method::Tdmpc2 => "tdmpc2".into(),
            Method::Bmpc => "bmpc".into(),
            Method::TdmpcSquare => "tdmpc-square".into(),
            Method::Pompc { lambda } => format!("po-mpc-l{lambda}"),
        }
    }

    /// The policy update of this method ([`PolicyUpdateConfig`]'s presets).
    pub fn policy_config(&self, action_dim: usize) -> PolicyUpdateConfig {
        match *self {
            Method::Tdmpc2 => PolicyUpdateConfig::tdmpc2(action_dim),
            Method::Bmpc => PolicyUpdateConfig::bmpc(action_dim),
            Method::TdmpcSquare => PolicyUpdateConfig::tdmpc_square(action_dim),
            Method::Pompc { lambda } => PolicyUpdateConfig::pompc(action_dim, lambda),
        }
    }
}

/// Model sizes for training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelPreset {
    /// Latent 32, hidden 64, encoder 32, 2 Q heads: CPU adapters and tests.
    Tiny,
    /// Latent 128, hidden 256, encoder 128, 5 Q heads: fast runs on a GPU.
    Small,
    /// TD-MPC2's presets by parameter count in millions: 1, 5, 19, 48, 317.
    Tdmpc2(u32),
}

impl ModelPreset {
    /// Parse `tiny`, `small` or a TD-MPC2 size (`1`, `5`, `19`, `48`, `317`, optionally
    /// followed by `m`).
    pub fn parse(s: &str) -> Result<ModelPreset> {
        let k = s.trim().to_ascii_lowercase();
        match k.as_str() {
            "tiny" => Ok(ModelPreset::Tiny),
            "small" => Ok(ModelPreset::Small),
            _ => k
                .trim_end_matches('m')
                .parse::<u32>()
                .map(ModelPreset::Tdmpc2)
                .map_err(|_| {
                    Error::InvalidArgument(format!(
                        "model {s:?}: tiny, small, or a TD-MPC2 size (1, 5, 19, 48, 317)"
                    ))
                }),
        }
    }

    /// The model for `obs_dim` observations and `action_dim` actions.
    pub fn spec(&self, obs_dim: usize, action_dim: usize) -> Result<ModelSpec> {
        let base = ModelSpec::tdmpc2(1, obs_dim, action_dim)?;
        let spec = match *self {
            ModelPreset::Tiny => ModelSpec {
                latent_dim: 32,
                mlp_dim: 64,
                enc_dim: 32,
                num_q: 2,
                ..base
            },
            ModelPreset::Small => ModelSpec {
                latent_dim: 128,
                mlp_dim: 256,
                enc_dim: 128,
                num_q: 5,
                ..base
            },
            ModelPreset::Tdmpc2(size) => ModelSpec::tdmpc2(size, obs_dim, action_dim)?,
        };
        spec.validate()?;
        Ok(spec)
    }

    fn name(&self) -> String {
        match self {
            ModelPreset::Tiny => "tiny".into(),
            ModelPreset::Small => "small".into(),
            ModelPreset::Tdmpc2(s) => format!("{s}"),
        }
    }
}

/// BMPC's lazy reanalysis: every `interval` updates, re-plan the first `sequences`
/// sub-trajectories' first T states in one batched plan, write the fresh planner Gaussians
/// back into the replay buffer and use them in that update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reanalyze {
    /// Updates between reanalyses (BMPC: 10).
    pub interval: usize,
    /// Sub-trajectories re-planned (BMPC: 20, i.e. 60 states with T = 3).
    pub sequences: usize,
}

/// Everything a training run needs. [`TrainConfig::new`] gives the papers' defaults,
/// [`TrainConfig::quick`] a small setting that learns on a CPU adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// The policy update's family member.
    pub method: Method,
    /// Model size.
    pub model: ModelPreset,
    /// Environment (agent) steps to train for.
    pub steps: usize,
    /// Seed of the model's initialization, the environment's episodes and every random draw.
    pub seed: u64,
    /// Random-action steps before learning starts, followed by as many pre-training updates
    /// (TD-MPC2: max(1000, 5 x episode length) = 2500 on DMC).
    pub seed_steps: usize,
    /// Sub-trajectories per update (256).
    pub batch: usize,
    /// Replay capacity in transitions (1M).
    pub buffer_capacity: usize,
    /// The acting planner (train mode); evaluation uses the same settings in eval mode.
    pub planner: PlannerConfig,
    /// The world-model and critic update.
    pub update: UpdateConfig,
    /// The policy update.
    pub policy: PolicyUpdateConfig,
    /// Whether the policy is updated during pre-training (BMPC: no).
    pub pretrain_policy: bool,
    /// BMPC's lazy reanalysis (on for BMPC by default).
    pub reanalyze: Option<Reanalyze>,
    /// Steps between evaluations (0: none); evaluations run at the first episode boundary at
    /// or after each multiple, and once at step 0.
    pub eval_every: usize,
    /// Episodes per evaluation.
    pub eval_episodes: usize,
    /// Updates between read-backs of the losses (the rest run without waiting for the GPU).
    pub log_every: usize,
    /// Precision of the planner's copy of the model ([`crate::Precision::F32`]). At
    /// [`crate::Precision::F16`] or [`crate::Precision::TensorCore`] its weights are rounded to
    /// f16 as they are copied from the trainer's f32 parameters after each update; the trainer
    /// itself stays f32.
    pub planner_precision: crate::Precision,
}

impl TrainConfig {
    /// The papers' settings for `env`: the 5M model, TD-MPC2's planner and update (b.1), the
    /// method's policy update, discount from the episode length, seed steps max(1000, 5 x
    /// episode length), BMPC's reanalysis for BMPC, an evaluation of 1 episode every 10 000
    /// steps.
    pub fn new(env: &dyn Env, method: Method, steps: usize, seed: u64) -> Result<TrainConfig> {
        let a = env.action_dim();
        let discount = PlannerConfig::discount_for_episode(env.episode_len());
        let mut planner = PlannerConfig::tdmpc2(a);
        planner.discount = discount;
        planner.seed = seed;
        let mut update = UpdateConfig::tdmpc2();
        update.discount = discount;
        update.seed = seed;
        let mut policy = method.policy_config(a);
        policy.seed = seed;
        Ok(TrainConfig {
            method,
            model: ModelPreset::Tdmpc2(5),
            steps,
            seed,
            seed_steps: 1000.max(5 * env.episode_len()),
            batch: 256,
            buffer_capacity: 1_000_000,
            planner,
            update,
            policy,
            pretrain_policy: method != Method::Bmpc,
            reanalyze: (method == Method::Bmpc).then_some(Reanalyze {
                interval: 10,
                sequences: 20,
            }),
            eval_every: 10_000,
            eval_episodes: 1,
            log_every: 100,
            planner_precision: crate::Precision::F32,
        })
    }

    /// A setting sized for CPU adapters such as lavapipe (about 0.27 s per step there: plan
    /// 0.12 s, update 0.15 s, 2 cores): the tiny model, 64 samples with 8 elites and 4 policy
    /// trajectories over 3 iterations, batches of 32, one episode of seed steps, evaluation
    /// every 2 episodes.
    pub fn quick(env: &dyn Env, method: Method, steps: usize, seed: u64) -> Result<TrainConfig> {
        let mut c = TrainConfig::new(env, method, steps, seed)?;
        c.model = ModelPreset::Tiny;
        c.planner.num_samples = 64;
        c.planner.num_elites = 8;
        c.planner.num_pi_trajs = 4;
        c.planner.iterations = 3;
        c.batch = 32;
        c.seed_steps = env.episode_len();
        c.eval_every = 2 * env.episode_len();
        Ok(c)
    }

    fn check(&self, env: &dyn Env) -> Result<()> {
        self.planner.validate()?;
        super::check_batch(self.batch)?;
        if self.eval_episodes == 0 && self.eval_every > 0 {
            return Err(Error::InvalidArgument(
                "training needs eval_episodes >= 1 when evaluating (eval_every > 0)".into(),
            ));
        }
        if self.eval_episodes > MAX_EVAL_EPISODES {
            return Err(Error::InvalidArgument(format!(
                "{} evaluation episodes, at most {MAX_EVAL_EPISODES}",
                self.eval_episodes
            )));
        }
        if self.steps > MAX_STEPS {
            return Err(Error::InvalidArgument(format!(
                "{} steps, at most {MAX_STEPS} (checkpoints count steps in 32 bits)",
                self.steps
            )));
        }
        if self.seed_steps < env.episode_len() {
            return Err(Error::InvalidArgument(format!(
                "seed_steps {} is shorter than one episode ({}): the first update would find \
                 no finished episode to sample",
                self.seed_steps,
                env.episode_len()
            )));
        }
        if self.update.lambda_q != 0.0 {
            return Err(Error::InvalidArgument(
                "the training loop does not drive the KL-regularized critic target; \
                 set update.lambda_q = 0"
                    .into(),
            ));
        }
        if self.policy.states > self.update.horizon + 1 {
            return Err(Error::InvalidArgument(format!(
                "policy update over {} states, the rollout has {}",
                self.policy.states,
                self.update.horizon + 1
            )));
        }
        if self.policy.prior != PriorKind::None && self.policy.states > self.update.horizon {
            return Err(Error::InvalidArgument(format!(
                "the planner prior exists for {} steps of each sub-trajectory, the policy \
                 update asks for {}",
                self.update.horizon, self.policy.states
            )));
        }
        if let Some(r) = self.reanalyze
            && (r.interval == 0 || r.sequences == 0 || r.sequences > self.batch)
        {
            return Err(Error::InvalidArgument(format!(
                "reanalysis every {} updates of {} sequences (batch {}): both >= 1, \
                 sequences <= batch",
                r.interval, r.sequences, self.batch
            )));
        }
        Ok(())
    }
}

/// What [`Trainer::run`] reports as it goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A training episode ended.
    Episode {
        /// Environment steps so far.
        step: usize,
        /// Episodes so far.
        episode: usize,
        /// Its return.
        ret: f32,
    },
    /// An evaluation (planner in eval mode, no exploration noise) ended.
    Eval {
        /// Environment steps so far.
        step: usize,
        /// Mean return.
        mean: f32,
        /// Each episode's return.
        returns: Vec<f32>,
    },
    /// Losses read back after an update.
    Losses {
        /// Environment steps so far.
        step: usize,
        /// Updates so far.
        updates: usize,
        /// The world-model update's.
        world: UpdateLosses,
        /// The policy update's (`None` when it did not run).
        policy: Option<PolicyLosses>,
    },
    /// Pre-training under way: `updates` of its `total` done (every
    /// [`PRETRAIN_REPORT_EVERY`] updates). A handler's error stops the run here: its
    /// checkpoint holds the pre-training's progress, and a resumed run finishes it first.
    Pretraining {
        /// Environment steps so far (the end of the seed phase).
        step: usize,
        /// Pre-training updates done.
        updates: usize,
        /// Pre-training updates in all.
        total: usize,
    },
    /// The pre-training updates at the end of the seed phase are done.
    Pretrained {
        /// Updates run.
        updates: usize,
        /// Their wall time in seconds.
        seconds: f64,
    },
}

/// One row of a run's history: a training or evaluation return at a step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HistoryRow {
    /// Environment steps.
    pub step: usize,
    /// Evaluation (mean over its episodes) or training episode.
    pub eval: bool,
    /// The return.
    pub ret: f32,
}

/// Counters of a run.
#[derive(Clone, Debug, Default)]
struct Progress {
    step: usize,
    episodes: usize,
    updates: usize,
    next_eval: usize,
    obs: Vec<f32>,
    ret: f32,
    first: bool,
    in_episode: bool,
}

/// The parts that change with every update, apart from the planner's model (so that a
/// planner can borrow the model while these are mutated).
struct Learner<'g> {
    gpu: &'g Gpu,
    layout: ParamLayout,
    buffer: ReplayBuffer,
    world: WorldModelTrainer<'g>,
    policy: PolicyTrainer<'g>,
    rng: rand::rngs::StdRng,
    // Updates record the same dispatches on the same buffers.
    binds: BindCache,
}

/// A training run: environment, replay buffer, the world-model and policy trainers, and the
/// planner's copy of the model.
pub struct Trainer<'g> {
    gpu: &'g Gpu,
    cfg: TrainConfig,
    env: Box<dyn Env>,
    eval_env: Box<dyn Env>,
    model: WorldModel,
    learner: Learner<'g>,
    progress: Progress,
    history: Vec<HistoryRow>,
}

// Mixes a run's seed with a purpose and a step into an independent seed.
fn mix(seed: u64, purpose: u64, step: u64) -> u64 {
    let mut z = seed
        ^ purpose.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ step.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Pre-training reports its progress ([`Event::Pretraining`]) every this many updates.
pub const PRETRAIN_REPORT_EVERY: usize = 50;

const SEED_ENV: u64 = 1;
const SEED_EVAL: u64 = 2;
const SEED_ACT: u64 = 3;
const SEED_SAMPLE: u64 = 4;
const SEED_STREAMS: u64 = 5;
const SEED_EVAL_PLAN: u64 = 6;

impl<'g> Trainer<'g> {
    /// A fresh run on `env` with a freshly initialized model; evaluation episodes run on
    /// `eval_env`, a second instance of the same task (e.g. `pompc::env::make` twice).
    pub fn new(
        gpu: &'g Gpu,
        env: Box<dyn Env>,
        eval_env: Box<dyn Env>,
        cfg: TrainConfig,
    ) -> Result<Self> {
        let spec = cfg.model.spec(env.obs_dim(), env.action_dim())?;
        let weights = Weights::init(&spec, cfg.seed)?;
        Self::build(gpu, env, eval_env, cfg, &weights, 0)
    }

    fn build(
        gpu: &'g Gpu,
        env: Box<dyn Env>,
        eval_env: Box<dyn Env>,
        mut cfg: TrainConfig,
        weights: &Weights,
        start_step: usize,
    ) -> Result<Self> {
        cfg.check(env.as_ref())?;
        let spec = &weights.spec;
        for e in [&env, &eval_env] {
            if spec.obs_dim != e.obs_dim() || spec.action_dim != e.action_dim() {
                return Err(Error::Shape(format!(
                    "model for {} observations and {} actions, {} has {} and {}",
                    spec.obs_dim,
                    spec.action_dim,
                    e.name(),
                    e.obs_dim(),
                    e.action_dim()
                )));
            }
        }
        // A resumed run draws fresh random streams rather than repeating the first ones.
        let streams = mix(cfg.seed, SEED_STREAMS, start_step as u64);
        cfg.update.seed = streams;
        cfg.policy.seed = streams ^ 1;
        cfg.planner.seed = streams ^ 2;
        let world = WorldModelTrainer::new(gpu, weights, cfg.update.clone(), cfg.batch)?;
        let policy = PolicyTrainer::new(gpu, spec, cfg.policy.clone(), cfg.batch)?;
        let buffer = ReplayBuffer::new(env.obs_dim(), env.action_dim(), cfg.buffer_capacity)?;
        // The planner's copy is refreshed from the trainer's f32 parameters by GPU copies (and
        // f16 conversions).
        gpu.supports(cfg.planner_precision)?;
        let model = WorldModel::with_precision(gpu, weights, cfg.planner_precision)?;
        Ok(Trainer {
            gpu,
            learner: Learner {
                gpu,
                layout: ParamLayout::new(spec),
                buffer,
                world,
                policy,
                binds: BindCache::new(),
                rng: rand::rngs::StdRng::seed_from_u64(mix(
                    cfg.seed,
                    SEED_SAMPLE,
                    start_step as u64,
                )),
            },
            progress: Progress {
                step: start_step,
                next_eval: if cfg.eval_every > 0 {
                    start_step
                } else {
                    usize::MAX
                },
                ..Default::default()
            },
            history: Vec::new(),
            model,
            env,
            eval_env,
            cfg,
        })
    }

    /// The device it trains on.
    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Environment steps taken.
    pub fn step(&self) -> usize {
        self.progress.step
    }

    /// Updates run.
    pub fn updates(&self) -> usize {
        self.progress.updates
    }

    /// Training and evaluation returns so far (including a resumed run's).
    pub fn history(&self) -> &[HistoryRow] {
        &self.history
    }

    /// The learning curve so far: training episodes (faint) and evaluations.
    pub fn curve(&self, title: &str) -> crate::plot::Chart {
        let mut chart = crate::plot::Chart::new(title, "environment steps", "episode return");
        let pts = |eval: bool| {
            self.history
                .iter()
                .filter(|r| r.eval == eval)
                .map(|r| (r.step as f64, r.ret as f64))
                .collect::<Vec<_>>()
        };
        chart.add(crate::plot::Series::line("training episodes", pts(false)).faint());
        chart.add(crate::plot::Series::line("evaluation", pts(true)));
        chart
    }

    /// The replay buffer.
    pub fn buffer(&self) -> &ReplayBuffer {
        &self.learner.buffer
    }

    /// The world-model trainer (parameters, optimizer).
    pub fn world(&self) -> &WorldModelTrainer<'g> {
        &self.learner.world
    }

    /// The policy trainer (optimizers, adaptive prior, running scales).
    pub fn policy(&self) -> &PolicyTrainer<'g> {
        &self.learner.policy
    }

    /// The current weights (downloaded).
    pub fn weights(&self) -> Result<Weights> {
        self.learner.world.weights()
    }

    /// Run until `until` environment steps (at most [`TrainConfig::steps`]), reporting to
    /// `on` (whose error stops the run).
    pub fn run(&mut self, until: usize, on: &mut dyn FnMut(&Event) -> Result<()>) -> Result<()> {
        let mut run = AgentRun::new(self, until)?;
        let mut planner = Planner::new(run.gpu, run.model, run.cfg.planner.clone())?;
        while let Some(plans) = run.begin_step(on)? {
            if !plans {
                let action = run.random_action();
                run.finish_step(action, None, None, on)?;
                continue;
            }
            // Every planning step is followed by one update. It is recorded while the GPU
            // plans and submitted behind the plan before the plan is read, so the GPU goes
            // from one to the other while the host reads the plan and steps the environment;
            // its batch comes from the finished episodes, which this step's transition does
            // not change.
            let pending = planner.plan_submit(&run.p.obs, &[run.p.first])?;
            let update = run.prepare_update()?;
            let update = run.learner.submit(update)?;
            let plan = pending.wait()?;
            let losses = run.learner.finish(update)?;
            run.p.updates += 1;
            let mut g = plan.mean.clone();
            g.extend_from_slice(&plan.std);
            run.finish_step(plan.action, Some(g), losses, on)?;
        }
        run.end(on)
    }

    /// Mean return of `episodes` evaluation episodes (planner in eval mode) on the evaluation
    /// environment, with episode seeds drawn from `seed`; at most [`MAX_EVAL_EPISODES`].
    pub fn evaluate(&mut self, episodes: usize, seed: u64) -> Result<Vec<f32>> {
        if episodes > MAX_EVAL_EPISODES {
            return Err(Error::InvalidArgument(format!(
                "{episodes} evaluation episodes, at most {MAX_EVAL_EPISODES}"
            )));
        }
        let mut planner = eval_planner(
            self.gpu,
            &self.model,
            &self.cfg.planner,
            &[self.cfg.planner.seed],
        )?;
        let mut r = evaluate(
            &mut [self.eval_env.as_mut()],
            &mut planner,
            &[episodes],
            &[seed],
        )?;
        Ok(r.pop().expect("one agent"))
    }

    /// Write a checkpoint (safetensors): the model and its target Q heads under TD-MPC2's
    /// names (so `Weights::load` reads it), both optimizers' moments and step counters, the
    /// adaptive prior, the running scales, the replay buffer, the history and the counters.
    /// An unfinished episode is not saved: a resumed run starts a new one (its transitions
    /// were already counted as steps).
    ///
    /// Every tensor is checked as [`Trainer::resume`] checks it before anything is written
    /// (a run whose parameters or optimizer state went non-finite is refused with an error
    /// naming the tensor), and the file is replaced atomically ([`crate::fs::write_atomic`]):
    /// a failed save keeps the previous checkpoint and leaves no temporary file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let gpu = self.gpu;
        let l = &self.learner;
        let file = path.as_ref().display().to_string();
        let refuse = |e: Error| match e {
            Error::InvalidArgument(m) | Error::Weights(m) => Error::InvalidArgument(format!(
                "not writing checkpoint {file}: {m} (the previous file, if any, is kept)"
            )),
            e => e,
        };
        let weights = l.world.weights()?;
        weights.check().map_err(refuse)?;
        let mut t = Tensors::default();
        for (name, tensor) in weights.tensors.iter().chain(weights.extra.iter()) {
            t.f32(name, tensor.shape.clone(), tensor.data.clone());
        }
        let pi = l.layout.net(Net::Policy);
        let p = &self.progress;
        let updates = p.updates;
        let save_adam =
            |t: &mut Tensors, prefix: &str, adam: &Adam, range: std::ops::Range<usize>| {
                let len = range.len();
                let (m, v, state) = download_adam(gpu, adam, range)?;
                let state = check_adam(prefix, len, &m, &v, state, updates)?;
                t.f32(&format!("{prefix}.m"), vec![m.len()], m);
                t.f32(&format!("{prefix}.v"), vec![v.len()], v);
                t.u32(&format!("{prefix}.state"), state);
                Ok::<(), Error>(())
            };
        save_adam(&mut t, "pompc.opt.world", l.world.adam(), 0..l.layout.len()).map_err(refuse)?;
        save_adam(&mut t, "pompc.opt.policy", l.policy.adam(), pi.clone()).map_err(refuse)?;
        if let (Some(pp), Some(pa)) = (l.policy.prior_params(), l.policy.prior_adam()) {
            let v = pp.download(gpu)?;
            let prior = v.get(pi.clone()).map(<[f32]>::to_vec).unwrap_or_default();
            let prior =
                check_f32("pompc.prior", prior, pi.len(), Values::Finite).map_err(refuse)?;
            t.f32("pompc.prior", vec![pi.len()], prior);
            save_adam(&mut t, "pompc.opt.prior", pa, pi.clone()).map_err(refuse)?;
        }
        let scales = l
            .policy
            .scales()
            .iter()
            .map(|s| s.read_value(gpu))
            .collect::<Result<Vec<f32>>>()?;
        let scales = check_f32("pompc.scales", scales, 3, Values::Positive).map_err(refuse)?;
        t.f32("pompc.scales", vec![3], scales);
        let b = l.buffer.export();
        let (o, a) = (self.env.obs_dim(), self.env.action_dim());
        t.f32("pompc.buffer.obs", vec![b.obs.len() / o, o], b.obs);
        t.f32("pompc.buffer.action", vec![b.action.len() / a, a], b.action);
        t.f32("pompc.buffer.reward", vec![b.reward.len()], b.reward);
        t.f32(
            "pompc.buffer.planner",
            vec![b.planner.len() / (2 * a), 2 * a],
            b.planner,
        );
        t.u32("pompc.buffer.lengths", b.lengths);
        let h = &self.history;
        let hs: Vec<u32> = h
            .iter()
            .map(|r| u32::try_from(r.step).unwrap_or(u32::MAX))
            .collect();
        let he: Vec<u32> = h.iter().map(|r| r.eval as u32).collect();
        let hr: Vec<f32> = h.iter().map(|r| r.ret).collect();
        check_history(&hs, &he, &hr, p.step, p.episodes).map_err(refuse)?;
        t.u32("pompc.history.step", hs);
        t.u32("pompc.history.eval", he);
        t.f32("pompc.history.return", vec![h.len()], hr);
        let mut meta = weights.spec.to_metadata();
        for (k, v) in [
            ("pompc.env", self.env.name().to_string()),
            ("pompc.method", self.cfg.method.slug()),
            ("pompc.model", self.cfg.model.name()),
            ("pompc.seed", self.cfg.seed.to_string()),
            ("pompc.step", p.step.to_string()),
            ("pompc.episodes", p.episodes.to_string()),
            ("pompc.updates", p.updates.to_string()),
            ("pompc.next_eval", p.next_eval.to_string()),
        ] {
            meta.insert(k.into(), v);
        }
        t.write(path.as_ref(), meta)
    }

    /// Resume the run saved at `path` with `cfg` (which must name the same method, model and
    /// seed; the step budget and the other settings may change) on `env` and `eval_env` (the
    /// same task).
    pub fn resume(
        gpu: &'g Gpu,
        env: Box<dyn Env>,
        eval_env: Box<dyn Env>,
        cfg: TrainConfig,
        path: impl AsRef<Path>,
    ) -> Result<Self> {
        let path = path.as_ref();
        let file = path.display().to_string();
        // Every message names the file.
        let named = |e: Error| match e {
            Error::InvalidArgument(m) | Error::Weights(m) | Error::Shape(m) => {
                Error::InvalidArgument(format!("checkpoint {file}: {m}"))
            }
            e => e,
        };
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: file.clone(),
            source,
        })?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::InvalidArgument(format!("checkpoint {}: {e}", path.display())))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::InvalidArgument(format!("checkpoint {}: {e}", path.display())))?;
        let meta: HashMap<String, String> = header.metadata().clone().unwrap_or_default();
        let want = |k: &str, v: String| -> Result<()> {
            match meta.get(k) {
                Some(m) if *m == v => Ok(()),
                other => Err(Error::InvalidArgument(format!(
                    "checkpoint {} has {k} = {other:?}, this run {v:?}",
                    path.display()
                ))),
            }
        };
        want("pompc.env", env.name().to_string())?;
        want("pompc.method", cfg.method.slug())?;
        want("pompc.model", cfg.model.name())?;
        want("pompc.seed", cfg.seed.to_string())?;
        let num = |k: &str| -> Result<usize> {
            meta.get(k).and_then(|v| v.parse().ok()).ok_or_else(|| {
                Error::InvalidArgument(format!("checkpoint {}: no {k}", path.display()))
            })
        };
        let spec = cfg.model.spec(env.obs_dim(), env.action_dim())?;
        let weights = Weights::from_bytes_with_spec(&bytes, &spec).map_err(named)?;
        let step = num("pompc.step")?;
        let episodes = num("pompc.episodes")?;
        let updates = num("pompc.updates")?;
        let next_eval = num("pompc.next_eval")?;
        if step > MAX_STEPS || episodes > step || updates > MAX_STEPS {
            return Err(named(Error::InvalidArgument(format!(
                "counters pompc.step = {step}, pompc.episodes = {episodes}, pompc.updates = \
                 {updates}: need episodes <= step <= {MAX_STEPS} and updates <= {MAX_STEPS}"
            ))));
        }
        // Everything is read and checked before the run is built: a checkpoint is taken
        // whole or not at all.
        let layout = ParamLayout::new(&spec);
        let pi = layout.net(Net::Policy);
        let adam = |prefix: &str, len: usize| -> Result<(Vec<f32>, Vec<f32>, Vec<u32>)> {
            let m = read_f32(&st, &format!("{prefix}.m"))?;
            let v = read_f32(&st, &format!("{prefix}.v"))?;
            let state = read_u32(&st, &format!("{prefix}.state"))?;
            let state = check_adam(prefix, len, &m, &v, state, updates)?;
            Ok((m, v, state))
        };
        let world_adam = adam("pompc.opt.world", layout.len()).map_err(named)?;
        let policy_adam = adam("pompc.opt.policy", pi.len()).map_err(named)?;
        let prior = if cfg.policy.prior == PriorKind::Adaptive {
            let p = read_f32(&st, "pompc.prior")
                .and_then(|p| check_f32("pompc.prior", p, pi.len(), Values::Finite))
                .map_err(named)?;
            Some((p, adam("pompc.opt.prior", pi.len()).map_err(named)?))
        } else {
            None
        };
        let scales = read_f32(&st, "pompc.scales")
            .and_then(|s| check_f32("pompc.scales", s, 3, Values::Positive))
            .map_err(named)?;
        let hs = read_u32(&st, "pompc.history.step").map_err(named)?;
        let he = read_u32(&st, "pompc.history.eval").map_err(named)?;
        let hr = read_f32(&st, "pompc.history.return").map_err(named)?;
        check_history(&hs, &he, &hr, step, episodes).map_err(named)?;
        let buffer = BufferData {
            obs: read_f32(&st, "pompc.buffer.obs").map_err(named)?,
            action: read_f32(&st, "pompc.buffer.action").map_err(named)?,
            reward: read_f32(&st, "pompc.buffer.reward").map_err(named)?,
            planner: read_f32(&st, "pompc.buffer.planner").map_err(named)?,
            lengths: read_u32(&st, "pompc.buffer.lengths").map_err(named)?,
        };
        let mut tr = Self::build(gpu, env, eval_env, cfg, &weights, step)?;
        let gpu = tr.gpu;
        let l = &mut tr.learner;
        l.buffer.import(&buffer).map_err(|e| match e {
            Error::InvalidArgument(m) | Error::Shape(m) => {
                Error::InvalidArgument(format!("checkpoint {file}: tensors pompc.buffer.*: {m}"))
            }
            e => e,
        })?;
        load_adam(gpu, l.world.adam(), 0, world_adam)?;
        load_adam(gpu, l.policy.adam(), pi.start, policy_adam)?;
        match (prior, l.policy.prior_params(), l.policy.prior_adam()) {
            (Some((p, pa_state)), Some(pp), Some(pa)) => {
                pp.upload_at(gpu, pi.start, &p)?;
                load_adam(gpu, pa, pi.start, pa_state)?;
            }
            (None, None, None) => {}
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "checkpoint {file}: the adaptive prior does not match this run's policy \
                     update"
                )));
            }
        }
        for (s, v) in l.policy.scales().iter().zip(&scales) {
            s.set_value(gpu, *v)?;
        }
        tr.history = hs
            .iter()
            .zip(&he)
            .zip(&hr)
            .map(|((&s, &e), &r)| HistoryRow {
                step: s as usize,
                eval: e != 0,
                ret: r,
            })
            .collect();
        tr.progress.episodes = episodes;
        tr.progress.updates = updates;
        tr.progress.next_eval = next_eval;
        if tr.cfg.eval_every == 0 {
            tr.progress.next_eval = usize::MAX;
        }
        Ok(tr)
    }
}

/// One [`Trainer::run`] in progress: the trainer's parts borrowed apart (the planners borrow
/// its model while the learner, environment and counters change) and what the run keeps
/// between steps. A population that shares its plan steps drives several of these in lock
/// step; a trainer alone drives one.
struct AgentRun<'a, 'g> {
    gpu: &'g Gpu,
    cfg: TrainConfig,
    until: usize,
    env: &'a mut dyn Env,
    model: &'a WorldModel,
    learner: &'a mut Learner<'g>,
    p: &'a mut Progress,
    history: &'a mut Vec<HistoryRow>,
    act_rng: rand::rngs::StdRng,
    eval_env: &'a mut dyn Env,
    re_planner: Option<Planner<'a>>,
    // The updates went to a population's model since the own model was last refreshed: it
    // gets the parameters before it evaluates or reanalyses.
    stale: bool,
}

impl<'a, 'g> AgentRun<'a, 'g> {
    fn new(t: &'a mut Trainer<'g>, until: usize) -> Result<Self> {
        let gpu = t.gpu;
        let cfg = t.cfg.clone();
        let model = &t.model;
        let re_planner = match cfg.reanalyze {
            Some(_) => Some(Planner::new(gpu, model, cfg.planner.clone())?),
            None => None,
        };
        let act_rng =
            rand::rngs::StdRng::seed_from_u64(mix(cfg.seed, SEED_ACT, t.progress.step as u64));
        Ok(AgentRun {
            gpu,
            until: until.min(cfg.steps),
            cfg,
            env: t.env.as_mut(),
            model,
            learner: &mut t.learner,
            p: &mut t.progress,
            history: &mut t.history,
            act_rng,
            eval_env: t.eval_env.as_mut(),
            re_planner,
            stale: false,
        })
    }

    /// Start a step: evaluate when due, start an episode when none runs. `None` when the run
    /// is done; else whether this step plans (after the seed phase) or acts at random.
    fn begin_step(&mut self, on: &mut dyn FnMut(&Event) -> Result<()>) -> Result<Option<bool>> {
        // Before the budget's check: a run whose last step ends the seed phase pre-trains
        // before its final evaluation.
        if self.pretrain_pending() {
            self.pretrain(on)?;
        }
        if self.p.step >= self.until {
            return Ok(None);
        }
        if self.p.step >= self.p.next_eval && !self.p.in_episode {
            self.evaluate(on)?;
            self.evaluated();
        }
        let cfg = &self.cfg;
        let p = &mut *self.p;
        if !p.in_episode {
            p.obs = self.env.reset(mix(cfg.seed, SEED_ENV, p.episodes as u64));
            self.learner.buffer.start(&p.obs)?;
            p.in_episode = true;
            p.first = true;
            p.ret = 0.0;
        }
        Ok(Some(p.step >= cfg.seed_steps))
    }

    /// Whether the next [`AgentRun::begin_step`] evaluates.
    fn eval_due(&self) -> bool {
        self.p.step < self.until && self.p.step >= self.p.next_eval && !self.p.in_episode
    }

    /// The evaluation due at this step, with the own model.
    fn evaluate(&mut self, on: &mut dyn FnMut(&Event) -> Result<()>) -> Result<()> {
        self.refresh_model()?;
        let seeds = [eval_plan_seed(&self.cfg, self.p.step)];
        let mut planner = eval_planner(self.gpu, self.model, &self.cfg.planner, &seeds)?;
        let (seed, n) = (self.eval_seed(), self.cfg.eval_episodes);
        let returns = evaluate(&mut [&mut *self.eval_env], &mut planner, &[n], &[seed])?;
        let r = returns.into_iter().next().expect("one agent");
        self.report_eval(r, on)
    }

    /// The next evaluation is due at the next multiple of `eval_every`.
    fn evaluated(&mut self) {
        let every = self.cfg.eval_every;
        self.p.next_eval = (self.p.step / every + 1) * every;
    }

    /// What the episode resets of the evaluation at this step draw from.
    fn eval_seed(&self) -> u64 {
        mix(self.cfg.seed, SEED_EVAL, self.p.step as u64)
    }

    /// Append an evaluation's mean return to the history and report it.
    fn report_eval(
        &mut self,
        returns: Vec<f32>,
        on: &mut dyn FnMut(&Event) -> Result<()>,
    ) -> Result<()> {
        let step = self.p.step;
        let mean = returns.iter().sum::<f32>() / returns.len() as f32;
        self.history.push(HistoryRow {
            step,
            eval: true,
            ret: mean,
        });
        on(&Event::Eval {
            step,
            mean,
            returns,
        })
    }

    /// The own model gets the current parameters, if updates went elsewhere since.
    fn refresh_model(&mut self) -> Result<()> {
        if self.stale {
            let mut rec = Recorder::new(self.gpu);
            let layout = &self.learner.layout;
            let params = self.learner.world.params();
            self.model
                .record_copy_from(&mut rec, params, |n| layout.offset(n))?;
            rec.submit()?;
            self.stale = false;
        }
        Ok(())
    }

    /// A seed-phase action, uniform in [-1, 1].
    fn random_action(&mut self) -> Vec<f32> {
        let a = self.env.action_dim();
        (0..a)
            .map(|_| self.act_rng.random_range(-1.0..=1.0))
            .collect()
    }

    /// The step's update, recorded (reading its losses every `log_every` updates), its new
    /// parameters copied to the own model.
    fn prepare_update(&mut self) -> Result<PreparedUpdate<'g>> {
        let log = self.cfg.log_every > 0 && self.p.updates.is_multiple_of(self.cfg.log_every);
        self.prepare(true, log)
    }

    fn prepare(&mut self, with_policy: bool, read: bool) -> Result<PreparedUpdate<'g>> {
        let reanalyses =
            (self.cfg.reanalyze).is_some_and(|re| self.p.updates.is_multiple_of(re.interval));
        if reanalyses {
            self.refresh_model()?;
        }
        self.learner.prepare(
            (self.model, 0),
            &self.cfg,
            self.p.updates,
            with_policy,
            read,
            self.re_planner.as_mut(),
        )
    }

    /// Finish a step: act, store the transition, end the episode when done, report.
    fn finish_step(
        &mut self,
        action: Vec<f32>,
        gaussian: Option<Vec<f32>>,
        losses: Option<(UpdateLosses, PolicyLosses)>,
        on: &mut dyn FnMut(&Event) -> Result<()>,
    ) -> Result<()> {
        let (done, reported) = self.act(action, gaussian, losses, on)?;
        reported?;
        self.report(done, on)
    }

    /// Whether pre-training updates are due: the seed phase is over and its pre-training
    /// (one update per seed step) not yet done, or stopped part-way by a handler.
    fn pretrain_pending(&self) -> bool {
        self.p.step == self.cfg.seed_steps && self.p.updates < self.cfg.seed_steps
    }

    /// Run the pre-training updates still due, reporting progress every
    /// [`PRETRAIN_REPORT_EVERY`]; a handler's error stops it between two updates.
    fn pretrain(&mut self, on: &mut dyn FnMut(&Event) -> Result<()>) -> Result<()> {
        let t0 = std::time::Instant::now();
        let total = self.cfg.seed_steps;
        while self.p.updates < total {
            let update = self.prepare(self.cfg.pretrain_policy, false)?;
            self.learner.complete(update)?;
            self.p.updates += 1;
            let updates = self.p.updates;
            if updates.is_multiple_of(PRETRAIN_REPORT_EVERY) && updates < total {
                on(&Event::Pretraining {
                    step: self.p.step,
                    updates,
                    total,
                })?;
            }
        }
        on(&Event::Pretrained {
            updates: total,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// The first half of a step's end: act, store the transition, count, end the episode when
    /// done, report the step's losses. Returns whether the episode ended and what the handler
    /// said of the losses.
    fn act(
        &mut self,
        action: Vec<f32>,
        gaussian: Option<Vec<f32>>,
        losses: Option<(UpdateLosses, PolicyLosses)>,
        on: &mut dyn FnMut(&Event) -> Result<()>,
    ) -> Result<(bool, Result<()>)> {
        let s = self.env.step(&action)?;
        self.learner
            .buffer
            .push(&action, s.reward, &s.obs, gaussian.as_deref())?;
        let p = &mut *self.p;
        p.obs = s.obs;
        p.ret += s.reward;
        p.first = false;
        p.step += 1;
        if s.done {
            self.learner.buffer.finish()?;
            p.in_episode = false;
            p.episodes += 1;
            self.history.push(HistoryRow {
                step: p.step,
                eval: false,
                ret: p.ret,
            });
        }
        let reported = match losses {
            Some((world, policy)) => on(&Event::Losses {
                step: p.step,
                updates: p.updates,
                world,
                policy: Some(policy),
            }),
            None => Ok(()),
        };
        Ok((s.done, reported))
    }

    /// The second half: report the episode's end.
    fn report(&mut self, done: bool, on: &mut dyn FnMut(&Event) -> Result<()>) -> Result<()> {
        // Reported after the step's update, so that a caller stopping here loses nothing (the
        // pre-training at the end of the seed phase comes after it, at the next step's
        // start, and a resumed run does it first).
        if done {
            on(&Event::Episode {
                step: self.p.step,
                episode: self.p.episodes,
                ret: self.p.ret,
            })?;
        }
        Ok(())
    }

    /// A final evaluation when the run reaches its end on an evaluation boundary; the own
    /// model left current.
    fn end(&mut self, on: &mut dyn FnMut(&Event) -> Result<()>) -> Result<()> {
        if self.final_eval_due() {
            self.evaluate(on)?;
            self.p.next_eval = usize::MAX;
        }
        self.refresh_model()
    }

    /// Whether [`AgentRun::end`] evaluates: the run reached its end on an evaluation boundary.
    fn final_eval_due(&self) -> bool {
        let p = &*self.p;
        p.step >= p.next_eval && !p.in_episode && p.step == self.cfg.steps
    }
}

/// Why `trainers` cannot share their plan steps ([`run_shared`]), or `None` if they can: the
/// same model and planner (but for the seed), the same planner precision, at the same step
/// with the same seed phase and length, no reanalysis.
pub(crate) fn cannot_share(trainers: &[Trainer]) -> Option<String> {
    let first = trainers.first()?;
    let c0 = &first.cfg;
    let unseeded = |c: &TrainConfig| PlannerConfig {
        seed: 0,
        ..c.planner.clone()
    };
    for (i, t) in trainers.iter().enumerate() {
        let c = &t.cfg;
        let why = if t.model.spec != first.model.spec {
            "another model"
        } else if unseeded(c) != unseeded(c0) {
            "another planner"
        } else if c.planner_precision != c0.planner_precision {
            "another planner precision"
        } else if c.seed_steps != c0.seed_steps || c.steps != c0.steps {
            "another seed phase or length"
        } else if t.progress.step != first.progress.step {
            "another step"
        } else if c.reanalyze.is_some() {
            "BMPC's reanalysis"
        } else {
            continue;
        };
        return Some(format!("agent {i} has {why}"));
    }
    None
}

/// Why agent `t` cannot run its updates in the same dispatches as agent `first` (another
/// agent), or `None` if it can: the same batch, update and policy update but for the seeds and
/// the policy loss's coefficients (PO-MPC's lambda), the same pre-training, loss reads and
/// update count, and no KL-regularized critic target.
fn update_mismatch(first: &Trainer, t: &Trainer) -> Option<&'static str> {
    let (c0, c) = (&first.cfg, &t.cfg);
    if c.batch != c0.batch {
        Some("another batch size")
    } else if (UpdateConfig {
        seed: c0.update.seed,
        ..c.update.clone()
    }) != c0.update
    {
        Some("another world-model update")
    } else if c.update.lambda_q != 0.0 || c0.update.lambda_q != 0.0 {
        Some("the KL-regularized critic target")
    } else if c.policy.shared_with(&c0.policy) != c0.policy {
        Some("another policy update (method)")
    } else if c.pretrain_policy != c0.pretrain_policy || c.log_every != c0.log_every {
        Some("another pre-training or loss logging")
    } else if t.learner.world.updates_made() != first.learner.world.updates_made() {
        Some("another update count")
    } else {
        None
    }
}

/// Why agents that share their plan steps cannot also run all their updates in the same
/// dispatches ([`update_mismatch`] against agent 0), or `None` if they can.
pub(crate) fn cannot_share_updates(trainers: &[Trainer]) -> Option<String> {
    let first = trainers.first()?;
    trainers
        .iter()
        .enumerate()
        .skip(1)
        .find_map(|(i, t)| update_mismatch(first, t).map(|why| format!("agent {i} has {why}")))
}

/// The agents grouped by the updates they can share: each group's updates run in the same
/// dispatches (one submit a group and step). Agents join the first group whose first agent
/// they match ([`update_mismatch`]), in order.
pub(crate) fn update_groups(trainers: &[Trainer]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, t) in trainers.iter().enumerate() {
        match groups
            .iter_mut()
            .find(|g| update_mismatch(&trainers[g[0]], t).is_none())
        {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    groups
}

/// The updates of a group of a population's agents ([`update_groups`]): one world-model and
/// one policy trainer over the group, each agent's state taken over from its own trainers at
/// the start of a run and handed back at its end
/// ([`WorldModelTrainer::record_exchange_agent`]). Each step samples every member's batch from
/// its own replay buffer and records all their updates, and the copies of the new parameters
/// into the shared planner model, in one submit.
struct SharedUpdates<'g> {
    gpu: &'g Gpu,
    world: WorldModelTrainer<'g>,
    policy: PolicyTrainer<'g>,
    layout: ParamLayout,
    binds: BindCache,
    /// The population's indices of the group's agents, in the group's order.
    members: Vec<usize>,
}

/// Where a shared update's losses and optimizer states land in its read-back.
struct SharedReads {
    world: ReadbackHandle<f32>,
    world_adam: ReadbackHandle<u32>,
    policy: ReadbackHandle<f32>,
    policy_adam: ReadbackHandle<u32>,
}

/// Each member's losses, by the population's index, when the update read them.
type GroupLosses = Vec<(usize, Option<(UpdateLosses, PolicyLosses)>)>;

impl<'g> SharedUpdates<'g> {
    /// Take over the training state of the agents `members` of `trainers` (`weights` are
    /// every agent's, for the shapes).
    fn new(
        gpu: &'g Gpu,
        trainers: &mut [Trainer<'g>],
        weights: &[Weights],
        members: Vec<usize>,
    ) -> Result<Self> {
        let c0 = &trainers[members[0]].cfg;
        let batch = c0.batch;
        let updates: Vec<UpdateConfig> = members
            .iter()
            .map(|&m| trainers[m].cfg.update.clone())
            .collect();
        let policies: Vec<PolicyUpdateConfig> = members
            .iter()
            .map(|&m| trainers[m].cfg.policy.clone())
            .collect();
        let own: Vec<Weights> = members.iter().map(|&m| weights[m].clone()).collect();
        let mut world = WorldModelTrainer::population(gpu, &own, &updates, batch)?;
        let mut policy = PolicyTrainer::population(gpu, &own[0].spec, &policies, batch)?;
        let mut rec = Recorder::new(gpu);
        for (i, &m) in members.iter().enumerate() {
            let t = &mut trainers[m];
            world.record_exchange_agent(&mut rec, i, &mut t.learner.world, true)?;
            policy.record_exchange_agent(&mut rec, i, &mut t.learner.policy, true)?;
        }
        rec.submit()?;
        Ok(SharedUpdates {
            gpu,
            world,
            policy,
            layout: ParamLayout::new(&own[0].spec),
            binds: BindCache::new(),
            members,
        })
    }

    /// Hand every member's state back to its own trainers (whose models are then stale).
    fn hand_back(&mut self, runs: &mut [AgentRun<'_, 'g>]) -> Result<()> {
        let mut rec = Recorder::new(self.gpu);
        for (i, &m) in self.members.iter().enumerate() {
            let run = &mut runs[m];
            self.world
                .record_exchange_agent(&mut rec, i, &mut run.learner.world, false)?;
            self.policy
                .record_exchange_agent(&mut rec, i, &mut run.learner.policy, false)?;
            run.stale = true;
        }
        rec.submit()
    }

    /// Copy the parameters of the population's agent `m` (a member) into its own trainer (for
    /// an evaluation with its own model, which is then stale).
    fn params_to(&self, m: usize, run: &mut AgentRun<'_, 'g>) -> Result<()> {
        let Some(i) = self.members.iter().position(|&x| x == m) else {
            return Ok(());
        };
        let n = self.layout.len();
        let mut rec = Recorder::new(self.gpu);
        rec.copy_range(self.world.params(), i * n, run.learner.world.params(), 0, n)?;
        rec.submit()?;
        run.stale = true;
        Ok(())
    }

    /// Sample every member's batch from its own buffer and encode all their updates (the
    /// policy's when `with_policy`) and the copies of the new parameters into `model`'s
    /// agents, reading the losses back when the members' `log_every` says so (never with
    /// `quiet`).
    fn prepare(
        &mut self,
        runs: &mut [AgentRun<'_, 'g>],
        model: &WorldModel,
        with_policy: bool,
        quiet: bool,
    ) -> Result<(Encoded<'g>, Option<SharedReads>)> {
        let lead = &runs[self.members[0]];
        let cfg = lead.cfg.clone();
        let read = !quiet && cfg.log_every > 0 && lead.p.updates.is_multiple_of(cfg.log_every);
        let (t, b) = (cfg.update.horizon, cfg.batch);
        let a = model.spec.action_dim;
        let with_prior = with_policy && cfg.policy.prior != PriorKind::None;
        let mut batches = Vec::with_capacity(self.members.len());
        let mut planners = Vec::new();
        for &m in &self.members {
            let l = &mut *runs[m].learner;
            let sample = l.buffer.sample(&mut l.rng, b, t)?;
            if with_prior {
                planners.extend_from_slice(&sample.planner[..cfg.policy.states * b * 2 * a]);
            }
            batches.push(sample.batch);
        }
        let heads = self.world.upload_agents(&batches)?;
        if with_prior {
            self.policy.set_planner(&planners)?;
        }
        let mut rec = Recorder::new(self.gpu).with_cache(&self.binds);
        self.world.record_agents(&mut rec, &heads, true, None)?;
        self.world.record_optimizer(&mut rec)?;
        if with_policy {
            let h = self.policy.draw_agent_heads();
            let (params, zs) = (self.world.params(), self.world.latents());
            self.policy
                .record_agents(&mut rec, params, zs, &h, true, true)?;
        }
        let (layout, n) = (&self.layout, self.layout.len());
        for (i, &m) in self.members.iter().enumerate() {
            let offset = |name: &str| layout.offset(name).map(|o| o + i * n);
            model.record_agent_copy_from(&mut rec, m, self.world.params(), offset)?;
        }
        let reads = read.then(|| SharedReads {
            world: rec.read(self.world.losses_buffer()),
            world_adam: rec.read(self.world.adam().state_buffer()),
            policy: rec.read(self.policy.losses_buffer()),
            policy_adam: rec.read(self.policy.adam().state_buffer()),
        });
        Ok((rec.encode()?, reads))
    }

    /// Each member's losses from a submitted update (waiting for it when it reads them).
    fn finish(
        &self,
        pending: PendingReadback<'g>,
        reads: Option<SharedReads>,
    ) -> Result<GroupLosses> {
        let g = self.members.len();
        let Some(r) = reads else {
            return Ok(self.members.iter().map(|&m| (m, None)).collect());
        };
        let out = pending.wait()?;
        let (wl, pl) = (out.get(&r.world)?, out.get(&r.policy)?);
        let wa = AdamState::grad_norms(&out.get(&r.world_adam)?)?;
        let pa = AdamState::grad_norms(&out.get(&r.policy_adam)?)?;
        let (wn, pn) = (wl.len() / g, pl.len() / g);
        let mut each = Vec::with_capacity(g);
        for (i, &m) in self.members.iter().enumerate() {
            let world = self.world.decode_losses(&wl[i * wn..(i + 1) * wn], wa[i]);
            let mut policy = PolicyTrainer::decode_losses(&pl[i * pn..(i + 1) * pn]);
            policy.grad_norm = pa[i];
            each.push((m, Some((world, policy))));
        }
        Ok(each)
    }
}

/// Run every trainer until `until` steps in lock step, each step's plans for all of them in
/// one plan step over a population model ([`WorldModel::population`]), and each group of
/// [`update_groups`] running its agents' updates in the same dispatches ([`SharedUpdates`]);
/// each agent's results are those it gets alone. `trainers` must pass [`cannot_share`].
pub(crate) fn run_shared(
    trainers: &mut [Trainer],
    until: usize,
    on: &super::population::PopulationHandler,
) -> Result<()> {
    if let Some(why) = cannot_share(trainers) {
        return Err(Error::InvalidArgument(format!(
            "cannot share plan steps: {why}"
        )));
    }
    let gpu = trainers[0].gpu;
    let cfg0 = trainers[0].cfg.clone();
    let weights = trainers
        .iter()
        .map(Trainer::weights)
        .collect::<Result<Vec<_>>>()?;
    let shared = WorldModel::population(gpu, &weights, cfg0.planner_precision)?;
    let seeds: Vec<u64> = trainers.iter().map(|t| t.cfg.planner.seed).collect();
    let mut planner = Planner::new(gpu, &shared, cfg0.planner.clone())?.with_seeds(&seeds)?;
    let mut groups = Vec::new();
    for members in update_groups(trainers) {
        groups.push(SharedUpdates::new(gpu, trainers, &weights, members)?);
    }
    let mut runs = trainers
        .iter_mut()
        .map(|t| AgentRun::new(t, until))
        .collect::<Result<Vec<_>>>()?;
    let mut handlers: Vec<_> = (0..runs.len()).map(|i| move |e: &Event| on(i, e)).collect();
    let result = lock_step(&mut runs, &mut handlers, &mut planner, &shared, &mut groups);
    // The agents' own trainers get their state back whatever happened.
    let mut handed = Ok(());
    for u in &mut groups {
        let r = u.hand_back(&mut runs);
        if handed.is_ok() {
            handed = r;
        }
    }
    result?;
    handed?;
    if runs.iter().all(|r| r.final_eval_due()) {
        evaluate_together(&mut runs, &mut handlers, &shared)?;
        for run in &mut runs {
            run.p.next_eval = usize::MAX;
        }
    }
    for (run, h) in runs.iter_mut().zip(&mut handlers) {
        run.end(h)?;
    }
    Ok(())
}

/// Every agent's evaluation due at this step, planned together on the population's model
/// (which holds every agent's current parameters): one plan step per environment step for
/// all agents instead of one per agent. Every agent's evaluation is reported, then the first
/// handler's error returned.
fn evaluate_together(
    runs: &mut [AgentRun<'_, '_>],
    handlers: &mut [impl FnMut(&Event) -> Result<()>],
    shared: &WorldModel,
) -> Result<()> {
    let step = runs[0].p.step;
    let plan_seeds: Vec<u64> = runs.iter().map(|r| eval_plan_seed(&r.cfg, step)).collect();
    let mut planner = eval_planner(runs[0].gpu, shared, &runs[0].cfg.planner, &plan_seeds)?;
    let seeds: Vec<u64> = runs.iter().map(|r| r.eval_seed()).collect();
    let episodes: Vec<usize> = runs.iter().map(|r| r.cfg.eval_episodes).collect();
    let mut envs: Vec<&mut dyn Env> = Vec::with_capacity(runs.len());
    for r in runs.iter_mut() {
        // A coercion site, so the environments' borrows last only for this evaluation.
        envs.push(&mut *r.eval_env);
    }
    let returns = evaluate(&mut envs, &mut planner, &episodes, &seeds)?;
    let mut first_error = None;
    for ((run, h), r) in runs.iter_mut().zip(handlers.iter_mut()).zip(returns) {
        if let Err(e) = run.report_eval(r, h) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The pre-training updates still due of every agent (in lock step, all at the same count),
/// every group's updates together, progress reported to every agent's handler; the first
/// handler's error stops it once every agent has heard of the same update.
fn pretrain_together<'g>(
    runs: &mut [AgentRun<'_, 'g>],
    handlers: &mut [impl FnMut(&Event) -> Result<()>],
    shared: &WorldModel,
    groups: &mut [SharedUpdates<'g>],
) -> Result<()> {
    let t0 = std::time::Instant::now();
    let total = runs[0].cfg.seed_steps;
    let tell = |runs: &[AgentRun<'_, 'g>], handlers: &mut [_], e: &dyn Fn(&AgentRun) -> Event| {
        let mut first_error = None;
        for (run, h) in runs.iter().zip(handlers.iter_mut()) {
            let h: &mut dyn FnMut(&Event) -> Result<()> = h;
            if let Err(err) = h(&e(run)) {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    };
    while runs[0].p.updates < total {
        let mut submitted = Vec::with_capacity(groups.len());
        for u in groups.iter_mut() {
            let with_policy = runs[u.members[0]].cfg.pretrain_policy;
            let (encoded, reads) = u.prepare(runs, shared, with_policy, true)?;
            submitted.push((encoded.submit()?, reads));
        }
        for (u, (pending, reads)) in groups.iter().zip(submitted) {
            u.finish(pending, reads)?;
        }
        for run in runs.iter_mut() {
            run.p.updates += 1;
            run.stale = true;
        }
        let updates = runs[0].p.updates;
        if updates.is_multiple_of(PRETRAIN_REPORT_EVERY) && updates < total {
            tell(runs, handlers, &|r| Event::Pretraining {
                step: r.p.step,
                updates,
                total,
            })?;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    tell(runs, handlers, &|_| Event::Pretrained {
        updates: total,
        seconds,
    })
}

/// The lock-step loop of [`run_shared`].
fn lock_step<'g>(
    runs: &mut [AgentRun<'_, 'g>],
    handlers: &mut [impl FnMut(&Event) -> Result<()>],
    planner: &mut Planner,
    shared: &WorldModel,
    groups: &mut [SharedUpdates<'g>],
) -> Result<()> {
    let a = shared.spec.action_dim;
    let g = runs.len();
    let mut obs = Vec::new();
    let mut first = Vec::with_capacity(g);
    loop {
        // Pre-training at the end of the seed phase (or what a resumed run has left of it):
        // every group's updates together.
        if runs[0].pretrain_pending() {
            pretrain_together(runs, handlers, shared, groups)?;
        }
        // Agents evaluating at this step (all of them, in lock step) evaluate together.
        if runs.iter().all(|r| r.eval_due()) {
            evaluate_together(runs, handlers, shared)?;
            for run in runs.iter_mut() {
                run.evaluated();
            }
        }
        let mut plans = None;
        for (i, (run, h)) in runs.iter_mut().zip(handlers.iter_mut()).enumerate() {
            // An evaluation plans with the agent's own model: it gets its parameters first.
            if run.eval_due() {
                for u in groups.iter() {
                    u.params_to(i, run)?;
                }
            }
            // Lock step: every agent is at the same step, so all plan or none.
            let step = run.begin_step(h)?;
            plans = plans.or(Some(step)).filter(|p| *p == step);
        }
        let Some(Some(plans)) = plans else {
            break;
        };
        let mut steps: Vec<(Vec<f32>, Option<Vec<f32>>)> = Vec::with_capacity(g);
        let mut losses = vec![None; g];
        if plans {
            obs.clear();
            first.clear();
            for run in runs.iter() {
                obs.extend_from_slice(&run.p.obs);
                first.push(run.p.first);
            }
            let pending = planner.plan_submit(&obs, &first)?;
            // Every group's update is submitted behind the plan step before it is read.
            let mut submitted = Vec::with_capacity(groups.len());
            for u in groups.iter_mut() {
                let (encoded, reads) = u.prepare(runs, shared, true, false)?;
                submitted.push((encoded.submit()?, reads));
            }
            let plan = pending.wait()?;
            for (u, (pending, reads)) in groups.iter().zip(submitted) {
                for (m, l) in u.finish(pending, reads)? {
                    losses[m] = l;
                }
            }
            for i in 0..g {
                let rows = i * a..(i + 1) * a;
                let mut gaussian = plan.mean[rows.clone()].to_vec();
                gaussian.extend_from_slice(&plan.std[rows.clone()]);
                steps.push((plan.action[rows].to_vec(), Some(gaussian)));
            }
            for run in runs.iter_mut() {
                run.p.updates += 1;
                run.stale = true;
            }
        } else {
            for run in runs.iter_mut() {
                steps.push((run.random_action(), None));
            }
        }
        // A handler's error stops the run at the end of the step: every agent takes the step
        // and reports it first, so that all stay in lock step.
        let mut first_error = None;
        let mut keep = |r: Result<()>| {
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        };
        let mut done = Vec::with_capacity(g);
        let all = runs
            .iter_mut()
            .zip(handlers.iter_mut())
            .zip(steps)
            .zip(losses);
        for (((run, h), (action, gaussian)), l) in all {
            // An environment that fails stops the run at once.
            let (d, reported) = run.act(action, gaussian, l, h)?;
            keep(reported);
            done.push(d);
        }
        for ((run, h), d) in runs.iter_mut().zip(handlers.iter_mut()).zip(done) {
            keep(run.report(d, h));
        }
        if let Some(e) = first_error {
            return Err(e);
        }
    }
    Ok(())
}

/// Agent `cfg`'s planner seed for its evaluation at `step`: each evaluation draws its stream
/// afresh, so that its plans do not depend on what was planned before it (how a run was split
/// into calls, or whether its agents evaluated together).
fn eval_plan_seed(cfg: &TrainConfig, step: usize) -> u64 {
    mix(cfg.planner.seed, SEED_EVAL_PLAN, step as u64)
}

/// An eval-mode planner of `cfg`'s settings over the agents of `model`, agent i drawing from
/// `seeds[i]`.
fn eval_planner<'m>(
    gpu: &'m Gpu,
    model: &'m WorldModel,
    cfg: &PlannerConfig,
    seeds: &[u64],
) -> Result<Planner<'m>> {
    let cfg = PlannerConfig {
        plan_mode: PlanMode::Eval,
        ..cfg.clone()
    };
    Planner::new(gpu, model, cfg)?.with_seeds(seeds)
}

/// `episodes[i]` evaluation episodes of agent i on `envs[i]`, reset from `seeds[i]`, planned
/// together by `planner` (one environment per agent of its model).
/// Each agent runs its episodes back to back; one that is done waits (its rows plan on but
/// act nowhere), so every agent gets what it would get evaluated alone.
fn evaluate(
    envs: &mut [&mut dyn Env],
    planner: &mut Planner,
    episodes: &[usize],
    seeds: &[u64],
) -> Result<Vec<Vec<f32>>> {
    let n = envs.len();
    let mut returns: Vec<Vec<f32>> = episodes.iter().map(|&e| Vec::with_capacity(e)).collect();
    let pending = |r: &[Vec<f32>]| (0..n).any(|i| r[i].len() < episodes[i]);
    if !pending(&returns) {
        return Ok(returns);
    }
    let mut obs: Vec<Vec<f32>> = (envs.iter_mut().zip(seeds))
        .map(|(e, &s)| e.reset(mix(s, 0, 0)))
        .collect();
    let mut first = vec![true; n];
    let mut ret = vec![0.0f32; n];
    let mut rows = Vec::new();
    while pending(&returns) {
        rows.clear();
        for o in &obs {
            rows.extend_from_slice(o);
        }
        let plan = planner.plan(&rows, &first)?;
        let a = plan.action.len() / n;
        for i in 0..n {
            if returns[i].len() == episodes[i] {
                continue;
            }
            first[i] = false;
            let s = envs[i].step(&plan.action[i * a..(i + 1) * a])?;
            ret[i] += s.reward;
            obs[i] = s.obs;
            if s.done {
                returns[i].push(std::mem::take(&mut ret[i]));
                let e = returns[i].len();
                if e < episodes[i] {
                    obs[i] = envs[i].reset(mix(seeds[i], 0, e as u64));
                    first[i] = true;
                }
            }
        }
    }
    Ok(returns)
}

impl<'g> Learner<'g> {
    /// Sample a batch (reanalysing it when due), upload it and encode one update (and the
    /// copy of the new parameters into the planner's model) without submitting it; with
    /// `read`, the update reads its losses back. Encoding here, while the plan step runs,
    /// keeps the host's encoding off the GPU's critical path.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &mut self,
        (model, agent): (&WorldModel, usize),
        cfg: &TrainConfig,
        updates: usize,
        with_policy: bool,
        read: bool,
        re_planner: Option<&mut Planner>,
    ) -> Result<PreparedUpdate<'g>> {
        let (t, b) = (cfg.update.horizon, cfg.batch);
        let a = model.spec.action_dim;
        let o = model.spec.obs_dim;
        let mut sample = self.buffer.sample(&mut self.rng, b, t)?;
        if let (Some(re), Some(planner)) = (cfg.reanalyze, re_planner)
            && updates.is_multiple_of(re.interval)
        {
            // The first `sequences` sub-trajectories' first T states, re-planned at once.
            let n = re.sequences;
            let mut obs = Vec::with_capacity(t * n * o);
            for s in 0..t {
                let row = s * b * o;
                obs.extend_from_slice(&sample.batch.obs[row..row + n * o]);
            }
            let plan = planner.plan(&obs, &vec![true; t * n])?;
            for s in 0..t {
                for j in 0..n {
                    let r = s * n + j;
                    let mut g = plan.mean[r * a..(r + 1) * a].to_vec();
                    g.extend_from_slice(&plan.std[r * a..(r + 1) * a]);
                    let dst = (s * b + j) * 2 * a;
                    sample.planner[dst..dst + 2 * a].copy_from_slice(&g);
                    let (ep, start) = sample.origin[j];
                    self.buffer.set_planner(ep, start + s, &g)?;
                }
            }
        }
        let heads = self.world.upload(&sample.batch)?;
        if with_policy && cfg.policy.prior != PriorKind::None {
            let rows = cfg.policy.states * b * 2 * a;
            self.policy.set_planner(&sample.planner[..rows])?;
        }
        let mut rec = Recorder::new(self.gpu).with_cache(&self.binds);
        self.world
            .record_losses_and_grads(&mut rec, heads, true, None)?;
        self.world.record_optimizer(&mut rec)?;
        if with_policy {
            let h = self.policy.draw_heads();
            let (params, zs) = (self.world.params(), self.world.latents());
            self.policy.record(&mut rec, params, zs, h, true, true)?;
        }
        let layout = &self.layout;
        model.record_agent_copy_from(&mut rec, agent, self.world.params(), |n| layout.offset(n))?;
        let reads = read.then(|| LossReads {
            world: rec.read(self.world.losses_buffer()),
            world_adam: rec.read(self.world.adam().state_buffer()),
            policy: rec.read(self.policy.losses_buffer()),
            policy_adam: rec.read(self.policy.adam().state_buffer()),
        });
        Ok(PreparedUpdate {
            encoded: rec.encode()?,
            reads,
        })
    }

    /// Submit a prepared update; when it reads its losses, wait for them.
    fn complete(&self, update: PreparedUpdate<'g>) -> Result<Option<(UpdateLosses, PolicyLosses)>> {
        let submitted = self.submit(update)?;
        self.finish(submitted)
    }

    /// Submit a prepared update without waiting for it.
    fn submit(&self, update: PreparedUpdate<'g>) -> Result<SubmittedUpdate<'g>> {
        Ok(SubmittedUpdate {
            pending: update.encoded.submit()?,
            reads: update.reads,
        })
    }

    /// When a submitted update reads its losses, wait for them.
    fn finish(&self, update: SubmittedUpdate<'g>) -> Result<Option<(UpdateLosses, PolicyLosses)>> {
        let Some(r) = update.reads else {
            return Ok(None);
        };
        let out = update.pending.wait()?;
        let ws = AdamState::from_words(&out.get(&r.world_adam)?)?;
        let world = self
            .world
            .decode_losses(&out.get(&r.world)?, ws.grad_norm.unwrap_or(f32::NAN));
        let mut policy = PolicyTrainer::decode_losses(&out.get(&r.policy)?);
        policy.grad_norm = AdamState::from_words(&out.get(&r.policy_adam)?)?
            .grad_norm
            .unwrap_or(f32::NAN);
        Ok(Some((world, policy)))
    }
}

/// One update encoded by [`Learner::prepare`], not yet submitted.
struct PreparedUpdate<'g> {
    encoded: Encoded<'g>,
    reads: Option<LossReads>,
}

/// One update submitted by [`Learner::submit`].
struct SubmittedUpdate<'g> {
    pending: PendingReadback<'g>,
    reads: Option<LossReads>,
}

/// Where an update's losses and optimizer states land in its read-back.
struct LossReads {
    world: ReadbackHandle<f32>,
    world_adam: ReadbackHandle<u32>,
    policy: ReadbackHandle<f32>,
    policy_adam: ReadbackHandle<u32>,
}

/// Most environment steps (and updates) a run counts: checkpoints store steps as u32.
pub const MAX_STEPS: usize = u32::MAX as usize;
/// Most episodes per evaluation.
pub const MAX_EVAL_EPISODES: usize = 1000;

/// What the values of a checkpoint tensor must be, besides finite.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Values {
    Finite,
    NonNegative,
    Positive,
}

/// `data` as tensor `name` of a checkpoint: exactly `len` values, each finite (and >= 0 or
/// > 0 as asked); the error names the tensor and the first bad element.
fn check_f32(name: &str, data: Vec<f32>, len: usize, values: Values) -> Result<Vec<f32>> {
    if data.len() != len {
        return Err(Error::InvalidArgument(format!(
            "tensor {name:?} holds {} values, this run needs {len}",
            data.len()
        )));
    }
    let ok = |v: f32| {
        v.is_finite()
            && match values {
                Values::Finite => true,
                Values::NonNegative => v >= 0.0,
                Values::Positive => v > 0.0,
            }
    };
    if let Some(i) = data.iter().position(|v| !ok(*v)) {
        let want = match values {
            Values::Finite => "finite",
            Values::NonNegative => "finite and >= 0",
            Values::Positive => "finite and > 0",
        };
        return Err(Error::InvalidArgument(format!(
            "tensor {name:?} holds {} at element {i}; its values must be {want}",
            data[i]
        )));
    }
    Ok(data)
}

/// An optimizer's saved state: moments of `len` values (first finite, second finite and
/// non-negative: a NaN there turns every later step into NaN) and [`STATE_WORDS`] state
/// words whose step counter is at most `updates` (the world model's optimizer steps once per
/// update). Returns the state words.
fn check_adam(
    prefix: &str,
    len: usize,
    m: &[f32],
    v: &[f32],
    state: Vec<u32>,
    updates: usize,
) -> Result<Vec<u32>> {
    check_f32(&format!("{prefix}.m"), m.to_vec(), len, Values::Finite)?;
    check_f32(&format!("{prefix}.v"), v.to_vec(), len, Values::NonNegative)?;
    if state.len() != STATE_WORDS {
        return Err(Error::InvalidArgument(format!(
            "tensor \"{prefix}.state\" holds {} words, an Adam state has {STATE_WORDS}",
            state.len()
        )));
    }
    let steps = state[0] as usize;
    let exact = prefix == "pompc.opt.world";
    if steps > updates || (exact && steps != updates) {
        return Err(Error::InvalidArgument(format!(
            "tensor \"{prefix}.state\" counts {steps} optimizer steps, the run {updates} \
             updates ({})",
            if exact {
                "the world model steps once per update"
            } else {
                "at most one step per update"
            }
        )));
    }
    Ok(state)
}

/// The history of a checkpoint: three arrays of one length, eval flags 0 or 1, finite
/// returns, steps in order and at most `step`, and one training row per episode.
fn check_history(hs: &[u32], he: &[u32], hr: &[f32], step: usize, episodes: usize) -> Result<()> {
    let n = hs.len();
    if he.len() != n || hr.len() != n {
        return Err(Error::InvalidArgument(format!(
            "history tensors pompc.history.step, .eval and .return hold {n}, {} and {} rows; \
             they must match",
            he.len(),
            hr.len()
        )));
    }
    check_f32("pompc.history.return", hr.to_vec(), n, Values::Finite)?;
    if let Some(i) = he.iter().position(|e| *e > 1) {
        return Err(Error::InvalidArgument(format!(
            "tensor \"pompc.history.eval\" holds {} at row {i}; flags are 0 or 1",
            he[i]
        )));
    }
    if let Some(i) = (0..n).find(|&i| hs[i] as usize > step || (i > 0 && hs[i] < hs[i - 1])) {
        return Err(Error::InvalidArgument(format!(
            "tensor \"pompc.history.step\" holds {} at row {i}: steps must rise and stay at \
             most the run's step {step}",
            hs[i]
        )));
    }
    let train = he.iter().filter(|e| **e == 0).count();
    if train != episodes {
        return Err(Error::InvalidArgument(format!(
            "the history holds {train} training episodes, pompc.episodes says {episodes}"
        )));
    }
    Ok(())
}

/// An optimizer's moments over `range` and its state words.
fn download_adam(
    gpu: &Gpu,
    adam: &Adam,
    range: std::ops::Range<usize>,
) -> Result<(Vec<f32>, Vec<f32>, Vec<u32>)> {
    let take = |v: Vec<f32>| {
        v.get(range.clone())
            .map(<[f32]>::to_vec)
            .unwrap_or_default()
    };
    Ok((
        take(adam.m().download(gpu)?),
        take(adam.v().download(gpu)?),
        adam.state_buffer().download(gpu)?,
    ))
}

/// Upload checked optimizer state (from [`check_adam`]) at `offset` of the moments.
fn load_adam(
    gpu: &Gpu,
    adam: &Adam,
    offset: usize,
    (m, v, state): (Vec<f32>, Vec<f32>, Vec<u32>),
) -> Result<()> {
    adam.m().upload_at(gpu, offset, &m)?;
    adam.v().upload_at(gpu, offset, &v)?;
    let words: &GpuBuffer<u32> = adam.state_buffer();
    words.upload(gpu, &state)
}

fn tensor<'a>(
    st: &'a safetensors::SafeTensors,
    name: &str,
) -> Result<safetensors::tensor::TensorView<'a>> {
    st.tensor(name)
        .map_err(|e| Error::InvalidArgument(format!("tensor {name:?}: {e}")))
}

fn read_f32(st: &safetensors::SafeTensors, name: &str) -> Result<Vec<f32>> {
    let t = tensor(st, name)?;
    if t.dtype() != safetensors::Dtype::F32 {
        return Err(Error::InvalidArgument(format!(
            "tensor {name:?} is {:?}, expected F32",
            t.dtype()
        )));
    }
    Ok(bytemuck::pod_collect_to_vec(t.data()))
}

fn read_u32(st: &safetensors::SafeTensors, name: &str) -> Result<Vec<u32>> {
    let t = tensor(st, name)?;
    if t.dtype() != safetensors::Dtype::U32 {
        return Err(Error::InvalidArgument(format!(
            "tensor {name:?} is {:?}, expected U32",
            t.dtype()
        )));
    }
    Ok(bytemuck::pod_collect_to_vec(t.data()))
}

/// Tensors collected for one safetensors file.
#[derive(Default)]
struct Tensors {
    items: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>,
}

impl Tensors {
    fn f32(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>) {
        self.items.push((
            name.into(),
            safetensors::Dtype::F32,
            shape,
            bytemuck::cast_slice(&data).to_vec(),
        ));
    }

    fn u32(&mut self, name: &str, data: Vec<u32>) {
        self.items.push((
            name.into(),
            safetensors::Dtype::U32,
            vec![data.len()],
            bytemuck::cast_slice(&data).to_vec(),
        ));
    }

    fn write(&self, path: &Path, meta: HashMap<String, String>) -> Result<()> {
        let views = self
            .items
            .iter()
            .map(|(n, d, s, b)| {
                safetensors::tensor::TensorView::new(*d, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| Error::InvalidArgument(format!("checkpoint tensor {n}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bytes = safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::InvalidArgument(format!("checkpoint: {e}")))?;
        crate::fs::write_atomic(path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names() {
        assert_eq!(Method::parse("TD-MPC2", None).unwrap(), Method::Tdmpc2);
        assert_eq!(
            Method::parse("td-m(pc)²", None).unwrap(),
            Method::TdmpcSquare
        );
        assert_eq!(
            Method::parse("po-mpc", Some(9.0)).unwrap(),
            Method::Pompc { lambda: 9.0 }
        );
        assert!(Method::parse("bmpc", Some(1.0)).is_err());
        assert!(Method::parse("sac", None).is_err());
        assert_eq!(ModelPreset::parse("5m").unwrap(), ModelPreset::Tdmpc2(5));
        assert!(ModelPreset::parse("huge").is_err());
    }
}
