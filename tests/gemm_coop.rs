//! The tensor-core GEMM against its mirror (operands rounded to f16, sums in f64) on fresh
//! random inputs with poisoned outputs: every transposition and tile, ragged sizes (1, 17, 33,
//! 150, 260: partial tiles and several K-steps), aligned sizes of every transposition (the
//! vector loads of both stagings), batches with a shared operand, a population's agents (each
//! its own operands, a member-shared one included, as the training passes' weights), offsets
//! and padded leading dimensions, accumulation, bias and alpha.
//!
//! Where the adapter has no cooperative matrices (lavapipe, GL, most non-NVIDIA drivers) the
//! test checks the other half of the contract instead: `gemm_coop::record` is
//! `Error::Unsupported` naming what is missing, and `record_or_f32` runs the f32 kernel and
//! matches the exact f32 mirror. Each run prints which path it exercised.
//!
//! Tolerance: 1e-4 of max(|reference|, rms(reference)) per element against the f16-rounded
//! mirror. Products of f16 values are exact in f32, so the only difference is f32 rounding of
//! the partial sums (K <= 300 terms, a few 1e-7 each relative to the partial sums' scale).
//! Against the unrounded product the error is that of the f16 operands, ~2^-11 relative per
//! term; the test prints it and bounds it at 1e-2.

mod common;

use common::{POISON, gpus, rel_error, rng, uniform};
use pompc::kernels::gemm::{Bias, Gemm, Mat, Operands};
use pompc::kernels::gemm_coop::{self, CoopScale, CoopTile, GemmPath};
use pompc::reference::gemm::{self as f32_mirror, Layout};
use pompc::reference::gemm_coop as mirror;
use pompc::{Error, Gpu, GpuBuffer, Recorder};
use rand::Rng;

const TOL: f64 = 1e-4;

#[derive(Clone, Copy, Debug)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    ta: bool,
    tb: bool,
    acc: bool,
    bias: bool,
    alpha: f32,
    pad: usize,
    shared_b: bool,
    /// Agents: `batch` members each.
    agents: usize,
    /// Operand scaling.
    scale: CoopScale,
    /// Magnitudes of A's and B's values.
    mag: (f32, f32),
    /// Each row of op(A) and column of op(B) times its own power of two (2^-15 to 2^12), so
    /// that a scale found for the wrong line shows (one batch, no padding).
    graded: bool,
}

impl Case {
    fn plain(m: usize, n: usize, k: usize, ta: bool, tb: bool) -> Case {
        Case {
            m,
            n,
            k,
            batch: 1,
            ta,
            tb,
            acc: false,
            bias: false,
            alpha: 1.0,
            pad: 0,
            shared_b: false,
            agents: 1,
            scale: CoopScale::NONE,
            mag: (1.0, 1.0),
            graded: false,
        }
    }
}

enum Kernel {
    Coop(Option<CoopTile>),
    OrF32,
}

