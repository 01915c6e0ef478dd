//! The optimizer kernels against their f64 mirror on fresh random inputs, on both `gpus()`:
//! Adam with and without global-norm clipping over parameter groups with different learning
//! rates and untouched gaps (new gradients every step, the learning rate and the clip setting
//! changed between steps), the gradient norm over odd lengths and several ranges, Polyak
//! between buffers and within one, RunningScale over odd sizes with ties and negative values,
//! Adam minimizing a quadratic, every pipeline through naga, and bad requests.
//!
//! Tolerances (f32 kernels against the f64 mirror; "measured" is the worst over several seeds
//! on lavapipe):
//! * Adam, up to 10 steps: each parameter's displacement `p - p0` within
//!   `1e-5 * lr_group * steps` of the mirror's. The step `lr m_hat / (sqrt(v_hat) + eps)` is
//!   well conditioned (a few f32 roundings, ~1e-7 of the step), so the error is dominated by
//!   rounding `p` itself each step: half an ulp of |p| <= 0.1 is 4e-9, against steps of
//!   lr = 1e-2. Measured 1.3e-6. A bias correction computed as 1 - beta^t in f32 (off by
//!   1.3e-5 for beta 0.999) or a clip coefficient missing from the moments would fail here
//!   or in the state checks. Moments: `rel_error` (relative to max(|ref|, rms)) <= 1e-5 (a
//!   few ulps per step; measured 7e-7). State: bias corrections within 1e-6 relative (they
//!   come from -expm1(t ln beta), so nothing cancels); norm and clip coefficient within 1e-6
//!   relative (below).
//! * Gradient norm: 1e-6 relative: a sum of up to 1e5 squares in f32, four per thread, then
//!   trees of 256 and of the partials, so a few ulps times the tree depth. Measured 6e-8.
//! * Polyak: `rel_error` <= 1e-6 (one lerp: two or three f32 roundings; measured 9e-8).
//! * RunningScale: |gpu - ref| <= 2e-6 * max(|ref|, max |x|): the percentiles are sorted
//!   copies of the inputs, interpolated with f32 weights that the mirror computes the same way
//!   (as TD-MPC2's f32 tensors do), so only the interpolation, the difference and the lerp
//!   round, a few ulps of the data. Measured 1.8e-7. The division by the scale: 1e-6
//!   relative (one f32 division).
//! * Quadratic: Adam (lr 0.05, clip 1) brings 0.5 sum a (p - c)^2 from about 200 (above 100)
//!   below 1e-3 in 300 steps (measured 1.5e-4); the loss is evaluated on the downloaded
//!   parameters.
// The optimizer API takes slices of ranges; a one-range slice is intended, not a typo.
#![allow(clippy::single_range_in_vec_init)]

mod common;

use common::{POISON, gpus, rel_error, rng, uniform};
use pompc::kernels::optim::{
    self, Adam, AdamConfig, AdamState, GradNorm, MAX_RANGES, MAX_SCALE_VALUES, NORM_PARTIALS,
    OptimKernel, ParamGroup, PolyakSpan, RunningScale,
};
use pompc::reference::optim as mirror;
use pompc::{Error, Gpu, GpuBuffer, GpuOptions, Recorder};
use rand::Rng;
use std::ops::Range;

const DISPLACEMENT_TOL: f64 = 1e-5;
const MOMENT_TOL: f64 = 1e-5;
const NORM_TOL: f64 = 1e-6;
const BIAS_TOL: f64 = 1e-6;
const POLYAK_TOL: f64 = 1e-6;
const SCALE_TOL: f64 = 2e-6;

fn rel(a: f64, b: f64) -> f64 {
    let d = (a - b).abs() / b.abs().max(1e-30);
    if d.is_nan() { f64::INFINITY } else { d }
}

