//! The f16 and tensor-core paths of the linear layer and the world model.
//!
//! - f16 storage (Z, W, Y in f16, f32 arithmetic): every storage combination the world model
//!   uses (f32 or f16 in, f16 or f32 out), with LayerNorm, every activation, concatenated
//!   inputs, ensembles with a head map, and K-splits, against the f64 mirror of the layer on
//!   the f16-rounded inputs. Runs wherever the adapter has shader-f16 (lavapipe does).
//! - tensor cores: the same with `Precision::TensorCore` and every `CoopTile`, against the
//!   mirror with X = [Z | A] and W rounded to f16. Where the adapter has no cooperative
//!   matrices the test checks the contract instead: asking for tensor cores is
//!   `Error::Unsupported`, and automatic precision runs the f32 kernel. Each test prints the
//!   path it exercised.
//! - the tiny world model at f16 (and tensor cores) against itself at f32.
//!
//! Tolerances (relative to max(|reference|, rms(reference)) per element): f32 outputs 1e-5 for
//! f16 storage (the inputs are exactly the rounded values, so only f32 summation differs) and
//! 2e-4 for tensor cores (f32 partial sums of exact f16 products, then LayerNorm); f16 outputs
//! 1e-3 (rounding the output costs up to 2^-11 = 4.9e-4 of it). The f16 model against the f32
//! one: 5e-2, a loose bound on ~3 layers of 2^-11 weight and activation rounding.

mod common;

use common::{POISON, gpus, rel_error, rng, uniform};
use half::f16;
use pompc::kernels::gemm_coop::CoopTile;
use pompc::kernels::linear::{
    Activation, CoopPlan, Element, Linear, LinearConfig, LinearInputs, LinearKernel, LinearPlan,
    Tile,
};
use pompc::model::{ModelSpec, NetInput, Weights, Workspace, WorldModel};
use pompc::reference::linear::{InputBlocks, linear as mirror, round_f16};
use pompc::{Error, Gpu, GpuBuffer, GpuOptions, Precision, Recorder};
use rand::Rng;

