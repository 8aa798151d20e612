//! A shard's pool: a few pipelined connections, queries spread by least
//! in-flight, a bound on in-flight work (`DbError::Busy` beyond it), and a
//! supervisor per connection slot that reconnects with exponential backoff.
//!
//! With pipelining a handful of connections per shard carry thousands of
//! concurrent queries; more connections mostly buy parallelism inside
//! PostgreSQL and isolation from one slow query or open transaction.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::rc::{Rc, Weak};
use std::task::Poll;
use std::time::Duration;

use super::config::ConnectConfig;
use super::conn::{Connection, QueryResult};
use super::error::DbError;
use super::local::WaitList;
use super::transaction::Transaction;
use super::types::{Row, SimpleRow, ToSql};

/// Pool tuning.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Connections per shard.
    pub size: usize,
    /// Most queries queued or in flight across the pool; beyond: `Busy`.
    pub max_in_flight: usize,
    /// How long a query waits for a live connection (all are reconnecting)
    /// before failing; never unbounded.
    pub acquire_timeout: Duration,
    /// Client-side deadline per query, if any.
    pub query_timeout: Option<Duration>,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            size: 4,
            max_in_flight: 4096,
            acquire_timeout: Duration::from_secs(2),
            query_timeout: None,
            backoff_initial: Duration::from_millis(20),
            // Short: a restarted PostgreSQL must be in use again within a
            // second or so, and a refused connect costs next to nothing.
            backoff_max: Duration::from_secs(1),
        }
    }
}

struct PoolInner {
    cfg: ConnectConfig,
    pcfg: PoolConfig,
    slots: RefCell<Vec<Option<Connection>>>,
    in_flight: Cell<usize>,
    /// Woken when a slot gets a fresh connection.
    ready: WaitList,
    reconnects: Cell<u64>,
    /// Operations waiting for a live connection (all are reconnecting).
    waiting: Cell<usize>,
    /// The last connect attempt failed and no connection was made since:
    /// the server is down, so callers fail at once instead of each waiting
    /// `acquire_timeout` (a request must not hang on a dead database).
    down: Cell<bool>,
}

/// A snapshot of a pool's use (metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    /// Configured connections.
    pub size: usize,
    /// Live connections with requests in flight (pipelined: many each).
    pub busy: usize,
    /// Live connections with nothing in flight.
    pub idle: usize,
    /// Operations queued or in flight (bounded by `max_in_flight`).
    pub in_flight: usize,
    /// Operations waiting because no connection is live.
    pub waiting: usize,
}

/// A per-shard connection pool. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Rc<PoolInner>,
}

/// Counts one operation against `max_in_flight` until dropped.
struct Permit(Rc<PoolInner>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0
            .in_flight
            .set(self.0.in_flight.get().saturating_sub(1));
    }
}

impl Pool {
    /// Open the pool. The first connection must succeed (so a wrong
    /// password fails fast); the rest are opened by their supervisors.
    pub async fn connect(cfg: ConnectConfig, pcfg: PoolConfig) -> Result<Pool, DbError> {
        let size = pcfg.size.max(1);
        let first = Connection::connect(&cfg).await?;
        let mut slots = vec![None; size];
        slots[0] = Some(first);
        let inner = Rc::new(PoolInner {
            cfg,
            pcfg,
            slots: RefCell::new(slots),
            in_flight: Cell::new(0),
            ready: WaitList::default(),
            reconnects: Cell::new(0),
            waiting: Cell::new(0),
            down: Cell::new(false),
        });
        for i in 0..size {
            monoio::spawn(supervise(Rc::downgrade(&inner), i));
        }
        Ok(Pool { inner })
    }

