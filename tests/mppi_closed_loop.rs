//! The ready-made MPPI problems (`planner::problems`): closed loops on the GPU against their
//! Rust twins as simulators (the cart-pole swings up and stays up; the robot reaches its goal
//! without touching an obstacle at any step), and one GPU step against the CPU mirror with
//! the same noise for each problem (costs, weights, updated controls, and the kept rollouts'
//! states against the twin's own rollout of the same perturbed controls).
//!
//! Settings are small enough for lavapipe (each closed loop takes a few seconds there) and
//! seeded, so a run is deterministic on a given adapter.

mod common;

use common::gpus;
use pompc::planner::custom::{Mppi, MppiConfig, Problem};
use pompc::planner::problems::{
    CartPole, DiffDrive, DiffDriveScene, cartpole, simulate_closed_loop, wrap_angle,
};
use pompc::reference::mppi::{self as mirror, RustProblem};
use pompc::rng::{normal4, philox};
use std::time::Instant;

#[test]
fn cartpole_swings_up_and_stays_upright() {
    let gpu = &gpus()[1];
    let cfg = MppiConfig {
        horizon: 60,
        samples: 256,
        lambda: 1.0,
        gamma: 1.0,
        sigma: vec![0.5],
        u_min: vec![-1.0],
        u_max: vec![1.0],
        dt: 0.02,
        seed: 11,
        trusted: false,
    };
    let cp = CartPole::default();
    let params = CartPole::params(0.0);
    let mut mppi = Mppi::new(gpu, cp.problem().unwrap(), cfg).unwrap();
    mppi.set_params(&params).unwrap();
    let hold = 50;
    let mut reached = None;
    let start = Instant::now();
    let run = simulate_closed_loop(
        &mut mppi,
        &cp,
        &CartPole::hanging(0.0),
        &params,
        400,
        None,
        |step, x| {
            if reached.is_none() && CartPole::is_upright(x, 0.15, 1.0) {
                reached = Some(step);
            }
            reached.is_some_and(|r| step >= r + hold)
        },
    )
    .unwrap();
    eprintln!(
        "cart-pole: {} steps in {:.1} s, upright at {reached:?}",
        run.controls.len(),
        start.elapsed().as_secs_f64()
    );
    let r = reached.expect("the cart-pole did not reach upright in 400 steps (8 s)");
    assert!(run.done);
    // It swung up (it started hanging: |theta| = pi) and then stayed up.
    for (i, x) in run.states[r + 1..].iter().enumerate() {
        let th = wrap_angle(x[2]).abs();
        assert!(
            th < 0.35,
            "{i} steps after reaching upright the pole is {:.1} deg off",
            th.to_degrees()
        );
    }
    let last = run.states.last().unwrap();
    assert!(
        CartPole::is_upright(last, 0.15, 1.0),
        "not upright at the end: {last:?}"
    );
    assert!(last[0].abs() < 1.5, "the cart wandered to {}", last[0]);
    // The controls stayed in bounds.
    assert!(run.controls.iter().all(|u| u[0].abs() <= 1.0));
}

