//! The room's event graph as stored: where events stand (timeline,
//! soft-failed, outlier, rejected), the state after each, and resolving
//! several states into one (cached by its inputs; large ones on the
//! blocking pool). See docs/ARCHITECTURE.md "The event graph".

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use ruma::canonical_json;
use ruma::OwnedEventId;

use crate::db::Pool;
use crate::events::RoomVersion;

use super::resolve::{self, EventMap};
use super::state::{self, StateMap};
use super::RoomError;
use crate::events::Pdu;

/// Resolutions loading more events than this run on the blocking pool.
pub const INLINE_RESOLUTION_EVENTS: usize = 256;
/// Most prev_events a local event takes (Synapse: 10).
pub const MAX_LOCAL_PREV_EVENTS: usize = 10;

/// Where a known event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// In the timeline: served to clients, state known.
    Timeline,
    /// Stored with its state, never served (server-server "Soft failure").
    SoftFailed,
    /// Stored without state (auth chains, gaps).
    Outlier,
    /// Refused by the authorization rules: not in the graph.
    Rejected,
}

/// A known event's place in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub status: Status,
    /// Topological depth as stored (ours, not the sender's claim).
    pub depth: i64,
    /// The state after the event (`None`: outlier or rejected).
    pub snapshot: Option<i64>,
}

/// A forward extremity: an event no other event references yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extremity {
    pub event_id: OwnedEventId,
    pub depth: i64,
    /// The state after it.
    pub snapshot: i64,
}

/// The status of each known id among `ids` (unknown ones are absent).
/// The room's `room_extremities` row changed by a net change: `removed`
/// leave the array, `added` join it (the row is created by the room's
/// first event). One statement, a HOT update of one row (see migration 31).
pub fn extremity_rows(
    w: crate::db::Write,
    room: &str,
    removed: Vec<String>,
    added: Vec<String>,
) -> crate::db::Write {
    if removed.is_empty() && added.is_empty() {
        return w;
    }
    w.statement(
        "INSERT INTO room_extremities AS x (room_id, event_ids) \
         VALUES ($1, ARRAY(SELECT DISTINCT a FROM unnest($3::text[]) AS a)) \
         ON CONFLICT (room_id) DO UPDATE SET event_ids = ARRAY( \
             SELECT e FROM unnest(x.event_ids) AS e WHERE e <> ALL($2::text[]) \
             UNION SELECT a FROM unnest($3::text[]) AS a)",
        vec![
            room.into(),
            crate::db::SqlValue::TextArray(removed),
            crate::db::SqlValue::TextArray(added),
        ],
    )
}

pub async fn placed(db: &Pool, ids: &[String]) -> Result<HashMap<String, Placed>, RoomError> {
    let mut out = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let rows = db
        .query(
            "SELECT event_id, status, depth, snapshot_id FROM room_pdus WHERE event_id = ANY($1) \
             UNION ALL \
             SELECT event_id, 'rejected', 0, NULL FROM rejected_events WHERE event_id = ANY($1)",
            &[&ids],
        )
        .await?;
    for r in rows {
        let status = match r.get::<&str>(1)? {
            "timeline" => Status::Timeline,
            "soft_failed" => Status::SoftFailed,
            "outlier" => Status::Outlier,
            _ => Status::Rejected,
        };
        out.insert(
            r.get::<String>(0)?,
            Placed {
                status,
                depth: r.get(2)?,
                snapshot: r.get(3)?,
            },
        );
    }
    Ok(out)
}

/// The `(type, state_key)` of each stored state event of `room` among
/// `ids`, in one query (others are absent).
pub async fn state_keys(
    db: &Pool,
    room: &ruma::OwnedRoomId,
    ids: &[String],
) -> Result<HashMap<String, (String, String)>, RoomError> {
    let mut out = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let rows = db
        .query(
            "SELECT event_id, json->>'type', json->>'state_key' FROM room_pdus \
             WHERE event_id = ANY($1) AND room_id = $2",
            &[&ids, &room.as_str()],
        )
        .await?;
    for r in rows {
        let (Some(t), Some(k)) = (r.get::<Option<String>>(1)?, r.get::<Option<String>>(2)?) else {
            continue;
        };
        out.insert(r.get::<String>(0)?, (t, k));
    }
    Ok(out)
}

