//! Optimizer kernels for a training update with no host round trip (`shaders/optim.wgsl`):
//! the global gradient norm, `torch.optim.Adam` with `clip_grad_norm_` folded in and its step
//! counter on the GPU (torch's `capturable=True`), the Polyak update of target parameters and
//! TD-MPC2's `RunningScale`. Everything records into the caller's [`Recorder`], so a whole
//! update (forward, backward, clip, step, Polyak) is one submit.
//!
//! Conventions: a model's parameters live in one flat `f32` buffer, its gradients in another of
//! the same length; parts of it are ranges of elements. Adam updates up to [`MAX_RANGES`]
//! [`ParamGroup`]s, each with its own learning-rate scale, in one dispatch; elements outside
//! every group are left untouched.
//!
//! ```no_run
//! # fn main() -> pompc::Result<()> {
//! use pompc::kernels::optim::{Adam, AdamConfig, ParamGroup, RunningScale, record_polyak};
//! let gpu = pompc::Gpu::new(Default::default())?;
//! let n = 1_000_000;
//! let params = pompc::GpuBuffer::<f32>::new(&gpu, "params", n)?;
//! let grads = pompc::GpuBuffer::<f32>::new(&gpu, "grads", n)?;
//! let target = pompc::GpuBuffer::<f32>::new(&gpu, "target", n)?;
//! let q_values = pompc::GpuBuffer::<f32>::new(&gpu, "q", 256)?;
//! // TD-MPC2: lr 3e-4, the encoder (here the first 200k elements) at 0.3x, clip at 20.
//! let groups = [
//!     ParamGroup::new(0..200_000, 0.3),
//!     ParamGroup::new(200_000..n, 1.0),
//! ];
//! let mut adam = Adam::new(&gpu, n, &groups, AdamConfig::TDMPC2)?;
//! let scale = RunningScale::new(&gpu, 0.01)?;
//! let mut rec = pompc::Recorder::new(&gpu);
//! // ... record the forward and backward passes that fill `grads` ...
//! adam.record_step(&mut rec, &params, &grads)?;
//! record_polyak(&mut rec, &params, &target, &[600_000..n], 0.01)?;
//! scale.record_update(&mut rec, &q_values, 0, 256)?;
//! let state = adam.record_read_state(&mut rec);
//! let out = rec.finish()?; // one submit
//! let state = pompc::kernels::optim::AdamState::from_words(&out.get(&state)?)?;
//! println!("step {} grad norm {:?}", state.step, state.grad_norm);
//! # Ok(()) }
//! ```

use crate::gpu::shader::Header;
use crate::gpu::{Binding, Gpu, GpuBuffer, KernelSpec, Pipeline, ReadbackHandle, Recorder};
use crate::kernels::two_hot::grid;
use crate::{Error, Result};
use std::ops::Range;
use std::sync::Arc;

/// Most ranges (groups, spans) one dispatch takes: the size of the table in its uniform block.
pub const MAX_RANGES: usize = 16;
/// Most workgroups of the first stage of the norm, so the partial-sum buffer of
/// [`record_grad_norm`] needs this many elements.
pub const NORM_PARTIALS: usize = 1024;
/// Most values [`RunningScale`] sorts: one workgroup sorts them in workgroup memory.
pub const MAX_SCALE_VALUES: usize = 4096;
/// Words of [`Adam`]'s state buffer (see [`AdamState::from_words`]).
pub const STATE_WORDS: usize = 8;

/// Threads per workgroup of every kernel (`WG` in the shader).
const WG: usize = 256;
/// Elements per workgroup of the element-wise kernels (`CHUNK`): 4 per thread.
const CHUNK: usize = WG * 4;
/// `clip_grad_norm_`'s guard against a zero norm.
pub const CLIP_EPS: f32 = 1e-6;

/// Hyperparameters of [`Adam`]: `torch.optim.Adam` (not AdamW, no weight decay) after
/// `torch.nn.utils.clip_grad_norm_(max_norm = clip)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    /// Learning rate (each group scales it); settable per step with [`Adam::set_lr`].
    pub lr: f32,
    /// Decay of the first moment. `f64` like torch's Python floats: the kernel gets
    /// `1 - beta1` and `ln beta1` computed on the host to full precision.
    pub beta1: f64,
    /// Decay of the second moment (`f64`, see `beta1`: `1 - 0.999` in f32 is off by 1.3e-5).
    pub beta2: f64,
    /// Added to the bias-corrected `sqrt(v)`.
    pub eps: f32,
    /// `Some(max_norm)`: gradients scaled by `min(max_norm / (norm + 1e-6), 1)` where `norm`
    /// is the global 2-norm over all groups; `None`: no clipping (and no norm computed).
    pub clip: Option<f32>,
}

impl Default for AdamConfig {
    /// torch's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, no clipping.
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            clip: None,
        }
    }
}

impl AdamConfig {
    /// TD-MPC2's world-model optimizer: lr 3e-4, betas (0.9, 0.999), eps 1e-8, gradients
    /// clipped at norm 20 (its encoder group has lr scale 0.3: a [`ParamGroup`] choice).
    pub const TDMPC2: AdamConfig = AdamConfig {
        lr: 3e-4,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        clip: Some(20.0),
    };

    /// `Err` unless lr and eps are finite and non-negative, the betas in [0, 1) and the clip
    /// norm finite and non-negative (torch's own checks).
    pub fn check(&self) -> Result<()> {
        check_lr(self.lr)?;
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::InvalidArgument(format!(
                    "Adam {name} must be in [0, 1), got {b}"
                )));
            }
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "Adam eps must be finite and >= 0, got {}",
                self.eps
            )));
        }
        if let Some(c) = self.clip
            && !(c.is_finite() && c >= 0.0)
        {
            return Err(Error::InvalidArgument(format!(
                "gradient clipping norm must be finite and >= 0, got {c}"
            )));
        }
        Ok(())
    }
}

