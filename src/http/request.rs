//! Parsed requests as handlers see them, with typed accessors that turn bad
//! client input into Matrix errors (never panics).

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::rc::Rc;
use std::str::FromStr;

use bytes::{Bytes, BytesMut};
use percent_encoding::percent_decode_str;
use serde::de::DeserializeOwned;

use super::error::MatrixError;

/// HTTP request method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    Other(Box<str>),
}

impl Method {
    pub fn from_bytes(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"PATCH" => Method::Patch,
            other => Method::Other(String::from_utf8_lossy(other).into()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Patch => "PATCH",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Method {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Method::from_bytes(s.as_bytes()))
    }
}

/// Request headers: the raw header block plus (name, value) byte ranges into
/// it, so parsing a request costs one small allocation for the index.
#[derive(Clone, Default)]
pub struct Headers {
    raw: Bytes,
    index: Vec<(Range<u32>, Range<u32>)>,
}

impl Headers {
    pub(crate) fn from_parts(raw: Bytes, index: Vec<(Range<u32>, Range<u32>)>) -> Self {
        Headers { raw, index }
    }

    /// Builds headers from pairs (handy for tests and internal requests).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut raw = BytesMut::new();
        let mut index = Vec::new();
        for (n, v) in pairs {
            let ns = raw.len() as u32;
            raw.extend_from_slice(n.as_bytes());
            let vs = raw.len() as u32;
            raw.extend_from_slice(v.as_bytes());
            index.push((ns..vs, vs..raw.len() as u32));
        }
        Headers {
            raw: raw.freeze(),
            index,
        }
    }

    fn slice(&self, r: &Range<u32>) -> &[u8] {
        // Ranges are produced together with `raw`, so they are in bounds;
        // `get` keeps that a non-panicking invariant anyway.
        self.raw
            .get(r.start as usize..r.end as usize)
            .unwrap_or_default()
    }

    /// All (name, value) pairs in order, values as raw bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.index.iter().map(|(n, v)| {
            // Names were validated as tokens (ASCII) by the parser.
            let name = std::str::from_utf8(self.slice(n)).unwrap_or("");
            (name, self.slice(v))
        })
    }

    /// First value of `name` (case-insensitive) as raw bytes.
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        self.get_all_bytes(name).next()
    }

    /// Every value of `name` (case-insensitive), in order.
    pub fn get_all_bytes<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// First value of `name` (case-insensitive), if it is valid UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(n, v)| (n, String::from_utf8_lossy(v))))
            .finish()
    }
}

/// Path parameters captured by the router: name and byte range into the raw
/// path (decoded lazily, on access).
pub(crate) type Params = Vec<(Rc<str>, Range<u32>)>;

/// An HTTP request as handed to a handler.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// Raw (still percent-encoded) path, without the query string.
    pub path: String,
    /// Raw query string (after `?`), if any.
    pub query: Option<String>,
    pub headers: Headers,
    pub body: Bytes,
    /// Unique per process; also in the request's tracing span.
    pub request_id: u64,
    pub remote_addr: Option<SocketAddr>,
    pub(crate) params: Params,
}

