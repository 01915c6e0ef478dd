//! The GPU runtime: adapter and device selection, error capture, typed buffers, the shader
//! library, the pipeline cache and the command recorder.
//!
//! ```no_run
//! # fn main() -> pompc::Result<()> {
//! let gpu = pompc::Gpu::new(pompc::GpuOptions::default())?;
//! println!("{}", gpu.describe());
//! # Ok(()) }
//! ```

mod buffer;
mod canary;
mod pipeline;
mod recorder;
pub mod shader;

pub use buffer::GpuBuffer;
pub use canary::CANARY;
pub use pipeline::{Binding, KernelSpec, Pipeline};
pub use recorder::{
    BindCache, DispatchTime, Encoded, PendingReadback, Readback, ReadbackHandle, Recorder, Timing,
};

use crate::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long [`Gpu`] waits for submitted work by default before giving up with
/// [`Error::Timeout`].
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether shader modules keep wgpu's runtime bounds checks.
///
/// On the H100 a tiled GEMM ran 45x slower with checks on, so release builds default to
/// [`ShaderChecks::Trusted`]; the tests run every kernel both ways so an out-of-bounds access
/// cannot hide behind the unchecked build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShaderChecks {
    /// wgpu's bounds checks and loop bounding stay in the generated code.
    Checked,
    /// Modules are created with `create_shader_module_trusted` and no runtime checks.
    Trusted,
}

impl Default for ShaderChecks {
    fn default() -> Self {
        if cfg!(debug_assertions) {
            ShaderChecks::Checked
        } else {
            ShaderChecks::Trusted
        }
    }
}

/// Storage and arithmetic of the world model's linear layers (see the README's "Precision").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 storage, f32 multiply-adds: the reference path, on every adapter.
    F32,
    /// Weights and hidden activations stored in f16 (needs shader-f16), products and sums in
    /// f32 on the ordinary ALUs; inputs from and outputs to other kernels stay f32.
    F16,
    /// Storage as [`Precision::F16`]; the matrix products of large layers on cooperative
    /// matrices (tensor cores): f16 operands, f32 accumulation, f32 epilogue. Layers too small
    /// for 16x16 tiles run as [`Precision::F16`]. Needs cooperative matrices with a 16x16x16
    /// f16 x f16 -> f32 configuration, subgroups of one fixed size, and shader-f16.
    TensorCore,
}

impl Precision {
    /// Parse `f32`, `f16`, `coop` / `tensor-core` (and `auto` as `None`).
    pub fn parse(s: &str) -> Result<Option<Precision>> {
        match s.to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(None),
            "f32" | "fp32" => Ok(Some(Precision::F32)),
            "f16" | "fp16" | "half" => Ok(Some(Precision::F16)),
            "coop" | "tensor-core" | "tensorcore" | "tc" => Ok(Some(Precision::TensorCore)),
            other => Err(Error::InvalidArgument(format!(
                "precision {other:?}: use auto, f32, f16 or coop"
            ))),
        }
    }

    /// Short name: `f32`, `f16`, `coop`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::TensorCore => "coop",
        }
    }

    /// Whether weights and hidden activations are stored in f16.
    pub fn f16_storage(self) -> bool {
        self != Precision::F32
    }
}

fn timeout_nanos(t: Duration) -> Result<u64> {
    let (lo, hi) = (Duration::from_millis(1), Duration::from_secs(86_400));
    if t < lo || t > hi {
        return Err(Error::InvalidArgument(format!(
            "GPU wait timeout {t:?}: use 1 ms to 1 day (default {DEFAULT_WAIT_TIMEOUT:?})"
        )));
    }
    Ok(t.as_nanos() as u64)
}

fn spin_nanos(t: Duration) -> Result<u64> {
    if t > Duration::from_secs(1) {
        return Err(Error::InvalidArgument(format!(
            "GPU spin wait {t:?}: use at most 1 s (default {DEFAULT_SPIN_WAIT:?} on GPUs)"
        )));
    }
    Ok(t.as_nanos() as u64)
}

