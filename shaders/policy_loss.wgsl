// Row kernels of the PO-MPC policy update (TD-MPC2, BMPC, TD-M(PC)² as special cases), each
// with its exact analytic gradient with respect to the network's raw output h per row.
//
// Policy head per row: h = [m (A) | s (A)] raw; log_std = lo + (hi - lo)(tanh s + 1) / 2;
// sig = exp(log_std); x = mu + sig * eps with
//   PARAM 0 (squashed, TD-MPC2):        mu = m,       a = tanh(x);
//   PARAM 1 (tanh mean + clamp, BMPC):  mu = tanh(m), a = clamp(x, -1, 1) (no gradient where
//                                        it clamps).
// Gaussian log-prob lp = sum_i (-eps_i^2 / 2 - log_std_i) - A log(2 pi) / 2; squashed
// log-prob L = lp - sum_i log(relu(1 - a_i^2) + 1e-6) (no correction for PARAM 1).
//
// `sample`: the action a, one thread per element.
//
// `policy_loss`, per row r with weight w_r = scale * rho^(r / rows_per_step):
//   loss_r = -c_q q_r / s_q - alpha H + c_kl D_r / s_kl - gate c_ll ell_r / s_q
//   * H: ENTROPY 0: TD-MPC2's scaled entropy -L A lp / (L + 1e-8) (BMPC's for PARAM 1, where
//     L = lp), the gradient through all of it; ENTROPY 1: the original -(A (sum_i (-eps_i^2 / 2
//     - log_std_i) - log(2 pi) / 2) - squash correction) (TD-MPC2 Oct 2023, TD-M(PC)²).
//   * q_r and dq_r = dq/da are inputs (the frozen Q heads' average and its action gradient).
//   * D_r = kl_dim * sum_i d_i (kl_dim = 1/A for a mean, 1 for a sum), KL: 1 reverse closed
//     form KL(N(mu, sig) || prior), 2 forward KL(prior || N(mu, sig)), 3 the single-sample
//     estimate log pi(a) - log pi_p(a) of the squashed densities (their squash corrections
//     are the same expression of a and cancel): d_i = -eps_i^2 / 2 - log_std_i +
//     ((u_i - mu_p) / sig_p)^2 / 2 + log sig_p with u = clamp(x, -u_max, u_max) = atanh(a)
//     clamped. The prior rows hold (mean, std) (std floored at prior_floor), or with PRIOR_NET
//     a prior network's raw output mapped as the policy's (prior_lo, prior_hi log-std range).
//   * ell_r = A (sum_i (-((a_i - mu_b) / sig_b')^2 / 2 - log sig_b') - log(2 pi) / 2) with
//     sig_b' = max(sig_b, ll_floor) from the planner rows (mean, std); gate = s_q > threshold.
//   The gradient dh_r = w_r d loss_r / d h_r (eps fixed) is written or added; the five weighted
//   sums (Q, entropy, KL, LL, total) go to partials; D_r (before / s_kl) optionally to a row
//   buffer. DIV_ONLY writes only D_r (to update s_kl before the loss pass uses it).
//
// `prior_fit`: the adaptive prior's closed-form KL (KL 1: KL(pi_psi || b), 2: KL(b || pi_psi))
// between the prior network's Gaussian (its raw output in `h`, mapped as above) and the
// planner's (mean, std) rows (std floored at prior_floor): loss sum_r w_r D_r / s_d, gradient
// w.r.t. the raw output, D_r optional.
//
// Rewritten for f32 without cancellation, equal in exact arithmetic: tanh and 1 - tanh^2 as in
// policy.wgsl; (tanh s + 1) / 2 = 1 / (1 + e^(-2s)); the closed-form KL per dimension
// log(sig_f / sig) + (sig^2 + (mu - mu_f)^2) / (2 sig_f^2) - 1/2 = x + expm1(-2x) / 2 + r^2 / 2
// with x = log sig_f - log sig, r = (mu - mu_f) / sig_f (likewise forward).
//
// LANES threads share a row (WG / LANES rows per workgroup) as in policy.wgsl; the row sums
// are reduced in a tree in workgroup memory, then every lane reads them for the gradient
// pass. Each workgroup sums its rows' weighted terms in a fixed order into
// part[part_off + k * count + group]; with one workgroup that is the losses buffer itself,
// otherwise `reduce` sums the partials of each term into its slot: deterministic, no atomics.
//
// Populations: workgroup row z is the agent. Every operand holds the agents' rows back to back
// (agent g's row r is row g * rows + r); row weights use r, the running scales are read at
// their index + g, the partials and slots of agent g start part_stride (reduce: slot_stride)
// after agent 0's, and the policy loss may read each agent's (c_q, alpha, c_kl, c_ll).
// CPU mirror: src/reference/policy_loss.rs.

