//! Helpers for the project's benchmarks: criterion's estimates read back, resident memory, and
//! the rows a benchmark hands to the benchmark report (`cargo xtask bench --report`).
//!
//! A benchmark prints its own ratio table; beside each line of it, it may build a [`ReportRow`]
//! and call [`record_row`], which appends the row as one JSON line to the file named by
//! [`ROWS_ENV`] when that variable is set (xtask sets it) and does nothing otherwise. The report
//! builder (`aether-runtime-bench`'s `bench-report`) reads the lines, adds the targets and draws
//! the chart.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The variable naming the file that [`record_row`] appends to.
pub const ROWS_ENV: &str = "AETHER_BENCH_ROWS";

/// The variable that asks for a quick run (`cargo xtask bench --report --quick`): smaller sizes,
/// fewer rounds and shorter criterion measurements, marked "quick" wherever a figure is shown.
pub const QUICK_ENV: &str = "AETHER_BENCH_QUICK";

/// Whether this is a quick run ([`QUICK_ENV`] set to anything but empty or `0`).
pub fn quick() -> bool {
    std::env::var_os(QUICK_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The runtime the hand-written benches (no criterion) measure on: multi-threaded with two
/// workers, like the machine the report is written on.
pub fn two_workers() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn estimates_path(id: &[&str]) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    id.iter()
        .fold(target.join("criterion"), |p, part| p.join(part))
        .join("new/estimates.json")
}

/// Criterion's mean estimate, in nanoseconds per iteration, of the benchmark at `id` (its path
/// under `target/criterion`: group, function, and parameter if any), if it ran.
pub fn mean_ns(id: &[&str]) -> Option<f64> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(estimates_path(id)).ok()?).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

/// Criterion's estimate of a benchmark's mean time per iteration, in nanoseconds, with its 95%
/// confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The mean.
    pub mean: f64,
    /// The interval's lower bound.
    pub low: f64,
    /// The interval's upper bound.
    pub high: f64,
}

/// The estimate of the benchmark at `id` (as for [`mean_ns`]) if criterion wrote it at or after
/// `since`: a benchmark a filter left out of this run has an older file, which must not pass for
/// a fresh figure.
pub fn estimate(id: &[&str], since: SystemTime) -> Option<Estimate> {
    let path = estimates_path(id);
    let written = std::fs::metadata(&path).ok()?.modified().ok()?;
    if written < since {
        return None;
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let mean = &json["mean"];
    Some(Estimate {
        mean: mean["point_estimate"].as_f64()?,
        low: mean["confidence_interval"]["lower_bound"].as_f64()?,
        high: mean["confidence_interval"]["upper_bound"].as_f64()?,
    })
}

/// This process's resident memory in bytes (`VmRSS` from `/proc/self/status`); `None` where
/// there is no `/proc`.
pub fn resident_bytes() -> Option<u64> {
    resident_bytes_of("/proc/self/status")
}

/// CPU time (user + system) in seconds from a `/proc/<pid>/stat` file (`/proc/self/stat` for
/// this process); `None` where there is no `/proc`.
pub fn cpu_seconds_of(stat: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stat).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    // utime and stime, in clock ticks (USER_HZ, 100 on Linux).
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// `VmRSS` in bytes from a `/proc/<pid>/status` file.
pub fn resident_bytes_of(status: &str) -> Option<u64> {
    let text = std::fs::read_to_string(status).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// More is better: a rate (events/s, commands/s).
    Higher,
    /// Less is better: a time or a size.
    Lower,
}

impl Better {
    fn as_str(self) -> &'static str {
        match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
        }
    }
}

/// A measured figure and its unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// The value, in `unit`.
    pub value: f64,
    /// The unit, e.g. `events/s`, `us`, `B`.
    pub unit: String,
}

impl Figure {
    /// `value` in `unit`.
    pub fn new(value: f64, unit: impl Into<String>) -> Self {
        Self {
            value,
            unit: unit.into(),
        }
    }
}

/// The spread of a row's ratio over a bench's rounds (min-max) or from criterion's confidence
/// intervals.
#[derive(Debug, Clone, PartialEq)]
pub struct Spread {
    /// The lowest ratio.
    pub low: f64,
    /// The highest ratio.
    pub high: f64,
    /// How it was obtained, e.g. `min-max of 15 rounds`.
    pub how: String,
}

impl Spread {
    /// The smallest and largest of `ratios` (one per round), or `None` for fewer than two.
    pub fn of_rounds(ratios: &[f64]) -> Option<Self> {
        if ratios.len() < 2 {
            return None;
        }
        Some(Self {
            low: ratios.iter().copied().fold(f64::INFINITY, f64::min),
            high: ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            how: format!("min-max of {} rounds", ratios.len()),
        })
    }
}

