//! The PO-MPC policy update (`train::PolicyTrainer`) on the GPU, end to end on a tiny model:
//! a large lambda drives the policy onto the prior; lambda = 0 (TD-MPC2) ascends Q; the
//! adaptive prior (PO-MPC) follows the planner Gaussians it is fitted to; every preset runs
//! and keeps the world-model parameters outside the policy untouched.

mod common;

use common::{gpus, rng};
use pompc::model::{ModelSpec, Net, Weights};
use pompc::train::{ParamLayout, PolicyTrainer, PolicyUpdateConfig};
use pompc::{Gpu, GpuBuffer};
use rand::Rng;

const B: usize = 32;

/// Latents that look like TD-MPC2's: softmax over groups of 8 of random logits, `[rows, L]`.
fn latents(r: &mut impl Rng, rows: usize, l: usize) -> Vec<f32> {
    let mut z = Vec::with_capacity(rows * l);
    for _ in 0..rows * l / 8 {
        let e: Vec<f32> = (0..8).map(|_| r.random_range(-2.0f32..2.0).exp()).collect();
        let s: f32 = e.iter().sum();
        z.extend(e.iter().map(|v| v / s));
    }
    z
}

/// A tiny model whose Q heads have non-zero final layers (values vary with the action).
fn model(r: &mut impl Rng) -> (ModelSpec, Weights) {
    let spec = ModelSpec::tiny(5, 3);
    let mut w = Weights::init(&spec, 3).unwrap();
    for (name, t) in w.tensors.iter_mut() {
        if name.starts_with("_Qs.params.2") || name.starts_with("_pi.2") {
            t.data
                .iter_mut()
                .for_each(|v| *v += r.random_range(-0.3f32..0.3));
        }
    }
    (spec, w)
}

struct Setup<'g> {
    params: GpuBuffer<f32>,
    zs: GpuBuffer<f32>,
    layout: ParamLayout,
    flat: Vec<f32>,
    gpu: &'g Gpu,
}

fn setup<'g>(gpu: &'g Gpu, spec: &ModelSpec, w: &Weights, r: &mut impl Rng) -> Setup<'g> {
    let layout = ParamLayout::new(spec);
    let flat = layout.flatten(w).unwrap();
    Setup {
        params: GpuBuffer::from_slice(gpu, "params", &flat).unwrap(),
        zs: GpuBuffer::from_slice(gpu, "zs", &latents(r, 4 * B, spec.latent_dim)).unwrap(),
        layout,
        flat,
        gpu,
    }
}

impl Setup<'_> {
    /// Nothing outside the policy's parameters moved.
    fn only_policy_moved(&self) {
        let now = self.params.download(self.gpu).unwrap();
        let pi = self.layout.net(Net::Policy);
        for (i, (a, b)) in now.iter().zip(&self.flat).enumerate() {
            if !pi.contains(&i) {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "parameter {i} outside the policy moved"
                );
            }
        }
        assert!(
            pi.clone().any(|i| now[i] != self.flat[i]),
            "the policy did not move"
        );
    }
}

/// Per-row `[mean | std]` Gaussians, the same for every row.
fn planner_rows(rows: usize, mean: &[f32], std: &[f32]) -> Vec<f32> {
    let mut v = Vec::new();
    for _ in 0..rows {
        v.extend_from_slice(mean);
        v.extend_from_slice(std);
    }
    v
}

#[test]
fn a_large_lambda_drives_the_policy_onto_the_planner_gaussian() {
    let mut r = rng("policy onto prior");
    let (spec, w) = model(&mut r);
    let (mean, std) = ([0.4f32, -0.3, 0.1], [0.2f32, 0.3, 0.25]);
    let gpu = &gpus()[1];
    let s = setup(gpu, &spec, &w, &mut r);
    // BMPC: KL(pi || b) only (lambda -> infinity), tanh-mean-clamp policy.
    let cfg = PolicyUpdateConfig {
        lr: 3e-3,
        ..PolicyUpdateConfig::bmpc(3)
    };
    let mut t = PolicyTrainer::new(gpu, &spec, cfg, B).unwrap();
    t.set_planner(&planner_rows(t.rows(), &mean, &std)).unwrap();
    let first = t.update(&s.params, &s.zs).unwrap();
    let mut last = first;
    for _ in 0..300 {
        last = t.update(&s.params, &s.zs).unwrap();
    }
    eprintln!("KL term: {} -> {}", first.kl, last.kl);
    assert!(
        first.kl > 0.05,
        "the policy started near the prior: {first:?}"
    );
    assert!(last.kl < 0.05 * first.kl, "KL {} -> {}", first.kl, last.kl);
    s.only_policy_moved();
}

