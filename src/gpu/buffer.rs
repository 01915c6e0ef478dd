//! Typed storage buffers with upload and download.

use super::Gpu;
use super::canary::{Region, canary_bytes};
use crate::{Error, Result};
use bytemuck::Pod;
use std::marker::PhantomData;
use std::sync::Arc;

/// A storage buffer of `len` elements of `T`, readable and writable by kernels and copyable
/// both ways.
///
/// ```no_run
/// # fn main() -> pompc::Result<()> {
/// let gpu = pompc::Gpu::new(Default::default())?;
/// let buf = pompc::GpuBuffer::from_slice(&gpu, "x", &[1.0f32, 2.0, 3.0])?;
/// assert_eq!(buf.download(&gpu)?, vec![1.0, 2.0, 3.0]);
/// # Ok(()) }
/// ```
pub struct GpuBuffer<T: Pod> {
    pub(crate) buffer: wgpu::Buffer,
    len: usize,
    label: String,
    // The guard words after the data, on a device with canaries (kept registered while any
    // clone lives).
    canary: Option<Arc<Region>>,
    _t: PhantomData<T>,
}

impl<T: Pod> Clone for GpuBuffer<T> {
    fn clone(&self) -> Self {
        GpuBuffer {
            buffer: self.buffer.clone(),
            len: self.len,
            label: self.label.clone(),
            canary: self.canary.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Pod> std::fmt::Debug for GpuBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GpuBuffer<{}>({:?}, {})",
            std::any::type_name::<T>(),
            self.label,
            self.len
        )
    }
}

/// Bytes of a buffer holding `len` elements: at least 16 (wgpu rejects empty bindings) and a
/// multiple of 16; `None` when that overflows.
pub(crate) fn checked_padded_bytes<T>(len: usize) -> Option<u64> {
    // Whole 16-byte words: kernels may bind any buffer as an array of vec4 (the tensor-core
    // GEMMs' vector loads), which wgpu refuses for a binding smaller than one element.
    let b = u64::try_from(len.checked_mul(std::mem::size_of::<T>())?).ok()?;
    b.max(16).checked_next_multiple_of(16)
}

// Bytes of `len` elements rounded up to whole words.
fn padded_data_end<T>(len: usize) -> Option<u64> {
    let b = u64::try_from(len.checked_mul(std::mem::size_of::<T>())?).ok()?;
    b.checked_next_multiple_of(4)
}

/// [`checked_padded_bytes`] of a buffer that exists (its size was checked when it was made).
pub(crate) fn padded_bytes<T>(len: usize) -> u64 {
    checked_padded_bytes::<T>(len).unwrap_or(u64::MAX)
}

