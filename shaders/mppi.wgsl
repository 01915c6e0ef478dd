// Classic MPPI (Williams et al. 2017, information-theoretic) over dynamics and costs that the
// user writes in WGSL (pasted in place of `#import user`; see src/planner/custom.rs for the
// contract). One thread rolls out one sample; one workgroup normalizes the weights; one
// workgroup per time step updates the control sequence. CPU mirror: src/reference/mppi.rs.
//
// Layouts: K samples, horizon H, C = CONTROL_DIM. u [H, C] the control sequence; eps [H, K, C]
// the effective perturbation of each sample after clamping (v - u); cost [K]; weights [K];
// bounds [3, C] = (sigma, u_min, u_max); out = (first control [C], min cost, normalizer eta,
// samples whose rollout ran all H steps, those of them with a finite cost); status [K]: each
// finished rollout writes its step's stream (the low 30 bits) shifted by 2, bit 0 set, bit 1
// set if its cost is finite. A sample the driver stopped early (lavapipe ends long loops) keeps
// an older stream and is missing from the counts, as one with a NaN or infinite cost is from
// the finite ones, and the host reports it. (Two global atomic counters, zeroed before each
// rollout and read back apart, cost 12 us of GPU time at 128 samples on the H100.)
// Header constants (with the user's): STATE_DIM, CONTROL_DIM, PARAM_LEN (>= 1), VIS.

override K: u32;
override H: u32;
override DT: f32 = 0.02;
override LAMBDA: f32 = 1.0;
// Weight of the control cost u^T Sigma^-1 mppi_eps (Williams et al.: lambda).
override GAMMA: f32 = 1.0;

alias State = array<f32, STATE_DIM>;
alias Control = array<f32, CONTROL_DIM>;

struct MppiParams {
    seed_lo: u32,
    seed_hi: u32,
    stream: u32,
    // Rows of `mppi_vis` to fill with sample trajectories (0: none).
    vis_rows: u32,
}

@group(0) @binding(0) var<storage, read> mppi_x0: array<f32>;
@group(0) @binding(1) var<storage, read_write> mppi_u: array<f32>;
@group(0) @binding(2) var<storage, read_write> mppi_eps: array<f32>;
@group(0) @binding(3) var<storage, read_write> mppi_cost: array<f32>;
@group(0) @binding(4) var<storage, read> mppi_bounds: array<f32>;
@group(0) @binding(5) var<storage, read_write> mppi_weights: array<f32>;
@group(0) @binding(6) var<storage, read_write> mppi_out: array<f32>;
@group(0) @binding(7) var<storage, read> user_params: array<f32>;
@group(0) @binding(8) var<uniform> mppi_p: MppiParams;
@group(0) @binding(9) var<storage, read_write> mppi_vis: array<f32>;
@group(0) @binding(10) var<storage, read_write> mppi_status: array<u32>;

// What every sample reads at every step of its rollout, staged in workgroup memory once per
// workgroup where it fits (header constants MPPI_STAGE_U: the control sequence (MPPI_U_LEN = H x
// C) and the bounds; MPPI_STAGE_P: the user's parameters; MPPI_STAGE: either): from storage,
// each step's control is a dependent load on the rollout's serial chain.
#if MPPI_STAGE_U
var<workgroup> mppi_wu: array<f32, MPPI_U_LEN>;
var<workgroup> mppi_wb: array<f32, 3u * CONTROL_DIM>;
#endif
#if MPPI_STAGE_P
var<workgroup> mppi_wp: array<f32, PARAM_LEN>;
#endif

// The user's parameter i (clamped into the buffer).
fn param(i: u32) -> f32 {
#if MPPI_STAGE_P
    return mppi_wp[min(i, PARAM_LEN - 1u)];
#else
    return user_params[min(i, PARAM_LEN - 1u)];
#endif
}

// Element i of the control sequence and of the bounds, as the rollout reads them.
fn mppi_u_at(i: u32) -> f32 {
#if MPPI_STAGE_U
    return mppi_wu[i];
#else
    return mppi_u[i];
#endif
}

fn mppi_bound(i: u32) -> f32 {
#if MPPI_STAGE_U
    return mppi_wb[i];
#else
    return mppi_bounds[i];
#endif
}

#import common/rng
#import user

