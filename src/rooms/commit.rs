//! The one place that writes room history: [`Rooms::commit`] stores an
//! event — a local one from `send`, or one received from elsewhere through
//! `rooms::receive` — with its state, the room's forward extremities and
//! current state, in one group-commit write, then updates the caches and
//! announces it. Runs on the owner shard under the room's lock.
//!
//! Graph rules (docs/ARCHITECTURE.md "The event graph"): the state after an
//! event is the state before it plus the event; an event referenced by the
//! new one stops being a forward extremity; current state is the
//! resolution of the extremities' states. Soft-failed events keep their
//! state but touch neither; outliers have no state.

use std::rc::Rc;
use std::sync::Arc;

use crate::db::{SqlValue, Write};
use crate::stream::{Change, EventChange, Pos, RoomChange};

use super::graph::Extremity;
use super::pipeline::{Committing, ExtremityChange, Prepared, TxnKey};
use super::service::{RoomHead, Rooms};
use super::state::{self, SnapshotHead, StateMap};
use super::RoomError;
use crate::events::Pdu;

mod resynced;
mod rows;
pub use resynced::Completed;
use rows::{EVENT_ROWS, TXN_ROWS};

/// Outliers per statement of [`Rooms::commit_outliers`].
const OUTLIER_ROWS: usize = 1000;

/// What happens to the event being stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Part of the timeline: served, an extremity, changes current state.
    Timeline,
    /// Stored with its state; no extremity, no client, no notification.
    SoftFailed,
    /// Stored without state.
    Outlier,
    /// History from before what we had (`/backfill`): served by
    /// `/messages` at its topological place, at this (negative) stream
    /// position so no `/sync` shows it as new; touches neither the
    /// extremities nor current state, never announced, never notifies
    /// (docs/ARCHITECTURE.md "Backfill").
    Backfilled(i64),
}

/// Where an event goes in the graph, decided before committing.
#[derive(Debug, Clone)]
pub struct Placement {
    pub fate: Fate,
    /// The state before the event (`None` for outliers).
    pub before: Option<Rc<StateMap>>,
    /// A stored snapshot to delta the event's state against, with its state.
    pub base: Option<(SnapshotHead, Rc<StateMap>)>,
    /// Our topological depth: max(prev depths) + 1.
    pub depth: i64,
    /// The event is stored as an outlier now and moves out of it.
    pub was_outlier: bool,
    /// Built elsewhere: its prev events may be unknown, so the room's
    /// `backward_extremities` change with it (local events name known
    /// prevs only, and skip the two statements).
    pub received: bool,
    /// The pipeline's failure count when the head was read
    /// (`rooms::pipeline`: an event built on a failed write is refused).
    pub epoch: u64,
}

impl Placement {
    pub fn timeline(
        before: Rc<StateMap>,
        base: Option<(SnapshotHead, Rc<StateMap>)>,
        depth: i64,
        epoch: u64,
    ) -> Placement {
        Placement {
            fate: Fate::Timeline,
            before: Some(before),
            base,
            depth,
            was_outlier: false,
            received: false,
            epoch,
        }
    }
}

/// The `backward_extremities` rows change with a received event: it is no
/// longer one, and its prev events we do not hold (nor rejected, nor
/// soft-failed: those are not history to fetch) become ones, below it.
fn backward_rows(mut w: Write, room: &str, pdu: &Pdu, depth: i64) -> Write {
    w = w.statement(
        "DELETE FROM backward_extremities WHERE room_id = $1 AND event_id = $2",
        vec![room.into(), pdu.event_id.to_string().into()],
    );
    let prevs: Vec<String> = pdu.prev_events.iter().map(|e| e.to_string()).collect();
    w.statement(
        "INSERT INTO backward_extremities (room_id, event_id, child_depth) \
         SELECT $1, p, $2 FROM unnest($3::text[]) AS p \
         WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = p) \
         AND NOT EXISTS (SELECT 1 FROM rejected_events r WHERE r.event_id = p) \
         AND NOT EXISTS (SELECT 1 FROM graph_events g WHERE g.event_id = p \
                         AND g.status = 'soft_failed') \
         ON CONFLICT (room_id, event_id) DO UPDATE \
         SET child_depth = least(backward_extremities.child_depth, excluded.child_depth)",
        vec![room.into(), depth.into(), SqlValue::TextArray(prevs)],
    )
}

