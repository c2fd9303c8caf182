//! What a run measured: one row per (metric, path), the ratio of each
//! candidate figure to the baseline's, a table for people and JSON for
//! machines.

use std::fmt::{self, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::path::{Path, Role};
use crate::{Benchmark, Settings};

/// What a report compares: the packet paths ([`Path`], the default), or
/// where the sessiond benchmarks ran ([`crate::sessiond::Where`]). One of
/// them is the baseline; every candidate's figures are divided by its.
pub trait Subject:
    Copy + PartialEq + fmt::Debug + fmt::Display + Serialize + DeserializeOwned
{
    fn role(self) -> Role;
    /// One line for the report.
    fn describe(self) -> &'static str;
    /// The report's line about CPU pinning.
    fn pinning(settings: &Settings) -> String {
        let pinned = |cpu: Option<usize>| match cpu {
            Some(cpu) => format!("pinned to CPU {cpu}"),
            None => "not pinned".into(),
        };
        format!(
            "endpoints (clients and servers) {}; the paths' daemons {}",
            pinned(settings.endpoints_cpu),
            pinned(settings.daemons_cpu)
        )
    }
}

impl Subject for Path {
    fn role(self) -> Role {
        Path::role(self)
    }
    fn describe(self) -> &'static str {
        Path::describe(self)
    }
}

/// A figure a benchmark reports.
#[derive(Debug, PartialEq, Eq)]
pub struct Metric {
    /// `benchmark.what`, stable: scripts key on it.
    pub name: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
    pub description: &'static str,
}

/// One figure measured on one path.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub metric: &'static Metric,
    pub value: f64,
    /// How it was measured (duration, sample count, errors...).
    pub detail: String,
}

impl Measurement {
    pub fn new(metric: &'static Metric, value: f64, detail: impl Into<String>) -> Measurement {
        Measurement {
            metric,
            value,
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Measured,
    NotImplemented,
}

/// A path in this run and whether it could be measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathReport<P = Path> {
    pub path: P,
    pub role: Role,
    pub status: Status,
    pub description: String,
    /// The lab it ran on (removed again by the end of the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lab: Option<String>,
    /// Why it was not measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One metric on one path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow<P = Path> {
    pub name: String,
    pub path: P,
    pub role: Role,
    pub status: Status,
    /// None when the path is not implemented.
    pub value: Option<f64>,
    pub unit: String,
    pub higher_is_better: bool,
    /// This row's value divided by the baseline's value of the same metric
    /// in the same run (candidate rows, when both were measured).
    pub ratio_vs_baseline: Option<f64>,
    pub description: String,
    pub detail: String,
}

/// Where the run happened: figures only compare on the same machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    /// Share of CPU time (0..1) the machine spent busy in the quarter
    /// second before the run: other work (a parallel test suite) lowers
    /// every figure.
    pub busy_before_run: f64,
}

impl Machine {
    fn this() -> Machine {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_default();
        Machine {
            kernel,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            busy_before_run: busy_share(Duration::from_millis(250)),
        }
    }
}

/// The share of CPU time spent not idle over `window`, from /proc/stat.
fn busy_share(window: Duration) -> f64 {
    // (busy, total) jiffies over all CPUs.
    let sample = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let total: u64 = fields.iter().take(8).sum();
        // idle + iowait
        let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
        Some((total - idle, total))
    };
    let Some((busy0, total0)) = sample() else {
        return 0.0;
    };
    // A measurement window, not a wait for an event.
    std::thread::sleep(window);
    match sample() {
        Some((busy1, total1)) if total1 > total0 => {
            (busy1.saturating_sub(busy0)) as f64 / (total1 - total0) as f64
        }
        _ => 0.0,
    }
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "P: Subject")]
pub struct Report<P = Path> {
    /// When the run started, UTC (RFC 3339).
    pub date: String,
    pub settings: Settings,
    pub machine: Machine,
    pub paths: Vec<PathReport<P>>,
    pub results: Vec<ResultRow<P>>,
    /// Conclusions drawn from the figures (goals met or missed), shown
    /// under the table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Report<Path> {
    pub fn new(settings: Settings) -> Report {
        Report::of(settings)
    }

    pub(crate) fn add_path(&mut self, path: Path, lab: &str) {
        self.add_subject(path, Some(lab));
    }