impl<T: Pod> GpuBuffer<T> {
    /// A zeroed buffer of `len` elements (followed by [`Gpu::canary_words`] guard words
    /// holding [`super::CANARY`] on a device with canaries). A byte size over the device's
    /// largest binding ([`wgpu::Limits::max_storage_buffer_binding_size`] and
    /// `max_buffer_size`), or one that does not fit in 64 bits, is an [`Error::Limit`] that
    /// names the buffer.
    pub fn new(gpu: &Gpu, label: &str, len: usize) -> Result<Self> {
        let max = gpu.max_binding_bytes();
        let overflow = || {
            Error::Limit(format!(
                "buffer {label:?} of {len} elements of {} bytes: the size overflows; the \
                 device binds at most {max} bytes ({} elements)",
                std::mem::size_of::<T>(),
                max / std::mem::size_of::<T>().max(1) as u64
            ))
        };
        let Some(padded) = checked_padded_bytes::<T>(len) else {
            return Err(overflow());
        };
        // The guard starts at the first word past the data, not at the 16-byte padding.
        let data_end = padded_data_end::<T>(len).ok_or_else(overflow)?;
        let guard = gpu.canary_words() as u64 * 4;
        let bytes = if guard > 0 {
            (data_end + guard).max(16).div_ceil(16) * 16
        } else {
            padded
        };
        if bytes > max {
            return Err(Error::Limit(format!(
                "buffer {label:?} needs {bytes} bytes ({len} elements) but the device binds at \
                 most {max} bytes ({} elements)",
                max / std::mem::size_of::<T>().max(1) as u64
            )));
        }
        let buffer = gpu.scoped(&format!("creating buffer {label:?}"), || {
            Ok(gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }))
        })?;
        let canary = if guard > 0 {
            let region = Arc::new(Region {
                buffer: buffer.clone(),
                start: data_end,
                end: bytes,
                label: label.to_string(),
                len,
            });
            let words = ((bytes - data_end) / 4) as usize;
            gpu.queue
                .write_buffer(&buffer, data_end, &canary_bytes(words));
            gpu.canaries.register(&region);
            Some(region)
        } else {
            None
        };
        Ok(GpuBuffer {
            buffer,
            len,
            label: label.to_string(),
            canary,
            _t: PhantomData,
        })
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice(gpu: &Gpu, label: &str, data: &[T]) -> Result<Self> {
        let b = Self::new(gpu, label, data.len())?;
        b.upload(gpu, data)?;
        Ok(b)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The label given at creation.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The raw wgpu buffer, for binding in an engine's own passes.
    pub fn raw(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Replace the contents with `data` (same length).
    pub fn upload(&self, gpu: &Gpu, data: &[T]) -> Result<()> {
        self.upload_at(gpu, 0, data)
    }

    /// Write `data` starting at element `offset`.
    pub fn upload_at(&self, gpu: &Gpu, offset: usize, data: &[T]) -> Result<()> {
        if offset
            .checked_add(data.len())
            .is_none_or(|end| end > self.len)
        {
            return Err(Error::Shape(format!(
                "upload of {} elements at {offset} into buffer {:?} of {} elements",
                data.len(),
                self.label,
                self.len
            )));
        }
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let off = (offset * std::mem::size_of::<T>()) as u64;
        if bytes.is_empty() {
            return Ok(());
        }
        // An upload that runs to the end of the buffer may end mid-word (an odd number of
        // f16): the buffer is padded to whole words, so the write is padded with zeros.
        let to_end = offset + data.len() == self.len;
        let padded: Vec<u8>;
        let bytes = if !bytes.len().is_multiple_of(4) && to_end {
            padded = bytes
                .iter()
                .copied()
                .chain(std::iter::repeat(0))
                .take(bytes.len().div_ceil(4) * 4)
                .collect();
            &padded[..]
        } else {
            bytes
        };
        if !off.is_multiple_of(4) || !bytes.len().is_multiple_of(4) {
            return Err(Error::InvalidArgument(format!(
                "upload into {:?} must start and end on 4-byte boundaries",
                self.label
            )));
        }
        gpu.scoped(&format!("uploading to {:?}", self.label), || {
            gpu.queue.write_buffer(&self.buffer, off, bytes);
            Ok(())
        })
    }

    /// Set every byte of the data to the repeated 32-bit pattern `word`: tests poison outputs
    /// with NaN so that an element a kernel failed to write cannot pass.
    pub fn fill_u32(&self, gpu: &Gpu, word: u32) -> Result<()> {
        // The data's words, not a guard after them.
        let n = match &self.canary {
            Some(r) => (r.start / 4) as usize,
            None => (padded_bytes::<T>(self.len) / 4) as usize,
        };
        if n == 0 {
            return Ok(());
        }
        let data = vec![word; n];
        gpu.scoped(&format!("filling {:?}", self.label), || {
            gpu.queue
                .write_buffer(&self.buffer, 0, bytemuck::cast_slice(&data));
            Ok(())
        })
    }

    /// Copy the contents back to the host: one submit and one map.
    pub fn download(&self, gpu: &Gpu) -> Result<Vec<T>> {
        let mut rec = super::Recorder::new(gpu);
        let h = rec.read(self);
        let rb = rec.finish()?;
        rb.get(&h)
    }
}
