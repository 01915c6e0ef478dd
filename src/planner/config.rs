//! Planner settings with TD-MPC2's defaults, and the keying of its random streams.

use crate::{Error, Result};

/// How the refit weighs the sampled action sequences.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PlannerMode {
    /// TD-MPC2: the top `num_elites` by value, weights `exp(temperature * (v - v_max))`.
    EliteMppi,
    /// Plain MPPI: every sample, weights `exp((v - v_max) / lambda)`.
    Mppi {
        /// Temperature lambda (> 0).
        lambda: f32,
    },
    /// Cross-entropy method: the top `num_elites`, equal weights.
    Cem,
}

/// What `plan` does besides optimizing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanMode {
    /// Add exploration noise `std_0 * N(0, 1)` to the chosen action (TD-MPC2's training).
    Train,
    /// No noise.
    Eval,
}

/// Planner settings. [`PlannerConfig::tdmpc2`] gives TD-MPC2's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannerConfig {
    /// Planning horizon T.
    pub horizon: usize,
    /// Sampled action sequences N per environment (policy trajectories included).
    pub num_samples: usize,
    /// Elites E kept for the refit (EliteMppi, Cem).
    pub num_elites: usize,
    /// Policy trajectories P among the N samples (0 disables them).
    pub num_pi_trajs: usize,
    /// Optimization iterations I.
    pub iterations: usize,
    /// Std clamp.
    pub min_std: f32,
    /// Std clamp and initial std.
    pub max_std: f32,
    /// Inverse temperature of EliteMppi's weights.
    pub temperature: f32,
    /// Reward discount gamma.
    pub discount: f32,
    /// Refit weighting.
    pub mode: PlannerMode,
    /// Exploration noise or not.
    pub plan_mode: PlanMode,
    /// Seed of every random draw (Philox key).
    pub seed: u64,
}

impl PlannerConfig {
    /// TD-MPC2's planner for `action_dim` actions: horizon 3, 512 samples, 64 elites, 24
    /// policy trajectories, 6 iterations (8 when the action dimension is at least 20), std
    /// in [0.05, 2], temperature 0.5, discount 0.99 (DMC's episode length 500 after action
    /// repeat 2), train mode, seed 1.
    pub fn tdmpc2(action_dim: usize) -> PlannerConfig {
        PlannerConfig {
            horizon: 3,
            num_samples: 512,
            num_elites: 64,
            num_pi_trajs: 24,
            iterations: if action_dim >= 20 { 8 } else { 6 },
            min_std: 0.05,
            max_std: 2.0,
            temperature: 0.5,
            discount: 0.99,
            mode: PlannerMode::EliteMppi,
            plan_mode: PlanMode::Train,
            seed: 1,
        }
    }

    /// TD-MPC2's discount for an episode of `len` agent steps:
    /// `clip((len / 5 - 1) / (len / 5), 0.95, 0.995)`.
    pub fn discount_for_episode(len: usize) -> f32 {
        let f = len as f32 / 5.0;
        ((f - 1.0) / f).clamp(0.95, 0.995)
    }

    /// Samples that enter the refit (`num_elites`, or all in plain MPPI).
    pub fn kept(&self) -> usize {
        match self.mode {
            PlannerMode::Mppi { .. } => self.num_samples,
            _ => self.num_elites,
        }
    }

    /// Check the settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("planner config: {m}")));
        if self.horizon == 0 || self.horizon > MAX_HORIZON {
            return bad(format!(
                "horizon {} outside 1..={MAX_HORIZON}",
                self.horizon
            ));
        }
        if self.iterations == 0 || self.iterations > MAX_ITERATIONS {
            return bad(format!(
                "{} iterations outside 1..={MAX_ITERATIONS}",
                self.iterations
            ));
        }
        if self.num_samples < 2 || self.num_samples > MAX_SAMPLES {
            return bad(format!(
                "{} samples outside 2..={MAX_SAMPLES}",
                self.num_samples
            ));
        }
        if self.num_pi_trajs >= self.num_samples {
            return bad(format!(
                "{} policy trajectories leave no sampled ones among {} samples",
                self.num_pi_trajs, self.num_samples
            ));
        }
        if self.num_elites == 0 || self.num_elites > self.num_samples {
            return bad(format!(
                "{} elites of {} samples",
                self.num_elites, self.num_samples
            ));
        }
        if !(self.min_std > 0.0 && self.min_std <= self.max_std && self.max_std <= MAX_STD) {
            return bad(format!(
                "std range [{}, {}]: need 0 < min_std <= max_std <= {MAX_STD} (actions lie in \
                 [-1, 1])",
                self.min_std, self.max_std
            ));
        }
        let (t_lo, t_hi) = TEMPERATURE_RANGE;
        if !(t_lo..=t_hi).contains(&self.temperature) {
            return bad(format!(
                "temperature {} outside [{t_lo:e}, {t_hi:e}]: the elite weights are \
                 exp(temperature * (v - v_max)), and a larger temperature times a value can \
                 overflow f32",
                self.temperature
            ));
        }
        if !(self.discount > 0.0 && self.discount <= 1.0) {
            return bad(format!("discount {} outside (0, 1]", self.discount));
        }
        let (l_lo, l_hi) = LAMBDA_RANGE;
        if let PlannerMode::Mppi { lambda } = self.mode
            && !(l_lo..=l_hi).contains(&lambda)
        {
            return bad(format!(
                "MPPI lambda {lambda} outside [{l_lo:e}, {l_hi:e}]: the weights are \
                 exp((v - v_max) / lambda), and a smaller lambda can overflow f32"
            ));
        }
        Ok(())
    }
}

