//! Classic MPPI (Williams et al. 2017) over dynamics and costs written in WGSL: the regime of
//! MPPI-Generic and pytorch_mppi, for engines that bring their own model of a car, a
//! quadrotor or a cart-pole.
//!
//! # The WGSL contract
//!
//! pompc puts these before your code: `const STATE_DIM: u32`, `const CONTROL_DIM: u32`,
//! `const PARAM_LEN: u32`, the overrides `K` (samples), `H` (horizon), `DT` (seconds per
//! step), `LAMBDA`, `GAMMA`, the types `State = array<f32, STATE_DIM>` and `Control =
//! array<f32, CONTROL_DIM>`, and `fn param(i: u32) -> f32` reading the parameter buffer
//! ([`Mppi::set_params`]: goals, obstacles; from a copy in workgroup memory when the buffer
//! holds at most [`MAX_STAGED_PARAMS`] values, since every sample reads them at every step).
//! You write:
//!
//! ```wgsl
//! fn dynamics(x: State, u: Control, t: u32) -> State { ... }   // x' after DT seconds
//! fn running_cost(x: State, u: Control, t: u32) -> f32 { ... }
//! fn terminal_cost(x: State) -> f32 { ... }
//! ```
//!
//! Names starting with `mppi_`, `philox` and `user_params` are pompc's. Errors in your code
//! come back as [`Error::Shader`] with your own line numbers (`user:LINE`).
//!
//! # One optimization step ([`Mppi::step`], one submit, one read-back)
//!
//! With control sequence `u [H, C]`, noise `n ~ N(0, 1)` from Philox (seed, stream = call
//! index, element `(t * K + k) * C + j`): `v = clamp(u + sigma n, u_min, u_max)`, `e = v - u`;
//! `S_k = sum_t [running_cost(x_t, v_t, t) + GAMMA sum_j u_tj e_tj / sigma_j^2] +
//! terminal_cost(x_H)`; `w_k = exp(-(S_k - min S) / LAMBDA) / eta`; `u_t += sum_k w_k e_kt`.
//! The first control is returned; the next step first shifts `u` one step (warm start, the
//! last step repeated).
//!
//! # When a step fails
//!
//! Each rollout that ran its whole horizon tags its status word with the step's noise stream
//! (and whether its cost is finite); the weights kernel counts the tags of this step, so a
//! sample stopped early keeps an older tag, and the counts come back in the step's one
//! read-back. Samples with a NaN
//! or infinite cost get no weight ([`MppiStep::finite_samples`] says how many counted), but a
//! step where some sample did not finish (a driver that stops long loops, as lavapipe does,
//! or dynamics that never return) or where no cost is finite is an error, and the control
//! sequence is left as it was. On a GPU that does not stop such loops, dynamics that never
//! return end in the [`Gpu`]'s wait timeout ([`Error::Timeout`]).

use crate::gpu::shader::{self, Header, Preprocessed};
use crate::gpu::{
    BindCache, Binding, Encoded, Gpu, GpuBuffer, Pipeline, ReadbackHandle, Recorder, ShaderChecks,
};
use crate::{Error, Result};
use std::sync::Arc;

/// A control problem: sizes and the WGSL that defines its dynamics and costs.
#[derive(Clone, Debug)]
pub struct Problem {
    /// Name for error messages.
    pub name: String,
    /// State dimension.
    pub state_dim: usize,
    /// Control dimension.
    pub control_dim: usize,
    /// Length of the parameter buffer (0: none).
    pub param_len: usize,
    /// WGSL defining `dynamics`, `running_cost` and `terminal_cost`.
    pub wgsl: String,
}

