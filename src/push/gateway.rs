//! Sending notifications to push gateways (push gateway API
//! `POST /_matrix/push/v1/notify`) for the HTTP pushers of the users an
//! event notified. Runs in its own tasks on the room's owner shard after
//! the notification rows committed: a slow or dead gateway delays nobody.
//! A failed attempt (no connection, timeout, 5xx, 429) is retried with
//! exponential backoff (spec: "the homeserver SHOULD retry for a
//! reasonable amount of time using exponential backoff"); pushkeys the
//! gateway `rejected` lose their pusher, as the spec asks.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use ruma::{OwnedEventId, OwnedRoomId};
use serde_json::{json, Map, Value};

use crate::shard_state::ShardState;

use super::eval::Notified;
use super::http_client::{self, ClientError};

/// Waits before the retries of one notification (about a minute in all).
const BACKOFF_MS: [u64; 6] = [1_000, 2_000, 4_000, 8_000, 16_000, 32_000];
/// One attempt, connection to answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Notifications being delivered (or waiting to retry) per shard; beyond,
/// new ones are dropped (counts and `/notifications` are unaffected).
const MAX_IN_FLIGHT: usize = 2_048;

thread_local! {
    static IN_FLIGHT: Cell<usize> = const { Cell::new(0) };
}

/// Whether the server has any HTTP pusher, shared by its shards: almost
/// every event notifies someone, and most servers' users have no pusher
/// (nor does a benchmark's), so asking `pushers` for every notifying event
/// cost a query per message. Conservative: it starts unknown (the first
/// dispatch asks the table once), becomes "some" *before* any pusher is
/// written, and never goes back to "none" while the process runs (a
/// deleted last pusher costs the query again, nothing worse).
#[derive(Debug, Default)]
pub struct HttpPushers(AtomicU8);

const UNKNOWN: u8 = 0;
const NONE: u8 = 1;
const SOME: u8 = 2;

impl HttpPushers {
    /// Called before a pusher is stored: from now on every dispatch asks.
    pub fn added(&self) {
        self.0.store(SOME, Ordering::SeqCst);
    }

    /// Whether a dispatch must look the notified users' pushers up.
    async fn may_exist(&self, db: &crate::db::Pool) -> Result<bool, crate::db::DbError> {
        match self.0.load(Ordering::SeqCst) {
            NONE => Ok(false),
            SOME => Ok(true),
            _ => {
                let any: bool = db
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pushers WHERE kind = 'http')",
                        &[],
                    )
                    .await?
                    .get(0)?;
                if any {
                    self.added();
                } else {
                    // Unless a pusher was added meanwhile (then it is SOME
                    // and stays so). One added after the EXISTS read but
                    // before this swap set SOME first, so the swap fails.
                    let _ =
                        self.0
                            .compare_exchange(UNKNOWN, NONE, Ordering::SeqCst, Ordering::SeqCst);
                }
                Ok(any)
            }
        }
    }
}

/// An event that notified, as the gateway payload needs it.
pub struct Push {
    pub event: Rc<Value>,
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub room_name: Option<String>,
    pub sender_display_name: Option<String>,
    pub notified: Vec<Notified>,
}

/// An HTTP pusher to send to.
#[derive(Debug, Clone)]
pub struct Target {
    pub user_id: String,
    pub app_id: String,
    pub pushkey: String,
    pub pushkey_ts: i64,
    pub data: Value,
}

/// Starts delivering `push` to the pushers of its notified users; returns
/// at once.
pub fn dispatch(state: &Rc<ShardState>, push: Push) {
    let state = state.clone();
    drop(monoio::spawn(async move {
        if let Err(e) = deliver_all(&state, push).await {
            tracing::warn!(error = %e, "push gateway dispatch failed");
        }
    }));
}