/// Run `steps` Adam steps on the GPU and in the mirror with fresh gradients each step (their
/// scale varies over three decades, so the clip coefficient changes) and compare. The
/// learning rate halves half way; `late_clip` replaces the clip setting at 3/4 of the way.
#[allow(clippy::too_many_arguments)]
fn check_adam(
    gpu: &Gpu,
    r: &mut impl Rng,
    len: usize,
    groups: &[ParamGroup],
    cfg: AdamConfig,
    steps: usize,
    late_clip: Option<Option<f32>>,
    what: &str,
) {
    let p0 = uniform(r, len, 0.1);
    let params = GpuBuffer::from_slice(gpu, "params", &p0).unwrap();
    let grads = GpuBuffer::<f32>::new(gpu, "grads", len).unwrap();
    let mut adam = Adam::new(gpu, len, groups, cfg).unwrap();
    let mut reference = mirror::AdamMirror::new(len, groups, cfg);
    let mut p_ref: Vec<f64> = p0.iter().map(|&v| v as f64).collect();
    let mut state = None;
    for step in 0..steps {
        if step == steps / 2 {
            adam.set_lr(cfg.lr * 0.5).unwrap();
            reference.cfg.lr = cfg.lr * 0.5;
        }
        if let Some(clip) = late_clip
            && step == steps * 3 / 4
        {
            adam.set_clip(clip).unwrap();
            reference.cfg.clip = clip;
        }
        let scale = 10f32.powf(r.random_range(-1.5..1.5));
        let g = uniform(r, len, scale);
        grads.upload(gpu, &g).unwrap();
        let mut rec = Recorder::new(gpu);
        adam.record_step(&mut rec, &params, &grads).unwrap();
        let h = adam.record_read_state(&mut rec);
        let out = rec.finish().unwrap();
        state = Some(AdamState::from_words(&out.get(&h).unwrap()).unwrap());
        reference.step(&mut p_ref, &g);
        let s = state.unwrap();
        let ctx = format!("{what} step {} checks={:?}", step + 1, gpu.shader_checks());
        assert_eq!(s.step, step as u32 + 1, "{ctx}");
        match (s.grad_norm, reference.grad_norm) {
            (Some(n), Some(m)) => assert!(rel(n as f64, m) <= NORM_TOL, "{ctx}: norm {n} vs {m}"),
            (None, None) => {}
            other => panic!("{ctx}: norm {other:?}"),
        }
        let c = (s.clip_coef as f64, reference.clip_coef);
        assert!(rel(c.0, c.1) <= NORM_TOL, "{ctx}: clip coefficient {c:?}");
        let t = step as u32 + 1;
        let bc1 = mirror::bias_correction(cfg.beta1, t);
        let bc2 = mirror::bias_correction(cfg.beta2, t).sqrt();
        assert!(
            rel(s.bias_correction1 as f64, bc1) <= BIAS_TOL
                && rel(s.bias_correction2_sqrt as f64, bc2) <= BIAS_TOL,
            "{ctx}: bias corrections {s:?} vs {bc1}, {bc2}"
        );
    }
    eprintln!("{what}: last state {:?}", state.unwrap());

    let got = params.download(gpu).unwrap();
    let mut worst = (0.0f64, 0usize);
    let mut in_group = vec![false; len];
    for g in groups {
        let lr = cfg.lr as f64 * g.lr_scale as f64;
        for i in g.range() {
            in_group[i] = true;
            let d_gpu = got[i] as f64 - p0[i] as f64;
            let d_ref = p_ref[i] - p0[i] as f64;
            let e = (d_gpu - d_ref).abs() / (lr * steps as f64);
            let e = if e.is_nan() { f64::INFINITY } else { e };
            if e > worst.0 {
                worst = (e, i);
            }
        }
    }
    let i = worst.1;
    eprintln!("{what}: worst displacement error {:e} at {i}", worst.0);
    assert!(
        worst.0 <= DISPLACEMENT_TOL,
        "{what} checks={:?}: displacement error {:e} > {DISPLACEMENT_TOL:e} at element {i} \
         (p0 {}, gpu {}, ref {})",
        gpu.shader_checks(),
        worst.0,
        p0[i],
        got[i],
        p_ref[i]
    );
    let m = adam.m().download(gpu).unwrap();
    let v = adam.v().download(gpu).unwrap();
    for i in 0..len {
        if !in_group[i] {
            assert_eq!(
                got[i].to_bits(),
                p0[i].to_bits(),
                "{what}: gap element {i} moved"
            );
            assert!(
                m[i] == 0.0 && v[i] == 0.0,
                "{what}: moments of gap element {i}"
            );
        }
    }
    let em = rel_error(&m, &reference.m);
    let ev = rel_error(&v, &reference.v);
    eprintln!("{what}: moment errors m {em:e}, v {ev:e}");
    assert!(
        em <= MOMENT_TOL && ev <= MOMENT_TOL,
        "{what}: moment errors m {em:e}, v {ev:e}"
    );
}

/// Two groups with different learning rates, a gap between them and untouched elements at
/// both ends; lengths not multiples of the 1024-element chunks.
fn two_groups() -> (usize, Vec<ParamGroup>) {
    (
        50_017,
        vec![
            ParamGroup::new(3..12_348, 0.3),
            ParamGroup::new(13_000..49_999, 1.0),
        ],
    )
}

#[test]
fn adam_with_clipping_matches_the_mirror() {
    let mut r = rng("adam_clip");
    let (len, groups) = two_groups();
    for gpu in gpus() {
        // The norm of 5e4 gradients of scale 0.03 to 30 is 4 to 4000: always clipped at 1.
        let cfg = AdamConfig {
            lr: 1e-2,
            clip: Some(1.0),
            ..AdamConfig::default()
        };
        check_adam(gpu, &mut r, len, &groups, cfg, 10, None, "clip 1");
    }
}

#[test]
fn adam_without_clipping_matches_the_mirror() {
    let mut r = rng("adam_noclip");
    let (len, groups) = two_groups();
    for gpu in gpus() {
        let cfg = AdamConfig {
            lr: 1e-2,
            ..AdamConfig::default()
        };
        check_adam(gpu, &mut r, len, &groups, cfg, 10, None, "no clip");
        // Clipping turned on for the last steps, and off again.
        check_adam(
            gpu,
            &mut r,
            len,
            &groups,
            cfg,
            8,
            Some(Some(0.5)),
            "late clip",
        );
        let clipped = AdamConfig {
            clip: Some(0.5),
            ..cfg
        };
        check_adam(
            gpu,
            &mut r,
            len,
            &groups,
            clipped,
            8,
            Some(None),
            "clip off",
        );
        // A clip norm above every gradient norm: computed, but a factor of 1.
        let cfg = AdamConfig {
            lr: 1e-2,
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-6,
            clip: Some(1e6),
        };
        check_adam(gpu, &mut r, len, &groups, cfg, 10, None, "inactive clip");
    }
}

#[test]
fn adam_many_groups_and_tiny_sizes() {
    let mut r = rng("adam_groups");
    for gpu in gpus() {
        // MAX_RANGES groups in no particular order, some empty, sizes around the chunk.
        let mut groups = Vec::new();
        let mut at = 0;
        for (i, n) in [
            1usize, 0, 1023, 1024, 1025, 7, 2048, 0, 3000, 5, 256, 255, 257, 1, 2, 9,
        ]
        .into_iter()
        .enumerate()
        {
            groups.push(ParamGroup::new(at..at + n, 0.1 + 0.1 * i as f32));
            at += n + i % 3;
        }
        assert_eq!(groups.len(), MAX_RANGES);
        groups.reverse();
        let cfg = AdamConfig {
            lr: 1e-2,
            clip: Some(5.0),
            ..AdamConfig::default()
        };
        check_adam(gpu, &mut r, at + 5, &groups, cfg, 4, None, "16 groups");
        let one = [ParamGroup::new(0..1, 1.0)];
        check_adam(gpu, &mut r, 1, &one, cfg, 3, None, "one element");
    }
}

