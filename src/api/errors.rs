//! The one error edge: every domain error becomes a Matrix error here, and
//! only here (ARCHITECTURE.md, "only the HTTP edge knows errcodes").
//!
//! Client mistakes keep their message: it tells the client what to fix.
//! An internal failure is logged once, here, where it is handled (neon's
//! error-handling rule), and the client sees `M_UNKNOWN` without the
//! internal text: 503 with `Retry-After` when retrying can help (the
//! database or a shard is busy or restarting, [`Retryable`]), 500 otherwise.

use std::fmt::Display;

use crate::auth::AuthError;
use crate::db::DbError;
use crate::ephemeral::EphError;
use crate::error::Retryable;
use crate::filter::FilterError;
use crate::http::MatrixError;
use crate::media::MediaError;
use crate::mesh::MeshError;
use crate::rooms::history::HistoryError;
use crate::rooms::RoomError;
use crate::shard_state::OnShardError;
use crate::sync::SyncError;

/// The answer to a failure that is ours, not the client's. `what` names the
/// operation in the log line.
pub fn internal(what: &str, e: &(impl Display + Retryable + ?Sized)) -> MatrixError {
    if e.retryable() {
        tracing::warn!(error = %e, "{what} failed; the client may retry");
        MatrixError::new(
            503,
            "M_UNKNOWN",
            "Service temporarily unavailable, try again",
        )
        .with_retry_after_secs(1)
    } else {
        tracing::error!(error = %e, "{what} failed");
        MatrixError::unknown("Internal server error")
    }
}

/// Internal text with no retry hint (`Internal(String)` variants).
struct Bug<'a>(&'a str);

impl Display for Bug<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl Retryable for Bug<'_> {
    fn retryable(&self) -> bool {
        false
    }
}

/// Database failures. A full pool is back-pressure, not a fault: 503
/// `M_LIMIT_EXCEEDED` with a short retry hint (Synapse answers an
/// overloaded worker the same way).
impl From<DbError> for MatrixError {
    fn from(e: DbError) -> Self {
        db_error("database operation", &e)
    }
}

/// A database error as the client sees it. Busy is back-pressure; a
/// database that is down is 503 at once, and logged where the pool saw it
/// go down (once), not per request.
fn db_error(what: &str, e: &DbError) -> MatrixError {
    match e {
        DbError::Busy => MatrixError::limit_exceeded(Some(100)).with_status(503),
        DbError::Unavailable => {
            MatrixError::new(503, "M_UNKNOWN", "The database is unavailable; retry later")
        }
        other => internal(what, other),
    }
}

/// A shard's cap on expensive requests (`admission`): back-pressure, as a
/// full pool is — 503 `M_LIMIT_EXCEEDED` with a retry hint; clients (e.g.
/// matrix-js-sdk's sync loop) retry after it.
impl From<crate::admission::Overloaded> for MatrixError {
    fn from(e: crate::admission::Overloaded) -> Self {
        tracing::info!(error = %e, "expensive request refused; the client may retry");
        MatrixError::limit_exceeded(Some(1000)).with_status(503)
    }
}

impl From<MeshError> for MatrixError {
    fn from(e: MeshError) -> Self {
        internal("cross-shard call", &e)
    }
}

impl From<OnShardError> for MatrixError {
    fn from(e: OnShardError) -> Self {
        internal("cross-shard call", &e)
    }
}

impl From<FilterError> for MatrixError {
    fn from(e: FilterError) -> Self {
        match e {
            FilterError::NotJson(_) => MatrixError::not_json(e.to_string()),
            FilterError::BadJson(_) => MatrixError::bad_json(e.to_string()),
        }
    }
}

/// Account and authentication errors (statuses and codes as the spec and
/// Synapse give them).
impl From<AuthError> for MatrixError {
    fn from(e: AuthError) -> Self {
        use AuthError as A;
        let msg = e.to_string();
        match e {
            A::MissingToken => MatrixError::missing_token(msg),
            A::UnknownToken => MatrixError::unknown_token(false).with_field("soft_logout", false),
            A::InvalidUsername(_) => MatrixError::invalid_username(msg),
            A::UserInUse => MatrixError::user_in_use(msg),
            A::BadCredentials | A::Forbidden(_) => MatrixError::forbidden(msg),
            A::Deactivated => MatrixError::user_deactivated(msg),
            A::NotFound(_) => MatrixError::not_found(msg),
            A::BadRequest(_) => MatrixError::bad_request(msg),
            A::Busy => MatrixError::limit_exceeded(Some(1000)),
            A::Db(e) => db_error("account operation", &e),
            A::Internal(m) => internal("account operation", &Bug(&m)),
        }
    }
}

