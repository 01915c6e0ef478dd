//! What the launch functions of the kernel modules share: recording a pipeline built from
//! its constants, and the caller's scratch buffer (or a new one) for partial sums.

use crate::gpu::shader::Header;
use crate::gpu::{Binding, GpuBuffer, KernelSpec, Recorder};
use crate::{Error, Result};

/// Record one dispatch of the pipeline that `constants` (a `pipeline_constants` result:
/// spec, header, override constants) describe, over `groups` workgroups with `bufs` and the
/// uniforms `params`: the two steps that end every launch function.
pub(crate) fn record_pipeline<P: bytemuck::Pod>(
    rec: &mut Recorder,
    (spec, header, ov): (KernelSpec, Header, Vec<(&'static str, f64)>),
    bufs: &[&wgpu::Buffer],
    params: &P,
    groups: [u32; 3],
) -> Result<()> {
    let pipe = rec.gpu().pipeline(&spec, &header, &ov)?;
    rec.dispatch(&pipe, bufs, Some(params), groups)
}

/// The scratch for `need` partial sums: the caller's `scratch` if it holds them (else
/// [`check_scratch`]'s error), or a new buffer named `label` that the recorder keeps alive
/// until it is done.
pub(crate) fn scratch_or_new(
    rec: &Recorder,
    what: &str,
    scratch: Option<&GpuBuffer<f32>>,
    need: usize,
    needed: &str,
    label: &str,
) -> Result<GpuBuffer<f32>> {
    match scratch {
        Some(s) => check_scratch(what, s, need, needed).map(|()| s.clone()),
        None => GpuBuffer::new(rec.gpu(), label, need),
    }
}

/// `Err` ([`Error::Shape`], ending in `"{need} {needed}"`) unless the caller's `scratch`
/// holds `need` elements.
pub(crate) fn check_scratch(
    what: &str,
    scratch: &GpuBuffer<f32>,
    need: usize,
    needed: &str,
) -> Result<()> {
    if scratch.len() < need {
        return Err(Error::Shape(format!(
            "{what}: scratch ({:?}) holds {} elements, {need} {needed}",
            scratch.label(),
            scratch.len()
        )));
    }
    Ok(())
}

/// `count` (a product, `None` where it overflowed) if it is at most `max`, else an
/// [`Error::Limit`] saying `"{what}: {say()}"`: the size checks before a count goes to the
/// shader as a u32.
pub(crate) fn count_within(
    what: &str,
    count: Option<usize>,
    max: usize,
    say: impl FnOnce() -> String,
) -> Result<usize> {
    count
        .filter(|&c| c <= max)
        .ok_or_else(|| Error::Limit(format!("{what}: {}", say())))
}

/// The bindings of a kernel with one input and one output: read, read-write, uniforms.
pub(crate) const IN_OUT: &[(u32, Binding)] = &[
    (0, Binding::Read),
    (1, Binding::ReadWrite),
    (2, Binding::Uniform),
];

/// The kernel `entry` of the library shader `shader`, binding `bindings` in the order that
/// the launch code passes buffers: one line a kernel in the modules' tables.
pub(crate) const fn kernel(
    shader: &'static str,
    entry: &'static str,
    bindings: &'static [(u32, Binding)],
) -> KernelSpec {
    KernelSpec {
        shader,
        entry,
        bindings,
    }
}

/// The bindings `first` followed by `more`, for a kernel whose bindings extend another's
/// (`N`, the total, is checked when the constant is evaluated).
pub(crate) const fn extend_bindings<const A: usize, const N: usize>(
    first: &[(u32, Binding); A],
    more: &[(u32, Binding)],
) -> [(u32, Binding); N] {
    assert!(A + more.len() == N, "N must be the number of bindings");
    let mut all = [(0, Binding::Read); N];
    let mut i = 0;
    while i < N {
        all[i] = if i < A { first[i] } else { more[i - A] };
        i += 1;
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_bindings_follow_the_first() {
        const FIRST: [(u32, Binding); 2] = [(0, Binding::Read), (1, Binding::Uniform)];
        const ALL: [(u32, Binding); 3] = extend_bindings(&FIRST, &[(5, Binding::ReadWrite)]);
        assert_eq!(
            ALL,
            [
                (0, Binding::Read),
                (1, Binding::Uniform),
                (5, Binding::ReadWrite)
            ]
        );
    }
}
