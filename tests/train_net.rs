//! `TrainNet` (`src/train/mlp.rs`) on its own: the backward pass against central finite
//! differences of the f64 CPU mirror, and a small network trained on the GPU to fit a random
//! teacher of the same architecture. Both on both `gpus()` (checked and trusted shaders).
//!
//! `backward_matches_finite_differences`: a tiny model (latent 16, hidden 24, encoder 20,
//! 11 bins, 3 Q heads) with TD-MPC2's initialization perturbed so that every tensor matters
//! (LayerNorm gains and shifts, biases, the zero-initialized final layers), 5 random input
//! rows and a random cotangent `c` of the output `[members, 5, out]`. The reference is
//! `L = sum c * f(params, z, a)` from `reference::model::forward` in f64, differentiated by
//! central differences with step 1e-5 (for an f32 parameter the divisor is the step actually
//! taken after rounding `p +- 1e-5` to f32). Cases: the encoder (SimNorm output), the dynamics
//! (`[z, a]` input, SimNorm output), the reward head (plain final layer), all 3 Q heads at once
//! (shared input; input gradients summed over heads) and Q head 1 alone. Three backward passes
//! after one forward: (1) into zeroed parameter gradients, writing `dz` (and `da` for `[z, a]`
//! networks; both poisoned with NaN before); (2) adding into the gradients and into `dz`, `da`
//! preloaded with random `d0`; (3) with frozen parameters (`Grads::params = None`), writing
//! `dz`, `da` again (poisoned again). The tape has more rows, weight sets and passes than used
//! and the pass is its second, so that the offsets into it matter. Checked:
//!
//! * 40 random elements of every tensor of the network (within the weight sets run) and every
//!   element of the last layer's bias, and every element of `dz` and `da`: per tensor (per
//!   input), largest |GPU - FD| <= 3e-5 of the tensor's largest |FD|. Measured over 50 seeds
//!   on lavapipe: parameters at most 1.6e-6 (typically 3e-7 to 9e-7), inputs at most 9.7e-7.
//!   f32 forward and backward passes through two or three layers of width <= 24 round at
//!   ~1e-7 per operation, which LayerNorm's `rstd` and the dot products amplify to ~1e-6; the
//!   FD error (truncation ~1e-10, f64 rounding ~1e-11) is far below. The ~20x margin covers
//!   seeds where a LayerNorm row has a small variance; a wrong term in a backward formula
//!   gives errors of order 1.
//! * every gradient element outside the weight sets run (other networks, other Q heads) is
//!   exactly 0 after pass 1;
//! * pass 2 added: gradients `2 g` and inputs `d0 + dx` within 1e-6 of the largest element
//!   (measured: gradients exactly `2 g`; inputs at most 1.3e-7, an ulp or two), and
//!   `d0 + dx` against `d0 + FD` within 3e-5;
//! * pass 3 left the parameter gradients bit-identical and wrote the same input gradients as
//!   pass 1 within 1e-6 (measured: identical).
//!
//! `fits_a_random_target_network`: the reward head (8 outputs) of the tiny model, from
//! TD-MPC2's initialization (zero final layer, so the first loss is the mean square target),
//! trained full batch on 128 fixed random `[z, a]` rows to match a perturbed random teacher
//! (outputs by the CPU mirror): each step records clear, forward, `record_mse` (gradient into
//! `dy`, loss into slot `step`), backward and Adam (lr 3e-3, over the reward head's range
//! only) into one `Recorder` and submits. After 200 steps the loss must be below 2% of the
//! first and below 10% of the best constant prediction's loss (each output's variance: the
//! part of the target that depends on the input). Measured over 25 seeds: at most 0.27% of
//! the first (7x margin) and 1.7% of the constant's (6x margin); 150 steps gave at most 0.6%
//! and 4.0%. Also: the first loss is the mean square target within 1e-5, the final GPU loss
//! matches the CPU mirror's loss of the downloaded parameters within 1e-3, and parameters
//! outside the head are bit-identical. About 2 s per adapter mode on lavapipe (2 cores); the
//! whole file about 4-5 s.

mod common;

