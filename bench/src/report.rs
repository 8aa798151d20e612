//! Results: what a run measured (throughput, latency percentiles, errors by
//! kind, resource figures), as a table for people and JSON for tools (the
//! plots, RESULTS.md). `ResultsFile` is the JSON document `--json` writes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::resources::Resources;
use crate::stats::Metric;

/// Quantiles kept for the latency-percentile chart.
const CURVE: [f64; 9] = [0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 0.9999, 1.0];

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MetricReport {
    pub name: String,
    pub ok: u64,
    /// Successes per second of the measured window.
    pub rate: f64,
    pub errors: BTreeMap<String, u64>,
    /// Milliseconds.
    pub latency_ms: Latency,
    /// (quantile, ms) pairs for the percentile chart.
    pub curve: Vec<(f64, f64)>,
}

impl MetricReport {
    pub fn from_metric(name: &str, m: &Metric, elapsed: Duration) -> MetricReport {
        let ms = |us: u64| us as f64 / 1000.0;
        let h = &m.hist;
        let empty = h.is_empty();
        let q = |q: f64| {
            if empty {
                0.0
            } else {
                ms(h.value_at_quantile(q))
            }
        };
        MetricReport {
            name: name.to_owned(),
            ok: m.ok,
            rate: m.ok as f64 / elapsed.as_secs_f64().max(1e-9),
            errors: m.errors.clone(),
            latency_ms: Latency {
                mean: if empty { 0.0 } else { h.mean() / 1000.0 },
                p50: q(0.5),
                p90: q(0.9),
                p99: q(0.99),
                p999: q(0.999),
                max: if empty { 0.0 } else { ms(h.max()) },
            },
            curve: if empty {
                Vec::new()
            } else {
                CURVE.iter().map(|&c| (c, q(c))).collect()
            },
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// One scenario against one server.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RunReport {
    pub scenario: String,
    /// "hearth", "synapse", or the URL's host for a plain run.
    pub label: String,
    pub target: String,
    /// The server's `Server` header, when it sends one.
    pub server_header: Option<String>,
    pub params: BTreeMap<String, String>,
    pub duration_s: f64,
    /// The first metric is the scenario's headline figure.
    pub metrics: Vec<MetricReport>,
    pub resources: Option<Resources>,
    pub notes: Vec<String>,
}

impl RunReport {
    /// The scenario's row in the ratio table: `sync-initial` with lazy
    /// loading is its own row (`sync-initial-lazy`), not averaged with the
    /// full-state runs.
    pub fn table_name(&self) -> String {
        match self.params.get("lazy_load_members").map(String::as_str) {
            Some("true") => format!("{}-lazy", self.scenario),
            _ => self.scenario.clone(),
        }
    }

    pub fn headline(&self) -> Option<&MetricReport> {
        self.metrics.first()
    }

    pub fn requests(&self) -> u64 {
        self.metrics.iter().map(|m| m.ok + m.error_count()).sum()
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(
            out,
            "{} against {} [{}] ({:.1} s measured; {})",
            self.scenario,
            self.label,
            self.target,
            self.duration_s,
            params.join(" ")
        );
        if let Some(s) = &self.server_header {
            let _ = writeln!(out, "  server: {s}");
        }
        let _ = writeln!(
            out,
            "  {:<16} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
            "metric", "ok/s", "p50 ms", "p90 ms", "p99 ms", "p999 ms", "max ms", "errors"
        );
        for m in &self.metrics {
            let l = &m.latency_ms;
            let _ = writeln!(
                out,
                "  {:<16} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>8}",
                m.name,
                m.rate,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max,
                m.error_count()
            );
            for (k, v) in &m.errors {
                let _ = writeln!(out, "    {} error {k}: {v}", m.name);
            }
        }
        if let Some(r) = &self.resources {
            let _ = write!(
                out,
                "  server cpu {:.2} s ({:.3} s/1k req), peak rss {:.1} MB (hwm {:.1} MB)",
                r.server_cpu_s, r.server_cpu_s_per_1k, r.peak_rss_mb, r.hwm_rss_mb
            );
            if let (Some(c), Some(k)) = (r.pg_cpu_s, r.pg_cpu_s_per_1k) {
                let _ = write!(out, "; postgres cpu {c:.2} s ({k:.3} s/1k req)");
            }
            out.push('\n');
        }
        for n in &self.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        out
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }
    }
}

/// What `compare` adds: who was compared, with which versions and settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CompareInfo {
    pub peer: String,
    pub hearth_version: String,
    pub peer_version: String,
    pub settings: BTreeMap<String, String>,
}