async fn deliver_all(state: &Rc<ShardState>, push: Push) -> Result<(), crate::db::DbError> {
    if !state.http_pushers.may_exist(&state.db).await? {
        return Ok(());
    }
    let users: Vec<String> = push
        .notified
        .iter()
        .flat_map(|n| n.users.iter().map(|u| u.to_string()))
        .collect();
    let rows = state
        .db
        .query(
            "SELECT user_id, app_id, pushkey, (extract(epoch FROM created_at))::int8, data \
             FROM pushers WHERE kind = 'http' AND user_id = ANY($1)",
            &[&users],
        )
        .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let push = Rc::new(push);
    for r in rows {
        let t = Target {
            user_id: r.get(0)?,
            app_id: r.get(1)?,
            pushkey: r.get(2)?,
            pushkey_ts: r.get(3)?,
            data: r.get(4)?,
        };
        let Some(n) = push
            .notified
            .iter()
            .find(|n| n.users.iter().any(|u| u.as_str() == t.user_id))
        else {
            continue;
        };
        let actions = serde_json::to_value(&n.actions).unwrap_or(Value::Null);
        if IN_FLIGHT.with(|c| c.get()) >= MAX_IN_FLIGHT {
            tracing::warn!(user = %t.user_id, "too many pushes in flight; one dropped");
            continue;
        }
        IN_FLIGHT.with(|c| c.set(c.get() + 1));
        let (state, push) = (state.clone(), push.clone());
        drop(monoio::spawn(async move {
            deliver(&state, &push, &t, &actions).await;
            IN_FLIGHT.with(|c| c.set(c.get().saturating_sub(1)));
        }));
    }
    Ok(())
}

async fn deliver(state: &ShardState, push: &Push, t: &Target, actions: &Value) {
    let unread = match super::counts::room_total(&state.db, &t.user_id, push.room_id.as_str()).await
    {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "unread count for a push failed");
            0
        }
    };
    let Some(url) = t.data["url"].as_str() else {
        return;
    };
    let body = payload(push, t, actions, unread).to_string().into_bytes();
    for (attempt, wait) in std::iter::once(0).chain(BACKOFF_MS).enumerate() {
        if wait > 0 {
            monoio::time::sleep(Duration::from_millis(wait)).await;
        }
        match http_client::post_json(url, body.clone(), ATTEMPT_TIMEOUT, &state.push_tls).await {
            Ok((200..=299, answer)) => {
                rejected(state, t, &answer).await;
                return;
            }
            Ok((status, _)) if status == 429 || status >= 500 => {
                tracing::debug!(url, status, attempt, "push gateway busy; will retry");
            }
            Ok((status, _)) => {
                tracing::warn!(url, status, "push gateway refused a notification");
                return;
            }
            Err(ClientError::Unsupported(e)) => {
                tracing::warn!(url, error = %e, "push not sent");
                return;
            }
            Err(ClientError::Transient(e)) => {
                tracing::debug!(url, error = %e, attempt, "push gateway unreachable; will retry");
            }
        }
    }
    tracing::warn!(url, event = %push.event_id, "push gateway gave up after retries");
}

/// Spec: "pushkeys that have been rejected ... the homeserver should stop
/// sending notifications to them": the pusher is removed.
async fn rejected(state: &ShardState, t: &Target, answer: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(answer) else {
        return;
    };
    let gone = v["rejected"]
        .as_array()
        .is_some_and(|r| r.iter().any(|k| k.as_str() == Some(t.pushkey.as_str())));
    if gone {
        let res = state
            .db
            .execute(
                "DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3",
                &[&t.user_id, &t.app_id, &t.pushkey],
            )
            .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "removing a rejected pusher failed");
        }
    }
}

/// `set_tweak` actions as the device's `tweaks` (`highlight` without a
/// value is `true`).
fn tweaks(actions: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for a in actions.as_array().into_iter().flatten() {
        if let Some(name) = a["set_tweak"].as_str() {
            let v = a.get("value").cloned().unwrap_or(Value::Bool(true));
            out.insert(name.to_owned(), v);
        }
    }
    out
}

