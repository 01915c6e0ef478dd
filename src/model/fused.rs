//! A world model's parameters packed for the fused network kernels
//! ([`crate::kernels::fused_mlp`]): every network a single dispatch, networks that read the
//! same rows side by side in one.
//!
//! Packed layout (what `shaders/common/fused_mlp.wgsl` reads): per layer, the weight matrix's
//! first-input columns as `[members][NPAD][KZ]` (rows padded to a multiple of 16 with zeros,
//! columns to a multiple of 16), its action columns as `[members][N][KA]`, all in one `mats`
//! buffer (f32, or f16 at [`Precision::F16`] and [`Precision::TensorCore`]), each block
//! starting at a multiple of 64 elements; biases and LayerNorm parameters as `[members][N]`
//! in one f32 `vecs` buffer; a descriptor table in `desc`. A population would add a leading
//! agent dimension to both buffers and one stride per buffer to the descriptors.

use super::spec::{LayerSpec, ModelSpec, Net};
use super::weights::Weights;
use super::world::NetInput;
use crate::gpu::{Gpu, GpuBuffer, Precision, Recorder};
use crate::kernels::fused_mlp::{
    self, FusedBindings, FusedParams, FusedShape, LAYER_WORDS, MAX_GROUP, MAX_NETS, NET_WORDS,
    OutMode, field,
};
use crate::kernels::linear::Activation;
use crate::kernels::pack::{self, PackLayout};
use crate::{Error, Result};
use half::f16;

/// Where one layer lives in the packed buffers (element offsets).
#[derive(Clone, Debug, PartialEq)]
pub struct PackedLayer {
    /// Shape and activation.
    pub spec: LayerSpec,
    /// Weight sets.
    pub members: usize,
    /// Member 0's `[NPAD, KZ]` block in `mats`.
    pub w: usize,
    /// The first input's width rounded up to 16.
    pub kz: usize,
    /// Output features rounded up to 16.
    pub npad: usize,
    /// Member 0's `[N, KA]` action columns in `mats` (KA = `spec.in2`).
    pub wa: usize,
    /// Bias `[members, N]` in `vecs`.
    pub b: usize,
    /// LayerNorm weight `[members, N]` in `vecs` (with LayerNorm).
    pub g: usize,
    /// LayerNorm bias `[members, N]` in `vecs` (with LayerNorm).
    pub be: usize,
}

impl PackedLayer {
    fn words(&self) -> [u32; LAYER_WORDS] {
        let mut d = [0u32; LAYER_WORDS];
        let s = &self.spec;
        d[field::W] = self.w as u32;
        d[field::KZ] = self.kz as u32;
        d[field::K1] = s.in1 as u32;
        d[field::N] = s.out as u32;
        d[field::NPAD] = self.npad as u32;
        d[field::WA] = self.wa as u32;
        d[field::KA] = s.in2 as u32;
        d[field::B] = self.b as u32;
        d[field::G] = self.g as u32;
        d[field::BE] = self.be as u32;
        d[field::ACT] = match s.act {
            Activation::Identity => 0,
            Activation::Mish => 1,
            Activation::SimNorm => 2,
        };
        d[field::LN] = s.normed as u32;
        d[field::W_STRIDE] = (self.npad * self.kz) as u32;
        d[field::WA_STRIDE] = (s.out * s.in2) as u32;
        d
    }
}

/// The packed layout of a model's networks.
#[derive(Clone, Debug, PartialEq)]
pub struct FusedLayout {
    /// Every layer, network after network.
    pub layers: Vec<PackedLayer>,
    /// Per network (index in [`Net::ALL`]): its first layer and layer count, if present.
    pub nets: [Option<(usize, usize)>; MAX_NETS],
    /// Elements of `mats`.
    pub mats_len: usize,
    /// Elements of `vecs`.
    pub vecs_len: usize,
    /// Widest layer input or output.
    pub widest: usize,
}

fn net_index(net: Net) -> usize {
    Net::ALL.iter().position(|n| *n == net).unwrap_or(0)
}