#[test]
fn a_new_learning_rate_needs_no_new_pipeline() {
    // A device of its own: the other tests build pipelines on the shared ones meanwhile.
    let gpu = Gpu::new(GpuOptions::default().with_checks(gpus()[0].shader_checks())).unwrap();
    let len = 2000;
    let params = GpuBuffer::<f32>::new(&gpu, "params", len).unwrap();
    let grads = GpuBuffer::from_slice(&gpu, "grads", &vec![1.0; len]).unwrap();
    let groups = [ParamGroup::new(0..len, 1.0)];
    let mut adam = Adam::new(&gpu, len, &groups, AdamConfig::TDMPC2).unwrap();
    let built = gpu.cached_pipelines();
    assert_eq!(built, 3, "norm, begin, update");
    for lr in [1e-3f32, 2e-3, 0.0, 5e-4] {
        adam.set_lr(lr).unwrap();
        let mut rec = Recorder::new(&gpu);
        adam.record_step(&mut rec, &params, &grads).unwrap();
        rec.submit().unwrap();
    }
    assert_eq!(gpu.cached_pipelines(), built);
    // Constant gradients (clipped by a constant factor): every step moves each parameter by
    // -lr (Adam's m_hat / sqrt(v_hat) is 1 for a constant gradient), lr 0 not at all:
    // -(1e-3 + 2e-3 + 5e-4).
    let p = params.download(&gpu).unwrap();
    assert!(
        p.iter().all(|&v| (v as f64 + 3.5e-3).abs() < 1e-8),
        "{:?}",
        &p[..4]
    );
}

#[test]
fn adam_reset_starts_over() {
    let mut r = rng("adam_reset");
    let gpu = &gpus()[0];
    let len = 3000;
    let groups = [ParamGroup::new(0..len, 1.0)];
    let cfg = AdamConfig::TDMPC2;
    let p0 = uniform(&mut r, len, 1.0);
    let g = uniform(&mut r, len, 1.0);
    let params = GpuBuffer::from_slice(gpu, "params", &p0).unwrap();
    let grads = GpuBuffer::from_slice(gpu, "grads", &g).unwrap();
    let mut adam = Adam::new(gpu, len, &groups, cfg).unwrap();
    for _ in 0..3 {
        let mut rec = Recorder::new(gpu);
        adam.record_step(&mut rec, &params, &grads).unwrap();
        rec.submit().unwrap();
    }
    assert_eq!(adam.step_count(gpu).unwrap(), 3);
    adam.reset(gpu).unwrap();
    params.upload(gpu, &p0).unwrap();
    let s = adam.read_state(gpu).unwrap();
    assert_eq!((s.step, s.grad_norm), (0, None));
    let mut rec = Recorder::new(gpu);
    adam.record_step(&mut rec, &params, &grads).unwrap();
    rec.submit().unwrap();
    let mut reference = mirror::AdamMirror::new(len, &groups, cfg);
    let mut p_ref: Vec<f64> = p0.iter().map(|&v| v as f64).collect();
    reference.step(&mut p_ref, &g);
    assert_eq!(adam.step_count(gpu).unwrap(), 1);
    let norm = adam.last_grad_norm(gpu).unwrap().unwrap() as f64;
    assert!(rel(norm, reference.grad_norm.unwrap()) <= NORM_TOL);
    let got = params.download(gpu).unwrap();
    for i in 0..len {
        let e = (got[i] as f64 - p_ref[i]).abs() / cfg.lr as f64;
        // One step from |p| <= 1: half an ulp of p is 6e-8, 2e-4 of lr 3e-4.
        assert!(e <= 1e-3, "element {i}: {} vs {}", got[i], p_ref[i]);
    }
}

#[test]
fn adam_minimizes_a_quadratic() {
    let mut r = rng("adam_quadratic");
    let gpu = &gpus()[1];
    let n = 1000;
    let a: Vec<f32> = (0..n).map(|_| r.random_range(0.5..2.0)).collect();
    let c = uniform(&mut r, n, 1.0);
    let loss = |p: &[f32]| -> f64 {
        (0..n)
            .map(|i| 0.5 * a[i] as f64 * (p[i] as f64 - c[i] as f64).powi(2))
            .sum()
    };
    let params = GpuBuffer::<f32>::new(gpu, "params", n).unwrap();
    let grads = GpuBuffer::<f32>::new(gpu, "grads", n).unwrap();
    let cfg = AdamConfig {
        lr: 0.05,
        clip: Some(1.0),
        ..AdamConfig::default()
    };
    let groups = [
        ParamGroup::new(0..n / 2, 1.0),
        ParamGroup::new(n / 2..n, 0.5),
    ];
    let mut adam = Adam::new(gpu, n, &groups, cfg).unwrap();
    let mut p = params.download(gpu).unwrap();
    let first = loss(&p);
    for _ in 0..300 {
        let g: Vec<f32> = (0..n).map(|i| a[i] * (p[i] - c[i])).collect();
        grads.upload(gpu, &g).unwrap();
        let mut rec = Recorder::new(gpu);
        adam.record_step(&mut rec, &params, &grads).unwrap();
        let h = rec.read(&params);
        p = rec.finish().unwrap().get(&h).unwrap();
    }
    let last = loss(&p);
    let s = adam.read_state(gpu).unwrap();
    eprintln!("quadratic: loss {first} -> {last}, {s:?}");
    assert!(first > 100.0 && last < 1e-3, "loss {first} -> {last}");
    assert_eq!(s.step, 300);
}