/// The document written by `--json` and read by `plot`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ResultsFile {
    pub tool: String,
    pub command: String,
    pub machine: Machine,
    pub runs: Vec<RunReport>,
    pub compare: Option<CompareInfo>,
}

impl ResultsFile {
    pub fn new(runs: Vec<RunReport>) -> ResultsFile {
        ResultsFile {
            tool: format!("hearth-bench {}", env!("CARGO_PKG_VERSION")),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            machine: Machine::detect(),
            runs,
            compare: None,
        }
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
    }

    pub fn read(path: &Path) -> anyhow::Result<ResultsFile> {
        let bytes =
            std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// hearth vs peer per scenario: headline throughput, latency, CPU, RSS.
    pub fn ratio_table(&self) -> String {
        let Some(cmp) = &self.compare else {
            return String::new();
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "hearth {} vs {} {} on {} × {} ({})",
            cmp.hearth_version,
            cmp.peer,
            cmp.peer_version,
            self.machine.nproc,
            self.machine.cpu_model,
            self.machine.kernel
        );
        let _ = writeln!(
            out,
            "| scenario | metric | hearth ok/s | {p} ok/s | ratio | hearth p50/p99 ms | {p} p50/p99 ms | hearth cpu s/1k (+pg) | {p} cpu s/1k (+pg) | hearth rss MB | {p} rss MB | errors hearth / {p} |",
            p = cmp.peer
        );
        let _ = writeln!(
            out,
            "|---|---|---:|---:|---:|---|---|---|---|---:|---:|---|"
        );
        let mut scenarios: Vec<String> = Vec::new();
        for r in &self.runs {
            let name = r.table_name();
            if !scenarios.contains(&name) {
                scenarios.push(name);
            }
        }
        for s in scenarios {
            let pick = |label: &str| -> Vec<&RunReport> {
                self.runs
                    .iter()
                    .filter(|r| r.table_name() == s && r.label == label)
                    .collect()
            };
            let (h, p) = (pick("hearth"), pick(&cmp.peer));
            let Some(name) = h
                .first()
                .or(p.first())
                .and_then(|r| r.headline())
                .map(|m| m.name.clone())
            else {
                continue;
            };
            let agg = Agg::of(&h, &name);
            let pagg = Agg::of(&p, &name);
            let ratio = if h.is_empty() || p.is_empty() {
                "– (a run failed)".to_string()
            } else if agg.rate == 0.0 && agg.errors > 0 {
                "– (hearth failed)".to_string()
            } else if pagg.rate > 0.0 {
                format!("**{:.2}**", agg.rate / pagg.rate)
            } else {
                "–".into()
            };
            let _ = writeln!(
                out,
                "| {s} | {name} | {:.0} | {:.0} | {ratio} | {:.2} / {:.2} | {:.2} / {:.2} | {} | {} | {:.0} | {:.0} | {} / {} |",
                agg.rate, pagg.rate, agg.p50, agg.p99, pagg.p50, pagg.p99,
                agg.cpu(), pagg.cpu(), agg.rss, pagg.rss, agg.errors, pagg.errors
            );
        }
        out
    }
}

/// Averages over the rounds of one scenario on one server.
#[derive(Default)]
struct Agg {
    rate: f64,
    p50: f64,
    p99: f64,
    cpu: Option<f64>,
    pg: Option<f64>,
    rss: f64,
    /// Errors of every metric, summed over the rounds.
    errors: u64,
}

impl Agg {
    fn of(runs: &[&RunReport], metric: &str) -> Agg {
        let n = runs.len().max(1) as f64;
        let mut a = Agg::default();
        for r in runs {
            a.errors += r.metrics.iter().map(MetricReport::error_count).sum::<u64>();
            if let Some(m) = r.metrics.iter().find(|m| m.name == metric) {
                a.rate += m.rate / n;
                a.p50 += m.latency_ms.p50 / n;
                a.p99 += m.latency_ms.p99 / n;
            }
            if let Some(res) = &r.resources {
                *a.cpu.get_or_insert(0.0) += res.server_cpu_s_per_1k / n;
                if let Some(pg) = res.pg_cpu_s_per_1k {
                    *a.pg.get_or_insert(0.0) += pg / n;
                }
                a.rss = a.rss.max(res.peak_rss_mb);
            }
        }
        a
    }

