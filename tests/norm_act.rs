//! The norm-act kernels (forward `y = act(LN(h))`, backward `dh` with the LayerNorm parameter
//! gradients, column sums) against their f64 mirror on fresh random inputs with poisoned
//! outputs, with shader checks on and off: every activation with and without LayerNorm,
//! ensembles, odd row counts and widths (not multiples of the 64 threads or of the 64-column
//! tiles), one-pass and two-pass column sums (over 256 rows), stored and recomputed row
//! statistics, accumulate and write, operands at offsets inside larger buffers (elements
//! around them must not change). The mirror's backward is checked against central finite
//! differences of the mirror's forward (f64), and the GPU backward against finite differences
//! of the GPU forward (f32). Bad requests are errors.
//!
//! Tolerances (measured on lavapipe: at most an eighth of each):
//! * y and dh: `common::rel_error <= 1e-5` (relative per element, floored at the output's
//!   rms), as for the linear kernel's epilogue: f32 sums of n terms for the statistics (a few
//!   ulps relative at these widths), then a handful of f32 operations per element; dh's
//!   cancellation `g - mean(g) - xhat mean(g xhat)` is measured against the rms of dh.
//!   Measured: y 6.8e-7, dh 7.3e-7 with the stored statistics, 1.3e-6 with the mirror's exact
//!   ones against the kernel's recomputed f32 statistics. dh also gets `4e-7 rstd max|dy|
//!   max|gamma|` (over the rms): rstd amplifies the rounding of the row terms, up to 316 for
//!   a constant row (n = 1), where the H100 measured 1.6e-5 relative from its approximate
//!   reciprocal.
//! * Statistics: mean within `1e-6 * max|h|` of the row, rstd within `2e-6` relative (f32
//!   sums over the row: measured 1e-7 and 1.4e-7).
//! * Column sums (dgamma, dbeta, the bias gradient): `|gpu - ref| <= 1e-5 * (|init| +
//!   sum_r |term_r|)` per column: terms of both signs can cancel, so the error is relative to
//!   the sum of magnitudes: 6e-8 per addition in sequence (at most 75 per column here, 354 in
//!   the 100 003-row case: 98 per lane and 256 chunk partials) in the worst case, about the
//!   square root of that for rounding errors of random sign, plus the terms' own relative
//!   error of about 1e-6. Measured: 1.0e-6 (dgamma, dbeta), 1e-7 (bias).
//! * Mirror against finite differences (f64, step 1e-5): `1e-7 * max(1, max|grad|)`;
//!   truncation (step^2 times third derivatives of order 10) and rounding (1e-16 |L| / step)
//!   are both below 1e-9 here.
//! * GPU against finite differences of the GPU forward (f32, step 3e-3): `2e-3 * max|grad|`;
//!   f32 rounding of `L = sum dy y` over a row of 64 (about 5e-7) divided by the step gives
//!   about 1e-4, truncation about 1e-5 times third derivatives. Measured: 1.1e-4.

mod common;

use common::{POISON, gpus, rel_error, rng, small_grid_gpus, uniform};
use pompc::kernels::norm_act::{
    self, Activation, Affine, ColumnSumConfig, ColumnTile, NormActBuffers, NormActConfig, NormActOp,
};
use pompc::reference::act as act_mirror;
use pompc::reference::norm_act as mirror;
use pompc::{Error, Gpu, GpuBuffer, Recorder};
use rand::Rng;

const TOL: f64 = 1e-5;
const SUM_TOL: f64 = 1e-5;
const FD_TOL: f64 = 1e-7;
const GPU_FD_TOL: f64 = 2e-3;

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// `data` at a random offset inside a buffer of random filler.
struct Placed {
    buf: GpuBuffer<f32>,
    off: usize,
    len: usize,
    /// The whole buffer as uploaded.
    init: Vec<f32>,
}

impl Placed {
    fn new(gpu: &Gpu, r: &mut impl Rng, label: &str, data: &[f32], poison: bool) -> Placed {
        let off = r.random_range(0..20);
        let tail = r.random_range(0..7);
        let fill = |r: &mut dyn rand::RngCore, n: usize| -> Vec<f32> {
            if poison {
                vec![f32::from_bits(POISON); n]
            } else {
                (0..n).map(|_| r.random_range(-3.0f32..3.0)).collect()
            }
        };
        let mut init = fill(r, off);
        init.extend_from_slice(data);
        init.extend(fill(r, tail));
        Placed {
            buf: GpuBuffer::from_slice(gpu, label, &init).unwrap(),
            off,
            len: data.len(),
            init,
        }
    }

    /// An output: poison at a random offset, or `init` values there (accumulate).
    fn output(
        gpu: &Gpu,
        r: &mut impl Rng,
        label: &str,
        len: usize,
        init: Option<&[f32]>,
    ) -> Placed {
        let poison = vec![f32::from_bits(POISON); len];
        Placed::new(gpu, r, label, init.unwrap_or(&poison), true)
    }

    fn at(&self) -> (&GpuBuffer<f32>, usize) {
        (&self.buf, self.off)
    }

    /// The written part of a read-back, after checking that nothing else changed.
    fn written<'a>(&self, got: &'a [f32], what: &str) -> &'a [f32] {
        for (i, (g, w)) in got.iter().zip(&self.init).enumerate() {
            if i < self.off || i >= self.off + self.len {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{what}: element {i} outside was changed"
                );
            }
        }
        &got[self.off..self.off + self.len]
    }
}

/// Params (or gradients) with gamma, beta and a bias vector at random offsets; with agents,
/// each vector agent by agent (`per_len` values) at an agent stride with gaps between.
struct ParamBuf {
    buf: GpuBuffer<f32>,
    gamma: usize,
    beta: usize,
    bias: usize,
    per_len: usize,
    stride: usize,
    init: Vec<f32>,
}

