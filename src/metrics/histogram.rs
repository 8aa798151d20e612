//! A shard-local histogram (plain numbers, no atomics: one shard writes it
//! and reads it) and its owned snapshot, which crosses to the scraper.

/// Upper bounds (seconds) for request latency. Up to a minute: a `/sync`
/// long poll parks for its `timeout` (30 s is common) and belongs here too.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Upper bounds for group-commit batch sizes (writes per transaction; the
/// default `max_batch` is 256).
pub const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Buckets per bound (not cumulative) plus one for `+Inf`, and the sum.
#[derive(Debug, Clone)]
pub struct LocalHistogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
}

impl LocalHistogram {
    /// `bounds` must be sorted ascending.
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        LocalHistogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        // `le` buckets: v lands in the first bound it does not exceed.
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        if v.is_finite() {
            self.sum += v;
        }
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self.counts.clone(),
            sum: self.sum,
        }
    }
}

/// An owned copy of a histogram at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [f64],
    /// Per bucket, not cumulative; the last is above every bound.
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other` (same bounds; otherwise only the sum and count move,
    /// into the `+Inf` bucket, so totals stay right).
    pub fn add(&mut self, other: &HistogramSnapshot) {
        if self.bounds == other.bounds && self.counts.len() == other.counts.len() {
            for (a, b) in self.counts.iter_mut().zip(&other.counts) {
                *a += b;
            }
        } else if let Some(last) = self.counts.last_mut() {
            *last += other.count();
        }
        self.sum += other.sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_le_buckets() {
        let mut h = LocalHistogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 2.0, 3.0, f64::INFINITY] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.counts, vec![2, 2, 2]);
        assert_eq!(s.count(), 6);
        assert_eq!(s.sum, 8.0);
        let mut t = s.clone();
        t.add(&s);
        assert_eq!(t.counts, vec![4, 4, 4]);
        assert_eq!(t.sum, 16.0);
    }
}
