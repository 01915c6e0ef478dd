//! The row-wise half of a NormedLinear layer for training (`shaders/norm_act.wgsl`): the
//! forward `y = act(LN(h))` on the output `h = x W^T + b` of a separate GEMM, its backward
//! `dh`, the LayerNorm parameter gradients, and column sums over rows (the bias gradient
//! `db = sum_rows dh`).
//!
//! Conventions: activations are row-major `[members, rows, n]` from an element offset (member
//! stride `rows * n`); parameters live in one flat buffer and their gradients in another of the
//! same length, so every parameter is `(buffer, element offset)` with member `e`'s vector at
//! `offset + e * n`. Parameter-gradient kernels add into the gradient buffer.
//!
//! ```no_run
//! # fn main() -> pompc::Result<()> {
//! use pompc::kernels::norm_act::{self, Activation, Affine, NormActBuffers, NormActConfig};
//! use pompc::{GpuBuffer, Recorder};
//! let gpu = pompc::Gpu::new(Default::default())?;
//! let (rows, n) = (768, 512);
//! let params = GpuBuffer::<f32>::new(&gpu, "params", 3 * n)?; // [b, gamma, beta]
//! let grads = GpuBuffer::<f32>::new(&gpu, "grads", 3 * n)?;
//! let h = GpuBuffer::<f32>::new(&gpu, "h", rows * n)?; // from the GEMM
//! let y = GpuBuffer::<f32>::new(&gpu, "y", rows * n)?;
//! let stats = GpuBuffer::<f32>::new(&gpu, "stats", 2 * rows)?;
//! let dy = GpuBuffer::<f32>::new(&gpu, "dy", rows * n)?;
//! let dh = GpuBuffer::<f32>::new(&gpu, "dh", rows * n)?;
//!
//! let cfg = NormActConfig::new(n, Activation::Mish, true);
//! let io = NormActBuffers {
//!     h: (&h, 0),
//!     affine: Some(Affine::new(&params, n, 2 * n)),
//!     stats: Some((&stats, 0)),
//! };
//! let mut rec = Recorder::new(&gpu);
//! norm_act::record_forward(&mut rec, &cfg, rows, &io, (&y, 0))?;
//! // ... the loss and the next layer's backward write dy ...
//! // dgamma, dbeta and the bias gradient db += sum_rows dh, in one column pass.
//! let dparams = Affine::new(&grads, n, 2 * n).with_bias(0);
//! norm_act::record_backward(&mut rec, &cfg, rows, &io, (&dy, 0), (&dh, 0), false,
//!     Some(dparams), None)?;
//! // (Without LayerNorm, db is `record_column_sum` of dh.)
//! rec.submit()?;
//! # Ok(()) }
//! ```

pub use crate::kernels::linear::Activation;

use super::launch::{
    check_scratch, count_within, extend_bindings, kernel, record_pipeline, scratch_or_new,
};
use crate::gpu::Binding::{self, Read, ReadWrite, Uniform};
use crate::gpu::shader::Header;
use crate::gpu::{GpuBuffer, KernelSpec, Recorder};
use crate::kernels::two_hot::grid;
use crate::{Error, Result};

/// A place in a flat `f32` buffer: `(buffer, element offset)`.
pub type At<'a> = (&'a GpuBuffer<f32>, usize);

/// LayerNorm affine parameters (or their gradients) in one flat buffer: member `e`'s gamma at
/// `gamma + e * n`, its beta at `beta + e * n`; with agents ([`NormActConfig::agents`]),
/// member `m` of agent `g` at `gamma + g * agent_stride + m * n`.
#[derive(Clone, Copy, Debug)]
pub struct Affine<'a> {
    /// The flat parameter (or gradient) buffer.
    pub buf: &'a GpuBuffer<f32>,
    /// Element offset of member 0's gamma.
    pub gamma: usize,
    /// Element offset of member 0's beta.
    pub beta: usize,
    /// Elements from one agent's gamma (beta) to the next agent's; unused with one agent.
    pub agent_stride: usize,
    /// Gradients only: element offset of member 0's bias gradient, laid out as gamma's. With
    /// it, [`record_backward`] also adds `db = sum_rows dh` there, in the same column pass as
    /// dgamma and dbeta (one pass where [`record_column_sum`] of dh would add another).
    pub bias: Option<usize>,
}

impl<'a> Affine<'a> {
    /// Gamma at `gamma`, beta at `beta`, one agent, no bias.
    pub fn new(buf: &'a GpuBuffer<f32>, gamma: usize, beta: usize) -> Self {
        Affine {
            buf,
            gamma,
            beta,
            agent_stride: 0,
            bias: None,
        }
    }

    /// The same, with the bias gradient at `bias` (see [`Affine::bias`]).
    pub fn with_bias(self, bias: usize) -> Self {
        Affine {
            bias: Some(bias),
            ..self
        }
    }
}

/// The shape of one norm-act step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NormActConfig {
    /// Features per row, at least 1 (a multiple of 8 for SimNorm).
    pub n: usize,
    /// Ensemble members, each with its own gamma and beta, at least 1 (all agents' together).
    pub members: usize,
    /// Agents the members split into (a divisor of `members`): a population's networks, each
    /// agent's parameters at its [`Affine::agent_stride`].
    pub agents: usize,
    /// LayerNorm (eps 1e-5, biased variance, affine) before the activation.
    pub layer_norm: bool,
    /// The activation after the (optional) LayerNorm.
    pub act: Activation,
    /// The column pass's workgroup shape (the LayerNorm gradients'); `None`:
    /// [`ColumnTile::choose`].
    pub column_tile: Option<ColumnTile>,
}

impl NormActConfig {
    /// One member.
    pub fn new(n: usize, act: Activation, layer_norm: bool) -> Self {
        NormActConfig {
            n,
            members: 1,
            agents: 1,
            layer_norm,
            act,
            column_tile: None,
        }
    }

    /// The column pass in `tile`s.
    pub fn with_column_tile(mut self, tile: ColumnTile) -> Self {
        self.column_tile = Some(tile);
        self
    }