impl ParamBuf {
    fn new(
        gpu: &Gpu,
        r: &mut impl Rng,
        label: &str,
        agents: usize,
        gamma: &[f32],
        beta: &[f32],
    ) -> Self {
        let len = gamma.len();
        let per_len = len / agents;
        let stride = per_len + if agents > 1 { r.random_range(1..5) } else { 0 };
        let extent = (agents - 1) * stride + per_len;
        let g = r.random_range(0..9);
        let b = g + extent + r.random_range(0..5);
        let bias = b + extent + r.random_range(0..5);
        let total = bias + extent + r.random_range(0..5);
        let init: Vec<f32> = (0..total).map(|_| r.random_range(-1.0f32..1.0)).collect();
        let mut pb = ParamBuf {
            buf: GpuBuffer::from_slice(gpu, label, &init).unwrap(),
            gamma: g,
            beta: b,
            bias,
            per_len,
            stride,
            init,
        };
        for (base, v) in [(g, gamma), (b, beta)] {
            for (j, x) in v.iter().enumerate() {
                let at = pb.pos(base, j);
                pb.init[at] = *x;
            }
        }
        pb.buf.upload(gpu, &pb.init).unwrap();
        pb
    }

    /// Where logical element `j` of the vector at `base` is.
    fn pos(&self, base: usize, j: usize) -> usize {
        base + (j / self.per_len) * self.stride + j % self.per_len
    }

    /// The logical vector of `len` elements at `base` of a read-back.
    fn gather(&self, all: &[f32], base: usize, len: usize) -> Vec<f32> {
        (0..len).map(|j| all[self.pos(base, j)]).collect()
    }

    /// Whether element `i` holds a value of the `len`-element vector at `base`.
    fn holds(&self, base: usize, len: usize, i: usize) -> bool {
        i >= base
            && (i - base) % self.stride.max(1) < self.per_len
            && i < self.pos(base, len - 1) + 1
    }

    fn affine(&self) -> Affine<'_> {
        Affine {
            buf: &self.buf,
            gamma: self.gamma,
            beta: self.beta,
            agent_stride: self.stride,
            bias: None,
        }
    }
}

/// Largest `|got - want| / (|init| + mag)` over columns, for sums of terms of both signs.
fn sum_error(got: &[f32], want: &[f64], scale: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .zip(scale)
        .map(|((g, w), s)| {
            let d = (*g as f64 - w).abs() / s.max(1e-30);
            if d.is_nan() { f64::INFINITY } else { d }
        })
        .fold(0.0, f64::max)
}

#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    act: Activation,
    ln: bool,
    members: usize,
    rows: usize,
    accumulate: bool,
    /// Agents the members split into.
    agents: usize,
    /// The column passes' tile (`None`: the default choice).
    tile: Option<ColumnTile>,
}

impl Case {
    fn agents(mut self, agents: usize) -> Self {
        self.agents = agents;
        self
    }

    fn narrow(mut self) -> Self {
        self.tile = Some(ColumnTile::NARROW);
        self
    }
}

fn case(
    n: usize,
    act: Activation,
    ln: bool,
    members: usize,
    rows: usize,
    accumulate: bool,
) -> Case {
    Case {
        n,
        act,
        ln,
        members,
        rows,
        accumulate,
        agents: 1,
        tile: None,
    }
}

/// Random pre-activations: uniform in +-2 around a random offset per row (LayerNorm removes
/// it; the statistics must not suffer from it).
fn random_h(r: &mut impl Rng, rows: usize, n: usize) -> Vec<f32> {
    let mut h = Vec::with_capacity(rows * n);
    for _ in 0..rows {
        let shift = r.random_range(-3.0f32..3.0);
        h.extend((0..n).map(|_| shift + r.random_range(-2.0f32..2.0)));
    }
    h
}

