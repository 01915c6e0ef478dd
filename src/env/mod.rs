//! Control environments for the trainer: the [`Env`] trait that any engine can implement, and
//! built-in tasks in plain Rust that follow the DeepMind Control Suite's conventions.
//!
//! Conventions shared by every built-in task:
//! - actions are vectors in `[-1, 1]`; larger values are clipped, non-finite values and wrong
//!   lengths are errors;
//! - an episode is [`SIM_STEPS`] (1000) simulator steps; each agent step holds its action for
//!   [`ACTION_REPEAT`] (2) simulator steps, so [`Env::episode_len`] is 500 agent steps;
//! - the reward of one simulator step lies in `[0, 1]` and is built from smooth [`Tolerance`]
//!   terms; [`Env::step`] returns the sum over the action repeat, so an agent step earns at most
//!   2 and an episode at most 1000;
//! - physics runs in `f64` with a fixed-step RK4 integrator ([`integrate`], sub-steps of [`rk4`]), observations are `f32`.
//!
//! Tasks, each documented in its module: [`pendulum`] (`pendulum-swingup`), [`cartpole`]
//! (`cartpole-swingup`, `cartpole-balance`), [`acrobot`] (`acrobot-swingup`) and [`reacher`]
//! (`reacher-easy`). [`make`] builds one by name.

pub mod acrobot;
pub mod cartpole;
pub mod pendulum;
pub mod reacher;

use crate::{Error, Result};

/// Simulator steps per episode, as in the DeepMind Control Suite.
pub const SIM_STEPS: usize = 1000;
/// Simulator steps per agent step.
pub const ACTION_REPEAT: usize = 2;
/// Agent steps per episode.
pub const EPISODE_LEN: usize = SIM_STEPS / ACTION_REPEAT;

/// Names accepted by [`make`].
pub const NAMES: [&str; 5] = [
    "pendulum-swingup",
    "cartpole-swingup",
    "cartpole-balance",
    "acrobot-swingup",
    "reacher-easy",
];

/// What one agent step returns.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Observation after the step.
    pub obs: Vec<f32>,
    /// Reward summed over the action repeat (each simulator step contributes `[0, 1]`).
    pub reward: f32,
    /// True on the last step of the episode; call [`Env::reset`] before stepping again.
    pub done: bool,
}

/// A control task with continuous actions in `[-1, 1]`.
///
/// Built-in tasks implement it; other engines (a MuJoCo binding, a GPU batch simulator) can too.
pub trait Env: Send {
    /// Task name, e.g. `"cartpole-swingup"`.
    fn name(&self) -> &str;
    /// Length of the observation vector.
    fn obs_dim(&self) -> usize;
    /// Length of the action vector; each entry lies in `[-1, 1]`.
    fn action_dim(&self) -> usize;
    /// Agent steps per episode.
    fn episode_len(&self) -> usize;
    /// Simulator steps per agent step (the action is held over them).
    fn action_repeat(&self) -> usize;
    /// Start a new episode from an initial state drawn with `seed`; returns the observation.
    /// The same seed gives the same episode.
    fn reset(&mut self, seed: u64) -> Vec<f32>;
    /// Apply `action` for [`Env::action_repeat`] simulator steps.
    ///
    /// Errors with [`Error::Shape`] for a wrong action length and [`Error::InvalidArgument`] for
    /// a non-finite action or a step after the episode ended.
    fn step(&mut self, action: &[f32]) -> Result<Step>;
}

/// Build a built-in task by name (one of [`NAMES`]).
pub fn make(name: &str) -> Result<Box<dyn Env>> {
    Ok(match name {
        "pendulum-swingup" => Box::new(pendulum::Pendulum::new()),
        "cartpole-swingup" => Box::new(cartpole::Cartpole::new(cartpole::Task::Swingup)),
        "cartpole-balance" => Box::new(cartpole::Cartpole::new(cartpole::Task::Balance)),
        "acrobot-swingup" => Box::new(acrobot::Acrobot::new()),
        "reacher-easy" => Box::new(reacher::Reacher::new()),
        _ => {
            return Err(Error::InvalidArgument(format!(
                "unknown environment {name:?}; known: {}",
                NAMES.join(", ")
            )));
        }
    })
}

