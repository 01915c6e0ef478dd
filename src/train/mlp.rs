//! One network of the world model for training: a forward pass that keeps each layer's
//! pre-normalization output in a [`Tape`], and the backward pass that adds the parameter
//! gradients into a flat gradient buffer and returns the input gradient.
//!
//! A layer is `y = act(LN(x W^T + b))` (or `x W^T + b` for a plain final layer). Forward:
//! the strided GEMM writes `h = x W^T + b` (a second GEMM adds the action block of a
//! concatenated input `[z | a]`), then `kernels::norm_act` writes `y`. Backward, from `dy`:
//! `dh` through the activation and LayerNorm (adding `dgamma`, `dbeta`), `db += sum_rows dh`,
//! `dW += dh^T x` (per column block of a concatenated input) and `dx = dh W`.

use super::params::ParamLayout;
use crate::gpu::{Gpu, GpuBuffer, Recorder};
use crate::kernels::gemm::{self, Bias, Gemm, Mat, Operands};
use crate::kernels::gemm_coop::{self, CoopScale};
use crate::kernels::norm_act::{self, Affine, ColumnSumConfig, NormActBuffers, NormActConfig};
use crate::model::{LayerSpec, ModelSpec, Net};
use crate::{Error, Result};

/// A layer's parameters in the flat buffer (offsets of member 0).
#[derive(Clone, Debug)]
pub struct TrainLayer {
    /// Shape and activation.
    pub spec: LayerSpec,
    /// Weight `[members, out, in1 + in2]`.
    pub w: usize,
    /// Bias `[members, out]`.
    pub b: usize,
    /// LayerNorm gain and shift `[members, out]` each.
    pub ln: Option<(usize, usize)>,
}

impl TrainLayer {
    /// The LayerNorm gain and shift of weight sets `sel` in `buf` (the parameters or their
    /// gradients, which share the layout), agents `param_len` apart.
    fn layer_norm<'a>(
        &self,
        buf: &'a GpuBuffer<f32>,
        sel: Members,
        param_len: usize,
    ) -> Affine<'a> {
        let (gamma, beta) = self.ln.expect("normed layers have LayerNorm");
        let out = self.spec.out;
        Affine {
            agent_stride: param_len,
            ..Affine::new(buf, gamma + sel.first * out, beta + sel.first * out)
        }
    }

    /// The weight `[out, in1 + in2]` of weight sets `sel` in `buf` (the parameters or their
    /// gradients), batched over the sets and the agents (`param_len` apart).
    fn weights<'a>(&self, buf: &'a GpuBuffer<f32>, sel: Members, param_len: usize) -> Mat<'a> {
        let (out, k) = (self.spec.out, self.spec.in1 + self.spec.in2);
        Mat::rows(buf, k)
            .at(self.w + sel.first * out * k)
            .batched(out * k)
            .per_agent(param_len)
    }
}

/// Which weight sets of an ensemble a pass runs: `count` consecutive ones from `first`, in
/// each of `agents` agents. A population's parameters (and gradients) are its agents' flat
/// buffers back to back (agent `g`'s at `g * ParamLayout::len()`); its tapes hold
/// `agents * count` slots, agent by agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Members {
    /// First weight set.
    pub first: usize,
    /// Weight sets run side by side.
    pub count: usize,
    /// Agents run side by side (1 without a population).
    pub agents: usize,
}

impl Members {
    /// A network with one weight set, or weight set `i` of an ensemble.
    pub fn one(i: usize) -> Self {
        Members::range(i, 1)
    }

    /// `count` weight sets from `first`, one agent.
    pub fn range(first: usize, count: usize) -> Self {
        Members {
            first,
            count,
            agents: 1,
        }
    }

    /// The same weight sets in each of `agents` agents.
    pub fn of_agents(mut self, agents: usize) -> Self {
        self.agents = agents;
        self
    }

    /// Slots of a pass: weight sets times agents.
    pub fn slots(&self) -> usize {
        self.count * self.agents
    }
}

