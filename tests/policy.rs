//! The policy head (TD-MPC2's `WorldModel.pi` with given noise) against its f64 mirror on
//! fresh random inputs with poisoned outputs: odd row counts, action dimensions that give 1 to
//! 64 threads per row, saturated inputs (raw log-std +-20, noise +-5, raw means +-20), other
//! log-std ranges, offsets into larger buffers, the 2-D dispatch past the per-dimension
//! workgroup limit, and bad requests.
//!
//! Tolerance 1e-5, per output field:
//! * mean, log_std: |gpu - ref| <= 1e-5 * max(|ref|, 1) per element (relative, and absolute
//!   for the squashed means in [-1, 1]);
//! * action: |gpu - ref| <= 1e-5 * max(1, sigma |eps| (1 - a^2)) per element: 1e-5 absolute,
//!   scaled by the action's sensitivity to log_std where that exceeds 1 (see `action_error`);
//! * log_prob, entropy, scaled_entropy: |gpu - ref| <= 1e-5 * max(|ref|, S) per row, where S
//!   is the sum of the magnitudes of the 2A terms that log_prob adds up (times A for
//!   scaled_entropy): relative, except that a sum that cancels to near zero keeps the absolute
//!   error of its terms.

mod common;

use common::{POISON, gpus, rng, small_grid_gpus, uniform};
use pompc::kernels::policy::{self, PolicyBuffers, PolicyConfig, PolicyOffsets};
use pompc::reference::policy as mirror;
use pompc::{Error, Gpu, GpuBuffer, Recorder};
use rand::Rng;

const TOL: f64 = 1e-5;

/// Standard normals (Box-Muller), as the planner's Philox fill would give.
fn normals(r: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u: f64 = 1.0 - r.random::<f64>();
            let v: f64 = r.random();
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect()
}

struct Outputs {
    action: Vec<f32>,
    stats: Vec<f32>,
}

fn gpu_sample(gpu: &Gpu, cfg: &PolicyConfig, rows: usize, h: &[f32], eps: &[f32]) -> Outputs {
    let a = cfg.action_dim;
    let lens = (rows * a, rows * cfg.stats_width());
    gpu_sample_at(gpu, cfg, rows, (h, eps), PolicyOffsets::default(), lens)
}

/// The sample at offsets `at` into buffers of `lens` (action, stats) elements, poisoned
/// first: the whole buffers back.
fn gpu_sample_at(
    gpu: &Gpu,
    cfg: &PolicyConfig,
    rows: usize,
    (h, eps): (&[f32], &[f32]),
    at: PolicyOffsets,
    (action_len, stats_len): (usize, usize),
) -> Outputs {
    let hb = GpuBuffer::from_slice(gpu, "h", h).unwrap();
    let eb = GpuBuffer::from_slice(gpu, "eps", eps).unwrap();
    let ab = GpuBuffer::<f32>::new(gpu, "action", action_len).unwrap();
    let sb = GpuBuffer::<f32>::new(gpu, "stats", stats_len).unwrap();
    ab.fill_u32(gpu, POISON).unwrap();
    sb.fill_u32(gpu, POISON).unwrap();
    let mut rec = Recorder::new(gpu);
    let io = PolicyBuffers {
        h: &hb,
        eps: &eb,
        action: &ab,
        stats: &sb,
    };
    policy::record_sample_at(&mut rec, cfg, rows, io, at).unwrap();
    let (ha, hs) = (rec.read(&ab), rec.read(&sb));
    let out = rec.finish().unwrap();
    Outputs {
        action: out.get(&ha).unwrap(),
        stats: out.get(&hs).unwrap(),
    }
}

fn elementwise_error(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            let d = (*g as f64 - w).abs() / w.abs().max(1.0);
            if d.is_nan() { f64::INFINITY } else { d }
        })
        .fold(0.0, f64::max)
}

