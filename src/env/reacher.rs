//! Reacher (`reacher-easy`): a two-link arm in the horizontal plane, torque on both joints,
//! must put its fingertip on a randomly placed target.
//!
//! **State** `(q1, q2, q1', q2')`: shoulder angle, elbow angle relative to the first link, and
//! their rates; plus the target position, fixed for the episode.
//!
//! **Equations of motion**: the two-link manipulator equation documented on the crate-private
//! `TwoLink` helper in [`super`] (uniform rods) without gravity, torques `tau_max (u1, u2)` and
//! viscous damping `b` on both joints:
//!
//! ```text
//! M(q) q'' = tau_max u - b q' - C(q, q')
//! ```
//!
//! Kinetic energy `q'^T M q' / 2` is conserved when `b = 0` and `u = 0`. Both joints turn
//! freely (no joint limits).
//!
//! **Constants** ([`ReacherParams::default`]): both links `0.1 kg`, `0.12 m` (reach 0.24 m),
//! uniform rods; `b = 0.01 N m s` per joint, `tau_max = 0.05 N m` (top joint speed about
//! `tau_max / b = 5 rad/s`), simulator step `dt = 0.02 s` (an episode is 20 s) integrated with
//! RK4 in two sub-steps of 0.01 s.
//!
//! **Observation** (8): `[cos q1, sin q1, cos q2, sin q2, target_x - tip_x, target_y - tip_y,
//! q1', q2']`.
//!
//! **Reward** per simulator step: `tolerance(|tip - target|, [0, 0.05], margin 0)`, i.e. 1 while
//! the fingertip is within the target radius of 5 cm and 0 otherwise. Like the DeepMind
//! Control Suite's reacher this one is sparse.
//!
//! **Reset**: joint angles uniform in `[-pi, pi)`, velocities 0, target at an angle uniform in
//! `[-pi, pi)` and a distance uniform in `[0.05, 0.20] m` from the shoulder.

use super::{Clock, ParamCheck, SplitMix, Tolerance, TwoLink, started};
use crate::Result;

/// The task's name.
const NAME: &str = "reacher-easy";

/// Physical constants of the reacher.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReacherParams {
    /// Mass of the upper link (kg).
    pub mass1: f64,
    /// Mass of the lower link (kg).
    pub mass2: f64,
    /// Length of the upper link (m).
    pub length1: f64,
    /// Length of the lower link (m).
    pub length2: f64,
    /// Viscous damping of each joint (N m s / rad).
    pub damping: f64,
    /// Torque of each joint at action 1 (N m).
    pub max_torque: f64,
    /// Fingertip-to-target distance (m) that earns reward 1.
    pub target_radius: f64,
    /// Simulator step (s).
    pub dt: f64,
    /// RK4 sub-steps per simulator step.
    pub substeps: usize,
}

impl Default for ReacherParams {
    fn default() -> Self {
        Self {
            mass1: 0.1,
            mass2: 0.1,
            length1: 0.12,
            length2: 0.12,
            damping: 0.01,
            max_torque: 0.05,
            target_radius: 0.05,
            dt: 0.02,
            substeps: 2,
        }
    }
}

impl ReacherParams {
    fn links(&self) -> TwoLink {
        let (masses, lengths) = ([self.mass1, self.mass2], [self.length1, self.length2]);
        TwoLink::rods(masses, lengths, 0.0)
    }
}

/// The reacher task with the easy (5 cm) target.
#[derive(Clone, Debug)]
pub struct Reacher {
    params: ReacherParams,
    state: [f64; 4],
    target: [f64; 2],
    clock: Clock,
}

impl Reacher {
    /// The task with other constants, reset with seed 0. Masses and lengths must be finite and
    /// positive, damping and the actuator limit finite and non-negative, `dt` in (0,
    /// [`MAX_DT`](super::MAX_DT)] and `substeps` in 1..=[`MAX_SUBSTEPS`](super::MAX_SUBSTEPS);
    /// otherwise [`Error::InvalidArgument`](crate::Error::InvalidArgument) names the field.
    pub fn with_params(params: ReacherParams) -> Result<Self> {
        params
            .links()
            .check(&ParamCheck::new(NAME), params.damping, params.max_torque)?
            .non_negative("target_radius", params.target_radius)?
            .integrator(params.dt, params.substeps)?;
        Ok(Self::build(params))
    }

    fn build(params: ReacherParams) -> Self {
        started(Self {
            params,
            state: [0.0; 4],
            target: [0.0; 2],
            clock: Clock::new(),
        })
    }

    super::task_accessors!(ReacherParams, 4, "`[q1, q2, q1', q2']`.");

    /// Target position relative to the shoulder (m).
    pub fn target(&self) -> [f64; 2] {
        self.target
    }

    /// Move the target (for tests and controllers); both coordinates must be finite.
    pub fn set_target(&mut self, target: [f64; 2]) -> Result<()> {
        ParamCheck::new(NAME).state("target", &target)?;
        self.target = target;
        Ok(())
    }

    super::two_link_methods!(
        "Kinetic energy (J); there is no potential energy in the horizontal plane.",
        "Fingertip position relative to the shoulder (m)."
    );

    /// Reward of the current state, in `[0, 1]`.
    pub fn reward(&self) -> f64 {
        let [x, y] = self.tip();
        let dist = (self.target[0] - x).hypot(self.target[1] - y);
        Tolerance::bounds(0.0, self.params.target_radius).reward(dist)
    }

    fn draw_state(&mut self, rng: &mut SplitMix) {
        self.state = TwoLink::random_pose(rng);
        let pi = std::f64::consts::PI;
        let angle = rng.uniform(-pi, pi);
        let radius = rng.uniform(0.05, 0.20);
        self.target = [radius * angle.cos(), radius * angle.sin()];
    }

    fn sim_step(&mut self, u: &[f64; 2]) -> f64 {
        self.drive([self.params.max_torque * u[0], self.params.max_torque * u[1]])
    }

    fn observe(&self) -> Vec<f32> {
        let [q1, q2, w1, w2] = self.state;
        let [x, y] = self.tip();
        [
            q1.cos(),
            q1.sin(),
            q2.cos(),
            q2.sin(),
            self.target[0] - x,
            self.target[1] - y,
            w1,
            w2,
        ]
        .iter()
        .map(|&v| v as f32)
        .collect()
    }
}

super::task_with_defaults!(Reacher(ReacherParams), NAME, 8, 2);
