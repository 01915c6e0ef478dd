//! The loss kernels (TD-MPC2's soft cross-entropy over two-hot targets, the consistency squared
//! error) against their f64 mirror on fresh random inputs with poisoned outputs, with shader
//! checks on and off: several bin counts, ensembles of heads sharing the targets, odd row
//! counts, rows at offsets and strides (elements between and around them must not change),
//! targets on bin edges and beyond the two-hot range, row weights with rho in {0, 0.5, 0.9,
//! 1}, gradients written, added or skipped, losses written or added, one-pass and two-pass
//! reductions (over 256 partials too), the 2-D grid. The mirror's gradients are checked
//! against central finite differences of the mirror's losses (f64), and the GPU gradients
//! against finite differences of the GPU losses (f32). Bad requests are errors.
//!
//! Tolerances:
//! * Soft cross-entropy loss: `|gpu - ref| <= (1e-6 + 6e-7 (bins - 1)) * M` with
//!   `M = sum_rows |w_r| (1 + max_j |l_j|)`. Per row, lse = m + log s carries a few f32 ulps of
//!   |m| + log(bins); the two-hot weight f is the fraction of a bin position that f32
//!   resolves to about `3e-7 (bins - 1)` (see tests/two_hot.rs), which moves the loss by
//!   `df |l_k - l_{k+1}| <= 2 df max|l|`. The weighted row sum adds a few ulps of M.
//! * Its gradient, per element: `|gpu - ref| <= |w_r| (3e-7 max(bins - 1, 64) + 1e-6 +
//!   6e-8 t)`: the two-hot weight's error as above, a few ulps of a softmax in [0, 1], and the
//!   row weight's: `rho^t` by repeated squaring in f32 carries up to about `t` ulps relative
//!   (each squaring doubles the error before it; 0.65 t ulps measured at t = 299).
//! * Squared error loss: `1e-5 + 6e-8 t_max` relative (non-negative terms: rounding only).
//! * Its gradient: `2e-6 + 6e-8 t` relative per element (`2 w (z - z')`: one rounding of the
//!   difference, a few in the weight's scale, and `rho^t` as above).
//! * Added values (`accumulate`): plus `1e-7 |initial value|` (the f32 rounding of the sum,
//!   at most 6e-8 of it, reaches 0.6 of this).
//! * Mirror against finite differences (f64, step 1e-5): `1e-7 * max(1, max|grad|)`.
//! * GPU against finite differences of the GPU loss (f32, step 1e-2): `2e-3 * max|grad|`:
//!   the f32 loss of a few rows carries about 1e-6 relative, divided by the step that is about
//!   1e-4 of the gradient; the soft cross-entropy's truncation error is about step^2 / 6 of
//!   |w|, and the squared error has none.

mod common;

use common::{POISON, gpus, rng, small_grid_gpus, uniform};
use pompc::kernels::loss::{
    self, Agents, GradOut, LossFlags, LossOp, LossOut, MseConfig, RowWeights, SoftCeConfig,
};
use pompc::kernels::two_hot::{RowLayout, TwoHotConfig};
use pompc::reference::loss as mirror;
use pompc::reference::two_hot as th;
use pompc::{Error, Gpu, GpuBuffer, Recorder};
use rand::Rng;

const FD_TOL: f64 = 1e-7;
const GPU_FD_TOL: f64 = 2e-3;
const MSE_LOSS_TOL: f64 = 1e-5;
const MSE_GRAD_TOL: f64 = 2e-6;
/// Relative error of `rho^t` per step `t` (see the module docs).
const POW_TOL: f64 = 6e-8;

/// The step of row `r` (within its member).
fn step(w: &RowWeights, r: usize) -> f64 {
    (r / w.rows_per_step) as f64
}

fn ce_loss_tol(bins: usize) -> f64 {
    1e-6 + 6e-7 * (bins - 1) as f64
}

fn ce_grad_tol(bins: usize) -> f64 {
    3e-7 * (bins - 1).max(64) as f64 + 1e-6
}

fn poison() -> f32 {
    f32::from_bits(POISON)
}

