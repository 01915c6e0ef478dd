//! The PO-MPC family's policy update on the GPU (`../shared/docs/algorithm.md` a.3 to a.5, c.1,
//! c.2), recorded into one submit: the policy sample on the detached rollout latents, the
//! frozen Q heads' average and its action gradient (backpropagated through two chosen heads),
//! TD-MPC2's running Q scale, the adaptive prior's fit and Adam step, the KL and
//! log-likelihood terms with their running scales, the policy's backward pass, clipping and
//! Adam. Every coefficient is a public field; [`PolicyUpdateConfig`] has the four presets.
//!
//! ```no_run
//! # fn main() -> pompc::Result<()> {
//! use pompc::model::{ModelSpec, Weights};
//! use pompc::train::{PolicyTrainer, PolicyUpdateConfig, UpdateConfig, WorldModelTrainer};
//! let gpu = pompc::Gpu::new(Default::default())?;
//! let spec = ModelSpec::tdmpc2(5, 24, 6)?;
//! let weights = Weights::init(&spec, 0)?;
//! let world = WorldModelTrainer::new(&gpu, &weights, UpdateConfig::tdmpc2(), 256)?;
//! let mut pi = PolicyTrainer::new(&gpu, &spec, PolicyUpdateConfig::pompc(6, 1.0), 256)?;
//! // After a world-model update: the planner Gaussians of the batch, [T', B, 2A].
//! pi.set_planner(&vec![0.5; 3 * 256 * 12])?;
//! let losses = pi.update(world.params(), world.latents())?;
//! println!("{losses:?}");
//! # Ok(()) }
//! ```

use super::mlp::{Grads, Members, NetInput, Tape, TrainNet};
use super::params::ParamLayout;
use crate::gpu::{Gpu, GpuBuffer, Recorder};
use crate::kernels::gemm::{self, Gemm, Mat, Operands};
use crate::kernels::loss::{GradOut, LossOut, RowWeights};
use crate::kernels::optim::{Adam, AdamConfig, AdamState, ParamGroup, RunningScale};
use crate::kernels::policy_loss::{
    self as pl, KlForm, Pass, PolicyHead, PolicyInputs, PolicyLossConfig, PriorFitConfig,
    PriorFitInputs, QInput, Rows, Scalar,
};
use crate::kernels::rng_fill::{Distribution, record_fill, record_fill_agents};
use crate::kernels::td::{record_decode_grad, record_decode_grad_weighted};
use crate::kernels::two_hot::{self, RowLayout, TwoHotConfig};
use crate::model::{ModelSpec, Net, Weights};
use crate::{Error, Result};
use rand::{Rng, SeedableRng};

/// Which distribution the policy is regularized towards, and where it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriorKind {
    /// No prior (TD-MPC2).
    None,
    /// The planner's stored first-step Gaussians (BMPC, TD-M(PC)²).
    Planner,
    /// The adaptive prior network pi_psi, fitted to the planner's Gaussians in the same
    /// submit (PO-MPC).
    Adaptive,
}

/// The policy update's configuration: the loss (every coefficient of a.3.2, in
/// [`PolicyLossConfig`]), the prior, the adaptive prior's fit, and the optimizer.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyUpdateConfig {
    /// The loss terms and the policy head (row weights are set by the trainer from `states`,
    /// `rho` and the batch).
    pub loss: PolicyLossConfig,
    /// The prior of the KL term (and the source of the LL term's planner Gaussians).
    pub prior: PriorKind,
    /// The adaptive prior's fitting loss (direction, dimension reduction); used with
    /// [`PriorKind::Adaptive`].
    pub prior_fit: PriorFitConfig,
    /// Latent states per sub-trajectory in the loss, T' (TD-MPC2: 4; the others: 3).
    pub states: usize,
    /// Per-step weight rho (0.5).
    pub rho: f32,
    /// Adam learning rate of the policy and of the prior (3e-4).
    pub lr: f32,
    /// Adam eps (TD-MPC2's policy optimizer: 1e-5).
    pub adam_eps: f32,
    /// Global gradient-norm clip (20).
    pub grad_clip_norm: f32,
    /// Polyak rate of the running scales (0.01).
    pub scale_tau: f32,
    /// Initial value of the Q scale (TD-MPC2: 1).
    pub q_scale_init: f32,
    /// Seed of the policy noise and the Q-head choice.
    pub seed: u64,
    /// The networks' products on tensor cores, as [`super::UpdateConfig::tensor_cores`].
    pub tensor_cores: bool,
}

impl PolicyUpdateConfig {
    fn base(loss: PolicyLossConfig, prior: PriorKind, states: usize) -> Self {
        PolicyUpdateConfig {
            prior_fit: PriorFitConfig::new(loss.head, RowWeights::uniform(1.0)),
            loss,
            prior,
            states,
            rho: 0.5,
            lr: 3e-4,
            adam_eps: 1e-5,
            grad_clip_norm: 20.0,
            scale_tau: 0.01,
            q_scale_init: 1.0,
            seed: 0,
            tensor_cores: false,
        }
    }

    /// TD-MPC2 (lambda = 0): `-(alpha H + Q / S_Q)` on z_0..z_3, squashed policy.
    pub fn tdmpc2(action_dim: usize) -> Self {
        let w = RowWeights::uniform(1.0);
        Self::base(PolicyLossConfig::tdmpc2(action_dim, w), PriorKind::None, 4)
    }

    /// BMPC (lambda -> infinity): `KL(pi || planner) / S_KL - alpha H` (closed form, mean over
    /// dimensions) on z_0..z_2, tanh-mean-clamp policy with log-std in [-3, 1], no Q term.
    pub fn bmpc(action_dim: usize) -> Self {
        let w = RowWeights::uniform(1.0);
        Self::base(PolicyLossConfig::bmpc(action_dim, w), PriorKind::Planner, 3)
    }

