//! The fused linear kernel against its f64 mirror on fresh random inputs with poisoned
//! outputs: odd shapes, every activation, LayerNorm, concatenated inputs, ensembles, every
//! tile and K-split, with shader checks on and off.

mod common;

use common::{POISON, gpus, rel_error, rng, uniform};
use pompc::kernels::linear::{Activation, Linear, LinearConfig, LinearInputs, LinearPlan, Tile};
use pompc::{Gpu, GpuBuffer, Recorder, reference};
use rand::Rng;

const TOL: f64 = 1e-5;
/// LayerNorm over a handful of features is ill-conditioned: with 2 features whose values
/// nearly agree, (v - mean) cancels and f32 rounding of the sums shows up at 1e-4 (seen on
/// the H100). Random LayerNorm widths start here; the world model's are 16 and up.
const LN_MIN_WIDTH: usize = 16;

fn run_case(gpu: &Gpu, r: &mut impl Rng, cfg: LinearConfig, m: usize, plan: Option<LinearPlan>) {
    run_heads(gpu, r, cfg, m, plan, None)
}

/// One layer (an ensemble with a head map when `heads`) against the mirror.
fn run_heads(
    gpu: &Gpu,
    r: &mut impl Rng,
    cfg: LinearConfig,
    m: usize,
    plan: Option<LinearPlan>,
    heads: Option<&[u32]>,
) {
    run_population(gpu, r, cfg, m, 1, heads, 0, plan)
}

#[test]
fn odd_shapes_every_activation_with_and_without_layer_norm() {
    let mut r = rng("odd_shapes");
    for gpu in gpus() {
        for act in Activation::ALL {
            for ln in [false, true] {
                for _ in 0..3 {
                    let m = r.random_range(1..600);
                    let mut n: usize = r.random_range(1..600);
                    if act == Activation::SimNorm {
                        n = n.div_ceil(8) * 8;
                    }
                    if ln {
                        n = n.max(LN_MIN_WIDTH);
                    }
                    // Small K keeps lavapipe fast; large K is covered by the split tests.
                    let k = r.random_range(1..200);
                    let mut cfg = LinearConfig::new(k, n).with_act(act);
                    if ln {
                        cfg = cfg.with_ln();
                    }
                    run_case(gpu, &mut r, cfg, m, None);
                }
            }
        }
    }
}

#[test]
fn the_benchmark_shape_512x550x512_with_layer_norm_and_mish() {
    let mut r = rng("bench_shape");
    for gpu in gpus() {
        let cfg = LinearConfig::new(512, 550)
            .with_ln()
            .with_act(Activation::Mish);
        run_case(gpu, &mut r, cfg, 512, None);
    }
}

#[test]
fn every_tile_and_split_on_ragged_shapes() {
    let mut r = rng("tiles");
    for gpu in gpus() {
        for tile in Tile::ALL {
            // 32: the most parts POMPC_LINEAR_KPART allows; at these K many are empty.
            for split in [1, 2, 3, 8, 32] {
                let (m, n, k) = (
                    r.random_range(1..300),
                    r.random_range(1..300),
                    r.random_range(1..600),
                );
                let cfg = LinearConfig::new(k, n).with_act(Activation::Mish);
                run_case(gpu, &mut r, cfg, m, Some(LinearPlan { tile, split }));
                // Up to 384 columns: past LARGE's 128-wide tiles with a ragged last one, and
                // lavapipe's time stays small.
                let cfg = LinearConfig::new(k, n.min(48) * 8)
                    .with_ln()
                    .with_act(Activation::SimNorm);
                run_case(
                    gpu,
                    &mut r,
                    cfg,
                    m.min(100),
                    Some(LinearPlan { tile, split }),
                );
            }
        }
    }
}

#[test]
fn concatenated_inputs_and_ensembles() {
    let mut r = rng("concat");
    for gpu in gpus() {
        for shared in [true, false] {
            for members in [1, 2, 5] {
                let k1 = r.random_range(1..130);
                let k = k1 + r.random_range(1..20);
                let n = r.random_range(LN_MIN_WIDTH..200);
                let m = r.random_range(1..300);
                let cfg = LinearConfig::new(k, n)
                    .with_concat(k1)
                    .with_members(members, shared)
                    .with_ln()
                    .with_act(Activation::Mish);
                run_case(gpu, &mut r, cfg, m, None);
                // Ensembles without concatenation, fused single-dispatch path.
                let cfg = LinearConfig::new(k, n).with_members(members, shared);
                run_case(gpu, &mut r, cfg, m, None);
            }
        }
    }
}

