//! TD-MPC2's world-model update on the GPU against PyTorch (`scripts/make_fixtures.py`,
//! `tests/fixtures/update_tiny.safetensors`: the tiny preset, a batch of 6 sub-trajectories of
//! horizon 3, TD-MPC2's b.6 update computed in float64 by autograd).
//!
//! Tolerances:
//! * losses and TD targets: 1e-4 relative (f32 forward passes of a few layers).
//! * gradients: per tensor, 1e-3 of max(|g|, rms of the tensor's gradient). A gradient is a
//!   sum over 18 rows of products of f32 activations through up to 9 layers (the encoder's
//!   gradient passes back through three dynamics steps); measured ~1e-5 on lavapipe.
//! * parameters after one Adam step: 3e-6 absolute. The first Adam step moves a parameter by
//!   about lr * sign(g) = 3e-4 (0.3x for the encoder), so this is 1% of the step; the f32
//!   parameters (|p| < 4) round to ~2e-7.

mod common;

use common::{gpus, rel_error};
use pompc::model::{Net, Weights};
use pompc::train::{UpdateBatch, UpdateConfig, WorldModelTrainer};
use std::collections::HashMap;

struct Fixture {
    weights: Weights,
    t: HashMap<String, Vec<f32>>,
}

fn fixture() -> Fixture {
    let (weights, t) = common::load_fixture("update_tiny");
    Fixture { weights, t }
}

impl Fixture {
    fn get(&self, k: &str) -> Vec<f32> {
        self.t
            .get(k)
            .unwrap_or_else(|| panic!("fixture.{k} missing"))
            .clone()
    }
    fn batch(&self) -> UpdateBatch {
        let heads = self.get("update.heads");
        UpdateBatch {
            obs: self.get("update.obs"),
            action: self.get("update.action"),
            reward: self.get("update.reward"),
            pi_noise: Some(self.get("update.pi_noise")),
            target_heads: Some([heads[0] as usize, heads[1] as usize]),
        }
    }
}

fn close(what: &str, got: f32, want: f32, tol: f32) {
    assert!(
        (got - want).abs() <= tol * want.abs().max(1e-3),
        "{what}: gpu {got}, PyTorch {want}"
    );
}

/// The update's products at f32, and on tensor cores where the device has them (f16
/// operands, the gradients scaled into f16's range: f16's 11 significant bits, as TF32's, so
/// losses within 1e-2 and gradients within 3e-2 of the tensor's scale, where an H100 measured
/// 1.32e-2 at worst (2026-12-07); the worst errors are printed). Without tensor cores, asking
/// for them is an `Unsupported` error.
#[test]
fn losses_and_gradients_match_pytorch() {
    let f = fixture();
    for gpu in gpus() {
        let tc = UpdateConfig {
            tensor_cores: true,
            ..UpdateConfig::tdmpc2()
        };
        let mut runs = vec![(UpdateConfig::tdmpc2(), 1e-4, 1e-3)];
        match gpu.tensor_cores() {
            Ok(_) => runs.push((tc, 1e-2, 3e-2)),
            Err(_) => {
                let e = WorldModelTrainer::new(gpu, &f.weights, tc, 6)
                    .err()
                    .unwrap();
                assert!(matches!(e, pompc::Error::Unsupported(_)), "{e}");
            }
        }
        for (cfg, loss_tol, grad_tol) in runs {
            matches_pytorch(gpu, &f, cfg, loss_tol, grad_tol);
        }
    }
}