/// Which limits to ask the device for.
#[derive(Clone, Debug, Default)]
pub enum LimitsRequest {
    /// Everything the adapter offers (the default: kernels size themselves to the hardware).
    #[default]
    Adapter,
    /// wgpu's downlevel defaults, for drivers that fail when asked for more.
    Downlevel,
    /// Exactly these limits.
    Custom(Box<wgpu::Limits>),
}

/// How to choose and open a GPU. Every field has a sensible default; environment variables
/// override the defaults the way wgpu's own tools do.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Backends to consider. `None`: `WGPU_BACKEND` if set (e.g. `vulkan`, `gl`), else all.
    pub backends: Option<wgpu::Backends>,
    /// Pick the first adapter whose name contains this (case-insensitive). `None`:
    /// `WGPU_ADAPTER_NAME` if set, else the best adapter by power preference and device type.
    pub adapter_name: Option<String>,
    /// Preference between integrated and discrete GPUs. `WGPU_POWER_PREF` (`low`, `high`)
    /// overrides it.
    pub power_preference: wgpu::PowerPreference,
    /// Runtime checks in shader modules.
    pub shader_checks: ShaderChecks,
    /// Ask for optional features (subgroups, shader-f16, timestamps) when the adapter has them.
    pub optional_features: bool,
    /// Device limits to request. `POMPC_LIMITS=downlevel` turns the default `Adapter` into
    /// `Downlevel`.
    pub limits: LimitsRequest,
    /// Precision of the world model's layers. `None`: `POMPC_PRECISION` if set (`auto`, `f32`,
    /// `f16`, `coop`), else automatic: [`Precision::TensorCore`] where the device has tensor
    /// cores ([`Gpu::tensor_cores`]), [`Precision::F32`] elsewhere. An explicit precision the
    /// device lacks is an error.
    pub precision: Option<Precision>,
    /// Guard words after every [`GpuBuffer`], holding [`CANARY`] and checked after every
    /// read-back ([`Gpu::check_canaries`]): a kernel that writes past the end of its output
    /// then fails with an error naming the buffer. For tests; 0 (the default) for none.
    pub canary: usize,
    /// How long a wait for the GPU (a read-back, [`Gpu::wait_idle`]) may take before it
    /// returns [`Error::Timeout`] ([`DEFAULT_WAIT_TIMEOUT`], 60 s); changeable later with
    /// [`Gpu::set_wait_timeout`].
    pub wait_timeout: Duration,
    /// How long a wait for a read-back polls the device in a busy loop before it sleeps in
    /// the driver: short steps (classic MPPI, a small plan step) come back sooner, since waking a
    /// sleeping thread costs tens of microseconds. `None`: `POMPC_SPIN_WAIT_US` if set, else,
    /// as CUDA's default scheduling does, [`DEFAULT_SPIN_WAIT`] where the host has cores to
    /// spare (four or more) and none on CPU adapters (lavapipe), whose compute threads need
    /// the cores a spinning waiter would take.
    pub spin_wait: Option<Duration>,
}

/// The busy-polling part of a wait on a GPU adapter (see [`GpuOptions::spin_wait`]).
pub const DEFAULT_SPIN_WAIT: Duration = Duration::from_millis(20);

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            backends: None,
            adapter_name: None,
            power_preference: wgpu::PowerPreference::HighPerformance,
            shader_checks: ShaderChecks::default(),
            optional_features: true,
            limits: LimitsRequest::Adapter,
            precision: None,
            canary: 0,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            spin_wait: None,
        }
    }
}

impl GpuOptions {
    /// Options for one backend, e.g. `GpuOptions::backend(wgpu::Backends::VULKAN)`.
    pub fn backend(backends: wgpu::Backends) -> Self {
        GpuOptions {
            backends: Some(backends),
            ..Default::default()
        }
    }

    /// Same options with another shader-check mode.
    pub fn with_checks(mut self, checks: ShaderChecks) -> Self {
        self.shader_checks = checks;
        self
    }

    /// Same options with a fixed precision (`None`: automatic).
    pub fn with_precision(mut self, precision: Option<Precision>) -> Self {
        self.precision = precision;
        self
    }

    /// Same options with `words` guard words after every buffer (see [`GpuOptions::canary`]).
    pub fn with_canary(mut self, words: usize) -> Self {
        self.canary = words;
        self
    }