    /// A path that cannot run: one "not implemented" row per metric it
    /// would have measured, so the gap is visible in the results.
    pub(crate) fn add_unavailable(&mut self, path: Path, reason: &str, benchmarks: &[Benchmark]) {
        self.paths.push(PathReport {
            path,
            role: path.role(),
            status: Status::NotImplemented,
            description: path.describe().into(),
            lab: None,
            reason: Some(reason.into()),
        });
        for metric in benchmarks.iter().flat_map(|b| b.metrics()) {
            self.results.push(ResultRow {
                name: metric.name.into(),
                path,
                role: path.role(),
                status: Status::NotImplemented,
                value: None,
                unit: metric.unit.into(),
                higher_is_better: metric.higher_is_better,
                ratio_vs_baseline: None,
                description: metric.description.into(),
                detail: format!("not implemented: {reason}"),
            });
        }
    }
}

impl<P: Subject> Report<P> {
    /// An empty report comparing subjects of type `P`.
    pub fn of(settings: Settings) -> Report<P> {
        Report {
            date: utc_now(),
            settings,
            machine: Machine::this(),
            paths: Vec::new(),
            results: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// A subject measured in this run (on `lab`, if it had one).
    pub(crate) fn add_subject(&mut self, path: P, lab: Option<&str>) {
        self.paths.push(PathReport {
            path,
            role: path.role(),
            status: Status::Measured,
            description: path.describe().into(),
            lab: lab.map(String::from),
            reason: None,
        });
    }

    pub(crate) fn add_measurements(&mut self, path: P, measured: Vec<Measurement>) {
        for m in measured {
            self.results.push(ResultRow {
                name: m.metric.name.into(),
                path,
                role: path.role(),
                status: Status::Measured,
                value: Some(m.value),
                unit: m.metric.unit.into(),
                higher_is_better: m.metric.higher_is_better,
                ratio_vs_baseline: None,
                description: m.metric.description.into(),
                detail: m.detail,
            });
        }
    }

    /// Fills `ratio_vs_baseline` of every candidate row whose metric was
    /// measured on the baseline too.
    pub(crate) fn compute_ratios(&mut self) {
        let baseline: Vec<(String, f64)> = self
            .results
            .iter()
            .filter(|r| r.role == Role::Baseline)
            .filter_map(|r| Some((r.name.clone(), r.value?)))
            .collect();
        for row in &mut self.results {
            if row.role != Role::Candidate {
                continue;
            }
            row.ratio_vs_baseline = match (row.value, baseline.iter().find(|(n, _)| *n == row.name))
            {
                (Some(v), Some((_, b))) if *b > 0.0 => Some(v / b),
                _ => None,
            };
        }
    }

    /// The row of `metric` on `path`.
    pub fn get(&self, metric: &str, path: P) -> Option<&ResultRow<P>> {
        self.results
            .iter()
            .find(|r| r.name == metric && r.path == path)
    }

    pub fn to_json(&self) -> String {
        // Plain data (strings, numbers, options): serializing cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The human-readable report: paths, one line per metric with a column
    /// per path and the candidate/baseline ratio, then how each figure was
    /// measured.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "MobiDesk benchmarks, {} ({}); kernel {}, {} CPUs ({}), {:.0}% busy before the run",
            self.date,
            if self.settings.smoke {
                "SMOKE run: checks the benchmarks work, too short to quote"
            } else {
                "full run"
            },
            self.machine.kernel,
            self.machine.cpus,
            self.machine.cpu_model,
            self.machine.busy_before_run * 100.0
        );
        let _ = writeln!(out, "  {}", P::pinning(&self.settings));
        if self.machine.busy_before_run > 0.1 {
            let _ = writeln!(
                out,
                "  WARNING: the machine was busy when the run started; figures may be low"
            );
        }
        for p in &self.paths {
            let state = match p.status {
                Status::Measured => p.description.clone(),
                Status::NotImplemented => format!(
                    "NOT IMPLEMENTED: {}",
                    p.reason.as_deref().unwrap_or("no reason given")
                ),
            };
            let _ = writeln!(out, "  {:<9}  {:<17}  {state}", p.role, p.path);
        }
        out.push('\n');

        let has_baseline = self.paths.iter().any(|p| p.role == Role::Baseline);
        let candidates: Vec<P> = self
            .paths
            .iter()
            .filter(|p| p.role == Role::Candidate)
            .map(|p| p.path)
            .collect();
        let mut header = vec!["benchmark".to_string(), "unit".to_string()];
        header.extend(self.paths.iter().map(|p| p.path.to_string()));
        if has_baseline {
            header.extend(candidates.iter().map(|c| format!("{c} / baseline")));
        }
        let mut rows = vec![header];
        for name in names_in_order(self.results.iter().map(|r| r.name.as_str())) {
            let Some(first) = self.results.iter().find(|r| r.name == name) else {
                continue;
            };
            let mut row = vec![
                name.to_string(),
                unit_column(&first.unit, first.higher_is_better),
            ];
            for p in &self.paths {
                row.push(match self.get(name, p.path) {
                    Some(ResultRow { value: Some(v), .. }) => format_value(*v),
                    Some(ResultRow {
                        status: Status::NotImplemented,
                        ..
                    }) => "not implemented".into(),
                    _ => "-".into(),
                });
            }
            if has_baseline {
                for c in &candidates {
                    row.push(match self.get(name, *c).and_then(|r| r.ratio_vs_baseline) {
                        Some(ratio) => format!("{ratio:.2}x"),
                        None => "-".into(),
                    });
                }
            }
            rows.push(row);
        }
        write_table(&mut out, &rows);

        out.push('\n');
        for r in self.results.iter().filter(|r| r.status == Status::Measured) {
            let _ = writeln!(
                out,
                "  {} [{}]: {}; {}",
                r.name, r.path, r.description, r.detail
            );
        }
        if !has_baseline {
            let _ = writeln!(out, "  (no baseline in this run: no ratios)");
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                let _ = writeln!(out, "{note}");
            }
        }
        out
    }
}