/// Equal states, comparing pointers first (most events share the map).
fn same(a: &Rc<StateMap>, b: &Rc<StateMap>) -> bool {
    Rc::ptr_eq(a, b) || a == b
}

/// Whether `new` differs from `old` in a key other than `own` (compared in
/// place: this runs for every event received on a fork, and a big room's
/// state is not copied for it).
fn changed_beyond(old: &StateMap, new: &StateMap, own: Option<&(String, String)>) -> bool {
    let other = |k: &(String, String)| Some(k) != own;
    new.iter().any(|(k, v)| other(k) && old.get(k) != Some(v))
        || old.keys().any(|k| other(k) && !new.contains_key(k))
}

/// The event's own snapshot: the base's id when nothing changed, else a
/// new one (delta against the base, or full).
fn event_snapshot(
    id: i64,
    base: Option<&(SnapshotHead, Rc<StateMap>)>,
    after: &Rc<StateMap>,
) -> (SnapshotHead, Option<state::NewSnapshot>) {
    match base {
        Some((h, m)) if same(m, after) => (*h, None),
        Some((h, m)) => {
            let plan = state::plan(id, Some(*h), m, after);
            (plan.head(), Some(plan))
        }
        None => {
            let plan = state::plan(id, None, &StateMap::new(), after);
            (plan.head(), Some(plan))
        }
    }
}

