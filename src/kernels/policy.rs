//! TD-MPC2's policy head (`shaders/policy.wgsl`, `WorldModel.pi`): the squashed Gaussian
//! sample, its mean and log-std, the log-probability and the (scaled) entropy, from the policy
//! network's last linear output and standard normal noise.
//!
//! ```no_run
//! # fn main() -> pompc::Result<()> {
//! use pompc::kernels::policy::{self, PolicyBuffers, PolicyConfig};
//! use pompc::kernels::rng_fill::{Distribution, record_fill};
//! let gpu = pompc::Gpu::new(Default::default())?;
//! let (rows, cfg) = (512, PolicyConfig::new(38));
//! let h = pompc::GpuBuffer::<f32>::new(&gpu, "pi out", rows * 2 * 38)?; // from Linear
//! let eps = pompc::GpuBuffer::<f32>::new(&gpu, "eps", rows * 38)?;
//! let action = pompc::GpuBuffer::<f32>::new(&gpu, "action", rows * 38)?;
//! let stats = pompc::GpuBuffer::<f32>::new(&gpu, "pi stats", rows * cfg.stats_width())?;
//! let mut rec = pompc::Recorder::new(&gpu);
//! record_fill(&mut rec, &eps, Distribution::Normal, 7, 0)?;
//! policy::record_sample(&mut rec, &cfg, rows, PolicyBuffers { h: &h, eps: &eps, action: &action, stats: &stats })?;
//! rec.submit()?;
//! # Ok(()) }
//! ```

use super::launch::{count_within, kernel, record_pipeline};
use super::two_hot::{RowLayout, fit_rows, grid};
use crate::gpu::Binding::{Read, ReadWrite, Uniform};
use crate::gpu::shader::Header;
use crate::gpu::{GpuBuffer, KernelSpec, Recorder};
use crate::{Error, Result};

/// The policy head's shape and log-std range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyConfig {
    /// Action dimension A (the network outputs 2A values per row).
    pub action_dim: usize,
    /// Lower end of the log-std range (TD-MPC2: `log_std_min` = -10).
    pub log_std_min: f32,
    /// Upper end of the log-std range (TD-MPC2: `log_std_max` = 2).
    pub log_std_max: f32,
}

impl PolicyConfig {
    /// TD-MPC2's head for `action_dim` actions: log-std in [-10, 2].
    pub fn new(action_dim: usize) -> Self {
        PolicyConfig {
            action_dim,
            log_std_min: -10.0,
            log_std_max: 2.0,
        }
    }

    /// The same head with log-std in `[min, max]`.
    pub fn with_log_std_range(mut self, min: f32, max: f32) -> Self {
        self.log_std_min = min;
        self.log_std_max = max;
        self
    }

    /// `Err` unless `action_dim >= 1` and `log_std_min < log_std_max`, both finite.
    pub fn check(&self) -> Result<()> {
        if self.action_dim == 0 {
            return Err(Error::InvalidArgument(
                "policy head with action dimension 0".into(),
            ));
        }
        if self.action_dim > (u32::MAX as usize - 3) / 2 {
            return Err(Error::Limit(format!(
                "action dimension {}",
                self.action_dim
            )));
        }
        if !(self.log_std_min.is_finite()
            && self.log_std_max.is_finite()
            && self.log_std_min < self.log_std_max)
        {
            return Err(Error::InvalidArgument(format!(
                "policy log-std range needs finite min < max, got [{}, {}]",
                self.log_std_min, self.log_std_max
            )));
        }
        Ok(())
    }

    /// Elements per row of the stats output: `2A + 3`.
    pub fn stats_width(&self) -> usize {
        2 * self.action_dim + 3
    }

    /// Column of `tanh(mean_raw)_i` in a stats row (TD-MPC2's `info["mean"]`, the eval-mode
    /// action); `log_std_i` is at `action_dim + i`.
    pub fn mean_col(&self, i: usize) -> usize {
        i
    }

    /// Column of `log_std_i` in a stats row.
    pub fn log_std_col(&self, i: usize) -> usize {
        self.action_dim + i
    }

    /// Column of the squashed log-probability (`log_prob`).
    pub fn log_prob_col(&self) -> usize {
        2 * self.action_dim
    }

    /// Column of `entropy` = `-log_prob`.
    pub fn entropy_col(&self) -> usize {
        2 * self.action_dim + 1
    }

    /// Column of `scaled_entropy` (the term of TD-MPC2's policy loss).
    pub fn scaled_entropy_col(&self) -> usize {
        2 * self.action_dim + 2
    }
}

/// The buffers of one call.
#[derive(Clone, Copy, Debug)]
pub struct PolicyBuffers<'a> {
    /// The policy network's last linear output `[R, 2A]`: raw mean, then raw log-std.
    pub h: &'a GpuBuffer<f32>,
    /// Standard normal noise `[R, A]`.
    pub eps: &'a GpuBuffer<f32>,
    /// Output: squashed actions `[R, A]`.
    pub action: &'a GpuBuffer<f32>,
    /// Output: `[R, 2A + 3]` rows of (mean `[A]`, log_std `[A]`, log_prob, entropy,
    /// scaled_entropy); see the `*_col` methods of [`PolicyConfig`].
    pub stats: &'a GpuBuffer<f32>,
}

