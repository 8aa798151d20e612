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

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

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
    statements: Vec<(Cow<'static, str>, Vec<SqlValue>)>,
}

impl Write {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a statement (builder style).
    pub fn statement(mut self, sql: impl Into<Cow<'static, str>>, params: Vec<SqlValue>) -> Self {
        self.statements.push((sql.into(), params));
        self
    }

    /// Adds `other`'s statements after these (one atomic write of both).
    pub fn append(&mut self, other: Write) {
        self.statements.extend(other.statements);
    }

    pub fn len(&self) -> usize {
        self.statements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
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

/// Run the writes' statements as one pipelined implicit transaction and
/// split the results back per write.
async fn commit_writes<'a>(
    pool: &Pool,
    writes: impl Iterator<Item = &'a Write> + Clone,
) -> Result<Vec<Vec<QueryResult>>, DbError> {
    let params: Vec<Vec<&dyn ToSql>> = writes
        .clone()
        .flat_map(|w| w.statements.iter())
        .map(|(_, p)| p.iter().map(|v| v as &dyn ToSql).collect())
        .collect();
    let statements: Vec<(&str, &[&dyn ToSql])> = writes
        .clone()
        .flat_map(|w| w.statements.iter())
        .zip(params.iter())
        .map(|((sql, _), p)| (sql.as_ref(), p.as_slice()))
        .collect();
    if statements.is_empty() {
        return Ok(writes.map(|_| Vec::new()).collect());
    }
    let mut results = pool.pipeline_transaction(&statements).await?.into_iter();
    Ok(writes
        .map(|w| results.by_ref().take(w.statements.len()).collect())
        .collect())
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
