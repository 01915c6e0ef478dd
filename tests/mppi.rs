//! Classic MPPI over WGSL dynamics against the Rust mirror (same dynamics written in Rust,
//! same Philox noise): costs, weights and updated controls within 1e-4 over several warm-
//! started steps; errors for bad WGSL (at the user's own lines), dimensions and parameters.

mod common;

use common::gpus;
use pompc::planner::custom::{MAX_STAGED_CONTROLS, MAX_STAGED_PARAMS, Mppi, MppiConfig, Problem};
use pompc::reference::mppi::{self as mirror, RustProblem};
use pompc::{Error, Gpu};
use rand::Rng;

/// A damped pendulum on a cart-free pivot, torque-controlled, pulled towards an angle given
/// as parameter 0: nonlinear (sin), two states, one control.
const PENDULUM: &str = "
fn dynamics(x: State, u: Control, t: u32) -> State {
    let th = x[0];
    let w = x[1];
    let acc = -9.81 * sin(th) - 0.1 * w + 3.0 * u[0];
    let w2 = w + DT * acc;
    return State(th + DT * w2, w2);
}

fn running_cost(x: State, u: Control, t: u32) -> f32 {
    let d = x[0] - param(0u);
    return d * d + 0.1 * x[1] * x[1] + 0.01 * u[0] * u[0];
}

fn terminal_cost(x: State) -> f32 {
    let d = x[0] - param(0u);
    return 10.0 * d * d;
}
";

struct Pendulum;

impl RustProblem for Pendulum {
    fn state_dim(&self) -> usize {
        2
    }
    fn control_dim(&self) -> usize {
        1
    }
    fn dynamics(&self, x: &[f64], u: &[f64], _t: usize, dt: f64, _p: &[f32]) -> Vec<f64> {
        let acc = -9.81 * x[0].sin() - 0.1 * x[1] + 3.0 * u[0];
        let w2 = x[1] + dt * acc;
        vec![x[0] + dt * w2, w2]
    }
    fn running_cost(&self, x: &[f64], u: &[f64], _t: usize, p: &[f32]) -> f64 {
        let d = x[0] - p[0] as f64;
        d * d + 0.1 * x[1] * x[1] + 0.01 * u[0] * u[0]
    }
    fn terminal_cost(&self, x: &[f64], p: &[f32]) -> f64 {
        let d = x[0] - p[0] as f64;
        10.0 * d * d
    }
}

fn pendulum() -> Problem {
    pendulum_with_params(1)
}

/// The pendulum with a parameter buffer of `len` (only parameter 0 is read).
fn pendulum_with_params(len: usize) -> Problem {
    Problem {
        name: "pendulum".into(),
        state_dim: 2,
        control_dim: 1,
        param_len: len,
        wgsl: PENDULUM.into(),
    }
}

/// |gpu - mirror| <= tol * max(|mirror|, floor): relative, with a floor for values near 0
/// (f32 sums of K weighted perturbations are exact to about 1e-7 of their terms, not of a
/// result that happens to cancel).
fn close(what: &str, gpu: &[f32], cpu: &[f64], tol: f64, floor: f64) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: length");
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        let d = (*g as f64 - c).abs();
        assert!(
            d <= tol * c.abs().max(floor),
            "{what}[{i}]: gpu {g} mirror {c} (difference {d:e})"
        );
    }
}

fn parity(gpu: &Gpu, cfg: MppiConfig, steps: usize) {
    parity_with_params(gpu, cfg, steps, 1);
}

fn parity_with_params(gpu: &Gpu, cfg: MppiConfig, steps: usize, param_len: usize) {
    let mut mppi = Mppi::new(gpu, pendulum_with_params(param_len), cfg.clone()).unwrap();
    let mut params = vec![-7.0f32; param_len];
    params[0] = 1.2;
    mppi.set_params(&params).unwrap();
    let mut u = vec![0.0f64; cfg.horizon];
    let mut x = [0.3f32, -0.2];
    for s in 0..steps {
        if s > 0 {
            mirror::shift(&mut u, 1);
        }
        let g = mppi.step(&x).unwrap();
        let c = mirror::step(&Pendulum, &cfg, &x, &u, &params, s as u32);
        let (costs, weights) = mppi.costs_and_weights().unwrap();
        let tag = format!("step {s} K={} H={}", cfg.samples, cfg.horizon);
        let wmax = c.weights.iter().cloned().fold(0.0, f64::max);
        close(&format!("{tag}: costs"), &costs, &c.costs, 1e-4, 1.0);
        close(
            &format!("{tag}: weights"),
            &weights,
            &c.weights,
            1e-4,
            0.01 * wmax,
        );
        // Controls live in [-1, 1]: 1e-4 of 0.05 is 5e-6 absolute near zero.
        let u_gpu = mppi.controls().unwrap();
        close(&format!("{tag}: controls"), &u_gpu, &c.controls, 1e-4, 0.05);
        assert!(((g.min_cost as f64) - c.min_cost).abs() <= 1e-4 * c.min_cost.abs().max(1.0));
        assert!(((g.control[0] as f64) - c.controls[0]).abs() <= 1e-4);
        u = c.controls;
        // Advance the state a little so each step starts elsewhere.
        x = [x[0] + 0.05, x[1] * 0.9];
    }
}

