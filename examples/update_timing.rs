//! Host-side cost of one world-model update: recording the dispatches, encoding them
//! (bind groups, passes) and the submit-to-read-back wait, each timed separately; with
//! `--profile`, where the GPU time of the world-model update and of the PO-MPC policy update
//! (lambda 1) goes, each dispatch timed on its own and summed per kernel and launch shape.
//!
//! `cargo run --release --example update_timing -- [batch] [--profile]`

use pompc::bench::Workload;
use pompc::model::{ModelSpec, Weights};
use pompc::train::{UpdateBatch, UpdateConfig, WorldModelTrainer};
use pompc::{Gpu, GpuOptions, Recorder};
use std::time::Instant;

fn main() -> pompc::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let profile = args.iter().any(|a| a == "--profile");
    let batch: usize = match args.iter().find(|a| !a.starts_with("--")) {
        Some(s) => s
            .parse()
            .map_err(|_| pompc::Error::InvalidArgument(format!("batch {s:?}: a whole number")))?,
        None => 256,
    };
    let gpu = Gpu::new(GpuOptions::default())?;
    println!("adapter: {}", gpu.describe());
    let spec = ModelSpec::tdmpc2(5, 24, 6)?;
    if profile {
        let work = Workload {
            spec: &spec,
            batch,
            runs: 10,
            warmup: 5,
        };
        let rows = pompc::bench::profile_update(&gpu, work)?;
        print!(
            "\n{}",
            pompc::bench::profile_table(
                &format!("world-model update, 5M, batch {batch}"),
                "update",
                &rows
            )
        );
        let cfg = pompc::train::PolicyUpdateConfig::pompc(spec.action_dim, 1.0);
        let rows = pompc::bench::profile_policy(&gpu, work, cfg)?;
        print!(
            "\n{}",
            pompc::bench::profile_table(
                &format!("PO-MPC policy update (lambda 1), 5M, batch {batch}"),
                "update",
                &rows
            )
        );
        return Ok(());
    }
    let cfg = UpdateConfig::tdmpc2();
    let t = cfg.horizon;
    let mut tr = WorldModelTrainer::new(&gpu, &Weights::init(&spec, 0)?, cfg, batch)?;
    tr.upload(&UpdateBatch {
        obs: vec![0.1; (t + 1) * batch * spec.obs_dim],
        action: vec![0.2; t * batch * spec.action_dim],
        reward: vec![0.5; t * batch],
        pi_noise: None,
        target_heads: None,
    })?;
    for i in 0..4 {
        let heads = tr.upload_heads_only()?;
        let t0 = Instant::now();
        let mut rec = Recorder::new(&gpu);
        tr.record_losses_and_grads(&mut rec, heads, true, None)?;
        tr.record_optimizer(&mut rec)?;
        let h = rec.read(tr.losses_buffer());
        let n = rec.dispatches();
        let t1 = Instant::now();
        let out = rec.finish()?;
        let t2 = Instant::now();
        let _ = out.get(&h)?;
        println!(
            "update {i}: {n} dispatches, record {:.3} ms, encode+submit+wait {:.3} ms (of which submit to read-back {:.3} ms)",
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            out.timing.wall_seconds * 1e3
        );
    }
    Ok(())
}
