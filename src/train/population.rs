//! Several agents trained side by side on one device: seeds and settings of an experiment in
//! one process ([`Population`]).
//!
//! Today each agent records and submits its own dispatches from its own thread, so the device
//! runs the agents' steps one after another (with the host work of one overlapping the GPU
//! work of another); an agent's results are the same as when it trains alone. Sharing the
//! dispatches themselves (the agents' weights as one more batch dimension of every kernel) is
//! what will make a population fill the card; the interface stays this one.
//!
//! Which agents may share a population: today any (other tasks, model sizes, methods,
//! lambdas, seeds), since each keeps its own dispatches. Agents whose dispatches are shared
//! will need the same model size, task dimensions and planner shape (samples, horizon,
//! iterations), and the same update batch and horizon; the seed and the PO-MPC family's
//! scalar coefficients (lambda, the loss weights) will stay free per agent.

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

    /// Environment steps of all agents together.
    pub fn steps(&self) -> usize {
        self.agents.iter().map(Trainer::step).sum()
    }

    /// Run every agent until `until` environment steps (each at most its own
    /// [`crate::train::TrainConfig::steps`]), reporting to `on` with the agent's index. The
    /// agents run on threads of their own; when one fails the others still finish, and the
    /// first error (by agent index) is returned, naming its agent.
    pub fn run(&mut self, until: usize, on: &PopulationHandler) -> Result<()> {
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
