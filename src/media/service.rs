//! The content repository's operations, for the HTTP handlers: upload in
//! one step, reserve-then-fill (spec "`POST /_matrix/media/v1/create`"),
//! download and thumbnails, each durable before it answers.
//!
//! Media ids are random, so any shard serves any media: the row's primary
//! key and conditional updates (see [`super::meta`]) settle races, and a
//! download waiting for a reservation to be filled polls the database
//! (the fill may land on any shard; a reservation is rare enough that a
//! cross-shard wake-up is not worth its machinery).

use std::time::Duration;

use bytes::Bytes;

use super::files::{io_error, Files};
use super::meta::{self, Content, Fill, MediaRow, ThumbKey};
use super::thumbnail::{self, Spec, Thumb, ThumbError};
use super::{new_media_id, MediaError};
use crate::primitives::unix_ms_i64 as now_ms;
use crate::shard_state::ShardState;

/// `timeout_ms` is capped here (the spec asks for a maximum).
const MAX_WAIT_MS: u64 = 60_000;
/// How often a waiting download looks for its content.
const POLL: Duration = Duration::from_millis(200);

/// Bytes to serve and what they are.
#[derive(Debug, Clone)]
pub struct Served {
    pub bytes: Bytes,
    pub content_type: String,
    pub upload_name: Option<String>,
}

/// Which endpoint family asks: the legacy unauthenticated one does not
/// serve media uploaded during the freeze.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Authenticated,
    Legacy,
}

/// An upload's metadata as the client gave it.
#[derive(Debug, Clone, Default)]
pub struct Upload {
    pub content_type: Option<String>,
    pub filename: Option<String>,
}

fn files(state: &ShardState) -> Files {
    Files::new(&state.config.data_dir)
}

/// Media uploaded now is kept from the legacy endpoints unless they are
/// switched on (the spec's "freeze").
fn authenticated(state: &ShardState) -> bool {
    !state.config.media.legacy_unauthenticated
}

fn check_size(state: &ShardState, len: usize) -> Result<(), MediaError> {
    let max = state.config.media.max_upload_size;
    if len as u64 > max {
        return Err(MediaError::TooLarge(format!(
            "Upload is larger than the limit of {max} bytes"
        )));
    }
    Ok(())
}

async fn store(state: &ShardState, body: Bytes, up: Upload) -> Result<Content, MediaError> {
    let size = body.len() as i64;
    let sha256 = files(state).put(body).await?;
    Ok(Content {
        sha256,
        size,
        content_type: up.content_type,
        upload_name: up.filename,
    })
}

/// `POST /upload`: stores `body`, returns the new `mxc://` URI.
pub async fn upload(
    state: &ShardState,
    user_id: &str,
    body: Bytes,
    up: Upload,
) -> Result<String, MediaError> {
    check_size(state, body.len())?;
    let content = store(state, body, up).await?;
    let id = new_media_id()?;
    let origin = &state.config.server_name;
    meta::insert_uploaded(
        &state.db,
        origin,
        &id,
        user_id,
        now_ms(),
        &content,
        authenticated(state),
    )
    .await?;
    Ok(format!("mxc://{origin}/{id}"))
}

/// `POST /create`: reserves an `mxc://` URI; returns it and when the
/// reservation lapses.
pub async fn create(state: &ShardState, user_id: &str) -> Result<(String, i64), MediaError> {
    let now = now_ms();
    let cfg = &state.config.media;
    if meta::pending_count(&state.db, user_id, now).await? >= i64::from(cfg.max_pending_uploads) {
        return Err(MediaError::TooManyPending);
    }
    let expires = now.saturating_add(i64::try_from(cfg.unused_expiration_ms).unwrap_or(i64::MAX));
    let id = new_media_id()?;
    let origin = &state.config.server_name;
    meta::insert_pending(
        &state.db,
        origin,
        &id,
        user_id,
        now,
        expires,
        authenticated(state),
    )
    .await?;
    Ok((format!("mxc://{origin}/{id}"), expires))
}

