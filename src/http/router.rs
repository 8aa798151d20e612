//! Method + path-pattern routing.
//!
//! Patterns are split on `/` into literal segments, `{name}` parameters and
//! an optional trailing `{*name}` wildcard. Matching works on the *raw*
//! path, split on `/` before any decoding, so an encoded `%2F` inside a room
//! ID stays inside its segment; parameters are decoded on access
//! ([`Request::param`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use super::error::MatrixError;
use super::request::{Method, Params, Request};
use super::response::Response;

pub type HandlerResult = Result<Response, MatrixError>;

pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = HandlerResult>>>;
pub(crate) type Handler<S> = Box<dyn Fn(Rc<S>, Request) -> BoxFuture>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Param(Rc<str>),
    Rest(Rc<str>),
}

struct Pattern<S> {
    raw: String,
    /// `raw`, shared: the route label of metrics (never the path itself).
    route: Rc<str>,
    segments: Vec<Segment>,
    /// Segments before a wildcard (all of them without one).
    fixed: usize,
    wildcard: bool,
    literals: usize,
    params: usize,
    handlers: Vec<(Method, Handler<S>)>,
    /// Methods of this pattern whose bodies may exceed the server-wide
    /// limit (media uploads), with their own limit.
    body_limits: Vec<(Method, usize)>,
}

impl<S> Pattern<S> {
    /// Whether `path` (raw, starting with `/`) matches, without allocating.
    fn matches(&self, path: &str, nsegs: usize) -> bool {
        // A wildcard needs its own segment (possibly empty): `/media/{*r}`
        // matches `/media/` but not `/media`.
        if (!self.wildcard && nsegs != self.fixed) || (self.wildcard && nsegs <= self.fixed) {
            return false;
        }
        let mut parts = path[1..].split('/');
        for seg in &self.segments[..self.fixed] {
            match (seg, parts.next()) {
                (Segment::Literal(l), Some(p)) if **l == *p => {}
                (Segment::Param(_), Some(_)) => {}
                _ => return false,
            }
        }
        true
    }

    /// The parameter ranges of a path known to match.
    fn params(&self, path: &str) -> Params {
        let mut params = Vec::with_capacity(self.params);
        let mut offset = 1usize;
        let mut parts = path[1..].split('/');
        for seg in &self.segments {
            match seg {
                Segment::Literal(_) => {
                    let p = parts.next().unwrap_or("");
                    offset += p.len() + 1;
                }
                Segment::Param(name) => {
                    let p = parts.next().unwrap_or("");
                    params.push((Rc::clone(name), offset as u32..(offset + p.len()) as u32));
                    offset += p.len() + 1;
                }
                Segment::Rest(name) => {
                    let start = offset.min(path.len());
                    params.push((Rc::clone(name), start as u32..path.len() as u32));
                    break;
                }
            }
        }
        params
    }

    fn handler(&self, method: &Method) -> Option<&Handler<S>> {
        self.handlers
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, h)| h)
    }
}

/// Outcome of a route lookup.
pub(crate) enum Lookup<'a, S> {
    /// The handler, the path's parameters, and the route template.
    Found(&'a Handler<S>, Params, &'a Rc<str>),
    /// The path is known but not with this method; carries the allowed ones.
    MethodNotAllowed(String),
    NotFound,
}

/// Which patterns can match a path, so a lookup tries a handful instead of
/// all of them (hundreds: the scan was ~6 % of an idle `/sync`'s CPU).
/// Every list holds indices into `Router::patterns`, in its order, so the
/// first match is the one the full scan finds (a test pins it).
#[derive(Default)]
struct Index {
    /// Patterns with no parameter, by their exact path: `/sync`,
    /// `/versions`. Such a pattern has the most literals its length can
    /// have, so when it matches it is the scan's first match too.
    exact: HashMap<Box<str>, usize>,
    /// Patterns without a wildcard by segment count (`nsegs`).
    by_len: HashMap<usize, Vec<usize>>,
    /// Patterns with a wildcard (they sort last).
    wildcards: Vec<usize>,
}

