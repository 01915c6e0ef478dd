//! Cross-backend agreement: the same seed and inputs on Vulkan and on GL give the same plans,
//! world-model update and policy update within stated tolerances. In CI both backends are
//! Mesa's llvmpipe (lavapipe through Vulkan, llvmpipe through EGL/GL): the same CPU, but two
//! shader paths (naga's SPIR-V and naga's GLSL, each compiled by its own driver front end).
//! Both backends must be present: a missing one fails with pompc's message.
//!
//! Tolerances: plans (actions, means, stds, values) 1e-4 of max(|value|, 1), and the same
//! chosen samples, as the GPU against the f64 mirror (tests/planner.rs); world-model losses
//! 1e-5 relative and gradients 1e-4 of each tensor's rms (two f32 evaluations of the same
//! sums in possibly different orders); policy losses 1e-5 relative, gradients 1e-4 of rms.

mod common;

use common::rel_error;
use pompc::model::WorldModel;
use pompc::planner::{Planner, PlannerConfig};
use pompc::train::{
    ParamLayout, PolicyTrainer, PolicyUpdateConfig, UpdateBatch, UpdateConfig, WorldModelTrainer,
};
use pompc::{Gpu, GpuBuffer, GpuOptions};
use rand::{Rng, SeedableRng};

fn open(backends: wgpu::Backends) -> Gpu {
    // f32 on every backend: the agreement tolerances are f32's.
    Gpu::new(GpuOptions::backend(backends).with_precision(Some(pompc::Precision::F32)))
        .unwrap_or_else(|e| panic!("cross-backend tests need a {backends:?} adapter: {e}"))
}

fn pair() -> [Gpu; 2] {
    let g = [open(wgpu::Backends::VULKAN), open(wgpu::Backends::GL)];
    for x in &g {
        eprintln!("backend: {}", x.describe());
    }
    g
}

fn close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * y.abs().max(1.0),
            "{what}[{i}]: vulkan {x}, gl {y}"
        );
    }
}

#[test]
fn plans_agree() {
    let gpus = pair();
    let weights = common::load_fixture("tiny").0;
    let cfg = PlannerConfig {
        num_samples: 48,
        num_elites: 8,
        num_pi_trajs: 6,
        iterations: 3,
        seed: 17,
        ..PlannerConfig::tdmpc2(weights.spec.action_dim)
    };
    let batch = 3;
    let mut r = rand::rngs::StdRng::seed_from_u64(5);
    let obs: Vec<f32> = (0..batch * weights.spec.obs_dim)
        .map(|_| r.random_range(-1.0..1.0))
        .collect();
    let plans: Vec<_> = gpus
        .iter()
        .map(|gpu| {
            let model = WorldModel::new(gpu, &weights).unwrap();
            let mut p = Planner::new(gpu, &model, cfg.clone()).unwrap();
            let cold = p.plan(&obs, &vec![true; batch]).unwrap();
            let warm = p.plan(&obs, &vec![false; batch]).unwrap();
            (cold, warm)
        })
        .collect();
    for (i, (v, g)) in [(&plans[0].0, &plans[1].0), (&plans[0].1, &plans[1].1)]
        .into_iter()
        .enumerate()
    {
        assert_eq!(v.chosen, g.chosen, "step {i}: chosen samples");
        close(&format!("step {i} action"), &v.action, &g.action, 1e-4);
        close(&format!("step {i} mean"), &v.mean, &g.mean, 1e-4);
        close(&format!("step {i} std"), &v.std, &g.std, 1e-4);
        close(&format!("step {i} value"), &v.value, &g.value, 1e-4);
    }
}

#[test]
fn training_updates_agree() {
    let gpus = pair();
    let (weights, f) = common::load_fixture("update_tiny");
    let get = |k: &str| f[k].clone();
    let heads = get("update.heads");
    let batch = UpdateBatch {
        obs: get("update.obs"),
        action: get("update.action"),
        reward: get("update.reward"),
        pi_noise: Some(get("update.pi_noise")),
        target_heads: Some([heads[0] as usize, heads[1] as usize]),
    };
    let spec = weights.spec.clone();
    let layout = ParamLayout::new(&spec);
    let mut out = Vec::new();
    for gpu in &gpus {
        let mut tr = WorldModelTrainer::new(gpu, &weights, UpdateConfig::tdmpc2(), 6).unwrap();
        let l = tr.losses_and_grads(&batch).unwrap();
        let g = tr.grads().download(gpu).unwrap();
        // The policy update (PO-MPC) on the rollout latents of that update.
        let mut pt = PolicyTrainer::new(
            gpu,
            &spec,
            PolicyUpdateConfig::pompc(spec.action_dim, 1.0),
            6,
        )
        .unwrap();
        let rows = pt.rows();
        let mut r = rand::rngs::StdRng::seed_from_u64(9);
        let a = spec.action_dim;
        let planner: Vec<f32> = (0..rows)
            .flat_map(|_| {
                let mut v: Vec<f32> = (0..a).map(|_| r.random_range(-0.8..0.8)).collect();
                v.extend((0..a).map(|_| r.random_range(0.1..1.0)));
                v
            })
            .collect();
        let eps: Vec<f32> = (0..rows * a).map(|_| r.random_range(-2.0..2.0)).collect();
        pt.set_planner(&planner).unwrap();
        pt.set_noise(&eps).unwrap();
        let params =
            GpuBuffer::from_slice(gpu, "params", &layout.flatten(&weights).unwrap()).unwrap();
        let pl = pt.losses_and_grads(&params, tr.latents(), [1, 0]).unwrap();
        let pg = pt.grads().download(gpu).unwrap();
        out.push((l, g, pl, pg));
    }
    let (v, g) = (&out[0], &out[1]);
    for (what, x, y) in [
        ("consistency", v.0.consistency, g.0.consistency),
        ("reward", v.0.reward, g.0.reward),
        ("value", v.0.value, g.0.value),
        ("policy total", v.2.total, g.2.total),
        ("prior fit", v.2.prior_fit, g.2.prior_fit),
    ] {
        assert!(
            (x - y).abs() <= 1e-5 * y.abs().max(1e-3),
            "{what}: vulkan {x}, gl {y}"
        );
    }
    for (name, shape, off) in layout.tensors() {
        let n: usize = shape.iter().product();
        for (what, a, b) in [("world-model", &v.1, &g.1), ("policy", &v.3, &g.3)] {
            let want: Vec<f64> = b[off..off + n].iter().map(|&x| x as f64).collect();
            if want.iter().all(|&x| x == 0.0) {
                assert!(
                    a[off..off + n].iter().all(|&x| x == 0.0),
                    "{what} gradient of {name}"
                );
                continue;
            }
            let e = rel_error(&a[off..off + n], &want);
            assert!(e < 1e-4, "{what} gradient of {name}: {e:e}");
        }
    }
}
