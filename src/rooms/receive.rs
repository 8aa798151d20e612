//! The one entry point for a PDU built elsewhere: [`Rooms::apply_pdu`]
//! verifies, authorises, places it in the graph and hands it to
//! `Rooms::commit` (which persists and announces). Federation's
//! transaction, join and backfill handlers call it on the room's owner
//! shard (`rooms::client::apply_pdu` forwards there).
//!
//! Checks in the order of server-server-api "Checks performed on receipt
//! of a PDU": 1. a valid event (format, size, ≤ 20 prev / ≤ 10 auth events),
//! else dropped; 2. signatures, else dropped; 3. content hash, else the
//! redacted event is kept; 4. auth against its own `auth_events`, else
//! rejected; 5. auth against the state before it, else rejected; 6. auth
//! against the current state, else soft-failed.

use std::collections::HashMap;
use std::rc::Rc;

use ruma::canonical_json::CanonicalJsonObject;
use ruma::events::StateEventType;
use ruma::signatures::Verified;
use ruma::state_res;
use ruma::{OwnedEventId, OwnedRoomId};

use crate::events::{event_id_of, redact, room_id_of, verify_pdu, RoomVersion};

use super::commit::{Fate, Placement};
use super::graph::{self, Status};
use super::service::{RoomHead, Rooms};
use super::state::{self, StateMap};
use super::RoomError;
use crate::events::Pdu;

/// A PDU received from another server.
#[derive(Debug, Clone)]
pub struct Received {
    pub room_id: OwnedRoomId,
    /// The event in federation format, as received.
    pub pdu: CanonicalJsonObject,
    /// Store it without state (an auth chain or state event of a response)
    /// rather than as a new event of the room's timeline.
    pub outlier: bool,
    /// The caller already checked signatures and the content hash (and
    /// redacted a PDU whose hash did not match): `/send` does so before
    /// staging, in bulk on the blocking pool, to answer each PDU's result.
    pub checked: bool,
    /// The states after prev events this server does not have, from the
    /// sender's `/state_ids` (server-server "Retrieving events": missing
    /// prev events whose gap `/get_missing_events` did not close). Used in
    /// place of those prev events' states; ignored when every prev is known.
    pub prev_states: Vec<StateMap>,
    /// History fetched with `/backfill`: stored where the caller says
    /// (below its children, at a negative stream position), never
    /// soft-failed (it is not new: the current state does not judge it).
    pub backfill: Option<Backfill>,
}

/// Where a backfilled event goes (`federation::backfill` decides for a
/// whole answer: docs/ARCHITECTURE.md "Backfill").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backfill {
    /// Our depth for it, below every child we hold.
    pub depth: i64,
    /// Its stream position, negative (`Rooms::backfill_positions`).
    pub stream: i64,
}

impl Received {
    /// A PDU of `room_id`'s timeline whose signatures are still to check.
    pub fn new(room_id: OwnedRoomId, pdu: CanonicalJsonObject) -> Received {
        Received {
            room_id,
            pdu,
            outlier: false,
            checked: false,
            prev_states: Vec::new(),
            backfill: None,
        }
    }
}

thread_local! {
    /// Stand-in snapshot ids for states given by another server (never
    /// stored): negative, never reused, so the resolver's cache, keyed by
    /// snapshot ids, never confuses two of them.
    static GIVEN_STATE_IDS: std::cell::Cell<i64> = const { std::cell::Cell::new(-1) };
}

fn given_state_id() -> i64 {
    GIVEN_STATE_IDS.with(|c| {
        let id = c.get();
        c.set(id.saturating_sub(1));
        id
    })
}

