//! Ready-made problems for classic MPPI ([`Mppi`]): a cart-pole swing-up
//! and a differential-drive robot among circular obstacles. Each comes twice with the same
//! math: as a WGSL [`Problem`] (what the GPU rolls out) and as a Rust twin implementing
//! [`RustProblem`] (the closed-loop simulator of the examples and the CPU mirror's model in
//! the tests). Both are written from the same struct, whose constants are pasted into the
//! WGSL, so changing a mass or a weight changes both. They double as templates for your own
//! problems: print [`Problem::wgsl`] to see what the contract asks for.
//!
//! The GPU evaluates in f32, the twin in f64: single rollouts agree to rounding, but over
//! long horizons a chaotic system (the cart-pole near upright) amplifies the difference.

use super::custom::{Mppi, Problem, Rollouts};
use crate::reference::mppi::RustProblem;
use crate::{Error, Result};

/// A float as a WGSL literal (Rust's `{:?}` always writes a `.` or an exponent); the fields
/// were checked finite by `check_fields`.
fn lit(v: f64) -> String {
    format!("{v:?}")
}

/// Every field finite and within f32 (the WGSL is f32), the `positive` ones > 0.
fn check_fields(what: &str, fields: &[(&str, f64)], positive: &[&str]) -> Result<()> {
    for (name, v) in fields {
        if !(v.is_finite() && v.abs() <= f32::MAX as f64) {
            return Err(Error::InvalidArgument(format!(
                "{what}::{name} = {v}: problem constants must be finite f32 values"
            )));
        }
        if positive.contains(name) && *v <= 0.0 {
            return Err(Error::InvalidArgument(format!(
                "{what}::{name} = {v} must be > 0"
            )));
        }
    }
    Ok(())
}

/// A ready-made problem's WGSL from its parts, so that each constant is named once: the
/// `//` lines of `about`, then each constant `(field, WGSL name, value)` checked by
/// [`check_fields`] (the `positive` ones > 0) and declared as an f32, then `code` (the
/// dynamics and costs that use them).
struct Builtin<'a> {
    what: &'a str,
    name: &'a str,
    /// State and control dimensions, parameter length.
    dims: [usize; 3],
    about: &'a str,
    constants: &'a [(&'a str, &'a str, f64)],
    positive: &'a [&'a str],
    code: &'a str,
}

impl Builtin<'_> {
    fn problem(self) -> Result<Problem> {
        let fields: Vec<_> = self.constants.iter().map(|(f, _, v)| (*f, *v)).collect();
        check_fields(self.what, &fields, self.positive)?;
        let mut wgsl = self.about.to_string();
        for (_, name, v) in self.constants {
            wgsl += &format!("const {name}: f32 = {};\n", lit(*v));
        }
        wgsl += self.code;
        let [state_dim, control_dim, param_len] = self.dims;
        Ok(Problem {
            name: self.name.into(),
            state_dim,
            control_dim,
            param_len,
            wgsl,
        })
    }
}

/// Clamp a control into [-1, 1] the same way on both sides.
fn unit(u: f64) -> f64 {
    u.clamp(-1.0, 1.0)
}

/// `angle` wrapped into (-pi, pi].
pub fn wrap_angle(angle: f64) -> f64 {
    let tau = std::f64::consts::TAU;
    let a = angle.rem_euclid(tau);
    if a > std::f64::consts::PI { a - tau } else { a }
}