impl FusedLayout {
    /// The layout of `spec`'s networks.
    pub fn new(spec: &ModelSpec) -> FusedLayout {
        const ALIGN: usize = 64;
        let mut layers = Vec::new();
        let mut nets = [None; MAX_NETS];
        let (mut mats, mut vecs, mut widest) = (0usize, 0usize, 0usize);
        for net in Net::ALL {
            let specs = spec.layers(net);
            if specs.is_empty() {
                continue;
            }
            let members = spec.members(net);
            nets[net_index(net)] = Some((layers.len(), specs.len()));
            for ls in specs {
                let kz = ls.in1.div_ceil(16) * 16;
                let npad = ls.out.div_ceil(16) * 16;
                widest = widest.max(kz).max(npad);
                let w = mats;
                mats = (mats + members * npad * kz).div_ceil(ALIGN) * ALIGN;
                let wa = mats;
                mats = (mats + members * ls.out * ls.in2).div_ceil(ALIGN) * ALIGN;
                let n = members * ls.out;
                let b = vecs;
                let (g, be) = if ls.normed {
                    (b + n, b + 2 * n)
                } else {
                    (b, b)
                };
                vecs += if ls.normed { 3 * n } else { n };
                layers.push(PackedLayer {
                    spec: ls,
                    members,
                    w,
                    kz,
                    npad,
                    wa,
                    b,
                    g,
                    be,
                });
            }
        }
        FusedLayout {
            layers,
            nets,
            mats_len: mats.max(1),
            vecs_len: vecs.max(1),
            widest,
        }
    }

    /// The layers of `net` (empty for an absent network).
    pub fn net_layers(&self, net: Net) -> &[PackedLayer] {
        match self.nets[net_index(net)] {
            Some((first, count)) => &self.layers[first..first + count],
            None => &[],
        }
    }

    /// The descriptor table the kernels read.
    pub fn descriptors(&self) -> Vec<u32> {
        let mut d = vec![0u32; NET_WORDS * MAX_NETS + LAYER_WORDS * self.layers.len()];
        for (i, n) in self.nets.iter().enumerate() {
            if let Some((first, count)) = n {
                d[i * NET_WORDS] = *first as u32;
                d[i * NET_WORDS + 1] = *count as u32;
                d[i * NET_WORDS + 2] = self.layers[*first].members as u32;
            }
        }
        for (i, l) in self.layers.iter().enumerate() {
            let at = NET_WORDS * MAX_NETS + i * LAYER_WORDS;
            d[at..at + LAYER_WORDS].copy_from_slice(&l.words());
        }
        d
    }

    /// `weights` in this layout: (`mats`, `vecs`) as f32.
    pub fn pack(&self, weights: &Weights) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut mats = vec![0.0f32; self.mats_len];
        let mut vecs = vec![0.0f32; self.vecs_len];
        for l in &self.layers {
            let s = &l.spec;
            let t = weights.layer(&s.prefix, s.normed)?;
            let k = s.in1 + s.in2;
            for e in 0..l.members {
                for n in 0..s.out {
                    let row = &t.w.data[(e * s.out + n) * k..(e * s.out + n + 1) * k];
                    let at = l.w + e * l.npad * l.kz + n * l.kz;
                    mats[at..at + s.in1].copy_from_slice(&row[..s.in1]);
                    let at = l.wa + (e * s.out + n) * s.in2;
                    mats[at..at + s.in2].copy_from_slice(&row[s.in1..]);
                }
            }
            let n = l.members * s.out;
            vecs[l.b..l.b + n].copy_from_slice(&t.b.data);
            if let Some((g, be)) = &t.ln {
                vecs[l.g..l.g + n].copy_from_slice(&g.data);
                vecs[l.be..l.be + n].copy_from_slice(&be.data);
            }
        }
        Ok((mats, vecs))
    }
}

enum Mats {
    F32(GpuBuffer<f32>),
    F16(GpuBuffer<f16>),
}

/// Which weight set a network of a launch uses.
#[derive(Clone, Copy, Debug)]
pub enum Member<'a> {
    /// A fixed member (0 for networks that are not ensembles).
    Index(usize),
    /// The member that `map[slot]` names on the GPU (the planner's chosen Q heads), clamped
    /// to the ensemble.
    Head {
        /// The head map.
        map: &'a GpuBuffer<u32>,
        /// Its entry.
        slot: usize,
    },
}

