// Whole networks per workgroup on tensor cores: see common/fused_mlp.wgsl. RB = 16 rows (one
// fragment row) per workgroup, NSG subgroups; subgroup sg owns output fragments J * NSG + sg
// (FN of them, as many as the layer's padded width needs) and multiplies the rows' f16 inputs
// (workgroup memory, row-major) by the layer's weights, staged 16 K at a time in `bs`
// ([column][16], so a fragment is a contiguous column-major B): every thread fetches its
// 16-byte chunks of the next slice into registers while the subgroups multiply the current
// one. (Fragments loaded straight from `mats` ran a step about 1.35 us per 16 K on the H200,
// ten times this.) The f32 sums reach the epilogue through `rs` one fragment per subgroup at a
// time (PH = FN phases of CW = NSG * 16 columns). Inputs are rounded to f16 (ROUND_IN) as the
// layer-by-layer tensor-core path rounds them. CPU mirror: src/reference/fused_mlp.rs.

enable f16;
enable wgpu_cooperative_matrix;

#import common/act
#import common/bins
#import common/rng
#import common/fused_mlp

alias XS = f16;

// The weights as 16-byte chunks of 8 f16 (the same buffer as `mats`).
@group(0) @binding(9) var<storage, read> mats4: array<vec4<u32>>;

// Header: FN fragments per subgroup, BCH chunks per thread per slice (FN * NSG * 16 columns of
// two chunks over WG threads).
const BCOLS: u32 = FN * NSG * 16u;
var<workgroup> xs: array<f16, RB * XLD>;
var<workgroup> rs: array<f32, RB * RLD>;
var<workgroup> bs: array<f16, BCOLS * 16u>;

// Chunk c of the slice at k0: column c / 2 (clamped to the padded width), K k0 + 8 (c % 2).
fn b_chunk(w0: u32, kz: u32, npad: u32, c: u32, k0: u32) -> vec4<u32> {
    let n = min(c / 2u, npad - 1u);
    return mats4[(w0 + n * kz + k0 + (c % 2u) * 8u) / 8u];
}

fn put_b(c: u32, v: vec4<u32>) {
    let at = c * 8u;
    let a = vec2<f16>(unpack2x16float(v.x));
    let b = vec2<f16>(unpack2x16float(v.y));
    let d = vec2<f16>(unpack2x16float(v.z));
    let e = vec2<f16>(unpack2x16float(v.w));
    bs[at] = a.x;
    bs[at + 1u] = a.y;
    bs[at + 2u] = b.x;
    bs[at + 3u] = b.y;
    bs[at + 4u] = d.x;
    bs[at + 5u] = d.y;
    bs[at + 6u] = e.x;
    bs[at + 7u] = e.y;
}
// Values every invocation must agree on (loop bounds and branches around cooperative
// operations), passed through workgroupUniformLoad so the uniformity analysis sees them so.
var<workgroup> uni: vec4<u32>;

fn uniform_vec(v: vec4<u32>, tid: u32) -> vec4<u32> {
    if (tid == 0u) {
        uni = v;
    }
    return workgroupUniformLoad(&uni);
}

// Products of layer li, handed to this thread's epilogue values.
fn layer_products(li: u32, member: u32, tid: u32, sg: u32, vals: ptr<function, array<f32, VPT>>) {
    let npad = layer_field(li, LAYER_NPAD);
    let w0 = layer_field(li, LAYER_W) + member * layer_field(li, LAYER_W_STRIDE);
    // K and the fragments per subgroup this layer needs.
    let u = uniform_vec(vec4<u32>(layer_field(li, LAYER_KZ), (npad / 16u + NSG - 1u) / NSG, 0u, 0u), tid);
    let kz = u.x;
    let nf = u.y;
    // Function variables start at zero.
#for J in 0..FN
    var acc_{J}: coop_mat16x16<f32, C>;
    // Subgroups past the padded width repeat the last fragment; their sums are not read.
    let bc_{J} = min(({J}u * NSG + sg) * 16u, npad - 16u) * 16u;
#endfor
#for R in 0..BCH
    var rb_{R} = b_chunk(w0, kz, npad, tid + {R}u * WG, 0u);
#endfor
    for (var k = 0u; k < kz; k += 16u) {
        // The previous slice's products are done before its fragments are overwritten.
        workgroupBarrier();
#for R in 0..BCH
        put_b(tid + {R}u * WG, rb_{R});
#endfor
        workgroupBarrier();
        // The next slice's loads are in flight while this one is multiplied (the last slice
        // fetches itself again, unused).
        let kn = min(k + 16u, kz - 16u);
#for R in 0..BCH
        rb_{R} = b_chunk(w0, kz, npad, tid + {R}u * WG, kn);
#endfor
        let a = coopLoadT<coop_mat16x16<f16, A>>(&xs[k], XLD);
#for J in 0..FN
        if ({J}u < nf) {
            let b = coopLoad<coop_mat16x16<f16, B>>(&bs[bc_{J}], 16u);
            acc_{J} = coopMultiplyAdd(a, b, acc_{J});
        }
#endfor
    }
#for P in 0..PH
#for J in 0..FN
    if ({J}u / FPP == {P}u && {J}u < nf) {
        coopStoreT(acc_{J}, &rs[(({J}u % FPP) * NSG + sg) * 16u], RLD);
    }
#endfor
    workgroupBarrier();
    take_phase({P}u, tid, vals);
    workgroupBarrier();
#endfor
}

@compute @workgroup_size(WG)
fn run(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_id) sg: u32,
) {
    let g = wid.y;
    let row0 = wid.x * RB;
    let net = p.net[g].x;
    let nu = uniform_vec(vec4<u32>(desc[net * NET_WORDS], desc[net * NET_WORDS + 1u], 0u, 0u), tid);
    let first = nu.x;
    let count = nu.y;
    let member = member_of(g);
    stage_input(first, row0, tid);
    workgroupBarrier();
    for (var l = 0u; l < count; l++) {
        let li = first + l;
        var vals: array<f32, VPT>;
        layer_products(li, member, tid, sg, &vals);
        finish_layer(li, member, g, row0, tid, &vals, l + 1u == count);
        workgroupBarrier();
    }
}