impl Problem {
    /// Check the dimensions: positive (an [`Error::Shape`]) and within [`MAX_STATE_DIM`],
    /// [`MAX_CONTROL_DIM`] and [`MAX_PARAM_LEN`] (an [`Error::Limit`]). [`Mppi::new`] checks
    /// them first; a caller that sizes host arrays from them checks them before that.
    pub fn check_dims(&self) -> Result<()> {
        let (s, c) = (self.state_dim, self.control_dim);
        if s == 0 || c == 0 {
            return Err(Error::Shape(format!(
                "problem {:?}: state and control dimensions must be positive, got {s} and {c}",
                self.name
            )));
        }
        for (what, v, max) in [
            ("state_dim", s, MAX_STATE_DIM),
            ("control_dim", c, MAX_CONTROL_DIM),
            ("param_len", self.param_len, MAX_PARAM_LEN),
        ] {
            if v > max {
                return Err(Error::Limit(format!(
                    "problem {:?}: {what} = {v}, at most {max}",
                    self.name
                )));
            }
        }
        Ok(())
    }
}

/// MPPI settings.
#[derive(Clone, Debug, PartialEq)]
pub struct MppiConfig {
    /// Horizon H (steps), up to [`MAX_HORIZON`].
    pub horizon: usize,
    /// Samples K, up to [`MAX_SAMPLES`].
    pub samples: usize,
    /// Temperature lambda.
    pub lambda: f32,
    /// Weight of the control cost; Williams et al. use lambda.
    pub gamma: f32,
    /// Noise std per control dimension (Sigma = diag(sigma^2)).
    pub sigma: Vec<f32>,
    /// Lower control bounds.
    pub u_min: Vec<f32>,
    /// Upper control bounds.
    pub u_max: Vec<f32>,
    /// Seconds per step, `DT` in the WGSL.
    pub dt: f32,
    /// Philox seed.
    pub seed: u64,
    /// Build the user's WGSL without bounds checks (faster; an out-of-bounds index in it is
    /// then undefined behaviour instead of a clamped access).
    pub trusted: bool,
}

/// Longest horizon.
pub const MAX_HORIZON: usize = 1000;
/// Most samples.
pub const MAX_SAMPLES: usize = 65536;
/// Largest state dimension: each sample keeps its state in registers, and compilers unroll
/// the state loops (on lavapipe a 1024-wide state took 20 s to compile, 256 under one).
pub const MAX_STATE_DIM: usize = 256;
/// Largest control dimension.
pub const MAX_CONTROL_DIM: usize = 64;
/// Longest parameter buffer (a cost map of 4096 x 4096 floats fits).
pub const MAX_PARAM_LEN: usize = 1 << 24;
/// Range of each noise std `sigma`: the control cost divides by `sigma^2`, which must stay a
/// normal f32, and its products with the controls must stay finite.
pub const SIGMA_RANGE: (f32, f32) = (1e-6, 1e6);
/// Largest `|u_min|`, `|u_max|`.
pub const MAX_CONTROL: f32 = 1e6;
/// Range of the temperature `lambda`: the weights are `exp(-(S - min S) / lambda)`.
pub const LAMBDA_RANGE: (f32, f32) = (1e-6, 1e6);
/// Largest control-cost weight `gamma`.
pub const MAX_GAMMA: f32 = 1e6;
/// Largest step `dt` (seconds).
pub const MAX_DT: f32 = 1e6;

impl MppiConfig {
    /// MPPI-Generic's differential-drive settings for `control_dim` controls (horizon 100,
    /// 1024 samples, lambda 1, sigma 0.2, controls in [-1, 1], dt 0.02) with Williams et
    /// al.'s control-cost weight gamma = lambda. With sigma 0.2 that weight is 25 u e per
    /// step, which swamps tasks whose costs are small per step: the differential drive of
    /// `planner::problems` uses Nav2's gamma = 0.015.
    pub fn new(control_dim: usize) -> Self {
        MppiConfig {
            horizon: 100,
            samples: 1024,
            lambda: 1.0,
            gamma: 1.0,
            sigma: vec![0.2; control_dim],
            u_min: vec![-1.0; control_dim],
            u_max: vec![1.0; control_dim],
            dt: 0.02,
            seed: 1,
            trusted: false,
        }
    }

