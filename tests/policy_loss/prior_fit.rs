//! The prior fit and its divergence pass against the mirror.

use crate::common::{gpus, rng};
use crate::harness::*;
use pompc::kernels::loss::{GradOut, LossOut, RowWeights};
use pompc::kernels::policy_loss::{
    self as pl, DimReduce, KlForm, PolicyHead, PriorFitConfig, PriorFitInputs, Rows, Scalar,
};
use pompc::kernels::two_hot::RowLayout;
use pompc::reference::policy_loss as mirror;
use pompc::{Gpu, GpuBuffer, Recorder};
use rand::Rng;

/// Prior network raw output in +-1.5 (near the identical case for `identical`), planner means
/// in +-1 with stds in [-0.2, 1.5).
pub(crate) fn check_prior_fit(
    gpu: &Gpu,
    r: &mut impl Rng,
    cfg: &PriorFitConfig,
    rows: usize,
    o: Opts,
) {
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
        agents: pl::Agents::ONE,
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
        pl::Pass::loss(grad, div, lo, scratch.as_ref()),
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
            agents: pl::Agents::ONE,
        };
        let mut rec = Recorder::new(gpu);
        pl::record_prior_fit(
            &mut rec,
            &cfg,
            rows,
            &inputs,
            pl::Pass::Divergence(Rows::new(&db, 1)),
        )
        .unwrap();
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
