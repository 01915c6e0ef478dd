// Whole networks per workgroup on tensor cores: see common/fused_mlp.wgsl. RB = 16 rows (one
// fragment row) per workgroup, NSG subgroups; subgroup sg owns output fragments J * NSG + sg
// (FN of them, as many as the layer's padded width needs), multiplies the rows' f16 inputs
// (workgroup memory, row-major) by 16x16 weight fragments loaded straight from `mats` (each
// weight row K-contiguous, so a fragment is a column-major B), and hands its f32 sums to the
// epilogue through `rs` in PH phases of FPP fragments, so that `rs` holds CW = FPP * NSG * 16
// columns instead of the whole row. Inputs are rounded to f16 (ROUND_IN) as the layer-by-layer
// tensor-core path rounds them. CPU mirror: src/reference/fused_mlp.rs.

enable f16;
enable wgpu_cooperative_matrix;

#import common/act
#import common/bins
#import common/rng
#import common/fused_mlp

alias XS = f16;

var<workgroup> xs: array<f16, RB * XLD>;
var<workgroup> rs: array<f32, RB * RLD>;
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
    let wc_{J} = w0 + min(({J}u * NSG + sg) * 16u, npad - 16u) * kz;
#endfor
    for (var k = 0u; k < kz; k += 16u) {
        let a = coopLoadT<coop_mat16x16<f16, A>>(&xs[k], XLD);
#for J in 0..FN
        if ({J}u < nf) {
            let b = coopLoad<coop_mat16x16<f16, B>>(&mats[wc_{J} + k], kz);
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
