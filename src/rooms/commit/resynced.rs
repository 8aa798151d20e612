//! Completing a partial-state room (`rooms::partial`) once the resync has
//! the full state before our join: every event committed since our join
//! (the *partial window*) was placed on a partial state and authorised
//! against it, with its own auth events standing in for the members we
//! lacked (`rooms::receive`). Here, as Synapse does for its
//! `partial_state_events` after `_resync_state_after_partial_state_join`,
//! each of them, parents first, gets its state recomputed on the full state
//! and the authorization rules run again against it (server-server "Checks
//! performed on receipt of a PDU", step 5): one that now fails is
//! **rejected** — out of the timeline and of every state, its state passed
//! through unchanged to the events after it. Then current state is the
//! resolution of the (new) forward extremities' states. All in one write,
//! under the room's lock with its pipeline idle, so nothing commits on the
//! partial state meanwhile. See docs/ARCHITECTURE.md "Partial-state joins".

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use ruma::canonical_json;
use ruma::{OwnedEventId, OwnedRoomId};

use crate::db::Write;
use crate::events::Pdu;
use crate::stream::{Change, Pos, RoomChange, Ticket};

use super::super::graph::{self, Extremity};
use super::super::service::{RoomHead, Rooms};
use super::super::state::{self, SnapshotHead, StateMap};
use super::super::RoomError;

/// What completing a partial room did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completed {
    /// Keys of the current state the partial state lacked.
    pub added: usize,
    /// Events of the partial window re-checked on the full state.
    pub rechecked: usize,
    /// Those the full state does not allow: now rejected.
    pub rejected: Vec<OwnedEventId>,
}

/// An event committed while the room was partial, as stored.
struct Windowed {
    pdu: Rc<Pdu>,
    /// Ours (topological), as stored.
    depth: i64,
    snapshot: i64,
    prev_state: Option<String>,
}

/// A recomputed state and the snapshot that holds it.
type Placed = (SnapshotHead, Rc<StateMap>);

fn key_of(p: &Pdu) -> Option<(String, String)> {
    p.state_key
        .as_ref()
        .map(|k| (p.kind.to_string(), k.clone()))
}