/// Cart-pole swing-up: a cart on a frictionless track pushed by a horizontal force, and a
/// pole hinged on it with its mass at the tip (a point mass on a massless rod).
///
/// Conventions: state `[x, x_dot, theta, theta_dot]` (metres, m/s, radians, rad/s) with
/// `theta = 0` **upright** and `theta = pi` hanging down, `theta` growing as the tip moves
/// towards +x; control `u[0]` in [-1, 1] (clamped), force `F = max_force * u[0]` newtons.
/// One parameter: the target cart position (`param(0)`).
///
/// Dynamics (Lagrange, point mass `m_p` at distance `l`, cart mass `m_c`, `s = sin theta`,
/// `c = cos theta`):
///
/// ```text
/// x_acc     = (F + m_p s (l theta_dot^2 - g c)) / (m_c + m_p s^2)
/// theta_acc = (g s - c x_acc) / l
/// ```
///
/// integrated by semi-implicit Euler over `dt`: velocities first, then positions with the new
/// velocities. Costs (`dx = x - target`):
///
/// ```text
/// running  = w_angle (1 - c) + w_position dx^2 + w_velocity x_dot^2
///            + w_angular_velocity theta_dot^2 + w_control u^2
/// terminal = w_terminal (w_angle (1 - c) + w_position dx^2 + w_velocity x_dot^2
///            + w_angular_velocity theta_dot^2)
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct CartPole {
    /// Cart mass m_c (kg).
    pub cart_mass: f64,
    /// Pole (tip) mass m_p (kg).
    pub pole_mass: f64,
    /// Pole length l (m), pivot to tip.
    pub pole_length: f64,
    /// Gravity g (m/s^2).
    pub gravity: f64,
    /// Force at `|u| = 1` (N).
    pub max_force: f64,
    /// Weight of `1 - cos theta` (0 upright, 2 hanging).
    pub w_angle: f64,
    /// Weight of the squared distance to the target position.
    pub w_position: f64,
    /// Weight of the squared cart velocity.
    pub w_velocity: f64,
    /// Weight of the squared angular velocity.
    pub w_angular_velocity: f64,
    /// Weight of `u^2`.
    pub w_control: f64,
    /// Multiplier of the state cost at the end of the horizon.
    pub w_terminal: f64,
}

impl Default for CartPole {
    /// m_c 1 kg, m_p 0.1 kg, l 0.5 m, g 9.81, 10 N; weights for swing-up.
    fn default() -> Self {
        CartPole {
            cart_mass: 1.0,
            pole_mass: 0.1,
            pole_length: 0.5,
            gravity: 9.81,
            max_force: 10.0,
            w_angle: 10.0,
            w_position: 1.0,
            w_velocity: 0.1,
            w_angular_velocity: 0.1,
            w_control: 0.01,
            w_terminal: 10.0,
        }
    }
}

/// The default [`CartPole`] as a WGSL problem (4 states, 1 control, 1 parameter: the target
/// cart position).
pub fn cartpole() -> Problem {
    crate::error::or_panic(CartPole::default().problem())
}

impl CartPole {
    /// State dimension.
    pub const STATE_DIM: usize = 4;
    /// Control dimension.
    pub const CONTROL_DIM: usize = 1;
    /// Parameters: the target cart position.
    pub const PARAM_LEN: usize = 1;

