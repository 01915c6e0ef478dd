//! Mirror of the MPPI planner ([`crate::planner`]), in f64 from the observation to the action,
//! following the algorithm of `src/planner/mod.rs` step by step with the same Philox draws
//! ([`crate::planner::config::streams`]), so a GPU plan can be checked element by element.
//!
//! Everything is computed in f64 (weights, observations and the Philox normals and Gumbel
//! draws, which are f32, are converted); the networks go through [`super::model::forward`],
//! the reward and Q heads through [`decode_logits`] (TD-MPC2's `two_hot_inv`) and the policy
//! samples through [`policy_actions`] (TD-MPC2's `WorldModel.pi` with given noise).
//!
//! One choice that differs from TD-MPC2's code, as the planner makes it: non-finite
//! observations are rejected ([`Error::InvalidArgument`] naming the environment and the
//! feature); TD-MPC2's NaN-to-0 applies to the sampled values only (here only NaN, not
//! infinities, is replaced). Episodic models mask the return after a predicted termination,
//! as TD-MPC2 does.

use super::model::forward;
use super::two_hot;
use crate::kernels::two_hot::TwoHotConfig;
use crate::model::{ModelSpec, Net, Weights};
use crate::planner::config::{PlanMode, PlannerConfig, PlannerMode, chosen_heads, streams};
use crate::rng::{gumbel4, normal4, philox};
use crate::{Error, Result};

/// Output of one mirrored plan call.
#[derive(Clone, Debug, PartialEq)]
pub struct MirrorPlan {
    /// `[B, A]` executed action (after train-mode noise and the clamp).
    pub action: Vec<f64>,
    /// `[B, A]` refit mean of time step 0.
    pub mean: Vec<f64>,
    /// `[B, A]` refit std of time step 0.
    pub std: Vec<f64>,
    /// `[B]` value of the chosen kept sample (last iteration).
    pub value: Vec<f64>,
    /// `[B]` sample index n of the chosen kept sample.
    pub chosen: Vec<u32>,
    /// `[B, kept]` sample indices n of the last iteration's kept set, in kept order
    /// (descending value with ties to the lower n, or n order for plain MPPI).
    pub kept: Vec<u32>,
    /// `[B, kept]` their normalized weights.
    pub weights: Vec<f64>,
    /// `[B, T, A]` the refit mean of every step: the new `prev_mean`.
    pub full_mean: Vec<f64>,
    /// `[B, T, A]` the refit std of every step.
    pub full_std: Vec<f64>,
    /// `[N, B]` (row `n * B + b`) the values of the last iteration, NaN replaced by 0.
    pub values: Vec<f64>,
}

/// The CPU planner: weights, settings, the warm-start mean and the call counter of one
/// planner over B environments.
#[derive(Clone, Debug)]
pub struct MirrorPlanner {
    weights: Weights,
    cfg: PlannerConfig,
    batch: usize,
    /// `[B, T, A]`, the last call's refit mean (zeros before the first call).
    prev_mean: Vec<f64>,
    call: u32,
}

/// `n` elements of a Philox stream as f64: element j is lane `j % 4` of `f(philox(seed,
/// stream, j / 4))`.
fn draws(seed: u64, stream: u32, n: usize, f: fn([u32; 4]) -> [f32; 4]) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    for j in 0..n.div_ceil(4) {
        let v = f(philox(seed, u64::from(stream), j as u64));
        out.extend(v.iter().take(n - 4 * j).map(|&x| f64::from(x)));
    }
    out
}

/// TD-MPC2's `two_hot_inv` for every row of f64 logits `[rows, num_bins]`:
/// `symexp(sum_j softmax(logits)_j bin_j)`, the maximum subtracted before the exponentials
/// (the f64-input twin of [`two_hot::decode_row`]).
pub fn decode_logits(spec: &ModelSpec, logits: &[f64]) -> Vec<f64> {
    let cfg = TwoHotConfig {
        bins: spec.num_bins,
        vmin: spec.vmin,
        vmax: spec.vmax,
    };
    let bins = two_hot::bins(&cfg);
    logits
        .chunks(cfg.bins)
        .map(|row| {
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let (mut s, mut w) = (0.0, 0.0);
            for (j, &l) in row.iter().enumerate() {
                let e = (l - m).exp();
                s += e;
                w += e * bins[j];
            }
            two_hot::symexp(w / s)
        })
        .collect()
}

