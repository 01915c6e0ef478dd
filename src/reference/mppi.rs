//! Mirror of `shaders/mppi.wgsl`: one MPPI optimization step on the CPU in f64, for a
//! problem whose dynamics and costs are written in Rust, with the same Philox noise.

use crate::planner::custom::MppiConfig;
use crate::rng::{normal4, philox};

/// Dynamics and costs in Rust: the twin of a problem's WGSL.
pub trait RustProblem {
    /// State dimension.
    fn state_dim(&self) -> usize;
    /// Control dimension.
    fn control_dim(&self) -> usize;
    /// `x'` after `dt` seconds.
    fn dynamics(&self, x: &[f64], u: &[f64], t: usize, dt: f64, params: &[f32]) -> Vec<f64>;
    /// Cost of being in `x` and applying `u` at step `t`.
    fn running_cost(&self, x: &[f64], u: &[f64], t: usize, params: &[f32]) -> f64;
    /// Cost of ending in `x`.
    fn terminal_cost(&self, x: &[f64], params: &[f32]) -> f64;
}

/// What one mirrored step computes.
#[derive(Clone, Debug, PartialEq)]
pub struct MirrorStep {
    /// Sample costs `[K]`.
    pub costs: Vec<f64>,
    /// Normalized weights `[K]`.
    pub weights: Vec<f64>,
    /// The updated control sequence `[H, C]`.
    pub controls: Vec<f64>,
    /// Lowest cost.
    pub min_cost: f64,
    /// Normalizer.
    pub eta: f64,
}

/// The warm-start shift applied before every step but the first: `u[t] = u[t + 1]`, the
/// last step kept.
pub fn shift(u: &mut [f64], c: usize) {
    let h = u.len() / c;
    for t in 0..h.saturating_sub(1) {
        for j in 0..c {
            u[t * c + j] = u[(t + 1) * c + j];
        }
    }
}

/// One step of MPPI from `x0` with control sequence `u` `[H, C]` and noise stream `call`.
pub fn step(
    problem: &dyn RustProblem,
    cfg: &MppiConfig,
    x0: &[f32],
    u: &[f64],
    params: &[f32],
    call: u32,
) -> MirrorStep {
    let (k_n, h, c) = (cfg.samples, cfg.horizon, problem.control_dim());
    let dt = cfg.dt as f64;
    let mut eps = vec![0.0f64; h * k_n * c];
    let mut costs = vec![0.0f64; k_n];
    for (k, cost) in costs.iter_mut().enumerate() {
        let mut x: Vec<f64> = x0.iter().map(|v| *v as f64).collect();
        let mut s = 0.0;
        for t in 0..h {
            let mut v = vec![0.0; c];
            for j in 0..c {
                let idx = (t * k_n + k) * c + j;
                let n = normal4(philox(cfg.seed, call as u64, (idx / 4) as u64))[idx % 4] as f64;
                let sigma = cfg.sigma[j] as f64;
                let uj = u[t * c + j];
                let vj = (uj + sigma * n).clamp(cfg.u_min[j] as f64, cfg.u_max[j] as f64);
                let e = vj - uj;
                eps[idx] = e;
                s += cfg.gamma as f64 * uj * e / (sigma * sigma);
                v[j] = vj;
            }
            s += problem.running_cost(&x, &v, t, params);
            x = problem.dynamics(&x, &v, t, dt, params);
        }
        s += problem.terminal_cost(&x, params);
        if !s.is_finite() || s > 3.0e38 {
            s = 3.0e38;
        }
        *cost = s;
    }
    let min_cost = costs.iter().cloned().fold(f64::INFINITY, f64::min);
    let raw: Vec<f64> = costs
        .iter()
        .map(|s| (-(s - min_cost) / cfg.lambda as f64).exp())
        .collect();
    let eta: f64 = raw.iter().sum();
    let weights: Vec<f64> = raw.iter().map(|w| w / eta).collect();
    let mut controls = u.to_vec();
    for t in 0..h {
        for j in 0..c {
            let d: f64 = (0..k_n)
                .map(|k| weights[k] * eps[(t * k_n + k) * c + j])
                .sum();
            controls[t * c + j] += d;
        }
    }
    MirrorStep {
        costs,
        weights,
        controls,
        min_cost,
        eta,
    }
}
