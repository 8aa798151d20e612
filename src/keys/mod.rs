//! End-to-end encryption key management (client-server API "End-to-End
//! Encryption", "Key management API"): device keys, one-time keys and
//! fallback keys; cross-signing keys and signatures ([`cross_signing`],
//! [`cross_store`]); server-side key backups ([`backup`]).
//!
//! Uploads run on the user's shard (the writer of the user's data); claims
//! may come from any shard at once, so a claim is one atomic
//! `DELETE ... RETURNING` in PostgreSQL (`FOR UPDATE SKIP LOCKED`): a
//! one-time key is handed out exactly once whoever asks. Keys are rows
//! referencing their device with `ON DELETE CASCADE`, so deleting a device
//! (or logging it out) removes its keys.

pub mod backup;
pub mod cross_signing;
pub mod cross_store;
pub mod device_lists;
pub mod remote;
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
    /// A required key or field is absent (`M_MISSING_PARAM`).
    #[error("{0}")]
    MissingParam(String),
    /// A signature does not verify (`M_INVALID_SIGNATURE`).
    #[error("{0}")]
    InvalidSignature(String),
    /// Not allowed for this user (`M_FORBIDDEN`).
    #[error("{0}")]
    Forbidden(String),
    /// Not supported yet (remote users' keys before federation).
    #[error("{0}")]
    Unsupported(String),
    /// No such backup version, room or session (`M_NOT_FOUND`).
    #[error("{0}")]
    NotFound(String),
    /// A key upload to a backup version that is not the current one
    /// (`M_WRONG_ROOM_KEYS_VERSION`, with the current version).
    #[error("wrong backup version, current is {0}")]
    WrongBackupVersion(String),
    #[error("database: {0}")]
    Db(#[from] crate::db::DbError),
}
