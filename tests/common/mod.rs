//! Shared test harness: the adapter at hand opened twice (shader checks on and off), random
//! inputs and comparisons. There is no skip: without an adapter every GPU test fails with
//! pompc's own message on how to get one.
#![allow(dead_code)]

use pompc::{Gpu, GpuOptions, ShaderChecks};
use rand::{Rng, SeedableRng};
use std::sync::OnceLock;

/// Both check modes on the default adapter, opened once per test binary.
pub fn gpus() -> &'static [Gpu] {
    static GPUS: OnceLock<Vec<Gpu>> = OnceLock::new();
    GPUS.get_or_init(|| {
        [ShaderChecks::Checked, ShaderChecks::Trusted]
            .into_iter()
            .map(|c| {
                let g = Gpu::new(GpuOptions::default().with_checks(c))
                    .unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
                eprintln!("test adapter: {}", g.describe());
                g
            })
            .collect()
    })
}

/// A fresh RNG; prints its seed so a failure can be replayed with POMPC_TEST_SEED.
pub fn rng(tag: &str) -> rand::rngs::StdRng {
    let seed = std::env::var("POMPC_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    eprintln!("{tag}: seed {seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// `n` values uniform in [-scale, scale).
pub fn uniform(r: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| r.random_range(-scale..scale)).collect()
}

/// Largest |gpu - reference| / max(|reference|, rms(reference)): relative error per element,
/// floored at the output's scale so that exact zeros of the reference do not divide by zero.
/// NaN (an element the kernel failed to write, the outputs being poisoned) gives infinity.
pub fn rel_error(gpu: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(gpu.len(), reference.len(), "output length");
    let rms = (reference.iter().map(|v| v * v).sum::<f64>() / reference.len().max(1) as f64)
        .sqrt()
        .max(1e-30);
    gpu.iter()
        .zip(reference)
        .map(|(g, r)| {
            let d = (*g as f64 - r).abs() / r.abs().max(rms);
            if d.is_nan() { f64::INFINITY } else { d }
        })
        .fold(0.0, f64::max)
}

/// The NaN bit pattern used to poison outputs before a kernel runs.
pub const POISON: u32 = 0x7fc0_0000;
