//! What the loss passes share: the uniform block, the pass (the divergence rows alone, or the
//! loss with its gradient and divergence rows) and its outputs' checks, and the dispatch.

use super::config::PolicyHead;
use super::operands::{Agents, Rows, check_slots, operand};
use super::pipelines::{PassFlags, PolicyLossKernel, pipeline_constants};
use super::reduce::{finish_loss, zero_slots};
use crate::Result;
use crate::gpu::{GpuBuffer, Recorder};
use crate::kernels::launch::record_pipeline;
use crate::kernels::loss::{GradOut, LossOut, RowWeights, span, to_u32};
use crate::kernels::norm_act::{Use, check_aliasing};
use crate::kernels::policy::lanes;
use crate::kernels::two_hot::{fit_rows, grid};

/// Threads per workgroup of the row kernels (`WG` in the shader).
pub(super) const WG: usize = 64;

/// The uniform block of every pipeline (`Params` in the shader; unused fields stay 0).
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct Params {
    pub(super) rows: u32,
    pub(super) rows_per_step: u32,
    pub(super) count: u32,
    pub(super) part_off: u32,
    pub(super) h_off: u32,
    pub(super) h_stride: u32,
    pub(super) eps_off: u32,
    pub(super) eps_stride: u32,
    pub(super) q_off: u32,
    pub(super) q_stride: u32,
    pub(super) dq_off: u32,
    pub(super) dq_stride: u32,
    pub(super) prior_off: u32,
    pub(super) prior_stride: u32,
    pub(super) plan_off: u32,
    pub(super) plan_stride: u32,
    pub(super) out_off: u32,
    pub(super) out_stride: u32,
    pub(super) d_off: u32,
    pub(super) d_stride: u32,
    pub(super) sq_index: u32,
    pub(super) skl_index: u32,
    pub(super) has_sq: u32,
    pub(super) has_skl: u32,
    pub(super) terms: u32,
    pub(super) part_stride: u32,
    pub(super) slot_stride: u32,
    pub(super) has_coef: u32,
    pub(super) scale: f32,
    pub(super) rho: f32,
    pub(super) c_q: f32,
    pub(super) alpha: f32,
    pub(super) c_kl: f32,
    pub(super) kl_dim: f32,
    pub(super) c_ll: f32,
    pub(super) ll_threshold: f32,
    pub(super) lo: f32,
    pub(super) hi: f32,
    pub(super) prior_lo: f32,
    pub(super) prior_hi: f32,
    pub(super) prior_floor: f32,
    pub(super) prior_log_floor: f32,
    pub(super) ll_floor: f32,
    pub(super) u_max: f32,
}

impl Params {
    /// What every loss pass sets: the rows, their weights, the head's log-std range and the
    /// number of loss slots.
    pub(super) fn rows(
        what: &str,
        rows: usize,
        weights: &RowWeights,
        head: &PolicyHead,
        terms: usize,
    ) -> Result<Params> {
        Ok(Params {
            rows: to_u32(what, "rows", rows)?,
            rows_per_step: weights.rows_per_step as u32,
            scale: weights.scale,
            rho: weights.rho,
            lo: head.log_std_min,
            hi: head.log_std_max,
            terms: terms as u32,
            ..Default::default()
        })
    }
}

/// Rows each workgroup of the loss kernels handles.
pub(super) fn rows_per_group(action_dim: usize) -> usize {
    WG / lanes(action_dim) as usize
}

/// Which pass of a loss to record and what it writes (the policy loss and the prior fit have
/// the same two).
pub enum Pass<'a> {
    /// Only the divergence rows `D_r` (before the division by the running scale), rows of 1:
    /// run it before the loss pass to update the scale from the `t = 0` rows first, as BMPC
    /// does. Reads only what `D_r` needs.
    Divergence(Rows<'a>),
    /// The loss slots, and the gradient and divergence rows where given.
    Loss {
        /// `w_r d loss_r / d h_r`, rows of `2A` (written or added).
        grad: Option<GradOut<'a>>,
        /// `D_r` before the division by the running scale, rows of 1.
        divergence: Option<Rows<'a>>,
        /// The weighted sums (written or added).
        loss: LossOut<'a>,
        /// The partial sums when more than one workgroup runs (`None` allocates one per call).
        scratch: Option<&'a GpuBuffer<f32>>,
    },
}

impl<'a> Pass<'a> {
    /// [`Pass::Loss`] from its parts in order.
    pub fn loss(
        grad: Option<GradOut<'a>>,
        divergence: Option<Rows<'a>>,
        loss: LossOut<'a>,
        scratch: Option<&'a GpuBuffer<f32>>,
    ) -> Self {
        Pass::Loss {
            grad,
            divergence,
            loss,
            scratch,
        }
    }

    pub(super) fn divergence_only(&self) -> bool {
        matches!(self, Pass::Divergence(_))
    }

    /// Whether this is the divergence-only pass, and the name its errors give: `divergence`
    /// or `loss`.
    pub(super) fn named(
        &self,
        divergence: &'static str,
        loss: &'static str,
    ) -> (bool, &'static str) {
        let div_only = self.divergence_only();
        (div_only, if div_only { divergence } else { loss })
    }

