//! `pompc bench`: the options of each benchmark, and its table or JSON rows. The timing
//! itself is `pompc::bench`'s.

use crate::Result;
use crate::output::{Report, gflops, ms, percent, step};
use clap::{Args, Subcommand, ValueEnum};
use pompc::bench::{self, Clock, LinearBench, Stats, Workload};
use pompc::kernels::gemm::{Gemm, GemmTile};
use pompc::kernels::gemm_coop::CoopTile;
use pompc::kernels::linear::{Activation, CoopPlan, LinearConfig, LinearKernel, LinearPlan, Tile};
use pompc::model::ModelSpec;
use pompc::planner::custom::MppiConfig;
use pompc::planner::problems::{DiffDriveScene, diff_drive};
use pompc::train::PolicyUpdateConfig;
use pompc::{Gpu, GpuOptions, Precision};
use serde::Serialize;

/// Options of `pompc bench`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: Option<Bench>,
    #[command(flatten)]
    all: AllArgs,
}

#[derive(Subcommand)]
enum Bench {
    /// Every kernel and end-to-end step in one table (the default; small models and sizes on
    /// CPU adapters such as lavapipe).
    All(AllArgs),
    /// The fused linear kernel.
    Linear(LinearArgs),
    /// Forward of each world-model network.
    Model(ModelArgs),
    /// TD-MPC2's plan step (5M preset, 512 samples, horizon 3).
    Plan(PlanArgs),
    /// The training GEMM at the world-model update's shapes and a 16-agent population's.
    Gemm(GemmArgs),
    /// TD-MPC2's world-model update (forward, backward, clip, Adam, Polyak).
    Update(UpdateArgs),
    /// The PO-MPC-family policy update (one submit).
    Policy(PolicyArgs),
    /// Classic MPPI, differential drive among obstacles (MPPI-Generic's scene).
    Mppi(MppiArgs),
}

/// Options every benchmark has.
#[derive(Args, Clone, Copy)]
struct Common {
    /// Timed runs per case (each bench has its own default)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    runs: Option<u32>,
    /// One JSON object per line instead of a table
    #[arg(long)]
    json: bool,
    /// No progress spinner (it is drawn only on a terminal anyway)
    #[arg(long)]
    quiet: bool,
}

impl Common {
    fn runs(&self, default: usize) -> usize {
        self.runs.map_or(default, |r| r as usize)
    }
}

/// The warm-up count of the end-to-end benchmarks (every bench also warms up for a second of
/// work on a GPU: `pompc::bench::WARMUP_SECONDS`).
#[derive(Args, Clone, Copy)]
struct Warmup {
    /// Untimed calls before timing
    #[arg(long, value_name = "N")]
    warmup: Option<usize>,
}

/// The reference for the "of peak" column.
#[derive(Args, Clone, Copy)]
struct Ceiling {
    /// fp32 ceiling in TFLOP/s for the fraction column (default: known cards; tensor-core rows
    /// are against the card's f16 tensor-core ceiling)
    #[arg(long = "ceiling-tflops", value_name = "X")]
    tflops: Option<f64>,
}

impl Ceiling {
    fn fp32(&self, gpu: &Gpu) -> Option<f64> {
        self.tflops
            .or_else(|| bench::known_fp32_ceiling_tflops(&gpu.info().name))
    }
}

/// A precision that a kernel runs at.
#[derive(ValueEnum, Clone, Copy, Debug)]
enum Prec {
    /// f32 storage and products
    F32,
    /// f16 storage, f32 products
    F16,
    /// f16 storage, tensor cores for large calls
    Coop,
}

impl From<Prec> for Precision {
    fn from(p: Prec) -> Self {
        match p {
            Prec::F32 => Precision::F32,
            Prec::F16 => Precision::F16,
            Prec::Coop => Precision::TensorCore,
        }
    }
}

/// A precision, or the device's own (`auto`).
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum AutoPrec {
    /// The device's: POMPC_PRECISION, or tensor cores where there are
    Auto,
    /// f32 storage and products
    F32,
    /// f16 storage, f32 products
    F16,
    /// f16 storage, tensor cores for large calls
    Coop,
}

impl AutoPrec {
    /// The precision on `gpu`.
    pub fn on(self, gpu: &Gpu) -> Precision {
        match self {
            AutoPrec::Auto => gpu.precision(),
            AutoPrec::F32 => Precision::F32,
            AutoPrec::F16 => Precision::F16,
            AutoPrec::Coop => Precision::TensorCore,
        }
    }
}

/// The activation of `--shape`'s layer.
#[derive(ValueEnum, Clone, Copy, Debug)]
enum Act {
    Identity,
    Mish,
    Simnorm,
}

/// TD-MPC2's world-model size and dimensions.
#[derive(Clone, Copy)]
struct Dims {
    size: u32,
    obs: usize,
    act: usize,
}

impl Dims {
    fn spec(&self) -> Result<ModelSpec> {
        Ok(ModelSpec::tdmpc2(self.size, self.obs, self.act)?)
    }
}

/// The `--size`, `--obs` and `--act` options with a bench's default dimensions. A macro per
/// set of defaults rather than one struct generic over them: clap keeps a `default_value_t`'s
/// text in a static, which all instances of a generic struct share, so every bench showed
/// and used the defaults of whichever was built first.
macro_rules! model_dims {
    ($name:ident, $obs:literal, $act:literal) => {
        /// TD-MPC2's world-model size and dimensions.
        #[derive(Args, Clone, Copy)]
        struct $name {
            /// TD-MPC2 preset in millions of parameters
            #[arg(long, default_value_t = 5, value_parser = model_size)]
            size: u32,
            /// Observation dimension
            #[arg(long, default_value_t = $obs)]
            obs: usize,
            /// Action dimension
            #[arg(long, default_value_t = $act)]
            act: usize,
        }

        impl $name {
            fn dims(&self) -> Dims {
                Dims {
                    size: self.size,
                    obs: self.obs,
                    act: self.act,
                }
            }
        }
    };
}
// The layer bench's defaults: a humanoid-sized encoder input.
model_dims!(LayerDims, 223, 38);
// The updates': pendulum-sized, as the trainer's tasks.
model_dims!(UpdateDims, 24, 6);