/// Shape of the margin of a [`Tolerance`]: how the reward falls off outside the bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sigmoid {
    /// `exp(-(d s)^2 / 2)`: fast fall-off, nearly zero a few margins away.
    Gaussian,
    /// `1 / (1 + (d s)^2)`: heavy tail, never quite zero.
    LongTail,
    /// `1 - d s`, zero beyond; reaches zero at `d = 1` when `value_at_margin` is 0.
    Linear,
    /// `1 - (d s)^2`, zero beyond.
    Quadratic,
}

/// Smooth "is `x` within `[lower, upper]`" reward in `[0, 1]`, dm_control's `tolerance`:
/// [`Tolerance::bounds`] with its defaults (margin 0, gaussian, 0.1), changed by the other
/// methods, then [`Tolerance::reward`] of `x`.
///
/// 1 inside the bounds. Outside, the distance to the nearest bound in units of `margin`,
/// `d = dist / margin`, goes through `sigmoid`, scaled so that `d = 1` gives `value_at_margin`.
/// With `margin == 0` the result is the indicator of the bounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Lower bound.
    pub lower: f64,
    /// Upper bound, at least `lower`.
    pub upper: f64,
    /// Width of the fall-off outside the bounds, `>= 0`.
    pub margin: f64,
    /// Shape of the fall-off.
    pub sigmoid: Sigmoid,
    /// The reward at `margin` outside the bounds: in `[0, 1)` (`(0, 1)` for the gaussian and
    /// long-tail shapes).
    pub value_at_margin: f64,
}

impl Tolerance {
    /// `[lower, upper]` with dm_control's defaults: margin 0, gaussian, value at margin 0.1.
    pub const fn bounds(lower: f64, upper: f64) -> Self {
        Tolerance {
            lower,
            upper,
            margin: 0.0,
            sigmoid: Sigmoid::Gaussian,
            value_at_margin: 0.1,
        }
    }

    /// With a margin.
    pub const fn margin(self, margin: f64) -> Self {
        Tolerance { margin, ..self }
    }

    /// With a shape of the fall-off and the reward at the margin.
    pub const fn sigmoid(self, sigmoid: Sigmoid, value_at_margin: f64) -> Self {
        Tolerance {
            sigmoid,
            value_at_margin,
            ..self
        }
    }

    /// The reward of `x`.
    ///
    /// # Panics
    ///
    /// If `lower > upper`, `margin < 0` or `value_at_margin` is out of its range, or one of
    /// them is NaN: those are programming errors in a task. [`Tolerance::try_reward`] returns
    /// an error instead.
    pub fn reward(&self, x: f64) -> f64 {
        crate::error::or_panic(self.try_reward(x))
    }

    /// [`Tolerance::reward`], with an [`Error::InvalidArgument`] instead of a panic for bounds,
    /// margin or `value_at_margin` out of range. A NaN `x` gives NaN.
    pub fn try_reward(&self, x: f64) -> Result<f64> {
        let Tolerance {
            lower,
            upper,
            margin,
            sigmoid,
            value_at_margin,
        } = *self;
        let bad = |m: String| Err(Error::InvalidArgument(format!("tolerance: {m}")));
        if lower.is_nan() || upper.is_nan() || lower > upper {
            return bad(format!("lower {lower} > upper {upper} (or NaN)"));
        }
        if margin.is_nan() || margin < 0.0 {
            return bad(format!("margin {margin} must be >= 0"));
        }
        let v = value_at_margin;
        let open = matches!(sigmoid, Sigmoid::Gaussian | Sigmoid::LongTail);
        if !(if open {
            v > 0.0 && v < 1.0
        } else {
            (0.0..1.0).contains(&v)
        }) {
            return bad(format!(
                "{sigmoid:?} value_at_margin {v} outside {}",
                if open { "(0, 1)" } else { "[0, 1)" }
            ));
        }
        if x.is_nan() {
            return Ok(f64::NAN);
        }
        let inside = (lower..=upper).contains(&x);
        if inside {
            return Ok(1.0);
        }
        if margin == 0.0 {
            return Ok(0.0);
        }
        let d = if x < lower { lower - x } else { x - upper } / margin;
        let y = match sigmoid {
            Sigmoid::Gaussian => {
                // Solve exp(-s^2/2) = v for the scale s.
                let s = (-2.0 * v.ln()).sqrt();
                (-0.5 * (d * s).powi(2)).exp()
            }
            Sigmoid::LongTail => {
                let s = (1.0 / v - 1.0).sqrt();
                1.0 / (1.0 + (d * s).powi(2))
            }
            Sigmoid::Linear => (1.0 - d * (1.0 - v)).max(0.0),
            Sigmoid::Quadratic => (1.0 - (d * (1.0 - v).sqrt()).powi(2)).max(0.0),
        };
        Ok(y.clamp(0.0, 1.0))
    }
}

