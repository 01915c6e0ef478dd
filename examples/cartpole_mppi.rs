//! Cart-pole swing-up with classic MPPI on the GPU, in closed loop with a CPU simulation.
//!
//! `cargo run --release --example cartpole_mppi`
//!
//! The pole starts hanging at rest; MPPI ([`pompc::planner::custom::Mppi`] over the WGSL of
//! [`pompc::planner::problems::cartpole`]) plans a force from each state, the Rust twin
//! ([`CartPole`], same equations in f64) advances the simulation, until the pole is upright
//! and slow or a step limit. It then balances a while longer to show that it stays there,
//! and writes `cartpole_mppi.svg`: angle and cart position over time with the sample rollouts
//! of one step coloured by weight, and a strobe picture of the motion.

use pompc::planner::custom::{Mppi, MppiConfig, Rollouts};
use pompc::planner::problems::{CartPole, simulate_closed_loop, wrap_angle};
use pompc::{Gpu, GpuOptions};
use std::fmt::Write as _;
use std::time::Instant;

/// Upright: within this angle (rad) ...
const ANGLE_TOL: f64 = 0.15;
/// ... turning slower than this (rad/s).
const RATE_TOL: f64 = 1.0;
/// Steps to keep balancing after reaching upright.
const HOLD_STEPS: usize = 75;
/// The step whose rollouts the picture shows.
const SHOWN_STEP: usize = 30;
/// Rollouts shown.
const SHOWN_ROLLOUTS: usize = 64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gpu = Gpu::new(GpuOptions::default())?;
    println!("adapter: {}", gpu.describe());
    let software = gpu.info().device_type == wgpu::DeviceType::Cpu;
    let mut cfg = MppiConfig {
        horizon: 60,
        samples: 4096,
        lambda: 1.0,
        gamma: 1.0,
        sigma: vec![0.5],
        u_min: vec![-1.0],
        u_max: vec![1.0],
        dt: 0.02,
        seed: 7,
        trusted: false,
    };
    if software {
        cfg.samples = 1024;
        println!(
            "software adapter: {} samples instead of 4096 to finish in a few seconds",
            cfg.samples
        );
    }
    println!(
        "MPPI: {} samples, horizon {} x {} s, lambda {}, sigma {}",
        cfg.samples, cfg.horizon, cfg.dt, cfg.lambda, cfg.sigma[0]
    );
    let cp = CartPole::default();
    println!(
        "cart-pole: cart {} kg, pole {} kg x {} m, force up to {} N; theta = 0 is upright",
        cp.cart_mass, cp.pole_mass, cp.pole_length, cp.max_force
    );
    let params = CartPole::params(0.0);
    let mut mppi = Mppi::new(&gpu, cp.problem()?, cfg.clone())?;
    mppi.set_params(&params)?;

    let max_steps = 500;
    let start = Instant::now();
    let mut reached: Option<usize> = None;
    let run = simulate_closed_loop(
        &mut mppi,
        &cp,
        &CartPole::hanging(0.0),
        &params,
        max_steps,
        Some((SHOWN_STEP, SHOWN_ROLLOUTS)),
        |step, x| {
            if step % 25 == 0 {
                println!(
                    "step {step:4}  t {:5.2} s  x {:+.2} m  theta {:+7.1} deg  theta_dot {:+6.2}  \
                     ({:.1} ms/step)",
                    (step + 1) as f64 * cfg.dt as f64,
                    x[0],
                    wrap_angle(x[2]).to_degrees(),
                    x[3],
                    start.elapsed().as_secs_f64() * 1e3 / (step + 1) as f64
                );
            }
            if reached.is_none() && CartPole::is_upright(x, ANGLE_TOL, RATE_TOL) {
                reached = Some(step);
                println!(
                    "reached upright at step {step} (t = {:.2} s); balancing {HOLD_STEPS} more \
                     steps",
                    (step + 1) as f64 * cfg.dt as f64
                );
            }
            reached.is_some_and(|r| step >= r + HOLD_STEPS)
        },
    )?;
    let secs = start.elapsed().as_secs_f64();
    let steps = run.controls.len();
    match reached {
        Some(r) => {
            let worst = run.states[r + 1..]
                .iter()
                .map(|x| wrap_angle(x[2]).abs())
                .fold(0.0, f64::max);
            println!(
                "reached upright at step {r}; over the next {} steps |theta| stayed within \
                 {:.1} deg",
                steps - r - 1,
                worst.to_degrees()
            );
        }
        None => println!("did not reach upright in {max_steps} steps"),
    }
    println!(
        "{steps} steps in {secs:.1} s ({:.1} ms per MPPI step + simulation)",
        secs * 1e3 / steps as f64
    );
    let svg = picture(&cp, &cfg, &run.states, run.rollouts.as_ref(), reached);
    std::fs::write("cartpole_mppi.svg", svg)?;
    println!("wrote cartpole_mppi.svg");
    Ok(())
}

