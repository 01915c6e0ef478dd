//! Mirror of `shaders/norm_act.wgsl` in f64: `y = act(LN(h))`, its backward, the LayerNorm
//! parameter gradients and column sums, step by step like the kernels.
//!
//! Buffers are the logical arrays (no offsets): activations `[members, rows, n]`, gamma and
//! beta `[members, n]` (empty without LayerNorm), statistics `[members, rows, 2]` as
//! `(mean, rstd)` pairs.

use super::act;
use crate::kernels::linear::Activation;
use crate::kernels::norm_act::NormActConfig;

/// LayerNorm's epsilon, added to the biased variance.
pub const LN_EPS: f64 = 1e-5;

/// `d mish(x) / dx` with the kernel's closed form: with `e = exp(x)` and `n = e (e + 2)`,
/// `n / (n + 2) + 4 x e (1 + e) / (n + 2)^2`; 1 above 20, where the kernel's Mish returns x.
pub fn mish_grad(x: f64) -> f64 {
    if x > 20.0 {
        return 1.0;
    }
    let e = x.exp();
    let n = e * (e + 2.0);
    let d = n + 2.0;
    n / d + 4.0 * x * e * (1.0 + e) / (d * d)
}

/// `(mean, rstd)` of one row: the mean, then the biased variance of `h - mean` in a second
/// pass, `rstd = 1 / sqrt(var + 1e-5)`.
pub fn row_stats(h: &[f64]) -> (f64, f64) {
    let n = h.len() as f64;
    let mean = h.iter().sum::<f64>() / n;
    let var = h.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, 1.0 / (var + LN_EPS).sqrt())
}

/// The pre-activations `u` of one row and, under LayerNorm, `xhat = (h - mean) rstd`
/// (`u = xhat gamma + beta`); without LayerNorm `u = h` and `xhat` is empty.
pub fn pre_activation(h: &[f64], ln: Option<(&[f64], &[f64], f64, f64)>) -> (Vec<f64>, Vec<f64>) {
    match ln {
        None => (h.to_vec(), Vec::new()),
        Some((gamma, beta, mean, rstd)) => {
            let xhat: Vec<f64> = h.iter().map(|v| (v - mean) * rstd).collect();
            let u = xhat
                .iter()
                .zip(gamma.iter().zip(beta))
                .map(|(x, (g, b))| x * g + b)
                .collect();
            (u, xhat)
        }
    }
}

/// The activation of one row of pre-activations, in place.
pub fn activate(a: Activation, u: &mut [f64]) {
    match a {
        Activation::Identity => {}
        Activation::Mish => u.iter_mut().for_each(|v| *v = act::mish(*v)),
        Activation::SimNorm => act::simnorm(u),
    }
}

/// The gradient at the pre-activations `u` of one row, from the gradient `dy` at its
/// activations: `dy mish'(u)`, or for SimNorm `s (dy - sum_group s dy)` with `s` the group's
/// softmax.
pub fn activation_grad(a: Activation, u: &[f64], dy: &[f64]) -> Vec<f64> {
    match a {
        Activation::Identity => dy.to_vec(),
        Activation::Mish => u.iter().zip(dy).map(|(u, d)| d * mish_grad(*u)).collect(),
        Activation::SimNorm => {
            let mut s = u.to_vec();
            act::simnorm(&mut s);
            let mut du = vec![0.0; u.len()];
            for ((sg, dg), out) in s.chunks(8).zip(dy.chunks(8)).zip(du.chunks_mut(8)) {
                let dot: f64 = sg.iter().zip(dg).map(|(s, d)| s * d).sum();
                for ((o, s), d) in out.iter_mut().zip(sg).zip(dg) {
                    *o = s * (d - dot);
                }
            }
            du
        }
    }
}

fn member_ln<'a>(
    cfg: &NormActConfig,
    gamma: &'a [f64],
    beta: &'a [f64],
    e: usize,
) -> Option<(&'a [f64], &'a [f64])> {
    let n = cfg.n;
    cfg.layer_norm
        .then(|| (&gamma[e * n..(e + 1) * n], &beta[e * n..(e + 1) * n]))
}

