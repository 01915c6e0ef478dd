//! The strided batched GEMM against its f64 mirror on fresh random inputs with poisoned
//! outputs: every transposition, both tiles, edge sizes that leave partial tiles (1, 17, 33,
//! 70), batches with and without shared operands, batches split into agents (agent-major
//! weights, per-agent inputs shared by the members, an output with agents inside members),
//! offsets and padded leading dimensions, accumulation, bias and alpha, and bad requests.
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
    /// Whether B is shared by every batch of an agent (batch stride 0).
    shared_b: bool,
    /// Agents the batch splits into (a divisor of `batch`).
    agents: usize,
    /// K segments, each A and B block after the whole of the one before.
    segments: usize,
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
        agents,
        segments,
    } = case;
    let per = batch / agents;
    let (ar, ac) = if ta { (k, m) } else { (m, k) };
    let (br, bc) = if tb { (n, k) } else { (k, n) };
    // Agent-major (agents after their members, a gap between agents); a shared B steps per
    // agent only.
    let lay = |rows: usize, cols: usize, shared: bool| {
        let block = rows * (cols + pad) + pad;
        let bs = if shared { 0 } else { block };
        Layout {
            offset: pad * 3,
            ld: cols + pad,
            batch_stride: bs,
            agent_stride: if agents > 1 {
                bs * per + block + pad
            } else {
                0
            },
        }
    };
    let (la, lb) = (lay(ar, ac, false), lay(br, bc, shared_b));
    // C interleaves the other way round: agents inside members.
    let lc = {
        let block = m * (n + pad) + pad;
        Layout {
            offset: pad * 3,
            ld: n + pad,
            batch_stride: block * agents,
            agent_stride: block,
        }
    };
    let len = |l: &Layout, rows: usize| {
        l.offset + (agents - 1) * l.agent_stride + (per - 1) * l.batch_stride + rows * l.ld
    };
    // Segment s of A (B) starts sa * s (sb * s) after segment 0.
    let (sa, sb) = (len(&la, ar) + pad, len(&lb, br) + pad);
    let a = uniform(r, sa * segments, 1.0);
    let b = uniform(r, sb * segments, 1.0);
    let c0 = uniform(r, len(&lc, m), 1.0);
    let lbias = Layout {
        offset: pad,
        ld: n,
        batch_stride: n,
        agent_stride: per * n + pad,
    };
    let bias_v = uniform(r, pad + agents * (per * n + pad), 1.0);
    let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let mut want = f(&c0);
    let bias64 = f(&bias_v);
    // A segmented multiply is the mirror's multiplies of each segment, adding after the first.
    let (a64, b64) = (f(&a), f(&b));
    for seg in 0..segments {
        let at = |l: Layout, stride: usize| Layout {
            offset: l.offset + seg * stride,
            ..l
        };
        mirror::gemm(
            m,
            n,
            k,
            (batch, agents),
            (ta, tb),
            alpha as f64,
            acc || seg > 0,
            (&a64, at(la, sa)),
            (&b64, at(lb, sb)),
            (&mut want, lc),
            bias.then_some((&bias64[..], lbias)).filter(|_| seg == 0),
        );
    }
    for gpu in gpus() {
        let ab = GpuBuffer::from_slice(gpu, "a", &a).unwrap();
        let bb = GpuBuffer::from_slice(gpu, "b", &b).unwrap();
        let cb = GpuBuffer::from_slice(gpu, "c", &c0).unwrap();
        let biasb = GpuBuffer::from_slice(gpu, "bias", &bias_v).unwrap();
        if !acc {
            // Elements outside C's rows keep c0; those inside are overwritten: poison them.
            let mut init = c0.clone();
            for bt in 0..batch {
                let c_at = lc.offset + (bt / per) * lc.agent_stride + (bt % per) * lc.batch_stride;
                for i in 0..m {
                    for j in 0..n {
                        init[c_at + i * lc.ld + j] = f32::from_bits(POISON);
                    }
                }
            }
            cb.upload(gpu, &init).unwrap();
        }
        let mat = |buf, l: Layout, segment_stride| Mat {
            buf,
            offset: l.offset,
            ld: l.ld,
            batch_stride: l.batch_stride,
            agent_stride: l.agent_stride,
            segment_stride,
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
            agents,
            segments,
        };
        let bias_arg = bias.then_some(Bias {
            buf: &biasb,
            offset: lbias.offset,
            batch_stride: lbias.batch_stride,
            agent_stride: lbias.agent_stride,
        });
        let mut rec = Recorder::new(gpu);
        let x = Operands {
            a: mat(&ab, la, sa),
            b: mat(&bb, lb, sb),
            c: mat(&cb, lc, 0),
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
                agents: 1,
                segments: 1,
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
            agents: 1,
            segments: 1,
        };
        // The K-split tiles too: K of 1 (groups without a slice), 16 and 33 (groups past K
        // in the last round), 70.
        for tile in [None, Some(GemmTile::SMALL_K2), Some(GemmTile::SMALL_K4)] {
            run(case, tile, &mut r);
        }
    }
}

