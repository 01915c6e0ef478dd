//! The fused network kernels (`shaders/fused_mlp.wgsl`, `shaders/fused_mlp_coop.wgsl`) against
//! their mirror (`src/reference/fused_mlp.rs`, layer by layer through the linear mirror) on
//! random weights, odd widths and row counts that are not multiples of the row block, with
//! poisoned outputs whose unwritten elements must stay poisoned; both shader check modes. The
//! f16-storage kernel runs where the device has shader-f16; the tensor-core kernel where it has
//! cooperative matrices, and elsewhere the test checks that asking for it is
//! `Error::Unsupported`, as the device says.

mod common;

use common::{POISON, gpus, rel_error, rng, uniform};
use pompc::kernels::fused_mlp::OutMode;
use pompc::model::{
    FusedModel, FusedNet, FusedOut, Member, ModelSpec, Net, NetInput, Weights, WorldModel,
};
use pompc::reference::fused_mlp::{self as mirror, Rounding};
use pompc::{Error, Gpu, GpuBuffer, Precision, Recorder};
use rand::Rng;

/// Random weights: uniform in +-1/sqrt(fan in), LayerNorm gains near 1 and shifts near 0, so
/// every layer's outputs are O(1) and no final layer is zero (as TD-MPC2's init makes them).
fn random_weights(spec: &ModelSpec, r: &mut impl Rng) -> Weights {
    let mut w = Weights::init(spec, 0).unwrap();
    for (name, t) in w.tensors.iter_mut() {
        let fan_in = *t.shape.last().unwrap() as f32;
        for v in t.data.iter_mut() {
            *v = if name.ends_with("ln.weight") {
                1.0 + r.random_range(-0.3..0.3)
            } else if name.ends_with("weight") {
                r.random_range(-1.0..1.0) / fan_in.sqrt() * 2.0
            } else {
                r.random_range(-0.3..0.3)
            };
        }
    }
    w
}

fn specs() -> Vec<ModelSpec> {
    let mut narrow = ModelSpec::tiny(7, 3).episodic(true);
    narrow.latent_dim = 24;
    narrow.mlp_dim = 40;
    narrow.num_q = 3;
    // Wider than one column block of the ALU kernel (256) and three fragments per subgroup on
    // tensor cores; an observation wider than a multiple of 16.
    let mut wide = ModelSpec::tiny(37, 5);
    wide.latent_dim = 264;
    wide.mlp_dim = 300;
    wide.enc_dim = 72;
    wide.num_bins = 51;
    wide.vmin = -5.0;
    wide.vmax = 7.0;
    vec![narrow, wide]
}

fn poisoned(gpu: &Gpu, label: &str, len: usize) -> GpuBuffer<f32> {
    let b = GpuBuffer::new(gpu, label, len).unwrap();
    b.fill_u32(gpu, POISON).unwrap();
    b
}

/// The rows a launch's network reads, gathered as the kernel gathers them.
fn gather(z: &[f32], z_off: usize, width: usize, m: usize, repeat: usize) -> Vec<f32> {
    (0..m)
        .flat_map(|row| {
            let zr = if repeat > 0 { row % repeat } else { row };
            z[z_off + zr * width..z_off + (zr + 1) * width].to_vec()
        })
        .collect()
}

fn tolerance(rounding: Rounding) -> f64 {
    if rounding.weights || rounding.input || rounding.hidden {
        3e-2
    } else {
        2e-4
    }
}

struct Case {
    nets: Vec<(Net, usize, OutMode)>,
    m: usize,
    repeat: usize,
}