/// A TD-MPC2 preset size: 1, 5, 19, 48 or 317.
fn model_size(s: &str) -> std::result::Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if ModelSpec::tdmpc2(n, 1, 1).is_ok() => Ok(n),
        _ => Err("TD-MPC2's presets are 1, 5, 19, 48 and 317".into()),
    }
}

/// `MxNxK`: three positive integers joined by `x`, each at most 2^20.
fn parse_shape(s: &str) -> std::result::Result<(usize, usize, usize), String> {
    let parts: Vec<&str> = s.split('x').collect();
    if parts.len() != 3 {
        return Err(format!(
            "{} parts; MxNxK takes three sizes, e.g. 512x550x512",
            parts.len()
        ));
    }
    let mut dims = [0usize; 3];
    for (d, p) in dims.iter_mut().zip(&parts) {
        *d = p
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1 << 20).contains(n))
            .ok_or_else(|| format!("{p:?} is not a size from 1 to 1048576"))?;
    }
    Ok((dims[0], dims[1], dims[2]))
}

#[derive(Args)]
struct LinearArgs {
    /// Every tile and K-split, not only the heuristic's choice
    #[arg(long)]
    sweep: bool,
    /// Only cases whose name contains NAME
    #[arg(long = "case", value_name = "NAME")]
    only: Option<String>,
    /// A custom case M rows x N outputs x K inputs (plain; add --ln and --act)
    #[arg(long, value_name = "MxNxK", value_parser = parse_shape)]
    shape: Option<(usize, usize, usize)>,
    /// LayerNorm on the custom case
    #[arg(long, requires = "shape")]
    ln: bool,
    /// Activation of the custom case
    #[arg(long, value_enum, default_value_t = Act::Identity, requires = "shape")]
    act: Act,
    /// Precisions to time
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32")]
    precision: Vec<Prec>,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    ceiling: Ceiling,
}

#[derive(Args)]
struct ModelArgs {
    #[command(flatten)]
    dims: LayerDims,
    /// Rows per pass (default: the planner's 512 samples)
    #[arg(long, default_value_t = 512)]
    rows: usize,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    ceiling: Ceiling,
}

#[derive(Args)]
struct PlanArgs {
    /// Environments
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    batch: Vec<usize>,
    /// Action dimensions
    #[arg(long, value_delimiter = ',', default_value = "6,38")]
    act: Vec<usize>,
    /// Observation dimension
    #[arg(long, default_value_t = 24)]
    obs: usize,
    /// A population of this many agents (each its own weights), each with --batch
    /// environments, planned in one step; B then counts all agents' environments
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    agents: u32,
    /// World-model precisions (default: the device's, i.e. POMPC_PRECISION or automatic)
    #[arg(long, value_enum, value_delimiter = ',')]
    precision: Option<Vec<AutoPrec>>,
    /// Instead of timing: plan with the model at f32 and at each other precision of
    /// --precision (default f16 and coop where supported), same weights, observations and
    /// seeds, and print the max/mean |difference| of the planned mean, value and action
    #[arg(long, conflicts_with_all = ["profile", "agents"])]
    compare_precision: bool,
    /// Consecutive plan calls compared
    #[arg(long, default_value_t = 3, requires = "compare_precision")]
    calls: usize,
    /// Instead of timing: every dispatch timed on its own, summed per kernel and launch shape
    /// over min(runs, 10) steps (timestamp queries)
    #[arg(long, conflicts_with = "agents")]
    profile: bool,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    warmup: Warmup,
}

#[derive(Args)]
struct GemmArgs {
    /// Every tile, not only the heuristic's choice
    #[arg(long)]
    sweep: bool,
    /// Also the tensor-core GEMM (f16 products, f32 sums), every tile with --sweep
    #[arg(long)]
    coop: bool,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    ceiling: Ceiling,
}

/// The options `bench update` and `bench policy` share: the model, timing or profiling, runs
/// and warm-up.
#[derive(Args)]
struct UpdateRun {
    /// Instead of timing: every dispatch timed on its own, summed per kernel and launch shape
    /// over min(runs, 10) updates (timestamp queries)
    #[arg(long)]
    profile: bool,
    /// The updates' matrix products on tensor cores (f16 operands, gradients scaled into
    /// f16's range, f32 sums); default f32. Needs cooperative matrices
    #[arg(long)]
    tensor_cores: bool,
    #[command(flatten)]
    dims: UpdateDims,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    warmup: Warmup,
}

impl UpdateRun {
    /// The model, timed runs (default 20) and warm-up calls (default 5).
    fn spec_runs_warmup(&self) -> Result<(ModelSpec, usize, usize)> {
        let (runs, warmup) = (self.common.runs(20), self.warmup.warmup.unwrap_or(5));
        Ok((self.dims.dims().spec()?, runs, warmup))
    }
}

#[derive(Args)]
struct UpdateArgs {
    /// Sub-trajectories of horizon 3
    #[arg(long, value_delimiter = ',', default_value = "256")]
    batch: Vec<usize>,
    /// A population of this many agents (each with --batch sub-trajectories), all their
    /// updates in one submit; updates/s then counts submits
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096),
          conflicts_with = "profile")]
    agents: u32,
    #[command(flatten)]
    run: UpdateRun,
}

/// A policy-update preset.
#[derive(ValueEnum, Clone, Copy, Debug)]
enum Preset {
    Tdmpc2,
    Bmpc,
    TdmpcSquare,
    Pompc,
}

#[derive(Args)]
struct PolicyArgs {
    /// Presets to time
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "tdmpc2,bmpc,tdmpc-square,pompc"
    )]
    preset: Vec<Preset>,
    /// PO-MPC's lambda
    #[arg(long, default_value_t = 1.0)]
    lambda: f32,
    /// Sub-trajectories per update
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// A population of this many agents (each with --batch sub-trajectories), all their
    /// policy updates in one submit; updates/s then counts submits
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096),
          conflicts_with = "profile")]
    agents: u32,
    #[command(flatten)]
    run: UpdateRun,
}

#[derive(Args)]
struct MppiArgs {
    /// Samples
    #[arg(long, value_delimiter = ',', default_value = "128,1024,4096,16384")]
    samples: Vec<usize>,
    /// Horizon (dt 0.02, lambda 1, sigma 0.2)
    #[arg(long, default_value_t = 100)]
    horizon: usize,
    /// Keep bounds checks in the user WGSL (default: trusted)
    #[arg(long)]
    checked: bool,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    warmup: Warmup,
}