/// Where a network of a launch writes.
#[derive(Clone, Copy, Debug)]
pub struct FusedOut<'a> {
    /// The buffer (the actions in [`OutMode::Policy`]).
    pub buf: &'a GpuBuffer<f32>,
    /// Element offset of row 0.
    pub offset: usize,
    /// Elements between rows.
    pub stride: usize,
    /// Raw outputs (`N` per row), one decoded value per row, or the sampled policy.
    pub mode: OutMode,
    /// [`OutMode::Policy`]'s stats and noise.
    pub policy: Option<PolicyOut<'a>>,
}

/// The policy head's second output and its noise ([`FusedOut::policy`]).
#[derive(Clone, Copy, Debug)]
pub struct PolicyOut<'a> {
    /// Stats rows `[rows, 2A + 3]`: mean, log-std, log-prob, entropy, scaled entropy.
    pub stats: &'a GpuBuffer<f32>,
    /// Element offset of row 0 in `stats`.
    pub stats_offset: usize,
    /// Philox seed.
    pub seed: u64,
    /// Philox stream: the noise of element (row, i) is element `row * A + i` of it, as
    /// [`crate::kernels::rng_fill`] would draw it.
    pub stream: u32,
}

impl<'a> FusedOut<'a> {
    /// Raw rows of `stride` elements from element `offset`.
    pub fn raw(buf: &'a GpuBuffer<f32>, offset: usize, stride: usize) -> Self {
        FusedOut {
            buf,
            offset,
            stride,
            mode: OutMode::Raw,
            policy: None,
        }
    }

    /// The policy network's sampled actions (rows of `A` from element `offset`) and stats.
    pub fn policy(buf: &'a GpuBuffer<f32>, offset: usize, policy: PolicyOut<'a>) -> Self {
        FusedOut {
            buf,
            offset,
            stride: 0,
            mode: OutMode::Policy,
            policy: Some(policy),
        }
    }

    /// One two-hot decoded value per row, `stride` apart from element `offset`.
    pub fn two_hot(buf: &'a GpuBuffer<f32>, offset: usize, stride: usize) -> Self {
        FusedOut {
            buf,
            offset,
            stride,
            mode: OutMode::TwoHot,
            policy: None,
        }
    }
}

/// One network of a fused launch.
#[derive(Clone, Copy, Debug)]
pub struct FusedNet<'a> {
    /// Which network.
    pub net: Net,
    /// Its weight set.
    pub member: Member<'a>,
    /// Its output.
    pub out: FusedOut<'a>,
}

/// A world model's networks for the fused kernels: each network one dispatch, up to
/// [`MAX_GROUP`] networks that read the same rows in one.
///
/// ```no_run
/// # fn main() -> pompc::Result<()> {
/// use pompc::model::{FusedModel, FusedNet, FusedOut, Member, ModelSpec, Net, NetInput, Weights};
/// let gpu = pompc::Gpu::new(Default::default())?;
/// let spec = ModelSpec::tdmpc2(5, 24, 6)?;
/// let fused = FusedModel::new(&gpu, &Weights::init(&spec, 0)?, gpu.precision())?;
/// let (rows, l) = (512, spec.latent_dim);
/// let z = pompc::GpuBuffer::<f32>::new(&gpu, "z", rows * l)?;
/// let a = pompc::GpuBuffer::<f32>::new(&gpu, "a", rows * 6)?;
/// let (next, reward) = (
///     pompc::GpuBuffer::<f32>::new(&gpu, "next", rows * l)?,
///     pompc::GpuBuffer::<f32>::new(&gpu, "reward", rows)?,
/// );
/// // One rollout step: dynamics and the decoded reward in one dispatch.
/// let mut rec = pompc::Recorder::new(&gpu);
/// fused.record(&mut rec, rows, NetInput::new(&z, Some(&a)), &[
///     FusedNet { net: Net::Dynamics, member: Member::Index(0), out: FusedOut::raw(&next, 0, l) },
///     FusedNet { net: Net::Reward, member: Member::Index(0), out: FusedOut::two_hot(&reward, 0, 1) },
/// ])?;
/// rec.submit()?;
/// # Ok(()) }
/// ```
pub struct FusedModel {
    /// The packed layout.
    pub layout: FusedLayout,
    /// The kernels' launch shape on this device.
    pub shape: FusedShape,
    spec: ModelSpec,
    precision: Precision,
    mats: Mats,
    vecs: GpuBuffer<f32>,
    desc: GpuBuffer<u32>,
    // Bound where a launch has no action input or a single output buffer (read and written
    // bindings may not share a buffer).
    no_input: GpuBuffer<f32>,
    no_output: GpuBuffer<f32>,
    no_heads: GpuBuffer<u32>,
}

