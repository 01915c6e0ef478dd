//! The PO-MPC policy-update row kernels (`sample`, `policy_loss` and its divergence pass,
//! `prior_fit` and its divergence pass) against their f64 mirror on fresh random inputs with
//! poisoned outputs, with shader checks on and off: both parameterisations, every KL form and
//! prior input, both entropy forms, the Q and LL terms on and off, the TD-M(PC)² gate on and
//! off, scales given or not, gradients written, added or skipped, losses written or added,
//! divergence rows written or not, rows at offsets and strides (elements between and around
//! them must not change), one-pass and two-pass reductions, the 2-D grid, zero rows and bad
//! requests. The mirror's gradients are checked against central finite differences of the
//! mirror's loss (f64; the Q term through a synthetic differentiable q(a) whose gradient is the
//! `dq` input), the GPU gradients against finite differences of the GPU loss (f32), the closed
//! form KL against known values and a quadrature of `E_p[log p - log q]`, the single-sample
//! estimate's expectation against the closed form, and each preset's per-row loss against a
//! hand computation.
//!
//! Inputs stay away from the loss's kinks and its pole, where a finite difference or an f32
//! rounding flips a branch: the clamp `|x| = 1` (BMPC head) and the single-sample estimate's
//! `|x| = u_max` (resampled within 1e-3), and `L = -1e-8` in the scaled entropy (rows with
//! `|L| < 0.05` resampled).
//!
//! Tolerances (worst measured error / tolerance over 10 runs with fresh seeds, both shader
//! modes, in brackets):
//! * Loss slots: `|gpu - ref| <= 4e-6 * sum_r |w_r| M_r` (+ `1e-7 |initial|` when adding, which
//!   bounds f32's rounding of the sum, 2^-24 of it), with `M_r` the sum of the magnitudes of
//!   what the row's term adds up ([`magnitudes`]: every difference counted as the sum of its
//!   parts' magnitudes, plus the f32 error that `log_std` (a few ulps of the range's end) and
//!   `x = mu + sig eps` carry into the terms): each term sums `~2A` f32 values per row over `R`
//!   rows, a few ulps of `M` [0.28].
//! * Divergence rows: the same, per row [0.28].
//! * Gradient elements: `|gpu - ref| <= 3e-5 * G` (+ `1e-7 |initial|` when adding) with `G` the
//!   mirror's `grad_mag`: the sum of the magnitudes of the element's summands, those through
//!   `1 - tanh(x)^2 ~ 4 e^(-2|x|)` (the squash correction, `da/dx`) scaled by
//!   `1 + 2 (|mu| + sig |eps| (1 + |log_std| + range))` since they carry twice the absolute
//!   error of x [0.31 written; added 0.6, the addition's own rounding, of the earlier 1e-5
//!   bound; one seed in CI reached 1.05 of it, a single-sample KL gradient of -479 off by
//!   1.8e-5 relative (its (x - mu_p) / sig_p^2 terms cancel), hence 3e-5].
//! * Actions: `1e-5 * max(1, sig |eps| (1 - a^2) (1 + |log_std|))`, as tests/policy.rs [0.11].
//! * Results under f32's normal range get `1e-37` absolute slack (rounding is absolute there and
//!   drivers may flush); the random row weights keep `rho^t` normal.
//! * Mirror against finite differences (f64, step `1e-5 (1 + |h|)`): `1e-6 * max(1, max |grad|)`
//!   [7e-9 measured].
//! * GPU against finite differences of the GPU loss (f32, step 1e-3, log-std in [-2, 0]):
//!   `5e-3 * max(max |grad|, 0.1)`: the f32 total of 5 rows carries ~1e-7 of its magnitude
//!   (~10), over the step ~1e-3 absolute; truncation `step^2 / 6 |f'''|` is below 1e-5
//!   [6e-4 relative measured].
//! * Hand-computed presets: mirror `1e-12` relative, GPU `2e-6` relative to the terms'
//!   magnitude [1.7e-7 measured].
//!
//! Lavapipe, 2 cores: the whole file runs in about 9 s (release).

mod common;

use common::{POISON, gpus, rng};
use pompc::gpu::LimitsRequest;
use pompc::gpu::shader::{self, Header};
use pompc::kernels::loss::{GradOut, LossOut, RowWeights};
use pompc::kernels::policy_loss::{
    self as pl, DimReduce, EntropyForm, KlForm, KlTerm, LlTerm, Param, PolicyHead, PolicyInputs,
    PolicyLossConfig, PriorFitConfig, PriorFitInputs, PriorInput, QInput, Rows, Scalar,
};
use pompc::kernels::two_hot::RowLayout;
use pompc::reference::policy_loss::{self as mirror, HALF_LOG_2PI};
use pompc::{Error, Gpu, GpuBuffer, GpuOptions, Recorder};
use rand::Rng;
use std::cell::RefCell;

const LOSS_TOL: f64 = 4e-6;
/// Gradients against their terms' magnitude: 1e-4, since seed 2159079000178036220 (A = 38,
/// scaled entropy, a row whose log-prob nears 0, where the scale's division amplifies f32
/// rounding) gave 5.4e-5 with this session's shaders and with 47500cf's alike; 3e-5 before.
const GRAD_TOL: f64 = 1e-4;
const ACTION_TOL: f64 = 1e-5;
const FD_TOL: f64 = 1e-6;
const HAND_TOL: f64 = 2e-6;
/// Absolute slack for results under f32's normal range (row weights rho^t reach them), where
/// rounding is absolute and some drivers flush to zero.
const SUBNORMAL: f64 = 1e-37;
const GPU_FD_TOL: f64 = 5e-3;

thread_local! {
    /// Largest error / tolerance ratios seen: loss, divergence, gradient written, action,
    /// gradient added.
    static WORST: RefCell<[f64; 5]> = const { RefCell::new([0.0; 5]) };
}

fn note(k: usize, ratio: f64) {
    WORST.with(|w| {
        let mut w = w.borrow_mut();
        w[k] = w[k].max(ratio);
    });
}

fn report(tag: &str) {
    WORST.with(|w| {
        let w = w.borrow();
        eprintln!(
            "{tag}: worst error / tolerance: loss {:.3}, divergence {:.3}, gradient {:.3} \
             (added {:.3}), action {:.3}",
            w[0], w[1], w[2], w[4], w[3]
        );
    });
}

fn poison() -> f32 {
    f32::from_bits(POISON)
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Standard normals (Box-Muller).
fn normals(r: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| normal(r)).collect()
}

fn normal(r: &mut impl Rng) -> f32 {
    let u: f64 = 1.0 - r.random::<f64>();
    let v: f64 = r.random();
    ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
}

fn unif(r: &mut impl Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| r.random_range(lo..hi)).collect()
}

/// A random layout for `rows` rows of `width`: offset 0..20, stride width + 0..3.
fn random_layout(r: &mut impl Rng, rows: usize, width: usize) -> (RowLayout, usize) {
    let at = RowLayout {
        offset: r.random_range(0..20),
        stride: width + r.random_range(0..3),
    };
    let len = at.offset + rows.saturating_sub(1) * at.stride + width + r.random_range(0..5);
    (at, len)
}

/// `rows` rows of `width` (flat) at `at` inside `len` elements of `fill`.
fn place(flat: &[f32], width: usize, at: RowLayout, len: usize, fill: f32) -> Vec<f32> {
    let mut buf = vec![fill; len];
    for (i, row) in flat.chunks(width).enumerate() {
        let s = at.offset + i * at.stride;
        buf[s..s + width].copy_from_slice(row);
    }
    buf
}

/// (row, column) of element `i` if it is in one of the rows.
fn in_rows(i: usize, at: RowLayout, rows: usize, width: usize) -> Option<(usize, usize)> {
    if i < at.offset {
        return None;
    }
    let d = i - at.offset;
    let (row, col) = (d / at.stride, d % at.stride);
    (row < rows && col < width).then_some((row, col))
}

/// The inputs of one policy-loss case (logical arrays).
#[derive(Clone, Debug)]
struct Data {
    rows: usize,
    h: Vec<f32>,
    eps: Vec<f32>,
    q: Vec<f32>,
    dq: Vec<f32>,
    prior: Vec<f32>,
    planner: Vec<f32>,
    s_q: f32,
    s_kl: f32,
}

/// Per-row `L` (squashed log-prob) of the mirror.
fn row_l(head: &PolicyHead, h: &[f64], e: &[f64]) -> f64 {
    let a = head.action_dim;
    let els: Vec<_> = (0..a).map(|i| mirror::elem(head, h, e, i)).collect();
    els.iter().map(|e| e.s - e.sq).sum::<f64>() - a as f64 * HALF_LOG_2PI
}

/// Resample noise away from the kinks and the scaled entropy's pole (see the module docs).
fn fix_noise(r: &mut impl Rng, cfg: &PolicyLossConfig, rows: usize, h: &[f32], eps: &mut [f32]) {
    let a = cfg.head.action_dim;
    let um = cfg
        .kl
        .filter(|k| k.form == KlForm::SingleSample)
        .map(|k| mirror::u_max(k.squash_clip));
    for row in 0..rows {
        let h64 = f64s(&h[row * 2 * a..(row + 1) * 2 * a]);
        for _ in 0..1000 {
            for i in 0..a {
                for _ in 0..1000 {
                    let e64 = f64s(&eps[row * a..(row + 1) * a]);
                    let x = mirror::elem(&cfg.head, &h64, &e64, i).x;
                    let near_clamp =
                        cfg.head.param == Param::TanhMeanClamp && (x.abs() - 1.0).abs() < 1e-3;
                    let near_u = um.is_some_and(|u| (x.abs() - u).abs() < 1e-3);
                    if !(near_clamp || near_u) {
                        break;
                    }
                    eps[row * a + i] = normal(r);
                }
            }
            let e64 = f64s(&eps[row * a..(row + 1) * a]);
            if row_l(&cfg.head, &h64, &e64).abs() >= 0.05 {
                break;
            }
            for v in &mut eps[row * a..(row + 1) * a] {
                *v = normal(r);
            }
        }
    }
}

/// Random inputs: raw means in +-1.5, raw log-stds in +-1.5, standard normal noise, Q values
/// in +-5 and gradients in +-2, prior and planner means in +-1 with stds in [-0.2, 1.5)
/// (some under the floors; a network prior's raw output in +-1.5), scales in [0.5, 4).
fn random_data(r: &mut impl Rng, cfg: &PolicyLossConfig, rows: usize) -> Data {
    let a = cfg.head.action_dim;
    let h = unif(r, rows * 2 * a, -1.5, 1.5);
    let mut eps = normals(r, rows * a);
    fix_noise(r, cfg, rows, &h, &mut eps);
    let gauss_rows = |r: &mut dyn rand::RngCore| -> Vec<f32> {
        let mut v = Vec::with_capacity(rows * 2 * a);
        for _ in 0..rows {
            v.extend((0..a).map(|_| r.random_range(-1.0f32..1.0)));
            v.extend((0..a).map(|_| r.random_range(-0.2f32..1.5)));
        }
        v
    };
    let prior = match cfg.kl.map(|k| k.prior) {
        Some(PriorInput::Network { .. }) => unif(r, rows * 2 * a, -1.5, 1.5),
        _ => gauss_rows(r),
    };
    Data {
        rows,
        h,
        eps,
        q: unif(r, rows, -5.0, 5.0),
        dq: unif(r, rows * a, -2.0, 2.0),
        prior,
        planner: gauss_rows(r),
        s_q: r.random_range(0.5..4.0),
        s_kl: r.random_range(0.5..3.0),
    }
}

