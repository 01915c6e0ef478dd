//! `pompc plot`: learning curves of several runs in one SVG, seeds of one setting pooled (mean
//! and a 95% bootstrap confidence band), and with `--summary` the table that results are
//! reported with: per setting, the mean and interval at chosen steps and over the whole run.

use crate::Result;
use clap::Args;
use pompc::plot::{Chart, Series};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Options of `pompc plot`.
#[derive(Args)]
pub struct PlotArgs {
    /// The SVG to write
    #[arg(long, value_name = "FILE.svg")]
    out: PathBuf,
    /// Chart title (default: "evaluation return")
    #[arg(long, value_name = "T")]
    title: Option<String>,
    /// Training returns (mean of each 5 episodes) instead of evaluations
    #[arg(long)]
    train: bool,
    /// The band drawn around a setting's mean over seeds
    #[arg(long, value_enum, default_value_t = Band::Ci95)]
    band: Band,
    /// Also print a Markdown table: per setting, the mean and 95% bootstrap interval of the
    /// return at each `--at` step and over the whole run (area under the curve / steps)
    #[arg(long)]
    summary: bool,
    /// The steps the summary reports (each run's last point at or before the step; a run
    /// that stops earlier is left out of that column)
    #[arg(
        long,
        value_name = "S1,S2,...",
        value_delimiter = ',',
        default_value = "25000,50000,100000"
    )]
    at: Vec<usize>,
    /// Published results to draw beside the runs, as dots with the band's whiskers (not
    /// joined: such files hold a point every 100k steps or so): a CSV with columns `step`,
    /// `reward` (or `return`) and optionally `seed`, the layout of TD-MPC2's
    /// `results/TASK.csv`; `LABEL=FILE` names it in the legend (default: the file's name).
    /// Points past the runs' last step are left out. Repeat for several
    #[arg(long, value_name = "[LABEL=]CSV")]
    reference: Vec<String>,
    /// Logs of `pompc train`, named ENV-METHOD-sSEED.csv: seeds of one setting are pooled
    #[arg(value_name = "CSV", required = true)]
    files: Vec<PathBuf>,
}

/// What the band around a pooled curve shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Band {
    /// A 95% percentile-bootstrap confidence interval of the mean over seeds
    #[value(name = "ci95")]
    Ci95,
    /// The lowest and highest seed
    #[value(name = "minmax")]
    MinMax,
    /// No band
    None,
}

/// Bootstrap resamples per interval, and their seed (so a plot is reproducible).
const RESAMPLES: usize = 10_000;
const BOOTSTRAP_SEED: u64 = 0;

/// The columns of a log that a curve needs (the others are left alone).
#[derive(Deserialize)]
struct Point {
    kind: String,
    step: usize,
    #[serde(rename = "return")]
    ret: Option<f64>,
}

/// The (step, return) points of one log: evaluations, or training returns averaged over
/// each 5 episodes (at the last one's step) since they are noisy.
fn read_log(file: &Path, train: bool) -> Result<Vec<(usize, f64)>> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", file.display());
    let mut rd = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(file)
        .map_err(|e| at(&e))?;
    let kind = if train { "train" } else { "eval" };
    let mut points = Vec::new();
    for row in rd.deserialize::<Point>() {
        let p = row.map_err(|e| at(&e))?;
        if p.kind == kind
            && let Some(r) = p.ret
        {
            points.push((p.step, r));
        }
    }
    if train {
        points = points
            .chunks(5)
            .map(|c| {
                let mean = c.iter().map(|p| p.1).sum::<f64>() / c.len() as f64;
                (c[c.len() - 1].0, mean)
            })
            .collect();
    }
    Ok(points)
}

/// A reference given as `[LABEL=]FILE`: its label and its points, one run per seed (steps
/// in order).
struct Reference {
    label: String,
    runs: Vec<Vec<(usize, f64)>>,
}

