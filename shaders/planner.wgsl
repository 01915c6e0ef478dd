// The planner's own steps (everything else is network layers, two_hot, policy and
// rng_fill): warm-started initialization, replication of latents, sampling of action
// sequences, the value of each sequence, the per-environment elite sort and refit, and the
// final choice. The algorithm and its random streams are specified in src/planner/mod.rs;
// CPU mirror: src/reference/planner.rs.
//
// Layouts: G agents (a population planning in the same launches; 1 for one planner), B
// environments per agent, N samples (the first P are policy trajectories), horizon T, action
// dimension A. An agent's sample rows r = n * B + b, the agents' rows of one time step one
// after the other: actions [T, G, N, B, A], rewards and termination logits [T, G * N * B],
// Q values [G, 2, N * B], values [G, N * B]; per environment g * B + b: mean, std and
// prev_mean [G * B, T, A], kept indices and weights [G * B, KEPT], result [G * B, 3A + 2] =
// (action, mean of step 0, std of step 0, value, chosen sample index). Every draw of agent g
// comes from its own seed (seeds[2g], seeds[2g + 1]) at the index it has for that agent
// alone, so an agent plans in a population exactly as it would alone.
// Header constants: SORT_N (N rounded up to a power of two), KEPT, and STAGE_TA (T * A where
// refit keeps the kept samples' actions, KEPT x T x A, in workgroup memory; 0 where they do not
// fit).

#import common/rng

override N: u32;
override P: u32;
override T: u32;
override A: u32;
// 0: TD-MPC2's elite MPPI, 1: plain MPPI, 2: CEM.
override MODE: u32 = 0u;
override TEMPERATURE: f32 = 0.5;
override LAMBDA: f32 = 1.0;
override MIN_STD: f32 = 0.05;
override MAX_STD: f32 = 2.0;
override DISCOUNT: f32 = 0.99;
override TRAIN: bool = true;
// Episodic models: a predicted termination (logit > 0, probability > 0.5) ends the return.
override EPISODIC: bool = false;

struct Params {
    // Environments per agent.
    b: u32,
    stream: u32,
    // replicate: rows per environment and row width.
    count: u32,
    width: u32,
    agents: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> prev_mean: array<f32>;
@group(0) @binding(1) var<storage, read> first: array<u32>;
@group(0) @binding(2) var<storage, read_write> mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> stdv: array<f32>;
// Latents, moved as vec4 (the latent width is a multiple of 8).
@group(0) @binding(4) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> actions: array<f32>;
@group(0) @binding(7) var<storage, read> rew: array<f32>;
@group(0) @binding(8) var<storage, read> qv: array<f32>;
@group(0) @binding(9) var<storage, read_write> value: array<f32>;
@group(0) @binding(10) var<storage, read_write> kept: array<u32>;
@group(0) @binding(11) var<storage, read_write> weights: array<f32>;
@group(0) @binding(12) var<storage, read_write> result: array<f32>;
@group(0) @binding(13) var<uniform> p: Params;
// Termination logits [T, G * N * B] of the latents after each step (episodic models).
@group(0) @binding(14) var<storage, read> term: array<f32>;
// The agents' Philox seeds: low and high word of each.
@group(0) @binding(15) var<storage, read> seeds: array<u32>;

fn seed_of(g: u32) -> vec2<u32> {
    return vec2<u32>(seeds[2u * g], seeds[2u * g + 1u]);
}

// Element j of agent g's current stream, as rng_fill lays it out: lane j % 4 of counter j / 4.
fn normal_at(g: u32, j: u32) -> f32 {
    return normal4(philox(seed_of(g), p.stream, j / 4u))[j % 4u];
}

fn gumbel_at(g: u32, j: u32) -> f32 {
    return gumbel4(philox(seed_of(g), p.stream, j / 4u))[j % 4u];
}

fn linear_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

fn neg_inf() -> f32 {
    return bitcast<f32>(0xff800000u);
}

// mean = 0 on a first step, else prev_mean shifted one step (0 at the end); std = MAX_STD.
@compute @workgroup_size(64)
fn init_mean(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = linear_id(gid, nwg);
    if (j >= p.agents * p.b * T * A) {
        return;
    }
    let b = j / (T * A);
    let t = (j / A) % T;
    var m = 0.0;
    if (first[b] == 0u && t + 1u < T) {
        m = prev_mean[j + A];
    }
    mean[j] = m;
    stdv[j] = MAX_STD;
}

// dst[((g * count + n) * B + b) * W + k] = src[(g * B + b) * W + k] for n < count, four k at
// a time (W % 4 == 0).
@compute @workgroup_size(64)
fn replicate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = linear_id(gid, nwg);
    let w = p.width / 4u;
    if (j >= p.agents * p.count * p.b * w) {
        return;
    }
    let row = j / w;
    let g = row / (p.count * p.b);
    dst[j] = src[(g * p.b + row % p.b) * w + j - row * w];
}

