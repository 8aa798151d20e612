//! Accounts in the admin API: `GET /v1/server_version`, `/v2/users` (list,
//! query, create or modify), `/v1/deactivate`, `/v1/reset_password`,
//! `/v1/whois` (and the client-server `GET /admin/whois/{userId}`),
//! `/v1/users/{userId}/admin`. Answers in Synapse's shapes; fields hearth
//! has no data for (threepids, consent, user types, locks) have Synapse's
//! "none" values.

use std::rc::Rc;

use ruma::{OwnedUserId, UserId};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{bool_param, dir_param, require_admin, uint_param};
use crate::api::util::json_body;
use crate::auth::admin::{self as accounts, UserInfo, UserOrder, UserQuery};
use crate::auth::store::{self, NewUser, ProfileField};
use crate::auth::{self, password, username, AuthError};
use crate::http::{HandlerResult, MatrixError, Method, Request, Response, Router};
use crate::shard_state::ShardState;

pub fn routes(r: Router<ShardState>) -> Router<ShardState> {
    use Method::{Get, Post, Put};
    const V1: &str = "/_synapse/admin/v1";
    const V2: &str = "/_synapse/admin/v2";
    r.route(Get, &format!("{V1}/server_version"), server_version)
        .route(Get, &format!("{V2}/users"), list)
        .route(Get, &format!("{V2}/users/{{userId}}"), query)
        .route(Put, &format!("{V2}/users/{{userId}}"), put)
        .route(Post, &format!("{V1}/deactivate/{{userId}}"), deactivate)
        .route(
            Post,
            &format!("{V1}/reset_password/{{userId}}"),
            reset_password,
        )
        .route(Get, &format!("{V1}/whois/{{userId}}"), whois)
        .route(Get, "/_matrix/client/v3/admin/whois/{userId}", whois_client)
        .route(Get, "/_matrix/client/r0/admin/whois/{userId}", whois_client)
        .route(Get, &format!("{V1}/users/{{userId}}/admin"), get_admin)
        .route(Put, &format!("{V1}/users/{{userId}}/admin"), put_admin)
}

/// `GET /v1/server_version` (no auth, as in Synapse).
pub async fn server_version(_state: Rc<ShardState>, _req: Request) -> HandlerResult {
    Ok(Response::json(
        200,
        &json!({ "server_version": format!("hearth {}", env!("CARGO_PKG_VERSION")) }),
    ))
}

/// The `{userId}` path parameter, which must be one of our users.
fn local_user(state: &ShardState, req: &Request, what: &str) -> Result<OwnedUserId, MatrixError> {
    let raw = req.param_str("userId")?;
    let user = UserId::parse(raw.as_ref())
        .map_err(|_| MatrixError::invalid_param(format!("Invalid user id: {raw}")))?;
    if user.server_name().as_str() != state.key.server_name.as_str() {
        return Err(MatrixError::bad_request(what.to_owned()));
    }
    Ok(user)
}

/// A list entry (`GET /v2/users`): `creation_ts` in ms there.
fn list_entry(u: &UserInfo) -> Value {
    json!({
        "name": u.name,
        "user_type": null,
        "is_guest": u.is_guest,
        "admin": u.admin,
        "deactivated": u.deactivated,
        "shadow_banned": false,
        "displayname": u.displayname,
        "avatar_url": u.avatar_url,
        "creation_ts": u.creation_ts,
        "erased": false,
        "last_seen_ts": u.last_seen_ts,
        "locked": false,
    })
}

/// One account's details (`GET`/`PUT /v2/users/{userId}`): Synapse gives
/// `creation_ts` in seconds here.
fn details(u: &UserInfo) -> Value {
    json!({
        "name": u.name,
        "admin": u.admin,
        "deactivated": u.deactivated,
        "locked": false,
        "shadow_banned": false,
        "creation_ts": u.creation_ts / 1000,
        "appservice_id": null,
        "consent_server_notice_sent": null,
        "consent_version": null,
        "consent_ts": null,
        "user_type": null,
        "is_guest": u.is_guest,
        "suspended": false,
        "displayname": u.displayname,
        "avatar_url": u.avatar_url,
        "threepids": [],
        "external_ids": [],
        "erased": false,
        "last_seen_ts": u.last_seen_ts,
    })
}

