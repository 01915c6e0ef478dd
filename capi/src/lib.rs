//! # pompc's C ABI
//!
//! A stable C interface over pompc for engines that are not written in Rust (Unity and Godot
//! native plugins, Unreal and ROS 2 nodes, plain C and C++): opaque handles for a device
//! (`pompc_gpu`), a world model (`pompc_model`), TD-MPC2's planner over it
//! (`pompc_planner`) and classic MPPI over dynamics written in WGSL (`pompc_mppi`).
//! `include/pompc.h` is generated from this crate by cbindgen (`tests/header.rs` fails when
//! it is out of date; `POMPC_BLESS=1` rewrites it).
//!
//! Rules every function follows:
//! - It returns a [`PompcStatus`]; on failure `pompc_last_error()` holds the message
//!   (thread-local, UTF-8). The exceptions are `pompc_version()`, `pompc_abi_version()`,
//!   `pompc_last_error()` and `pompc_status_name()`, which cannot fail.
//! - No panic crosses the boundary: one is caught and returned as
//!   `POMPC_STATUS_PANIC` (the library must be built with unwinding, Rust's default).
//! - NULL handles and pointers are `POMPC_STATUS_NULL_ARGUMENT`; an array whose length is
//!   not the one required is `POMPC_STATUS_SHAPE`. An array of length 0 may be NULL.
//! - Arrays are caller-owned and are only read or written during the call.
//! - Strings are NUL-terminated UTF-8, at most `POMPC_MAX_NAME_BYTES` (names),
//!   `POMPC_MAX_PATH_BYTES` (paths) or `POMPC_MAX_WGSL_BYTES` (WGSL) long; the search for
//!   the NUL stops there (`POMPC_STATUS_INVALID_ARGUMENT`).
//! - A handle keeps what it was made from alive (a planner its model, a model and an MPPI
//!   controller their device), so handles can be destroyed in any order.
//! - Calls on one `pompc_planner` or `pompc_mppi` must not overlap: one that finds the
//!   handle busy in another thread returns `POMPC_STATUS_BUSY`. `pompc_gpu` and
//!   `pompc_model` may be shared between threads freely. Destroying a handle while another
//!   thread is inside a call on it is undefined behaviour (destroy's `POMPC_STATUS_BUSY` is
//!   a best-effort check), as are destroying a handle twice and using it after destroy.
//! - A call refused for its arguments has no effect: outputs are checked before any work,
//!   so a bad output array does not cost a step or a plan. After a `POMPC_STATUS_PANIC` a planner or MPPI
//!   controller refuses further calls (`POMPC_STATUS_PANIC`) but can be destroyed.

use pompc::{Error, Gpu, GpuOptions, Precision, ShaderChecks};
use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

mod mppi;
mod planner;

pub use mppi::*;
pub use planner::*;

/// Version of this interface: bumped when a function or struct changes incompatibly. A
/// program that loads the library at run time compares `pompc_abi_version()` with this.
pub const POMPC_ABI_VERSION: u32 = 1;

/// What a call returned. 0 is success; every other value has a message in
/// `pompc_last_error()`.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PompcStatus {
    /// Success.
    Ok = 0,
    /// A required pointer or handle was NULL.
    NullArgument = 1,
    /// An argument that makes no sense (NaN, out of range, unknown name, not UTF-8).
    InvalidArgument = 2,
    /// An array of the wrong length, or sizes that do not fit together.
    Shape = 3,
    /// No GPU adapter matched the request.
    NoAdapter = 4,
    /// The GPU or its driver failed (device refused or lost, validation or internal error, a
    /// read-back that failed, MPPI rollouts cut short by the driver).
    Gpu = 5,
    /// The GPU ran out of memory (or the host, for a weights file's bytes).
    OutOfMemory = 6,
    /// The GPU did not finish within the device's wait timeout.
    Timeout = 7,
    /// WGSL that does not compile (the message gives the line in your own source).
    Shader = 8,
    /// A request over what the device or pompc allows.
    Limit = 9,
    /// A weights file that does not fit the model.
    Weights = 10,
    /// Reading a file failed (missing, unreadable).
    Io = 11,
    /// The device lacks a feature that the request needs.
    Unsupported = 12,
    /// Another thread is inside a call on this handle.
    Busy = 13,
    /// A bug in pompc: a panic was caught at the boundary.
    Panic = 14,
}

/// A failure on its way to C: the status and the message for `pompc_last_error()`.
#[derive(Debug)]
pub(crate) struct CError {
    status: PompcStatus,
    message: String,
}

impl CError {
    pub(crate) fn new(status: PompcStatus, message: impl Into<String>) -> Self {
        CError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn null(what: &str) -> Self {
        Self::new(PompcStatus::NullArgument, format!("{what} is NULL"))
    }
}

impl From<Error> for CError {
    fn from(e: Error) -> Self {
        use PompcStatus as S;
        let status = match &e {
            Error::NoAdapter { .. } => S::NoAdapter,
            Error::RequestDevice { .. }
            | Error::Validation { .. }
            | Error::DeviceLost(_)
            | Error::Internal { .. }
            | Error::Map { .. } => S::Gpu,
            Error::OutOfMemory { .. } => S::OutOfMemory,
            Error::Timeout { .. } => S::Timeout,
            Error::Shader { .. } => S::Shader,
            Error::Shape(_) => S::Shape,
            Error::Limit(_) => S::Limit,
            Error::Weights(_) => S::Weights,
            Error::Io { .. } => S::Io,
            Error::Unsupported(_) => S::Unsupported,
            Error::InvalidArgument(_) => S::InvalidArgument,
        };
        CError::new(status, e.to_string())
    }
}

pub(crate) type CResult<T> = std::result::Result<T, CError>;

thread_local! {
    // The message of this thread's last call; its buffer stays put until the next call.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // An interior NUL would cut the C string short.
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // try_with: during thread teardown the slot may be gone; then there is nobody to tell.
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = c);
}

