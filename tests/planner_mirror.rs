//! The CPU mirror of the planner (`reference::planner`) on its own, no GPU: determinism and
//! seeding, the warm-start shift, the kept set and its weights in each mode, convergence on a
//! hand-built reward whose best first action is known, and bad inputs.

mod common;

use pompc::Error;
use pompc::model::{ModelSpec, Weights};
use pompc::planner::{PlanMode, PlannerConfig, PlannerMode};
use pompc::reference::model::forward;
use pompc::reference::planner::{MirrorPlan, MirrorPlanner, decode_logits};

const OBS: usize = 5;
const ACT: usize = 2;

/// Small settings: N 32, E 8, P 4, I 3, T 3.
fn small_cfg() -> PlannerConfig {
    PlannerConfig {
        horizon: 3,
        num_samples: 32,
        num_elites: 8,
        num_pi_trajs: 4,
        iterations: 3,
        ..PlannerConfig::tdmpc2(ACT)
    }
}

/// The tiny model with TD-MPC2's initialization, and non-zero final reward and Q layers (so
/// that values differ between samples).
fn random_weights(seed: u64) -> Weights {
    let spec = ModelSpec::tiny(OBS, ACT);
    let mut w = Weights::init(&spec, seed).unwrap();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for name in ["_reward.2.weight", "_Qs.params.2.weight"] {
        for v in &mut w.tensors.get_mut(name).unwrap().data {
            // xorshift, uniform in [-0.5, 0.5)
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            *v = ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
        }
    }
    w
}

fn obs(batch: usize, shift: f32) -> Vec<f32> {
    (0..batch * OBS)
        .map(|j| ((j as f32 * 0.37 + shift).sin()) * 1.5)
        .collect()
}

/// One first-step plan of a fresh planner.
fn plan_once(w: &Weights, cfg: &PlannerConfig, batch: usize) -> MirrorPlan {
    plan_once_obs(w, cfg, batch, &obs(batch, 0.0))
}

fn plan_once_obs(w: &Weights, cfg: &PlannerConfig, batch: usize, o: &[f32]) -> MirrorPlan {
    let mut p = MirrorPlanner::new(w, cfg, batch).unwrap();
    p.plan(o, &vec![true; batch]).unwrap()
}

#[test]
fn deterministic_and_seeded() {
    let w = random_weights(3);
    for batch in [1, 3] {
        for plan_mode in [PlanMode::Train, PlanMode::Eval] {
            let cfg = PlannerConfig {
                plan_mode,
                ..small_cfg()
            };
            let a = plan_once(&w, &cfg, batch);
            let b = plan_once(&w, &cfg, batch);
            assert_eq!(a, b, "same inputs, same plan");
            let other = PlannerConfig { seed: 7, ..cfg };
            let c = plan_once(&w, &other, batch);
            assert_ne!(a.values, c.values, "another seed, other samples");
            assert_ne!(a.full_mean, c.full_mean, "another seed, another refit");
            assert_eq!(a.action.len(), batch * ACT);
            assert_eq!(a.full_mean.len(), batch * 3 * ACT);
            assert_eq!(a.values.len(), 32 * batch);
            assert!(a.action.iter().all(|x| (-1.0..=1.0).contains(x)));
        }
    }
}

#[test]
fn successive_calls_use_new_streams() {
    let w = random_weights(4);
    let mut p = MirrorPlanner::new(&w, &small_cfg(), 3).unwrap();
    assert_eq!(p.call(), 0);
    let o = obs(3, 0.0);
    let first = p.plan(&o, &[true; 3]).unwrap();
    assert_eq!(p.call(), 1);
    let second = p.plan(&o, &[true; 3]).unwrap();
    assert_eq!(p.call(), 2);
    // Same observation, no warm start: only the call number differs.
    assert_ne!(first.values, second.values);
}