    /// TD-M(PC)²: TD-MPC2's terms on z_0..z_2 (with the original log-prob entropy) plus the
    /// planner log-likelihood of the sample, weighted `A / 61`, on while `S_Q > 2`.
    pub fn tdmpc_square(action_dim: usize) -> Self {
        let w = RowWeights::uniform(1.0);
        Self::base(
            PolicyLossConfig::tdmpc_square(action_dim, w),
            PriorKind::Planner,
            3,
        )
    }

    /// PO-MPC (a.7 defaults): `-Q / S_Q - alpha H + lambda KL(pi || pi_psi) / S_KL` on
    /// z_0..z_2 with the single-sample KL of the squashed policy against the adaptive prior,
    /// which is fitted to the planner Gaussians by reverse KL.
    pub fn pompc(action_dim: usize, lambda: f32) -> Self {
        let w = RowWeights::uniform(1.0);
        Self::base(
            PolicyLossConfig::pompc(PolicyHead::tdmpc2(action_dim), lambda, w),
            PriorKind::Adaptive,
            3,
        )
    }

    /// The same loss with lambda read as a convex weight `w = lambda / (1 + lambda)`:
    /// `(1 - w)` on the Q term and `w` on the KL term (a.3.6).
    pub fn convex(mut self, lambda: f32) -> Self {
        let w = lambda / (1.0 + lambda);
        self.loss.c_q = 1.0 - w;
        if let Some(k) = &mut self.loss.kl {
            k.coef = w;
        }
        self
    }

    /// The same loss with the adaptive prior fitted by forward KL (mass-covering).
    pub fn with_forward_prior_fit(mut self) -> Self {
        self.prior_fit.form = KlForm::Forward;
        self
    }

    /// The per-agent coefficients a population may vary: `(c_q, alpha, c_kl, c_ll)`.
    fn coefs(&self) -> [f32; 4] {
        let l = &self.loss;
        [
            l.c_q,
            l.alpha,
            l.kl.map_or(0.0, |k| k.coef),
            l.ll.map_or(0.0, |t| t.coef),
        ]
    }

    /// This config with `other`'s seed and coefficients: equal to `other` exactly when the two
    /// can share a population's dispatches.
    pub(crate) fn shared_with(&self, other: &Self) -> Self {
        let mut c = self.clone();
        c.seed = other.seed;
        c.loss.c_q = other.loss.c_q;
        c.loss.alpha = other.loss.alpha;
        if let (Some(k), Some(o)) = (&mut c.loss.kl, &other.loss.kl) {
            k.coef = o.coef;
        }
        if let (Some(t), Some(o)) = (&mut c.loss.ll, &other.loss.ll) {
            t.coef = o.coef;
        }
        c
    }

    fn check(&self, action_dim: usize) -> Result<()> {
        self.loss.check()?;
        self.prior_fit.check()?;
        if self.loss.head.action_dim != action_dim {
            return Err(Error::Shape(format!(
                "policy loss for {} actions, the model has {action_dim}",
                self.loss.head.action_dim
            )));
        }
        if self.states == 0 {
            return Err(Error::InvalidArgument(
                "policy update over 0 latent states".into(),
            ));
        }
        let wants_planner = self.loss.ll.is_some()
            || self
                .loss
                .kl
                .is_some_and(|k| k.prior == pl::PriorInput::Gaussian);
        if wants_planner && self.prior != PriorKind::Planner {
            return Err(Error::InvalidArgument(
                "the loss reads the planner Gaussians directly: use PriorKind::Planner".into(),
            ));
        }
        if self
            .loss
            .kl
            .is_some_and(|k| matches!(k.prior, pl::PriorInput::Network { .. }))
            && self.prior != PriorKind::Adaptive
        {
            return Err(Error::InvalidArgument(
                "the KL term reads a prior network: use PriorKind::Adaptive".into(),
            ));
        }
        if self.states > super::MAX_UPDATE_HORIZON + 1 {
            return Err(Error::InvalidArgument(format!(
                "policy update over {} latent states, at most {}",
                self.states,
                super::MAX_UPDATE_HORIZON + 1
            )));
        }
        // (name, value, lowest, highest, lowest excluded)
        for (name, v, lo, hi, open) in [
            ("rho", self.rho, 0.0, 1.0, false),
            ("lr", self.lr, 0.0, 1.0, false),
            ("adam_eps", self.adam_eps, 0.0, 1.0, false),
            ("grad_clip_norm", self.grad_clip_norm, 0.0, f32::MAX, false),
            ("scale_tau", self.scale_tau, 0.0, 1.0, false),
            // The Q term divides by the scale.
            ("q_scale_init", self.q_scale_init, 0.0, 1e30, true),
        ] {
            let ok = v.is_finite() && v <= hi && if open { v > lo } else { v >= lo };
            if !ok {
                return Err(Error::InvalidArgument(format!(
                    "policy update: {name} = {v} outside {}{lo}, {hi:e}]",
                    if open { "(" } else { "[" }
                )));
            }
        }
        Ok(())
    }
}

/// The losses of one policy update: the weighted terms as differentiated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyLosses {
    /// `sum w (-c_q Q / S_Q)`.
    pub q: f32,
    /// `sum w (-alpha H)`.
    pub entropy: f32,
    /// `sum w c_kl D / S_KL`.
    pub kl: f32,
    /// `sum w (-gate c_ll ell / S_Q)`.
    pub ll: f32,
    /// The policy loss.
    pub total: f32,
    /// The adaptive prior's fitting loss (0 without one).
    pub prior_fit: f32,
    /// The policy's gradient norm before clipping.
    pub grad_norm: f32,
}

