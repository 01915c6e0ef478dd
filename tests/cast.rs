//! The f32 -> f16 conversion kernel against its mirror (round to nearest even; WGSL allows
//! either neighbour for values between two f16 numbers, so those may differ by one unit in
//! the last place, and nothing else may), and the planner's f16 copy of a trainer's f32
//! parameters (`WorldModel::record_copy_from`) against a model uploaded in f16 directly.

mod common;

use common::{gpus, rel_error, rng, uniform};
use half::f16;
use pompc::kernels::cast::record_to_f16;
use pompc::model::{ModelSpec, Net, NetInput, Weights, Workspace, WorldModel};
use pompc::reference::cast::to_f16;
use pompc::train::ParamLayout;
use pompc::{Error, GpuBuffer, Precision, Recorder};
use rand::Rng;

#[test]
fn f16_conversion_matches_the_mirror() {
    let mut r = rng("cast f16");
    for gpu in gpus() {
        let src = GpuBuffer::from_slice(gpu, "src", &[1.0f32; 8]).unwrap();
        if !gpu.features().shader_f16 {
            eprintln!(
                "cast: no shader-f16 on {}: checking the refusal",
                gpu.describe()
            );
            let dst = GpuBuffer::<f16>::new(gpu, "dst", 8);
            if let Ok(dst) = dst {
                let mut rec = Recorder::new(gpu);
                let e = record_to_f16(&mut rec, &src, 0, &dst, 0, 8).unwrap_err();
                assert!(matches!(e, Error::Unsupported(_)), "{e}");
            }
            continue;
        }
        for case in 0..4 {
            let n = r.random_range(1..5000);
            let (so, doff) = (r.random_range(0..40), r.random_range(0..40));
            // Ordinary weights, f16 subnormals, values near the top of f16's range, and
            // values exactly halfway between two f16 numbers (ties go to even).
            let mut v = match case {
                0 => uniform(&mut r, so + n, 1.0),
                1 => uniform(&mut r, so + n, 1e-5),
                2 => uniform(&mut r, so + n, 60000.0),
                _ => (0..so + n)
                    .map(|_| {
                        let h = f16::from_bits(r.random_range(0x0400..0x7800));
                        let next = f16::from_bits(h.to_bits() + 1);
                        (h.to_f32() + next.to_f32()) / 2.0
                    })
                    .collect(),
            };
            v[so] = 0.5;
            let src = GpuBuffer::from_slice(gpu, "src", &v).unwrap();
            let dst = GpuBuffer::<f16>::new(gpu, "dst", doff + n + 7).unwrap();
            dst.fill_u32(gpu, 0x7e00_7e00).unwrap();
            let mut rec = Recorder::new(gpu);
            record_to_f16(&mut rec, &src, so, &dst, doff, n).unwrap();
            let h = rec.read(&dst);
            let got = rec.finish().unwrap().get(&h).unwrap();
            let want = to_f16(&v[so..]);
            for (i, g) in got.iter().enumerate() {
                if i < doff || i >= doff + n {
                    assert_eq!(
                        g.to_bits(),
                        0x7e00,
                        "element {i} outside the range was written"
                    );
                    continue;
                }
                let (w, x) = (want[i - doff], v[so + i - doff]);
                let exact = w.to_f32() == x;
                let d = (g.to_bits() as i32 - w.to_bits() as i32).abs();
                assert!(
                    if exact { d == 0 } else { d <= 1 },
                    "case {case} {}: {x:e} -> {g} (bits {:#x}), mirror {w} ({:#x})",
                    gpu.describe(),
                    g.to_bits(),
                    w.to_bits()
                );
            }
        }
    }
}

#[test]
fn planner_copies_trainer_parameters_into_f16_weights() {
    let spec = ModelSpec::tiny(5, 2);
    let (old, new) = (
        Weights::init(&spec, 1).unwrap(),
        Weights::init(&spec, 2).unwrap(),
    );
    let layout = ParamLayout::new(&spec);
    let mut r = rng("cast planner copy");
    let m = 37;
    let z = uniform(&mut r, m * spec.latent_dim, 1.0);
    let a = uniform(&mut r, m * spec.action_dim, 1.0);
    for gpu in gpus() {
        if gpu.supports(Precision::F16).is_err() {
            // No f16 planner to copy into: asking for one must say so.
            let r = WorldModel::with_precision(gpu, &old, Precision::F16);
            assert!(
                matches!(r, Err(Error::Unsupported(_))),
                "f16 model accepted"
            );
            continue;
        }
        let flat = GpuBuffer::from_slice(gpu, "flat", &layout.flatten(&new).unwrap()).unwrap();
        let copied = WorldModel::with_precision(gpu, &old, Precision::F16).unwrap();
        let direct = WorldModel::with_precision(gpu, &new, Precision::F16).unwrap();
        let ws = Workspace::new(gpu, &spec, m).unwrap();
        let (zb, ab) = (
            GpuBuffer::from_slice(gpu, "z", &z).unwrap(),
            GpuBuffer::from_slice(gpu, "a", &a).unwrap(),
        );
        let forward = |model: &WorldModel, copy: bool| -> Vec<f32> {
            let out = GpuBuffer::<f32>::new(gpu, "out", m * spec.latent_dim).unwrap();
            let mut rec = Recorder::new(gpu);
            if copy {
                model
                    .record_copy_from(&mut rec, &flat, |n| layout.offset(n))
                    .unwrap();
            }
            let net = model.net(Net::Dynamics).unwrap();
            net.record(&mut rec, m, NetInput::new(&zb, Some(&ab)), None, &ws, &out)
                .unwrap();
            let h = rec.read(&out);
            rec.finish().unwrap().get(&h).unwrap()
        };
        let want: Vec<f64> = forward(&direct, false).iter().map(|&v| v as f64).collect();
        let before: Vec<f32> = forward(&copied, false);
        let after = forward(&copied, true);
        // The old weights give another function: the comparison can tell a missing copy.
        assert!(rel_error(&before, &want) > 0.05, "seeds 1 and 2 agree");
        let e = rel_error(&after, &want);
        eprintln!("planner copy at f16 on {}: error {e:e}", gpu.describe());
        assert!(
            e <= 2e-3,
            "copied f16 weights differ from an f16 upload: {e:e}"
        );
    }
}
