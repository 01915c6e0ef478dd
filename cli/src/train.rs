//! `pompc train`: options, the progress bars, and the CSV log of a run. The loop itself is
//! `pompc::train::Trainer`'s.

use crate::Result;
use crate::bench::AutoPrec;
use crate::output::say;
use clap::{Args, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pompc::train::{Event, Method, ModelPreset, PolicyLosses, Population, TrainConfig, Trainer};
use pompc::{Gpu, GpuOptions};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Mutex;

/// A training method.
#[derive(ValueEnum, Clone, Copy, Debug)]
#[value(rename_all = "kebab-case")]
enum MethodArg {
    /// TD-MPC2's maximum-entropy policy update
    #[value(alias = "td-mpc2")]
    Tdmpc2,
    /// BMPC: imitation of the planner
    Bmpc,
    /// TD-M(PC)²: TD-MPC2's update with a behaviour-cloning term toward the planner
    #[value(alias = "td-m(pc)2", alias = "td-m(pc)²")]
    TdmpcSquare,
    /// PO-MPC: Q against lambda times the KL to an adaptive prior (the default)
    #[value(alias = "pompc")]
    PoMpc,
}

/// Options of `pompc train`.
#[derive(Args)]
pub struct TrainArgs {
    /// The task
    #[arg(long = "env", value_name = "NAME", default_value = "pendulum-swingup",
          value_parser = clap::builder::PossibleValuesParser::new(pompc::env::NAMES))]
    env_name: String,
    /// The policy updates; with several methods, lambdas or seeds every combination runs
    #[arg(
        long,
        value_enum,
        value_name = "M1,M2,...",
        value_delimiter = ',',
        default_value = "po-mpc",
        ignore_case = true
    )]
    method: Vec<MethodArg>,
    /// PO-MPC's lambdas (default 1; finite, >= 0; po-mpc only)
    #[arg(
        long,
        value_name = "L1,L2,...",
        value_delimiter = ',',
        allow_negative_numbers = true
    )]
    lambda: Vec<f32>,
    /// Environment steps
    #[arg(long, value_name = "N", default_value_t = 100_000, allow_negative_numbers = true, value_parser = steps)]
    steps: usize,
    /// Seeds; several runs train as one population on one device, each with its own files
    #[arg(
        long = "seeds",
        visible_alias = "seed",
        value_name = "S1,S2,...",
        value_delimiter = ',',
        default_value = "0",
        required = false,
        num_args = 1
    )]
    seeds: Vec<u64>,
    /// Model: tiny, small, or a TD-MPC2 size 1, 5, 19, 48, 317 (default 5)
    #[arg(long, value_name = "M", value_parser = model_preset)]
    model: Option<ModelPreset>,
    /// The CPU-sized preset (tiny model, 64 samples, 3 iterations, batch 32)
    #[arg(long)]
    quick: bool,
    /// Steps between evaluations (default 10000; 0: none)
    #[arg(long, value_name = "N")]
    eval_every: Option<usize>,
    /// Random steps, then as many pre-training updates (default max(1000, 5 x episode
    /// length); at least one episode)
    #[arg(long, value_name = "N")]
    seed_steps: Option<usize>,
    /// Episodes per evaluation (default 1)
    #[arg(long, value_name = "N")]
    eval_episodes: Option<usize>,
    /// Where the CSV, SVG and checkpoint go
    #[arg(long, value_name = "DIR", default_value = "runs")]
    out: PathBuf,
    /// Steps between checkpoints (0: only at the end)
    #[arg(long, value_name = "N", default_value_t = 0)]
    checkpoint_every: usize,
    /// Continue from DIR's checkpoint of this run
    #[arg(long)]
    resume: bool,
    /// Stop (with a checkpoint) at the first episode end after S seconds, or within the
    /// pre-training after the seed phase's last episode (every 50 updates; --resume finishes
    /// it); an evaluation under way finishes first
    #[arg(long, value_name = "S", allow_negative_numbers = true, value_parser = seconds)]
    time_limit: Option<f64>,
    /// No progress bar (it is drawn only on a terminal anyway)
    #[arg(long)]
    quiet: bool,
    /// The planner's model (weights rounded to f16 from the trainer's f32 parameters after
    /// each update); default f32, auto: the device's
    #[arg(long, value_enum)]
    precision: Option<AutoPrec>,
    /// The updates' matrix products on tensor cores: f16 operands with each gradient row
    /// scaled into f16's range, f32 sums (about TF32's precision); default f32. Needs
    /// cooperative matrices. Experimental: slower than f32 on an H100 for the 5M model
    #[arg(long)]
    tensor_core_updates: bool,
}

