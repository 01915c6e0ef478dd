//! Timing helpers shared by `pompc bench`, the criterion benches and the quickstart:
//! timestamp queries where the adapter has them, a fenced wall clock otherwise.

use crate::Result;
use crate::gpu::{Gpu, GpuBuffer, Precision, Recorder};
use crate::kernels::linear::{Linear, LinearConfig, LinearInputs, LinearKernel, LinearPlan};
use rand::{Rng, SeedableRng};

/// How a time was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// GPU timestamp queries around the pass.
    Timestamps,
    /// Host wall clock from submit to completion (includes submit and fence latency).
    Wall,
}

/// Summary of repeated timings.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Median seconds per run.
    pub median: f64,
    /// 90th percentile seconds per run.
    pub p90: f64,
    /// Fastest run.
    pub min: f64,
    /// How the times were taken.
    pub clock: Clock,
    /// Runs measured (after warm-up).
    pub runs: usize,
}

impl Stats {
    /// Summarize samples (seconds); at least one is needed.
    pub fn from_samples(mut s: Vec<f64>, clock: Clock) -> Stats {
        if s.is_empty() {
            s.push(f64::NAN);
        }
        s.sort_by(f64::total_cmp);
        let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
        Stats {
            median: at(0.5),
            p90: at(0.9),
            min: s[0],
            clock,
            runs: s.len(),
        }
    }
}

/// Time `record` (which records one unit of work). Each timed run is one submit holding
/// enough back-to-back copies of the unit to last about `target_s` (at least one), so the GPU
/// stays busy and its clocks up, as in a plan step that chains many layers; the time per unit
/// is the run's time divided by the copies. About `warmup_s` of untimed work comes first.
pub fn time_submits(
    gpu: &Gpu,
    runs: usize,
    target_s: f64,
    warmup_s: f64,
    mut record: impl FnMut(&mut Recorder) -> Result<()>,
) -> Result<Stats> {
    let mut run = |copies: usize| -> Result<(f64, Clock)> {
        let mut rec = Recorder::new(gpu).with_timestamps();
        for _ in 0..copies {
            record(&mut rec)?;
        }
        let t = rec.finish()?.timing;
        Ok(match t.gpu_seconds {
            Some(s) if s > 0.0 => (s / copies as f64, Clock::Timestamps),
            _ => (t.wall_seconds / copies as f64, Clock::Wall),
        })
    };
    let (first, _) = run(1)?;
    let copies = ((target_s / first.max(1e-7)).ceil() as usize).clamp(1, 2000);
    let start = std::time::Instant::now();
    while start.elapsed().as_secs_f64() < warmup_s {
        run(copies)?;
    }
    let mut samples = Vec::with_capacity(runs);
    let mut clock = Clock::Wall;
    for _ in 0..runs.max(1) {
        let (s, c) = run(copies)?;
        samples.push(s);
        clock = c;
    }
    Ok(Stats::from_samples(samples, clock))
}

/// Seconds of untimed work every benchmark runs first on a GPU (besides its warm-up count): a
/// cold card runs its first passes slowly (on the H100 the first B = 1 plan pass took 12.0 ms
/// where the second took 3.46), and a count alone does not bring clocks up on a fast step.
pub const WARMUP_SECONDS: f64 = 1.0;

/// Run `step` at least `count` times and, on a GPU (not a CPU adapter such as lavapipe, where
/// there are no clocks to raise and time is scarce), until [`WARMUP_SECONDS`] have passed.
pub fn warm_up(gpu: &Gpu, count: usize, mut step: impl FnMut() -> Result<()>) -> Result<()> {
    let cpu = gpu.info().device_type == wgpu::DeviceType::Cpu;
    let t0 = std::time::Instant::now();
    let mut done = 0;
    while done < count.max(1) || (!cpu && t0.elapsed().as_secs_f64() < WARMUP_SECONDS) {
        step()?;
        done += 1;
    }
    Ok(())
}

/// Datasheet ceilings of well-known cards in TFLOP/s: the name's keys (all must occur in the
/// adapter name, case-insensitive; the first matching row counts), fp32, and dense f16 tensor
/// cores (f16 products, f32 accumulation, without sparsity).
const CARD_CEILINGS: &[(&[&str], f64, f64)] = &[
    (&["h100", "pcie"], 51.2, 756.0),
    (&["h100"], 66.9, 989.4),
    (&["h200"], 66.9, 989.4),
    (&["a100"], 19.5, 312.0),
    (&["l40s"], 91.6, 362.1),
    (&["rtx 4090"], 82.6, 165.2),
    (&["rtx 3090"], 35.6, 71.0),
];

/// The first row of [`CARD_CEILINGS`] whose keys all occur in the adapter name.
fn card_ceilings(adapter: &str) -> Option<(f64, f64)> {
    let a = adapter.to_lowercase();
    CARD_CEILINGS
        .iter()
        .find(|(keys, _, _)| keys.iter().all(|k| a.contains(k)))
        .map(|&(_, fp32, tensor)| (fp32, tensor))
}

/// The fp32 ceiling of well-known cards in TFLOP/s (datasheet), by adapter name.
pub fn known_fp32_ceiling_tflops(adapter: &str) -> Option<f64> {
    card_ceilings(adapter).map(|c| c.0)
}

/// The dense f16 tensor-core ceiling (f16 products, f32 accumulation) of well-known cards in
/// TFLOP/s (datasheet, without sparsity), by adapter name: the reference for
/// [`Precision::TensorCore`] rows.
pub fn known_tensor_ceiling_tflops(adapter: &str) -> Option<f64> {
    card_ceilings(adapter).map(|c| c.1)
}

/// One benchmarked linear layer.
#[derive(Clone, Debug)]
pub struct LinearBench {
    /// Layer shape and options.
    pub cfg: LinearConfig,
    /// Rows.
    pub m: usize,
    /// Tile and split used by the ALU kernel (the heuristic's, when tensor cores ran).
    pub plan: LinearPlan,
    /// The kernel that ran.
    pub kernel: LinearKernel,
    /// Precision: storage of Z, W, Y (f16 unless f32) and kernel choice.
    pub precision: Precision,
    /// Times.
    pub stats: Stats,
    /// Median throughput.
    pub gflops: f64,
}

