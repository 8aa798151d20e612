//! Our media for other servers (server-server "Content Repository"):
//! `GET /_matrix/federation/v1/media/download/{mediaId}` and
//! `/thumbnail/{mediaId}`, answered `multipart/mixed` (an empty JSON
//! metadata part, then the content with its type and disposition). Only
//! media uploaded here is served; the work is `media::service`.

use std::rc::Rc;

use crate::api::client::media::thumbnail_spec;
use crate::http::{HandlerResult, MatrixError, Request, Response};
use crate::media::disposition::content_disposition;
use crate::media::service::{self, Access, Served};
use crate::media::{multipart, valid_media_id};
use crate::shard_state::ShardState;

use super::auth::authenticate;

fn media_id(req: &Request) -> Result<String, MatrixError> {
    let id = req.param_str("mediaId")?.into_owned();
    if !valid_media_id(&id) {
        return Err(MatrixError::invalid_param("Invalid media ID"));
    }
    Ok(id)
}

fn answer(s: Served) -> Response {
    // Random, so it cannot collide with the content by accident.
    let boundary = crate::media::new_media_id().unwrap_or_else(|_| "hearthboundary0".into());
    let disposition = content_disposition(&s.content_type, s.upload_name.as_deref());
    let body = multipart::build(&boundary, &s.bytes, &s.content_type, Some(&disposition));
    Response::empty(200)
        .with_header(
            "Content-Type",
            format!("multipart/mixed; boundary={boundary}"),
        )
        .with_body(body)
}

pub(super) async fn download(state: Rc<ShardState>, req: Request) -> HandlerResult {
    authenticate(&state, &req).await?;
    let id = media_id(&req)?;
    let timeout = req.query_as::<u64>("timeout_ms")?;
    let ours = state.config.server_name.clone();
    let served = service::download(&state, &ours, &id, timeout, Access::Authenticated).await?;
    Ok(answer(served))
}

pub(super) async fn thumbnail(state: Rc<ShardState>, req: Request) -> HandlerResult {
    authenticate(&state, &req).await?;
    let id = media_id(&req)?;
    let spec = thumbnail_spec(&req)?;
    let timeout = req.query_as::<u64>("timeout_ms")?;
    let ours = state.config.server_name.clone();
    let served =
        service::thumbnail(&state, &ours, &id, spec, timeout, Access::Authenticated).await?;
    Ok(answer(served))
}
