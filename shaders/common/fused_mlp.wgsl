// Whole networks per workgroup, shared by fused_mlp.wgsl (ALU) and fused_mlp_coop.wgsl
// (tensor cores). A workgroup takes RB rows of one network of the launch's group (y), keeps
// them in workgroup memory between layers (`xs`, the next layer's input) and runs every
// layer: the product into `rs` (by the importer, PH column phases of CW columns each), then
// this file's epilogue (bias, the action columns of a first layer, LayerNorm, activation)
// back into `xs`, or, after the last layer, into an output binding as raw values or decoded
// two-hot scalars. At the sizes online RL plans at (hundreds of rows per layer) a dispatch per
// layer is mostly launch and drain; here a network is one dispatch and several networks that
// read the same rows (reward and dynamics of a rollout step, the chosen Q heads) are one.
//
// Parameters come packed (src/kernels/fused_mlp.rs, `FusedModel`): every weight matrix in
// `mats` as [members][NPAD][KZ] (rows padded to 16 with zeros, K to a multiple of 16, so the
// tensor cores can load 16x16 fragments in place), its action columns as [members][N][KA];
// biases and LayerNorm parameters in `vecs` as [members][N]. `desc` describes them: per network
// (8 words) its first layer and layer count, per layer 16 words (the offsets of the LAYER_*
// fields below). Adding a leading agent dimension (populations) adds one more stride.
//
// The importer's header gives RB, WG, XLD, RLD, PH, CW (CW * PH >= the widest padded layer),
// F16_W (f16 weights), F16_H (hidden activations rounded to f16 between layers), ROUND_IN
// (the first layer's input rounded to f16, as the tensor cores see it); it declares
// `xs: array<XS, RB * XLD>` (XS f32 or f16) and `rs: array<f32, RB * RLD>`, and imports
// common/act, common/bins and common/rng. CPU mirror: src/reference/fused_mlp.rs.

#if F16_W
alias WT = f16;
#else
alias WT = f32;
#endif

override BINS: u32 = 101u;
override VMIN: f32 = -10.0;
override VMAX: f32 = 10.0;
override LOG_STD_MIN: f32 = -10.0;
override LOG_STD_MAX: f32 = 2.0;

// Epilogue: TPR threads per row, each holding CPT chunks of 8 consecutive columns per phase.
const TPR: u32 = WG / RB;
const CPT: u32 = CW / (8u * TPR);
const VPT: u32 = PH * CPT * 8u;

const NET_WORDS: u32 = 8u;
const MAX_NETS: u32 = 8u;
const LAYER_BASE: u32 = NET_WORDS * MAX_NETS;
const LAYER_WORDS: u32 = 16u;
const LAYER_W: u32 = 0u;
const LAYER_KZ: u32 = 1u;
const LAYER_K1: u32 = 2u;
const LAYER_N: u32 = 3u;
const LAYER_NPAD: u32 = 4u;
const LAYER_WA: u32 = 5u;
const LAYER_KA: u32 = 6u;
const LAYER_B: u32 = 7u;
const LAYER_G: u32 = 8u;
const LAYER_BE: u32 = 9u;
const LAYER_ACT: u32 = 10u;
const LAYER_LN: u32 = 11u;
const LAYER_W_STRIDE: u32 = 12u;
const LAYER_WA_STRIDE: u32 = 13u;

const OUT_RAW: u32 = 0u;
const OUT_TWO_HOT: u32 = 1u;
// The policy head sampled (policy.wgsl's `sample`): actions to out0, stats rows to out1.
const OUT_POLICY: u32 = 2u;

struct Params {
    m: u32,
    z_offset: u32,
    // 0, or g: row r reads z row r % g (every sample of an environment starts from its latent).
    z_repeat: u32,
    a_offset: u32,
    // Per network of the launch: (network index, member, 1 if `member` is a slot of `heads`).
    net: array<vec4<u32>, 4>,
    // Per network: (output binding 0 or 1, element offset, row stride, OUT_*).
    out: array<vec4<u32>, 4>,
    // OUT_POLICY: (seed low, seed high, noise stream, stats offset); the noise of element
    // (row, i) is element row * A + i of the stream, as rng_fill draws it.
    policy: vec4<u32>,
}

@group(0) @binding(0) var<storage, read> desc: array<u32>;
@group(0) @binding(1) var<storage, read> mats: array<WT>;
@group(0) @binding(2) var<storage, read> vecs: array<f32>;
@group(0) @binding(3) var<storage, read> zin: array<f32>;
@group(0) @binding(4) var<storage, read> ain: array<f32>;
@group(0) @binding(5) var<storage, read> heads: array<u32>;
@group(0) @binding(6) var<storage, read_write> out0: array<f32>;
@group(0) @binding(7) var<storage, read_write> out1: array<f32>;
@group(0) @binding(8) var<uniform> p: Params;

