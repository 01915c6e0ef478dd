//! Mirror of `shaders/fused_mlp.wgsl` and `shaders/fused_mlp_coop.wgsl`: a whole network,
//! layer by layer through [`super::linear::linear`], with the kernels' roundings to f16, then
//! the raw outputs or [`super::two_hot::decode_row`].

use super::linear::{linear, round_f16};
use super::two_hot::decode_row;
use crate::Result;
use crate::kernels::fused_mlp::{FusedShape, OutMode};
use crate::kernels::two_hot::TwoHotConfig;
use crate::model::{Net, Weights};

/// Where the kernels round to f16.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rounding {
    /// Weights stored in f16.
    pub weights: bool,
    /// The first layer's inputs (z and actions) rounded, as the tensor cores see them.
    pub input: bool,
    /// Hidden activations rounded between layers.
    pub hidden: bool,
}

impl Rounding {
    /// What a launch shape rounds.
    pub fn of(shape: &FusedShape) -> Rounding {
        Rounding {
            weights: shape.f16_w,
            input: shape.round_in,
            // The tensor-core kernel keeps its rows in f16.
            hidden: shape.f16_h || shape.coop,
        }
    }
}

/// `net`'s outputs for member `member` on `m` rows of inputs `z` `[m, in1]` and `a`
/// `[m, in2]` (empty without actions), in f64: `[m, N]` raw, or `[m]` decoded values.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    weights: &Weights,
    net: Net,
    member: usize,
    m: usize,
    z: &[f32],
    a: &[f32],
    rounding: Rounding,
    mode: OutMode,
) -> Result<Vec<f64>> {
    let spec = &weights.spec;
    let layers = spec.layers(net);
    let keep = |v: &[f32], round: bool| if round { round_f16(v) } else { v.to_vec() };
    let mut x = keep(z, rounding.input);
    let acts = keep(a, rounding.input);
    let mut out = Vec::new();
    for (i, ls) in layers.iter().enumerate() {
        let t = weights.layer(&ls.prefix, ls.normed)?;
        let k = ls.in1 + ls.in2;
        let n = ls.out;
        let slice = |v: &[f32], len: usize| v[member * len..(member + 1) * len].to_vec();
        let w = keep(&slice(&t.w.data, n * k), rounding.weights);
        let b = slice(&t.b.data, n);
        let ln = t.ln.map(|(g, be)| (slice(&g.data, n), slice(&be.data, n)));
        let cfg = ls.linear(1, false);
        let a_in: &[f32] = if i == 0 { &acts } else { &[] };
        out = linear(
            &cfg,
            m,
            &x,
            a_in,
            &w,
            &b,
            ln.as_ref().map(|(g, be)| (g.as_slice(), be.as_slice())),
            None,
        );
        x = keep(
            &out.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            rounding.hidden,
        );
    }
    Ok(match mode {
        OutMode::Raw => out,
        OutMode::Policy => {
            return Err(crate::Error::InvalidArgument(
                "the sampled policy's mirror is `policy`".into(),
            ));
        }
        OutMode::TwoHot => {
            let cfg = TwoHotConfig::new(spec.num_bins, spec.vmin, spec.vmax)?;
            let n = spec.num_bins;
            (0..m)
                .map(|r| {
                    let logits: Vec<f32> =
                        out[r * n..(r + 1) * n].iter().map(|&v| v as f32).collect();
                    decode_row(&cfg, &logits)
                })
                .collect()
        }
    })
}

/// The policy network on `m` rows of `z`, sampled as the kernel's [`OutMode::Policy`] does:
/// [`super::policy::sample`] with the noise of element (row, i) element `row * A + i` of
/// Philox stream `stream` ([`crate::rng::normals`]).
pub fn policy(
    weights: &Weights,
    m: usize,
    z: &[f32],
    rounding: Rounding,
    seed: u64,
    stream: u32,
) -> Result<super::policy::PolicySample> {
    let spec = &weights.spec;
    let h: Vec<f32> = forward(weights, Net::Policy, 0, m, z, &[], rounding, OutMode::Raw)?
        .iter()
        .map(|&v| v as f32)
        .collect();
    let eps = crate::rng::normals(seed, stream, m * spec.action_dim);
    let cfg = crate::kernels::policy::PolicyConfig::new(spec.action_dim)
        .with_log_std_range(spec.log_std_min, spec.log_std_max);
    Ok(super::policy::sample(&cfg, m, &h, &eps))
}