    /// Same options with another wait timeout (see [`GpuOptions::wait_timeout`]).
    pub fn with_wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// Same options with another busy-polling time (see [`GpuOptions::spin_wait`]);
    /// `Duration::ZERO` always sleeps.
    pub fn with_spin_wait(mut self, spin: Duration) -> Self {
        self.spin_wait = Some(spin);
        self
    }

    fn resolved_spin_wait(&self, device_type: wgpu::DeviceType) -> Result<Duration> {
        if let Some(d) = self.spin_wait {
            return Ok(d);
        }
        if let Ok(v) = std::env::var("POMPC_SPIN_WAIT_US") {
            return v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&us| us <= 1_000_000)
                .map(Duration::from_micros)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "POMPC_SPIN_WAIT_US={v:?}: expected whole microseconds, at most 1000000"
                    ))
                });
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(if device_type == wgpu::DeviceType::Cpu || cores < 4 {
            Duration::ZERO
        } else {
            DEFAULT_SPIN_WAIT
        })
    }

    /// Same options, asking for an adapter whose name contains `name`.
    pub fn with_adapter_name(mut self, name: impl Into<String>) -> Self {
        self.adapter_name = Some(name.into());
        self
    }

    fn resolved_backends(&self) -> wgpu::Backends {
        self.backends
            .or_else(wgpu::Backends::from_env)
            .unwrap_or(wgpu::Backends::all())
    }

    fn resolved_name(&self) -> Option<String> {
        self.adapter_name
            .clone()
            .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
            .filter(|s| !s.is_empty())
    }
}

/// Optional device features the kernels can use, as granted by the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuFeatures {
    /// Subgroup operations in compute shaders.
    pub subgroups: bool,
    /// `f16` in shaders.
    pub shader_f16: bool,
    /// Timestamp queries at pass boundaries.
    pub timestamps: bool,
    /// Cooperative matrices (tensor cores), experimental in wgpu.
    pub cooperative_matrix: bool,
}

/// The features pompc asks for when the adapter has them.
pub(crate) fn optional_features() -> wgpu::Features {
    wgpu::Features::SUBGROUP
        | wgpu::Features::SHADER_F16
        | wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
}

fn granted(features: wgpu::Features) -> GpuFeatures {
    GpuFeatures {
        subgroups: features.contains(wgpu::Features::SUBGROUP),
        shader_f16: features.contains(wgpu::Features::SHADER_F16),
        timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
        cooperative_matrix: features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
    }
}

/// The subgroup size for the tensor-core kernels, or why they cannot run: they use 16x16x16
/// cooperative matrices of f16 with an f32 accumulator, `subgroup_id` to hand out tiles, and a
/// workgroup size that is a multiple of the one subgroup size.
fn tensor_core_support(
    adapter: &wgpu::Adapter,
    info: &wgpu::AdapterInfo,
    f: GpuFeatures,
) -> std::result::Result<u32, String> {
    let name = &info.name;
    if !f.cooperative_matrix {
        return Err(format!(
            "{name} has no cooperative matrices (wgpu's EXPERIMENTAL_COOPERATIVE_MATRIX, \
             Vulkan's VK_KHR_cooperative_matrix); use f32 or f16"
        ));
    }
    if !f.shader_f16 || !f.subgroups {
        return Err(format!(
            "the tensor-core kernels need shader-f16 and subgroups as well; {name} has \
             f16={} subgroups={}",
            f.shader_f16, f.subgroups
        ));
    }
    let props = adapter.cooperative_matrix_properties();
    let ok = props.iter().any(|p| {
        (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
            && p.ab_type == wgpu::CooperativeScalarType::F16
            && p.cr_type == wgpu::CooperativeScalarType::F32
    });
    if !ok {
        return Err(format!(
            "{name} offers no 16x16x16 f16 x f16 -> f32 cooperative matrix (it offers {props:?})"
        ));
    }
    if info.subgroup_min_size != info.subgroup_max_size || info.subgroup_max_size < 4 {
        return Err(format!(
            "{name}'s subgroup size varies ({}..{}); the tensor-core kernels need one size",
            info.subgroup_min_size, info.subgroup_max_size
        ));
    }
    Ok(info.subgroup_max_size)
}

/// One line per adapter that wgpu can see, for `pompc info` and error messages.
pub fn enumerate_adapters(backends: Option<wgpu::Backends>) -> Vec<wgpu::Adapter> {
    let instance = make_instance(backends.or_else(wgpu::Backends::from_env));
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
}

fn make_instance(backends: Option<wgpu::Backends>) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends.unwrap_or(wgpu::Backends::all());
    wgpu::Instance::new(desc)
}

