//! Row kernels of the PO-MPC policy update (`shaders/policy_loss.wgsl`): the policy sample,
//! the sampling-policy loss of the PO-MPC family (TD-MPC2, BMPC and TD-M(PC)² are members) and
//! the adaptive prior's fitting loss, each with its exact analytic gradient with respect to the
//! network's raw output and its weighted terms reduced on the GPU into slots of a losses
//! buffer, with no host round trip.
//!
//! **Policy head.** Row `r` of the network's raw output is `h_r = [m (A) | s (A)]`;
//! `log_std = lo + (hi - lo) (tanh(s) + 1) / 2`, `sig = exp(log_std)`, `x = mu + sig * eps`:
//! * [`Param::Squashed`] (TD-MPC2): `mu = m`, `a = tanh(x)`; squashed log-prob
//!   `L = lp - sum_i log(relu(1 - a_i^2) + 1e-6)`;
//! * [`Param::TanhMeanClamp`] (BMPC): `mu = tanh(m)`, `a = clamp(x, -1, 1)` (no gradient where
//!   it clamps), `L = lp`;
//!
//! with the Gaussian log-prob `lp = sum_i (-eps_i^2 / 2 - log_std_i) - A log(2 pi) / 2`.
//!
//! **Policy loss** ([`record_policy_loss`]), rows laid out `[T', B]` with weights
//! `w_r = scale * rho^(r / B)` ([`RowWeights`]):
//!
//! `loss = sum_r w_r (-c_q q_r / s_q - alpha H_r + c_kl D_r / s_kl - g c_ll ell_r / s_q)`
//!
//! * `q_r`, `dq_r = d q_r / d a_r`: the frozen Q heads' average at the sample and its action
//!   gradient (inputs); the gradient reaches `h` through `a(h)`.
//! * `H_r`: [`EntropyForm::Scaled`] is TD-MPC2's `-L A lp / (L + 1e-8)` (BMPC's with `L = lp`),
//!   differentiated through all of it; [`EntropyForm::Original`] is `-(A (sum_i(-eps_i^2 / 2 -
//!   log_std_i) - log(2 pi) / 2) - squash correction)` (TD-MPC2 of Oct 2023, TD-M(PC)²).
//! * `D_r` ([`KlTerm`]): the closed-form KL between the policy Gaussian `N(mu, sig)` (the
//!   pre-squash Gaussian for [`Param::Squashed`]) and the prior, reverse `KL(pi || prior)` or
//!   forward `KL(prior || pi)`, or the single-sample estimate `log pi(a_r) - log pi_p(a_r)` of
//!   the squashed densities; mean or sum over the action dimensions. The prior rows hold
//!   `(mean, std)` (the stored planner Gaussian) or a prior network's raw output
//!   ([`PriorInput::Network`]), read with no gradient.
//! * `ell_r` ([`LlTerm`], TD-M(PC)²): `A (sum_i (-((a_i - mu_i) / sig_i')^2 / 2 - log sig_i') -
//!   log(2 pi) / 2)` under the planner Gaussian with `sig' = max(sig, floor)`; `g = 1` when
//!   `s_q > threshold`, else 0 (read on the GPU).
//! * `s_q`, `s_kl` are read from GPU buffers (a [`RunningScale`] value each; 1 if not given).
//!
//! The losses buffer gets five consecutive slots from [`LossOut::index`]: the weighted sums of
//! the Q, entropy, KL and LL terms, and their total ([`Q_SLOT`] ... [`TOTAL_SLOT`]).
//! [`record_policy_divergence`] writes only `D_r` (before the division by `s_kl`) so that
//! `s_kl` can be updated from the `t = 0` rows before the loss pass reads it, as BMPC orders it.
//!
//! **Prior fit** ([`record_prior_fit`], PO-MPC's a.3.1): `sum_r w_r D_r / s_d` with `D_r` the
//! closed-form reverse `KL(pi_psi || b)` or forward `KL(b || pi_psi)` between the prior
//! network's Gaussian (its raw output, mapped as the policy's) and the planner's `(mean, std)`.
//!
//! Gradients are `w_r d loss_r / d h_r` with the noise fixed (reparameterised), written or
//! added ([`GradOut`]) as `[R, 2A]` rows like `h`. Scratch buffers for the partial sums are the
//! caller's ([`policy_loss_scratch_len`], [`prior_fit_scratch_len`]); with them nothing is
//! allocated per call.
//!
//! ```no_run
//! # fn main() -> pompc::Result<()> {
//! use pompc::kernels::loss::{GradOut, LossOut, RowWeights};
//! use pompc::kernels::optim::RunningScale;
//! use pompc::kernels::policy_loss::{self as pl, PolicyInputs, PolicyLossConfig, QInput, Rows, Scalar};
//! use pompc::kernels::two_hot::RowLayout;
//! use pompc::{GpuBuffer, Recorder};
//! let gpu = pompc::Gpu::new(Default::default())?;
//! let (t, b, a) = (4, 256, 38);
//! let rows = t * b;
//! let cfg = PolicyLossConfig::tdmpc2(a, RowWeights::new(1.0 / rows as f32, 0.5, b));
//! let buf = |label: &str, n: usize| GpuBuffer::<f32>::new(&gpu, label, n);
//! let (h, eps, action) = (buf("pi out", rows * 2 * a)?, buf("eps", rows * a)?, buf("a", rows * a)?);
//! let (q, dq, dh) = (buf("q", rows)?, buf("dq/da", rows * a)?, buf("dh", rows * 2 * a)?);
//! let losses = buf("losses", 5)?;
//! let scratch = buf("scratch", pl::policy_loss_scratch_len(&cfg, rows))?;
//! let s_q = RunningScale::new(&gpu, 0.01)?;
//! let mut rec = Recorder::new(&gpu);
//! pl::record_sample(&mut rec, &cfg.head, rows, Rows::new(&h, 2 * a), Rows::new(&eps, a), Rows::new(&action, a))?;
//! // ... Q heads on (z, action): q, then dq/da by backpropagation; s_q.record_update(.., &q, 0, b) ...
//! let inputs = PolicyInputs {
//!     q: Some(QInput { values: Rows::new(&q, 1), grad: Rows::new(&dq, a) }),
//!     s_q: Some(Scalar::new(s_q.value_buffer())),
//!     ..PolicyInputs::new(Rows::new(&h, 2 * a), Rows::new(&eps, a))
//! };
//! let grad = GradOut { buf: &dh, at: RowLayout::contiguous(2 * a), accumulate: false };
//! let out = LossOut { losses: &losses, index: 0, accumulate: false };
//! pl::record_policy_loss(&mut rec, &cfg, rows, &inputs, Some(grad), None, out, Some(&scratch))?;
//! let hl = rec.read(&losses);
//! let total = rec.finish()?.get(&hl)?[pl::TOTAL_SLOT];
//! # let _ = total;
//! # Ok(()) }
//! ```
//!
//! [`RunningScale`]: crate::kernels::optim::RunningScale

use crate::gpu::shader::Header;
use crate::gpu::{Binding, GpuBuffer, KernelSpec, Recorder};
use crate::kernels::loss::{GradOut, LossOut, RowWeights};
use crate::kernels::norm_act::{Use, check_aliasing};
use crate::kernels::policy::lanes;
use crate::kernels::two_hot::{RowLayout, fit_rows, grid};
use crate::{Error, Result};

/// Slots the policy loss writes, from [`LossOut::index`].
pub const POLICY_TERMS: usize = 5;
/// Slot offset of `sum_r w_r (-c_q q_r / s_q)`.
pub const Q_SLOT: usize = 0;
/// Slot offset of `sum_r w_r (-alpha H_r)`.
pub const ENTROPY_SLOT: usize = 1;
/// Slot offset of `sum_r w_r c_kl D_r / s_kl`.
pub const KL_SLOT: usize = 2;
/// Slot offset of `sum_r w_r (-g c_ll ell_r / s_q)`.
pub const LL_SLOT: usize = 3;
/// Slot offset of the total.
pub const TOTAL_SLOT: usize = 4;