/// One classical Runge-Kutta step of `dx/dt = f(x)` (the control is held constant over `dt`).
pub fn rk4<const N: usize>(x: &[f64; N], dt: f64, f: impl Fn(&[f64; N]) -> [f64; N]) -> [f64; N] {
    let axpy = |a: &[f64; N], h: f64, k: &[f64; N]| -> [f64; N] {
        let mut out = *a;
        for (o, k) in out.iter_mut().zip(k) {
            *o += h * k;
        }
        out
    };
    let k1 = f(x);
    let k2 = f(&axpy(x, 0.5 * dt, &k1));
    let k3 = f(&axpy(x, 0.5 * dt, &k2));
    let k4 = f(&axpy(x, dt, &k3));
    let mut out = *x;
    for i in 0..N {
        out[i] += dt / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]);
    }
    out
}

/// A simulator step of `dt`: `substeps` [`rk4`] steps of `dt / substeps` each. Every built-in
/// task integrates through here.
pub fn integrate<const N: usize>(
    x: &[f64; N],
    dt: f64,
    substeps: usize,
    f: impl Fn(&[f64; N]) -> [f64; N],
) -> [f64; N] {
    let h = dt / substeps as f64;
    let mut x = *x;
    for _ in 0..substeps {
        x = rk4(&x, h, &f);
    }
    x
}

/// Wrap an angle to `(-pi, pi]`.
pub fn wrap_angle(a: f64) -> f64 {
    let two_pi = std::f64::consts::TAU;
    let r = a.rem_euclid(two_pi);
    if r > std::f64::consts::PI {
        r - two_pi
    } else {
        r
    }
}

/// Most RK4 sub-steps per simulator step a task accepts (1000 simulator steps an episode, so
/// an episode is then a million RK4 steps).
pub const MAX_SUBSTEPS: usize = 1000;
/// Longest simulator step (s).
pub const MAX_DT: f64 = 1.0;

/// Checks of a task's constants, with errors that name the task and the field.
pub(crate) struct ParamCheck<'a> {
    task: &'a str,
}

impl<'a> ParamCheck<'a> {
    pub(crate) fn new(task: &'a str) -> Self {
        Self { task }
    }

    fn bad<T>(&self, m: String) -> Result<T> {
        Err(Error::InvalidArgument(format!("{}: {m}", self.task)))
    }

    /// Finite and > 0 (masses, lengths).
    pub(crate) fn positive(&self, name: &str, v: f64) -> Result<&Self> {
        if !(v.is_finite() && v > 0.0) {
            return self.bad(format!("{name} = {v} must be finite and > 0"));
        }
        Ok(self)
    }

    /// Finite and >= 0 (damping, friction, force and torque limits).
    pub(crate) fn non_negative(&self, name: &str, v: f64) -> Result<&Self> {
        if !(v.is_finite() && v >= 0.0) {
            return self.bad(format!("{name} = {v} must be finite and >= 0"));
        }
        Ok(self)
    }

    /// Finite (gravity: either sign).
    pub(crate) fn finite(&self, name: &str, v: f64) -> Result<&Self> {
        if !v.is_finite() {
            return self.bad(format!("{name} = {v} must be finite"));
        }
        Ok(self)
    }

