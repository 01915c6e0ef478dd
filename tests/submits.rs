//! A plan step is one submit and one read-back (`Gpu::counters`): `Planner::plan` with prepared
//! steps on and off, through warm starts, episode starts and a batch change, and
//! `Planner::plan_submit` then `wait`; classic `Mppi::step` likewise. Each check mode gets its
//! own device, so nothing else counts on it.

mod common;

use pompc::gpu::GpuCounters;
use pompc::model::{Weights, WorldModel};
use pompc::planner::custom::{Mppi, MppiConfig};
use pompc::planner::{Planner, PlannerConfig};
use pompc::{Gpu, GpuBuffer, GpuOptions, Recorder, ShaderChecks};

const ONE: GpuCounters = GpuCounters {
    submits: 1,
    readbacks: 1,
};

fn device(checks: ShaderChecks) -> Gpu {
    let opts = GpuOptions::default()
        .with_checks(checks)
        .with_precision(Some(pompc::Precision::F32))
        .with_canary(common::CANARY_WORDS);
    Gpu::new(opts).unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"))
}

#[test]
fn one_submit_and_one_readback_per_plan_and_mppi_step() {
    let weights = Weights::load(format!(
        "{}/tests/fixtures/tiny.safetensors",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let o = weights.spec.obs_dim;
    for checks in [ShaderChecks::Checked, ShaderChecks::Trusted] {
        let gpu = device(checks);
        // The counters themselves: a submit without reads, a download.
        let buf = GpuBuffer::<f32>::new(&gpu, "x", 5).unwrap();
        let before = gpu.counters();
        let mut rec = Recorder::new(&gpu);
        rec.clear(&buf);
        rec.submit().unwrap();
        let after = gpu.counters() - before;
        assert_eq!(
            after,
            GpuCounters {
                submits: 1,
                readbacks: 0
            }
        );
        let before = gpu.counters();
        buf.download(&gpu).unwrap();
        assert_eq!(gpu.counters() - before, ONE);

        let model = WorldModel::new(&gpu, &weights).unwrap();
        let cfg = PlannerConfig {
            num_samples: 24,
            num_elites: 5,
            num_pi_trajs: 3,
            iterations: 2,
            ..PlannerConfig::tdmpc2(weights.spec.action_dim)
        };
        for prepared in [true, false] {
            let mut planner = Planner::new(&gpu, &model, cfg.clone())
                .unwrap()
                .with_prepared_steps(prepared);
            for (call, (b, first)) in [(2, true), (2, false), (2, false), (3, true), (3, false)]
                .into_iter()
                .enumerate()
            {
                let obs: Vec<f32> = (0..b * o).map(|i| (i as f32 * 0.3).sin()).collect();
                let before = gpu.counters();
                planner.plan(&obs, &vec![first; b]).unwrap();
                assert_eq!(
                    gpu.counters() - before,
                    ONE,
                    "{checks:?}, prepared steps {prepared}: plan call {call} (B = {b})"
                );
            }
            let obs = vec![0.25; 3 * o];
            let before = gpu.counters();
            let pending = planner.plan_submit(&obs, &[false; 3]).unwrap();
            pending.wait().unwrap();
            assert_eq!(
                gpu.counters() - before,
                ONE,
                "{checks:?}: plan_submit + wait"
            );
        }

        let problem = common::point_problem();
        let mcfg = MppiConfig {
            horizon: 7,
            samples: 33,
            ..MppiConfig::new(1)
        };
        let mut mppi = Mppi::new(&gpu, problem, mcfg).unwrap();
        mppi.set_params(&[1.0]).unwrap();
        for step in 0..3 {
            let before = gpu.counters();
            mppi.step(&[0.1 * step as f32]).unwrap();
            assert_eq!(gpu.counters() - before, ONE, "{checks:?}: MPPI step {step}");
        }
    }
}
