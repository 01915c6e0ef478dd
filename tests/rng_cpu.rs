//! CPU-only tests of `pompc::rng` (Philox4x32-10 + float conversions) and a
//! static check of its WGSL twin `shaders/common/rng.wgsl`.
//!
//! Run with `--nocapture` to see the measured accuracy figures.

use pompc::rng::{
    Philox, gumbel1, gumbel4, gumbels, ks_distance_normal, ln_f32, mulhilo32, mulhilo32_halves,
    normal_cdf, normal4, normals, philox, philox4x32_10, seed_words, sincos_2pi, u01, u01_open,
    u01_open_closed, u32s, uniforms,
};

mod common;

use common::PHILOX4X32_10_KAT;

const RNG_WGSL: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/shaders/common/rng.wgsl"
));

#[test]
fn philox4x32_10_matches_random123_kat() {
    for (ctr, key, want) in PHILOX4X32_10_KAT {
        let got = philox4x32_10(ctr, key);
        assert_eq!(
            got, want,
            "ctr {ctr:08x?} key {key:08x?}: got {got:08x?}, want {want:08x?}"
        );
    }
}

#[test]
fn philox_keying_and_layout_of_words() {
    // key = [seed_lo, seed_hi], ctr = [counter_lo, counter_hi, stream_lo, stream_hi].
    let seed = 0x299f_31d0_a409_3822_u64;
    let stream = 0x0370_7344_1319_8a2e_u64;
    let counter = 0x85a3_08d3_243f_6a88_u64;
    assert_eq!(seed_words(seed), [0xa409_3822, 0x299f_31d0]);
    assert_eq!(philox(seed, stream, counter), PHILOX4X32_10_KAT[2].2);
    // The 32-bit form used by WGSL philox(seed, stream, counter): ctr (counter, 0, stream, 0).
    assert_eq!(
        philox(seed, 7, 9),
        philox4x32_10([9, 0, 7, 0], [0xa409_3822, 0x299f_31d0])
    );
    // Every input word matters.
    let base = philox(1, 2, 3);
    for other in [philox(2, 2, 3), philox(1, 3, 3), philox(1, 2, 4)] {
        assert_ne!(base, other);
    }
    for other in [philox(1 << 32 | 1, 2, 3), philox(1, 1 << 32 | 2, 3)] {
        assert_ne!(base, other);
    }
    assert_ne!(base, philox(1, 2, 1 << 32 | 3));
}

#[test]
fn philox_struct_walks_the_counter() {
    let mut g = Philox::new(42, 5);
    for i in 0..10 {
        assert_eq!(g.next_block(), philox(42, 5, i));
    }
    assert_eq!(g.counter, 10);
}

#[test]
fn mulhilo_from_16_bit_halves_is_exact() {
    let edge = [
        0u32,
        1,
        2,
        0x7FFF,
        0x8000,
        0xFFFF,
        0x1_0000,
        0x1_0001,
        0x7FFF_FFFF,
        0x8000_0000,
        0xFFFE_FFFF,
        0xFFFF_0000,
        0xFFFF_FFFE,
        0xFFFF_FFFF,
        0xD251_1F53,
        0xCD9E_8D57,
    ];
    for a in edge {
        for b in edge {
            assert_eq!(mulhilo32_halves(a, b), mulhilo32(a, b), "{a:#x} * {b:#x}");
        }
    }
    let p = u64::from(0xFFFF_FFFFu32) * u64::from(0xFFFF_FFFFu32);
    assert_eq!(mulhilo32(u32::MAX, u32::MAX), ((p >> 32) as u32, p as u32));
    for w in u32s(3, 0, 1 << 20).chunks_exact(2) {
        assert_eq!(mulhilo32_halves(w[0], w[1]), mulhilo32(w[0], w[1]));
    }
}

