//! The adaptive prior's fitting passes: the loss, or its divergence rows alone.

use super::config::PriorFitConfig;
use super::launch::{Params, Pass, record_pass};
use super::operands::{PriorFitInputs, operand, scalar};
use super::pipelines::{PolicyLossKernel, PriorFlags};
use crate::gpu::Recorder;
use crate::{Error, Result};

/// Record a pass of the adaptive prior's fitting loss over `rows` rows. [`Pass::Loss`] writes
/// `sum_r w_r D_r / s_d` into `loss.losses[loss.index]` (written or added),
/// `w_r d(D_r / s_d) / d out_r` into `grad` if given (rows of `2A` like the prior network's raw
/// output, written or added), and `D_r` (before the division by `s_d`) into `divergence` if
/// given (rows of 1); [`Pass::Divergence`] writes only `D_r`, to update `s_d` from the `t = 0`
/// rows before the loss pass reads it. `D_r` is the closed form reverse `KL(pi_psi || b)` or
/// forward `KL(b || pi_psi)`, mean or sum over dimensions, between the prior network's Gaussian
/// and the planner's `(mean, std)` with the std floored.
///
/// `scratch` holds [`prior_fit_scratch_len`](super::prior_fit_scratch_len) partials when more
/// than one workgroup runs (`None` allocates one per call). Written buffers must differ from
/// the read ones and not overlap one another. With no rows the slot gets 0 (or keeps its value
/// when adding). `x.agents` runs a population as in
/// [`record_policy_loss`](super::record_policy_loss) (without coefficients).
pub fn record_prior_fit<'a>(
    rec: &mut Recorder,
    cfg: &PriorFitConfig,
    rows: usize,
    x: &PriorFitInputs<'a>,
    pass: Pass<'a>,
) -> Result<()> {
    let (div_only, what) = pass.named("prior divergence", "prior fit");
    cfg.check()?;
    let a = cfg.head.action_dim;
    let ag = x.agents;
    if ag.coefs.is_some() {
        return Err(Error::InvalidArgument(format!(
            "{what}: per-agent coefficients are the policy loss's; the prior fit has none"
        )));
    }
    let n = ag.check(rec, what, rows, 1)?;
    if !pass.start(rec, what, rows, 1, x.out.buf, &ag)? {
        return Ok(());
    }
    let mut uses = Vec::new();
    let mut p = Params {
        kl_dim: cfg.reduce.factor(a),
        prior_floor: cfg.std_floor,
        ..Params::rows(what, rows, &cfg.weights, &cfg.head, 1)?
    };
    (p.h_off, p.h_stride) = operand(what, "prior output", n, 2 * a, x.out, false, &mut uses)?;
    (p.plan_off, p.plan_stride) = operand(what, "planner", n, 2 * a, x.planner, false, &mut uses)?;
    // Slots of the 8 read bindings of the policy loss; prior_fit uses 0, 5 and 7.
    let mut reads = [&x.out.buf.buffer; 9];
    reads[5] = &x.planner.buf.buffer;
    if !div_only {
        (p.skl_index, p.has_skl) = scalar(what, "s_d", x.s_d, ag.count, &mut uses)?;
        if let Some(s) = &x.s_d {
            reads[7] = &s.buf.buffer;
        }
    }
    let kernel = |pass| PolicyLossKernel::PriorFit {
        action_dim: a,
        flags: PriorFlags {
            param: cfg.head.param,
            form: cfg.form,
            pass,
        },
    };
    record_pass(rec, what, (rows, &ag), a, pass, reads, uses, p, &kernel)
}