/// Run one exported call: clear the last error, catch panics, turn errors into a status and
/// a message.
pub(crate) fn guard(f: impl FnOnce() -> CResult<()>) -> PompcStatus {
    let (status, message) = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => (PompcStatus::Ok, String::new()),
        Ok(Err(e)) => (e.status, e.message),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            (
                PompcStatus::Panic,
                format!("internal error (a bug in pompc, please report it): panic: {what}"),
            )
        }
    };
    set_last_error(&message);
    status
}

/// A handle from a pointer the caller passed.
///
/// # Safety
///
/// `p` is NULL or points to a live `T` that nobody mutates during the call.
pub(crate) unsafe fn handle<'a, T>(p: *const T, what: &str) -> CResult<&'a T> {
    // SAFETY: the caller's promise; NULL is refused by as_ref.
    unsafe { p.as_ref() }.ok_or_else(|| CError::null(what))
}

/// Lock a mutable handle's state without waiting: overlapping calls are the caller's bug, and
/// waiting would hide it (or deadlock a callback).
pub(crate) fn lock<'a, T>(m: &'a Mutex<T>, what: &str) -> CResult<MutexGuard<'a, T>> {
    match m.try_lock() {
        Ok(g) => Ok(g),
        Err(TryLockError::WouldBlock) => Err(busy(what)),
        Err(TryLockError::Poisoned(_)) => Err(CError::new(
            PompcStatus::Panic,
            format!("an earlier call on this {what} panicked; destroy it and create a new one"),
        )),
    }
}

fn busy(what: &str) -> CError {
    CError::new(
        PompcStatus::Busy,
        format!(
            "this {what} is in use by another thread: calls on one {what} must not overlap \
             (give each thread its own, or serialize the calls)"
        ),
    )
}

/// Whether a mutable handle may be destroyed: not while another thread holds its lock
/// (`POMPC_STATUS_BUSY`), but after a call on it panicked (a poisoned lock), since destroying
/// it is then the only thing left to do with it.
pub(crate) fn idle<T>(m: &Mutex<T>, what: &str) -> CResult<()> {
    match m.try_lock() {
        Ok(_) | Err(TryLockError::Poisoned(_)) => Ok(()),
        Err(TryLockError::WouldBlock) => Err(busy(what)),
    }
}

/// Destroy a boxed handle (NULL: nothing to do). A handle whose lock is held by a call in
/// another thread is left alone and reported as `POMPC_STATUS_BUSY`.
///
/// # Safety
///
/// `p` is NULL or came from `Box::into_raw` and was not destroyed yet.
pub(crate) unsafe fn destroy<T>(p: *mut T, busy: impl FnOnce(&T) -> CResult<()>) -> PompcStatus {
    guard(|| {
        if p.is_null() {
            return Ok(());
        }
        // SAFETY: the caller's promise.
        busy(unsafe { &*p })?;
        // SAFETY: as above; the box is dropped once.
        drop(unsafe { Box::from_raw(p) });
        Ok(())
    })
}

/// Check an out-pointer for a handle and set it to NULL, so that a failed create leaves
/// NULL behind.
///
/// # Safety
///
/// `out` is NULL or valid for a pointer write.
pub(crate) unsafe fn out_handle<T>(out: *mut *mut T, what: &str) -> CResult<()> {
    if out.is_null() {
        return Err(CError::null(what));
    }
    if !out.is_aligned() {
        return Err(misaligned(what));
    }
    // SAFETY: checked non-null and aligned; the caller promised it is writable.
    unsafe { out.write(std::ptr::null_mut()) };
    Ok(())
}

/// Write a plain value through a caller's pointer.
///
/// # Safety
///
/// `out` is NULL or valid for a write of `T`.
pub(crate) unsafe fn write<T>(out: *mut T, value: T, what: &str) -> CResult<()> {
    if out.is_null() {
        return Err(CError::null(what));
    }
    if !out.is_aligned() {
        return Err(misaligned(what));
    }
    // SAFETY: as out_handle; `write` does not read (or drop) what was there.
    unsafe { out.write(value) };
    Ok(())
}

fn misaligned(what: &str) -> CError {
    CError::new(
        PompcStatus::InvalidArgument,
        format!("{what} is not aligned for its type"),
    )
}

/// Check a caller's array of `len` values of `T` before it is used: a byte size that no
/// allocation can have is `POMPC_STATUS_LIMIT`, NULL (unless `len` is 0)
/// `POMPC_STATUS_NULL_ARGUMENT`, a pointer misaligned for `T` `POMPC_STATUS_INVALID_ARGUMENT`.
fn check_array<T>(p: *const T, len: usize, what: &str) -> CResult<()> {
    if len == 0 {
        return Ok(());
    }
    if len
        .checked_mul(size_of::<T>())
        .is_none_or(|bytes| bytes > isize::MAX as usize)
    {
        return Err(CError::new(
            PompcStatus::Limit,
            format!("{what} has length {len}: more bytes than any array can hold"),
        ));
    }
    if p.is_null() {
        return Err(CError::null(what));
    }
    if !p.is_aligned() {
        return Err(misaligned(what));
    }
    Ok(())
}

