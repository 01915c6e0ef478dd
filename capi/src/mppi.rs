//! Classic MPPI over dynamics and costs written in WGSL.

use crate::{
    CError, CResult, Out, POMPC_MAX_NAME_BYTES, POMPC_MAX_WGSL_BYTES, PompcGpu, PompcStatus,
    destroy, guard, handle, idle, input, lock, opt_str, out_handle, req_str, write,
};
use pompc::Gpu;
use pompc::planner::custom::{Mppi, MppiConfig, Problem};
use std::ffi::c_char;
use std::sync::{Arc, Mutex};

/// A control problem: its sizes and the WGSL that defines `dynamics`, `running_cost` and
/// `terminal_cost` (the contract is in pompc's `planner::custom` documentation and the
/// README's "MPPI over your own dynamics").
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PompcMppiProblem {
    /// Name for error messages (NUL-terminated, at most `POMPC_MAX_NAME_BYTES`; NULL:
    /// `"problem"`).
    pub name: *const c_char,
    /// The WGSL source, NUL-terminated UTF-8, at most `POMPC_MAX_WGSL_BYTES`.
    pub wgsl: *const c_char,
    /// State dimension.
    pub state_dim: usize,
    /// Control dimension.
    pub control_dim: usize,
    /// Length of the parameter buffer read by `param(i)` (0: none).
    pub param_len: usize,
}

/// MPPI settings; `pompc_mppi_config_default()` fills in the defaults.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PompcMppiConfig {
    /// Horizon in steps (1 to 1000).
    pub horizon: usize,
    /// Samples (1 to 65536).
    pub samples: usize,
    /// Temperature lambda.
    pub lambda: f32,
    /// Weight of the control cost (Williams et al.: lambda).
    pub gamma: f32,
    /// Seconds per step, `DT` in the WGSL.
    pub dt: f32,
    /// Philox seed.
    pub seed: u64,
    /// Nonzero: build the problem's WGSL without bounds checks (faster; an out-of-bounds
    /// index in it is then undefined behaviour on the GPU).
    pub trusted: u32,
    /// Noise std of every control, unless `sigma_per_control` is given.
    pub sigma: f32,
    /// Lower bound of every control, unless `u_min_per_control` is given.
    pub u_min: f32,
    /// Upper bound of every control, unless `u_max_per_control` is given.
    pub u_max: f32,
    /// NULL, or `per_control_len` noise stds, one per control.
    pub sigma_per_control: *const f32,
    /// NULL, or `per_control_len` lower bounds.
    pub u_min_per_control: *const f32,
    /// NULL, or `per_control_len` upper bounds.
    pub u_max_per_control: *const f32,
    /// Length of the per-control arrays given: the problem's `control_dim` (0 when all
    /// three are NULL).
    pub per_control_len: usize,
}

fn mppi_config_default() -> PompcMppiConfig {
    let c = MppiConfig::new(1);
    PompcMppiConfig {
        horizon: c.horizon,
        samples: c.samples,
        lambda: c.lambda,
        gamma: c.gamma,
        dt: c.dt,
        seed: c.seed,
        trusted: c.trusted as u32,
        sigma: c.sigma[0],
        u_min: c.u_min[0],
        u_max: c.u_max[0],
        sigma_per_control: std::ptr::null(),
        u_min_per_control: std::ptr::null(),
        u_max_per_control: std::ptr::null(),
        per_control_len: 0,
    }
}

/// Fill `*out` with MPPI-Generic's settings: horizon 100, 1024 samples, lambda 1, gamma 1
/// (Williams et al.), dt 0.02, sigma 0.2 and controls in [-1, 1] for every control, seed 1,
/// bounds-checked WGSL.
///
/// # Safety
///
/// `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_mppi_config_default(out: *mut PompcMppiConfig) -> PompcStatus {
    // SAFETY: the caller's promise.
    guard(|| unsafe { write(out, mppi_config_default(), "out") })
}