/// A routing table from (method, path pattern) to async handlers that get
/// the shard's state `Rc<S>` and the request.
pub struct Router<S> {
    patterns: Vec<Pattern<S>>,
    index: Index,
    /// The largest of the routes' own body limits (0: none has one).
    largest_body_limit: usize,
}

impl<S: 'static> Default for Router<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: 'static> Router<S> {
    pub fn new() -> Self {
        Router {
            patterns: Vec::new(),
            index: Index::default(),
            largest_body_limit: 0,
        }
    }

    /// Adds a route. Invalid patterns and duplicate (method, pattern) pairs
    /// are programming errors and panic at startup, never per request.
    pub fn route<F, Fut>(mut self, method: Method, pattern: &str, handler: F) -> Self
    where
        F: Fn(Rc<S>, Request) -> Fut + 'static,
        Fut: Future<Output = HandlerResult> + 'static,
    {
        let segments = parse_pattern(pattern);
        let boxed: Handler<S> = Box::new(move |s, r| Box::pin(handler(s, r)) as BoxFuture);
        if let Some(p) = self
            .patterns
            .iter_mut()
            .find(|p| same_shape(&p.segments, &segments))
        {
            assert!(
                p.segments == segments,
                "route {pattern} conflicts with {} (same shape, other parameter names)",
                p.raw
            );
            assert!(
                p.handler(&method).is_none(),
                "duplicate route {method} {pattern}"
            );
            p.handlers.push((method, boxed));
            return self;
        }
        let wildcard = matches!(segments.last(), Some(Segment::Rest(_)));
        let fixed = segments.len() - usize::from(wildcard);
        let literals = segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        let params = segments.len() - literals;
        self.patterns.push(Pattern {
            raw: pattern.to_owned(),
            route: Rc::from(pattern),
            segments,
            fixed,
            wildcard,
            literals,
            params,
            handlers: vec![(method, boxed)],
            body_limits: Vec::new(),
        });
        // Most specific first: no wildcard before wildcard, then more
        // literal segments first; registration order otherwise (stable).
        self.patterns
            .sort_by_key(|p| (p.wildcard, std::cmp::Reverse(p.literals)));
        self.reindex();
        self
    }

    /// Rebuilds the index after the pattern list changed (start-up only).
    fn reindex(&mut self) {
        let mut index = Index::default();
        for (i, p) in self.patterns.iter().enumerate() {
            if p.wildcard {
                index.wildcards.push(i);
                continue;
            }
            if p.params == 0 {
                index.exact.insert(p.raw.as_str().into(), i);
            }
            index.by_len.entry(p.fixed).or_default().push(i);
        }
        self.index = index;
    }

