//! MPPI planning over the world model with TD-MPC2's semantics, batched over environments,
//! one submit and one read-back per [`Planner::plan`] call.
//!
//! # The algorithm (what the GPU does and `reference::planner` mirrors)
//!
//! Plan call number `c` (counting from 0 per planner) for B environments, N samples of
//! which the first P are policy trajectories, horizon T, action dimension A, I iterations.
//! Sample rows are ordered `r = n * B + b` (sample n of environment b); actions are stored
//! `[T, N, B, A]`. Random draws are keyed as in [`config::streams`].
//!
//! 1. `z0 = encoder(obs)`, `[B, L]`.
//! 2. Policy trajectories (P > 0): `zp[n * B + b] = z0[b]` for n < P; for t in 0..T:
//!    `a = policy_sample(pi(zp), eps)` with eps the normals of stream `pi_traj(c, t)`
//!    (element `(n * B + b) * A + a`), stored as `actions[t, n, b]`; if t < T - 1,
//!    `zp = dynamics(zp, a)`. They are drawn once per call and kept in every iteration.
//! 3. `mean[b, t] = 0` if `first_step[b]`, else `prev_mean[b, t + 1]` for t < T - 1 and 0 at
//!    T - 1 (the warm-start shift); `std = max_std`.
//! 4. For each iteration i:
//!    1. for n >= P: `actions[t, n, b, a] = clamp(mean[b, t, a] + std[b, t, a] * eps, -1, 1)`,
//!       eps the normal element `((t * N + n) * B + b) * A + a` of stream `sampling(c, i)`;
//!    2. `z = z0[b]` on every row; `G = 0`, `g = 1`, `alive = 1`; for t in 0..T: `G += g *
//!       alive * two_hot_inv(reward(z, actions[t]))`, `z = dynamics(z, actions[t])`, `g *=
//!       discount`, and for episodic models `alive = 0` from the first step whose
//!       `termination(z)` logit is above 0 (probability above 0.5);
//!    3. `aT = policy_sample(pi(z), eps)` with eps from stream `terminal(c, i)` (element
//!       `(n * B + b) * A + a`); the two heads `chosen_heads(seed, c, i, num_q)`;
//!       `value = G + g * alive * (Q_h0 + Q_h1) / 2` (each `two_hot_inv` of the head's logits at
//!       `(z, aT)`), NaN replaced by 0 as TD-MPC2 does;
//!    4. per environment, the kept samples: the top `num_elites` by value (ties to the lower
//!       n), in descending order, or all N in order of n for plain MPPI; `v_max` their
//!       largest value; weights `exp(temperature * (v - v_max))` (EliteMppi), `exp((v -
//!       v_max) / lambda)` (Mppi) or 1 (Cem), normalized to sum 1;
//!       `mean = sum s x / (sum s + 1e-9)`, `std = sqrt(sum s (x - mean)^2 / (sum s +
//!       1e-9))` clamped to [min_std, max_std], per time step and action dimension.
//! 5. After the last iteration, per environment: the kept sample `e* = argmax_e (ln s_e +
//!    gumbel_e)` (Gumbel element `b * kept + e` of stream `gumbel(c)`, ties to the lower
//!    e); the plan's action is that sample's first action, plus in train mode `std[b, 0] *
//!    eps` (normal element `b * A + a` of stream `explore(c)`), clamped to [-1, 1]; the plan
//!    also returns `mean[b, 0]`, `std[b, 0]` and the sample's value; `prev_mean = mean`.

pub mod config;
pub mod custom;
mod gpu;
pub mod problems;

pub use config::{PlanMode, PlannerConfig, PlannerMode};
pub use gpu::{KERNELS, PendingPlan, Plan, PlanTiming, Planner, pipeline_constants};