use common::{POISON, gpus, rng, uniform};
use pompc::kernels::loss::{self, Agents, GradOut, LossOut, MseConfig, RowWeights};
use pompc::kernels::optim::{Adam, AdamConfig, ParamGroup};
use pompc::kernels::two_hot::RowLayout;
use pompc::model::{ModelSpec, Net, Weights};
use pompc::reference;
use pompc::train::mlp::NetInput;
use pompc::train::{Grads, Members, ParamLayout, Tape, TrainNet};
use pompc::{Gpu, GpuBuffer, Recorder};
use rand::Rng;
use std::time::Instant;

/// Largest |gpu - finite difference| over a tensor, relative to the largest |finite
/// difference| of that tensor.
const GRAD_TOL: f64 = 3e-5;
/// A second backward pass against the sum it should give (`2 g`, `d0 + dz`), relative to
/// the largest element: a few f32 roundings.
const SUM_TOL: f64 = 1e-6;
/// Finite-difference step (f64 inputs; for f32 parameters the step actually taken, after
/// rounding `p +- STEP` to f32, is the divisor).
const STEP: f64 = 1e-5;
/// The trained network's final loss, as a fraction of its first loss.
const FIT_OF_FIRST: f64 = 0.02;
/// The trained network's final loss, as a fraction of the best constant prediction's.
const FIT_OF_CONSTANT: f64 = 0.1;
/// Parameter elements sampled per tensor.
const SAMPLES: usize = 40;

/// TD-MPC2's initialization with every tensor perturbed so that LayerNorm gains and shifts,
/// biases and the (zero-initialized) final layers of reward and Q are all non-trivial:
/// weights get `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, biases and LayerNorm parameters
/// `U(-0.5, 0.5)`.
fn perturbed(spec: &ModelSpec, r: &mut impl Rng) -> Weights {
    let mut w = Weights::init(spec, r.random()).unwrap();
    for (name, t) in w.tensors.iter_mut() {
        let fan_in = *t.shape.last().unwrap();
        let s = if name.ends_with(".weight") && !name.ends_with("ln.weight") {
            1.0 / (fan_in as f32).sqrt()
        } else {
            0.5
        };
        t.data.iter_mut().for_each(|v| *v += r.random_range(-s..s));
    }
    w
}

/// `sum_{e, r, j} c[e, r, j] * f_e(z, a)[r, j]` over the selected weight sets, in f64.
fn objective(
    w: &Weights,
    net: Net,
    sel: Members,
    m: usize,
    z: &[f64],
    a: Option<&[f64]>,
    c: &[f64],
) -> f64 {
    let mut total = 0.0;
    for (i, e) in (sel.first..sel.first + sel.count).enumerate() {
        let y = reference::model::forward(w, net, m, z, a, e).unwrap();
        let ci = &c[i * y.len()..(i + 1) * y.len()];
        total += y.iter().zip(ci).map(|(y, c)| y * c).sum::<f64>();
    }
    total
}

/// One parameter element whose gradient is checked.
struct Probe {
    tensor: String,
    local: usize,
    flat: usize,
    fd: f64,
}

/// What the GPU returned for one case.
struct GpuGrads {
    /// Parameter gradients after pass 1 (from zero), pass 2 (added) and pass 3 (frozen).
    g: [Vec<f32>; 3],
    /// Per input (`z`, then `a` if the network reads one): its gradient written by pass 1,
    /// added into `d0` by pass 2 and written by pass 3.
    dx: Vec<[Vec<f32>; 3]>,
}

/// A pass's buffers: parameters, zeroed gradients, the inputs, their gradients and `dy`.
struct PassBuffers {
    params: GpuBuffer<f32>,
    grads: GpuBuffer<f32>,
    xb: Vec<GpuBuffer<f32>>,
    dxb: Vec<GpuBuffer<f32>>,
    dy: GpuBuffer<f32>,
}

