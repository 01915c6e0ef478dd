//! The fused batched linear layer (`shaders/linear.wgsl`):
//! `Y[e, m, :] = act(LN([Z | A][e, m, :] W[e]^T + b[e]))`.
//!
//! Two kernels compute the matrix product, chosen per call by the layer's [`Precision`]:
//! - the ALU kernel (`linear.wgsl`'s `gemm`): f32 multiply-adds, tiles of [`Tile`], K split
//!   over workgroups when the output is small;
//! - with [`Precision::TensorCore`], where the device has cooperative matrices and the call is
//!   large enough ([`TENSOR_CORE_MIN_MACS`] multiply-adds, 16 rows), the tensor-core kernel
//!   (`linear_coop.wgsl`): X and W rounded to f16 as they are staged, f32 sums, tiles of
//!   [`CoopTile`].
//!
//! Either writes the biased, activated output directly, or raw sums that `linear.wgsl`'s
//! `epilogue` finishes in f32 (bias, LayerNorm, activation, split-K sums). Z, W and Y may be
//! stored in f16 ([`Element`]: `half::f16`, needs shader-f16), which is how the world model's
//! [`Precision::F16`] and [`Precision::TensorCore`] keep weights and hidden activations; all
//! arithmetic is f32 except the tensor-core products.

use super::gemm_coop::CoopTile;
use super::launch::{extend_bindings, kernel};
use crate::gpu::Binding::{self, Read, ReadWrite, Uniform};
use crate::gpu::shader::Header;
use crate::gpu::{Gpu, GpuBuffer, KernelSpec, Pipeline, Precision, Recorder};
use crate::{Error, Result};
use std::sync::{Arc, Mutex};

/// Element types a linear layer can store Z, W and Y in: `f32`, or `half::f16` where the
/// device has shader-f16.
pub trait Element: bytemuck::Pod + std::fmt::Debug + private::Sealed {
    /// Whether this is f16.
    const F16: bool;
}

impl Element for f32 {
    const F16: bool = false;
}

impl Element for half::f16 {
    const F16: bool = true;
}

mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
}

/// Element types of one call: which of Z, W and Y are stored in f16.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Storage {
    /// Z (the first input) in f16.
    pub x16: bool,
    /// W in f16.
    pub w16: bool,
    /// Y in f16.
    pub y16: bool,
}

impl Storage {
    /// Everything f32.
    pub const F32: Storage = Storage {
        x16: false,
        w16: false,
        y16: false,
    };

    fn any(&self) -> bool {
        self.x16 || self.w16 || self.y16
    }
}

/// Smallest call, in multiply-adds (`m * n * k * slots`), that [`Precision::TensorCore`] runs
/// on tensor cores; smaller ones (a single environment's encoder pass) run on the ALU kernel,
/// where a 16x16 fragment would be mostly padding and one dispatch of either is latency-bound.
pub const TENSOR_CORE_MIN_MACS: usize = 1 << 22;

/// How a tensor-core call is carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoopPlan {
    /// Tile.
    pub tile: CoopTile,
    /// Parts K is split into (partial sums reduced by the epilogue).
    pub split: u32,
}

/// The kernel one call uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinearKernel {
    /// f32 multiply-adds (`linear.wgsl`).
    Alu(LinearPlan),
    /// Cooperative matrices (`linear_coop.wgsl`).
    TensorCore(CoopPlan),
}

impl LinearKernel {
    fn split(&self) -> u32 {
        match self {
            LinearKernel::Alu(p) => p.split,
            LinearKernel::TensorCore(p) => p.split,
        }
    }
}

impl std::fmt::Display for LinearKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinearKernel::Alu(p) => write!(f, "{}/{}", p.tile, p.split),
            LinearKernel::TensorCore(p) => write!(f, "tc {}/{}", p.tile, p.split),
        }
    }
}

/// Activation applied after the optional LayerNorm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// None.
    Identity,
    /// `x * tanh(softplus(x))`.
    Mish,
    /// Softmax over consecutive groups of 8 features (TD-MPC2's SimNorm); needs N % 8 == 0.
    SimNorm,
}

impl Activation {
    fn code(self) -> u32 {
        match self {
            Activation::Identity => 0,
            Activation::Mish => 1,
            Activation::SimNorm => 2,
        }
    }

    /// Every activation, for tests and benchmarks.
    pub const ALL: [Activation; 3] = [Activation::Identity, Activation::Mish, Activation::SimNorm];
}

/// A workgroup tile of the GEMM: `bm x bn` outputs per workgroup, `tm x tn` per thread,
/// K consumed `bk` at a time through workgroup memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    /// Rows per workgroup.
    pub bm: u32,
    /// Columns per workgroup.
    pub bn: u32,
    /// K-slice per step.
    pub bk: u32,
    /// Rows per thread (4 or 8).
    pub tm: u32,
    /// Columns per thread (4 or 8).
    pub tn: u32,
}

