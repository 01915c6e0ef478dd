//! Learning curves as standalone SVG: lines with optional bands, axes with ticks, a legend.
//! Enough for a trainer's curves without a plotting dependency. And the statistics that
//! results over seeds are reported with: the mean, a percentile-bootstrap confidence interval
//! of it ([`bootstrap_ci`]) and the area under a curve ([`mean_over_run`]).
//!
//! ```
//! use pompc::plot::{Chart, Series};
//! let mut chart = Chart::new("pendulum-swingup", "environment steps", "episode return");
//! chart.add(Series::line("PO-MPC", vec![(0.0, 10.0), (5000.0, 400.0), (10000.0, 800.0)]));
//! let svg = chart.to_svg();
//! assert!(svg.starts_with("<svg"));
//! ```

use std::fmt::Write;

/// One curve: points `(x, y)` and, optionally, a band `(x, low, high)` drawn beneath it.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// The line.
    pub points: Vec<(f64, f64)>,
    /// A shaded band (e.g. a confidence interval over seeds).
    pub band: Vec<(f64, f64, f64)>,
    /// Drawn thin and faint (e.g. per-episode training returns behind the evaluation).
    pub faint: bool,
    /// Drawn as dots with the band as whiskers, not joined: sparse points such as a paper's
    /// published results every 100k steps, where a line would invent the curve between them.
    pub markers: bool,
}

impl Series {
    /// A plain line.
    pub fn line(name: &str, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            band: Vec::new(),
            faint: false,
            markers: false,
        }
    }

    /// The same line with a band.
    pub fn with_band(mut self, band: Vec<(f64, f64, f64)>) -> Self {
        self.band = band;
        self
    }

    /// The same line drawn faint.
    pub fn faint(mut self) -> Self {
        self.faint = true;
        self
    }

    /// The same points drawn as dots, the band as whiskers ([`Series::markers`]).
    pub fn as_markers(mut self) -> Self {
        self.markers = true;
        self
    }
}

/// A line chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// X-axis label.
    pub x_label: String,
    /// Y-axis label.
    pub y_label: String,
    /// The curves, in legend order.
    pub series: Vec<Series>,
    /// Fixed y range; from the data when `None`.
    pub y_range: Option<(f64, f64)>,
}

const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

