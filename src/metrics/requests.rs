//! Per-route request counts and latency, kept per shard in a thread-local
//! map keyed by route template (bounded by the routers' patterns, plus
//! [`UNMATCHED`] and [`PREFLIGHT`]), so recording is a hash lookup and a
//! few additions on the shard that served the request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use super::histogram::{LocalHistogram, LATENCY_BOUNDS};
use super::{status_class, Families, Kind, Sample, Value};
use crate::http::Method;

/// Route label of requests no route matched (404, 405): the raw path is
/// never a label (it holds user and room ids, and is unbounded).
pub const UNMATCHED: &str = "unmatched";
/// Route label of CORS preflights (`OPTIONS`, answered before routing).
pub const PREFLIGHT: &str = "cors_preflight";

pub const REQUESTS_NAME: &str = "hearth_http_requests_total";
pub const DURATION_NAME: &str = "hearth_http_request_duration_seconds";

struct Series {
    method: &'static str,
    class: &'static str,
    latency: LocalHistogram,
}

thread_local! {
    static ROUTES: RefCell<HashMap<Box<str>, Vec<Series>>> = RefCell::new(HashMap::new());
}

/// Method label: the standard methods, anything else `other` (a client
/// may send any token as a method; it must not grow the label set).
pub fn method_label(m: &Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Options => "OPTIONS",
        Method::Patch => "PATCH",
        Method::Other(_) => "other",
    }
}

/// Records one answered request on this shard.
/// `method` is a [`method_label`].
pub fn observe(route: &str, method: &'static str, status: u16, elapsed: Duration) {
    let class = status_class(status);
    ROUTES.with(|r| {
        let mut routes = r.borrow_mut();
        let series = match routes.get_mut(route) {
            Some(s) => s,
            None => routes.entry(route.into()).or_default(),
        };
        let i = match series
            .iter()
            .position(|s| s.method == method && s.class == class)
        {
            Some(i) => i,
            None => {
                series.push(Series {
                    method,
                    class,
                    latency: LocalHistogram::new(LATENCY_BOUNDS),
                });
                series.len() - 1
            }
        };
        series[i].latency.observe(elapsed.as_secs_f64());
    });
}

/// This shard's request families (labels: route, method, status_class).
pub fn snapshot(out: &mut Families) {
    let mut counts = Vec::new();
    let mut latencies = Vec::new();
    ROUTES.with(|r| {
        for (route, series) in r.borrow().iter() {
            for s in series {
                let labels = vec![
                    ("route", route.to_string()),
                    ("method", s.method.to_string()),
                    ("status_class", s.class.to_string()),
                ];
                let h = s.latency.snapshot();
                counts.push(Sample {
                    labels: labels.clone(),
                    value: Value::Scalar(h.count() as f64),
                });
                latencies.push(Sample {
                    labels,
                    value: Value::Histogram(h),
                });
            }
        }
    });
    out.family(
        REQUESTS_NAME,
        "HTTP requests answered, by route template, method and status class.",
        Kind::Counter,
    )
    .samples
    .extend(counts);
    out.family(
        DURATION_NAME,
        "Time from a request's head to its response being ready, by route template, method and status class.",
        Kind::Histogram,
    )
    .samples
    .extend(latencies);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_group_by_route_method_and_class() {
        let route = "/test/{x}";
        observe(
            route,
            method_label(&Method::Get),
            200,
            Duration::from_millis(3),
        );
        observe(
            route,
            method_label(&Method::Get),
            201,
            Duration::from_millis(3),
        );
        observe(
            route,
            method_label(&Method::Get),
            404,
            Duration::from_millis(3),
        );
        observe(
            route,
            method_label(&Method::Other("BREW".into())),
            405,
            Duration::ZERO,
        );
        let mut f = Families::default();
        snapshot(&mut f);
        let reqs = &f.0[0];
        let find = |m: &str, c: &str| {
            reqs.samples
                .iter()
                .find(|s| s.labels[0].1 == route && s.labels[1].1 == m && s.labels[2].1 == c)
        };
        assert_eq!(find("GET", "2xx").unwrap().value, Value::Scalar(2.0));
        assert_eq!(find("GET", "4xx").unwrap().value, Value::Scalar(1.0));
        assert!(find("other", "4xx").is_some());
        assert!(find("BREW", "4xx").is_none());
    }
}