    /// The column pass's tile over `chunks` chunks on `gpu`.
    fn column_tile(&self, gpu: &crate::Gpu, chunks: usize) -> ColumnTile {
        self.column_tile
            .unwrap_or_else(|| ColumnTile::choose(gpu, chunks))
    }

    /// Split the members into `agents` agents.
    pub fn with_agents(mut self, agents: usize) -> Self {
        self.agents = agents;
        self
    }

    /// Members per agent.
    pub fn per_agent(&self) -> usize {
        self.members / self.agents.max(1)
    }

    /// Same step over `members` ensemble members.
    pub fn with_members(mut self, members: usize) -> Self {
        self.members = members;
        self
    }

    /// `Err` unless `n >= 1`, `members >= 1` and, for SimNorm, `n % 8 == 0`.
    pub fn check(&self) -> Result<()> {
        if self.n == 0 || self.members == 0 {
            return Err(Error::InvalidArgument(format!(
                "norm-act needs at least one feature and one member, got n = {} and {} members",
                self.n, self.members
            )));
        }
        if self.agents == 0 || !self.members.is_multiple_of(self.agents) {
            return Err(Error::InvalidArgument(format!(
                "norm-act: {} members do not split into {} agents",
                self.members, self.agents
            )));
        }
        if self.act == Activation::SimNorm && !self.n.is_multiple_of(8) {
            return Err(Error::InvalidArgument(format!(
                "SimNorm works on groups of 8 features; n = {} is not a multiple of 8",
                self.n
            )));
        }
        if u32::try_from(self.n).is_err() || u32::try_from(self.members).is_err() {
            return Err(Error::Limit(format!(
                "norm-act: n = {} or {} members over 2^32",
                self.n, self.members
            )));
        }
        Ok(())
    }
}

/// The buffers one norm-act layer shares between its forward and its backward.
#[derive(Clone, Copy, Debug)]
pub struct NormActBuffers<'a> {
    /// Pre-activations `h` (the GEMM's output), `[members, rows, n]` from an offset.
    pub h: At<'a>,
    /// LayerNorm gamma and beta (usually in the flat parameter buffer): given exactly when the
    /// config has LayerNorm.
    pub affine: Option<Affine<'a>>,
    /// Per-row `(mean, rstd)` pairs, `[members, rows, 2]` from an offset (LayerNorm only):
    /// written by the forward when given, read by the backward when given. Without them the
    /// backward recomputes the statistics from `h` (two more passes over each row, and a
    /// temporary buffer per call when it also adds the parameter gradients).
    pub stats: Option<At<'a>>,
}

/// A column sum over rows: `out[e, j] (+)= sum_r a[e, r, j]` (or of `a * b`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ColumnSumConfig {
    /// Columns, at least 1.
    pub n: usize,
    /// Independent `[rows, n]` matrices (ensemble members), at least 1.
    pub members: usize,
    /// Add into `out` (gradients) instead of writing it.
    pub accumulate: bool,
    /// Agents the members split into (a divisor of `members`; 1 without a population).
    pub agents: usize,
    /// Elements of `out` from one agent's sums to the next agent's (member `m` of agent `g`
    /// at `g * agent_stride + m * n`); unused with one agent.
    pub agent_stride: usize,
    /// The workgroup shape; `None`: [`ColumnTile::choose`].
    pub tile: Option<ColumnTile>,
}

impl ColumnSumConfig {
    /// `n` columns of `members` matrices, one agent.
    pub fn new(n: usize, members: usize, accumulate: bool) -> Self {
        ColumnSumConfig {
            n,
            members,
            accumulate,
            agents: 1,
            agent_stride: 0,
            tile: None,
        }
    }
}

/// Which entry point of the shader, with the flags that make its pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormActOp {
    /// `y = act(LN(h))`, storing the row statistics or not.
    Forward {
        /// Write `(mean, rstd)` per row.
        stats: bool,
    },
    /// `dh`, written or added.
    Backward {
        /// Add into `dh`.
        accumulate: bool,
        /// Compute the row statistics from `h` instead of reading stored ones.
        recompute: bool,
        /// Store the recomputed statistics (for the parameter gradients).
        store: bool,
    },
    /// dgamma and dbeta (and db) over one chunk of rows: added into the gradients (`direct`,
    /// one chunk) or written as partials.
    ParamGrads {
        /// One chunk, added straight into the gradients.
        direct: bool,
        /// Also the bias gradient, the column sum of dh.
        bias: bool,
        /// The workgroup's shape.
        tile: ColumnTile,
    },
    /// A column sum over one chunk of rows (`add`: added into the output).
    ColumnSum {
        /// Sum of `a * b`.
        product: bool,
        /// Add into the output (only when the output is final, not partials).
        add: bool,
        /// The workgroup's shape.
        tile: ColumnTile,
    },
    /// Partials summed over chunks, into `quantities` outputs.
    Finish {
        /// 1 (a column sum), 2 (dgamma, dbeta) or 3 (dgamma, dbeta, db).
        quantities: u32,
        /// Add into the output.
        add: bool,
    },
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    members: u32,
    x_off: u32,
    dy_off: u32,
    gamma_off: u32,
    beta_off: u32,
    stats_off: u32,
    out_off: u32,
    out_off2: u32,
    out_off3: u32,
    out_member: u32,
    out_chunk: u32,
    chunk_rows: u32,
    chunks: u32,
    per_agent: u32,
    param_as: u32,
    out_per: u32,
    out_as: u32,
    aux_off: u32,
    _pad: u32,
}

impl Default for Params {
    /// Everything 0 but the agent splits: members per agent "all of them" (no division by 0,
    /// and one agent).
    fn default() -> Self {
        Params {
            rows: 0,
            members: 0,
            x_off: 0,
            dy_off: 0,
            gamma_off: 0,
            beta_off: 0,
            stats_off: 0,
            out_off: 0,
            out_off2: 0,
            out_off3: 0,
            out_member: 0,
            out_chunk: 0,
            chunk_rows: 0,
            chunks: 0,
            per_agent: u32::MAX,
            param_as: 0,
            out_per: u32::MAX,
            out_as: 0,
            aux_off: 0,
            _pad: 0,
        }
    }
}