/// Benchmark one linear layer on random inputs at `precision`: at f16 and on tensor cores Z,
/// W and Y are f16 buffers, as in the world model's hidden layers. `plan` forces the ALU
/// kernel's tile (ignored where tensor cores run), `coop` the tensor-core tile and split (used
/// at [`Precision::TensorCore`] only).
pub fn bench_linear(
    gpu: &Gpu,
    cfg: LinearConfig,
    m: usize,
    plan: Option<LinearPlan>,
    coop: Option<crate::kernels::linear::CoopPlan>,
    runs: usize,
    precision: Precision,
) -> Result<LinearBench> {
    let mut r = rand::rngs::StdRng::seed_from_u64(7);
    let mut rand_vec =
        |n: usize| -> Vec<f32> { (0..n).map(|_| r.random_range(-1.0..1.0)).collect() };
    let e = cfg.members;
    let ins = if cfg.shared_input { 1 } else { e };
    let ops = LinearOperands {
        z: rand_vec(ins * m * cfg.k1),
        a: GpuBuffer::from_slice(gpu, "a", &rand_vec(ins * m * (cfg.k - cfg.k1).max(1)))?,
        w: rand_vec(e * cfg.n * cfg.k),
        b: GpuBuffer::from_slice(gpu, "b", &rand_vec(e * cfg.n))?,
        gamma: GpuBuffer::from_slice(gpu, "gamma", &rand_vec(e * cfg.n))?,
        beta: GpuBuffer::from_slice(gpu, "beta", &rand_vec(e * cfg.n))?,
    };
    let layer = Linear::new(gpu, cfg)?
        .with_precision(gpu, precision)?
        .with_plan(plan)
        .with_coop_plan(coop);
    let stats = if precision.f16_storage() {
        time_linear(gpu, &layer, (cfg, m, runs), &ops, half::f16::from_f32)?
    } else {
        time_linear(gpu, &layer, (cfg, m, runs), &ops, |x| x)?
    };
    Ok(LinearBench {
        cfg,
        m,
        plan: layer.plan_on(gpu, m),
        kernel: layer.kernel_on(gpu, m, e),
        precision,
        gflops: cfg.flops(m) / stats.median * 1e-9,
        stats,
    })
}

/// A linear layer's random benchmark operands: Z and W on the host (uploaded at the precision
/// timed), the f32 ones on the GPU.
struct LinearOperands {
    z: Vec<f32>,
    a: GpuBuffer<f32>,
    w: Vec<f32>,
    b: GpuBuffer<f32>,
    gamma: GpuBuffer<f32>,
    beta: GpuBuffer<f32>,
}

/// Time `layer` (of `cfg`) on `m` rows of `ops`, `runs` times, with Z, W and Y stored as `T`
/// (`to` converts the host values): f32, or f16 as the world model's hidden layers keep them.
fn time_linear<T: crate::kernels::linear::Element>(
    gpu: &Gpu,
    layer: &Linear,
    (cfg, m, runs): (LinearConfig, usize, usize),
    ops: &LinearOperands,
    to: impl Fn(f32) -> T,
) -> Result<Stats> {
    let upload = |label: &str, v: &[f32]| {
        GpuBuffer::from_slice(gpu, label, &v.iter().map(|&x| to(x)).collect::<Vec<T>>())
    };
    let z = upload("z", &ops.z)?;
    let w = upload("w", &ops.w)?;
    let y = GpuBuffer::<T>::new(gpu, "y", cfg.members * m * cfg.n)?;
    let io = LinearInputs {
        ln: cfg.layer_norm.then_some((&ops.gamma, &ops.beta)),
        a: (cfg.k1 < cfg.k).then_some(&ops.a),
        ..LinearInputs::new(&z, &w, &ops.b, &y)
    };
    time_submits(gpu, runs, target_seconds(), 0.2, |rec| {
        layer.record(rec, m, io)
    })
}

/// One benchmarked network forward pass.
#[derive(Clone, Debug)]
pub struct NetBench {
    /// Network label (`Q (2 of 5 heads)` for a subset).
    pub name: String,
    /// Rows.
    pub rows: usize,
    /// Times.
    pub stats: Stats,
    /// Floating-point operations per pass.
    pub flops: f64,
    /// Median throughput.
    pub gflops: f64,
    /// Dispatches per pass.
    pub dispatches: usize,
}

/// Forward pass of every network of a TD-MPC2 model (TD-MPC2's initialization, random
/// inputs) on `rows` rows, plus the Q ensemble restricted to 2 heads as the planner uses it.
pub fn bench_model(
    gpu: &Gpu,
    spec: &crate::model::ModelSpec,
    rows: usize,
    runs: usize,
) -> Result<Vec<NetBench>> {
    use crate::model::{Net, NetInput, Weights, Workspace, WorldModel};
    let weights = Weights::init(spec, 0)?;
    let model = WorldModel::new(gpu, &weights)?;
    let ws = Workspace::new(gpu, spec, rows)?;
    let mut r = rand::rngs::StdRng::seed_from_u64(11);
    let mut rand_buf = |label: &str, n: usize| -> Result<GpuBuffer<f32>> {
        let v: Vec<f32> = (0..n).map(|_| r.random_range(-1.0..1.0)).collect();
        GpuBuffer::from_slice(gpu, label, &v)
    };
    let obs = rand_buf("obs", rows * spec.obs_dim)?;
    let z = rand_buf("z", rows * spec.latent_dim)?;
    let a = rand_buf("a", rows * spec.action_dim)?;
    let width = spec.latent_dim.max(spec.num_bins).max(2 * spec.action_dim);
    let out = GpuBuffer::<f32>::new(gpu, "out", spec.num_q * rows * width)?;
    let two = GpuBuffer::from_slice(gpu, "heads", &[0u32, 1])?;
    let target = target_seconds();
    let mut results = Vec::new();
    let mut cases: Vec<(String, Net, Option<&GpuBuffer<u32>>)> = Net::ALL
        .iter()
        .filter(|n| model.net(**n).is_some())
        .map(|n| (format!("{n:?}"), *n, None))
        .collect();
    if spec.num_q > 2 {
        cases.push((format!("Q (2 of {} heads)", spec.num_q), Net::Q, Some(&two)));
    }
    for (name, net, heads) in cases {
        let mlp = model.net(net).expect("filtered");
        let input = match net {
            Net::Encoder => NetInput::new(&obs, None),
            Net::Dynamics | Net::Reward | Net::Q => NetInput::new(&z, Some(&a)),
            Net::Policy | Net::Termination => NetInput::new(&z, None),
        };
        let slots = heads.map_or(mlp.members, |h| h.len());
        let mut probe = Recorder::new(gpu);
        mlp.record(&mut probe, rows, input, heads, &ws, &out)?;
        let dispatches = probe.dispatches();
        drop(probe);
        let stats = time_submits(gpu, runs, target, 0.2, |rec| {
            mlp.record(rec, rows, input, heads, &ws, &out)
        })?;
        let flops = mlp.flops(rows, slots);
        results.push(NetBench {
            name,
            rows,
            gflops: flops / stats.median * 1e-9,
            flops,
            stats,
            dispatches,
        });
    }
    Ok(results)
}

