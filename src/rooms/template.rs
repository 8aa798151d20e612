//! What every new event of a room needs, built or only proposed: its
//! prev events and the state before it ([`Rooms::placement_on`]), its auth
//! events ([`Rooms::select_auth`], server-server "Auth events selection")
//! and the authorization check ([`check_auth`]). Local sends use them to
//! build and sign (`service.rs`); `make_join`/`make_leave`/`make_knock`
//! use them for the unsigned template a joining server completes
//! ([`Rooms::membership_template`]).

use std::collections::HashMap;
use std::rc::Rc;

use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::events::{StateEventType, TimelineEventType};
use ruma::state_res;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::Value;

use super::commit::Placement;
use super::graph::{self, Extremity};
use super::service::{RoomHead, Rooms};
use super::state::{self, StateMap};
use super::RoomError;
use crate::events::{Pdu, RoomVersion};

/// An event's auth events, and the events themselves by state key.
pub(super) type AuthEvents = (Vec<OwnedEventId>, HashMap<(String, String), Rc<Pdu>>);

impl Rooms {
    /// The prev events of a new event on `head` (the extremities, at most
    /// 10, so a fork closes with the next local event) and its placement:
    /// the state before it is their resolution, the current state when
    /// all are taken.
    pub(super) async fn placement_on(
        &self,
        head: &RoomHead,
        epoch: u64,
    ) -> Result<(Vec<Extremity>, Placement), RoomError> {
        let prevs = graph::choose_prev_events(&head.extremities);
        let depth = prevs.iter().map(|e| e.depth).max().unwrap_or(0) + 1;
        let place = if prevs.len() == head.extremities.len() {
            let base = head.snapshot.map(|h| (h, head.state.clone()));
            Placement::timeline(head.state.clone(), base, depth, epoch)
        } else {
            let resolver = self.resolver();
            let mut inputs = Vec::with_capacity(prevs.len());
            for e in &prevs {
                inputs.push((e.snapshot, resolver.load(e.snapshot).await?));
            }
            let before = resolver.resolve(head.version, &inputs, None).await?;
            let base = match inputs.first() {
                Some((id, m)) => state::head(&self.db, *id).await?.map(|h| (h, m.clone())),
                None => None,
            };
            Placement::timeline(before, base, depth, epoch)
        };
        Ok((prevs, place))
    }

    /// Spec server-server-api "Auth events selection" from `before`. The
    /// v12 create event is in the map but not in the list (it is implied
    /// by the room id; the state-dependent rules still read it).
    pub(super) async fn select_auth(
        &self,
        version: RoomVersion,
        before: &StateMap,
        kind: &TimelineEventType,
        sender: &OwnedUserId,
        state_key: Option<&str>,
        content: &serde_json::value::RawValue,
    ) -> Result<AuthEvents, RoomError> {
        let rules = &version.rules().authorization;
        let auth_types = state_res::auth_types_for_event(kind, sender, state_key, content, rules)
            .map_err(RoomError::BadJson)?;
        let mut auth_events = Vec::new();
        let mut auth_pdus: HashMap<(String, String), Rc<Pdu>> = HashMap::new();
        for (t, k) in auth_types {
            let key = (t.to_string(), k);
            if let Some(id) = before.get(&key) {
                let id = OwnedEventId::try_from(id.as_str())
                    .map_err(|e| RoomError::Internal(e.to_string()))?;
                let pdu = self
                    .event(&id)
                    .await?
                    .ok_or_else(|| RoomError::Internal(format!("state event {id} missing")))?;
                auth_events.push(id);
                auth_pdus.insert(key, pdu);
            }
        }
        let create_key = ("m.room.create".to_owned(), String::new());
        if let (std::collections::hash_map::Entry::Vacant(slot), Some(id)) =
            (auth_pdus.entry(create_key.clone()), before.get(&create_key))
        {
            let id = OwnedEventId::try_from(id.as_str())
                .map_err(|e| RoomError::Internal(e.to_string()))?;
            if let Some(p) = self.event(&id).await? {
                slot.insert(p);
            }
        }
        Ok((auth_events, auth_pdus))
    }

    /// `make_join` / `make_leave` / `make_knock` (server-server "Joining
    /// Rooms", "Leaving Rooms", "Knocking"): the unsigned membership event
    /// of `user` a remote server signs and sends back, on the room's tail,
    /// checked against the current state so a join that cannot succeed is
    /// refused now (`Forbidden`).
    pub async fn membership_template(
        &self,
        room_id: &OwnedRoomId,
        user: &OwnedUserId,
        membership: &str,
    ) -> Result<(RoomVersion, Value), RoomError> {
        self.check_owner(room_id)?;
        let head = self.head(room_id).await?;
        let version = head.version;
        let (prevs, place) = self.placement_on(&head, 0).await?;
        let before = place.before.clone().unwrap_or_default();
        let content = serde_json::json!({ "membership": membership });
        let raw = serde_json::value::to_raw_value(&content)
            .map_err(|e| RoomError::Internal(e.to_string()))?;
        let kind = TimelineEventType::RoomMember;
        let (auth_events, auth_pdus) = self
            .select_auth(version, &before, &kind, user, Some(user.as_str()), &raw)
            .await?;
        let t = serde_json::json!({
            "type": "m.room.member",
            "state_key": user,
            "sender": user,
            "room_id": room_id,
            "content": content,
            "origin_server_ts": crate::primitives::unix_ms(),
            "depth": place.depth,
            "prev_events": prevs.iter().map(|e| e.event_id.to_string()).collect::<Vec<_>>(),
            "auth_events": auth_events.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        });
        // Authorised now? The template as the event it would become.
        let obj: CanonicalJsonObject = match serde_json::from_value::<CanonicalJsonValue>(t.clone())
        {
            Ok(CanonicalJsonValue::Object(o)) => o,
            _ => return Err(RoomError::Internal("template is not an object".into())),
        };
        let probe_id = OwnedEventId::try_from("$template:hearth.invalid")
            .map_err(|e| RoomError::Internal(e.to_string()))?;
        let pdu = Pdu::from_json(probe_id, obj, version)?;
        check_auth(version, &pdu, &auth_pdus)?;
        Ok((version, t))
    }
}

/// Spec server-server-api "Authorization rules" for `pdu` against its
/// auth events: `Forbidden` with the reason.
pub fn check_auth(
    version: RoomVersion,
    pdu: &Pdu,
    auth_pdus: &HashMap<(String, String), Rc<Pdu>>,
) -> Result<(), RoomError> {
    let rules = &version.rules().authorization;
    let by_id: HashMap<&ruma::EventId, &Pdu> = auth_pdus
        .values()
        .map(|p| (p.event_id.as_ref(), p.as_ref()))
        .collect();
    state_res::check_state_independent_auth_rules(rules, pdu, |id: &ruma::EventId| {
        by_id.get(id).copied()
    })
    .map_err(RoomError::Forbidden)?;
    state_res::check_state_dependent_auth_rules(rules, pdu, |t: &StateEventType, k: &str| {
        auth_pdus
            .get(&(t.to_string(), k.to_owned()))
            .map(|p| p.as_ref())
    })
    .map_err(RoomError::Forbidden)
}