    /// The simulator step and its RK4 sub-steps.
    pub(crate) fn integrator(&self, dt: f64, substeps: usize) -> Result<&Self> {
        if !(dt > 0.0 && dt <= MAX_DT) {
            return self.bad(format!("dt = {dt} s outside (0, {MAX_DT}]"));
        }
        if !(1..=MAX_SUBSTEPS).contains(&substeps) {
            return self.bad(format!("substeps = {substeps} outside 1..={MAX_SUBSTEPS}"));
        }
        Ok(self)
    }

    /// Every component of a state finite.
    pub(crate) fn state(&self, what: &str, s: &[f64]) -> Result<&Self> {
        if let Some(i) = s.iter().position(|v| !v.is_finite()) {
            return self.bad(format!("{what}[{i}] = {} is not finite", s[i]));
        }
        Ok(self)
    }
}

/// The [`Step`] of a task, or an error if the simulation left the finite numbers (constants
/// that make it unstable, e.g. a step too long for the stiffness): then the episode cannot go
/// on and the task must be reset.
pub(crate) fn checked_step(task: &str, obs: Vec<f32>, reward: f32, done: bool) -> Result<Step> {
    if let Some(i) = obs.iter().position(|v| !v.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "{task}: the simulation diverged: observation[{i}] = {} (try a shorter dt or more \
             substeps); reset before stepping again",
            obs[i]
        )));
    }
    if !reward.is_finite() {
        return Err(Error::InvalidArgument(format!(
            "{task}: the simulation diverged: reward {reward}; reset before stepping again"
        )));
    }
    Ok(Step { obs, reward, done })
}

/// Check an action's length and values, and clip it to `[-1, 1]` in `f64`.
pub(crate) fn check_action<const N: usize>(
    task: &str,
    action: &[f32],
    done: bool,
) -> Result<[f64; N]> {
    if action.len() != N {
        return Err(Error::Shape(format!(
            "{task}: action has {} entries, the task takes {N}",
            action.len()
        )));
    }
    if let Some(i) = action.iter().position(|a| !a.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "{task}: action[{i}] = {} is not finite",
            action[i]
        )));
    }
    if done {
        return Err(Error::InvalidArgument(format!(
            "{task}: the episode is over; call reset before stepping again"
        )));
    }
    let mut out = [0.0; N];
    for (o, a) in out.iter_mut().zip(action) {
        *o = (*a as f64).clamp(-1.0, 1.0);
    }
    Ok(out)
}

