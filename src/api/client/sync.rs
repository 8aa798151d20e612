//! `GET /sync` and the filter endpoints (client-server API "Syncing",
//! "Filtering"). Parameters are validated here, on whichever shard took
//! the connection; the sync itself runs on the user's shard, whose
//! notifier knows the user's rooms and wakes the user's long polls.

use std::rc::Rc;
use std::time::Duration;

use ruma::UserId;
use serde_json::json;

use crate::auth;
use crate::filter::Filter;
use crate::http::{HandlerResult, MatrixError, Request, Response};
use crate::mesh::shard_for_user;
use crate::shard_state::{on_shard, Here, ShardState};
use crate::stream::StreamToken;
use crate::sync::handler::{self, SyncOutcome, SyncParams};
use crate::sync::{filter_store, SyncError};

/// Filters are small; a bigger body is certainly not one.
const MAX_FILTER_BODY: usize = 65_536;

fn params(req: &Request) -> Result<SyncParams, MatrixError> {
    let since = req
        .query_param("since")
        .map(|s| {
            StreamToken::parse(&s).map_err(|_| MatrixError::invalid_param("Invalid since token"))
        })
        .transpose()?;
    let timeout = req
        .query_param("timeout")
        .map(|t| {
            t.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| MatrixError::invalid_param("timeout must be a non-negative integer"))
        })
        .transpose()?
        .unwrap_or_default();
    let full_state = match req.query_param("full_state").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(MatrixError::invalid_param(
                "full_state must be true or false",
            ))
        }
    };
    let set_presence = match req.query_param("set_presence") {
        None => None,
        Some(p) if matches!(p.as_ref(), "online" | "offline" | "unavailable") => {
            Some(p.into_owned())
        }
        Some(_) => {
            return Err(MatrixError::invalid_param(
                "set_presence must be online, offline or unavailable",
            ))
        }
    };
    Ok(SyncParams {
        since,
        timeout,
        full_state,
        filter: req.query_param("filter").map(|f| f.into_owned()),
        set_presence,
    })
}

/// `GET /sync`.
pub async fn sync(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = auth::require_user(&state, &req).await?;
    let p = params(&req)?;
    let target = shard_for_user(&who.user_id, state.mesh.n_shards());
    let out: SyncOutcome = on_shard(&state.mesh, target, Here::Inline, move |s| {
        handler::sync(s, who, p)
    })
    .await??;
    let mut resp = Response::json_bytes(200, out.body).with_header("X-Hearth-Sync", out.path);
    if target != state.mesh.shard_id() {
        // The next sync on this connection is served where it runs.
        resp = resp.move_to(target);
    }
    if let Some((hits, misses)) = out.window {
        resp = resp.with_header(
            "X-Hearth-Sync-Window",
            format!("hits={hits},misses={misses}"),
        );
    }
    Ok(resp)
}

fn own_user(req: &Request, who: &auth::Requester) -> Result<ruma::OwnedUserId, MatrixError> {
    let raw = req.param_str("userId")?;
    let user =
        UserId::parse(raw.as_ref()).map_err(|_| MatrixError::invalid_param("Invalid user id"))?;
    if user != who.user_id {
        return Err(MatrixError::forbidden(
            "Cannot create or read filters for other users",
        ));
    }
    Ok(user)
}

/// `POST /user/{userId}/filter`.
pub async fn create_filter(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = auth::require_user(&state, &req).await?;
    let user = own_user(&req, &who)?;
    if req.body.len() > MAX_FILTER_BODY {
        return Err(MatrixError::too_large("filter is too large"));
    }
    let (_, json) = Filter::from_slice(&req.body)?;
    let id = filter_store::create(&state.db, &user, &json)
        .await
        .map_err(MatrixError::from)?;
    Ok(Response::json(200, &json!({ "filter_id": id.to_string() })))
}

/// `GET /user/{userId}/filter/{filterId}`.
pub async fn get_filter(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = auth::require_user(&state, &req).await?;
    let user = own_user(&req, &who)?;
    let raw = req.param_str("filterId")?;
    let not_found = || MatrixError::not_found("No such filter");
    let id = filter_store::parse_id(&raw).ok_or_else(not_found)?;
    let json = filter_store::get(&state.db, &user, id)
        .await
        .map_err(|e: SyncError| MatrixError::from(e))?
        .ok_or_else(not_found)?;
    Ok(Response::json(200, &json))
}