    /// This cart-pole as a WGSL problem with its constants pasted in, or
    /// [`Error::InvalidArgument`] naming a field that is not finite (or a mass or length that
    /// is not positive: the dynamics divide by them).
    pub fn problem(&self) -> Result<Problem> {
        Builtin {
            what: "CartPole",
            name: "cartpole",
            dims: [Self::STATE_DIM, Self::CONTROL_DIM, Self::PARAM_LEN],
            about: "// Cart-pole swing-up (pompc::planner::problems::CartPole).
// x = [cart position, cart velocity, pole angle (0 upright, pi down), angular velocity]
// u = [force / max force] in [-1, 1]; param(0) = target cart position.
",
            constants: &[
                ("cart_mass", "CP_MC", self.cart_mass),
                ("pole_mass", "CP_MP", self.pole_mass),
                ("pole_length", "CP_L", self.pole_length),
                ("gravity", "CP_G", self.gravity),
                ("max_force", "CP_FMAX", self.max_force),
                ("w_angle", "CP_W_ANGLE", self.w_angle),
                ("w_position", "CP_W_POS", self.w_position),
                ("w_velocity", "CP_W_VEL", self.w_velocity),
                ("w_angular_velocity", "CP_W_RATE", self.w_angular_velocity),
                ("w_control", "CP_W_U", self.w_control),
                ("w_terminal", "CP_W_TERM", self.w_terminal),
            ],
            positive: &["cart_mass", "pole_mass", "pole_length"],
            code: "
fn dynamics(x: State, u: Control, t: u32) -> State {
    let f = CP_FMAX * clamp(u[0], -1.0, 1.0);
    let s = sin(x[2]);
    let c = cos(x[2]);
    let x_acc = (f + CP_MP * s * (CP_L * x[3] * x[3] - CP_G * c)) / (CP_MC + CP_MP * s * s);
    let th_acc = (CP_G * s - c * x_acc) / CP_L;
    // Semi-implicit Euler: velocities first, positions with the new velocities.
    let v = x[1] + DT * x_acc;
    let w = x[3] + DT * th_acc;
    return State(x[0] + DT * v, v, x[2] + DT * w, w);
}

fn cp_state_cost(x: State) -> f32 {
    let dx = x[0] - param(0u);
    return CP_W_ANGLE * (1.0 - cos(x[2])) + CP_W_POS * dx * dx + CP_W_VEL * x[1] * x[1]
        + CP_W_RATE * x[3] * x[3];
}

fn running_cost(x: State, u: Control, t: u32) -> f32 {
    return cp_state_cost(x) + CP_W_U * u[0] * u[0];
}

fn terminal_cost(x: State) -> f32 {
    return CP_W_TERM * cp_state_cost(x);
}
",
        }
        .problem()
    }

    /// The parameter buffer: the target cart position.
    pub fn params(target_x: f32) -> Vec<f32> {
        vec![target_x]
    }

    /// Hanging at rest at cart position `x`.
    pub fn hanging(x: f64) -> [f64; 4] {
        [x, 0.0, std::f64::consts::PI, 0.0]
    }

    /// Whether the pole is within `angle_tol` radians of upright (any number of turns) and
    /// turns slower than `rate_tol` rad/s.
    ///
    /// # Panics
    ///
    /// If `state` has fewer than 4 values.
    pub fn is_upright(state: &[f64], angle_tol: f64, rate_tol: f64) -> bool {
        wrap_angle(state[2]).abs() <= angle_tol && state[3].abs() <= rate_tol
    }

    /// Position of the pole's tip (m) in the plane of the track (y up).
    ///
    /// # Panics
    ///
    /// If `state` has fewer than 3 values.
    pub fn tip(&self, state: &[f64]) -> (f64, f64) {
        (
            state[0] + self.pole_length * state[2].sin(),
            self.pole_length * state[2].cos(),
        )
    }

    fn state_cost(&self, x: &[f64], params: &[f32]) -> f64 {
        let dx = x[0] - params[0] as f64;
        self.w_angle * (1.0 - x[2].cos())
            + self.w_position * dx * dx
            + self.w_velocity * x[1] * x[1]
            + self.w_angular_velocity * x[3] * x[3]
    }
}

impl RustProblem for CartPole {
    fn state_dim(&self) -> usize {
        Self::STATE_DIM
    }
    fn control_dim(&self) -> usize {
        Self::CONTROL_DIM
    }
    fn dynamics(&self, x: &[f64], u: &[f64], _t: usize, dt: f64, _params: &[f32]) -> Vec<f64> {
        let (mc, mp, l, g) = (
            self.cart_mass,
            self.pole_mass,
            self.pole_length,
            self.gravity,
        );
        let f = self.max_force * unit(u[0]);
        let s = x[2].sin();
        let c = x[2].cos();
        let x_acc = (f + mp * s * (l * x[3] * x[3] - g * c)) / (mc + mp * s * s);
        let th_acc = (g * s - c * x_acc) / l;
        let v = x[1] + dt * x_acc;
        let w = x[3] + dt * th_acc;
        vec![x[0] + dt * v, v, x[2] + dt * w, w]
    }
    fn running_cost(&self, x: &[f64], u: &[f64], _t: usize, params: &[f32]) -> f64 {
        self.state_cost(x, params) + self.w_control * u[0] * u[0]
    }
    fn terminal_cost(&self, x: &[f64], params: &[f32]) -> f64 {
        self.w_terminal * self.state_cost(x, params)
    }
}