    fn validate(&self, c: usize) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("MPPI config: {m}")));
        if self.horizon == 0 || self.horizon > MAX_HORIZON {
            return bad(format!(
                "horizon {} outside 1..={MAX_HORIZON}",
                self.horizon
            ));
        }
        if self.samples == 0 || self.samples > MAX_SAMPLES {
            return bad(format!(
                "{} samples outside 1..={MAX_SAMPLES}",
                self.samples
            ));
        }
        if self.sigma.len() != c || self.u_min.len() != c || self.u_max.len() != c {
            return Err(Error::Shape(format!(
                "sigma, u_min and u_max need {c} values each (the control dimension), got {}, \
                 {} and {}",
                self.sigma.len(),
                self.u_min.len(),
                self.u_max.len()
            )));
        }
        let (s_lo, s_hi) = SIGMA_RANGE;
        if let Some(j) = self.sigma.iter().position(|s| !(s_lo..=s_hi).contains(s)) {
            return bad(format!(
                "sigma[{j}] = {} outside [{s_lo:e}, {s_hi:e}] (the control cost divides by \
                 sigma^2)",
                self.sigma[j]
            ));
        }
        let in_range = |v: &f32| v.is_finite() && v.abs() <= MAX_CONTROL;
        if let Some(j) = (0..c).find(|&j| !(in_range(&self.u_min[j]) && in_range(&self.u_max[j]))) {
            return bad(format!(
                "control bounds [{}, {}] of control {j}: finite, within +-{MAX_CONTROL:e}",
                self.u_min[j], self.u_max[j]
            ));
        }
        if let Some(j) = (0..c).find(|&j| self.u_min[j] > self.u_max[j]) {
            return bad(format!(
                "u_min[{j}] = {} exceeds u_max[{j}] = {}",
                self.u_min[j], self.u_max[j]
            ));
        }
        let (l_lo, l_hi) = LAMBDA_RANGE;
        if !(l_lo..=l_hi).contains(&self.lambda) {
            return bad(format!(
                "lambda {} outside [{l_lo:e}, {l_hi:e}] (the weights are exp(-(S - min S) / \
                 lambda))",
                self.lambda
            ));
        }
        if !(self.dt > 0.0 && self.dt <= MAX_DT) {
            return bad(format!("dt {} outside (0, {MAX_DT:e}]", self.dt));
        }
        if !(0.0..=MAX_GAMMA).contains(&self.gamma) {
            return bad(format!("gamma {} outside [0, {MAX_GAMMA:e}]", self.gamma));
        }
        Ok(())
    }
}

/// Result of one optimization step.
#[derive(Clone, Debug, PartialEq)]
pub struct MppiStep {
    /// The first control of the updated sequence: what to apply now.
    pub control: Vec<f32>,
    /// The lowest sample cost.
    pub min_cost: f32,
    /// The normalizer eta (effective weight mass; near 1 means one sample dominates).
    pub eta: f32,
    /// Samples whose rollout ended with a finite cost (the others got no weight).
    pub finite_samples: usize,
}

/// Sample rollouts of the last step, for pictures: states `[n, H + 1, STATE_DIM]` (starting
/// state first) and the samples' weights `[n]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollouts {
    /// Rollouts kept.
    pub n: usize,
    /// States.
    pub states: Vec<f32>,
    /// Weights.
    pub weights: Vec<f32>,
}

const ROLLOUT: &[(u32, Binding)] = &[
    (0, Binding::Read),
    (1, Binding::ReadWrite),
    (2, Binding::ReadWrite),
    (3, Binding::ReadWrite),
    (4, Binding::Read),
    (7, Binding::Read),
    (8, Binding::Uniform),
    (9, Binding::ReadWrite),
    (10, Binding::ReadWrite),
];
const NORMALIZE: &[(u32, Binding)] = &[
    (3, Binding::ReadWrite),
    (5, Binding::ReadWrite),
    (6, Binding::ReadWrite),
    (8, Binding::Uniform),
    (10, Binding::ReadWrite),
];
const UPDATE: &[(u32, Binding)] = &[
    (1, Binding::ReadWrite),
    (2, Binding::ReadWrite),
    (5, Binding::ReadWrite),
    (6, Binding::ReadWrite),
    (8, Binding::Uniform),
];
const SHIFT: &[(u32, Binding)] = &[(1, Binding::ReadWrite), (8, Binding::Uniform)];
const NOISE: &[(u32, Binding)] = &[(2, Binding::ReadWrite), (8, Binding::Uniform)];

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    key: crate::rng::SeedStream,
    vis_rows: u32,
}

