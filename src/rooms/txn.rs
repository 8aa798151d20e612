//! Expiry of `PUT /send` transaction ids (`txn_ids`).
//!
//! A txn id only has to outlive a client's retries of one request (Synapse
//! keeps them 30 minutes); hearth keeps them [`KEEP_HOURS`], across restarts,
//! then deletes them so the table does not grow with every message sent.

use std::time::Duration;

use crate::db::{DbError, Pool};

/// How long a transaction id stays idempotent.
pub const KEEP_HOURS: i64 = 24;
/// How often shard 0 deletes expired ids.
pub const PERIOD: Duration = Duration::from_secs(3600);

/// Deletes transaction ids older than `keep_hours`; returns how many.
pub async fn expire(db: &Pool, keep_hours: i64) -> Result<u64, DbError> {
    db.execute(
        "DELETE FROM txn_ids WHERE created_at < now() - make_interval(hours => $1::int)",
        &[&(keep_hours.clamp(0, i64::from(i32::MAX)) as i32)],
    )
    .await
}

/// The expiry loop (run on one shard). Never ends; errors are logged.
pub async fn run_expiry(db: Pool) {
    loop {
        monoio::time::sleep(PERIOD).await;
        match expire(&db, KEEP_HOURS).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expired transaction ids"),
            Err(e) => tracing::warn!(error = %e, "expiring transaction ids failed"),
        }
    }
}