impl Chart {
    /// An empty chart.
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Self {
        Chart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            y_range: None,
        }
    }

    /// Add a curve.
    pub fn add(&mut self, s: Series) {
        self.series.push(s);
    }

    /// Points and band rows with a non-finite coordinate, which [`Chart::to_svg`] leaves out
    /// (a diverged run's NaN returns): `(series name, count)` for each series that has any.
    pub fn non_finite(&self) -> Vec<(String, usize)> {
        self.series
            .iter()
            .map(|s| {
                let n = s.points.iter().filter(|p| !finite2(**p)).count()
                    + s.band.iter().filter(|b| !finite3(**b)).count();
                (s.name.clone(), n)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Write [`Chart::to_svg`] to `path` atomically ([`crate::fs::write_atomic`]).
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> crate::Result<()> {
        crate::fs::write_atomic(path, self.to_svg().as_bytes())
    }

    /// The SVG document (800 x 480). Points with a non-finite coordinate are left out (see
    /// [`Chart::non_finite`]), so the document never holds NaN or infinity; a `y_range` that
    /// is not finite and increasing is ignored.
    pub fn to_svg(&self) -> String {
        let (w, h) = (800.0, 480.0);
        let (left, right, top, bottom) = (70.0, 190.0, 40.0, 50.0);
        let (pw, ph) = (w - left - right, h - top - bottom);
        let xs = self.series.iter().flat_map(|s| {
            s.points
                .iter()
                .map(|p| p.0)
                .chain(s.band.iter().map(|b| b.0))
        });
        let (x0, x1) = bounds(xs, (0.0, 1.0));
        let ys = self.series.iter().flat_map(|s| {
            s.points
                .iter()
                .map(|p| p.1)
                .chain(s.band.iter().flat_map(|b| [b.1, b.2]))
        });
        let (y0, y1) = self
            .y_range
            .filter(|(a, b)| a.is_finite() && b.is_finite() && a < b)
            .unwrap_or_else(|| bounds(ys, (0.0, 1.0)));
        let (x0, x1) = (x0.min(0.0), x1);
        let sx = |x: f64| left + (x - x0) / (x1 - x0).max(1e-12) * pw;
        let sy = |y: f64| top + ph - (y - y0) / (y1 - y0).max(1e-12) * ph;
        let mut o = String::new();
        let _ = writeln!(
            o,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(o, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            o,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            left + pw / 2.0,
            esc(&self.title)
        );
        for (i, t) in ticks(x0, x1).into_iter().enumerate() {
            let x = sx(t);
            let _ = writeln!(
                o,
                r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                top + ph,
                top + ph + 16.0,
                label(t, i)
            );
        }
        for (i, t) in ticks(y0, y1).into_iter().enumerate() {
            let y = sy(t);
            let _ = writeln!(
                o,
                r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + pw,
                left - 6.0,
                y + 4.0,
                label(t, i)
            );
        }
        let _ = writeln!(
            o,
            r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
        );
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            left + pw / 2.0,
            h - 12.0,
            esc(&self.x_label)
        );
        let _ = writeln!(
            o,
            r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            top + ph / 2.0,
            esc(&self.y_label)
        );
        for (i, s) in self.series.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            let band: Vec<(f64, f64, f64)> =
                s.band.iter().copied().filter(|b| finite3(*b)).collect();
            if s.markers {
                for b in &band {
                    let (x, lo, hi) = (sx(b.0), sy(b.1), sy(b.2));
                    let _ = writeln!(
                        o,
                        r#"<path d="M{x:.1},{lo:.1} L{x:.1},{hi:.1} M{:.1},{lo:.1} L{:.1},{lo:.1} M{:.1},{hi:.1} L{:.1},{hi:.1}" stroke="{c}" stroke-width="1.5" fill="none"/>"#,
                        x - 4.0,
                        x + 4.0,
                        x - 4.0,
                        x + 4.0
                    );
                }
                for p in s.points.iter().filter(|p| finite2(**p)) {
                    let _ = writeln!(
                        o,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{c}"/>"#,
                        sx(p.0),
                        sy(p.1)
                    );
                }
            } else if band.len() > 1 {
                let mut d = String::new();
                for (j, b) in band.iter().enumerate() {
                    let _ = write!(
                        d,
                        "{}{:.1},{:.1} ",
                        if j == 0 { "M" } else { "L" },
                        sx(b.0),
                        sy(b.2)
                    );
                }
                for b in band.iter().rev() {
                    let _ = write!(d, "L{:.1},{:.1} ", sx(b.0), sy(b.1));
                }
                let _ = writeln!(
                    o,
                    r#"<path d="{d}Z" fill="{c}" fill-opacity="0.15" stroke="none"/>"#
                );
            }
            let pts: Vec<String> = s
                .points
                .iter()
                .filter(|p| finite2(**p))
                .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1)))
                .collect();
            if !pts.is_empty() && !s.markers {
                let (width, opacity) = if s.faint { (1.0, 0.35) } else { (2.0, 1.0) };
                let _ = writeln!(
                    o,
                    r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="{width}" stroke-opacity="{opacity}"/>"#,
                    pts.join(" ")
                );
            }
            let ly = top + 10.0 + 18.0 * i as f64;
            let lx = left + pw + 12.0;
            if s.markers {
                let _ = write!(
                    o,
                    r#"<circle cx="{}" cy="{ly}" r="4" fill="{c}"/>"#,
                    lx + 10.0
                );
            } else {
                let _ = write!(
                    o,
                    r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="2" stroke-opacity="{}"/>"#,
                    lx + 20.0,
                    if s.faint { 0.35 } else { 1.0 }
                );
            }
            let _ = writeln!(
                o,
                r#"<text x="{}" y="{}">{}</text>"#,
                lx + 26.0,
                ly + 4.0,
                esc(&s.name)
            );
        }
        o.push_str("</svg>\n");
        o
    }
}