/// Run one launch and compare each network's output with the mirror; the elements around
/// each output stay poisoned.
fn check(gpu: &Gpu, fused: &FusedModel, w: &Weights, case: &Case, r: &mut impl Rng) {
    let spec = &w.spec;
    let l0 = &spec.layers(case.nets[0].0)[0];
    let (in1, in2) = (l0.in1, l0.in2);
    let m = case.m;
    let z_rows = if case.repeat > 0 { case.repeat } else { m };
    let (z_off, a_off) = (r.random_range(0..9), r.random_range(0..9));
    let z_host = uniform(r, z_off + z_rows * in1 + 3, 1.0);
    let a_host = uniform(r, a_off + m * in2.max(1) + 3, 1.0);
    let z = GpuBuffer::from_slice(gpu, "z", &z_host).unwrap();
    let a = GpuBuffer::from_slice(gpu, "a", &a_host).unwrap();
    // Heads chosen in reverse order, so slot s does not read head s.
    let members = spec.members(case.nets[0].0);
    let heads: Vec<u32> = (0..case.nets.len())
        .map(|s| (members - 1 - s % members) as u32)
        .collect();
    let map = GpuBuffer::from_slice(gpu, "heads", &heads).unwrap();
    // Each network writes its own region of one of two buffers, behind a gap.
    let mut outs = Vec::new();
    let bufs = [
        poisoned(gpu, "out0", 1 << 16),
        poisoned(gpu, "out1", 1 << 16),
    ];
    let mut next = [7usize, 3usize];
    for (g, (net, _, mode)) in case.nets.iter().enumerate() {
        let width = match mode {
            OutMode::Raw => spec.layers(*net).last().unwrap().out,
            OutMode::TwoHot => 1,
            OutMode::Policy => unreachable!("the policy case has its own test"),
        };
        let stride = width + g % 2 * 3;
        let bi = g % 2;
        let offset = next[bi];
        next[bi] += m * stride + 5;
        outs.push((bi, offset, stride, width));
    }
    let fnets: Vec<FusedNet> = case
        .nets
        .iter()
        .zip(&outs)
        .enumerate()
        .map(
            |(slot, ((net, member, mode), &(bi, offset, stride, _)))| FusedNet {
                net: *net,
                member: if members > 1 && *member == usize::MAX {
                    Member::Head { map: &map, slot }
                } else {
                    Member::Index(*member)
                },
                out: FusedOut {
                    buf: &bufs[bi],
                    offset,
                    stride,
                    mode: *mode,
                    policy: None,
                },
            },
        )
        .collect();
    let mut input = NetInput::new(&z, (in2 > 0).then_some(&a)).at(z_off, a_off);
    if case.repeat > 0 {
        input = input.repeating(case.repeat);
    }
    let mut rec = Recorder::new(gpu);
    fused.record(&mut rec, m, input, &fnets).unwrap();
    rec.submit().unwrap();
    let got = [
        bufs[0].download(gpu).unwrap(),
        bufs[1].download(gpu).unwrap(),
    ];
    let rounding = Rounding::of(&fused.shape);
    let zs = gather(&z_host, z_off, in1, m, case.repeat);
    let as_ = if in2 > 0 {
        a_host[a_off..a_off + m * in2].to_vec()
    } else {
        Vec::new()
    };
    let mut written = [vec![false; 1 << 16], vec![false; 1 << 16]];
    for (g, (net, member, mode)) in case.nets.iter().enumerate() {
        let e = if *member == usize::MAX {
            heads[g] as usize
        } else {
            *member
        };
        let want = mirror::forward(w, *net, e, m, &zs, &as_, rounding, *mode).unwrap();
        let (bi, offset, stride, width) = outs[g];
        let mut gpu_vals = Vec::new();
        for row in 0..m {
            for c in 0..width {
                let at = offset + row * stride + c;
                gpu_vals.push(got[bi][at]);
                written[bi][at] = true;
            }
        }
        let err = rel_error(&gpu_vals, &want);
        let tol = tolerance(rounding);
        assert!(
            err < tol,
            "{net:?} (member {e}, {mode:?}, {m} rows, repeat {}) on {}: error {err:.2e} > {tol:.0e} \
             ({:?})",
            case.repeat,
            gpu.describe(),
            fused.shape
        );
    }
    for bi in 0..2 {
        for (i, v) in got[bi].iter().enumerate() {
            assert!(
                written[bi][i] || v.to_bits() == POISON,
                "element {i} of out{bi} outside every output was written ({v})"
            );
        }
    }
}

