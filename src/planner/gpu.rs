//! The planner on the GPU: every step of [`super`]'s algorithm recorded into one submit.

use super::config::{self, PlanMode, PlannerConfig, PlannerMode, streams};
use crate::gpu::shader::Header;
use crate::gpu::{
    BindCache, Binding, Encoded, Gpu, GpuBuffer, KernelSpec, PendingReadback, ReadbackHandle,
    Recorder,
};
use crate::kernels::policy::{self, PolicyBuffers, PolicyConfig, PolicyOffsets};
use crate::kernels::rng_fill::{self, Distribution};
use crate::kernels::two_hot::{self, RowLayout, TwoHotConfig};
use crate::model::{NetInput, Workspace, WorldModel};
use crate::{Error, Result};

/// The result of one [`Planner::plan`] call, per environment.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Environments.
    pub batch: usize,
    /// Action dimension.
    pub action_dim: usize,
    /// Actions to execute `[B, A]`.
    pub action: Vec<f32>,
    /// The planner's distribution of the first step: mean `[B, A]` (the prior that PO-MPC
    /// and BMPC store).
    pub mean: Vec<f32>,
    /// ... and std `[B, A]`.
    pub std: Vec<f32>,
    /// Value of the chosen sample `[B]`.
    pub value: Vec<f32>,
    /// Index n of the chosen sample `[B]` (n < P: a policy trajectory).
    pub chosen: Vec<u32>,
}

impl Plan {
    /// The action of environment `b`.
    ///
    /// # Panics
    ///
    /// If `b` is not below [`Plan::batch`]; [`Plan::try_action`] returns an error instead.
    pub fn action(&self, b: usize) -> &[f32] {
        crate::error::or_panic(self.try_action(b))
    }

    /// The action of environment `b`, or [`Error::InvalidArgument`] if the plan has no
    /// environment `b`.
    pub fn try_action(&self, b: usize) -> Result<&[f32]> {
        let a = self.action_dim;
        b.checked_mul(a)
            .filter(|_| b < self.batch)
            .and_then(|start| self.action.get(start..start + a))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "action of environment {b}: the plan holds {} environments (0..{})",
                    self.batch, self.batch
                ))
            })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    b: u32,
    stream: u32,
    count: u32,
    width: u32,
    agents: u32,
    _pad: [u32; 3],
}

const U: (u32, Binding) = (13, Binding::Uniform);
const INIT: KernelSpec = KernelSpec {
    shader: "planner",
    entry: "init_mean",
    bindings: &[
        (0, Binding::ReadWrite),
        (1, Binding::Read),
        (2, Binding::ReadWrite),
        (3, Binding::ReadWrite),
        U,
    ],
};
const REPLICATE: KernelSpec = KernelSpec {
    shader: "planner",
    entry: "replicate",
    bindings: &[(4, Binding::Read), (5, Binding::ReadWrite), U],
};
/// The agents' seeds.
const SEEDS: (u32, Binding) = (15, Binding::Read);
const SAMPLE: KernelSpec = KernelSpec {
    shader: "planner",
    entry: "sample",
    bindings: &[
        (2, Binding::ReadWrite),
        (3, Binding::ReadWrite),
        (6, Binding::ReadWrite),
        U,
        SEEDS,
    ],
};
const REFIT: KernelSpec = KernelSpec {
    shader: "planner",
    entry: "refit",
    bindings: &[
        (2, Binding::ReadWrite),
        (3, Binding::ReadWrite),
        (6, Binding::ReadWrite),
        (7, Binding::Read),
        (8, Binding::Read),
        (9, Binding::ReadWrite),
        (10, Binding::ReadWrite),
        (11, Binding::ReadWrite),
        U,
        (14, Binding::Read),
        SEEDS,
    ],
};
const FINALIZE: KernelSpec = KernelSpec {
    shader: "planner",
    entry: "finalize",
    bindings: &[
        (0, Binding::ReadWrite),
        (2, Binding::ReadWrite),
        (3, Binding::ReadWrite),
        (6, Binding::ReadWrite),
        (9, Binding::ReadWrite),
        (10, Binding::ReadWrite),
        (11, Binding::ReadWrite),
        (12, Binding::ReadWrite),
        U,
        SEEDS,
    ],
};

/// Every kernel of `planner.wgsl`.
pub const KERNELS: [KernelSpec; 5] = [INIT, REPLICATE, SAMPLE, REFIT, FINALIZE];

