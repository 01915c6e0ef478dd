//! The 2-D grid, zero rows, bad requests and every pipeline through naga.

use crate::common::{gpus, rng, small_grid_gpus};
use crate::harness::*;
use crate::policy::check_policy;
use crate::prior_fit::check_prior_fit;
use pompc::kernels::loss::{GradOut, LossOut, RowWeights};
use pompc::kernels::policy_loss::{
    self as pl, EntropyForm, KlForm, KlTerm, PolicyHead, PolicyInputs, PolicyLossConfig,
    PriorFitConfig, PriorFitInputs, QInput, Rows, Scalar,
};
use pompc::kernels::two_hot::RowLayout;
use pompc::reference::policy_loss as mirror;
use pompc::{Error, GpuBuffer, Recorder};

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
    pl::record_policy_loss(
        &mut rec,
        &cfg,
        0,
        &inputs,
        pl::Pass::loss(None, None, out, None),
    )
    .unwrap();
    let pcfg = PriorFitConfig::new(PolicyHead::bmpc(a), RowWeights::uniform(1.0));
    let pin = PriorFitInputs {
        out: Rows::new(&x, 2 * a),
        planner: Rows::new(&x, 2 * a),
        s_d: None,
        agents: pl::Agents::ONE,
    };
    let out = LossOut {
        losses: &losses,
        index: 6,
        accumulate: false,
    };
    pl::record_prior_fit(
        &mut rec,
        &pcfg,
        0,
        &pin,
        pl::Pass::loss(None, None, out, None),
    )
    .unwrap();
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
        kind(
            pl::record_policy_loss(
                &mut rec,
                cfg,
                rows,
                x,
                pl::Pass::loss(g, None, out(index), None),
            )
            .unwrap_err(),
        )
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
                pl::Pass::loss(g(&both, RowLayout::contiguous(2 * a)), None, slot_in, None)
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
                pl::Pass::loss(None, None, out(0), Some(&small))
            )
            .unwrap_err()
        ),
        "shape"
    );
    // The divergence pass needs a KL term; the prior fit a closed form and a positive floor.
    let d = buf("d", rows);
    assert_eq!(
        kind(
            pl::record_policy_loss(
                &mut rec,
                &good,
                rows,
                &base,
                pl::Pass::Divergence(Rows::new(&d, 1))
            )
            .unwrap_err()
        ),
        "arg"
    );
    let pin = PriorFitInputs {
        out: Rows::new(&h, 2 * a),
        planner: Rows::new(&prior, 2 * a),
        s_d: None,
        agents: pl::Agents::ONE,
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
                pl::record_prior_fit(
                    &mut rec,
                    &cfg,
                    rows,
                    &pin,
                    pl::Pass::loss(None, None, out(0), None)
                )
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

#[test]
fn every_pipeline_compiles_with_naga() {
    let mut seen = std::collections::HashSet::new();
    for a in [1, 38] {
        for k in pl::all_kernels(a) {
            let (spec, header, ov) = pl::pipeline_constants(&k);
            let key = format!("{} {:?}", spec.entry, ov);
            if seen.insert(key) {
                crate::common::compile_spirv(spec.shader, spec.entry, &header, &ov);
            }
        }
    }
    assert!(seen.len() > 500, "{} pipelines", seen.len());
}
