//! Philox on the GPU against the Rust implementation: u32 and uniform draws bit-identical,
//! normals and Gumbels within 1e-6, and the distribution of 10^6 GPU normals.

mod common;

use common::{POISON, gpus};
use pompc::kernels::rng_fill::{Distribution, record_fill};
use pompc::{Gpu, GpuBuffer, Recorder, reference, rng};
use rand::Rng;

fn gpu_fill(gpu: &Gpu, dist: Distribution, seed: u64, stream: u32, n: usize) -> Vec<u32> {
    let out = GpuBuffer::<u32>::new(gpu, "draws", n).unwrap();
    out.fill_u32(gpu, POISON).unwrap();
    let mut rec = Recorder::new(gpu);
    record_fill(&mut rec, &out, dist, seed, stream).unwrap();
    let h = rec.read(&out);
    rec.finish().unwrap().get(&h).unwrap()
}

#[test]
fn gpu_draws_match_rust() {
    let mut r = common::rng("rng_match");
    for gpu in gpus() {
        for _ in 0..3 {
            let seed: u64 = r.random();
            let stream: u32 = r.random();
            // Lengths that are not a multiple of 4: the last block is partly used (and a write
            // past the end would land in the buffer's canary guard).
            let n = 4 * r.random_range(0..1250) + r.random_range(1..4);
            for dist in Distribution::ALL {
                let got = gpu_fill(gpu, dist, seed, stream, n);
                let want = reference::rng_fill::fill(dist, seed, stream, n);
                match dist {
                    Distribution::Bits | Distribution::Uniform => {
                        assert_eq!(got, want, "{dist:?} seed {seed} stream {stream}")
                    }
                    Distribution::Normal | Distribution::Gumbel => {
                        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                            let (g, w) = (f32::from_bits(*g), f32::from_bits(*w));
                            assert!(
                                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                                "{dist:?} element {i}: gpu {g} rust {w} (seed {seed})"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn a_million_gpu_normals_are_standard_normal() {
    let mut r = common::rng("rng_stats");
    let gpu = &gpus()[1];
    let n = 1_000_000;
    let bits = gpu_fill(gpu, Distribution::Normal, r.random(), r.random(), n);
    let mut x: Vec<f64> = bits.iter().map(|b| f32::from_bits(*b) as f64).collect();
    let mean = x.iter().sum::<f64>() / n as f64;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1) as f64;
    // Standard errors: 1e-3 for the mean, 1.4e-3 for the variance; 5 sigma bounds.
    assert!(mean.abs() < 5e-3, "mean {mean}");
    assert!((var - 1.0).abs() < 7e-3, "variance {var}");
    let d = rng::ks_distance_normal(&mut x);
    // Critical value of the KS statistic at alpha = 0.001.
    let crit = 1.95 / (n as f64).sqrt();
    assert!(d < crit, "KS distance {d} >= {crit}");
}

#[test]
fn streams_and_seeds_differ() {
    let gpu = &gpus()[1];
    let a = gpu_fill(gpu, Distribution::Bits, 1, 0, 64);
    let b = gpu_fill(gpu, Distribution::Bits, 1, 1, 64);
    let c = gpu_fill(gpu, Distribution::Bits, 2, 0, 64);
    assert_ne!(a, b);
    assert_ne!(a, c);
}