fn wrong_length(what: &str, len: usize, expected: usize) -> CError {
    CError::new(
        PompcStatus::Shape,
        format!("{what} has length {len}, expected {expected}"),
    )
}

/// A caller's input array of `len` values, which must be `expected` long.
///
/// # Safety
///
/// `p` is NULL or valid for reads of `len` values of `T`.
pub(crate) unsafe fn input<'a, T>(
    p: *const T,
    len: usize,
    expected: usize,
    what: &str,
) -> CResult<&'a [T]> {
    if len != expected {
        return Err(wrong_length(what, len, expected));
    }
    check_array(p, len, what)?;
    if len == 0 {
        return Ok(&[]);
    }
    // SAFETY: non-null, aligned, at most isize::MAX bytes (check_array), and the caller
    // promised `len` readable values.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// A caller's output array, checked when the call starts, before it does anything: a call
/// whose output is NULL, misaligned or of the wrong length then fails without effect (no
/// step taken, no plan made) instead of failing after its work.
pub(crate) struct Out<T> {
    p: *mut T,
    len: usize,
    what: &'static str,
}

impl<T: Copy> Out<T> {
    /// An output of `len` values, which must be `expected` long.
    ///
    /// # Safety
    ///
    /// `p` is NULL or valid for writes of `len` values of `T` until [`Out::write`].
    pub(crate) unsafe fn new(
        p: *mut T,
        len: usize,
        expected: usize,
        what: &'static str,
    ) -> CResult<Self> {
        if len != expected {
            return Err(wrong_length(what, len, expected));
        }
        check_array(p, len, what)?;
        Ok(Out { p, len, what })
    }

    /// An output that the caller may skip with length 0 (`None`), else as [`Out::new`].
    ///
    /// # Safety
    ///
    /// As [`Out::new`].
    pub(crate) unsafe fn optional(
        p: *mut T,
        len: usize,
        expected: usize,
        what: &'static str,
    ) -> CResult<Option<Self>> {
        if len == 0 {
            return Ok(None);
        }
        if len != expected {
            return Err(CError::new(
                PompcStatus::Shape,
                format!("{what} has length {len}, expected {expected} (or 0 to skip it)"),
            ));
        }
        // SAFETY: passed on.
        unsafe { Self::new(p, len, expected, what) }.map(Some)
    }

    /// Copy `data` out. No reference to the caller's (possibly uninitialized) memory is
    /// made.
    pub(crate) fn write(self, data: &[T]) -> CResult<()> {
        if data.len() != self.len {
            return Err(wrong_length(self.what, self.len, data.len()));
        }
        if self.len > 0 {
            // SAFETY: checked by Out::new (non-null, aligned, `len` writable values
            // promised); `data` is ours, so the two cannot overlap.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.p, self.len) };
        }
        Ok(())
    }
}

/// Longest name accepted (a backend list, an adapter or problem name), in bytes before the
/// NUL.
pub const POMPC_MAX_NAME_BYTES: usize = 4096;
/// Longest file path accepted, in bytes before the NUL.
pub const POMPC_MAX_PATH_BYTES: usize = 65536;
/// Longest WGSL source accepted, in bytes before the NUL.
pub const POMPC_MAX_WGSL_BYTES: usize = 16 << 20;

/// A NUL-terminated UTF-8 string of at most `max` bytes, or `None` for NULL. The scan for
/// the NUL stops after `max` bytes, so a string that lacks its NUL is refused there instead
/// of being read on through whatever memory follows it.
///
/// # Safety
///
/// `p` is NULL or points to a NUL-terminated string, or to at least `max` readable bytes.
pub(crate) unsafe fn opt_str<'a>(
    p: *const c_char,
    max: usize,
    what: &str,
) -> CResult<Option<&'a str>> {
    if p.is_null() {
        return Ok(None);
    }
    let mut n = 0;
    // SAFETY: the caller's promise: every byte up to the NUL, or the first `max`, is
    // readable.
    while unsafe { *p.add(n) } != 0 {
        n += 1;
        if n == max {
            return Err(CError::new(
                PompcStatus::InvalidArgument,
                format!(
                    "{what} has no NUL within {max} bytes: not a NUL-terminated string, or \
                     longer than the {max} bytes allowed"
                ),
            ));
        }
    }
    // SAFETY: the n bytes before the NUL were read above.
    let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), n) };
    std::str::from_utf8(bytes).map(Some).map_err(|e| {
        CError::new(
            PompcStatus::InvalidArgument,
            format!("{what} is not UTF-8: {e}"),
        )
    })
}

/// A required NUL-terminated UTF-8 string.
///
/// # Safety
///
/// As [`opt_str`].
pub(crate) unsafe fn req_str<'a>(p: *const c_char, max: usize, what: &str) -> CResult<&'a str> {
    // SAFETY: passed on.
    unsafe { opt_str(p, max, what) }?.ok_or_else(|| CError::null(what))
}