impl FusedModel {
    /// Pack `weights` for `precision` on `gpu`; [`Error::Unsupported`] when the widest layer's
    /// rows do not fit the device's workgroup memory (the layer-by-layer networks of
    /// [`crate::model::WorldModel`] serve every size).
    pub fn new(gpu: &Gpu, weights: &Weights, precision: Precision) -> Result<FusedModel> {
        weights.spec.validate()?;
        gpu.supports(precision)?;
        let layout = FusedLayout::new(&weights.spec);
        let shape = FusedShape::new(gpu, precision, layout.widest)?;
        let (m, v) = layout.pack(weights)?;
        let mats = if shape.f16_w {
            let h: Vec<f16> = m.iter().map(|&x| f16::from_f32(x)).collect();
            Mats::F16(GpuBuffer::from_slice(gpu, "fused weights (f16)", &h)?)
        } else {
            Mats::F32(GpuBuffer::from_slice(gpu, "fused weights", &m)?)
        };
        let fm = FusedModel {
            desc: GpuBuffer::from_slice(gpu, "fused descriptors", &layout.descriptors())?,
            vecs: GpuBuffer::from_slice(gpu, "fused vectors", &v)?,
            no_input: GpuBuffer::new(gpu, "fused unused input", 4)?,
            no_output: GpuBuffer::new(gpu, "fused unused output", 4)?,
            no_heads: GpuBuffer::new(gpu, "fused no heads", 4)?,
            mats,
            layout,
            shape,
            spec: weights.spec.clone(),
            precision,
        };
        // Build the pipeline now, so that a device that cannot compile it fails here.
        gpu.pipeline(&fm.shape.spec(), &fm.shape.header(), &fm.overrides())?;
        Ok(fm)
    }