#import common/act

override A: u32;
// Threads per row: a power of two, at most WG.
override LANES: u32 = 16u;
override PARAM: u32 = 0u;
override ENTROPY: u32 = 0u;
// 0: no KL term.
override KL: u32 = 0u;
override PRIOR_NET: bool = false;
override Q_TERM: bool = true;
override LL_TERM: bool = false;
override DIV_ONLY: bool = false;
override GRAD: bool = true;
override GRAD_ADD: bool = false;
override WRITE_D: bool = false;
override LOSS_ADD: bool = false;

const WG: u32 = 64u;
const RW: u32 = 256u;

struct Params {
    rows: u32,
    rows_per_step: u32,
    // Workgroups of the first pass, or partials per term that `reduce` sums.
    count: u32,
    part_off: u32,
    h_off: u32,
    h_stride: u32,
    eps_off: u32,
    eps_stride: u32,
    q_off: u32,
    q_stride: u32,
    dq_off: u32,
    dq_stride: u32,
    prior_off: u32,
    prior_stride: u32,
    plan_off: u32,
    plan_stride: u32,
    out_off: u32,
    out_stride: u32,
    d_off: u32,
    d_stride: u32,
    sq_index: u32,
    skl_index: u32,
    has_sq: u32,
    has_skl: u32,
    // Terms that `reduce` sums.
    terms: u32,
    // Population: elements between one agent's partials (or slots) and the next's where the
    // row kernels write them; `reduce` writes agent g's sums `slot_stride` apart.
    part_stride: u32,
    slot_stride: u32,
    // Per-agent (c_q, alpha, c_kl, c_ll) in `coef` instead of the uniforms.
    has_coef: u32,
    scale: f32,
    rho: f32,
    c_q: f32,
    alpha: f32,
    c_kl: f32,
    kl_dim: f32,
    c_ll: f32,
    ll_threshold: f32,
    lo: f32,
    hi: f32,
    prior_lo: f32,
    prior_hi: f32,
    prior_floor: f32,
    prior_log_floor: f32,
    ll_floor: f32,
    u_max: f32,
}

// h: the policy (or, in `prior_fit`, the prior network) raw output; in `reduce`, the partials.
@group(0) @binding(0) var<storage, read> h: array<f32>;
@group(0) @binding(1) var<storage, read> eps: array<f32>;
@group(0) @binding(2) var<storage, read> qv: array<f32>;
@group(0) @binding(3) var<storage, read> dq: array<f32>;
@group(0) @binding(4) var<storage, read> prior: array<f32>;
@group(0) @binding(5) var<storage, read> plan: array<f32>;
@group(0) @binding(6) var<storage, read> s_q: array<f32>;
// s_kl, or s_d in `prior_fit`.
@group(0) @binding(7) var<storage, read> s_kl: array<f32>;
// The gradient, or the actions in `sample`.
@group(0) @binding(8) var<storage, read_write> out: array<f32>;
@group(0) @binding(9) var<storage, read_write> drows: array<f32>;
@group(0) @binding(10) var<storage, read_write> part: array<f32>;
@group(0) @binding(11) var<uniform> p: Params;
// Per-agent coefficients, 4 a row (`policy_loss` with has_coef).
@group(0) @binding(12) var<storage, read> coef: array<f32>;

var<workgroup> red4: array<vec4<f32>, WG>;
var<workgroup> red_terms: array<vec4<f32>, WG>;
var<workgroup> red_total: array<f32, WG>;
var<workgroup> red_r: array<f32, RW>;

// w_r = scale * rho^(r / rows_per_step), rho^t by repeated squaring (loss.wgsl's).
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

fn store_out(i: u32, v: f32) {
    if (GRAD_ADD) {
        out[i] = out[i] + v;
    } else {
        out[i] = v;
    }
}

fn store_part(i: u32, v: f32) {
    if (LOSS_ADD) {
        part[i] = part[i] + v;
    } else {
        part[i] = v;
    }
}

// A Gaussian head from raw (m, s): mean, d mean / d m, log-std, d log-std / d s.
struct Head {
    mu: f32,
    dmu: f32,
    ls: f32,
    dls: f32,
}

