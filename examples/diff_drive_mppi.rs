//! A differential-drive robot driven to a goal among circular obstacles by classic MPPI on
//! the GPU, in closed loop with a CPU simulation: the kind of scene of MPPI-Generic's and
//! Nav2's MPPI benchmarks ([`DiffDriveScene::benchmark`]), with their settings (dt 0.02 s,
//! horizon 100, lambda 1, sigma 0.2; 2048 samples, and Nav2's control-cost weight gamma
//! 0.015).
//!
//! `cargo run --release --example diff_drive_mppi`
//!
//! MPPI ([`pompc::planner::custom::Mppi`] over the WGSL of
//! [`pompc::planner::problems::diff_drive`]) plans speed and turn rate from each state; the
//! Rust twin ([`DiffDrive`], same equations in f64) advances the simulation, until the robot
//! is within reach of the goal or a step limit. Every step is checked for collision. It
//! writes `diff_drive_mppi.svg`: the obstacles, the goal, the path, and the sample rollouts
//! of one step coloured by weight.

use pompc::planner::custom::{Mppi, MppiConfig, Rollouts};
use pompc::planner::problems::{DiffDrive, DiffDriveScene, simulate_closed_loop};
use pompc::{Gpu, GpuOptions};
use std::fmt::Write as _;
use std::time::Instant;

/// The step whose rollouts the picture shows.
const SHOWN_STEP: usize = 40;
/// Rollouts shown.
const SHOWN_ROLLOUTS: usize = 64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gpu = Gpu::new(GpuOptions::default())?;
    println!("adapter: {}", gpu.describe());
    let software = gpu.info().device_type == wgpu::DeviceType::Cpu;
    // MPPI-Generic's and Nav2's benchmark settings; gamma (the weight of the control cost)
    // is Nav2's default.
    let mut cfg = MppiConfig {
        horizon: 100,
        samples: 2048,
        lambda: 1.0,
        gamma: 0.015,
        sigma: vec![0.2, 0.2],
        u_min: vec![-1.0, -1.0],
        u_max: vec![1.0, 1.0],
        dt: 0.02,
        seed: 3,
        trusted: false,
    };
    if software {
        cfg.samples = 512;
        println!(
            "software adapter: {} samples instead of 2048 to finish in a few seconds",
            cfg.samples
        );
    }
    println!(
        "MPPI: {} samples, horizon {} x {} s, lambda {}, sigma {:?}, gamma {}",
        cfg.samples, cfg.horizon, cfg.dt, cfg.lambda, cfg.sigma, cfg.gamma
    );
    let dd = DiffDrive::default();
    let scene = DiffDriveScene::benchmark();
    println!(
        "robot: radius {} m, up to {} m/s and {} rad/s; start {:?}, goal {:?}, {} obstacles",
        dd.robot_radius,
        dd.max_speed,
        dd.max_turn_rate,
        scene.start,
        scene.goal,
        scene.obstacles.len()
    );
    let params = scene.params()?;
    let mut mppi = Mppi::new(&gpu, dd.problem()?, cfg.clone())?;
    mppi.set_params(&params)?;

    let max_steps = 1000;
    let start = Instant::now();
    let mut collisions = Vec::new();
    let mut min_clearance = f64::INFINITY;
    let run = simulate_closed_loop(
        &mut mppi,
        &dd,
        &scene.start,
        &params,
        max_steps,
        Some((SHOWN_STEP, SHOWN_ROLLOUTS)),
        |step, x| {
            let clearance = dd.clearance(x, &params);
            min_clearance = min_clearance.min(clearance);
            if clearance < 0.0 {
                collisions.push(step);
            }
            let d = DiffDrive::goal_distance(x, &params);
            if step % 50 == 0 {
                println!(
                    "step {step:4}  t {:5.2} s  at ({:+.2}, {:+.2}) heading {:+6.1} deg  \
                     {d:.2} m to goal, clearance {clearance:+.2} m  ({:.1} ms/step)",
                    (step + 1) as f64 * cfg.dt as f64,
                    x[0],
                    x[1],
                    x[2].to_degrees(),
                    start.elapsed().as_secs_f64() * 1e3 / (step + 1) as f64
                );
            }
            d <= scene.goal_radius
        },
    )?;
    let secs = start.elapsed().as_secs_f64();
    let steps = run.controls.len();
    let t = steps as f64 * cfg.dt as f64;
    if run.done {
        println!("reached the goal at step {} (t = {t:.2} s)", steps - 1);
    } else {
        println!(
            "did not reach the goal in {max_steps} steps ({:.2} m short)",
            DiffDrive::goal_distance(run.states.last().unwrap(), &params)
        );
    }
    if collisions.is_empty() {
        println!("no collision (smallest clearance {min_clearance:.3} m)");
    } else {
        println!(
            "collided at {} steps, first at step {}",
            collisions.len(),
            collisions[0]
        );
    }
    println!(
        "{steps} steps in {secs:.1} s ({:.1} ms per MPPI step + simulation)",
        secs * 1e3 / steps as f64
    );
    let status = match (run.done, collisions.is_empty()) {
        (true, true) => format!("goal reached at t = {t:.2} s, no collision"),
        (true, false) => format!("goal reached at t = {t:.2} s after a collision"),
        (false, true) => "goal not reached".to_string(),
        (false, false) => "goal not reached, collided".to_string(),
    };
    let svg = picture(
        &dd,
        &cfg,
        &scene,
        &run.states,
        run.rollouts.as_ref(),
        &status,
    );
    std::fs::write("diff_drive_mppi.svg", svg)?;
    println!("wrote diff_drive_mppi.svg");
    Ok(())
}