#[derive(Args)]
struct AllArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    ceiling: Ceiling,
}

/// Run the benchmark asked for.
pub fn run(args: BenchArgs) -> Result {
    let gpu = Gpu::new(GpuOptions::default())?;
    match args.what {
        None => all(&gpu, &args.all),
        Some(Bench::All(a)) => all(&gpu, &a),
        Some(Bench::Linear(a)) => linear(&gpu, &a),
        Some(Bench::Model(a)) => model(&gpu, &a),
        Some(Bench::Plan(a)) => plan(&gpu, &a),
        Some(Bench::Gemm(a)) => gemm(&gpu, &a),
        Some(Bench::Update(a)) => update(&gpu, &a),
        Some(Bench::Policy(a)) => policy(&gpu, &a),
        Some(Bench::Mppi(a)) => mppi(&gpu, &a),
    }
}

fn clock_name(c: Clock) -> &'static str {
    match c {
        Clock::Timestamps => "timestamps",
        Clock::Wall => "wall",
    }
}

#[derive(Serialize)]
struct LinearRow<'a> {
    kernel: &'a str,
    m: usize,
    n: usize,
    k: usize,
    tile: String,
    precision: &'static str,
    median_s: f64,
    p90_s: f64,
    gflops: f64,
    fraction: Option<f64>,
    clock: &'static str,
}

