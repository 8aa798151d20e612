//! Media of other servers (client-server "Content repository": a client
//! asks its own server for `mxc://<remote>/<id>`): fetched once over
//! federation (`federation::media`), stored like an upload (bytes by
//! SHA-256 on the blocking pool, a `media` row with the remote server as
//! `origin`), then served from that cache like local media.
//!
//! A thumbnail of remote media whose original is not cached is asked of
//! its origin (`/federation/v1/media/thumbnail`) and cached by media id
//! and request: a thumbnail of a 20 MB photo costs the thumbnail, not the
//! photo. An origin without that endpoint, or one that cannot make it,
//! gets the original fetched and thumbnailed here instead (Synapse's way).

use std::rc::Rc;

use bytes::Bytes;

use super::files::Files;
use super::meta::{self, Content, MediaRow, RemoteThumbKey};
use super::thumbnail::Spec;
use super::MediaError;
use crate::federation::media::{self as fetch, FetchError, ThumbQuery};
use crate::primitives::{unix_ms_i64 as now_ms, FutureCache};
use crate::shard_state::ShardState;

impl From<FetchError> for MediaError {
    fn from(e: FetchError) -> MediaError {
        match e {
            FetchError::NotFound | FetchError::Unsupported => {
                MediaError::NotFound("Not found".into())
            }
            FetchError::TooLarge => MediaError::RemoteTooLarge,
            FetchError::Timeout => MediaError::RemoteTimeout,
            FetchError::Failed(m) => MediaError::RemoteFailed(m),
        }
    }
}

/// A remote thumbnail's cache key: origin, media id and the request.
type ThumbOf = (String, String, Spec);

thread_local! {
    /// Rows of remote media this shard served, and the fetches in flight:
    /// a hundred clients opening one new image share one download.
    static ROWS: FutureCache<(String, String), (MediaRow, String), Rc<MediaError>> =
        FutureCache::new("remote_media", 4096);
    /// Remote thumbnails this shard fetched (content type, content hash),
    /// `None` where the origin made none; and the fetches in flight.
    static THUMBS: FutureCache<ThumbOf, Option<(String, String)>, Rc<MediaError>> =
        FutureCache::new("remote_thumbnails", 4096);
}

/// A thumbnail the origin made of `media_id` (bytes, content type), from
/// the cache or fetched once; `None` when it made none and the caller
/// should thumbnail the original itself.
pub async fn thumbnail(
    state: &ShardState,
    server: &str,
    media_id: &str,
    spec: Spec,
) -> Result<Option<(Bytes, String)>, MediaError> {
    let got = match crate::shard_state::current_shard() {
        None => load_thumb(state, server, media_id, spec).await?,
        Some(shard) => {
            let cache = THUMBS.with(|c| c.clone());
            let (s, m) = (server.to_owned(), media_id.to_owned());
            cache
                .get_or_load((s.clone(), m.clone(), spec), move || async move {
                    load_thumb(&shard, &s, &m, spec).await.map_err(Rc::new)
                })
                .await
                .map_err(|e| unshare(&e))?
        }
    };
    let Some((content_type, sha)) = got else {
        return Ok(None);
    };
    let bytes = Files::new(&state.config.data_dir).get(sha).await?;
    Ok(Some((bytes, content_type)))
}

