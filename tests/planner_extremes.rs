//! The GPU planner against the f64 mirror where values are NaN for some samples and returns are
//! large enough that `exp(temperature * v)` overflows f32: TD-MPC2 maps NaN values to 0, and the
//! elite weights subtract the largest value before the exponentials.
//!
//! The model (the episodic `small` fixture, re-wired) has bins over [-1000, 1000] in symlog
//! space, so a head whose softmax sits at the bottom bins decodes to -inf in f32 and in f64
//! alike (e^990 overflows both), while the other heads sit near the middle bins, whose values
//! f32 and f64 agree on. Its networks switch on an exact event, a sampled first action
//! component clamped to -1 (`k (a0 + 1)` is 0 exactly there and at least 60 anywhere else in
//! f32, the LayerNorms turning that into a sign):
//! * the dynamics mark the next latent (SimNorm group 0 one way or the other) when a0 = -1;
//! * the termination head predicts a termination on a marked latent;
//! * every Q head decodes to -inf on a marked latent, to a small finite value elsewhere;
//! * the reward is a random network whose last layer keeps its softmax around one point,
//!   moved a little by the input: finite, varying from sample to sample, and as large as asked.
//!
//! So a sample whose last action has a0 = -1 ends with a terminated (alive = 0) rollout and a
//! -inf Q: its value is `0 * -inf` = NaN, which must become 0; no value is infinite; the rest
//! vary with the rewards. With rewards of a few hundred below 0 the NaN samples (value 0) are
//! the elites; with rewards of a few hundred or 7e10 the finite values overflow `exp(0.5 v)`
//! unless the largest is subtracted first.

mod common;

use common::gpus;
use pompc::Gpu;
use pompc::model::{Weights, WorldModel};
use pompc::planner::{PlanMode, Planner, PlannerConfig, PlannerMode};
use pompc::reference::planner::MirrorPlanner;

/// Values near 1000 carry f32 rounding of about 1e-4 (1e-7 relative), which moves the elite
/// weights `exp(0.5 (v - v_max))` by about that much: ten times that.
const TOL: f64 = 1e-3;

fn set(w: &mut Weights, name: &str, f: impl FnOnce(&mut [f32], &[usize])) {
    let t = w.tensors.get_mut(name).unwrap_or_else(|| panic!("{name}"));
    f(&mut t.data, &t.shape);
}

/// Zero layers 0..=2 of the net `prefix` (head `q` of a stacked ensemble: `Some(q)`), LayerNorm
/// gains 1.
fn clear(w: &mut Weights, prefix: &str, q: Option<usize>) {
    for l in 0..3 {
        for part in ["weight", "bias", "ln.weight", "ln.bias"] {
            let name = format!("{prefix}.{l}.{part}");
            if !w.tensors.contains_key(&name) {
                continue;
            }
            set(w, &name, |d, shape| {
                let per = d.len() / if q.is_some() { shape[0] } else { 1 };
                let head = &mut d[q.unwrap_or(0) * per..(q.unwrap_or(0) + 1) * per];
                let v = if part == "ln.weight" { 1.0 } else { 0.0 };
                head.iter_mut().for_each(|x| *x = v);
            });
        }
    }
}

/// Row `o`, column `i` of a `[.., out, inp]` weight (head `q`).
fn at(shape: &[usize], q: usize, o: usize, i: usize) -> usize {
    let (out, inp) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    (q * out + o) * inp + i
}