/// The prelude pasted before the user's code when it is checked on its own.
fn prelude() -> String {
    "override K: u32 = 1u;\noverride H: u32 = 1u;\noverride DT: f32 = 0.02;\n\
     override LAMBDA: f32 = 1.0;\noverride GAMMA: f32 = 1.0;\n\
     alias State = array<f32, STATE_DIM>;\nalias Control = array<f32, CONTROL_DIM>;\n\
     fn param(i: u32) -> f32 { return f32(i) * 0.0; }\n\
     @compute @workgroup_size(1) fn mppi_check() {\n\
     var x: State; var u: Control;\n\
     x = dynamics(x, u, 0u);\n\
     let c = running_cost(x, u, 0u) + terminal_cost(x);\n}\n\
     #import user\n"
        .to_string()
}

fn header(p: &Problem) -> Header {
    Header(vec![
        ("STATE_DIM", p.state_dim as u32),
        ("CONTROL_DIM", p.control_dim as u32),
        ("PARAM_LEN", p.param_len.max(1) as u32),
    ])
}

/// Most control-sequence elements (H x C, 2 KB) the rollout keeps in workgroup memory: every
/// sample reads the sequence and the bounds at every step, and from storage each step's
/// control is a dependent load on the rollout's serial chain. Longer sequences are read from
/// storage.
pub const MAX_STAGED_CONTROLS: usize = 512;
/// Most user parameters (4 KB) the rollout keeps in workgroup memory; longer parameter
/// buffers (cost maps) are read from storage.
pub const MAX_STAGED_PARAMS: usize = 1024;

