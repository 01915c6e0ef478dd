//! The world model's networks on the GPU, each a chain of fused linear layers.
//!
//! At [`Precision::F16`] and [`Precision::TensorCore`] the weight matrices and the hidden
//! activations between layers are stored in f16 (biases, LayerNorm parameters, the networks'
//! inputs and outputs stay f32, so the planner's kernels see f32 everywhere); at
//! [`Precision::TensorCore`] the large layers' products run on tensor cores. Every sum,
//! LayerNorm and activation is f32.

use super::spec::{LayerSpec, ModelSpec, Net};
use super::weights::Weights;
use crate::gpu::{Gpu, GpuBuffer, Precision, Recorder};
use crate::kernels::linear::{Element, Linear, LinearInputs};
use crate::{Error, Result};
use half::f16;
use std::sync::Mutex;

/// A weight matrix in the layer's storage type.
enum Matrix {
    F32(GpuBuffer<f32>),
    F16(GpuBuffer<f16>),
}

/// One layer with its parameters on the GPU.
pub struct DenseLayer {
    /// Shape and activation.
    pub spec: LayerSpec,
    linear: Linear,
    w: Matrix,
    b: GpuBuffer<f32>,
    ln: Option<(GpuBuffer<f32>, GpuBuffer<f32>)>,
}

impl DenseLayer {
    /// Record this layer reading `z` (and `a`) and writing `y`, whatever the weights' type.
    #[allow(clippy::too_many_arguments)]
    fn record<X: Element, Y: Element>(
        &self,
        rec: &mut Recorder,
        m: usize,
        (z, z_offset): (&GpuBuffer<X>, usize),
        (a, a_offset): (Option<&GpuBuffer<f32>>, usize),
        y: &GpuBuffer<Y>,
        heads: Option<&GpuBuffer<u32>>,
        (z_repeat, input_groups, input_strides): (usize, usize, Option<(usize, usize)>),
    ) -> Result<()> {
        let ln = self.ln.as_ref().map(|(g, b)| (g, b));
        // The same inputs whatever the weights' element type (each arm's `w` has its own).
        macro_rules! record_with {
            ($w:expr) => {
                self.linear.record(
                    rec,
                    m,
                    LinearInputs {
                        z,
                        a,
                        w: $w,
                        b: &self.b,
                        ln,
                        y,
                        heads,
                        z_offset,
                        a_offset,
                        z_repeat,
                        input_groups,
                        input_strides,
                    },
                )
            };
        }
        match &self.w {
            Matrix::F32(w) => record_with!(w),
            Matrix::F16(w) => record_with!(w),
        }
    }
}

/// A network: layers applied in order; an ensemble when `members > 1` (the Q heads, stacked
/// so that all heads, or a chosen subset, run in one dispatch per layer).
pub struct Mlp {
    /// Which network.
    pub net: Net,
    /// Weight sets, all agents' together (an agent's members one after the other).
    pub members: usize,
    /// Agents whose weights are stacked ([`WorldModel::population`]; 1 otherwise).
    pub agents: usize,
    layers: Vec<DenseLayer>,
    precision: Precision,
}

/// Scratch activations for forward passes of up to `max_rows` rows (per weight set).
pub struct Workspace {
    max_rows: usize,
    slots: usize,
    hidden: [GpuBuffer<f32>; 2],
    /// The f16 twins for f16 storage, made on first use.
    hidden16: Mutex<Option<[GpuBuffer<f16>; 2]>>,
}

impl Workspace {
    /// Room for `max_rows` rows through any network of `spec`, all Q heads at once.
    pub fn new(gpu: &Gpu, spec: &ModelSpec, max_rows: usize) -> Result<Workspace> {
        Self::with_slots(gpu, spec, max_rows, spec.num_q)
    }

    /// Room for `max_rows` rows through any network, with at most `slots` Q heads at once
    /// (the planner evaluates 2).
    pub fn with_slots(
        gpu: &Gpu,
        spec: &ModelSpec,
        max_rows: usize,
        slots: usize,
    ) -> Result<Workspace> {
        spec.validate()?;
        let slots = slots.max(1);
        let len = slots
            .checked_mul(max_rows)
            .and_then(|n| n.checked_mul(Self::width(spec)))
            .ok_or_else(|| {
                Error::Limit(format!(
                    "a workspace for {max_rows} rows and {slots} Q heads overflows the address \
                     space"
                ))
            })?;
        Ok(Workspace {
            max_rows,
            slots,
            hidden: [
                GpuBuffer::new(gpu, "hidden activations 0", len)?,
                GpuBuffer::new(gpu, "hidden activations 1", len)?,
            ],
            hidden16: Mutex::new(None),
        })
    }

