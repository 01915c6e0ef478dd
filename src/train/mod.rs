//! Training on the GPU: the world model's parameters in one flat buffer, forward passes that
//! keep what the backward pass needs, the backward passes, and TD-MPC2's world-model update
//! (consistency, reward and value losses, clipped Adam, Polyak target) as one submit, the
//! policy update, the replay buffer, and the training loop ([`Trainer`]; several agents side by
//! side: [`Population`]).

pub mod agent;
pub mod buffer;
pub mod mlp;
pub mod params;
pub mod policy;
pub mod population;
pub mod world;

pub use agent::{
    Event, HistoryRow, MAX_EVAL_EPISODES, MAX_STEPS, Method, ModelPreset, PRETRAIN_REPORT_EVERY,
    Reanalyze, TrainConfig, Trainer,
};
pub use buffer::{BufferData, ReplayBuffer, Sample};
pub use mlp::{Grads, Members, NetInput as TrainInput, Tape, TrainNet};
pub use params::ParamLayout;
pub use policy::{PolicyLosses, PolicyTrainer, PolicyUpdateConfig, PriorKind};
pub use population::{AgentSetup, Population, PopulationHandler};
pub use world::{KlTarget, UpdateBatch, UpdateConfig, UpdateLosses, WorldModelTrainer};

/// Longest horizon of the world-model and policy updates (TD-MPC2: 3).
pub const MAX_UPDATE_HORIZON: usize = 64;
/// Most sub-trajectories per update (TD-MPC2: 256).
pub const MAX_BATCH: usize = 65536;

/// `Err` unless agent `i` of a population of `agents` can exchange its state with a trainer of
/// `alone` agents (one) of the same model (`same_model`).
fn check_exchange(
    what: &str,
    i: usize,
    agents: usize,
    alone: usize,
    same_model: bool,
) -> crate::Result<()> {
    if i >= agents || alone != 1 || !same_model {
        return Err(crate::Error::InvalidArgument(format!(
            "{what} exchange: agent {i} of {agents} with a trainer of {alone} agents{}",
            if same_model { "" } else { " and another model" }
        )));
    }
    Ok(())
}

/// A trainer's host-side state per agent (its update count, shared by a population's agents,
/// and each agent's draws) moved into a population for agent `i` (`into_population`) or back
/// out; a population's agents must come in with one update count.
fn exchange_draws(
    what: &str,
    i: usize,
    (pop_updates, pop_rngs): (&mut u64, &mut [rand::rngs::StdRng]),
    (updates, rngs): (&mut u64, &mut [rand::rngs::StdRng]),
    into_population: bool,
) -> crate::Result<()> {
    if into_population {
        if i > 0 && *updates != *pop_updates {
            return Err(crate::Error::InvalidArgument(format!(
                "{what} exchange: agent {i} made {updates} updates, the population {pop_updates}"
            )));
        }
        *pop_updates = *updates;
        pop_rngs[i] = rngs[0].clone();
    } else {
        *updates = *pop_updates;
        rngs[0] = pop_rngs[i].clone();
    }
    Ok(())
}

/// `Err` unless `1 <= batch <= MAX_BATCH`.
fn check_batch(batch: usize) -> crate::Result<()> {
    if batch == 0 || batch > MAX_BATCH {
        return Err(crate::Error::InvalidArgument(format!(
            "batch of {batch} sub-trajectories outside 1..={MAX_BATCH}"
        )));
    }
    Ok(())
}
