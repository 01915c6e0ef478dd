//! Pendulum swing-up (`pendulum-swingup`): a torque-limited point-mass pendulum that must be
//! pumped up to upright and held there.
//!
//! **State** `(theta, omega)`, `theta` measured from upright (0 = up, pi = hanging), counter-
//! clockwise positive.
//!
//! **Equation of motion** (point mass `m` on a massless rod of length `l`, viscous joint
//! damping `b`, torque `tau = tau_max * u`, `u` in `[-1, 1]`):
//!
//! ```text
//! m l^2 theta'' = m g l sin(theta) - b omega + tau
//! ```
//!
//! Energy `E = m l^2 omega^2 / 2 + m g l cos(theta)` is conserved when `b = 0` and `u = 0`.
//!
//! **Constants** ([`PendulumParams::default`]): `m = 1 kg`, `l = 0.5 m`, `g = 9.81 m/s^2`,
//! `b = 0.05 N m s`, `tau_max = 2 N m` (less than `m g l = 4.9 N m`, so it cannot lift straight
//! up and must swing), simulator step `dt = 0.02 s` (an episode is 20 s) integrated with RK4 in
//! two sub-steps of 0.01 s.
//!
//! **Observation** (3): `[cos(theta), sin(theta), omega]`.
//!
//! **Reward** per simulator step: `tolerance(cos(theta), [cos 30deg, 1], margin 1, gaussian,
//! 0.1)`: 1 within 30 degrees of upright, about 0.18 horizontal, below 1e-3 hanging.
//!
//! **Reset**: `theta` uniform in `[-pi, pi)`, `omega = 0`, as in the DeepMind Control Suite.

use super::{Clock, ParamCheck, SplitMix, Tolerance, integrate, started, wrap_angle};
use crate::Result;

/// The task's name.
const NAME: &str = "pendulum-swingup";

/// Physical constants of the pendulum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PendulumParams {
    /// Bob mass (kg).
    pub mass: f64,
    /// Rod length (m).
    pub length: f64,
    /// Gravity (m/s^2).
    pub gravity: f64,
    /// Viscous joint damping (N m s / rad).
    pub damping: f64,
    /// Torque at action 1 (N m).
    pub max_torque: f64,
    /// Simulator step (s).
    pub dt: f64,
    /// RK4 sub-steps per simulator step.
    pub substeps: usize,
}

impl Default for PendulumParams {
    fn default() -> Self {
        Self {
            mass: 1.0,
            length: 0.5,
            gravity: 9.81,
            damping: 0.05,
            max_torque: 2.0,
            dt: 0.02,
            substeps: 2,
        }
    }
}

/// The pendulum swing-up task.
#[derive(Clone, Debug)]
pub struct Pendulum {
    params: PendulumParams,
    state: [f64; 2],
    clock: Clock,
}

impl Pendulum {
    /// The task with other constants, reset with seed 0. Masses and lengths must be finite and
    /// positive, damping and the actuator limit finite and non-negative, `dt` in (0,
    /// [`MAX_DT`](super::MAX_DT)] and `substeps` in 1..=[`MAX_SUBSTEPS`](super::MAX_SUBSTEPS);
    /// otherwise [`Error::InvalidArgument`](crate::Error::InvalidArgument) names the field.
    pub fn with_params(params: PendulumParams) -> Result<Self> {
        ParamCheck::new(NAME)
            .positive("mass", params.mass)?
            .positive("length", params.length)?
            .finite("gravity", params.gravity)?
            .non_negative("damping", params.damping)?
            .non_negative("max_torque", params.max_torque)?
            .integrator(params.dt, params.substeps)?;
        Ok(Self::build(params))
    }

    fn build(params: PendulumParams) -> Self {
        started(Self {
            params,
            state: [0.0; 2],
            clock: Clock::new(),
        })
    }

    /// Same task without damping (energy is then conserved under zero torque).
    pub fn frictionless(mut self) -> Self {
        self.params.damping = 0.0;
        self
    }

    super::task_accessors!(PendulumParams, 2, "`[theta, omega]`, theta from upright.");

    /// Total mechanical energy (J), zero potential at the pivot height.
    pub fn energy(&self) -> f64 {
        let p = &self.params;
        let [theta, omega] = self.state;
        0.5 * p.mass * p.length * p.length * omega * omega
            + p.mass * p.gravity * p.length * theta.cos()
    }

    fn deriv(&self, x: &[f64; 2], u: f64) -> [f64; 2] {
        let p = &self.params;
        let inertia = p.mass * p.length * p.length;
        let torque =
            p.mass * p.gravity * p.length * x[0].sin() - p.damping * x[1] + p.max_torque * u;
        [x[1], torque / inertia]
    }

    /// Reward of the current state, in `[0, 1]`.
    pub fn reward(&self) -> f64 {
        let upright_cos = 30f64.to_radians().cos();
        Tolerance::bounds(upright_cos, 1.0)
            .margin(1.0)
            .reward(self.state[0].cos())
    }

    fn draw_state(&mut self, rng: &mut SplitMix) {
        self.state = [
            rng.uniform(-std::f64::consts::PI, std::f64::consts::PI),
            0.0,
        ];
    }

    fn sim_step(&mut self, u: &[f64; 1]) -> f64 {
        let p = &self.params;
        self.state = integrate(&self.state, p.dt, p.substeps, |x| self.deriv(x, u[0]));
        // Keep theta bounded so long runs do not lose precision in cos/sin.
        self.state[0] = wrap_angle(self.state[0]);
        self.reward()
    }

    fn observe(&self) -> Vec<f32> {
        let [theta, omega] = self.state;
        vec![theta.cos() as f32, theta.sin() as f32, omega as f32]
    }
}

super::task_with_defaults!(Pendulum(PendulumParams), NAME, 3, 1);