var<workgroup> red: array<f32, WG>;

fn layer_field(li: u32, f: u32) -> u32 {
    return desc[LAYER_BASE + li * LAYER_WORDS + f];
}

// The weight set network slot g of this launch uses.
fn member_of(g: u32) -> u32 {
    let net = p.net[g];
    if (net.z == 0u) {
        return net.y;
    }
    let members = desc[net.x * NET_WORDS + 2u];
    return min(heads[net.y], members - 1u);
}

// Rows r0.. of the network's input into xs: z (and zeros up to the first layer's KZ); the
// action columns are added by the epilogue. Rows past m are zero.
fn stage_input(li: u32, row0: u32, tid: u32) {
    let k1 = layer_field(li, LAYER_K1);
    let kz = layer_field(li, LAYER_KZ);
    for (var i = tid; i < RB * kz; i += WG) {
        let r = i / kz;
        let k = i % kz;
        let row = row0 + r;
        var v = 0.0;
        if (row < p.m && k < k1) {
            var zr = row;
            if (p.z_repeat > 0u) {
                zr = row % p.z_repeat;
            }
            v = zin[p.z_offset + zr * k1 + k];
        }
#if ROUND_IN
        v = f32(f16(v));
#endif
        xs[r * XLD + k] = XS(v);
    }
}

// Column of value i of a thread's epilogue values (chunk q of phase ph, element e).
fn col_of(i: u32, lane: u32) -> u32 {
    let ph = i / (CPT * 8u);
    let q = (i / 8u) % CPT;
    return ph * CW + (lane + q * TPR) * 8u + i % 8u;
}

// This thread's values of phase ph from rs (after the phase's products were stored there).
fn take_phase(ph: u32, tid: u32, vals: ptr<function, array<f32, VPT>>) {
    let r = tid / TPR;
    let lane = tid % TPR;
    for (var q = 0u; q < CPT; q++) {
        let at = r * RLD + (lane + q * TPR) * 8u;
        for (var e = 0u; e < 8u; e++) {
            (*vals)[(ph * CPT + q) * 8u + e] = rs[at + e];
        }
    }
}

// Sum of v over the TPR threads of this thread's row. Every invocation calls it.
fn team_sum(tid: u32, v: f32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    let base = (tid / TPR) * TPR;
    var s = 0.0;
    for (var i = 0u; i < TPR; i++) {
        s += red[base + i];
    }
    workgroupBarrier();
    return s;
}

fn team_max(tid: u32, v: f32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    let base = (tid / TPR) * TPR;
    var s = red[base];
    for (var i = 1u; i < TPR; i++) {
        s = max(s, red[base + i]);
    }
    workgroupBarrier();
    return s;
}

fn write_out(g: u32, at: u32, v: f32) {
    if (p.out[g].x == 0u) {
        out0[at] = v;
    } else {
        out1[at] = v;
    }
}