/// `GET /v2/users?from=&limit=&guests=&deactivated=&admins=&name=&user_id=&order_by=&dir=`.
pub async fn list(state: Rc<ShardState>, req: Request) -> HandlerResult {
    require_admin(&state, &req).await?;
    let order_by = match req.query_param("order_by") {
        None => UserOrder::Name,
        Some(o) => UserOrder::parse(&o).ok_or_else(|| {
            MatrixError::invalid_param(
                "Query parameter 'order_by' must be one of ['name', 'displayname', 'is_guest', \
                 'admin', 'deactivated', 'user_type', 'avatar_url', 'shadow_banned', \
                 'creation_ts', 'last_seen_ts', 'locked']",
            )
        })?,
    };
    let q = UserQuery {
        from: uint_param(&req, "from", 0)?,
        limit: uint_param(&req, "limit", 100)?,
        name: req.query_param("name").map(|s| s.into_owned()),
        user_id: req.query_param("user_id").map(|s| s.into_owned()),
        guests: bool_param(&req, "guests")?.unwrap_or(true),
        // `deactivated=true` includes them; by default only active ones.
        deactivated: match bool_param(&req, "deactivated")? {
            Some(true) => None,
            _ => Some(false),
        },
        admins: bool_param(&req, "admins")?,
        order_by,
        descending: dir_param(&req, false)?,
    };
    let (users, total) = accounts::list_users(&state.db, &q).await?;
    let mut out = json!({
        "users": users.iter().map(list_entry).collect::<Vec<_>>(),
        "total": total,
    });
    let next = q.from + users.len() as i64;
    if next < total && !users.is_empty() {
        out["next_token"] = json!(next.to_string());
    }
    Ok(Response::json(200, &out))
}

async fn user_or_404(state: &ShardState, user: &UserId) -> Result<UserInfo, MatrixError> {
    accounts::get_user(&state.db, user)
        .await?
        .ok_or_else(|| MatrixError::not_found("User not found"))
}