trait Store: Element {
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl Store for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Store for f16 {
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

fn store<T: Store>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
}

/// One call of `layer` with Z, W, Y stored as X, W, Y; returns the relative error against the
/// mirror on the rounded inputs, and the kernel used.
fn run<X: Store, W: Store, Y: Store>(
    gpu: &Gpu,
    r: &mut impl Rng,
    layer: &Linear,
    m: usize,
    heads: Option<&[u32]>,
) -> (f64, LinearKernel) {
    let cfg = *layer.config();
    let e = cfg.members;
    let slots = heads.map_or(e, |h| h.len());
    let ins = if cfg.shared_input { 1 } else { slots };
    let k2 = cfg.k - cfg.k1;
    let mut z = uniform(r, ins * m * cfg.k1, 1.0);
    let a = uniform(r, ins * m * k2, 1.0);
    let mut w = uniform(r, e * cfg.n * cfg.k, 1.0 / (cfg.k as f32).sqrt());
    let b = uniform(r, e * cfg.n, 1.0);
    let g = uniform(r, e * cfg.n, 2.0);
    let be = uniform(r, e * cfg.n, 1.0);
    let coop = matches!(layer.kernel_on(gpu, m, slots), LinearKernel::TensorCore(_));
    // f16 storage rounds Z and W as they are stored; the tensor-core path (its own mirror)
    // also rounds A, and Z and W again (a no-op once stored as f16), as it stages them.
    if X::F16 {
        z = round_f16(&z);
    }
    if W::F16 {
        w = round_f16(&w);
    }
    let ln = cfg.layer_norm.then_some((g.as_slice(), be.as_slice()));
    let staged = |v: &[f32]| if coop { round_f16(v) } else { v.to_vec() };
    let want = mirror(
        &cfg,
        m,
        InputBlocks::packed(&cfg, m, 1, heads.map(<[u32]>::len)),
        &staged(&z),
        &staged(&a),
        &staged(&w),
        &b,
        ln,
        heads,
    );

    let zb = GpuBuffer::from_slice(gpu, "z", &store::<X>(&z)).unwrap();
    let ab = GpuBuffer::from_slice(gpu, "a", &a).unwrap();
    let wb = GpuBuffer::from_slice(gpu, "w", &store::<W>(&w)).unwrap();
    let bb = GpuBuffer::from_slice(gpu, "b", &b).unwrap();
    let gb = GpuBuffer::from_slice(gpu, "gamma", &g).unwrap();
    let beb = GpuBuffer::from_slice(gpu, "beta", &be).unwrap();
    let y = GpuBuffer::<Y>::new(gpu, "y", slots * m * cfg.n).unwrap();
    // NaN in f32, and in f16 (0x7fc0 twice).
    y.fill_u32(gpu, POISON | (POISON >> 16)).unwrap();
    let hb = heads.map(|h| GpuBuffer::from_slice(gpu, "heads", h).unwrap());
    let mut rec = Recorder::new(gpu);
    layer
        .record(
            &mut rec,
            m,
            LinearInputs {
                z: &zb,
                a: (k2 > 0).then_some(&ab),
                w: &wb,
                b: &bb,
                ln: cfg.layer_norm.then_some((&gb, &beb)),
                y: &y,
                heads: hb.as_ref(),
                z_offset: 0,
                a_offset: 0,
                z_repeat: 0,
                input_groups: 1,
                input_strides: None,
            },
        )
        .unwrap();
    let h = rec.read(&y);
    let got: Vec<f32> = rec
        .finish()
        .unwrap()
        .get(&h)
        .unwrap()
        .into_iter()
        .map(Y::to_f32)
        .collect();
    (rel_error(&got, &want), layer.kernel_on(gpu, m, slots))
}

/// A random layer configuration: LayerNorm, activation, concatenation, ensemble.
fn random_cfg(r: &mut impl Rng, i: usize) -> (LinearConfig, Option<Vec<u32>>) {
    let act = Activation::ALL[i % 3];
    let mut n: usize = r.random_range(16..120);
    if act == Activation::SimNorm {
        n = n.div_ceil(8) * 8;
    }
    let k1 = r.random_range(1..150);
    let k = k1 + [0, 6, 1][i % 3];
    let mut cfg = LinearConfig::new(k, n).with_concat(k1).with_act(act);
    cfg.layer_norm = i.is_multiple_of(2);
    let heads = if i % 4 == 3 {
        cfg = cfg.with_members(5, i % 8 == 3);
        Some(vec![4, 1])
    } else {
        None
    };
    (cfg, heads)
}

fn check<X: Store, W: Store, Y: Store>(
    gpu: &Gpu,
    r: &mut impl Rng,
    layer: &Linear,
    m: usize,
    heads: Option<&[u32]>,
    tol32: f64,
) {
    let (err, kernel) = run::<X, W, Y>(gpu, r, layer, m, heads);
    let tol = if Y::F16 { 1e-3 } else { tol32 };
    assert!(
        err <= tol,
        "{:?} m={m} heads={heads:?} storage x16={} w16={} y16={} kernel {kernel} ({:?} \
         checks): error {err:e} > {tol:e}",
        layer.config(),
        X::F16,
        W::F16,
        Y::F16,
        gpu.shader_checks()
    );
}

/// The four storage combinations of the world model's layers (first/middle/last/only), and
/// all-f32 for comparison.
fn every_storage(gpu: &Gpu, r: &mut impl Rng, layer: &Linear, m: usize, heads: Option<&[u32]>) {
    let tol32 = if layer.precision() == Precision::TensorCore {
        2e-4
    } else {
        1e-5
    };
    check::<f32, f16, f16>(gpu, r, layer, m, heads, tol32);
    check::<f16, f16, f16>(gpu, r, layer, m, heads, tol32);
    check::<f16, f16, f32>(gpu, r, layer, m, heads, tol32);
    check::<f32, f16, f32>(gpu, r, layer, m, heads, tol32);
    check::<f32, f32, f32>(gpu, r, layer, m, heads, tol32);
}

#[test]
fn f16_storage_matches_the_mirror_on_rounded_inputs() {
    let mut r = rng("linear f16 storage");
    for gpu in gpus() {
        if let Err(e) = gpu.supports(Precision::F16) {
            // No silent pass: an adapter without shader-f16 must say so, and the model
            // refuses f16.
            eprintln!("linear f16: NOT RUN ({e}) on {}", gpu.describe());
            assert!(matches!(e, Error::Unsupported(_)));
            continue;
        }
        eprintln!("linear f16: F16 STORAGE path on {}", gpu.describe());
        // Each i covers one activation, LayerNorm or not, concatenation, ensembles: 6 of them
        // cover every combination once (lavapipe compiles a pipeline per shape).
        for i in 0..6 {
            let (cfg, heads) = random_cfg(&mut r, i);
            let m = r.random_range(1..70);
            let plan = (i % 3 == 2).then_some(LinearPlan {
                tile: Tile::SMALL,
                split: 2,
            });
            let layer = Linear::new(gpu, cfg)
                .unwrap()
                .with_precision(gpu, Precision::F16)
                .unwrap()
                .with_plan(plan);
            every_storage(gpu, &mut r, &layer, m, heads.as_deref());
        }
    }
}

#[test]
fn tensor_cores_match_the_mirror_or_are_refused() {
    let mut r = rng("linear tensor cores");
    for gpu in gpus() {
        let cfg = LinearConfig::new(64, 64)
            .with_ln()
            .with_act(Activation::Mish);
        match gpu.tensor_cores() {
            Err(why) => {
                eprintln!(
                    "linear coop: NOT AVAILABLE ({why}); checking the refusal and the f32 \
                     fallback on {}",
                    gpu.describe()
                );
                let e = Linear::new(gpu, cfg)
                    .unwrap()
                    .with_precision(gpu, Precision::TensorCore)
                    .err()
                    .expect("tensor cores must be refused");
                assert!(matches!(e, Error::Unsupported(_)), "{e}");
                let opts = GpuOptions::default()
                    .with_checks(gpu.shader_checks())
                    .with_precision(Some(Precision::TensorCore));
                assert!(matches!(Gpu::new(opts), Err(Error::Unsupported(_))));
                // Automatic precision falls back to f32 and the ALU kernel.
                let auto =
                    Gpu::new(GpuOptions::default().with_checks(gpu.shader_checks())).unwrap();
                if std::env::var("POMPC_PRECISION").is_err() {
                    assert_eq!(auto.precision(), Precision::F32);
                }
                let layer = Linear::new(&auto, cfg).unwrap();
                assert!(matches!(
                    layer.kernel_on(&auto, 4096, 1),
                    LinearKernel::Alu(_)
                ));
                check::<f32, f32, f32>(&auto, &mut r, &layer, 40, None, 1e-5);
            }
            Ok(sg) => {
                eprintln!(
                    "linear coop: TENSOR-CORE path, subgroup {sg}, on {}",
                    gpu.describe()
                );
                // Tiles the device cannot hold (XLARGE's workgroup memory) are never chosen.
                let tiles = CoopTile::ALL.iter().filter(|t| t.check(gpu, sg).is_ok());
                for (i, tile) in tiles.enumerate() {
                    // 32 parts: POMPC_LINEAR_KPART's most, most of them empty at this K.
                    for split in [1, 2, 32] {
                        let (cfg, heads) = random_cfg(&mut r, i * 3 + split.min(3) as usize);
                        let m = r.random_range(1..300);
                        let layer = Linear::new(gpu, cfg)
                            .unwrap()
                            .with_precision(gpu, Precision::TensorCore)
                            .unwrap()
                            .with_coop_plan(Some(CoopPlan { tile: *tile, split }));
                        every_storage(gpu, &mut r, &layer, m, heads.as_deref());
                    }
                }
                // The heuristic: small calls stay on the ALU kernel, large ones go to tensor
                // cores.
                let layer = Linear::new(gpu, LinearConfig::new(512, 512))
                    .unwrap()
                    .with_precision(gpu, Precision::TensorCore)
                    .unwrap();
                assert!(matches!(layer.kernel_on(gpu, 1, 1), LinearKernel::Alu(_)));
                assert!(matches!(
                    layer.kernel_on(gpu, 512, 1),
                    LinearKernel::TensorCore(_)
                ));
                check::<f32, f16, f16>(gpu, &mut r, &layer, 512, None, 2e-4);
                // Automatic precision picks the tensor cores where they are.
                if std::env::var("POMPC_PRECISION").is_err() {
                    let auto =
                        Gpu::new(GpuOptions::default().with_checks(gpu.shader_checks())).unwrap();
                    assert_eq!(auto.precision(), Precision::TensorCore);
                }
            }
        }
    }
}

#[test]
fn world_model_at_f16_and_tensor_cores_against_f32() {
    let mut r = rng("model precision");
    let spec = ModelSpec::tiny(7, 3);
    let weights = Weights::init(&spec, 3).unwrap();
    let rows = 200;
    let (l, a) = (spec.latent_dim, spec.action_dim);
    let z = uniform(&mut r, rows * l, 1.0);
    let act = uniform(&mut r, rows * a, 1.0);
    for gpu in gpus() {
        let forward = |model: &WorldModel| -> Vec<f32> {
            let ws = Workspace::new(gpu, &spec, rows).unwrap();
            let zb = GpuBuffer::from_slice(gpu, "z", &z).unwrap();
            let ab = GpuBuffer::from_slice(gpu, "a", &act).unwrap();
            let out = GpuBuffer::<f32>::new(gpu, "next", rows * l).unwrap();
            let q = GpuBuffer::<f32>::new(gpu, "q", 2 * rows * spec.num_bins).unwrap();
            let heads = GpuBuffer::from_slice(gpu, "heads", &[1u32, 0]).unwrap();
            let mut rec = Recorder::new(gpu);
            let input = NetInput::new(&zb, Some(&ab));
            model
                .dynamics
                .record(&mut rec, rows, input, None, &ws, &out)
                .unwrap();
            model
                .q
                .record(&mut rec, rows, input, Some(&heads), &ws, &q)
                .unwrap();
            let (h1, h2) = (rec.read(&out), rec.read(&q));
            let res = rec.finish().unwrap();
            let mut v = res.get(&h1).unwrap();
            v.extend(res.get(&h2).unwrap());
            v
        };
        let base = WorldModel::with_precision(gpu, &weights, Precision::F32).unwrap();
        let want: Vec<f64> = forward(&base).iter().map(|&v| v as f64).collect();
        for p in [Precision::F16, Precision::TensorCore] {
            match gpu.supports(p) {
                Ok(()) => {
                    let model = WorldModel::with_precision(gpu, &weights, p).unwrap();
                    assert_eq!(model.precision(), p);
                    let err = rel_error(&forward(&model), &want);
                    eprintln!(
                        "model at {}: dynamics and Q logits within {err:.2e} of f32 ({:?} \
                         checks)",
                        p.name(),
                        gpu.shader_checks()
                    );
                    assert!(err < 5e-2, "{p:?}: {err:e}");
                }
                Err(e) => {
                    eprintln!("model at {}: NOT RUN ({e})", p.name());
                    assert!(matches!(
                        WorldModel::with_precision(gpu, &weights, p),
                        Err(Error::Unsupported(_))
                    ));
                }
            }
        }
    }
}

/// A rollout step with the dynamics and reward layers paired (two-member launches) gives what
/// the two networks give apart, at every precision the device has (f16 hidden activations and
/// tensor-core products included): each member's products are the same products.
#[test]
fn paired_rollout_layers_at_every_precision() {
    let mut r = rng("paired rollout");
    let spec = ModelSpec::tiny(7, 3);
    let weights = Weights::init(&spec, 4).unwrap();
    let rows = 150;
    let (l, a) = (spec.latent_dim, spec.action_dim);
    let z = uniform(&mut r, rows * l, 1.0);
    let act = uniform(&mut r, rows * a, 1.0);
    for gpu in gpus() {
        for p in [Precision::F32, Precision::F16, Precision::TensorCore] {
            if gpu.supports(p).is_err() {
                eprintln!("paired rollout at {}: NOT RUN (unsupported)", p.name());
                continue;
            }
            let step = |grouped: bool| -> Vec<f32> {
                let model = WorldModel::with_precision(gpu, &weights, p)
                    .unwrap()
                    .with_grouped_rollout(grouped);
                assert_eq!(model.grouped_rollout(), grouped);
                let ws = Workspace::with_slots(gpu, &spec, rows, 2).unwrap();
                let zb = GpuBuffer::from_slice(gpu, "z", &z).unwrap();
                let ab = GpuBuffer::from_slice(gpu, "a", &act).unwrap();
                let next = GpuBuffer::from_slice(gpu, "next", &vec![f32::NAN; rows * l]).unwrap();
                let rew =
                    GpuBuffer::from_slice(gpu, "r", &vec![f32::NAN; rows * spec.num_bins]).unwrap();
                let mut rec = Recorder::new(gpu);
                model
                    .record_reward_and_dynamics(
                        &mut rec,
                        rows,
                        NetInput::new(&zb, Some(&ab)),
                        &ws,
                        &rew,
                        &next,
                    )
                    .unwrap();
                let (h1, h2) = (rec.read(&rew), rec.read(&next));
                let res = rec.finish().unwrap();
                let mut v = res.get(&h1).unwrap();
                v.extend(res.get(&h2).unwrap());
                v
            };
            let apart: Vec<f64> = step(false).iter().map(|&v| v as f64).collect();
            let paired = step(true);
            assert!(
                paired.iter().all(|v| v.is_finite()),
                "{p:?}: unwritten rows"
            );
            let err = rel_error(&paired, &apart);
            eprintln!(
                "paired rollout at {}: within {err:.2e} of the networks apart ({:?} checks)",
                p.name(),
                gpu.shader_checks()
            );
            // Exact where the two launches split K as the one does (lavapipe); a GPU may split
            // the paired launch's K otherwise (twice the workgroups), which reorders sums.
            let tol = if p == Precision::TensorCore {
                2e-3
            } else {
                1e-5
            };
            assert!(err <= tol, "{p:?}: {err:e}");
        }
    }
    // A workspace of one slot has no room for the pair: an error, not a clobbered row.
    let gpu = &gpus()[1];
    let model = WorldModel::new(gpu, &weights)
        .unwrap()
        .with_grouped_rollout(true);
    let ws = Workspace::with_slots(gpu, &spec, rows, 1).unwrap();
    let zb = GpuBuffer::<f32>::new(gpu, "z", rows * l).unwrap();
    let ab = GpuBuffer::<f32>::new(gpu, "a", rows * a).unwrap();
    let out = GpuBuffer::<f32>::new(gpu, "out", rows * spec.num_bins.max(l)).unwrap();
    let mut rec = Recorder::new(gpu);
    let e = model.record_reward_and_dynamics(
        &mut rec,
        rows,
        NetInput::new(&zb, Some(&ab)),
        &ws,
        &out,
        &out,
    );
    assert!(matches!(e, Err(Error::Limit(_))), "{e:?}");
}

/// The planner's first step: a layer whose Z rows repeat every `g` rows (`z_repeat`), at f16
/// storage and on every tensor-core tile the device holds, f32 latents in and f16 or f32 out,
/// against the mirror on the explicitly repeated rows, with the operands of each part (the
/// distinct rows' Z part, the per-row A part) rounded to f16 where it runs on tensor cores.
#[test]
fn repeated_z_rows_at_f16_and_on_tensor_cores() {
    let mut r = rng("repeated z precision");
    for gpu in gpus() {
        let mut plans: Vec<(Precision, Option<CoopPlan>)> = Vec::new();
        if gpu.supports(Precision::F16).is_ok() {
            plans.push((Precision::F16, None));
        }
        if let Ok(sg) = gpu.tensor_cores() {
            for tile in CoopTile::ALL.iter().filter(|t| t.check(gpu, sg).is_ok()) {
                plans.push((
                    Precision::TensorCore,
                    Some(CoopPlan {
                        tile: *tile,
                        split: 1,
                    }),
                ));
            }
        }
        eprintln!(
            "repeated z: {} precision/tile cases on {}",
            plans.len(),
            gpu.describe()
        );
        for (i, (precision, coop)) in plans.into_iter().enumerate() {
            let g = r.random_range(1..9);
            let m = g * r.random_range(1..40);
            let (k1, k2) = (r.random_range(16..150), r.random_range(1..8));
            let n = r.random_range(2..40) * 8;
            let act = [Activation::Mish, Activation::SimNorm][i % 2];
            let cfg = LinearConfig::new(k1 + k2, n)
                .with_concat(k1)
                .with_ln()
                .with_act(act);
            let z = uniform(&mut r, g * k1, 1.0);
            let a = uniform(&mut r, m * k2, 1.0);
            let w = round_f16(&uniform(&mut r, n * (k1 + k2), 1.0 / (k1 as f32).sqrt()));
            let (b, gam, be) = (
                uniform(&mut r, n, 1.0),
                uniform(&mut r, n, 2.0),
                uniform(&mut r, n, 1.0),
            );
            let z_full: Vec<f32> = (0..m)
                .flat_map(|row| z[(row % g) * k1..(row % g + 1) * k1].to_vec())
                .collect();
            let layer = Linear::new(gpu, cfg)
                .unwrap()
                .with_precision(gpu, precision)
                .unwrap()
                .with_coop_plan(coop);
            // Each part rounds its operands where it runs on tensor cores (here the forced
            // plan covers the distinct rows' Z part too; the planner's 256 latents take the
            // tensor cores by size).
            let tc = |rows| matches!(layer.kernel_on(gpu, rows, 1), LinearKernel::TensorCore(_));
            let z_seen = if tc(g) { round_f16(&z_full) } else { z_full };
            let a_seen = if tc(m) { round_f16(&a) } else { a.clone() };
            let ln = Some((gam.as_slice(), be.as_slice()));
            let blocks = InputBlocks::packed(&cfg, m, 1, None);
            let want = mirror(&cfg, m, blocks, &z_seen, &a_seen, &w, &b, ln, None);
            let zb = GpuBuffer::from_slice(gpu, "z", &z).unwrap();
            let ab = GpuBuffer::from_slice(gpu, "a", &a).unwrap();
            let wb = GpuBuffer::from_slice(gpu, "w", &store::<f16>(&w)).unwrap();
            let bb = GpuBuffer::from_slice(gpu, "b", &b).unwrap();
            let gb = GpuBuffer::from_slice(gpu, "gamma", &gam).unwrap();
            let beb = GpuBuffer::from_slice(gpu, "beta", &be).unwrap();
            let y16 = GpuBuffer::<f16>::new(gpu, "y16", m * n).unwrap();
            let y32 = GpuBuffer::<f32>::new(gpu, "y32", m * n).unwrap();
            y16.fill_u32(gpu, POISON | (POISON >> 16)).unwrap();
            y32.fill_u32(gpu, POISON).unwrap();
            let mut rec = Recorder::new(gpu);
            let io = LinearInputs {
                a: Some(&ab),
                ln: Some((&gb, &beb)),
                z_repeat: g,
                input_groups: 1,
                input_strides: None,
                ..LinearInputs::new(&zb, &wb, &bb, &y16)
            };
            layer.record(&mut rec, m, io).unwrap();
            let io = LinearInputs {
                a: Some(&ab),
                ln: Some((&gb, &beb)),
                z_repeat: g,
                input_groups: 1,
                input_strides: None,
                ..LinearInputs::new(&zb, &wb, &bb, &y32)
            };
            layer.record(&mut rec, m, io).unwrap();
            let (h16, h32) = (rec.read(&y16), rec.read(&y32));
            let out = rec.finish().unwrap();
            let got16: Vec<f32> = out
                .get(&h16)
                .unwrap()
                .into_iter()
                .map(f16::to_f32)
                .collect();
            let got32 = out.get(&h32).unwrap();
            let (e16, e32) = (rel_error(&got16, &want), rel_error(&got32, &want));
            let tol32 = if coop.is_some() { 2e-4 } else { 1e-5 };
            assert!(
                e16 <= 1e-3 && e32 <= tol32,
                "{precision:?} {coop:?} {cfg:?} m={m} g={g}: errors {e16:e} (f16 out), \
                 {e32:e} (f32 out, tolerance {tol32:e})"
            );
        }
    }
}