#[test]
fn gpu_matches_the_rust_mirror_over_warm_started_steps() {
    for gpu in gpus() {
        let cfg = MppiConfig {
            horizon: 12,
            samples: 200,
            lambda: 0.5,
            sigma: vec![0.6],
            u_min: vec![-1.0],
            u_max: vec![0.8],
            seed: 9,
            ..MppiConfig::new(1)
        };
        parity(gpu, cfg.clone(), 3);
        parity(
            gpu,
            MppiConfig {
                trusted: true,
                ..cfg.clone()
            },
            2,
        );
        // A horizon over the shift's 256-wide chunks, and a noise length (301 x 37) that is
        // no multiple of a Philox block.
        parity(
            gpu,
            MppiConfig {
                horizon: 301,
                samples: 37,
                ..cfg.clone()
            },
            3,
        );
        // The rollout reads from storage what does not fit its workgroup memory: a control
        // sequence over MAX_STAGED_CONTROLS, a parameter buffer over MAX_STAGED_PARAMS (the
        // cases above stage both); and 70 samples leave the second workgroup's last threads
        // past K, which must still reach the staging's barrier.
        parity_with_params(
            gpu,
            MppiConfig {
                horizon: MAX_STAGED_CONTROLS + 1,
                samples: 70,
                ..cfg.clone()
            },
            2,
            MAX_STAGED_PARAMS + 1,
        );
        parity_with_params(gpu, MppiConfig { samples: 70, ..cfg }, 2, MAX_STAGED_PARAMS);
    }
}

#[test]
fn plans_towards_the_parameter_goal() {
    let gpu = &gpus()[1];
    let cfg = MppiConfig {
        horizon: 40,
        samples: 512,
        lambda: 0.3,
        sigma: vec![0.8],
        ..MppiConfig::new(1)
    };
    let mut mppi = Mppi::new(gpu, pendulum(), cfg.clone()).unwrap();
    // Goal above: push positive; goal below: push negative.
    mppi.set_params(&[1.0]).unwrap();
    let up = mppi.step(&[0.0, 0.0]).unwrap().control[0];
    mppi.reset().unwrap();
    mppi.set_params(&[-1.0]).unwrap();
    let down = mppi.step(&[0.0, 0.0]).unwrap().control[0];
    assert!(up > 0.1 && down < -0.1, "up {up} down {down}");
}

#[test]
fn errors_name_the_problem() {
    let gpu = &gpus()[0];
    // A typo on line 4 of the user's code.
    let bad = Problem {
        wgsl: "fn dynamics(x: State, u: Control, t: u32) -> State {\n    return x;\n}\n\
               fn running_cost(x: State, u: Control, t: u32) -> f32 { return undefined_thing; }\n\
               fn terminal_cost(x: State) -> f32 { return 0.0; }\n"
            .into(),
        ..pendulum()
    };
    let e = Mppi::new(gpu, bad, MppiConfig::new(1)).err().unwrap();
    assert!(matches!(e, Error::Shader { .. }), "{e:?}");
    assert!(e.to_string().contains("user:4:"), "{e}");
    // Source that ends mid-declaration: the parser stops at the end of the user's code,
    // which the message names (not a line past the joined module).
    for (wgsl, line) in [
        ("fn dynamics(", "user:1"),
        ("\n\nfn dynamics(x: State", "user:3"),
    ] {
        let cut = Problem {
            wgsl: wgsl.into(),
            ..pendulum()
        };
        let e = Mppi::new(gpu, cut, MppiConfig::new(1)).err().unwrap();
        assert!(matches!(e, Error::Shader { .. }), "{e:?}");
        let e = e.to_string();
        assert!(e.contains(line) && !e.contains("<end>"), "{wgsl:?}: {e}");
    }
    // A missing function.
    let missing = Problem {
        wgsl: "fn dynamics(x: State, u: Control, t: u32) -> State { return x; }\n".into(),
        ..pendulum()
    };
    let e = Mppi::new(gpu, missing, MppiConfig::new(1))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("running_cost"), "{e}");
    // Wrong sizes.
    assert!(matches!(
        Mppi::new(gpu, pendulum(), MppiConfig::new(2)).err(),
        Some(Error::Shape(_))
    ));
    let mut m = Mppi::new(
        gpu,
        pendulum(),
        MppiConfig {
            samples: 64,
            horizon: 5,
            ..MppiConfig::new(1)
        },
    )
    .unwrap();
    assert!(matches!(m.set_params(&[1.0, 2.0]), Err(Error::Shape(_))));
    assert!(matches!(m.step(&[0.0]), Err(Error::Shape(_))));
    assert!(m.step(&[f32::NAN, 0.0]).is_err());
    assert!(matches!(m.set_controls(&[0.0; 3]), Err(Error::Shape(_))));
    let zero = Problem {
        state_dim: 0,
        ..pendulum()
    };
    assert!(Mppi::new(gpu, zero, MppiConfig::new(1)).is_err());
    // More noise than a buffer may hold.
    let huge = MppiConfig {
        samples: 65536,
        horizon: 1000,
        ..MppiConfig::new(1)
    };
    let max = gpu.limits().max_storage_buffer_binding_size;
    if 65536u64 * 1000 * 4 > max {
        let e = Mppi::new(gpu, pendulum(), huge).err().unwrap().to_string();
        assert!(e.contains("samples fit"), "{e}");
    }
}

