//! The C and C++ examples, built with the system's compilers against the library that cargo
//! built for this test (target/<profile>/deps/libpompc_c.so) and run on whatever adapter is found
//! (lavapipe in CI): diff_drive.c must reach its goal, plan.cpp must print the actions that
//! the Rust planner computes from the same weights and observations, and diff_drive.c must
//! run under valgrind without leaks or invalid accesses (and a forgotten destroy must show
//! up as a leak, so the check is known to bite).

use pompc::model::{ModelSpec, Weights, WorldModel};
use pompc::planner::{PlanMode, Planner, PlannerConfig};
use pompc::{Gpu, GpuOptions};
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The folder holding the libpompc_c that cargo built for this test: target/<profile>/deps,
/// beside this test's executable. Cargo copies the library up to target/<profile> only when
/// it is built directly (`cargo build`), not as a dependency of a test, so on a fresh clone
/// `cargo test` leaves it in deps/ alone, and a copy in target/<profile> may be stale.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().to_path_buf();
    let lib = dir.join(format!(
        "{}pompc_c{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(
        lib.exists(),
        "{} is missing: cargo builds it with this test (crate-type cdylib)",
        lib.display()
    );
    dir
}

fn capi_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Compile one example (once per test binary) and return the executable.
fn build(source: &str, compiler: &str, flags: &[&str]) -> PathBuf {
    build_from(&capi_dir().join("examples").join(source), compiler, flags)
}

/// Compile a C or C++ source against the library.
fn build_from(source: &Path, compiler: &str, flags: &[&str]) -> PathBuf {
    let name = source.file_name().unwrap().to_str().unwrap();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name.replace('.', "_"));
    let lib = lib_dir();
    let mut cmd = Command::new(compiler);
    cmd.args(flags)
        .args(["-Wall", "-Wextra", "-Werror", "-pedantic", "-I"])
        .arg(capi_dir().join("include"))
        .arg(source)
        .arg("-L")
        .arg(&lib)
        .args(["-lpompc_c", "-lm"])
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&out);
    let r = cmd
        .output()
        .unwrap_or_else(|e| panic!("{compiler} could not run ({e}): install gcc and g++"));
    assert!(
        r.status.success(),
        "{compiler} failed on {name}:\n{}",
        String::from_utf8_lossy(&r.stderr)
    );
    out
}

fn diff_drive() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| build("diff_drive.c", "gcc", &["-std=c99"]))
}

fn plan_cpp() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| build("plan.cpp", "g++", &["-std=c++17"]))
}

fn run(cmd: &mut Command) -> (Output, String) {
    let r = cmd.output().unwrap();
    let text = format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        r.status,
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    (r, text)
}

#[test]
fn diff_drive_c_reaches_the_goal() {
    let (r, text) = run(&mut Command::new(diff_drive()));
    assert_eq!(r.status.code(), Some(0), "{text}");
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains("reached the goal at step"), "{text}");
    assert!(out.contains("no collision"), "{text}");
}

#[test]
fn diff_drive_c_solves_the_rust_problem() {
    let (r, text) = run(Command::new(diff_drive()).arg("--print-wgsl"));
    assert!(r.status.success(), "{text}");
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        pompc::planner::problems::diff_drive().wgsl,
        "capi/examples/diff_drive_problem.h's WGSL is not planner::problems::diff_drive()'s"
    );
}

/// plan.cpp's observation generator (xorshift64*, 24 bits per value).
struct Xorshift(u64);

impl Xorshift {
    fn new(seed: u64) -> Self {
        Xorshift(seed.wrapping_mul(0x9E3779B97F4A7C15).wrapping_add(1))
    }
    fn uniform(&mut self) -> f32 {
        let s = &mut self.0;
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        let x = s.wrapping_mul(0x2545F4914F6CDD1D);
        ((x >> 40) as f64 / 16777216.0 * 2.0 - 1.0) as f32
    }
}

/// A tiny model with random reward and Q heads (TD-MPC2 starts them at zero, which would
/// make every sample's value the same), saved for plan.cpp.
fn tiny_weights(seed: u64, obs_dim: usize, act: usize) -> PathBuf {
    let mut w = Weights::init(&ModelSpec::tiny(obs_dim, act), seed).unwrap();
    let mut r = Xorshift::new(seed + 1);
    for name in ["_reward.2.weight", "_Qs.params.2.weight"] {
        let t = w.tensors.get_mut(name).unwrap();
        t.data.iter_mut().for_each(|v| *v = 0.05 * r.uniform());
    }
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("plan_cpp_{seed}_{obs_dim}_{act}.safetensors"));
    w.save(&path).unwrap();
    path
}

