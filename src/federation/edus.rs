//! EDUs of an inbound transaction (server-server "Typing Notifications",
//! "Receipts", "Presence", "Send-to-device messaging", "Device
//! Management"): each is applied through the same code as a local user's
//! request, for users of the origin only.
//!
//! EDUs are not acknowledged one by one and are not durable: one that
//! cannot be applied is logged and dropped (the spec lets a server drop
//! them), and never fails the transaction. `m.device_list_update` and
//! `m.signing_key_update` are kept in `federation_kept_edus` until hearth
//! tracks remote device lists.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::Value;

use crate::db::{SqlValue, Write};
use crate::ephemeral::receipts::{post_receipt, ReceiptType};
use crate::ephemeral::to_device::{self, Sender};
use crate::ephemeral::{presence, service};
use crate::shard_state::ShardState;

/// How long a remote user's typing lasts without a refresh (Synapse's
/// federation typing timeout).
const REMOTE_TYPING: Duration = Duration::from_secs(30);

/// Applies `edus` from `origin`, each on its own; failures are logged.
pub async fn apply_all(state: &Rc<ShardState>, origin: &str, edus: Vec<Value>) {
    for edu in edus {
        let kind = edu
            .get("edu_type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let content = edu.get("content").cloned().unwrap_or(Value::Null);
        if let Err(e) = apply(state, origin, &kind, content).await {
            tracing::info!(%origin, edu_type = %kind, error = %e, "dropped an EDU");
        }
    }
}

/// A user id of `origin`'s, or why not.
fn origin_user(v: Option<&Value>, origin: &str) -> Result<OwnedUserId, String> {
    let s = v.and_then(Value::as_str).ok_or("missing user id")?;
    let u = OwnedUserId::try_from(s).map_err(|_| format!("bad user id {s:?}"))?;
    if u.server_name().as_str() != origin {
        return Err(format!("{u} is not a user of {origin}"));
    }
    Ok(u)
}

async fn apply(
    state: &Rc<ShardState>,
    origin: &str,
    kind: &str,
    content: Value,
) -> Result<(), String> {
    let mesh = &state.mesh;
    match kind {
        "m.typing" => {
            let user = origin_user(content.get("user_id"), origin)?;
            let room = room_of(content.get("room_id"))?;
            acl(state, &room, origin).await?;
            let typing = content.get("typing").and_then(Value::as_bool) == Some(true);
            service::set_typing(mesh, user, room, typing.then_some(REMOTE_TYPING))
                .await
                .map_err(|e| e.to_string())
        }
        "m.receipt" => {
            let Value::Object(rooms) = content else {
                return Err("content is not an object".into());
            };
            for (room, by_type) in rooms {
                let room = room_of(Some(&Value::String(room)))?;
                acl(state, &room, origin).await?;
                let Some(read) = by_type.get("m.read").and_then(Value::as_object) else {
                    continue;
                };
                for (user, receipt) in read {
                    let user = origin_user(Some(&Value::String(user.clone())), origin)?;
                    let Some(event) = receipt
                        .get("event_ids")
                        .and_then(Value::as_array)
                        .and_then(|a| a.last())
                        .and_then(Value::as_str)
                        .and_then(|s| OwnedEventId::try_from(s).ok())
                    else {
                        continue;
                    };
                    let thread = receipt
                        .get("data")
                        .and_then(|d| d.get("thread_id"))
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    if let Err(e) =
                        post_receipt(mesh, user, room.clone(), ReceiptType::Read, event, thread)
                            .await
                    {
                        tracing::info!(%origin, %room, error = %e, "dropped a remote receipt");
                    }
                }
            }
            Ok(())
        }
        "m.presence" => {
            let push = content
                .get("push")
                .and_then(Value::as_array)
                .ok_or("no push list")?;
            for p in push {
                let user = origin_user(p.get("user_id"), origin)?;
                let Some(presence) = p.get("presence").and_then(Value::as_str) else {
                    continue;
                };
                let status = p
                    .get("status_msg")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                presence::set_remote(mesh, user, presence.to_owned(), status)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        "m.direct_to_device" => {
            let sender = origin_user(content.get("sender"), origin)?;
            let event_type = content
                .get("type")
                .and_then(Value::as_str)
                .ok_or("no type")?
                .to_owned();
            let message_id = content
                .get("message_id")
                .and_then(Value::as_str)
                .ok_or("no message_id")?
                .to_owned();
            let messages: to_device::Messages = content
                .get("messages")
                .cloned()
                .map(serde_json::from_value::<BTreeMap<OwnedUserId, BTreeMap<String, Value>>>)
                .transpose()
                .map_err(|e| format!("bad messages: {e}"))?
                .unwrap_or_default();
            let from = Sender {
                user_id: sender,
                // Remote senders have no device here; the message id is the
                // transaction that makes a retried EDU a no-op.
                device_id: String::new(),
                txn_id: message_id,
            };
            to_device::send(
                mesh,
                state.config.server_name.as_str(),
                from,
                event_type,
                messages,
            )
            .await
            .map_err(|e| e.to_string())
        }
        "m.device_list_update" | "m.signing_key_update" => {
            let user = origin_user(content.get("user_id"), origin)?;
            let w = Write::new().statement(
                "INSERT INTO federation_kept_edus (origin, edu_type, content, received_ts) \
                 VALUES ($1, $2, $3, $4)",
                vec![
                    SqlValue::from(origin),
                    kind.into(),
                    SqlValue::Jsonb(content),
                    crate::primitives::unix_ms_i64().into(),
                ],
            );
            state.writer.submit(w).await.map_err(|e| e.to_string())?;
            super::device_lists::kick_user(state, user).await;
            Ok(())
        }
        other => {
            tracing::debug!(%origin, edu_type = %other, "ignoring an unknown EDU");
            Ok(())
        }
    }
}

fn room_of(v: Option<&Value>) -> Result<OwnedRoomId, String> {
    let s = v.and_then(Value::as_str).ok_or("missing room id")?;
    OwnedRoomId::try_from(s).map_err(|_| format!("bad room id {s:?}"))
}

async fn acl(state: &ShardState, room: &OwnedRoomId, origin: &str) -> Result<(), String> {
    match super::inbound::server_allowed_in(state, room, origin).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("{origin} is denied by the server ACL of {room}")),
        Err(e) => Err(e.to_string()),
    }
}