    /// The patterns that match `path` (with `nsegs` slashes), in scan
    /// order.
    fn candidates<'a, 'p>(
        &'a self,
        path: &'p str,
        nsegs: usize,
    ) -> impl Iterator<Item = &'a Pattern<S>> + use<'a, 'p, S> {
        let same_len = self.index.by_len.get(&nsegs).map_or(&[][..], |v| &v[..]);
        same_len
            .iter()
            .chain(&self.index.wildcards)
            .map(|&i| &self.patterns[i])
            .filter(move |p| p.matches(path, nsegs))
    }

    pub fn get<F, Fut>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Rc<S>, Request) -> Fut + 'static,
        Fut: Future<Output = HandlerResult> + 'static,
    {
        self.route(Method::Get, pattern, handler)
    }

    pub fn post<F, Fut>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Rc<S>, Request) -> Fut + 'static,
        Fut: Future<Output = HandlerResult> + 'static,
    {
        self.route(Method::Post, pattern, handler)
    }

    pub fn put<F, Fut>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Rc<S>, Request) -> Fut + 'static,
        Fut: Future<Output = HandlerResult> + 'static,
    {
        self.route(Method::Put, pattern, handler)
    }

    pub fn delete<F, Fut>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Rc<S>, Request) -> Fut + 'static,
        Fut: Future<Output = HandlerResult> + 'static,
    {
        self.route(Method::Delete, pattern, handler)
    }

    /// Gives the already registered route `method pattern` its own body
    /// limit instead of the server-wide `max_body_bytes` (uploads are far
    /// larger than any JSON body). Unknown routes are a programming error.
    pub fn body_limit(mut self, method: Method, pattern: &str, bytes: usize) -> Self {
        let segments = parse_pattern(pattern);
        let p = self
            .patterns
            .iter_mut()
            .find(|p| p.segments == segments && p.handler(&method).is_some());
        let Some(p) = p else {
            panic!("body_limit for unregistered route {method} {pattern}");
        };
        p.body_limits.retain(|(m, _)| *m != method);
        p.body_limits.push((method, bytes));
        self.largest_body_limit = self
            .patterns
            .iter()
            .flat_map(|p| p.body_limits.iter().map(|(_, n)| *n))
            .max()
            .unwrap_or(0);
        self
    }

    /// The body limit of the route a request goes to, if it has its own.
    pub(crate) fn body_limit_for(&self, method: &Method, path: &str) -> Option<usize> {
        if self.largest_body_limit() == 0 || !path.starts_with('/') {
            return None;
        }
        let nsegs = path.bytes().filter(|b| *b == b'/').count();
        let p = self
            .candidates(path, nsegs)
            .find(|p| p.handler(method).is_some())?;
        p.body_limits
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, n)| *n)
    }

    /// The largest route-specific body limit (0 without any).
    pub(crate) fn largest_body_limit(&self) -> usize {
        self.largest_body_limit
    }

    /// The registered patterns (for diagnostics).
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(|p| p.raw.as_str())
    }

    /// Finds the handler for a method and raw path. `HEAD` falls back to the
    /// `GET` handler (the server drops the body).
    pub(crate) fn lookup(&self, method: &Method, path: &str) -> Lookup<'_, S> {
        if !path.starts_with('/') {
            return Lookup::NotFound;
        }
        // The hot routes (`/sync`, `/versions`) have no parameter: one hash.
        if let Some(&i) = self.index.exact.get(path) {
            let p = &self.patterns[i];
            if let Some(h) = handler_or_head(p, method) {
                return Lookup::Found(h, Params::new(), &p.route);
            }
        }
        let nsegs = path.bytes().filter(|b| *b == b'/').count();
        resolve(self.candidates(path, nsegs), method, path)
    }

    /// [`Router::lookup`] by scanning every pattern: what the index must
    /// agree with.
    #[cfg(test)]
    fn lookup_linear(&self, method: &Method, path: &str) -> Lookup<'_, S> {
        if !path.starts_with('/') {
            return Lookup::NotFound;
        }
        let nsegs = path.bytes().filter(|b| *b == b'/').count();
        resolve(
            self.patterns.iter().filter(|p| p.matches(path, nsegs)),
            method,
            path,
        )
    }
}

#[cfg(test)]
impl<S: 'static> Router<S> {
    /// Panics unless the index answers as the full scan for paths made
    /// from every registered pattern (parameters filled several ways, one
    /// segment fewer and one more) under every method.
    pub(crate) fn assert_index_agrees_with_scan(&self) {
        let fills = ["x", "%21r%3Ahs", "", "a.b"];
        let mut paths = vec!["/".to_owned(), "/nope".to_owned(), "*".to_owned()];
        for p in &self.patterns {
            for fill in fills {
                let mut path = String::new();
                for seg in &p.segments {
                    path.push('/');
                    match seg {
                        Segment::Literal(l) => path.push_str(l),
                        Segment::Param(_) => path.push_str(fill),
                        Segment::Rest(_) => path.push_str(&format!("{fill}/{fill}")),
                    }
                }
                if let Some((head, _)) = path.rsplit_once('/') {
                    paths.push(if head.is_empty() {
                        "/".into()
                    } else {
                        head.to_owned()
                    });
                }
                paths.push(format!("{path}/{fill}"));
                paths.push(path);
            }
        }
        let methods = [
            Method::Get,
            Method::Head,
            Method::Post,
            Method::Put,
            Method::Delete,
            Method::Options,
        ];
        let key = |l: Lookup<'_, S>| match l {
            Lookup::Found(h, params, route) => {
                format!("found {route} {:p} {params:?}", h as *const Handler<S>)
            }
            Lookup::MethodNotAllowed(a) => format!("405 {a}"),
            Lookup::NotFound => "404".to_owned(),
        };
        for path in &paths {
            for m in &methods {
                assert_eq!(
                    key(self.lookup(m, path)),
                    key(self.lookup_linear(m, path)),
                    "{m} {path}"
                );
                // Route body limits come from the same lookup.
                let linear = match self.lookup_linear(m, path) {
                    Lookup::Found(_, _, route) if self.largest_body_limit > 0 => self
                        .patterns
                        .iter()
                        .find(|p| Rc::ptr_eq(&p.route, route))
                        .and_then(|p| p.body_limits.iter().find(|(bm, _)| bm == m))
                        .map(|(_, n)| *n),
                    _ => None,
                };
                assert_eq!(self.body_limit_for(m, path), linear, "{m} {path}");
            }
        }
    }
}