fn cases(spec: &ModelSpec, r: &mut impl Rng) -> Vec<Case> {
    let m = r.random_range(17..45);
    let mut v = vec![
        Case {
            nets: vec![(Net::Encoder, 0, OutMode::Raw)],
            m: r.random_range(1..12),
            repeat: 0,
        },
        // A rollout step: reward decoded and dynamics, one launch.
        Case {
            nets: vec![
                (Net::Reward, 0, OutMode::TwoHot),
                (Net::Dynamics, 0, OutMode::Raw),
            ],
            m,
            repeat: 0,
        },
        // The first step: every sample of an environment reads its latent.
        Case {
            nets: vec![
                (Net::Dynamics, 0, OutMode::Raw),
                (Net::Reward, 0, OutMode::TwoHot),
            ],
            m,
            repeat: r.random_range(2..6),
        },
        Case {
            nets: vec![(Net::Policy, 0, OutMode::Raw)],
            m,
            repeat: 0,
        },
        // Chosen Q heads (usize::MAX: a slot of the head map), decoded and raw.
        Case {
            nets: vec![
                (Net::Q, usize::MAX, OutMode::TwoHot),
                (Net::Q, usize::MAX, OutMode::TwoHot),
                (Net::Q, 1, OutMode::Raw),
            ],
            m,
            repeat: 0,
        },
    ];
    if spec.episodic {
        v.push(Case {
            nets: vec![(Net::Termination, 0, OutMode::Raw)],
            m,
            repeat: 0,
        });
    }
    v
}

#[test]
fn fused_networks_match_the_mirror_at_every_precision() {
    let mut r = rng("fused networks");
    for gpu in gpus() {
        for spec in specs() {
            let w = random_weights(&spec, &mut r);
            for p in [Precision::F32, Precision::F16, Precision::TensorCore] {
                let fused = match FusedModel::new(gpu, &w, p) {
                    Ok(f) => f,
                    Err(Error::Unsupported(why)) => {
                        // Only where the device lacks the precision itself.
                        assert!(
                            gpu.supports(p).is_err(),
                            "{p:?} is supported by {} but the fused kernels refused it: {why}",
                            gpu.describe()
                        );
                        eprintln!(
                            "fused networks: {p:?} unsupported on {}: {why}",
                            gpu.describe()
                        );
                        continue;
                    }
                    Err(e) => panic!("{p:?}: {e}"),
                };
                eprintln!(
                    "fused networks: {p:?} {:?} on {}",
                    fused.shape,
                    gpu.describe()
                );
                for case in cases(&spec, &mut r) {
                    check(gpu, &fused, &w, &case, &mut r);
                }
            }
        }
    }
}

#[test]
fn copies_from_flat_parameters_give_the_packed_weights() {
    let mut r = rng("fused copy");
    let gpu = &gpus()[0];
    let spec = specs().remove(0);
    let (wa, wb) = (random_weights(&spec, &mut r), random_weights(&spec, &mut r));
    // A flat buffer holding wb's tensors one after the other, behind an offset.
    let mut flat = vec![0.0f32; 11];
    let mut at = std::collections::HashMap::new();
    for (name, t) in &wb.tensors {
        at.insert(name.clone(), flat.len());
        flat.extend_from_slice(&t.data);
    }
    let flat = GpuBuffer::from_slice(gpu, "flat", &flat).unwrap();
    for p in [Precision::F32, Precision::F16] {
        if gpu.supports(p).is_err() {
            continue;
        }
        let copied = FusedModel::new(gpu, &wa, p).unwrap();
        let direct = FusedModel::new(gpu, &wb, p).unwrap();
        let mut rec = Recorder::new(gpu);
        copied
            .record_copy_from(&mut rec, &flat, |n| {
                at.get(n)
                    .copied()
                    .ok_or_else(|| Error::InvalidArgument(n.into()))
            })
            .unwrap();
        rec.submit().unwrap();
        let m = 19;
        let z =
            GpuBuffer::from_slice(gpu, "z", &uniform(&mut r, m * spec.latent_dim, 1.0)).unwrap();
        let a =
            GpuBuffer::from_slice(gpu, "a", &uniform(&mut r, m * spec.action_dim, 1.0)).unwrap();
        let run = |f: &FusedModel| {
            let out = poisoned(gpu, "out", m * spec.latent_dim);
            let rew = poisoned(gpu, "rew", m);
            let mut rec = Recorder::new(gpu);
            f.record(
                &mut rec,
                m,
                NetInput::new(&z, Some(&a)),
                &[
                    FusedNet {
                        net: Net::Dynamics,
                        member: Member::Index(0),
                        out: FusedOut::raw(&out, 0, spec.latent_dim),
                    },
                    FusedNet {
                        net: Net::Q,
                        member: Member::Index(2),
                        out: FusedOut::two_hot(&rew, 0, 1),
                    },
                ],
            )
            .unwrap();
            rec.submit().unwrap();
            (out.download(gpu).unwrap(), rew.download(gpu).unwrap())
        };
        assert_eq!(
            run(&copied),
            run(&direct),
            "{p:?}: copied weights differ from packed ones"
        );
    }
}

