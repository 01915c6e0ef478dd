//! Shared test harness: the adapter at hand opened twice (shader checks on and off), random
//! inputs and comparisons. There is no skip: without an adapter every GPU test fails with
//! pompc's own message on how to get one.
#![allow(dead_code)]

use pompc::{Gpu, GpuOptions, ShaderChecks};
use rand::{Rng, SeedableRng};
use std::sync::OnceLock;

/// Guard words after every buffer of the test devices ([`GpuOptions::canary`]): more than a
/// workgroup's worth of elements, so a kernel whose bounds guard is gone writes into them in
/// both check modes (the guard is inside the binding), and every read-back then fails naming
/// the buffer.
pub const CANARY_WORDS: usize = 257;

/// Both check modes on the default adapter, opened once per test binary, at f32 precision:
/// these tests compare kernels with f64 mirrors at f32 tolerances (the f16 and tensor-core
/// paths have their own tests, tests/linear_f16.rs and tests/gemm_coop.rs). Every buffer has
/// [`CANARY_WORDS`] guard words, checked after every read-back.
pub fn gpus() -> &'static [Gpu] {
    static GPUS: OnceLock<Vec<Gpu>> = OnceLock::new();
    GPUS.get_or_init(|| {
        [ShaderChecks::Checked, ShaderChecks::Trusted]
            .into_iter()
            .map(|c| {
                let opts = GpuOptions::default()
                    .with_checks(c)
                    .with_precision(Some(pompc::Precision::F32))
                    .with_canary(CANARY_WORDS);
                let g = Gpu::new(opts).unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
                eprintln!("test adapter: {}", g.describe());
                g
            })
            .collect()
    })
}

/// Random123 known-answer vectors, copied from `tests/kat_vectors` of
/// https://github.com/DEShawResearch/random123 (commit 9545ff64, lines 27-29):
///
/// ```text
/// philox4x32 10 00000000 00000000 00000000 00000000 00000000 00000000   6627e8d5 e169c58d bc57ac4c 9b00dbd8
/// philox4x32 10 ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff   408f276d 41c83b0e a20bc7c6 6d5451fd
/// philox4x32 10 243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0   d16cfe09 94fdcceb 5001e420 24126ea1
/// ```
///
/// Columns: name, rounds, CTR (4 words), KEY (2 words), EXPECTED (4 words).
pub const PHILOX4X32_10_KAT: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
    (
        [0x0000_0000, 0x0000_0000, 0x0000_0000, 0x0000_0000],
        [0x0000_0000, 0x0000_0000],
        [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8],
    ),
    (
        [0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff],
        [0xffff_ffff, 0xffff_ffff],
        [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd],
    ),
    (
        [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
        [0xa409_3822, 0x299f_31d0],
        [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1],
    ),
];

