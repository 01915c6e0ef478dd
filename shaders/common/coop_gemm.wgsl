// The tile loop of the tensor-core GEMMs (gemm_coop.wgsl, linear_coop.wgsl): a BM x BN tile
// of C per workgroup, split into WM x WN blocks, one per subgroup, each a grid of FM x FN
// 16x16 cooperative-matrix accumulators (f32). K advances BK at a time: every thread fetches
// its chunks of the next A and B slices (8 consecutive K elements each, as f16) into registers
// while the subgroups multiply the current slices out of workgroup memory.
// A slice is staged K-contiguous ([row][k], [col][k]) for an operand stored K-contiguous, or
// row-contiguous ([k][row], [k][col]: header constants ATR, BTR) for one stored the other
// way, so the importer's fetches are 16- or 32-byte vector loads along the stored rows either
// way and neighbouring threads read neighbouring chunks; the fragment loads read either
// staging (coopLoad and coopLoadT). (Gathering a transposed operand element by element into
// the K-contiguous staging, the first version, ran the backward passes' products slowly.)
// Measured on the H200 (BENCHMARKS.md): 128x128 tiles of four 64x64
// subgroup blocks ran a 4096^3 GEMM 3x faster than the first version of this loop, which
// staged one scalar per load, indexed its accumulators in loops and stored through workgroup
// memory with a barrier pair per fragment.
//
// The importer provides the header constants BM, BN, BK, WM, WN (multiples of 16, BK of 32
// and the chunk counts BM * BK / 8 and BN * BK / 8 multiples of the workgroup size), SG (the
// subgroup size), FM, FN, KS, A_CH, B_CH, ATR, BTR (CoopTile::header), and these functions:
//   coop_a8(bt, row, k, k_end) -> H8   elements k..k+8 of row `row` of op(A) for batch bt,
//                                       0 past k_end and for rows >= m; with ATR instead
//                                       rows row..row+8 of op(A) at k, 0 where k >= k_end
//                                       and for rows >= m
//   coop_b8(bt, col, k, k_end) -> H8   elements k..k+8 of column `col` of op(B) (along K),
//                                       0 past k_end and for columns >= n; with BTR columns
//                                       col..col+8 at k
//   coop_fast_end(bt, k_begin, k_end)  k_begin plus a multiple of BK, at most k_end: up to
//                                       there the two below may be used (k_begin: never)
//   coop_a8_fast(bt, row, k) -> H8     coop_a8 without checks: any value for rows >= m
//   coop_b8_fast(bt, col, k) -> H8     likewise for columns >= n
//   coop_out(bt, row, col, v)          the f32 result of one output (rows and columns past
//                                       the matrix included: the importer drops them)
// Operands are rounded to f16 when fetched (|x| > 65504 becomes infinite); products are exact
// in the f32 accumulator.

enable f16;
enable wgpu_cooperative_matrix;

// Eight consecutive K elements of one row of an operand.
struct H8 {
    lo: vec4<f16>,
    hi: vec4<f16>,
}

const NSG: u32 = (BM / WM) * (BN / WN);
const WG: u32 = NSG * SG;
// Leading dimension of the staged slices, in f16: 8 extra (16 bytes) keep every fragment
// 16-byte aligned, as cooperative loads want, and spread rows over the banks.
const LD: u32 = BK + 8u;
// 8-element chunks per staged row. The header also gives FM = WM / 16 and FN = WN / 16
// (accumulators per subgroup), KS = BK / 16 (fragment steps per slice) and A_CH, B_CH (chunks
// per thread of each slice), the bounds of the #for blocks below.
const CPR: u32 = BK / 8u;

// Leading dimensions of the row-contiguous stagings ([k][row], [k][col]), in f16.
const LDA_T: u32 = BM + 8u;
const LDB_T: u32 = BN + 8u;

#if ATR
var<workgroup> coop_as: array<f16, BK * LDA_T>;
#else
var<workgroup> coop_as: array<f16, BM * LD>;
#endif
#if BTR
var<workgroup> coop_bs: array<f16, BK * LDB_T>;
#else
var<workgroup> coop_bs: array<f16, BN * LD>;
#endif
// Two 16x16 f32 blocks per subgroup, used in turn to hand accumulators to the epilogue.
var<workgroup> coop_cs: array<f32, NSG * 512u>;

