// What both training GEMMs (gemm.wgsl on the ALUs, gemm_coop.wgsl on tensor cores) share: the
// parameters (one Rust struct packs them for both, src/kernels/gemm.rs `Params`), the
// operand bindings and where a batch's matrix starts.

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
    // K segments (gemm.wgsl with SEG; 1 otherwise): K runs segs * k, segment s of A and B
    // a_ss * s and b_ss * s past segment 0.
    segs: u32,
    // Populations: batch bt is member bt % per_agent of agent bt / per_agent; each operand
    // steps by its batch stride per member and its agent stride per agent.
    per_agent: u32,
    a_as: u32,
    b_as: u32,
    c_as: u32,
    bias_as: u32,
    a_ss: u32,
    b_ss: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> ga: array<f32>;
@group(0) @binding(1) var<storage, read> gb: array<f32>;
@group(0) @binding(2) var<storage, read_write> gc: array<f32>;
@group(0) @binding(3) var<storage, read> gbias: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

// Element offset of batch bt's matrix, for batch stride bs and agent stride as_.
fn batch_off(bt: u32, bs: u32, as_: u32) -> u32 {
    return (bt % p.per_agent) * bs + (bt / p.per_agent) * as_;
}