/// The extent of `members` vectors of `n` split into `agents` at `agent_stride`.
fn agent_extent(n: usize, members: usize, agents: usize, agent_stride: usize) -> usize {
    if agents <= 1 {
        members * n
    } else {
        (agents - 1) * agent_stride + (members / agents) * n
    }
}

/// What the backward and the parameter gradients read: h, dy, gamma and beta, the statistics.
const BACKWARD_READS: [(u32, Binding); 4] = [(0, Read), (1, Read), (2, Read), (3, Read)];
const FORWARD: KernelSpec = kernel(
    "norm_act",
    "forward",
    &[
        (0, Read),
        (2, Read),
        (4, ReadWrite),
        (5, ReadWrite),
        (6, Uniform),
    ],
);
const BACKWARD: KernelSpec = kernel(
    "norm_act",
    "backward",
    &extend_bindings::<4, 7>(
        &BACKWARD_READS,
        &[(4, ReadWrite), (5, ReadWrite), (6, Uniform)],
    ),
);
const LN_GRADS: KernelSpec = kernel(
    "norm_act",
    "ln_grads",
    &extend_bindings::<4, 7>(
        &BACKWARD_READS,
        &[(4, ReadWrite), (5, ReadWrite), (6, Uniform)],
    ),
);
const COLSUM: KernelSpec = kernel(
    "norm_act",
    "colsum",
    &[(0, Read), (1, Read), (4, ReadWrite), (6, Uniform)],
);
const FINISH: KernelSpec = kernel(
    "norm_act",
    "finish",
    &[(0, Read), (4, ReadWrite), (6, Uniform)],
);

/// Threads per row in the row kernels: the power of two that gives each about 8 features,
/// at most 64 (so rows of 512 and up use the linear epilogue's 64-thread summation order).
pub fn lanes(n: usize) -> u32 {
    n.div_ceil(8).next_power_of_two().min(64) as u32
}

/// The workgroup of a column kernel: `cols` columns (`CT` in the shader) by `lanes` row lanes
/// (`CL`, a power of two), each lane summing every `lanes`-th row of the chunk; at most 256
/// threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ColumnTile {
    /// Columns per workgroup.
    pub cols: u32,
    /// Row lanes per column.
    pub lanes: u32,
}

impl ColumnTile {
    /// 64 columns by 4 lanes: 256-byte row segments per read.
    pub const WIDE: ColumnTile = ColumnTile { cols: 64, lanes: 4 };
    /// 16 columns by 16 lanes: four times the workgroups and a quarter of the rows per lane
    /// (64-byte segments), for one-chunk sums over up to 256 rows, which leave a large GPU
    /// mostly idle with wide tiles (8 workgroups for 512 columns).
    pub const NARROW: ColumnTile = ColumnTile {
        cols: 16,
        lanes: 16,
    };

    /// The tile for a sum in `chunks` chunks on `gpu`: [`ColumnTile::NARROW`] for one chunk
    /// on a GPU (the H100's 5M world-model update: 3.22 -> 3.04 ms of GPU time;
    /// BENCHMARKS.md), else [`ColumnTile::WIDE`] (software adapters, where a workgroup is a
    /// core's SIMD lanes, were not timed); `POMPC_COLUMN_TILE=wide` keeps wide tiles
    /// everywhere. Chunking itself ([`column_chunks`]) does not depend on it: either tile runs
    /// any chunking.
    pub fn choose(gpu: &crate::Gpu, chunks: usize) -> ColumnTile {
        static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let wide =
            *WIDE.get_or_init(|| std::env::var("POMPC_COLUMN_TILE").is_ok_and(|v| v == "wide"));
        if !wide && chunks == 1 && gpu.info().device_type != wgpu::DeviceType::Cpu {
            ColumnTile::NARROW
        } else {
            ColumnTile::WIDE
        }
    }
}

/// Row lanes that chunks are rounded to (the wide tile's; a narrow tile takes one chunk).
const COL_LANES: usize = ColumnTile::WIDE.lanes as usize;
/// Rows one workgroup of a column kernel sums, aimed at: enough work per thread to hide the
/// reduction, enough chunks to fill a large GPU.
const CHUNK_ROWS: usize = 256;
/// At most this many chunks, so the final pass sums a bounded number of partials.
const MAX_CHUNKS: usize = 256;

/// How the column kernels split `rows` rows: `(chunks, rows per chunk)`. One chunk means a
/// single pass that adds straight into the output; more need a scratch buffer of partials and
/// a second pass.
pub fn column_chunks(rows: usize) -> (usize, usize) {
    let chunks = rows.div_ceil(CHUNK_ROWS).clamp(1, MAX_CHUNKS);
    // A multiple of the row lanes, so every lane has the same trip count.
    let per = rows.div_ceil(chunks).div_ceil(COL_LANES) * COL_LANES;
    (rows.div_ceil(per.max(1)).max(1), per.max(COL_LANES))
}

/// Elements of scratch a column sum over `rows` rows needs for `quantities` outputs of
/// `members * n` (1 for [`record_column_sum`]; 2 for the parameter gradients of
/// [`record_backward`], 3 with the bias gradient); 0 when one pass does (`rows <= 256`).
pub fn scratch_len(n: usize, members: usize, rows: usize, quantities: usize) -> usize {
    let (chunks, _) = column_chunks(rows);
    if chunks == 1 {
        0
    } else {
        quantities * members * chunks * n
    }
}