// The chunk of k0..k0+8 from f32 elements, zero from k_end on.
fn h8_from(v: array<f32, 8>, k0: u32, k_end: u32) -> H8 {
    var w = v;
    for (var j = 0u; j < 8u; j++) {
        if (k0 + j >= k_end) {
            w[j] = 0.0;
        }
    }
    return H8(vec4<f16>(vec4<f32>(w[0], w[1], w[2], w[3])), vec4<f16>(vec4<f32>(w[4], w[5], w[6], w[7])));
}

fn coop_put_a(at: u32, v: H8) {
    coop_as[at] = v.lo.x;
    coop_as[at + 1u] = v.lo.y;
    coop_as[at + 2u] = v.lo.z;
    coop_as[at + 3u] = v.lo.w;
    coop_as[at + 4u] = v.hi.x;
    coop_as[at + 5u] = v.hi.y;
    coop_as[at + 6u] = v.hi.z;
    coop_as[at + 7u] = v.hi.w;
}

fn coop_put_b(at: u32, v: H8) {
    coop_bs[at] = v.lo.x;
    coop_bs[at + 1u] = v.lo.y;
    coop_bs[at + 2u] = v.lo.z;
    coop_bs[at + 3u] = v.lo.w;
    coop_bs[at + 4u] = v.hi.x;
    coop_bs[at + 5u] = v.hi.y;
    coop_bs[at + 6u] = v.hi.z;
    coop_bs[at + 7u] = v.hi.w;
}

// Chunk c of an A slice: its first row (offset in the tile), its K offset and its staged
// position. K-contiguous: row c / CPR, K (c % CPR) * 8. Row-contiguous (ATR): K c / (BM / 8),
// rows from (c % (BM / 8)) * 8.
fn a_row(c: u32) -> u32 {
#if ATR
    return (c % (BM / 8u)) * 8u;
#else
    return c / CPR;
#endif
}

fn a_k(c: u32) -> u32 {
#if ATR
    return c / (BM / 8u);
#else
    return (c % CPR) * 8u;
#endif
}

fn a_at(c: u32) -> u32 {
#if ATR
    return a_k(c) * LDA_T + a_row(c);
#else
    return (c / CPR) * LD + (c % CPR) * 8u;
#endif
}

// The same for B (BTR: row-contiguous, columns from (c % (BN / 8)) * 8).
fn b_col(c: u32) -> u32 {
#if BTR
    return (c % (BN / 8u)) * 8u;
#else
    return c / CPR;
#endif
}

fn b_k(c: u32) -> u32 {
#if BTR
    return c / (BN / 8u);
#else
    return (c % CPR) * 8u;
#endif
}

fn b_at(c: u32) -> u32 {
#if BTR
    return b_k(c) * LDB_T + b_col(c);
#else
    return (c / CPR) * LD + (c % CPR) * 8u;
#endif
}

// Hand out the 16x16 block at coop_cs[at..] (this subgroup's) to rows r0.., columns c0...
fn coop_drain(bt: u32, r0: u32, c0: u32, at: u32, lane: u32) {
    for (var e = lane; e < 256u; e += SG) {
        coop_out(bt, r0 + e / 16u, c0 + e % 16u, coop_cs[at + e]);
    }
}

