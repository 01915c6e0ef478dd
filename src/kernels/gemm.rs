//! General strided batched matrix multiply (`shaders/gemm.wgsl`) for the training passes:
//! `C[b] = alpha op(A[b]) op(B[b]) (+ bias[b]) (+ C[b])`, each operand anywhere in its buffer
//! (element offset, leading dimension, batch stride).
//!
//! The backward of a linear layer `y = x W^T + b` with `x` `[m, k]`, `W` `[n, k]`:
//!
//! ```no_run
//! # fn main() -> pompc::Result<()> {
//! use pompc::kernels::gemm::{self, Gemm, Mat, Operands};
//! let gpu = pompc::Gpu::new(Default::default())?;
//! let (m, n, k) = (256, 512, 512);
//! let x = pompc::GpuBuffer::<f32>::new(&gpu, "x", m * k)?;
//! let w = pompc::GpuBuffer::<f32>::new(&gpu, "W", n * k)?;
//! let dy = pompc::GpuBuffer::<f32>::new(&gpu, "dy", m * n)?;
//! let dx = pompc::GpuBuffer::<f32>::new(&gpu, "dx", m * k)?;
//! let dw = pompc::GpuBuffer::<f32>::new(&gpu, "dW", n * k)?;
//! let mut rec = pompc::Recorder::new(&gpu);
//! // dx = dy W
//! let dx_of = Operands::new(Mat::rows(&dy, n), Mat::rows(&w, k), Mat::rows(&dx, k));
//! gemm::record(&mut rec, &Gemm::new(m, k, n), dx_of)?;
//! // dW += dy^T x
//! let op = Gemm { trans_a: true, accumulate: true, ..Gemm::new(n, k, m) };
//! let dw_of = Operands::new(Mat::rows(&dy, n), Mat::rows(&x, k), Mat::rows(&dw, k));
//! gemm::record(&mut rec, &op, dw_of)?;
//! rec.submit()?;
//! # Ok(()) }
//! ```

use super::launch::{kernel, record_pipeline};
use crate::gpu::Binding::{self, Read, ReadWrite, Uniform};
use crate::gpu::shader::Header;
use crate::gpu::{Gpu, GpuBuffer, KernelSpec, Recorder};
use crate::{Error, Result};

/// One multiply: `op(A)` is `[m, k]`, `op(B)` is `[k, n]`, `C` is `[m, n]`, `batch` times.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    /// Rows of `op(A)` and `C`.
    pub m: usize,
    /// Columns of `op(B)` and `C`.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// Read `A` transposed: `A` is stored `[k, m]`.
    pub trans_a: bool,
    /// Read `B` transposed: `B` is stored `[n, k]` (a torch `Linear.weight` for `x W^T`).
    pub trans_b: bool,
    /// Scale of the product.
    pub alpha: f32,
    /// Add into `C` instead of overwriting it (gradients summed over time steps).
    pub accumulate: bool,
    /// Independent multiplies (ensemble members), along the operands' batch strides.
    pub batch: usize,
    /// Segments of K (at least 1): `C = alpha sum_s op(A_s) op(B_s) (+ bias) (+ C)`, each
    /// `op(A_s)` `[m, k]` and `op(B_s)` `[k, n]`, segment `s` of A and B
    /// [`Mat::segment_stride`] `* s` past segment 0. An ensemble's input gradient (each
    /// member's `dY_e W_e` summed over the members) is one multiply instead of one per member.
    pub segments: usize,
    /// Agents the batch is split into (1, or a divisor of `batch`): multiply `i` is member
    /// `i % (batch / agents)` of agent `i / (batch / agents)`, and each operand steps by its
    /// batch stride per member and by its agent stride per agent. A population's weights
    /// (agent-major) and its per-agent inputs shared by an ensemble's members (batch stride
    /// 0) are both one call.
    pub agents: usize,
}