#[test]
fn batches_split_into_agents() {
    let mut r = rng("gemm agents");
    // (batch, agents): members per agent 1 (a population of plain layers), 2 and 3 (of an
    // ensemble), and every transposition with a per-agent shared B (the ensemble's input).
    for (i, &(batch, agents)) in [(3, 3), (4, 2), (6, 2), (6, 3)].iter().enumerate() {
        let case = Case {
            m: r.random_range(1..40),
            n: r.random_range(1..40),
            k: r.random_range(1..70),
            batch,
            ta: i % 2 == 1,
            tb: i / 2 == 1,
            acc: i % 2 == 0,
            bias: i != 1,
            alpha: [1.0, -0.5][i % 2],
            pad: [0, 3][i % 2],
            shared_b: i >= 2,
            agents,
            segments: 1,
        };
        for tile in [None, Some(GemmTile::SMALL), Some(GemmTile::SMALL_K4)] {
            run(case, tile, &mut r);
        }
    }
}

#[test]
fn bad_requests_are_errors() {
    let gpu = &gpus()[0];
    let a = GpuBuffer::<f32>::new(gpu, "a", 12).unwrap();
    let c = GpuBuffer::<f32>::new(gpu, "c", 16).unwrap();
    let mut rec = Recorder::new(gpu);
    // Tiles the shader cannot run: K groups not a power of two (or more than 4), 2 outputs
    // per thread, loads that do not split into whole vec4s per thread, more threads or
    // workgroup memory than the device has. Every built-in tile passes.
    for t in GemmTile::ALL {
        t.check(gpu).unwrap();
    }
    let s = GemmTile::SMALL;
    for bad in [
        GemmTile { ks: 3, ..s },
        GemmTile { ks: 8, ..s },
        GemmTile { ks: 0, ..s },
        GemmTile { tm: 2, ..s },
        GemmTile { bk: 2, ..s },
        GemmTile { bk: 0, ..s },
        GemmTile {
            ks: 4,
            ..GemmTile::HUGE
        },
        GemmTile {
            bk: 256,
            ..GemmTile::HUGE
        },
    ] {
        let big = GpuBuffer::<f32>::new(gpu, "big", 64).unwrap();
        let e = gemm::record_with_tile(
            &mut rec,
            &Gemm::new(4, 4, 4),
            Operands::new(Mat::rows(&big, 4), Mat::rows(&big, 4), Mat::rows(&c, 4)),
            bad,
        )
        .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{bad:?}: {e}");
    }
    assert_eq!(rec.dispatches(), 0);
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
    // Overlapping written batches, agents' outputs that overlap, and a batch that does not
    // split into the agents.
    let c_big = GpuBuffer::<f32>::new(gpu, "c", 64).unwrap();
    let mut err = |op: Gemm, c: Mat| {
        let x = Operands::new(Mat::rows(&a, 2), Mat::rows(&a, 2), c);
        gemm::record(&mut rec, &op, x).unwrap_err()
    };
    let two = Gemm {
        batch: 2,
        ..Gemm::new(2, 2, 2)
    };
    let e = err(two, Mat::rows(&c, 2).batched(2));
    assert!(e.to_string().contains("overlap"), "{e}");
    let agents = Gemm {
        batch: 4,
        agents: 2,
        ..Gemm::new(1, 2, 2)
    };
    let e = err(agents, Mat::rows(&c_big, 2).batched(4).per_agent(1));
    assert!(e.to_string().contains("overlap"), "{e}");
    let e = err(
        Gemm {
            agents: 3,
            ..agents
        },
        Mat::rows(&c_big, 2).batched(2),
    );
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
}