/// The reason a reservation cannot take content, checked before the body
/// is stored (and again, race-free, by the fill itself).
fn refuse(row: Option<&MediaRow>, user_id: &str, now: i64) -> Option<MediaError> {
    match row {
        None => Some(MediaError::NotFound("Unknown media ID".into())),
        Some(r) if r.sha256.is_some() => Some(MediaError::CannotOverwrite),
        Some(r) if r.user_id != user_id => Some(MediaError::Forbidden(
            "This media ID was created by another user".into(),
        )),
        Some(r) if r.unused_expires_ts.is_some_and(|t| t <= now) => {
            Some(MediaError::NotFound("This media ID has expired".into()))
        }
        Some(_) => None,
    }
}

/// `PUT /upload/{serverName}/{mediaId}`: fills a reservation.
pub async fn fill(
    state: &ShardState,
    user_id: &str,
    server_name: &str,
    media_id: &str,
    body: Bytes,
    up: Upload,
) -> Result<(), MediaError> {
    if server_name != state.config.server_name {
        return Err(MediaError::NotFound("Unknown media ID".into()));
    }
    let row = meta::get(&state.db, server_name, media_id).await?;
    if let Some(e) = refuse(row.as_ref(), user_id, now_ms()) {
        return Err(e);
    }
    check_size(state, body.len())?;
    let content = store(state, body, up).await?;
    match meta::fill(
        &state.db,
        server_name,
        media_id,
        user_id,
        now_ms(),
        &content,
    )
    .await?
    {
        Fill::Filled => Ok(()),
        Fill::AlreadyFilled => Err(MediaError::CannotOverwrite),
        Fill::NotYours => Err(MediaError::Forbidden(
            "This media ID was created by another user".into(),
        )),
        Fill::NotFound => Err(MediaError::NotFound("Unknown media ID".into())),
    }
}

/// The row of `media_id` once it has content, waiting up to `timeout_ms`
/// for a reservation to be filled (spec: 504 `M_NOT_YET_UPLOADED` after).
async fn content_row(
    state: &ShardState,
    server_name: &str,
    media_id: &str,
    timeout_ms: Option<u64>,
    access: Access,
) -> Result<(MediaRow, String), MediaError> {
    if server_name != state.config.server_name {
        if access == Access::Legacy && !state.config.media.legacy_unauthenticated {
            // The freeze: the legacy endpoints fetch nothing new, and serve
            // only what was cached before it.
            return match meta::get(&state.db, server_name, media_id).await? {
                Some(r) if !r.authenticated => match r.sha256.clone() {
                    Some(sha) => Ok((r, sha)),
                    None => Err(MediaError::NotFound("Not found".into())),
                },
                _ => Err(MediaError::NotFound("Not found".into())),
            };
        }
        return super::remote::row(state, server_name, media_id).await;
    }
    let wait = Duration::from_millis(timeout_ms.unwrap_or(20_000).min(MAX_WAIT_MS));
    let deadline = std::time::Instant::now() + wait;
    loop {
        let row = meta::get(&state.db, server_name, media_id)
            .await?
            .ok_or_else(|| MediaError::NotFound("Not found".into()))?;
        if access == Access::Legacy
            && row.authenticated
            && !state.config.media.legacy_unauthenticated
        {
            // The freeze (spec "Client behaviour" warning): 404 as allowed.
            return Err(MediaError::NotFound("Not found".into()));
        }
        if let Some(sha) = row.sha256.clone() {
            return Ok((row, sha));
        }
        if row.unused_expires_ts.is_some_and(|t| t <= now_ms()) {
            return Err(MediaError::NotFound("Not found".into()));
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(MediaError::NotYetUploaded);
        }
        monoio::time::sleep(left.min(POLL)).await;
    }
}

/// `GET /download/{serverName}/{mediaId}`.
pub async fn download(
    state: &ShardState,
    server_name: &str,
    media_id: &str,
    timeout_ms: Option<u64>,
    access: Access,
) -> Result<Served, MediaError> {
    let (row, sha) = content_row(state, server_name, media_id, timeout_ms, access).await?;
    let bytes = files(state).get(sha).await?;
    Ok(Served {
        bytes,
        content_type: row
            .content_type
            .unwrap_or_else(|| "application/octet-stream".into()),
        upload_name: row.upload_name,
    })
}

