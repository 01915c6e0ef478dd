//! The policy-loss passes: the loss, or its divergence rows alone.

use super::POLICY_TERMS;
use super::config::{PolicyLossConfig, PriorInput};
use super::launch::{Params, Pass, record_pass};
use super::operands::{PolicyInputs, check_storage, operand, scalar};
use super::pipelines::{PolicyFlags, PolicyLossKernel};
use crate::gpu::Recorder;
use crate::kernels::norm_act::Use;
use crate::{Error, Result};

/// Storage buffers the policy-loss kernel binds.
const POLICY_STORAGE: u32 = 12;

/// Record a pass of the sampling-policy loss (see the module docs) over `rows` rows `[T', B]`.
/// [`Pass::Loss`] writes `w_r d loss_r / d h_r` into `grad` if given (rows of `2A`, written or
/// added), `D_r` (before the division by `s_kl`) into `divergence` if given (rows of 1), and
/// the five weighted sums (Q, entropy, KL, LL, total) into
/// `loss.losses[loss.index..loss.index + 5]` (written or added). [`Pass::Divergence`] writes
/// only the KL's `D_r`, from `h`, `eps` and the prior (the other inputs are not read), and
/// needs a KL term. With `x.agents` ([`Agents`](super::Agents)) one dispatch runs a
/// population: `rows` rows per agent, every operand holding the agents' rows back to back.
///
/// `scratch` holds [`policy_loss_scratch_len`](super::policy_loss_scratch_len) partials when
/// more than one workgroup runs (`None` allocates one per call). Written buffers must differ
/// from the read ones and not overlap one another. Inputs must match the config: `q` when
/// `c_q != 0` (loss pass), `prior` exactly when there is a KL term, `planner` exactly when
/// there is an LL term (loss pass). With no rows the slots get 0 (or keep their values when
/// adding). The kernel binds 11 storage buffers (the adapter's limit is used; WebGPU's default
/// of 8 is too few).
pub fn record_policy_loss<'a>(
    rec: &mut Recorder,
    cfg: &PolicyLossConfig,
    rows: usize,
    x: &PolicyInputs<'a>,
    pass: Pass<'a>,
) -> Result<()> {
    let (div_only, what) = pass.named("policy divergence", "policy loss");
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
    let ag = x.agents;
    let n = ag.check(rec, what, rows, POLICY_TERMS)?;
    if !pass.start(rec, what, rows, POLICY_TERMS, x.h.buf, &ag)? {
        return Ok(());
    }
    let mut uses = Vec::new();
    let mut p = Params {
        c_q: cfg.c_q,
        alpha: cfg.alpha,
        ..Params::rows(what, rows, &cfg.weights, &cfg.head, POLICY_TERMS)?
    };
    (p.h_off, p.h_stride) = operand(what, "h", n, 2 * a, x.h, false, &mut uses)?;
    (p.eps_off, p.eps_stride) = operand(what, "eps", n, a, x.eps, false, &mut uses)?;
    let mut reads = [&x.h.buf.buffer; 9];
    reads[1] = &x.eps.buf.buffer;
    if let Some(c) = ag.coefs {
        uses.push(Use::read("coefficients", c, (0, 4 * ag.count)));
        reads[8] = &c.buffer;
        p.has_coef = 1;
    }
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
        (p.sq_index, p.has_sq) = scalar(what, "s_q", x.s_q, ag.count, &mut uses)?;
        (p.skl_index, p.has_skl) = scalar(what, "s_kl", x.s_kl, ag.count, &mut uses)?;
        if let Some(s) = &x.s_q {
            reads[6] = &s.buf.buffer;
        }
        if let Some(s) = &x.s_kl {
            reads[7] = &s.buf.buffer;
        }
    }
    check_storage(rec, what, POLICY_STORAGE)?;
    let kernel = |pass| PolicyLossKernel::PolicyLoss {
        action_dim: a,
        flags: PolicyFlags {
            param: cfg.head.param,
            entropy: cfg.entropy,
            kl: cfg.kl.map(|k| k.form),
            prior_net: matches!(cfg.kl.map(|k| k.prior), Some(PriorInput::Network { .. })),
            q: q_on,
            ll: ll_on,
            pass,
        },
    };
    record_pass(rec, what, (rows, &ag), a, pass, reads, uses, p, &kernel)
}