/// Run `case` with `kernel`; returns (error against the f16 mirror, error against the exact
/// mirror, the path used).
fn run(gpu: &Gpu, case: Case, kernel: Kernel, r: &mut impl Rng) -> (f64, f64, GemmPath) {
    let Case {
        m,
        n,
        k,
        batch,
        ta,
        tb,
        acc,
        bias,
        alpha,
        pad,
        shared_b,
        agents,
        scale,
        mag,
        graded,
    } = case;
    // `batch` members per agent; every agent's block after the previous one's.
    let total = batch * agents;
    let (ar, ac) = if ta { (k, m) } else { (m, k) };
    let (br, bc) = if tb { (n, k) } else { (k, n) };
    let lay = |rows: usize, cols: usize, shared: bool| {
        let batch_stride = if shared { 0 } else { rows * (cols + pad) + pad };
        Layout {
            offset: pad * 3,
            ld: cols + pad,
            batch_stride,
            agent_stride: (batch - 1) * batch_stride + rows * (cols + pad) + pad,
        }
    };
    let (la, lb, lc) = (lay(ar, ac, false), lay(br, bc, shared_b), lay(m, n, false));
    let len = |l: &Layout, rows: usize| {
        l.offset + (agents - 1) * l.agent_stride + (batch - 1) * l.batch_stride + rows * l.ld
    };
    let mut a = uniform(r, len(&la, ar), mag.0);
    let mut b = uniform(r, len(&lb, br), mag.1);
    if graded {
        assert!(
            pad == 0 && total == 1 && !acc && !bias && alpha == 1.0,
            "graded cases: one batch, no padding, C = A B alone"
        );
        grade_lines(&mut a, &mut b, (la.ld, lb.ld), (ta, tb));
    }
    let c0 = uniform(r, len(&lc, m), 1.0);
    let bias_v = uniform(r, pad + total * n, 1.0);
    let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let bias64 = f(&bias_v);
    let (a64, b64) = (f(&a), f(&b));
    let bias_lay = Layout {
        offset: pad,
        ld: n,
        batch_stride: n,
        agent_stride: batch * n,
    };
    let bias_arg64 = bias.then_some((&bias64[..], bias_lay));
    let mut want16 = f(&c0);
    mirror::gemm_coop_scaled(
        m,
        n,
        k,
        (total, agents),
        (ta, tb),
        alpha as f64,
        acc,
        (&a64, la),
        (&b64, lb),
        (&mut want16, lc),
        bias_arg64,
        (scale.a, scale.b),
    );
    let mut want = f(&c0);
    f32_mirror::gemm(
        m,
        n,
        k,
        (total, agents),
        (ta, tb),
        alpha as f64,
        acc,
        (&a64, la),
        (&b64, lb),
        (&mut want, lc),
        bias_arg64,
    );
    let ab = GpuBuffer::from_slice(gpu, "a", &a).unwrap();
    let bb = GpuBuffer::from_slice(gpu, "b", &b).unwrap();
    let biasb = GpuBuffer::from_slice(gpu, "bias", &bias_v).unwrap();
    let mut init = c0.clone();
    if !acc {
        for bt in 0..total {
            let base = lc.offset + (bt / batch) * lc.agent_stride + (bt % batch) * lc.batch_stride;
            for i in 0..m {
                for j in 0..n {
                    init[base + i * lc.ld + j] = f32::from_bits(POISON);
                }
            }
        }
    }
    let cb = GpuBuffer::from_slice(gpu, "c", &init).unwrap();
    let mat = |buf, l: Layout| Mat {
        buf,
        offset: l.offset,
        ld: l.ld,
        batch_stride: l.batch_stride,
        agent_stride: l.agent_stride,
        segment_stride: 0,
    };
    let op = Gemm {
        m,
        n,
        k,
        trans_a: ta,
        trans_b: tb,
        alpha,
        accumulate: acc,
        batch: total,
        agents,
        segments: 1,
    };
    let bias_arg = bias.then_some(Bias {
        buf: &biasb,
        offset: pad,
        batch_stride: n,
        agent_stride: batch * n,
    });
    let mut rec = Recorder::new(gpu);
    let x = Operands {
        a: mat(&ab, la),
        b: mat(&bb, lb),
        c: mat(&cb, lc),
        bias: bias_arg,
    };
    let path = match kernel {
        Kernel::Coop(Some(t)) => {
            gemm_coop::record_scaled_with_tile(&mut rec, &op, x, t, scale).unwrap();
            GemmPath::TensorCore
        }
        Kernel::Coop(None) if scale == CoopScale::NONE => {
            gemm_coop::record(&mut rec, &op, x).unwrap();
            GemmPath::TensorCore
        }
        Kernel::Coop(None) => {
            gemm_coop::record_scaled(&mut rec, &op, x, scale).unwrap();
            GemmPath::TensorCore
        }
        Kernel::OrF32 => gemm_coop::record_or_f32(&mut rec, &op, x).unwrap(),
    };
    let h = rec.read(&cb);
    let got = rec.finish().unwrap().get(&h).unwrap();
    let exact = if graded {
        normwise_error(
            &got,
            &want,
            (&a64, la.ld),
            (&b64, lb.ld),
            (m, n, k),
            (ta, tb),
        )
    } else {
        rel_error(&got, &want)
    };
    (rel_error(&got, &want16), exact, path)
}

