//! Cart-pole (`cartpole-swingup`, `cartpole-balance`): a cart on an unbounded frictional rail,
//! pushed by a horizontal force, carrying a pole on a damped hinge.
//!
//! **State** `(x, theta, x', theta')`: cart position (m), pole angle from upright (0 = up,
//! pi = hanging), their rates.
//!
//! **Equations of motion** (Lagrange, cart mass `M`, pole a uniform rod of mass `m` and
//! half-length `l`, so its inertia about the hinge is `4/3 m l^2`; cart viscous friction `b_c`,
//! hinge damping `b_p`, force `F = f_max * u`):
//!
//! ```text
//! (M + m) x''       + m l cos(theta) theta'' = F + m l sin(theta) theta'^2 - b_c x'
//! m l cos(theta) x'' + 4/3 m l^2 theta''     = m g l sin(theta)             - b_p theta'
//! ```
//!
//! solved as a 2x2 linear system at each derivative evaluation. Energy
//! `E = (M + m) x'^2 / 2 + m l cos(theta) x' theta' + 2/3 m l^2 theta'^2 + m g l cos(theta)` is
//! conserved when `b_c = b_p = 0` and `u = 0`.
//!
//! **Constants** ([`CartpoleParams::default`]): `M = 1 kg`, `m = 0.1 kg`, `l = 0.5 m` (a 1 m
//! pole), `g = 9.81 m/s^2`, `b_c = 5e-4 N s/m`, `b_p = 2e-4 N m s`, `f_max = 10 N`, simulator
//! step `dt = 0.01 s` (an episode is 10 s) integrated with one RK4 step.
//!
//! **Observation** (5): `[x, cos(theta), sin(theta), x', theta']`.
//!
//! **Reward** per simulator step, a product of terms in `[0, 1]` in the style of the DeepMind
//! Control Suite, so that it is 1 only balanced, centred, still and without effort:
//! - upright `(cos(theta) + 1) / 2`;
//! - centred `(1 + tolerance(x, [0, 0], margin 2, gaussian, 0.1)) / 2`;
//! - small control `(4 + tolerance(u, [0, 0], margin 1, quadratic, 0)) / 5`;
//! - small velocity `(1 + tolerance(theta', [0, 0], margin 5, gaussian, 0.1)) / 2`.
//!
//! **Reset**: swing-up starts hanging, `theta = pi + 0.01 N(0,1)`, `x = 0.01 N(0,1)`,
//! velocities `0.01 N(0,1)`; balance starts near upright, `theta` uniform in `[-0.1, 0.1]`,
//! `x` uniform in `[-0.25, 0.25]`, velocities `0.01 N(0,1)`.

use super::{Clock, ParamCheck, Sigmoid, SplitMix, Tolerance, integrate, started, wrap_angle};
use crate::Result;

/// Which cart-pole task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Start hanging down, swing up and balance.
    Swingup,
    /// Start near upright, keep it there.
    Balance,
}

/// Physical constants of the cart-pole.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CartpoleParams {
    /// Cart mass (kg).
    pub cart_mass: f64,
    /// Pole mass (kg).
    pub pole_mass: f64,
    /// Pole half-length (m): distance from the hinge to the pole's centre of mass.
    pub half_length: f64,
    /// Gravity (m/s^2).
    pub gravity: f64,
    /// Cart viscous friction (N s / m).
    pub cart_friction: f64,
    /// Hinge viscous damping (N m s / rad).
    pub pole_damping: f64,
    /// Force at action 1 (N).
    pub max_force: f64,
    /// Simulator step (s).
    pub dt: f64,
    /// RK4 sub-steps per simulator step.
    pub substeps: usize,
}

impl Default for CartpoleParams {
    fn default() -> Self {
        Self {
            cart_mass: 1.0,
            pole_mass: 0.1,
            half_length: 0.5,
            gravity: 9.81,
            cart_friction: 5e-4,
            pole_damping: 2e-4,
            max_force: 10.0,
            dt: 0.01,
            substeps: 1,
        }
    }
}

/// The cart-pole swing-up or balance task.
#[derive(Clone, Debug)]
pub struct Cartpole {
    task: Task,
    params: CartpoleParams,
    state: [f64; 4],
    clock: Clock,
}

impl Cartpole {
    /// The task with the default constants, reset with seed 0.
    pub fn new(task: Task) -> Self {
        Self::build(task, CartpoleParams::default())
    }