/// Most obstacles a [`DiffDrive`] parameter buffer holds.
pub const MAX_OBSTACLES: usize = 8;

/// A differential-drive (unicycle) robot driving to a goal among circular obstacles, the
/// scene of MPPI-Generic's and Nav2's MPPI benchmarks.
///
/// Conventions: state `[x, y, heading]` (metres, radians from +x, counter-clockwise);
/// controls `u` in [-1, 1]^2 (clamped), forward speed `v = max_speed * u[0]` (m/s, negative
/// backs up) and turn rate `omega = max_turn_rate * u[1]` (rad/s). Dynamics, forward Euler
/// with the heading at the start of the step:
///
/// ```text
/// x' = x + dt v cos(heading),  y' = y + dt v sin(heading),  heading' = heading + dt omega
/// ```
///
/// Parameters ([`DiffDrive::PARAM_LEN`] = 2 + 3 [`MAX_OBSTACLES`]): the goal `(gx, gy)`, then
/// obstacles `(ox, oy, r)`; an obstacle with `r <= 0` is absent. The robot is a disc of
/// `robot_radius`: its clearance to an obstacle is `|p - o| - r - robot_radius`, negative in
/// collision. Costs, with `d` the distance to the goal:
///
/// ```text
/// running  = w_goal d + w_control |u|^2 + sum over obstacles of
///            collision_cost                               if clearance < 0
///            w_margin (1 - clearance / margin)^2          if 0 <= clearance < margin
/// terminal = w_terminal d
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct DiffDrive {
    /// Speed at `|u[0]| = 1` (m/s).
    pub max_speed: f64,
    /// Turn rate at `|u[1]| = 1` (rad/s).
    pub max_turn_rate: f64,
    /// Radius of the robot's disc (m).
    pub robot_radius: f64,
    /// Weight of the distance to the goal (per step).
    pub w_goal: f64,
    /// Weight of `|u|^2` (per step).
    pub w_control: f64,
    /// Cost of a step in collision.
    pub collision_cost: f64,
    /// Width of the soft band around obstacles (m).
    pub margin: f64,
    /// Cost at the obstacle's edge of the soft band, falling quadratically to 0 at its width.
    pub w_margin: f64,
    /// Weight of the distance to the goal at the end of the horizon.
    pub w_terminal: f64,
}

impl Default for DiffDrive {
    /// 1 m/s, 3 rad/s, radius 0.15 m, margin 0.3 m; weights tuned for MPPI-Generic's and
    /// Nav2's settings (dt 0.02, horizon 100, lambda 1, sigma 0.2) with Nav2's control-cost
    /// weight `gamma` = 0.015: with Williams et al.'s `gamma = lambda` = 1 the control cost
    /// `lambda / (2 sigma^2) u^2` = 12.5 u^2 per step outweighs these costs and the robot
    /// barely moves (scale every weight up to use it).
    fn default() -> Self {
        DiffDrive {
            max_speed: 1.0,
            max_turn_rate: 3.0,
            robot_radius: 0.15,
            w_goal: 10.0,
            w_control: 0.0,
            collision_cost: 1000.0,
            margin: 0.3,
            w_margin: 20.0,
            w_terminal: 300.0,
        }
    }
}

/// A start, a goal and circular obstacles between them: the kind of scene of MPPI-Generic's
/// and Nav2's differential-drive benchmarks, used by `examples/diff_drive_mppi.rs` and the
/// closed-loop tests.
#[derive(Clone, Debug, PartialEq)]
pub struct DiffDriveScene {
    /// Start `[x, y, heading]`.
    pub start: [f64; 3],
    /// Goal `(x, y)`.
    pub goal: [f32; 2],
    /// Reached when the robot's centre is this close to the goal (m).
    pub goal_radius: f64,
    /// Obstacles `(x, y, r)`.
    pub obstacles: Vec<[f32; 3]>,
}