impl Rooms {
    /// Prepares the write of `pdu` as `place` says (see the module doc) and
    /// queues it in the room's pipeline; [`Committing::done`] waits for the
    /// COMMIT and the announcement. The caller holds the room's lock until
    /// this returns, and may release it before `done`.
    pub(super) async fn commit(
        self: &Rc<Self>,
        head: &RoomHead,
        pdu: Pdu,
        place: Placement,
        txn: Option<&(String, String)>,
        create_public: Option<bool>,
    ) -> Result<Committing, RoomError> {
        let room = pdu.room_id.as_str().to_owned();
        let ticket = self.stream.allocate();
        let stream = ticket.pos();
        let shard = i32::try_from(self.shard).map_err(|_| RoomError::Internal("shard".into()))?;
        let event_id = pdu.event_id.to_string();
        let mut w = Write::new();
        if place.was_outlier {
            w = w.statement(
                "DELETE FROM graph_events WHERE event_id = $1",
                vec![event_id.clone().into()],
            );
        }
        let Some(before) = place.before.clone() else {
            // Outlier: the event alone, no state.
            w = w.statement(
                "INSERT INTO graph_events (event_id, room_id, json, depth, snapshot_id, status, \
                 stream_shard, stream_ordering) VALUES ($1, $2, $3, $4, NULL, 'outlier', $5, $6) \
                 ON CONFLICT (event_id) DO NOTHING",
                vec![
                    event_id.clone().into(),
                    room.clone().into(),
                    SqlValue::Jsonb(pdu.json_value()),
                    place.depth.into(),
                    shard.into(),
                    stream.into(),
                ],
            );
            return self.finish(w, pdu, ticket, Err(head), None, place.epoch);
        };
        // State after the event, and its snapshot. A non-state event's is
        // the state before it, shared (no copy of a big room's state).
        let prev_state = pdu
            .state_key
            .as_ref()
            .and_then(|k| before.get(&(pdu.kind.to_string(), k.clone())).cloned());
        let after = match &pdu.state_key {
            Some(k) => {
                let mut after = (*before).clone();
                after.insert((pdu.kind.to_string(), k.clone()), event_id.clone());
                Rc::new(after)
            }
            None => before.clone(),
        };
        let snap_id = match place.fate {
            Fate::Backfilled(pos) => state::backfill_snapshot_id(self.shard, pos),
            _ => state::snapshot_id(self.shard, stream),
        };
        let (ev_snap, ev_write) = event_snapshot(snap_id, place.base.as_ref(), &after);
        if let Some(snap) = &ev_write {
            w = state::write(w, &room, snap);
        }
        if place.received && place.fate != Fate::SoftFailed {
            w = backward_rows(w, &room, &pdu, place.depth);
        }
        if let Fate::Backfilled(pos) = place.fate {
            // Its own state doubles as `room_snapshot`: no `/sync` reads
            // it (`sync::timeline::state_at` skips negative positions).
            w = w.statement(
                "INSERT INTO events (stream_ordering, room_id, event_id, sender, type, json, \
                 state_key, depth, snapshot_id, stream_shard, prev_state_event_id, \
                 room_snapshot, resolved) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $9, false)",
                vec![
                    pos.into(),
                    room.clone().into(),
                    event_id.clone().into(),
                    pdu.sender.to_string().into(),
                    pdu.kind.to_string().into(),
                    SqlValue::Jsonb(pdu.json_value()),
                    pdu.state_key.clone().into(),
                    place.depth.into(),
                    ev_snap.id.into(),
                    shard.into(),
                    prev_state.into(),
                ],
            );
            w = super::redaction::record(w, &pdu);
            self.states.borrow_mut().put(vec![ev_snap.id], after);
            return self.finish(w, pdu, ticket, Err(head), None, place.epoch);
        }
        if place.fate == Fate::SoftFailed {
            w = w.statement(
                "INSERT INTO graph_events (event_id, room_id, json, depth, snapshot_id, status, \
                 stream_shard, stream_ordering) \
                 VALUES ($1, $2, $3, $4, $5, 'soft_failed', $6, $7)",
                vec![
                    event_id.clone().into(),
                    room.clone().into(),
                    SqlValue::Jsonb(pdu.json_value()),
                    place.depth.into(),
                    ev_snap.id.into(),
                    shard.into(),
                    stream.into(),
                ],
            );
            return self.finish(w, pdu, ticket, Err(head), None, place.epoch);
        }

        // Forward extremities: the prev events stop being ones.
        let mut extremities: Vec<Extremity> = head
            .extremities
            .iter()
            .filter(|e| !pdu.prev_events.contains(&e.event_id))
            .cloned()
            .collect();
        extremities.push(Extremity {
            event_id: pdu.event_id.clone(),
            depth: place.depth,
            snapshot: ev_snap.id,
        });
        // Current state: the resolution of the extremities' states.
        let current: Rc<StateMap> = if extremities.len() == 1 {
            after.clone()
        } else {
            let resolver = self.resolver();
            let mut inputs = vec![(ev_snap.id, after.clone())];
            for e in &extremities[..extremities.len() - 1] {
                inputs.push((e.snapshot, resolver.load(e.snapshot).await?));
            }
            resolver.resolve(head.version, &inputs, Some(&pdu)).await?
        };
        // Did current state change beyond this event's own key? Only a fork
        // can do it (a linear event's state before *is* the current state).
        let own_key = pdu
            .state_key
            .as_ref()
            .map(|k| (pdu.kind.to_string(), k.clone()));
        let resolved = !(Rc::ptr_eq(&before, &head.state) && extremities.len() == 1)
            && (changed_beyond(&head.state, &current, own_key.as_ref())
                || own_key
                    .as_ref()
                    .is_some_and(|k| current.get(k) != Some(&event_id)));
        let (cur_snap, cur_write) = if head.snapshot.is_some() && same(&current, &head.state) {
            (head.snapshot, None)
        } else if same(&current, &after) {
            (Some(ev_snap), None)
        } else {
            let plan = state::plan(
                state::current_snapshot_id(self.shard, stream),
                head.snapshot,
                &head.state,
                &current,
            );
            (Some(plan.head()), Some(plan))
        };
        let cur_id = cur_snap
            .map(|s| s.id)
            .ok_or_else(|| RoomError::Internal("room has no current state".into()))?;
        if let Some(snap) = &cur_write {
            w = state::write(w, &room, snap);
        }
        w = w.rows(
            &EVENT_ROWS,
            vec![
                stream.into(),
                room.clone().into(),
                event_id.clone().into(),
                pdu.sender.to_string().into(),
                pdu.kind.to_string().into(),
                SqlValue::Jsonb(pdu.json_value()),
                pdu.state_key.clone().into(),
                place.depth.into(),
                ev_snap.id.into(),
                shard.into(),
                prev_state.into(),
                cur_id.into(),
                resolved.into(),
            ],
        );
        w = super::redaction::record(w, &pdu);
        if let Some(public) = create_public {
            w = w.statement(
                "INSERT INTO rooms (room_id, room_version, creator, is_public, current_snapshot) \
                 VALUES ($1, $2, $3, $4, $5)",
                vec![
                    room.clone().into(),
                    head.version.as_str().into(),
                    pdu.sender.to_string().into(),
                    public.into(),
                    cur_id.into(),
                ],
            );
        } else if Some(cur_id) != head.snapshot.map(|s| s.id) {
            w = w.statement(
                "UPDATE rooms SET current_snapshot = $2 WHERE room_id = $1",
                vec![room.clone().into(), cur_id.into()],
            );
        }
        if !same(&current, &head.state) {
            w = self
                .current_state_rows(w, &room, &head.state, &current, Some(&pdu))
                .await?;
        }
        // The `room_extremities` row is written by the pipeline, once
        // per chain of the room's events (their net change).
        let ext = ExtremityChange {
            removed: pdu.prev_events.iter().map(|e| e.to_string()).collect(),
            added: event_id.clone(),
        };
        if let Some((device, txn)) = txn {
            w = w.rows(
                &TXN_ROWS,
                vec![
                    pdu.sender.to_string().into(),
                    device.clone().into(),
                    room.clone().into(),
                    txn.clone().into(),
                    event_id.clone().into(),
                ],
            );
        }
        let new_head = RoomHead {
            version: head.version,
            state: current,
            snapshot: cur_snap,
            extremities,
        };
        self.states.borrow_mut().put(vec![ev_snap.id], after);
        let txn = txn.map(|(device, txn)| {
            (
                pdu.sender.to_string(),
                device.clone(),
                room.clone(),
                txn.clone(),
            )
        });
        self.finish(
            w,
            pdu,
            ticket,
            Ok((new_head, ext, resolved)),
            txn,
            place.epoch,
        )
    }