// Slots of the losses buffer (per agent).
const SLOT_POLICY: usize = 0; // 5 slots from here (pl::POLICY_TERMS)
const SLOT_PRIOR: usize = 5;
/// Loss slots per agent.
const LOSS_SLOTS: usize = 8;

/// The PO-MPC family's policy update for batches of `batch` sub-trajectories.
pub struct PolicyTrainer<'g> {
    gpu: &'g Gpu,
    spec: ModelSpec,
    layout: ParamLayout,
    cfg: PolicyUpdateConfig,
    batch: usize,
    pi: TrainNet,
    q: TrainNet,
    pi_tape: Tape,
    q_tape: Tape,
    prior_tape: Option<Tape>,
    grads: GpuBuffer<f32>,
    adam: Adam,
    prior_params: Option<GpuBuffer<f32>>,
    prior_grads: Option<GpuBuffer<f32>>,
    prior_adam: Option<Adam>,
    s_q: RunningScale,
    s_kl: RunningScale,
    s_d: RunningScale,
    eps: GpuBuffer<f32>,
    action: GpuBuffer<f32>,
    q_vals: GpuBuffer<f32>,
    q_avg: GpuBuffer<f32>,
    half: GpuBuffer<f32>,
    dq_logits: GpuBuffer<f32>,
    dq_da: GpuBuffer<f32>,
    dh: GpuBuffer<f32>,
    dprior: GpuBuffer<f32>,
    div: GpuBuffer<f32>,
    planner: GpuBuffer<f32>,
    losses: GpuBuffer<f32>,
    scratch: GpuBuffer<f32>,
    updates: u64,
    /// Agents trained side by side (1 without a population), and each one's configuration
    /// (row weights filled in), Q-head draws and noise seed words `[agents, 2]`.
    agents: usize,
    cfgs: Vec<PolicyUpdateConfig>,
    rngs: Vec<rand::rngs::StdRng>,
    seeds: GpuBuffer<u32>,
    /// With several agents: each one's `(c_q, alpha, c_kl, c_ll)` `[agents, 4]`, and its Q-head
    /// choice `[agents, heads]`: 0.5 on the drawn heads (the average), and 1 on them (the
    /// value gradients' weights).
    coefs: GpuBuffer<f32>,
    head_half: GpuBuffer<f32>,
    head_mask: GpuBuffer<f32>,
    /// Whether the loss has a Q term for any agent.
    with_q: bool,
}

impl<'g> PolicyTrainer<'g> {
    /// A policy trainer for `spec` (the policy and Q heads live in the world-model trainer's
    /// flat parameters, passed to each update). The adaptive prior, if any, starts as a
    /// TD-MPC2-initialized policy network of its own.
    pub fn new(
        gpu: &'g Gpu,
        spec: &ModelSpec,
        cfg: PolicyUpdateConfig,
        batch: usize,
    ) -> Result<Self> {
        Self::population(gpu, spec, &[cfg], batch)
    }

