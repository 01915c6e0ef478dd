//! One module per shader file: typed, validated launch functions that record into a
//! [`crate::Recorder`].

pub mod cast;
pub mod gemm;
pub mod gemm_coop;
mod launch;
pub mod linear;
pub mod loss;
pub mod norm_act;
pub mod optim;
pub mod policy;
pub mod policy_loss;
pub mod rng_fill;
pub mod td;
pub mod two_hot;
