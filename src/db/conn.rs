//! One pipelined PostgreSQL connection.
//!
//! Requests are encoded straight into an outgoing buffer and a matching
//! entry is pushed onto a FIFO of pending callers, in one synchronous step
//! (single-threaded shard, so no other request can interleave). A writer
//! task flushes the buffer whenever it is non-empty, so many requests ride
//! one `write`; a reader task frames backend messages and routes each to the
//! front of the FIFO until its ReadyForQuery. Every request ends with its own
//! Sync, so an error only aborts that request.
//!
//! A caller that drops its future just abandons its reply slot: the reader
//! still consumes that request's messages, so the stream stays in sync. When
//! the socket fails, every pending caller gets `DbError::Closed` at once.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, Splitable};
use monoio::net::{TcpStream, UnixStream};
use postgres_protocol::message::backend::ErrorFields;
use postgres_protocol::message::frontend;

use super::auth;
use super::config::{ConnectConfig, Host};
use super::error::{parse_fields, DbError};
use super::local::{oneshot, Answer, Notify, Reply, WaitList};
use super::statement::{StatementCache, Stmt};
use super::types::{Row, SimpleRow, ToSql};
use super::wire;

/// Prepared statements kept per connection before LRU eviction.
const STATEMENT_CACHE_SIZE: usize = 512;

/// Result of one statement of a request.
#[derive(Debug, Clone, Default)]
pub struct QueryResult {
    pub rows: Vec<Row>,
    /// From the command tag (`INSERT 0 3` → 3; `SELECT 2` → 2).
    pub rows_affected: u64,
    /// The command tag, e.g. `INSERT 0 3`, `COMMIT`.
    pub command: String,
}

