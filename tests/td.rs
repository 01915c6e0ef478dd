//! The value-head helpers (`shaders/td.wgsl`) against their f64 mirror on fresh random inputs
//! with poisoned outputs, and the decode gradient against central finite differences of the
//! decoded value; its per-block weights against the mirror with each block's scale.
//!
//! Tolerances: TD targets 1e-6 relative (one fma and a min). Decode gradient: 1e-4 of the
//! row's largest gradient entry: f32 softmax and exp(|y|) with |y| up to 4 carry relative
//! errors of a few 1e-7 times exp(|y|) ~ 50, and the bin differences cancel.

mod common;

use common::{POISON, gpus, rel_error, rng, uniform};
use pompc::kernels::td;
use pompc::kernels::two_hot::TwoHotConfig;
use pompc::reference::td as mirror;
use pompc::{GpuBuffer, Recorder};
use rand::Rng;

#[test]
fn td_targets_match_the_mirror() {
    let mut r = rng("td targets");
    let rows = 77;
    let reward = uniform(&mut r, rows, 3.0);
    let q = uniform(&mut r, 2 * rows + 5, 20.0);
    let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let want = mirror::td_target(&f(&reward), &f(&q[..rows]), &f(&q[rows + 5..]), 0.99);
    for gpu in gpus() {
        let rb = GpuBuffer::from_slice(gpu, "reward", &reward).unwrap();
        let qb = GpuBuffer::from_slice(gpu, "q", &q).unwrap();
        let yb = GpuBuffer::<f32>::new(gpu, "y", rows).unwrap();
        yb.fill_u32(gpu, POISON).unwrap();
        let mut rec = Recorder::new(gpu);
        td::record_td_target(&mut rec, rows, 0.99, &rb, &qb, rows + 5, &yb).unwrap();
        let h = rec.read(&yb);
        let got = rec.finish().unwrap().get(&h).unwrap();
        let e = rel_error(&got, &want);
        assert!(e < 1e-6, "TD targets: {e:e}");
    }
}

#[test]
fn decode_gradient_matches_the_mirror_and_finite_differences() {
    let mut r = rng("decode gradient");
    for cfg in [
        TwoHotConfig::TDMPC2,
        TwoHotConfig::new(7, -2.0, 3.0).unwrap(),
    ] {
        let rows = 37;
        let bins = cfg.bins;
        // Logits spread so that decoded values range over a few units of symlog space.
        let logits: Vec<f32> = (0..rows * bins)
            .map(|_| r.random_range(-3.0f32..3.0))
            .collect();
        let l64: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
        let scale = -0.7;
        let want = mirror::decode_grad(&l64, bins, cfg.vmin as f64, cfg.vmax as f64, scale);
        // The mirror against central differences of symexp(sum softmax * bins).
        let value = |row: &[f64]| {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = row.iter().map(|l| (l - m).exp()).collect();
            let s: f64 = e.iter().sum();
            let bin = |j: usize| {
                cfg.vmin as f64 + j as f64 * (cfg.vmax - cfg.vmin) as f64 / (bins - 1) as f64
            };
            let y: f64 = e.iter().enumerate().map(|(j, v)| v * bin(j)).sum::<f64>() / s;
            y.signum() * y.abs().exp_m1()
        };
        for row in 0..3 {
            for j in [0, bins / 2, bins - 1] {
                let mut p = l64[row * bins..(row + 1) * bins].to_vec();
                let h = 1e-6;
                p[j] += h;
                let up = value(&p);
                p[j] -= 2.0 * h;
                let down = value(&p);
                let fd = scale * (up - down) / (2.0 * h);
                let g = want[row * bins + j];
                assert!(
                    (fd - g).abs() <= 1e-6 * (1.0 + g.abs()),
                    "fd {fd} mirror {g}"
                );
            }
        }
        // Blocks of 5 rows weighted 0, 1 or at random (the last block short).
        let per = 5;
        let weights: Vec<f32> = (0..rows.div_ceil(per))
            .map(|i| [0.0, 1.0, r.random_range(-2.0f32..2.0)][i % 3])
            .collect();
        let weighted: Vec<f64> = l64
            .chunks(per * bins)
            .zip(&weights)
            .flat_map(|(block, &w)| {
                let s = scale * w as f64;
                mirror::decode_grad(block, bins, cfg.vmin as f64, cfg.vmax as f64, s)
            })
            .collect();
        for gpu in gpus() {
            for weighted_run in [false, true] {
                let lb = GpuBuffer::from_slice(gpu, "logits", &logits).unwrap();
                let wb = GpuBuffer::from_slice(gpu, "weights", &weights).unwrap();
                let gb = GpuBuffer::<f32>::new(gpu, "grad", rows * bins + 3).unwrap();
                gb.fill_u32(gpu, POISON).unwrap();
                let mut rec = Recorder::new(gpu);
                let (w_in, want) = if weighted_run {
                    (Some((&wb, per)), &weighted)
                } else {
                    (None, &want)
                };
                let s = scale as f32;
                td::record_decode_grad_weighted(&mut rec, &cfg, rows, (&lb, 0), s, w_in, (&gb, 3))
                    .unwrap();
                let h = rec.read(&gb);
                let got = rec.finish().unwrap().get(&h).unwrap();
                for row in 0..rows {
                    let w = &want[row * bins..(row + 1) * bins];
                    let g = &got[3 + row * bins..3 + (row + 1) * bins];
                    let big = w.iter().fold(0.0f64, |a, v| a.max(v.abs()));
                    for (a, b) in g.iter().zip(w) {
                        assert!(
                            (*a as f64 - b).abs() <= 1e-4 * big,
                            "row {row}: gpu {a} mirror {b} ({})",
                            gpu.describe()
                        );
                    }
                }
            }
        }
    }
}