#[test]
fn a_chosen_subset_of_ensemble_members() {
    let mut r = rng("heads");
    for gpu in gpus() {
        for shared in [true, false] {
            let (k1, k, n, m) = (
                r.random_range(1..90),
                0,
                r.random_range(LN_MIN_WIDTH..120),
                37,
            );
            let k = k + k1 + 3;
            let cfg = LinearConfig::new(k, n)
                .with_concat(k1)
                .with_members(5, shared)
                .with_ln()
                .with_act(Activation::Mish);
            // Two heads out of five, repeated heads, and a split-K plan.
            run_heads(gpu, &mut r, cfg, m, None, Some(&[3, 1]));
            run_heads(gpu, &mut r, cfg, m, None, Some(&[4, 4, 0]));
            let plan = Some(LinearPlan {
                tile: Tile::SMALL,
                split: 2,
            });
            run_heads(gpu, &mut r, cfg, m, plan, Some(&[2, 0]));
            let cfg = LinearConfig::new(k, n).with_members(5, shared);
            run_heads(gpu, &mut r, cfg, m, None, Some(&[1, 3]));
        }
    }
}

/// A population: `agents` agents' weight sets stacked agent by agent (`members` each), one
/// launch for all, every agent reading its own input block; blocks `gap` elements apart
/// beyond their rows, the gaps NaN, so a read outside an agent's block shows.
#[allow(clippy::too_many_arguments)]
fn run_population(
    gpu: &Gpu,
    r: &mut impl Rng,
    cfg: LinearConfig,
    m: usize,
    agents: usize,
    heads: Option<&[u32]>,
    gap: usize,
    plan: Option<LinearPlan>,
) {
    let slots = heads.map_or(cfg.members, |h| h.len());
    let blocks_n = if cfg.shared_input { agents } else { slots };
    let k2 = cfg.k - cfg.k1;
    let mut blocks = reference::linear::InputBlocks::packed(&cfg, m, agents, Some(slots));
    blocks.z_stride += gap;
    blocks.a_stride += gap;
    let fill = |r: &mut _, stride: usize, rows: usize| {
        let mut v = vec![f32::NAN; blocks_n * stride];
        for blk in 0..blocks_n {
            let data = uniform(r, rows, 1.0);
            v[blk * stride..blk * stride + rows].copy_from_slice(&data);
        }
        v
    };
    let z = fill(r, blocks.z_stride, m * cfg.k1);
    let a = fill(r, blocks.a_stride.max(1), m * k2);
    let e = cfg.members;
    let w = uniform(r, e * cfg.n * cfg.k, 1.0 / (cfg.k as f32).sqrt());
    let b = uniform(r, e * cfg.n, 1.0);
    let g = uniform(r, e * cfg.n, 2.0);
    let be = uniform(r, e * cfg.n, 1.0);
    let ln = cfg.layer_norm.then_some((g.as_slice(), be.as_slice()));
    let want = reference::linear::linear(&cfg, m, blocks, &z, &a, &w, &b, ln, heads);

    let up = |name, v: &[f32]| GpuBuffer::from_slice(gpu, name, v).unwrap();
    let (zb, ab, wb, bb, gb, beb) = (
        up("z", &z),
        up("a", &a),
        up("w", &w),
        up("b", &b),
        up("gamma", &g),
        up("beta", &be),
    );
    let y = GpuBuffer::<f32>::new(gpu, "y", slots * m * cfg.n).unwrap();
    let hb = heads.map(|h| GpuBuffer::from_slice(gpu, "heads", h).unwrap());
    y.fill_u32(gpu, POISON).unwrap();
    let layer = Linear::new(gpu, cfg).unwrap().with_plan(plan);
    let mut rec = Recorder::new(gpu);
    let strides = (gap > 0).then_some((blocks.z_stride, blocks.a_stride));
    layer
        .record(
            &mut rec,
            m,
            LinearInputs {
                a: (k2 > 0).then_some(&ab),
                ln: cfg.layer_norm.then_some((&gb, &beb)),
                heads: hb.as_ref(),
                input_groups: agents,
                input_strides: strides,
                ..LinearInputs::new(&zb, &wb, &bb, &y)
            },
        )
        .unwrap();
    let h = rec.read(&y);
    let got = rec.finish().unwrap().get(&h).unwrap();
    let err = rel_error(&got, &want);
    assert!(
        err <= TOL,
        "{cfg:?} m={m} agents={agents} heads={heads:?} gap={gap} plan={:?} checks={:?}: \
         relative error {err:e} > {TOL:e}",
        layer.plan_on(gpu, m),
        gpu.shader_checks()
    );
}