async fn load_thumb(
    state: &ShardState,
    server: &str,
    media_id: &str,
    spec: Spec,
) -> Result<Option<(String, String)>, MediaError> {
    let key = RemoteThumbKey {
        origin: server,
        media_id,
        width: i32::try_from(spec.width).unwrap_or(i32::MAX),
        height: i32::try_from(spec.height).unwrap_or(i32::MAX),
        method: spec.method.as_str(),
        animated: spec.animated,
    };
    if let Some(hit) = meta::get_remote_thumbnail(&state.db, &key).await? {
        return Ok(Some(hit));
    }
    let max = usize::try_from(state.config.media.max_upload_size).unwrap_or(usize::MAX);
    let q = ThumbQuery {
        width: spec.width,
        height: spec.height,
        method: spec.method.as_str(),
        animated: spec.animated,
    };
    let got = match fetch::thumbnail(&state.federation, server, media_id, q, max).await {
        Ok(got) => got,
        // Unknown media: the original is unknown too.
        Err(FetchError::NotFound) => return Err(MediaError::NotFound("Not found".into())),
        // A slow origin would be as slow for the original.
        Err(FetchError::Timeout) => return Err(MediaError::RemoteTimeout),
        // No endpoint, cannot thumbnail, too large, or an answer we cannot
        // read: try the original.
        Err(FetchError::Unsupported | FetchError::TooLarge | FetchError::Failed(_)) => {
            return Ok(None)
        }
    };
    let content_type = super::disposition::sanitize_content_type(got.content_type.as_deref());
    let Some(content_type) = content_type.filter(|t| t.starts_with("image/")) else {
        return Ok(None);
    };
    let size = got.bytes.len() as i64;
    let sha = Files::new(&state.config.data_dir).put(got.bytes).await?;
    meta::put_remote_thumbnail(&state.db, &key, &content_type, &sha, size, now_ms()).await?;
    Ok(Some((content_type, sha)))
}

/// The cached row of `server`'s `media_id` with its content hash,
/// fetching it first if it is not cached (once per shard at a time; the
/// fetch runs as its own task, so it completes even if the client goes).
pub async fn row(
    state: &ShardState,
    server: &str,
    media_id: &str,
) -> Result<(MediaRow, String), MediaError> {
    let Some(shard) = crate::shard_state::current_shard() else {
        return load(state, server, media_id).await;
    };
    let rows = ROWS.with(|r| r.clone());
    let (s, m) = (server.to_owned(), media_id.to_owned());
    rows.get_or_load((s.clone(), m.clone()), move || async move {
        load(&shard, &s, &m).await.map_err(Rc::new)
    })
    .await
    .map_err(|e| unshare(&e))
}

/// A shared failure as each waiter's own error (the kinds the edge maps;
/// anything else is internal).
fn unshare(e: &MediaError) -> MediaError {
    match e {
        MediaError::NotFound(m) => MediaError::NotFound(m.clone()),
        MediaError::RemoteTooLarge => MediaError::RemoteTooLarge,
        MediaError::RemoteTimeout => MediaError::RemoteTimeout,
        MediaError::RemoteFailed(m) => MediaError::RemoteFailed(m.clone()),
        MediaError::Busy => MediaError::Busy,
        other => MediaError::Io(other.to_string()),
    }
}

async fn load(
    state: &ShardState,
    server: &str,
    media_id: &str,
) -> Result<(MediaRow, String), MediaError> {
    if let Some(r) = meta::get(&state.db, server, media_id).await? {
        if let Some(sha) = r.sha256.clone() {
            return Ok((r, sha));
        }
    }
    let max = usize::try_from(state.config.media.max_upload_size).unwrap_or(usize::MAX);
    let got = fetch::download(&state.federation, server, media_id, max).await?;
    let size = got.bytes.len() as i64;
    let sha256 = Files::new(&state.config.data_dir).put(got.bytes).await?;
    let content = Content {
        sha256,
        size,
        content_type: super::disposition::sanitize_content_type(got.content_type.as_deref()),
        upload_name: got.filename,
    };
    // Two shards may fetch the same media at once: the first row stays.
    meta::insert_remote(
        &state.db,
        server,
        media_id,
        now_ms(),
        &content,
        !state.config.media.legacy_unauthenticated,
    )
    .await?;
    let r = meta::get(&state.db, server, media_id)
        .await?
        .ok_or_else(|| MediaError::Io("cached remote media vanished".into()))?;
    let sha = r
        .sha256
        .clone()
        .ok_or_else(|| MediaError::Io("cached remote media has no content".into()))?;
    Ok((r, sha))
}
