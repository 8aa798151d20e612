//! Login and logout (client-server API, "Client Authentication" → "Login",
//! "Logout").

use std::rc::Rc;

use serde_json::{json, Map, Value};

use super::uia::password_credentials;
use crate::auth::store::{self, NewSession};
use crate::auth::{self, password, username, AuthError};
use crate::http::{HandlerResult, MatrixError, Request, Response};
use crate::ratelimit::{check_on_owner, Action, Op};
use crate::shard_state::ShardState;

use crate::api::util::{client_ip, validate_device_id};

/// `GET /login`: the login types we support.
pub async fn flows(_state: Rc<ShardState>, _req: Request) -> HandlerResult {
    Ok(Response::json(
        200,
        &json!({ "flows": [{ "type": "m.login.password" }] }),
    ))
}

fn opt_string(body: &Map<String, Value>, key: &str) -> Result<Option<String>, MatrixError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(MatrixError::bad_json(format!("'{key}' must be a string"))),
    }
}

/// `POST /login` with `m.login.password`.
pub async fn login(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let body: Map<String, Value> = req.json()?;
    match body.get("type") {
        Some(Value::String(t)) if t == "m.login.password" => {}
        Some(Value::String(t)) => {
            return Err(MatrixError::bad_request(format!("Unknown login type {t}")))
        }
        Some(_) => return Err(MatrixError::bad_json("'type' must be a string")),
        None => return Err(MatrixError::missing_param("Missing 'type'")),
    }
    let (user, pw) = password_credentials(&body)?;
    let device_id = opt_string(&body, "device_id")?;
    if let Some(d) = &device_id {
        validate_device_id(d)?;
    }
    let display_name = opt_string(&body, "initial_device_display_name")?;
    let server = state.config.server_name.clone();
    // `rc_login.address`: every attempt from this IP counts.
    if let Some(ip) = client_ip(&req) {
        check_on_owner(&state, &ip, &[(Op::Take, Action::LoginAddress)]).await?;
    }
    let user_id = username::resolve_login_user(&user, &server).ok_or(AuthError::BadCredentials)?;
    // `rc_login.failed_attempts` (per account, from any IP: a lockout an
    // attacker cannot dodge by changing address) and `rc_login.account`.
    check_on_owner(
        &state,
        user_id.as_str(),
        &[
            (Op::Peek, Action::LoginFailed),
            (Op::Take, Action::LoginAccount),
        ],
    )
    .await?;
    match check_password(&state, &user_id, pw).await {
        Ok(()) => {}
        Err(e @ AuthError::BadCredentials) => {
            check_on_owner(
                &state,
                user_id.as_str(),
                &[(Op::Record, Action::LoginFailed)],
            )
            .await?;
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    }
    let new = NewSession {
        device_id,
        display_name,
        ip: client_ip(&req),
    };
    let uid = user_id.clone();
    let session = auth::on_user_shard(&state, &user_id, move |st| async move {
        let session = store::create_session(&st.db, &uid, &new).await?;
        super::keys::devices_changed(&st, &uid, vec![session.device_id.clone()]).await;
        Ok(session)
    })
    .await?;
    Ok(Response::json(
        200,
        &json!({
            "user_id": user_id,
            "access_token": session.access_token,
            "device_id": session.device_id,
            // Deprecated, but Synapse still sends it and old clients read it.
            "home_server": server,
        }),
    ))
}

/// Whether `pw` is `user_id`'s password (`BadCredentials` when not, or
/// when there is no such account or it has no password).
async fn check_password(
    state: &ShardState,
    user_id: &ruma::UserId,
    pw: String,
) -> Result<(), AuthError> {
    let info = store::login_info(&state.db, user_id)
        .await?
        .ok_or(AuthError::BadCredentials)?;
    if info.deactivated {
        return Err(AuthError::Deactivated);
    }
    let hash = info.password_hash.ok_or(AuthError::BadCredentials)?;
    if !password::verify(pw, hash).await? {
        return Err(AuthError::BadCredentials);
    }
    Ok(())
}

/// `POST /logout`: this token's device goes, and with it the token.
pub async fn logout(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let user = me.user_id.clone();
    auth::on_user_shard(&state, &me.user_id, move |st| async move {
        let dead =
            store::delete_devices(&st.db, &user, std::slice::from_ref(&me.device_id)).await?;
        auth::invalidate_tokens(&st, dead).await;
        super::keys::devices_removed(&st, &user, vec![me.device_id]).await;
        Ok(())
    })
    .await?;
    Ok(Response::json(200, &json!({})))
}

/// `POST /logout/all`: every device of the user.
pub async fn logout_all(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let user = me.user_id.clone();
    auth::on_user_shard(&state, &me.user_id, move |st| async move {
        let gone = device_ids(&st.db, &user, None).await?;
        let dead = store::delete_other_devices(&st.db, &user, None).await?;
        auth::invalidate_tokens(&st, dead).await;
        super::keys::devices_removed(&st, &user, gone).await;
        Ok(())
    })
    .await?;
    Ok(Response::json(200, &json!({})))
}

/// The ids of `user`'s devices but `keep`: those a bulk logout removes
/// (each gets its `deleted` device list update).
pub(super) async fn device_ids(
    db: &crate::db::Pool,
    user: &ruma::UserId,
    keep: Option<&str>,
) -> Result<Vec<String>, crate::auth::AuthError> {
    Ok(store::list_devices(db, user)
        .await?
        .into_iter()
        .map(|d| d.device_id)
        .filter(|d| Some(d.as_str()) != keep)
        .collect())
}