fn model_preset(s: &str) -> std::result::Result<ModelPreset, String> {
    ModelPreset::parse(s).map_err(|e| e.to_string())
}

fn steps(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("nothing to train; give at least 1 step".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("a whole number of steps: {e}")),
    }
}

fn seconds(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err("seconds, finite and >= 0".into()),
    }
}

/// The columns of a run's CSV log, in order (`scripts/device/jobs.sh` reads them by position).
pub const CSV_HEADER: [&str; 12] = [
    "kind",
    "step",
    "episode",
    "wall_s",
    "return",
    "consistency",
    "reward_loss",
    "value_loss",
    "policy_loss",
    "prior_fit",
    "world_grad_norm",
    "policy_grad_norm",
];

/// One line of the CSV log: a training episode, an evaluation or a loss read-back.
#[derive(Serialize, Default)]
pub struct LogRow {
    kind: &'static str,
    step: usize,
    episode: Option<usize>,
    wall_s: f64,
    #[serde(rename = "return")]
    ret: Option<f32>,
    consistency: Option<f32>,
    reward_loss: Option<f32>,
    value_loss: Option<f32>,
    policy_loss: Option<f32>,
    prior_fit: Option<f32>,
    world_grad_norm: Option<f32>,
    policy_grad_norm: Option<f32>,
}

impl LogRow {
    /// The row of `e` at `wall` seconds; `None` for events that are not logged.
    pub fn of(e: &Event, wall: f64) -> Option<LogRow> {
        // Centiseconds are plenty for a log and keep it short.
        let wall_s = (wall * 100.0).round() / 100.0;
        Some(match e {
            Event::Episode { step, episode, ret } => LogRow {
                kind: "train",
                step: *step,
                episode: Some(*episode),
                wall_s,
                ret: Some(*ret),
                ..LogRow::default()
            },
            Event::Eval { step, mean, .. } => LogRow {
                kind: "eval",
                step: *step,
                wall_s,
                ret: Some(*mean),
                ..LogRow::default()
            },
            Event::Losses {
                step,
                world: l,
                policy,
                ..
            } => {
                let p: Option<&PolicyLosses> = policy.as_ref();
                // Rows of steps without a policy update keep their columns, as NaN.
                let pf = |f: fn(&PolicyLosses) -> f32| Some(p.map_or(f32::NAN, f));
                LogRow {
                    kind: "loss",
                    step: *step,
                    wall_s,
                    consistency: Some(l.consistency),
                    reward_loss: Some(l.reward),
                    value_loss: Some(l.value),
                    policy_loss: pf(|p| p.total),
                    prior_fit: pf(|p| p.prior_fit),
                    world_grad_norm: Some(l.grad_norm),
                    policy_grad_norm: pf(|p| p.grad_norm),
                    ..LogRow::default()
                }
            }
            Event::Pretraining { .. } | Event::Pretrained { .. } => return None,
        })
    }
}

/// A CSV writer over `old` (a resumed run's log, header included) or a fresh log.
pub fn log_writer(old: Option<Vec<u8>>) -> csv::Result<csv::Writer<Vec<u8>>> {
    let fresh = old.is_none();
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(old.unwrap_or_default());
    if fresh {
        w.write_record(CSV_HEADER)?;
    }
    Ok(w)
}

/// Sentinel error that stops a run at `--time-limit` (its checkpoint is written as usual).
const TIME_LIMIT: &str = "time limit";