/// The library's version (`"0.1.0"`), a static NUL-terminated string.
#[unsafe(no_mangle)]
pub extern "C" fn pompc_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// `POMPC_ABI_VERSION` of the library that was loaded.
#[unsafe(no_mangle)]
pub extern "C" fn pompc_abi_version() -> u32 {
    POMPC_ABI_VERSION
}

/// The message of this thread's last failed call, or `""` after a successful one. UTF-8,
/// NUL-terminated, owned by the library: valid until this thread's next call of a function
/// that returns a `pompc_status` (which clears or replaces it) or the thread's end.
/// `pompc_version()`, `pompc_abi_version()`, `pompc_last_error()` and `pompc_status_name()`
/// leave it; other threads' calls never touch it.
#[unsafe(no_mangle)]
pub extern "C" fn pompc_last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|e| e.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// The name of a status (`"POMPC_STATUS_SHAPE"`), a static NUL-terminated string;
/// `"POMPC_STATUS_UNKNOWN"` for a value that is none.
#[unsafe(no_mangle)]
pub extern "C" fn pompc_status_name(status: i32) -> *const c_char {
    let s: &CStr = match status {
        0 => c"POMPC_STATUS_OK",
        1 => c"POMPC_STATUS_NULL_ARGUMENT",
        2 => c"POMPC_STATUS_INVALID_ARGUMENT",
        3 => c"POMPC_STATUS_SHAPE",
        4 => c"POMPC_STATUS_NO_ADAPTER",
        5 => c"POMPC_STATUS_GPU",
        6 => c"POMPC_STATUS_OUT_OF_MEMORY",
        7 => c"POMPC_STATUS_TIMEOUT",
        8 => c"POMPC_STATUS_SHADER",
        9 => c"POMPC_STATUS_LIMIT",
        10 => c"POMPC_STATUS_WEIGHTS",
        11 => c"POMPC_STATUS_IO",
        12 => c"POMPC_STATUS_UNSUPPORTED",
        13 => c"POMPC_STATUS_BUSY",
        14 => c"POMPC_STATUS_PANIC",
        _ => c"POMPC_STATUS_UNKNOWN",
    };
    s.as_ptr()
}

/// Bytes of `name` and `driver`, the terminating NUL
/// included; longer names are cut at a character boundary.
pub const POMPC_NAME_LEN: usize = 256;

/// An adapter (a GPU, or a software one such as lavapipe) as wgpu sees it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PompcAdapterInfo {
    /// The adapter's name, NUL-terminated UTF-8.
    pub name: [c_char; POMPC_NAME_LEN],
    /// Driver name and version, NUL-terminated UTF-8.
    pub driver: [c_char; POMPC_NAME_LEN],
    /// `"vulkan"`, `"metal"`, `"dx12"` or `"gl"`, NUL-terminated.
    pub backend: [c_char; 16],
    /// `"discrete"`, `"integrated"`, `"virtual"`, `"cpu"` or `"other"`, NUL-terminated.
    pub device_type: [c_char; 16],
    /// PCI vendor id (0 where the backend has none).
    pub vendor: u32,
    /// PCI device id (0 where the backend has none).
    pub device: u32,
}

/// Copy `s` into a fixed C buffer: NUL-terminated, cut at a UTF-8 boundary, zero-filled.
fn fill<const N: usize>(dst: &mut [c_char; N], s: &str) {
    let mut end = s.len().min(N - 1);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    dst.fill(0);
    for (d, b) in dst.iter_mut().zip(&s.as_bytes()[..end]) {
        *d = *b as c_char;
    }
}

fn adapter_info(i: &wgpu::AdapterInfo) -> PompcAdapterInfo {
    let mut out = PompcAdapterInfo {
        name: [0; POMPC_NAME_LEN],
        driver: [0; POMPC_NAME_LEN],
        backend: [0; 16],
        device_type: [0; 16],
        vendor: i.vendor,
        device: i.device,
    };
    fill(&mut out.name, &i.name);
    let driver = format!("{} {}", i.driver, i.driver_info);
    fill(&mut out.driver, driver.trim());
    let backend = match i.backend {
        wgpu::Backend::Vulkan => "vulkan",
        wgpu::Backend::Metal => "metal",
        wgpu::Backend::Dx12 => "dx12",
        wgpu::Backend::Gl => "gl",
        _ => "other",
    };
    fill(&mut out.backend, backend);
    let t = match i.device_type {
        wgpu::DeviceType::DiscreteGpu => "discrete",
        wgpu::DeviceType::IntegratedGpu => "integrated",
        wgpu::DeviceType::VirtualGpu => "virtual",
        wgpu::DeviceType::Cpu => "cpu",
        wgpu::DeviceType::Other => "other",
    };
    fill(&mut out.device_type, t);
    out
}

/// Backends named in a comma list (`"vulkan"`, `"metal"`, `"dx12"`, `"gl"`); NULL or `""`:
/// none named (the environment's `WGPU_BACKEND`, else all).
fn backends(s: Option<&str>) -> CResult<Option<wgpu::Backends>> {
    let Some(s) = s.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let known = |b: &str| {
        matches!(
            b.trim().to_ascii_lowercase().as_str(),
            "vulkan" | "vk" | "metal" | "mtl" | "dx12" | "d3d12" | "gl" | "gles" | "opengl"
        )
    };
    if let Some(bad) = s.split(',').find(|b| !known(b)) {
        return Err(CError::new(
            PompcStatus::InvalidArgument,
            format!("unknown backend {bad:?}: use vulkan, metal, dx12 or gl (comma-separated)"),
        ));
    }
    Ok(Some(wgpu::Backends::from_comma_list(s)))
}