impl DiffDriveScene {
    /// From (0, 0) facing +x to (6, 0) past five obstacles, one of them almost on the
    /// straight line; goal radius 0.1 m. About 7.5 s at 1 m/s.
    pub fn benchmark() -> Self {
        DiffDriveScene {
            start: [0.0, 0.0, 0.0],
            goal: [6.0, 0.0],
            goal_radius: 0.1,
            obstacles: vec![
                [1.5, 0.2, 0.4],
                [3.0, -0.6, 0.4],
                [3.2, 1.0, 0.4],
                [4.5, 0.1, 0.35],
                [4.7, -1.5, 0.3],
            ],
        }
    }

    /// The parameter buffer of [`DiffDrive`] for this scene.
    pub fn params(&self) -> Result<Vec<f32>> {
        DiffDrive::params(self.goal, &self.obstacles)
    }
}

/// The default [`DiffDrive`] as a WGSL problem (3 states, 2 controls, goal and obstacles as
/// parameters).
pub fn diff_drive() -> Problem {
    crate::error::or_panic(DiffDrive::default().problem())
}

impl DiffDrive {
    /// State dimension.
    pub const STATE_DIM: usize = 3;
    /// Control dimension.
    pub const CONTROL_DIM: usize = 2;
    /// Parameters: goal (2) and [`MAX_OBSTACLES`] obstacles of 3.
    pub const PARAM_LEN: usize = 2 + 3 * MAX_OBSTACLES;

    /// This robot as a WGSL problem with its constants pasted in, or
    /// [`Error::InvalidArgument`] naming a field that is not finite (or a margin that is not
    /// positive: the cost divides by it).
    pub fn problem(&self) -> Result<Problem> {
        let about = format!(
            "// Differential drive among circular obstacles (pompc::planner::problems::DiffDrive).
// x = [x, y, heading]; u = [speed / max speed, turn rate / max turn rate] in [-1, 1]^2.
// param(0), param(1): goal; then {MAX_OBSTACLES} obstacles (x, y, r), r <= 0 absent.
"
        );
        let code = format!(
            "const DD_OBSTACLES: u32 = {MAX_OBSTACLES}u;

fn dynamics(x: State, u: Control, t: u32) -> State {{
    let v = DD_VMAX * clamp(u[0], -1.0, 1.0);
    let w = DD_WMAX * clamp(u[1], -1.0, 1.0);
    return State(x[0] + DT * v * cos(x[2]), x[1] + DT * v * sin(x[2]), x[2] + DT * w);
}}

fn dd_goal_distance(x: State) -> f32 {{
    let dx = x[0] - param(0u);
    let dy = x[1] - param(1u);
    return sqrt(dx * dx + dy * dy);
}}

fn running_cost(x: State, u: Control, t: u32) -> f32 {{
    var c = DD_W_GOAL * dd_goal_distance(x) + DD_W_U * (u[0] * u[0] + u[1] * u[1]);
    for (var i = 0u; i < DD_OBSTACLES; i++) {{
        let r = param(2u + 3u * i + 2u);
        if (r <= 0.0) {{
            continue;
        }}
        let dx = x[0] - param(2u + 3u * i);
        let dy = x[1] - param(2u + 3u * i + 1u);
        let clearance = sqrt(dx * dx + dy * dy) - r - DD_RADIUS;
        if (clearance < 0.0) {{
            c += DD_COLLISION;
        }} else if (clearance < DD_MARGIN) {{
            let a = 1.0 - clearance / DD_MARGIN;
            c += DD_W_MARGIN * a * a;
        }}
    }}
    return c;
}}

fn terminal_cost(x: State) -> f32 {{
    return DD_W_TERM * dd_goal_distance(x);
}}
"
        );
        Builtin {
            what: "DiffDrive",
            name: "diff_drive",
            dims: [Self::STATE_DIM, Self::CONTROL_DIM, Self::PARAM_LEN],
            about: &about,
            constants: &[
                ("max_speed", "DD_VMAX", self.max_speed),
                ("max_turn_rate", "DD_WMAX", self.max_turn_rate),
                ("robot_radius", "DD_RADIUS", self.robot_radius),
                ("w_goal", "DD_W_GOAL", self.w_goal),
                ("w_control", "DD_W_U", self.w_control),
                ("collision_cost", "DD_COLLISION", self.collision_cost),
                ("margin", "DD_MARGIN", self.margin),
                ("w_margin", "DD_W_MARGIN", self.w_margin),
                ("w_terminal", "DD_W_TERM", self.w_terminal),
            ],
            positive: &["margin"],
            code: &code,
        }
        .problem()
    }

