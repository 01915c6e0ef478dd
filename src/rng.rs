//! Philox4x32-10 counter-based random numbers, bit-identical to `shaders/common/rng.wgsl`.
//!
//! Why counter-based: every random number is a pure function of
//! `(seed, stream, counter)`, so a GPU kernel can draw element `j` of a stream
//! without any sequential state, and the CPU reference can reproduce exactly
//! the same numbers to check it.
//!
//! Everything here is mirrored operation for operation in WGSL:
//!
//! * [`philox4x32_10`] / [`philox`] give the same `u32` words on both sides
//!   (the WGSL port builds the 32x32->64 multiply from 16-bit halves, see
//!   [`mulhilo32_halves`]).
//! * The float conversions ([`u01`], [`u01_open_closed`], [`u01_open`]) are
//!   exact, so they match bit for bit too.
//! * [`ln_f32`] and [`sincos_2pi`] are written with bit tricks and cephes
//!   polynomials instead of the platform `ln`/`sin`/`cos`, because GPU drivers
//!   only promise loose accuracy for transcendentals (Vulkan allows about
//!   2^-11 absolute error for `sin`). The polynomials are evaluated in the same
//!   order with plain `*` and `+` (no `mul_add`); a GPU compiler may still
//!   contract some of them into FMAs, so derived floats ([`normal4`],
//!   [`gumbel4`]) agree to about one ulp rather than bit for bit.
//!
//! Stream layout used by the fill helpers ([`normals`], [`uniforms`],
//! [`u32s`], [`gumbels`]) and by the GPU fill kernels: element `j` of stream
//! `stream` comes from lane `j % 4` of `philox(seed, stream, j / 4)`.

use core::f32::consts::{FRAC_1_SQRT_2, TAU};

/// Philox multiplier applied to counter word 0 (Random123 `PHILOX_M4x32_0`).
pub const PHILOX_M0: u32 = 0xD251_1F53;
/// Philox multiplier applied to counter word 2 (Random123 `PHILOX_M4x32_1`).
pub const PHILOX_M1: u32 = 0xCD9E_8D57;
/// Weyl increment of key word 0 between rounds (golden ratio, `PHILOX_W32_0`).
pub const PHILOX_W0: u32 = 0x9E37_79B9;
/// Weyl increment of key word 1 between rounds (sqrt(3) - 1, `PHILOX_W32_1`).
pub const PHILOX_W1: u32 = 0xBB67_AE85;

/// 2^-24: scales a 24-bit integer into [0, 1) exactly.
const INV_2_24: f32 = 1.0 / 16_777_216.0;
/// 2^-23: scales a 23-bit integer (plus one half) into (0, 1) exactly.
const INV_2_23: f32 = 1.0 / 8_388_608.0;

/// cephes `logf` polynomial for ln(1 + m) - m + m^2/2 = m^3 P(m), Horner
/// order from the highest coefficient; valid for m in [sqrt(1/2) - 1, sqrt(2) - 1).
#[allow(clippy::excessive_precision)] // cephes spelling, rounds to the intended f32
const LOGF_P: [f32; 9] = [
    7.037_683_629_2e-2,
    -1.151_461_031_0e-1,
    1.167_699_874_0e-1,
    -1.242_014_084_6e-1,
    1.424_932_278_7e-1,
    -1.666_805_766_5e-1,
    2.000_071_476_5e-1,
    -2.499_999_399_3e-1,
    3.333_333_117_4e-1,
];
/// ln 2 split as `LN2_HI + LN2_LO` (cephes): `LN2_HI` has 9 significant
/// bits, so `e * LN2_HI` is exact for any f32 exponent `e`.
#[allow(clippy::excessive_precision)] // 0.693359375 is exactly 0x3F318000
const LN2_HI: f32 = 0.693_359_375;
#[allow(clippy::excessive_precision)]
const LN2_LO: f32 = -2.121_944_40e-4;
/// cephes `sinf` polynomial on [-pi/4, pi/4]: sin x = x + x z P(z), z = x^2.
#[allow(clippy::excessive_precision)]
const SINF_P: [f32; 3] = [-1.951_529_589_1e-4, 8.332_160_873_6e-3, -1.666_665_461_1e-1];
/// cephes `cosf` polynomial on [-pi/4, pi/4]: cos x = 1 - z/2 + z^2 P(z).
#[allow(clippy::excessive_precision)]
const COSF_P: [f32; 3] = [
    2.443_315_711_809_948e-5,
    -1.388_731_625_493_765e-3,
    4.166_664_568_298_827e-2,
];