    /// Queries queued or in flight through the pool.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.get()
    }

    /// Connections currently usable.
    pub fn live_connections(&self) -> usize {
        self.inner
            .slots
            .borrow()
            .iter()
            .flatten()
            .filter(|c| !c.is_closed())
            .count()
    }

    /// Busy, idle and waiting counts (for metrics; reads only cells).
    pub fn usage(&self) -> PoolUsage {
        let (mut busy, mut idle) = (0, 0);
        for c in self.inner.slots.borrow().iter().flatten() {
            if c.is_closed() {
                continue;
            }
            if c.in_flight() > 0 || c.is_gated() {
                busy += 1;
            } else {
                idle += 1;
            }
        }
        PoolUsage {
            size: self.inner.pcfg.size.max(1),
            busy,
            idle,
            in_flight: self.inner.in_flight.get(),
            waiting: self.inner.waiting.get(),
        }
    }

    /// Connections opened to replace lost ones.
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.get()
    }

    /// Backend PIDs of the live connections (tests, diagnostics).
    pub fn backend_pids(&self) -> Vec<i32> {
        self.inner
            .slots
            .borrow()
            .iter()
            .flatten()
            .filter(|c| !c.is_closed())
            .map(|c| c.process_id())
            .collect()
    }

    fn permit(&self) -> Result<Permit, DbError> {
        let n = self.inner.in_flight.get();
        if n >= self.inner.pcfg.max_in_flight {
            return Err(DbError::Busy);
        }
        self.inner.in_flight.set(n + 1);
        Ok(Permit(self.inner.clone()))
    }

    /// The live connection with the fewest requests in flight (one held
    /// by an interactive transaction counts as very busy).
    fn pick(&self) -> Option<Connection> {
        self.inner
            .slots
            .borrow()
            .iter()
            .flatten()
            .filter(|c| !c.is_closed())
            .min_by_key(|c| c.in_flight() + if c.is_gated() { 1 << 20 } else { 0 })
            .cloned()
    }

    /// Whether the database looks down: no live connection, and the last
    /// attempt to open one failed.
    pub fn is_down(&self) -> bool {
        self.inner.down.get() && self.pick().is_none()
    }

    /// A connection to use directly (e.g. for migrations), waiting up to
    /// `acquire_timeout` while all are reconnecting; at once
    /// [`DbError::Unavailable`] when the server is known to be down.
    pub async fn connection(&self) -> Result<Connection, DbError> {
        if let Some(c) = self.pick() {
            return Ok(c);
        }
        if self.inner.down.get() {
            return Err(DbError::Unavailable);
        }
        let inner = &self.inner;
        inner.waiting.set(inner.waiting.get() + 1);
        let _waiting = scopeguard(|| inner.waiting.set(inner.waiting.get().saturating_sub(1)));
        // Woken by a fresh connection, and by a failed connect (the server
        // is down: stop waiting for it).
        let wait = poll_fn(|cx| match self.pick() {
            Some(c) => Poll::Ready(Ok(c)),
            None if self.inner.down.get() => Poll::Ready(Err(DbError::Unavailable)),
            None => {
                self.inner.ready.register(cx.waker());
                Poll::Pending
            }
        });
        monoio::time::timeout(self.inner.pcfg.acquire_timeout, wait)
            .await
            .unwrap_or(Err(DbError::Unavailable))
    }

    /// Run `op` on a picked connection under the in-flight bound and the
    /// optional query timeout.
    async fn with_conn<T, F, Fut>(&self, op: F) -> Result<T, DbError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, DbError>>,
    {
        let _permit = self.permit()?;
        let conn = self.connection().await?;
        match self.inner.pcfg.query_timeout {
            None => op(conn).await,
            Some(t) => monoio::time::timeout(t, op(conn))
                .await
                .unwrap_or(Err(DbError::Timeout)),
        }
    }

    pub async fn query(&self, sql: &str, params: &[&dyn ToSql]) -> Result<Vec<Row>, DbError> {
        self.with_conn(|c| async move { c.query(sql, params).await })
            .await
    }

    pub async fn query_one(&self, sql: &str, params: &[&dyn ToSql]) -> Result<Row, DbError> {
        self.with_conn(|c| async move { c.query_one(sql, params).await })
            .await
    }

    pub async fn query_opt(
        &self,
        sql: &str,
        params: &[&dyn ToSql],
    ) -> Result<Option<Row>, DbError> {
        self.with_conn(|c| async move { c.query_opt(sql, params).await })
            .await
    }

    pub async fn execute(&self, sql: &str, params: &[&dyn ToSql]) -> Result<u64, DbError> {
        self.with_conn(|c| async move { c.execute(sql, params).await })
            .await
    }

    /// Several statements, atomically, in one round trip (see
    /// [`Connection::pipeline_transaction`]).
    pub async fn pipeline_transaction(
        &self,
        statements: &[(&str, &[&dyn ToSql])],
    ) -> Result<Vec<QueryResult>, DbError> {
        self.with_conn(|c| async move { c.pipeline_transaction(statements).await })
            .await
    }

    pub async fn simple_query(&self, sql: &str) -> Result<Vec<SimpleRow>, DbError> {
        self.with_conn(|c| async move { c.simple_query(sql).await })
            .await
    }

    pub async fn batch_execute(&self, sql: &str) -> Result<(), DbError> {
        self.with_conn(|c| async move { c.batch_execute(sql).await })
            .await
    }

    pub async fn copy_in(&self, sql: &str, data: &[u8]) -> Result<u64, DbError> {
        self.with_conn(|c| async move { c.copy_in(sql, data).await })
            .await
    }

    /// Closure-style transaction with retry (see [`Connection::transaction`]).
    /// The query timeout does not apply: the closure decides its own pace.
    pub async fn transaction<T, F>(&self, f: F) -> Result<T, DbError>
    where
        F: AsyncFnMut(&Transaction) -> Result<T, DbError>,
    {
        let _permit = self.permit()?;
        let conn = self.connection().await?;
        conn.transaction(f).await
    }
}