    /// Checks the `terms` loss slots of each agent; with no rows records their zeroing (`src`
    /// is any buffer other than the slots') and returns false, as there is nothing else to do.
    pub(super) fn start(
        &self,
        rec: &mut Recorder,
        what: &str,
        rows: usize,
        terms: usize,
        src: &GpuBuffer<f32>,
        agents: &Agents,
    ) -> Result<bool> {
        let Pass::Loss { loss, .. } = self else {
            return Ok(rows > 0);
        };
        check_slots(what, loss, terms, agents)?;
        if rows == 0 {
            zero_slots(rec, what, src, terms, *loss, agents)?;
        }
        Ok(rows > 0)
    }
}

/// Records `pass` over `rows` rows of `a` actions per agent once its inputs are checked
/// (`reads` in the policy loss's 9 read bindings, their `uses`, the uniforms `p`): checks the
/// outputs and dispatches the kernel (workgroup row z per agent), then reduces the partial
/// sums where more than one workgroup per agent ran. `kernel` gives the pipeline for what the
/// pass writes.
#[allow(clippy::too_many_arguments)]
pub(super) fn record_pass<'a>(
    rec: &mut Recorder,
    what: &str,
    (rows, agents): (usize, &Agents),
    a: usize,
    pass: Pass<'a>,
    reads: [&'a wgpu::Buffer; 9],
    mut uses: Vec<Use<'a>>,
    mut p: Params,
    kernel: &dyn Fn(PassFlags) -> PolicyLossKernel,
) -> Result<()> {
    let n = rows * agents.count;
    let groups = rows.div_ceil(rows_per_group(a));
    p.count = to_u32(what, "workgroups", groups)?;
    match pass {
        Pass::Divergence(d) => {
            (p.d_off, p.d_stride) = operand(what, "divergence", n, 1, d, true, &mut uses)?;
            check_aliasing(what, &uses)?;
            let bufs = bindings(reads, [None, None], &d.buf.buffer);
            let out = PassFlags {
                div_only: true,
                ..Default::default()
            };
            dispatch(rec, what, &kernel(out), &bufs, &p, (groups, agents.count))
        }
        Pass::Loss {
            grad,
            divergence,
            loss,
            scratch,
        } => {
            let mut out = PassFlags::default();
            let mut writes: [Option<&wgpu::Buffer>; 2] = [None, None];
            if let Some(g) = grad {
                (p.out_off, p.out_stride) =
                    fit_rows(what, "gradient", g.buf.len(), n, 2 * a, g.at, true)?;
                uses.push(Use::write("gradient", g.buf, span(n, 2 * a, g.at)));
                writes[0] = Some(&g.buf.buffer);
                out.grad = true;
                out.grad_add = g.accumulate;
            }
            if let Some(d) = divergence {
                (p.d_off, p.d_stride) = operand(what, "divergence", n, 1, d, true, &mut uses)?;
                writes[1] = Some(&d.buf.buffer);
                out.write_d = true;
            }
            let kernel = |loss_add| kernel(PassFlags { loss_add, ..out });
            finish_loss(
                rec,
                what,
                &kernel,
                reads,
                writes,
                uses,
                p,
                (groups, agents),
                loss,
                scratch,
            )
        }
    }
}

/// The 12 storage bindings of the policy loss in the kernel spec's order: the first 8 reads,
/// the gradient, the divergence rows, the partial sums, then the coefficients (the 9th read);
/// an output not given binds `part` again (the kernel does not write it).
pub(super) fn bindings<'b>(
    reads: [&'b wgpu::Buffer; 9],
    writes: [Option<&'b wgpu::Buffer>; 2],
    part: &'b wgpu::Buffer,
) -> [&'b wgpu::Buffer; 12] {
    let mut all = [part; 12];
    all[..8].copy_from_slice(&reads[..8]);
    all[8] = writes[0].unwrap_or(part);
    all[9] = writes[1].unwrap_or(part);
    all[11] = reads[8];
    all
}

/// The prior-fit bindings in the kernel's order, from the 12 of the policy loss.
fn prior_fit_bindings<'b>(all: &[&'b wgpu::Buffer]) -> Vec<&'b wgpu::Buffer> {
    vec![all[0], all[5], all[7], all[8], all[9], all[10]]
}

/// One dispatch of `groups` workgroups per agent (workgroup row z is the agent).
pub(super) fn dispatch(
    rec: &mut Recorder,
    what: &str,
    kernel: &PolicyLossKernel,
    bufs: &[&wgpu::Buffer],
    p: &Params,
    (groups, agents): (usize, usize),
) -> Result<()> {
    let bufs = match kernel {
        PolicyLossKernel::PriorFit { .. } => prior_fit_bindings(bufs),
        _ => bufs.to_vec(),
    };
    let mut groups = grid(rec.gpu(), groups, what)?;
    groups[2] = agents as u32;
    record_pipeline(rec, pipeline_constants(kernel), &bufs, p, groups)
}
