//! End-to-end encryption key management (client-server API "End-to-End
//! Encryption", "Key management API"): device keys, one-time keys and
//! fallback keys.
//!
//! Uploads run on the user's shard (the writer of the user's data); claims
//! may come from any shard at once, so a claim is one atomic
//! `DELETE ... RETURNING` in PostgreSQL (`FOR UPDATE SKIP LOCKED`): a
//! one-time key is handed out exactly once whoever asks. Keys are rows
//! referencing their device with `ON DELETE CASCADE`, so deleting a device
//! (or logging it out) removes its keys.

pub mod store;
pub mod validate;

use std::collections::BTreeMap;

/// `algorithm -> count` of a device's unclaimed one-time keys.
pub type KeyCounts = BTreeMap<String, i64>;

/// Why a key operation failed (the HTTP edge turns it into an errcode).
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The body is wrong (mismatched ids, bad key ids, bad signature).
    #[error("{0}")]
    InvalidParam(String),
    #[error("database: {0}")]
    Db(#[from] crate::db::DbError),
}
