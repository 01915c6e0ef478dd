// Optimizer kernels for a training update recorded into one submit: the global gradient norm,
// torch.optim.Adam with clip_grad_norm_ folded in and its step counter on the GPU (torch's
// capturable=True), the Polyak (EMA) update of target parameters, and TD-MPC2's RunningScale.
// CPU mirror: src/reference/optim.rs; launch code: src/kernels/optim.rs.
//
// Element-wise kernels (adam_update, polyak*) cover up to MAX_RANGES ranges of a flat buffer
// in ONE dispatch: range r owns the workgroups [first_chunk_r, first_chunk_r+1) of the grid,
// each workgroup a chunk of CHUNK consecutive elements (thread t takes t, t + WG, ..., so every
// load is coalesced). A workgroup finds its range by scanning the table in the uniform block,
// the same for all its threads. Elements outside every range are never touched. Workgroups
// beyond 65535 continue along y.
//
// The norm is a two-stage sum of squares: `norm_partials` runs at most MAX_PARTIALS workgroups
// grid-striding over the ranges (each thread sums its elements, the workgroup sums its
// threads), then one workgroup sums the partials (`norm_finish`, or `adam_begin` which also
// advances the Adam state).

#import common/act

const WG: u32 = 256u;
const PER_THREAD: u32 = 4u;
const CHUNK: u32 = WG * PER_THREAD;
const MAX_RANGES: u32 = 16u;

// Padded length of the RunningScale sort (a power of two, at most 4096); only scale_update's
// workgroup array depends on it.
override SORT_CAP: u32 = 32u;

// ---------------------------------------------------------------------------------------------
// Shared helpers

var<workgroup> red: array<f32, WG>;

// Sum of v over the workgroup, returned to every thread. Call in uniform control flow.
fn workgroup_sum(tid: u32, v: f32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if (tid < h) {
            red[tid] += red[tid + h];
        }
        workgroupBarrier();
    }
    return red[0];
}

// torch.lerp: a + w (b - a) for |w| < 0.5, else b - (b - a)(1 - w), so both ends are exact.
fn lerp_torch(a: f32, b: f32, w: f32) -> f32 {
    let d = b - a;
    if (abs(w) < 0.5) {
        return a + w * d;
    }
    return b - d * (1.0 - w);
}

fn flat_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// ---------------------------------------------------------------------------------------------
// Gradient norm

struct NormParams {
    n_ranges: u32,
    // Workgroups of this dispatch: the grid stride is groups * WG.
    groups: u32,
    // Populations (grid z = agent): elements between agents' buffers; agent a's partials at
    // a * groups.
    agent_stride: u32,
    _pad1: u32,
    // (offset, len, -, -) per range.
    ranges: array<vec4<u32>, MAX_RANGES>,
}

@group(0) @binding(0) var<storage, read> n_grads: array<f32>;
@group(0) @binding(1) var<storage, read_write> n_partials: array<f32>;
@group(0) @binding(2) var<uniform> n_p: NormParams;

@compute @workgroup_size(WG)
fn norm_partials(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let stride = n_p.groups * WG;
    // Two accumulators halve the dependent-add chain per thread.
    var acc0 = 0.0;
    var acc1 = 0.0;
    let agent = wid.z * n_p.agent_stride;
    for (var r = 0u; r < n_p.n_ranges; r++) {
        let rg = n_p.ranges[r];
        let at = agent + rg.x;
        var i = wid.x * WG + tid;
        for (; i + stride < rg.y; i += 2u * stride) {
            let a = n_grads[at + i];
            let b = n_grads[at + i + stride];
            acc0 = fma(a, a, acc0);
            acc1 = fma(b, b, acc1);
        }
        if (i < rg.y) {
            let a = n_grads[at + i];
            acc0 = fma(a, a, acc0);
        }
    }
    let s = workgroup_sum(tid, acc0 + acc1);
    if (tid == 0u) {
        n_partials[wid.z * n_p.groups + wid.x] = s;
    }
}

