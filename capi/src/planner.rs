//! World models and TD-MPC2's planner.

use crate::{
    CError, CResult, Out, PompcGpu, PompcStatus, destroy, guard, handle, idle, input, lock,
    out_handle, req_str, write,
};
use pompc::model::{ModelSpec, Weights, WorldModel};
use pompc::planner::{Plan, PlanMode, Planner, PlannerConfig, PlannerMode};
use pompc::{Error, Gpu, Precision};
use std::ffi::c_char;
use std::sync::{Arc, Mutex};

/// A TD-MPC2 world model on a device. Share it between threads freely (planners only read
/// it); it lives until it and every planner made from it are destroyed.
pub struct PompcModel {
    pub(crate) model: Arc<WorldModel>,
    pub(crate) gpu: Arc<Gpu>,
}

/// A model's sizes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PompcModelInfo {
    /// Observation features.
    pub obs_dim: usize,
    /// Action dimensions.
    pub action_dim: usize,
    /// Latent state width.
    pub latent_dim: usize,
    /// Hidden width of the networks after the encoder.
    pub mlp_dim: usize,
    /// Q heads in the ensemble.
    pub num_q: usize,
    /// Parameters in all networks.
    pub param_count: usize,
    /// Nonzero when the model has a termination head.
    pub episodic: u32,
    /// `POMPC_PRECISION_F32`, `_F16` or `_COOP`: the precision its layers run at.
    pub precision: u32,
}

/// A model on `gpu` from the weights `weights` makes, handed out through `out` (NULL on
/// failure): what the model constructors share.
///
/// # Safety
///
/// `gpu` is NULL or a live handle; `out` is valid for a write.
unsafe fn model_out(
    gpu: *const PompcGpu,
    out: *mut *mut PompcModel,
    weights: impl FnOnce() -> CResult<Weights>,
) -> PompcStatus {
    guard(|| {
        // SAFETY: the caller's promises, for each pointer.
        unsafe { out_handle(out, "out") }?;
        let g = unsafe { handle(gpu, "gpu") }?;
        let model = WorldModel::new(&g.gpu, &weights()?)?;
        let h = Box::into_raw(Box::new(PompcModel {
            model: Arc::new(model),
            gpu: g.gpu.clone(),
        }));
        // SAFETY: checked by out_handle.
        unsafe { out.write(h) };
        Ok(())
    })
}

/// Weights from a file, read whole: a regular file only (a device such as `/dev/zero` would
/// be read until memory runs out, and opening a pipe would wait for a writer), no more than
/// its size when it was checked, into memory reserved without aborting.
fn read_weights(path: &str) -> CResult<Weights> {
    use std::io::Read;
    let io = |source| Error::Io {
        path: path.to_string(),
        source,
    };
    // stat, not open: it neither blocks on a pipe nor reads anything.
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a weights file is read whole: directories, devices and \
             pipes are refused)",
        ))
        .into());
    }
    let len = usize::try_from(meta.len()).map_err(|_| {
        CError::new(
            PompcStatus::Limit,
            format!("{path}: {} bytes do not fit this process", meta.len()),
        )
    })?;
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(len).map_err(|_| {
        CError::new(
            PompcStatus::OutOfMemory,
            format!("{path}: no host memory for its {len} bytes"),
        )
    })?;
    std::fs::File::open(path)
        .and_then(|f| f.take(len as u64).read_to_end(&mut bytes))
        .map_err(io)?;
    Weights::from_bytes(&bytes).map_err(|e| {
        match e {
            Error::Weights(m) => Error::Weights(format!("{path}: {m}")),
            e => e,
        }
        .into()
    })
}

/// Load a weights file (safetensors in pompc's layout, e.g. from `scripts/export_tdmpc2.py`)
/// onto a device, at the device's precision. A missing or unreadable file, or a path that is
/// not a regular file (a directory, device or pipe), is `POMPC_STATUS_IO`, one that does not
/// describe a model `POMPC_STATUS_WEIGHTS`. On failure `*out` is NULL.
///
/// # Safety
///
/// `gpu` is NULL or a live handle; `path` is NULL or a NUL-terminated UTF-8 path (at most
/// `POMPC_MAX_PATH_BYTES`); `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_model_load(
    gpu: *const PompcGpu,
    path: *const c_char,
    out: *mut *mut PompcModel,
) -> PompcStatus {
    // SAFETY: the caller's promises, for each pointer.
    unsafe {
        model_out(gpu, out, || {
            let path = req_str(path, crate::POMPC_MAX_PATH_BYTES, "path")?;
            read_weights(path)
        })
    }
}

