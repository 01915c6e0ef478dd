//! Several agents trained side by side on one device: seeds and settings of an experiment in
//! one process ([`Population`]).
//!
//! Agents that can share their plan steps (see below) train in lock step on one thread: each
//! environment step plans for every agent in one plan step over a population model
//! ([`crate::model::WorldModel::population`]: the agents' weights as one more batch dimension
//! of every layer, so each layer is one launch for all). Where they can also share their
//! updates ([`Population::shares_updates`]), every agent's world-model and policy update of a
//! step runs in the same dispatches too (the agents' parameters, optimizer states and batches
//! as one more batch dimension), which copy the new parameters into that model; otherwise
//! each agent's update is its own submit. Other populations run each agent on a thread of its
//! own, recording and submitting its own dispatches. Either way an agent's results are the
//! ones it gets alone (exactly where the GEMMs split their sums alike; to f32 round-off
//! otherwise).
//!
//! Which agents share their plan steps ([`Population::shares_plan_steps`]): the same model
//! (size and task dimensions), the same planner but for its seed (samples, horizon,
//! iterations, temperature, precision), the same seed phase and run length, all at the same
//! step, and no BMPC reanalysis (which re-plans with the agent's own model). The seed, the
//! method and PO-MPC's lambda are free per agent; any population is allowed, those that
//! cannot share run on threads.

use super::agent::{Event, TrainConfig, Trainer};
use crate::env::Env;
use crate::{Error, Gpu, Result};
use std::path::{Path, PathBuf};

/// Agents that train together, each with its own model, optimizer state, replay buffer,
/// environments and random streams (its [`Trainer`]).
///
/// ```no_run
/// # fn main() -> pompc::Result<()> {
/// use pompc::train::{Method, Population, TrainConfig, Trainer};
/// let gpu = pompc::Gpu::new(Default::default())?;
/// let mut agents = Vec::new();
/// for lambda in [0.1, 1.0, 9.0] {
///     for seed in 0..3 {
///         let env = pompc::env::make("cartpole-swingup")?;
///         let cfg = TrainConfig::new(env.as_ref(), Method::Pompc { lambda }, 100_000, seed)?;
///         let eval_env = pompc::env::make("cartpole-swingup")?;
///         agents.push(Trainer::new(&gpu, env, eval_env, cfg)?);
///     }
/// }
/// let mut population = Population::new(agents)?;
/// population.run(100_000, &|agent, event| {
///     if let pompc::train::Event::Eval { step, mean, .. } = event {
///         println!("agent {agent}: {mean:.1} at step {step}");
///     }
///     Ok(())
/// })?;
/// population.save("runs/cartpole")?;
/// # Ok(()) }
/// ```
pub struct Population<'g> {
    agents: Vec<Trainer<'g>>,
}

/// What one agent is made from: its training and evaluation environments (two instances of
/// one task) and its configuration.
pub struct AgentSetup {
    /// The environment it trains on.
    pub env: Box<dyn Env>,
    /// The environment its evaluations run on.
    pub eval_env: Box<dyn Env>,
    /// Its settings (method, seed, model, ...).
    pub cfg: TrainConfig,
}

/// What [`Population::run`] calls with each agent's events: the agent's index and the event.
/// Called from the agents' threads; an error stops that agent (and is returned by `run`).
pub type PopulationHandler<'h> = dyn Fn(usize, &Event) -> Result<()> + Sync + 'h;

impl<'g> Population<'g> {
    /// A population of `agents` (at least one; all on the same device).
    pub fn new(agents: Vec<Trainer<'g>>) -> Result<Self> {
        let Some(first) = agents.first() else {
            return Err(Error::InvalidArgument(
                "a population needs at least one agent".into(),
            ));
        };
        let gpu = first.gpu();
        if let Some(i) = agents.iter().position(|a| !std::ptr::eq(a.gpu(), gpu)) {
            return Err(Error::InvalidArgument(format!(
                "agent {i} trains on another device than agent 0: a population shares one"
            )));
        }
        Ok(Population { agents })
    }

    /// The agents, in the order given.
    pub fn agents(&self) -> &[Trainer<'g>] {
        &self.agents
    }

