// Row-wise training kernels of a NormedLinear layer: y = act(LN(h)) over rows of N features,
// its backward, and column sums over rows (LayerNorm and bias gradients).
//
// Activations are [members, rows, N], rows back to back from an element offset (the member
// stride is rows * N); member e's gamma and beta sit at gamma_off + e * N, beta_off + e * N
// (in populations, agent by agent: see param_at).
// The math is linear.wgsl's epilogue: mean, then the biased variance of (h - mean) in a second
// pass, rstd = inverseSqrt(var + 1e-5), u = (h - mean) * rstd * gamma + beta; Mish from
// common/act; SimNorm a softmax over consecutive groups of 8.
//
// `forward`, `backward`: LANES threads per row (WG / LANES rows per workgroup), the row's sums
// merged in a tree in workgroup memory (no subgroup operations, so any subgroup size works).
// At LANES = 64 the summation order is the epilogue's, so the statistics agree bit for bit
// when the driver compiles both alike. Threads take whole "units": one feature, or one group
// of 8 under SimNorm, so a group's softmax stays in one thread. Rows are re-read from memory
// in each pass instead of being held in workgroup memory: no cap on N, and the re-reads of a
// row of a few KB hit the cache.
//
// Backward, with xhat = (h - mean) * rstd, du the gradient at u (through the activation:
// Mish'(u) dy, or s (dy - sum_group s dy) for SimNorm) and g = gamma du:
//   dh = rstd (g - mean_row(g) - xhat mean_row(g xhat)),
// exact also with eps (d rstd / dh carries the same eps). The per-row (mean, rstd) are the
// forward's stored stats (so both agree exactly), or recomputed the forward's way
// (RECOMPUTE) and then stored for `ln_grads` (STATS).
//
// Column sums (`ln_grads`: dgamma = sum_rows du xhat, dbeta = sum_rows du, and with BIAS the
// bias gradient db = sum_rows dh from the dh the backward wrote, so a layer's three parameter
// gradients take one pass; `colsum`: sum_rows a or a * b) have no float atomics to lean on: a workgroup sums CT columns over one chunk of
// rows (CL row lanes per column, coalesced reads along the row), merges the lanes in
// workgroup memory, and writes either the final column (one chunk: added into grads or
// written) or a partial row of a scratch buffer [quantity, member, chunk, N] that `finish`
// sums in chunk order. Both orders are fixed: results are deterministic. `ln_grads` recomputes
// du per column from h, dy and the stats (the whole group of 8 under SimNorm), so no [rows, N]
// temporary is written.
//
// Workgroups beyond 65535 continue along y. CPU mirror: src/reference/norm_act.rs.

#import common/act

override N: u32;
// 0 identity, 1 Mish, 2 SimNorm over groups of 8 (as linear.wgsl).
override ACT: u32 = 0u;
override LN: bool = false;
// forward, backward: store (mean, rstd) per row.
override STATS: bool = false;
// backward: compute (mean, rstd) from h instead of reading the forward's.
override RECOMPUTE: bool = false;
// backward and the column kernels: add into the output instead of writing it.
override ADD: bool = false;
// Threads per row in the row kernels: a power of two, at most WG.
override LANES: u32 = 64u;
// colsum: the column sum of a * b instead of a.
override PRODUCT: bool = false;
// finish: quantities summed (1: a column sum; 2: dgamma and dbeta; 3: and db).
override Q: u32 = 1u;
// ln_grads: also the column sum of dh (read from `aux`) into the third output.
override BIAS: bool = false;