/// Threads per workgroup of the row kernels (`WG` in the shader).
const WG: usize = 64;
/// Storage buffers the policy-loss kernel binds.
const POLICY_STORAGE: u32 = 11;

/// How the raw output becomes an action distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Param {
    /// TD-MPC2: `a = tanh(m + sig eps)`, with the squash correction in the log-prob.
    Squashed,
    /// BMPC: `a = clamp(tanh(m) + sig eps, -1, 1)`, no correction.
    TanhMeanClamp,
}

/// A Gaussian policy head: the action dimension, the parameterisation, the log-std range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyHead {
    /// Action dimension `A` (the network outputs `2A` values per row).
    pub action_dim: usize,
    /// The parameterisation.
    pub param: Param,
    /// Lower end of the log-std range.
    pub log_std_min: f32,
    /// Upper end of the log-std range.
    pub log_std_max: f32,
}

impl PolicyHead {
    /// TD-MPC2's head: squashed, log-std in [-10, 2].
    pub fn tdmpc2(action_dim: usize) -> Self {
        PolicyHead {
            action_dim,
            param: Param::Squashed,
            log_std_min: -10.0,
            log_std_max: 2.0,
        }
    }

    /// BMPC's head: tanh mean, clamped sample, log-std in [-3, 1].
    pub fn bmpc(action_dim: usize) -> Self {
        PolicyHead {
            action_dim,
            param: Param::TanhMeanClamp,
            log_std_min: -3.0,
            log_std_max: 1.0,
        }
    }

    /// `Err` unless `1 <= action_dim < 2^30` and the log-std range is finite with min < max.
    pub fn check(&self) -> Result<()> {
        if self.action_dim == 0 {
            return Err(Error::InvalidArgument(
                "policy head with action dimension 0".into(),
            ));
        }
        if self.action_dim >= 1 << 30 {
            return Err(Error::Limit(format!(
                "policy head: action dimension {} over 2^30",
                self.action_dim
            )));
        }
        check_range("policy head", self.log_std_min, self.log_std_max)
    }
}

fn check_range(what: &str, lo: f32, hi: f32) -> Result<()> {
    if lo.is_finite() && hi.is_finite() && lo < hi {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what}: the log-std range needs finite min < max, got [{lo}, {hi}]"
        )))
    }
}

fn check_finite(what: &str, name: &str, v: f32) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what}: {name} must be finite, got {v}"
        )))
    }
}

fn check_floor(what: &str, name: &str, v: f32) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what}: {name} must be finite and > 0 (it keeps divisions by the std finite), got {v}"
        )))
    }
}

/// The entropy term's form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntropyForm {
    /// TD-MPC2's current (and BMPC's) scaled entropy `-L A lp / (L + 1e-8)`.
    Scaled,
    /// TD-MPC2's original (Oct 2023) and TD-M(PC)²'s `-log pi` with the Gaussian part times A.
    Original,
}

/// Which divergence between the learned Gaussian and the prior.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KlForm {
    /// Closed-form `KL(learned || prior)` (BMPC's direction, mode-seeking).
    Reverse,
    /// Closed-form `KL(prior || learned)` (maximum likelihood, mass-covering).
    Forward,
    /// `log pi(a) - log pi_p(a)` at the policy's sample, both squashed densities
    /// ([`Param::Squashed`] only; policy loss only).
    SingleSample,
}

/// How the per-dimension divergences combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DimReduce {
    /// Mean over the action dimensions (BMPC).
    Mean,
    /// Sum over the action dimensions.
    Sum,
}

impl DimReduce {
    fn factor(self, a: usize) -> f32 {
        match self {
            DimReduce::Mean => (1.0 / a as f64) as f32,
            DimReduce::Sum => 1.0,
        }
    }
}

/// What the prior rows of the policy KL hold (`[R, 2A]` each).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PriorInput {
    /// `(mean, std)`: the stored planner Gaussian, or any prior already converted.
    Gaussian,
    /// A prior network's raw output `[m | s]`, mapped with the policy's [`Param`] and this
    /// log-std range.
    Network {
        /// Lower end of the prior's log-std range.
        log_std_min: f32,
        /// Upper end of the prior's log-std range.
        log_std_max: f32,
    },
}

/// The KL term of the policy loss: `c_kl D_r / s_kl`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KlTerm {
    /// `c_kl` (PO-MPC's lambda).
    pub coef: f32,
    /// The divergence.
    pub form: KlForm,
    /// Mean or sum over dimensions.
    pub reduce: DimReduce,
    /// What the prior rows hold.
    pub prior: PriorInput,
    /// The prior's std is floored at this (> 0; keeps divisions finite).
    pub std_floor: f32,
    /// [`KlForm::SingleSample`]: the prior's pre-squash point is `atanh(a)` with `|a|` clamped
    /// to `1 - squash_clip`, i.e. `clamp(u, -atanh(1 - clip), atanh(1 - clip))` (no gradient
    /// beyond). In (0, 1).
    pub squash_clip: f32,
}

impl KlTerm {
    /// BMPC's term: reverse closed-form KL to the planner's `(mean, std)`, mean over
    /// dimensions, coefficient 1.
    pub fn bmpc() -> Self {
        KlTerm {
            coef: 1.0,
            form: KlForm::Reverse,
            reduce: DimReduce::Mean,
            prior: PriorInput::Gaussian,
            std_floor: 1e-6,
            squash_clip: 1e-6,
        }
    }

    fn check(&self, head: &PolicyHead) -> Result<()> {
        let what = "policy KL term";
        check_finite(what, "coefficient", self.coef)?;
        check_floor(what, "std_floor", self.std_floor)?;
        if !(self.squash_clip > 0.0 && self.squash_clip < 1.0) {
            return Err(Error::InvalidArgument(format!(
                "{what}: squash_clip must be in (0, 1), got {}",
                self.squash_clip
            )));
        }
        if let PriorInput::Network {
            log_std_min,
            log_std_max,
        } = self.prior
        {
            check_range("policy KL prior network", log_std_min, log_std_max)?;
        }
        if self.form == KlForm::SingleSample && head.param != Param::Squashed {
            return Err(Error::InvalidArgument(format!(
                "{what}: the single-sample estimate needs the squashed parameterisation (the \
                 clamped sample has no density); use a closed form with {:?}",
                head.param
            )));
        }
        Ok(())
    }
}

/// TD-M(PC)²'s planner log-likelihood term: `-g coef ell_r / s_q`, `g = [s_q > threshold]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LlTerm {
    /// `c_ll` (TD-M(PC)²: `prior_coef * A / 61`).
    pub coef: f32,
    /// The planner std is floored at this (TD-M(PC)²: 0.05).
    pub std_floor: f32,
    /// The term is on when `s_q > threshold` (TD-M(PC)²: 2).
    pub threshold: f32,
}

impl LlTerm {
    /// TD-M(PC)²'s defaults for `action_dim` actions: coefficient `A / 61`, floor 0.05,
    /// threshold 2.
    pub fn tdmpc_square(action_dim: usize) -> Self {
        LlTerm {
            coef: (action_dim as f64 / 61.0) as f32,
            std_floor: 0.05,
            threshold: 2.0,
        }
    }

    fn check(&self) -> Result<()> {
        let what = "policy LL term";
        check_finite(what, "coefficient", self.coef)?;
        check_floor(what, "std_floor", self.std_floor)?;
        check_finite(what, "threshold", self.threshold)
    }
}

