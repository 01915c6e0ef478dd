//! `Recorder::encode` then `Encoded::submit`: the trainer encodes its update while a plan step
//! runs and submits it afterwards. The encoded work must see every upload and submit issued
//! before its own submit, keep its own uniform parameters through submits in between, and
//! bring its read-backs home.

mod common;

use common::{POISON, gpus};
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