/// Layers 0 and 1 of net `prefix` (head `q`) compute a sign: hidden unit 0 of layer 1's output
/// is about 5 when `feature >= 0` and about -0.03 otherwise, where layer 0's unit 0 is
/// `feature = sum_i in0[i] * x[i] + b0` and units 2 and 3 are the constants +1 and -1 (which
/// LayerNorm needs to keep a magnitude). Layer 1 takes `h0 - h2 - c1` (layer 0's Mish outputs).
fn sign_layers(
    w: &mut Weights,
    prefix: &str,
    q: Option<usize>,
    in0: &[(usize, f32)],
    b0: f32,
    c1: f32,
) {
    let h = q.unwrap_or(0);
    set(w, &format!("{prefix}.0.weight"), |d, s| {
        for &(i, v) in in0 {
            d[at(s, h, 0, i)] = v;
            d[at(s, h, 1, i)] = -v;
        }
    });
    set(w, &format!("{prefix}.0.bias"), |d, s| {
        let base = h * s[s.len() - 1];
        d[base] = b0;
        d[base + 1] = -b0;
        d[base + 2] = 1.0;
        d[base + 3] = -1.0;
    });
    set(w, &format!("{prefix}.1.weight"), |d, s| {
        d[at(s, h, 0, 0)] = 1.0;
        d[at(s, h, 0, 2)] = -1.0;
        d[at(s, h, 1, 0)] = -1.0;
        d[at(s, h, 1, 2)] = 1.0;
    });
    set(w, &format!("{prefix}.1.bias"), |d, s| {
        let base = h * s[s.len() - 1];
        d[base] = -c1;
        d[base + 1] = c1;
        d[base + 2] = 1.0;
        d[base + 3] = -1.0;
    });
}

/// The re-wired `small` model; the reward's softmax centred at `mu` bins above the middle one
/// (`x` about 20 e^(10 mu - 5) / (1 + e^(10 mu - 5)) for small `mu`; reward e^x).
fn extreme_weights(mu: f32) -> Weights {
    let (mut w, _) = common::load_fixture("small");
    let s = w.spec.clone();
    assert!(s.episodic && s.num_q >= 2);
    let (l, hd, k) = (s.latent_dim, s.mlp_dim, s.num_bins);
    w.spec.vmin = -1000.0;
    w.spec.vmax = 1000.0;
    let d = |j: usize| j as f32 - (k / 2) as f32;

    // Dynamics: a0 = -1 sets z'[0] high and z'[1] low (SimNorm group 0), else the reverse.
    // Layer 0 feature k (a0 + 1) >= 0 always: 0 (then unit 2 leads the LayerNorm) or >= 60.
    let big = 1.0e9;
    clear(&mut w, "_dynamics", None);
    sign_layers(&mut w, "_dynamics", None, &[(l, big)], big, 0.0);
    // Layer 1 here: h0 - h2 is +5.3 off the clamp and -5.3 on it; the sign layers give unit 0
    // ~5 off the clamp. Layer 2 puts (y1 - y0) into z'[0] and its negation into z'[1].
    set(&mut w, "_dynamics.2.weight", |dd, sh| {
        dd[at(sh, 0, 0, 0)] = -1.0;
        dd[at(sh, 0, 0, 1)] = 1.0;
        dd[at(sh, 0, 1, 0)] = 1.0;
        dd[at(sh, 0, 1, 1)] = -1.0;
    });
    // Termination on z[0] - z[1] (about +0.94 marked, -0.94 not; after layer 0, h0 - h2 is
    // about -0.25 and -3.9, so layer 1 takes h0 - h2 + 2): logit y0 - 2, about +2.6 and -2.
    clear(&mut w, "_termination", None);
    sign_layers(
        &mut w,
        "_termination",
        None,
        &[(0, 1.0), (1, -1.0)],
        0.0,
        -2.0,
    );
    set(&mut w, "_termination.2.weight", |dd, _| dd[0] = 1.0);
    set(&mut w, "_termination.2.bias", |dd, _| dd[0] = -2.0);
    // Q heads: a softmax peaked at the middle bin, pushed to bin 0 (-inf) on a marked latent.
    for q in 0..s.num_q {
        clear(&mut w, "_Qs.params", Some(q));
        sign_layers(
            &mut w,
            "_Qs.params",
            Some(q),
            &[(0, 1.0), (1, -1.0)],
            0.0,
            -2.0,
        );
        set(&mut w, "_Qs.params.2.weight", |dd, sh| {
            for j in 0..k {
                dd[at(sh, q, j, 0)] = -100.0 * d(j);
            }
        });
        set(&mut w, "_Qs.params.2.bias", |dd, _| {
            for j in 0..k {
                dd[q * k + j] = -5.0 * d(j) * d(j) + (q as f32 * 0.5 - 2.0) * d(j);
            }
        });
    }
    // Reward: keep the random hidden layers, replace the last: a peak at `mu` moved by a small
    // input-dependent tilt.
    set(&mut w, "_reward.2.weight", |dd, _| {
        for j in 0..k {
            for i in 0..hd {
                dd[j * hd + i] = d(j) * 0.05 * ((i as f32) * 2.3 + 1.0).sin();
            }
        }
    });
    set(&mut w, "_reward.2.bias", |dd, _| {
        for (j, b) in dd.iter_mut().enumerate() {
            *b = -5.0 * (d(j) - mu) * (d(j) - mu);
        }
    });
    w
}