impl PassBuffers {
    fn new(gpu: &Gpu, flat: &[f32], x: &[Vec<f32>], c: &[f32]) -> Self {
        let upload = |label, v: &[f32]| GpuBuffer::from_slice(gpu, label, v).unwrap();
        PassBuffers {
            params: upload("params", flat),
            grads: GpuBuffer::new(gpu, "grads", flat.len()).unwrap(),
            xb: x.iter().map(|v| upload("input", v)).collect(),
            dxb: x
                .iter()
                .map(|v| GpuBuffer::new(gpu, "input gradient", v.len()).unwrap())
                .collect(),
            dy: upload("dy", c),
        }
    }
}

/// Forward through weight sets `sel` of `tn`, keeping pass 1 of a tape with room to spare
/// (more rows, weight sets and passes than used, so that offsets matter), then three backward
/// passes with `dy = c`: (1) into zeroed parameter gradients, writing the input gradients
/// (poisoned before); (2) adding into both, the input gradients preloaded with `d0`; (3) with
/// frozen parameters (`params: None`), writing the input gradients (poisoned again).
#[allow(clippy::too_many_arguments)]
fn run_gpu(
    gpu: &Gpu,
    tn: &TrainNet,
    flat: &[f32],
    sel: Members,
    m: usize,
    x: &[Vec<f32>],
    c: &[f32],
    d0: &[Vec<f32>],
) -> GpuGrads {
    let PassBuffers {
        params,
        grads,
        xb,
        dxb,
        dy,
    } = PassBuffers::new(gpu, flat, x, c);
    let tape = Tape::new(gpu, tn, m + 3, sel.count + 1, 2).unwrap();
    let input = NetInput {
        z: (&xb[0], 0),
        a: xb.get(1).map(|b| (b, 0)),
        agent_strides: (0, 0),
    };
    let step = 1;
    let mut g = Vec::new();
    let mut dx = vec![Vec::new(); x.len()];
    for pass in 0..3 {
        match pass {
            1 => dxb
                .iter()
                .zip(d0)
                .for_each(|(b, d)| b.upload(gpu, d).unwrap()),
            _ => dxb.iter().for_each(|b| b.fill_u32(gpu, POISON).unwrap()),
        }
        let mut rec = Recorder::new(gpu);
        if pass == 0 {
            tn.forward(&mut rec, &params, m, sel, input, &tape, step)
                .unwrap();
        }
        let (to_params, acc) = match pass {
            0 => (Some(&grads), false),
            1 => (Some(&grads), true),
            _ => (None, false),
        };
        let dest = Grads {
            params: to_params,
            dz: Some((&dxb[0], 0, acc)),
            da: dxb.get(1).map(|b| (b, 0, acc)),
        };
        tn.backward(
            &mut rec,
            &params,
            m,
            sel,
            input,
            &tape,
            step,
            (&dy, 0),
            dest,
        )
        .unwrap();
        let hg = rec.read(&grads);
        let hx: Vec<_> = dxb.iter().map(|b| rec.read(b)).collect();
        let out = rec.finish().unwrap();
        g.push(out.get(&hg).unwrap());
        for (d, h) in dx.iter_mut().zip(&hx) {
            d.push(out.get(h).unwrap());
        }
    }
    let three = |v: Vec<Vec<f32>>| -> [Vec<f32>; 3] { v.try_into().unwrap() };
    GpuGrads {
        g: three(g),
        dx: dx.into_iter().map(three).collect(),
    }
}

