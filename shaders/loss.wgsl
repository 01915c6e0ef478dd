// World-model losses with their gradients, each reduced on the GPU into one f32 slot.
//
// Row weights: rows are laid out [T, B] within a member, row r is step t = r / rows_per_step,
// and w_r = scale * rho^t (rho^t by repeated squaring: no log or exp, rho = 0 allowed; up to
// about t ulps of relative error, as each squaring doubles the error before it).
//
// `soft_ce` (TD-MPC2's soft cross-entropy over two-hot targets): LANES threads per row of
// BINS logits (WG / LANES rows per workgroup) find the row's max m and s = sum e^(l - m) as
// two_hot's decode does (a tree of (max, sum) pairs in workgroup memory); lse = m + log s.
// The target's two-hot is two_hot.wgsl's `encode`, copied: weight 1 - f on bin k and f on
// k + 1, so loss_r = (1 - f)(lse - l_k) + f (lse - l_{k+1}), both terms non-negative. The
// gradient w_r (softmax - two_hot) is written or added. Member e's logits and gradient rows
// follow member e - 1's (row index e * rows + r); the targets are shared.
//
// `mse` (consistency): one thread per element, 4 elements per thread; loss w_r (z - z')^2
// summed, gradient 2 w_r (z - z') written or added; the target gets none.
//
// Each workgroup sums its weighted losses in a fixed order into part[part_off + workgroup];
// with one workgroup that is the loss slot itself (written or added), otherwise a scratch of
// partials that `reduce` (one workgroup) sums in a fixed order into the slot: deterministic,
// no atomics, no host round trip. CPU mirror: src/reference/loss.rs.

override BINS: u32 = 101u;
override VMIN: f32 = -10.0;
override VMAX: f32 = 10.0;
// Threads per row in `soft_ce`: a power of two, at most WG.
override LANES: u32 = 8u;
// Features per row in `mse`.
override N: u32 = 1u;
// Write the gradient, and add it into what is there instead of overwriting it.
override GRAD: bool = true;
override GRAD_ADD: bool = false;
// Add the loss into its slot instead of writing it.
override LOSS_ADD: bool = false;