/// Read a published-results CSV (`step`, `reward` or `return`, optionally `seed`; other
/// columns ignored), named by `arg` as `[LABEL=]FILE`.
fn read_reference(arg: &str) -> Result<Reference> {
    // A file whose own name holds `=` is taken whole.
    let split = arg.split_once('=').filter(|_| !Path::new(arg).is_file());
    let (label, file) = match split {
        Some((l, f)) if !l.is_empty() && !f.is_empty() => (l.to_string(), Path::new(f)),
        _ => {
            let f = Path::new(arg);
            let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or(arg);
            (stem.to_string(), f)
        }
    };
    let at = |e: &dyn std::fmt::Display| format!("--reference {}: {e}", file.display());
    let mut rd = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(file)
        .map_err(|e| at(&e))?;
    let headers = rd.headers().map_err(|e| at(&e))?.clone();
    let column = |names: &[&str]| headers.iter().position(|h| names.contains(&h.trim()));
    let step = column(&["step"]).ok_or_else(|| at(&"no `step` column"))?;
    let value =
        column(&["reward", "return"]).ok_or_else(|| at(&"no `reward` or `return` column"))?;
    let seed = column(&["seed"]);
    let mut by_seed: BTreeMap<String, Vec<(usize, f64)>> = BTreeMap::new();
    for (i, row) in rd.records().enumerate() {
        let row = row.map_err(|e| at(&e))?;
        let line = i + 2;
        let field = |c: usize| row.get(c).map(str::trim).unwrap_or_default();
        // Whole numbers written as floats (`100000.0`, `1e5`) are steps too.
        let s = field(step)
            .parse::<usize>()
            .ok()
            .or_else(|| {
                let f: f64 = field(step).parse().ok()?;
                (f >= 0.0 && f.fract() == 0.0 && f < 1e15).then_some(f as usize)
            })
            .ok_or_else(|| {
                at(&format!(
                    "line {line}: step {:?} is not a step count",
                    field(step)
                ))
            })?;
        let v: f64 = field(value)
            .parse()
            .map_err(|_| at(&format!("line {line}: {:?} is not a number", field(value))))?;
        let key = seed.map(|c| field(c).to_string()).unwrap_or_default();
        by_seed.entry(key).or_default().push((s, v));
    }
    let mut runs: Vec<Vec<(usize, f64)>> = by_seed.into_values().collect();
    for r in &mut runs {
        r.sort_by_key(|p| p.0);
    }
    if runs.is_empty() {
        return Err(at(&"no rows").into());
    }
    Ok(Reference { label, runs })
}

/// The summary's row of a reference: its seeds' values at exactly each step of `at` (published
/// points are not interpolated), no area under a curve drawn from so few points.
fn reference_row(r: &Reference, at: &[usize]) -> String {
    let mut t = format!("| {} (reference) | {} |", r.label, r.runs.len());
    for &s in at {
        let values: Vec<f64> = r
            .runs
            .iter()
            .filter_map(|run| run.iter().find(|p| p.0 == s).map(|p| p.1))
            .collect();
        t += &format!(" {} |", cell(&values));
    }
    t + " - |\n"
}

/// The run's method: the file name without `-sSEED.csv`.
fn group_of(file: &Path) -> String {
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    match name.rfind("-s") {
        Some(i) if name[i + 2..].chars().all(|c| c.is_ascii_digit()) => name[..i].to_string(),
        _ => name.to_string(),
    }
}

/// A setting's legend entry: its name without the task, for the built-in tasks
/// (`pendulum-swingup-po-mpc-l1`) and for dm_control's (`dmc-DOMAIN-TASK-po-mpc-l1`, as
/// `python/examples/train_dmc.py` names them).
fn legend_name(name: &str) -> &str {
    if let Some(m) = pompc::env::NAMES
        .iter()
        .find_map(|e| name.strip_prefix(&format!("{e}-")))
    {
        return m;
    }
    match name
        .strip_prefix("dmc-")
        .map(|r| r.splitn(3, '-').collect::<Vec<_>>())
    {
        Some(parts) if parts.len() == 3 && !parts[2].is_empty() => parts[2],
        _ => name,
    }
}

/// A legend entry that says how many seeds its curve pools.
fn with_seeds(label: &str, seeds: usize) -> String {
    match seeds {
        1 => label.to_string(),
        n => format!("{label} ({n} seeds)"),
    }
}