#[test]
fn the_world_model_keeps_fused_networks_where_they_fit() {
    let gpu = &gpus()[0];
    let spec = ModelSpec::tdmpc2(5, 24, 6).unwrap();
    let model =
        WorldModel::with_precision(gpu, &Weights::init(&spec, 0).unwrap(), Precision::F32).unwrap();
    let f = model
        .fused
        .as_ref()
        .expect("the 5M model's rows fit any Vulkan device");
    assert_eq!(f.layout.widest, 512);
    assert_eq!(f.layout.net_layers(Net::Q).len(), 3);
}

#[test]
fn bad_launches_are_errors() {
    let gpu = &gpus()[0];
    let spec = specs().remove(0);
    let mut r = rng("fused errors");
    let w = random_weights(&spec, &mut r);
    let f = FusedModel::new(gpu, &w, Precision::F32).unwrap();
    let (l, a_dim) = (spec.latent_dim, spec.action_dim);
    let m = 10;
    let z = GpuBuffer::<f32>::new(gpu, "z", m * l).unwrap();
    let a = GpuBuffer::<f32>::new(gpu, "a", m * a_dim).unwrap();
    let out = GpuBuffer::<f32>::new(gpu, "out", m * l).unwrap();
    let (o2, o3) = (
        GpuBuffer::<f32>::new(gpu, "o2", m * l).unwrap(),
        GpuBuffer::<f32>::new(gpu, "o3", m * l).unwrap(),
    );
    let heads = GpuBuffer::<u32>::new(gpu, "heads", 2).unwrap();
    let net = |net, out: FusedOut<'static>| FusedNet {
        net,
        member: Member::Index(0),
        out,
    };
    // 'static borrows for the closures above: leak the few test buffers.
    let (out, o2, o3, heads): (&'static _, &'static _, &'static _, &'static _) = (
        Box::leak(Box::new(out)),
        Box::leak(Box::new(o2)),
        Box::leak(Box::new(o3)),
        Box::leak(Box::new(heads)),
    );
    let za = NetInput::new(&z, Some(&a));
    let zo = NetInput::new(&z, None);
    let bad: Vec<(&str, usize, NetInput, Vec<FusedNet>)> = vec![
        ("no networks", m, za, vec![]),
        (
            "zero rows",
            0,
            za,
            vec![net(Net::Dynamics, FusedOut::raw(out, 0, l))],
        ),
        (
            "five networks",
            m,
            za,
            vec![net(Net::Dynamics, FusedOut::raw(out, 0, l)); 5],
        ),
        (
            "inputs differ",
            m,
            za,
            vec![
                net(Net::Dynamics, FusedOut::raw(out, 0, l)),
                net(Net::Policy, FusedOut::raw(o2, 0, 6)),
            ],
        ),
        (
            "actions missing",
            m,
            zo,
            vec![net(Net::Dynamics, FusedOut::raw(out, 0, l))],
        ),
        (
            "output too short",
            m + 1,
            za,
            vec![net(Net::Dynamics, FusedOut::raw(out, 0, l))],
        ),
        (
            "overlapping rows",
            m,
            za,
            vec![net(Net::Dynamics, FusedOut::raw(out, 0, l - 1))],
        ),
        (
            "two-hot of a latent",
            m,
            za,
            vec![net(Net::Dynamics, FusedOut::two_hot(out, 0, 1))],
        ),
        (
            "three output buffers",
            m,
            za,
            vec![
                net(Net::Dynamics, FusedOut::raw(out, 0, l)),
                net(Net::Dynamics, FusedOut::raw(o2, 0, l)),
                net(Net::Dynamics, FusedOut::raw(o3, 0, l)),
            ],
        ),
        (
            "member past the ensemble",
            m,
            za,
            vec![FusedNet {
                net: Net::Q,
                member: Member::Index(spec.num_q),
                out: FusedOut::two_hot(out, 0, 1),
            }],
        ),
        (
            "heads of a single network",
            m,
            za,
            vec![FusedNet {
                net: Net::Dynamics,
                member: Member::Head {
                    map: heads,
                    slot: 0,
                },
                out: FusedOut::raw(out, 0, l),
            }],
        ),
        (
            "head slot past the map",
            m,
            za,
            vec![FusedNet {
                net: Net::Q,
                member: Member::Head {
                    map: heads,
                    slot: 2,
                },
                out: FusedOut::two_hot(out, 0, 1),
            }],
        ),
    ];
    for (what, m, input, nets) in bad {
        let mut rec = Recorder::new(gpu);
        let e = f.record(&mut rec, m, input, &nets);
        assert!(e.is_err(), "{what}: accepted");
        assert_eq!(rec.dispatches(), 0, "{what}: recorded a dispatch");
    }
    // Writing the buffer it reads.
    let mut rec = Recorder::new(gpu);
    let e = f.record(
        &mut rec,
        m,
        NetInput::new(out, Some(&a)),
        &[net(Net::Dynamics, FusedOut::raw(out, 0, l))],
    );
    assert!(e.is_err(), "in-place launch accepted");
}