/// # Safety
///
/// The config's per-control pointers are NULL or valid for `per_control_len` reads.
unsafe fn mppi_config(c: &PompcMppiConfig, control_dim: usize) -> CResult<MppiConfig> {
    let given = [
        c.sigma_per_control,
        c.u_min_per_control,
        c.u_max_per_control,
    ];
    let any = given.iter().any(|p| !p.is_null());
    if (any || c.per_control_len != 0) && c.per_control_len != control_dim {
        return Err(CError::new(
            PompcStatus::Shape,
            format!(
                "config.per_control_len = {}: the per-control arrays need control_dim = \
                 {control_dim} values{}",
                c.per_control_len,
                if any { "" } else { " (0 when none is given)" }
            ),
        ));
    }
    let per = |p: *const f32, scalar: f32, what: &str| -> CResult<Vec<f32>> {
        if p.is_null() {
            Ok(vec![scalar; control_dim])
        } else {
            // SAFETY: the caller's promise; the length is control_dim.
            Ok(unsafe { input(p, control_dim, control_dim, what) }?.to_vec())
        }
    };
    Ok(MppiConfig {
        horizon: c.horizon,
        samples: c.samples,
        lambda: c.lambda,
        gamma: c.gamma,
        sigma: per(c.sigma_per_control, c.sigma, "config.sigma_per_control")?,
        u_min: per(c.u_min_per_control, c.u_min, "config.u_min_per_control")?,
        u_max: per(c.u_max_per_control, c.u_max, "config.u_max_per_control")?,
        dt: c.dt,
        seed: c.seed,
        trusted: c.trusted != 0,
    })
}

/// Classic MPPI over a WGSL problem. Calls on one controller must not overlap
/// (`POMPC_STATUS_BUSY` otherwise); give each thread its own.
pub struct PompcMppi {
    pub(crate) inner: Mutex<MppiState>,
}

pub(crate) struct MppiState {
    // Declared first, so dropped first: it borrows the device held below.
    mppi: Mppi<'static>,
    state_dim: usize,
    control_dim: usize,
    param_len: usize,
    _gpu: Arc<Gpu>,
}

/// Compile `problem`'s WGSL into the MPPI kernels (`config` NULL: the defaults). WGSL that
/// does not compile is `POMPC_STATUS_SHADER`, with the line in your own source in the
/// message. The parameters start at zero. On failure `*out` is NULL.
///
/// # Safety
///
/// `gpu` is NULL or a live handle; `problem` is NULL or points to a problem whose strings
/// are NULL or NUL-terminated; `config` is NULL or valid for a read (with its per-control
/// arrays); `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_mppi_create(
    gpu: *const PompcGpu,
    problem: *const PompcMppiProblem,
    config: *const PompcMppiConfig,
    out: *mut *mut PompcMppi,
) -> PompcStatus {
    guard(|| {
        // SAFETY: the caller's promises, for each pointer.
        unsafe { out_handle(out, "out") }?;
        let g = unsafe { handle(gpu, "gpu") }?;
        let p = unsafe { handle(problem, "problem") }?;
        let name =
            unsafe { opt_str(p.name, POMPC_MAX_NAME_BYTES, "problem.name") }?.unwrap_or("problem");
        let wgsl = unsafe { req_str(p.wgsl, POMPC_MAX_WGSL_BYTES, "problem.wgsl") }?;
        let c = unsafe { config.as_ref() }
            .copied()
            .unwrap_or_else(mppi_config_default);
        let problem = Problem {
            name: name.to_string(),
            state_dim: p.state_dim,
            control_dim: p.control_dim,
            param_len: p.param_len,
            wgsl: wgsl.to_string(),
        };
        // Before mppi_config sizes its arrays by control_dim.
        problem.check_dims()?;
        // SAFETY: the caller's promise for the per-control arrays.
        let cfg = unsafe { mppi_config(&c, p.control_dim) }?;
        let gpu = g.gpu.clone();
        // SAFETY: the reference points into the Arc's allocation, which never moves and
        // stays alive while the clone in MppiState does; MppiState drops the controller (its
        // first field) before it and never hands the reference out.
        let gref: &'static Gpu = unsafe { &*Arc::as_ptr(&gpu) };
        let mppi = Mppi::new(gref, problem, cfg)?;
        let h = Box::into_raw(Box::new(PompcMppi {
            inner: Mutex::new(MppiState {
                mppi,
                state_dim: p.state_dim,
                control_dim: p.control_dim,
                param_len: p.param_len,
                _gpu: gpu,
            }),
        }));
        // SAFETY: checked by out_handle.
        unsafe { out.write(h) };
        Ok(())
    })
}

