//! Federation queries of local users' devices and keys (server-server
//! "End-to-End Encryption" and "Device Management"): what a remote server
//! needs to encrypt for our users. Only local users are answered; others
//! are left out, as Synapse does.

use std::rc::Rc;

use serde_json::{json, Map, Value};

use super::auth::authenticate;
use crate::api::client::keys::{claim_local, query_local, split_local};
use crate::http::{HandlerResult, MatrixError, Request, Response};
use crate::keys::cross_signing::KeyType;
use crate::keys::{cross_store, device_lists, store};
use crate::shard_state::ShardState;

fn object<'a>(
    body: &'a Map<String, Value>,
    field: &str,
) -> Result<&'a Map<String, Value>, MatrixError> {
    match body.get(field) {
        Some(Value::Object(m)) => Ok(m),
        _ => Err(MatrixError::bad_json(format!(
            "'{field}' must be an object"
        ))),
    }
}

/// `POST /_matrix/federation/v1/user/keys/query`: device keys and the
/// master and self-signing keys of local users.
pub async fn keys_query(state: Rc<ShardState>, req: Request) -> HandlerResult {
    authenticate(&state, &req).await?;
    let body: Map<String, Value> = req.json()?;
    let wanted = object(&body, "device_keys")?;
    let (local, _remote) = split_local(&state, wanted);
    let answer = query_local(&state, wanted, local, None).await?;
    Ok(Response::json(200, &Value::Object(answer)))
}

/// `POST /_matrix/federation/v1/user/keys/claim`: one key per requested
/// device of local users, each handed out once.
pub async fn keys_claim(state: Rc<ShardState>, req: Request) -> HandlerResult {
    authenticate(&state, &req).await?;
    let body: Map<String, Value> = req.json()?;
    let wanted = object(&body, "one_time_keys")?;
    let (local, _remote) = split_local(&state, wanted);
    let out = claim_local(&state, wanted, &local).await?;
    Ok(Response::json(200, &json!({ "one_time_keys": out })))
}

/// `GET /_matrix/federation/v1/user/devices/{userId}`: a local user's
/// devices with their keys, the cross-signing keys, and `stream_id` (that
/// of the last `m.device_list_update` sent for the user, read before the
/// devices: a remote that then sees the next update chains on it).
pub async fn devices(state: Rc<ShardState>, req: Request) -> HandlerResult {
    authenticate(&state, &req).await?;
    let raw = req.param_str("userId")?;
    let user = ruma::UserId::parse(raw.as_ref())
        .map_err(|_| MatrixError::invalid_param("Invalid user id"))?;
    if user.server_name().as_str() != state.config.server_name {
        return Err(MatrixError::invalid_param(
            "User is not local to this server",
        ));
    }
    let users = vec![user.to_string()];
    let stream_id = device_lists::stream_id(&state.db, user.as_str())
        .await
        .map_err(crate::api::client::keys::keys_error)?;
    let found = store::device_keys(&state.db, &users)
        .await
        .map_err(crate::api::client::keys::keys_error)?;
    let devices: Vec<Value> = found
        .into_iter()
        .map(|d| {
            let mut o = Map::new();
            o.insert("device_id".into(), d.device_id.into());
            o.insert("keys".into(), d.keys);
            if let Some(name) = d.display_name {
                o.insert("device_display_name".into(), name.into());
            }
            Value::Object(o)
        })
        .collect();
    let mut out = Map::new();
    out.insert("user_id".into(), user.as_str().into());
    out.insert("stream_id".into(), stream_id.into());
    out.insert("devices".into(), Value::Array(devices));
    let cross = cross_store::keys_of(&state.db, &users)
        .await
        .map_err(crate::api::client::keys::keys_error)?;
    for k in cross.get(user.as_str()).into_iter().flatten() {
        let field = match k.kind {
            KeyType::Master => "master_key",
            KeyType::SelfSigning => "self_signing_key",
            KeyType::UserSigning => continue,
        };
        out.insert(field.into(), Value::Object(k.json.clone()));
    }
    Ok(Response::json(200, &Value::Object(out)))
}

/// `GET /_matrix/federation/v1/openid/userinfo?access_token=`: whose an
/// OpenID token is (not X-Matrix signed: the third party asking is often
/// not a homeserver). 401 `M_UNKNOWN_TOKEN` for an unknown or expired one.
pub async fn openid_userinfo(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let token = req
        .query_param("access_token")
        .ok_or_else(|| MatrixError::unknown_token(false))?;
    let now = crate::primitives::unix_ms_i64();
    let user = crate::auth::openid::user_of(&state.db, token.as_ref(), now)
        .await?
        .ok_or_else(|| MatrixError::unknown_token(false))?;
    Ok(Response::json(200, &json!({ "sub": user })))
}
