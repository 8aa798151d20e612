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

use serde::Serialize;
use serde_json::value::RawValue;
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
    let now = crate::primitives::unix_ms_i64();
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

/// Stands for `unsigned.age` in a [`RawServed`] while it is split; used
/// only if it occurs exactly once in the serialised event.
const AGE_MARK: &str = "\"@@hearth-age@@\"";

/// A timeline event's viewer-independent served form, serialised once and
/// shared by every viewer (a message reaching 1,000 parked syncs is
/// rendered once, not cloned and serialised 1,000 times): `head`, then the
/// viewer's `age` and `tail` when the event has an `unsigned` object.
#[derive(Debug)]
pub struct RawServed {
    head: String,
    /// `(origin_server_ts, text after age)`.
    tail: Option<(i64, String)>,
}

impl RawServed {
    /// `None` when the event needs per-viewer work beyond `age`
    /// (`redacted_because` has an age of its own) or the split is not
    /// unambiguous.
    pub fn new(base: &Value) -> Option<RawServed> {
        if base
            .get("unsigned")
            .and_then(|u| u.get("redacted_because"))
            .is_some()
        {
            return None;
        }
        let ts = base["origin_server_ts"].as_i64();
        let mut v = base.clone();
        let spliced = match (ts, v.get_mut("unsigned")) {
            (Some(_), Some(Value::Object(u))) => {
                u.insert("age".into(), AGE_MARK.trim_matches('"').into());
                true
            }
            _ => false,
        };
        let text = serde_json::to_string(&v).ok()?;
        if !spliced {
            return Some(RawServed {
                head: text,
                tail: None,
            });
        }
        if text.matches(AGE_MARK).count() != 1 {
            return None;
        }
        let (head, tail) = text.split_once(AGE_MARK)?;
        Some(RawServed {
            head: head.to_owned(),
            tail: Some((ts?, tail.to_owned())),
        })
    }

    /// The event as `viewer-independent form + age at `now``, as raw JSON.
    pub fn render(&self, now: i64) -> Option<Box<RawValue>> {
        let text = match &self.tail {
            None => self.head.clone(),
            Some((ts, tail)) => {
                let mut t = String::with_capacity(self.head.len() + tail.len() + 20);
                t.push_str(&self.head);
                // Writing into a `String` cannot fail.
                let _ = std::fmt::Write::write_fmt(&mut t, format_args!("{}", (now - ts).max(0)));
                t.push_str(tail);
                t
            }
        };
        RawValue::from_string(text).ok()
    }
}

/// A served event in a response: shared raw JSON, or a per-viewer tree.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ServedEvent {
    Raw(Box<RawValue>),
    Tree(Value),
}

/// [`personalize`] for a timeline (`bases` from [`timeline_bases`] for
/// `events`): events other users sent are spliced in from their shared
/// serialised form; the user's own (which may need `transaction_id`),
/// redacted ones, fresh uncached reads and filters with `event_fields` go
/// through [`personalize`].
pub async fn personalize_timeline(
    ctx: &SyncContext,
    events: &[Rc<TlEvent>],
    bases: &[Arc<Value>],
) -> Result<Vec<ServedEvent>, SyncError> {
    let now = crate::primitives::unix_ms_i64();
    let fast = ctx.filter.event_fields.is_none() && events.len() == bases.len();
    let mut out: Vec<Option<ServedEvent>> = Vec::with_capacity(bases.len());
    let mut slow: Vec<Arc<Value>> = Vec::new();
    for (i, base) in bases.iter().enumerate() {
        let raw = events.get(i).filter(|e| {
            fast && e.sender != ctx.user.as_str()
                && e.served.get().is_some_and(|s| Arc::ptr_eq(s, base))
        });
        let rendered = raw.and_then(|e| {
            e.raw
                .get_or_init(|| RawServed::new(base).map(Rc::new))
                .as_ref()
                .and_then(|r| r.render(now))
        });
        match rendered {
            Some(r) => out.push(Some(ServedEvent::Raw(r))),
            None => {
                out.push(None);
                slow.push(base.clone());
            }
        }
    }
    let mut slow = personalize(ctx, &slow).await?.into_iter();
    Ok(out
        .into_iter()
        .filter_map(|o| o.or_else(|| slow.next().map(ServedEvent::Tree)))
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

    #[test]
    fn raw_served_renders_like_the_tree_path() {
        let base = json!({
            "type": "m.room.message", "event_id": "$e", "sender": "@a:x",
            "origin_server_ts": 1000, "content": {"body": "@@hearth-age@@"},
            "unsigned": {"x": 1},
        });
        // The mark occurs as a whole string in the content too: not
        // split, per-viewer path (inside a longer string it cannot match:
        // its quotes would be escaped).
        assert!(RawServed::new(&base).is_none());
        let mut base = base;
        base["content"]["body"] = "hi".into();
        let raw = RawServed::new(&base).unwrap();
        let mut tree = base.clone();
        set_age(&mut tree, 1500);
        let got: Value = serde_json::from_str(raw.render(1500).unwrap().get()).unwrap();
        assert_eq!(got, tree);
        // No `unsigned`: served as is.
        let bare = json!({"origin_server_ts": 1, "type": "t"});
        let raw = RawServed::new(&bare).unwrap();
        assert_eq!(
            raw.render(9).unwrap().get(),
            serde_json::to_string(&bare).unwrap()
        );
        // `redacted_because` carries its own age: per-viewer path.
        let red = json!({"origin_server_ts": 1, "unsigned": {"redacted_because": {}}});
        assert!(RawServed::new(&red).is_none());
    }
}
