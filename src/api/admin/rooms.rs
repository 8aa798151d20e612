//! Rooms in the admin API: `GET /v1/rooms` (list), `/v1/rooms/{roomId}`
//! (details), `/v1/rooms/{roomId}/members`, `DELETE /v1/rooms/{roomId}`
//! (answers when done) and `DELETE /v2/rooms/{roomId}` (answers a
//! `delete_id` to poll), `POST /v1/purge_history/{roomId}[/{eventId}]`
//! with `purge_history_status/{purgeId}`. Deletion and purges are
//! `rooms::purge`'s: the one writer of room history.

use std::rc::Rc;

use ruma::OwnedRoomId;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{dir_param, require_admin, task_id, uint_param};
use crate::api::util::optional_json_body;
use crate::http::{HandlerResult, MatrixError, Method, Request, Response, Router};
use crate::rooms::admin::{self as room_admin, RoomOrder, RoomQuery};
use crate::rooms::purge::{self, DeleteOptions, PurgePoint, TaskKind};
use crate::shard_state::ShardState;

pub fn routes(r: Router<ShardState>) -> Router<ShardState> {
    use Method::{Delete, Get, Post};
    const V1: &str = "/_synapse/admin/v1";
    const V2: &str = "/_synapse/admin/v2";
    r.route(Get, &format!("{V1}/rooms"), list)
        .route(Get, &format!("{V1}/rooms/{{roomId}}"), details)
        .route(Get, &format!("{V1}/rooms/{{roomId}}/members"), members)
        .route(Delete, &format!("{V1}/rooms/{{roomId}}"), delete_v1)
        .route(Delete, &format!("{V2}/rooms/{{roomId}}"), delete_v2)
        .route(
            Get,
            &format!("{V2}/rooms/{{roomId}}/delete_status"),
            delete_status_of_room,
        )
        .route(
            Get,
            &format!("{V2}/rooms/delete_status/{{deleteId}}"),
            delete_status,
        )
        .route(
            Post,
            &format!("{V1}/purge_history/{{roomId}}"),
            purge_history,
        )
        .route(
            Post,
            &format!("{V1}/purge_history/{{roomId}}/{{eventId}}"),
            purge_history,
        )
        .route(
            Get,
            &format!("{V1}/purge_history_status/{{purgeId}}"),
            purge_status,
        )
}

fn room_param(req: &Request) -> Result<OwnedRoomId, MatrixError> {
    let raw = req.param_str("roomId")?;
    OwnedRoomId::try_from(raw.as_ref())
        .map_err(|_| MatrixError::invalid_param(format!("{raw} is not a legal room ID")))
}

/// `GET /v1/rooms?from=&limit=&order_by=&dir=&search_term=`.
pub async fn list(state: Rc<ShardState>, req: Request) -> HandlerResult {
    require_admin(&state, &req).await?;
    let order_by = match req.query_param("order_by") {
        None => RoomOrder::Name,
        Some(o) => RoomOrder::parse(&o).ok_or_else(|| {
            MatrixError::invalid_param(format!("Unknown value for order_by: {o}"))
        })?,
    };
    let q = RoomQuery {
        from: uint_param(&req, "from", 0)?,
        limit: uint_param(&req, "limit", 100)?,
        order_by,
        backwards: dir_param(&req, false)?,
        search_term: req.query_param("search_term").map(|s| s.into_owned()),
    };
    if q.search_term.as_deref() == Some("") {
        return Err(MatrixError::invalid_param(
            "search_term cannot be an empty string",
        ));
    }
    let server = state.key.server_name.as_str();
    let (rooms, total) = room_admin::list_rooms(&state.db, server, &q).await?;
    let mut out = json!({ "offset": q.from, "rooms": rooms, "total_rooms": total });
    if q.from + q.limit < total {
        out["next_batch"] = json!(q.from + q.limit);
    }
    if q.from > 0 {
        out["prev_batch"] = json!((q.from - q.limit).max(0));
    }
    Ok(Response::json(200, &out))
}

