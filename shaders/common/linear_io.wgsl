// The bindings, parameters and input access of the linear layer, shared by linear.wgsl (the
// f32 ALU kernel and the epilogue) and linear_coop.wgsl (the tensor-core GEMM). Element types
// of Z, W and Y come from the header (F16_X, F16_W, F16_Y); the importer enables f16 when any
// is set. Needs the override constants N, K, K1 and HEAD_MAP of the importer.

#if F16_X
alias XT = f16;
#else
alias XT = f32;
#endif
#if F16_W
alias WT = f16;
#else
alias WT = f32;
#endif
#if F16_Y
alias YT = f16;
#else
alias YT = f32;
#endif

struct Params {
    m: u32,
    // Elements between input blocks in xz and xa (slot e reads block e / in_group).
    xz_stride: u32,
    xa_stride: u32,
    // Output slots (ensemble members evaluated).
    members: u32,
    // Weight sets stored (bounds the head map).
    sets: u32,
    // Element offsets of row 0 in xz and xa (time step t of an action buffer [T, rows, A]).
    xz_offset: u32,
    xa_offset: u32,
    // The epilogue with PRE: rows of `pre` (row r adds pre row r % pre_rows).
    pre_rows: u32,
    // Output slots per input block: all of them where every member reads the same rows (a Q
    // ensemble's first layer), the slots of one agent in a population, 1 where each slot
    // reads its own.
    in_group: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> xz: array<XT>;
@group(0) @binding(1) var<storage, read> xa: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<WT>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<YT>;
@group(0) @binding(5) var<uniform> p: Params;
@group(0) @binding(6) var<storage, read> gamma: array<f32>;
@group(0) @binding(7) var<storage, read> beta: array<f32>;
@group(0) @binding(8) var<storage, read> part: array<f32>;
@group(0) @binding(9) var<storage, read> heads: array<u32>;
@group(0) @binding(13) var<storage, read> pre: array<f32>;

// The part of K a GEMM sums over (override KPART of the importer): 0 all of it, 1 the Z
// columns (k < K1), 2 the A columns. A layer whose Z rows repeat (the planner's first step:
// every sample of an environment starts from its latent) sums Z W^T once per distinct row
// and A W^T per row, and the epilogue adds them (PRE).
fn k_range(k_begin: u32, k_end: u32) -> vec2<u32> {
    if (KPART == 1u) {
        return vec2<u32>(k_begin, max(k_begin, min(k_end, K1)));
    }
    if (KPART == 2u) {
        return vec2<u32>(max(k_begin, K1), max(k_end, K1));
    }
    return vec2<u32>(k_begin, k_end);
}

// The input block that output slot e reads.
fn input_block(e: u32) -> u32 {
    return e / p.in_group;
}

// Element k of row `row` of the concatenated input [Z | A] of input block `blk`
// (`input_block` of the slot; callers hoist it out of their loops).
fn x_at(blk: u32, row: u32, k: u32) -> f32 {
    if (k < K1) {
        return f32(xz[p.xz_offset + blk * p.xz_stride + row * K1 + k]);
    }
    return xa[p.xa_offset + blk * p.xa_stride + row * (K - K1) + (k - K1)];
}

fn weight_set(e: u32) -> u32 {
    if (HEAD_MAP) {
        return min(heads[e], p.sets - 1u);
    }
    return e;
}