/// The header constant STAGE_TA: T * A where `refit` keeps the kept samples' actions and the
/// refitted mean and std in workgroup memory, that is where its whole workgroup memory stays
/// within WebGPU's guaranteed 16 KB (TD-MPC2's 512 samples, 64 elites, horizon 3: 6 actions
/// fit, 38 do not); 0 elsewhere or with `POMPC_REFIT_STAGE=0` (for timing the difference).
fn refit_stage_ta(cfg: &PlannerConfig, action_dim: usize) -> u32 {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| !std::env::var("POMPC_REFIT_STAGE").is_ok_and(|v| v == "0"));
    let ta = cfg.horizon * action_dim;
    // sk, si; sw; red, red_i (256 each); sa; sm, ss.
    let words =
        2 * cfg.num_samples.next_power_of_two() + cfg.kept() + 512 + cfg.kept() * ta + 2 * ta;
    if on && words * 4 <= 16384 {
        ta as u32
    } else {
        0
    }
}

/// Whether each refit also draws the next iteration's samples (one launch per iteration, the
/// default), or a `sample` launch after it does (`POMPC_REFIT_SAMPLE=0`: one more launch per
/// iteration, the same plans; for timing the two parts apart).
fn refit_samples() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !std::env::var("POMPC_REFIT_SAMPLE").is_ok_and(|v| v == "0"))
}

/// Header and override constants of the planner's pipelines for a config and model sizes
/// (all entry points share them).
pub fn pipeline_constants(
    cfg: &PlannerConfig,
    action_dim: usize,
    episodic: bool,
) -> (Header, Vec<(&'static str, f64)>) {
    let header = Header(vec![
        ("SORT_N", cfg.num_samples.next_power_of_two() as u32),
        ("KEPT", cfg.kept() as u32),
        ("STAGE_TA", refit_stage_ta(cfg, action_dim)),
    ]);
    let (mode, lambda) = match cfg.mode {
        PlannerMode::EliteMppi => (0, 1.0),
        PlannerMode::Mppi { lambda } => (1, lambda),
        PlannerMode::Cem => (2, 1.0),
    };
    let ov = vec![
        ("N", cfg.num_samples as f64),
        ("P", cfg.num_pi_trajs as f64),
        ("T", cfg.horizon as f64),
        ("A", action_dim as f64),
        ("MODE", mode as f64),
        ("TEMPERATURE", cfg.temperature as f64),
        ("LAMBDA", lambda as f64),
        ("MIN_STD", cfg.min_std as f64),
        ("MAX_STD", cfg.max_std as f64),
        ("DISCOUNT", cfg.discount as f64),
        ("TRAIN", (cfg.plan_mode == PlanMode::Train) as u32 as f64),
        ("EPISODIC", episodic as u32 as f64),
    ];
    (header, ov)
}

struct State {
    b: usize,
    seeds: GpuBuffer<u32>,
    obs: GpuBuffer<f32>,
    first: GpuBuffer<u32>,
    z0: GpuBuffer<f32>,
    z: [GpuBuffer<f32>; 2],
    actions: GpuBuffer<f32>,
    h: GpuBuffer<f32>,
    stats: GpuBuffer<f32>,
    a_term: GpuBuffer<f32>,
    eps_pi: GpuBuffer<f32>,
    eps_term: GpuBuffer<f32>,
    r_logits: GpuBuffer<f32>,
    rewards: GpuBuffer<f32>,
    q_logits: GpuBuffer<f32>,
    q_values: GpuBuffer<f32>,
    values: GpuBuffer<f32>,
    term_logits: GpuBuffer<f32>,
    term: GpuBuffer<f32>,
    mean: GpuBuffer<f32>,
    std: GpuBuffer<f32>,
    prev_mean: GpuBuffer<f32>,
    kept: GpuBuffer<u32>,
    weights: GpuBuffer<f32>,
    result: GpuBuffer<f32>,
    heads: Vec<GpuBuffer<u32>>,
    ws: Workspace,
}

/// MPPI over a [`WorldModel`] with TD-MPC2's semantics (see the module documentation),
/// batched over environments: each [`Planner::plan`] call is one submit and one read-back.
///
/// The batch size B is the length of `first_step` and may change between calls: buffers
/// grow (or shrink) on demand. A change of B resets the warm-start memory, which then acts
/// as a cold start for every environment.
///
/// ```no_run
/// # fn main() -> pompc::Result<()> {
/// use pompc::model::{ModelSpec, Weights, WorldModel};
/// use pompc::planner::{Planner, PlannerConfig};
/// let gpu = pompc::Gpu::new(Default::default())?;
/// let spec = ModelSpec::tdmpc2(5, 24, 6)?;
/// let model = WorldModel::new(&gpu, &Weights::init(&spec, 0)?)?;
/// let mut planner = Planner::new(&gpu, &model, PlannerConfig::tdmpc2(6))?;
/// let plan = planner.plan(&[0.0; 2 * 24], &[true, true])?; // 2 environments
/// println!("{:?}", plan.action(0));
/// # Ok(()) }
/// ```
pub struct Planner<'m> {
    gpu: &'m Gpu,
    model: &'m WorldModel,
    cfg: PlannerConfig,
    call: u32,
    state: Option<State>,
    timestamps: bool,
    profile: bool,
    last: Option<PlanTiming>,
    last_profile: Vec<crate::gpu::DispatchTime>,
    // Every step records the same dispatches on the same buffers.
    binds: BindCache,
    // The next step, recorded and encoded while the GPU ran the last one (see
    // `Planner::with_prepared_steps`).
    prepare: bool,
    next: Option<Prepared<'m>>,
    // Each agent's seed (a population model; one otherwise).
    seeds: Vec<u64>,
}

