// TD-MPC2's TD target from two target Q heads: y[r] = reward[r] + discount * min(q0[r], q1[r]),
// the heads' decoded values stored [2, rows] (q1 at q_stride). CPU mirror: src/reference/td.rs.

struct Params {
    rows: u32,
    discount: f32,
    q_stride: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> reward: array<f32>;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64)
fn td_target(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= p.rows) {
        return;
    }
    y[r] = reward[r] + p.discount * min(q[r], q[p.q_stride + r]);
}