/// List the adapters wgpu sees for `backend` (a comma list of `"vulkan"`, `"metal"`,
/// `"dx12"`, `"gl"`; NULL or `""` for `WGPU_BACKEND` or all). Writes up to `capacity` of them
/// into `out` (NULL when `capacity` is 0) and their total number into `*count`: call once
/// with `capacity` 0 to size the array.
///
/// # Safety
///
/// `backend` is NULL or a NUL-terminated string; `out` is NULL or valid for `capacity`
/// writes; `count` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_adapters(
    backend: *const c_char,
    out: *mut PompcAdapterInfo,
    capacity: usize,
    count: *mut usize,
) -> PompcStatus {
    guard(|| {
        if count.is_null() {
            return Err(CError::null("count"));
        }
        // SAFETY: the caller's promise.
        let b = backends(unsafe { opt_str(backend, POMPC_MAX_NAME_BYTES, "backend") }?)?;
        check_array(out, capacity, "out (with a capacity above 0)")?;
        let infos: Vec<PompcAdapterInfo> = pompc::gpu::enumerate_adapters(b)
            .iter()
            .map(|a| adapter_info(&a.get_info()))
            .collect();
        let n = infos.len().min(capacity);
        // SAFETY: `out` holds `capacity` >= n values (checked by check_array).
        unsafe { Out::new(out, n, n, "out") }?.write(&infos[..n])?;
        // SAFETY: the caller's promise.
        unsafe { write(count, infos.len(), "count") }
    })
}

/// Use pompc's default: bounds checks off in release builds, on in debug builds.
pub const POMPC_SHADER_CHECKS_DEFAULT: u32 = 0;
/// Keep wgpu's runtime bounds checks in every shader (slower; for debugging).
pub const POMPC_SHADER_CHECKS_ON: u32 = 1;
/// No runtime bounds checks in pompc's own shaders.
pub const POMPC_SHADER_CHECKS_OFF: u32 = 2;

/// Precision of the world model's layers: tensor cores where the device has them, else f32
/// (`POMPC_PRECISION` in the environment overrides it).
pub const POMPC_PRECISION_AUTO: u32 = 0;
/// f32 storage and arithmetic.
pub const POMPC_PRECISION_F32: u32 = 1;
/// f16 weights and activations, f32 arithmetic (needs shader-f16).
pub const POMPC_PRECISION_F16: u32 = 2;
/// f16 storage and tensor-core products (needs cooperative matrices).
pub const POMPC_PRECISION_COOP: u32 = 3;

/// How to choose and open a device; `pompc_gpu_config_default()` fills in the defaults.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PompcGpuConfig {
    /// Backends to consider, a comma list of `"vulkan"`, `"metal"`, `"dx12"`, `"gl"`; NULL
    /// or `""`: `WGPU_BACKEND` if set, else all. At most `POMPC_MAX_NAME_BYTES`.
    pub backend: *const c_char,
    /// Take the first adapter whose name contains this (case-insensitive); NULL or `""`:
    /// `WGPU_ADAPTER_NAME` if set, else the best adapter. At most `POMPC_MAX_NAME_BYTES`.
    pub adapter_name: *const c_char,
    /// Nonzero: prefer integrated (low-power) GPUs over discrete ones.
    pub low_power: u32,
    /// `POMPC_PRECISION_*`.
    pub precision: u32,
    /// `POMPC_SHADER_CHECKS_*`.
    pub shader_checks: u32,
    /// How long a wait for the GPU may take, in milliseconds (1 ms to 1 day; 0: 60 s).
    pub wait_timeout_ms: u32,
}

/// Fill `*out` with the defaults: any backend, the best adapter, automatic precision,
/// pompc's shader checks, a 60 s wait timeout.
///
/// # Safety
///
/// `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_gpu_config_default(out: *mut PompcGpuConfig) -> PompcStatus {
    // SAFETY: the caller's promise.
    guard(|| unsafe { write(out, gpu_config_default(), "out") })
}

fn gpu_config_default() -> PompcGpuConfig {
    PompcGpuConfig {
        backend: std::ptr::null(),
        adapter_name: std::ptr::null(),
        low_power: 0,
        precision: POMPC_PRECISION_AUTO,
        shader_checks: POMPC_SHADER_CHECKS_DEFAULT,
        wait_timeout_ms: 0,
    }
}

/// An open GPU device. Share it between threads freely; it lives until it and every model,
/// planner and MPPI controller made from it are destroyed.
pub struct PompcGpu {
    pub(crate) gpu: Arc<Gpu>,
}

