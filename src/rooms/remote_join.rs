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
//! the answer or already stored); one that does not is dropped, as are the
//! state entries naming it. The join itself must be allowed by the state
//! before it, else nothing of the room is kept but the outliers.

use std::collections::HashMap;
use std::rc::Rc;

use ruma::canonical_json::CanonicalJsonObject;
use ruma::{OwnedEventId, OwnedRoomId};

use super::commit::{Fate, Placement};
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
    /// `state_ids`: which of them are the state before the join.
    pub async fn persist_remote_join(
        self: &Rc<Self>,
        room_id: &OwnedRoomId,
        version: RoomVersion,
        events: Vec<(OwnedEventId, CanonicalJsonObject)>,
        state_ids: Vec<OwnedEventId>,
        join: (OwnedEventId, CanonicalJsonObject),
    ) -> Result<OwnedEventId, RoomError> {
        self.check_owner(room_id)?;
        let known = self.head(room_id).await.is_ok();
        let mut pdus: Vec<Pdu> = Vec::with_capacity(events.len());
        for (id, json) in events {
            match Pdu::from_json(id, json, version) {
                Ok(p) if p.room_id == *room_id => pdus.push(p),
                Ok(p) => {
                    tracing::info!(event = %p.event_id, "send_join event of another room dropped")
                }
                Err(e) => tracing::info!(error = %e, "malformed send_join event dropped"),
            }
        }
        pdus.sort_by_key(|p| p.depth);
        if known {
            return self.remote_join_known(room_id, pdus, state_ids, join).await;
        }
        let _guard = self.room_locks.queue(room_id.clone()).await;
        let epoch = self.pipelines.epoch();
        let head = RoomHead {
            version,
            state: Rc::new(StateMap::new()),
            snapshot: None,
            extremities: Vec::new(),
        };
        // Outliers, parents first; each checked against its own auth events.
        let mut accepted: HashMap<OwnedEventId, Rc<Pdu>> = HashMap::new();
        let mut committing = Vec::new();
        for pdu in pdus {
            let mut by_auth = HashMap::new();
            for a in &pdu.auth_events {
                let p = match accepted.get(a) {
                    Some(p) => Some(p.clone()),
                    None => self.event(a).await?,
                };
                if let Some(p) = p {
                    if let Some(k) = key(&p) {
                        by_auth.insert(k, p);
                    }
                }
            }
            // v12: the create event is implied; it is among the accepted.
            if let Some(c) = accepted
                .values()
                .find(|p| p.kind.to_string() == "m.room.create")
            {
                by_auth
                    .entry(("m.room.create".into(), String::new()))
                    .or_insert_with(|| c.clone());
            }
            let is_create = pdu.kind.to_string() == "m.room.create";
            if !is_create {
                if let Err(reason) = self.authorise(version, &pdu, by_auth, true).await {
                    tracing::info!(event = %pdu.event_id, %reason, "send_join event fails auth; dropped");
                    continue;
                }
            }
            let place = Placement {
                fate: Fate::Outlier,
                before: None,
                base: None,
                depth: i64::try_from(pdu.depth).unwrap_or(i64::MAX),
                was_outlier: false,
                received: false,
                epoch,
            };
            let rc = Rc::new(pdu.clone());
            accepted.insert(pdu.event_id.clone(), rc);
            committing.push(self.commit(&head, pdu, place, None, None).await?);
        }
        for c in committing {
            c.done().await?;
        }
        let mut before = StateMap::new();
        for id in &state_ids {
            if let Some(p) = accepted.get(id) {
                if let Some(k) = key(p) {
                    before.insert(k, id.to_string());
                }
            }
        }
        if !before.contains_key(&("m.room.create".to_owned(), String::new())) {
            return Err(RoomError::Forbidden(
                "The resident server's state has no create event".into(),
            ));
        }
        let (join_id, join_json) = join;
        let pdu = Pdu::from_json(join_id, join_json, version)?;
        let at_before = self.auth_state(&before, version, &pdu).await?;
        if let Err(reason) = self.authorise(version, &pdu, at_before, false).await {
            return Err(RoomError::Forbidden(format!(
                "our join is not allowed: {reason}"
            )));
        }
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

    /// A room we know: outliers and the join through the entry point.
    async fn remote_join_known(
        self: &Rc<Self>,
        room_id: &OwnedRoomId,
        pdus: Vec<Pdu>,
        state_ids: Vec<OwnedEventId>,
        join: (OwnedEventId, CanonicalJsonObject),
    ) -> Result<OwnedEventId, RoomError> {
        let mut before = StateMap::new();
        let wanted: std::collections::HashSet<&OwnedEventId> = state_ids.iter().collect();
        for p in pdus {
            if wanted.contains(&p.event_id) {
                if let Some(k) = key(&p) {
                    before.insert(k, p.event_id.to_string());
                }
            }
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
