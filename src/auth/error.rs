//! Typed errors of accounts and authentication; mapped to Matrix errors in
//! `http/error.rs`.

use std::sync::Arc;

use crate::blocking::BlockingError;
use crate::db::DbError;

/// Cloneable (the token cache hands one error to every waiter) and `Send`
/// (results cross the mesh).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("Missing access token")]
    MissingToken,
    #[error("Unrecognised access token")]
    UnknownToken,
    #[error("{0}")]
    InvalidUsername(String),
    #[error("User ID already taken.")]
    UserInUse,
    /// Wrong user or password at login (one message for both, so the
    /// answer does not reveal which accounts exist).
    #[error("Invalid username or password")]
    BadCredentials,
    #[error("This account has been deactivated")]
    Deactivated,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("Too many requests, try again later")]
    Busy,
    #[error("database: {0}")]
    Db(Arc<DbError>),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<DbError> for AuthError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Busy => AuthError::Busy,
            e => AuthError::Db(Arc::new(e)),
        }
    }
}

impl From<BlockingError> for AuthError {
    fn from(e: BlockingError) -> Self {
        match e {
            BlockingError::Busy => AuthError::Busy,
            BlockingError::Failed => AuthError::Internal("password hashing failed".into()),
        }
    }
}