/// Forward (stats stored), backward with the stored stats and with recomputed ones, the
/// LayerNorm parameter gradients and the bias gradient, against the mirror. The bias gradient
/// comes from `record_column_sum` of dh after the first backward, and from the LayerNorm
/// gradients' own column pass (`Affine::bias`) in the second where it can (LayerNorm, dh
/// written).
fn run_layer(gpu: &Gpu, r: &mut impl Rng, c: Case) {
    let mut cfg = NormActConfig::new(c.n, c.act, c.ln)
        .with_members(c.members)
        .with_agents(c.agents);
    cfg.column_tile = c.tile;
    let (n, total) = (c.n, c.members * c.rows);
    let len = c.members * n;
    let h = random_h(r, total, n);
    let dy = uniform(r, total * n, 1.0);
    let gamma: Vec<f32> = (0..len)
        .map(|_| 1.0 + r.random_range(-0.5f32..0.5))
        .collect();
    let beta = uniform(r, len, 0.5);
    let dh_init = uniform(r, total * n, 1.0);
    let tag = format!("{c:?} checks={:?}", gpu.shader_checks());

    let hp = Placed::new(gpu, r, "h", &h, false);
    let dyp = Placed::new(gpu, r, "dy", &dy, false);
    let params = ParamBuf::new(gpu, r, "params", c.agents, &gamma, &beta);
    let gi = uniform(r, len, 1.0);
    let bi = uniform(r, len, 1.0);
    let grads = ParamBuf::new(gpu, r, "grads", c.agents, &gi, &bi);
    let grads2 = ParamBuf::new(gpu, r, "grads 2", c.agents, &gi, &bi);
    let y = Placed::output(gpu, r, "y", total * n, None);
    let stats = Placed::output(gpu, r, "stats", 2 * total, None);
    let init = c.accumulate.then_some(dh_init.as_slice());
    let dh = Placed::output(gpu, r, "dh", total * n, init);
    let dh2 = Placed::output(gpu, r, "dh 2", total * n, init);

    let affine = c.ln.then(|| params.affine());
    let io = NormActBuffers {
        h: hp.at(),
        affine,
        stats: c.ln.then(|| stats.at()),
    };
    let dgrads = c.ln.then(|| grads.affine());
    let bias = ColumnSumConfig {
        agents: c.agents,
        agent_stride: grads.stride,
        tile: c.tile,
        ..ColumnSumConfig::new(n, c.members, true)
    };
    let mut rec = Recorder::new(gpu);
    norm_act::record_forward(&mut rec, &cfg, c.rows, &io, y.at()).unwrap();
    norm_act::record_backward(
        &mut rec,
        &cfg,
        c.rows,
        &io,
        dyp.at(),
        dh.at(),
        c.accumulate,
        dgrads,
        None,
    )
    .unwrap();
    let bias_at = (&grads.buf, grads.bias);
    norm_act::record_column_sum(&mut rec, &bias, c.rows, dh.at(), None, bias_at, None).unwrap();
    // The same backward with the statistics recomputed from h, and the bias gradient fused.
    let fused_bias = c.ln && !c.accumulate;
    let io2 = NormActBuffers { stats: None, ..io };
    norm_act::record_backward(
        &mut rec,
        &cfg,
        c.rows,
        &io2,
        dyp.at(),
        dh2.at(),
        c.accumulate,
        c.ln.then(|| {
            let a = grads2.affine();
            if fused_bias {
                a.with_bias(grads2.bias)
            } else {
                a
            }
        }),
        None,
    )
    .unwrap();
    let handles = [
        rec.read(&y.buf),
        rec.read(&stats.buf),
        rec.read(&dh.buf),
        rec.read(&grads.buf),
        rec.read(&dh2.buf),
        rec.read(&grads2.buf),
    ];
    let out = rec.finish().unwrap();
    let [y_all, st_all, dh_all, gr_all, dh2_all, gr2_all] = handles.map(|h| out.get(&h).unwrap());

    // Forward.
    let (h64, g64, b64) = (f64s(&h), f64s(&gamma), f64s(&beta));
    let (y_ref, st_ref) = mirror::forward(&cfg, c.rows, &h64, &g64, &b64);
    let y_got = y.written(&y_all, "y");
    let err = rel_error(y_got, &y_ref);
    assert!(err <= TOL, "forward {tag}: error {err:e}");
    let st_got = stats.written(&st_all, "stats");
    if c.ln {
        for i in 0..total {
            let hmax = h[i * n..(i + 1) * n]
                .iter()
                .fold(0.0f64, |m, v| m.max(v.abs() as f64));
            let dm = (st_got[2 * i] as f64 - st_ref[2 * i]).abs();
            let dr = (st_got[2 * i + 1] as f64 - st_ref[2 * i + 1]).abs() / st_ref[2 * i + 1];
            assert!(
                dm <= 1e-6 * hmax && dr <= 2e-6,
                "stats {tag} row {i}: mean {} vs {}, rstd {} vs {}",
                st_got[2 * i],
                st_ref[2 * i],
                st_got[2 * i + 1],
                st_ref[2 * i + 1]
            );
        }
    } else {
        assert!(
            st_got.iter().all(|v| v.to_bits() == POISON),
            "stats written without LN"
        );
    }

    // Backward with the stored statistics (as the GPU wrote them).
    let dy64 = f64s(&dy);
    let st64 = f64s(st_got);
    let check_backward =
        |dh_all: &[f32], dhp: &Placed, gr_all: &[f32], gp: &ParamBuf, st: &[f64], what: &str| {
            let mirrored = mirror::backward(&cfg, c.rows, &dy64, &h64, &g64, &b64, st);
            let dh_ref = &mirrored.dh;
            let want: Vec<f64> = if c.accumulate {
                dh_ref
                    .iter()
                    .zip(&dh_init)
                    .map(|(d, i)| d + *i as f64)
                    .collect()
            } else {
                dh_ref.clone()
            };
            let got = dhp.written(dh_all, what);
            let err = rel_error(got, &want);
            // LayerNorm multiplies rounding in the row terms by rstd (316 for a constant row,
            // e.g. n = 1, where dh is 0 in exact arithmetic): allow a few ulps of g times
            // rstd on top, relative to the output's rms. NVIDIA's approximate reciprocal
            // (1 / n) gives 6e-6 absolute there.
            let rms = (want.iter().map(|v| v * v).sum::<f64>() / want.len().max(1) as f64).sqrt();
            let max_rstd = if c.ln {
                st.chunks(2).map(|p| p[1]).fold(0.0f64, f64::max)
            } else {
                1.0
            };
            let max_g = dy64.iter().fold(0.0f64, |a, v| a.max(v.abs()))
                * g64.iter().fold(1.0f64, |a, v| a.max(v.abs()));
            let amp = 4e-7 * max_rstd * max_g / rms.max(1e-30);
            assert!(
                err <= TOL + amp,
                "{what} {tag}: dh error {err:e} (allowed {:e})",
                TOL + amp
            );
            if let Some((dg, db)) = &mirrored.ln {
                // Sums of magnitudes per column, from the same per-row terms.
                let mut mag_g: Vec<f64> = gi.iter().map(|v| v.abs() as f64).collect();
                let mut mag_b: Vec<f64> = bi.iter().map(|v| v.abs() as f64).collect();
                for i in 0..total {
                    let e = i / c.rows;
                    let ln = Some((
                        &g64[e * n..(e + 1) * n],
                        &b64[e * n..(e + 1) * n],
                        st[2 * i],
                        st[2 * i + 1],
                    ));
                    let (xh, du) = mirror::row_terms(
                        &cfg,
                        &h64[i * n..(i + 1) * n],
                        &dy64[i * n..(i + 1) * n],
                        ln,
                    );
                    for j in 0..n {
                        mag_g[e * n + j] += (du[j] * xh[j]).abs();
                        mag_b[e * n + j] += du[j].abs();
                    }
                }
                let wg: Vec<f64> = dg.iter().zip(&gi).map(|(d, i)| d + *i as f64).collect();
                let wb: Vec<f64> = db.iter().zip(&bi).map(|(d, i)| d + *i as f64).collect();
                let eg = sum_error(&gp.gather(gr_all, gp.gamma, len), &wg, &mag_g);
                let eb = sum_error(&gp.gather(gr_all, gp.beta, len), &wb, &mag_b);
                assert!(
                    eg <= SUM_TOL && eb <= SUM_TOL,
                    "{what} {tag}: dgamma error {eg:e}, dbeta {eb:e}"
                );
            }
            // Nothing else in the gradient buffer moved (the bias part is checked by the caller).
            for (i, (g, w)) in gr_all.iter().zip(&gp.init).enumerate() {
                let in_ln = c.ln && (gp.holds(gp.gamma, len, i) || gp.holds(gp.beta, len, i));
                let in_bias = gp.holds(gp.bias, len, i);
                let bias_written = in_bias && (what == "stored stats" || fused_bias);
                if !(in_ln || bias_written) {
                    assert_eq!(
                        g.to_bits(),
                        w.to_bits(),
                        "{what} {tag}: gradient element {i} changed"
                    );
                }
            }
            got.to_vec()
        };
    let dh_got = check_backward(&dh_all, &dh, &gr_all, &grads, &st64, "stored stats");
    let dh2_got = check_backward(
        &dh2_all,
        &dh2,
        &gr2_all,
        &grads2,
        &st_ref,
        "recomputed stats",
    );

    // Bias gradient: the column sum of dh as the GPU wrote it, added to the initial values.
    let check_bias = |dh_got: &[f32], gp: &ParamBuf, gr_all: &[f32], what: &str| {
        let d64 = f64s(dh_got);
        let sums = mirror::column_sum(n, c.members, c.rows, &d64, None);
        let abs: Vec<f64> = d64.iter().map(|v| v.abs()).collect();
        let mut mag = mirror::column_sum(n, c.members, c.rows, &abs, None);
        let init_bias = &gp.gather(&gp.init, gp.bias, len);
        let want: Vec<f64> = sums
            .iter()
            .zip(init_bias)
            .map(|(s, i)| s + *i as f64)
            .collect();
        mag.iter_mut()
            .zip(init_bias)
            .for_each(|(m, i)| *m += i.abs() as f64);
        let err = sum_error(&gp.gather(gr_all, gp.bias, len), &want, &mag);
        assert!(err <= SUM_TOL, "{what} bias gradient {tag}: error {err:e}");
    };
    check_bias(&dh_got, &grads, &gr_all, "column-sum");
    if fused_bias {
        check_bias(&dh2_got, &grads2, &gr2_all, "fused");
    }
}

