//! The strided batched GEMM on tensor cores (`shaders/gemm_coop.wgsl`): the same calls as
//! [`super::gemm`] (`C[b] = alpha op(A[b]) op(B[b]) (+ bias[b]) (+ C[b])`, f32 buffers in and
//! out), with the operands rounded to f16 for the products and f32 accumulation, through
//! wgpu's experimental cooperative matrices (16x16x16 f16 x f16 -> f32 fragments).
//!
//! Why f32 storage: callers keep their f32 buffers and can switch paths per call; the
//! rounding happens while each slice is staged in workgroup memory, which every tile loop
//! needs anyway, so it costs a conversion per loaded element and no extra pass. (The linear
//! layer's tensor-core path reads f16 storage directly where the model keeps it, halving the
//! bytes loaded; see [`super::linear`].)
//!
//! Each workgroup computes a [`CoopTile`] of C: every subgroup a `wm x wn` block of 16x16
//! accumulators, all subgroups multiplying out of the same staged slices of A and B, which
//! the whole workgroup loads once, 8 elements along the stored rows per vector load (a naive
//! kernel has each subgroup read its own operands from memory): K-contiguous operands are
//! staged `[row][k]`, the transposed layouts of the backward passes (A stored `[k, m]`, B
//! stored `[k, n]`) `[k][row]`. A population's agents step by their agent strides, as in
//! [`super::gemm`]. Any M, N, K: loads outside the matrices give zero, stores outside are
//! dropped.
//!
//! Errors: without cooperative matrices (see [`crate::Gpu::tensor_cores`]) [`record`] returns
//! [`Error::Unsupported`]; [`record_or_f32`] runs the f32 kernel instead and says which ran.
//!
//! Accuracy: each product of two f16-rounded operands is exact in f32, so the error against
//! the exact f32 product is that of rounding the operands: about `2^-11 (|a| |b|)` summed over
//! K (relative error ~1e-3 of `sum |a_ik b_kj|` in the worst case, ~`2^-11 sqrt(K)` typical).

use super::gemm::{self, Gemm, Operands};
use super::launch::{extend_bindings, kernel};
use crate::gpu::Binding::Read;
use crate::gpu::shader::Header;
use crate::gpu::{Gpu, KernelSpec, Recorder};
use crate::{Error, Result};

/// A tensor-core tile: `bm x bn` outputs per workgroup, `bk` deep per step, `wm x wn` per
/// subgroup (all multiples of 16: `wm / 16 x wn / 16` accumulators per subgroup).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoopTile {
    /// Tile rows.
    pub bm: u32,
    /// Tile columns.
    pub bn: u32,
    /// K per step.
    pub bk: u32,
    /// Rows per subgroup.
    pub wm: u32,
    /// Columns per subgroup.
    pub wn: u32,
}

impl CoopTile {
    /// 64 x 128 x 32, 4 subgroups of 32 x 64 (2 x 4 accumulators): large outputs. The
    /// fastest tile measured on the H100 (BENCHMARKS.md: 83 TFLOP/s on the planner's
    /// 131072x512x512 layer, 105 on 4096^3).
    pub const LARGE: CoopTile = CoopTile {
        bm: 64,
        bn: 128,
        bk: 32,
        wm: 32,
        wn: 64,
    };
    /// 256 x 128 x 32, 8 subgroups of 64 x 64 (4 x 4 accumulators): the largest outputs,
    /// where the device allows its 46 KB of workgroup memory. On the H100 it ran the planner's
    /// 131072x512x512 layer (LayerNorm and Mish included) in 721 us against LARGE's 957.
    pub const XLARGE: CoopTile = CoopTile {
        bm: 256,
        bn: 128,
        bk: 32,
        wm: 64,
        wn: 64,
    };
    /// 64 x 64 x 32, 4 subgroups of 32 x 32 (2 x 2 accumulators): more workgroups for
    /// outputs of a few hundred rows.
    pub const MEDIUM: CoopTile = CoopTile {
        bm: 64,
        bn: 64,
        bk: 32,
        wm: 32,
        wn: 32,
    };
    /// 32 x 32 x 32, one subgroup of 32 x 32: many workgroups for small outputs.
    pub const SMALL: CoopTile = CoopTile {
        bm: 32,
        bn: 32,
        bk: 32,
        wm: 32,
        wn: 32,
    };
    /// 128 x 128 x 32, 4 subgroups of 64 x 64 (4 x 4 accumulators) (for sweeps; the lab's
    /// best with f16 operands, second to LARGE in the library's loop).
    pub const WIDE: CoopTile = CoopTile {
        bm: 128,
        bn: 128,
        bk: 32,
        wm: 64,
        wn: 64,
    };
    /// 128 x 64 x 32, 4 subgroups of 32 x 64 (2 x 4 accumulators) (for sweeps).
    pub const TALL: CoopTile = CoopTile {
        bm: 128,
        bn: 64,
        bk: 32,
        wm: 32,
        wn: 64,
    };
    /// Every tile (tests, sweeps).
    pub const ALL: [CoopTile; 6] = [
        CoopTile::XLARGE,
        CoopTile::LARGE,
        CoopTile::MEDIUM,
        CoopTile::SMALL,
        CoopTile::WIDE,
        CoopTile::TALL,
    ];

