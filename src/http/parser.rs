//! HTTP/1.1 request-head parsing (on `httparse`) and body framing
//! (RFC 9112 §6): `Content-Length`, `Transfer-Encoding: chunked`.
//!
//! Everything here works on bytes already read; the connection loop decides
//! when to read more. Any input yields a value or an error, never a panic.

use bytes::{Buf, BytesMut};
use thiserror::Error;

use super::error::MatrixError;
use super::request::{Headers, Method};

/// Most headers a request may carry; more is answered 431.
pub const MAX_HEADERS: usize = 100;

/// Longest chunk-size line (size + extensions) we accept.
const MAX_CHUNK_LINE: usize = 4096;

/// Why a request could not be parsed. Each maps to a Matrix error response,
/// after which the connection is closed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("request headers too large")]
    HeadersTooLarge,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("unsupported transfer encoding")]
    UnsupportedEncoding,
}

impl ParseError {
    pub fn to_matrix(&self) -> MatrixError {
        match self {
            ParseError::Malformed(why) => {
                MatrixError::bad_request(format!("Malformed request: {why}"))
            }
            ParseError::HeadersTooLarge => {
                MatrixError::too_large("Request headers too large").with_status(431)
            }
            ParseError::BodyTooLarge => MatrixError::too_large("Request body too large"),
            ParseError::UnsupportedEncoding => {
                MatrixError::new(501, "M_UNKNOWN", "Unsupported transfer encoding")
            }
        }
    }
}

/// The error for a head `httparse` refused. Past the size limit, what the
/// connection would have answered had the bytes come in smaller reads:
/// "too large" when the first `max_header_bytes` are a valid but
/// unfinished head (found by the `http_head` fuzz target: the same bytes
/// gave 400 in one read and 431 in two).
fn head_error(buf: &[u8], limits: Limits) -> ParseError {
    if buf.len() > limits.max_header_bytes {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let prefix = &buf[..limits.max_header_bytes];
        if let Ok(httparse::Status::Partial) = httparse::Request::new(&mut slots).parse(prefix) {
            return ParseError::HeadersTooLarge;
        }
    }
    ParseError::Malformed("invalid request line or headers")
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    Length(u64),
    Chunked,
}

/// A parsed request line and headers.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    /// HTTP/1.x minor version.
    pub minor_version: u8,
    pub headers: Headers,
    pub framing: BodyFraming,
    /// Whether the client wants the connection kept open afterwards.
    pub keep_alive: bool,
    /// Whether the client sent `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// Limits the parser enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
}

/// Tries to parse one request head from the front of `buf`. On success the
/// head bytes are split off `buf` (the body, if any, stays). `Ok(None)` means
/// more bytes are needed.
pub fn parse_head(buf: &mut BytesMut, limits: Limits) -> Result<Option<RequestHead>, ParseError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_header_bytes {
                return Err(ParseError::HeadersTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::HeadersTooLarge),
        Err(_) => return Err(head_error(buf, limits)),
    };
    if head_len > limits.max_header_bytes {
        return Err(ParseError::HeadersTooLarge);
    }
    // A complete parse always fills these; treat absence as malformed anyway.
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(ParseError::Malformed("incomplete request line"));
    };
    let method = Method::from_bytes(method.as_bytes());
    let (path, query) = split_target(target, &method)?;

    // Scan the headers that matter for framing and connection handling, and
    // record every header as byte offsets into the head block.
    let base = buf.as_ptr() as usize;
    let mut index = Vec::with_capacity(req.headers.len());
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut has_te = false;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let ns = h.name.as_ptr() as usize - base;
        let vs = h.value.as_ptr() as usize - base;
        index.push((
            ns as u32..(ns + h.name.len()) as u32,
            vs as u32..(vs + h.value.len()) as u32,
        ));
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(ParseError::Malformed("conflicting Content-Length"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            has_te = true;
            // The final coding must be chunked (RFC 9112 §6.3); codings
            // before it (gzip, …) are not supported.
            let mut codings = tokens(h.value).peekable();
            chunked = false;
            while let Some(c) = codings.next() {
                if c.eq_ignore_ascii_case(b"chunked") && codings.peek().is_none() {
                    chunked = true;
                } else {
                    return Err(ParseError::UnsupportedEncoding);
                }
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    conn_close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    conn_keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            if h.value.eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(ParseError::Malformed("unsupported Expect"));
            }
        }
    }
    let framing = match (has_te, content_length) {
        (true, Some(_)) => {
            return Err(ParseError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ))
        }
        (true, None) if minor == 0 => return Err(ParseError::UnsupportedEncoding),
        (true, None) if chunked => BodyFraming::Chunked,
        (true, None) => return Err(ParseError::UnsupportedEncoding),
        (false, Some(n)) => BodyFraming::Length(n),
        (false, None) => BodyFraming::Length(0),
    };
    if let BodyFraming::Length(n) = framing {
        if n > limits.max_body_bytes as u64 {
            return Err(ParseError::BodyTooLarge);
        }
    }
    let keep_alive = if minor >= 1 {
        !conn_close
    } else {
        conn_keep_alive && !conn_close
    };
    let raw = buf.split_to(head_len).freeze();
    Ok(Some(RequestHead {
        method,
        path,
        query,
        minor_version: minor,
        headers: Headers::from_parts(raw, index),
        framing,
        keep_alive,
        expect_continue: expect_continue && minor >= 1,
    }))
}