impl Rooms {
    /// Completes `room_id` with `full`, the state before our join `join`
    /// as a resident server gives it, every event stored (see the module
    /// doc).
    pub async fn complete_partial_state(
        self: &Rc<Self>,
        room_id: &OwnedRoomId,
        join: &OwnedEventId,
        full: StateMap,
    ) -> Result<Completed, RoomError> {
        self.check_owner(room_id)?;
        let _guard = self.room_locks.queue(room_id.clone()).await;
        self.pipelines.idle(room_id).await;
        let head = self.head(room_id).await?;
        let version = head.version;
        let room = room_id.as_str().to_owned();
        let window = self.partial_window(room_id, join).await?;
        let in_window: HashSet<OwnedEventId> =
            window.iter().map(|e| e.pdu.event_id.clone()).collect();
        // Prev events from before the window (a room we had left and
        // rejoined): their stored states are full already.
        let outside: Vec<String> = window
            .iter()
            .flat_map(|e| e.pdu.prev_events.iter())
            .filter(|p| !in_window.contains(*p))
            .map(|p| p.to_string())
            .collect();
        let outside = graph::placed(&self.db, &outside).await?;
        let resolver = self.resolver();
        let mut w = Write::new();
        let mut tickets: Vec<Ticket> = Vec::new();
        let new_snapshot = |tickets: &mut Vec<Ticket>| {
            let t = self.stream.allocate();
            let id = state::snapshot_id(self.shard, t.pos());
            tickets.push(t);
            id
        };
        // Event → the state after it (a rejected one: the state before it).
        let mut after_of: HashMap<OwnedEventId, Placed> = HashMap::new();
        let mut rejected: Vec<OwnedEventId> = Vec::new();
        let mut rechecked = 0usize;
        for ev in &window {
            let pdu = &ev.pdu;
            let mut inputs: Vec<Placed> = Vec::new();
            if pdu.event_id == *join {
                // The state before our join is what the resync fetched.
                let full = Rc::new(full.clone());
                let plan = state::plan(new_snapshot(&mut tickets), None, &StateMap::new(), &full);
                w = state::write(w, &room, &plan);
                inputs.push((plan.head(), full));
            } else {
                for p in &pdu.prev_events {
                    if let Some(x) = after_of.get(p) {
                        inputs.push(x.clone());
                    } else if let Some(s) = outside.get(p.as_str()).and_then(|x| x.snapshot) {
                        if let Some(h) = state::head(&self.db, s).await? {
                            inputs.push((h, resolver.load(s).await?));
                        }
                    }
                }
            }
            let before: Placed = match inputs.as_slice() {
                [] => {
                    // Placed across a gap on states another server gave:
                    // its old state before, completed with the keys the
                    // partial state lacked.
                    let mut old = (*resolver.load(ev.snapshot).await?).clone();
                    if let Some(k) = key_of(pdu) {
                        match &ev.prev_state {
                            Some(p) => old.insert(k, p.clone()),
                            None => old.remove(&k),
                        };
                    }
                    for (k, v) in &full {
                        old.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                    let old = Rc::new(old);
                    let plan =
                        state::plan(new_snapshot(&mut tickets), None, &StateMap::new(), &old);
                    w = state::write(w, &room, &plan);
                    (plan.head(), old)
                }
                [one] => one.clone(),
                [first, ..] => {
                    let ids: Vec<(i64, Rc<StateMap>)> =
                        inputs.iter().map(|(h, m)| (h.id, m.clone())).collect();
                    let resolved = resolver.resolve(version, &ids, None).await?;
                    if super::same(&resolved, &first.1) {
                        first.clone()
                    } else {
                        let plan = state::plan(
                            new_snapshot(&mut tickets),
                            Some(first.0),
                            &first.1,
                            &resolved,
                        );
                        w = state::write(w, &room, &plan);
                        (plan.head(), resolved)
                    }
                }
            };
            let at_before = self.auth_state(&before.1, version, pdu).await?;
            let verdict = self.authorise(version, pdu, at_before, false).await;
            if pdu.event_id == *join {
                // Never rejected: the room would be left without our join.
                if let Err(reason) = &verdict {
                    tracing::warn!(room = %room_id, %reason,
                        "our join is not allowed by the full state; kept");
                }
            } else {
                rechecked += 1;
                if let Err(reason) = verdict {
                    tracing::info!(event = %pdu.event_id, %reason,
                        "an event of the partial window fails the full state: rejected");
                    w = reject_rows(w, &room, pdu, &reason);
                    rejected.push(pdu.event_id.clone());
                    after_of.insert(pdu.event_id.clone(), before);
                    continue;
                }
            }
            let own = key_of(pdu);
            let prev_state = own.as_ref().and_then(|k| before.1.get(k).cloned());
            let after: Placed = match own {
                Some(k) => {
                    let mut m = (*before.1).clone();
                    m.insert(k, pdu.event_id.to_string());
                    let m = Rc::new(m);
                    let plan =
                        state::plan(new_snapshot(&mut tickets), Some(before.0), &before.1, &m);
                    w = state::write(w, &room, &plan);
                    (plan.head(), m)
                }
                None => before,
            };
            // A linear event's `room_snapshot` (current state once it was
            // applied) was its own snapshot: it follows.
            w = w.statement(
                "UPDATE events SET snapshot_id = $2, prev_state_event_id = $3, \
                 room_snapshot = CASE WHEN room_snapshot = snapshot_id THEN $2 \
                 ELSE room_snapshot END WHERE event_id = $1",
                vec![
                    pdu.event_id.to_string().into(),
                    after.0.id.into(),
                    prev_state.into(),
                ],
            );
            after_of.insert(pdu.event_id.clone(), after);
        }
        let extremities = self
            .new_extremities(&head, &window, &after_of, &rejected)
            .await?;
        let gone: Vec<String> = head
            .extremities
            .iter()
            .filter(|e| !extremities.iter().any(|n| n.event_id == e.event_id))
            .map(|e| e.event_id.to_string())
            .collect();
        let came: Vec<String> = extremities
            .iter()
            .filter(|n| !head.extremities.iter().any(|e| e.event_id == n.event_id))
            .map(|e| e.event_id.to_string())
            .collect();
        w = crate::rooms::graph::extremity_rows(w, &room, gone, came);
        // Current state: the resolution of the extremities' states.
        let mut inputs = Vec::with_capacity(extremities.len());
        for e in &extremities {
            inputs.push((
                e.snapshot,
                resolver.load_or(e.snapshot, &after_of, &e.event_id).await?,
            ));
        }
        let current = resolver.resolve(version, &inputs, None).await?;
        let cur_old = head
            .snapshot
            .ok_or_else(|| RoomError::Internal("partial room without current state".into()))?;
        let cur_head = match after_of
            .values()
            .find(|(h, m)| inputs.iter().any(|(id, _)| *id == h.id) && super::same(m, &current))
        {
            Some((h, _)) => *h,
            None => {
                let id = {
                    let t = self.stream.allocate();
                    let id = state::current_snapshot_id(self.shard, t.pos());
                    tickets.push(t);
                    id
                };
                let plan = state::plan(id, Some(cur_old), &head.state, &current);
                w = state::write(w, &room, &plan);
                plan.head()
            }
        };
        let added = current
            .keys()
            .filter(|k| !head.state.contains_key(*k))
            .count();
        w = w.statement(
            "UPDATE rooms SET current_snapshot = $2 WHERE room_id = $1",
            vec![room.clone().into(), cur_head.id.into()],
        );
        w = w.statement(
            "UPDATE events SET room_snapshot = $2 WHERE event_id = \
             (SELECT event_id FROM events WHERE room_id = $1 \
              ORDER BY stream_ordering DESC LIMIT 1)",
            vec![room.clone().into(), cur_head.id.into()],
        );
        w = self
            .current_state_rows(w, &room, &head.state, &current, None)
            .await?;
        let announce = self.stream.allocate();
        let shard = i32::try_from(self.shard).map_err(|_| RoomError::Internal("shard".into()))?;
        w = w
            .statement(
                "DELETE FROM partial_state_rooms WHERE room_id = $1",
                vec![room.clone().into()],
            )
            .statement(
                "INSERT INTO partial_state_resynced (room_id, stream_shard, stream_ordering, \
                 done_ts) VALUES ($1, $2, $3, $4) ON CONFLICT (room_id) DO UPDATE SET \
                 stream_shard = excluded.stream_shard, stream_ordering = excluded.stream_ordering, \
                 done_ts = excluded.done_ts",
                vec![
                    room.clone().into(),
                    shard.into(),
                    announce.pos().into(),
                    crate::primitives::unix_ms_i64().into(),
                ],
            );
        let done = self.writer.submit(w).await;
        if !rejected.is_empty() {
            // Their notifications were deleted (or perhaps, on error, not).
            crate::push::unread::local().forget_room(room_id.as_str());
        }
        if let Err(e) = done {
            self.heads.borrow_mut().pop(room_id);
            return Err(e.into());
        }
        for id in &rejected {
            self.events.pop(id);
        }
        for (h, m) in after_of.into_values() {
            self.states.borrow_mut().put(vec![h.id], m);
        }
        self.heads.borrow_mut().put(
            room_id.clone(),
            Rc::new(RoomHead {
                version,
                state: current,
                snapshot: Some(cur_head),
                extremities,
            }),
        );
        super::super::partial::unmark(room_id);
        self.forget_servers(room_id);
        drop(tickets);
        let pos = announce.pos();
        announce
            .publish(vec![Change::Room {
                room_id: room_id.clone(),
                pos: Pos::Persisted(pos),
                what: RoomChange::FullState,
            }])
            .await;
        Ok(Completed {
            added,
            rechecked,
            rejected,
        })
    }

    /// The events of the partial window: our join and every timeline event
    /// committed after it (the owner shard wrote them all), parents first
    /// (room order is topological).
    async fn partial_window(
        &self,
        room: &OwnedRoomId,
        join: &OwnedEventId,
    ) -> Result<Vec<Windowed>, RoomError> {
        let rows = self
            .db
            .query(
                "SELECT e.event_id, e.json, e.snapshot_id, e.prev_state_event_id, e.depth \
                 FROM events e, \
                 (SELECT stream_shard, stream_ordering FROM events WHERE event_id = $2) j \
                 WHERE e.room_id = $1 AND e.stream_shard = j.stream_shard \
                 AND e.stream_ordering >= j.stream_ordering \
                 ORDER BY e.depth, e.stream_ordering",
                &[&room.as_str(), &join.as_str()],
            )
            .await?;
        let version = self.head(room).await?.version;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id = OwnedEventId::try_from(r.get::<String>(0)?)
                .map_err(|e| RoomError::Internal(e.to_string()))?;
            let serde_json::Value::Object(map) = r.get::<serde_json::Value>(1)? else {
                return Err(RoomError::Internal("stored event is not an object".into()));
            };
            let json = canonical_json::try_from_json_map(map)
                .map_err(|e| RoomError::Internal(e.to_string()))?;
            out.push(Windowed {
                pdu: Rc::new(Pdu::from_json(id, json, version)?),
                snapshot: r.get(2)?,
                prev_state: r.get(3)?,
                depth: r.get(4)?,
            });
        }
        Ok(out)
    }