#[test]
fn lambda_zero_ascends_q() {
    let mut r = rng("policy ascends Q");
    let (spec, w) = model(&mut r);
    let gpu = &gpus()[1];
    let s = setup(gpu, &spec, &w, &mut r);
    let cfg = PolicyUpdateConfig {
        lr: 3e-3,
        ..PolicyUpdateConfig::tdmpc2(3)
    };
    let mut t = PolicyTrainer::new(gpu, &spec, cfg, B).unwrap();
    let mut q = Vec::new();
    for _ in 0..200 {
        // The Q term is -Q / S_Q summed with the row weights: its negation tracks Q.
        q.push(-t.update(&s.params, &s.zs).unwrap().q);
    }
    let avg = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    let (start, end) = (avg(&q[..10]), avg(&q[q.len() - 10..]));
    eprintln!("Q term: {start} -> {end}");
    assert!(
        end > start + 0.05 * start.abs().max(0.1),
        "Q {start} -> {end}"
    );
    s.only_policy_moved();
}

#[test]
fn the_adaptive_prior_follows_the_planner_and_every_preset_runs() {
    let mut r = rng("adaptive prior");
    let (spec, w) = model(&mut r);
    let (mean, std) = ([-0.2f32, 0.5, 0.0], [0.3f32, 0.2, 0.4]);
    for gpu in gpus() {
        for (name, cfg) in [
            ("TD-MPC2", PolicyUpdateConfig::tdmpc2(3)),
            ("BMPC", PolicyUpdateConfig::bmpc(3)),
            ("TD-M(PC)2", PolicyUpdateConfig::tdmpc_square(3)),
            ("PO-MPC", PolicyUpdateConfig::pompc(3, 1.0)),
            (
                "PO-MPC convex 9",
                PolicyUpdateConfig::pompc(3, 9.0).convex(9.0),
            ),
            (
                "PO-MPC forward fit",
                PolicyUpdateConfig::pompc(3, 1.0).with_forward_prior_fit(),
            ),
        ] {
            let s = setup(gpu, &spec, &w, &mut r);
            let cfg = PolicyUpdateConfig { lr: 3e-3, ..cfg };
            let mut t = PolicyTrainer::new(gpu, &spec, cfg, B).unwrap();
            t.set_planner(&planner_rows(t.rows(), &mean, &std)).unwrap();
            let first = t.update(&s.params, &s.zs).unwrap();
            let mut last = first;
            let steps = if gpu.shader_checks() == pompc::ShaderChecks::Trusted && name == "PO-MPC" {
                200
            } else {
                3
            };
            for _ in 0..steps {
                last = t.update(&s.params, &s.zs).unwrap();
            }
            for v in [
                last.q,
                last.entropy,
                last.kl,
                last.ll,
                last.total,
                last.prior_fit,
                last.grad_norm,
            ] {
                assert!(v.is_finite(), "{name}: {last:?}");
            }
            let sum = last.q + last.entropy + last.kl + last.ll;
            assert!(
                (sum - last.total).abs() <= 1e-5 * (1.0 + last.total.abs()),
                "{name}: {last:?}"
            );
            if steps > 3 {
                eprintln!(
                    "{name}: prior fit {} -> {}",
                    first.prior_fit, last.prior_fit
                );
                assert!(
                    last.prior_fit < 0.1 * first.prior_fit,
                    "{name}: prior fit {} -> {}",
                    first.prior_fit,
                    last.prior_fit
                );
            }
            s.only_policy_moved();
        }
    }
}

