//! The content repository's endpoints (client-server API, "Content
//! repository"): thin handlers over [`crate::media::service`].
//!
//! - Authenticated (v1.11): `/_matrix/client/v1/media/{config,download,thumbnail}`.
//! - Upload stays under `/_matrix/media/{v3,r0,v1}/upload` and
//!   `/_matrix/media/v1/create` (the spec moves them later).
//! - The deprecated unauthenticated `/_matrix/media/*/download` and
//!   `/thumbnail` are frozen unless `media.legacy_unauthenticated` is on
//!   (see [`crate::media::service::Access`]); `/_matrix/media/*/config`
//!   needs a token, as in Synapse.
//! - `preview_url` is not routed: hearth has no URL previews, and Synapse
//!   with `url_preview_enabled: false` does not register it either, so
//!   clients get 404 `M_UNRECOGNIZED` and show no preview.

use std::rc::Rc;

use serde_json::json;

use crate::auth;
use crate::config::Config;
use crate::http::{HandlerResult, MatrixError, Method, Request, Response, Router};
use crate::media::disposition::{content_disposition, sanitize_content_type, CSP};
use crate::media::service::{self, Access, Served, Upload};
use crate::media::thumbnail::{Method as ThumbMethod, Spec};
use crate::media::valid_media_id;
use crate::shard_state::ShardState;

const V1: &str = "/_matrix/client/v1/media";
/// Legacy media prefixes (Synapse serves all three).
const LEGACY: &[&str] = &[
    "/_matrix/media/v3",
    "/_matrix/media/r0",
    "/_matrix/media/v1",
];

/// Registers this module's routes; upload routes get `media.max_upload_size`
/// as their body limit instead of the server-wide `http.max_body_bytes`.
pub fn routes(r: Router<ShardState>, config: &Config) -> Router<ShardState> {
    use Method::{Get, Post, Put};
    let upload_limit = usize::try_from(config.media.max_upload_size).unwrap_or(usize::MAX);
    let mut r = r
        .route(Get, &format!("{V1}/config"), config_get)
        .route(
            Get,
            &format!("{V1}/download/{{serverName}}/{{mediaId}}"),
            download,
        )
        .route(
            Get,
            &format!("{V1}/download/{{serverName}}/{{mediaId}}/{{fileName}}"),
            download,
        )
        .route(
            Get,
            &format!("{V1}/thumbnail/{{serverName}}/{{mediaId}}"),
            thumbnail,
        )
        .route(Post, "/_matrix/media/v1/create", create);
    for p in LEGACY {
        let upload_path = format!("{p}/upload");
        let fill_path = format!("{p}/upload/{{serverName}}/{{mediaId}}");
        r = r
            .route(Post, &upload_path, upload)
            .body_limit(Post, &upload_path, upload_limit)
            .route(Put, &fill_path, fill)
            .body_limit(Put, &fill_path, upload_limit)
            .route(Get, &format!("{p}/config"), config_get)
            .route(
                Get,
                &format!("{p}/download/{{serverName}}/{{mediaId}}"),
                legacy_download,
            )
            .route(
                Get,
                &format!("{p}/download/{{serverName}}/{{mediaId}}/{{fileName}}"),
                legacy_download,
            )
            .route(
                Get,
                &format!("{p}/thumbnail/{{serverName}}/{{mediaId}}"),
                legacy_thumbnail,
            );
    }
    r
}

/// `{serverName}` and `{mediaId}`, sanitised as the spec requires (no
/// path can be smuggled through either).
fn mxc_path(req: &Request) -> Result<(String, String), MatrixError> {
    let server = req.param_str("serverName")?.into_owned();
    let id = req.param_str("mediaId")?.into_owned();
    if ruma::ServerName::parse(&server).is_err() {
        return Err(MatrixError::invalid_param("Invalid server name"));
    }
    if !valid_media_id(&id) {
        return Err(MatrixError::invalid_param("Invalid media ID"));
    }
    Ok((server, id))
}

fn upload_meta(req: &Request) -> Result<Upload, MatrixError> {
    let filename = req.query_param("filename").map(|f| f.into_owned());
    if let Some(f) = &filename {
        if f.len() > 255 || f.chars().any(char::is_control) {
            return Err(MatrixError::invalid_param("Invalid filename"));
        }
    }
    Ok(Upload {
        content_type: sanitize_content_type(req.header("content-type")),
        filename: filename.filter(|f| !f.is_empty()),
    })
}