    /// Further tiles for sweeps: deeper K steps and 8-subgroup tiles, with up to 47 KB of
    /// workgroup memory ([`CoopTile::check`] says where they fit).
    pub const SWEEP: [CoopTile; 4] = [
        CoopTile {
            bk: 64,
            ..CoopTile::LARGE
        },
        CoopTile {
            bk: 64,
            ..CoopTile::WIDE
        },
        CoopTile {
            bm: 128,
            bn: 128,
            bk: 32,
            wm: 32,
            wn: 64,
        },
        CoopTile {
            bm: 128,
            bn: 256,
            bk: 32,
            wm: 64,
            wn: 64,
        },
    ];

    /// Subgroups per workgroup.
    pub fn subgroups(&self) -> u32 {
        (self.bm / self.wm.max(1)) * (self.bn / self.wn.max(1))
    }

    /// Bytes of workgroup memory: the two staged f16 slices and two 16x16 f32 blocks per
    /// subgroup. (A slice staged row-contiguous, `bk x (bm + 8)`, is no larger than one
    /// staged K-contiguous, `bm x (bk + 8)`, since [`CoopTile::check`] asks `bm, bn >= bk`.)
    pub fn workgroup_bytes(&self) -> u32 {
        2 * (self.bm + self.bn) * (self.bk + 8) + 4 * 512 * self.subgroups()
    }

    /// The header constants of `common/coop_gemm.wgsl` for subgroups of `sg` invocations,
    /// both operands staged K-contiguous (`ATR` and `BTR` 0; [`pipeline_constants`] sets them
    /// for the GEMM's stored layouts).
    pub fn header(&self, sg: u32) -> Vec<(&'static str, u32)> {
        let wg = (self.subgroups() * sg).max(1);
        vec![
            ("BM", self.bm),
            ("BN", self.bn),
            ("BK", self.bk),
            ("WM", self.wm),
            ("WN", self.wn),
            ("SG", sg),
            ("FM", self.wm / 16),
            ("FN", self.wn / 16),
            ("KS", self.bk / 16),
            ("A_CH", self.bm * self.bk / 8 / wg),
            ("B_CH", self.bn * self.bk / 8 / wg),
            ("ATR", 0),
            ("BTR", 0),
        ]
    }

    /// Bytes of workgroup memory with operand scaling: [`CoopTile::workgroup_bytes`] and a
    /// word per scaled row or column.
    pub fn workgroup_bytes_scaled(&self, scale: CoopScale) -> u32 {
        self.workgroup_bytes() + 4 * (scale.a as u32 * self.bm + scale.b as u32 * self.bn)
    }

    /// Check that the kernel can run this tile with subgroups of `sg` on `gpu`.
    pub fn check(&self, gpu: &Gpu, sg: u32) -> Result<()> {
        self.check_scaled(gpu, sg, CoopScale::NONE)
    }

