//! The GPU planner against TD-MPC2's own planning code: `tests/fixtures/plan_tdmpc2*.safetensors`
//! were written by `scripts/make_plan_fixture.py`, which ran TD-MPC2's `TDMPC2._plan` (float64,
//! one agent per environment) with its random draws replaced by the draws pompc's planner makes
//! from its Philox streams, and its Q-head choice by pompc's. So this reference shares no code
//! with pompc's own mirror (`reference::planner`): a change to the planner's semantics that the
//! mirror would share (the Q-head choice, say) shows up here.
//!
//! The fixture stores the draws it injected; they must equal pompc's own, which also checks the
//! script's Philox port against `pompc::rng`. Then the planner plans the fixture's calls (warm
//! starts, episode starts and, in the episodic file, terminations) on both shader-check modes
//! and must choose the same samples and elites as TD-MPC2, with actions, means, stds, values,
//! elite weights and warm starts within 1e-4.

mod common;

use common::gpus;
use pompc::model::WorldModel;
use pompc::planner::config::{chosen_heads, streams};
use pompc::planner::{PlanMode, Planner, PlannerConfig, PlannerMode};
use std::collections::HashMap;

const TOL: f64 = 1e-4;

struct Fixture {
    name: &'static str,
    weights: pompc::model::Weights,
    f: HashMap<String, Vec<f32>>,
    cfg: PlannerConfig,
    batch: usize,
    calls: usize,
}

fn load(name: &'static str) -> Fixture {
    let (weights, f) = common::load_fixture(name);
    let p = f["planner"].clone();
    assert_eq!(p.len(), 13, "{name}: fixture.planner");
    let u = |i: usize| p[i] as usize;
    let cfg = PlannerConfig {
        horizon: u(0),
        num_samples: u(1),
        num_elites: u(2),
        num_pi_trajs: u(3),
        iterations: u(4),
        min_std: p[5],
        max_std: p[6],
        temperature: p[7],
        discount: p[8],
        mode: PlannerMode::EliteMppi,
        plan_mode: if p[9] == 1.0 {
            PlanMode::Train
        } else {
            PlanMode::Eval
        },
        seed: p[10] as u64,
    };
    Fixture {
        name,
        weights,
        f,
        cfg,
        batch: u(11),
        calls: u(12),
    }
}

/// `len` values of a `[calls, ..]` fixture tensor for call `c`.
fn per_call<'a>(fx: &'a Fixture, key: &str, c: usize) -> &'a [f32] {
    let v = &fx.f[key];
    let len = v.len() / fx.calls;
    &v[c * len..(c + 1) * len]
}

fn close(what: &str, gpu: &[f32], want: &[f32]) {
    assert_eq!(gpu.len(), want.len(), "{what}: length");
    for (i, (g, w)) in gpu.iter().zip(want).enumerate() {
        let (g, w) = (f64::from(*g), f64::from(*w));
        let d = (g - w).abs();
        assert!(
            d <= TOL * w.abs().max(1.0),
            "{what}[{i}]: gpu {g} TD-MPC2 {w} (difference {d:e})"
        );
    }
}