#[test]
fn layers_against_the_mirror() {
    use Activation::*;
    let mut r = rng("layers");
    let cases = [
        case(512, Mish, true, 1, 45, false),
        case(512, SimNorm, true, 2, 33, true),
        case(136, SimNorm, false, 1, 7, false),
        case(37, Mish, true, 3, 19, true),
        case(101, Identity, false, 2, 13, false),
        case(24, Identity, true, 1, 300, false),
        case(70, Mish, false, 2, 261, true),
        case(16, SimNorm, true, 5, 61, false),
        case(1, Mish, true, 1, 5, true),
        case(1, Identity, false, 1, 1, false),
        case(2048, Mish, true, 1, 3, false),
        // Populations: agents' parameters at an agent stride (one member each, an ensemble's
        // two and five), row counts on both sides of the two-pass column sums.
        case(64, Mish, true, 3, 17, false).agents(3),
        case(40, SimNorm, true, 4, 300, true).agents(2),
        case(33, Identity, false, 10, 9, false).agents(2),
        case(24, Mish, true, 6, 260, false).agents(6),
        // The narrow column tile: one chunk and two passes, columns not a multiple of 16,
        // agents.
        case(512, Mish, true, 1, 45, false).narrow(),
        case(37, Mish, true, 3, 19, true).narrow(),
        case(24, Identity, true, 1, 300, false).narrow(),
        case(40, SimNorm, true, 4, 300, true).agents(2).narrow(),
        case(24, Mish, true, 6, 260, false).agents(6).narrow(),
    ];
    for gpu in gpus() {
        for c in cases {
            run_layer(gpu, &mut r, c);
        }
    }
}

#[test]
fn column_sums_against_the_mirror() {
    let mut r = rng("colsum");
    for gpu in gpus() {
        for (n, members, rows) in [
            (1, 1, 1),
            (70, 2, 0),
            (70, 2, 255),
            (64, 1, 256),
            (129, 3, 257),
            (512, 1, 300),
            (33, 2, 1100),
        ] {
            for (product, accumulate) in
                [(false, true), (true, false), (true, true), (false, false)]
            {
                let a = uniform(&mut r, members * rows * n, 1.0);
                let b = uniform(&mut r, members * rows * n, 2.0);
                let init = uniform(&mut r, members * n, 1.0);
                let ap = Placed::new(gpu, &mut r, "a", &a, false);
                let bp = Placed::new(gpu, &mut r, "b", &b, false);
                let out = Placed::output(gpu, &mut r, "out", members * n, Some(&init));
                // Half the runs on the narrow tile.
                let cfg = ColumnSumConfig {
                    tile: r.random::<bool>().then_some(ColumnTile::NARROW),
                    ..ColumnSumConfig::new(n, members, accumulate)
                };
                // Half the two-pass runs bring their own scratch.
                let need = norm_act::scratch_len(n, members, rows, 1);
                let scratch = (need > 0 && r.random::<bool>())
                    .then(|| GpuBuffer::<f32>::new(gpu, "scratch", need + 3).unwrap());
                let mut rec = Recorder::new(gpu);
                norm_act::record_column_sum(
                    &mut rec,
                    &cfg,
                    rows,
                    ap.at(),
                    product.then(|| bp.at()),
                    out.at(),
                    scratch.as_ref(),
                )
                .unwrap();
                let h = rec.read(&out.buf);
                let got_all = rec.finish().unwrap().get(&h).unwrap();
                let got = out.written(&got_all, "column sum");
                let (a64, b64) = (f64s(&a), f64s(&b));
                let bref = product.then_some(b64.as_slice());
                let sums = mirror::column_sum(n, members, rows, &a64, bref);
                let abs_terms: Vec<f64> = a64
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (v * bref.map_or(1.0, |b| b[i])).abs())
                    .collect();
                let mut mag = mirror::column_sum(n, members, rows, &abs_terms, None);
                let mut want = sums.clone();
                if accumulate {
                    for j in 0..members * n {
                        want[j] += init[j] as f64;
                        mag[j] += init[j].abs() as f64;
                    }
                }
                // Zero rows written: exact zeros.
                let mag: Vec<f64> = mag.iter().map(|m| m.max(1e-30)).collect();
                let err = sum_error(got, &want, &mag);
                assert!(
                    err <= SUM_TOL,
                    "n={n} members={members} rows={rows} product={product} accumulate={accumulate} \
                     checks={:?}: error {err:e}",
                    gpu.shader_checks()
                );
            }
        }
    }
}

