//! `pompc plot`: learning curves of several runs in one SVG, seeds of one method pooled.

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
    /// Logs of `pompc train`, named ENV-METHOD-sSEED.csv: seeds of one method are pooled
    /// (mean line, min-max band)
    #[arg(value_name = "CSV", required = true)]
    files: Vec<PathBuf>,
}

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

/// Mean line and min-max band over the runs of one group, step by step.
fn pool(label: &str, runs: &[Vec<(usize, f64)>]) -> Series {
    let mut by_step: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for &(s, v) in runs.iter().flatten() {
        by_step.entry(s).or_default().push(v);
    }
    let mean = by_step
        .iter()
        .map(|(s, v)| (*s as f64, v.iter().sum::<f64>() / v.len() as f64))
        .collect();
    let band = by_step
        .iter()
        .map(|(s, v)| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (*s as f64, lo, hi)
        })
        .collect();
    let line = Series::line(label, mean);
    if runs.len() > 1 {
        line.with_band(band)
    } else {
        line
    }
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
        chart.add(pool(&label, runs));
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
        let s = pool("m", &[vec![(0, 1.0), (10, 3.0)], vec![(0, 3.0), (10, 5.0)]]);
        assert_eq!(s.points, vec![(0.0, 2.0), (10.0, 4.0)]);
        assert_eq!(s.band, vec![(0.0, 1.0, 3.0), (10.0, 3.0, 5.0)]);
        let one = pool("m", &[vec![(0, 1.0)]]);
        assert!(one.band.is_empty());
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
