//! Philox on the GPU against the Rust implementation: u32 and uniform draws bit-identical,
//! normals and Gumbels within 1e-6, and the distribution of 10^6 GPU normals; Random123's
//! known-answer vectors through `common/rng.wgsl` itself (a test-only entry point) and through
//! `rng_fill`.

mod common;

use common::{PHILOX4X32_10_KAT, POISON, gpus};
use pompc::gpu::shader::{self, Header};
use pompc::gpu::{Binding, KernelSpec};
use pompc::kernels::rng_fill::{Distribution, record_fill, record_fill_agents};
use pompc::{Gpu, GpuBuffer, Recorder, reference, rng};
use rand::Rng;

fn gpu_fill(gpu: &Gpu, dist: Distribution, seed: u64, stream: u32, n: usize) -> Vec<u32> {
    let out = GpuBuffer::<u32>::new(gpu, "draws", n).unwrap();
    out.fill_u32(gpu, POISON).unwrap();
    let mut rec = Recorder::new(gpu);
    record_fill(&mut rec, &out, dist, seed, stream).unwrap();
    let h = rec.read(&out);
    rec.finish().unwrap().get(&h).unwrap()
}

/// Whether two fills agree: bit for bit where the draw is integer arithmetic, within 1e-6
/// where it goes through transcendental functions.
fn assert_draws_match(dist: Distribution, got: &[u32], want: &[u32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    match dist {
        Distribution::Bits | Distribution::Uniform => assert_eq!(got, want, "{dist:?} {what}"),
        Distribution::Normal | Distribution::Gumbel => {
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                let (g, w) = (f32::from_bits(*g), f32::from_bits(*w));
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                    "{dist:?} element {i}: gpu {g} rust {w} ({what})"
                );
            }
        }
    }
}

/// A population's fill: each agent's run is what that agent draws alone, whatever the run's
/// length (runs that end inside a Philox block included).
#[test]
fn population_fills_draw_each_agents_own_stream() {
    let mut r = common::rng("rng_agents");
    for gpu in gpus() {
        for (agents, per) in [
            (1, 13),
            (3, 4 * r.random_range(1..40)),
            (4, r.random_range(1..200)),
        ] {
            let seeds: Vec<u64> = (0..agents).map(|_| r.random()).collect();
            let words: Vec<u32> = seeds.iter().flat_map(|&s| rng::seed_words(s)).collect();
            let sb = GpuBuffer::from_slice(gpu, "seeds", &words).unwrap();
            let stream: u32 = r.random();
            for dist in Distribution::ALL {
                let out = GpuBuffer::<u32>::new(gpu, "draws", agents * per).unwrap();
                out.fill_u32(gpu, POISON).unwrap();
                let mut rec = Recorder::new(gpu);
                record_fill_agents(&mut rec, &out, dist, &sb, per, stream).unwrap();
                let h = rec.read(&out);
                let got = rec.finish().unwrap().get(&h).unwrap();
                let want = reference::rng_fill::fill_agents(dist, &seeds, stream, per);
                assert_draws_match(dist, &got, &want, &format!("{agents} agents of {per}"));
                // Agent 0's run is the single fill of its seed.
                let alone = gpu_fill(gpu, dist, seeds[0], stream, per);
                assert_draws_match(dist, &got[..per], &alone, "agent 0 alone");
            }
            // Runs that do not divide the buffer, or too few seeds, are errors.
            let out = GpuBuffer::<u32>::new(gpu, "draws", agents * per + 1).unwrap();
            let mut rec = Recorder::new(gpu);
            let e = record_fill_agents(&mut rec, &out, Distribution::Bits, &sb, per, 0);
            assert!(matches!(e, Err(pompc::Error::Shape(_))), "{e:?}");
            let out = GpuBuffer::<u32>::new(gpu, "draws", (agents + 1) * per).unwrap();
            let e = record_fill_agents(&mut rec, &out, Distribution::Bits, &sb, per, 0);
            assert!(matches!(e, Err(pompc::Error::Shape(_))), "{e:?}");
            assert_eq!(rec.dispatches(), 0);
        }
    }
}

#[test]
fn gpu_draws_match_rust() {
    let mut r = common::rng("rng_match");
    for gpu in gpus() {
        for _ in 0..3 {
            let seed: u64 = r.random();
            let stream: u32 = r.random();
            // Lengths that are not a multiple of 4: the last block is partly used (and a write
            // past the end would land in the buffer's canary guard).
            let n = 4 * r.random_range(0..1250) + r.random_range(1..4);
            for dist in Distribution::ALL {
                let got = gpu_fill(gpu, dist, seed, stream, n);
                let want = reference::rng_fill::fill(dist, seed, stream, n);
                assert_draws_match(dist, &got, &want, &format!("seed {seed} stream {stream}"));
            }
        }
    }
}

