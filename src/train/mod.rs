//! Training on the GPU: the world model's parameters in one flat buffer, forward passes that
//! keep what the backward pass needs, the backward passes, and TD-MPC2's world-model update
//! (consistency, reward and value losses, clipped Adam, Polyak target) as one submit, the
//! policy update, the replay buffer, and the training loop ([`Trainer`]).

pub mod agent;
pub mod buffer;
pub mod mlp;
pub mod params;
pub mod policy;
pub mod world;

pub use agent::{Event, HistoryRow, Method, ModelPreset, Reanalyze, TrainConfig, Trainer};
pub use buffer::{BufferData, ReplayBuffer, Sample};
pub use mlp::{Grads, Members, NetInput as TrainInput, Tape, TrainNet};
pub use params::ParamLayout;
pub use policy::{PolicyLosses, PolicyTrainer, PolicyUpdateConfig, PriorKind};
pub use world::{KlTarget, UpdateBatch, UpdateConfig, UpdateLosses, WorldModelTrainer};