/// Graded lines: op(A)'s rows and op(B)'s columns multiplied by 2^-15 to 2^12 (line i by
/// 2^(3 (i mod 10) - 15)), so that every line needs its own scale. `a` and `b` are stored
/// row-major with leading dimensions `lda`, `ldb`; op(A)'s row is A's stored row, or its
/// stored column when transposed, op(B)'s column B's stored column, or its stored row.
fn grade_lines(a: &mut [f32], b: &mut [f32], (lda, ldb): (usize, usize), (ta, tb): (bool, bool)) {
    let grade = |line: usize| 2f32.powi(3 * (line % 10) as i32 - 15);
    for (i, v) in a.iter_mut().enumerate() {
        *v *= grade(if ta { i % lda } else { i / lda });
    }
    for (i, v) in b.iter_mut().enumerate() {
        *v *= grade(if tb { i / ldb } else { i % ldb });
    }
}

/// C = op(A) op(B) of one unpadded batch, row-major with leading dimensions `lda`, `ldb`:
/// exactly (f64) and through the f16 mirror with both operands scaled.
fn exact_and_scaled(
    (m, n, k): (usize, usize, usize),
    (ta, tb): (bool, bool),
    (a, lda): (&[f64], usize),
    (b, ldb): (&[f64], usize),
) -> (Vec<f64>, Vec<f64>) {
    let lay = |ld: usize| Layout {
        offset: 0,
        ld,
        batch_stride: 0,
        agent_stride: 0,
    };
    let mut exact = vec![0.0; m * n];
    let mut scaled = exact.clone();
    f32_mirror::gemm(
        m,
        n,
        k,
        (1, 1),
        (ta, tb),
        1.0,
        false,
        (a, lay(lda)),
        (b, lay(ldb)),
        (&mut exact, lay(n)),
        None,
    );
    mirror::gemm_coop_scaled(
        m,
        n,
        k,
        (1, 1),
        (ta, tb),
        1.0,
        false,
        (a, lay(lda)),
        (b, lay(ldb)),
        (&mut scaled, lay(n)),
        None,
        (true, true),
    );
    (exact, scaled)
}

/// max |got - want| / (|op(A) row i| |op(B) column j|) over C: the error of each dot product
/// against the Cauchy-Schwarz bound of its terms. For graded lines (C's entries spanning 2^54)
/// an elementwise error against max(|C_ij|, rms C) is dominated by cancelling sums in the
/// largest lines (measured 1.05e-2 on an H100 where the GPU matched the scaled f16 mirror to
/// 3.7e-7); this is what f16's rounding bounds (about 2^-11), and what it exceeds by orders of
/// magnitude where a line's values flush to f16 subnormals unscaled.
fn normwise_error(
    got: &[f32],
    want: &[f64],
    (a, lda): (&[f64], usize),
    (b, ldb): (&[f64], usize),
    (m, n, k): (usize, usize, usize),
    (ta, tb): (bool, bool),
) -> f64 {
    let op_a = |i: usize, kk: usize| if ta { a[kk * lda + i] } else { a[i * lda + kk] };
    let op_b = |kk: usize, j: usize| if tb { b[j * ldb + kk] } else { b[kk * ldb + j] };
    let norm = |f: &dyn Fn(usize) -> f64| (0..k).map(|kk| f(kk).powi(2)).sum::<f64>().sqrt();
    let rows: Vec<f64> = (0..m).map(|i| norm(&|kk| op_a(i, kk))).collect();
    let cols: Vec<f64> = (0..n).map(|j| norm(&|kk| op_b(kk, j))).collect();
    let mut worst = 0.0f64;
    for i in 0..m {
        for j in 0..n {
            let d =
                (got[i * n + j] as f64 - want[i * n + j]).abs() / (rows[i] * cols[j]).max(1e-300);
            worst = worst.max(if d.is_nan() { f64::INFINITY } else { d });
        }
    }
    worst
}

