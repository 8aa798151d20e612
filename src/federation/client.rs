//! HTTPS/1.1 client for federation on monoio + rustls: one TLS connection
//! per request in flight, idle ones kept per destination for reuse, every
//! step under a timeout, responses bounded in size, and no connection to
//! an address the IP policy refuses (checked after DNS, on each address).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::{timeout, Instant};
use rustls::pki_types::ServerName;

use super::dns;
use super::ip_range::IpPolicy;
use crate::http::parser::{ChunkedDecoder, Limits};

type TlsStream = monoio_rustls::ClientTlsStream<TcpStream>;

/// Largest response head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers parsed in a response.
const MAX_HEADERS: usize = 64;

/// Limits and timeouts of outbound requests.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    /// The whole exchange (request written, response head and body read)
    /// once connected.
    pub request_timeout: Duration,
    pub max_response_bytes: usize,
    pub max_idle_per_destination: usize,
    /// Idle connections older than this are not reused (peers close theirs
    /// after a while; Synapse after a minute or two).
    pub idle_timeout: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_response_bytes: 50 * 1024 * 1024,
            max_idle_per_destination: 4,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Where to connect for one server name (the output of discovery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Hosts (names or IP literals) and ports to try, in order.
    pub endpoints: Vec<(String, u16)>,
    /// The `Host` header to send.
    pub host_header: String,
    /// The name the certificate must be valid for (SNI unless an IP).
    pub tls_name: String,
}

/// A response, its body read in full.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why an outbound request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FedError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("{0}: every address is in a denied IP range")]
    Denied(String),
    #[error("cannot connect to {0}")]
    Connect(String),
    #[error("TLS with {0} failed")]
    Tls(String),
    #[error("request timed out")]
    Timeout,
    #[error("connection error: {0}")]
    Io(String),
    #[error("malformed response: {0}")]
    BadResponse(String),
    #[error("response larger than the limit")]
    TooLarge,
    #[error("peer answered {status}")]
    Status { status: u16, body: Bytes },
    #[error("invalid answer: {0}")]
    Invalid(String),
    #[error("cannot sign the request: {0}")]
    Sign(String),
}

struct Idle {
    stream: TlsStream,
    since: Instant,
}

/// The shard's HTTPS client (one per shard, `Rc`-shared).
pub struct HttpsClient {
    tls: monoio_rustls::TlsConnector,
    policy: IpPolicy,
    pub settings: ClientSettings,
    idle: RefCell<HashMap<String, Vec<Idle>>>,
}

/// How one exchange on a connection failed.
struct ExchangeError {
    /// Nothing came back before the failure: on a reused connection that
    /// means the peer had closed it, and a fresh one may be tried.
    stale: bool,
    err: FedError,
}