/// # Safety
///
/// The config's strings are NULL or NUL-terminated.
unsafe fn gpu_options(c: &PompcGpuConfig) -> CResult<GpuOptions> {
    let mut o = GpuOptions {
        // SAFETY: the caller of pompc_gpu_create promised valid strings.
        backends: backends(unsafe { opt_str(c.backend, POMPC_MAX_NAME_BYTES, "config.backend") }?)?,
        ..GpuOptions::default()
    };
    // SAFETY: as above.
    let name = unsafe { opt_str(c.adapter_name, POMPC_MAX_NAME_BYTES, "config.adapter_name") }?;
    o.adapter_name = name.filter(|s| !s.is_empty()).map(str::to_string);
    if c.low_power != 0 {
        o.power_preference = wgpu::PowerPreference::LowPower;
    }
    o.precision = match c.precision {
        POMPC_PRECISION_AUTO => None,
        POMPC_PRECISION_F32 => Some(Precision::F32),
        POMPC_PRECISION_F16 => Some(Precision::F16),
        POMPC_PRECISION_COOP => Some(Precision::TensorCore),
        p => {
            return Err(CError::new(
                PompcStatus::InvalidArgument,
                format!("config.precision = {p}: use a POMPC_PRECISION_* value (0 to 3)"),
            ));
        }
    };
    o.shader_checks = match c.shader_checks {
        POMPC_SHADER_CHECKS_DEFAULT => ShaderChecks::default(),
        POMPC_SHADER_CHECKS_ON => ShaderChecks::Checked,
        POMPC_SHADER_CHECKS_OFF => ShaderChecks::Trusted,
        s => {
            return Err(CError::new(
                PompcStatus::InvalidArgument,
                format!("config.shader_checks = {s}: use a POMPC_SHADER_CHECKS_* value (0 to 2)"),
            ));
        }
    };
    if c.wait_timeout_ms != 0 {
        o.wait_timeout = Duration::from_millis(c.wait_timeout_ms as u64);
    }
    Ok(o)
}

/// Choose an adapter and open a device on it (`config` NULL: the defaults). On failure
/// `*out` is NULL.
///
/// # Safety
///
/// `config` is NULL or points to a config whose strings are NULL or NUL-terminated; `out`
/// is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_gpu_create(
    config: *const PompcGpuConfig,
    out: *mut *mut PompcGpu,
) -> PompcStatus {
    guard(|| {
        // SAFETY: the caller's promise.
        unsafe { out_handle(out, "out") }?;
        // SAFETY: the caller's promise.
        let cfg = unsafe { config.as_ref() }
            .copied()
            .unwrap_or_else(gpu_config_default);
        // SAFETY: the caller's promise for the config's strings.
        let gpu = Gpu::new(unsafe { gpu_options(&cfg) }?)?;
        let h = Box::into_raw(Box::new(PompcGpu { gpu: Arc::new(gpu) }));
        // SAFETY: checked by out_handle.
        unsafe { out.write(h) };
        Ok(())
    })
}

/// The adapter a device was opened on.
///
/// # Safety
///
/// `gpu` is NULL or a live handle; `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_gpu_get_info(
    gpu: *const PompcGpu,
    out: *mut PompcAdapterInfo,
) -> PompcStatus {
    guard(|| {
        // SAFETY: the caller's promise.
        let g = unsafe { handle(gpu, "gpu") }?;
        // SAFETY: as above.
        unsafe { write(out, adapter_info(g.gpu.info()), "out") }
    })
}

/// Release a device handle (NULL: nothing). Models, planners and MPPI controllers made from
/// it keep the device open until they are destroyed too.
///
/// # Safety
///
/// `gpu` is NULL or a live handle, destroyed once, not in use by another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pompc_gpu_destroy(gpu: *mut PompcGpu) -> PompcStatus {
    // SAFETY: the caller's promise.
    unsafe { destroy(gpu, |_| Ok(())) }
}

// What the thread-safety rules above rely on.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<PompcGpu>();
    shareable::<PompcModel>();
    shareable::<PompcPlanner>();
    shareable::<PompcMppi>();
};

#[cfg(test)]
mod tests {
    use super::*;

    fn last() -> String {
        // SAFETY: pompc_last_error returns a valid C string.
        unsafe { CStr::from_ptr(pompc_last_error()) }
            .to_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let s = guard(|| panic!("deliberate {}", 42));
        assert_eq!(s, PompcStatus::Panic);
        assert!(last().contains("deliberate 42"), "{}", last());
        assert_eq!(guard(|| Ok(())), PompcStatus::Ok);
        assert_eq!(last(), "");
    }

    #[test]
    fn a_busy_handle_is_an_error_and_a_poisoned_one_too() {
        let m = Mutex::new(0);
        let held = m.lock().unwrap();
        let e = lock(&m, "planner").unwrap_err();
        assert_eq!(e.status, PompcStatus::Busy);
        drop(held);
        assert!(lock(&m, "planner").is_ok());
        let _ = std::thread::scope(|s| {
            s.spawn(|| {
                let _g = m.lock().unwrap();
                panic!("poison");
            })
            .join()
        });
        assert_eq!(lock(&m, "planner").unwrap_err().status, PompcStatus::Panic);
    }

    /// Poison a handle's lock the way a panic inside a call on it does.
    fn poison<T: Send>(m: &Mutex<T>) {
        let _ = std::thread::scope(|s| {
            s.spawn(|| {
                let _g = m.lock().unwrap();
                panic!("deliberate panic while holding the lock");
            })
            .join()
        });
        assert!(m.is_poisoned());
    }