impl Request {
    /// A request built by hand (tests, internal calls). `target` is
    /// `path[?query]`.
    pub fn new(method: Method, target: &str) -> Self {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (target.to_owned(), None),
        };
        Request {
            method,
            path,
            query,
            headers: Headers::default(),
            body: Bytes::new(),
            request_id: 0,
            remote_addr: None,
            params: Vec::new(),
        }
    }

    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// First value of a header (case-insensitive), if valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// The raw (percent-encoded) value of a path parameter.
    pub fn raw_param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| &**n == name)
            .and_then(|(_, r)| self.path.get(r.start as usize..r.end as usize))
    }

    /// A path parameter, percent-decoded. Invalid UTF-8 after decoding is a
    /// 400 `M_INVALID_PARAM`; a name the route does not have is a server bug
    /// (500).
    pub fn param_str(&self, name: &str) -> Result<Cow<'_, str>, MatrixError> {
        let raw = self
            .raw_param(name)
            .ok_or_else(|| MatrixError::unknown(format!("Route has no path parameter '{name}'")))?;
        percent_decode_str(raw).decode_utf8().map_err(|_| {
            MatrixError::invalid_param(format!("Path parameter '{name}' is not valid UTF-8"))
        })
    }

    /// A typed path parameter; a value that does not parse is a 400
    /// `M_INVALID_PARAM`.
    pub fn param<T: FromStr>(&self, name: &str) -> Result<T, MatrixError> {
        self.param_str(name)?
            .parse::<T>()
            .map_err(|_| MatrixError::invalid_param(format!("Invalid path parameter '{name}'")))
    }

    /// All query pairs, decoded as `application/x-www-form-urlencoded`
    /// (`+` is a space), lossily for invalid UTF-8.
    pub fn query_pairs(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> + '_ {
        self.raw_query_pairs()
            .map(|(k, v)| (form_decode(k), form_decode(v)))
    }

    /// The query's `key=value` pairs, still encoded.
    fn raw_query_pairs(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
    }

    /// First value of a query parameter, decoded (only the matching value
    /// is: `/sync` asks for five parameters, and a URL-encoded filter
    /// decoded five times showed in its profile).
    pub fn query_param(&self, name: &str) -> Option<Cow<'_, str>> {
        self.raw_query_pairs()
            .find(|(k, _)| form_decode(k) == name)
            .map(|(_, v)| form_decode(v))
    }

    /// Every value of a repeated query parameter (e.g. `server_name`).
    pub fn query_params(&self, name: &str) -> Vec<Cow<'_, str>> {
        self.raw_query_pairs()
            .filter(|(k, _)| form_decode(k) == name)
            .map(|(_, v)| form_decode(v))
            .collect()
    }

    /// A typed query parameter: `Ok(None)` when absent, 400
    /// `M_INVALID_PARAM` when it does not parse.
    pub fn query_as<T: FromStr>(&self, name: &str) -> Result<Option<T>, MatrixError> {
        match self.query_param(name) {
            None => Ok(None),
            Some(v) => v.parse::<T>().map(Some).map_err(|_| {
                MatrixError::invalid_param(format!("Invalid query parameter '{name}'"))
            }),
        }
    }

    /// The body as JSON: 400 `M_NOT_JSON` if it is not JSON, 400 `M_BAD_JSON`
    /// if it is JSON of the wrong shape.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, MatrixError> {
        serde_json::from_slice(&self.body).map_err(MatrixError::from)
    }

    /// The access token, from `Authorization: Bearer …` or the deprecated
    /// `access_token` query parameter (client-server spec "Using access tokens").
    pub fn access_token(&self) -> Option<Cow<'_, str>> {
        if let Some(auth) = self.header("authorization") {
            let auth = auth.trim();
            if auth.len() > 7 && auth[..7].eq_ignore_ascii_case("bearer ") {
                return Some(Cow::Borrowed(auth[7..].trim()));
            }
        }
        self.query_param("access_token")
    }
}

fn needs_decoding(s: &str) -> bool {
    s.bytes().any(|b| b == b'%' || b == b'+')
}