/// Where a network's input rows are: `z` `[rows, in1]` and, for `[z, a]` networks, `a`
/// `[rows, in2]`, each at an element offset. The same rows feed every weight set; in a
/// population each agent has its own rows, `agent_strides` elements apart (for `z`, `a`).
#[derive(Clone, Copy, Debug)]
pub struct NetInput<'a> {
    /// First input and the element offset of its row 0.
    pub z: (&'a GpuBuffer<f32>, usize),
    /// Second input (actions) and its offset.
    pub a: Option<(&'a GpuBuffer<f32>, usize)>,
    /// Elements between one agent's input rows and the next agent's, for `z` and `a`.
    pub agent_strides: (usize, usize),
}

impl<'a> NetInput<'a> {
    /// `z` rows at an offset, no second input, one agent.
    pub fn z(buf: &'a GpuBuffer<f32>, offset: usize) -> Self {
        NetInput {
            z: (buf, offset),
            a: None,
            agent_strides: (0, 0),
        }
    }

    /// `[z, a]` rows at their offsets, one agent.
    pub fn za(z: (&'a GpuBuffer<f32>, usize), a: (&'a GpuBuffer<f32>, usize)) -> Self {
        NetInput {
            z,
            a: Some(a),
            agent_strides: (0, 0),
        }
    }

    /// With the agents' rows `z_stride` and `a_stride` elements apart.
    pub fn per_agent(mut self, z_stride: usize, a_stride: usize) -> Self {
        self.agent_strides = (z_stride, a_stride);
        self
    }
}

/// What a forward pass keeps for its backward pass: per layer, `h` (before LayerNorm) and
/// `y` (after the activation), for up to `steps` passes of `rows` rows by `slots` weight
/// sets. A network applied at several time steps (the dynamics) uses one step each.
pub struct Tape {
    rows: usize,
    slots: usize,
    steps: usize,
    h: Vec<GpuBuffer<f32>>,
    y: Vec<GpuBuffer<f32>>,
    /// Per-row LayerNorm (mean, rstd) of each layer, `[steps, slots, rows, 2]`.
    stats: Vec<GpuBuffer<f32>>,
    /// Partial column sums of the parameter gradients.
    scratch: GpuBuffer<f32>,
    /// Gradient scratch: `d[1]` for dh, `d[0]` for the gradient passed to the layer below.
    d: [GpuBuffer<f32>; 2],
}

impl Tape {
    /// Element offset of pass `step` in a tape buffer of `width` values per row and slot.
    fn pass(&self, step: usize, width: usize) -> usize {
        step * self.slots * self.rows * width
    }

    /// Room for `steps` passes of `rows` rows through `net` with `slots` weight sets at once.
    pub fn new(gpu: &Gpu, net: &TrainNet, rows: usize, slots: usize, steps: usize) -> Result<Tape> {
        let mut h = Vec::new();
        let mut y = Vec::new();
        let mut stats = Vec::new();
        let mut width = 1;
        let mut scratch = 1;
        for l in &net.layers {
            let n = steps * slots * rows * l.spec.out;
            let normed = |len: usize| if l.spec.normed { len.max(1) } else { 1 };
            h.push(GpuBuffer::new(
                gpu,
                &format!("{} h", l.spec.prefix),
                n.max(1),
            )?);
            y.push(GpuBuffer::new(
                gpu,
                &format!("{} y", l.spec.prefix),
                normed(n),
            )?);
            stats.push(GpuBuffer::new(
                gpu,
                &format!("{} LayerNorm stats", l.spec.prefix),
                normed(steps * slots * rows * 2),
            )?);
            width = width.max(l.spec.out).max(l.spec.in1 + l.spec.in2);
            // dgamma, dbeta and db in one column pass.
            scratch = scratch.max(norm_act::scratch_len(l.spec.out, slots, rows, 3));
        }
        let d = slots * rows * width;
        Ok(Tape {
            rows,
            slots,
            steps,
            h,
            y,
            stats,
            scratch: GpuBuffer::new(gpu, &format!("{:?} column partials", net.net), scratch)?,
            d: [
                GpuBuffer::new(gpu, &format!("{:?} grad 0", net.net), d)?,
                GpuBuffer::new(gpu, &format!("{:?} grad 1", net.net), d)?,
            ],
        })
    }

    /// The output of the last layer of pass `step`: `[slots, rows, out]` at the returned
    /// offset of the returned buffer.
    pub fn output<'t>(&'t self, net: &TrainNet, step: usize) -> (&'t GpuBuffer<f32>, usize) {
        let i = net.layers.len() - 1;
        let l = &net.layers[i];
        let off = self.pass(step, l.spec.out);
        if l.spec.normed {
            (&self.y[i], off)
        } else {
            (&self.h[i], off)
        }
    }
}

