//! Mirror of `shaders/gemm_coop.wgsl`: the operands rounded to f16 as the kernel stages them,
//! then [`super::gemm::gemm`]'s exact f64 sums (the kernel's f32 accumulation of exact
//! f16 x f16 products differs from it only by f32 rounding of the partial sums).

use super::gemm::{Layout, gemm};

/// `v` rounded to the nearest f16 (round to nearest even; beyond 65504 infinite), as f64.
pub fn round_f16(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| half::f16::from_f64(x).to_f64()).collect()
}

/// [`gemm`] of f16-rounded `a` and `b`; `c` is updated in place.
#[allow(clippy::too_many_arguments)]
pub fn gemm_coop(
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    trans: (bool, bool),
    alpha: f64,
    accumulate: bool,
    (a, la): (&[f64], Layout),
    (b, lb): (&[f64], Layout),
    c: (&mut [f64], Layout),
    bias: Option<(&[f64], Layout)>,
) {
    let (a16, b16) = (round_f16(a), round_f16(b));
    gemm(
        m,
        n,
        k,
        (batch, 1),
        trans,
        alpha,
        accumulate,
        (&a16, la),
        (&b16, lb),
        c,
        bias,
    );
}
