//! World-model losses with their gradients (`shaders/loss.wgsl`), each reduced on the GPU into
//! one slot of a small losses buffer, with no host round trip:
//!
//! * [`record_soft_ce`]: TD-MPC2's soft cross-entropy of logits against two-hot encoded
//!   scalar targets (reward and value losses), over one or several heads sharing the targets;
//! * [`record_mse`]: the consistency loss, a squared error against a target latent that gets
//!   no gradient.
//!
//! Rows are laid out `[T, B]` (step-major) within a member and weighted by
//! `w_r = scale * rho^(r / rows_per_step)` ([`RowWeights`]): the loss is `sum_r w_r loss_r`
//! and the gradient of each row is scaled by `w_r`. TD-MPC2 (horizon `T`, batch `B`, latent
//! `L`, 5 Q heads): reward `RowWeights::new(0.1 / (T B), rho, B)`, value
//! `RowWeights::new(0.1 / (5 T B), rho, B)` over 5 members, consistency
//! `RowWeights::new(20 / (T B L), rho, B)`.
//!
//! ```no_run
//! # fn main() -> pompc::Result<()> {
//! use pompc::kernels::loss::{self, Agents, GradOut, LossOut, RowWeights, SoftCeConfig};
//! use pompc::kernels::two_hot::{RowLayout, TwoHotConfig};
//! use pompc::{GpuBuffer, Recorder};
//! let gpu = pompc::Gpu::new(Default::default())?;
//! let (t, b, bins) = (3, 256, 101);
//! let logits = GpuBuffer::<f32>::new(&gpu, "reward logits", t * b * bins)?;
//! let dlogits = GpuBuffer::<f32>::new(&gpu, "reward dlogits", t * b * bins)?;
//! let reward = GpuBuffer::<f32>::new(&gpu, "reward targets", t * b)?;
//! let losses = GpuBuffer::<f32>::new(&gpu, "losses", 4)?;
//! let cfg = SoftCeConfig {
//!     bins: TwoHotConfig::TDMPC2,
//!     members: 1,
//!     weights: RowWeights::new(0.1 / (t * b) as f32, 0.5, b),
//!     agents: Agents::ONE,
//! };
//! let mut rec = Recorder::new(&gpu);
//! loss::record_soft_ce(
//!     &mut rec,
//!     &cfg,
//!     t * b,
//!     &logits,
//!     RowLayout::contiguous(bins),
//!     &reward,
//!     RowLayout::contiguous(1),
//!     Some(GradOut { buf: &dlogits, at: RowLayout::contiguous(bins), accumulate: false }),
//!     LossOut { losses: &losses, index: 1, accumulate: false },
//!     None,
//! )?;
//! let h = rec.read(&losses);
//! let reward_loss = rec.finish()?.get(&h)?[1];
//! # let _ = reward_loss;
//! # Ok(()) }
//! ```

use super::launch::{count_within, kernel, record_pipeline, scratch_or_new};
use crate::gpu::Binding::{self, Read, ReadWrite, Uniform};
use crate::gpu::shader::Header;
use crate::gpu::{GpuBuffer, KernelSpec, Recorder};
use crate::kernels::norm_act::{Use, check_aliasing};
use crate::kernels::two_hot::{RowLayout, TwoHotConfig, decode_lanes, fit_rows, grid};
use crate::{Error, Result};

/// Per-row weights `w_r = scale * rho^(r / rows_per_step)` for rows laid out `[T, B]` (row `r`
/// is step `t = r / B`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowWeights {
    /// Overall factor (loss coefficient over the number of terms averaged).
    pub scale: f32,
    /// Discount per step (TD-MPC2's `rho`, 0.5).
    pub rho: f32,
    /// Rows per step (the batch size `B`), at least 1.
    pub rows_per_step: usize,
}

impl RowWeights {
    /// `w_r = scale * rho^(r / rows_per_step)`.
    pub fn new(scale: f32, rho: f32, rows_per_step: usize) -> Self {
        RowWeights {
            scale,
            rho,
            rows_per_step,
        }
    }

    /// The same weight `scale` on every row.
    pub fn uniform(scale: f32) -> Self {
        RowWeights::new(scale, 1.0, 1)
    }