/// One benchmarked plan step.
#[derive(Clone, Debug)]
pub struct PlanBench {
    /// Environments.
    pub batch: usize,
    /// Action dimension.
    pub action_dim: usize,
    /// Host wall clock per `plan` call (upload, record, submit, wait, read-back).
    pub wall: Stats,
    /// GPU time per call from timestamp queries, when the adapter has them.
    pub gpu: Option<Stats>,
    /// Useful floating-point operations per call.
    pub flops: f64,
    /// Dispatches per call.
    pub dispatches: usize,
}

impl PlanBench {
    /// Environment plans per second at the median wall time.
    pub fn env_plans_per_second(&self) -> f64 {
        self.batch as f64 / self.wall.median
    }
}

/// What a model-level benchmark times: `runs` calls after `warmup` untimed ones, on `spec`
/// with `batch` environments (plans) or sub-trajectories (updates).
#[derive(Clone, Copy, Debug)]
pub struct Workload<'a> {
    /// The model.
    pub spec: &'a crate::model::ModelSpec,
    /// Environments or sub-trajectories per call.
    pub batch: usize,
    /// Timed calls.
    pub runs: usize,
    /// Untimed calls first.
    pub warmup: usize,
}

/// TD-MPC2-initialized weights for `spec` with random (non-zero) reward and Q heads, so
/// that values differ and the elite sort has work: the benchmarks' model.
pub fn bench_weights(spec: &crate::model::ModelSpec) -> Result<crate::model::Weights> {
    let heads = ["_reward.2.weight", "_Qs.params.2.weight"];
    Ok(randomized_weights(spec, 5, &heads)?.0)
}

/// TD-MPC2-initialized weights for `spec` with the tensors `names` (those it has) drawn
/// uniformly in `[-0.05, 0.05)` from a generator seeded with `seed`, and that generator for
/// the caller's further draws: TD-MPC2 starts its reward, Q and policy output layers at zero,
/// and the benchmarks want non-zero values and gradients.
fn randomized_weights(
    spec: &crate::model::ModelSpec,
    seed: u64,
    names: &[&str],
) -> Result<(crate::model::Weights, rand::rngs::StdRng)> {
    let mut weights = crate::model::Weights::init(spec, 0)?;
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    for name in names {
        if let Some(t) = weights.tensors.get_mut(*name) {
            t.data
                .iter_mut()
                .for_each(|v| *v = r.random_range(-0.05..0.05));
        }
    }
    Ok((weights, r))
}

/// Time `runs` plan calls of TD-MPC2's planner (`PlannerConfig::tdmpc2`) over a
/// TD-MPC2-initialized model with random reward and Q heads at `precision`, for `batch`
/// environments, after `warmup` calls.
pub fn bench_plan(gpu: &Gpu, w: Workload, precision: Precision) -> Result<PlanBench> {
    bench_population_plan(gpu, w, precision, 1)
}

/// [`bench_plan`] for a population of `agents` agents ([`crate::model::WorldModel::population`])
/// of `w.batch` environments each, planned in one step: the row's batch is all agents'
/// environments, so its rate is the population's env-plans/s (issue 21's scaling table).
pub fn bench_population_plan(
    gpu: &Gpu,
    w: Workload,
    precision: Precision,
    agents: usize,
) -> Result<PlanBench> {
    let setting = (w.batch, w.warmup, precision, agents);
    let batch = w.batch * agents;
    with_warm_planner(
        gpu,
        w.spec,
        setting,
        RunMode::Timestamps,
        |planner, obs, first| {
            let mut wall = Vec::with_capacity(w.runs);
            let mut gpu_t = Vec::with_capacity(w.runs);
            let mut dispatches = 0;
            for _ in 0..w.runs.max(1) {
                planner.plan(obs, first)?;
                let t = planner.last_timing().unwrap_or_default();
                wall.push(t.wall_seconds);
                if let Some(g) = t.gpu_seconds.filter(|g| *g > 0.0) {
                    gpu_t.push(g);
                }
                dispatches = t.dispatches;
            }
            Ok(PlanBench {
                batch,
                action_dim: w.spec.action_dim,
                wall: Stats::from_samples(wall, Clock::Wall),
                gpu: (!gpu_t.is_empty()).then(|| Stats::from_samples(gpu_t, Clock::Timestamps)),
                flops: planner.flops(batch),
                dispatches,
            })
        },
    )
}

/// A TD-MPC2 planner for `batch` environments of each of `agents` agents (a population of
/// copies of the benchmark weights; 1: a plain model) at `precision`, timing its calls as
/// `mode` says, after `warmup` calls on random observations (seed 6), handed to `body` with
/// those observations and the first-step flags (all false after the first call).
fn with_warm_planner<R>(
    gpu: &Gpu,
    spec: &crate::model::ModelSpec,
    (batch, warmup, precision, agents): (usize, usize, Precision, usize),
    mode: RunMode,
    body: impl FnOnce(&mut crate::planner::Planner, &[f32], &[bool]) -> Result<R>,
) -> Result<R> {
    use crate::model::WorldModel;
    use crate::planner::{Planner, PlannerConfig};
    let weights = bench_weights(spec)?;
    let mut r = rand::rngs::StdRng::seed_from_u64(6);
    let model = if agents == 1 {
        WorldModel::with_precision(gpu, &weights, precision)?
    } else {
        WorldModel::population(gpu, &vec![weights; agents], precision)?
    };
    let batch = batch * agents;
    let cfg = PlannerConfig::tdmpc2(spec.action_dim);
    let planner = Planner::new(gpu, &model, cfg)?;
    let mut planner = match mode {
        RunMode::Plain => planner,
        RunMode::Timestamps => planner.with_timestamps(true),
        RunMode::Profile => planner.with_profile(true),
    };
    let obs: Vec<f32> = (0..batch * spec.obs_dim)
        .map(|_| r.random_range(-1.0..1.0))
        .collect();
    let mut first = vec![true; batch];
    warm_up(gpu, warmup, || {
        planner.plan(&obs, &first)?;
        first.iter_mut().for_each(|f| *f = false);
        Ok(())
    })?;
    body(&mut planner, &obs, &first)
}