struct Params {
    // Rows per member, and members.
    rows: u32,
    members: u32,
    // Logits or z (rows at src_off + row * src_stride), or the partials of `reduce`.
    src_off: u32,
    src_stride: u32,
    // Targets (shared by the members): target row r at tgt_off + r * tgt_stride.
    tgt_off: u32,
    tgt_stride: u32,
    grad_off: u32,
    grad_stride: u32,
    // Where this dispatch's sums go: part_off + workgroup.
    part_off: u32,
    // Workgroups of the first pass (partials), or partials that `reduce` sums.
    count: u32,
    rows_per_step: u32,
    // Populations (grid z = agent): elements between agents' sources, targets and gradient
    // rows, and between their sums (partials, or loss slots).
    src_as: u32,
    scale: f32,
    rho: f32,
    tgt_as: u32,
    grad_as: u32,
    part_as: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read> tgt: array<f32>;
@group(0) @binding(2) var<storage, read_write> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> part: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

const WG: u32 = 64u;
const RW: u32 = 256u;
// Elements per thread in `mse`.
const EPT: u32 = 4u;

var<workgroup> red_m: array<f32, WG>;
var<workgroup> red_s: array<f32, WG>;
var<workgroup> red_l: array<f32, WG>;
var<workgroup> red_r: array<f32, RW>;

// w_r = scale * rho^(r / rows_per_step).
fn row_weight(r: u32) -> f32 {
    var t = r / p.rows_per_step;
    var b = p.rho;
    var pw = 1.0;
    while (t > 0u) {
        if ((t & 1u) == 1u) {
            pw *= b;
        }
        b *= b;
        t >>= 1u;
    }
    return p.scale * pw;
}

fn store_part(i: u32, v: f32) {
    if (LOSS_ADD) {
        part[i] = part[i] + v;
    } else {
        part[i] = v;
    }
}

fn store_grad(i: u32, v: f32) {
    if (GRAD_ADD) {
        grad[i] = grad[i] + v;
    } else {
        grad[i] = v;
    }
}

// Sum of v over the RW threads; thread 0 gets the total.
fn block_sum(tid: u32, v: f32) -> f32 {
    red_r[tid] = v;
    for (var h = RW / 2u; h > 0u; h >>= 1u) {
        workgroupBarrier();
        if (tid < h) {
            red_r[tid] = red_r[tid] + red_r[tid + h];
        }
    }
    return red_r[tid];
}

// ---- two_hot.wgsl's encode, copied (keep the two in step) ----

fn bin_size() -> f32 {
    return (VMAX - VMIN) / f32(BINS - 1u);
}

fn symlog(x: f32) -> f32 {
    return sign(x) * log(1.0 + abs(x));
}

struct TwoHot {
    k: u32,
    f: f32,
}

// Weight 1 - f on bin k and f on bin k + 1 (k + 1 < BINS).
fn two_hot(x: f32) -> TwoHot {
    let y = clamp(symlog(x), VMIN, VMAX);
    // Clamped so that an fma-contracted division cannot leave a tiny negative residual at
    // VMIN; at VMAX the position is BINS - 1 exactly.
    var t = clamp((y - VMIN) / bin_size(), 0.0, f32(BINS - 1u));
    if (y >= VMAX) {
        t = f32(BINS - 1u);
    }
    // At the top all weight lands on the last bin through f = 1 (TD-MPC2's weight 1 on bin
    // BINS - 1 and 0 on the wrapped bin 0); the min also keeps a NaN target in bounds.
    let k = min(u32(floor(t)), BINS - 2u);
    return TwoHot(k, t - f32(k));
}

// ----

@compute @workgroup_size(WG)
fn soft_ce(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let group = wid.x + wid.y * nwg.x;
    let lane = tid % LANES;
    let slot = tid / LANES;
    let row = group * (WG / LANES) + slot;
    // Workgroups past `count` (the 2-D grid's last line) do nothing.
    let valid = group < p.count && row < p.rows * p.members;
    let r = row % p.rows;
    let base = p.src_off + wid.z * p.src_as + row * p.src_stride;

    // An empty lane's max is the lowest f32, so its sum gets weight exp(-huge) = 0.
    var m = -3.40282347e38;
    var s = 0.0;
    if (valid) {
        for (var j = lane; j < BINS; j += LANES) {
            m = max(m, src[base + j]);
        }
        for (var j = lane; j < BINS; j += LANES) {
            s += exp(src[base + j] - m);
        }
    }
    red_m[tid] = m;
    red_s[tid] = s;
    for (var h = LANES / 2u; h > 0u; h >>= 1u) {
        workgroupBarrier();
        if (lane < h) {
            let m2 = red_m[tid + h];
            let mx = max(m, m2);
            s = s * exp(m - mx) + red_s[tid + h] * exp(m2 - mx);
            m = mx;
            red_m[tid] = m;
            red_s[tid] = s;
        }
    }
    workgroupBarrier();
    let mr = red_m[tid - lane];
    let sr = red_s[tid - lane];

    var wl = 0.0;
    if (valid) {
        let lse = mr + log(sr);
        let th = two_hot(tgt[p.tgt_off + wid.z * p.tgt_as + r * p.tgt_stride]);
        let w = row_weight(r);
        if (lane == 0u) {
            let lk = src[base + th.k];
            let lk1 = src[base + th.k + 1u];
            wl = w * ((1.0 - th.f) * (lse - lk) + th.f * (lse - lk1));
        }
        if (GRAD) {
            for (var j = lane; j < BINS; j += LANES) {
                var q = 0.0;
                if (j == th.k) {
                    q = 1.0 - th.f;
                }
                if (j == th.k + 1u) {
                    q = th.f;
                }
                let at = p.grad_off + wid.z * p.grad_as + row * p.grad_stride + j;
                store_grad(at, w * (exp(src[base + j] - mr) / sr - q));
            }
        }
    }
    if (lane == 0u) {
        red_l[slot] = wl;
    }
    workgroupBarrier();
    if (tid == 0u && group < p.count) {
        var total = 0.0;
        for (var i = 0u; i < WG / LANES; i++) {
            total += red_l[i];
        }
        store_part(p.part_off + wid.z * p.part_as + group, total);
    }
}

@compute @workgroup_size(RW)
fn mse(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let group = wid.x + wid.y * nwg.x;
    let total = p.rows * p.members * N;
    var acc = 0.0;
    for (var c = 0u; c < EPT; c++) {
        let i = (group * EPT + c) * RW + tid;
        if (group < p.count && i < total) {
            let row = i / N;
            let j = i % N;
            let r = row % p.rows;
            let z = src[p.src_off + wid.z * p.src_as + row * p.src_stride + j];
            let d = z - tgt[p.tgt_off + wid.z * p.tgt_as + r * p.tgt_stride + j];
            let w = row_weight(r);
            acc += w * d * d;
            if (GRAD) {
                store_grad(p.grad_off + wid.z * p.grad_as + row * p.grad_stride + j, 2.0 * w * d);
            }
        }
    }
    let sum = block_sum(tid, acc);
    if (tid == 0u && group < p.count) {
        store_part(p.part_off + wid.z * p.part_as + group, sum);
    }
}

// The `count` partials from src_off (agent z's src_as later), summed into part[part_off]
// (agent z's part_as later).
@compute @workgroup_size(RW)
fn reduce(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    var s = 0.0;
    for (var i = tid; i < p.count; i += RW) {
        s += src[p.src_off + wid.z * p.src_as + i];
    }
    let total = block_sum(tid, s);
    if (tid == 0u) {
        store_part(p.part_off + wid.z * p.part_as, total);
    }
}