/// A controller's sizes and progress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PompcMppiInfo {
    /// State dimension.
    pub state_dim: usize,
    /// Control dimension.
    pub control_dim: usize,
    /// Parameters.
    pub param_len: usize,
    /// Horizon H: the control sequence holds `horizon x control_dim` values.
    pub horizon: usize,
    /// Samples K: the costs hold `samples` values.
    pub samples: usize,
    /// Steps so far.
    pub steps: u32,
}

/// A controller's sizes and progress.
///
/// # Safety
///
/// `mppi` is NULL or a live handle; `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_mppi_get_info(
    mppi: *const PompcMppi,
    out: *mut PompcMppiInfo,
) -> PompcStatus {
    guard(|| {
        // SAFETY: the caller's promise.
        let m = unsafe { handle(mppi, "mppi") }?;
        let st = lock(&m.inner, "mppi")?;
        let info = PompcMppiInfo {
            state_dim: st.state_dim,
            control_dim: st.control_dim,
            param_len: st.param_len,
            horizon: st.mppi.config().horizon,
            samples: st.mppi.config().samples,
            steps: st.mppi.calls(),
        };
        // SAFETY: the caller's promise.
        unsafe { write(out, info, "out") }
    })
}

/// Replace the parameter buffer that the WGSL reads with `param(i)` (goals, obstacles):
/// `param_len` finite values.
///
/// # Safety
///
/// `mppi` is NULL or a live handle; `params` is NULL or valid for `len` reads.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_mppi_set_params(
    mppi: *mut PompcMppi,
    params: *const f32,
    len: usize,
) -> PompcStatus {
    guard(|| {
        // SAFETY: the caller's promise.
        let m = unsafe { handle(mppi, "mppi") }?;
        let mut st = lock(&m.inner, "mppi")?;
        // SAFETY: as above, the length checked.
        let p = unsafe { input(params, len, st.param_len, "params (param_len)") }?;
        st.mppi.set_params(p)?;
        Ok(())
    })
}

/// What a step found besides the control.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PompcMppiStepInfo {
    /// The lowest sample cost.
    pub min_cost: f32,
    /// The weights' normalizer (near 1: one sample dominates).
    pub eta: f32,
    /// Samples whose cost was finite (the others got no weight).
    pub finite_samples: usize,
}

/// One MPPI step from state `x0` (`state_dim` finite values): writes the control to apply
/// now into `control` (`control_dim` values) and, if `info` is not NULL, the step's
/// statistics. One submit, one read-back. A step in which a rollout was cut short by the
/// driver, or no cost is finite, fails and leaves the control sequence as it was.
///
/// # Safety
///
/// `mppi` is NULL or a live handle; `x0` and `control` are NULL or valid for their lengths;
/// `info` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_mppi_step(
    mppi: *mut PompcMppi,
    x0: *const f32,
    x0_len: usize,
    control: *mut f32,
    control_len: usize,
    info: *mut PompcMppiStepInfo,
) -> PompcStatus {
    guard(|| {
        // SAFETY: the caller's promises.
        let m = unsafe { handle(mppi, "mppi") }?;
        let mut st = lock(&m.inner, "mppi")?;
        // SAFETY: as above, lengths checked.
        let x = unsafe { input(x0, x0_len, st.state_dim, "x0 (state_dim)") }?;
        // The outputs are checked before the step, which a failure after it would lose.
        // SAFETY: the caller's promises.
        let out = unsafe {
            Out::new(
                control,
                control_len,
                st.control_dim,
                "control (control_dim)",
            )
        }?;
        let info_out = match info.is_null() {
            true => None,
            // SAFETY: as above.
            false => Some(unsafe { Out::new(info, 1, 1, "info") }?),
        };
        let step = st.mppi.step(x)?;
        out.write(&step.control)?;
        if let Some(o) = info_out {
            o.write(&[PompcMppiStepInfo {
                min_cost: step.min_cost,
                eta: step.eta,
                finite_samples: step.finite_samples,
            }])?;
        }
        Ok(())
    })
}