    /// Stores `pdus` (all of `room`, already checked) as outliers in one
    /// transaction: an `INSERT … SELECT FROM unnest` per
    /// [`OUTLIER_ROWS`] events, all at one stream position (an outlier's
    /// position only keeps snapshot ids unique, and it has none). A
    /// `send_join` answer or a resync brings ~10,000 of them: one write of
    /// the room's pipeline per 64 events (one in flight at a time) took ~14 s
    /// in the join benchmark. Bypasses the pipeline, so the caller holds the
    /// room's lock and nothing queued there depends on them; durable when
    /// this returns. Already known ones are left as they are.
    pub(super) async fn commit_outliers(
        &self,
        room: &ruma::OwnedRoomId,
        pdus: &[Pdu],
    ) -> Result<(), RoomError> {
        if pdus.is_empty() {
            return Ok(());
        }
        let ticket = self.stream.allocate();
        let shard = i32::try_from(self.shard).map_err(|_| RoomError::Internal("shard".into()))?;
        let mut w = Write::new();
        for chunk in pdus.chunks(OUTLIER_ROWS) {
            let mut ids = Vec::with_capacity(chunk.len());
            let mut jsons = Vec::with_capacity(chunk.len());
            let mut depths = Vec::with_capacity(chunk.len());
            for p in chunk {
                ids.push(p.event_id.to_string());
                jsons.push(
                    serde_json::to_string(&p.json)
                        .map_err(|e| RoomError::Internal(e.to_string()))?,
                );
                depths.push(i64::try_from(p.depth).unwrap_or(i64::MAX));
            }
            w = w.statement(
                "INSERT INTO graph_events (event_id, room_id, json, depth, snapshot_id, status, \
                 stream_shard, stream_ordering) \
                 SELECT i, $1, j::jsonb, d, NULL, 'outlier', $5, $6 \
                 FROM unnest($2::text[], $3::text[], $4::int8[]) AS x(i, j, d) \
                 ON CONFLICT (event_id) DO NOTHING",
                vec![
                    room.as_str().into(),
                    SqlValue::TextArray(ids),
                    SqlValue::TextArray(jsons),
                    SqlValue::Int8Array(depths),
                    shard.into(),
                    ticket.pos().into(),
                ],
            );
        }
        self.writer.submit(w).await?;
        for p in pdus {
            self.events.put(Rc::new(p.clone()));
        }
        drop(ticket);
        Ok(())
    }

