//! The replay buffer of the trainer: whole episodes of (observation, action, reward, planner
//! Gaussian), and uniform sampling of contiguous sub-trajectories of horizon T within one
//! episode (TD-MPC2's SliceSampler with strict length), laid out time-major for
//! [`WorldModelTrainer`](super::WorldModelTrainer) and [`PolicyTrainer`](super::PolicyTrainer).

use super::world::UpdateBatch;
use crate::{Error, Result};
use rand::Rng;
use std::collections::VecDeque;

/// One stored episode: `obs` `[len + 1, O]`, `action` `[len, A]`, `reward` `[len]`, `planner`
/// `[len, 2A]` (the planner's first-step mean and std of each step; NaN where none, e.g. the
/// random seed phase).
#[derive(Clone, Debug, Default)]
struct Episode {
    obs: Vec<f32>,
    action: Vec<f32>,
    reward: Vec<f32>,
    planner: Vec<f32>,
}

impl Episode {
    fn len(&self, a: usize) -> usize {
        self.action.len() / a
    }
}

/// A batch of sub-trajectories: the world-model update's inputs and the planner Gaussians of
/// the first `T` steps, `[T, B, 2A]`.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Observations, actions and rewards, time-major.
    pub batch: UpdateBatch,
    /// Planner Gaussians `[T, B, 2A]` (rows `[mean | std]`); steps without one (NaN, the seed
    /// phase) get mean 0 and std 1 (BMPC draws both from N(0, 1) instead, which can give a
    /// negative std).
    pub planner: Vec<f32>,
    /// (episode index in the buffer, start step) of each sub-trajectory.
    pub origin: Vec<(usize, usize)>,
}

/// The contents of a [`ReplayBuffer`] as flat arrays, for checkpoints.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BufferData {
    /// Observations of every episode, `len + 1` rows each.
    pub obs: Vec<f32>,
    /// Actions, `len` rows each.
    pub action: Vec<f32>,
    /// Rewards.
    pub reward: Vec<f32>,
    /// Planner Gaussians `[mean | std]` (NaN where none).
    pub planner: Vec<f32>,
    /// Episode lengths.
    pub lengths: Vec<u32>,
}

/// Most values of one array of a [`Sample`] (2^28 f32: 1 GiB).
pub const MAX_SAMPLE_VALUES: usize = 1 << 28;

/// Episodes of transitions, oldest evicted beyond `capacity` transitions.
#[derive(Clone, Debug)]
pub struct ReplayBuffer {
    obs_dim: usize,
    action_dim: usize,
    capacity: usize,
    episodes: VecDeque<Episode>,
    current: Option<Episode>,
    transitions: usize,
    evicted: usize,
}

impl ReplayBuffer {
    /// An empty buffer for `obs_dim` observations and `action_dim` actions holding at most
    /// `capacity` transitions (TD-MPC2: 1M).
    pub fn new(obs_dim: usize, action_dim: usize, capacity: usize) -> Result<Self> {
        use crate::model::{MAX_ACTION_DIM, MAX_OBS_DIM};
        if obs_dim == 0 || action_dim == 0 || capacity == 0 {
            return Err(Error::InvalidArgument(format!(
                "replay buffer needs positive dimensions and capacity, got obs {obs_dim}, \
                 action {action_dim}, capacity {capacity}"
            )));
        }
        if obs_dim > MAX_OBS_DIM || action_dim > MAX_ACTION_DIM {
            return Err(Error::InvalidArgument(format!(
                "replay buffer for obs {obs_dim} and action {action_dim}: at most \
                 {MAX_OBS_DIM} and {MAX_ACTION_DIM} (the model's bounds)"
            )));
        }
        Ok(ReplayBuffer {
            obs_dim,
            action_dim,
            capacity,
            episodes: VecDeque::new(),
            current: None,
            transitions: 0,
            evicted: 0,
        })
    }

    /// Transitions stored in finished episodes.
    pub fn len(&self) -> usize {
        self.transitions
    }

    /// Whether no finished episode is stored.
    pub fn is_empty(&self) -> bool {
        self.episodes.is_empty()
    }

    /// Finished episodes stored.
    pub fn episodes(&self) -> usize {
        self.episodes.len()
    }

    /// Episodes evicted so far (the buffer index of an episode shifts by this many).
    pub fn evicted(&self) -> usize {
        self.evicted
    }