/// GPU time of one kernel launch shape in a profiled plan step (see [`profile_plan`]).
#[derive(Clone, Debug)]
pub struct PlanProfileRow {
    /// The kernel: `shader::entry`.
    pub kernel: String,
    /// Workgroups dispatched.
    pub groups: [u32; 3],
    /// Launches of this kernel and shape per plan step.
    pub count: usize,
    /// Their GPU time per plan step (mean over the profiled steps).
    pub seconds: f64,
}

/// A profile as a text table, headed by `what`: kernels and launch shapes by GPU time per
/// `unit` (step, update), with launches, microseconds each and share of the total (what
/// `pompc bench ... --profile` and `examples/update_timing --profile` print).
pub fn profile_table(what: &str, unit: &str, rows: &[PlanProfileRow]) -> String {
    use std::fmt::Write;
    let total: f64 = rows.iter().map(|r| r.seconds).sum();
    let launches: usize = rows.iter().map(|r| r.count).sum();
    let mut t = format!(
        "{what}: {:.3} ms GPU in {launches} dispatches (each timed alone)\n",
        total * 1e3
    );
    let _ = writeln!(
        t,
        "{:<28} {:>22} {:>6} {:>10} {:>10} {:>6}",
        "kernel",
        "workgroups",
        "count",
        format!("ms/{unit}"),
        "us each",
        "share"
    );
    for r in rows {
        let _ = writeln!(
            t,
            "{:<28} {:>22} {:>6} {:>10.3} {:>10.1} {:>5.1}%",
            r.kernel,
            format!("{}x{}x{}", r.groups[0], r.groups[1], r.groups[2]),
            r.count,
            r.seconds * 1e3,
            r.seconds / r.count.max(1) as f64 * 1e6,
            100.0 * r.seconds / total.max(f64::MIN_POSITIVE)
        );
    }
    t
}

/// Where a plan step's GPU time goes: `runs` steps (after `warmup`) with every dispatch timed
/// on its own, summed per kernel and launch shape, largest first. Timing each dispatch in its
/// own pass adds a little to each; compare the total with [`bench_plan`]'s GPU time.
pub fn profile_plan(gpu: &Gpu, w: Workload, precision: Precision) -> Result<Vec<PlanProfileRow>> {
    check_timestamps(gpu)?;
    let setting = (w.batch, w.warmup, precision, 1);
    with_warm_planner(
        gpu,
        w.spec,
        setting,
        RunMode::Profile,
        |planner, obs, first| {
            let mut rows: Vec<PlanProfileRow> = Vec::new();
            let runs = w.runs.max(1);
            for _ in 0..runs {
                planner.plan(obs, first)?;
                add_profile(&mut rows, planner.last_profile());
            }
            Ok(finish_profile(rows, runs))
        },
    )
}

// Add one run's dispatch times to `rows` (per kernel and launch shape).
fn add_profile(rows: &mut Vec<PlanProfileRow>, profile: &[crate::gpu::DispatchTime]) {
    for d in profile {
        match rows
            .iter_mut()
            .find(|r| r.kernel == d.kernel && r.groups == d.groups)
        {
            Some(r) => {
                r.count += 1;
                r.seconds += d.seconds;
            }
            None => rows.push(PlanProfileRow {
                kernel: d.kernel.clone(),
                groups: d.groups,
                count: 1,
                seconds: d.seconds,
            }),
        }
    }
}

// Per-run means, largest first.
fn finish_profile(mut rows: Vec<PlanProfileRow>, runs: usize) -> Vec<PlanProfileRow> {
    for r in &mut rows {
        r.count /= runs;
        r.seconds /= runs as f64;
    }
    rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    rows
}

fn check_timestamps(gpu: &Gpu) -> Result<()> {
    if gpu.features().timestamps {
        return Ok(());
    }
    Err(crate::Error::InvalidArgument(format!(
        "{} has no timestamp queries: no per-dispatch profile",
        gpu.info().name
    )))
}

/// Seconds of back-to-back work per timed run (`POMPC_BENCH_TARGET_S`, default 2 ms).
fn target_seconds() -> f64 {
    std::env::var("POMPC_BENCH_TARGET_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2e-3)
}

/// One benchmarked GEMM shape.
#[derive(Clone, Debug)]
pub struct GemmBench {
    /// The multiply.
    pub op: crate::kernels::gemm::Gemm,
    /// The tile used.
    pub tile: crate::kernels::gemm::GemmTile,
    /// Time per multiply.
    pub time: Stats,
}

/// Time the strided GEMM of `op` (operands contiguous, random) with `tile`, or the
/// heuristic's choice.
pub fn bench_gemm(
    gpu: &Gpu,
    op: crate::kernels::gemm::Gemm,
    tile: Option<crate::kernels::gemm::GemmTile>,
    runs: usize,
) -> Result<GemmBench> {
    use crate::kernels::gemm::{self, GemmTile, Operands};
    let tile = tile.unwrap_or_else(|| GemmTile::for_op(gpu, &op));
    let [a, b, c] = gemm_operands(gpu, &op)?;
    let time = time_submits(gpu, runs, target_seconds(), 0.2, |rec| {
        gemm::record_with_tile(rec, &op, Operands::new(a.mat(), b.mat(), c.mat()), tile)
    })?;
    Ok(GemmBench { op, tile, time })
}

/// A GEMM operand on the GPU with its row length and matrix stride.
struct Operand {
    buf: GpuBuffer<f32>,
    cols: usize,
    stride: usize,
}

impl Operand {
    fn mat(&self) -> crate::kernels::gemm::Mat<'_> {
        crate::kernels::gemm::Mat::rows(&self.buf, self.cols).batched(self.stride)
    }
}

/// Random A and B for `op` (contiguous, transposed as `op` says) and an output C, for the
/// GEMM benchmarks.
fn gemm_operands(gpu: &Gpu, op: &crate::kernels::gemm::Gemm) -> Result<[Operand; 3]> {
    let mut r = rand::rngs::StdRng::seed_from_u64(3);
    let mut operand = |label: &str, (rows, cols): (usize, usize), random: bool| {
        let n = op.batch * rows * cols;
        let buf = if random {
            let v: Vec<f32> = (0..n).map(|_| r.random_range(-1.0..1.0)).collect();
            GpuBuffer::from_slice(gpu, label, &v)?
        } else {
            GpuBuffer::<f32>::new(gpu, label, n)?
        };
        Ok::<_, crate::Error>(Operand {
            buf,
            cols,
            stride: rows * cols,
        })
    };
    let a = if op.trans_a {
        (op.k, op.m)
    } else {
        (op.m, op.k)
    };
    let b = if op.trans_b {
        (op.n, op.k)
    } else {
        (op.k, op.n)
    };
    Ok([
        operand("gemm A", a, true)?,
        operand("gemm B", b, true)?,
        operand("gemm C", (op.m, op.n), false)?,
    ])
}