fn finite2(p: (f64, f64)) -> bool {
    p.0.is_finite() && p.1.is_finite()
}

fn finite3(b: (f64, f64, f64)) -> bool {
    b.0.is_finite() && b.1.is_finite() && b.2.is_finite()
}

fn bounds(v: impl Iterator<Item = f64>, empty: (f64, f64)) -> (f64, f64) {
    let (lo, hi) = v
        .filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
    if lo > hi {
        empty
    } else if lo == hi {
        (lo - 1.0, hi + 1.0)
    } else {
        (lo, hi)
    }
}

// About 6 round ticks in [lo, hi].
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    // At most a dozen: a step below the values' resolution (a narrow range far from 0) would
    // not move `t` at all.
    while t <= hi + step * 1e-9 && out.len() < 12 {
        out.push(t);
        let next = t + step;
        if next <= t {
            break;
        }
        t = next;
    }
    out
}

fn label(v: f64, _i: usize) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e4 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The mean of `values` (NaN when empty).
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// A percentile-bootstrap confidence interval of the mean of `values` (one value per seed):
/// `resamples` means of `values.len()` draws with replacement, and their `(1 - level) / 2`
/// and `(1 + level) / 2` quantiles (linear interpolation). The same `seed` gives the same
/// interval. `None` when `values` is empty or holds a non-finite value; with one value the
/// interval is that value.
///
/// # Panics
///
/// If `level` is not inside `(0, 1)` or `resamples` is 0 (a caller's constant, not data).
///
/// ```
/// let (lo, hi) = pompc::plot::bootstrap_ci(&[700.0, 800.0, 900.0], 0.95, 2000, 0).unwrap();
/// assert!(700.0 <= lo && lo < 800.0 && 800.0 < hi && hi <= 900.0);
/// ```
pub fn bootstrap_ci(values: &[f64], level: f64, resamples: usize, seed: u64) -> Option<(f64, f64)> {
    use rand::{Rng, SeedableRng};
    assert!(
        level > 0.0 && level < 1.0 && resamples > 0,
        "bootstrap_ci: level in (0, 1) and at least one resample"
    );
    if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let n = values.len();
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| values[r.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        let at = q * (resamples - 1) as f64;
        let (i, f) = (at.floor() as usize, at.fract());
        let next = means[(i + 1).min(resamples - 1)];
        means[i] + f * (next - means[i])
    };
    Some((quantile((1.0 - level) / 2.0), quantile((1.0 + level) / 2.0)))
}