/// The local event's prev_events: the deepest [`MAX_LOCAL_PREV_EVENTS`]
/// extremities (ties by id, so the choice is stable).
pub fn choose_prev_events(extremities: &[Extremity]) -> Vec<Extremity> {
    let mut e = extremities.to_vec();
    e.sort_by(|a, b| b.depth.cmp(&a.depth).then(a.event_id.cmp(&b.event_id)));
    e.truncate(MAX_LOCAL_PREV_EVENTS);
    e
}

/// If no key is conflicted (present in every state with one value), the
/// resolution is that common state: no events need loading.
pub fn trivially_resolved(states: &[&StateMap]) -> Option<StateMap> {
    let first = states.first()?;
    states
        .iter()
        .all(|s| s.len() == first.len() && *s == *first)
        .then(|| (*first).clone())
}

/// A stored event as loaded for a resolution, not parsed yet: `(event_id,
/// json text, room version)`. Parsing ~10,000 events is CPU work that must
/// not run on a shard thread, so it happens beside the resolution itself.
pub type RawEvent = (String, String, String);

/// Loads every event of `states` and their auth chains (room_pdus: timeline,
/// soft-failed and outlier events alike), unparsed.
pub async fn load_for_resolution(
    db: &Pool,
    states: &[&StateMap],
) -> Result<Vec<RawEvent>, RoomError> {
    let mut roots: Vec<String> = states.iter().flat_map(|s| s.values().cloned()).collect();
    roots.sort();
    roots.dedup();
    let rows = db
        .query(
            "WITH RECURSIVE chain(event_id) AS ( \
                 SELECT unnest($1::text[]) \
                 UNION \
                 SELECT a.id FROM chain c JOIN room_pdus p ON p.event_id = c.event_id \
                 CROSS JOIN LATERAL jsonb_array_elements_text(p.json->'auth_events') AS a(id)) \
             SELECT p.event_id, p.json::text, r.room_version FROM chain c \
             JOIN room_pdus p ON p.event_id = c.event_id JOIN rooms r ON r.room_id = p.room_id",
            &[&roots],
        )
        .await?;
    rows.into_iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .collect()
}

/// Parses loaded events (see [`RawEvent`]).
pub fn parse_for_resolution(raw: Vec<RawEvent>) -> Result<EventMap, RoomError> {
    let mut out = EventMap::with_capacity(raw.len());
    for (id, json, version) in raw {
        let id = OwnedEventId::try_from(id).map_err(|e| RoomError::Internal(e.to_string()))?;
        let json: canonical_json::CanonicalJsonObject = serde_json::from_str(&json)
            .map_err(|e| RoomError::Internal(format!("stored event malformed: {e}")))?;
        let version = RoomVersion::parse(&version)?;
        out.insert(id.clone(), Pdu::from_json(id, json, version)?);
    }
    Ok(out)
}

/// Resolves `states`, each optionally named by its stored snapshot id (the
/// cache key: snapshots never change, so neither does their resolution).
pub struct Resolver<'a> {
    pub db: &'a Pool,
    pub cache: &'a std::cell::RefCell<lru::LruCache<Vec<i64>, Rc<StateMap>>>,
    /// Big resolutions (the blocking pool's) take turns (`admission`).
    pub gate: &'a crate::primitives::FairGate,
}