/// One benchmarked world-model update.
#[derive(Clone, Debug)]
pub struct UpdateBench {
    /// Sub-trajectories per batch.
    pub batch: usize,
    /// Host wall clock of one update (one submit, read-back of the losses).
    pub wall: Stats,
    /// GPU time of the update (timestamp queries).
    pub gpu: Option<Stats>,
    /// Floating-point operations of one update (see [`crate::train::WorldModelTrainer::flops`]).
    pub flops: f64,
    /// Dispatches recorded per update.
    pub dispatches: usize,
}

// How a benchmark run records: plainly, with the total's timestamps, or every dispatch timed
// on its own.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RunMode {
    Plain,
    Timestamps,
    Profile,
}

impl RunMode {
    fn recorder(self, gpu: &Gpu) -> Recorder<'_> {
        let rec = Recorder::new(gpu);
        match self {
            RunMode::Plain => rec,
            RunMode::Timestamps => rec.with_timestamps(),
            RunMode::Profile => rec.with_profile(),
        }
    }
}

// One run: GPU time, dispatches, per-dispatch times when profiled.
struct Run {
    gpu: Option<f64>,
    dispatches: usize,
    profile: Vec<crate::gpu::DispatchTime>,
}

// Warm up, then time `runs` plain runs (host wall clock of the whole run: recording, submit,
// wait, read-back) and `runs` timestamped ones (GPU time).
fn time_runs(
    gpu: &Gpu,
    runs: usize,
    warmup: usize,
    mut run: impl FnMut(RunMode) -> Result<Run>,
) -> Result<(Stats, Option<Stats>, usize)> {
    warm_up(gpu, warmup, || run(RunMode::Plain).map(|_| ()))?;
    let (mut wall, mut gpu_t, mut dispatches) = (Vec::new(), Vec::new(), 0);
    for _ in 0..runs.max(1) {
        let t0 = std::time::Instant::now();
        let r = run(RunMode::Plain)?;
        wall.push(t0.elapsed().as_secs_f64());
        dispatches = r.dispatches;
    }
    for _ in 0..runs.max(1) {
        if let Some(g) = run(RunMode::Timestamps)?.gpu
            && g > 0.0
        {
            gpu_t.push(g);
        }
    }
    let gpu_stats = (!gpu_t.is_empty()).then(|| Stats::from_samples(gpu_t, Clock::Timestamps));
    Ok((
        Stats::from_samples(wall, Clock::Wall),
        gpu_stats,
        dispatches,
    ))
}

// Warm up, then `runs` profiled runs summed per kernel and launch shape.
fn profile_runs(
    gpu: &Gpu,
    runs: usize,
    warmup: usize,
    mut run: impl FnMut(RunMode) -> Result<Run>,
) -> Result<Vec<PlanProfileRow>> {
    check_timestamps(gpu)?;
    warm_up(gpu, warmup, || run(RunMode::Plain).map(|_| ()))?;
    let mut rows = Vec::new();
    for _ in 0..runs.max(1) {
        add_profile(&mut rows, &run(RunMode::Profile)?.profile);
    }
    Ok(finish_profile(rows, runs.max(1)))
}

// TD-MPC2's world-model update of `spec` on a random batch for each of `agents` agents (one
// trainer: a population when several), ready to run.
fn update_fixture<'g>(
    gpu: &'g Gpu,
    spec: &crate::model::ModelSpec,
    batch: usize,
    agents: usize,
    cfg: &crate::train::UpdateConfig,
) -> Result<crate::train::WorldModelTrainer<'g>> {
    use crate::train::{UpdateBatch, UpdateConfig, WorldModelTrainer};
    // Non-zero reward and Q heads (TD-MPC2 starts them at zero), so every gradient is non-zero.
    let heads = ["_reward.2.weight", "_Qs.params.2.weight"];
    let (weights, mut r) = randomized_weights(spec, 6, &heads)?;
    let cfgs: Vec<UpdateConfig> = (0..agents)
        .map(|i| UpdateConfig {
            seed: i as u64,
            ..cfg.clone()
        })
        .collect();
    let t = cfgs[0].horizon;
    let mut tr = WorldModelTrainer::population(gpu, &vec![weights; agents], &cfgs, batch)?;
    let mut v = |n: usize, lo: f32, hi: f32| (0..n).map(|_| r.random_range(lo..hi)).collect();
    let data: Vec<UpdateBatch> = (0..agents)
        .map(|_| UpdateBatch {
            obs: v((t + 1) * batch * spec.obs_dim, -1.0, 1.0),
            action: v(t * batch * spec.action_dim, -1.0, 1.0),
            reward: v(t * batch, 0.0, 1.0),
            pi_noise: None,
            target_heads: None,
        })
        .collect();
    tr.upload_agents(&data)?;
    Ok(tr)
}

// One world-model update of every agent: one submit, the losses read back and checked.
fn run_update(gpu: &Gpu, tr: &mut crate::train::WorldModelTrainer, mode: RunMode) -> Result<Run> {
    let heads = tr.draw_agent_heads()?;
    let mut rec = mode.recorder(gpu);
    tr.record_agents(&mut rec, &heads, true, None)?;
    tr.record_optimizer(&mut rec)?;
    let dispatches = rec.dispatches();
    let h = rec.read(tr.losses_buffer());
    let out = rec.finish()?;
    let l = out.get(&h)?;
    if !l.iter().all(|x| x.is_finite()) {
        return Err(crate::Error::InvalidArgument(format!(
            "update benchmark: non-finite losses {l:?}"
        )));
    }
    Ok(Run {
        gpu: out.timing.gpu_seconds,
        dispatches,
        profile: out.profile,
    })
}