/// The draws and head choices the script gave TD-MPC2 are pompc's.
fn injected_draws_are_pompcs(fx: &Fixture) {
    let (cfg, b) = (&fx.cfg, fx.batch);
    let a = fx.weights.spec.action_dim;
    let (n, p, t, e) = (
        cfg.num_samples,
        cfg.num_pi_trajs,
        cfg.horizon,
        cfg.num_elites,
    );
    let seed = cfg.seed;
    let same = |what: String, got: &[f32], want: Vec<f32>| {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // The script's port computes the same float32 operations as src/rng.rs.
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{what}[{i}]: fixture {g}, pompc {w}"
            );
        }
    };
    for c in 0..fx.calls {
        let call = c as u32;
        for i in 0..cfg.iterations {
            let heads = &per_call(fx, "heads", c)[2 * i..2 * i + 2];
            let want = chosen_heads(seed, call, i, fx.weights.spec.num_q);
            assert_eq!(
                [heads[0] as u32, heads[1] as u32],
                want,
                "{}: call {c} iteration {i}: Q heads",
                fx.name
            );
            assert_ne!(want[0], want[1], "TD-MPC2 averages two distinct heads");
            let len = t * n * b * a;
            same(
                format!("{}: sampling noise of call {c} iteration {i}", fx.name),
                &per_call(fx, "noise_sampling", c)[i * len..(i + 1) * len],
                pompc::rng::normals(seed, streams::sampling(call, i), len),
            );
            let len = n * b * a;
            same(
                format!("{}: terminal noise of call {c} iteration {i}", fx.name),
                &per_call(fx, "noise_terminal", c)[i * len..(i + 1) * len],
                pompc::rng::normals(seed, streams::terminal(call, i), len),
            );
        }
        if p > 0 {
            let len = p * b * a;
            for s in 0..t {
                same(
                    format!("{}: policy noise of call {c} step {s}", fx.name),
                    &per_call(fx, "noise_pi", c)[s * len..(s + 1) * len],
                    pompc::rng::normals(seed, streams::pi_traj(call, s), len),
                );
            }
        }
        same(
            format!("{}: Gumbel noise of call {c}", fx.name),
            per_call(fx, "gumbel", c),
            pompc::rng::gumbels(seed, streams::gumbel(call), b * e),
        );
        if cfg.plan_mode == PlanMode::Train {
            same(
                format!("{}: exploration noise of call {c}", fx.name),
                per_call(fx, "explore", c),
                pompc::rng::normals(seed, streams::explore(call), b * a),
            );
        }
    }
}

fn plans_match_tdmpc2(fx: &Fixture) {
    let (b, o) = (fx.batch, fx.weights.spec.obs_dim);
    for gpu in gpus() {
        let model = WorldModel::new(gpu, &fx.weights).unwrap();
        let mut planner = Planner::new(gpu, &model, fx.cfg.clone()).unwrap();
        for c in 0..fx.calls {
            let obs = per_call(fx, "obs", c);
            assert_eq!(obs.len(), b * o);
            let first: Vec<bool> = per_call(fx, "first", c).iter().map(|&v| v == 1.0).collect();
            let plan = planner.plan(obs, &first).unwrap();
            let tag = format!(
                "{} call {c} first {first:?} ({:?})",
                fx.name,
                gpu.shader_checks()
            );
            let chosen: Vec<u32> = per_call(fx, "chosen", c)
                .iter()
                .map(|&v| v as u32)
                .collect();
            let (kept, weights) = planner.last_kept().unwrap();
            let want_kept: Vec<u32> = per_call(fx, "kept", c).iter().map(|&v| v as u32).collect();
            assert_eq!(kept, want_kept, "{tag}: elites");
            assert_eq!(plan.chosen, chosen, "{tag}: chosen samples");
            close(
                &format!("{tag}: elite weights"),
                &weights,
                per_call(fx, "weights", c),
            );
            close(
                &format!("{tag}: action"),
                &plan.action,
                per_call(fx, "action", c),
            );
            close(&format!("{tag}: mean"), &plan.mean, per_call(fx, "mean", c));
            close(&format!("{tag}: std"), &plan.std, per_call(fx, "std", c));
            close(
                &format!("{tag}: value"),
                &plan.value,
                per_call(fx, "value", c),
            );
            close(
                &format!("{tag}: warm start"),
                &planner.warm_start().unwrap(),
                per_call(fx, "warm_start", c),
            );
        }
    }
}

/// Five Q heads, three policy trajectories, train mode (exploration noise), B = 2.
#[test]
fn planner_matches_tdmpc2_plan() {
    let fx = load("plan_tdmpc2");
    assert_eq!(fx.weights.spec.num_q, 5);
    assert!(fx.cfg.num_pi_trajs > 0 && fx.cfg.plan_mode == PlanMode::Train);
    injected_draws_are_pompcs(&fx);
    plans_match_tdmpc2(&fx);
}

/// An episodic model (TD-MPC2's running termination flag), no policy trajectories, eval mode,
/// three Q heads, horizon 4, B = 3.
#[test]
fn planner_matches_tdmpc2_plan_episodic() {
    let fx = load("plan_tdmpc2_episodic");
    assert!(fx.weights.spec.episodic);
    assert!(fx.cfg.num_pi_trajs == 0 && fx.cfg.plan_mode == PlanMode::Eval);
    injected_draws_are_pompcs(&fx);
    plans_match_tdmpc2(&fx);
}
