//! pompc's main job: TD-MPC2's planner over a 5M-preset world model, for a batch of
//! environments, on the best adapter; with no adapter at all, on the CPU mirror.
//!
//! `cargo run --release --example quickstart [-- weights.safetensors]`
//!
//! Without a weights file the model has TD-MPC2's initialization with random reward and Q
//! heads (so that plans differ); `scripts/export_tdmpc2.py` converts a TD-MPC2 checkpoint.

use pompc::model::{ModelSpec, Weights, WorldModel};
use pompc::planner::{PlanMode, Planner, PlannerConfig};
use pompc::reference::planner::MirrorPlanner;
use pompc::{Error, Gpu, GpuOptions};
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn main() -> pompc::Result<()> {
    let weights = match std::env::args().nth(1) {
        Some(path) => {
            println!("weights: {path}");
            Weights::load(path)?
        }
        None => {
            let spec = ModelSpec::tdmpc2(5, 24, 6)?;
            let mut w = Weights::init(&spec, 0)?;
            let mut r = rand::rngs::StdRng::seed_from_u64(1);
            for name in ["_reward.2.weight", "_Qs.params.2.weight"] {
                if let Some(t) = w.tensors.get_mut(name) {
                    t.data
                        .iter_mut()
                        .for_each(|v| *v = r.random_range(-0.05..0.05));
                }
            }
            println!("weights: TD-MPC2 5M preset (obs 24, action 6), random reward and Q heads");
            w
        }
    };
    let spec = weights.spec.clone();
    println!("model: {} parameters", spec.param_count());
    let mut cfg = PlannerConfig::tdmpc2(spec.action_dim);
    cfg.plan_mode = PlanMode::Eval;

    let gpu = match Gpu::new(GpuOptions::default()) {
        Ok(g) => Some(g),
        Err(e @ Error::NoAdapter { .. }) => {
            println!("no GPU adapter ({e}); planning on the CPU mirror instead");
            None
        }
        Err(e) => return Err(e),
    };
    let software = gpu
        .as_ref()
        .is_none_or(|g| g.info().device_type == wgpu::DeviceType::Cpu);
    if software {
        // A CPU runs TD-MPC2's full plan step (36 GFLOP) in about a minute: keep it short.
        cfg.num_samples = 64;
        cfg.num_elites = 8;
        cfg.num_pi_trajs = 8;
        cfg.iterations = 2;
        println!(
            "software adapter: reduced planner ({} samples, {} iterations) to keep this quick",
            cfg.num_samples, cfg.iterations
        );
    }
    let batch = if software { 2 } else { 16 };
    let mut r = rand::rngs::StdRng::seed_from_u64(2);
    let obs: Vec<f32> = (0..batch * spec.obs_dim)
        .map(|_| r.random_range(-1.0..1.0))
        .collect();
    println!(
        "planning for {batch} environments: horizon {}, {} samples, {} elites, {} iterations",
        cfg.horizon, cfg.num_samples, cfg.num_elites, cfg.iterations
    );

    match &gpu {
        Some(gpu) => {
            println!("adapter: {}", gpu.describe());
            let model = WorldModel::new(gpu, &weights)?;
            let mut planner = Planner::new(gpu, &model, cfg)?.with_timestamps(true);
            let steps = if software { 2 } else { 4 };
            for step in 0..steps {
                let first = vec![step == 0; batch];
                let plan = planner.plan(&obs, &first)?;
                let t = planner.last_timing().unwrap_or_default();
                println!(
                    "step {step}: env 0 action {:.3?} value {:.3} | {:.2} ms wall, {} GPU, {} \
                     dispatches, {:.2} env-plans/s",
                    plan.action(0),
                    plan.value[0],
                    t.wall_seconds * 1e3,
                    t.gpu_seconds
                        .map_or("-".into(), |g| format!("{:.2} ms", g * 1e3)),
                    t.dispatches,
                    batch as f64 / t.wall_seconds
                );
            }
        }
        None => {
            let mut planner = MirrorPlanner::new(&weights, &cfg, batch)?;
            for step in 0..2 {
                let first = vec![step == 0; batch];
                let t0 = Instant::now();
                let plan = planner.plan(&obs, &first)?;
                println!(
                    "step {step} (CPU mirror): env 0 action {:.3?} value {:.3} | {:.1} s",
                    &plan.action[..spec.action_dim],
                    plan.value[0],
                    t0.elapsed().as_secs_f64()
                );
            }
        }
    }
    Ok(())
}