/// SplitMix64: a tiny, fully specified generator so that initial states depend only on the seed
/// (not on a crate version's choice of algorithm).
#[derive(Clone, Debug)]
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> Self {
        // Decorrelate small consecutive seeds before the first draw.
        Self(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub(crate) fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Standard normal (Box-Muller; one of the pair is dropped, speed does not matter here).
    pub(crate) fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit(); // in (0, 1], so ln is finite
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// A planar chain of two uniform rods on revolute joints: the shared dynamics of [`acrobot`]
/// and [`reacher`].
///
/// `q1` is the first link's angle from the reference direction, `q2` the second link's angle
/// relative to the first. With rod masses `m_i`, lengths `l_i`, centres `c_i = l_i / 2` and
/// inertias about the centre `I_i = m_i l_i^2 / 12`, the manipulator equation is
///
/// ```text
/// M(q) q'' + C(q, q') + G(q) = tau - b q'
/// M11 = I1 + I2 + m1 c1^2 + m2 (l1^2 + c2^2 + 2 l1 c2 cos q2)
/// M12 = I2 + m2 (c2^2 + l1 c2 cos q2),   M22 = I2 + m2 c2^2
/// C   = [-h (2 q1' q2' + q2'^2), h q1'^2],  h = m2 l1 c2 sin q2
/// G   = [(m1 c1 + m2 l1) g sin q1 + m2 c2 g sin(q1 + q2), m2 c2 g sin(q1 + q2)]
/// ```
///
/// with angles measured from straight down when `g > 0`. Energy is `q'^T M q' / 2` plus
/// `-(m1 c1 + m2 l1) g cos q1 - m2 c2 g cos(q1 + q2)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct TwoLink {
    pub(crate) m1: f64,
    pub(crate) m2: f64,
    pub(crate) l1: f64,
    pub(crate) l2: f64,
    pub(crate) gravity: f64,
}

impl TwoLink {
    /// Rods of masses `[m1, m2]` and lengths `[l1, l2]` under `gravity`.
    pub(crate) fn rods(masses: [f64; 2], lengths: [f64; 2], gravity: f64) -> Self {
        let ([m1, m2], [l1, l2]) = (masses, lengths);
        TwoLink {
            m1,
            m2,
            l1,
            l2,
            gravity,
        }
    }

    fn mass_matrix(&self, q2: f64) -> [f64; 3] {
        let (c1, c2) = (self.l1 / 2.0, self.l2 / 2.0);
        let i1 = self.m1 * self.l1 * self.l1 / 12.0;
        let i2 = self.m2 * self.l2 * self.l2 / 12.0;
        let k = self.m2 * self.l1 * c2 * q2.cos();
        let m22 = i2 + self.m2 * c2 * c2;
        let m12 = m22 + k;
        let m11 = i1 + self.m1 * c1 * c1 + self.m2 * self.l1 * self.l1 + m22 + 2.0 * k;
        [m11, m12, m22]
    }

    /// `d/dt [q1, q2, q1', q2']` under joint torques `tau` and viscous damping `damping`.
    pub(crate) fn deriv(&self, s: &[f64; 4], tau: [f64; 2], damping: [f64; 2]) -> [f64; 4] {
        let [q1, q2, w1, w2] = *s;
        let [m11, m12, m22] = self.mass_matrix(q2);
        let c2 = self.l2 / 2.0;
        let h = self.m2 * self.l1 * c2 * q2.sin();
        let g_elbow = self.m2 * c2 * self.gravity * (q1 + q2).sin();
        let g_shoulder =
            (self.m1 * self.l1 / 2.0 + self.m2 * self.l1) * self.gravity * q1.sin() + g_elbow;
        let r1 = tau[0] - damping[0] * w1 + h * (2.0 * w1 * w2 + w2 * w2) - g_shoulder;
        let r2 = tau[1] - damping[1] * w2 - h * w1 * w1 - g_elbow;
        // M is symmetric positive definite, so det > 0.
        let det = m11 * m22 - m12 * m12;
        [
            w1,
            w2,
            (m22 * r1 - m12 * r2) / det,
            (m11 * r2 - m12 * r1) / det,
        ]
    }

    /// Kinetic plus potential energy (J), zero potential at the first joint's height.
    pub(crate) fn energy(&self, s: &[f64; 4]) -> f64 {
        let [q1, q2, w1, w2] = *s;
        let [m11, m12, m22] = self.mass_matrix(q2);
        let kinetic = 0.5 * (m11 * w1 * w1 + 2.0 * m12 * w1 * w2 + m22 * w2 * w2);
        let potential = -(self.m1 * self.l1 / 2.0 + self.m2 * self.l1) * self.gravity * q1.cos()
            - self.m2 * self.l2 / 2.0 * self.gravity * (q1 + q2).cos();
        kinetic + potential
    }

    /// The arm's constants, named as the tasks' fields: masses and lengths finite and
    /// positive, gravity finite, the joints' `damping` and `max_torque` finite and >= 0.
    pub(crate) fn check<'c, 'a>(
        &self,
        check: &'c ParamCheck<'a>,
        damping: f64,
        max_torque: f64,
    ) -> Result<&'c ParamCheck<'a>> {
        check
            .positive("mass1", self.m1)?
            .positive("mass2", self.m2)?
            .positive("length1", self.l1)?
            .positive("length2", self.l2)?
            .finite("gravity", self.gravity)?
            .non_negative("damping", damping)?
            .non_negative("max_torque", max_torque)
    }

    /// The DeepMind Control Suite's initial pose: both angles uniform in `[-pi, pi)`, at rest.
    pub(crate) fn random_pose(rng: &mut SplitMix) -> [f64; 4] {
        let pi = std::f64::consts::PI;
        [rng.uniform(-pi, pi), rng.uniform(-pi, pi), 0.0, 0.0]
    }

    /// A simulator step of `dt` in `substeps` RK4 steps, both angles wrapped after it.
    pub(crate) fn advance(
        &self,
        s: &[f64; 4],
        tau: [f64; 2],
        damping: f64,
        dt: f64,
        substeps: usize,
    ) -> [f64; 4] {
        let mut s = integrate(s, dt, substeps, |s| self.deriv(s, tau, [damping; 2]));
        s[0] = wrap_angle(s[0]);
        s[1] = wrap_angle(s[1]);
        s
    }

    /// Tip of the second link relative to the first joint: `x` along `sin`, `y` along `-cos`
    /// (so `q = 0` points down the `-y` axis).
    pub(crate) fn tip(&self, q1: f64, q2: f64) -> [f64; 2] {
        [
            self.l1 * q1.sin() + self.l2 * (q1 + q2).sin(),
            -self.l1 * q1.cos() - self.l2 * (q1 + q2).cos(),
        ]
    }
}

/// The methods every task has alike, for a task struct with `params: $params`,
/// `state: [f64; $n]` and `clock: Clock` fields and an [`Env`] impl (its name labels errors);
/// `$state` documents the state's components.
macro_rules! task_accessors {
    ($params:ty, $n:literal, $state:literal) => {
        /// Same task with another action repeat (a divisor of 1000); the episode stays 1000
        /// simulator steps.
        pub fn with_action_repeat(mut self, repeat: usize) -> $crate::Result<Self> {
            let name = $crate::env::Env::name(&self);
            self.clock = $crate::env::Clock::with_repeat(name, repeat)?;
            Ok(self)
        }

        /// The constants in use.
        pub fn params(&self) -> &$params {
            &self.params
        }

        #[doc = $state]
        pub fn state(&self) -> [f64; $n] {
            self.state
        }

        /// Overwrite the state (for tests and controllers); every component must be finite.
        pub fn set_state(&mut self, state: [f64; $n]) -> $crate::Result<()> {
            $crate::env::ParamCheck::new($crate::env::Env::name(self)).state("state", &state)?;
            self.state = state;
            Ok(())
        }
    };
}
pub(crate) use task_accessors;

/// The methods the two-link tasks ([`acrobot`], [`reacher`]) have alike, for a task struct
/// with `params` (whose `links()` is the arm, with `damping`, `dt` and `substeps` fields),
/// `state: [f64; 4]` and a `reward()` method: `frictionless`, `energy` and `tip` (documented
/// by `$energy` and `$tip`), and `drive`, one simulator step under joint torques.
macro_rules! two_link_methods {
    ($energy:literal, $tip:literal) => {
        /// Same task without joint damping.
        pub fn frictionless(mut self) -> Self {
            self.params.damping = 0.0;
            self
        }

        #[doc = $energy]
        pub fn energy(&self) -> f64 {
            self.params.links().energy(&self.state)
        }

        #[doc = $tip]
        pub fn tip(&self) -> [f64; 2] {
            self.params.links().tip(self.state[0], self.state[1])
        }

        /// One simulator step under joint torques `tau` (N m); returns its reward.
        fn drive(&mut self, tau: [f64; 2]) -> f64 {
            let p = &self.params;
            self.state = p
                .links()
                .advance(&self.state, tau, p.damping, p.dt, p.substeps);
            self.reward()
        }
    };
}
pub(crate) use two_link_methods;

/// The [`Env`] impl of a built-in task with `$obs` observations and `$act` actions. The task
/// has a `clock: Clock` field and the methods `task_name` (`&'static str`, so it can be held
/// while the simulator is borrowed mutably), `draw_state` (the initial state from the reset's
/// generator), `sim_step` (one simulator step with the clipped action, returning its reward)
/// and `observe`.
macro_rules! task_env {
    ($task:ty, $obs:literal, $act:literal) => {
        impl $crate::env::Env for $task {
            fn name(&self) -> &str {
                self.task_name()
            }
            fn obs_dim(&self) -> usize {
                $obs
            }
            fn action_dim(&self) -> usize {
                $act
            }
            fn episode_len(&self) -> usize {
                self.clock.episode_len()
            }
            fn action_repeat(&self) -> usize {
                self.clock.repeat()
            }

            fn reset(&mut self, seed: u64) -> Vec<f32> {
                self.draw_state(&mut $crate::env::SplitMix::new(seed));
                self.clock.restart();
                self.observe()
            }

            fn step(&mut self, action: &[f32]) -> $crate::Result<$crate::env::Step> {
                let name = self.task_name();
                let mut clock = self.clock.clone();
                let (reward, done) = clock.step::<$act>(name, action, |a| self.sim_step(a))?;
                self.clock = clock;
                $crate::env::checked_step(name, self.observe(), reward, done)
            }
        }
    };
}
pub(crate) use task_env;

/// [`task_env!`] for a task named `$name` and built from its constants alone
/// (`build(params)`), plus `new` and `Default` with the default constants.
macro_rules! task_with_defaults {
    ($task:ident($params:ty), $name:expr, $obs:literal, $act:literal) => {
        impl Default for $task {
            fn default() -> Self {
                Self::new()
            }
        }

        impl $task {
            /// The task with the default constants, reset with seed 0.
            pub fn new() -> Self {
                Self::build(<$params>::default())
            }

            fn task_name(&self) -> &'static str {
                $name
            }
        }

        $crate::env::task_env!($task, $obs, $act);
    };
}
pub(crate) use task_with_defaults;

