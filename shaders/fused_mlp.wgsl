// Whole networks per workgroup on the ALU (f32 sums; weights f32 or f16): see
// common/fused_mlp.wgsl. Each thread computes CT = CW / WG columns of one phase for all RB
// rows, reading its weight rows from memory (K-contiguous, as stored) and the rows' inputs
// from workgroup memory, where every thread of the workgroup reads the same element
// (a broadcast). Column blocks past the layer's padded width are skipped.
// CPU mirror: src/reference/fused_mlp.rs.

#if F16_ANY
enable f16;
#endif

#import common/act
#import common/bins
#import common/rng
#import common/fused_mlp

alias XS = f32;
const CT: u32 = CW / WG;

var<workgroup> xs: array<f32, RB * XLD>;
var<workgroup> rs: array<f32, RB * RLD>;

fn w4(at: u32) -> vec4<f32> {
    return vec4<f32>(f32(mats[at]), f32(mats[at + 1u]), f32(mats[at + 2u]), f32(mats[at + 3u]));
}

// The products of phase ph of layer li into rs: this thread's columns ph * CW + tid + i * WG.
fn gemm_phase(li: u32, member: u32, ph: u32, tid: u32) {
    let kz = layer_field(li, LAYER_KZ);
    let npad = layer_field(li, LAYER_NPAD);
    let w0 = layer_field(li, LAYER_W) + member * layer_field(li, LAYER_W_STRIDE);
    var acc: array<f32, RB * CT>;
    var wrow: array<u32, CT>;
    var blocks = 0u;
    for (var i = 0u; i < CT; i++) {
        // Uniform: whole blocks of WG columns past the padded width are skipped.
        if (ph * CW + i * WG < npad) {
            blocks = i + 1u;
        }
        wrow[i] = w0 + min(ph * CW + tid + i * WG, npad - 1u) * kz;
    }
    for (var k = 0u; k < kz; k += 4u) {
        for (var i = 0u; i < blocks; i++) {
            let w = w4(wrow[i] + k);
            for (var r = 0u; r < RB; r++) {
                let x = vec4<f32>(xs[r * XLD + k], xs[r * XLD + k + 1u], xs[r * XLD + k + 2u], xs[r * XLD + k + 3u]);
                acc[r * CT + i] += dot(x, w);
            }
        }
    }
    for (var i = 0u; i < blocks; i++) {
        for (var r = 0u; r < RB; r++) {
            rs[r * RLD + tid + i * WG] = acc[r * CT + i];
        }
    }
}

@compute @workgroup_size(WG)
fn run(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let g = wid.y;
    let row0 = wid.x * RB;
    let net = p.net[g].x;
    let first = desc[net * NET_WORDS];
    let count = desc[net * NET_WORDS + 1u];
    let member = member_of(g);
    stage_input(first, row0, tid);
    workgroupBarrier();
    for (var l = 0u; l < count; l++) {
        let li = first + l;
        var vals: array<f32, VPT>;
        for (var ph = 0u; ph < PH; ph++) {
            gemm_phase(li, member, ph, tid);
            workgroupBarrier();
            take_phase(ph, tid, &vals);
            workgroupBarrier();
        }
        finish_layer(li, member, g, row0, tid, &vals, l + 1u == count);
        workgroupBarrier();
    }
}
