//! Plans with the Rust API from files: the reference of the Python bindings' parity test
//! (`python/tests/test_planner.py`), which writes the weights and observations, runs this
//! and compares the Python planner's plans with these.
//!
//! ```sh
//! cargo run --release --example plan_reference -- WEIGHTS OBS FIRST BATCH OUT [KEY=VALUE ...]
//! ```
//!
//! `OBS` holds `calls x BATCH x obs_dim` little-endian f32, `FIRST` `calls x BATCH` bytes (1:
//! first step), one plan call per block. For each call `OUT` gets, as little-endian f32: the
//! actions `[B, A]`, the mean and std over the horizon `[B, T, A]` each, the values `[B]` and
//! the chosen samples `[B]`. Settings start from `PlannerConfig::tdmpc2`; keys: horizon,
//! num_samples, num_elites, num_pi_trajs, iterations, min_std, max_std, temperature,
//! discount, seed, plan_mode (train, eval), mode (elite-mppi, mppi, cem), mppi_lambda.

use pompc::model::{Weights, WorldModel};
use pompc::planner::{PlanMode, Planner, PlannerConfig, PlannerMode};
use pompc::{Error, Result};

fn bad(m: impl Into<String>) -> Error {
    Error::InvalidArgument(m.into())
}

fn num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T> {
    v.parse()
        .map_err(|_| bad(format!("{key}={v}: not a number of the right kind")))
}

fn read(path: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.into(),
        source,
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        return Err(bad(
            "usage: plan_reference WEIGHTS OBS FIRST BATCH OUT [KEY=VALUE ...]",
        ));
    }
    let weights = Weights::load(&args[0])?;
    let obs: Vec<f32> = read(&args[1])?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let first: Vec<bool> = read(&args[2])?.iter().map(|&b| b != 0).collect();
    let batch: usize = num("BATCH", &args[3])?;
    let (o, a) = (weights.spec.obs_dim, weights.spec.action_dim);
    let mut cfg = PlannerConfig::tdmpc2(a);
    let mut mode = None;
    let mut lambda = 1.0;
    for kv in &args[5..] {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| bad(format!("{kv}: KEY=VALUE")))?;
        match k {
            "horizon" => cfg.horizon = num(k, v)?,
            "num_samples" => cfg.num_samples = num(k, v)?,
            "num_elites" => cfg.num_elites = num(k, v)?,
            "num_pi_trajs" => cfg.num_pi_trajs = num(k, v)?,
            "iterations" => cfg.iterations = num(k, v)?,
            "min_std" => cfg.min_std = num(k, v)?,
            "max_std" => cfg.max_std = num(k, v)?,
            "temperature" => cfg.temperature = num(k, v)?,
            "discount" => cfg.discount = num(k, v)?,
            "seed" => cfg.seed = num(k, v)?,
            "mppi_lambda" => lambda = num(k, v)?,
            "mode" => mode = Some(v.to_string()),
            "plan_mode" => {
                cfg.plan_mode = match v {
                    "train" => PlanMode::Train,
                    "eval" => PlanMode::Eval,
                    _ => return Err(bad(format!("plan_mode {v}"))),
                }
            }
            _ => return Err(bad(format!("unknown key {k}"))),
        }
    }
    if let Some(m) = mode {
        cfg.mode = match m.as_str() {
            "elite-mppi" => PlannerMode::EliteMppi,
            "mppi" => PlannerMode::Mppi { lambda },
            "cem" => PlannerMode::Cem,
            _ => return Err(bad(format!("mode {m}"))),
        };
    }
    if batch == 0 || first.is_empty() || !first.len().is_multiple_of(batch) {
        return Err(bad("FIRST must hold calls x BATCH bytes"));
    }
    let calls = first.len() / batch;
    if obs.len() != calls * batch * o {
        return Err(bad(format!(
            "OBS holds {} values, {calls} calls x {batch} x {o} expected",
            obs.len()
        )));
    }
    let gpu = pompc::Gpu::new(Default::default())?;
    let model = WorldModel::new(&gpu, &weights)?;
    let mut planner = Planner::new(&gpu, &model, cfg)?;
    let mut out = Vec::new();
    for c in 0..calls {
        let plan = planner.plan(
            &obs[c * batch * o..(c + 1) * batch * o],
            &first[c * batch..(c + 1) * batch],
        )?;
        let (mean, std) = planner.last_distribution()?;
        out.extend(plan.action);
        out.extend(mean);
        out.extend(std);
        out.extend(plan.value);
        out.extend(plan.chosen.iter().map(|&c| c as f32));
    }
    let bytes: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&args[4], bytes).map_err(|source| Error::Io {
        path: args[4].clone(),
        source,
    })?;
    eprintln!(
        "{calls} plans for {batch} environments on {}",
        gpu.info().name
    );
    Ok(())
}