/// How long the last [`Planner::plan`] call took.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlanTiming {
    /// Host wall clock of the whole call: upload, recording, submit, wait, read-back.
    pub wall_seconds: f64,
    /// GPU time of the recorded work (timestamp queries), when enabled and available.
    pub gpu_seconds: Option<f64>,
    /// Dispatches in the step.
    pub dispatches: usize,
    /// Host time spent recording the step (pipeline lookups, parameter blocks).
    pub record_seconds: f64,
    /// Host time spent encoding the recorded step into a command buffer (bind groups,
    /// passes), between recording and the submit.
    pub encode_seconds: f64,
    /// Whether the step was recorded and encoded ahead, while the GPU ran the call before
    /// ([`Planner::with_prepared_steps`]): then `record_seconds` and `encode_seconds` were
    /// spent before this call and are not part of `wall_seconds`.
    pub prepared: bool,
}

impl<'m> Planner<'m> {
    /// A planner for `model` on `gpu`.
    pub fn new(gpu: &'m Gpu, model: &'m WorldModel, cfg: PlannerConfig) -> Result<Self> {
        cfg.validate()?;
        if model.spec.num_q < 2 {
            return Err(Error::InvalidArgument(format!(
                "the planner averages 2 Q heads; the model has {}",
                model.spec.num_q
            )));
        }
        // Build every pipeline now, so that a bad config fails here, not mid-plan.
        let (header, ov) = pipeline_constants(&cfg, model.spec.action_dim, model.spec.episodic);
        for k in KERNELS {
            gpu.pipeline(&k, &header, &ov)?;
        }
        let seeds = (0..model.agents() as u64)
            .map(|i| cfg.seed.wrapping_add(i))
            .collect();
        Ok(Planner {
            gpu,
            model,
            cfg,
            call: 0,
            state: None,
            timestamps: false,
            profile: false,
            last: None,
            last_profile: Vec::new(),
            binds: BindCache::new(),
            prepare: true,
            next: None,
            seeds,
        })
    }

    /// Each agent's seed, for a population model ([`WorldModel::population`]): agent `i`
    /// draws everything from `seeds[i]` (its sampling noise, Q-head choices and exploration)
    /// exactly as a planner of its own with [`PlannerConfig::seed`] `seeds[i]` would, so a
    /// population plans for each agent what the agent would plan alone. By default agent `i`
    /// gets the config's seed plus `i`.
    pub fn with_seeds(mut self, seeds: &[u64]) -> Result<Self> {
        if seeds.len() != self.model.agents() {
            return Err(Error::InvalidArgument(format!(
                "{} seeds for a population of {} agents",
                seeds.len(),
                self.model.agents()
            )));
        }
        self.seeds = seeds.to_vec();
        self.state = None;
        self.next = None;
        Ok(self)
    }

    /// The agents' seeds (see [`Planner::with_seeds`]).
    pub fn seeds(&self) -> &[u64] {
        &self.seeds
    }

    /// Dispatches in a plan step for `batch` environments, counted by recording one without
    /// submitting it (the count does not depend on the observations).
    pub fn step_dispatches(&mut self, batch: usize) -> Result<usize> {
        if batch == 0 {
            return Err(Error::InvalidArgument("plan for zero environments".into()));
        }
        self.ensure_state(batch)?;
        self.next = None;
        Ok(self.record_step(self.call)?.cost.dispatches)
    }

    /// Measure GPU time with timestamp queries in every call (see [`Planner::last_timing`]).
    pub fn with_timestamps(mut self, on: bool) -> Self {
        self.timestamps = on;
        self.next = None;
        self
    }

    /// Time every dispatch of each call on its own (see [`Recorder::with_profile`]): slower,
    /// for finding where a plan step's time goes; [`Planner::last_profile`] has the times.
    pub fn with_profile(mut self, on: bool) -> Self {
        self.profile = on;
        self.next = None;
        self
    }