impl Resolver<'_> {
    /// `uncommitted`: an event of the states not stored yet (the one being
    /// committed), which the database cannot supply.
    pub async fn resolve(
        &self,
        version: RoomVersion,
        inputs: &[(i64, Rc<StateMap>)],
        uncommitted: Option<&Pdu>,
    ) -> Result<Rc<StateMap>, RoomError> {
        let mut key: Vec<i64> = inputs.iter().map(|(id, _)| *id).collect();
        key.sort_unstable();
        key.dedup();
        if let [only] = key.as_slice() {
            if let Some((_, s)) = inputs.iter().find(|(id, _)| id == only) {
                return Ok(s.clone());
            }
        }
        if let Some(hit) = self.cache.borrow_mut().get(&key) {
            return Ok(hit.clone());
        }
        // Distinct states only (two prev events may share a snapshot).
        let distinct: BTreeMap<i64, Rc<StateMap>> = inputs.iter().cloned().collect();
        let states: Vec<&StateMap> = distinct.values().map(|s| s.as_ref()).collect();
        let resolved = match trivially_resolved(&states) {
            Some(s) => s,
            None => {
                // The loaded events and their parsed copies are the memory
                // of a resolution: only a few big ones at once per shard,
                // owed work, so it waits rather than fails.
                let _permit = match distinct_events(&states) > INLINE_RESOLUTION_EVENTS {
                    true => self
                        .gate
                        .enter_unbounded(key_room(&states).as_str())
                        .await
                        .ok(),
                    false => None,
                };
                let raw = load_for_resolution(self.db, &states).await?;
                let uncommitted = uncommitted.cloned();
                let owned: Vec<StateMap> = states.iter().map(|s| (*s).clone()).collect();
                let run = move || -> Result<StateMap, RoomError> {
                    let mut events = parse_for_resolution(raw)?;
                    if let Some(p) = uncommitted {
                        events.insert(p.event_id.clone(), p);
                    }
                    let refs: Vec<&StateMap> = owned.iter().collect();
                    resolve::resolve(version, &refs, &events)
                        .map_err(|e| RoomError::Internal(e.to_string()))
                };
                let out = if distinct_events(&states) > INLINE_RESOLUTION_EVENTS {
                    // Never on the shard thread: the blocking pool.
                    crate::blocking::run(run)
                        .await
                        .map_err(|e| RoomError::Internal(format!("state resolution: {e}")))?
                } else {
                    run()
                };
                out?
            }
        };
        let resolved = Rc::new(resolved);
        self.cache.borrow_mut().put(key, resolved.clone());
        Ok(resolved)
    }

    /// The state after each snapshot (loaded; callers keep the ones they
    /// already have).
    pub async fn load(&self, snapshot: i64) -> Result<Rc<StateMap>, RoomError> {
        let key = vec![snapshot];
        if let Some(hit) = self.cache.borrow_mut().get(&key) {
            return Ok(hit.clone());
        }
        let s = Rc::new(state::load(self.db, snapshot).await?);
        self.cache.borrow_mut().put(key, s.clone());
        Ok(s)
    }
}

/// A room's turn key for the resolution gate: its create event, which
/// every state of the room holds (the resolver is not told the room id).
fn key_room(states: &[&StateMap]) -> String {
    states
        .iter()
        .find_map(|s| s.get(&("m.room.create".to_owned(), String::new())))
        .cloned()
        .unwrap_or_default()
}

fn distinct_events(states: &[&StateMap]) -> usize {
    states.iter().map(|s| s.len()).max().unwrap_or(0) * states.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(id: &str, depth: i64) -> Extremity {
        Extremity {
            event_id: OwnedEventId::try_from(id).unwrap(),
            depth,
            snapshot: 1,
        }
    }

    #[test]
    fn local_events_take_the_deepest_ten_extremities() {
        let all: Vec<Extremity> = (0..15).map(|i| ext(&format!("$e{i:02}"), i)).collect();
        let chosen = choose_prev_events(&all);
        assert_eq!(chosen.len(), MAX_LOCAL_PREV_EVENTS);
        assert!(chosen.iter().all(|e| e.depth >= 5));
        assert_eq!(choose_prev_events(&all[..2]).len(), 2);
    }

    #[test]
    fn trivial_resolution_needs_equal_states() {
        let mut a = StateMap::new();
        a.insert(("t".into(), "".into()), "$1".into());
        let mut b = a.clone();
        assert_eq!(trivially_resolved(&[&a, &b]), Some(a.clone()));
        b.insert(("u".into(), "".into()), "$2".into());
        assert_eq!(trivially_resolved(&[&a, &b]), None);
    }
}
