//! Criterion bench of TD-MPC2's plan step (5M preset, obs 24, action 6, 512 samples, horizon
//! 3, 6 iterations): host wall clock per `Planner::plan` call for 1, 16 and 256
//! environments. `pompc bench plan` reports the same with GPU times and env-plans per
//! second, the figures in BENCHMARKS.md.
//!
//! `POMPC_BENCH_SMALL=1` uses the 1M preset and one environment only (lavapipe needs about a
//! minute per 5M plan step).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pompc::model::{ModelSpec, Weights, WorldModel};
use pompc::planner::{Planner, PlannerConfig};
use pompc::{Gpu, GpuOptions};

fn bench(c: &mut Criterion) {
    let gpu = Gpu::new(GpuOptions::default()).expect("a GPU adapter");
    eprintln!("adapter: {}", gpu.describe());
    let small = std::env::var_os("POMPC_BENCH_SMALL").is_some();
    let spec = ModelSpec::tdmpc2(if small { 1 } else { 5 }, 24, 6).unwrap();
    let model = WorldModel::new(&gpu, &Weights::init(&spec, 0).unwrap()).unwrap();
    let batches: &[usize] = if small { &[1] } else { &[1, 16, 256] };
    let mut group = c.benchmark_group("plan");
    group.sample_size(10);
    for &b in batches {
        let mut planner = Planner::new(&gpu, &model, PlannerConfig::tdmpc2(6)).unwrap();
        let obs = vec![0.1f32; b * spec.obs_dim];
        let first = vec![false; b];
        planner.plan(&obs, &first).unwrap();
        group.throughput(Throughput::Elements(b as u64));
        group.bench_function(format!("5M A=6 B={b}"), |bch| {
            bch.iter(|| planner.plan(&obs, &first).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
