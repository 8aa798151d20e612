//! Measurement: per-task HDR histograms and error counts, merged at the end,
//! plus shared atomic counters for the once-a-second progress line.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// A fresh latency histogram: 1 µs .. 120 s at 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    // Static bounds: low >= 1, high >= 2 * low, sigfig <= 5 — cannot fail.
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("static histogram bounds")
}

/// When results count: requests *finishing* in [measure_from, end).
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub start: Instant,
    pub measure_from: Instant,
    pub end: Instant,
}

impl Window {
    pub fn new(warmup: Duration, duration: Duration) -> Window {
        let start = Instant::now();
        Window {
            start,
            measure_from: start + warmup,
            end: start + warmup + duration,
        }
    }
    pub fn measuring(&self, t: Instant) -> bool {
        t >= self.measure_from && t < self.end
    }
    pub fn over(&self) -> bool {
        Instant::now() >= self.end
    }
}

/// Counters shared by every load thread, read by the progress line.
#[derive(Default)]
pub struct Progress {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
}

/// One measured quantity (e.g. "send", "sync", "delivery").
#[derive(Clone)]
pub struct Metric {
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// Latency of successful operations in µs.
    pub hist: Histogram<u64>,
}

impl Default for Metric {
    fn default() -> Self {
        Metric {
            ok: 0,
            errors: BTreeMap::new(),
            hist: new_hist(),
        }
    }
}

impl Metric {
    pub fn merge(&mut self, other: &Metric) {
        self.ok += other.ok;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
        // Same bounds everywhere (new_hist); add only fails on bound mismatch.
        let _ = self.hist.add(&other.hist);
    }
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// A task's (or thread's) metrics by name; merged into the run's at the end.
pub struct Recorder {
    pub window: Window,
    pub metrics: BTreeMap<String, Metric>,
    progress: Arc<Progress>,
}

impl Recorder {
    pub fn new(window: Window, progress: Arc<Progress>) -> Recorder {
        Recorder {
            window,
            metrics: BTreeMap::new(),
            progress,
        }
    }

    fn metric(&mut self, name: &str) -> &mut Metric {
        if !self.metrics.contains_key(name) {
            self.metrics.insert(name.to_owned(), Metric::default());
        }
        // Inserted just above if it was missing.
        self.metrics.get_mut(name).expect("metric present")
    }

    /// A success of `name` that took `latency`, finishing now.
    pub fn ok(&mut self, name: &str, latency: Duration) {
        self.progress.ok.fetch_add(1, Ordering::Relaxed);
        if self.window.measuring(Instant::now()) {
            let m = self.metric(name);
            m.ok += 1;
            m.hist
                .saturating_record(latency.as_micros().clamp(1, u64::MAX as u128) as u64);
        }
    }

    /// A failure of `name`, grouped by `kind` ("status 404", "timeout", …).
    pub fn error(&mut self, name: &str, kind: &str) {
        self.progress.errors.fetch_add(1, Ordering::Relaxed);
        if self.window.measuring(Instant::now()) {
            *self.metric(name).errors.entry(kind.to_owned()).or_insert(0) += 1;
        }
    }

    pub fn merge(&mut self, other: &Recorder) {
        for (k, m) in &other.metrics {
            self.metric(k).merge(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_counts_and_histograms() {
        let w = Window {
            start: Instant::now(),
            measure_from: Instant::now() - Duration::from_secs(1),
            end: Instant::now() + Duration::from_secs(60),
        };
        let p = Arc::new(Progress::default());
        let mut a = Recorder::new(w, p.clone());
        let mut b = Recorder::new(w, p.clone());
        for ms in 1..=100 {
            a.ok("send", Duration::from_millis(ms));
        }
        for ms in 101..=200 {
            b.ok("send", Duration::from_millis(ms));
        }
        b.error("send", "status 500");
        b.error("sync", "status 404");
        a.merge(&b);
        let send = &a.metrics["send"];
        assert_eq!(send.ok, 200);
        assert_eq!(send.hist.len(), 200);
        assert!((send.hist.value_at_quantile(0.5) as i64 - 100_000).abs() < 200);
        assert_eq!(send.hist.max() / 1000, 200);
        assert_eq!(send.errors["status 500"], 1);
        assert_eq!(a.metrics["sync"].errors["status 404"], 1);
        assert_eq!(p.ok.load(Ordering::Relaxed), 200);
        assert_eq!(p.errors.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn outside_the_window_counts_only_for_progress() {
        let now = Instant::now();
        let w = Window {
            start: now,
            measure_from: now + Duration::from_secs(60),
            end: now + Duration::from_secs(120),
        };
        let p = Arc::new(Progress::default());
        let mut r = Recorder::new(w, p.clone());
        r.ok("send", Duration::from_millis(1));
        r.error("send", "timeout");
        assert!(r.metrics.is_empty());
        assert_eq!(p.ok.load(Ordering::Relaxed), 1);
    }
}