/// TD-MPC2's policy sample for every row of the policy network's output `h` `[rows, 2A]`
/// (mean, raw log-std) with noise `eps` `[rows, A]`: `log_std = lo + (hi - lo) (tanh(raw) +
/// 1) / 2`, action `tanh(mean + eps exp(log_std))` (the action of
/// [`super::policy::sample`], with f64 inputs).
pub fn policy_actions(spec: &ModelSpec, h: &[f64], eps: &[f64]) -> Vec<f64> {
    let a = spec.action_dim;
    let (lo, hi) = (f64::from(spec.log_std_min), f64::from(spec.log_std_max));
    let rows = eps.len() / a;
    assert_eq!(h.len(), rows * 2 * a, "policy outputs [rows, 2A]");
    let mut out = Vec::with_capacity(rows * a);
    for r in 0..rows {
        let hr = &h[r * 2 * a..(r + 1) * 2 * a];
        for i in 0..a {
            let (mu, raw, e) = (hr[i], hr[a + i], eps[r * a + i]);
            let ls = lo + 0.5 * (hi - lo) * (raw.tanh() + 1.0);
            out.push((mu + e * ls.exp()).tanh());
        }
    }
    out
}

/// The rows `r = n * B + b` of a `[B, width]` buffer repeated for n in `0..n`.
fn replicate(x: &[f64], n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n * x.len());
    for _ in 0..n {
        out.extend_from_slice(x);
    }
    out
}

impl MirrorPlanner {
    /// A planner for `batch` environments with the model `weights` and settings `cfg`.
    ///
    /// Errors ([`Error::InvalidArgument`]) for settings that fail [`PlannerConfig::validate`],
    /// a model with fewer than 2 Q heads (the value averages two distinct heads), or no
    /// environments.
    pub fn new(weights: &Weights, cfg: &PlannerConfig, batch: usize) -> Result<Self> {
        cfg.validate()?;
        weights.spec.validate()?;
        if weights.spec.num_q < 2 {
            return Err(Error::InvalidArgument(format!(
                "planner: the value averages two distinct Q heads, the model has {}",
                weights.spec.num_q
            )));
        }
        if batch == 0 {
            return Err(Error::InvalidArgument(
                "planner: a batch of 0 environments".into(),
            ));
        }
        let len = batch * cfg.horizon * weights.spec.action_dim;
        Ok(MirrorPlanner {
            weights: weights.clone(),
            cfg: cfg.clone(),
            batch,
            prev_mean: vec![0.0; len],
            call: 0,
        })
    }

    /// Index of the next plan call (the `c` of the stream keys).
    pub fn call(&self) -> u32 {
        self.call
    }

    /// Environments B.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The settings.
    pub fn config(&self) -> &PlannerConfig {
        &self.cfg
    }

    /// `[B, T, A]` the warm-start mean the next call keeps (the last call's refit mean, zeros
    /// before the first call).
    pub fn prev_mean(&self) -> &[f64] {
        &self.prev_mean
    }

    /// `[B, T, A]` the mean the next call starts its first iteration from (step 3 of the
    /// algorithm): 0 for an environment with `first_step[b]`, else `prev_mean[b, t + 1]` for
    /// `t < T - 1` and 0 at `T - 1` (the warm-start shift).
    ///
    /// # Panics
    /// If `first_step` does not hold B values.
    pub fn initial_mean(&self, first_step: &[bool]) -> Vec<f64> {
        assert_eq!(
            first_step.len(),
            self.batch,
            "one first_step flag per environment"
        );
        let (t_len, a_len) = (self.cfg.horizon, self.weights.spec.action_dim);
        let mut mean = vec![0.0; self.prev_mean.len()];
        for (b, &first) in first_step.iter().enumerate() {
            if first {
                continue;
            }
            for t in 0..t_len - 1 {
                let dst = (b * t_len + t) * a_len;
                let src = (b * t_len + t + 1) * a_len;
                mean[dst..dst + a_len].copy_from_slice(&self.prev_mean[src..src + a_len]);
            }
        }
        mean
    }