/// The dispatches that one world-model update (TD-MPC2's, with clipped Adam and Polyak) and
/// one PO-MPC policy update (lambda 1) of `spec` over `batch` sub-trajectories record, counted
/// without running them: the updates' share of a training step's launches (tests pin it, as
/// `tests/planner.rs` pins the plan step's).
///
/// ```no_run
/// # fn main() -> pompc::Result<()> {
/// let gpu = pompc::Gpu::new(Default::default())?;
/// let spec = pompc::model::ModelSpec::tdmpc2(5, 24, 6)?;
/// let [world, policy] = pompc::bench::update_dispatches(&gpu, &spec, 256)?;
/// println!("{world} + {policy} dispatches");
/// # Ok(()) }
/// ```
pub fn update_dispatches(
    gpu: &Gpu,
    spec: &crate::model::ModelSpec,
    batch: usize,
) -> Result<[usize; 2]> {
    let mut tr = update_fixture(gpu, spec, batch, 1, &crate::train::UpdateConfig::tdmpc2())?;
    let heads = tr.draw_agent_heads()?;
    let mut rec = Recorder::new(gpu);
    tr.record_agents(&mut rec, &heads, true, None)?;
    tr.record_optimizer(&mut rec)?;
    let world = rec.dispatches();
    let cfg = crate::train::PolicyUpdateConfig::pompc(spec.action_dim, 1.0);
    let (mut t, params, zs) = policy_fixture(gpu, spec, cfg, batch, 1)?;
    let heads = t.draw_agent_heads();
    let mut rec = Recorder::new(gpu);
    t.record_agents(&mut rec, &params, &zs, &heads, true, true)?;
    Ok([world, rec.dispatches()])
}

/// Time TD-MPC2's world-model update (forward, backward, clip, Adam, Polyak) of `spec` on a
/// random batch of `batch` sub-trajectories of horizon 3: each run is one submit with the
/// losses read back.
pub fn bench_update(gpu: &Gpu, w: Workload) -> Result<UpdateBench> {
    bench_population_update(gpu, w, 1)
}

/// [`bench_update`] of `agents` agents' updates recorded together
/// ([`crate::train::WorldModelTrainer::population`]); the flops are all agents'.
pub fn bench_population_update(gpu: &Gpu, w: Workload, agents: usize) -> Result<UpdateBench> {
    bench_update_with(gpu, w, &crate::train::UpdateConfig::tdmpc2(), agents)
}

/// [`bench_population_update`] with another configuration than TD-MPC2's (each agent's seed
/// its index), e.g. the products on tensor cores
/// ([`crate::train::UpdateConfig::tensor_cores`]).
pub fn bench_update_with(
    gpu: &Gpu,
    w: Workload,
    cfg: &crate::train::UpdateConfig,
    agents: usize,
) -> Result<UpdateBench> {
    let (batch, runs, warmup) = (w.batch, w.runs, w.warmup);
    let mut tr = update_fixture(gpu, w.spec, batch, agents, cfg)?;
    let (wall, gpu_t, dispatches) = time_runs(gpu, runs, warmup, |m| run_update(gpu, &mut tr, m))?;
    Ok(UpdateBench {
        batch,
        wall,
        gpu: gpu_t,
        flops: tr.flops() * agents as f64,
        dispatches,
    })
}

/// Where the world-model update's GPU time goes ([`bench_update`]'s update, each dispatch
/// timed on its own; see [`profile_plan`]).
pub fn profile_update(gpu: &Gpu, w: Workload) -> Result<Vec<PlanProfileRow>> {
    profile_update_with(gpu, w, &crate::train::UpdateConfig::tdmpc2())
}

/// [`profile_update`] with another configuration (see [`bench_update_with`]).
pub fn profile_update_with(
    gpu: &Gpu,
    w: Workload,
    cfg: &crate::train::UpdateConfig,
) -> Result<Vec<PlanProfileRow>> {
    let mut tr = update_fixture(gpu, w.spec, w.batch, 1, cfg)?;
    profile_runs(gpu, w.runs, w.warmup, |m| run_update(gpu, &mut tr, m))
}

// A PO-MPC-family policy update of `spec` on random latents and planner Gaussians, ready to
// run: the trainer (a population of `agents` with seeds 0.., the same weights each), the
// flattened parameters and the latents.
fn policy_fixture<'g>(
    gpu: &'g Gpu,
    spec: &crate::model::ModelSpec,
    cfg: crate::train::PolicyUpdateConfig,
    batch: usize,
    agents: usize,
) -> Result<(
    crate::train::PolicyTrainer<'g>,
    GpuBuffer<f32>,
    GpuBuffer<f32>,
)> {
    use crate::train::{ParamLayout, PolicyTrainer, PolicyUpdateConfig};
    let heads = ["_Qs.params.2.weight", "_pi.2.weight"];
    let (weights, mut r) = randomized_weights(spec, 7, &heads)?;
    let layout = ParamLayout::new(spec);
    let params =
        GpuBuffer::from_slice(gpu, "parameters", &layout.flatten(&weights)?.repeat(agents))?;
    let (l, a) = (spec.latent_dim, spec.action_dim);
    let zs: Vec<f32> = (0..agents * 4 * batch * l / 8)
        .flat_map(|_| {
            let e: Vec<f32> = (0..8).map(|_| r.random_range(-2.0f32..2.0).exp()).collect();
            let s: f32 = e.iter().sum();
            e.into_iter().map(move |v| v / s)
        })
        .collect();
    let zs = GpuBuffer::from_slice(gpu, "latents", &zs)?;
    let cfgs: Vec<PolicyUpdateConfig> = (0..agents as u64)
        .map(|seed| PolicyUpdateConfig {
            seed,
            ..cfg.clone()
        })
        .collect();
    let mut t = PolicyTrainer::population(gpu, spec, &cfgs, batch)?;
    let planner: Vec<f32> = (0..agents * t.rows())
        .flat_map(|_| {
            let mut row: Vec<f32> = (0..a).map(|_| r.random_range(-0.8..0.8)).collect();
            row.extend((0..a).map(|_| r.random_range(0.05..1.0)));
            row
        })
        .collect();
    t.set_planner(&planner)?;
    Ok((t, params, zs))
}

// One policy update: one submit.
fn run_policy(
    gpu: &Gpu,
    (t, params, zs): &mut (crate::train::PolicyTrainer, GpuBuffer<f32>, GpuBuffer<f32>),
    mode: RunMode,
) -> Result<Run> {
    let heads = t.draw_agent_heads();
    let mut rec = mode.recorder(gpu);
    t.record_agents(&mut rec, params, zs, &heads, true, true)?;
    let dispatches = rec.dispatches();
    let out = rec.finish()?;
    Ok(Run {
        gpu: out.timing.gpu_seconds,
        dispatches,
        profile: out.profile,
    })
}

