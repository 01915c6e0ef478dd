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
//! The [`Pass::Divergence`] pass writes only `D_r` (before the division by `s_kl`) so that
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
//! pl::record_policy_loss(&mut rec, &cfg, rows, &inputs, pl::Pass::loss(Some(grad), None, out, Some(&scratch)))?;
//! let hl = rec.read(&losses);
//! let total = rec.finish()?.get(&hl)?[pl::TOTAL_SLOT];
//! # let _ = total;
//! # Ok(()) }
//! ```
//!
//! The module is split by what each part holds: `config` (the losses and their checks),
//! `operands` (the inputs and their checks), `pipelines` (flags, specs, override constants),
//! `sample`, `policy` and `prior` (the passes), `launch` (what the loss passes share) and
//! `reduce` (partial sums and their reduction).
//!
//! [`RunningScale`]: crate::kernels::optim::RunningScale
//! [`RowWeights`]: crate::kernels::loss::RowWeights
//! [`LossOut::index`]: crate::kernels::loss::LossOut::index
//! [`GradOut`]: crate::kernels::loss::GradOut

mod config;
mod launch;
mod operands;
mod pipelines;
mod policy;
mod prior;
mod reduce;
mod sample;

pub use config::{
    DimReduce, EntropyForm, KlForm, KlTerm, LlTerm, Param, PolicyHead, PolicyLossConfig,
    PriorFitConfig, PriorInput,
};
pub use launch::Pass;
pub use operands::{Agents, PolicyInputs, PriorFitInputs, QInput, Rows, Scalar};
pub use pipelines::{
    PassFlags, PolicyFlags, PolicyLossKernel, PriorFlags, all_kernels, pipeline_constants,
};
pub use policy::record_policy_loss;
pub use prior::record_prior_fit;
pub use reduce::{
    policy_loss_partials, policy_loss_scratch_len, prior_fit_partials, prior_fit_scratch_len,
};
pub use sample::record_sample;

/// Slots the policy loss writes, from
/// [`LossOut::index`](crate::kernels::loss::LossOut::index).
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