/// The header and override constants of one pipeline: exactly what the launch code builds, so
/// the shader test can validate every combination. For the column-sum ops only `cfg.n`
/// matters.
pub fn pipeline_constants(
    cfg: &NormActConfig,
    op: NormActOp,
) -> (KernelSpec, Header, Vec<(&'static str, f64)>) {
    let act = match cfg.act {
        Activation::Identity => 0.0,
        Activation::Mish => 1.0,
        Activation::SimNorm => 2.0,
    };
    let mut ov: Vec<(&'static str, f64)> = vec![("N", cfg.n as f64)];
    let row = |ov: &mut Vec<(&'static str, f64)>| {
        ov.push(("ACT", act));
        ov.push(("LN", cfg.layer_norm as u8 as f64));
    };
    let spec = match op {
        NormActOp::Forward { stats } => {
            row(&mut ov);
            ov.push(("STATS", stats as u8 as f64));
            ov.push(("LANES", lanes(cfg.n) as f64));
            FORWARD
        }
        NormActOp::Backward {
            accumulate,
            recompute,
            store,
        } => {
            row(&mut ov);
            ov.push(("ADD", accumulate as u8 as f64));
            ov.push(("RECOMPUTE", recompute as u8 as f64));
            ov.push(("STATS", store as u8 as f64));
            ov.push(("LANES", lanes(cfg.n) as f64));
            BACKWARD
        }
        NormActOp::ParamGrads { direct, bias, tile } => {
            ov.push(("ACT", act));
            ov.push(("LN", 1.0));
            ov.push(("ADD", direct as u8 as f64));
            ov.push(("BIAS", bias as u8 as f64));
            ov.push(("CT", tile.cols as f64));
            ov.push(("CL", tile.lanes as f64));
            LN_GRADS
        }
        NormActOp::ColumnSum { product, add, tile } => {
            ov.push(("PRODUCT", product as u8 as f64));
            ov.push(("ADD", add as u8 as f64));
            ov.push(("CT", tile.cols as f64));
            ov.push(("CL", tile.lanes as f64));
            COLSUM
        }
        NormActOp::Finish { quantities, add } => {
            ov.push(("Q", quantities as f64));
            ov.push(("ADD", add as u8 as f64));
            FINISH
        }
    };
    (spec, Header::default(), ov)
}

/// One use of a buffer by a dispatch, for the aliasing checks.
#[derive(Clone, Copy)]
pub(crate) struct Use<'a> {
    pub name: &'a str,
    pub buf: &'a wgpu::Buffer,
    /// Elements `start..end` touched.
    pub range: (usize, usize),
    pub write: bool,
}

impl<'a> Use<'a> {
    /// `range` of `buf` read.
    pub(crate) fn read(name: &'a str, buf: &'a GpuBuffer<f32>, range: (usize, usize)) -> Self {
        Use {
            name,
            buf: &buf.buffer,
            range,
            write: false,
        }
    }

    /// `range` of `buf` written.
    pub(crate) fn write(name: &'a str, buf: &'a GpuBuffer<f32>, range: (usize, usize)) -> Self {
        Use {
            write: true,
            ..Use::read(name, buf, range)
        }
    }
}

/// wgpu cannot bind one buffer read-only and writable in the same dispatch, and two writable
/// views of one buffer must not overlap (the results would depend on the order of threads).
pub(crate) fn check_aliasing(what: &str, uses: &[Use]) -> Result<()> {
    for (i, a) in uses.iter().enumerate() {
        for b in &uses[i + 1..] {
            if a.buf != b.buf || !(a.write || b.write) {
                continue;
            }
            if a.write != b.write {
                let (r, w) = if a.write { (b, a) } else { (a, b) };
                return Err(Error::InvalidArgument(format!(
                    "{what}: {} (read) and {} (written) are the same buffer; wgpu cannot bind \
                     one buffer read-only and writable in one dispatch, so use separate buffers",
                    r.name, w.name
                )));
            }
            if a.range.0 < b.range.1 && b.range.0 < a.range.1 {
                return Err(Error::InvalidArgument(format!(
                    "{what}: {} (elements {}..{}) and {} (elements {}..{}) overlap in one buffer",
                    a.name, a.range.0, a.range.1, b.name, b.range.0, b.range.1
                )));
            }
        }
    }
    Ok(())
}

/// Check that `len` elements from `offset` fit in `buf`; returns the offset as a shader
/// parameter and the range for the aliasing checks.
pub(crate) fn fit(
    what: &str,
    name: &str,
    buf: &GpuBuffer<f32>,
    offset: usize,
    len: usize,
) -> Result<(u32, (usize, usize))> {
    let end = offset.checked_add(len).filter(|&e| e <= buf.len());
    match (end, u32::try_from(offset)) {
        (Some(end), Ok(o)) => Ok((o, (offset, end))),
        _ => Err(Error::Shape(format!(
            "{what}: {name} ({:?}) holds {} elements, {len} from offset {offset} do not fit",
            buf.label(),
            buf.len()
        ))),
    }
}

/// Rows of all members as a 32-bit count, and the elements they span.
fn total_rows(what: &str, cfg: &NormActConfig, rows: usize) -> Result<(u32, usize)> {
    let max = u32::MAX as usize;
    let total = count_within(what, rows.checked_mul(cfg.members), max, || {
        format!("{rows} rows x {} members over 2^32", cfg.members)
    })?;
    let elems = count_within(what, total.checked_mul(cfg.n), max, || {
        format!("{total} rows of {} features over 2^32 elements", cfg.n)
    })?;
    Ok((total as u32, elems))
}

/// The rows of the forward or the backward: their count over all members and `h` checked;
/// returns that count, the elements it spans, the read of `h` and the uniforms with the rows
/// and `h`'s offset set.
fn row_pass<'a>(
    what: &str,
    cfg: &NormActConfig,
    rows: usize,
    h: At<'a>,
) -> Result<(u32, usize, Use<'a>, Params)> {
    let (total, elems) = total_rows(what, cfg, rows)?;
    let (h_off, hr) = fit(what, "h", h.0, h.1, elems)?;
    let p = Params {
        rows: rows as u32,
        members: cfg.members as u32,
        x_off: h_off,
        per_agent: cfg.per_agent() as u32,
        ..Default::default()
    };
    Ok((total, elems, Use::read("h", h.0, hr), p))
}

