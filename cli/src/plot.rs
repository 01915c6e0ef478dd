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
        let method = pompc::env::NAMES
            .iter()
            .find_map(|e| name.strip_prefix(&format!("{e}-")))
            .unwrap_or(name);
        let label = match runs.len() {
            1 => method.to_string(),
            n => format!("{method} ({n} seeds)"),
        };
        chart.add(pool(&label, runs, a.band));
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
    if a.summary {
        print!("{}", summary(&groups, &a.at));
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