impl Gemm {
    /// `C = A B` with `A` `[m, k]` and `B` `[k, n]`, once.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Gemm {
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            accumulate: false,
            batch: 1,
            agents: 1,
            segments: 1,
        }
    }

    /// Multiplies per agent.
    pub fn per_agent(&self) -> usize {
        self.batch / self.agents.max(1)
    }

    /// Multiply-adds of the whole call.
    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k * self.batch * self.segments) as f64
    }

    /// Segment `s` of a segmented multiply as a multiply of its own (accumulating after the
    /// first), on the operands' segment `s` (the bias with the first): how a kernel without
    /// segments runs one.
    pub fn segment<'a>(&self, x: Operands<'a>, s: usize) -> (Gemm, Operands<'a>) {
        let op = Gemm {
            segments: 1,
            accumulate: self.accumulate || s > 0,
            ..*self
        };
        let at = |m: Mat<'a>| m.at(m.offset + s * m.segment_stride).segmented(0);
        let x = Operands {
            a: at(x.a),
            b: at(x.b),
            c: x.c,
            bias: x.bias.filter(|_| s == 0),
        };
        (op, x)
    }
}

/// Where a matrix sits in a buffer: element `(r, c)` of member `m` of agent `g` (batch
/// `b = g * per_agent + m`, see [`Gemm::agents`]) is at
/// `offset + g * agent_stride + m * batch_stride + r * ld + c`; with one agent, batch `b` is at
/// `offset + b * batch_stride`.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    /// The buffer.
    pub buf: &'a GpuBuffer<f32>,
    /// Element offset of `(0, 0)` of batch 0.
    pub offset: usize,
    /// Elements from one stored row to the next.
    pub ld: usize,
    /// Elements from one batch to the next (0 shares one matrix across the batch).
    pub batch_stride: usize,
    /// Elements from one agent's first batch to the next agent's (see [`Gemm::agents`]).
    pub agent_stride: usize,
    /// Elements from one K segment to the next (see [`Gemm::segments`]; A and B only).
    pub segment_stride: usize,
}

impl<'a> Mat<'a> {
    /// Rows of `ld` elements back to back from element 0, one batch.
    pub fn rows(buf: &'a GpuBuffer<f32>, ld: usize) -> Self {
        Mat {
            buf,
            offset: 0,
            ld,
            batch_stride: 0,
            agent_stride: 0,
            segment_stride: 0,
        }
    }

    /// The same, from element `offset`.
    pub fn at(mut self, offset: usize) -> Self {
        self.offset = offset;
        self
    }

    /// With a batch stride.
    pub fn batched(mut self, batch_stride: usize) -> Self {
        self.batch_stride = batch_stride;
        self
    }

    /// With an agent stride (see [`Gemm::agents`]).
    pub fn per_agent(mut self, agent_stride: usize) -> Self {
        self.agent_stride = agent_stride;
        self
    }

    /// With a K-segment stride (see [`Gemm::segments`]).
    pub fn segmented(mut self, segment_stride: usize) -> Self {
        self.segment_stride = segment_stride;
        self
    }

    /// Element offset of `(0, 0)` of the last of `op`'s multiplies (and of its last K
    /// segment when `segmented`).
    fn last(&self, op: &Gemm, segmented: bool) -> usize {
        let per = op.per_agent();
        let seg = if segmented {
            (op.segments - 1) * self.segment_stride
        } else {
            0
        };
        self.offset + (op.agents - 1) * self.agent_stride + (per - 1) * self.batch_stride + seg
    }
}

/// A bias row added to every row of `C`: element `j` of member `m` of agent `g` at
/// `offset + g * agent_stride + m * batch_stride + j` (see [`Gemm::agents`]).
#[derive(Clone, Copy, Debug)]
pub struct Bias<'a> {
    /// The buffer.
    pub buf: &'a GpuBuffer<f32>,
    /// Element offset of batch 0's bias.
    pub offset: usize,
    /// Elements from one batch's bias to the next.
    pub batch_stride: usize,
    /// Elements from one agent's bias to the next's.
    pub agent_stride: usize,
}

/// The matrices of one multiply `C = alpha op(A) op(B) (+ bias) (+ C)`, one value for every
/// GEMM entry point (f32 or tensor cores, chosen tile or not).
#[derive(Clone, Copy, Debug)]
pub struct Operands<'a> {
    /// `A`, `[m, k]` (`[k, m]` when transposed).
    pub a: Mat<'a>,
    /// `B`, `[k, n]` (`[n, k]` when transposed).
    pub b: Mat<'a>,
    /// `C`, `[m, n]`, written (or added to); on a buffer none of the others is on.
    pub c: Mat<'a>,
    /// Added to every row of `C` where given.
    pub bias: Option<Bias<'a>>,
}