/// The sampling-policy loss: every coefficient is a runtime value (a uniform), only the
/// presence of each term and the forms are pipeline constants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyLossConfig {
    /// The policy head.
    pub head: PolicyHead,
    /// Row weights `w_r = scale * rho^(r / B)` (TD-MPC2: `scale = 1 / (T' B)`, rho 0.5).
    pub weights: RowWeights,
    /// `c_q` of the Q term (needs [`PolicyInputs::q`] unless 0).
    pub c_q: f32,
    /// `alpha` of the entropy term (TD-MPC2, BMPC: 1e-4).
    pub alpha: f32,
    /// The entropy's form.
    pub entropy: EntropyForm,
    /// The KL term, if any (needs [`PolicyInputs::prior`]).
    pub kl: Option<KlTerm>,
    /// The planner log-likelihood term, if any (needs [`PolicyInputs::planner`]).
    pub ll: Option<LlTerm>,
}

impl PolicyLossConfig {
    /// TD-MPC2's policy loss: `-Q / s_q - 1e-4 H` with the scaled entropy, squashed head
    /// (TD-MPC2 uses T' = 4 states: `weights = RowWeights::new(1 / (4 B), 0.5, B)`).
    pub fn tdmpc2(action_dim: usize, weights: RowWeights) -> Self {
        PolicyLossConfig {
            head: PolicyHead::tdmpc2(action_dim),
            weights,
            c_q: 1.0,
            alpha: 1e-4,
            entropy: EntropyForm::Scaled,
            kl: None,
            ll: None,
        }
    }

    /// BMPC's: `KL(pi || b) / s_kl - 1e-4 H` with the reverse closed-form KL to the planner
    /// Gaussian, mean over dimensions, tanh-mean clamped head with log-std in [-3, 1], no Q
    /// (T' = 3).
    pub fn bmpc(action_dim: usize, weights: RowWeights) -> Self {
        PolicyLossConfig {
            head: PolicyHead::bmpc(action_dim),
            weights,
            c_q: 0.0,
            alpha: 1e-4,
            entropy: EntropyForm::Scaled,
            kl: Some(KlTerm::bmpc()),
            ll: None,
        }
    }

    /// TD-M(PC)²'s (`actor_mode = residual`): `1e-4 log pi - Q / s_q` with the original
    /// log-prob, plus `-(A / 61) ell / s_q` once `s_q > 2` (T' = 3).
    pub fn tdmpc_square(action_dim: usize, weights: RowWeights) -> Self {
        PolicyLossConfig {
            head: PolicyHead::tdmpc2(action_dim),
            weights,
            c_q: 1.0,
            alpha: 1e-4,
            entropy: EntropyForm::Original,
            kl: None,
            ll: Some(LlTerm::tdmpc_square(action_dim)),
        }
    }

    /// PO-MPC's (a.3.2): `-Q / s_q - 1e-4 H + lambda KL(pi || pi_psi) / s_kl` against the
    /// adaptive prior network (same head): the reverse closed form (mean over dimensions) for
    /// [`Param::TanhMeanClamp`], the single-sample estimate (sum) for [`Param::Squashed`].
    pub fn pompc(head: PolicyHead, lambda: f32, weights: RowWeights) -> Self {
        let (form, reduce) = match head.param {
            Param::Squashed => (KlForm::SingleSample, DimReduce::Sum),
            Param::TanhMeanClamp => (KlForm::Reverse, DimReduce::Mean),
        };
        PolicyLossConfig {
            head,
            weights,
            c_q: 1.0,
            alpha: 1e-4,
            entropy: EntropyForm::Scaled,
            kl: Some(KlTerm {
                coef: lambda,
                form,
                reduce,
                prior: PriorInput::Network {
                    log_std_min: head.log_std_min,
                    log_std_max: head.log_std_max,
                },
                ..KlTerm::bmpc()
            }),
            ll: None,
        }
    }

    /// `Err` on a bad head, weights, coefficient, range or floor.
    pub fn check(&self) -> Result<()> {
        self.head.check()?;
        self.weights.check()?;
        check_finite("policy loss", "c_q", self.c_q)?;
        check_finite("policy loss", "alpha", self.alpha)?;
        if let Some(k) = &self.kl {
            k.check(&self.head)?;
        }
        if let Some(l) = &self.ll {
            l.check()?;
        }
        Ok(())
    }
}

/// The adaptive prior's fitting loss `sum_r w_r D_r / s_d`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PriorFitConfig {
    /// The prior network's head (its parameterisation and log-std range).
    pub head: PolicyHead,
    /// [`KlForm::Reverse`]: `KL(pi_psi || b)`; [`KlForm::Forward`]: `KL(b || pi_psi)`.
    pub form: KlForm,
    /// Mean or sum over dimensions.
    pub reduce: DimReduce,
    /// The planner's std is floored at this (> 0).
    pub std_floor: f32,
    /// Row weights (PO-MPC: `1 / (T B)`, rho 0.5).
    pub weights: RowWeights,
}

impl PriorFitConfig {
    /// PO-MPC's default (a.7): reverse KL, mean over dimensions, std floor 1e-6.
    pub fn new(head: PolicyHead, weights: RowWeights) -> Self {
        PriorFitConfig {
            head,
            form: KlForm::Reverse,
            reduce: DimReduce::Mean,
            std_floor: 1e-6,
            weights,
        }
    }

    /// `Err` on a bad head, weights, form or floor.
    pub fn check(&self) -> Result<()> {
        self.head.check()?;
        self.weights.check()?;
        check_floor("prior fit", "std_floor", self.std_floor)?;
        if self.form == KlForm::SingleSample {
            return Err(Error::InvalidArgument(
                "prior fit: the divergence is a closed form, Reverse or Forward".into(),
            ));
        }
        Ok(())
    }
}

/// Rows of one operand: row `r` at `at.offset + r * at.stride` of `buf`.
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a> {
    /// The buffer.
    pub buf: &'a GpuBuffer<f32>,
    /// Where the rows are.
    pub at: RowLayout,
}

impl<'a> Rows<'a> {
    /// Rows of `width` back to back from element 0.
    pub fn new(buf: &'a GpuBuffer<f32>, width: usize) -> Self {
        Rows {
            buf,
            at: RowLayout::contiguous(width),
        }
    }

    /// Rows at `at`.
    pub fn at(buf: &'a GpuBuffer<f32>, at: RowLayout) -> Self {
        Rows { buf, at }
    }
}

/// One value of a GPU buffer (a [`RunningScale`](crate::kernels::optim::RunningScale)'s).
#[derive(Clone, Copy, Debug)]
pub struct Scalar<'a> {
    /// The buffer.
    pub buf: &'a GpuBuffer<f32>,
    /// The element.
    pub index: usize,
}

impl<'a> Scalar<'a> {
    /// Element 0 of `buf`.
    pub fn new(buf: &'a GpuBuffer<f32>) -> Self {
        Scalar { buf, index: 0 }
    }
}

/// The Q heads' values at the samples and their action gradients.
#[derive(Clone, Copy, Debug)]
pub struct QInput<'a> {
    /// `q_r`, rows of 1.
    pub values: Rows<'a>,
    /// `d q_r / d a_r`, rows of `A`.
    pub grad: Rows<'a>,
}

/// The inputs of the policy loss.
#[derive(Clone, Copy, Debug)]
pub struct PolicyInputs<'a> {
    /// The policy network's raw output, rows of `2A`: raw mean, then raw log-std.
    pub h: Rows<'a>,
    /// The sample's standard normal noise, rows of `A`.
    pub eps: Rows<'a>,
    /// The Q term's inputs (required when `c_q != 0`).
    pub q: Option<QInput<'a>>,
    /// The KL prior, rows of `2A` ([`PriorInput`]).
    pub prior: Option<Rows<'a>>,
    /// The planner Gaussian `(mean, std)` of the LL term, rows of `2A`.
    pub planner: Option<Rows<'a>>,
    /// `s_q` (1 if `None`).
    pub s_q: Option<Scalar<'a>>,
    /// `s_kl` (1 if `None`).
    pub s_kl: Option<Scalar<'a>>,
}