impl From<RoomError> for MatrixError {
    fn from(e: RoomError) -> MatrixError {
        match e {
            RoomError::NotFound(m) => MatrixError::not_found(m),
            RoomError::Forbidden(m) => MatrixError::forbidden(m),
            RoomError::TooLarge(m) => MatrixError::too_large(m),
            RoomError::BadJson(m) => MatrixError::bad_json(m),
            RoomError::UnsupportedVersion(v) => {
                MatrixError::unsupported_room_version(v.to_string())
            }
            RoomError::Db(e) => e.into(),
            RoomError::Mesh(e) => e.into(),
            RoomError::Internal(m) => internal("room operation", &Bug(&m)),
            RoomError::InvalidParam(m) => MatrixError::invalid_param(m),
            RoomError::BadRequest(m) => MatrixError::bad_request(m),
            RoomError::RoomInUse(m) => MatrixError::room_in_use(m),
            RoomError::AliasTaken(m) => MatrixError::new(409, "M_UNKNOWN", m),
            RoomError::BadAlias(m) => MatrixError::new(400, "M_BAD_ALIAS", m),
        }
    }
}

impl From<HistoryError> for MatrixError {
    fn from(e: HistoryError) -> MatrixError {
        match e {
            HistoryError::BadRequest(m) => MatrixError::bad_request(m),
            HistoryError::Room(e) => e.into(),
        }
    }
}

impl From<EphError> for MatrixError {
    fn from(e: EphError) -> MatrixError {
        match e {
            EphError::NotFound(m) => MatrixError::not_found(m),
            EphError::Forbidden(m) => MatrixError::forbidden(m),
            EphError::InvalidParam(m) => MatrixError::invalid_param(m),
            EphError::BadJson(m) => MatrixError::bad_json(m),
            // 405: account data the server manages (spec "Client Config",
            // Server Behaviour), with `M_BAD_JSON` as the spec's example
            // and Synapse give.
            EphError::NotAllowed(m) => MatrixError::bad_json(m).with_status(405),
            EphError::Room(e) => e.into(),
            EphError::Db(e) => e.into(),
            EphError::Mesh(e) => e.into(),
            EphError::Internal(m) => internal("ephemeral operation", &Bug(&m)),
        }
    }
}

impl From<SyncError> for MatrixError {
    fn from(e: SyncError) -> MatrixError {
        match e {
            SyncError::Db(e) => e.into(),
            SyncError::Filter(e) => e.into(),
            SyncError::UnknownFilter(m) => MatrixError::invalid_param(m),
            SyncError::Room(e) => e.into(),
            SyncError::Ephemeral(e) => e.into(),
            SyncError::Internal(m) => internal("sync", &Bug(&m)),
            SyncError::Overloaded(e) => e.into(),
        }
    }
}

/// The content repository (statuses and codes as the spec's
/// `content-repo` API gives them).
impl From<MediaError> for MatrixError {
    fn from(e: MediaError) -> MatrixError {
        let msg = e.to_string();
        match e {
            MediaError::NotFound(m) => MatrixError::not_found(m),
            MediaError::NotYetUploaded => MatrixError::new(
                504,
                "M_NOT_YET_UPLOADED",
                "Content has not yet been uploaded",
            ),
            MediaError::CannotOverwrite => {
                MatrixError::new(409, "M_CANNOT_OVERWRITE_MEDIA", "Media already uploaded")
            }
            MediaError::Forbidden(m) => MatrixError::forbidden(m),
            MediaError::TooLarge(m) => MatrixError::too_large(m),
            MediaError::InvalidParam(m) => MatrixError::invalid_param(m),
            // The spec's example answer for content that is no image.
            MediaError::CannotThumbnail(m) => MatrixError::new(400, "M_UNKNOWN", m),
            MediaError::TooManyPending => MatrixError::new(429, "M_LIMIT_EXCEEDED", msg),
            MediaError::Busy => MatrixError::limit_exceeded(Some(1000)),
            MediaError::Db(e) => e.into(),
            MediaError::Io(m) => internal("media storage", &Bug(&m)),
            // Spec "Content repository", download: 502 `M_TOO_LARGE`;
            // an unreachable server is 502 as in Synapse ("Failed to
            // fetch remote media"), a timeout 504.
            MediaError::RemoteTooLarge => MatrixError::new(502, "M_TOO_LARGE", msg),
            MediaError::RemoteTimeout => MatrixError::new(504, "M_UNKNOWN", msg),
            MediaError::RemoteFailed(m) => {
                tracing::info!(error = %m, "remote media fetch failed");
                MatrixError::new(502, "M_UNKNOWN", "Failed to fetch remote media")
            }
        }
    }
}