/// `GET …/config`.
async fn config_get(state: Rc<ShardState>, req: Request) -> HandlerResult {
    auth::require_user(&state, &req).await?;
    Ok(Response::json(
        200,
        &json!({ "m.upload.size": state.config.media.max_upload_size }),
    ))
}

/// `POST /_matrix/media/v3/upload`.
async fn upload(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let up = upload_meta(&req)?;
    let uri = service::upload(&state, me.user_id.as_str(), req.body.clone(), up).await?;
    Ok(Response::json(200, &json!({ "content_uri": uri })))
}

/// `POST /_matrix/media/v1/create`.
async fn create(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let (uri, expires) = service::create(&state, me.user_id.as_str()).await?;
    Ok(Response::json(
        200,
        &json!({ "content_uri": uri, "unused_expires_at": expires }),
    ))
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`.
async fn fill(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let (server, id) = mxc_path(&req)?;
    let up = upload_meta(&req)?;
    service::fill(
        &state,
        me.user_id.as_str(),
        &server,
        &id,
        req.body.clone(),
        up,
    )
    .await?;
    Ok(Response::json(200, &json!({})))
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}]`.
async fn download(state: Rc<ShardState>, req: Request) -> HandlerResult {
    auth::require_user(&state, &req).await?;
    download_as(&state, &req, Access::Authenticated).await
}

/// The deprecated `GET /_matrix/media/v3/download/…`: no token needed.
async fn legacy_download(state: Rc<ShardState>, req: Request) -> HandlerResult {
    download_as(&state, &req, Access::Legacy).await
}

async fn download_as(state: &ShardState, req: &Request, access: Access) -> HandlerResult {
    let (server, id) = mxc_path(req)?;
    let timeout = req.query_as::<u64>("timeout_ms")?;
    let name = match req.raw_param("fileName") {
        Some(_) => Some(req.param_str("fileName")?.into_owned()),
        None => None,
    };
    let served = service::download(state, &server, &id, timeout, access).await?;
    Ok(serve(served, name))
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`.
async fn thumbnail(state: Rc<ShardState>, req: Request) -> HandlerResult {
    auth::require_user(&state, &req).await?;
    thumbnail_as(&state, &req, Access::Authenticated).await
}

async fn legacy_thumbnail(state: Rc<ShardState>, req: Request) -> HandlerResult {
    thumbnail_as(&state, &req, Access::Legacy).await
}

fn dimension(req: &Request, name: &str) -> Result<u32, MatrixError> {
    match req.query_as::<u32>(name)? {
        None => Err(MatrixError::missing_param(format!(
            "Missing query parameter '{name}'"
        ))),
        Some(0) => Err(MatrixError::invalid_param(format!(
            "Query parameter '{name}' must be positive"
        ))),
        Some(n) => Ok(n),
    }
}

async fn thumbnail_as(state: &ShardState, req: &Request, access: Access) -> HandlerResult {
    let (server, id) = mxc_path(req)?;
    let spec = thumbnail_spec(req)?;
    let timeout = req.query_as::<u64>("timeout_ms")?;
    let served = service::thumbnail(state, &server, &id, spec, timeout, access).await?;
    Ok(serve(served, None))
}

/// A thumbnail request's `width`, `height`, `method`, `animated` (the
/// client and federation endpoints take the same).
pub(crate) fn thumbnail_spec(req: &Request) -> Result<Spec, MatrixError> {
    let width = dimension(req, "width")?;
    let height = dimension(req, "height")?;
    // Synapse's default method is `scale`.
    let method = match req.query_param("method") {
        None => ThumbMethod::Scale,
        Some(m) => ThumbMethod::parse(&m)
            .ok_or_else(|| MatrixError::invalid_param("method must be crop or scale"))?,
    };
    let animated = req.query_as::<bool>("animated")?.unwrap_or(false);
    Ok(Spec {
        width,
        height,
        method,
        animated,
    })
}

/// The content with the headers that keep it from running on our origin:
/// a safe `Content-Disposition` (`attachment` for anything not on the
/// spec's inline list, HTML included), the spec's CSP, `nosniff`, and
/// `Cross-Origin-Resource-Policy: cross-origin` (spec v1.4).
fn serve(s: Served, name: Option<String>) -> Response {
    let name = name.or(s.upload_name);
    let disposition = content_disposition(&s.content_type, name.as_deref());
    Response::empty(200)
        .with_header("Content-Type", s.content_type)
        .with_header("Content-Disposition", disposition)
        .with_header("Content-Security-Policy", CSP)
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("Cross-Origin-Resource-Policy", "cross-origin")
        .with_header("Cache-Control", "private, max-age=86400")
        .with_body(s.bytes)
}