fn linear(gpu: &Gpu, a: &LinearArgs) -> Result {
    let out = Report::new(gpu, a.common.json);
    let runs = a.common.runs(50);
    let ceiling = a.ceiling.fp32(gpu);
    let tensor_ceiling = bench::known_tensor_ceiling_tflops(&gpu.info().name);
    out.header(&[
        format!(
            "fp32 ceiling: {}; tensor-core rows against {}",
            ceiling.map_or("unknown (pass --ceiling-tflops)".into(), |c| format!(
                "{c} TFLOP/s"
            )),
            tensor_ceiling.map_or("nothing (unknown card)".into(), |c| format!(
                "{c} TFLOP/s (f16)"
            ))
        ),
        format!(
            "{:<34} {:>15} {:>20} {:>10} {:>10} {:>10} {:>9} {:>7}",
            "kernel",
            "M x N x K",
            "tile/split",
            "median us",
            "p90 us",
            "min us",
            "GFLOP/s",
            "ceiling"
        ),
    ]);
    let mish = |k, n| LinearConfig::new(k, n).with_ln().with_act(Activation::Mish);
    let mut cases: Vec<(&str, LinearConfig, usize)> = vec![
        ("linear LN+Mish", mish(512, 550), 512),
        ("linear plain", LinearConfig::new(512, 550), 512),
        ("linear plain", LinearConfig::new(4096, 4096), 4096),
        ("linear LN+Mish (planner batch)", mish(512, 512), 16384),
    ];
    if let Some((m, n, k)) = a.shape {
        let mut cfg = LinearConfig::new(k, n).with_act(match a.act {
            Act::Identity => Activation::Identity,
            Act::Mish => Activation::Mish,
            Act::Simnorm => Activation::SimNorm,
        });
        cfg.layer_norm = a.ln;
        cases = vec![("linear custom", cfg, m)];
    }
    let print = |name: &str, r: &LinearBench| {
        // Tensor-core rows against the tensor-core ceiling, the others against the fp32 one.
        let c = match r.kernel {
            LinearKernel::TensorCore(_) => tensor_ceiling,
            LinearKernel::Alu(_) => ceiling,
        };
        let frac = c.map(|c| r.gflops / (c * 1e3));
        let row = LinearRow {
            kernel: name,
            m: r.m,
            n: r.cfg.n,
            k: r.cfg.k,
            tile: r.kernel.to_string(),
            precision: r.precision.name(),
            median_s: r.stats.median,
            p90_s: r.stats.p90,
            gflops: r.gflops,
            fraction: frac,
            clock: clock_name(r.stats.clock),
        };
        out.row(&row, || {
            format!(
                "{:<34} {:>15} {:>20} {:>10.1} {:>10.1} {:>10.1} {:>9} {:>7} {}",
                name,
                format!("{}x{}x{}", r.m, r.cfg.n, r.cfg.k),
                row.tile,
                r.stats.median * 1e6,
                r.stats.p90 * 1e6,
                r.stats.min * 1e6,
                gflops(r.gflops),
                percent(frac),
                row.clock
            )
        });
    };
    for (name, cfg, m) in cases {
        if a.only
            .as_ref()
            .is_some_and(|o| !format!("{name} {m}").contains(o.as_str()))
        {
            continue;
        }
        let mut plans = vec![None];
        if a.sweep {
            let mut tiles: Vec<Tile> = Vec::new();
            for t in Tile::ALL.iter().chain(&Tile::SWEEP) {
                if t.check(gpu).is_ok() && !tiles.contains(t) {
                    tiles.push(*t);
                }
            }
            for tile in tiles {
                for split in [1, 2, 4, 8] {
                    plans.push(Some(LinearPlan { tile, split }));
                }
            }
        }
        for precision in a.precision.iter().map(|&p| Precision::from(p)) {
            for plan in &plans {
                let what = format!("{name} {m} {}", precision.name());
                let r = step(a.common.quiet, &what, || {
                    bench::bench_linear(gpu, cfg, m, *plan, None, runs, precision)
                })?;
                let label = match plan {
                    None => format!("{name} {} [auto]", precision.name()),
                    Some(_) => format!("{name} {}", precision.name()),
                };
                print(&label, &r);
                if precision != Precision::TensorCore {
                    continue;
                }
                // The ALU tiles of a sweep do not apply to the tensor-core kernel: it sweeps
                // its own.
                if a.sweep
                    && let Ok(sg) = gpu.tensor_cores()
                {
                    for tile in CoopTile::ALL.iter().chain(&CoopTile::SWEEP) {
                        if tile.check(gpu, sg).is_err() {
                            continue;
                        }
                        for split in [1, 2] {
                            let coop = Some(CoopPlan { tile: *tile, split });
                            let r = step(a.common.quiet, &what, || {
                                bench::bench_linear(gpu, cfg, m, None, coop, runs, precision)
                            })?;
                            print(&label, &r);
                        }
                    }
                }
                break;
            }
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct NetRow<'a> {
    network: &'a str,
    rows: usize,
    flops: f64,
    median_s: f64,
    p90_s: f64,
    gflops: f64,
    fraction: Option<f64>,
    dispatches: usize,
}

fn model(gpu: &Gpu, a: &ModelArgs) -> Result {
    let spec = a.dims.dims().spec()?;
    let out = Report::new(gpu, a.common.json);
    let ceiling = a.ceiling.fp32(gpu);
    let res = step(a.common.quiet, "networks", || {
        bench::bench_model(gpu, &spec, a.rows, a.common.runs(30))
    })?;
    out.header(&[
        format!(
            "model: TD-MPC2 {}M preset, obs {}, action {}, {} parameters; {} rows",
            a.dims.size,
            a.dims.obs,
            a.dims.act,
            spec.param_count(),
            a.rows
        ),
        format!(
            "{:<22} {:>10} {:>10} {:>10} {:>9} {:>8} {:>10}",
            "network", "MFLOP", "median us", "p90 us", "GFLOP/s", "ceiling", "dispatches"
        ),
    ]);
    for r in res {
        let frac = ceiling.map(|c| r.gflops / (c * 1e3));
        let row = NetRow {
            network: &r.name,
            rows: r.rows,
            flops: r.flops,
            median_s: r.stats.median,
            p90_s: r.stats.p90,
            gflops: r.gflops,
            fraction: frac,
            dispatches: r.dispatches,
        };
        out.row(&row, || {
            format!(
                "{:<22} {:>10.1} {:>10.1} {:>10.1} {:>9} {:>8} {:>10}",
                r.name,
                r.flops * 1e-6,
                r.stats.median * 1e6,
                r.stats.p90 * 1e6,
                gflops(r.gflops),
                percent(frac),
                r.dispatches,
            )
        });
    }
    Ok(())
}

/// Timings of an end-to-end step in JSON: wall clock and, where timestamps exist, GPU time.
#[derive(Serialize)]
struct StepTimes {
    wall_median_s: f64,
    wall_p90_s: f64,
    gpu_median_s: Option<f64>,
}

impl StepTimes {
    fn new(wall: &Stats, gpu: &Option<Stats>) -> Self {
        StepTimes {
            wall_median_s: wall.median,
            wall_p90_s: wall.p90,
            gpu_median_s: gpu.as_ref().map(|g| g.median),
        }
    }
}

#[derive(Serialize)]
struct PlanRow {
    action_dim: usize,
    batch: usize,
    precision: &'static str,
    #[serde(flatten)]
    times: StepTimes,
    env_plans_per_s: f64,
    gflop: f64,
    tflops: f64,
    dispatches: usize,
}

fn plan(gpu: &Gpu, a: &PlanArgs) -> Result {
    let precisions: Option<Vec<Precision>> = a
        .precision
        .as_ref()
        .map(|v| v.iter().map(|p| p.on(gpu)).collect());
    if a.compare_precision {
        return compare_precision(gpu, a, precisions);
    }
    let precisions = precisions.unwrap_or_else(|| vec![gpu.precision()]);
    let runs = a.common.runs(30);
    let warmup = a.warmup.warmup.unwrap_or(5);
    if a.profile {
        return profile_plan(gpu, a, &precisions, runs, warmup);
    }
    let out = Report::new(gpu, a.common.json);
    out.header(&[
        format!(
            "TD-MPC2 5M preset, obs {}; planner: TD-MPC2 defaults (512 samples, 64 elites, 24 \
             policy trajectories, horizon 3){}",
            a.obs,
            if a.agents > 1 {
                format!(
                    "; a population of {} agents planned in one step (B: all their \
                     environments)",
                    a.agents
                )
            } else {
                String::new()
            }
        ),
        format!(
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
        ),
    ]);
    plan_cases(
        a,
        &precisions,
        "plan",
        |spec, b, precision| {
            let w = Workload {
                spec,
                batch: b,
                runs,
                warmup,
            };
            bench::bench_population_plan(gpu, w, precision, a.agents as usize)
        },
        |act, _, precision, r| {
            // All agents' environments.
            let b = r.batch;
            let row = PlanRow {
                action_dim: act,
                batch: b,
                precision: precision.name(),
                times: StepTimes::new(&r.wall, &r.gpu),
                env_plans_per_s: r.env_plans_per_second(),
                gflop: r.flops * 1e-9,
                tflops: r.flops / r.wall.median * 1e-12,
                dispatches: r.dispatches,
            };
            out.row(&row, || {
                format!(
                    "{:>4} {:>5} {:>5} {:>11.3} {:>11.3} {:>11} {:>13.1} {:>9.2} {:>9.2} {:>10}",
                    act,
                    row.precision,
                    b,
                    r.wall.median * 1e3,
                    r.wall.p90 * 1e3,
                    ms(row.times.gpu_median_s),
                    row.env_plans_per_s,
                    row.gflop,
                    row.tflops,
                    r.dispatches
                )
            });
        },
    )
}

/// Every case of `a` (action dimension, batch) at each of `precisions`, over TD-MPC2's 5M
/// preset for that action dimension: `bench` as a progress step named `{verb} A .. B ..
/// {precision}`, then `report` with its result.
fn plan_cases<R>(
    a: &PlanArgs,
    precisions: &[Precision],
    verb: &str,
    mut bench: impl FnMut(&ModelSpec, usize, Precision) -> pompc::Result<R>,
    mut report: impl FnMut(usize, usize, Precision, R),
) -> Result {
    for &act in &a.act {
        let spec = ModelSpec::tdmpc2(5, a.obs, act)?;
        for &b in &a.batch {
            for &p in precisions {
                let what = format!("{verb} A {act} B {b} {}", p.name());
                let r = step(a.common.quiet, &what, || bench(&spec, b, p))?;
                report(act, b, p, r);
            }
        }
    }
    Ok(())
}

/// `pompc bench plan --profile`: one table per case, kernels by GPU time.
fn profile_plan(
    gpu: &Gpu,
    a: &PlanArgs,
    precisions: &[Precision],
    runs: usize,
    warmup: usize,
) -> Result {
    println!("adapter: {}", gpu.describe());
    plan_cases(
        a,
        precisions,
        "profile",
        |spec, b, p| {
            bench::profile_plan(
                gpu,
                Workload {
                    spec,
                    batch: b,
                    runs: runs.min(10),
                    warmup,
                },
                p,
            )
        },
        |act, b, p, rows| {
            let what = format!("plan step, A {act}, B {b}, {}", p.name());
            print_profile(&what, "step", &rows);
        },
    )
}

/// One profile table: kernels and launch shapes by GPU time per `unit` (step, update).
fn print_profile(what: &str, unit: &str, rows: &[bench::PlanProfileRow]) {
    print!("\n{}", bench::profile_table(what, unit, rows));
}

#[derive(Serialize)]
struct CompareRow {
    precision: &'static str,
    action_dim: usize,
    batch: usize,
    calls: usize,
    mean_max: f64,
    mean_avg: f64,
    value_max: f64,
    value_avg: f64,
    value_scale: f64,
    action_max: f64,
    action_avg: f64,
    same_choice: f64,
}

/// `pompc bench plan --compare-precision`: plans at f32 and at each other precision.
fn compare_precision(gpu: &Gpu, a: &PlanArgs, precisions: Option<Vec<Precision>>) -> Result {
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
        )
        .into());
    }
    let out = Report::new(gpu, a.common.json);
    out.header(&[
        format!(
            "plans at each precision against f32: TD-MPC2 5M preset (random init, random reward \
             and Q heads), obs {}, TD-MPC2 planner, seed 1, {} consecutive calls",
            a.obs, a.calls
        ),
        format!(
            "{:>5} {:>4} {:>5} {:>21} {:>21} {:>21} {:>9} {:>7}",
            "prec",
            "A",
            "B",
            "mean |d| max / avg",
            "value |d| max / avg",
            "action |d| max / avg",
            "|value|",
            "same n"
        ),
    ]);
    plan_cases(
        a,
        &list,
        "compare",
        |spec, b, p| bench::compare_precision(gpu, spec, b, a.calls, p),
        |act, b, p, d| {
            let row = CompareRow {
                precision: p.name(),
                action_dim: act,
                batch: b,
                calls: d.calls,
                mean_max: d.mean_max,
                mean_avg: d.mean_avg,
                value_max: d.value_max,
                value_avg: d.value_avg,
                value_scale: d.value_scale,
                action_max: d.action_max,
                action_avg: d.action_avg,
                same_choice: d.same_choice,
            };
            out.row(&row, || {
                format!(
                    "{:>5} {:>4} {:>5} {:>10.2e} / {:>8.2e} {:>10.2e} / {:>8.2e} {:>10.2e} / \
                     {:>8.2e} {:>9.3} {:>6.1}%",
                    row.precision,
                    act,
                    b,
                    d.mean_max,
                    d.mean_avg,
                    d.value_max,
                    d.value_avg,
                    d.action_max,
                    d.action_avg,
                    d.value_scale,
                    100.0 * d.same_choice
                )
            });
        },
    )
}

