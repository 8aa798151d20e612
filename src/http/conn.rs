//! One HTTP/1.1 connection: read → parse → dispatch → write, in order.
//!
//! Pipelined requests already in the read buffer are answered one after the
//! other and their responses batched into a single write; the buffer is
//! flushed before the connection waits on the socket or on a slow handler.
//! Every wait on the client is bounded by a timeout, so a slow or silent
//! client only ever costs its own connection.

use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::{timeout, timeout_at, Instant};
use tracing::Instrument;

use super::access::{self, AccessInfo};
use super::cors;
use super::error::MatrixError;
use super::handoff::{Detach, Handoff, Moving, MAX_MOVES};
use super::parser::{parse_head, BodyFraming, ChunkedDecoder, ParseError, RequestHead};
use super::request::{Method, Request};
use super::response::{status_has_body, write_head, ConnHeader, Response};
use super::router::{Lookup, Router};
use super::shutdown::Shutdown;
use super::HttpConfig;
use crate::metrics;

/// Initial read buffer; grows for large heads/bodies, shrinks back when idle.
const READ_BUF: usize = 8 * 1024;
/// Buffers larger than this are dropped when idle, so thousands of idle
/// keep-alive connections do not pin large allocations.
const MAX_IDLE_BUF: usize = 64 * 1024;
/// Bodies up to this size are copied into the write buffer (batched);
/// larger ones are written from their own `Bytes`.
const INLINE_BODY: usize = 16 * 1024;
/// Flush once this much response data is pending, even mid-pipeline.
const FLUSH_AT: usize = 64 * 1024;
/// How long / how much we drain after an error before closing, so the peer
/// reads our error response instead of a TCP reset.
const LINGER: std::time::Duration = std::time::Duration::from_millis(500);
const LINGER_BYTES: usize = 256 * 1024;
/// A body announced over its route's limit is read and thrown away up to
/// this size (within the body timeout) so the client reads our 413; larger
/// ones only get the short linger.
const DISCARD_MAX: u64 = 512 * 1024 * 1024;

/// Everything a connection needs from its server, shared by all of a
/// shard's connections.
pub(crate) struct ServerCtx<S> {
    pub router: Rc<Router<S>>,
    pub state: Rc<S>,
    pub cfg: Rc<HttpConfig>,
    pub shutdown: Shutdown,
    /// How connections move to other shards; `None`: they never do.
    pub handoff: Option<Rc<dyn Handoff>>,
    /// The listening port (where a moved connection is adopted).
    pub port: u16,
}

/// What a connection does once a response is queued.
enum After {
    Close,
    Stay,
    /// Move to this shard (`Response::move_to`), if it can.
    Move(usize),
}

/// Why reading a request stopped.
enum ReadError {
    /// Peer closed, socket error, idle timeout or shutdown while idle:
    /// close silently.
    Gone,
    /// The client was too slow: answer 408 and close.
    Timeout,
    /// Bad or oversized input: answer with this error and close.
    Parse(ParseError),
}

/// A connection over any byte stream: plain TCP, or TLS on top of it.
pub(crate) struct Conn<S, IO = TcpStream> {
    stream: IO,
    peer: SocketAddr,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    ctx: Rc<ServerCtx<S>>,
    /// Moves to other shards made so far (`http::handoff`).
    moves: u8,
}

