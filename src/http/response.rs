//! HTTP responses and their serialization onto the connection's write buffer.

use std::borrow::Cow;
use std::io::Write;

use bytes::Bytes;
use serde::Serialize;

use super::cors;

/// A response: status, extra headers and a body. `Content-Length`, CORS and
/// `Connection` headers are added by the server when it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(Cow<'static, str>, Cow<'static, str>)>,
    pub body: Bytes,
    /// The shard this connection should go on from, once this response is
    /// written (see `http::handoff`); `None`: stay.
    pub move_to: Option<usize>,
}

impl Response {
    /// An empty-bodied response.
    pub fn empty(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            move_to: None,
        }
    }

    /// A JSON response. Serialization failures (which only happen for
    /// non-string map keys and the like, i.e. programming errors) become a
    /// 500 `M_UNKNOWN` rather than a panic.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::json_bytes(status, body),
            Err(e) => {
                tracing::error!(error = %e, "failed to serialize JSON response");
                super::MatrixError::unknown("Failed to serialize response").into_response()
            }
        }
    }

    /// A response whose body is already-serialized JSON.
    pub fn json_bytes(status: u16, body: impl Into<Bytes>) -> Self {
        Response {
            status,
            headers: vec![(
                Cow::Borrowed("Content-Type"),
                Cow::Borrowed("application/json"),
            )],
            body: body.into(),
            move_to: None,
        }
    }

    /// A response with an arbitrary body and content type.
    pub fn bytes(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Self::empty(status)
            .with_header("Content-Type", content_type)
            .with_body(body)
    }

    pub fn with_header(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Asks the server to move the connection to `shard` after writing
    /// this response, where the client's next requests are cheaper to
    /// serve (`http::handoff`). A hint: a TLS connection, one that has
    /// moved enough, or a server without a handoff stays where it is.
    pub fn move_to(mut self, shard: usize) -> Self {
        self.move_to = Some(shard);
        self
    }

    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }
}

/// Standard reason phrase for a status code (informational only).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// How the `Connection` header of a written response should read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnHeader {
    /// HTTP/1.1 keep-alive: no header needed.
    None,
    KeepAlive,
    Close,
}

/// Appends the status line and headers to `out`. The body is written by the
/// caller (it may be sent separately when large). Returns nothing: writing
/// into a `Vec` cannot fail.
pub(crate) fn write_head(out: &mut Vec<u8>, resp: &Response, conn: ConnHeader) {
    let status = if (100..1000).contains(&resp.status) {
        resp.status
    } else {
        500
    };
    // `write!` into a Vec<u8> is infallible.
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status, reason(status));
    // RFC 9110 §8.6: no Content-Length in 1xx / 204 responses.
    if status >= 200 && status != 204 {
        let _ = write!(out, "Content-Length: {}\r\n", resp.body.len());
    }
    out.extend_from_slice(cors::CORS_HEADERS);
    match conn {
        ConnHeader::None => {}
        ConnHeader::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        ConnHeader::Close => out.extend_from_slice(b"Connection: close\r\n"),
    }
    for (name, value) in &resp.headers {
        // Never let a handler inject header lines or override framing.
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("connection")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || has_ctl(name)
            || has_ctl(value)
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn has_ctl(s: &str) -> bool {
    s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

/// Whether a response to this status carries a body on the wire.
pub(crate) fn status_has_body(status: u16) -> bool {
    status >= 200 && status != 204 && status != 304
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_contains_length_cors_and_headers() {
        let r = Response::json(200, &serde_json::json!({"a": 1})).with_header("X-Foo", "bar");
        let mut out = Vec::new();
        write_head(&mut out, &r, ConnHeader::Close);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(s.contains("Content-Length: 7\r\n"));
        assert!(s.contains("Access-Control-Allow-Origin: *\r\n"));
        assert!(s.contains("Connection: close\r\n"));
        assert!(s.contains("Content-Type: application/json\r\n"));
        assert!(s.contains("X-Foo: bar\r\n"));
        assert!(s.ends_with("\r\n\r\n"));
    }

    #[test]
    fn header_injection_is_dropped() {
        let r = Response::empty(200)
            .with_header("X-Evil", "a\r\nSet-Cookie: x")
            .with_header("Content-Length", "99");
        let mut out = Vec::new();
        write_head(&mut out, &r, ConnHeader::None);
        let s = String::from_utf8(out).unwrap();
        assert!(!s.contains("Set-Cookie"));
        assert!(!s.contains("99"));
    }

    #[test]
    fn no_content_length_on_204() {
        let mut out = Vec::new();
        write_head(&mut out, &Response::empty(204), ConnHeader::None);
        assert!(!String::from_utf8(out).unwrap().contains("Content-Length"));
    }
}
