//! Whole networks per workgroup (`shaders/fused_mlp.wgsl` on the ALU,
//! `shaders/fused_mlp_coop.wgsl` on tensor cores, both over `shaders/common/fused_mlp.wgsl`):
//! a workgroup takes a block of rows through every layer of one network, the rows kept in
//! workgroup memory between layers, and up to [`MAX_GROUP`] networks that read the same rows
//! run in one dispatch. At a few hundred rows per layer a dispatch per layer is mostly launch
//! and drain; this makes a network one dispatch.
//!
//! This module holds the launch shape and the raw launch; [`crate::model::FusedModel`] packs
//! a world model's parameters in the layout the kernels read (see the shader's header) and
//! checks every launch against it.

use crate::gpu::shader::Header;
use crate::gpu::{Binding, Gpu, GpuBuffer, KernelSpec, Precision, Recorder};
use crate::{Error, Result};

/// Networks one launch can run side by side.
pub const MAX_GROUP: usize = 4;
/// Networks a packed model can describe.
pub const MAX_NETS: usize = 8;
/// Words of a network's descriptor.
pub const NET_WORDS: usize = 8;
/// Words of a layer's descriptor.
pub const LAYER_WORDS: usize = 16;

/// Field positions of a layer descriptor (as in `common/fused_mlp.wgsl`).
pub mod field {
    /// `mats` offset of member 0's `[NPAD, KZ]` block.
    pub const W: usize = 0;
    /// Row stride of that block: the first input's width rounded up to 16.
    pub const KZ: usize = 1;
    /// The first input's width.
    pub const K1: usize = 2;
    /// Output features.
    pub const N: usize = 3;
    /// `N` rounded up to 16 (the block's rows).
    pub const NPAD: usize = 4;
    /// `mats` offset of member 0's `[N, KA]` action columns.
    pub const WA: usize = 5;
    /// Action columns (0 without).
    pub const KA: usize = 6;
    /// `vecs` offset of the bias `[members, N]`.
    pub const B: usize = 7;
    /// `vecs` offset of the LayerNorm weight.
    pub const G: usize = 8;
    /// `vecs` offset of the LayerNorm bias.
    pub const BE: usize = 9;
    /// 0 identity, 1 Mish, 2 SimNorm.
    pub const ACT: usize = 10;
    /// 1 with LayerNorm.
    pub const LN: usize = 11;
    /// `mats` elements between members' blocks.
    pub const W_STRIDE: usize = 12;
    /// `mats` elements between members' action columns.
    pub const WA_STRIDE: usize = 13;
}

/// Which kernel and how it is laid out: rows per workgroup, threads, column phases and the
/// workgroup-memory strides, chosen for a device, a precision and the widest padded layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FusedShape {
    /// Tensor cores (`fused_mlp_coop`) or the ALU (`fused_mlp`).
    pub coop: bool,
    /// Subgroup size (tensor cores).
    pub sg: u32,
    /// Subgroups per workgroup (tensor cores).
    pub nsg: u32,
    /// Rows per workgroup.
    pub rb: u32,
    /// Threads per workgroup.
    pub wg: u32,
    /// Columns per phase of the hand-off to the epilogue.
    pub cw: u32,
    /// Phases.
    pub ph: u32,
    /// Output fragments per subgroup (tensor cores).
    pub frags: u32,
    /// Weights stored in f16.
    pub f16_w: bool,
    /// Hidden activations rounded to f16 between layers (the f16 storage path).
    pub f16_h: bool,
    /// The first layer's input rounded to f16 (tensor cores).
    pub round_in: bool,
}