    /// The forward extremities once `rejected` left the graph: the others
    /// stay (with their new snapshots); a rejected one gives way to its
    /// prev events of the window that nothing else kept names.
    async fn new_extremities(
        &self,
        head: &RoomHead,
        window: &[Windowed],
        after_of: &HashMap<OwnedEventId, Placed>,
        rejected: &[OwnedEventId],
    ) -> Result<Vec<Extremity>, RoomError> {
        let mut out: Vec<Extremity> = Vec::new();
        for e in &head.extremities {
            if rejected.contains(&e.event_id) {
                continue;
            }
            let snapshot = after_of.get(&e.event_id).map_or(e.snapshot, |(h, _)| h.id);
            out.push(Extremity {
                snapshot,
                ..e.clone()
            });
        }
        let kept_prevs: HashSet<&OwnedEventId> = window
            .iter()
            .filter(|e| !rejected.contains(&e.pdu.event_id))
            .flat_map(|e| e.pdu.prev_events.iter())
            .collect();
        let mut todo: Vec<&OwnedEventId> = head
            .extremities
            .iter()
            .filter(|e| rejected.contains(&e.event_id))
            .map(|e| &e.event_id)
            .collect();
        let by_id: HashMap<&OwnedEventId, &Windowed> =
            window.iter().map(|e| (&e.pdu.event_id, e)).collect();
        let mut seen: HashSet<&OwnedEventId> = HashSet::new();
        while let Some(r) = todo.pop() {
            let Some(ev) = by_id.get(r) else { continue };
            for p in &ev.pdu.prev_events {
                if !seen.insert(p) || kept_prevs.contains(p) {
                    continue;
                }
                if rejected.contains(p) {
                    todo.push(p);
                } else if let (Some(w), Some((h, _))) = (by_id.get(p), after_of.get(p)) {
                    out.push(Extremity {
                        event_id: p.clone(),
                        depth: w.depth,
                        snapshot: h.id,
                    });
                }
            }
        }
        if out.is_empty() {
            return Err(RoomError::Internal(
                "no forward extremity left after the re-check".into(),
            ));
        }
        Ok(out)
    }
}