    fn hidden16(&self, gpu: &Gpu) -> Result<[GpuBuffer<f16>; 2]> {
        let mut h = self
            .hidden16
            .lock()
            .map_err(|_| Error::InvalidArgument("workspace lock poisoned".into()))?;
        if let Some(b) = h.as_ref() {
            return Ok(b.clone());
        }
        let len = self.hidden[0].len();
        let b = [
            GpuBuffer::new(gpu, "hidden activations 0 (f16)", len)?,
            GpuBuffer::new(gpu, "hidden activations 1 (f16)", len)?,
        ];
        *h = Some(b.clone());
        Ok(b)
    }

    /// Largest number of rows.
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// Widest hidden layer of `spec`: elements per row and slot.
    pub fn width(spec: &ModelSpec) -> usize {
        spec.mlp_dim.max(spec.enc_dim).max(spec.latent_dim)
    }
}

/// Where a network's input comes from.
#[derive(Clone, Copy, Debug)]
pub struct NetInput<'a> {
    /// The latent (or observation) rows, `[rows, in1]`.
    pub z: &'a GpuBuffer<f32>,
    /// The action rows `[rows, in2]` for networks that read `[z, a]`.
    pub a: Option<&'a GpuBuffer<f32>>,
    /// Element offset of row 0 in `z`.
    pub z_offset: usize,
    /// Element offset of row 0 in `a` (time step t of actions stored `[T, rows, A]`).
    pub a_offset: usize,
    /// 0, or `g`: `z` holds `g` rows and row `r` reads `z` row `r % g` (see
    /// [`NetInput::repeating`]).
    pub z_repeat: usize,
    /// In a population ([`WorldModel::population`]): elements between consecutive agents'
    /// rows in `z` and in `a`; `None`: back to back (see [`NetInput::strided`]).
    pub strides: Option<(usize, usize)>,
}

impl<'a> NetInput<'a> {
    /// Whole buffers: `z` alone, or `[z, a]`.
    pub fn new(z: &'a GpuBuffer<f32>, a: Option<&'a GpuBuffer<f32>>) -> Self {
        NetInput {
            z,
            a,
            z_offset: 0,
            a_offset: 0,
            z_repeat: 0,
            strides: None,
        }
    }

    /// `z` holds `g` distinct rows and row `r` of the input is `[z[r % g], a[r]]`: the
    /// planner's first step, where every sample of an environment starts from its latent.
    /// The first layer then multiplies the `g` latents once instead of every row (networks
    /// that read `[z, a]` only).
    pub fn repeating(mut self, g: usize) -> Self {
        self.z_repeat = g;
        self
    }

    /// The same buffers starting at element offsets.
    pub fn at(mut self, z_offset: usize, a_offset: usize) -> Self {
        self.z_offset = z_offset;
        self.a_offset = a_offset;
        self
    }

    /// In a population, agent `i`'s rows start `i * z_stride` elements after `z_offset` in `z`
    /// and `i * a_stride` after `a_offset` in `a` (the planner's policy trajectories: a prefix
    /// of each agent's sample rows). Without it the agents' rows are back to back.
    pub fn strided(mut self, z_stride: usize, a_stride: usize) -> Self {
        self.strides = Some((z_stride, a_stride));
        self
    }
}

impl DenseLayer {
    /// Upload one layer of `members` stacked weight sets: `w` `[members, out, in]`, `b`, and
    /// the LayerNorm's gain and shift `[members, out]` (f16 weights unless `precision` is
    /// f32).
    #[allow(clippy::too_many_arguments)]
    fn upload(
        gpu: &Gpu,
        spec: LayerSpec,
        members: usize,
        shared_input: bool,
        precision: Precision,
        w: &[f32],
        b: &[f32],
        ln: Option<(&[f32], &[f32])>,
    ) -> Result<DenseLayer> {
        let up = |name: &str, data: &[f32]| {
            GpuBuffer::from_slice(gpu, &format!("{}.{name}", spec.prefix), data)
        };
        let ln = match ln {
            Some((g, b)) => Some((up("ln.weight", g)?, up("ln.bias", b)?)),
            None => None,
        };
        let w = if precision.f16_storage() {
            let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            Matrix::F16(GpuBuffer::from_slice(
                gpu,
                &format!("{}.weight (f16)", spec.prefix),
                &h,
            )?)
        } else {
            Matrix::F32(up("weight", w)?)
        };
        Ok(DenseLayer {
            linear: Linear::new(gpu, spec.linear(members, shared_input))?
                .with_precision(gpu, precision)?,
            w,
            b: up("bias", b)?,
            ln,
            spec,
        })
    }

