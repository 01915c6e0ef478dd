// Fused batched linear layer: Y[e, m, :] = act(LN(X[e, m, :] W[e]^T + b[e])).
//
// X is the concatenation [Z | A] of two buffers (the world model feeds [latent, action]):
// columns k < K1 come from `xz`, the rest from `xa`. `e` indexes ensemble members, which run
// in one dispatch along z; a member stride of 0 shares one input across the ensemble.
//
// `gemm` tiles BM x BN outputs per workgroup through workgroup memory, TM x TN per thread
// (4-row and 4-column blocks spread over the tile so that reads of the transposed tiles are
// vec4-wide and conflict-free), with the next K-slice prefetched into registers while the
// current one is multiplied. With RAW it writes X W^T only (one slice per SPLIT part of K)
// and `epilogue` finishes each row: sum of the split parts, bias, LayerNorm (two passes over
// the row held in workgroup memory), activation. Without RAW, bias and an elementwise
// activation are applied in registers and one dispatch does everything.
//
// Tile constants (BM, BN, BK, TM, TN, ROW_CAP) come from a header that the Rust side writes;
// sizes are override constants. CPU mirror: src/reference/linear.rs.
//
// Storage: the header's F16_X, F16_W, F16_Y pick f16 or f32 for Z, W and Y (the f16 path keeps
// weights and hidden activations in f16; all arithmetic stays f32). A, the bias, LayerNorm
// parameters and split-K partial sums are always f32. With PART the epilogue reads the GEMM's
// raw sums from `part` (f32) even without a split, so an f16 Y never holds pre-LayerNorm values.

#if F16
enable f16;
#endif
#import common/act
#import common/linear_io

override N: u32;
override K: u32;
override K1: u32;
override SPLIT: u32 = 1u;
// 0 identity, 1 Mish, 2 SimNorm over groups of 8 (epilogue only).
override ACT: u32 = 0u;
override LN: bool = false;
override RAW: bool = false;
// Slot e of the output uses weight set heads[e] instead of e (a chosen subset of an ensemble).
override HEAD_MAP: bool = false;
// The epilogue reads the raw sums from `part` also when SPLIT is 1.
override PART: bool = false;
// The GEMM's part of K (common/linear_io.wgsl's k_range).
override KPART: u32 = 0u;
// The epilogue adds row (row % pre_rows) of `pre` (the Z part of a layer with repeated Z),
// summed over its PRE_SPLIT K-parts.
override PRE: bool = false;
override PRE_SPLIT: u32 = 1u;

const WX: u32 = BN / TN;
const WY: u32 = BM / TM;
const WG: u32 = WX * WY;
const RM: u32 = TM / 4u;
const RN: u32 = TN / 4u;
// Transposed tiles, padded by one vec4 so that the scattered stores spread over banks.
const AS: u32 = BM + 4u;
const BS: u32 = BN + 4u;
const A_LOADS: u32 = BM * BK / WG;
const B_LOADS: u32 = BN * BK / WG;

var<workgroup> As: array<vec4<f32>, BK * AS / 4u>;
var<workgroup> Bs: array<vec4<f32>, BK * BS / 4u>;

fn load_x(blk: u32, row: u32, k: u32, k_end: u32) -> f32 {
    var v = 0.0;
    if (row < p.m && k < k_end) {
        v = x_at(blk, row, k);
    }
    return v;
}

fn load_w(we: u32, col: u32, k: u32, k_end: u32) -> f32 {
    var v = 0.0;
    if (col < N && k < k_end) {
        v = f32(w[(we * N + col) * K + k]);
    }
    return v;
}

// Thread `tid` loads, for r < A_LOADS / 4, rows 4 (i / BK) .. +3 at k = k0 + i % BK of the X
// tile, with i = tid + r * WG: consecutive threads read consecutive k (coalesced), and each
// thread's four values form one vec4 of the transposed tile. Likewise for W.
fn load_tiles(
    blk: u32,
    we: u32,
    row0: u32,
    col0: u32,
    k0: u32,
    k_end: u32,
    tid: u32,
    ra: ptr<function, array<vec4<f32>, A_LOADS / 4u>>,
    rb: ptr<function, array<vec4<f32>, B_LOADS / 4u>>,
) {
    for (var r = 0u; r < A_LOADS / 4u; r++) {
        let i = tid + r * WG;
        let row = row0 + (i / BK) * 4u;
        let k = k0 + i % BK;
        (*ra)[r] = vec4<f32>(
            load_x(blk, row, k, k_end),
            load_x(blk, row + 1u, k, k_end),
            load_x(blk, row + 2u, k, k_end),
            load_x(blk, row + 3u, k, k_end),
        );
    }
    for (var r = 0u; r < B_LOADS / 4u; r++) {
        let i = tid + r * WG;
        let col = col0 + (i / BK) * 4u;
        let k = k0 + i % BK;
        (*rb)[r] = vec4<f32>(
            load_w(we, col, k, k_end),
            load_w(we, col + 1u, k, k_end),
            load_w(we, col + 2u, k, k_end),
            load_w(we, col + 3u, k, k_end),
        );
    }
}