#[test]
fn uniform_conversions_are_exact_and_in_range() {
    const P24: f32 = 1.0 / 16_777_216.0;
    assert_eq!(u01(0), 0.0);
    assert_eq!(u01(u32::MAX), 1.0 - P24);
    assert_eq!(u01_open_closed(0), P24);
    assert_eq!(u01_open_closed(u32::MAX), 1.0);
    assert_eq!(u01_open(0), P24);
    assert_eq!(u01_open(u32::MAX), 1.0 - P24);
    // Every 24-bit (resp. 23-bit) value maps exactly to the intended grid point.
    for k in 0..1u32 << 24 {
        let x = k << 8 | 0xA5;
        assert_eq!(f64::from(u01(x)), f64::from(k) / 16_777_216.0);
        assert_eq!(
            f64::from(u01_open_closed(x)),
            f64::from(k + 1) / 16_777_216.0
        );
    }
    for k in 0..1u32 << 23 {
        let u = u01_open(k << 9 | 0x1FF);
        assert_eq!(f64::from(u), (f64::from(k) + 0.5) / 8_388_608.0);
        assert!(u > 0.0 && u < 1.0);
    }
}

/// One f32 ulp at the magnitude of `v` (for normal values).
fn ulp_f32(v: f64) -> f64 {
    let e = v.abs().log2().floor();
    2f64.powf(e - 23.0)
}

#[test]
fn ln_f32_accuracy() {
    assert_eq!(ln_f32(1.0).to_bits(), 0.0f32.to_bits(), "ln(1) must be +0");
    let mut max_rel = 0f64;
    let mut max_ulp = 0f64;
    let mut worst = 0f32;
    let mut check = |x: f32| {
        let got = f64::from(ln_f32(x));
        let want = f64::from(x).ln();
        if want == 0.0 {
            assert_eq!(got, 0.0);
            return;
        }
        let rel = ((got - want) / want).abs();
        let ulp = (got - want).abs() / ulp_f32(want);
        if rel > max_rel {
            max_rel = rel;
            worst = x;
        }
        max_ulp = max_ulp.max(ulp);
    };
    // Every value u01_open_closed can produce: k * 2^-24, k = 1..=2^24 (2^-24 and 1.0 included).
    for k in 1..=1u32 << 24 {
        check(k as f32 / 16_777_216.0);
    }
    // Every value u01_open can produce, and the Gumbel inner range up to 32.
    for k in 0..1u32 << 23 {
        check(u01_open(k << 9));
    }
    let (lo, hi) = (f32::MIN_POSITIVE.to_bits(), 32.0f32.to_bits());
    for bits in (lo..=hi).step_by(61) {
        check(f32::from_bits(bits));
    }
    eprintln!("ln_f32: max rel err {max_rel:.3e} (at x = {worst:e}), max {max_ulp:.2} ulp");
    assert!(
        max_rel <= 4e-7,
        "ln_f32 max rel err {max_rel:e} at {worst:e}"
    );
    assert!(max_ulp <= 4.0, "ln_f32 max ulp err {max_ulp}");
}

#[test]
fn sincos_2pi_accuracy() {
    assert_eq!(sincos_2pi(0.0), (0.0, 1.0));
    assert_eq!(sincos_2pi(0.25).0, 1.0);
    assert_eq!(sincos_2pi(0.5).1, -1.0);
    assert_eq!(sincos_2pi(0.75).0, -1.0);
    let mut max_err = 0f64;
    let mut worst = 0f32;
    let mut check = |t: f32| {
        let (s, c) = sincos_2pi(t);
        let a = std::f64::consts::TAU * f64::from(t);
        let err = (f64::from(s) - a.sin())
            .abs()
            .max((f64::from(c) - a.cos()).abs());
        if err > max_err {
            max_err = err;
            worst = t;
        }
    };
    // Every value u01 can produce: t = k * 2^-24 in [0, 1).
    for k in 0..1u32 << 24 {
        check(k as f32 / 16_777_216.0);
    }
    // The reduction is exact for any finite t, so arguments outside [0, 1) work too.
    for k in -(1i32 << 20)..(1 << 20) {
        check(k as f32 * 3.814_697_3e-6 + 0.123);
    }
    check(1e6 + 0.375);
    eprintln!("sincos_2pi: max abs err {max_err:.3e} (at t = {worst:e})");
    assert!(
        max_err <= 3e-7,
        "sincos_2pi max abs err {max_err:e} at {worst:e}"
    );
}

