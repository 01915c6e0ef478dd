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

fn coop_a(bt: u32, i: u32, kk: u32) -> f32 {
    if (i >= p.m) {
        return 0.0;
    }
    let base = p.a_off + bt * p.a_bs;
    if (A_KMAJOR) {
        return ga[base + i * p.lda + kk];
    }
    return ga[base + kk * p.lda + i];
}

fn coop_b(bt: u32, kk: u32, j: u32) -> f32 {
    if (j >= p.n) {
        return 0.0;
    }
    let base = p.b_off + bt * p.b_bs;
    if (B_KMAJOR) {
        return gb[base + j * p.ldb + kk];
    }
    return gb[base + kk * p.ldb + j];
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