// The standard normals of every sample, step and control, in parallel: one thread per Philox
// block of 4, so the rollout's serial chain over the horizon carries no random number
// generation. Element e = (t * K + k) * C + j is normal e % 4 of block e / 4.
@compute @workgroup_size(64)
fn mppi_noise(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let b = gid.x + gid.y * nwg.x * 64u;
    let n = H * K * CONTROL_DIM;
    if (b * 4u >= n) {
        return;
    }
    let seed = vec2<u32>(mppi_p.seed_lo, mppi_p.seed_hi);
    let z = normal4(philox(seed, mppi_p.stream, b));
    for (var i = 0u; i < 4u; i++) {
        if (b * 4u + i < n) {
            mppi_eps[b * 4u + i] = z[i];
        }
    }
}

// Reads the normals mppi_noise left in mppi_eps and overwrites each with the effective
// perturbation (clamped v - u).
@compute @workgroup_size(64)
fn mppi_rollout(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // Staging first: the barrier must be reached by every thread, samples past K included.
#if MPPI_STAGE_U
    for (var i = lid; i < H * CONTROL_DIM; i += 64u) {
        mppi_wu[i] = mppi_u[i];
    }
    for (var i = lid; i < 3u * CONTROL_DIM; i += 64u) {
        mppi_wb[i] = mppi_bounds[i];
    }
#endif
#if MPPI_STAGE_P
    for (var i = lid; i < PARAM_LEN; i += 64u) {
        mppi_wp[i] = user_params[i];
    }
#endif
#if MPPI_STAGE
    workgroupBarrier();
#endif
    let k = gid.x + gid.y * nwg.x * 64u;
    if (k >= K) {
        return;
    }
    var x: State;
    for (var i = 0u; i < STATE_DIM; i++) {
        x[i] = mppi_x0[i];
    }
    let vis_row = k < mppi_p.vis_rows;
    if (vis_row) {
        for (var i = 0u; i < STATE_DIM; i++) {
            mppi_vis[k * (H + 1u) * STATE_DIM + i] = x[i];
        }
    }
    var s = 0.0;
    // Next step's normals are loaded a step ahead, so their latency hides behind this step's
    // dynamics and cost.
    var n_next: Control;
    for (var j = 0u; j < CONTROL_DIM; j++) {
        n_next[j] = mppi_eps[k * CONTROL_DIM + j];
    }
    var steps = 0u;
    for (var t = 0u; t < H; t++) {
        let n = n_next;
        if (t + 1u < H) {
            for (var j = 0u; j < CONTROL_DIM; j++) {
                n_next[j] = mppi_eps[((t + 1u) * K + k) * CONTROL_DIM + j];
            }
        }
        var v: Control;
        for (var j = 0u; j < CONTROL_DIM; j++) {
            let e_idx = (t * K + k) * CONTROL_DIM + j;
            let sigma = mppi_bound(j);
            let uj = mppi_u_at(t * CONTROL_DIM + j);
            let vj = clamp(uj + sigma * n[j], mppi_bound(CONTROL_DIM + j), mppi_bound(2u * CONTROL_DIM + j));
            let e = vj - uj;
            mppi_eps[e_idx] = e;
            s += GAMMA * uj * e / (sigma * sigma);
            v[j] = vj;
        }
        s += running_cost(x, v, t);
        x = dynamics(x, v, t);
        if (vis_row) {
            for (var i = 0u; i < STATE_DIM; i++) {
                mppi_vis[(k * (H + 1u) + t + 1u) * STATE_DIM + i] = x[i];
            }
        }
        steps += 1u;
    }
    s += terminal_cost(x);
    // NaN and infinity by their bits: fast-math compilers may fold `s != s` away.
    let finite = (bitcast<u32>(s) & 0x7f800000u) != 0x7f800000u;
    // A diverged rollout gets no weight.
    if (!finite || s > 3.0e38) {
        s = 3.0e38;
    }
    mppi_cost[k] = s;
    if (steps == H) {
        mppi_status[k] = ((mppi_p.stream & 0x3fffffffu) << 2u) | select(1u, 3u, finite);
    }
}

// Whether this step's rollouts can be used (counted by mppi_normalize): every sample ran its
// whole horizon and at least one cost is finite. Otherwise the update leaves the control
// sequence as it was.
fn mppi_rollouts_ok() -> bool {
    return mppi_out[CONTROL_DIM + 2u] == f32(K) && mppi_out[CONTROL_DIM + 3u] > 0.0;
}

