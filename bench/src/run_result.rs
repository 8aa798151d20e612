//! The `db` benchmark's per-mode result (throughput and latency percentiles
//! from one HDR histogram); the Matrix scenarios use `report.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

pub struct RunResult {
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
    /// Latency of successful requests in microseconds.
    pub latency_us: Histogram<u64>,
    pub connections: usize,
}

impl RunResult {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn pct_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn to_json(&self, scenario: &str, target: &str) -> serde_json::Value {
        json!({
            "scenario": scenario,
            "target": target,
            "connections": self.connections,
            "duration_s": self.elapsed.as_secs_f64(),
            "ok": self.ok,
            "rate": self.rate(),
            "latency_ms": {
                "p50": self.pct_ms(0.50), "p90": self.pct_ms(0.90), "p99": self.pct_ms(0.99),
                "p999": self.pct_ms(0.999), "max": self.latency_us.max() as f64 / 1000.0,
            },
            "errors": self.errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rate() {
        let mut h = Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
        for us in 1..=1000u64 {
            h.record(us).unwrap();
        }
        let r = RunResult {
            ok: 1000,
            errors: BTreeMap::new(),
            elapsed: Duration::from_secs(2),
            latency_us: h,
            connections: 4,
        };
        assert_eq!(r.rate(), 500.0);
        assert!((r.pct_ms(0.5) - 0.5).abs() < 0.01);
        let j = r.to_json("http", "x");
        assert_eq!(j["ok"], 1000);
    }
}