#[test]
fn plan_cpp_prints_the_rust_planners_actions() {
    let seed = RandomState::new().hash_one(0u8) % 1_000_000;
    let (obs_dim, act, batch) = (7, 3, 2);
    let path = tiny_weights(seed, obs_dim, act);

    let (out, text) = run(Command::new(plan_cpp())
        .arg(&path)
        .arg(seed.to_string())
        .arg(batch.to_string()));
    assert!(out.status.success(), "seed {seed}: {text}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("expected error: POMPC_STATUS_IO: no-such-file.safetensors"),
        "{text}"
    );
    let printed: Vec<Vec<f32>> = stdout
        .lines()
        .filter(|l| l.starts_with("action "))
        .map(|l| {
            let (_, v) = l.split_once(':').unwrap();
            v.split_whitespace().map(|x| x.parse().unwrap()).collect()
        })
        .collect();
    assert_eq!(printed.len(), 3 * batch, "{text}");

    // The same three calls through the Rust API.
    let gpu = Gpu::new(GpuOptions::default()).unwrap();
    let model = WorldModel::new(&gpu, &Weights::load(&path).unwrap()).unwrap();
    let mut cfg = PlannerConfig::tdmpc2(act);
    cfg.num_samples = 64;
    cfg.num_elites = 8;
    cfg.num_pi_trajs = 8;
    cfg.iterations = 2;
    cfg.plan_mode = PlanMode::Eval;
    let mut planner = Planner::new(&gpu, &model, cfg).unwrap();
    let mut rng = Xorshift::new(seed);
    let mut obs = vec![0.0f32; batch * obs_dim];
    for call in 0..3 {
        obs.iter_mut().for_each(|o| *o = rng.uniform());
        let plan = planner.plan(&obs, &vec![call == 0; batch]).unwrap();
        for b in 0..batch {
            let c = &printed[call * batch + b];
            let rust = plan.action(b);
            assert_eq!(c.len(), act, "{text}");
            for (j, (x, y)) in c.iter().zip(rust).enumerate() {
                assert!(x.is_finite(), "seed {seed}: call {call} env {b}: {x}");
                assert!(
                    (x - y).abs() <= 1e-6 * (1.0 + y.abs()),
                    "seed {seed}: call {call} env {b} action {j}: C++ {x}, Rust {y}\n{text}"
                );
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

fn valgrind(exe: &Path, args: &[&str]) -> (Output, String) {
    // One at a time: two slowed-down lavapipes on two cores can run past a GPU wait timeout.
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    run(Command::new("valgrind")
        .args([
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,possible",
            "--error-exitcode=99",
        ])
        .arg(format!(
            "--suppressions={}",
            capi_dir().join("valgrind.supp").display()
        ))
        .arg(exe)
        .args(args))
}

/// Valgrind's verdict on a run: no errors, no leak.
fn assert_clean(r: &Output, text: &str) {
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("ERROR SUMMARY: 0 errors"),
        "valgrind found errors (install valgrind if it did not run):\n{text}"
    );
    assert!(
        err.contains("definitely lost: 0 bytes") || err.contains("All heap blocks were freed"),
        "{text}"
    );
}

#[test]
fn plan_cpp_under_valgrind_has_no_leak_or_bad_access() {
    // The smallest planner (--tiny: one call of 8 samples, horizon 1, 1 iteration) on a tiny
    // model: a plan step is a few hundred dispatches, and under valgrind lavapipe takes
    // about a minute for this one.
    let path = tiny_weights(7, 5, 2);
    let (r, text) = valgrind(plan_cpp(), &["--tiny", path.to_str().unwrap(), "3", "1"]);
    assert_clean(&r, &text);
    assert_eq!(r.status.code(), Some(0), "{text}");
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("value 0:"),
        "{text}"
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn diff_drive_c_under_valgrind_has_no_leak_or_bad_access() {
    // Small (lavapipe under valgrind runs about 50 times slower): 32 samples, 3 steps,
    // horizon 10, so the goal is not reached (exit status 3) but every call runs.
    let (r, text) = valgrind(diff_drive(), &["32", "3", "10"]);
    assert_clean(&r, &text);
    assert_eq!(r.status.code(), Some(3), "{text}");

    // The same with pompc_mppi_destroy skipped: the controller (and the device it holds)
    // must be reported lost, or this check could not catch a leak in pompc's own code.
    let (r, text) = valgrind(diff_drive(), &["--leak", "32", "3", "10"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(99), "{text}");
    // Valgrind's report: records separated by empty "==PID==" lines.
    let mut records = vec![String::new()];
    for line in err.lines() {
        let body = line.split_once("== ").map_or("", |(_, b)| b);
        if body.trim().is_empty() {
            records.push(String::new());
        } else {
            records.last_mut().unwrap().push_str(&format!("{body}\n"));
        }
    }
    let lost = records.iter().any(|r| {
        r.lines()
            .next()
            .is_some_and(|l| l.contains("definitely lost in loss record"))
            && r.contains("pompc_mppi_create")
    });
    assert!(
        lost,
        "the forgotten controller was not reported as definitely lost:\n{text}"
    );
}

#[test]
fn mppi_bench_c_builds_and_times_steps() {
    // The H100 measurement (scripts/device/capi_bench.sh) runs it in full; here a few steps.
    let exe = build("mppi_bench.c", "gcc", &["-std=c99"]);
    let (r, text) = run(Command::new(exe).args(["-r", "3", "-w", "0", "16"]));
    assert!(r.status.success(), "{text}");
    let out = String::from_utf8_lossy(&r.stdout);
    let row: Vec<f64> = out
        .lines()
        .find(|l| l.trim_start().starts_with("16 "))
        .unwrap_or_else(|| panic!("no row for 16 samples:\n{text}"))
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    // samples, median, p90, min: ordered, positive.
    assert!(
        row.len() == 4 && row[3] > 0.0 && row[3] <= row[1] && row[1] <= row[2],
        "{text}"
    );
}

/// pompc.hpp: exceptions carry the status and message, each handle is destroyed exactly once
/// through moves (construction, assignment, self-assignment, a reallocating vector), and a
/// moved-from object throws instead of crashing (tests/wrappers.cpp, the destroy functions
/// counted through -Wl,--wrap).
#[test]
fn cpp_wrappers_free_each_handle_once_and_throw_the_message() {
    let exe = build_from(
        &capi_dir().join("tests").join("wrappers.cpp"),
        "g++",
        &[
            "-std=c++17",
            "-Wl,--wrap=pompc_gpu_destroy,--wrap=pompc_mppi_destroy",
        ],
    );
    let (r, text) = run(&mut Command::new(exe));
    assert_eq!(r.status.code(), Some(0), "{text}");
    assert!(String::from_utf8_lossy(&r.stdout).contains("ok"), "{text}");
}