/// Colour and width of a rollout by its weight relative to the best one shown: log scale,
/// e^-8 and below pale blue, the best red.
fn weight_style(w: f32, w_max: f32) -> (String, f64, f64) {
    let a = if w_max > 0.0 && w > 0.0 {
        (1.0 + ((w / w_max) as f64).ln() / 8.0).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mix = |lo: f64, hi: f64| (lo + (hi - lo) * a).round() as u8;
    let colour = format!(
        "#{:02x}{:02x}{:02x}",
        mix(170.0, 214.0),
        mix(195.0, 39.0),
        mix(225.0, 40.0)
    );
    (colour, 0.35 + 0.65 * a, 0.6 + 1.4 * a)
}

/// Indices of the kept rollouts, lowest weight first (so the best are drawn on top).
fn by_weight(r: &Rollouts) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..r.n).collect();
    idx.sort_by(|a, b| r.weights[*a].total_cmp(&r.weights[*b]));
    idx
}

/// A time-series panel: `series(state) -> value` for the run, plus the rollouts.
#[allow(clippy::too_many_arguments)]
fn panel(
    svg: &mut String,
    top: f64,
    height: f64,
    title: &str,
    states: &[Vec<f64>],
    rollouts: Option<&(usize, Rollouts)>,
    dt: f64,
    series: &dyn Fn(&[f64]) -> f64,
    guides: &[(f64, &str)],
) {
    let (left, width) = (70.0, 800.0);
    let t_end = (states.len() - 1) as f64 * dt;
    let mut vals: Vec<f64> = states.iter().map(|x| series(x)).collect();
    if let Some((_, r)) = rollouts {
        let per = r.states.len() / r.n.max(1);
        for k in 0..r.n {
            for x in r.states[k * per..(k + 1) * per].chunks(4) {
                let x: Vec<f64> = x.iter().map(|v| *v as f64).collect();
                vals.push(series(&x));
            }
        }
    }
    vals.extend(guides.iter().map(|g| g.0));
    let lo = vals.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if hi - lo < 1e-9 {
        (lo - 1.0, hi + 1.0)
    } else {
        (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    };
    let t_max = t_end.max(
        rollouts
            .map(|(s, r)| (*s + r.states.len() / r.n.max(1) / 4 - 1) as f64 * dt)
            .unwrap_or(0.0),
    );
    let px = |t: f64| left + width * t / t_max.max(1e-9);
    let py = |v: f64| top + height * (hi - v) / (hi - lo);
    let _ = writeln!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" stroke="#999"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{left}" y="{:.1}" font-size="14">{title}</text>"#,
        top - 6.0
    );
    for (v, label) in guides {
        let y = py(*v);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#2ca02c" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" font-size="11" fill="#2ca02c">{label}</text>"##,
            left + width,
            left + width + 4.0,
            y + 4.0
        );
    }
    for (v, anchor) in [(lo, "end"), (hi, "end")] {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="{anchor}">{v:.2}</text>"#,
            left - 4.0,
            py(v) + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">t = {t_max:.2} s</text>"#,
        left + width,
        top + height + 14.0
    );
    if let Some((step, r)) = rollouts {
        let per = r.states.len() / r.n.max(1);
        let w_max = r.weights.iter().cloned().fold(0.0f32, f32::max);
        for k in by_weight(r) {
            let (colour, opacity, stroke) = weight_style(r.weights[k], w_max);
            let mut pts = String::new();
            for (i, x) in r.states[k * per..(k + 1) * per].chunks(4).enumerate() {
                let x: Vec<f64> = x.iter().map(|v| *v as f64).collect();
                let _ = write!(
                    pts,
                    "{:.1},{:.1} ",
                    px((step + i) as f64 * dt),
                    py(series(&x))
                );
            }
            let _ = writeln!(
                svg,
                r#"<polyline points="{pts}" fill="none" stroke="{colour}" stroke-opacity="{opacity:.2}" stroke-width="{stroke:.2}"/>"#
            );
        }
    }
    let mut pts = String::new();
    for (i, x) in states.iter().enumerate() {
        let _ = write!(pts, "{:.1},{:.1} ", px(i as f64 * dt), py(series(x)));
    }
    let _ = writeln!(
        svg,
        r#"<polyline points="{pts}" fill="none" stroke="black" stroke-width="2"/>"#
    );
}