    /// The policy updates of several agents recorded together: every network of every agent
    /// in the same dispatches (parameters, gradients and Adam states back to back, as the
    /// world-model trainer's population keeps them), each agent's losses, scales, prior,
    /// draws and noise its own, so that each agent's update is the one it would make alone.
    /// The agents share the model, the batch size and the config but for the seed and the
    /// loss coefficients `c_q`, `alpha`, the KL's and the LL term's (PO-MPC's lambda, its
    /// convex form): TD-MPC2, BMPC, TD-M(PC)² and PO-MPC agents are separate populations.
    pub fn population(
        gpu: &'g Gpu,
        spec: &ModelSpec,
        cfgs: &[PolicyUpdateConfig],
        batch: usize,
    ) -> Result<Self> {
        let g = cfgs.len();
        if g == 0 {
            return Err(Error::InvalidArgument(
                "policy population of 0 agents".into(),
            ));
        }
        spec.validate()?;
        let mut cfgs = cfgs.to_vec();
        for (i, c) in cfgs.iter().enumerate() {
            c.check(spec.action_dim)?;
            if c.shared_with(&cfgs[0]) != cfgs[0] {
                return Err(Error::InvalidArgument(format!(
                    "policy population: agent {i}'s update differs from agent 0's in more than \
                     the seed and the loss coefficients"
                )));
            }
        }
        super::check_batch(batch)?;
        if spec.num_q < 2 {
            return Err(Error::InvalidArgument(format!(
                "the policy update averages 2 different Q heads; the model has {}",
                spec.num_q
            )));
        }
        let layout = ParamLayout::new(spec);
        let (a, bins, e) = (spec.action_dim, spec.num_bins, spec.num_q);
        let rows = cfgs[0].states * batch;
        let weights = RowWeights::new(1.0 / rows as f32, cfgs[0].rho, batch);
        for c in &mut cfgs {
            c.loss.weights = weights;
            c.prior_fit.weights = weights;
        }
        let cfg = cfgs[0].clone();
        if cfg.tensor_cores {
            gpu.tensor_cores()?;
        }
        let pi = TrainNet::new(spec, &layout, Net::Policy)?.with_tensor_cores(cfg.tensor_cores);
        let q = TrainNet::new(spec, &layout, Net::Q)?.with_tensor_cores(cfg.tensor_cores);
        let f = |label: &str, n: usize| GpuBuffer::<f32>::new(gpu, label, n.max(1));
        let pi_range = layout.net(Net::Policy);
        let adam_cfg = AdamConfig {
            lr: cfg.lr,
            eps: cfg.adam_eps,
            clip: Some(cfg.grad_clip_norm),
            ..AdamConfig::default()
        };
        let groups = [ParamGroup::new(pi_range.clone(), 1.0)];
        let adam = Adam::population(gpu, layout.len(), &groups, adam_cfg, g)?;
        let adaptive = cfg.prior == PriorKind::Adaptive;
        let (prior_params, prior_grads, prior_adam, prior_tape) = if adaptive {
            // Each prior's own initialization: a different seed than the policy's.
            let mut flat = Vec::with_capacity(g * layout.len());
            for c in &cfgs {
                let w = Weights::init(spec, c.seed ^ 0x0050_5249_4f52)?;
                flat.extend(layout.flatten(&w)?);
            }
            (
                Some(GpuBuffer::from_slice(gpu, "prior parameters", &flat)?),
                Some(f("prior gradients", g * layout.len())?),
                Some(Adam::population(gpu, layout.len(), &groups, adam_cfg, g)?),
                Some(Tape::new(gpu, &pi, rows, g, 1)?),
            )
        } else {
            (None, None, None, None)
        };
        let s_q = RunningScale::population(gpu, cfg.scale_tau, g)?;
        s_q.set_value(gpu, cfg.q_scale_init)?;
        let scratch = pl::policy_loss_scratch_len(&cfg.loss, rows)
            .max(pl::prior_fit_scratch_len(&cfg.prior_fit, rows));
        let seed_words: Vec<u32> = cfgs
            .iter()
            .flat_map(|c| crate::rng::seed_words(c.seed))
            .collect();
        let coefs: Vec<f32> = cfgs.iter().flat_map(|c| c.coefs()).collect();
        // One agent runs its two Q heads one after the other; several run every head.
        let (q_slots, q_steps) = if g == 1 { (1, 2) } else { (g * e, 1) };
        Ok(PolicyTrainer {
            pi_tape: Tape::new(gpu, &pi, rows, g, 1)?,
            q_tape: Tape::new(gpu, &q, rows, q_slots, q_steps)?,
            prior_tape,
            grads: f("policy gradients", g * layout.len())?,
            adam,
            prior_params,
            prior_grads,
            prior_adam,
            s_q,
            s_kl: RunningScale::population(gpu, cfg.scale_tau, g)?,
            s_d: RunningScale::population(gpu, cfg.scale_tau, g)?,
            eps: f("policy noise", g * rows * a)?,
            action: f("policy actions", g * rows * a)?,
            q_vals: f("Q values of the heads", q_slots * q_steps * rows)?,
            q_avg: f("Q average", g * rows)?,
            half: GpuBuffer::from_slice(gpu, "average of 2", &[0.5f32, 0.5])?,
            dq_logits: f("dQ/dlogits", q_slots * q_steps * rows * bins)?,
            dq_da: f("dQ/da", g * rows * a)?,
            dh: f("policy output gradient", g * rows * 2 * a)?,
            dprior: f("prior output gradient", g * rows * 2 * a)?,
            div: f("divergence rows", g * rows)?,
            planner: f("planner Gaussians", g * rows * 2 * a)?,
            losses: f("policy losses", g * LOSS_SLOTS)?,
            scratch: f("policy loss partials", g * scratch)?,
            updates: 0,
            agents: g,
            rngs: cfgs
                .iter()
                .map(|c| rand::rngs::StdRng::seed_from_u64(c.seed ^ 0x0070_6f6d_7063))
                .collect(),
            seeds: GpuBuffer::from_slice(gpu, "policy noise seeds", &seed_words)?,
            coefs: GpuBuffer::from_slice(gpu, "policy loss coefficients", &coefs)?,
            head_half: f("Q head average", if g > 1 { g * e } else { 1 })?,
            head_mask: f("Q head choice", if g > 1 { g * e } else { 1 })?,
            with_q: cfgs.iter().any(|c| c.loss.c_q != 0.0) || cfg.loss.ll.is_some(),
            cfgs,
            pi,
            q,
            gpu,
            spec: spec.clone(),
            layout,
            cfg,
            batch,
        })
    }

    /// Agents trained side by side.
    pub fn agents(&self) -> usize {
        self.agents
    }

    /// Agent `i`'s configuration (row weights filled in).
    pub fn agent_config(&self, i: usize) -> Option<&PolicyUpdateConfig> {
        self.cfgs.get(i)
    }

    /// The configuration (row weights filled in; agent 0's in a population).
    pub fn config(&self) -> &PolicyUpdateConfig {
        &self.cfg
    }

    /// Rows of the loss: `states * batch`.
    pub fn rows(&self) -> usize {
        self.cfg.states * self.batch
    }

    /// The flat gradients of the last update (the policy range is used).
    pub fn grads(&self) -> &GpuBuffer<f32> {
        &self.grads
    }

    /// The adaptive prior's flat parameters (the policy range is used), if any.
    pub fn prior_params(&self) -> Option<&GpuBuffer<f32>> {
        self.prior_params.as_ref()
    }

    /// The adaptive prior's flat gradients of the last update, if any.
    pub fn prior_grads(&self) -> Option<&GpuBuffer<f32>> {
        self.prior_grads.as_ref()
    }

    /// The policy actions `[T', B, A]` of the last update.
    pub fn actions(&self) -> &GpuBuffer<f32> {
        &self.action
    }

    /// The running scales (Q, policy KL, prior fit).
    pub fn scales(&self) -> [&RunningScale; 3] {
        [&self.s_q, &self.s_kl, &self.s_d]
    }

    /// The policy's optimizer (moments over the whole flat layout; only the policy's range
    /// is used).
    pub fn adam(&self) -> &Adam {
        &self.adam
    }

    /// The adaptive prior's optimizer, if the update has a prior network.
    pub fn prior_adam(&self) -> Option<&Adam> {
        self.prior_adam.as_ref()
    }

    /// The losses buffer of the last recorded update (slots: Q, entropy, KL, LL, total,
    /// prior fit).
    pub fn losses_buffer(&self) -> &GpuBuffer<f32> {
        &self.losses
    }