    /// `Err` unless `scale` and `rho` are finite and `rows_per_step >= 1`.
    pub fn check(&self) -> Result<()> {
        if !(self.scale.is_finite() && self.rho.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "loss row weights need a finite scale and rho, got {} and {}",
                self.scale, self.rho
            )));
        }
        if self.rows_per_step == 0 || u32::try_from(self.rows_per_step).is_err() {
            return Err(Error::InvalidArgument(format!(
                "loss row weights need 1 to 2^32 - 1 rows per step, got {}",
                self.rows_per_step
            )));
        }
        Ok(())
    }
}

/// A loss over a population: `count` agents side by side in one dispatch, each with its own
/// rows (the same number), row weights counted from its first row, and its own loss slot.
/// Agent `g`'s rows of each operand start `g *` that operand's stride after agent 0's (in
/// elements), its loss goes to slot `index + g * slot_stride`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agents {
    /// Agents (at least 1).
    pub count: usize,
    /// Elements between agents' logits (or predictions `z`).
    pub src_stride: usize,
    /// Elements between agents' targets.
    pub tgt_stride: usize,
    /// Elements between agents' gradient rows.
    pub grad_stride: usize,
    /// Slots between agents' losses.
    pub slot_stride: usize,
}

impl Agents {
    /// One agent (no population).
    pub const ONE: Agents = Agents {
        count: 1,
        src_stride: 0,
        tgt_stride: 0,
        grad_stride: 0,
        slot_stride: 0,
    };
}

/// The soft cross-entropy of `members` heads of logits against shared two-hot targets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SoftCeConfig {
    /// The bins of the two-hot encoding (TD-MPC2: [`TwoHotConfig::TDMPC2`]).
    pub bins: TwoHotConfig,
    /// Heads whose logits follow one another (`[members, rows, bins]`), at least 1.
    pub members: usize,
    /// Row weights (the same for every head).
    pub weights: RowWeights,
    /// Agents side by side ([`Agents::ONE`] without a population).
    pub agents: Agents,
}

/// The weighted squared error of `members` predictions against one shared target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MseConfig {
    /// Features per row, at least 1.
    pub n: usize,
    /// Predictions `[members, rows, n]` against the same target rows, at least 1.
    pub members: usize,
    /// Row weights.
    pub weights: RowWeights,
    /// Agents side by side ([`Agents::ONE`] without a population).
    pub agents: Agents,
}

/// Where a loss goes: element `index` of `losses`, written or added into.
#[derive(Clone, Copy, Debug)]
pub struct LossOut<'a> {
    /// A small buffer of loss values.
    pub losses: &'a GpuBuffer<f32>,
    /// The slot.
    pub index: usize,
    /// Add into the slot instead of writing it.
    pub accumulate: bool,
}

/// Where a gradient goes: rows like the input's (`[members, rows, width]`, member `e`'s rows
/// after member `e - 1`'s), written or added into.
#[derive(Clone, Copy, Debug)]
pub struct GradOut<'a> {
    /// The gradient buffer.
    pub buf: &'a GpuBuffer<f32>,
    /// Row `i` (over all members) at `at.offset + i * at.stride`.
    pub at: RowLayout,
    /// Add into the buffer instead of writing it.
    pub accumulate: bool,
}

/// Which entry point of the shader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LossOp {
    /// Soft cross-entropy, first pass.
    SoftCe,
    /// Squared error, first pass.
    Mse,
    /// Partials summed into the slot.
    Reduce,
}

/// The flags of one pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct LossFlags {
    /// Write a gradient.
    pub grad: bool,
    /// Add the gradient into the buffer.
    pub grad_add: bool,
    /// Add the sum into its slot (the loss slot; false when writing partials).
    pub loss_add: bool,
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    members: u32,
    src_off: u32,
    src_stride: u32,
    tgt_off: u32,
    tgt_stride: u32,
    grad_off: u32,
    grad_stride: u32,
    part_off: u32,
    count: u32,
    rows_per_step: u32,
    src_as: u32,
    scale: f32,
    rho: f32,
    tgt_as: u32,
    grad_as: u32,
    part_as: u32,
    _pad: [u32; 3],
}