struct Params {
    // Rows per member, and members.
    rows: u32,
    members: u32,
    // h (row kernels, ln_grads), a (colsum), partials (finish).
    x_off: u32,
    // dy (backward, ln_grads), b (colsum).
    dy_off: u32,
    gamma_off: u32,
    beta_off: u32,
    // (mean, rstd) of global row i at stats_off + 2 i.
    stats_off: u32,
    // y, dh, or the first column-sum output (dgamma); out_off2: the second (dbeta), out_off3
    // the third (db).
    out_off: u32,
    out_off2: u32,
    out_off3: u32,
    // Column-sum outputs: elements between members and between row chunks.
    out_member: u32,
    out_chunk: u32,
    // Rows per chunk and chunks (column kernels).
    chunk_rows: u32,
    chunks: u32,
    // Populations: member e is member e % per_agent of agent e / per_agent; gamma and beta
    // step by param_as per agent. Column-sum outputs split the members by out_per (the
    // agents' members, or all of them for partials) and step by out_as per agent.
    per_agent: u32,
    param_as: u32,
    out_per: u32,
    out_as: u32,
    // ln_grads with BIAS: dh in `aux`.
    aux_off: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> prm: array<f32>;
@group(0) @binding(3) var<storage, read> stats_in: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;
// forward, backward: the row statistics stored (STATS); ln_grads: dh (BIAS).
@group(0) @binding(5) var<storage, read_write> aux: array<f32>;
@group(0) @binding(6) var<uniform> p: Params;

const WG: u32 = 64u;
// Column kernels: CT columns by CL row lanes (CT * CL <= 256): wide tiles read 256-byte row
// segments; narrow ones (16 x 16) give four times the workgroups and a quarter of the rows per
// lane, for sums over few rows.
override CT: u32 = 64u;
override CL: u32 = 4u;

var<workgroup> red: array<vec2<f32>, WG>;
var<workgroup> cred: array<vec4<f32>, 256>;

// Features per unit: a SimNorm group stays in one thread.
fn unit_len() -> u32 {
    return select(1u, 8u, ACT == 2u);
}

// Mish'(x) = tanh(sp) + x sech^2(sp) sigmoid(x), sp = softplus(x). With e = exp(x) and
// n = e (e + 2) (as in mish): tanh(sp) = n / (n + 2) and sech^2(sp) sigmoid(x) =
// 4 e (1 + e) / (n + 2)^2; no cancellation for negative x, no overflow below 20, and 1 above,
// where mish returns x.
fn mish_grad(v: f32) -> f32 {
    if (v > 20.0) {
        return 1.0;
    }
    let e = exp(v);
    let n = e * (e + 2.0);
    let d = n + 2.0;
    return n / d + 4.0 * v * e * (1.0 + e) / (d * d);
}

// Sum of v over the LANES threads of one row, returned to each of them. All threads of the
// workgroup must call it (it has barriers).
fn row_sum(tid: u32, lane: u32, v: vec2<f32>) -> vec2<f32> {
    red[tid] = v;
    for (var h = LANES / 2u; h > 0u; h >>= 1u) {
        workgroupBarrier();
        if (lane < h) {
            red[tid] = red[tid] + red[tid + h];
        }
    }
    workgroupBarrier();
    let total = red[tid - lane];
    workgroupBarrier();
    return total;
}

// Offset of member e's gamma (beta) from gamma_off (beta_off).
fn param_at(e: u32) -> u32 {
    return (e % p.per_agent) * N + (e / p.per_agent) * p.param_as;
}

// Offset of member e's column-sum output from out_off (out_off2).
fn out_at(e: u32) -> u32 {
    return (e % p.out_per) * p.out_member + (e / p.out_per) * p.out_as;
}

// Pre-activations u of unit k of global row `row` (member e), and xhat under LayerNorm.
fn load_unit(
    row: u32,
    e: u32,
    k: u32,
    mean: f32,
    rstd: f32,
    xh: ptr<function, array<f32, 8>>,
    u: ptr<function, array<f32, 8>>,
) {
    let U = unit_len();
    for (var c = 0u; c < U; c++) {
        let j = k * U + c;
        var v = x[p.x_off + row * N + j];
        if (LN) {
            v = (v - mean) * rstd;
            (*xh)[c] = v;
            v = v * prm[p.gamma_off + param_at(e) + j] + prm[p.beta_off + param_at(e) + j];
        }
        (*u)[c] = v;
    }
}

fn load_dy(row: u32, k: u32, g: ptr<function, array<f32, 8>>) {
    let U = unit_len();
    for (var c = 0u; c < U; c++) {
        (*g)[c] = dy[p.dy_off + row * N + k * U + c];
    }
}

// The activation of one unit, in place.
fn act_unit(u: ptr<function, array<f32, 8>>) {
    if (ACT == 1u) {
        (*u)[0] = mish((*u)[0]);
    }
    if (ACT == 2u) {
        var mx = (*u)[0];
        for (var c = 1u; c < 8u; c++) {
            mx = max(mx, (*u)[c]);
        }
        var z = 0.0;
        for (var c = 0u; c < 8u; c++) {
            (*u)[c] = exp((*u)[c] - mx);
            z += (*u)[c];
        }
        for (var c = 0u; c < 8u; c++) {
            (*u)[c] = (*u)[c] / z;
        }
    }
}

// g (dy of the unit) becomes du, the gradient at the pre-activations u; u is clobbered.
fn act_grad_unit(u: ptr<function, array<f32, 8>>, g: ptr<function, array<f32, 8>>) {
    if (ACT == 1u) {
        (*g)[0] = (*g)[0] * mish_grad((*u)[0]);
    }
    if (ACT == 2u) {
        act_unit(u);
        var dot = 0.0;
        for (var c = 0u; c < 8u; c++) {
            dot += (*u)[c] * (*g)[c];
        }
        for (var c = 0u; c < 8u; c++) {
            (*g)[c] = (*u)[c] * ((*g)[c] - dot);
        }
    }
}

fn store(i: u32, v: f32) {
    if (ADD) {
        dst[i] = dst[i] + v;
    } else {
        dst[i] = v;
    }
}

// (mean, rstd) of one row as linear.wgsl's epilogue computes them, stored when STATS. Every
// thread of the workgroup must call it (it has barriers); `valid` rows only are read.
fn ln_stats(tid: u32, lane: u32, row: u32, valid: bool) -> vec2<f32> {
    var s = 0.0;
    if (valid) {
        for (var j = lane; j < N; j += LANES) {
            s += x[p.x_off + row * N + j];
        }
    }
    let mean = row_sum(tid, lane, vec2<f32>(s, 0.0)).x / f32(N);
    var q = 0.0;
    if (valid) {
        for (var j = lane; j < N; j += LANES) {
            let d = x[p.x_off + row * N + j] - mean;
            q += d * d;
        }
    }
    let rstd = inverseSqrt(row_sum(tid, lane, vec2<f32>(q, 0.0)).x / f32(N) + 1e-5);
    if (STATS && valid && lane == 0u) {
        aux[p.stats_off + 2u * row] = mean;
        aux[p.stats_off + 2u * row + 1u] = rstd;
    }
    return vec2<f32>(mean, rstd);
}

@compute @workgroup_size(WG)
fn forward(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let lane = tid % LANES;
    let row = (wid.x + wid.y * nwg.x) * (WG / LANES) + tid / LANES;
    let valid = row < p.rows * p.members;
    let e = row / p.rows;
    let U = unit_len();
    var st = vec2<f32>(0.0, 1.0);
    if (LN) {
        st = ln_stats(tid, lane, row, valid);
    }
    if (!valid) {
        return;
    }
    var xh: array<f32, 8>;
    var u: array<f32, 8>;
    for (var k = lane; k < N / U; k += LANES) {
        load_unit(row, e, k, st.x, st.y, &xh, &u);
        act_unit(&u);
        for (var c = 0u; c < U; c++) {
            dst[p.out_off + row * N + k * U + c] = u[c];
        }
    }
}

@compute @workgroup_size(WG)
fn backward(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let lane = tid % LANES;
    let row = (wid.x + wid.y * nwg.x) * (WG / LANES) + tid / LANES;
    let valid = row < p.rows * p.members;
    let e = row / p.rows;
    let U = unit_len();
    // (mean, rstd): the forward's, or recomputed (and stored for ln_grads when STATS).
    var st = vec2<f32>(0.0, 1.0);
    if (LN) {
        if (RECOMPUTE) {
            st = ln_stats(tid, lane, row, valid);
        } else if (valid) {
            st = vec2<f32>(stats_in[p.stats_off + 2u * row], stats_in[p.stats_off + 2u * row + 1u]);
        }
    }
    var xh: array<f32, 8>;
    var u: array<f32, 8>;
    var g: array<f32, 8>;
    // The row means of gamma du and of gamma du xhat.
    var c = vec2<f32>(0.0);
    if (LN) {
        var acc = vec2<f32>(0.0);
        if (valid) {
            for (var k = lane; k < N / U; k += LANES) {
                load_unit(row, e, k, st.x, st.y, &xh, &u);
                load_dy(row, k, &g);
                act_grad_unit(&u, &g);
                for (var i = 0u; i < U; i++) {
                    let gj = g[i] * prm[p.gamma_off + param_at(e) + k * U + i];
                    acc += vec2<f32>(gj, gj * xh[i]);
                }
            }
        }
        c = row_sum(tid, lane, acc) / f32(N);
    }
    if (!valid) {
        return;
    }
    // Second pass: du again (cheaper than holding the row), then dh.
    for (var k = lane; k < N / U; k += LANES) {
        load_unit(row, e, k, st.x, st.y, &xh, &u);
        load_dy(row, k, &g);
        act_grad_unit(&u, &g);
        for (var i = 0u; i < U; i++) {
            let j = k * U + i;
            var d = g[i];
            if (LN) {
                d = st.y * (d * prm[p.gamma_off + param_at(e) + j] - c.x - xh[i] * c.y);
            }
            store(p.out_off + row * N + j, d);
        }
    }
}

// Merge the CL row lanes of each column of a column tile; lane 0 gets the total.
fn merge_lanes(lid: vec3<u32>, v: vec4<f32>) -> vec4<f32> {
    let t = lid.y * CT + lid.x;
    cred[t] = v;
    for (var h = CL / 2u; h > 0u; h >>= 1u) {
        workgroupBarrier();
        if (lid.y < h) {
            cred[t] = cred[t] + cred[t + h * CT];
        }
    }
    return cred[t];
}

@compute @workgroup_size(CT, CL, 1)
fn ln_grads(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let j = wid.x * CT + lid.x;
    let chunk = wid.y;
    let e = wid.z;
    let U = unit_len();
    var acc = vec4<f32>(0.0);
    if (j < N) {
        let k = j / U;
        let i = j % U;
        var xh: array<f32, 8>;
        var u: array<f32, 8>;
        var g: array<f32, 8>;
        let r_end = min(p.rows, (chunk + 1u) * p.chunk_rows);
        for (var r = chunk * p.chunk_rows + lid.y; r < r_end; r += CL) {
            let row = e * p.rows + r;
            let mean = stats_in[p.stats_off + 2u * row];
            let rstd = stats_in[p.stats_off + 2u * row + 1u];
            load_unit(row, e, k, mean, rstd, &xh, &u);
            load_dy(row, k, &g);
            act_grad_unit(&u, &g);
            var d = 0.0;
            if (BIAS) {
                d = aux[p.aux_off + row * N + j];
            }
            acc += vec4<f32>(g[i] * xh[i], g[i], d, 0.0);
        }
    }
    let total = merge_lanes(lid, acc);
    if (lid.y == 0u && j < N) {
        let at = out_at(e) + chunk * p.out_chunk + j;
        store(p.out_off + at, total.x);
        store(p.out_off2 + at, total.y);
        if (BIAS) {
            store(p.out_off3 + at, total.z);
        }
    }
}

@compute @workgroup_size(CT, CL, 1)
fn colsum(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let j = wid.x * CT + lid.x;
    let chunk = wid.y;
    let e = wid.z;
    var acc = 0.0;
    if (j < N) {
        let r_end = min(p.rows, (chunk + 1u) * p.chunk_rows);
        for (var r = chunk * p.chunk_rows + lid.y; r < r_end; r += CL) {
            let i = (e * p.rows + r) * N + j;
            var v = x[p.x_off + i];
            if (PRODUCT) {
                v *= dy[p.dy_off + i];
            }
            acc += v;
        }
    }
    let total = merge_lanes(lid, vec4<f32>(acc, 0.0, 0.0, 0.0));
    if (lid.y == 0u && j < N) {
        store(p.out_off + out_at(e) + chunk * p.out_chunk + j, total.x);
    }
}

// Partials [Q, members, chunks, N] from x_off, summed over chunks in order.
@compute @workgroup_size(WG)
fn finish(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + tid;
    let per_q = p.members * N;
    if (i >= Q * per_q) {
        return;
    }
    let q = i / per_q;
    let e = (i % per_q) / N;
    let j = i % N;
    let base = p.x_off + (q * p.members + e) * p.chunks * N + j;
    var s = 0.0;
    for (var c = 0u; c < p.chunks; c++) {
        s += x[base + c * N];
    }
    var off = array<u32, 3>(p.out_off, p.out_off2, p.out_off3);
    store(off[q] + out_at(e) + j, s);
}