    /// Decode a read-back of [`PolicyTrainer::losses_buffer`] (grad norm left NaN).
    pub fn decode_losses(l: &[f32]) -> PolicyLosses {
        Self::losses_from(l, f32::NAN)
    }

    /// Upload the planner's first-step Gaussians of the batch, `[T', B, 2A]` with each row
    /// `[mean (A) | std (A)]` (BMPC's layout; std > 0); in a population every agent's,
    /// `[agents, T', B, 2A]`.
    pub fn set_planner(&mut self, gaussians: &[f32]) -> Result<()> {
        let n = self.agents * self.rows() * 2 * self.spec.action_dim;
        if gaussians.len() != n {
            return Err(Error::Shape(format!(
                "planner Gaussians: {} values, {} agents x {} states x {} sub-trajectories x 2A \
                 need {n}",
                gaussians.len(),
                self.agents,
                self.cfg.states,
                self.batch
            )));
        }
        let a = self.spec.action_dim;
        for (i, row) in gaussians.chunks(2 * a).enumerate() {
            if let Some(j) = row
                .iter()
                .position(|v| !v.is_finite())
                .or_else(|| row[a..].iter().position(|s| *s <= 0.0).map(|j| j + a))
            {
                return Err(Error::InvalidArgument(format!(
                    "planner Gaussian of row {i}: element {j} is {} (means finite, stds > 0)",
                    row[j]
                )));
            }
        }
        self.planner.upload(self.gpu, gaussians)
    }

    /// Upload the policy noise `[T', B, A]` (`[agents, T', B, A]` in a population) of the
    /// next update instead of drawing it on the GPU (for tests against other
    /// implementations).
    pub fn set_noise(&mut self, eps: &[f32]) -> Result<()> {
        if eps.len() != self.eps.len() {
            return Err(Error::Shape(format!(
                "policy noise: {} values, {} needed",
                eps.len(),
                self.eps.len()
            )));
        }
        self.eps.upload(self.gpu, eps)
    }

    /// Two different Q heads, drawn at random (agent 0's draw in a population).
    pub fn draw_heads(&mut self) -> [usize; 2] {
        Self::draw(&mut self.rngs[0], self.spec.num_q)
    }

    /// Each agent's two different Q heads, from its own draws.
    pub fn draw_agent_heads(&mut self) -> Vec<[usize; 2]> {
        let n = self.spec.num_q;
        self.rngs.iter_mut().map(|r| Self::draw(r, n)).collect()
    }

    fn draw(rng: &mut rand::rngs::StdRng, n: usize) -> [usize; 2] {
        let first = rng.random_range(0..n);
        let second = (first + rng.random_range(1..n.max(2))) % n;
        [first, second]
    }

    /// One update in one submit on `params` (the world-model trainer's flat parameters,
    /// updated in place in the policy range) from the rollout latents `zs`
    /// (`[T + 1, B, latent]`, the first `T' B` rows used): noise drawn on the GPU, Q heads
    /// at random.
    pub fn update(&mut self, params: &GpuBuffer<f32>, zs: &GpuBuffer<f32>) -> Result<PolicyLosses> {
        self.one_agent("update")?;
        let heads = self.draw_heads();
        self.update_with(params, zs, heads, true)
    }

    /// Every agent's update in one submit on `params` (the agents' flat parameters back to
    /// back, as [`WorldModelTrainer::params`](super::WorldModelTrainer::params) holds a
    /// population's) from the rollout latents `zs` (each agent's `[T + 1, B, latent]`, an
    /// equal share of the buffer, back to back): noise drawn on the GPU, each agent's Q heads
    /// from its own draws. Returns each agent's losses.
    pub fn update_agents(
        &mut self,
        params: &GpuBuffer<f32>,
        zs: &GpuBuffer<f32>,
    ) -> Result<Vec<PolicyLosses>> {
        let heads = self.draw_agent_heads();
        let mut rec = Recorder::new(self.gpu);
        self.record_agents(&mut rec, params, zs, &heads, true, true)?;
        let hl = rec.read(&self.losses);
        let hs = rec.read(self.adam.state_buffer());
        let out = rec.finish()?;
        let l = out.get(&hl)?;
        let norms = AdamState::grad_norms(&out.get(&hs)?)?;
        let each = l.chunks(LOSS_SLOTS).zip(norms);
        Ok(each.map(|(l, n)| Self::losses_from(l, n)).collect())
    }

    fn one_agent(&self, what: &str) -> Result<()> {
        if self.agents != 1 {
            return Err(Error::InvalidArgument(format!(
                "policy {what}: a population of {} agents updates through update_agents or \
                 record_agents",
                self.agents
            )));
        }
        Ok(())
    }

    /// [`PolicyTrainer::update`] with the Q heads given and, unless `draw_noise`, the noise
    /// from [`PolicyTrainer::set_noise`].
    pub fn update_with(
        &mut self,
        params: &GpuBuffer<f32>,
        zs: &GpuBuffer<f32>,
        heads: [usize; 2],
        draw_noise: bool,
    ) -> Result<PolicyLosses> {
        self.one_agent("update")?;
        let mut rec = Recorder::new(self.gpu);
        self.record(&mut rec, params, zs, heads, draw_noise, true)?;
        let hl = rec.read(&self.losses);
        let hs = rec.read(self.adam.state_buffer());
        let out = rec.finish()?;
        let l = out.get(&hl)?;
        let state = AdamState::from_words(&out.get(&hs)?)?;
        Ok(Self::losses_from(&l, state.grad_norm.unwrap_or(f32::NAN)))
    }