#[test]
fn warm_start_shifts_the_previous_mean() {
    let w = random_weights(5);
    let (t_len, batch) = (3, 3);
    let mut p = MirrorPlanner::new(&w, &small_cfg(), batch).unwrap();
    assert!(p.initial_mean(&[false; 3]).iter().all(|&m| m == 0.0));
    let first = p.plan(&obs(batch, 0.0), &[true; 3]).unwrap();
    assert_eq!(p.prev_mean(), first.full_mean.as_slice());
    let flags = [false, true, false];
    let init = p.initial_mean(&flags);
    for (b, &flag) in flags.iter().enumerate() {
        for t in 0..t_len {
            for a in 0..ACT {
                let got = init[(b * t_len + t) * ACT + a];
                let want = if flag || t == t_len - 1 {
                    0.0
                } else {
                    first.full_mean[(b * t_len + t + 1) * ACT + a]
                };
                assert_eq!(got, want, "env {b} step {t} dim {a}");
            }
        }
    }
    // The warm start changes the plan of the warm environments only through their mean: a
    // planner at the same call number without it differs.
    let warm = p.clone().plan(&obs(batch, 0.5), &flags).unwrap();
    let cold = p.plan(&obs(batch, 0.5), &[true; 3]).unwrap();
    assert_ne!(warm.full_mean, cold.full_mean);
    // Environment 1 starts cold in both; the environments are independent.
    let row = |m: &[f64], b: usize| m[b * t_len * ACT..(b + 1) * t_len * ACT].to_vec();
    assert_eq!(row(&warm.full_mean, 1), row(&cold.full_mean, 1));
    assert_ne!(row(&warm.full_mean, 0), row(&cold.full_mean, 0));
}

fn check_kept(plan: &MirrorPlan, cfg: &PlannerConfig, batch: usize) {
    let kept = cfg.kept();
    let n_len = cfg.num_samples;
    assert_eq!(plan.kept.len(), batch * kept);
    assert_eq!(plan.weights.len(), batch * kept);
    for b in 0..batch {
        let ks = &plan.kept[b * kept..(b + 1) * kept];
        let ws = &plan.weights[b * kept..(b + 1) * kept];
        let sum: f64 = ws.iter().sum();
        assert!((sum - 1.0).abs() < 1e-12, "env {b}: weights sum to {sum}");
        assert!(ws.iter().all(|&s| s >= 0.0));
        let v = |n: u32| plan.values[n as usize * batch + b];
        match cfg.mode {
            PlannerMode::Mppi { .. } => {
                assert_eq!(ks, (0..n_len as u32).collect::<Vec<_>>().as_slice());
            }
            _ => {
                for pair in ks.windows(2) {
                    assert!(
                        v(pair[0]) > v(pair[1]) || (v(pair[0]) == v(pair[1]) && pair[0] < pair[1]),
                        "env {b}: kept {pair:?} out of order"
                    );
                }
                // Nothing left out is better than the last kept.
                let last = v(ks[kept - 1]);
                for n in 0..n_len as u32 {
                    if !ks.contains(&n) {
                        assert!(
                            v(n) <= last,
                            "env {b}: sample {n} better than the kept ones"
                        );
                    }
                }
            }
        }
        let v_max = ks.iter().map(|&n| v(n)).fold(f64::NEG_INFINITY, f64::max);
        let best = ks.iter().position(|&n| v(n) == v_max).unwrap();
        match cfg.mode {
            PlannerMode::Cem => {
                assert!(ws.iter().all(|&s| (s - 1.0 / kept as f64).abs() < 1e-15));
            }
            PlannerMode::EliteMppi => {
                for (e, &n) in ks.iter().enumerate() {
                    let ratio = ws[e] / ws[best];
                    let want = (f64::from(cfg.temperature) * (v(n) - v_max)).exp();
                    assert!((ratio - want).abs() < 1e-12);
                }
            }
            PlannerMode::Mppi { lambda } => {
                for (e, &n) in ks.iter().enumerate() {
                    let ratio = ws[e] / ws[best];
                    let want = ((v(n) - v_max) / f64::from(lambda)).exp();
                    assert!((ratio - want).abs() < 1e-12);
                }
            }
        }
        // The chosen sample is a kept one, with its value.
        assert!(ks.contains(&plan.chosen[b]));
        assert_eq!(plan.value[b], v(plan.chosen[b]));
        // Mean and std of step 0 are the first rows of the full ones, std clamped.
        for a in 0..ACT {
            let m = b * cfg.horizon * ACT + a;
            assert_eq!(plan.mean[b * ACT + a], plan.full_mean[m]);
            assert_eq!(plan.std[b * ACT + a], plan.full_std[m]);
        }
        assert!(
            plan.full_std
                .iter()
                .all(|&s| { s >= f64::from(cfg.min_std) && s <= f64::from(cfg.max_std) })
        );
    }
}