/// Element offsets of row 0 in each buffer of [`record_sample_at`]; rows are back to back
/// after it (the planner writes the actions of time step `t` at `t * N * A`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyOffsets {
    /// Offset into `h`.
    pub h: usize,
    /// Offset into `eps`.
    pub eps: usize,
    /// Offset into `action`.
    pub action: usize,
    /// Offset into `stats`.
    pub stats: usize,
    /// `Some((rows, stride))`: the action rows come in blocks of `rows` rows, block `i` at
    /// `action + i * stride` (a population's policy trajectories, each agent's rows a prefix
    /// of its block of sample rows); `None`: back to back.
    pub action_blocks: Option<(usize, usize)>,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    h_offset: u32,
    eps_offset: u32,
    action_offset: u32,
    stats_offset: u32,
    action_block: u32,
    action_stride: u32,
    _pad: u32,
}

const SAMPLE: KernelSpec = kernel(
    "policy",
    "sample",
    &[
        (0, Read),
        (1, Read),
        (2, ReadWrite),
        (3, ReadWrite),
        (4, Uniform),
    ],
);

/// Threads that share one row: the power of two that gives each at most 4 action dimensions
/// (16 for dog's A = 38), at most 64.
pub fn lanes(action_dim: usize) -> u32 {
    (action_dim.div_ceil(4).next_power_of_two().min(64)) as u32
}

/// The header and override constants of the pipeline: exactly what the launch code builds, so
/// the shader test can validate every combination.
pub fn pipeline_constants(cfg: &PolicyConfig) -> (KernelSpec, Header, Vec<(&'static str, f64)>) {
    (
        SAMPLE,
        Header::default(),
        vec![
            ("A", cfg.action_dim as f64),
            ("LOG_STD_MIN", cfg.log_std_min as f64),
            ("LOG_STD_MAX", cfg.log_std_max as f64),
            ("LANES", lanes(cfg.action_dim) as f64),
        ],
    )
}

/// Sample the policy for `rows` rows, every buffer holding its rows back to back from element
/// 0. See [`record_sample_at`].
pub fn record_sample(
    rec: &mut Recorder,
    cfg: &PolicyConfig,
    rows: usize,
    io: PolicyBuffers,
) -> Result<()> {
    record_sample_at(rec, cfg, rows, io, PolicyOffsets::default())
}

/// Sample the policy for `rows` rows whose data start at the given element offsets: TD-MPC2's
/// `WorldModel.pi` with the noise given. Per row, with `log_std = lo + (hi - lo) / 2 *
/// (tanh(raw) + 1)`: `action = tanh(mean_raw + exp(log_std) * eps)`, `mean = tanh(mean_raw)`,
/// `log_prob = sum(-eps^2 / 2 - log_std - log(2 pi) / 2) - sum(log(relu(1 - action^2) + 1e-6))`,
/// `entropy = -log_prob`, `scaled_entropy = -log_prob * A * lp_pre / (log_prob + 1e-8)` where
/// `lp_pre` is the Gaussian log-probability before the squash correction.
pub fn record_sample_at(
    rec: &mut Recorder,
    cfg: &PolicyConfig,
    rows: usize,
    io: PolicyBuffers,
    at: PolicyOffsets,
) -> Result<()> {
    cfg.check()?;
    if rows == 0 {
        return Ok(());
    }
    let what = "policy sample";
    let a = cfg.action_dim;
    // Rows of `width` back to back from `offset` in `buf`: the offset as a shader parameter.
    let fit = |name, buf: &GpuBuffer<f32>, offset, width, written| {
        let at = RowLayout::at(offset, width);
        fit_rows(what, name, buf.len(), rows, width, at, written).map(|(o, _)| o)
    };
    let h_offset = fit("h", io.h, at.h, 2 * a, false)?;
    let eps_offset = fit("eps", io.eps, at.eps, a, false)?;
    let (action_block, action_stride) = at.action_blocks.unwrap_or((rows, rows * a));
    if action_block == 0 || action_stride < action_block * a {
        return Err(Error::Shape(format!(
            "{what}: action blocks of {action_block} rows {action_stride} elements apart \
             overlap or are empty ({a} actions a row)"
        )));
    }
    // The last block's end, as if its rows were all there were.
    let blocks = rows.div_ceil(action_block);
    let action_end = (blocks - 1)
        .checked_mul(action_stride)
        .and_then(|v| v.checked_add(at.action))
        .ok_or_else(|| Error::Limit(format!("{what}: action blocks overflow")))?;
    let last_rows = rows - (blocks - 1) * action_block;
    fit_rows(
        what,
        "action",
        io.action.len(),
        last_rows,
        a,
        RowLayout::at(action_end, a),
        true,
    )?;
    let action_offset = count_within(what, Some(at.action), u32::MAX as usize, || {
        "action offset over 2^32".into()
    })? as u32;
    let action_stride32 = count_within(what, Some(action_stride), u32::MAX as usize, || {
        "action stride over 2^32".into()
    })? as u32;
    let stats_offset = fit("stats", io.stats, at.stats, cfg.stats_width(), true)?;
    let rows32 = count_within(what, Some(rows), u32::MAX as usize, || {
        format!("{rows} rows over 2^32")
    })? as u32;
    let per_group = 64 / lanes(a) as usize;
    let groups = grid(rec.gpu(), rows.div_ceil(per_group), what)?;
    let p = Params {
        rows: rows32,
        h_offset,
        eps_offset,
        action_offset,
        stats_offset,
        action_block: action_block as u32,
        action_stride: action_stride32,
        _pad: 0,
    };
    record_pipeline(
        rec,
        pipeline_constants(cfg),
        &[
            &io.h.buffer,
            &io.eps.buffer,
            &io.action.buffer,
            &io.stats.buffer,
        ],
        &p,
        groups,
    )
}
