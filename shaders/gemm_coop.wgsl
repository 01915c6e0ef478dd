// Strided batched GEMM on cooperative matrices (tensor cores), the f32-in, f32-out twin of
// gemm.wgsl: C[b] = alpha * op(A[b]) op(B[b]) (+ bias[b] per column) (+ C[b] when ACC), with
// the operands rounded to f16 for the products and the sums kept in f32. Same parameters,
// bindings and dispatch grid as gemm.wgsl (one BM x BN tile per workgroup, batches along z,
// a population's agents by their agent strides); the tile loop is common/coop_gemm.wgsl.
// Header constants ATR (A stored [k, m], op(A) = A^T) and BTR (B stored [k, n], op(B) = B;
// otherwise B is stored [n, k] and op(B) = B^T) choose how each slice is staged, so every
// layout is fetched with vector loads along its stored rows.
// Header constants SCA and SCB scale each row of op(A) (column of op(B)) by a power of two
// before the f16 rounding, chosen from the row's largest |value| over all of K so that it
// lands near 2^14, and divide the result by the same factors: exact, and it keeps operands
// far outside f16's range (gradients of 1e-7, observations of 1e6) at f16's 11 significant
// bits instead of flushing them to zero or infinity. A first pass over the tile's rows of A
// (columns of B) finds the maxima.
// Edges: loads outside the matrix give 0 and stores outside it are dropped, so any M, N, K
// works; only the tensor-core work of the partial tiles is wasted.
// CPU mirror: src/reference/gemm_coop.rs.

#import common/coop_gemm

override ACC: bool = false;
override BIAS: bool = false;

#import common/gemm_params

// Views of bindings 0 and 1 as vec4 for the 16-byte loads of 8-element chunks.
@group(0) @binding(5) var<storage, read> ga4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> gb4: array<vec4<f32>>;

fn a_base(bt: u32) -> u32 {
    return p.a_off + batch_off(bt, p.a_bs, p.a_as);
}

fn b_base(bt: u32) -> u32 {
    return p.b_off + batch_off(bt, p.b_bs, p.b_as);
}