// actions[t, g, n, b, a] = clamp(mean + std * eps, -1, 1) for the sampled rows n >= P.
@compute @workgroup_size(64)
fn sample(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    let per_g = (N - P) * p.b * A;
    let per_t = p.agents * per_g;
    if (i >= T * per_t) {
        return;
    }
    let t = i / per_t;
    let g = (i % per_t) / per_g;
    sample_at((t * p.agents + g) * N * p.b * A + P * p.b * A + i % per_g);
}

// value = sum_t discount^t alive_t reward_t + discount^T alive_T (Q_h0 + Q_h1) / 2, NaN -> 0,
// where alive drops to 0 for good after a predicted termination (episodic models; TD-MPC2's
// running termination flag), and stays 1 otherwise. Row r of agent `ag`'s N * B.
fn value_of(ag: u32, r: u32) -> f32 {
    let rows = N * p.b;
    let all = p.agents * rows;
    let at = ag * rows + r;
    var g = 0.0;
    var disc = 1.0;
    var alive = 1.0;
    for (var t = 0u; t < T; t++) {
        g += disc * alive * rew[t * all + at];
        disc *= DISCOUNT;
        if (EPISODIC && term[t * all + at] > 0.0) {
            alive = 0.0;
        }
    }
    let q = ag * 2u * rows + r;
    var v = g + disc * alive * 0.5 * (qv[q] + qv[rows + q]);
    // WGSL lets a compiler assume no NaN, so `v != v` may fold to false (lavapipe's does): test
    // the bits. NaN: exponent all ones, mantissa not zero.
    if ((bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u) {
        v = 0.0;
    }
    return v;
}

// actions[j] for the sampled rows n >= P: clamp(mean + std * eps, -1, 1), eps the element of
// agent g's stream p.stream (as rng_fill lays it out) at j's index in g's actions alone.
fn sample_at(j: u32) {
    let per_g = N * p.b * A;
    let a = j % A;
    let b = (j / A) % p.b;
    let g = (j / per_g) % p.agents;
    let t = j / (per_g * p.agents);
    let mi = ((g * p.b + b) * T + t) * A + a;
    actions[j] = draw(mean[mi], stdv[mi], g, t * per_g + j % per_g);
}

// A sampled action: mean m and std sd, the normal of agent g's stream at index `at`.
fn draw(m: f32, sd: f32, g: u32, at: u32) -> f32 {
    return clamp(m + sd * normal_at(g, at), -1.0, 1.0);
}

const RW: u32 = 256u;
var<workgroup> sk: array<f32, SORT_N>;
var<workgroup> si: array<u32, SORT_N>;
var<workgroup> sw: array<f32, KEPT>;
var<workgroup> red: array<f32, RW>;
var<workgroup> red_i: array<u32, RW>;
#if STAGE_TA
// The kept samples' actions [KEPT, T, A], loaded by all threads at once (from storage each
// thread of the refit walked KEPT dependent loads twice), and the refitted mean and std [T, A]
// that the next iteration's samples read.
var<workgroup> sa: array<f32, KEPT * STAGE_TA>;
var<workgroup> sm: array<f32, STAGE_TA>;
var<workgroup> ss: array<f32, STAGE_TA>;
#endif

// x comes before y: higher value, then lower sample index.
fn before(x: u32, y: u32) -> bool {
    return sk[x] > sk[y] || (sk[x] == sk[y] && si[x] < si[y]);
}

fn reduce_sum(tid: u32, v: f32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    for (var h = RW / 2u; h > 0u; h >>= 1u) {
        if (tid < h) {
            red[tid] += red[tid + h];
        }
        workgroupBarrier();
    }
    let s = red[0];
    workgroupBarrier();
    return s;
}

fn reduce_max(tid: u32, v: f32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    for (var h = RW / 2u; h > 0u; h >>= 1u) {
        if (tid < h) {
            red[tid] = max(red[tid], red[tid + h]);
        }
        workgroupBarrier();
    }
    let s = red[0];
    workgroupBarrier();
    return s;
}

// One workgroup per environment: the values of its N samples (written to `value` for
// `finalize`), sorted (bitonic, descending); the first KEPT (all N in order for plain MPPI)
// weighed and the mean and std refitted; then, with p.count = 1, the next iteration's samples
// drawn from them (stream p.stream), so that an iteration ends in one launch.
@compute @workgroup_size(RW)
fn refit(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let b = wid.x;
    let ag = wid.y;
    // This environment's index among all agents' (mean, std, kept, weights).
    let env = ag * p.b + b;
    // Agent ag's actions of time step t start at t * stride_t + ag_base.
    let stride_t = p.agents * N * p.b * A;
    let ag_base = ag * N * p.b * A;
    for (var i = tid; i < SORT_N; i += RW) {
        if (i < N) {
            let v = value_of(ag, i * p.b + b);
            value[ag * N * p.b + i * p.b + b] = v;
            sk[i] = v;
        } else {
            sk[i] = neg_inf();
        }
        si[i] = i;
    }
    workgroupBarrier();
    if (MODE != 1u) {
        for (var k = 2u; k <= SORT_N; k <<= 1u) {
            for (var j = k >> 1u; j > 0u; j >>= 1u) {
                for (var i = tid; i < SORT_N; i += RW) {
                    let l = i ^ j;
                    if (l > i) {
                        let up = (i & k) == 0u;
                        if ((up && before(l, i)) || (!up && before(i, l))) {
                            let tk = sk[i];
                            sk[i] = sk[l];
                            sk[l] = tk;
                            let ti = si[i];
                            si[i] = si[l];
                            si[l] = ti;
                        }
                    }
                }
                workgroupBarrier();
            }
        }
    }
    var local_max = neg_inf();
    for (var e = tid; e < KEPT; e += RW) {
        local_max = max(local_max, sk[e]);
    }
    let vmax = reduce_max(tid, local_max);
    var local_sum = 0.0;
    for (var e = tid; e < KEPT; e += RW) {
        var s = 1.0;
        if (MODE == 0u) {
            s = exp(TEMPERATURE * (sk[e] - vmax));
        } else if (MODE == 1u) {
            s = exp((sk[e] - vmax) / LAMBDA);
        }
        sw[e] = s;
        local_sum += s;
    }
    let total = reduce_sum(tid, local_sum);
    var norm_sum = 0.0;
    for (var e = tid; e < KEPT; e += RW) {
        let s = sw[e] / total;
        sw[e] = s;
        norm_sum += s;
        kept[env * KEPT + e] = si[e];
        weights[env * KEPT + e] = s;
    }
    let denom = reduce_sum(tid, norm_sum) + 1e-9;
#if STAGE_TA
    for (var i = tid; i < KEPT * T * A; i += RW) {
        let e = i / (T * A);
        let t = (i / A) % T;
        sa[i] = actions[t * stride_t + ag_base + b * A + i % A + si[e] * p.b * A];
    }
    workgroupBarrier();
#endif
    for (var j = tid; j < T * A; j += RW) {
        let t = j / A;
        let a = j % A;
        let base = t * stride_t + ag_base + b * A + a;
        var m = 0.0;
        for (var e = 0u; e < KEPT; e++) {
#if STAGE_TA
            m += sw[e] * sa[e * T * A + j];
#else
            m += sw[e] * actions[base + si[e] * p.b * A];
#endif
        }
        m /= denom;
        var v = 0.0;
        for (var e = 0u; e < KEPT; e++) {
#if STAGE_TA
            let d = sa[e * T * A + j] - m;
#else
            let d = actions[base + si[e] * p.b * A] - m;
#endif
            v += sw[e] * d * d;
        }
        let o = (env * T + t) * A + a;
        let sd = clamp(sqrt(v / denom), MIN_STD, MAX_STD);
        mean[o] = m;
        stdv[o] = sd;
#if STAGE_TA
        sm[j] = m;
        ss[j] = sd;
#endif
    }
    if (p.count == 0u) {
        return;
    }
    let per_t = (N - P) * A;
#if STAGE_TA
    // sample_at's draws from the mean and std this workgroup just refitted, held here.
    workgroupBarrier();
    let per_g = N * p.b * A;
    for (var i = tid; i < T * per_t; i += RW) {
        let t = i / per_t;
        let n = P + (i % per_t) / A;
        let a = i % A;
        let r = (n * p.b + b) * A + a;
        actions[t * stride_t + ag_base + r] = draw(sm[t * A + a], ss[t * A + a], ag, t * per_g + r);
    }
#else
    // Every mean and std of this environment is written and every kept action read.
    storageBarrier();
    for (var i = tid; i < T * per_t; i += RW) {
        let t = i / per_t;
        let n = P + (i % per_t) / A;
        sample_at(t * stride_t + ag_base + (n * p.b + b) * A + i % A);
    }
#endif
}

// One workgroup per environment: Gumbel-max choice among the kept samples, the action to
// execute (with exploration noise in training), and the warm start for the next call.
@compute @workgroup_size(RW)
fn finalize(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let b = wid.x;
    let ag = wid.y;
    let env = ag * p.b + b;
    var best = neg_inf();
    var best_e = 0xffffffffu;
    for (var e = tid; e < KEPT; e += RW) {
        let w = weights[env * KEPT + e];
        var sc = neg_inf();
        if (w > 0.0) {
            sc = log(w) + gumbel_at(ag, b * KEPT + e);
        }
        if (best_e == 0xffffffffu || sc > best) {
            best = sc;
            best_e = e;
        }
    }
    red[tid] = best;
    red_i[tid] = best_e;
    workgroupBarrier();
    for (var h = RW / 2u; h > 0u; h >>= 1u) {
        if (tid < h) {
            let o = tid + h;
            let take = red_i[o] != 0xffffffffu
                && (red_i[tid] == 0xffffffffu || red[o] > red[tid]
                    || (red[o] == red[tid] && red_i[o] < red_i[tid]));
            if (take) {
                red[tid] = red[o];
                red_i[tid] = red_i[o];
            }
        }
        workgroupBarrier();
    }
    let e = red_i[0];
    let n = kept[env * KEPT + e];
    let w = 3u * A + 2u;
    for (var a = tid; a < A; a += RW) {
        let m0 = mean[env * T * A + a];
        let s0 = stdv[env * T * A + a];
        var act = actions[(ag * N + n) * p.b * A + b * A + a];
        if (TRAIN) {
            // The explore stream is element b * A + a; sampling used p.stream for Gumbel,
            // so the explore draws come from the next stream (see Rust: streams::explore).
            act += s0 * normal4(philox(seed_of(ag), p.stream + 1u, (b * A + a) / 4u))[(b * A + a) % 4u];
        }
        result[env * w + a] = clamp(act, -1.0, 1.0);
        result[env * w + A + a] = m0;
        result[env * w + 2u * A + a] = s0;
    }
    if (tid == 0u) {
        result[env * w + 3u * A] = value[ag * N * p.b + n * p.b + b];
        result[env * w + 3u * A + 1u] = f32(n);
    }
    for (var j = tid; j < T * A; j += RW) {
        prev_mean[env * T * A + j] = mean[env * T * A + j];
    }
}