/// Time one PO-MPC-family policy update (`cfg`) of `spec` on random latents and planner
/// Gaussians for `batch` sub-trajectories: each run is one submit with the losses read back.
pub fn bench_policy(
    gpu: &Gpu,
    w: Workload,
    cfg: crate::train::PolicyUpdateConfig,
) -> Result<UpdateBench> {
    bench_population_policy(gpu, w, cfg, 1)
}

/// [`bench_policy`] for a population of `agents` (seeds 0..), all their policy updates in
/// one submit; the flops count all agents (a population runs every Q head, but counts the
/// two each agent uses).
pub fn bench_population_policy(
    gpu: &Gpu,
    w: Workload,
    cfg: crate::train::PolicyUpdateConfig,
    agents: usize,
) -> Result<UpdateBench> {
    let (spec, batch) = (w.spec, w.batch);
    let mut fx = policy_fixture(gpu, spec, cfg, batch, agents)?;
    let (wall, gpu_t, dispatches) =
        time_runs(gpu, w.runs, w.warmup, |m| run_policy(gpu, &mut fx, m))?;
    let t = &fx.0;
    // 2 per multiply-add of the linear layers: the policy forward and backward (dX, dW),
    // two Q heads forward and backward to the action (dX), the prior forward and backward.
    let rows = t.rows();
    let (l, a) = (spec.latent_dim, spec.action_dim);
    let mac = |dims: &[(usize, usize)]| dims.iter().map(|(i, o)| i * o).sum::<usize>() as f64;
    let (h, bins) = (spec.mlp_dim, spec.num_bins);
    let pi = mac(&[(l, h), (h, h), (h, 2 * a)]);
    let q = mac(&[(l + a, h), (h, h), (h, bins)]);
    let cfg = t.config();
    let with_q = cfg.loss.c_q != 0.0 || cfg.loss.ll.is_some();
    let prior = cfg.prior == crate::train::PriorKind::Adaptive;
    let per_row =
        3.0 * pi + if with_q { 2.0 * 2.0 * q } else { 0.0 } + if prior { 3.0 * pi } else { 0.0 };
    Ok(UpdateBench {
        batch,
        wall,
        gpu: gpu_t,
        flops: 2.0 * per_row * rows as f64 * agents as f64,
        dispatches,
    })
}

/// Where a PO-MPC-family policy update's GPU time goes ([`bench_policy`]'s update, each
/// dispatch timed on its own; see [`profile_plan`]).
pub fn profile_policy(
    gpu: &Gpu,
    w: Workload,
    cfg: crate::train::PolicyUpdateConfig,
) -> Result<Vec<PlanProfileRow>> {
    let mut fx = policy_fixture(gpu, w.spec, cfg, w.batch, 1)?;
    profile_runs(gpu, w.runs, w.warmup, |m| run_policy(gpu, &mut fx, m))
}

/// Time one clipped Adam step over `len` parameters (norm partials, begin, update): each run
/// is one submit of back-to-back steps.
pub fn bench_adam(gpu: &Gpu, len: usize, runs: usize) -> Result<Stats> {
    use crate::kernels::optim::{Adam, AdamConfig, ParamGroup};
    let mut r = rand::rngs::StdRng::seed_from_u64(13);
    let v: Vec<f32> = (0..len).map(|_| r.random_range(-1.0..1.0)).collect();
    let params = GpuBuffer::from_slice(gpu, "params", &v)?;
    let grads = GpuBuffer::from_slice(gpu, "grads", &v)?;
    let mut adam = Adam::new(
        gpu,
        len,
        &[ParamGroup::new(0..len, 1.0)],
        AdamConfig::TDMPC2,
    )?;
    time_submits(gpu, runs, target_seconds(), 0.2, |rec| {
        adam.record_step(rec, &params, &grads)
    })
}

/// The floor under any step that reads a result back: upload 16 bytes, one 16-byte copy,
/// submit, wait, map the read-back (median and p90 over `runs` after `warmup`).
pub fn bench_round_trip(gpu: &Gpu, runs: usize, warmup: usize) -> Result<Stats> {
    let src = GpuBuffer::<f32>::new(gpu, "round-trip src", 4)?;
    let dst = GpuBuffer::<f32>::new(gpu, "round-trip dst", 4)?;
    let mut wall = Vec::with_capacity(runs);
    let once = |i: usize| -> Result<()> {
        src.upload(gpu, &[i as f32; 4])?;
        let mut rec = Recorder::new(gpu);
        rec.copy(&src, &dst)?;
        let h = rec.read(&dst);
        rec.finish()?.get(&h)?;
        Ok(())
    };
    warm_up(gpu, 1, || once(0))?;
    for i in 0..warmup + runs.max(1) {
        let t0 = std::time::Instant::now();
        src.upload(gpu, &[i as f32; 4])?;
        let mut rec = Recorder::new(gpu);
        rec.copy(&src, &dst)?;
        let h = rec.read(&dst);
        let v = rec.finish()?.get(&h)?;
        debug_assert_eq!(v[0], i as f32);
        if i >= warmup {
            wall.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(Stats::from_samples(wall, Clock::Wall))
}

/// One benchmarked MPPI configuration.
#[derive(Clone, Debug)]
pub struct MppiBench {
    /// Samples.
    pub samples: usize,
    /// Horizon.
    pub horizon: usize,
    /// Host wall clock of one optimization step including the read-back of the control.
    pub wall: Stats,
    /// GPU time of the step (timestamp queries).
    pub gpu: Option<Stats>,
}

/// Time `runs` optimization steps of classic MPPI on `problem` with `params`, from `x0`,
/// after `warmup` steps.
pub fn bench_mppi(
    gpu: &Gpu,
    problem: crate::planner::custom::Problem,
    cfg: crate::planner::custom::MppiConfig,
    params: &[f32],
    x0: &[f32],
    runs: usize,
    warmup: usize,
) -> Result<MppiBench> {
    use crate::planner::custom::Mppi;
    let (samples, horizon) = (cfg.samples, cfg.horizon);
    let mut mppi = Mppi::new(gpu, problem, cfg)?;
    mppi.set_params(params)?;
    warm_up(gpu, warmup, || mppi.step(x0).map(|_| ()))?;
    // Wall clock without timestamp queries (they add a query set and a resolve), then GPU
    // time with them.
    let mut wall = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t0 = std::time::Instant::now();
        mppi.step(x0)?;
        wall.push(t0.elapsed().as_secs_f64());
    }
    mppi.set_timestamps(true);
    let mut gpu_t = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        mppi.step(x0)?;
        if let Some(g) = mppi.last_gpu_seconds().filter(|g| *g > 0.0) {
            gpu_t.push(g);
        }
    }
    Ok(MppiBench {
        samples,
        horizon,
        wall: Stats::from_samples(wall, Clock::Wall),
        gpu: (!gpu_t.is_empty()).then(|| Stats::from_samples(gpu_t, Clock::Timestamps)),
    })
}

