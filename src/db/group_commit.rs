//! Group commit: many concurrent callers' writes committed together.
//!
//! Each caller submits a [`Write`] (statements with owned parameters). A
//! shard-local flusher gathers queued writes into batches; a batch is sent
//! as ONE pipelined request ending in a single Sync, i.e. one implicit
//! transaction and one round trip, and every caller in it is answered only
//! after that commit succeeded.
//!
//! When to flush: immediately when no batch is in flight (lowest latency
//! when idle); while batches are in flight, writes accumulate and are
//! flushed when a batch completes, when `max_batch` are waiting, or when the
//! oldest has waited `max_delay` (if fewer than `max_in_flight` batches are
//! out). So batches grow with load without an idle-time penalty.
//!
//! If a batch fails with a server error (one bad write, e.g. a unique
//! violation), its writes are retried one by one, each in its own
//! transaction, so only the bad one fails. Connection-level failures fail
//! the whole batch: its writes may or may not have committed.
//!
//! Rows added with [`Write::rows`] are merged across the batch: all rows
//! of one [`Rows`] kind go as one statement, at the place of the kind's
//! first row (`db::bulk` says when that is safe).

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::bulk::{Column, Rows};
use super::conn::QueryResult;
use super::error::DbError;
use super::local::{oneshot, Notify, Reply};
use super::pool::Pool;
use super::types::{SqlValue, ToSql};

/// Group-commit tuning.
#[derive(Debug, Clone)]
pub struct GroupCommitConfig {
    /// Most writes in one transaction.
    pub max_batch: usize,
    /// Longest a write waits for companions while a batch is in flight.
    pub max_delay: Duration,
    /// Batches committing at once (each on its own pool connection).
    pub max_in_flight: usize,
    /// Most writes waiting; beyond it `submit` fails with `Busy`.
    pub max_queued: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            max_batch: 256,
            max_delay: Duration::from_millis(2),
            max_in_flight: 2,
            max_queued: 16 * 1024,
        }
    }
}

/// One caller's write: statements applied atomically, in order.
#[derive(Debug, Clone, Default)]
pub struct Write {
    steps: Vec<Step>,
    /// Why a row did not fit its kind: the write is refused at `submit`.
    invalid: Option<String>,
}

#[derive(Debug, Clone)]
enum Step {
    Sql(Cow<'static, str>, Vec<SqlValue>),
    /// One row of a kind, merged with the batch's other rows of it.
    Row(&'static Rows, Vec<SqlValue>),
}

impl Write {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a statement (builder style).
    pub fn statement(mut self, sql: impl Into<Cow<'static, str>>, params: Vec<SqlValue>) -> Self {
        self.steps.push(Step::Sql(sql.into(), params));
        self
    }

    /// Add a row of `kind` (builder style): sent in one statement with the
    /// batch's other rows of `kind`; its result reports one row affected.
    /// A row that does not fit the kind's columns fails the write.
    pub fn rows(mut self, kind: &'static Rows, row: Vec<SqlValue>) -> Self {
        if let Err(e) = kind.check(&row) {
            self.invalid.get_or_insert(e.to_string());
        }
        self.steps.push(Step::Row(kind, row));
        self
    }

    /// Adds `other`'s statements after these (one atomic write of both).
    pub fn append(&mut self, other: Write) {
        self.steps.extend(other.steps);
        if self.invalid.is_none() {
            self.invalid = other.invalid;
        }
    }

    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// Counters for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Batches committed or failed.
    pub batches: u64,
    /// Writes that went through batches.
    pub writes: u64,
    /// Largest batch so far.
    pub largest_batch: usize,
    /// Batches that failed and were retried write by write.
    pub split_retries: u64,
}

type WriteReply = Reply<Result<Vec<QueryResult>, DbError>>;

struct Queued {
    write: Write,
    reply: WriteReply,
    since: Instant,
}

struct Inner {
    pool: Pool,
    cfg: GroupCommitConfig,
    queue: RefCell<VecDeque<Queued>>,
    in_flight: Cell<usize>,
    wake: Notify,
    closed: Cell<bool>,
    stats: Cell<GroupCommitStats>,
    /// Writes per committed batch (metrics).
    batch_sizes: RefCell<crate::metrics::LocalHistogram>,
}

struct Guard(Rc<Inner>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.closed.set(true);
        self.0.wake.notify();
    }
}

/// Handle to a shard's group-commit writer. Cheap to clone; the flusher
/// stops (after draining the queue) when the last handle is dropped.
#[derive(Clone)]
pub struct GroupCommit {
    inner: Rc<Inner>,
    _guard: Rc<Guard>,
}

impl GroupCommit {
    /// Start the flusher task on the current runtime.
    pub fn new(pool: Pool, cfg: GroupCommitConfig) -> GroupCommit {
        let inner = Rc::new(Inner {
            pool,
            cfg,
            queue: RefCell::new(VecDeque::new()),
            in_flight: Cell::new(0),
            wake: Notify::default(),
            closed: Cell::new(false),
            stats: Cell::new(GroupCommitStats::default()),
            batch_sizes: RefCell::new(crate::metrics::LocalHistogram::new(
                crate::metrics::histogram::BATCH_BOUNDS,
            )),
        });
        monoio::spawn(flusher(inner.clone()));
        GroupCommit {
            _guard: Rc::new(Guard(inner.clone())),
            inner,
        }
    }

