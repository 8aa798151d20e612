//! Server-side key backup endpoints (client-server API "End-to-End
//! Encryption" → "Server-side key backups"): `/room_keys/version[/{v}]`
//! and `/room_keys/keys[/{roomId}[/{sessionId}]]`; thin handlers over
//! `crate::keys::backup`. Writes run on the user's shard under the
//! backup write lock; reads run where they arrive.

use std::future::Future;
use std::rc::Rc;

use serde_json::{json, Map, Value};

use super::keys::keys_error;
use crate::auth::{self, Requester};
use crate::http::{HandlerResult, MatrixError, Method, Request, Response, Router};
use crate::keys::backup::{self, SessionKey};
use crate::keys::KeysError;
use crate::mesh::shard_for_user;
use crate::shard_state::{on_shard, Here, ShardState};

/// Registers this module's client routes (v3 and r0).
pub fn routes(r: Router<ShardState>) -> Router<ShardState> {
    use Method::{Delete, Get, Post, Put};
    let r = super::client(r, Post, "/room_keys/version", create_version);
    let r = super::client(r, Get, "/room_keys/version", get_version);
    let r = super::client(r, Get, "/room_keys/version/{version}", get_version);
    let r = super::client(r, Put, "/room_keys/version/{version}", update_version);
    let r = super::client(r, Delete, "/room_keys/version/{version}", delete_version);
    let mut r = r;
    for path in [
        "/room_keys/keys",
        "/room_keys/keys/{roomId}",
        "/room_keys/keys/{roomId}/{sessionId}",
    ] {
        r = super::client(r, Put, path, put_keys);
        r = super::client(r, Get, path, get_keys);
        r = super::client(r, Delete, path, delete_keys);
    }
    r
}

/// Runs a backup write for `me` on their shard, under the write lock.
async fn write<F, Fut, T>(state: &ShardState, me: &Requester, f: F) -> Result<T, MatrixError>
where
    F: FnOnce(Rc<ShardState>, String) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, KeysError>> + 'static,
    T: Send + 'static,
{
    let target = shard_for_user(&me.user_id, state.mesh.n_shards());
    let user = me.user_id.as_str().to_owned();
    on_shard(&state.mesh, target, Here::Spawn, move |st| async move {
        let lock = backup::write_lock();
        let _held = lock.lock().await;
        f(st, user).await
    })
    .await
    .map_err(|e| MatrixError::unknown(e.to_string()))?
    .map_err(keys_error)
}

/// `algorithm` and `auth_data` of a version body.
fn version_body(body: &Map<String, Value>) -> Result<(String, Value), MatrixError> {
    let Some(Value::String(alg)) = body.get("algorithm") else {
        return Err(MatrixError::missing_param("'algorithm' must be a string"));
    };
    let Some(auth) = body.get("auth_data").filter(|a| a.is_object()) else {
        return Err(MatrixError::missing_param("'auth_data' must be an object"));
    };
    Ok((alg.clone(), auth.clone()))
}

/// `POST /room_keys/version`: a new version, now the current one.
async fn create_version(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let body: Map<String, Value> = req.json()?;
    let (alg, auth_data) = version_body(&body)?;
    let version = write(&state, &me, move |st, user| async move {
        backup::create(&st.db, &user, &alg, &auth_data).await
    })
    .await?;
    Ok(Response::json(
        200,
        &json!({ "version": version.to_string() }),
    ))
}

/// `GET /room_keys/version[/{version}]`: the current version, or the one
/// named; 404 `M_NOT_FOUND` without it.
async fn get_version(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let version = match req.param_str("version") {
        Ok(v) => Some(backup::parse_version(&v).map_err(keys_error)?),
        Err(_) => None,
    };
    let found = backup::get(&state.db, me.user_id.as_str(), version)
        .await
        .map_err(keys_error)?
        .ok_or_else(|| MatrixError::not_found("No backup found"))?;
    Ok(Response::json(
        200,
        &json!({
            "algorithm": found.algorithm,
            "auth_data": found.auth_data,
            "count": found.count,
            "etag": found.etag.to_string(),
            "version": found.version.to_string(),
        }),
    ))
}

/// `PUT /room_keys/version/{version}`: new `auth_data` (the algorithm and
/// a `version` in the body, if given, must match).
async fn update_version(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let path_version = req.param_str("version")?.into_owned();
    let body: Map<String, Value> = req.json()?;
    let (alg, auth_data) = version_body(&body)?;
    match body.get("version") {
        None => {}
        Some(Value::String(v)) if *v == path_version => {}
        Some(_) => {
            return Err(MatrixError::invalid_param(
                "the version in the body does not match the path",
            ))
        }
    }
    let version = backup::parse_version(&path_version).map_err(keys_error)?;
    write(&state, &me, move |st, user| async move {
        backup::update(&st.db, &user, version, &alg, &auth_data).await
    })
    .await?;
    Ok(Response::json(200, &json!({})))
}

