// A block of a row-major f32 matrix copied into a padded layout, rounded to f16 with F16_OUT:
// the fused networks' packed weights (src/kernels/fused_mlp.rs) refreshed from a trainer's
// flat f32 parameters on the GPU, in the trainer's submit. Element (r, c), r < rows and
// c < cols, goes from src[src_offset + r * src_stride + c] to
// dst[dst_offset + (r / block_rows) * dst_block + (r % block_rows) * dst_stride + c]: a stacked
// ensemble's matrices keep their own padded rows. Padding is not written (zero from packing).
// CPU mirror: src/reference/pack.rs.

#if F16_OUT
enable f16;
alias DT = f16;
#else
alias DT = f32;
#endif

struct Params {
    rows: u32,
    cols: u32,
    src_offset: u32,
    src_stride: u32,
    dst_offset: u32,
    dst_stride: u32,
    block_rows: u32,
    dst_block: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<DT>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256)
fn pack(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.rows * p.cols) {
        return;
    }
    let r = i / p.cols;
    let c = i % p.cols;
    let at = p.dst_offset + (r / p.block_rows) * p.dst_block + (r % p.block_rows) * p.dst_stride + c;
    dst[at] = DT(src[p.src_offset + r * p.src_stride + c]);
}