#[test]
fn kept_set_and_weights() {
    let w = random_weights(6);
    for mode in [
        PlannerMode::EliteMppi,
        PlannerMode::Cem,
        PlannerMode::Mppi { lambda: 0.3 },
    ] {
        for batch in [1, 3] {
            let cfg = PlannerConfig {
                mode,
                ..small_cfg()
            };
            let plan = plan_once(&w, &cfg, batch);
            check_kept(&plan, &cfg, batch);
        }
    }
}

#[test]
fn eval_action_is_the_chosen_samples_first_action_and_train_adds_noise() {
    let w = random_weights(8);
    let batch = 3;
    let eval = PlannerConfig {
        plan_mode: PlanMode::Eval,
        ..small_cfg()
    };
    let train = PlannerConfig {
        plan_mode: PlanMode::Train,
        ..small_cfg()
    };
    let pe = plan_once(&w, &eval, batch);
    let pt = plan_once(&w, &train, batch);
    // Everything but the executed action is the same.
    assert_eq!(pe.full_mean, pt.full_mean);
    assert_eq!(pe.chosen, pt.chosen);
    let explore = pompc::rng::normals(1, pompc::planner::config::streams::explore(0), batch * ACT);
    for b in 0..batch {
        for a in 0..ACT {
            let want = (pe.action[b * ACT + a]
                + pt.std[b * ACT + a] * f64::from(explore[b * ACT + a]))
            .clamp(-1.0, 1.0);
            assert_eq!(pt.action[b * ACT + a], want);
        }
    }
}

/// The decoded reward of the hand-built head for first action components `a0s`.
fn rewards(w: &Weights, a0s: &[f64]) -> Vec<f64> {
    let spec = &w.spec;
    let rows = a0s.len();
    let z = vec![0.125; rows * spec.latent_dim];
    let a: Vec<f64> = a0s.iter().flat_map(|&x| [x, 0.3]).collect();
    let logits = forward(w, pompc::model::Net::Reward, rows, &z, Some(&a), 0).unwrap();
    decode_logits(spec, &logits)
}

#[test]
fn hand_built_reward_peaks_at_its_target() {
    let target = 0.4;
    let w = common::peaked_reward_weights(OBS, ACT, target as f32);
    let grid: Vec<f64> = (0..=40).map(|i| -1.0 + i as f64 * 0.05).collect();
    let r = rewards(&w, &grid);
    let best = (0..grid.len())
        .max_by(|&x, &y| r[x].total_cmp(&r[y]))
        .unwrap();
    assert!((grid[best] - target).abs() < 1e-9, "peak at {}", grid[best]);
    for i in 0..grid.len() - 1 {
        if grid[i + 1] <= target {
            assert!(r[i + 1] > r[i], "increasing below the target: {r:?}");
        } else if grid[i] >= target {
            assert!(r[i + 1] < r[i], "decreasing above the target: {r:?}");
        }
    }
    // The rest of the action and the latent do not matter.
    let spec = &w.spec;
    let z: Vec<f64> = (0..2 * spec.latent_dim).map(|j| (j as f64).sin()).collect();
    let a = [0.1, -0.9, 0.1, 0.7];
    let logits = forward(&w, pompc::model::Net::Reward, 2, &z, Some(&a), 0).unwrap();
    let d = decode_logits(spec, &logits);
    assert!((d[0] - d[1]).abs() < 1e-12);
}

/// With more iterations the plan's first action component approaches the reward's peak, in
/// every mode: the refit mean of step 0 gets closer (monotonically, but for at most one step
/// back) and ends within 0.1, as does the executed (eval) action. Plain MPPI keeps every sample,
/// so it runs with N = 256 and no policy trajectories: with N = 32 the few samples near the
/// peak are too rare, and the untrained policy's trajectories (actions near 0, far better than
/// the std-2 samples) take all the weight at a small lambda, after which the mean creeps at
/// min_std per iteration.
#[test]
fn planning_converges_to_the_best_first_action() {
    let target = 0.4;
    let w = common::peaked_reward_weights(OBS, ACT, target as f32);
    let batch = 3;
    for mode in [
        PlannerMode::EliteMppi,
        PlannerMode::Cem,
        PlannerMode::Mppi { lambda: 0.2 },
    ] {
        let mppi = matches!(mode, PlannerMode::Mppi { .. });
        let mut mean_err = Vec::new();
        let mut action_err = Vec::new();
        for iterations in 1..=6 {
            let cfg = PlannerConfig {
                iterations,
                mode,
                num_samples: if mppi { 256 } else { 32 },
                num_pi_trajs: if mppi { 0 } else { 4 },
                plan_mode: PlanMode::Eval,
                ..small_cfg()
            };
            let plan = plan_once(&w, &cfg, batch);
            let err = |v: &[f64]| {
                (0..batch)
                    .map(|b| (v[b * ACT] - target).abs())
                    .fold(0.0, f64::max)
            };
            mean_err.push(err(&plan.mean));
            action_err.push(err(&plan.action));
        }
        eprintln!("{mode:?}: mean error {mean_err:.4?}, action error {action_err:.4?}");
        assert!(mean_err[5] < 0.1, "{mode:?}: mean error {mean_err:?}");
        assert!(action_err[5] < 0.1, "{mode:?}: action error {action_err:?}");
        assert!(mean_err[5] < mean_err[0] / 2.0, "{mode:?}: {mean_err:?}");
        let back = (1..6).filter(|&i| mean_err[i] > mean_err[i - 1]).count();
        assert!(back <= 1, "{mode:?}: mean error {mean_err:?}");
    }
}

