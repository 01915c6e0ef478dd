// Strided batched GEMM on cooperative matrices (tensor cores), the f32-in, f32-out twin of
// gemm.wgsl: C[b] = alpha * op(A[b]) op(B[b]) (+ bias[b] per column) (+ C[b] when ACC), with
// the operands rounded to f16 for the products and the sums kept in f32. Same parameters,
// bindings and dispatch grid as gemm.wgsl (one BM x BN tile per workgroup, batches along z);
// the tile loop is common/coop_gemm.wgsl. op(A) = A^T when A_KMAJOR is false, op(B) = B^T
// when B_KMAJOR is true (the Rust side sets them from the transposes).
// Edges: loads outside the matrix give 0 and stores outside it are dropped, so any M, N, K
// works; only the tensor-core work of the partial tiles is wasted.
// CPU mirror: src/reference/gemm_coop.rs.

#import common/coop_gemm

// A stored [m, k] (K contiguous); false: stored [k, m], op(A) = A^T.
override A_KMAJOR: bool = true;
// B stored [n, k] (K contiguous), op(B) = B^T; false: stored [k, n].
override B_KMAJOR: bool = false;
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
// Views of bindings 0 and 1 as vec4 for the 16-byte loads of K-contiguous chunks.
@group(0) @binding(5) var<storage, read> ga4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> gb4: array<vec4<f32>>;

// Elements k..k+8 of a K-contiguous row starting at `at` of the f32 buffer seen as v4 (ga4
// or gb4): two vector loads where the chunk is whole and 16-byte aligned.
fn chunk_kmajor(is_a: bool, at: u32, k: u32, k_end: u32) -> H8 {
    var v: array<f32, 8>;
    if (k + 8u <= k_end && (at & 3u) == 0u) {
        var x: vec4<f32>;
        var y: vec4<f32>;
        if (is_a) {
            x = ga4[at / 4u];
            y = ga4[at / 4u + 1u];
        } else {
            x = gb4[at / 4u];
            y = gb4[at / 4u + 1u];
        }
        return H8(vec4<f16>(x), vec4<f16>(y));
    }
    for (var j = 0u; j < 8u; j++) {
        if (k + j < k_end) {
            if (is_a) {
                v[j] = ga[at + j];
            } else {
                v[j] = gb[at + j];
            }
        }
    }
    return h8_from(v, k, k_end);
}

// Whole slices up to here have both operands K-contiguous with 16-byte aligned rows (rows
// and columns past the matrix are clamped, their results dropped).
fn coop_fast_end(bt: u32, k_begin: u32, k_end: u32) -> u32 {
    let a0 = p.a_off + bt * p.a_bs;
    let b0 = p.b_off + bt * p.b_bs;
    let aligned = ((a0 | p.lda | b0 | p.ldb) & 3u) == 0u;
    if (!A_KMAJOR || !B_KMAJOR || !aligned) {
        return k_begin;
    }
    return k_begin + (k_end - k_begin) / BK * BK;
}

fn coop_a8_fast(bt: u32, i: u32, kk: u32) -> H8 {
    let at = (p.a_off + bt * p.a_bs + min(i, p.m - 1u) * p.lda + kk) / 4u;
    return H8(vec4<f16>(ga4[at]), vec4<f16>(ga4[at + 1u]));
}

fn coop_b8_fast(bt: u32, j: u32, kk: u32) -> H8 {
    let at = (p.b_off + bt * p.b_bs + min(j, p.n - 1u) * p.ldb + kk) / 4u;
    return H8(vec4<f16>(gb4[at]), vec4<f16>(gb4[at + 1u]));
}

fn coop_a8(bt: u32, i: u32, kk: u32, k_end: u32) -> H8 {
    if (i >= p.m) {
        return H8();
    }
    let base = p.a_off + bt * p.a_bs;
    if (A_KMAJOR) {
        return chunk_kmajor(true, base + i * p.lda + kk, kk, k_end);
    }
    // A stored [k, m]: a strided gather (the tiles of the backward passes' dY^T X).
    var v: array<f32, 8>;
    for (var j = 0u; j < 8u; j++) {
        if (kk + j < k_end) {
            v[j] = ga[base + (kk + j) * p.lda + i];
        }
    }
    return h8_from(v, kk, k_end);
}

fn coop_b8(bt: u32, j: u32, kk: u32, k_end: u32) -> H8 {
    if (j >= p.n) {
        return H8();
    }
    let base = p.b_off + bt * p.b_bs;
    if (B_KMAJOR) {
        return chunk_kmajor(false, base + j * p.ldb + kk, kk, k_end);
    }
    var v: array<f32, 8>;
    for (var t = 0u; t < 8u; t++) {
        if (kk + t < k_end) {
            v[t] = gb[base + (kk + t) * p.ldb + j];
        }
    }
    return h8_from(v, kk, k_end);
}

fn coop_out(bt: u32, row: u32, col: u32, acc: f32) {
    if (row >= p.m || col >= p.n) {
        return;
    }
    var v = p.alpha * acc;
    if (BIAS) {
        v += gbias[p.bias_off + bt * p.bias_bs + col];
    }
    let at = p.c_off + bt * p.c_bs + row * p.ldc + col;
    if (ACC) {
        v += gc[at];
    }
    gc[at] = v;
}

@compute @workgroup_size(WG)
fn gemm(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    coop_tile(wid.z, wid.y * BM, wid.x * BN, 0u, p.k, tid, sg, lane);
}