    /// Queue a write; resolves after the transaction containing it has
    /// committed (with the results of its statements), or with its error.
    /// A write whose caller stops waiting is still committed or failed.
    pub async fn submit(&self, write: Write) -> Result<Vec<QueryResult>, DbError> {
        if let Some(why) = &write.invalid {
            return Err(DbError::Type(why.clone()));
        }
        if self.inner.queue.borrow().len() >= self.inner.cfg.max_queued {
            return Err(DbError::Busy);
        }
        let (reply, answer) = oneshot();
        self.inner.queue.borrow_mut().push_back(Queued {
            write,
            reply,
            since: Instant::now(),
        });
        self.inner.wake.notify();
        answer
            .await
            .unwrap_or_else(|| Err(DbError::Closed("group commit stopped".into())))
    }

    pub fn stats(&self) -> GroupCommitStats {
        self.inner.stats.get()
    }

    /// Writes waiting for a batch.
    pub fn queued(&self) -> usize {
        self.inner.queue.borrow().len()
    }

    /// Batches committing now.
    pub fn batches_in_flight(&self) -> usize {
        self.inner.in_flight.get()
    }

    /// Writes per batch so far.
    pub fn batch_sizes(&self) -> crate::metrics::HistogramSnapshot {
        self.inner.batch_sizes.borrow().snapshot()
    }
}

async fn flusher(inner: Rc<Inner>) {
    loop {
        let queued = inner.queue.borrow().len();
        let in_flight = inner.in_flight.get();
        if queued == 0 {
            if inner.closed.get() {
                return;
            }
            inner.wake.notified().await;
            continue;
        }
        let oldest = inner.queue.borrow().front().map(|q| q.since);
        let waited = oldest.map_or(Duration::ZERO, |t| t.elapsed());
        let room = in_flight < inner.cfg.max_in_flight.max(1);
        let flush = in_flight == 0
            || (room && (queued >= inner.cfg.max_batch || waited >= inner.cfg.max_delay))
            || (room && inner.closed.get());
        if flush {
            let n = queued.min(inner.cfg.max_batch.max(1));
            let batch: Vec<Queued> = inner.queue.borrow_mut().drain(..n).collect();
            inner.in_flight.set(in_flight + 1);
            monoio::spawn(run_batch(inner.clone(), batch));
            continue;
        }
        if room {
            let deadline = inner.cfg.max_delay.saturating_sub(waited);
            monoio::select! {
                _ = inner.wake.notified() => {},
                _ = monoio::time::sleep(deadline) => {},
            }
        } else {
            inner.wake.notified().await;
        }
    }
}

/// Commit `batch` as one transaction; on a server error retry each write
/// alone so one bad write does not fail its neighbours.
async fn run_batch(inner: Rc<Inner>, batch: Vec<Queued>) {
    let outcome = commit_writes(&inner.pool, batch.iter().map(|q| &q.write)).await;
    let mut stats = inner.stats.get();
    stats.batches += 1;
    stats.writes += batch.len() as u64;
    stats.largest_batch = stats.largest_batch.max(batch.len());
    inner.batch_sizes.borrow_mut().observe(batch.len() as f64);
    match outcome {
        Ok(mut per_write) => {
            for q in batch.into_iter().rev() {
                q.reply.send(Ok(per_write.pop().unwrap_or_default()));
            }
        }
        Err(e) if batch.len() > 1 && matches!(e, DbError::Server { .. }) => {
            stats.split_retries += 1;
            let pool = &inner.pool;
            let retries = batch.into_iter().map(|q| async move {
                let r = commit_writes(pool, std::iter::once(&q.write)).await;
                q.reply.send(r.map(|mut v| v.pop().unwrap_or_default()));
            });
            inner.stats.set(stats);
            futures_util::future::join_all(retries).await;
            finish(&inner);
            return;
        }
        Err(e) => {
            for q in batch {
                q.reply.send(Err(duplicate(&e)));
            }
        }
    }
    inner.stats.set(stats);
    finish(&inner);
}

fn finish(inner: &Inner) {
    inner.in_flight.set(inner.in_flight.get().saturating_sub(1));
    inner.wake.notify();
}

/// A statement of a batch: one write's, or all its rows of a kind.
enum Planned<'a> {
    Sql(&'a str, &'a [SqlValue]),
    Rows(&'static Rows, Vec<&'a [SqlValue]>),
}