/// Mean line and band over the runs of one group, step by step.
fn pool(label: &str, runs: &[Vec<(usize, f64)>], band: Band) -> Series {
    let mut by_step: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for &(s, v) in runs.iter().flatten() {
        by_step.entry(s).or_default().push(v);
    }
    let mean = by_step
        .iter()
        .map(|(s, v)| (*s as f64, pompc::plot::mean(v)))
        .collect();
    let rows = by_step.iter().filter_map(|(s, v)| {
        let (lo, hi) = match band {
            Band::Ci95 => pompc::plot::bootstrap_ci(v, 0.95, RESAMPLES, BOOTSTRAP_SEED)?,
            Band::MinMax => (
                v.iter().copied().fold(f64::INFINITY, f64::min),
                v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            ),
            Band::None => return None,
        };
        Some((*s as f64, lo, hi))
    });
    let line = Series::line(label, mean);
    if runs.len() > 1 {
        line.with_band(rows.collect())
    } else {
        line
    }
}

/// One cell of the summary: mean and interval over the seeds' values, and how many there are.
fn cell(values: &[f64]) -> String {
    match pompc::plot::bootstrap_ci(values, 0.95, RESAMPLES, BOOTSTRAP_SEED) {
        Some((lo, hi)) if values.len() > 1 => format!(
            "{:.1} [{lo:.1}, {hi:.1}] (n={})",
            pompc::plot::mean(values),
            values.len()
        ),
        Some(_) => format!("{:.1} (n=1)", values[0]),
        None if values.is_empty() => "-".into(),
        None => "non-finite".into(),
    }
}

/// The summary table (Markdown) of the groups: per setting, the return at each step of `at`
/// (each run's last point at or before it, runs that stop earlier left out) and the mean over
/// the run ([`pompc::plot::mean_over_run`]).
fn summary(groups: &BTreeMap<String, Vec<Vec<(usize, f64)>>>, at: &[usize]) -> String {
    let mut t = String::from("| setting | seeds |");
    for s in at {
        t += &format!(" return at {s} |");
    }
    t += " mean over the run (AUC / steps) |\n|---|---|";
    t += &"---|".repeat(at.len() + 1);
    t.push('\n');
    for (name, runs) in groups {
        t += &format!("| {name} | {} |", runs.len());
        for &s in at {
            let values: Vec<f64> = runs
                .iter()
                .filter(|r| r.last().is_some_and(|p| p.0 >= s))
                .filter_map(|r| r.iter().rev().find(|p| p.0 <= s).map(|p| p.1))
                .collect();
            t += &format!(" {} |", cell(&values));
        }
        let points = |r: &Vec<(usize, f64)>| -> Vec<(f64, f64)> {
            r.iter().map(|&(s, v)| (s as f64, v)).collect()
        };
        let auc: Vec<f64> = runs
            .iter()
            .filter_map(|r| pompc::plot::mean_over_run(&points(r)))
            .collect();
        t += &format!(" {} |\n", cell(&auc));
    }
    t
}

/// Draw the curves of the logs named.
pub fn run(a: &PlotArgs) -> Result {
    let mut groups: BTreeMap<String, Vec<Vec<(usize, f64)>>> = BTreeMap::new();
    for f in &a.files {
        groups
            .entry(group_of(f))
            .or_default()
            .push(read_log(f, a.train)?);
    }
    let mut chart = Chart::new(
        a.title.as_deref().unwrap_or("evaluation return"),
        "environment steps",
        if a.train {
            "training return (mean of 5 episodes)"
        } else {
            "evaluation return"
        },
    );
    for (name, runs) in &groups {
        // The task is in the title; the legend names the method.
        chart.add(pool(
            &with_seeds(legend_name(name), runs.len()),
            runs,
            a.band,
        ));
    }
    // References: clipped to the runs' steps (a paper's CSV may run to millions).
    let last = groups.values().flatten().flatten().map(|p| p.0).max();
    let mut references = Vec::with_capacity(a.reference.len());
    for arg in &a.reference {
        let mut r = read_reference(arg)?;
        if let Some(last) = last {
            for run in &mut r.runs {
                run.retain(|p| p.0 <= last);
            }
            r.runs.retain(|run| !run.is_empty());
        }
        if r.runs.is_empty() {
            eprintln!(
                "warning: --reference {arg}: no point at or before the runs' last step {}",
                last.unwrap_or(0)
            );
            continue;
        }
        let label = with_seeds(&r.label, r.runs.len());
        chart.add(pool(&label, &r.runs, a.band).as_markers());
        references.push(r);
    }
    // Returns of the built-in tasks lie in [0, 1000]: a fixed axis makes plots comparable.
    if chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .all(|y| (0.0..=1000.0).contains(&y) || !y.is_finite())
    {
        chart.y_range = Some((0.0, 1000.0));
    }
    let out = a.out.display().to_string();
    warn_non_finite(&chart, &out);
    chart.save(&a.out)?;
    println!(
        "{out}: {} curves from {} files",
        groups.len(),
        a.files.len()
    );
    if !references.is_empty() {
        println!("{out}: {} references", references.len());
    }
    if a.summary {
        print!("{}", summary(&groups, &a.at));
        for r in &references {
            print!("{}", reference_row(r, &a.at));
        }
    }
    Ok(())
}