impl<'a> Operands<'a> {
    /// `A`, `B` and `C`, no bias.
    pub fn new(a: Mat<'a>, b: Mat<'a>, c: Mat<'a>) -> Self {
        Operands {
            a,
            b,
            c,
            bias: None,
        }
    }
}

/// A tile shape: `bm x bn` outputs per workgroup, `tm x tn` per thread (multiples of 4),
/// `bk` deep, K split over `ks` groups of threads inside the workgroup (1, 2 or 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmTile {
    /// Tile rows.
    pub bm: u32,
    /// Tile columns.
    pub bn: u32,
    /// K-slice per step.
    pub bk: u32,
    /// Rows per thread.
    pub tm: u32,
    /// Columns per thread.
    pub tn: u32,
    /// Groups of `(bm / tm) * (bn / tn)` threads that each take every `ks`-th K-slice and
    /// merge their sums at the end (1: no split): more threads and a shorter K loop for
    /// outputs too small to fill a GPU, in one dispatch.
    pub ks: u32,
}

impl GemmTile {
    /// 128 x 128 tiles, 8 x 8 per thread (256 threads): big outputs.
    pub const HUGE: GemmTile = GemmTile {
        bm: 128,
        bn: 128,
        bk: 8,
        tm: 8,
        tn: 8,
        ks: 1,
    };
    /// 64 x 64 tiles, 4 x 4 per thread (256 threads).
    pub const LARGE: GemmTile = GemmTile {
        bm: 64,
        bn: 64,
        bk: 16,
        tm: 4,
        tn: 4,
        ks: 1,
    };
    /// 32 x 32 tiles, 4 x 4 per thread (64 threads): more workgroups for small outputs.
    pub const SMALL: GemmTile = GemmTile {
        bm: 32,
        bn: 32,
        bk: 16,
        tm: 4,
        tn: 4,
        ks: 1,
    };
    /// 64 x 64 tiles, 8 x 8 per thread (64 threads): software adapters, where each
    /// invocation is a SIMD lane of a CPU core and more work per lane amortizes the loads (as
    /// `linear::Tile::CPU`).
    pub const CPU: GemmTile = GemmTile {
        bm: 64,
        bn: 64,
        bk: 16,
        tm: 8,
        tn: 8,
        ks: 1,
    };
    /// [`GemmTile::SMALL`] with K split over two groups (128 threads).
    pub const SMALL_K2: GemmTile = GemmTile {
        ks: 2,
        ..GemmTile::SMALL
    };
    /// [`GemmTile::SMALL`] with K split over four groups (256 threads), 8-deep slices so the
    /// four groups' tiles stay within 16 KB of workgroup memory.
    pub const SMALL_K4: GemmTile = GemmTile {
        bk: 8,
        ks: 4,
        ..GemmTile::SMALL
    };
    /// Every tile (for tests and sweeps).
    pub const ALL: [GemmTile; 6] = [
        GemmTile::HUGE,
        GemmTile::LARGE,
        GemmTile::SMALL,
        GemmTile::CPU,
        GemmTile::SMALL_K2,
        GemmTile::SMALL_K4,
    ];

    /// Threads per workgroup.
    pub fn threads(&self) -> u32 {
        (self.bm / self.tm)
            .saturating_mul(self.bn / self.tn)
            .saturating_mul(self.ks)
    }

