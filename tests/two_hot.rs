//! The two-hot kernels (TD-MPC2's `two_hot_inv` and `two_hot`) against their f64 mirror on
//! fresh random inputs with poisoned outputs: odd row counts, several bin counts (1 to 64
//! threads per row), huge logits, targets at bin edges and beyond the range, strided rows, the
//! 2-D dispatch past the per-dimension workgroup limit, and bad requests.
//!
//! Tolerances:
//! * decode: |gpu - ref| <= 1e-5 * max(|ref|, 1), i.e. 1e-5 relative, and 1e-5 absolute for
//!   values below 1 in magnitude (the bin average y has an absolute error of a few f32 ulps of
//!   the bins, which symexp turns into a relative error of the value).
//! * encode: |gpu - ref| <= 3e-7 * (bins - 1) absolute per weight (3e-5 for TD-MPC2's 101
//!   bins; weights are in [0, 1] and sum to 1, so this is relative to the row). A weight is
//!   the fractional part of the bin coordinate t = (symlog x - vmin) / bin_size in
//!   [0, bins - 1], which f32 resolves only to (bins - 1) * 2^-24 or so: symlog x, the bin size
//!   and t each carry a relative rounding error of that order (f32 log's error on symlog x
//!   is multiplied by 1 / bin_size). Measured on lavapipe: 1.2e-5 at 101 bins, 4.8e-5 at 300.

mod common;

use common::{POISON, gpus, rng, small_grid_gpus, uniform};
use pompc::kernels::two_hot::{self, RowLayout, TwoHotConfig};
use pompc::reference::two_hot as mirror;
use pompc::{Error, Gpu, GpuBuffer, Recorder};
use rand::Rng;

const DECODE_TOL: f64 = 1e-5;
/// Per-weight absolute tolerance of encode: 3e-7 per bin interval (see the module docs).
fn encode_tol(cfg: &TwoHotConfig) -> f64 {
    3e-7 * (cfg.bins - 1).max(64) as f64
}

fn decode_error(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            let d = (*g as f64 - w).abs() / w.abs().max(1.0);
            if d.is_nan() { f64::INFINITY } else { d }
        })
        .fold(0.0, f64::max)
}

fn abs_error(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            let d = (*g as f64 - w).abs();
            if d.is_nan() { f64::INFINITY } else { d }
        })
        .fold(0.0, f64::max)
}

fn gpu_decode(gpu: &Gpu, cfg: &TwoHotConfig, logits: &[f32]) -> Vec<f32> {
    let rows = logits.len() / cfg.bins;
    let lb = GpuBuffer::from_slice(gpu, "logits", logits).unwrap();
    let vb = GpuBuffer::<f32>::new(gpu, "values", rows).unwrap();
    vb.fill_u32(gpu, POISON).unwrap();
    let mut rec = Recorder::new(gpu);
    two_hot::record_decode(&mut rec, cfg, rows, &lb, &vb).unwrap();
    let h = rec.read(&vb);
    rec.finish().unwrap().get(&h).unwrap()
}

fn gpu_encode(gpu: &Gpu, cfg: &TwoHotConfig, targets: &[f32]) -> Vec<f32> {
    let rows = targets.len();
    let tb = GpuBuffer::from_slice(gpu, "targets", targets).unwrap();
    let ob = GpuBuffer::<f32>::new(gpu, "two-hot", rows * cfg.bins).unwrap();
    ob.fill_u32(gpu, POISON).unwrap();
    let mut rec = Recorder::new(gpu);
    two_hot::record_encode(&mut rec, cfg, rows, &tb, &ob).unwrap();
    let h = rec.read(&ob);
    rec.finish().unwrap().get(&h).unwrap()
}

fn check_decode(gpu: &Gpu, cfg: &TwoHotConfig, logits: &[f32], what: &str) {
    let got = gpu_decode(gpu, cfg, logits);
    let want = mirror::decode(cfg, logits);
    let err = decode_error(&got, &want);
    let i = got
        .iter()
        .zip(&want)
        .position(|(g, w)| (*g as f64 - w).abs() / w.abs().max(1.0) == err || g.is_nan());
    assert!(
        err <= DECODE_TOL,
        "decode {what} {cfg:?} rows={} checks={:?}: error {err:e} > {DECODE_TOL:e} (row {i:?}: \
         gpu {:?}, ref {:?})",
        want.len(),
        gpu.shader_checks(),
        i.map(|i| got[i]),
        i.map(|i| want[i]),
    );
}