/// One row of the benchmark report: a measured path, Aether's figure and one baseline's from the
/// same run, and their ratio, Aether / baseline (so above 1 is better for a rate, below 1 for a
/// time or a size).
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRow {
    /// A stable id the report's targets are keyed by, e.g. `js.append.sequential`.
    pub id: String,
    /// What was measured, for a reader (sizes included).
    pub path: String,
    /// Aether's figure.
    pub aether: Figure,
    /// The baseline's name.
    pub baseline: String,
    /// The baseline's figure, in Aether's unit.
    pub baseline_figure: Figure,
    /// Which way the figures are better.
    pub better: Better,
    /// Aether / baseline, unless the bench's headline is another ratio (a median of per-round
    /// ratios).
    pub ratio: f64,
    /// The ratio's spread, where the bench has rounds or intervals.
    pub spread: Option<Spread>,
    /// Client CPU in microseconds per operation: Aether's and the baseline's.
    pub cpu_us: Option<(f64, f64)>,
    /// Anything a reader must know to read the row.
    pub note: Option<String>,
    /// The ratio of each run, where the bench repeats the whole measurement and its target
    /// counts runs (e.g. `>= 0.8` in 4 of 5 runs); empty otherwise.
    pub rounds: Vec<f64>,
}

impl ReportRow {
    /// A row with ratio `aether / baseline`.
    pub fn new(
        id: impl Into<String>,
        path: impl Into<String>,
        better: Better,
        aether: Figure,
        baseline: impl Into<String>,
        baseline_figure: Figure,
    ) -> Self {
        let ratio = aether.value / baseline_figure.value;
        Self {
            id: id.into(),
            path: path.into(),
            aether,
            baseline: baseline.into(),
            baseline_figure,
            better,
            ratio,
            spread: None,
            cpu_us: None,
            note: None,
            rounds: Vec::new(),
        }
    }

    /// A throughput row from two criterion estimates of the same work, `units` of `unit` per
    /// iteration: rates per second, the spread from the two confidence intervals.
    pub fn criterion_rate(
        id: impl Into<String>,
        path: impl Into<String>,
        units: f64,
        unit: &str,
        aether: Estimate,
        baseline: impl Into<String>,
        base: Estimate,
    ) -> Self {
        let rate = |ns: f64| units / ns * 1e9;
        let mut row = Self::new(
            id,
            path,
            Better::Higher,
            Figure::new(rate(aether.mean), format!("{unit}/s")),
            baseline,
            Figure::new(rate(base.mean), format!("{unit}/s")),
        );
        row.spread = Some(Spread {
            low: base.low / aether.high,
            high: base.high / aether.low,
            how: "from criterion's 95% intervals of both means".to_owned(),
        });
        row
    }

    /// A time-per-operation row from two criterion estimates, `per` operations per iteration,
    /// in nanoseconds per operation.
    pub fn criterion_time(
        id: impl Into<String>,
        path: impl Into<String>,
        per: f64,
        aether: Estimate,
        baseline: impl Into<String>,
        base: Estimate,
    ) -> Self {
        let mut row = Self::new(
            id,
            path,
            Better::Lower,
            Figure::new(aether.mean / per, "ns"),
            baseline,
            Figure::new(base.mean / per, "ns"),
        );
        row.spread = Some(Spread {
            low: aether.low / base.high,
            high: aether.high / base.low,
            how: "from criterion's 95% intervals of both means".to_owned(),
        });
        row
    }

    /// With `spread`.
    pub fn spread(mut self, spread: Option<Spread>) -> Self {
        self.spread = spread;
        self
    }

    /// With another headline ratio than Aether / baseline (e.g. the median of per-round ratios).
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = ratio;
        self
    }

    /// With client CPU per operation, in microseconds.
    pub fn cpu_us(mut self, aether: f64, baseline: f64) -> Self {
        self.cpu_us = Some((aether, baseline));
        self
    }

    /// With a note for the reader.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    /// With the ratio of each run (for a target that counts the runs meeting it).
    pub fn rounds(mut self, ratios: Vec<f64>) -> Self {
        self.rounds = ratios;
        self
    }

    /// The row as the one JSON line the report reads.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "schema": 1,
            "id": self.id,
            "bench": bench_name(),
            "row": self.path,
            "quick": quick(),
            "aether": { "value": self.aether.value, "unit": self.aether.unit },
            "baseline": {
                "name": self.baseline,
                "value": self.baseline_figure.value,
                "unit": self.baseline_figure.unit,
            },
            "better": self.better.as_str(),
            "ratio": self.ratio,
            "spread": self.spread.as_ref().map(|s| serde_json::json!({
                "low": s.low, "high": s.high, "how": s.how,
            })),
            "cpu_us": self.cpu_us.map(|(a, b)| serde_json::json!({ "aether": a, "baseline": b })),
            "note": self.note,
            // Absent (null) for most rows; the report reads a missing field as no runs.
            "rounds": (!self.rounds.is_empty()).then_some(&self.rounds),
        })
    }
}

