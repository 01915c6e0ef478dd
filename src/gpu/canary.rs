//! Canary regions after buffers, for tests: with [`super::GpuOptions::canary`] set, every
//! [`super::GpuBuffer`] gets that many guard words after its last element, filled with
//! [`CANARY`]. Kernels are told a buffer's logical length (parameters and override constants,
//! never `arrayLength`) while the binding covers the guard, so a write past the end lands in it
//! whether or not the shader module checks bounds; [`super::Gpu::check_canaries`] (run after
//! every read-back when canaries are on) finds it.

use super::Gpu;
use crate::{Error, Result};
use std::sync::{Arc, Mutex, Weak};

/// The word a guard region holds. As f32 it is -2.9e-16 (no kernel output is that by chance);
/// it is neither the tests' NaN poison nor zero.
pub const CANARY: u32 = 0xA5A5_A5A5;

/// The guard words of one buffer: bytes `start..end` of `buffer`.
pub(crate) struct Region {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) label: String,
    pub(crate) len: usize,
}

/// The guard regions of the live buffers of one device.
#[derive(Default)]
pub(crate) struct Canaries {
    pub(crate) words: usize,
    live: Mutex<Vec<Weak<Region>>>,
}

impl Canaries {
    pub(crate) fn new(words: usize) -> Self {
        Canaries {
            words,
            live: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn register(&self, region: &Arc<Region>) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(region));
    }

    fn regions(&self) -> Vec<Arc<Region>> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|w| w.strong_count() > 0);
        live.iter().filter_map(Weak::upgrade).collect()
    }
}

/// `words` copies of [`CANARY`] as bytes.
pub(crate) fn canary_bytes(words: usize) -> Vec<u8> {
    bytemuck::cast_slice(&vec![CANARY; words]).to_vec()
}

impl Gpu {
    /// Guard words after every buffer ([`super::GpuOptions::canary`]; 0: none).
    pub fn canary_words(&self) -> usize {
        self.canaries.words
    }

    /// Read the guard region of every live buffer back and check that it still holds
    /// [`CANARY`]: an [`Error::Internal`] names each buffer a kernel wrote past the end of (and
    /// the first element written) and restores its guard, so the report comes once. `Ok` when
    /// canaries are off. Runs after every read-back ([`super::PendingReadback::wait`]) when they
    /// are on; its own submission is not counted in [`Gpu::counters`].
    pub fn check_canaries(&self) -> Result<()> {
        let regions = self.canaries.regions();
        if regions.is_empty() {
            return Ok(());
        }
        let total: u64 = regions.iter().map(|r| r.end - r.start).sum();
        let data = self.scoped("checking canaries", || {
            let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("pompc canaries"),
                size: total,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut enc = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("pompc canaries"),
                });
            let mut off = 0;
            for r in &regions {
                enc.copy_buffer_to_buffer(&r.buffer, r.start, &staging, off, r.end - r.start);
                off += r.end - r.start;
            }
            let submission = self.queue.submit([enc.finish()]);
            let (tx, rx) = std::sync::mpsc::channel();
            staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
            self.wait_for(submission)?;
            rx.recv()
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map_err(|message| Error::Map {
                    label: "pompc canaries".into(),
                    message,
                })?;
            let view = staging.get_mapped_range(..).map_err(|e| Error::Map {
                label: "pompc canaries".into(),
                message: e.to_string(),
            })?;
            let words: Vec<u32> = bytemuck::pod_collect_to_vec(&view);
            drop(view);
            staging.unmap();
            Ok(words)
        })?;
        let mut bad = Vec::new();
        let mut at = 0;
        for r in &regions {
            let n = ((r.end - r.start) / 4) as usize;
            let guard = &data[at..at + n];
            at += n;
            if let Some(k) = guard.iter().position(|&w| w != CANARY) {
                let written = guard.iter().filter(|&&w| w != CANARY).count();
                bad.push(format!(
                    "buffer {:?} of {} elements: {written} of its {n} guard words written, the \
                     first at byte {} past its data (word {:#010x})",
                    r.label,
                    r.len,
                    4 * k,
                    guard[k]
                ));
                // Report each overrun once: the buffer may outlive this check.
                self.queue
                    .write_buffer(&r.buffer, r.start, &canary_bytes(n));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(Error::Internal {
                context: "checking canaries".into(),
                message: format!(
                    "a kernel wrote past the end of its output: {}",
                    bad.join("; ")
                ),
            })
        }
    }
}
