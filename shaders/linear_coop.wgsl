// The linear layer's matrix product on cooperative matrices (tensor cores): the twin of
// linear.wgsl's `gemm` entry, with the same bindings, parameters, override constants and grid
// (tiles along x and y, output slots times K-splits along z), so linear.wgsl's `epilogue`
// finishes it unchanged (bindings 10-12 add vec4 views of xz and w and a vec2 view of w for
// vector loads). X = [Z | A] and W are rounded to f16 as they are fetched, sums are f32
// (common/coop_gemm.wgsl). Without RAW the bias and an elementwise activation are applied here;
// with RAW the raw sums of K-part s go to slot (e * SPLIT + s) of the output binding, which is
// then f32 scratch. CPU mirror: src/reference/linear.rs with the inputs rounded to f16.

#import common/coop_gemm
#import common/act
#import common/linear_io

override N: u32;
override K: u32;
override K1: u32;
override SPLIT: u32 = 1u;
// 0 identity, 1 Mish (2, SimNorm, needs the epilogue).
override ACT: u32 = 0u;
override RAW: bool = false;
override HEAD_MAP: bool = false;
// The part of K summed (common/linear_io.wgsl's k_range).
override KPART: u32 = 0u;

// The output slot and K-part of this workgroup (coop_a and coop_b get them through `bt`).
fn slot_of(bt: u32) -> u32 {
    return bt / SPLIT;
}

// Views of xz (binding 0) and w (binding 2) as vec4 for the vector loads of whole chunks.
@group(0) @binding(10) var<storage, read> xz4: array<vec4<XT>>;
@group(0) @binding(11) var<storage, read> w4: array<vec4<WT>>;
@group(0) @binding(12) var<storage, read> w2: array<vec2<WT>>;

// Whole slices of Z (K < K1) with 16-byte aligned rows (8-byte as f16): vector loads of X,
// and of W by vec4 where K is a multiple of 4, by vec2 where it is even (the input layers'
// 512 + action dimension), by element otherwise. Rows and columns past the matrix are
// clamped (their results are dropped).
fn coop_fast_end(bt: u32, k_begin: u32, k_end: u32) -> u32 {
    let x0 = p.xz_offset + input_block(slot_of(bt)) * p.xz_stride;
    if (((x0 | K1) & 3u) != 0u || k_begin >= min(k_end, K1)) {
        return k_begin;
    }
    return k_begin + (min(k_end, K1) - k_begin) / BK * BK;
}

fn coop_a8_fast(bt: u32, row: u32, k: u32) -> H8 {
    let at = (p.xz_offset + input_block(slot_of(bt)) * p.xz_stride + min(row, p.m - 1u) * K1 + k) / 4u;
    return H8(vec4<f16>(xz4[at]), vec4<f16>(xz4[at + 1u]));
}

fn coop_b8_fast(bt: u32, col: u32, k: u32) -> H8 {
    let at = (weight_set(slot_of(bt)) * N + min(col, N - 1u)) * K + k;
    if (K % 4u == 0u) {
        return H8(vec4<f16>(w4[at / 4u]), vec4<f16>(w4[at / 4u + 1u]));
    }
    if (K % 2u == 0u) {
        let a = w2[at / 2u];
        let b = w2[at / 2u + 1u];
        let c = w2[at / 2u + 2u];
        let d = w2[at / 2u + 3u];
        return H8(vec4<f16>(vec4<f32>(f32(a.x), f32(a.y), f32(b.x), f32(b.y))), vec4<f16>(vec4<f32>(f32(c.x), f32(c.y), f32(d.x), f32(d.y))));
    }
    return H8(
        vec4<f16>(vec4<f32>(f32(w[at]), f32(w[at + 1u]), f32(w[at + 2u]), f32(w[at + 3u]))),
        vec4<f16>(vec4<f32>(f32(w[at + 4u]), f32(w[at + 5u]), f32(w[at + 6u]), f32(w[at + 7u]))),
    );
}

fn coop_a8(bt: u32, row: u32, k: u32, k_end: u32) -> H8 {
    if (row >= p.m) {
        return H8();
    }
    let blk = input_block(slot_of(bt));
    let at = p.xz_offset + blk * p.xz_stride + row * K1 + k;
    // Whole chunks of Z that are 16-byte aligned (as f32; 8 bytes as f16): two vector loads.
    if (k + 8u <= min(k_end, K1) && (at & 3u) == 0u) {
        return H8(vec4<f16>(xz4[at / 4u]), vec4<f16>(xz4[at / 4u + 1u]));
    }
    var v: array<f32, 8>;
    for (var j = 0u; j < 8u; j++) {
        if (k + j < k_end) {
            v[j] = x_at(blk, row, k + j);
        }
    }
    return h8_from(v, k, k_end);
}

fn coop_b8(bt: u32, col: u32, k: u32, k_end: u32) -> H8 {
    if (col >= N) {
        return H8();
    }
    let at = (weight_set(slot_of(bt)) * N + col) * K + k;
    if (k + 8u <= k_end && (at & 3u) == 0u) {
        return H8(vec4<f16>(w4[at / 4u]), vec4<f16>(w4[at / 4u + 1u]));
    }
    var v: array<f32, 8>;
    for (var j = 0u; j < 8u; j++) {
        if (k + j < k_end) {
            v[j] = f32(w[at + j]);
        }
    }
    return h8_from(v, k, k_end);
}

fn coop_out(bt: u32, row: u32, col: u32, acc: f32) {
    if (row >= p.m || col >= N) {
        return;
    }
    let e = slot_of(bt);
    if (RAW) {
        y[(bt * p.m + row) * N + col] = YT(acc);
        return;
    }
    var v = acc + bias[weight_set(e) * N + col];
    if (ACT == 1u) {
        v = mish(v);
    }
    y[(e * p.m + row) * N + col] = YT(v);
}

@compute @workgroup_size(WG)
fn gemm(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let s = wid.z % SPLIT;
    // K-parts are whole BK slices, as in linear.wgsl.
    let chunk = ((K + SPLIT - 1u) / SPLIT + BK - 1u) / BK * BK;
    let kr = k_range(min(K, s * chunk), min(K, s * chunk + chunk));
    coop_tile(wid.z, wid.y * BM, wid.x * BN, kr.x, kr.y, tid, sg, lane);
}