fn check_norm(gpu: &Gpu, grads: &[f32], ranges: &[Range<usize>], what: &str) {
    let gb = GpuBuffer::from_slice(gpu, "grads", grads).unwrap();
    let partials = GpuBuffer::<f32>::new(gpu, "partials", NORM_PARTIALS).unwrap();
    let out = GpuBuffer::<f32>::new(gpu, "out", 3).unwrap();
    partials.fill_u32(gpu, POISON).unwrap();
    out.fill_u32(gpu, POISON).unwrap();
    let mut rec = Recorder::new(gpu);
    optim::record_grad_norm(&mut rec, &gb, ranges, &partials, &out, 1).unwrap();
    let h = rec.read(&out);
    let got = rec.finish().unwrap().get(&h).unwrap();
    let want = mirror::grad_norm(grads, ranges);
    assert!(
        got[0].to_bits() == POISON && got[2].to_bits() == POISON,
        "{what}: wrote outside its slot"
    );
    let e = if want == 0.0 {
        got[1].abs() as f64
    } else {
        rel(got[1] as f64, want)
    };
    eprintln!("norm {what}: error {e:e}");
    assert!(
        e <= NORM_TOL,
        "{what} checks={:?}: norm {} vs {want} (error {e:e})",
        gpu.shader_checks(),
        got[1]
    );
}

#[test]
fn grad_norm_matches_the_mirror() {
    let mut r = rng("grad_norm");
    for gpu in gpus() {
        for len in [1usize, 255, 256, 1023, 1024, 1025, 4099, 100_003] {
            let g = uniform(&mut r, len, 3.0);
            check_norm(gpu, &g, &[0..len], &format!("whole {len}"));
            // Several ranges with gaps (gaps hold huge values that must not count).
            let mut g = g;
            let cut = |f: f64| (len as f64 * f) as usize;
            let ranges = [
                cut(0.6)..len,
                0..cut(0.1),
                cut(0.2)..cut(0.2) + cut(0.3),
                cut(0.5)..cut(0.5),
            ];
            for (i, v) in g.iter_mut().enumerate() {
                if !ranges.iter().any(|r| r.contains(&i)) {
                    *v = 1e6;
                }
            }
            check_norm(gpu, &g, &ranges, &format!("ranges of {len}"));
        }
        check_norm(gpu, &[1.0, 2.0], &[], "no ranges");
        check_norm(gpu, &[1.0, 2.0], &[1..1], "an empty range");
        check_norm(gpu, &[3.0, 4.0], &[0..2], "3-4-5");
        // The convenience wrapper.
        let g = uniform(&mut r, 5000, 1.0);
        let gb = GpuBuffer::from_slice(gpu, "grads", &g).unwrap();
        let norm = GradNorm::new(gpu).unwrap();
        let mut rec = Recorder::new(gpu);
        norm.record(&mut rec, &gb, &[10..4010]).unwrap();
        rec.submit().unwrap();
        let want = mirror::grad_norm(&g, &[10..4010]);
        assert!(rel(norm.read(gpu).unwrap() as f64, want) <= NORM_TOL);
    }
}

#[test]
fn polyak_matches_the_mirror() {
    let mut r = rng("polyak");
    for gpu in gpus() {
        for tau in [0.01f32, 0.7, 1.0] {
            // Two buffers, same offsets, with gaps.
            let len = 20_011;
            let src = uniform(&mut r, len, 2.0);
            let dst = uniform(&mut r, len, 2.0);
            let ranges = [5000..14_000, 0..1025, 15_000..len];
            let pb = GpuBuffer::from_slice(gpu, "params", &src).unwrap();
            let tb = GpuBuffer::from_slice(gpu, "target", &dst).unwrap();
            let mut rec = Recorder::new(gpu);
            optim::record_polyak(&mut rec, &pb, &tb, &ranges, tau).unwrap();
            let h = rec.read(&tb);
            let got = rec.finish().unwrap().get(&h).unwrap();
            let s64: Vec<f64> = src.iter().map(|&v| v as f64).collect();
            let mut want: Vec<f64> = dst.iter().map(|&v| v as f64).collect();
            let spans: Vec<PolyakSpan> = ranges
                .iter()
                .map(|r| PolyakSpan {
                    source: r.start,
                    target: r.start,
                    len: r.len(),
                })
                .collect();
            mirror::polyak(&s64, &mut want, &spans, tau as f64);
            let e = rel_error(&got, &want);
            eprintln!("polyak tau {tau}: error {e:e}");
            assert!(e <= POLYAK_TOL, "tau {tau}: error {e:e}");
            for i in (1025..5000).chain(14_000..15_000) {
                assert_eq!(got[i].to_bits(), dst[i].to_bits(), "gap element {i}");
            }

            // Spans between differently laid out buffers, and within one buffer.
            let small = uniform(&mut r, 3000, 2.0);
            let sb = GpuBuffer::from_slice(gpu, "small target", &small).unwrap();
            let spans = [
                PolyakSpan {
                    source: 7000,
                    target: 1,
                    len: 1500,
                },
                PolyakSpan {
                    source: 100,
                    target: 1600,
                    len: 1399,
                },
            ];
            let mut rec = Recorder::new(gpu);
            optim::record_polyak_spans(&mut rec, &pb, &sb, &spans, tau).unwrap();
            // In place: the first half of `params` moves towards elements of the second.
            let inplace = [
                PolyakSpan {
                    source: 12_000,
                    target: 0,
                    len: 4000,
                },
                PolyakSpan {
                    source: 10_000,
                    target: 4100,
                    len: 1,
                },
            ];
            optim::record_polyak_spans(&mut rec, &pb, &pb, &inplace, tau).unwrap();
            let hs = rec.read(&sb);
            let hp = rec.read(&pb);
            let out = rec.finish().unwrap();
            let mut want: Vec<f64> = small.iter().map(|&v| v as f64).collect();
            mirror::polyak(&s64, &mut want, &spans, tau as f64);
            let e = rel_error(&out.get(&hs).unwrap(), &want);
            assert!(e <= POLYAK_TOL, "spans tau {tau}: error {e:e}");
            let mut want = s64.clone();
            mirror::polyak_in_place(&mut want, &inplace, tau as f64);
            let e = rel_error(&out.get(&hp).unwrap(), &want);
            assert!(e <= POLYAK_TOL, "in place tau {tau}: error {e:e}");
        }
    }
}