/// Largest |gpu - ref| / max(1, sigma |eps| (1 - a^2)) over the actions: the error relative to
/// the action's sensitivity to log_std (d a / d log_std = sigma eps (1 - a^2), up to 7.4 * 5 for
/// log_std = 2 and eps = 5), because f32 holds log_std = lo + (hi - lo) s only to about
/// 5e-7 absolute, and no f32 kernel can do better on the action than that times the
/// sensitivity.
fn action_error(
    cfg: &PolicyConfig,
    got: &Outputs,
    want: &mirror::PolicySample,
    eps: &[f32],
) -> f64 {
    let a = cfg.action_dim;
    let w = cfg.stats_width();
    (0..want.action.len())
        .map(|k| {
            let (row, i) = (k / a, k % a);
            let sigma = want.stats[row * w + cfg.log_std_col(i)].exp();
            let r = want.action[k];
            let sens = sigma * (eps[k] as f64).abs() * (1.0 - r * r);
            let d = (got.action[k] as f64 - r).abs() / sens.max(1.0);
            if d.is_nan() { f64::INFINITY } else { d }
        })
        .fold(0.0, f64::max)
}

/// Columns `cols` of every row of a `[rows, width]` buffer.
fn columns<T: Copy>(v: &[T], width: usize, cols: std::ops::Range<usize>) -> Vec<T> {
    v.chunks(width)
        .flat_map(|r| r[cols.clone()].to_vec())
        .collect()
}

fn compare(
    cfg: &PolicyConfig,
    got: &Outputs,
    want: &mirror::PolicySample,
    eps: &[f32],
    what: &str,
) {
    let a = cfg.action_dim;
    let w = cfg.stats_width();
    let mut errs = vec![("action", action_error(cfg, got, want, eps))];
    for (name, cols) in [("mean", 0..a), ("log_std", a..2 * a)] {
        let g = columns(&got.stats, w, cols.clone());
        let r = columns(&want.stats, w, cols);
        errs.push((name, elementwise_error(&g, &r)));
    }
    // Per row, the sum of the magnitudes of the terms that log_prob adds up.
    let terms: Vec<f64> = (0..want.action.len() / a)
        .map(|row| {
            (0..a)
                .map(|i| {
                    let k = row * a + i;
                    let e = eps[k] as f64;
                    let act = want.action[k];
                    0.5 * e * e
                        + want.stats[row * w + cfg.log_std_col(i)].abs()
                        + 0.92
                        + ((1.0 - act * act).max(0.0) + 1e-6).ln().abs()
                })
                .sum()
        })
        .collect();
    for (name, col, scale) in [
        ("log_prob", cfg.log_prob_col(), 1.0),
        ("entropy", cfg.entropy_col(), 1.0),
        ("scaled_entropy", cfg.scaled_entropy_col(), a as f64),
    ] {
        let err = (0..terms.len())
            .map(|row| {
                let (g, r) = (got.stats[row * w + col] as f64, want.stats[row * w + col]);
                let d = (g - r).abs() / r.abs().max(scale * terms[row]);
                if d.is_nan() { f64::INFINITY } else { d }
            })
            .fold(0.0, f64::max);
        errs.push((name, err));
    }
    for (name, err) in errs {
        assert!(
            err <= TOL,
            "policy {what} {cfg:?} rows={}: {name} error {err:e} > {TOL:e}",
            got.action.len() / a
        );
    }
}

fn check(gpu: &Gpu, cfg: &PolicyConfig, rows: usize, h: &[f32], eps: &[f32], what: &str) {
    let got = gpu_sample(gpu, cfg, rows, h, eps);
    let want = mirror::sample(cfg, rows, h, eps);
    compare(
        cfg,
        &got,
        &want,
        eps,
        &format!("{what} checks={:?}", gpu.shader_checks()),
    );
}

#[test]
fn random_rows_and_action_dims() {
    let mut r = rng("policy_random");
    for gpu in gpus() {
        // 1 to 64 threads per row; dog (38), humanoid (21), h1hand (61).
        for a in [1, 2, 5, 6, 21, 38, 61, 100, 300] {
            for rows in [1, 7, 300] {
                let cfg = PolicyConfig::new(a);
                let h = uniform(&mut r, rows * 2 * a, 3.0);
                let eps = normals(&mut r, rows * a);
                check(gpu, &cfg, rows, &h, &eps, "random");
            }
        }
    }
}