/// The methods asked for: each of `--method`, PO-MPC once per `--lambda`; an error for a
/// lambda given without PO-MPC, a bad lambda, or a setting named twice.
fn methods(a: &TrainArgs) -> Result<Vec<Method>> {
    let mut out: Vec<Method> = Vec::new();
    let lambdas: Vec<Option<f32>> = if a.lambda.is_empty() {
        vec![None]
    } else {
        a.lambda.iter().copied().map(Some).collect()
    };
    let any_pompc = a.method.iter().any(|m| matches!(m, MethodArg::PoMpc));
    for m in &a.method {
        let name = m.to_possible_value().expect("methods have names");
        let name = name.get_name();
        // Without PO-MPC among the methods, a lambda is refused by the method it is given to.
        let per_method = if matches!(m, MethodArg::PoMpc) || !any_pompc {
            lambdas.clone()
        } else {
            vec![None]
        };
        for l in per_method {
            let method = Method::parse(name, l)?;
            if out.contains(&method) {
                return Err(format!(
                    "{} is asked for twice: each setting's runs write their own files",
                    method.label()
                )
                .into());
            }
            out.push(method);
        }
    }
    Ok(out)
}

/// Train as asked: one run, or a population of runs (the methods' and seeds' combinations) on
/// one device, with one progress line for them all.
pub fn run(a: TrainArgs) -> Result {
    let methods = methods(&a)?;
    // Each seed writes its own files, named by the seed: a repeated seed would overwrite them.
    let mut sorted = a.seeds.clone();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!(
            "--seeds lists seed {} twice: each seed's run writes its own files",
            w[0]
        )
        .into());
    }
    let runs: Vec<(Method, u64)> = methods
        .iter()
        .flat_map(|&m| a.seeds.iter().map(move |&s| (m, s)))
        .collect();
    let gpu = Gpu::new(GpuOptions::default())?;
    if a.tensor_core_updates {
        // Before anything is written.
        gpu.tensor_cores()?;
    }
    std::fs::create_dir_all(&a.out).map_err(|e| format!("--out {}: {e}", a.out.display()))?;
    if let [(method, seed)] = runs[..] {
        let bars = MultiProgress::new();
        let pb = bar(&bars, a.steps, a.quiet);
        pb.set_prefix(format!("seed {seed}"));
        return one(&a, &gpu, method, seed, &Progress::One(pb));
    }
    population(&a, &gpu, &runs)
}

/// Several runs as one `pompc::train::Population`: they plan together (and update together)
/// where they can, else on threads; checkpoints and logs per run as for one.
fn population(a: &TrainArgs, gpu: &Gpu, runs: &[(Method, u64)]) -> Result {
    let line = PopulationLine::new(runs, a.steps, a.quiet);
    let mut trainers = Vec::with_capacity(runs.len());
    let mut logs = Vec::with_capacity(runs.len());
    for (i, &(method, seed)) in runs.iter().enumerate() {
        let (t, l) = open(a, gpu, method, seed, &Progress::Member(&line, i))?;
        trainers.push(t);
        logs.push(l);
    }
    let mut population = Population::new(trainers)?;
    let how = match (population.shares_plan_steps(), population.shares_updates()) {
        (Ok(()), Ok(())) => "plan steps and updates shared".to_string(),
        (Ok(()), Err(why)) => format!(
            "plan steps shared, updates in {} groups ({why})",
            population.update_groups().len()
        ),
        (Err(why), _) => format!("on threads ({why})"),
    };
    say(
        &line.bar,
        &format!(
            "{} runs as one population on {}: {how}",
            runs.len(),
            gpu.describe()
        ),
    );
    let logs = Mutex::new(logs);
    let t0 = std::time::Instant::now();
    let (mut stop, mut saved) = (false, false);
    let at = |p: &Population| p.agents().iter().map(Trainer::step).min().unwrap_or(0);
    while at(&population) < a.steps && !stop {
        let chunk = chunk_end(at(&population), a.checkpoint_every, a.steps);
        let res = population.run(chunk, &|i, e| {
            let mut logs = logs.lock().unwrap_or_else(|p| p.into_inner());
            logs[i].event(
                e,
                t0.elapsed().as_secs_f64(),
                a,
                &Progress::Member(&line, i),
            )
        });
        stop = stopped(res)?;
        let mut logs = logs.lock().unwrap_or_else(|p| p.into_inner());
        for (l, t) in logs.iter_mut().zip(population.agents()) {
            l.save(t)?;
        }
        saved = true;
    }
    let secs = t0.elapsed().as_secs_f64();
    let logs = logs.into_inner().unwrap_or_else(|p| p.into_inner());
    // Where each run ended (events move the line only at episode ends and loss reads).
    for (i, (l, t)) in logs.iter().zip(population.agents()).enumerate() {
        let rate = (t.step() - l.start) as f64 / secs.max(1e-9);
        Progress::Member(&line, i).at(l.start, t.step(), rate, l.last_ret, l.last_eval);
    }
    line.bar.finish_and_clear();
    eprintln!("{}", line.line());
    for (l, t) in logs.iter().zip(population.agents()) {
        l.finish(t, secs, saved, stop)?;
    }
    Ok(())
}

