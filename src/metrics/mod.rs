//! Prometheus metrics: shard-local counters, gathered at scrape time.
//!
//! Thread-per-core forbids shared locks on hot paths, so nothing here is
//! shared while requests run: every counter, gauge and histogram lives in
//! its shard's thread-locals or `Cell`s and is written only by that shard,
//! with plain (non-atomic) stores. A scrape (`collect::scrape`) asks every
//! shard over the mesh for a [`Families`] snapshot (plain owned data, so it
//! crosses threads), merges them (series with the same labels add up) and
//! encodes the text exposition format 0.0.4 (`encode`). A stuck shard
//! delays a scrape by at most its timeout, never a request.
//!
//! Labels never carry raw paths or user ids: requests are labelled by the
//! route *template* they matched (`/_matrix/client/v3/rooms/{roomId}/…`).

pub mod collect;
pub mod encode;
pub mod histogram;
pub mod local;
pub mod process;
pub mod requests;

pub use histogram::{HistogramSnapshot, LocalHistogram};

/// The type line of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One series' value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    Histogram(HistogramSnapshot),
}

/// One series: its labels (fixed names, owned values) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Vec<(&'static str, String)>,
    pub value: Value,
}

/// A metric family: every series of one name.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

/// A set of families in insertion order. `Send`: a shard builds one and
/// hands it to the scraping shard.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Families(pub Vec<Family>);

impl Families {
    /// The family `name`, created empty on first use.
    pub fn family(&mut self, name: &'static str, help: &'static str, kind: Kind) -> &mut Family {
        let i = match self.0.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.0.push(Family {
                    name,
                    help,
                    kind,
                    samples: Vec::new(),
                });
                self.0.len() - 1
            }
        };
        &mut self.0[i]
    }

    /// Adds one scalar series.
    pub fn scalar(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: Vec<(&'static str, String)>,
        value: f64,
    ) {
        self.family(name, help, kind).samples.push(Sample {
            labels,
            value: Value::Scalar(value),
        });
    }

    /// Folds `other` in: new families are appended, series with the same
    /// name and labels are added up (counters and histograms summed over
    /// shards; per-shard gauges carry a `shard` label so they never meet).
    pub fn merge(&mut self, other: Families) {
        for fam in other.0 {
            let mine = self.family(fam.name, fam.help, fam.kind);
            for s in fam.samples {
                match mine.samples.iter_mut().find(|m| m.labels == s.labels) {
                    Some(m) => add(&mut m.value, s.value),
                    None => mine.samples.push(s),
                }
            }
        }
    }
}

fn add(into: &mut Value, v: Value) {
    match (into, v) {
        (Value::Scalar(a), Value::Scalar(b)) => *a += b,
        (Value::Histogram(a), Value::Histogram(b)) => a.add(&b),
        // Same name, other shape: a programming error; keep the first.
        _ => {}
    }
}

/// `"2xx"` for 204: status classes keep the label set small.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_same_series_and_keeps_others() {
        let mut a = Families::default();
        a.scalar("x_total", "x", Kind::Counter, vec![("r", "a".into())], 1.0);
        let mut b = Families::default();
        b.scalar("x_total", "x", Kind::Counter, vec![("r", "a".into())], 2.0);
        b.scalar("x_total", "x", Kind::Counter, vec![("r", "b".into())], 5.0);
        b.scalar("y", "y", Kind::Gauge, vec![], 7.0);
        a.merge(b);
        assert_eq!(a.0.len(), 2);
        assert_eq!(a.0[0].samples.len(), 2);
        assert_eq!(a.0[0].samples[0].value, Value::Scalar(3.0));
        assert_eq!(a.0[1].samples[0].value, Value::Scalar(7.0));
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(101), "1xx");
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(429), "4xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(999), "5xx");
    }
}