/// Runs `f` when dropped (also when the waiting future is cancelled).
fn scopeguard<F: FnMut()>(f: F) -> impl Drop {
    struct Guard<F: FnMut()>(F);
    impl<F: FnMut()> Drop for Guard<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    Guard(f)
}

/// Keep slot `idx` filled: wait for its connection to die, then reconnect
/// with exponential backoff. Ends when the pool is dropped.
async fn supervise(pool: Weak<PoolInner>, idx: usize) {
    let mut backoff = None::<Duration>;
    loop {
        let watch = {
            let Some(p) = pool.upgrade() else { return };
            let slot = p.slots.borrow().get(idx).cloned().flatten();
            match slot {
                Some(c) if !c.is_closed() => Some(c.watch()),
                _ => None,
            }
        };
        if let Some(w) = watch {
            // The watch does not keep the connection open, so dropping the
            // pool closes it and ends this wait.
            w.closed().await;
            backoff = None;
            continue;
        }
        if let Some(delay) = backoff {
            monoio::time::sleep(delay).await;
        }
        let Some(p) = pool.upgrade() else { return };
        let cfg = p.cfg.clone();
        let (initial, max) = (p.pcfg.backoff_initial, p.pcfg.backoff_max);
        let had_connection = p.slots.borrow().get(idx).is_some_and(|s| s.is_some());
        drop(p);
        match Connection::connect(&cfg).await {
            Ok(conn) => {
                let Some(p) = pool.upgrade() else { return };
                if had_connection {
                    p.reconnects.set(p.reconnects.get() + 1);
                    tracing::info!(target: "hearth::db", slot = idx, "database connection re-established");
                }
                if let Some(s) = p.slots.borrow_mut().get_mut(idx) {
                    *s = Some(conn);
                }
                if p.down.replace(false) {
                    tracing::info!(target: "hearth::db", "database reachable again");
                }
                p.ready.wake_all();
                backoff = None;
            }
            Err(e) => {
                if let Some(p) = pool.upgrade() {
                    if !p.down.replace(true) {
                        tracing::error!(target: "hearth::db", "database unreachable; requests fail at once until it is back: {e}");
                    }
                    p.ready.wake_all();
                }
                let next = backoff.map_or(initial, |b| (b * 2).min(max));
                tracing::warn!(target: "hearth::db", slot = idx, retry_in = ?next, "database connect failed: {e}");
                backoff = Some(next);
            }
        }
    }
}
