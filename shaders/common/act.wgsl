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