/// How far plans at one precision are from plans at f32, over the same model, observations
/// and seeds.
#[derive(Clone, Debug)]
pub struct PrecisionDiff {
    /// The precision compared with f32.
    pub precision: Precision,
    /// Environments.
    pub batch: usize,
    /// Plan calls compared (consecutive, warm-started).
    pub calls: usize,
    /// Largest and mean |difference| of the planned mean of the first action.
    pub mean_max: f64,
    /// ...
    pub mean_avg: f64,
    /// Largest and mean |difference| of the value of the chosen sample.
    pub value_max: f64,
    /// ...
    pub value_avg: f64,
    /// Mean |value| at f32, for scale.
    pub value_scale: f64,
    /// Largest and mean |difference| of the action executed.
    pub action_max: f64,
    /// ...
    pub action_avg: f64,
    /// Fraction of environments and calls whose chosen sample index agrees.
    pub same_choice: f64,
}

/// Plan `calls` consecutive steps for `batch` environments (random observations, seed 1) with
/// the model at f32 and at `precision`, and compare the planned mean, values and actions.
pub fn compare_precision(
    gpu: &Gpu,
    spec: &crate::model::ModelSpec,
    batch: usize,
    calls: usize,
    precision: Precision,
) -> Result<PrecisionDiff> {
    use crate::model::WorldModel;
    use crate::planner::{Planner, PlannerConfig};
    let weights = bench_weights(spec)?;
    let cfg = PlannerConfig::tdmpc2(spec.action_dim);
    let base = WorldModel::with_precision(gpu, &weights, Precision::F32)?;
    let other = WorldModel::with_precision(gpu, &weights, precision)?;
    let mut p32 = Planner::new(gpu, &base, cfg.clone())?;
    let mut px = Planner::new(gpu, &other, cfg)?;
    let mut r = rand::rngs::StdRng::seed_from_u64(8);
    let (mut mean, mut value, mut action) = (Vec::new(), Vec::new(), Vec::new());
    let (mut scale, mut same, mut total) = (0.0, 0usize, 0usize);
    for call in 0..calls.max(1) {
        let obs: Vec<f32> = (0..batch * spec.obs_dim)
            .map(|_| r.random_range(-1.0..1.0))
            .collect();
        let first = vec![call == 0; batch];
        let a = p32.plan(&obs, &first)?;
        let b = px.plan(&obs, &first)?;
        let d = |x: &[f32], y: &[f32]| -> Vec<f64> {
            x.iter()
                .zip(y)
                .map(|(p, q)| (*p as f64 - *q as f64).abs())
                .collect()
        };
        mean.extend(d(&a.mean, &b.mean));
        value.extend(d(&a.value, &b.value));
        action.extend(d(&a.action, &b.action));
        scale += a.value.iter().map(|v| v.abs() as f64).sum::<f64>();
        same += a
            .chosen
            .iter()
            .zip(&b.chosen)
            .filter(|(x, y)| x == y)
            .count();
        total += batch;
    }
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(PrecisionDiff {
        precision,
        batch,
        calls: calls.max(1),
        mean_max: max(&mean),
        mean_avg: avg(&mean),
        value_max: max(&value),
        value_avg: avg(&value),
        value_scale: scale / total.max(1) as f64,
        action_max: max(&action),
        action_avg: avg(&action),
        same_choice: same as f64 / total.max(1) as f64,
    })
}

/// Time the tensor-core GEMM of `op` (operands contiguous, random) with `tile`, or the
/// heuristic's choice.
pub fn bench_gemm_coop(
    gpu: &Gpu,
    op: crate::kernels::gemm::Gemm,
    tile: Option<crate::kernels::gemm_coop::CoopTile>,
    runs: usize,
) -> Result<(crate::kernels::gemm_coop::CoopTile, Stats)> {
    use crate::kernels::gemm::Operands;
    use crate::kernels::gemm_coop::{self, CoopTile};
    gpu.tensor_cores()?;
    let sg = gpu.tensor_cores()?;
    let tile = tile.unwrap_or_else(|| CoopTile::choose_on(gpu, sg, op.m, op.n, op.batch));
    let [a, b, c] = gemm_operands(gpu, &op)?;
    let time = time_submits(gpu, runs, target_seconds(), 0.2, |rec| {
        gemm_coop::record_with_tile(rec, &op, Operands::new(a.mat(), b.mat(), c.mat()), tile)
    })?;
    Ok((tile, time))
}

#[cfg(test)]
mod tests {

    #[test]
    fn profile_table_gives_each_shape_its_time_and_share() {
        let row = |kernel: &str, count, seconds| PlanProfileRow {
            kernel: kernel.into(),
            groups: [4, 2, 1],
            count,
            seconds,
        };
        let t = profile_table(
            "plan step",
            "step",
            &[row("linear::gemm", 4, 3e-3), row("planner::refit", 2, 1e-3)],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "plan step: 4.000 ms GPU in 6 dispatches (each timed alone)"
        );
        assert!(lines[1].contains("ms/step"), "{t}");
        // 3 ms over 4 launches: 750 us each, 75% of the total.
        let gemm: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            gemm,
            ["linear::gemm", "4x2x1", "4", "3.000", "750.0", "75.0%"]
        );
        assert!(lines[3].ends_with("25.0%"), "{t}");
    }

    use super::*;

    #[test]
    fn ceilings_by_adapter_name() {
        assert_eq!(
            known_fp32_ceiling_tflops("NVIDIA H100 80GB HBM3"),
            Some(66.9)
        );
        assert_eq!(known_fp32_ceiling_tflops("NVIDIA H100 PCIe"), Some(51.2));
        assert_eq!(
            known_tensor_ceiling_tflops("NVIDIA H100 80GB HBM3"),
            Some(989.4)
        );
        assert_eq!(known_tensor_ceiling_tflops("NVIDIA H200"), Some(989.4));
        assert_eq!(
            known_tensor_ceiling_tflops("llvmpipe (LLVM 15.0.6, 256 bits)"),
            None
        );
    }
}
