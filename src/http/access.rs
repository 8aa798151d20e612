//! Request ids and the access log (`hearth::access` target).

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

const ID_BLOCK: u64 = 1 << 16;

/// A process-unique request id. Each thread takes ids from a private block,
/// so the shared counter is touched once per 65536 requests, not per request.
pub(crate) fn next_request_id() -> u64 {
    static NEXT_BLOCK: AtomicU64 = AtomicU64::new(ID_BLOCK);
    thread_local!(static LOCAL: Cell<(u64, u64)> = const { Cell::new((0, 0)) });
    LOCAL.with(|c| {
        let (mut next, mut end) = c.get();
        if next == end {
            next = NEXT_BLOCK.fetch_add(ID_BLOCK, Ordering::Relaxed);
            end = next + ID_BLOCK;
        }
        c.set((next + 1, end));
        next
    })
}

/// The query string with secrets (`access_token`) redacted, for logging.
pub fn redact_query(q: &str) -> Cow<'_, str> {
    if !q.contains("access_token") {
        return Cow::Borrowed(q);
    }
    let parts: Vec<&str> = q
        .split('&')
        .map(|p| {
            if p.split('=').next() == Some("access_token") {
                "access_token=<redacted>"
            } else {
                p
            }
        })
        .collect();
    Cow::Owned(parts.join("&"))
}

/// What the access line needs about the request, captured only when the
/// access log is enabled (so the path is not cloned otherwise).
pub(crate) struct AccessInfo {
    pub method: super::Method,
    pub path: String,
    pub query: Option<String>,
}

pub(crate) fn log_access(
    span: &tracing::Span,
    info: &AccessInfo,
    status: u16,
    bytes_out: usize,
    started: std::time::Instant,
) {
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let query = info.query.as_deref().map(redact_query);
    tracing::info!(
        target: "hearth::access",
        parent: span,
        status,
        bytes_out,
        duration_ms,
        method = %info.method,
        path = %info.path,
        query = query.as_deref().unwrap_or(""),
        "request"
    );
}

pub(crate) fn access_enabled() -> bool {
    tracing::enabled!(target: "hearth::access", tracing::Level::INFO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_tokens() {
        assert_eq!(redact_query("a=1&b=2"), "a=1&b=2");
        assert_eq!(
            redact_query("a=1&access_token=secret&b=2"),
            "a=1&access_token=<redacted>&b=2"
        );
        assert_eq!(redact_query("access_token"), "access_token=<redacted>");
        assert_eq!(redact_query("x_access_token=1"), "x_access_token=1");
    }

    #[test]
    fn ids_are_unique_across_threads() {
        let a: Vec<u64> = (0..10).map(|_| next_request_id()).collect();
        let b = std::thread::spawn(|| (0..10).map(|_| next_request_id()).collect::<Vec<_>>())
            .join()
            .unwrap();
        assert!(a.iter().all(|x| !b.contains(x)));
        assert!(a.windows(2).all(|w| w[0] < w[1]));
    }
}