const MPPI_WG: u32 = 256u;
var<workgroup> mppi_red: array<f32, MPPI_WG>;

fn mppi_reduce(tid: u32, v: f32, is_min: bool) -> f32 {
    mppi_red[tid] = v;
    workgroupBarrier();
    for (var h = MPPI_WG / 2u; h > 0u; h >>= 1u) {
        if (tid < h) {
            if (is_min) {
                mppi_red[tid] = min(mppi_red[tid], mppi_red[tid + h]);
            } else {
                mppi_red[tid] += mppi_red[tid + h];
            }
        }
        workgroupBarrier();
    }
    let r = mppi_red[0];
    workgroupBarrier();
    return r;
}

// w_k = exp(-(S_k - min S) / lambda) / eta.
@compute @workgroup_size(MPPI_WG)
fn mppi_normalize(@builtin(local_invocation_index) tid: u32) {
    var m = 3.0e38;
    for (var k = tid; k < K; k += MPPI_WG) {
        m = min(m, mppi_cost[k]);
    }
    let rho = mppi_reduce(tid, m, true);
    var z = 0.0;
    for (var k = tid; k < K; k += MPPI_WG) {
        let w = exp(-(mppi_cost[k] - rho) / LAMBDA);
        mppi_weights[k] = w;
        z += w;
    }
    let eta = mppi_reduce(tid, z, false);
    var finished = 0.0;
    var finite = 0.0;
    let tag = (mppi_p.stream & 0x3fffffffu) << 2u;
    for (var k = tid; k < K; k += MPPI_WG) {
        mppi_weights[k] = mppi_weights[k] / eta;
        let f = mppi_status[k];
        if ((f & 0xfffffffcu) == tag && (f & 1u) == 1u) {
            finished += 1.0;
            finite += f32((f >> 1u) & 1u);
        }
    }
    // Counts as f32: exact up to 2^24 samples.
    finished = mppi_reduce(tid, finished, false);
    finite = mppi_reduce(tid, finite, false);
    if (tid == 0u) {
        mppi_out[CONTROL_DIM] = rho;
        mppi_out[CONTROL_DIM + 1u] = eta;
        mppi_out[CONTROL_DIM + 2u] = finished;
        mppi_out[CONTROL_DIM + 3u] = finite;
    }
}

var<workgroup> mppi_ok: u32;

// mppi_u[t] += sum_k w_k mppi_eps[t, k]; one workgroup per time step.
@compute @workgroup_size(MPPI_WG)
fn mppi_update(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.x;
    // Read once and shared, so the early return stays uniform (the reductions below barrier).
    if (tid == 0u) {
        mppi_ok = select(0u, 1u, mppi_rollouts_ok());
    }
    if (workgroupUniformLoad(&mppi_ok) == 0u) {
        return;
    }
    for (var j = 0u; j < CONTROL_DIM; j++) {
        var acc = 0.0;
        for (var k = tid; k < K; k += MPPI_WG) {
            acc += mppi_weights[k] * mppi_eps[(t * K + k) * CONTROL_DIM + j];
        }
        let d = mppi_reduce(tid, acc, false);
        if (tid == 0u) {
            let nu = mppi_u[t * CONTROL_DIM + j] + d;
            mppi_u[t * CONTROL_DIM + j] = nu;
            if (t == 0u) {
                mppi_out[j] = nu;
            }
        }
    }
}

// Warm start: mppi_u[t] = mppi_u[t + 1], the last step keeps its value. One workgroup walks
// the sequence in chunks: every read of a chunk happens before any of its writes, and a
// chunk reads only at or after its own start plus CONTROL_DIM, past everything written so far.
@compute @workgroup_size(MPPI_WG)
fn mppi_shift(@builtin(local_invocation_index) tid: u32) {
    let n = H * CONTROL_DIM;
    for (var base = 0u; base < n; base += MPPI_WG) {
        let i = base + tid;
        var v = 0.0;
        if (i < n) {
            v = mppi_u[select(i, i + CONTROL_DIM, i + CONTROL_DIM < n)];
        }
        storageBarrier();
        if (i < n) {
            mppi_u[i] = v;
        }
        storageBarrier();
    }
}