/// Largest |got - want| / max |want|, and max |want|.
fn scaled_error(got: &[f32], want: &[f64]) -> (f64, f64) {
    let scale = want.iter().fold(0.0f64, |s, v| s.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| {
            let d = (*g as f64 - w).abs();
            if d.is_nan() { f64::INFINITY } else { d }
        })
        .fold(0.0, f64::max);
    (worst / scale.max(1e-300), scale)
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The tiny model of the pass tests: latent 16, hidden 24, encoder 20, 11 bins, 3 Q heads.
fn tiny_spec() -> ModelSpec {
    ModelSpec {
        num_bins: 11,
        num_q: 3,
        ..ModelSpec::tiny(5, 3)
    }
}

#[test]
fn backward_matches_finite_differences() {
    let mut r = rng("backward_matches_finite_differences");
    let spec = tiny_spec();
    let layout = ParamLayout::new(&spec);
    let m = 5;
    let cases = [
        (Net::Encoder, Members::one(0)),
        (Net::Dynamics, Members::one(0)),
        (Net::Reward, Members::one(0)),
        (Net::Q, Members::range(0, 3)),
        (Net::Q, Members::one(1)),
    ];
    let (mut worst_param, mut worst_input, mut worst_sum) = (0.0f64, 0.0f64, 0.0f64);
    for (net, sel) in cases {
        let mut w = perturbed(&spec, &mut r);
        let flat = layout.flatten(&w).unwrap();
        let tn = TrainNet::new(&spec, &layout, net).unwrap();
        let first = &tn.layers[0].spec;
        let out = tn.out_dim();
        // Inputs z and, for [z, a] networks, a; their names for messages.
        let widths: Vec<usize> = [first.in1, first.in2]
            .into_iter()
            .filter(|&k| k > 0)
            .collect();
        let names = ["dz", "da"];
        let x32: Vec<Vec<f32>> = widths.iter().map(|k| uniform(&mut r, m * k, 1.0)).collect();
        let d0: Vec<Vec<f32>> = widths.iter().map(|k| uniform(&mut r, m * k, 1.0)).collect();
        let c32 = uniform(&mut r, sel.count * m * out, 1.0);
        let mut x: Vec<Vec<f64>> = x32.iter().map(|v| f64s(v)).collect();
        let c = f64s(&c32);
        let objective_at = |w: &Weights, x: &[Vec<f64>]| {
            objective(w, net, sel, m, &x[0], x.get(1).map(|v| v.as_slice()), &c)
        };

        // Which elements of the flat buffer this pass may touch: the selected weight sets'
        // slices of the network's tensors.
        let mut live = vec![false; layout.len()];
        let range = layout.net(net);
        let members = spec.members(net);
        let last_bias = format!("{}.bias", tn.layers.last().unwrap().spec.prefix);
        let mut probes = Vec::new();
        let tensors: Vec<(String, usize, usize)> = layout
            .tensors()
            .filter(|(_, _, off)| range.contains(off))
            .map(|(n, s, off)| (n.to_string(), s.iter().product(), off))
            .collect();
        for (name, n, off) in &tensors {
            let per = n / members;
            let lo = sel.first * per;
            let hi = (sel.first + sel.count) * per;
            live[off + lo..off + hi].iter_mut().for_each(|v| *v = true);
            let locals: Vec<usize> = if *name == last_bias {
                (lo..hi).collect()
            } else {
                rand::seq::index::sample(&mut r, hi - lo, SAMPLES.min(hi - lo))
                    .into_iter()
                    .map(|i| lo + i)
                    .collect()
            };
            for local in locals {
                probes.push(Probe {
                    tensor: name.clone(),
                    local,
                    flat: off + local,
                    fd: 0.0,
                });
            }
        }
        // Central differences of the f64 objective.
        for p in &mut probes {
            let v = w.tensors[&p.tensor].data[p.local];
            let (hi, lo) = ((v as f64 + STEP) as f32, (v as f64 - STEP) as f32);
            let mut at = |val: f32| {
                w.tensors.get_mut(&p.tensor).unwrap().data[p.local] = val;
                objective_at(&w, &x)
            };
            let (fp, fm) = (at(hi), at(lo));
            at(v);
            p.fd = (fp - fm) / (hi as f64 - lo as f64);
        }
        let mut fd_x: Vec<Vec<f64>> = x.iter().map(|v| vec![0.0; v.len()]).collect();
        for (i, fd) in fd_x.iter_mut().enumerate() {
            for (j, d) in fd.iter_mut().enumerate() {
                let v = x[i][j];
                let (hi, lo) = (v + STEP, v - STEP);
                x[i][j] = hi;
                let fp = objective_at(&w, &x);
                x[i][j] = lo;
                let fm = objective_at(&w, &x);
                x[i][j] = v;
                *d = (fp - fm) / (hi - lo);
            }
        }

        for gpu in gpus() {
            let what = format!("{net:?} {sel:?}, {:?} shaders", gpu.shader_checks());
            let g = run_gpu(gpu, &tn, &flat, sel, m, &x32, &c32, &d0);
            // Nothing outside the selected weight sets of this network moves.
            for (i, (&v, &l)) in g.g[0].iter().zip(&live).enumerate() {
                assert!(
                    l || v == 0.0,
                    "{what}: gradient element {i} outside the pass is {v}"
                );
            }
            // Per tensor against the finite differences.
            for (name, _, _) in &tensors {
                let ps: Vec<&Probe> = probes.iter().filter(|p| &p.tensor == name).collect();
                let got: Vec<f32> = ps.iter().map(|p| g.g[0][p.flat]).collect();
                let want: Vec<f64> = ps.iter().map(|p| p.fd).collect();
                let (e, scale) = scaled_error(&got, &want);
                eprintln!("{what}: {name}: {e:.2e} of {scale:.2e}");
                assert!(scale > 0.0, "{what}: {name} has no gradient at all");
                assert!(
                    e <= GRAD_TOL,
                    "{what}: gradient of {name} off by {e:e} of its scale {scale:e}"
                );
                worst_param = worst_param.max(e);
            }
            // Pass 2 added: the parameter gradients doubled.
            let twice: Vec<f64> = g.g[0].iter().map(|&v| 2.0 * v as f64).collect();
            let (e, _) = scaled_error(&g.g[1], &twice);
            eprintln!("{what}: parameter gradients after pass 2: {e:.2e} from 2 g");
            assert!(
                e <= SUM_TOL,
                "{what}: a second backward pass did not add its gradients: {e:e}"
            );
            worst_sum = worst_sum.max(e);
            // Pass 3 (frozen parameters) left them alone.
            assert!(
                g.g[2] == g.g[1],
                "{what}: a backward pass without parameter gradients changed them"
            );
            for (i, fd) in fd_x.iter().enumerate() {
                let name = names[i];
                let [d1, d2, d3] = &g.dx[i];
                let (e1, scale) = scaled_error(d1, fd);
                let plus_d0: Vec<f64> = d0[i].iter().zip(fd).map(|(a, b)| *a as f64 + b).collect();
                let (e2, _) = scaled_error(d2, &plus_d0);
                let sum: Vec<f64> = d0[i]
                    .iter()
                    .zip(d1)
                    .map(|(a, b)| *a as f64 + *b as f64)
                    .collect();
                let (added, _) = scaled_error(d2, &sum);
                let (frozen, _) = scaled_error(d3, &f64s(d1));
                eprintln!(
                    "{what}: {name}: {e1:.2e} of {scale:.2e}; accumulated {e2:.2e} from d0 + fd, \
                     {added:.2e} from d0 + {name}; frozen pass {frozen:.2e} from pass 1"
                );
                assert!(e1 <= GRAD_TOL, "{what}: {name} off by {e1:e} of {scale:e}");
                assert!(
                    e2 <= GRAD_TOL && added <= SUM_TOL,
                    "{what}: {name} in accumulate mode: {e2:e} from d0 + fd, {added:e} from \
                     d0 + {name}"
                );
                assert!(
                    frozen <= SUM_TOL,
                    "{what}: {name} with frozen parameters: {frozen:e} from pass 1"
                );
                worst_input = worst_input.max(e1).max(e2);
                worst_sum = worst_sum.max(added).max(frozen);
            }
        }
    }
    eprintln!(
        "worst: parameters {worst_param:.2e}, inputs {worst_input:.2e}, sums and passes \
         {worst_sum:.2e}"
    );
}

#[test]
fn fits_a_random_target_network() {
    let mut r = rng("fits_a_random_target_network");
    let spec = ModelSpec {
        num_bins: 8,
        ..ModelSpec::tiny(5, 3)
    };
    let layout = ParamLayout::new(&spec);
    let net = Net::Reward;
    let tn = TrainNet::new(&spec, &layout, net).unwrap();
    let (l, act, out) = (spec.latent_dim, spec.action_dim, tn.out_dim());
    let rows = 128;
    let steps = 200;
    let lr = 3e-3;
    let teacher = perturbed(&spec, &mut r);
    let student = Weights::init(&spec, r.random()).unwrap();
    let z = uniform(&mut r, rows * l, 1.0);
    let a = uniform(&mut r, rows * act, 1.0);
    let target: Vec<f32> =
        reference::model::forward(&teacher, net, rows, &f64s(&z), Some(&f64s(&a)), 0)
            .unwrap()
            .iter()
            .map(|&v| v as f32)
            .collect();
    let flat = layout.flatten(&student).unwrap();
    let range = layout.net(net);
    let cfg = MseConfig {
        n: out,
        members: 1,
        weights: RowWeights::uniform(1.0 / (rows * out) as f32),
        agents: Agents::ONE,
    };
    // The student starts with a zero final layer: its first loss is the mean square target.
    let first_want = target.iter().map(|&t| (t as f64).powi(2)).sum::<f64>() / target.len() as f64;
    // The loss of the best constant prediction (each output's mean): the part of the target
    // that depends on the input.
    let constant_loss = (0..out)
        .map(|j| {
            let col = || (0..rows).map(|r| target[r * out + j] as f64);
            let mean = col().sum::<f64>() / rows as f64;
            col().map(|v| (v - mean).powi(2)).sum::<f64>()
        })
        .sum::<f64>()
        / (rows * out) as f64;
    for gpu in gpus() {
        let t0 = Instant::now();
        let params = GpuBuffer::from_slice(gpu, "params", &flat).unwrap();
        let grads = GpuBuffer::<f32>::new(gpu, "grads", flat.len()).unwrap();
        let zb = GpuBuffer::from_slice(gpu, "z", &z).unwrap();
        let ab = GpuBuffer::from_slice(gpu, "a", &a).unwrap();
        let tb = GpuBuffer::from_slice(gpu, "target", &target).unwrap();
        let dy = GpuBuffer::<f32>::new(gpu, "dy", rows * out).unwrap();
        let losses = GpuBuffer::<f32>::new(gpu, "losses", steps + 1).unwrap();
        let scratch =
            GpuBuffer::<f32>::new(gpu, "loss partials", loss::mse_partials(&cfg, rows).max(1))
                .unwrap();
        let tape = Tape::new(gpu, &tn, rows, 1, 1).unwrap();
        let mut adam = Adam::new(
            gpu,
            flat.len(),
            &[ParamGroup::new(range.clone(), 1.0)],
            AdamConfig {
                lr,
                ..AdamConfig::default()
            },
        )
        .unwrap();
        let input = NetInput {
            z: (&zb, 0),
            a: Some((&ab, 0)),
            agent_strides: (0, 0),
        };
        let sel = Members::one(0);
        let (y, y_off) = tape.output(&tn, 0);
        for step in 0..=steps {
            let mut rec = Recorder::new(gpu);
            rec.clear(&grads);
            tn.forward(&mut rec, &params, rows, sel, input, &tape, 0)
                .unwrap();
            loss::record_mse(
                &mut rec,
                &cfg,
                rows,
                y,
                RowLayout::at(y_off, out),
                &tb,
                RowLayout::contiguous(out),
                Some(GradOut {
                    buf: &dy,
                    at: RowLayout::contiguous(out),
                    accumulate: false,
                }),
                LossOut {
                    losses: &losses,
                    index: step,
                    accumulate: false,
                },
                Some(&scratch),
            )
            .unwrap();
            // The last pass only measures the loss of the trained network.
            if step < steps {
                let to = Grads {
                    params: Some(&grads),
                    ..Grads::default()
                };
                tn.backward(&mut rec, &params, rows, sel, input, &tape, 0, (&dy, 0), to)
                    .unwrap();
                adam.record_step(&mut rec, &params, &grads).unwrap();
            }
            rec.submit().unwrap();
        }
        let curve = losses.download(gpu).unwrap();
        let trained = params.download(gpu).unwrap();
        let secs = t0.elapsed().as_secs_f64();
        let what = format!("{:?} shaders", gpu.shader_checks());
        eprintln!(
            "{what}: {steps} steps in {secs:.2} s; loss {:?} ... {:?}",
            &curve[..4],
            &curve[steps - 3..]
        );
        assert!(
            ((curve[0] as f64 - first_want) / first_want).abs() < 1e-5,
            "{what}: first loss {} but the mean square target is {first_want}",
            curve[0]
        );
        // Adam touched the network's range only.
        for (i, (p, q)) in trained.iter().zip(&flat).enumerate() {
            assert!(
                range.contains(&i) || p.to_bits() == q.to_bits(),
                "{what}: parameter {i} outside the trained network changed"
            );
        }
        // The final loss, from the trained parameters by the CPU mirror.
        let mut w = student.clone();
        layout.unflatten(&trained, &mut w).unwrap();
        let pred = reference::model::forward(&w, net, rows, &f64s(&z), Some(&f64s(&a)), 0).unwrap();
        let cpu_final = pred
            .iter()
            .zip(&target)
            .map(|(p, t)| (p - *t as f64).powi(2))
            .sum::<f64>()
            / pred.len() as f64;
        let last = curve[steps] as f64;
        eprintln!(
            "{what}: final loss {last:.3e} (CPU mirror {cpu_final:.3e}): {:.2}% of the first, \
             {:.2}% of the best constant prediction's {constant_loss:.3e}",
            100.0 * last / first_want,
            100.0 * last / constant_loss
        );
        assert!(
            ((last - cpu_final) / cpu_final).abs() < 1e-3,
            "{what}: GPU final loss {last} but the mirror gives {cpu_final}"
        );
        assert!(
            last < FIT_OF_FIRST * first_want && last < FIT_OF_CONSTANT * constant_loss,
            "{what}: loss {last:e} after {steps} steps: not below {FIT_OF_FIRST} of the first \
             ({first_want:e}) and {FIT_OF_CONSTANT} of the best constant prediction's \
             ({constant_loss:e})"
        );
    }
}

/// One agent's (or a population's) forward and backward through `tn`: the output, the
/// parameter gradients (from zero) and the input gradients (written).
struct PassOut {
    y: Vec<f32>,
    g: Vec<f32>,
    dx: Vec<Vec<f32>>,
}

/// Forward and backward of `agents` agents at once: `flat` their parameters back to back,
/// `x` each input with the agents' rows `strides` apart, `c` the output gradient `[agents *
/// sel.count, m, out]`.
#[allow(clippy::too_many_arguments)]
fn run_agents(
    gpu: &Gpu,
    tn: &TrainNet,
    flat: &[f32],
    sel: Members,
    m: usize,
    x: &[Vec<f32>],
    strides: &[usize],
    c: &[f32],
) -> PassOut {
    let bufs = PassBuffers::new(gpu, flat, x, c);
    bufs.dxb
        .iter()
        .for_each(|b| b.fill_u32(gpu, POISON).unwrap());
    let tape = Tape::new(gpu, tn, m, sel.slots(), 1).unwrap();
    let mut input = NetInput::z(&bufs.xb[0], 0);
    input.a = bufs.xb.get(1).map(|b| (b, 0));
    let input = input.per_agent(strides[0], strides.get(1).copied().unwrap_or(0));
    let mut rec = Recorder::new(gpu);
    tn.forward(&mut rec, &bufs.params, m, sel, input, &tape, 0)
        .unwrap();
    let dest = Grads {
        params: Some(&bufs.grads),
        dz: Some((&bufs.dxb[0], 0, false)),
        da: bufs.dxb.get(1).map(|b| (b, 0, false)),
    };
    let dy = (&bufs.dy, 0);
    tn.backward(&mut rec, &bufs.params, m, sel, input, &tape, 0, dy, dest)
        .unwrap();
    let (yb, yoff) = tape.output(tn, 0);
    let hy = rec.read(yb);
    let hg = rec.read(&bufs.grads);
    let hx: Vec<_> = bufs.dxb.iter().map(|b| rec.read(b)).collect();
    let out = rec.finish().unwrap();
    let n = sel.slots() * m * tn.out_dim();
    PassOut {
        y: out.get(&hy).unwrap()[yoff..yoff + n].to_vec(),
        g: out.get(&hg).unwrap(),
        dx: hx.iter().map(|h| out.get(h).unwrap()).collect(),
    }
}

/// Largest |got - want| over the largest |want|, NaN-aware.
fn max_rel(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want
        .iter()
        .fold(0.0f64, |a, v| a.max(v.abs() as f64))
        .max(1e-30);
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            let d = (*g as f64 - *w as f64).abs() / scale;
            if d.is_nan() { f64::INFINITY } else { d }
        })
        .fold(0.0, f64::max)
}