fn head(m: f32, s: f32, lo: f32, hi: f32) -> Head {
    var mu = m;
    var dmu = 1.0;
    if (PARAM == 1u) {
        let t = tanh_sech2(m);
        mu = t.x;
        dmu = t.y;
    }
    // (tanh s + 1) / 2 = 1 / (1 + e^(-2s)): no cancellation for s << 0 (0 once e^(-2s) = inf).
    let ls = lo + (hi - lo) / (1.0 + exp(-2.0 * s));
    return Head(mu, dmu, ls, 0.5 * (hi - lo) * tanh_sech2(s).y);
}

struct Gauss {
    mu: f32,
    ls: f32,
    sig: f32,
}

// The prior of row `row`, dimension i: (mean, std) rows, or a prior network's raw output.
fn prior_gauss(row: u32, i: u32) -> Gauss {
    let b = p.prior_off + row * p.prior_stride;
    if (PRIOR_NET) {
        let hd = head(prior[b + i], prior[b + A + i], p.prior_lo, p.prior_hi);
        let ls = max(hd.ls, p.prior_log_floor);
        return Gauss(hd.mu, ls, exp(ls));
    }
    let sig = max(prior[b + A + i], p.prior_floor);
    return Gauss(prior[b + i], log(sig), sig);
}

// The planner's (mean, std) of row `row`, dimension i, std floored at `floor`.
fn plan_gauss(row: u32, i: u32, floor: f32) -> Gauss {
    let b = p.plan_off + row * p.plan_stride;
    let sig = max(plan[b + A + i], floor);
    return Gauss(plan[b + i], log(sig), sig);
}

// Closed-form KL of one dimension with the learned Gaussian (mu, ls) first (reverse) or
// second (forward): (d, d d / d mu, d d / d ls).
fn kl_closed(mu: f32, ls: f32, f: Gauss, forward: bool) -> vec3<f32> {
    if (forward) {
        let y = ls - f.ls;
        let sig = exp(ls);
        let r = (mu - f.mu) / sig;
        let e = expm1(-2.0 * y);
        return vec3<f32>(y + 0.5 * e + 0.5 * r * r, r / sig, -e - r * r);
    }
    let x = f.ls - ls;
    let r = (mu - f.mu) / f.sig;
    let e = expm1(-2.0 * x);
    return vec3<f32>(x + 0.5 * e + 0.5 * r * r, r / f.sig, e);
}

// One action dimension of the policy.
struct Elem {
    hd: Head,
    sig: f32,
    e: f32,
    // x = mu + sig * eps, the action a, and da / dx.
    x: f32,
    a: f32,
    fp: f32,
    // -eps^2 / 2 - log_std.
    s: f32,
    // The squash correction log(relu(1 - a^2) + 1e-6) and k = d(-sq) / dx (0 for PARAM 1).
    sq: f32,
    k: f32,
}

fn elem(row: u32, i: u32) -> Elem {
    let hb = p.h_off + row * p.h_stride;
    let hd = head(h[hb + i], h[hb + A + i], p.lo, p.hi);
    let e = eps[p.eps_off + row * p.eps_stride + i];
    let sig = exp(hd.ls);
    let x = fma(sig, e, hd.mu);
    var el = Elem(hd, sig, e, x, 0.0, 0.0, -0.5 * e * e - hd.ls, 0.0, 0.0);
    if (PARAM == 0u) {
        let t = tanh_sech2(x);
        let c = max(t.y, 0.0);
        el.a = t.x;
        el.fp = t.y;
        el.sq = log(c + 1e-6);
        el.k = 2.0 * t.x * c / (c + 1e-6);
    } else {
        el.a = clamp(x, -1.0, 1.0);
        el.fp = select(0.0, 1.0, abs(x) <= 1.0);
    }
    return el;
}

// The policy KL of one dimension: (d, coefficient, d d / d log_std with x fixed). The
// coefficient multiplies d mu (closed forms) or d x (single sample).
fn kl_policy(row: u32, i: u32, el: Elem) -> vec3<f32> {
    let f = prior_gauss(row, i);
    if (KL == 3u) {
        let inside = abs(el.x) <= p.u_max;
        let z = (clamp(el.x, -p.u_max, p.u_max) - f.mu) / f.sig;
        return vec3<f32>(el.s + 0.5 * z * z + f.ls, select(0.0, z / f.sig, inside), -1.0);
    }
    return kl_closed(el.hd.mu, el.hd.ls, f, KL == 2u);
}

// The planner log-likelihood of one dimension: (-z^2 / 2 - log sig', (a - mu_b) / sig'^2).
fn ll_dim(row: u32, i: u32, a: f32) -> vec2<f32> {
    let g = plan_gauss(row, i, p.ll_floor);
    let z = (a - g.mu) / g.sig;
    return vec2<f32>(-0.5 * z * z - g.ls, z / g.sig);
}