/// `Err` where row statistics are given without LayerNorm.
fn check_stats(what: &str, cfg: &NormActConfig, io: &NormActBuffers) -> Result<()> {
    if io.stats.is_some() && !cfg.layer_norm {
        return Err(Error::InvalidArgument(format!(
            "{what}: row statistics exist only with LayerNorm (stats: None)"
        )));
    }
    Ok(())
}

/// Gamma and beta, checked: shader offsets and element ranges.
struct CheckedAffine<'a> {
    aff: Affine<'a>,
    gamma: u32,
    beta: u32,
    /// Per agent, the element ranges of its gamma and its beta.
    ranges: Vec<[(usize, usize); 2]>,
    /// The bias gradient's shader offset and, per agent, its element range.
    bias: Option<(u32, Vec<(usize, usize)>)>,
}

impl<'a> CheckedAffine<'a> {
    /// What the parameter gradients write, for the aliasing checks.
    fn writes(&self) -> Vec<Use<'a>> {
        let mut uses = Vec::new();
        for [gr, br] in &self.ranges {
            uses.push(Use::write("dgamma", self.aff.buf, *gr));
            uses.push(Use::write("dbeta", self.aff.buf, *br));
        }
        for r in self.bias.iter().flat_map(|b| &b.1) {
            uses.push(Use::write("dbias", self.aff.buf, *r));
        }
        uses
    }
}

/// The element ranges of `agents` agents' blocks of `len` values from `offset`, `stride`
/// apart (one block without agents).
fn agent_ranges(offset: usize, len: usize, agents: usize, stride: usize) -> Vec<(usize, usize)> {
    (0..agents.max(1))
        .map(|g| (offset + g * stride, offset + g * stride + len))
        .collect()
}

/// Gamma and beta, checked against the config.
fn affine_params<'a>(
    what: &str,
    cfg: &NormActConfig,
    affine: Option<Affine<'a>>,
    name: &str,
) -> Result<Option<CheckedAffine<'a>>> {
    match (cfg.layer_norm, affine) {
        (false, None) => Ok(None),
        (true, Some(a)) => {
            if cfg.agents > 1
                && (a.agent_stride < cfg.per_agent() * cfg.n
                    || u32::try_from(a.agent_stride).is_err())
            {
                return Err(Error::Shape(format!(
                    "{what}: {name} agent stride {} under the {} x {} values of an agent",
                    a.agent_stride,
                    cfg.per_agent(),
                    cfg.n
                )));
            }
            let len = agent_extent(cfg.n, cfg.members, cfg.agents, a.agent_stride);
            let (g, _) = fit(what, &format!("{name} gamma"), a.buf, a.gamma, len)?;
            let (b, _) = fit(what, &format!("{name} beta"), a.buf, a.beta, len)?;
            let per = cfg.per_agent() * cfg.n;
            let gr = agent_ranges(a.gamma, per, cfg.agents, a.agent_stride);
            let br = agent_ranges(a.beta, per, cfg.agents, a.agent_stride);
            let bias = match a.bias {
                None => None,
                Some(_) if name == "LayerNorm" => {
                    return Err(Error::InvalidArgument(format!(
                        "{what}: a bias offset belongs to the gradients, not to the LayerNorm \
                         parameters"
                    )));
                }
                Some(off) => {
                    let (o, _) = fit(what, &format!("{name} bias"), a.buf, off, len)?;
                    Some((o, agent_ranges(off, per, cfg.agents, a.agent_stride)))
                }
            };
            Ok(Some(CheckedAffine {
                aff: a,
                gamma: g,
                beta: b,
                ranges: gr.into_iter().zip(br).map(|(g, b)| [g, b]).collect(),
                bias,
            }))
        }
        (true, None) => Err(Error::InvalidArgument(format!(
            "{what}: LayerNorm needs its {name} gamma and beta (affine: Some)"
        ))),
        (false, Some(_)) => Err(Error::InvalidArgument(format!(
            "{what}: {name} gamma and beta given without LayerNorm in the config"
        ))),
    }
}

/// Gamma and beta into a dispatch: their offsets into `p`, their reads into `uses`; returns
/// the buffer to bind (`h` again without LayerNorm, which the kernel then does not read).
fn bind_affine<'a>(
    aff: &Option<CheckedAffine<'a>>,
    h: &'a GpuBuffer<f32>,
    p: &mut Params,
    uses: &mut Vec<Use<'a>>,
) -> &'a GpuBuffer<f32> {
    let Some(a) = aff else { return h };
    p.gamma_off = a.gamma;
    p.beta_off = a.beta;
    p.param_as = a.aff.agent_stride as u32;
    for [g, b] in &a.ranges {
        uses.push(Use::read("gamma", a.aff.buf, *g));
        uses.push(Use::read("beta", a.aff.buf, *b));
    }
    a.aff.buf
}

/// `y = act(LN(h))` for `rows` rows of each member: `io.h` and `y` are `[members, rows, n]`.
/// With LayerNorm, `io.affine` holds gamma and beta, and `io.stats`, if given, receives each
/// row's `(mean, rstd)` for the backward. The math is `shaders/linear.wgsl`'s epilogue.
/// `y` must be another buffer than `h` and the parameters.
pub fn record_forward(
    rec: &mut Recorder,
    cfg: &NormActConfig,
    rows: usize,
    io: &NormActBuffers,
    y: At,
) -> Result<()> {
    let what = "norm-act forward";
    cfg.check()?;
    let aff = affine_params(what, cfg, io.affine, "LayerNorm")?;
    check_stats(what, cfg, io)?;
    if rows == 0 {
        return Ok(());
    }
    let (total, elems, h, mut p) = row_pass(what, cfg, rows, io.h)?;
    let (y_off, yr) = fit(what, "y", y.0, y.1, elems)?;
    p.out_off = y_off;
    let mut uses = vec![h, Use::write("y", y.0, yr)];
    let prm = bind_affine(&aff, io.h.0, &mut p, &mut uses);
    // Without stats the binding is y again (two writable views of one buffer are allowed;
    // the kernel does not touch it).
    let mut stats_buf = y.0;
    if let Some(s) = io.stats {
        let (off, range) = fit(what, "stats", s.0, s.1, 2 * total as usize)?;
        p.stats_off = off;
        stats_buf = s.0;
        uses.push(Use::write("stats", s.0, range));
    }
    check_aliasing(what, &uses)?;
    let op = NormActOp::Forward {
        stats: io.stats.is_some(),
    };
    record_pipeline(
        rec,
        pipeline_constants(cfg, op),
        &[&io.h.0.buffer, &prm.buffer, &y.0.buffer, &stats_buf.buffer],
        &p,
        row_grid(rec, what, cfg, total)?,
    )
}

