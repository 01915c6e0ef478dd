//! Value-head helpers of the training updates (`shaders/td.wgsl`): TD-MPC2's TD target from
//! two target heads, and the gradient of a decoded two-hot value with respect to its logits
//! (the policy update backpropagates Q through it to the action).

use super::launch::kernel;
use super::two_hot::{TwoHotConfig, grid};
use crate::gpu::Binding::{self, Read, ReadWrite, Uniform};
use crate::gpu::{GpuBuffer, KernelSpec, Recorder};
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    discount: f32,
    q_stride: u32,
    in_offset: u32,
    out_offset: u32,
    scale: f32,
    rows_per_weight: u32,
    _pad: u32,
}

const BINDINGS: &[(u32, Binding)] = &[(0, Read), (1, Read), (2, ReadWrite), (3, Uniform)];
const TD: KernelSpec = kernel("td", "td_target", BINDINGS);
const DECODE_GRAD: KernelSpec = kernel("td", "decode_grad", BINDINGS);

/// The override constants of `decode_grad` for `cfg` (also used by the shader test).
pub fn decode_grad_constants(cfg: &TwoHotConfig) -> (KernelSpec, Vec<(&'static str, f64)>) {
    (
        DECODE_GRAD,
        vec![
            ("BINS", cfg.bins as f64),
            ("VMIN", cfg.vmin as f64),
            ("VMAX", cfg.vmax as f64),
        ],
    )
}

/// The TD kernel's spec (for the shader test).
pub const TD_SPEC: KernelSpec = TD;

/// Record TD targets `y = reward + discount * min(q[0..rows], q[q_stride..q_stride + rows])`.
pub fn record_td_target(
    rec: &mut Recorder,
    rows: usize,
    discount: f32,
    reward: &GpuBuffer<f32>,
    q: &GpuBuffer<f32>,
    q_stride: usize,
    y: &GpuBuffer<f32>,
) -> Result<()> {
    if reward.len() < rows || y.len() < rows || q.len() < q_stride + rows || q_stride < rows {
        return Err(Error::Shape(format!(
            "TD target of {rows} rows: reward {}, values {} (head stride {q_stride}), targets {}",
            reward.len(),
            q.len(),
            y.len()
        )));
    }
    if rows == 0 {
        return Ok(());
    }
    let pipe = rec.gpu().pipeline(&TD, &Default::default(), &[])?;
    let p = Params {
        rows: rows as u32,
        discount,
        q_stride: q_stride as u32,
        ..Default::default()
    };
    let groups = grid(rec.gpu(), rows.div_ceil(64), "TD target")?;
    rec.dispatch(
        &pipe,
        &[&reward.buffer, &q.buffer, &y.buffer],
        Some(&p),
        groups,
    )
}

/// Record `grad[r, j] = scale * d value_r / d logits[r, j]` for `rows` rows of logits
/// (`cfg.bins` each, back to back from `logits.1`), written back to back from `grad.1`:
/// `scale * exp(|y|) softmax_j (bin_j - y)` with `y` the softmax-weighted mean bin.
pub fn record_decode_grad(
    rec: &mut Recorder,
    cfg: &TwoHotConfig,
    rows: usize,
    logits: (&GpuBuffer<f32>, usize),
    scale: f32,
    grad: (&GpuBuffer<f32>, usize),
) -> Result<()> {
    record_decode_grad_weighted(rec, cfg, rows, logits, scale, None, grad)
}

/// [`record_decode_grad`] with row `r`'s scale multiplied by `weights.0[r / weights.1]`: each
/// block of `weights.1` rows has its own weight (a population's Q heads, 0 for the heads an
/// agent did not draw and 1 for those it did, so that a backward pass through every head
/// gives each agent the gradient of its own two).
pub fn record_decode_grad_weighted(
    rec: &mut Recorder,
    cfg: &TwoHotConfig,
    rows: usize,
    logits: (&GpuBuffer<f32>, usize),
    scale: f32,
    weights: Option<(&GpuBuffer<f32>, usize)>,
    grad: (&GpuBuffer<f32>, usize),
) -> Result<()> {
    cfg.check()?;
    if let Some((w, per)) = weights {
        if per == 0 || u32::try_from(per).is_err() {
            return Err(Error::InvalidArgument(format!(
                "value gradient: blocks of {per} rows per weight"
            )));
        }
        if w.len() < rows.div_ceil(per) {
            return Err(Error::Shape(format!(
                "value gradient: {rows} rows in blocks of {per} need {} weights, {:?} holds {}",
                rows.div_ceil(per),
                w.label(),
                w.len()
            )));
        }
        if w.buffer == grad.0.buffer {
            return Err(Error::InvalidArgument(
                "value gradient: the gradient would overwrite the weights' buffer".into(),
            ));
        }
    }
    let n = rows * cfg.bins;
    if logits.1 + n > logits.0.len() || grad.1 + n > grad.0.len() {
        return Err(Error::Shape(format!(
            "value gradient of {rows} rows x {} bins: logits {:?} ({} from {}), gradient {:?} ({} \
             from {})",
            cfg.bins,
            logits.0.label(),
            logits.0.len(),
            logits.1,
            grad.0.label(),
            grad.0.len(),
            grad.1
        )));
    }
    if logits.0.buffer == grad.0.buffer {
        return Err(Error::InvalidArgument(
            "value gradient: the gradient would overwrite the logits' buffer".into(),
        ));
    }
    if !scale.is_finite() {
        return Err(Error::InvalidArgument(format!(
            "value gradient: scale {scale}"
        )));
    }
    if rows == 0 {
        return Ok(());
    }
    let (spec, ov) = decode_grad_constants(cfg);
    let pipe = rec.gpu().pipeline(&spec, &Default::default(), &ov)?;
    let p = Params {
        rows: u32::try_from(rows).map_err(|_| Error::Limit(format!("{rows} rows")))?,
        in_offset: u32::try_from(logits.1).map_err(|_| Error::Limit("offset".into()))?,
        out_offset: u32::try_from(grad.1).map_err(|_| Error::Limit("offset".into()))?,
        scale,
        rows_per_weight: weights.map_or(0, |w| w.1 as u32),
        ..Default::default()
    };
    let groups = grid(rec.gpu(), rows.div_ceil(64), "value gradient")?;
    // `reward` holds the weights, or (unread) the logits again.
    let w = weights.map_or(&logits.0.buffer, |w| &w.0.buffer);
    rec.dispatch(
        &pipe,
        &[w, &logits.0.buffer, &grad.0.buffer],
        Some(&p),
        groups,
    )
}