fn scale_q(agent: u32) -> f32 {
    if (p.has_sq != 0u) {
        return s_q[p.sq_index + agent];
    }
    return 1.0;
}

fn scale_kl(agent: u32) -> f32 {
    if (p.has_skl != 0u) {
        return s_kl[p.skl_index + agent];
    }
    return 1.0;
}

// (c_q, alpha, c_kl, c_ll) of an agent.
fn coefs(agent: u32) -> vec4<f32> {
    if (p.has_coef != 0u) {
        let b = 4u * agent;
        return vec4<f32>(coef[b], coef[b + 1u], coef[b + 2u], coef[b + 3u]);
    }
    return vec4<f32>(p.c_q, p.alpha, p.c_kl, p.c_ll);
}

@compute @workgroup_size(WG)
fn sample(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let idx = (wid.x + wid.y * nwg.x) * WG + tid;
    if (idx >= p.rows * A) {
        return;
    }
    let row = idx / A;
    let i = idx % A;
    out[p.out_off + row * p.out_stride + i] = elem(row, i).a;
}

@compute @workgroup_size(WG)
fn policy_loss(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let group = wid.x + wid.y * nwg.x;
    let agent = wid.z;
    let lane = tid % LANES;
    let slot = tid / LANES;
    // The agent's row (for its weight) and the operands' row.
    let local = group * (WG / LANES) + slot;
    let row = agent * p.rows + local;
    let valid = group < p.count && local < p.rows;
    let cf = coefs(agent);

    // Row sums: (sum s_i, sum sq_i, sum d_i, sum ll_i).
    var acc = vec4<f32>(0.0);
    if (valid) {
        for (var i = lane; i < A; i += LANES) {
            let el = elem(row, i);
            acc.x += el.s;
            acc.y += el.sq;
            if (KL != 0u) {
                acc.z += kl_policy(row, i, el).x;
            }
            if (LL_TERM && !DIV_ONLY) {
                acc.w += ll_dim(row, i, el.a).x;
            }
        }
    }
    red4[tid] = acc;
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (lane < s) {
            acc += red4[tid + s];
            red4[tid] = acc;
        }
    }
    workgroupBarrier();
    let tot = red4[tid - lane];
    let d_row = p.kl_dim * tot.z;
    if (valid && lane == 0u && (WRITE_D || DIV_ONLY)) {
        drows[p.d_off + row * p.d_stride] = d_row;
    }
    if (DIV_ONLY) {
        return;
    }

    let af = f32(A);
    let sqv = scale_q(agent);
    let w = row_weight(local);
    let lp = tot.x - af * HALF_LOG_2PI;
    let big_l = lp - tot.y;
    // H and its derivatives: d H / d x_i = hx k_i, d H / d log_std_i (x fixed) = hls.
    var ent: f32;
    var hx: f32;
    var hls: f32;
    if (ENTROPY == 0u) {
        let den = big_l + 1e-8;
        ent = -big_l * (af * lp / den);
        let phi_l = -af * lp * 1e-8 / (den * den);
        let phi_lp = -af * big_l / den;
        hx = phi_l;
        hls = -(phi_l + phi_lp);
    } else {
        ent = -(af * (tot.x - HALF_LOG_2PI) - tot.y);
        hx = -1.0;
        hls = af;
    }
    var t_q = 0.0;
    if (Q_TERM && valid) {
        t_q = -cf.x * qv[p.q_off + row * p.q_stride] / sqv;
    }
    let kc = cf.z * p.kl_dim / scale_kl(agent);
    // The LL term's coefficient on ell: on once s_q passes the threshold.
    var cll = 0.0;
    if (LL_TERM && sqv > p.ll_threshold) {
        cll = cf.w / sqv;
    }
    let t_h = -cf.y * ent;
    var t_k = 0.0;
    if (KL != 0u) {
        t_k = cf.z * d_row / scale_kl(agent);
    }
    let t_l = -cll * af * (tot.w - HALF_LOG_2PI);

    if (GRAD && valid) {
        for (var i = lane; i < A; i += LANES) {
            let el = elem(row, i);
            // d loss / d a, then d / d x, d / d mu and d / d log_std (x fixed).
            var ga = 0.0;
            if (Q_TERM) {
                ga -= cf.x * dq[p.dq_off + row * p.dq_stride + i] / sqv;
            }
            if (LL_TERM) {
                ga += cll * af * ll_dim(row, i, el.a).y;
            }
            var gx = ga * el.fp - cf.y * hx * el.k;
            var gmu = 0.0;
            var gls = -cf.y * hls;
            if (KL != 0u) {
                let kd = kl_policy(row, i, el);
                if (KL == 3u) {
                    gx += kc * kd.y;
                } else {
                    gmu += kc * kd.y;
                }
                gls += kc * kd.z;
            }
            let ob = p.out_off + row * p.out_stride;
            store_out(ob + i, w * (gx + gmu) * el.hd.dmu);
            store_out(ob + A + i, w * fma(gx, el.sig * el.e, gls) * el.hd.dls);
        }
    }

    if (lane == 0u) {
        var t = vec4<f32>(0.0);
        if (valid) {
            t = w * vec4<f32>(t_q, t_h, t_k, t_l);
        }
        red_terms[slot] = t;
        red_total[slot] = t.x + t.y + t.z + t.w;
    }
    workgroupBarrier();
    if (tid == 0u && group < p.count) {
        var sum = vec4<f32>(0.0);
        var total = 0.0;
        for (var j = 0u; j < WG / LANES; j++) {
            sum += red_terms[j];
            total += red_total[j];
        }
        let base = p.part_off + agent * p.part_stride;
        store_part(base + group, sum.x);
        store_part(base + p.count + group, sum.y);
        store_part(base + 2u * p.count + group, sum.z);
        store_part(base + 3u * p.count + group, sum.w);
        store_part(base + 4u * p.count + group, total);
    }
}

