//! TD-MPC2's world-model update (`../shared/docs/algorithm.md` b.6) on the GPU, recorded into
//! one submit: TD targets from the policy and two Polyak-target Q heads, the latent rollout
//! through the dynamics, the consistency, reward and value losses with rho^t weights, the
//! backward pass through every network, global-norm clipping, Adam with the encoder's
//! learning-rate scale, and the Polyak update of the target Q heads.
//!
//! ```no_run
//! # fn main() -> pompc::Result<()> {
//! use pompc::model::{ModelSpec, Weights};
//! use pompc::train::{UpdateBatch, UpdateConfig, WorldModelTrainer};
//! let gpu = pompc::Gpu::new(Default::default())?;
//! let spec = ModelSpec::tdmpc2(5, 24, 6)?;
//! let mut trainer = WorldModelTrainer::new(&gpu, &Weights::init(&spec, 0)?, UpdateConfig::tdmpc2(), 256)?;
//! let (t, b) = (3, 256);
//! let batch = UpdateBatch {
//!     obs: vec![0.0; (t + 1) * b * 24],
//!     action: vec![0.0; t * b * 6],
//!     reward: vec![0.0; t * b],
//!     pi_noise: None,
//!     target_heads: None,
//! };
//! let losses = trainer.update(&batch)?;
//! println!("consistency {} reward {} value {}", losses.consistency, losses.reward, losses.value);
//! # Ok(()) }
//! ```
//!
//! Differences from TD-MPC2 (stated, not hidden): the Q heads' dropout (0.01 on the first
//! layer) is not applied, and episodic models (termination head) are refused for now.

use super::mlp::{Grads, Members, NetInput, Tape, TrainNet};
use super::params::ParamLayout;
use crate::gpu::{Gpu, GpuBuffer, Recorder};
use crate::kernels::gemm::{self, Gemm, Mat, Operands};
use crate::kernels::loss::{self, Agents, GradOut, LossOut, MseConfig, RowWeights, SoftCeConfig};
use crate::kernels::optim::{
    Adam, AdamConfig, AdamState, ParamGroup, PolyakSpan, record_polyak_agents,
};
use crate::kernels::policy::{self, PolicyBuffers, PolicyConfig, PolicyOffsets};
use crate::kernels::policy_loss as pl;
use crate::kernels::rng_fill::{Distribution, record_fill, record_fill_agents};
use crate::kernels::td::record_td_target;
use crate::kernels::two_hot::{self, RowLayout, TwoHotConfig};
use crate::model::{ModelSpec, Net, Weights};
use crate::{Error, Result};
use rand::{Rng, SeedableRng};

/// Coefficients of the update, TD-MPC2's defaults from [`UpdateConfig::tdmpc2`].
#[derive(Clone, Debug, PartialEq)]
pub struct UpdateConfig {
    /// Horizon T of the sub-trajectories (3).
    pub horizon: usize,
    /// Per-step loss weight rho (0.5).
    pub rho: f32,
    /// Discount gamma of the TD target (0.99 for DMC's 500-step episodes).
    pub discount: f32,
    /// Weight of the consistency loss (20).
    pub consistency_coef: f32,
    /// Weight of the reward loss (0.1).
    pub reward_coef: f32,
    /// Weight of the value loss (0.1).
    pub value_coef: f32,
    /// Adam learning rate (3e-4).
    pub lr: f32,
    /// Learning-rate scale of the encoder (0.3).
    pub enc_lr_scale: f32,
    /// Global gradient-norm clip (20).
    pub grad_clip_norm: f32,
    /// Polyak rate of the target Q heads (0.01).
    pub tau: f32,
    /// Seed of the policy noise and of the target-head choice.
    pub seed: u64,
    /// lambda_Q of the KL-regularized critic target (a.3.3): `y = r + gamma (min Q -
    /// lambda_Q (log pi(a'|z') - log pi_p(a'|z')))`, the single-sample estimate with the
    /// squashed policy. 0 (the default) is TD-MPC2's and BMPC's target.
    pub lambda_q: f32,
    /// The prior pi_p of that target.
    pub kl_target: KlTarget,
    /// The networks' products on tensor cores (see [`super::TrainNet::with_tensor_cores`]:
    /// f16 operands with the gradients scaled into f16's range, f32 sums); false (the
    /// default): f32. Needs a device with cooperative matrices ([`crate::Gpu::tensor_cores`]).
    /// Experimental: on an H100 it matched PyTorch's gradients within 1.3e-2 but ran the 5M
    /// model's update slower than f32 (3.9 against 3.1 ms of GPU time, BENCHMARKS.md).
    pub tensor_cores: bool,
}

/// The prior of the KL-regularized critic target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KlTarget {
    /// The planner's Gaussians at the next states, from [`WorldModelTrainer::set_next_planner`].
    Planner,
    /// The adaptive prior network, whose flat parameters are passed to
    /// [`WorldModelTrainer::update_with_prior`].
    Adaptive,
}

impl UpdateConfig {
    /// TD-MPC2's defaults (b.1) for DMC (discount 0.99).
    pub fn tdmpc2() -> Self {
        UpdateConfig {
            horizon: 3,
            rho: 0.5,
            discount: 0.99,
            consistency_coef: 20.0,
            reward_coef: 0.1,
            value_coef: 0.1,
            lr: 3e-4,
            enc_lr_scale: 0.3,
            grad_clip_norm: 20.0,
            tau: 0.01,
            seed: 0,
            lambda_q: 0.0,
            kl_target: KlTarget::Planner,
            tensor_cores: false,
        }
    }