/// `DELETE /room_keys/version/{version}`: the version and its keys.
async fn delete_version(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let version = backup::parse_version(&req.param_str("version")?).map_err(keys_error)?;
    let found = write(&state, &me, move |st, user| async move {
        backup::delete(&st.db, &user, version).await
    })
    .await?;
    if !found {
        return Err(MatrixError::not_found("Unknown backup version"));
    }
    Ok(Response::json(200, &json!({})))
}

/// The `version` query parameter (required by every `/room_keys/keys` call).
fn version_param(req: &Request) -> Result<i64, MatrixError> {
    let v = req
        .query_param("version")
        .ok_or_else(|| MatrixError::missing_param("'version' is required"))?;
    backup::parse_version(&v).map_err(keys_error)
}

/// The optional `{roomId}` and `{sessionId}` of the path.
fn scope(req: &Request) -> (Option<String>, Option<String>) {
    let p = |n: &str| req.param_str(n).ok().map(|s| s.into_owned());
    (p("roomId"), p("sessionId"))
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, MatrixError> {
    v.as_object()
        .ok_or_else(|| MatrixError::bad_json(format!("'{what}' must be an object")))
}

/// The keys of an upload body at the path's depth: `{rooms: {r: {sessions:
/// {s: data}}}}`, `{sessions: {s: data}}` or one `KeyBackupData`.
fn uploaded(
    body: &Value,
    room: Option<&str>,
    session: Option<&str>,
) -> Result<Vec<SessionKey>, MatrixError> {
    let bad = |e| keys_error(e);
    let sessions_of = |room: &str, v: &Value| -> Result<Vec<SessionKey>, MatrixError> {
        let Some(sessions) = object(v, "room")?.get("sessions") else {
            return Ok(Vec::new());
        };
        object(sessions, "sessions")?
            .iter()
            .map(|(s, d)| backup::parse_session(room, s, d).map_err(bad))
            .collect()
    };
    match (room, session) {
        (Some(r), Some(s)) => Ok(vec![backup::parse_session(r, s, body).map_err(bad)?]),
        (Some(r), None) => sessions_of(r, body),
        _ => {
            let Some(rooms) = object(body, "body")?.get("rooms") else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for (r, v) in object(rooms, "rooms")? {
                out.extend(sessions_of(r, v)?);
            }
            Ok(out)
        }
    }
}

/// `PUT /room_keys/keys[...]?version=`: stores keys into the current
/// version; answers `etag` and `count`.
async fn put_keys(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let version = version_param(&req)?;
    let (room, session) = scope(&req);
    let body: Value = req.json()?;
    let keys = uploaded(&body, room.as_deref(), session.as_deref())?;
    let (etag, count) = write(&state, &me, move |st, user| async move {
        backup::put_keys(&st.db, &user, version, &keys).await
    })
    .await?;
    Ok(Response::json(
        200,
        &json!({ "etag": etag.to_string(), "count": count }),
    ))
}

/// `GET /room_keys/keys[...]?version=`.
async fn get_keys(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let version = version_param(&req)?;
    let (room, session) = scope(&req);
    let keys = backup::get_keys(
        &state.db,
        me.user_id.as_str(),
        version,
        room.as_deref(),
        session.as_deref(),
    )
    .await
    .map_err(keys_error)?;
    let body = match (room, session) {
        (Some(_), Some(_)) => keys
            .first()
            .map(SessionKey::to_json)
            .ok_or_else(|| MatrixError::not_found("No room_keys found"))?,
        (Some(_), None) => {
            let sessions: Map<String, Value> = keys
                .iter()
                .map(|k| (k.session_id.clone(), k.to_json()))
                .collect();
            json!({ "sessions": sessions })
        }
        _ => backup::rooms_json(keys),
    };
    Ok(Response::json(200, &body))
}

/// `DELETE /room_keys/keys[...]?version=`; answers `etag` and `count`.
async fn delete_keys(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let version = version_param(&req)?;
    let (room, session) = scope(&req);
    let (etag, count) = write(&state, &me, move |st, user| async move {
        backup::delete_keys(&st.db, &user, version, room.as_deref(), session.as_deref()).await
    })
    .await?;
    Ok(Response::json(
        200,
        &json!({ "etag": etag.to_string(), "count": count }),
    ))
}