/// `GET /thumbnail/{serverName}/{mediaId}`: made once per (content,
/// request) on the blocking pool, then served from the cache.
pub async fn thumbnail(
    state: &ShardState,
    server_name: &str,
    media_id: &str,
    spec: Spec,
    timeout_ms: Option<u64>,
    access: Access,
) -> Result<Served, MediaError> {
    if let Some(made) = remote_thumbnail(state, server_name, media_id, spec, access).await? {
        return Ok(made);
    }
    let (_, sha) = content_row(state, server_name, media_id, timeout_ms, access).await?;
    let key = ThumbKey {
        sha256: &sha,
        width: i32::try_from(spec.width).unwrap_or(i32::MAX),
        height: i32::try_from(spec.height).unwrap_or(i32::MAX),
        method: spec.method.as_str(),
        animated: spec.animated,
    };
    let files = files(state);
    if let Some((content_type, thumb)) = meta::get_thumbnail(&state.db, &key).await? {
        let bytes = files.get(thumb).await?;
        return Ok(served_thumb(bytes, content_type));
    }
    let max_pixels = state.config.media.max_image_pixels;
    let source = sha.clone();
    let made = crate::blocking::run(move || -> Result<_, MediaError> {
        let src = files
            .get_blocking(&source)
            .map_err(|e| io_error("reading media", e))?;
        match thumbnail::make(&src, spec, max_pixels) {
            Ok(Thumb::Original(ct)) => Ok((ct, source, Bytes::from(src))),
            Ok(Thumb::Image {
                bytes,
                content_type,
            }) => {
                let hash = files
                    .put_blocking(&bytes)
                    .map_err(|e| io_error("storing a thumbnail", e))?;
                Ok((content_type, hash, Bytes::from(bytes)))
            }
            Err(ThumbError::NotAnImage) => Err(MediaError::CannotThumbnail(
                "Cannot generate thumbnails for the requested content".into(),
            )),
            Err(ThumbError::TooLarge) => Err(MediaError::TooLarge(
                "Content is too large to thumbnail".into(),
            )),
        }
    })
    .await??;
    let (content_type, hash, bytes) = made;
    meta::put_thumbnail(&state.db, &key, content_type, &hash, bytes.len() as i64).await?;
    Ok(served_thumb(bytes, content_type.to_owned()))
}

/// A thumbnail of remote media made by its origin, when its original is
/// not cached here (if it is, a thumbnail made here costs no fetch).
/// The legacy endpoints fetch nothing new during the freeze.
async fn remote_thumbnail(
    state: &ShardState,
    server_name: &str,
    media_id: &str,
    spec: Spec,
    access: Access,
) -> Result<Option<Served>, MediaError> {
    if server_name == state.config.server_name
        || (access == Access::Legacy && !state.config.media.legacy_unauthenticated)
    {
        return Ok(None);
    }
    if meta::get(&state.db, server_name, media_id)
        .await?
        .is_some_and(|r| r.sha256.is_some())
    {
        return Ok(None);
    }
    let made = super::remote::thumbnail(state, server_name, media_id, spec).await?;
    Ok(made.map(|(bytes, content_type)| served_thumb(bytes, content_type)))
}

fn served_thumb(bytes: Bytes, content_type: String) -> Served {
    let ext = content_type.strip_prefix("image/").unwrap_or("bin");
    Served {
        upload_name: Some(format!("thumbnail.{ext}")),
        bytes,
        content_type,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: &str, sha: Option<&str>, expires: Option<i64>) -> MediaRow {
        MediaRow {
            user_id: user.into(),
            content_type: None,
            upload_name: None,
            sha256: sha.map(str::to_owned),
            size: None,
            unused_expires_ts: expires,
            authenticated: true,
        }
    }

    #[test]
    fn fill_refusals() {
        assert!(matches!(
            refuse(None, "@a:x", 5),
            Some(MediaError::NotFound(_))
        ));
        assert!(matches!(
            refuse(Some(&row("@a:x", Some("h"), Some(10))), "@a:x", 5),
            Some(MediaError::CannotOverwrite)
        ));
        assert!(matches!(
            refuse(Some(&row("@b:x", None, Some(10))), "@a:x", 5),
            Some(MediaError::Forbidden(_))
        ));
        assert!(matches!(
            refuse(Some(&row("@a:x", None, Some(5))), "@a:x", 5),
            Some(MediaError::NotFound(_))
        ));
        assert!(refuse(Some(&row("@a:x", None, Some(10))), "@a:x", 5).is_none());
    }
}
