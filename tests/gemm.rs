//! The strided batched GEMM against its f64 mirror on fresh random inputs with poisoned
//! outputs: every transposition, both tiles, edge sizes that leave partial tiles (1, 17, 33,
//! 70), batches with and without shared operands, offsets and padded leading dimensions,
//! accumulation, bias and alpha, and bad requests.
//!
//! Tolerance: 1e-5 of max(|reference|, rms(reference)) per element. Inputs are uniform in
//! [-1, 1] and K <= 150, so each output is a sum of at most 150 products; f32 accumulation
//! errs by a few units of 2^-24 per term relative to the partial sums' scale, ~1e-6 here.

mod common;

use common::{POISON, gpus, rel_error, rng, uniform};
use pompc::kernels::gemm::{self, Bias, Gemm, GemmTile, Mat, Operands};
use pompc::reference::gemm::{self as mirror, Layout};
use pompc::{Error, GpuBuffer, Recorder};
use rand::Rng;

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
    /// Padding added to each leading dimension and offset of each operand.
    pad: usize,
    /// Whether B is shared by every batch (stride 0).
    shared_b: bool,
}

fn run(case: Case, tile: Option<GemmTile>, r: &mut impl Rng) {
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
    } = case;
    let (ar, ac) = if ta { (k, m) } else { (m, k) };
    let (br, bc) = if tb { (n, k) } else { (k, n) };
    let lay = |rows: usize, cols: usize, shared: bool| Layout {
        offset: pad * 3,
        ld: cols + pad,
        batch_stride: if shared { 0 } else { rows * (cols + pad) + pad },
    };
    let (la, lb, lc) = (lay(ar, ac, false), lay(br, bc, shared_b), lay(m, n, false));
    let len = |l: &Layout, rows: usize| l.offset + (batch - 1) * l.batch_stride + rows * l.ld;
    let a = uniform(r, len(&la, ar), 1.0);
    let b = uniform(r, len(&lb, br), 1.0);
    let c0 = uniform(r, len(&lc, m), 1.0);
    let bias_v = uniform(r, pad + batch * n, 1.0);
    let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let mut want = f(&c0);
    let bias64 = f(&bias_v);
    mirror::gemm(
        m,
        n,
        k,
        batch,
        (ta, tb),
        alpha as f64,
        acc,
        (&f(&a), la),
        (&f(&b), lb),
        (&mut want, lc),
        bias.then_some((&bias64[..], pad, n)),
    );
    for gpu in gpus() {
        let ab = GpuBuffer::from_slice(gpu, "a", &a).unwrap();
        let bb = GpuBuffer::from_slice(gpu, "b", &b).unwrap();
        let cb = GpuBuffer::from_slice(gpu, "c", &c0).unwrap();
        let biasb = GpuBuffer::from_slice(gpu, "bias", &bias_v).unwrap();
        if !acc {
            // Elements outside C's rows keep c0; those inside are overwritten: poison them.
            let mut init = c0.clone();
            for bt in 0..batch {
                for i in 0..m {
                    for j in 0..n {
                        init[lc.offset + bt * lc.batch_stride + i * lc.ld + j] =
                            f32::from_bits(POISON);
                    }
                }
            }
            cb.upload(gpu, &init).unwrap();
        }
        let mat = |buf, l: Layout| Mat {
            buf,
            offset: l.offset,
            ld: l.ld,
            batch_stride: l.batch_stride,
        };
        let op = Gemm {
            m,
            n,
            k,
            trans_a: ta,
            trans_b: tb,
            alpha,
            accumulate: acc,
            batch,
        };
        let bias_arg = bias.then_some(Bias {
            buf: &biasb,
            offset: pad,
            batch_stride: n,
        });
        let mut rec = Recorder::new(gpu);
        let x = Operands {
            a: mat(&ab, la),
            b: mat(&bb, lb),
            c: mat(&cb, lc),
            bias: bias_arg,
        };
        match tile {
            Some(t) => gemm::record_with_tile(&mut rec, &op, x, t),
            None => gemm::record(&mut rec, &op, x),
        }
        .unwrap();
        let h = rec.read(&cb);
        let got = rec.finish().unwrap().get(&h).unwrap();
        let e = rel_error(&got, &want);
        assert!(
            e < 1e-5,
            "{case:?} tile {tile:?}: error {e:e} ({})",
            gpu.describe()
        );
    }
}

#[test]
fn every_transposition_and_tile_matches_the_mirror() {
    let mut r = rng("gemm transpositions");
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        for tile in GemmTile::ALL {
            let (m, n, k) = (
                r.random_range(1..80),
                r.random_range(1..80),
                r.random_range(1..150),
            );
            let case = Case {
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
            };
            run(case, Some(tile), &mut r);
        }
    }
}

#[test]
fn batches_offsets_accumulation_bias_and_alpha() {
    let mut r = rng("gemm options");
    for (i, &(m, n, k)) in [
        (1, 1, 1),
        (17, 33, 70),
        (70, 17, 33),
        (33, 70, 1),
        (64, 64, 16),
    ]
    .iter()
    .enumerate()
    {
        let case = Case {
            m,
            n,
            k,
            batch: 1 + i % 3,
            ta: i % 2 == 1,
            tb: i % 3 != 1,
            acc: i % 2 == 0,
            bias: i % 3 != 0,
            alpha: [1.0, -0.5, 2.0][i % 3],
            pad: [0, 3, 5][i % 3],
            shared_b: i == 3,
        };
        run(case, None, &mut r);
    }
}

#[test]
fn bad_requests_are_errors() {
    let gpu = &gpus()[0];
    let a = GpuBuffer::<f32>::new(gpu, "a", 12).unwrap();
    let c = GpuBuffer::<f32>::new(gpu, "c", 16).unwrap();
    let mut rec = Recorder::new(gpu);
    // A is [4, 4]: 16 elements needed, 12 held.
    let e = gemm::record(
        &mut rec,
        &Gemm::new(4, 4, 4),
        Operands::new(Mat::rows(&a, 4), Mat::rows(&a, 4), Mat::rows(&c, 4)),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::Shape(_)) && e.to_string().contains("\"a\""),
        "{e}"
    );
    // Output aliasing an input.
    let e = gemm::record(
        &mut rec,
        &Gemm::new(2, 2, 2),
        Operands::new(Mat::rows(&c, 2), Mat::rows(&a, 2), Mat::rows(&c, 2)),
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    // Overlapping written batches.
    let op = Gemm {
        batch: 2,
        ..Gemm::new(2, 2, 2)
    };
    let e = gemm::record(
        &mut rec,
        &op,
        Operands::new(
            Mat::rows(&a, 2),
            Mat::rows(&a, 2),
            Mat::rows(&c, 2).batched(2),
        ),
    )
    .unwrap_err();
    assert!(e.to_string().contains("overlap"), "{e}");
}