/// What became of a received PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// In the timeline: a forward extremity, served and announced.
    Accepted(OwnedEventId),
    /// Authorised by the state before it but not by the current state:
    /// stored in the graph, never served, never an extremity.
    SoftFailed(OwnedEventId),
    /// Refused by the authorization rules; remembered as rejected.
    Rejected {
        event_id: OwnedEventId,
        reason: String,
    },
    /// Stored without state (asked for, or its prev events are unknown).
    Outlier {
        event_id: OwnedEventId,
        missing_prev_events: Vec<OwnedEventId>,
    },
    /// Its auth events are unknown: nothing stored; fetch them and retry.
    MissingAuthEvents(Vec<OwnedEventId>),
    /// History stored below what we had (`Received::backfill`).
    Backfilled(OwnedEventId),
    /// Seen before (with the status it has).
    AlreadyKnown(OwnedEventId),
}

fn bad(e: impl std::fmt::Display) -> RoomError {
    RoomError::BadJson(format!("invalid PDU: {e}"))
}

fn key(t: &impl ToString, k: &str) -> (String, String) {
    (t.to_string(), k.to_owned())
}

impl Rooms {
    /// Applies a PDU received from elsewhere (see the module doc). Runs on
    /// the room's owner shard under the room's lock. `Err`: the PDU was
    /// dropped (malformed, bad signature, unknown room); nothing stored.
    pub async fn apply_pdu(self: &Rc<Self>, r: Received) -> Result<Applied, RoomError> {
        self.check_owner(&r.room_id)?;
        let _guard = self.room_locks.queue(r.room_id.clone()).await;
        let (head, epoch) = self.write_head(&r.room_id).await?;
        let version = head.version;
        let rules = version.rules();
        // 1. Format and size.
        state_res::check_pdu_format(&r.pdu, &rules.event_format).map_err(bad)?;
        if room_id_of(&r.pdu, version).map_err(bad)? != r.room_id {
            return Err(bad("room_id is not this room"));
        }
        let event_id = event_id_of(&r.pdu, version).map_err(bad)?;
        let known = graph::placed(&self.db, &[event_id.to_string()]).await?;
        let was_outlier = match known.get(event_id.as_str()).map(|p| p.status) {
            None => false,
            Some(Status::Rejected) => {
                return Ok(Applied::Rejected {
                    event_id,
                    reason: "rejected before".into(),
                })
            }
            Some(Status::Outlier) if !r.outlier => true,
            Some(_) => return Ok(Applied::AlreadyKnown(event_id)),
        };
        // 2./3. Signatures, then the content hash (a mismatch: keep the
        // redacted event).
        let json = if r.checked {
            r.pdu
        } else {
            let keys = self.remote_keys.key_map(&self.key);
            match verify_pdu(&r.pdu, version, &keys)
                .map_err(|e| RoomError::Forbidden(e.to_string()))?
            {
                Verified::All => r.pdu,
                Verified::Signatures => redact(&r.pdu, version).map_err(bad)?,
            }
        };
        // The sender's malformed PDU is bad input (`BadJson`), not the
        // internal error `From<PduParseError>` gives a stored one.
        let pdu = Pdu::from_json(event_id.clone(), json, version).map_err(bad)?;

        // 4. Auth against its own auth_events.
        let auth_ids: Vec<String> = pdu.auth_events.iter().map(|e| e.to_string()).collect();
        let auth_known = graph::placed(&self.db, &auth_ids).await?;
        let missing: Vec<OwnedEventId> = pdu
            .auth_events
            .iter()
            .filter(|id| !auth_known.contains_key(id.as_str()))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Ok(Applied::MissingAuthEvents(missing));
        }
        if let Some(id) = pdu
            .auth_events
            .iter()
            .find(|id| auth_known.get(id.as_str()).map(|p| p.status) == Some(Status::Rejected))
        {
            return self
                .reject(
                    &head,
                    &pdu,
                    was_outlier,
                    format!("auth event {id} was rejected"),
                )
                .await;
        }
        let mut by_auth_events = HashMap::new();
        for id in &pdu.auth_events {
            if let Some(p) = self.event(id).await? {
                if let Some(k) = &p.state_key {
                    by_auth_events.insert(key(&p.kind, k), p.clone());
                }
            }
        }
        // A partial-state room lacks members the event may need: its own
        // auth events stand in for them (Synapse: the state of a
        // partial-state event is completed from its auth events, and the
        // soft-fail check is skipped until the room has its full state).
        let partial = super::partial::servers(&r.room_id).is_some();
        let own_auth = partial.then(|| by_auth_events.clone());
        if let Err(reason) = self.authorise(version, &pdu, by_auth_events, true).await {
            return self.reject(&head, &pdu, was_outlier, reason).await;
        }
        if r.outlier {
            return self
                .store_outlier(&head, epoch, pdu, was_outlier, Vec::new())
                .await;
        }