// Eight f32 values of an operand, before their scaling and rounding to f16.
struct F8 {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// Eight consecutive elements from `at` of A (is_a) or B: two vector loads where all eight
// are valid (`valid` of them are) and `at` is 16-byte aligned, else element by element with
// zeros from `valid` on.
fn chunk8(is_a: bool, at: u32, valid: u32) -> F8 {
    if (valid >= 8u && (at & 3u) == 0u) {
        if (is_a) {
            return F8(ga4[at / 4u], ga4[at / 4u + 1u]);
        }
        return F8(gb4[at / 4u], gb4[at / 4u + 1u]);
    }
    var v: array<f32, 8>;
    for (var j = 0u; j < 8u; j++) {
        if (j < valid) {
            if (is_a) {
                v[j] = ga[at + j];
            } else {
                v[j] = gb[at + j];
            }
        }
    }
    return F8(vec4<f32>(v[0], v[1], v[2], v[3]), vec4<f32>(v[4], v[5], v[6], v[7]));
}

#if SCA
// Per tile row of op(A): first the bits of its largest |value| (atomicMax: non-negative f32
// values order as their bits, NaN above infinity), then the bits of its scale.
var<workgroup> sc_a: array<atomic<u32>, BM>;
#endif
#if SCB
var<workgroup> sc_b: array<atomic<u32>, BN>;
#endif

// The scale of tile row r of op(A) (column r of op(B)): 1 unless SCA (SCB).
fn scale_a(r: u32) -> f32 {
#if SCA
    return bitcast<f32>(atomicLoad(&sc_a[r]));
#else
    return 1.0;
#endif
}

fn scale_b(r: u32) -> f32 {
#if SCB
    return bitcast<f32>(atomicLoad(&sc_b[r]));
#else
    return 1.0;
#endif
}

// Scales of 8 consecutive tile rows (columns) from r, and of one row (column) 8 times.
fn scales8_a(r: u32, rows: bool) -> F8 {
    if (!rows) {
        let s = scale_a(r);
        return F8(vec4<f32>(s), vec4<f32>(s));
    }
    return F8(vec4<f32>(scale_a(r), scale_a(r + 1u), scale_a(r + 2u), scale_a(r + 3u)),
        vec4<f32>(scale_a(r + 4u), scale_a(r + 5u), scale_a(r + 6u), scale_a(r + 7u)));
}

fn scales8_b(r: u32, cols: bool) -> F8 {
    if (!cols) {
        let s = scale_b(r);
        return F8(vec4<f32>(s), vec4<f32>(s));
    }
    return F8(vec4<f32>(scale_b(r), scale_b(r + 1u), scale_b(r + 2u), scale_b(r + 3u)),
        vec4<f32>(scale_b(r + 4u), scale_b(r + 5u), scale_b(r + 6u), scale_b(r + 7u)));
}

fn to_h8(v: F8, s: F8) -> H8 {
    return H8(vec4<f16>(v.lo * s.lo), vec4<f16>(v.hi * s.hi));
}

// The power of two that brings a largest |value| with bits `mx` to [2^14, 2^15): exponent
// clamped to +-60 (so that a row's and a column's together stay finite in f32), 1 for a
// zero, infinite or NaN maximum (those stay as they are).
fn scale_for(mx: u32) -> f32 {
    if (mx == 0u || mx >= 0x7f800000u) {
        return 1.0;
    }
    let e = i32(mx >> 23u) - 127;
    let s = clamp(14 - e, -60, 60);
    return bitcast<f32>(u32(s + 127) << 23u);
}

// Largest |value| of the tile's `lines` lines (rows of op(A) from line0, or columns of op(B))
// over all of K, into sc_a (is_a) or sc_b. `contiguous`: each line is a stored row (K
// along it, line l at base + l * ld); else a stored row holds 8-line chunks at one k (line l
// of row k at base + k * ld + l). Each thread keeps its maxima in registers and sends them
// with one atomic per line.
fn line_max(is_a: bool, base: u32, ld: u32, line0: u32, lines: u32, valid: u32, contiguous: bool, tid: u32) {
    if (contiguous) {
        // Threads per line (lines <= WG) or lines per thread.
        let per = max(WG / lines, 1u);
        for (var l = tid / per; l < lines; l += max(WG / per, 1u)) {
            var mx = 0u;
            if (line0 + l < valid) {
                for (var k = (tid % per) * 8u; k < p.k; k += per * 8u) {
                    let v = chunk8(is_a, base + (line0 + l) * ld + k, min(p.k - k, 8u));
                    let m4 = max(bitcast<vec4<u32>>(abs(v.lo)), bitcast<vec4<u32>>(abs(v.hi)));
                    mx = max(mx, max(max(m4.x, m4.y), max(m4.z, m4.w)));
                }
            }
            line_put(is_a, l, mx);
        }
        return;
    }
    let groups = lines / 8u;
    let per = max(WG / groups, 1u);
    for (var g = tid / per; g < groups; g += max(WG / per, 1u)) {
        var lo = vec4<u32>();
        var hi = vec4<u32>();
        let first = line0 + g * 8u;
        if (first < valid) {
            for (var k = tid % per; k < p.k; k += per) {
                let v = chunk8(is_a, base + k * ld + first, min(valid - first, 8u));
                lo = max(lo, bitcast<vec4<u32>>(abs(v.lo)));
                hi = max(hi, bitcast<vec4<u32>>(abs(v.hi)));
            }
        }
        line_put(is_a, g * 8u, lo.x);
        line_put(is_a, g * 8u + 1u, lo.y);
        line_put(is_a, g * 8u + 2u, lo.z);
        line_put(is_a, g * 8u + 3u, lo.w);
        line_put(is_a, g * 8u + 4u, hi.x);
        line_put(is_a, g * 8u + 5u, hi.y);
        line_put(is_a, g * 8u + 6u, hi.z);
        line_put(is_a, g * 8u + 7u, hi.w);
    }
}

fn line_put(is_a: bool, l: u32, mx: u32) {
    if (is_a) {
#if SCA
        atomicMax(&sc_a[l], mx);
#endif
    } else {
#if SCB
        atomicMax(&sc_b[l], mx);
#endif
    }
}

// The tile's scales (SCA, SCB): zero the maxima, find them, turn them into scales. Called by
// every invocation, before the tile loop.
fn tile_scales(bt: u32, row0: u32, col0: u32, tid: u32) {
#if SCA
    for (var r = tid; r < BM; r += WG) {
        atomicStore(&sc_a[r], 0u);
    }
#endif
#if SCB
    for (var r = tid; r < BN; r += WG) {
        atomicStore(&sc_b[r], 0u);
    }
#endif
    workgroupBarrier();
#if SCA
    line_max(true, a_base(bt), p.lda, row0, BM, p.m, ATR == 0u, tid);
#endif
#if SCB
    line_max(false, b_base(bt), p.ldb, col0, BN, p.n, BTR == 0u, tid);
#endif
    workgroupBarrier();
#if SCA
    for (var r = tid; r < BM; r += WG) {
        atomicStore(&sc_a[r], bitcast<u32>(scale_for(atomicLoad(&sc_a[r]))));
    }
#endif
#if SCB
    for (var r = tid; r < BN; r += WG) {
        atomicStore(&sc_b[r], bitcast<u32>(scale_for(atomicLoad(&sc_b[r]))));
    }
#endif
    workgroupBarrier();
}

// Whole slices up to here may use the unchecked fetches: every row start 16-byte aligned and,
// for an operand staged row-contiguous, its stored rows a multiple of 8 long (rows and
// columns past the matrix are clamped, their results dropped).
fn coop_fast_end(bt: u32, k_begin: u32, k_end: u32) -> u32 {
    var ok = ((a_base(bt) | p.lda | b_base(bt) | p.ldb) & 3u) == 0u;
    if (ATR != 0u) {
        ok = ok && (p.m & 7u) == 0u;
    }
    if (BTR != 0u) {
        ok = ok && (p.n & 7u) == 0u;
    }
    if (!ok) {
        return k_begin;
    }
    return k_begin + (k_end - k_begin) / BK * BK;
}

fn coop_a8_fast(bt: u32, i: u32, kk: u32) -> H8 {
    var at: u32;
    if (ATR != 0u) {
        at = a_base(bt) + kk * p.lda + min(i, p.m - 8u);
    } else {
        at = a_base(bt) + min(i, p.m - 1u) * p.lda + kk;
    }
    let v = F8(ga4[at / 4u], ga4[at / 4u + 1u]);
    return to_h8(v, scales8_a(i % BM, ATR != 0u));
}

fn coop_b8_fast(bt: u32, j: u32, kk: u32) -> H8 {
    var at: u32;
    if (BTR != 0u) {
        at = b_base(bt) + kk * p.ldb + min(j, p.n - 8u);
    } else {
        at = b_base(bt) + min(j, p.n - 1u) * p.ldb + kk;
    }
    let v = F8(gb4[at / 4u], gb4[at / 4u + 1u]);
    return to_h8(v, scales8_b(j % BN, BTR != 0u));
}

// K-contiguous: elements kk..kk+8 of row i. ATR: rows i..i+8 of op(A) at kk (A stored
// [k, m]).
fn coop_a8(bt: u32, i: u32, kk: u32, k_end: u32) -> H8 {
    if (i >= p.m) {
        return H8();
    }
    if (ATR != 0u) {
        if (kk >= k_end) {
            return H8();
        }
        return to_h8(chunk8(true, a_base(bt) + kk * p.lda + i, min(p.m - i, 8u)), scales8_a(i % BM, true));
    }
    return to_h8(chunk8(true, a_base(bt) + i * p.lda + kk, min(k_end - min(kk, k_end), 8u)), scales8_a(i % BM, false));
}

// K-contiguous (B stored [n, k]): elements kk..kk+8 of column j of op(B). BTR: columns
// j..j+8 at kk (B stored [k, n]).
fn coop_b8(bt: u32, j: u32, kk: u32, k_end: u32) -> H8 {
    if (j >= p.n) {
        return H8();
    }
    if (BTR != 0u) {
        if (kk >= k_end) {
            return H8();
        }
        return to_h8(chunk8(false, b_base(bt) + kk * p.ldb + j, min(p.n - j, 8u)), scales8_b(j % BN, true));
    }
    return to_h8(chunk8(false, b_base(bt) + j * p.ldb + kk, min(k_end - min(kk, k_end), 8u)), scales8_b(j % BN, false));
}

fn coop_out(bt: u32, row: u32, col: u32, acc: f32) {
    if (row >= p.m || col >= p.n) {
        return;
    }
    var v = p.alpha * acc;
#if SCA
    v /= scale_a(row % BM);
#endif
#if SCB
    v /= scale_b(col % BN);
#endif
    if (BIAS) {
        v += gbias[p.bias_off + batch_off(bt, p.bias_bs, p.bias_as) + col];
    }
    let at = p.c_off + batch_off(bt, p.c_bs, p.c_as) + row * p.ldc + col;
    if (ACC) {
        v += gc[at];
    }
    gc[at] = v;
}

@compute @workgroup_size(WG)
fn gemm(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
#if SCA
    tile_scales(wid.z, wid.y * BM, wid.x * BN, tid);
#else
#if SCB
    tile_scales(wid.z, wid.y * BM, wid.x * BN, tid);
#endif
#endif
    coop_tile(wid.z, wid.y * BM, wid.x * BN, 0u, p.k, tid, sg, lane);
}