/// Where the next chunk of a run ends: at the next multiple of `every` (0: the end).
fn chunk_end(step: usize, every: usize, steps: usize) -> usize {
    match step.checked_div(every) {
        Some(k) => ((k + 1) * every).min(steps),
        None => steps,
    }
}

/// Whether a chunk stopped at the time limit (`Ok(true)`), ran through, or failed.
fn stopped(res: pompc::Result<()>) -> Result<bool> {
    match res {
        Ok(()) => Ok(false),
        // A population names the agent before the message.
        Err(pompc::Error::InvalidArgument(m)) if m.ends_with(TIME_LIMIT) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// A progress bar of `steps` steps: position, ETA and a message; hidden with `--quiet` (and
/// by indicatif when stderr is not a terminal).
fn bar(bars: &MultiProgress, steps: usize, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = bars.add(ProgressBar::new(steps as u64));
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} ETA {eta:<4} {msg}")
            .expect("valid template")
            .progress_chars("#>-"),
    );
    pb
}

/// Where a run is, for the population's line.
#[derive(Clone, Copy)]
struct RunState {
    start: usize,
    step: usize,
    last_ret: f32,
    last_eval: f32,
}

/// Several runs at once: one line with the steps of all, their aggregate rate and the spread
/// of their last returns.
struct PopulationLine {
    bar: ProgressBar,
    runs: Mutex<Vec<RunState>>,
    steps: usize,
    t0: std::time::Instant,
}

impl PopulationLine {
    fn new(runs: &[(Method, u64)], steps: usize, quiet: bool) -> PopulationLine {
        let bar = bar(&MultiProgress::new(), steps * runs.len(), quiet);
        bar.set_prefix(format!("{} runs", runs.len()));
        let state = RunState {
            start: 0,
            step: 0,
            last_ret: f32::NAN,
            last_eval: f32::NAN,
        };
        PopulationLine {
            bar,
            runs: Mutex::new(vec![state; runs.len()]),
            steps,
            t0: std::time::Instant::now(),
        }
    }

    /// Record where run `i` is and redraw the line.
    fn update(&self, i: usize, f: impl FnOnce(&mut RunState)) {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut runs[i]);
        let done: usize = runs.iter().map(|r| r.step).sum();
        drop(runs);
        self.bar.set_position(done as u64);
        self.bar.set_message(self.line());
    }

    /// Aggregate steps/s since the start, and min/mean/max of the runs' last returns and
    /// evaluations (over the runs that have one).
    fn line(&self) -> String {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let new: usize = runs.iter().map(|r| r.step - r.start).sum();
        let rate = new as f64 / self.t0.elapsed().as_secs_f64().max(1e-9);
        let spread = |v: Vec<f32>| {
            let v: Vec<f32> = v.into_iter().filter(|x| x.is_finite()).collect();
            if v.is_empty() {
                return "-".to_string();
            }
            let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mean = v.iter().sum::<f32>() / v.len() as f32;
            format!("{lo:.1}/{mean:.1}/{hi:.1}")
        };
        let finished = runs.iter().filter(|r| r.step >= self.steps).count();
        format!(
            "{rate:.0} steps/s in all, {finished}/{} done, return min/mean/max {}, eval {}",
            runs.len(),
            spread(runs.iter().map(|r| r.last_ret).collect()),
            spread(runs.iter().map(|r| r.last_eval).collect()),
        )
    }
}