/// One update of the fixture's batch with `cfg` against PyTorch's.
fn matches_pytorch(gpu: &pompc::Gpu, f: &Fixture, cfg: UpdateConfig, loss_tol: f32, grad_tol: f64) {
    let products = if cfg.tensor_cores {
        "tensor cores"
    } else {
        "f32"
    };
    let mut tr = WorldModelTrainer::new(gpu, &f.weights, cfg, 6).unwrap();
    let l = tr.losses_and_grads(&f.batch()).unwrap();
    let want = f.get("update.losses");
    close("consistency loss", l.consistency, want[0], loss_tol);
    close("reward loss", l.reward, want[1], loss_tol);
    close("value loss", l.value, want[2], loss_tol);
    close("total loss", l.total, want[3], loss_tol);
    let td = tr.td_targets().download(gpu).unwrap();
    let e = rel_error(
        &td,
        &f.get("update.td")
            .iter()
            .map(|&v| v as f64)
            .collect::<Vec<_>>(),
    );
    assert!(e < loss_tol as f64, "TD targets ({products}): {e:e}");
    let mut worst = 0.0f64;
    let grads = tr.grads().download(gpu).unwrap();
    let layout = tr.layout();
    let pi = layout.net(Net::Policy);
    for (name, shape, off) in layout.tensors() {
        let n: usize = shape.iter().product();
        let got = &grads[off..off + n];
        if pi.contains(&off) {
            assert!(
                got.iter().all(|&g| g == 0.0),
                "{name}: the policy got a gradient"
            );
            continue;
        }
        let want: Vec<f64> = f
            .get(&format!("grad.{name}"))
            .iter()
            .map(|&v| v as f64)
            .collect();
        let e = rel_error(got, &want);
        assert!(
            e < grad_tol,
            "gradient of {name} ({products}): relative error {e:e} ({})",
            gpu.describe()
        );
        worst = worst.max(e);
    }
    eprintln!(
        "world-model update, products at {products}: worst gradient error {worst:.2e} on {}",
        gpu.describe()
    );
}

#[test]
fn one_update_matches_pytorch_adam_and_polyak() {
    let f = fixture();
    for gpu in gpus() {
        let mut tr = WorldModelTrainer::new(gpu, &f.weights, UpdateConfig::tdmpc2(), 6).unwrap();
        let l = tr.update(&f.batch()).unwrap();
        close(
            "gradient norm",
            l.grad_norm,
            f.get("update.grad_norm")[0],
            1e-4,
        );
        let after = tr.weights().unwrap();
        for (name, t) in after.tensors.iter().chain(after.extra.iter()) {
            let want = f.get(&format!("after.{name}"));
            let worst = t
                .data
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0.0f32, f32::max);
            assert!(worst <= 3e-6, "{name} after one update: off by {worst:e}");
        }
    }
}

/// The KL-regularized critic target (algorithm.md a.3.3, lambda_Q = 0.5) against next-state
/// planner Gaussians matches PyTorch's; against an adaptive prior equal to the policy itself
/// the KL is 0 and the target is TD-MPC2's.
#[test]
fn kl_regularized_td_targets() {
    let f = fixture();
    let want = |k: &str| -> Vec<f64> { f.get(k).iter().map(|&v| v as f64).collect() };
    let layout = pompc::train::ParamLayout::new(&f.weights.spec);
    let flat = layout.flatten(&f.weights).unwrap();
    for gpu in gpus() {
        let cfg = UpdateConfig {
            lambda_q: 0.5,
            ..UpdateConfig::tdmpc2()
        };
        let mut tr = WorldModelTrainer::new(gpu, &f.weights, cfg.clone(), 6).unwrap();
        // Without the next-state Gaussians the planner target is an error.
        assert!(tr.losses_and_grads(&f.batch()).is_err());
        tr.set_next_planner(&f.get("update.next_planner")).unwrap();
        tr.losses_and_grads(&f.batch()).unwrap();
        let td = tr.td_targets().download(gpu).unwrap();
        let e = rel_error(&td, &want("update.td_klq"));
        assert!(
            e < 1e-4,
            "KL-regularized TD targets: {e:e} ({})",
            gpu.describe()
        );
        let plain = want("update.td");
        assert!(rel_error(&td, &plain) > 1e-3, "lambda_Q changed nothing");

        let adaptive = UpdateConfig {
            kl_target: pompc::train::KlTarget::Adaptive,
            ..cfg
        };
        let mut tr = WorldModelTrainer::new(gpu, &f.weights, adaptive, 6).unwrap();
        let prior = pompc::GpuBuffer::from_slice(gpu, "prior = policy", &flat).unwrap();
        tr.update_with_prior(&f.batch(), &prior).unwrap();
        let td = tr.td_targets().download(gpu).unwrap();
        let e = rel_error(&td, &plain);
        assert!(e < 1e-4, "target against the policy itself: {e:e}");
        assert!(
            tr.update(&f.batch()).is_err(),
            "adaptive target without the prior"
        );
    }
}

