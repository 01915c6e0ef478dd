// General strided batched GEMM for the training passes:
//   C[b] = alpha * op(A[b]) op(B[b]) (+ bias[b] per column) (+ C[b] when ACC)
// with op(X) = X or X^T chosen by override constants. The backward of a linear layer
// y = x W^T + b is three of these: dX = dY W (NN), dW += dY^T X (TN, accumulating over
// time steps), and the forward itself is x W^T (NT). Offsets and leading dimensions let one
// call read a column block of a concatenated input [Z | A] or write one of its gradient.
//
// Each workgroup computes a BM x BN tile of C, TM x TN outputs per thread in 4 x 4 blocks
// spread over the tile (strides 4 WY and 4 WX), through workgroup tiles stored K-major as
// vec4s of 4 rows (or 4 columns), padded by one vec4 per K-row so scattered stores spread over
// banks. Each thread loads whole vec4s of the next K-slice into registers while the current
// one is multiplied. The load mapping follows the operand's contiguous dimension: along K
// for A (B^T), along M (N) for A^T (B), so neighbouring threads read neighbouring words.
//
// KS > 1 splits K inside the workgroup: KS groups of threads each run the tile over every
// KS-th K-slice into their own tiles, then merge their sums in workgroup memory (halving:
// the upper half of the groups writes, the lower half adds) and group 0 writes C. Small
// outputs (a 256-row layer: 128 tiles of 32 x 32) then get KS times the threads per tile and
// a K loop KS times shorter, in the same single dispatch (no partials, no second pass).
// Tile constants come from a header the Rust side writes.
// CPU mirror: src/reference/gemm.rs.

override TA: bool = false;
override TB: bool = false;
override ACC: bool = false;
override BIAS: bool = false;
// K segments: the multiply sums p.segs products over K, segment s of A and B p.a_ss * s and
// p.b_ss * s further (an ensemble's input gradient summed over its members in one launch).
override SEG: bool = false;

#import common/gemm_params

const WX: u32 = BN / TN;
const WY: u32 = BM / TM;
// Threads of one K group, and of the workgroup.
const WXY: u32 = WX * WY;
const WG: u32 = WXY * KS;
const RM: u32 = TM / 4u;
const RN: u32 = TN / 4u;
// vec4s per K-row of a tile, one of padding included.
const SA: u32 = BM / 4u + 1u;
const SB: u32 = BN / 4u + 1u;
// vec4 loads per thread per K-slice.
const A_V4: u32 = BM * BK / (4u * WXY);
const B_V4: u32 = BN * BK / (4u * WXY);
// Each K group's A tile, then its B tile; after the K loop, the sums being merged.
const GROUP_V4: u32 = BK * (SA + SB);
const ACC_V4: u32 = TM * RN;
const SH_V4: u32 = max(KS * GROUP_V4, (KS / 2u) * WXY * ACC_V4);

var<workgroup> sh: array<vec4<f32>, SH_V4>;

// K over all segments.
fn k_total() -> u32 {
    return select(p.k, p.k * p.segs, SEG);
}

// (segment, K within it) of a K index over all segments.
fn k_split(kk: u32) -> vec2<u32> {
    if (!SEG) {
        return vec2<u32>(0u, kk);
    }
    let s = kk / p.k;
    return vec2<u32>(s, kk - s * p.k);
}

// op(A)[i, kk] of the batch whose A starts at `base`, 0 outside the matrix.
fn load_a(base: u32, i: u32, kk: u32) -> f32 {
    if (i >= p.m || kk >= k_total()) {
        return 0.0;
    }
    let sk = k_split(kk);
    let at = base + sk.x * p.a_ss;
    if (TA) {
        return ga[at + sk.y * p.lda + i];
    }
    return ga[at + i * p.lda + sk.y];
}

// op(B)[kk, j] of the batch whose B starts at `base`, 0 outside the matrix.
fn load_b(base: u32, kk: u32, j: u32) -> f32 {
    if (kk >= k_total() || j >= p.n) {
        return 0.0;
    }
    let sk = k_split(kk);
    let at = base + sk.x * p.b_ss;
    if (TB) {
        return gb[at + j * p.ldb + sk.y];
    }
    return gb[at + sk.y * p.ldb + j];
}

// (k, 4-row block) of load i of the A tile: consecutive loads walk A's contiguous dimension.
fn a_slot(i: u32) -> vec2<u32> {
    if (TA) {
        return vec2<u32>(i / (BM / 4u), i % (BM / 4u));
    }
    return vec2<u32>(i % BK, i / BK);
}

// (k, 4-column block) of load i of the B tile.
fn b_slot(i: u32) -> vec2<u32> {
    if (TB) {
        return vec2<u32>(i % BK, i / BK);
    }
    return vec2<u32>(i / (BN / 4u), i % (BN / 4u));
}