    /// Record copies of this layer's parameters from `flat`, member `i` from the tensors named
    /// `{prefixes[i]}.weight` (and `.bias`, `.ln.weight`, `.ln.bias`) at `offset(name)`; f16
    /// weights are rounded on the way.
    /// In a population of `agents`, the copies go to agent `agent`'s share of each buffer.
    #[allow(clippy::too_many_arguments)]
    fn record_copy_from(
        &self,
        rec: &mut Recorder,
        flat: &GpuBuffer<f32>,
        offset: &impl Fn(&str) -> Result<usize>,
        prefixes: &[&String],
        (agent, agents): (usize, usize),
    ) -> Result<()> {
        let parts = prefixes.len() * agents;
        for (i, p) in prefixes.iter().enumerate() {
            // Member i's share of the agent's share of a stacked buffer.
            let part = agent * prefixes.len() + i;
            let copy = |rec: &mut Recorder, name: String, dst: &GpuBuffer<f32>| {
                let len = dst.len() / parts;
                rec.copy_range(flat, offset(&name)?, dst, part * len, len)
            };
            match &self.w {
                Matrix::F32(w) => copy(rec, format!("{p}.weight"), w)?,
                // Rounded to f16 on the way (an f16 or tensor-core planner).
                Matrix::F16(w) => {
                    let len = w.len() / parts;
                    crate::kernels::cast::record_to_f16(
                        rec,
                        flat,
                        offset(&format!("{p}.weight"))?,
                        w,
                        part * len,
                        len,
                    )?
                }
            }
            copy(rec, format!("{p}.bias"), &self.b)?;
            if let Some((g, b)) = &self.ln {
                copy(rec, format!("{p}.ln.weight"), g)?;
                copy(rec, format!("{p}.ln.bias"), b)?;
            }
        }
        Ok(())
    }
}

impl Mlp {
    /// The network of every agent in `weights` (one for a single model), stacked agent by
    /// agent.
    fn new(gpu: &Gpu, weights: &[&Weights], net: Net, precision: Precision) -> Result<Mlp> {
        let spec = &weights[0].spec;
        let agents = weights.len();
        let members = spec.members(net) * agents;
        let mut layers = Vec::new();
        for (i, ls) in spec.layers(net).into_iter().enumerate() {
            let mut cat = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
            for w in weights {
                let t = w.layer(&ls.prefix, ls.normed)?;
                cat[0].extend_from_slice(&t.w.data);
                cat[1].extend_from_slice(&t.b.data);
                if let Some((g, b)) = t.ln {
                    cat[2].extend_from_slice(&g.data);
                    cat[3].extend_from_slice(&b.data);
                }
            }
            let [w, b, g, be] = &cat;
            let ln = ls.normed.then_some((&g[..], &be[..]));
            // The first layer of an ensemble reads the same rows for every member of an agent.
            layers.push(DenseLayer::upload(
                gpu,
                ls,
                members,
                i == 0,
                precision,
                w,
                b,
                ln,
            )?);
        }
        Ok(Mlp {
            net,
            members,
            agents,
            layers,
            precision,
        })
    }

    /// The precision the network runs at.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Output features.
    pub fn out_dim(&self) -> usize {
        self.layers.last().map_or(0, |l| l.spec.out)
    }

    /// The layers.
    pub fn layers(&self) -> &[DenseLayer] {
        &self.layers
    }

    fn last_layer(&self) -> &DenseLayer {
        self.layers.last().expect("a network has layers")
    }

    /// Floating-point operations of a forward pass of `m` rows for `slots` weight sets.
    pub fn flops(&self, m: usize, slots: usize) -> f64 {
        self.layers
            .iter()
            .map(|l| 2.0 * (m * (l.spec.in1 + l.spec.in2) * l.spec.out * slots) as f64)
            .sum()
    }

