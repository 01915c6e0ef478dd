//! Mirror of `shaders/pack.wgsl`: a block of a row-major matrix into a padded layout.

use crate::kernels::pack::PackLayout;

/// `dst` after packing the block `at` of `src`, rounded to f16 (as f32) when `f16_out`.
pub fn pack(src: &[f32], dst: &[f32], at: &PackLayout, f16_out: bool) -> Vec<f32> {
    let mut out = dst.to_vec();
    for r in 0..at.rows as usize {
        for c in 0..at.cols as usize {
            let v = src[at.src_index(r, c)];
            out[at.dst_index(r, c)] = if f16_out {
                half::f16::from_f32(v).to_f32()
            } else {
                v
            };
        }
    }
    out
}
