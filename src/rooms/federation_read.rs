//! Reading a room for another server: the server-server API's "Retrieving
//! events" (`/event`), "Backfilling and retrieving missing events"
//! (`/backfill`, `/get_missing_events`), "Room State" (`/state`,
//! `/state_ids`), "Event Auth" (`/event_auth`) and `/timestamp_to_event`.
//!
//! Everything here reads committed rows through the shard's pool, on
//! whatever shard took the request; the room's write path is never
//! entered. Events are served in federation format (the stored signed
//! PDU), through the room version's redaction algorithm when redacted.
//!
//! **Access** (as Synapse): the asking server must have a joined member in
//! the room's current state, else `Forbidden` (also for unknown rooms:
//! "Host not in room"). Events walked for it (`/event`, `/backfill`,
//! `/get_missing_events`) are then filtered by history visibility for
//! servers (Synapse `filter_events_for_server`): with `invited` or
//! `joined` history an event is visible only if the server had a member
//! invited (`invited` only) or joined in the state after the event, else it
//! is served redacted; outliers (state unknown) count as visible.
//!
//! **Bounds**: every walk is capped (result size, seeds, visited rows), so
//! a peer cannot make a shard do unbounded work.

use std::collections::{HashMap, HashSet};

use ruma::canonical_json::{self, CanonicalJsonObject, CanonicalJsonValue};
use serde_json::Value;

use crate::db::{Pool, Row};
use crate::events::{redact, RoomVersion};

use super::history::closest_event;
use super::state;
use super::timeline::{Dir, RoomPos};
use super::RoomError;

/// Most events one `/backfill` answers (Synapse caps at 100 too).
pub const MAX_BACKFILL: usize = 100;
/// Most events one `/get_missing_events` answers (Synapse: 20).
pub const MAX_MISSING: usize = 20;
/// Most event ids a walk may start from or stop at (`v`,
/// `latest_events`, `earliest_events`).
pub const MAX_SEEDS: usize = 100;
/// Most ancestors a backfill walk visits before keeping the deepest.
const MAX_WALK: i64 = 5_000;
/// Most events in one auth chain: a bigger one is refused, not truncated
/// (a partial auth chain would be wrong, not merely short).
const MAX_AUTH_CHAIN: i64 = 100_000;

/// A stored event as another server gets it.
pub(super) struct Stored {
    pub(super) id: String,
    room_id: String,
    pub(super) json: CanonicalJsonObject,
    version: RoomVersion,
    /// Our depth (room order), not the sender's claim.
    depth: i64,
    /// The state after it; `None` for an outlier.
    snapshot: Option<i64>,
    /// An accepted `m.room.redaction` targets it.
    redacted: bool,
}

/// Columns [`Stored::from_row`] reads, for `room_pdus p JOIN rooms r`.
const STORED_COLUMNS: &str = "p.event_id, p.room_id, p.json, p.depth, p.snapshot_id, \
     r.room_version, EXISTS (SELECT 1 FROM redactions x JOIN events re \
     ON re.event_id = x.event_id WHERE x.redacts = p.event_id)";

impl Stored {
    fn from_row(row: &Row) -> Result<Stored, RoomError> {
        let Value::Object(map) = row.get::<Value>(2)? else {
            return Err(RoomError::Internal("stored event is not an object".into()));
        };
        let json = canonical_json::try_from_json_map(map)
            .map_err(|e| RoomError::Internal(format!("stored event: {e}")))?;
        Ok(Stored {
            id: row.get(0)?,
            room_id: row.get(1)?,
            json,
            version: RoomVersion::parse(row.get::<&str>(5)?)?,
            depth: row.get(3)?,
            snapshot: row.get(4)?,
            redacted: row.get(6)?,
        })
    }