    /// Record a forward pass of `m` rows into `rec`, writing `out` `[slots, m, out_dim]`.
    /// `heads` picks the weight sets of an ensemble (all of them when `None`).
    pub fn record(
        &self,
        rec: &mut Recorder,
        m: usize,
        input: NetInput,
        heads: Option<&GpuBuffer<u32>>,
        ws: &Workspace,
        out: &GpuBuffer<f32>,
    ) -> Result<()> {
        let slots = heads.map_or(self.members, |h| h.len());
        if !slots.is_multiple_of(self.agents) {
            return Err(Error::InvalidArgument(format!(
                "{:?} of {} agents: {slots} heads are not the same number per agent",
                self.net, self.agents
            )));
        }
        if m > ws.max_rows || slots > ws.slots {
            return Err(Error::Limit(format!(
                "{:?} forward of {m} rows x {slots} heads exceeds the workspace ({} rows x {} \
                 heads); make a larger Workspace",
                self.net, ws.max_rows, ws.slots
            )));
        }
        if heads.is_some() && self.members == 1 {
            return Err(Error::InvalidArgument(format!(
                "{:?} is not an ensemble: no heads to choose",
                self.net
            )));
        }
        let n = self.layers.len();
        let input_a = (input.a, input.a_offset);
        // The first layer reads each agent's rows of the input (shared by the agent's members);
        // the others each slot's own rows of the hidden activations.
        let first = (input.z_repeat, self.agents, input.strides);
        let hidden = (0, 1, None);
        if !self.precision.f16_storage() {
            for (i, layer) in self.layers.iter().enumerate() {
                let (z, a) = if i == 0 {
                    ((input.z, input.z_offset), input_a)
                } else {
                    ((&ws.hidden[(i - 1) % 2], 0), (None, 0))
                };
                let y = if i + 1 == n { out } else { &ws.hidden[i % 2] };
                let how = if i == 0 { first } else { hidden };
                layer.record(rec, m, z, a, y, heads, how)?;
            }
            return Ok(());
        }
        // f16 hidden activations: f32 in, f16 between layers, f32 out.
        let h = ws.hidden16(rec.gpu())?;
        for (i, layer) in self.layers.iter().enumerate() {
            let last = i + 1 == n;
            match (i == 0, last) {
                (true, true) => layer.record(
                    rec,
                    m,
                    (input.z, input.z_offset),
                    input_a,
                    out,
                    heads,
                    first,
                )?,
                (true, false) => layer.record(
                    rec,
                    m,
                    (input.z, input.z_offset),
                    input_a,
                    &h[0],
                    heads,
                    first,
                )?,
                (false, true) => {
                    layer.record(rec, m, (&h[(i - 1) % 2], 0), (None, 0), out, heads, hidden)?
                }
                (false, false) => layer.record(
                    rec,
                    m,
                    (&h[(i - 1) % 2], 0),
                    (None, 0),
                    &h[i % 2],
                    heads,
                    hidden,
                )?,
            }
        }
        Ok(())
    }
}

/// The dynamics and reward networks' layers but the last, as two-member ensembles (member 0
/// the dynamics', member 1 the reward's). Both networks read the same `[z, a]` rows at every
/// rollout step, so each of these layers is one launch for the two instead of two, with twice
/// the workgroups (a B = 1 plan step's layers leave most of a large GPU idle). Built when the
/// two networks have the same depth and the same layer shapes but for the last (TD-MPC2's do).
struct RolloutPair {
    layers: Vec<DenseLayer>,
}

