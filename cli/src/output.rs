//! How the commands print: table or JSON rows, and progress on stderr.

use indicatif::{ProgressBar, ProgressStyle};
use pompc::Gpu;
use serde::Serialize;
use std::time::Duration;

/// Where a benchmark's rows go: a table for people, or one JSON object per line (each tagged
/// with the backend and adapter) for machines.
pub struct Report<'g> {
    gpu: &'g Gpu,
    json: bool,
}

#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    #[serde(flatten)]
    row: &'a T,
    backend: String,
    adapter: &'a str,
}

impl<'g> Report<'g> {
    /// Rows about runs on `gpu`, as JSON when `json`.
    pub fn new(gpu: &'g Gpu, json: bool) -> Self {
        Report { gpu, json }
    }

    /// Whether rows are JSON.
    pub fn json(&self) -> bool {
        self.json
    }

    /// Header lines of the table (nothing in JSON mode), after the adapter line.
    pub fn header(&self, lines: &[String]) {
        if self.json {
            return;
        }
        println!("adapter: {}", self.gpu.describe());
        for l in lines {
            println!("{l}");
        }
    }

    /// One row: `row` as JSON, or the table line `line` builds.
    pub fn row<T: Serialize>(&self, row: &T, line: impl FnOnce() -> String) {
        if self.json {
            let info = self.gpu.info();
            let tagged = Tagged {
                row,
                backend: format!("{:?}", info.backend),
                adapter: &info.name,
            };
            // Serializing plain structs of numbers and strings cannot fail.
            println!(
                "{}",
                serde_json::to_string(&tagged).expect("a row serializes")
            );
        } else {
            println!("{}", line());
        }
    }
}

/// GFLOP/s with two decimals below 100, none above.
pub fn gflops(g: f64) -> String {
    if g < 100.0 {
        format!("{g:.2}")
    } else {
        format!("{g:.0}")
    }
}

/// A fraction as a percentage, `-` when unknown.
pub fn percent(f: Option<f64>) -> String {
    f.map_or("-".into(), |f| format!("{:.1}%", f * 100.0))
}

/// Milliseconds with three decimals, `-` when unknown.
pub fn ms(s: Option<f64>) -> String {
    s.map_or("-".into(), |s| format!("{:.3}", s * 1e3))
}

/// Run `work` under a spinner on stderr that names it. The spinner is drawn only on a
/// terminal and not when `quiet`, so logs and test output stay clean.
pub fn step<T>(quiet: bool, what: &str, work: impl FnOnce() -> T) -> T {
    let pb = if quiet {
        ProgressBar::hidden()
    } else {
        let pb = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {elapsed:>3} {msg}").expect("valid template"),
        );
        pb.set_message(what.to_string());
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    };
    let out = work();
    pb.finish_and_clear();
    out
}

/// A line on stderr that does not tear a progress bar: above the bar when one is drawn.
pub fn say(pb: &ProgressBar, line: &str) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}