        // The state before it: its prev events' states, resolved.
        let prev_ids: Vec<String> = pdu.prev_events.iter().map(|e| e.to_string()).collect();
        let prevs = graph::placed(&self.db, &prev_ids).await?;
        let missing: Vec<OwnedEventId> = pdu
            .prev_events
            .iter()
            .filter(|id| prevs.get(id.as_str()).and_then(|p| p.snapshot).is_none())
            .filter(|id| prevs.get(id.as_str()).map(|p| p.status) != Some(Status::Rejected))
            .cloned()
            .collect();
        let usable: Vec<(i64, i64)> = pdu
            .prev_events
            .iter()
            .filter_map(|id| prevs.get(id.as_str()))
            .filter_map(|p| p.snapshot.map(|s| (s, p.depth)))
            .collect();
        // The create event of backfilled history has no prev events: the
        // state before it is empty, no gap.
        let origin = r.backfill.is_some() && pdu.prev_events.is_empty();
        let gap = !missing.is_empty() || (usable.is_empty() && !origin);
        if gap && r.prev_states.is_empty() {
            return self
                .store_outlier(&head, epoch, pdu, was_outlier, missing)
                .await;
        }
        let resolver = self.resolver();
        let mut inputs = Vec::with_capacity(usable.len() + r.prev_states.len());
        for (snap, _) in &usable {
            inputs.push((*snap, resolver.load(*snap).await?));
        }
        let base = match inputs.first() {
            Some((id, m)) => state::head(&self.db, *id).await?.map(|h| (h, m.clone())),
            None => None,
        };
        if gap {
            for s in r.prev_states {
                inputs.push((given_state_id(), Rc::new(s)));
            }
        }
        let before = if origin {
            Rc::new(StateMap::new())
        } else {
            resolver.resolve(version, &inputs, None).await?
        };
        // Above every known prev; across a gap, at least the sender's depth.
        let depth = match usable.iter().map(|(_, d)| *d).max() {
            _ if r.backfill.is_some() => r.backfill.map_or(1, |b| b.depth),
            Some(d) if !gap => d + 1,
            known => known
                .unwrap_or(0)
                .saturating_add(1)
                .max(i64::try_from(pdu.depth).unwrap_or(i64::MAX)),
        };

