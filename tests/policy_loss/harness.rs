//! What the test files share: tolerances, the worst-ratio report, random inputs and layouts,
//! the mirror on a case, the magnitudes that scale the tolerances, random configurations and
//! one plain GPU call.

use crate::common::POISON;
use pompc::kernels::loss::{GradOut, LossOut, RowWeights};
use pompc::kernels::policy_loss::{
    self as pl, DimReduce, EntropyForm, KlForm, KlTerm, LlTerm, Param, PolicyHead, PolicyInputs,
    PolicyLossConfig, PriorInput, QInput, Rows, Scalar,
};
use pompc::kernels::two_hot::RowLayout;
use pompc::reference::policy_loss::{self as mirror, HALF_LOG_2PI};
use pompc::{Gpu, GpuBuffer, Recorder};
use rand::Rng;
use std::cell::RefCell;

pub(crate) const LOSS_TOL: f64 = 4e-6;
/// Gradients against their terms' magnitude: 1e-4, since seed 2159079000178036220 (A = 38,
/// scaled entropy, a row whose log-prob nears 0, where the scale's division amplifies f32
/// rounding) gave 5.4e-5 with this session's shaders and with 47500cf's alike; 3e-5 before.
pub(crate) const GRAD_TOL: f64 = 1e-4;
pub(crate) const ACTION_TOL: f64 = 1e-5;
pub(crate) const FD_TOL: f64 = 1e-6;
pub(crate) const HAND_TOL: f64 = 2e-6;
/// Absolute slack for results under f32's normal range (row weights rho^t reach them), where
/// rounding is absolute and some drivers flush to zero.
pub(crate) const SUBNORMAL: f64 = 1e-37;
pub(crate) const GPU_FD_TOL: f64 = 5e-3;

thread_local! {
    /// Largest error / tolerance ratios seen: loss, divergence, gradient written, action,
    /// gradient added.
    static WORST: RefCell<[f64; 5]> = const { RefCell::new([0.0; 5]) };
}

pub(crate) fn note(k: usize, ratio: f64) {
    WORST.with(|w| {
        let mut w = w.borrow_mut();
        w[k] = w[k].max(ratio);
    });
}

pub(crate) fn report(tag: &str) {
    WORST.with(|w| {
        let w = w.borrow();
        eprintln!(
            "{tag}: worst error / tolerance: loss {:.3}, divergence {:.3}, gradient {:.3} \
             (added {:.3}), action {:.3}",
            w[0], w[1], w[2], w[4], w[3]
        );
    });
}

pub(crate) fn poison() -> f32 {
    f32::from_bits(POISON)
}

pub(crate) fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Standard normals (Box-Muller).
pub(crate) fn normals(r: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| normal(r)).collect()
}

pub(crate) fn normal(r: &mut impl Rng) -> f32 {
    let u: f64 = 1.0 - r.random::<f64>();
    let v: f64 = r.random();
    ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
}

pub(crate) fn unif(r: &mut impl Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| r.random_range(lo..hi)).collect()
}

/// A random layout for `rows` rows of `width`: offset 0..20, stride width + 0..3.
pub(crate) fn random_layout(r: &mut impl Rng, rows: usize, width: usize) -> (RowLayout, usize) {
    let at = RowLayout {
        offset: r.random_range(0..20),
        stride: width + r.random_range(0..3),
    };
    let len = at.offset + rows.saturating_sub(1) * at.stride + width + r.random_range(0..5);
    (at, len)
}

/// `rows` rows of `width` (flat) at `at` inside `len` elements of `fill`.
pub(crate) fn place(flat: &[f32], width: usize, at: RowLayout, len: usize, fill: f32) -> Vec<f32> {
    let mut buf = vec![fill; len];
    for (i, row) in flat.chunks(width).enumerate() {
        let s = at.offset + i * at.stride;
        buf[s..s + width].copy_from_slice(row);
    }
    buf
}

/// (row, column) of element `i` if it is in one of the rows.
pub(crate) fn in_rows(
    i: usize,
    at: RowLayout,
    rows: usize,
    width: usize,
) -> Option<(usize, usize)> {
    if i < at.offset {
        return None;
    }
    let d = i - at.offset;
    let (row, col) = (d / at.stride, d % at.stride);
    (row < rows && col < width).then_some((row, col))
}

