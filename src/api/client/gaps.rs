//! Small endpoints clients call on start that had no home: the deprecated
//! `GET /events/{eventId}`, `GET /voip/turnServer` and
//! `GET /thirdparty/protocols`.

use std::rc::Rc;

use base64::Engine;
use hmac::{KeyInit, Mac};
use ruma::OwnedEventId;
use serde_json::{json, Value};

use crate::auth;
use crate::config::VoipSection;
use crate::http::{HandlerResult, MatrixError, Method, Request, Response, Router};
use crate::rooms::history;
use crate::rooms::Viewer;
use crate::shard_state::ShardState;

/// Synapse's `turn_user_lifetime` default: one day.
const DEFAULT_TURN_LIFETIME_MS: u64 = 86_400_000;

/// Registers this module's routes (v3 and r0).
pub fn routes(r: Router<ShardState>) -> Router<ShardState> {
    let r = super::client(r, Method::Get, "/events/{eventId}", event);
    let r = super::client(r, Method::Get, "/voip/turnServer", turn_server);
    super::client(r, Method::Get, "/thirdparty/protocols", protocols)
}

/// Deprecated `GET /events/{eventId}` (spec "Getting events for a room",
/// deprecated endpoints): `/rooms/{roomId}/event/{eventId}` without the
/// room, with the same visibility checks.
async fn event(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = auth::require_user(&state, &req).await?;
    let raw = req.param_str("eventId")?;
    let event_id = OwnedEventId::try_from(raw.as_ref())
        .map_err(|_| MatrixError::not_found("event not found"))?;
    let viewer = Viewer {
        user_id: who.user_id.to_string(),
        device_id: Some(who.device_id.clone()),
    };
    let ev = history::get_event_any_room(&state.db, &viewer, event_id.as_str()).await?;
    Ok(Response::json(200, &ev))
}

/// `GET /voip/turnServer` (spec "Voice over IP"): `{}` when no TURN server
/// is configured, as Synapse answers.
async fn turn_server(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = auth::require_user(&state, &req).await?;
    let now = crate::primitives::unix_ms();
    Ok(Response::json(
        200,
        &turn_answer(&state.config.voip, who.user_id.as_str(), now),
    ))
}

/// The answer for `user_id` at `now_ms`. With a shared secret: the TURN
/// REST credentials (username `expiry_secs:user_id`, password
/// base64(HMAC-SHA1(secret, username))), which coturn checks itself.
pub fn turn_answer(voip: &VoipSection, user_id: &str, now_ms: u64) -> Value {
    if voip.turn_uris.is_empty() {
        return json!({});
    }
    let lifetime = voip
        .turn_user_lifetime_ms
        .unwrap_or(DEFAULT_TURN_LIFETIME_MS);
    let (username, password) = if let Some(secret) = &voip.turn_shared_secret {
        let expiry = (now_ms.saturating_add(lifetime)) / 1000;
        let username = format!("{expiry}:{user_id}");
        let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()) else {
            return json!({});
        };
        mac.update(username.as_bytes());
        let password =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        (username, password)
    } else {
        match (&voip.turn_username, &voip.turn_password) {
            (Some(u), Some(p)) => (u.clone(), p.clone()),
            _ => return json!({}),
        }
    };
    json!({
        "username": username,
        "password": password,
        "uris": voip.turn_uris,
        "ttl": lifetime / 1000,
    })
}

/// `GET /thirdparty/protocols`: hearth bridges no third-party networks.
async fn protocols(state: Rc<ShardState>, req: Request) -> HandlerResult {
    auth::require_user(&state, &req).await?;
    Ok(Response::json(200, &json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_is_empty() {
        assert_eq!(turn_answer(&VoipSection::default(), "@a:x", 0), json!({}));
    }

    /// Known answer: `echo -n "86400:@a:x" | openssl dgst -sha1 -hmac s -binary | base64`.
    #[test]
    fn shared_secret_is_turn_rest() {
        let v = VoipSection {
            turn_uris: vec!["turn:t.example:3478?transport=udp".into()],
            turn_shared_secret: Some("s".into()),
            ..Default::default()
        };
        let a = turn_answer(&v, "@a:x", 0);
        assert_eq!(a["username"], "86400:@a:x");
        assert_eq!(a["ttl"], 86400);
        assert_eq!(a["password"], KNOWN);
    }

    const KNOWN: &str = "gv0fWRjOSo9RN6r9eRUlhC1uA9k=";
}
