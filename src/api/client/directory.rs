//! Room aliases and the published room directory (client-server API
//! "Room aliases", "Published room directory"): thin handlers over
//! `rooms::alias` and `rooms::directory`, which read and write PostgreSQL
//! from the shard that took the request.

use std::rc::Rc;

use ruma::canonical_json::CanonicalJsonValue;
use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::auth::{self, Requester};
use crate::http::{HandlerResult, MatrixError, Request, Response};
use crate::rooms::alias::{self, AliasError};
use crate::rooms::directory::{self, ListQuery, ListToken};
use crate::rooms::member_profile::state_content;
use crate::rooms::{client, EventRequest, RoomError};
use crate::shard_state::ShardState;

use crate::api::util::{json_body, optional_json_body};

fn room_param(req: &Request) -> Result<OwnedRoomId, MatrixError> {
    let raw = req.param_str("roomId")?;
    OwnedRoomId::try_from(raw.as_ref()).map_err(|_| MatrixError::invalid_param("Invalid room id"))
}

fn alias_error(e: AliasError) -> MatrixError {
    e.into_room_error().into()
}

/// The `{roomAlias}` path parameter, any server.
fn alias_param(req: &Request) -> Result<OwnedRoomAliasId, MatrixError> {
    alias::parse(&req.param_str("roomAlias")?).map_err(alias_error)
}

fn is_local(state: &ShardState, a: &OwnedRoomAliasId) -> bool {
    a.server_name().as_str() == state.config.server_name
}

/// Resolves an alias to a room id: local aliases from the table; others
/// would need federation, so they are not found (404).
pub async fn resolve(state: &ShardState, a: &OwnedRoomAliasId) -> Result<OwnedRoomId, MatrixError> {
    let not_found = || MatrixError::not_found(format!("Room alias {a} not found"));
    if !is_local(state, a) {
        return Err(not_found());
    }
    let entry = alias::lookup(&state.db, a).await?.ok_or_else(not_found)?;
    Ok(entry.room_id)
}

#[derive(Deserialize)]
struct AliasBody {
    room_id: String,
}

/// `PUT /directory/room/{roomAlias}`: a joined member maps a local alias
/// to the room (Synapse's `require_membership_for_aliases`).
pub async fn put_alias(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = auth::require_user(&state, &req).await?;
    let a = alias::parse_local(&req.param_str("roomAlias")?, &state.config.server_name)
        .map_err(alias_error)?;
    let body: AliasBody = req.json()?;
    let room_id = OwnedRoomId::try_from(body.room_id.as_str())
        .map_err(|_| MatrixError::invalid_param("Invalid room id"))?;
    let joined = directory::room_access(&state.db, &room_id, who.user_id.as_str())
        .await?
        .is_some_and(|a| a.is_joined());
    if !joined {
        return Err(MatrixError::forbidden(
            "You must be in the room to create an alias for it",
        ));
    }
    if !alias::insert(&state.db, &a, &room_id, who.user_id.as_str()).await? {
        // Spec: 409, errcode M_UNKNOWN.
        return Err(RoomError::AliasTaken(format!("Room alias {a} already exists")).into());
    }
    Ok(Response::json(200, &json!({})))
}

/// `GET /directory/room/{roomAlias}`.
pub async fn get_alias(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let a = alias_param(&req)?;
    let room_id = resolve(&state, &a).await?;
    let servers = directory::joined_servers(&state.db, &room_id, &state.config.server_name).await?;
    Ok(Response::json(
        200,
        &json!({ "room_id": room_id, "servers": servers }),
    ))
}

/// `DELETE /directory/room/{roomAlias}`: by the alias's creator or a member
/// who may edit the room list entry (Synapse's `_user_can_delete_alias`).
pub async fn delete_alias(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = auth::require_user(&state, &req).await?;
    let a = alias::parse_local(&req.param_str("roomAlias")?, &state.config.server_name)
        .map_err(alias_error)?;
    let not_found = || MatrixError::not_found(format!("Room alias {a} not found"));
    let entry = alias::lookup(&state.db, &a).await?.ok_or_else(not_found)?;
    if entry.creator != who.user_id.as_str() {
        let allowed = directory::room_access(&state.db, &entry.room_id, who.user_id.as_str())
            .await?
            .is_some_and(|acc| acc.can_change_room_list(&who.user_id));
        if !allowed {
            return Err(MatrixError::forbidden(
                "You don't have permission to delete the alias.",
            ));
        }
    }
    if !alias::delete(&state.db, &a, &entry.room_id).await? {
        // Deleted (or moved) by someone else since the lookup.
        return Err(not_found());
    }
    // Spec (DELETE note): servers may drop the alias from the canonical
    // alias event; Synapse does, and answers 200 even if that is refused.
    if let Err(e) = drop_from_canonical(&state, entry.room_id.clone(), who.user_id, a.clone()).await
    {
        tracing::info!(alias = %a, error = %e, "alias deleted; canonical alias event not updated");
    }
    Ok(Response::json(200, &json!({})))
}

