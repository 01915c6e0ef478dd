//! The one error type of pompc: every fallible call returns [`Result`].

/// Everything that can go wrong in pompc, with a message that says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No GPU adapter matched the request.
    #[error(
        "no GPU adapter found{detail}. pompc needs a Vulkan, Metal, DX12 or GL driver; on a \
         headless Linux machine install Mesa's software Vulkan (`apt-get install \
         mesa-vulkan-drivers`) and, to force it, set \
         VK_DRIVER_FILES=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json WGPU_BACKEND=vulkan. \
         `pompc info` lists the adapters wgpu can see"
    )]
    NoAdapter {
        /// What was asked for, e.g. " for backend vulkan and name containing \"nvidia\"".
        detail: String,
    },
    /// The adapter refused to open a device.
    #[error("could not open a device on adapter {adapter:?}: {message}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// wgpu's message.
        message: String,
    },
    /// wgpu rejected a call: a bug in pompc or in user-supplied WGSL or sizes.
    #[error("GPU validation error in {context}: {message}")]
    Validation {
        /// What pompc was doing.
        context: String,
        /// wgpu's message.
        message: String,
    },
    /// The device ran out of memory.
    #[error("GPU out of memory in {context}; use smaller batches or fewer samples ({message})")]
    OutOfMemory {
        /// What pompc was doing.
        context: String,
        /// wgpu's message.
        message: String,
    },
    /// The device was lost (driver reset, timeout or crash); create a new [`crate::Gpu`].
    #[error("GPU device lost: {0}. Create a new Gpu to continue")]
    DeviceLost(String),
    /// The GPU did not finish within the [`crate::Gpu`]'s wait timeout
    /// ([`crate::Gpu::set_wait_timeout`], 60 s by default). The work may still be running:
    /// later calls wait for it, and a device that never finishes must be replaced.
    #[error(
        "the GPU did not finish {context} within {seconds} s (the Gpu's wait timeout; \
         Gpu::set_wait_timeout or GpuOptions::with_wait_timeout change it). The work may still \
         be running and later calls wait for it first; if it never finishes (an endless loop in \
         user WGSL, a hung driver), create a new Gpu"
    )]
    Timeout {
        /// What pompc was waiting for.
        context: String,
        /// The timeout that expired, in seconds.
        seconds: f64,
    },
    /// Any other failure reported by wgpu or the driver.
    #[error("GPU error in {context}: {message}")]
    Internal {
        /// What pompc was doing.
        context: String,
        /// wgpu's message.
        message: String,
    },
    /// Mapping a buffer for read-back failed.
    #[error("reading back GPU buffer {label:?} failed: {message}")]
    Map {
        /// Buffer label.
        label: String,
        /// wgpu's message.
        message: String,
    },
    /// A shader failed to preprocess or compile.
    #[error("shader {name}: {message}")]
    Shader {
        /// Shader name (file stem).
        name: String,
        /// What went wrong, with line numbers of the source as written.
        message: String,
    },
    /// Shapes or sizes that do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A request over what the device allows.
    #[error("over the device limit: {0}")]
    Limit(String),
    /// A weights file or tensor that does not fit the model; the message names the tensor.
    #[error("weights: {0}")]
    Weights(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The device lacks an optional feature that the request needs (shader-f16, cooperative
    /// matrices); the message says which, and what to use instead.
    #[error("not supported on this device: {0}")]
    Unsupported(String),
    /// An argument that makes no sense (NaN, zero size, unknown name).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// `Result` with pompc's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The value of `r`, or a panic with its error's message: the panicking forms of the `try_`
/// functions.
#[track_caller]
pub(crate) fn or_panic<T>(r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

impl Error {
    /// Convert a wgpu error captured in `context`.
    pub(crate) fn from_wgpu(context: impl Into<String>, e: wgpu::Error) -> Self {
        let context = context.into();
        match e {
            wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory {
                context,
                message: e.to_string(),
            },
            wgpu::Error::Validation { description, .. } => Error::Validation {
                context,
                message: description,
            },
            wgpu::Error::Internal { description, .. } => Error::Internal {
                context,
                message: description,
            },
        }
    }
}
