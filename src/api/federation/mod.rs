//! Server-server (federation) API endpoints (`/_matrix/federation/...`,
//! `/_matrix/key/...`), registered on the router served by
//! `kind = "federation"` listeners.

pub mod auth;
mod events;
mod keys;
mod media;
mod membership;
mod query;
mod send;
mod user;

use std::rc::Rc;

use serde_json::json;

use crate::http::{HandlerResult, Method, Request, Response, Router};
use crate::shard_state::ShardState;

/// Routes served on `kind = "federation"` listeners.
pub fn federation_router() -> Router<ShardState> {
    use Method::{Get, Post, Put};
    Router::new()
        .route(Get, "/health", super::client::versions::health)
        .route(Get, "/_matrix/federation/v1/version", version)
        .route(Get, "/_matrix/key/v2/server", keys::server)
        .route(Get, "/_matrix/key/v2/server/{keyId}", keys::server)
        .route(Get, "/_matrix/key/v2/query/{serverName}", keys::query_one)
        .route(Post, "/_matrix/key/v2/query", keys::query_many)
        .route(Get, "/_matrix/federation/v1/query/profile", query::profile)
        .route(
            Put,
            "/_matrix/federation/v1/send/{txnId}",
            send::send_transaction,
        )
        .route(
            Get,
            "/_matrix/federation/v1/openid/userinfo",
            user::openid_userinfo,
        )
        .route(
            Post,
            "/_matrix/federation/v1/user/keys/query",
            user::keys_query,
        )
        .route(
            Post,
            "/_matrix/federation/v1/user/keys/claim",
            user::keys_claim,
        )
        .route(
            Get,
            "/_matrix/federation/v1/user/devices/{userId}",
            user::devices,
        )
        .route(
            Get,
            "/_matrix/federation/v1/query/directory",
            query::room_directory,
        )
        .route(
            Get,
            "/_matrix/federation/v1/publicRooms",
            query::public_rooms_get,
        )
        .route(
            Post,
            "/_matrix/federation/v1/publicRooms",
            query::public_rooms_post,
        )
        .route(
            Get,
            "/_matrix/federation/v1/make_join/{roomId}/{userId}",
            membership::make_join,
        )
        .route(
            Get,
            "/_matrix/federation/v1/make_leave/{roomId}/{userId}",
            membership::make_leave,
        )
        .route(
            Get,
            "/_matrix/federation/v1/make_knock/{roomId}/{userId}",
            membership::make_knock,
        )
        .route(
            Put,
            "/_matrix/federation/v1/send_join/{roomId}/{eventId}",
            membership::send_join_v1,
        )
        .route(
            Put,
            "/_matrix/federation/v2/send_join/{roomId}/{eventId}",
            membership::send_join_v2,
        )
        .route(
            Put,
            "/_matrix/federation/v1/send_leave/{roomId}/{eventId}",
            membership::send_leave_v1,
        )
        .route(
            Put,
            "/_matrix/federation/v2/send_leave/{roomId}/{eventId}",
            membership::send_leave_v2,
        )
        .route(
            Put,
            "/_matrix/federation/v1/send_knock/{roomId}/{eventId}",
            membership::send_knock,
        )
        .route(
            Put,
            "/_matrix/federation/v1/invite/{roomId}/{eventId}",
            membership::invite_v1,
        )
        .route(
            Put,
            "/_matrix/federation/v2/invite/{roomId}/{eventId}",
            membership::invite_v2,
        )
        .route(Get, "/_matrix/federation/v1/state/{roomId}", events::state)
        .route(
            Get,
            "/_matrix/federation/v1/state_ids/{roomId}",
            events::state_ids,
        )
        .route(Get, "/_matrix/federation/v1/event/{eventId}", events::event)
        .route(
            Get,
            "/_matrix/federation/v1/event_auth/{roomId}/{eventId}",
            events::event_auth,
        )
        .route(
            Get,
            "/_matrix/federation/v1/backfill/{roomId}",
            events::backfill,
        )
        .route(
            Post,
            "/_matrix/federation/v1/get_missing_events/{roomId}",
            events::get_missing_events,
        )
        .route(
            Get,
            "/_matrix/federation/v1/timestamp_to_event/{roomId}",
            events::timestamp_to_event,
        )
        .route(
            Get,
            "/_matrix/federation/v1/media/download/{mediaId}",
            media::download,
        )
        .route(
            Get,
            "/_matrix/federation/v1/media/thumbnail/{mediaId}",
            media::thumbnail,
        )
}

/// `GET /_matrix/federation/v1/version` (server-server "Server
/// implementation"): unauthenticated.
async fn version(_state: Rc<ShardState>, _req: Request) -> HandlerResult {
    Ok(Response::json(
        200,
        &json!({ "server": { "name": "hearth", "version": env!("CARGO_PKG_VERSION") } }),
    ))
}