/// `GET /v1/rooms/{roomId}`.
pub async fn details(state: Rc<ShardState>, req: Request) -> HandlerResult {
    require_admin(&state, &req).await?;
    let room = room_param(&req)?;
    let server = state.key.server_name.as_str();
    match room_admin::room_details(&state.db, server, room.as_str()).await? {
        Some(v) => Ok(Response::json(200, &v)),
        None => Err(MatrixError::not_found("Room not found")),
    }
}

/// `GET /v1/rooms/{roomId}/members`.
pub async fn members(state: Rc<ShardState>, req: Request) -> HandlerResult {
    require_admin(&state, &req).await?;
    let room = room_param(&req)?;
    if !room_admin::exists(&state.db, room.as_str()).await? {
        return Err(MatrixError::not_found("Room not found"));
    }
    let members = room_admin::joined_members(&state.db, room.as_str()).await?;
    let total = members.len();
    Ok(Response::json(
        200,
        &json!({ "members": members, "total": total }),
    ))
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
struct DeleteBody {
    #[serde(default)]
    block: bool,
    #[serde(default = "default_true")]
    purge: bool,
    new_room_user_id: Option<String>,
    #[serde(default)]
    force_purge: bool,
}

fn delete_options(
    req: &Request,
    requester: ruma::OwnedUserId,
) -> Result<DeleteOptions, MatrixError> {
    let body: DeleteBody = optional_json_body(req)?;
    if body.new_room_user_id.is_some() {
        return Err(MatrixError::invalid_param(
            "new_room_user_id is not supported: hearth makes no replacement room",
        ));
    }
    let _ = body.force_purge; // members always leave before a purge
    Ok(DeleteOptions {
        block: body.block,
        purge: body.purge,
        requester,
    })
}

/// `DELETE /v1/rooms/{roomId}`: answers the shutdown report when done.
pub async fn delete_v1(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = require_admin(&state, &req).await?;
    let room = room_param(&req)?;
    let opts = delete_options(&req, me.user_id)?;
    let server = state.key.server_name.to_string();
    let report = purge::delete_room(&state.mesh, &state.db, &server, &room, opts).await?;
    Ok(Response::json(200, &purge::report_json(&report)))
}

/// `DELETE /v2/rooms/{roomId}`: starts the deletion, answers its id.
pub async fn delete_v2(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = require_admin(&state, &req).await?;
    let room = room_param(&req)?;
    let opts = delete_options(&req, me.user_id)?;
    let id = task_id()?;
    purge::create_task(&state.db, &id, TaskKind::Delete, room.as_str()).await?;
    let st = state.clone();
    let tid = id.clone();
    // Detached: it runs to the end even if the client goes away.
    drop(monoio::spawn(async move {
        let server = st.key.server_name.to_string();
        let outcome = purge::delete_room(&st.mesh, &st.db, &server, &room, opts)
            .await
            .map(|r| purge::report_json(&r))
            .map_err(|e| e.to_string());
        if let Err(e) = purge::finish_task(&st.db, &tid, outcome).await {
            tracing::error!(task = %tid, error = %e, "could not record a room deletion's outcome");
        }
    }));
    Ok(Response::json(200, &json!({ "delete_id": id })))
}

fn delete_status_json(t: &purge::Task) -> Value {
    let mut v = json!({
        "delete_id": t.task_id,
        "room_id": t.room_id,
        "status": t.status,
        "shutdown_room": t.result.clone().unwrap_or_else(|| purge::report_json(&Default::default())),
    });
    if let Some(e) = &t.error {
        v["error"] = json!(e);
    }
    v
}

/// `GET /v2/rooms/delete_status/{deleteId}`.
pub async fn delete_status(state: Rc<ShardState>, req: Request) -> HandlerResult {
    require_admin(&state, &req).await?;
    let id = req.param_str("deleteId")?;
    match purge::get_task(&state.db, TaskKind::Delete, &id).await? {
        Some(t) => Ok(Response::json(200, &delete_status_json(&t))),
        None => Err(MatrixError::not_found(format!(
            "delete id '{id}' not found"
        ))),
    }
}

/// `GET /v2/rooms/{roomId}/delete_status`.
pub async fn delete_status_of_room(state: Rc<ShardState>, req: Request) -> HandlerResult {
    require_admin(&state, &req).await?;
    let room = room_param(&req)?;
    let tasks = purge::tasks_of_room(&state.db, TaskKind::Delete, room.as_str()).await?;
    if tasks.is_empty() {
        return Err(MatrixError::not_found(format!(
            "No delete task for room_id '{room}' found"
        )));
    }
    let results: Vec<Value> = tasks.iter().map(delete_status_json).collect();
    Ok(Response::json(200, &json!({ "results": results })))
}

#[derive(Deserialize)]
struct PurgeBody {
    #[serde(default)]
    delete_local_events: bool,
    purge_up_to_event_id: Option<String>,
    purge_up_to_ts: Option<i64>,
}

/// `POST /v1/purge_history/{roomId}[/{eventId}]`: starts the purge,
/// answers its id.
pub async fn purge_history(state: Rc<ShardState>, req: Request) -> HandlerResult {
    require_admin(&state, &req).await?;
    let room = room_param(&req)?;
    let body: PurgeBody = optional_json_body(&req)?;
    let path_event = req
        .raw_param("eventId")
        .map(|_| req.param_str("eventId").map(|e| e.into_owned()))
        .transpose()?;
    let point = match (
        path_event.or(body.purge_up_to_event_id),
        body.purge_up_to_ts,
    ) {
        (Some(e), _) => PurgePoint::Event(e),
        (None, Some(ts)) => PurgePoint::Ts(ts),
        (None, None) => {
            return Err(MatrixError::bad_json(
                "must specify purge_up_to_event_id or purge_up_to_ts",
            ))
        }
    };
    if !room_admin::exists(&state.db, room.as_str()).await? {
        return Err(MatrixError::not_found("there is no event to be purged"));
    }
    if let PurgePoint::Event(e) = &point {
        // Checked now, so a wrong id is this request's 404, not a failed task.
        if !crate::rooms::purge::event_in_room(&state.db, room.as_str(), e).await? {
            return Err(MatrixError::not_found("Event not found"));
        }
    }
    let id = task_id()?;
    purge::create_task(&state.db, &id, TaskKind::Purge, room.as_str()).await?;
    let st = state.clone();
    let tid = id.clone();
    let local = body.delete_local_events;
    drop(monoio::spawn(async move {
        let server = st.key.server_name.to_string();
        let outcome = purge::purge_history(&st.mesh, &room, point, local, server)
            .await
            .map(|n| json!({ "purged_events": n }))
            .map_err(|e| e.to_string());
        if let Err(e) = purge::finish_task(&st.db, &tid, outcome).await {
            tracing::error!(task = %tid, error = %e, "could not record a purge's outcome");
        }
    }));
    Ok(Response::json(200, &json!({ "purge_id": id })))
}

/// `GET /v1/purge_history_status/{purgeId}`.
pub async fn purge_status(state: Rc<ShardState>, req: Request) -> HandlerResult {
    require_admin(&state, &req).await?;
    let id = req.param_str("purgeId")?;
    match purge::get_task(&state.db, TaskKind::Purge, &id).await? {
        Some(t) => {
            let mut v = json!({ "status": t.status });
            if let Some(e) = &t.error {
                v["error"] = json!(e);
            }
            Ok(Response::json(200, &v))
        }
        None => Err(MatrixError::not_found(format!("purge id '{id}' not found"))),
    }
}
