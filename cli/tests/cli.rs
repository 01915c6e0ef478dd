//! The command line as users meet it: help and version, clap's errors for bad values (one per
//! subcommand at least), errors that name what was wrong and leave no files behind, and
//! whole runs whose JSON rows and CSV logs parse.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a run of the binary left.
struct Out {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run `pompc ARGS` (at most `secs` seconds).
fn pompc(args: &[&str], secs: u64) -> Out {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pompc"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pompc {args:?} ran past {secs} s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Out {
        ok: status.success(),
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `pompc ARGS` fails with an error line holding every needle.
#[track_caller]
fn fails(args: &[&str], needles: &[&str]) -> Out {
    let o = pompc(args, 60);
    assert!(!o.ok, "pompc {args:?} exited 0: {}", o.stderr);
    assert!(
        o.stderr.contains("error"),
        "pompc {args:?}: no error line: {}",
        o.stderr
    );
    for n in needles {
        assert!(
            o.stderr.contains(n),
            "pompc {args:?}: stderr lacks {n:?}: {}",
            o.stderr
        );
    }
    o
}

/// A fresh empty directory.
fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pompc-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn files_in(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

const SUBCOMMANDS: [&[&str]; 12] = [
    &["info"],
    &["bench"],
    &["bench", "all"],
    &["bench", "linear"],
    &["bench", "model"],
    &["bench", "plan"],
    &["bench", "gemm"],
    &["bench", "update"],
    &["bench", "policy"],
    &["bench", "mppi"],
    &["train"],
    &["plot"],
];

/// Each bench shows and uses its own default model dimensions (a generic options struct once
/// gave every bench the first one's).
#[test]
fn benches_keep_their_own_default_dimensions() {
    for (sub, obs, act) in [("model", 223, 38), ("update", 24, 6), ("policy", 24, 6)] {
        let o = pompc(&["bench", sub, "--help"], 30);
        assert!(o.ok, "{}", o.stderr);
        let line = |opt: &str| {
            o.stdout
                .lines()
                .find(|l| l.trim_start().starts_with(opt))
                .unwrap_or_else(|| panic!("bench {sub} --help lacks {opt}: {}", o.stdout))
                .to_string()
        };
        assert!(
            line("--obs").contains(&format!("[default: {obs}]")),
            "bench {sub}"
        );
        assert!(
            line("--act").contains(&format!("[default: {act}]")),
            "bench {sub}"
        );
    }
}

#[test]
fn every_subcommand_has_help_and_help_lists_them_all() {
    for sub in SUBCOMMANDS {
        let args: Vec<&str> = sub.iter().copied().chain(["--help"]).collect();
        let o = pompc(&args, 30);
        assert!(o.ok, "{args:?}: {}", o.stderr);
        let usage = format!("Usage: pompc {}", sub.join(" "));
        assert!(o.stdout.contains(&usage), "{args:?}: {}", o.stdout);
        // `pompc help SUB` says the same.
        let via: Vec<&str> = ["help"].iter().chain(sub.iter()).copied().collect();
        let h = pompc(&via, 30);
        assert!(h.ok && h.stdout.contains(&usage), "{via:?}: {}", h.stdout);
    }
    // `pompc help` is one page with every command and every option of each.
    let all = pompc(&["help"], 30);
    assert!(all.ok, "{}", all.stderr);
    for sub in SUBCOMMANDS {
        let usage = format!("Usage: pompc {}", sub.join(" "));
        assert!(all.stdout.contains(&usage), "help lacks {usage:?}");
    }
    for opt in [
        "--probe",
        "--sweep",
        "--shape",
        "--ceiling-tflops",
        "--compare-precision",
        "--profile",
        "--coop",
        "--preset",
        "--samples",
        "--checked",
        "--checkpoint-every",
        "--time-limit",
        "--resume",
        "--title",
        "POMPC_SHADER_DIR",
    ] {
        assert!(all.stdout.contains(opt), "help lacks {opt}");
    }
    // Without a command: the same page, exit 0.
    let bare = pompc(&[], 30);
    assert!(bare.ok && bare.stdout == all.stdout);
    fails(&["help", "frobnicate"], &["frobnicate"]);
}

#[test]
fn version() {
    let o = pompc(&["--version"], 30);
    assert!(o.ok);
    assert_eq!(
        o.stdout.trim(),
        format!("pompc {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_values_get_clap_errors_naming_the_option() {
    // clap's usage errors exit with status 2, before any device is opened.
    for (args, needle) in [
        (&["info", "--frobnicate"][..], "--frobnicate"),
        (&["bench", "--runs", "0"], "--runs"),
        (
            &["bench", "all", "--ceiling-tflops", "fast"],
            "--ceiling-tflops",
        ),
        (&["bench", "linear", "--precision", "f8"], "f8"),
        (&["bench", "linear", "--precision", "auto"], "auto"),
        (
            &["bench", "linear", "--act", "relu", "--shape", "8x8x8"],
            "relu",
        ),
        (&["bench", "linear", "--ln"], "--shape"),
        (&["bench", "linear", "--shape", "512x550x512x"], "--shape"),
        (&["bench", "linear", "--shape", "512xx550x512"], "--shape"),
        (&["bench", "linear", "--shape", "0x1x2"], "--shape"),
        (&["bench", "linear", "--shape", "axbxc"], "--shape"),
        (&["bench", "linear", "--shape", "1x2"], "--shape"),
        (&["bench", "linear", "--shape", "99999999x2x2"], "--shape"),
        (&["bench", "linear", "--shape"], "--shape"),
        (&["bench", "model", "--size", "7"], "--size"),
        (&["bench", "plan", "--batch", "1,x"], "--batch"),
        (&["bench", "plan", "--precision", "f64"], "f64"),
        (&["bench", "plan", "--calls", "2"], "--compare-precision"),
        (&["bench", "plan", "--agents", "0"], "--agents"),
        (&["bench", "plan", "--agents", "2", "--profile"], "--agents"),
        (&["bench", "gemm", "--runs", "many"], "--runs"),
        (&["bench", "update", "--batch", ""], "--batch"),
        (&["bench", "update", "--agents", "0"], "--agents"),
        (
            &["bench", "update", "--agents", "2", "--profile"],
            "--agents",
        ),
        (&["bench", "policy", "--preset", "sac"], "sac"),
        (&["bench", "policy", "--agents", "0"], "--agents"),
        (
            &["bench", "policy", "--agents", "2", "--profile"],
            "--agents",
        ),
        (&["bench", "mppi", "--horizon", "-1"], "-1"),
        (&["bench", "frobnicate"], "frobnicate"),
        (&["frobnicate"], "frobnicate"),
        (&["train", "--steps", "abc"], "--steps"),
        (&["train", "--steps", "-5"], "--steps"),
        (&["train", "--steps", "0"], "--steps"),
        (&["train", "--steps"], "--steps"),
        (&["train", "--seeds", ""], "--seeds"),
        (&["train", "--seeds", "1,,2"], "--seeds"),
        (&["train", "--seed", "x"], "--seed"),
        (&["train", "--method", "sac"], "sac"),
        (&["train", "--env", "nope"], "nope"),
        (&["train", "--model", "huge"], "huge"),
        (&["train", "--precision", "f8"], "f8"),
        (&["train", "--time-limit", "nan"], "--time-limit"),
        (&["train", "--time-limit", "-3"], "--time-limit"),
        (&["train", "--eval-every", "x"], "--eval-every"),
        (&["train", "--frobnicate"], "--frobnicate"),
        (&["plot"], "--out"),
        (&["plot", "--out", "x.svg"], "CSV"),
        (&["plot", "--out", "x.svg", "--band", "sd", "a.csv"], "sd"),
        (&["plot", "--out", "x.svg", "--at", "1,x", "a.csv"], "--at"),
    ] {
        let o = fails(args, &[needle]);
        assert_eq!(o.code, Some(2), "{args:?}: {}", o.stderr);
    }
}

#[test]
fn train_refuses_bad_runs_before_writing() {
    // Values that parse but make no run: an error naming them, and no files.
    for (args, needle) in [
        (&["train", "--lambda", "nan"][..], "lambda"),
        (&["train", "--lambda", "-1"], "lambda"),
        (&["train", "--method", "bmpc", "--lambda", "2"], "lambda"),
        (&["train", "--seeds", "0,0"], "twice"),
        (&["train", "--seeds", "3,1,3"], "seed 3"),
        (&["train", "--lambda", "1,2,1"], "twice"),
        (
            &["train", "--method", "bmpc,tdmpc2", "--lambda", "2"],
            "lambda",
        ),
        (
            &["train", "--method", "po-mpc", "--lambda", "1,nan"],
            "lambda",
        ),
        (&["train", "--method", "tdmpc2,tdmpc2"], "twice"),
        // CI's adapter (lavapipe) has no cooperative matrices.
        (
            &["train", "--quick", "--tensor-core-updates"],
            "cooperative matrices",
        ),
    ] {
        let d = scratch("refuse");
        let out = d.join("runs");
        let args: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--out", out.to_str().unwrap()])
            .collect();
        fails(&args, &[needle]);
        assert!(!out.exists(), "{args:?} made {out:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

#[test]
fn train_resume_without_a_checkpoint_names_it() {
    let d = scratch("resume");
    let out = d.to_str().unwrap();
    let args = [
        "train", "--resume", "--quick", "--steps", "10", "--out", out,
    ];
    fails(&args, &["ckpt.safetensors"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn plot_errors_name_the_file_and_leave_nothing() {
    fails(
        &["plot", "--out", "x.svg", "/no/such/file.csv"],
        &["/no/such/file.csv"],
    );
    let d = scratch("plot-missing");
    let csv = d.join("pendulum-swingup-tdmpc2-s0.csv");
    std::fs::write(
        &csv,
        "kind,step,episode,wall_s,return\neval,0,,0,5\neval,10,,0,7\n",
    )
    .unwrap();
    let out = d.join("no/such/dir/out.svg");
    fails(
        &[
            "plot",
            "--out",
            out.to_str().unwrap(),
            csv.to_str().unwrap(),
        ],
        &["out.svg"],
    );
    assert_eq!(files_in(&d).len(), 1, "left {:?}", files_in(&d));
    // A value of the wrong type is an error at its file, not a silently shorter curve.
    std::fs::write(&csv, "kind,step,episode,wall_s,return\neval,ten,,0,7\n").unwrap();
    let good = d.join("out.svg");
    fails(
        &[
            "plot",
            "--out",
            good.to_str().unwrap(),
            csv.to_str().unwrap(),
        ],
        &["pendulum-swingup-tdmpc2-s0.csv"],
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn plot_pools_seeds_with_an_interval_and_summarizes_them() {
    let d = scratch("plot-seeds");
    let mut files = Vec::new();
    for (seed, last) in [(0, 300), (1, 500), (2, 400)] {
        let csv = d.join(format!("cartpole-swingup-po-mpc-l1-s{seed}.csv"));
        std::fs::write(
            &csv,
            format!("kind,step,episode,wall_s,return\neval,0,,0,0\neval,100,,0,{last}\n"),
        )
        .unwrap();
        files.push(csv.to_str().unwrap().to_string());
    }
    let svg = d.join("curves.svg");
    let args: Vec<&str> = ["plot", "--summary", "--at", "100", "--out"]
        .into_iter()
        .chain([svg.to_str().unwrap()])
        .chain(files.iter().map(String::as_str))
        .collect();
    let o = pompc(&args, 60);
    assert!(o.ok, "{}", o.stderr);
    assert!(o.stdout.contains("1 curves from 3 files"), "{}", o.stdout);
    let row = o
        .stdout
        .lines()
        .find(|l| l.starts_with("| cartpole-swingup-po-mpc-l1 |"))
        .unwrap_or_else(|| panic!("no summary row: {}", o.stdout));
    // At step 100: mean 400 of three seeds, its interval within the seeds' range; over the
    // run (a linear climb) half of that.
    assert!(row.contains("| 3 | 400.0 ["), "{row}");
    assert!(row.contains("| 200.0 ["), "{row}");
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.contains("(3 seeds)"), "no pooled legend");
    assert!(!chart.contains("<circle"), "dots without a reference");

    // A published curve beside them (TD-MPC2's results layout): dots, clipped to the runs'
    // last step, its own summary row at exact steps.
    let paper = d.join("cartpole-swingup.csv");
    std::fs::write(
        &paper,
        "step,reward,seed\n0,2,1\n100,380,1\n200,900,1\n0,4,2\n100,420,2\n",
    )
    .unwrap();
    let reference = format!("paper={}", paper.to_str().unwrap());
    let with_ref: Vec<&str> = args[..args.len() - 3]
        .iter()
        .copied()
        .chain(["--reference", reference.as_str()])
        .chain(files.iter().map(String::as_str))
        .collect();
    let o = pompc(&with_ref, 60);
    assert!(o.ok, "{}", o.stderr);
    assert!(o.stdout.contains("1 references"), "{}", o.stdout);
    assert!(
        o.stdout
            .contains("| paper (reference) | 2 | 400.0 [380.0, 420.0] (n=2) | - |"),
        "{}",
        o.stdout
    );
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.contains("paper (2 seeds)"), "no reference legend");
    // Two dots at steps 0 and 100 (200 is past the runs) and the legend's.
    assert_eq!(chart.matches("<circle").count(), 3, "{chart}");
    let missing = format!("paper={}", d.join("none.csv").to_str().unwrap());
    let bad: Vec<&str> = args[..args.len() - 3]
        .iter()
        .copied()
        .chain(["--reference", missing.as_str()])
        .chain(files.iter().map(String::as_str))
        .collect();
    fails(&bad, &["none.csv"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn plot_of_non_finite_returns_warns_and_writes_no_nan() {
    let d = scratch("plot-nan");
    let csv = d.join("pendulum-swingup-tdmpc2-s0.csv");
    std::fs::write(
        &csv,
        "kind,step,episode,wall_s,return\neval,0,,0,5\neval,10,,0,NaN\neval,20,,0,inf\neval,30,,0,9\n",
    )
    .unwrap();
    let out = d.join("out.svg");
    let o = pompc(
        &[
            "plot",
            "--out",
            out.to_str().unwrap(),
            csv.to_str().unwrap(),
        ],
        60,
    );
    assert!(o.ok, "{}", o.stderr);
    assert!(o.stderr.contains("non-finite"), "no warning: {}", o.stderr);
    let svg = std::fs::read_to_string(&out).unwrap();
    assert!(
        !svg.contains("NaN") && !svg.contains("inf"),
        "NaN in the SVG"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bench_json_rows_parse_with_typed_fields() {
    let o = pompc(
        &[
            "bench",
            "mppi",
            "--samples",
            "64,96",
            "--horizon",
            "8",
            "--runs",
            "2",
            "--warmup",
            "1",
            "--json",
        ],
        120,
    );
    assert!(o.ok, "{}", o.stderr);
    let rows: Vec<serde_json::Value> = o
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(rows.len(), 2, "{}", o.stdout);
    for (row, k) in rows.iter().zip([64, 96]) {
        assert_eq!(row["samples"], k);
        assert_eq!(row["horizon"], 8);
        let wall = row["wall_median_s"].as_f64().unwrap();
        assert!(wall > 0.0 && wall.is_finite(), "{row}");
        assert!(row["gpu_median_s"].is_null() || row["gpu_median_s"].as_f64().is_some());
        assert!(!row["adapter"].as_str().unwrap().is_empty(), "{row}");
        assert!(row["backend"].is_string(), "{row}");
    }
    // No progress output where stderr is not a terminal.
    assert!(!o.stderr.contains('\r'), "{:?}", o.stderr);
}

#[test]
fn train_runs_every_combination_of_methods_lambdas_and_seeds() {
    let d = scratch("population");
    // Ten random steps per run (inside the seed phase, no evaluation): the runs' files and
    // the population's closing line, not learning.
    let o = pompc(
        &[
            "train",
            "--quick",
            "--method",
            "tdmpc2,po-mpc",
            "--lambda",
            "0.5,2",
            "--seeds",
            "0,1",
            "--steps",
            "10",
            "--eval-every",
            "0",
            "--out",
            d.to_str().unwrap(),
        ],
        600,
    );
    assert!(o.ok, "{}", o.stderr);
    // Two methods: they plan together and update in two groups (TD-MPC2's seeds, PO-MPC's
    // lambdas and seeds).
    assert!(
        o.stderr.contains("6 runs as one population")
            && o.stderr.contains("plan steps shared, updates in 2 groups"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("6/6 done"), "{}", o.stderr);
    for setting in ["tdmpc2", "po-mpc-l0.5", "po-mpc-l2"] {
        for seed in [0, 1] {
            for ext in ["csv", "svg", "ckpt.safetensors"] {
                let f = d.join(format!("pendulum-swingup-{setting}-s{seed}.{ext}"));
                assert!(f.exists(), "{f:?} missing: {:?}", files_in(&d));
            }
        }
    }
    assert_eq!(files_in(&d).len(), 18, "{:?}", files_in(&d));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_population_of_lambdas_plans_and_updates_together_and_resumes() {
    let d = scratch("shared-population");
    let out = d.to_str().unwrap();
    // PO-MPC at two lambdas: one plan step and one update submit per step for both, through
    // the seed phase, the shared pre-training and two steps of the loop, then resumed.
    let args = |steps: &'static str| {
        vec![
            "train",
            "--quick",
            "--method",
            "po-mpc",
            "--lambda",
            "0.5,2",
            "--model",
            "tiny",
            "--steps",
            steps,
            "--seed-steps",
            "500",
            "--eval-every",
            "0",
            "--out",
            out,
        ]
    };
    let o = pompc(&args("502"), 900);
    assert!(o.ok, "{}", o.stderr);
    assert!(
        o.stderr.contains("2 runs as one population")
            && o.stderr.contains("plan steps and updates shared"),
        "{}",
        o.stderr
    );
    assert_eq!(
        o.stderr.matches("loop after pre-training: 2 steps").count(),
        2,
        "{}",
        o.stderr
    );
    let mut resumed = args("504");
    resumed.push("--resume");
    let o = pompc(&resumed, 900);
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(o.stderr.matches("from step 502").count(), 2, "{}", o.stderr);
    assert!(
        o.stderr.contains("plan steps and updates shared"),
        "{}",
        o.stderr
    );
    for l in ["0.5", "2"] {
        let csv = d.join(format!("pendulum-swingup-po-mpc-l{l}-s0.csv"));
        let text = std::fs::read_to_string(&csv).unwrap();
        assert!(
            text.lines().filter(|r| r.starts_with("train,")).count() >= 1,
            "{text}"
        );
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn train_writes_a_csv_log_a_chart_and_a_checkpoint_and_plot_reads_it() {
    let d = scratch("train");
    let out = d.to_str().unwrap();
    let args = [
        "train",
        "--quick",
        "--method",
        "tdmpc2",
        "--model",
        "tiny",
        "--steps",
        "502",
        "--seed-steps",
        "500",
        "--eval-every",
        "0",
        "--seed",
        "4",
        "--out",
        out,
    ];
    let ckpt = d.join("pendulum-swingup-tdmpc2-s4.ckpt.safetensors");
    // The run's counters, from the checkpoint's metadata.
    let counters = || {
        let bytes = std::fs::read(&ckpt).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let get =
            |k: &str| -> usize { header["__metadata__"][k].as_str().unwrap().parse().unwrap() };
        (get("pompc.step"), get("pompc.updates"))
    };
    // A time limit already passed stops at the first episode end, the seed phase's last step,
    // before the pre-training; resumed with it again, at the pre-training's first progress
    // report (50 updates), the checkpoint keeping them; resumed without it, the run ends.
    let limited: Vec<&str> = args.iter().copied().chain(["--time-limit", "0"]).collect();
    for (resume, updates) in [(false, 0), (true, 50)] {
        let call: Vec<&str> = limited
            .iter()
            .copied()
            .chain(resume.then_some("--resume"))
            .collect();
        let o = pompc(&call, 300);
        assert!(o.ok, "{}", o.stderr);
        assert!(
            o.stderr.contains("time limit: --resume continues"),
            "{}",
            o.stderr
        );
        assert_eq!(counters(), (500, updates));
    }
    let last: Vec<&str> = args.iter().copied().chain(["--resume"]).collect();
    let o = pompc(&last, 300);
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(counters(), (502, 502));
    assert!(!o.stderr.contains('\r'), "a progress bar off a terminal");
    assert_eq!(
        files_in(&d),
        [
            "pendulum-swingup-tdmpc2-s4.ckpt.safetensors",
            "pendulum-swingup-tdmpc2-s4.csv",
            "pendulum-swingup-tdmpc2-s4.svg"
        ]
    );
    let mut rd = csv::Reader::from_path(d.join("pendulum-swingup-tdmpc2-s4.csv")).unwrap();
    let header: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header[..5], ["kind", "step", "episode", "wall_s", "return"]);
    assert_eq!(header.len(), 12);
    let rows: Vec<csv::StringRecord> = rd.records().map(|r| r.unwrap()).collect();
    let train: Vec<&csv::StringRecord> = rows.iter().filter(|r| &r[0] == "train").collect();
    assert_eq!(train.len(), 1, "one episode of 500 steps: {rows:?}");
    assert_eq!(&train[0][1], "500");
    let ret: f64 = train[0][4].parse().unwrap();
    assert!((0.0..=500.0).contains(&ret), "return {ret}");
    assert!(rows.iter().all(|r| r.len() == 12));
    // A second run resumes the checkpoint: already at its last step, it says so.
    let again = pompc(&last, 300);
    assert!(again.ok, "{}", again.stderr);
    assert!(
        again.stderr.contains("already at step 502"),
        "{}",
        again.stderr
    );
    let svg = d.join("curves.svg");
    let p = pompc(
        &[
            "plot",
            "--train",
            "--out",
            svg.to_str().unwrap(),
            d.join("pendulum-swingup-tdmpc2-s4.csv").to_str().unwrap(),
        ],
        60,
    );
    assert!(p.ok, "{}", p.stderr);
    assert!(p.stdout.contains("1 curves from 1 files"), "{}", p.stdout);
    assert!(std::fs::read_to_string(&svg).unwrap().contains("tdmpc2"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_failed_checkpoint_save_leaves_no_partial_file() {
    let d = scratch("partial");
    // The checkpoint's path is taken by a directory: the save must fail cleanly.
    let ckpt = d.join("pendulum-swingup-tdmpc2-s0.ckpt.safetensors");
    std::fs::create_dir(&ckpt).unwrap();
    std::fs::write(ckpt.join("keep"), b"1").unwrap();
    let o = pompc(
        &[
            "train",
            "--quick",
            "--method",
            "tdmpc2",
            "--model",
            "tiny",
            "--steps",
            "2",
            "--seed-steps",
            "500",
            "--eval-every",
            "0",
            "--quiet",
            "--out",
            d.to_str().unwrap(),
        ],
        180,
    );
    assert!(
        !o.ok && o.stderr.contains("ckpt.safetensors"),
        "{}",
        o.stderr
    );
    assert_eq!(
        files_in(&d),
        ["pendulum-swingup-tdmpc2-s0.ckpt.safetensors"],
        "partial files left"
    );
    std::fs::remove_dir_all(&d).unwrap();
}