/// `GET /v2/users/{userId}`.
pub async fn query(state: Rc<ShardState>, req: Request) -> HandlerResult {
    require_admin(&state, &req).await?;
    let user = local_user(&state, &req, "Can only look up local users")?;
    Ok(Response::json(
        200,
        &details(&user_or_404(&state, &user).await?),
    ))
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
struct PutUser {
    password: Option<String>,
    #[serde(default = "default_true")]
    logout_devices: bool,
    displayname: Option<String>,
    avatar_url: Option<String>,
    admin: Option<bool>,
    deactivated: Option<bool>,
}

/// `PUT /v2/users/{userId}`: creates the account (201) or changes it
/// (200); either way the answer is its details.
pub async fn put(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = require_admin(&state, &req).await?;
    let user = local_user(
        &state,
        &req,
        "This endpoint can only be used with local users",
    )?;
    let body: PutUser = json_body(&req)?;
    let hash = match &body.password {
        Some(p) => {
            if p.is_empty() {
                return Err(MatrixError::invalid_param("Invalid password"));
            }
            password::check_new_password(p)?;
            Some(password::hash(p.clone()).await?)
        }
        None => None,
    };
    let existing = accounts::get_user(&state.db, &user).await?;
    let created = existing.is_none();
    match existing {
        None => {
            username::validate_localpart(user.localpart(), state.key.server_name.as_str())?;
            let new = NewUser {
                user_id: user.clone(),
                password_hash: hash,
                admin: body.admin.unwrap_or(false),
                displayname: Some(
                    body.displayname
                        .clone()
                        .unwrap_or_else(|| user.localpart().to_owned()),
                ),
            };
            auth::on_user_shard(&state, &user, move |st| async move {
                store::create_user(&st.db, &new, None).await.map(|_| ())
            })
            .await?;
            if let Some(a) = &body.avatar_url {
                store::set_profile_field(&state.db, &user, ProfileField::AvatarUrl, Some(a))
                    .await?;
            }
            if body.deactivated == Some(true) {
                deactivate_account(&state, &user).await?;
            }
            tracing::info!(user = %user, by = %me.user_id, "admin created user");
        }
        Some(old) => {
            if body.admin == Some(false) && user == me.user_id {
                return Err(MatrixError::bad_request("You may not demote yourself."));
            }
            if body.deactivated == Some(false) && old.deactivated {
                let has_password = store::login_info(&state.db, &user)
                    .await?
                    .and_then(|i| i.password_hash)
                    .is_some();
                if hash.is_none() && !has_password {
                    return Err(MatrixError::bad_request(
                        "Must provide a password to re-activate an account.",
                    ));
                }
                accounts::reactivate(&state.db, &user).await?;
            }
            if let Some(h) = hash {
                set_password(&state, &user, h, body.logout_devices).await?;
            }
            if let Some(d) = &body.displayname {
                store::set_profile_field(&state.db, &user, ProfileField::Displayname, Some(d))
                    .await?;
            }
            if let Some(a) = &body.avatar_url {
                store::set_profile_field(&state.db, &user, ProfileField::AvatarUrl, Some(a))
                    .await?;
            }
            if let Some(a) = body.admin {
                accounts::set_admin(&state.db, &user, a).await?;
            }
            if body.deactivated == Some(true) && !old.deactivated {
                deactivate_account(&state, &user).await?;
            }
        }
    }
    let info = user_or_404(&state, &user).await?;
    Ok(Response::json(
        if created { 201 } else { 200 },
        &details(&info),
    ))
}

/// New password; with `logout_devices` every device (and token) goes.
async fn set_password(
    state: &ShardState,
    user: &OwnedUserId,
    hash: String,
    logout_devices: bool,
) -> Result<(), MatrixError> {
    let u = user.clone();
    auth::on_user_shard(state, user, move |st| async move {
        store::set_password_hash(&st.db, &u, &hash).await?;
        if logout_devices {
            let gone: Vec<String> = store::list_devices(&st.db, &u)
                .await?
                .into_iter()
                .map(|d| d.device_id)
                .collect();
            let dead = store::delete_other_devices(&st.db, &u, None).await?;
            auth::invalidate_tokens(&st, dead).await;
            crate::api::client::keys::devices_removed(&st, &u, gone).await;
        }
        Ok(())
    })
    .await?;
    Ok(())
}

/// Deactivation as an admin does it (Synapse): the account loses its
/// password, profile, devices and tokens, and leaves its rooms.
async fn deactivate_account(state: &ShardState, user: &OwnedUserId) -> Result<(), MatrixError> {
    let rooms = crate::rooms::client::joined_rooms(&state.db, user.as_str()).await?;
    for room in rooms {
        let Ok(room_id) = ruma::OwnedRoomId::try_from(room.as_str()) else {
            continue;
        };
        if let Err(e) = crate::rooms::client::set_membership(
            &state.mesh,
            room_id,
            user.clone(),
            user.as_str(),
            "leave",
            None,
        )
        .await
        {
            tracing::warn!(user = %user, room = %room, error = %e, "deactivated user could not leave a room");
        }
    }
    let u = user.clone();
    auth::on_user_shard(state, user, move |st| async move {
        let dead = store::deactivate(&st.db, &u).await?;
        auth::invalidate_tokens(&st, dead).await;
        Ok::<_, AuthError>(())
    })
    .await?;
    tracing::info!(user = %user, "admin deactivated user");
    Ok(())
}

#[derive(Deserialize)]
struct DeactivateBody {
    #[serde(default)]
    #[allow(dead_code)] // a deactivation already erases the profile
    erase: bool,
}

/// `POST /v1/deactivate/{userId}` with `{"erase": bool}`.
pub async fn deactivate(state: Rc<ShardState>, req: Request) -> HandlerResult {
    require_admin(&state, &req).await?;
    let user = local_user(&state, &req, "Can only deactivate local users")?;
    let _: DeactivateBody = crate::api::util::optional_json_body(&req)?;
    user_or_404(&state, &user).await?;
    deactivate_account(&state, &user).await?;
    Ok(Response::json(
        200,
        &json!({ "id_server_unbind_result": "success" }),
    ))
}

#[derive(Deserialize)]
struct ResetBody {
    new_password: Option<String>,
    #[serde(default = "default_true")]
    logout_devices: bool,
}

/// `POST /v1/reset_password/{userId}`.
pub async fn reset_password(state: Rc<ShardState>, req: Request) -> HandlerResult {
    require_admin(&state, &req).await?;
    let user = local_user(&state, &req, "Can only reset passwords of local users")?;
    let body: ResetBody = json_body(&req)?;
    let Some(pw) = body.new_password else {
        return Err(MatrixError::missing_param("Missing params: new_password"));
    };
    password::check_new_password(&pw)?;
    user_or_404(&state, &user).await?;
    let hash = password::hash(pw).await?;
    set_password(&state, &user, hash, body.logout_devices).await?;
    Ok(Response::json(200, &json!({})))
}

/// Synapse's whois shape: every connection under one unnamed device and
/// session. hearth keeps a device's last IP and time, not user agents.
async fn whois_of(state: &ShardState, user: &UserId) -> HandlerResult {
    let conns = accounts::connections(&state.db, user).await?;
    let connections: Vec<Value> = conns
        .iter()
        .filter_map(|c| {
            c.ip.as_ref().map(
                |ip| json!({ "ip": ip, "last_seen": c.last_seen.unwrap_or(0), "user_agent": "" }),
            )
        })
        .collect();
    Ok(Response::json(
        200,
        &json!({
            "user_id": user,
            "devices": { "": { "sessions": [{ "connections": connections }] } },
        }),
    ))
}

/// `GET /_synapse/admin/v1/whois/{userId}`.
pub async fn whois(state: Rc<ShardState>, req: Request) -> HandlerResult {
    require_admin(&state, &req).await?;
    let user = local_user(&state, &req, "Can only whois a local user")?;
    whois_of(&state, &user).await
}

/// `GET /_matrix/client/v3/admin/whois/{userId}` (client-server "Server
/// administration"): admins, or users asking about themselves.
pub async fn whois_client(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let user = local_user(&state, &req, "Can only whois a local user")?;
    if user != me.user_id && !accounts::is_admin(&state.db, &me.user_id).await? {
        return Err(MatrixError::forbidden("You are not a server admin"));
    }
    whois_of(&state, &user).await
}

/// `GET /v1/users/{userId}/admin`.
pub async fn get_admin(state: Rc<ShardState>, req: Request) -> HandlerResult {
    require_admin(&state, &req).await?;
    let user = local_user(
        &state,
        &req,
        "Only local users can be admins of this homeserver",
    )?;
    let info = user_or_404(&state, &user).await?;
    Ok(Response::json(200, &json!({ "admin": info.admin })))
}

#[derive(Deserialize)]
struct AdminBody {
    admin: bool,
}

/// `PUT /v1/users/{userId}/admin` with `{"admin": bool}`.
pub async fn put_admin(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = require_admin(&state, &req).await?;
    let user = local_user(
        &state,
        &req,
        "Only local users can be admins of this homeserver",
    )?;
    let body: AdminBody = json_body(&req)?;
    if user == me.user_id && !body.admin {
        return Err(MatrixError::bad_request("You may not demote yourself."));
    }
    user_or_404(&state, &user).await?;
    accounts::set_admin(&state.db, &user, body.admin).await?;
    Ok(Response::json(200, &json!({})))
}