fn type_rank(t: wgpu::DeviceType, pref: wgpu::PowerPreference) -> u32 {
    use wgpu::DeviceType::*;
    match (pref, t) {
        (wgpu::PowerPreference::LowPower, IntegratedGpu) => 0,
        (wgpu::PowerPreference::LowPower, DiscreteGpu) => 1,
        (_, DiscreteGpu) => 0,
        (_, IntegratedGpu) => 1,
        (_, VirtualGpu) => 2,
        (_, Other) => 3,
        (_, Cpu) => 4,
    }
}

fn backend_rank(b: wgpu::Backend) -> u32 {
    // Native compute APIs first: GL lacks storage-buffer features and is slower.
    match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        wgpu::Backend::Gl => 1,
        _ => 2,
    }
}

/// An open GPU device with pompc's shader library and pipeline cache.
pub struct Gpu {
    pub(crate) adapter: wgpu::Adapter,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    features: GpuFeatures,
    limits: wgpu::Limits,
    checks: ShaderChecks,
    precision: Precision,
    tensor_cores: std::result::Result<u32, String>,
    pub(crate) pipelines: pipeline::PipelineCache,
    lost: Arc<Mutex<Option<String>>>,
    uncaptured: Arc<Mutex<Vec<wgpu::Error>>>,
    pub(crate) canaries: canary::Canaries,
    submits: AtomicU64,
    readbacks: AtomicU64,
    // Nanoseconds; shared by every waiter, settable through `&self`.
    wait_timeout: AtomicU64,
    spin_wait: AtomicU64,
    // Read-back buffers and timestamp queries of finished submissions, for the next ones:
    // creating them for every step cost host time on every read-back.
    staging_pool: Mutex<Vec<wgpu::Buffer>>,
    timestamp_pool: Mutex<Vec<(wgpu::QuerySet, wgpu::Buffer)>>,
}

/// Submissions and read-backs a [`Gpu`] has made ([`Gpu::counters`]): what a test checks to
/// pin a step to one submit and one read-back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuCounters {
    /// Command buffers submitted ([`Encoded::submit`], which every [`Recorder`] submit goes
    /// through).
    pub submits: u64,
    /// Read-backs mapped ([`PendingReadback::wait`] of a submission that read something).
    pub readbacks: u64,
}

impl std::ops::Sub for GpuCounters {
    type Output = GpuCounters;
    fn sub(self, o: GpuCounters) -> GpuCounters {
        GpuCounters {
            submits: self.submits - o.submits,
            readbacks: self.readbacks - o.readbacks,
        }
    }
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .field("features", &self.features)
            .field("checks", &self.checks)
            .finish()
    }
}

impl Gpu {
    /// Pick an adapter and open a device on it. See [`GpuOptions`] for the choice.
    pub fn new(options: GpuOptions) -> Result<Gpu> {
        let backends = options.resolved_backends();
        let name = options.resolved_name();
        let instance = make_instance(Some(backends));
        let adapters = pollster::block_on(instance.enumerate_adapters(backends));
        let pref = wgpu::PowerPreference::from_env().unwrap_or(options.power_preference);
        let mut candidates: Vec<wgpu::Adapter> = adapters
            .into_iter()
            .filter(|a| {
                name.as_ref()
                    .is_none_or(|n| a.get_info().name.to_lowercase().contains(&n.to_lowercase()))
            })
            .collect();
        candidates.sort_by_key(|a| {
            let i = a.get_info();
            (type_rank(i.device_type, pref), backend_rank(i.backend))
        });
        let Some(adapter) = candidates.into_iter().next() else {
            let mut detail = format!(" for backends {backends:?}");
            if let Some(n) = &name {
                detail.push_str(&format!(" with a name containing {n:?}"));
            }
            return Err(Error::NoAdapter { detail });
        };
        Self::from_adapter(adapter, &options)
    }