#[test]
fn saturated_inputs() {
    let mut r = rng("policy_edges");
    let means = [0.0, 1e-4, -1e-4, 0.3, -2.0, 9.0, -9.5, 20.0, -20.0, 80.0];
    let raw_std = [0.0, 20.0, -20.0, 1e-4, 3.0, -3.0, 60.0, -60.0];
    let noise = [0.0, 5.0, -5.0, 1e-3, 1.0, -2.5];
    for gpu in gpus() {
        // Every combination once, A = 1 (one row each) ...
        let cfg = PolicyConfig::new(1);
        let (mut h, mut eps) = (Vec::new(), Vec::new());
        for m in means {
            for s in raw_std {
                for e in noise {
                    h.extend([m as f32, s as f32]);
                    eps.push(e as f32);
                }
            }
        }
        check(gpu, &cfg, eps.len(), &h, &eps, "every combination, A = 1");
        // ... and mixed in rows of 38.
        let cfg = PolicyConfig::new(38);
        let rows = 41;
        let pick =
            |r: &mut rand::rngs::StdRng, set: &[f64]| set[r.random_range(0..set.len())] as f32;
        let mut h = Vec::new();
        let mut eps = Vec::new();
        for _ in 0..rows {
            for _ in 0..38 {
                h.push(pick(&mut r, &means));
            }
            for _ in 0..38 {
                h.push(pick(&mut r, &raw_std));
            }
            for _ in 0..38 {
                eps.push(pick(&mut r, &noise));
            }
        }
        check(gpu, &cfg, rows, &h, &eps, "mixed saturated rows");
        // Whole rows at the extremes: raw log-std +-20, eps +-5.
        let mut h = Vec::new();
        let mut eps = Vec::new();
        for (s, e) in [(20.0, 5.0), (20.0, -5.0), (-20.0, 5.0), (-20.0, -5.0)] {
            h.extend(vec![0.5f32; 38]);
            h.extend(vec![s; 38]);
            eps.extend(vec![e; 38]);
        }
        check(gpu, &cfg, 4, &h, &eps, "extreme rows");
    }
}

#[test]
fn other_log_std_ranges() {
    let mut r = rng("policy_range");
    for gpu in gpus() {
        // BMPC's [-3, 1] and a narrow range.
        for (lo, hi) in [(-3.0, 1.0), (-0.5, -0.25)] {
            let cfg = PolicyConfig::new(6).with_log_std_range(lo, hi);
            let rows = 77;
            let h = uniform(&mut r, rows * 12, 5.0);
            let eps = normals(&mut r, rows * 6);
            check(gpu, &cfg, rows, &h, &eps, "range");
        }
    }
}

