// General strided batched GEMM for the training passes:
//   C[b] = alpha * op(A[b]) op(B[b]) (+ bias[b] per column) (+ C[b] when ACC)
// with op(X) = X or X^T chosen by override constants. The backward of a linear layer
// y = x W^T + b is three of these: dX = dY W (NN), dW += dY^T X (TN, accumulating over
// time steps), and the forward itself is x W^T (NT). Offsets and leading dimensions let one
// call read a column block of a concatenated input [Z | A] or write one of its gradient.
//
// Each workgroup computes a BM x BN tile of C through workgroup memory, TM x TN outputs per
// thread spread over the tile with strides WY and WX, so that neighbouring threads read
// neighbouring words of workgroup memory and write neighbouring columns of C. The tiles are
// stored with one word of padding per row: a load of A along K (not transposed) then lands
// in distinct banks. Tile constants come from a header the Rust side writes.
// CPU mirror: src/reference/gemm.rs.

override TA: bool = false;
override TB: bool = false;
override ACC: bool = false;
override BIAS: bool = false;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    alpha: f32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    a_off: u32,
    b_off: u32,
    c_off: u32,
    bias_off: u32,
    a_bs: u32,
    b_bs: u32,
    c_bs: u32,
    bias_bs: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> ga: array<f32>;
@group(0) @binding(1) var<storage, read> gb: array<f32>;
@group(0) @binding(2) var<storage, read_write> gc: array<f32>;
@group(0) @binding(3) var<storage, read> gbias: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

const WX: u32 = BN / TN;
const WY: u32 = BM / TM;
const WG: u32 = WX * WY;
const SA: u32 = BM + 1u;
const SB: u32 = BN + 1u;

var<workgroup> As: array<f32, BK * SA>;
var<workgroup> Bs: array<f32, BK * SB>;

// op(A)[i, kk] of batch bt, 0 outside the matrix.
fn load_a(bt: u32, i: u32, kk: u32) -> f32 {
    if (i >= p.m || kk >= p.k) {
        return 0.0;
    }
    let base = p.a_off + bt * p.a_bs;
    if (TA) {
        return ga[base + kk * p.lda + i];
    }
    return ga[base + i * p.lda + kk];
}

// op(B)[kk, j] of batch bt, 0 outside the matrix.
fn load_b(bt: u32, kk: u32, j: u32) -> f32 {
    if (kk >= p.k || j >= p.n) {
        return 0.0;
    }
    let base = p.b_off + bt * p.b_bs;
    if (TB) {
        return gb[base + j * p.ldb + kk];
    }
    return gb[base + kk * p.ldb + j];
}

@compute @workgroup_size(WG)
fn gemm(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let bt = wid.z;
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let tx = tid % WX;
    let ty = tid / WX;
    var acc: array<f32, TM * TN>;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Consecutive threads walk the operand's contiguous dimension: coalesced reads.
        for (var l = tid; l < BM * BK; l += WG) {
            var i: u32;
            var kk: u32;
            if (TA) {
                i = l % BM;
                kk = l / BM;
            } else {
                kk = l % BK;
                i = l / BK;
            }
            As[kk * SA + i] = load_a(bt, row0 + i, k0 + kk);
        }
        for (var l = tid; l < BN * BK; l += WG) {
            var j: u32;
            var kk: u32;
            if (TB) {
                kk = l % BK;
                j = l / BK;
            } else {
                j = l % BN;
                kk = l / BN;
            }
            Bs[kk * SB + j] = load_b(bt, k0 + kk, col0 + j);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var a: array<f32, TM>;
            var b: array<f32, TN>;
            for (var r = 0u; r < TM; r++) {
                a[r] = As[kk * SA + ty + r * WY];
            }
            for (var c = 0u; c < TN; c++) {
                b[c] = Bs[kk * SB + tx + c * WX];
            }
            for (var r = 0u; r < TM; r++) {
                for (var c = 0u; c < TN; c++) {
                    acc[r * TN + c] = fma(a[r], b[c], acc[r * TN + c]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < TM; r++) {
        let i = row0 + ty + r * WY;
        if (i >= p.m) {
            continue;
        }
        for (var c = 0u; c < TN; c++) {
            let j = col0 + tx + c * WX;
            if (j >= p.n) {
                continue;
            }
            var v = p.alpha * acc[r * TN + c];
            if (BIAS) {
                v += gbias[p.bias_off + bt * p.bias_bs + j];
            }
            let at = p.c_off + bt * p.c_bs + i * p.ldc + j;
            if (ACC) {
                v += gc[at];
            }
            gc[at] = v;
        }
    }
}