#[test]
fn bad_configurations_are_errors() {
    let spec = ModelSpec::tiny(5, 3);
    let gpu = &gpus()[0];
    assert!(PolicyTrainer::new(gpu, &spec, PolicyUpdateConfig::tdmpc2(4), B).is_err());
    let mut cfg = PolicyUpdateConfig::bmpc(3);
    cfg.prior = pompc::train::PriorKind::None;
    assert!(PolicyTrainer::new(gpu, &spec, cfg, B).is_err());
    let mut t = PolicyTrainer::new(gpu, &spec, PolicyUpdateConfig::bmpc(3), B).unwrap();
    assert!(t.set_planner(&[0.0; 5]).is_err());
    let mut bad = planner_rows(t.rows(), &[0.0; 3], &[0.1; 3]);
    bad[4] = -1.0; // a negative std
    assert!(t.set_planner(&bad).is_err());
}

/// The four presets as the PyTorch fixture computes them.
fn presets(a: usize) -> [(&'static str, PolicyUpdateConfig); 4] {
    [
        ("tdmpc2", PolicyUpdateConfig::tdmpc2(a)),
        ("bmpc", PolicyUpdateConfig::bmpc(a)),
        (
            "tdmpc-square",
            PolicyUpdateConfig {
                q_scale_init: 5.0,
                ..PolicyUpdateConfig::tdmpc_square(a)
            },
        ),
        ("pompc", PolicyUpdateConfig::pompc(a, 1.0)),
    ]
}

/// `tests/fixtures/policy_tiny.safetensors` (`scripts/make_fixtures.py`): each preset's loss
/// terms and gradients by PyTorch autograd in float64 on the tiny model.
fn fixture() -> (Weights, std::collections::HashMap<String, Vec<f32>>) {
    common::load_fixture("policy_tiny")
}

/// Loss terms within 1e-4 relative (floored at 1e-3 absolute: the entropy term is ~1e-4) and
/// gradients per tensor within 1e-3 of the tensor's rms (f32 forward and backward through the
/// policy, two Q heads and the decode). Where the device has tensor cores, again with the
/// products on them (f16 operands with scaled gradients, 11 significant bits as TF32's: losses
/// within 1e-2, gradients within 2e-2 of the tensor's rms, where an H100 measured 6.7e-3 at
/// worst on 2026-12-07); without, asking for them is an `Unsupported` error.
#[test]
fn every_preset_matches_pytorch() {
    let (weights, f) = fixture();
    let get = |k: &str| {
        f.get(k)
            .unwrap_or_else(|| panic!("fixture.{k} missing"))
            .clone()
    };
    let spec = weights.spec.clone();
    let layout = ParamLayout::new(&spec);
    let (a, b) = (spec.action_dim, 6);
    let mut prior = weights.clone();
    for (name, t) in prior.tensors.iter_mut() {
        if name.starts_with("_pi.") {
            t.data = get(&format!("prior.{name}"));
        }
    }
    let heads = get("policy.heads");
    let heads = [heads[0] as usize, heads[1] as usize];
    for gpu in gpus() {
        let params =
            GpuBuffer::from_slice(gpu, "params", &layout.flatten(&weights).unwrap()).unwrap();
        let zs = GpuBuffer::from_slice(gpu, "zs", &get("policy.zs")).unwrap();
        let tc = gpu.tensor_cores().is_ok();
        if !tc {
            let cfg = PolicyUpdateConfig {
                tensor_cores: true,
                ..PolicyUpdateConfig::tdmpc2(a)
            };
            let e = PolicyTrainer::new(gpu, &spec, cfg, b).err().unwrap();
            assert!(matches!(e, pompc::Error::Unsupported(_)), "{e}");
        }
        for (tensor_cores, (preset, cfg)) in [false, true]
            .into_iter()
            .filter(|&on| !on || tc)
            .flat_map(|on| presets(a).into_iter().map(move |p| (on, p)))
        {
            let cfg = PolicyUpdateConfig {
                tensor_cores,
                ..cfg
            };
            let (loss_tol, grad_tol) = if tensor_cores {
                (1e-2, 2e-2)
            } else {
                (1e-4, 1e-3)
            };
            let tp = cfg.states;
            let mut t = PolicyTrainer::new(gpu, &spec, cfg, b).unwrap();
            t.set_noise(&get("policy.eps")[..tp * b * a]).unwrap();
            t.set_planner(&get("policy.planner")[..tp * b * 2 * a])
                .unwrap();
            if preset == "pompc" {
                t.set_prior(&prior).unwrap();
            }
            let l = t.losses_and_grads(&params, &zs, heads).unwrap();
            let want = get(&format!("{preset}.losses"));
            let got = [l.q, l.entropy, l.kl, l.ll, l.total, l.prior_fit];
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= loss_tol * w.abs().max(1e-3),
                    "{preset} loss term {i} (tensor cores {tensor_cores}): gpu {g}, PyTorch \
                     {w} ({})",
                    gpu.describe()
                );
            }
            let grads = t.grads().download(gpu).unwrap();
            let prior_grads = t.prior_grads().map(|g| g.download(gpu).unwrap());
            for (name, shape, off) in layout.tensors() {
                if !name.starts_with("_pi.") {
                    continue;
                }
                let n: usize = shape.iter().product();
                let check = |what: &str, got: &[f32]| {
                    let want: Vec<f64> = get(&format!("{preset}.{what}.{name}"))
                        .iter()
                        .map(|&v| v as f64)
                        .collect();
                    let e = common::rel_error(got, &want);
                    assert!(
                        e < grad_tol,
                        "{preset} {what} of {name} (tensor cores {tensor_cores}): {e:e} ({})",
                        gpu.describe()
                    );
                    if tensor_cores {
                        eprintln!("{preset} {what} of {name} on tensor cores: error {e:.2e}");
                    }
                };
                check("grad", &grads[off..off + n]);
                if let Some(pg) = &prior_grads {
                    check("prior_grad", &pg[off..off + n]);
                }
            }
        }
    }
}