/// The backward of [`record_forward`]: from `dy` (the gradient at `y`), `io.h`, gamma, beta
/// and the row statistics (`io.stats`, or recomputed from `h`), `dh` (`[members, rows, n]`) is
/// written, or added into when `accumulate`.
///
/// With `grads` (LayerNorm only), the LayerNorm parameter gradients are added into it as
/// well: `dgamma[e, j] += sum_r du[e, r, j] xhat[e, r, j]` and `dbeta[e, j] += sum_r du[e, r,
/// j]`, where `du` is the gradient at the LayerNorm's output and `xhat = (h - mean) rstd`, in a
/// second, column-wise kernel; with [`Affine::bias`] that kernel also adds the bias gradient
/// `db[e, j] += sum_r dh[e, r, j]` (then `dh` must be written, not `accumulate`d). Over 256
/// rows those sums run in two passes through `scratch` ([`scratch_len`] with 2 quantities, 3
/// with the bias; `None` allocates one per call). Without `grads` only `dh` is computed
/// (frozen or detached parameters).
///
/// Written buffers (`dh`, `grads`, `scratch`) must be other buffers than the read ones (`h`,
/// `dy`, the parameters, the statistics).
#[allow(clippy::too_many_arguments)]
pub fn record_backward(
    rec: &mut Recorder,
    cfg: &NormActConfig,
    rows: usize,
    io: &NormActBuffers,
    dy: At,
    dh: At,
    accumulate: bool,
    grads: Option<Affine>,
    scratch: Option<&GpuBuffer<f32>>,
) -> Result<()> {
    let what = "norm-act backward";
    cfg.check()?;
    let aff = affine_params(what, cfg, io.affine, "LayerNorm")?;
    let dparams = match (cfg.layer_norm, grads) {
        (_, None) => None,
        (true, Some(g)) if g.bias.is_some() && accumulate => {
            return Err(Error::InvalidArgument(format!(
                "{what}: the bias gradient sums dh as written, so dh cannot be accumulated into \
                 (bias: None, and record_column_sum of the total)"
            )));
        }
        (true, g) => affine_params(what, cfg, g, "gradient")?,
        (false, Some(_)) => {
            return Err(Error::InvalidArgument(format!(
                "{what}: parameter gradients given without LayerNorm (the bias gradient is \
                 record_column_sum of dh)"
            )));
        }
    };
    check_stats(what, cfg, io)?;
    let (total, elems, h, mut p) = row_pass(what, cfg, rows, io.h)?;
    let (dy_off, dyr) = fit(what, "dy", dy.0, dy.1, elems)?;
    let (dh_off, dhr) = fit(what, "dh", dh.0, dh.1, elems)?;
    (p.dy_off, p.out_off) = (dy_off, dh_off);
    let mut uses = vec![h, Use::read("dy", dy.0, dyr)];
    let prm = bind_affine(&aff, io.h.0, &mut p, &mut uses);
    if let Some(s) = io.stats {
        let (off, range) = fit(what, "stats", s.0, s.1, 2 * total as usize)?;
        p.stats_off = off;
        uses.push(Use::read("stats", s.0, range));
    }
    uses.push(Use::write("dh", dh.0, dhr));
    if let Some(g) = &dparams {
        uses.extend(g.writes());
    }
    if let Some(s) = scratch {
        uses.push(Use::write("scratch", s, (0, s.len())));
        if let Some(g) = &dparams {
            // The second pass reads the scratch while it writes the gradients.
            let mut second = vec![Use::read("scratch", s, (0, s.len()))];
            second.extend(g.writes());
            check_aliasing(what, &second)?;
        }
    }
    check_aliasing(what, &uses)?;
    if rows == 0 {
        return Ok(());
    }
    let quantities = 2 + dparams.as_ref().is_some_and(|g| g.bias.is_some()) as usize;
    if dparams.is_some() {
        // Fail before anything is recorded.
        let (chunks, _) = column_chunks(rows);
        column_grid(
            rec,
            what,
            cfg.n,
            chunks,
            cfg.members,
            cfg.column_tile(rec.gpu(), chunks),
        )?;
        let need = scratch_len(cfg.n, cfg.members, rows, quantities);
        if let Some(s) = scratch {
            check_scratch(what, s, need, SCRATCH_NEEDED)?;
        }
    }
    let gpu = rec.gpu();
    // Statistics: the stored ones, or recomputed (and kept in a temporary for the column
    // kernel when it runs).
    let recompute = cfg.layer_norm && io.stats.is_none();
    let store = recompute && dparams.is_some();
    let temp_stats = if store {
        Some(GpuBuffer::new(
            gpu,
            "pompc row statistics",
            2 * total as usize,
        )?)
    } else {
        None
    };
    // Unused bindings repeat a buffer bound the same way.
    let stats_in = io.stats.map_or(io.h.0, |s| s.0);
    let stats_out = temp_stats.as_ref().unwrap_or(dh.0);
    let groups = row_grid(rec, what, cfg, total)?;
    let op = NormActOp::Backward {
        accumulate,
        recompute,
        store,
    };
    record_pipeline(
        rec,
        pipeline_constants(cfg, op),
        &[
            &io.h.0.buffer,
            &dy.0.buffer,
            &prm.buffer,
            &stats_in.buffer,
            &dh.0.buffer,
            &stats_out.buffer,
        ],
        &p,
        groups,
    )?;
    if let Some(g) = dparams {
        let stats = temp_stats.as_ref().map_or(stats_in, |t| t);
        if temp_stats.is_some() {
            p.stats_off = 0;
        }
        // The bias sums dh where the backward above wrote it.
        p.aux_off = dh_off;
        p.out_off3 = g.bias.as_ref().map_or(0, |b| b.0);
        record_ln_grads(
            rec,
            what,
            cfg,
            rows,
            p,
            [io.h.0, dy.0, prm, stats, dh.0],
            (g.aff.buf, g.gamma, g.beta, g.aff.agent_stride as u32),
            g.bias.is_some(),
            scratch,
        )?;
    }
    Ok(())
}