// Finish layer li for this thread's values: bias, action columns (first layer), LayerNorm,
// activation; then into xs for the next layer, or out. Every invocation calls it.
fn finish_layer(li: u32, member: u32, g: u32, row0: u32, tid: u32, vals: ptr<function, array<f32, VPT>>, last: bool) {
    let r = tid / TPR;
    let lane = tid % TPR;
    let row = row0 + r;
    let valid = row < p.m;
    let n = layer_field(li, LAYER_N);
    let ka = layer_field(li, LAYER_KA);
    let vb = member * n;
    let b0 = layer_field(li, LAYER_B) + vb;
    let wa0 = layer_field(li, LAYER_WA) + member * layer_field(li, LAYER_WA_STRIDE);
    var sum = 0.0;
    for (var i = 0u; i < VPT; i++) {
        let c = col_of(i, lane);
        var v = 0.0;
        if (c < n) {
            v = (*vals)[i] + vecs[b0 + c];
            if (valid) {
                for (var j = 0u; j < ka; j++) {
                    var x = ain[p.a_offset + row * ka + j];
#if ROUND_IN
                    x = f32(f16(x));
#endif
                    v = fma(x, f32(mats[wa0 + c * ka + j]), v);
                }
            }
            sum += v;
        }
        (*vals)[i] = v;
    }
    if (layer_field(li, LAYER_LN) != 0u) {
        let mean = team_sum(tid, sum) / f32(n);
        var sq = 0.0;
        for (var i = 0u; i < VPT; i++) {
            if (col_of(i, lane) < n) {
                let d = (*vals)[i] - mean;
                sq += d * d;
            }
        }
        let rstd = inverseSqrt(team_sum(tid, sq) / f32(n) + 1e-5);
        let g0 = layer_field(li, LAYER_G) + vb;
        let be0 = layer_field(li, LAYER_BE) + vb;
        for (var i = 0u; i < VPT; i++) {
            let c = col_of(i, lane);
            if (c < n) {
                (*vals)[i] = ((*vals)[i] - mean) * rstd * vecs[g0 + c] + vecs[be0 + c];
            }
        }
    }
    let act = layer_field(li, LAYER_ACT);
    if (act == 1u) {
        for (var i = 0u; i < VPT; i++) {
            (*vals)[i] = mish((*vals)[i]);
        }
    } else if (act == 2u) {
        // SimNorm over groups of 8: each chunk of 8 columns is one group (n is a multiple of 8).
        for (var q = 0u; q < VPT / 8u; q++) {
            var mx = (*vals)[q * 8u];
            for (var e = 1u; e < 8u; e++) {
                mx = max(mx, (*vals)[q * 8u + e]);
            }
            var s = 0.0;
            for (var e = 0u; e < 8u; e++) {
                let x = exp((*vals)[q * 8u + e] - mx);
                (*vals)[q * 8u + e] = x;
                s += x;
            }
            for (var e = 0u; e < 8u; e++) {
                (*vals)[q * 8u + e] /= s;
            }
        }
    }
    if (!last) {
        // Columns past n are the next layer's zero padding.
        for (var i = 0u; i < VPT; i++) {
            let c = col_of(i, lane);
            var v = 0.0;
            if (c < n) {
                v = (*vals)[i];
            }
#if F16_H
            v = f32(f16(v));
#endif
            xs[r * XLD + c] = XS(v);
        }
        return;
    }
    let o = p.out[g];
    if (o.w == OUT_POLICY) {
        sample_policy(n / 2u, row, r, lane, tid, vals);
        return;
    }
    if (o.w == OUT_TWO_HOT) {
        // value = symexp(sum_j softmax(logits)_j bin_j), stable for logits of any size.
        var mx = -3.40282347e38;
        for (var i = 0u; i < VPT; i++) {
            if (col_of(i, lane) < n) {
                mx = max(mx, (*vals)[i]);
            }
        }
        mx = team_max(tid, mx);
        var s = 0.0;
        var w = 0.0;
        for (var i = 0u; i < VPT; i++) {
            let c = col_of(i, lane);
            if (c < n) {
                let e = exp((*vals)[i] - mx);
                s += e;
                w = fma(e, bin_value(c), w);
            }
        }
        s = team_sum(tid, s);
        w = team_sum(tid, w);
        if (valid && lane == 0u) {
            write_out(g, o.y + row * o.z, symexp(w / s));
        }
        return;
    }
    if (valid) {
        for (var i = 0u; i < VPT; i++) {
            let c = col_of(i, lane);
            if (c < n) {
                write_out(g, o.y + row * o.z + c, (*vals)[i]);
            }
        }
    }
}

// TD-MPC2's policy head on this row's h = [mean_raw | log_std_raw] (policy.wgsl's `sample`,
// same formulas) with standard normal noise drawn here from the Philox stream. The row goes
// through rs (free after the products) so each lane can take whole action components.
fn sample_policy(a: u32, row: u32, r: u32, lane: u32, tid: u32, vals: ptr<function, array<f32, VPT>>) {
    for (var i = 0u; i < VPT; i++) {
        let c = col_of(i, lane);
        if (c < 2u * a) {
            rs[r * RLD + c] = (*vals)[i];
        }
    }
    workgroupBarrier();
    let valid = row < p.m;
    let o = p.out[0];
    let sb = p.policy.w + row * (2u * a + 3u);
    var g = 0.0;
    var q = 0.0;
    if (valid) {
        for (var i = lane; i < a; i += TPR) {
            let mean_raw = rs[r * RLD + i];
            let ls_raw = rs[r * RLD + a + i];
            let k = row * a + i;
            let e = normal4(philox(p.policy.xy, p.policy.z, k / 4u))[k % 4u];
            let log_std = LOG_STD_MIN + (LOG_STD_MAX - LOG_STD_MIN) / (1.0 + exp(-2.0 * ls_raw));
            let u = fma(exp(log_std), e, mean_raw);
            let t = tanh_sech2(u);
            out0[o.y + row * o.z + i] = t.x;
            out1[sb + i] = tanh_sech2(mean_raw).x;
            out1[sb + a + i] = log_std;
            g += -0.5 * e * e - log_std - HALF_LOG_2PI;
            q += log(max(t.y, 0.0) + 1e-6);
        }
    }
    g = team_sum(tid, g);
    q = team_sum(tid, q);
    if (valid && lane == 0u) {
        let log_prob = g - q;
        let scale = (g * f32(a)) / (log_prob + 1e-8);
        out1[sb + 2u * a] = log_prob;
        out1[sb + 2u * a + 1u] = -log_prob;
        out1[sb + 2u * a + 2u] = -log_prob * scale;
    }
}