impl<'a> PolicyInputs<'a> {
    /// Only `h` and `eps`.
    pub fn new(h: Rows<'a>, eps: Rows<'a>) -> Self {
        PolicyInputs {
            h,
            eps,
            q: None,
            prior: None,
            planner: None,
            s_q: None,
            s_kl: None,
        }
    }
}

/// The inputs of the prior fit.
#[derive(Clone, Copy, Debug)]
pub struct PriorFitInputs<'a> {
    /// The prior network's raw output, rows of `2A`.
    pub out: Rows<'a>,
    /// The planner Gaussian `(mean, std)`, rows of `2A`.
    pub planner: Rows<'a>,
    /// `s_d` (1 if `None`).
    pub s_d: Option<Scalar<'a>>,
}

/// The flags (pipeline constants) of one policy-loss pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyFlags {
    /// The parameterisation.
    pub param: Param,
    /// The entropy's form.
    pub entropy: EntropyForm,
    /// The KL's form, if there is a KL term.
    pub kl: Option<KlForm>,
    /// The prior rows are a network's raw output.
    pub prior_net: bool,
    /// There is a Q term.
    pub q: bool,
    /// There is an LL term.
    pub ll: bool,
    /// Only write the divergence rows.
    pub div_only: bool,
    /// Write the gradient.
    pub grad: bool,
    /// Add it instead.
    pub grad_add: bool,
    /// Write the divergence rows too.
    pub write_d: bool,
    /// Add the sums into their slots.
    pub loss_add: bool,
}

/// The flags of one prior-fit pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PriorFlags {
    /// The prior network's parameterisation.
    pub param: Param,
    /// [`KlForm::Reverse`] or [`KlForm::Forward`].
    pub form: KlForm,
    /// Only write the divergence rows.
    pub div_only: bool,
    /// Write the gradient.
    pub grad: bool,
    /// Add it instead.
    pub grad_add: bool,
    /// Write the divergence rows too.
    pub write_d: bool,
    /// Add the sum into its slot.
    pub loss_add: bool,
}

/// One pipeline of `policy_loss.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyLossKernel {
    /// The action sample.
    Sample {
        /// `A`.
        action_dim: usize,
        /// The parameterisation.
        param: Param,
    },
    /// The policy loss (or its divergence pass).
    PolicyLoss {
        /// `A`.
        action_dim: usize,
        /// The flags.
        flags: PolicyFlags,
    },
    /// The prior fit (or its divergence pass).
    PriorFit {
        /// `A`.
        action_dim: usize,
        /// The flags.
        flags: PriorFlags,
    },
    /// Partials summed into slots.
    Reduce {
        /// Add into the slots.
        loss_add: bool,
    },
}

const SAMPLE: KernelSpec = KernelSpec {
    shader: "policy_loss",
    entry: "sample",
    bindings: &[
        (0, Binding::Read),
        (1, Binding::Read),
        (8, Binding::ReadWrite),
        (11, Binding::Uniform),
    ],
};
const POLICY_LOSS: KernelSpec = KernelSpec {
    shader: "policy_loss",
    entry: "policy_loss",
    bindings: &[
        (0, Binding::Read),
        (1, Binding::Read),
        (2, Binding::Read),
        (3, Binding::Read),
        (4, Binding::Read),
        (5, Binding::Read),
        (6, Binding::Read),
        (7, Binding::Read),
        (8, Binding::ReadWrite),
        (9, Binding::ReadWrite),
        (10, Binding::ReadWrite),
        (11, Binding::Uniform),
    ],
};
const PRIOR_FIT: KernelSpec = KernelSpec {
    shader: "policy_loss",
    entry: "prior_fit",
    bindings: &[
        (0, Binding::Read),
        (5, Binding::Read),
        (7, Binding::Read),
        (8, Binding::ReadWrite),
        (9, Binding::ReadWrite),
        (10, Binding::ReadWrite),
        (11, Binding::Uniform),
    ],
};
const REDUCE: KernelSpec = KernelSpec {
    shader: "policy_loss",
    entry: "reduce",
    bindings: &[
        (0, Binding::Read),
        (10, Binding::ReadWrite),
        (11, Binding::Uniform),
    ],
};

fn param_id(p: Param) -> f64 {
    match p {
        Param::Squashed => 0.0,
        Param::TanhMeanClamp => 1.0,
    }
}

fn kl_id(k: Option<KlForm>) -> f64 {
    match k {
        None => 0.0,
        Some(KlForm::Reverse) => 1.0,
        Some(KlForm::Forward) => 2.0,
        Some(KlForm::SingleSample) => 3.0,
    }
}

fn b(v: bool) -> f64 {
    v as u8 as f64
}