/// Rows at offsets into larger buffers, and action rows in blocks with gaps between them (a
/// population's policy trajectories): nothing outside the rows is written.
#[test]
fn offsets_into_larger_buffers() {
    let mut r = rng("policy_offsets");
    let cfg = PolicyConfig::new(7);
    let (a, w, rows) = (7, cfg.stats_width(), 37);
    for action_blocks in [None, Some((10, 10 * a + 5)), Some((37, 37 * a))] {
        let at = PolicyOffsets {
            h: 5,
            eps: 3 * a,
            action: 2 * rows * a + 1,
            stats: 9,
            action_blocks,
        };
        // Where row i's actions go.
        let (block, stride) = action_blocks.unwrap_or((rows, rows * a));
        let row_at = |i: usize| at.action + (i / block) * stride + (i % block) * a;
        let h = uniform(&mut r, at.h + rows * 2 * a + 4, 3.0);
        let eps = normals(&mut r, at.eps + rows * a + 2);
        let want = mirror::sample(
            &cfg,
            rows,
            &h[at.h..at.h + rows * 2 * a],
            &eps[at.eps..at.eps + rows * a],
        );
        for gpu in gpus() {
            let lens = (row_at(rows - 1) + a + 6, at.stats + rows * w + 3);
            let Outputs { action, stats } = gpu_sample_at(gpu, &cfg, rows, (&h, &eps), at, lens);
            let in_rows =
                |i: usize| (0..rows).any(|row| (row_at(row)..row_at(row) + a).contains(&i));
            for (i, v) in action.iter().enumerate() {
                if !in_rows(i) {
                    assert_eq!(
                        v.to_bits(),
                        POISON,
                        "action element {i} outside the rows was written"
                    );
                }
            }
            for (i, v) in stats.iter().enumerate() {
                if i < at.stats || i >= at.stats + rows * w {
                    assert_eq!(
                        v.to_bits(),
                        POISON,
                        "stats element {i} outside the rows was written"
                    );
                }
            }
            let got = Outputs {
                action: (0..rows)
                    .flat_map(|row| action[row_at(row)..row_at(row) + a].to_vec())
                    .collect(),
                stats: stats[at.stats..at.stats + rows * w].to_vec(),
            };
            compare(
                &cfg,
                &got,
                &want,
                &eps[at.eps..at.eps + rows * a],
                &format!("offsets, action blocks {action_blocks:?}"),
            );
        }
    }
    // Overlapping or empty blocks are refused.
    let gpu = &gpus()[0];
    let buf = |n| GpuBuffer::<f32>::new(gpu, "buf", n).unwrap();
    let (hb, eb, ab, sb) = (
        buf(rows * 2 * a),
        buf(rows * a),
        buf(10 * rows * a),
        buf(rows * w),
    );
    let io = PolicyBuffers {
        h: &hb,
        eps: &eb,
        action: &ab,
        stats: &sb,
    };
    let mut rec = Recorder::new(gpu);
    for blocks in [(0, 100), (10, 10 * a - 1), (10, 100 * rows * a)] {
        let at = PolicyOffsets {
            action_blocks: Some(blocks),
            ..Default::default()
        };
        let e = policy::record_sample_at(&mut rec, &cfg, rows, io, at).unwrap_err();
        assert!(matches!(e, Error::Shape(_)), "{blocks:?}: {e:?}");
    }
    assert_eq!(rec.dispatches(), 0);
}

#[test]
fn two_dimensional_dispatch_past_the_workgroup_limit() {
    let mut r = rng("policy_grid");
    for gpu in small_grid_gpus(7) {
        // A = 38: 4 rows per workgroup, 38 and 49 workgroups; A = 2: 64 rows, 32 workgroups.
        for (a, rows) in [(38, 150), (38, 196), (2, 2000)] {
            let cfg = PolicyConfig::new(a);
            let h = uniform(&mut r, rows * 2 * a, 3.0);
            let eps = normals(&mut r, rows * a);
            check(&gpu, &cfg, rows, &h, &eps, "2-D grid");
        }
        let cfg = PolicyConfig::new(38);
        let b = GpuBuffer::<f32>::new(&gpu, "b", 197 * cfg.stats_width()).unwrap();
        let io = PolicyBuffers {
            h: &b,
            eps: &b,
            action: &b,
            stats: &b,
        };
        let mut rec = Recorder::new(&gpu);
        let err = policy::record_sample(&mut rec, &cfg, 197, io).unwrap_err();
        assert!(matches!(err, Error::Limit(_)), "{err:?}");
    }
}

