//! `Recorder::encode` then `Encoded::submit`: the trainer encodes its update while a plan step
//! runs and submits it afterwards. The encoded work must see every upload and submit issued
//! before its own submit, keep its own uniform parameters through submits in between, and
//! bring its read-backs home; with a `BindCache`, steps that reuse bind groups and the uniform
//! buffer must still each run with their own parameters.

mod common;

use common::{POISON, gpus};
use pompc::gpu::{BindCache, ReadbackHandle};
use pompc::kernels::rng_fill::{Distribution, record_fill};
use pompc::{GpuBuffer, Recorder, reference};
use rand::Rng;

#[test]
fn encoded_work_runs_after_what_was_submitted_in_between() {
    let mut r = common::rng("recorder_encode");
    for gpu in gpus() {
        for _ in 0..3 {
            let n = r.random_range(1..3000);
            let (seed, stream): (u64, u32) = (r.random(), r.random());
            let draws = GpuBuffer::<u32>::new(gpu, "draws", n).unwrap();
            draws.fill_u32(gpu, POISON).unwrap();
            let x0: Vec<f32> = (0..n).map(|_| r.random_range(-1.0..1.0)).collect();
            let x = GpuBuffer::from_slice(gpu, "x", &x0).unwrap();
            let y = GpuBuffer::<f32>::new(gpu, "y", n).unwrap();

            let mut rec = Recorder::new(gpu);
            record_fill(&mut rec, &draws, Distribution::Bits, seed, stream).unwrap();
            rec.copy(&x, &y).unwrap();
            let (hd, hy) = (rec.read(&draws), rec.read(&y));
            let encoded = rec.encode().unwrap();

            // In between: another batch with its own parameters, submitted and finished, and
            // a new upload of x.
            let other = GpuBuffer::<u32>::new(gpu, "other", n).unwrap();
            let mut rec2 = Recorder::new(gpu);
            record_fill(&mut rec2, &other, Distribution::Bits, !seed, stream ^ 1).unwrap();
            let ho = rec2.read(&other);
            let other_draws = rec2.finish().unwrap().get(&ho).unwrap();
            let x1: Vec<f32> = (0..n).map(|_| r.random_range(-1.0..1.0)).collect();
            x.upload(gpu, &x1).unwrap();

            let out = encoded.submit().unwrap().wait().unwrap();
            assert_eq!(
                out.get(&hd).unwrap(),
                reference::rng_fill::fill(Distribution::Bits, seed, stream, n),
                "the encoded fill kept its own seed and stream"
            );
            assert_eq!(
                out.get(&hy).unwrap(),
                x1,
                "the upload before the submit is seen"
            );
            assert_eq!(
                other_draws,
                reference::rng_fill::fill(Distribution::Bits, !seed, stream ^ 1, n)
            );
        }
    }
}

// One fill of `n` draws per (seed, stream) into `outs[i]`, through `cache`, encoded only.
fn encoded_fills<'g>(
    gpu: &'g pompc::Gpu,
    cache: &BindCache,
    outs: &[&GpuBuffer<u32>],
    keys: &[(u64, u32)],
) -> (pompc::gpu::Encoded<'g>, Vec<ReadbackHandle<u32>>) {
    let mut rec = Recorder::new(gpu).with_cache(cache);
    for (out, &(seed, stream)) in outs.iter().zip(keys) {
        record_fill(&mut rec, out, Distribution::Bits, seed, stream).unwrap();
    }
    let handles = outs.iter().map(|o| rec.read(o)).collect();
    (rec.encode().unwrap(), handles)
}

