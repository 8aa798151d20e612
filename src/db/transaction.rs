//! Interactive transactions.
//!
//! An interactive transaction needs the connection to itself (anything
//! pipelined by another caller would land inside it), so it holds the
//! connection's gate: other callers' requests wait until COMMIT/ROLLBACK is
//! queued. Dropping an unfinished `Transaction` (error path, cancelled
//! future) queues a ROLLBACK before releasing the gate, so the connection
//! is clean for whoever comes next.

use std::cell::Cell;

use super::conn::{answer_of, Connection, QueryResult};
use super::error::DbError;
use super::types::{Row, ToSql};

/// How often `transaction()` runs the closure when it keeps hitting
/// serialization failures or deadlocks.
pub const MAX_TRANSACTION_ATTEMPTS: u32 = 5;

/// An open transaction on one connection. Finish it with [`commit`] or
/// [`rollback`]; dropping it rolls back.
///
/// [`commit`]: Transaction::commit
/// [`rollback`]: Transaction::rollback
pub struct Transaction {
    conn: Connection,
    done: Cell<bool>,
}

impl Transaction {
    pub(crate) async fn begin(conn: &Connection) -> Result<Transaction, DbError> {
        conn.wait_gate().await;
        conn.lock_gate();
        // From here on Drop releases the gate (and rolls back if needed).
        let tx = Transaction {
            conn: conn.clone(),
            done: Cell::new(false),
        };
        tx.run(&[("BEGIN", &[])]).await?;
        Ok(tx)
    }

    async fn run(&self, statements: &[(&str, &[&dyn ToSql])]) -> Result<Vec<QueryResult>, DbError> {
        if self.done.get() {
            return Err(DbError::Closed("transaction already finished".into()));
        }
        answer_of(self.conn.send_extended(statements)?).await
    }

    pub async fn query(&self, sql: &str, params: &[&dyn ToSql]) -> Result<Vec<Row>, DbError> {
        let mut r = self.run(&[(sql, params)]).await?;
        Ok(if r.is_empty() {
            Vec::new()
        } else {
            r.swap_remove(0).rows
        })
    }

    pub async fn query_one(&self, sql: &str, params: &[&dyn ToSql]) -> Result<Row, DbError> {
        super::conn::exactly_one(self.query(sql, params).await?)
    }

    pub async fn query_opt(
        &self,
        sql: &str,
        params: &[&dyn ToSql],
    ) -> Result<Option<Row>, DbError> {
        super::conn::at_most_one(self.query(sql, params).await?)
    }

    pub async fn execute(&self, sql: &str, params: &[&dyn ToSql]) -> Result<u64, DbError> {
        let r = self.run(&[(sql, params)]).await?;
        Ok(r.first().map_or(0, |r| r.rows_affected))
    }

    /// Run SQL (possibly several statements) through the simple protocol
    /// inside this transaction; used for migrations.
    pub async fn batch_execute(&self, sql: &str) -> Result<(), DbError> {
        if self.done.get() {
            return Err(DbError::Closed("transaction already finished".into()));
        }
        let answer = self.conn.send_simple(sql)?;
        match answer.await {
            Some(r) => r.map(|_| ()),
            None => Err(self.conn.closed_error()),
        }
    }

    /// Several statements in one round trip, inside this transaction.
    pub async fn pipeline(
        &self,
        statements: &[(&str, &[&dyn ToSql])],
    ) -> Result<Vec<QueryResult>, DbError> {
        self.run(statements).await
    }

    /// Queue `sql` as the last statement and release the connection for
    /// the callers waiting behind us (they are pipelined after it).
    fn finish(&self, sql: &str) -> Result<super::local::Answer<super::conn::Outcome>, DbError> {
        if self.done.replace(true) {
            return Err(DbError::Closed("transaction already finished".into()));
        }
        let r = self.conn.send_extended(&[(sql, &[])]);
        self.conn.unlock_gate();
        r
    }

    /// Commit. A transaction in which a statement failed cannot commit:
    /// PostgreSQL answers COMMIT with ROLLBACK, reported as `RolledBack`.
    pub async fn commit(self) -> Result<(), DbError> {
        let r = answer_of(self.finish("COMMIT")?).await?;
        match r.first() {
            Some(q) if q.command == "ROLLBACK" => Err(DbError::RolledBack),
            _ => Ok(()),
        }
    }

    pub async fn rollback(self) -> Result<(), DbError> {
        answer_of(self.finish("ROLLBACK")?).await.map(|_| ())
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if !self.done.get() {
            // Fire and forget: the reader consumes and discards the answer.
            let _ = self.finish("ROLLBACK");
        }
    }
}

impl Connection {
    /// Start an interactive transaction (exclusive use of this connection
    /// until it ends).
    pub async fn begin(&self) -> Result<Transaction, DbError> {
        Transaction::begin(self).await
    }

    /// Run `f` inside a transaction and commit; roll back if it fails.
    /// Serialization failures (40001) and deadlocks (40P01), whether from a
    /// statement or the COMMIT, rerun `f` from the start, up to
    /// [`MAX_TRANSACTION_ATTEMPTS`] times.
    pub async fn transaction<T, F>(&self, mut f: F) -> Result<T, DbError>
    where
        F: AsyncFnMut(&Transaction) -> Result<T, DbError>,
    {
        let mut attempt = 1;
        loop {
            let tx = self.begin().await?;
            let err = match f(&tx).await {
                Ok(v) => match tx.commit().await {
                    Ok(()) => return Ok(v),
                    Err(e) => e,
                },
                Err(e) => {
                    let _ = tx.rollback().await;
                    e
                }
            };
            if !err.is_retryable_transaction() || attempt >= MAX_TRANSACTION_ATTEMPTS {
                return Err(err);
            }
            tracing::debug!(target: "hearth::db", attempt, "retrying transaction: {err}");
            attempt += 1;
        }
    }
}