/// Number of rows a command tag reports (0 for tags without a count).
pub(crate) fn rows_affected(tag: &str) -> u64 {
    tag.rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn log_notice(mut fields: ErrorFields<'_>) {
    match parse_fields(&mut fields) {
        Ok(f) => tracing::info!(
            target: "hearth::db::notice",
            severity = f.severity.as_deref().unwrap_or(""),
            code = f.code.as_deref().unwrap_or(""),
            detail = f.detail.as_deref().unwrap_or(""),
            hint = f.hint.as_deref().unwrap_or(""),
            "{}",
            f.message.as_deref().unwrap_or("")
        ),
        Err(e) => tracing::warn!(target: "hearth::db::notice", "malformed notice: {e}"),
    }
}

pub(crate) type Outcome = Result<Vec<QueryResult>, DbError>;

/// How the reader interprets one request's messages.
pub(crate) enum Kind {
    /// Extended protocol: binary rows described by cached statements.
    Extended {
        /// Statements awaiting their Describe answer, in send order.
        describes: VecDeque<Rc<Stmt>>,
        /// Statement of each Execute, in send order.
        execs: VecDeque<Rc<Stmt>>,
    },
    /// Simple query protocol: text rows.
    Simple {
        rows: Vec<SimpleRow>,
        reply: Option<Reply<Result<Vec<SimpleRow>, DbError>>>,
    },
}

pub(crate) struct Pending {
    pub(crate) kind: Kind,
    pub(crate) reply: Option<Reply<Outcome>>,
    pub(crate) results: Vec<QueryResult>,
    pub(crate) rows: Vec<Row>,
    pub(crate) error: Option<DbError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    Open,
    /// All user handles dropped: flush, send Terminate, stop.
    Closing,
    Closed(String),
}

pub(crate) struct Inner {
    pub(crate) out: RefCell<BytesMut>,
    pub(crate) pending: RefCell<VecDeque<Pending>>,
    pub(crate) write_ready: Notify,
    pub(crate) state: RefCell<State>,
    pub(crate) stmts: RefCell<StatementCache>,
    /// Held by an open interactive transaction: other callers wait.
    pub(crate) gate_locked: Cell<bool>,
    pub(crate) gate_waiters: WaitList,
    pub(crate) closed_waiters: WaitList,
    pub(crate) parameters: RefCell<HashMap<String, String>>,
    pub(crate) process_id: i32,
}

/// Dropped with the last user handle: tells the tasks to shut down.
struct HandleGuard(Rc<Inner>);

impl Drop for HandleGuard {
    fn drop(&mut self) {
        let mut st = self.0.state.borrow_mut();
        if *st == State::Open {
            *st = State::Closing;
        }
        drop(st);
        self.0.write_ready.notify();
    }
}

/// A pipelined connection. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Connection {
    pub(crate) inner: Rc<Inner>,
    _guard: Rc<HandleGuard>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("process_id", &self.inner.process_id)
            .field("in_flight", &self.in_flight())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Connection {
    /// Connect and authenticate. Needs a monoio runtime with the timer
    /// enabled (the connect timeout).
    pub async fn connect(cfg: &ConnectConfig) -> Result<Connection, DbError> {
        let timeout = cfg.connect_timeout;
        match monoio::time::timeout(timeout, Self::connect_inner(cfg)).await {
            Ok(r) => r,
            Err(_) => Err(DbError::Timeout),
        }
    }

    async fn connect_inner(cfg: &ConnectConfig) -> Result<Connection, DbError> {
        match &cfg.host {
            Host::Unix(_) => {
                let path = cfg
                    .unix_socket_path()
                    .ok_or_else(|| DbError::Config("no socket path".into()))?;
                let stream = UnixStream::connect(&path).await.map_err(|e| {
                    DbError::Io(std::io::Error::new(
                        e.kind(),
                        format!("{}: {e}", path.display()),
                    ))
                })?;
                Self::connect_stream(stream, cfg).await
            }
            Host::Tcp(_) => {
                let stream = TcpStream::connect_addr(cfg.tcp_addr()?).await?;
                // Small pipelined requests must not wait for Nagle.
                let _ = stream.set_nodelay(true);
                Self::connect_stream(stream, cfg).await
            }
        }
    }

    /// Run startup/authentication over an already-connected stream and
    /// start the connection's tasks (the host/port in `cfg` are unused).
    pub async fn connect_stream<S>(
        mut stream: S,
        cfg: &ConnectConfig,
    ) -> Result<Connection, DbError>
    where
        S: AsyncReadRent + AsyncWriteRent + Splitable + 'static,
        S::OwnedRead: AsyncReadRent + 'static,
        S::OwnedWrite: AsyncWriteRent + 'static,
    {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let info = auth::startup(&mut stream, cfg, &mut buf).await?;
        let inner = Rc::new(Inner {
            out: RefCell::new(BytesMut::with_capacity(16 * 1024)),
            pending: RefCell::new(VecDeque::new()),
            write_ready: Notify::default(),
            state: RefCell::new(State::Open),
            stmts: RefCell::new(StatementCache::new(STATEMENT_CACHE_SIZE)),
            gate_locked: Cell::new(false),
            gate_waiters: WaitList::default(),
            closed_waiters: WaitList::default(),
            parameters: RefCell::new(info.parameters),
            process_id: info.process_id,
        });
        let (r, w) = stream.into_split();
        monoio::spawn(wire::reader(inner.clone(), r, buf));
        monoio::spawn(wire::writer(inner.clone(), w));
        Ok(Connection {
            _guard: Rc::new(HandleGuard(inner.clone())),
            inner,
        })
    }

    /// Requests sent and not yet fully answered.
    pub fn in_flight(&self) -> usize {
        self.inner.pending.borrow().len()
    }

    /// Whether the connection is unusable (lost or shut down).
    pub fn is_closed(&self) -> bool {
        *self.inner.state.borrow() != State::Open
    }

    /// Resolves when the connection has died.
    pub async fn closed(&self) {
        self.watch().closed().await
    }

    /// A watcher that does not keep the connection open.
    pub(crate) fn watch(&self) -> ConnWatch {
        ConnWatch(self.inner.clone())
    }

    /// Whether an interactive transaction currently holds the connection.
    pub(crate) fn is_gated(&self) -> bool {
        self.inner.gate_locked.get()
    }

    /// Server backend PID (for `pg_terminate_backend` / cancel).
    pub fn process_id(&self) -> i32 {
        self.inner.process_id
    }

    /// A server parameter reported at startup or since (ParameterStatus).
    pub fn parameter(&self, name: &str) -> Option<String> {
        self.inner.parameters.borrow().get(name).cloned()
    }

    /// Parse messages sent so far (statement cache misses).
    pub fn parse_count(&self) -> u64 {
        self.inner.stmts.borrow().parses
    }

    /// Run one statement and return its rows.
    pub async fn query(&self, sql: &str, params: &[&dyn ToSql]) -> Result<Vec<Row>, DbError> {
        self.wait_gate().await;
        let answer = self.send_extended(&[(sql, params)])?;
        Ok(take_first(answer_of(answer).await?).rows)
    }

    /// Run one statement that must return exactly one row.
    pub async fn query_one(&self, sql: &str, params: &[&dyn ToSql]) -> Result<Row, DbError> {
        exactly_one(self.query(sql, params).await?)
    }

    /// Run one statement that returns at most one row.
    pub async fn query_opt(
        &self,
        sql: &str,
        params: &[&dyn ToSql],
    ) -> Result<Option<Row>, DbError> {
        at_most_one(self.query(sql, params).await?)
    }

    /// Run one statement and return the number of rows it affected.
    pub async fn execute(&self, sql: &str, params: &[&dyn ToSql]) -> Result<u64, DbError> {
        self.wait_gate().await;
        let answer = self.send_extended(&[(sql, params)])?;
        Ok(take_first(answer_of(answer).await?).rows_affected)
    }

    /// Run several statements as ONE pipelined atomic batch: a single
    /// round trip, all-or-nothing. It relies on PostgreSQL's implicit
    /// transaction for messages up to a Sync (no explicit BEGIN, so a
    /// failure never leaves the connection in an aborted transaction that
    /// would break the requests pipelined behind it).
    pub async fn pipeline_transaction(
        &self,
        statements: &[(&str, &[&dyn ToSql])],
    ) -> Result<Vec<QueryResult>, DbError> {
        self.wait_gate().await;
        let answer = self.send_extended(statements)?;
        answer_of(answer).await
    }

    /// Run SQL through the simple query protocol (may hold several
    /// statements; used for migrations and DDL). Rows come back as text.
    pub async fn simple_query(&self, sql: &str) -> Result<Vec<SimpleRow>, DbError> {
        self.wait_gate().await;
        let answer = self.send_simple(sql)?;
        answer.await.unwrap_or_else(|| Err(self.closed_error()))
    }

    /// Run SQL through the simple protocol, ignoring any rows.
    pub async fn batch_execute(&self, sql: &str) -> Result<(), DbError> {
        self.simple_query(sql).await.map(|_| ())
    }

    pub(crate) fn closed_error(&self) -> DbError {
        self.inner.closed_error()
    }

    /// Wait until no interactive transaction holds the connection.
    pub(crate) async fn wait_gate(&self) {
        poll_fn(|cx| {
            if !self.inner.gate_locked.get() || self.is_closed() {
                Poll::Ready(())
            } else {
                self.inner.gate_waiters.register(cx.waker());
                Poll::Pending
            }
        })
        .await
    }

    pub(crate) fn lock_gate(&self) {
        self.inner.gate_locked.set(true);
    }

    pub(crate) fn unlock_gate(&self) {
        self.inner.gate_locked.set(false);
        self.inner.gate_waiters.wake_all();
    }

    /// Encode and queue statements as one Sync-terminated request.
    pub(crate) fn send_extended(
        &self,
        statements: &[(&str, &[&dyn ToSql])],
    ) -> Result<Answer<Outcome>, DbError> {
        self.enqueue(|out, stmts| {
            let mut describes = VecDeque::new();
            let mut execs = VecDeque::new();
            for (sql, params) in statements {
                let types: Vec<_> = params.iter().map(|p| p.sql_type()).collect();
                let prep = stmts.prepare(sql, &types);
                for old in &prep.evicted {
                    frontend::close(b'S', &old.name, out)?;
                }
                if prep.is_new {
                    frontend::parse(&prep.stmt.name, sql, types.iter().copied(), out)?;
                    frontend::describe(b'S', &prep.stmt.name, out)?;
                    describes.push_back(prep.stmt.clone());
                }
                let mut err = None;
                let r = frontend::bind(
                    "",
                    &prep.stmt.name,
                    Some(1),
                    params.iter(),
                    |p, buf| match p.to_sql(buf) {
                        Ok(n) => Ok(n),
                        Err(e) => {
                            let msg = e.to_string();
                            err = Some(e);
                            Err(msg.into())
                        }
                    },
                    Some(1),
                    out,
                );
                if let Err(e) = r {
                    if prep.is_new {
                        stmts.evict(&prep.stmt);
                    }
                    return Err(err.unwrap_or_else(|| match e {
                        frontend::BindError::Conversion(e) => DbError::Type(e.to_string()),
                        frontend::BindError::Serialization(e) => DbError::Io(e),
                    }));
                }
                frontend::execute("", 0, out)?;
                execs.push_back(prep.stmt);
            }
            frontend::sync(out);
            Ok(Kind::Extended { describes, execs })
        })
    }

    pub(crate) fn send_simple(
        &self,
        sql: &str,
    ) -> Result<Answer<Result<Vec<SimpleRow>, DbError>>, DbError> {
        let (reply, answer) = oneshot();
        let mut reply = Some(reply);
        self.enqueue(|out, _| {
            frontend::query(sql, out)?;
            Ok(Kind::Simple {
                rows: Vec::new(),
                reply: reply.take(),
            })
        })?;
        Ok(answer)
    }

    /// Encode a request into the outgoing buffer and queue its reply slot,
    /// atomically (nothing partial is ever left in the buffer).
    pub(crate) fn enqueue<F>(&self, encode: F) -> Result<Answer<Outcome>, DbError>
    where
        F: FnOnce(&mut BytesMut, &mut StatementCache) -> Result<Kind, DbError>,
    {
        if self.is_closed() {
            return Err(self.closed_error());
        }
        let mut out = self.inner.out.borrow_mut();
        let start = out.len();
        let mut stmts = self.inner.stmts.borrow_mut();
        let kind = match encode(&mut out, &mut stmts) {
            Ok(k) => k,
            Err(e) => {
                // Nothing partial may reach the server.
                out.truncate(start);
                return Err(e);
            }
        };
        drop((out, stmts));
        let (reply, answer) = oneshot();
        self.inner.pending.borrow_mut().push_back(Pending {
            kind,
            reply: Some(reply),
            results: Vec::new(),
            rows: Vec::new(),
            error: None,
        });
        self.inner.write_ready.notify();
        Ok(answer)
    }
}

/// Observes a connection's death without keeping it alive (the tasks
/// shut down once the last `Connection` handle is dropped).
pub(crate) struct ConnWatch(Rc<Inner>);

impl ConnWatch {
    pub(crate) fn is_closed(&self) -> bool {
        *self.0.state.borrow() != State::Open
    }

    pub(crate) async fn closed(&self) {
        poll_fn(|cx| {
            if self.is_closed() {
                Poll::Ready(())
            } else {
                self.0.closed_waiters.register(cx.waker());
                Poll::Pending
            }
        })
        .await
    }
}

/// Await a reply; a vanished reply means the connection died.
pub(crate) async fn answer_of(answer: Answer<Outcome>) -> Outcome {
    answer.await.unwrap_or_else(|| {
        Err(DbError::Closed(
            "connection lost before the answer arrived".into(),
        ))
    })
}

fn take_first(mut results: Vec<QueryResult>) -> QueryResult {
    if results.is_empty() {
        QueryResult::default()
    } else {
        results.swap_remove(0)
    }
}

/// The one row of a result that must have exactly one (`query_one`).
pub(crate) fn exactly_one(mut rows: Vec<Row>) -> Result<Row, DbError> {
    match rows.len() {
        1 => rows.pop().ok_or(DbError::Type("row vanished".into())),
        n => Err(DbError::Type(format!("expected one row, got {n}"))),
    }
}

/// The row, if any, of a result that may have at most one (`query_opt`).
pub(crate) fn at_most_one(mut rows: Vec<Row>) -> Result<Option<Row>, DbError> {
    match rows.len() {
        0 | 1 => Ok(rows.pop()),
        n => Err(DbError::Type(format!("expected at most one row, got {n}"))),
    }
}