    /// Whether each call, while it waits for the GPU, records and encodes the next call's
    /// step for the same number of environments (default on). A step's dispatches do not
    /// depend on the observations, which are uploaded when the next call comes, so that
    /// call submits at once: the host's recording and encoding (a few hundred dispatches)
    /// leave the time from observation to action. A call for another batch size records its
    /// own step and drops the prepared one. Plans are the same either way.
    pub fn with_prepared_steps(mut self, on: bool) -> Self {
        self.prepare = on;
        self.next = None;
        self
    }

    /// Per-dispatch GPU times of the last call, when profiling (empty otherwise, or when the
    /// device has no timestamp queries).
    pub fn last_profile(&self) -> &[crate::gpu::DispatchTime] {
        &self.last_profile
    }

    /// Timing of the last call.
    pub fn last_timing(&self) -> Option<PlanTiming> {
        self.last
    }

    /// Floating-point operations of one plan step for `batch` environments: 2 per
    /// multiply-add of every linear layer as TD-MPC2 evaluates it (the bookkeeping kernels
    /// are not counted, and the first rollout step's layers count in full although they
    /// multiply each environment's latent once), so that rates compare across
    /// implementations.
    pub fn flops(&self, batch: usize) -> f64 {
        use crate::model::Net;
        let s = &self.model.spec;
        let c = &self.cfg;
        let macs = |net: Net| s.macs_per_row(net) as f64;
        let q_head = macs(Net::Q) / s.num_q as f64;
        let (n, p, t) = (
            c.num_samples as f64,
            c.num_pi_trajs as f64,
            c.horizon as f64,
        );
        let pi_traj = p * (t * macs(Net::Policy) + (t - 1.0) * macs(Net::Dynamics));
        let term = if s.episodic {
            macs(Net::Termination)
        } else {
            0.0
        };
        let iteration = n
            * (t * (macs(Net::Reward) + macs(Net::Dynamics) + term)
                + macs(Net::Policy)
                + 2.0 * q_head);
        2.0 * batch as f64 * (macs(Net::Encoder) + pi_traj + c.iterations as f64 * iteration)
    }

    /// The settings.
    pub fn config(&self) -> &PlannerConfig {
        &self.cfg
    }

    /// Number of `plan` calls so far (the next call's index in the random streams).
    pub fn calls(&self) -> u32 {
        self.call
    }