#[test]
fn a_hundred_thousand_rows() {
    // The planner-sized row count: 1563 workgroups of 64 rows, and column sums capped at 256
    // chunks of 392 rows (trusted shaders only, to keep lavapipe's time down).
    let mut r = rng("big");
    run_layer(
        &gpus()[1],
        &mut r,
        case(8, Activation::SimNorm, true, 1, 100_003, true),
    );
    assert_eq!(norm_act::column_chunks(100_003), (256, 392));
}

/// `L = sum dy * y` of the mirror's forward, in f64.
fn mirror_loss(
    cfg: &NormActConfig,
    rows: usize,
    h: &[f64],
    g: &[f64],
    b: &[f64],
    dy: &[f64],
) -> f64 {
    let (y, _) = mirror::forward(cfg, rows, h, g, b);
    y.iter().zip(dy).map(|(y, d)| y * d).sum()
}

fn fd_check(what: &str, analytic: &[f64], f: &mut dyn FnMut(usize, f64) -> f64) {
    let eps = 1e-5;
    let scale = analytic.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, a) in analytic.iter().enumerate() {
        let fd = (f(i, eps) - f(i, -eps)) / (2.0 * eps);
        assert!(
            (fd - a).abs() <= FD_TOL * scale,
            "{what}: element {i}: analytic {a}, finite difference {fd}"
        );
    }
}

#[test]
fn mirror_backward_is_the_gradient_of_the_mirror_forward() {
    use Activation::*;
    let mut r = rng("mirror_fd");
    for (n, act, ln, members, rows) in [
        (16, Mish, true, 2, 3),
        (16, SimNorm, true, 2, 3),
        (24, SimNorm, false, 1, 2),
        (13, Mish, false, 1, 2),
        (13, Identity, true, 2, 2),
        (1, Mish, true, 1, 2),
    ] {
        let cfg = NormActConfig::new(n, act, ln).with_members(members);
        let total = members * rows;
        let mut u =
            |k: usize, s: f64| -> Vec<f64> { (0..k).map(|_| r.random_range(-s..s)).collect() };
        let h: Vec<f64> = u(total * n, 2.0);
        let dy = u(total * n, 1.0);
        let g: Vec<f64> = u(members * n, 0.5).iter().map(|v| 1.0 + v).collect();
        let b = u(members * n, 0.5);
        let (_, st) = mirror::forward(&cfg, rows, &h, &g, &b);
        let grads = mirror::backward(&cfg, rows, &dy, &h, &g, &b, &st);
        let dh = &grads.dh;
        let what = format!("{cfg:?}");
        fd_check(&format!("dh {what}"), dh, &mut |i, e| {
            let mut hp = h.clone();
            hp[i] += e;
            mirror_loss(&cfg, rows, &hp, &g, &b, &dy)
        });
        if let Some((dg, db)) = &grads.ln {
            fd_check(&format!("dgamma {what}"), dg, &mut |i, e| {
                let mut gp = g.clone();
                gp[i] += e;
                mirror_loss(&cfg, rows, &h, &gp, &b, &dy)
            });
            fd_check(&format!("dbeta {what}"), db, &mut |i, e| {
                let mut bp = b.clone();
                bp[i] += e;
                mirror_loss(&cfg, rows, &h, &g, &bp, &dy)
            });
        }
        // The bias of the layer's GEMM (h = x W^T + bias): its gradient is the column sum of dh.
        let db = mirror::column_sum(n, members, rows, dh, None);
        fd_check(&format!("bias {what}"), &db, &mut |i, e| {
            let (m, j) = (i / n, i % n);
            let mut hp = h.clone();
            for row in 0..rows {
                hp[(m * rows + row) * n + j] += e;
            }
            mirror_loss(&cfg, rows, &hp, &g, &b, &dy)
        });
    }
}

#[test]
fn mish_grad_is_the_derivative_of_mish() {
    let eps = 1e-6;
    let mut x = -40.0;
    while x <= 40.0 {
        let fd = (act_mirror::mish(x + eps) - act_mirror::mish(x - eps)) / (2.0 * eps);
        let g = mirror::mish_grad(x);
        assert!(
            (fd - g).abs() <= 1e-8,
            "mish'({x}) = {g}, finite difference {fd}"
        );
        x += 0.0625 + 1e-3;
    }
    // Across the kernel's switch to mish(x) = x at 20.
    for x in [19.999, 20.0, 20.001] {
        assert!((mirror::mish_grad(x) - 1.0).abs() < 1e-7);
    }
}