/// A model with TD-MPC2's initialization (no file): `size` is a TD-MPC2 preset in millions
/// of parameters (1, 5, 19, 48 or 317), `seed` the initialization's. Its reward and Q heads
/// start at zero, as TD-MPC2's do, so its plans follow the policy prior: for trying the
/// interface before a trained model exists. On failure `*out` is NULL.
///
/// # Safety
///
/// `gpu` is NULL or a live handle; `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_model_init_tdmpc2(
    gpu: *const PompcGpu,
    size: u32,
    obs_dim: usize,
    action_dim: usize,
    seed: u64,
    out: *mut *mut PompcModel,
) -> PompcStatus {
    // SAFETY: the caller's promises.
    unsafe {
        model_out(gpu, out, || {
            Ok(Weights::init(
                &ModelSpec::tdmpc2(size, obs_dim, action_dim)?,
                seed,
            )?)
        })
    }
}

/// A model's sizes.
///
/// # Safety
///
/// `model` is NULL or a live handle; `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_model_get_info(
    model: *const PompcModel,
    out: *mut PompcModelInfo,
) -> PompcStatus {
    guard(|| {
        // SAFETY: the caller's promise.
        let m = unsafe { handle(model, "model") }?;
        let s = &m.model.spec;
        let info = PompcModelInfo {
            obs_dim: s.obs_dim,
            action_dim: s.action_dim,
            latent_dim: s.latent_dim,
            mlp_dim: s.mlp_dim,
            num_q: s.num_q,
            param_count: s.param_count(),
            episodic: s.episodic as u32,
            precision: match m.model.precision() {
                Precision::F32 => crate::POMPC_PRECISION_F32,
                Precision::F16 => crate::POMPC_PRECISION_F16,
                Precision::TensorCore => crate::POMPC_PRECISION_COOP,
            },
        };
        // SAFETY: the caller's promise.
        unsafe { write(out, info, "out") }
    })
}

/// Release a model handle (NULL: nothing). Planners made from it keep it until they are
/// destroyed too.
///
/// # Safety
///
/// `model` is NULL or a live handle, destroyed once, not in use by another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_model_destroy(model: *mut PompcModel) -> PompcStatus {
    // SAFETY: the caller's promise.
    unsafe { destroy(model, |_| Ok(())) }
}

/// TD-MPC2's refit: the top `num_elites` by value, weights `exp(temperature (v - v_max))`.
pub const POMPC_PLANNER_ELITE_MPPI: u32 = 0;
/// Plain MPPI: every sample, weights `exp((v - v_max) / lambda)`.
pub const POMPC_PLANNER_MPPI: u32 = 1;
/// Cross-entropy method: the top `num_elites`, equal weights.
pub const POMPC_PLANNER_CEM: u32 = 2;

/// Planner settings; `pompc_planner_config_default()` gives TD-MPC2's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PompcPlannerConfig {
    /// Planning horizon.
    pub horizon: usize,
    /// Sampled action sequences per environment (policy trajectories included).
    pub num_samples: usize,
    /// Elites kept for the refit (elite MPPI and CEM).
    pub num_elites: usize,
    /// Policy trajectories among the samples (0: none).
    pub num_pi_trajs: usize,
    /// Optimization iterations.
    pub iterations: usize,
    /// Lower std clamp.
    pub min_std: f32,
    /// Upper std clamp and initial std.
    pub max_std: f32,
    /// Inverse temperature of elite MPPI's weights.
    pub temperature: f32,
    /// Reward discount.
    pub discount: f32,
    /// `POMPC_PLANNER_ELITE_MPPI`, `_MPPI` or `_CEM`.
    pub mode: u32,
    /// Temperature of `POMPC_PLANNER_MPPI`, in [1e-6, 1e6]; the other modes ignore it, but
    /// it must be in range in every mode (the default's 1 is).
    pub lambda: f32,
    /// Nonzero: no exploration noise on the chosen action (evaluation); 0: TD-MPC2's
    /// training noise.
    pub eval: u32,
    /// Seed of every random draw.
    pub seed: u64,
}

/// `$ty { .. }` with the fields the C and the Rust planner configs share (same names, same
/// meaning) copied from `$c`, then the `$rest` of the fields: the two conversions below.
macro_rules! shared_config_fields {
    ($ty:ident, $c:expr, { $($rest:tt)* }) => {
        $ty {
            horizon: $c.horizon,
            num_samples: $c.num_samples,
            num_elites: $c.num_elites,
            num_pi_trajs: $c.num_pi_trajs,
            iterations: $c.iterations,
            min_std: $c.min_std,
            max_std: $c.max_std,
            temperature: $c.temperature,
            discount: $c.discount,
            seed: $c.seed,
            $($rest)*
        }
    };
}