#[test]
fn a_population_pass_is_each_agent_alone() {
    // Three agents with their own weights, inputs and output gradients through one pass of
    // each network (and the Q ensemble, and one Q head of it): outputs, parameter gradients
    // and input gradients as each agent gives alone, and nothing written between the agents'
    // input-gradient rows (the inputs sit `rows * width + gap` apart).
    let mut r = rng("population pass");
    let spec = tiny_spec();
    let layout = ParamLayout::new(&spec);
    let (m, agents, gap) = (6, 3, 5);
    let cases = [
        (Net::Encoder, Members::one(0)),
        (Net::Dynamics, Members::one(0)),
        (Net::Reward, Members::one(0)),
        (Net::Q, Members::range(0, 3)),
        (Net::Q, Members::range(1, 2)),
    ];
    for gpu in gpus() {
        for (net, sel) in cases {
            let tn = TrainNet::new(&spec, &layout, net).unwrap();
            let first = &tn.layers[0].spec;
            let widths: Vec<usize> = [first.in1, first.in2]
                .into_iter()
                .filter(|&k| k > 0)
                .collect();
            let out = tn.out_dim();
            let flats: Vec<Vec<f32>> = (0..agents)
                .map(|_| layout.flatten(&perturbed(&spec, &mut r)).unwrap())
                .collect();
            let xs: Vec<Vec<Vec<f32>>> = (0..agents)
                .map(|_| widths.iter().map(|k| uniform(&mut r, m * k, 1.0)).collect())
                .collect();
            let cs: Vec<Vec<f32>> = (0..agents)
                .map(|_| uniform(&mut r, sel.count * m * out, 1.0))
                .collect();
            let alone: Vec<PassOut> = (0..agents)
                .map(|g| run_agents(gpu, &tn, &flats[g], sel, m, &xs[g], &[0, 0], &cs[g]))
                .collect();
            // The population: inputs `gap` apart, poison in the gaps.
            let strides: Vec<usize> = widths.iter().map(|k| m * k + gap).collect();
            let x_pop: Vec<Vec<f32>> = (0..widths.len())
                .map(|i| {
                    let mut v = vec![f32::from_bits(POISON); agents * strides[i]];
                    for g in 0..agents {
                        v[g * strides[i]..g * strides[i] + m * widths[i]]
                            .copy_from_slice(&xs[g][i]);
                    }
                    v
                })
                .collect();
            let pop = run_agents(
                gpu,
                &tn,
                &flats.concat(),
                sel.of_agents(agents),
                m,
                &x_pop,
                &strides,
                &cs.concat(),
            );
            let tag = format!("{net:?} {sel:?} ({})", gpu.describe());
            let per_y = sel.count * m * out;
            let p = layout.len();
            for (g, a) in alone.iter().enumerate() {
                let ey = max_rel(&pop.y[g * per_y..(g + 1) * per_y], &a.y);
                let eg = max_rel(&pop.g[g * p..(g + 1) * p], &a.g);
                assert!(
                    ey <= 1e-6 && eg <= 1e-6,
                    "{tag} agent {g}: y {ey:e}, grads {eg:e}"
                );
                for (i, k) in widths.iter().enumerate() {
                    let got = &pop.dx[i][g * strides[i]..g * strides[i] + m * k];
                    let ex = max_rel(got, &a.dx[i]);
                    assert!(ex <= 1e-6, "{tag} agent {g} input {i}: {ex:e}");
                    let gap_vals = &pop.dx[i][g * strides[i] + m * k..(g + 1) * strides[i]];
                    assert!(
                        gap_vals.iter().all(|v| v.to_bits() == POISON),
                        "{tag}: written between agents' input gradients"
                    );
                }
            }
        }
    }
}
