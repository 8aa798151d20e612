//! Fetching another server's media (server-server "Content Repository"):
//! `GET /_matrix/federation/v1/media/download/{mediaId}`, signed, whose
//! `multipart/mixed` answer carries the content or a `Location` to fetch
//! it from (followed once, unsigned, under the same IP policy and size
//! limit). `GET /_matrix/federation/v1/media/thumbnail/{mediaId}` answers
//! the same way with a thumbnail the origin made. The caller
//! (`media::remote`) caches what comes back.

use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use super::client::{FedError, Target};
use super::{x_matrix, Federation};
use crate::http::names_unrecognized as unrecognized;
use crate::media::multipart::{self, Part};

/// What a remote server gave for a media id.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bytes: Bytes,
    pub content_type: Option<String>,
    /// The file name of its `Content-Disposition`, if any.
    pub filename: Option<String>,
}

/// Why a remote fetch failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The server answered 404: it has no such media.
    #[error("remote media not found")]
    NotFound,
    /// The server does not know the endpoint (404 `M_UNRECOGNIZED`): one
    /// from before the authenticated federation media endpoints.
    #[error("the remote server does not serve this endpoint")]
    Unsupported,
    #[error("remote media is larger than the limit")]
    TooLarge,
    #[error("timed out fetching remote media")]
    Timeout,
    /// Unreachable, an error status, or an answer we cannot read.
    #[error("failed to fetch remote media: {0}")]
    Failed(String),
}

impl From<FedError> for FetchError {
    fn from(e: FedError) -> FetchError {
        match e {
            FedError::TooLarge => FetchError::TooLarge,
            FedError::Timeout => FetchError::Timeout,
            FedError::Status { status: 404, body } if unrecognized(&body) => {
                FetchError::Unsupported
            }
            FedError::Status { status: 404, .. } => FetchError::NotFound,
            other => FetchError::Failed(other.to_string()),
        }
    }
}

/// Room for the JSON part and headers around the content.
const OVERHEAD: usize = 64 * 1024;

/// Fetches `media_id` of `server`, at most `max` bytes of content.
pub async fn download(
    fed: &Federation,
    server: &str,
    media_id: &str,
    max: usize,
) -> Result<Fetched, FetchError> {
    let path = format!(
        "/_matrix/federation/v1/media/download/{}?timeout_ms=20000",
        utf8_percent_encode(media_id, NON_ALPHANUMERIC)
    );
    fetch(fed, server, &path, max).await
}

/// What a thumbnail request asks for (the client's own query, passed on).
#[derive(Debug, Clone, Copy)]
pub struct ThumbQuery<'a> {
    pub width: u32,
    pub height: u32,
    pub method: &'a str,
    pub animated: bool,
}

/// Fetches a thumbnail of `media_id` made by `server` (server-server
/// "`GET /_matrix/federation/v1/media/thumbnail/{mediaId}`"), at most
/// `max` bytes.
pub async fn thumbnail(
    fed: &Federation,
    server: &str,
    media_id: &str,
    q: ThumbQuery<'_>,
    max: usize,
) -> Result<Fetched, FetchError> {
    let path = format!(
        "/_matrix/federation/v1/media/thumbnail/{}?width={}&height={}&method={}&animated={}\
         &timeout_ms=20000",
        utf8_percent_encode(media_id, NON_ALPHANUMERIC),
        q.width,
        q.height,
        utf8_percent_encode(q.method, NON_ALPHANUMERIC),
        q.animated,
    );
    fetch(fed, server, &path, max).await
}

/// One signed GET of a federation media endpoint and its multipart answer.
async fn fetch(
    fed: &Federation,
    server: &str,
    path: &str,
    max: usize,
) -> Result<Fetched, FetchError> {
    let path = path.to_owned();
    let auth = x_matrix::sign_request(&fed.key, server, "GET", &path, None)
        .map_err(|e| FetchError::Failed(e.to_string()))?;
    let limit = max.saturating_add(OVERHEAD);
    let resp = fed
        .send_raw(
            server,
            "GET",
            &path,
            &[("Authorization", &auth)],
            None,
            limit,
        )
        .await?;
    if resp.status == 404 {
        return Err(if unrecognized(&resp.body) {
            FetchError::Unsupported
        } else {
            FetchError::NotFound
        });
    }
    if resp.status != 200 {
        return Err(FetchError::Failed(format!(
            "{server} answered {}",
            resp.status
        )));
    }
    let boundary = resp
        .header("content-type")
        .and_then(multipart::boundary)
        .ok_or_else(|| FetchError::Failed("the answer is not multipart/mixed".into()))?;
    let part =
        multipart::parse(&resp.body, &boundary).map_err(|e| FetchError::Failed(e.to_string()))?;
    let fetched = match part {
        Part::Content {
            bytes,
            content_type,
            disposition,
        } => Fetched {
            bytes,
            content_type,
            filename: disposition.as_deref().and_then(filename_of),
        },
        Part::Location(url) => follow(fed, &url, limit).await?,
    };
    if fetched.bytes.len() > max {
        return Err(FetchError::TooLarge);
    }
    Ok(fetched)
}

