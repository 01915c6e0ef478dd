//! Gradients against finite differences: the mirror's of the mirror's losses (f64), the GPU's
//! of the GPU's loss (f32).

use crate::common::{gpus, rng};
use crate::harness::*;
use pompc::kernels::loss::{GradOut, LossOut, RowWeights};
use pompc::kernels::policy_loss::{
    self as pl, DimReduce, EntropyForm, KlForm, KlTerm, LlTerm, Param, PolicyHead, PolicyInputs,
    PolicyLossConfig, PriorFitConfig, QInput, Rows, Scalar,
};
use pompc::kernels::two_hot::RowLayout;
use pompc::reference::policy_loss as mirror;
use pompc::{GpuBuffer, Recorder};
use rand::Rng;

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
                    agents: pl::Agents::ONE,
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
                pl::record_policy_loss(
                    &mut rec,
                    cfg,
                    rows,
                    &inputs,
                    pl::Pass::loss(grad, None, out, None),
                )
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