/// A fresh RNG; prints its seed so a failure can be replayed with POMPC_TEST_SEED.
pub fn rng(tag: &str) -> rand::rngs::StdRng {
    let seed = std::env::var("POMPC_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    eprintln!("{tag}: seed {seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// `n` values uniform in [-scale, scale).
pub fn uniform(r: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| r.random_range(-scale..scale)).collect()
}

/// Largest |gpu - reference| / max(|reference|, rms(reference)): relative error per element,
/// floored at the output's scale so that exact zeros of the reference do not divide by zero.
/// NaN (an element the kernel failed to write, the outputs being poisoned) gives infinity.
pub fn rel_error(gpu: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(gpu.len(), reference.len(), "output length");
    let rms = (reference.iter().map(|v| v * v).sum::<f64>() / reference.len().max(1) as f64)
        .sqrt()
        .max(1e-30);
    gpu.iter()
        .zip(reference)
        .map(|(g, r)| {
            let d = (*g as f64 - r).abs() / r.abs().max(rms);
            if d.is_nan() { f64::INFINITY } else { d }
        })
        .fold(0.0, f64::max)
}

/// The NaN bit pattern used to poison outputs before a kernel runs.
pub const POISON: u32 = 0x7fc0_0000;

/// The tiny model with a reward head that depends only on the first action component, peaked
/// at `target`: cost `c = mish(x) + mish(-x)` (even and increasing in |x|) with `x` a
/// LayerNorm-ed `k (a_0 - target)` (monotonic in it: constant units of +-1 keep the variance
/// from cancelling the magnitude), then a second LayerNorm-ed layer carrying `c` and final
/// logits `-beta y bin_j / 10`, tilting the bins down as the cost grows. Q heads give 0
/// (zero final layer), so the value is the discounted sum of these rewards.
pub fn peaked_reward_weights(obs: usize, act: usize, target: f32) -> pompc::model::Weights {
    let spec = pompc::model::ModelSpec::tiny(obs, act);
    let (l, h, bins) = (spec.latent_dim, spec.mlp_dim, spec.num_bins);
    let mut w = pompc::model::Weights::init(&spec, 11).unwrap();
    let mut set = |name: &str, f: &dyn Fn(&mut [f32])| {
        let t = w.tensors.get_mut(name).unwrap();
        t.data.iter_mut().for_each(|v| *v = 0.0);
        f(&mut t.data);
    };
    let k = 1.0;
    // Layer 0: [z, a] -> h; unit 0 = k (a0 - target), unit 1 its negation, units 2, 3 = +-1.
    set("_reward.0.weight", &|d| {
        d[l] = k;
        d[(l + act) + l] = -k;
    });
    set("_reward.0.bias", &|d| {
        d[0] = -k * target;
        d[1] = k * target;
        d[2] = 1.0;
        d[3] = -1.0;
    });
    set("_reward.0.ln.weight", &|d| {
        d.iter_mut().for_each(|v| *v = 1.0)
    });
    // Layer 1: unit 0 = c - 1.5 (c = mish(x) + mish(-x)), unit 1 its negation, units 2, 3 =
    // +-1; LayerNorm shift 3 on unit 0 keeps Mish increasing.
    set("_reward.1.weight", &|d| {
        d[0] = 1.0;
        d[1] = 1.0;
        d[h] = -1.0;
        d[h + 1] = -1.0;
    });
    set("_reward.1.bias", &|d| {
        d[0] = -1.5;
        d[1] = 1.5;
        d[2] = 1.0;
        d[3] = -1.0;
    });
    set("_reward.1.ln.weight", &|d| {
        d.iter_mut().for_each(|v| *v = 1.0)
    });
    set("_reward.1.ln.bias", &|d| d[0] = 3.0);
    // Layer 2: logits_j = -beta * y0 * bin_j / 10.
    let beta = 0.1;
    let bin = |j: usize| -10.0 + 20.0 * j as f32 / (bins - 1) as f32;
    set("_reward.2.weight", &|d| {
        for j in 0..bins {
            d[j * h] = -beta * bin(j) / 10.0;
        }
    });
    w
}

/// A fixture of `scripts/make_fixtures.py` (`tests/fixtures/{name}.safetensors`): the weights,
/// and every `fixture.*` tensor by name without the prefix.
pub fn load_fixture(
    name: &str,
) -> (
    pompc::model::Weights,
    std::collections::HashMap<String, Vec<f32>>,
) {
    let path = format!(
        "{}/tests/fixtures/{name}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    let weights = pompc::model::Weights::load(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st
        .iter()
        .filter(|(k, _)| k.starts_with("fixture."))
        .map(|(k, v)| {
            (
                k.trim_start_matches("fixture.").to_string(),
                bytemuck::pod_collect_to_vec(v.data()),
            )
        })
        .collect();
    (weights, t)
}

/// Assert that a GPU plan step agrees with the mirror's: the kept samples and the chosen one
/// exactly, the elite weights, action, mean, std, value, the next warm start and the final
/// mean and std over the whole horizon within `tol` relative (absolute below 1).
pub fn assert_plan_matches(
    tag: &str,
    planner: &pompc::planner::Planner,
    gpu: &pompc::planner::Plan,
    mirror: &pompc::reference::planner::MirrorPlan,
    tol: f64,
) {
    let close = |what: &str, g: &[f32], c: &[f64]| {
        assert_eq!(g.len(), c.len(), "{tag}: {what}: length");
        for (i, (g, c)) in g.iter().zip(c).enumerate() {
            let d = (f64::from(*g) - c).abs();
            assert!(
                d <= tol * c.abs().max(1.0),
                "{tag}: {what}[{i}]: gpu {g} mirror {c} (difference {d:e})"
            );
        }
    };
    let (kept, weights) = planner.last_kept().unwrap();
    assert_eq!(kept, mirror.kept, "{tag}: kept samples");
    close("elite weights", &weights, &mirror.weights);
    assert_eq!(gpu.chosen, mirror.chosen, "{tag}: chosen samples");
    close("action", &gpu.action, &mirror.action);
    close("mean", &gpu.mean, &mirror.mean);
    close("std", &gpu.std, &mirror.std);
    close("value", &gpu.value, &mirror.value);
    close(
        "warm start",
        &planner.warm_start().unwrap(),
        &mirror.full_mean,
    );
    let (full_mean, full_std) = planner.last_distribution().unwrap();
    close("mean over the horizon", &full_mean, &mirror.full_mean);
    close("std over the horizon", &full_std, &mirror.full_std);
}

/// A one-dimensional point driven to the parameter `param(0)`: the smallest classic-MPPI
/// problem.
pub fn point_problem() -> pompc::planner::custom::Problem {
    pompc::planner::custom::Problem {
        name: "point".into(),
        state_dim: 1,
        control_dim: 1,
        param_len: 1,
        wgsl: "fn dynamics(x: State, u: Control, t: u32) -> State { return State(x[0] + DT * u[0]); }\n\
               fn running_cost(x: State, u: Control, t: u32) -> f32 { let d = x[0] - param(0u); return d * d; }\n\
               fn terminal_cost(x: State) -> f32 { return 0.0; }"
            .into(),
    }
}

/// Preprocess, validate and compile `entry` of shader `name` with `header` and the override
/// constants to SPIR-V with naga (no GPU needed), panicking with what failed.
pub fn compile_spirv(
    name: &str,
    entry: &str,
    header: &pompc::gpu::shader::Header,
    overrides: &[(&'static str, f64)],
) {
    use pompc::gpu::shader;
    let pre = shader::preprocess(name, header).unwrap();
    let (module, info) =
        shader::validate(name, &pre).unwrap_or_else(|e| panic!("{name} {header:?}: {e}"));
    let constants: naga::back::PipelineConstants =
        overrides.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((naga::ShaderStage::Compute, entry)),
        &constants,
    )
    .unwrap_or_else(|e| panic!("{name}::{entry} {overrides:?}: {e}"));
    let pipeline = naga::back::spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: entry.to_string(),
    };
    naga::back::spv::write_vec(&module, &info, &Default::default(), Some(&pipeline))
        .unwrap_or_else(|e| panic!("{name}::{entry} to SPIR-V {overrides:?}: {e}"));
}

/// Each test device again, but allowing at most `max` workgroups per dimension, so that a few
/// hundred rows take the two-dimensional grid that 65536 x rows-per-workgroup rows take on a
/// real device.
pub fn small_grid_gpus(max: u32) -> Vec<Gpu> {
    gpus()
        .iter()
        .map(|g| {
            let mut limits = g.limits().clone();
            limits.max_compute_workgroups_per_dimension = max;
            let opts = GpuOptions {
                limits: pompc::gpu::LimitsRequest::Custom(Box::new(limits)),
                ..GpuOptions::default()
                    .with_checks(g.shader_checks())
                    .with_canary(CANARY_WORDS)
            };
            Gpu::new(opts).unwrap()
        })
        .collect()
}