#[test]
fn normal_cdf_known_values() {
    // Reference values: 0.5 * erfc(-x / sqrt 2) from CPython's math.erfc.
    let cases = [
        (0.0, 0.5),
        (1.0, 0.841_344_746_068_542_9),
        (-1.0, 0.158_655_253_931_457_07),
        (2.0, 0.977_249_868_051_820_8),
        (-3.0, 0.001_349_898_031_630_095_7),
        (-1.959_963_984_540_054, 0.025),
        (3.5, 0.999_767_370_920_964_5),
        (-3.6, 1.591_085_901_575_34e-4),
        (-4.0, 3.167_124_183_311_996_5e-5),
        (-5.0, 2.866_515_718_791_946e-7),
        (-6.0, 9.865_876_450_377_012e-10),
        (-8.0, 6.220_960_574_271_819e-16),
        (0.3, 0.617_911_422_188_952_6),
        (-0.7, 0.241_963_652_223_073_06),
    ];
    for (x, want) in cases {
        let got = normal_cdf(x);
        assert!(
            (got - want).abs() < 1e-12,
            "Phi({x}) = {got:e}, want {want:e}"
        );
        if want < 1e-3 {
            assert!(((got - want) / want).abs() < 1e-9, "Phi({x}) relative");
        }
    }
    // Continuity across the series / continued-fraction switch (|x| = 2.5 sqrt 2).
    let x0 = 2.5 * std::f64::consts::SQRT_2;
    for x in [-x0, x0] {
        let (a, b) = (normal_cdf(x - 1e-9), normal_cdf(x + 1e-9));
        let pdf = (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
        assert!(((b - a) / 2e-9 - pdf).abs() < 1e-5, "jump at {x}");
    }
    // Symmetry and monotonicity on a grid.
    let mut prev = 0.0;
    for i in -4000..=4000 {
        let x = f64::from(i) * 2e-3;
        let p = normal_cdf(x);
        assert!((p + normal_cdf(-x) - 1.0).abs() < 1e-15);
        assert!(p >= prev);
        prev = p;
    }
    assert_eq!(normal_cdf(-40.0), 0.0);
    assert_eq!(normal_cdf(40.0), 1.0);
}

fn mean_var(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var)
}

const N_STAT: usize = 1_000_000;

#[test]
fn normals_have_standard_normal_distribution() {
    let z: Vec<f64> = normals(0x5EED_0001, 3, N_STAT)
        .into_iter()
        .map(f64::from)
        .collect();
    assert!(z.iter().all(|x| x.is_finite() && x.abs() < 5.8));
    let (mean, var) = mean_var(&z);
    let crit = 1.95 / (N_STAT as f64).sqrt();
    let d = ks_distance_normal(&mut z.clone());
    eprintln!("normals: mean {mean:.2e}, var {var:.5}, KS {d:.2e} (crit {crit:.2e})");
    assert!(mean.abs() < 0.005, "mean {mean}");
    assert!((var - 1.0).abs() < 0.005, "var {var}");
    assert!(d < crit, "KS distance {d} >= {crit}");
    // Box-Muller pairs (lanes 0/1 and 2/3) must be uncorrelated, also in their squares.
    let (mut c01, mut c23, mut sq01) = (0.0, 0.0, 0.0);
    for b in z.chunks_exact(4) {
        c01 += b[0] * b[1];
        c23 += b[2] * b[3];
        sq01 += (b[0] * b[0] - 1.0) * (b[1] * b[1] - 1.0);
    }
    let m = (N_STAT / 4) as f64;
    for (name, c) in [("c01", c01 / m), ("c23", c23 / m), ("sq01", sq01 / m)] {
        assert!(c.abs() < 0.02, "{name} = {c}");
    }
    // The KS check has power: a 1% shift or a 2% scale error is rejected.
    let mut shifted: Vec<f64> = z.iter().map(|x| x + 0.01).collect();
    assert!(ks_distance_normal(&mut shifted) > crit);
    let mut scaled: Vec<f64> = z.iter().map(|x| x * 1.02).collect();
    assert!(ks_distance_normal(&mut scaled) > crit);
}

