// Element-wise f32 -> f16 conversion of a range: the planner's f16 weights refreshed from a
// trainer's f32 parameters on the GPU, in the trainer's submit. CPU mirror:
// src/reference/cast.rs. Two invocations may write the two halves of one 32-bit word: f16
// storage (shader-f16) makes 16-bit stores their own memory locations.

enable f16;

struct Params {
    src_offset: u32,
    dst_offset: u32,
    n: u32,
    pad: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f16>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256)
fn to_f16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i < p.n) {
        dst[p.dst_offset + i] = f16(src[p.src_offset + i]);
    }
}