/// Random weights for agent `i`: its own init with Q heads and policy outputs perturbed.
fn agent_model(spec: &ModelSpec, i: u64, r: &mut impl Rng) -> Vec<f32> {
    let mut w = Weights::init(spec, 10 + i).unwrap();
    for (name, t) in w.tensors.iter_mut() {
        if name.starts_with("_Qs.params.2") || name.starts_with("_pi.2") {
            t.data
                .iter_mut()
                .for_each(|v| *v += r.random_range(-0.3f32..0.3));
        }
    }
    ParamLayout::new(spec).flatten(&w).unwrap()
}

/// Planner Gaussians `[rows, 2A]` with means in +-0.8 and stds in [0.1, 1).
fn random_planner(r: &mut impl Rng, rows: usize, a: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(rows * 2 * a);
    for _ in 0..rows {
        v.extend((0..a).map(|_| r.random_range(-0.8f32..0.8)));
        v.extend((0..a).map(|_| r.random_range(0.1f32..1.0)));
    }
    v
}

#[test]
fn a_population_policy_update_is_each_agent_alone() {
    // Three agents per family (own parameters, latents, planner Gaussians, seeds and loss
    // coefficients: PO-MPC at lambda 0.1, 1 and 9 convex or not; TD-M(PC)² and TD-MPC2 with
    // other entropy weights) through three updates in the same dispatches, against each
    // agent's own trainer: losses, gradient norms, the policy's and the prior's parameters
    // and the running scales as alone, within f32 round-off.
    let spec = ModelSpec {
        num_q: 5,
        ..ModelSpec::tiny(5, 3)
    };
    let a = spec.action_dim;
    let batch = 6;
    let mut r = rng("policy population");
    let families: Vec<Vec<PolicyUpdateConfig>> = vec![
        vec![
            PolicyUpdateConfig::pompc(a, 0.1),
            PolicyUpdateConfig::pompc(a, 9.0).convex(9.0),
            PolicyUpdateConfig::pompc(a, 1.0),
        ],
        vec![PolicyUpdateConfig::tdmpc_square(a); 2],
        vec![PolicyUpdateConfig::bmpc(a); 2],
        vec![
            PolicyUpdateConfig::tdmpc2(a),
            PolicyUpdateConfig {
                loss: pompc::kernels::policy_loss::PolicyLossConfig {
                    alpha: 3e-4,
                    ..PolicyUpdateConfig::tdmpc2(a).loss
                },
                ..PolicyUpdateConfig::tdmpc2(a)
            },
        ],
    ];
    let layout = ParamLayout::new(&spec);
    let p = layout.len();
    let l = spec.latent_dim;
    // Each agent's latents [T + 1, B, L] with T = 3.
    let z_len = 4 * batch * l;
    for gpu in gpus() {
        let tag = gpu.describe();
        for family in &families {
            let g = family.len();
            let cfgs: Vec<PolicyUpdateConfig> = family
                .iter()
                .enumerate()
                .map(|(i, c)| PolicyUpdateConfig {
                    seed: 100 + i as u64,
                    ..c.clone()
                })
                .collect();
            let flats: Vec<Vec<f32>> = (0..g)
                .map(|i| agent_model(&spec, i as u64, &mut r))
                .collect();
            let zs: Vec<Vec<f32>> = (0..g).map(|_| latents(&mut r, 4 * batch, l)).collect();
            let mut pop = PolicyTrainer::population(gpu, &spec, &cfgs, batch).unwrap();
            let rows = pop.rows();
            let pop_params = GpuBuffer::from_slice(gpu, "params", &flats.concat()).unwrap();
            let pop_zs = GpuBuffer::from_slice(gpu, "zs", &zs.concat()).unwrap();
            assert_eq!(pop_zs.len(), g * z_len);
            let mut alone: Vec<PolicyTrainer> = cfgs
                .iter()
                .map(|c| PolicyTrainer::new(gpu, &spec, c.clone(), batch).unwrap())
                .collect();
            let own: Vec<(GpuBuffer<f32>, GpuBuffer<f32>)> = (0..g)
                .map(|i| {
                    (
                        GpuBuffer::from_slice(gpu, "params", &flats[i]).unwrap(),
                        GpuBuffer::from_slice(gpu, "zs", &zs[i]).unwrap(),
                    )
                })
                .collect();
            let kind = format!("{:?} x {g}", cfgs[0].prior);
            for u in 0..3 {
                let planners: Vec<Vec<f32>> =
                    (0..g).map(|_| random_planner(&mut r, rows, a)).collect();
                pop.set_planner(&planners.concat()).unwrap();
                let got = pop.update_agents(&pop_params, &pop_zs).unwrap();
                for i in 0..g {
                    alone[i].set_planner(&planners[i]).unwrap();
                    let want = alone[i].update(&own[i].0, &own[i].1).unwrap();
                    let x = got[i];
                    for (what, v, w) in [
                        ("q", x.q, want.q),
                        ("entropy", x.entropy, want.entropy),
                        ("kl", x.kl, want.kl),
                        ("ll", x.ll, want.ll),
                        ("total", x.total, want.total),
                        ("prior fit", x.prior_fit, want.prior_fit),
                        ("grad norm", x.grad_norm, want.grad_norm),
                    ] {
                        assert!(
                            (v - w).abs() <= 1e-5 * w.abs().max(1e-3),
                            "{kind} update {u} agent {i} {what}: {v} in the population, {w} \
                             alone ({tag})"
                        );
                    }
                }
            }
            let pp = pop_params.download(gpu).unwrap();
            let prior_pop = pop.prior_params().map(|b| b.download(gpu).unwrap());
            let scales_pop: Vec<Vec<f32>> = pop
                .scales()
                .iter()
                .map(|s| s.read_values(gpu).unwrap())
                .collect();
            for (i, t) in alone.iter().enumerate() {
                let want = own[i].0.download(gpu).unwrap();
                let err = |got: &[f32], want: &[f32]| {
                    got.iter()
                        .zip(want)
                        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-2))
                        .fold(0.0f32, f32::max)
                };
                let e = err(&pp[i * p..(i + 1) * p], &want);
                assert!(
                    e <= 1e-5,
                    "{kind} agent {i} parameters: error {e:e} ({tag})"
                );
                if let (Some(pop_prior), Some(own_prior)) = (&prior_pop, t.prior_params()) {
                    let want = own_prior.download(gpu).unwrap();
                    let e = err(&pop_prior[i * p..(i + 1) * p], &want);
                    assert!(e <= 1e-5, "{kind} agent {i} prior: error {e:e} ({tag})");
                }
                for (k, s) in t.scales().iter().enumerate() {
                    let (x, y) = (scales_pop[k][i], s.read_value(gpu).unwrap());
                    assert!(
                        (x - y).abs() <= 1e-5 * y.abs(),
                        "{kind} agent {i} scale {k}: {x} in the population, {y} alone ({tag})"
                    );
                }
            }
        }
    }
}

