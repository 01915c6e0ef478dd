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
use crate::kernels::rng_fill::{Distribution, record_fill};
use crate::kernels::td::record_decode_grad;
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

// Slots of the losses buffer.
const SLOT_POLICY: usize = 0; // 5 slots from here (pl::POLICY_TERMS)
const SLOT_PRIOR: usize = 5;

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
    rng: rand::rngs::StdRng,
}

impl<'g> PolicyTrainer<'g> {
    /// A policy trainer for `spec` (the policy and Q heads live in the world-model trainer's
    /// flat parameters, passed to each update). The adaptive prior, if any, starts as a
    /// TD-MPC2-initialized policy network of its own.
    pub fn new(
        gpu: &'g Gpu,
        spec: &ModelSpec,
        mut cfg: PolicyUpdateConfig,
        batch: usize,
    ) -> Result<Self> {
        spec.validate()?;
        cfg.check(spec.action_dim)?;
        super::check_batch(batch)?;
        if spec.num_q < 2 {
            return Err(Error::InvalidArgument(format!(
                "the policy update averages 2 different Q heads; the model has {}",
                spec.num_q
            )));
        }
        let layout = ParamLayout::new(spec);
        let (a, bins) = (spec.action_dim, spec.num_bins);
        let rows = cfg.states * batch;
        let weights = RowWeights::new(1.0 / rows as f32, cfg.rho, batch);
        cfg.loss.weights = weights;
        cfg.prior_fit.weights = weights;
        let pi = TrainNet::new(spec, &layout, Net::Policy)?;
        let q = TrainNet::new(spec, &layout, Net::Q)?;
        let f = |label: &str, n: usize| GpuBuffer::<f32>::new(gpu, label, n.max(1));
        let pi_range = layout.net(Net::Policy);
        let adam_cfg = AdamConfig {
            lr: cfg.lr,
            eps: cfg.adam_eps,
            clip: Some(cfg.grad_clip_norm),
            ..AdamConfig::default()
        };
        let adam = Adam::new(
            gpu,
            layout.len(),
            &[ParamGroup::new(pi_range.clone(), 1.0)],
            adam_cfg,
        )?;
        let adaptive = cfg.prior == PriorKind::Adaptive;
        let (prior_params, prior_grads, prior_adam, prior_tape) = if adaptive {
            // The prior's own initialization: a different seed than the policy's.
            let w = Weights::init(spec, cfg.seed ^ 0x0050_5249_4f52)?;
            let flat = layout.flatten(&w)?;
            (
                Some(GpuBuffer::from_slice(gpu, "prior parameters", &flat)?),
                Some(f("prior gradients", layout.len())?),
                Some(Adam::new(
                    gpu,
                    layout.len(),
                    &[ParamGroup::new(pi_range, 1.0)],
                    adam_cfg,
                )?),
                Some(Tape::new(gpu, &pi, rows, 1, 1)?),
            )
        } else {
            (None, None, None, None)
        };
        let s_q = RunningScale::new(gpu, cfg.scale_tau)?;
        s_q.set_value(gpu, cfg.q_scale_init)?;
        let scratch = pl::policy_loss_scratch_len(&cfg.loss, rows)
            .max(pl::prior_fit_scratch_len(&cfg.prior_fit, rows));
        Ok(PolicyTrainer {
            pi_tape: Tape::new(gpu, &pi, rows, 1, 1)?,
            q_tape: Tape::new(gpu, &q, rows, 1, 2)?,
            prior_tape,
            grads: f("policy gradients", layout.len())?,
            adam,
            prior_params,
            prior_grads,
            prior_adam,
            s_q,
            s_kl: RunningScale::new(gpu, cfg.scale_tau)?,
            s_d: RunningScale::new(gpu, cfg.scale_tau)?,
            eps: f("policy noise", rows * a)?,
            action: f("policy actions", rows * a)?,
            q_vals: f("Q values of 2 heads", 2 * rows)?,
            q_avg: f("Q average", rows)?,
            half: GpuBuffer::from_slice(gpu, "average of 2", &[0.5f32, 0.5])?,
            dq_logits: f("dQ/dlogits", 2 * rows * bins)?,
            dq_da: f("dQ/da", rows * a)?,
            dh: f("policy output gradient", rows * 2 * a)?,
            dprior: f("prior output gradient", rows * 2 * a)?,
            div: f("divergence rows", rows)?,
            planner: f("planner Gaussians", rows * 2 * a)?,
            losses: f("policy losses", 8)?,
            scratch: f("policy loss partials", scratch)?,
            updates: 0,
            rng: rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 0x0070_6f6d_7063),
            pi,
            q,
            gpu,
            spec: spec.clone(),
            layout,
            cfg,
            batch,
        })
    }

    /// The configuration (row weights filled in).
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
    /// `[mean (A) | std (A)]` (BMPC's layout; std > 0).
    pub fn set_planner(&mut self, gaussians: &[f32]) -> Result<()> {
        let n = self.rows() * 2 * self.spec.action_dim;
        if gaussians.len() != n {
            return Err(Error::Shape(format!(
                "planner Gaussians: {} values, {} states x {} sub-trajectories x 2A need {n}",
                gaussians.len(),
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

    /// Upload the policy noise `[T', B, A]` of the next update instead of drawing it on the
    /// GPU (for tests against other implementations).
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

    /// Two different Q heads, drawn at random.
    pub fn draw_heads(&mut self) -> [usize; 2] {
        let n = self.spec.num_q;
        let first = self.rng.random_range(0..n);
        let second = (first + self.rng.random_range(1..n.max(2))) % n;
        [first, second]
    }

    /// One update in one submit on `params` (the world-model trainer's flat parameters,
    /// updated in place in the policy range) from the rollout latents `zs`
    /// (`[T + 1, B, latent]`, the first `T' B` rows used): noise drawn on the GPU, Q heads
    /// at random.
    pub fn update(&mut self, params: &GpuBuffer<f32>, zs: &GpuBuffer<f32>) -> Result<PolicyLosses> {
        let heads = self.draw_heads();
        self.update_with(params, zs, heads, true)
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

    /// Set the adaptive prior's network from `weights` (its `_pi.*` tensors).
    pub fn set_prior(&mut self, weights: &Weights) -> Result<()> {
        let pp = self.prior_params.as_ref().ok_or_else(|| {
            Error::InvalidArgument("this policy update has no adaptive prior".into())
        })?;
        let flat = self.layout.flatten(weights)?;
        let r = self.layout.net(Net::Policy);
        pp.upload_at(self.gpu, r.start, &flat[r])
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
        let (a, l, bins) = (
            self.spec.action_dim,
            self.spec.latent_dim,
            self.spec.num_bins,
        );
        let (b, rows) = (self.batch, self.rows());
        if params.len() != self.layout.len() {
            return Err(Error::Shape(format!(
                "policy update: {} parameters, the model has {}",
                params.len(),
                self.layout.len()
            )));
        }
        if zs.len() < rows * l {
            return Err(Error::Shape(format!(
                "policy update: latents hold {} values, {} states x {b} x {l} needed",
                zs.len(),
                self.cfg.states
            )));
        }
        if heads[0] == heads[1] || heads.iter().any(|&h| h >= self.spec.num_q) {
            return Err(Error::InvalidArgument(format!(
                "Q heads {heads:?}: two different heads of {}",
                self.spec.num_q
            )));
        }
        let cfg = self.cfg.clone();
        rec.clear(&self.grads);
        rec.clear(&self.losses);
        let z_in = NetInput {
            z: (zs, 0),
            a: None,
            agent_strides: (0, 0),
        };
        // The policy's raw output and its sample.
        self.pi
            .forward(rec, params, rows, Members::one(0), z_in, &self.pi_tape, 0)?;
        let (h_buf, h_off) = self.pi_tape.output(&self.pi, 0);
        if draw_noise {
            let stream = (self.updates as u32).wrapping_mul(2).wrapping_add(1);
            record_fill(rec, &self.eps, Distribution::Normal, cfg.seed, stream)?;
        }
        let h_rows = Rows::at(h_buf, RowLayout::at(h_off, 2 * a));
        let eps_rows = Rows::new(&self.eps, a);
        pl::record_sample(
            rec,
            &cfg.loss.head,
            rows,
            h_rows,
            eps_rows,
            Rows::new(&self.action, a),
        )?;
        // The frozen Q heads' average at the sample and its action gradient.
        let with_q = cfg.loss.c_q != 0.0 || cfg.loss.ll.is_some();
        if with_q {
            let tcfg = TwoHotConfig::new(bins, self.spec.vmin, self.spec.vmax)?;
            for (s, &hd) in heads.iter().enumerate() {
                let inp = NetInput {
                    z: (zs, 0),
                    a: Some((&self.action, 0)),
                    agent_strides: (0, 0),
                };
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
            )?;
            // TD-MPC2 updates the Q scale with the t = 0 values, then divides by it.
            self.s_q.record_update(rec, &self.q_avg, 0, b)?;
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
            self.pi
                .forward(rec, pp, rows, Members::one(0), z_in, tape, 0)?;
            let (po, poff) = tape.output(&self.pi, 0);
            let out_rows = Rows::at(po, RowLayout::at(poff, 2 * a));
            let inputs = PriorFitInputs::new(
                out_rows,
                planner_rows,
                Some(Scalar::new(self.s_d.value_buffer())),
            );
            let div = Pass::Divergence(Rows::new(&self.div, 1));
            pl::record_prior_fit(rec, &cfg.prior_fit, rows, &inputs, div)?;
            self.s_d.record_update(rec, &self.div, 0, b)?;
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
                Members::one(0),
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
            self.s_kl.record_update(rec, &self.div, 0, b)?;
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
            Members::one(0),
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
}