fn random_case(r: &mut impl Rng, i: usize) -> Case {
    Case {
        m: r.random_range(1..160),
        n: r.random_range(1..160),
        k: r.random_range(1..300),
        batch: 1 + i % 3,
        ta: i % 2 == 1,
        tb: i % 4 >= 2,
        acc: i.is_multiple_of(3),
        bias: i % 3 != 1,
        alpha: [1.0, -0.5, 2.0][i % 3],
        pad: [0, 3, 5][i % 3],
        shared_b: i % 5 == 4,
        agents: 1 + i % 4 / 2,
        scale: [CoopScale::NONE, CoopScale::BOTH][i % 2],
        mag: (1.0, 1.0),
        graded: false,
    }
}

#[test]
fn tensor_core_gemm_matches_the_f16_mirror_or_falls_back_to_f32() {
    let mut r = rng("gemm_coop");
    for gpu in gpus() {
        match gpu.tensor_cores() {
            Ok(sg) => {
                eprintln!(
                    "gemm_coop: TENSOR-CORE path, subgroup {sg}, on {}",
                    gpu.describe()
                );
                let mut worst = (0.0f64, 0.0f64);
                // Tiles the device cannot hold (XLARGE's workgroup memory) are never chosen.
                let tiles = CoopTile::ALL.iter().filter(|t| t.check(gpu, sg).is_ok());
                for (i, tile) in tiles.enumerate() {
                    let mut cases = Vec::new();
                    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                        let (m, n, k) = (
                            r.random_range(1..300),
                            r.random_range(1..300),
                            r.random_range(1..300),
                        );
                        cases.push(Case::plain(m, n, k, ta, tb));
                    }
                    // 16-byte aligned rows take the unchecked vector loads, K-contiguous (x W^T,
                    // the linear layer's layout) or not (sizes multiples of 8: dY^T X and
                    // dY W of the backward passes); a ragged K ends in the checked path.
                    for (m, n, k) in [(256, 128, 512), (100, 70, 264), (64, 48, 100)] {
                        cases.push(Case::plain(m, n, k, false, true));
                    }
                    for (ta, tb) in [(false, false), (true, false), (true, true)] {
                        cases.push(Case::plain(128, 96, 200, ta, tb));
                        cases.push(Case::plain(104, 64, 72, ta, tb));
                    }
                    // Two agents, the B operand shared by each agent's members (weights).
                    for (ta, tb) in [(false, true), (false, false), (true, false)] {
                        cases.push(Case {
                            batch: 3,
                            agents: 2,
                            shared_b: true,
                            bias: true,
                            ..Case::plain(72, 40, 64, ta, tb)
                        });
                    }
                    // Scaled operands far outside f16's range (gradients of 1e-7 times
                    // observations of 1e5), each training layout, aligned and ragged:
                    // within f16's relative precision of the exact product.
                    for (ta, tb) in [(false, true), (false, false), (true, false)] {
                        for (m, n, k) in [(64, 96, 136), (37, 21, 50)] {
                            cases.push(Case {
                                scale: CoopScale::BOTH,
                                mag: (1e-7, 1e5),
                                agents: 2,
                                ..Case::plain(m, n, k, ta, tb)
                            });
                        }
                    }
                    cases.push(Case {
                        scale: CoopScale { a: true, b: false },
                        mag: (3e-6, 1.0),
                        ..Case::plain(48, 64, 96, true, false)
                    });
                    // Lines of very different magnitudes: each needs its own scale.
                    for (ta, tb) in [(false, true), (false, false), (true, false), (true, true)] {
                        for (m, n, k) in [(40, 56, 72), (23, 37, 45)] {
                            cases.push(Case {
                                scale: CoopScale::BOTH,
                                graded: true,
                                ..Case::plain(m, n, k, ta, tb)
                            });
                        }
                    }
                    for case in cases {
                        let (e16, e32, _) = run(gpu, case, Kernel::Coop(Some(*tile)), &mut r);
                        // Graded cases' error is normwise (the scaled mirror's: about 1.3e-4).
                        let exact_tol = if case.graded { 1e-3 } else { 1e-2 };
                        assert!(
                            e16 < TOL && e32 < exact_tol,
                            "{case:?} tile {tile} ({i}): error {e16:e} vs the f16 mirror, \
                             {e32:e} vs exact"
                        );
                        worst = (worst.0.max(e16), worst.1.max(e32));
                    }
                }
                for i in 0..12 {
                    let case = random_case(&mut r, i);
                    let (e16, e32, _) = run(gpu, case, Kernel::Coop(None), &mut r);
                    assert!(
                        e16 < TOL && e32 < 1e-2,
                        "{case:?}: error {e16:e} vs the f16 mirror, {e32:e} vs exact"
                    );
                    worst = (worst.0.max(e16), worst.1.max(e32));
                }
                for (m, n, k) in [(1, 1, 1), (17, 33, 70), (260, 150, 33)] {
                    let case = Case::plain(m, n, k, false, true);
                    let (e16, e32, path) = run(gpu, case, Kernel::OrF32, &mut r);
                    assert_eq!(path, GemmPath::TensorCore);
                    assert!(e16 < TOL && e32 < 1e-2, "{case:?}: {e16:e} {e32:e}");
                }
                eprintln!(
                    "gemm_coop: worst error {:.2e} vs the f16 mirror, {:.2e} vs the exact \
                     product ({:?} checks)",
                    worst.0,
                    worst.1,
                    gpu.shader_checks()
                );
            }
            Err(why) => {
                eprintln!(
                    "gemm_coop: F32 FALLBACK path (no tensor cores: {why}) on {}",
                    gpu.describe()
                );
                let ab = GpuBuffer::<f32>::new(gpu, "a", 16).unwrap();
                let cb = GpuBuffer::<f32>::new(gpu, "c", 16).unwrap();
                let mut rec = Recorder::new(gpu);
                let e = gemm_coop::record(
                    &mut rec,
                    &Gemm::new(4, 4, 4),
                    Operands::new(Mat::rows(&ab, 4), Mat::rows(&ab, 4), Mat::rows(&cb, 4)),
                )
                .unwrap_err();
                assert!(
                    matches!(e, Error::Unsupported(_)) && e.to_string().contains("cooperative"),
                    "{e}"
                );
                for i in 0..6 {
                    let case = random_case(&mut r, i);
                    let (_, e32, path) = run(gpu, case, Kernel::OrF32, &mut r);
                    assert_eq!(path, GemmPath::F32);
                    assert!(e32 < 1e-5, "{case:?}: f32 fallback error {e32:e}");
                }
            }
        }
    }
}