/// The header and override constants of one pipeline: exactly what the launch code builds
/// (flags that a pass ignores are normalised so equal pipelines share one cache entry).
pub fn pipeline_constants(
    kernel: &PolicyLossKernel,
) -> (KernelSpec, Header, Vec<(&'static str, f64)>) {
    match *kernel {
        PolicyLossKernel::Sample { action_dim, param } => (
            SAMPLE,
            Header::default(),
            vec![("A", action_dim as f64), ("PARAM", param_id(param))],
        ),
        PolicyLossKernel::PolicyLoss { action_dim, flags } => {
            let f = normalise_policy(flags);
            (
                POLICY_LOSS,
                Header::default(),
                vec![
                    ("A", action_dim as f64),
                    ("LANES", lanes(action_dim) as f64),
                    ("PARAM", param_id(f.param)),
                    (
                        "ENTROPY",
                        match f.entropy {
                            EntropyForm::Scaled => 0.0,
                            EntropyForm::Original => 1.0,
                        },
                    ),
                    ("KL", kl_id(f.kl)),
                    ("PRIOR_NET", b(f.prior_net)),
                    ("Q_TERM", b(f.q)),
                    ("LL_TERM", b(f.ll)),
                    ("DIV_ONLY", b(f.div_only)),
                    ("GRAD", b(f.grad)),
                    ("GRAD_ADD", b(f.grad_add)),
                    ("WRITE_D", b(f.write_d)),
                    ("LOSS_ADD", b(f.loss_add)),
                ],
            )
        }
        PolicyLossKernel::PriorFit { action_dim, flags } => {
            let f = normalise_prior(flags);
            (
                PRIOR_FIT,
                Header::default(),
                vec![
                    ("A", action_dim as f64),
                    ("LANES", lanes(action_dim) as f64),
                    ("PARAM", param_id(f.param)),
                    ("KL", kl_id(Some(f.form))),
                    ("DIV_ONLY", b(f.div_only)),
                    ("GRAD", b(f.grad)),
                    ("GRAD_ADD", b(f.grad_add)),
                    ("WRITE_D", b(f.write_d)),
                    ("LOSS_ADD", b(f.loss_add)),
                ],
            )
        }
        PolicyLossKernel::Reduce { loss_add } => (
            REDUCE,
            Header::default(),
            // A is unused by `reduce` but has no default.
            vec![("A", 1.0), ("LOSS_ADD", b(loss_add))],
        ),
    }
}

fn normalise_policy(f: PolicyFlags) -> PolicyFlags {
    let grad = f.grad && !f.div_only;
    let base = PolicyFlags {
        prior_net: f.prior_net && f.kl.is_some(),
        grad,
        grad_add: grad && f.grad_add,
        ..f
    };
    if f.div_only {
        // The divergence pass reads h, eps and the prior only.
        PolicyFlags {
            entropy: EntropyForm::Scaled,
            q: false,
            ll: false,
            write_d: false,
            loss_add: false,
            ..base
        }
    } else {
        base
    }
}

fn normalise_prior(f: PriorFlags) -> PriorFlags {
    let grad = f.grad && !f.div_only;
    PriorFlags {
        grad,
        grad_add: grad && f.grad_add,
        write_d: f.write_d && !f.div_only,
        loss_add: f.loss_add && !f.div_only,
        ..f
    }
}

/// Every pipeline the launch code can build for `action_dim` (for the shader tests).
pub fn all_kernels(action_dim: usize) -> Vec<PolicyLossKernel> {
    let mut out = vec![
        PolicyLossKernel::Reduce { loss_add: false },
        PolicyLossKernel::Reduce { loss_add: true },
    ];
    let params = [Param::Squashed, Param::TanhMeanClamp];
    // (div_only, grad, grad_add, write_d, loss_add) of the passes.
    let mut passes = vec![(true, false, false, false, false)];
    for g in 0..3 {
        for write_d in [false, true] {
            for loss_add in [false, true] {
                passes.push((false, g > 0, g == 2, write_d, loss_add));
            }
        }
    }
    for param in params {
        out.push(PolicyLossKernel::Sample { action_dim, param });
        for form in [KlForm::Reverse, KlForm::Forward] {
            for &(div_only, grad, grad_add, write_d, loss_add) in &passes {
                let flags = PriorFlags {
                    param,
                    form,
                    div_only,
                    grad,
                    grad_add,
                    write_d,
                    loss_add,
                };
                out.push(PolicyLossKernel::PriorFit { action_dim, flags });
            }
        }
        let mut kls = vec![
            (None, false),
            (Some(KlForm::Reverse), false),
            (Some(KlForm::Reverse), true),
            (Some(KlForm::Forward), false),
            (Some(KlForm::Forward), true),
        ];
        if param == Param::Squashed {
            kls.push((Some(KlForm::SingleSample), false));
            kls.push((Some(KlForm::SingleSample), true));
        }
        for &(kl, prior_net) in &kls {
            for &(div_only, grad, grad_add, write_d, loss_add) in &passes {
                if div_only && kl.is_none() {
                    continue;
                }
                let terms: &[(EntropyForm, bool, bool)] = if div_only {
                    &[(EntropyForm::Scaled, false, false)]
                } else {
                    &[
                        (EntropyForm::Scaled, false, false),
                        (EntropyForm::Scaled, true, false),
                        (EntropyForm::Scaled, false, true),
                        (EntropyForm::Scaled, true, true),
                        (EntropyForm::Original, false, false),
                        (EntropyForm::Original, true, false),
                        (EntropyForm::Original, false, true),
                        (EntropyForm::Original, true, true),
                    ]
                };
                for &(entropy, q, ll) in terms {
                    let flags = PolicyFlags {
                        param,
                        entropy,
                        kl,
                        prior_net,
                        q,
                        ll,
                        div_only,
                        grad,
                        grad_add,
                        write_d,
                        loss_add,
                    };
                    out.push(PolicyLossKernel::PolicyLoss { action_dim, flags });
                }
            }
        }
    }
    out
}

/// Rows each workgroup of the loss kernels handles.
fn rows_per_group(action_dim: usize) -> usize {
    WG / lanes(action_dim) as usize
}

/// Workgroups of [`record_policy_loss`] over `rows` rows.
pub fn policy_loss_partials(cfg: &PolicyLossConfig, rows: usize) -> usize {
    rows.div_ceil(rows_per_group(cfg.head.action_dim))
}

/// Elements of the scratch [`record_policy_loss`] needs for `rows` rows: 5 partial sums per
/// workgroup, or 0 when one workgroup does (it writes the slots directly).
pub fn policy_loss_scratch_len(cfg: &PolicyLossConfig, rows: usize) -> usize {
    let g = policy_loss_partials(cfg, rows);
    if g > 1 { POLICY_TERMS * g } else { 0 }
}

/// Workgroups of [`record_prior_fit`] over `rows` rows.
pub fn prior_fit_partials(cfg: &PriorFitConfig, rows: usize) -> usize {
    rows.div_ceil(rows_per_group(cfg.head.action_dim))
}

/// Elements of the scratch [`record_prior_fit`] needs: one partial per workgroup, or 0 when
/// one workgroup does.
pub fn prior_fit_scratch_len(cfg: &PriorFitConfig, rows: usize) -> usize {
    let g = prior_fit_partials(cfg, rows);
    if g > 1 { g } else { 0 }
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    rows_per_step: u32,
    count: u32,
    part_off: u32,
    h_off: u32,
    h_stride: u32,
    eps_off: u32,
    eps_stride: u32,
    q_off: u32,
    q_stride: u32,
    dq_off: u32,
    dq_stride: u32,
    prior_off: u32,
    prior_stride: u32,
    plan_off: u32,
    plan_stride: u32,
    out_off: u32,
    out_stride: u32,
    d_off: u32,
    d_stride: u32,
    sq_index: u32,
    skl_index: u32,
    has_sq: u32,
    has_skl: u32,
    terms: u32,
    _pad: [u32; 3],
    scale: f32,
    rho: f32,
    c_q: f32,
    alpha: f32,
    c_kl: f32,
    kl_dim: f32,
    c_ll: f32,
    ll_threshold: f32,
    lo: f32,
    hi: f32,
    prior_lo: f32,
    prior_hi: f32,
    prior_floor: f32,
    prior_log_floor: f32,
    ll_floor: f32,
    u_max: f32,
}

fn to_u32(what: &str, name: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Limit(format!("{what}: {name} {v} over 2^32")))
}

/// Elements `offset..end` spanned by `rows` rows of `width`.
fn span(rows: usize, width: usize, at: RowLayout) -> (usize, usize) {
    (
        at.offset,
        at.offset + rows.saturating_sub(1) * at.stride + width,
    )
}

/// Checks rows of an operand; returns (offset, stride) and records its use.
fn operand<'a>(
    what: &str,
    name: &'a str,
    rows: usize,
    width: usize,
    r: Rows<'a>,
    write: bool,
    uses: &mut Vec<Use<'a>>,
) -> Result<(u32, u32)> {
    let (o, s) = fit_rows(what, name, r.buf.len(), rows, width, r.at, write)?;
    uses.push(Use {
        name,
        buf: &r.buf.buffer,
        range: span(rows, width, r.at),
        write,
    });
    Ok((o, s))
}

fn scalar<'a>(
    what: &str,
    name: &'a str,
    s: Option<Scalar<'a>>,
    uses: &mut Vec<Use<'a>>,
) -> Result<(u32, u32)> {
    let Some(s) = s else { return Ok((0, 0)) };
    if s.index >= s.buf.len() {
        return Err(Error::Shape(format!(
            "{what}: {name} index {} is past the end of {:?} ({} elements)",
            s.index,
            s.buf.label(),
            s.buf.len()
        )));
    }
    uses.push(Use {
        name,
        buf: &s.buf.buffer,
        range: (s.index, s.index + 1),
        write: false,
    });
    Ok((to_u32(what, name, s.index)?, 1))
}

fn check_slots(what: &str, loss: &LossOut, n: usize) -> Result<()> {
    if loss
        .index
        .checked_add(n)
        .is_none_or(|e| e > loss.losses.len())
    {
        return Err(Error::Shape(format!(
            "{what}: loss slots {}..{} are past the end of {:?} ({} elements)",
            loss.index,
            loss.index.saturating_add(n),
            loss.losses.label(),
            loss.losses.len()
        )));
    }
    to_u32(what, "loss slot", loss.index + n)?;
    Ok(())
}

fn check_storage(rec: &Recorder, what: &str, need: u32) -> Result<()> {
    let have = rec.gpu().limits().max_storage_buffers_per_shader_stage;
    if have < need {
        return Err(Error::Limit(format!(
            "{what}: the kernel binds {need} storage buffers, the device allows {have} per \
             shader stage (open the Gpu with the adapter's limits)"
        )));
    }
    Ok(())
}

