//! Mirror of `shaders/two_hot.wgsl`: TD-MPC2's `two_hot_inv` and `two_hot` in f64.

use crate::kernels::two_hot::TwoHotConfig;

/// `sign(x) * ln(1 + |x|)`.
pub fn symlog(x: f64) -> f64 {
    x.signum() * x.abs().ln_1p()
}

/// `sign(y) * (e^|y| - 1)`, the inverse of [`symlog`]; 0 at 0.
pub fn symexp(y: f64) -> f64 {
    if y == 0.0 {
        0.0
    } else {
        y.signum() * y.abs().exp_m1()
    }
}

/// The bins, `linspace(vmin, vmax, bins)`, with torch's formula (from the start in the lower
/// half, from the end in the upper half) as the shader computes them.
pub fn bins(cfg: &TwoHotConfig) -> Vec<f64> {
    let (lo, hi, n) = (cfg.vmin as f64, cfg.vmax as f64, cfg.bins);
    let step = cfg.bin_size();
    (0..n)
        .map(|j| {
            if j < n / 2 {
                lo + j as f64 * step
            } else {
                hi - (n - 1 - j) as f64 * step
            }
        })
        .collect()
}

/// The value of one row of logits: `symexp(sum_j softmax(logits)_j bin_j)`, with the maximum
/// subtracted before the exponentials as the kernel does.
pub fn decode_row(cfg: &TwoHotConfig, logits: &[f32]) -> f64 {
    assert_eq!(logits.len(), cfg.bins, "one row of logits");
    let b = bins(cfg);
    let m = logits
        .iter()
        .map(|&l| l as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    let (mut s, mut w) = (0.0, 0.0);
    for (j, &l) in logits.iter().enumerate() {
        let e = (l as f64 - m).exp();
        s += e;
        w += e * b[j];
    }
    symexp(w / s)
}

/// [`decode_row`] for every row of a `[rows, bins]` buffer.
pub fn decode(cfg: &TwoHotConfig, logits: &[f32]) -> Vec<f64> {
    logits
        .chunks(cfg.bins)
        .map(|row| decode_row(cfg, row))
        .collect()
}

/// The two-hot row of one target: `y = clamp(symlog x, vmin, vmax)`, `t = (y - vmin) /
/// bin_size`, `k = floor(t)`, `f = t - k`; weight `1 - f` at bin `k` and `f` at bin
/// `(k + 1) % bins` (TD-MPC2's scatter: at `y = vmax`, `k = bins - 1` and bin 0 gets `f` = 0).
pub fn encode_row(cfg: &TwoHotConfig, x: f32) -> Vec<f64> {
    let y = symlog(x as f64).clamp(cfg.vmin as f64, cfg.vmax as f64);
    let t = (y - cfg.vmin as f64) / cfg.bin_size();
    // At y = vmax, t = bins - 1 exactly (as the kernel sets it, whatever the rounding).
    let (kf, f) = if y >= cfg.vmax as f64 {
        ((cfg.bins - 1) as f64, 0.0)
    } else {
        (t.floor(), t - t.floor())
    };
    let k = (kf.max(0.0) as usize).min(cfg.bins - 1);
    let mut row = vec![0.0; cfg.bins];
    row[k] = 1.0 - f;
    row[(k + 1) % cfg.bins] = f;
    row
}

/// [`encode_row`] for every target, as a `[targets.len(), bins]` buffer.
pub fn encode(cfg: &TwoHotConfig, targets: &[f32]) -> Vec<f64> {
    targets.iter().flat_map(|&x| encode_row(cfg, x)).collect()
}
