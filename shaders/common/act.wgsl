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

// (tanh x, 1 - tanh(x)^2), both to a few ulps for any x. With t = e^(-2|x|) <= 1 (no
// overflow) and m = t - 1 (from the series near 0): tanh |x| = -m / (1 + t) and
// 1 - tanh^2 = 4 t / (1 + t)^2.
fn tanh_sech2(x: f32) -> vec2<f32> {
    let z = -2.0 * abs(x);
    var m: f32;
    var t: f32;
    if (z > -0.5) {
        m = expm1(z);
        t = 1.0 + m;
    } else {
        t = exp(z);
        m = t - 1.0;
    }
    let d = 1.0 + t;
    return vec2<f32>(sign(x) * (-m / d), 4.0 * t / (d * d));
}

// log(2 pi) / 2, the constant of TD-MPC2's gaussian_logprob.
const HALF_LOG_2PI: f32 = 0.9189385175704956;
