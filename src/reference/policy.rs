//! Mirror of `shaders/policy.wgsl`: TD-MPC2's `WorldModel.pi` with given noise, in f64, with
//! the formulas as TD-MPC2 writes them (`common/math.py`: `log_std`, `gaussian_logprob`,
//! `squash`); the shader uses rewrites that are equal in exact arithmetic.

use crate::kernels::policy::PolicyConfig;

/// TD-MPC2's constant `0.9189385175704956` = log(2 pi) / 2.
const HALF_LOG_2PI: f64 = 0.918_938_533_204_672_7;

/// The outputs of one call.
#[derive(Clone, Debug, Default)]
pub struct PolicySample {
    /// Squashed actions `[R, A]`.
    pub action: Vec<f64>,
    /// `[R, 2A + 3]` rows of (mean, log_std, log_prob, entropy, scaled_entropy).
    pub stats: Vec<f64>,
}

/// The policy head for `rows` rows of `h` (`[R, 2A]`) and `eps` (`[R, A]`).
pub fn sample(cfg: &PolicyConfig, rows: usize, h: &[f32], eps: &[f32]) -> PolicySample {
    let a = cfg.action_dim;
    let (lo, hi) = (cfg.log_std_min as f64, cfg.log_std_max as f64);
    let mut out = PolicySample {
        action: Vec::with_capacity(rows * a),
        stats: Vec::with_capacity(rows * cfg.stats_width()),
    };
    for r in 0..rows {
        let hr = &h[r * 2 * a..(r + 1) * 2 * a];
        let er = &eps[r * a..(r + 1) * a];
        let mut mean = Vec::with_capacity(a);
        let mut log_std = Vec::with_capacity(a);
        let (mut lp_pre, mut squash) = (0.0, 0.0);
        for i in 0..a {
            let (mu, raw, e) = (hr[i] as f64, hr[a + i] as f64, er[i] as f64);
            // math.log_std
            let ls = lo + 0.5 * (hi - lo) * (raw.tanh() + 1.0);
            // math.gaussian_logprob
            lp_pre += -0.5 * e * e - ls - HALF_LOG_2PI;
            // reparameterised sample, then math.squash
            let act = (mu + e * ls.exp()).tanh();
            squash += ((1.0 - act * act).max(0.0) + 1e-6).ln();
            out.action.push(act);
            mean.push(mu.tanh());
            log_std.push(ls);
        }
        let log_prob = lp_pre - squash;
        let scaled_log_prob = lp_pre * a as f64;
        let entropy_scale = scaled_log_prob / (log_prob + 1e-8);
        out.stats.extend(mean);
        out.stats.extend(log_std);
        out.stats
            .extend([log_prob, -log_prob, -log_prob * entropy_scale]);
    }
    out
}
