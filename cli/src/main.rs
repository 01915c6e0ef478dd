//! pompc's command line: `pompc info`, `pompc bench ...`, `pompc train`, `pompc plot`.
//!
//! Argument parsing, tables, JSON rows, CSV logs and progress bars live here; the work itself
//! (benchmark drivers, the trainer, charts) is the `pompc` library's.

mod bench;
mod info;
mod output;
mod plot;
mod train;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

const ENVIRONMENT: &str = "\
Environment:
  WGPU_BACKEND          vulkan, metal, dx12, gl
  WGPU_ADAPTER_NAME     a substring of the adapter's name
  WGPU_POWER_PREF       low, high
  POMPC_PRECISION       auto, f32, f16, coop: the world model's default precision
  POMPC_LIMITS          downlevel: ask for wgpu's downlevel limits instead of the adapter's
  POMPC_BENCH_TARGET_S  seconds of back-to-back work per timed run (default 0.002)
  POMPC_GROUPED_ROLLOUT 1: each rollout step launches the dynamics and reward layers (but
                        their last) once for both networks
  POMPC_SHADER_DIR      read shaders/NAME.wgsl from DIR/NAME.wgsl where that file exists
                        (kernel work on a machine without a Rust toolchain)";

/// Hand-written WGSL kernels for MPPI planning and PO-MPC learning with latent world models.
#[derive(Parser)]
#[command(name = "pompc", version, after_help = ENVIRONMENT, disable_help_subcommand = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Every adapter: backend, driver, type, features, limits.
    Info(info::InfoArgs),
    /// Time kernels and end-to-end steps (every case in one table without a subcommand).
    Bench(bench::BenchArgs),
    /// Train an agent (algorithm.md a.5) with a progress bar, a CSV log and a learning curve.
    Train(train::TrainArgs),
    /// Draw the learning curves of runs into one SVG.
    Plot(plot::PlotArgs),
    /// Help for every command (the whole tree), or for the command named.
    Help {
        /// A command path, e.g. `bench plan`.
        command: Vec<String>,
    },
}

/// A failed command: its message, printed after `error: `.
#[derive(Debug)]
pub struct Failure(String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure(s)
    }
}

impl From<&str> for Failure {
    fn from(s: &str) -> Self {
        Failure(s.to_string())
    }
}

impl From<pompc::Error> for Failure {
    fn from(e: pompc::Error) -> Self {
        Failure(e.to_string())
    }
}

/// What the commands return.
pub type Result<T = ()> = std::result::Result<T, Failure>;

fn main() -> ExitCode {
    // Bad arguments end here with clap's message and exit status 2.
    let cli = Cli::parse();
    let res = match cli.command {
        Some(Command::Info(a)) => info::run(&a),
        Some(Command::Bench(a)) => bench::run(a),
        Some(Command::Train(a)) => train::run(a),
        Some(Command::Plot(a)) => plot::run(&a),
        Some(Command::Help { command }) => help(&command),
        None => help(&[]),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `pompc help [COMMAND...]`: without a command, the help of every command, so one page
/// lists every option; with one, that command's long help.
fn help(path: &[String]) -> Result {
    let mut cmd = Cli::command();
    cmd.build();
    if path.is_empty() {
        print_tree(&mut cmd);
        return Ok(());
    }
    let mut at = &mut cmd;
    for name in path {
        at = at
            .find_subcommand_mut(name)
            .ok_or_else(|| format!("no command {:?}; `pompc help` lists them", path.join(" ")))?;
    }
    println!("{}", at.render_long_help());
    Ok(())
}

fn print_tree(cmd: &mut clap::Command) {
    println!("{}", cmd.render_help());
    for sub in cmd.get_subcommands_mut() {
        if sub.get_name() == "help" {
            continue;
        }
        println!(
            "\n──── {} ────",
            sub.get_bin_name().unwrap_or(sub.get_name())
        );
        print_tree(sub);
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::{CommandFactory, Parser};

    #[test]
    fn the_command_line_is_consistent() {
        // clap's own checks: no clashing names, defaults that parse, and so on.
        Cli::command().debug_assert();
    }

    #[test]
    fn the_documented_command_lines_parse() {
        // As scripts/device/*.sh, README.md, BENCHMARKS.md and RESULTS.md run them.
        for line in [
            "info --probe",
            "bench --runs 3",
            "bench all --json --ceiling-tflops 66.9",
            "bench linear --sweep --json",
            "bench linear --shape 2048x2048x2048 --runs 5",
            "bench linear --shape 131072x512x512 --ln --act mish --runs 30",
            "bench linear --shape 131072x101x512 --precision coop --sweep",
            "bench linear --precision f32,f16,coop --case planner",
            "bench model --runs 30 --size 5 --obs 223 --act 38 --rows 512",
            "bench plan --batch 1 --act 6 --runs 1 --warmup 1",
            "bench plan --precision coop,f32,coop,f32 --batch 16,1 --act 6 --runs 40 --warmup 10",
            "bench plan --compare-precision --batch 1,256 --act 6 --calls 3",
            "bench plan --profile --batch 256 --act 6",
            "bench gemm --coop --sweep",
            "bench update --batch 16,256 --runs 1 --warmup 1",
            "bench policy --preset pompc --runs 20 --warmup 5",
            "bench policy --preset tdmpc2,bmpc,tdmpc-square --lambda 9 --batch 64",
            "bench mppi --samples 128,16384 --runs 50 --checked --horizon 100",
            "train --env pendulum-swingup --method po-mpc --lambda 1 --precision coop --model 5 \
             --steps 4000 --eval-every 0 --out x --quiet",
            "train --env cartpole-swingup --method tdmpc2 --seeds 0,1,2 --model small --steps 9 \
             --eval-every 5000 --time-limit 540 --out runs --quiet --resume",
            "train --quick --seed 3 --seed-steps 500 --eval-episodes 2 --checkpoint-every 100",
            "train --method TD-MPC2",
            "plot --out f.svg --title T --train a.csv b.csv",
        ] {
            let args = line.split_whitespace();
            if let Err(e) = Cli::try_parse_from(std::iter::once("pompc").chain(args)) {
                panic!("pompc {line}: {e}");
            }
        }
    }
}
