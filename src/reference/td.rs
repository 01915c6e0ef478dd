//! Mirror of `shaders/td.wgsl`: TD targets, and the gradient of a decoded two-hot value with
//! respect to its logits.

/// TD targets of `reward.len()` rows from two heads' values `q0`, `q1`.
pub fn td_target(reward: &[f64], q0: &[f64], q1: &[f64], discount: f64) -> Vec<f64> {
    reward
        .iter()
        .zip(q0.iter().zip(q1))
        .map(|(r, (a, b))| r + discount * a.min(*b))
        .collect()
}

/// `scale * d symexp(sum_j softmax(l)_j bin_j) / d l` for each row of `logits` (`bins` per
/// row), bins at `linspace(vmin, vmax, bins)`.
pub fn decode_grad(logits: &[f64], bins: usize, vmin: f64, vmax: f64, scale: f64) -> Vec<f64> {
    let bin = |j: usize| vmin + j as f64 * (vmax - vmin) / (bins - 1) as f64;
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks(bins) {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = row.iter().map(|l| (l - m).exp()).collect();
        let s: f64 = e.iter().sum();
        let y: f64 = e.iter().enumerate().map(|(j, v)| v * bin(j)).sum::<f64>() / s;
        for (j, v) in e.iter().enumerate() {
            out.push(scale * y.abs().exp() * v / s * (bin(j) - y));
        }
    }
    out
}