impl Tile {
    /// 128 x 128 x 8, 8 x 8 per thread, 256 threads: large problems.
    pub const LARGE: Tile = Tile {
        bm: 128,
        bn: 128,
        bk: 8,
        tm: 8,
        tn: 8,
    };
    /// 64 x 64 x 16, 4 x 4 per thread, 256 threads.
    pub const MEDIUM: Tile = Tile {
        bm: 64,
        bn: 64,
        bk: 16,
        tm: 4,
        tn: 4,
    };
    /// 32 x 32 x 32, 4 x 4 per thread, 64 threads: small problems, many workgroups, few
    /// K-steps (each step pays a barrier and a memory latency).
    pub const SMALL: Tile = Tile {
        bm: 32,
        bn: 32,
        bk: 32,
        tm: 4,
        tn: 4,
    };
    /// 64 x 64 x 16, 8 x 8 per thread, 64 threads: software adapters (lavapipe runs it 1.8x
    /// faster than MEDIUM at 512 x 550 x 512: each invocation is a SIMD lane of a CPU core,
    /// and more work per lane amortizes the loads).
    pub const CPU: Tile = Tile {
        bm: 64,
        bn: 64,
        bk: 16,
        tm: 8,
        tn: 8,
    };
    /// The tiles the heuristic picks from.
    pub const ALL: [Tile; 4] = [Tile::LARGE, Tile::MEDIUM, Tile::SMALL, Tile::CPU];
    /// More shapes that `pompc bench linear --sweep` tries (the shader test builds them all).
    pub const SWEEP: [Tile; 8] = [
        Tile {
            bm: 64,
            bn: 64,
            bk: 32,
            tm: 4,
            tn: 4,
        },
        Tile {
            bm: 32,
            bn: 32,
            bk: 16,
            tm: 4,
            tn: 4,
        },
        Tile {
            bm: 64,
            bn: 64,
            bk: 16,
            tm: 8,
            tn: 8,
        },
        Tile {
            bm: 64,
            bn: 64,
            bk: 32,
            tm: 8,
            tn: 8,
        },
        Tile {
            bm: 32,
            bn: 64,
            bk: 32,
            tm: 4,
            tn: 8,
        },
        Tile {
            bm: 64,
            bn: 32,
            bk: 32,
            tm: 8,
            tn: 4,
        },
        Tile {
            bm: 128,
            bn: 64,
            bk: 16,
            tm: 8,
            tn: 8,
        },
        Tile {
            bm: 128,
            bn: 128,
            bk: 16,
            tm: 8,
            tn: 8,
        },
    ];

    /// Threads per workgroup.
    pub fn threads(&self) -> u32 {
        (self.bm / self.tm) * (self.bn / self.tn)
    }

    /// Check that the kernel can run this tile on `gpu`.
    pub fn check(&self, gpu: &Gpu) -> Result<()> {
        let wg = self.threads();
        let smem = 4 * self.bk * (self.bm + self.bn + 8);
        let l = gpu.limits();
        let ok = matches!(self.tm, 4 | 8)
            && matches!(self.tn, 4 | 8)
            && self.bm.is_multiple_of(self.tm)
            && self.bn.is_multiple_of(self.tn)
            && wg > 0
            && (self.bm * self.bk).is_multiple_of(4 * wg)
            && (self.bn * self.bk).is_multiple_of(4 * wg)
            && wg <= l.max_compute_invocations_per_workgroup
            && smem <= l.max_compute_workgroup_storage_size;
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "tile {self:?} is not supported: tm, tn in {{4, 8}}, bm*bk and bn*bk multiples \
                 of 4 times the {wg} threads, {smem} bytes of workgroup memory"
            )))
        }
    }
}

impl std::fmt::Display for Tile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}x{}x{}/{}x{}",
            self.bm, self.bn, self.bk, self.tm, self.tn
        )
    }
}

/// The shape and options of one linear layer (or an ensemble of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinearConfig {
    /// Output features.
    pub n: usize,
    /// Input features in total (`k1` from Z plus `k - k1` from A).
    pub k: usize,
    /// Input features taken from the first input buffer; `k` when there is no concatenation.
    pub k1: usize,
    /// Independent weight sets run in one dispatch.
    pub members: usize,
    /// Whether the members read the same input rows (the first layer of a Q ensemble): all
    /// of them, or those of one agent where [`LinearInputs::input_groups`] splits the weight
    /// sets into a population's agents.
    pub shared_input: bool,
    /// LayerNorm (affine, eps 1e-5) before the activation.
    pub layer_norm: bool,
    /// Activation.
    pub act: Activation,
}

impl LinearConfig {
    /// A plain layer `k -> n`.
    pub fn new(k: usize, n: usize) -> Self {
        LinearConfig {
            n,
            k,
            k1: k,
            members: 1,
            shared_input: true,
            layer_norm: false,
            act: Activation::Identity,
        }
    }

    /// With LayerNorm.
    pub fn with_ln(mut self) -> Self {
        self.layer_norm = true;
        self
    }

    /// With an activation.
    pub fn with_act(mut self, act: Activation) -> Self {
        self.act = act;
        self
    }

    /// With the input split as `[Z (k1 features) | A (k - k1 features)]`.
    pub fn with_concat(mut self, k1: usize) -> Self {
        self.k1 = k1;
        self
    }

    /// As an ensemble of `members` weight sets; `shared_input` if all read the same rows.
    pub fn with_members(mut self, members: usize, shared_input: bool) -> Self {
        self.members = members;
        self.shared_input = shared_input;
        self
    }

