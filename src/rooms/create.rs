//! `POST /createRoom`: the create event and the initial events, in the
//! order of the client-server spec's "Room creation" section.

use ruma::canonical_json::{self, CanonicalJsonObject, CanonicalJsonValue};
use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::events::{build_pdu, create_event_content, NewEvent, RoomVersion, ServerKey};

use std::sync::atomic::{AtomicU64, Ordering};

use super::RoomError;
use crate::events::Pdu;

/// One entry of `initial_state`.
#[derive(Debug, Clone, Deserialize)]
pub struct StateInput {
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub state_key: String,
    pub content: Map<String, Value>,
}

/// The `createRoom` request body (the fields hearth acts on).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CreateRoomRequest {
    pub preset: Option<String>,
    pub name: Option<String>,
    pub topic: Option<String>,
    #[serde(default)]
    pub invite: Vec<String>,
    #[serde(default)]
    pub initial_state: Vec<StateInput>,
    pub room_version: Option<String>,
    pub creation_content: Option<Map<String, Value>>,
    pub power_level_content_override: Option<Map<String, Value>>,
    pub visibility: Option<String>,
    #[serde(default)]
    pub is_direct: bool,
    /// Local part of an alias to create for the room (`#name:our.server`).
    pub room_alias_name: Option<String>,
}

/// A state event to send after the create event, by the creator.
pub type PlannedEvent = (String, String, CanonicalJsonObject);

/// Everything the owner shard needs to create the room.
#[derive(Debug, Clone)]
pub struct CreatePlan {
    pub version: RoomVersion,
    pub room_id: OwnedRoomId,
    pub create: Pdu,
    pub events: Vec<PlannedEvent>,
    pub is_public: bool,
    /// The alias `room_alias_name` asks for, to map to the room.
    pub alias: Option<OwnedRoomAliasId>,
}

pub fn to_canonical_json(v: Map<String, Value>) -> Result<CanonicalJsonObject, RoomError> {
    canonical_json::try_from_json_map(v).map_err(|e| RoomError::BadJson(e.to_string()))
}

fn random_localpart() -> Result<String, RoomError> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut bytes = [0u8; 18];
    getrandom::fill(&mut bytes).map_err(|e| RoomError::Internal(e.to_string()))?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect())
}