#[test]
fn gumbels_have_standard_gumbel_distribution() {
    const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;
    let g: Vec<f64> = gumbels(0x5EED_0002, 11, N_STAT)
        .into_iter()
        .map(f64::from)
        .collect();
    assert!(g.iter().all(|x| x.is_finite()));
    let (mean, var) = mean_var(&g);
    let pi2_6 = std::f64::consts::PI.powi(2) / 6.0;
    // KS against the Gumbel CDF exp(-exp(-x)).
    let mut s = g.clone();
    s.sort_unstable_by(f64::total_cmp);
    let n = s.len() as f64;
    let d = s
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = (-(-x).exp()).exp();
            (f - i as f64 / n).max((i + 1) as f64 / n - f)
        })
        .fold(0.0, f64::max);
    let crit = 1.95 / n.sqrt();
    eprintln!("gumbels: mean {mean:.5}, var {var:.5} (pi^2/6 = {pi2_6:.5}), KS {d:.2e}");
    assert!((mean - EULER_GAMMA).abs() < 0.01, "mean {mean}");
    assert!((var - pi2_6).abs() < 0.03, "var {var}");
    assert!(d < crit, "KS distance {d} >= {crit}");
}

#[test]
fn extreme_words_give_finite_draws() {
    for w in [0, 1, 0xFF, 0x100, 0x1FF, 0x200, u32::MAX - 0x1FF, u32::MAX] {
        let n = normal4([w; 4]);
        assert!(n.iter().all(|x| x.is_finite()), "normal4({w:#x}) = {n:?}");
        let g = gumbel1(w);
        assert!(g.is_finite(), "gumbel1({w:#x}) = {g}");
    }
    // Largest radius: u = 2^-24 -> sqrt(48 ln 2); angle 0 -> all of it in lane 0.
    let n = normal4([0, 0, 0, 0]);
    assert!((f64::from(n[0]) - (48f64 * 2f64.ln()).sqrt()).abs() < 1e-5);
    assert_eq!(n[1], 0.0);
    // u = 1 (top 24 bits set): radius +0, never sqrt(-0).
    let n = normal4([u32::MAX, 0, u32::MAX, 0xFF]);
    assert!(n.iter().all(|x| x.to_bits() == 0), "{n:?}");
}

#[test]
fn fill_helpers_use_the_gpu_layout() {
    let (seed, stream) = (0xDEAD_BEEF_0123_4567, 9);
    let n = 4 * 37 + 3;
    let (w, u, z, g) = (
        u32s(seed, stream, n),
        uniforms(seed, stream, n),
        normals(seed, stream, n),
        gumbels(seed, stream, n),
    );
    assert_eq!((w.len(), u.len(), z.len(), g.len()), (n, n, n, n));
    for j in 0..n {
        let block = philox(seed, u64::from(stream), (j / 4) as u64);
        let lane = j % 4;
        assert_eq!(w[j], block[lane]);
        assert_eq!(u[j].to_bits(), u01(block[lane]).to_bits());
        assert_eq!(z[j].to_bits(), normal4(block)[lane].to_bits());
        assert_eq!(g[j].to_bits(), gumbel4(block)[lane].to_bits());
    }
    // A prefix of a longer fill is the shorter fill; streams and seeds differ.
    assert_eq!(normals(seed, stream, 2 * n)[..n], z[..]);
    assert_ne!(u32s(seed, stream + 1, n), w);
    assert_ne!(u32s(seed + 1, stream, n), w);
    assert!(normals(seed, stream, 0).is_empty());
}

