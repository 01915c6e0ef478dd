//! Mirror of `shaders/optim.wgsl` in f64: the global gradient norm, Adam with global-norm
//! clipping and parameter groups (torch.optim.Adam after clip_grad_norm_), the Polyak update
//! and TD-MPC2's RunningScale, step by step as the kernels do them.

use crate::kernels::optim::{AdamConfig, CLIP_EPS, ParamGroup, PolyakSpan};
use std::ops::Range;

/// `sqrt(sum g^2)` over `ranges` of `grads`.
pub fn grad_norm(grads: &[f32], ranges: &[Range<usize>]) -> f64 {
    ranges
        .iter()
        .flat_map(|r| grads[r.clone()].iter())
        .map(|&g| g as f64 * g as f64)
        .sum::<f64>()
        .sqrt()
}

/// `clip_grad_norm_`'s factor: `min(max_norm / (norm + 1e-6), 1)`.
pub fn clip_coef(norm: f64, max_norm: f32) -> f64 {
    (max_norm as f64 / (norm + CLIP_EPS as f64)).min(1.0)
}

/// `1 - beta^t`, as the begin kernel computes it: `-expm1(t ln beta)`.
pub fn bias_correction(beta: f64, t: u32) -> f64 {
    -(t as f64 * beta.ln()).exp_m1()
}

/// torch's `lerp(a, b, w)`, in exact arithmetic `a + w (b - a)`.
pub fn lerp(a: f64, b: f64, w: f64) -> f64 {
    a + w * (b - a)
}

/// Adam's state in f64, stepped like the kernels: begin (norm, clip coefficient, step,
/// bias corrections), then the element-wise update of every group.
#[derive(Clone, Debug)]
pub struct AdamMirror {
    /// Hyperparameters (the learning rate may change between steps).
    pub cfg: AdamConfig,
    /// Parameter groups.
    pub groups: Vec<ParamGroup>,
    /// First moments, one per element of the flat buffer.
    pub m: Vec<f64>,
    /// Second moments.
    pub v: Vec<f64>,
    /// Steps taken.
    pub step: u32,
    /// Gradient norm of the last step (with clipping).
    pub grad_norm: Option<f64>,
    /// Clip coefficient of the last step (1 without clipping).
    pub clip_coef: f64,
}

impl AdamMirror {
    /// Zero moments at step 0 for flat buffers of `len` elements.
    pub fn new(len: usize, groups: &[ParamGroup], cfg: AdamConfig) -> Self {
        AdamMirror {
            cfg,
            groups: groups.to_vec(),
            m: vec![0.0; len],
            v: vec![0.0; len],
            step: 0,
            grad_norm: None,
            clip_coef: 1.0,
        }
    }

    /// One step of `params` (the flat buffer) with `grads`.
    pub fn step(&mut self, params: &mut [f64], grads: &[f32]) {
        let cfg = self.cfg;
        // Begin: the global norm over all groups, the clip coefficient, the step counter and
        // the bias corrections.
        let ranges: Vec<Range<usize>> = self.groups.iter().map(|g| g.range()).collect();
        let (norm, coef) = match cfg.clip {
            Some(max_norm) => {
                let n = grad_norm(grads, &ranges);
                (Some(n), clip_coef(n, max_norm))
            }
            None => (None, 1.0),
        };
        self.grad_norm = norm;
        self.clip_coef = coef;
        self.step += 1;
        let bc1 = bias_correction(cfg.beta1, self.step);
        let bc2_sqrt = bias_correction(cfg.beta2, self.step).sqrt();
        // Update: every element of every group.
        for g in &self.groups {
            let step_size = cfg.lr as f64 * g.lr_scale as f64 / bc1;
            for i in g.range() {
                let grad = grads[i] as f64 * coef;
                self.m[i] = lerp(self.m[i], grad, 1.0 - cfg.beta1);
                self.v[i] = cfg.beta2 * self.v[i] + (1.0 - cfg.beta2) * grad * grad;
                let denom = self.v[i].sqrt() / bc2_sqrt + cfg.eps as f64;
                params[i] -= step_size * self.m[i] / denom;
            }
        }
    }
}

/// The Polyak update `target = lerp(target, source, tau)` over `spans` between two buffers.
pub fn polyak(source: &[f64], target: &mut [f64], spans: &[PolyakSpan], tau: f64) {
    for s in spans {
        for j in 0..s.len {
            let t = &mut target[s.target + j];
            *t = lerp(*t, source[s.source + j], tau);
        }
    }
}

/// [`polyak`] within one buffer (sources and targets apart).
pub fn polyak_in_place(buf: &mut [f64], spans: &[PolyakSpan], tau: f64) {
    for s in spans {
        for j in 0..s.len {
            buf[s.target + j] = lerp(buf[s.target + j], buf[s.source + j], tau);
        }
    }
}

/// TD-MPC2's percentile positions for `n` values, in f32 as its tensors compute them
/// (`percentiles * (n - 1) / 100` with f32 percentiles): for q = 5 and 95, (floor index,
/// ceil index clamped to `n - 1`, floor weight, ceil weight).
pub fn percentile_positions(n: usize) -> [(usize, usize, f64, f64); 2] {
    [5.0f32, 95.0].map(|q| {
        let pos: f32 = q * (n - 1) as f32 / 100.0;
        let floor = pos.floor();
        let ceil = (floor as usize + 1).min(n - 1);
        let w_ceil: f32 = pos - floor;
        let w_floor: f32 = 1.0 - w_ceil;
        (floor as usize, ceil, w_floor as f64, w_ceil as f64)
    })
}

/// The 5th and 95th percentiles of `values` as `scale.py` takes them: sort ascending (NaN
/// last, as torch.sort), `sorted[floor] * w_floor + sorted[ceil] * w_ceil`.
pub fn percentiles(values: &[f32]) -> (f64, f64) {
    let mut s: Vec<f64> = values.iter().map(|&v| v as f64).collect();
    s.sort_by(|a, b| a.total_cmp(b));
    // total_cmp puts negative NaN first; torch puts every NaN last.
    s.sort_by_key(|v| v.is_nan());
    let [lo, hi] = percentile_positions(values.len()).map(|(f, c, wf, wc)| s[f] * wf + s[c] * wc);
    (lo, hi)
}

/// TD-MPC2's RunningScale in f64.
#[derive(Clone, Copy, Debug)]
pub struct RunningScaleMirror {
    /// The scale (initially 1).
    pub value: f64,
    /// Update rate.
    pub tau: f64,
}

impl RunningScaleMirror {
    /// Scale 1, rate `tau`.
    pub fn new(tau: f64) -> Self {
        RunningScaleMirror { value: 1.0, tau }
    }

    /// `value = lerp(value, max(p95 - p5, 1), tau)`.
    pub fn update(&mut self, values: &[f32]) {
        let (lo, hi) = percentiles(values);
        self.value = lerp(self.value, (hi - lo).max(1.0), self.tau);
    }
}