@compute @workgroup_size(WG)
fn prior_fit(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let group = wid.x + wid.y * nwg.x;
    let agent = wid.z;
    let lane = tid % LANES;
    let slot = tid / LANES;
    let local = group * (WG / LANES) + slot;
    let row = agent * p.rows + local;
    let valid = group < p.count && local < p.rows;
    let hb = p.h_off + row * p.h_stride;

    var acc = 0.0;
    if (valid) {
        for (var i = lane; i < A; i += LANES) {
            let hd = head(h[hb + i], h[hb + A + i], p.lo, p.hi);
            acc += kl_closed(hd.mu, hd.ls, plan_gauss(row, i, p.prior_floor), KL == 2u).x;
        }
    }
    red4[tid] = vec4<f32>(acc, 0.0, 0.0, 0.0);
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (lane < s) {
            acc += red4[tid + s].x;
            red4[tid].x = acc;
        }
    }
    workgroupBarrier();
    let d_row = p.kl_dim * red4[tid - lane].x;
    if (valid && lane == 0u && (WRITE_D || DIV_ONLY)) {
        drows[p.d_off + row * p.d_stride] = d_row;
    }
    if (DIV_ONLY) {
        return;
    }
    let sd = scale_kl(agent);
    let w = row_weight(local);
    if (GRAD && valid) {
        let kc = w * p.kl_dim / sd;
        let ob = p.out_off + row * p.out_stride;
        for (var i = lane; i < A; i += LANES) {
            let hd = head(h[hb + i], h[hb + A + i], p.lo, p.hi);
            let kd = kl_closed(hd.mu, hd.ls, plan_gauss(row, i, p.prior_floor), KL == 2u);
            store_out(ob + i, kc * kd.y * hd.dmu);
            store_out(ob + A + i, kc * kd.z * hd.dls);
        }
    }
    if (lane == 0u) {
        var t = 0.0;
        if (valid) {
            t = w * d_row / sd;
        }
        red_total[slot] = t;
    }
    workgroupBarrier();
    if (tid == 0u && group < p.count) {
        var total = 0.0;
        for (var j = 0u; j < WG / LANES; j++) {
            total += red_total[j];
        }
        store_part(p.part_off + agent * p.part_stride + group, total);
    }
}

// Sum of v over the RW threads; thread 0 gets the total (loss.wgsl's).
fn block_sum(tid: u32, v: f32) -> f32 {
    red_r[tid] = v;
    for (var s = RW / 2u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (tid < s) {
            red_r[tid] = red_r[tid] + red_r[tid + s];
        }
    }
    return red_r[tid];
}

// For each of `terms` terms k: the `count` partials at h[h_off + k * count ..] summed into
// part[part_off + k]; workgroup z is the agent (partials part_stride apart, sums slot_stride).
@compute @workgroup_size(RW)
fn reduce(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let src = p.h_off + wid.z * p.part_stride;
    let dst = p.part_off + wid.z * p.slot_stride;
    for (var k = 0u; k < p.terms; k++) {
        var s = 0.0;
        for (var i = tid; i < p.count; i += RW) {
            s += h[src + k * p.count + i];
        }
        let total = block_sum(tid, s);
        if (tid == 0u) {
            store_part(dst + k, total);
        }
        // The next term's block_sum overwrites red_r.
        workgroupBarrier();
    }
}
