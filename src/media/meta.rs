//! Media metadata in PostgreSQL (`media`, `media_thumbnails`, migration
//! 0013). Rows are keyed by media id, not by user, so any shard may write
//! them: the primary key and conditional updates settle races.

use crate::db::{DbError, Pool, Row};

/// One `mxc://` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRow {
    pub user_id: String,
    pub content_type: Option<String>,
    pub upload_name: Option<String>,
    /// `None`: reserved by `create`, not filled yet.
    pub sha256: Option<String>,
    pub size: Option<i64>,
    pub unused_expires_ts: Option<i64>,
    pub authenticated: bool,
}

/// Content for a media id.
#[derive(Debug, Clone)]
pub struct Content {
    pub sha256: String,
    pub size: i64,
    pub content_type: Option<String>,
    pub upload_name: Option<String>,
}

const COLUMNS: &str =
    "user_id, content_type, upload_name, sha256, size, unused_expires_ts, authenticated";

fn media_row(r: &Row) -> Result<MediaRow, DbError> {
    Ok(MediaRow {
        user_id: r.get(0)?,
        content_type: r.get(1)?,
        upload_name: r.get(2)?,
        sha256: r.get(3)?,
        size: r.get(4)?,
        unused_expires_ts: r.get(5)?,
        authenticated: r.get(6)?,
    })
}

pub async fn get(pool: &Pool, origin: &str, media_id: &str) -> Result<Option<MediaRow>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM media WHERE origin = $1 AND media_id = $2");
    pool.query_opt(&sql, &[&origin, &media_id])
        .await?
        .map(|r| media_row(&r))
        .transpose()
}

/// Records media of another server fetched over federation (`origin` is
/// that server; no local user uploaded it). A row already there wins.
pub async fn insert_remote(
    pool: &Pool,
    origin: &str,
    media_id: &str,
    now: i64,
    content: &Content,
    authenticated: bool,
) -> Result<(), DbError> {
    pool.execute(
        "INSERT INTO media (origin, media_id, user_id, created_ts, content_type, upload_name, \
         sha256, size, uploaded_ts, authenticated) \
         VALUES ($1, $2, '', $3, $4, $5, $6, $7, $3, $8) ON CONFLICT (origin, media_id) DO NOTHING",
        &[
            &origin,
            &media_id,
            &now,
            &content.content_type,
            &content.upload_name,
            &content.sha256,
            &content.size,
            &authenticated,
        ],
    )
    .await?;
    Ok(())
}

/// Records an upload made in one step (`POST /upload`).
pub async fn insert_uploaded(
    pool: &Pool,
    origin: &str,
    media_id: &str,
    user_id: &str,
    now: i64,
    content: &Content,
    authenticated: bool,
) -> Result<(), DbError> {
    pool.execute(
        "INSERT INTO media (origin, media_id, user_id, created_ts, content_type, upload_name, \
         sha256, size, uploaded_ts, authenticated) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $4, $9)",
        &[
            &origin,
            &media_id,
            &user_id,
            &now,
            &content.content_type,
            &content.upload_name,
            &content.sha256,
            &content.size,
            &authenticated,
        ],
    )
    .await?;
    Ok(())
}

/// Reservations of `user_id` still waiting for content at `now`.
pub async fn pending_count(pool: &Pool, user_id: &str, now: i64) -> Result<i64, DbError> {
    pool.query_one(
        "SELECT count(*) FROM media WHERE user_id = $1 AND sha256 IS NULL \
         AND unused_expires_ts > $2",
        &[&user_id, &now],
    )
    .await?
    .get(0)
}

/// Reserves a media id (`POST /create`).
pub async fn insert_pending(
    pool: &Pool,
    origin: &str,
    media_id: &str,
    user_id: &str,
    now: i64,
    expires: i64,
    authenticated: bool,
) -> Result<(), DbError> {
    pool.execute(
        "INSERT INTO media (origin, media_id, user_id, created_ts, unused_expires_ts, authenticated) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&origin, &media_id, &user_id, &now, &expires, &authenticated],
    )
    .await?;
    Ok(())
}

/// What filling a reservation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    Filled,
    /// No such id, or it expired.
    NotFound,
    /// Reserved by someone else.
    NotYours,
    AlreadyFilled,
}