#[derive(Serialize)]
struct GemmRow<'a> {
    case: &'a str,
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    tile: String,
    tensor_cores: bool,
    median_s: f64,
    p90_s: f64,
    tflops: f64,
    fraction: Option<f64>,
}

fn gemm(gpu: &Gpu, a: &GemmArgs) -> Result {
    let runs = a.common.runs(30);
    let ceiling = a.ceiling.fp32(gpu);
    let tensor_ceiling = bench::known_tensor_ceiling_tflops(&gpu.info().name);
    if a.coop
        && let Err(e) = gpu.tensor_cores()
    {
        return Err(format!("--coop: {e}").into());
    }
    // The 5M preset's update at B = 256, T = 3: 768 rows, 5 Q heads, width 512 (518 = 512 + 6).
    let nt = |m, n, k, batch| Gemm {
        trans_b: true,
        batch,
        ..Gemm::new(m, n, k)
    };
    let tn = |m, n, k, batch| Gemm {
        trans_a: true,
        accumulate: true,
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
        ("Q dW layer 1 (dY^T X)", tn(512, 512, 768, 5)),
        ("reward fwd layer 1", nt(768, 512, 512, 1)),
        ("dynamics fwd layer 1", nt(256, 512, 512, 1)),
        ("dynamics dW layer 1", tn(512, 512, 256, 1)),
        // A 16-agent population of the 1M preset (issue 21): its hidden layers, its Q heads
        // (2 per agent) and a weight gradient.
        ("16 agents 1M fwd", nt(256, 384, 384, 16)),
        ("16 agents 1M Q fwd", nt(768, 384, 384, 32)),
        ("16 agents 1M dW", tn(384, 384, 256, 16)),
        ("4096^3 x W^T", nt(4096, 4096, 4096, 1)),
        ("4096^3 A B", Gemm::new(4096, 4096, 4096)),
        ("512^3 A B", Gemm::new(512, 512, 512)),
        ("planner 131072x512x512", nt(131072, 512, 512, 1)),
    ];
    let out = Report::new(gpu, a.common.json);
    out.header(&[format!(
        "{:<24} {:>18} {:>20} {:>10} {:>10} {:>9} {:>8}",
        "case", "m x n x k x batch", "tile", "median us", "p90 us", "TFLOP/s", "of peak"
    )]);
    let print = |name: &str, op: &Gemm, tile: String, t: &Stats, tensor: bool| {
        let tf = op.flops() / t.median * 1e-12;
        let c = if tensor { tensor_ceiling } else { ceiling };
        let row = GemmRow {
            case: name,
            m: op.m,
            n: op.n,
            k: op.k,
            batch: op.batch,
            tile,
            tensor_cores: tensor,
            median_s: t.median,
            p90_s: t.p90,
            tflops: tf,
            fraction: c.map(|c| tf / c),
        };
        out.row(&row, || {
            let label = if tensor {
                format!("{name} [tc]")
            } else {
                name.to_string()
            };
            format!(
                "{:<24} {:>18} {:>20} {:>10.1} {:>10.1} {:>9.2} {:>8}",
                label,
                format!("{}x{}x{}x{}", op.m, op.n, op.k, op.batch),
                row.tile,
                t.median * 1e6,
                t.p90 * 1e6,
                tf,
                percent(row.fraction)
            )
        });
    };
    for (name, op) in cases {
        let tiles: Vec<Option<GemmTile>> = if a.sweep {
            GemmTile::ALL.iter().map(|t| Some(*t)).collect()
        } else {
            vec![None]
        };
        for tile in tiles {
            let r = step(a.common.quiet, name, || {
                bench::bench_gemm(gpu, op, tile, runs)
            })?;
            let t = r.tile;
            // bm x bn x bk / tm x tn / K groups.
            let tile = format!("{}x{}x{}/{}x{}/k{}", t.bm, t.bn, t.bk, t.tm, t.tn, t.ks);
            print(name, &op, tile, &r.time, false);
        }
        if !a.coop {
            continue;
        }
        let tiles: Vec<Option<CoopTile>> = if a.sweep {
            CoopTile::ALL
                .iter()
                .chain(&CoopTile::SWEEP)
                .map(|t| Some(*t))
                .collect()
        } else {
            vec![None]
        };
        for tile in tiles {
            match step(a.common.quiet, name, || {
                bench::bench_gemm_coop(gpu, op, tile, runs)
            }) {
                Ok((t, time)) => print(name, &op, t.to_string(), &time, true),
                // A tile the device cannot run is a line of the table, not the end of it.
                Err(e) if !a.common.json => println!("{name:<24} tensor cores {tile:?}: {e}"),
                Err(e) => eprintln!("{name}: tensor cores {tile:?}: {e}"),
            }
        }
    }
    Ok(())
}