#[test]
fn the_policy_network_samples_as_the_mirror() {
    use pompc::model::PolicyOut;
    let mut r = rng("fused policy");
    for gpu in gpus() {
        for spec in specs() {
            let w = random_weights(&spec, &mut r);
            let a = spec.action_dim;
            for p in [Precision::F32, Precision::F16, Precision::TensorCore] {
                let Ok(fused) = FusedModel::new(gpu, &w, p) else {
                    assert!(
                        gpu.supports(p).is_err(),
                        "{p:?} refused on {}",
                        gpu.describe()
                    );
                    continue;
                };
                let m = r.random_range(1..40);
                let (z_off, act_off, st_off) = (
                    r.random_range(0..5),
                    r.random_range(0..5),
                    r.random_range(0..5),
                );
                let z_host = uniform(&mut r, z_off + m * spec.latent_dim, 1.0);
                let z = GpuBuffer::from_slice(gpu, "z", &z_host).unwrap();
                let act_len = act_off + m * a + 4;
                let st_len = st_off + m * (2 * a + 3) + 4;
                let (act, stats) = (
                    poisoned(gpu, "act", act_len),
                    poisoned(gpu, "stats", st_len),
                );
                let (seed, stream) = (r.random::<u64>(), r.random::<u32>());
                let out = FusedOut::policy(
                    &act,
                    act_off,
                    PolicyOut {
                        stats: &stats,
                        stats_offset: st_off,
                        seed,
                        stream,
                    },
                );
                let mut rec = Recorder::new(gpu);
                fused
                    .record(
                        &mut rec,
                        m,
                        NetInput::new(&z, None).at(z_off, 0),
                        &[FusedNet {
                            net: Net::Policy,
                            member: Member::Index(0),
                            out,
                        }],
                    )
                    .unwrap();
                rec.submit().unwrap();
                let want = mirror::policy(
                    &w,
                    m,
                    &z_host[z_off..],
                    Rounding::of(&fused.shape),
                    seed,
                    stream,
                )
                .unwrap();
                let (got_a, got_s) = (act.download(gpu).unwrap(), stats.download(gpu).unwrap());
                let tol = tolerance(Rounding::of(&fused.shape));
                let ea = rel_error(&got_a[act_off..act_off + m * a], &want.action);
                let es = rel_error(&got_s[st_off..st_off + m * (2 * a + 3)], &want.stats);
                assert!(
                    ea < tol && es < tol,
                    "{p:?}: actions {ea:.2e}, stats {es:.2e}"
                );
                for (buf, off, len) in [(&got_a, act_off, m * a), (&got_s, st_off, m * (2 * a + 3))]
                {
                    for (i, v) in buf.iter().enumerate() {
                        assert!(
                            (off..off + len).contains(&i) || v.to_bits() == POISON,
                            "{p:?}: element {i} outside the policy outputs written"
                        );
                    }
                }
            }
        }
    }
}