#[test]
fn bad_configurations_and_buffers_are_errors() {
    let gpu = &gpus()[0];
    let big = GpuBuffer::<f32>::new(gpu, "big", 10_000).unwrap();
    let io = PolicyBuffers {
        h: &big,
        eps: &big,
        action: &big,
        stats: &big,
    };
    let mut rec = Recorder::new(gpu);
    for cfg in [
        PolicyConfig::new(0),
        PolicyConfig::new(4).with_log_std_range(2.0, -10.0),
        PolicyConfig::new(4).with_log_std_range(1.0, 1.0),
        PolicyConfig::new(4).with_log_std_range(f32::NAN, 1.0),
        PolicyConfig::new(4).with_log_std_range(-10.0, f32::INFINITY),
    ] {
        let e = policy::record_sample(&mut rec, &cfg, 3, io).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{cfg:?}: {e:?}");
        assert!(cfg.check().is_err());
    }

    let cfg = PolicyConfig::new(4);
    let rows = 10;
    let h = GpuBuffer::<f32>::new(gpu, "h", rows * 8).unwrap();
    let eps = GpuBuffer::<f32>::new(gpu, "eps", rows * 4).unwrap();
    let action = GpuBuffer::<f32>::new(gpu, "action", rows * 4).unwrap();
    let stats = GpuBuffer::<f32>::new(gpu, "stats", rows * 11).unwrap();
    let short = GpuBuffer::<f32>::new(gpu, "short", rows * 4 - 1).unwrap();
    let ok = PolicyBuffers {
        h: &h,
        eps: &eps,
        action: &action,
        stats: &stats,
    };
    for (name, io) in [
        ("h", PolicyBuffers { h: &eps, ..ok }),
        ("eps", PolicyBuffers { eps: &short, ..ok }),
        (
            "action",
            PolicyBuffers {
                action: &short,
                ..ok
            },
        ),
        ("stats", PolicyBuffers { stats: &h, ..ok }),
    ] {
        let e = policy::record_sample(&mut rec, &cfg, rows, io).unwrap_err();
        assert!(matches!(e, Error::Shape(_)), "{name}: {e:?}");
        assert!(e.to_string().contains(name), "{name}: {e}");
    }
    for at in [
        PolicyOffsets {
            h: 1,
            ..Default::default()
        },
        PolicyOffsets {
            stats: 1,
            ..Default::default()
        },
    ] {
        let e = policy::record_sample_at(&mut rec, &cfg, rows, ok, at).unwrap_err();
        assert!(matches!(e, Error::Shape(_)), "{at:?}: {e:?}");
    }
    assert_eq!(rec.dispatches(), 0);
    policy::record_sample(&mut rec, &cfg, 0, ok).unwrap();
    policy::record_sample(&mut rec, &cfg, rows, ok).unwrap();
    assert_eq!(rec.dispatches(), 1);
    rec.submit().unwrap();
}

#[test]
fn the_mirror_is_tdmpc2s_formula() {
    // A = 1, h = (0, 0), eps = 0: log_std = -10 + 6 = -4, action = mean = 0,
    // lp_pre = 4 - log(2 pi) / 2, squash term ln(1 + 1e-6).
    let cfg = PolicyConfig::new(1);
    let s = mirror::sample(&cfg, 1, &[0.0, 0.0], &[0.0]);
    let lp_pre = 4.0 - 0.5 * (2.0 * std::f64::consts::PI).ln();
    let lp = lp_pre - 1e-6f64.ln_1p();
    assert_eq!(s.action, vec![0.0]);
    assert_eq!(&s.stats[..2], &[0.0, -4.0]);
    assert!((s.stats[2] - lp).abs() < 1e-12);
    assert!((s.stats[3] + lp).abs() < 1e-12);
    assert!((s.stats[4] + lp * lp_pre / (lp + 1e-8)).abs() < 1e-12);
    // A = 2: scaled entropy is about -A times the pre-squash log-prob (tdmpc2 issue #76).
    let cfg = PolicyConfig::new(2);
    let s = mirror::sample(&cfg, 1, &[0.3, -0.7, 1.5, -2.0], &[0.4, -1.1]);
    let ls = |raw: f64| -10.0 + 6.0 * (raw.tanh() + 1.0);
    let pre: f64 = [(0.4, 1.5), (-1.1, -2.0)]
        .iter()
        .map(|&(e, raw)| -0.5 * e * e - ls(raw as f32 as f64) - 0.918_938_533_204_672_7)
        .sum();
    assert!((s.stats[6] + 2.0 * pre).abs() < 1e-6 * pre.abs());
    assert!((s.action[0] - (0.3f32 as f64 + 0.4f32 as f64 * ls(1.5).exp()).tanh()).abs() < 1e-12);
}
