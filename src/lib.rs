//! # pompc
//!
//! Hand-written WGSL compute kernels for planning with learned world models: MPPI over a
//! TD-MPC2-style latent model and the PO-MPC family of KL-regularized policy updates, on any
//! GPU that wgpu reaches (Vulkan, Metal, DX12, GL; lavapipe on the CPU).
//!
//! Layers: [`gpu`] (device, buffers, shaders, pipelines, recorder) under [`kernels`] (one
//! module per shader) with [`reference`](mod@reference) (f64 CPU mirrors) beside them; [`rng`] is the
//! Philox4x32-10 generator shared by both sides.
#![warn(missing_docs)]

pub mod bench;
pub mod env;
pub mod error;
pub mod fs;
pub mod gpu;
pub mod kernels;
pub mod model;
pub mod planner;
pub mod plot;
pub mod reference;
pub mod rng;
pub mod train;

pub use error::{Error, Result};
pub use gpu::{Gpu, GpuBuffer, GpuOptions, Precision, Recorder, ShaderChecks};

// README's Rust examples compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
