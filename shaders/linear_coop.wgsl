// The linear layer's matrix product on cooperative matrices (tensor cores): the twin of
// linear.wgsl's `gemm` entry, with the same bindings, parameters, override constants and grid
// (tiles along x and y, output slots times K-splits along z), so linear.wgsl's `epilogue`
// finishes it unchanged. X = [Z | A] and W are rounded to f16 as they are staged, sums are f32
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

// The output slot and K-part of this workgroup (coop_a and coop_b get them through `bt`).
fn slot_of(bt: u32) -> u32 {
    return bt / SPLIT;
}

fn coop_a(bt: u32, row: u32, k: u32) -> f32 {
    if (row >= p.m) {
        return 0.0;
    }
    return x_at(slot_of(bt), row, k);
}

fn coop_b(bt: u32, k: u32, col: u32) -> f32 {
    if (col >= N) {
        return 0.0;
    }
    return f32(w[(weight_set(slot_of(bt)) * N + col) * K + k]);
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
    let k_begin = min(K, s * chunk);
    let k_end = min(K, k_begin + chunk);
    coop_tile(wid.z, wid.y * BM, wid.x * BN, k_begin, k_end, tid, sg, lane);
}
