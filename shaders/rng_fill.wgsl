// Fills a buffer with Philox4x32-10 draws of one stream: element j comes from lane j % 4 of
// block j / 4 (counter j / 4), so any element can be drawn independently of the others and the
// Rust side (src/rng.rs) reproduces the buffer exactly. CPU mirror: src/reference/rng_fill.rs.

#import common/rng

// 0: raw u32, 1: uniform [0, 1), 2: standard normal, 3: Gumbel(0, 1).
override KIND: u32 = 0u;

struct Params {
    seed_lo: u32,
    seed_hi: u32,
    stream: u32,
    n: u32,
}

@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@group(0) @binding(1) var<uniform> p: Params;

// One Philox block as four draws of KIND, as u32 words.
fn draw(bits: vec4<u32>) -> vec4<u32> {
    if (KIND == 1u) {
        return bitcast<vec4<u32>>(vec4<f32>(u01(bits.x), u01(bits.y), u01(bits.z), u01(bits.w)));
    } else if (KIND == 2u) {
        return bitcast<vec4<u32>>(normal4(bits));
    } else if (KIND == 3u) {
        return bitcast<vec4<u32>>(gumbel4(bits));
    }
    return bits;
}

// The first `n - block * 4` (at most 4) draws of `block` into out[first + block * 4 ..].
fn store_block(first: u32, block: u32, v: vec4<u32>, n: u32) {
    for (var c = 0u; c < 4u; c++) {
        let j = block * 4u + c;
        if (j < n) {
            out[first + j] = v[c];
        }
    }
}

@compute @workgroup_size(64)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let block = gid.x + gid.y * nwg.x * 64u;
    if (block * 4u >= p.n) {
        return;
    }
    store_block(0u, block, draw(philox(vec2<u32>(p.seed_lo, p.seed_hi), p.stream, block)), p.n);
}

// A population's fill: agent i's `per` elements, from out[i * per], hold the draws of its own
// seed (seeds[2i], seeds[2i + 1]) and stream `stream`, counters 0, 1, ... as `fill` lays them
// out for that agent alone. One thread per block of 4 of an agent's elements.
struct AgentParams {
    stream: u32,
    per: u32,
    agents: u32,
    _pad: u32,
}

@group(0) @binding(2) var<storage, read> seeds: array<u32>;
@group(0) @binding(3) var<uniform> ap: AgentParams;

@compute @workgroup_size(64)
fn fill_agents(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 64u;
    let blocks = (ap.per + 3u) / 4u;
    if (t >= blocks * ap.agents) {
        return;
    }
    let agent = t / blocks;
    let block = t % blocks;
    let v = draw(philox(vec2<u32>(seeds[2u * agent], seeds[2u * agent + 1u]), ap.stream, block));
    store_block(agent * ap.per, block, v, ap.per);
}