    /// Floating-point operations for `m` rows (2 per multiply-add).
    pub fn flops(&self, m: usize) -> f64 {
        2.0 * (m * self.n * self.k * self.members) as f64
    }

    fn check(&self) -> Result<()> {
        if self.n == 0 || self.k == 0 || self.members == 0 {
            return Err(Error::Shape(format!(
                "linear layer with a zero size: {self:?}"
            )));
        }
        if self.k1 > self.k {
            return Err(Error::Shape(format!(
                "concatenated input: k1 = {} > k = {}",
                self.k1, self.k
            )));
        }
        if self.act == Activation::SimNorm && !self.n.is_multiple_of(8) {
            return Err(Error::Shape(format!(
                "SimNorm needs the output width to be a multiple of 8, got {}",
                self.n
            )));
        }
        Ok(())
    }
}

/// The buffers of one call. Z, W and Y are f32 unless given as f16 buffers ([`Element`]).
#[derive(Debug)]
pub struct LinearInputs<'a, X: Element = f32, W: Element = f32, Y: Element = f32> {
    /// Z: `[blocks, m, k1]`: a block per output slot, or per input group where the layer
    /// shares its input (see [`LinearInputs::input_groups`]).
    pub z: &'a GpuBuffer<X>,
    /// A: `[blocks, m, k - k1]`; needed when `k1 < k`.
    pub a: Option<&'a GpuBuffer<f32>>,
    /// Weights `[members, n, k]` (row-major, as torch's `nn.Linear.weight`).
    pub w: &'a GpuBuffer<W>,
    /// Bias `[members, n]`.
    pub b: &'a GpuBuffer<f32>,
    /// LayerNorm gain and shift `[members, n]` each, when the layer has LayerNorm.
    pub ln: Option<(&'a GpuBuffer<f32>, &'a GpuBuffer<f32>)>,
    /// Output `[slots, m, n]` where slots is `members`, or `heads.len()` with a head map.
    pub y: &'a GpuBuffer<Y>,
    /// Evaluate only some weight sets: output slot `i` uses weight set `heads[i]` (values
    /// clamped to `members - 1`). The values may be written on the GPU (a random choice of
    /// Q heads), so no host round-trip is needed to pick them.
    pub heads: Option<&'a GpuBuffer<u32>>,
    /// Element offset of row 0 in `z` (0 for a whole buffer).
    pub z_offset: usize,
    /// Element offset of row 0 in `a`: e.g. time step t of actions stored `[T, rows, A]`.
    pub a_offset: usize,
    /// 0, or `g`: Z holds `g` distinct rows and row `r` of X is `[Z[r % g], A[r]]` (the
    /// planner's first step, where every sample of an environment starts from its latent).
    /// The layer then sums `Z W^T` once per distinct row and `A W^T` per row. Needs a
    /// concatenated input and one weight set.
    pub z_repeat: usize,
    /// Input blocks of a layer that shares its input among members
    /// ([`LinearConfig::shared_input`]): the output slots split into this many consecutive
    /// groups (the agents of a population, each evaluating its own members or chosen heads)
    /// and group `i` reads block `i` of Z and A. 1 (all slots read block 0) unless a
    /// population's weight sets are stacked agent by agent. Without a shared input every slot
    /// reads its own block and this is ignored.
    pub input_groups: usize,
    /// Elements between consecutive input blocks of Z and of A; `None`: blocks back to back
    /// (`m * k1` and `m * (k - k1)`). A population's rows of one time step, stored
    /// `[T, agents, rows, A]` or as a prefix of each agent's rows, need explicit strides.
    pub input_strides: Option<(usize, usize)>,
}

impl<X: Element, W: Element, Y: Element> Clone for LinearInputs<'_, X, W, Y> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<X: Element, W: Element, Y: Element> Copy for LinearInputs<'_, X, W, Y> {}

