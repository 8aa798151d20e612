//! Client-server API endpoints (`/_matrix/client/...`), registered on the
//! router served by `kind = "client"` listeners.

mod account;
mod cross_signing;
mod devices;
pub(crate) mod directory;
mod ephemeral;
mod gaps;
mod inject;
mod key_backup;
pub(crate) mod keys;
mod login;
pub(crate) mod media;
mod profile;
mod push;
mod rooms;
mod sync;
mod timeline;
pub mod uia;

#[doc(hidden)]
pub use rooms::event_content;
pub(super) mod versions;
mod well_known;

use std::future::Future;
use std::rc::Rc;

use crate::config::Config;
use crate::http::{HandlerResult, Method, Request, Router};
use crate::shard_state::ShardState;

/// Registers `path` (starting with `/`) under both `/_matrix/client/v3`
/// and its legacy alias `/_matrix/client/r0`.
fn client<F, Fut>(r: Router<ShardState>, m: Method, path: &str, h: F) -> Router<ShardState>
where
    F: Fn(Rc<ShardState>, Request) -> Fut + Clone + 'static,
    Fut: Future<Output = HandlerResult> + 'static,
{
    r.route(m.clone(), &format!("/_matrix/client/v3{path}"), h.clone())
        .route(m, &format!("/_matrix/client/r0{path}"), h)
}

/// Routes served on `kind = "client"` listeners (`config` sizes the
/// media upload routes' body limit).
pub fn client_router(config: &Config) -> Router<ShardState> {
    use Method::{Delete, Get, Post, Put};
    let r = Router::new()
        .route(Get, "/_matrix/client/versions", versions::versions)
        .route(Get, "/health", versions::health)
        .route(
            Get,
            "/_matrix/client/v1/register/m.login.registration_token/validity",
            account::token_validity,
        );
    let r = client(r, Post, "/register", account::register);
    let r = client(r, Get, "/register/available", account::available);
    let r = client(r, Get, "/account/whoami", account::whoami);
    let r = client(
        r,
        Post,
        "/user/{userId}/openid/request_token",
        account::openid_request_token,
    );
    let r = client(r, Post, "/account/password", account::change_password);
    let r = client(r, Post, "/account/deactivate", account::deactivate);
    let r = client(r, Get, "/login", login::flows);
    let r = client(r, Post, "/login", login::login);
    let r = client(r, Post, "/logout", login::logout);
    let r = client(r, Post, "/logout/all", login::logout_all);
    let r = client(r, Get, "/devices", devices::list);
    let r = client(r, Get, "/devices/{deviceId}", devices::get);
    let r = client(r, Put, "/devices/{deviceId}", devices::update);
    let r = client(r, Delete, "/devices/{deviceId}", devices::delete);
    let r = client(r, Post, "/delete_devices", devices::delete_many);
    let r = client(r, Get, "/profile/{userId}", profile::get_all);
    let r = client(
        r,
        Get,
        "/profile/{userId}/displayname",
        profile::get_displayname,
    );
    let r = client(
        r,
        Put,
        "/profile/{userId}/displayname",
        profile::set_displayname,
    );
    let r = client(
        r,
        Get,
        "/profile/{userId}/avatar_url",
        profile::get_avatar_url,
    );
    let r = client(
        r,
        Put,
        "/profile/{userId}/avatar_url",
        profile::set_avatar_url,
    );
    let r = client(r, Post, "/createRoom", rooms::create_room);
    let r = client(
        r,
        Put,
        "/rooms/{roomId}/send/{eventType}/{txnId}",
        rooms::send,
    );
    let r = client(
        r,
        Put,
        "/rooms/{roomId}/state/{eventType}",
        rooms::put_state,
    );
    let r = client(
        r,
        Put,
        "/rooms/{roomId}/state/{eventType}/{stateKey}",
        rooms::put_state,
    );
    let r = client(
        r,
        Get,
        "/rooms/{roomId}/state/{eventType}",
        rooms::get_state_event,
    );
    let r = client(
        r,
        Get,
        "/rooms/{roomId}/state/{eventType}/{stateKey}",
        rooms::get_state_event,
    );
    let r = client(r, Get, "/rooms/{roomId}/state", rooms::get_state);
    let r = client(
        r,
        Get,
        "/rooms/{roomId}/event/{eventId}",
        timeline::get_event,
    );
    let r = client(r, Post, "/rooms/{roomId}/join", rooms::join);
    let r = client(r, Post, "/join/{roomIdOrAlias}", rooms::join);
    let r = client(r, Post, "/rooms/{roomId}/leave", rooms::leave);
    let r = client(r, Post, "/rooms/{roomId}/invite", rooms::invite);
    let r = client(r, Post, "/rooms/{roomId}/kick", rooms::kick);
    let r = client(r, Post, "/rooms/{roomId}/ban", rooms::ban);
    let r = client(r, Post, "/rooms/{roomId}/unban", rooms::unban);
    let r = client(r, Get, "/rooms/{roomId}/members", rooms::members);
    let r = client(
        r,
        Get,
        "/rooms/{roomId}/joined_members",
        rooms::joined_members,
    );
    let r = client(r, Get, "/joined_rooms", rooms::joined_rooms);
    let r = client(r, Put, "/directory/room/{roomAlias}", directory::put_alias);
    let r = client(r, Get, "/directory/room/{roomAlias}", directory::get_alias);
    let r = client(
        r,
        Delete,
        "/directory/room/{roomAlias}",
        directory::delete_alias,
    );
    let r = client(r, Get, "/rooms/{roomId}/aliases", directory::room_aliases);
    let r = client(
        r,
        Get,
        "/directory/list/room/{roomId}",
        directory::get_visibility,
    );
    let r = client(
        r,
        Put,
        "/directory/list/room/{roomId}",
        directory::put_visibility,
    );
    let r = client(r, Get, "/publicRooms", directory::public_rooms_get);
    let r = client(r, Post, "/publicRooms", directory::public_rooms_post);
    let r = client(r, Get, "/sync", sync::sync);
    let r = client(r, Post, "/user/{userId}/filter", sync::create_filter);
    let r = client(r, Get, "/user/{userId}/filter/{filterId}", sync::get_filter);
    let r = client(r, Get, "/rooms/{roomId}/messages", timeline::messages);
    let r = client(
        r,
        Get,
        "/rooms/{roomId}/context/{eventId}",
        timeline::context,
    );
    let r = client(
        r,
        Put,
        "/rooms/{roomId}/redact/{eventId}/{txnId}",
        timeline::redact,
    );
    let r = client(r, Post, "/rooms/{roomId}/forget", timeline::forget);
    let r = r.route(
        Get,
        "/_matrix/client/v1/rooms/{roomId}/timestamp_to_event",
        timeline::timestamp_to_event,
    );
    let r = gaps::routes(r);
    let r = well_known::routes(r);
    let r = media::routes(r, config);
    let r = crate::api::admin::routes(r);
    ephemeral_routes(r)
}