    /// Remembers a received event as rejected (server-server "Rejections"):
    /// not in the graph (an outlier copy leaves it), not processed again.
    pub(super) async fn record_rejection(
        &self,
        _head: &RoomHead,
        pdu: &Pdu,
        was_outlier: bool,
        reason: &str,
    ) -> Result<(), RoomError> {
        let mut w = Write::new();
        if was_outlier {
            w = w.statement(
                "DELETE FROM graph_events WHERE event_id = $1",
                vec![pdu.event_id.to_string().into()],
            );
        }
        w = w.statement(
            "INSERT INTO rejected_events (event_id, room_id, reason, received_ts) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
            vec![
                pdu.event_id.to_string().into(),
                pdu.room_id.to_string().into(),
                reason.to_owned().into(),
                crate::primitives::unix_ms_i64().into(),
            ],
        );
        self.writer.submit(w).await?;
        self.events.pop(&pdu.event_id);
        Ok(())
    }

    /// `current_state` rows for the change from `old` to `new` (upserts
    /// with the membership of member events, deletes of removed keys):
    /// one statement each, the memberships read in one query — a resync
    /// adds ~10,000 members at once, and a round trip (and statement) per
    /// member took seconds.
    async fn current_state_rows(
        &self,
        mut w: Write,
        room: &str,
        old: &StateMap,
        new: &StateMap,
        pdu: Option<&Pdu>,
    ) -> Result<Write, RoomError> {
        let changed: Vec<(&(String, String), &String)> = new
            .iter()
            .filter(|(k, id)| old.get(*k) != Some(*id))
            .collect();
        let mut memberships: std::collections::HashMap<String, Option<String>> =
            std::collections::HashMap::new();
        let mut unknown = Vec::new();
        for ((t, _), id) in &changed {
            if t != "m.room.member" {
                continue;
            }
            if let Some(p) = pdu.filter(|p| **id == p.event_id.as_str()) {
                memberships.insert((*id).clone(), p.membership());
                continue;
            }
            let cached = ruma::OwnedEventId::try_from(id.as_str())
                .ok()
                .and_then(|eid| self.events.get(&eid));
            match cached {
                Some(p) => {
                    memberships.insert((*id).clone(), p.membership());
                }
                None => unknown.push((*id).clone()),
            }
        }
        if !unknown.is_empty() {
            let rows = self
                .db
                .query(
                    "SELECT event_id, json->'content'->>'membership' FROM room_pdus \
                     WHERE event_id = ANY($1)",
                    &[&unknown],
                )
                .await?;
            for r in rows {
                memberships.insert(r.get(0)?, r.get(1)?);
            }
        }
        if !changed.is_empty() {
            let n = changed.len();
            let (mut types, mut keys, mut ids, mut ms) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for ((t, k), id) in changed {
                types.push(t.clone());
                keys.push(k.clone());
                ids.push(id.clone());
                // '' stands for NULL (no membership): no nullable text arrays.
                ms.push(memberships.get(id).cloned().flatten().unwrap_or_default());
            }
            w = w.statement(
                "INSERT INTO current_state (room_id, type, state_key, event_id, membership) \
                 SELECT $1, t, k, e, NULLIF(m, '') FROM unnest($2::text[], $3::text[], $4::text[], \
                 $5::text[]) AS x(t, k, e, m) ON CONFLICT (room_id, type, state_key) \
                 DO UPDATE SET event_id = excluded.event_id, membership = excluded.membership",
                vec![
                    room.into(),
                    SqlValue::TextArray(types),
                    SqlValue::TextArray(keys),
                    SqlValue::TextArray(ids),
                    SqlValue::TextArray(ms),
                ],
            );
        }
        for (t, k) in old.keys().filter(|key| !new.contains_key(*key)) {
            w = w.statement(
                "DELETE FROM current_state WHERE room_id = $1 AND type = $2 AND state_key = $3",
                vec![room.into(), t.clone().into(), k.clone().into()],
            );
        }
        Ok(w)
    }

