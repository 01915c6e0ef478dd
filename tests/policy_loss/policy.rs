//! The policy loss and its divergence pass against the mirror: every structure, the presets,
//! the TD-M(PC)² gate.

use crate::common::{gpus, rng};
use crate::harness::*;
use pompc::kernels::loss::{GradOut, LossOut, RowWeights};
use pompc::kernels::policy_loss::{
    self as pl, EntropyForm, Param, PolicyHead, PolicyInputs, PolicyLossConfig, QInput, Rows,
    Scalar,
};
use pompc::kernels::two_hot::RowLayout;
use pompc::{Gpu, GpuBuffer, Recorder};
use rand::Rng;

/// Run the policy loss on the GPU with poisoned outputs at random layouts and compare
/// everything with the mirror.
pub(crate) fn check_policy(gpu: &Gpu, r: &mut impl Rng, cfg: &PolicyLossConfig, d: &Data, o: Opts) {
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
        agents: pl::Agents::ONE,
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
        pl::Pass::loss(grad, div, out, scratch.as_ref()),
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
                pl::record_policy_loss(
                    &mut rec,
                    &cfg_div,
                    rows,
                    &inputs,
                    pl::Pass::Divergence(Rows::at(&db, d_at)),
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
