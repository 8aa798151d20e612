//! Storing a room we join through another server (server-server "Joining
//! Rooms", the joining side): the resident server's `send_join` answer —
//! the state before our join and its auth chain, signatures already
//! checked by the caller (`federation::join`) — becomes outliers, and our
//! join event is placed on that state. A room we have never seen gets its
//! `rooms` row with the join's commit; a room we know (we left it, or it
//! was only an invite) goes through the entry point (`apply_pdu`) with the
//! given state for the join's unknown prev events.
//!
//! Each event must pass the auth rules against its own auth events (from
//! the answer or already stored), and the join must be allowed by the
//! state before it; all is checked in memory first, and an answer with
//! one event that fails is refused whole: nothing of the room is stored
//! (the caller tries the next server). With `partial`, the room is marked
//! partial-state (`rooms::partial`) before the join commits.

use std::collections::HashMap;
use std::rc::Rc;

use ruma::canonical_json::CanonicalJsonObject;
use ruma::{OwnedEventId, OwnedRoomId};

use super::commit::Placement;
use super::receive::{Applied, Received};
use super::service::{RoomHead, Rooms};
use super::state::StateMap;
use super::RoomError;
use crate::events::{Pdu, RoomVersion};

fn key(p: &Pdu) -> Option<(String, String)> {
    p.state_key
        .as_ref()
        .map(|k| (p.kind.to_string(), k.clone()))
}

impl Rooms {
    /// See the module doc. `events`: the answer's state and auth chain;
    /// `state_ids`: which of them are the state before the join;
    /// `partial`: the answer omitted the members (`servers_in_room`).
    pub async fn persist_remote_join(
        self: &Rc<Self>,
        room_id: &OwnedRoomId,
        version: RoomVersion,
        events: Vec<(OwnedEventId, CanonicalJsonObject)>,
        state_ids: Vec<OwnedEventId>,
        join: (OwnedEventId, CanonicalJsonObject),
        partial: Option<Vec<String>>,
    ) -> Result<OwnedEventId, RoomError> {
        self.check_owner(room_id)?;
        let known = self.head(room_id).await.is_ok();
        let mut pdus: Vec<Pdu> = Vec::with_capacity(events.len());
        for (id, json) in events {
            match Pdu::from_json(id, json, version) {
                Ok(p) if p.room_id == *room_id => pdus.push(p),
                Ok(p) => return Err(refused(format!("event {} is of another room", p.event_id))),
                Err(e) => return Err(refused(format!("malformed event: {e}"))),
            }
        }
        pdus.sort_by_key(|p| p.depth);
        // Nothing is stored before the whole answer holds.
        let accepted = self.check_answer(version, &pdus).await?;
        let mut before = StateMap::new();
        let mut before_events = HashMap::new();
        for id in &state_ids {
            if let Some(p) = accepted.get(id) {
                if let Some(k) = key(p) {
                    before.insert(k.clone(), id.to_string());
                    before_events.insert(k, p.clone());
                }
            }
        }
        if !before.contains_key(&("m.room.create".to_owned(), String::new())) {
            return Err(refused("the state has no create event".into()));
        }
        let (join_id, join_json) = join;
        let join_pdu = Pdu::from_json(join_id.clone(), join_json.clone(), version)
            .map_err(|e| refused(format!("our join is malformed: {e}")))?;
        if let Err(reason) = self
            .authorise(version, &join_pdu, before_events, false)
            .await
        {
            return Err(refused(format!("our join is not allowed: {reason}")));
        }
        if let Some(servers) = &partial {
            self.mark_partial(room_id, &join_id, servers).await?;
        }
        let stored = if known {
            self.remote_join_known(room_id, pdus, before, (join_id, join_json))
                .await
        } else {
            self.remote_join_new(room_id, version, pdus, before, join_pdu)
                .await
        };
        if partial.is_some() && stored.is_err() {
            self.unmark_partial(room_id).await;
        }
        stored
    }

    /// Every event of a `send_join` answer (parents first) against its own
    /// auth events, from the answer or already stored: all must be there
    /// and allow it. `Err`: the answer is refused whole.
    async fn check_answer(
        &self,
        version: RoomVersion,
        pdus: &[Pdu],
    ) -> Result<HashMap<OwnedEventId, Rc<Pdu>>, RoomError> {
        let mut accepted: HashMap<OwnedEventId, Rc<Pdu>> = HashMap::new();
        let create = pdus
            .iter()
            .find(|p| p.kind.to_string() == "m.room.create")
            .map(|p| Rc::new(p.clone()));
        for pdu in pdus {
            let mut by_auth = HashMap::new();
            for a in &pdu.auth_events {
                let p = match accepted.get(a) {
                    Some(p) => p.clone(),
                    None => self.event(a).await?.ok_or_else(|| {
                        refused(format!("auth event {a} of {} is missing", pdu.event_id))
                    })?,
                };
                if let Some(k) = key(&p) {
                    by_auth.insert(k, p);
                }
            }
            // v12: the create event is implied by the room id.
            if let Some(c) = &create {
                by_auth
                    .entry(("m.room.create".into(), String::new()))
                    .or_insert_with(|| c.clone());
            }
            if pdu.kind.to_string() != "m.room.create" {
                if let Err(reason) = self.authorise(version, pdu, by_auth, true).await {
                    return Err(refused(format!(
                        "event {} fails its auth events: {reason}",
                        pdu.event_id
                    )));
                }
            }
            accepted.insert(pdu.event_id.clone(), Rc::new(pdu.clone()));
        }
        Ok(accepted)
    }