#[test]
fn a_population_update_is_each_agent_alone() {
    // Three agents (own weights, seeds, batches; the first update with given noise and heads,
    // the rest drawn on the GPU and from each agent's RNG) through three updates in the same
    // dispatches, against each agent's own trainer: losses, gradient norms, parameters and
    // target heads as alone, within f32 round-off (bit for bit on lavapipe).
    use common::{rng, uniform};
    use pompc::model::ModelSpec;
    // Five Q heads, so that agents draw different target pairs.
    let spec = ModelSpec {
        num_q: 5,
        ..ModelSpec::tiny(5, 3)
    };
    let (agents, batch) = (3, 6);
    let mut r = rng("world population");
    let weights: Vec<Weights> = (0..agents)
        .map(|i| Weights::init(&spec, 10 + i as u64).unwrap())
        .collect();
    let cfgs: Vec<UpdateConfig> = (0..agents)
        .map(|i| UpdateConfig {
            seed: 100 + i as u64,
            ..UpdateConfig::tdmpc2()
        })
        .collect();
    let t = cfgs[0].horizon;
    let batches: Vec<Vec<UpdateBatch>> = (0..3)
        .map(|u| {
            (0..agents)
                .map(|i| UpdateBatch {
                    obs: uniform(&mut r, (t + 1) * batch * spec.obs_dim, 1.0),
                    action: uniform(&mut r, t * batch * spec.action_dim, 1.0),
                    reward: uniform(&mut r, t * batch, 2.0),
                    pi_noise: (u == 0).then(|| uniform(&mut r, t * batch * spec.action_dim, 1.0)),
                    target_heads: (u == 0).then_some([i % 2, 2 + i % 3]),
                })
                .collect()
        })
        .collect();
    for gpu in gpus() {
        let mut pop = WorldModelTrainer::population(gpu, &weights, &cfgs, batch).unwrap();
        let mut alone: Vec<WorldModelTrainer> = (0..agents)
            .map(|i| WorldModelTrainer::new(gpu, &weights[i], cfgs[i].clone(), batch).unwrap())
            .collect();
        let tag = gpu.describe();
        for (u, bs) in batches.iter().enumerate() {
            let got = pop.update_agents(bs).unwrap();
            for i in 0..agents {
                let want = alone[i].update(&bs[i]).unwrap();
                let g = got[i];
                for (what, x, y) in [
                    ("consistency", g.consistency, want.consistency),
                    ("reward", g.reward, want.reward),
                    ("value", g.value, want.value),
                    ("grad norm", g.grad_norm, want.grad_norm),
                ] {
                    assert!(
                        (x - y).abs() <= 1e-6 * y.abs().max(1e-6),
                        "update {u} agent {i} {what}: {x} in the population, {y} alone ({tag})"
                    );
                }
            }
        }
        for (i, a) in alone.iter().enumerate() {
            let (p, w) = (pop.agent_weights(i).unwrap(), a.weights().unwrap());
            for (name, t) in w.tensors.iter().chain(&w.extra) {
                let q = p.tensors.get(name).or(p.extra.get(name)).unwrap();
                let e = rel_error(
                    &q.data,
                    &t.data.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                );
                assert!(e <= 1e-6, "agent {i} {name}: error {e:e} ({tag})");
            }
        }
    }
}