/// Say which points of `chart` are left out of `file` for not being finite.
pub fn warn_non_finite(chart: &Chart, file: &str) {
    for (series, n) in chart.non_finite() {
        eprintln!("warning: {file}: {n} non-finite points of {series:?} left out of the chart");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_of_a_method_pool_into_one_group() {
        let g = |s: &str| group_of(Path::new(s));
        assert_eq!(
            g("runs/pendulum-swingup-po-mpc-l1-s3.csv"),
            "pendulum-swingup-po-mpc-l1"
        );
        assert_eq!(
            g("a/cartpole-balance-bmpc-s12.csv"),
            "cartpole-balance-bmpc"
        );
        // Not a seed suffix: the whole name.
        assert_eq!(g("x-sx.csv"), "x-sx");
    }

    #[test]
    fn legends_name_the_method_without_the_task() {
        assert_eq!(legend_name("pendulum-swingup-po-mpc-l1"), "po-mpc-l1");
        assert_eq!(legend_name("dmc-cartpole-swingup-po-mpc-l1"), "po-mpc-l1");
        assert_eq!(legend_name("dmc-walker-walk-tdmpc2"), "tdmpc2");
        // Anything else stays whole.
        assert_eq!(legend_name("dmc-cartpole"), "dmc-cartpole");
        assert_eq!(legend_name("my-run"), "my-run");
    }

    #[test]
    fn pooled_runs_give_mean_and_band() {
        let runs = [vec![(0, 1.0), (10, 3.0)], vec![(0, 3.0), (10, 5.0)]];
        let s = pool("m", &runs, Band::MinMax);
        assert_eq!(s.points, vec![(0.0, 2.0), (10.0, 4.0)]);
        assert_eq!(s.band, vec![(0.0, 1.0, 3.0), (10.0, 3.0, 5.0)]);
        // Two seeds: the bootstrap's means are the two values and their mean, so its 95%
        // interval spans both values.
        let ci = pool("m", &runs, Band::Ci95);
        assert_eq!(ci.points, s.points);
        assert_eq!(ci.band, s.band);
        assert!(pool("m", &runs, Band::None).band.is_empty());
        let one = pool("m", &[vec![(0, 1.0)]], Band::Ci95);
        assert!(one.band.is_empty());
    }

    #[test]
    fn summary_reports_each_step_and_the_whole_run() {
        let mut g = BTreeMap::new();
        // The third run stops at step 10: it is left out of the later columns only.
        g.insert(
            "pendulum-swingup-po-mpc-l1".to_string(),
            vec![
                vec![(0, 0.0), (10, 100.0), (20, 300.0)],
                vec![(0, 0.0), (10, 200.0), (20, 500.0)],
                vec![(0, 0.0), (10, 300.0)],
            ],
        );
        let t = summary(&g, &[10, 15, 20, 30]);
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 3, "{t}");
        assert!(
            rows[0].starts_with("| setting | seeds | return at 10 |"),
            "{t}"
        );
        let cells: Vec<&str> = rows[2].split('|').map(str::trim).collect();
        assert_eq!(cells[1], "pendulum-swingup-po-mpc-l1");
        assert_eq!(cells[2], "3");
        assert!(cells[3].starts_with("200.0 [100.0, 300.0] (n=3)"), "{t}");
        // Step 15: the first two runs' points at 10.
        assert!(cells[4].starts_with("150.0 ["), "{t}");
        assert!(cells[4].ends_with("(n=2)"), "{t}");
        assert!(cells[5].starts_with("400.0 [300.0, 500.0] (n=2)"), "{t}");
        assert_eq!(cells[6], "-");
        // Over the run: (10 * 50 + 10 * 200) / 20 = 125, (10 * 100 + 10 * 350) / 20 = 225
        // and 10 * 150 / 10 = 150.
        assert!(cells[7].starts_with("166.7 ["), "{t}");
        assert!(cells[7].ends_with("(n=3)"), "{t}");
    }

    #[test]
    fn references_read_tdmpc2_results_and_summarize_exact_steps() {
        let d = std::env::temp_dir().join(format!("pompc-cli-ref-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("cartpole-swingup.csv");
        // TD-MPC2's layout: seeds one after another, a step column per row.
        std::fs::write(
            &f,
            "step,reward,seed\n0,2.0,2\n100000,789.8,2\n200000,877.6,2\n0,1.5,1\n100000,860.5,1\n",
        )
        .unwrap();
        let path = f.to_str().unwrap();
        let r = read_reference(path).unwrap();
        assert_eq!(r.label, "cartpole-swingup");
        assert_eq!(
            r.runs,
            vec![
                vec![(0, 1.5), (100000, 860.5)],
                vec![(0, 2.0), (100000, 789.8), (200000, 877.6)]
            ]
        );
        let r = read_reference(&format!("TD-MPC2 (published)={path}")).unwrap();
        assert_eq!(r.label, "TD-MPC2 (published)");
        // Exact steps only: none at 50k, both seeds at 100k, one at 200k.
        let row = reference_row(&r, &[50000, 100000, 200000]);
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[1], "TD-MPC2 (published) (reference)");
        assert_eq!(cells[2], "2");
        assert_eq!(cells[3], "-");
        assert!(cells[4].starts_with("825.1 [789.8, 860.5] (n=2)"), "{row}");
        assert_eq!(cells[5], "877.6 (n=1)");
        assert_eq!(cells[6], "-");
        // `return` instead of `reward`, no seed column, steps written as floats: one run.
        std::fs::write(&f, "return,step\n5,0\n7,1e1\n8,20.0\n").unwrap();
        assert_eq!(
            read_reference(path).unwrap().runs,
            vec![vec![(0, 5.0), (10, 7.0), (20, 8.0)]]
        );
        // A file whose name holds `=` is not split into a label.
        let eq = d.join("lr=3.csv");
        std::fs::write(&eq, "step,reward\n0,1\n").unwrap();
        assert_eq!(read_reference(eq.to_str().unwrap()).unwrap().label, "lr=3");
        // Errors name the file and what is wrong.
        for (text, want) in [
            ("step,seed\n0,1\n", "no `reward` or `return`"),
            ("step,reward\n", "no rows"),
            ("step,reward\nx,1\n", "line 2"),
            ("step,reward\n0,1\n2.5,1\n", "line 3: step \"2.5\""),
            ("step,reward\n-1,1\n", "\"-1\""),
            ("step,reward\n0,high\n", "\"high\""),
        ] {
            std::fs::write(&f, text).unwrap();
            let e = read_reference(path).err().expect(text).to_string();
            assert!(
                e.contains("cartpole-swingup.csv") && e.contains(want),
                "{e}"
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn logs_are_read_by_column_name() {
        let d = std::env::temp_dir().join(format!("pompc-cli-plot-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("log.csv");
        // A log with the loss columns and one without: the reader takes what it needs.
        std::fs::write(
            &f,
            "kind,step,episode,wall_s,return,consistency\n\
             train,500,1,0.5,10,\ntrain,1000,2,1,20,\nloss,1000,,1,,0.3\neval,1000,,1,NaN,\n",
        )
        .unwrap();
        assert_eq!(read_log(&f, false).unwrap().len(), 1);
        assert!(read_log(&f, false).unwrap()[0].1.is_nan());
        assert_eq!(read_log(&f, true).unwrap(), vec![(1000, 15.0)]);
        std::fs::write(&f, "kind,step,episode,wall_s,return\neval,zero,,0,5\n").unwrap();
        let e = read_log(&f, false).unwrap_err().to_string();
        assert!(e.contains("log.csv"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
