//! Typed errors of the database layer.
//!
//! Every failure a caller can see is a [`DbError`]: server errors keep their
//! SQLSTATE so callers can react to e.g. unique violations (`23505`) or
//! serialization failures (`40001`) without string matching.

use std::io;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::ErrorFields;

/// SQLSTATE of `serialization_failure`.
pub const SERIALIZATION_FAILURE: &str = "40001";
/// SQLSTATE of `deadlock_detected`.
pub const DEADLOCK_DETECTED: &str = "40P01";
/// SQLSTATE of `unique_violation`.
pub const UNIQUE_VIOLATION: &str = "23505";
/// SQLSTATE of `feature_not_supported`, which PostgreSQL also uses for
/// "cached plan must not change result type" after a schema change.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";

/// Errors of the PostgreSQL client, pool, group commit and migrations.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The server answered with an ErrorResponse.
    #[error("database error {code}: {message}")]
    Server {
        /// Five-character SQLSTATE, e.g. `23505`.
        code: String,
        message: String,
        detail: Option<String>,
        constraint: Option<String>,
    },
    /// Connecting or talking to the server failed at the socket level.
    #[error("database I/O error: {0}")]
    Io(#[from] io::Error),
    /// The connection is gone (lost, closed, or its task ended); the query
    /// may or may not have been executed.
    #[error("database connection closed: {0}")]
    Closed(String),
    /// The server sent something that breaks the protocol.
    #[error("database protocol error: {0}")]
    Protocol(String),
    /// Authentication could not be completed.
    #[error("database authentication failed: {0}")]
    Auth(String),
    /// A bad connection string or option.
    #[error("database config error: {0}")]
    Config(String),
    /// A value could not be converted to or from its SQL form.
    #[error("database type error: {0}")]
    Type(String),
    /// No connection to the server could be had: it is down or
    /// unreachable (HTTP 503 upstream, at once rather than after a hang).
    #[error("database unavailable")]
    Unavailable,
    /// Too many queries queued or in flight: shed load (HTTP 503 upstream).
    #[error("database busy: too many queries in flight")]
    Busy,
    /// COMMIT found the transaction already failed and rolled it back.
    #[error("transaction was rolled back because a statement in it failed")]
    RolledBack,
    /// A query did not complete within its deadline.
    #[error("database query timed out")]
    Timeout,
    /// The database schema is newer than this binary understands.
    #[error("database schema version {found} is newer than the newest this binary knows ({known}); refusing to run an old binary against a newer database")]
    SchemaTooNew { found: i64, known: i64 },
    /// A migration failed to apply.
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        version: i64,
        name: &'static str,
        #[source]
        source: Box<DbError>,
    },
}

impl DbError {
    /// The SQLSTATE of a server error, if this is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            DbError::Server { code, .. } => Some(code),
            DbError::Migration { source, .. } => source.code(),
            _ => None,
        }
    }

    /// Whether the transaction that hit this error may succeed if retried
    /// from the start (serialization failure or deadlock).
    pub fn is_retryable_transaction(&self) -> bool {
        matches!(self.code(), Some(SERIALIZATION_FAILURE | DEADLOCK_DETECTED))
    }

    /// Whether the error means the connection itself is unusable.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            DbError::Io(_) | DbError::Closed(_) | DbError::Protocol(_)
        )
    }

    pub(crate) fn protocol(e: impl std::fmt::Display) -> DbError {
        DbError::Protocol(e.to_string())
    }

    /// Decode the fields of an ErrorResponse / NoticeResponse. Malformed
    /// fields give a protocol error, never a panic.
    pub(crate) fn from_fields(mut fields: ErrorFields<'_>) -> DbError {
        let parsed = parse_fields(&mut fields);
        match parsed {
            Ok(f) => DbError::Server {
                code: f.code.unwrap_or_else(|| "XX000".to_owned()),
                message: f.message.unwrap_or_default(),
                detail: f.detail,
                constraint: f.constraint,
            },
            Err(e) => DbError::Protocol(format!("malformed error response: {e}")),
        }
    }
}

/// The fields of an ErrorResponse or NoticeResponse that we care about.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    pub severity: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
    pub detail: Option<String>,
    pub hint: Option<String>,
    pub constraint: Option<String>,
}

pub(crate) fn parse_fields(fields: &mut ErrorFields<'_>) -> io::Result<Fields> {
    let mut out = Fields::default();
    while let Some(field) = fields.next()? {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'V' => out.severity = Some(value),
            b'S' if out.severity.is_none() => out.severity = Some(value),
            b'C' => out.code = Some(value),
            b'M' => out.message = Some(value),
            b'D' => out.detail = Some(value),
            b'H' => out.hint = Some(value),
            b'n' => out.constraint = Some(value),
            _ => {}
        }
    }
    Ok(out)
}