    /// The parameter buffer for a goal and up to [`MAX_OBSTACLES`] obstacles `[x, y, r]`
    /// (the rest absent). More obstacles, a negative radius or a non-finite value is an
    /// error.
    pub fn params(goal: [f32; 2], obstacles: &[[f32; 3]]) -> Result<Vec<f32>> {
        if obstacles.len() > MAX_OBSTACLES {
            return Err(Error::InvalidArgument(format!(
                "{} obstacles, the diff-drive problem holds at most {MAX_OBSTACLES}",
                obstacles.len()
            )));
        }
        let mut p = vec![0.0f32; Self::PARAM_LEN];
        p[..2].copy_from_slice(&goal);
        for (i, o) in obstacles.iter().enumerate() {
            if o.iter().any(|v| !v.is_finite()) || o[2] < 0.0 {
                return Err(Error::InvalidArgument(format!(
                    "obstacle {i} {o:?}: needs finite values and a radius >= 0"
                )));
            }
            p[2 + 3 * i..5 + 3 * i].copy_from_slice(o);
        }
        if goal.iter().any(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "goal {goal:?} is not finite"
            )));
        }
        Ok(p)
    }

    /// The obstacles `[x, y, r]` present in a parameter buffer (none in one shorter than 5).
    pub fn obstacles(params: &[f32]) -> Vec<[f32; 3]> {
        params
            .get(2..)
            .unwrap_or_default()
            .chunks_exact(3)
            .filter(|o| o[2] > 0.0)
            .map(|o| [o[0], o[1], o[2]])
            .collect()
    }

    /// Distance from the robot's centre to the goal.
    ///
    /// # Panics
    ///
    /// If `state` or `params` has fewer than 2 values (a state and parameter buffer of this
    /// problem have more).
    pub fn goal_distance(state: &[f64], params: &[f32]) -> f64 {
        let dx = state[0] - params[0] as f64;
        let dy = state[1] - params[1] as f64;
        (dx * dx + dy * dy).sqrt()
    }

    /// The smallest clearance between the robot's disc and an obstacle (negative in
    /// collision; infinite without obstacles).
    ///
    /// # Panics
    ///
    /// If `state` has fewer than 2 values.
    pub fn clearance(&self, state: &[f64], params: &[f32]) -> f64 {
        Self::obstacles(params)
            .iter()
            .map(|o| {
                let dx = state[0] - o[0] as f64;
                let dy = state[1] - o[1] as f64;
                (dx * dx + dy * dy).sqrt() - o[2] as f64 - self.robot_radius
            })
            .fold(f64::INFINITY, f64::min)
    }
}