@compute @workgroup_size(WX, WY, 1)
fn gemm(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let e = wid.z / SPLIT;
    let we = weight_set(e);
    let blk = input_block(e);
    let s = wid.z % SPLIT;
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let chunk = ((K + SPLIT - 1u) / SPLIT + BK - 1u) / BK * BK;
    let kr = k_range(min(K, s * chunk), min(K, s * chunk + chunk));
    let k_begin = kr.x;
    let k_end = kr.y;

    var acc: array<vec4<f32>, TM * RN>;
    var ra: array<vec4<f32>, A_LOADS / 4u>;
    var rb: array<vec4<f32>, B_LOADS / 4u>;
    load_tiles(blk, we, row0, col0, k_begin, k_end, tid, &ra, &rb);

    for (var kt = k_begin; kt < k_end; kt += BK) {
        workgroupBarrier();
        // Each thread holds 4 rows of one k: whole vec4 stores, conflict-free.
        for (var r = 0u; r < A_LOADS / 4u; r++) {
            let i = tid + r * WG;
            As[(i % BK) * (AS / 4u) + i / BK] = ra[r];
        }
        for (var r = 0u; r < B_LOADS / 4u; r++) {
            let i = tid + r * WG;
            Bs[(i % BK) * (BS / 4u) + i / BK] = rb[r];
        }
        workgroupBarrier();
        let next = kt + BK;
        if (next < k_end) {
            load_tiles(blk, we, row0, col0, next, k_end, tid, &ra, &rb);
        }
        for (var kk = 0u; kk < BK; kk++) {
            var av: array<vec4<f32>, RM>;
            var bv: array<vec4<f32>, RN>;
            for (var i = 0u; i < RM; i++) {
                av[i] = As[(kk * AS + i * 4u * WY + lid.y * 4u) / 4u];
            }
            for (var j = 0u; j < RN; j++) {
                bv[j] = Bs[(kk * BS + j * 4u * WX + lid.x * 4u) / 4u];
            }
            for (var i = 0u; i < RM; i++) {
                for (var r = 0u; r < 4u; r++) {
                    let a = av[i][r];
                    for (var j = 0u; j < RN; j++) {
                        let o = (i * 4u + r) * RN + j;
                        acc[o] = fma(vec4<f32>(a), bv[j], acc[o]);
                    }
                }
            }
        }
    }

    for (var i = 0u; i < RM; i++) {
        for (var r = 0u; r < 4u; r++) {
            let row = row0 + i * 4u * WY + lid.y * 4u + r;
            if (row >= p.m) {
                continue;
            }
            for (var j = 0u; j < RN; j++) {
                let v4 = acc[(i * 4u + r) * RN + j];
                for (var c = 0u; c < 4u; c++) {
                    let col = col0 + j * 4u * WX + lid.x * 4u + c;
                    if (col < N) {
                        if (RAW) {
                            y[((e * SPLIT + s) * p.m + row) * N + col] = YT(v4[c]);
                        } else {
                            var v = v4[c] + bias[we * N + col];
                            if (ACT == 1u) {
                                v = mish(v);
                            }
                            y[(e * p.m + row) * N + col] = YT(v);
                        }
                    }
                }
            }
        }
    }
}

// EW (header): threads per row, a multiple of 8.
// Elements of a row per thread: j = tid + EW * i, kept in registers.
const PER: u32 = ROW_CAP / EW;
var<workgroup> row_buf: array<f32, ROW_CAP>;
var<workgroup> red: array<f32, EW>;
var<workgroup> red8: array<f32, EW / 8u>;