fn check_encode(gpu: &Gpu, cfg: &TwoHotConfig, targets: &[f32], what: &str) {
    let got = gpu_encode(gpu, cfg, targets);
    let want = mirror::encode(cfg, targets);
    let err = abs_error(&got, &want);
    let tol = encode_tol(cfg);
    let worst = got
        .iter()
        .zip(&want)
        .position(|(g, w)| (*g as f64 - w).abs() == err || g.is_nan())
        .map(|i| (targets[i / cfg.bins], i % cfg.bins, got[i], want[i]));
    assert!(
        err <= tol,
        "encode {what} {cfg:?} rows={} checks={:?}: error {err:e} > {tol:e} (target, \
         bin, gpu, ref: {worst:?})",
        targets.len(),
        gpu.shader_checks(),
    );
    for (r, row) in got.chunks(cfg.bins).enumerate() {
        let sum: f64 = row.iter().map(|&v| v as f64).sum();
        let nonzero = row.iter().filter(|&&v| v != 0.0).count();
        assert!(
            (sum - 1.0).abs() <= 1e-6 && nonzero <= 2,
            "encode {what}: row {r} (target {}) sums to {sum} with {nonzero} non-zero weights",
            targets[r]
        );
    }
}

/// `n` random logits rows-worth, uniform in [-scale, scale).
fn random_logits(r: &mut impl Rng, rows: usize, bins: usize, scale: f32) -> Vec<f32> {
    uniform(r, rows * bins, scale)
}

#[test]
fn decode_random_logits_odd_rows_and_bin_counts() {
    let mut r = rng("decode_random");
    for gpu in gpus() {
        for cfg in [
            TwoHotConfig::TDMPC2,
            TwoHotConfig::new(2, -10.0, 10.0).unwrap(),
            TwoHotConfig::new(5, -5.0, 3.0).unwrap(),
            TwoHotConfig::new(17, -1.0, 4.0).unwrap(),
            TwoHotConfig::new(300, -10.0, 10.0).unwrap(),
            TwoHotConfig::new(1001, -10.0, 10.0).unwrap(),
        ] {
            for rows in [1, 7, 300] {
                for scale in [1.0, 10.0, 80.0] {
                    let logits = random_logits(&mut r, rows, cfg.bins, scale);
                    check_decode(gpu, &cfg, &logits, &format!("scale {scale}"));
                }
            }
        }
    }
}

#[test]
fn decode_huge_and_degenerate_logits() {
    let mut r = rng("decode_huge");
    let cfg = TwoHotConfig::TDMPC2;
    let k = cfg.bins;
    let mut rows: Vec<Vec<f32>> = Vec::new();
    for hot in [0, 1, 49, 50, 51, 99, 100] {
        for (hi, lo) in [(80.0, -80.0), (80.0, 79.0), (-79.0, -80.0), (1e4, -1e4)] {
            let mut row = vec![lo; k];
            row[hot] = hi;
            rows.push(row);
        }
    }
    for v in [0.0, 80.0, -80.0, 1e4, -1e4, 3.5] {
        rows.push(vec![v; k]); // uniform: value 0
    }
    rows.push(
        (0..k)
            .map(|j| if j % 2 == 0 { 80.0 } else { -80.0 })
            .collect(),
    );
    rows.push((0..k).map(|j| j as f32 * 1.6 - 80.0).collect());
    rows.push((0..k).map(|j| 80.0 - j as f32 * 1.6).collect());
    // Two equal maxima at the ends: the value is symexp(0) = 0.
    let mut ends = vec![-80.0; k];
    ends[0] = 80.0;
    ends[k - 1] = 80.0;
    rows.push(ends);
    for _ in 0..20 {
        rows.push(
            (0..k)
                .map(|_| if r.random::<bool>() { 80.0 } else { -80.0 })
                .collect(),
        );
    }
    let logits: Vec<f32> = rows.concat();
    // The mirror agrees with the closed forms: row 24 (+80 on bin 100, -80 elsewhere) decodes
    // to symexp(10), the uniform rows 28..34 to 0.
    let want = mirror::decode(&cfg, &logits);
    assert!((want[24] - mirror::symexp(10.0)).abs() < 1e-6 * mirror::symexp(10.0));
    assert!(want[28..34].iter().all(|v| v.abs() < 1e-12), "{want:?}");
    for gpu in gpus() {
        check_decode(gpu, &cfg, &logits, "huge");
    }
}