/// Removes `a` from the room's `m.room.canonical_alias` (`alias` and
/// `alt_aliases`), as `user`, under the room's lock on its owner shard.
async fn drop_from_canonical(
    state: &ShardState,
    room_id: OwnedRoomId,
    user: OwnedUserId,
    a: OwnedRoomAliasId,
) -> Result<(), RoomError> {
    client::on_owner(&state.mesh, &room_id.clone(), move |rooms| async move {
        let svc = &rooms;
        rooms
            .send_built(&room_id.clone(), |head| async move {
                let Some(mut content) =
                    state_content(svc, &head, "m.room.canonical_alias", "").await?
                else {
                    return Ok(None);
                };
                let target = CanonicalJsonValue::String(a.to_string());
                let mut changed = false;
                if content.get("alias") == Some(&target) {
                    content.remove("alias");
                    changed = true;
                }
                if let Some(CanonicalJsonValue::Array(alts)) = content.get_mut("alt_aliases") {
                    if alts.contains(&target) {
                        alts.retain(|v| v != &target);
                        changed = true;
                    }
                    if alts.is_empty() {
                        content.remove("alt_aliases");
                    }
                }
                if !changed {
                    return Ok(None);
                }
                Ok(Some(EventRequest {
                    room_id,
                    sender: user,
                    event_type: "m.room.canonical_alias".into(),
                    state_key: Some(String::new()),
                    content,
                    txn: None,
                    redacts: None,
                }))
            })
            .await
            .map(|sent| sent.map(|p| p.event_id.clone()))
    })
    .await?;
    Ok(())
}

/// `GET /rooms/{roomId}/aliases`: members, or anyone if the room is
/// world-readable (spec).
pub async fn room_aliases(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = auth::require_user(&state, &req).await?;
    let room_id = room_param(&req)?;
    let allowed = directory::room_access(&state.db, &room_id, who.user_id.as_str())
        .await?
        .is_some_and(|a| {
            a.is_joined() || a.history_visibility.as_deref() == Some("world_readable")
        });
    if !allowed {
        return Err(MatrixError::forbidden(format!(
            "{} is not in room {room_id}",
            who.user_id
        )));
    }
    let aliases = alias::for_room(&state.db, &room_id).await?;
    Ok(Response::json(200, &json!({ "aliases": aliases })))
}

/// `GET /directory/list/room/{roomId}`.
pub async fn get_visibility(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let room_id = room_param(&req)?;
    let public = directory::visibility(&state.db, &room_id)
        .await?
        .ok_or_else(|| MatrixError::not_found("Room not found"))?;
    let v = if public { "public" } else { "private" };
    Ok(Response::json(200, &json!({ "visibility": v })))
}

#[derive(Deserialize)]
struct VisibilityBody {
    visibility: Option<String>,
}

/// `PUT /directory/list/room/{roomId}`: by a member who may send
/// `m.room.canonical_alias` (Synapse's `check_can_change_room_list`).
pub async fn put_visibility(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = auth::require_user(&state, &req).await?;
    let room_id = room_param(&req)?;
    if who.is_guest {
        return Err(MatrixError::forbidden(
            "Guests cannot edit the published room list",
        ));
    }
    let body: VisibilityBody = json_body(&req)?;
    // Spec: defaults to public.
    let public = match body.visibility.as_deref().unwrap_or("public") {
        "public" => true,
        "private" => false,
        other => {
            return Err(MatrixError::invalid_param(format!(
                "Invalid visibility setting {other:?}"
            )))
        }
    };
    let access = directory::room_access(&state.db, &room_id, who.user_id.as_str())
        .await?
        .ok_or_else(|| MatrixError::not_found("Room not found"))?;
    if !access.can_change_room_list(&who.user_id) {
        return Err(MatrixError::forbidden(
            "This server requires you to be a moderator in the room to edit its room list entry",
        ));
    }
    directory::set_visibility(&state.db, &room_id, public).await?;
    Ok(Response::json(200, &json!({})))
}