// Sum over the workgroup in two levels (partial sums of 8, then of those), two barriers in
// place of a tree's log2(EW) pairs. Called twice in a row: the
// second call's writes to `red` come after every thread has passed the first call's second
// barrier, so after all reads of `red`; likewise for `red8`, written only after a barrier.
fn workgroup_sum(tid: u32, v: f32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    if (tid < EW / 8u) {
        var s = 0.0;
        for (var i = 0u; i < 8u; i++) {
            s += red[tid * 8u + i];
        }
        red8[tid] = s;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < EW / 8u; i++) {
        total += red8[i];
    }
    return total;
}

// The raw value of element j of output row gr (over all members), before the bias: the GEMM's
// sum or split parts, plus the repeated-Z part.
fn raw_at(gr: u32, j: u32) -> f32 {
    let e = gr / p.m;
    let row = gr % p.m;
    var v = 0.0;
    if (SPLIT == 1u && !PART) {
        v = f32(y[gr * N + j]);
    } else {
        for (var s = 0u; s < SPLIT; s++) {
            v += part[((e * SPLIT + s) * p.m + row) * N + j];
        }
    }
    if (PRE) {
        for (var s = 0u; s < PRE_SPLIT; s++) {
            v += pre[(s * p.pre_rows + row % p.pre_rows) * N + j];
        }
    }
    return v;
}

// RPT consecutive output rows per workgroup (header), one after the other, each row's values
// fetched while the row before is reduced and written (H100, 131072 rows of 512: 182 us at one
// row of 64 threads, about 1.5 TB/s; 148 us at 8 rows of 32; BENCHMARKS.md). In place on y when
// the GEMM wrote its raw sums there (SPLIT 1 without PART).
@compute @workgroup_size(EW, 1, 1)
fn epilogue(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let rows = p.members * p.m;
    let first = (wid.x + wid.y * nwg.x) * RPT;
    // Uniform across the workgroup, as is every branch below that skips a barrier.
    if (first >= rows) {
        return;
    }
    var next: array<f32, PER>;
    for (var i = 0u; i < PER; i++) {
        let j = tid + i * EW;
        if (j < N) {
            next[i] = raw_at(first, j);
        }
    }
    for (var it = 0u; it < RPT; it++) {
        let gr = first + it;
        if (gr >= rows) {
            break;
        }
        var vals = next;
        if (it + 1u < RPT && gr + 1u < rows) {
            for (var i = 0u; i < PER; i++) {
                let j = tid + i * EW;
                if (j < N) {
                    next[i] = raw_at(gr + 1u, j);
                }
            }
        }
        let we = weight_set(gr / p.m);
        var sum = 0.0;
        for (var i = 0u; i < PER; i++) {
            let j = tid + i * EW;
            if (j < N) {
                vals[i] += bias[we * N + j];
                sum += vals[i];
            }
        }
        if (LN) {
            let mean = workgroup_sum(tid, sum) / f32(N);
            var sq = 0.0;
            for (var i = 0u; i < PER; i++) {
                if (tid + i * EW < N) {
                    let d = vals[i] - mean;
                    sq += d * d;
                }
            }
            let rstd = inverseSqrt(workgroup_sum(tid, sq) / f32(N) + 1e-5);
            for (var i = 0u; i < PER; i++) {
                let j = tid + i * EW;
                if (j < N) {
                    vals[i] = (vals[i] - mean) * rstd * gamma[we * N + j] + beta[we * N + j];
                }
            }
        }
        if (ACT == 2u) {
            // SimNorm: softmax over groups of 8 elements that other threads hold.
            for (var i = 0u; i < PER; i++) {
                let j = tid + i * EW;
                if (j < N) {
                    row_buf[j] = vals[i];
                }
            }
            workgroupBarrier();
            for (var g = tid; g < N / 8u; g += EW) {
                var mx = row_buf[g * 8u];
                for (var c = 1u; c < 8u; c++) {
                    mx = max(mx, row_buf[g * 8u + c]);
                }
                var ex: array<f32, 8>;
                var z = 0.0;
                for (var c = 0u; c < 8u; c++) {
                    ex[c] = exp(row_buf[g * 8u + c] - mx);
                    z += ex[c];
                }
                for (var c = 0u; c < 8u; c++) {
                    y[gr * N + g * 8u + c] = YT(ex[c] / z);
                }
            }
            // The next row refills row_buf.
            workgroupBarrier();
        } else {
            for (var i = 0u; i < PER; i++) {
                let j = tid + i * EW;
                if (j < N) {
                    var v = vals[i];
                    if (ACT == 1u) {
                        v = mish(v);
                    }
                    y[gr * N + j] = YT(v);
                }
            }
        }
    }
}