/// Full 32x32 -> 64-bit product of `a` and `b`, returned as `(hi, lo)`.
#[inline]
pub fn mulhilo32(a: u32, b: u32) -> (u32, u32) {
    let p = u64::from(a) * u64::from(b);
    ((p >> 32) as u32, p as u32)
}

/// The same product as [`mulhilo32`], computed from 16-bit halves exactly as
/// the WGSL port does (WGSL has no 64-bit integers).
///
/// Exposed so CPU tests can check the decomposition against the 64-bit
/// product; no partial sum can overflow because each is bounded by the true
/// high word, which fits in 32 bits.
#[inline]
pub fn mulhilo32_halves(a: u32, b: u32) -> (u32, u32) {
    let (al, ah) = (a & 0xFFFF, a >> 16);
    let (bl, bh) = (b & 0xFFFF, b >> 16);
    let ll = al * bl;
    let lh = al * bh;
    let hl = ah * bl;
    let hh = ah * bh;
    // Carry into bit 32 from the middle column: < 3 * 2^16, no overflow.
    let mid = (ll >> 16) + (lh & 0xFFFF) + (hl & 0xFFFF);
    let hi = hh + (lh >> 16) + (hl >> 16) + (mid >> 16);
    (hi, a.wrapping_mul(b))
}

/// One Philox4x32 round: two multiplies, a word shuffle and the key xor.
#[inline]
fn philox_round(c: [u32; 4], k: [u32; 2]) -> [u32; 4] {
    let (hi0, lo0) = mulhilo32(PHILOX_M0, c[0]);
    let (hi1, lo1) = mulhilo32(PHILOX_M1, c[2]);
    [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0]
}

/// Raw Philox4x32-10 block function (Random123 `philox4x32_R(10, ctr, key)`).
///
/// Ten rounds; the key is bumped by the Weyl constants before rounds 2..=10.
/// Checked against Random123's published known-answer vectors in the tests.
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = philox_round(ctr, key);
    let mut k = key;
    for _ in 1..10 {
        k = [k[0].wrapping_add(PHILOX_W0), k[1].wrapping_add(PHILOX_W1)];
        c = philox_round(c, k);
    }
    c
}

/// Splits a 64-bit seed into the Philox key words `[lo, hi]`.
///
/// This is also the `vec2<u32>` a GPU kernel must receive as its `seed`.
#[inline]
pub fn seed_words(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

/// A kernel's Philox key and stream as its uniform block starts them (`seed_lo`, `seed_hi`,
/// `stream`): the head the fill and custom-MPPI kernels' parameter blocks share.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct SeedStream {
    seed: [u32; 2],
    stream: u32,
}

impl SeedStream {
    /// The key of `seed` ([`seed_words`]) and `stream`.
    pub(crate) fn new(seed: u64, stream: u32) -> Self {
        Self {
            seed: seed_words(seed),
            stream,
        }
    }
}