/// `n` values with ties and negatives: a mix of small integers (many ties), wide uniform
/// values, and a few repeated extremes.
fn scale_values(r: &mut impl Rng, n: usize, spread: f32) -> Vec<f32> {
    (0..n)
        .map(|_| match r.random_range(0..4) {
            0 => r.random_range(-3..4) as f32,
            1 => -spread,
            _ => r.random_range(-spread..spread * 0.5),
        })
        .collect()
}

#[test]
fn running_scale_matches_the_mirror() {
    let mut r = rng("running_scale");
    for gpu in gpus() {
        for n in [1usize, 2, 3, 255, 256, 1000, MAX_SCALE_VALUES] {
            for tau in [0.01f32, 0.5, 1.0] {
                let scale = RunningScale::new(gpu, tau).unwrap();
                let mut reference = mirror::RunningScaleMirror::new(tau as f64);
                for update in 0..4 {
                    // Spreads from below 1 (the clamp) to large.
                    let spread = [0.2f32, 30.0, 3.0, 500.0][update];
                    let values = scale_values(&mut r, n, spread);
                    let offset = 7;
                    let mut buf = uniform(&mut r, offset, 1e4);
                    buf.extend_from_slice(&values);
                    buf.extend(uniform(&mut r, 5, 1e4));
                    let vb = GpuBuffer::from_slice(gpu, "q values", &buf).unwrap();
                    let mut rec = Recorder::new(gpu);
                    scale.record_update(&mut rec, &vb, offset, n).unwrap();
                    scale.record_divide(&mut rec, &vb, offset, n).unwrap();
                    let h = rec.read(scale.value_buffer());
                    let hv = rec.read(&vb);
                    let out = rec.finish().unwrap();
                    let got = out.get(&h).unwrap()[0] as f64;
                    reference.update(&values);
                    let want = reference.value;
                    let size = values
                        .iter()
                        .fold(want.abs(), |m, &v| m.max(v.abs() as f64));
                    let e = (got - want).abs() / size;
                    eprintln!("scale n {n} tau {tau} update {update}: error {e:e}");
                    assert!(
                        e <= SCALE_TOL,
                        "n {n} tau {tau} update {update} checks={:?}: {got} vs {want} (error \
                         {e:e}; percentiles {:?})",
                        gpu.shader_checks(),
                        mirror::percentiles(&values)
                    );
                    // The division by the new scale, outside elements untouched.
                    let divided = out.get(&hv).unwrap();
                    for (i, (&d, &b)) in divided.iter().zip(&buf).enumerate() {
                        if (offset..offset + n).contains(&i) {
                            let w = b as f64 / got;
                            assert!((d as f64 - w).abs() <= 1e-6 * w.abs(), "divide: {d} vs {w}");
                        } else {
                            assert_eq!(d.to_bits(), b.to_bits(), "divide touched element {i}");
                        }
                    }
                }
                let v = scale.read_value(gpu).unwrap() as f64;
                assert!((v - reference.value).abs() <= SCALE_TOL * v.abs().max(500.0));
                scale.set_value(gpu, 1.0).unwrap();
                assert_eq!(scale.read_value(gpu).unwrap(), 1.0);
            }
        }
    }
}

#[test]
fn running_scale_mirror_is_tdmpc2s_formula() {
    // 0..n shuffled: the percentiles are the positions themselves.
    let mut r = rng("scale_formula");
    for n in [2usize, 3, 101, 255, 256] {
        let mut v: Vec<f32> = (0..n).map(|i| i as f32).collect();
        for i in (1..n).rev() {
            v.swap(i, r.random_range(0..=i));
        }
        let (lo, hi) = mirror::percentiles(&v);
        let (plo, phi) = (0.05 * (n - 1) as f64, 0.95 * (n - 1) as f64);
        // TD-MPC2 computes the positions in f32: exact to about 1e-7 relative.
        assert!(
            (lo - plo).abs() < 1e-5 && (hi - phi).abs() < 1e-5,
            "n {n}: {lo} {hi}"
        );
    }
    // The ceil index is clamped for n = 1, and a single value has no spread: value moves to 1.
    assert_eq!(mirror::percentile_positions(1)[1], (0, 0, 1.0, 0.0));
    // n = 101: positions 5 and 95 exactly, weights 1 and 0.
    assert_eq!(mirror::percentile_positions(101)[0], (5, 6, 1.0, 0.0));
    // n = 256: 12.75 and 242.25.
    let [lo, hi] = mirror::percentile_positions(256);
    assert_eq!(
        (lo.0, lo.1, lo.3, hi.0, hi.1, hi.3),
        (12, 13, 0.75, 242, 243, 0.25)
    );
    // Ties and negatives, by hand: sorted [-4, -4, -1, 0, 0, 0, 2, 2, 9, 9, 9] (n = 11):
    // p5 at 0.5 -> -4, p95 at 9.5 -> 9; value = lerp(1, 13, 0.5) = 7.
    let mut s = mirror::RunningScaleMirror::new(0.5);
    s.update(&[0.0, 9.0, -4.0, 2.0, 0.0, 9.0, -1.0, -4.0, 2.0, 9.0, 0.0]);
    assert!((s.value - 7.0).abs() < 1e-12, "{}", s.value);
    // A spread below 1 is clamped to 1.
    s.update(&[0.1, 0.2, 0.3]);
    assert!((s.value - 4.0).abs() < 1e-12, "{}", s.value);
}

