//! The world model's networks on the GPU, each a chain of fused linear layers.

use super::spec::{LayerSpec, ModelSpec, Net};
use super::weights::Weights;
use crate::gpu::{Gpu, GpuBuffer, Recorder};
use crate::kernels::linear::{Linear, LinearInputs};
use crate::{Error, Result};

/// One layer with its parameters on the GPU.
pub struct DenseLayer {
    /// Shape and activation.
    pub spec: LayerSpec,
    linear: Linear,
    w: GpuBuffer<f32>,
    b: GpuBuffer<f32>,
    ln: Option<(GpuBuffer<f32>, GpuBuffer<f32>)>,
}

/// A network: layers applied in order; an ensemble when `members > 1` (the Q heads, stacked
/// so that all heads, or a chosen subset, run in one dispatch per layer).
pub struct Mlp {
    /// Which network.
    pub net: Net,
    /// Weight sets.
    pub members: usize,
    layers: Vec<DenseLayer>,
}

/// Scratch activations for forward passes of up to `max_rows` rows (per weight set).
pub struct Workspace {
    max_rows: usize,
    slots: usize,
    hidden: [GpuBuffer<f32>; 2],
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
        let slots = slots.max(1);
        let len = slots * max_rows * Self::width(spec);
        Ok(Workspace {
            max_rows,
            slots,
            hidden: [
                GpuBuffer::new(gpu, "hidden activations 0", len)?,
                GpuBuffer::new(gpu, "hidden activations 1", len)?,
            ],
        })
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
}

impl<'a> NetInput<'a> {
    /// Whole buffers: `z` alone, or `[z, a]`.
    pub fn new(z: &'a GpuBuffer<f32>, a: Option<&'a GpuBuffer<f32>>) -> Self {
        NetInput {
            z,
            a,
            z_offset: 0,
            a_offset: 0,
        }
    }

    /// The same buffers starting at element offsets.
    pub fn at(mut self, z_offset: usize, a_offset: usize) -> Self {
        self.z_offset = z_offset;
        self.a_offset = a_offset;
        self
    }
}

impl Mlp {
    fn new(gpu: &Gpu, weights: &Weights, net: Net) -> Result<Mlp> {
        let spec = &weights.spec;
        let members = spec.members(net);
        let mut layers = Vec::new();
        for (i, ls) in spec.layers(net).into_iter().enumerate() {
            let t = weights.layer(&ls.prefix, ls.normed)?;
            let up = |name: &str, data: &[f32]| {
                GpuBuffer::from_slice(gpu, &format!("{}.{name}", ls.prefix), data)
            };
            let ln = match t.ln {
                Some((g, b)) => Some((up("ln.weight", &g.data)?, up("ln.bias", &b.data)?)),
                None => None,
            };
            // The first layer of an ensemble reads the same rows for every member.
            let cfg = ls.linear(members, i == 0);
            layers.push(DenseLayer {
                linear: Linear::new(gpu, cfg)?,
                w: up("weight", &t.w.data)?,
                b: up("bias", &t.b.data)?,
                ln,
                spec: ls,
            });
        }
        Ok(Mlp {
            net,
            members,
            layers,
        })
    }

    /// Output features.
    pub fn out_dim(&self) -> usize {
        self.layers.last().map_or(0, |l| l.spec.out)
    }

    /// The layers.
    pub fn layers(&self) -> &[DenseLayer] {
        &self.layers
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
        for (i, layer) in self.layers.iter().enumerate() {
            let (z, a, z_offset, a_offset) = if i == 0 {
                (input.z, input.a, input.z_offset, input.a_offset)
            } else {
                (&ws.hidden[(i - 1) % 2], None, 0, 0)
            };
            let y = if i + 1 == n { out } else { &ws.hidden[i % 2] };
            layer.linear.record(
                rec,
                m,
                LinearInputs {
                    z,
                    a,
                    w: &layer.w,
                    b: &layer.b,
                    ln: layer.ln.as_ref().map(|(g, b)| (g, b)),
                    y,
                    heads,
                    z_offset,
                    a_offset,
                },
            )?;
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
}

impl WorldModel {
    /// Upload `weights`.
    pub fn new(gpu: &Gpu, weights: &Weights) -> Result<WorldModel> {
        weights.spec.validate()?;
        Ok(WorldModel {
            spec: weights.spec.clone(),
            encoder: Mlp::new(gpu, weights, Net::Encoder)?,
            dynamics: Mlp::new(gpu, weights, Net::Dynamics)?,
            reward: Mlp::new(gpu, weights, Net::Reward)?,
            policy: Mlp::new(gpu, weights, Net::Policy)?,
            q: Mlp::new(gpu, weights, Net::Q)?,
            termination: if weights.spec.episodic {
                Some(Mlp::new(gpu, weights, Net::Termination)?)
            } else {
                None
            },
        })
    }

    /// Record copies of every parameter from a flat buffer in which the tensor named `name`
    /// (TD-MPC2's names) starts at element `offset(name)`: a trainer's parameters reach the
    /// planner's model on the GPU, in the trainer's submit, without a host round trip.
    pub fn record_copy_from(
        &self,
        rec: &mut Recorder,
        flat: &GpuBuffer<f32>,
        offset: impl Fn(&str) -> Result<usize>,
    ) -> Result<()> {
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
                let mut copy = |name: String, dst: &GpuBuffer<f32>| -> Result<()> {
                    rec.copy_range(flat, offset(&name)?, dst, 0, dst.len())
                };
                copy(format!("{p}.weight"), &layer.w)?;
                copy(format!("{p}.bias"), &layer.b)?;
                if let Some((g, b)) = &layer.ln {
                    copy(format!("{p}.ln.weight"), g)?;
                    copy(format!("{p}.ln.bias"), b)?;
                }
            }
        }
        Ok(())
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