/// Fills reservation `media_id` with `content` if it is `user_id`'s, still
/// open and not expired. One conditional UPDATE, so of two racing fills
/// exactly one wins.
pub async fn fill(
    pool: &Pool,
    origin: &str,
    media_id: &str,
    user_id: &str,
    now: i64,
    content: &Content,
) -> Result<Fill, DbError> {
    let n = pool
        .execute(
            "UPDATE media SET sha256 = $4, size = $5, content_type = $6, upload_name = $7, \
             uploaded_ts = $8 \
             WHERE origin = $1 AND media_id = $2 AND user_id = $3 AND sha256 IS NULL \
             AND unused_expires_ts > $8",
            &[
                &origin,
                &media_id,
                &user_id,
                &content.sha256,
                &content.size,
                &content.content_type,
                &content.upload_name,
                &now,
            ],
        )
        .await?;
    if n == 1 {
        return Ok(Fill::Filled);
    }
    Ok(match get(pool, origin, media_id).await? {
        None => Fill::NotFound,
        Some(r) if r.sha256.is_some() => Fill::AlreadyFilled,
        Some(r) if r.user_id != user_id => Fill::NotYours,
        Some(_) => Fill::NotFound, // expired
    })
}

/// A cached thumbnail's key: source content and the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThumbKey<'a> {
    pub sha256: &'a str,
    pub width: i32,
    pub height: i32,
    pub method: &'a str,
    pub animated: bool,
}

/// A cached thumbnail: its content type and content hash.
pub async fn get_thumbnail(
    pool: &Pool,
    k: &ThumbKey<'_>,
) -> Result<Option<(String, String)>, DbError> {
    let row = pool
        .query_opt(
            "SELECT content_type, thumb_sha256 FROM media_thumbnails WHERE sha256 = $1 \
             AND width = $2 AND height = $3 AND method = $4 AND animated = $5",
            &[&k.sha256, &k.width, &k.height, &k.method, &k.animated],
        )
        .await?;
    row.map(|r| Ok((r.get(0)?, r.get(1)?))).transpose()
}

pub async fn put_thumbnail(
    pool: &Pool,
    k: &ThumbKey<'_>,
    content_type: &str,
    thumb_sha256: &str,
    size: i64,
) -> Result<(), DbError> {
    pool.execute(
        "INSERT INTO media_thumbnails (sha256, width, height, method, animated, content_type, \
         thumb_sha256, size) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        &[
            &k.sha256,
            &k.width,
            &k.height,
            &k.method,
            &k.animated,
            &content_type,
            &thumb_sha256,
            &size,
        ],
    )
    .await?;
    Ok(())
}

/// A remote server's thumbnail's key: its media id and the request (the
/// source content is not here, only the thumbnail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteThumbKey<'a> {
    pub origin: &'a str,
    pub media_id: &'a str,
    pub width: i32,
    pub height: i32,
    pub method: &'a str,
    pub animated: bool,
}

/// A cached thumbnail another server made: content type and content hash.
pub async fn get_remote_thumbnail(
    pool: &Pool,
    k: &RemoteThumbKey<'_>,
) -> Result<Option<(String, String)>, DbError> {
    let row = pool
        .query_opt(
            "SELECT content_type, thumb_sha256 FROM remote_media_thumbnails WHERE origin = $1 \
             AND media_id = $2 AND width = $3 AND height = $4 AND method = $5 AND animated = $6",
            &[
                &k.origin,
                &k.media_id,
                &k.width,
                &k.height,
                &k.method,
                &k.animated,
            ],
        )
        .await?;
    row.map(|r| Ok((r.get(0)?, r.get(1)?))).transpose()
}

pub async fn put_remote_thumbnail(
    pool: &Pool,
    k: &RemoteThumbKey<'_>,
    content_type: &str,
    thumb_sha256: &str,
    size: i64,
    now: i64,
) -> Result<(), DbError> {
    pool.execute(
        "INSERT INTO remote_media_thumbnails (origin, media_id, width, height, method, animated, \
         content_type, thumb_sha256, size, created_ts) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
        &[
            &k.origin,
            &k.media_id,
            &k.width,
            &k.height,
            &k.method,
            &k.animated,
            &content_type,
            &thumb_sha256,
            &size,
            &now,
        ],
    )
    .await?;
    Ok(())
}
