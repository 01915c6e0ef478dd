// The tile loop of the tensor-core GEMMs (gemm_coop.wgsl, linear_coop.wgsl): a BM x BN tile
// of C per workgroup, split into WM x WN blocks, one per subgroup, each a grid of 16x16
// cooperative-matrix accumulators (f32). K advances BK at a time: every thread loads its
// share of the next A and B slices from global memory (f32 or f16) into registers as f16
// while the subgroups multiply the current slices out of workgroup memory, so one global read
// feeds every subgroup that needs it (the naive kernel's subgroups each read their own).
//
// The importer provides the header constants BM, BN, BK, WM, WN (multiples of 16) and SG (the
// subgroup size), and three functions:
//   coop_a(bt, i, k) -> f32      element (i, k) of op(A) for batch bt (in bounds: the loop
//                                 never asks outside [0, m) x [k_begin, k_end) it was given
//                                 except for rows >= m, which the importer answers with 0)
//   coop_b(bt, k, j) -> f32      element (k, j) of op(B), likewise columns >= n give 0
//   coop_out(bt, row, col, v)    the f32 result of one output (rows and columns past the
//                                 matrix included: the importer drops them)
// and sets A_KMAJOR / B_KMAJOR to say which dimension of each operand is contiguous in
// memory, so that neighbouring threads read neighbouring words and the staged tile is laid
// out for a cooperative load in the matching order (row-major A and column-major B when K is
// contiguous).
// Operands are rounded to f16 when staged (|x| > 65504 becomes infinite); products are exact
// in the f32 accumulator.

enable f16;
enable wgpu_cooperative_matrix;

// A's K index is its contiguous dimension (A stored [m, k]); false: stored [k, m].
override A_KMAJOR: bool = true;
// B's K index is contiguous (B stored [n, k], a torch weight); false: stored [k, n].
override B_KMAJOR: bool = false;

const NSG: u32 = (BM / WM) * (BN / WN);
const WG: u32 = NSG * SG;
const FM: u32 = WM / 16u;
const FN: u32 = WN / 16u;
// Leading dimensions of the staged tiles, in f16 elements. The 8 extra (16 bytes) keep every
// fragment 16-byte aligned, as cooperative loads want, and move rows across banks.
const LDA_K: u32 = BK + 8u;
const LDA_M: u32 = BM + 8u;
const LDB_K: u32 = BK + 8u;
const LDB_N: u32 = BN + 8u;
const A_LOADS: u32 = BM * BK / WG;
const B_LOADS: u32 = BN * BK / WG;

var<workgroup> coop_as: array<f16, max(BM * LDA_K, BK * LDA_M)>;
var<workgroup> coop_bs: array<f16, max(BN * LDB_K, BK * LDB_N)>;
// One 16x16 f32 block per subgroup, to hand accumulators to the importer's epilogue.
var<workgroup> coop_cs: array<f32, NSG * 256u>;

// (row of op(A), k) of load i: consecutive i walk A's contiguous dimension.
fn coop_a_slot(i: u32) -> vec2<u32> {
    if (A_KMAJOR) {
        return vec2<u32>(i / BK, i % BK);
    }
    return vec2<u32>(i % BM, i / BM);
}

fn coop_a_at(s: vec2<u32>) -> u32 {
    if (A_KMAJOR) {
        return s.x * LDA_K + s.y;
    }
    return s.y * LDA_M + s.x;
}

// (column of op(B), k) of load i.
fn coop_b_slot(i: u32) -> vec2<u32> {
    if (B_KMAJOR) {
        return vec2<u32>(i / BK, i % BK);
    }
    return vec2<u32>(i % BN, i / BN);
}

fn coop_b_at(s: vec2<u32>) -> u32 {
    if (B_KMAJOR) {
        return s.x * LDB_K + s.y;
    }
    return s.y * LDB_N + s.x;
}