/// A population's layers in one launch: each agent's networks (one weight set, or a Q
/// ensemble of five whose first layer the agent's members share) read the agent's rows.
#[test]
fn a_population_of_agents_reads_each_agents_rows() {
    let mut r = rng("population");
    for gpu in gpus() {
        for agents in [2, 3] {
            let k1 = r.random_range(1..70);
            let k = k1 + r.random_range(1..9);
            let n = r.random_range(LN_MIN_WIDTH..100);
            let m = r.random_range(1..90);
            let gap = [0, 7][agents % 2];
            // One network per agent: every slot its own block.
            let cfg = LinearConfig::new(k, n)
                .with_concat(k1)
                .with_members(agents, false)
                .with_ln()
                .with_act(Activation::Mish);
            run_population(gpu, &mut r, cfg, m, agents, None, gap, None);
            // Q ensembles of five per agent, first layer shared within an agent: all heads,
            // then two chosen heads per agent (a planner's), then a split-K plan.
            let cfg = LinearConfig::new(k, n)
                .with_concat(k1)
                .with_members(5 * agents, true)
                .with_ln()
                .with_act(Activation::Mish);
            run_population(gpu, &mut r, cfg, m, agents, None, gap, None);
            let heads: Vec<u32> = (0..agents as u32)
                .flat_map(|i| [5 * i + r.random_range(0..5), 5 * i + r.random_range(0..5)])
                .collect();
            run_population(gpu, &mut r, cfg, m, agents, Some(&heads), gap, None);
            let plan = Some(LinearPlan {
                tile: Tile::SMALL,
                split: 2,
            });
            run_population(gpu, &mut r, cfg, m, agents, Some(&heads), gap, plan);
        }
    }
}

/// Slots that do not split into the input groups, and blocks past the buffer's end, are
/// errors before anything is recorded.
#[test]
fn bad_input_groups_are_errors() {
    let gpu = &gpus()[0];
    let cfg = LinearConfig::new(8, 16).with_members(6, true);
    let layer = Linear::new(gpu, cfg).unwrap();
    let buf = |n| GpuBuffer::<f32>::new(gpu, "buf", n).unwrap();
    let (z, w, b, y) = (
        buf(4 * 3 * 8),
        buf(6 * 16 * 8),
        buf(6 * 16),
        buf(6 * 4 * 16),
    );
    let mut rec = Recorder::new(gpu);
    for (groups, strides) in [(4, None), (0, None), (6, None), (2, Some((100, 0)))] {
        let io = LinearInputs {
            input_groups: groups,
            input_strides: strides,
            ..LinearInputs::new(&z, &w, &b, &y)
        };
        let e = layer.record(&mut rec, 4, io).unwrap_err();
        assert!(
            matches!(e, pompc::Error::InvalidArgument(_) | pompc::Error::Shape(_)),
            "groups {groups}, strides {strides:?}: {e}"
        );
    }
    // Three groups of two slots, each block 4 rows of 8: exactly the buffer.
    let io = LinearInputs {
        input_groups: 3,
        ..LinearInputs::new(&z, &w, &b, &y)
    };
    layer.record(&mut rec, 4, io).unwrap();
    assert!(rec.dispatches() >= 1);
}

#[test]
fn repeated_calls_reuse_pipelines() {
    // A device of its own: the shared ones gain pipelines from tests running alongside.
    let checks = gpus()[1].shader_checks();
    let gpu = &Gpu::new(pompc::GpuOptions::default().with_checks(checks)).unwrap();
    let mut r = rng("cache");
    let cfg = LinearConfig::new(33, 17)
        .with_ln()
        .with_act(Activation::Mish);
    run_case(gpu, &mut r, cfg, 40, None);
    let before = gpu.cached_pipelines();
    run_case(gpu, &mut r, cfg, 40, None);
    assert_eq!(gpu.cached_pipelines(), before);
}

