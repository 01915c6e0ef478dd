//! Acrobot swing-up (`acrobot-swingup`): two links hanging from a passive shoulder, driven
//! only at the elbow, must bring the tip up to a target above the shoulder.
//!
//! **State** `(q1, q2, q1', q2')`: shoulder angle from straight down, elbow angle relative to
//! the first link, and their rates.
//!
//! **Equations of motion**: the two-link manipulator equation documented on the crate-private
//! `TwoLink` helper in [`super`] (uniform rods, gravity), with torque `(0, tau_max u)` and
//! viscous damping `b` on both joints:
//!
//! ```text
//! M(q) q'' = (0, tau_max u) - b q' - C(q, q') - G(q)
//! ```
//!
//! Energy (kinetic `q'^T M q' / 2` plus gravity) is conserved when `b = 0` and `u = 0`.
//!
//! **Constants** ([`AcrobotParams::default`]): both links `1 kg`, `1 m`, uniform rods;
//! `g = 9.81 m/s^2`, `b = 0.02 N m s` per joint, `tau_max = 2 N m` (under the 4.9 N m that holding
//! the lower link horizontal takes, so it must pump energy), simulator step `dt = 0.01 s` (an
//! episode is 10 s) integrated with RK4 in four sub-steps of 0.0025 s (the arm tumbles fast;
//! this keeps the energy error of a free 10 s fall near 1e-6).
//!
//! **Observation** (6): `[cos q1, sin q1, cos q2, sin q2, q1', q2']`.
//!
//! **Reward** per simulator step: `tolerance(|tip - target|, [0, 0.2], margin 1, gaussian,
//! 0.1)`, the target being the point `l1 + l2 = 2 m` straight above the shoulder: 1 within
//! 0.2 m of it, about 0.1 at 1.2 m, essentially 0 hanging (4 m away).
//!
//! **Reset**: both angles uniform in `[-pi, pi)`, velocities 0, as in the DeepMind Control
//! Suite.

use super::{Clock, ParamCheck, SplitMix, Tolerance, TwoLink, started};
use crate::Result;

/// The task's name.
const NAME: &str = "acrobot-swingup";

/// Physical constants of the acrobot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AcrobotParams {
    /// Mass of the upper link (kg).
    pub mass1: f64,
    /// Mass of the lower link (kg).
    pub mass2: f64,
    /// Length of the upper link (m).
    pub length1: f64,
    /// Length of the lower link (m).
    pub length2: f64,
    /// Gravity (m/s^2).
    pub gravity: f64,
    /// Viscous damping of each joint (N m s / rad).
    pub damping: f64,
    /// Elbow torque at action 1 (N m).
    pub max_torque: f64,
    /// Simulator step (s).
    pub dt: f64,
    /// RK4 sub-steps per simulator step.
    pub substeps: usize,
}

impl Default for AcrobotParams {
    fn default() -> Self {
        Self {
            mass1: 1.0,
            mass2: 1.0,
            length1: 1.0,
            length2: 1.0,
            gravity: 9.81,
            damping: 0.02,
            max_torque: 2.0,
            dt: 0.01,
            substeps: 4,
        }
    }
}

impl AcrobotParams {
    fn links(&self) -> TwoLink {
        let (masses, lengths) = ([self.mass1, self.mass2], [self.length1, self.length2]);
        TwoLink::rods(masses, lengths, self.gravity)
    }
}

/// Distance from the target (m) within which the reward is 1.
const TARGET_RADIUS: f64 = 0.2;

/// The acrobot swing-up task.
#[derive(Clone, Debug)]
pub struct Acrobot {
    params: AcrobotParams,
    state: [f64; 4],
    clock: Clock,
}

impl Acrobot {
    /// The task with other constants, reset with seed 0. Masses and lengths must be finite and
    /// positive, damping and the actuator limit finite and non-negative, `dt` in (0,
    /// [`MAX_DT`](super::MAX_DT)] and `substeps` in 1..=[`MAX_SUBSTEPS`](super::MAX_SUBSTEPS);
    /// otherwise [`Error::InvalidArgument`](crate::Error::InvalidArgument) names the field.
    pub fn with_params(params: AcrobotParams) -> Result<Self> {
        params
            .links()
            .check(&ParamCheck::new(NAME), params.damping, params.max_torque)?
            .integrator(params.dt, params.substeps)?;
        Ok(Self::build(params))
    }

    fn build(params: AcrobotParams) -> Self {
        started(Self {
            params,
            state: [0.0; 4],
            clock: Clock::new(),
        })
    }

    super::task_accessors!(
        AcrobotParams,
        4,
        "`[q1, q2, q1', q2']`, q1 from straight down, q2 relative to the first link."
    );

    super::two_link_methods!(
        "Total mechanical energy (J), zero potential at the shoulder's height.",
        "Tip position relative to the shoulder (m), `y` up."
    );

    /// Reward of the current state, in `[0, 1]`.
    pub fn reward(&self) -> f64 {
        let [x, y] = self.tip();
        let target = self.params.length1 + self.params.length2;
        let dist = x.hypot(y - target);
        Tolerance::bounds(0.0, TARGET_RADIUS)
            .margin(1.0)
            .reward(dist)
    }

    fn draw_state(&mut self, rng: &mut SplitMix) {
        self.state = TwoLink::random_pose(rng);
    }

    fn sim_step(&mut self, u: &[f64; 1]) -> f64 {
        self.drive([0.0, self.params.max_torque * u[0]])
    }

    fn observe(&self) -> Vec<f32> {
        let [q1, q2, w1, w2] = self.state;
        [q1.cos(), q1.sin(), q2.cos(), q2.sin(), w1, w2]
            .iter()
            .map(|&v| v as f32)
            .collect()
    }
}

super::task_with_defaults!(Acrobot(AcrobotParams), NAME, 6, 1);
