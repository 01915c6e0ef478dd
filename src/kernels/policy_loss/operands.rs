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

/// The agents of a population's loss pass: every operand holds their rows back to back (agent
/// `g`'s row `r` is row `g * rows + r` of each [`Rows`]), row weights restart at each agent's
/// row 0, each [`Scalar`] is read at `index + g`, agent `g`'s loss slots start `slot_stride`
/// after agent 0's, and the policy loss may take each agent's coefficients from a buffer.
/// One dispatch serves them all.
#[derive(Clone, Copy, Debug)]
pub struct Agents<'a> {
    /// Agents (1 without a population).
    pub count: usize,
    /// Elements between one agent's loss slots and the next agent's (at least the pass's
    /// number of slots when `count > 1`).
    pub slot_stride: usize,
    /// Policy loss only: `(c_q, alpha, c_kl, c_ll)` per agent, 4 values an agent, in place of
    /// the config's. The config still decides which terms exist: a term it leaves out stays
    /// out whatever its coefficient here (PO-MPC agents of different lambda share a pass;
    /// TD-MPC2 and PO-MPC agents do not).
    pub coefs: Option<&'a GpuBuffer<f32>>,
}

impl Agents<'static> {
    /// One agent, the config's coefficients.
    pub const ONE: Agents<'static> = Agents {
        count: 1,
        slot_stride: 0,
        coefs: None,
    };
}

impl<'a> Agents<'a> {
    /// `count` agents with their loss slots `slot_stride` apart.
    pub fn new(count: usize, slot_stride: usize) -> Self {
        Agents {
            count,
            slot_stride,
            coefs: None,
        }
    }

    /// With each agent's `(c_q, alpha, c_kl, c_ll)` from `coefs`.
    pub fn with_coefs(mut self, coefs: &'a GpuBuffer<f32>) -> Self {
        self.coefs = Some(coefs);
        self
    }

    /// Checks the population against a pass of `rows` rows per agent with `terms` slots;
    /// returns the rows of all agents.
    pub(super) fn check(
        &self,
        rec: &Recorder,
        what: &str,
        rows: usize,
        terms: usize,
    ) -> Result<usize> {
        if self.count == 0 {
            return Err(Error::InvalidArgument(format!(
                "{what}: a population of 0 agents"
            )));
        }
        let max = rec.gpu().limits().max_compute_workgroups_per_dimension as usize;
        if self.count > max {
            return Err(Error::Limit(format!(
                "{what}: {} agents, the device runs at most {max} in one dispatch",
                self.count
            )));
        }
        if self.count > 1 && self.slot_stride < terms {
            return Err(Error::InvalidArgument(format!(
                "{what}: the agents' loss slots are {} apart, each agent has {terms}",
                self.slot_stride
            )));
        }
        if let Some(c) = self.coefs
            && c.len() < 4 * self.count
        {
            return Err(Error::Shape(format!(
                "{what}: coefficients {:?} hold {} values, {} agents need {}",
                c.label(),
                c.len(),
                self.count,
                4 * self.count
            )));
        }
        let n = rows
            .checked_mul(self.count)
            .ok_or_else(|| Error::Limit(format!("{what}: {rows} rows x {} agents", self.count)))?;
        to_u32(what, "rows", n)?;
        Ok(n)
    }

    /// The span of the agents' loss slots: `[index, index + (count - 1) slot_stride + terms)`.
    pub(super) fn slot_span(&self, index: usize, terms: usize) -> Option<usize> {
        (self.count - 1)
            .checked_mul(self.slot_stride)?
            .checked_add(index)?
            .checked_add(terms)
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
    /// The agents ([`Agents::ONE`] without a population).
    pub agents: Agents<'a>,
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
            agents: Agents::ONE,
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
    /// The agents ([`Agents::ONE`] without a population; no coefficients).
    pub agents: Agents<'a>,
}

impl<'a> PriorFitInputs<'a> {
    /// One agent's inputs.
    pub fn new(out: Rows<'a>, planner: Rows<'a>, s_d: Option<Scalar<'a>>) -> Self {
        PriorFitInputs {
            out,
            planner,
            s_d,
            agents: Agents::ONE,
        }
    }
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

/// Checks a single value (one per agent, from its index); returns (index, 1) and records its
/// use, or (0, 0) without one.
pub(super) fn scalar<'a>(
    what: &str,
    name: &'a str,
    s: Option<Scalar<'a>>,
    agents: usize,
    uses: &mut Vec<Use<'a>>,
) -> Result<(u32, u32)> {
    let Some(s) = s else { return Ok((0, 0)) };
    let end = s.index.checked_add(agents).filter(|&e| e <= s.buf.len());
    let Some(end) = end else {
        return Err(Error::Shape(format!(
            "{what}: {name} index {} ({agents} agents) is past the end of {:?} ({} elements)",
            s.index,
            s.buf.label(),
            s.buf.len()
        )));
    };
    uses.push(Use::read(name, s.buf, (s.index, end)));
    Ok((to_u32(what, name, s.index)?, 1))
}

/// Checks the `n` loss slots of each agent; returns the end of the last agent's.
pub(super) fn check_slots(what: &str, loss: &LossOut, n: usize, agents: &Agents) -> Result<usize> {
    let end = agents.slot_span(loss.index, n);
    let Some(end) = end.filter(|&e| e <= loss.losses.len()) else {
        return Err(Error::Shape(format!(
            "{what}: loss slots {}..{} ({} agents, {} apart) are past the end of {:?} ({} \
             elements)",
            loss.index,
            loss.index.saturating_add(n),
            agents.count,
            agents.slot_stride,
            loss.losses.label(),
            loss.losses.len()
        )));
    };
    to_u32(what, "loss slot", end)?;
    Ok(end)
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