/// Builds the create event (fixing the room id) and plans the rest.
/// Runs on any shard; the plan then goes to the room's owner.
pub fn plan(
    req: CreateRoomRequest,
    creator: &OwnedUserId,
    key: &ServerKey,
) -> Result<CreatePlan, RoomError> {
    let version = match &req.room_version {
        Some(v) => RoomVersion::parse_creatable(v)?,
        None => RoomVersion::DEFAULT,
    };
    let is_public = req.visibility.as_deref() == Some("public");
    let preset = req.preset.clone().unwrap_or_else(|| {
        if is_public {
            "public_chat"
        } else {
            "private_chat"
        }
        .to_owned()
    });
    if !matches!(
        preset.as_str(),
        "public_chat" | "private_chat" | "trusted_private_chat"
    ) {
        return Err(RoomError::BadJson(format!("unknown preset {preset}")));
    }
    let alias = req
        .room_alias_name
        .as_deref()
        .map(|name| super::alias::local_alias(name, key.server_name.as_str()))
        .transpose()
        .map_err(super::alias::AliasError::into_room_error)?;
    let invites = req
        .invite
        .iter()
        .map(|u| {
            OwnedUserId::try_from(u.as_str())
                .map_err(|e| RoomError::BadJson(format!("invite {u}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;

    // 1. m.room.create: creation_content plus our fields.
    let mut content = to_canonical_json(req.creation_content.clone().unwrap_or_default())?;
    let extra: Vec<OwnedUserId> = match content.get("additional_creators") {
        Some(CanonicalJsonValue::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().and_then(|s| OwnedUserId::try_from(s).ok()))
            .collect(),
        _ => Vec::new(),
    };
    content.remove("additional_creators");
    let ours = create_event_content(version, creator, &extra)
        .map_err(|e| RoomError::BadJson(e.to_string()))?;
    content.extend(ours);
    let room_id = if version.room_id_from_create_event() {
        None
    } else {
        let id = format!("!{}:{}", random_localpart()?, key.server_name);
        Some(OwnedRoomId::try_from(id).map_err(|e| RoomError::Internal(e.to_string()))?)
    };
    let signed = build_pdu(
        NewEvent {
            room_version: version,
            room_id,
            sender: creator.clone(),
            event_type: "m.room.create".into(),
            state_key: Some(String::new()),
            content,
            prev_events: Vec::new(),
            auth_events: Vec::new(),
            depth: 1,
            origin_server_ts: unique_create_ts(),
            redacts: None,
        },
        key,
    )
    .map_err(|e| RoomError::BadJson(e.to_string()))?;
    let room_id = signed.room_id.clone();
    let create = Pdu::from_json(signed.event_id, signed.pdu, version)?;

    let mut events: Vec<PlannedEvent> = Vec::new();
    let mut push = |t: &str, k: &str, c: Value| -> Result<(), RoomError> {
        let Value::Object(m) = c else {
            return Err(RoomError::BadJson(format!("{t} content is not an object")));
        };
        events.push((t.to_owned(), k.to_owned(), to_canonical_json(m)?));
        Ok(())
    };
    // 2. The creator joins.
    push(
        "m.room.member",
        creator.as_str(),
        json!({"membership": "join"}),
    )?;
    // 3. Power levels (Synapse's defaults), then the override on top.
    let mut users = Map::new();
    if !version.creators_have_infinite_power() {
        users.insert(creator.to_string(), json!(100));
    }
    if preset == "trusted_private_chat" {
        for u in &invites {
            users.insert(u.to_string(), json!(100));
        }
    }
    let tombstone = if version.creators_have_infinite_power() {
        150
    } else {
        100
    };
    let mut pl = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50, "m.room.power_levels": 100,
            "m.room.history_visibility": 100, "m.room.canonical_alias": 50,
            "m.room.avatar": 50, "m.room.tombstone": tombstone,
            "m.room.server_acl": 100, "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50, "kick": 50, "redact": 50,
        "invite": if preset == "public_chat" { 50 } else { 0 },
    });
    if let (Some(o), Some(pl)) = (&req.power_level_content_override, pl.as_object_mut()) {
        for (k, v) in o {
            pl.insert(k.clone(), v.clone());
        }
    }
    push("m.room.power_levels", "", pl)?;
    // 4. The canonical alias, when room_alias_name asked for one.
    if let Some(a) = &alias {
        push("m.room.canonical_alias", "", json!({"alias": a}))?;
    }
    // 5. Preset state, unless initial_state sets the same key.
    let overridden = |t: &str| {
        req.initial_state
            .iter()
            .any(|s| s.event_type == t && s.state_key.is_empty())
    };
    let join_rule = if preset == "public_chat" {
        "public"
    } else {
        "invite"
    };
    if !overridden("m.room.join_rules") {
        push("m.room.join_rules", "", json!({"join_rule": join_rule}))?;
    }
    if !overridden("m.room.history_visibility") {
        push(
            "m.room.history_visibility",
            "",
            json!({"history_visibility": "shared"}),
        )?;
    }
    if preset != "public_chat" && !overridden("m.room.guest_access") {
        push(
            "m.room.guest_access",
            "",
            json!({"guest_access": "can_join"}),
        )?;
    }
    // 6. initial_state.
    for s in &req.initial_state {
        push(
            &s.event_type,
            &s.state_key,
            Value::Object(s.content.clone()),
        )?;
    }
    // 7. name and topic.
    if let Some(name) = &req.name {
        push("m.room.name", "", json!({"name": name}))?;
    }
    if let Some(topic) = &req.topic {
        push("m.room.topic", "", json!({"topic": topic}))?;
    }
    // 8. Invites.
    for u in &invites {
        let mut c = json!({"membership": "invite"});
        if req.is_direct {
            c["is_direct"] = json!(true);
        }
        push("m.room.member", u.as_str(), c)?;
    }
    Ok(CreatePlan {
        version,
        room_id,
        create,
        events,
        is_public,
        alias,
    })
}

/// Last `origin_server_ts` given to a create event in this process.
static LAST_CREATE_TS: AtomicU64 = AtomicU64::new(0);

/// A timestamp for a create event, strictly above every earlier one.
///
/// Why: in room version 12 the room id is the hash of the create event
/// (spec rooms/v12 "Room IDs"), and two `createRoom`s by the same user in the
/// same millisecond (clients and bots do this) would otherwise build the
/// same event, hence the same room. One atomic per createRoom is no hot path.
fn unique_create_ts() -> u64 {
    let now = crate::primitives::unix_ms();
    let mut last = LAST_CREATE_TS.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST_CREATE_TS.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

#[cfg(test)]
mod unique_ts_tests {
    #[test]
    fn create_timestamps_strictly_increase_across_threads() {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..500)
                        .map(|_| super::unique_create_ts())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "no two create events share a timestamp");
    }
}