/// `env` after its first reset (seed 0): what every built-in task's constructor returns.
pub(crate) fn started<E: Env>(mut env: E) -> E {
    env.reset(0);
    env
}

/// Episode bookkeeping shared by the built-in tasks.
#[derive(Clone, Debug)]
pub(crate) struct Clock {
    /// Agent steps taken in this episode.
    t: usize,
    /// Simulator steps per agent step.
    repeat: usize,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self {
            t: 0,
            repeat: ACTION_REPEAT,
        }
    }

    /// Same clock with another action repeat; it must divide [`SIM_STEPS`] so that every
    /// episode is exactly 1000 simulator steps.
    pub(crate) fn with_repeat(task: &str, repeat: usize) -> Result<Self> {
        if repeat == 0 || !SIM_STEPS.is_multiple_of(repeat) {
            return Err(Error::InvalidArgument(format!(
                "{task}: action repeat {repeat} must be a divisor of {SIM_STEPS}"
            )));
        }
        Ok(Self { t: 0, repeat })
    }

    pub(crate) fn repeat(&self) -> usize {
        self.repeat
    }

    pub(crate) fn episode_len(&self) -> usize {
        SIM_STEPS / self.repeat
    }

    pub(crate) fn restart(&mut self) {
        self.t = 0;
    }

    /// One agent step: validate and clip `action`, run `sim` (one simulator step with the
    /// action, returning that step's reward) `repeat` times. Returns the summed reward and
    /// whether the episode ended.
    pub(crate) fn step<const N: usize>(
        &mut self,
        task: &str,
        action: &[f32],
        mut sim: impl FnMut(&[f64; N]) -> f64,
    ) -> Result<(f32, bool)> {
        let a = check_action::<N>(task, action, self.t >= self.episode_len())?;
        let mut reward = 0.0;
        for _ in 0..self.repeat {
            reward += sim(&a);
        }
        self.t += 1;
        Ok((reward as f32, self.t >= self.episode_len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_hits_value_at_margin() {
        for s in [
            Sigmoid::Gaussian,
            Sigmoid::LongTail,
            Sigmoid::Linear,
            Sigmoid::Quadratic,
        ] {
            let t = Tolerance::bounds(0.0, 1.0).sigmoid(s, 0.1);
            assert_eq!(t.margin(1.0).reward(0.5), 1.0);
            let y = t.margin(2.0).reward(3.0);
            assert!((y - 0.1).abs() < 1e-12, "{s:?}: {y}");
            let y = t.margin(2.0).reward(-2.0);
            assert!((y - 0.1).abs() < 1e-12, "{s:?}: {y}");
        }
        assert_eq!(Tolerance::bounds(0.0, 1.0).reward(1.5), 0.0);
    }

    #[test]
    fn wrap_angle_range() {
        for a in [-10.0, -3.2, 0.0, 3.2, 7.0, 100.0] {
            let w = wrap_angle(a);
            assert!(w > -std::f64::consts::PI - 1e-12 && w <= std::f64::consts::PI);
            assert!((w.sin() - f64::sin(a)).abs() < 1e-9 && (w.cos() - a.cos()).abs() < 1e-9);
        }
    }
}