fn load_tiles(
    ab: vec2<u32>,
    row0: u32,
    col0: u32,
    k0: u32,
    tid: u32,
    ra: ptr<function, array<vec4<f32>, A_V4>>,
    rb: ptr<function, array<vec4<f32>, B_V4>>,
) {
    for (var r = 0u; r < A_V4; r++) {
        let s = a_slot(tid + r * WXY);
        let row = row0 + s.y * 4u;
        let k = k0 + s.x;
        (*ra)[r] = vec4<f32>(
            load_a(ab.x, row, k),
            load_a(ab.x, row + 1u, k),
            load_a(ab.x, row + 2u, k),
            load_a(ab.x, row + 3u, k),
        );
    }
    for (var r = 0u; r < B_V4; r++) {
        let s = b_slot(tid + r * WXY);
        let col = col0 + s.y * 4u;
        let k = k0 + s.x;
        (*rb)[r] = vec4<f32>(
            load_b(ab.y, k, col),
            load_b(ab.y, k, col + 1u),
            load_b(ab.y, k, col + 2u),
            load_b(ab.y, k, col + 3u),
        );
    }
}

@compute @workgroup_size(WG)
fn gemm(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let bt = wid.z;
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    // K group kg, thread tid within it.
    let kg = lid / WXY;
    let tid = lid % WXY;
    let tx = tid % WX;
    let ty = tid / WX;
    let a0 = kg * GROUP_V4;
    let b0 = a0 + BK * SA;
    var acc: array<vec4<f32>, ACC_V4>;
    var ra: array<vec4<f32>, A_V4>;
    var rb: array<vec4<f32>, B_V4>;
    // Where this batch's A and B start (computed once: the agent split divides).
    let ab = vec2<u32>(
        p.a_off + batch_off(bt, p.a_bs, p.a_as),
        p.b_off + batch_off(bt, p.b_bs, p.b_as),
    );
    let c_base = p.c_off + batch_off(bt, p.c_bs, p.c_as);
    let bias_base = p.bias_off + batch_off(bt, p.bias_bs, p.bias_as);
    // Group kg takes K-slices kg, kg + KS, ...: every group runs the same trip count (slices
    // past K load zeros), so the barriers stay uniform.
    load_tiles(ab, row0, col0, kg * BK, tid, &ra, &rb);
    let kt = k_total();
    for (var k0 = 0u; k0 < kt; k0 += KS * BK) {
        workgroupBarrier();
        for (var r = 0u; r < A_V4; r++) {
            let s = a_slot(tid + r * WXY);
            sh[a0 + s.x * SA + s.y] = ra[r];
        }
        for (var r = 0u; r < B_V4; r++) {
            let s = b_slot(tid + r * WXY);
            sh[b0 + s.x * SB + s.y] = rb[r];
        }
        workgroupBarrier();
        if (k0 + KS * BK < kt) {
            load_tiles(ab, row0, col0, k0 + (KS + kg) * BK, tid, &ra, &rb);
        }
        for (var kk = 0u; kk < BK; kk++) {
            var av: array<vec4<f32>, RM>;
            var bv: array<vec4<f32>, RN>;
            for (var i = 0u; i < RM; i++) {
                av[i] = sh[a0 + kk * SA + i * WY + ty];
            }
            for (var j = 0u; j < RN; j++) {
                bv[j] = sh[b0 + kk * SB + j * WX + tx];
            }
            for (var i = 0u; i < RM; i++) {
                for (var r = 0u; r < 4u; r++) {
                    let a = vec4<f32>(av[i][r]);
                    for (var j = 0u; j < RN; j++) {
                        let o = (i * 4u + r) * RN + j;
                        acc[o] = fma(a, bv[j], acc[o]);
                    }
                }
            }
        }
    }
    // Merge the K groups' sums into group 0 (KS is a power of two), a fixed order.
    for (var h = KS / 2u; h > 0u; h >>= 1u) {
        workgroupBarrier();
        if (kg >= h && kg < 2u * h) {
            for (var o = 0u; o < ACC_V4; o++) {
                sh[(o * h + kg - h) * WXY + tid] = acc[o];
            }
        }
        workgroupBarrier();
        if (kg < h) {
            for (var o = 0u; o < ACC_V4; o++) {
                acc[o] += sh[(o * h + kg) * WXY + tid];
            }
        }
    }
    if (kg != 0u) {
        return;
    }
    for (var i = 0u; i < RM; i++) {
        for (var r = 0u; r < 4u; r++) {
            let row = row0 + (i * WY + ty) * 4u + r;
            if (row >= p.m) {
                continue;
            }
            for (var j = 0u; j < RN; j++) {
                let v4 = acc[(i * 4u + r) * RN + j];
                for (var c = 0u; c < 4u; c++) {
                    let col = col0 + (j * WX + tx) * 4u + c;
                    if (col >= p.n) {
                        continue;
                    }
                    var v = p.alpha * v4[c];
                    if (BIAS) {
                        v += gbias[bias_base + col];
                    }
                    let at = c_base + row * p.ldc + col;
                    if (ACC) {
                        v += gc[at];
                    }
                    gc[at] = v;
                }
            }
        }
    }
}
