//! Media of other servers (client-server "Content repository": a client
//! asks its own server for `mxc://<remote>/<id>`): fetched once over
//! federation (`federation::media`), stored like an upload (bytes by
//! SHA-256 on the blocking pool, a `media` row with the remote server as
//! `origin`), then served from that cache like local media.

use std::rc::Rc;

use super::files::Files;
use super::meta::{self, Content, MediaRow};
use super::MediaError;
use crate::federation::media::{self as fetch, FetchError};
use crate::primitives::{unix_ms_i64 as now_ms, FutureCache};
use crate::shard_state::ShardState;

impl From<FetchError> for MediaError {
    fn from(e: FetchError) -> MediaError {
        match e {
            FetchError::NotFound => MediaError::NotFound("Not found".into()),
            FetchError::TooLarge => MediaError::RemoteTooLarge,
            FetchError::Timeout => MediaError::RemoteTimeout,
            FetchError::Failed(m) => MediaError::RemoteFailed(m),
        }
    }
}

thread_local! {
    /// Rows of remote media this shard served, and the fetches in flight:
    /// a hundred clients opening one new image share one download.
    static ROWS: FutureCache<(String, String), (MediaRow, String), Rc<MediaError>> =
        FutureCache::new("remote_media", 4096);
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