#[test]
fn decode_rows_of_one_q_head_into_a_strided_column() {
    let mut r = rng("decode_strided");
    let cfg = TwoHotConfig::TDMPC2;
    let k = cfg.bins;
    let (num_q, rows, pad) = (3, 37, 5);
    let stride = k + pad;
    let logits = uniform(&mut r, num_q * rows * stride + 11, 20.0);
    for gpu in gpus() {
        for q in 0..num_q {
            let lb = GpuBuffer::from_slice(gpu, "q logits", &logits).unwrap();
            let vb = GpuBuffer::<f32>::new(gpu, "values", 2 * rows + 3).unwrap();
            vb.fill_u32(gpu, POISON).unwrap();
            let at = RowLayout {
                offset: q * rows * stride + 2,
                stride,
            };
            let out_at = RowLayout {
                offset: 1,
                stride: 2,
            };
            let mut rec = Recorder::new(gpu);
            two_hot::record_decode_strided(&mut rec, &cfg, rows, &lb, at, &vb, out_at).unwrap();
            let h = rec.read(&vb);
            let got = rec.finish().unwrap().get(&h).unwrap();
            for (i, v) in got.iter().enumerate() {
                if i % 2 == 1 && i / 2 < rows {
                    let row = i / 2;
                    let s = at.offset + row * stride;
                    let want = mirror::decode_row(&cfg, &logits[s..s + k]);
                    let err = (*v as f64 - want).abs() / want.abs().max(1.0);
                    assert!(err <= DECODE_TOL, "head {q} row {row}: {v} vs {want}");
                } else {
                    assert_eq!(
                        v.to_bits(),
                        POISON,
                        "element {i} outside the rows was written"
                    );
                }
            }
        }
    }
}

#[test]
fn encode_random_targets_odd_rows_and_bin_counts() {
    let mut r = rng("encode_random");
    for gpu in gpus() {
        for cfg in [
            TwoHotConfig::TDMPC2,
            TwoHotConfig::new(2, -10.0, 10.0).unwrap(),
            TwoHotConfig::new(5, -5.0, 3.0).unwrap(),
            TwoHotConfig::new(300, -10.0, 10.0).unwrap(),
        ] {
            for rows in [1, 7, 300] {
                // symlog(x) uniform over the range and 20% beyond each end.
                let span = (cfg.vmax - cfg.vmin) as f64;
                let targets: Vec<f32> = (0..rows)
                    .map(|_| {
                        let y = r.random_range(
                            cfg.vmin as f64 - 0.2 * span..cfg.vmax as f64 + 0.2 * span,
                        );
                        mirror::symexp(y) as f32
                    })
                    .collect();
                check_encode(gpu, &cfg, &targets, "random");
            }
        }
    }
}

#[test]
fn encode_edge_targets_bin_edges_and_range_ends() {
    for cfg in [
        TwoHotConfig::TDMPC2,
        TwoHotConfig::new(5, -5.0, 3.0).unwrap(),
    ] {
        let mut targets: Vec<f32> = vec![
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            1e-7,
            -1e-7,
            1.0,
            -1.0,
            1e4,
            -1e4,
            1e6,
            -1e6,
            1e30,
            -1e30,
            f32::MAX,
            -f32::MAX,
        ];
        // Every bin edge, its f32 neighbours, and the range ends.
        for b in mirror::bins(&cfg) {
            let x = mirror::symexp(b) as f32;
            targets.extend([x, x.next_up(), x.next_down()]);
        }
        for y in [cfg.vmin, cfg.vmax] {
            let x = mirror::symexp(y as f64) as f32;
            targets.extend([x, x.next_up(), x.next_down(), 2.0 * x]);
        }
        for gpu in gpus() {
            check_encode(gpu, &cfg, &targets, "edges");
            // Clamped targets: exactly one-hot at the end bin (TD-MPC2: at y = vmax, k is the
            // last bin, f = 0 and the wrapped bin 0 gets 0).
            let k = cfg.bins;
            let got = gpu_encode(gpu, &cfg, &[1e30, -1e30, f32::MAX, -f32::MAX]);
            for (r, row) in got.chunks(k).enumerate() {
                let hot = if r % 2 == 0 { k - 1 } else { 0 };
                for (j, v) in row.iter().enumerate() {
                    assert_eq!(
                        *v,
                        if j == hot { 1.0 } else { 0.0 },
                        "clamped row {r} bin {j}"
                    );
                }
            }
        }
    }
}