    /// Queues the write in the room's pipeline; with `head` (the room's new
    /// head) the event is announced after COMMIT, without it (soft-failed,
    /// outlier) its position stays a gap in the stream.
    fn finish(
        self: &Rc<Self>,
        w: Write,
        pdu: Pdu,
        ticket: crate::stream::Ticket,
        head: Result<(RoomHead, ExtremityChange, bool), &RoomHead>,
        txn: Option<TxnKey>,
        epoch: u64,
    ) -> Result<Committing, RoomError> {
        // A soft-failed event or outlier leaves the head where it was: the
        // one the caller built on is the pipeline's tail if none is queued.
        let (head, unchanged) = match head {
            Ok(h) => (Some(h), None),
            Err(current) => (None, Some(current)),
        };
        let resolved = head.as_ref().is_some_and(|h| h.2);
        let (head, ext) = head.map(|(h, e, _)| (h, e)).unzip();
        let stream = ticket.pos();
        let pdu = Rc::new(pdu);
        let change = head.as_ref().map(|_| Change::Room {
            room_id: pdu.room_id.clone(),
            pos: Pos::Persisted(stream),
            what: RoomChange::Event(Arc::new(EventChange {
                event_id: pdu.event_id.clone(),
                sender: pdu.sender.clone(),
                event_type: pdu.kind.to_string(),
                state_key: pdu.state_key.clone(),
                membership: pdu.membership(),
                event: Arc::new(pdu.client_format()),
                resolved,
            })),
        });
        let prepared = Prepared {
            write: w,
            pdu,
            stream,
            head: head.map(Rc::new),
            ext,
            txn,
        };
        self.enqueue(epoch, prepared, ticket, change, unchanged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str, &str)]) -> StateMap {
        entries
            .iter()
            .map(|(t, k, id)| ((t.to_string(), k.to_string()), id.to_string()))
            .collect()
    }

    #[test]
    fn only_changes_beyond_the_events_own_key_count() {
        let old = map(&[("m.room.topic", "", "$t0"), ("m.room.name", "", "$n")]);
        let own = ("m.room.topic".to_owned(), String::new());
        let linear = map(&[("m.room.topic", "", "$t1"), ("m.room.name", "", "$n")]);
        assert!(!changed_beyond(&old, &linear, Some(&own)));
        assert!(changed_beyond(&old, &linear, None));
        let reverted = map(&[("m.room.topic", "", "$t1"), ("m.room.name", "", "$n0")]);
        assert!(changed_beyond(&old, &reverted, Some(&own)));
        let dropped = map(&[("m.room.topic", "", "$t1")]);
        assert!(changed_beyond(&old, &dropped, Some(&own)));
    }
}