/// A rate limit (client-server API "Rate limiting"): 429
/// `M_LIMIT_EXCEEDED` with `retry_after_ms` and `Retry-After`.
impl From<crate::ratelimit::Limited> for MatrixError {
    fn from(e: crate::ratelimit::Limited) -> Self {
        MatrixError::limit_exceeded(Some(e.retry_after_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: impl Into<MatrixError>) -> (u16, &'static str) {
        let e = e.into();
        (e.status, e.errcode)
    }

    #[test]
    fn auth_errors_map_to_matrix_codes() {
        use AuthError as A;
        assert_eq!(code(A::MissingToken), (401, "M_MISSING_TOKEN"));
        assert_eq!(code(A::UnknownToken), (401, "M_UNKNOWN_TOKEN"));
        assert_eq!(code(A::UserInUse), (400, "M_USER_IN_USE"));
        assert_eq!(
            code(A::InvalidUsername("x".into())),
            (400, "M_INVALID_USERNAME")
        );
        assert_eq!(code(A::BadCredentials), (403, "M_FORBIDDEN"));
        assert_eq!(code(A::Deactivated), (403, "M_USER_DEACTIVATED"));
        assert_eq!(code(A::Busy), (429, "M_LIMIT_EXCEEDED"));
        let v: serde_json::Value =
            serde_json::from_slice(&MatrixError::from(A::UnknownToken).to_json_bytes()).unwrap();
        assert_eq!(v["soft_logout"], false);
    }

    #[test]
    fn internal_text_never_reaches_the_client() {
        let secret = || "secret detail".to_owned();
        let answers = [
            MatrixError::from(AuthError::Internal(secret())),
            MatrixError::from(RoomError::Internal(secret())),
            MatrixError::from(EphError::Internal(secret())),
            MatrixError::from(SyncError::Internal(secret())),
            MatrixError::from(DbError::Protocol(secret())),
            MatrixError::from(MediaError::Io(secret())),
            MatrixError::from(SyncError::Room(RoomError::Db(DbError::Type(secret())))),
        ];
        for e in answers {
            assert_eq!((e.status, e.errcode), (500, "M_UNKNOWN"));
            assert!(!e.error.contains("secret"), "{e:?}");
        }
    }

    #[test]
    fn transient_failures_are_503_with_retry_after() {
        let e = MatrixError::from(RoomError::Db(DbError::Closed("secret".into())));
        assert_eq!((e.status, e.errcode), (503, "M_UNKNOWN"));
        assert!(!e.error.contains("secret"));
        assert_eq!(e.into_response().header("Retry-After"), Some("1"));
        let e = MatrixError::from(EphError::Mesh(MeshError::Closed { shard: 1 }));
        assert_eq!(e.status, 503);
    }

    #[test]
    fn busy_pool_is_503_limit_exceeded_with_retry() {
        let e = MatrixError::from(DbError::Busy);
        assert_eq!((e.status, e.errcode), (503, "M_LIMIT_EXCEEDED"));
        assert_eq!(e.into_response().header("Retry-After"), Some("1"));
    }

    #[test]
    fn client_mistakes_keep_their_message() {
        let e = MatrixError::from(SyncError::UnknownFilter("No such filter".into()));
        assert_eq!((e.status, e.errcode), (400, "M_INVALID_PARAM"));
        assert_eq!(e.error, "No such filter");
        assert_eq!(
            code(SyncError::Filter(FilterError::NotJson("x".into()))),
            (400, "M_NOT_JSON")
        );
        assert_eq!(
            code(HistoryError::BadRequest("x".into())),
            (400, "M_UNKNOWN")
        );
    }
}