    /// Bytes of the largest buffer per environment (the workspace's two Q-head slots).
    fn biggest_binding_per_env(&self) -> u64 {
        let s = &self.model.spec;
        let c = &self.cfg;
        let n = c.num_samples as u64;
        let a = s.action_dim as u64;
        [
            2 * n * Workspace::width(s) as u64,
            c.horizon as u64 * n * a,
            n * s.num_bins as u64 * 2,
            n * s.latent_dim as u64,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
            * 4
    }

    /// The largest batch this device can plan for at once.
    pub fn max_batch(&self) -> usize {
        let biggest = self.biggest_binding_per_env();
        let max = self
            .gpu
            .limits()
            .max_storage_buffer_binding_size
            .min(self.gpu.limits().max_buffer_size);
        let by_binding = (max / biggest.max(1)) as usize;
        // Indices inside kernels are 32-bit.
        let by_index = (u32::MAX as u64 / (biggest / 4).max(1)) as usize;
        by_binding
            .min(by_index)
            .min(self.gpu.limits().max_compute_workgroups_per_dimension as usize)
    }

    fn ensure_state(&mut self, b: usize) -> Result<()> {
        if self.state.as_ref().is_some_and(|s| s.b == b) {
            return Ok(());
        }
        let max = self.max_batch();
        if b > max {
            return Err(Error::Limit(format!(
                "a batch of {b} environments needs buffers over this device's limits; the \
                 largest batch that fits is {max}"
            )));
        }
        let agents = self.model.agents();
        if !b.is_multiple_of(agents) {
            return Err(Error::InvalidArgument(format!(
                "a population of {agents} agents plans for the same number of environments \
                 each: {b} environments do not split evenly"
            )));
        }
        self.state = None;
        let g = self.gpu;
        let s = &self.model.spec;
        let c = &self.cfg;
        let words: Vec<u32> = self
            .seeds
            .iter()
            .flat_map(|&v| crate::rng::seed_words(v))
            .collect();
        let (n, t, a, l, k) = (
            c.num_samples,
            c.horizon,
            s.action_dim,
            s.latent_dim,
            s.num_bins,
        );
        let nb = n * b;
        let f = |label: &str, len: usize| GpuBuffer::<f32>::new(g, label, len);
        let state = State {
            b,
            seeds: GpuBuffer::from_slice(g, "planner seeds", &words)?,
            obs: f("planner obs", b * s.obs_dim)?,
            first: GpuBuffer::new(g, "planner first_step", b)?,
            z0: f("planner z0", b * l)?,
            z: [f("planner z 0", nb * l)?, f("planner z 1", nb * l)?],
            actions: f("planner actions", t * nb * a)?,
            h: f("planner policy head", nb * 2 * a)?,
            stats: f("planner policy stats", nb * (2 * a + 3))?,
            a_term: f("planner terminal actions", nb * a)?,
            eps_pi: f(
                "planner policy-trajectory noise",
                (c.num_pi_trajs * b * a).max(1),
            )?,
            eps_term: f("planner terminal noise", nb * a)?,
            r_logits: f("planner reward logits", nb * k)?,
            rewards: f("planner rewards", t * nb)?,
            q_logits: f("planner Q logits", 2 * nb * k)?,
            q_values: f("planner Q values", 2 * nb)?,
            values: f("planner values", nb)?,
            term_logits: f(
                "planner termination logits",
                if s.episodic { nb } else { 1 },
            )?,
            term: f("planner termination", if s.episodic { t * nb } else { 1 })?,
            mean: f("planner mean", b * t * a)?,
            std: f("planner std", b * t * a)?,
            prev_mean: f("planner previous mean", b * t * a)?,
            kept: GpuBuffer::new(g, "planner kept samples", b * c.kept())?,
            weights: f("planner weights", b * c.kept())?,
            result: f("planner result", b * (3 * a + 2))?,
            heads: (0..c.iterations)
                .map(|i| GpuBuffer::new(g, &format!("planner heads {i}"), 2 * agents))
                .collect::<Result<_>>()?,
            // Rows per agent, 2 Q heads each.
            ws: Workspace::with_slots(g, s, nb / agents, 2 * agents)?,
        };
        self.state = Some(state);
        Ok(())
    }

    /// Plan one action for each of B environments: `obs` is `[B, obs_dim]`, `first_step[b]`
    /// says that environment b starts an episode (no warm start).
    ///
    /// Non-finite observations are an error naming the environment and feature: TD-MPC2
    /// only maps NaN *values* to 0, which pompc does too, but a NaN observation would make
    /// every value NaN and the plan meaningless.
    pub fn plan(&mut self, obs: &[f32], first_step: &[bool]) -> Result<Plan> {
        self.plan_submit(obs, first_step)?.wait()
    }

    /// [`Planner::plan`] in two halves: record and submit the step now, read the plan with
    /// [`PendingPlan::wait`] later, so the host can prepare other GPU work (a training update)
    /// while the GPU plans.
    pub fn plan_submit<'p>(
        &'p mut self,
        obs: &[f32],
        first_step: &[bool],
    ) -> Result<PendingPlan<'p, 'm>> {
        let s = &self.model.spec;
        let b = first_step.len();
        if b == 0 {
            return Err(Error::InvalidArgument("plan for zero environments".into()));
        }
        if obs.len() != b * s.obs_dim {
            return Err(Error::Shape(format!(
                "observations: {} values for {b} environments of {} features (expected {})",
                obs.len(),
                s.obs_dim,
                b * s.obs_dim
            )));
        }
        if let Some(i) = obs.iter().position(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "observation of environment {} feature {} is {}",
                i / s.obs_dim,
                i % s.obs_dim,
                obs[i]
            )));
        }
        let t0 = std::time::Instant::now();
        self.ensure_state(b)?;
        let call = self.call;
        let step = match self.next.take() {
            Some(p) if p.batch == b && p.call == call => p,
            _ => self.record_step(call)?,
        };
        let submitted = self.submit_step(step, obs, first_step)?;
        self.call = self.call.wrapping_add(1);
        Ok(PendingPlan {
            planner: self,
            submitted,
            batch: b,
            t0,
        })
    }

    // Upload this call's inputs and submit its step.
    fn submit_step(
        &self,
        step: Prepared<'m>,
        obs: &[f32],
        first_step: &[bool],
    ) -> Result<Submitted<'m>> {
        let st = self.state.as_ref().expect("ensure_state ran");
        let (g, s) = (self.gpu, &self.model.spec);
        st.obs.upload(g, obs)?;
        let first: Vec<u32> = first_step.iter().map(|f| *f as u32).collect();
        st.first.upload(g, &first)?;
        for (i, hb) in st.heads.iter().enumerate() {
            // Agent j's heads are its own draw, among its own weight sets.
            let heads: Vec<u32> = (self.seeds.iter().enumerate())
                .flat_map(|(j, &seed)| {
                    let base = (j * s.num_q) as u32;
                    config::chosen_heads(seed, step.call, i, s.num_q).map(|h| base + h)
                })
                .collect();
            hb.upload(g, &heads)?;
        }
        Ok(Submitted {
            pending: step.encoded.submit()?,
            handle: step.handle,
            cost: step.cost,
        })
    }

    // Record and encode the step of call `call` for the current state's batch (its inputs
    // are uploaded by `submit_step`).
    fn record_step(&self, call: u32) -> Result<Prepared<'m>> {
        let t0 = std::time::Instant::now();
        let st = self.state.as_ref().expect("ensure_state ran");
        let (g, m, c, s) = (self.gpu, self.model, &self.cfg, &self.model.spec);
        let b = st.b;
        // A population: `agents` agents of `ba` environments each (rows per agent: `n * ba`).
        let agents = m.agents();
        let ba = b / agents;
        let (n, p, t, a, l) = (
            c.num_samples,
            c.num_pi_trajs,
            c.horizon,
            s.action_dim,
            s.latent_dim,
        );
        let nb = n * b;
        let nba = n * ba;
        let (header, ov) = pipeline_constants(c, a, s.episodic);
        let pipe = |k: &KernelSpec| g.pipeline(k, &header, &ov);
        let params = |stream: u32, count: usize, width: usize| Params {
            b: ba as u32,
            stream,
            count: count as u32,
            width: width as u32,
            agents: agents as u32,
            _pad: [0; 3],
        };
        let groups = |threads: usize| grid(g, threads.div_ceil(64));
        let thc = TwoHotConfig::new(s.num_bins, s.vmin, s.vmax)?;
        let pc = PolicyConfig::new(a).with_log_std_range(s.log_std_min, s.log_std_max);
        let ws = &st.ws;
        let mut rec = Recorder::new(g).with_cache(&self.binds);
        if self.timestamps {
            rec = rec.with_timestamps();
        }
        if self.profile {
            rec = rec.with_profile();
        }

        m.encoder
            .record(&mut rec, ba, NetInput::new(&st.obs, None), None, ws, &st.z0)?;
        rec.dispatch(
            &pipe(&INIT)?,
            &[
                &st.prev_mean.buffer,
                &st.first.buffer,
                &st.mean.buffer,
                &st.std.buffer,
            ],
            Some(&params(0, 0, 0)),
            groups(b * t * a),
        )?;
        let replicate = |rec: &mut Recorder, rows: usize, dst: &GpuBuffer<f32>| {
            rec.dispatch(
                &pipe(&REPLICATE)?,
                &[&st.z0.buffer, &dst.buffer],
                Some(&params(0, rows, l)),
                groups(rows * b * l / 4),
            )
        };
        // Sampled policy actions for `rows` rows of each agent's `input` into `action` from
        // element `at` (each agent's rows `stride` apart, or back to back): the network, its
        // noise (Philox stream `stream`, each agent's own) and the squashed-Gaussian head.
        let sample_policy = |rec: &mut Recorder,
                             rows: usize,
                             input: NetInput,
                             eps: &GpuBuffer<f32>,
                             stream: u32,
                             action: &GpuBuffer<f32>,
                             (at, stride): (usize, Option<usize>)|
         -> Result<()> {
            m.policy.record(rec, rows, input, None, ws, &st.h)?;
            rng_fill::record_fill_agents(
                rec,
                eps,
                Distribution::Normal,
                &st.seeds,
                rows * a,
                stream,
            )?;
            let io = PolicyBuffers {
                h: &st.h,
                eps,
                action,
                stats: &st.stats,
            };
            let at = PolicyOffsets {
                action: at,
                action_blocks: stride.map(|s| (rows, s)),
                ..Default::default()
            };
            policy::record_sample_at(rec, &pc, rows * agents, io, at)
        };
        // Policy trajectories, drawn once per call into rows n < P of every time step.
        if p > 0 {
            replicate(&mut rec, p, &st.z[0])?;
            for step in 0..t {
                let cur = &st.z[step % 2];
                // Each agent's P * ba rows lead its N * ba sample rows of the time step.
                sample_policy(
                    &mut rec,
                    p * ba,
                    NetInput::new(cur, None),
                    &st.eps_pi,
                    streams::pi_traj(call, step),
                    &st.actions,
                    (step * nb * a, Some(nba * a)),
                )?;
                if step + 1 < t {
                    let input = NetInput::new(cur, Some(&st.actions))
                        .at(0, step * nb * a)
                        .strided(p * ba * l, nba * a);
                    m.dynamics
                        .record(&mut rec, p * ba, input, None, ws, &st.z[(step + 1) % 2])?;
                }
            }
        }
        // Every environment's sampled action sequences from its mean and std (stream `stream`).
        let sample = |rec: &mut Recorder, stream: u32| {
            rec.dispatch(
                &pipe(&SAMPLE)?,
                &[
                    &st.mean.buffer,
                    &st.std.buffer,
                    &st.actions.buffer,
                    &st.seeds.buffer,
                ],
                Some(&params(stream, 0, 0)),
                groups(t * (n - p) * b * a),
            )
        };
        // The first iteration's samples; each refit draws the next iteration's.
        sample(&mut rec, streams::sampling(call, 0))?;
        for i in 0..c.iterations {
            // Step 0 starts every sample of an environment from its latent: with enough
            // environments the first layers multiply the B latents once; with few, the extra
            // dispatches cost more than the products, and the samples' rows get copies of the
            // latents. (H100, B = 1, f32: this and 8-row epilogue workgroups together took the
            // step from 4.8 to 6.2 ms GPU; they were not measured apart.)
            let repeat = agents == 1 && b >= REPEAT_MIN_ENVS;
            if !repeat {
                replicate(&mut rec, n, &st.z[0])?;
            }
            for step in 0..t {
                let (cur, next) = (&st.z[step % 2], &st.z[(step + 1) % 2]);
                let input = if step == 0 && repeat {
                    NetInput::new(&st.z0, Some(&st.actions)).repeating(b)
                } else {
                    NetInput::new(cur, Some(&st.actions)).at(0, step * nb * a)
                };
                // Reward logits and the next latents; one launch per layer for the two
                // networks where the model pairs them.
                m.record_reward_and_dynamics(&mut rec, nba, input, ws, &st.r_logits, next)?;
                two_hot::record_decode_strided(
                    &mut rec,
                    &thc,
                    nb,
                    &st.r_logits,
                    RowLayout::contiguous(s.num_bins),
                    &st.rewards,
                    RowLayout::at(step * nb, 1),
                )?;
                if let Some(term_net) = &m.termination {
                    let zin = NetInput::new(next, None);
                    term_net.record(&mut rec, nba, zin, None, ws, &st.term_logits)?;
                    rec.copy_range(&st.term_logits, 0, &st.term, step * nb, nb)?;
                }
            }
            let z_t = &st.z[t % 2];
            sample_policy(
                &mut rec,
                nba,
                NetInput::new(z_t, None),
                &st.eps_term,
                streams::terminal(call, i),
                &st.a_term,
                (0, None),
            )?;
            let q_in = NetInput::new(z_t, Some(&st.a_term));
            m.q.record(&mut rec, nba, q_in, Some(&st.heads[i]), ws, &st.q_logits)?;
            two_hot::record_decode(&mut rec, &thc, 2 * nb, &st.q_logits, &st.q_values)?;
            // Values, sort, refit and (but after the last iteration) the next samples.
            let next = i + 1 < c.iterations;
            let stream = if next {
                streams::sampling(call, i + 1)
            } else {
                0
            };
            let fold = next && refit_samples();
            rec.dispatch(
                &pipe(&REFIT)?,
                &[
                    &st.mean.buffer,
                    &st.std.buffer,
                    &st.actions.buffer,
                    &st.rewards.buffer,
                    &st.q_values.buffer,
                    &st.values.buffer,
                    &st.kept.buffer,
                    &st.weights.buffer,
                    &st.term.buffer,
                    &st.seeds.buffer,
                ],
                Some(&params(stream, fold as usize, 0)),
                [ba as u32, agents as u32, 1],
            )?;
            if next && !fold {
                sample(&mut rec, stream)?;
            }
        }
        rec.dispatch(
            &pipe(&FINALIZE)?,
            &[
                &st.prev_mean.buffer,
                &st.mean.buffer,
                &st.std.buffer,
                &st.actions.buffer,
                &st.values.buffer,
                &st.kept.buffer,
                &st.weights.buffer,
                &st.result.buffer,
                &st.seeds.buffer,
            ],
            Some(&params(streams::gumbel(call), 0, 0)),
            [ba as u32, agents as u32, 1],
        )?;
        let handle = rec.read(&st.result);
        let dispatches = rec.dispatches();
        let record_seconds = t0.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();
        let encoded = rec.encode()?;
        let encode_seconds = t1.elapsed().as_secs_f64();
        Ok(Prepared {
            batch: b,
            call,
            encoded,
            handle,
            cost: StepCost {
                dispatches,
                record_seconds,
                encode_seconds,
                ahead: false,
            },
        })
    }

    /// The last call's kept samples `[B, kept]` (sample indices, in kept order) and their
    /// weights, read back for tests and debugging (an extra submit).
    pub fn last_kept(&self) -> Result<(Vec<u32>, Vec<f32>)> {
        let st = self
            .state
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("no plan call yet".into()))?;
        let mut rec = Recorder::new(self.gpu);
        let (hk, hw) = (rec.read(&st.kept), rec.read(&st.weights));
        let out = rec.finish()?;
        Ok((out.get(&hk)?, out.get(&hw)?))
    }

    /// The last call's final sampling distribution over the whole horizon: mean and std,
    /// each `[B, T, A]` (the plan's `mean` and `std` are their first step). One extra submit
    /// and read-back: for callers that want the whole planned sequence (the Python
    /// bindings' `Plan.mean`), not for the control loop.
    pub fn last_distribution(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let st = self
            .state
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("no plan call yet".into()))?;
        let mut rec = Recorder::new(self.gpu);
        let (hm, hs) = (rec.read(&st.mean), rec.read(&st.std));
        let out = rec.finish()?;
        Ok((out.get(&hm)?, out.get(&hs)?))
    }

    /// The warm-start mean for the next call `[B, T, A]` (tests and debugging).
    pub fn warm_start(&self) -> Result<Vec<f32>> {
        let st = self
            .state
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("no plan call yet".into()))?;
        st.prev_mean.download(self.gpu)
    }
}

