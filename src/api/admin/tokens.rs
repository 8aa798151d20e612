//! Registration tokens in the admin API: `/v1/registration_tokens` (list,
//! `?valid=`), `/new`, and `/{token}` (get, `PUT` to update, delete).
//! Checked at registration by `api/client/uia.rs`.

use std::rc::Rc;

use serde_json::{json, Map, Value};

use super::{bool_param, require_admin};
use crate::api::util::{json_body, optional_json_body};
use crate::auth::registration_tokens::{self as tokens, Change, RegistrationToken};
use crate::http::{HandlerResult, MatrixError, Method, Request, Response, Router};
use crate::primitives::unix_ms_i64;
use crate::shard_state::ShardState;

const BASE: &str = "/_synapse/admin/v1/registration_tokens";

pub fn routes(r: Router<ShardState>) -> Router<ShardState> {
    use Method::{Delete, Get, Post, Put};
    r.route(Get, BASE, list)
        .route(Post, &format!("{BASE}/new"), new)
        .route(Get, &format!("{BASE}/{{token}}"), get)
        .route(Put, &format!("{BASE}/{{token}}"), update)
        .route(Delete, &format!("{BASE}/{{token}}"), delete)
}

fn token_json(t: &RegistrationToken) -> Value {
    json!({
        "token": t.token,
        "uses_allowed": t.uses_allowed,
        "pending": t.pending,
        "completed": t.completed,
        "expiry_time": t.expiry_time,
    })
}

/// `GET /v1/registration_tokens[?valid=true|false]`.
pub async fn list(state: Rc<ShardState>, req: Request) -> HandlerResult {
    require_admin(&state, &req).await?;
    let valid = bool_param(&req, "valid")?;
    let all = tokens::list(&state.db, valid, unix_ms_i64()).await?;
    let out: Vec<Value> = all.iter().map(token_json).collect();
    Ok(Response::json(200, &json!({ "registration_tokens": out })))
}

/// A field of the body: absent, `null`, or a value checked by `f`.
fn field<T>(
    body: &Map<String, Value>,
    key: &str,
    f: impl Fn(&Value) -> Option<T>,
    msg: &'static str,
) -> Result<Change<T>, MatrixError> {
    match body.get(key) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) => f(v)
            .map(|t| Some(Some(t)))
            .ok_or_else(|| MatrixError::invalid_param(msg)),
    }
}

fn uses_allowed(body: &Map<String, Value>) -> Result<Change<i32>, MatrixError> {
    field(
        body,
        "uses_allowed",
        |v| {
            v.as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .filter(|n| *n >= 0)
        },
        "uses_allowed must be a non-negative integer or null",
    )
}

fn expiry_time(body: &Map<String, Value>) -> Result<Change<i64>, MatrixError> {
    let now = unix_ms_i64();
    field(
        body,
        "expiry_time",
        |v| v.as_i64().filter(|t| *t >= now),
        "expiry_time must not be in the past",
    )
}

/// `POST /v1/registration_tokens/new` with optional `token`, `length`,
/// `uses_allowed`, `expiry_time`.
pub async fn new(state: Rc<ShardState>, req: Request) -> HandlerResult {
    require_admin(&state, &req).await?;
    let body: Map<String, Value> = optional_json_body(&req)?;
    let token = match body.get("token") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if tokens::valid_token_syntax(t) => Some(t.clone()),
        Some(_) => {
            return Err(MatrixError::invalid_param(
                "token must consist only of characters matched by the regex [A-Za-z0-9._~-] \
                 and be at most 64 characters long",
            ))
        }
    };
    let length = match body.get("length") {
        None => 16,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=64) => n as usize,
            _ => {
                return Err(MatrixError::invalid_param(
                    "length must be an integer > 0 and <= 64",
                ))
            }
        },
    };
    let uses = uses_allowed(&body)?.flatten();
    let expiry = expiry_time(&body)?.flatten();
    let given = token.clone();
    match tokens::create(&state.db, token, length, uses, expiry).await? {
        Some(t) => Ok(Response::json(200, &token_json(&t))),
        None => Err(MatrixError::invalid_param(format!(
            "Token already exists: {}",
            given.unwrap_or_default()
        ))),
    }
}

fn not_found(token: &str) -> MatrixError {
    MatrixError::not_found(format!("No such registration token: {token}"))
}

/// `GET /v1/registration_tokens/{token}`.
pub async fn get(state: Rc<ShardState>, req: Request) -> HandlerResult {
    require_admin(&state, &req).await?;
    let token = req.param_str("token")?;
    match tokens::get(&state.db, &token).await? {
        Some(t) => Ok(Response::json(200, &token_json(&t))),
        None => Err(not_found(&token)),
    }
}

/// `PUT /v1/registration_tokens/{token}` with `uses_allowed` and/or
/// `expiry_time` (each may be `null`).
pub async fn update(state: Rc<ShardState>, req: Request) -> HandlerResult {
    require_admin(&state, &req).await?;
    let token = req.param_str("token")?;
    let body: Map<String, Value> = json_body(&req)?;
    let uses = uses_allowed(&body)?;
    let expiry = expiry_time(&body)?;
    match tokens::update(&state.db, &token, uses, expiry).await? {
        Some(t) => Ok(Response::json(200, &token_json(&t))),
        None => Err(not_found(&token)),
    }
}

/// `DELETE /v1/registration_tokens/{token}`.
pub async fn delete(state: Rc<ShardState>, req: Request) -> HandlerResult {
    require_admin(&state, &req).await?;
    let token = req.param_str("token")?;
    if tokens::delete(&state.db, &token).await? {
        Ok(Response::json(200, &json!({})))
    } else {
        Err(not_found(&token))
    }
}