impl graph::Resolver<'_> {
    /// The state after extremity `event`: recomputed, or stored.
    async fn load_or(
        &self,
        snapshot: i64,
        after_of: &HashMap<OwnedEventId, Placed>,
        event: &OwnedEventId,
    ) -> Result<Rc<StateMap>, RoomError> {
        match after_of.get(event) {
            Some((_, m)) => Ok(m.clone()),
            None => self.load(snapshot).await,
        }
    }
}

/// A timeline event the full state does not allow leaves the timeline
/// (server-server "Rejections": not in the graph, answered "rejected" if
/// it comes again) with what hangs on it here.
fn reject_rows(w: Write, room: &str, pdu: &Pdu, reason: &str) -> Write {
    let id = pdu.event_id.to_string();
    w.statement(
        "DELETE FROM events WHERE event_id = $1",
        vec![id.clone().into()],
    )
    .statement(
        "DELETE FROM redactions WHERE event_id = $1",
        vec![id.clone().into()],
    )
    .statement(
        "DELETE FROM push_actions WHERE room_id = $1 AND event_id = $2",
        vec![room.into(), id.clone().into()],
    )
    .statement(
        "INSERT INTO rejected_events (event_id, room_id, reason, received_ts) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
        vec![
            id.into(),
            room.into(),
            format!("not allowed by the full state: {reason}").into(),
            crate::primitives::unix_ms_i64().into(),
        ],
    )
}
