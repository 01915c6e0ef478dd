// Activations shared by kernels. CPU mirror: src/reference/act.rs.

// Mish(x) = x * tanh(softplus(x)). With e = exp(x), tanh(log(1 + e)) = n / (n + 2) where
// n = e * (e + 2): no log, no tanh, no cancellation for negative x.
fn mish(x: f32) -> f32 {
    if (x > 20.0) {
        return x;
    }
    let e = exp(x);
    let n = e * (e + 2.0);
    return x * n / (n + 2.0);
}

// e^x - 1 without cancellation near 0: Taylor series to x^8 for |x| < 0.5 (truncation below
// 1.1e-8 relative), exp(x) - 1 beyond (cancellation at most a factor 2.5 there).
fn expm1(x: f32) -> f32 {
    if (abs(x) < 0.5) {
        var s = 1.0 / 40320.0;
        s = fma(s, x, 1.0 / 5040.0);
        s = fma(s, x, 1.0 / 720.0);
        s = fma(s, x, 1.0 / 120.0);
        s = fma(s, x, 1.0 / 24.0);
        s = fma(s, x, 1.0 / 6.0);
        s = fma(s, x, 0.5);
        s = fma(s, x, 1.0);
        return s * x;
    }
    return exp(x) - 1.0;
}
