//! Mirror of `shaders/gemm_coop.wgsl`: the operands rounded to f16 as the kernel stages them,
//! then [`super::gemm::gemm`]'s exact f64 sums (the kernel's f32 accumulation of exact
//! f16 x f16 products differs from it only by f32 rounding of the partial sums).

use super::gemm::{Layout, gemm};

/// `v` rounded to the nearest f16 (round to nearest even; beyond 65504 infinite), as f64.
pub fn round_f16(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| half::f16::from_f64(x).to_f64()).collect()
}

/// [`gemm`] of f16-rounded `a` and `b` (`batch` multiplies, `agents` of them: see [`gemm`]);
/// `c` is updated in place.
#[allow(clippy::too_many_arguments)]
pub fn gemm_coop(
    m: usize,
    n: usize,
    k: usize,
    (batch, agents): (usize, usize),
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
        (batch, agents),
        trans,
        alpha,
        accumulate,
        (&a16, la),
        (&b16, lb),
        c,
        bias,
    );
}

/// The scale `gemm_coop.wgsl` gives a row or column whose largest |value| is `max` (an f32
/// value): the power of two that brings it to [2^14, 2^15), its exponent clamped to +-60; 1
/// for a zero, infinite or NaN maximum.
pub fn scale_for(max: f64) -> f64 {
    let bits = (max as f32).to_bits();
    if bits == 0 || bits >= 0x7f80_0000 {
        return 1.0;
    }
    let e = (bits >> 23) as i32 - 127;
    2f64.powi((14 - e).clamp(-60, 60))
}

/// [`gemm_coop`] with operand scaling (`kernels::gemm_coop::CoopScale`): each row of op(A)
/// (`scale.0`) and column of op(B) (`scale.1`) multiplied by [`scale_for`] its largest
/// |value| over K before the f16 rounding and divided by it after, as the kernel does (there
/// the division happens once, on the sum).
#[allow(clippy::too_many_arguments)]
pub fn gemm_coop_scaled(
    m: usize,
    n: usize,
    k: usize,
    (batch, agents): (usize, usize),
    (trans_a, trans_b): (bool, bool),
    alpha: f64,
    accumulate: bool,
    (a, la): (&[f64], Layout),
    (b, lb): (&[f64], Layout),
    c: (&mut [f64], Layout),
    bias: Option<(&[f64], Layout)>,
    scale: (bool, bool),
) {
    let per = batch / agents;
    // Element of op(A)[i, p] and of op(B)[p, j] of batch bt.
    let at_a = |bt: usize, i: usize, p: usize| {
        la.base(bt, per)
            + if trans_a {
                p * la.ld + i
            } else {
                i * la.ld + p
            }
    };
    let at_b = |bt: usize, p: usize, j: usize| {
        lb.base(bt, per)
            + if trans_b {
                j * lb.ld + p
            } else {
                p * lb.ld + j
            }
    };
    // Round every line (row of op(A), column of op(B)) with its own scale; an element shared
    // by several batches gets the same value each time (same line, same maximum).
    let round_lines =
        |v: &[f64], lines: usize, at: &dyn Fn(usize, usize, usize) -> usize, on: bool| {
            let mut out = round_f16(v);
            if !on {
                return out;
            }
            for bt in 0..batch {
                for l in 0..lines {
                    // NaN above everything, as the kernel's integer maximum of the bits ranks it.
                    let max = (0..k)
                        .map(|p| v[at(bt, l, p)].abs())
                        .fold(0.0, |m: f64, x| {
                            if m.is_nan() || x.is_nan() {
                                f64::NAN
                            } else {
                                m.max(x)
                            }
                        });
                    let s = scale_for(max);
                    for p in 0..k {
                        let i = at(bt, l, p);
                        out[i] = half::f16::from_f64(v[i] * s).to_f64() / s;
                    }
                }
            }
            out
        };
    let a16 = round_lines(a, m, &|bt, i, p| at_a(bt, i, p), scale.0);
    let b16 = round_lines(b, n, &|bt, j, p| at_b(bt, p, j), scale.1);
    gemm(
        m,
        n,
        k,
        (batch, agents),
        (trans_a, trans_b),
        alpha,
        accumulate,
        (&a16, la),
        (&b16, lb),
        c,
        bias,
    );
}
