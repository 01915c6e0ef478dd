// Value-head helpers of the training update. CPU mirror: src/reference/td.rs.
//
// `td_target`: TD-MPC2's target from two target Q heads, y[r] = reward[r] + discount *
// min(q0[r], q1[r]), the heads' decoded values stored [2, rows] (q1 at q_stride).
// `decode_grad`: the gradient of a decoded value v = symexp(y), y = sum_j softmax(l)_j bin_j,
// with respect to its logits, times `scale`: dv/dl_j = exp(|y|) softmax(l)_j (bin_j - y); with
// rows_per_weight > 0 also times weight[r / rows_per_weight] (read from `reward`): a population's
// Q ensemble weighs each (agent, head) block's rows, 0 for the heads an agent did not draw.
// One thread per row (101 bins: three short passes over the row).

override BINS: u32 = 101u;
override VMIN: f32 = -10.0;
override VMAX: f32 = 10.0;

struct Params {
    rows: u32,
    discount: f32,
    q_stride: u32,
    // decode_grad: logits and gradient rows at these offsets, back to back.
    in_offset: u32,
    out_offset: u32,
    scale: f32,
    rows_per_weight: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> reward: array<f32>;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64)
fn td_target(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= p.rows) {
        return;
    }
    y[r] = reward[r] + p.discount * min(q[r], q[p.q_stride + r]);
}

fn bin_value(j: u32) -> f32 {
    return VMIN + f32(j) * ((VMAX - VMIN) / f32(BINS - 1u));
}

// Bindings: q = logits, y = gradient, reward = the block weights (unread without them).
@compute @workgroup_size(64)
fn decode_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.x + gid.y * nwg.x * 64u;
    if (r >= p.rows) {
        return;
    }
    let base = p.in_offset + r * BINS;
    var m = -3.40282347e38;
    for (var j = 0u; j < BINS; j++) {
        m = max(m, q[base + j]);
    }
    var s = 0.0;
    var w = 0.0;
    for (var j = 0u; j < BINS; j++) {
        let e = exp(q[base + j] - m);
        s += e;
        w = fma(e, bin_value(j), w);
    }
    let mean = w / s;
    var scale = p.scale;
    if (p.rows_per_weight != 0u) {
        scale *= reward[r / p.rows_per_weight];
    }
    let c = scale * exp(abs(mean)) / s;
    let out = p.out_offset + r * BINS;
    for (var j = 0u; j < BINS; j++) {
        y[out + j] = c * exp(q[base + j] - m) * (bin_value(j) - mean);
    }
}