#[test]
fn policy_population_requests_that_cannot_share_are_errors() {
    use pompc::Error;
    let spec = ModelSpec {
        num_q: 5,
        ..ModelSpec::tiny(5, 3)
    };
    let a = spec.action_dim;
    let gpu = &gpus()[0];
    let pompc = |l: f32, seed: u64| PolicyUpdateConfig {
        seed,
        ..PolicyUpdateConfig::pompc(a, l)
    };
    // Different families, other learning rates, other horizons: separate populations.
    for cfgs in [
        vec![pompc(1.0, 0), PolicyUpdateConfig::tdmpc2(a)],
        vec![
            pompc(1.0, 0),
            PolicyUpdateConfig {
                lr: 1e-3,
                ..pompc(1.0, 1)
            },
        ],
        vec![pompc(1.0, 0), pompc(1.0, 1).with_forward_prior_fit()],
        vec![],
    ] {
        let e = PolicyTrainer::population(gpu, &spec, &cfgs, 4)
            .err()
            .expect("an error");
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }
    let mut pop =
        PolicyTrainer::population(gpu, &spec, &[pompc(1.0, 0), pompc(9.0, 1)], 4).unwrap();
    let p = ParamLayout::new(&spec).len();
    let l = spec.latent_dim;
    let params = GpuBuffer::<f32>::new(gpu, "params", 2 * p).unwrap();
    let zs = GpuBuffer::<f32>::new(gpu, "zs", 2 * 4 * 4 * l).unwrap();
    // One agent's parameters, latents that do not split in two, the one-agent calls.
    let one = GpuBuffer::<f32>::new(gpu, "params", p).unwrap();
    let e = pop.update_agents(&one, &zs).unwrap_err();
    assert!(matches!(e, Error::Shape(_)), "{e}");
    let odd = GpuBuffer::<f32>::new(gpu, "zs", 2 * 4 * 4 * l + 1).unwrap();
    let e = pop.update_agents(&params, &odd).unwrap_err();
    assert!(matches!(e, Error::Shape(_)), "{e}");
    let e = pop.update(&params, &zs).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    // Planner Gaussians for one agent.
    let rows = pop.rows();
    let e = pop
        .set_planner(&random_planner(&mut rng("x"), rows, a))
        .unwrap_err();
    assert!(matches!(e, Error::Shape(_)), "{e}");
    // The population still updates.
    pop.set_planner(&random_planner(&mut rng("y"), 2 * rows, a))
        .unwrap();
    let z = latents(&mut rng("z"), 2 * 4 * 4, l);
    zs.upload(gpu, &z).unwrap();
    let flat = ParamLayout::new(&spec)
        .flatten(&Weights::init(&spec, 1).unwrap())
        .unwrap();
    params.upload(gpu, &[flat.clone(), flat].concat()).unwrap();
    let losses = pop.update_agents(&params, &zs).unwrap();
    assert_eq!(losses.len(), 2);
    assert!(losses.iter().all(|l| l.total.is_finite()));
}