#[test]
fn population_requests_that_cannot_share_are_errors() {
    // Agents that differ in more than the seed, the KL-regularized critic target over several
    // agents, and batches that do not match the population: clear errors, nothing recorded.
    use pompc::Error;
    use pompc::model::ModelSpec;
    let gpu = &gpus()[0];
    let spec = ModelSpec::tiny(5, 3);
    let w = Weights::init(&spec, 1).unwrap();
    let cfg = UpdateConfig::tdmpc2();
    let err = |weights: &[Weights], cfgs: &[UpdateConfig]| {
        WorldModelTrainer::population(gpu, weights, cfgs, 4)
            .err()
            .unwrap()
    };
    let two = [w.clone(), w.clone()];
    let other_rho = UpdateConfig {
        rho: 0.7,
        ..cfg.clone()
    };
    let e = err(&two, &[cfg.clone(), other_rho]);
    assert!(
        matches!(e, Error::InvalidArgument(_)) && e.to_string().contains("seed"),
        "{e}"
    );
    let other_model = Weights::init(&ModelSpec::tiny(6, 3), 1).unwrap();
    let e = err(&[w.clone(), other_model], &[cfg.clone(), cfg.clone()]);
    assert!(e.to_string().contains("model"), "{e}");
    let kl = UpdateConfig {
        lambda_q: 0.5,
        ..cfg.clone()
    };
    let e = err(&two, &[kl.clone(), kl]);
    assert!(e.to_string().contains("lambda_q"), "{e}");
    let e = err(&two, std::slice::from_ref(&cfg));
    assert!(e.to_string().contains("configurations"), "{e}");
    let e = err(&[], &[]);
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");

    let mut pop = WorldModelTrainer::population(gpu, &two, &[cfg.clone(), cfg.clone()], 4).unwrap();
    let t = cfg.horizon;
    let batch = |noise: bool| UpdateBatch {
        obs: vec![0.1; (t + 1) * 4 * spec.obs_dim],
        action: vec![0.0; t * 4 * spec.action_dim],
        reward: vec![0.5; t * 4],
        pi_noise: noise.then(|| vec![0.0; t * 4 * spec.action_dim]),
        target_heads: None,
    };
    let e = pop.update_agents(&[batch(false)]).unwrap_err();
    assert!(e.to_string().contains("2 agents"), "{e}");
    let e = pop.update_agents(&[batch(false), batch(true)]).unwrap_err();
    assert!(e.to_string().contains("noise"), "{e}");
    let mut bad = batch(false);
    bad.reward[3] = f32::NAN;
    let e = pop.update_agents(&[batch(false), bad]).unwrap_err();
    assert!(e.to_string().contains("not finite"), "{e}");
    assert!(pop.agent_weights(2).is_err());
    // Still usable after the refusals.
    let l = pop.update_agents(&[batch(false), batch(false)]).unwrap();
    assert!(l.iter().all(|l| l.total.is_finite()));
}

/// The 5M preset's updates at batch 256 (counted, not run): the world-model update records at
/// most 145 dispatches and the PO-MPC policy update at most 80, so the launch count, which
/// bounds these updates' latency on a large GPU (issue 19), cannot creep back. 168 and 88
/// until each normed layer's bias gradient joined its LayerNorm gradients' column pass (149
/// and 80), and the Q heads' latent gradient became one multiply (145).
#[test]
fn the_5m_updates_record_at_most_145_and_80_dispatches() {
    let gpu = &gpus()[1];
    let spec = pompc::model::ModelSpec::tdmpc2(5, 24, 6).unwrap();
    let [world, policy] = pompc::bench::update_dispatches(gpu, &spec, 256).unwrap();
    eprintln!("5M updates, batch 256: {world} + {policy} dispatches");
    assert!(world <= 145, "{world} dispatches in a world-model update");
    assert!(policy <= 80, "{policy} dispatches in a policy update");
}