/// Splits the request target into raw path and query. Accepts origin-form
/// (`/p?q`), absolute-form (`http://host/p?q`, RFC 9112 §3.2.2) and `*` for
/// OPTIONS.
fn split_target(target: &str, method: &Method) -> Result<(String, Option<String>), ParseError> {
    let target = if target.starts_with('/') {
        target
    } else if target == "*" && *method == Method::Options {
        return Ok(("*".to_owned(), None));
    } else if let Some(rest) = strip_scheme(target) {
        match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
            _ => {
                return Ok((
                    "/".to_owned(),
                    rest.split_once('?').map(|(_, q)| q.to_owned()),
                ))
            }
        }
    } else {
        return Err(ParseError::Malformed("invalid request target"));
    };
    let target = target.split_once('#').map_or(target, |(t, _)| t);
    Ok(match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    })
}

fn strip_scheme(t: &str) -> Option<&str> {
    for scheme in ["http://", "https://"] {
        // Bytes, not `t[..n]`: a target with a multi-byte character in its
        // first bytes made the str slice panic (fuzz finding). A match is
        // ASCII, so `n` is then a char boundary.
        let n = scheme.len();
        if t.as_bytes()
            .get(..n)
            .is_some_and(|p| p.eq_ignore_ascii_case(scheme.as_bytes()))
        {
            return t.get(n..);
        }
    }
    None
}

fn parse_content_length(v: &[u8]) -> Result<u64, ParseError> {
    let v = trim(v);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::Malformed("invalid Content-Length"));
    }
    // At most 19 ASCII digits always fit in a u64.
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &v[start..end]
}

/// Comma-separated, whitespace-trimmed, non-empty tokens of a header value.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',').map(trim).filter(|t| !t.is_empty())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

/// Incremental decoder for a chunked body: feed it the read buffer after
/// each read; it consumes what it can and keeps its place between calls.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    body: BytesMut,
    max_body: usize,
    trailer_bytes: usize,
    max_trailer: usize,
}