    /// `Err` unless `gpu` runs this tile as `shaders/gemm.wgsl` needs it: tm, tn in {4, 8}
    /// dividing bm, bn; each group's A and B slices whole vec4 loads per thread; ks 1, 2 or
    /// 4; the threads and the workgroup memory (the groups' tiles, or their sums being merged)
    /// within the device's limits.
    pub fn check(&self, gpu: &Gpu) -> Result<()> {
        let l = gpu.limits();
        let shape = matches!(self.tm, 4 | 8)
            && matches!(self.tn, 4 | 8)
            && self.bk > 0
            && self.bm.is_multiple_of(self.tm)
            && self.bn.is_multiple_of(self.tn)
            && matches!(self.ks, 1 | 2 | 4);
        let group = (self.bm / self.tm.max(1)) as u64 * (self.bn / self.tn.max(1)) as u64;
        let (bm, bn, bk) = (self.bm as u64, self.bn as u64, self.bk as u64);
        let loads =
            group > 0 && (bm * bk).is_multiple_of(4 * group) && (bn * bk).is_multiple_of(4 * group);
        // vec4s: each group's A and B tiles (one padding vec4 per K-row), or the sums merged.
        let tiles = self.ks as u64 * bk * (bm / 4 + 1 + bn / 4 + 1);
        let merge = (self.ks as u64 / 2) * group * (self.tm as u64 * self.tn as u64 / 4);
        let bytes = 16 * tiles.max(merge);
        let threads = group * self.ks as u64;
        let fits = threads <= l.max_compute_invocations_per_workgroup as u64
            && threads <= l.max_compute_workgroup_size_x as u64
            && bytes <= l.max_compute_workgroup_storage_size as u64;
        if shape && loads && fits {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "gemm: tile {self:?} is not supported here: tm, tn in {{4, 8}} dividing bm, bn; \
                 bm*bk and bn*bk multiples of 4 times the {group} threads of a K group; ks 1, 2 \
                 or 4; {threads} threads and {bytes} bytes of workgroup memory within the \
                 device's {} and {}",
                l.max_compute_invocations_per_workgroup, l.max_compute_workgroup_storage_size
            )))
        }
    }

    /// The tile for an output of `m x n`, `batch` times: the largest that still gives a
    /// big GPU (~130 SMs) about two workgroups per SM.
    pub fn choose(m: usize, n: usize, batch: usize) -> GemmTile {
        let tiles = |t: usize| m.div_ceil(t) * n.div_ceil(t) * batch;
        if tiles(128) >= 264 {
            GemmTile::HUGE
        } else if tiles(64) >= 200 {
            GemmTile::LARGE
        } else {
            GemmTile::SMALL
        }
    }

    /// [`GemmTile::choose`] with K split inside the workgroup where that leaves a large GPU
    /// (~130 SMs) under two workgroups per SM and K is long: [`GemmTile::SMALL_K4`] under 264
    /// tiles of 32 x 32 (a 256-row layer of 512: 128), [`GemmTile::SMALL_K2`] under 528 (768
    /// rows: 384), when K is at least 128.
    pub fn choose_split(m: usize, n: usize, k: usize, batch: usize) -> GemmTile {
        let tile = GemmTile::choose(m, n, batch);
        let tiles = m.div_ceil(32) * n.div_ceil(32) * batch;
        if tile != GemmTile::SMALL || k < 128 {
            tile
        } else if tiles < 264 {
            GemmTile::SMALL_K4
        } else if tiles < 528 {
            GemmTile::SMALL_K2
        } else {
            tile
        }
    }

    /// The tile [`record`] takes for `op` on `gpu`: [`GemmTile::choose_split`] on GPUs (the
    /// H100's 5M world-model update: 3.22 -> 2.62 ms of GPU time, the policy update 1.23 ->
    /// 1.01; BENCHMARKS.md), [`GemmTile::choose_on`] on software adapters or with
    /// `POMPC_GEMM_KSPLIT=0`.
    pub fn for_op(gpu: &Gpu, op: &Gemm) -> GemmTile {
        static SPLIT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let split =
            *SPLIT.get_or_init(|| !std::env::var("POMPC_GEMM_KSPLIT").is_ok_and(|v| v == "0"));
        if split && gpu.info().device_type != wgpu::DeviceType::Cpu {
            GemmTile::choose_split(op.m, op.n, op.k, op.batch)
        } else {
            GemmTile::choose_on(gpu, op.m, op.n, op.batch)
        }
    }

    /// [`GemmTile::choose`] on `gpu`: on software adapters [`GemmTile::CPU`] once it gives
    /// every core a few workgroups (smaller outputs keep 32 x 32 tiles, which spread over more
    /// cores).
    pub fn choose_on(gpu: &Gpu, m: usize, n: usize, batch: usize) -> GemmTile {
        if gpu.info().device_type == wgpu::DeviceType::Cpu {
            // Asked once: on Linux it reads cgroup files, too slow for every recorded GEMM.
            static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
            let cores =
                *CORES.get_or_init(|| std::thread::available_parallelism().map_or(4, |c| c.get()));
            if m.div_ceil(64) * n.div_ceil(64) * batch >= 4 * cores {
                GemmTile::CPU
            } else {
                GemmTile::SMALL
            }
        } else {
            GemmTile::choose(m, n, batch)
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    m: u32,
    n: u32,
    k: u32,
    alpha: f32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    a_off: u32,
    b_off: u32,
    c_off: u32,
    bias_off: u32,
    a_bs: u32,
    b_bs: u32,
    c_bs: u32,
    bias_bs: u32,
    segs: u32,
    // Populations (shaders/common/gemm_params.wgsl, which both GEMM shaders import).
    per_agent: u32,
    a_as: u32,
    b_as: u32,
    c_as: u32,
    bias_as: u32,
    a_ss: u32,
    b_ss: u32,
    _pad: u32,
}

/// A, B, C, the bias and the uniforms; the tensor-core GEMM binds more after them.
pub(crate) const BINDINGS: [(u32, Binding); 5] = [
    (0, Read),
    (1, Read),
    (2, ReadWrite),
    (3, Read),
    (4, Uniform),
];
const SPEC: KernelSpec = kernel("gemm", "gemm", &BINDINGS);

/// The header and override constants of one pipeline (also used by the shader test).
pub fn pipeline_constants(
    tile: GemmTile,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
    bias: bool,
) -> (KernelSpec, Header, Vec<(&'static str, f64)>) {
    let header = Header(vec![
        ("BM", tile.bm),
        ("BN", tile.bn),
        ("BK", tile.bk),
        ("TM", tile.tm),
        ("TN", tile.tn),
        ("KS", tile.ks),
    ]);
    let b = |v: bool| if v { 1.0 } else { 0.0 };
    let ov = vec![
        ("TA", b(trans_a)),
        ("TB", b(trans_b)),
        ("ACC", b(accumulate)),
        ("BIAS", b(bias)),
    ];
    (SPEC, header, ov)
}

fn u32_of(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Limit(format!("gemm: {what} = {v} over 2^32")))
}

/// Whether any two of the `rows x cols` matrices (leading dimension `ld`) starting at the
/// sorted `starts` share an element. Matrices may interleave (each agent's columns of shared
/// rows); two overlap exactly when some row of one meets some row of the other.
fn overlapping(starts: &[usize], rows: usize, cols: usize, ld: usize) -> bool {
    let extent = (rows - 1) * ld + cols;
    if starts.windows(2).all(|w| w[1] - w[0] >= extent) {
        return false;
    }
    let ld = ld.max(1) as i64;
    let (rows, cols) = (rows as i64, cols as i64);
    starts.iter().enumerate().any(|(i, &a)| {
        starts[i + 1..].iter().any(|&b| {
            // Row r1 of the first at a + r1 ld, row r2 of the second at b + r2 ld: they meet
            // when |d - k ld| < cols for k = r1 - r2 in -(rows - 1)..=rows - 1.
            let d = (b - a) as i64;
            let k = d.div_euclid(ld);
            [k, k + 1]
                .iter()
                .any(|&k| k.abs() < rows && (d - k * ld).abs() < cols)
        })
    })
}

/// Check that a `rows x cols` stored matrix fits its buffer over `op`'s multiplies and, when
/// `written`, that no two of them overlap.
fn fit(name: &str, m: &Mat, rows: usize, cols: usize, op: &Gemm, written: bool) -> Result<()> {
    if m.ld < cols && rows > 1 {
        return Err(Error::Shape(format!(
            "gemm: {name} ({:?}) rows of {cols} elements with leading dimension {}",
            m.buf.label(),
            m.ld
        )));
    }
    if written && op.batch > 1 {
        let per = op.per_agent();
        let mut starts: Vec<usize> = (0..op.batch)
            .map(|i| (i / per) * m.agent_stride + (i % per) * m.batch_stride)
            .collect();
        starts.sort_unstable();
        if overlapping(&starts, rows, cols, m.ld) {
            return Err(Error::Shape(format!(
                "gemm: written {name} ({:?}) batches of {rows} x {cols} with batch stride {} \
                 and agent stride {} would overlap",
                m.buf.label(),
                m.batch_stride,
                m.agent_stride
            )));
        }
    }
    let need = m.last(op, !written) + (rows - 1) * m.ld + cols;
    if need > m.buf.len() {
        return Err(Error::Shape(format!(
            "gemm: {name} ({:?}) holds {} elements; {} x [{rows}, {cols}] at offset {} \
             (leading dimension {}, batch stride {}, agent stride {}) needs {need}",
            m.buf.label(),
            m.buf.len(),
            op.batch,
            m.offset,
            m.ld,
            m.batch_stride,
            m.agent_stride
        )));
    }
    Ok(())
}

/// Record `C = alpha op(A) op(B) (+ bias) (+ C)`. `C` must not share a buffer with `A`, `B`
/// or the bias (a dispatch cannot read and write one buffer through two bindings).
pub fn record(rec: &mut Recorder, op: &Gemm, x: Operands) -> Result<()> {
    let tile = GemmTile::for_op(rec.gpu(), op);
    record_with_tile(rec, op, x, tile)
}

/// [`record`] with a chosen tile ([`GemmTile::check`]ed).
pub fn record_with_tile(rec: &mut Recorder, op: &Gemm, x: Operands, tile: GemmTile) -> Result<()> {
    tile.check(rec.gpu())?;
    let bias = x.bias.is_some();
    let mut constants = pipeline_constants(tile, op.trans_a, op.trans_b, op.accumulate, bias);
    if op.segments > 1 {
        constants.2.push(("SEG", 1.0));
    }
    record_tiled(rec, op, x, [tile.bm, tile.bn], constants)
}

/// What both GEMM kernels do once their tile is chosen and checked: check the operands, then
/// record the pipeline of `constants` over the `[bm, bn]` tiles of C. The spec's shader names
/// the kernel in errors; its storage bindings are A, B, C and the bias, then (the
/// tensor-core kernel's) vec4 views of A and B.
pub(crate) fn record_tiled(
    rec: &mut Recorder,
    op: &Gemm,
    x: Operands,
    [bm, bn]: [u32; 2],
    constants: (KernelSpec, Header, Vec<(&'static str, f64)>),
) -> Result<()> {
    let spec = &constants.0;
    let segmented = constants
        .2
        .iter()
        .any(|&(name, v)| name == "SEG" && v != 0.0);
    if op.segments > 1 && !segmented {
        return Err(Error::InvalidArgument(format!(
            "{}: a pipeline without K segments for {} segments",
            spec.shader, op.segments
        )));
    }
    let Some(p) = checked_params(op, &x)? else {
        return Ok(());
    };
    let Operands { a, b, c, bias } = x;
    let groups = tile_grid(rec.gpu(), spec.shader, op, bm, bn)?;
    // The bias binding needs some buffer even when unused.
    let bias_buf = bias.map_or(&a.buf.buffer, |b| &b.buf.buffer);
    let (a, b) = (&a.buf.buffer, &b.buf.buffer);
    let bufs = [a, b, &c.buf.buffer, bias_buf, a, b];
    // Every binding but the uniform one.
    let bound = spec.bindings.len() - 1;
    record_pipeline(rec, constants, &bufs[..bound], &p, groups)
}

/// The workgroups of `op` in `bm x bn` tiles (one per tile and batch), or an
/// [`Error::Limit`] where a dimension exceeds the device's limit. Shared with the
/// tensor-core GEMM.
pub(crate) fn tile_grid(gpu: &Gpu, what: &str, op: &Gemm, bm: u32, bn: u32) -> Result<[u32; 3]> {
    let gx = op.n.div_ceil(bn as usize);
    let gy = op.m.div_ceil(bm as usize);
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    if gx > max || gy > max || op.batch > max {
        return Err(Error::Limit(format!(
            "{what}: {gy}x{gx} tiles x {} batches exceed {max} workgroups per dimension",
            op.batch
        )));
    }
    Ok([gx as u32, gy as u32, op.batch as u32])
}

/// Check a multiply's operands against their buffers and pack its parameters; `None` when
/// there is nothing to do. Shared with the tensor-core GEMM, which takes the same calls.
pub(crate) fn checked_params(op: &Gemm, x: &Operands) -> Result<Option<Params>> {
    let Operands { a, b, c, bias } = x;
    if op.agents == 0 || !op.batch.is_multiple_of(op.agents) {
        return Err(Error::InvalidArgument(format!(
            "gemm: {} multiplies do not split into {} agents",
            op.batch, op.agents
        )));
    }
    if op.segments == 0 {
        return Err(Error::InvalidArgument(
            "gemm: 0 K segments (1 is a plain multiply)".into(),
        ));
    }
    if op.m == 0 || op.n == 0 || op.batch == 0 {
        return Ok(None);
    }
    let (ar, ac) = if op.trans_a {
        (op.k, op.m)
    } else {
        (op.m, op.k)
    };
    let (br, bc) = if op.trans_b {
        (op.n, op.k)
    } else {
        (op.k, op.n)
    };
    if op.k > 0 {
        fit("A", a, ar, ac, op, false)?;
        fit("B", b, br, bc, op, false)?;
    }
    fit("C", c, op.m, op.n, op, true)?;
    let same = |x: &GpuBuffer<f32>| x.buffer == c.buf.buffer;
    if same(a.buf) || same(b.buf) || bias.is_some_and(|bi| same(bi.buf)) {
        return Err(Error::InvalidArgument(format!(
            "gemm: the output {:?} is also an input",
            c.buf.label()
        )));
    }
    if let Some(bi) = &bias {
        let per = op.per_agent();
        let need =
            bi.offset + (op.agents - 1) * bi.agent_stride + (per - 1) * bi.batch_stride + op.n;
        if need > bi.buf.len() {
            return Err(Error::Shape(format!(
                "gemm: bias ({:?}) holds {} elements, {} x {} at offset {} (batch stride {}, \
                 agent stride {}) need {need}",
                bi.buf.label(),
                bi.buf.len(),
                op.batch,
                op.n,
                bi.offset,
                bi.batch_stride,
                bi.agent_stride
            )));
        }
    }
    if !op.alpha.is_finite() {
        return Err(Error::InvalidArgument(format!(
            "gemm: alpha {} is not finite",
            op.alpha
        )));
    }
    // The shader's K loop runs over every segment.
    u32_of("k x segments", op.k.saturating_mul(op.segments))?;
    Ok(Some(Params {
        m: u32_of("m", op.m)?,
        n: u32_of("n", op.n)?,
        k: u32_of("k", op.k)?,
        alpha: op.alpha,
        lda: u32_of("lda", a.ld)?,
        ldb: u32_of("ldb", b.ld)?,
        ldc: u32_of("ldc", c.ld)?,
        a_off: u32_of("A offset", a.offset)?,
        b_off: u32_of("B offset", b.offset)?,
        c_off: u32_of("C offset", c.offset)?,
        bias_off: u32_of("bias offset", bias.map_or(0, |b| b.offset))?,
        a_bs: u32_of("A batch stride", a.batch_stride)?,
        b_bs: u32_of("B batch stride", b.batch_stride)?,
        c_bs: u32_of("C batch stride", c.batch_stride)?,
        bias_bs: u32_of("bias batch stride", bias.map_or(0, |b| b.batch_stride))?,
        segs: u32_of("K segments", op.segments)?,
        per_agent: u32_of("multiplies per agent", op.per_agent())?,
        a_as: u32_of("A agent stride", a.agent_stride)?,
        b_as: u32_of("B agent stride", b.agent_stride)?,
        c_as: u32_of("C agent stride", c.agent_stride)?,
        bias_as: u32_of("bias agent stride", bias.map_or(0, |b| b.agent_stride))?,
        a_ss: u32_of("A segment stride", a.segment_stride)?,
        b_ss: u32_of("B segment stride", b.segment_stride)?,
        _pad: 0,
    }))
}
