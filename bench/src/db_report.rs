//! The `db` scenario's report: per-mode figures, group-commit batching,
//! and the speed-up over one-transaction-per-insert, as a table or JSON.

use std::time::Duration;

use hearth::db::GroupCommitStats;
use serde_json::json;

use crate::db::Mode;
use crate::run_result::RunResult;

/// Server settings that decide what the figures mean.
#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    pub version: String,
    pub synchronous_commit: String,
    pub fsync: String,
    pub wal_sync_method: String,
    pub commit_delay: String,
}

/// Group-commit batching seen during the measured window.
#[derive(Debug, Clone, Copy, Default)]
pub struct Batching {
    pub batches: u64,
    pub writes: u64,
    /// Largest batch over the whole run (warm-up included).
    pub largest: usize,
}

impl Batching {
    pub fn between(a: GroupCommitStats, b: GroupCommitStats) -> Batching {
        Batching {
            batches: b.batches.saturating_sub(a.batches),
            writes: b.writes.saturating_sub(a.writes),
            largest: b.largest_batch,
        }
    }

    pub fn mean(&self) -> f64 {
        self.writes as f64 / (self.batches.max(1)) as f64
    }
}

pub struct ModeResult {
    pub mode: Mode,
    pub result: RunResult,
    pub batching: Option<Batching>,
}

pub struct DbReport {
    pub target: String,
    pub server: ServerInfo,
    pub duration: Duration,
    pub warmup: Duration,
    pub modes: Vec<ModeResult>,
}

impl DbReport {
    fn result(&self, mode: Mode) -> Option<&RunResult> {
        self.modes
            .iter()
            .find(|m| m.mode == mode)
            .map(|m| &m.result)
    }

    /// ops/s of `mode` over ops/s of insert-single.
    pub fn speedup(&self, mode: Mode) -> Option<f64> {
        let base = self.result(Mode::InsertSingle)?.rate();
        let r = self.result(mode)?.rate();
        (base > 0.0).then(|| r / base)
    }

    pub fn table(&self) -> String {
        let s = &self.server;
        let mut out = format!(
            "db against {} (PostgreSQL {}, synchronous_commit={}, fsync={}, wal_sync_method={}, commit_delay={}; {} s per mode after {} s warm-up)\n",
            self.target,
            s.version,
            s.synchronous_commit,
            s.fsync,
            s.wal_sync_method,
            s.commit_delay,
            self.duration.as_secs(),
            self.warmup.as_secs()
        );
        out += &format!(
            "{:<20} {:>7} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7}\n",
            "mode", "callers", "ops/s", "p50 ms", "p99 ms", "p999 ms", "max ms", "errors"
        );
        for m in &self.modes {
            let r = &m.result;
            let ms = |q: f64| r.latency_us.value_at_quantile(q) as f64 / 1000.0;
            out += &format!(
                "{:<20} {:>7} {:>10.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>7}\n",
                m.mode.name(),
                r.connections,
                r.rate(),
                ms(0.50),
                ms(0.99),
                ms(0.999),
                r.latency_us.max() as f64 / 1000.0,
                r.errors.values().sum::<u64>()
            );
            for (k, v) in &r.errors {
                out += &format!("  error {k}: {v}\n");
            }
        }
        for m in &self.modes {
            if let Some(b) = m.batching {
                out += &format!(
                    "group commit: {} batches, {:.1} writes/batch on average, largest {}\n",
                    b.batches,
                    b.mean(),
                    b.largest
                );
            }
        }
        for mode in [Mode::InsertPipelined, Mode::InsertGroupCommit] {
            if let Some(x) = self.speedup(mode) {
                out += &format!("{} vs insert-single: {x:.1}x\n", mode.name());
            }
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let modes: Vec<serde_json::Value> = self
            .modes
            .iter()
            .map(|m| {
                let mut j = m.result.to_json(m.mode.name(), &self.target);
                j["callers"] = json!(m.result.connections);
                if let Some(b) = m.batching {
                    j["group_commit"] = json!({
                        "batches": b.batches,
                        "writes": b.writes,
                        "mean_batch": b.mean(),
                        "largest_batch": b.largest,
                    });
                }
                j
            })
            .collect();
        json!({
            "scenario": "db",
            "target": self.target,
            "server": {
                "version": self.server.version,
                "synchronous_commit": self.server.synchronous_commit,
                "fsync": self.server.fsync,
                "wal_sync_method": self.server.wal_sync_method,
                "commit_delay": self.server.commit_delay,
            },
            "duration_s": self.duration.as_secs(),
            "warmup_s": self.warmup.as_secs(),
            "modes": modes,
            "speedup_vs_insert_single": {
                "insert-pipelined": self.speedup(Mode::InsertPipelined),
                "insert-group-commit": self.speedup(Mode::InsertGroupCommit),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn result(ok: u64, us: u64) -> RunResult {
        let mut h = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
        for _ in 0..ok {
            h.record(us).unwrap();
        }
        RunResult {
            ok,
            errors: BTreeMap::new(),
            elapsed: Duration::from_secs(10),
            latency_us: h,
            connections: 1,
        }
    }

    #[test]
    fn report_table_and_json_carry_rates_and_ratio() {
        let report = DbReport {
            target: "postgres://u@h/d".into(),
            server: ServerInfo {
                version: "15.18".into(),
                synchronous_commit: "on".into(),
                fsync: "on".into(),
                wal_sync_method: "fdatasync".into(),
                commit_delay: "0".into(),
            },
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            modes: vec![
                ModeResult {
                    mode: Mode::InsertSingle,
                    result: result(1000, 10_000),
                    batching: None,
                },
                ModeResult {
                    mode: Mode::InsertGroupCommit,
                    result: result(12_000, 20_000),
                    batching: Some(Batching {
                        batches: 400,
                        writes: 12_000,
                        largest: 64,
                    }),
                },
            ],
        };
        assert_eq!(report.speedup(Mode::InsertGroupCommit), Some(12.0));
        assert_eq!(report.speedup(Mode::SelectPoint), None);
        let t = report.table();
        assert!(
            t.contains("insert-group-commit vs insert-single: 12.0x"),
            "{t}"
        );
        assert!(t.contains("30.0 writes/batch"), "{t}");
        assert!(t.contains("synchronous_commit=on"), "{t}");
        let j = report.to_json();
        assert_eq!(j["modes"][1]["rate"], 1200.0);
        assert_eq!(j["modes"][1]["group_commit"]["largest_batch"], 64);
        assert_eq!(j["speedup_vs_insert_single"]["insert-group-commit"], 12.0);
        assert!(j["speedup_vs_insert_single"]["insert-pipelined"].is_null());
    }
}