#[test]
fn tiles_are_checked_against_the_device() {
    let gpu = &gpus()[0];
    let bad = CoopTile {
        bm: 24,
        ..CoopTile::MEDIUM
    };
    assert!(bad.check(gpu, 32).is_err());
    assert_eq!(CoopTile::choose(4096, 4096, 1), CoopTile::XLARGE);
    assert_eq!(CoopTile::choose(2048, 2048, 1), CoopTile::LARGE);
    assert_eq!(CoopTile::choose(1, 1, 1), CoopTile::SMALL);
    // The plan step's layers: B = 256 (131072 rows), B = 16, B = 1 (512 rows), policy
    // rollouts.
    assert_eq!(CoopTile::choose(131072, 512, 1), CoopTile::XLARGE);
    assert_eq!(CoopTile::choose(8192, 512, 1), CoopTile::LARGE);
    assert_eq!(CoopTile::choose(512, 512, 1), CoopTile::MEDIUM);
    assert_eq!(CoopTile::choose(256, 512, 1), CoopTile::SMALL);
    // Every tile but XLARGE fits 32 KB of workgroup memory; XLARGE 48 KB, and the choice
    // falls back to LARGE where it does not fit.
    for t in CoopTile::ALL {
        let cap = if t == CoopTile::XLARGE { 48 } else { 32 } * 1024;
        assert!(
            t.workgroup_bytes() <= cap,
            "{t}: {} bytes",
            t.workgroup_bytes()
        );
    }
    if let Ok(sg) = gpu.tensor_cores() {
        let t = CoopTile::choose_on(gpu, sg, 131072, 512, 1);
        assert!(
            t.check(gpu, sg).is_ok(),
            "{t} chosen on a device that cannot run it"
        );
    }
}