    /// A partial-state resync's fetched events (signatures and hashes
    /// checked by the caller), stored as outliers: all checked in memory
    /// against their own auth events first (`check_answer`; one that fails
    /// refuses the batch, and the resync asks another server), then
    /// committed in one transaction (`Rooms::commit_outliers`).
    pub async fn store_resync_outliers(
        self: &Rc<Self>,
        room_id: &OwnedRoomId,
        version: RoomVersion,
        events: Vec<(OwnedEventId, CanonicalJsonObject)>,
    ) -> Result<usize, RoomError> {
        self.check_owner(room_id)?;
        let mut pdus = Vec::with_capacity(events.len());
        for (id, json) in events {
            let p = Pdu::from_json(id, json, version)
                .map_err(|e| refused(format!("a malformed event: {e}")))?;
            if p.room_id != *room_id {
                return Err(refused(format!("{} is of another room", p.event_id)));
            }
            pdus.push(p);
        }
        pdus.sort_by_key(|p| p.depth);
        self.check_answer(version, &pdus).await?;
        let _guard = self.room_locks.queue(room_id.clone()).await;
        self.commit_outliers(room_id, &pdus).await?;
        Ok(pdus.len())
    }

    /// A room we have never seen: outliers, then our join on `before`
    /// (which creates the `rooms` row).
    async fn remote_join_new(
        self: &Rc<Self>,
        room_id: &OwnedRoomId,
        version: RoomVersion,
        pdus: Vec<Pdu>,
        before: StateMap,
        pdu: Pdu,
    ) -> Result<OwnedEventId, RoomError> {
        let _guard = self.room_locks.queue(room_id.clone()).await;
        let epoch = self.pipelines.epoch();
        let head = RoomHead {
            version,
            state: Rc::new(StateMap::new()),
            snapshot: None,
            extremities: Vec::new(),
        };
        // One transaction for the whole answer, durable before the join
        // that names them is built.
        self.commit_outliers(room_id, &pdus).await?;
        let depth = i64::try_from(pdu.depth).unwrap_or(i64::MAX);
        let mut place = Placement::timeline(Rc::new(before), None, depth, epoch);
        // Its prev events are history we lack: backward extremities.
        place.received = true;
        let stored = self
            .commit(&head, pdu, place, None, Some(false))
            .await?
            .done()
            .await?;
        Ok(stored.event_id.clone())
    }

    /// Records `room` as partial (durably, before our join commits: a crash
    /// in between leaves a row whose join is unknown, dropped at resume).
    async fn mark_partial(
        &self,
        room: &OwnedRoomId,
        join: &OwnedEventId,
        servers: &[String],
    ) -> Result<(), RoomError> {
        self.db
            .execute(
                "INSERT INTO partial_state_rooms (room_id, join_event_id, servers, since_ts) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (room_id) DO UPDATE \
                 SET join_event_id = excluded.join_event_id, servers = excluded.servers, \
                 since_ts = excluded.since_ts",
                &[
                    &room.as_str(),
                    &join.as_str(),
                    &servers.to_vec(),
                    &crate::primitives::unix_ms_i64(),
                ],
            )
            .await?;
        super::partial::mark(room, servers.to_vec());
        self.forget_servers(room);
        Ok(())
    }

    /// Undoes [`Self::mark_partial`] after a join that did not happen.
    async fn unmark_partial(&self, room: &OwnedRoomId) {
        super::partial::unmark(room);
        self.forget_servers(room);
        if let Err(e) = self
            .db
            .execute(
                "DELETE FROM partial_state_rooms WHERE room_id = $1",
                &[&room.as_str()],
            )
            .await
        {
            // The resync finds no join of ours and drops the row.
            tracing::warn!(%room, error = %e, "cannot drop the partial mark of a failed join");
        }
    }

    /// A room we know: outliers and the join through the entry point.
    async fn remote_join_known(
        self: &Rc<Self>,
        room_id: &OwnedRoomId,
        pdus: Vec<Pdu>,
        before: StateMap,
        join: (OwnedEventId, CanonicalJsonObject),
    ) -> Result<OwnedEventId, RoomError> {
        for p in pdus {
            let r = Received {
                outlier: true,
                checked: true,
                ..Received::new(room_id.clone(), p.json)
            };
            self.apply_pdu(r).await?;
        }
        let r = Received {
            checked: true,
            prev_states: vec![before],
            ..Received::new(room_id.clone(), join.1)
        };
        match self.apply_pdu(r).await? {
            Applied::Accepted(id) | Applied::AlreadyKnown(id) => Ok(id),
            other => Err(RoomError::Forbidden(format!(
                "our join was not accepted: {other:?}"
            ))),
        }
    }
}

/// A `send_join` answer we do not trust.
fn refused(why: String) -> RoomError {
    RoomError::Forbidden(format!("the send_join answer is refused: {why}"))
}
