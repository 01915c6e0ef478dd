//! TD-MPC2's world model: sizes and presets ([`ModelSpec`]), parameters and safetensors files
//! ([`Weights`]), and the networks on the GPU ([`WorldModel`]).

mod spec;
mod weights;
mod world;

pub use spec::{
    LayerSpec, MAX_ACTION_DIM, MAX_BINS, MAX_ENC_LAYERS, MAX_LOG_STD, MAX_OBS_DIM, MAX_PARAMS,
    MAX_Q_HEADS, MAX_SYMLOG, MAX_WIDTH, ModelSpec, Net,
};
pub use weights::{LayerTensors, Tensor, Weights};
pub use world::{DenseLayer, Mlp, NetInput, Workspace, WorldModel};