/// The one redirect: a plain HTTPS GET of `url` (no signature: it is not
/// a Matrix server), through the same client, so the IP policy and the
/// size limit hold there too.
async fn follow(fed: &Federation, url: &str, limit: usize) -> Result<Fetched, FetchError> {
    let (host, port, path) =
        split_https(url).ok_or_else(|| FetchError::Failed(format!("unusable Location {url}")))?;
    let target = Target {
        endpoints: vec![(host.clone(), port)],
        host_header: if port == 443 {
            host.clone()
        } else {
            format!("{host}:{port}")
        },
        tls_name: host.clone(),
    };
    let pool_key = format!("https://{host}:{port}");
    let resp = fed
        .http
        .send(&pool_key, &target, "GET", &path, &[], None, limit)
        .await?;
    if resp.status == 404 {
        return Err(FetchError::NotFound);
    }
    if resp.status != 200 {
        return Err(FetchError::Failed(format!(
            "{url} answered {}",
            resp.status
        )));
    }
    Ok(Fetched {
        content_type: resp.header("content-type").map(str::to_owned),
        filename: resp.header("content-disposition").and_then(filename_of),
        bytes: resp.body,
    })
}

/// `https://host[:port]/path` → (host, port, path). Other schemes are
/// refused (we fetch over TLS only).
fn split_https(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("https://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, rest) = v6.split_once(']')?;
        match rest.strip_prefix(':') {
            Some(p) => (h, p.parse::<u16>().ok()?),
            None if rest.is_empty() => (h, 443),
            None => return None,
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().ok()?),
            None => (authority, 443),
        }
    };
    if host.is_empty() || path.chars().any(|c| c.is_control() || c == ' ') {
        return None;
    }
    Some((host.to_owned(), port, path))
}

/// `filename` of a `Content-Disposition` value (plain or quoted; the
/// RFC 5987 `filename*=utf-8''…` form percent-decoded).
fn filename_of(disposition: &str) -> Option<String> {
    let mut plain = None;
    for p in disposition.split(';').skip(1) {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        let k = k.trim().to_ascii_lowercase();
        let v = v.trim();
        if k == "filename*" {
            let enc = v.split_once("''").map(|(_, e)| e)?;
            let dec = percent_encoding::percent_decode_str(enc)
                .decode_utf8()
                .ok()?
                .into_owned();
            return Some(dec).filter(|n| valid_name(n));
        }
        if k == "filename" {
            plain = Some(v.trim_matches('"').to_owned());
        }
    }
    plain.filter(|n| valid_name(n))
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 255 && !n.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_urls() {
        assert_eq!(
            split_https("https://cdn.example/a/b?x=1"),
            Some(("cdn.example".into(), 443, "/a/b?x=1".into()))
        );
        assert_eq!(
            split_https("https://127.0.0.1:8448"),
            Some(("127.0.0.1".into(), 8448, "/".into()))
        );
        assert_eq!(
            split_https("https://[::1]:9/x"),
            Some(("::1".into(), 9, "/x".into()))
        );
        assert_eq!(split_https("http://cdn.example/a"), None);
        assert_eq!(split_https("https://u@cdn.example/a"), None);
        assert_eq!(split_https("https://h:port/a"), None);
    }

    #[test]
    fn filenames() {
        assert_eq!(
            filename_of("inline; filename=\"cat.png\"").as_deref(),
            Some("cat.png")
        );
        assert_eq!(
            filename_of("attachment; filename*=utf-8''caf%C3%A9.txt").as_deref(),
            Some("café.txt")
        );
        assert_eq!(filename_of("inline"), None);
    }
}