impl RolloutPair {
    fn new(gpu: &Gpu, weights: &Weights, precision: Precision) -> Result<Option<RolloutPair>> {
        let spec = &weights.spec;
        let (d, r) = (spec.layers(Net::Dynamics), spec.layers(Net::Reward));
        let shape = |l: &LayerSpec| (l.in1, l.in2, l.out, l.normed, l.act);
        let paired = d.len().saturating_sub(1);
        if d.len() != r.len()
            || paired == 0
            || d.iter()
                .zip(&r)
                .take(paired)
                .any(|(x, y)| shape(x) != shape(y))
        {
            return Ok(None);
        }
        let mut layers = Vec::with_capacity(paired);
        for (i, (dl, rl)) in d.iter().zip(&r).take(paired).enumerate() {
            let (td, tr) = (
                weights.layer(&dl.prefix, dl.normed)?,
                weights.layer(&rl.prefix, rl.normed)?,
            );
            let cat = |x: &[f32], y: &[f32]| [x, y].concat();
            let ln = match (td.ln, tr.ln) {
                (Some((g0, b0)), Some((g1, b1))) => {
                    Some((cat(&g0.data, &g1.data), cat(&b0.data, &b1.data)))
                }
                _ => None,
            };
            let spec = LayerSpec {
                prefix: format!("{}+{}", dl.prefix, rl.prefix),
                ..dl.clone()
            };
            layers.push(DenseLayer::upload(
                gpu,
                spec,
                2,
                i == 0,
                precision,
                &cat(&td.w.data, &tr.w.data),
                &cat(&td.b.data, &tr.b.data),
                ln.as_ref().map(|(g, b)| (&g[..], &b[..])),
            )?);
        }
        Ok(Some(RolloutPair { layers }))
    }

    /// The paired layers through `hidden` (ping-pong, `[2, m, out]` each), then each network's
    /// last layer from its member's rows: `tails` are the dynamics' and the reward's last
    /// layers with their outputs.
    fn record<H: Element>(
        &self,
        rec: &mut Recorder,
        m: usize,
        input: NetInput,
        hidden: &[GpuBuffer<H>; 2],
        tails: [(&DenseLayer, &GpuBuffer<f32>); 2],
    ) -> Result<()> {
        let n = self.layers.len();
        for (i, layer) in self.layers.iter().enumerate() {
            if i == 0 {
                let a = (input.a, input.a_offset);
                let how = (0, 1, None);
                layer.record(rec, m, (input.z, input.z_offset), a, &hidden[0], None, how)?;
            } else {
                let z = (&hidden[(i - 1) % 2], 0);
                layer.record(rec, m, z, (None, 0), &hidden[i % 2], None, (0, 1, None))?;
            }
        }
        let (h, width) = (&hidden[(n - 1) % 2], self.layers[n - 1].spec.out);
        for (member, (layer, out)) in tails.into_iter().enumerate() {
            let z = (h, member * m * width);
            layer.record(rec, m, z, (None, 0), out, None, (0, 1, None))?;
        }
        Ok(())
    }
}

/// A TD-MPC2 world model on the GPU: encoder, dynamics, reward, policy, Q ensemble and the
/// optional termination head.
///
/// ```no_run
/// # fn main() -> pompc::Result<()> {
/// use pompc::model::{ModelSpec, NetInput, Weights, WorldModel, Workspace};
/// let gpu = pompc::Gpu::new(Default::default())?;
/// let spec = ModelSpec::tdmpc2(5, 24, 6)?;
/// let model = WorldModel::new(&gpu, &Weights::init(&spec, 0)?)?;
/// let ws = Workspace::new(&gpu, &spec, 512)?;
/// let obs = pompc::GpuBuffer::<f32>::new(&gpu, "obs", 512 * 24)?;
/// let z = pompc::GpuBuffer::<f32>::new(&gpu, "z", 512 * 512)?;
/// let mut rec = pompc::Recorder::new(&gpu);
/// model.encoder.record(&mut rec, 512, NetInput::new(&obs, None), None, &ws, &z)?;
/// rec.submit()?;
/// # Ok(()) }
/// ```
pub struct WorldModel {
    /// Sizes.
    pub spec: ModelSpec,
    /// h: observation -> latent.
    pub encoder: Mlp,
    /// d: [latent, action] -> latent.
    pub dynamics: Mlp,
    /// R: [latent, action] -> reward logits.
    pub reward: Mlp,
    /// pi: latent -> [mean, raw log-std].
    pub policy: Mlp,
    /// Q ensemble: [latent, action] -> value logits per head.
    pub q: Mlp,
    /// Termination: latent -> logit, for episodic models.
    pub termination: Option<Mlp>,
    /// The dynamics and reward layers paired for [`WorldModel::record_reward_and_dynamics`].
    pair: Option<RolloutPair>,
    /// Whether [`WorldModel::record_reward_and_dynamics`] uses `pair`.
    grouped: bool,
    /// Agents whose networks are stacked ([`WorldModel::population`]).
    agents: usize,
}

