//! TD-MPC2's world model: sizes and presets ([`ModelSpec`]), parameters and safetensors files
//! ([`Weights`]), and the networks on the GPU ([`WorldModel`]).

mod fused;
mod spec;
mod weights;
mod world;

pub use fused::{FusedLayout, FusedModel, FusedNet, FusedOut, Member, PackedLayer, PolicyOut};
pub use spec::{LayerSpec, ModelSpec, Net};
pub use weights::{LayerTensors, Tensor, Weights};
pub use world::{DenseLayer, Mlp, NetInput, Workspace, WorldModel};
