//! Mirror of `shaders/loss.wgsl` in f64: the weighted soft cross-entropy over two-hot targets
//! and the weighted squared error, with their gradients.
//!
//! Buffers are the logical arrays: logits and predictions `[members, rows, width]`, targets
//! `[rows]` (cross-entropy) or `[rows, n]` (squared error), shared by the members.

use super::two_hot;
use crate::kernels::loss::{MseConfig, RowWeights, SoftCeConfig};
use crate::kernels::two_hot::TwoHotConfig;

/// `w_r = scale * rho^(r / rows_per_step)`.
pub fn row_weight(w: &RowWeights, r: usize) -> f64 {
    let t = (r / w.rows_per_step) as i32;
    w.scale as f64 * (w.rho as f64).powi(t)
}

/// One row's soft cross-entropy `-sum_j two_hot(x)_j log_softmax(l)_j` and its gradient
/// `softmax(l) - two_hot(x)` (unweighted). The log-softmax subtracts the maximum first, as the
/// kernel does; the two-hot row is [`two_hot::encode_row`].
pub fn soft_ce_row(cfg: &TwoHotConfig, logits: &[f64], target: f32) -> (f64, Vec<f64>) {
    assert_eq!(logits.len(), cfg.bins, "one row of logits");
    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = logits.iter().map(|l| (l - m).exp()).sum();
    let lse = m + s.ln();
    let th = two_hot::encode_row(cfg, target);
    let loss = th
        .iter()
        .zip(logits)
        .map(|(t, l)| -t * (l - lse))
        .sum::<f64>();
    let grad = logits
        .iter()
        .zip(&th)
        .map(|(l, t)| (l - m).exp() / s - t)
        .collect();
    (loss, grad)
}

/// The weighted loss `sum_{e, r} w_r ce(l_{e, r}, x_r)` and the gradient
/// `w_r (softmax(l_{e, r}) - two_hot(x_r))`, `[members, rows, bins]`.
pub fn soft_ce(
    cfg: &SoftCeConfig,
    rows: usize,
    logits: &[f64],
    targets: &[f32],
) -> (f64, Vec<f64>) {
    let k = cfg.bins.bins;
    assert_eq!(
        logits.len(),
        cfg.members * rows * k,
        "logits are [members, rows, bins]"
    );
    assert_eq!(targets.len(), rows, "one target per row");
    let mut total = 0.0;
    let mut grad = Vec::with_capacity(logits.len());
    for (i, row) in logits.chunks(k).enumerate() {
        let r = i % rows;
        let w = row_weight(&cfg.weights, r);
        let (l, g) = soft_ce_row(&cfg.bins, row, targets[r]);
        total += w * l;
        grad.extend(g.iter().map(|g| w * g));
    }
    (total, grad)
}

/// The weighted loss `sum_{e, r} w_r sum_j (z_{e, r, j} - z'_{r, j})^2` and the gradient
/// `2 w_r (z_{e, r} - z'_r)`, `[members, rows, n]`.
pub fn mse(cfg: &MseConfig, rows: usize, z: &[f64], target: &[f64]) -> (f64, Vec<f64>) {
    let n = cfg.n;
    assert_eq!(z.len(), cfg.members * rows * n, "z is [members, rows, n]");
    assert_eq!(target.len(), rows * n, "the target is [rows, n]");
    let mut total = 0.0;
    let mut grad = Vec::with_capacity(z.len());
    for (i, row) in z.chunks(n).enumerate() {
        let r = i % rows;
        let w = row_weight(&cfg.weights, r);
        let t = &target[r * n..(r + 1) * n];
        let sq: f64 = row.iter().zip(t).map(|(a, b)| (a - b) * (a - b)).sum();
        total += w * sq;
        grad.extend(row.iter().zip(t).map(|(a, b)| 2.0 * w * (a - b)));
    }
    (total, grad)
}
