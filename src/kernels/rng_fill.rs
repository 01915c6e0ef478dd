//! Buffers of Philox draws (`shaders/rng_fill.wgsl`): the planner's noise and the tests of the
//! RNG itself.

use crate::gpu::shader::Header;
use crate::gpu::{Binding, GpuBuffer, KernelSpec, Recorder};
use crate::rng::SeedStream;
use crate::{Error, Result};

/// What to draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Distribution {
    /// Raw 32-bit words.
    Bits,
    /// Uniform on [0, 1).
    Uniform,
    /// Standard normal (Box-Muller).
    Normal,
    /// Standard Gumbel.
    Gumbel,
}

impl Distribution {
    /// Every distribution.
    pub const ALL: [Distribution; 4] = [
        Distribution::Bits,
        Distribution::Uniform,
        Distribution::Normal,
        Distribution::Gumbel,
    ];

    fn code(self) -> u32 {
        match self {
            Distribution::Bits => 0,
            Distribution::Uniform => 1,
            Distribution::Normal => 2,
            Distribution::Gumbel => 3,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    key: SeedStream,
    n: u32,
}

const FILL: KernelSpec = super::launch::kernel(
    "rng_fill",
    "fill",
    &[(0, Binding::ReadWrite), (1, Binding::Uniform)],
);

/// Header and overrides of the fill pipeline for `dist` (for the shader test).
pub fn pipeline_constants(dist: Distribution) -> (KernelSpec, Header, Vec<(&'static str, f64)>) {
    (FILL, Header::default(), vec![("KIND", dist.code() as f64)])
}

/// Record a fill of `out` (4-byte elements: `u32` for [`Distribution::Bits`], `f32` bits
/// otherwise) with draws of (`seed`, `stream`), counters 0, 1, 2, ...
pub fn record_fill<T: bytemuck::Pod>(
    rec: &mut Recorder,
    out: &GpuBuffer<T>,
    dist: Distribution,
    seed: u64,
    stream: u32,
) -> Result<()> {
    if std::mem::size_of::<T>() != 4 {
        return Err(Error::InvalidArgument(
            "Philox fills need 4-byte elements (u32 or f32)".into(),
        ));
    }
    let n = out.len();
    if n > u32::MAX as usize - 3 {
        return Err(Error::Limit(format!("fill of {n} elements over 2^32")));
    }
    let (spec, header, ov) = pipeline_constants(dist);
    let pipe = rec.gpu().pipeline(&spec, &header, &ov)?;
    let groups = super::two_hot::grid(rec.gpu(), n.div_ceil(4).div_ceil(64), "Philox fill")?;
    let p = Params {
        key: SeedStream::new(seed, stream),
        n: n as u32,
    };
    rec.dispatch(&pipe, &[&out.buffer], Some(&p), groups)
}
