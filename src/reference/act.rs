//! Mirror of `shaders/common/act.wgsl`.

/// Mish in f64: `x * tanh(softplus(x))`.
pub fn mish(x: f64) -> f64 {
    let softplus = if x > 30.0 { x } else { x.exp().ln_1p() };
    x * softplus.tanh()
}

/// SimNorm: softmax over consecutive groups of 8, in place.
pub fn simnorm(row: &mut [f64]) {
    for g in row.chunks_mut(8) {
        let mx = g.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let mut z = 0.0;
        for v in g.iter_mut() {
            *v = (*v - mx).exp();
            z += *v;
        }
        for v in g.iter_mut() {
            *v /= z;
        }
    }
}

/// LayerNorm of one row in place (biased variance, eps 1e-5), then `gamma * x + beta`.
pub fn layer_norm(row: &mut [f64], gamma: &[f32], beta: &[f32]) {
    let n = row.len() as f64;
    let mean = row.iter().sum::<f64>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let rstd = 1.0 / (var + 1e-5).sqrt();
    for (j, v) in row.iter_mut().enumerate() {
        *v = (*v - mean) * rstd * gamma[j] as f64 + beta[j] as f64;
    }
}