impl HttpsClient {
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        policy: IpPolicy,
        settings: ClientSettings,
    ) -> HttpsClient {
        HttpsClient {
            tls: tls.into(),
            policy,
            settings,
            idle: RefCell::new(HashMap::new()),
        }
    }

    /// Idle connections kept for `pool_key` (tests).
    pub fn idle_count(&self, pool_key: &str) -> usize {
        self.idle.borrow().get(pool_key).map_or(0, Vec::len)
    }

    /// Sends one request and reads the whole response (any status).
    /// `pool_key` names the destination whose idle connections may carry
    /// it; `target` says where to connect if none is idle.
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        pool_key: &str,
        target: &Target,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        max_body: usize,
    ) -> Result<HttpResponse, FedError> {
        let request = encode_request(method, path, &target.host_header, headers, body);
        let head_only = method.eq_ignore_ascii_case("HEAD");
        if let Some(stream) = self.take_idle(pool_key) {
            match self.exchange(stream, &request, head_only, max_body).await {
                Ok((resp, stream)) => {
                    self.put_idle(pool_key, stream);
                    return Ok(resp);
                }
                Err(e) if e.stale => {
                    tracing::debug!(
                        destination = pool_key,
                        "idle connection was closed; reconnecting"
                    );
                }
                Err(e) => return Err(e.err),
            }
        }
        let stream = self.connect(target).await?;
        match self.exchange(stream, &request, head_only, max_body).await {
            Ok((resp, stream)) => {
                self.put_idle(pool_key, stream);
                Ok(resp)
            }
            Err(e) => Err(e.err),
        }
    }

    fn take_idle(&self, key: &str) -> Option<TlsStream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(key)?;
        while let Some(c) = list.pop() {
            if c.since.elapsed() < self.settings.idle_timeout {
                return Some(c.stream);
            }
        }
        None
    }

    fn put_idle(&self, key: &str, stream: Option<TlsStream>) {
        let Some(stream) = stream else { return };
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(key.to_owned()).or_default();
        list.retain(|c| c.since.elapsed() < self.settings.idle_timeout);
        if list.len() < self.settings.max_idle_per_destination {
            list.push(Idle {
                stream,
                since: Instant::now(),
            });
        }
    }

    /// Connects to the first reachable, permitted address of `target`.
    async fn connect(&self, target: &Target) -> Result<TlsStream, FedError> {
        let server_name = match target.tls_name.parse::<std::net::IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(target.tls_name.clone())
                .map_err(|_| FedError::Resolve(target.tls_name.clone()))?,
        };
        let (mut connect_err, mut resolve_err, mut denied) = (None, None, false);
        for (host, port) in &target.endpoints {
            let addrs = match dns::lookup_host(host, *port).await {
                Ok(a) => a,
                Err(e) => {
                    resolve_err = Some(FedError::Resolve(e.to_string()));
                    continue;
                }
            };
            for addr in addrs {
                if !self.policy.permits(addr.ip()) {
                    tracing::debug!(%addr, host, "address refused by the IP policy");
                    denied = true;
                    continue;
                }
                match self.connect_addr(addr, server_name.clone()).await {
                    Ok(s) => return Ok(s),
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "federation connect failed");
                        connect_err = Some(e);
                    }
                }
            }
        }
        Err(match (connect_err, denied, resolve_err) {
            (Some(e), _, _) => e,
            (None, true, _) => FedError::Denied(target.tls_name.clone()),
            (None, false, Some(e)) => e,
            (None, false, None) => FedError::Resolve(target.tls_name.clone()),
        })
    }

    async fn connect_addr(
        &self,
        addr: SocketAddr,
        name: ServerName<'static>,
    ) -> Result<TlsStream, FedError> {
        let t = self.settings.connect_timeout;
        let tcp = timeout(t, TcpStream::connect_addr(addr))
            .await
            .map_err(|_| FedError::Connect(format!("{addr}: timed out")))?
            .map_err(|e| FedError::Connect(format!("{addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let tls = timeout(t, self.tls.connect(name, tcp))
            .await
            .map_err(|_| FedError::Tls(format!("{addr}: handshake timed out")))?
            .map_err(|e| FedError::Tls(format!("{addr}: {e}")))?;
        Ok(tls)
    }

    /// Writes the request and reads the response, all under the request
    /// timeout. Returns the stream if it may be reused. A timed-out stream
    /// is always dropped: its TLS adapter is unusable after a cancelled IO.
    async fn exchange(
        &self,
        mut stream: TlsStream,
        request: &[u8],
        head_only: bool,
        max_body: usize,
    ) -> Result<(HttpResponse, Option<TlsStream>), ExchangeError> {
        let max_body = max_body.min(self.settings.max_response_bytes);
        let work = async {
            let (res, _) = stream.write_all(request.to_vec()).await;
            if let Err(e) = res {
                return Err(ExchangeError {
                    stale: true,
                    err: FedError::Io(e.to_string()),
                });
            }
            let (resp, reusable) = read_response(&mut stream, head_only, max_body).await?;
            Ok((resp, reusable))
        };
        match timeout(self.settings.request_timeout, work).await {
            Err(_) => Err(ExchangeError {
                stale: false,
                err: FedError::Timeout,
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok((resp, reusable))) => Ok((resp, reusable.then_some(stream))),
        }
    }
}

fn encode_request(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.map_or(0, <[u8]>::len));
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nUser-Agent: hearth/");
    out.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in headers {
        // Values come from us (signatures, JSON types); a CR or LF would
        // split the request, so such a header is left out.
        if k.contains(['\r', '\n']) || v.contains(['\r', '\n']) {
            continue;
        }
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(b) = body {
        out.extend_from_slice(b"Content-Type: application/json\r\n");
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes());
        out.extend_from_slice(b);
    } else {
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn read_more<IO: AsyncReadRent>(
    stream: &mut IO,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    let chunk = vec![0u8; 16 * 1024];
    let (res, chunk) = stream.read(chunk).await;
    let n = res?;
    buf.extend_from_slice(&chunk[..n.min(chunk.len())]);
    Ok(n)
}

enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

/// Reads one response; returns it and whether the connection may be reused.
async fn read_response<IO: AsyncReadRent>(
    stream: &mut IO,
    head_only: bool,
    max_body: usize,
) -> Result<(HttpResponse, bool), ExchangeError> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut got_any = false;
    let bad = |m: String| ExchangeError {
        stale: false,
        err: FedError::BadResponse(m),
    };
    // Head (skipping 1xx interim responses).
    let (status, headers, keep_alive, framing) = loop {
        let parsed = {
            let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut r = httparse::Response::new(&mut hs);
            match r.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = r.code.unwrap_or(0);
                    let http10 = r.version == Some(0);
                    let headers: Vec<(String, String)> = r
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).trim().to_owned(),
                            )
                        })
                        .collect();
                    Some((len, status, http10, headers))
                }
                Ok(httparse::Status::Partial) => None,
                Err(e) => return Err(bad(e.to_string())),
            }
        };
        if let Some((len, status, http10, headers)) = parsed {
            let _ = buf.split_to(len);
            if (100..200).contains(&status) {
                continue;
            }
            let get = |n: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                    .map(|(_, v)| v.to_ascii_lowercase())
            };
            let conn = get("connection").unwrap_or_default();
            let keep_alive = if http10 {
                conn.contains("keep-alive")
            } else {
                !conn.contains("close")
            };
            let framing = if head_only || status == 204 || status == 304 {
                Framing::None
            } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
                Framing::Chunked
            } else if let Some(cl) = get("content-length") {
                let n: usize = cl
                    .parse()
                    .map_err(|_| bad(format!("bad Content-Length {cl:?}")))?;
                if n > max_body {
                    return Err(ExchangeError {
                        stale: false,
                        err: FedError::TooLarge,
                    });
                }
                Framing::Length(n)
            } else {
                Framing::UntilClose
            };
            break (status, headers, keep_alive, framing);
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(bad("response head too large".into()));
        }
        match read_more(stream, &mut buf).await {
            Ok(0) => {
                return Err(ExchangeError {
                    stale: !got_any,
                    err: FedError::Io("connection closed before the response".into()),
                })
            }
            Ok(_) => got_any = true,
            Err(e) => {
                return Err(ExchangeError {
                    stale: !got_any,
                    err: FedError::Io(e.to_string()),
                })
            }
        }
    };
    let io_err = |e: std::io::Error| ExchangeError {
        stale: false,
        err: FedError::Io(e.to_string()),
    };
    let (body, reusable) = match framing {
        Framing::None => (Bytes::new(), keep_alive && buf.is_empty()),
        Framing::Length(n) => {
            while buf.len() < n {
                if read_more(stream, &mut buf).await.map_err(io_err)? == 0 {
                    return Err(bad("body cut short".into()));
                }
            }
            let body = buf.split_to(n).freeze();
            (body, keep_alive && buf.is_empty())
        }
        Framing::Chunked => {
            let mut dec = ChunkedDecoder::new(Limits {
                max_header_bytes: 16 * 1024,
                max_body_bytes: max_body,
            });
            loop {
                match dec.decode(&mut buf) {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(crate::http::parser::ParseError::BodyTooLarge) => {
                        return Err(ExchangeError {
                            stale: false,
                            err: FedError::TooLarge,
                        })
                    }
                    Err(e) => return Err(bad(e.to_string())),
                }
                if read_more(stream, &mut buf).await.map_err(io_err)? == 0 {
                    return Err(bad("chunked body cut short".into()));
                }
            }
            (dec.into_body(), keep_alive && buf.is_empty())
        }
        Framing::UntilClose => {
            loop {
                if buf.len() > max_body {
                    return Err(ExchangeError {
                        stale: false,
                        err: FedError::TooLarge,
                    });
                }
                if read_more(stream, &mut buf).await.map_err(io_err)? == 0 {
                    break;
                }
            }
            (buf.split().freeze(), false)
        }
    };
    Ok((
        HttpResponse {
            status,
            headers,
            body,
        },
        reusable,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_encoding() {
        let r = encode_request(
            "PUT",
            "/_matrix/x?y=1",
            "b.org:8448",
            &[
                ("Authorization", "X-Matrix origin=\"a\""),
                ("Bad", "a\r\nInjected: 1"),
            ],
            Some(b"{}"),
        );
        let s = String::from_utf8(r).unwrap();
        assert!(s.starts_with("PUT /_matrix/x?y=1 HTTP/1.1\r\nHost: b.org:8448\r\n"));
        assert!(s.contains("Authorization: X-Matrix origin=\"a\"\r\n"));
        assert!(!s.contains("Injected"));
        assert!(s.ends_with("Content-Length: 2\r\n\r\n{}"));
    }
}
