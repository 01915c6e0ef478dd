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

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AgentParams {
    stream: u32,
    per: u32,
    agents: u32,
    _pad: u32,
}

const FILL_AGENTS: KernelSpec = super::launch::kernel(
    "rng_fill",
    "fill_agents",
    &[
        (0, Binding::ReadWrite),
        (2, Binding::Read),
        (3, Binding::Uniform),
    ],
);

/// Header and overrides of the fill pipeline for `dist` (for the shader test); the
/// population's fill ([`record_fill_agents`]) when `agents`.
pub fn pipeline_constants(
    dist: Distribution,
    agents: bool,
) -> (KernelSpec, Header, Vec<(&'static str, f64)>) {
    let spec = if agents { FILL_AGENTS } else { FILL };
    (spec, Header::default(), vec![("KIND", dist.code() as f64)])
}

/// The elements of a buffer a fill may write: 4-byte ones, fewer than 2^32.
fn fill_len<T: bytemuck::Pod>(out: &GpuBuffer<T>) -> Result<usize> {
    if std::mem::size_of::<T>() != 4 {
        return Err(Error::InvalidArgument(
            "Philox fills need 4-byte elements (u32 or f32)".into(),
        ));
    }
    let n = out.len();
    if n > u32::MAX as usize - 3 {
        return Err(Error::Limit(format!("fill of {n} elements over 2^32")));
    }
    Ok(n)
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
    let n = fill_len(out)?;
    let (spec, header, ov) = pipeline_constants(dist, false);
    let pipe = rec.gpu().pipeline(&spec, &header, &ov)?;
    let groups = super::two_hot::grid(rec.gpu(), n.div_ceil(4).div_ceil(64), "Philox fill")?;
    let p = Params {
        key: SeedStream::new(seed, stream),
        n: n as u32,
    };
    rec.dispatch(&pipe, &[&out.buffer], Some(&p), groups)
}

/// A population's fill: `out` holds one run of `per` elements per agent, and agent `i`'s run
/// gets exactly what [`record_fill`] would write into a buffer of `per` elements with the
/// agent's seed (`seeds[2i]` low and `seeds[2i + 1]` high word, [`crate::rng::seed_words`])
/// and `stream`: agents drawing in one launch draw what each would alone.
pub fn record_fill_agents<T: bytemuck::Pod>(
    rec: &mut Recorder,
    out: &GpuBuffer<T>,
    dist: Distribution,
    seeds: &GpuBuffer<u32>,
    per: usize,
    stream: u32,
) -> Result<()> {
    let n = fill_len(out)?;
    if per == 0 || !n.is_multiple_of(per) {
        return Err(Error::Shape(format!(
            "population fill: {n} elements are not whole runs of {per}"
        )));
    }
    let agents = n / per;
    if seeds.len() < 2 * agents {
        return Err(Error::Shape(format!(
            "population fill: {agents} agents need {} seed words, the buffer holds {}",
            2 * agents,
            seeds.len()
        )));
    }
    let threads = per
        .div_ceil(4)
        .checked_mul(agents)
        .filter(|&t| t <= u32::MAX as usize);
    if threads.is_none() {
        return Err(Error::Limit(format!("fill of {n} elements over 2^32")));
    }
    let (spec, header, ov) = pipeline_constants(dist, true);
    let pipe = rec.gpu().pipeline(&spec, &header, &ov)?;
    let groups = super::two_hot::grid(rec.gpu(), threads.unwrap_or(0).div_ceil(64), "Philox fill")?;
    let p = AgentParams {
        stream,
        per: per as u32,
        agents: agents as u32,
        _pad: 0,
    };
    rec.dispatch(&pipe, &[&out.buffer, &seeds.buffer], Some(&p), groups)
}