#[test]
fn robot_reaches_its_goal_without_collision() {
    let gpu = &gpus()[1];
    let cfg = MppiConfig {
        samples: 256,
        gamma: 0.015,
        seed: 5,
        // MPPI-Generic's other settings: horizon 100, lambda 1, sigma 0.2, dt 0.02.
        ..MppiConfig::new(2)
    };
    let dd = DiffDrive::default();
    let scene = DiffDriveScene::benchmark();
    let params = scene.params().unwrap();
    let mut mppi = Mppi::new(gpu, dd.problem().unwrap(), cfg).unwrap();
    mppi.set_params(&params).unwrap();
    let start = Instant::now();
    let run = simulate_closed_loop(&mut mppi, &dd, &scene.start, &params, 700, None, |_, x| {
        DiffDrive::goal_distance(x, &params) <= scene.goal_radius
    })
    .unwrap();
    eprintln!(
        "diff drive: {} steps in {:.1} s",
        run.controls.len(),
        start.elapsed().as_secs_f64()
    );
    let min_clearance = run
        .states
        .iter()
        .map(|x| dd.clearance(x, &params))
        .fold(f64::INFINITY, f64::min);
    for (i, x) in run.states.iter().enumerate() {
        assert!(
            dd.clearance(x, &params) > 0.0,
            "collision at step {i}: {x:?}"
        );
    }
    let last = run.states.last().unwrap();
    assert!(
        run.done,
        "goal not reached in 700 steps: ended at {last:?}, {:.2} m away",
        DiffDrive::goal_distance(last, &params)
    );
    eprintln!("smallest clearance {min_clearance:.3} m");
    // It went around the obstacle that sits on the straight line, not through it.
    assert!(run.states.iter().all(|x| x[0] > -0.5 && x[0] < 6.5));
}

/// |gpu - mirror| <= tol * max(|mirror|, floor).
fn close(what: &str, gpu: &[f32], cpu: &[f64], tol: f64, floor: f64) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: length");
    let mut worst = 0.0f64;
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        let d = (*g as f64 - c).abs();
        let bound = tol * c.abs().max(floor);
        worst = worst.max(d / bound * tol);
        assert!(
            d <= bound,
            "{what}[{i}]: gpu {g} mirror {c} (difference {d:e})"
        );
    }
    eprintln!("{what}: worst scaled error {worst:.2e} (tolerance {tol:e})");
}

/// The controls sample `k` applied: `clamp(u + sigma n, u_min, u_max)` with the kernel's
/// Philox indexing.
fn sample_controls(cfg: &MppiConfig, u: &[f64], c: usize, k: usize, call: u32) -> Vec<Vec<f64>> {
    (0..cfg.horizon)
        .map(|t| {
            (0..c)
                .map(|j| {
                    let idx = (t * cfg.samples + k) * c + j;
                    let n = normal4(philox(cfg.seed, call as u64, (idx / 4) as u64))[idx % 4];
                    (u[t * c + j] + cfg.sigma[j] as f64 * n as f64)
                        .clamp(cfg.u_min[j] as f64, cfg.u_max[j] as f64)
                })
                .collect()
        })
        .collect()
}

