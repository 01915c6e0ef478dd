// TD-MPC2's policy head (WorldModel.pi): from the policy network's last linear output
// h = [mean_raw (A) | log_std_raw (A)] per row and standard normal noise eps (A per row):
//
//   log_std  = LOG_STD_MIN + (LOG_STD_MAX - LOG_STD_MIN) / 2 * (tanh(log_std_raw) + 1)
//   u        = mean_raw + exp(log_std) * eps;  action = tanh(u);  mean = tanh(mean_raw)
//   lp_pre   = sum_i (-eps_i^2 / 2 - log_std_i - log(2 pi) / 2)          (gaussian_logprob)
//   log_prob = lp_pre - sum_i log(relu(1 - action_i^2) + 1e-6)           (squash)
//   entropy  = -log_prob
//   scaled_entropy = -log_prob * (A * lp_pre) / (log_prob + 1e-8)
//
// Outputs: action [R, A] and stats [R, 2A + 3] = (mean [A], log_std [A], log_prob, entropy,
// scaled_entropy) per row. TD-MPC2's eval-mode action is the `mean` block.
//
// Rewritten for f32 without cancellation, identical in exact arithmetic:
//   tanh(x) + 1 = 2 / (1 + e^(-2x));  tanh(x) = -expm1(-2|x|) / (2 + expm1(-2|x|)) * sign(x);
//   1 - tanh(u)^2 = 4 e^(-2|u|) / (1 + e^(-2|u|))^2  (1 - a^2 from a rounded a loses all digits
//   once |u| > 4 and is exactly 0 in f32 for |u| > 9, where the exact value still moves the
//   log by up to 0.06).
//
// LANES threads share a row (64 / LANES rows per workgroup), each taking elements lane,
// lane + LANES, ...; the two row sums are reduced in a tree in workgroup memory (no subgroup
// operations). With A = 38 (dog) that is 16 lanes of at most 3 elements: the planner's 24 to
// 512 rows become 384 to 8192 threads with coalesced loads instead of 24 to 512 serial loops
// over 38 elements. Workgroups beyond 65535 continue along y.
// CPU mirror: src/reference/policy.rs.

#import common/act

override A: u32;
override LOG_STD_MIN: f32 = -10.0;
override LOG_STD_MAX: f32 = 2.0;
// Threads per row: a power of two, at most 64.
override LANES: u32 = 16u;

const WG: u32 = 64u;

struct Params {
    rows: u32,
    // Element offsets of row 0 in each buffer; rows are contiguous after it.
    h_offset: u32,
    eps_offset: u32,
    action_offset: u32,
    stats_offset: u32,
    // Action rows come in blocks of `action_block` rows, `action_stride` elements apart (a
    // population's policy trajectories: each agent's rows a prefix of its sample rows).
    action_block: u32,
    action_stride: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> h: array<f32>;
@group(0) @binding(1) var<storage, read> eps: array<f32>;
@group(0) @binding(2) var<storage, read_write> action: array<f32>;
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

var<workgroup> red_g: array<f32, WG>;
var<workgroup> red_q: array<f32, WG>;

@compute @workgroup_size(WG)
fn sample(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let group = wid.x + wid.y * nwg.x;
    let lane = tid % LANES;
    let row = group * (WG / LANES) + tid / LANES;
    let valid = row < p.rows;
    let hb = p.h_offset + row * 2u * A;
    let sb = p.stats_offset + row * (2u * A + 3u);
    let ab = p.action_offset + (row / p.action_block) * p.action_stride + (row % p.action_block) * A;

    // g: Gaussian log-prob terms; q: squash terms log(1 - a^2 + 1e-6).
    var g = 0.0;
    var q = 0.0;
    if (valid) {
        for (var i = lane; i < A; i += LANES) {
            let mean_raw = h[hb + i];
            let ls_raw = h[hb + A + i];
            let e = eps[p.eps_offset + row * A + i];
            let log_std = LOG_STD_MIN + (LOG_STD_MAX - LOG_STD_MIN) / (1.0 + exp(-2.0 * ls_raw));
            let u = fma(exp(log_std), e, mean_raw);
            let a = tanh_sech2(u);
            action[ab + i] = a.x;
            stats[sb + i] = tanh_sech2(mean_raw).x;
            stats[sb + A + i] = log_std;
            g += -0.5 * e * e - log_std - HALF_LOG_2PI;
            q += log(max(a.y, 0.0) + 1e-6);
        }
    }
    red_g[tid] = g;
    red_q[tid] = q;
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (lane < s) {
            g += red_g[tid + s];
            q += red_q[tid + s];
            red_g[tid] = g;
            red_q[tid] = q;
        }
    }
    if (valid && lane == 0u) {
        let log_prob = g - q;
        let scale = (g * f32(A)) / (log_prob + 1e-8);
        stats[sb + 2u * A] = log_prob;
        stats[sb + 2u * A + 1u] = -log_prob;
        stats[sb + 2u * A + 2u] = -log_prob * scale;
    }
}