    /// The precision the networks run at.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    fn overrides(&self) -> Vec<(&'static str, f64)> {
        fused_mlp::overrides(&self.spec)
    }

    /// Record one dispatch running `nets` (at most [`MAX_GROUP`], all reading `input`'s rows)
    /// over `m` rows. Networks that read `[z, a]` need `input.a`; `input.z_repeat` repeats the
    /// first input's rows as in [`NetInput::repeating`]. Every offset and length is checked.
    pub fn record(
        &self,
        rec: &mut Recorder,
        m: usize,
        input: NetInput,
        nets: &[FusedNet],
    ) -> Result<()> {
        let bad = |msg: String| Err(Error::Shape(format!("fused networks: {msg}")));
        if nets.is_empty() || nets.len() > MAX_GROUP {
            return Err(Error::InvalidArgument(format!(
                "fused networks: {} networks in one launch (1 to {MAX_GROUP})",
                nets.len()
            )));
        }
        if m == 0 {
            return Err(Error::InvalidArgument("fused networks: zero rows".into()));
        }
        let first = |n: Net| self.layout.net_layers(n).first();
        let l0 = first(nets[0].net).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "fused networks: the model has no {:?}",
                nets[0].net
            ))
        })?;
        let (in1, in2) = (l0.spec.in1, l0.spec.in2);
        let mut params = FusedParams {
            m: m as u32,
            ..Default::default()
        };
        let mut outs: Vec<&GpuBuffer<f32>> = Vec::new();
        let mut map: Option<&GpuBuffer<u32>> = None;
        for (g, fnet) in nets.iter().enumerate() {
            let layers = self.layout.net_layers(fnet.net);
            let (Some(f), Some(last)) = (layers.first(), layers.last()) else {
                return Err(Error::InvalidArgument(format!(
                    "fused networks: the model has no {:?}",
                    fnet.net
                )));
            };
            if (f.spec.in1, f.spec.in2) != (in1, in2) {
                return bad(format!(
                    "{:?} reads [{}, {}] features, {:?} [{in1}, {in2}]: one launch shares its input",
                    fnet.net, f.spec.in1, f.spec.in2, nets[0].net
                ));
            }
            let members = f.members;
            let (member, from_map) = match fnet.member {
                Member::Index(e) if e < members => (e, 0),
                Member::Index(e) => {
                    return Err(Error::InvalidArgument(format!(
                        "fused networks: member {e} of {:?}, which has {members}",
                        fnet.net
                    )));
                }
                Member::Head { map: hm, slot } => {
                    if members < 2 {
                        return Err(Error::InvalidArgument(format!(
                            "fused networks: {:?} is not an ensemble: no heads to choose",
                            fnet.net
                        )));
                    }
                    if slot >= hm.len() {
                        return bad(format!("head slot {slot} of a map of {}", hm.len()));
                    }
                    if map.is_some_and(|x| x.raw() != hm.raw()) {
                        return bad("the networks of one launch share one head map".into());
                    }
                    map = Some(hm);
                    (slot, 1)
                }
            };
            let mut o = fnet.out;
            if o.mode == OutMode::Policy {
                let a = self.spec.action_dim;
                let Some(pol) = o.policy else {
                    return bad("a policy output needs its stats buffer and noise".into());
                };
                if fnet.net != Net::Policy || nets.len() != 1 {
                    return bad(format!(
                        "policy sampling runs the policy network alone, not {:?} in a launch \
                         of {}",
                        fnet.net,
                        nets.len()
                    ));
                }
                if 2 * a > self.shape.cw as usize {
                    return Err(Error::Unsupported(format!(
                        "fused policy sampling of {a} actions (at most {})",
                        self.shape.cw / 2
                    )));
                }
                let w = 2 * a + 3;
                let need = m
                    .checked_mul(w)
                    .and_then(|v| v.checked_add(pol.stats_offset));
                if need.is_none_or(|n| n > pol.stats.len()) {
                    return bad(format!(
                        "policy stats: {m} rows of {w} from {} exceed {:?} ({})",
                        pol.stats_offset,
                        pol.stats.label(),
                        pol.stats.len()
                    ));
                }
                if pol.stats.raw() == o.buf.raw()
                    || pol.stats.raw() == input.z.raw()
                    || pol.stats.len() > u32::MAX as usize
                {
                    return bad("policy stats must be their own buffer".into());
                }
                o.stride = a;
                params.policy = [
                    pol.seed as u32,
                    (pol.seed >> 32) as u32,
                    pol.stream,
                    pol.stats_offset as u32,
                ];
                outs.push(o.buf);
                outs.push(pol.stats);
            }
            let width = match o.mode {
                OutMode::Policy => self.spec.action_dim,
                OutMode::Raw => last.spec.out,
                OutMode::TwoHot => {
                    if last.spec.out != self.spec.num_bins {
                        return bad(format!(
                            "{:?} gives {} outputs, two-hot decoding needs {} logits",
                            fnet.net, last.spec.out, self.spec.num_bins
                        ));
                    }
                    1
                }
            };
            if m > 1 && o.stride < width {
                return bad(format!(
                    "{:?}'s output rows of {width} with stride {} would overlap",
                    fnet.net, o.stride
                ));
            }
            let need = (m - 1)
                .checked_mul(o.stride)
                .and_then(|v| v.checked_add(o.offset))
                .and_then(|v| v.checked_add(width));
            if need.is_none_or(|n| n > o.buf.len()) {
                return bad(format!(
                    "{:?}'s output: {m} rows of {width} from {} with stride {} exceed {:?} ({})",
                    fnet.net,
                    o.offset,
                    o.stride,
                    o.buf.label(),
                    o.buf.len()
                ));
            }
            if o.buf.raw() == input.z.raw() || input.a.is_some_and(|a| a.raw() == o.buf.raw()) {
                return bad(format!(
                    "{:?} writes {:?}, which the launch reads",
                    fnet.net,
                    o.buf.label()
                ));
            }
            let slot = match outs.iter().position(|b| b.raw() == o.buf.raw()) {
                _ if o.mode == OutMode::Policy => 0,
                Some(s) => s,
                None if outs.len() < 2 => {
                    outs.push(o.buf);
                    outs.len() - 1
                }
                None => return bad("at most two output buffers per launch".into()),
            };
            params.net[g] = [net_index(fnet.net) as u32, member as u32, from_map, 0];
            params.out[g] = [
                slot as u32,
                o.offset as u32,
                o.stride as u32,
                match o.mode {
                    OutMode::Raw => 0,
                    OutMode::TwoHot => 1,
                    OutMode::Policy => 2,
                },
            ];
        }
        let z_rows = if input.z_repeat > 0 {
            input.z_repeat
        } else {
            m
        };
        let z_need = z_rows
            .checked_mul(in1)
            .and_then(|v| v.checked_add(input.z_offset));
        if z_need.is_none_or(|n| n > input.z.len()) {
            return bad(format!(
                "input {:?} ({}) holds fewer than {z_rows} rows of {in1} from {}",
                input.z.label(),
                input.z.len(),
                input.z_offset
            ));
        }
        let a = match (in2, input.a) {
            (0, _) => &self.no_input,
            (_, None) => {
                return bad(format!("{:?} reads actions; none given", nets[0].net));
            }
            (_, Some(a)) => {
                let need = m
                    .checked_mul(in2)
                    .and_then(|v| v.checked_add(input.a_offset));
                if need.is_none_or(|n| n > a.len()) {
                    return bad(format!(
                        "actions {:?} ({}) hold fewer than {m} rows of {in2} from {}",
                        a.label(),
                        a.len(),
                        input.a_offset
                    ));
                }
                a
            }
        };
        let big = [
            input.z.len(),
            a.len(),
            self.layout.mats_len,
            m,
            outs.iter().map(|b| b.len()).max().unwrap_or(0),
        ];
        if big.iter().any(|&v| v > u32::MAX as usize) {
            return Err(Error::Limit(
                "fused networks: a buffer over 2^32 elements".into(),
            ));
        }
        params.z_offset = input.z_offset as u32;
        params.z_repeat = input.z_repeat as u32;
        params.a_offset = input.a_offset as u32;
        let mats = match &self.mats {
            Mats::F32(b) => b.raw(),
            Mats::F16(b) => b.raw(),
        };
        fused_mlp::record(
            rec,
            &self.shape,
            &self.overrides(),
            FusedBindings {
                desc: self.desc.raw(),
                mats,
                vecs: self.vecs.raw(),
                z: input.z,
                a,
                heads: map.unwrap_or(&self.no_heads),
                out0: outs[0],
                out1: outs.get(1).copied().unwrap_or(&self.no_output),
            },
            &params,
            nets.len(),
        )
    }

    /// Record copies of every parameter from a flat f32 buffer in which the tensor named
    /// `name` starts at element `offset(name)` (as [`crate::model::WorldModel::record_copy_from`]),
    /// into the packed layout (rounded to f16 where the weights are f16).
    pub fn record_copy_from(
        &self,
        rec: &mut Recorder,
        flat: &GpuBuffer<f32>,
        offset: impl Fn(&str) -> Result<usize>,
    ) -> Result<()> {
        for l in &self.layout.layers {
            let s = &l.spec;
            let p = &s.prefix;
            let w = offset(&format!("{p}.weight"))?;
            let k = s.in1 + s.in2;
            let rows = (l.members * s.out) as u32;
            let z_part = PackLayout {
                rows,
                cols: s.in1 as u32,
                src_offset: w as u32,
                src_stride: k as u32,
                dst_offset: l.w as u32,
                dst_stride: l.kz as u32,
                block_rows: s.out as u32,
                dst_block: (l.npad * l.kz) as u32,
            };
            let a_part = PackLayout {
                rows,
                cols: s.in2 as u32,
                src_offset: (w + s.in1) as u32,
                src_stride: k as u32,
                dst_offset: l.wa as u32,
                dst_stride: s.in2 as u32,
                block_rows: s.out as u32,
                dst_block: (s.out * s.in2) as u32,
            };
            for at in [z_part, a_part] {
                if at.cols == 0 {
                    continue;
                }
                match &self.mats {
                    Mats::F32(m) => pack::record(rec, flat, m, at)?,
                    Mats::F16(m) => pack::record(rec, flat, m, at)?,
                }
            }
            let n = l.members * s.out;
            rec.copy_range(flat, offset(&format!("{p}.bias"))?, &self.vecs, l.b, n)?;
            if s.normed {
                rec.copy_range(flat, offset(&format!("{p}.ln.weight"))?, &self.vecs, l.g, n)?;
                rec.copy_range(flat, offset(&format!("{p}.ln.bias"))?, &self.vecs, l.be, n)?;
            }
        }
        Ok(())
    }
}