#[test]
fn k_segments_sum_their_products() {
    // An ensemble's input gradient: segments of A and B summed over K, with every option,
    // on the default tile, the plain tiles and the K-split ones.
    let mut r = rng("gemm segments");
    for (i, &(segments, batch, agents)) in [(2, 1, 1), (5, 1, 1), (3, 2, 2), (4, 3, 1), (2, 6, 3)]
        .iter()
        .enumerate()
    {
        let case = Case {
            m: r.random_range(1..50),
            n: r.random_range(1..50),
            k: [1, 16, 33, 70, 9][i],
            batch,
            ta: i % 2 == 1,
            tb: i % 3 != 1,
            acc: i % 2 == 0,
            bias: i % 3 != 2,
            alpha: [1.0, -0.5, 2.0][i % 3],
            pad: [0, 3][i % 2],
            shared_b: i == 4,
            agents,
            segments,
        };
        for tile in [
            None,
            Some(GemmTile::SMALL),
            Some(GemmTile::HUGE),
            Some(GemmTile::SMALL_K4),
        ] {
            run(case, tile, &mut r);
        }
    }
}

/// The K-split choice (the default on GPUs): split where 32 x 32 tiles leave a large GPU
/// under two workgroups per SM and K is long, else `choose`'s tile.
#[test]
fn the_k_split_goes_to_small_outputs_with_long_k() {
    let split = GemmTile::choose_split;
    // The dynamics' 256-row layers (128 tiles) and their 512 x 512 weight gradients (256).
    assert_eq!(split(256, 512, 512, 1), GemmTile::SMALL_K4);
    assert_eq!(split(512, 512, 256, 1), GemmTile::SMALL_K4);
    // 768 rows of one network (384 tiles).
    assert_eq!(split(768, 512, 512, 1), GemmTile::SMALL_K2);
    // Short K, and outputs that fill the GPU, keep the plain choice.
    assert_eq!(split(256, 512, 64, 1), GemmTile::choose(256, 512, 1));
    assert_eq!(split(768, 512, 512, 5), GemmTile::choose(768, 512, 5));
    assert_eq!(split(4096, 4096, 4096, 1), GemmTile::HUGE);
    for t in [GemmTile::SMALL_K2, GemmTile::SMALL_K4] {
        assert!(t.threads() <= 256, "{t:?}");
    }
}

/// `Gemm::segment` (how the tensor-core GEMM, which has no segments, runs a segmented multiply:
/// one multiply per segment, adding after the first, the bias with the first) gives the
/// segmented multiply's result.
#[test]
fn a_segmented_multiply_is_its_segments_one_by_one() {
    let mut r = rng("gemm segment split");
    let gpu = &gpus()[0];
    let (m, n, k, segs, pad) = (13, 21, 17, 3, 5);
    let (sa, sb) = (m * k + pad, k * n + pad);
    let a = GpuBuffer::from_slice(gpu, "a", &uniform(&mut r, pad + segs * sa, 1.0)).unwrap();
    let b = GpuBuffer::from_slice(gpu, "b", &uniform(&mut r, pad + segs * sb, 1.0)).unwrap();
    let bias = GpuBuffer::from_slice(gpu, "bias", &uniform(&mut r, n, 1.0)).unwrap();
    let c0 = uniform(&mut r, m * n, 1.0);
    for accumulate in [false, true] {
        let op = Gemm {
            alpha: -0.75,
            accumulate,
            segments: segs,
            ..Gemm::new(m, n, k)
        };
        let cs: Vec<GpuBuffer<f32>> = (0..2)
            .map(|_| GpuBuffer::from_slice(gpu, "c", &c0).unwrap())
            .collect();
        let x = |c| Operands {
            a: Mat::rows(&a, k).at(pad).segmented(sa),
            b: Mat::rows(&b, n).at(pad).segmented(sb),
            c: Mat::rows(c, n),
            bias: Some(Bias {
                buf: &bias,
                offset: 0,
                batch_stride: 0,
                agent_stride: 0,
            }),
        };
        let mut rec = Recorder::new(gpu);
        gemm::record(&mut rec, &op, x(&cs[0])).unwrap();
        for s in 0..segs {
            let (op_s, x_s) = op.segment(x(&cs[1]), s);
            assert_eq!(op_s.segments, 1);
            gemm::record(&mut rec, &op_s, x_s).unwrap();
        }
        let h = [rec.read(&cs[0]), rec.read(&cs[1])];
        let out = rec.finish().unwrap();
        let (whole, split) = (out.get(&h[0]).unwrap(), out.get(&h[1]).unwrap());
        let want: Vec<f64> = whole.iter().map(|&v| v as f64).collect();
        let e = rel_error(&split, &want);
        assert!(e < 1e-5, "accumulate={accumulate}: error {e:e}");
    }
}
