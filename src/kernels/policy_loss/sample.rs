//! The sample pass: actions from the policy head's raw output and the noise.

use super::config::PolicyHead;
use super::launch::{Params, WG};
use super::operands::{Rows, operand};
use super::pipelines::{PolicyLossKernel, pipeline_constants};
use crate::Result;
use crate::gpu::Recorder;
use crate::kernels::launch::{count_within, record_pipeline};
use crate::kernels::norm_act::check_aliasing;
use crate::kernels::two_hot::grid;

/// Record `action[r] = a(h_r, eps_r)` for `rows` rows: `tanh(m + sig eps)`
/// ([`Param::Squashed`](super::Param::Squashed), TD-MPC2's sample) or
/// `clamp(tanh(m) + sig eps, -1, 1)` ([`Param::TanhMeanClamp`](super::Param::TanhMeanClamp),
/// BMPC's).
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
    let elems = count_within(what, rows.checked_mul(a), u32::MAX as usize - WG, || {
        format!("{rows} rows of {a} over 2^32 elements")
    })?;
    let groups = grid(rec.gpu(), elems.div_ceil(WG), what)?;
    let kernel = PolicyLossKernel::Sample {
        action_dim: a,
        param: head.param,
    };
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
    record_pipeline(
        rec,
        pipeline_constants(&kernel),
        &[&h.buf.buffer, &eps.buf.buffer, &action.buf.buffer],
        &p,
        groups,
    )
}
