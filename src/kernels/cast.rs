//! Element-wise conversion of a range of f32 values to f16 (`shaders/cast.wgsl`): how a
//! trainer's f32 parameters reach a planner whose model stores its weights in f16
//! ([`crate::model::WorldModel::record_copy_from`]). Needs shader-f16.
//!
//! Rounding: WGSL lets the conversion of a value between two f16 numbers give either, so the
//! test allows one unit in the last place against the mirror (`half::f16::from_f32`, nearest
//! even); lavapipe matches the mirror exactly, ties included. Magnitudes above 65504 are out
//! of f16's range (weights are far inside it).

use super::launch::{IN_OUT, kernel};
use crate::gpu::shader::Header;
use crate::gpu::{GpuBuffer, KernelSpec, Recorder};
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    src_offset: u32,
    dst_offset: u32,
    n: u32,
    pad: u32,
}

const TO_F16: KernelSpec = kernel("cast", "to_f16", IN_OUT);

/// Header and overrides of the conversion pipeline (for the shader test).
pub fn pipeline_constants() -> (KernelSpec, Header, Vec<(&'static str, f64)>) {
    (TO_F16, Header::default(), Vec::new())
}

/// Record `dst[dst_offset + i] = f16(src[src_offset + i])` for `i < n`.
///
/// ```no_run
/// # fn main() -> pompc::Result<()> {
/// let gpu = pompc::Gpu::new(Default::default())?;
/// let src = pompc::GpuBuffer::from_slice(&gpu, "w", &[0.5f32, -1.25, 3.0])?;
/// let dst = pompc::GpuBuffer::<half::f16>::new(&gpu, "w16", 3)?;
/// let mut rec = pompc::Recorder::new(&gpu);
/// pompc::kernels::cast::record_to_f16(&mut rec, &src, 0, &dst, 0, 3)?;
/// rec.submit()?;
/// # Ok(()) }
/// ```
pub fn record_to_f16(
    rec: &mut Recorder,
    src: &GpuBuffer<f32>,
    src_offset: usize,
    dst: &GpuBuffer<half::f16>,
    dst_offset: usize,
    n: usize,
) -> Result<()> {
    let gpu = rec.gpu();
    if !gpu.features().shader_f16 {
        return Err(Error::Unsupported(format!(
            "f16 conversion needs shader-f16, which {} lacks",
            gpu.info().name
        )));
    }
    if src_offset + n > src.len() || dst_offset + n > dst.len() {
        return Err(Error::Shape(format!(
            "f16 conversion of {n} elements from {src_offset} of {} into {dst_offset} of {}",
            src.len(),
            dst.len()
        )));
    }
    if src.len().max(dst.len()) > u32::MAX as usize {
        return Err(Error::Limit("f16 conversion over 2^32 elements".into()));
    }
    if n == 0 {
        return Ok(());
    }
    let (spec, header, ov) = pipeline_constants();
    let pipe = gpu.pipeline(&spec, &header, &ov)?;
    let groups = super::two_hot::grid(gpu, n.div_ceil(256), "f16 conversion")?;
    let p = Params {
        src_offset: src_offset as u32,
        dst_offset: dst_offset as u32,
        n: n as u32,
        pad: 0,
    };
    rec.dispatch(&pipe, &[&src.buffer, &dst.buffer], Some(&p), groups)
}