impl<S: 'static, IO: AsyncReadRent + AsyncWriteRent + Detach> Conn<S, IO> {
    pub(crate) fn new(stream: IO, peer: SocketAddr, ctx: Rc<ServerCtx<S>>) -> Self {
        Conn {
            stream,
            peer,
            rbuf: BytesMut::with_capacity(READ_BUF),
            wbuf: Vec::new(),
            ctx,
            moves: 0,
        }
    }

    /// A connection moved here from another shard, with the bytes it had
    /// read there.
    pub(crate) fn adopted(
        stream: IO,
        peer: SocketAddr,
        mut rbuf: BytesMut,
        moves: u8,
        ctx: Rc<ServerCtx<S>>,
    ) -> Self {
        rbuf.reserve(READ_BUF);
        Conn {
            stream,
            peer,
            rbuf,
            wbuf: Vec::new(),
            ctx,
            moves,
        }
    }

    /// Serves requests until the client leaves, errs, times out, asks to
    /// close, or the server shuts down.
    pub(crate) async fn run(mut self) {
        loop {
            let head = match self.next_head().await {
                Ok(h) => h,
                Err(e) => return self.fail(e).await,
            };
            let started = std::time::Instant::now();
            let limit = self.body_limit(&head);
            if let BodyFraming::Length(n) = head.framing {
                if n > limit as u64 {
                    return self.refuse_body(n, head.expect_continue).await;
                }
            }
            let body = match self.read_body(&head, limit).await {
                Ok(b) => b,
                Err(e) => return self.fail(e).await,
            };
            match self.respond(head, body, started).await {
                Ok(After::Stay) => {}
                Ok(After::Move(shard)) => match self.move_to(shard).await {
                    Some(conn) => self = conn,
                    None => return,
                },
                Ok(After::Close) => {
                    if self.flush().await.is_ok() && !self.rbuf.is_empty() {
                        // Closing with unread pipelined data: linger so the
                        // peer is not reset before it reads our responses.
                        self.linger().await;
                    }
                    return;
                }
                Err(_) => return,
            }
            if self.wbuf.len() >= FLUSH_AT && self.flush().await.is_err() {
                return;
            }
        }
    }

    /// Sends the connection to `shard` (`http::handoff`) once everything
    /// queued is written. `Some(self)`: it stays here (TLS, moved enough,
    /// no handoff, shutting down); `None`: it left, or failed and closed.
    async fn move_to(mut self, shard: usize) -> Option<Self> {
        let handoff = match &self.ctx.handoff {
            Some(h) if h.here() != shard => Rc::clone(h),
            _ => return Some(self),
        };
        if self.moves >= MAX_MOVES || self.ctx.shutdown.is_triggered() {
            return Some(self);
        }
        if self.flush().await.is_err() {
            return None;
        }
        let Conn {
            stream,
            peer,
            rbuf,
            wbuf,
            ctx,
            moves,
        } = self;
        let fd = match stream.detach() {
            Ok(fd) => fd,
            Err(stream) => {
                return Some(Conn {
                    stream,
                    peer,
                    rbuf,
                    wbuf,
                    ctx,
                    moves: MAX_MOVES,
                })
            }
        };
        let conn = Moving {
            fd,
            peer,
            port: ctx.port,
            read: rbuf,
            moves: moves + 1,
        };
        if !handoff.send(shard, conn).await {
            tracing::debug!(%peer, shard, "connection could not move; closed");
        }
        None
    }

    /// Answers a read failure (if it deserves an answer) and closes.
    async fn fail(mut self, e: ReadError) {
        match e {
            ReadError::Gone => {
                let _ = self.flush().await;
            }
            ReadError::Timeout => {
                let err = MatrixError::new(408, "M_UNKNOWN", "Request timed out");
                self.queue_error(err);
                let _ = self.flush().await;
            }
            ReadError::Parse(pe) => {
                tracing::debug!(peer = %self.peer, error = %pe, "bad request");
                self.queue_error(pe.to_matrix());
                if self.flush().await.is_ok() {
                    self.linger().await;
                }
            }
        }
    }

    /// The body limit of the request's route: its own (uploads), else the
    /// server-wide one.
    fn body_limit(&self, head: &RequestHead) -> usize {
        if head.framing == BodyFraming::Length(0) {
            return self.ctx.cfg.max_body_bytes;
        }
        self.ctx
            .router
            .body_limit_for(&head.method, &head.path)
            .unwrap_or(self.ctx.cfg.max_body_bytes)
    }

    /// Answers 413 `M_TOO_LARGE` to a body announced larger than its route
    /// allows, then reads and discards that body (bounded by the body
    /// timeout and [`DISCARD_MAX`]) before closing: most clients write the
    /// whole body before reading, and closing on unread data would reset
    /// the connection under them before they see the 413.
    async fn refuse_body(mut self, n: u64, expect_continue: bool) {
        self.queue_error(ParseError::BodyTooLarge.to_matrix());
        if self.flush().await.is_err() {
            return;
        }
        if expect_continue || n > DISCARD_MAX {
            // A client waiting for 100 Continue sends no body.
            self.linger().await;
            return;
        }
        let deadline = Instant::now() + self.ctx.cfg.body_timeout;
        let mut left = n as usize;
        loop {
            let take = left.min(self.rbuf.len());
            bytes::Buf::advance(&mut self.rbuf, take);
            left -= take;
            if left == 0 {
                break;
            }
            self.rbuf.clear();
            match timeout_at(
                deadline,
                read_into(&mut self.stream, &mut self.rbuf, left.min(1024 * 1024)),
            )
            .await
            {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
        let _ = self.stream.shutdown().await;
    }

    fn queue_error(&mut self, err: MatrixError) {
        let resp = err.into_response();
        write_head(&mut self.wbuf, &resp, ConnHeader::Close);
        self.wbuf.extend_from_slice(&resp.body);
    }

    /// Half-closes and drains input for a short while before the socket is
    /// dropped (a "lingering close").
    async fn linger(&mut self) {
        let _ = self.stream.shutdown().await;
        let deadline = Instant::now() + LINGER;
        let mut drained = 0;
        while drained < LINGER_BYTES {
            self.rbuf.clear();
            match timeout_at(
                deadline,
                read_into(&mut self.stream, &mut self.rbuf, READ_BUF),
            )
            .await
            {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
    }

    /// Reads until one request head is parsed.
    async fn next_head(&mut self) -> Result<RequestHead, ReadError> {
        // The body's size is checked against its route's limit afterwards.
        let limits = super::parser::Limits {
            max_body_bytes: usize::MAX,
            ..self.ctx.cfg.limits()
        };
        let mut deadline = None;
        loop {
            if !self.rbuf.is_empty() {
                if let Some(head) = parse_head(&mut self.rbuf, limits).map_err(ReadError::Parse)? {
                    return Ok(head);
                }
                // The header clock runs from the request's first byte.
                deadline.get_or_insert_with(|| Instant::now() + self.ctx.cfg.header_timeout);
            }
            // Never wait on the client with responses still unsent.
            self.flush().await.map_err(|_| ReadError::Gone)?;
            let n = match deadline {
                None => self.read_idle().await?,
                Some(d) => {
                    match timeout_at(d, read_into(&mut self.stream, &mut self.rbuf, READ_BUF)).await
                    {
                        Ok(Ok(n)) => n,
                        Ok(Err(_)) => return Err(ReadError::Gone),
                        Err(_) => return Err(ReadError::Timeout),
                    }
                }
            };
            if n == 0 {
                return Err(ReadError::Gone);
            }
        }
    }

    /// Waits for the first byte of the next request: bounded by the
    /// keep-alive timeout, and abandoned at once on shutdown.
    async fn read_idle(&mut self) -> Result<usize, ReadError> {
        let shutdown = self.ctx.shutdown.clone();
        if shutdown.is_triggered() {
            return Err(ReadError::Gone);
        }
        if self.rbuf.capacity() > MAX_IDLE_BUF {
            self.rbuf = BytesMut::with_capacity(READ_BUF);
        }
        if self.wbuf.capacity() > MAX_IDLE_BUF {
            self.wbuf = Vec::new();
        }
        let ka = self.ctx.cfg.keepalive_timeout;
        monoio::select! {
            r = timeout(ka, read_into(&mut self.stream, &mut self.rbuf, READ_BUF)) => match r {
                Ok(Ok(n)) => Ok(n),
                _ => Err(ReadError::Gone),
            },
            _ = shutdown.wait() => Err(ReadError::Gone),
        }
    }

    /// Reads the body the head announced.
    async fn read_body(&mut self, head: &RequestHead, limit: usize) -> Result<Bytes, ReadError> {
        let deadline = Instant::now() + self.ctx.cfg.body_timeout;
        match head.framing {
            BodyFraming::Length(0) => Ok(Bytes::new()),
            BodyFraming::Length(n) => {
                // `run` already refused lengths over the limit.
                let n = n as usize;
                if head.expect_continue && self.rbuf.len() < n {
                    self.wbuf
                        .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                while self.rbuf.len() < n {
                    self.flush().await.map_err(|_| ReadError::Gone)?;
                    let want = n - self.rbuf.len();
                    self.read_before(deadline, want).await?;
                }
                Ok(self.rbuf.split_to(n).freeze())
            }
            BodyFraming::Chunked => {
                let mut dec = ChunkedDecoder::new(super::parser::Limits {
                    max_body_bytes: limit,
                    ..self.ctx.cfg.limits()
                });
                if head.expect_continue && self.rbuf.is_empty() {
                    self.wbuf
                        .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                while !dec.decode(&mut self.rbuf).map_err(ReadError::Parse)? {
                    self.flush().await.map_err(|_| ReadError::Gone)?;
                    self.read_before(deadline, READ_BUF).await?;
                }
                Ok(dec.into_body())
            }
        }
    }

    async fn read_before(&mut self, deadline: Instant, want: usize) -> Result<(), ReadError> {
        match timeout_at(deadline, read_into(&mut self.stream, &mut self.rbuf, want)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Err(ReadError::Gone),
            Ok(Ok(_)) => Ok(()),
            Err(_) => Err(ReadError::Timeout),
        }
    }

    /// Dispatches one request and queues its response. Returns whether the
    /// connection stays open, and where.
    async fn respond(
        &mut self,
        head: RequestHead,
        body: Bytes,
        started: std::time::Instant,
    ) -> io::Result<After> {
        let request_id = access::next_request_id();
        let span = tracing::info_span!(
            "request",
            request_id,
            method = %head.method,
            path = %head.path,
        );
        let info = access::access_enabled().then(|| AccessInfo {
            method: head.method.clone(),
            path: head.path.clone(),
            query: head.query.clone(),
        });
        let head_only = head.method == Method::Head;
        let keep_alive = head.keep_alive;
        let http10 = head.minor_version == 0;
        let method = metrics::requests::method_label(&head.method);
        let preflight = head.method == Method::Options;

        let in_flight = metrics::local::track(metrics::local::Gauge::Requests);
        let (resp, route) = self
            .dispatch(head, body, request_id)
            .instrument(span.clone())
            .await;
        drop(in_flight);

        // Checked after the handler: a shutdown during it closes afterwards.
        let keep = keep_alive && !self.ctx.shutdown.is_triggered();
        let conn = match (keep, http10) {
            (false, _) => ConnHeader::Close,
            (true, true) => ConnHeader::KeepAlive,
            (true, false) => ConnHeader::None,
        };
        let bytes_out = self.send(&resp, head_only, conn).await?;
        let route = match &route {
            Some(r) => r,
            None if preflight => metrics::requests::PREFLIGHT,
            None => metrics::requests::UNMATCHED,
        };
        metrics::requests::observe(route, method, resp.status, started.elapsed());
        if let Some(info) = &info {
            access::log_access(&span, info, resp.status, bytes_out, started);
        }
        Ok(match (keep, resp.move_to) {
            (false, _) => After::Close,
            (true, None) => After::Stay,
            (true, Some(shard)) => After::Move(shard),
        })
    }

    /// Routes the request and runs its handler, turning errors and panics
    /// into Matrix error responses. Also returns the route template
    /// matched (`None`: preflight or no route), for metrics.
    async fn dispatch(
        &mut self,
        head: RequestHead,
        body: Bytes,
        request_id: u64,
    ) -> (Response, Option<Rc<str>>) {
        if head.method == Method::Options {
            return (cors::preflight_response(), None);
        }
        let router = Rc::clone(&self.ctx.router);
        let (handler, params, route) = match router.lookup(&head.method, &head.path) {
            Lookup::Found(h, p, route) => (h, p, Rc::clone(route)),
            Lookup::NotFound => return (MatrixError::unrecognized().into_response(), None),
            Lookup::MethodNotAllowed(allow) => {
                let resp = MatrixError::method_not_allowed()
                    .into_response()
                    .with_header("Allow", allow);
                return (resp, None);
            }
        };
        let req = Request {
            method: head.method,
            path: head.path,
            query: head.query,
            headers: head.headers,
            body,
            request_id,
            remote_addr: Some(self.peer),
            params,
        };
        let state = Rc::clone(&self.ctx.state);
        // The handler call itself is inside the future so a panic while
        // building it is caught too.
        let fut = AssertUnwindSafe(async move { handler(state, req).await }).catch_unwind();
        let mut fut = pin!(fut);
        // Fast handlers finish on the first poll and their responses batch
        // with the pipeline; slow ones get earlier responses sent meanwhile.
        let out = match futures_util::poll!(fut.as_mut()) {
            Poll::Ready(out) => out,
            Poll::Pending if self.wbuf.is_empty() => fut.await,
            Poll::Pending => {
                let (flushed, out) = futures_util::join!(self.flush(), fut);
                if let Err(e) = flushed {
                    tracing::debug!(error = %e, "flush failed while handler ran");
                }
                out
            }
        };
        let resp = match out {
            Ok(Ok(resp)) => resp,
            Ok(Err(err)) => {
                if err.status >= 500 {
                    tracing::warn!(error = %err, "request failed");
                }
                err.into_response()
            }
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %msg, "handler panicked");
                MatrixError::unknown("Internal server error").into_response()
            }
        };
        (resp, Some(route))
    }

    /// Queues (and for large bodies, writes) a response; returns the bytes
    /// put on the wire.
    async fn send(
        &mut self,
        resp: &Response,
        head_only: bool,
        conn: ConnHeader,
    ) -> io::Result<usize> {
        let start = self.wbuf.len();
        write_head(&mut self.wbuf, resp, conn);
        let mut n = self.wbuf.len() - start;
        if head_only || !status_has_body(resp.status) {
            return Ok(n);
        }
        n += resp.body.len();
        if resp.body.len() <= INLINE_BODY {
            self.wbuf.extend_from_slice(&resp.body);
        } else {
            self.flush().await?;
            self.write_bytes(resp.body.clone()).await?;
        }
        Ok(n)
    }

    /// Writes out everything queued, reusing the buffer.
    async fn flush(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.wbuf);
        let (res, mut buf) = timeout(self.ctx.cfg.write_timeout, self.stream.write_all(buf))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?;
        res?;
        buf.clear();
        self.wbuf = buf;
        Ok(())
    }

    async fn write_bytes(&mut self, body: Bytes) -> io::Result<()> {
        let (res, _) = timeout(self.ctx.cfg.write_timeout, self.stream.write_all(body))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?;
        res.map(|_| ())
    }
}

/// Reads into the spare capacity of `rbuf` (growing it towards `want`
/// bytes, within reason). If the future is dropped mid-read the buffer is
/// lost; callers only drop reads when they are closing the connection.
async fn read_into<IO: AsyncReadRent>(
    stream: &mut IO,
    rbuf: &mut BytesMut,
    want: usize,
) -> io::Result<usize> {
    let spare = rbuf.capacity() - rbuf.len();
    if spare < want.min(READ_BUF) {
        rbuf.reserve(want.clamp(READ_BUF, 1024 * 1024));
    }
    let buf = std::mem::take(rbuf);
    let (len, cap) = (buf.len(), buf.capacity());
    let slice: SliceMut<BytesMut> = buf.slice_mut(len..cap);
    let (res, slice) = stream.read(slice).await;
    *rbuf = slice.into_inner();
    res
}
