//! Room events in `/sync` go through the one serving path,
//! `rooms::serve::client_events`, so a sync shows an event exactly as
//! `/messages`, `/event` and `/context` do: redacted per its room version
//! with `unsigned.redacted_because`, state events with `prev_content`,
//! `replaces_state` and `prev_sender`.
//!
//! To keep the window cache fast, what `client_events` answers for no
//! particular viewer is kept (on the window's event, or in the state-event
//! cache) and only the per-request bits are added at serve time: `age`
//! (also of `redacted_because`) and `transaction_id` for the syncing
//! device's own sends. A message event announced over the mesh is already
//! in served form (it cannot be redacted yet: a redaction drops the room's
//! window), so a window hit costs no query unless the user sent something.
//!
//! History visibility (`rooms::visibility::filter_events`, Synapse's
//! `filter_events_for_client` semantics) is applied by [`visible`] where the
//! user's membership may have changed within a timeline.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use serde_json::Value;

use crate::db::Pool;
use crate::rooms::serve::{client_events, client_events_by_id};
use crate::rooms::timeline::{load_by_ids, TimelineEvent};
use crate::rooms::visibility::filter_events;

use super::cache::{SyncCache, TlEvent};
use super::{timeline, SyncContext, SyncError};

/// The stored events of `events` (in order; unknown ones left out), from
/// what is already attached to them or one query for the rest.
async fn full_events(db: &Pool, events: &[Rc<TlEvent>]) -> Result<Vec<TimelineEvent>, SyncError> {
    let missing: Vec<String> = events
        .iter()
        .filter(|e| e.full.get().is_none())
        .map(|e| e.event_id.clone())
        .collect();
    let mut loaded = load_by_ids(db, &missing).await?;
    Ok(events
        .iter()
        .filter_map(|e| match e.full.get() {
            Some(f) => Some(f.clone()),
            None => {
                let f = loaded.remove(&e.event_id)?;
                let _ = e.full.set(f.clone());
                Some(f)
            }
        })
        .collect())
}

/// Keeps the events of a timeline `user` may see (history visibility);
/// says whether any were hidden.
pub async fn visible(
    db: &Pool,
    user: &str,
    events: Vec<Rc<TlEvent>>,
) -> Result<(Vec<Rc<TlEvent>>, bool), SyncError> {
    if events.is_empty() {
        return Ok((events, false));
    }
    let full = full_events(db, &events).await?;
    let ok: HashSet<String> = filter_events(db, user, false, full)
        .await?
        .into_iter()
        .map(|e| e.pdu.event_id.to_string())
        .collect();
    let before = events.len();
    let kept: Vec<Rc<TlEvent>> = events
        .into_iter()
        .filter(|e| ok.contains(&e.event_id))
        .collect();
    let hidden = kept.len() < before;
    Ok((kept, hidden))
}

/// The viewer-independent served form of timeline events, in order.
pub async fn timeline_bases(
    db: &Pool,
    cache: &SyncCache,
    events: &[Rc<TlEvent>],
) -> Result<Vec<Arc<Value>>, SyncError> {
    let missing: Vec<Rc<TlEvent>> = events
        .iter()
        .filter(|e| e.served.get().is_none())
        .cloned()
        .collect();
    let mut fresh: HashMap<String, Arc<Value>> = HashMap::new();
    if !missing.is_empty() {
        let epoch = cache.redaction_epoch();
        let full = full_events(db, &missing).await?;
        let served = client_events(db, &full, None).await?;
        for (te, v) in full.iter().zip(served) {
            fresh.insert(te.pdu.event_id.to_string(), Arc::new(v));
        }
        // A redaction applied meanwhile may have made the answer stale.
        if cache.redaction_epoch() == epoch {
            for e in &missing {
                if let Some(v) = fresh.get(&e.event_id) {
                    let _ = e.served.set(v.clone());
                }
            }
        }
    }
    Ok(events
        .iter()
        .map(|e| {
            e.served
                .get()
                .cloned()
                .or_else(|| fresh.get(&e.event_id).cloned())
                // Vanished from the database (cannot happen: events are
                // never deleted): serve what we have.
                .unwrap_or_else(|| e.event.clone())
        })
        .collect())
}

/// The viewer-independent served form of state events by id (cached;
/// unknown ids are left out).
pub async fn state_bases(
    db: &Pool,
    cache: &SyncCache,
    ids: &[String],
) -> Result<HashMap<String, Arc<Value>>, SyncError> {
    let mut out = HashMap::with_capacity(ids.len());
    let mut missing = Vec::new();
    for id in ids {
        match cache.event(id) {
            Some(e) => {
                out.insert(id.clone(), e);
            }
            None => missing.push(id.clone()),
        }
    }
    if !missing.is_empty() {
        let epoch = cache.redaction_epoch();
        for v in client_events_by_id(db, &missing, None).await? {
            let Some(id) = v["event_id"].as_str().map(str::to_owned) else {
                continue;
            };
            let prev = v["unsigned"]["replaces_state"].as_str().map(str::to_owned);
            let v = Arc::new(v);
            cache.put_event(id.clone(), v.clone(), prev, epoch);
            out.insert(id, v);
        }
    }
    Ok(out)
}

fn set_age(v: &mut Value, now: i64) {
    let ts = v["origin_server_ts"].as_i64();
    if let (Some(ts), Some(Value::Object(u))) = (ts, v.get_mut("unsigned")) {
        u.insert("age".into(), (now - ts).max(0).into());
    }
}

/// Adds the per-request bits to served events: `unsigned.age` (also of
/// `redacted_because`) and, for the syncing device's own sends,
/// `unsigned.transaction_id` (spec "Transaction identifiers": clients match
/// their local echo with it); then applies the filter's `event_fields`.
pub async fn personalize(
    ctx: &SyncContext,
    events: &[Arc<Value>],
) -> Result<Vec<Value>, SyncError> {
    let own: Vec<String> = events
        .iter()
        .filter(|e| e["sender"].as_str() == Some(ctx.user.as_str()))
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect();
    let txns = timeline::txn_ids(&ctx.db, ctx.user.as_str(), &ctx.device_id, own).await?;
    let now = crate::auth::now_ms();
    Ok(events
        .iter()
        .map(|e| {
            let mut ev = (**e).clone();
            set_age(&mut ev, now);
            if let Some(r) = ev
                .get_mut("unsigned")
                .and_then(|u| u.get_mut("redacted_because"))
            {
                set_age(r, now);
            }
            let txn = ev["event_id"].as_str().and_then(|id| txns.get(id)).cloned();
            if let (Some(t), Some(Value::Object(u))) = (txn, ev.get_mut("unsigned")) {
                u.insert("transaction_id".into(), t.into());
            }
            ctx.filter.project(ev)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn age_is_set_at_serve_time() {
        let mut v = json!({"origin_server_ts": 1000, "unsigned": {"age": 5}});
        set_age(&mut v, 1500);
        assert_eq!(v["unsigned"]["age"], 500);
        // A clock behind the event's timestamp never gives a negative age.
        set_age(&mut v, 10);
        assert_eq!(v["unsigned"]["age"], 0);
        // No `unsigned` object: left alone rather than invented.
        let mut bare = json!({"origin_server_ts": 1});
        set_age(&mut bare, 5);
        assert!(bare.get("unsigned").is_none());
    }
}
