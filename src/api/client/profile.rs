//! Profiles (client-server API, "Profiles"): display name and avatar URL of
//! local users, and of remote ones through their servers.
//!
//! A change is also sent into the user's `m.room.member` event in every
//! room they are joined to (spec "Events on change of profile
//! information"; `rooms::member_profile`).

use std::rc::Rc;

use ruma::{OwnedUserId, UserId};
use serde_json::{json, Map, Value};

use crate::auth;
use crate::auth::store::{self, ProfileField};
use crate::federation::profile::{self as remote_profile, ProfileError};
use crate::http::{HandlerResult, MatrixError, Request, Response};
use crate::rooms::member_profile;
use crate::shard_state::ShardState;

/// Synapse's limits.
const MAX_DISPLAYNAME_LEN: usize = 256;
const MAX_AVATAR_URL_LEN: usize = 1000;

impl ProfileField {
    fn key(self) -> &'static str {
        match self {
            ProfileField::Displayname => "displayname",
            ProfileField::AvatarUrl => "avatar_url",
        }
    }
}

fn target_user(req: &Request) -> Result<OwnedUserId, MatrixError> {
    let raw = req.param_str("userId")?;
    let user =
        UserId::parse(raw.as_ref()).map_err(|_| MatrixError::invalid_param("Invalid user id"))?;
    Ok(user)
}

/// `user`'s profile; a remote user's is asked of their server (`field`
/// only, when one is wanted), as the spec's "GET /profile" says.
async fn load(
    state: &ShardState,
    user: &UserId,
    field: Option<ProfileField>,
) -> Result<store::Profile, MatrixError> {
    if user.server_name().as_str() != state.config.server_name {
        return remote_profile::query(&state.federation, user, field.map(ProfileField::key))
            .await
            .map_err(|e| match e {
                ProfileError::NotFound => MatrixError::not_found("Profile was not found"),
                ProfileError::Forbidden => MatrixError::forbidden("Profile lookup refused"),
                ProfileError::Unreachable(m) => MatrixError::new(502, "M_UNKNOWN", m),
            });
    }
    store::get_profile(&state.db, user)
        .await?
        .ok_or_else(|| MatrixError::not_found("Profile was not found"))
}

/// `GET /profile/{userId}`.
pub async fn get_all(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let user = target_user(&req)?;
    let p = load(&state, &user, None).await?;
    Ok(Response::json(200, &p))
}

async fn get_field(state: Rc<ShardState>, req: Request, field: ProfileField) -> HandlerResult {
    let user = target_user(&req)?;
    let p = load(&state, &user, Some(field)).await?;
    let value = match field {
        ProfileField::Displayname => p.displayname,
        ProfileField::AvatarUrl => p.avatar_url,
    };
    let mut out = Map::new();
    if let Some(v) = value {
        out.insert(field.key().into(), v.into());
    }
    Ok(Response::json(200, &Value::Object(out)))
}

async fn set_field(state: Rc<ShardState>, req: Request, field: ProfileField) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let user = target_user(&req)?;
    if user != me.user_id {
        return Err(MatrixError::forbidden(format!(
            "Cannot set another user's {}",
            field.key()
        )));
    }
    let body: Map<String, Value> = req.json()?;
    let value = match body.get(field.key()) {
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) => None,
        Some(_) => {
            return Err(MatrixError::bad_json(format!(
                "'{}' must be a string",
                field.key()
            )))
        }
        None => {
            return Err(MatrixError::missing_param(format!(
                "Missing '{}'",
                field.key()
            )))
        }
    };
    let max = match field {
        ProfileField::Displayname => MAX_DISPLAYNAME_LEN,
        ProfileField::AvatarUrl => MAX_AVATAR_URL_LEN,
    };
    if value.as_ref().is_some_and(|v| v.chars().count() > max) {
        return Err(MatrixError::bad_json(format!(
            "'{}' is too long (max {max})",
            field.key()
        )));
    }
    let uid = me.user_id.clone();
    auth::on_user_shard(&state, &me.user_id, move |st| async move {
        store::set_profile_field(&st.db, &uid, field, value.as_deref()).await
    })
    .await?;
    // Rooms that refuse the new member event are logged, not fatal.
    match member_profile::propagate(&state.mesh, &state.db, &me.user_id).await {
        Ok(r) if r.failed > 0 => {
            tracing::warn!(user = %me.user_id, failed = r.failed, "profile not updated in some rooms")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(user = %me.user_id, error = %e, "profile not updated in rooms"),
    }
    Ok(Response::json(200, &json!({})))
}

pub async fn get_displayname(state: Rc<ShardState>, req: Request) -> HandlerResult {
    get_field(state, req, ProfileField::Displayname).await
}

pub async fn get_avatar_url(state: Rc<ShardState>, req: Request) -> HandlerResult {
    get_field(state, req, ProfileField::AvatarUrl).await
}

pub async fn set_displayname(state: Rc<ShardState>, req: Request) -> HandlerResult {
    set_field(state, req, ProfileField::Displayname).await
}

pub async fn set_avatar_url(state: Rc<ShardState>, req: Request) -> HandlerResult {
    set_field(state, req, ProfileField::AvatarUrl).await
}
