//! What a domain error says about itself beyond its kind (the variant) and
//! its source (`std::error::Error::source`): whether trying again can help.
//!
//! Domain modules return their own typed errors and never a Matrix errcode;
//! the HTTP edge (`api/errors.rs`) turns them into `{errcode, error}` in one
//! place. This trait is what the edge asks of an internal failure to choose
//! between 500 (a bug or bad data: retrying gives the same answer) and 503
//! with `Retry-After` (the database or a shard is busy or restarting).

/// Whether the same request may succeed if the client retries it later.
pub trait Retryable {
    fn retryable(&self) -> bool;
}

impl Retryable for crate::db::DbError {
    fn retryable(&self) -> bool {
        use crate::db::DbError as D;
        match self {
            D::Busy | D::Unavailable | D::Timeout | D::Io(_) | D::Closed(_) => true,
            _ => self.is_retryable_transaction(),
        }
    }
}

impl Retryable for crate::mesh::MeshError {
    /// A closed shard is a server shutting down or restarting.
    fn retryable(&self) -> bool {
        matches!(self, crate::mesh::MeshError::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::DbError;

    #[test]
    fn transient_database_failures_are_retryable_and_bugs_are_not() {
        assert!(DbError::Busy.retryable());
        assert!(DbError::Timeout.retryable());
        assert!(DbError::Closed("gone".into()).retryable());
        assert!(!DbError::Protocol("bad".into()).retryable());
        assert!(!DbError::Type("x".into()).retryable());
        assert!(crate::mesh::MeshError::Closed { shard: 1 }.retryable());
    }
}