/// The pattern's handler for `method`; `HEAD` falls back to `GET`.
fn handler_or_head<'a, S>(p: &'a Pattern<S>, method: &Method) -> Option<&'a Handler<S>> {
    p.handler(method).or_else(|| {
        (*method == Method::Head)
            .then(|| p.handler(&Method::Get))
            .flatten()
    })
}

/// The first of the matching patterns with a handler for `method`; else
/// 405 with every method the matching patterns have, or 404.
fn resolve<'a, S: 'a>(
    matching: impl Iterator<Item = &'a Pattern<S>>,
    method: &Method,
    path: &str,
) -> Lookup<'a, S> {
    let mut allowed: Option<String> = None;
    for p in matching {
        if let Some(h) = handler_or_head(p, method) {
            return Lookup::Found(h, p.params(path), &p.route);
        }
        let allow = allowed.get_or_insert_with(String::new);
        for (m, _) in &p.handlers {
            if !allow.split(", ").any(|a| a == m.as_str()) {
                if !allow.is_empty() {
                    allow.push_str(", ");
                }
                allow.push_str(m.as_str());
            }
        }
    }
    match allowed {
        Some(a) => Lookup::MethodNotAllowed(a),
        None => Lookup::NotFound,
    }
}

/// Whether two patterns match exactly the same paths.
fn same_shape(a: &[Segment], b: &[Segment]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|pair| match pair {
            (Segment::Literal(x), Segment::Literal(y)) => x == y,
            (Segment::Param(_), Segment::Param(_)) | (Segment::Rest(_), Segment::Rest(_)) => true,
            _ => false,
        })
}

