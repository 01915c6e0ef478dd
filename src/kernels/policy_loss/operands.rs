//! What the kernels read and write: rows of an operand, single values, the inputs of each
//! loss, and the checks that turn them into offsets and strides.

use crate::gpu::{GpuBuffer, Recorder};
use crate::kernels::loss::{LossOut, span, to_u32};
use crate::kernels::norm_act::Use;
use crate::kernels::two_hot::{RowLayout, fit_rows};
use crate::{Error, Result};

/// Rows of one operand: row `r` at `at.offset + r * at.stride` of `buf`.
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a> {
    /// The buffer.
    pub buf: &'a GpuBuffer<f32>,
    /// Where the rows are.
    pub at: RowLayout,
}

impl<'a> Rows<'a> {
    /// Rows of `width` back to back from element 0.
    pub fn new(buf: &'a GpuBuffer<f32>, width: usize) -> Self {
        Rows {
            buf,
            at: RowLayout::contiguous(width),
        }
    }

    /// Rows at `at`.
    pub fn at(buf: &'a GpuBuffer<f32>, at: RowLayout) -> Self {
        Rows { buf, at }
    }
}

/// One value of a GPU buffer (a [`RunningScale`](crate::kernels::optim::RunningScale)'s).
#[derive(Clone, Copy, Debug)]
pub struct Scalar<'a> {
    /// The buffer.
    pub buf: &'a GpuBuffer<f32>,
    /// The element.
    pub index: usize,
}

impl<'a> Scalar<'a> {
    /// Element 0 of `buf`.
    pub fn new(buf: &'a GpuBuffer<f32>) -> Self {
        Scalar { buf, index: 0 }
    }
}

/// The Q heads' values at the samples and their action gradients.
#[derive(Clone, Copy, Debug)]
pub struct QInput<'a> {
    /// `q_r`, rows of 1.
    pub values: Rows<'a>,
    /// `d q_r / d a_r`, rows of `A`.
    pub grad: Rows<'a>,
}

/// The inputs of the policy loss.
#[derive(Clone, Copy, Debug)]
pub struct PolicyInputs<'a> {
    /// The policy network's raw output, rows of `2A`: raw mean, then raw log-std.
    pub h: Rows<'a>,
    /// The sample's standard normal noise, rows of `A`.
    pub eps: Rows<'a>,
    /// The Q term's inputs (required when `c_q != 0`).
    pub q: Option<QInput<'a>>,
    /// The KL prior, rows of `2A` ([`PriorInput`](super::PriorInput)).
    pub prior: Option<Rows<'a>>,
    /// The planner Gaussian `(mean, std)` of the LL term, rows of `2A`.
    pub planner: Option<Rows<'a>>,
    /// `s_q` (1 if `None`).
    pub s_q: Option<Scalar<'a>>,
    /// `s_kl` (1 if `None`).
    pub s_kl: Option<Scalar<'a>>,
}

impl<'a> PolicyInputs<'a> {
    /// Only `h` and `eps`.
    pub fn new(h: Rows<'a>, eps: Rows<'a>) -> Self {
        PolicyInputs {
            h,
            eps,
            q: None,
            prior: None,
            planner: None,
            s_q: None,
            s_kl: None,
        }
    }
}

/// The inputs of the prior fit.
#[derive(Clone, Copy, Debug)]
pub struct PriorFitInputs<'a> {
    /// The prior network's raw output, rows of `2A`.
    pub out: Rows<'a>,
    /// The planner Gaussian `(mean, std)`, rows of `2A`.
    pub planner: Rows<'a>,
    /// `s_d` (1 if `None`).
    pub s_d: Option<Scalar<'a>>,
}

/// Checks rows of an operand; returns (offset, stride) and records its use.
pub(super) fn operand<'a>(
    what: &str,
    name: &'a str,
    rows: usize,
    width: usize,
    r: Rows<'a>,
    write: bool,
    uses: &mut Vec<Use<'a>>,
) -> Result<(u32, u32)> {
    let (o, s) = fit_rows(what, name, r.buf.len(), rows, width, r.at, write)?;
    uses.push(Use {
        name,
        buf: &r.buf.buffer,
        range: span(rows, width, r.at),
        write,
    });
    Ok((o, s))
}

pub(super) fn scalar<'a>(
    what: &str,
    name: &'a str,
    s: Option<Scalar<'a>>,
    uses: &mut Vec<Use<'a>>,
) -> Result<(u32, u32)> {
    let Some(s) = s else { return Ok((0, 0)) };
    if s.index >= s.buf.len() {
        return Err(Error::Shape(format!(
            "{what}: {name} index {} is past the end of {:?} ({} elements)",
            s.index,
            s.buf.label(),
            s.buf.len()
        )));
    }
    uses.push(Use::read(name, s.buf, (s.index, s.index + 1)));
    Ok((to_u32(what, name, s.index)?, 1))
}

pub(super) fn check_slots(what: &str, loss: &LossOut, n: usize) -> Result<()> {
    if loss
        .index
        .checked_add(n)
        .is_none_or(|e| e > loss.losses.len())
    {
        return Err(Error::Shape(format!(
            "{what}: loss slots {}..{} are past the end of {:?} ({} elements)",
            loss.index,
            loss.index.saturating_add(n),
            loss.losses.label(),
            loss.losses.len()
        )));
    }
    to_u32(what, "loss slot", loss.index + n)?;
    Ok(())
}

pub(super) fn check_storage(rec: &Recorder, what: &str, need: u32) -> Result<()> {
    let have = rec.gpu().limits().max_storage_buffers_per_shader_stage;
    if have < need {
        return Err(Error::Limit(format!(
            "{what}: the kernel binds {need} storage buffers, the device allows {have} per \
             shader stage (open the Gpu with the adapter's limits)"
        )));
    }
    Ok(())
}