/// The area under a curve divided by the span of its steps: the curve's mean over the run,
/// by the trapezoid rule over `points` `(step, value)` in step order. The same units as the
/// values, so runs of different lengths compare. `None` with fewer than two points, steps
/// that do not increase, or a non-finite value.
///
/// ```
/// // A return that climbs linearly from 0 to 1000 averages 500.
/// assert_eq!(pompc::plot::mean_over_run(&[(0.0, 0.0), (100.0, 1000.0)]), Some(500.0));
/// ```
pub fn mean_over_run(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2
        || points.iter().any(|p| !p.0.is_finite() || !p.1.is_finite())
        || points.windows(2).any(|w| w[1].0 <= w[0].0)
    {
        return None;
    }
    let area: f64 = points
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
        .sum();
    Some(area / (points[points.len() - 1].0 - points[0].0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_ticks() {
        assert_eq!(
            ticks(0.0, 1000.0),
            vec![0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]
        );
        assert_eq!(label(100_000.0, 0), "100k");
        assert_eq!(label(0.5, 0), "0.5");
    }

    #[test]
    fn non_finite_points_stay_out_of_the_svg() {
        let mut c = Chart::new("t", "x", "y");
        c.add(
            Series::line("a", vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0)]).with_band(vec![
                (0.0, 0.5, 1.5),
                (1.0, f64::INFINITY, 2.0),
                (2.0, 2.5, 3.5),
            ]),
        );
        c.y_range = Some((f64::NAN, 1.0));
        let s = c.to_svg();
        assert!(!s.contains("NaN") && !s.contains("inf"), "{s}");
        assert_eq!(c.non_finite(), vec![("a".to_string(), 2)]);
        // A narrow range far from zero ends its ticks instead of looping.
        assert!(ticks(1e30, 1e30 + 1e10).len() <= 12);
    }

    #[test]
    fn svg_holds_every_series() {
        let mut c = Chart::new("t <1>", "x", "y");
        c.add(
            Series::line("a", vec![(0.0, 1.0), (1.0, 2.0)])
                .with_band(vec![(0.0, 0.5, 1.5), (1.0, 1.5, 2.5)]),
        );
        c.add(Series::line("b", vec![(0.0, 3.0)]).faint());
        let s = c.to_svg();
        assert_eq!(s.matches("<polyline").count(), 2);
        assert_eq!(s.matches("fill-opacity").count(), 1);
        assert!(s.contains("t &lt;1&gt;"));
    }

    #[test]
    fn marker_series_are_dots_and_whiskers_not_lines() {
        let mut c = Chart::new("t", "x", "y");
        c.add(Series::line("run", vec![(0.0, 1.0), (1.0, 2.0)]));
        c.add(
            Series::line("paper", vec![(0.0, 1.5), (1.0, f64::NAN), (2.0, 3.0)])
                .with_band(vec![(0.0, 1.0, 2.0), (2.0, 2.5, 3.5)])
                .as_markers(),
        );
        let s = c.to_svg();
        // One line (the run's); two dots and the legend's dot; two whiskers; no band polygon.
        assert_eq!(s.matches("<polyline").count(), 1, "{s}");
        assert_eq!(s.matches("<circle").count(), 3, "{s}");
        assert_eq!(s.matches("<path").count(), 2, "{s}");
        assert!(!s.contains("fill-opacity") && !s.contains("NaN"), "{s}");
    }

    /// The interval of a bootstrap whose resamples are all known: two values, many resamples.
    #[test]
    fn bootstrap_interval_matches_its_distribution() {
        // Means of two draws from {0, 1}: 0 (1/4), 0.5 (1/2), 1 (1/4); the 95% interval of a
        // large bootstrap is [0, 1], the 40% one [0.5, 0.5].
        assert_eq!(bootstrap_ci(&[0.0, 1.0], 0.95, 20_000, 1), Some((0.0, 1.0)));
        assert_eq!(bootstrap_ci(&[0.0, 1.0], 0.4, 20_000, 1), Some((0.5, 0.5)));
        // Deterministic per seed, inside the values' range, around the mean.
        let v = [3.0, 9.0, 4.0, 7.0, 5.5];
        let a = bootstrap_ci(&v, 0.95, 4000, 7).unwrap();
        assert_eq!(Some(a), bootstrap_ci(&v, 0.95, 4000, 7));
        assert!(
            3.0 <= a.0 && a.0 < mean(&v) && mean(&v) < a.1 && a.1 <= 9.0,
            "{a:?}"
        );
        // A wider level gives a wider interval.
        let b = bootstrap_ci(&v, 0.5, 4000, 7).unwrap();
        assert!(a.0 < b.0 && b.1 < a.1, "{a:?} {b:?}");
        assert_eq!(bootstrap_ci(&[2.5], 0.95, 100, 0), Some((2.5, 2.5)));
        assert_eq!(bootstrap_ci(&[], 0.95, 100, 0), None);
        assert_eq!(bootstrap_ci(&[1.0, f64::NAN], 0.95, 100, 0), None);
    }

    #[test]
    fn mean_over_run_is_the_normalized_trapezoid_area() {
        let p = [(0.0, 0.0), (10.0, 10.0), (30.0, 10.0)];
        // (10 * 5 + 20 * 10) / 30
        assert_eq!(mean_over_run(&p), Some(250.0 / 30.0));
        assert_eq!(mean_over_run(&p[..1]), None);
        assert_eq!(mean_over_run(&[(0.0, 1.0), (0.0, 2.0)]), None);
        assert_eq!(mean_over_run(&[(0.0, 1.0), (1.0, f64::INFINITY)]), None);
    }
}