#[test]
fn bad_requests_are_errors() {
    let gpu = &gpus()[0];
    let len = 1000;
    let cfg = AdamConfig::TDMPC2;
    let g = |a: usize, b: usize| ParamGroup::new(a..b, 1.0);
    let adam_err =
        |groups: &[ParamGroup], cfg: AdamConfig| Adam::new(gpu, len, groups, cfg).unwrap_err();
    let is = |e: Error, want: fn(&Error) -> bool, what: &str| {
        assert!(want(&e), "{what}: {e:?}");
        eprintln!("{what}: {e}");
    };
    let shape = |e: &Error| matches!(e, Error::Shape(_));
    let invalid = |e: &Error| matches!(e, Error::InvalidArgument(_));
    let limit = |e: &Error| matches!(e, Error::Limit(_));
    is(adam_err(&[g(0, 1001)], cfg), shape, "group past the end");
    is(
        adam_err(&[g(0, 10), g(9, 20)], cfg),
        invalid,
        "overlapping groups",
    );
    let many: Vec<ParamGroup> = (0..MAX_RANGES + 1).map(|i| g(i * 10, i * 10 + 5)).collect();
    is(adam_err(&many, cfg), limit, "too many groups");
    is(
        adam_err(&[ParamGroup::new(0..10, -1.0)], cfg),
        invalid,
        "negative lr scale",
    );
    for bad in [
        AdamConfig {
            lr: f32::NAN,
            ..cfg
        },
        AdamConfig { lr: -1e-3, ..cfg },
        AdamConfig { beta1: 1.0, ..cfg },
        AdamConfig { beta2: -0.1, ..cfg },
        AdamConfig {
            eps: f32::INFINITY,
            ..cfg
        },
        AdamConfig {
            clip: Some(f32::NAN),
            ..cfg
        },
        AdamConfig {
            clip: Some(-1.0),
            ..cfg
        },
    ] {
        is(adam_err(&[g(0, 10)], bad), invalid, &format!("{bad:?}"));
    }

    // Populations: no agents, and one agent's buffers for two agents' optimizer.
    let groups = [g(0, 10)];
    assert!(Adam::population(gpu, len, &groups, cfg, 0).is_err());
    let mut two = Adam::population(gpu, len, &groups, cfg, 2).unwrap();
    let one_agent = GpuBuffer::<f32>::new(gpu, "one agent", len).unwrap();
    let both = GpuBuffer::<f32>::new(gpu, "both agents", 2 * len).unwrap();
    let mut rec = Recorder::new(gpu);
    let e = two.record_step(&mut rec, &one_agent, &both).unwrap_err();
    assert!(e.to_string().contains("2 agents"), "{e}");
    let span = optim::PolyakSpan {
        source: 0,
        target: 0,
        len: 10,
    };
    let odd = GpuBuffer::<f32>::new(gpu, "odd", 2 * len + 1).unwrap();
    let e = optim::record_polyak_agents(&mut rec, &both, &odd, &[span], 0.01, 2).unwrap_err();
    assert!(e.to_string().contains("agents"), "{e}");
    assert!(optim::record_polyak_agents(&mut rec, &both, &both, &[span], 0.01, 0).is_err());
    drop(rec);

    let mut adam = Adam::new(gpu, len, &[g(0, 500), g(600, 1000)], cfg).unwrap();
    assert!(adam.set_lr(f32::NAN).is_err());
    let params = GpuBuffer::<f32>::new(gpu, "params", len).unwrap();
    let grads = GpuBuffer::<f32>::new(gpu, "grads", len).unwrap();
    let short = GpuBuffer::<f32>::new(gpu, "short", len - 1).unwrap();
    let mut rec = Recorder::new(gpu);
    let e = adam.record_step(&mut rec, &short, &grads).unwrap_err();
    assert!(e.to_string().contains("short"), "{e}");
    is(e, shape, "short params");
    is(
        adam.record_step(&mut rec, &params, &short).unwrap_err(),
        shape,
        "short grads",
    );
    is(
        adam.record_step(&mut rec, &params, &params).unwrap_err(),
        invalid,
        "params are grads",
    );

    let partials = GpuBuffer::<f32>::new(gpu, "partials", NORM_PARTIALS).unwrap();
    let few = GpuBuffer::<f32>::new(gpu, "few partials", 1).unwrap();
    let out = GpuBuffer::<f32>::new(gpu, "out", 1).unwrap();
    let norm = |rec: &mut Recorder, ranges: &[Range<usize>], p: &GpuBuffer<f32>, i: usize| {
        optim::record_grad_norm(rec, &grads, ranges, p, &out, i).unwrap_err()
    };
    is(
        norm(&mut rec, &[999..1001], &partials, 0),
        shape,
        "norm range past the end",
    );
    is(
        norm(&mut rec, &[usize::MAX - 1..usize::MAX], &partials, 0),
        shape,
        "norm range far past the end",
    );
    let (start, end) = (5, 3);
    is(
        norm(&mut rec, &[start..end], &partials, 0),
        invalid,
        "reversed norm range",
    );

    is(
        norm(&mut rec, &[0..10, 5..6], &partials, 0),
        invalid,
        "overlapping norm ranges",
    );
    is(
        norm(&mut rec, &[0..10], &partials, 1),
        shape,
        "norm output index",
    );
    let long = GpuBuffer::<f32>::new(gpu, "long grads", 5000).unwrap();
    is(
        optim::record_grad_norm(&mut rec, &long, &[0..1025], &few, &out, 0).unwrap_err(),
        shape,
        "too few partials",
    );
    // One chunk needs one partial sum.
    optim::record_grad_norm(&mut rec, &long, &[0..1024], &few, &out, 0).unwrap();
    assert_eq!(rec.dispatches(), 2);
    rec = Recorder::new(gpu);

    let target = GpuBuffer::<f32>::new(gpu, "target", 500).unwrap();
    is(
        optim::record_polyak(&mut rec, &params, &target, &[start..end], 0.01).unwrap_err(),
        invalid,
        "reversed polyak range",
    );
    is(
        optim::record_polyak(&mut rec, &params, &target, &[400..501], 0.01).unwrap_err(),
        shape,
        "polyak past the target",
    );
    is(
        optim::record_polyak(&mut rec, &target, &params, &[400..501], 0.01).unwrap_err(),
        shape,
        "polyak past the source",
    );
    is(
        optim::record_polyak(&mut rec, &params, &params, &[0..10], 0.01).unwrap_err(),
        invalid,
        "polyak onto itself",
    );
    is(
        optim::record_polyak(&mut rec, &params, &target, &[0..10], f32::NAN).unwrap_err(),
        invalid,
        "NaN tau",
    );
    let span = |source, target, len| PolyakSpan {
        source,
        target,
        len,
    };
    is(
        optim::record_polyak_spans(&mut rec, &params, &params, &[span(0, 5, 10)], 0.01)
            .unwrap_err(),
        invalid,
        "in-place source overlapping the target",
    );
    is(
        optim::record_polyak_spans(
            &mut rec,
            &params,
            &params,
            &[span(0, 100, 10), span(200, 5, 10)],
            0.01,
        )
        .unwrap_err(),
        invalid,
        "in-place source overlapping another span's target",
    );

    let scale = RunningScale::new(gpu, 0.01).unwrap();
    assert!(RunningScale::new(gpu, f32::NAN).is_err());
    is(
        scale.record_update(&mut rec, &params, 0, 0).unwrap_err(),
        invalid,
        "no values",
    );
    let big = GpuBuffer::<f32>::new(gpu, "big", MAX_SCALE_VALUES + 1).unwrap();
    let e = scale
        .record_update(&mut rec, &big, 0, MAX_SCALE_VALUES + 1)
        .unwrap_err();
    assert!(e.to_string().contains("4096"), "{e}");
    is(e, limit, "too many values");
    is(
        scale
            .record_update(&mut rec, &params, 901, 100)
            .unwrap_err(),
        shape,
        "values past the end",
    );
    is(
        scale.record_divide(&mut rec, &params, 1, 1000).unwrap_err(),
        shape,
        "divide past the end",
    );
    assert_eq!(rec.dispatches(), 0);
    // Zero-length work records nothing; a step with clipping records three dispatches.
    optim::record_polyak(&mut rec, &params, &target, &[3..3], 0.01).unwrap();
    scale.record_divide(&mut rec, &params, 5, 0).unwrap();
    assert_eq!(rec.dispatches(), 0);
    adam.record_step(&mut rec, &params, &grads).unwrap();
    assert_eq!(rec.dispatches(), 3);
    rec.submit().unwrap();
}

