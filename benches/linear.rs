//! Criterion bench of the fused linear kernel: the 512x550x512 layer with LayerNorm and Mish
//! (the planner's typical layer) and a 4096^3 GEMM, one submit per iteration with a fenced
//! wall clock. `pompc bench linear` reports the GPU-timestamp figures used in BENCHMARKS.md.
//!
//! `POMPC_BENCH_SMALL=1` replaces 4096^3 by 1024^3 (lavapipe runs 4096^3 at ~3 GFLOP/s).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pompc::kernels::linear::{Activation, Linear, LinearConfig, LinearInputs};
use pompc::{Gpu, GpuBuffer, GpuOptions, Recorder};

fn bench(c: &mut Criterion) {
    let gpu = Gpu::new(GpuOptions::default()).expect("a GPU adapter");
    eprintln!("adapter: {}", gpu.describe());
    let big = if std::env::var_os("POMPC_BENCH_SMALL").is_some() {
        1024
    } else {
        4096
    };
    let cases = [
        (
            "512x550x512 LN+Mish",
            LinearConfig::new(512, 550)
                .with_ln()
                .with_act(Activation::Mish),
            512,
        ),
        ("big plain", LinearConfig::new(big, big), big),
    ];
    let mut group = c.benchmark_group("linear");
    group.sample_size(10);
    for (name, cfg, m) in cases {
        let buf = |label: &str, n: usize| {
            let v: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
                .collect();
            GpuBuffer::from_slice(&gpu, label, &v).unwrap()
        };
        let (x, w, b) = (
            buf("x", m * cfg.k),
            buf("w", cfg.n * cfg.k),
            buf("b", cfg.n),
        );
        let (g, be) = (buf("g", cfg.n), buf("be", cfg.n));
        let y = GpuBuffer::<f32>::new(&gpu, "y", m * cfg.n).unwrap();
        let layer = Linear::new(&gpu, cfg).unwrap();
        let io = LinearInputs {
            z: &x,
            a: None,
            w: &w,
            b: &b,
            ln: cfg.layer_norm.then_some((&g, &be)),
            y: &y,
            heads: None,
            z_offset: 0,
            a_offset: 0,
            z_repeat: 0,
            input_groups: 1,
            input_strides: None,
        };
        group.throughput(Throughput::Elements(cfg.flops(m) as u64));
        group.bench_function(format!("{name} {m}x{}x{}", cfg.n, cfg.k), |bch| {
            bch.iter(|| {
                let mut rec = Recorder::new(&gpu);
                layer.record(&mut rec, m, io).unwrap();
                rec.finish().unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