// C[row0.., col0..] of batch bt over k in [k_begin, k_end). Every invocation of the workgroup
// calls it (the barriers and the cooperative operations need them all); sg and lane are the
// subgroup builtins. Accumulators, fragments and fetched chunks are separate variables
// (#for), not arrays indexed in loops, so they stay in registers.
// Slices up to coop_fast_end (the importer's promise that unconditional vector loads are
// valid there) are fetched one ahead, during the products of the previous one; the rest with
// checked loads. (Checked loads everywhere, each behind its own branches, ran 2-3x slower on
// the H200: 29 against 62-83 TFLOP/s.)
fn coop_tile(
    bt: u32,
    row0: u32,
    col0: u32,
    k_begin: u32,
    k_end: u32,
    tid: u32,
    sg: u32,
    lane: u32,
) {
    let wm = (sg / (BN / WN)) * WM;
    let wn = (sg % (BN / WN)) * WN;
    // Function variables start at zero.
#for I in 0..FM
#for J in 0..FN
    var acc_{I}_{J}: coop_mat16x16<f32, C>;
#endfor
#endfor
    // Uniform in fact; only branches without barriers or cooperative operations depend on it.
    let kf = coop_fast_end(bt, k_begin, k_end);
#for R in 0..A_CH
    var ra_{R}: H8;
#endfor
#for R in 0..B_CH
    var rb_{R}: H8;
#endfor
    if (kf > k_begin) {
#for R in 0..A_CH
        ra_{R} = coop_a8_fast(bt, row0 + a_row(tid + {R}u * WG), k_begin + a_k(tid + {R}u * WG));
#endfor
#for R in 0..B_CH
        rb_{R} = coop_b8_fast(bt, col0 + b_col(tid + {R}u * WG), k_begin + b_k(tid + {R}u * WG));
#endfor
    }
    // One loop for both phases: the branches only fetch, so every cooperative operation sits
    // in the same straight-line body (a first version with a loop per phase gave wrong sums
    // on the H200 where the first loop ran no iteration).
    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        if (k0 >= kf) {
#for R in 0..A_CH
            ra_{R} = coop_a8(bt, row0 + a_row(tid + {R}u * WG), k0 + a_k(tid + {R}u * WG), k_end);
#endfor
#for R in 0..B_CH
            rb_{R} = coop_b8(bt, col0 + b_col(tid + {R}u * WG), k0 + b_k(tid + {R}u * WG), k_end);
#endfor
        }
        workgroupBarrier();
#for R in 0..A_CH
        coop_put_a(a_at(tid + {R}u * WG), ra_{R});
#endfor
#for R in 0..B_CH
        coop_put_b(b_at(tid + {R}u * WG), rb_{R});
#endfor
        workgroupBarrier();
        // The next fast slice's loads are in flight while this one is multiplied.
        let kn = k0 + BK;
        if (kn < kf) {
#for R in 0..A_CH
            ra_{R} = coop_a8_fast(bt, row0 + a_row(tid + {R}u * WG), kn + a_k(tid + {R}u * WG));
#endfor
#for R in 0..B_CH
            rb_{R} = coop_b8_fast(bt, col0 + b_col(tid + {R}u * WG), kn + b_k(tid + {R}u * WG));
#endfor
        }
#for S in 0..KS
#for J in 0..FN
#if BTR
        let b_{S}_{J} = coopLoadT<coop_mat16x16<f16, B>>(&coop_bs[{S}u * 16u * LDB_T + wn + {J}u * 16u], LDB_T);
#else
        let b_{S}_{J} = coopLoad<coop_mat16x16<f16, B>>(&coop_bs[(wn + {J}u * 16u) * LD + {S}u * 16u], LD);
#endif
#endfor
#for I in 0..FM
#if ATR
        let a_{S}_{I} = coopLoad<coop_mat16x16<f16, A>>(&coop_as[{S}u * 16u * LDA_T + wm + {I}u * 16u], LDA_T);
#else
        let a_{S}_{I} = coopLoadT<coop_mat16x16<f16, A>>(&coop_as[(wm + {I}u * 16u) * LD + {S}u * 16u], LD);
#endif
#for J in 0..FN
        acc_{I}_{J} = coopMultiplyAdd(a_{S}_{I}, b_{S}_{J}, acc_{I}_{J});
#endfor
#endfor
#endfor
    }
    // Each accumulator goes through one of this subgroup's two blocks of workgroup memory,
    // where every lane can read the elements it writes out (a fragment's layout is opaque).
    // Alternating blocks needs one barrier per fragment: the barrier after a store also
    // orders the previous fragment's reads of the other block before its next store.
#for I in 0..FM
#for J in 0..FN
    coopStoreT(acc_{I}_{J}, &coop_cs[sg * 512u + (({I}u * FN + {J}u) % 2u) * 256u], 16u);
    workgroupBarrier();
    coop_drain(bt, row0 + wm + {I}u * 16u, col0 + wn + {J}u * 16u, sg * 512u + (({I}u * FN + {J}u) % 2u) * 256u, lane);
#endfor
#endfor
}