/// A plan step submitted by [`Planner::plan_submit`], not yet read back.
pub struct PendingPlan<'p, 'm> {
    planner: &'p mut Planner<'m>,
    submitted: Submitted<'m>,
    batch: usize,
    t0: std::time::Instant,
}

// What the host spent on a plan step, for `PlanTiming`.
#[derive(Clone, Copy)]
struct StepCost {
    dispatches: usize,
    record_seconds: f64,
    encode_seconds: f64,
    // Recorded during an earlier call's wait.
    ahead: bool,
}

// A plan step recorded and encoded, not yet submitted: call `call` for `batch` environments.
struct Prepared<'m> {
    batch: usize,
    call: u32,
    encoded: Encoded<'m>,
    handle: ReadbackHandle<f32>,
    cost: StepCost,
}

// A plan step's submission.
struct Submitted<'m> {
    pending: PendingReadback<'m>,
    handle: ReadbackHandle<f32>,
    cost: StepCost,
}

impl PendingPlan<'_, '_> {
    /// Wait for the GPU (and everything submitted before this call) and read the plan.
    pub fn wait(self) -> Result<Plan> {
        let sub = self.submitted;
        let planner = self.planner;
        // The host would only block here: record and encode the next call's step while the
        // GPU runs this one. (A failure is not this call's: the next call records afresh and
        // reports it.)
        if planner.prepare && !planner.profile {
            planner.next = planner.record_step(planner.call).ok().map(|mut p| {
                p.cost.ahead = true;
                p
            });
        }
        let mut done = sub.pending.wait()?;
        planner.last_profile = std::mem::take(&mut done.profile);
        let res = done.get(&sub.handle)?;
        let (b, a) = (self.batch, planner.model.spec.action_dim);
        let w = 3 * a + 2;
        let mut plan = Plan {
            batch: b,
            action_dim: a,
            action: Vec::with_capacity(b * a),
            mean: Vec::with_capacity(b * a),
            std: Vec::with_capacity(b * a),
            value: Vec::with_capacity(b),
            chosen: Vec::with_capacity(b),
        };
        for row in res.chunks(w) {
            plan.action.extend_from_slice(&row[..a]);
            plan.mean.extend_from_slice(&row[a..2 * a]);
            plan.std.extend_from_slice(&row[2 * a..3 * a]);
            plan.value.push(row[3 * a]);
            plan.chosen.push(row[3 * a + 1] as u32);
        }
        planner.last = Some(PlanTiming {
            wall_seconds: self.t0.elapsed().as_secs_f64(),
            gpu_seconds: done.timing.gpu_seconds,
            dispatches: sub.cost.dispatches,
            record_seconds: sub.cost.record_seconds,
            encode_seconds: sub.cost.encode_seconds,
            prepared: sub.cost.ahead,
        });
        Ok(plan)
    }
}

/// Environments from which a plan step's first rollout layers multiply each latent once
/// ([`NetInput::repeating`]) instead of once per sample.
const REPEAT_MIN_ENVS: usize = 64;

fn grid(gpu: &Gpu, groups: usize) -> [u32; 3] {
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    if groups <= max {
        [groups.max(1) as u32, 1, 1]
    } else {
        [max as u32, groups.div_ceil(max) as u32, 1]
    }
}
