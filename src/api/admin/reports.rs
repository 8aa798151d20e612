//! Event reports: the client-server `POST /rooms/{roomId}/report/{eventId}`
//! ("Reporting content") and the admin API's `GET /v1/event_reports`,
//! `GET`/`DELETE /v1/event_reports/{reportId}`.

use std::rc::Rc;

use ruma::OwnedRoomId;
use serde::Deserialize;
use serde_json::json;

use super::{dir_param, require_admin, uint_param};
use crate::api::util::optional_json_body;
use crate::auth;
use crate::http::{HandlerResult, MatrixError, Method, Request, Response, Router};
use crate::rooms::reports::{self, ReportQuery};
use crate::shard_state::ShardState;

const BASE: &str = "/_synapse/admin/v1/event_reports";

pub fn routes(r: Router<ShardState>) -> Router<ShardState> {
    use Method::{Delete, Get, Post};
    let r = r
        .route(Get, BASE, list)
        .route(Get, &format!("{BASE}/{{reportId}}"), get)
        .route(Delete, &format!("{BASE}/{{reportId}}"), delete);
    let path = "/rooms/{roomId}/report/{eventId}";
    r.route(Post, &format!("/_matrix/client/v3{path}"), report)
        .route(Post, &format!("/_matrix/client/r0{path}"), report)
}

#[derive(Deserialize)]
struct ReportBody {
    reason: Option<String>,
    score: Option<i64>,
}

/// `POST /rooms/{roomId}/report/{eventId}`.
pub async fn report(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let raw = req.param_str("roomId")?;
    let room = OwnedRoomId::try_from(raw.as_ref())
        .map_err(|_| MatrixError::invalid_param("Invalid room id"))?;
    let event = req.param_str("eventId")?;
    let body: ReportBody = optional_json_body(&req)?;
    if body.reason.as_ref().is_some_and(|r| r.len() > 1000) {
        return Err(MatrixError::bad_json("Param 'reason' is too long"));
    }
    reports::create(
        &state.db,
        room.as_str(),
        &event,
        me.user_id.as_str(),
        body.reason,
        body.score,
    )
    .await?;
    Ok(Response::json(200, &json!({})))
}

/// `GET /v1/event_reports?from=&limit=&dir=&room_id=&user_id=`.
pub async fn list(state: Rc<ShardState>, req: Request) -> HandlerResult {
    require_admin(&state, &req).await?;
    let q = ReportQuery {
        from: uint_param(&req, "from", 0)?,
        limit: uint_param(&req, "limit", 100)?,
        forwards: !dir_param(&req, true)?,
        room_id: req.query_param("room_id").map(|s| s.into_owned()),
        user_id: req.query_param("user_id").map(|s| s.into_owned()),
    };
    let (list, total) = reports::list(&state.db, &q).await?;
    let mut out = json!({ "event_reports": list, "total": total });
    let next = q.from + list.len() as i64;
    if next < total && !list.is_empty() {
        out["next_token"] = json!(next);
    }
    Ok(Response::json(200, &out))
}

fn report_id(req: &Request) -> Result<i64, MatrixError> {
    req.param_str("reportId")?
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            MatrixError::invalid_param(
                "The report_id parameter must be a string representing a positive integer.",
            )
        })
}

/// `GET /v1/event_reports/{reportId}`.
pub async fn get(state: Rc<ShardState>, req: Request) -> HandlerResult {
    require_admin(&state, &req).await?;
    let id = report_id(&req)?;
    match reports::get(&state.db, id).await? {
        Some(v) => Ok(Response::json(200, &v)),
        None => Err(MatrixError::not_found("Event report not found")),
    }
}

/// `DELETE /v1/event_reports/{reportId}`.
pub async fn delete(state: Rc<ShardState>, req: Request) -> HandlerResult {
    require_admin(&state, &req).await?;
    let id = report_id(&req)?;
    if reports::delete(&state.db, id).await? {
        Ok(Response::json(200, &json!({})))
    } else {
        Err(MatrixError::not_found("Event report not found"))
    }
}