    fn cpu(&self) -> String {
        match (self.cpu, self.pg) {
            (Some(c), Some(p)) => format!("{c:.3} (+{p:.3})"),
            (Some(c), None) => format!("{c:.3}"),
            _ => "–".into(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    pub fn sample_run(label: &str, scenario: &str, scale: f64) -> RunReport {
        let mut m = Metric::default();
        for us in 1..=1000u64 {
            m.hist.record((us as f64 * scale) as u64 + 1).unwrap();
        }
        m.ok = 1000;
        m.errors.insert("status 404".into(), 3);
        RunReport {
            scenario: scenario.into(),
            label: label.into(),
            target: "http://127.0.0.1:1".into(),
            server_header: Some("Synapse/1.163.2".into()),
            params: [("users".to_string(), "4".to_string())].into(),
            duration_s: 2.0,
            metrics: vec![MetricReport::from_metric(
                "send",
                &m,
                Duration::from_secs(2),
            )],
            resources: Some(Resources {
                server_cpu_s: 1.0,
                pg_cpu_s: Some(0.5),
                server_cpu_s_per_1k: 1.0,
                pg_cpu_s_per_1k: Some(0.5),
                peak_rss_mb: 30.0,
                hwm_rss_mb: 31.0,
            }),
            notes: vec!["a note".into()],
        }
    }

    #[test]
    fn percentiles_rate_and_table() {
        let r = sample_run("hearth", "send", 1.0);
        let m = &r.metrics[0];
        assert_eq!(m.rate, 500.0);
        assert!((m.latency_ms.p50 - 0.5).abs() < 0.01, "{m:?}");
        assert!((m.latency_ms.max - 1.0).abs() < 0.01);
        assert_eq!(m.curve.len(), CURVE.len());
        let t = r.table();
        assert!(
            t.contains("ok/s") && t.contains("send error status 404: 3"),
            "{t}"
        );
        assert!(t.contains("postgres cpu 0.50 s"), "{t}");
    }

    #[test]
    fn json_round_trip() {
        let mut f = ResultsFile::new(vec![
            sample_run("hearth", "send", 1.0),
            sample_run("synapse", "send", 4.0),
        ]);
        f.compare = Some(CompareInfo {
            peer: "synapse".into(),
            hearth_version: "abc123".into(),
            peer_version: "Synapse/1.163.2".into(),
            settings: BTreeMap::new(),
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        f.write(&path).unwrap();
        let back = ResultsFile::read(&path).unwrap();
        assert_eq!(back, f);
        let t = back.ratio_table();
        assert!(t.contains("| send | send | 500 | 500 | **1.00** |"), "{t}");
        assert!(t.contains("| 3 / 3 |"), "{t}");
    }

    #[test]
    fn lazy_initial_syncs_have_their_own_row() {
        let lazy = |label: &str, scale: f64| {
            let mut r = sample_run(label, "sync-initial", scale);
            r.params.insert("lazy_load_members".into(), "true".into());
            r
        };
        let mut f = ResultsFile::new(vec![
            sample_run("hearth", "sync-initial", 1.0),
            sample_run("synapse", "sync-initial", 4.0),
            lazy("hearth", 1.0),
            lazy("synapse", 2.0),
        ]);
        f.compare = Some(CompareInfo {
            peer: "synapse".into(),
            hearth_version: "abc123".into(),
            peer_version: "Synapse/1.163.2".into(),
            settings: BTreeMap::new(),
        });
        let t = f.ratio_table();
        assert!(t.contains("| sync-initial | "), "{t}");
        assert!(t.contains("| sync-initial-lazy | "), "{t}");
        assert_eq!(
            t.lines()
                .filter(|l| l.starts_with("| sync-initial"))
                .count(),
            2,
            "{t}"
        );
    }

    #[test]
    fn empty_metric_reports_zeroes() {
        let m = MetricReport::from_metric("sync", &Metric::default(), Duration::from_secs(1));
        assert_eq!(m.ok, 0);
        assert_eq!(m.latency_ms, Latency::default());
        assert!(m.curve.is_empty());
    }
}