/// Where a backward pass sends its gradients. Each input gradient is `(buffer, offset,
/// accumulate)`: written, or added into what is there.
#[derive(Clone, Copy, Debug, Default)]
pub struct Grads<'a> {
    /// The flat gradient buffer (laid out as the parameters) that the parameter gradients
    /// are added into; `None` for frozen parameters (the Q heads in the policy update).
    pub params: Option<&'a GpuBuffer<f32>>,
    /// Gradient of the first input `z` `[rows, in1]`, summed over the weight sets.
    pub dz: Option<(&'a GpuBuffer<f32>, usize, bool)>,
    /// Gradient of the second input `a` `[rows, in2]`, summed over the weight sets.
    pub da: Option<(&'a GpuBuffer<f32>, usize, bool)>,
}

/// A network's layers and where its parameters sit.
#[derive(Clone, Debug)]
pub struct TrainNet {
    /// Which network.
    pub net: Net,
    /// Weight sets stored.
    pub members: usize,
    /// Layers in order.
    pub layers: Vec<TrainLayer>,
    /// Elements of one agent's flat parameters (the layout's length): the agent stride of a
    /// population's parameters and gradients.
    pub param_len: usize,
    /// Whether the products run on tensor cores ([`TrainNet::with_tensor_cores`]).
    pub tensor_cores: bool,
}

impl TrainNet {
    /// `net` of `spec` over the flat `layout`.
    pub fn new(spec: &ModelSpec, layout: &ParamLayout, net: Net) -> Result<TrainNet> {
        let mut layers = Vec::new();
        for ls in spec.layers(net) {
            let w = layout.offset(&format!("{}.weight", ls.prefix))?;
            let b = layout.offset(&format!("{}.bias", ls.prefix))?;
            let ln = if ls.normed {
                Some((
                    layout.offset(&format!("{}.ln.weight", ls.prefix))?,
                    layout.offset(&format!("{}.ln.bias", ls.prefix))?,
                ))
            } else {
                None
            };
            layers.push(TrainLayer { spec: ls, w, b, ln });
        }
        if layers.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{net:?}: this model has no such network"
            )));
        }
        Ok(TrainNet {
            net,
            members: spec.members(net),
            layers,
            param_len: layout.len(),
            tensor_cores: false,
        })
    }

    /// The same network with its products (forward, dW and dX) on tensor cores
    /// ([`gemm_coop`]: f16 operands, f32 sums) where `on`: the gradients of every product
    /// scaled row by row into f16's range (they are often below its smallest normal value,
    /// 6.1e-5), as are the encoder's inputs (raw observations may exceed its largest,
    /// 65504); the f16 rounding of the rest costs about TF32's precision (11 significant
    /// bits). Recording fails with [`Error::Unsupported`] on a device without cooperative
    /// matrices.
    pub fn with_tensor_cores(mut self, on: bool) -> TrainNet {
        self.tensor_cores = on;
        self
    }

    /// Whether layer `i` reads raw observations (the encoder's first layer).
    fn raw_input(&self, i: usize) -> bool {
        i == 0 && self.net == Net::Encoder
    }

    /// Record one product: the f32 kernel, or the tensor-core kernel with `scale`.
    fn product(&self, rec: &mut Recorder, op: &Gemm, x: Operands, scale: CoopScale) -> Result<()> {
        if self.tensor_cores {
            gemm_coop::record_scaled(rec, op, x, scale)
        } else {
            gemm::record(rec, op, x)
        }
    }

    /// Output features.
    pub fn out_dim(&self) -> usize {
        self.layers.last().map_or(0, |l| l.spec.out)
    }

    /// Multiply-adds times 2 of a forward pass of `rows` rows by `slots` weight sets.
    pub fn flops(&self, rows: usize, slots: usize) -> f64 {
        self.layers
            .iter()
            .map(|l| 2.0 * (rows * (l.spec.in1 + l.spec.in2) * l.spec.out * slots) as f64)
            .sum()
    }

    fn check(&self, tape: &Tape, rows: usize, sel: Members, step: usize) -> Result<()> {
        if sel.count == 0 || sel.first + sel.count > self.members {
            return Err(Error::InvalidArgument(format!(
                "{:?}: weight sets {}..{} of {}",
                self.net,
                sel.first,
                sel.first + sel.count,
                self.members
            )));
        }
        if sel.agents == 0 {
            return Err(Error::InvalidArgument(format!(
                "{:?}: a pass of 0 agents",
                self.net
            )));
        }
        if rows > tape.rows || sel.slots() > tape.slots || step >= tape.steps {
            return Err(Error::Limit(format!(
                "{:?}: pass {step} of {rows} rows x {} weight sets x {} agents; the tape holds \
                 {} passes of {} rows x {} slots",
                self.net, sel.count, sel.agents, tape.steps, tape.rows, tape.slots
            )));
        }
        Ok(())
    }

    /// `Err` unless the parameters (and the gradients, when given) hold `sel.agents` agents'
    /// flat buffers.
    fn check_params(
        &self,
        params: &GpuBuffer<f32>,
        grads: Option<&GpuBuffer<f32>>,
        sel: Members,
    ) -> Result<()> {
        let want = sel.agents * self.param_len;
        for (what, b) in [("parameters", Some(params)), ("gradients", grads)] {
            if let Some(b) = b
                && b.len() != want
            {
                return Err(Error::Shape(format!(
                    "{:?}: {what} {:?} hold {} values; {} agents of {} need {want}",
                    self.net,
                    b.label(),
                    b.len(),
                    sel.agents,
                    self.param_len
                )));
            }
        }
        Ok(())
    }

    /// Layer `i`'s input rows in pass `step` as a batched matrix: the caller's (shared by
    /// every weight set of an agent, batch stride 0) or the layer below's output.
    fn layer_input<'a>(
        &self,
        i: usize,
        input: NetInput<'a>,
        tape: &'a Tape,
        (rows, sel): (usize, Members),
        step: usize,
    ) -> Mat<'a> {
        let in1 = self.layers[i].spec.in1;
        if i == 0 {
            return Mat::rows(input.z.0, in1)
                .at(input.z.1)
                .per_agent(input.agent_strides.0);
        }
        let below = &self.layers[i - 1].spec;
        let lo = below.out;
        let src = if below.normed {
            &tape.y[i - 1]
        } else {
            &tape.h[i - 1]
        };
        tape_rows(src, tape.pass(step, lo), lo, rows, sel)
    }

    /// Layer `i`'s input column blocks in pass `step`, each with its width and first weight
    /// column: the rows below (`in1` columns at column 0) and, for a `[z, a]` layer, the
    /// action (`in2` columns at column `in1`). The forward and backward GEMMs run per block.
    fn input_blocks<'a>(
        &self,
        i: usize,
        input: NetInput<'a>,
        tape: &'a Tape,
        rows: (usize, Members),
        step: usize,
    ) -> Result<Vec<(Mat<'a>, usize, usize)>> {
        let (in1, in2) = (self.layers[i].spec.in1, self.layers[i].spec.in2);
        let x = self.layer_input(i, input, tape, rows, step);
        let mut blocks = vec![(x, in1, 0)];
        if in2 > 0 {
            let a = self.action_input(input)?;
            let a = Mat::rows(a.0, in2).at(a.1).per_agent(input.agent_strides.1);
            blocks.push((a, in2, in1));
        }
        Ok(blocks)
    }

    /// Layer `i`'s activation (and LayerNorm) in pass `step` over weight sets `sel`: its
    /// config, and its `h`, LayerNorm parameters and statistics on the tape.
    fn norm_act<'a>(
        &self,
        i: usize,
        params: &'a GpuBuffer<f32>,
        sel: Members,
        tape: &'a Tape,
        step: usize,
    ) -> (NormActConfig, NormActBuffers<'a>) {
        let l = &self.layers[i];
        let io = NormActBuffers {
            h: (&tape.h[i], tape.pass(step, l.spec.out)),
            affine: Some(l.layer_norm(params, sel, self.param_len)),
            stats: Some((&tape.stats[i], tape.pass(step, 2))),
        };
        let cfg = NormActConfig::new(l.spec.out, l.spec.act, true)
            .with_members(sel.slots())
            .with_agents(sel.agents);
        (cfg, io)
    }

    /// The action input of a `[z, a]` network.
    fn action_input<'a>(&self, input: NetInput<'a>) -> Result<(&'a GpuBuffer<f32>, usize)> {
        input
            .a
            .ok_or_else(|| Error::InvalidArgument(format!("{:?} needs an action input", self.net)))
    }

    /// Record a forward pass of `rows` rows through weight sets `sel`, keeping pass `step`
    /// of `tape`. The output is at [`Tape::output`].
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        rec: &mut Recorder,
        params: &GpuBuffer<f32>,
        rows: usize,
        sel: Members,
        input: NetInput,
        tape: &Tape,
        step: usize,
    ) -> Result<()> {
        self.check(tape, rows, sel, step)?;
        self.check_params(params, None, sel)?;
        for (i, l) in self.layers.iter().enumerate() {
            let out = l.spec.out;
            let region = tape.pass(step, out);
            let h = tape_rows(&tape.h[i], region, out, rows, sel);
            let w = l.weights(params, sel, self.param_len);
            // h = x W^T + b, the action block's product added to the first's.
            for (x, width, col) in self.input_blocks(i, input, tape, (rows, sel), step)? {
                let op = Gemm {
                    trans_b: true,
                    batch: sel.slots(),
                    agents: sel.agents,
                    accumulate: col > 0,
                    ..Gemm::new(rows, out, width)
                };
                let bias = (col == 0).then_some(Bias {
                    buf: params,
                    offset: l.b + sel.first * out,
                    batch_stride: out,
                    agent_stride: self.param_len,
                });
                // The encoder's first layer reads raw observations (any magnitude): scaled on
                // tensor cores; other inputs are latents, actions or normalized activations.
                let scale = CoopScale {
                    a: self.raw_input(i),
                    b: false,
                };
                self.product(
                    rec,
                    &op,
                    Operands {
                        a: x,
                        b: w.at(w.offset + col),
                        c: h,
                        bias,
                    },
                    scale,
                )?;
            }
            if l.spec.normed {
                let (cfg, io) = self.norm_act(i, params, sel, tape, step);
                norm_act::record_forward(rec, &cfg, rows, &io, (&tape.y[i], region))?;
            }
        }
        Ok(())
    }

    /// Record the backward pass of forward pass `step` of `tape` (same `rows`, `sel` and
    /// `input`): `dy` `[sel.count, rows, out]` at an offset is the gradient of the output;
    /// `to` says where the gradients go.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        rec: &mut Recorder,
        params: &GpuBuffer<f32>,
        rows: usize,
        sel: Members,
        input: NetInput,
        tape: &Tape,
        step: usize,
        dy: (&GpuBuffer<f32>, usize),
        to: Grads,
    ) -> Result<()> {
        self.check(tape, rows, sel, step)?;
        self.check_params(params, to.params, sel)?;
        if to.da.is_some() && (input.a.is_none() || self.layers[0].spec.in2 == 0) {
            return Err(Error::InvalidArgument(format!(
                "{:?} backward: an action gradient asked of a network without an action input",
                self.net
            )));
        }
        let e = sel.count;
        let pl = self.param_len;
        let n = self.layers.len();
        // The gradient arriving at the current layer's output.
        let mut g_out: (&GpuBuffer<f32>, usize) = dy;
        for i in (0..n).rev() {
            let l = &self.layers[i];
            let (in1, in2, out) = (l.spec.in1, l.spec.in2, l.spec.out);
            let k = in1 + in2;
            // dh: through the activation and LayerNorm into scratch, or dy itself.
            let dh: (&GpuBuffer<f32>, usize) = if l.spec.normed {
                // d[1] holds dh, d[0] the gradient passed down: a layer reads one, writes the
                // other.
                let dst = &tape.d[1];
                let (cfg, io) = self.norm_act(i, params, sel, tape, step);
                norm_act::record_backward(
                    rec,
                    &cfg,
                    rows,
                    &io,
                    g_out,
                    (dst, 0),
                    false,
                    // The bias gradient in the LayerNorm gradients' column pass.
                    to.params.map(|grads| {
                        l.layer_norm(grads, sel, pl)
                            .with_bias(l.b + sel.first * out)
                    }),
                    Some(&tape.scratch),
                )?;
                (dst, 0)
            } else {
                g_out
            };
            let dh_mat = tape_rows(dh.0, dh.1, out, rows, sel);
            if let Some(grads) = to.params {
                if !l.spec.normed {
                    let cs = ColumnSumConfig {
                        agents: sel.agents,
                        agent_stride: pl,
                        ..ColumnSumConfig::new(out, sel.slots(), true)
                    };
                    norm_act::record_column_sum(
                        rec,
                        &cs,
                        rows,
                        dh,
                        None,
                        (grads, l.b + sel.first * out),
                        Some(&tape.scratch),
                    )?;
                }
                // dW += dh^T x, per column block of the input.
                let dw = l.weights(grads, sel, pl);
                for (x, width, col) in self.input_blocks(i, input, tape, (rows, sel), step)? {
                    let op = Gemm {
                        trans_a: true,
                        accumulate: true,
                        batch: sel.slots(),
                        agents: sel.agents,
                        ..Gemm::new(out, width, rows)
                    };
                    let x = Operands::new(dh_mat, x, dw.at(dw.offset + col));
                    let scale = CoopScale {
                        a: true,
                        b: self.raw_input(i),
                    };
                    self.product(rec, &op, x, scale)?;
                }
            }
            // dx = dh W[:, :in1], into the scratch the layer below reads, or the caller's dz.
            let w = l.weights(params, sel, pl);
            if i > 0 {
                let dst = &tape.d[0];
                let op = Gemm {
                    batch: sel.slots(),
                    agents: sel.agents,
                    ..Gemm::new(rows, in1, out)
                };
                let dx = tape_rows(dst, 0, in1, rows, sel);
                let x = Operands::new(dh_mat, w, dx);
                self.product(rec, &op, x, CoopScale { a: true, b: false })?;
                g_out = (dst, 0);
            } else {
                // The input is shared by an agent's weight sets: their gradients add up. dz
                // takes W's first in1 columns, da the last in2; each lands in the agent's own
                // rows, laid out as the input. dz is one multiply with a K segment per set
                // (sum_e dh_e W_e). da adds one product per set, each rounded on its own: a
                // population's policy update takes every head with the unused ones weighted
                // 0, and only this order gives each agent the sum its two heads' passes give
                // it alone.
                let (zs, as_) = input.agent_strides;
                let blocks = [(to.dz, 0, in1, zs, e), (to.da, in1, in2, as_, 1)];
                for (target, col, width, stride, segments) in blocks {
                    let Some((buf, off, acc)) = target else {
                        continue;
                    };
                    for m in (0..e).step_by(segments) {
                        let op = Gemm {
                            accumulate: acc || m > 0,
                            batch: sel.agents,
                            agents: sel.agents,
                            segments,
                            ..Gemm::new(rows, width, out)
                        };
                        self.product(
                            rec,
                            &op,
                            Operands::new(
                                dh_mat.at(dh.1 + m * rows * out).segmented(rows * out),
                                w.at(l.w + (sel.first + m) * out * k + col)
                                    .segmented(out * k),
                                Mat::rows(buf, width).at(off).per_agent(stride),
                            ),
                            CoopScale { a: true, b: false },
                        )?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// `width`-wide rows of a tape buffer from `offset` as a batched matrix over `sel`'s slots,
/// agent by agent.
fn tape_rows(
    buf: &GpuBuffer<f32>,
    offset: usize,
    width: usize,
    rows: usize,
    sel: Members,
) -> Mat<'_> {
    Mat::rows(buf, width)
        .at(offset)
        .batched(rows * width)
        .per_agent(sel.count * rows * width)
}