/// Rows of `width` values at `at` inside a buffer of `len` elements filled with `fill`.
fn place_rows(rows: &[Vec<f32>], at: RowLayout, len: usize, fill: f32) -> Vec<f32> {
    let mut buf = vec![fill; len];
    for (i, row) in rows.iter().enumerate() {
        let s = at.offset + i * at.stride;
        buf[s..s + row.len()].copy_from_slice(row);
    }
    buf
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

/// `index`-th element belongs to one of the rows of a layout: (row, column).
fn in_rows(i: usize, at: RowLayout, rows: usize, width: usize) -> Option<(usize, usize)> {
    if i < at.offset {
        return None;
    }
    let d = i - at.offset;
    // Written layouts have a stride of at least the width.
    let (row, col) = (d / at.stride, d % at.stride);
    (row < rows && col < width).then_some((row, col))
}

/// Targets: symlog uniform over the range and 20% beyond each end, with bin edges, zeros and
/// huge values mixed in.
fn random_targets(r: &mut impl Rng, cfg: &TwoHotConfig, rows: usize) -> Vec<f32> {
    let span = (cfg.vmax - cfg.vmin) as f64;
    let edges = th::bins(cfg);
    (0..rows)
        .map(|_| match r.random_range(0..10) {
            0 => th::symexp(edges[r.random_range(0..edges.len())]) as f32,
            1 => [0.0, 1e30, -1e30, f32::MAX][r.random_range(0..4)],
            _ => th::symexp(
                r.random_range(cfg.vmin as f64 - 0.2 * span..cfg.vmax as f64 + 0.2 * span),
            ) as f32,
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum GradMode {
    Skip,
    Write,
    Add,
}

#[derive(Clone, Copy, Debug)]
struct CeCase {
    bins: TwoHotConfig,
    members: usize,
    rows: usize,
    weights: RowWeights,
    scale: f32,
    grad: GradMode,
    loss_add: bool,
}

fn run_ce(gpu: &Gpu, r: &mut impl Rng, c: CeCase) {
    let k = c.bins.bins;
    let total = c.members * c.rows;
    let tag = format!("{c:?} checks={:?}", gpu.shader_checks());
    let logits: Vec<Vec<f32>> = (0..total).map(|_| uniform(r, k, c.scale)).collect();
    let targets = random_targets(r, &c.bins, c.rows);
    let (l_at, l_len) = random_layout(r, total, k);
    let (t_at, t_len) = random_layout(r, c.rows, 1);
    let (g_at, g_len) = random_layout(r, total, k);
    let l_buf = place_rows(&logits, l_at, l_len, 7.0);
    let t_rows: Vec<Vec<f32>> = targets.iter().map(|&t| vec![t]).collect();
    let t_buf = place_rows(&t_rows, t_at, t_len, 1e3);
    let g_init: Vec<Vec<f32>> = (0..total).map(|_| uniform(r, k, 1.0)).collect();
    let g_buf = match c.grad {
        GradMode::Add => place_rows(&g_init, g_at, g_len, poison()),
        _ => vec![poison(); g_len],
    };
    let slot = r.random_range(0..4);
    let l_init = uniform(r, 4, 10.0);

    let lb = GpuBuffer::from_slice(gpu, "logits", &l_buf).unwrap();
    let tb = GpuBuffer::from_slice(gpu, "targets", &t_buf).unwrap();
    let gb = GpuBuffer::from_slice(gpu, "dlogits", &g_buf).unwrap();
    let losses = GpuBuffer::from_slice(gpu, "losses", &l_init).unwrap();
    let cfg = SoftCeConfig {
        bins: c.bins,
        members: c.members,
        weights: c.weights,
        agents: Agents::ONE,
    };
    let partials = loss::soft_ce_partials(&cfg, c.rows);
    let scratch = (partials > 1 && r.random::<bool>())
        .then(|| GpuBuffer::<f32>::new(gpu, "scratch", partials + 2).unwrap());
    let grad = match c.grad {
        GradMode::Skip => None,
        m => Some(GradOut {
            buf: &gb,
            at: g_at,
            accumulate: matches!(m, GradMode::Add),
        }),
    };
    let mut rec = Recorder::new(gpu);
    loss::record_soft_ce(
        &mut rec,
        &cfg,
        c.rows,
        &lb,
        l_at,
        &tb,
        t_at,
        grad,
        LossOut {
            losses: &losses,
            index: slot,
            accumulate: c.loss_add,
        },
        scratch.as_ref(),
    )
    .unwrap();
    let hl = rec.read(&losses);
    let hg = rec.read(&gb);
    let out = rec.finish().unwrap();
    let got_l = out.get(&hl).unwrap();
    let got_g = out.get(&hg).unwrap();

    let l64: Vec<f64> = logits.iter().flatten().map(|&v| v as f64).collect();
    let (want, want_g) = mirror::soft_ce(&cfg, c.rows, &l64, &targets);
    let m: f64 = (0..total)
        .map(|i| {
            let w = mirror::row_weight(&c.weights, i % c.rows).abs();
            w * (1.0 + logits[i].iter().fold(0.0f64, |a, v| a.max(v.abs() as f64)))
        })
        .sum();
    let base = if c.loss_add { l_init[slot] as f64 } else { 0.0 };
    let err = (got_l[slot] as f64 - (base + want)).abs();
    let tol = ce_loss_tol(k) * m + 1e-7 * base.abs();
    assert!(
        err <= tol,
        "soft CE loss {tag}: gpu {} want {} (error {err:e} > {tol:e})",
        got_l[slot],
        base + want
    );
    for (i, (g, w)) in got_l.iter().zip(&l_init).enumerate() {
        if i != slot {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "soft CE {tag}: loss slot {i} changed"
            );
        }
    }
    for (i, g) in got_g.iter().enumerate() {
        match (c.grad, in_rows(i, g_at, total, k)) {
            (GradMode::Skip, _) | (_, None) => {
                assert_eq!(
                    g.to_bits(),
                    g_buf[i].to_bits(),
                    "soft CE {tag}: gradient element {i} changed"
                )
            }
            (mode, Some((row, j))) => {
                let init = if matches!(mode, GradMode::Add) {
                    g_init[row][j] as f64
                } else {
                    0.0
                };
                let w = mirror::row_weight(&c.weights, row % c.rows).abs();
                let want = init + want_g[row * k + j];
                let t = step(&c.weights, row % c.rows);
                let tol = w * (ce_grad_tol(k) + POW_TOL * t) + 1e-7 * init.abs();
                assert!(
                    (*g as f64 - want).abs() <= tol,
                    "soft CE gradient {tag}: row {row} bin {j} (target {}): gpu {g} want {want}",
                    targets[row % c.rows]
                );
            }
        }
    }
}

fn weights_list(rows: usize) -> [RowWeights; 4] {
    let b = rows.div_ceil(3).max(1);
    [
        RowWeights::new(0.1 / rows as f32, 0.5, b),
        RowWeights::new(1.0, 0.0, b),
        RowWeights::uniform(2.5),
        RowWeights::new(0.3, 0.9, 1),
    ]
}

#[test]
fn soft_ce_against_the_mirror() {
    let mut r = rng("soft_ce");
    let modes = [GradMode::Write, GradMode::Add, GradMode::Skip];
    for gpu in gpus() {
        let mut n = 0;
        for bins in [
            TwoHotConfig::TDMPC2,
            TwoHotConfig::new(2, -10.0, 10.0).unwrap(),
            TwoHotConfig::new(5, -5.0, 3.0).unwrap(),
            TwoHotConfig::new(300, -10.0, 10.0).unwrap(),
        ] {
            for (members, rows) in [(1, 1), (1, 7), (5, 13), (1, 300), (5, 61)] {
                for weights in weights_list(rows) {
                    n += 1;
                    let c = CeCase {
                        bins,
                        members,
                        rows,
                        weights,
                        scale: [1.0, 10.0, 50.0][n % 3],
                        grad: modes[n % 3],
                        loss_add: n % 2 == 0,
                    };
                    run_ce(gpu, &mut r, c);
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct MseCase {
    n: usize,
    members: usize,
    rows: usize,
    weights: RowWeights,
    shared_target_row: bool,
    grad: GradMode,
    loss_add: bool,
}

fn run_mse(gpu: &Gpu, r: &mut impl Rng, c: MseCase) {
    let total = c.members * c.rows;
    let tag = format!("{c:?} checks={:?}", gpu.shader_checks());
    let z: Vec<Vec<f32>> = (0..total).map(|_| uniform(r, c.n, 1.0)).collect();
    let t_rows = if c.shared_target_row { 1 } else { c.rows };
    let tz: Vec<Vec<f32>> = (0..t_rows).map(|_| uniform(r, c.n, 1.0)).collect();
    let (z_at, z_len) = random_layout(r, total, c.n);
    let (mut t_at, t_len) = random_layout(r, t_rows, c.n);
    let (g_at, g_len) = random_layout(r, total, c.n);
    let z_buf = place_rows(&z, z_at, z_len, 5.0);
    let t_buf = place_rows(&tz, t_at, t_len, -5.0);
    if c.shared_target_row {
        t_at.stride = 0;
    }
    let g_init: Vec<Vec<f32>> = (0..total).map(|_| uniform(r, c.n, 1.0)).collect();
    let g_buf = match c.grad {
        GradMode::Add => place_rows(&g_init, g_at, g_len, poison()),
        _ => vec![poison(); g_len],
    };
    let slot = r.random_range(0..3);
    let l_init = uniform(r, 3, 10.0);
    let zb = GpuBuffer::from_slice(gpu, "z", &z_buf).unwrap();
    let tb = GpuBuffer::from_slice(gpu, "z target", &t_buf).unwrap();
    let gb = GpuBuffer::from_slice(gpu, "dz", &g_buf).unwrap();
    let losses = GpuBuffer::from_slice(gpu, "losses", &l_init).unwrap();
    let cfg = MseConfig {
        n: c.n,
        members: c.members,
        weights: c.weights,
        agents: Agents::ONE,
    };
    let partials = loss::mse_partials(&cfg, c.rows);
    let scratch = (partials > 1 && r.random::<bool>())
        .then(|| GpuBuffer::<f32>::new(gpu, "scratch", partials).unwrap());
    let grad = match c.grad {
        GradMode::Skip => None,
        m => Some(GradOut {
            buf: &gb,
            at: g_at,
            accumulate: matches!(m, GradMode::Add),
        }),
    };
    let mut rec = Recorder::new(gpu);
    loss::record_mse(
        &mut rec,
        &cfg,
        c.rows,
        &zb,
        z_at,
        &tb,
        t_at,
        grad,
        LossOut {
            losses: &losses,
            index: slot,
            accumulate: c.loss_add,
        },
        scratch.as_ref(),
    )
    .unwrap();
    let hl = rec.read(&losses);
    let hg = rec.read(&gb);
    let out = rec.finish().unwrap();
    let got_l = out.get(&hl).unwrap();
    let got_g = out.get(&hg).unwrap();

    let z64: Vec<f64> = z.iter().flatten().map(|&v| v as f64).collect();
    let t64: Vec<f64> = (0..c.rows)
        .flat_map(|i| tz[if c.shared_target_row { 0 } else { i }].clone())
        .map(|v| v as f64)
        .collect();
    let (want, want_g) = mirror::mse(&cfg, c.rows, &z64, &t64);
    let base = if c.loss_add { l_init[slot] as f64 } else { 0.0 };
    let err = (got_l[slot] as f64 - (base + want)).abs();
    let t_max = step(&c.weights, c.rows - 1);
    let tol = (MSE_LOSS_TOL + POW_TOL * t_max) * want.abs() + 1e-7 * base.abs() + 1e-30;
    assert!(
        err <= tol,
        "mse loss {tag}: gpu {} want {} (error {err:e})",
        got_l[slot],
        base + want
    );
    for (i, (g, w)) in got_l.iter().zip(&l_init).enumerate() {
        if i != slot {
            assert_eq!(g.to_bits(), w.to_bits(), "mse {tag}: loss slot {i} changed");
        }
    }
    for (i, g) in got_g.iter().enumerate() {
        match (c.grad, in_rows(i, g_at, total, c.n)) {
            (GradMode::Skip, _) | (_, None) => {
                assert_eq!(
                    g.to_bits(),
                    g_buf[i].to_bits(),
                    "mse {tag}: gradient element {i} changed"
                )
            }
            (mode, Some((row, j))) => {
                let init = if matches!(mode, GradMode::Add) {
                    g_init[row][j] as f64
                } else {
                    0.0
                };
                let d = want_g[row * c.n + j];
                let want = init + d;
                let t = step(&c.weights, row % c.rows);
                let tol = (MSE_GRAD_TOL + POW_TOL * t) * d.abs() + 1e-7 * init.abs() + 1e-35;
                assert!(
                    (*g as f64 - want).abs() <= tol,
                    "mse gradient {tag}: row {row} column {j}: gpu {g} want {want}"
                );
            }
        }
    }
}

#[test]
fn mse_against_the_mirror() {
    let mut r = rng("mse");
    let modes = [GradMode::Write, GradMode::Add, GradMode::Skip];
    for gpu in gpus() {
        let mut k = 0;
        for (n, members, rows) in [
            (1, 1, 1),
            (37, 1, 7),
            (512, 1, 300),
            (64, 2, 61),
            (3, 3, 300),
        ] {
            for weights in weights_list(rows) {
                k += 1;
                let c = MseCase {
                    n,
                    members,
                    rows,
                    weights,
                    shared_target_row: k % 5 == 0,
                    grad: modes[k % 3],
                    loss_add: k % 2 == 1,
                };
                run_mse(gpu, &mut r, c);
            }
        }
    }
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
fn mirror_gradients_are_the_gradients_of_the_mirror_losses() {
    let mut r = rng("mirror_fd");
    let bins = TwoHotConfig::new(11, -2.0, 2.0).unwrap();
    let (members, rows) = (2, 4);
    let cfg = SoftCeConfig {
        bins,
        members,
        weights: RowWeights::new(0.7, 0.5, 2),
        agents: Agents::ONE,
    };
    let logits: Vec<f64> = (0..members * rows * bins.bins)
        .map(|_| r.random_range(-3.0..3.0))
        .collect();
    let targets = random_targets(&mut r, &bins, rows);
    let (_, g) = mirror::soft_ce(&cfg, rows, &logits, &targets);
    fd_check("soft CE", &g, &mut |i, e| {
        let mut l = logits.clone();
        l[i] += e;
        mirror::soft_ce(&cfg, rows, &l, &targets).0
    });
    let mcfg = MseConfig {
        n: 5,
        members,
        weights: RowWeights::new(0.3, 0.5, 2),
        agents: Agents::ONE,
    };
    let z: Vec<f64> = (0..members * rows * 5)
        .map(|_| r.random_range(-1.0..1.0))
        .collect();
    let t: Vec<f64> = (0..rows * 5).map(|_| r.random_range(-1.0..1.0)).collect();
    let (_, g) = mirror::mse(&mcfg, rows, &z, &t);
    fd_check("mse", &g, &mut |i, e| {
        let mut zp = z.clone();
        zp[i] += e;
        mirror::mse(&mcfg, rows, &zp, &t).0
    });
}

#[test]
fn the_mirror_is_tdmpc2s_formula() {
    // Uniform logits: the loss is ln(bins) per row (the two-hot sums to 1) and the gradient
    // 1 / bins - two_hot.
    let bins = TwoHotConfig::TDMPC2;
    let (loss, g) = mirror::soft_ce_row(&bins, &vec![3.0; 101], 0.0);
    assert!((loss - (101f64).ln()).abs() < 1e-12);
    // symlog(0) = 0 is bin 50 exactly.
    for (j, v) in g.iter().enumerate() {
        let hot = if j == 50 { 1.0 } else { 0.0 };
        assert!((v - (1.0 / 101.0 - hot)).abs() < 1e-12, "bin {j}: {v}");
    }
    // Row weights: rho^(r / B) with 0^0 = 1.
    let w = RowWeights::new(2.0, 0.5, 3);
    let want = [2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 0.5];
    for (r, x) in want.iter().enumerate() {
        assert_eq!(mirror::row_weight(&w, r), *x);
    }
    let w0 = RowWeights::new(1.5, 0.0, 2);
    assert_eq!(
        (mirror::row_weight(&w0, 1), mirror::row_weight(&w0, 2)),
        (1.5, 0.0)
    );
    // TD-MPC2's consistency over T = 2, B = 1, L = 2: (1/T) sum_t rho^t mean (z - z')^2.
    let cfg = MseConfig {
        n: 2,
        members: 1,
        weights: RowWeights::new(1.0 / 4.0, 0.5, 1),
        agents: Agents::ONE,
    };
    let (l, _) = mirror::mse(&cfg, 2, &[1.0, 2.0, 0.0, 0.0], &[0.0, 0.0, 2.0, 0.0]);
    let want = 0.5 * ((1.0 + 4.0) / 2.0 + 0.5 * (4.0 + 0.0) / 2.0);
    assert!((l - want).abs() < 1e-12);
}

/// Central differences of the GPU losses: every perturbed copy of the inputs sits in one
/// buffer and gets its own dispatch and loss slot, all in one submit.
#[test]
fn gpu_gradients_match_finite_differences_of_the_gpu_losses() {
    let mut r = rng("gpu_fd");
    let eps = 1e-2f32;
    let probes = 12;
    let copies = 2 * probes + 1;
    for gpu in gpus() {
        // Soft cross-entropy: 2 heads, 3 rows of 101 bins.
        let bins = TwoHotConfig::TDMPC2;
        let (members, rows, k) = (2, 3, 101);
        let size = members * rows * k;
        let cfg = SoftCeConfig {
            bins,
            members,
            weights: RowWeights::new(0.2, 0.5, 1),
            agents: Agents::ONE,
        };
        let base = uniform(&mut r, size, 3.0);
        let targets = random_targets(&mut r, &bins, rows);
        // Half the probes on a target bin of some row, where the gradient is large.
        let coords: Vec<usize> = (0..probes)
            .map(|p| {
                if p % 2 == 0 {
                    let row = r.random_range(0..members * rows);
                    let t = th::encode_row(&bins, targets[row % rows]);
                    row * k + t.iter().position(|&v| v > 0.0).unwrap()
                } else {
                    r.random_range(0..size)
                }
            })
            .collect();
        let tb = GpuBuffer::from_slice(gpu, "targets", &targets).unwrap();
        let got = gpu_losses_and_grad(
            gpu,
            &perturbed(&base, &coords, eps),
            size,
            copies,
            k,
            |rec, lb, at, gb, losses, slot| {
                let grad = gb.map(|buf| GradOut {
                    buf,
                    at: RowLayout::contiguous(k),
                    accumulate: false,
                });
                let out = LossOut {
                    losses,
                    index: slot,
                    accumulate: false,
                };
                let one = RowLayout::contiguous(1);
                loss::record_soft_ce(rec, &cfg, rows, lb, at, &tb, one, grad, out, None).unwrap()
            },
        );
        compare_fd("soft CE", gpu, &got, &coords, eps);

        // Squared error: 2 members, 3 rows of 16.
        let (n, size) = (16, 2 * 3 * 16);
        let mcfg = MseConfig {
            n,
            members: 2,
            weights: RowWeights::new(0.5, 0.5, 1),
            agents: Agents::ONE,
        };
        let base = uniform(&mut r, size, 1.0);
        let coords: Vec<usize> = (0..probes).map(|_| r.random_range(0..size)).collect();
        let target = GpuBuffer::from_slice(gpu, "target", &uniform(&mut r, 3 * n, 1.0)).unwrap();
        let got = gpu_losses_and_grad(
            gpu,
            &perturbed(&base, &coords, eps),
            size,
            copies,
            n,
            |rec, zb, at, gb, losses, slot| {
                let grad = gb.map(|buf| GradOut {
                    buf,
                    at: RowLayout::contiguous(n),
                    accumulate: false,
                });
                let out = LossOut {
                    losses,
                    index: slot,
                    accumulate: false,
                };
                let lay = RowLayout::contiguous(n);
                loss::record_mse(rec, &mcfg, 3, zb, at, &target, lay, grad, out, None).unwrap()
            },
        );
        compare_fd("mse", gpu, &got, &coords, eps);
    }
}

/// `base`, then for each coordinate `base + eps e_i` and `base - eps e_i`, back to back.
fn perturbed(base: &[f32], coords: &[usize], eps: f32) -> Vec<f32> {
    let mut all = base.to_vec();
    for &i in coords {
        for s in [eps, -eps] {
            let mut c = base.to_vec();
            c[i] += s;
            all.extend(c);
        }
    }
    all
}

/// The losses of `copies` inputs of `size` elements back to back in `all` (copy `c` into slot
/// `c`, its rows of `width` at `c * size`), and the gradient of copy 0, in one submit.
fn gpu_losses_and_grad<'g>(
    gpu: &'g Gpu,
    all: &[f32],
    size: usize,
    copies: usize,
    width: usize,
    mut record: impl FnMut(
        &mut Recorder<'g>,
        &GpuBuffer<f32>,
        RowLayout,
        Option<&GpuBuffer<f32>>,
        &GpuBuffer<f32>,
        usize,
    ),
) -> (Vec<f32>, Vec<f32>) {
    let xb = GpuBuffer::from_slice(gpu, "inputs", all).unwrap();
    let gb = GpuBuffer::<f32>::new(gpu, "gradient", size).unwrap();
    gb.fill_u32(gpu, POISON).unwrap();
    let losses = GpuBuffer::<f32>::new(gpu, "losses", copies).unwrap();
    losses.fill_u32(gpu, POISON).unwrap();
    let mut rec = Recorder::new(gpu);
    for c in 0..copies {
        let at = RowLayout::at(c * size, width);
        record(&mut rec, &xb, at, (c == 0).then_some(&gb), &losses, c);
    }
    let hl = rec.read(&losses);
    let hg = rec.read(&gb);
    let out = rec.finish().unwrap();
    (out.get(&hl).unwrap(), out.get(&hg).unwrap())
}

fn compare_fd(
    what: &str,
    gpu: &Gpu,
    (losses, grad): &(Vec<f32>, Vec<f32>),
    coords: &[usize],
    eps: f32,
) {
    let scale = grad.iter().fold(1e-6f64, |m, v| m.max(v.abs() as f64));
    for (p, &i) in coords.iter().enumerate() {
        let fd = (losses[1 + 2 * p] as f64 - losses[2 + 2 * p] as f64) / (2.0 * eps as f64);
        assert!(
            (fd - grad[i] as f64).abs() <= GPU_FD_TOL * scale,
            "{what} checks={:?}: element {i}: gpu gradient {}, finite difference {fd}",
            gpu.shader_checks(),
            grad[i]
        );
    }
}

#[test]
fn many_partials_and_the_two_dimensional_grid() {
    let mut r = rng("partials");
    // 5 heads of 600 rows: 375 partials, more than the reduction's 256 threads.
    for gpu in gpus() {
        run_ce(
            gpu,
            &mut r,
            CeCase {
                bins: TwoHotConfig::TDMPC2,
                members: 5,
                rows: 600,
                weights: RowWeights::new(0.1 / 600.0, 0.5, 200),
                scale: 5.0,
                grad: GradMode::Write,
                loss_add: true,
            },
        );
    }
    // At most 7 x 7 workgroups: 300 rows of 101 bins take 38, 45 000 elements 44.
    for gpu in small_grid_gpus(7) {
        run_ce(
            &gpu,
            &mut r,
            CeCase {
                bins: TwoHotConfig::TDMPC2,
                members: 1,
                rows: 300,
                weights: RowWeights::new(1.0, 0.5, 100),
                scale: 5.0,
                grad: GradMode::Add,
                loss_add: false,
            },
        );
        run_mse(
            &gpu,
            &mut r,
            MseCase {
                n: 150,
                members: 1,
                rows: 300,
                weights: RowWeights::new(1.0, 0.5, 100),
                shared_target_row: false,
                grad: GradMode::Write,
                loss_add: false,
            },
        );
        // Past 7 x 7: an error.
        let cfg = MseConfig {
            n: 1024,
            members: 1,
            weights: RowWeights::uniform(1.0),
            agents: Agents::ONE,
        };
        let z = GpuBuffer::<f32>::new(&gpu, "z", 50 * 1024).unwrap();
        let t = GpuBuffer::<f32>::new(&gpu, "t", 50 * 1024).unwrap();
        let l = GpuBuffer::<f32>::new(&gpu, "l", 1).unwrap();
        let mut rec = Recorder::new(&gpu);
        let out = LossOut {
            losses: &l,
            index: 0,
            accumulate: false,
        };
        let lay = RowLayout::contiguous(1024);
        let e =
            loss::record_mse(&mut rec, &cfg, 50, &z, lay, &t, lay, None, out, None).unwrap_err();
        assert!(matches!(e, Error::Limit(_)), "{e:?}");
    }
}

#[test]
fn twenty_thousand_rows() {
    // 2501 partials for one reduction workgroup; 20 million squared-error elements would be too
    // slow here, 2 million give 1954 partials.
    let mut r = rng("big");
    let gpu = &gpus()[1];
    run_ce(
        gpu,
        &mut r,
        CeCase {
            bins: TwoHotConfig::TDMPC2,
            members: 1,
            rows: 20_001,
            weights: RowWeights::new(1e-4, 0.5, 6667),
            scale: 5.0,
            grad: GradMode::Write,
            loss_add: false,
        },
    );
    run_mse(
        gpu,
        &mut r,
        MseCase {
            n: 100,
            members: 1,
            rows: 20_001,
            weights: RowWeights::new(1e-6, 0.5, 6667),
            shared_target_row: false,
            grad: GradMode::Add,
            loss_add: true,
        },
    );
}

#[test]
fn zero_rows_write_a_zero_loss() {
    let gpu = &gpus()[0];
    let losses = GpuBuffer::from_slice(gpu, "losses", &[5.0f32, 6.0]).unwrap();
    let x = GpuBuffer::<f32>::new(gpu, "x", 4).unwrap();
    let lay = RowLayout::contiguous(101);
    let cfg = SoftCeConfig {
        bins: TwoHotConfig::TDMPC2,
        members: 2,
        weights: RowWeights::uniform(1.0),
        agents: Agents::ONE,
    };
    let mcfg = MseConfig {
        n: 3,
        members: 1,
        weights: RowWeights::uniform(1.0),
        agents: Agents::ONE,
    };
    let mut rec = Recorder::new(gpu);
    let slot = |index, accumulate| LossOut {
        losses: &losses,
        index,
        accumulate,
    };
    loss::record_soft_ce(
        &mut rec,
        &cfg,
        0,
        &x,
        lay,
        &x,
        lay,
        None,
        slot(0, false),
        None,
    )
    .unwrap();
    loss::record_mse(
        &mut rec,
        &mcfg,
        0,
        &x,
        lay,
        &x,
        lay,
        None,
        slot(1, true),
        None,
    )
    .unwrap();
    let h = rec.read(&losses);
    assert_eq!(rec.finish().unwrap().get(&h).unwrap(), vec![0.0, 6.0]);
}

#[test]
fn bad_requests_are_errors() {
    let gpu = &gpus()[0];
    let (rows, k) = (10, 101);
    let buf = |label: &str, len: usize| GpuBuffer::<f32>::new(gpu, label, len).unwrap();
    let logits = buf("logits", rows * k);
    let short = buf("short logits", rows * k - 1);
    let targets = buf("targets", rows);
    let grad = buf("grad", rows * k);
    let losses = buf("losses", 2);
    let cfg = SoftCeConfig {
        bins: TwoHotConfig::TDMPC2,
        members: 1,
        weights: RowWeights::uniform(1.0),
        agents: Agents::ONE,
    };
    let lay = RowLayout::contiguous(k);
    let one = RowLayout::contiguous(1);
    let out = |index| LossOut {
        losses: &losses,
        index,
        accumulate: false,
    };
    let g = |buf, at| {
        Some(GradOut {
            buf,
            at,
            accumulate: false,
        })
    };
    let mut rec = Recorder::new(gpu);
    let kind = |e: Error| -> &'static str {
        match e {
            Error::InvalidArgument(_) => "arg",
            Error::Shape(_) => "shape",
            Error::Limit(_) => "limit",
            _ => panic!("unexpected {e:?}"),
        }
    };
    let mut ce = |c: &SoftCeConfig, l, la, gr, o, s| {
        kind(loss::record_soft_ce(&mut rec, c, rows, l, la, &targets, one, gr, o, s).unwrap_err())
    };
    // Configurations.
    let bad_bins = SoftCeConfig {
        bins: TwoHotConfig {
            bins: 1,
            vmin: -1.0,
            vmax: 1.0,
        },
        ..cfg
    };
    assert_eq!(ce(&bad_bins, &logits, lay, None, out(0), None), "arg");
    for w in [
        RowWeights::new(f32::NAN, 0.5, 1),
        RowWeights::new(1.0, f32::INFINITY, 1),
        RowWeights::new(1.0, 0.5, 0),
    ] {
        let c = SoftCeConfig { weights: w, ..cfg };
        assert_eq!(ce(&c, &logits, lay, None, out(0), None), "arg");
    }
    let c0 = SoftCeConfig { members: 0, ..cfg };
    assert_eq!(ce(&c0, &logits, lay, None, out(0), None), "arg");
    // Populations: no agents; two agents in one slot; a second agent's logits past the
    // buffer; a second agent's slot past the losses.
    let agents = |count, src_stride, slot_stride| SoftCeConfig {
        agents: Agents {
            count,
            src_stride,
            tgt_stride: 0,
            grad_stride: 0,
            slot_stride,
        },
        ..cfg
    };
    assert_eq!(
        ce(&agents(0, 0, 1), &logits, lay, None, out(0), None),
        "arg"
    );
    assert_eq!(
        ce(&agents(2, 0, 0), &logits, lay, None, out(0), None),
        "arg"
    );
    assert_eq!(
        ce(&agents(2, 1, 1), &logits, lay, None, out(0), None),
        "shape"
    );
    assert_eq!(
        ce(&agents(2, 0, 2), &logits, lay, None, out(0), None),
        "shape"
    );
    // Shapes: short logits, an offset, a second member, overlapping gradient rows, the slot.
    assert_eq!(ce(&cfg, &short, lay, None, out(0), None), "shape");
    assert_eq!(
        ce(&cfg, &logits, RowLayout::at(1, k), None, out(0), None),
        "shape"
    );
    let c2 = SoftCeConfig { members: 2, ..cfg };
    assert_eq!(ce(&c2, &logits, lay, None, out(0), None), "shape");
    assert_eq!(
        ce(
            &cfg,
            &logits,
            lay,
            g(&grad, RowLayout::at(0, k - 1)),
            out(0),
            None
        ),
        "shape"
    );
    assert_eq!(ce(&cfg, &logits, lay, None, out(2), None), "shape");
    // Aliasing: the gradient over the logits, the loss slot inside the gradient rows, the
    // scratch shared with the losses, a scratch too small.
    assert_eq!(ce(&cfg, &logits, lay, g(&logits, lay), out(0), None), "arg");
    let both = buf("grad and losses", rows * k + 2);
    let slot_in = LossOut {
        losses: &both,
        index: 5,
        accumulate: false,
    };
    assert_eq!(ce(&cfg, &logits, lay, g(&both, lay), slot_in, None), "arg");
    let slot_after = LossOut {
        losses: &both,
        index: rows * k,
        accumulate: false,
    };
    let parts = loss::soft_ce_partials(&cfg, rows);
    assert!(parts > 1);
    assert_eq!(ce(&cfg, &logits, lay, None, slot_after, Some(&both)), "arg");
    let small = buf("small scratch", parts - 1);
    assert_eq!(ce(&cfg, &logits, lay, None, out(0), Some(&small)), "shape");
    // The loss slot and the gradient in one buffer without overlap is fine.
    loss::record_soft_ce(
        &mut rec,
        &cfg,
        rows,
        &logits,
        lay,
        &targets,
        one,
        g(&both, lay),
        slot_after,
        None,
    )
    .unwrap();
    let n = rec.dispatches();
    assert_eq!(n, 2);
    // Squared error: width 0, short target, aliasing of target and gradient.
    let mcfg = MseConfig {
        n: k,
        members: 1,
        weights: RowWeights::uniform(1.0),
        agents: Agents::ONE,
    };
    let mut ms = |c: &MseConfig, t, gr| {
        kind(
            loss::record_mse(&mut rec, c, rows, &logits, lay, t, lay, gr, out(0), None)
                .unwrap_err(),
        )
    };
    assert_eq!(ms(&MseConfig { n: 0, ..mcfg }, &grad, None), "arg");
    assert_eq!(ms(&mcfg, &short, None), "shape");
    assert_eq!(ms(&mcfg, &grad, g(&grad, lay)), "arg");
    assert_eq!(rec.dispatches(), n);
    rec.submit().unwrap();
}

#[test]
fn every_pipeline_compiles_with_naga() {
    let mut count = 0;
    for bins in [2, 5, 17, 101, 300, 1001] {
        let cfg = TwoHotConfig::new(bins, -10.0, 10.0).unwrap();
        for n in [1, 37, 512] {
            for op in [LossOp::SoftCe, LossOp::Mse, LossOp::Reduce] {
                for bits in 0..8u32 {
                    let flags = LossFlags {
                        grad: bits & 1 != 0,
                        grad_add: bits & 2 != 0,
                        loss_add: bits & 4 != 0,
                    };
                    let (spec, header, ov) = loss::pipeline_constants(op, &cfg, n, flags);
                    common::compile_spirv(spec.shader, spec.entry, &header, &ov);
                    count += 1;
                }
            }
        }
    }
    assert!(count > 400);
}

/// One loss call of either kind over `agents` agents: `src` and `tgt` each agent's rows back
/// to back with `gap` poisoned elements between agents, the gradient written likewise; returns
/// the gradient buffer and the losses (slot `1 + 2 g` for agent `g`).
#[allow(clippy::too_many_arguments)]
fn run_loss_agents(
    gpu: &Gpu,
    mse_n: Option<usize>,
    rows: usize,
    members: usize,
    weights: RowWeights,
    src: &[Vec<f32>],
    tgt: &[Vec<f32>],
    gap: usize,
) -> (Vec<f32>, Vec<f32>) {
    let agents = src.len();
    let pack = |v: &[Vec<f32>]| -> (Vec<f32>, usize) {
        let stride = v[0].len() + gap;
        let mut out = vec![poison(); agents * stride];
        for (g, x) in v.iter().enumerate() {
            out[g * stride..g * stride + x.len()].copy_from_slice(x);
        }
        (out, stride)
    };
    let (s, s_as) = pack(src);
    let (t, t_as) = pack(tgt);
    let sb = GpuBuffer::from_slice(gpu, "src", &s).unwrap();
    let tb = GpuBuffer::from_slice(gpu, "tgt", &t).unwrap();
    let gb = GpuBuffer::from_slice(gpu, "grad", &vec![poison(); s.len()]).unwrap();
    let losses = GpuBuffer::from_slice(gpu, "losses", &vec![poison(); 2 * agents + 1]).unwrap();
    let ag = Agents {
        count: agents,
        src_stride: s_as,
        tgt_stride: t_as,
        grad_stride: s_as,
        slot_stride: 2,
    };
    let grad = Some(GradOut {
        buf: &gb,
        at: RowLayout::contiguous(mse_n.unwrap_or(TwoHotConfig::TDMPC2.bins)),
        accumulate: false,
    });
    let out = LossOut {
        losses: &losses,
        index: 1,
        accumulate: false,
    };
    let mut rec = Recorder::new(gpu);
    match mse_n {
        Some(n) => {
            let cfg = MseConfig {
                n,
                members,
                weights,
                agents: ag,
            };
            let at = RowLayout::contiguous(n);
            loss::record_mse(&mut rec, &cfg, rows, &sb, at, &tb, at, grad, out, None)
        }
        None => {
            let cfg = SoftCeConfig {
                bins: TwoHotConfig::TDMPC2,
                members,
                weights,
                agents: ag,
            };
            let (bins, one) = (
                RowLayout::contiguous(TwoHotConfig::TDMPC2.bins),
                RowLayout::contiguous(1),
            );
            loss::record_soft_ce(&mut rec, &cfg, rows, &sb, bins, &tb, one, grad, out, None)
        }
    }
    .unwrap();
    let (hg, hl) = (rec.read(&gb), rec.read(&losses));
    let done = rec.finish().unwrap();
    (done.get(&hg).unwrap(), done.get(&hl).unwrap())
}

#[test]
fn a_population_loss_is_each_agent_alone() {
    // Three agents' soft cross-entropy (one and three heads) and squared error, over row
    // counts of one workgroup and of several (partials and a reduction per agent), against
    // each agent's call alone: losses and gradients bit for bit, each agent's own slot, and
    // nothing written between agents or into the slots between theirs.
    let mut r = rng("population losses");
    let bins = TwoHotConfig::TDMPC2;
    for gpu in gpus() {
        for (mse_n, rows, members) in [
            (None, 6usize, 1usize),
            (None, 300, 3),
            (Some(16), 5, 1),
            (Some(24), 200, 2),
        ] {
            let agents = 3;
            let weights = RowWeights::new(0.3, 0.5, rows.div_ceil(3));
            let width = mse_n.unwrap_or(bins.bins);
            let src: Vec<Vec<f32>> = (0..agents)
                .map(|_| uniform(&mut r, members * rows * width, 2.0))
                .collect();
            let tgt: Vec<Vec<f32>> = (0..agents)
                .map(|_| match mse_n {
                    Some(n) => uniform(&mut r, rows * n, 2.0),
                    None => random_targets(&mut r, &bins, rows),
                })
                .collect();
            let (pg, pl) = run_loss_agents(gpu, mse_n, rows, members, weights, &src, &tgt, 7);
            let tag = format!(
                "mse {mse_n:?} rows {rows} members {members} ({})",
                gpu.describe()
            );
            let stride = src[0].len() + 7;
            for g in 0..agents {
                let (ag, al) = run_loss_agents(
                    gpu,
                    mse_n,
                    rows,
                    members,
                    weights,
                    &src[g..g + 1],
                    &tgt[g..g + 1],
                    0,
                );
                assert_eq!(
                    pl[1 + 2 * g].to_bits(),
                    al[1].to_bits(),
                    "{tag}: agent {g} loss"
                );
                let got = &pg[g * stride..g * stride + src[0].len()];
                let same = got.iter().zip(&ag).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{tag}: agent {g} gradient");
                assert!(
                    pg[g * stride + src[0].len()..(g + 1) * stride]
                        .iter()
                        .all(|v| v.to_bits() == POISON),
                    "{tag}: written between agents"
                );
            }
            for i in (0..2 * agents + 1).step_by(2) {
                assert_eq!(pl[i].to_bits(), POISON, "{tag}: slot {i} written");
            }
        }
    }
}