impl FusedShape {
    /// The shape for `precision` on `gpu` with layers up to `widest` features wide (inputs
    /// and outputs), or [`Error::Unsupported`] when the rows do not fit the device's
    /// workgroup memory (then the layer-by-layer path runs).
    pub fn new(gpu: &Gpu, precision: Precision, widest: usize) -> Result<FusedShape> {
        let wpad = widest.div_ceil(16).max(1) * 16;
        let limit = gpu.limits().max_compute_workgroup_storage_size as usize;
        let threads = gpu.limits().max_compute_invocations_per_workgroup;
        let shape = if precision == Precision::TensorCore {
            let sg = gpu.tensor_cores()?;
            let nsg = 8;
            let wg = nsg * sg;
            let rb = 16;
            let frags = (wpad as u32).div_ceil(16 * nsg);
            // One fragment per subgroup per phase: rs holds NSG * 16 columns, leaving room
            // for the staged weight slice.
            let ph = frags;
            let cw = nsg * 16;
            FusedShape {
                coop: true,
                sg,
                nsg,
                rb,
                wg,
                cw,
                ph,
                frags,
                f16_w: true,
                f16_h: false,
                round_in: true,
            }
        } else {
            // A thread per column of a row block; narrow models take fewer threads (on a CPU
            // adapter idle threads are not free).
            let wg = (wpad as u32).div_ceil(32).clamp(1, 8) * 32;
            let wg = wg.min(threads);
            // Largest row block (at most 8) whose rows fit in workgroup memory.
            let mut rb = 8u32;
            loop {
                let tpr = wg / rb;
                let unit = lcm(wg, 8 * tpr);
                let cw = (wpad as u32).div_ceil(unit) * unit;
                let s = FusedShape {
                    coop: false,
                    sg: 0,
                    nsg: 0,
                    rb,
                    wg,
                    cw,
                    ph: 1,
                    frags: 0,
                    f16_w: precision.f16_storage(),
                    f16_h: precision.f16_storage(),
                    round_in: false,
                };
                if s.shared_bytes() <= limit || rb == 1 {
                    break s;
                }
                rb /= 2;
            }
        };
        if shape.wg > threads {
            return Err(Error::Unsupported(format!(
                "fused networks: {} threads per workgroup, the device allows {threads}",
                shape.wg
            )));
        }
        let chunks_fit = !shape.coop || (shape.frags * shape.nsg * 32).is_multiple_of(shape.wg);
        if shape.cw % (8 * shape.tpr()) != 0 || shape.wg % shape.rb != 0 || !chunks_fit {
            return Err(Error::Unsupported(format!(
                "fused networks: no epilogue layout for {} threads of {} rows and {} columns",
                shape.wg, shape.rb, shape.cw
            )));
        }
        if shape.shared_bytes() > limit {
            return Err(Error::Unsupported(format!(
                "fused networks: {} rows of {wpad} features need {} bytes of workgroup memory, \
                 the device has {limit}",
                shape.rb,
                shape.shared_bytes()
            )));
        }
        Ok(shape)
    }

    /// Threads per row in the epilogue.
    pub fn tpr(&self) -> u32 {
        self.wg / self.rb
    }

    /// Widest padded layer the shape holds.
    pub fn width(&self) -> u32 {
        self.cw * self.ph
    }

    fn xld(&self) -> u32 {
        // 16 extra bytes per row: tensor-core loads stay 16-byte aligned and rows spread over
        // the banks.
        self.width() + if self.coop { 8 } else { 4 }
    }

    fn rld(&self) -> u32 {
        self.cw + 4
    }

    /// Bytes of workgroup memory a workgroup uses.
    pub fn shared_bytes(&self) -> usize {
        let xs = self.rb * self.xld() * if self.coop { 2 } else { 4 };
        // The tensor cores' staged weight slice: 16 K of every column, f16.
        let bs = if self.coop {
            self.frags * self.nsg * 16 * 16 * 2
        } else {
            0
        };
        (xs + bs + self.rb * self.rld() * 4 + self.wg * 4) as usize
    }

    /// 16-byte weight chunks each thread fetches per staged slice (tensor cores).
    fn chunks(&self) -> u32 {
        (self.frags * self.nsg * 16 * 2).div_ceil(self.wg)
    }

    /// The kernel's entry point and bindings.
    pub fn spec(&self) -> KernelSpec {
        if self.coop {
            KernelSpec {
                shader: "fused_mlp_coop",
                entry: "run",
                bindings: &COOP_BINDINGS,
            }
        } else {
            KernelSpec {
                shader: "fused_mlp",
                entry: "run",
                bindings: &BINDINGS,
            }
        }
    }

    /// The header constants.
    pub fn header(&self) -> Header {
        let mut h = vec![
            ("RB", self.rb),
            ("WG", self.wg),
            ("CW", self.cw),
            ("PH", self.ph),
            ("XLD", self.xld()),
            ("RLD", self.rld()),
            ("F16_W", self.f16_w as u32),
            ("F16_H", self.f16_h as u32),
            ("ROUND_IN", self.round_in as u32),
            (
                "F16_ANY",
                (self.f16_w || self.f16_h || self.round_in) as u32,
            ),
        ];
        if self.coop {
            h.extend([
                ("NSG", self.nsg),
                ("FN", self.frags),
                ("FPP", self.frags / self.ph),
                ("BCH", self.chunks()),
            ]);
        }
        Header(h)
    }
}

fn lcm(a: u32, b: u32) -> u32 {
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    a / gcd(a, b) * b
}