    /// The task with other constants, reset with seed 0. Masses and the half-length must be
    /// finite and positive, friction, damping and the force limit finite and non-negative,
    /// `dt` in (0, [`MAX_DT`](super::MAX_DT)] and `substeps` in
    /// 1..=[`MAX_SUBSTEPS`](super::MAX_SUBSTEPS); otherwise
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) names the field.
    pub fn with_params(task: Task, params: CartpoleParams) -> Result<Self> {
        ParamCheck::new("cartpole")
            .positive("cart_mass", params.cart_mass)?
            .positive("pole_mass", params.pole_mass)?
            .positive("half_length", params.half_length)?
            .finite("gravity", params.gravity)?
            .non_negative("cart_friction", params.cart_friction)?
            .non_negative("pole_damping", params.pole_damping)?
            .non_negative("max_force", params.max_force)?
            .integrator(params.dt, params.substeps)?;
        Ok(Self::build(task, params))
    }

    fn build(task: Task, params: CartpoleParams) -> Self {
        started(Self {
            task,
            params,
            state: [0.0; 4],
            clock: Clock::new(),
        })
    }

    /// Same task without cart friction or hinge damping.
    pub fn frictionless(mut self) -> Self {
        self.params.cart_friction = 0.0;
        self.params.pole_damping = 0.0;
        self
    }

    super::task_accessors!(
        CartpoleParams,
        4,
        "`[x, theta, x', theta']`, theta from upright."
    );

    /// Total mechanical energy (J), zero potential at the hinge height.
    pub fn energy(&self) -> f64 {
        let p = &self.params;
        let (m, l) = (p.pole_mass, p.half_length);
        let [_, th, xd, thd] = self.state;
        0.5 * (p.cart_mass + m) * xd * xd
            + m * l * th.cos() * xd * thd
            + 2.0 / 3.0 * m * l * l * thd * thd
            + m * p.gravity * l * th.cos()
    }

    fn deriv(&self, s: &[f64; 4], u: f64) -> [f64; 4] {
        let p = &self.params;
        let (mc, m, l) = (p.cart_mass, p.pole_mass, p.half_length);
        let [_, th, xd, thd] = *s;
        let (sin, cos) = th.sin_cos();
        // [a11 a12; a12 a22] [x''; theta''] = [r1; r2]
        let a11 = mc + m;
        let a12 = m * l * cos;
        let a22 = 4.0 / 3.0 * m * l * l;
        let r1 = p.max_force * u + m * l * sin * thd * thd - p.cart_friction * xd;
        let r2 = m * p.gravity * l * sin - p.pole_damping * thd;
        // det >= (M + m/4) 4/3 m l^2 > 0, so the system is always solvable.
        let det = a11 * a22 - a12 * a12;
        let xdd = (r1 * a22 - a12 * r2) / det;
        let thdd = (a11 * r2 - a12 * r1) / det;
        [xd, thd, xdd, thdd]
    }

    /// Reward of the current state after applying `u` (clipped action), in `[0, 1]`.
    pub fn reward(&self, u: f64) -> f64 {
        let [x, th, _, thd] = self.state;
        let upright = (th.cos() + 1.0) / 2.0;
        let zero = Tolerance::bounds(0.0, 0.0);
        let centred = (1.0 + zero.margin(2.0).reward(x)) / 2.0;
        let quadratic = zero.margin(1.0).sigmoid(Sigmoid::Quadratic, 0.0);
        let small_control = (4.0 + quadratic.reward(u)) / 5.0;
        let small_velocity = (1.0 + zero.margin(5.0).reward(thd)) / 2.0;
        upright * centred * small_control * small_velocity
    }

    fn sim_step(&mut self, u: &[f64; 1]) -> f64 {
        let u = u[0];
        let p = &self.params;
        self.state = integrate(&self.state, p.dt, p.substeps, |s| self.deriv(s, u));
        self.state[1] = wrap_angle(self.state[1]);
        self.reward(u)
    }

    fn task_name(&self) -> &'static str {
        match self.task {
            Task::Swingup => "cartpole-swingup",
            Task::Balance => "cartpole-balance",
        }
    }

    fn draw_state(&mut self, rng: &mut SplitMix) {
        let (x, th) = match self.task {
            Task::Swingup => (
                0.01 * rng.normal(),
                std::f64::consts::PI + 0.01 * rng.normal(),
            ),
            Task::Balance => (rng.uniform(-0.25, 0.25), rng.uniform(-0.1, 0.1)),
        };
        self.state = [x, wrap_angle(th), 0.01 * rng.normal(), 0.01 * rng.normal()];
    }

    fn observe(&self) -> Vec<f32> {
        let [x, th, xd, thd] = self.state;
        [x, th.cos(), th.sin(), xd, thd]
            .iter()
            .map(|&v| v as f32)
            .collect()
    }
}

super::task_env!(Cartpole, 5, 1);