/// Record `action[r] = a(h_r, eps_r)` for `rows` rows: `tanh(m + sig eps)` ([`Param::Squashed`],
/// TD-MPC2's sample) or `clamp(tanh(m) + sig eps, -1, 1)` ([`Param::TanhMeanClamp`], BMPC's).
/// `h` rows of `2A`, `eps` and `action` rows of `A`; `action` must not share a buffer with
/// the inputs.
pub fn record_sample(
    rec: &mut Recorder,
    head: &PolicyHead,
    rows: usize,
    h: Rows,
    eps: Rows,
    action: Rows,
) -> Result<()> {
    let what = "policy sample";
    head.check()?;
    let a = head.action_dim;
    if rows == 0 {
        return Ok(());
    }
    let mut uses = Vec::new();
    let (h_off, h_stride) = operand(what, "h", rows, 2 * a, h, false, &mut uses)?;
    let (eps_off, eps_stride) = operand(what, "eps", rows, a, eps, false, &mut uses)?;
    let (out_off, out_stride) = operand(what, "action", rows, a, action, true, &mut uses)?;
    check_aliasing(what, &uses)?;
    let elems = rows
        .checked_mul(a)
        .filter(|&e| e <= u32::MAX as usize - WG)
        .ok_or_else(|| Error::Limit(format!("{what}: {rows} rows of {a} over 2^32 elements")))?;
    let gpu = rec.gpu();
    let groups = grid(gpu, elems.div_ceil(WG), what)?;
    let (spec, header, ov) = pipeline_constants(&PolicyLossKernel::Sample {
        action_dim: a,
        param: head.param,
    });
    let pipe = gpu.pipeline(&spec, &header, &ov)?;
    let p = Params {
        rows: rows as u32,
        h_off,
        h_stride,
        eps_off,
        eps_stride,
        out_off,
        out_stride,
        lo: head.log_std_min,
        hi: head.log_std_max,
        ..Default::default()
    };
    rec.dispatch(
        &pipe,
        &[&h.buf.buffer, &eps.buf.buffer, &action.buf.buffer],
        Some(&p),
        groups,
    )
}

/// Which pass of the policy loss.
enum PolicyPass<'a> {
    Divergence(Rows<'a>),
    Loss {
        grad: Option<GradOut<'a>>,
        divergence: Option<Rows<'a>>,
        loss: LossOut<'a>,
        scratch: Option<&'a GpuBuffer<f32>>,
    },
}

/// Record the sampling-policy loss (see the module docs) over `rows` rows `[T', B]`:
/// `w_r d loss_r / d h_r` into `grad` if given (rows of `2A`, written or added), `D_r` (before
/// the division by `s_kl`) into `divergence` if given (rows of 1), and the five weighted sums
/// (Q, entropy, KL, LL, total) into `loss.losses[loss.index..loss.index + 5]` (written or
/// added).
///
/// `scratch` holds [`policy_loss_scratch_len`] partials when more than one workgroup runs
/// (`None` allocates one per call). Written buffers must differ from the read ones and not
/// overlap one another. Inputs must match the config: `q` when `c_q != 0`, `prior` exactly
/// when there is a KL term, `planner` exactly when there is an LL term. With no rows the slots
/// get 0 (or keep their values when adding). The kernel binds 11 storage buffers (the
/// adapter's limit is used; WebGPU's default of 8 is too few).
#[allow(clippy::too_many_arguments)]
pub fn record_policy_loss<'a>(
    rec: &mut Recorder,
    cfg: &PolicyLossConfig,
    rows: usize,
    inputs: &PolicyInputs<'a>,
    grad: Option<GradOut<'a>>,
    divergence: Option<Rows<'a>>,
    loss: LossOut<'a>,
    scratch: Option<&'a GpuBuffer<f32>>,
) -> Result<()> {
    record_policy(
        rec,
        cfg,
        rows,
        inputs,
        PolicyPass::Loss {
            grad,
            divergence,
            loss,
            scratch,
        },
    )
}

/// Record only the policy KL's `D_r` (before the division by `s_kl`) into `divergence` (rows
/// of 1), from `h`, `eps` and the prior (the other inputs are not read): run it before the
/// loss pass to update `s_kl` from the `t = 0` rows first, as BMPC does. Needs a KL term.
pub fn record_policy_divergence<'a>(
    rec: &mut Recorder,
    cfg: &PolicyLossConfig,
    rows: usize,
    inputs: &PolicyInputs<'a>,
    divergence: Rows<'a>,
) -> Result<()> {
    record_policy(rec, cfg, rows, inputs, PolicyPass::Divergence(divergence))
}