/// What a too-short scratch of the column sums is told: the elements needed, and where to
/// find how many.
const SCRATCH_NEEDED: &str = "needed (see scratch_len)";

/// The scratch buffer of a two-pass column sum: the caller's, checked, or a new one that the
/// recorder keeps alive until it is done.
fn scratch_buffer(
    rec: &Recorder,
    what: &str,
    scratch: Option<&GpuBuffer<f32>>,
    need: usize,
) -> Result<GpuBuffer<f32>> {
    let label = "pompc column-sum partials";
    scratch_or_new(rec, what, scratch, need, SCRATCH_NEEDED, label)
}

/// Grid of a row kernel over `total` rows (of all members), [`lanes`] threads a row.
fn row_grid(rec: &Recorder, what: &str, cfg: &NormActConfig, total: u32) -> Result<[u32; 3]> {
    let per_group = 64 / lanes(cfg.n) as usize;
    grid(rec.gpu(), (total as usize).div_ceil(per_group), what)
}

/// Column grid of a column kernel in `tile`s: (column tiles, chunks, members); `Err` for a
/// tile the shader cannot run (see [`ColumnTile`]).
fn column_grid(
    rec: &Recorder,
    what: &str,
    n: usize,
    chunks: usize,
    members: usize,
    tile: ColumnTile,
) -> Result<[u32; 3]> {
    let l = rec.gpu().limits();
    let (cols, lanes) = (tile.cols, tile.lanes);
    if cols == 0
        || !lanes.is_power_of_two()
        || cols.saturating_mul(lanes) > 256
        || cols.saturating_mul(lanes) > l.max_compute_invocations_per_workgroup
        || cols > l.max_compute_workgroup_size_x
        || lanes > l.max_compute_workgroup_size_y
    {
        return Err(Error::InvalidArgument(format!(
            "{what}: column tile {tile:?}: at least one column, a power of two of lanes, at \
             most 256 threads (and within the device's workgroup limits)"
        )));
    }
    let max = l.max_compute_workgroups_per_dimension as usize;
    let tiles = n.div_ceil(tile.cols as usize);
    if tiles > max || chunks > max || members > max {
        return Err(Error::Limit(format!(
            "{what}: {tiles} column tiles, {chunks} chunks or {members} members exceed {max} \
             workgroups per dimension"
        )));
    }
    Ok([tiles as u32, chunks as u32, members as u32])
}

/// The second pass of a column sum: partials `[quantities, members, chunks, n]` summed over
/// chunks into `out` at `off` (`off2` for the second quantity, `off3` for the third).
#[allow(clippy::too_many_arguments)]
fn record_finish(
    rec: &mut Recorder,
    what: &str,
    cfg: &NormActConfig,
    chunks: usize,
    quantities: u32,
    add: bool,
    scratch: &GpuBuffer<f32>,
    out: Out,
    off3: u32,
) -> Result<()> {
    let (n, members) = (cfg.n, cfg.members);
    let p = Params {
        members: members as u32,
        out_off: out.1,
        out_off2: out.2,
        out_off3: off3,
        out_member: n as u32,
        chunks: chunks as u32,
        out_per: cfg.per_agent() as u32,
        out_as: out.3,
        ..Default::default()
    };
    let out = out.0;
    let cfg = NormActConfig::new(n, Activation::Identity, false);
    let groups = grid(
        rec.gpu(),
        (quantities as usize * members * n).div_ceil(64),
        what,
    )?;
    record_pipeline(
        rec,
        pipeline_constants(&cfg, NormActOp::Finish { quantities, add }),
        &[&scratch.buffer, &out.buffer],
        &p,
        groups,
    )
}

/// Where a column pass's sums go: the buffer, the offsets of the first and the second
/// quantity (the third's, for the bias gradient, is in the uniforms), and the elements between
/// agents.
type Out<'a> = (&'a GpuBuffer<f32>, u32, u32, u32);

/// dgamma and dbeta (and db with `bias`) added into the gradients `out`: one column pass, or
/// two through the scratch. `p` carries the offsets of `inputs` (h, dy, gamma and beta, the
/// statistics, dh) and of the bias gradient.
#[allow(clippy::too_many_arguments)]
fn record_ln_grads(
    rec: &mut Recorder,
    what: &str,
    cfg: &NormActConfig,
    rows: usize,
    p: Params,
    [h, dy, prm, stats, dh]: [&GpuBuffer<f32>; 5],
    out: Out,
    bias: bool,
    scratch: Option<&GpuBuffer<f32>>,
) -> Result<()> {
    let quantities = 2 + bias as u32;
    let chunks = column_chunks(rows);
    let part = if chunks.0 > 1 {
        let need = scratch_len(cfg.n, cfg.members, rows, quantities as usize);
        Some(scratch_buffer(rec, what, scratch, need)?)
    } else {
        None
    };
    let op = NormActOp::ParamGrads {
        direct: part.is_none(),
        bias,
        tile: cfg.column_tile(rec.gpu(), chunks.0),
    };
    let inputs = [&h.buffer, &dy.buffer, &prm.buffer, &stats.buffer];
    // Binding 5 (dh) sits after the output in the layout.
    record_columns(
        rec,
        what,
        cfg,
        op,
        p,
        chunks,
        quantities,
        true,
        &inputs,
        Some(&dh.buffer),
        part,
        out,
    )
}