    /// Agent `i`.
    pub fn agent(&self, i: usize) -> Option<&Trainer<'g>> {
        self.agents.get(i)
    }

    /// The agents back.
    pub fn into_agents(self) -> Vec<Trainer<'g>> {
        self.agents
    }

    /// Whether [`Population::run`] plans for all agents in shared plan steps: `Ok`, or why
    /// not (the agents then run on threads of their own).
    pub fn shares_plan_steps(&self) -> std::result::Result<(), String> {
        if self.agents.len() < 2 {
            return Err("a single agent plans alone".into());
        }
        match super::agent::cannot_share(&self.agents) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// Whether agents that share their plan steps also share all their updates: every agent's
    /// world-model and policy updates of a step in the same dispatches. `Ok`, or why not (the
    /// agents then update in several groups, [`Population::update_groups`]). They need the same batch, world-model update
    /// and policy update but for the seeds and the policy loss's coefficients (PO-MPC's lambda:
    /// agents of one method with different lambdas share, TD-MPC2 and PO-MPC agents do not),
    /// the same pre-training and loss reads, and no KL-regularized critic target.
    pub fn shares_updates(&self) -> std::result::Result<(), String> {
        self.shares_plan_steps()?;
        match super::agent::cannot_share_updates(&self.agents) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// The groups of agents whose updates run in the same dispatches when they share their
    /// plan steps (indices into [`Population::agents`]): agents of one method that differ only
    /// in seed and lambda share a group; each group is one submit per step.
    pub fn update_groups(&self) -> Vec<Vec<usize>> {
        super::agent::update_groups(&self.agents)
    }

    /// Environment steps of all agents together.
    pub fn steps(&self) -> usize {
        self.agents.iter().map(Trainer::step).sum()
    }

    /// Run every agent until `until` environment steps (each at most its own
    /// [`crate::train::TrainConfig::steps`]), reporting to `on` with the agent's index. Agents
    /// that share their plan steps ([`Population::shares_plan_steps`]) run in lock step, and
    /// an error (from `on` too) stops them all at the end of the step, once every agent has
    /// taken and reported it (an environment's error at once); others run on threads of their
    /// own, and when one fails the others still finish and the first error (by agent index) is
    /// returned, naming its agent.
    pub fn run(&mut self, until: usize, on: &PopulationHandler) -> Result<()> {
        if self.shares_plan_steps().is_ok() {
            return super::agent::run_shared(&mut self.agents, until, on);
        }
        let results: Vec<Result<()>> = std::thread::scope(|sc| {
            let handles: Vec<_> = self
                .agents
                .iter_mut()
                .enumerate()
                .map(|(i, agent)| sc.spawn(move || agent.run(until, &mut |e| on(i, e))))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::InvalidArgument("an agent's thread panicked".into()))
                    })
                })
                .collect()
        });
        for (i, r) in results.into_iter().enumerate() {
            r.map_err(|e| name_agent(i, e))?;
        }
        Ok(())
    }

    /// The checkpoint file of agent `i` in `dir`.
    pub fn checkpoint_path(dir: impl AsRef<Path>, i: usize) -> PathBuf {
        dir.as_ref().join(format!("agent{i}.ckpt.safetensors"))
    }

    /// Save every agent's checkpoint ([`Trainer::save`]) into `dir` (created if missing), as
    /// [`Population::checkpoint_path`] names them.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
        for (i, a) in self.agents.iter().enumerate() {
            a.save(Self::checkpoint_path(dir, i))
                .map_err(|e| name_agent(i, e))?;
        }
        Ok(())
    }

    /// Fresh agents ([`Trainer::new`]) on `gpu`, one per setup.
    pub fn create(gpu: &'g Gpu, agents: Vec<AgentSetup>) -> Result<Self> {
        let trainers = agents
            .into_iter()
            .enumerate()
            .map(|(i, a)| Trainer::new(gpu, a.env, a.eval_env, a.cfg).map_err(|e| name_agent(i, e)))
            .collect::<Result<Vec<_>>>()?;
        Population::new(trainers)
    }

    /// Resume the population saved in `dir`: agent `i` from its checkpoint with the
    /// environments and configuration of `agents[i]` (as [`Trainer::resume`] takes them).
    pub fn resume(gpu: &'g Gpu, dir: impl AsRef<Path>, agents: Vec<AgentSetup>) -> Result<Self> {
        let dir = dir.as_ref();
        let trainers = agents
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                Trainer::resume(gpu, a.env, a.eval_env, a.cfg, Self::checkpoint_path(dir, i))
                    .map_err(|e| name_agent(i, e))
            })
            .collect::<Result<Vec<_>>>()?;
        Population::new(trainers)
    }
}

/// The same error, its message prefixed with the agent it came from.
fn name_agent(i: usize, e: Error) -> Error {
    match e {
        Error::InvalidArgument(m) => Error::InvalidArgument(format!("agent {i}: {m}")),
        Error::Shape(m) => Error::Shape(format!("agent {i}: {m}")),
        Error::Weights(m) => Error::Weights(format!("agent {i}: {m}")),
        e => e,
    }
}