fn record_policy<'a>(
    rec: &mut Recorder,
    cfg: &PolicyLossConfig,
    rows: usize,
    x: &PolicyInputs<'a>,
    pass: PolicyPass<'a>,
) -> Result<()> {
    let div_only = matches!(pass, PolicyPass::Divergence(_));
    let what = if div_only {
        "policy divergence"
    } else {
        "policy loss"
    };
    cfg.check()?;
    let a = cfg.head.action_dim;
    // Inputs against the config.
    if div_only && cfg.kl.is_none() {
        return Err(Error::InvalidArgument(format!(
            "{what}: the config has no KL term"
        )));
    }
    if !div_only && cfg.c_q != 0.0 && x.q.is_none() {
        return Err(Error::InvalidArgument(format!(
            "{what}: c_q is {} but no Q values and gradients were given",
            cfg.c_q
        )));
    }
    if cfg.kl.is_some() != x.prior.is_some() {
        return Err(Error::InvalidArgument(format!(
            "{what}: prior rows are needed exactly when the config has a KL term (KL term: \
             {}, prior rows: {})",
            cfg.kl.is_some(),
            x.prior.is_some()
        )));
    }
    if !div_only && cfg.ll.is_some() != x.planner.is_some() {
        return Err(Error::InvalidArgument(format!(
            "{what}: planner rows are needed exactly when the config has an LL term (LL term: \
             {}, planner rows: {})",
            cfg.ll.is_some(),
            x.planner.is_some()
        )));
    }
    let q_on = !div_only && x.q.is_some();
    let ll_on = !div_only && cfg.ll.is_some();
    if let PolicyPass::Loss { loss, .. } = &pass {
        check_slots(what, loss, POLICY_TERMS)?;
    }
    if rows == 0 {
        return match pass {
            PolicyPass::Divergence(_) => Ok(()),
            PolicyPass::Loss { loss, .. } => zero_slots(rec, what, x.h.buf, POLICY_TERMS, loss),
        };
    }
    let n = rows;
    let mut uses = Vec::new();
    let mut p = Params {
        rows: to_u32(what, "rows", rows)?,
        rows_per_step: cfg.weights.rows_per_step as u32,
        scale: cfg.weights.scale,
        rho: cfg.weights.rho,
        c_q: cfg.c_q,
        alpha: cfg.alpha,
        lo: cfg.head.log_std_min,
        hi: cfg.head.log_std_max,
        terms: POLICY_TERMS as u32,
        ..Default::default()
    };
    (p.h_off, p.h_stride) = operand(what, "h", n, 2 * a, x.h, false, &mut uses)?;
    (p.eps_off, p.eps_stride) = operand(what, "eps", n, a, x.eps, false, &mut uses)?;
    let mut reads = [&x.h.buf.buffer; 8];
    reads[1] = &x.eps.buf.buffer;
    if q_on && let Some(q) = &x.q {
        (p.q_off, p.q_stride) = operand(what, "q", n, 1, q.values, false, &mut uses)?;
        (p.dq_off, p.dq_stride) = operand(what, "dq", n, a, q.grad, false, &mut uses)?;
        reads[2] = &q.values.buf.buffer;
        reads[3] = &q.grad.buf.buffer;
    }
    if let (Some(k), Some(pr)) = (&cfg.kl, &x.prior) {
        (p.prior_off, p.prior_stride) = operand(what, "prior", n, 2 * a, *pr, false, &mut uses)?;
        reads[4] = &pr.buf.buffer;
        p.c_kl = k.coef;
        p.kl_dim = k.reduce.factor(a);
        p.prior_floor = k.std_floor;
        p.prior_log_floor = (k.std_floor as f64).ln() as f32;
        let c = k.squash_clip as f64;
        // atanh(1 - c) = log((2 - c) / c) / 2.
        p.u_max = (0.5 * ((2.0 - c) / c).ln()) as f32;
        if let PriorInput::Network {
            log_std_min,
            log_std_max,
        } = k.prior
        {
            p.prior_lo = log_std_min;
            p.prior_hi = log_std_max;
        }
    }
    if ll_on && let (Some(l), Some(pl)) = (&cfg.ll, &x.planner) {
        (p.plan_off, p.plan_stride) = operand(what, "planner", n, 2 * a, *pl, false, &mut uses)?;
        reads[5] = &pl.buf.buffer;
        p.c_ll = l.coef;
        p.ll_floor = l.std_floor;
        p.ll_threshold = l.threshold;
    }
    if !div_only {
        (p.sq_index, p.has_sq) = scalar(what, "s_q", x.s_q, &mut uses)?;
        (p.skl_index, p.has_skl) = scalar(what, "s_kl", x.s_kl, &mut uses)?;
        if let Some(s) = &x.s_q {
            reads[6] = &s.buf.buffer;
        }
        if let Some(s) = &x.s_kl {
            reads[7] = &s.buf.buffer;
        }
    }
    let mut flags = PolicyFlags {
        param: cfg.head.param,
        entropy: cfg.entropy,
        kl: cfg.kl.map(|k| k.form),
        prior_net: matches!(cfg.kl.map(|k| k.prior), Some(PriorInput::Network { .. })),
        q: q_on,
        ll: ll_on,
        div_only,
        grad: false,
        grad_add: false,
        write_d: false,
        loss_add: false,
    };
    let groups = rows.div_ceil(rows_per_group(a));
    p.count = to_u32(what, "workgroups", groups)?;
    check_storage(rec, what, POLICY_STORAGE)?;
    match pass {
        PolicyPass::Divergence(d) => {
            (p.d_off, p.d_stride) = operand(what, "divergence", n, 1, d, true, &mut uses)?;
            check_aliasing(what, &uses)?;
            let dbuf = &d.buf.buffer;
            let kernel = PolicyLossKernel::PolicyLoss {
                action_dim: a,
                flags,
            };
            let bufs = [
                reads[0], reads[1], reads[2], reads[3], reads[4], reads[5], reads[6], reads[7],
                dbuf, dbuf, dbuf,
            ];
            dispatch(rec, what, &kernel, &bufs, &p, groups)
        }
        PolicyPass::Loss {
            grad,
            divergence,
            loss,
            scratch,
        } => {
            let mut writes: [Option<&wgpu::Buffer>; 2] = [None, None];
            if let Some(g) = grad {
                (p.out_off, p.out_stride) =
                    fit_rows(what, "gradient", g.buf.len(), n, 2 * a, g.at, true)?;
                uses.push(Use {
                    name: "gradient",
                    buf: &g.buf.buffer,
                    range: span(n, 2 * a, g.at),
                    write: true,
                });
                writes[0] = Some(&g.buf.buffer);
                flags.grad = true;
                flags.grad_add = g.accumulate;
            }
            if let Some(d) = divergence {
                (p.d_off, p.d_stride) = operand(what, "divergence", n, 1, d, true, &mut uses)?;
                writes[1] = Some(&d.buf.buffer);
                flags.write_d = true;
            }
            let kernel = |loss_add| PolicyLossKernel::PolicyLoss {
                action_dim: a,
                flags: PolicyFlags { loss_add, ..flags },
            };
            finish_loss(
                rec, what, &kernel, reads, writes, uses, p, groups, loss, scratch,
            )
        }
    }
}

/// The loss pass: the slots or the scratch, the aliasing checks, the dispatches.
#[allow(clippy::too_many_arguments)]
fn finish_loss<'a>(
    rec: &mut Recorder,
    what: &str,
    kernel: &dyn Fn(bool) -> PolicyLossKernel,
    reads: [&'a wgpu::Buffer; 8],
    writes: [Option<&'a wgpu::Buffer>; 2],
    mut uses: Vec<Use<'a>>,
    mut p: Params,
    groups: usize,
    loss: LossOut<'a>,
    scratch: Option<&'a GpuBuffer<f32>>,
) -> Result<()> {
    let terms = p.terms as usize;
    let slots = Use {
        name: "loss slots",
        buf: &loss.losses.buffer,
        range: (loss.index, loss.index + terms),
        write: true,
    };
    uses.push(slots);
    let gpu = rec.gpu();
    if groups <= 1 {
        check_aliasing(what, &uses)?;
        p.part_off = loss.index as u32;
        let part = &loss.losses.buffer;
        let bufs = [
            reads[0],
            reads[1],
            reads[2],
            reads[3],
            reads[4],
            reads[5],
            reads[6],
            reads[7],
            writes[0].unwrap_or(part),
            writes[1].unwrap_or(part),
            part,
        ];
        let k = kernel(loss.accumulate);
        return dispatch(rec, what, &k, &bufs[..], &p, groups);
    }
    let need = terms * groups;
    let own;
    let part = match scratch {
        Some(s) if s.len() >= need => s,
        Some(s) => {
            return Err(Error::Shape(format!(
                "{what}: scratch ({:?}) holds {} elements, {need} partials needed",
                s.label(),
                s.len()
            )));
        }
        None => {
            own = GpuBuffer::new(gpu, "pompc policy-loss partials", need)?;
            &own
        }
    };
    let mut all = uses.clone();
    all.push(Use {
        name: "scratch",
        buf: &part.buffer,
        range: (0, need),
        write: true,
    });
    check_aliasing(what, &all)?;
    check_aliasing(
        what,
        &[
            Use {
                name: "scratch",
                buf: &part.buffer,
                range: (0, need),
                write: false,
            },
            slots,
        ],
    )?;
    p.part_off = 0;
    let pb = &part.buffer;
    let bufs = [
        reads[0],
        reads[1],
        reads[2],
        reads[3],
        reads[4],
        reads[5],
        reads[6],
        reads[7],
        writes[0].unwrap_or(pb),
        writes[1].unwrap_or(pb),
        pb,
    ];
    dispatch(rec, what, &kernel(false), &bufs[..], &p, groups)?;
    record_reduce(rec, pb, 0, groups, terms, loss)
}

/// The prior-fit bindings in the kernel's order, from the 11 of the policy loss.
fn prior_fit_bindings<'b>(all: &[&'b wgpu::Buffer]) -> Vec<&'b wgpu::Buffer> {
    vec![all[0], all[5], all[7], all[8], all[9], all[10]]
}

fn dispatch(
    rec: &mut Recorder,
    what: &str,
    kernel: &PolicyLossKernel,
    bufs: &[&wgpu::Buffer],
    p: &Params,
    groups: usize,
) -> Result<()> {
    let gpu = rec.gpu();
    let (spec, header, ov) = pipeline_constants(kernel);
    let pipe = gpu.pipeline(&spec, &header, &ov)?;
    let bufs = match kernel {
        PolicyLossKernel::PriorFit { .. } => prior_fit_bindings(bufs),
        _ => bufs.to_vec(),
    };
    rec.dispatch(&pipe, &bufs, Some(p), grid(gpu, groups, what)?)
}

