//! TD-MPC2's discrete regression heads (`shaders/two_hot.wgsl`): logits over `bins` bins at
//! `linspace(vmin, vmax, bins)` in symlog space decoded to values (`two_hot_inv`), and
//! scalar targets encoded as two-hot rows (`two_hot`).
//!
//! ```no_run
//! # fn main() -> pompc::Result<()> {
//! use pompc::kernels::two_hot::{self, TwoHotConfig};
//! let gpu = pompc::Gpu::new(Default::default())?;
//! let cfg = TwoHotConfig::TDMPC2; // 101 bins on [-10, 10]
//! let logits = pompc::GpuBuffer::<f32>::new(&gpu, "reward logits", 512 * 101)?;
//! let reward = pompc::GpuBuffer::<f32>::new(&gpu, "reward", 512)?;
//! let mut rec = pompc::Recorder::new(&gpu);
//! two_hot::record_decode(&mut rec, &cfg, 512, &logits, &reward)?;
//! rec.submit()?;
//! # Ok(()) }
//! ```

use super::launch::{IN_OUT, count_within, kernel, record_pipeline};
use crate::gpu::shader::Header;
use crate::gpu::{Gpu, GpuBuffer, KernelSpec, Recorder};
use crate::{Error, Result};

/// The bins of a discrete regression head.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TwoHotConfig {
    /// Number of bins (TD-MPC2's `num_bins`), at least 2.
    pub bins: usize,
    /// Lowest bin, in symlog space (`vmin`).
    pub vmin: f32,
    /// Highest bin, in symlog space (`vmax`); above `vmin`.
    pub vmax: f32,
}

impl TwoHotConfig {
    /// TD-MPC2's defaults: 101 bins on [-10, 10] (bin size 0.2).
    pub const TDMPC2: TwoHotConfig = TwoHotConfig {
        bins: 101,
        vmin: -10.0,
        vmax: 10.0,
    };

    /// A checked configuration.
    pub fn new(bins: usize, vmin: f32, vmax: f32) -> Result<Self> {
        let cfg = TwoHotConfig { bins, vmin, vmax };
        cfg.check()?;
        Ok(cfg)
    }

    /// `Err` unless `bins >= 2` and `vmin < vmax`, both finite.
    pub fn check(&self) -> Result<()> {
        if self.bins < 2 {
            return Err(Error::InvalidArgument(format!(
                "two-hot regression needs at least 2 bins, got {}",
                self.bins
            )));
        }
        if self.bins > u32::MAX as usize / 2 {
            return Err(Error::Limit(format!("{} bins", self.bins)));
        }
        if !(self.vmin.is_finite() && self.vmax.is_finite() && self.vmin < self.vmax) {
            return Err(Error::InvalidArgument(format!(
                "two-hot bins need finite vmin < vmax, got [{}, {}]",
                self.vmin, self.vmax
            )));
        }
        Ok(())
    }

    /// Distance between neighbouring bins, `(vmax - vmin) / (bins - 1)`.
    pub fn bin_size(&self) -> f64 {
        (self.vmax as f64 - self.vmin as f64) / (self.bins - 1) as f64
    }
}

/// Which entry point of the shader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TwoHotOp {
    /// Logits `[R, bins]` to values `[R]`.
    Decode,
    /// Targets `[R]` to two-hot rows `[R, bins]`.
    Encode,
}

/// Where the rows of one operand sit in its buffer: row `r` starts at element
/// `offset + r * stride`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RowLayout {
    /// Element index of row 0.
    pub offset: usize,
    /// Elements from one row to the next. Read operands may use any stride (0 repeats one
    /// row); written operands need at least the row width so that rows do not overlap.
    pub stride: usize,
}

impl RowLayout {
    /// Rows of `width` elements back to back from element 0.
    pub fn contiguous(width: usize) -> Self {
        RowLayout {
            offset: 0,
            stride: width,
        }
    }