/// A world-model or policy update's row: times, rate and work.
#[derive(Serialize)]
struct UpdateRow<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    preset: Option<&'a str>,
    /// Agents whose updates one submit ran (absent for one).
    #[serde(skip_serializing_if = "Option::is_none")]
    agents: Option<usize>,
    batch: usize,
    size: u32,
    obs: usize,
    act: usize,
    #[serde(flatten)]
    times: StepTimes,
    flops: f64,
    dispatches: usize,
}

impl<'a> UpdateRow<'a> {
    fn new(preset: Option<&'a str>, batch: usize, dims: Dims, r: &bench::UpdateBench) -> Self {
        UpdateRow {
            preset,
            agents: None,
            batch,
            size: dims.size,
            obs: dims.obs,
            act: dims.act,
            times: StepTimes::new(&r.wall, &r.gpu),
            flops: r.flops,
            dispatches: r.dispatches,
        }
    }
}

/// The table line of an update: first column, wall, p90, GPU ms, updates/s, GFLOP, TFLOP/s,
/// dispatches.
fn update_line(first: String, r: &bench::UpdateBench) -> String {
    format!(
        "{first} {:>10.3} {:>10.3} {:>10} {:>11.1} {:>8.2} {:>9.2} {:>10}",
        r.wall.median * 1e3,
        r.wall.p90 * 1e3,
        ms(r.gpu.as_ref().map(|g| g.median)),
        1.0 / r.wall.median,
        r.flops * 1e-9,
        r.flops / r.wall.median * 1e-12,
        r.dispatches
    )
}

const UPDATE_COLUMNS: [&str; 7] = [
    "wall ms",
    "p90 ms",
    "GPU ms",
    "updates/s",
    "GFLOP",
    "TFLOP/s",
    "dispatches",
];

fn update_header(first: String) -> String {
    let c = UPDATE_COLUMNS;
    format!(
        "{first} {:>10} {:>10} {:>10} {:>11} {:>8} {:>9} {:>10}",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6]
    )
}

/// Where the updates' products run, for the table's header.
fn products(run: &UpdateRun) -> &'static str {
    if run.tensor_cores {
        "on tensor cores (f16, scaled gradients)"
    } else {
        "f32"
    }
}

/// TD-MPC2's world-model update, its products where `--tensor-cores` puts them.
fn update_config(run: &UpdateRun) -> pompc::train::UpdateConfig {
    pompc::train::UpdateConfig {
        tensor_cores: run.tensor_cores,
        ..pompc::train::UpdateConfig::tdmpc2()
    }
}

fn update(gpu: &Gpu, a: &UpdateArgs) -> Result {
    let (spec, runs, warmup) = a.run.spec_runs_warmup()?;
    let dims = a.run.dims.dims();
    if a.run.profile {
        println!("adapter: {}", gpu.describe());
        for &b in &a.batch {
            let rows = step(a.run.common.quiet, &format!("profile update B {b}"), || {
                bench::profile_update_with(
                    gpu,
                    Workload {
                        spec: &spec,
                        batch: b,
                        runs: runs.min(10),
                        warmup,
                    },
                    &update_config(&a.run),
                )
            })?;
            let what = format!("world-model update, {}M, batch {b}", dims.size);
            print_profile(&what, "update", &rows);
        }
        return Ok(());
    }
    let out = Report::new(gpu, a.run.common.json);
    out.header(&[
        format!(
            "TD-MPC2 {}M preset, obs {}, action {}; world-model update, horizon 3 (TD targets, \
             rollout, losses, backward, clip 20, Adam, Polyak), one submit{}; products {}",
            dims.size,
            dims.obs,
            dims.act,
            if a.agents > 1 {
                format!(" for all of {} agents", a.agents)
            } else {
                String::new()
            },
            products(&a.run)
        ),
        update_header(format!("{:>5}", "B")),
    ]);
    for &b in &a.batch {
        let r = step(a.run.common.quiet, &format!("update B {b}"), || {
            let w = Workload {
                spec: &spec,
                batch: b,
                runs,
                warmup,
            };
            bench::bench_update_with(gpu, w, &update_config(&a.run), a.agents as usize)
        })?;
        let row = UpdateRow {
            agents: (a.agents > 1).then_some(a.agents as usize),
            ..UpdateRow::new(None, b, dims, &r)
        };
        out.row(&row, || update_line(format!("{b:>5}"), &r));
    }
    Ok(())
}