    fn check(&self) -> Result<()> {
        if self.horizon == 0 || self.horizon > super::MAX_UPDATE_HORIZON {
            return Err(Error::InvalidArgument(format!(
                "update configuration: horizon {} outside 1..={}",
                self.horizon,
                super::MAX_UPDATE_HORIZON
            )));
        }
        // Rates and decays in [0, 1]; weights up to 1e6, so that a weight times a loss stays
        // far from f32's overflow.
        for (name, v, hi) in [
            ("rho", self.rho, 1.0),
            ("discount", self.discount, 1.0),
            ("tau", self.tau, 1.0),
            ("lr", self.lr, 1.0),
            ("consistency_coef", self.consistency_coef, 1e6),
            ("reward_coef", self.reward_coef, 1e6),
            ("value_coef", self.value_coef, 1e6),
            ("enc_lr_scale", self.enc_lr_scale, 1e6),
            ("lambda_q", self.lambda_q, 1e6),
            ("grad_clip_norm", self.grad_clip_norm, f32::MAX),
        ] {
            if !(v.is_finite() && (0.0..=hi).contains(&v)) {
                return Err(Error::InvalidArgument(format!(
                    "update configuration: {name} = {v} outside [0, {hi:e}]"
                )));
            }
        }
        Ok(())
    }
}

/// One batch of sub-trajectories, time-major: `obs` `[T + 1, B, obs_dim]`, `action`
/// `[T, B, action_dim]`, `reward` `[T, B]`.
#[derive(Clone, Debug, Default)]
pub struct UpdateBatch {
    /// Observations of steps 0..=T.
    pub obs: Vec<f32>,
    /// Actions of steps 0..T.
    pub action: Vec<f32>,
    /// Rewards of steps 0..T.
    pub reward: Vec<f32>,
    /// The standard normal noise of the TD target's policy samples `[T, B, action_dim]`;
    /// drawn on the GPU when `None`.
    pub pi_noise: Option<Vec<f32>>,
    /// The two target Q heads of the TD target; drawn at random when `None`.
    pub target_heads: Option<[usize; 2]>,
}

/// The losses of one update, as TD-MPC2 reports them (before the coefficients).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpdateLosses {
    /// (1/T) sum_t rho^t MSE(z_{t+1}, h(s_{t+1})).
    pub consistency: f32,
    /// (1/T) sum_t rho^t mean_b CE(R(z_t, a_t), r_t).
    pub reward: f32,
    /// (1/(T num_q)) sum_t rho^t sum_q mean_b CE(Q_q(z_t, a_t), y_t).
    pub value: f32,
    /// The weighted total that was differentiated.
    pub total: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
}

// Slots of the losses buffer (weighted by the coefficients, as differentiated), per agent.
const LOSS_SLOTS: usize = 8;
const L_CONSISTENCY: usize = 0;
const L_REWARD: usize = 1;
const L_VALUE: usize = 2;

/// TD-MPC2's world-model update on the GPU for batches of `batch` sub-trajectories.
pub struct WorldModelTrainer<'g> {
    gpu: &'g Gpu,
    spec: ModelSpec,
    layout: ParamLayout,
    cfg: UpdateConfig,
    batch: usize,
    params: GpuBuffer<f32>,
    grads: GpuBuffer<f32>,
    target: GpuBuffer<f32>,
    enc: TrainNet,
    dynamics: TrainNet,
    reward: TrainNet,
    pi: TrainNet,
    q: TrainNet,
    enc_tape: Tape,
    dyn_tape: Tape,
    rew_tape: Tape,
    q_tape: Tape,
    pi_tape: Tape,
    tq_tape: Tape,
    obs: GpuBuffer<f32>,
    action: GpuBuffer<f32>,
    reward_in: GpuBuffer<f32>,
    zs: GpuBuffer<f32>,
    dzs: GpuBuffer<f32>,
    eps: GpuBuffer<f32>,
    pi_action: GpuBuffer<f32>,
    pi_stats: GpuBuffer<f32>,
    tq_values: GpuBuffer<f32>,
    td: GpuBuffer<f32>,
    dlogits_r: GpuBuffer<f32>,
    dlogits_q: GpuBuffer<f32>,
    losses: GpuBuffer<f32>,
    loss_scratch: GpuBuffer<f32>,
    next_planner: GpuBuffer<f32>,
    kl_div: GpuBuffer<f32>,
    one: GpuBuffer<f32>,
    prior_tape: Option<Tape>,
    next_planner_set: bool,
    adam: Adam,
    updates: u64,
    /// Agents trained side by side (1 unless made by [`WorldModelTrainer::population`]).
    agents: usize,
    /// Each agent's draws of the target heads.
    rngs: Vec<rand::rngs::StdRng>,
    /// Each agent's seed words for the TD policy noise `[agents, 2]`.
    seeds: GpuBuffer<u32>,
    /// With several agents: every target head's decoded values `[agents, heads, T B]`, and
    /// each agent's choice of two `[agents, 2, heads]` (one-hot rows).
    tq_all: GpuBuffer<f32>,
    head_sel: GpuBuffer<f32>,
    /// With several agents: one rollout step's latent gradients `[agents, B, L]`.
    dy_steps: GpuBuffer<f32>,
}

impl<'g> WorldModelTrainer<'g> {
    /// A trainer of `weights` (target Q heads start as a copy of the Q heads, or from
    /// `weights.extra` when the checkpoint carries them) for batches of `batch`.
    pub fn new(gpu: &'g Gpu, weights: &Weights, cfg: UpdateConfig, batch: usize) -> Result<Self> {
        Self::population(gpu, std::slice::from_ref(weights), &[cfg], batch)
    }