/// Three warm-started GPU steps against the mirror from `states` (one per step), starting
/// from control sequence `u0`; a horizon of 15 keeps f32 rounding from growing through the
/// dynamics. Costs to 1e-4 relative (floor 1). Weights to 2e-3 of max(|w|, 1% of the
/// largest): f32 costs of a few thousand (the diff drive's terminal cost) are off by ~3e-4
/// absolute, which lambda = 1 turns into a relative weight error of the same size. Controls
/// (in [-1, 1]) to 1e-4 absolute. The kept rollouts' states match the twin's own rollout of
/// the same sampled controls to 1e-4 (floor 1).
fn parity(
    problem: Problem,
    twin: &dyn RustProblem,
    cfg: MppiConfig,
    params: &[f32],
    u0: &[f32],
    states: &[Vec<f32>],
) {
    let (s_dim, c) = (problem.state_dim, problem.control_dim);
    let name = problem.name.clone();
    for gpu in gpus() {
        let mut mppi = Mppi::new(gpu, problem.clone(), cfg.clone()).unwrap();
        mppi.set_params(params).unwrap();
        mppi.set_controls(u0).unwrap();
        mppi.keep_rollouts(4).unwrap();
        let mut u: Vec<f64> = u0.iter().map(|v| *v as f64).collect();
        for (s, x) in states.iter().enumerate() {
            if s > 0 {
                mirror::shift(&mut u, c);
            }
            let g = mppi.step(x).unwrap();
            let m = mirror::step(twin, &cfg, x, &u, params, s as u32);
            let tag = format!("{name} step {s}");
            let (costs, weights) = mppi.costs_and_weights().unwrap();
            close(&format!("{tag}: costs"), &costs, &m.costs, 1e-4, 1.0);
            let w_max = m.weights.iter().cloned().fold(0.0, f64::max);
            close(
                &format!("{tag}: weights"),
                &weights,
                &m.weights,
                2e-3,
                0.01 * w_max,
            );
            let controls = mppi.controls().unwrap();
            close(
                &format!("{tag}: controls"),
                &controls,
                &m.controls,
                1e-4,
                1.0,
            );
            close(
                &format!("{tag}: first control"),
                &g.control,
                &m.controls[..c],
                1e-4,
                1.0,
            );
            assert!(((g.min_cost as f64) - m.min_cost).abs() <= 1e-4 * m.min_cost.abs().max(1.0));
            // The kept rollouts, state by state, against the twin.
            let r = mppi.rollouts().unwrap();
            assert_eq!(r.n, 4);
            let per = (cfg.horizon + 1) * s_dim;
            for k in 0..r.n {
                let v = sample_controls(&cfg, &u, c, k, s as u32);
                let mut xs: Vec<f64> = x.iter().map(|v| *v as f64).collect();
                let mut want = xs.clone();
                for (t, vt) in v.iter().enumerate() {
                    xs = twin.dynamics(&xs, vt, t, cfg.dt as f64, params);
                    want.extend_from_slice(&xs);
                }
                close(
                    &format!("{tag}: rollout {k} states"),
                    &r.states[k * per..(k + 1) * per],
                    &want,
                    1e-4,
                    1.0,
                );
            }
            u = m.controls;
        }
    }
}

#[test]
fn cartpole_gpu_step_matches_the_mirror() {
    let cfg = MppiConfig {
        horizon: 15,
        samples: 200,
        lambda: 2.0,
        gamma: 1.0,
        sigma: vec![0.5],
        u_min: vec![-1.0],
        u_max: vec![1.0],
        dt: 0.02,
        seed: 21,
        trusted: false,
    };
    let u0: Vec<f32> = (0..cfg.horizon)
        .map(|t| 0.8 * (t as f32 * 0.5).sin())
        .collect();
    // Hanging and moving, mid-swing, near upright.
    let states = vec![
        vec![0.1f32, -0.3, 3.0, 1.5],
        vec![-0.4, 1.0, 1.6, -4.0],
        vec![0.2, 0.1, 0.2, 0.5],
    ];
    parity(
        cartpole(),
        &CartPole::default(),
        cfg,
        &CartPole::params(0.3),
        &u0,
        &states,
    );
}

#[test]
fn diff_drive_gpu_step_matches_the_mirror() {
    let cfg = MppiConfig {
        horizon: 15,
        samples: 200,
        gamma: 0.015,
        seed: 22,
        ..MppiConfig::new(2)
    };
    let u0: Vec<f32> = (0..cfg.horizon * 2)
        .map(|i| {
            if i % 2 == 0 {
                0.7
            } else {
                0.3 * (i as f32 * 0.4).cos()
            }
        })
        .collect();
    let scene = DiffDriveScene::benchmark();
    let params = scene.params().unwrap();
    // Far from obstacles; in the soft margin of the first one; heading into it.
    let states = vec![
        vec![0.0f32, 0.0, 0.1],
        vec![0.85, -0.2, 0.3],
        vec![0.8, 0.2, 0.0],
    ];
    let dd = DiffDrive::default();
    // The margin term is active from these states (and rollouts from the last one run into
    // the obstacle).
    for x in &states[1..] {
        let x: Vec<f64> = x.iter().map(|v| *v as f64).collect();
        let c = dd.clearance(&x, &params);
        assert!(c > 0.05 && c < dd.margin, "clearance {c}");
    }
    parity(dd.problem().unwrap(), &dd, cfg, &params, &u0, &states);
}
