//! State resolution over events held in memory: rooms v2 "State
//! resolution" (room versions 2–11) and its v2.1 revision (room version 12,
//! which adds the conflicted state subgraph and starts the iterative auth
//! checks from an empty map). The algorithm is ruma's
//! (`ruma::state_res::resolve`); this module supplies what it asks for —
//! the auth chain of each state, the conflicted state subgraph and event
//! lookup — from one map of loaded events, so it runs on any thread (large
//! resolutions go to the blocking pool: `rooms::graph`).

use std::collections::{HashMap, HashSet};

use ruma::events::StateEventType;
use ruma::state_res::{self, utils::event_id_set::EventIdSet};
use ruma::{EventId, OwnedEventId};

use crate::events::RoomVersion;

use super::state::StateMap;
use crate::events::Pdu;

/// The events a resolution may look at, by id.
pub type EventMap = HashMap<OwnedEventId, Pdu>;

/// Why a resolution could not run (never "the states disagree": that is
/// what it resolves).
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("room version {0} has no state resolution v2")]
    NoV2(RoomVersion),
    #[error("state resolution: {0}")]
    Failed(String),
    #[error("state map holds an invalid event id {0:?}")]
    BadId(String),
}

/// Resolves `states` (each `(type, state_key) → event_id`) with the room
/// version's rules. One state resolves to itself; `events` must hold every
/// event of the states and their auth chains (missing ones are ignored, as
/// the spec says for events one cannot verify).
pub fn resolve(
    version: RoomVersion,
    states: &[&StateMap],
    events: &EventMap,
) -> Result<StateMap, ResolveError> {
    match states {
        [] => return Ok(StateMap::new()),
        [one] => return Ok((*one).clone()),
        _ => {}
    }
    if states.iter().all(|s| *s == states[0]) {
        return Ok(states[0].clone());
    }
    let rules = version.rules();
    let v2 = rules
        .state_res
        .v2_rules()
        .ok_or(ResolveError::NoV2(version))?;
    let maps = states
        .iter()
        .map(|s| to_ruma(s))
        .collect::<Result<Vec<_>, _>>()?;
    let auth_chains: Vec<EventIdSet<OwnedEventId>> = maps
        .iter()
        .map(|m| auth_chain(m.values(), events))
        .collect();
    let resolved = state_res::resolve(
        &rules.authorization,
        v2,
        &maps,
        auth_chains,
        |id: &EventId| events.get(id),
        |conflicted| Some(conflicted_subgraph(conflicted.values().flatten(), events)),
    )
    .map_err(|e| ResolveError::Failed(e.to_string()))?;
    Ok(resolved
        .into_iter()
        .map(|((t, k), id)| ((t.to_string(), k), id.to_string()))
        .collect())
}

fn to_ruma(s: &StateMap) -> Result<state_res::StateMap<OwnedEventId>, ResolveError> {
    s.iter()
        .map(|((t, k), id)| {
            let id =
                OwnedEventId::try_from(id.as_str()).map_err(|_| ResolveError::BadId(id.clone()))?;
            Ok(((StateEventType::from(t.as_str()), k.clone()), id))
        })
        .collect()
}

/// The auth chain of a set of events: their `auth_events`, recursively
/// (spec "Auth chain": the events themselves are not part of it unless
/// another's auth chain holds them).
pub fn auth_chain<'a>(
    roots: impl IntoIterator<Item = &'a OwnedEventId>,
    events: &EventMap,
) -> EventIdSet<OwnedEventId> {
    let mut out = EventIdSet::new();
    let mut stack: Vec<&OwnedEventId> = roots
        .into_iter()
        .filter_map(|r| events.get(r))
        .flat_map(|p| p.auth_events.iter())
        .collect();
    while let Some(id) = stack.pop() {
        if out.insert(id.clone()) {
            if let Some(p) = events.get(id) {
                stack.extend(p.auth_events.iter());
            }
        }
    }
    out
}

/// The conflicted state subgraph (rooms v12 "State resolution"): every
/// event on an `auth_events` path from one conflicted state event to
/// another. An event of the conflicted events' auth closure belongs when
/// some conflicted event lies below it.
pub fn conflicted_subgraph<'a>(
    conflicted: impl IntoIterator<Item = &'a OwnedEventId>,
    events: &EventMap,
) -> EventIdSet<OwnedEventId> {
    let conflicted: HashSet<&EventId> = conflicted.into_iter().map(|i| &**i).collect();
    // below[x]: some conflicted event is reachable from x by ≥ 1 auth edge.
    let mut below: HashMap<&EventId, bool> = HashMap::new();
    let mut reached_from_conflicted: HashSet<&EventId> = HashSet::new();
    // Iterative post-order DFS: auth chains can be deep.
    let mut stack: Vec<(&EventId, bool)> = conflicted.iter().map(|c| (*c, false)).collect();
    while let Some((id, expanded)) = stack.pop() {
        let auth: &[OwnedEventId] = events.get(id).map_or(&[], |p| p.auth_events.as_slice());
        if expanded {
            let v = auth
                .iter()
                .any(|a| conflicted.contains(&**a) || below.get(&**a).copied().unwrap_or(false));
            below.insert(id, v);
            continue;
        }
        if below.contains_key(id) {
            continue;
        }
        stack.push((id, true));
        for a in auth {
            reached_from_conflicted.insert(&**a);
            if !below.contains_key(&**a) {
                stack.push((&**a, false));
            }
        }
    }
    // Conflicted events themselves are in the full conflicted set anyway.
    reached_from_conflicted
        .into_iter()
        .filter(|id| below.get(id).copied().unwrap_or(false))
        .chain(conflicted.iter().copied())
        .map(|id| id.to_owned())
        .collect()
}

#[cfg(test)]
#[path = "resolve_tests.rs"]
mod tests;
