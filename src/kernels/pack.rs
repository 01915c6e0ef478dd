//! Blocks of a row-major f32 matrix copied into a padded layout (`shaders/pack.wgsl`), rounded
//! to f16 for an f16 destination: how a trainer's flat f32 parameters reach the packed weights
//! of the fused networks ([`crate::kernels::fused_mlp::FusedModel::record_copy_from`]).

use crate::gpu::shader::Header;
use crate::gpu::{Binding, GpuBuffer, KernelSpec, Recorder};
use crate::kernels::linear::Element;
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
/// Where a block goes: element (r, c) of the `rows x cols` block at
/// `src[src_offset + r * src_stride + c]` lands at
/// `dst[dst_offset + (r / block_rows) * dst_block + (r % block_rows) * dst_stride + c]`.
pub struct PackLayout {
    /// Rows of the block.
    pub rows: u32,
    /// Columns of the block.
    pub cols: u32,
    /// First source element.
    pub src_offset: u32,
    /// Source row stride.
    pub src_stride: u32,
    /// First destination element.
    pub dst_offset: u32,
    /// Destination row stride within a block of `block_rows` rows.
    pub dst_stride: u32,
    /// Rows per destination block (a stacked ensemble's member).
    pub block_rows: u32,
    /// Destination elements between blocks.
    pub dst_block: u32,
}

impl PackLayout {
    /// The destination index of element (r, c).
    pub fn dst_index(&self, r: usize, c: usize) -> usize {
        let br = self.block_rows.max(1) as usize;
        self.dst_offset as usize
            + (r / br) * self.dst_block as usize
            + (r % br) * self.dst_stride as usize
            + c
    }

    /// The source index of element (r, c).
    pub fn src_index(&self, r: usize, c: usize) -> usize {
        self.src_offset as usize + r * self.src_stride as usize + c
    }

    fn check(&self, src_len: usize, dst_len: usize) -> Result<()> {
        let bad = |m: String| Err(Error::Shape(format!("pack: {m}")));
        if self.rows == 0 || self.cols == 0 {
            return Ok(());
        }
        if self.block_rows == 0 {
            return bad("block_rows is 0".into());
        }
        if self.cols > self.src_stride.max(self.cols) || self.cols > self.dst_stride {
            return bad(format!(
                "{} columns in rows of stride {} (source) and {} (destination)",
                self.cols, self.src_stride, self.dst_stride
            ));
        }
        let (r, c) = (self.rows as usize - 1, self.cols as usize - 1);
        let blocks = (self.rows as usize).div_ceil(self.block_rows as usize);
        if blocks > 1
            && (self.dst_block as usize) < self.block_rows as usize * self.dst_stride as usize
        {
            return bad("destination blocks overlap".into());
        }
        if self.src_index(r, c) >= src_len || self.dst_index(r, c) >= dst_len {
            return bad(format!(
                "block {self:?} outside the source ({src_len}) or destination ({dst_len})"
            ));
        }
        if (self.rows as u64) * (self.cols as u64) > u32::MAX as u64 {
            return bad("over 2^32 elements".into());
        }
        Ok(())
    }
}

const PACK: KernelSpec = KernelSpec {
    shader: "pack",
    entry: "pack",
    bindings: &[
        (0, Binding::Read),
        (1, Binding::ReadWrite),
        (2, Binding::Uniform),
    ],
};

/// Header and overrides of the pipeline for an f16 (`true`) or f32 destination.
pub fn pipeline_constants(f16_out: bool) -> (KernelSpec, Header, Vec<(&'static str, f64)>) {
    (PACK, Header(vec![("F16_OUT", f16_out as u32)]), Vec::new())
}

/// Record the copy of one block (see [`PackLayout`]); an f16 `dst` needs shader-f16.
///
/// ```no_run
/// # fn main() -> pompc::Result<()> {
/// use pompc::kernels::pack::{self, PackLayout};
/// let gpu = pompc::Gpu::new(Default::default())?;
/// // A 2 x 3 matrix into rows of 4 (one padding column).
/// let src = pompc::GpuBuffer::from_slice(&gpu, "w", &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0])?;
/// let dst = pompc::GpuBuffer::<f32>::new(&gpu, "packed", 8)?;
/// let at = PackLayout { rows: 2, cols: 3, src_stride: 3, dst_stride: 4, block_rows: 2,
///     dst_block: 8, ..Default::default() };
/// let mut rec = pompc::Recorder::new(&gpu);
/// pack::record(&mut rec, &src, &dst, at)?;
/// rec.submit()?;
/// # Ok(()) }
/// ```
pub fn record<D: Element>(
    rec: &mut Recorder,
    src: &GpuBuffer<f32>,
    dst: &GpuBuffer<D>,
    at: PackLayout,
) -> Result<()> {
    let gpu = rec.gpu();
    let f16_out = D::F16;
    if f16_out && !gpu.features().shader_f16 {
        return Err(Error::Unsupported(format!(
            "packing into f16 needs shader-f16, which {} lacks",
            gpu.info().name
        )));
    }
    at.check(src.len(), dst.len())?;
    if src.len().max(dst.len()) > u32::MAX as usize {
        return Err(Error::Limit("pack: buffers over 2^32 elements".into()));
    }
    let n = at.rows as usize * at.cols as usize;
    if n == 0 {
        return Ok(());
    }
    let (spec, header, ov) = pipeline_constants(f16_out);
    let pipe = gpu.pipeline(&spec, &header, &ov)?;
    let groups = super::two_hot::grid(gpu, n.div_ceil(256), "pack")?;
    rec.dispatch(&pipe, &[&src.buffer, &dst.buffer], Some(&at), groups)
}