#[test]
fn encode_then_decode_returns_the_target() {
    // softmax(ln w) = w and sum_j w_j bin_j = symlog x inside the range: the two kernels are
    // inverse to each other there.
    let mut r = rng("roundtrip");
    let cfg = TwoHotConfig::TDMPC2;
    let targets: Vec<f32> = (0..300)
        .map(|_| mirror::symexp(r.random_range(-9.99..9.99)) as f32)
        .collect();
    for gpu in gpus() {
        let w = gpu_encode(gpu, &cfg, &targets);
        let logits: Vec<f32> = w.iter().map(|&v| v.max(1e-30).ln()).collect();
        let back = gpu_decode(gpu, &cfg, &logits);
        for (x, b) in targets.iter().zip(&back) {
            let (x, b) = (*x as f64, *b as f64);
            // Encode's error on the weights (see encode_tol) times the bin size.
            assert!(
                (b - x).abs() <= 2e-5 * x.abs().max(1.0),
                "roundtrip {x} -> {b}"
            );
        }
    }
}

#[test]
fn two_dimensional_dispatch_past_the_workgroup_limit() {
    let mut r = rng("grid");
    // At most 7 x 7 workgroups.
    for gpu in small_grid_gpus(7) {
        let big = TwoHotConfig::TDMPC2; // 8 rows per decode workgroup
        let small = TwoHotConfig::new(3, -10.0, 10.0).unwrap(); // 64 rows per workgroup
        // Decode: 38, 42 and 49 workgroups of 8 rows, 8 of 64; encode: 32 and 49 workgroups
        // of 64 elements of 101 bins, 15 of 3 bins.
        for (cfg, rows) in [(big, 300), (big, 333), (big, 392), (small, 500)] {
            let logits = random_logits(&mut r, rows, cfg.bins, 10.0);
            check_decode(&gpu, &cfg, &logits, "2-D grid");
        }
        for (cfg, rows) in [(big, 20), (big, 31), (small, 300)] {
            let targets: Vec<f32> = (0..rows)
                .map(|_| mirror::symexp(r.random_range(-11.0..11.0)) as f32)
                .collect();
            check_encode(&gpu, &cfg, &targets, "2-D grid");
        }
        // Past x * y: an error, not a truncated dispatch.
        let lb = GpuBuffer::<f32>::new(&gpu, "logits", 393 * 101).unwrap();
        let vb = GpuBuffer::<f32>::new(&gpu, "values", 393).unwrap();
        let mut rec = Recorder::new(&gpu);
        let err = two_hot::record_decode(&mut rec, &big, 393, &lb, &vb).unwrap_err();
        assert!(matches!(err, Error::Limit(_)), "{err:?}");
        let err = two_hot::record_encode(&mut rec, &big, 32, &vb, &lb).unwrap_err();
        assert!(matches!(err, Error::Limit(_)), "{err:?}");
    }
}

#[test]
fn decode_seventy_thousand_rows() {
    // Above 65535 rows (the real 2-D path needs 65536 workgroups of 8 rows, which lavapipe
    // would take too long for; the small-grid test covers it).
    let mut r = rng("decode_big");
    let cfg = TwoHotConfig::TDMPC2;
    let rows = 70_001;
    let logits = random_logits(&mut r, rows, cfg.bins, 10.0);
    check_decode(&gpus()[1], &cfg, &logits, "70001 rows");
}