    /// [`CoopTile::check`] with operand scaling (more workgroup memory).
    pub fn check_scaled(&self, gpu: &Gpu, sg: u32, scale: CoopScale) -> Result<()> {
        let m16 = |v: u32| v > 0 && v.is_multiple_of(16);
        let wg = self.subgroups() * sg;
        let l = gpu.limits();
        let ok = m16(self.bm)
            && m16(self.bn)
            && m16(self.bk)
            && m16(self.wm)
            && m16(self.wn)
            && self.bk.is_multiple_of(32)
            && self.bm >= self.bk
            && self.bn >= self.bk
            && self.bm.is_multiple_of(self.wm)
            && self.bn.is_multiple_of(self.wn)
            && (self.bm * self.bk / 8).is_multiple_of(wg)
            && (self.bn * self.bk / 8).is_multiple_of(wg)
            && wg <= l.max_compute_invocations_per_workgroup
            && self.workgroup_bytes_scaled(scale) <= l.max_compute_workgroup_storage_size;
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "tensor-core tile {self} with subgroups of {sg}: sizes must be multiples of 16 \
                 (bk of 32, at most bm and bn), the tile a multiple of the subgroup block, \
                 bm*bk/8 and bn*bk/8 multiples of the {wg} threads, {} bytes of workgroup memory within the device's {}",
                self.workgroup_bytes_scaled(scale),
                l.max_compute_workgroup_storage_size
            )))
        }
    }

    /// The tile for an `m x n` output in `slots` slots: XLARGE (256 x 128) once its tiles
    /// fill a big GPU (~130 SMs) twice, LARGE (64 x 128) once they fill it, then 64 x 64, then
    /// one subgroup per 32 x 32 (the fastest at 256 rows on the H100). See
    /// [`CoopTile::choose_on`] for a device whose workgroup memory may not hold XLARGE.
    pub fn choose(m: usize, n: usize, slots: usize) -> CoopTile {
        let tiles = |t: usize| m.div_ceil(t) * n.div_ceil(t) * slots;
        if m.div_ceil(256) * n.div_ceil(128) * slots >= 264 {
            CoopTile::XLARGE
        } else if m.div_ceil(64) * n.div_ceil(128) * slots >= 120 {
            CoopTile::LARGE
        } else if tiles(64) >= 48 {
            CoopTile::MEDIUM
        } else {
            CoopTile::SMALL
        }
    }
}

impl CoopTile {
    /// [`CoopTile::choose`], then LARGE where `gpu` cannot run the choice with subgroups of
    /// `sg` (XLARGE needs 46 KB of workgroup memory and 256 invocations).
    pub fn choose_on(gpu: &Gpu, sg: u32, m: usize, n: usize, slots: usize) -> CoopTile {
        CoopTile::choose_scaled_on(gpu, sg, m, n, slots, CoopScale::NONE)
    }

    /// [`CoopTile::choose_on`] for a GEMM with operand `scale` (a little more workgroup
    /// memory).
    pub fn choose_scaled_on(
        gpu: &Gpu,
        sg: u32,
        m: usize,
        n: usize,
        slots: usize,
        scale: CoopScale,
    ) -> CoopTile {
        let t = CoopTile::choose(m, n, slots);
        if t.check_scaled(gpu, sg, scale).is_ok() {
            t
        } else {
            CoopTile::LARGE
        }
    }
}

impl std::fmt::Display for CoopTile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}x{}x{}/{}x{}",
            self.bm, self.bn, self.bk, self.wm, self.wn
        )
    }
}

/// Which kernel [`record_or_f32`] used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPath {
    /// Cooperative matrices: f16 products, f32 sums.
    TensorCore,
    /// The f32 kernel of [`super::gemm`].
    F32,
}

/// The f32 GEMM's bindings, then vec4 views of A and B (16-byte loads).
const SPEC: KernelSpec = kernel(
    "gemm_coop",
    "gemm",
    &extend_bindings::<5, 7>(&gemm::BINDINGS, &[(5, Read), (6, Read)]),
);

/// Which operands [`record_scaled`] scales: each row of op(A) (`a`), each column of op(B)
/// (`b`) by the power of two that brings its largest |value| over K near 2^14 before the
/// f16 rounding, the result divided by the same factors. Exact where no scaling is needed;
/// where it is, an operand keeps f16's 11 significant bits however small or large it is
/// (the training passes' gradients are often below f16's normal range, 6.1e-5; raw
/// observations may exceed its 65504). Costs a first pass over the tile's operand rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CoopScale {
    /// Scale the rows of op(A).
    pub a: bool,
    /// Scale the columns of op(B).
    pub b: bool,
}