    /// One plan call for observations `obs` `[B, O]`; `first_step[b]` marks the first step of
    /// an episode (no warm start). On success the refit mean becomes the next call's
    /// `prev_mean` and the call counter advances; on error nothing changes.
    ///
    /// Errors ([`Error::InvalidArgument`]): `obs` not of length B * O, `first_step` not of
    /// length B, or a non-finite observation (pompc rejects those rather than planning from
    /// them; TD-MPC2's NaN-to-0 applies to values only).
    pub fn plan(&mut self, obs: &[f32], first_step: &[bool]) -> Result<MirrorPlan> {
        let spec = &self.weights.spec;
        let cfg = &self.cfg;
        let (bb, o_dim, a_dim) = (self.batch, spec.obs_dim, spec.action_dim);
        let (n_len, p_len, t_len) = (cfg.num_samples, cfg.num_pi_trajs, cfg.horizon);
        if obs.len() != bb * o_dim {
            return Err(Error::InvalidArgument(format!(
                "planner: {} observation values for {bb} environments of {o_dim} features \
                 (expected {})",
                obs.len(),
                bb * o_dim
            )));
        }
        if first_step.len() != bb {
            return Err(Error::InvalidArgument(format!(
                "planner: {} first_step flags for {bb} environments",
                first_step.len()
            )));
        }
        if let Some(j) = obs.iter().position(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "planner: observation feature {} of environment {} is {}; pompc rejects \
                 non-finite observations",
                j % o_dim,
                j / o_dim,
                obs[j]
            )));
        }
        let (seed, c) = (cfg.seed, self.call);
        let w = &self.weights;
        let rows = n_len * bb;
        let step = rows * a_dim; // one time step of `actions` [T, N, B, A]

        // 1. Encode.
        let obs64: Vec<f64> = obs.iter().map(|&v| f64::from(v)).collect();
        let z0 = forward(w, Net::Encoder, bb, &obs64, None, 0)?;

        // 2. Policy trajectories, drawn once: rows n * B + b for n < P are the first P * B rows.
        let mut actions = vec![0.0f64; t_len * step];
        if p_len > 0 {
            let pr = p_len * bb;
            let mut zp = replicate(&z0, p_len);
            for t in 0..t_len {
                let h = forward(w, Net::Policy, pr, &zp, None, 0)?;
                let eps = draws(seed, streams::pi_traj(c, t), pr * a_dim, normal4);
                let act = policy_actions(spec, &h, &eps);
                actions[t * step..t * step + pr * a_dim].copy_from_slice(&act);
                if t + 1 < t_len {
                    zp = forward(w, Net::Dynamics, pr, &zp, Some(&act), 0)?;
                }
            }
        }

        // 3. Initial mean (warm start) and std.
        let mut mean = self.initial_mean(first_step);
        let mut std = vec![f64::from(cfg.max_std); mean.len()];
        let (min_std, max_std) = (f64::from(cfg.min_std), f64::from(cfg.max_std));
        let discount = f64::from(cfg.discount);
        let kept_len = cfg.kept();
        let z_rows = replicate(&z0, n_len);

        let mut values = vec![0.0f64; rows];
        let mut kept = vec![0u32; bb * kept_len];
        let mut weights = vec![0.0f64; bb * kept_len];
        for i in 0..cfg.iterations {
            // 4.1 Sampled sequences.
            let eps = draws(seed, streams::sampling(c, i), t_len * step, normal4);
            for t in 0..t_len {
                for n in p_len..n_len {
                    for b in 0..bb {
                        for a in 0..a_dim {
                            let k = ((t * n_len + n) * bb + b) * a_dim + a;
                            let m = (b * t_len + t) * a_dim + a;
                            actions[k] = (mean[m] + std[m] * eps[k]).clamp(-1.0, 1.0);
                        }
                    }
                }
            }

            // 4.2 Discounted rewards along the sequences.
            // Episodic models: a predicted termination (probability > 0.5, logit > 0) of the
            // next latent ends the return for good (TD-MPC2's running termination flag).
            let mut z = z_rows.clone();
            let mut ret = vec![0.0f64; rows];
            let mut alive = vec![1.0f64; rows];
            let mut g = 1.0f64;
            for t in 0..t_len {
                let at = &actions[t * step..(t + 1) * step];
                let logits = forward(w, Net::Reward, rows, &z, Some(at), 0)?;
                for ((gr, r), al) in ret.iter_mut().zip(decode_logits(spec, &logits)).zip(&alive) {
                    *gr += g * al * r;
                }
                z = forward(w, Net::Dynamics, rows, &z, Some(at), 0)?;
                g *= discount;
                if spec.episodic {
                    let term = forward(w, Net::Termination, rows, &z, None, 0)?;
                    for (al, l) in alive.iter_mut().zip(&term) {
                        if *l > 0.0 {
                            *al = 0.0;
                        }
                    }
                }
            }

            // 4.3 Terminal value with two chosen Q heads.
            let h = forward(w, Net::Policy, rows, &z, None, 0)?;
            let eps = draws(seed, streams::terminal(c, i), rows * a_dim, normal4);
            let a_term = policy_actions(spec, &h, &eps);
            let [h0, h1] = chosen_heads(seed, c, i, spec.num_q);
            let q0 = forward(w, Net::Q, rows, &z, Some(&a_term), h0 as usize)?;
            let q1 = forward(w, Net::Q, rows, &z, Some(&a_term), h1 as usize)?;
            let (q0, q1) = (decode_logits(spec, &q0), decode_logits(spec, &q1));
            for r in 0..rows {
                let v = ret[r] + g * alive[r] * (q0[r] + q1[r]) / 2.0;
                values[r] = if v.is_nan() { 0.0 } else { v };
            }

            // 4.4 Kept set, weights and refit, per environment.
            for b in 0..bb {
                let v = |n: usize| values[n * bb + b];
                let idx: Vec<usize> = match cfg.mode {
                    PlannerMode::Mppi { .. } => (0..n_len).collect(),
                    _ => {
                        let mut order: Vec<usize> = (0..n_len).collect();
                        // Stable: ties keep the lower n first. No NaN is left; +-0 tie.
                        order.sort_by(|&x, &y| v(y).partial_cmp(&v(x)).expect("no NaN"));
                        order.truncate(kept_len);
                        order
                    }
                };
                let v_max = idx.iter().map(|&n| v(n)).fold(f64::NEG_INFINITY, f64::max);
                let temperature = f64::from(cfg.temperature);
                let mut s: Vec<f64> = idx
                    .iter()
                    .map(|&n| match cfg.mode {
                        PlannerMode::EliteMppi => (temperature * (v(n) - v_max)).exp(),
                        PlannerMode::Mppi { lambda } => ((v(n) - v_max) / f64::from(lambda)).exp(),
                        PlannerMode::Cem => 1.0,
                    })
                    .collect();
                let total: f64 = s.iter().sum();
                s.iter_mut().for_each(|x| *x /= total);
                let denom = s.iter().sum::<f64>() + 1e-9;
                for t in 0..t_len {
                    for a in 0..a_dim {
                        let x = |n: usize| actions[((t * n_len + n) * bb + b) * a_dim + a];
                        let mu = idx.iter().zip(&s).map(|(&n, &se)| se * x(n)).sum::<f64>() / denom;
                        let var = idx
                            .iter()
                            .zip(&s)
                            .map(|(&n, &se)| se * (x(n) - mu) * (x(n) - mu))
                            .sum::<f64>()
                            / denom;
                        let m = (b * t_len + t) * a_dim + a;
                        mean[m] = mu;
                        std[m] = var.sqrt().clamp(min_std, max_std);
                    }
                }
                for (e, (&n, &se)) in idx.iter().zip(&s).enumerate() {
                    kept[b * kept_len + e] = n as u32;
                    weights[b * kept_len + e] = se;
                }
            }
        }

        // 5. Gumbel-max choice among the kept samples, and the executed action.
        let gumbel = draws(seed, streams::gumbel(c), bb * kept_len, gumbel4);
        let explore = match cfg.plan_mode {
            PlanMode::Train => Some(draws(seed, streams::explore(c), bb * a_dim, normal4)),
            PlanMode::Eval => None,
        };
        let mut out = MirrorPlan {
            action: Vec::with_capacity(bb * a_dim),
            mean: Vec::with_capacity(bb * a_dim),
            std: Vec::with_capacity(bb * a_dim),
            value: Vec::with_capacity(bb),
            chosen: Vec::with_capacity(bb),
            kept,
            weights,
            full_mean: mean,
            full_std: std,
            values,
        };
        for b in 0..bb {
            let mut best = (f64::NEG_INFINITY, 0usize);
            for e in 0..kept_len {
                let score = out.weights[b * kept_len + e].ln() + gumbel[b * kept_len + e];
                if e == 0 || score > best.0 {
                    best = (score, e);
                }
            }
            let n = out.kept[b * kept_len + best.1] as usize;
            out.chosen.push(n as u32);
            out.value.push(out.values[n * bb + b]);
            for a in 0..a_dim {
                let m = b * t_len * a_dim + a; // step 0
                let mut act = actions[(n * bb + b) * a_dim + a];
                if let Some(noise) = &explore {
                    act += out.full_std[m] * noise[b * a_dim + a];
                }
                out.action.push(act.clamp(-1.0, 1.0));
                out.mean.push(out.full_mean[m]);
                out.std.push(out.full_std[m]);
            }
        }

        self.prev_mean.clone_from(&out.full_mean);
        self.call = self.call.wrapping_add(1);
        Ok(out)
    }
}