impl RustProblem for DiffDrive {
    fn state_dim(&self) -> usize {
        Self::STATE_DIM
    }
    fn control_dim(&self) -> usize {
        Self::CONTROL_DIM
    }
    fn dynamics(&self, x: &[f64], u: &[f64], _t: usize, dt: f64, _params: &[f32]) -> Vec<f64> {
        let v = self.max_speed * unit(u[0]);
        let w = self.max_turn_rate * unit(u[1]);
        vec![
            x[0] + dt * v * x[2].cos(),
            x[1] + dt * v * x[2].sin(),
            x[2] + dt * w,
        ]
    }
    fn running_cost(&self, x: &[f64], u: &[f64], _t: usize, params: &[f32]) -> f64 {
        let mut c = self.w_goal * Self::goal_distance(x, params)
            + self.w_control * (u[0] * u[0] + u[1] * u[1]);
        for o in params[2..].chunks_exact(3) {
            let r = o[2] as f64;
            if r <= 0.0 {
                continue;
            }
            let dx = x[0] - o[0] as f64;
            let dy = x[1] - o[1] as f64;
            let clearance = (dx * dx + dy * dy).sqrt() - r - self.robot_radius;
            if clearance < 0.0 {
                c += self.collision_cost;
            } else if clearance < self.margin {
                let a = 1.0 - clearance / self.margin;
                c += self.w_margin * a * a;
            }
        }
        c
    }
    fn terminal_cost(&self, x: &[f64], params: &[f32]) -> f64 {
        self.w_terminal * Self::goal_distance(x, params)
    }
}

/// One closed-loop step of a simulator: `problem`'s own dynamics (in f64) applied to the
/// control the planner returned, or [`Error::Shape`] when the lengths of `x` and `u` are not
/// the problem's state and control dimensions.
pub fn simulate_step(
    problem: &dyn RustProblem,
    x: &[f64],
    u: &[f32],
    t: usize,
    dt: f64,
    params: &[f32],
) -> Result<Vec<f64>> {
    if x.len() != problem.state_dim() || u.len() != problem.control_dim() {
        return Err(Error::Shape(format!(
            "simulate_step: state of {} and control of {} values, the problem has {} and {}",
            x.len(),
            u.len(),
            problem.state_dim(),
            problem.control_dim()
        )));
    }
    let u: Vec<f64> = u.iter().map(|v| *v as f64).collect();
    Ok(problem.dynamics(x, &u, t, dt, params))
}

/// What [`simulate_closed_loop`] recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct ClosedLoop {
    /// States visited, the initial one first: one more than `controls`.
    pub states: Vec<Vec<f64>>,
    /// Controls applied, one per step.
    pub controls: Vec<Vec<f32>>,
    /// The step whose sample rollouts were kept, and those rollouts.
    pub rollouts: Option<(usize, Rollouts)>,
    /// Whether `done` returned true (before the step limit).
    pub done: bool,
}