/// The inputs of one policy-loss case (logical arrays).
#[derive(Clone, Debug)]
pub(crate) struct Data {
    pub(crate) rows: usize,
    pub(crate) h: Vec<f32>,
    pub(crate) eps: Vec<f32>,
    pub(crate) q: Vec<f32>,
    pub(crate) dq: Vec<f32>,
    pub(crate) prior: Vec<f32>,
    pub(crate) planner: Vec<f32>,
    pub(crate) s_q: f32,
    pub(crate) s_kl: f32,
}

/// Per-row `L` (squashed log-prob) of the mirror.
pub(crate) fn row_l(head: &PolicyHead, h: &[f64], e: &[f64]) -> f64 {
    let a = head.action_dim;
    let els: Vec<_> = (0..a).map(|i| mirror::elem(head, h, e, i)).collect();
    els.iter().map(|e| e.s - e.sq).sum::<f64>() - a as f64 * HALF_LOG_2PI
}

/// Resample noise away from the kinks and the scaled entropy's pole (see the module docs).
pub(crate) fn fix_noise(
    r: &mut impl Rng,
    cfg: &PolicyLossConfig,
    rows: usize,
    h: &[f32],
    eps: &mut [f32],
) {
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
pub(crate) fn random_data(r: &mut impl Rng, cfg: &PolicyLossConfig, rows: usize) -> Data {
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
pub(crate) struct Given {
    pub(crate) q: bool,
    pub(crate) s_q: bool,
    pub(crate) s_kl: bool,
}

/// The mirror on `d` (scales of 1 where not given).
pub(crate) fn mirror_of(cfg: &PolicyLossConfig, d: &Data, g: Given) -> mirror::PolicyLossOut {
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
pub(crate) fn magnitudes(cfg: &PolicyLossConfig, d: &Data, g: Given) -> Vec<[f64; 5]> {
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
                                    // z moves by the error of x over sig_p: a few ulps of
                                    // |mu| + sig |eps| (1 + |log_std| + the range's end).
                                    + z.abs()
                                        * (el.hd.mu.abs()
                                            + el.sig * el.e.abs() * (1.0 + el.hd.ls.abs() + range))
                                        / p.sig
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
pub(crate) enum GradMode {
    Skip,
    Write,
    Add,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Opts {
    pub(crate) given: Given,
    pub(crate) grad: GradMode,
    pub(crate) write_d: bool,
    pub(crate) loss_add: bool,
    pub(crate) scratch: bool,
    pub(crate) layouts: bool,
}

pub(crate) fn random_weights(r: &mut impl Rng, rows: usize) -> RowWeights {
    // At most 60 steps: rho^t stays in f32's normal range (training has T' <= 4).
    let per = [1, rows.div_ceil(3).max(1), rows.div_ceil(4).max(1)][r.random_range(0..3)]
        .max(rows.div_ceil(60));
    let rho = [0.5, 0.9, 1.0, 0.0][r.random_range(0..4)];
    RowWeights::new(r.random_range(0.1..2.0) / rows as f32, rho, per)
}

/// A configuration with every runtime value random and the given structure.
pub(crate) fn random_config(
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

pub(crate) fn heads(a: usize) -> [PolicyHead; 2] {
    [PolicyHead::tdmpc2(a), PolicyHead::bmpc(a)]
}

/// Every KL structure valid for `param`: (form, network prior).
pub(crate) fn kl_structures(param: Param) -> Vec<Option<(KlForm, bool)>> {
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

/// The five slots and the gradient of one contiguous call (Q and both scales given).
pub(crate) fn gpu_terms_and_grad(
    gpu: &Gpu,
    cfg: &PolicyLossConfig,
    d: &Data,
) -> (Vec<f32>, Vec<f32>) {
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
    pl::record_policy_loss(
        &mut rec,
        cfg,
        d.rows,
        &inputs,
        pl::Pass::loss(Some(grad), None, out, None),
    )
    .unwrap();
    let (hl, hg) = (rec.read(&losses), rec.read(&gb));
    let res = rec.finish().unwrap();
    (res.get(&hl).unwrap(), res.get(&hg).unwrap())
}