/// No rows: zero sums in the slots (which keep their values when adding). `src` is any
/// buffer other than the slots' (nothing is read from it).
fn zero_slots(
    rec: &mut Recorder,
    what: &str,
    src: &GpuBuffer<f32>,
    terms: usize,
    loss: LossOut,
) -> Result<()> {
    if loss.accumulate {
        return Ok(());
    }
    if src.buffer == loss.losses.buffer {
        return Err(Error::InvalidArgument(format!(
            "{what}: the input rows and the loss slots are the same buffer"
        )));
    }
    record_reduce(rec, &src.buffer, 0, 0, terms, loss)
}

/// Sum `count` partials per term (term `k` at `src[src_off + k * count ..]`) into
/// `loss.losses[loss.index + k]` for `k < terms`.
fn record_reduce(
    rec: &mut Recorder,
    src: &wgpu::Buffer,
    src_off: usize,
    count: usize,
    terms: usize,
    loss: LossOut,
) -> Result<()> {
    let p = Params {
        h_off: src_off as u32,
        count: count as u32,
        part_off: loss.index as u32,
        terms: terms as u32,
        ..Default::default()
    };
    let (spec, header, ov) = pipeline_constants(&PolicyLossKernel::Reduce {
        loss_add: loss.accumulate,
    });
    let pipe = rec.gpu().pipeline(&spec, &header, &ov)?;
    rec.dispatch(&pipe, &[src, &loss.losses.buffer], Some(&p), [1, 1, 1])
}

/// Which pass of the prior fit.
enum PriorPass<'a> {
    Divergence(Rows<'a>),
    Loss {
        grad: Option<GradOut<'a>>,
        divergence: Option<Rows<'a>>,
        loss: LossOut<'a>,
        scratch: Option<&'a GpuBuffer<f32>>,
    },
}

/// Record the adaptive prior's fitting loss over `rows` rows: `sum_r w_r D_r / s_d` into
/// `loss.losses[loss.index]` (written or added), `w_r d(D_r / s_d) / d out_r` into `grad` if
/// given (rows of `2A` like the prior network's raw output, written or added), and `D_r`
/// (before the division by `s_d`) into `divergence` if given (rows of 1). `D_r` is the closed
/// form reverse `KL(pi_psi || b)` or forward `KL(b || pi_psi)`, mean or sum over dimensions,
/// between the prior network's Gaussian and the planner's `(mean, std)` with the std floored.
///
/// `scratch` holds [`prior_fit_scratch_len`] partials when more than one workgroup runs
/// (`None` allocates one per call). Written buffers must differ from the read ones and not
/// overlap one another. With no rows the slot gets 0 (or keeps its value when adding).
#[allow(clippy::too_many_arguments)]
pub fn record_prior_fit<'a>(
    rec: &mut Recorder,
    cfg: &PriorFitConfig,
    rows: usize,
    inputs: &PriorFitInputs<'a>,
    grad: Option<GradOut<'a>>,
    divergence: Option<Rows<'a>>,
    loss: LossOut<'a>,
    scratch: Option<&'a GpuBuffer<f32>>,
) -> Result<()> {
    record_prior(
        rec,
        cfg,
        rows,
        inputs,
        PriorPass::Loss {
            grad,
            divergence,
            loss,
            scratch,
        },
    )
}

/// Record only the prior fit's `D_r` into `divergence` (rows of 1), to update `s_d` from the
/// `t = 0` rows before [`record_prior_fit`] reads it.
pub fn record_prior_divergence<'a>(
    rec: &mut Recorder,
    cfg: &PriorFitConfig,
    rows: usize,
    inputs: &PriorFitInputs<'a>,
    divergence: Rows<'a>,
) -> Result<()> {
    record_prior(rec, cfg, rows, inputs, PriorPass::Divergence(divergence))
}

fn record_prior<'a>(
    rec: &mut Recorder,
    cfg: &PriorFitConfig,
    rows: usize,
    x: &PriorFitInputs<'a>,
    pass: PriorPass<'a>,
) -> Result<()> {
    let div_only = matches!(pass, PriorPass::Divergence(_));
    let what = if div_only {
        "prior divergence"
    } else {
        "prior fit"
    };
    cfg.check()?;
    let a = cfg.head.action_dim;
    if let PriorPass::Loss { loss, .. } = &pass {
        check_slots(what, loss, 1)?;
    }
    if rows == 0 {
        return match pass {
            PriorPass::Divergence(_) => Ok(()),
            PriorPass::Loss { loss, .. } => zero_slots(rec, what, x.out.buf, 1, loss),
        };
    }
    let n = rows;
    let mut uses = Vec::new();
    let mut p = Params {
        rows: to_u32(what, "rows", rows)?,
        rows_per_step: cfg.weights.rows_per_step as u32,
        scale: cfg.weights.scale,
        rho: cfg.weights.rho,
        lo: cfg.head.log_std_min,
        hi: cfg.head.log_std_max,
        kl_dim: cfg.reduce.factor(a),
        prior_floor: cfg.std_floor,
        terms: 1,
        ..Default::default()
    };
    (p.h_off, p.h_stride) = operand(what, "prior output", n, 2 * a, x.out, false, &mut uses)?;
    (p.plan_off, p.plan_stride) = operand(what, "planner", n, 2 * a, x.planner, false, &mut uses)?;
    // Slots of the 8 read bindings of the policy loss; prior_fit uses 0, 5 and 7.
    let mut reads = [&x.out.buf.buffer; 8];
    reads[5] = &x.planner.buf.buffer;
    if !div_only {
        (p.skl_index, p.has_skl) = scalar(what, "s_d", x.s_d, &mut uses)?;
        if let Some(s) = &x.s_d {
            reads[7] = &s.buf.buffer;
        }
    }
    let mut flags = PriorFlags {
        param: cfg.head.param,
        form: cfg.form,
        div_only,
        grad: false,
        grad_add: false,
        write_d: false,
        loss_add: false,
    };
    let groups = rows.div_ceil(rows_per_group(a));
    p.count = to_u32(what, "workgroups", groups)?;
    match pass {
        PriorPass::Divergence(d) => {
            (p.d_off, p.d_stride) = operand(what, "divergence", n, 1, d, true, &mut uses)?;
            check_aliasing(what, &uses)?;
            let dbuf = &d.buf.buffer;
            let kernel = PolicyLossKernel::PriorFit {
                action_dim: a,
                flags,
            };
            let bufs = [
                reads[0], reads[1], reads[2], reads[3], reads[4], reads[5], reads[6], reads[7],
                dbuf, dbuf, dbuf,
            ];
            dispatch(rec, what, &kernel, &bufs, &p, groups)
        }
        PriorPass::Loss {
            grad,
            divergence,
            loss,
            scratch,
        } => {
            let mut writes: [Option<&wgpu::Buffer>; 2] = [None, None];
            if let Some(g) = grad {
                (p.out_off, p.out_stride) =
                    fit_rows(what, "gradient", g.buf.len(), n, 2 * a, g.at, true)?;
                uses.push(Use {
                    name: "gradient",
                    buf: &g.buf.buffer,
                    range: span(n, 2 * a, g.at),
                    write: true,
                });
                writes[0] = Some(&g.buf.buffer);
                flags.grad = true;
                flags.grad_add = g.accumulate;
            }
            if let Some(d) = divergence {
                (p.d_off, p.d_stride) = operand(what, "divergence", n, 1, d, true, &mut uses)?;
                writes[1] = Some(&d.buf.buffer);
                flags.write_d = true;
            }
            let kernel = |loss_add| PolicyLossKernel::PriorFit {
                action_dim: a,
                flags: PriorFlags { loss_add, ..flags },
            };
            finish_loss(
                rec, what, &kernel, reads, writes, uses, p, groups, loss, scratch,
            )
        }
    }
}