/// One 128-bit random block for `(seed, stream, counter)`.
///
/// Key = `[seed_lo, seed_hi]`, counter = `[counter_lo, counter_hi, stream_lo,
/// stream_hi]`. With `stream` and `counter` below 2^32 this equals the WGSL
/// `philox(seed, stream, counter)`, which uses `(counter, 0, stream, 0)`.
#[inline]
pub fn philox(seed: u64, stream: u64, counter: u64) -> [u32; 4] {
    philox4x32_10(
        [
            counter as u32,
            (counter >> 32) as u32,
            stream as u32,
            (stream >> 32) as u32,
        ],
        seed_words(seed),
    )
}

/// Sequential convenience wrapper around [`philox`] for CPU-side code that
/// just wants "the next block" of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Philox {
    /// Key of the generator.
    pub seed: u64,
    /// Independent stream id (counter words 2 and 3).
    pub stream: u64,
    /// Index of the next block (counter words 0 and 1).
    pub counter: u64,
}

impl Philox {
    /// Starts `stream` of `seed` at block 0.
    pub fn new(seed: u64, stream: u64) -> Self {
        Self {
            seed,
            stream,
            counter: 0,
        }
    }

    /// Returns block `self.counter` and advances the counter by one.
    pub fn next_block(&mut self) -> [u32; 4] {
        let b = philox(self.seed, self.stream, self.counter);
        self.counter = self.counter.wrapping_add(1);
        b
    }
}

/// Uniform in [0, 1): top 24 bits times 2^-24 (exact, so identical on GPU).
#[inline]
pub fn u01(x: u32) -> f32 {
    (x >> 8) as f32 * INV_2_24
}

/// Uniform in (0, 1]: `(top 24 bits + 1) * 2^-24`; safe to take `ln` of.
#[inline]
pub fn u01_open_closed(x: u32) -> f32 {
    ((x >> 8) + 1) as f32 * INV_2_24
}

/// Uniform in the open interval (0, 1): `(top 23 bits + 0.5) * 2^-23`.
///
/// Only 23 bits are used on purpose: `(top 24 bits + 0.5) * 2^-24` needs 25
/// significant bits, so for half the inputs f32 rounding moves the value (and
/// `x = u32::MAX` would give exactly 1.0). With 23 bits every value is exact
/// and the range is `[2^-24, 1 - 2^-24]`.
#[inline]
pub fn u01_open(x: u32) -> f32 {
    ((x >> 9) as f32 + 0.5) * INV_2_23
}

/// Natural logarithm in f32, cephes `logf` with the same operation order as
/// the WGSL `ln_f32`, so CPU and GPU agree to about one ulp.
///
/// Domain: finite, positive, normal `x` (the RNG only passes values in
/// `[2^-24, 17]`). `ln_f32(1.0)` is exactly 0. Measured against f64 `ln`
/// (see `tests/rng_cpu.rs`): max relative error 8.1e-8 (0.83 ulp of the
/// result) over all `k * 2^-24`, `k = 1..=2^24`, all `u01_open` outputs and a
/// sweep of positive normal floats up to 32. Zero or subnormal input gives a
/// finite value near -88 instead of -inf.
pub fn ln_f32(x: f32) -> f32 {
    // frexp: x = m * 2^e with m in [0.5, 1).
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xFF) as i32 - 126;
    let mut m = f32::from_bits((bits & 0x807F_FFFF) | 0x3F00_0000);
    // Bring the mantissa into [sqrt(1/2), sqrt(2)) and subtract 1 (exact).
    if m < FRAC_1_SQRT_2 {
        e -= 1;
        m = m + m - 1.0;
    } else {
        m -= 1.0;
    }
    let z = m * m;
    let mut p = LOGF_P[0];
    for &c in &LOGF_P[1..] {
        p = p * m + c;
    }
    let mut y = p * m * z;
    let fe = e as f32;
    y += LN2_LO * fe;
    y += -0.5 * z;
    let r = m + y;
    r + LN2_HI * fe
}