    /// The losses and gradients of one update with the given Q heads and the noise from
    /// [`PolicyTrainer::set_noise`], without the optimizer steps: the gradients stay in
    /// [`PolicyTrainer::grads`] and [`PolicyTrainer::prior_grads`].
    pub fn losses_and_grads(
        &mut self,
        params: &GpuBuffer<f32>,
        zs: &GpuBuffer<f32>,
        heads: [usize; 2],
    ) -> Result<PolicyLosses> {
        self.one_agent("update")?;
        let mut rec = Recorder::new(self.gpu);
        self.record(&mut rec, params, zs, heads, false, false)?;
        let hl = rec.read(&self.losses);
        let l = rec.finish()?.get(&hl)?;
        Ok(Self::losses_from(&l, f32::NAN))
    }

    fn losses_from(l: &[f32], grad_norm: f32) -> PolicyLosses {
        PolicyLosses {
            q: l[SLOT_POLICY + pl::Q_SLOT],
            entropy: l[SLOT_POLICY + pl::ENTROPY_SLOT],
            kl: l[SLOT_POLICY + pl::KL_SLOT],
            ll: l[SLOT_POLICY + pl::LL_SLOT],
            total: l[SLOT_POLICY + pl::TOTAL_SLOT],
            prior_fit: l[SLOT_PRIOR],
            grad_norm,
        }
    }

    /// Record copies of agent `i`'s training state (the policy's and the prior's Adam moments
    /// and state, the prior's parameters, the running scales) from the one-agent trainer
    /// `alone` of the same model (`into_population`) or back into it, and take over (or hand
    /// back) its head draws and update count (as
    /// [`WorldModelTrainer::record_exchange_agent`](super::WorldModelTrainer::record_exchange_agent)).
    pub fn record_exchange_agent(
        &mut self,
        rec: &mut Recorder,
        i: usize,
        alone: &mut PolicyTrainer,
        into_population: bool,
    ) -> Result<()> {
        let same = alone.spec == self.spec;
        super::check_exchange("policy", i, self.agents, alone.agents, same)?;
        self.adam
            .record_exchange_agent(rec, i, &alone.adam, into_population)?;
        match (
            (&self.prior_params, &self.prior_adam),
            (&alone.prior_params, &alone.prior_adam),
        ) {
            ((Some(pp), Some(pa)), (Some(op), Some(oa))) => {
                let n = self.layout.len();
                rec.copy_share(pp, i * n, op, n, into_population)?;
                pa.record_exchange_agent(rec, i, oa, into_population)?;
            }
            ((None, None), (None, None)) => {}
            _ => {
                return Err(Error::InvalidArgument(
                    "policy exchange: one trainer has an adaptive prior, the other not".into(),
                ));
            }
        }
        for (pop, one) in [
            (&self.s_q, &alone.s_q),
            (&self.s_kl, &alone.s_kl),
            (&self.s_d, &alone.s_d),
        ] {
            pop.record_exchange_agent(rec, i, one, into_population)?;
        }
        super::exchange_draws(
            "policy",
            i,
            (&mut self.updates, &mut self.rngs),
            (&mut alone.updates, &mut alone.rngs),
            into_population,
        )
    }

    /// Set the adaptive prior's network from `weights` (its `_pi.*` tensors; agent 0's in a
    /// population).
    pub fn set_prior(&mut self, weights: &Weights) -> Result<()> {
        self.set_agent_prior(0, weights)
    }

    /// Set agent `i`'s adaptive prior network from `weights` (its `_pi.*` tensors).
    pub fn set_agent_prior(&mut self, i: usize, weights: &Weights) -> Result<()> {
        let pp = self.prior_params.as_ref().ok_or_else(|| {
            Error::InvalidArgument("this policy update has no adaptive prior".into())
        })?;
        if i >= self.agents {
            return Err(Error::InvalidArgument(format!(
                "prior of agent {i} in a population of {}",
                self.agents
            )));
        }
        let flat = self.layout.flatten(weights)?;
        let r = self.layout.net(Net::Policy);
        let at = i * self.layout.len() + r.start;
        pp.upload_at(self.gpu, at, &flat[r])
    }

    /// Record one update (with the optimizer steps when `step`; without them the gradients
    /// stay in [`PolicyTrainer::grads`] and [`PolicyTrainer::prior_grads`]).
    pub fn record(
        &mut self,
        rec: &mut Recorder,
        params: &GpuBuffer<f32>,
        zs: &GpuBuffer<f32>,
        heads: [usize; 2],
        draw_noise: bool,
        step: bool,
    ) -> Result<()> {
        self.record_agents(rec, params, zs, &[heads], draw_noise, step)
    }