#[test]
fn bad_inputs() {
    let w = random_weights(9);
    let cfg = small_cfg();
    let mut p = MirrorPlanner::new(&w, &cfg, 3).unwrap();
    let o = obs(3, 0.0);
    let e = p.plan(&o[..14], &[true; 3]).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let e = p.plan(&o, &[true; 2]).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let mut bad = o.clone();
    bad[2 * OBS + 3] = f32::NAN;
    let e = p.plan(&bad, &[true; 3]).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, Error::InvalidArgument(_))
            && msg.contains("feature 3")
            && msg.contains("environment 2"),
        "{msg}"
    );
    bad[2 * OBS + 3] = f32::INFINITY;
    assert!(p.plan(&bad, &[true; 3]).is_err());
    // Errors change nothing.
    assert_eq!(p.call(), 0);

    let mut spec1 = ModelSpec::tiny(OBS, ACT);
    spec1.num_q = 1;
    let w1 = Weights::init(&spec1, 1).unwrap();
    let e = MirrorPlanner::new(&w1, &cfg, 3).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("Q heads"), "{e}");

    let bad_cfg = PlannerConfig {
        num_elites: 40,
        ..cfg.clone()
    };
    assert!(MirrorPlanner::new(&w, &bad_cfg, 3).is_err());
    assert!(MirrorPlanner::new(&w, &cfg, 0).is_err());
}