/// The last step's sample costs and weights (`samples` values each; a read-back). Each
/// output is skipped when its length is 0 (its pointer may then be NULL).
///
/// # Safety
///
/// `mppi` is NULL or a live handle; `costs` and `weights` are NULL or valid for their
/// lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_mppi_costs(
    mppi: *const PompcMppi,
    costs: *mut f32,
    costs_len: usize,
    weights: *mut f32,
    weights_len: usize,
) -> PompcStatus {
    guard(|| {
        // SAFETY: the caller's promise.
        let m = unsafe { handle(mppi, "mppi") }?;
        let st = lock(&m.inner, "mppi")?;
        let k = st.mppi.config().samples;
        // SAFETY: the caller's promises.
        let c_out = unsafe { Out::optional(costs, costs_len, k, "costs (samples)") }?;
        let w_out = unsafe { Out::optional(weights, weights_len, k, "weights (samples)") }?;
        if st.mppi.calls() == 0 {
            return Err(CError::new(
                PompcStatus::InvalidArgument,
                "no step yet: call pompc_mppi_step first",
            ));
        }
        let (c, w) = st.mppi.costs_and_weights()?;
        for (out, data) in [(c_out, &c), (w_out, &w)] {
            if let Some(o) = out {
                o.write(data)?;
            }
        }
        Ok(())
    })
}

/// The nominal control sequence `[horizon, control_dim]` (row-major; a read-back): after a
/// step, the updated sequence whose first control the step returned.
///
/// # Safety
///
/// `mppi` is NULL or a live handle; `u` is NULL or valid for `len` writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_mppi_controls(
    mppi: *const PompcMppi,
    u: *mut f32,
    len: usize,
) -> PompcStatus {
    guard(|| {
        // SAFETY: the caller's promise.
        let m = unsafe { handle(mppi, "mppi") }?;
        let st = lock(&m.inner, "mppi")?;
        let n = st.mppi.config().horizon * st.control_dim;
        // SAFETY: the caller's promise.
        let out = unsafe { Out::new(u, len, n, "u (horizon x control_dim)") }?;
        out.write(&st.mppi.controls()?)
    })
}

/// Set the nominal control sequence `[horizon, control_dim]` (e.g. a previous solution;
/// every value within its control's bounds); the next step starts from it unshifted.
///
/// # Safety
///
/// `mppi` is NULL or a live handle; `u` is NULL or valid for `len` reads.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_mppi_set_controls(
    mppi: *mut PompcMppi,
    u: *const f32,
    len: usize,
) -> PompcStatus {
    guard(|| {
        // SAFETY: the caller's promise.
        let m = unsafe { handle(mppi, "mppi") }?;
        let mut st = lock(&m.inner, "mppi")?;
        let n = st.mppi.config().horizon * st.control_dim;
        // SAFETY: as above, the length checked.
        let u = unsafe { input(u, len, n, "u (horizon x control_dim)") }?;
        st.mppi.set_controls(u)?;
        Ok(())
    })
}

/// Zero the nominal control sequence (each control clamped into its bounds).
///
/// # Safety
///
/// `mppi` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_mppi_reset(mppi: *mut PompcMppi) -> PompcStatus {
    guard(|| {
        // SAFETY: the caller's promise.
        let m = unsafe { handle(mppi, "mppi") }?;
        lock(&m.inner, "mppi")?.mppi.reset()?;
        Ok(())
    })
}

/// Release a controller (NULL: nothing). One found in use by a call in another thread is left
/// alone (`POMPC_STATUS_BUSY`), a best-effort check: destroying a handle that another thread
/// may be using is still undefined behaviour. One whose call panicked (every later call
/// `POMPC_STATUS_PANIC`) is released.
///
/// # Safety
///
/// `mppi` is NULL or a live handle, destroyed once (a second destroy, or a use after it, is
/// undefined behaviour and cannot be detected).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_mppi_destroy(mppi: *mut PompcMppi) -> PompcStatus {
    // SAFETY: the caller's promise.
    unsafe { destroy(mppi, |m| idle(&m.inner, "mppi")) }
}