/// The header constants of the rollout's staging (shaders/mppi.wgsl): what fits
/// [`MAX_STAGED_CONTROLS`] and [`MAX_STAGED_PARAMS`] is staged, unless `on` is false.
pub(crate) fn staging(p: &Problem, horizon: usize, on: bool) -> [(&'static str, u32); 4] {
    let u_len = horizon * p.control_dim;
    let u = on && u_len <= MAX_STAGED_CONTROLS;
    let params = on && p.param_len.max(1) <= MAX_STAGED_PARAMS;
    [
        ("MPPI_STAGE", (u || params) as u32),
        ("MPPI_STAGE_U", u as u32),
        ("MPPI_STAGE_P", params as u32),
        ("MPPI_U_LEN", if u { u_len as u32 } else { 1 }),
    ]
}

fn preprocess(
    p: &Problem,
    main: &str,
    main_text: &str,
    extra: &[(&'static str, u32)],
) -> Result<Preprocessed> {
    let user = p.wgsl.clone();
    let mut h = header(p);
    for &(k, v) in extra {
        h.set(k, v);
    }
    shader::preprocess_with(main, main_text, &h, &move |n| {
        if n == "user" {
            Some(user.clone())
        } else {
            shader::library_source(n)
        }
    })
    .map_err(|e| match e {
        Error::Shader { message, .. } => Error::Shader {
            name: p.name.clone(),
            message,
        },
        e => e,
    })
}

/// MPPI over a [`Problem`] on the GPU.
///
/// ```no_run
/// # fn main() -> pompc::Result<()> {
/// use pompc::planner::custom::{Mppi, MppiConfig, Problem};
/// let gpu = pompc::Gpu::new(Default::default())?;
/// let problem = Problem {
///     name: "point".into(),
///     state_dim: 1,
///     control_dim: 1,
///     param_len: 1,
///     wgsl: "fn dynamics(x: State, u: Control, t: u32) -> State { return State(x[0] + DT * u[0]); }\n\
///            fn running_cost(x: State, u: Control, t: u32) -> f32 { let d = x[0] - param(0u); return d * d; }\n\
///            fn terminal_cost(x: State) -> f32 { return 0.0; }".into(),
/// };
/// let mut mppi = Mppi::new(&gpu, problem, MppiConfig::new(1))?;
/// mppi.set_params(&[1.0])?; // goal
/// let step = mppi.step(&[0.0])?;
/// println!("apply {:?}", step.control);
/// # Ok(()) }
/// ```
pub struct Mppi<'g> {
    gpu: &'g Gpu,
    problem: Problem,
    cfg: MppiConfig,
    pipes: [Arc<Pipeline>; 5],
    x0: GpuBuffer<f32>,
    u: GpuBuffer<f32>,
    eps: GpuBuffer<f32>,
    cost: GpuBuffer<f32>,
    bounds: GpuBuffer<f32>,
    weights: GpuBuffer<f32>,
    out: GpuBuffer<f32>,
    params: GpuBuffer<f32>,
    vis: GpuBuffer<f32>,
    status: GpuBuffer<u32>,
    vis_rows: usize,
    call: u32,
    fresh: bool,
    timestamps: bool,
    last_gpu_seconds: Option<f64>,
    // Every step records the same dispatches on the same buffers.
    binds: BindCache,
    // The next step, recorded and encoded while the GPU ran this one (it assumes this step
    // succeeds; any other case records afresh).
    next: Option<PreparedStep<'g>>,
}

// An MPPI step encoded ahead, with what it was recorded for.
struct PreparedStep<'g> {
    key: StepKey,
    encoded: Encoded<'g>,
    handle: ReadbackHandle<f32>,
}

// What a recorded step depends on besides buffer contents.
#[derive(Clone, Copy, PartialEq, Eq)]
struct StepKey {
    call: u32,
    shift: bool,
    vis_rows: usize,
    timestamps: bool,
}

impl<'g> Mppi<'g> {
    /// Compile the problem's WGSL into the MPPI kernels and allocate the buffers. WGSL that
    /// does not compile is an [`Error::Shader`] at the user's own line numbers; dimensions
    /// over [`MAX_STATE_DIM`], [`MAX_CONTROL_DIM`] or [`MAX_PARAM_LEN`] are an
    /// [`Error::Limit`] before anything is compiled.
    pub fn new(gpu: &'g Gpu, problem: Problem, cfg: MppiConfig) -> Result<Self> {
        problem.check_dims()?;
        let (s, c) = (problem.state_dim, problem.control_dim);
        cfg.validate(c)?;
        // The user's code alone first: its errors then point at its own lines.
        let check = preprocess(&problem, "mppi-contract", &prelude(), &[])?;
        shader::validate(&problem.name, &check).map_err(|e| match e {
            Error::Shader { message, .. } => Error::Shader {
                name: problem.name.clone(),
                message: format!(
                    "{message}\n(the WGSL must define fn dynamics(x: State, u: Control, t: \
                     u32) -> State, fn running_cost(x: State, u: Control, t: u32) -> f32 and \
                     fn terminal_cost(x: State) -> f32)"
                ),
            },
            e => e,
        })?;
        let (k, h) = (cfg.samples, cfg.horizon);
        let eps_len = h * k * c;
        let max = gpu
            .limits()
            .max_storage_buffer_binding_size
            .min(gpu.limits().max_buffer_size);
        if (eps_len as u64) * 4 > max {
            return Err(Error::Limit(format!(
                "{k} samples x horizon {h} x {c} controls need {} MB of noise, over this \
                 device's {} MB per buffer; at this horizon at most {} samples fit",
                (eps_len * 4) >> 20,
                max >> 20,
                max / 4 / (h * c) as u64
            )));
        }
        // library_source: POMPC_SHADER_DIR reaches this shader too.
        let main = shader::library_source("mppi").expect("embedded");
        // `POMPC_MPPI_STAGE=0` reads everything from storage (for timing the difference).
        static STAGE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let stage =
            *STAGE.get_or_init(|| !std::env::var("POMPC_MPPI_STAGE").is_ok_and(|v| v == "0"));
        let pre = preprocess(
            &problem,
            "mppi",
            &main,
            &staging(&problem, cfg.horizon, stage),
        )?;
        let ov: Vec<(&str, f64)> = vec![
            ("K", k as f64),
            ("H", h as f64),
            ("DT", cfg.dt as f64),
            ("LAMBDA", cfg.lambda as f64),
            ("GAMMA", cfg.gamma as f64),
        ];
        let checks = if cfg.trusted {
            ShaderChecks::Trusted
        } else {
            ShaderChecks::Checked
        };
        let mk = |entry: &str, b: &[(u32, Binding)]| {
            gpu.pipeline_from_source(&problem.name, &pre, entry, b, &ov, Some(checks))
        };
        let pipes = [
            mk("mppi_rollout", ROLLOUT)?,
            mk("mppi_normalize", NORMALIZE)?,
            mk("mppi_update", UPDATE)?,
            mk("mppi_shift", SHIFT)?,
            mk("mppi_noise", NOISE)?,
        ];
        let f = |label: &str, n: usize| GpuBuffer::<f32>::new(gpu, label, n);
        let mut bounds = cfg.sigma.clone();
        bounds.extend_from_slice(&cfg.u_min);
        bounds.extend_from_slice(&cfg.u_max);
        Ok(Mppi {
            x0: f("mppi x0", s)?,
            u: f("mppi controls", h * c)?,
            eps: f("mppi noise", eps_len)?,
            cost: f("mppi costs", k)?,
            bounds: GpuBuffer::from_slice(gpu, "mppi bounds", &bounds)?,
            weights: f("mppi weights", k)?,
            out: f("mppi result", c + 4)?,
            params: f("mppi user params", problem.param_len.max(1))?,
            vis: f("mppi rollouts", (h + 1) * s)?,
            status: GpuBuffer::new(gpu, "mppi rollout status", k)?,
            vis_rows: 0,
            gpu,
            problem,
            cfg,
            pipes,
            call: 0,
            fresh: true,
            timestamps: false,
            last_gpu_seconds: None,
            binds: BindCache::new(),
            next: None,
        })
    }

    /// The settings.
    pub fn config(&self) -> &MppiConfig {
        &self.cfg
    }

    /// Time each step's GPU work with timestamp queries (see [`Mppi::last_gpu_seconds`]).
    pub fn with_timestamps(mut self, on: bool) -> Self {
        self.timestamps = on;
        self
    }

    /// Switch timestamp queries on or off.
    pub fn set_timestamps(&mut self, on: bool) {
        self.timestamps = on;
    }

    /// GPU time of the last step, when timestamps are on and the adapter has them.
    pub fn last_gpu_seconds(&self) -> Option<f64> {
        self.last_gpu_seconds
    }

    /// Replace the parameter buffer (length `param_len`, every value finite).
    pub fn set_params(&mut self, params: &[f32]) -> Result<()> {
        if params.len() != self.problem.param_len {
            return Err(Error::Shape(format!(
                "problem {:?} takes {} parameters, got {}",
                self.problem.name,
                self.problem.param_len,
                params.len()
            )));
        }
        if let Some(i) = params.iter().position(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "problem {:?}: parameter {i} is {} (parameters must be finite)",
                self.problem.name, params[i]
            )));
        }
        if params.is_empty() {
            return Ok(());
        }
        self.params.upload(self.gpu, params)
    }

    /// Set the control sequence `[H, C]` (e.g. a previous solution); the next step starts
    /// from it without shifting. Every value must lie within its control's `[u_min, u_max]`
    /// (where MPPI's own updates keep it).
    pub fn set_controls(&mut self, u: &[f32]) -> Result<()> {
        if u.len() != self.u.len() {
            return Err(Error::Shape(format!(
                "control sequence of {} values, expected horizon x controls = {}",
                u.len(),
                self.u.len()
            )));
        }
        let c = self.problem.control_dim;
        if let Some(i) =
            (0..u.len()).find(|&i| !(self.cfg.u_min[i % c]..=self.cfg.u_max[i % c]).contains(&u[i]))
        {
            return Err(Error::InvalidArgument(format!(
                "control sequence: step {} control {} is {}, outside [u_min, u_max] = [{}, {}]",
                i / c,
                i % c,
                u[i],
                self.cfg.u_min[i % c],
                self.cfg.u_max[i % c]
            )));
        }
        self.u.upload(self.gpu, u)?;
        self.fresh = true;
        self.next = None;
        Ok(())
    }

    /// Zero the control sequence (each control clamped into its bounds, when 0 is outside).
    pub fn reset(&mut self) -> Result<()> {
        let c = self.problem.control_dim;
        let z: Vec<f32> = (0..self.u.len())
            .map(|i| 0f32.clamp(self.cfg.u_min[i % c], self.cfg.u_max[i % c]))
            .collect();
        self.set_controls(&z)
    }

    /// The control sequence `[H, C]` (a read-back).
    pub fn controls(&self) -> Result<Vec<f32>> {
        self.u.download(self.gpu)
    }

    /// Keep the states of the first `n` sample rollouts of each step for [`Mppi::rollouts`].
    pub fn keep_rollouts(&mut self, n: usize) -> Result<()> {
        let n = n.min(self.cfg.samples);
        let len = (n.max(1)) * (self.cfg.horizon + 1) * self.problem.state_dim;
        if self.vis.len() < len {
            // The step encoded ahead binds the old buffer.
            self.next = None;
            self.vis = GpuBuffer::new(self.gpu, "mppi rollouts", len)?;
        }
        self.vis_rows = n;
        Ok(())
    }

    /// The kept rollouts of the last step and their weights (a read-back).
    pub fn rollouts(&self) -> Result<Rollouts> {
        let n = self.vis_rows;
        let mut rec = Recorder::new(self.gpu);
        let (hs, hw) = (rec.read(&self.vis), rec.read(&self.weights));
        let out = rec.finish()?;
        let per = (self.cfg.horizon + 1) * self.problem.state_dim;
        let mut states = out.get(&hs)?;
        states.truncate(n * per);
        let mut weights = out.get(&hw)?;
        weights.truncate(n);
        Ok(Rollouts { n, states, weights })
    }

    /// The costs `[K]` and weights `[K]` of the last step (a read-back, for tests).
    pub fn costs_and_weights(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut rec = Recorder::new(self.gpu);
        let (hc, hw) = (rec.read(&self.cost), rec.read(&self.weights));
        let out = rec.finish()?;
        Ok((out.get(&hc)?, out.get(&hw)?))
    }

    /// Number of steps so far (the next step's noise stream).
    pub fn calls(&self) -> u32 {
        self.call
    }

    fn key(&self, call: u32, shift: bool) -> StepKey {
        StepKey {
            call,
            shift,
            vis_rows: self.vis_rows,
            timestamps: self.timestamps,
        }
    }

    // Record and encode a step: shift (unless the sequence was just set), noise, rollouts,
    // weights, update, and the read-back of the result.
    fn record(&self, key: StepKey) -> Result<PreparedStep<'g>> {
        let c = self.problem.control_dim;
        let params = Params {
            key: crate::rng::SeedStream::new(self.cfg.seed, key.call),
            vis_rows: key.vis_rows as u32,
        };
        let mut rec = Recorder::new(self.gpu).with_cache(&self.binds);
        if key.timestamps {
            rec = rec.with_timestamps();
        }
        if key.shift {
            rec.dispatch(&self.pipes[3], &[&self.u.buffer], Some(&params), [1, 1, 1])?;
        }
        let max = self.gpu.limits().max_compute_workgroups_per_dimension as usize;
        let grid = |threads: usize| {
            let groups = threads.div_ceil(64);
            if groups <= max {
                [groups as u32, 1, 1]
            } else {
                [max as u32, groups.div_ceil(max) as u32, 1]
            }
        };
        let blocks = (self.cfg.horizon * self.cfg.samples * c).div_ceil(4);
        rec.dispatch(
            &self.pipes[4],
            &[&self.eps.buffer],
            Some(&params),
            grid(blocks),
        )?;
        rec.dispatch(
            &self.pipes[0],
            &[
                &self.x0.buffer,
                &self.u.buffer,
                &self.eps.buffer,
                &self.cost.buffer,
                &self.bounds.buffer,
                &self.params.buffer,
                &self.vis.buffer,
                &self.status.buffer,
            ],
            Some(&params),
            grid(self.cfg.samples),
        )?;
        rec.dispatch(
            &self.pipes[1],
            &[
                &self.cost.buffer,
                &self.weights.buffer,
                &self.out.buffer,
                &self.status.buffer,
            ],
            Some(&params),
            [1, 1, 1],
        )?;
        rec.dispatch(
            &self.pipes[2],
            &[
                &self.u.buffer,
                &self.eps.buffer,
                &self.weights.buffer,
                &self.out.buffer,
            ],
            Some(&params),
            [self.cfg.horizon as u32, 1, 1],
        )?;
        // The rollouts' counts come back with the control (out[c + 2], out[c + 3]).
        let handle = rec.read(&self.out);
        Ok(PreparedStep {
            key,
            encoded: rec.encode()?,
            handle,
        })
    }

    /// One optimization step from state `x0`: one submit, one read-back of the first control
    /// and the rollouts' status. A step in which some sample did not run its whole horizon,
    /// or no sample's cost is finite, is an error (see the module's "When a step fails") and
    /// leaves the control sequence unchanged.
    pub fn step(&mut self, x0: &[f32]) -> Result<MppiStep> {
        let (s, c) = (self.problem.state_dim, self.problem.control_dim);
        if x0.len() != s {
            return Err(Error::Shape(format!(
                "state of {} values for a {s}-dimensional problem",
                x0.len()
            )));
        }
        if let Some(i) = x0.iter().position(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "state component {i} is {}",
                x0[i]
            )));
        }
        self.x0.upload(self.gpu, x0)?;
        let key = self.key(self.call, !self.fresh);
        let step = match self.next.take() {
            Some(p) if p.key == key => p,
            _ => self.record(key)?,
        };
        let pending = step.encoded.submit()?;
        let h = step.handle;
        // While the GPU runs this step, record the next one as it will be if this one succeeds
        // (the x0 upload and any set_params come before its submit).
        self.next = self.record(self.key(self.call.wrapping_add(1), true)).ok();
        // The shift above ran even if this step fails: the next one must not shift again.
        self.fresh = true;
        let done = pending.wait()?;
        self.last_gpu_seconds = done.timing.gpu_seconds;
        let out = done.get(&h)?;
        self.call = self.call.wrapping_add(1);
        let k = self.cfg.samples;
        let (finished, finite) = (out[c + 2] as usize, out[c + 3] as usize);
        if finished != k {
            return Err(Error::Internal {
                context: format!("MPPI rollouts of problem {:?}", self.problem.name),
                message: format!(
                    "{} of {k} samples did not run their whole horizon of {}: the driver \
                     stopped a long or endless loop in the problem's WGSL (lavapipe ends long \
                     loops early), so their costs are not real. The control sequence is \
                     unchanged",
                    k - finished.min(k),
                    self.cfg.horizon
                ),
            });
        }
        if finite == 0 {
            return Err(Error::InvalidArgument(format!(
                "problem {:?}: every one of the {k} rollouts from state {x0:?} has a NaN or \
                 infinite cost (check the dynamics and costs for divisions by zero or \
                 overflow); the control sequence is unchanged",
                self.problem.name
            )));
        }
        self.fresh = false;
        Ok(MppiStep {
            control: out[..c].to_vec(),
            min_cost: out[c],
            eta: out[c + 1],
            finite_samples: finite,
        })
    }
}