/// This benchmark's name: the executable's, less cargo's hash suffix.
fn bench_name() -> String {
    let exe = std::env::current_exe().ok();
    let stem = exe
        .as_deref()
        .and_then(Path::file_stem)
        .and_then(|s| s.to_str())
        .unwrap_or("unknown");
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
        _ => stem.to_owned(),
    }
}

/// Appends `row` as one JSON line to the file named by [`ROWS_ENV`] when it is set; does
/// nothing otherwise. A row with a figure that is zero or not finite, or that cannot be
/// written, is reported on stderr instead (the benchmark's own table is still printed; the
/// report then lists the row as not measured).
pub fn record_row(row: &ReportRow) {
    let Some(path) = std::env::var_os(ROWS_ENV) else {
        return;
    };
    let measured = |x: f64| x.is_finite() && x > 0.0;
    if !(measured(row.aether.value) && measured(row.baseline_figure.value) && measured(row.ratio)) {
        // A zero or infinite figure (a clock too coarse, memory that did not grow) is no
        // measurement: the report lists the row as not measured rather than judge it.
        eprintln!(
            "benchmark report: row `{}` not recorded: Aether {}, baseline {}, ratio {}",
            row.id, row.aether.value, row.baseline_figure.value, row.ratio
        );
        return;
    }
    let mut line = row.to_json().to_string();
    line.push('\n');
    // One write of the whole line to a file opened for appending: lines never interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!(
            "benchmark report: could not append row `{}` to {}: {e}",
            row.id,
            Path::new(&path).display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu_and_a_missing_file_reads_as_none() {
        let spin = (0..2_000_000u64).fold(0u64, |a, b| a.wrapping_add(b * b));
        std::hint::black_box(spin);
        let cpu = cpu_seconds_of("/proc/self/stat").expect("/proc/self/stat parses");
        assert!(cpu >= 0.0);
        assert_eq!(cpu_seconds_of("/proc/no-such-pid/stat"), None);
    }

    #[test]
    fn reads_this_process_resident_memory() {
        let rss = super::resident_bytes().unwrap_or(0);
        assert!(rss > 1 << 20, "a test process holds more than 1 MiB: {rss}");
    }

    #[test]
    fn a_row_is_one_json_line_with_its_ratio_and_spread() {
        let row = ReportRow::new(
            "x.y",
            "path",
            Better::Higher,
            Figure::new(90.0, "events/s"),
            "raw",
            Figure::new(100.0, "events/s"),
        )
        .spread(Spread::of_rounds(&[0.8, 0.95, 0.9]))
        .cpu_us(2.0, 1.5);
        let json = row.to_json();
        assert_eq!(json["id"], "x.y");
        assert_eq!(json["better"], "higher");
        assert!((json["ratio"].as_f64().unwrap_or(0.0) - 0.9).abs() < 1e-9);
        assert_eq!(json["spread"]["low"], 0.8);
        assert_eq!(json["spread"]["high"], 0.95);
        assert_eq!(json["spread"]["how"], "min-max of 3 rounds");
        assert_eq!(json["cpu_us"]["baseline"], 1.5);
        assert!(json["rounds"].is_null(), "no runs: no field");
        assert!(!json.to_string().contains('\n'));
        let json = row.rounds(vec![0.81, 0.79]).to_json();
        assert_eq!(json["rounds"], serde_json::json!([0.81, 0.79]));
    }

    #[test]
    fn one_round_has_no_spread() {
        assert_eq!(Spread::of_rounds(&[1.0]), None);
    }

    #[test]
    fn criterion_rates_turn_times_into_a_ratio_and_an_interval() {
        let a = Estimate {
            mean: 100.0,
            low: 90.0,
            high: 110.0,
        };
        let b = Estimate {
            mean: 80.0,
            low: 75.0,
            high: 85.0,
        };
        let row = ReportRow::criterion_rate("id", "p", 10.0, "events", a, "raw", b);
        assert!((row.ratio - 0.8).abs() < 1e-9);
        let s = row
            .spread
            .unwrap_or_else(|| unreachable!("criterion rows have a spread"));
        assert!((s.low - 75.0 / 110.0).abs() < 1e-9 && (s.high - 85.0 / 90.0).abs() < 1e-9);
        let row = ReportRow::criterion_time("id", "p", 1.0, a, "raw", b);
        assert!((row.ratio - 1.25).abs() < 1e-9);
        assert_eq!(row.better, Better::Lower);
    }
}