fn check_lr(lr: f32) -> Result<()> {
    if lr.is_finite() && lr >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "Adam learning rate must be finite and >= 0, got {lr}"
        )))
    }
}

/// A parameter group: elements `offset..offset + len` of the flat buffers, stepped with
/// learning rate `lr * lr_scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamGroup {
    /// First element.
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
    /// Factor on [`AdamConfig::lr`] (TD-MPC2's encoder: 0.3).
    pub lr_scale: f32,
}

impl ParamGroup {
    /// The group of elements `range` with learning-rate scale `lr_scale`.
    pub fn new(range: Range<usize>, lr_scale: f32) -> Self {
        ParamGroup {
            offset: range.start,
            len: range.end.saturating_sub(range.start),
            lr_scale,
        }
    }

    /// Its elements as a range.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// Where one Polyak span reads and writes: `target[target..target + len]` moves towards
/// `params[source..source + len]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolyakSpan {
    /// First element in the source (online) parameters.
    pub source: usize,
    /// First element in the target parameters.
    pub target: usize,
    /// Number of elements.
    pub len: usize,
}

/// Which kernel of the shader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OptimKernel {
    /// First stage of the norm: one sum of squares per workgroup.
    NormPartials,
    /// Second stage of the norm: sum of the partials, square root.
    NormFinish,
    /// Adam's one-workgroup step begin: norm, step counter, bias corrections, clip.
    AdamBegin,
    /// Adam's element-wise update over the groups.
    AdamUpdate,
    /// Polyak update between two buffers.
    Polyak,
    /// Polyak update within one buffer.
    PolyakInPlace,
    /// RunningScale's sort, percentiles and update, for `sort_cap` values at most (a power
    /// of two from 32 to [`MAX_SCALE_VALUES`], see [`sort_cap`]).
    ScaleUpdate {
        /// Padded sort length.
        sort_cap: u32,
    },
    /// Division of a buffer by the scale.
    ScaleDivide,
}

impl OptimKernel {
    /// Every pipeline the launch code builds.
    pub fn all() -> Vec<OptimKernel> {
        let mut v = vec![
            OptimKernel::NormPartials,
            OptimKernel::NormFinish,
            OptimKernel::AdamBegin,
            OptimKernel::AdamUpdate,
            OptimKernel::Polyak,
            OptimKernel::PolyakInPlace,
            OptimKernel::ScaleDivide,
        ];
        let mut cap = sort_cap(1);
        while cap as usize <= MAX_SCALE_VALUES {
            v.push(OptimKernel::ScaleUpdate { sort_cap: cap });
            cap *= 2;
        }
        v
    }
}

/// The padded sort length of [`RunningScale`] for `n` values: the next power of two, at least
/// 32 (fewer pipelines; a few idle passes cost nothing at that size).
pub fn sort_cap(n: usize) -> u32 {
    n.next_power_of_two().max(32) as u32
}

fn spec(entry: &'static str, bindings: &'static [(u32, Binding)]) -> KernelSpec {
    super::launch::kernel("optim", entry, bindings)
}