/// The GPU backward against central differences of the GPU forward, in f32: one forward
/// dispatch evaluates every perturbed copy (rows for h, members for gamma and beta).
#[test]
fn gpu_backward_matches_finite_differences_of_the_gpu_forward() {
    use Activation::*;
    let mut r = rng("gpu_fd");
    let eps = 3e-3f32;
    for gpu in gpus() {
        for (n, act, ln) in [
            (64, Mish, true),
            (64, SimNorm, true),
            (48, Mish, false),
            (40, SimNorm, false),
        ] {
            let cfg1 = NormActConfig::new(n, act, ln);
            let h0 = random_h(&mut r, 1, n);
            let dy = uniform(&mut r, n, 1.0);
            let g0: Vec<f32> = (0..n).map(|_| 1.0 + r.random_range(-0.5f32..0.5)).collect();
            let b0 = uniform(&mut r, n, 0.5);
            let coords: Vec<usize> = (0..8).map(|_| r.random_range(0..n)).collect();
            // Analytic: one row.
            let params = ParamBuf::new(gpu, &mut r, "params", 1, &g0, &b0);
            let grads = ParamBuf::new(gpu, &mut r, "grads", 1, &vec![0.0; n], &vec![0.0; n]);
            let hb = GpuBuffer::from_slice(gpu, "h", &h0).unwrap();
            let dyb = GpuBuffer::from_slice(gpu, "dy", &dy).unwrap();
            let dhb = GpuBuffer::<f32>::new(gpu, "dh", n).unwrap();
            let io = NormActBuffers {
                h: (&hb, 0),
                affine: ln.then(|| params.affine()),
                stats: None,
            };
            // Perturbed: rows h0 +- eps e_j in one member, and members with gamma, beta +- eps.
            let mut hs = Vec::new();
            for &j in &coords {
                for s in [eps, -eps] {
                    let mut h = h0.clone();
                    h[j] += s;
                    hs.extend(h);
                }
            }
            let rows_h = 2 * coords.len();
            let hsb = GpuBuffer::from_slice(gpu, "h perturbed", &hs).unwrap();
            let ysb = GpuBuffer::<f32>::new(gpu, "y perturbed", hs.len()).unwrap();
            let members = 4 * coords.len();
            let (mut gs, mut bs) = (Vec::new(), Vec::new());
            for &j in &coords {
                for (which, s) in [(0, eps), (0, -eps), (1, eps), (1, -eps)] {
                    let (mut g, mut b) = (g0.clone(), b0.clone());
                    if which == 0 {
                        g[j] += s;
                    } else {
                        b[j] += s;
                    }
                    gs.extend(g);
                    bs.extend(b);
                }
            }
            let pm = ParamBuf::new(gpu, &mut r, "params perturbed", 1, &gs, &bs);
            let hm: Vec<f32> = (0..members).flat_map(|_| h0.clone()).collect();
            let hmb = GpuBuffer::from_slice(gpu, "h members", &hm).unwrap();
            let ymb = GpuBuffer::<f32>::new(gpu, "y members", hm.len()).unwrap();

            let mut rec = Recorder::new(gpu);
            norm_act::record_backward(
                &mut rec,
                &cfg1,
                1,
                &io,
                (&dyb, 0),
                (&dhb, 0),
                false,
                ln.then(|| grads.affine()),
                None,
            )
            .unwrap();
            let io_h = NormActBuffers { h: (&hsb, 0), ..io };
            norm_act::record_forward(&mut rec, &cfg1, rows_h, &io_h, (&ysb, 0)).unwrap();
            if ln {
                let io_m = NormActBuffers {
                    h: (&hmb, 0),
                    affine: Some(pm.affine()),
                    stats: None,
                };
                let cfg_m = cfg1.with_members(members);
                norm_act::record_forward(&mut rec, &cfg_m, 1, &io_m, (&ymb, 0)).unwrap();
            }
            let hd = rec.read(&dhb);
            let hg = rec.read(&grads.buf);
            let hy = rec.read(&ysb);
            let hym = rec.read(&ymb);
            let out = rec.finish().unwrap();
            let dh = out.get(&hd).unwrap();
            let gr = out.get(&hg).unwrap();
            let ys = out.get(&hy).unwrap();
            let ym = out.get(&hym).unwrap();
            let loss =
                |y: &[f32]| -> f64 { y.iter().zip(&dy).map(|(y, d)| *y as f64 * *d as f64).sum() };
            let fd = |ys: &[f32], k: usize| {
                (loss(&ys[k * n..(k + 1) * n]) - loss(&ys[(k + 1) * n..(k + 2) * n]))
                    / (2.0 * eps as f64)
            };
            let tag = format!("{cfg1:?} checks={:?}", gpu.shader_checks());
            let scale = dh.iter().fold(1e-3f64, |m, v| m.max(v.abs() as f64));
            for (c, &j) in coords.iter().enumerate() {
                let f = fd(&ys, 2 * c);
                assert!(
                    (f - dh[j] as f64).abs() <= GPU_FD_TOL * scale,
                    "dh {tag} [{j}]: gpu {} fd {f}",
                    dh[j]
                );
            }
            if ln {
                let dg = &gr[grads.gamma..grads.gamma + n];
                let db = &gr[grads.beta..grads.beta + n];
                let sg = dg
                    .iter()
                    .chain(db)
                    .fold(1e-3f64, |m, v| m.max(v.abs() as f64));
                for (c, &j) in coords.iter().enumerate() {
                    let f_g = fd(&ym, 4 * c);
                    let f_b = fd(&ym, 4 * c + 2);
                    assert!(
                        (f_g - dg[j] as f64).abs() <= GPU_FD_TOL * sg,
                        "dgamma {tag} [{j}]: gpu {} fd {f_g}",
                        dg[j]
                    );
                    assert!(
                        (f_b - db[j] as f64).abs() <= GPU_FD_TOL * sg,
                        "dbeta {tag} [{j}]: gpu {} fd {f_b}",
                        db[j]
                    );
                }
            }
        }
    }
}

#[test]
fn two_dimensional_dispatch_past_the_workgroup_limit() {
    use Activation::*;
    let mut r = rng("grid");
    // At most 7 x 7 workgroups: 45 rows of 448 take 45 row workgroups (7 column tiles), 300
    // rows of 24 take 19 workgroups of 16 rows and a two-pass column sum.
    for gpu in small_grid_gpus(7) {
        run_layer(&gpu, &mut r, case(448, Mish, true, 1, 45, false));
        run_layer(&gpu, &mut r, case(24, SimNorm, true, 1, 300, true));
        // Past 7 x 7: an error, not a truncated dispatch.
        let cfg = NormActConfig::new(512, Mish, false);
        let h = GpuBuffer::<f32>::new(&gpu, "h", 50 * 512).unwrap();
        let y = GpuBuffer::<f32>::new(&gpu, "y", 50 * 512).unwrap();
        let io = NormActBuffers {
            h: (&h, 0),
            affine: None,
            stats: None,
        };
        let mut rec = Recorder::new(&gpu);
        let e = norm_act::record_forward(&mut rec, &cfg, 50, &io, (&y, 0)).unwrap_err();
        assert!(matches!(e, Error::Limit(_)), "{e:?}");
        // 8 column tiles of 64 in one dimension.
        let col = ColumnSumConfig::new(512, 1, true);
        let out = GpuBuffer::<f32>::new(&gpu, "out", 512).unwrap();
        let e = norm_act::record_column_sum(&mut rec, &col, 50, (&h, 0), None, (&out, 0), None)
            .unwrap_err();
        assert!(matches!(e, Error::Limit(_)), "{e:?}");
    }
}