/// Source and target rows, the gradient, the slot or partials, the uniforms.
const ROWS: &[(u32, Binding)] = &[
    (0, Read),
    (1, Read),
    (2, ReadWrite),
    (3, ReadWrite),
    (4, Uniform),
];
const SOFT_CE: KernelSpec = kernel("loss", "soft_ce", ROWS);
const MSE: KernelSpec = kernel("loss", "mse", ROWS);
const REDUCE: KernelSpec = kernel("loss", "reduce", &[(0, Read), (3, ReadWrite), (4, Uniform)]);

/// Elements each `mse` workgroup handles (256 threads, 4 each).
const MSE_GROUP: usize = 1024;

/// The header and override constants of one pipeline: exactly what the launch code builds.
/// `bins` matters for [`LossOp::SoftCe`], `n` for [`LossOp::Mse`].
pub fn pipeline_constants(
    op: LossOp,
    bins: &TwoHotConfig,
    n: usize,
    flags: LossFlags,
) -> (KernelSpec, Header, Vec<(&'static str, f64)>) {
    let mut ov: Vec<(&'static str, f64)> = vec![("LOSS_ADD", flags.loss_add as u8 as f64)];
    let grad = |ov: &mut Vec<(&'static str, f64)>| {
        ov.push(("GRAD", flags.grad as u8 as f64));
        ov.push(("GRAD_ADD", flags.grad_add as u8 as f64));
    };
    let spec = match op {
        LossOp::SoftCe => {
            grad(&mut ov);
            ov.push(("BINS", bins.bins as f64));
            ov.push(("VMIN", bins.vmin as f64));
            ov.push(("VMAX", bins.vmax as f64));
            ov.push(("LANES", decode_lanes(bins.bins) as f64));
            SOFT_CE
        }
        LossOp::Mse => {
            grad(&mut ov);
            ov.push(("N", n as f64));
            MSE
        }
        LossOp::Reduce => REDUCE,
    };
    (spec, Header::default(), ov)
}

/// Workgroups of the first pass of [`record_soft_ce`] over `rows` rows, per agent: the
/// partials its scratch holds (none needed when 1; see [`scratch_len`] for populations).
pub fn soft_ce_partials(cfg: &SoftCeConfig, rows: usize) -> usize {
    let per = 64 / decode_lanes(cfg.bins.bins) as usize;
    (rows * cfg.members).div_ceil(per)
}

/// Elements the scratch of [`record_soft_ce`] or [`record_mse`] needs for `partials` per agent
/// (from [`soft_ce_partials`] or [`mse_partials`]) and `agents`.
pub fn scratch_len(partials: usize, agents: &Agents) -> usize {
    partials * agents.count
}

/// Workgroups of the first pass of [`record_mse`] over `rows` rows, per agent: the partials
/// its scratch holds (none needed when 1; see [`scratch_len`] for populations).
pub fn mse_partials(cfg: &MseConfig, rows: usize) -> usize {
    (rows * cfg.members * cfg.n).div_ceil(MSE_GROUP)
}

/// `v` as a u32, or an [`Error::Limit`] naming it.
pub(crate) fn to_u32(what: &str, name: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Limit(format!("{what}: {name} {v} over 2^32")))
}

/// Elements `offset..end` spanned by `rows` rows of `width` (for the aliasing checks).
pub(crate) fn span(rows: usize, width: usize, at: RowLayout) -> (usize, usize) {
    (
        at.offset,
        at.offset + rows.saturating_sub(1) * at.stride + width,
    )
}

/// An input of a loss: name, buffer, rows, row width, layout.
type Operand<'a> = (&'static str, &'a GpuBuffer<f32>, usize, usize, RowLayout);

/// What both losses do once their sizes are checked: with no rows, zero the slots; else check
/// the inputs (`src` holds `members * rows` rows, `tgt` the `rows` targets, per agent), the
/// gradient rows (shaped as `src`), the slots, the scratch and the aliasing, and record the
/// pass over `groups` workgroups per agent, plus the reduction of their partials where there
/// is more than one.
#[allow(clippy::too_many_arguments)]
fn record_rows<'a>(
    rec: &mut Recorder,
    what: &str,
    spec_of: &dyn Fn(LossFlags) -> (KernelSpec, Header, Vec<(&'static str, f64)>),
    (rows, members, weights, agents): (usize, usize, &RowWeights, Agents),
    src: Operand<'a>,
    tgt: Operand<'a>,
    grad: Option<GradOut<'a>>,
    groups: usize,
    loss: LossOut<'a>,
    scratch: Option<&GpuBuffer<f32>>,
) -> Result<()> {
    let n_agents = check_agents(rec, what, &agents)?;
    if rows == 0 {
        // No rows: a zero loss, and no gradient rows.
        return zero_loss(rec, what, loss, agents);
    }
    let (total_rows, width) = (src.2, src.3);
    let (src_buf, tgt_buf) = (src.1, tgt.1);
    let mut uses = Vec::with_capacity(5 * n_agents as usize);
    // Every agent's rows in their buffer (the last agent's bound the rest) and in the
    // aliasing checks.
    let mut fit = |(name, buf, n, width, at): Operand<'a>, stride: usize| {
        for g in 0..agents.count {
            let at_g = RowLayout::at(at.offset + g * stride, at.stride);
            uses.push(Use::read(name, buf, span(n, width, at_g)));
        }
        let last = RowLayout::at(at.offset + (agents.count - 1) * stride, at.stride);
        fit_rows(what, name, buf.len(), n, width, last, false)?;
        fit_rows(what, name, buf.len(), n, width, at, false)
    };
    let (src_off, src_stride) = fit(src, agents.src_stride)?;
    let (tgt_off, tgt_stride) = fit(tgt, agents.tgt_stride)?;
    let mut p = Params {
        rows: rows as u32,
        members: members as u32,
        src_off,
        src_stride,
        tgt_off,
        tgt_stride,
        rows_per_step: weights.rows_per_step as u32,
        scale: weights.scale,
        rho: weights.rho,
        src_as: to_u32(what, "agent stride", agents.src_stride)?,
        tgt_as: to_u32(what, "agent stride", agents.tgt_stride)?,
        grad_as: to_u32(what, "agent stride", agents.grad_stride)?,
        ..Default::default()
    };
    let slots = check_slots(what, &loss, &agents)?;
    let slot = to_u32(what, "loss slot", loss.index)?;
    if let Some(g) = grad {
        let last = RowLayout::at(
            g.at.offset + (agents.count - 1) * agents.grad_stride,
            g.at.stride,
        );
        fit_rows(what, "gradient", g.buf.len(), total_rows, width, last, true)?;
        (p.grad_off, p.grad_stride) =
            fit_rows(what, "gradient", g.buf.len(), total_rows, width, g.at, true)?;
        for a in 0..agents.count {
            let at = RowLayout::at(g.at.offset + a * agents.grad_stride, g.at.stride);
            uses.push(Use::write("gradient", g.buf, span(total_rows, width, at)));
        }
    }
    let slot_uses = || {
        slots
            .iter()
            .map(|&i| Use::write("loss slot", loss.losses, (i, i + 1)))
    };
    uses.extend(slot_uses());
    p.count = to_u32(what, "workgroups", groups)?;
    // One workgroup per agent writes its sum into the slot; more write partials that a
    // reduction sums.
    let part = if groups <= 1 {
        check_aliasing(what, &uses)?;
        p.part_off = slot;
        p.part_as = agents.slot_stride as u32;
        None
    } else {
        let need = groups * agents.count;
        let part = scratch_or_new(
            rec,
            what,
            scratch,
            need,
            "partials needed",
            "pompc loss partials",
        )?;
        uses.push(Use::write("scratch", &part, (0, need)));
        check_aliasing(what, &uses)?;
        // The second pass reads the scratch and writes the slots.
        let second: Vec<Use> = std::iter::once(Use::read("scratch", &part, (0, need)))
            .chain(slot_uses())
            .collect();
        check_aliasing(what, &second)?;
        p.part_off = 0;
        p.part_as = p.count;
        Some(part)
    };
    let constants = spec_of(LossFlags {
        grad: grad.is_some(),
        grad_add: grad.is_some_and(|g| g.accumulate),
        loss_add: part.is_none() && loss.accumulate,
    });
    let dst = part.as_ref().unwrap_or(loss.losses);
    let g = grad.map_or(dst, |g| g.buf);
    let mut workgroups = grid(rec.gpu(), groups, what)?;
    workgroups[2] = n_agents;
    record_pipeline(
        rec,
        constants,
        &[&src_buf.buffer, &tgt_buf.buffer, &g.buffer, &dst.buffer],
        &p,
        workgroups,
    )?;
    match part {
        Some(part) => record_reduce(rec, &part, groups, loss, agents),
        None => Ok(()),
    }
}

/// `Err` unless there is at least one agent and the grid holds them all; the count as a
/// grid dimension.
fn check_agents(rec: &Recorder, what: &str, agents: &Agents) -> Result<u32> {
    let max = rec.gpu().limits().max_compute_workgroups_per_dimension as usize;
    if agents.count == 0 || agents.count > max {
        return Err(Error::InvalidArgument(format!(
            "{what}: {} agents; 1 to {max} fit a dispatch",
            agents.count
        )));
    }
    Ok(agents.count as u32)
}

/// Sum each agent's first `count` values of `src` (agents `count` apart) into its loss slot.
fn record_reduce(
    rec: &mut Recorder,
    src: &GpuBuffer<f32>,
    count: usize,
    loss: LossOut,
    agents: Agents,
) -> Result<()> {
    let p = Params {
        count: count as u32,
        part_off: loss.index as u32,
        src_as: count as u32,
        part_as: agents.slot_stride as u32,
        ..Default::default()
    };
    let flags = LossFlags {
        loss_add: loss.accumulate,
        ..Default::default()
    };
    record_pipeline(
        rec,
        pipeline_constants(LossOp::Reduce, &TwoHotConfig::TDMPC2, 1, flags),
        &[&src.buffer, &loss.losses.buffer],
        &p,
        [1, 1, agents.count as u32],
    )
}

/// TD-MPC2's soft cross-entropy, weighted: `loss = sum_{e, r} w_r (-sum_j two_hot(x_r)_j
/// log_softmax(l_{e, r})_j)` into `loss`, and `dl_{e, r} = w_r (softmax(l_{e, r}) -
/// two_hot(x_r))` into `grad` if given (written or added).
///
/// `logits` holds `members * rows` rows of `cfg.bins.bins` logits at `logits_at` (member `e`'s
/// row `r` is row `e * rows + r`); target `r` (shared by the members) is element
/// `targets_at.offset + r * targets_at.stride` of `targets`, encoded exactly as
/// [`crate::kernels::two_hot::record_encode`] does (symlog, clamped to the bins). `scratch`
/// holds the per-workgroup partial sums ([`soft_ce_partials`] elements; `None` allocates one
/// per call; unused when a single workgroup does). Written buffers (`grad`, `loss.losses`,
/// `scratch`) must differ from the read ones and not overlap one another.
#[allow(clippy::too_many_arguments)]
pub fn record_soft_ce(
    rec: &mut Recorder,
    cfg: &SoftCeConfig,
    rows: usize,
    logits: &GpuBuffer<f32>,
    logits_at: RowLayout,
    targets: &GpuBuffer<f32>,
    targets_at: RowLayout,
    grad: Option<GradOut>,
    loss: LossOut,
    scratch: Option<&GpuBuffer<f32>>,
) -> Result<()> {
    let what = "soft cross-entropy";
    cfg.bins.check()?;
    cfg.weights.check()?;
    if cfg.members == 0 {
        return Err(Error::InvalidArgument(format!(
            "{what}: at least one member"
        )));
    }
    let bins = cfg.bins.bins;
    let total = count_within(
        what,
        rows.checked_mul(cfg.members),
        u32::MAX as usize - (1 << 22),
        || format!("{rows} rows x {} members over 2^32", cfg.members),
    )?;
    let spec_of = |f: LossFlags| pipeline_constants(LossOp::SoftCe, &cfg.bins, 0, f);
    record_rows(
        rec,
        what,
        &spec_of,
        (rows, cfg.members, &cfg.weights, cfg.agents),
        ("logits", logits, total, bins, logits_at),
        ("targets", targets, rows, 1, targets_at),
        grad,
        soft_ce_partials(cfg, rows),
        loss,
        scratch,
    )
}

/// The weighted squared error `loss = sum_{e, r} w_r sum_j (z_{e, r, j} - z'_{r, j})^2` into
/// `loss`, and `dz_{e, r} = 2 w_r (z_{e, r} - z'_r)` into `grad` if given (written or added);
/// the target `z'` gets no gradient. TD-MPC2's consistency loss is `members = 1`, `z` the
/// predicted latents `z_1..z_T` and `z'` the encoded next observations, with
/// `RowWeights::new(coef / (T B L), rho, B)`.
///
/// `z` holds `members * rows` rows of `cfg.n` at `z_at` (member `e`'s row `r` is row
/// `e * rows + r`), `target` holds `rows` rows at `target_at` (stride 0 repeats one row).
/// `scratch` holds the per-workgroup partials ([`mse_partials`] elements; `None` allocates
/// one per call). Written buffers must differ from the read ones and not overlap.
#[allow(clippy::too_many_arguments)]
pub fn record_mse(
    rec: &mut Recorder,
    cfg: &MseConfig,
    rows: usize,
    z: &GpuBuffer<f32>,
    z_at: RowLayout,
    target: &GpuBuffer<f32>,
    target_at: RowLayout,
    grad: Option<GradOut>,
    loss: LossOut,
    scratch: Option<&GpuBuffer<f32>>,
) -> Result<()> {
    let what = "squared error";
    cfg.weights.check()?;
    if cfg.members == 0 || cfg.n == 0 {
        return Err(Error::InvalidArgument(format!(
            "{what}: at least one member and one feature, got {} and {}",
            cfg.members, cfg.n
        )));
    }
    let total = count_within(what, rows.checked_mul(cfg.members), usize::MAX, || {
        format!("{rows} rows x {} members overflow", cfg.members)
    })?;
    // One thread per element, numbered in u32 (with room for the last workgroups).
    count_within(
        what,
        total.checked_mul(cfg.n),
        u32::MAX as usize - (1 << 26),
        || format!("{total} rows of {} over 2^32 elements", cfg.n),
    )?;
    let spec_of = |f: LossFlags| pipeline_constants(LossOp::Mse, &TwoHotConfig::TDMPC2, cfg.n, f);
    record_rows(
        rec,
        what,
        &spec_of,
        (rows, cfg.members, &cfg.weights, cfg.agents),
        ("z", z, total, cfg.n, z_at),
        ("target", target, rows, cfg.n, target_at),
        grad,
        mse_partials(cfg, rows),
        loss,
        scratch,
    )
}

/// No rows: the slots get 0 (or keep their values when adding).
fn zero_loss(rec: &mut Recorder, what: &str, loss: LossOut, agents: Agents) -> Result<()> {
    check_slots(what, &loss, &agents)?;
    if loss.accumulate {
        return Ok(());
    }
    // Nothing is read, but the binding must be another buffer than the slots'.
    let src = GpuBuffer::new(rec.gpu(), "pompc empty partials", 1)?;
    record_reduce(rec, &src, 0, loss, agents)
}

/// The agents' loss slots, or an `Err` unless every one is within its buffer and they are
/// distinct.
fn check_slots(what: &str, loss: &LossOut, agents: &Agents) -> Result<Vec<usize>> {
    if agents.count > 1 && agents.slot_stride == 0 {
        return Err(Error::InvalidArgument(format!(
            "{what}: {} agents need distinct loss slots (slot stride 0)",
            agents.count
        )));
    }
    let slots: Vec<usize> = (0..agents.count)
        .map(|g| loss.index + g * agents.slot_stride)
        .collect();
    let last = *slots.last().expect("at least one agent");
    if last >= loss.losses.len() || u32::try_from(last).is_err() {
        return Err(Error::Shape(format!(
            "{what}: loss slot {last} is past the end of {:?} ({} elements)",
            loss.losses.label(),
            loss.losses.len()
        )));
    }
    Ok(slots)
}