/// `(sin(2 pi t), cos(2 pi t))` in f32, written to match the WGSL
/// `sincos_2pi` operation for operation.
///
/// The argument is reduced exactly: `t - round(t)` (ties to even, like WGSL
/// `round`), quadrant `q = round(4 t)`, `r = t - q / 4` in [-1/8, 1/8]; then
/// `x = 2 pi r` in [-pi/4, pi/4] goes through the cephes `sinf`/`cosf`
/// polynomials and the result is rotated by the quadrant. Measured against
/// f64 (see `tests/rng_cpu.rs`): max absolute error 9.1e-8 over all
/// `t = k * 2^-24` in [0, 1) and a sweep of t in about [-4, 4].
pub fn sincos_2pi(t: f32) -> (f32, f32) {
    let tr = t - t.round_ties_even();
    let q = (4.0 * tr).round_ties_even();
    let r = tr - 0.25 * q;
    let x = TAU * r;
    let z = x * x;
    let s = ((SINF_P[0] * z + SINF_P[1]) * z + SINF_P[2]) * z * x + x;
    let c = ((COSF_P[0] * z + COSF_P[1]) * z + COSF_P[2]) * z * z - 0.5 * z + 1.0;
    // Rotate by q quarter turns: odd quadrants swap sin/cos, then fix signs.
    let j = (q as i32) & 3;
    let swap = (j & 1) != 0;
    let (sn, cs) = if swap { (c, s) } else { (s, c) };
    let sn = if (j & 2) != 0 { -sn } else { sn };
    let cs = if ((j + 1) & 2) != 0 { -cs } else { cs };
    (sn, cs)
}

/// Four standard normals from one block by Box-Muller:
/// `(x0, x1) -> (r cos, r sin)` with `r = sqrt(-2 ln u01_open_closed(x0))`,
/// angle `2 pi u01(x1)`; likewise `(x2, x3)`.
///
/// The radius is at most `sqrt(48 ln 2) ~= 5.77` because `u >= 2^-24`. It is
/// computed as `sqrt(|2 ln u|)`, equal to `sqrt(-2 ln u)` for `ln u <= 0`,
/// so `u = 1` gives `sqrt(+0)` rather than `sqrt(-0)` (a GPU that computes
/// `sqrt` as `x * rsqrt(x)` could turn `-0` into NaN).
pub fn normal4(block: [u32; 4]) -> [f32; 4] {
    let r0 = (2.0 * ln_f32(u01_open_closed(block[0]))).abs().sqrt();
    let (s0, c0) = sincos_2pi(u01(block[1]));
    let r1 = (2.0 * ln_f32(u01_open_closed(block[2]))).abs().sqrt();
    let (s1, c1) = sincos_2pi(u01(block[3]));
    [r0 * c0, r0 * s0, r1 * c1, r1 * s1]
}

/// One standard Gumbel draw, `-ln(-ln(u01_open(x)))` (for the Gumbel-max
/// trick). Always finite, in about [-2.8, 16.7]; WGSL `gumbel1`.
#[inline]
pub fn gumbel1(x: u32) -> f32 {
    -ln_f32(-ln_f32(u01_open(x)))
}

/// Four standard Gumbel draws, [`gumbel1`] of each word of the block.
pub fn gumbel4(block: [u32; 4]) -> [f32; 4] {
    block.map(gumbel1)
}

/// Fills `n` values of `stream` with the GPU layout: element `j` is lane
/// `j % 4` of `f(philox(seed, stream, j / 4))`.
fn fill<T: Copy>(seed: u64, stream: u32, n: usize, f: impl Fn([u32; 4]) -> [T; 4]) -> Vec<T> {
    let blocks = n.div_ceil(4);
    assert!(
        blocks as u64 <= 1 << 32,
        "at most 2^34 elements per stream (the block counter is a u32)"
    );
    let mut out = Vec::with_capacity(n);
    for i in 0..blocks {
        let vals = f(philox(seed, u64::from(stream), i as u64));
        let take = (n - 4 * i).min(4);
        out.extend_from_slice(&vals[..take]);
    }
    out
}