/// How a run shows its progress: its own bar, or its part of a population's line.
enum Progress<'p> {
    One(ProgressBar),
    Member(&'p PopulationLine, usize),
}

impl Progress<'_> {
    /// Print a line above the bar.
    fn say(&self, line: &str) {
        match self {
            Progress::One(pb) => say(pb, line),
            Progress::Member(p, _) => say(&p.bar, line),
        }
    }

    /// Where the run is now.
    fn at(&self, start: usize, step: usize, rate: f64, last_ret: f32, last_eval: f32) {
        match self {
            Progress::One(pb) => {
                pb.set_position(step as u64);
                pb.set_message(format!(
                    "{rate:.0} steps/s  return {last_ret:.1}  eval {last_eval:.1}"
                ));
            }
            Progress::Member(p, i) => p.update(*i, |r| {
                *r = RunState {
                    start,
                    step,
                    last_ret,
                    last_eval,
                }
            }),
        }
    }

    fn finish(&self) {
        if let Progress::One(pb) = self {
            pb.finish_and_clear();
        }
    }
}

/// A run's files and what its log and progress keep between events.
struct RunLog {
    /// Names the run in its messages (several may print between the same lines).
    label: String,
    title: String,
    ckpt: String,
    csv_path: String,
    svg: String,
    /// The log is kept in memory and written whole (atomically) with each checkpoint, so it
    /// always matches the checkpoint that a resumed run continues from.
    log: csv::Writer<Vec<u8>>,
    start: usize,
    steps: usize,
    seed_steps: usize,
    last_ret: f32,
    last_eval: f32,
    /// The step of the last episode end: a stop there (or in a pre-training right after it)
    /// loses no partial episode.
    last_episode_end: Option<usize>,
    /// When and at which step the loop of one update per step began (after pre-training).
    loop_start: Option<(f64, usize)>,
}

/// The configuration of one run from the options.
fn config(
    a: &TrainArgs,
    gpu: &Gpu,
    env: &dyn pompc::env::Env,
    method: Method,
    seed: u64,
) -> Result<TrainConfig> {
    let mut cfg = if a.quick {
        TrainConfig::quick(env, method, a.steps, seed)
    } else {
        TrainConfig::new(env, method, a.steps, seed)
    }?;
    if let Some(m) = a.model {
        cfg.model = m;
    }
    if let Some(e) = a.eval_every {
        cfg.eval_every = e;
    }
    if let Some(n) = a.seed_steps {
        cfg.seed_steps = n;
    }
    if let Some(e) = a.eval_episodes {
        cfg.eval_episodes = e;
    }
    if let Some(p) = a.precision {
        cfg.planner_precision = p.on(gpu);
    }
    if a.tensor_core_updates {
        cfg.update.tensor_cores = true;
        cfg.policy.tensor_cores = true;
    }
    Ok(cfg)
}

