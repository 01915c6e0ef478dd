// TD-MPC2's discrete regression heads: BINS bins at linspace(VMIN, VMAX, BINS) in symlog space.
//
// `decode` (two_hot_inv): value[r] = symexp(sum_j softmax(logits[r, :])_j * bin_j).
// LANES threads share a row (64 / LANES rows per workgroup). Each thread takes bins
// lane, lane + LANES, ... and keeps (max m, sum s = sum e^(l - m), weighted sum
// w = sum e^(l - m) bin); the lanes then merge their triples in a tree in workgroup memory
// (no subgroup operations, so any subgroup size works). Each thread reads its logits twice
// (max, then the sums; the second read hits the cache): one exp per logit plus two per merge,
// and a softmax that is stable for logits of any magnitude.
//
// `encode` (two_hot): one thread per output element. y = clamp(symlog x, VMIN, VMAX),
// t = (y - VMIN) / bin_size, k = floor(t), f = t - k; weight 1 - f at bin k and f at bin
// (k + 1) % BINS, as TD-MPC2's scatter does (at y = VMAX, t = BINS - 1 and f = 0, so bin 0
// gets weight 0; the kernel sets that case exactly rather than trusting the division).
//
// Rows live at in_offset + r * in_stride and out_offset + r * out_stride (elements), so a slice
// of a larger buffer (one Q head of [num_q, R, BINS], a strided value column) can be used in
// place. Workgroups beyond 65535 continue along y. CPU mirror: src/reference/two_hot.rs.

#import common/act
#import common/bins

override BINS: u32 = 101u;
override VMIN: f32 = -10.0;
override VMAX: f32 = 10.0;
// Threads per row in `decode`: a power of two, at most 64.
override LANES: u32 = 8u;

const WG: u32 = 64u;

struct Params {
    rows: u32,
    in_offset: u32,
    in_stride: u32,
    out_offset: u32,
    out_stride: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

var<workgroup> red_m: array<f32, WG>;
var<workgroup> red_s: array<f32, WG>;
var<workgroup> red_w: array<f32, WG>;

@compute @workgroup_size(WG)
fn decode(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let group = wid.x + wid.y * nwg.x;
    let lane = tid % LANES;
    let row = group * (WG / LANES) + tid / LANES;
    let valid = row < p.rows;
    let base = p.in_offset + row * p.in_stride;

    // Lanes past the last bin (or of rows past the end) hold an empty triple: its max is the
    // lowest f32, so its sums get weight exp(-huge) = 0 in any merge.
    var m = -3.40282347e38;
    var s = 0.0;
    var w = 0.0;
    if (valid) {
        for (var j = lane; j < BINS; j += LANES) {
            m = max(m, src[base + j]);
        }
        for (var j = lane; j < BINS; j += LANES) {
            let e = exp(src[base + j] - m);
            s += e;
            w = fma(e, bin_value(j), w);
        }
    }
    red_m[tid] = m;
    red_s[tid] = s;
    red_w[tid] = w;
    for (var h = LANES / 2u; h > 0u; h >>= 1u) {
        workgroupBarrier();
        if (lane < h) {
            let m2 = red_m[tid + h];
            let mx = max(m, m2);
            let a = exp(m - mx);
            let b = exp(m2 - mx);
            s = s * a + red_s[tid + h] * b;
            w = w * a + red_w[tid + h] * b;
            m = mx;
            red_m[tid] = m;
            red_s[tid] = s;
            red_w[tid] = w;
        }
    }
    if (valid && lane == 0u) {
        dst[p.out_offset + row * p.out_stride] = symexp(w / s);
    }
}

@compute @workgroup_size(WG)
fn encode(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let e = (wid.x + wid.y * nwg.x) * WG + tid;
    let row = e / BINS;
    let j = e % BINS;
    if (row >= p.rows) {
        return;
    }
    let y = clamp(symlog(src[p.in_offset + row * p.in_stride]), VMIN, VMAX);
    // Clamp the bin position itself: drivers may contract (y - VMIN) / bin_size into an fma
    // that leaves a tiny negative residual at y = VMIN, which would move the weight to bin 1.
    // At VMAX the position is BINS - 1 exactly, whatever the rounding of the division.
    var t = clamp((y - VMIN) / bin_size(), 0.0, f32(BINS - 1u));
    if (y >= VMAX) {
        t = f32(BINS - 1u);
    }
    // k + 1 stays a bin: at the top (t = BINS - 1) all weight lands on the last bin through
    // f = 1, the same vector as TD-MPC2's weight 1 on bin BINS - 1 and 0 on bin 0. The min
    // also keeps a NaN target's row in bounds.
    let k = min(u32(floor(t)), BINS - 2u);
    let f = t - f32(k);
    var v = 0.0;
    if (j == k) {
        v = 1.0 - f;
    }
    if (j == k + 1u) {
        v = f;
    }
    dst[p.out_offset + row * p.out_stride + j] = v;
}