    /// [`PolicyTrainer::record`] for every agent: agent `i` with Q heads `heads[i]`, its
    /// parameters at `i * ParamLayout::len()` of `params` and its latents in the `i`-th of
    /// `agents` equal shares of `zs`.
    pub fn record_agents(
        &mut self,
        rec: &mut Recorder,
        params: &GpuBuffer<f32>,
        zs: &GpuBuffer<f32>,
        heads: &[[usize; 2]],
        draw_noise: bool,
        step: bool,
    ) -> Result<()> {
        let (a, l, e) = (self.spec.action_dim, self.spec.latent_dim, self.spec.num_q);
        let (b, rows, g) = (self.batch, self.rows(), self.agents);
        if heads.len() != g {
            return Err(Error::InvalidArgument(format!(
                "{} agents' Q heads for a policy population of {g}",
                heads.len()
            )));
        }
        if params.len() != g * self.layout.len() {
            return Err(Error::Shape(format!(
                "policy update: {} parameters, {g} agents of a model of {} need {}",
                params.len(),
                self.layout.len(),
                g * self.layout.len()
            )));
        }
        // Each agent's latents: an equal share of the buffer.
        let z_stride = zs.len() / g;
        if z_stride < rows * l || (g > 1 && !zs.len().is_multiple_of(g)) {
            return Err(Error::Shape(format!(
                "policy update: latents hold {} values, {g} agents x {} states x {b} x {l} \
                 needed (in equal shares)",
                zs.len(),
                self.cfg.states
            )));
        }
        for h in heads {
            if h[0] == h[1] || h.iter().any(|&x| x >= e) {
                return Err(Error::InvalidArgument(format!(
                    "Q heads {h:?}: two different heads of {e}"
                )));
            }
        }
        let cfg = self.cfg.clone();
        let one = g == 1;
        rec.clear(&self.grads);
        rec.clear(&self.losses);
        let agents = Members::one(0).of_agents(g);
        let z_in = NetInput::z(zs, 0).per_agent(z_stride, 0);
        // The losses' view of the population: slots 8 apart, each agent's coefficients.
        let mut pop = pl::Agents::new(g, LOSS_SLOTS);
        if !one {
            pop = pop.with_coefs(&self.coefs);
        }
        // The policy's raw output and its sample.
        self.pi
            .forward(rec, params, rows, agents, z_in, &self.pi_tape, 0)?;
        let (h_buf, h_off) = self.pi_tape.output(&self.pi, 0);
        if draw_noise {
            let stream = (self.updates as u32).wrapping_mul(2).wrapping_add(1);
            if one {
                record_fill(rec, &self.eps, Distribution::Normal, cfg.seed, stream)?;
            } else {
                let dist = Distribution::Normal;
                record_fill_agents(rec, &self.eps, dist, &self.seeds, rows * a, stream)?;
            }
        }
        let h_rows = Rows::at(h_buf, RowLayout::at(h_off, 2 * a));
        let eps_rows = Rows::new(&self.eps, a);
        pl::record_sample(
            rec,
            &cfg.loss.head,
            g * rows,
            h_rows,
            eps_rows,
            Rows::new(&self.action, a),
        )?;
        // The frozen Q heads' average at the sample and its action gradient.
        let with_q = self.with_q;
        if with_q {
            if one {
                self.record_q_alone(rec, params, zs, heads[0])?;
            } else {
                self.record_q_population(rec, params, zs, z_stride, heads)?;
            }
            // TD-MPC2 updates the Q scale with the t = 0 values, then divides by it.
            self.s_q
                .record_update_agents(rec, &self.q_avg, 0, b, rows)?;
        }
        // The adaptive prior: forward, its fit to the planner Gaussians, backward, Adam. The
        // policy's KL reads this forward's output (the prior before its step).
        let planner_rows = Rows::new(&self.planner, 2 * a);
        let mut prior_rows = None;
        if let (Some(pp), Some(pg), Some(tape)) = (
            self.prior_params.as_ref(),
            self.prior_grads.as_ref(),
            self.prior_tape.as_ref(),
        ) {
            rec.clear(pg);
            self.pi.forward(rec, pp, rows, agents, z_in, tape, 0)?;
            let (po, poff) = tape.output(&self.pi, 0);
            let out_rows = Rows::at(po, RowLayout::at(poff, 2 * a));
            let inputs = PriorFitInputs {
                agents: pl::Agents::new(g, LOSS_SLOTS),
                ..PriorFitInputs::new(
                    out_rows,
                    planner_rows,
                    Some(Scalar::new(self.s_d.value_buffer())),
                )
            };
            let div = Pass::Divergence(Rows::new(&self.div, 1));
            pl::record_prior_fit(rec, &cfg.prior_fit, rows, &inputs, div)?;
            self.s_d.record_update_agents(rec, &self.div, 0, b, rows)?;
            pl::record_prior_fit(
                rec,
                &cfg.prior_fit,
                rows,
                &inputs,
                Pass::Loss {
                    grad: Some(GradOut {
                        buf: &self.dprior,
                        at: RowLayout::contiguous(2 * a),
                        accumulate: false,
                    }),
                    divergence: None,
                    loss: LossOut {
                        losses: &self.losses,
                        index: SLOT_PRIOR,
                        accumulate: false,
                    },
                    scratch: Some(&self.scratch),
                },
            )?;
            self.pi.backward(
                rec,
                pp,
                rows,
                agents,
                z_in,
                tape,
                0,
                (&self.dprior, 0),
                Grads {
                    params: Some(pg),
                    dz: None,
                    da: None,
                },
            )?;
            prior_rows = Some(out_rows);
        }
        let mut inputs = PolicyInputs::new(h_rows, eps_rows);
        inputs.agents = pop;
        if with_q {
            inputs.q = Some(QInput {
                values: Rows::new(&self.q_avg, 1),
                grad: Rows::new(&self.dq_da, a),
            });
            inputs.s_q = Some(Scalar::new(self.s_q.value_buffer()));
        }
        if cfg.loss.ll.is_some() {
            inputs.planner = Some(planner_rows);
        }
        if let Some(k) = &cfg.loss.kl {
            inputs.prior = Some(match k.prior {
                pl::PriorInput::Gaussian => planner_rows,
                pl::PriorInput::Network { .. } => prior_rows.ok_or_else(|| {
                    Error::InvalidArgument("the KL term needs the adaptive prior".into())
                })?,
            });
            inputs.s_kl = Some(Scalar::new(self.s_kl.value_buffer()));
            // BMPC's order: the KL scale moves with this batch's t = 0 rows first.
            let div = Pass::Divergence(Rows::new(&self.div, 1));
            pl::record_policy_loss(rec, &cfg.loss, rows, &inputs, div)?;
            self.s_kl.record_update_agents(rec, &self.div, 0, b, rows)?;
        }
        pl::record_policy_loss(
            rec,
            &cfg.loss,
            rows,
            &inputs,
            Pass::Loss {
                grad: Some(GradOut {
                    buf: &self.dh,
                    at: RowLayout::contiguous(2 * a),
                    accumulate: false,
                }),
                divergence: None,
                loss: LossOut {
                    losses: &self.losses,
                    index: SLOT_POLICY,
                    accumulate: false,
                },
                scratch: Some(&self.scratch),
            },
        )?;
        self.pi.backward(
            rec,
            params,
            rows,
            agents,
            z_in,
            &self.pi_tape,
            0,
            (&self.dh, 0),
            Grads {
                params: Some(&self.grads),
                dz: None,
                da: None,
            },
        )?;
        if step {
            self.adam.record_step(rec, params, &self.grads)?;
            if let (Some(pp), Some(pg), Some(adam)) = (
                self.prior_params.as_ref(),
                self.prior_grads.as_ref(),
                self.prior_adam.as_mut(),
            ) {
                adam.record_step(rec, pp, pg)?;
            }
        }
        self.updates += 1;
        Ok(())
    }