fn coop_fetch(
    bt: u32,
    row0: u32,
    col0: u32,
    k0: u32,
    k_end: u32,
    tid: u32,
    ra: ptr<function, array<f16, A_LOADS>>,
    rb: ptr<function, array<f16, B_LOADS>>,
) {
    for (var r = 0u; r < A_LOADS; r++) {
        let s = coop_a_slot(tid + r * WG);
        var v = 0.0;
        if (k0 + s.y < k_end) {
            v = coop_a(bt, row0 + s.x, k0 + s.y);
        }
        (*ra)[r] = f16(v);
    }
    for (var r = 0u; r < B_LOADS; r++) {
        let s = coop_b_slot(tid + r * WG);
        var v = 0.0;
        if (k0 + s.y < k_end) {
            v = coop_b(bt, k0 + s.y, col0 + s.x);
        }
        (*rb)[r] = f16(v);
    }
}

// The 16x16 block of op(A) at rows m0.., k0.. of the staged slice.
fn coop_frag_a(m0: u32, k0: u32) -> coop_mat16x16<f16, A> {
    if (A_KMAJOR) {
        return coopLoadT<coop_mat16x16<f16, A>>(&coop_as[m0 * LDA_K + k0], LDA_K);
    }
    return coopLoad<coop_mat16x16<f16, A>>(&coop_as[k0 * LDA_M + m0], LDA_M);
}

// The 16x16 block of op(B) at k0.., columns n0.. of the staged slice.
fn coop_frag_b(k0: u32, n0: u32) -> coop_mat16x16<f16, B> {
    if (B_KMAJOR) {
        return coopLoad<coop_mat16x16<f16, B>>(&coop_bs[n0 * LDB_K + k0], LDB_K);
    }
    return coopLoadT<coop_mat16x16<f16, B>>(&coop_bs[k0 * LDB_N + n0], LDB_N);
}

// C[row0.., col0..] of batch bt over k in [k_begin, k_end). Every invocation of the workgroup
// calls it (the barriers and the cooperative operations need them all); sg and lane are the
// subgroup builtins.
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
    var acc: array<coop_mat16x16<f32, C>, FM * FN>;
    var ra: array<f16, A_LOADS>;
    var rb: array<f16, B_LOADS>;
    coop_fetch(bt, row0, col0, k_begin, k_end, tid, &ra, &rb);
    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        workgroupBarrier();
        for (var r = 0u; r < A_LOADS; r++) {
            coop_as[coop_a_at(coop_a_slot(tid + r * WG))] = ra[r];
        }
        for (var r = 0u; r < B_LOADS; r++) {
            coop_bs[coop_b_at(coop_b_slot(tid + r * WG))] = rb[r];
        }
        workgroupBarrier();
        if (k0 + BK < k_end) {
            coop_fetch(bt, row0, col0, k0 + BK, k_end, tid, &ra, &rb);
        }
        for (var kk = 0u; kk < BK; kk += 16u) {
            var bf: array<coop_mat16x16<f16, B>, FN>;
            for (var j = 0u; j < FN; j++) {
                bf[j] = coop_frag_b(kk, wn + j * 16u);
            }
            for (var i = 0u; i < FM; i++) {
                let af = coop_frag_a(wm + i * 16u, kk);
                for (var j = 0u; j < FN; j++) {
                    acc[i * FN + j] = coopMultiplyAdd(af, bf[j], acc[i * FN + j]);
                }
            }
        }
    }
    // Each accumulator goes through this subgroup's 16x16 block of workgroup memory, where
    // every lane can read the elements it writes out (a fragment's layout is opaque).
    for (var f = 0u; f < FM * FN; f++) {
        coopStoreT(acc[f], &coop_cs[sg * 256u], 16u);
        workgroupBarrier();
        let r0 = row0 + wm + (f / FN) * 16u;
        let c0 = col0 + wn + (f % FN) * 16u;
        for (var e = lane; e < 256u; e += SG) {
            coop_out(bt, r0 + e / 16u, c0 + e % 16u, coop_cs[sg * 256u + e]);
        }
        workgroupBarrier();
    }
}
