//! Runs the fused linear kernel (LayerNorm + Mish, the world model's hidden layer) on the
//! best adapter, checks it against the f64 CPU mirror and prints the adapter and throughput.
//!
//! `cargo run --release --example quickstart`

use pompc::kernels::linear::{Activation, Linear, LinearConfig, LinearInputs};
use pompc::{Gpu, GpuBuffer, GpuOptions, Recorder, reference};
use rand::{Rng, SeedableRng};

fn main() -> pompc::Result<()> {
    let gpu = Gpu::new(GpuOptions::default())?;
    println!("adapter: {}", gpu.describe());

    // One hidden layer of TD-MPC2's 5M model over the planner's 512 samples.
    let (m, k, n) = (512, 512, 512);
    let cfg = LinearConfig::new(k, n).with_ln().with_act(Activation::Mish);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut rand =
        |len: usize, s: f32| -> Vec<f32> { (0..len).map(|_| rng.random_range(-s..s)).collect() };
    let (x, w, b) = (rand(m * k, 1.0), rand(n * k, 0.05), rand(n, 0.1));
    let (g, be) = (rand(n, 1.0), rand(n, 0.1));

    let buf = |label: &str, v: &[f32]| GpuBuffer::from_slice(&gpu, label, v);
    let (xb, wb, bb, gb, beb) = (
        buf("x", &x)?,
        buf("w", &w)?,
        buf("b", &b)?,
        buf("g", &g)?,
        buf("beta", &be)?,
    );
    let y = GpuBuffer::<f32>::new(&gpu, "y", m * n)?;
    let layer = Linear::new(&gpu, cfg)?;
    let io = LinearInputs {
        z: &xb,
        a: None,
        w: &wb,
        b: &bb,
        ln: Some((&gb, &beb)),
        y: &y,
        heads: None,
        z_offset: 0,
        a_offset: 0,
    };

    let mut rec = Recorder::new(&gpu);
    layer.record(&mut rec, m, io)?;
    let h = rec.read(&y);
    let got = rec.finish()?.get(&h)?;
    let want = reference::linear::linear(&cfg, m, &x, &[], &w, &b, Some((&g, &be)), None);
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f64 - b).abs() / b.abs().max(1.0))
        .fold(0.0, f64::max);
    println!("{m}x{n}x{k} LayerNorm+Mish: max relative error vs f64 mirror {err:.2e}");
    if err > 1e-5 {
        eprintln!("mismatch: the GPU result disagrees with the CPU mirror");
        std::process::exit(1);
    }

    let r = pompc::bench::bench_linear(&gpu, cfg, m, None, 20)?;
    let ceiling = pompc::bench::known_fp32_ceiling_tflops(&gpu.info().name);
    println!(
        "median {:.1} us, {:.0} GFLOP/s{} ({:?} clock, tile {} split {})",
        r.stats.median * 1e6,
        r.gflops,
        ceiling.map_or(String::new(), |c| format!(
            ", {:.1}% of the {c} TFLOP/s fp32 ceiling",
            r.gflops / c / 10.0
        )),
        r.stats.clock,
        r.plan.tile,
        r.plan.split
    );
    Ok(())
}
