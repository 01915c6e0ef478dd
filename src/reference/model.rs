//! Mirror of the world model's networks (chains of `shaders/linear.wgsl` layers), in f64
//! from input to output.

use super::act;
use crate::Result;
use crate::kernels::linear::Activation;
use crate::model::{Net, Weights};

/// Forward pass of `net` for `rows` rows: inputs `z` `[rows, in1]` and `a` `[rows, in2]`
/// (for networks that read `[z, a]`), weight set `member` (a Q head; 0 otherwise).
/// Returns `[rows, out]`.
pub fn forward(
    weights: &Weights,
    net: Net,
    rows: usize,
    z: &[f64],
    a: Option<&[f64]>,
    member: usize,
) -> Result<Vec<f64>> {
    let layers = weights.spec.layers(net);
    let tensors = weights.net(net)?;
    let mut x: Vec<f64> = Vec::new();
    for (i, (ls, t)) in layers.iter().zip(&tensors).enumerate() {
        let k = ls.in1 + ls.in2;
        let n = ls.out;
        let input = |r: usize, kk: usize| -> f64 {
            if i > 0 {
                x[r * k + kk]
            } else if kk < ls.in1 {
                z[r * ls.in1 + kk]
            } else {
                a.expect("this network reads [z, a]")[r * ls.in2 + kk - ls.in1]
            }
        };
        let w = &t.w.data[member * n * k..(member + 1) * n * k];
        let b = &t.b.data[member * n..(member + 1) * n];
        let mut y = vec![0.0f64; rows * n];
        for r in 0..rows {
            let out = &mut y[r * n..(r + 1) * n];
            for (c, o) in out.iter_mut().enumerate() {
                let wr = &w[c * k..(c + 1) * k];
                *o = (0..k).map(|kk| input(r, kk) * wr[kk] as f64).sum::<f64>() + b[c] as f64;
            }
            if let Some((g, be)) = t.ln {
                act::layer_norm(
                    out,
                    &g.data[member * n..(member + 1) * n],
                    &be.data[member * n..(member + 1) * n],
                );
            }
            match ls.act {
                Activation::Identity => {}
                Activation::Mish => out.iter_mut().for_each(|v| *v = act::mish(*v)),
                Activation::SimNorm => act::simnorm(out),
            }
        }
        x = y;
    }
    Ok(x)
}