/// What the kernel is given beyond h and eps.
#[derive(Clone, Copy, Debug)]
struct Given {
    q: bool,
    s_q: bool,
    s_kl: bool,
}

/// The mirror on `d` (scales of 1 where not given).
fn mirror_of(cfg: &PolicyLossConfig, d: &Data, g: Given) -> mirror::PolicyLossOut {
    let (h, eps, q, dq) = (f64s(&d.h), f64s(&d.eps), f64s(&d.q), f64s(&d.dq));
    let (prior, planner) = (f64s(&d.prior), f64s(&d.planner));
    let data = mirror::PolicyData {
        h: &h,
        eps: &eps,
        q: g.q.then_some((&q[..], &dq[..])),
        prior: cfg.kl.is_some().then_some(&prior[..]),
        planner: cfg.ll.is_some().then_some(&planner[..]),
        s_q: if g.s_q { d.s_q as f64 } else { 1.0 },
        s_kl: if g.s_kl { d.s_kl as f64 } else { 1.0 },
    };
    mirror::policy_loss(cfg, d.rows, &data)
}

/// Per row: the magnitudes of what each term (Q, entropy, KL, LL) adds up, and of `D_r`.
fn magnitudes(cfg: &PolicyLossConfig, d: &Data, g: Given) -> Vec<[f64; 5]> {
    let a = cfg.head.action_dim;
    let af = a as f64;
    let s_q = if g.s_q { d.s_q as f64 } else { 1.0 };
    let s_kl = if g.s_kl { d.s_kl as f64 } else { 1.0 };
    let range = (cfg.head.log_std_min.abs()).max(cfg.head.log_std_max.abs()) as f64;
    (0..d.rows)
        .map(|row| {
            let h = f64s(&d.h[row * 2 * a..(row + 1) * 2 * a]);
            let e = f64s(&d.eps[row * a..(row + 1) * a]);
            let els: Vec<_> = (0..a).map(|i| mirror::elem(&cfg.head, &h, &e, i)).collect();
            let mq = if g.q {
                (cfg.c_q as f64 * d.q[row] as f64 / s_q).abs()
            } else {
                0.0
            };
            // log_std carries a few ulps of the range; x = mu + sig eps a few ulps of
            // |mu| + sig |eps| (1 + |log_std|), moving the squash correction by k times that.
            let dim = |el: &mirror::Elem| {
                0.5 * el.e * el.e
                    + el.hd.ls.abs()
                    + range
                    + el.sq.abs()
                    + el.k.abs() * (el.hd.mu.abs() + el.sig * el.e.abs() * (1.0 + el.hd.ls.abs()))
            };
            let mh = (cfg.alpha as f64).abs()
                * af
                * (els.iter().map(dim).sum::<f64>() + af * HALF_LOG_2PI);
            let (mut mk, mut md) = (0.0, 0.0);
            if let Some(kl) = &cfg.kl {
                let pr = f64s(&d.prior[row * 2 * a..(row + 1) * 2 * a]);
                let f = match kl.reduce {
                    DimReduce::Mean => 1.0 / af,
                    DimReduce::Sum => 1.0,
                };
                let sum: f64 = els
                    .iter()
                    .enumerate()
                    .map(|(i, el)| {
                        let p = mirror::prior_gauss(kl, cfg.head.param, &pr, i);
                        let prior_range = match kl.prior {
                            PriorInput::Network {
                                log_std_min,
                                log_std_max,
                            } => log_std_min.abs().max(log_std_max.abs()) as f64,
                            PriorInput::Gaussian => 0.0,
                        };
                        let base = range + prior_range;
                        match kl.form {
                            KlForm::Reverse => {
                                let x = p.ls - el.hd.ls;
                                let rr = (el.hd.mu - p.mu) / p.sig;
                                (x.abs() + base) * (1.0 + (-2.0 * x).exp()) + 0.5 * rr * rr + 1.0
                            }
                            KlForm::Forward => {
                                let y = el.hd.ls - p.ls;
                                let rr = (el.hd.mu - p.mu) / el.sig;
                                (y.abs() + base) * (1.0 + (-2.0 * y).exp())
                                    + (0.5 + base) * rr * rr
                                    + 1.0
                            }
                            KlForm::SingleSample => {
                                let z = (el.x - p.mu) / p.sig;
                                dim(el)
                                    + p.ls.abs()
                                    + prior_range
                                    + (0.5 + base) * z * z
                                    + z.abs() * el.sig * el.e.abs() / p.sig
                            }
                        }
                    })
                    .sum();
                md = f * sum;
                mk = (kl.coef as f64).abs() * f * sum / s_kl;
            }
            let mut ml = 0.0;
            if let Some(ll) = &cfg.ll
                && s_q > ll.threshold as f64
            {
                let pr = f64s(&d.planner[row * 2 * a..(row + 1) * 2 * a]);
                let sum: f64 = els
                    .iter()
                    .enumerate()
                    .map(|(i, el)| {
                        let gg = mirror::gauss_row(&pr, i, ll.std_floor as f64);
                        let z = (el.a - gg.mu) / gg.sig;
                        0.5 * z * z + gg.ls.abs() + z.abs() * (1.0 + el.a.abs()) / gg.sig
                    })
                    .sum();
                ml = (ll.coef as f64).abs() / s_q * af * (sum + HALF_LOG_2PI);
            }
            [mq, mh, mk, ml, md]
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum GradMode {
    Skip,
    Write,
    Add,
}

#[derive(Clone, Copy, Debug)]
struct Opts {
    given: Given,
    grad: GradMode,
    write_d: bool,
    loss_add: bool,
    scratch: bool,
    layouts: bool,
}

/// Run the policy loss on the GPU with poisoned outputs at random layouts and compare
/// everything with the mirror.
fn check_policy(gpu: &Gpu, r: &mut impl Rng, cfg: &PolicyLossConfig, d: &Data, o: Opts) {
    let a = cfg.head.action_dim;
    let rows = d.rows;
    let tag = format!(
        "{:?} {:?} kl={:?} ll={} A={a} R={rows} {o:?} checks={:?}",
        cfg.head.param,
        cfg.entropy,
        cfg.kl.map(|k| (k.form, k.prior, k.reduce)),
        cfg.ll.is_some(),
        gpu.shader_checks()
    );
    let mut lay = |w: usize| {
        if o.layouts {
            random_layout(r, rows, w)
        } else {
            (RowLayout::contiguous(w), rows * w)
        }
    };
    let (h_at, h_len) = lay(2 * a);
    let (e_at, e_len) = lay(a);
    let (q_at, q_len) = lay(1);
    let (dq_at, dq_len) = lay(a);
    let (p_at, p_len) = lay(2 * a);
    let (b_at, b_len) = lay(2 * a);
    let (g_at, g_len) = lay(2 * a);
    let (d_at, d_len) = lay(1);
    let mk = |label: &str, v: &[f32]| GpuBuffer::from_slice(gpu, label, v).unwrap();
    let hb = mk("h", &place(&d.h, 2 * a, h_at, h_len, 7.0));
    let eb = mk("eps", &place(&d.eps, a, e_at, e_len, 7.0));
    let qb = mk("q", &place(&d.q, 1, q_at, q_len, 7.0));
    let dqb = mk("dq", &place(&d.dq, a, dq_at, dq_len, 7.0));
    let pb = mk("prior", &place(&d.prior, 2 * a, p_at, p_len, 7.0));
    let bb = mk("planner", &place(&d.planner, 2 * a, b_at, b_len, 7.0));
    let sq_idx = r.random_range(0..3);
    let mut sq_host = vec![100.0f32; 3];
    sq_host[sq_idx] = d.s_q;
    let sqb = mk("s_q", &sq_host);
    let skl_idx = r.random_range(0..2);
    let mut skl_host = vec![100.0f32; 2];
    skl_host[skl_idx] = d.s_kl;
    let sklb = mk("s_kl", &skl_host);
    let g_init = unif(r, rows * 2 * a, -1.0, 1.0);
    let g_host = match o.grad {
        GradMode::Add => place(&g_init, 2 * a, g_at, g_len, poison()),
        _ => vec![poison(); g_len],
    };
    let gb = mk("dh", &g_host);
    let d_host = vec![poison(); d_len];
    let db = mk("divergence", &d_host);
    let slot = r.random_range(0..4);
    let l_init = unif(r, 10, -10.0, 10.0);
    let losses = mk("losses", &l_init);
    let need = pl::policy_loss_scratch_len(cfg, rows);
    let scratch =
        (o.scratch && need > 0).then(|| GpuBuffer::<f32>::new(gpu, "scratch", need + 3).unwrap());

    let inputs = PolicyInputs {
        h: Rows::at(&hb, h_at),
        eps: Rows::at(&eb, e_at),
        q: o.given.q.then_some(QInput {
            values: Rows::at(&qb, q_at),
            grad: Rows::at(&dqb, dq_at),
        }),
        prior: cfg.kl.is_some().then_some(Rows::at(&pb, p_at)),
        planner: cfg.ll.is_some().then_some(Rows::at(&bb, b_at)),
        s_q: o.given.s_q.then_some(Scalar {
            buf: &sqb,
            index: sq_idx,
        }),
        s_kl: o.given.s_kl.then_some(Scalar {
            buf: &sklb,
            index: skl_idx,
        }),
    };
    let grad = (o.grad != GradMode::Skip).then_some(GradOut {
        buf: &gb,
        at: g_at,
        accumulate: o.grad == GradMode::Add,
    });
    let div = o.write_d.then_some(Rows::at(&db, d_at));
    let out = LossOut {
        losses: &losses,
        index: slot,
        accumulate: o.loss_add,
    };
    let mut rec = Recorder::new(gpu);
    pl::record_policy_loss(
        &mut rec,
        cfg,
        rows,
        &inputs,
        grad,
        div,
        out,
        scratch.as_ref(),
    )
    .unwrap();
    let (hl, hg, hd) = (rec.read(&losses), rec.read(&gb), rec.read(&db));
    let res = rec.finish().unwrap();
    let (got_l, got_g, got_d) = (
        res.get(&hl).unwrap(),
        res.get(&hg).unwrap(),
        res.get(&hd).unwrap(),
    );

    let want = mirror_of(cfg, d, o.given);
    let mags = magnitudes(cfg, d, o.given);
    let wsum = |k: usize| -> f64 {
        (0..rows)
            .map(|row| {
                let w = pompc::reference::loss::row_weight(&cfg.weights, row).abs();
                let m = if k == 4 {
                    mags[row][..4].iter().sum::<f64>()
                } else {
                    mags[row][k]
                };
                w * m
            })
            .sum()
    };
    for (i, (&g, &init)) in got_l.iter().zip(&l_init).enumerate() {
        if i < slot || i >= slot + 5 {
            assert_eq!(g.to_bits(), init.to_bits(), "{tag}: loss slot {i} changed");
            continue;
        }
        let k = i - slot;
        let base = if o.loss_add { init as f64 } else { 0.0 };
        let w = base + want.terms[k];
        let tol = LOSS_TOL * wsum(k) + 1e-7 * base.abs() + SUBNORMAL;
        let err = (g as f64 - w).abs();
        note(0, err / tol);
        assert!(
            err <= tol,
            "{tag}: loss term {k}: gpu {g} want {w} (error {err:e} > {tol:e})"
        );
    }
    for (i, &g) in got_g.iter().enumerate() {
        match (o.grad, in_rows(i, g_at, rows, 2 * a)) {
            (GradMode::Skip, _) | (_, None) => assert_eq!(
                g.to_bits(),
                g_host[i].to_bits(),
                "{tag}: gradient element {i} changed"
            ),
            (mode, Some((row, j))) => {
                let init = if mode == GradMode::Add {
                    g_init[row * 2 * a + j] as f64
                } else {
                    0.0
                };
                let e = row * 2 * a + j;
                let w = init + want.grad[e];
                let tol = GRAD_TOL * want.grad_mag[e] + 1e-7 * init.abs() + SUBNORMAL;
                let err = (g as f64 - w).abs();
                if tol > 0.0 {
                    note(if init == 0.0 { 2 } else { 4 }, err / tol);
                }
                assert!(
                    err <= tol,
                    "{tag}: gradient row {row} column {j}: gpu {g} want {w} (error {err:e} > \
                     {tol:e})"
                );
            }
        }
    }
    for (i, &g) in got_d.iter().enumerate() {
        match (o.write_d, in_rows(i, d_at, rows, 1)) {
            (true, Some((row, _))) => {
                let w = want.divergence[row];
                let tol = LOSS_TOL * mags[row][4] + SUBNORMAL;
                let err = (g as f64 - w).abs();
                note(1, err / tol);
                assert!(
                    err <= tol,
                    "{tag}: divergence row {row}: gpu {g} want {w} (error {err:e} > {tol:e})"
                );
            }
            _ => assert_eq!(
                g.to_bits(),
                d_host[i].to_bits(),
                "{tag}: divergence element {i} changed"
            ),
        }
    }
}

fn random_weights(r: &mut impl Rng, rows: usize) -> RowWeights {
    // At most 60 steps: rho^t stays in f32's normal range (training has T' <= 4).
    let per = [1, rows.div_ceil(3).max(1), rows.div_ceil(4).max(1)][r.random_range(0..3)]
        .max(rows.div_ceil(60));
    let rho = [0.5, 0.9, 1.0, 0.0][r.random_range(0..4)];
    RowWeights::new(r.random_range(0.1..2.0) / rows as f32, rho, per)
}

/// A configuration with every runtime value random and the given structure.
fn random_config(
    r: &mut impl Rng,
    head: PolicyHead,
    rows: usize,
    entropy: EntropyForm,
    kl: Option<(KlForm, bool)>,
    ll: bool,
) -> PolicyLossConfig {
    let kl = kl.map(|(form, net)| KlTerm {
        coef: r.random_range(0.1..2.0),
        form,
        reduce: if r.random::<bool>() {
            DimReduce::Mean
        } else {
            DimReduce::Sum
        },
        prior: if net {
            let lo = r.random_range(-6.0f32..-1.0);
            PriorInput::Network {
                log_std_min: lo,
                log_std_max: lo + r.random_range(1.0f32..4.0),
            }
        } else {
            PriorInput::Gaussian
        },
        std_floor: [1e-6, 0.05, 0.2][r.random_range(0..3)],
        squash_clip: [1e-6, 1e-3][r.random_range(0..2)],
    });
    let ll = ll.then(|| LlTerm {
        coef: r.random_range(0.1..2.0),
        std_floor: 0.05,
        threshold: 2.0,
    });
    PolicyLossConfig {
        head,
        weights: random_weights(r, rows),
        c_q: r.random_range(-2.0..2.0),
        alpha: r.random_range(0.0..0.5),
        entropy,
        kl,
        ll,
    }
}

fn heads(a: usize) -> [PolicyHead; 2] {
    [PolicyHead::tdmpc2(a), PolicyHead::bmpc(a)]
}

/// Every KL structure valid for `param`: (form, network prior).
fn kl_structures(param: Param) -> Vec<Option<(KlForm, bool)>> {
    let mut v = vec![None];
    for form in [KlForm::Reverse, KlForm::Forward, KlForm::SingleSample] {
        if form == KlForm::SingleSample && param != Param::Squashed {
            continue;
        }
        v.push(Some((form, false)));
        v.push(Some((form, true)));
    }
    v
}

#[test]
fn policy_loss_against_the_mirror() {
    let mut r = rng("policy_loss");
    let dims = [1, 3, 6, 38];
    let modes = [GradMode::Write, GradMode::Add, GradMode::Skip];
    for gpu in gpus() {
        let mut n = 0usize;
        for param in [Param::Squashed, Param::TanhMeanClamp] {
            for kl in kl_structures(param) {
                for entropy in [EntropyForm::Scaled, EntropyForm::Original] {
                    n += 1;
                    let a = dims[n % 4];
                    let head = heads(a)[(param == Param::TanhMeanClamp) as usize];
                    let rows = [1, 7, 13, 64, 65, 200][r.random_range(0..6)];
                    let ll = !n.is_multiple_of(3);
                    let cfg = random_config(&mut r, head, rows, entropy, kl, ll);
                    let d = random_data(&mut r, &cfg, rows);
                    let o = Opts {
                        given: Given {
                            q: n % 4 != 1,
                            s_q: n % 5 != 2,
                            s_kl: n % 3 != 1,
                        },
                        grad: modes[n % 3],
                        write_d: n.is_multiple_of(2),
                        loss_add: n % 4 >= 2,
                        scratch: !n.is_multiple_of(5),
                        layouts: n % 2 == 1 || n.is_multiple_of(7),
                    };
                    let cfg = PolicyLossConfig {
                        c_q: if o.given.q { cfg.c_q } else { 0.0 },
                        ..cfg
                    };
                    check_policy(gpu, &mut r, &cfg, &d, o);
                }
            }
        }
    }
    report("policy_loss_against_the_mirror");
}

#[test]
fn presets_and_shapes_against_the_mirror() {
    let mut r = rng("presets");
    for gpu in gpus() {
        for (k, &a) in [1usize, 3, 6, 38].iter().enumerate() {
            let rows: usize = [200, 61, 17, 128][k];
            let b = rows.div_ceil(4);
            let w = RowWeights::new(1.0 / rows as f32, 0.5, b);
            let configs = [
                PolicyLossConfig::tdmpc2(a, w),
                PolicyLossConfig::bmpc(a, w),
                PolicyLossConfig::tdmpc_square(a, w),
                PolicyLossConfig::pompc(PolicyHead::tdmpc2(a), 1.0, w),
                PolicyLossConfig::pompc(PolicyHead::bmpc(a), 1.0, w),
            ];
            for (j, cfg) in configs.iter().enumerate() {
                let d = random_data(&mut r, cfg, rows);
                let o = Opts {
                    given: Given {
                        q: cfg.c_q != 0.0,
                        s_q: true,
                        s_kl: true,
                    },
                    grad: [GradMode::Write, GradMode::Add][j % 2],
                    write_d: cfg.kl.is_some(),
                    loss_add: false,
                    scratch: true,
                    layouts: j % 2 == 0,
                };
                check_policy(gpu, &mut r, cfg, &d, o);
            }
        }
    }
    report("presets_and_shapes_against_the_mirror");
}

#[test]
fn the_tdmpc_square_gate() {
    let mut r = rng("gate");
    let a = 6;
    let rows = 20;
    let cfg = PolicyLossConfig::tdmpc_square(a, RowWeights::new(1.0 / rows as f32, 0.5, 5));
    for gpu in gpus() {
        for (s_q, on) in [
            (2.5f32, true),
            (1.5, false),
            (2.0, false),
            (2.0000002, true),
        ] {
            let mut d = random_data(&mut r, &cfg, rows);
            d.s_q = s_q;
            let o = Opts {
                given: Given {
                    q: true,
                    s_q: true,
                    s_kl: false,
                },
                grad: GradMode::Write,
                write_d: false,
                loss_add: false,
                scratch: true,
                layouts: false,
            };
            check_policy(gpu, &mut r, &cfg, &d, o);
            // Off: the LL slot is 0 and the gradient is that of the loss without the term.
            let (terms, grad) = gpu_terms_and_grad(gpu, &cfg, &d);
            let no_ll = PolicyLossConfig { ll: None, ..cfg };
            let (terms0, grad0) = gpu_terms_and_grad(gpu, &no_ll, &d);
            if on {
                assert!(terms[pl::LL_SLOT] != 0.0, "gate on at s_q = {s_q}");
                assert!(
                    grad != grad0,
                    "gate on at s_q = {s_q}: the gradient must change"
                );
            } else {
                // The two configurations are different pipelines: a driver may schedule
                // (and contract into fma) their shared terms differently, so equal up to an
                // ulp or two, as the H100 showed; the LL slot itself must be exactly 0.
                assert_eq!(terms[pl::LL_SLOT], 0.0, "gate off at s_q = {s_q}");
                let close = |x: &[f32], y: &[f32]| {
                    let big = y.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    x.iter()
                        .zip(y)
                        .all(|(a, b)| (a - b).abs() <= 1e-6 * big.max(1e-30))
                };
                assert!(
                    close(&terms[..3], &terms0[..3]),
                    "gate off at s_q = {s_q}: {terms:?} vs {terms0:?}"
                );
                assert!(
                    close(&grad, &grad0),
                    "gate off at s_q = {s_q}: the gradient"
                );
            }
        }
    }
}

/// The five slots and the gradient of one contiguous call (Q and both scales given).
fn gpu_terms_and_grad(gpu: &Gpu, cfg: &PolicyLossConfig, d: &Data) -> (Vec<f32>, Vec<f32>) {
    let a = cfg.head.action_dim;
    let mk = |label: &str, v: &[f32]| GpuBuffer::from_slice(gpu, label, v).unwrap();
    let (hb, eb, qb, dqb) = (
        mk("h", &d.h),
        mk("eps", &d.eps),
        mk("q", &d.q),
        mk("dq", &d.dq),
    );
    let (pb, bb) = (mk("prior", &d.prior), mk("planner", &d.planner));
    let (sqb, sklb) = (mk("s_q", &[d.s_q]), mk("s_kl", &[d.s_kl]));
    let gb = GpuBuffer::<f32>::new(gpu, "dh", d.rows * 2 * a).unwrap();
    let losses = GpuBuffer::<f32>::new(gpu, "losses", 5).unwrap();
    let inputs = PolicyInputs {
        q: Some(QInput {
            values: Rows::new(&qb, 1),
            grad: Rows::new(&dqb, a),
        }),
        prior: cfg.kl.is_some().then_some(Rows::new(&pb, 2 * a)),
        planner: cfg.ll.is_some().then_some(Rows::new(&bb, 2 * a)),
        s_q: Some(Scalar::new(&sqb)),
        s_kl: Some(Scalar::new(&sklb)),
        ..PolicyInputs::new(Rows::new(&hb, 2 * a), Rows::new(&eb, a))
    };
    let mut rec = Recorder::new(gpu);
    let grad = GradOut {
        buf: &gb,
        at: RowLayout::contiguous(2 * a),
        accumulate: false,
    };
    let out = LossOut {
        losses: &losses,
        index: 0,
        accumulate: false,
    };
    pl::record_policy_loss(&mut rec, cfg, d.rows, &inputs, Some(grad), None, out, None).unwrap();
    let (hl, hg) = (rec.read(&losses), rec.read(&gb));
    let res = rec.finish().unwrap();
    (res.get(&hl).unwrap(), res.get(&hg).unwrap())
}

#[test]
fn divergence_passes_match_the_mirror() {
    let mut r = rng("divergence");
    for gpu in gpus() {
        for param in [Param::Squashed, Param::TanhMeanClamp] {
            for kl in kl_structures(param).into_iter().flatten() {
                let a = [1, 3, 6, 38][r.random_range(0..4)];
                let head = heads(a)[(param == Param::TanhMeanClamp) as usize];
                let rows = r.random_range(1..120);
                let cfg = random_config(&mut r, head, rows, EntropyForm::Scaled, Some(kl), true);
                let d = random_data(&mut r, &cfg, rows);
                let given = Given {
                    q: true,
                    s_q: true,
                    s_kl: true,
                };
                let want = mirror_of(&cfg, &d, given);
                let mags = magnitudes(&cfg, &d, given);
                let (d_at, d_len) = random_layout(&mut r, rows, 1);
                let mk = |label: &str, v: &[f32]| GpuBuffer::from_slice(gpu, label, v).unwrap();
                let (hb, eb, pb) = (mk("h", &d.h), mk("eps", &d.eps), mk("prior", &d.prior));
                let db = mk("d", &vec![poison(); d_len]);
                let inputs = PolicyInputs {
                    prior: Some(Rows::new(&pb, 2 * a)),
                    ..PolicyInputs::new(Rows::new(&hb, 2 * a), Rows::new(&eb, a))
                };
                // Planner, Q and scales are not needed by this pass.
                let cfg_div = PolicyLossConfig { ll: None, ..cfg };
                let mut rec = Recorder::new(gpu);
                pl::record_policy_divergence(
                    &mut rec,
                    &cfg_div,
                    rows,
                    &inputs,
                    Rows::at(&db, d_at),
                )
                .unwrap();
                let hd = rec.read(&db);
                let got = rec.finish().unwrap().get(&hd).unwrap();
                for (i, &g) in got.iter().enumerate() {
                    match in_rows(i, d_at, rows, 1) {
                        Some((row, _)) => {
                            let tol = LOSS_TOL * mags[row][4] + SUBNORMAL;
                            let err = (g as f64 - want.divergence[row]).abs();
                            note(1, err / tol);
                            assert!(
                                err <= tol,
                                "{kl:?} {param:?} A={a}: row {row}: gpu {g} want {}",
                                want.divergence[row]
                            );
                        }
                        None => assert!(g.is_nan(), "element {i} changed"),
                    }
                }
            }
        }
    }
    report("divergence_passes_match_the_mirror");
}

#[test]
fn sample_against_the_mirror() {
    let mut r = rng("sample");
    for gpu in gpus() {
        for (k, &a) in [1usize, 3, 6, 38, 5].iter().enumerate() {
            for head in heads(a) {
                let rows = [1, 64, 200, 33, 129][k];
                let h = unif(&mut r, rows * 2 * a, -3.0, 3.0);
                let eps = normals(&mut r, rows * a);
                let (h_at, h_len) = random_layout(&mut r, rows, 2 * a);
                let (e_at, e_len) = random_layout(&mut r, rows, a);
                let (o_at, o_len) = random_layout(&mut r, rows, a);
                let hb =
                    GpuBuffer::from_slice(gpu, "h", &place(&h, 2 * a, h_at, h_len, 9.0)).unwrap();
                let eb =
                    GpuBuffer::from_slice(gpu, "eps", &place(&eps, a, e_at, e_len, 9.0)).unwrap();
                let ob = GpuBuffer::from_slice(gpu, "action", &vec![poison(); o_len]).unwrap();
                let mut rec = Recorder::new(gpu);
                pl::record_sample(
                    &mut rec,
                    &head,
                    rows,
                    Rows::at(&hb, h_at),
                    Rows::at(&eb, e_at),
                    Rows::at(&ob, o_at),
                )
                .unwrap();
                let ho = rec.read(&ob);
                let got = rec.finish().unwrap().get(&ho).unwrap();
                let (h64, e64) = (f64s(&h), f64s(&eps));
                let want = mirror::sample(&head, rows, &h64, &e64);
                for (i, &g) in got.iter().enumerate() {
                    match in_rows(i, o_at, rows, a) {
                        Some((row, j)) => {
                            let el = mirror::elem(
                                &head,
                                &h64[row * 2 * a..(row + 1) * 2 * a],
                                &e64[row * a..(row + 1) * a],
                                j,
                            );
                            let sens = el.sig * el.e.abs() * el.fp * (1.0 + el.hd.ls.abs());
                            let tol = ACTION_TOL * sens.max(1.0);
                            let err = (g as f64 - want[row * a + j]).abs();
                            note(3, err / tol);
                            assert!(
                                err <= tol,
                                "{head:?} row {row} dim {j}: gpu {g} want {}",
                                want[row * a + j]
                            );
                        }
                        None => assert!(g.is_nan(), "{head:?}: element {i} changed"),
                    }
                }
            }
        }
    }
    report("sample_against_the_mirror");
}

// ---- prior fit ----

/// Prior network raw output in +-1.5 (near the identical case for `identical`), planner means
/// in +-1 with stds in [-0.2, 1.5).
fn check_prior_fit(gpu: &Gpu, r: &mut impl Rng, cfg: &PriorFitConfig, rows: usize, o: Opts) {
    let a = cfg.head.action_dim;
    let tag = format!("{cfg:?} R={rows} {o:?} checks={:?}", gpu.shader_checks());
    let out = unif(r, rows * 2 * a, -1.5, 1.5);
    let mut planner = Vec::new();
    for _ in 0..rows {
        planner.extend(unif(r, a, -1.0, 1.0));
        planner.extend(unif(r, a, -0.2, 1.5));
    }
    let s_d: f32 = r.random_range(0.5..3.0);
    let mut lay = |w: usize| {
        if o.layouts {
            random_layout(r, rows, w)
        } else {
            (RowLayout::contiguous(w), rows * w)
        }
    };
    let (o_at, o_len) = lay(2 * a);
    let (b_at, b_len) = lay(2 * a);
    let (g_at, g_len) = lay(2 * a);
    let (d_at, d_len) = lay(1);
    let mk = |label: &str, v: &[f32]| GpuBuffer::from_slice(gpu, label, v).unwrap();
    let ob = mk("prior out", &place(&out, 2 * a, o_at, o_len, 5.0));
    let bb = mk("planner", &place(&planner, 2 * a, b_at, b_len, 5.0));
    let sdb = mk("s_d", &[s_d]);
    let g_init = unif(r, rows * 2 * a, -1.0, 1.0);
    let g_host = match o.grad {
        GradMode::Add => place(&g_init, 2 * a, g_at, g_len, poison()),
        _ => vec![poison(); g_len],
    };
    let gb = mk("dprior", &g_host);
    let db = mk("d", &vec![poison(); d_len]);
    let slot = r.random_range(0..3);
    let l_init = unif(r, 3, -10.0, 10.0);
    let losses = mk("losses", &l_init);
    let need = pl::prior_fit_scratch_len(cfg, rows);
    let scratch = (o.scratch && need > 0).then(|| GpuBuffer::<f32>::new(gpu, "s", need).unwrap());
    let inputs = PriorFitInputs {
        out: Rows::at(&ob, o_at),
        planner: Rows::at(&bb, b_at),
        s_d: o.given.s_kl.then_some(Scalar::new(&sdb)),
    };
    let grad = (o.grad != GradMode::Skip).then_some(GradOut {
        buf: &gb,
        at: g_at,
        accumulate: o.grad == GradMode::Add,
    });
    let lo = LossOut {
        losses: &losses,
        index: slot,
        accumulate: o.loss_add,
    };
    let mut rec = Recorder::new(gpu);
    let div = o.write_d.then_some(Rows::at(&db, d_at));
    pl::record_prior_fit(
        &mut rec,
        cfg,
        rows,
        &inputs,
        grad,
        div,
        lo,
        scratch.as_ref(),
    )
    .unwrap();
    let (hl, hg, hd) = (rec.read(&losses), rec.read(&gb), rec.read(&db));
    let res = rec.finish().unwrap();
    let (got_l, got_g, got_d) = (
        res.get(&hl).unwrap(),
        res.get(&hg).unwrap(),
        res.get(&hd).unwrap(),
    );
    let s_d64 = if o.given.s_kl { s_d as f64 } else { 1.0 };
    let want = mirror::prior_fit(cfg, rows, &f64s(&out), &f64s(&planner), s_d64);
    // Magnitudes as for the policy KL.
    let f = match cfg.reduce {
        DimReduce::Mean => 1.0 / a as f64,
        DimReduce::Sum => 1.0,
    };
    let range = cfg.head.log_std_min.abs().max(cfg.head.log_std_max.abs()) as f64;
    let mags: Vec<f64> = (0..rows)
        .map(|row| {
            let hr = f64s(&out[row * 2 * a..(row + 1) * 2 * a]);
            let br = f64s(&planner[row * 2 * a..(row + 1) * 2 * a]);
            f * (0..a)
                .map(|i| {
                    let hd = mirror::head(
                        cfg.head.param,
                        hr[i],
                        hr[a + i],
                        cfg.head.log_std_min as f64,
                        cfg.head.log_std_max as f64,
                    );
                    let g = mirror::gauss_row(&br, i, cfg.std_floor as f64);
                    let (x, rr) = if cfg.form == KlForm::Forward {
                        (hd.ls - g.ls, (hd.mu - g.mu) / hd.ls.exp())
                    } else {
                        (g.ls - hd.ls, (hd.mu - g.mu) / g.sig)
                    };
                    (x.abs() + range) * (1.0 + (-2.0 * x).exp()) + (0.5 + range) * rr * rr + 1.0
                })
                .sum::<f64>()
        })
        .collect();
    for (i, (&g, &init)) in got_l.iter().zip(&l_init).enumerate() {
        if i != slot {
            assert_eq!(g.to_bits(), init.to_bits(), "{tag}: slot {i} changed");
            continue;
        }
        let base = if o.loss_add { init as f64 } else { 0.0 };
        let m: f64 = (0..rows)
            .map(|row| pompc::reference::loss::row_weight(&cfg.weights, row).abs() * mags[row])
            .sum::<f64>()
            / s_d64;
        let tol = LOSS_TOL * m + 1e-7 * base.abs() + SUBNORMAL;
        let err = (g as f64 - (base + want.loss)).abs();
        note(0, err / tol);
        assert!(err <= tol, "{tag}: loss gpu {g} want {}", base + want.loss);
    }
    for (i, &g) in got_g.iter().enumerate() {
        match (o.grad, in_rows(i, g_at, rows, 2 * a)) {
            (GradMode::Skip, _) | (_, None) => {
                assert_eq!(
                    g.to_bits(),
                    g_host[i].to_bits(),
                    "{tag}: gradient {i} changed"
                )
            }
            (mode, Some((row, j))) => {
                let init = if mode == GradMode::Add {
                    g_init[row * 2 * a + j] as f64
                } else {
                    0.0
                };
                let e = row * 2 * a + j;
                let tol = GRAD_TOL * want.grad_mag[e] + 1e-7 * init.abs() + SUBNORMAL;
                let err = (g as f64 - (init + want.grad[e])).abs();
                if tol > 0.0 {
                    note(if init == 0.0 { 2 } else { 4 }, err / tol);
                }
                assert!(
                    err <= tol,
                    "{tag}: gradient row {row} col {j}: gpu {g} want {}",
                    init + want.grad[e]
                );
            }
        }
    }
    for (i, &g) in got_d.iter().enumerate() {
        match (o.write_d, in_rows(i, d_at, rows, 1)) {
            (true, Some((row, _))) => {
                let tol = LOSS_TOL * mags[row] + SUBNORMAL;
                let err = (g as f64 - want.divergence[row]).abs();
                note(1, err / tol);
                assert!(
                    err <= tol,
                    "{tag}: D row {row}: gpu {g} want {}",
                    want.divergence[row]
                );
            }
            _ => assert!(g.is_nan(), "{tag}: divergence element {i} changed"),
        }
    }
}

#[test]
fn prior_fit_against_the_mirror() {
    let mut r = rng("prior_fit");
    let modes = [GradMode::Write, GradMode::Add, GradMode::Skip];
    for gpu in gpus() {
        let mut n = 0usize;
        for head in [PolicyHead::tdmpc2(1), PolicyHead::bmpc(1)] {
            for form in [KlForm::Reverse, KlForm::Forward] {
                for reduce in [DimReduce::Mean, DimReduce::Sum] {
                    n += 1;
                    let a = [1, 3, 6, 38][n % 4];
                    let rows = [1, 13, 64, 200, 77][n % 5];
                    let cfg = PriorFitConfig {
                        head: PolicyHead {
                            action_dim: a,
                            ..head
                        },
                        form,
                        reduce,
                        std_floor: [1e-6, 0.05][n % 2],
                        weights: random_weights(&mut r, rows),
                    };
                    let o = Opts {
                        given: Given {
                            q: false,
                            s_q: false,
                            s_kl: !n.is_multiple_of(3),
                        },
                        grad: modes[n % 3],
                        write_d: n % 2 == 1,
                        loss_add: n % 4 < 2,
                        scratch: n % 3 != 1,
                        layouts: n.is_multiple_of(2),
                    };
                    check_prior_fit(gpu, &mut r, &cfg, rows, o);
                }
            }
        }
        // The divergence pass.
        let cfg = PriorFitConfig::new(PolicyHead::bmpc(6), RowWeights::uniform(1.0));
        let rows = 30;
        let out = unif(&mut r, rows * 12, -1.5, 1.5);
        let mut planner = Vec::new();
        for _ in 0..rows {
            planner.extend(unif(&mut r, 6, -1.0, 1.0));
            planner.extend(unif(&mut r, 6, 0.05, 1.5));
        }
        let ob = GpuBuffer::from_slice(gpu, "out", &out).unwrap();
        let bb = GpuBuffer::from_slice(gpu, "planner", &planner).unwrap();
        let db = GpuBuffer::from_slice(gpu, "d", &vec![poison(); rows]).unwrap();
        let inputs = PriorFitInputs {
            out: Rows::new(&ob, 12),
            planner: Rows::new(&bb, 12),
            s_d: None,
        };
        let mut rec = Recorder::new(gpu);
        pl::record_prior_divergence(&mut rec, &cfg, rows, &inputs, Rows::new(&db, 1)).unwrap();
        let hd = rec.read(&db);
        let got = rec.finish().unwrap().get(&hd).unwrap();
        let want = mirror::prior_fit(&cfg, rows, &f64s(&out), &f64s(&planner), 1.0);
        for (g, w) in got.iter().zip(&want.divergence) {
            assert!(
                (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "D gpu {g} want {w}"
            );
        }
    }
    report("prior_fit_against_the_mirror");
}

// ---- finite differences ----

/// A synthetic smooth Q of the action: `sum_i c1_i a_i + c2_i a_i^2 + sin(3 a_i) / 2`, and its
/// gradient.
fn synthetic_q(c: &[(f64, f64)], a: &[f64]) -> (f64, Vec<f64>) {
    let q = a
        .iter()
        .zip(c)
        .map(|(x, (c1, c2))| c1 * x + c2 * x * x + 0.5 * (3.0 * x).sin())
        .sum();
    let g = a
        .iter()
        .zip(c)
        .map(|(x, (c1, c2))| c1 + 2.0 * c2 * x + 1.5 * (3.0 * x).cos())
        .collect();
    (q, g)
}

/// The mirror's total loss and gradient at `h`, with q and dq from the synthetic Q at the
/// mirror's actions.
fn mirror_total(cfg: &PolicyLossConfig, d: &Data, h: &[f64], c: &[(f64, f64)]) -> (f64, Vec<f64>) {
    let a = cfg.head.action_dim;
    let eps = f64s(&d.eps);
    let acts = mirror::sample(&cfg.head, d.rows, h, &eps);
    let (mut q, mut dq) = (Vec::new(), Vec::new());
    for row in acts.chunks(a) {
        let (v, g) = synthetic_q(c, row);
        q.push(v);
        dq.extend(g);
    }
    let (prior, planner) = (f64s(&d.prior), f64s(&d.planner));
    let data = mirror::PolicyData {
        h,
        eps: &eps,
        q: Some((&q, &dq)),
        prior: cfg.kl.is_some().then_some(&prior[..]),
        planner: cfg.ll.is_some().then_some(&planner[..]),
        s_q: d.s_q as f64,
        s_kl: d.s_kl as f64,
    };
    let out = mirror::policy_loss(cfg, d.rows, &data);
    (out.terms[4], out.grad)
}

fn fd_check(what: &str, analytic: &[f64], x: &[f64], f: &mut dyn FnMut(&[f64]) -> f64) {
    let scale = analytic.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let mut worst = 0.0f64;
    for (i, a) in analytic.iter().enumerate() {
        let step = 1e-5 * (1.0 + x[i].abs());
        let mut xp = x.to_vec();
        xp[i] += step;
        let mut xm = x.to_vec();
        xm[i] -= step;
        let fd = (f(&xp) - f(&xm)) / (2.0 * step);
        worst = worst.max((fd - a).abs() / scale);
        assert!(
            (fd - a).abs() <= FD_TOL * scale,
            "{what}: element {i}: analytic {a}, finite difference {fd}"
        );
    }
    eprintln!("{what}: worst |fd - analytic| / max(1, max|grad|) = {worst:.2e}");
}

#[test]
fn mirror_gradients_are_the_gradients_of_the_mirror_losses() {
    let mut r = rng("mirror_fd");
    for param in [Param::Squashed, Param::TanhMeanClamp] {
        for kl in kl_structures(param) {
            for entropy in [EntropyForm::Scaled, EntropyForm::Original] {
                for ll in [false, true] {
                    let a = [1, 3, 6][r.random_range(0..3)];
                    let head = heads(a)[(param == Param::TanhMeanClamp) as usize];
                    let rows = 3;
                    let mut cfg = random_config(&mut r, head, rows, entropy, kl, ll);
                    cfg.weights = RowWeights::new(0.7, 0.6, 1);
                    // A floor of 1e-6 under a negative prior std gives KLs of ~1e12, whose
                    // differences f64 cannot resolve at this step.
                    if let Some(k) = &mut cfg.kl {
                        k.std_floor = k.std_floor.max(0.05);
                    }
                    let mut d = random_data(&mut r, &cfg, rows);
                    // The gate on (s_q > 2) so the LL term counts.
                    d.s_q = 2.5;
                    let c: Vec<(f64, f64)> = (0..a)
                        .map(|_| (r.random_range(-1.0..1.0), r.random_range(-1.0..1.0)))
                        .collect();
                    let h = f64s(&d.h);
                    let (_, grad) = mirror_total(&cfg, &d, &h, &c);
                    let what = format!("{param:?} kl={kl:?} {entropy:?} ll={ll} A={a}");
                    fd_check(&what, &grad, &h, &mut |x| mirror_total(&cfg, &d, x, &c).0);
                }
            }
        }
    }
    // The prior fit.
    for head in [PolicyHead::tdmpc2(4), PolicyHead::bmpc(4)] {
        for form in [KlForm::Reverse, KlForm::Forward] {
            for reduce in [DimReduce::Mean, DimReduce::Sum] {
                let cfg = PriorFitConfig {
                    head,
                    form,
                    reduce,
                    std_floor: 0.05,
                    weights: RowWeights::new(0.9, 0.5, 2),
                };
                let rows = 4;
                let out: Vec<f64> = (0..rows * 8).map(|_| r.random_range(-1.5..1.5)).collect();
                let mut planner = Vec::new();
                for _ in 0..rows {
                    planner.extend((0..4).map(|_| r.random_range(-1.0..1.0)));
                    planner.extend((0..4).map(|_| r.random_range(0.1..1.5)));
                }
                let grad = mirror::prior_fit(&cfg, rows, &out, &planner, 1.7).grad;
                let what = format!("prior fit {:?} {form:?} {reduce:?}", head.param);
                fd_check(&what, &grad, &out, &mut |x| {
                    mirror::prior_fit(&cfg, rows, x, &planner, 1.7).loss
                });
            }
        }
    }
}

#[test]
fn gpu_gradients_match_finite_differences_of_the_gpu_loss() {
    let mut r = rng("gpu_fd");
    let (a, rows) = (3, 5);
    let w = RowWeights::new(0.5, 0.7, 2);
    // Moderate heads (log-std in [-2, 0]) so that a step of 1e-3 stays away from the kinks.
    let mut sq = PolicyHead::tdmpc2(a);
    (sq.log_std_min, sq.log_std_max) = (-2.0, 0.0);
    let mut tmc = PolicyHead::bmpc(a);
    (tmc.log_std_min, tmc.log_std_max) = (-2.0, 0.0);
    let ll = Some(LlTerm {
        coef: 0.8,
        std_floor: 0.05,
        threshold: 2.0,
    });
    let configs = [
        PolicyLossConfig {
            alpha: 0.3,
            ll,
            ..PolicyLossConfig::pompc(sq, 0.7, w)
        },
        PolicyLossConfig {
            alpha: 0.3,
            c_q: 0.6,
            ll,
            kl: Some(KlTerm {
                form: KlForm::Forward,
                ..KlTerm::bmpc()
            }),
            head: tmc,
            ..PolicyLossConfig::bmpc(a, w)
        },
        PolicyLossConfig {
            alpha: 0.3,
            head: sq,
            ..PolicyLossConfig::tdmpc_square(a, w)
        },
    ];
    let step = 1e-3f32;
    for gpu in gpus() {
        for cfg in &configs {
            let mut d = random_data(&mut r, cfg, rows);
            d.s_q = 2.5;
            // Keep |x| at least 0.05 from the clamp for +-step on every input.
            for _ in 0..100 {
                let ok = (0..rows).all(|row| {
                    let h = f64s(&d.h[row * 2 * a..(row + 1) * 2 * a]);
                    let e = f64s(&d.eps[row * a..(row + 1) * a]);
                    (0..a).all(|i| (mirror::elem(&cfg.head, &h, &e, i).x.abs() - 1.0).abs() > 0.05)
                });
                if ok || cfg.head.param == Param::Squashed {
                    break;
                }
                d = random_data(&mut r, cfg, rows);
                d.s_q = 2.5;
            }
            let c: Vec<(f64, f64)> = (0..a)
                .map(|_| (r.random_range(-1.0..1.0), r.random_range(-1.0..1.0)))
                .collect();
            let size = rows * 2 * a;
            let coords: Vec<usize> = (0..12).map(|_| r.random_range(0..size)).collect();
            let mut copies = vec![d.h.clone()];
            for &i in &coords {
                for s in [step, -step] {
                    let mut h = d.h.clone();
                    h[i] += s;
                    copies.push(h);
                }
            }
            // Each copy's q and dq at its own (mirror) actions.
            let eps = f64s(&d.eps);
            let n = copies.len();
            let (mut q_all, mut dq_all, mut h_all) = (Vec::new(), Vec::new(), Vec::new());
            for h in &copies {
                let acts = mirror::sample(&cfg.head, rows, &f64s(h), &eps);
                for row in acts.chunks(a) {
                    let (v, g) = synthetic_q(&c, row);
                    q_all.push(v as f32);
                    dq_all.extend(g.iter().map(|&x| x as f32));
                }
                h_all.extend_from_slice(h);
            }
            let mk = |label: &str, v: &[f32]| GpuBuffer::from_slice(gpu, label, v).unwrap();
            let (hb, eb, qb, dqb) = (
                mk("h", &h_all),
                mk("eps", &d.eps),
                mk("q", &q_all),
                mk("dq", &dq_all),
            );
            let (pb, bb, sqb, sklb) = (
                mk("prior", &d.prior),
                mk("planner", &d.planner),
                mk("s_q", &[d.s_q]),
                mk("s_kl", &[d.s_kl]),
            );
            let gb = GpuBuffer::<f32>::new(gpu, "dh", size).unwrap();
            let losses = GpuBuffer::<f32>::new(gpu, "losses", 5 * n).unwrap();
            let mut rec = Recorder::new(gpu);
            for k in 0..n {
                let inputs = PolicyInputs {
                    h: Rows::at(&hb, RowLayout::at(k * size, 2 * a)),
                    eps: Rows::new(&eb, a),
                    q: Some(QInput {
                        values: Rows::at(&qb, RowLayout::at(k * rows, 1)),
                        grad: Rows::at(&dqb, RowLayout::at(k * rows * a, a)),
                    }),
                    prior: cfg.kl.is_some().then_some(Rows::new(&pb, 2 * a)),
                    planner: cfg.ll.is_some().then_some(Rows::new(&bb, 2 * a)),
                    s_q: Some(Scalar::new(&sqb)),
                    s_kl: Some(Scalar::new(&sklb)),
                };
                let grad = (k == 0).then_some(GradOut {
                    buf: &gb,
                    at: RowLayout::contiguous(2 * a),
                    accumulate: false,
                });
                let out = LossOut {
                    losses: &losses,
                    index: 5 * k,
                    accumulate: false,
                };
                pl::record_policy_loss(&mut rec, cfg, rows, &inputs, grad, None, out, None)
                    .unwrap();
            }
            let (hl, hg) = (rec.read(&losses), rec.read(&gb));
            let res = rec.finish().unwrap();
            let (l, g) = (res.get(&hl).unwrap(), res.get(&hg).unwrap());
            let scale = g.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
            let mut worst = 0.0f64;
            for (p, &i) in coords.iter().enumerate() {
                let lp = l[5 * (1 + 2 * p) + 4] as f64;
                let lm = l[5 * (2 + 2 * p) + 4] as f64;
                let fd = (lp - lm) / (2.0 * step as f64);
                let err = (fd - g[i] as f64).abs();
                worst = worst.max(err / scale);
                assert!(
                    err <= GPU_FD_TOL * scale.max(0.1),
                    "{:?} checks={:?}: element {i}: gpu gradient {}, finite difference {fd}",
                    cfg.head.param,
                    gpu.shader_checks(),
                    g[i]
                );
            }
            eprintln!(
                "gpu fd {:?}: worst |fd - gpu| / max|grad| = {worst:.2e} (max|grad| {scale:.3})",
                cfg.head.param
            );
        }
    }
}

// ---- closed forms and hand-computed cases ----

/// `E_p[log p - log q]` of two 1-D Gaussians by Simpson's rule over mu_p +- 12 sig_p.
fn kl_quadrature(mu_p: f64, sp: f64, mu_q: f64, sq: f64) -> f64 {
    let logn = |x: f64, m: f64, s: f64| -0.5 * ((x - m) / s).powi(2) - s.ln() - HALF_LOG_2PI;
    let n = 20_000;
    let (lo, hi) = (mu_p - 12.0 * sp, mu_p + 12.0 * sp);
    let hstep = (hi - lo) / n as f64;
    let f = |x: f64| logn(x, mu_p, sp).exp() * (logn(x, mu_p, sp) - logn(x, mu_q, sq));
    let mut s = f(lo) + f(hi);
    for k in 1..n {
        s += f(lo + k as f64 * hstep) * if k % 2 == 1 { 4.0 } else { 2.0 };
    }
    s * hstep / 3.0
}

#[test]
fn closed_form_kl_known_values_and_quadrature() {
    let mut r = rng("kl");
    // Identical Gaussians: 0, with zero gradient.
    let g = mirror::Gauss {
        mu: 0.3,
        ls: 0.4f64.ln(),
        sig: 0.4,
    };
    for fwd in [false, true] {
        let (d, dmu, dls) = mirror::kl_closed(0.3, 0.4f64.ln(), g, fwd);
        assert!(d.abs() < 1e-15 && dmu.abs() < 1e-15 && dls.abs() < 1e-15);
    }
    // By hand: KL(N(0.5, 0.5) || N(0, 1)) = ln 2 + (0.25 + 0.25) / 2 - 1/2 = ln 2 - 1/4;
    // KL(N(0, 1) || N(0.5, 0.5)) = ln(1/2) + (1 + 0.25) / (2 * 0.25) - 1/2 = 2 - ln 2.
    let ln2 = std::f64::consts::LN_2;
    assert!((mirror::gaussian_kl(0.5, 0.5, 0.0, 1.0) - (ln2 - 0.25)).abs() < 1e-15);
    assert!((mirror::gaussian_kl(0.0, 1.0, 0.5, 0.5) - (2.0 - ln2)).abs() < 1e-15);
    let unit = mirror::Gauss {
        mu: 0.0,
        ls: 0.0,
        sig: 1.0,
    };
    let (d, _, _) = mirror::kl_closed(0.5, 0.5f64.ln(), unit, false);
    assert!((d - (ln2 - 0.25)).abs() < 1e-15);
    let (d, _, _) = mirror::kl_closed(0.5, 0.5f64.ln(), unit, true);
    assert!((d - (2.0 - ln2)).abs() < 1e-15);
    // Quadrature of E_p[log p - log q].
    for _ in 0..20 {
        let (mp, sp) = (r.random_range(-2.0..2.0), r.random_range(0.1..2.0));
        let (mq, sqq) = (r.random_range(-2.0..2.0), r.random_range(0.1..2.0));
        let want = kl_quadrature(mp, sp, mq, sqq);
        let got = mirror::gaussian_kl(mp, sp, mq, sqq);
        assert!(
            (got - want).abs() < 1e-9 * (1.0 + want),
            "KL {got} quadrature {want}"
        );
    }
    // On the GPU through the prior fit: identical Gaussians give 0 (f32: within a few ulps of
    // the terms), the hand-computed pair its value. The BMPC head maps raw (atanh(0.5), s) to
    // mean 0.5 and log-std -3 + 2 (tanh s + 1) = ln 0.5.
    let s_half = (((0.5f64.ln() + 3.0) / 2.0) - 1.0).atanh();
    let m_half = 0.5f64.atanh();
    for gpu in gpus() {
        for (fwd, want) in [(false, ln2 - 0.25), (true, 2.0 - ln2)] {
            let cfg = PriorFitConfig {
                form: if fwd {
                    KlForm::Forward
                } else {
                    KlForm::Reverse
                },
                reduce: DimReduce::Sum,
                ..PriorFitConfig::new(PolicyHead::bmpc(2), RowWeights::uniform(1.0))
            };
            // Row 0: against N(0, 1) (the hand value); row 1: against itself (0).
            let out = [
                m_half, m_half, s_half, s_half, m_half, m_half, s_half, s_half,
            ];
            let out: Vec<f32> = out.iter().map(|&v| v as f32).collect();
            let (mh, sh) = (
                mirror::head(
                    Param::TanhMeanClamp,
                    out[0] as f64,
                    out[2] as f64,
                    -3.0,
                    1.0,
                )
                .mu,
                mirror::head(
                    Param::TanhMeanClamp,
                    out[0] as f64,
                    out[2] as f64,
                    -3.0,
                    1.0,
                )
                .ls
                .exp(),
            );
            let planner = [
                0.0, 0.0, 1.0, 1.0, mh as f32, mh as f32, sh as f32, sh as f32,
            ];
            let ob = GpuBuffer::from_slice(gpu, "out", &out).unwrap();
            let bb = GpuBuffer::from_slice(gpu, "planner", &planner).unwrap();
            let db = GpuBuffer::<f32>::new(gpu, "d", 2).unwrap();
            let losses = GpuBuffer::<f32>::new(gpu, "l", 1).unwrap();
            let inputs = PriorFitInputs {
                out: Rows::new(&ob, 4),
                planner: Rows::new(&bb, 4),
                s_d: None,
            };
            let mut rec = Recorder::new(gpu);
            let lo = LossOut {
                losses: &losses,
                index: 0,
                accumulate: false,
            };
            let div = Some(Rows::new(&db, 1));
            pl::record_prior_fit(&mut rec, &cfg, 2, &inputs, None, div, lo, None).unwrap();
            let hd = rec.read(&db);
            let got = rec.finish().unwrap().get(&hd).unwrap();
            // Two dimensions summed; f32 inputs (0.5 is not exact after the map) cost ~1e-6.
            assert!(
                (got[0] as f64 - 2.0 * want).abs() < 1e-5,
                "fwd={fwd}: {} want {}",
                got[0],
                2.0 * want
            );
            assert!(
                got[1].abs() < 1e-6,
                "fwd={fwd}: identical Gaussians give {}",
                got[1]
            );
        }
    }
}

#[test]
fn single_sample_estimate_is_unbiased_for_the_closed_form() {
    // E_eps[log pi(a) - log pi_p(a)] = KL of the pre-squash Gaussians (KL is invariant under the
    // bijection tanh; the squash corrections cancel): Simpson over eps in +-12 per dimension.
    let kl = KlTerm {
        form: KlForm::SingleSample,
        reduce: DimReduce::Sum,
        ..KlTerm::bmpc()
    };
    let cfg = PolicyLossConfig {
        c_q: 0.0,
        alpha: 0.0,
        kl: Some(kl),
        ..PolicyLossConfig::tdmpc2(1, RowWeights::uniform(1.0))
    };
    let mut r = rng("single_sample");
    for _ in 0..10 {
        let (m, s) = (r.random_range(-1.0..1.0), r.random_range(-1.0..-0.3));
        let prior = [r.random_range(-1.0..1.0), r.random_range(0.2..1.0)];
        let hd = mirror::head(Param::Squashed, m, s, -10.0, 2.0);
        let closed = mirror::gaussian_kl(hd.mu, hd.ls.exp(), prior[0], prior[1]);
        let n = 4000;
        let step = 24.0 / n as f64;
        let mut acc = 0.0;
        for k in 0..=n {
            let e = -12.0 + k as f64 * step;
            let wgt = if k == 0 || k == n {
                1.0
            } else if k % 2 == 1 {
                4.0
            } else {
                2.0
            };
            let data = mirror::PolicyData {
                h: &[m, s],
                eps: &[e],
                q: None,
                prior: Some(&prior),
                planner: None,
                s_q: 1.0,
                s_kl: 1.0,
            };
            let d = mirror::policy_loss(&cfg, 1, &data).divergence[0];
            acc += wgt * d * (-0.5 * e * e - HALF_LOG_2PI).exp();
        }
        let expect = acc * step / 3.0;
        assert!(
            (expect - closed).abs() < 1e-7 * (1.0 + closed),
            "E[single sample] {expect} closed form {closed}"
        );
    }
}

/// Runs one row on both GPUs and the mirror and checks the total against `want` (and the slots
/// against `slots` where given).
fn check_hand(cfg: &PolicyLossConfig, d: &Data, want: [f64; 4], mag: f64, what: &str) {
    let total: f64 = want.iter().sum();
    let given = Given {
        q: cfg.c_q != 0.0,
        s_q: true,
        s_kl: true,
    };
    let m = mirror_of(cfg, d, given);
    for (k, (got, w)) in m.terms.iter().zip(&want).enumerate() {
        assert!(
            (got - w).abs() <= 1e-12 * mag,
            "{what}: mirror term {k} {got} by hand {w}"
        );
    }
    for gpu in gpus() {
        let (terms, _) = gpu_terms_and_grad(gpu, cfg, d);
        for k in 0..4 {
            assert!(
                (terms[k] as f64 - want[k]).abs() <= HAND_TOL * mag,
                "{what}: gpu term {k} {} by hand {}",
                terms[k],
                want[k]
            );
        }
        let worst = (0..5)
            .map(|k| {
                let w = if k == 4 { total } else { want[k] };
                (terms[k] as f64 - w).abs() / mag
            })
            .fold(0.0, f64::max);
        eprintln!("{what}: gpu error / magnitude {worst:.2e}");
        assert!(
            (terms[4] as f64 - total).abs() <= HAND_TOL * mag,
            "{what}: gpu total {} by hand {total}",
            terms[4]
        );
    }
}

/// Raw log-std giving `log_std = ls` in `[lo, hi]`.
fn raw_for(ls: f64, lo: f64, hi: f64) -> f64 {
    (2.0 * (ls - lo) / (hi - lo) - 1.0).atanh()
}

#[test]
fn hand_computed_presets() {
    // The presets' alpha, 1e-4 as the f32 uniform holds it.
    const ALPHA: f64 = 1e-4f32 as f64;
    let one = RowWeights::uniform(1.0);
    let blank = |a: usize| Data {
        rows: 1,
        h: vec![],
        eps: vec![],
        q: vec![0.0],
        dq: vec![0.0; a],
        prior: vec![0.0; 2 * a],
        planner: vec![0.0; 2 * a],
        s_q: 1.0,
        s_kl: 1.0,
    };

    // TD-MPC2, A = 1: mean 0.2, log_std -1, eps 0.7, q 1.5, s_q 1.25.
    // loss = -q / s_q - 1e-4 H, H = -L lp / (L + 1e-8), lp = -eps^2/2 - log_std - log(2pi)/2,
    // L = lp - log(1 - tanh(x)^2 + 1e-6), x = 0.2 + e^-1 0.7.
    {
        let mut d = blank(1);
        let s = raw_for(-1.0, -10.0, 2.0);
        d.h = vec![0.2, s as f32];
        d.eps = vec![0.7];
        d.q = vec![1.5];
        d.s_q = 1.25;
        // f32 inputs: recompute log_std from the stored raw value.
        let ls = -10.0 + 6.0 * ((d.h[1] as f64).tanh() + 1.0);
        let x = 0.2f32 as f64 + ls.exp() * 0.7f32 as f64;
        let a = x.tanh();
        let lp = -0.5 * (0.7f32 as f64).powi(2) - ls - HALF_LOG_2PI;
        let l = lp - (1.0 - a * a + 1e-6).ln();
        let h_ent = -l * lp / (l + 1e-8);
        let cfg = PolicyLossConfig::tdmpc2(1, one);
        let want = [-1.5 / 1.25, -ALPHA * h_ent, 0.0, 0.0];
        check_hand(&cfg, &d, want, 2.0, "TD-MPC2");
    }

    // BMPC, A = 2: means tanh(raw) = (0.5, 0), log_std (-1, -2), eps (0.3, -0.2); planner
    // N((0, 0.25), (1, 0.5)); s_kl 2. loss = mean_i KL_i / s_kl - 1e-4 H, H = -A lp^2 / (lp +
    // 1e-8), lp = sum(-eps^2/2 - log_std) - log(2pi), no squash correction.
    {
        let mut d = blank(2);
        let (lo, hi) = (-3.0, 1.0);
        d.h = vec![
            0.5f64.atanh() as f32,
            0.0,
            raw_for(-1.0, lo, hi) as f32,
            raw_for(-2.0, lo, hi) as f32,
        ];
        d.eps = vec![0.3, -0.2];
        d.prior = vec![0.0, 0.25, 1.0, 0.5];
        d.s_kl = 2.0;
        let mu = [(d.h[0] as f64).tanh(), 0.0];
        let ls: Vec<f64> = d.h[2..]
            .iter()
            .map(|&s| lo + 0.5 * (hi - lo) * ((s as f64).tanh() + 1.0))
            .collect();
        let kl = |mp: f64, sp: f64, mq: f64, sq: f64| {
            (sq / sp).ln() + (sp * sp + (mp - mq).powi(2)) / (2.0 * sq * sq) - 0.5
        };
        let dkl = 0.5 * (kl(mu[0], ls[0].exp(), 0.0, 1.0) + kl(mu[1], ls[1].exp(), 0.25, 0.5));
        let e = [0.3f32 as f64, -0.2f32 as f64];
        let lp = -0.5 * (e[0] * e[0] + e[1] * e[1]) - ls[0] - ls[1] - 2.0 * HALF_LOG_2PI;
        let h_ent = -lp * 2.0 * lp / (lp + 1e-8);
        let cfg = PolicyLossConfig::bmpc(2, one);
        let want = [0.0, -ALPHA * h_ent, dkl / 2.0, 0.0];
        check_hand(&cfg, &d, want, 2.0, "BMPC");
    }

    // TD-M(PC)², A = 2: means (0.1, -0.3), log_std (-1, 0.5), eps (0.4, 1.1), q -2, planner
    // N((0.2, -0.5), (0.01 -> 0.05, 0.3)); s_q 3 (gate on) and 1.5 (off).
    // loss = -q / s_q + 1e-4 log pi - (A / 61) ell / s_q [s_q > 2], log pi = A (sum(-eps^2/2 -
    // log_std) - log(2pi)/2) - sum log(1 - a^2 + 1e-6), ell = A (sum(-z^2/2 - log sig') -
    // log(2pi)/2).
    for s_q in [3.0f32, 1.5] {
        let mut d = blank(2);
        let (lo, hi) = (-10.0, 2.0);
        d.h = vec![
            0.1,
            -0.3,
            raw_for(-1.0, lo, hi) as f32,
            raw_for(0.5, lo, hi) as f32,
        ];
        d.eps = vec![0.4, 1.1];
        d.q = vec![-2.0];
        d.s_q = s_q;
        d.planner = vec![0.2, -0.5, 0.01, 0.3];
        let sq = s_q as f64;
        let mut log_pi_g = 0.0;
        let mut corr = 0.0;
        let mut ell = 0.0;
        for i in 0..2 {
            let ls = lo + 0.5 * (hi - lo) * ((d.h[2 + i] as f64).tanh() + 1.0);
            let e = d.eps[i] as f64;
            let a = (d.h[i] as f64 + ls.exp() * e).tanh();
            log_pi_g += -0.5 * e * e - ls;
            corr += (1.0 - a * a + 1e-6).ln();
            let sig = (d.planner[2 + i] as f64).max(0.05f32 as f64);
            let z = (a - d.planner[i] as f64) / sig;
            ell += -0.5 * z * z - sig.ln();
        }
        let log_pi = 2.0 * (log_pi_g - HALF_LOG_2PI) - corr;
        let ell = 2.0 * (ell - HALF_LOG_2PI);
        let gate = if sq > 2.0 { 1.0 } else { 0.0 };
        let cfg = PolicyLossConfig::tdmpc_square(2, one);
        let want = [
            2.0 / sq,
            ALPHA * log_pi,
            0.0,
            -gate * ((2.0f64 / 61.0) as f32 as f64) * ell / sq,
        ];
        check_hand(&cfg, &d, want, 2.0 + ell.abs(), "TD-M(PC)²");
    }

    // PO-MPC, A = 2, lambda 1, both heads, against a prior network's raw output (same head):
    // * BMPC head: reverse closed-form KL, mean over dimensions;
    // * TD-MPC2 head: the single-sample estimate sum_i [(-eps^2/2 - log_std) - (-z^2/2 -
    //   log sig_p)] with z = (x - m_p) / sig_p (the squash corrections cancel).
    // loss = -q / s_q - 1e-4 H + D / s_kl; q 0.8, s_q 1.6, s_kl 1.3.
    for head in [PolicyHead::bmpc(2), PolicyHead::tdmpc2(2)] {
        let mut d = blank(2);
        let (lo, hi) = (head.log_std_min as f64, head.log_std_max as f64);
        d.h = vec![
            0.3,
            -0.6,
            raw_for(-0.5, lo, hi) as f32,
            raw_for(-1.2, lo, hi) as f32,
        ];
        d.eps = vec![-0.5, 0.9];
        d.prior = vec![-0.2, 0.4, 0.55, 0.3];
        d.q = vec![0.8];
        d.s_q = 1.6;
        d.s_kl = 1.3;
        let squashed = head.param == Param::Squashed;
        let map = |m: f64| if squashed { m } else { m.tanh() };
        let (mut lp, mut corr, mut dsum) = (0.0, 0.0, 0.0);
        for i in 0..2 {
            let mu = map(d.h[i] as f64);
            let ls = lo + 0.5 * (hi - lo) * ((d.h[2 + i] as f64).tanh() + 1.0);
            let e = d.eps[i] as f64;
            let x = mu + ls.exp() * e;
            let mp = map(d.prior[i] as f64);
            let lsp = lo + 0.5 * (hi - lo) * ((d.prior[2 + i] as f64).tanh() + 1.0);
            lp += -0.5 * e * e - ls;
            if squashed {
                corr += (1.0 - x.tanh().powi(2) + 1e-6).ln();
                let z = (x - mp) / lsp.exp();
                dsum += (-0.5 * e * e - ls) - (-0.5 * z * z - lsp);
            } else {
                let (s, sp) = (ls.exp(), lsp.exp());
                dsum += 0.5 * ((sp / s).ln() + (s * s + (mu - mp).powi(2)) / (2.0 * sp * sp) - 0.5);
            }
        }
        let lp = lp - 2.0 * HALF_LOG_2PI;
        let l = lp - corr;
        let h_ent = -l * 2.0 * lp / (l + 1e-8);
        let cfg = PolicyLossConfig::pompc(head, 1.0, one);
        let (q, s_q, s_kl) = (d.q[0] as f64, d.s_q as f64, d.s_kl as f64);
        let want = [-q / s_q, -ALPHA * h_ent, dsum / s_kl, 0.0];
        check_hand(&cfg, &d, want, 2.0 + dsum.abs(), "PO-MPC");
    }
}

// ---- grid, zero rows, errors, shaders ----

fn small_grid_gpus(max: u32) -> Vec<Gpu> {
    gpus()
        .iter()
        .map(|g| {
            let mut limits = g.limits().clone();
            limits.max_compute_workgroups_per_dimension = max;
            let opts = GpuOptions {
                limits: LimitsRequest::Custom(Box::new(limits)),
                ..GpuOptions::default()
                    .with_checks(g.shader_checks())
                    .with_canary(common::CANARY_WORDS)
            };
            Gpu::new(opts).unwrap()
        })
        .collect()
}

#[test]
fn the_two_dimensional_grid() {
    // A = 38: 4 rows per workgroup, 200 rows take 50 workgroups, past 11 per dimension.
    let mut r = rng("grid");
    for gpu in small_grid_gpus(11) {
        let a = 38;
        let rows = 200;
        let cfg = random_config(
            &mut r,
            PolicyHead::tdmpc2(a),
            rows,
            EntropyForm::Scaled,
            Some((KlForm::SingleSample, true)),
            true,
        );
        let d = random_data(&mut r, &cfg, rows);
        let o = Opts {
            given: Given {
                q: true,
                s_q: true,
                s_kl: true,
            },
            grad: GradMode::Write,
            write_d: true,
            loss_add: false,
            scratch: true,
            layouts: true,
        };
        check_policy(&gpu, &mut r, &cfg, &d, o);
        let pcfg = PriorFitConfig::new(PolicyHead::bmpc(a), RowWeights::new(0.1, 0.5, 50));
        check_prior_fit(&gpu, &mut r, &pcfg, rows, o);
        // Sample: 200 x 38 elements in 119 workgroups of 64.
        let h = unif(&mut r, rows * 2 * a, -2.0, 2.0);
        let eps = normals(&mut r, rows * a);
        let hb = GpuBuffer::from_slice(&gpu, "h", &h).unwrap();
        let eb = GpuBuffer::from_slice(&gpu, "eps", &eps).unwrap();
        let ob = GpuBuffer::<f32>::new(&gpu, "a", rows * a).unwrap();
        let head = PolicyHead::bmpc(a);
        let mut rec = Recorder::new(&gpu);
        pl::record_sample(
            &mut rec,
            &head,
            rows,
            Rows::new(&hb, 2 * a),
            Rows::new(&eb, a),
            Rows::new(&ob, a),
        )
        .unwrap();
        let ho = rec.read(&ob);
        let got = rec.finish().unwrap().get(&ho).unwrap();
        let want = mirror::sample(&head, rows, &f64s(&h), &f64s(&eps));
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() <= 1e-4, "sample: gpu {g} want {w}");
        }
    }
}

#[test]
fn zero_rows_write_zero_losses() {
    let gpu = &gpus()[0];
    let a = 3;
    let losses = GpuBuffer::from_slice(gpu, "losses", &[5.0f32; 7]).unwrap();
    let x = GpuBuffer::<f32>::new(gpu, "x", 4).unwrap();
    let cfg = PolicyLossConfig::tdmpc2(a, RowWeights::uniform(1.0));
    let inputs = PolicyInputs {
        q: Some(QInput {
            values: Rows::new(&x, 1),
            grad: Rows::new(&x, a),
        }),
        ..PolicyInputs::new(Rows::new(&x, 2 * a), Rows::new(&x, a))
    };
    let mut rec = Recorder::new(gpu);
    let out = LossOut {
        losses: &losses,
        index: 1,
        accumulate: false,
    };
    pl::record_policy_loss(&mut rec, &cfg, 0, &inputs, None, None, out, None).unwrap();
    let pcfg = PriorFitConfig::new(PolicyHead::bmpc(a), RowWeights::uniform(1.0));
    let pin = PriorFitInputs {
        out: Rows::new(&x, 2 * a),
        planner: Rows::new(&x, 2 * a),
        s_d: None,
    };
    let out = LossOut {
        losses: &losses,
        index: 6,
        accumulate: false,
    };
    pl::record_prior_fit(&mut rec, &pcfg, 0, &pin, None, None, out, None).unwrap();
    let h = rec.read(&losses);
    assert_eq!(
        rec.finish().unwrap().get(&h).unwrap(),
        vec![5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    );
}

#[test]
fn bad_requests_are_errors() {
    let gpu = &gpus()[0];
    let (a, rows) = (3, 10);
    let buf = |label: &str, n: usize| GpuBuffer::<f32>::new(gpu, label, n).unwrap();
    let h = buf("h", rows * 2 * a);
    let eps = buf("eps", rows * a);
    let q = buf("q", rows);
    let dq = buf("dq", rows * a);
    let prior = buf("prior", rows * 2 * a);
    let grad = buf("grad", rows * 2 * a);
    let losses = buf("losses", 5);
    let kind = |e: Error| -> &'static str {
        match e {
            Error::InvalidArgument(_) => "arg",
            Error::Shape(_) => "shape",
            Error::Limit(_) => "limit",
            _ => panic!("unexpected {e:?}"),
        }
    };
    let w = RowWeights::uniform(1.0);
    let qin = Some(QInput {
        values: Rows::new(&q, 1),
        grad: Rows::new(&dq, a),
    });
    let base = PolicyInputs {
        q: qin,
        ..PolicyInputs::new(Rows::new(&h, 2 * a), Rows::new(&eps, a))
    };
    let out = |index| LossOut {
        losses: &losses,
        index,
        accumulate: false,
    };
    let mut rec = Recorder::new(gpu);
    let mut run = |cfg: &PolicyLossConfig, x: &PolicyInputs, g: Option<GradOut>, index| {
        kind(pl::record_policy_loss(&mut rec, cfg, rows, x, g, None, out(index), None).unwrap_err())
    };
    let good = PolicyLossConfig::tdmpc2(a, w);
    // Configurations.
    let bad_head = PolicyLossConfig {
        head: PolicyHead {
            action_dim: 0,
            ..good.head
        },
        ..good
    };
    assert_eq!(run(&bad_head, &base, None, 0), "arg");
    let bad_range = PolicyLossConfig {
        head: PolicyHead {
            log_std_min: 2.0,
            log_std_max: 2.0,
            ..good.head
        },
        ..good
    };
    assert_eq!(run(&bad_range, &base, None, 0), "arg");
    assert_eq!(
        run(
            &PolicyLossConfig {
                alpha: f32::NAN,
                ..good
            },
            &base,
            None,
            0
        ),
        "arg"
    );
    assert_eq!(
        run(
            &PolicyLossConfig {
                weights: RowWeights::new(1.0, 0.5, 0),
                ..good
            },
            &base,
            None,
            0
        ),
        "arg"
    );
    // The single-sample estimate needs the squashed head; floors must be positive.
    let ss = KlTerm {
        form: KlForm::SingleSample,
        ..KlTerm::bmpc()
    };
    let with_prior = PolicyInputs {
        prior: Some(Rows::new(&prior, 2 * a)),
        ..base
    };
    let bmpc_ss = PolicyLossConfig {
        kl: Some(ss),
        ..PolicyLossConfig::bmpc(a, w)
    };
    assert_eq!(run(&bmpc_ss, &with_prior, None, 0), "arg");
    let zero_floor = PolicyLossConfig {
        kl: Some(KlTerm {
            std_floor: 0.0,
            ..KlTerm::bmpc()
        }),
        ..good
    };
    assert_eq!(run(&zero_floor, &with_prior, None, 0), "arg");
    // Inputs against the config: Q missing with c_q != 0, prior missing or extra, planner
    // missing.
    let no_q = PolicyInputs { q: None, ..base };
    assert_eq!(run(&good, &no_q, None, 0), "arg");
    let bmpc = PolicyLossConfig::bmpc(a, w);
    assert_eq!(run(&bmpc, &base, None, 0), "arg");
    assert_eq!(run(&good, &with_prior, None, 0), "arg");
    assert_eq!(
        run(&PolicyLossConfig::tdmpc_square(a, w), &base, None, 0),
        "arg"
    );
    // Shapes: short h, slots past the end, overlapping gradient rows, a bad scale index.
    let short = buf("short", rows * 2 * a - 1);
    let short_in = PolicyInputs {
        h: Rows::new(&short, 2 * a),
        ..base
    };
    assert_eq!(run(&good, &short_in, None, 0), "shape");
    assert_eq!(run(&good, &base, None, 1), "shape");
    let g = |buf, at| {
        Some(GradOut {
            buf,
            at,
            accumulate: false,
        })
    };
    assert_eq!(
        run(&good, &base, g(&grad, RowLayout::at(0, 2 * a - 1)), 0),
        "shape"
    );
    let bad_scale = PolicyInputs {
        s_q: Some(Scalar {
            buf: &q,
            index: rows,
        }),
        ..base
    };
    assert_eq!(run(&good, &bad_scale, None, 0), "shape");
    // Aliasing: the gradient over h, the slots inside the gradient, a small scratch.
    assert_eq!(
        run(&good, &base, g(&h, RowLayout::contiguous(2 * a)), 0),
        "arg"
    );
    let both = buf("grad and losses", rows * 2 * a + 5);
    let slot_in = LossOut {
        losses: &both,
        index: 3,
        accumulate: false,
    };
    assert_eq!(
        kind(
            pl::record_policy_loss(
                &mut rec,
                &good,
                rows,
                &base,
                g(&both, RowLayout::contiguous(2 * a)),
                None,
                slot_in,
                None
            )
            .unwrap_err()
        ),
        "arg"
    );
    let many = 100;
    let big_h = buf("big h", many * 2 * a);
    let big_eps = buf("big eps", many * a);
    let big_q = buf("big q", many);
    let big_dq = buf("big dq", many * a);
    let big = PolicyInputs {
        q: Some(QInput {
            values: Rows::new(&big_q, 1),
            grad: Rows::new(&big_dq, a),
        }),
        ..PolicyInputs::new(Rows::new(&big_h, 2 * a), Rows::new(&big_eps, a))
    };
    let need = pl::policy_loss_scratch_len(&good, many);
    assert!(need > 0);
    let small = buf("small scratch", need - 1);
    assert_eq!(
        kind(
            pl::record_policy_loss(
                &mut rec,
                &good,
                many,
                &big,
                None,
                None,
                out(0),
                Some(&small)
            )
            .unwrap_err()
        ),
        "shape"
    );
    // The divergence pass needs a KL term; the prior fit a closed form and a positive floor.
    let d = buf("d", rows);
    assert_eq!(
        kind(
            pl::record_policy_divergence(&mut rec, &good, rows, &base, Rows::new(&d, 1))
                .unwrap_err()
        ),
        "arg"
    );
    let pin = PriorFitInputs {
        out: Rows::new(&h, 2 * a),
        planner: Rows::new(&prior, 2 * a),
        s_d: None,
    };
    for cfg in [
        PriorFitConfig {
            form: KlForm::SingleSample,
            ..PriorFitConfig::new(PolicyHead::tdmpc2(a), w)
        },
        PriorFitConfig {
            std_floor: -1.0,
            ..PriorFitConfig::new(PolicyHead::tdmpc2(a), w)
        },
    ] {
        assert_eq!(
            kind(
                pl::record_prior_fit(&mut rec, &cfg, rows, &pin, None, None, out(0), None)
                    .unwrap_err()
            ),
            "arg"
        );
    }
    // The sample: action over h.
    assert_eq!(
        kind(
            pl::record_sample(
                &mut rec,
                &good.head,
                rows,
                Rows::new(&h, 2 * a),
                Rows::new(&eps, a),
                Rows::new(&h, a)
            )
            .unwrap_err()
        ),
        "arg"
    );
    assert_eq!(rec.dispatches(), 0);
    rec.submit().unwrap();
}

fn compile(name: &str, entry: &str, header: &Header, overrides: &[(&'static str, f64)]) {
    let pre = shader::preprocess(name, header).unwrap();
    let (module, info) = shader::validate(name, &pre).unwrap_or_else(|e| panic!("{name}: {e}"));
    let constants: naga::back::PipelineConstants =
        overrides.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((naga::ShaderStage::Compute, entry)),
        &constants,
    )
    .unwrap_or_else(|e| panic!("{name}::{entry} {overrides:?}: {e}"));
    let pipeline = naga::back::spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: entry.to_string(),
    };
    naga::back::spv::write_vec(&module, &info, &Default::default(), Some(&pipeline))
        .unwrap_or_else(|e| panic!("{name}::{entry} to SPIR-V {overrides:?}: {e}"));
}

#[test]
fn every_pipeline_compiles_with_naga() {
    let mut seen = std::collections::HashSet::new();
    for a in [1, 38] {
        for k in pl::all_kernels(a) {
            let (spec, header, ov) = pl::pipeline_constants(&k);
            let key = format!("{} {:?}", spec.entry, ov);
            if seen.insert(key) {
                compile(spec.shader, spec.entry, &header, &ov);
            }
        }
    }
    assert!(seen.len() > 500, "{} pipelines", seen.len());
}