/// `filter` of `POST /publicRooms`.
#[derive(Deserialize, Default)]
struct Filter {
    generic_search_term: Option<String>,
    room_types: Option<Vec<Option<String>>>,
}

/// `POST /publicRooms` body (`include_all_networks` and
/// `third_party_instance_id` are accepted and ignored: no bridges).
#[derive(Deserialize, Default)]
struct PublicRoomsBody {
    limit: Option<i64>,
    since: Option<String>,
    filter: Option<Filter>,
    #[allow(dead_code)]
    include_all_networks: Option<bool>,
    #[allow(dead_code)]
    third_party_instance_id: Option<String>,
}

/// Synapse: a limit of 0 (or none) means "no limit"; negative is invalid.
fn limit_of(limit: Option<i64>) -> Result<Option<usize>, MatrixError> {
    match limit {
        None | Some(0) => Ok(None),
        Some(n) if n < 0 => Err(MatrixError::invalid_param("limit must not be negative")),
        Some(n) => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
    }
}

fn since_of(since: Option<&str>) -> Result<Option<ListToken>, MatrixError> {
    match since {
        None | Some("") => Ok(None),
        Some(s) => ListToken::decode(s)
            .map(Some)
            .ok_or_else(|| MatrixError::invalid_param("Invalid since token")),
    }
}

/// Only our own directory: another server's would need federation.
fn check_server(state: &ShardState, req: &Request) -> Result<(), MatrixError> {
    match req.query_param("server") {
        Some(s) if s != state.config.server_name.as_str() => Err(MatrixError::invalid_param(
            "Listing other servers' rooms is not supported (no federation yet)",
        )),
        _ => Ok(()),
    }
}

/// The public room list page `q` (client and federation `publicRooms`).
pub(crate) async fn list(state: &ShardState, q: ListQuery) -> HandlerResult {
    let page = directory::public_rooms(&state.db, &q).await?;
    let mut out = Map::new();
    out.insert(
        "chunk".into(),
        Value::Array(page.rooms.iter().map(directory::chunk_entry).collect()),
    );
    if let Some(t) = page.next_batch {
        out.insert("next_batch".into(), json!(t.encode()));
    }
    if let Some(t) = page.prev_batch {
        out.insert("prev_batch".into(), json!(t.encode()));
    }
    out.insert("total_room_count_estimate".into(), json!(page.total));
    Ok(Response::json(200, &Value::Object(out)))
}

/// `GET /publicRooms?limit=&since=&server=` (no auth needed, per spec; a
/// token that is sent must be valid).
pub async fn public_rooms_get(state: Rc<ShardState>, req: Request) -> HandlerResult {
    if req.access_token().is_some() {
        let _: Requester = auth::require_user(&state, &req).await?;
    }
    check_server(&state, &req)?;
    list(&state, get_query(&req)?).await
}

/// The list query of a `GET publicRooms` (`limit`, `since`).
pub(crate) fn get_query(req: &Request) -> Result<ListQuery, MatrixError> {
    Ok(ListQuery {
        limit: limit_of(req.query_as::<i64>("limit")?)?,
        since: since_of(req.query_param("since").as_deref())?,
        ..ListQuery::default()
    })
}

/// The list query of a `POST publicRooms` body.
pub(crate) fn post_query(req: &Request) -> Result<ListQuery, MatrixError> {
    let body: PublicRoomsBody = optional_json_body(req)?;
    let filter = body.filter.unwrap_or_default();
    Ok(ListQuery {
        limit: limit_of(body.limit)?,
        since: since_of(body.since.as_deref())?,
        search: filter.generic_search_term,
        room_types: filter.room_types,
    })
}

/// `POST /publicRooms` with `filter.generic_search_term` and
/// `filter.room_types`.
pub async fn public_rooms_post(state: Rc<ShardState>, req: Request) -> HandlerResult {
    auth::require_user(&state, &req).await?;
    check_server(&state, &req)?;
    list(&state, post_query(&req)?).await
}