#[test]
fn every_pipeline_compiles_to_spirv() {
    // What tests/shaders.rs does for the other kernels: every combination the launch code
    // builds, through naga's override processing and SPIR-V backend (no GPU needed).
    use pompc::gpu::shader;
    let all = OptimKernel::all();
    assert!(all.contains(&OptimKernel::ScaleUpdate { sort_cap: 4096 }));
    assert!(all.contains(&OptimKernel::ScaleUpdate { sort_cap: 32 }));
    for k in all {
        let (spec, header, ov) = optim::pipeline_constants(k);
        let pre = shader::preprocess(spec.shader, &header).unwrap();
        let (module, info) = shader::validate(spec.shader, &pre).unwrap();
        let constants: naga::back::PipelineConstants =
            ov.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let (module, info) = naga::back::pipeline_constants::process_overrides(
            &module,
            &info,
            Some((naga::ShaderStage::Compute, spec.entry)),
            &constants,
        )
        .unwrap_or_else(|e| panic!("{k:?}: {e}"));
        let pipeline = naga::back::spv::PipelineOptions {
            shader_stage: naga::ShaderStage::Compute,
            entry_point: spec.entry.to_string(),
        };
        naga::back::spv::write_vec(
            &module,
            &info,
            &naga::back::spv::Options::default(),
            Some(&pipeline),
        )
        .unwrap_or_else(|e| panic!("{k:?} to SPIR-V: {e}"));
    }
    assert_eq!(optim::sort_cap(1), 32);
    assert_eq!(optim::sort_cap(255), 256);
    assert_eq!(optim::sort_cap(257), 512);
    assert_eq!(optim::sort_cap(4096), 4096);
}