/// A run's trainer (fresh, or resumed from its checkpoint) and its log.
fn open<'g>(
    a: &TrainArgs,
    gpu: &'g Gpu,
    method: Method,
    seed: u64,
    progress: &Progress,
) -> Result<(Trainer<'g>, RunLog)> {
    let env_name = a.env_name.as_str();
    let env = pompc::env::make(env_name)?;
    let cfg = config(a, gpu, env.as_ref(), method, seed)?;
    let stem = a.out.join(format!("{env_name}-{}-s{seed}", method.slug()));
    let path = |ext: &str| format!("{}.{ext}", stem.display());
    let ckpt = path("ckpt.safetensors");
    let eval_env = pompc::env::make(env_name)?;
    let trainer = if a.resume {
        Trainer::resume(gpu, env, eval_env, cfg, &ckpt)
    } else {
        Trainer::new(gpu, env, eval_env, cfg)
    }?;
    progress.say(&format!(
        "{} on {env_name}, {} steps, seed {seed}, from step {} | {}",
        method.label(),
        a.steps,
        trainer.step(),
        gpu.describe()
    ));
    let csv_path = path("csv");
    let old = match std::fs::read(&csv_path) {
        Ok(old) if a.resume => Some(old),
        Err(e) if a.resume && e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("{csv_path}: {e}").into());
        }
        _ => None,
    };
    let log = log_writer(old).map_err(|e| format!("{csv_path}: {e}"))?;
    let start = trainer.step();
    progress.at(start, start, 0.0, f32::NAN, f32::NAN);
    let seed_steps = trainer.config().seed_steps;
    Ok((
        trainer,
        RunLog {
            label: format!("{}, seed {seed}", method.label()),
            title: format!("{env_name}, {}, seed {seed}", method.label()),
            ckpt,
            csv_path,
            svg: path("svg"),
            log,
            start,
            steps: a.steps,
            seed_steps,
            last_ret: f32::NAN,
            last_eval: f32::NAN,
            // A resumed run starts a fresh episode.
            last_episode_end: Some(start),
            loop_start: None,
        },
    ))
}

impl RunLog {
    /// Log event `e` of the run at `w` seconds and move its progress; the time limit's error
    /// at the first episode end after `--time-limit`, or at the first report of a
    /// pre-training that follows an episode end (the checkpoint keeps its progress).
    fn event(
        &mut self,
        e: &Event,
        w: f64,
        a: &TrainArgs,
        progress: &Progress,
    ) -> pompc::Result<()> {
        match e {
            Event::Episode { ret, step, .. } => {
                self.last_ret = *ret;
                self.last_episode_end = Some(*step);
            }
            Event::Pretraining { .. } => {}
            Event::Eval { mean, .. } => self.last_eval = *mean,
            Event::Pretrained { updates, seconds } => {
                self.loop_start = Some((w, self.seed_steps));
                if !a.quiet {
                    progress.say(&format!(
                        "{}: {updates} pre-training updates in {seconds:.1} s",
                        self.label
                    ));
                }
            }
            Event::Losses { .. } => {}
        }
        if let Some(row) = LogRow::of(e, w) {
            let csv = &self.csv_path;
            self.log
                .serialize(row)
                .map_err(|err| pompc::Error::InvalidArgument(format!("{csv}: {err}")))?;
        }
        // The bar moves at episode ends and at each loss read-back (every `log_every`
        // updates), so long episodes still show progress.
        if let Event::Episode { step, .. } | Event::Losses { step, .. } = e {
            let rate = (*step - self.start) as f64 / w.max(1e-9);
            progress.at(self.start, *step, rate, self.last_ret, self.last_eval);
        }
        let at_episode_end = match e {
            Event::Episode { .. } => true,
            Event::Pretraining { step, .. } => self.last_episode_end == Some(*step),
            _ => false,
        };
        if at_episode_end && a.time_limit.is_some_and(|l| w > l) {
            return Err(pompc::Error::InvalidArgument(TIME_LIMIT.into()));
        }
        Ok(())
    }

    /// The checkpoint and the log that matches it.
    fn save(&mut self, trainer: &Trainer) -> Result {
        trainer.save(&self.ckpt)?;
        let csv = &self.csv_path;
        self.log.flush().map_err(|e| format!("{csv}: {e}"))?;
        pompc::fs::write_atomic(csv, self.log.get_ref())?;
        Ok(())
    }