/// `n` raw `u32` words of `stream` (element `j` = lane `j % 4` of block `j / 4`).
pub fn u32s(seed: u64, stream: u32, n: usize) -> Vec<u32> {
    fill(seed, stream, n, |b| b)
}

/// `n` uniforms in [0, 1) of `stream`: [`u01`] of each word of [`u32s`].
pub fn uniforms(seed: u64, stream: u32, n: usize) -> Vec<f32> {
    fill(seed, stream, n, |b| b.map(u01))
}

/// `n` standard normals of `stream`: element `j` = lane `j % 4` of
/// [`normal4`] of block `j / 4`, exactly the GPU fill kernel's layout.
pub fn normals(seed: u64, stream: u32, n: usize) -> Vec<f32> {
    fill(seed, stream, n, normal4)
}

/// `n` standard Gumbel draws of `stream`, same layout via [`gumbel4`].
pub fn gumbels(seed: u64, stream: u32, n: usize) -> Vec<f32> {
    fill(seed, stream, n, gumbel4)
}

/// Complementary error function in f64, absolute error below 1e-15.
///
/// For `z < 2.5`, `1 - erf(z)` with the positive series
/// `erf z = 2/sqrt(pi) e^{-z^2} sum 2^n z^{2n+1} / (1*3*...*(2n+1))` (no
/// cancellation); above, the Laplace continued fraction
/// `erfc z = e^{-z^2}/sqrt(pi) / (z + (1/2)/(z + 1/(z + (3/2)/(z + ...))))`
/// evaluated bottom-up.
fn erfc(z: f64) -> f64 {
    use core::f64::consts::FRAC_2_SQRT_PI;
    if z.is_nan() {
        return f64::NAN;
    }
    if z < 0.0 {
        return 2.0 - erfc(-z);
    }
    if z < 2.5 {
        let z2 = z * z;
        let mut term = z;
        let mut sum = z;
        let mut n = 0.0;
        while term > 1e-17 * sum {
            term *= 2.0 * z2 / (2.0 * n + 3.0);
            sum += term;
            n += 1.0;
        }
        1.0 - FRAC_2_SQRT_PI * (-z2).exp() * sum
    } else if z < 27.0 {
        let mut f = z;
        for k in (1..=100).rev() {
            f = z + 0.5 * f64::from(k) / f;
        }
        0.5 * FRAC_2_SQRT_PI * (-z * z).exp() / f
    } else {
        0.0
    }
}

/// Standard normal CDF `Phi(x) = erfc(-x / sqrt 2) / 2` in f64, absolute
/// error below 1e-9 (about 1e-15 in practice).
///
/// Used by the Kolmogorov-Smirnov checks of the CPU and GPU normal samplers.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x * core::f64::consts::FRAC_1_SQRT_2)
}

/// Kolmogorov-Smirnov distance `sup |F_n - Phi|` between the empirical CDF
/// of `samples` and the standard normal CDF.
///
/// Sorts `samples` in place. Compare against `c(alpha) / sqrt(n)`, e.g.
/// `1.95 / sqrt(n)` for alpha = 0.001.
///
/// # Panics
/// If `samples` is empty or contains a non-finite value (a NaN from a broken
/// kernel should fail loudly, not sort somewhere harmless).
pub fn ks_distance_normal(samples: &mut [f64]) -> f64 {
    assert!(!samples.is_empty(), "ks_distance_normal: no samples");
    if let Some(i) = samples.iter().position(|x| !x.is_finite()) {
        panic!("ks_distance_normal: sample {i} is {}", samples[i]);
    }
    samples.sort_unstable_by(f64::total_cmp);
    let n = samples.len() as f64;
    samples
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = normal_cdf(x);
            let below = f - i as f64 / n;
            let above = (i + 1) as f64 / n - f;
            below.max(above)
        })
        .fold(0.0, f64::max)
}