    /// `prev_events` as stored (strings only).
    fn prev_events(&self) -> Vec<String> {
        match self.json.get("prev_events") {
            Some(CanonicalJsonValue::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The `depth` the PDU claims (what the asking server compares
    /// `min_depth` with).
    fn claimed_depth(&self) -> i64 {
        match self.json.get("depth") {
            Some(CanonicalJsonValue::Integer(i)) => i64::from(*i),
            _ => 0,
        }
    }

    /// The federation JSON, redacted if it was or if the asking server may
    /// not see it.
    pub(super) fn served(&self, visible: bool) -> Result<Value, RoomError> {
        let redacted;
        let json = if self.redacted || !visible {
            redacted = redact(&self.json, self.version)
                .map_err(|e| RoomError::Internal(format!("redacting stored event: {e}")))?;
            &redacted
        } else {
            &self.json
        };
        serde_json::to_value(json).map_err(|e| RoomError::Internal(e.to_string()))
    }
}

/// Loads known events among `ids` (any status but rejected), of `room_id`
/// only if given, in the order of `ids`.
pub(super) async fn load(
    db: &Pool,
    room_id: Option<&str>,
    ids: &[String],
) -> Result<Vec<Stored>, RoomError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {STORED_COLUMNS} FROM room_pdus p JOIN rooms r USING (room_id) \
         WHERE p.event_id = ANY($1) AND ($2::text IS NULL OR p.room_id = $2)"
    );
    let room_id: Option<String> = room_id.map(str::to_owned);
    let rows = db.query(&sql, &[&ids, &room_id]).await?;
    let mut by_id: HashMap<String, Stored> = HashMap::with_capacity(rows.len());
    for r in &rows {
        let s = Stored::from_row(r)?;
        by_id.insert(s.id.clone(), s);
    }
    Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
}

/// The server part of a user id (Synapse's `get_domain_from_id`).
fn server_of(user_id: &str) -> Option<&str> {
    user_id.split_once(':').map(|(_, s)| s)
}

/// Refuses a server with no joined member in the room's current state
/// (server-server "Room State": "the requesting server must be in the
/// room"), and unknown rooms alike, as Synapse ("Host not in room"), and a
/// server the room's `m.room.server_acl` denies (server-server "Server
/// Access Control Lists": 403 `M_FORBIDDEN`). One query reads both.
pub async fn check_server_in_room(db: &Pool, room_id: &str, origin: &str) -> Result<(), RoomError> {
    let suffix = format!(":{origin}");
    let len = i32::try_from(suffix.chars().count()).unwrap_or(i32::MAX);
    // `right()` narrows the scan in SQL; the exact server match is below.
    let rows = db
        .query(
            "SELECT state_key, NULL::jsonb FROM current_state WHERE room_id = $1 \
             AND type = 'm.room.member' AND membership = 'join' AND right(state_key, $3) = $2 \
             UNION ALL \
             SELECT NULL, e.json->'content' FROM current_state c \
             JOIN room_pdus e ON e.event_id = c.event_id \
             WHERE c.room_id = $1 AND c.type = 'm.room.server_acl' AND c.state_key = ''",
            &[&room_id, &suffix, &len],
        )
        .await?;
    let (mut member, mut acl) = (false, None);
    for r in rows {
        match r.get::<Option<&str>>(0)? {
            Some(k) => member |= server_of(k) == Some(origin),
            None => acl = r.get::<Option<Value>>(1)?,
        }
    }
    if !member {
        return Err(RoomError::Forbidden("Host not in room".into()));
    }
    if !crate::federation::acl::server_allowed(acl.as_ref(), origin) {
        return Err(RoomError::Forbidden(
            "Server is banned from this room".into(),
        ));
    }
    Ok(())
}

/// Whether `origin` may see each of `events` (Synapse
/// `filter_events_for_server`, see the module doc): one query reads the
/// history visibility and the origin's member events at every snapshot.
async fn visible_to_server(
    db: &Pool,
    origin: &str,
    events: &[Stored],
) -> Result<Vec<bool>, RoomError> {
    let mut snapshots: Vec<i64> = events.iter().filter_map(|e| e.snapshot).collect();
    snapshots.sort_unstable();
    snapshots.dedup();
    if snapshots.is_empty() {
        return Ok(vec![true; events.len()]);
    }
    let suffix = format!(":{origin}");
    let len = i32::try_from(suffix.chars().count()).unwrap_or(i32::MAX);
    let rows = db
        .query(
            "WITH RECURSIVE chain(root, id, parent, hop) AS ( \
                 SELECT snapshot_id, snapshot_id, parent_id, 0 FROM state_snapshots \
                 WHERE snapshot_id = ANY($1) \
                 UNION ALL \
                 SELECT c.root, s.snapshot_id, s.parent_id, c.hop + 1 \
                 FROM state_snapshots s JOIN chain c ON s.snapshot_id = c.parent) \
             SELECT l.root, l.type, l.state_key, CASE l.type \
                 WHEN 'm.room.member' THEN ev.json->'content'->>'membership' \
                 ELSE ev.json->'content'->>'history_visibility' END \
             FROM ( \
                 SELECT DISTINCT ON (c.root, e.type, e.state_key) \
                        c.root, e.type, e.state_key, e.event_id \
                 FROM chain c JOIN state_snapshot_entries e ON e.snapshot_id = c.id \
                 WHERE (e.type = 'm.room.member' AND right(e.state_key, $3) = $2) \
                    OR (e.type = 'm.room.history_visibility' AND e.state_key = '') \
                 ORDER BY c.root, e.type, e.state_key, c.hop) l \
             JOIN room_pdus ev ON ev.event_id = l.event_id",
            &[&snapshots, &suffix, &len],
        )
        .await?;
    // Per snapshot: the visibility, and the origin's members' memberships.
    let mut vis: HashMap<i64, (Option<String>, Vec<String>)> = HashMap::new();
    for r in rows {
        let root: i64 = r.get(0)?;
        let kind: &str = r.get(1)?;
        let key: &str = r.get(2)?;
        let value: Option<String> = r.get(3)?;
        let entry = vis.entry(root).or_default();
        if kind == "m.room.history_visibility" {
            entry.0 = value;
        } else if server_of(key) == Some(origin) {
            entry.1.extend(value);
        }
    }
    Ok(events
        .iter()
        .map(|e| {
            let Some(s) = e.snapshot else { return true };
            let (hv, members) = vis.get(&s).cloned().unwrap_or_default();
            server_may_see(hv.as_deref(), &members)
        })
        .collect())
}

/// Synapse's `check_event_is_visible` for servers: `history_visibility`
/// after the event (absent or unknown: `shared`) and the memberships of
/// the server's users then. Only `invited` and `joined` hide anything.
fn server_may_see(history_visibility: Option<&str>, memberships: &[String]) -> bool {
    let has = |m: &str| memberships.iter().any(|x| x == m);
    match history_visibility {
        Some("joined") => has("join"),
        Some("invited") => has("join") || has("invite"),
        _ => true,
    }
}

/// `events` served to `origin`: redacted where it may not see them.
async fn serve_to_server(
    db: &Pool,
    origin: &str,
    events: &[Stored],
) -> Result<Vec<Value>, RoomError> {
    let visible = visible_to_server(db, origin, events).await?;
    events
        .iter()
        .zip(visible)
        .map(|(e, v)| e.served(v))
        .collect()
}

/// The auth chain of `roots` (their `auth_events`, recursively; the roots
/// themselves only where one is in another's chain), oldest first.
pub(super) async fn auth_chain(
    db: &Pool,
    room_id: &str,
    roots: &[String],
) -> Result<Vec<String>, RoomError> {
    if roots.is_empty() {
        return Ok(Vec::new());
    }
    let rows = db
        .query(
            "WITH RECURSIVE chain(event_id) AS ( \
                 SELECT a.id FROM room_pdus p \
                 CROSS JOIN LATERAL jsonb_array_elements_text(p.json->'auth_events') AS a(id) \
                 WHERE p.event_id = ANY($1) AND p.room_id = $2 \
                 UNION \
                 SELECT a.id FROM chain c \
                 JOIN room_pdus p ON p.event_id = c.event_id AND p.room_id = $2 \
                 CROSS JOIN LATERAL jsonb_array_elements_text(p.json->'auth_events') AS a(id)) \
             SELECT p.event_id, p.depth FROM (SELECT event_id FROM chain LIMIT $3) c \
             JOIN room_pdus p ON p.event_id = c.event_id AND p.room_id = $2",
            &[&roots, &room_id, &(MAX_AUTH_CHAIN + 1)],
        )
        .await?;
    if rows.len() as i64 > MAX_AUTH_CHAIN {
        return Err(RoomError::TooLarge("auth chain too large".into()));
    }
    let mut chain = rows
        .iter()
        .map(|r| Ok((r.get::<i64>(1)?, r.get::<String>(0)?)))
        .collect::<Result<Vec<_>, RoomError>>()?;
    chain.sort();
    Ok(chain.into_iter().map(|(_, id)| id).collect())
}

/// The state of `room_id` *before* `event_id` (server-server "Room
/// State": the state at the event). The stored snapshot is the state
/// after; for a state event its own key is put back as it was: the single
/// prev event's state exactly, or, with several prev events, the value
/// they agree on (else the value replaced when the event was persisted,
/// `events.prev_state_event_id`, as Synapse's `replaces_state`).
pub(super) async fn state_before(
    db: &Pool,
    room_id: &str,
    event_id: &str,
) -> Result<Vec<String>, RoomError> {
    let row = db
        .query_opt(
            "SELECT p.snapshot_id, p.json->>'type', p.json->>'state_key', \
                    ARRAY(SELECT jsonb_array_elements_text(p.json->'prev_events')), \
                    e.prev_state_event_id \
             FROM room_pdus p LEFT JOIN events e ON e.event_id = p.event_id \
             WHERE p.event_id = $1 AND p.room_id = $2",
            &[&event_id, &room_id],
        )
        .await?
        .ok_or_else(|| RoomError::NotFound("Event not found in this room".into()))?;
    let snapshot: Option<i64> = row.get(0)?;
    let snapshot =
        snapshot.ok_or_else(|| RoomError::NotFound("No state known at this event".into()))?;
    let kind: Option<String> = row.get(1)?;
    let state_key: Option<String> = row.get(2)?;
    let prevs: Vec<String> = row.get(3)?;
    let replaced: Option<String> = row.get(4)?;
    let mut after = state::load(db, snapshot).await?;
    let (Some(kind), Some(state_key)) = (kind, state_key) else {
        return Ok(after.into_values().collect());
    };
    let prev_snapshots: Vec<i64> = db
        .query(
            "SELECT DISTINCT snapshot_id FROM room_pdus WHERE event_id = ANY($1) \
             AND room_id = $2 AND snapshot_id IS NOT NULL",
            &[&prevs, &room_id],
        )
        .await?
        .iter()
        .map(|r| r.get::<i64>(0))
        .collect::<Result<_, _>>()?;
    if let [only] = prev_snapshots.as_slice() {
        return Ok(state::load(db, *only).await?.into_values().collect());
    }
    let key = (kind, state_key);
    let mut values: HashSet<Option<String>> = HashSet::new();
    for s in &prev_snapshots {
        let at = state::load_keys(db, *s, Some(std::slice::from_ref(&key))).await?;
        values.insert(at.get(&key).cloned());
    }
    let before = match values.len() {
        1 => values.into_iter().next().flatten(),
        _ => replaced,
    };
    match before {
        Some(id) => after.insert(key, id),
        None => after.remove(&key),
    };
    Ok(after.into_values().collect())
}

/// `/state_ids`: the ids of the state before `event_id` and of its auth
/// chain.
pub async fn state_ids(
    db: &Pool,
    room_id: &str,
    origin: &str,
    event_id: &str,
) -> Result<(Vec<String>, Vec<String>), RoomError> {
    check_server_in_room(db, room_id, origin).await?;
    let mut pdus = state_before(db, room_id, event_id).await?;
    pdus.sort();
    let chain = auth_chain(db, room_id, &pdus).await?;
    Ok((pdus, chain))
}

/// `/state`: [`state_ids`] as full PDUs.
pub async fn state_events(
    db: &Pool,
    room_id: &str,
    origin: &str,
    event_id: &str,
) -> Result<(Vec<Value>, Vec<Value>), RoomError> {
    let (pdus, chain) = state_ids(db, room_id, origin, event_id).await?;
    let served = |evs: Vec<Stored>| {
        evs.iter()
            .map(|e| e.served(true))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok((
        served(load(db, Some(room_id), &pdus).await?)?,
        served(load(db, Some(room_id), &chain).await?)?,
    ))
}

/// `/event_auth/{roomId}/{eventId}`: the event's full auth chain.
pub async fn event_auth(
    db: &Pool,
    room_id: &str,
    origin: &str,
    event_id: &str,
) -> Result<Vec<Value>, RoomError> {
    check_server_in_room(db, room_id, origin).await?;
    let id = [event_id.to_owned()];
    if load(db, Some(room_id), &id).await?.is_empty() {
        return Err(RoomError::NotFound("Event not found in this room".into()));
    }
    let chain = auth_chain(db, room_id, &id).await?;
    load(db, Some(room_id), &chain)
        .await?
        .iter()
        .map(|e| e.served(true))
        .collect()
}

/// `/event/{eventId}`: one PDU, if the server is in its room.
pub async fn event(db: &Pool, origin: &str, event_id: &str) -> Result<Value, RoomError> {
    let not_found = || RoomError::NotFound("Event not found".into());
    let mut found = load(db, None, &[event_id.to_owned()]).await?;
    let ev = found.pop().ok_or_else(not_found)?;
    check_server_in_room(db, &ev.room_id, origin).await?;
    serve_to_server(db, origin, &[ev])
        .await?
        .pop()
        .ok_or_else(not_found)
}

/// `/backfill`: the seeds and their ancestors by `prev_events`, deepest
/// first, at most `limit` (≤ [`MAX_BACKFILL`]). Depth falls by exactly
/// one along each event's deepest prev event, so Synapse's best-first walk
/// by depth yields the `limit` deepest ancestors, all within `limit`
/// levels of the deepest seed: the walk is pruned there and capped at
/// [`MAX_WALK`] rows.
pub async fn backfill(
    db: &Pool,
    room_id: &str,
    origin: &str,
    seeds: &[String],
    limit: usize,
) -> Result<Vec<Value>, RoomError> {
    check_server_in_room(db, room_id, origin).await?;
    let limit = limit.min(MAX_BACKFILL);
    if limit == 0 || seeds.is_empty() {
        return Ok(Vec::new());
    }
    let limit = limit as i64;
    let sql = format!(
        "WITH RECURSIVE walk(event_id) AS ( \
             SELECT event_id FROM room_pdus \
             WHERE event_id = ANY($1) AND room_id = $2 AND status <> 'outlier' \
             UNION \
             SELECT p.event_id FROM walk w \
             JOIN room_pdus c ON c.event_id = w.event_id \
             CROSS JOIN LATERAL jsonb_array_elements_text(c.json->'prev_events') AS prev(id) \
             JOIN room_pdus p ON p.event_id = prev.id \
             WHERE p.room_id = $2 AND p.status <> 'outlier' \
               AND p.depth > (SELECT max(depth) FROM room_pdus \
                              WHERE event_id = ANY($1) AND room_id = $2) - $3) \
         SELECT {STORED_COLUMNS} FROM (SELECT event_id FROM walk LIMIT $4) w \
         JOIN room_pdus p ON p.event_id = w.event_id JOIN rooms r ON r.room_id = p.room_id \
         ORDER BY p.depth DESC, p.event_id LIMIT $3"
    );
    let rows = db
        .query(&sql, &[&seeds, &room_id, &limit, &MAX_WALK])
        .await?;
    let events = rows
        .iter()
        .map(Stored::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    serve_to_server(db, origin, &events).await
}

/// `/get_missing_events`: a breadth-first walk of `prev_events` back from
/// `latest` (not included), skipping `earliest` and events claiming a
/// depth below `min_depth`, at most `limit` (≤ [`MAX_MISSING`]) events,
/// oldest first. One query per level, at most `limit + 1` levels.
pub async fn missing_events(
    db: &Pool,
    room_id: &str,
    origin: &str,
    earliest: &[String],
    latest: &[String],
    limit: usize,
    min_depth: i64,
) -> Result<Vec<Value>, RoomError> {
    check_server_in_room(db, room_id, origin).await?;
    let limit = limit.min(MAX_MISSING);
    let mut seen: HashSet<String> = earliest.iter().cloned().collect();
    let front_ids: Vec<String> = latest
        .iter()
        .filter(|id| !seen.contains(*id))
        .cloned()
        .collect();
    let mut prevs: Vec<String> = load(db, Some(room_id), &front_ids)
        .await?
        .iter()
        .flat_map(Stored::prev_events)
        .collect();
    let mut found: Vec<Stored> = Vec::new();
    while !prevs.is_empty() && found.len() < limit {
        let mut next: Vec<String> = prevs
            .drain(..)
            .filter(|id| seen.insert(id.clone()))
            .collect();
        next.sort();
        let level: Vec<Stored> = load(db, Some(room_id), &next)
            .await?
            .into_iter()
            .filter(|e| e.snapshot.is_some() && e.claimed_depth() >= min_depth)
            .take(limit - found.len())
            .collect();
        prevs = level.iter().flat_map(Stored::prev_events).collect();
        found.extend(level);
    }
    found.sort_by(|a, b| a.depth.cmp(&b.depth).then_with(|| a.id.cmp(&b.id)));
    serve_to_server(db, origin, &found).await
}

/// `/timestamp_to_event`: the event closest to `ts` in `dir`, of the whole
/// room (no visibility: only which event, not its content, is answered).
pub async fn timestamp_to_event(
    db: &Pool,
    room_id: &str,
    origin: &str,
    ts: i64,
    dir: Dir,
) -> Result<(String, i64), RoomError> {
    check_server_in_room(db, room_id, origin).await?;
    closest_event(db, room_id, ts, dir, RoomPos::END)
        .await?
        .ok_or_else(|| RoomError::NotFound(format!("No event found near {ts}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_of_takes_everything_after_the_first_colon() {
        assert_eq!(server_of("@bob:localhost:8448"), Some("localhost:8448"));
        assert_eq!(server_of("@bob:example.org"), Some("example.org"));
        assert_eq!(server_of("nocolon"), None);
    }

    #[test]
    fn only_invited_and_joined_history_hide_events_from_servers() {
        let m = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for hv in [None, Some("shared"), Some("world_readable"), Some("bogus")] {
            assert!(server_may_see(hv, &[]), "{hv:?}");
        }
        assert!(server_may_see(Some("joined"), &m(&["leave", "join"])));
        assert!(!server_may_see(Some("joined"), &m(&["invite", "leave"])));
        assert!(server_may_see(Some("invited"), &m(&["invite"])));
        assert!(!server_may_see(Some("invited"), &m(&["leave", "ban"])));
        assert!(!server_may_see(Some("invited"), &[]));
    }
}