/// Each step encodes the next one ahead, assuming it follows unchanged; whatever happens in
/// between (new parameters, a control sequence set by hand so the next step must not shift,
/// a failed step, more or fewer kept rollouts, timestamps switched) must still give the
/// mirror's step and the kept rollouts asked for.
#[test]
fn steps_encoded_ahead_follow_every_change_made_between_steps() {
    let mut r = common::rng("mppi_prepared");
    for gpu in gpus() {
        let cfg = MppiConfig {
            horizon: 9,
            samples: 150,
            lambda: 0.7,
            sigma: vec![0.5],
            u_min: vec![-0.9],
            u_max: vec![1.0],
            seed: r.random(),
            ..MppiConfig::new(1)
        };
        let mut mppi = Mppi::new(gpu, pendulum(), cfg.clone()).unwrap();
        let mut params = [r.random_range(-2.0f32..2.0)];
        mppi.set_params(&params).unwrap();
        let mut u = vec![0.0f64; cfg.horizon];
        let mut shift = false;
        let mut kept = 0;
        let mut s = 0u32;
        for _ in 0..14 {
            match r.random_range(0..6) {
                0 => {
                    params = [r.random_range(-2.0f32..2.0)];
                    mppi.set_params(&params).unwrap();
                }
                1 => {
                    let set: Vec<f32> = (0..cfg.horizon)
                        .map(|_| r.random_range(-0.9f32..1.0))
                        .collect();
                    mppi.set_controls(&set).unwrap();
                    u = set.iter().map(|&v| v as f64).collect();
                    shift = false;
                }
                2 => {
                    kept = r.random_range(0..cfg.samples + 5).min(cfg.samples);
                    mppi.keep_rollouts(kept).unwrap();
                }
                3 => mppi.set_timestamps(r.random()),
                4 => {
                    // Every cost overflows: the step fails after its shift, and consumes its
                    // noise stream; the control sequence stays, and the next step must not
                    // shift again.
                    mppi.set_params(&[3e38]).unwrap();
                    let x = [0.1f32, 0.0];
                    assert!(mppi.step(&x).is_err(), "step with infinite costs");
                    s += 1;
                    mppi.set_params(&params).unwrap();
                    if shift {
                        mirror::shift(&mut u, 1);
                    }
                    shift = false;
                }
                _ => {}
            }
            if shift {
                mirror::shift(&mut u, 1);
            }
            let x = [r.random_range(-1.0f32..1.0), r.random_range(-1.0f32..1.0)];
            let g = mppi.step(&x).unwrap();
            let c = mirror::step(&Pendulum, &cfg, &x, &u, &params, s);
            let tag = format!("step {s}");
            let (costs, _) = mppi.costs_and_weights().unwrap();
            close(&format!("{tag}: costs"), &costs, &c.costs, 1e-4, 1.0);
            // The weights exp(-(c - c_min) / lambda) carry the f32 round-off of the costs
            // (a few ulps of the largest) over lambda, and the update sums them times
            // perturbations up to a few sigma.
            let cmax = c.costs.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let weight_err = 8.0 * f32::EPSILON as f64 * cmax / cfg.lambda as f64;
            let abs_tol = 1e-4 * 0.05 + weight_err * 3.0 * cfg.sigma[0] as f64;
            let u_gpu = mppi.controls().unwrap();
            close(
                &format!("{tag}: controls"),
                &u_gpu,
                &c.controls,
                1e-4,
                abs_tol / 1e-4,
            );
            let d0 = ((g.control[0] as f64) - c.controls[0]).abs();
            assert!(d0 <= 1e-4 * c.controls[0].abs() + abs_tol, "{tag}");
            let ro = mppi.rollouts().unwrap();
            assert_eq!(ro.n, kept, "{tag}: kept rollouts");
            for k in 0..kept {
                let start = &ro.states[k * (cfg.horizon + 1) * 2..][..2];
                assert_eq!(
                    start,
                    &x[..],
                    "{tag}: rollout {k} starts at this step's state"
                );
            }
            // The next step starts from the GPU's sequence, so that f32 round-off does not
            // accumulate over the steps of the comparison.
            u = u_gpu.iter().map(|&v| v as f64).collect();
            shift = true;
            s += 1;
        }
    }
}
