//! Mirror of `shaders/rng_fill.wgsl`: the same draws from the Rust Philox in `crate::rng`.

use crate::kernels::rng_fill::Distribution;
use crate::rng;

/// The 32-bit words that the fill kernel writes for `n` elements.
pub fn fill(dist: Distribution, seed: u64, stream: u32, n: usize) -> Vec<u32> {
    match dist {
        Distribution::Bits => rng::u32s(seed, stream, n),
        Distribution::Uniform => bits(rng::uniforms(seed, stream, n)),
        Distribution::Normal => bits(rng::normals(seed, stream, n)),
        Distribution::Gumbel => bits(rng::gumbels(seed, stream, n)),
    }
}

/// The population fill: `per` elements for each seed in turn, each run drawn as [`fill`]
/// draws it for that seed alone.
pub fn fill_agents(dist: Distribution, seeds: &[u64], stream: u32, per: usize) -> Vec<u32> {
    seeds
        .iter()
        .flat_map(|&s| fill(dist, s, stream, per))
        .collect()
}

fn bits(v: Vec<f32>) -> Vec<u32> {
    v.into_iter().map(f32::to_bits).collect()
}