/// Rows whose Z part repeats every `g` rows (the planner's first step): the layer on `g`
/// distinct latents and per-row actions against the mirror on the explicitly repeated input,
/// with and without LayerNorm, every activation, every storage the device has.
#[test]
fn repeated_z_rows_match_the_mirror_on_the_repeated_input() {
    let mut r = rng("repeated_z");
    for gpu in gpus() {
        // The distinct rows' Z part takes the layer's K-split (the per-row A part never
        // splits): a forced split of 3 covers the epilogue's sum of the parts.
        for (act, ln, split) in [
            (Activation::Mish, true, None),
            (Activation::SimNorm, true, Some(3)),
            (Activation::Identity, false, Some(2)),
        ] {
            let g = r.random_range(1..9);
            let m = g * r.random_range(1..40);
            let k1 = r.random_range(1..90);
            let k2 = r.random_range(1..8);
            let n = r.random_range(2..70) * 8;
            let mut cfg = LinearConfig::new(k1 + k2, n).with_concat(k1).with_act(act);
            if ln {
                cfg = cfg.with_ln();
            }
            let z = uniform(&mut r, g * k1, 1.0);
            let a = uniform(&mut r, m * k2, 1.0);
            let w = uniform(&mut r, n * (k1 + k2), 1.0 / ((k1 + k2) as f32).sqrt());
            let b = uniform(&mut r, n, 1.0);
            let gam = uniform(&mut r, n, 2.0);
            let be = uniform(&mut r, n, 1.0);
            let z_full: Vec<f32> = (0..m)
                .flat_map(|row| z[(row % g) * k1..(row % g + 1) * k1].to_vec())
                .collect();
            let lnp = ln.then_some((gam.as_slice(), be.as_slice()));
            let blocks = reference::linear::InputBlocks::packed(&cfg, m, 1, None);
            let want = reference::linear::linear(&cfg, m, blocks, &z_full, &a, &w, &b, lnp, None);
            let zb = GpuBuffer::from_slice(gpu, "z", &z).unwrap();
            let ab = GpuBuffer::from_slice(gpu, "a", &a).unwrap();
            let wb = GpuBuffer::from_slice(gpu, "w", &w).unwrap();
            let bb = GpuBuffer::from_slice(gpu, "b", &b).unwrap();
            let gb = GpuBuffer::from_slice(gpu, "gamma", &gam).unwrap();
            let beb = GpuBuffer::from_slice(gpu, "beta", &be).unwrap();
            let y = GpuBuffer::<f32>::new(gpu, "y", m * n).unwrap();
            y.fill_u32(gpu, POISON).unwrap();
            let plan = split.map(|split| LinearPlan {
                tile: Tile::SMALL,
                split,
            });
            let layer = Linear::new(gpu, cfg).unwrap().with_plan(plan);
            let mut rec = Recorder::new(gpu);
            let io = LinearInputs {
                a: Some(&ab),
                ln: ln.then_some((&gb, &beb)),
                z_repeat: g,
                input_groups: 1,
                input_strides: None,
                ..LinearInputs::new(&zb, &wb, &bb, &y)
            };
            layer.record(&mut rec, m, io).unwrap();
            let h = rec.read(&y);
            let got = rec.finish().unwrap().get(&h).unwrap();
            let err = rel_error(&got, &want);
            assert!(
                err <= TOL,
                "{cfg:?} m={m} g={g} split {split:?} checks={:?}: relative error {err:e} > \
                 {TOL:e}",
                gpu.shader_checks()
            );
            // A head map or a plain input cannot repeat Z.
            let plain = Linear::new(gpu, LinearConfig::new(k1, n)).unwrap();
            let io = LinearInputs {
                z_repeat: g,
                input_groups: 1,
                input_strides: None,
                ..LinearInputs::new(&zb, &wb, &bb, &y)
            };
            assert!(plain.record(&mut Recorder::new(gpu), m, io).is_err());
        }
    }
}
