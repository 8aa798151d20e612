//! A small keep-alive HTTP/1.1 client on monoio for the Matrix scenarios:
//! one request in flight per connection, reconnect on failure, bodies framed
//! by Content-Length or chunked encoding (Synapse and hearth both answer with
//! Content-Length; chunked is handled so another server does not break us).

use std::net::SocketAddr;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// Why a request produced no HTTP response; the text is the error group key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError(pub String);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The `Server` header (e.g. `Synapse/1.163.2`), for the report.
    pub server: Option<String>,
}

pub struct Conn {
    addr: SocketAddr,
    host: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    /// The request being written, kept between requests like `buf`: the
    /// client is the instrument, and on a 2-core rig every microsecond it
    /// spends per request is one the server does not get (bench/RESULTS.md,
    /// "the instrument's share").
    req: Vec<u8>,
}

/// How much a connection's buffer grows by when less than a quarter of
/// this is spare; each read asks for all the spare capacity.
const READ_CHUNK: usize = 64 * 1024;

/// Longest a request may take: long-poll syncs ask for up to 30 s.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

impl Conn {
    pub fn new(addr: SocketAddr, host: &str) -> Conn {
        Conn {
            addr,
            host: host.to_owned(),
            stream: None,
            buf: Vec::with_capacity(16 * 1024),
            req: Vec::with_capacity(1024),
        }
    }

    /// One request; on any transport error the connection is dropped and the
    /// next request reconnects.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<Response, TransportError> {
        match monoio::time::timeout(
            REQUEST_TIMEOUT,
            self.request_inner(method, path, token, body),
        )
        .await
        {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(TransportError("timeout".into()))
            }
        }
    }

    async fn request_inner(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<Response, TransportError> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr)
                .await
                .map_err(|e| TransportError(format!("connect: {}", e.kind())))?;
            let _ = s.set_nodelay(true);
            self.stream = Some(s);
            self.buf.clear();
        }
        use std::io::Write as _;
        let mut req = std::mem::take(&mut self.req);
        req.clear();
        // Writing into a Vec cannot fail.
        let _ = write!(
            req,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: hearth-bench\r\n",
            self.host
        );
        if let Some(t) = token {
            let _ = write!(req, "Authorization: Bearer {t}\r\n");
        }
        let body = body.unwrap_or(b"");
        if !body.is_empty() || matches!(method, "POST" | "PUT") {
            let _ = write!(
                req,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        let Some(s) = self.stream.as_mut() else {
            self.req = req;
            return Err(TransportError("no connection".into()));
        };
        let (res, back) = s.write_all(req).await;
        self.req = back;
        res.map_err(|e| TransportError(format!("write: {}", e.kind())))?;
        let (resp, keep) = read_response(s, &mut self.buf).await?;
        if !keep {
            self.stream = None;
        }
        Ok(resp)
    }
}

/// Reads one response; leftover bytes stay in `buf`. Returns (response, keep-alive).
async fn read_response(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<(Response, bool), TransportError> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = resp.code.unwrap_or(0);
                let mut len: Option<usize> = None;
                let mut chunked = false;
                let mut keep = true;
                let mut server = None;
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        len = Some(
                            std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok())
                                .ok_or_else(|| TransportError("bad content-length".into()))?,
                        );
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = h.value.eq_ignore_ascii_case(b"chunked");
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        keep = !h.value.eq_ignore_ascii_case(b"close");
                    } else if h.name.eq_ignore_ascii_case("server") {
                        server = Some(String::from_utf8_lossy(h.value).into_owned());
                    }
                }
                buf.drain(..head_len);
                let body = if chunked {
                    read_chunked(s, buf).await?
                } else {
                    let len = len.unwrap_or(0);
                    while buf.len() < len {
                        read_more(s, buf).await?;
                    }
                    buf.drain(..len).collect()
                };
                return Ok((
                    Response {
                        status,
                        body,
                        server,
                    },
                    keep,
                ));
            }
            Ok(httparse::Status::Partial) => read_more(s, buf).await?,
            Err(e) => return Err(TransportError(format!("parse: {e}"))),
        }
    }
}

/// Reads a chunked body that starts at `buf[0]`; leftover bytes stay in `buf`.
pub(crate) async fn read_chunked(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Vec<u8>, TransportError> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            read_more(s, buf).await?;
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| TransportError("bad chunk size".into()))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers (rare) end with an empty line.
            loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    buf.drain(..i + 2);
                    if i == 0 {
                        return Ok(body);
                    }
                } else {
                    read_more(s, buf).await?;
                }
            }
        }
        while buf.len() < size + 2 {
            read_more(s, buf).await?;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

/// One read straight into the spare capacity of `buf` (no bounce buffer:
/// the bytes are copied once, by the kernel).
pub(crate) async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), TransportError> {
    use monoio::buf::IoBufMut as _;
    let mut b = std::mem::take(buf);
    if b.capacity() - b.len() < READ_CHUNK / 4 {
        b.reserve(READ_CHUNK);
    }
    let (len, cap) = (b.len(), b.capacity());
    let (res, slice) = s.read(b.slice_mut(len..cap)).await;
    *buf = slice.into_inner();
    match res {
        Ok(0) => Err(TransportError("closed".into())),
        Ok(_) => Ok(()),
        Err(e) => Err(TransportError(format!("read: {}", e.kind()))),
    }
}

/// Percent-encodes a path segment (room ids, user ids, event ids, txn ids).
pub fn enc(seg: &str) -> String {
    let mut out = String::with_capacity(seg.len());
    for b in seg.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_segments() {
        assert_eq!(enc("!a:b.c"), "!a:b.c");
        assert_eq!(enc("$ev/x?y#z"), "$ev%2Fx%3Fy%23z");
        assert_eq!(enc("a b%"), "a%20b%25");
    }
}