impl ChunkedDecoder {
    pub fn new(limits: Limits) -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            body: BytesMut::new(),
            max_body: limits.max_body_bytes,
            trailer_bytes: 0,
            max_trailer: limits.max_header_bytes,
        }
    }

    /// Consumes bytes from `buf`. Returns `Ok(true)` once the whole body
    /// (including trailers, which are skipped) has been read.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<bool, ParseError> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(true),
                ChunkState::Size => {
                    if buf.is_empty() {
                        return Ok(false);
                    }
                    if !buf[0].is_ascii_hexdigit() {
                        return Err(ParseError::Malformed("invalid chunk size"));
                    }
                    match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete((used, size))) => {
                            buf.advance(used);
                            if size == 0 {
                                self.state = ChunkState::Trailer;
                            } else {
                                let total = (self.body.len() as u64).saturating_add(size);
                                if total > self.max_body as u64 {
                                    return Err(ParseError::BodyTooLarge);
                                }
                                // Grow gradually: a claimed size is not data yet.
                                self.body.reserve((size as usize).min(64 * 1024));
                                self.state = ChunkState::Data(size);
                            }
                        }
                        Ok(httparse::Status::Partial) => {
                            if buf.len() > MAX_CHUNK_LINE {
                                return Err(ParseError::Malformed("chunk size line too long"));
                            }
                            return Ok(false);
                        }
                        Err(_) => return Err(ParseError::Malformed("invalid chunk size")),
                    }
                }
                ChunkState::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(false);
                    }
                    let take = (remaining.min(buf.len() as u64)) as usize;
                    self.body.extend_from_slice(&buf[..take]);
                    buf.advance(take);
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|b| *b != b'\r') {
                            return Err(ParseError::Malformed("missing CRLF after chunk"));
                        }
                        return Ok(false);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ParseError::Malformed("missing CRLF after chunk"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    // Trailer fields are read and discarded, up to the
                    // header size limit, until the empty line.
                    match buf.windows(2).position(|w| w == b"\r\n") {
                        Some(0) => {
                            buf.advance(2);
                            self.state = ChunkState::Done;
                        }
                        Some(i) => {
                            self.trailer_bytes += i + 2;
                            if self.trailer_bytes > self.max_trailer {
                                return Err(ParseError::HeadersTooLarge);
                            }
                            buf.advance(i + 2);
                        }
                        None => {
                            if self.trailer_bytes + buf.len() > self.max_trailer {
                                return Err(ParseError::HeadersTooLarge);
                            }
                            return Ok(false);
                        }
                    }
                }
            }
        }
    }

    /// The decoded body (call after `decode` returned `Ok(true)`).
    pub fn into_body(self) -> bytes::Bytes {
        self.body.freeze()
    }
}

#[cfg(test)]
mod tests {

    /// Fuzz finding: a request target with a multi-byte character within
    /// the length of "https://" panicked in the scheme check.
    #[test]
    fn a_multibyte_target_prefix_is_malformed_not_a_panic() {
        assert_eq!(strip_scheme("HJT_int\u{209}3/login"), None);
        assert_eq!(strip_scheme("htt\u{e9}://x/"), None);
        assert_eq!(strip_scheme("HTTP://host/p"), Some("host/p"));
    }

    use super::*;

    /// Fuzz finding (`http_head`): a head that turns malformed only past
    /// the size limit is "too large" however the bytes arrive.
    #[test]
    fn malformed_past_the_limit_is_too_large_in_any_split() {
        let limits = Limits {
            max_header_bytes: 64,
            max_body_bytes: 64,
        };
        let mut head = b"GET /a HTTP/1.1\r\nX-Long: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 80));
        head.extend_from_slice(b"\r\nBad Header\r\n\r\n");
        let mut whole = BytesMut::from(&head[..]);
        assert_eq!(
            parse_head(&mut whole, limits).unwrap_err(),
            ParseError::HeadersTooLarge
        );
        let mut first = BytesMut::from(&head[..70]);
        assert_eq!(
            parse_head(&mut first, limits).unwrap_err(),
            ParseError::HeadersTooLarge
        );
        // Malformed within the limit stays malformed.
        let mut bad = BytesMut::from(&b"GET /a HTTP/1.1\r\nBad Header\r\n\r\n"[..]);
        assert!(matches!(
            parse_head(&mut bad, limits),
            Err(ParseError::Malformed(_))
        ));
    }

    const L: Limits = Limits {
        max_header_bytes: 1024,
        max_body_bytes: 100,
    };

    fn head(s: &str) -> Result<Option<RequestHead>, ParseError> {
        parse_head(&mut BytesMut::from(s), L)
    }