    /// After a call panicked (a poisoned lock) a controller or planner refuses further calls
    /// with POMPC_STATUS_PANIC, and can still be destroyed, as that message says.
    #[test]
    fn a_handle_whose_call_panicked_refuses_calls_and_can_be_destroyed() {
        use pompc::model::{ModelSpec, Weights, WorldModel};
        // SAFETY: valid pointers and live handles throughout.
        unsafe {
            let mut g = std::ptr::null_mut();
            assert_eq!(pompc_gpu_create(std::ptr::null(), &mut g), PompcStatus::Ok);
            let problem = PompcMppiProblem {
                name: std::ptr::null(),
                wgsl: c"fn dynamics(x: State, u: Control, t: u32) -> State { return x; }
                        fn running_cost(x: State, u: Control, t: u32) -> f32 { return 0.0; }
                        fn terminal_cost(x: State) -> f32 { return 0.0; }"
                    .as_ptr(),
                state_dim: 1,
                control_dim: 1,
                param_len: 0,
            };
            let mut c = std::mem::zeroed::<PompcMppiConfig>();
            assert_eq!(pompc_mppi_config_default(&mut c), PompcStatus::Ok);
            (c.horizon, c.samples) = (4, 8);
            let mut h = std::ptr::null_mut();
            assert_eq!(
                pompc_mppi_create(g, &problem, &c, &mut h),
                PompcStatus::Ok,
                "{}",
                last()
            );
            poison(&(*h).inner);
            let mut u = [0f32];
            let s = pompc_mppi_step(
                h,
                [0f32].as_ptr(),
                1,
                u.as_mut_ptr(),
                1,
                std::ptr::null_mut(),
            );
            assert_eq!(s, PompcStatus::Panic);
            assert!(last().contains("panicked"), "{}", last());
            assert_eq!(pompc_mppi_destroy(h), PompcStatus::Ok, "{}", last());

            let gpu = (*g).gpu.clone();
            let w = Weights::init(&ModelSpec::tiny(3, 1), 1).unwrap();
            let m = Box::into_raw(Box::new(PompcModel {
                model: Arc::new(WorldModel::new(&gpu, &w).unwrap()),
                gpu,
            }));
            let mut pc = std::mem::zeroed::<PompcPlannerConfig>();
            assert_eq!(pompc_planner_config_default(1, &mut pc), PompcStatus::Ok);
            (
                pc.num_samples,
                pc.num_elites,
                pc.num_pi_trajs,
                pc.iterations,
            ) = (8, 2, 2, 1);
            let mut p = std::ptr::null_mut();
            assert_eq!(
                pompc_planner_create(m, &pc, &mut p),
                PompcStatus::Ok,
                "{}",
                last()
            );
            poison(&(*p).inner);
            let mut a = [0f32];
            let s = pompc_planner_plan(
                p,
                [0f32; 3].as_ptr(),
                3,
                [1u8].as_ptr(),
                1,
                a.as_mut_ptr(),
                1,
            );
            assert_eq!(s, PompcStatus::Panic);
            assert_eq!(pompc_planner_destroy(p), PompcStatus::Ok, "{}", last());
            assert_eq!(pompc_model_destroy(m), PompcStatus::Ok);
            assert_eq!(pompc_gpu_destroy(g), PompcStatus::Ok);
        }
    }