fn policy(gpu: &Gpu, a: &PolicyArgs) -> Result {
    let (spec, runs, warmup) = a.run.spec_runs_warmup()?;
    let dims = a.run.dims.dims();
    let act = dims.act;
    let out = Report::new(gpu, a.run.common.json);
    if a.run.profile {
        println!("adapter: {}", gpu.describe());
    } else {
        out.header(&[
            format!(
                "TD-MPC2 {}M preset, action {act}, batch {}; one policy update per submit{}; \
                 products {}",
                dims.size,
                a.batch,
                if a.agents > 1 {
                    format!(" for all of {} agents", a.agents)
                } else {
                    String::new()
                },
                products(&a.run)
            ),
            update_header(format!("{:<14}", "preset")),
        ]);
    }
    for &p in &a.preset {
        let cfg = match p {
            Preset::Tdmpc2 => PolicyUpdateConfig::tdmpc2(act),
            Preset::Bmpc => PolicyUpdateConfig::bmpc(act),
            Preset::TdmpcSquare => PolicyUpdateConfig::tdmpc_square(act),
            Preset::Pompc => PolicyUpdateConfig::pompc(act, a.lambda),
        };
        let cfg = PolicyUpdateConfig {
            tensor_cores: a.run.tensor_cores,
            ..cfg
        };
        let name = p
            .to_possible_value()
            .expect("presets have names")
            .get_name()
            .to_string();
        if a.run.profile {
            let rows = step(a.run.common.quiet, &format!("profile {name}"), || {
                bench::profile_policy(
                    gpu,
                    Workload {
                        spec: &spec,
                        batch: a.batch,
                        runs: runs.min(10),
                        warmup,
                    },
                    cfg,
                )
            })?;
            let what = format!("{name} policy update, {}M, batch {}", dims.size, a.batch);
            print_profile(&what, "update", &rows);
            continue;
        }
        let r = step(a.run.common.quiet, &name, || {
            bench::bench_population_policy(
                gpu,
                Workload {
                    spec: &spec,
                    batch: a.batch,
                    runs,
                    warmup,
                },
                cfg,
                a.agents as usize,
            )
        })?;
        let row = UpdateRow {
            agents: (a.agents > 1).then_some(a.agents as usize),
            ..UpdateRow::new(Some(&name), a.batch, dims, &r)
        };
        out.row(&row, || update_line(format!("{name:<14}"), &r));
    }
    Ok(())
}

#[derive(Serialize)]
struct MppiRow {
    samples: usize,
    horizon: usize,
    #[serde(flatten)]
    times: StepTimes,
    min_s: f64,
}

fn mppi(gpu: &Gpu, a: &MppiArgs) -> Result {
    let scene = DiffDriveScene::benchmark();
    let params = scene.params()?;
    let x0 = scene.start.map(|v| v as f32);
    let (runs, warmup) = (a.common.runs(50), a.warmup.warmup.unwrap_or(10));
    let out = Report::new(gpu, a.common.json);
    out.header(&[
        format!(
            "differential drive (DiffDriveScene::benchmark), horizon {}, dt 0.02, lambda 1, \
             sigma 0.2, gamma 0.015, {} user WGSL; one step = rollout + weights + update + \
             read-back of the first control",
            a.horizon,
            if a.checked {
                "bounds-checked"
            } else {
                "trusted"
            }
        ),
        format!(
            "{:>8} {:>10} {:>10} {:>10} {:>10}",
            "samples", "wall ms", "p90 ms", "min ms", "GPU ms"
        ),
    ]);
    let floor = step(a.common.quiet, "round trip", || {
        bench::bench_round_trip(gpu, runs.max(20), warmup)
    })?;
    if !out.json() {
        println!(
            "{:>8} {:>10.3} {:>10.3} {:>10.3} {:>10}   (upload + 16-byte copy + read-back: the floor)",
            "floor",
            floor.median * 1e3,
            floor.p90 * 1e3,
            floor.min * 1e3,
            "-"
        );
    }
    for &k in &a.samples {
        // Nav2's control-cost weight: Williams et al.'s gamma = lambda swamps this task.
        let cfg = MppiConfig {
            horizon: a.horizon,
            samples: k,
            trusted: !a.checked,
            gamma: 0.015,
            ..MppiConfig::new(2)
        };
        let r = step(a.common.quiet, &format!("MPPI K {k}"), || {
            bench::bench_mppi(gpu, diff_drive(), cfg, &params, &x0, runs, warmup)
        })?;
        let row = MppiRow {
            samples: k,
            horizon: a.horizon,
            times: StepTimes::new(&r.wall, &r.gpu),
            min_s: r.wall.min,
        };
        out.row(&row, || {
            format!(
                "{:>8} {:>10.3} {:>10.3} {:>10.3} {:>10}",
                k,
                r.wall.median * 1e3,
                r.wall.p90 * 1e3,
                r.wall.min * 1e3,
                ms(row.times.gpu_median_s)
            )
        });
    }
    Ok(())
}

/// One row of `pompc bench`.
#[derive(Serialize)]
struct AllRow {
    case: String,
    sizes: String,
    median_s: f64,
    p90_s: f64,
    clock: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    gflop_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gb_per_s: Option<f64>,
    /// Ran on tensor cores: "of peak" is against the tensor-core ceiling.
    #[serde(skip)]
    tensor: bool,
}

impl AllRow {
    /// A row of `work` floating-point operations (none: no throughput).
    fn flops(case: String, sizes: String, st: &Stats, work: f64) -> Self {
        AllRow {
            case,
            sizes,
            median_s: st.median,
            p90_s: st.p90,
            clock: match st.clock {
                Clock::Timestamps => "gpu",
                Clock::Wall => "wall",
            },
            gflop_per_s: (work > 0.0).then(|| work / st.median * 1e-9),
            gb_per_s: None,
            tensor: false,
        }
    }
}