/// Whether models pair the dynamics and reward layers by default: yes, unless
/// `POMPC_GROUPED_ROLLOUT=0` (the H100's 5M plan step at B = 1 took 3.00 ms paired against 3.35
/// apart with tensor cores, 4.04 against 4.51 at f32; see [`WorldModel::with_grouped_rollout`]).
fn grouped_by_default() -> bool {
    !matches!(std::env::var("POMPC_GROUPED_ROLLOUT").as_deref(), Ok("0"))
}

impl WorldModel {
    /// Upload `weights`, at the device's precision ([`Gpu::precision`]).
    pub fn new(gpu: &Gpu, weights: &Weights) -> Result<WorldModel> {
        Self::with_precision(gpu, weights, gpu.precision())
    }

    /// Upload `weights` for `precision` (f16 weights unless [`Precision::F32`]);
    /// [`Error::Unsupported`] if the device lacks what it needs.
    pub fn with_precision(
        gpu: &Gpu,
        weights: &Weights,
        precision: Precision,
    ) -> Result<WorldModel> {
        Self::stacked(gpu, &[weights], precision)
    }

    /// The world models of a population of agents (the same [`ModelSpec`], each its own
    /// weights), stacked so that one launch per layer runs a network for every agent: each
    /// weight buffer gains a leading agent dimension (the Q ensemble's members of agent `i`
    /// are sets `i * num_q ..`). A [`crate::planner::Planner`] over it plans for every
    /// agent's environments in one step, each agent as it would alone; inputs and outputs
    /// hold the agents' rows one after the other.
    ///
    /// ```no_run
    /// # fn main() -> pompc::Result<()> {
    /// use pompc::model::{ModelSpec, Weights, WorldModel};
    /// use pompc::planner::{Planner, PlannerConfig};
    /// let gpu = pompc::Gpu::new(Default::default())?;
    /// let spec = ModelSpec::tdmpc2(1, 5, 1)?;
    /// let agents = [Weights::init(&spec, 0)?, Weights::init(&spec, 1)?];
    /// let model = WorldModel::population(&gpu, &agents, pompc::Precision::F32)?;
    /// let mut planner = Planner::new(&gpu, &model, PlannerConfig::tdmpc2(1))?.with_seeds(&[7, 8])?;
    /// let plan = planner.plan(&[0.0; 2 * 5], &[true, true])?; // one environment per agent
    /// println!("agent 1 does {:?}", plan.action(1));
    /// # Ok(()) }
    /// ```
    pub fn population(gpu: &Gpu, agents: &[Weights], precision: Precision) -> Result<WorldModel> {
        let refs: Vec<&Weights> = agents.iter().collect();
        Self::stacked(gpu, &refs, precision)
    }

    fn stacked(gpu: &Gpu, agents: &[&Weights], precision: Precision) -> Result<WorldModel> {
        let weights = *agents.first().ok_or_else(|| {
            Error::InvalidArgument("a population of world models needs an agent".into())
        })?;
        weights.spec.validate()?;
        if let Some(i) = agents.iter().position(|w| w.spec != weights.spec) {
            return Err(Error::InvalidArgument(format!(
                "agent {i}'s model differs from agent 0's: a population shares one model spec"
            )));
        }
        gpu.supports(precision)?;
        let net = |n| Mlp::new(gpu, agents, n, precision);
        Ok(WorldModel {
            spec: weights.spec.clone(),
            encoder: net(Net::Encoder)?,
            dynamics: net(Net::Dynamics)?,
            reward: net(Net::Reward)?,
            policy: net(Net::Policy)?,
            q: net(Net::Q)?,
            termination: if weights.spec.episodic {
                Some(net(Net::Termination)?)
            } else {
                None
            },
            // Pairing is for one agent's small launches; a population's are wide already.
            pair: if agents.len() == 1 {
                RolloutPair::new(gpu, weights, precision)?
            } else {
                None
            },
            grouped: grouped_by_default(),
            agents: agents.len(),
        })
    }

    /// Agents stacked in this model (1 unless made by [`WorldModel::population`]).
    pub fn agents(&self) -> usize {
        self.agents
    }

    /// The same model with the rollout's dynamics and reward layers paired (`on`) or not:
    /// [`WorldModel::record_reward_and_dynamics`] then launches each of their layers but the
    /// last once for both networks. On by default (`POMPC_GROUPED_ROLLOUT=0` turns it off for
    /// every model); without effect where the two networks' shapes differ.
    pub fn with_grouped_rollout(mut self, on: bool) -> Self {
        self.grouped = on;
        self
    }

