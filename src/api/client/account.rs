//! Registration and account management (client-server API, "Account
//! registration and management"): `/register`, `/register/available`,
//! registration-token validity, `/account/whoami`, `/account/password`,
//! `/account/deactivate`.

use std::rc::Rc;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::uia::{self, Outcome, Uia};
use crate::auth::secret::secrets_equal;
use crate::auth::store::{self, NewSession, NewUser};
use crate::auth::{self, password, registration_tokens, tokens, username, AuthError};
use crate::http::{HandlerResult, MatrixError, Request, Response};
use crate::ratelimit::{check_on_owner, Action, Op};
use crate::shard_state::ShardState;

use crate::api::util::{client_ip, json_body, optional_json_body, validate_device_id};

fn ensure_registration_enabled(state: &ShardState) -> Result<(), MatrixError> {
    if state.config.registration.enabled {
        Ok(())
    } else {
        Err(MatrixError::forbidden("Registration has been disabled"))
    }
}

#[derive(Deserialize)]
struct RegisterBody {
    username: Option<String>,
    password: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    #[serde(default)]
    inhibit_login: bool,
    auth: Option<Value>,
}

/// `POST /register`: UIA with `m.login.dummy`, or
/// `m.login.registration_token` when `registration.token` is set.
pub async fn register(state: Rc<ShardState>, req: Request) -> HandlerResult {
    match req.query_param("kind").as_deref() {
        None | Some("user") => {}
        Some("guest") => return Err(MatrixError::forbidden("Guest access is disabled")),
        Some(_) => return Err(MatrixError::invalid_param("Invalid kind")),
    }
    ensure_registration_enabled(&state)?;
    // `rc_registration`: accounts created per IP. Checked first, counted
    // once an account exists, so the UIA round trips cost nothing.
    let ip = client_ip(&req);
    if let Some(ip) = &ip {
        check_on_owner(&state, ip, &[(Op::Peek, Action::Registration)]).await?;
    }
    let body: RegisterBody = req.json()?;
    let server = state.config.server_name.clone();
    // Checked before the auth flow (as Synapse does), so a client learns a
    // name is bad or taken before completing any stage.
    if let Some(name) = &body.username {
        let user_id = username::new_user_id(name, &server)?;
        if store::user_exists(&state.db, &user_id).await? {
            return Err(AuthError::UserInUse.into());
        }
    }
    if let Some(p) = &body.password {
        password::check_new_password(p)?;
    }
    if let Some(d) = &body.device_id {
        validate_device_id(d)?;
    }
    let token = state
        .config
        .registration
        .token
        .as_deref()
        .map(Arc::<str>::from);
    let now = crate::primitives::unix_ms_i64();
    let flows = if token.is_some() || registration_tokens::any_valid(&state.db, now).await? {
        vec![vec![uia::REGISTRATION_TOKEN]]
    } else {
        vec![vec![uia::DUMMY]]
    };
    let flow = Uia {
        flows,
        uri: &req.path,
        user: None,
        registration_token: token,
    };
    if let Outcome::Challenge(resp) = flow.check(&state, body.auth.as_ref()).await? {
        return Ok(resp);
    }
    let Some(pw) = body.password else {
        return Err(MatrixError::missing_param("Missing params: password"));
    };
    let hash = password::hash(pw).await?;
    let session = (!body.inhibit_login).then(|| NewSession {
        device_id: body.device_id,
        display_name: body.initial_device_display_name,
        ip: client_ip(&req),
    });
    // A generated name may collide (rarely): try a few.
    let attempts = if body.username.is_some() { 1 } else { 3 };
    let mut last = AuthError::UserInUse;
    for _ in 0..attempts {
        let localpart = match &body.username {
            Some(n) => n.clone(),
            None => tokens::new_localpart()?,
        };
        let user_id = username::new_user_id(&localpart, &server)?;
        let new = NewUser {
            user_id: user_id.clone(),
            password_hash: Some(hash.clone()),
            admin: false,
            // Synapse's default display name is the localpart.
            displayname: Some(localpart),
        };
        let s = session.clone();
        let created = auth::on_user_shard(&state, &user_id, move |st| async move {
            store::create_user(&st.db, &new, s.as_ref()).await
        })
        .await;
        match created {
            Ok(created) => {
                if let Some(ip) = &ip {
                    check_on_owner(&state, ip, &[(Op::Record, Action::Registration)]).await?;
                }
                let mut out = json!({ "user_id": user_id, "home_server": server });
                if let Some(c) = created {
                    out["access_token"] = c.access_token.into();
                    out["device_id"] = c.device_id.into();
                }
                tracing::info!(user = %user_id, "registered user");
                return Ok(Response::json(200, &out));
            }
            Err(e @ AuthError::UserInUse) => last = e,
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.into())
}

/// `GET /register/available?username=`.
pub async fn available(state: Rc<ShardState>, req: Request) -> HandlerResult {
    ensure_registration_enabled(&state)?;
    let name = req
        .query_param("username")
        .ok_or_else(|| MatrixError::missing_param("Missing 'username'"))?;
    let user_id = username::new_user_id(&name, &state.config.server_name)?;
    if store::user_exists(&state.db, &user_id).await? {
        return Err(AuthError::UserInUse.into());
    }
    Ok(Response::json(200, &json!({ "available": true })))
}

/// `GET /v1/register/m.login.registration_token/validity?token=`.
pub async fn token_validity(state: Rc<ShardState>, req: Request) -> HandlerResult {
    ensure_registration_enabled(&state)?;
    let given = req
        .query_param("token")
        .ok_or_else(|| MatrixError::missing_param("Missing 'token'"))?;
    let now = crate::primitives::unix_ms_i64();
    let valid = state
        .config
        .registration
        .token
        .as_deref()
        .is_some_and(|ours| secrets_equal(given.as_bytes(), ours.as_bytes()))
        || registration_tokens::is_valid(&state.db, &given, now).await?;
    Ok(Response::json(200, &json!({ "valid": valid })))
}

/// `GET /account/whoami`.
pub async fn whoami(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    Ok(Response::json(
        200,
        &json!({ "user_id": me.user_id, "device_id": me.device_id, "is_guest": me.is_guest }),
    ))
}

/// `POST /user/{userId}/openid/request_token` (client-server "OpenID"): a
/// token a third party checks with our federation `/openid/userinfo`.
pub async fn openid_request_token(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    if req.param_str("userId")? != me.user_id.as_str() {
        return Err(MatrixError::forbidden(
            "Cannot request OpenID tokens for other users",
        ));
    }
    let _: Value = optional_json_body(&req)?;
    let now = crate::primitives::unix_ms_i64();
    let token = auth::openid::issue(&state.db, me.user_id.as_str(), now).await?;
    Ok(Response::json(
        200,
        &json!({
            "access_token": token,
            "token_type": "Bearer",
            "matrix_server_name": state.config.server_name,
            "expires_in": auth::openid::VALIDITY_MS / 1000,
        }),
    ))
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
struct PasswordBody {
    new_password: Option<String>,
    #[serde(default = "default_true")]
    logout_devices: bool,
    auth: Option<Value>,
}

/// `POST /account/password`: re-authenticate with the old password (UIA),
/// set the new one; other devices are logged out unless
/// `logout_devices: false`.
pub async fn change_password(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let body: PasswordBody = json_body(&req)?;
    let Some(new_password) = body.new_password else {
        return Err(MatrixError::missing_param("Missing 'new_password'"));
    };
    password::check_new_password(&new_password)?;
    let flow = Uia {
        flows: vec![vec![uia::PASSWORD]],
        uri: &req.path,
        user: Some(&me.user_id),
        registration_token: None,
    };
    if let Outcome::Challenge(resp) = flow.check(&state, body.auth.as_ref()).await? {
        return Ok(resp);
    }
    let hash = password::hash(new_password).await?;
    let user = me.user_id.clone();
    let keep = me.device_id.clone();
    let logout = body.logout_devices;
    auth::on_user_shard(&state, &me.user_id, move |st| async move {
        store::set_password_hash(&st.db, &user, &hash).await?;
        if logout {
            let gone = super::login::device_ids(&st.db, &user, Some(&keep)).await?;
            let dead = store::delete_other_devices(&st.db, &user, Some(&keep)).await?;
            auth::invalidate_tokens(&st, dead).await;
            super::keys::devices_removed(&st, &user, gone).await;
        }
        Ok(())
    })
    .await?;
    Ok(Response::json(200, &json!({})))
}

#[derive(Deserialize)]
struct DeactivateBody {
    auth: Option<Value>,
}

/// `POST /account/deactivate`: UIA, then the account loses its password,
/// profile, devices and tokens; the id stays taken.
pub async fn deactivate(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let body: DeactivateBody = optional_json_body(&req)?;
    let flow = Uia {
        flows: vec![vec![uia::PASSWORD]],
        uri: &req.path,
        user: Some(&me.user_id),
        registration_token: None,
    };
    if let Outcome::Challenge(resp) = flow.check(&state, body.auth.as_ref()).await? {
        return Ok(resp);
    }
    let user = me.user_id.clone();
    auth::on_user_shard(&state, &me.user_id, move |st| async move {
        let dead = store::deactivate(&st.db, &user).await?;
        auth::invalidate_tokens(&st, dead).await;
        Ok(())
    })
    .await?;
    tracing::info!(user = %me.user_id, "deactivated user");
    Ok(Response::json(
        200,
        &json!({ "id_server_unbind_result": "no-support" }),
    ))
}