    /// The world-model updates of several agents recorded together: every network of every
    /// agent in the same dispatches (their parameters, gradients, targets and Adam states back
    /// to back), each agent's losses, gradient norm and draws its own, so that each agent's
    /// update is the one it would make alone. The agents share the model's shape, the batch
    /// size and every coefficient of the update but the seed (`cfgs[i]` is agent `i`'s);
    /// the KL-regularized critic target (`lambda_q > 0`) takes one agent.
    pub fn population(
        gpu: &'g Gpu,
        weights: &[Weights],
        cfgs: &[UpdateConfig],
        batch: usize,
    ) -> Result<Self> {
        let agents = weights.len();
        if agents == 0 || cfgs.len() != agents {
            return Err(Error::InvalidArgument(format!(
                "world-model population: {agents} agents' weights and {} configurations",
                cfgs.len()
            )));
        }
        let cfg = cfgs[0].clone();
        cfg.check()?;
        for (i, (w, c)) in weights.iter().zip(cfgs).enumerate() {
            w.check()?;
            if w.spec != weights[0].spec {
                return Err(Error::InvalidArgument(format!(
                    "world-model population: agent {i}'s model differs from agent 0's"
                )));
            }
            if (UpdateConfig {
                seed: cfg.seed,
                ..c.clone()
            }) != cfg
            {
                return Err(Error::InvalidArgument(format!(
                    "world-model population: agent {i}'s update differs from agent 0's in more \
                     than the seed"
                )));
            }
        }
        if agents > 1 && cfg.lambda_q != 0.0 {
            return Err(Error::InvalidArgument(
                "world-model population: the KL-regularized critic target (lambda_q > 0) \
                 trains one agent at a time"
                    .into(),
            ));
        }
        let spec = weights[0].spec.clone();
        if spec.episodic {
            return Err(Error::InvalidArgument(
                "training episodic models (termination head) is not supported yet".into(),
            ));
        }
        super::check_batch(batch)?;
        if spec.num_q < 2 {
            return Err(Error::InvalidArgument(format!(
                "TD targets average 2 different Q heads; the model has {}",
                spec.num_q
            )));
        }
        let layout = ParamLayout::new(&spec);
        let mut flat = Vec::with_capacity(agents * layout.len());
        let mut target_flat = Vec::with_capacity(agents * layout.len());
        for w in weights {
            let own = layout.flatten(w)?;
            let mut target = own.clone();
            for (name, t) in &w.extra {
                // `_target_Qs_params.<i>.<tensor>` mirrors `_Qs.params.<i>.<tensor>`.
                if let Some(rest) = name.strip_prefix("_target_Qs_params.") {
                    let own = format!("_Qs.params.{rest}");
                    if let Ok(off) = layout.offset(&own) {
                        target[off..off + t.data.len()].copy_from_slice(&t.data);
                    }
                }
            }
            flat.extend(own);
            target_flat.extend(target);
        }
        let q_range = layout.net(Net::Q);
        let (t, b) = (cfg.horizon, batch);
        let (o, a, l, bins, e) = (
            spec.obs_dim,
            spec.action_dim,
            spec.latent_dim,
            spec.num_bins,
            spec.num_q,
        );
        if cfg.tensor_cores {
            gpu.tensor_cores()?;
        }
        let net = |n: Net| -> Result<TrainNet> {
            Ok(TrainNet::new(&spec, &layout, n)?.with_tensor_cores(cfg.tensor_cores))
        };
        let enc = net(Net::Encoder)?;
        let dynamics = net(Net::Dynamics)?;
        let reward = net(Net::Reward)?;
        let pi = net(Net::Policy)?;
        let q = net(Net::Q)?;
        let f = |label: &str, n: usize| GpuBuffer::<f32>::new(gpu, label, n.max(1));
        // TD-MPC2's groups: the encoder at a reduced learning rate, then dynamics, reward
        // and the Q heads (the policy has its own optimizer).
        let groups = [
            ParamGroup::new(layout.net(Net::Encoder), cfg.enc_lr_scale),
            ParamGroup::new(
                layout.net(Net::Dynamics).start..layout.net(Net::Reward).end,
                1.0,
            ),
            ParamGroup::new(q_range.clone(), 1.0),
        ];
        let adam = Adam::population(
            gpu,
            layout.len(),
            &groups,
            AdamConfig {
                lr: cfg.lr,
                clip: Some(cfg.grad_clip_norm),
                ..AdamConfig::TDMPC2
            },
            agents,
        )?;
        let g = agents;
        let seed_words: Vec<u32> = cfgs
            .iter()
            .flat_map(|c| crate::rng::seed_words(c.seed))
            .collect();
        Ok(WorldModelTrainer {
            params: GpuBuffer::from_slice(gpu, "parameters", &flat)?,
            grads: f("gradients", g * layout.len())?,
            target: GpuBuffer::from_slice(gpu, "target parameters", &target_flat)?,
            enc_tape: if g == 1 {
                Tape::new(gpu, &enc, (t + 1) * b, 1, 1)?
            } else {
                Tape::new(gpu, &enc, t * b, g, 2)?
            },
            dyn_tape: Tape::new(gpu, &dynamics, b, g, t)?,
            rew_tape: Tape::new(gpu, &reward, t * b, g, 1)?,
            q_tape: Tape::new(gpu, &q, t * b, g * e, 1)?,
            pi_tape: Tape::new(gpu, &pi, t * b, g, 1)?,
            // One agent runs its two target heads; several run every head and pick two.
            tq_tape: if g == 1 {
                Tape::new(gpu, &q, t * b, 1, 2)?
            } else {
                Tape::new(gpu, &q, t * b, g * e, 1)?
            },
            obs: f("obs", g * (t + 1) * b * o)?,
            action: f("actions", g * t * b * a)?,
            reward_in: f("rewards", g * t * b)?,
            zs: f("zs", g * (t + 1) * b * l)?,
            dzs: f("dzs", g * (t + 1) * b * l)?,
            eps: f("TD policy noise", g * t * b * a)?,
            pi_action: f("TD policy actions", g * t * b * a)?,
            pi_stats: f(
                "TD policy stats",
                g * t * b * PolicyConfig::new(a).stats_width(),
            )?,
            tq_values: f("target Q values", 2 * g * t * b)?,
            td: f("TD targets", g * t * b)?,
            dlogits_r: f("reward logit gradients", g * t * b * bins)?,
            dlogits_q: f("Q logit gradients", g * e * t * b * bins)?,
            losses: f("losses", 8 * g)?,
            next_planner: f("next-state planner Gaussians", t * b * 2 * a)?,
            kl_div: f("TD target KL rows", t * b)?,
            next_planner_set: false,
            one: GpuBuffer::from_slice(gpu, "one", &[1.0f32])?,
            prior_tape: if cfg.lambda_q > 0.0 && cfg.kl_target == KlTarget::Adaptive {
                Some(Tape::new(gpu, &pi, t * b, 1, 1)?)
            } else {
                None
            },
            loss_scratch: f("loss partials", {
                let tcfg = TwoHotConfig::new(spec.num_bins, spec.vmin, spec.vmax)?;
                let ce = |m: usize| SoftCeConfig {
                    bins: tcfg,
                    members: m,
                    weights: RowWeights::uniform(1.0),
                    agents: Agents::ONE,
                };
                let mse = MseConfig {
                    n: l,
                    members: 1,
                    weights: RowWeights::uniform(1.0),
                    agents: Agents::ONE,
                };
                let per = loss::soft_ce_partials(&ce(e), t * b)
                    .max(loss::soft_ce_partials(&ce(1), t * b))
                    .max(loss::mse_partials(&mse, t * b));
                per * g
            })?,
            adam,
            updates: 0,
            agents,
            rngs: cfgs
                .iter()
                .map(|c| rand::rngs::StdRng::seed_from_u64(c.seed ^ 0x7464_6d70_6332))
                .collect(),
            seeds: GpuBuffer::from_slice(gpu, "TD noise seeds", &seed_words)?,
            tq_all: f(
                "every target head's values",
                if g > 1 { g * e * t * b } else { 1 },
            )?,
            head_sel: f("target head choice", if g > 1 { g * 2 * e } else { 1 })?,
            dy_steps: f("rollout step gradients", if g > 1 { g * b * l } else { 1 })?,
            enc,
            dynamics,
            reward,
            pi,
            q,
            gpu,
            layout,
            spec,
            cfg,
            batch,
        })
    }

