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
    Event, HistoryRow, MAX_EVAL_EPISODES, MAX_STEPS, Method, ModelPreset, Reanalyze, TrainConfig,
    Trainer,
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

/// `Err` unless `1 <= batch <= MAX_BATCH`.
fn check_batch(batch: usize) -> crate::Result<()> {
    if batch == 0 || batch > MAX_BATCH {
        return Err(crate::Error::InvalidArgument(format!(
            "batch of {batch} sub-trajectories outside 1..={MAX_BATCH}"
        )));
    }
    Ok(())
}