#[test]
fn bad_requests_are_errors() {
    use Activation::*;
    let gpu = &gpus()[0];
    let (rows, n) = (10, 16);
    let buf = |label: &str, len: usize| GpuBuffer::<f32>::new(gpu, label, len).unwrap();
    let h = buf("h", rows * n);
    let y = buf("y", rows * n);
    let dy = buf("dy", rows * n);
    let dh = buf("dh", rows * n);
    let short = buf("short", rows * n - 1);
    let params = buf("params", 2 * n);
    let grads = buf("grads", 2 * n);
    let grads3 = buf("grads with bias", 3 * n);
    let stats = buf("stats", 2 * rows);
    let aff = |b| Affine::new(b, 0, n);
    let ln = NormActConfig::new(n, Mish, true);
    let plain = NormActConfig::new(n, Mish, false);
    let io = NormActBuffers {
        h: (&h, 0),
        affine: Some(aff(&params)),
        stats: Some((&stats, 0)),
    };
    let io_plain = NormActBuffers {
        h: (&h, 0),
        affine: None,
        stats: None,
    };
    // Populations: members that do not split into the agents, agents' LayerNorm parameters
    // closer than an agent's members, and column sums whose agents' outputs would overlap.
    let mut rec = Recorder::new(gpu);
    let split = ln.with_members(2).with_agents(3);
    let e = norm_act::record_forward(&mut rec, &split, 5, &io, (&y, 0)).unwrap_err();
    assert!(e.to_string().contains("agents"), "{e}");
    let two = ln.with_members(2).with_agents(2);
    let big = buf("big params", 8 * n);
    let close = NormActBuffers {
        affine: Some(Affine {
            agent_stride: n - 1,
            ..Affine::new(&big, 0, 4 * n)
        }),
        stats: None,
        ..io
    };
    let e = norm_act::record_forward(&mut rec, &two, 5, &close, (&y, 0)).unwrap_err();
    assert!(e.to_string().contains("agent stride"), "{e}");
    let col = ColumnSumConfig {
        agents: 2,
        agent_stride: n - 1,
        ..ColumnSumConfig::new(n, 2, true)
    };
    let e =
        norm_act::record_column_sum(&mut rec, &col, 5, (&h, 0), None, (&big, 0), None).unwrap_err();
    assert!(e.to_string().contains("agent stride"), "{e}");
    drop(rec);
    let mut rec = Recorder::new(gpu);
    let kind = |e: Error| -> &'static str {
        match e {
            Error::InvalidArgument(_) => "arg",
            Error::Shape(_) => "shape",
            Error::Limit(_) => "limit",
            _ => panic!("unexpected {e:?}"),
        }
    };
    // Configurations.
    for cfg in [
        NormActConfig::new(0, Mish, false),
        NormActConfig::new(12, SimNorm, false),
        NormActConfig::new(16, Mish, false).with_members(0),
    ] {
        let e = norm_act::record_forward(&mut rec, &cfg, rows, &io_plain, (&y, 0)).unwrap_err();
        assert_eq!(kind(e), "arg");
    }
    // LayerNorm without its parameters, parameters or statistics without LayerNorm.
    let e = norm_act::record_forward(&mut rec, &ln, rows, &io_plain, (&y, 0)).unwrap_err();
    assert_eq!(kind(e), "arg");
    let e = norm_act::record_forward(&mut rec, &plain, rows, &io, (&y, 0)).unwrap_err();
    assert_eq!(kind(e), "arg");
    let e = norm_act::record_backward(
        &mut rec,
        &plain,
        rows,
        &io_plain,
        (&dy, 0),
        (&dh, 0),
        false,
        Some(aff(&grads)),
        None,
    )
    .unwrap_err();
    assert_eq!(kind(e), "arg");
    // Short buffers and offsets that push the end out.
    let e = norm_act::record_forward(&mut rec, &ln, rows, &io, (&short, 0)).unwrap_err();
    assert!(e.to_string().contains("short"), "{e}");
    for (io_bad, yb) in [
        (NormActBuffers { h: (&h, 1), ..io }, (&y, 0)),
        (
            NormActBuffers {
                stats: Some((&stats, 1)),
                ..io
            },
            (&y, 0),
        ),
        (
            NormActBuffers {
                affine: Some(Affine::new(&params, 0, n + 1)),
                ..io
            },
            (&y, 0),
        ),
        (io, (&y, 1)),
    ] {
        let e = norm_act::record_forward(&mut rec, &ln, rows, &io_bad, yb).unwrap_err();
        assert_eq!(kind(e), "shape");
    }
    let e = norm_act::record_backward(
        &mut rec,
        &ln,
        rows,
        &io,
        (&short, 0),
        (&dh, 0),
        false,
        None,
        None,
    )
    .unwrap_err();
    assert_eq!(kind(e), "shape");
    let e = norm_act::record_backward(
        &mut rec,
        &ln,
        rows,
        &io,
        (&dy, 0),
        (&dh, 0),
        false,
        Some(Affine::new(&grads, n + 1, 0)),
        None,
    )
    .unwrap_err();
    assert_eq!(kind(e), "shape");
    // Aliasing: one buffer read and written, two written views that overlap.
    let e = norm_act::record_forward(&mut rec, &plain, rows, &io_plain, (&h, 0)).unwrap_err();
    assert_eq!(kind(e), "arg");
    let e = norm_act::record_backward(
        &mut rec,
        &ln,
        rows,
        &io,
        (&dy, 0),
        (&dy, 0),
        false,
        None,
        None,
    )
    .unwrap_err();
    assert_eq!(kind(e), "arg");
    let e = norm_act::record_backward(
        &mut rec,
        &ln,
        rows,
        &io,
        (&dy, 0),
        (&dh, 0),
        false,
        Some(aff(&params)),
        None,
    )
    .unwrap_err();
    assert_eq!(kind(e), "arg");
    let big = buf("y and stats", rows * n + 2 * rows);
    let io_overlap = NormActBuffers {
        stats: Some((&big, rows * n - 1)),
        ..io
    };
    let e = norm_act::record_forward(&mut rec, &ln, rows, &io_overlap, (&big, 0)).unwrap_err();
    assert_eq!(kind(e), "arg");
    // Column sums: short output, scratch too small or shared with the output.
    let col = ColumnSumConfig::new(n, 1, true);
    let many = 300;
    let a = buf("a", many * n);
    let e = norm_act::record_column_sum(&mut rec, &col, many, (&a, 0), None, (&grads, n + 1), None)
        .unwrap_err();
    assert_eq!(kind(e), "shape");
    let need = norm_act::scratch_len(n, 1, many, 1);
    assert!(need > 0);
    let small = buf("small scratch", need - 1);
    let e = norm_act::record_column_sum(
        &mut rec,
        &col,
        many,
        (&a, 0),
        None,
        (&grads, 0),
        Some(&small),
    )
    .unwrap_err();
    assert_eq!(kind(e), "shape");
    // The same for the LayerNorm gradients, before the row kernel is recorded.
    let (hm, dym, dhm) = (
        buf("h many", many * n),
        buf("dy many", many * n),
        buf("dh many", many * n),
    );
    let stm = buf("stats many", 2 * many);
    let io_many = NormActBuffers {
        h: (&hm, 0),
        affine: Some(aff(&params)),
        stats: Some((&stm, 0)),
    };
    // One element short for dgamma and dbeta; with the bias gradient, a scratch for those two
    // is short.
    let need2 = norm_act::scratch_len(n, 1, many, 2);
    for (g, len) in [
        (aff(&grads), need2 - 1),
        (Affine::new(&grads3, 0, n).with_bias(2 * n), need2),
    ] {
        let small = buf("small scratch", len);
        let e = norm_act::record_backward(
            &mut rec,
            &ln,
            many,
            &io_many,
            (&dym, 0),
            (&dhm, 0),
            false,
            Some(g),
            Some(&small),
        )
        .unwrap_err();
        assert_eq!(kind(e), "shape");
    }
    // The bias gradient: not with accumulated dh, not on the parameters, inside the gradient
    // buffer, not over dgamma or dbeta.
    for (accumulate, io_b, g, want) in [
        (true, io, Affine::new(&grads3, 0, n).with_bias(2 * n), "arg"),
        (
            false,
            NormActBuffers {
                affine: Some(aff(&params).with_bias(0)),
                ..io
            },
            aff(&grads3).with_bias(2 * n),
            "arg",
        ),
        (
            false,
            io,
            Affine::new(&grads3, 0, n).with_bias(2 * n + 1),
            "shape",
        ),
        (
            false,
            io,
            Affine::new(&grads3, 0, n).with_bias(n / 2),
            "arg",
        ),
    ] {
        let e = norm_act::record_backward(
            &mut rec,
            &ln,
            rows,
            &io_b,
            (&dy, 0),
            (&dh, 0),
            accumulate,
            Some(g),
            None,
        )
        .unwrap_err();
        assert_eq!(kind(e), want, "bias case accumulate={accumulate}");
    }
    let shared = buf("shared", need + n);
    let e = norm_act::record_column_sum(
        &mut rec,
        &col,
        many,
        (&a, 0),
        None,
        (&shared, need),
        Some(&shared),
    )
    .unwrap_err();
    assert_eq!(kind(e), "arg");
    // Column tiles the shader cannot run: more than 256 threads, lanes not a power of two,
    // no columns; for the column sum and, before its row kernel, the LayerNorm gradients.
    for tile in [
        ColumnTile { cols: 64, lanes: 8 },
        ColumnTile { cols: 16, lanes: 3 },
        ColumnTile { cols: 0, lanes: 4 },
    ] {
        let cfg = ColumnSumConfig {
            tile: Some(tile),
            ..col
        };
        let e = norm_act::record_column_sum(&mut rec, &cfg, many, (&a, 0), None, (&grads, 0), None)
            .unwrap_err();
        assert_eq!(kind(e), "arg", "{tile:?}");
        let e = norm_act::record_backward(
            &mut rec,
            &ln.with_column_tile(tile),
            rows,
            &io,
            (&dy, 0),
            (&dh, 0),
            false,
            Some(aff(&grads)),
            None,
        )
        .unwrap_err();
        assert_eq!(kind(e), "arg", "{tile:?}");
    }
    assert_eq!(rec.dispatches(), 0);
    // Zero rows record nothing (adding nothing) and the good requests record.
    norm_act::record_forward(&mut rec, &ln, 0, &io, (&short, 0)).unwrap();
    norm_act::record_column_sum(&mut rec, &col, 0, (&a, 0), None, (&grads, 0), None).unwrap();
    assert_eq!(rec.dispatches(), 0);
    norm_act::record_forward(&mut rec, &ln, rows, &io, (&y, 0)).unwrap();
    assert_eq!(rec.dispatches(), 1);
    rec.submit().unwrap();
}