    // Length `n`, every value finite: a NaN stored here would surface only in an update, far
    // from the step that produced it.
    fn check(&self, name: &str, v: &[f32], n: usize) -> Result<()> {
        if v.len() != n {
            return Err(Error::Shape(format!(
                "replay buffer: {name} of {} values, expected {n}",
                v.len()
            )));
        }
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "replay buffer: {name}[{i}] is {} (values must be finite)",
                v[i]
            )));
        }
        Ok(())
    }

    // A planner Gaussian `[mean | std]`: finite, std >= 0.
    fn check_gaussian(&self, g: &[f32]) -> Result<()> {
        let a = self.action_dim;
        self.check("planner Gaussian", g, 2 * a)?;
        if let Some(i) = g[a..].iter().position(|s| *s < 0.0) {
            return Err(Error::InvalidArgument(format!(
                "replay buffer: planner std[{i}] is {} (must be >= 0)",
                g[a + i]
            )));
        }
        Ok(())
    }

    /// Start an episode at observation `obs` (finite; an unfinished episode is dropped).
    pub fn start(&mut self, obs: &[f32]) -> Result<()> {
        self.check("observation", obs, self.obs_dim)?;
        self.current = Some(Episode {
            obs: obs.to_vec(),
            ..Default::default()
        });
        Ok(())
    }

    /// Append a transition to the current episode: the action taken, its reward, the next
    /// observation and the planner's Gaussian `[mean | std]` (None: NaN, as in the seed phase).
    /// Non-finite values (and a negative std) are an [`Error::InvalidArgument`] that names
    /// them; nothing is stored then.
    pub fn push(
        &mut self,
        action: &[f32],
        reward: f32,
        next_obs: &[f32],
        planner: Option<&[f32]>,
    ) -> Result<()> {
        let (o, a) = (self.obs_dim, self.action_dim);
        self.check("action", action, a)?;
        self.check("observation", next_obs, o)?;
        self.check("reward", &[reward], 1)?;
        if let Some(p) = planner {
            self.check_gaussian(p)?;
        }
        let ep = self
            .current
            .as_mut()
            .ok_or_else(|| Error::InvalidArgument("replay buffer: push before start".into()))?;
        ep.action.extend_from_slice(action);
        ep.reward.push(reward);
        ep.obs.extend_from_slice(next_obs);
        match planner {
            Some(p) => ep.planner.extend_from_slice(p),
            None => ep.planner.extend(std::iter::repeat_n(f32::NAN, 2 * a)),
        }
        Ok(())
    }

    /// Finish the current episode and store it, evicting the oldest beyond the capacity.
    pub fn finish(&mut self) -> Result<()> {
        let ep = self.current.take().ok_or_else(|| {
            Error::InvalidArgument("replay buffer: finish without an episode".into())
        })?;
        let n = ep.len(self.action_dim);
        if n == 0 {
            return Ok(());
        }
        self.transitions += n;
        self.episodes.push_back(ep);
        while self.transitions > self.capacity && self.episodes.len() > 1 {
            let old = self.episodes.pop_front().expect("more than one");
            self.transitions -= old.len(self.action_dim);
            self.evicted += 1;
        }
        Ok(())
    }

    /// Overwrite the planner Gaussian `[mean | std]` stored for step `step` of stored episode
    /// `episode` (indices as in [`Sample::origin`]): BMPC's lazy reanalysis writes fresh
    /// targets back.
    pub fn set_planner(&mut self, episode: usize, step: usize, gaussian: &[f32]) -> Result<()> {
        let a = self.action_dim;
        self.check_gaussian(gaussian)?;
        let n = self.episodes.len();
        let ep = self.episodes.get_mut(episode).ok_or_else(|| {
            Error::InvalidArgument(format!("replay buffer: episode {episode} of {n}"))
        })?;
        let len = ep.len(a);
        if step >= len {
            return Err(Error::InvalidArgument(format!(
                "replay buffer: step {step} of an episode of {len}"
            )));
        }
        ep.planner[step * 2 * a..(step + 1) * 2 * a].copy_from_slice(gaussian);
        Ok(())
    }

    /// The stored episodes, oldest first, concatenated (for checkpoints): observations
    /// `[sum(len + 1), O]`, actions `[sum(len), A]`, rewards, planner Gaussians `[sum(len),
    /// 2A]` and the episode lengths. An unfinished episode is not included.
    pub fn export(&self) -> BufferData {
        let mut d = BufferData::default();
        for ep in &self.episodes {
            d.obs.extend_from_slice(&ep.obs);
            d.action.extend_from_slice(&ep.action);
            d.reward.extend_from_slice(&ep.reward);
            d.planner.extend_from_slice(&ep.planner);
            d.lengths.push(ep.len(self.action_dim) as u32);
        }
        d
    }

    /// Append the episodes of an [`ReplayBuffer::export`], evicting beyond the capacity as
    /// [`ReplayBuffer::finish`] does. Checked as [`ReplayBuffer::push`] checks (a planner row
    /// is either all NaN, none stored, or a valid Gaussian) and the lengths must add up
    /// exactly; on an error the buffer is left as it was.
    pub fn import(&mut self, d: &BufferData) -> Result<()> {
        let (o, a) = (self.obs_dim, self.action_dim);
        let sizes = || -> Option<[usize; 4]> {
            let steps = d
                .lengths
                .iter()
                .try_fold(0usize, |s, &n| s.checked_add(n as usize))?;
            let obs_rows = steps.checked_add(d.lengths.len())?;
            Some([
                obs_rows.checked_mul(o)?,
                steps.checked_mul(a)?,
                steps,
                steps.checked_mul(2 * a)?,
            ])
        };
        let got = [d.obs.len(), d.action.len(), d.reward.len(), d.planner.len()];
        match sizes() {
            Some(need) if need == got => {}
            need => {
                return Err(Error::Shape(format!(
                    "replay buffer import: {} episodes with lengths summing to {} need \
                     [observation, action, reward, planner] values {}; got {got:?}",
                    d.lengths.len(),
                    d.lengths.iter().map(|&n| n as u64).sum::<u64>(),
                    need.map_or("beyond 2^64".to_string(), |n| format!("{n:?}"))
                )));
            }
        }
        if d.lengths.contains(&0) {
            return Err(Error::InvalidArgument(
                "replay buffer import: an episode of length 0 (finished episodes hold at least \
                 one step)"
                    .into(),
            ));
        }
        let mut copy = self.clone();
        copy.current = None;
        let (mut po, mut ps) = (0, 0);
        for &n in &d.lengths {
            let n = n as usize;
            copy.start(&d.obs[po * o..(po + 1) * o])?;
            for i in 0..n {
                let g = &d.planner[(ps + i) * 2 * a..(ps + i + 1) * 2 * a];
                let none = g.iter().all(|v| v.is_nan());
                copy.push(
                    &d.action[(ps + i) * a..(ps + i + 1) * a],
                    d.reward[ps + i],
                    &d.obs[(po + i + 1) * o..(po + i + 2) * o],
                    (!none).then_some(g),
                )
                .map_err(|e| match e {
                    Error::InvalidArgument(m) => Error::InvalidArgument(format!(
                        "{m} (episode {} of the import, step {i})",
                        po - ps
                    )),
                    e => e,
                })?;
            }
            copy.finish()?;
            po += n + 1;
            ps += n;
        }
        copy.current = self.current.take();
        *self = copy;
        Ok(())
    }

    /// `batch` sub-trajectories of `horizon` steps, each from one episode at a start drawn
    /// uniformly over every valid (episode, start) pair.
    pub fn sample(&self, rng: &mut impl Rng, batch: usize, horizon: usize) -> Result<Sample> {
        let (o, a) = (self.obs_dim, self.action_dim);
        if batch == 0 || horizon == 0 {
            return Err(Error::InvalidArgument(
                "replay buffer: sample of 0 sub-trajectories or horizon 0".into(),
            ));
        }
        // Sized from the arguments: checked before anything is allocated.
        let rows = horizon
            .checked_add(1)
            .and_then(|t1| t1.checked_mul(batch))
            .filter(|r| {
                r.checked_mul(o.max(2 * a))
                    .is_some_and(|n| n <= MAX_SAMPLE_VALUES)
            });
        if rows.is_none() {
            return Err(Error::Limit(format!(
                "replay buffer: a sample of {batch} sub-trajectories of horizon {horizon} needs \
                 more than {MAX_SAMPLE_VALUES} values per array"
            )));
        }
        // Valid starts per episode and their running total.
        let mut cum = Vec::with_capacity(self.episodes.len());
        let mut total = 0usize;
        for ep in &self.episodes {
            total += (ep.len(a) + 1).saturating_sub(horizon);
            cum.push(total);
        }
        if total == 0 {
            return Err(Error::InvalidArgument(format!(
                "replay buffer: no stored episode has {horizon} steps ({} episodes, {} \
                 transitions)",
                self.episodes.len(),
                self.transitions
            )));
        }
        let (t, b) = (horizon, batch);
        let mut s = Sample {
            batch: UpdateBatch {
                obs: vec![0.0; (t + 1) * b * o],
                action: vec![0.0; t * b * a],
                reward: vec![0.0; t * b],
                pi_noise: None,
                target_heads: None,
            },
            planner: vec![0.0; t * b * 2 * a],
            origin: Vec::with_capacity(b),
        };
        for j in 0..b {
            let k = rng.random_range(0..total);
            let e = cum.partition_point(|&c| c <= k);
            let start = k - if e == 0 { 0 } else { cum[e - 1] };
            let ep = &self.episodes[e];
            for step in 0..=t {
                let src = (start + step) * o;
                let dst = (step * b + j) * o;
                s.batch.obs[dst..dst + o].copy_from_slice(&ep.obs[src..src + o]);
            }
            for step in 0..t {
                let src = (start + step) * a;
                let dst = (step * b + j) * a;
                s.batch.action[dst..dst + a].copy_from_slice(&ep.action[src..src + a]);
                s.batch.reward[step * b + j] = ep.reward[start + step];
                let src = (start + step) * 2 * a;
                let dst = (step * b + j) * 2 * a;
                let p = &ep.planner[src..src + 2 * a];
                let known = p.iter().all(|v| v.is_finite());
                for i in 0..a {
                    s.planner[dst + i] = if known { p[i] } else { 0.0 };
                    s.planner[dst + a + i] = if known { p[a + i] } else { 1.0 };
                }
            }
            s.origin.push((e, start));
        }
        Ok(s)
    }
}