    /// The run's summary lines and its chart, after `secs` seconds.
    fn finish(&self, trainer: &Trainer, secs: f64, saved: bool, stop: bool) -> Result {
        let run = &self.label;
        let done = trainer.step() - self.start;
        eprintln!(
            "{run}: {done} steps in {secs:.1} s ({:.1} steps/s); {}{}",
            done as f64 / secs.max(1e-9),
            if saved {
                format!("checkpoint {}", self.ckpt)
            } else {
                format!(
                    "no checkpoint written: the run was already at step {} of {}",
                    trainer.step(),
                    self.steps
                )
            },
            if stop {
                " (time limit: --resume continues)"
            } else {
                ""
            }
        );
        if let Some((t, s0)) = self.loop_start
            && trainer.step() > s0
        {
            eprintln!(
                "{run}: loop after pre-training: {} steps in {:.1} s ({:.1} steps/s, plan + \
                 update + simulation + evaluations)",
                trainer.step() - s0,
                secs - t,
                (trainer.step() - s0) as f64 / (secs - t)
            );
        }
        let chart = trainer.curve(&self.title);
        crate::plot::warn_non_finite(&chart, &self.svg);
        chart.save(&self.svg)?;
        println!("log {}, curve {}", self.csv_path, self.svg);
        Ok(())
    }
}

/// One run: train, log, checkpoint, chart.
fn one(a: &TrainArgs, gpu: &Gpu, method: Method, seed: u64, progress: &Progress) -> Result {
    let (mut trainer, mut log) = open(a, gpu, method, seed, progress)?;
    if let Progress::One(pb) = progress {
        pb.reset_eta();
    }
    let t0 = std::time::Instant::now();
    let (mut stop, mut saved) = (false, false);
    while trainer.step() < a.steps && !stop {
        let chunk = chunk_end(trainer.step(), a.checkpoint_every, a.steps);
        let res = trainer.run(chunk, &mut |e: &Event| {
            log.event(e, t0.elapsed().as_secs_f64(), a, progress)
        });
        stop = stopped(res)?;
        log.save(&trainer)?;
        saved = true;
    }
    let secs = t0.elapsed().as_secs_f64();
    let rate = (trainer.step() - log.start) as f64 / secs.max(1e-9);
    progress.at(log.start, trainer.step(), rate, log.last_ret, log.last_eval);
    progress.finish();
    log.finish(&trainer, secs, saved, stop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pompc::train::UpdateLosses;

    fn text(w: csv::Writer<Vec<u8>>) -> String {
        String::from_utf8(w.into_inner().unwrap()).unwrap()
    }

    #[test]
    fn the_header_names_the_rows_fields() {
        // serde's header for a row is the one a fresh log starts with.
        let mut w = csv::Writer::from_writer(Vec::new());
        w.serialize(LogRow::default()).unwrap();
        let serde_header = text(w).lines().next().unwrap().to_string();
        assert_eq!(serde_header, CSV_HEADER.join(","));
    }

    #[test]
    fn rows_keep_their_columns() {
        let mut w = log_writer(None).unwrap();
        let ep = Event::Episode {
            step: 500,
            episode: 1,
            ret: 12.5,
        };
        let ev = Event::Eval {
            step: 1000,
            mean: f32::NAN,
            returns: vec![f32::NAN],
        };
        let world = UpdateLosses {
            consistency: 0.25,
            reward: 1.5,
            value: 2.0,
            total: 3.75,
            grad_norm: 4.0,
        };
        let loss = Event::Losses {
            step: 1002,
            updates: 3,
            world,
            policy: None,
        };
        for (e, t) in [(&ep, 1.234), (&ev, 2.0), (&loss, 3.456)] {
            w.serialize(LogRow::of(e, t).unwrap()).unwrap();
        }
        let pre = Event::Pretrained {
            updates: 1,
            seconds: 0.5,
        };
        assert!(LogRow::of(&pre, 0.0).is_none());
        let t = text(w);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[1], "train,500,1,1.23,12.5,,,,,,,");
        assert_eq!(lines[2], "eval,1000,,2.0,NaN,,,,,,,");
        assert_eq!(lines[3], "loss,1002,,3.46,,0.25,1.5,2.0,NaN,NaN,4.0,NaN");
        // A resumed log goes on without a second header.
        let mut w = log_writer(Some(t.clone().into_bytes())).unwrap();
        w.serialize(LogRow::of(&ep, 9.0).unwrap()).unwrap();
        let again = text(w);
        assert_eq!(again.matches("kind,step").count(), 1);
        assert!(again.ends_with("train,500,1,9.0,12.5,,,,,,,\n"), "{again}");
    }
}
