//! Device management (client-server API, modules, "Device Management").

use std::rc::Rc;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::uia::{self, Outcome, Uia};
use crate::auth::store;
use crate::auth::{self, Requester};
use crate::http::{HandlerResult, MatrixError, Request, Response};
use crate::shard_state::ShardState;

use crate::api::util::{json_body, optional_json_body};

/// Synapse's limit on device display names.
const MAX_DEVICE_NAME_LEN: usize = 100;

/// `GET /devices`.
pub async fn list(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let devices = store::list_devices(&state.db, &me.user_id).await?;
    Ok(Response::json(200, &json!({ "devices": devices })))
}

/// `GET /devices/{deviceId}`.
pub async fn get(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let id = req.param_str("deviceId")?;
    match store::get_device(&state.db, &me.user_id, &id).await? {
        Some(d) => Ok(Response::json(200, &d)),
        None => Err(MatrixError::not_found("Device not found")),
    }
}

/// `PUT /devices/{deviceId}`: rename.
pub async fn update(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let id = req.param_str("deviceId")?.into_owned();
    let body: Map<String, Value> = json_body(&req)?;
    // Absent: nothing to change (as Synapse); null: clear the name.
    let name = match body.get("display_name") {
        None => {
            return match store::get_device(&state.db, &me.user_id, &id).await? {
                Some(_) => Ok(Response::json(200, &json!({}))),
                None => Err(MatrixError::not_found("Device not found")),
            }
        }
        Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(MatrixError::bad_json("'display_name' must be a string")),
    };
    if name
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_DEVICE_NAME_LEN)
    {
        return Err(MatrixError::too_large(format!(
            "Device display name is too long (max {MAX_DEVICE_NAME_LEN})"
        ))
        .with_status(400));
    }
    let user = me.user_id.clone();
    let found = auth::on_user_shard(&state, &me.user_id, move |st| async move {
        let found = store::set_device_name(&st.db, &user, &id, name.as_deref()).await?;
        if found {
            super::keys::devices_changed(&st, &user, vec![id]).await;
        }
        Ok(found)
    })
    .await?;
    if !found {
        return Err(MatrixError::not_found("Device not found"));
    }
    Ok(Response::json(200, &json!({})))
}

#[derive(Deserialize)]
struct DeleteBody {
    auth: Option<Value>,
}

#[derive(Deserialize)]
struct DeleteManyBody {
    devices: Vec<String>,
    auth: Option<Value>,
}

/// UIA (`m.login.password`), then delete the devices and their tokens.
async fn delete_with_uia(
    state: &Rc<ShardState>,
    req: &Request,
    me: Requester,
    auth_dict: Option<&Value>,
    devices: Vec<String>,
) -> HandlerResult {
    let flow = Uia {
        flows: vec![vec![uia::PASSWORD]],
        uri: &req.path,
        user: Some(&me.user_id),
        registration_token: None,
    };
    if let Outcome::Challenge(resp) = flow.check(state, auth_dict).await? {
        return Ok(resp);
    }
    let user = me.user_id.clone();
    auth::on_user_shard(state, &me.user_id, move |st| async move {
        let dead = store::delete_devices(&st.db, &user, &devices).await?;
        auth::invalidate_tokens(&st, dead).await;
        super::keys::devices_removed(&st, &user, devices).await;
        Ok(())
    })
    .await?;
    Ok(Response::json(200, &json!({})))
}

/// `DELETE /devices/{deviceId}`: 200 even if it was already gone (spec).
pub async fn delete(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let id = req.param_str("deviceId")?.into_owned();
    let body: DeleteBody = optional_json_body(&req)?;
    delete_with_uia(&state, &req, me, body.auth.as_ref(), vec![id]).await
}

/// `POST /delete_devices`.
pub async fn delete_many(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let body: DeleteManyBody = json_body(&req)?;
    delete_with_uia(&state, &req, me, body.auth.as_ref(), body.devices).await
}
