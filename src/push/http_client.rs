//! A minimal HTTP/1.1 client for push gateways: one `POST` of a JSON body
//! per connection (`Connection: close`), over the shard's monoio TCP, with
//! one timeout over the whole attempt and a bounded answer. `https://`
//! gateways go through rustls (`monoio-rustls`) with the client config
//! federation uses (system roots; `push.verify_gateway_tls = false` skips
//! the certificate check, for tests). A connection is never reused, so a
//! TLS stream whose IO timed out (unusable afterwards, see DECISIONS
//! "Federation transport") is always dropped with its attempt. A host name
//! is resolved on the blocking pool, never on the shard.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::timeout;
use rustls::pki_types::ServerName;

/// A gateway's answer is small (`{"rejected": [...]}`); more is refused.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Never retried (bad URL).
    #[error("unsupported push gateway URL: {0}")]
    Unsupported(String),
    /// Worth retrying (connection refused, timeout, bad answer).
    #[error("{0}")]
    Transient(String),
}

/// Where to send: `http[s]://host[:port]/path[?query]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, as sent on the request line.
    pub path: String,
}

/// Splits an `http://` or `https://` URL (the pusher's `data.url`).
pub fn parse_url(url: &str) -> Result<Target, ClientError> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(ClientError::Unsupported(format!("not an http URL: {url}")));
    };
    let default_port = if tls { 443 } else { 80 };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = path.split('#').next().unwrap_or("/");
    let bad = || ClientError::Unsupported(format!("bad host in {url}"));
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => default_port,
            None => return Err(bad()),
        };
        (h.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad())?),
            None => (authority.to_owned(), default_port),
        }
    };
    if host.is_empty() || host.contains('@') || path.contains(['\r', '\n', ' ']) {
        return Err(bad());
    }
    Ok(Target {
        tls,
        host,
        port,
        path: path.to_owned(),
    })
}

async fn resolve(t: &Target) -> Result<SocketAddr, ClientError> {
    if let Ok(ip) = t.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, t.port));
    }
    let (host, port) = (t.host.clone(), t.port);
    let pool = crate::blocking::global().map_err(|e| ClientError::Transient(e.to_string()))?;
    let task = pool
        .spawn(move || {
            (host.as_str(), port)
                .to_socket_addrs()
                .map(|mut a| a.next())
        })
        .map_err(|e| ClientError::Transient(e.to_string()))?;
    match task.await {
        Ok(Ok(Some(addr))) => Ok(addr),
        Ok(Ok(None)) => Err(ClientError::Transient(format!("{} has no address", t.host))),
        Ok(Err(e)) => Err(ClientError::Transient(format!("resolving {}: {e}", t.host))),
        Err(e) => Err(ClientError::Transient(e.to_string())),
    }
}

/// `POST`s `body` (JSON) to `url`; the status and body of the answer.
/// `tls` is the client config for `https://` URLs. `limit` covers the
/// whole attempt: resolution, connection, handshake, request and answer.
pub async fn post_json(
    url: &str,
    body: Vec<u8>,
    limit: Duration,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<(u16, Vec<u8>), ClientError> {
    let t = parse_url(url)?;
    match timeout(limit, connect_and_exchange(&t, body, tls)).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Transient(format!(
            "no answer from {}:{} within {limit:?}",
            t.host, t.port
        ))),
    }
}

async fn connect_and_exchange(
    t: &Target,
    body: Vec<u8>,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<(u16, Vec<u8>), ClientError> {
    let addr = resolve(t).await?;
    let tcp = TcpStream::connect_addr(addr)
        .await
        .map_err(|e| ClientError::Transient(format!("{addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    if !t.tls {
        return exchange(t, addr, tcp, body).await;
    }
    let name = match t.host.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(t.host.clone())
            .map_err(|_| ClientError::Unsupported(format!("bad TLS name {}", t.host)))?,
    };
    let connector = monoio_rustls::TlsConnector::from(tls.clone());
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| ClientError::Transient(format!("TLS with {addr}: {e}")))?;
    exchange(t, addr, stream, body).await
}

async fn exchange<S: AsyncReadRent + AsyncWriteRent>(
    t: &Target,
    addr: SocketAddr,
    mut stream: S,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), ClientError> {
    let io = |e: std::io::Error| ClientError::Transient(format!("{addr}: {e}"));
    let host = if t.host.contains(':') {
        format!("[{}]", t.host)
    } else {
        t.host.clone()
    };
    let mut req = format!(
        "POST {} HTTP/1.1\r\nHost: {host}:{}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\nUser-Agent: hearth\r\n\r\n",
        t.path,
        t.port,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let (res, _) = stream.write_all(req).await;
    res.map_err(io)?;
    let mut got: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let buf = Vec::with_capacity(8192);
        let (res, buf) = stream.read(buf).await;
        let n = match res {
            Ok(n) => n,
            // A TLS peer closing without `close_notify` after an unframed
            // answer: what came is all there is.
            Err(e) if !got.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(io(e)),
        };
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() > MAX_RESPONSE_BYTES {
            return Err(ClientError::Transient("gateway answer too large".into()));
        }
        if let Some(done) = complete(&got)? {
            return Ok(done);
        }
    }
    complete(&got)?
        .or_else(|| {
            parse_head(&got)
                .ok()
                .flatten()
                .map(|(s, off)| (s, got[off..].to_vec()))
        })
        .ok_or_else(|| ClientError::Transient("gateway closed before answering".into()))
}

/// `(status, offset of the body)` once the head is complete.
fn parse_head(buf: &[u8]) -> Result<Option<(u16, usize)>, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    match r.parse(buf) {
        Ok(httparse::Status::Complete(off)) => Ok(Some((r.code.unwrap_or(0), off))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(ClientError::Transient(format!("bad gateway answer: {e}"))),
    }
}

/// The answer, once it is all there by its `Content-Length` (a chunked or
/// unframed body is read to the end of the connection instead).
fn complete(buf: &[u8]) -> Result<Option<(u16, Vec<u8>)>, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let off = match r.parse(buf) {
        Ok(httparse::Status::Complete(off)) => off,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ClientError::Transient(format!("bad gateway answer: {e}"))),
    };
    let status = r.code.unwrap_or(0);
    let len = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    match len {
        Some(n) if buf.len() >= off + n => Ok(Some((status, buf[off..off + n].to_vec()))),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:8080/_matrix/push/v1/notify?x=1#f").unwrap();
        assert_eq!(
            t,
            Target {
                tls: false,
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/_matrix/push/v1/notify?x=1".into()
            }
        );
        let t = parse_url("http://[::1]/_matrix/push/v1/notify").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 80));
        assert_eq!(parse_url("http://push.example").unwrap().path, "/");
        let t = parse_url("https://push.example/_matrix/push/v1/notify").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port),
            (true, "push.example", 443)
        );
        let t = parse_url("https://[::1]:8443/n").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port), (true, "::1", 8443));
        for bad in [
            "ftp://x/",
            "http://:80/",
            "http://u@h/",
            "http://h:port/",
            "http://[::1/",
        ] {
            assert!(
                matches!(parse_url(bad), Err(ClientError::Unsupported(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn answers() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(complete(full).unwrap(), Some((200, b"{}".to_vec())));
        assert_eq!(complete(&full[..full.len() - 1]).unwrap(), None);
        assert_eq!(complete(b"HTTP/1.1 500 X\r\n").unwrap(), None);
        assert!(complete(b"garbage\r\n\r\n").is_err());
    }
}