fn planner_config(c: &PompcPlannerConfig) -> CResult<PlannerConfig> {
    let mode = match c.mode {
        POMPC_PLANNER_ELITE_MPPI => PlannerMode::EliteMppi,
        POMPC_PLANNER_MPPI => PlannerMode::Mppi { lambda: c.lambda },
        POMPC_PLANNER_CEM => PlannerMode::Cem,
        m => {
            return Err(CError::new(
                PompcStatus::InvalidArgument,
                format!("config.mode = {m}: use POMPC_PLANNER_ELITE_MPPI, _MPPI or _CEM (0 to 2)"),
            ));
        }
    };
    let plan_mode = if c.eval != 0 {
        PlanMode::Eval
    } else {
        PlanMode::Train
    };
    let cfg = shared_config_fields!(PlannerConfig, c, { mode, plan_mode });
    cfg.validate()?;
    // Checked in every mode, like every other field: a NaN or a zero here is a config
    // filled in wrong, whatever mode it then asks for.
    let (lo, hi) = pompc::planner::config::LAMBDA_RANGE;
    if !(lo..=hi).contains(&c.lambda) {
        return Err(CError::new(
            PompcStatus::InvalidArgument,
            format!(
                "config.lambda = {}: outside [{lo:e}, {hi:e}] (used by POMPC_PLANNER_MPPI only, \
                 but checked in every mode; the default is 1)",
                c.lambda
            ),
        ));
    }
    Ok(cfg)
}

fn planner_config_default(action_dim: usize) -> PompcPlannerConfig {
    let c = PlannerConfig::tdmpc2(action_dim);
    let (mode, lambda) = match c.mode {
        PlannerMode::EliteMppi => (POMPC_PLANNER_ELITE_MPPI, 1.0),
        PlannerMode::Mppi { lambda } => (POMPC_PLANNER_MPPI, lambda),
        PlannerMode::Cem => (POMPC_PLANNER_CEM, 1.0),
    };
    let eval = (c.plan_mode == PlanMode::Eval) as u32;
    shared_config_fields!(PompcPlannerConfig, c, { mode, lambda, eval })
}

/// Fill `*out` with TD-MPC2's planner for `action_dim` actions: horizon 3, 512 samples, 64
/// elites, 24 policy trajectories, 6 iterations (8 from 20 actions), std in [0.05, 2],
/// temperature 0.5, discount 0.99, elite MPPI, training noise, seed 1.
///
/// # Safety
///
/// `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_planner_config_default(
    action_dim: usize,
    out: *mut PompcPlannerConfig,
) -> PompcStatus {
    // SAFETY: the caller's promise.
    guard(|| unsafe { write(out, planner_config_default(action_dim), "out") })
}

/// TD-MPC2's planner over a model, for any number of environments. Calls on one planner
/// must not overlap (`POMPC_STATUS_BUSY` otherwise); give each thread its own.
pub struct PompcPlanner {
    pub(crate) inner: Mutex<PlannerState>,
}

pub(crate) struct PlannerState {
    // Declared first, so dropped first: it borrows the model and the device held below.
    planner: Planner<'static>,
    last: Option<Plan>,
    spec: ModelSpec,
    _model: Arc<WorldModel>,
    _gpu: Arc<Gpu>,
}

/// A planner over `model` (`config` NULL: `pompc_planner_config_default()` for the model's
/// action dimension). Its kernels are built here, so a bad config fails now, not in the
/// first plan. On failure `*out` is NULL.
///
/// # Safety
///
/// `model` is NULL or a live handle; `config` is NULL or valid for a read; `out` is valid
/// for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_planner_create(
    model: *const PompcModel,
    config: *const PompcPlannerConfig,
    out: *mut *mut PompcPlanner,
) -> PompcStatus {
    guard(|| {
        // SAFETY: the caller's promises.
        unsafe { out_handle(out, "out") }?;
        let m = unsafe { handle(model, "model") }?;
        let spec = m.model.spec.clone();
        // SAFETY: as above.
        let c = unsafe { config.as_ref() }
            .copied()
            .unwrap_or_else(|| planner_config_default(spec.action_dim));
        let cfg = planner_config(&c)?;
        let (gpu, model) = (m.gpu.clone(), m.model.clone());
        // SAFETY: both references point into Arc allocations, which never move and stay
        // alive while the clones in PlannerState do; PlannerState drops the planner (its
        // first field) before them and never hands these references out.
        let (g, w): (&'static Gpu, &'static WorldModel) =
            unsafe { (&*Arc::as_ptr(&gpu), &*Arc::as_ptr(&model)) };
        let planner = Planner::new(g, w, cfg)?;
        let h = Box::into_raw(Box::new(PompcPlanner {
            inner: Mutex::new(PlannerState {
                planner,
                last: None,
                spec,
                _model: model,
                _gpu: gpu,
            }),
        }));
        // SAFETY: checked by out_handle.
        unsafe { out.write(h) };
        Ok(())
    })
}