    /// The dynamics' input at rollout step `s`, the same rows in the forward and the
    /// backward: the latents `z_s` and the actions `a_s` of each agent's batch.
    fn dynamics_input(&self, s: usize) -> NetInput<'_> {
        let (b, l, a) = (self.batch, self.spec.latent_dim, self.spec.action_dim);
        let t = self.cfg.horizon;
        NetInput::za((&self.zs, s * b * l), (&self.action, s * b * a))
            .per_agent((t + 1) * b * l, t * b * a)
    }

    /// Updates recorded so far (they number the noise streams).
    pub fn updates_made(&self) -> u64 {
        self.updates
    }

    /// Agents trained side by side.
    pub fn agents(&self) -> usize {
        self.agents
    }

    /// The parameter layout.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// The flat parameters on the GPU.
    pub fn params(&self) -> &GpuBuffer<f32> {
        &self.params
    }

    /// The flat gradients of the last update (before clipping) on the GPU.
    pub fn grads(&self) -> &GpuBuffer<f32> {
        &self.grads
    }

    /// The flat Polyak target parameters (only the Q range is used).
    pub fn target(&self) -> &GpuBuffer<f32> {
        &self.target
    }

    /// The optimizer (its moments and step counter, for checkpoints).
    pub fn adam(&self) -> &Adam {
        &self.adam
    }

    /// The rollout latents `[T + 1, B, latent]` of the last update (the policy update's input).
    pub fn latents(&self) -> &GpuBuffer<f32> {
        &self.zs
    }

    /// The TD targets `[T, B]` of the last update.
    pub fn td_targets(&self) -> &GpuBuffer<f32> {
        &self.td
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The configuration.
    pub fn config(&self) -> &UpdateConfig {
        &self.cfg
    }

    /// Floating-point operations of one update (forward, and backward at twice the forward).
    pub fn flops(&self) -> f64 {
        let (t, b, e) = (self.cfg.horizon, self.batch, self.spec.num_q);
        let tb = t * b;
        let trained = self.dynamics.flops(tb, 1) + self.reward.flops(tb, 1) + self.q.flops(tb, e);
        let forward =
            self.enc.flops((t + 1) * b, 1) + self.pi.flops(tb, 1) + self.q.flops(tb, 2) + trained;
        // Backward: dX and dW, twice the forward, for the trained passes and step 0's encoder.
        forward + 2.0 * (trained + self.enc.flops(b, 1))
    }

    /// Record copies of agent `i`'s training state (parameters, target Q heads, Adam moments
    /// and state) from the one-agent trainer `alone` of the same model (`into_population`) or
    /// back into it, and take over (or hand back) its head draws and update count: how a
    /// population takes over agents trained alone and returns them as it leaves them. The
    /// population's agents share one update count, so all that come in must have the same.
    pub fn record_exchange_agent(
        &mut self,
        rec: &mut Recorder,
        i: usize,
        alone: &mut WorldModelTrainer,
        into_population: bool,
    ) -> Result<()> {
        let same = alone.spec == self.spec;
        super::check_exchange("world-model", i, self.agents, alone.agents, same)?;
        let n = self.layout.len();
        for (pop, one) in [(&self.params, &alone.params), (&self.target, &alone.target)] {
            rec.copy_share(pop, i * n, one, n, into_population)?;
        }
        self.adam
            .record_exchange_agent(rec, i, &alone.adam, into_population)?;
        super::exchange_draws(
            "world-model",
            i,
            (&mut self.updates, &mut self.rngs),
            (&mut alone.updates, &mut alone.rngs),
            into_population,
        )
    }

    /// Download the parameters into `weights` (and the target Q heads into `weights.extra`);
    /// agent 0's in a population.
    pub fn weights(&self) -> Result<Weights> {
        self.agent_weights(0)
    }

    /// Agent `agent`'s parameters and target Q heads (as [`WorldModelTrainer::weights`]).
    pub fn agent_weights(&self, agent: usize) -> Result<Weights> {
        if agent >= self.agents {
            return Err(Error::InvalidArgument(format!(
                "agent {agent} of a population of {}",
                self.agents
            )));
        }
        let p = self.layout.len();
        let own = agent * p..(agent + 1) * p;
        let mut w = Weights::init(&self.spec, 0)?;
        self.layout
            .unflatten(&self.params.download(self.gpu)?[own.clone()], &mut w)?;
        let target = &self.target.download(self.gpu)?[own];
        for (name, shape, off) in self.layout.tensors() {
            if let Some(rest) = name.strip_prefix("_Qs.params.") {
                let n: usize = shape.iter().product();
                w.extra.insert(
                    format!("_target_Qs_params.{rest}"),
                    crate::model::Tensor {
                        shape: shape.to_vec(),
                        data: target[off..off + n].to_vec(),
                    },
                );
            }
        }
        Ok(w)
    }

    /// Upload a batch (checked) and choose the random inputs of its update (one agent).
    pub fn upload(&mut self, batch: &UpdateBatch) -> Result<[usize; 2]> {
        Ok(self.upload_agents(std::slice::from_ref(batch))?[0])
    }

    /// Upload each agent's batch (checked; all with their own policy noise or none) and
    /// choose each agent's target heads.
    pub fn upload_agents(&mut self, batches: &[UpdateBatch]) -> Result<Vec<[usize; 2]>> {
        let (t, b) = (self.cfg.horizon, self.batch);
        let (o, a) = (self.spec.obs_dim, self.spec.action_dim);
        if batches.len() != self.agents {
            return Err(Error::InvalidArgument(format!(
                "{} batches for a population of {} agents",
                batches.len(),
                self.agents
            )));
        }
        if batches
            .iter()
            .any(|x| x.pi_noise.is_some() != batches[0].pi_noise.is_some())
        {
            return Err(Error::InvalidArgument(
                "policy noise given for some agents' batches and not others".into(),
            ));
        }
        let check = |name: &str, v: &[f32], n: usize| -> Result<()> {
            if v.len() != n {
                return Err(Error::Shape(format!(
                    "{name}: {} values, a batch of {b} with horizon {t} needs {n}",
                    v.len()
                )));
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::InvalidArgument(format!(
                    "{name}[{i}] is {} (not finite)",
                    v[i]
                )));
            }
            Ok(())
        };
        for batch in batches {
            check("obs", &batch.obs, (t + 1) * b * o)?;
            check("action", &batch.action, t * b * a)?;
            check("reward", &batch.reward, t * b)?;
            if let Some(noise) = &batch.pi_noise {
                check("pi_noise", noise, t * b * a)?;
            }
            if let Some(h) = batch.target_heads
                && (h[0] == h[1] || h.iter().any(|&i| i >= self.spec.num_q))
            {
                return Err(Error::InvalidArgument(format!(
                    "target heads {h:?}: two different heads of {}",
                    self.spec.num_q
                )));
            }
        }
        let mut heads = Vec::with_capacity(self.agents);
        for (i, batch) in batches.iter().enumerate() {
            self.obs
                .upload_at(self.gpu, i * (t + 1) * b * o, &batch.obs)?;
            self.action
                .upload_at(self.gpu, i * t * b * a, &batch.action)?;
            self.reward_in
                .upload_at(self.gpu, i * t * b, &batch.reward)?;
            if let Some(noise) = &batch.pi_noise {
                self.eps.upload_at(self.gpu, i * t * b * a, noise)?;
            }
            heads.push(match batch.target_heads {
                Some(h) => h,
                None => self.draw_heads(i)?,
            });
        }
        Ok(heads)
    }

    /// Draw the target heads of the next update without uploading data (benchmarks reuse
    /// one uploaded batch); agent 0's.
    pub fn upload_heads_only(&mut self) -> Result<[usize; 2]> {
        self.draw_heads(0)
    }

    /// Every agent's target heads of the next update, drawn without uploading data.
    pub fn draw_agent_heads(&mut self) -> Result<Vec<[usize; 2]>> {
        (0..self.agents).map(|i| self.draw_heads(i)).collect()
    }

    /// Agent `agent`'s two different target heads of the next update.
    fn draw_heads(&mut self, agent: usize) -> Result<[usize; 2]> {
        let n = self.spec.num_q;
        if n < 2 {
            return Err(Error::InvalidArgument(format!(
                "TD targets need 2 Q heads, the model has {n}"
            )));
        }
        let rng = &mut self.rngs[agent];
        let first = rng.random_range(0..n);
        let second = (first + rng.random_range(1..n)) % n;
        Ok([first, second])
    }

    /// The losses buffer: the consistency, reward and value losses times their
    /// coefficients, in slots 0, 1, 2.
    pub fn losses_buffer(&self) -> &GpuBuffer<f32> {
        &self.losses
    }

    /// Upload `batch`, run one update in one submit, and read back the losses.
    pub fn update(&mut self, batch: &UpdateBatch) -> Result<UpdateLosses> {
        self.update_inner(batch, None)
    }

    /// [`WorldModelTrainer::update`] with the adaptive prior's flat parameters, for the
    /// KL-regularized critic target with [`KlTarget::Adaptive`].
    pub fn update_with_prior(
        &mut self,
        batch: &UpdateBatch,
        prior: &GpuBuffer<f32>,
    ) -> Result<UpdateLosses> {
        self.update_inner(batch, Some(prior))
    }

    /// Upload the planner's Gaussians at the next states `s_1..s_T` of the batch, `[T, B,
    /// 2A]` with rows `[mean | std]`: the prior of the KL-regularized critic target with
    /// [`KlTarget::Planner`].
    pub fn set_next_planner(&mut self, gaussians: &[f32]) -> Result<()> {
        if gaussians.len() != self.next_planner.len() {
            return Err(Error::Shape(format!(
                "next-state planner Gaussians: {} values, {} needed",
                gaussians.len(),
                self.next_planner.len()
            )));
        }
        let a = self.spec.action_dim;
        if let Some(i) = gaussians
            .chunks(2 * a)
            .position(|r| r.iter().any(|v| !v.is_finite()) || r[a..].iter().any(|s| *s <= 0.0))
        {
            return Err(Error::InvalidArgument(format!(
                "next-state planner Gaussian of row {i}: means must be finite, stds > 0"
            )));
        }
        self.next_planner.upload(self.gpu, gaussians)?;
        self.next_planner_set = true;
        Ok(())
    }

    fn update_inner(
        &mut self,
        batch: &UpdateBatch,
        prior: Option<&GpuBuffer<f32>>,
    ) -> Result<UpdateLosses> {
        let heads = self.upload(batch)?;
        let mut rec = Recorder::new(self.gpu);
        self.record_losses_and_grads(&mut rec, heads, batch.pi_noise.is_none(), prior)?;
        self.record_optimizer(&mut rec)?;
        let hl = rec.read(&self.losses);
        let hs = rec.read(self.adam.state_buffer());
        let out = rec.finish()?;
        let l = out.get(&hl)?;
        let state = AdamState::from_words(&out.get(&hs)?)?;
        Ok(self.losses_from(&l, state.grad_norm.unwrap_or(f32::NAN)))
    }

    /// Upload `batch` and compute the losses and gradients only (no optimizer step): the
    /// gradients stay in [`WorldModelTrainer::grads`].
    pub fn losses_and_grads(&mut self, batch: &UpdateBatch) -> Result<UpdateLosses> {
        let heads = self.upload(batch)?;
        let mut rec = Recorder::new(self.gpu);
        self.record_losses_and_grads(&mut rec, heads, batch.pi_noise.is_none(), None)?;
        let hl = rec.read(&self.losses);
        let l = rec.finish()?.get(&hl)?;
        Ok(self.losses_from(&l, f32::NAN))
    }

    /// Upload each agent's batch, run every agent's update in one submit, and read back each
    /// agent's losses (and gradient norm).
    pub fn update_agents(&mut self, batches: &[UpdateBatch]) -> Result<Vec<UpdateLosses>> {
        let heads = self.upload_agents(batches)?;
        let mut rec = Recorder::new(self.gpu);
        let draw = batches[0].pi_noise.is_none();
        self.record_agents(&mut rec, &heads, draw, None)?;
        self.record_optimizer(&mut rec)?;
        let hl = rec.read(&self.losses);
        let hs = rec.read(self.adam.state_buffer());
        let out = rec.finish()?;
        let l = out.get(&hl)?;
        let norms = AdamState::grad_norms(&out.get(&hs)?)?;
        let each = l.chunks(LOSS_SLOTS).zip(norms);
        Ok(each.map(|(l, n)| self.losses_from(l, n)).collect())
    }

    /// Decode a read-back of [`WorldModelTrainer::losses_buffer`] with the gradient norm
    /// read elsewhere (NaN if unknown).
    pub fn decode_losses(&self, l: &[f32], grad_norm: f32) -> UpdateLosses {
        self.losses_from(l, grad_norm)
    }

    fn losses_from(&self, l: &[f32], grad_norm: f32) -> UpdateLosses {
        let c = &self.cfg;
        let div = |v: f32, coef: f32| if coef > 0.0 { v / coef } else { 0.0 };
        UpdateLosses {
            consistency: div(l[L_CONSISTENCY], c.consistency_coef),
            reward: div(l[L_REWARD], c.reward_coef),
            value: div(l[L_VALUE], c.value_coef),
            total: l[L_CONSISTENCY] + l[L_REWARD] + l[L_VALUE],
            grad_norm,
        }
    }

    /// Record the forward passes, losses and backward passes of one update on the uploaded
    /// batch, with target heads `heads`; `draw_noise` draws the TD policy noise on the GPU;
    /// `prior` is the adaptive prior's flat parameters when the critic target is
    /// KL-regularized against it (one agent).
    pub fn record_losses_and_grads(
        &mut self,
        rec: &mut Recorder,
        heads: [usize; 2],
        draw_noise: bool,
        prior: Option<&GpuBuffer<f32>>,
    ) -> Result<()> {
        self.record_agents(rec, &[heads], draw_noise, prior)
    }

    /// [`WorldModelTrainer::record_losses_and_grads`] for every agent, agent `i` with target
    /// heads `heads[i]`.
    pub fn record_agents(
        &mut self,
        rec: &mut Recorder,
        heads: &[[usize; 2]],
        draw_noise: bool,
        prior: Option<&GpuBuffer<f32>>,
    ) -> Result<()> {
        let g = self.agents;
        if heads.len() != g {
            return Err(Error::InvalidArgument(format!(
                "{} agents' target heads for a population of {g}",
                heads.len()
            )));
        }
        let (t, b) = (self.cfg.horizon, self.batch);
        let (a, l, bins, e) = (
            self.spec.action_dim,
            self.spec.latent_dim,
            self.spec.num_bins,
            self.spec.num_q,
        );
        let tb = t * b;
        let c = self.cfg.clone();
        let p = &self.params;
        let o = self.spec.obs_dim;
        // Element strides between agents: each agent's rollout (T + 1 steps of latents),
        // actions, and T B rows of anything per row.
        let (z_as, a_as) = ((t + 1) * b * l, tb * a);
        let agent = |i: usize| Members::one(i).of_agents(g);
        let rows_of = |count: usize, src: usize, tgt: usize, grad: usize| Agents {
            count,
            src_stride: src,
            tgt_stride: tgt,
            grad_stride: grad,
            slot_stride: LOSS_SLOTS,
        };
        rec.clear(&self.grads);
        rec.clear(&self.losses);
        rec.clear(&self.dzs);
        // Encoder over all T + 1 steps: step 0 starts the rollout, steps 1..=T are the
        // consistency targets (no gradient flows into them). One agent encodes them in one
        // pass; a population in two (step 0, then steps 1..=T), so that each pass's rows are
        // what its backward reads per agent.
        let obs_as = (t + 1) * b * o;
        let (enc0, next) = if g == 1 {
            let all = NetInput::z(&self.obs, 0);
            self.enc
                .forward(rec, p, (t + 1) * b, agent(0), all, &self.enc_tape, 0)?;
            let (out, off) = self.enc_tape.output(&self.enc, 0);
            ((out, off), (out, off + b * l, 0))
        } else {
            let first = NetInput::z(&self.obs, 0).per_agent(obs_as, 0);
            self.enc
                .forward(rec, p, b, agent(0), first, &self.enc_tape, 0)?;
            let rest = NetInput::z(&self.obs, b * o).per_agent(obs_as, 0);
            self.enc
                .forward(rec, p, tb, agent(0), rest, &self.enc_tape, 1)?;
            let (out, off) = self.enc_tape.output(&self.enc, 1);
            (self.enc_tape.output(&self.enc, 0), (out, off, tb * l))
        };
        for i in 0..g {
            rec.copy_range(enc0.0, enc0.1 + i * b * l, &self.zs, i * z_as, b * l)?;
        }
        // TD targets: a' ~ pi(z'), y = r + gamma min(two target heads)(z', a').
        let (next_buf, next_off, next_as) = next;
        let next_z = (next_buf, next_off);
        let next_in = NetInput::z(next_buf, next_off).per_agent(next_as, 0);
        self.pi
            .forward(rec, p, tb, agent(0), next_in, &self.pi_tape, 0)?;
        if draw_noise {
            let stream = (self.updates as u32).wrapping_mul(2);
            if g == 1 {
                record_fill(rec, &self.eps, Distribution::Normal, c.seed, stream)?;
            } else {
                let per = tb * a;
                record_fill_agents(
                    rec,
                    &self.eps,
                    Distribution::Normal,
                    &self.seeds,
                    per,
                    stream,
                )?;
            }
        }
        let (pi_out, pi_off) = self.pi_tape.output(&self.pi, 0);
        let pcfg =
            PolicyConfig::new(a).with_log_std_range(self.spec.log_std_min, self.spec.log_std_max);
        policy::record_sample_at(
            rec,
            &pcfg,
            g * tb,
            PolicyBuffers {
                h: pi_out,
                eps: &self.eps,
                action: &self.pi_action,
                stats: &self.pi_stats,
            },
            PolicyOffsets {
                h: pi_off,
                ..Default::default()
            },
        )?;
        let tcfg = TwoHotConfig::new(self.spec.num_bins, self.spec.vmin, self.spec.vmax)?;
        let target_in = NetInput::za(next_z, (&self.pi_action, 0)).per_agent(next_as, a_as);
        if g == 1 {
            for (s, &h) in heads[0].iter().enumerate() {
                let one = Members::one(h);
                self.q
                    .forward(rec, &self.target, tb, one, target_in, &self.tq_tape, s)?;
                let (qo, qoff) = self.tq_tape.output(&self.q, s);
                two_hot::record_decode_strided(
                    rec,
                    &tcfg,
                    tb,
                    qo,
                    RowLayout::at(qoff, bins),
                    &self.tq_values,
                    RowLayout::at(s * tb, 1),
                )?;
            }
        } else {
            // Agents choose different heads: every head runs, and a one-hot product per
            // agent picks its two values (exactly: products by 1 and 0), into [2, agents, T B].
            let all = Members::range(0, e).of_agents(g);
            self.q
                .forward(rec, &self.target, tb, all, target_in, &self.tq_tape, 0)?;
            let (qo, qoff) = self.tq_tape.output(&self.q, 0);
            two_hot::record_decode_strided(
                rec,
                &tcfg,
                g * e * tb,
                qo,
                RowLayout::at(qoff, bins),
                &self.tq_all,
                RowLayout::at(0, 1),
            )?;
            let mut sel = vec![0.0f32; g * 2 * e];
            for (i, h) in heads.iter().enumerate() {
                for (s, &hd) in h.iter().enumerate() {
                    sel[(i * 2 + s) * e + hd] = 1.0;
                }
            }
            // Written at the next submit, before its commands: record and submit one update
            // before recording the next.
            self.head_sel.upload(self.gpu, &sel)?;
            gemm::record(
                rec,
                &Gemm {
                    batch: g,
                    agents: g,
                    ..Gemm::new(2, tb, e)
                },
                Operands::new(
                    Mat::rows(&self.head_sel, e).per_agent(2 * e),
                    Mat::rows(&self.tq_all, tb).per_agent(e * tb),
                    Mat::rows(&self.tq_values, g * tb).per_agent(tb),
                ),
            )?;
        }
        record_td_target(
            rec,
            g * tb,
            c.discount,
            &self.reward_in,
            &self.tq_values,
            g * tb,
            &self.td,
        )?;
        if c.lambda_q > 0.0 {
            // D = log pi(a'|z') - log pi_p(a'|z') for the TD sample (same h, same noise),
            // then y -= gamma lambda_Q D as a rank-1 GEMM.
            let h_rows = pl::Rows::at(pi_out, RowLayout::at(pi_off, 2 * a));
            let head = pl::PolicyHead {
                action_dim: a,
                param: pl::Param::Squashed,
                log_std_min: self.spec.log_std_min,
                log_std_max: self.spec.log_std_max,
            };
            let prior_input = match c.kl_target {
                KlTarget::Planner => pl::PriorInput::Gaussian,
                KlTarget::Adaptive => pl::PriorInput::Network {
                    log_std_min: head.log_std_min,
                    log_std_max: head.log_std_max,
                },
            };
            let kcfg = pl::PolicyLossConfig {
                kl: Some(pl::KlTerm {
                    coef: 1.0,
                    form: pl::KlForm::SingleSample,
                    reduce: pl::DimReduce::Sum,
                    prior: prior_input,
                    ..pl::KlTerm::bmpc()
                }),
                c_q: 0.0,
                ..pl::PolicyLossConfig::tdmpc2(a, RowWeights::uniform(1.0))
            };
            let prior_rows = match c.kl_target {
                KlTarget::Planner if !self.next_planner_set => {
                    return Err(Error::InvalidArgument(
                        "the KL-regularized target against the planner needs the next states' \
                         Gaussians: call set_next_planner"
                            .into(),
                    ));
                }
                KlTarget::Planner => pl::Rows::new(&self.next_planner, 2 * a),
                KlTarget::Adaptive => {
                    let (pp, tape) = prior.zip(self.prior_tape.as_ref()).ok_or_else(|| {
                        Error::InvalidArgument(
                            "the KL-regularized target against the adaptive prior needs its \
                             parameters: use update_with_prior"
                                .into(),
                        )
                    })?;
                    if pp.len() != self.layout.len() {
                        return Err(Error::Shape(format!(
                            "prior parameters: {} values, the layout holds {}",
                            pp.len(),
                            self.layout.len()
                        )));
                    }
                    self.pi.forward(
                        rec,
                        pp,
                        tb,
                        Members::one(0),
                        NetInput {
                            z: next_z,
                            a: None,
                            agent_strides: (0, 0),
                        },
                        tape,
                        0,
                    )?;
                    let (po, poff) = tape.output(&self.pi, 0);
                    pl::Rows::at(po, RowLayout::at(poff, 2 * a))
                }
            };
            let mut inputs = pl::PolicyInputs::new(h_rows, pl::Rows::new(&self.eps, a));
            inputs.prior = Some(prior_rows);
            let div = pl::Pass::Divergence(pl::Rows::new(&self.kl_div, 1));
            pl::record_policy_loss(rec, &kcfg, tb, &inputs, div)?;
            gemm::record(
                rec,
                &Gemm {
                    alpha: -c.discount * c.lambda_q,
                    accumulate: true,
                    ..Gemm::new(1, tb, 1)
                },
                Operands::new(
                    Mat::rows(&self.one, 1),
                    Mat::rows(&self.kl_div, tb),
                    Mat::rows(&self.td, tb),
                ),
            )?;
        }
        // Latent rollout z_{t+1} = d(z_t, a_t) and the consistency loss against h(s_{t+1}).
        let w_cons = RowWeights::new(c.consistency_coef / (t * b * l) as f32, c.rho, b);
        for s in 0..t {
            let input = self.dynamics_input(s);
            self.dynamics
                .forward(rec, p, b, agent(0), input, &self.dyn_tape, s)?;
            let (d_out, d_off) = self.dyn_tape.output(&self.dynamics, s);
            for i in 0..g {
                let dst = i * z_as + (s + 1) * b * l;
                rec.copy_range(d_out, d_off + i * b * l, &self.zs, dst, b * l)?;
            }
        }
        loss::record_mse(
            rec,
            &MseConfig {
                n: l,
                members: 1,
                weights: w_cons,
                agents: rows_of(g, z_as, next_as, z_as),
            },
            tb,
            &self.zs,
            RowLayout::at(b * l, l),
            next_buf,
            RowLayout::at(next_off, l),
            Some(GradOut {
                buf: &self.dzs,
                at: RowLayout::at(b * l, l),
                accumulate: true,
            }),
            LossOut {
                losses: &self.losses,
                index: L_CONSISTENCY,
                accumulate: true,
            },
            Some(&self.loss_scratch),
        )?;
        // Reward and value predictions from the rollout latents z_0..z_{T-1} and the actions.
        let inp = NetInput::za((&self.zs, 0), (&self.action, 0)).per_agent(z_as, a_as);
        self.reward
            .forward(rec, p, tb, agent(0), inp, &self.rew_tape, 0)?;
        let (r_out, r_off) = self.rew_tape.output(&self.reward, 0);
        loss::record_soft_ce(
            rec,
            &SoftCeConfig {
                bins: tcfg,
                members: 1,
                weights: RowWeights::new(c.reward_coef / tb as f32, c.rho, b),
                agents: rows_of(g, tb * bins, tb, tb * bins),
            },
            tb,
            r_out,
            RowLayout::at(r_off, bins),
            &self.reward_in,
            RowLayout::contiguous(1),
            Some(GradOut {
                buf: &self.dlogits_r,
                at: RowLayout::contiguous(bins),
                accumulate: false,
            }),
            LossOut {
                losses: &self.losses,
                index: L_REWARD,
                accumulate: true,
            },
            Some(&self.loss_scratch),
        )?;
        let all_q = Members::range(0, e).of_agents(g);
        self.q.forward(rec, p, tb, all_q, inp, &self.q_tape, 0)?;
        let (q_out, q_off) = self.q_tape.output(&self.q, 0);
        loss::record_soft_ce(
            rec,
            &SoftCeConfig {
                bins: tcfg,
                members: e,
                weights: RowWeights::new(c.value_coef / (tb * e) as f32, c.rho, b),
                agents: rows_of(g, e * tb * bins, tb, e * tb * bins),
            },
            tb,
            q_out,
            RowLayout::at(q_off, bins),
            &self.td,
            RowLayout::contiguous(1),
            Some(GradOut {
                buf: &self.dlogits_q,
                at: RowLayout::contiguous(bins),
                accumulate: false,
            }),
            LossOut {
                losses: &self.losses,
                index: L_VALUE,
                accumulate: true,
            },
            Some(&self.loss_scratch),
        )?;
        // Backward: heads into dzs[0..T], then the dynamics from the last step down, each
        // adding its input gradient into the step before, then the encoder on step 0.
        let g_buf = &self.grads;
        let into_dzs = |off: usize| Grads {
            params: Some(g_buf),
            dz: Some((&self.dzs, off, true)),
            da: None,
        };
        self.reward.backward(
            rec,
            p,
            tb,
            agent(0),
            inp,
            &self.rew_tape,
            0,
            (&self.dlogits_r, 0),
            into_dzs(0),
        )?;
        self.q.backward(
            rec,
            p,
            tb,
            all_q,
            inp,
            &self.q_tape,
            0,
            (&self.dlogits_q, 0),
            into_dzs(0),
        )?;
        for s in (0..t).rev() {
            // The gradient at z_{s+1}, [agents, B, L] as the backward reads it: in place for
            // one agent, gathered from each agent's rollout for several.
            let dy = if g == 1 {
                (&self.dzs, (s + 1) * b * l)
            } else {
                for i in 0..g {
                    let src = i * z_as + (s + 1) * b * l;
                    rec.copy_range(&self.dzs, src, &self.dy_steps, i * b * l, b * l)?;
                }
                (&self.dy_steps, 0)
            };
            self.dynamics.backward(
                rec,
                p,
                b,
                agent(0),
                self.dynamics_input(s),
                &self.dyn_tape,
                s,
                dy,
                into_dzs(s * b * l),
            )?;
        }
        if g > 1 {
            for i in 0..g {
                rec.copy_range(&self.dzs, i * z_as, &self.dy_steps, i * b * l, b * l)?;
            }
        }
        let enc_dy = if g == 1 {
            (&self.dzs, 0)
        } else {
            (&self.dy_steps, 0)
        };
        self.enc.backward(
            rec,
            p,
            b,
            agent(0),
            NetInput::z(&self.obs, 0).per_agent(obs_as, 0),
            &self.enc_tape,
            0,
            enc_dy,
            Grads {
                params: Some(g_buf),
                dz: None,
                da: None,
            },
        )?;
        self.updates += 1;
        Ok(())
    }

    /// Record the clipped Adam step over the world-model parameters and the Polyak update of
    /// the target Q heads.
    pub fn record_optimizer(&mut self, rec: &mut Recorder) -> Result<()> {
        self.adam.record_step(rec, &self.params, &self.grads)?;
        let q = self.layout.net(Net::Q);
        let span = PolyakSpan {
            source: q.start,
            target: q.start,
            len: q.end - q.start,
        };
        record_polyak_agents(
            rec,
            &self.params,
            &self.target,
            &[span],
            self.cfg.tau,
            self.agents,
        )
    }
}
