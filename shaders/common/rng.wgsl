// Philox4x32-10 counter-based RNG and exact float conversions.
//
// Pasted into other shaders by the preprocessor's import of common/rng;
// functions only (no bindings, no entry points, no directives). This file
// mirrors src/rng.rs operation for operation: u32 output is bit-identical,
// the conversions u01* are exact, and ln_f32 / sincos_2pi use the same
// cephes polynomials in the same order (a driver may contract a*b+c into an
// FMA, so floats agree to ~1 ulp). The
// builtin log/sin/cos are avoided on purpose: drivers only guarantee loose
// accuracy for them (Vulkan allows ~2^-11 absolute error for sin).
//
// Stream layout of the fill kernels: element j of stream s comes from lane
// j % 4 of philox(seed, s, j / 4).

const PHILOX_M0: u32 = 0xD2511F53u;
const PHILOX_M1: u32 = 0xCD9E8D57u;
const PHILOX_W0: u32 = 0x9E3779B9u;
const PHILOX_W1: u32 = 0xBB67AE85u;

// 32x32 -> 64-bit product as vec2(hi, lo), from 16-bit halves because WGSL
// has no 64-bit integers. No partial sum overflows: each is bounded by the
// true high word.
fn philox_mulhilo(a: u32, b: u32) -> vec2<u32> {
    let al = a & 0xFFFFu;
    let ah = a >> 16u;
    let bl = b & 0xFFFFu;
    let bh = b >> 16u;
    let ll = al * bl;
    let lh = al * bh;
    let hl = ah * bl;
    let hh = ah * bh;
    let mid = (ll >> 16u) + (lh & 0xFFFFu) + (hl & 0xFFFFu);
    let hi = hh + (lh >> 16u) + (hl >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, a * b);
}

fn philox_round(c: vec4<u32>, k: vec2<u32>) -> vec4<u32> {
    let p0 = philox_mulhilo(PHILOX_M0, c.x);
    let p1 = philox_mulhilo(PHILOX_M1, c.z);
    return vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
}

// Random123 philox4x32_R(10, ctr, key): 10 rounds, key bumped by the Weyl
// constants before rounds 2..10.
fn philox4x32_10(ctr: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = philox_round(ctr, key);
    var k = key;
    for (var i = 1u; i < 10u; i++) {
        k = k + vec2<u32>(PHILOX_W0, PHILOX_W1);
        c = philox_round(c, k);
    }
    return c;
}

// Block `counter` of stream `stream`: ctr = (counter, 0, stream, 0), key =
// seed = (seed_lo, seed_hi). Equals Rust rng::philox(seed, stream, counter).
fn philox(seed: vec2<u32>, stream: u32, counter: u32) -> vec4<u32> {
    return philox4x32_10(vec4<u32>(counter, 0u, stream, 0u), seed);
}

// Uniform in [0, 1): top 24 bits * 2^-24 (exact).
fn u01(x: u32) -> f32 {
    return f32(x >> 8u) * (1.0 / 16777216.0);
}

// Uniform in (0, 1]: (top 24 bits + 1) * 2^-24 (exact); safe for ln.
fn u01_open_closed(x: u32) -> f32 {
    return f32((x >> 8u) + 1u) * (1.0 / 16777216.0);
}

// Uniform in (0, 1): (top 23 bits + 0.5) * 2^-23 (exact), in [2^-24, 1 - 2^-24].
// 23 bits, not 24: (24 bits + 0.5) would need 25 significant bits and round.
fn u01_open(x: u32) -> f32 {
    return (f32(x >> 9u) + 0.5) * (1.0 / 8388608.0);
}

// Natural log, cephes logf. Domain: finite positive normal x; ln_f32(1) == 0.
// Max relative error vs f64 8.1e-8 (< 1 ulp) on the CPU twin.
fn ln_f32(x: f32) -> f32 {
    // frexp: x = m * 2^e, m in [0.5, 1).
    let bits = bitcast<u32>(x);
    var e = i32((bits >> 23u) & 0xFFu) - 126;
    var m = bitcast<f32>((bits & 0x807FFFFFu) | 0x3F000000u);
    // Mantissa into [sqrt(1/2), sqrt(2)), minus 1 (exact).
    if (m < 0.707106781186547524f) {
        e = e - 1;
        m = m + m - 1.0f;
    } else {
        m = m - 1.0f;
    }
    let z = m * m;
    var p = 7.0376836292e-2f;
    p = p * m - 1.1514610310e-1f;
    p = p * m + 1.1676998740e-1f;
    p = p * m - 1.2420140846e-1f;
    p = p * m + 1.4249322787e-1f;
    p = p * m - 1.6668057665e-1f;
    p = p * m + 2.0000714765e-1f;
    p = p * m - 2.4999993993e-1f;
    p = p * m + 3.3333331174e-1f;
    var y = p * m * z;
    let fe = f32(e);
    // ln 2 = 0.693359375 - 2.12194440e-4; fe * 0.693359375 is exact.
    y = y + -2.12194440e-4f * fe;
    y = y + -0.5f * z;
    let r = m + y;
    return r + 0.693359375f * fe;
}

// vec2(sin(2 pi t), cos(2 pi t)). Exact reduction: t - round(t) (round is
// ties-to-even), quadrant q = round(4t), r = t - q/4 in [-1/8, 1/8]; cephes
// sinf/cosf on x = 2 pi r; rotate by q. Max abs error 9.1e-8 on the CPU twin.
fn sincos_2pi(t: f32) -> vec2<f32> {
    let tr = t - round(t);
    let q = round(4.0f * tr);
    let r = tr - 0.25f * q;
    let x = 6.283185307179586f * r;
    let z = x * x;
    var ps = -1.9515295891e-4f;
    ps = ps * z + 8.3321608736e-3f;
    ps = ps * z - 1.6666654611e-1f;
    let s = ps * z * x + x;
    var pc = 2.443315711809948e-5f;
    pc = pc * z - 1.388731625493765e-3f;
    pc = pc * z + 4.166664568298827e-2f;
    let c = pc * z * z - 0.5f * z + 1.0f;
    let j = i32(q) & 3;
    let swap = (j & 1) != 0;
    let sn = select(s, c, swap);
    let cs = select(c, s, swap);
    return vec2<f32>(select(sn, -sn, (j & 2) != 0), select(cs, -cs, ((j + 1) & 2) != 0));
}

// Four standard normals (Box-Muller): (x0, x1) -> (r cos, r sin) with
// r = sqrt(-2 ln u01_open_closed(x0)), angle 2 pi u01(x1); likewise (x2, x3).
// r is computed as sqrt(|2 ln u|) so that u = 1 never feeds -0 to sqrt.
fn normal4(b: vec4<u32>) -> vec4<f32> {
    let r0 = sqrt(abs(2.0f * ln_f32(u01_open_closed(b.x))));
    let a0 = sincos_2pi(u01(b.y));
    let r1 = sqrt(abs(2.0f * ln_f32(u01_open_closed(b.z))));
    let a1 = sincos_2pi(u01(b.w));
    return vec4<f32>(r0 * a0.y, r0 * a0.x, r1 * a1.y, r1 * a1.x);
}

// Four standard Gumbel draws: -ln(-ln(u01_open(x))) per word.
fn gumbel1(x: u32) -> f32 {
    return -ln_f32(-ln_f32(u01_open(x)));
}

fn gumbel4(b: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(gumbel1(b.x), gumbel1(b.y), gumbel1(b.z), gumbel1(b.w));
}