#[test]
fn a_bind_cache_keeps_each_submissions_parameters() {
    let mut r = common::rng("recorder_cache");
    for gpu in gpus() {
        let n = r.random_range(1..2000);
        let bufs: Vec<GpuBuffer<u32>> = (0..3)
            .map(|i| GpuBuffer::new(gpu, &format!("draws {i}"), n).unwrap())
            .collect();
        let cache = BindCache::new();
        let check =
            |out: &pompc::gpu::Readback, hs: &[ReadbackHandle<u32>], keys: &[(u64, u32)]| {
                for (h, &(seed, stream)) in hs.iter().zip(keys) {
                    assert_eq!(
                        out.get(h).unwrap(),
                        reference::rng_fill::fill(Distribution::Bits, seed, stream, n),
                        "seed {seed} stream {stream}"
                    );
                }
            };
        // Steps of the same shape with new parameters, alternating output buffers; then a
        // step with more dispatches (the uniform buffer grows).
        for step in 0..8 {
            let count = if step < 6 { 2 } else { 3 };
            let outs: Vec<&GpuBuffer<u32>> = (0..count).map(|i| &bufs[(i + step) % 3]).collect();
            let keys: Vec<(u64, u32)> = (0..count).map(|_| (r.random(), r.random())).collect();
            let (enc, hs) = encoded_fills(gpu, &cache, &outs, &keys);
            check(&enc.submit().unwrap().wait().unwrap(), &hs, &keys);
            assert!(
                !cache.is_empty() && cache.len() <= 4 * 3,
                "{} bind groups",
                cache.len()
            );
        }
        // Two steps encoded before either is submitted share the cached uniform buffer: each
        // must run with its own parameters.
        let outs = [&bufs[0], &bufs[1]];
        let keys_a: Vec<(u64, u32)> = (0..2).map(|_| (r.random(), r.random())).collect();
        let keys_b: Vec<(u64, u32)> = (0..2).map(|_| (r.random(), r.random())).collect();
        let (enc_a, hs_a) = encoded_fills(gpu, &cache, &outs, &keys_a);
        let (enc_b, hs_b) = encoded_fills(gpu, &cache, &outs, &keys_b);
        let pending_a = enc_a.submit().unwrap();
        let pending_b = enc_b.submit().unwrap();
        check(&pending_a.wait().unwrap(), &hs_a, &keys_a);
        check(&pending_b.wait().unwrap(), &hs_b, &keys_b);
    }
}

/// Read-back buffers and timestamp queries are pooled across submissions: reads of growing,
/// shrinking and odd sizes (a pooled buffer bigger than the read, with stale data past it),
/// with and without timestamps, sleeping and spinning waits, each bring back exactly what was
/// uploaded.
#[test]
fn pooled_read_backs_return_exactly_each_submissions_data() {
    let mut r = common::rng("recorder_pool");
    for gpu in gpus() {
        let spin = gpu.spin_wait();
        for round in 0..12 {
            gpu.set_spin_wait(if round % 2 == 0 {
                std::time::Duration::ZERO
            } else {
                std::time::Duration::from_micros(200)
            })
            .unwrap();
            let n = match round % 4 {
                0 => r.random_range(1..8),
                1 => r.random_range(5000..20000),
                2 => r.random_range(100..300),
                _ => r.random_range(1..64),
            };
            let a: Vec<f32> = common::uniform(&mut r, n, 10.0);
            let b: Vec<f32> = common::uniform(&mut r, n / 2 + 1, 10.0);
            let (xa, xb) = (
                GpuBuffer::from_slice(gpu, "a", &a).unwrap(),
                GpuBuffer::from_slice(gpu, "b", &b).unwrap(),
            );
            let draws = GpuBuffer::<u32>::new(gpu, "draws", n).unwrap();
            let (seed, stream): (u64, u32) = (r.random(), r.random());
            let mut rec = Recorder::new(gpu);
            if round % 3 == 0 {
                rec = rec.with_timestamps();
            }
            record_fill(&mut rec, &draws, Distribution::Bits, seed, stream).unwrap();
            let (ha, hd, hb) = (rec.read(&xa), rec.read(&draws), rec.read(&xb));
            let out = rec.finish().unwrap();
            assert_eq!(
                out.get(&hd).unwrap(),
                reference::rng_fill::fill(Distribution::Bits, seed, stream, n)
            );
            assert_eq!(out.get(&ha).unwrap(), a, "round {round}, {n} values");
            assert_eq!(out.get(&hb).unwrap(), b, "round {round}");
            if round % 3 == 0 && gpu.features().timestamps {
                let t = out.timing.gpu_seconds.expect("timestamps asked for");
                assert!((0.0..1.0).contains(&t), "GPU time {t} s");
            }
        }
        gpu.set_spin_wait(spin).unwrap();
        assert!(
            gpu.set_spin_wait(std::time::Duration::from_secs(2))
                .is_err()
        );
    }
}