        // 5. Auth against the state before it.
        let mut at_before = self.auth_state(&before, version, &pdu).await?;
        for (k, p) in own_auth.into_iter().flatten() {
            at_before.entry(k).or_insert(p);
        }
        if let Err(reason) = self.authorise(version, &pdu, at_before, false).await {
            return self.reject(&head, &pdu, was_outlier, reason).await;
        }
        // 6. Auth against the current state: soft failure (not for
        // history: server-server "Soft failure" is about new events).
        let fate = if let Some(b) = r.backfill {
            Fate::Backfilled(b.stream)
        } else if *before == *head.state || partial {
            Fate::Timeline
        } else {
            let now = self.auth_state(&head.state, version, &pdu).await?;
            match self.authorise(version, &pdu, now, false).await {
                Ok(()) => Fate::Timeline,
                Err(reason) => {
                    tracing::info!(event = %pdu.event_id, %reason, "soft-failed a received event");
                    Fate::SoftFailed
                }
            }
        };
        let place = Placement {
            fate,
            before: Some(before),
            base,
            depth,
            was_outlier,
            received: true,
            epoch,
        };
        let stored = self
            .commit(&head, pdu, place, None, None)
            .await?
            .done()
            .await?;
        Ok(match fate {
            Fate::SoftFailed => Applied::SoftFailed(stored.event_id.clone()),
            Fate::Backfilled(_) => Applied::Backfilled(stored.event_id.clone()),
            _ => Applied::Accepted(stored.event_id.clone()),
        })
    }

    async fn store_outlier(
        self: &Rc<Self>,
        head: &RoomHead,
        epoch: u64,
        pdu: Pdu,
        was_outlier: bool,
        missing_prev_events: Vec<OwnedEventId>,
    ) -> Result<Applied, RoomError> {
        let event_id = pdu.event_id.clone();
        if !was_outlier {
            let place = Placement {
                fate: Fate::Outlier,
                before: None,
                base: None,
                depth: i64::try_from(pdu.depth).unwrap_or(i64::MAX),
                was_outlier: false,
                received: false,
                epoch,
            };
            self.commit(head, pdu, place, None, None)
                .await?
                .done()
                .await?;
        }
        Ok(Applied::Outlier {
            event_id,
            missing_prev_events,
        })
    }

    async fn reject(
        &self,
        head: &RoomHead,
        pdu: &Pdu,
        was_outlier: bool,
        reason: String,
    ) -> Result<Applied, RoomError> {
        tracing::info!(event = %pdu.event_id, %reason, "rejected a received event");
        self.record_rejection(head, pdu, was_outlier, &reason)
            .await?;
        Ok(Applied::Rejected {
            event_id: pdu.event_id.clone(),
            reason,
        })
    }

    /// The events of `state` the auth rules read for `pdu`.
    pub(super) async fn auth_state(
        &self,
        state: &StateMap,
        version: RoomVersion,
        pdu: &Pdu,
    ) -> Result<HashMap<(String, String), Rc<Pdu>>, RoomError> {
        let mut keys = state_res::auth_types_for_event(
            &pdu.kind,
            &pdu.sender,
            pdu.state_key.as_deref(),
            &pdu.content,
            &version.rules().authorization,
        )
        .map_err(bad)?
        .into_iter()
        .map(|(t, k)| key(&t, &k))
        .collect::<Vec<_>>();
        keys.push(key(&"m.room.create", ""));
        let mut out = HashMap::new();
        for k in keys {
            if let Some(id) = state.get(&k) {
                let id = OwnedEventId::try_from(id.as_str())
                    .map_err(|e| RoomError::Internal(e.to_string()))?;
                if let Some(p) = self.event(&id).await? {
                    out.insert(k, p);
                }
            }
        }
        Ok(out)
    }

    /// The room version's authorization rules for `pdu` against `state`
    /// (`(type, state_key)` → event); `own_auth_events`: `state` is the
    /// event's own auth events, so the rules about them run too. `Err`:
    /// why it fails.
    pub(super) async fn authorise(
        &self,
        version: RoomVersion,
        pdu: &Pdu,
        mut state: HashMap<(String, String), Rc<Pdu>>,
        own_auth_events: bool,
    ) -> Result<(), String> {
        let rules = &version.rules().authorization;
        // v12: the create event is implied by the room id, not listed.
        let create_key = key(&"m.room.create", "");
        if !state.contains_key(&create_key) && pdu.kind.to_string() != "m.room.create" {
            let create_id = format!("${}", pdu.room_id.strip_sigil());
            if let Ok(id) = OwnedEventId::try_from(create_id) {
                if let Ok(Some(p)) = self.event(&id).await {
                    state.insert(create_key, p);
                }
            }
        }
        let by_id: HashMap<&ruma::EventId, &Pdu> = state
            .values()
            .map(|p| (p.event_id.as_ref(), p.as_ref()))
            .collect();
        if own_auth_events {
            state_res::check_state_independent_auth_rules(rules, pdu, |id: &ruma::EventId| {
                by_id.get(id).copied()
            })?;
        }
        state_res::check_state_dependent_auth_rules(rules, pdu, |t: &StateEventType, k: &str| {
            state.get(&key(t, k)).map(|p| p.as_ref())
        })
    }
}