/// The snippet must parse and validate as WGSL on its own and expose the
/// documented functions; the kernels paste it in via `#import common/rng`.
#[test]
fn wgsl_snippet_parses_and_has_the_documented_api() {
    use naga::{Scalar, TypeInner};
    // It is pasted into other modules: no directives, bindings or entry points.
    for bad in ["#", "enable", "requires", "diagnostic", "@"] {
        assert!(
            !RNG_WGSL.lines().any(|l| l.trim_start().starts_with(bad)),
            "rng.wgsl must not contain a line starting with {bad:?}"
        );
    }
    for bad in ["@compute", "@group", "@binding", "var<"] {
        assert!(!RNG_WGSL.contains(bad), "rng.wgsl must not contain {bad:?}");
    }
    let module = naga::front::wgsl::parse_str(RNG_WGSL)
        .unwrap_or_else(|e| panic!("{}", e.emit_to_string(RNG_WGSL)));
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{}", e.emit_to_string(RNG_WGSL)));
    let ty = |h: naga::Handle<naga::Type>| {
        let scalar = |s: Scalar| match s {
            Scalar::U32 => "u32",
            Scalar::F32 => "f32",
            Scalar::I32 => "i32",
            _ => "?",
        };
        match module.types[h].inner {
            TypeInner::Scalar(s) => scalar(s).to_string(),
            TypeInner::Vector { size, scalar: s } => format!("vec{}<{}>", size as u8, scalar(s)),
            ref other => format!("{other:?}"),
        }
    };
    let sig = |name: &str| -> Option<String> {
        let (_, f) = module
            .functions
            .iter()
            .find(|(_, f)| f.name.as_deref() == Some(name))?;
        let args: Vec<String> = f.arguments.iter().map(|a| ty(a.ty)).collect();
        let ret = f.result.as_ref().map_or("()".into(), |r| ty(r.ty));
        Some(format!("({}) -> {ret}", args.join(", ")))
    };
    let expected = [
        ("philox4x32_10", "(vec4<u32>, vec2<u32>) -> vec4<u32>"),
        ("philox", "(vec2<u32>, u32, u32) -> vec4<u32>"),
        ("u01", "(u32) -> f32"),
        ("u01_open_closed", "(u32) -> f32"),
        ("u01_open", "(u32) -> f32"),
        ("ln_f32", "(f32) -> f32"),
        ("sincos_2pi", "(f32) -> vec2<f32>"),
        ("normal4", "(vec4<u32>) -> vec4<f32>"),
        ("gumbel1", "(u32) -> f32"),
        ("gumbel4", "(vec4<u32>) -> vec4<f32>"),
    ];
    for (name, want) in expected {
        assert_eq!(sig(name).as_deref(), Some(want), "WGSL fn {name}");
    }
}

/// Every decimal float literal in the WGSL must denote the same f32 whether a
/// compiler parses it straight to f32 or goes through f64 first, so that the
/// GPU polynomials use exactly the Rust coefficients.
#[test]
fn wgsl_float_literals_round_the_same_everywhere() {
    let mut count = 0;
    for line in RNG_WGSL.lines() {
        let code = line.split("//").next().unwrap();
        let bytes = code.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let starts_number = bytes[i].is_ascii_digit()
                && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
            if !starts_number {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric()
                    || bytes[i] == b'.'
                    || (matches!(bytes[i], b'-' | b'+') && matches!(bytes[i - 1], b'e' | b'E')))
            {
                i += 1;
            }
            let lit = &code[start..i];
            if lit.starts_with("0x") || !(lit.contains('.') || lit.contains('e')) {
                continue; // integer literal
            }
            let digits = lit.trim_end_matches('f');
            let direct: f32 = digits.parse().unwrap();
            let via_f64 = digits.parse::<f64>().unwrap() as f32;
            assert_eq!(direct.to_bits(), via_f64.to_bits(), "literal {lit}");
            count += 1;
        }
    }
    assert!(count >= 25, "only {count} float literals found");
}
