//! The content repository (client-server API, "Content repository"): media
//! uploaded by local users, addressed by `mxc://<server>/<media id>`.
//!
//! - [`files`]: the bytes, under `data_dir/media` by SHA-256 (identical
//!   uploads share one file), written durably on the blocking pool.
//! - [`meta`]: which media id names which content, in PostgreSQL.
//! - [`thumbnail`]: the spec's `crop` and `scale`, pure image code that
//!   runs on the blocking pool.
//! - [`disposition`]: the headers that make serving user content safe.
//! - [`service`]: upload, reserve-then-fill, download and thumbnails,
//!   tying the above together for the HTTP handlers.
//!
//! No file IO, hashing or image work runs on a shard: it all goes through
//! [`crate::blocking`].
//! - [`remote`]: other servers' media, fetched over federation and cached.
//! - [`multipart`]: the federation media endpoints' answer format.

pub mod disposition;
pub mod files;
pub mod meta;
pub mod multipart;
pub mod remote;
pub mod service;
pub mod thumbnail;

/// Why a media operation failed; the HTTP edge maps it to a Matrix error.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("{0}")]
    NotFound(String),
    #[error("content has not yet been uploaded")]
    NotYetUploaded,
    #[error("media already uploaded")]
    CannotOverwrite,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    InvalidParam(String),
    /// The content is no image we can thumbnail.
    #[error("{0}")]
    CannotThumbnail(String),
    /// Too many pending `create` reservations.
    #[error("too many pending media uploads")]
    TooManyPending,
    /// The blocking pool is full: shed load.
    #[error("media workers are busy")]
    Busy,
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("media storage failed: {0}")]
    Io(String),
    /// The remote server's media is over our size limit.
    #[error("remote media is too large")]
    RemoteTooLarge,
    #[error("timed out fetching remote media")]
    RemoteTimeout,
    /// The remote server is unreachable or gave an unusable answer.
    #[error("failed to fetch remote media: {0}")]
    RemoteFailed(String),
}

impl From<crate::blocking::BlockingError> for MediaError {
    fn from(e: crate::blocking::BlockingError) -> Self {
        match e {
            crate::blocking::BlockingError::Busy => MediaError::Busy,
            crate::blocking::BlockingError::Failed => MediaError::Io("media job failed".into()),
        }
    }
}

/// Characters of a media id (spec "Matrix Content (`mxc://`) URIs"): only
/// these, so an id can never walk out of a directory or a URL segment.
pub fn valid_media_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A fresh media id: 24 alphanumerics (≈ 143 bits), as Synapse makes them.
pub fn new_media_id() -> Result<String, MediaError> {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    crate::auth::tokens::random_string(ALNUM, 24).map_err(|e| MediaError::Io(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ids() {
        assert!(valid_media_id("AbC_12-x"));
        for bad in ["", "a/b", "..", "a.b", "a%2F", "é", &"a".repeat(256)] {
            assert!(!valid_media_id(bad), "{bad}");
        }
        let id = new_media_id().unwrap();
        assert_eq!(id.len(), 24);
        assert!(valid_media_id(&id));
    }
}