/// The scaled mirror (what `CoopScale` promises, CPU only): each row of op(A) and column of
/// op(B) lands in [2^14, 2^15) before the f16 rounding, so operands of 1e-7 (below f16's
/// normal range) and 1e5 (beyond its largest value) keep f16's relative precision, where the
/// plain rounding flushes the first to zero and the second to infinity.
#[test]
fn scaled_operands_keep_f16_precision_outside_its_range() {
    use pompc::reference::gemm_coop::scale_for;
    assert_eq!(scale_for(1.0), 16384.0);
    assert_eq!(scale_for(1.5), 16384.0);
    assert_eq!(scale_for(3e-6), 2f64.powi(33));
    assert_eq!(scale_for(65536.0), 0.25);
    assert_eq!(scale_for(1e-30), 2f64.powi(60));
    for v in [0.0, f64::INFINITY, f64::NAN] {
        assert_eq!(scale_for(v), 1.0);
    }
    let mut r = rng("gemm_coop_scaled_mirror");
    let (m, n, k) = (9, 7, 40);
    for (ta, tb) in [(false, true), (true, false), (false, false)] {
        let lay = |cols: usize| Layout {
            offset: 0,
            ld: cols,
            batch_stride: 0,
            agent_stride: 0,
        };
        let (la, lb) = (lay(if ta { m } else { k }), lay(if tb { k } else { n }));
        let f = |v: Vec<f32>| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let a = f(uniform(&mut r, m * k, 1e-7));
        let b = f(uniform(&mut r, k * n, 1e5));
        let (exact, scaled) = exact_and_scaled((m, n, k), (ta, tb), (&a, la.ld), (&b, lb.ld));
        let mut plain = vec![0.0; m * n];
        mirror::gemm_coop(
            m,
            n,
            k,
            (1, 1),
            (ta, tb),
            1.0,
            false,
            (&a, la),
            (&b, lb),
            (&mut plain, lay(n)),
            None,
        );
        let err = |got: &[f64]| {
            let g: Vec<f32> = got.iter().map(|&v| v as f32).collect();
            rel_error(&g, &exact)
        };
        let (es, ep) = (err(&scaled), err(&plain));
        assert!(es < 3e-3, "{ta} {tb}: scaled error {es:e}");
        assert!(
            ep > 0.5,
            "{ta} {tb}: plain f16 rounding kept these operands ({ep:e})"
        );
    }
}

/// Graded lines (op(A)'s rows and op(B)'s columns from 2^-15 to 2^12): the scaled f16 mirror
/// keeps every dot product within f16's rounding of its terms' Cauchy-Schwarz bound (what the
/// GPU test checks on a card, the GPU against this mirror), for each layout.
#[test]
fn graded_lines_keep_f16_precision_each_at_its_own_scale() {
    let mut r = rng("gemm_coop_graded_mirror");
    let (m, n, k) = (23, 37, 45);
    for (ta, tb) in [(false, true), (false, false), (true, false), (true, true)] {
        let (ar, ac) = if ta { (k, m) } else { (m, k) };
        let (br, bc) = if tb { (n, k) } else { (k, n) };
        let mut a = uniform(&mut r, ar * ac, 1.0);
        let mut b = uniform(&mut r, br * bc, 1.0);
        grade_lines(&mut a, &mut b, (ac, bc), (ta, tb));
        let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let (a, b) = (f(&a), f(&b));
        let (exact, scaled) = exact_and_scaled((m, n, k), (ta, tb), (&a, ac), (&b, bc));
        let got: Vec<f32> = scaled.iter().map(|&v| v as f32).collect();
        let e = normwise_error(&got, &exact, (&a, ac), (&b, bc), (m, n, k), (ta, tb));
        // Each input rounded to f16 (unit roundoff 2^-11 / 2) and the f32 result: at most
        // about 2^-11 of the bound.
        eprintln!("graded {ta} {tb}: normwise {e:e}");
        assert!(e < 5e-4, "{ta} {tb}: normwise error {e:e}");
    }
}
