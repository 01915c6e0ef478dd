//! Where the host time of a plan step goes: recording (pipeline lookups, parameter blocks),
//! encoding (bind groups, passes), GPU and read-back. Runs a small planner many times on the
//! best adapter, with each call's step recorded when it comes and recorded ahead (during the
//! previous call's wait, the default).
//!
//! `cargo run --release --example plan_timing`

use pompc::model::{ModelSpec, Weights, WorldModel};
use pompc::planner::{Planner, PlannerConfig};
use pompc::{Gpu, GpuOptions};

fn main() -> pompc::Result<()> {
    let gpu = Gpu::new(GpuOptions::default())?;
    println!("adapter: {}", gpu.describe());
    let spec = ModelSpec::tiny(8, 2);
    let model = WorldModel::new(&gpu, &Weights::init(&spec, 0)?)?;
    // TD-MPC2's dispatch structure (6 iterations, horizon 3) on a tiny model with few
    // samples: the GPU work is small, so host costs show.
    let cfg = PlannerConfig {
        num_samples: 32,
        num_elites: 8,
        num_pi_trajs: 4,
        ..PlannerConfig::tdmpc2(2)
    };
    for ahead in [false, true] {
        let mut planner = Planner::new(&gpu, &model, cfg.clone())?
            .with_timestamps(true)
            .with_prepared_steps(ahead);
        let obs = vec![0.1f32; 8];
        let (mut rec, mut enc, mut wall, mut gpu_t) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..40 {
            planner.plan(&obs, &[i == 0])?;
            let t = planner.last_timing().unwrap_or_default();
            if i >= 10 {
                rec.push(t.record_seconds * 1e3);
                enc.push(t.encode_seconds * 1e3);
                wall.push(t.wall_seconds * 1e3);
                gpu_t.push(t.gpu_seconds.unwrap_or(0.0) * 1e3);
            }
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let d = planner.last_timing().unwrap_or_default().dispatches;
        let (r, e) = (med(&mut rec), med(&mut enc));
        println!(
            "steps {}: {d} dispatches: record {:.3} ms ({:.1} us per dispatch), encode {:.3} ms \
             ({:.1} us per dispatch), GPU {:.3} ms, wall {:.3} ms",
            if ahead {
                "recorded ahead"
            } else {
                "recorded when called"
            },
            r,
            r * 1e3 / d as f64,
            e,
            e * 1e3 / d as f64,
            med(&mut gpu_t),
            med(&mut wall)
        );
    }
    Ok(())
}