const BINDINGS: [(u32, Binding); 9] = [
    (0, Binding::Read),
    (1, Binding::Read),
    (2, Binding::Read),
    (3, Binding::Read),
    (4, Binding::Read),
    (5, Binding::Read),
    (6, Binding::ReadWrite),
    (7, Binding::ReadWrite),
    (8, Binding::Uniform),
];

// The tensor-core kernel also reads the weights as 16-byte chunks (binding 9, same buffer).
const COOP_BINDINGS: [(u32, Binding); 10] = [
    (0, Binding::Read),
    (1, Binding::Read),
    (2, Binding::Read),
    (3, Binding::Read),
    (4, Binding::Read),
    (5, Binding::Read),
    (6, Binding::ReadWrite),
    (7, Binding::ReadWrite),
    (8, Binding::Uniform),
    (9, Binding::Read),
];

/// How a network's last layer is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutMode {
    /// The layer's outputs, `N` per row.
    Raw,
    /// TD-MPC2's two-hot decoding of the logits: one value per row.
    TwoHot,
    /// The policy head sampled (`shaders/policy.wgsl`'s formulas) with Philox noise drawn in
    /// the kernel: actions `[rows, A]` to one buffer, stats rows `[rows, 2A + 3]` to another.
    Policy,
}

/// One launch's parameter block (`Params` in `common/fused_mlp.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FusedParams {
    /// Rows.
    pub m: u32,
    /// Element offset of row 0 in the first input.
    pub z_offset: u32,
    /// 0, or g: row r reads first-input row r % g.
    pub z_repeat: u32,
    /// Element offset of row 0 in the action input.
    pub a_offset: u32,
    /// Per network slot: (network index, member, 1 if member is a slot of the head map, 0).
    pub net: [[u32; 4]; MAX_GROUP],
    /// Per network slot: (output binding 0 or 1, offset, row stride, mode: 0 raw, 1 two-hot,
    /// 2 policy).
    pub out: [[u32; 4]; MAX_GROUP],
    /// Policy mode: (seed low word, seed high word, noise stream, stats offset).
    pub policy: [u32; 4],
}

/// The buffers of one launch, in binding order.
pub struct FusedBindings<'a> {
    /// Descriptors.
    pub desc: &'a wgpu::Buffer,
    /// Packed weight matrices (f32 or f16, as the shape says).
    pub mats: &'a wgpu::Buffer,
    /// Packed biases and LayerNorm parameters.
    pub vecs: &'a wgpu::Buffer,
    /// First input (f32).
    pub z: &'a GpuBuffer<f32>,
    /// Action input (f32).
    pub a: &'a GpuBuffer<f32>,
    /// Head map.
    pub heads: &'a GpuBuffer<u32>,
    /// Output binding 0.
    pub out0: &'a GpuBuffer<f32>,
    /// Output binding 1.
    pub out1: &'a GpuBuffer<f32>,
}

/// Override constants: the two-hot bins and the policy's log-std range.
pub fn overrides(spec: &crate::model::ModelSpec) -> Vec<(&'static str, f64)> {
    vec![
        ("BINS", spec.num_bins as f64),
        ("VMIN", spec.vmin as f64),
        ("VMAX", spec.vmax as f64),
        ("LOG_STD_MIN", spec.log_std_min as f64),
        ("LOG_STD_MAX", spec.log_std_max as f64),
    ]
}

/// Record one launch of `nets` networks over `params.m` rows. The caller
/// ([`crate::model::FusedModel::record`]) has checked every offset against the buffers.
pub fn record(
    rec: &mut Recorder,
    shape: &FusedShape,
    overrides: &[(&str, f64)],
    b: FusedBindings,
    params: &FusedParams,
    nets: usize,
) -> Result<()> {
    let gpu = rec.gpu();
    if nets == 0 || nets > MAX_GROUP {
        return Err(Error::InvalidArgument(format!(
            "fused networks: {nets} networks in a launch (1 to {MAX_GROUP})"
        )));
    }
    let blocks = (params.m as usize).div_ceil(shape.rb as usize);
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    if blocks > max {
        return Err(Error::Limit(format!(
            "fused networks: {} rows need {blocks} workgroups, over the device's {max}",
            params.m
        )));
    }
    let pipe = gpu.pipeline(&shape.spec(), &shape.header(), overrides)?;
    let mut buffers = vec![
        b.desc,
        b.mats,
        b.vecs,
        &b.z.buffer,
        &b.a.buffer,
        &b.heads.buffer,
        &b.out0.buffer,
        &b.out1.buffer,
    ];
    if shape.coop {
        buffers.push(b.mats);
    }
    rec.dispatch(&pipe, &buffers, Some(params), [blocks as u32, nets as u32, 1])
}
