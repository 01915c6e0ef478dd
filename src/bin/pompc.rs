//! pompc's command line: `pompc info`, `pompc bench ...`, `pompc train`, `pompc plot`.

use pompc::bench::{self, Clock, LinearBench};
use pompc::kernels::gemm_coop::CoopTile;
use pompc::kernels::linear::{Activation, CoopPlan, LinearConfig, LinearPlan, Tile};
use pompc::{Gpu, GpuOptions, Precision};
use std::process::ExitCode;

const USAGE: &str = "\
usage:
  pompc info [--probe]            every adapter: backend, driver, type, features, limits;
                                  --probe opens a device on each with full and downlevel
                                  limits, with and without optional features, and runs a GEMM
  pompc bench [--json] [--runs N] [--ceiling-tflops X]
                                  every kernel and end-to-end step in one table (small models
                                  and sizes on CPU adapters such as lavapipe); --runs N timed
                                  runs per case (default 20; end-to-end steps on CPU adapters
                                  2)
  pompc bench linear [options]    the fused linear kernel
      --sweep                     every tile and K-split, not only the heuristic's choice
      --case NAME                 only cases whose name contains NAME
      --shape MxNxK               a custom case (plain; add --ln and --act mish|simnorm)
      --runs N                    timed runs per case (default 50)
      --ceiling-tflops X          fp32 ceiling for the fraction column (default: known cards;
                                  tensor-core rows: the card's f16 tensor-core ceiling)
      --precision P1,P2,...       f32, f16 (f16 Z, W, Y), coop (f16 storage, tensor cores for
                                  large calls) (default f32)
      --json                      one JSON object per line instead of a table
  pompc bench model [options]     forward of each world-model network
      --size S                    TD-MPC2 preset: 1, 5, 19, 48, 317 (default 5)
      --obs O --act A             observation and action dimensions (default 223, 38: dog)
      --rows R                    rows per pass (default 512: the planner's samples)
      --runs N, --ceiling-tflops X, --json   as above
  pompc bench plan [options]      TD-MPC2's plan step (5M preset, 512 samples, horizon 3)
      --batch B1,B2,...           environments (default 1,16,256)
      --act A1,A2,...             action dimensions (default 6,38)
      --obs O                     observation dimension (default 24)
      --precision P1,P2,...       world-model precision: auto, f32, f16, coop (default: the
                                  device's, i.e. POMPC_PRECISION or automatic)
      --compare-precision         instead of timing: plan with the model at f32 and at each
                                  other precision of --precision (default f16 and coop where
                                  supported), same weights, observations and seeds; print the
                                  max/mean |difference| of the planned mean, value and action
      --calls N                   consecutive plan calls compared (default 3)
      --profile                   instead of timing: every dispatch timed on its own, summed
                                  per kernel and launch shape over min(runs, 10) steps
                                  (timestamp queries)
      --runs N, --warmup N, --json  (every bench also warms up for a second on a GPU)
  pompc bench gemm [options]      the training GEMM at the world-model update's shapes
      --sweep                     every tile, not only the heuristic's choice
      --coop                      also the tensor-core GEMM (f16 products, f32 sums), every
                                  tile with --sweep
      --runs N, --ceiling-tflops X
  pompc bench update [options]    TD-MPC2's world-model update (forward, backward, clip, Adam, Polyak)
      --batch B1,B2,...           sub-trajectories of horizon 3 (default 256)
      --size S --obs O --act A    preset and dimensions (default 5, 24, 6)
      --runs N, --warmup N, --json
  pompc bench policy [options]    the PO-MPC-family policy update (one submit)
      --preset P1,P2,...          tdmpc2, bmpc, tdmpc-square, pompc (default all)
      --lambda L                  PO-MPC's lambda (default 1)
      --batch B --size S --obs O --act A --runs N --warmup N --json  (defaults 256, 5, 24, 6)
  pompc bench mppi [options]      classic MPPI, differential drive among obstacles (MPPI-Generic's scene)
      --samples K1,K2,...         samples (default 128,1024,4096,16384)
      --horizon H                 (default 100; dt 0.02, lambda 1, sigma 0.2)
      --checked                   keep bounds checks in the user WGSL (default: trusted)
      --runs N, --warmup N, --json
  pompc train [options]           train an agent (algorithm.md a.5) with a progress line, a CSV
                                  log and a learning-curve SVG
      --env NAME                  pendulum-swingup, cartpole-swingup, cartpole-balance,
                                  acrobot-swingup, reacher-easy (default pendulum-swingup)
      --method M                  tdmpc2, bmpc, tdmpc-square, po-mpc (default po-mpc)
      --lambda L                  PO-MPC's lambda (default 1)
      --steps N --seed S          environment steps (default 100000), seed (default 0); a list
                                  S1,S2,... runs the seeds in parallel threads on one device
      --model M                   tiny, small, or a TD-MPC2 size 1, 5, 19, 48, 317 (default 5)
      --quick                     the CPU-sized preset (tiny model, 64 samples, 3 iterations,
                                  batch 32)
      --eval-every N              steps between evaluations (default 10000; 0: none)
      --seed-steps N              random steps, then as many pre-training updates (default
                                  max(1000, 5 x episode length); at least one episode)
      --eval-episodes N           episodes per evaluation (default 1)
      --out DIR                   where the CSV, SVG and checkpoint go (default runs)
      --checkpoint-every N        steps between checkpoints (default 0: only at the end)
      --resume                    continue from DIR's checkpoint of this run
      --time-limit S              stop (with a checkpoint) at the first episode end after S seconds
      --quiet                     no progress line
      --precision P               the planner's model: f32 (default), f16, coop or auto (the
                                  device's); weights rounded to f16 from the trainer's f32
                                  parameters after each update
  pompc plot --out FILE.svg [--title T] [--train] CSV...
                                  evaluation curves of runs (--train: training returns, mean
                                  of 5 episodes), seeds of one method pooled (mean line,
                                  min-max band); runs named ENV-METHOD-sSEED.csv
environment: WGPU_BACKEND (vulkan, metal, dx12, gl), WGPU_ADAPTER_NAME, WGPU_POWER_PREF,
  POMPC_PRECISION (auto, f32, f16, coop: the world model's default precision),
  POMPC_LIMITS (downlevel: ask for wgpu's downlevel limits instead of the adapter's),
  POMPC_BENCH_TARGET_S (seconds of back-to-back work per timed run, default 0.002),
  POMPC_SHADER_DIR (read shaders/NAME.wgsl from DIR/NAME.wgsl where that file exists: kernel
  work on a machine without a Rust toolchain)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(String::as_str) {
        Some("info") => info(args.get(1).map(String::as_str) == Some("--probe")),
        Some("bench") => match args.get(1).map(String::as_str) {
            Some("linear") => bench_linear(&args[2..]),
            Some("model") => bench_model(&args[2..]),
            Some("plan") => bench_plan(&args[2..]),
            Some("mppi") => bench_mppi(&args[2..]),
            Some("update") => bench_update(&args[2..]),
            Some("gemm") => bench_gemm(&args[2..]),
            Some("policy") => bench_policy(&args[2..]),
            Some("all") | None => bench_all(&args[(args.len().min(2))..]),
            Some(a) if a.starts_with("--") => bench_all(&args[1..]),
            _ => Err(format!("bench what?\n{USAGE}")),
        },
        Some("train") => train(&args[1..]),
        Some("plot") => plot(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn info(probe: bool) -> Result<(), String> {
    let adapters = pompc::gpu::enumerate_adapters(None);
    if adapters.is_empty() {
        return Err(pompc::Error::NoAdapter {
            detail: String::new(),
        }
        .to_string());
    }
    for (i, a) in adapters.iter().enumerate() {
        let inf = a.get_info();
        let f = a.features();
        let l = a.limits();
        println!("[{i}] {}", inf.name);
        println!("    backend {:?}, type {:?}", inf.backend, inf.device_type);
        println!("    driver {} ({})", inf.driver, inf.driver_info);
        println!(
            "    subgroups {} (size {}..{}), shader-f16 {}, timestamps {}, cooperative matrix {}",
            f.contains(wgpu::Features::SUBGROUP),
            inf.subgroup_min_size,
            inf.subgroup_max_size,
            f.contains(wgpu::Features::SHADER_F16),
            f.contains(wgpu::Features::TIMESTAMP_QUERY),
            f.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
        );
        println!(
            "    max storage binding {} MiB, max buffer {} MiB, workgroup memory {} B, \
             invocations/workgroup {}, workgroups/dimension {}",
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.max_compute_workgroup_storage_size,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroups_per_dimension,
        );
        if probe {
            probe_adapter(a);
        }
    }
    match Gpu::new(GpuOptions::default()) {
        Ok(g) => println!("default choice: {}", g.describe()),
        Err(e) => println!("default choice failed: {e}"),
    }
    Ok(())
}

/// Open a device on `adapter` with each limits request, with and without the optional
/// features, and run a small GEMM against the CPU on each device that opens.
fn probe_adapter(adapter: &wgpu::Adapter) {
    use pompc::gpu::LimitsRequest;
    use pompc::kernels::gemm::{self, Gemm, Mat};
    for (lname, limits) in [
        ("adapter limits", LimitsRequest::Adapter),
        ("downlevel limits", LimitsRequest::Downlevel),
    ] {
        for features in [true, false] {
            let opts = GpuOptions {
                limits: limits.clone(),
                optional_features: features,
                ..GpuOptions::default()
            };
            let what = format!(
                "{lname}, {} optional features",
                if features { "with" } else { "without" }
            );
            let result = Gpu::from_adapter(adapter.clone(), &opts).and_then(|gpu| {
                let (m, n, k) = (33, 17, 29);
                let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
                let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
                let ab = pompc::GpuBuffer::from_slice(&gpu, "a", &a)?;
                let bb = pompc::GpuBuffer::from_slice(&gpu, "b", &b)?;
                let cb = pompc::GpuBuffer::<f32>::new(&gpu, "c", m * n)?;
                let mut rec = pompc::Recorder::new(&gpu);
                gemm::record(
                    &mut rec,
                    &Gemm::new(m, n, k),
                    Mat::rows(&ab, k),
                    Mat::rows(&bb, n),
                    Mat::rows(&cb, n),
                    None,
                )?;
                let h = rec.read(&cb);
                let c = rec.finish()?.get(&h)?;
                // Small integers: the product is exact in f32.
                let exact = (0..m).all(|i| {
                    (0..n).all(|j| {
                        let s: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                        c[i * n + j] == s
                    })
                });
                Ok(exact)
            });
            match result {
                Ok(true) => println!("    probe, {what}: device opens, GEMM exact"),
                Ok(false) => println!("    probe, {what}: device opens, GEMM WRONG"),
                Err(e) => println!("    probe, {what}: {e}"),
            }
        }
    }
}

fn bench_linear(args: &[String]) -> Result<(), String> {
    let mut sweep = false;
    let mut json = false;
    let mut runs = 50;
    let mut ceiling = None;
    let mut only: Option<String> = None;
    let mut shape: Option<(usize, usize, usize)> = None;
    let mut ln = false;
    let mut act = Activation::Identity;
    let mut precisions = vec![Precision::F32];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--sweep" => sweep = true,
            "--json" => json = true,
            "--precision" => precisions = precision_list(it.next())?,
            "--case" => only = it.next().cloned(),
            "--ln" => ln = true,
            "--act" => {
                act = match it.next().map(String::as_str) {
                    Some("mish") => Activation::Mish,
                    Some("simnorm") => Activation::SimNorm,
                    Some("identity") => Activation::Identity,
                    _ => return Err("--act takes identity, mish or simnorm".into()),
                }
            }
            "--shape" => shape = Some(parse_shape(it.next())?),
            "--runs" => runs = parse(it.next(), "--runs")?,
            "--ceiling-tflops" => ceiling = Some(parse::<f64>(it.next(), "--ceiling-tflops")?),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    let gpu = Gpu::new(GpuOptions::default()).map_err(|e| e.to_string())?;
    let ceiling = ceiling.or_else(|| bench::known_fp32_ceiling_tflops(&gpu.info().name));
    if !json {
        println!("adapter: {}", gpu.describe());
        println!(
            "fp32 ceiling: {}; tensor-core rows against {}",
            ceiling.map_or("unknown (pass --ceiling-tflops)".into(), |c| format!(
                "{c} TFLOP/s"
            )),
            bench::known_tensor_ceiling_tflops(&gpu.info().name)
                .map_or("nothing (unknown card)".into(), |c| format!(
                    "{c} TFLOP/s (f16)"
                ))
        );
        println!(
            "{:<34} {:>15} {:>20} {:>10} {:>10} {:>10} {:>9} {:>7}",
            "kernel",
            "M x N x K",
            "tile/split",
            "median us",
            "p90 us",
            "min us",
            "GFLOP/s",
            "ceiling"
        );
    }
    let mut cases: Vec<(&str, LinearConfig, usize)> = vec![
        (
            "linear LN+Mish",
            LinearConfig::new(512, 550)
                .with_ln()
                .with_act(Activation::Mish),
            512,
        ),
        ("linear plain", LinearConfig::new(512, 550), 512),
        ("linear plain", LinearConfig::new(4096, 4096), 4096),
        (
            "linear LN+Mish (planner batch)",
            LinearConfig::new(512, 512)
                .with_ln()
                .with_act(Activation::Mish),
            16384,
        ),
    ];
    if let Some((m, n, k)) = shape {
        let mut cfg = LinearConfig::new(k, n).with_act(act);
        cfg.layer_norm = ln;
        cases = vec![("linear custom", cfg, m)];
    }
    for (name, cfg, m) in cases {
        if only
            .as_ref()
            .is_some_and(|o| !format!("{name} {m}").contains(o.as_str()))
        {
            continue;
        }
        let mut plans = vec![None];
        if sweep {
            let mut tiles = Tile::ALL.to_vec();
            tiles.extend(Tile::SWEEP);
            tiles.retain(|t| t.check(&gpu).is_ok());
            let mut seen = Vec::new();
            tiles.retain(|t| {
                let new = !seen.contains(t);
                seen.push(*t);
                new
            });
            for tile in tiles {
                for split in [1, 2, 4, 8] {
                    plans.push(Some(LinearPlan { tile, split }));
                }
            }
        }
        for &precision in &precisions {
            for plan in &plans {
                let r = bench::bench_linear_at(&gpu, cfg, m, *plan, runs, precision)
                    .map_err(|e| e.to_string())?;
                let label = if plan.is_none() {
                    format!("{name} {} [auto]", precision.name())
                } else {
                    format!("{name} {}", precision.name())
                };
                print_row(&label, &r, ceiling, json, &gpu);
                if precision == Precision::TensorCore {
                    // The ALU tiles of a sweep do not apply to the tensor-core kernel: it
                    // sweeps its own.
                    if sweep && let Ok(sg) = gpu.tensor_cores() {
                        for tile in CoopTile::ALL.iter().chain(&CoopTile::SWEEP) {
                            if tile.check(&gpu, sg).is_err() {
                                continue;
                            }
                            for split in [1, 2] {
                                let coop = Some(CoopPlan { tile: *tile, split });
                                let r = bench::bench_linear_with(
                                    &gpu, cfg, m, None, coop, runs, precision,
                                )
                                .map_err(|e| e.to_string())?;
                                print_row(&label, &r, ceiling, json, &gpu);
                            }
                        }
                    }
                    break;
                }
            }
        }
    }
    Ok(())
}

fn print_row(name: &str, r: &LinearBench, ceiling: Option<f64>, json: bool, gpu: &Gpu) {
    // Tensor-core rows against the tensor-core ceiling, the others against the fp32 one.
    let ceiling = match r.kernel {
        pompc::kernels::linear::LinearKernel::TensorCore(_) => {
            bench::known_tensor_ceiling_tflops(&gpu.info().name)
        }
        pompc::kernels::linear::LinearKernel::Alu(_) => ceiling,
    };
    let frac = ceiling.map(|c| r.gflops / (c * 1e3));
    let clock = match r.stats.clock {
        Clock::Timestamps => "timestamps",
        Clock::Wall => "wall",
    };
    if json {
        println!(
            "{{\"kernel\":\"{name}\",\"m\":{},\"n\":{},\"k\":{},\"tile\":\"{}\",\
             \"precision\":\"{}\",\"backend\":\"{:?}\",\"adapter\":\"{}\",\"median_s\":{:e},\
             \"p90_s\":{:e},\"gflops\":{:.1},\"fraction\":{},\"clock\":\"{clock}\"}}",
            r.m,
            r.cfg.n,
            r.cfg.k,
            r.kernel,
            r.precision.name(),
            gpu.info().backend,
            gpu.info().name.replace('"', "'"),
            r.stats.median,
            r.stats.p90,
            r.gflops,
            frac.map_or("null".into(), |f| format!("{f:.3}")),
        );
    } else {
        println!(
            "{:<34} {:>15} {:>20} {:>10.1} {:>10.1} {:>10.1} {:>9} {:>7} {clock}",
            name,
            format!("{}x{}x{}", r.m, r.cfg.n, r.cfg.k),
            r.kernel.to_string(),
            r.stats.median * 1e6,
            r.stats.p90 * 1e6,
            r.stats.min * 1e6,
            if r.gflops < 100.0 {
                format!("{:.2}", r.gflops)
            } else {
                format!("{:.0}", r.gflops)
            },
            frac.map_or("-".into(), |f| format!("{:.1}%", f * 100.0)),
        );
    }
}

/// `--precision f32,f16,coop`: each entry; `auto` is not allowed here.
fn precision_list(v: Option<&String>) -> Result<Vec<Precision>, String> {
    let v = v.ok_or("--precision takes f32, f16, coop or a list of them")?;
    v.split(',')
        .map(|p| match Precision::parse(p.trim()) {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err("list f32, f16 or coop here, not auto".to_string()),
            Err(e) => Err(e.to_string()),
        })
        .collect()
}

/// `MxNxK`: exactly three positive integers joined by `x`, each at most 2^20.
fn parse_shape(v: Option<&String>) -> Result<(usize, usize, usize), String> {
    let usage = |why: String| {
        format!(
            "--shape {why}: it takes MxNxK, three positive integers up to 1048576, e.g. 512x550x512"
        )
    };
    let s = v.ok_or_else(|| usage("needs a value".into()))?;
    let parts: Vec<&str> = s.split('x').collect();
    if parts.len() != 3 {
        return Err(usage(format!("{s:?} has {} parts", parts.len())));
    }
    let mut dims = [0usize; 3];
    for (d, p) in dims.iter_mut().zip(&parts) {
        *d = p
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1 << 20).contains(n))
            .ok_or_else(|| usage(format!("{s:?}: {p:?} is not a size")))?;
    }
    Ok((dims[0], dims[1], dims[2]))
}

fn parse<T: std::str::FromStr>(v: Option<&String>, flag: &str) -> Result<T, String> {
    v.and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{flag} needs a number"))
}

fn bench_model(args: &[String]) -> Result<(), String> {
    let (mut size, mut obs, mut act, mut rows, mut runs) = (5u32, 223usize, 38usize, 512usize, 30);
    let mut ceiling = None;
    let mut json = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--size" => size = parse(it.next(), "--size")?,
            "--obs" => obs = parse(it.next(), "--obs")?,
            "--act" => act = parse(it.next(), "--act")?,
            "--rows" => rows = parse(it.next(), "--rows")?,
            "--runs" => runs = parse(it.next(), "--runs")?,
            "--json" => json = true,
            "--ceiling-tflops" => ceiling = Some(parse::<f64>(it.next(), "--ceiling-tflops")?),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    let spec = pompc::model::ModelSpec::tdmpc2(size, obs, act).map_err(|e| e.to_string())?;
    let gpu = Gpu::new(GpuOptions::default()).map_err(|e| e.to_string())?;
    let ceiling = ceiling.or_else(|| bench::known_fp32_ceiling_tflops(&gpu.info().name));
    let res = bench::bench_model(&gpu, &spec, rows, runs).map_err(|e| e.to_string())?;
    if !json {
        println!("adapter: {}", gpu.describe());
        println!(
            "model: TD-MPC2 {size}M preset, obs {obs}, action {act}, {} parameters; {rows} rows",
            spec.param_count()
        );
        println!(
            "{:<22} {:>10} {:>10} {:>10} {:>9} {:>8} {:>10}",
            "network", "MFLOP", "median us", "p90 us", "GFLOP/s", "ceiling", "dispatches"
        );
    }
    for r in res {
        let frac = ceiling.map(|c| r.gflops / (c * 1e3));
        if json {
            println!(
                "{{\"network\":\"{}\",\"rows\":{},\"flops\":{},\"median_s\":{:e},\
                 \"p90_s\":{:e},\"gflops\":{:.1},\"fraction\":{},\"dispatches\":{},\
                 \"backend\":\"{:?}\",\"adapter\":\"{}\"}}",
                r.name,
                r.rows,
                r.flops,
                r.stats.median,
                r.stats.p90,
                r.gflops,
                frac.map_or("null".into(), |f| format!("{f:.3}")),
                r.dispatches,
                gpu.info().backend,
                gpu.info().name.replace('"', "'"),
            );
        } else {
            println!(
                "{:<22} {:>10.1} {:>10.1} {:>10.1} {:>9} {:>8} {:>10}",
                r.name,
                r.flops * 1e-6,
                r.stats.median * 1e6,
                r.stats.p90 * 1e6,
                if r.gflops < 100.0 {
                    format!("{:.2}", r.gflops)
                } else {
                    format!("{:.0}", r.gflops)
                },
                frac.map_or("-".into(), |f| format!("{:.1}%", f * 100.0)),
                r.dispatches,
            );
        }
    }
    Ok(())
}

fn list(v: Option<&String>, flag: &str) -> Result<Vec<usize>, String> {
    v.map(|s| {
        s.split(',')
            .map(|p| p.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
    })
    .and_then(|r| r.ok())
    .filter(|v| !v.is_empty())
    .ok_or_else(|| format!("{flag} takes a comma-separated list of numbers"))
}

fn bench_plan(args: &[String]) -> Result<(), String> {
    let (mut batches, mut acts, mut obs) = (vec![1, 16, 256], vec![6, 38], 24usize);
    let (mut runs, mut warmup, mut json) = (30usize, 5usize, false);
    let (mut precisions, mut compare, mut calls, mut profile) = (None, false, 3usize, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--precision" => precisions = Some(precision_list(it.next())?),
            "--compare-precision" => compare = true,
            "--profile" => profile = true,
            "--calls" => calls = parse(it.next(), "--calls")?,
            "--batch" => batches = list(it.next(), "--batch")?,
            "--act" => acts = list(it.next(), "--act")?,
            "--obs" => obs = parse(it.next(), "--obs")?,
            "--runs" => runs = parse(it.next(), "--runs")?,
            "--warmup" => warmup = parse(it.next(), "--warmup")?,
            "--json" => json = true,
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    let gpu = Gpu::new(GpuOptions::default()).map_err(|e| e.to_string())?;
    if compare {
        return compare_precision(&gpu, precisions, &batches, &acts, obs, calls, json);
    }
    let precisions = precisions.unwrap_or_else(|| vec![gpu.precision()]);
    if profile {
        return profile_plan(&gpu, &precisions, &batches, &acts, obs, runs, warmup);
    }
    if !json {
        println!("adapter: {}", gpu.describe());
        println!(
            "TD-MPC2 5M preset, obs {obs}; planner: TD-MPC2 defaults (512 samples, 64 elites, 24 policy trajectories, horizon 3)"
        );
        println!(
            "{:>4} {:>5} {:>5} {:>11} {:>11} {:>11} {:>13} {:>9} {:>9} {:>10}",
            "A",
            "prec",
            "B",
            "wall ms",
            "p90 ms",
            "GPU ms",
            "env-plans/s",
            "GFLOP",
            "TFLOP/s",
            "dispatches"
        );
    }
    for &a in &acts {
        let spec = pompc::model::ModelSpec::tdmpc2(5, obs, a).map_err(|e| e.to_string())?;
        for (&b, &precision) in batches
            .iter()
            .flat_map(|b| precisions.iter().map(move |p| (b, p)))
        {
            let r = bench::bench_plan_at(&gpu, &spec, b, runs, warmup, precision)
                .map_err(|e| e.to_string())?;
            let gpu_ms = r.gpu.as_ref().map(|g| g.median * 1e3);
            let tflops = r.flops / r.wall.median * 1e-12;
            if json {
                println!(
                    "{{\"action_dim\":{a},\"batch\":{b},\"precision\":\"{}\",\"wall_median_s\":{:e},\"wall_p90_s\":{:e},\
                     \"gpu_median_s\":{},\"env_plans_per_s\":{:.1},\"gflop\":{:.2},\"tflops\":{:.3},\
                     \"dispatches\":{},\"backend\":\"{:?}\",\"adapter\":\"{}\"}}",
                    precision.name(),
                    r.wall.median,
                    r.wall.p90,
                    r.gpu
                        .as_ref()
                        .map_or("null".into(), |g| format!("{:e}", g.median)),
                    r.env_plans_per_second(),
                    r.flops * 1e-9,
                    tflops,
                    r.dispatches,
                    gpu.info().backend,
                    gpu.info().name.replace('"', "'"),
                );
            } else {
                println!(
                    "{:>4} {:>5} {:>5} {:>11.3} {:>11.3} {:>11} {:>13.1} {:>9.2} {:>9.2} {:>10}",
                    a,
                    precision.name(),
                    b,
                    r.wall.median * 1e3,
                    r.wall.p90 * 1e3,
                    gpu_ms.map_or("-".into(), |g| format!("{g:.3}")),
                    r.env_plans_per_second(),
                    r.flops * 1e-9,
                    tflops,
                    r.dispatches
                );
            }
        }
    }
    Ok(())
}

/// `pompc bench plan --profile`: one table per case, kernels by GPU time.
fn profile_plan(
    gpu: &Gpu,
    precisions: &[Precision],
    batches: &[usize],
    acts: &[usize],
    obs: usize,
    runs: usize,
    warmup: usize,
) -> Result<(), String> {
    println!("adapter: {}", gpu.describe());
    for &a in acts {
        let spec = pompc::model::ModelSpec::tdmpc2(5, obs, a).map_err(|e| e.to_string())?;
        for &b in batches {
            for &p in precisions {
                let rows = bench::profile_plan(gpu, &spec, b, runs.min(10), warmup, p)
                    .map_err(|e| e.to_string())?;
                let total: f64 = rows.iter().map(|r| r.seconds).sum();
                let launches: usize = rows.iter().map(|r| r.count).sum();
                println!(
                    "\nplan step, A {a}, B {b}, {}: {:.3} ms GPU in {launches} dispatches \
                     (each timed alone)",
                    p.name(),
                    total * 1e3
                );
                println!(
                    "{:<28} {:>22} {:>6} {:>10} {:>10} {:>6}",
                    "kernel", "workgroups", "count", "ms/step", "us each", "share"
                );
                for r in &rows {
                    println!(
                        "{:<28} {:>22} {:>6} {:>10.3} {:>10.1} {:>5.1}%",
                        r.kernel,
                        format!("{}x{}x{}", r.groups[0], r.groups[1], r.groups[2]),
                        r.count,
                        r.seconds * 1e3,
                        r.seconds / r.count.max(1) as f64 * 1e6,
                        100.0 * r.seconds / total
                    );
                }
            }
        }
    }
    Ok(())
}

/// `pompc bench plan --compare-precision`: plans at f32 and at each other precision.
fn compare_precision(
    gpu: &Gpu,
    precisions: Option<Vec<Precision>>,
    batches: &[usize],
    acts: &[usize],
    obs: usize,
    calls: usize,
    json: bool,
) -> Result<(), String> {
    let list = precisions.unwrap_or_else(|| {
        [Precision::F16, Precision::TensorCore]
            .into_iter()
            .filter(|p| gpu.supports(*p).is_ok())
            .collect()
    });
    let list: Vec<Precision> = list.into_iter().filter(|p| *p != Precision::F32).collect();
    if list.is_empty() {
        return Err(format!(
            "no precision other than f32 to compare on {} (f16: {:?}, coop: {:?})",
            gpu.info().name,
            gpu.supports(Precision::F16).err().map(|e| e.to_string()),
            gpu.supports(Precision::TensorCore)
                .err()
                .map(|e| e.to_string()),
        ));
    }
    if !json {
        println!("adapter: {}", gpu.describe());
        println!(
            "plans at each precision against f32: TD-MPC2 5M preset (random init, random reward \
             and Q heads), obs {obs}, TD-MPC2 planner, seed 1, {calls} consecutive calls"
        );
        println!(
            "{:>5} {:>4} {:>5} {:>21} {:>21} {:>21} {:>9} {:>7}",
            "prec",
            "A",
            "B",
            "mean |d| max / avg",
            "value |d| max / avg",
            "action |d| max / avg",
            "|value|",
            "same n"
        );
    }
    for &a in acts {
        let spec = pompc::model::ModelSpec::tdmpc2(5, obs, a).map_err(|e| e.to_string())?;
        for &b in batches {
            for &p in &list {
                let d =
                    bench::compare_precision(gpu, &spec, b, calls, p).map_err(|e| e.to_string())?;
                if json {
                    println!(
                        "{{\"precision\":\"{}\",\"action_dim\":{a},\"batch\":{b},\"calls\":{},\
                         \"mean_max\":{:e},\"mean_avg\":{:e},\"value_max\":{:e},\"value_avg\":{:e},\
                         \"value_scale\":{:e},\"action_max\":{:e},\"action_avg\":{:e},\
                         \"same_choice\":{:.4},\"adapter\":\"{}\"}}",
                        p.name(),
                        d.calls,
                        d.mean_max,
                        d.mean_avg,
                        d.value_max,
                        d.value_avg,
                        d.value_scale,
                        d.action_max,
                        d.action_avg,
                        d.same_choice,
                        gpu.info().name.replace('"', "'"),
                    );
                } else {
                    println!(
                        "{:>5} {:>4} {:>5} {:>10.2e} / {:>8.2e} {:>10.2e} / {:>8.2e} {:>10.2e} / \
                         {:>8.2e} {:>9.3} {:>6.1}%",
                        p.name(),
                        a,
                        b,
                        d.mean_max,
                        d.mean_avg,
                        d.value_max,
                        d.value_avg,
                        d.action_max,
                        d.action_avg,
                        d.value_scale,
                        100.0 * d.same_choice
                    );
                }
            }
        }
    }
    Ok(())
}

/// One row of `pompc bench`.
struct Row {
    case: String,
    sizes: String,
    median: f64,
    p90: f64,
    clock: Clock,
    /// Floating-point operations, or bytes moved when `bytes`.
    work: f64,
    bytes: bool,
    /// Ran on tensor cores: "of peak" is against the tensor-core ceiling.
    tensor: bool,
}

fn bench_all(args: &[String]) -> Result<(), String> {
    use pompc::kernels::gemm::Gemm;
    use pompc::model::ModelSpec;
    use pompc::planner::problems::{DiffDriveScene, diff_drive};
    use pompc::train::PolicyUpdateConfig;
    let (mut json, mut runs, mut ceiling) = (false, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json = true,
            "--runs" => runs = Some(parse::<usize>(it.next(), "--runs")?.max(1)),
            "--ceiling-tflops" => ceiling = Some(parse::<f64>(it.next(), "--ceiling-tflops")?),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    let e = |e: pompc::Error| e.to_string();
    let gpu = Gpu::new(GpuOptions::default()).map_err(e)?;
    let ceiling = ceiling.or_else(|| bench::known_fp32_ceiling_tflops(&gpu.info().name));
    let cpu = gpu.info().device_type == wgpu::DeviceType::Cpu;
    // CPU adapters: 2 end-to-end runs unless asked for more (a plan step takes 0.2-0.7 s there).
    let runs_e2e = runs.unwrap_or(if cpu { 2 } else { 20 });
    let runs = runs.unwrap_or(20);
    let warm = if cpu { 1 } else { 5 };
    let mut rows: Vec<Row> = Vec::new();
    let flops_row = |case: &str, sizes: String, st: &bench::Stats, work: f64| Row {
        case: case.into(),
        sizes,
        median: st.median,
        p90: st.p90,
        clock: st.clock,
        work,
        bytes: false,
        tensor: false,
    };
    // The world model's rows run at the device's precision (tensor cores where they are).
    let prec = gpu.precision();
    let model_row = |case: &str, sizes: String, st: &bench::Stats, work: f64| Row {
        case: format!("{case} [{}]", prec.name()),
        tensor: prec == Precision::TensorCore,
        ..flops_row(case, sizes, st, work)
    };
    let tensor_ceiling = bench::known_tensor_ceiling_tflops(&gpu.info().name);
    // Kernels.
    let lin = LinearConfig::new(550, 512)
        .with_ln()
        .with_act(Activation::Mish);
    let m = if cpu { 128 } else { 512 };
    let r = bench::bench_linear(&gpu, lin, m, None, runs).map_err(e)?;
    rows.push(flops_row(
        "linear (LayerNorm, Mish)",
        format!("{m}x550->512"),
        &r.stats,
        lin.flops(m),
    ));
    let q = Gemm {
        trans_b: true,
        batch: 5,
        ..Gemm::new(if cpu { 96 } else { 768 }, 512, 518)
    };
    let r = bench::bench_gemm(&gpu, q, None, runs).map_err(e)?;
    rows.push(flops_row(
        "gemm (x W^T, 5 heads)",
        format!("{}x512x518x5", q.m),
        &r.time,
        q.flops(),
    ));
    let big = if cpu { 512 } else { 4096 };
    let g = Gemm {
        trans_b: true,
        ..Gemm::new(big, big, big)
    };
    let r = bench::bench_gemm(&gpu, g, None, runs).map_err(e)?;
    rows.push(flops_row(
        "gemm (x W^T)",
        format!("{big}^3"),
        &r.time,
        g.flops(),
    ));
    let spec5 = ModelSpec::tdmpc2(5, 24, 6).map_err(e)?;
    let net_rows = if cpu { 32 } else { 512 };
    for n in bench::bench_model(&gpu, &spec5, net_rows, runs).map_err(e)? {
        rows.push(model_row(
            &format!("5M {} forward", n.name),
            format!("{net_rows} rows"),
            &n.stats,
            n.flops,
        ));
    }
    let params = spec5.param_count();
    let st = bench::bench_adam(&gpu, params, runs).map_err(e)?;
    rows.push(Row {
        case: "Adam + clip (5M params)".into(),
        sizes: format!("{params}"),
        median: st.median,
        p90: st.p90,
        clock: st.clock,
        work: 32.0 * params as f64,
        bytes: true,
        tensor: false,
    });
    // End to end: the 5M preset on GPUs, the tiny one on CPU adapters.
    let (spec, tag) = if cpu {
        (ModelSpec::tiny(24, 6), "tiny")
    } else {
        (spec5.clone(), "5M")
    };
    let gpu_or_wall =
        |w: &bench::Stats, g: &Option<bench::Stats>| g.clone().unwrap_or_else(|| w.clone());
    for b in if cpu { vec![1, 4] } else { vec![1, 16, 256] } {
        let r = bench::bench_plan(&gpu, &spec, b, runs_e2e, warm).map_err(e)?;
        rows.push(model_row(
            &format!("plan step ({tag}), wall"),
            format!("B={b}"),
            &r.wall,
            r.flops,
        ));
        let g = gpu_or_wall(&r.wall, &r.gpu);
        rows.push(model_row(
            &format!("plan step ({tag}), GPU"),
            format!("B={b}"),
            &g,
            r.flops,
        ));
    }
    let ub = if cpu { 16 } else { 256 };
    let r = bench::bench_update(&gpu, &spec, ub, runs_e2e, warm).map_err(e)?;
    rows.push(flops_row(
        &format!("world-model update ({tag}), wall"),
        format!("B={ub} T=3"),
        &r.wall,
        r.flops,
    ));
    rows.push(flops_row(
        &format!("world-model update ({tag}), GPU"),
        format!("B={ub} T=3"),
        &gpu_or_wall(&r.wall, &r.gpu),
        r.flops,
    ));
    let r = bench::bench_policy(
        &gpu,
        &spec,
        PolicyUpdateConfig::pompc(spec.action_dim, 1.0),
        ub,
        runs_e2e,
        warm,
    )
    .map_err(e)?;
    rows.push(flops_row(
        &format!("PO-MPC policy update ({tag}), wall"),
        format!("B={ub} T'=3"),
        &r.wall,
        r.flops,
    ));
    rows.push(flops_row(
        &format!("PO-MPC policy update ({tag}), GPU"),
        format!("B={ub} T'=3"),
        &gpu_or_wall(&r.wall, &r.gpu),
        r.flops,
    ));
    let scene = DiffDriveScene::benchmark();
    let p = scene.params().map_err(e)?;
    let x0 = scene.start.map(|v| v as f32);
    for k in if cpu { vec![128] } else { vec![128, 16384] } {
        let cfg = pompc::planner::custom::MppiConfig {
            horizon: 100,
            samples: k,
            trusted: true,
            gamma: 0.015,
            ..pompc::planner::custom::MppiConfig::new(2)
        };
        let r = bench::bench_mppi(&gpu, diff_drive(), cfg, &p, &x0, runs_e2e.max(10), warm)
            .map_err(e)?;
        rows.push(Row {
            case: "classic MPPI step, wall".into(),
            sizes: format!("K={k} H=100"),
            median: r.wall.median,
            p90: r.wall.p90,
            clock: Clock::Wall,
            work: 0.0,
            bytes: false,
            tensor: false,
        });
    }
    let info = gpu.info();
    if !json {
        println!("adapter: {}", gpu.describe());
        println!(
            "{:<36} {:>16} {:>10} {:>10} {:>6} {:>14} {:>8}",
            "case", "sizes", "median ms", "p90 ms", "clock", "throughput", "of peak"
        );
    }
    for r in &rows {
        let rate = if r.work > 0.0 {
            r.work / r.median * 1e-9
        } else {
            0.0
        };
        let clock = if r.clock == Clock::Timestamps {
            "gpu"
        } else {
            "wall"
        };
        if json {
            println!(
                "{{\"case\":\"{}\",\"sizes\":\"{}\",\"median_s\":{:e},\"p90_s\":{:e},\"clock\":\"{clock}\",\
                 \"{}\":{rate:.3},\"backend\":\"{:?}\",\"adapter\":\"{}\"}}",
                r.case,
                r.sizes,
                r.median,
                r.p90,
                if r.bytes { "gb_per_s" } else { "gflop_per_s" },
                info.backend,
                info.name.replace('"', "'")
            );
        } else {
            let thr = match (r.work > 0.0, r.bytes) {
                (false, _) => "-".to_string(),
                (true, true) => format!("{rate:.1} GB/s"),
                (true, false) => format!("{rate:.1} GFLOP/s"),
            };
            let c = if r.tensor { tensor_ceiling } else { ceiling };
            let peak = match (r.bytes, c) {
                (false, Some(c)) if r.work > 0.0 => format!("{:.1}%", 100.0 * rate / (c * 1e3)),
                _ => "-".into(),
            };
            println!(
                "{:<36} {:>16} {:>10.3} {:>10.3} {:>6} {:>14} {:>8}",
                r.case,
                r.sizes,
                r.median * 1e3,
                r.p90 * 1e3,
                clock,
                thr,
                peak
            );
        }
    }
    Ok(())
}

fn bench_gemm(args: &[String]) -> Result<(), String> {
    use pompc::kernels::gemm::{Gemm, GemmTile};
    let (mut sweep, mut runs, mut ceiling, mut coop) = (false, 30usize, None, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--sweep" => sweep = true,
            "--coop" => coop = true,
            "--runs" => runs = parse(it.next(), "--runs")?,
            "--ceiling-tflops" => ceiling = Some(parse::<f64>(it.next(), "--ceiling-tflops")?),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    let gpu = Gpu::new(GpuOptions::default()).map_err(|e| e.to_string())?;
    let ceiling = ceiling.or_else(|| bench::known_fp32_ceiling_tflops(&gpu.info().name));
    let tensor_ceiling = bench::known_tensor_ceiling_tflops(&gpu.info().name);
    println!("adapter: {}", gpu.describe());
    // The 5M preset's update at B = 256, T = 3: 768 rows, 5 Q heads, width 512 (518 = 512 + 6).
    let nt = |m, n, k, batch| Gemm {
        trans_b: true,
        batch,
        ..Gemm::new(m, n, k)
    };
    let cases = [
        ("Q fwd layer 0 (x W^T)", nt(768, 512, 518, 5)),
        ("Q fwd layer 1", nt(768, 512, 512, 5)),
        (
            "Q dX layer 1 (dY W)",
            Gemm {
                batch: 5,
                ..Gemm::new(768, 512, 512)
            },
        ),
        (
            "Q dW layer 1 (dY^T X)",
            Gemm {
                trans_a: true,
                accumulate: true,
                batch: 5,
                ..Gemm::new(512, 512, 768)
            },
        ),
        ("dynamics fwd layer 1", nt(256, 512, 512, 1)),
        (
            "dynamics dW layer 1",
            Gemm {
                trans_a: true,
                accumulate: true,
                ..Gemm::new(512, 512, 256)
            },
        ),
        ("4096^3 x W^T", nt(4096, 4096, 4096, 1)),
        ("4096^3 A B", Gemm::new(4096, 4096, 4096)),
        ("512^3 A B", Gemm::new(512, 512, 512)),
        ("planner 131072x512x512", nt(131072, 512, 512, 1)),
    ];
    if coop && let Err(e) = gpu.tensor_cores() {
        return Err(format!("--coop: {e}"));
    }
    println!(
        "{:<24} {:>18} {:>6} {:>10} {:>10} {:>9} {:>8}",
        "case", "m x n x k x batch", "tile", "median us", "p90 us", "TFLOP/s", "of peak"
    );
    for (name, op) in cases {
        let tiles: Vec<Option<GemmTile>> = if sweep {
            GemmTile::ALL.iter().map(|t| Some(*t)).collect()
        } else {
            vec![None]
        };
        for tile in tiles {
            let r = bench::bench_gemm(&gpu, op, tile, runs).map_err(|e| e.to_string())?;
            let tf = op.flops() / r.time.median * 1e-12;
            println!(
                "{:<24} {:>18} {:>6} {:>10.1} {:>10.1} {:>9.2} {:>8}",
                name,
                format!("{}x{}x{}x{}", op.m, op.n, op.k, op.batch),
                r.tile.bm,
                r.time.median * 1e6,
                r.time.p90 * 1e6,
                tf,
                ceiling.map_or("-".into(), |c| format!("{:.1}%", 100.0 * tf / c))
            );
        }
        if !coop {
            continue;
        }
        let tiles: Vec<Option<CoopTile>> = if sweep {
            CoopTile::ALL
                .iter()
                .chain(&CoopTile::SWEEP)
                .map(|t| Some(*t))
                .collect()
        } else {
            vec![None]
        };
        for tile in tiles {
            let (t, time) = match bench::bench_gemm_coop(&gpu, op, tile, runs) {
                Ok(r) => r,
                Err(e) => {
                    println!("{name:<24} tensor cores {tile:?}: {e}");
                    continue;
                }
            };
            let tf = op.flops() / time.median * 1e-12;
            println!(
                "{:<24} {:>18} {:>6} {:>10.1} {:>10.1} {:>9.2} {:>8}",
                format!("{name} [tc {t}]"),
                format!("{}x{}x{}x{}", op.m, op.n, op.k, op.batch),
                t.bm,
                time.median * 1e6,
                time.p90 * 1e6,
                tf,
                tensor_ceiling.map_or("-".into(), |c| format!("{:.1}%", 100.0 * tf / c))
            );
        }
    }
    Ok(())
}

fn bench_policy(args: &[String]) -> Result<(), String> {
    use pompc::train::PolicyUpdateConfig;
    let mut presets = vec![
        "tdmpc2".to_string(),
        "bmpc".into(),
        "tdmpc-square".into(),
        "pompc".into(),
    ];
    let (mut lambda, mut batch, mut size, mut obs, mut act) =
        (1.0f32, 256usize, 5u32, 24usize, 6usize);
    let (mut runs, mut warmup, mut json) = (20usize, 5usize, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--preset" => {
                presets = it
                    .next()
                    .ok_or("--preset needs a value")?
                    .split(',')
                    .map(String::from)
                    .collect()
            }
            "--lambda" => lambda = parse(it.next(), "--lambda")?,
            "--batch" => batch = parse(it.next(), "--batch")?,
            "--size" => size = parse(it.next(), "--size")?,
            "--obs" => obs = parse(it.next(), "--obs")?,
            "--act" => act = parse(it.next(), "--act")?,
            "--runs" => runs = parse(it.next(), "--runs")?,
            "--warmup" => warmup = parse(it.next(), "--warmup")?,
            "--json" => json = true,
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    let gpu = Gpu::new(GpuOptions::default()).map_err(|e| e.to_string())?;
    let spec = pompc::model::ModelSpec::tdmpc2(size, obs, act).map_err(|e| e.to_string())?;
    if !json {
        println!("adapter: {}", gpu.describe());
        println!(
            "TD-MPC2 {size}M preset, action {act}, batch {batch}; one policy update per submit"
        );
        println!(
            "{:<14} {:>10} {:>10} {:>10} {:>11} {:>8} {:>9} {:>10}",
            "preset", "wall ms", "p90 ms", "GPU ms", "updates/s", "GFLOP", "TFLOP/s", "dispatches"
        );
    }
    for p in &presets {
        let cfg = match p.as_str() {
            "tdmpc2" => PolicyUpdateConfig::tdmpc2(act),
            "bmpc" => PolicyUpdateConfig::bmpc(act),
            "tdmpc-square" => PolicyUpdateConfig::tdmpc_square(act),
            "pompc" => PolicyUpdateConfig::pompc(act, lambda),
            other => return Err(format!("unknown preset {other:?}")),
        };
        let r = bench::bench_policy(&gpu, &spec, cfg, batch, runs, warmup)
            .map_err(|e| e.to_string())?;
        let g = r.gpu.as_ref().map(|g| g.median * 1e3);
        if json {
            println!(
                "{{\"preset\":\"{p}\",\"batch\":{batch},\"act\":{act},\"wall_median_s\":{:e},\
                 \"wall_p90_s\":{:e},\"gpu_median_s\":{},\"flops\":{:e},\"dispatches\":{},\
                 \"backend\":\"{:?}\",\"adapter\":\"{}\"}}",
                r.wall.median,
                r.wall.p90,
                r.gpu
                    .as_ref()
                    .map_or("null".into(), |g| format!("{:e}", g.median)),
                r.flops,
                r.dispatches,
                gpu.info().backend,
                gpu.info().name.replace('"', "'"),
            );
        } else {
            println!(
                "{:<14} {:>10.3} {:>10.3} {:>10} {:>11.1} {:>8.2} {:>9.2} {:>10}",
                p,
                r.wall.median * 1e3,
                r.wall.p90 * 1e3,
                g.map_or("-".into(), |g| format!("{g:.3}")),
                1.0 / r.wall.median,
                r.flops * 1e-9,
                r.flops / r.wall.median * 1e-12,
                r.dispatches
            );
        }
    }
    Ok(())
}

fn bench_update(args: &[String]) -> Result<(), String> {
    let (mut batches, mut size, mut obs, mut act) = (vec![256], 5u32, 24usize, 6usize);
    let (mut runs, mut warmup, mut json) = (20usize, 5usize, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--batch" => batches = list(it.next(), "--batch")?,
            "--size" => size = parse(it.next(), "--size")?,
            "--obs" => obs = parse(it.next(), "--obs")?,
            "--act" => act = parse(it.next(), "--act")?,
            "--runs" => runs = parse(it.next(), "--runs")?,
            "--warmup" => warmup = parse(it.next(), "--warmup")?,
            "--json" => json = true,
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    let gpu = Gpu::new(GpuOptions::default()).map_err(|e| e.to_string())?;
    let spec = pompc::model::ModelSpec::tdmpc2(size, obs, act).map_err(|e| e.to_string())?;
    if !json {
        println!("adapter: {}", gpu.describe());
        println!(
            "TD-MPC2 {size}M preset, obs {obs}, action {act}; world-model update, horizon 3 \
             (TD targets, rollout, losses, backward, clip 20, Adam, Polyak), one submit"
        );
        println!(
            "{:>5} {:>10} {:>10} {:>10} {:>11} {:>8} {:>9} {:>10}",
            "B", "wall ms", "p90 ms", "GPU ms", "updates/s", "GFLOP", "TFLOP/s", "dispatches"
        );
    }
    for &b in &batches {
        let r = bench::bench_update(&gpu, &spec, b, runs, warmup).map_err(|e| e.to_string())?;
        let g = r.gpu.as_ref().map(|g| g.median * 1e3);
        if json {
            println!(
                "{{\"batch\":{b},\"size\":{size},\"obs\":{obs},\"act\":{act},\"wall_median_s\":{:e},\
                 \"wall_p90_s\":{:e},\"gpu_median_s\":{},\"flops\":{:e},\"dispatches\":{},\
                 \"backend\":\"{:?}\",\"adapter\":\"{}\"}}",
                r.wall.median,
                r.wall.p90,
                r.gpu
                    .as_ref()
                    .map_or("null".into(), |g| format!("{:e}", g.median)),
                r.flops,
                r.dispatches,
                gpu.info().backend,
                gpu.info().name.replace('"', "'"),
            );
        } else {
            println!(
                "{:>5} {:>10.3} {:>10.3} {:>10} {:>11.1} {:>8.2} {:>9.2} {:>10}",
                b,
                r.wall.median * 1e3,
                r.wall.p90 * 1e3,
                g.map_or("-".into(), |g| format!("{g:.3}")),
                1.0 / r.wall.median,
                r.flops * 1e-9,
                r.flops / r.wall.median * 1e-12,
                r.dispatches
            );
        }
    }
    Ok(())
}

fn bench_mppi(args: &[String]) -> Result<(), String> {
    use pompc::planner::custom::MppiConfig;
    use pompc::planner::problems::{DiffDriveScene, diff_drive};
    let (mut samples, mut horizon) = (vec![128, 1024, 4096, 16384], 100usize);
    let (mut runs, mut warmup, mut json, mut trusted) = (50usize, 10usize, false, true);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--samples" => samples = list(it.next(), "--samples")?,
            "--horizon" => horizon = parse(it.next(), "--horizon")?,
            "--runs" => runs = parse(it.next(), "--runs")?,
            "--warmup" => warmup = parse(it.next(), "--warmup")?,
            "--checked" => trusted = false,
            "--json" => json = true,
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    let gpu = Gpu::new(GpuOptions::default()).map_err(|e| e.to_string())?;
    let scene = DiffDriveScene::benchmark();
    let params = scene.params().map_err(|e| e.to_string())?;
    let x0 = scene.start.map(|v| v as f32);
    if !json {
        println!("adapter: {}", gpu.describe());
        println!(
            "differential drive (DiffDriveScene::benchmark), horizon {horizon}, dt 0.02, lambda 1, \
             sigma 0.2, gamma 0.015, {} user WGSL; \
             one step = rollout + weights + update + read-back of the first control",
            if trusted { "trusted" } else { "bounds-checked" }
        );
        println!(
            "{:>8} {:>10} {:>10} {:>10} {:>10}",
            "samples", "wall ms", "p90 ms", "min ms", "GPU ms"
        );
    }
    let floor = bench::bench_round_trip(&gpu, runs.max(20), warmup).map_err(|e| e.to_string())?;
    if !json {
        println!(
            "{:>8} {:>10.3} {:>10.3} {:>10.3} {:>10}   (upload + 16-byte copy + read-back: the floor)",
            "floor",
            floor.median * 1e3,
            floor.p90 * 1e3,
            floor.min * 1e3,
            "-"
        );
    }
    for &k in &samples {
        // Nav2's control-cost weight: Williams et al.'s gamma = lambda swamps this task.
        let cfg = MppiConfig {
            horizon,
            samples: k,
            trusted,
            gamma: 0.015,
            ..MppiConfig::new(2)
        };
        let r = bench::bench_mppi(&gpu, diff_drive(), cfg, &params, &x0, runs, warmup)
            .map_err(|e| e.to_string())?;
        let g = r.gpu.as_ref().map(|g| g.median * 1e3);
        if json {
            println!(
                "{{\"samples\":{k},\"horizon\":{horizon},\"wall_median_s\":{:e},\"wall_p90_s\":{:e},\
                 \"gpu_median_s\":{},\"backend\":\"{:?}\",\"adapter\":\"{}\"}}",
                r.wall.median,
                r.wall.p90,
                r.gpu
                    .as_ref()
                    .map_or("null".into(), |g| format!("{:e}", g.median)),
                gpu.info().backend,
                gpu.info().name.replace('"', "'"),
            );
        } else {
            println!(
                "{:>8} {:>10.3} {:>10.3} {:>10.3} {:>10}",
                k,
                r.wall.median * 1e3,
                r.wall.p90 * 1e3,
                r.wall.min * 1e3,
                g.map_or("-".into(), |g| format!("{g:.3}"))
            );
        }
    }
    Ok(())
}

fn train(args: &[String]) -> Result<(), String> {
    use pompc::train::{Event, Method, ModelPreset, TrainConfig, Trainer};
    use std::io::Write;
    let (mut env_name, mut method, mut lambda) =
        ("pendulum-swingup".to_string(), "po-mpc".to_string(), None);
    let (mut steps, mut seeds, mut model, mut quick) = (100_000usize, vec![0u64], None, false);
    let (mut eval_every, mut eval_episodes, mut out) = (None, None, "runs".to_string());
    let (mut seed_steps, mut precision) = (None, None);
    let (mut ckpt_every, mut resume, mut time_limit, mut quiet) = (0usize, false, None, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--env" => env_name = val(a)?,
            "--method" => method = val(a)?,
            "--lambda" => lambda = Some(num::<f32>(a, &val(a)?)?),
            "--steps" => steps = num(a, &val(a)?)?,
            "--seed" | "--seeds" => {
                seeds = val(a)?
                    .split(',')
                    .map(|v| num::<u64>(a, v))
                    .collect::<Result<_, _>>()?
            }
            "--model" => model = Some(ModelPreset::parse(&val(a)?).map_err(|e| e.to_string())?),
            "--quick" => quick = true,
            "--eval-every" => eval_every = Some(num(a, &val(a)?)?),
            "--seed-steps" => seed_steps = Some(num(a, &val(a)?)?),
            "--eval-episodes" => eval_episodes = Some(num(a, &val(a)?)?),
            "--out" => out = val(a)?,
            "--checkpoint-every" => ckpt_every = num(a, &val(a)?)?,
            "--resume" => resume = true,
            "--time-limit" => {
                let t = num::<f64>(a, &val(a)?)?;
                if !(t.is_finite() && t >= 0.0) {
                    return Err(format!("--time-limit {t}: seconds, finite and >= 0"));
                }
                time_limit = Some(t)
            }
            "--quiet" => quiet = true,
            "--precision" => {
                precision = Some(Precision::parse(&val(a)?).map_err(|e| e.to_string())?)
            }
            _ => return Err(format!("unknown option {a:?}\n{USAGE}")),
        }
    }
    let method = Method::parse(&method, lambda).map_err(|e| e.to_string())?;
    if steps == 0 {
        return Err("--steps 0: nothing to train; give at least 1 step".into());
    }
    // Each seed writes its own files, named by the seed: a repeated seed would overwrite them.
    let mut sorted = seeds.clone();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!(
            "--seeds lists seed {} twice: each seed's run writes its own files",
            w[0]
        ));
    }
    pompc::env::make(&env_name).map_err(|e| e.to_string())?;
    let gpu = Gpu::new(GpuOptions::default()).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&out).map_err(|e| format!("--out {out}: {e}"))?;
    let multi = seeds.len() > 1;
    // One run; several seeds run in threads on the one device, each with its own files.
    let one = |seed: u64| -> Result<(), String> {
        let progress = !quiet && !multi;
        let env = pompc::env::make(&env_name).map_err(|e| e.to_string())?;
        let mut cfg = if quick {
            TrainConfig::quick(env.as_ref(), method, steps, seed)
        } else {
            TrainConfig::new(env.as_ref(), method, steps, seed)
        }
        .map_err(|e| e.to_string())?;
        if let Some(m) = model {
            cfg.model = m;
        }
        if let Some(e) = eval_every {
            cfg.eval_every = e;
        }
        if let Some(n) = seed_steps {
            cfg.seed_steps = n;
        }
        if let Some(e) = eval_episodes {
            cfg.eval_episodes = e;
        }
        if let Some(p) = precision {
            // auto: the device's default.
            cfg.planner_precision = p.unwrap_or(gpu.precision());
        }
        let stem = format!("{out}/{env_name}-{}-s{seed}", method.slug());
        let ckpt = format!("{stem}.ckpt.safetensors");
        let eval_env = pompc::env::make(&env_name).map_err(|e| e.to_string())?;
        let mut trainer = if resume {
            Trainer::resume(&gpu, env, eval_env, cfg, &ckpt)
        } else {
            Trainer::new(&gpu, env, eval_env, cfg)
        }
        .map_err(|e| e.to_string())?;
        eprintln!(
            "{} on {env_name}, {} steps, seed {seed}, from step {} | {}",
            method.label(),
            steps,
            trainer.step(),
            gpu.describe()
        );
        // The log is kept in memory and written whole (atomically) with each checkpoint, so
        // it always matches the checkpoint that a resumed run continues from.
        let csv_path = format!("{stem}.csv");
        let mut csv: Vec<u8> = match std::fs::read(&csv_path) {
            Ok(old) if resume => old,
            Err(e) if resume && e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("{csv_path}: {e}"));
            }
            _ => b"kind,step,episode,wall_s,return,consistency,reward_loss,value_loss,policy_loss,prior_fit,world_grad_norm,policy_grad_norm\n".to_vec(),
        };
        let mut saved = false;
        let t0 = std::time::Instant::now();
        let start = trainer.step();
        let (mut last_ret, mut last_eval) = (f32::NAN, f32::NAN);
        // When and at which step the loop of one update per step began (after pre-training).
        let mut loop_start: Option<(f64, usize)> = None;
        let cfg_seed_steps = trainer.config().seed_steps;
        let mut stop = false;
        while trainer.step() < steps && !stop {
            let chunk = match trainer.step().checked_div(ckpt_every) {
                Some(k) => ((k + 1) * ckpt_every).min(steps),
                None => steps,
            };
            let res = trainer.run(chunk, &mut |e: &Event| {
            let w = t0.elapsed().as_secs_f64();
            let line = match e {
                Event::Episode { step, episode, ret } => {
                    last_ret = *ret;
                    format!("train,{step},{episode},{w:.2},{ret},,,,,,,")
                }
                Event::Eval { step, mean, .. } => {
                    last_eval = *mean;
                    format!("eval,{step},,{w:.2},{mean},,,,,,,")
                }
                Event::Losses { step, world: l, policy, .. } => {
                    let p = policy.unwrap_or(pompc::train::PolicyLosses {
                        q: f32::NAN, entropy: f32::NAN, kl: f32::NAN, ll: f32::NAN,
                        total: f32::NAN, prior_fit: f32::NAN, grad_norm: f32::NAN,
                    });
                    format!(
                        "loss,{step},,{w:.2},,{},{},{},{},{},{},{}",
                        l.consistency, l.reward, l.value, p.total, p.prior_fit, l.grad_norm, p.grad_norm
                    )
                }
                Event::Pretrained { updates, seconds } => {
                    loop_start = Some((w, cfg_seed_steps));
                    if !quiet {
                        eprintln!("\rseed {seed}: {updates} pre-training updates in {seconds:.1} s");
                    }
                    return Ok(());
                }
            };
            writeln!(csv, "{line}").map_err(|e| pompc::Error::InvalidArgument(format!("{csv_path}: {e}")))?;
            // The progress line moves at episode ends and at each loss read-back (every
            // `log_every` updates), so long episodes still show progress.
            if let (Event::Episode { step, .. } | Event::Losses { step, .. }, true) = (e, progress) {
                let rate = (*step - start) as f64 / w.max(1e-9);
                let frac = *step as f64 / steps as f64;
                let bar = "#".repeat((frac * 30.0) as usize);
                eprint!(
                    "\r[{bar:<30}] {step}/{steps}  {rate:.0} steps/s  return {last_ret:.1}  eval {last_eval:.1}   "
                );
            }
            if let Event::Episode { step, .. } = e {
                if multi && !quiet {
                    eprintln!(
                        "seed {seed}: step {step}/{steps}  {:.0} steps/s  return {last_ret:.1}  eval {last_eval:.1}",
                        (*step - start) as f64 / w.max(1e-9)
                    );
                }
                if time_limit.is_some_and(|l| w > l) {
                    return Err(pompc::Error::InvalidArgument("time limit".into()));
                }
            }
            Ok(())
        });
            match res {
                Ok(()) => {}
                Err(pompc::Error::InvalidArgument(m)) if m == "time limit" => stop = true,
                Err(e) => return Err(e.to_string()),
            }
            trainer.save(&ckpt).map_err(|e| e.to_string())?;
            pompc::fs::write_atomic(&csv_path, &csv).map_err(|e| e.to_string())?;
            saved = true;
        }
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "\n{} steps in {secs:.1} s ({:.1} steps/s); {}{}",
            trainer.step() - start,
            (trainer.step() - start) as f64 / secs.max(1e-9),
            if saved {
                format!("checkpoint {ckpt}")
            } else {
                format!(
                    "no checkpoint written: the run was already at step {} of {steps}",
                    trainer.step()
                )
            },
            if stop {
                " (time limit: --resume continues)"
            } else {
                ""
            }
        );
        if let Some((t, s0)) = loop_start
            && trainer.step() > s0
        {
            eprintln!(
                "loop after pre-training: {} steps in {:.1} s ({:.1} steps/s, plan + update + \
             simulation + evaluations)",
                trainer.step() - s0,
                secs - t,
                (trainer.step() - s0) as f64 / (secs - t)
            );
        }
        let svg = format!("{stem}.svg");
        let chart = trainer.curve(&format!("{env_name}, {}, seed {seed}", method.label()));
        warn_non_finite(&chart, &svg);
        chart.save(&svg).map_err(|e| e.to_string())?;
        println!("log {csv_path}, curve {svg}");
        Ok(())
    };
    if !multi {
        return one(seeds[0]);
    }
    eprintln!("{} seeds in parallel on {}", seeds.len(), gpu.describe());
    std::thread::scope(|sc| {
        let runs: Vec<_> = seeds.iter().map(|&sd| sc.spawn(move || one(sd))).collect();
        runs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a run panicked".into())))
            .collect::<Result<Vec<()>, String>>()
    })?;
    Ok(())
}

/// Say which points of `chart` are left out of `file` for not being finite.
fn warn_non_finite(chart: &pompc::plot::Chart, file: &str) {
    for (series, n) in chart.non_finite() {
        eprintln!("warning: {file}: {n} non-finite points of {series:?} left out of the chart");
    }
}

fn num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{name}: cannot read {v:?}"))
}

fn plot(args: &[String]) -> Result<(), String> {
    use std::collections::BTreeMap;
    let (mut out, mut title, mut files, mut train) = (None, None, Vec::new(), false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--train" => train = true,
            "--out" => out = it.next().cloned(),
            "--title" => title = it.next().cloned(),
            f => files.push(f.to_string()),
        }
    }
    let out = out.ok_or("plot needs --out FILE.svg")?;
    if files.is_empty() {
        return Err("plot needs CSV files".into());
    }
    // Runs of one method (file name without -sSEED.csv) are pooled.
    let mut groups: BTreeMap<String, Vec<Vec<(usize, f64)>>> = BTreeMap::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}"))?;
        let kind = if train { "train," } else { "eval," };
        let mut evals: Vec<(usize, f64)> = text
            .lines()
            .filter(|l| l.starts_with(kind))
            .filter_map(|l| {
                let c: Vec<&str> = l.split(',').collect();
                Some((c.get(1)?.parse().ok()?, c.get(4)?.parse().ok()?))
            })
            .collect();
        if train {
            // Training returns are noisy: the mean of each run of 5 episodes, at its last step.
            evals = evals
                .chunks(5)
                .map(|c| {
                    (
                        c[c.len() - 1].0,
                        c.iter().map(|p| p.1).sum::<f64>() / c.len() as f64,
                    )
                })
                .collect();
        }
        let name = std::path::Path::new(f)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(f);
        let key = match name.rfind("-s") {
            Some(i) if name[i + 2..].chars().all(|c| c.is_ascii_digit()) => &name[..i],
            _ => name,
        };
        groups.entry(key.to_string()).or_default().push(evals);
    }
    let mut chart = pompc::plot::Chart::new(
        title.as_deref().unwrap_or("evaluation return"),
        "environment steps",
        if train {
            "training return (mean of 5 episodes)"
        } else {
            "evaluation return"
        },
    );
    for (name, runs) in &groups {
        let mut by_step: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        for r in runs {
            for &(s, v) in r {
                by_step.entry(s).or_default().push(v);
            }
        }
        let mean: Vec<(f64, f64)> = by_step
            .iter()
            .map(|(s, v)| (*s as f64, v.iter().sum::<f64>() / v.len() as f64))
            .collect();
        let band: Vec<(f64, f64, f64)> = by_step
            .iter()
            .map(|(s, v)| {
                (
                    *s as f64,
                    v.iter().cloned().fold(f64::INFINITY, f64::min),
                    v.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                )
            })
            .collect();
        // The task is in the title; the legend names the method.
        let method = pompc::env::NAMES
            .iter()
            .find_map(|e| name.strip_prefix(&format!("{e}-")))
            .unwrap_or(name);
        let label = match runs.len() {
            1 => method.to_string(),
            n => format!("{method} ({n} seeds)"),
        };
        chart.add(
            pompc::plot::Series::line(&label, mean).with_band(if runs.len() > 1 {
                band
            } else {
                Vec::new()
            }),
        );
    }
    // Returns of the built-in tasks lie in [0, 1000]: a fixed axis makes plots comparable.
    let ys = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1));
    if ys
        .clone()
        .all(|y| (0.0..=1000.0).contains(&y) || !y.is_finite())
    {
        chart.y_range = Some((0.0, 1000.0));
    }
    warn_non_finite(&chart, &out);
    chart.save(&out).map_err(|e| e.to_string())?;
    println!("{out}: {} curves from {} files", groups.len(), files.len());
    Ok(())
}