    /// Open a device on a given adapter (from [`enumerate_adapters`]).
    pub fn from_adapter(adapter: wgpu::Adapter, options: &GpuOptions) -> Result<Gpu> {
        let wait_timeout = timeout_nanos(options.wait_timeout)?;
        let info = adapter.get_info();
        let spin_wait = spin_nanos(options.resolved_spin_wait(info.device_type)?)?;
        let wanted = if options.optional_features {
            optional_features() & adapter.features()
        } else {
            wgpu::Features::empty()
        };
        // POMPC_LIMITS=downlevel turns the default full request into wgpu's downlevel one,
        // for drivers that refuse the full request (`pompc info --probe` shows which).
        let env_downlevel = std::env::var("POMPC_LIMITS").is_ok_and(|v| v == "downlevel");
        let limits = match &options.limits {
            LimitsRequest::Adapter if env_downlevel => wgpu::Limits::downlevel_defaults(),
            LimitsRequest::Adapter => adapter.limits(),
            LimitsRequest::Downlevel => wgpu::Limits::downlevel_defaults(),
            LimitsRequest::Custom(l) => (**l).clone(),
        };
        let experimental = if wanted.intersects(wgpu::Features::all_experimental_mask()) {
            // SAFETY: wgpu asks for this opt-in before it grants an experimental feature
            // (here only cooperative matrices); pompc uses them only in the tensor-core GEMMs,
            // which the tests check against their mirror wherever the feature is present.
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("pompc"),
            required_features: wanted,
            required_limits: limits,
            experimental_features: experimental,
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::RequestDevice {
            adapter: info.name.clone(),
            message: e.to_string(),
        })?;
        let lost = Arc::new(Mutex::new(None));
        let lost2 = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut l) = lost2.lock() {
                *l = Some(format!("{reason:?}: {msg}"));
            }
        });
        // Errors outside pompc's error scopes (another thread, a dropped scope) are kept and
        // returned by the next fallible call instead of wgpu's default panic.
        let uncaptured: Arc<Mutex<Vec<wgpu::Error>>> = Arc::new(Mutex::new(Vec::new()));
        let unc2 = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut u) = unc2.lock() {
                u.push(e);
            }
        }));
        let features = granted(device.features());
        let limits = device.limits();
        let tensor_cores = tensor_core_support(&adapter, &info, features);
        let requested = match options.precision {
            Some(p) => Some(p),
            None => match std::env::var("POMPC_PRECISION") {
                Ok(v) => Precision::parse(&v)?,
                Err(_) => None,
            },
        };
        let precision = match requested {
            // Automatic: tensor cores where the device has them (checked against their mirror
            // on the H100/H200, faster than f32 at every plan size measured there, BENCHMARKS.md),
            // else f32. `f32` keeps the exact path.
            None if tensor_cores.is_ok() => Precision::TensorCore,
            None | Some(Precision::F32) => Precision::F32,
            Some(Precision::F16) if features.shader_f16 => Precision::F16,
            Some(Precision::F16) => {
                return Err(Error::Unsupported(format!(
                    "f16 precision needs shader-f16, which {} lacks; use f32",
                    info.name
                )));
            }
            Some(Precision::TensorCore) => match &tensor_cores {
                Ok(_) => Precision::TensorCore,
                Err(why) => return Err(Error::Unsupported(why.clone())),
            },
        };
        Ok(Gpu {
            adapter,
            device,
            queue,
            info,
            features,
            limits,
            checks: options.shader_checks,
            precision,
            tensor_cores,
            pipelines: pipeline::PipelineCache::default(),
            lost,
            uncaptured,
            canaries: canary::Canaries::new(options.canary),
            submits: AtomicU64::new(0),
            readbacks: AtomicU64::new(0),
            wait_timeout: AtomicU64::new(wait_timeout),
            spin_wait: AtomicU64::new(spin_wait),
            staging_pool: Mutex::new(Vec::new()),
            timestamp_pool: Mutex::new(Vec::new()),
        })
    }

    /// A mappable read-back buffer of at least `size` bytes: a pooled one or a new one.
    pub(crate) fn take_staging(&self, size: u64) -> wgpu::Buffer {
        let mut pool = self.staging_pool.lock().unwrap_or_else(|e| e.into_inner());
        // The smallest that fits, if not much bigger (its whole length is not mapped).
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.size() >= size && b.size() <= 4 * size.max(256))
            .min_by_key(|(_, b)| b.size())
            .map(|(i, _)| i);
        if let Some(i) = best {
            return pool.swap_remove(i);
        }
        drop(pool);
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("pompc readback"),
            size: size.next_power_of_two().max(256),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Give back an unmapped read-back buffer whose submission has finished.
    pub(crate) fn return_staging(&self, buffer: wgpu::Buffer) {
        const MAX_POOLED: usize = 8;
        const MAX_BYTES: u64 = 4 << 20;
        let mut pool = self.staging_pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < MAX_POOLED && buffer.size() <= MAX_BYTES {
            pool.push(buffer);
        }
    }

    /// Two timestamp queries and their resolve buffer: pooled ones or new ones.
    pub(crate) fn take_timestamps(&self, resolve_bytes: u64) -> (wgpu::QuerySet, wgpu::Buffer) {
        let pooled = self
            .timestamp_pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        pooled.unwrap_or_else(|| {
            let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("pompc timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("pompc timestamp resolve"),
                size: resolve_bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            (set, resolve)
        })
    }

    /// Give back timestamp queries whose submission has finished.
    pub(crate) fn return_timestamps(&self, ts: (wgpu::QuerySet, wgpu::Buffer)) {
        let mut pool = self
            .timestamp_pool
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if pool.len() < 8 {
            pool.push(ts);
        }
    }

    /// How long a wait polls before it sleeps (see [`GpuOptions::spin_wait`]).
    pub fn spin_wait(&self) -> Duration {
        Duration::from_nanos(self.spin_wait.load(Ordering::Relaxed))
    }

    /// Set how long a wait polls the device before it sleeps in the driver: at most one
    /// second; `Duration::ZERO` always sleeps.
    pub fn set_spin_wait(&self, spin: Duration) -> Result<()> {
        self.spin_wait.store(spin_nanos(spin)?, Ordering::Relaxed);
        Ok(())
    }

    /// How long a wait for the GPU may take before it returns [`Error::Timeout`].
    pub fn wait_timeout(&self) -> Duration {
        Duration::from_nanos(self.wait_timeout.load(Ordering::Relaxed))
    }

    /// Set how long a wait for the GPU (every read-back, [`Gpu::wait_idle`]) may take before it
    /// returns [`Error::Timeout`]: between 1 ms and one day. Work that is still running when
    /// the timeout expires goes on; later waits include it.
    pub fn set_wait_timeout(&self, timeout: Duration) -> Result<()> {
        self.wait_timeout
            .store(timeout_nanos(timeout)?, Ordering::Relaxed);
        Ok(())
    }

    /// The adapter's name, backend, driver and type.
    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// Optional features granted.
    pub fn features(&self) -> GpuFeatures {
        self.features
    }

    /// The device's limits (the adapter's own, unless asked otherwise).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Precision the world model's layers use on this device by default.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The subgroup size the tensor-core kernels run with, or an [`Error::Unsupported`] that
    /// says what the device lacks.
    pub fn tensor_cores(&self) -> Result<u32> {
        self.tensor_cores.clone().map_err(Error::Unsupported)
    }

    /// Whether `precision` can run here: `Ok` or an [`Error::Unsupported`] saying why not.
    pub fn supports(&self, precision: Precision) -> Result<()> {
        match precision {
            Precision::F32 => Ok(()),
            Precision::F16 if self.features.shader_f16 => Ok(()),
            Precision::F16 => Err(Error::Unsupported(format!(
                "f16 storage needs shader-f16, which {} lacks; use f32",
                self.info.name
            ))),
            Precision::TensorCore => self.tensor_cores().map(|_| ()),
        }
    }

    /// Submissions and read-backs made on this device so far, by every thread (the canary
    /// checks' own are not counted). Cheap: two relaxed atomic counters.
    pub fn counters(&self) -> GpuCounters {
        GpuCounters {
            submits: self.submits.load(Ordering::Relaxed),
            readbacks: self.readbacks.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn count_submit(&self) {
        self.submits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_readback(&self) {
        self.readbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// Shader-check mode of this device's pipelines.
    pub fn shader_checks(&self) -> ShaderChecks {
        self.checks
    }

    /// The underlying wgpu device, for interop with an engine's own rendering.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The underlying wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The adapter the device was opened on.
    pub fn adapter(&self) -> &wgpu::Adapter {
        &self.adapter
    }

    /// One line: name, backend, type, driver, features, checks.
    pub fn describe(&self) -> String {
        let i = &self.info;
        let f = self.features;
        format!(
            "{} ({:?}, {:?}, driver {} {}) subgroups={} f16={} timestamps={} coop={} \
             precision={} shaders={:?}",
            i.name,
            i.backend,
            i.device_type,
            i.driver,
            i.driver_info,
            f.subgroups,
            f.shader_f16,
            f.timestamps,
            self.tensor_cores.is_ok(),
            self.precision.name(),
            self.checks
        )
    }

    /// Run `f` inside wgpu error scopes, so validation errors, out-of-memory and internal
    /// errors come back as [`Error`] values labelled with `context`.
    pub fn scoped<T>(&self, context: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_health(context)?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let int = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let out = f();
        let errs = [
            pollster::block_on(int.pop()),
            pollster::block_on(val.pop()),
            pollster::block_on(oom.pop()),
        ];
        if let Some(e) = errs.into_iter().flatten().next() {
            return Err(Error::from_wgpu(context, e));
        }
        let out = out?;
        self.check_health(context)?;
        Ok(out)
    }

    fn check_health(&self, context: &str) -> Result<()> {
        if let Some(msg) = self.lost.lock().ok().and_then(|l| l.clone()) {
            return Err(Error::DeviceLost(msg));
        }
        if let Some(e) = self.uncaptured.lock().ok().and_then(|mut u| u.pop()) {
            return Err(Error::from_wgpu(context, e));
        }
        Ok(())
    }

    /// Wait until the GPU has finished all submitted work, at most [`Gpu::wait_timeout`]
    /// ([`Error::Timeout`] after that).
    pub fn wait_idle(&self) -> Result<()> {
        self.wait(None, "all submitted work")
    }

    /// Wait until the GPU has finished `submission` (and everything submitted before it), at
    /// most [`Gpu::wait_timeout`].
    pub(crate) fn wait_for(&self, submission: wgpu::SubmissionIndex) -> Result<()> {
        self.wait(Some(submission), "a submission")
    }

    fn wait(&self, submission: Option<wgpu::SubmissionIndex>, what: &str) -> Result<()> {
        let timeout = self.wait_timeout();
        let r = self.device.poll(wgpu::PollType::Wait {
            submission_index: submission,
            timeout: Some(timeout),
        });
        match r {
            Ok(_) => Ok(()),
            Err(wgpu::PollError::Timeout) => {
                self.check_health("waiting for the GPU")?;
                Err(Error::Timeout {
                    context: what.into(),
                    seconds: timeout.as_secs_f64(),
                })
            }
            Err(e) => {
                self.check_health("waiting for the GPU")?;
                Err(Error::Internal {
                    context: "waiting for the GPU".into(),
                    message: e.to_string(),
                })
            }
        }
    }

    /// Poll the device without sleeping until `done` holds (a map callback has run) or the
    /// spin time has passed; whether it holds. Non-blocking polls name no submission: wgpu
    /// 30 asserts (and panics) when a zero-timeout wait for a submission races with another
    /// thread's poll emptying the queue.
    pub(crate) fn spin_until(&self, mut done: impl FnMut() -> bool) -> bool {
        let spin = self.spin_wait();
        if spin.is_zero() {
            return done();
        }
        let t0 = std::time::Instant::now();
        loop {
            if done() {
                return true;
            }
            if t0.elapsed() >= spin || self.device.poll(wgpu::PollType::Poll).is_err() {
                return done();
            }
            std::hint::spin_loop();
        }
    }

    /// Largest storage binding in bytes.
    pub(crate) fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }
}