/// Typing, receipts, read markers, account data, tags, presence, to-device.
fn ephemeral_routes(r: Router<ShardState>) -> Router<ShardState> {
    use ephemeral as e;
    use Method::{Delete, Get, Post, Put};
    let r = client(r, Put, "/rooms/{roomId}/typing/{userId}", e::typing);
    let r = client(
        r,
        Post,
        "/rooms/{roomId}/receipt/{receiptType}/{eventId}",
        e::receipt,
    );
    let r = client(r, Post, "/rooms/{roomId}/read_markers", e::read_markers);
    let r = client(
        r,
        Put,
        "/user/{userId}/account_data/{type}",
        e::put_account_data,
    );
    let r = client(
        r,
        Get,
        "/user/{userId}/account_data/{type}",
        e::get_account_data,
    );
    let r = client(
        r,
        Put,
        "/user/{userId}/rooms/{roomId}/account_data/{type}",
        e::put_account_data,
    );
    let r = client(
        r,
        Get,
        "/user/{userId}/rooms/{roomId}/account_data/{type}",
        e::get_account_data,
    );
    let r = client(r, Get, "/user/{userId}/rooms/{roomId}/tags", e::get_tags);
    let r = client(
        r,
        Put,
        "/user/{userId}/rooms/{roomId}/tags/{tag}",
        e::put_tag,
    );
    let r = client(
        r,
        Delete,
        "/user/{userId}/rooms/{roomId}/tags/{tag}",
        e::delete_tag,
    );
    let r = client(r, Put, "/presence/{userId}/status", e::put_presence);
    let r = client(r, Get, "/presence/{userId}/status", e::get_presence);
    let r = client(
        r,
        Put,
        "/sendToDevice/{eventType}/{txnId}",
        e::send_to_device,
    );
    let r = keys::routes(r);
    let r = inject::routes(r);
    let r = cross_signing::routes(r);
    let r = key_backup::routes(r);
    push::routes(r)
}

#[cfg(test)]
mod router_tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use crate::config::Config;

    /// The router's index agrees with a full scan over the real route
    /// tables (the hand-made table in `http::router` is small).
    #[test]
    fn the_real_routers_index_answers_as_the_linear_scan() {
        let config = Config::from_toml_str(
            "server_name = \"localhost\"",
            Path::new("<test>"),
            &BTreeMap::new(),
        )
        .expect("default config");
        super::client_router(&config).assert_index_agrees_with_scan();
        crate::api::federation::federation_router().assert_index_agrees_with_scan();
        crate::api::metrics::metrics_router().assert_index_agrees_with_scan();
    }
}