/// Colour, opacity and width of a rollout by its weight relative to the best one shown: log
/// scale, e^-8 and below pale blue, the best red.
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

/// A world window `[x_lo, x_hi] x [y_lo, y_hi]` drawn into a pixel rectangle at (left, top),
/// `scale` pixels per metre.
struct View {
    x_lo: f64,
    y_hi: f64,
    left: f64,
    top: f64,
    scale: f64,
    width: f64,
    height: f64,
}

impl View {
    fn new(bounds: [f64; 4], left: f64, top: f64, width: f64, max_height: f64) -> View {
        let [x_lo, x_hi, y_lo, y_hi] = bounds;
        let scale = (width / (x_hi - x_lo)).min(max_height / (y_hi - y_lo));
        View {
            x_lo,
            y_hi,
            left,
            top,
            scale,
            width: scale * (x_hi - x_lo),
            height: scale * (y_hi - y_lo),
        }
    }
    fn x(&self, x: f64) -> f64 {
        self.left + self.scale * (x - self.x_lo)
    }
    fn y(&self, y: f64) -> f64 {
        self.top + self.scale * (self.y_hi - y)
    }
}

/// Bounds of points `(x, y)` plus a border.
fn bounds(points: impl Iterator<Item = (f64, f64)>, border: f64) -> [f64; 4] {
    let mut b = [
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    for (x, y) in points {
        b = [b[0].min(x), b[1].max(x), b[2].min(y), b[3].max(y)];
    }
    [b[0] - border, b[1] + border, b[2] - border, b[3] + border]
}

/// Obstacles, goal, the path (with the robot every `robot_every` steps) and the rollouts of
/// one step, seen through `v` (clipped to it).
#[allow(clippy::too_many_arguments)]
fn draw_scene(
    svg: &mut String,
    id: &str,
    v: &View,
    dd: &DiffDrive,
    scene: &DiffDriveScene,
    states: &[Vec<f64>],
    rollouts: Option<&(usize, Rollouts)>,
    robot_every: Option<f64>,
) {
    let _ = writeln!(
        svg,
        r##"<clipPath id="{id}"><rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}"/></clipPath><g clip-path="url(#{id})">"##,
        v.left, v.top, v.width, v.height
    );
    for o in &scene.obstacles {
        let (cx, cy, r) = (v.x(o[0] as f64), v.y(o[1] as f64), o[2] as f64);
        let _ = writeln!(
            svg,
            r##"<circle cx="{cx:.1}" cy="{cy:.1}" r="{:.1}" fill="#f2e6d9"/><circle cx="{cx:.1}" cy="{cy:.1}" r="{:.1}" fill="none" stroke="#b08050" stroke-dasharray="4 3"/><circle cx="{cx:.1}" cy="{cy:.1}" r="{:.1}" fill="#777"/>"##,
            v.scale * (r + dd.robot_radius + dd.margin),
            v.scale * (r + dd.robot_radius),
            v.scale * r
        );
    }
    let (gx, gy) = (v.x(scene.goal[0] as f64), v.y(scene.goal[1] as f64));
    let _ = writeln!(
        svg,
        r##"<circle cx="{gx:.1}" cy="{gy:.1}" r="{:.1}" fill="#2ca02c" fill-opacity="0.3" stroke="#2ca02c"/><text x="{:.1}" y="{:.1}" font-size="13" fill="#2ca02c">goal</text>"##,
        v.scale * scene.goal_radius,
        gx + 8.0,
        gy - 8.0
    );
    let mut pts = String::new();
    for x in states {
        let _ = write!(pts, "{:.1},{:.1} ", v.x(x[0]), v.y(x[1]));
    }
    let _ = writeln!(
        svg,
        r#"<polyline points="{pts}" fill="none" stroke="black" stroke-width="2"/>"#
    );
    let every = robot_every.map_or(usize::MAX, |e| e.round().max(1.0) as usize);
    for x in states.iter().step_by(every) {
        let (cx, cy) = (v.x(x[0]), v.y(x[1]));
        let _ = writeln!(
            svg,
            r##"<circle cx="{cx:.1}" cy="{cy:.1}" r="{:.1}" fill="#1f77b4" fill-opacity="0.2" stroke="#1f77b4"/><line x1="{cx:.1}" y1="{cy:.1}" x2="{:.1}" y2="{:.1}" stroke="#1f77b4"/>"##,
            v.scale * dd.robot_radius,
            cx + v.scale * dd.robot_radius * x[2].cos(),
            cy - v.scale * dd.robot_radius * x[2].sin()
        );
    }
    if let Some((step, r)) = rollouts {
        let per = r.states.len() / r.n.max(1);
        let w_max = r.weights.iter().cloned().fold(0.0f32, f32::max);
        let mut idx: Vec<usize> = (0..r.n).collect();
        idx.sort_by(|a, b| r.weights[*a].total_cmp(&r.weights[*b]));
        for k in idx {
            let (colour, opacity, stroke) = weight_style(r.weights[k], w_max);
            let mut pts = String::new();
            for x in r.states[k * per..(k + 1) * per].chunks(3) {
                let _ = write!(pts, "{:.1},{:.1} ", v.x(x[0] as f64), v.y(x[1] as f64));
            }
            let _ = writeln!(
                svg,
                r#"<polyline points="{pts}" fill="none" stroke="{colour}" stroke-opacity="{opacity:.2}" stroke-width="{stroke:.2}"/>"#
            );
        }
        let x = &states[*step];
        let _ = writeln!(
            svg,
            r##"<circle cx="{:.1}" cy="{:.1}" r="{:.1}" fill="none" stroke="#d62728" stroke-width="1.5"/>"##,
            v.x(x[0]),
            v.y(x[1]),
            v.scale * dd.robot_radius
        );
    }
    let _ = writeln!(
        svg,
        r##"</g><rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#999"/>"##,
        v.left, v.top, v.width, v.height
    );
}

/// The scene from above (obstacles grey, with the robot's radius dashed around them and the
/// soft margin shaded; goal; path; one step's rollouts), and below it the rollouts magnified.
fn picture(
    dd: &DiffDrive,
    cfg: &MppiConfig,
    scene: &DiffDriveScene,
    states: &[Vec<f64>],
    rollouts: Option<&(usize, Rollouts)>,
    status: &str,
) -> String {
    let dt = cfg.dt as f64;
    let mut points: Vec<(f64, f64)> = states.iter().map(|x| (x[0], x[1])).collect();
    for o in &scene.obstacles {
        let r = (o[2] as f64) + dd.robot_radius + dd.margin;
        points.push((o[0] as f64 - r, o[1] as f64 - r));
        points.push((o[0] as f64 + r, o[1] as f64 + r));
    }
    points.push((scene.goal[0] as f64, scene.goal[1] as f64));
    if let Some((_, r)) = rollouts {
        points.extend(r.states.chunks(3).map(|x| (x[0] as f64, x[1] as f64)));
    }
    let (left, width) = (30.0, 900.0);
    let map = View::new(bounds(points.into_iter(), 0.3), left, 95.0, width, 560.0);
    let mut svg = String::new();
    let mut body = String::new();
    let _ = writeln!(
        body,
        r#"<text x="{left}" y="24" font-size="16">Differential drive with MPPI: {status}</text>"#
    );
    let legend = [
        format!(
            "{} samples, horizon {} x {} s, lambda {}, sigma {}, gamma {}; 1 m = {:.0} px",
            cfg.samples, cfg.horizon, cfg.dt, cfg.lambda, cfg.sigma[0], cfg.gamma, map.scale
        ),
        "black: path, blue discs: the robot every second; grey: obstacles, dashed: plus the \
         robot's radius, shaded: soft margin"
            .to_string(),
        match rollouts {
            Some((step, r)) => format!(
                "thin lines: the first {} sample rollouts of step {step} (red circle: the robot \
                 then) by weight: red = heaviest shown, pale = below e^-8 of it",
                r.n
            ),
            None => String::new(),
        },
    ];
    for (i, line) in legend.iter().enumerate() {
        let _ = writeln!(
            body,
            r##"<text x="{left}" y="{}" font-size="12" fill="#555">{line}</text>"##,
            40 + 15 * i
        );
    }
    let every = Some(1.0 / dt);
    draw_scene(&mut body, "map", &map, dd, scene, states, rollouts, every);
    let mut bottom = map.top + map.height;
    if let Some((step, r)) = rollouts {
        let pts = r.states.chunks(3).map(|x| (x[0] as f64, x[1] as f64));
        let zoom = View::new(bounds(pts, 0.25), left, bottom + 40.0, width, 360.0);
        let _ = writeln!(
            body,
            r#"<text x="{left}" y="{:.1}" font-size="14">the first {} of {} sample rollouts of step {step} (t = {:.2} s), magnified {:.1}x</text>"#,
            zoom.top - 8.0,
            r.n,
            cfg.samples,
            *step as f64 * dt,
            zoom.scale / map.scale
        );
        draw_scene(&mut body, "zoom", &zoom, dd, scene, states, rollouts, None);
        bottom = zoom.top + zoom.height;
    }
    let (w_total, h_total) = (width + 2.0 * left, bottom + 20.0);
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w_total:.0}" height="{h_total:.0}" viewBox="0 0 {w_total:.0} {h_total:.0}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{w_total:.0}" height="{h_total:.0}" fill="white"/>"#
    );
    svg.push_str(&body);
    let _ = writeln!(svg, "</svg>");
    svg
}