/// The header and override constants of one pipeline: exactly what the launch code builds, so
/// the shader test can validate every combination.
pub fn pipeline_constants(kernel: OptimKernel) -> (KernelSpec, Header, Vec<(&'static str, f64)>) {
    let (s, ov) = match kernel {
        OptimKernel::NormPartials => (spec("norm_partials", super::launch::IN_OUT), vec![]),
        OptimKernel::NormFinish => (spec("norm_finish", super::launch::IN_OUT), vec![]),
        OptimKernel::AdamBegin => (spec("adam_begin", super::launch::IN_OUT), vec![]),
        OptimKernel::AdamUpdate => (
            spec(
                "adam_update",
                &[
                    (0, Binding::ReadWrite),
                    (1, Binding::Read),
                    (2, Binding::ReadWrite),
                    (3, Binding::ReadWrite),
                    (4, Binding::Read),
                    (5, Binding::Uniform),
                ],
            ),
            vec![],
        ),
        OptimKernel::Polyak => (spec("polyak", super::launch::IN_OUT), vec![]),
        OptimKernel::PolyakInPlace => (
            spec(
                "polyak_inplace",
                &[(0, Binding::ReadWrite), (1, Binding::Uniform)],
            ),
            vec![],
        ),
        OptimKernel::ScaleUpdate { sort_cap } => (
            spec("scale_update", super::launch::IN_OUT),
            vec![("SORT_CAP", sort_cap as f64)],
        ),
        OptimKernel::ScaleDivide => (spec("scale_divide", super::launch::IN_OUT), vec![]),
    };
    (s, Header::default(), ov)
}

fn pipeline(gpu: &Gpu, kernel: OptimKernel) -> Result<Arc<Pipeline>> {
    let (spec, header, ov) = pipeline_constants(kernel);
    gpu.pipeline(&spec, &header, &ov)
}

// ---------------------------------------------------------------------------------------------
// Uniform blocks (layouts as in the shader)

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct NormParams {
    n_ranges: u32,
    groups: u32,
    agent_stride: u32,
    _pad: u32,
    ranges: [[u32; 4]; MAX_RANGES],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FinishParams {
    count: u32,
    out_index: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BeginParams {
    count: u32,
    clip: u32,
    max_norm: f32,
    ln_b1: f32,
    ln_b2: f32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdamParams {
    one_minus_b1: f32,
    b2: f32,
    one_minus_b2: f32,
    eps: f32,
    n_ranges: u32,
    chunks: u32,
    agent_stride: u32,
    _pad: u32,
    ranges: [[u32; 4]; MAX_RANGES],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PolyakParams {
    tau: f32,
    n_ranges: u32,
    chunks: u32,
    agent_stride: u32,
    ranges: [[u32; 4]; MAX_RANGES],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ScaleParams {
    n: u32,
    offset: u32,
    tau: f32,
    agent_stride: u32,
    lo_idx: [u32; 2],
    lo_w: [f32; 2],
    hi_idx: [u32; 2],
    hi_w: [f32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DivideParams {
    n: u32,
    offset: u32,
    _pad: [u32; 2],
}

// ---------------------------------------------------------------------------------------------
// Range tables

/// One validated range: `len` elements written at `dst`, read at `src` (the same for
/// kernels with one operand), `extra` the per-range word of the table.
#[derive(Clone, Copy, Debug)]
struct Span {
    dst: usize,
    src: usize,
    len: usize,
    extra: u32,
}

/// The ranges of one dispatch as the shader's table: empty ranges dropped, chunk offsets
/// cumulative.
struct Table {
    ranges: [[u32; 4]; MAX_RANGES],
    count: u32,
    chunks: usize,
}

fn fmt_range(start: usize, len: usize) -> String {
    match start.checked_add(len) {
        Some(end) => format!("{start}..{end}"),
        None => format!("{start}.. plus {len}, past usize"),
    }
}

/// Check `spans` (named `item` in messages) against the written buffer (`dst`: name, length)
/// and the read one (`src`, or `None` when it is the written one at the same offsets), with
/// no two written ranges overlapping, and no read range overlapping a written one when
/// `same_buffer`. Returns the table.
fn table(
    what: &str,
    item: &str,
    spans: &[Span],
    dst: (&str, usize),
    src: Option<(&str, usize)>,
    same_buffer: bool,
) -> Result<Table> {
    if spans.len() > MAX_RANGES {
        return Err(Error::Limit(format!(
            "{what}: {} {item}s, one dispatch takes at most {MAX_RANGES}",
            spans.len()
        )));
    }
    for (i, s) in spans.iter().enumerate() {
        let fits = |start: usize, len: usize| start.checked_add(len).is_some_and(|e| e <= dst.1);
        if !fits(s.dst, s.len) {
            return Err(Error::Shape(format!(
                "{what}: {item} {i} (elements {}) ends past {}, which holds {} elements",
                fmt_range(s.dst, s.len),
                dst.0,
                dst.1
            )));
        }
        if let Some((name, len)) = src
            && s.src.checked_add(s.len).is_none_or(|e| e > len)
        {
            return Err(Error::Shape(format!(
                "{what}: {item} {i} reads elements {} past {name}, which holds {len} elements",
                fmt_range(s.src, s.len),
            )));
        }
    }
    // Written ranges must be disjoint: two threads would update one element.
    let mut order: Vec<usize> = (0..spans.len()).filter(|&i| spans[i].len > 0).collect();
    order.sort_by_key(|&i| spans[i].dst);
    for w in order.windows(2) {
        let (a, b) = (&spans[w[0]], &spans[w[1]]);
        if a.dst + a.len > b.dst {
            return Err(Error::InvalidArgument(format!(
                "{what}: {item}s {} (elements {}) and {} (elements {}) overlap",
                w[0],
                fmt_range(a.dst, a.len),
                w[1],
                fmt_range(b.dst, b.len)
            )));
        }
    }
    if same_buffer {
        for (i, s) in spans.iter().enumerate().filter(|(_, s)| s.len > 0) {
            for (j, d) in spans.iter().enumerate().filter(|(_, d)| d.len > 0) {
                if s.src < d.dst + d.len && d.dst < s.src + s.len {
                    return Err(Error::InvalidArgument(format!(
                        "{what}: {item} {i} reads elements {} that {item} {j} writes ({}) in \
                         the same buffer",
                        fmt_range(s.src, s.len),
                        fmt_range(d.dst, d.len)
                    )));
                }
            }
        }
    }
    let too_big = |v: usize| u32::try_from(v).is_err();
    let mut t = Table {
        ranges: [[0; 4]; MAX_RANGES],
        count: 0,
        chunks: 0,
    };
    for s in spans.iter().filter(|s| s.len > 0) {
        if too_big(s.dst + s.len) || too_big(s.src + s.len) {
            return Err(Error::Limit(format!(
                "{what}: elements past 2^32 ({})",
                fmt_range(s.dst, s.len)
            )));
        }
        t.ranges[t.count as usize] = [s.dst as u32, s.len as u32, t.chunks as u32, s.extra];
        t.count += 1;
        t.chunks += s.len.div_ceil(CHUNK);
    }
    Ok(t)
}

fn plain_spans(ranges: &[Range<usize>]) -> Vec<Span> {
    ranges
        .iter()
        .map(|r| Span {
            dst: r.start,
            src: r.start,
            len: r.end.saturating_sub(r.start),
            extra: 0,
        })
        .collect()
}

fn check_ranges_order(what: &str, ranges: &[Range<usize>]) -> Result<()> {
    for (i, r) in ranges.iter().enumerate() {
        if r.start > r.end {
            return Err(Error::InvalidArgument(format!(
                "{what}: range {i} ({}..{}) ends before it starts",
                r.start, r.end
            )));
        }
    }
    Ok(())
}

fn same(a: &wgpu::Buffer, b: &wgpu::Buffer) -> bool {
    a == b
}

// ---------------------------------------------------------------------------------------------
// Gradient norm

/// Workgroups of the norm's first stage for `total` elements: about 4 per thread, at most
/// [`NORM_PARTIALS`] (enough to fill a large GPU; more threads only shorten each one's loop).
fn norm_groups(total: usize) -> usize {
    total.div_ceil(CHUNK).clamp(1, NORM_PARTIALS)
}

/// Record the first stage of the norm over the table's ranges, for each of `agents` agents
/// `agent_stride` elements apart (agent `a`'s partials after agent `a - 1`'s); returns the
/// number of partial sums written per agent (0 for no ranges: nothing recorded).
fn record_norm_partials(
    rec: &mut Recorder,
    what: &str,
    pipe: &Arc<Pipeline>,
    (grads, t): (&GpuBuffer<f32>, &Table),
    partials: &GpuBuffer<f32>,
    (agents, agent_stride): (usize, usize),
) -> Result<usize> {
    if t.count == 0 {
        return Ok(0);
    }
    let total: usize = t.ranges[..t.count as usize]
        .iter()
        .map(|r| r[1] as usize)
        .sum();
    let groups = norm_groups(total);
    if partials.len() < groups * agents {
        return Err(Error::Shape(format!(
            "{what}: partial-sum buffer {:?} holds {} elements, needs {} (at most \
             {NORM_PARTIALS} per agent)",
            partials.label(),
            partials.len(),
            groups * agents
        )));
    }
    let p = NormParams {
        n_ranges: t.count,
        groups: groups as u32,
        agent_stride: agent_stride as u32,
        _pad: 0,
        ranges: t.ranges,
    };
    let z = agents_in_grid(rec.gpu(), what, agents)?;
    rec.dispatch(
        pipe,
        &[&grads.buffer, &partials.buffer],
        Some(&p),
        [groups as u32, 1, z],
    )?;
    Ok(groups)
}

/// `agents` as the third grid dimension, or an [`Error::Limit`] past the device's limit.
fn agents_in_grid(gpu: &Gpu, what: &str, agents: usize) -> Result<u32> {
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    if agents == 0 || agents > max {
        return Err(Error::Limit(format!(
            "{what}: {agents} agents; 1 to {max} fit a dispatch"
        )));
    }
    Ok(agents as u32)
}

/// Record the global gradient norm `sqrt(sum g^2)` over `ranges` of `grads` into
/// `out[out_index]`: one dispatch of at most [`NORM_PARTIALS`] workgroups writes partial sums
/// of squares into `partials` (at least [`NORM_PARTIALS`] elements, or as many as there are
/// 1024-element chunks), then one workgroup sums them. Ranges must not overlap (an element
/// would count twice); with no elements the norm is 0.
pub fn record_grad_norm(
    rec: &mut Recorder,
    grads: &GpuBuffer<f32>,
    ranges: &[Range<usize>],
    partials: &GpuBuffer<f32>,
    out: &GpuBuffer<f32>,
    out_index: usize,
) -> Result<()> {
    let what = "gradient norm";
    check_ranges_order(what, ranges)?;
    let t = table(
        what,
        "range",
        &plain_spans(ranges),
        ("grads", grads.len()),
        None,
        false,
    )?;
    if out_index >= out.len() {
        return Err(Error::Shape(format!(
            "{what}: output index {out_index} past {:?}, which holds {} elements",
            out.label(),
            out.len()
        )));
    }
    if same(&partials.buffer, &grads.buffer) || same(&partials.buffer, &out.buffer) {
        return Err(Error::InvalidArgument(format!(
            "{what}: the partial-sum buffer must differ from grads and the output"
        )));
    }
    let pipe = pipeline(rec.gpu(), OptimKernel::NormPartials)?;
    let count = record_norm_partials(rec, what, &pipe, (grads, &t), partials, (1, 0))?;
    let p = FinishParams {
        count: count as u32,
        out_index: out_index as u32,
        _pad: [0; 2],
    };
    let pipe = pipeline(rec.gpu(), OptimKernel::NormFinish)?;
    rec.dispatch(&pipe, &[&partials.buffer, &out.buffer], Some(&p), [1, 1, 1])
}

/// The global gradient norm with its own scratch and one-element output buffer.
#[derive(Debug)]
pub struct GradNorm {
    partials: GpuBuffer<f32>,
    value: GpuBuffer<f32>,
}

impl GradNorm {
    /// Scratch and output on `gpu`.
    pub fn new(gpu: &Gpu) -> Result<Self> {
        Ok(GradNorm {
            partials: GpuBuffer::new(gpu, "grad norm partials", NORM_PARTIALS)?,
            value: GpuBuffer::new(gpu, "grad norm", 1)?,
        })
    }

    /// Record the norm of `ranges` of `grads` into [`GradNorm::value_buffer`].
    pub fn record(
        &self,
        rec: &mut Recorder,
        grads: &GpuBuffer<f32>,
        ranges: &[Range<usize>],
    ) -> Result<()> {
        record_grad_norm(rec, grads, ranges, &self.partials, &self.value, 0)
    }

    /// The one-element buffer the norm is written to (read it in the same submit with
    /// [`Recorder::read`]).
    pub fn value_buffer(&self) -> &GpuBuffer<f32> {
        &self.value
    }

    /// Download the last norm (one submit and one map).
    pub fn read(&self, gpu: &Gpu) -> Result<f32> {
        Ok(self.value.download(gpu)?[0])
    }
}

// ---------------------------------------------------------------------------------------------
// Adam

/// Adam's GPU state after a step, decoded from its [`STATE_WORDS`]-word state buffer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamState {
    /// Steps taken since creation or [`Adam::reset`] (torch's `state["step"]`).
    pub step: u32,
    /// The global gradient norm before clipping (what `clip_grad_norm_` returns) of the last
    /// step; `None` when it ran without clipping or no step ran yet.
    pub grad_norm: Option<f32>,
    /// The factor applied to the gradients: `min(max_norm / (norm + 1e-6), 1)`, 1 without
    /// clipping.
    pub clip_coef: f32,
    /// `1 - beta1^step`.
    pub bias_correction1: f32,
    /// `sqrt(1 - beta2^step)`.
    pub bias_correction2_sqrt: f32,
}

impl AdamState {
    /// Every agent's gradient norm before clipping (NaN without one) from a read-back of a
    /// population's [`Adam::state_buffer`].
    pub fn grad_norms(words: &[u32]) -> Result<Vec<f32>> {
        words
            .chunks(STATE_WORDS)
            .map(|w| Ok(AdamState::from_words(w)?.grad_norm.unwrap_or(f32::NAN)))
            .collect()
    }

    /// Decode the words of [`Adam::state_buffer`]: step, norm, clip coefficient, the two bias
    /// corrections (floats as bits), and whether the norm was computed (one agent's: the
    /// first [`STATE_WORDS`]).
    pub fn from_words(words: &[u32]) -> Result<AdamState> {
        if words.len() < 6 {
            return Err(Error::Shape(format!(
                "Adam state: {} words, expected {STATE_WORDS}",
                words.len()
            )));
        }
        let f = |i: usize| f32::from_bits(words[i]);
        Ok(AdamState {
            step: words[0],
            grad_norm: (words[5] != 0).then(|| f(1)),
            clip_coef: f(2),
            bias_correction1: f(3),
            bias_correction2_sqrt: f(4),
        })
    }
}

/// `torch.optim.Adam` over parameter groups of one flat buffer, with global-norm gradient
/// clipping and the step counter on the GPU.
///
/// Each [`Adam::record_step`] records (with clipping) the norm's partial sums over all groups,
/// then a one-workgroup *begin* dispatch that sums them, increments the step counter and
/// stores the clip coefficient and bias corrections in the state buffer, then one element-wise
/// dispatch over every group that reads them. Nothing comes back to the host unless asked
/// ([`Adam::read_state`], or [`Recorder::read`] of [`Adam::state_buffer`]).
#[derive(Debug)]
pub struct Adam {
    cfg: AdamConfig,
    groups: Vec<ParamGroup>,
    len: usize,
    agents: usize,
    m: GpuBuffer<f32>,
    v: GpuBuffer<f32>,
    state: GpuBuffer<u32>,
    partials: GpuBuffer<f32>,
}

impl Adam {
    /// An optimizer for flat buffers of `len` elements with the given groups (at most
    /// [`MAX_RANGES`], disjoint, inside `len`, learning-rate scales finite and >= 0): zero
    /// moments, step 0, pipelines built (later steps find them in the device's cache).
    pub fn new(gpu: &Gpu, len: usize, groups: &[ParamGroup], cfg: AdamConfig) -> Result<Adam> {
        Adam::population(gpu, len, groups, cfg, 1)
    }

    /// The optimizers of `agents` agents side by side: buffers of `agents * len` elements,
    /// agent `a`'s from `a * len`, each agent with the same groups and hyperparameters but its
    /// own moments, gradient norm, clip coefficient and step counter; one step of all of them
    /// is the same three dispatches as one agent's.
    pub fn population(
        gpu: &Gpu,
        len: usize,
        groups: &[ParamGroup],
        cfg: AdamConfig,
        agents: usize,
    ) -> Result<Adam> {
        cfg.check()?;
        let what = "Adam";
        agents_in_grid(gpu, what, agents)?;
        let total = len
            .checked_mul(agents)
            .filter(|&t| u32::try_from(t).is_ok());
        let Some(total) = total else {
            return Err(Error::Limit(format!(
                "{what}: {agents} agents of {len} elements exceed 2^32"
            )));
        };
        for (i, g) in groups.iter().enumerate() {
            if !(g.lr_scale.is_finite() && g.lr_scale >= 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "{what}: parameter group {i} has lr scale {}, must be finite and >= 0",
                    g.lr_scale
                )));
            }
        }
        table(
            what,
            "parameter group",
            &group_spans(groups, 0.0),
            ("params", len),
            None,
            false,
        )?;
        for k in [
            OptimKernel::NormPartials,
            OptimKernel::AdamBegin,
            OptimKernel::AdamUpdate,
        ] {
            pipeline(gpu, k)?;
        }
        Ok(Adam {
            cfg,
            groups: groups.to_vec(),
            len,
            agents,
            m: GpuBuffer::new(gpu, "adam m", total)?,
            v: GpuBuffer::new(gpu, "adam v", total)?,
            state: GpuBuffer::new(gpu, "adam state", agents * STATE_WORDS)?,
            partials: GpuBuffer::new(gpu, "adam norm partials", agents * NORM_PARTIALS)?,
        })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &AdamConfig {
        &self.cfg
    }

    /// The parameter groups.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Length of one agent's flat buffers (the buffers stepped hold [`Adam::agents`] times
    /// this many).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Agents stepped side by side (1 unless made by [`Adam::population`]).
    pub fn agents(&self) -> usize {
        self.agents
    }

    /// Whether the flat buffers are empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Set the learning rate of the following steps (a uniform value: no new pipeline).
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        check_lr(lr)?;
        self.cfg.lr = lr;
        Ok(())
    }

    /// Turn clipping on (`Some(max_norm)`) or off for the following steps.
    pub fn set_clip(&mut self, clip: Option<f32>) -> Result<()> {
        let cfg = AdamConfig { clip, ..self.cfg };
        cfg.check()?;
        self.cfg = cfg;
        Ok(())
    }

    /// First moments (`exp_avg`), one per element of the flat buffer (0 outside the groups).
    pub fn m(&self) -> &GpuBuffer<f32> {
        &self.m
    }

    /// Second moments (`exp_avg_sq`).
    pub fn v(&self) -> &GpuBuffer<f32> {
        &self.v
    }

    /// The [`STATE_WORDS`]-word state buffer (one per agent, back to back); decode a
    /// read-back with [`AdamState::from_words`] (of each agent's words).
    pub fn state_buffer(&self) -> &GpuBuffer<u32> {
        &self.state
    }

    /// Read the state buffer back after everything recorded so far in `rec`; decode the words
    /// with [`AdamState::from_words`].
    pub fn record_read_state(&self, rec: &mut Recorder) -> ReadbackHandle<u32> {
        rec.read(&self.state)
    }

    /// Download and decode the state (agent 0's in a population; one submit and one map).
    pub fn read_state(&self, gpu: &Gpu) -> Result<AdamState> {
        AdamState::from_words(&self.state.download(gpu)?)
    }

    /// Download and decode every agent's state.
    pub fn read_states(&self, gpu: &Gpu) -> Result<Vec<AdamState>> {
        let words = self.state.download(gpu)?;
        words
            .chunks(STATE_WORDS)
            .map(AdamState::from_words)
            .collect()
    }

    /// Steps taken so far (a download).
    pub fn step_count(&self, gpu: &Gpu) -> Result<u32> {
        Ok(self.read_state(gpu)?.step)
    }

    /// The gradient norm of the last step, `None` without clipping (a download).
    pub fn last_grad_norm(&self, gpu: &Gpu) -> Result<Option<f32>> {
        Ok(self.read_state(gpu)?.grad_norm)
    }

    /// Record copies of agent `i`'s moments and state from the one-agent optimizer `alone`
    /// (`into_population`) or back into it (same length and groups): how a population takes
    /// over optimizers that stepped alone and hands them back.
    pub fn record_exchange_agent(
        &self,
        rec: &mut Recorder,
        i: usize,
        alone: &Adam,
        into_population: bool,
    ) -> Result<()> {
        if i >= self.agents || alone.agents != 1 || alone.len != self.len {
            return Err(Error::InvalidArgument(format!(
                "Adam exchange: agent {i} of {} with an optimizer of {} agents over {} values \
                 ({} here)",
                self.agents, alone.agents, alone.len, self.len
            )));
        }
        let n = self.len;
        for (pop, one) in [(&self.m, &alone.m), (&self.v, &alone.v)] {
            rec.copy_share(pop, i * n, one, n, into_population)?;
        }
        let w = STATE_WORDS;
        rec.copy_share(&self.state, i * w, &alone.state, w, into_population)
    }

    /// Zero the moments and the step counter (queue writes, ordered before the next submit).
    pub fn reset(&self, gpu: &Gpu) -> Result<()> {
        self.m.fill_u32(gpu, 0)?;
        self.v.fill_u32(gpu, 0)?;
        self.state.fill_u32(gpu, 0)
    }

    /// Record one optimizer step: `grads` (read only; the clip is applied on the fly, as the
    /// clipped gradients would be read by the step and nothing else) update `params` in
    /// place in every group. Both buffers hold [`Adam::len`] elements and must differ; `rec`
    /// records for the device the optimizer was created on.
    pub fn record_step(
        &mut self,
        rec: &mut Recorder,
        params: &GpuBuffer<f32>,
        grads: &GpuBuffer<f32>,
    ) -> Result<()> {
        let what = "Adam step";
        let total = self.len * self.agents;
        for (name, b) in [("params", params), ("grads", grads)] {
            if b.len() != total {
                return Err(Error::Shape(format!(
                    "{what}: {name} {:?} holds {} elements, the optimizer {total} ({} agents of \
                     {})",
                    b.label(),
                    b.len(),
                    self.agents,
                    self.len
                )));
            }
        }
        if same(&params.buffer, &grads.buffer) {
            return Err(Error::InvalidArgument(format!(
                "{what}: params and grads are the same buffer"
            )));
        }
        let t = table(
            what,
            "parameter group",
            &group_spans(&self.groups, self.cfg.lr),
            ("params", self.len),
            None,
            false,
        )?;
        let gpu = rec.gpu();
        let z = agents_in_grid(gpu, what, self.agents)?;
        let mut groups = grid(gpu, t.chunks, what)?;
        groups[2] = z;
        let agents = (self.agents, self.len);
        let count = if self.cfg.clip.is_some() {
            let pipe = pipeline(gpu, OptimKernel::NormPartials)?;
            record_norm_partials(rec, what, &pipe, (grads, &t), &self.partials, agents)?
        } else {
            0
        };
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let begin = BeginParams {
            count: count as u32,
            clip: self.cfg.clip.is_some() as u32,
            max_norm: self.cfg.clip.unwrap_or(0.0),
            ln_b1: b1.ln() as f32,
            ln_b2: b2.ln() as f32,
            _pad: [0; 3],
        };
        rec.dispatch(
            &pipeline(gpu, OptimKernel::AdamBegin)?,
            &[&self.partials.buffer, &self.state.buffer],
            Some(&begin),
            [1, 1, z],
        )?;
        let p = AdamParams {
            one_minus_b1: (1.0 - b1) as f32,
            b2: b2 as f32,
            one_minus_b2: (1.0 - b2) as f32,
            eps: self.cfg.eps,
            n_ranges: t.count,
            chunks: t.chunks as u32,
            agent_stride: self.len as u32,
            _pad: 0,
            ranges: t.ranges,
        };
        rec.dispatch(
            &pipeline(gpu, OptimKernel::AdamUpdate)?,
            &[
                &params.buffer,
                &grads.buffer,
                &self.m.buffer,
                &self.v.buffer,
                &self.state.buffer,
            ],
            Some(&p),
            groups,
        )
    }
}

/// The groups as table spans with the learning rate of each (`lr * lr_scale`, rounded once
/// from f64) as the per-range word.
fn group_spans(groups: &[ParamGroup], lr: f32) -> Vec<Span> {
    groups
        .iter()
        .map(|g| Span {
            dst: g.offset,
            src: g.offset,
            len: g.len,
            extra: ((lr as f64 * g.lr_scale as f64) as f32).to_bits(),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Polyak

/// Record the Polyak (EMA) update `target = lerp(target, params, tau)` over `ranges`, the same
/// elements of both buffers (TD-MPC2: the target Q-functions, tau 0.01). Ranges must be
/// disjoint and inside both buffers, which must differ.
pub fn record_polyak(
    rec: &mut Recorder,
    params: &GpuBuffer<f32>,
    target: &GpuBuffer<f32>,
    ranges: &[Range<usize>],
    tau: f32,
) -> Result<()> {
    check_ranges_order("Polyak update", ranges)?;
    let spans: Vec<PolyakSpan> = ranges
        .iter()
        .map(|r| PolyakSpan {
            source: r.start,
            target: r.start,
            len: r.end - r.start,
        })
        .collect();
    if same(&params.buffer, &target.buffer) && spans.iter().any(|s| s.len > 0) {
        return Err(Error::InvalidArgument(
            "Polyak update: params and target are the same buffer; use record_polyak_spans \
             with target elements apart from the source"
                .into(),
        ));
    }
    record_polyak_spans(rec, params, target, &spans, tau)
}

/// [`record_polyak`] with the target elements anywhere: span `s` moves
/// `target[s.target..s.target + s.len]` towards `params[s.source..s.source + s.len]`. `params`
/// and `target` may be one buffer if no span's source overlaps a span's target.
pub fn record_polyak_spans(
    rec: &mut Recorder,
    params: &GpuBuffer<f32>,
    target: &GpuBuffer<f32>,
    spans: &[PolyakSpan],
    tau: f32,
) -> Result<()> {
    record_polyak_agents(rec, params, target, spans, tau, 1)
}

/// [`record_polyak_spans`] for `agents` agents side by side: `params` and `target` hold the
/// agents' buffers back to back (each `len / agents` elements), and every span moves each
/// agent's target towards its own parameters, in one dispatch.
pub fn record_polyak_agents(
    rec: &mut Recorder,
    params: &GpuBuffer<f32>,
    target: &GpuBuffer<f32>,
    spans: &[PolyakSpan],
    tau: f32,
    agents: usize,
) -> Result<()> {
    let what = "Polyak update";
    let z = agents_in_grid(rec.gpu(), what, agents)?;
    if !(params.len().is_multiple_of(agents) && target.len().is_multiple_of(agents)) {
        return Err(Error::Shape(format!(
            "{what}: params ({}) and target ({}) do not split into {agents} agents",
            params.len(),
            target.len()
        )));
    }
    let (p_len, t_len) = (params.len() / agents, target.len() / agents);
    if agents > 1 && p_len != t_len {
        return Err(Error::Shape(format!(
            "{what}: agents of {p_len} parameters and {t_len} target elements"
        )));
    }
    if !tau.is_finite() {
        return Err(Error::InvalidArgument(format!(
            "{what}: tau must be finite, got {tau}"
        )));
    }
    let in_place = same(&params.buffer, &target.buffer);
    let sp: Vec<Span> = spans
        .iter()
        .map(|s| Span {
            dst: s.target,
            src: s.source,
            len: s.len,
            extra: s.source as u32,
        })
        .collect();
    // The source offset is the per-range word of the table.
    let t = table(
        what,
        "span",
        &sp,
        ("target", t_len),
        Some(("params", p_len)),
        in_place,
    )?;
    let mut groups = grid(rec.gpu(), t.chunks, what)?;
    groups[2] = z;
    let p = PolyakParams {
        tau,
        n_ranges: t.count,
        chunks: t.chunks as u32,
        agent_stride: p_len as u32,
        ranges: t.ranges,
    };
    if in_place {
        let pipe = pipeline(rec.gpu(), OptimKernel::PolyakInPlace)?;
        rec.dispatch(&pipe, &[&target.buffer], Some(&p), groups)
    } else {
        let pipe = pipeline(rec.gpu(), OptimKernel::Polyak)?;
        rec.dispatch(&pipe, &[&params.buffer, &target.buffer], Some(&p), groups)
    }
}

// ---------------------------------------------------------------------------------------------
// RunningScale

/// TD-MPC2's percentile positions for `n` values as its f32 tensors compute them:
/// `pos = q * (n - 1) / 100` for q = 5, 95; (floor index, ceil index clamped to n - 1,
/// floor weight `1 - (pos - floor)`, ceil weight `pos - floor`).
fn positions(n: usize) -> [(u32, u32, f32, f32); 2] {
    [5.0f32, 95.0].map(|q| {
        let pos = q * (n - 1) as f32 / 100.0;
        let f = pos.floor();
        let c = (f + 1.0).min((n - 1) as f32);
        let wc = pos - f;
        (f as u32, c as u32, 1.0 - wc, wc)
    })
}

/// TD-MPC2's `RunningScale`: a running trimmed scale of the Q-values,
/// `value = lerp(value, max(p95 - p5, 1), tau)` with the percentiles of each batch as
/// `tdmpc2/common/scale.py` takes them (sort, linear interpolation at `q (n - 1) / 100`),
/// kept in a one-element GPU buffer (initially 1).
#[derive(Debug)]
pub struct RunningScale {
    value: GpuBuffer<f32>,
    tau: f32,
}

impl RunningScale {
    /// A scale of 1 with update rate `tau` (TD-MPC2: 0.01), finite.
    pub fn new(gpu: &Gpu, tau: f32) -> Result<Self> {
        RunningScale::population(gpu, tau, 1)
    }

    /// The scales of `agents` agents side by side, each 1 to start, agent `i`'s at element `i`
    /// of [`RunningScale::value_buffer`]; one [`RunningScale::record_update_agents`] moves all.
    pub fn population(gpu: &Gpu, tau: f32, agents: usize) -> Result<Self> {
        if !tau.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "RunningScale: tau must be finite, got {tau}"
            )));
        }
        agents_in_grid(gpu, "RunningScale", agents)?;
        Ok(RunningScale {
            value: GpuBuffer::from_slice(gpu, "running scale", &vec![1.0; agents])?,
            tau,
        })
    }

    /// Agents whose scales this holds.
    pub fn agents(&self) -> usize {
        self.value.len()
    }

    /// The update rate.
    pub fn tau(&self) -> f32 {
        self.tau
    }

    /// The one-element buffer holding the scale, for kernels that divide by it.
    pub fn value_buffer(&self) -> &GpuBuffer<f32> {
        &self.value
    }

    /// Record a copy of agent `i`'s scale from the one-agent scale `alone`
    /// (`into_population`) or back into it.
    pub fn record_exchange_agent(
        &self,
        rec: &mut Recorder,
        i: usize,
        alone: &RunningScale,
        into_population: bool,
    ) -> Result<()> {
        if i >= self.agents() || alone.agents() != 1 {
            return Err(Error::InvalidArgument(format!(
                "RunningScale exchange: agent {i} of {} with a scale of {} agents",
                self.agents(),
                alone.agents()
            )));
        }
        rec.copy_share(&self.value, i, &alone.value, 1, into_population)
    }

    /// Download the scale (agent 0's in a population; one submit and one map).
    pub fn read_value(&self, gpu: &Gpu) -> Result<f32> {
        Ok(self.value.download(gpu)?[0])
    }

    /// Download every agent's scale.
    pub fn read_values(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        self.value.download(gpu)
    }

    /// Set the scale (a queue write, e.g. restoring a checkpoint; 1 to reset; every agent's
    /// in a population). Kernels divide by it: it must be finite and positive.
    pub fn set_value(&self, gpu: &Gpu, value: f32) -> Result<()> {
        if !(value.is_finite() && value > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "RunningScale: value {value} must be finite and > 0 (kernels divide by it)"
            )));
        }
        self.value.upload(gpu, &vec![value; self.agents()])
    }

    /// Record one update from `values[offset..offset + n]` (1 <= n <= [`MAX_SCALE_VALUES`]):
    /// one workgroup sorts them, takes the 5th and 95th percentiles and moves the scale.
    /// NaN values sort last, as in torch. One agent.
    pub fn record_update(
        &self,
        rec: &mut Recorder,
        values: &GpuBuffer<f32>,
        offset: usize,
        n: usize,
    ) -> Result<()> {
        if self.agents() != 1 {
            return Err(Error::InvalidArgument(format!(
                "RunningScale update: {} agents' scales need record_update_agents",
                self.agents()
            )));
        }
        self.record_update_agents(rec, values, offset, n, 0)
    }

    /// [`RunningScale::record_update`] of every agent in one dispatch: agent `i`'s `n` values
    /// start at `offset + i * agent_stride`.
    pub fn record_update_agents(
        &self,
        rec: &mut Recorder,
        values: &GpuBuffer<f32>,
        offset: usize,
        n: usize,
        agent_stride: usize,
    ) -> Result<()> {
        let what = "RunningScale update";
        let agents = self.agents();
        if n == 0 {
            return Err(Error::InvalidArgument(format!(
                "{what}: percentiles of no values"
            )));
        }
        if n > MAX_SCALE_VALUES {
            return Err(Error::Limit(format!(
                "{what}: {n} values, but one workgroup sorts at most {MAX_SCALE_VALUES}; \
                 pass a subset"
            )));
        }
        let last = (agents - 1)
            .checked_mul(agent_stride)
            .and_then(|l| l.checked_add(offset))
            .ok_or_else(|| Error::Limit(format!("{what}: agent offsets overflow")))?;
        check_slice(what, "values", values, last, n)?;
        check_slice(what, "values", values, offset, n)?;
        if u32::try_from(agent_stride).is_err() {
            return Err(Error::Limit(format!(
                "{what}: agent stride {agent_stride} over 2^32"
            )));
        }
        if same(&values.buffer, &self.value.buffer) {
            return Err(Error::InvalidArgument(format!(
                "{what}: the values cannot be the scale's own buffer"
            )));
        }
        let cap = sort_cap(n);
        let gpu = rec.gpu();
        let have = gpu.limits().max_compute_workgroup_storage_size as usize;
        // Only the sort keys live in this kernel's workgroup memory.
        let need = cap as usize * 4;
        if need > have {
            return Err(Error::Limit(format!(
                "{what}: sorting {n} values needs {need} bytes of workgroup memory, the device \
                 has {have}"
            )));
        }
        let [lo, hi] = positions(n);
        let p = ScaleParams {
            n: n as u32,
            offset: offset as u32,
            tau: self.tau,
            agent_stride: agent_stride as u32,
            lo_idx: [lo.0, lo.1],
            lo_w: [lo.2, lo.3],
            hi_idx: [hi.0, hi.1],
            hi_w: [hi.2, hi.3],
        };
        let pipe = pipeline(gpu, OptimKernel::ScaleUpdate { sort_cap: cap })?;
        rec.dispatch(
            &pipe,
            &[&values.buffer, &self.value.buffer],
            Some(&p),
            [1, 1, agents as u32],
        )
    }

    /// Record `buf[offset..offset + n] /= scale` (RunningScale's forward), in place.
    pub fn record_divide(
        &self,
        rec: &mut Recorder,
        buf: &GpuBuffer<f32>,
        offset: usize,
        n: usize,
    ) -> Result<()> {
        let what = "RunningScale divide";
        if self.agents() != 1 {
            return Err(Error::InvalidArgument(format!(
                "{what}: one agent's scale divides; this holds {}",
                self.agents()
            )));
        }
        check_slice(what, "buffer", buf, offset, n)?;
        if same(&buf.buffer, &self.value.buffer) {
            return Err(Error::InvalidArgument(format!(
                "{what}: cannot divide the scale's own buffer"
            )));
        }
        if n == 0 {
            return Ok(());
        }
        let groups = grid(rec.gpu(), n.div_ceil(CHUNK), what)?;
        let p = DivideParams {
            n: n as u32,
            offset: offset as u32,
            _pad: [0; 2],
        };
        let pipe = pipeline(rec.gpu(), OptimKernel::ScaleDivide)?;
        rec.dispatch(&pipe, &[&self.value.buffer, &buf.buffer], Some(&p), groups)
    }
}

fn check_slice(
    what: &str,
    name: &str,
    buf: &GpuBuffer<f32>,
    offset: usize,
    n: usize,
) -> Result<()> {
    let end = offset.checked_add(n);
    if end.is_none_or(|e| e > buf.len()) {
        return Err(Error::Shape(format!(
            "{what}: elements {} of {name} {:?}, which holds {}",
            fmt_range(offset, n),
            buf.label(),
            buf.len()
        )));
    }
    if end.is_some_and(|e| u32::try_from(e).is_err()) {
        return Err(Error::Limit(format!(
            "{what}: elements past 2^32 ({})",
            fmt_range(offset, n)
        )));
    }
    Ok(())
}