#[test]
fn a_million_gpu_normals_are_standard_normal() {
    let mut r = common::rng("rng_stats");
    let gpu = &gpus()[1];
    let n = 1_000_000;
    let bits = gpu_fill(gpu, Distribution::Normal, r.random(), r.random(), n);
    let mut x: Vec<f64> = bits.iter().map(|b| f32::from_bits(*b) as f64).collect();
    let mean = x.iter().sum::<f64>() / n as f64;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1) as f64;
    // Standard errors: 1e-3 for the mean, 1.4e-3 for the variance; 5 sigma bounds.
    assert!(mean.abs() < 5e-3, "mean {mean}");
    assert!((var - 1.0).abs() < 7e-3, "variance {var}");
    let d = rng::ks_distance_normal(&mut x);
    // Critical value of the KS statistic at alpha = 0.001.
    let crit = 1.95 / (n as f64).sqrt();
    assert!(d < crit, "KS distance {d} >= {crit}");
}

#[test]
fn streams_and_seeds_differ() {
    let gpu = &gpus()[1];
    let a = gpu_fill(gpu, Distribution::Bits, 1, 0, 64);
    let b = gpu_fill(gpu, Distribution::Bits, 1, 1, 64);
    let c = gpu_fill(gpu, Distribution::Bits, 2, 0, 64);
    assert_ne!(a, b);
    assert_ne!(a, c);
}

/// A test-only entry point around `common/rng.wgsl`: for each case i, `philox4x32_10` of the
/// counter and key in `input[3i]`, `input[3i + 1].xy`, and the keyed `philox(seed, stream,
/// counter)` of `input[3i + 2]` = (seed_lo, seed_hi, stream, counter).
const KAT_WGSL: &str = "#import common/rng
override CASES: u32;
@group(0) @binding(0) var<storage, read> input: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> out: array<vec4<u32>>;
@compute @workgroup_size(4)
fn kat(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= CASES) {
        return;
    }
    out[2u * i] = philox4x32_10(input[3u * i], input[3u * i + 1u].xy);
    let k = input[3u * i + 2u];
    out[2u * i + 1u] = philox(k.xy, k.z, k.w);
}
";

#[test]
fn random123_known_answers_on_the_gpu() {
    // The published vectors, and keyed draws against Rust's rng::philox (which tests/rng_cpu.rs
    // ties to the vectors: ctr (counter, 0, stream, 0), key (seed_lo, seed_hi)).
    let keyed: [(u64, u32, u32); 3] = [(0, 0, 0), (0x299f_31d0_a409_3822, 7, 9), (u64::MAX, 3, 1)];
    let mut input = Vec::new();
    for ((ctr, key, _), (seed, stream, counter)) in PHILOX4X32_10_KAT.iter().zip(keyed) {
        input.extend_from_slice(ctr);
        input.extend_from_slice(&[key[0], key[1], 0, 0]);
        input.extend_from_slice(&[seed as u32, (seed >> 32) as u32, stream, counter]);
    }
    let cases = PHILOX4X32_10_KAT.len();
    let pre = shader::preprocess_with("rng_kat", KAT_WGSL, &Header::default(), &|n| {
        shader::library_source(n)
    })
    .unwrap();
    let spec = KernelSpec {
        shader: "rng_kat",
        entry: "kat",
        bindings: &[(0, Binding::Read), (1, Binding::ReadWrite)],
    };
    for gpu in gpus() {
        let pipe = gpu
            .pipeline_from_source(
                spec.shader,
                &pre,
                spec.entry,
                spec.bindings,
                &[("CASES", cases as f64)],
                None,
            )
            .unwrap();
        let inb = GpuBuffer::from_slice(gpu, "kat input", &input).unwrap();
        let out = GpuBuffer::<u32>::new(gpu, "kat output", 8 * cases).unwrap();
        out.fill_u32(gpu, POISON).unwrap();
        let mut rec = Recorder::new(gpu);
        rec.dispatch::<u32>(&pipe, &[inb.raw(), out.raw()], None, [1, 1, 1])
            .unwrap();
        let h = rec.read(&out);
        let got = rec.finish().unwrap().get(&h).unwrap();
        for (i, ((ctr, key, want), (seed, stream, counter))) in
            PHILOX4X32_10_KAT.iter().zip(keyed).enumerate()
        {
            assert_eq!(
                &got[8 * i..8 * i + 4],
                want,
                "{:?}: ctr {ctr:08x?} key {key:08x?}",
                gpu.shader_checks()
            );
            let keyed = rng::philox(seed, u64::from(stream), u64::from(counter));
            assert_eq!(
                got[8 * i + 4..8 * i + 8],
                keyed,
                "{:?}: philox({seed:#x}, {stream}, {counter})",
                gpu.shader_checks()
            );
        }
        // philox(0, 0, 0) is the all-zero vector.
        assert_eq!(got[4..8], PHILOX4X32_10_KAT[0].2);
        // rng_fill's first block of (seed 0, stream 0) is the all-zero vector.
        let fill = gpu_fill(gpu, Distribution::Bits, 0, 0, 4);
        assert_eq!(
            fill,
            PHILOX4X32_10_KAT[0].2,
            "{:?}: rng_fill",
            gpu.shader_checks()
        );
    }
}