#[test]
fn a_population_steps_each_agent_as_alone() {
    // Three agents' Adam (two groups, a gap, clipping that binds for some agents and not
    // others) and Polyak, side by side in one set of dispatches, against each agent's own
    // optimizer on its own buffers: parameters, moments, targets and every agent's state
    // (step, gradient norm, clip coefficient) equal, over three steps with new gradients.
    let mut r = rng("population adam");
    let (len, agents) = (2600, 3);
    let groups = [
        ParamGroup::new(0..900, 0.3),
        ParamGroup::new(1100..len, 1.0),
    ];
    let cfg = AdamConfig {
        lr: 1e-2,
        clip: Some(20.0),
        ..AdamConfig::TDMPC2
    };
    let polyak = [optim::PolyakSpan {
        source: 1500,
        target: 1500,
        len: 700,
    }];
    for gpu in gpus() {
        let p0: Vec<Vec<f32>> = (0..agents).map(|_| uniform(&mut r, len, 0.1)).collect();
        let t0: Vec<Vec<f32>> = (0..agents).map(|_| uniform(&mut r, len, 0.1)).collect();
        let pop_p = GpuBuffer::from_slice(gpu, "params", &p0.concat()).unwrap();
        let pop_t = GpuBuffer::from_slice(gpu, "target", &t0.concat()).unwrap();
        let pop_g = GpuBuffer::<f32>::new(gpu, "grads", agents * len).unwrap();
        let mut pop = Adam::population(gpu, len, &groups, cfg, agents).unwrap();
        let alone_p: Vec<_> = p0
            .iter()
            .map(|p| GpuBuffer::from_slice(gpu, "params", p).unwrap())
            .collect();
        let alone_t: Vec<_> = t0
            .iter()
            .map(|t| GpuBuffer::from_slice(gpu, "target", t).unwrap())
            .collect();
        let alone_g: Vec<_> = (0..agents)
            .map(|_| GpuBuffer::<f32>::new(gpu, "grads", len).unwrap())
            .collect();
        let mut alone: Vec<Adam> = (0..agents)
            .map(|_| Adam::new(gpu, len, &groups, cfg).unwrap())
            .collect();
        for step in 0..3 {
            // Agent a's gradient norm about 5 * (a + 1) * (step + 1): clipped at 20 or not.
            let g: Vec<Vec<f32>> = (0..agents)
                .map(|a| {
                    let s = 0.2 * (a + 1) as f32 * (step + 1) as f32;
                    uniform(&mut r, len, s)
                })
                .collect();
            pop_g.upload(gpu, &g.concat()).unwrap();
            let mut rec = Recorder::new(gpu);
            pop.record_step(&mut rec, &pop_p, &pop_g).unwrap();
            optim::record_polyak_agents(&mut rec, &pop_p, &pop_t, &polyak, 0.01, agents).unwrap();
            for a in 0..agents {
                alone_g[a].upload(gpu, &g[a]).unwrap();
                alone[a]
                    .record_step(&mut rec, &alone_p[a], &alone_g[a])
                    .unwrap();
                optim::record_polyak_spans(&mut rec, &alone_p[a], &alone_t[a], &polyak, 0.01)
                    .unwrap();
            }
            rec.submit().unwrap();
        }
        let tag = gpu.describe();
        let states = pop.read_states(gpu).unwrap();
        assert_eq!(states.len(), agents);
        let (pp, pt, pm, pv) = (
            pop_p.download(gpu).unwrap(),
            pop_t.download(gpu).unwrap(),
            pop.m().download(gpu).unwrap(),
            pop.v().download(gpu).unwrap(),
        );
        let mut clipped = [false, false];
        for a in 0..agents {
            let s = alone[a].read_state(gpu).unwrap();
            assert_eq!(states[a], s, "agent {a} state ({tag})");
            clipped[(s.clip_coef < 1.0) as usize] = true;
            let range = a * len..(a + 1) * len;
            for (what, got, want) in [
                (
                    "params",
                    &pp[range.clone()],
                    alone_p[a].download(gpu).unwrap(),
                ),
                (
                    "target",
                    &pt[range.clone()],
                    alone_t[a].download(gpu).unwrap(),
                ),
                ("m", &pm[range.clone()], alone[a].m().download(gpu).unwrap()),
                ("v", &pv[range.clone()], alone[a].v().download(gpu).unwrap()),
            ] {
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "agent {a} {what} differs from alone ({tag})");
            }
        }
        assert_eq!(clipped, [true, true], "some agents clipped, some not");
    }
}

#[test]
fn population_running_scales_move_as_each_alone() {
    // Three agents' scales (values with ties, negatives, a NaN; more than one sort size)
    // updated together over three steps, against each agent's own scale: equal bit for bit,
    // and the one-agent calls refuse a population.
    let mut r = rng("population scales");
    let (agents, n, stride) = (3, 300, 311);
    for gpu in gpus() {
        let pop = RunningScale::population(gpu, 0.01, agents).unwrap();
        let alone: Vec<RunningScale> = (0..agents)
            .map(|_| RunningScale::new(gpu, 0.01).unwrap())
            .collect();
        for step in 0..3 {
            let mut all = vec![0.0f32; 5 + agents * stride];
            let per: Vec<Vec<f32>> = (0..agents)
                .map(|a| scale_values(&mut r, n, 5.0 * (a + step + 1) as f32))
                .collect();
            for (a, v) in per.iter().enumerate() {
                all[5 + a * stride..5 + a * stride + n].copy_from_slice(v);
            }
            all[5 + stride + 7] = f32::NAN;
            let buf = GpuBuffer::from_slice(gpu, "values", &all).unwrap();
            let mut rec = Recorder::new(gpu);
            pop.record_update_agents(&mut rec, &buf, 5, n, stride)
                .unwrap();
            for (a, s) in alone.iter().enumerate() {
                s.record_update(&mut rec, &buf, 5 + a * stride, n).unwrap();
            }
            rec.submit().unwrap();
        }
        let got = pop.read_values(gpu).unwrap();
        for (a, s) in alone.iter().enumerate() {
            let want = s.read_value(gpu).unwrap();
            assert_eq!(
                got[a].to_bits(),
                want.to_bits(),
                "agent {a}: {} vs {want}",
                got[a]
            );
        }
        assert!(got[0] != got[2], "the agents' scales differ");
        let buf = GpuBuffer::<f32>::new(gpu, "values", 5 + (agents - 1) * stride + n).unwrap();
        let mut rec = Recorder::new(gpu);
        assert!(
            pop.record_update_agents(&mut rec, &buf, 5, n, stride)
                .is_ok()
        );
        assert!(pop.record_update(&mut rec, &buf, 0, n).is_err());
        assert!(pop.record_divide(&mut rec, &buf, 0, n).is_err());
        // The last agent's values past the buffer.
        assert!(
            pop.record_update_agents(&mut rec, &buf, 6, n, stride)
                .is_err()
        );
        assert!(RunningScale::population(gpu, 0.01, 0).is_err());
    }
}