/// Run MPPI in closed loop against a simulator: at each step plan from the current state
/// (rounded to f32), apply the first control to `sim` (the problem's Rust twin, in f64, with
/// the planner's `dt`) and stop when `done(step, state)` says so or after `max_steps`.
/// `keep` = `Some((step, n))` keeps the first `n` sample rollouts of that step (for
/// pictures); the others keep none. The planner's parameters must already be set to
/// `params`.
pub fn simulate_closed_loop(
    mppi: &mut Mppi<'_>,
    sim: &dyn RustProblem,
    x0: &[f64],
    params: &[f32],
    max_steps: usize,
    keep: Option<(usize, usize)>,
    mut done: impl FnMut(usize, &[f64]) -> bool,
) -> Result<ClosedLoop> {
    let dt = mppi.config().dt as f64;
    let mut out = ClosedLoop {
        states: vec![x0.to_vec()],
        controls: Vec::new(),
        rollouts: None,
        done: false,
    };
    let mut x = x0.to_vec();
    for step in 0..max_steps {
        let keep_now = keep.filter(|(s, _)| *s == step);
        if let Some((_, n)) = keep_now {
            mppi.keep_rollouts(n)?;
        }
        let xf: Vec<f32> = x.iter().map(|v| *v as f32).collect();
        let plan = mppi.step(&xf)?;
        if keep_now.is_some() {
            out.rollouts = Some((step, mppi.rollouts()?));
            mppi.keep_rollouts(0)?;
        }
        x = simulate_step(sim, &x, &plan.control, step, dt, params)?;
        out.states.push(x.clone());
        out.controls.push(plan.control);
        if done(step, &x) {
            out.done = true;
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wgsl_of_both_problems_validates_inside_the_mppi_shader() {
        use crate::gpu::shader::{self, Header};
        // Staged in workgroup memory and read from storage (a horizon too long to stage).
        for (p, horizon) in [cartpole(), diff_drive()]
            .into_iter()
            .flat_map(|p| [(p.clone(), 100), (p, 1000)])
        {
            let mut header = Header(vec![
                ("STATE_DIM", p.state_dim as u32),
                ("CONTROL_DIM", p.control_dim as u32),
                ("PARAM_LEN", p.param_len as u32),
            ]);
            for (k, v) in crate::planner::custom::staging(&p, horizon, true) {
                header.set(k, v);
            }
            let user = p.wgsl.clone();
            let pre = shader::preprocess_with(
                "mppi",
                shader::source("mppi").unwrap(),
                &header,
                &move |n| {
                    if n == "user" {
                        Some(user.clone())
                    } else {
                        shader::source(n).map(str::to_string)
                    }
                },
            )
            .unwrap();
            if let Err(e) = shader::validate(&p.name, &pre) {
                panic!("{}: {e}", p.name);
            }
        }
    }

    #[test]
    fn cartpole_hangs_still_and_falls_from_upright() {
        let cp = CartPole::default();
        let p = CartPole::params(0.0);
        let mut x = CartPole::hanging(0.0).to_vec();
        for t in 0..100 {
            x = cp.dynamics(&x, &[0.0], t, 0.02, &p);
        }
        assert!((x[2] - std::f64::consts::PI).abs() < 1e-9 && x[0].abs() < 1e-9);
        let mut x = vec![0.0, 0.0, 0.01, 0.0];
        for t in 0..100 {
            x = cp.dynamics(&x, &[0.0], t, 0.02, &p);
        }
        assert!(x[2] > 1.0, "upright is unstable: theta {}", x[2]);
        // Pushing the cart to +x tips the pole towards -x.
        let x = cp.dynamics(&[0.0, 0.0, 0.0, 0.0], &[1.0], 0, 0.02, &p);
        assert!(x[1] > 0.0 && x[3] < 0.0, "{x:?}");
    }

    #[test]
    fn diff_drive_params_and_costs() {
        let dd = DiffDrive::default();
        let p = DiffDrive::params([3.0, 0.0], &[[1.5, 0.0, 0.5]]).unwrap();
        assert_eq!(p.len(), DiffDrive::PARAM_LEN);
        assert!(DiffDrive::params([0.0; 2], &[[0.0; 3]; MAX_OBSTACLES + 1]).is_err());
        assert!(DiffDrive::params([0.0; 2], &[[0.0, 0.0, -1.0]]).is_err());
        assert_eq!(DiffDrive::obstacles(&p), vec![[1.5, 0.0, 0.5]]);
        // Inside the obstacle: collision cost; far away: the goal term alone.
        let inside = dd.running_cost(&[1.5, 0.1, 0.0], &[0.0, 0.0], 0, &p);
        assert!(inside >= dd.collision_cost);
        assert!(dd.clearance(&[1.5, 0.1, 0.0], &p) < 0.0);
        let far = dd.running_cost(&[0.0, 3.0, 0.0], &[0.0, 0.0], 0, &p);
        assert!((far - dd.w_goal * 18f64.sqrt()).abs() < 1e-9);
        let x = dd.dynamics(
            &[0.0, 0.0, std::f64::consts::FRAC_PI_2],
            &[2.0, 1.0],
            0,
            0.1,
            &p,
        );
        assert!(x[0].abs() < 1e-12 && (x[1] - 0.1).abs() < 1e-12);
        assert!((x[2] - std::f64::consts::FRAC_PI_2 - 0.1 * dd.max_turn_rate).abs() < 1e-12);
    }
}
