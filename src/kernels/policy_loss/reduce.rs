//! Partial sums: how many each loss pass writes, the scratch that holds them, and their
//! reduction into the loss slots.

use super::POLICY_TERMS;
use super::config::{PolicyLossConfig, PriorFitConfig};
use super::launch::{Params, bindings, dispatch, rows_per_group};
use super::operands::Agents;
use super::pipelines::{PolicyLossKernel, pipeline_constants};
use crate::gpu::{GpuBuffer, Recorder};
use crate::kernels::launch::{record_pipeline, scratch_or_new};
use crate::kernels::loss::LossOut;
use crate::kernels::norm_act::{Use, check_aliasing};
use crate::{Error, Result};

/// Workgroups of [`record_policy_loss`](super::record_policy_loss) over `rows` rows.
pub fn policy_loss_partials(cfg: &PolicyLossConfig, rows: usize) -> usize {
    rows.div_ceil(rows_per_group(cfg.head.action_dim))
}

/// Elements of the scratch [`record_policy_loss`](super::record_policy_loss) needs for `rows`
/// rows: 5 partial sums per workgroup, or 0 when one workgroup does (it writes the slots
/// directly).
pub fn policy_loss_scratch_len(cfg: &PolicyLossConfig, rows: usize) -> usize {
    let g = policy_loss_partials(cfg, rows);
    if g > 1 { POLICY_TERMS * g } else { 0 }
}

/// Workgroups of [`record_prior_fit`](super::record_prior_fit) over `rows` rows.
pub fn prior_fit_partials(cfg: &PriorFitConfig, rows: usize) -> usize {
    rows.div_ceil(rows_per_group(cfg.head.action_dim))
}

/// Elements of the scratch [`record_prior_fit`](super::record_prior_fit) needs: one partial
/// per workgroup, or 0 when one workgroup does.
pub fn prior_fit_scratch_len(cfg: &PriorFitConfig, rows: usize) -> usize {
    let g = prior_fit_partials(cfg, rows);
    if g > 1 { g } else { 0 }
}

/// The loss pass: the slots or the scratch, the aliasing checks, the dispatches.
#[allow(clippy::too_many_arguments)]
pub(super) fn finish_loss<'a>(
    rec: &mut Recorder,
    what: &str,
    kernel: &dyn Fn(bool) -> PolicyLossKernel,
    reads: [&'a wgpu::Buffer; 9],
    writes: [Option<&'a wgpu::Buffer>; 2],
    mut uses: Vec<Use<'a>>,
    mut p: Params,
    (groups, agents): (usize, &Agents),
    loss: LossOut<'a>,
    scratch: Option<&'a GpuBuffer<f32>>,
) -> Result<()> {
    let terms = p.terms as usize;
    // Checked by `Pass::start`.
    let end = agents.slot_span(loss.index, terms).unwrap_or(usize::MAX);
    let slots = Use::write("loss slots", loss.losses, (loss.index, end));
    uses.push(slots);
    let count = agents.count;
    if groups <= 1 {
        check_aliasing(what, &uses)?;
        p.part_off = loss.index as u32;
        p.part_stride = agents.slot_stride as u32;
        let bufs = bindings(reads, writes, &loss.losses.buffer);
        return dispatch(
            rec,
            what,
            &kernel(loss.accumulate),
            &bufs,
            &p,
            (groups, count),
        );
    }
    let per = terms * groups;
    let need = per * count;
    let label = "pompc policy-loss partials";
    let part = &scratch_or_new(rec, what, scratch, need, "partials needed", label)?;
    let mut all = uses.clone();
    all.push(Use::write("scratch", part, (0, need)));
    check_aliasing(what, &all)?;
    check_aliasing(what, &[Use::read("scratch", part, (0, need)), slots])?;
    p.part_off = 0;
    p.part_stride = per as u32;
    let bufs = bindings(reads, writes, &part.buffer);
    dispatch(rec, what, &kernel(false), &bufs, &p, (groups, count))?;
    record_reduce(rec, &part.buffer, groups, terms, loss, agents)
}

/// No rows: zero sums in the slots (which keep their values when adding). `src` is any
/// buffer other than the slots' (nothing is read from it).
pub(super) fn zero_slots(
    rec: &mut Recorder,
    what: &str,
    src: &GpuBuffer<f32>,
    terms: usize,
    loss: LossOut,
    agents: &Agents,
) -> Result<()> {
    if loss.accumulate {
        return Ok(());
    }
    if src.buffer == loss.losses.buffer {
        return Err(Error::InvalidArgument(format!(
            "{what}: the input rows and the loss slots are the same buffer"
        )));
    }
    record_reduce(rec, &src.buffer, 0, terms, loss, agents)
}

/// Sum `count` partials per term (term `k` of agent `g` at `src[(g * terms + k) * count ..]`)
/// into `loss.losses[loss.index + g * slot_stride + k]` for `k < terms`.
fn record_reduce(
    rec: &mut Recorder,
    src: &wgpu::Buffer,
    count: usize,
    terms: usize,
    loss: LossOut,
    agents: &Agents,
) -> Result<()> {
    let p = Params {
        count: count as u32,
        part_off: loss.index as u32,
        terms: terms as u32,
        part_stride: (terms * count) as u32,
        slot_stride: agents.slot_stride as u32,
        ..Default::default()
    };
    let kernel = PolicyLossKernel::Reduce {
        loss_add: loss.accumulate,
    };
    let bufs = [src, &loss.losses.buffer];
    let groups = [1, 1, agents.count as u32];
    record_pipeline(rec, pipeline_constants(&kernel), &bufs, &p, groups)
}