#[test]
fn bad_configurations_and_buffers_are_errors() {
    let gpu = &gpus()[0];
    for (bins, lo, hi) in [
        (0, -10.0, 10.0),
        (1, -10.0, 10.0),
        (101, 10.0, 10.0),
        (101, 10.0, -10.0),
        (101, f32::NAN, 10.0),
        (101, -10.0, f32::INFINITY),
    ] {
        let e = TwoHotConfig::new(bins, lo, hi).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        // Also when the fields are set by hand and a kernel is recorded.
        let cfg = TwoHotConfig {
            bins,
            vmin: lo,
            vmax: hi,
        };
        let b = GpuBuffer::<f32>::new(gpu, "b", 1000).unwrap();
        let mut rec = Recorder::new(gpu);
        let e = two_hot::record_decode(&mut rec, &cfg, 1, &b, &b).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        let e = two_hot::record_encode(&mut rec, &cfg, 1, &b, &b).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        assert_eq!(rec.dispatches(), 0);
    }

    let cfg = TwoHotConfig::TDMPC2;
    let logits = GpuBuffer::<f32>::new(gpu, "logits", 10 * 101).unwrap();
    let short = GpuBuffer::<f32>::new(gpu, "short logits", 10 * 101 - 1).unwrap();
    let values = GpuBuffer::<f32>::new(gpu, "values", 10).unwrap();
    let few = GpuBuffer::<f32>::new(gpu, "few values", 9).unwrap();
    let mut rec = Recorder::new(gpu);
    let shape = |e: Error| {
        assert!(matches!(e, Error::Shape(_)), "{e:?}");
        e.to_string()
    };
    let msg = shape(two_hot::record_decode(&mut rec, &cfg, 10, &short, &values).unwrap_err());
    assert!(
        msg.contains("short logits") || msg.contains("logits"),
        "{msg}"
    );
    shape(two_hot::record_decode(&mut rec, &cfg, 10, &logits, &few).unwrap_err());
    shape(two_hot::record_encode(&mut rec, &cfg, 10, &values, &short).unwrap_err());
    shape(two_hot::record_encode(&mut rec, &cfg, 10, &few, &logits).unwrap_err());
    // An offset that pushes the last row out, and written rows that would overlap.
    shape(
        two_hot::record_decode_strided(
            &mut rec,
            &cfg,
            10,
            &logits,
            RowLayout::at(1, 101),
            &values,
            RowLayout::contiguous(1),
        )
        .unwrap_err(),
    );
    shape(
        two_hot::record_decode_strided(
            &mut rec,
            &cfg,
            10,
            &logits,
            RowLayout::contiguous(101),
            &values,
            RowLayout::at(0, 0),
        )
        .unwrap_err(),
    );
    shape(
        two_hot::record_encode_strided(
            &mut rec,
            &cfg,
            10,
            &values,
            RowLayout::contiguous(1),
            &logits,
            RowLayout::at(0, 100),
        )
        .unwrap_err(),
    );
    assert_eq!(rec.dispatches(), 0);
    // Reads may repeat a row (stride 0), and zero rows record nothing.
    two_hot::record_encode_strided(
        &mut rec,
        &cfg,
        10,
        &values,
        RowLayout::at(3, 0),
        &logits,
        RowLayout::contiguous(101),
    )
    .unwrap();
    two_hot::record_decode(&mut rec, &cfg, 0, &short, &few).unwrap();
    assert_eq!(rec.dispatches(), 1);
    rec.submit().unwrap();
}

#[test]
fn the_mirror_is_tdmpc2s_formula() {
    // Independent closed forms: symlog/symexp invert each other, the bins are the linspace,
    // a target on bin j is one-hot there, between bins it interpolates linearly.
    let cfg = TwoHotConfig::TDMPC2;
    let b = mirror::bins(&cfg);
    assert_eq!((b[0], b[50], b[100]), (-10.0, 0.0, 10.0));
    assert!((b[37] - (-10.0 + 37.0 * 0.2)).abs() < 1e-12);
    for x in [-1e4, -3.0, -1e-3, 0.0, 2e-6, 0.5, 7.0, 1e4] {
        assert!((mirror::symexp(mirror::symlog(x)) - x).abs() <= 1e-12 * x.abs().max(1.0));
    }
    let row = mirror::encode_row(&cfg, mirror::symexp(0.3) as f32);
    // symlog(x) = 0.3 sits half way between bins 51 (0.2) and 52 (0.4).
    assert!((row[51] - 0.5).abs() < 1e-6 && (row[52] - 0.5).abs() < 1e-6);
    let row = mirror::encode_row(&cfg, 1e9);
    assert_eq!((row[100], row[0]), (1.0, 0.0));
}