    /// Rows of `width` elements back to back from element `offset`.
    pub fn at(offset: usize, width: usize) -> Self {
        RowLayout {
            offset,
            stride: width,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    in_offset: u32,
    in_stride: u32,
    out_offset: u32,
    out_stride: u32,
    _pad: [u32; 3],
}

const DECODE: KernelSpec = kernel("two_hot", "decode", IN_OUT);
const ENCODE: KernelSpec = kernel("two_hot", "encode", IN_OUT);

/// Threads that share one row in `decode`: the power of two that gives each at most 16 bins
/// (8 for TD-MPC2's 101 bins, so 8 rows per workgroup of 64), at most 64.
pub fn decode_lanes(bins: usize) -> u32 {
    (bins.div_ceil(16).next_power_of_two().min(64)) as u32
}

/// The header and override constants of one pipeline: exactly what the launch code builds, so
/// the shader test can validate every combination.
pub fn pipeline_constants(
    cfg: &TwoHotConfig,
    op: TwoHotOp,
) -> (KernelSpec, Header, Vec<(&'static str, f64)>) {
    let mut ov: Vec<(&'static str, f64)> = vec![
        ("BINS", cfg.bins as f64),
        ("VMIN", cfg.vmin as f64),
        ("VMAX", cfg.vmax as f64),
    ];
    let spec = match op {
        TwoHotOp::Decode => {
            ov.push(("LANES", decode_lanes(cfg.bins) as f64));
            DECODE
        }
        TwoHotOp::Encode => ENCODE,
    };
    (spec, Header::default(), ov)
}

/// `groups` workgroups as an x-by-y grid within the device's per-dimension limit.
pub(crate) fn grid(gpu: &Gpu, groups: usize, what: &str) -> Result<[u32; 3]> {
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    if groups <= max {
        return Ok([groups as u32, 1, 1]);
    }
    let y = groups.div_ceil(max);
    if y > max {
        return Err(Error::Limit(format!(
            "{what}: {groups} workgroups exceed {max} x {max}"
        )));
    }
    Ok([max as u32, y as u32, 1])
}

/// Check that `rows` rows of `width` elements laid out as `layout` fit in `len` elements, and
/// (for written operands) do not overlap; returns the layout as 32-bit shader parameters.
pub(crate) fn fit_rows(
    what: &str,
    name: &str,
    len: usize,
    rows: usize,
    width: usize,
    layout: RowLayout,
    written: bool,
) -> Result<(u32, u32)> {
    if written && rows > 1 && layout.stride < width {
        return Err(Error::Shape(format!(
            "{what}: {name} rows of {width} elements with stride {} would overlap",
            layout.stride
        )));
    }
    let need = (rows - 1)
        .checked_mul(layout.stride)
        .and_then(|v| v.checked_add(layout.offset))
        .and_then(|v| v.checked_add(width));
    match need {
        Some(need) if need <= len => {}
        _ => {
            return Err(Error::Shape(format!(
                "{what}: {name} holds {len} elements, {rows} rows of {width} at offset {} with \
                 stride {} need {}",
                layout.offset,
                layout.stride,
                need.map_or("more than usize".to_string(), |n| n.to_string())
            )));
        }
    }
    let stride = if rows > 1 { layout.stride } else { 0 };
    match (u32::try_from(layout.offset), u32::try_from(stride)) {
        (Ok(o), Ok(s)) => Ok((o, s)),
        _ => Err(Error::Limit(format!(
            "{what}: {name} offset {} or stride {stride} over 2^32",
            layout.offset
        ))),
    }
}

/// Decode `rows` rows of logits, stored back to back in `logits` (`[rows, bins]`), into
/// `values` (`[rows]`): `symexp(sum_j softmax(logits)_j bin_j)`, TD-MPC2's `two_hot_inv`.
pub fn record_decode(
    rec: &mut Recorder,
    cfg: &TwoHotConfig,
    rows: usize,
    logits: &GpuBuffer<f32>,
    values: &GpuBuffer<f32>,
) -> Result<()> {
    record_decode_strided(
        rec,
        cfg,
        rows,
        logits,
        RowLayout::contiguous(cfg.bins),
        values,
        RowLayout::contiguous(1),
    )
}

/// [`record_decode`] with rows anywhere in the buffers: the logits of row `r` start at
/// `logits_at.offset + r * logits_at.stride`, its value goes to
/// `values_at.offset + r * values_at.stride`. For example the rows of Q-head `q` of a
/// `[num_q, R, bins]` buffer: `RowLayout::at(q * R * bins, bins)`.
pub fn record_decode_strided(
    rec: &mut Recorder,
    cfg: &TwoHotConfig,
    rows: usize,
    logits: &GpuBuffer<f32>,
    logits_at: RowLayout,
    values: &GpuBuffer<f32>,
    values_at: RowLayout,
) -> Result<()> {
    let per_group = 64 / decode_lanes(cfg.bins) as usize;
    record_op(
        rec,
        cfg,
        TwoHotOp::Decode,
        rows,
        ("logits", logits, logits_at, cfg.bins),
        ("values", values, values_at, 1),
        &|what| {
            let rows = count_within(what, Some(rows), u32::MAX as usize, || {
                format!("{rows} rows over 2^32")
            })?;
            Ok(rows.div_ceil(per_group))
        },
    )
}

/// Encode `rows` targets (`[rows]`) as two-hot rows stored back to back in `two_hot`
/// (`[rows, bins]`): TD-MPC2's `two_hot`.
pub fn record_encode(
    rec: &mut Recorder,
    cfg: &TwoHotConfig,
    rows: usize,
    targets: &GpuBuffer<f32>,
    two_hot: &GpuBuffer<f32>,
) -> Result<()> {
    record_encode_strided(
        rec,
        cfg,
        rows,
        targets,
        RowLayout::contiguous(1),
        two_hot,
        RowLayout::contiguous(cfg.bins),
    )
}

/// [`record_encode`] with rows anywhere in the buffers: target `r` is element
/// `targets_at.offset + r * targets_at.stride` (stride 0 repeats one target), its row goes to
/// `two_hot_at.offset + r * two_hot_at.stride`.
pub fn record_encode_strided(
    rec: &mut Recorder,
    cfg: &TwoHotConfig,
    rows: usize,
    targets: &GpuBuffer<f32>,
    targets_at: RowLayout,
    two_hot: &GpuBuffer<f32>,
    two_hot_at: RowLayout,
) -> Result<()> {
    record_op(
        rec,
        cfg,
        TwoHotOp::Encode,
        rows,
        ("targets", targets, targets_at, 1),
        ("two-hot rows", two_hot, two_hot_at, cfg.bins),
        &|what| {
            // One thread per output element, numbered in u32 by the shader.
            let elements = count_within(
                what,
                rows.checked_mul(cfg.bins),
                u32::MAX as usize - 64,
                || format!("{rows} rows of {} bins over 2^32 elements", cfg.bins),
            )?;
            Ok(elements.div_ceil(64))
        },
    )
}

/// One operand of [`record_op`]: name, buffer, layout, row width.
type Operand<'a> = (&'static str, &'a GpuBuffer<f32>, RowLayout, usize);

/// What decode and encode share: with rows, check `src` (read) and `dst` (written), then
/// record `op` over the workgroups that `groups` counts (after its own checks; it gets the
/// name errors give).
fn record_op(
    rec: &mut Recorder,
    cfg: &TwoHotConfig,
    op: TwoHotOp,
    rows: usize,
    (src_name, src, src_at, src_width): Operand,
    (dst_name, dst, dst_at, dst_width): Operand,
    groups: &dyn Fn(&str) -> Result<usize>,
) -> Result<()> {
    cfg.check()?;
    if rows == 0 {
        return Ok(());
    }
    let what = match op {
        TwoHotOp::Decode => "two-hot decode",
        TwoHotOp::Encode => "two-hot encode",
    };
    let (in_offset, in_stride) =
        fit_rows(what, src_name, src.len(), rows, src_width, src_at, false)?;
    let (out_offset, out_stride) =
        fit_rows(what, dst_name, dst.len(), rows, dst_width, dst_at, true)?;
    let groups = grid(rec.gpu(), groups(what)?, what)?;
    let p = Params {
        rows: rows as u32,
        in_offset,
        in_stride,
        out_offset,
        out_stride,
        _pad: [0; 3],
    };
    record_pipeline(
        rec,
        pipeline_constants(cfg, op),
        &[&src.buffer, &dst.buffer],
        &p,
        groups,
    )
}