struct FinishParams {
    count: u32,
    out_index: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> f_partials: array<f32>;
@group(0) @binding(1) var<storage, read_write> f_out: array<f32>;
@group(0) @binding(2) var<uniform> f_p: FinishParams;

@compute @workgroup_size(WG)
fn norm_finish(@builtin(local_invocation_index) tid: u32) {
    var acc = 0.0;
    for (var i = tid; i < f_p.count; i += WG) {
        acc += f_partials[i];
    }
    let s = workgroup_sum(tid, acc);
    if (tid == 0u) {
        f_out[f_p.out_index] = sqrt(s);
    }
}

// ---------------------------------------------------------------------------------------------
// Adam

// State words (u32; floats as bits): 0 step t, 1 gradient norm, 2 clip coefficient,
// 3 bias correction 1 - beta1^t, 4 sqrt(1 - beta2^t), 5 whether the norm was computed;
// STATE words per agent (grid z = agent in a population, each with its own norm and step).
const STATE: u32 = 8u;
struct BeginParams {
    // Partials to sum (0 without clipping).
    count: u32,
    clip: u32,
    max_norm: f32,
    // ln(beta1), ln(beta2) from the host in f64: 1 - beta^t = -expm1(t ln beta) keeps full
    // precision where 1 - pow(beta, t) would cancel (1 - 0.999 in f32 is off by 1.3e-5).
    ln_b1: f32,
    ln_b2: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> b_partials: array<f32>;
@group(0) @binding(1) var<storage, read_write> b_state: array<u32>;
@group(0) @binding(2) var<uniform> b_p: BeginParams;

@compute @workgroup_size(WG)
fn adam_begin(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    var acc = 0.0;
    let first = wid.z * b_p.count;
    for (var i = tid; i < b_p.count; i += WG) {
        acc += b_partials[first + i];
    }
    let s = workgroup_sum(tid, acc);
    let o = wid.z * STATE;
    if (tid == 0u) {
        let t = b_state[o] + 1u;
        var norm = 0.0;
        var coef = 1.0;
        if (b_p.clip != 0u) {
            // clip_grad_norm_: max_norm / (total_norm + 1e-6), clamped to at most 1.
            norm = sqrt(s);
            coef = min(b_p.max_norm / (norm + 1e-6), 1.0);
        }
        let tf = f32(t);
        b_state[o] = t;
        b_state[o + 1u] = bitcast<u32>(norm);
        b_state[o + 2u] = bitcast<u32>(coef);
        b_state[o + 3u] = bitcast<u32>(-expm1(tf * b_p.ln_b1));
        b_state[o + 4u] = bitcast<u32>(sqrt(-expm1(tf * b_p.ln_b2)));
        b_state[o + 5u] = b_p.clip;
    }
}

struct AdamParams {
    one_minus_b1: f32,
    b2: f32,
    one_minus_b2: f32,
    eps: f32,
    n_ranges: u32,
    chunks: u32,
    // Elements between agents' buffers (grid z = agent).
    agent_stride: u32,
    _pad1: u32,
    // (offset, len, first chunk, lr of the group as f32 bits) per group.
    ranges: array<vec4<u32>, MAX_RANGES>,
}

@group(0) @binding(0) var<storage, read_write> u_params: array<f32>;
@group(0) @binding(1) var<storage, read> u_grads: array<f32>;
@group(0) @binding(2) var<storage, read_write> u_m: array<f32>;
@group(0) @binding(3) var<storage, read_write> u_v: array<f32>;
@group(0) @binding(4) var<storage, read> u_state: array<u32>;
@group(0) @binding(5) var<uniform> u_p: AdamParams;

// torch.optim.Adam's step on the clipped gradient g = grad * coef (grads are left as they
// are: torch clips in place, but the clipped values are only read by this step):
//   m = lerp(m, g, 1 - b1); v = b2 v + (1 - b2) g^2;
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps).
@compute @workgroup_size(WG)
fn adam_update(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = flat_group(wid, nwg);
    if (w >= u_p.chunks) {
        return;
    }
    var r = 0u;
    for (var k = 1u; k < u_p.n_ranges; k++) {
        if (w >= u_p.ranges[k].z) {
            r = k;
        }
    }
    let rg = u_p.ranges[r];
    let o = wid.z * STATE;
    let coef = bitcast<f32>(u_state[o + 2u]);
    let bc1 = bitcast<f32>(u_state[o + 3u]);
    let sbc2 = bitcast<f32>(u_state[o + 4u]);
    let step_size = bitcast<f32>(rg.w) / bc1;
    let base = (w - rg.z) * CHUNK + tid;
    let at = wid.z * u_p.agent_stride + rg.x;
    for (var k = 0u; k < PER_THREAD; k++) {
        let j = base + k * WG;
        if (j < rg.y) {
            let i = at + j;
            let g = u_grads[i] * coef;
            let m = lerp_torch(u_m[i], g, u_p.one_minus_b1);
            let v = u_v[i] * u_p.b2 + u_p.one_minus_b2 * (g * g);
            u_m[i] = m;
            u_v[i] = v;
            let denom = sqrt(v) / sbc2 + u_p.eps;
            u_params[i] = u_params[i] - step_size * (m / denom);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Polyak

struct PolyakParams {
    tau: f32,
    n_ranges: u32,
    chunks: u32,
    // Elements between agents' buffers (grid z = agent), source and target alike.
    agent_stride: u32,
    // (target offset, len, first chunk, source offset) per span.
    ranges: array<vec4<u32>, MAX_RANGES>,
}

@group(0) @binding(0) var<storage, read> y_src: array<f32>;
@group(0) @binding(1) var<storage, read_write> y_dst: array<f32>;
@group(0) @binding(2) var<uniform> y_p: PolyakParams;

// target = lerp(target, source, tau), torch._foreach_lerp_ as TD-MPC2 does it.
@compute @workgroup_size(WG)
fn polyak(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = flat_group(wid, nwg);
    if (w >= y_p.chunks) {
        return;
    }
    var r = 0u;
    for (var k = 1u; k < y_p.n_ranges; k++) {
        if (w >= y_p.ranges[k].z) {
            r = k;
        }
    }
    let rg = y_p.ranges[r];
    let base = (w - rg.z) * CHUNK + tid;
    let agent = wid.z * y_p.agent_stride;
    for (var k = 0u; k < PER_THREAD; k++) {
        let j = base + k * WG;
        if (j < rg.y) {
            let i = agent + rg.x + j;
            y_dst[i] = lerp_torch(y_dst[i], y_src[agent + rg.w + j], y_p.tau);
        }
    }
}

@group(0) @binding(0) var<storage, read_write> z_buf: array<f32>;
@group(0) @binding(1) var<uniform> z_p: PolyakParams;

// `polyak` with source and target in one buffer (the host checks that they do not overlap).
@compute @workgroup_size(WG)
fn polyak_inplace(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = flat_group(wid, nwg);
    if (w >= z_p.chunks) {
        return;
    }
    var r = 0u;
    for (var k = 1u; k < z_p.n_ranges; k++) {
        if (w >= z_p.ranges[k].z) {
            r = k;
        }
    }
    let rg = z_p.ranges[r];
    let base = (w - rg.z) * CHUNK + tid;
    let agent = wid.z * z_p.agent_stride;
    for (var k = 0u; k < PER_THREAD; k++) {
        let j = base + k * WG;
        if (j < rg.y) {
            let i = agent + rg.x + j;
            z_buf[i] = lerp_torch(z_buf[i], z_buf[agent + rg.w + j], z_p.tau);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RunningScale

struct ScaleParams {
    n: u32,
    offset: u32,
    tau: f32,
    // Populations (grid z = agent): elements between agents' values; agent z's scale is
    // element z.
    agent_stride: u32,
    // Percentile positions from the host, computed in f32 exactly as TD-MPC2's tensors do:
    // (floor index, ceil index, floor weight, ceil weight) for the 5th and the 95th.
    lo_idx: vec2<u32>,
    lo_w: vec2<f32>,
    hi_idx: vec2<u32>,
    hi_w: vec2<f32>,
}

@group(0) @binding(0) var<storage, read> s_values: array<f32>;
@group(0) @binding(1) var<storage, read_write> s_value: array<f32>;
@group(0) @binding(2) var<uniform> s_p: ScaleParams;

var<workgroup> keys: array<u32, SORT_CAP>;

// f32 to a u32 that sorts in the same order (negatives flipped, positives above them), with
// every NaN mapped to the largest key: torch.sort puts NaN last. Padding uses the same key and
// is never read back, since percentile indices stay below n.
fn sort_key(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return 0xffffffffu;
    }
    if ((b & 0x80000000u) != 0u) {
        return ~b;
    }
    return b | 0x80000000u;
}

fn key_value(k: u32) -> f32 {
    if ((k & 0x80000000u) != 0u) {
        return bitcast<f32>(k & 0x7fffffffu);
    }
    return bitcast<f32>(~k);
}

// One workgroup: bitonic sort of the n values (padded to SORT_CAP) in workgroup memory, the
// 5th and 95th percentiles by linear interpolation, value = lerp(value, max(p95 - p5, 1), tau).
@compute @workgroup_size(WG)
fn scale_update(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let first = s_p.offset + wid.z * s_p.agent_stride;
    for (var i = tid; i < SORT_CAP; i += WG) {
        var k = 0xffffffffu;
        if (i < s_p.n) {
            k = sort_key(s_values[first + i]);
        }
        keys[i] = k;
    }
    for (var size = 2u; size <= SORT_CAP; size <<= 1u) {
        for (var half = size >> 1u; half > 0u; half >>= 1u) {
            workgroupBarrier();
            // Pair q compares i (bit `half` clear) with i + half; ascending where bit `size`
            // of i is clear.
            for (var q = tid; q < SORT_CAP / 2u; q += WG) {
                let i = ((q & ~(half - 1u)) << 1u) | (q & (half - 1u));
                let l = i + half;
                let a = keys[i];
                let b = keys[l];
                let up = (i & size) == 0u;
                if ((a > b) == up && a != b) {
                    keys[i] = b;
                    keys[l] = a;
                }
            }
        }
    }
    workgroupBarrier();
    if (tid == 0u) {
        let p5 = key_value(keys[s_p.lo_idx.x]) * s_p.lo_w.x + key_value(keys[s_p.lo_idx.y]) * s_p.lo_w.y;
        let p95 = key_value(keys[s_p.hi_idx.x]) * s_p.hi_w.x + key_value(keys[s_p.hi_idx.y]) * s_p.hi_w.y;
        let target_value = max(p95 - p5, 1.0);
        s_value[wid.z] = lerp_torch(s_value[wid.z], target_value, s_p.tau);
    }
}

struct DivideParams {
    n: u32,
    offset: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> d_value: array<f32>;
@group(0) @binding(1) var<storage, read_write> d_buf: array<f32>;
@group(0) @binding(2) var<uniform> d_p: DivideParams;

// x / value, RunningScale's forward.
@compute @workgroup_size(WG)
fn scale_divide(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let base = flat_group(wid, nwg) * CHUNK + tid;
    let s = d_value[0];
    for (var k = 0u; k < PER_THREAD; k++) {
        let j = base + k * WG;
        if (j < d_p.n) {
            d_buf[d_p.offset + j] = d_buf[d_p.offset + j] / s;
        }
    }
}
