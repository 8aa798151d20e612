//! Serving room events to clients: the one place events become the
//! client-server "ClientEvent" format, so every endpoint (and `/sync`)
//! serves them alike.
//!
//! - A redacted event (one with an accepted `m.room.redaction`, table
//!   `redactions`) is served through its room version's redaction algorithm
//!   (`events::redact`; rooms v10: the v9 rules, v11+: the v11 rules) with
//!   `unsigned.redacted_because` = the redaction event (client-server
//!   "Redactions"). The stored original is untouched.
//! - `unsigned.age` is computed at serve time (client_event.yaml).
//! - `unsigned.transaction_id` for the viewer's own device's events
//!   (client-server "Transaction identifiers").
//! - State events get `unsigned.prev_content`, `replaces_state` and
//!   `prev_sender` from the state event they replaced, recorded when the
//!   event was persisted (`events.prev_state_event_id`).
//! - `m.room.redaction` events carry `redacts` at the top level in every room
//!   version (as Synapse serves them), besides `content.redacts` in v11+.

use std::collections::{HashMap, HashSet};

use ruma::canonical_json::CanonicalJsonValue;
use serde_json::{json, Value};

use crate::db::Pool;
use crate::events::{redact, RoomVersion};

use super::timeline::{load_by_ids, TimelineEvent};
use super::RoomError;
use crate::events::Pdu;
use crate::primitives::unix_ms as now_ms;

/// Who is reading: decides `unsigned.transaction_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    pub user_id: String,
    /// The requesting device (its own sends get their `transaction_id`).
    pub device_id: Option<String>,
}

/// The redaction event of each redacted event among `ids` (the earliest).
async fn redactions_of(db: &Pool, ids: &[String]) -> Result<HashMap<String, Value>, RoomError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = db
        .query(
            "SELECT r.redacts, r.event_id FROM redactions r JOIN events e USING (event_id) \
             WHERE r.redacts = ANY($1) ORDER BY e.depth, e.stream_shard, e.stream_ordering",
            &[&ids],
        )
        .await?;
    let mut by_target: HashMap<String, String> = HashMap::new();
    for r in rows {
        by_target.entry(r.get(0)?).or_insert(r.get(1)?);
    }
    let redaction_ids: Vec<String> = by_target.values().cloned().collect();
    let events = load_by_ids(db, &redaction_ids).await?;
    let now = now_ms();
    Ok(by_target
        .into_iter()
        .filter_map(|(target, rid)| {
            let ev = events.get(&rid)?;
            let mut v = plain(&ev.pdu, now);
            if let Some(r) = &ev.pdu.redacts {
                v["redacts"] = r.to_string().into();
            }
            Some((target, v))
        })
        .collect())
}

/// `client_format` plus `unsigned.age`.
fn plain(pdu: &Pdu, now: u64) -> Value {
    let mut v = pdu.client_format();
    v["unsigned"]["age"] = now.saturating_sub(pdu.origin_server_ts).into();
    v
}

/// The content clients see: redacted per the room version if `redacted`.
fn served_content(pdu: &Pdu, version: RoomVersion, redacted: bool) -> Value {
    let original = || serde_json::from_str(pdu.content.get()).unwrap_or_else(|_| json!({}));
    if !redacted {
        return original();
    }
    match redact(&pdu.json, version) {
        Ok(mut r) => match r.remove("content") {
            Some(CanonicalJsonValue::Object(c)) => {
                serde_json::to_value(c).unwrap_or_else(|_| json!({}))
            }
            _ => json!({}),
        },
        // Unreachable for events we accepted (object content); serve
        // nothing rather than the content that was meant to go.
        Err(_) => json!({}),
    }
}

/// Serves `events` as ClientEvents for `viewer` (see the module doc). The
/// caller has already applied history visibility (`rooms::visibility`).
/// Costs up to four queries per call, whatever the number of events.
pub async fn client_events(
    db: &Pool,
    events: &[TimelineEvent],
    viewer: Option<&Viewer>,
) -> Result<Vec<Value>, RoomError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = events.iter().map(|e| e.pdu.event_id.to_string()).collect();
    let prev_ids: Vec<String> = events
        .iter()
        .filter_map(|e| e.prev_state.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut all: Vec<String> = ids.clone();
    all.extend(prev_ids.iter().cloned());
    let redactions = redactions_of(db, &all).await?;
    let prevs = load_by_ids(db, &prev_ids).await?;
    let mut txns: HashMap<String, String> = HashMap::new();
    if let Some(Viewer {
        user_id,
        device_id: Some(device),
    }) = viewer
    {
        let own: Vec<String> = events
            .iter()
            .filter(|e| e.pdu.sender.as_str() == user_id)
            .map(|e| e.pdu.event_id.to_string())
            .collect();
        if !own.is_empty() {
            let rows = db
                .query(
                    "SELECT event_id, txn_id FROM txn_ids \
                     WHERE event_id = ANY($1) AND user_id = $2 AND device_id = $3",
                    &[&own, &user_id.as_str(), &device.as_str()],
                )
                .await?;
            for r in rows {
                txns.insert(r.get(0)?, r.get(1)?);
            }
        }
    }
    let now = now_ms();
    Ok(events
        .iter()
        .map(|ev| {
            let id = ev.pdu.event_id.as_str();
            let mut v = plain(&ev.pdu, now);
            let redaction = redactions.get(id);
            v["content"] = served_content(&ev.pdu, ev.version, redaction.is_some());
            if let Some(r) = redaction {
                v["unsigned"]["redacted_because"] = r.clone();
            }
            if let Some(r) = ev.pdu.redacts.as_ref().filter(|_| is_redaction(&ev.pdu)) {
                v["redacts"] = r.to_string().into();
            }
            if let Some(prev) = ev.prev_state.as_ref().and_then(|p| prevs.get(p)) {
                let prev_id = prev.pdu.event_id.as_str();
                v["unsigned"]["prev_content"] =
                    served_content(&prev.pdu, prev.version, redactions.contains_key(prev_id));
                v["unsigned"]["replaces_state"] = prev_id.into();
                v["unsigned"]["prev_sender"] = prev.pdu.sender.to_string().into();
            }
            if let Some(t) = txns.get(id) {
                v["unsigned"]["transaction_id"] = t.clone().into();
            }
            v
        })
        .collect())
}

fn is_redaction(pdu: &Pdu) -> bool {
    pdu.kind == ruma::events::TimelineEventType::RoomRedaction
}

/// Serves events known by id (e.g. current state from a room head), in
/// the order of `ids`, skipping unknown ones.
pub async fn client_events_by_id(
    db: &Pool,
    ids: &[String],
    viewer: Option<&Viewer>,
) -> Result<Vec<Value>, RoomError> {
    let events = super::timeline::load_ordered(db, ids).await?;
    client_events(db, &events, viewer).await
}