    /// While another thread holds a controller's or planner's lock (is inside a call on it),
    /// every function on that handle, destroy included, returns POMPC_STATUS_BUSY and does
    /// nothing; once the lock is free the handle works and is destroyed.
    #[test]
    fn every_call_on_a_busy_handle_is_busy() {
        use pompc::model::{ModelSpec, Weights, WorldModel};
        use std::ptr::{null, null_mut};
        let busy = |s: PompcStatus| {
            assert_eq!(s, PompcStatus::Busy, "{}", last());
            assert!(last().contains("in use by another thread"), "{}", last());
        };
        // SAFETY: valid pointers and live handles throughout.
        unsafe {
            let mut g = null_mut();
            assert_eq!(pompc_gpu_create(null(), &mut g), PompcStatus::Ok);
            let problem = PompcMppiProblem {
                name: null(),
                wgsl: c"fn dynamics(x: State, u: Control, t: u32) -> State { return x; }
                        fn running_cost(x: State, u: Control, t: u32) -> f32 { return 0.0; }
                        fn terminal_cost(x: State) -> f32 { return 0.0; }"
                    .as_ptr(),
                state_dim: 1,
                control_dim: 1,
                param_len: 1,
            };
            let mut c = std::mem::zeroed::<PompcMppiConfig>();
            assert_eq!(pompc_mppi_config_default(&mut c), PompcStatus::Ok);
            (c.horizon, c.samples) = (2, 4);
            let mut h = null_mut();
            assert_eq!(pompc_mppi_create(g, &problem, &c, &mut h), PompcStatus::Ok);
            let (mut u, mut seq, mut costs) = ([0f32], [0f32; 2], [0f32; 4]);
            let x = [0f32];
            assert_eq!(
                pompc_mppi_step(h, x.as_ptr(), 1, u.as_mut_ptr(), 1, null_mut()),
                PompcStatus::Ok
            );
            std::thread::scope(|s| {
                let hp = h as usize;
                let held = (*h).inner.lock().unwrap();
                s.spawn(move || {
                    let h = hp as *mut PompcMppi;
                    let mut info = PompcMppiInfo::default();
                    busy(pompc_mppi_get_info(h, &mut info));
                    busy(pompc_mppi_set_params(h, x.as_ptr(), 1));
                    busy(pompc_mppi_step(
                        h,
                        x.as_ptr(),
                        1,
                        u.as_mut_ptr(),
                        1,
                        null_mut(),
                    ));
                    busy(pompc_mppi_costs(h, costs.as_mut_ptr(), 4, null_mut(), 0));
                    busy(pompc_mppi_controls(h, seq.as_mut_ptr(), 2));
                    busy(pompc_mppi_set_controls(h, seq.as_ptr(), 2));
                    busy(pompc_mppi_reset(h));
                    busy(pompc_mppi_destroy(h));
                })
                .join()
                .unwrap();
                drop(held);
            });
            assert_eq!(pompc_mppi_reset(h), PompcStatus::Ok);
            assert_eq!(pompc_mppi_destroy(h), PompcStatus::Ok);

            let gpu = (*g).gpu.clone();
            let w = Weights::init(&ModelSpec::tiny(3, 1), 1).unwrap();
            let m = Box::into_raw(Box::new(PompcModel {
                model: Arc::new(WorldModel::new(&gpu, &w).unwrap()),
                gpu,
            }));
            let mut pc = std::mem::zeroed::<PompcPlannerConfig>();
            assert_eq!(pompc_planner_config_default(1, &mut pc), PompcStatus::Ok);
            (
                pc.num_samples,
                pc.num_elites,
                pc.num_pi_trajs,
                pc.iterations,
            ) = (8, 2, 2, 1);
            let mut p = null_mut();
            assert_eq!(pompc_planner_create(m, &pc, &mut p), PompcStatus::Ok);
            let (obs, first, mut a) = ([0f32; 3], [1u8], [0f32]);
            std::thread::scope(|s| {
                let pp = p as usize;
                let held = (*p).inner.lock().unwrap();
                s.spawn(move || {
                    let p = pp as *mut PompcPlanner;
                    let plan = pompc_planner_plan(
                        p,
                        obs.as_ptr(),
                        3,
                        first.as_ptr(),
                        1,
                        a.as_mut_ptr(),
                        1,
                    );
                    busy(plan);
                    let mut v = [0f32];
                    let last_plan =
                        pompc_planner_last_plan(p, null_mut(), 0, null_mut(), 0, v.as_mut_ptr(), 1);
                    busy(last_plan);
                    busy(pompc_planner_destroy(p));
                })
                .join()
                .unwrap();
                drop(held);
            });
            let plan = pompc_planner_plan(p, obs.as_ptr(), 3, first.as_ptr(), 1, a.as_mut_ptr(), 1);
            assert_eq!(plan, PompcStatus::Ok, "{}", last());
            assert_eq!(pompc_planner_destroy(p), PompcStatus::Ok);
            assert_eq!(pompc_model_destroy(m), PompcStatus::Ok);
            assert_eq!(pompc_gpu_destroy(g), PompcStatus::Ok);
        }
    }

    /// pompc_last_error is per thread: another thread's failures and successes leave this
    /// thread's message, and the pointer to it, as they were.
    #[test]
    fn the_last_error_is_per_thread() {
        // SAFETY: NULL is refused; the pointer is read while valid (no pompc call between).
        unsafe {
            assert_eq!(pompc_gpu_destroy(std::ptr::null_mut()), PompcStatus::Ok);
            assert_eq!(
                pompc_gpu_config_default(std::ptr::null_mut()),
                PompcStatus::NullArgument
            );
            let before = pompc_last_error();
            let text = CStr::from_ptr(before).to_owned();
            std::thread::spawn(|| {
                let s = pompc_mppi_config_default(std::ptr::null_mut());
                assert_eq!(s, PompcStatus::NullArgument);
                assert_eq!(pompc_gpu_destroy(std::ptr::null_mut()), PompcStatus::Ok);
                assert_eq!(last(), "");
            })
            .join()
            .unwrap();
            assert_eq!(pompc_last_error(), before);
            assert_eq!(CStr::from_ptr(before), text.as_c_str());
            // The calls that cannot fail leave it too.
            let _ = (pompc_version(), pompc_abi_version(), pompc_status_name(3));
            assert_eq!(CStr::from_ptr(pompc_last_error()), text.as_c_str());
        }
    }

    #[test]
    fn fill_cuts_at_a_character_boundary() {
        let mut b = [1 as c_char; 4];
        fill(&mut b, "aé"); // 'é' is 2 bytes: "aé" fits 3 + NUL
        assert_eq!(b.map(|c| c as u8), [b'a', 0xc3, 0xa9, 0]);
        fill(&mut b, "abé"); // 4 bytes: é does not fit
        assert_eq!(b.map(|c| c as u8), [b'a', b'b', 0, 0]);
    }

    #[test]
    fn every_status_has_its_name() {
        for (s, n) in [
            (PompcStatus::Ok, "OK"),
            (PompcStatus::Shape, "SHAPE"),
            (PompcStatus::Panic, "PANIC"),
        ] {
            // SAFETY: static C strings.
            let name = unsafe { CStr::from_ptr(pompc_status_name(s as i32)) };
            assert_eq!(name.to_str().unwrap(), format!("POMPC_STATUS_{n}"));
        }
        for s in 0..=14 {
            // SAFETY: as above.
            let name = unsafe { CStr::from_ptr(pompc_status_name(s)) };
            assert_ne!(name.to_str().unwrap(), "POMPC_STATUS_UNKNOWN", "{s}");
        }
        // SAFETY: as above.
        let name = unsafe { CStr::from_ptr(pompc_status_name(15)) };
        assert_eq!(name.to_str().unwrap(), "POMPC_STATUS_UNKNOWN");
    }
}