/// The whole picture: angle and position over time (with one step's rollouts), and a strobe
/// of the cart-pole.
fn picture(
    cp: &CartPole,
    cfg: &MppiConfig,
    states: &[Vec<f64>],
    rollouts: Option<&(usize, Rollouts)>,
    reached: Option<usize>,
) -> String {
    let dt = cfg.dt as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="960" height="860" viewBox="0 0 960 860" font-family="sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="960" height="860" fill="white"/>"#);
    let status = match reached {
        Some(r) => format!("upright at t = {:.2} s", (r + 1) as f64 * dt),
        None => "did not reach upright".to_string(),
    };
    let _ = writeln!(
        svg,
        r#"<text x="70" y="24" font-size="16">Cart-pole swing-up with MPPI ({} samples, horizon {}, lambda {}, sigma {}): {status}</text>"#,
        cfg.samples, cfg.horizon, cfg.lambda, cfg.sigma[0]
    );
    if let Some((step, _)) = rollouts {
        let _ = writeln!(
            svg,
            r##"<text x="70" y="42" font-size="12" fill="#555">black: closed loop; thin lines: the first {SHOWN_ROLLOUTS} sample rollouts of step {step} coloured by weight (log scale, red = heaviest shown, pale = below e^-8 of it)</text>"##
        );
    }
    // Unwrapped angle; upright lines at the multiples of 2 pi in range.
    let lo = states.iter().map(|x| x[2]).fold(f64::INFINITY, f64::min);
    let hi = states
        .iter()
        .map(|x| x[2])
        .fold(f64::NEG_INFINITY, f64::max);
    let tau = std::f64::consts::TAU;
    let guides: Vec<(f64, &str)> = ((lo / tau).ceil() as i64..=(hi / tau).floor() as i64)
        .map(|k| (k as f64 * tau, "upright"))
        .collect();
    panel(
        &mut svg,
        75.0,
        220.0,
        "pole angle theta (rad; 0 = upright, pi = hanging)",
        states,
        rollouts,
        dt,
        &|x| x[2],
        &guides,
    );
    panel(
        &mut svg,
        340.0,
        180.0,
        "cart position x (m)",
        states,
        rollouts,
        dt,
        &|x| x[0],
        &[(0.0, "target")],
    );
    // Strobe: the track, the cart and the pole every few steps, and the tip's path.
    let (top, height, left, width) = (570.0, 260.0, 70.0, 800.0);
    let _ = writeln!(
        svg,
        r#"<text x="{left}" y="{:.1}" font-size="14">motion (every 10th step drawn, later darker; blue: path of the pole's tip)</text>"#,
        top - 6.0
    );
    let xs: Vec<f64> = states.iter().flat_map(|x| [x[0], cp.tip(x).0]).collect();
    let x_lo = xs.iter().cloned().fold(f64::INFINITY, f64::min) - 0.3;
    let x_hi = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max) + 0.3;
    let scale = (width / (x_hi - x_lo)).min(height / (2.0 * cp.pole_length + 0.4));
    let cx = left + width / 2.0 - scale * (x_lo + x_hi) / 2.0;
    let cy = top + height / 2.0;
    let sx = |x: f64| cx + scale * x;
    let sy = |y: f64| cy - scale * y;
    let _ = writeln!(
        svg,
        r##"<line x1="{left}" y1="{cy:.1}" x2="{:.1}" y2="{cy:.1}" stroke="#888"/>"##,
        left + width
    );
    let n = states.len();
    for (i, x) in states.iter().enumerate().step_by(10) {
        let shade = 0.15 + 0.85 * i as f64 / (n - 1).max(1) as f64;
        let (tx, ty) = cp.tip(x);
        let _ = writeln!(
            svg,
            r##"<g opacity="{shade:.2}"><rect x="{:.1}" y="{:.1}" width="24" height="12" fill="#555"/><line x1="{:.1}" y1="{cy:.1}" x2="{:.1}" y2="{:.1}" stroke="#333" stroke-width="2"/></g>"##,
            sx(x[0]) - 12.0,
            cy - 6.0,
            sx(x[0]),
            sx(tx),
            sy(ty)
        );
    }
    let mut pts = String::new();
    for x in states {
        let (tx, ty) = cp.tip(x);
        let _ = write!(pts, "{:.1},{:.1} ", sx(tx), sy(ty));
    }
    let _ = writeln!(
        svg,
        r##"<polyline points="{pts}" fill="none" stroke="#1f77b4" stroke-width="1.2"/>"##
    );
    let _ = writeln!(svg, "</svg>");
    svg
}