fn parse_pattern(pattern: &str) -> Vec<Segment> {
    assert!(
        pattern.starts_with('/'),
        "route pattern must start with '/': {pattern}"
    );
    let parts: Vec<&str> = pattern[1..].split('/').collect();
    let last = parts.len() - 1;
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            if let Some(name) = part.strip_prefix("{*").and_then(|p| p.strip_suffix('}')) {
                assert!(i == last, "wildcard must be the last segment: {pattern}");
                assert!(!name.is_empty(), "empty wildcard name: {pattern}");
                Segment::Rest(Rc::from(name))
            } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                assert!(!name.is_empty(), "empty parameter name: {pattern}");
                Segment::Param(Rc::from(name))
            } else {
                assert!(
                    !part.contains(['{', '}']),
                    "braces must span a whole segment: {pattern}"
                );
                Segment::Literal((*part).into())
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn tag(_: Rc<()>, r: Request) -> HandlerResult {
        Ok(Response::empty(200).with_header("X-Tag", r.path.clone()))
    }

    fn router() -> Router<()> {
        Router::new()
            .route(Method::Put, "/rooms/{roomId}/send/{eventType}/{txnId}", tag)
            .route(Method::Get, "/rooms/{roomId}/state/{type}/{key}", tag)
            .route(Method::Get, "/rooms/{roomId}/state/{type}", tag)
            .route(Method::Get, "/user/{userId}/{kind}", tag)
            .route(Method::Get, "/user/{userId}/filter", tag)
            .route(Method::Post, "/user/{userId}/filter", tag)
            .route(Method::Get, "/media/{*rest}", tag)
            .route(Method::Get, "/", tag)
    }

    fn found(r: &Router<()>, m: Method, path: &str) -> Option<Params> {
        match r.lookup(&m, path) {
            Lookup::Found(_, p, _) => Some(p),
            _ => None,
        }
    }

    fn param<'a>(path: &'a str, params: &Params, name: &str) -> &'a str {
        let r = &params.iter().find(|(n, _)| &**n == name).unwrap().1;
        &path[r.start as usize..r.end as usize]
    }

    #[test]
    fn matches_params_on_raw_segments() {
        let r = router();
        let path = "/rooms/%21a%2Fb%3Ax/send/m.room.message/t1";
        let p = found(&r, Method::Put, path).unwrap();
        assert_eq!(param(path, &p, "roomId"), "%21a%2Fb%3Ax");
        assert_eq!(param(path, &p, "eventType"), "m.room.message");
        assert_eq!(param(path, &p, "txnId"), "t1");
    }

    #[test]
    fn empty_state_key_and_segment_counts() {
        let r = router();
        let path = "/rooms/!r/state/m.room.name/";
        let p = found(&r, Method::Get, path).unwrap();
        assert_eq!(param(path, &p, "key"), "");
        let path = "/rooms/!r/state/m.room.name";
        let p = found(&r, Method::Get, path).unwrap();
        assert_eq!(param(path, &p, "type"), "m.room.name");
        assert!(found(&r, Method::Get, "/rooms/!r/state").is_none());
    }

    #[test]
    fn literal_beats_param_and_405() {
        let r = router();
        // The literal "filter" route has POST; the param route does not.
        assert!(found(&r, Method::Post, "/user/@a:b/filter").is_some());
        match r.lookup(&Method::Delete, "/user/@a:b/filter") {
            Lookup::MethodNotAllowed(allow) => assert_eq!(allow, "GET, POST"),
            _ => panic!("expected 405"),
        }
        assert!(matches!(r.lookup(&Method::Get, "/nope"), Lookup::NotFound));
        assert!(matches!(r.lookup(&Method::Get, "*"), Lookup::NotFound));
    }

    #[test]
    fn wildcard_and_head_fallback() {
        let r = router();
        let path = "/media/a/b/c";
        let p = found(&r, Method::Get, path).unwrap();
        assert_eq!(param(path, &p, "rest"), "a/b/c");
        let p = found(&r, Method::Get, "/media/").unwrap();
        assert_eq!(param("/media/", &p, "rest"), "");
        assert!(found(&r, Method::Head, "/").is_some());
        assert!(found(&r, Method::Get, "/media").is_none());
    }

    #[test]
    fn route_body_limits() {
        let r = router().body_limit(Method::Put, "/rooms/{roomId}/send/{eventType}/{txnId}", 99);
        assert_eq!(r.largest_body_limit(), 99);
        assert_eq!(
            r.body_limit_for(&Method::Put, "/rooms/!a/send/m.x/t"),
            Some(99)
        );
        assert_eq!(r.body_limit_for(&Method::Get, "/rooms/!a/send/m.x/t"), None);
        assert_eq!(r.body_limit_for(&Method::Get, "/user/@a:b/filter"), None);
        assert_eq!(
            router().body_limit_for(&Method::Put, "/rooms/!a/send/m.x/t"),
            None
        );
    }

    #[test]
    fn the_index_answers_as_the_linear_scan() {
        router().assert_index_agrees_with_scan();
        router()
            .body_limit(Method::Put, "/rooms/{roomId}/send/{eventType}/{txnId}", 99)
            .assert_index_agrees_with_scan();
    }

    #[test]
    #[should_panic(expected = "duplicate route")]
    fn duplicate_route_panics() {
        let _ =
            Router::<()>::new()
                .route(Method::Get, "/a/{x}", tag)
                .route(Method::Get, "/a/{x}", tag);
    }

    #[test]
    #[should_panic(expected = "same shape")]
    fn conflicting_param_names_panic() {
        let _ =
            Router::<()>::new()
                .route(Method::Get, "/a/{x}", tag)
                .route(Method::Put, "/a/{y}", tag);
    }
}
