//! Mirror of `shaders/linear.wgsl` (the fused linear layer, [`linear`]) in f64, and of
//! `shaders/linear_coop.wgsl` with the f32 epilogue after it: the tensor-core path stages Z,
//! A and W as f16, multiplies them exactly and sums wide (f32 on the GPU, f64 here), then adds
//! the bias and applies LayerNorm and the activation in f32, so its mirror is [`linear`] of Z,
//! A and W passed through [`round_f16`].

use super::act;
use crate::kernels::linear::{Activation, LinearConfig};

/// Where each output slot's input rows sit: slot `e` reads block `e / group` of Z and A, at
/// element `block * z_stride` and `block * a_stride` (the kernel's `input_groups` and
/// `input_strides`, resolved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputBlocks {
    /// Output slots per block.
    pub group: usize,
    /// Elements between blocks of Z.
    pub z_stride: usize,
    /// Elements between blocks of A.
    pub a_stride: usize,
}

impl InputBlocks {
    /// Blocks back to back: `groups` blocks shared by consecutive slots where `cfg` shares
    /// its input (one per agent of a population; 1 otherwise), else one block per slot, for
    /// `slots` output slots (`None`: every weight set; a head map's length otherwise). Panics
    /// if the slots do not split into `groups`.
    pub fn packed(
        cfg: &LinearConfig,
        m: usize,
        groups: usize,
        slots: Option<usize>,
    ) -> InputBlocks {
        let slots = slots.unwrap_or(cfg.members);
        let group = if cfg.shared_input {
            assert!(
                slots.is_multiple_of(groups),
                "{slots} slots in {groups} groups"
            );
            slots / groups
        } else {
            1
        };
        InputBlocks {
            group,
            z_stride: m * cfg.k1,
            a_stride: m * (cfg.k - cfg.k1),
        }
    }
}

/// `Y[e, m, :] = act(LN([Z | A][e, m, :] W[h]^T + b[h]))` for `m` rows, in f64, with
/// `h = heads[e]` (clamped to the weight sets) or `h = e` without a head map, and slot `e`'s
/// rows of Z and A in the input block `blocks` gives it ([`InputBlocks::packed`] for the
/// layouts of [`crate::kernels::linear::LinearInputs`] without explicit strides).
#[allow(clippy::too_many_arguments)]
pub fn linear(
    cfg: &LinearConfig,
    m: usize,
    blocks: InputBlocks,
    z: &[f32],
    a: &[f32],
    w: &[f32],
    b: &[f32],
    ln: Option<(&[f32], &[f32])>,
    heads: Option<&[u32]>,
) -> Vec<f64> {
    let (n, k, k1) = (cfg.n, cfg.k, cfg.k1);
    let slots = heads.map_or(cfg.members, |h| h.len());
    let mut y = vec![0.0f64; slots * m * n];
    for slot in 0..slots {
        let blk = slot / blocks.group;
        let e = heads.map_or(slot, |h| (h[slot] as usize).min(cfg.members - 1));
        for row in 0..m {
            let x: Vec<f64> = (0..k)
                .map(|kk| {
                    if kk < k1 {
                        z[blk * blocks.z_stride + row * k1 + kk] as f64
                    } else {
                        a[blk * blocks.a_stride + row * (k - k1) + kk - k1] as f64
                    }
                })
                .collect();
            let out = &mut y[(slot * m + row) * n..(slot * m + row + 1) * n];
            for (col, o) in out.iter_mut().enumerate() {
                let wr = &w[(e * n + col) * k..(e * n + col + 1) * k];
                let dot: f64 = x.iter().zip(wr).map(|(xv, wv)| xv * *wv as f64).sum();
                *o = dot + b[e * n + col] as f64;
            }
            if let Some((g, be)) = ln {
                act::layer_norm(out, &g[e * n..(e + 1) * n], &be[e * n..(e + 1) * n]);
            }
            match cfg.act {
                Activation::Identity => {}
                Activation::Mish => out.iter_mut().for_each(|v| *v = act::mish(*v)),
                Activation::SimNorm => act::simnorm(out),
            }
        }
    }
    y
}

/// `v` rounded to the nearest f16, as f32: what the f16 storage and the tensor-core staging
/// of [`crate::kernels::linear`] make of their inputs (the rest of the math is [`linear`]'s).
pub fn round_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}
