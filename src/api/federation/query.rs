//! Federation queries (server-server "Querying for information").

use std::rc::Rc;

use serde_json::{Map, Value};

use super::auth::authenticate;
use crate::api::client::directory as client_directory;
use crate::auth::store;
use crate::http::{HandlerResult, MatrixError, Request, Response};
use crate::rooms::{alias, directory};
use crate::shard_state::ShardState;

/// `GET /_matrix/federation/v1/query/profile?user_id=&field=`: a local
/// user's profile, to an authenticated server.
pub async fn profile(state: Rc<ShardState>, req: Request) -> HandlerResult {
    authenticate(&state, &req).await?;
    let user_id = req
        .query_param("user_id")
        .ok_or_else(|| MatrixError::missing_param("Missing user_id"))?;
    let user = ruma::UserId::parse(user_id.as_ref())
        .map_err(|_| MatrixError::invalid_param("Invalid user_id"))?;
    if user.server_name().as_str() != state.config.server_name {
        return Err(MatrixError::invalid_param(
            "User is not local to this server",
        ));
    }
    let field = req.query_param("field");
    let p = store::get_profile(&state.db, &user)
        .await?
        .ok_or_else(|| MatrixError::not_found("Profile was not found"))?;
    let mut out = Map::new();
    let want = |f: &str| field.as_deref().is_none_or(|x| x == f);
    match field.as_deref() {
        None | Some("displayname") | Some("avatar_url") => {}
        Some(_) => return Err(MatrixError::invalid_param("Unknown field")),
    }
    if want("displayname") {
        if let Some(d) = p.displayname {
            out.insert("displayname".into(), d.into());
        }
    }
    if want("avatar_url") {
        if let Some(a) = p.avatar_url {
            out.insert("avatar_url".into(), a.into());
        }
    }
    Ok(Response::json(200, &Value::Object(out)))
}

/// `GET /_matrix/federation/v1/query/directory?room_alias=`: where a local
/// alias points, and the servers in that room (ours first).
pub async fn room_directory(state: Rc<ShardState>, req: Request) -> HandlerResult {
    authenticate(&state, &req).await?;
    let raw = req
        .query_param("room_alias")
        .ok_or_else(|| MatrixError::missing_param("Missing room_alias"))?;
    let a =
        alias::parse(raw.as_ref()).map_err(|_| MatrixError::invalid_param("Invalid room_alias"))?;
    let not_found = || MatrixError::not_found(format!("Room alias {a} not found"));
    if a.server_name().as_str() != state.config.server_name {
        return Err(not_found());
    }
    let entry = alias::lookup(&state.db, &a).await?.ok_or_else(not_found)?;
    let servers =
        directory::joined_servers(&state.db, &entry.room_id, &state.config.server_name).await?;
    Ok(Response::json(
        200,
        &serde_json::json!({ "room_id": entry.room_id, "servers": servers }),
    ))
}

/// `GET /_matrix/federation/v1/publicRooms`: our public room directory,
/// to an authenticated server (as the client API's).
pub async fn public_rooms_get(state: Rc<ShardState>, req: Request) -> HandlerResult {
    authenticate(&state, &req).await?;
    let q = client_directory::get_query(&req)?;
    client_directory::list(&state, q).await
}

/// `POST /_matrix/federation/v1/publicRooms` with a filter.
pub async fn public_rooms_post(state: Rc<ShardState>, req: Request) -> HandlerResult {
    authenticate(&state, &req).await?;
    let q = client_directory::post_query(&req)?;
    client_directory::list(&state, q).await
}
