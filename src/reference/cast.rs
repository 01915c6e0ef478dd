//! Mirror of `shaders/cast.wgsl`: f32 to f16, rounding to nearest even.

use half::f16;

/// `dst[i] = f16(src[i])`.
pub fn to_f16(src: &[f32]) -> Vec<f16> {
    src.iter().map(|&v| f16::from_f32(v)).collect()
}
