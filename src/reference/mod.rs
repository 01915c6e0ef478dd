//! CPU mirrors of the shaders, in f64, written to follow each kernel's math step by step so a
//! failing GPU test can be bisected against plain Rust. One module per shader file.

pub mod act;
pub mod cast;
pub mod gemm;
pub mod gemm_coop;
pub mod linear;
pub mod loss;
pub mod model;
pub mod mppi;
pub mod norm_act;
pub mod optim;
pub mod planner;
pub mod policy;
pub mod policy_loss;
pub mod rng_fill;
pub mod td;
pub mod two_hot;