/// Decodes one `x-www-form-urlencoded` component.
fn form_decode(s: &str) -> Cow<'_, str> {
    if !needs_decoding(s) {
        // Already a `str`: nothing to decode or validate. Keys are almost
        // never encoded, and decoding each one for every lookup (UTF-8
        // validation included) was 4 % of an idle `/sync`'s profile.
        Cow::Borrowed(s)
    } else if s.contains('+') {
        let replaced = s.replace('+', " ");
        Cow::Owned(
            percent_decode_str(&replaced)
                .decode_utf8_lossy()
                .into_owned(),
        )
    } else {
        percent_decode_str(s).decode_utf8_lossy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_param(path: &str, name: &str, range: Range<u32>) -> Request {
        let mut r = Request::new(Method::Get, path);
        r.params.push((Rc::from(name), range));
        r
    }

    #[test]
    fn params_are_decoded_and_typed() {
        let r = with_param("/x/%21room%3Aex.org/5", "roomId", 3..19);
        assert_eq!(r.raw_param("roomId"), Some("%21room%3Aex.org"));
        assert_eq!(r.param_str("roomId").unwrap(), "!room:ex.org");
        let r = with_param("/x/42", "n", 3..5);
        assert_eq!(r.param::<u32>("n").unwrap(), 42);
        let r = with_param("/x/zz", "n", 3..5);
        let e = r.param::<u32>("n").unwrap_err();
        assert_eq!((e.status, e.errcode), (400, "M_INVALID_PARAM"));
        let r = with_param("/x/%FF", "n", 3..6);
        assert_eq!(r.param_str("n").unwrap_err().errcode, "M_INVALID_PARAM");
        assert_eq!(r.param_str("missing").unwrap_err().status, 500);
    }

    #[test]
    fn query_params_decode() {
        let r = Request::new(Method::Get, "/p?a=1&b=x+y%21&a=2&flag&access_token=t%3D");
        assert_eq!(r.query_param("a").as_deref(), Some("1"));
        assert_eq!(r.query_params("a"), vec!["1", "2"]);
        assert_eq!(r.query_param("b").as_deref(), Some("x y!"));
        assert_eq!(r.query_param("flag").as_deref(), Some(""));
        assert_eq!(r.query_as::<u32>("a").unwrap(), Some(1));
        assert_eq!(
            r.query_as::<u32>("b").unwrap_err().errcode,
            "M_INVALID_PARAM"
        );
        assert_eq!(r.query_as::<u32>("nope").unwrap(), None);
        assert_eq!(r.access_token().as_deref(), Some("t="));
        // Keys are matched decoded too.
        let r = Request::new(Method::Get, "/p?%66ilter=%7B%7D&x=1");
        assert_eq!(r.query_param("filter").as_deref(), Some("{}"));
        let r = Request::new(Method::Get, "/p?a+b=1&a=2&a%=3");
        assert_eq!(r.query_param("a b").as_deref(), Some("1"));
        assert_eq!(r.query_param("a").as_deref(), Some("2"));
        // A stray `%` is kept as it is (no valid escape follows).
        assert_eq!(r.query_param("a%").as_deref(), Some("3"));
    }

    #[test]
    fn headers_case_insensitive() {
        let h = Headers::from_pairs([
            ("Content-Type", "application/json"),
            ("X-A", "1"),
            ("x-a", "2"),
        ]);
        let r = Request::new(Method::Post, "/").with_headers(h);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.headers.get_all_bytes("X-A").count(), 2);
        assert_eq!(r.header("nope"), None);
        let r = r.with_headers(Headers::from_pairs([("Authorization", "Bearer abc")]));
        assert_eq!(r.access_token().as_deref(), Some("abc"));
    }

    #[test]
    fn json_errors() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct B {
            a: u32,
        }
        let r = Request::new(Method::Post, "/").with_body(&b"{\"a\":1}"[..]);
        assert_eq!(r.json::<B>().unwrap().a, 1);
        let r = r.with_body(&b"{\"a\":\"x\"}"[..]);
        assert_eq!(r.json::<B>().unwrap_err().errcode, "M_BAD_JSON");
        let r = r.with_body(&b"not json"[..]);
        assert_eq!(r.json::<B>().unwrap_err().errcode, "M_NOT_JSON");
        let r = r.with_body(Bytes::new());
        assert_eq!(r.json::<B>().unwrap_err().errcode, "M_NOT_JSON");
    }

    #[test]
    fn methods_roundtrip() {
        for m in [
            "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "BREW",
        ] {
            assert_eq!(Method::from_bytes(m.as_bytes()).as_str(), m);
        }
    }
}