    #[test]
    fn parses_simple_get() {
        let mut b = BytesMut::from("GET /a/b?x=1 HTTP/1.1\r\nHost: h\r\nX-Y: z\r\n\r\nrest");
        let h = parse_head(&mut b, L).unwrap().unwrap();
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.path, "/a/b");
        assert_eq!(h.query.as_deref(), Some("x=1"));
        assert_eq!(h.headers.get("x-y"), Some("z"));
        assert_eq!(h.headers.get("HOST"), Some("h"));
        assert_eq!(h.framing, BodyFraming::Length(0));
        assert!(h.keep_alive);
        assert_eq!(&b[..], b"rest");
    }

    #[test]
    fn partial_needs_more() {
        assert!(head("GET / HTTP/1.1\r\nHost:").unwrap().is_none());
        assert!(head("").unwrap().is_none());
    }

    #[test]
    fn keep_alive_rules() {
        assert!(
            !head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
        assert!(!head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(
            head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn framing_errors() {
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap_err(),
            ParseError::Malformed("both Content-Length and Transfer-Encoding")
        );
        assert!(matches!(
            head("POST / HTTP/1.1\r\nContent-Length: x1\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(
            head("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(
            head("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n").unwrap_err(),
            ParseError::BodyTooLarge
        );
        assert_eq!(
            head("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").unwrap_err(),
            ParseError::UnsupportedEncoding
        );
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
                .unwrap()
                .unwrap()
                .framing,
            BodyFraming::Length(5)
        );
    }

    #[test]
    fn garbage_and_limits() {
        assert!(matches!(
            head("\x00\x01garbage\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(
            head("GET nopath HTTP/1.1\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000));
        assert_eq!(head(&big).unwrap_err(), ParseError::HeadersTooLarge);
        let big_partial = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(2000));
        assert_eq!(head(&big_partial).unwrap_err(), ParseError::HeadersTooLarge);
        let many: String = (0..150).map(|i| format!("X{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let l = Limits {
            max_header_bytes: 1 << 20,
            ..L
        };
        assert_eq!(
            parse_head(&mut BytesMut::from(many.as_str()), l).unwrap_err(),
            ParseError::HeadersTooLarge
        );
    }

    #[test]
    fn absolute_and_asterisk_targets() {
        let h = head("GET http://example.org/x?y HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.path.as_str(), h.query.as_deref()), ("/x", Some("y")));
        let h = head("GET http://example.org HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.path, "/");
        let h = head("OPTIONS * HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.path, "*");
    }

    #[test]
    fn chunked_incremental() {
        let input = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        // Feed one byte at a time: same result as all at once.
        let mut dec = ChunkedDecoder::new(L);
        let mut buf = BytesMut::new();
        let mut done = false;
        for b in input.iter() {
            buf.extend_from_slice(&[*b]);
            if dec.decode(&mut buf).unwrap() {
                done = true;
                break;
            }
        }
        assert!(done);
        assert_eq!(&dec.into_body()[..], b"Wikipedia");
        let mut dec = ChunkedDecoder::new(L);
        let mut buf = BytesMut::from(&input[..]);
        assert!(dec.decode(&mut buf).unwrap());
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn chunked_errors() {
        let mut dec = ChunkedDecoder::new(L);
        assert!(dec.decode(&mut BytesMut::from("zz\r\n")).is_err());
        let mut dec = ChunkedDecoder::new(L);
        assert!(dec.decode(&mut BytesMut::from("2\r\nabXY")).is_err());
        let mut dec = ChunkedDecoder::new(L);
        assert_eq!(
            dec.decode(&mut BytesMut::from("65\r\n")).unwrap_err(),
            ParseError::BodyTooLarge
        );
        let mut dec = ChunkedDecoder::new(L);
        assert_eq!(
            dec.decode(&mut BytesMut::from("ffffffffffffffff\r\n"))
                .unwrap_err(),
            ParseError::BodyTooLarge
        );
    }
}