/// One iteration recomputed sample by sample from the algorithm's text, one row at a time,
/// with the f32 reference heads (`reference::two_hot`, `reference::policy`): the policy
/// trajectories and sampled sequences (their stream elements), the values, the refit of the
/// kept set, the Gumbel choice and the executed action.
#[test]
fn one_iteration_recomputed_sample_by_sample() {
    use pompc::kernels::policy::PolicyConfig;
    use pompc::kernels::two_hot::TwoHotConfig;
    use pompc::model::Net;
    use pompc::planner::config::{chosen_heads, streams};
    use pompc::reference::{policy, two_hot};

    let w = random_weights(12);
    let spec = &w.spec;
    let (bb, t_len, a_dim) = (3, 3, ACT);
    for mode in [PlannerMode::EliteMppi, PlannerMode::Mppi { lambda: 0.7 }] {
        let cfg = PlannerConfig {
            iterations: 1,
            mode,
            plan_mode: PlanMode::Eval,
            seed: 99,
            ..small_cfg()
        };
        let (n_len, p_len, seed) = (cfg.num_samples, cfg.num_pi_trajs, cfg.seed);
        let o = obs(bb, 0.3);
        let plan = plan_once_obs(&w, &cfg, bb, &o);

        let tcfg = TwoHotConfig {
            bins: spec.num_bins,
            vmin: spec.vmin,
            vmax: spec.vmax,
        };
        let pcfg = PolicyConfig::new(a_dim).with_log_std_range(spec.log_std_min, spec.log_std_max);
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let pi = |z: &[f64], eps: &[f32]| -> Vec<f64> {
            let h = forward(&w, Net::Policy, 1, z, None, 0).unwrap();
            policy::sample(&pcfg, 1, &f32s(&h), eps).action
        };
        let decode = |logits: &[f64]| two_hot::decode_row(&tcfg, &f32s(logits));

        // actions[t][n][b] of the (only) iteration.
        let mut actions = vec![vec![vec![vec![0.0; a_dim]; bb]; n_len]; t_len];
        let sampling =
            pompc::rng::normals(seed, streams::sampling(0, 0), t_len * n_len * bb * a_dim);
        for b in 0..bb {
            let obs_b: Vec<f64> = o[b * OBS..(b + 1) * OBS]
                .iter()
                .map(|&x| x as f64)
                .collect();
            let z0 = forward(&w, Net::Encoder, 1, &obs_b, None, 0).unwrap();
            for n in 0..n_len {
                let mut z = z0.clone();
                for (t, at) in actions.iter_mut().enumerate() {
                    let a = if n < p_len {
                        let all =
                            pompc::rng::normals(seed, streams::pi_traj(0, t), p_len * bb * a_dim);
                        let e = (n * bb + b) * a_dim;
                        let a = pi(&z, &all[e..e + a_dim]);
                        z = forward(&w, Net::Dynamics, 1, &z, Some(&a), 0).unwrap();
                        a
                    } else {
                        (0..a_dim)
                            .map(|a| {
                                let e = ((t * n_len + n) * bb + b) * a_dim + a;
                                (2.0 * sampling[e] as f64).clamp(-1.0, 1.0)
                            })
                            .collect()
                    };
                    at[n][b] = a;
                }
                // The value.
                let mut z = z0.clone();
                let (mut g_ret, mut g) = (0.0, 1.0);
                for at in &actions {
                    let a = &at[n][b];
                    let r = decode(&forward(&w, Net::Reward, 1, &z, Some(a), 0).unwrap());
                    g_ret += g * r;
                    z = forward(&w, Net::Dynamics, 1, &z, Some(a), 0).unwrap();
                    g *= cfg.discount as f64;
                }
                let term = pompc::rng::normals(seed, streams::terminal(0, 0), n_len * bb * a_dim);
                let e = (n * bb + b) * a_dim;
                let a_t = pi(&z, &term[e..e + a_dim]);
                let [h0, h1] = chosen_heads(seed, 0, 0, spec.num_q);
                let q =
                    |h: u32| decode(&forward(&w, Net::Q, 1, &z, Some(&a_t), h as usize).unwrap());
                let v = g_ret + g * (q(h0) + q(h1)) / 2.0;
                let got = plan.values[n * bb + b];
                assert!(
                    (got - v).abs() <= 1e-5 * v.abs().max(1.0),
                    "{mode:?} env {b} sample {n}: value {got}, recomputed {v}"
                );
            }
            // The refit of the kept set, with the plan's kept indices and weights.
            let kept = cfg.kept();
            let ks = &plan.kept[b * kept..(b + 1) * kept];
            let ws = &plan.weights[b * kept..(b + 1) * kept];
            for (t, at) in actions.iter().enumerate() {
                #[allow(clippy::needless_range_loop)] // `a` indexes the innermost of at[n][b][a]
                for a in 0..a_dim {
                    let x = |n: u32| at[n as usize][b][a];
                    let mu: f64 =
                        ks.iter().zip(ws).map(|(&n, &s)| s * x(n)).sum::<f64>() / (1.0 + 1e-9);
                    let var: f64 = ks
                        .iter()
                        .zip(ws)
                        .map(|(&n, &s)| s * (x(n) - mu).powi(2))
                        .sum::<f64>()
                        / (1.0 + 1e-9);
                    let m = (b * t_len + t) * a_dim + a;
                    assert!(
                        (plan.full_mean[m] - mu).abs() < 1e-6,
                        "{mode:?} env {b} mean"
                    );
                    let sd = var.sqrt().clamp(cfg.min_std as f64, cfg.max_std as f64);
                    assert!((plan.full_std[m] - sd).abs() < 1e-6, "{mode:?} env {b} std");
                }
            }
            // The Gumbel-max choice and the (eval) action.
            let gum = pompc::rng::gumbels(seed, streams::gumbel(0), bb * kept);
            let mut best = 0;
            for e in 1..kept {
                let score = |e: usize| ws[e].ln() + gum[b * kept + e] as f64;
                if score(e) > score(best) {
                    best = e;
                }
            }
            assert_eq!(plan.chosen[b], ks[best], "{mode:?} env {b}");
            let want = &actions[0][ks[best] as usize][b];
            for (got, want) in plan.action[b * a_dim..(b + 1) * a_dim].iter().zip(want) {
                assert!(
                    (got - want).abs() < 1e-6,
                    "{mode:?} env {b}: action {got} vs {want}"
                );
            }
        }
    }
}