/// Longest horizon (the per-step noise streams are numbered below it).
pub const MAX_HORIZON: usize = 64;
/// Range of EliteMppi's inverse temperature. Values come from two-hot heads over at most
/// `symexp(`[`MAX_SYMLOG`](crate::model::MAX_SYMLOG)`)` ~ 1e13 per term, so `|v| <= (MAX_HORIZON + 1) 1e13` < 1e15, and
/// `temperature * v` stays below 1e21 even if a compiler expands `t (v - v_max)` into
/// `t v - t v_max`, which fast-math compilers may do (issue 20 saw NaN means at a
/// temperature of 3e38 on lavapipe).
pub const TEMPERATURE_RANGE: (f32, f32) = (1e-6, 1e6);
/// Range of plain MPPI's temperature lambda (the reciprocal of [`TEMPERATURE_RANGE`]).
pub const LAMBDA_RANGE: (f32, f32) = (1e-6, 1e6);
/// Largest std of the sampling distribution: actions are clamped to [-1, 1], so a std beyond
/// this only samples the bounds.
pub const MAX_STD: f32 = 100.0;
/// Most iterations.
pub const MAX_ITERATIONS: usize = 64;
/// Most samples per environment (the elite sort holds one environment's values in
/// workgroup memory).
pub const MAX_SAMPLES: usize = 2048;

/// The Philox streams of plan call number `call` (a planner counts its calls from 0): every
/// draw is keyed by (config seed, stream, element index), the same on the GPU and in the
/// CPU mirror. Element j of a stream comes from lane j % 4 of counter j / 4.
pub mod streams {
    /// Which two Q heads iteration `i` averages: words of counter `i`.
    pub fn heads(call: u32) -> u32 {
        call.wrapping_mul(256)
    }
    /// Gumbel noise of the elite choice, element `b * kept + e`.
    pub fn gumbel(call: u32) -> u32 {
        call.wrapping_mul(256) + 1
    }
    /// Exploration noise (train mode), element `b * A + i`.
    pub fn explore(call: u32) -> u32 {
        call.wrapping_mul(256) + 2
    }
    /// Sampling noise of iteration `i`, element `((t * N + n) * B + b) * A + a`.
    pub fn sampling(call: u32, i: usize) -> u32 {
        call.wrapping_mul(256) + 16 + i as u32
    }
    /// Policy noise of the terminal action in iteration `i`, element `(n * B + b) * A + a`.
    pub fn terminal(call: u32, i: usize) -> u32 {
        call.wrapping_mul(256) + 80 + i as u32
    }
    /// Policy noise of the policy trajectories at step `t`, element `(n * B + b) * A + a`.
    pub fn pi_traj(call: u32, t: usize) -> u32 {
        call.wrapping_mul(256) + 144 + t as u32
    }
}

/// The two distinct Q heads (of `num_q` >= 2) that iteration `i` of plan call `call` averages.
/// With fewer than 2 heads there is no pair to choose: head 0 twice (the planner refuses such
/// models; this never panics). Head counts past `u32::MAX` choose among the first
/// `u32::MAX`.
pub fn chosen_heads(seed: u64, call: u32, i: usize, num_q: usize) -> [u32; 2] {
    let q = u32::try_from(num_q).unwrap_or(u32::MAX);
    if q < 2 {
        return [0, 0];
    }
    let w = crate::rng::philox(seed, streams::heads(call) as u64, i as u64);
    let h0 = w[0] % q;
    let h1 = (h0 + 1 + w[1] % (q - 1)) % q;
    [h0, h1]
}