/// Run the writes' statements as one pipelined implicit transaction and
/// split the results back per write.
async fn commit_writes<'a>(
    pool: &Pool,
    writes: impl Iterator<Item = &'a Write> + Clone,
) -> Result<Vec<Vec<QueryResult>>, DbError> {
    let mut plan: Vec<Planned<'a>> = Vec::new();
    // Where each kind's statement is in `plan` (a batch has few kinds).
    let mut kinds: Vec<(&'static Rows, usize)> = Vec::new();
    for step in writes.clone().flat_map(|w| w.steps.iter()) {
        match step {
            Step::Sql(sql, params) => plan.push(Planned::Sql(sql, params)),
            Step::Row(kind, row) => match kinds.iter().find(|(k, _)| std::ptr::eq(*k, *kind)) {
                Some(&(_, at)) => {
                    if let Some(Planned::Rows(_, rows)) = plan.get_mut(at) {
                        rows.push(row);
                    }
                }
                None => {
                    kinds.push((kind, plan.len()));
                    plan.push(Planned::Rows(kind, vec![row]));
                }
            },
        }
    }
    if plan.is_empty() {
        return Ok(writes.map(|_| Vec::new()).collect());
    }
    let columns: Vec<Vec<Column<'a>>> = plan
        .iter()
        .map(|p| match p {
            Planned::Rows(kind, rows) => kind.columns(rows),
            Planned::Sql(..) => Vec::new(),
        })
        .collect();
    let params: Vec<Vec<&dyn ToSql>> = plan
        .iter()
        .zip(&columns)
        .map(|(p, cols)| match p {
            Planned::Sql(_, values) => values.iter().map(|v| v as &dyn ToSql).collect(),
            Planned::Rows(..) => cols.iter().map(|c| c as &dyn ToSql).collect(),
        })
        .collect();
    let statements: Vec<(&str, &[&dyn ToSql])> = plan
        .iter()
        .zip(&params)
        .map(|(p, params)| match p {
            Planned::Sql(sql, _) => (*sql, params.as_slice()),
            Planned::Rows(kind, _) => (kind.sql, params.as_slice()),
        })
        .collect();
    let mut results: Vec<Option<QueryResult>> = pool
        .pipeline_transaction(&statements)
        .await?
        .into_iter()
        .map(Some)
        .collect();
    // Hand each write its statements' results in order: a statement's own,
    // and for a row one row affected (the kind's result is the batch's).
    let mut next = 0;
    let mut out = Vec::new();
    for w in writes {
        let mut mine = Vec::with_capacity(w.steps.len());
        for step in &w.steps {
            match step {
                Step::Sql(..) => {
                    // Skip the kinds' statements placed before this one.
                    while matches!(plan.get(next), Some(Planned::Rows(..))) {
                        next += 1;
                    }
                    mine.push(
                        results
                            .get_mut(next)
                            .and_then(Option::take)
                            .unwrap_or_default(),
                    );
                    next += 1;
                }
                Step::Row(..) => {
                    mine.push(QueryResult {
                        rows: Vec::new(),
                        rows_affected: 1,
                        command: "INSERT 0 1".into(),
                    });
                }
            }
        }
        out.push(mine);
    }
    Ok(out)
}

/// The same error for every caller of a failed batch (`DbError` is not
/// `Clone` because of `io::Error`).
fn duplicate(e: &DbError) -> DbError {
    match e {
        DbError::Server {
            code,
            message,
            detail,
            constraint,
        } => DbError::Server {
            code: code.clone(),
            message: message.clone(),
            detail: detail.clone(),
            constraint: constraint.clone(),
        },
        DbError::Io(io) => DbError::Io(std::io::Error::new(io.kind(), io.to_string())),
        DbError::Closed(s) => DbError::Closed(s.clone()),
        DbError::Busy => DbError::Busy,
        DbError::Unavailable => DbError::Unavailable,
        DbError::Timeout => DbError::Timeout,
        DbError::RolledBack => DbError::RolledBack,
        other => DbError::Closed(other.to_string()),
    }
}