/// One plan step for `batch` environments: observations `obs` `[batch, obs_dim]`
/// (row-major, finite), `first_step` `[batch]` (nonzero where an episode starts: no warm
/// start), actions written to `action` `[batch, action_dim]`. One submit and one read-back;
/// the planned mean, std and value stay for `pompc_planner_last_plan()`. A change of
/// `batch` resets the warm start.
///
/// # Safety
///
/// `planner` is NULL or a live handle; each array is NULL or valid for its length.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_planner_plan(
    planner: *mut PompcPlanner,
    obs: *const f32,
    obs_len: usize,
    first_step: *const u8,
    batch: usize,
    action: *mut f32,
    action_len: usize,
) -> PompcStatus {
    guard(|| {
        // SAFETY: the caller's promise.
        let p = unsafe { handle(planner, "planner") }?;
        let mut st = lock(&p.inner, "planner")?;
        if batch == 0 {
            return Err(CError::new(
                PompcStatus::InvalidArgument,
                "batch is 0: plan for at least one environment",
            ));
        }
        // Checked before anything is allocated for the batch.
        let max = st.planner.max_batch();
        if batch > max {
            return Err(CError::new(
                PompcStatus::Limit,
                format!(
                    "batch {batch} is too large: at most {max} environments fit this planner's \
                     buffers on this device"
                ),
            ));
        }
        let (n_obs, n_act) = (batch * st.spec.obs_dim, batch * st.spec.action_dim);
        // SAFETY: the caller's promises, lengths checked by input and Out::new.
        let obs = unsafe { input(obs, obs_len, n_obs, "obs (batch x obs_dim)") }?;
        let first = unsafe { input(first_step, batch, batch, "first_step") }?;
        // Checked before the plan, which a failure after it would lose.
        let out = unsafe { Out::new(action, action_len, n_act, "action (batch x action_dim)") }?;
        let first: Vec<bool> = first.iter().map(|f| *f != 0).collect();
        let plan = st.planner.plan(obs, &first)?;
        out.write(&plan.action)?;
        st.last = Some(plan);
        Ok(())
    })
}

/// The last plan's distribution of the first step: `mean` and `std` `[batch, action_dim]`
/// and the chosen sample's `value` `[batch]`. Each output is skipped when its length is 0
/// (its pointer may then be NULL); otherwise the length must match the last plan. No GPU
/// work.
///
/// # Safety
///
/// `planner` is NULL or a live handle; each array is NULL or valid for its length.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_planner_last_plan(
    planner: *const PompcPlanner,
    mean: *mut f32,
    mean_len: usize,
    std: *mut f32,
    std_len: usize,
    value: *mut f32,
    value_len: usize,
) -> PompcStatus {
    guard(|| {
        // SAFETY: the caller's promise.
        let p = unsafe { handle(planner, "planner") }?;
        let st = lock(&p.inner, "planner")?;
        let Some(plan) = &st.last else {
            return Err(CError::new(
                PompcStatus::InvalidArgument,
                "no plan yet: call pompc_planner_plan first",
            ));
        };
        let (b, a) = (plan.value.len(), st.spec.action_dim);
        // SAFETY: the caller's promises.
        let outs = unsafe {
            [
                (
                    Out::optional(mean, mean_len, b * a, "mean (batch x action_dim)")?,
                    &plan.mean,
                ),
                (
                    Out::optional(std, std_len, b * a, "std (batch x action_dim)")?,
                    &plan.std,
                ),
                (
                    Out::optional(value, value_len, b, "value (batch)")?,
                    &plan.value,
                ),
            ]
        };
        for (out, data) in outs {
            if let Some(o) = out {
                o.write(data)?;
            }
        }
        Ok(())
    })
}

/// Release a planner (NULL: nothing). One found in use by a call in another thread is left
/// alone (`POMPC_STATUS_BUSY`), a best-effort check: destroying a handle that another thread
/// may be using is still undefined behaviour. One whose call panicked (every later call
/// `POMPC_STATUS_PANIC`) is released.
///
/// # Safety
///
/// `planner` is NULL or a live handle, destroyed once (a second destroy, or a use after it, is
/// undefined behaviour and cannot be detected).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_planner_destroy(planner: *mut PompcPlanner) -> PompcStatus {
    // SAFETY: the caller's promise.
    unsafe { destroy(planner, |p| idle(&p.inner, "planner")) }
}