fn all(gpu: &Gpu, a: &AllArgs) -> Result {
    let q = a.common.quiet;
    let ceiling = a.ceiling.fp32(gpu);
    let cpu = gpu.info().device_type == wgpu::DeviceType::Cpu;
    // CPU adapters: 2 end-to-end runs unless asked for more (a plan step takes 0.2-0.7 s there).
    let runs_e2e = a.common.runs(if cpu { 2 } else { 20 });
    let runs = a.common.runs(20);
    let warm = if cpu { 1 } else { 5 };
    let mut rows: Vec<AllRow> = Vec::new();
    // The world model's rows run at the device's precision (tensor cores where they are).
    let prec = gpu.precision();
    let model_row = |case: &str, sizes: String, st: &Stats, work: f64| AllRow {
        tensor: prec == Precision::TensorCore,
        ..AllRow::flops(format!("{case} [{}]", prec.name()), sizes, st, work)
    };
    // Kernels.
    let lin = LinearConfig::new(550, 512)
        .with_ln()
        .with_act(Activation::Mish);
    let m = if cpu { 128 } else { 512 };
    let r = step(q, "linear", || {
        bench::bench_linear(gpu, lin, m, None, None, runs, Precision::F32)
    })?;
    rows.push(AllRow::flops(
        "linear (LayerNorm, Mish)".into(),
        format!("{m}x550->512"),
        &r.stats,
        lin.flops(m),
    ));
    let heads = Gemm {
        trans_b: true,
        batch: 5,
        ..Gemm::new(if cpu { 96 } else { 768 }, 512, 518)
    };
    let big = if cpu { 512 } else { 4096 };
    let square = Gemm {
        trans_b: true,
        ..Gemm::new(big, big, big)
    };
    for (case, sizes, op) in [
        (
            "gemm (x W^T, 5 heads)",
            format!("{}x512x518x5", heads.m),
            heads,
        ),
        ("gemm (x W^T)", format!("{big}^3"), square),
    ] {
        let r = step(q, case, || bench::bench_gemm(gpu, op, None, runs))?;
        rows.push(AllRow::flops(case.into(), sizes, &r.time, op.flops()));
    }
    let spec5 = ModelSpec::tdmpc2(5, 24, 6)?;
    let net_rows = if cpu { 32 } else { 512 };
    let nets = step(q, "networks", || {
        bench::bench_model(gpu, &spec5, net_rows, runs)
    })?;
    for n in nets {
        rows.push(model_row(
            &format!("5M {} forward", n.name),
            format!("{net_rows} rows"),
            &n.stats,
            n.flops,
        ));
    }
    let params = spec5.param_count();
    let st = step(q, "Adam", || bench::bench_adam(gpu, params, runs))?;
    rows.push(AllRow {
        gb_per_s: Some(32.0 * params as f64 / st.median * 1e-9),
        ..AllRow::flops(
            "Adam + clip (5M params)".into(),
            format!("{params}"),
            &st,
            0.0,
        )
    });
    // End to end: the 5M preset on GPUs, the tiny one on CPU adapters.
    let (spec, tag) = if cpu {
        (ModelSpec::tiny(24, 6), "tiny")
    } else {
        (spec5.clone(), "5M")
    };
    // Wall and GPU rows of an end-to-end step (GPU falls back to wall without timestamps).
    let both = |rows: &mut Vec<AllRow>, case: &str, sizes: String, r: &bench::UpdateBench| {
        let g = r.gpu.clone().unwrap_or_else(|| r.wall.clone());
        rows.push(AllRow::flops(
            format!("{case}, wall"),
            sizes.clone(),
            &r.wall,
            r.flops,
        ));
        rows.push(AllRow::flops(format!("{case}, GPU"), sizes, &g, r.flops));
    };
    for b in if cpu { vec![1, 4] } else { vec![1, 16, 256] } {
        let r = step(q, &format!("plan B {b}"), || {
            bench::bench_plan(
                gpu,
                Workload {
                    spec: &spec,
                    batch: b,
                    runs: runs_e2e,
                    warmup: warm,
                },
                gpu.precision(),
            )
        })?;
        let g = r.gpu.clone().unwrap_or_else(|| r.wall.clone());
        let case = format!("plan step ({tag})");
        rows.push(model_row(
            &format!("{case}, wall"),
            format!("B={b}"),
            &r.wall,
            r.flops,
        ));
        rows.push(model_row(
            &format!("{case}, GPU"),
            format!("B={b}"),
            &g,
            r.flops,
        ));
    }
    let ub = if cpu { 16 } else { 256 };
    // Both updates' workload.
    let update = Workload {
        spec: &spec,
        batch: ub,
        runs: runs_e2e,
        warmup: warm,
    };
    let r = step(q, "world-model update", || bench::bench_update(gpu, update))?;
    both(
        &mut rows,
        &format!("world-model update ({tag})"),
        format!("B={ub} T=3"),
        &r,
    );
    let cfg = PolicyUpdateConfig::pompc(spec.action_dim, 1.0);
    let r = step(q, "policy update", || bench::bench_policy(gpu, update, cfg))?;
    both(
        &mut rows,
        &format!("PO-MPC policy update ({tag})"),
        format!("B={ub} T'=3"),
        &r,
    );
    let scene = DiffDriveScene::benchmark();
    let p = scene.params()?;
    let x0 = scene.start.map(|v| v as f32);
    for k in if cpu { vec![128] } else { vec![128, 16384] } {
        let cfg = MppiConfig {
            horizon: 100,
            samples: k,
            trusted: true,
            gamma: 0.015,
            ..MppiConfig::new(2)
        };
        let r = step(q, &format!("MPPI K {k}"), || {
            bench::bench_mppi(gpu, diff_drive(), cfg, &p, &x0, runs_e2e.max(10), warm)
        })?;
        rows.push(AllRow::flops(
            "classic MPPI step, wall".into(),
            format!("K={k} H=100"),
            &r.wall,
            0.0,
        ));
    }
    let tensor_ceiling = bench::known_tensor_ceiling_tflops(&gpu.info().name);
    let out = Report::new(gpu, a.common.json);
    out.header(&[format!(
        "{:<36} {:>16} {:>10} {:>10} {:>6} {:>14} {:>8}",
        "case", "sizes", "median ms", "p90 ms", "clock", "throughput", "of peak"
    )]);
    for r in &rows {
        out.row(r, || {
            let thr = match (r.gflop_per_s, r.gb_per_s) {
                (_, Some(g)) => format!("{g:.1} GB/s"),
                (Some(g), None) => format!("{g:.1} GFLOP/s"),
                (None, None) => "-".to_string(),
            };
            let c = if r.tensor { tensor_ceiling } else { ceiling };
            let peak = percent(r.gflop_per_s.zip(c).map(|(g, c)| g / (c * 1e3)));
            format!(
                "{:<36} {:>16} {:>10.3} {:>10.3} {:>6} {:>14} {:>8}",
                r.case,
                r.sizes,
                r.median_s * 1e3,
                r.p90_s * 1e3,
                r.clock,
                thr,
                peak
            )
        });
    }
    Ok(())
}