/// `y = act(LN(h))` for `rows` rows of every member, and the row statistics `[members, rows,
/// 2]` (zeros without LayerNorm). `gamma` and `beta` are `[members, n]` (unused without
/// LayerNorm).
pub fn forward(
    cfg: &NormActConfig,
    rows: usize,
    h: &[f64],
    gamma: &[f64],
    beta: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let n = cfg.n;
    assert_eq!(h.len(), cfg.members * rows * n, "h is [members, rows, n]");
    let mut y = vec![0.0; h.len()];
    let mut stats = vec![0.0; 2 * cfg.members * rows];
    for (i, (hr, yr)) in h.chunks(n).zip(y.chunks_mut(n)).enumerate() {
        let ln = member_ln(cfg, gamma, beta, i / rows).map(|(g, b)| {
            let (mean, rstd) = row_stats(hr);
            stats[2 * i] = mean;
            stats[2 * i + 1] = rstd;
            (g, b, mean, rstd)
        });
        let (mut u, _) = pre_activation(hr, ln);
        activate(cfg.act, &mut u);
        yr.copy_from_slice(&u);
    }
    (y, stats)
}

/// One row's `(xhat, du)` as the backward kernels compute them from the stored statistics:
/// `du` is the gradient at the LayerNorm's output (or at `h` without LayerNorm, where `xhat`
/// is empty).
pub fn row_terms(
    cfg: &NormActConfig,
    h: &[f64],
    dy: &[f64],
    ln: Option<(&[f64], &[f64], f64, f64)>,
) -> (Vec<f64>, Vec<f64>) {
    let (u, xhat) = pre_activation(h, ln);
    (xhat, activation_grad(cfg.act, &u, dy))
}

fn row_ln<'a>(
    cfg: &NormActConfig,
    gamma: &'a [f64],
    beta: &'a [f64],
    stats: &[f64],
    rows: usize,
    i: usize,
) -> Option<(&'a [f64], &'a [f64], f64, f64)> {
    member_ln(cfg, gamma, beta, i / rows).map(|(g, b)| (g, b, stats[2 * i], stats[2 * i + 1]))
}

/// What [`backward`] computes.
#[derive(Clone, Debug, PartialEq)]
pub struct Grads {
    /// The gradient at `h`, `[members, rows, n]`.
    pub dh: Vec<f64>,
    /// With LayerNorm, its parameter gradients `(dgamma, dbeta)`, each `[members, n]`.
    pub ln: Option<(Vec<f64>, Vec<f64>)>,
}

/// The gradients from the gradient `dy` at `y`, with the row statistics `stats` (as the
/// forward stored them; ignored without LayerNorm). At `h`: `du` through the activation, then
/// with `g = gamma du`, `dh = rstd (g - mean(g) - xhat mean(g xhat))`. With LayerNorm, its
/// parameters': column sums over rows of `du xhat` and `du`, with `du` and `xhat` from
/// [`row_terms`].
pub fn backward(
    cfg: &NormActConfig,
    rows: usize,
    dy: &[f64],
    h: &[f64],
    gamma: &[f64],
    beta: &[f64],
    stats: &[f64],
) -> Grads {
    let n = cfg.n;
    assert_eq!(h.len(), cfg.members * rows * n, "h is [members, rows, n]");
    assert_eq!(dy.len(), h.len(), "dy is [members, rows, n]");
    let mut dh = vec![0.0; h.len()];
    let mut dg = vec![0.0; cfg.members * n];
    let mut db = vec![0.0; cfg.members * n];
    for (i, ((hr, dyr), out)) in h
        .chunks(n)
        .zip(dy.chunks(n))
        .zip(dh.chunks_mut(n))
        .enumerate()
    {
        let ln = row_ln(cfg, gamma, beta, stats, rows, i);
        let (xhat, du) = row_terms(cfg, hr, dyr, ln);
        match ln {
            None => out.copy_from_slice(&du),
            Some((g, _, _, rstd)) => {
                let gj: Vec<f64> = du.iter().zip(g).map(|(d, g)| d * g).collect();
                let c1 = gj.iter().sum::<f64>() / n as f64;
                let c2 = gj.iter().zip(&xhat).map(|(g, x)| g * x).sum::<f64>() / n as f64;
                for (j, o) in out.iter_mut().enumerate() {
                    *o = rstd * (gj[j] - c1 - xhat[j] * c2);
                }
                let e = i / rows;
                for j in 0..n {
                    dg[e * n + j] += du[j] * xhat[j];
                    db[e * n + j] += du[j];
                }
            }
        }
    }
    let ln = cfg.layer_norm.then_some((dg, db));
    Grads { dh, ln }
}

/// `out[e, j] = sum_r a[e, r, j]` (times `b[e, r, j]` when given) over `[members, rows, n]`.
pub fn column_sum(n: usize, members: usize, rows: usize, a: &[f64], b: Option<&[f64]>) -> Vec<f64> {
    assert_eq!(a.len(), members * rows * n, "a is [members, rows, n]");
    let mut out = vec![0.0; members * n];
    for (i, v) in a.iter().enumerate() {
        let e = i / (rows * n);
        let j = i % n;
        out[e * n + j] += v * b.map_or(1.0, |b| b[i]);
    }
    out
}