    /// Whether [`WorldModel::record_reward_and_dynamics`] pairs the two networks' layers.
    pub fn grouped_rollout(&self) -> bool {
        self.grouped && self.pair.is_some()
    }

    /// Record the reward network into `reward_out` (`[m, num_bins]` logits) and the dynamics
    /// into `latent_out` (`[m, latent]`) for the same `m` rows of `input` (`[z, a]`): a rollout
    /// step. With [`WorldModel::with_grouped_rollout`] their layers but the last run as
    /// two-member ensembles (needs `ws` with 2 slots; repeated inputs,
    /// [`NetInput::repeating`], take the two networks apart).
    pub fn record_reward_and_dynamics(
        &self,
        rec: &mut Recorder,
        m: usize,
        input: NetInput,
        ws: &Workspace,
        reward_out: &GpuBuffer<f32>,
        latent_out: &GpuBuffer<f32>,
    ) -> Result<()> {
        let pair = match &self.pair {
            Some(p) if self.grouped && input.z_repeat == 0 => p,
            _ => {
                self.reward.record(rec, m, input, None, ws, reward_out)?;
                return self.dynamics.record(rec, m, input, None, ws, latent_out);
            }
        };
        if m > ws.max_rows || ws.slots < 2 {
            return Err(Error::Limit(format!(
                "paired dynamics and reward forward of {m} rows needs a workspace of 2 slots; \
                 this one has {} rows x {} slots",
                ws.max_rows, ws.slots
            )));
        }
        let tails = [
            (self.dynamics.last_layer(), latent_out),
            (self.reward.last_layer(), reward_out),
        ];
        if self.precision().f16_storage() {
            pair.record(rec, m, input, &ws.hidden16(rec.gpu())?, tails)
        } else {
            pair.record(rec, m, input, &ws.hidden, tails)
        }
    }

    /// Record copies of every parameter from a flat buffer in which the tensor named `name`
    /// (TD-MPC2's names) starts at element `offset(name)`: a trainer's parameters reach the
    /// planner's model on the GPU, in the trainer's submit, without a host round trip. Weights
    /// stored in f16 ([`Precision::F16`], [`Precision::TensorCore`]) are rounded on the way.
    pub fn record_copy_from(
        &self,
        rec: &mut Recorder,
        flat: &GpuBuffer<f32>,
        offset: impl Fn(&str) -> Result<usize>,
    ) -> Result<()> {
        self.record_agent_copy_from(rec, 0, flat, offset)
    }

    /// [`WorldModel::record_copy_from`] into agent `agent`'s share of a population's weights.
    pub fn record_agent_copy_from(
        &self,
        rec: &mut Recorder,
        agent: usize,
        flat: &GpuBuffer<f32>,
        offset: impl Fn(&str) -> Result<usize>,
    ) -> Result<()> {
        if agent >= self.agents {
            return Err(Error::InvalidArgument(format!(
                "agent {agent} of a population of {}",
                self.agents
            )));
        }
        let who = (agent, self.agents);
        let nets = [
            &self.encoder,
            &self.dynamics,
            &self.reward,
            &self.policy,
            &self.q,
        ];
        for mlp in nets.into_iter().chain(self.termination.as_ref()) {
            for layer in &mlp.layers {
                let p = &layer.spec.prefix;
                layer.record_copy_from(rec, flat, &offset, &[p], who)?;
            }
        }
        if let Some(pair) = &self.pair {
            let (d, r) = (self.dynamics.layers.iter(), self.reward.layers.iter());
            for (layer, (dl, rl)) in pair.layers.iter().zip(d.zip(r)) {
                let prefixes = [&dl.spec.prefix, &rl.spec.prefix];
                layer.record_copy_from(rec, flat, &offset, &prefixes, who)?;
            }
        }
        Ok(())
    }

    /// The precision the networks run at.
    pub fn precision(&self) -> Precision {
        self.encoder.precision
    }

    /// A network by name (`None` for the termination head of a non-episodic model).
    pub fn net(&self, net: Net) -> Option<&Mlp> {
        match net {
            Net::Encoder => Some(&self.encoder),
            Net::Dynamics => Some(&self.dynamics),
            Net::Reward => Some(&self.reward),
            Net::Policy => Some(&self.policy),
            Net::Q => Some(&self.q),
            Net::Termination => self.termination.as_ref(),
        }
    }
}