/// Writes `rows` as aligned columns, two spaces apart: the first two
/// columns left-aligned, the figures right-aligned; `rows[0]` is the header.
pub(crate) fn write_table(out: &mut String, rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i < 2 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
}

/// The median of `v` (the mean of the middle two for an even count; NaN
/// for none).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Enough digits to compare, not more than the noise.
/// Each metric name once, in the order of its first row.
pub fn names_in_order<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// A table's unit column: the unit and which way is better.
pub fn unit_column(unit: &str, higher_is_better: bool) -> String {
    let better = if higher_is_better {
        "higher is better"
    } else {
        "lower is better"
    };
    format!("{unit} ({better})")
}

fn format_value(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 100.0 {
        format!("{v:.1}")
    } else if v >= 0.1 || v == 0.0 {
        format!("{v:.2}")
    } else {
        // Small figures (an idle session's CPU share): two significant digits.
        let digits = (-v.log10().floor()) as usize + 1;
        format!("{v:.digits$}")
    }
}

/// Now, UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

fn format_utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_704_067_199), "2023-12-31T23:59:59Z");
        assert_eq!(format_utc(1_709_210_096), "2024-02-29T12:34:56Z");
    }

    static FAST: Metric = Metric {
        name: "x.rate",
        unit: "Gbit/s",
        higher_is_better: true,
        description: "test",
    };

    #[test]
    fn ratios_are_candidate_over_baseline_and_gaps_are_explicit() {
        let mut r = Report::new(Settings::new(true));
        r.add_path(Path::KernelForwarding, "l1");
        r.add_measurements(
            Path::KernelForwarding,
            vec![Measurement::new(&FAST, 20.0, "d")],
        );
        r.add_path(Path::Dataplane, "l2");
        r.add_measurements(Path::Dataplane, vec![Measurement::new(&FAST, 5.0, "d")]);
        r.compute_ratios();
        assert_eq!(
            r.get("x.rate", Path::Dataplane).unwrap().ratio_vs_baseline,
            Some(0.25)
        );
        assert_eq!(
            r.get("x.rate", Path::KernelForwarding)
                .unwrap()
                .ratio_vs_baseline,
            None
        );
        assert!(r.table().contains("0.25x"), "{}", r.table());

        let mut r = Report::new(Settings::new(true));
        r.add_path(Path::KernelForwarding, "l1");
        r.add_unavailable(Path::Dataplane, "because", &[Benchmark::Latency]);
        r.compute_ratios();
        let row = r.get("latency.p50", Path::Dataplane).unwrap();
        assert_eq!(
            (row.status, row.value, row.ratio_vs_baseline),
            (Status::NotImplemented, None, None)
        );
        let table = r.table();
        assert!(table.contains("NOT IMPLEMENTED: because"), "{table}");
        assert!(table.contains("not implemented"), "{table}");
        // A share that the default float parser reads back one ulp off
        // (seen in CI): the JSON must give back exactly what was measured.
        r.machine.busy_before_run = 0.196_078_431_372_549_02;
        let back: Report = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(back, r);
    }
}