/// The column pass of `op` with `p` (the inputs' offsets set) over `(chunks, chunk_rows)`
/// from [`column_chunks`], for `quantities` sums: straight into `out` (the buffer, then the
/// offsets of the first and the second quantity; the third's in `p`) with one chunk; else into
/// the partials `part` (given exactly then), and a second pass that sums them into `out`
/// (adding when `add`). `inputs` are bound before the output, `after` (if any) after it.
#[allow(clippy::too_many_arguments)]
fn record_columns(
    rec: &mut Recorder,
    what: &str,
    cfg: &NormActConfig,
    op: NormActOp,
    mut p: Params,
    (chunks, chunk_rows): (usize, usize),
    quantities: u32,
    add: bool,
    inputs: &[&wgpu::Buffer],
    after: Option<&wgpu::Buffer>,
    part: Option<GpuBuffer<f32>>,
    out: Out,
) -> Result<()> {
    let n = cfg.n;
    p.chunk_rows = chunk_rows as u32;
    p.chunks = chunks as u32;
    let out3 = p.out_off3;
    if part.is_some() {
        // Partials [quantities, members, chunks, n], all members in a row.
        let per = (cfg.members * chunks * n) as u32;
        (p.out_off, p.out_off2, p.out_off3) = (0, per, 2 * per);
        p.out_member = (chunks * n) as u32;
        p.out_chunk = n as u32;
        (p.out_per, p.out_as) = (u32::MAX, 0);
    } else {
        (p.out_off, p.out_off2, p.out_as) = (out.1, out.2, out.3);
        p.out_member = n as u32;
        p.out_per = cfg.per_agent() as u32;
    }
    let tile = match op {
        NormActOp::ParamGrads { tile, .. } | NormActOp::ColumnSum { tile, .. } => tile,
        _ => ColumnTile::WIDE,
    };
    let groups = column_grid(rec, what, n, chunks, cfg.members, tile)?;
    let dst = part.as_ref().unwrap_or(out.0);
    let mut bufs = inputs.to_vec();
    bufs.push(&dst.buffer);
    bufs.extend(after);
    record_pipeline(rec, pipeline_constants(cfg, op), &bufs, &p, groups)?;
    if let Some(sb) = &part {
        record_finish(rec, what, cfg, chunks, quantities, add, sb, out, out3)?;
    }
    Ok(())
}

/// Column sums over rows: `out[e, j] += sum_r a[e, r, j]` (or `=` without
/// `cfg.accumulate`), or of `a[e, r, j] * b[e, r, j]` when `b` is given. `a` and `b` are
/// `[members, rows, n]` from their offsets, `out` is `[members, n]` from its offset: for a
/// bias gradient, `a = dh` and `out = (grads, bias offset)`.
///
/// Over 256 rows the sum runs in two passes through `scratch` ([`scratch_len`] elements with
/// 1 quantity; `None` allocates one per call). `out` and `scratch` must be other buffers than
/// the inputs. Zero rows write zeros (or add nothing).
#[allow(clippy::too_many_arguments)]
pub fn record_column_sum(
    rec: &mut Recorder,
    cfg: &ColumnSumConfig,
    rows: usize,
    a: At,
    b: Option<At>,
    out: At,
    scratch: Option<&GpuBuffer<f32>>,
) -> Result<()> {
    let what = "column sum";
    let nc = NormActConfig::new(cfg.n, Activation::Identity, false)
        .with_members(cfg.members)
        .with_agents(cfg.agents);
    nc.check()?;
    if cfg.agents > 1
        && (cfg.agent_stride < nc.per_agent() * cfg.n || u32::try_from(cfg.agent_stride).is_err())
    {
        return Err(Error::Shape(format!(
            "{what}: output agent stride {} under the {} x {} sums of an agent",
            cfg.agent_stride,
            nc.per_agent(),
            cfg.n
        )));
    }
    if rows == 0 && cfg.accumulate {
        return Ok(());
    }
    let (_, elems) = total_rows(what, &nc, rows)?;
    let (a_off, ar) = fit(what, "a", a.0, a.1, elems)?;
    let out_len = agent_extent(cfg.n, cfg.members, cfg.agents, cfg.agent_stride);
    let (out_off, _) = fit(what, "out", out.0, out.1, out_len)?;
    let outs = agent_ranges(out.1, nc.per_agent() * cfg.n, cfg.agents, cfg.agent_stride);
    let out_uses = || outs.iter().map(|r| Use::write("out", out.0, *r));
    let mut uses = vec![Use::read("a", a.0, ar)];
    uses.extend(out_uses());
    let mut p = Params {
        rows: rows as u32,
        members: cfg.members as u32,
        x_off: a_off,
        ..Default::default()
    };
    let mut b_buf = a.0;
    if let Some(b) = b {
        let (off, range) = fit(what, "b", b.0, b.1, elems)?;
        p.dy_off = off;
        b_buf = b.0;
        uses.push(Use::read("b", b.0, range));
    }
    let chunks = column_chunks(rows);
    let need = scratch_len(cfg.n, cfg.members, rows, 1);
    let part = if chunks.0 > 1 {
        let sb = scratch_buffer(rec, what, scratch, need)?;
        uses.push(Use::write("scratch", &sb, (0, need)));
        check_aliasing(what, &uses)?;
        check_aliasing(
            what,
            &std::iter::once(Use::read("scratch", &sb, (0, need)))
                .chain(out_uses())
                .collect::<Vec<_>>(),
        )?;
        Some(sb)
    } else {
        check_aliasing(what, &uses)?;
        None
    };
    let op = NormActOp::ColumnSum {
        product: b.is_some(),
        add: part.is_none() && cfg.accumulate,
        tile: cfg
            .tile
            .unwrap_or_else(|| ColumnTile::choose(rec.gpu(), chunks.0)),
    };
    let inputs = [&a.0.buffer, &b_buf.buffer];
    let out = (out.0, out_off, 0, cfg.agent_stride as u32);
    record_columns(
        rec,
        what,
        &nc,
        op,
        p,
        chunks,
        1,
        cfg.accumulate,
        &inputs,
        None,
        part,
        out,
    )
}