    /// One agent's Q term inputs: its two heads one after the other, each decoded at the
    /// sample and backpropagated (halved) into the action gradient; their average.
    fn record_q_alone(
        &self,
        rec: &mut Recorder,
        params: &GpuBuffer<f32>,
        zs: &GpuBuffer<f32>,
        heads: [usize; 2],
    ) -> Result<()> {
        let (bins, rows) = (self.spec.num_bins, self.rows());
        let tcfg = TwoHotConfig::new(bins, self.spec.vmin, self.spec.vmax)?;
        let inp = NetInput::za((zs, 0), (&self.action, 0));
        for (s, &hd) in heads.iter().enumerate() {
            self.q
                .forward(rec, params, rows, Members::one(hd), inp, &self.q_tape, s)?;
            let (qo, qoff) = self.q_tape.output(&self.q, s);
            two_hot::record_decode_strided(
                rec,
                &tcfg,
                rows,
                qo,
                RowLayout::at(qoff, bins),
                &self.q_vals,
                RowLayout::at(s * rows, 1),
            )?;
            record_decode_grad(
                rec,
                &tcfg,
                rows,
                (qo, qoff),
                0.5,
                (&self.dq_logits, s * rows * bins),
            )?;
            self.q.backward(
                rec,
                params,
                rows,
                Members::one(hd),
                inp,
                &self.q_tape,
                s,
                (&self.dq_logits, s * rows * bins),
                Grads {
                    params: None,
                    dz: None,
                    da: Some((&self.dq_da, 0, s > 0)),
                },
            )?;
        }
        // q_avg = [0.5 0.5] x q_vals [2, rows].
        gemm::record(
            rec,
            &Gemm::new(1, rows, 2),
            Operands::new(
                Mat::rows(&self.half, 2),
                Mat::rows(&self.q_vals, rows),
                Mat::rows(&self.q_avg, rows),
            ),
        )
    }

    /// A population's Q term inputs: every head of every agent in one pass, each agent's
    /// choice of two applied by weights (0.5 on its heads for the average; 1 or 0 on the
    /// heads' halved value gradients, so that the backward pass through all heads gives each
    /// agent the action gradient of its own two).
    fn record_q_population(
        &self,
        rec: &mut Recorder,
        params: &GpuBuffer<f32>,
        zs: &GpuBuffer<f32>,
        z_stride: usize,
        heads: &[[usize; 2]],
    ) -> Result<()> {
        let (a, bins, e) = (self.spec.action_dim, self.spec.num_bins, self.spec.num_q);
        let (rows, g) = (self.rows(), self.agents);
        let mut half = vec![0.0f32; g * e];
        let mut mask = vec![0.0f32; g * e];
        for (i, h) in heads.iter().enumerate() {
            for &hd in h {
                half[i * e + hd] = 0.5;
                mask[i * e + hd] = 1.0;
            }
        }
        // Queue writes land before this submit: one update per submit reads its own draw.
        self.head_half.upload(self.gpu, &half)?;
        self.head_mask.upload(self.gpu, &mask)?;
        let tcfg = TwoHotConfig::new(bins, self.spec.vmin, self.spec.vmax)?;
        let all = Members::range(0, e).of_agents(g);
        let inp = NetInput::za((zs, 0), (&self.action, 0)).per_agent(z_stride, rows * a);
        self.q
            .forward(rec, params, rows, all, inp, &self.q_tape, 0)?;
        let (qo, qoff) = self.q_tape.output(&self.q, 0);
        let n = g * e * rows;
        two_hot::record_decode_strided(
            rec,
            &tcfg,
            n,
            qo,
            RowLayout::at(qoff, bins),
            &self.q_vals,
            RowLayout::contiguous(1),
        )?;
        // A block of rows per (agent, head), weighted 1 or 0.
        let mask = Some((&self.head_mask, rows));
        record_decode_grad_weighted(rec, &tcfg, n, (qo, qoff), 0.5, mask, (&self.dq_logits, 0))?;
        self.q.backward(
            rec,
            params,
            rows,
            all,
            inp,
            &self.q_tape,
            0,
            (&self.dq_logits, 0),
            Grads {
                params: None,
                dz: None,
                da: Some((&self.dq_da, 0, false)),
            },
        )?;
        // q_avg[agent] = choice[agent] (1 x heads) x q_vals[agent] (heads x rows).
        let op = Gemm {
            batch: g,
            ..Gemm::new(1, rows, e)
        };
        gemm::record(
            rec,
            &op,
            Operands::new(
                Mat::rows(&self.head_half, e).batched(e),
                Mat::rows(&self.q_vals, rows).batched(e * rows),
                Mat::rows(&self.q_avg, rows).batched(rows),
            ),
        )
    }
}
