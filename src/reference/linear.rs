//! Mirror of `shaders/linear.wgsl` (the fused linear layer, [`linear`]) in f64, and of
//! `shaders/linear_coop.wgsl` with the f32 epilogue after it: the tensor-core path stages Z,
//! A and W as f16, multiplies them exactly and sums wide (f32 on the GPU, f64 here), then adds
//! the bias and applies LayerNorm and the activation in f32, so its mirror is [`linear`] of Z,
//! A and W passed through [`round_f16`].

use super::act;
use crate::kernels::linear::{Activation, LinearConfig};

/// `Y[e, m, :] = act(LN([Z | A][e, m, :] W[h]^T + b[h]))` for `m` rows, in f64, with
/// `h = heads[e]` (clamped to the weight sets) or `h = e` without a head map.
///
/// Buffers are laid out as in [`crate::kernels::linear::LinearInputs`].
#[allow(clippy::too_many_arguments)]
pub fn linear(
    cfg: &LinearConfig,
    m: usize,
    z: &[f32],
    a: &[f32],
    w: &[f32],
    b: &[f32],
    ln: Option<(&[f32], &[f32])>,
    heads: Option<&[u32]>,
) -> Vec<f64> {
    let (n, k, k1) = (cfg.n, cfg.k, cfg.k1);
    let k2 = k - k1;
    let slots = heads.map_or(cfg.members, |h| h.len());
    let mut y = vec![0.0f64; slots * m * n];
    for slot in 0..slots {
        let ie = if cfg.shared_input { 0 } else { slot };
        let e = heads.map_or(slot, |h| (h[slot] as usize).min(cfg.members - 1));
        for row in 0..m {
            let x: Vec<f64> = (0..k)
                .map(|kk| {
                    if kk < k1 {
                        z[(ie * m + row) * k1 + kk] as f64
                    } else {
                        a[(ie * m + row) * k2 + kk - k1] as f64
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