fn cfg(seed: u64) -> PlannerConfig {
    PlannerConfig {
        horizon: 3,
        num_samples: 40,
        num_elites: 8,
        num_pi_trajs: 4,
        iterations: 3,
        seed,
        plan_mode: PlanMode::Train,
        mode: PlannerMode::EliteMppi,
        ..PlannerConfig::tdmpc2(4)
    }
}

/// Plans 3 calls for 2 environments on the GPU and the mirror; returns, per call, the number of
/// NaN values (0 after the mapping) and the largest finite value the mirror saw in the last
/// iteration.
fn parity(gpu: &Gpu, w: &Weights, cfg: &PlannerConfig) -> Vec<(usize, f64)> {
    let batch = 2;
    let model = WorldModel::new(gpu, w).unwrap();
    let mut planner = Planner::new(gpu, &model, cfg.clone()).unwrap();
    let mut mirror = MirrorPlanner::new(w, cfg, batch).unwrap();
    let o = w.spec.obs_dim;
    let mut seen = Vec::new();
    for call in 0..3 {
        let obs: Vec<f32> = (0..batch * o)
            .map(|i| ((i * 7 + call * 3) as f32 * 0.41).sin())
            .collect();
        let first = [call == 0, call == 2];
        let g = planner.plan(&obs, &first).unwrap();
        let c = mirror.plan(&obs, &first).unwrap();
        let tag = format!("{:?} call {call}", gpu.shader_checks());
        assert!(
            c.values.iter().all(|v| v.is_finite()),
            "{tag}: no value is infinite by construction"
        );
        let nan = c.values.iter().filter(|&&v| v == 0.0).count();
        let top = c.values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        seen.push((nan, top));
        common::assert_plan_matches(&tag, &planner, &g, &c, TOL);
    }
    seen
}

/// Rewards of a few hundred below 0: the samples whose value is NaN (0 after the mapping) are
/// the best, so they are the elites, and the plan follows them.
#[test]
fn nan_values_count_as_zero() {
    let w = extreme_weights(-0.4);
    for gpu in gpus() {
        let seen = parity(gpu, &w, &cfg(3));
        eprintln!("NaN samples and largest value per call: {seen:?}");
        for (nan, top) in seen {
            assert!(nan > 8, "more NaN samples than elites: {nan}");
            assert_eq!(top, 0.0, "the NaN samples lead");
        }
    }
}

/// Rewards of a few hundred (returns in the thousands) and of about 7e10: `exp(0.5 v)` is
/// infinite in f32 for the elites' values. NaN values (0) are the worst here, so the planner
/// soon leaves the clamped last actions that make them.
#[test]
fn large_returns_keep_finite_weights() {
    for (mu, least) in [(0.4, 500.0), (1.39, 1e11)] {
        let w = extreme_weights(mu);
        for gpu in gpus() {
            let seen = parity(gpu, &w, &cfg(5));
            eprintln!("mu {mu}: NaN samples and largest value per call: {seen:?}");
            for (_, top) in seen {
                assert!(top > least, "largest value {top}, expected over {least}");
            }
        }
    }
}
