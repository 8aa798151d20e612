//! Federation queries (server-server "Querying for information").

use std::rc::Rc;

use serde_json::{Map, Value};

use super::auth::authenticate;
use crate::auth::store;
use crate::http::{HandlerResult, MatrixError, Request, Response};
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
