//! Limits and timeouts of the HTTP layer (per shard).

use std::time::Duration;

/// HTTP server settings. Every limit exists so one slow or hostile client
/// cannot hold memory or a connection slot indefinitely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Largest request line + headers; more is answered 431 and closed.
    pub max_header_bytes: usize,
    /// Largest request body, unless its route has its own limit
    /// (`Router::body_limit`: media uploads); more is answered 413
    /// `M_TOO_LARGE` and closed.
    pub max_body_bytes: usize,
    /// Time allowed to receive a request head, from its first byte.
    pub header_timeout: Duration,
    /// Time allowed to receive a request body, from the end of its head.
    pub body_timeout: Duration,
    /// How long an idle keep-alive connection is kept between requests.
    pub keepalive_timeout: Duration,
    /// Time allowed to write out buffered responses (a client that does not
    /// read cannot pin a connection).
    pub write_timeout: Duration,
    /// Open connections per shard; beyond it new ones get a 503.
    pub max_connections: usize,
    /// How long `serve` waits for in-flight requests after shutdown.
    pub shutdown_grace: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 32 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl HttpConfig {
    pub(crate) fn limits(&self) -> super::parser::Limits {
        super::parser::Limits {
            max_header_bytes: self.max_header_bytes,
            max_body_bytes: self.max_body_bytes,
        }
    }
}