/// The `/notify` body (push gateway API "Notification"). With
/// `format: event_id_only` only the event id, room id, counts and devices
/// are sent (no content leaves the server).
pub fn payload(push: &Push, t: &Target, actions: &Value, unread: i64) -> Value {
    let tweaks = tweaks(actions);
    let mut data = t.data.as_object().cloned().unwrap_or_default();
    data.remove("url");
    let device = json!({
        "app_id": t.app_id,
        "pushkey": t.pushkey,
        "pushkey_ts": t.pushkey_ts,
        "data": data,
        "tweaks": tweaks,
    });
    let event_id_only = t.data["format"].as_str() == Some("event_id_only");
    // As Synapse: high priority for highlights, sounds and encrypted events
    // (which may be either).
    let encrypted = push.event["type"] == "m.room.encrypted";
    let prio = if encrypted || tweaks.contains_key("sound") || tweaks.contains_key("highlight") {
        "high"
    } else {
        "low"
    };
    let mut n = json!({
        "event_id": push.event_id,
        "room_id": push.room_id,
        "counts": {"unread": unread},
        "devices": [device],
        "prio": prio,
    });
    if !event_id_only {
        if let Some(o) = n.as_object_mut() {
            let e = &push.event;
            o.insert("type".into(), e["type"].clone());
            o.insert("sender".into(), e["sender"].clone());
            if e.get("content").is_some() {
                o.insert("content".into(), e["content"].clone());
            }
            if let Some(k) = e["state_key"].as_str() {
                o.insert("user_is_target".into(), json!(k == t.user_id));
            }
            if let Some(name) = &push.sender_display_name {
                o.insert("sender_display_name".into(), json!(name));
            }
            if let Some(name) = &push.room_name {
                o.insert("room_name".into(), json!(name));
            }
        }
    }
    json!({ "notification": n })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::push::{Action, Tweak};

    fn push() -> Push {
        Push {
            event: Rc::new(json!({
                "type": "m.room.message", "sender": "@a:x", "event_id": "$e",
                "content": {"body": "hi", "msgtype": "m.text"},
            })),
            event_id: OwnedEventId::try_from("$e").unwrap(),
            room_id: OwnedRoomId::try_from("!r:x").unwrap(),
            room_name: Some("Room".into()),
            sender_display_name: Some("Alice".into()),
            notified: Vec::new(),
        }
    }

    fn target(format: Option<&str>) -> Target {
        let mut data = json!({"url": "http://gw/_matrix/push/v1/notify", "extra": 1});
        if let Some(f) = format {
            data["format"] = json!(f);
        }
        Target {
            user_id: "@b:x".into(),
            app_id: "app".into(),
            pushkey: "key".into(),
            pushkey_ts: 12,
            data,
        }
    }

    #[test]
    fn full_and_event_id_only_payloads() {
        let actions = serde_json::to_value(vec![
            Action::Notify,
            Action::SetTweak(Tweak::Sound("default".into())),
        ])
        .unwrap();
        let p = payload(&push(), &target(None), &actions, 3);
        let n = &p["notification"];
        assert_eq!(n["content"]["body"], "hi");
        assert_eq!(n["sender_display_name"], "Alice");
        assert_eq!(n["room_name"], "Room");
        assert_eq!(n["counts"]["unread"], 3);
        assert_eq!(n["prio"], "high");
        let d = &n["devices"][0];
        assert_eq!(d["tweaks"], json!({"sound": "default"}));
        assert_eq!(d["data"], json!({"extra": 1}));
        assert_eq!(d["pushkey_ts"], 12);

        let plain = serde_json::to_value(vec![Action::Notify]).unwrap();
        let p = payload(&push(), &target(Some("event_id_only")), &plain, 1);
        let n = p["notification"].as_object().unwrap();
        let mut keys: Vec<&str> = n.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["counts", "devices", "event_id", "prio", "room_id"]);
        assert_eq!(n["prio"], "low");
        assert_eq!(n["devices"][0]["data"]["format"], "event_id_only");
    }
}