#[test]
fn every_pipeline_compiles_with_naga() {
    let mut count = 0;
    for n in [1, 8, 37, 64, 512, 2048] {
        for act in Activation::ALL {
            if act == Activation::SimNorm && n % 8 != 0 {
                continue;
            }
            for ln in [false, true] {
                let cfg = NormActConfig::new(n, act, ln);
                let mut ops = vec![];
                for b in [false, true] {
                    ops.push(NormActOp::Forward { stats: b && ln });
                    for tile in [ColumnTile::WIDE, ColumnTile::NARROW] {
                        for bias in [false, true] {
                            ops.push(NormActOp::ParamGrads {
                                direct: b,
                                bias,
                                tile,
                            });
                        }
                        ops.push(NormActOp::ColumnSum {
                            product: b,
                            add: ln,
                            tile,
                        });
                    }
                    for quantities in 1..=3 {
                        ops.push(NormActOp::Finish { quantities, add: b });
                    }
                    for rc in [false, true] {
                        ops.push(NormActOp::Backward {
                            accumulate: b,
                            recompute: rc && ln,
                            store: rc && ln && b,
                        });
                    }
                }
                for op in ops {
                    let (spec, header, ov) = norm_act::pipeline_constants(&cfg, op);
                    common::compile_spirv(spec.shader, spec.entry, &header, &ov);
                    count += 1;
                }
            }
        }
    }
    assert!(count > 300);
}