impl<'a, X: Element, W: Element, Y: Element> LinearInputs<'a, X, W, Y> {
    /// Inputs of a plain layer `y = act(LN(z W^T + b))`, reading whole buffers.
    pub fn new(
        z: &'a GpuBuffer<X>,
        w: &'a GpuBuffer<W>,
        b: &'a GpuBuffer<f32>,
        y: &'a GpuBuffer<Y>,
    ) -> Self {
        LinearInputs {
            z,
            a: None,
            w,
            b,
            ln: None,
            y,
            heads: None,
            z_offset: 0,
            a_offset: 0,
            z_repeat: 0,
            input_groups: 1,
            input_strides: None,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    xz_stride: u32,
    xa_stride: u32,
    members: u32,
    sets: u32,
    xz_offset: u32,
    xa_offset: u32,
    pre_rows: u32,
    in_group: u32,
    _pad: [u32; 3],
}

const BINDINGS: [(u32, Binding); 7] = [
    (0, Read),
    (1, Read),
    (2, Read),
    (3, Read),
    (4, ReadWrite),
    (5, Uniform),
    (9, Read),
];
const GEMM: KernelSpec = kernel("linear", "gemm", &BINDINGS);
/// The ALU kernel's bindings, then 10 and 11 view Z and W as vec4, 12 W as vec2 (vector
/// loads of whole chunks).
const COOP: KernelSpec = kernel(
    "linear_coop",
    "gemm",
    &extend_bindings::<7, 10>(&BINDINGS, &[(10, Read), (11, Read), (12, Read)]),
);
const EPILOGUE: KernelSpec = kernel(
    "linear",
    "epilogue",
    &[
        (3, Read),
        (4, ReadWrite),
        (5, Uniform),
        (6, Read),
        (7, Read),
        (8, Read),
        (9, Read),
        (13, Read),
    ],
);

/// How a call is carried out: the tile and the number of K-splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinearPlan {
    /// GEMM tile.
    pub tile: Tile,
    /// Parts K is split into (partial sums reduced by the epilogue).
    pub split: u32,
}

/// The header and override constants of one pipeline of the f32 ALU kernel: exactly what the
/// code builds, so the shader test can validate every combination.
pub fn pipeline_constants(
    cfg: &LinearConfig,
    plan: LinearPlan,
    epilogue: bool,
    head_map: bool,
) -> (KernelSpec, Header, Vec<(&'static str, f64)>) {
    pipeline_constants_for(
        cfg,
        LinearKernel::Alu(plan),
        epilogue,
        head_map,
        Storage::F32,
        0,
    )
}

/// The header and override constants of one pipeline for any kernel and storage; `sg` is
/// the subgroup size of the tensor-core kernel (unused otherwise). For the GEMM pipeline
/// `storage.y16` describes the buffer the GEMM writes: f32 scratch when the epilogue reads
/// raw sums from it.
pub fn pipeline_constants_for(
    cfg: &LinearConfig,
    kernel: LinearKernel,
    epilogue: bool,
    head_map: bool,
    storage: Storage,
    sg: u32,
) -> (KernelSpec, Header, Vec<(&'static str, f64)>) {
    // The epilogue holds a whole row, EW threads times ROW_CAP / EW registers (and for
    // SimNorm in workgroup memory); other entries need only a valid size. A multiple of 64
    // suits every EpilogueShape.
    let row_cap = if epilogue {
        cfg.n.div_ceil(64) * 64
    } else {
        64
    } as u32;
    let flags = [
        ("F16", storage.any() as u32),
        ("F16_X", storage.x16 as u32),
        ("F16_W", storage.w16 as u32),
        ("F16_Y", storage.y16 as u32),
    ];
    let split = kernel.split();
    let fused = !needs_epilogue(cfg, split);
    let mut ov: Vec<(&'static str, f64)> = vec![
        ("N", cfg.n as f64),
        ("K", cfg.k as f64),
        ("K1", cfg.k1 as f64),
        ("SPLIT", split as f64),
        ("ACT", cfg.act.code() as f64),
        ("HEAD_MAP", head_map as u32 as f64),
    ];
    // The epilogue's module is linear.wgsl whatever computed the product: any ALU tile
    // compiles it.
    let alu_tile = match kernel {
        LinearKernel::Alu(p) => p.tile,
        LinearKernel::TensorCore(_) => Tile::SMALL,
    };
    if epilogue || matches!(kernel, LinearKernel::Alu(_)) {
        let Tile { bm, bn, bk, tm, tn } = alu_tile;
        let mut h = vec![
            ("BM", bm),
            ("BN", bn),
            ("BK", bk),
            ("TM", tm),
            ("TN", tn),
            ("ROW_CAP", row_cap),
            ("RPT", 1),
            ("EW", 64),
        ];
        h.extend(flags);
        if epilogue {
            ov.push(("LN", cfg.layer_norm as u32 as f64));
            // Split parts are in scratch; Linear::record also sends raw sums there for an
            // f16 output at f16 precision.
            ov.push(("PART", (split > 1) as u32 as f64));
            return (EPILOGUE, Header(h), ov);
        }
        ov.push(("RAW", (!fused) as u32 as f64));
        return (GEMM, Header(h), ov);
    }
    let LinearKernel::TensorCore(p) = kernel else {
        unreachable!("ALU kernels returned above")
    };
    let mut h = p.tile.header(sg);
    h.extend(flags);
    ov.push(("RAW", (!fused) as u32 as f64));
    (COOP, Header(h), ov)
}

fn needs_epilogue(cfg: &LinearConfig, split: u32) -> bool {
    cfg.layer_norm || cfg.act == Activation::SimNorm || split > 1
}

/// The shortest part of K a split may leave and the most parts: 128 and 8, tuned on the H100
/// for the wide layers. `POMPC_LINEAR_KPART=n` (a power of two from 16) lets narrow layers
/// with few workgroups (the policy's 12-wide head over 512 inputs) split further, up to 32
/// parts: for timing, not yet a default.
fn k_split_limits() -> (usize, usize) {
    static LIMITS: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    *LIMITS.get_or_init(|| {
        match std::env::var("POMPC_LINEAR_KPART")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            Some(n) if n.is_power_of_two() && (16..128).contains(&n) => (n, 32),
            _ => (128, 8),
        }
    })
}

/// A linear layer ready to record: validated shape, cached pipelines, split-K scratch.
///
/// ```no_run
/// # fn main() -> pompc::Result<()> {
/// use pompc::kernels::linear::{Activation, Linear, LinearConfig, LinearInputs};
/// let gpu = pompc::Gpu::new(Default::default())?;
/// let cfg = LinearConfig::new(512, 512).with_ln().with_act(Activation::Mish);
/// let layer = Linear::new(&gpu, cfg)?;
/// let (m, x) = (256, pompc::GpuBuffer::<f32>::new(&gpu, "x", 256 * 512)?);
/// let w = pompc::GpuBuffer::<f32>::new(&gpu, "w", 512 * 512)?;
/// let b = pompc::GpuBuffer::<f32>::new(&gpu, "b", 512)?;
/// let (g, beta) = (b.clone(), b.clone());
/// let y = pompc::GpuBuffer::<f32>::new(&gpu, "y", m * 512)?;
/// let mut rec = pompc::Recorder::new(&gpu);
/// layer.record(&mut rec, m, LinearInputs { z: &x, a: None, w: &w, b: &b, ln: Some((&g, &beta)), y: &y, heads: None, z_offset: 0, a_offset: 0, z_repeat: 0, input_groups: 1, input_strides: None })?;
/// rec.submit()?;
/// # Ok(()) }
/// ```
pub struct Linear {
    cfg: LinearConfig,
    scratch: Mutex<Option<GpuBuffer<f32>>>,
    // The Z part of repeated-Z calls.
    pre_scratch: Mutex<Option<GpuBuffer<f32>>>,
    forced: Option<LinearPlan>,
    forced_coop: Option<CoopPlan>,
    precision: Precision,
}

impl Linear {
    /// Validate the configuration.
    pub fn new(gpu: &Gpu, cfg: LinearConfig) -> Result<Self> {
        cfg.check()?;
        if needs_row_cap(&cfg) * 4 + 256 > gpu.limits().max_compute_workgroup_storage_size as usize
        {
            return Err(Error::Limit(format!(
                "a row of {} features does not fit the device's {} bytes of workgroup memory",
                cfg.n,
                gpu.limits().max_compute_workgroup_storage_size
            )));
        }
        Ok(Linear {
            cfg,
            scratch: Mutex::new(None),
            pre_scratch: Mutex::new(None),
            forced: None,
            forced_coop: None,
            precision: gpu.precision(),
        })
    }

    /// Use `precision`'s kernels instead of the device's default ([`Gpu::precision`]);
    /// [`Error::Unsupported`] if the device lacks what it needs. (Storage follows the
    /// buffers given to [`Linear::record`]; here only [`Precision::TensorCore`] differs.)
    pub fn with_precision(mut self, gpu: &Gpu, precision: Precision) -> Result<Self> {
        gpu.supports(precision)?;
        self.precision = precision;
        Ok(self)
    }

    /// The precision the layer runs at.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// With [`Precision::TensorCore`], run every call on tensor cores with this tile and split
    /// (benchmarks and tests); `None` restores the heuristic.
    pub fn with_coop_plan(mut self, plan: Option<CoopPlan>) -> Self {
        self.forced_coop = plan;
        self
    }

    /// Always use this tile and split (benchmarks and tests); `None` restores the heuristic.
    pub fn with_plan(mut self, plan: Option<LinearPlan>) -> Self {
        self.forced = plan;
        self
    }

    /// The layer's configuration.
    pub fn config(&self) -> &LinearConfig {
        &self.cfg
    }

    /// The tile and split used for `m` rows of every weight set on a GPU.
    pub fn plan(&self, m: usize) -> LinearPlan {
        self.plan_for(m, self.cfg.members, false)
    }

    /// The tile and split that [`Linear::record`] uses for `m` rows on `gpu`.
    pub fn plan_on(&self, gpu: &Gpu, m: usize) -> LinearPlan {
        let cpu = gpu.info().device_type == wgpu::DeviceType::Cpu;
        self.plan_for(m, self.cfg.members, cpu)
    }

    fn plan_for(&self, m: usize, slots: usize, cpu: bool) -> LinearPlan {
        if let Some(p) = self.forced {
            return p;
        }
        if cpu {
            return LinearPlan {
                tile: Tile::CPU,
                split: 1,
            };
        }
        let cfg = &self.cfg;
        let tiles = |t: Tile| m.div_ceil(t.bm as usize) * cfg.n.div_ceil(t.bn as usize) * slots;
        // Tuned on the H100 (132 SMs, BENCHMARKS.md): big tiles once they make two waves,
        // otherwise 64x64 tiles with K split until about 300 workgroups are in flight.
        let tile = if tiles(Tile::LARGE) >= 256 {
            Tile::LARGE
        } else if tiles(Tile::MEDIUM) >= 48 {
            Tile::MEDIUM
        } else {
            Tile::SMALL
        };
        let t = tiles(tile);
        let (k_part, max_split) = k_split_limits();
        let mut split = 1;
        while t * split * 2 <= 320 && cfg.k / (split * 2) >= k_part && split < max_split {
            split *= 2;
        }
        LinearPlan {
            tile,
            split: split as u32,
        }
    }

    /// The kernel that [`Linear::record`] uses for `m` rows into `slots` output slots on
    /// `gpu`.
    pub fn kernel_on(&self, gpu: &Gpu, m: usize, slots: usize) -> LinearKernel {
        let cfg = &self.cfg;
        if self.precision == Precision::TensorCore
            && gpu.tensor_cores().is_ok()
            && (self.forced_coop.is_some()
                || (m >= 16 && m * cfg.n * cfg.k * slots >= TENSOR_CORE_MIN_MACS))
        {
            if let Some(p) = self.forced_coop {
                return LinearKernel::TensorCore(p);
            }
            let sg = gpu.tensor_cores().unwrap_or(32);
            let tile = CoopTile::choose_on(gpu, sg, m, cfg.n, slots);
            let t = m.div_ceil(tile.bm as usize) * cfg.n.div_ceil(tile.bn as usize) * slots;
            let (k_part, max_split) = k_split_limits();
            let mut split = 1;
            while t * split * 2 <= 264 && cfg.k / (split * 2) >= k_part && split < max_split {
                split *= 2;
            }
            return LinearKernel::TensorCore(CoopPlan {
                tile,
                split: split as u32,
            });
        }
        LinearKernel::Alu(self.plan_for(m, slots, cpu_adapter(gpu)))
    }

    /// Record the layer for `m` rows into `rec`.
    pub fn record<X: Element, W: Element, Y: Element>(
        &self,
        rec: &mut Recorder,
        m: usize,
        io: LinearInputs<X, W, Y>,
    ) -> Result<()> {
        let gpu = rec.gpu();
        let storage = Storage {
            x16: X::F16,
            w16: W::F16,
            y16: Y::F16,
        };
        if storage.any() && !gpu.features().shader_f16 {
            return Err(Error::Unsupported(format!(
                "f16 buffers need shader-f16, which {} lacks",
                gpu.info().name
            )));
        }
        let cfg = &self.cfg;
        let sets = cfg.members;
        let e = io.heads.map_or(sets, |h| h.len());
        if e == 0 {
            return Err(Error::Shape("an empty head map evaluates nothing".into()));
        }
        // Input blocks, and output slots per block.
        let (blocks, in_group) = if cfg.shared_input {
            let g = io.input_groups;
            if g == 0 || !e.is_multiple_of(g) {
                return Err(Error::InvalidArgument(format!(
                    "linear {}x{}: {e} output slots do not split into {g} input groups",
                    cfg.k, cfg.n
                )));
            }
            (g, e / g)
        } else {
            (e, 1)
        };
        let k2 = cfg.k - cfg.k1;
        let expect = |name: &str, got: usize, want: usize| {
            if got < want {
                Err(Error::Shape(format!(
                    "linear {}x{} ({sets} weight sets, {e} evaluated): {name} holds {got} \
                     elements, needs {want}",
                    cfg.k, cfg.n
                )))
            } else {
                Ok(())
            }
        };
        if m == 0 {
            return Ok(());
        }
        let repeat = io.z_repeat;
        if repeat > 0 && (k2 == 0 || sets != 1 || io.heads.is_some()) {
            return Err(Error::InvalidArgument(format!(
                "linear {}x{}: repeated Z rows need a concatenated input [Z, A] and one weight \
                 set (k1 {}, {sets} sets{})",
                cfg.k,
                cfg.n,
                cfg.k1,
                if io.heads.is_some() {
                    ", a head map"
                } else {
                    ""
                }
            )));
        }
        let z_rows = if repeat > 0 { repeat.min(m) } else { m };
        let (z_stride, a_stride) = match io.input_strides {
            _ if blocks == 1 => (0, 0),
            Some(s) => s,
            None => (z_rows * cfg.k1, m * k2),
        };
        // The last block's end: where the buffers must reach.
        let block_end = |stride: usize, len: usize| {
            (blocks - 1)
                .checked_mul(stride)
                .and_then(|v| v.checked_add(len))
                .ok_or_else(|| Error::Limit(format!("{blocks} input blocks overflow")))
        };
        expect(
            "Z",
            io.z.len(),
            io.z_offset + block_end(z_stride, z_rows * cfg.k1)?,
        )?;
        let a = match (k2, io.a) {
            (0, _) => &io.z.buffer,
            (_, Some(a)) => {
                expect("A", a.len(), io.a_offset + block_end(a_stride, m * k2)?)?;
                &a.buffer
            }
            (_, None) => {
                return Err(Error::Shape(format!(
                    "linear layer concatenates {k2} features from a second input, none given"
                )));
            }
        };
        expect("W", io.w.len(), sets * cfg.n * cfg.k)?;
        expect("b", io.b.len(), sets * cfg.n)?;
        expect("Y", io.y.len(), e * m * cfg.n)?;
        let (gamma, beta) = match (cfg.layer_norm, io.ln) {
            (true, Some((g, b))) => {
                expect("LayerNorm gain", g.len(), sets * cfg.n)?;
                expect("LayerNorm shift", b.len(), sets * cfg.n)?;
                (g, b)
            }
            (true, None) => {
                return Err(Error::Shape(
                    "linear layer with LayerNorm needs its gain and shift".into(),
                ));
            }
            (false, _) => (io.b, io.b),
        };
        if m > u32::MAX as usize / cfg.n.max(cfg.k)
            || io.z.len().max(io.a.map_or(0, |a| a.len())) > u32::MAX as usize
        {
            return Err(Error::Limit(format!("{m} rows overflow 32-bit indexing")));
        }
        // Repeated Z: one K-part, so that the epilogue adds the Z part to a single sum.
        let one_part = |k: LinearKernel| match k {
            LinearKernel::Alu(p) => LinearKernel::Alu(LinearPlan { split: 1, ..p }),
            LinearKernel::TensorCore(p) => LinearKernel::TensorCore(CoopPlan { split: 1, ..p }),
        };
        let mut kernel = self.kernel_on(gpu, m, e);
        if repeat > 0 {
            // The per-row A part has a handful of columns: writing its sums is the whole cost.
            // H100, the planner's 131072 x 512 x 6: the ALU kernel took 179 us; XLARGE about
            // 265 (estimated from the profile's mean over the layers sharing its launch shape).
            kernel = match kernel {
                LinearKernel::TensorCore(_) if self.forced_coop.is_none() => {
                    one_part(LinearKernel::Alu(self.plan_for(m, e, cpu_adapter(gpu))))
                }
                k => one_part(k),
            };
        }
        let split = kernel.split();
        if split == 0 {
            return Err(Error::InvalidArgument("K split of 0".into()));
        }
        let tile_of = |kernel: LinearKernel| -> Result<(u32, u32, u32)> {
            Ok(match kernel {
                LinearKernel::Alu(p) => {
                    p.tile.check(gpu)?;
                    (p.tile.bm, p.tile.bn, 0)
                }
                LinearKernel::TensorCore(p) => {
                    let sg = gpu.tensor_cores()?;
                    p.tile.check(gpu, sg)?;
                    (p.tile.bm, p.tile.bn, sg)
                }
            })
        };
        let (bm, bn, sg) = tile_of(kernel)?;
        let params = Params {
            m: m as u32,
            xz_stride: z_stride as u32,
            xa_stride: a_stride as u32,
            members: e as u32,
            sets: sets as u32,
            xz_offset: io.z_offset as u32,
            xa_offset: io.a_offset as u32,
            pre_rows: repeat as u32,
            in_group: in_group as u32,
            _pad: [0; 3],
        };
        // Without a head map the binding gets any buffer; the kernel never reads it.
        let heads = io.heads.map_or(&io.b.buffer, |h| &h.buffer);
        let head_map = io.heads.is_some();
        let epi = needs_epilogue(cfg, split) || repeat > 0;
        // Where the epilogue finds the raw sums: split parts in f32 scratch; a whole sum in
        // the output itself, except for an f16 output at f16 precision, which must not hold
        // the sums before LayerNorm (f32 scratch). At tensor-core precision, whose operands
        // are rounded to f16 anyway, the f16 output holds them: half the memory traffic of
        // scratch (the LayerNorm epilogue was 17% of a B = 256 plan step on the H100).
        let part = split > 1 || (storage.y16 && epi && self.precision != Precision::TensorCore);
        // The GEMM writes raw sums to f32 scratch when the epilogue reads them from there.
        let gemm_storage = Storage {
            y16: storage.y16 && !part,
            ..storage
        };
        let max = gpu.limits().max_compute_workgroups_per_dimension;
        let grid = |rows: usize, bm: u32, bn: u32, gz: u32| -> Result<[u32; 3]> {
            let gx = cfg.n.div_ceil(bn as usize) as u32;
            let gy = rows.div_ceil(bm as usize) as u32;
            if gx > max || gy > max || gz > max {
                return Err(Error::Limit(format!(
                    "linear: {gy}x{gx} tiles x {gz} slots and K-parts exceed {max} workgroups \
                     per dimension"
                )));
            }
            Ok([gx, gy, gz])
        };
        let (z, w) = (&io.z.buffer, &io.w.buffer);
        // The Z part of a repeated-Z layer: raw sums of the distinct rows, f32.
        let pre = if repeat > 0 {
            // Its own K-split: a few distinct rows (B = 1: one) need it to fill the GPU.
            let pre_kernel = self.kernel_on(gpu, z_rows, 1);
            let (pbm, pbn, psg) = tile_of(pre_kernel)?;
            let pre_storage = Storage {
                y16: false,
                ..storage
            };
            let (spec, header, mut ov) =
                pipeline_constants_for(cfg, pre_kernel, false, false, pre_storage, psg);
            set_override(&mut ov, "RAW", 1.0);
            set_override(&mut ov, "KPART", 1.0);
            let pipe = gpu.pipeline(&spec, &header, &ov)?;
            let pre_split = pre_kernel.split();
            let buf =
                Self::scratch_in(&self.pre_scratch, gpu, pre_split as usize * z_rows * cfg.n)?;
            let pre_params = Params {
                m: z_rows as u32,
                xz_stride: 0,
                xa_stride: 0,
                pre_rows: 0,
                ..params
            };
            rec.dispatch(
                &pipe,
                &gemm_buffers(pre_kernel, [z, a, w, &io.b.buffer, heads], &buf.buffer),
                Some(&pre_params),
                grid(z_rows, pbm, pbn, pre_split)?,
            )?;
            Some((buf, pre_split))
        } else {
            None
        };
        let (spec, header, mut ov) =
            pipeline_constants_for(cfg, kernel, false, head_map, gemm_storage, sg);
        if repeat > 0 {
            set_override(&mut ov, "RAW", 1.0);
            set_override(&mut ov, "KPART", 2.0);
        }
        let gemm = gpu.pipeline(&spec, &header, &ov)?;
        let scratch = if part {
            Some(self.scratch(gpu, e * split as usize * m * cfg.n)?)
        } else {
            None
        };
        let target = scratch.as_ref().map_or(&io.y.buffer, |s| &s.buffer);
        rec.dispatch(
            &gemm,
            &gemm_buffers(kernel, [z, a, w, &io.b.buffer, heads], target),
            Some(&params),
            grid(m, bm, bn, e as u32 * split)?,
        )?;
        if epi {
            let (spec, mut header, mut ov) =
                pipeline_constants_for(cfg, kernel, true, head_map, storage, sg);
            set_override(&mut ov, "PART", part as u32 as f64);
            let shape = EpilogueShape::for_rows(e * m);
            header.set("RPT", shape.rows);
            header.set("EW", shape.threads);
            if let Some((_, pre_split)) = &pre {
                set_override(&mut ov, "PRE", 1.0);
                set_override(&mut ov, "PRE_SPLIT", *pre_split as f64);
            }
            let pipe: Arc<Pipeline> = gpu.pipeline(&spec, &header, &ov)?;
            let rows = ((e * m) as u32).div_ceil(shape.rows);
            let (x, y) = if rows <= max {
                (rows, 1)
            } else {
                (max, rows.div_ceil(max))
            };
            let part = scratch.as_ref().unwrap_or(io.b);
            let pre = pre.as_ref().map_or(io.b, |(b, _)| b);
            rec.dispatch(
                &pipe,
                &[
                    &io.b.buffer,
                    &io.y.buffer,
                    &gamma.buffer,
                    &beta.buffer,
                    &part.buffer,
                    heads,
                    &pre.buffer,
                ],
                Some(&params),
                [x, y, 1],
            )?;
        }
        Ok(())
    }

    fn scratch(&self, gpu: &Gpu, len: usize) -> Result<GpuBuffer<f32>> {
        Self::scratch_in(&self.scratch, gpu, len)
    }

    fn scratch_in(
        slot: &Mutex<Option<GpuBuffer<f32>>>,
        gpu: &Gpu,
        len: usize,
    ) -> Result<GpuBuffer<f32>> {
        let mut s = slot
            .lock()
            .map_err(|_| Error::InvalidArgument("linear scratch lock poisoned".into()))?;
        if let Some(b) = s.as_ref().filter(|b| b.len() >= len) {
            return Ok(b.clone());
        }
        let b = GpuBuffer::new(gpu, "linear split-K partial sums", len)?;
        *s = Some(b.clone());
        Ok(b)
    }
}

/// Rows per epilogue workgroup (each fetched during the previous one's reductions) and its
/// threads per row (a multiple of 8 dividing 64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpilogueShape {
    /// Rows, one after the other.
    pub rows: u32,
    /// Threads per row.
    pub threads: u32,
}

impl EpilogueShape {
    /// 8 rows of 32 threads from 65536 rows on, else 1 of 64. H100 (BENCHMARKS.md): the
    /// planner's 131072 rows of 512 took 182 us at 1 of 64, 162 at 4 of 64, 148 at 8 of 32
    /// (16 rows, or 2, were slower). With few rows long workgroups leave the GPU short of
    /// workgroups: 512 rows (B = 1) make 64 of them; B = 16 ran 1027 env-plans/s with 8-row
    /// workgroups against 1195 with 4 (tensor cores, two machines).
    pub fn for_rows(rows: usize) -> EpilogueShape {
        if rows >= 65536 {
            EpilogueShape {
                rows: 8,
                threads: 32,
            }
        } else {
            EpilogueShape {
                rows: 1,
                threads: 64,
            }
        }
    }
}

fn cpu_adapter(gpu: &Gpu) -> bool {
    gpu.info().device_type == wgpu::DeviceType::Cpu
}

/// The GEMM's bindings (Z, A, W, bias, heads; writing `target`); the tensor-core kernel adds
/// vector views of Z and W.
fn gemm_buffers<'b>(
    kernel: LinearKernel,
    [z, a, w, b, heads]: [&'b wgpu::Buffer; 5],
    target: &'b wgpu::Buffer,
) -> Vec<&'b wgpu::Buffer> {
    match kernel {
        LinearKernel::Alu(_) => vec![z, a, w, b, target, heads],
        LinearKernel::TensorCore(_) => vec![z, a, w, b, target, heads, z, w, w],
    }
}

/// Set (or add) an override constant.
fn set_override(ov: &mut Vec<(&'static str, f64)>, name: &'static str, value: f64) {
    match ov.iter_mut().find(|(n, _)| *n == name) {
        Some(o) => o.1 = value,
        None => ov.push((name, value)),
    }
}

fn needs_row_cap(cfg: &LinearConfig) -> usize {
    cfg.n.div_ceil(64) * 64
}