impl CoopScale {
    /// No scaling: operands rounded to f16 as they are.
    pub const NONE: CoopScale = CoopScale { a: false, b: false };
    /// Both operands scaled.
    pub const BOTH: CoopScale = CoopScale { a: true, b: true };
}

/// The header and override constants of one pipeline (also used by the shader test), for
/// subgroups of `sg` invocations, without scaling.
pub fn pipeline_constants(
    tile: CoopTile,
    sg: u32,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
    bias: bool,
) -> (KernelSpec, Header, Vec<(&'static str, f64)>) {
    pipeline_constants_scaled(
        tile,
        sg,
        trans_a,
        trans_b,
        accumulate,
        bias,
        CoopScale::NONE,
    )
}

/// [`pipeline_constants`] with operand scaling. The stored layouts (`ATR`: A stored
/// `[k, m]`; `BTR`: B stored `[k, n]`) and the scaling (`SCA`, `SCB`) are header constants,
/// since they size workgroup memory.
pub fn pipeline_constants_scaled(
    tile: CoopTile,
    sg: u32,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
    bias: bool,
    scale: CoopScale,
) -> (KernelSpec, Header, Vec<(&'static str, f64)>) {
    let mut h = tile.header(sg);
    for (name, v) in h.iter_mut() {
        match *name {
            "ATR" => *v = trans_a as u32,
            "BTR" => *v = !trans_b as u32,
            _ => {}
        }
    }
    h.push(("SCA", scale.a as u32));
    h.push(("SCB", scale.b as u32));
    let b = |v: bool| if v { 1.0 } else { 0.0 };
    let ov = vec![("ACC", b(accumulate)), ("BIAS", b(bias))];
    (SPEC, Header(h), ov)
}

/// Record `C = alpha op(A) op(B) (+ bias) (+ C)` on tensor cores, with the tile of
/// [`CoopTile::choose_on`]. [`Error::Unsupported`] without cooperative matrices.
pub fn record(rec: &mut Recorder, op: &Gemm, x: Operands) -> Result<()> {
    record_scaled(rec, op, x, CoopScale::NONE)
}

/// [`record`] with a chosen tile.
pub fn record_with_tile(rec: &mut Recorder, op: &Gemm, x: Operands, tile: CoopTile) -> Result<()> {
    record_scaled_with_tile(rec, op, x, tile, CoopScale::NONE)
}

/// [`record`] with the operands scaled as `scale` says (see [`CoopScale`]).
pub fn record_scaled(rec: &mut Recorder, op: &Gemm, x: Operands, scale: CoopScale) -> Result<()> {
    let gpu = rec.gpu();
    let sg = gpu.tensor_cores()?;
    let tile = CoopTile::choose_scaled_on(gpu, sg, op.m, op.n, op.batch, scale);
    record_scaled_with_tile(rec, op, x, tile, scale)
}

/// [`record_scaled`] with a chosen tile.
pub fn record_scaled_with_tile(
    rec: &mut Recorder,
    op: &Gemm,
    x: Operands,
    tile: CoopTile,
    scale: CoopScale,
) -> Result<()> {
    let gpu = rec.gpu();
    let sg = gpu.tensor_cores()?;
    tile.check_scaled(gpu, sg, scale)?;
    if op.segments > 1 {
        // No K segments in this kernel: one multiply per segment, adding after the first.
        for s in 0..op.segments {
            let (op_s, x_s) = op.segment(x, s);
            record_scaled_with_tile(rec, &op_s, x_s, tile, scale)?;
        }
        return Ok(());
    }
    let constants = pipeline_constants_scaled(
        tile,
        sg,
        op.trans_a,
        op.trans_b,
        op.accumulate,
        x.bias.is_some(),
        scale,
    );
    gemm::record_tiled(rec, op, x, [tile.bm, tile.bn], constants)
}

/// [`record`] where the device has tensor cores, else the f32 [`gemm::record`]; returns
/// which one was recorded.
pub fn record_or_f32(rec: &mut Recorder, op: &Gemm, x: Operands) -> Result<GemmPath> {
    if rec.gpu().tensor_cores().is_ok() {
        record(rec, op, x)?;
        Ok(GemmPath::TensorCore)
    } else {
        gemm::record(rec, op, x)?;
        Ok(GemmPath::F32)
    }
}
