//! Building, hashing, signing, identifying and redacting PDUs (persistent
//! data units: room events in federation format) for room versions 10–12.
//!
//! Canonical JSON, hashes and signatures are ruma's (`ruma-signatures`); this
//! module adds hearth's event-building rules and the checks the spec puts
//! around them. Spec: server-server-api "Signing Events", "Calculating the
//! reference hash", "Calculating the content hash"; rooms v10–v12 "Event
//! format"; client-server-api "Size limits".

use ruma::canonical_json::{self, CanonicalJsonObject, CanonicalJsonValue, RedactedBecause};
use ruma::serde::{base64::Standard, Base64};
use ruma::signatures::{self, JsonError, PublicKeyMap, Verified};
use ruma::{Int, OwnedEventId, OwnedRoomId, OwnedUserId, UserId};

use super::room_version::RoomVersion;
use super::signing_key::ServerKey;

/// Spec "Size limits": the complete event, including signatures, as
/// canonical JSON MUST NOT be larger than 65536 bytes.
pub const MAX_PDU_BYTES: usize = 65_536;
/// Spec "Size limits": `type` and `state_key` MUST NOT exceed 255 bytes.
pub const MAX_TYPE_OR_STATE_KEY_BYTES: usize = 255;
/// PDU format (auth_events_prev_events_v4): at most 20 `prev_events`.
pub const MAX_PREV_EVENTS: usize = 20;
/// PDU format (auth_events_prev_events_v4): at most 10 `auth_events`.
pub const MAX_AUTH_EVENTS: usize = 10;

const CREATE: &str = "m.room.create";
const REDACTION: &str = "m.room.redaction";

/// Errors building or checking a PDU.
#[derive(Debug, thiserror::Error)]
pub enum PduError {
    #[error("PDU is {size} bytes of canonical JSON; the limit is {MAX_PDU_BYTES}")]
    TooLarge { size: usize },
    /// The caller asked for an event the room version does not allow.
    #[error("invalid event: {0}")]
    Invalid(String),
    /// A received or stored PDU lacks a field or has one of the wrong type.
    #[error("malformed PDU: {0}")]
    Malformed(String),
    #[error("content hash does not match the event")]
    ContentHashMismatch,
    #[error("signature check failed: {0}")]
    Signature(#[source] signatures::VerificationError),
}

impl From<JsonError> for PduError {
    fn from(e: JsonError) -> Self {
        match e {
            // ruma applies the limit to the hashed form; callers get the
            // same typed error as from our own check.
            JsonError::PduTooLarge => PduError::TooLarge {
                size: MAX_PDU_BYTES + 1,
            },
            other => PduError::Malformed(other.to_string()),
        }
    }
}

impl From<canonical_json::CanonicalJsonFieldError> for PduError {
    fn from(e: canonical_json::CanonicalJsonFieldError) -> Self {
        PduError::Malformed(e.to_string())
    }
}

/// Everything needed to create a new local event.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub room_version: RoomVersion,
    /// `None` only for a v12 `m.room.create` (its id becomes the room id).
    pub room_id: Option<OwnedRoomId>,
    pub sender: OwnedUserId,
    pub event_type: String,
    /// `Some` for state events (`Some("")` for most room state).
    pub state_key: Option<String>,
    pub content: CanonicalJsonObject,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub depth: u64,
    /// Milliseconds since the Unix epoch.
    pub origin_server_ts: u64,
    /// For `m.room.redaction`: the event redacted. Placed top-level in v10
    /// and in `content` from v11 on.
    pub redacts: Option<OwnedEventId>,
}

/// A signed PDU with its identifiers.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedPdu {
    /// `$` + URL-safe unpadded base64 reference hash (room versions ≥ 4).
    pub event_id: OwnedEventId,
    /// The event's room; derived from the event id for a v12 create event.
    pub room_id: OwnedRoomId,
    /// The event in federation format (no `event_id` field in v4+ rooms).
    pub pdu: CanonicalJsonObject,
}

/// Builds, hashes and signs a new local event.
pub fn build_pdu(ev: NewEvent, key: &ServerKey) -> Result<SignedPdu, PduError> {
    let version = ev.room_version;
    validate_new_event(&ev, key)?;

    let ids = |ids: Vec<OwnedEventId>| {
        CanonicalJsonValue::Array(
            ids.into_iter()
                .map(|id| CanonicalJsonValue::String(id.into()))
                .collect(),
        )
    };
    let mut content = ev.content;
    let mut pdu = CanonicalJsonObject::new();
    if let Some(redacts) = ev.redacts {
        let redacts = CanonicalJsonValue::String(redacts.into());
        if version.redacts_in_content() {
            content.insert("redacts".to_owned(), redacts);
        } else {
            pdu.insert("redacts".to_owned(), redacts);
        }
    }
    pdu.insert("auth_events".to_owned(), ids(ev.auth_events));
    pdu.insert("prev_events".to_owned(), ids(ev.prev_events));
    pdu.insert("content".to_owned(), CanonicalJsonValue::Object(content));
    pdu.insert(
        "depth".to_owned(),
        CanonicalJsonValue::Integer(int(ev.depth, "depth")?),
    );
    pdu.insert(
        "origin_server_ts".to_owned(),
        CanonicalJsonValue::Integer(int(ev.origin_server_ts, "origin_server_ts")?),
    );
    if let Some(room_id) = &ev.room_id {
        pdu.insert(
            "room_id".to_owned(),
            CanonicalJsonValue::String(room_id.to_string()),
        );
    }
    pdu.insert(
        "sender".to_owned(),
        CanonicalJsonValue::String(ev.sender.into()),
    );
    if let Some(state_key) = ev.state_key {
        pdu.insert(
            "state_key".to_owned(),
            CanonicalJsonValue::String(state_key),
        );
    }
    pdu.insert("type".to_owned(), CanonicalJsonValue::String(ev.event_type));

    hash_and_sign(&mut pdu, version, key)?;
    check_size(&pdu)?;
    let event_id = event_id_of(&pdu, version)?;
    let room_id = match ev.room_id {
        Some(room_id) => room_id,
        None => room_id_from_event_id(&event_id)?,
    };
    Ok(SignedPdu {
        event_id,
        room_id,
        pdu,
    })
}

/// Adds `hashes.sha256` and our signature to a new event (server-server-api
/// "Adding hashes and signatures to outgoing events").
pub fn hash_and_sign(
    pdu: &mut CanonicalJsonObject,
    version: RoomVersion,
    key: &ServerKey,
) -> Result<(), PduError> {
    signatures::hash_and_sign_event(
        key.server_name.as_str(),
        &key.keypair,
        pdu,
        version.redaction_rules(),
    )?;
    Ok(())
}

/// Adds our signature to someone else's event without touching its hashes
/// (e.g. a resident server co-signing a `send_join` event).
pub fn add_signature(
    pdu: &mut CanonicalJsonObject,
    version: RoomVersion,
    key: &ServerKey,
) -> Result<(), PduError> {
    signatures::sign_event(
        key.server_name.as_str(),
        &key.keypair,
        pdu,
        version.redaction_rules(),
    )?;
    Ok(())
}

/// Size of the PDU as canonical JSON, or `TooLarge` past 65536 bytes.
pub fn check_size(pdu: &CanonicalJsonObject) -> Result<usize, PduError> {
    // CanonicalJsonObject is a BTreeMap of canonical values: serde_json's
    // compact output of it is the canonical encoding.
    let size = serde_json::to_vec(pdu)
        .map_err(|e| PduError::Malformed(e.to_string()))?
        .len();
    if size > MAX_PDU_BYTES {
        return Err(PduError::TooLarge { size });
    }
    Ok(size)
}

/// The event id of a PDU: `$` + URL-safe unpadded base64 of its reference
/// hash (rooms v4+ "Event IDs"; the hash is over the *redacted* event, so
/// redaction does not change the id).
pub fn event_id_of(
    pdu: &CanonicalJsonObject,
    version: RoomVersion,
) -> Result<OwnedEventId, PduError> {
    let hash = signatures::reference_hash(pdu, version.rules())?;
    OwnedEventId::try_from(format!("${hash}")).map_err(|e| PduError::Malformed(e.to_string()))
}

/// The room of a PDU: its `room_id`, or for a v12 create event the id
/// derived from its reference hash (appendices "Room IDs").
pub fn room_id_of(
    pdu: &CanonicalJsonObject,
    version: RoomVersion,
) -> Result<OwnedRoomId, PduError> {
    let is_create = matches!(pdu.get("type"), Some(CanonicalJsonValue::String(t)) if t == CREATE);
    match pdu.get("room_id") {
        // v12 auth rule 1.2: a create event with a room_id is rejected.
        Some(_) if is_create && version.room_id_from_create_event() => Err(PduError::Malformed(
            "m.room.create has a room_id in room version 12".to_owned(),
        )),
        Some(CanonicalJsonValue::String(s)) => OwnedRoomId::try_from(s.as_str())
            .map_err(|e| PduError::Malformed(format!("room_id: {e}"))),
        Some(_) => Err(PduError::Malformed("room_id is not a string".to_owned())),
        None if is_create && version.room_id_from_create_event() => {
            room_id_from_event_id(&event_id_of(pdu, version)?)
        }
        None => Err(PduError::Malformed("missing room_id".to_owned())),
    }
}

/// `!` + the create event's id without its `$` (rooms v12, appendices "Room IDs").
pub fn room_id_from_event_id(create_event_id: &OwnedEventId) -> Result<OwnedRoomId, PduError> {
    let hash = create_event_id.as_str().trim_start_matches('$');
    OwnedRoomId::try_from(format!("!{hash}")).map_err(|e| PduError::Malformed(e.to_string()))
}

/// Whether `hashes.sha256` matches the event (server-server-api
/// "Calculating the content hash"). `Ok(false)` means the event was
/// redacted (or tampered with): the receiver keeps the redacted form.
pub fn content_hash_matches(pdu: &CanonicalJsonObject) -> Result<bool, PduError> {
    let claimed = match pdu.get("hashes") {
        Some(CanonicalJsonValue::Object(h)) => match h.get("sha256") {
            Some(CanonicalJsonValue::String(s)) => s,
            _ => return Err(PduError::Malformed("missing hashes.sha256".to_owned())),
        },
        _ => return Err(PduError::Malformed("missing hashes".to_owned())),
    };
    let claimed = Base64::<Standard, [u8; 32]>::parse(claimed)
        .map_err(|e| PduError::Malformed(format!("hashes.sha256: {e}")))?;
    let actual = signatures::content_hash(pdu)?;
    Ok(claimed.as_bytes() == actual.as_bytes())
}

/// Like [`content_hash_matches`], with a mismatch as `ContentHashMismatch`.
pub fn verify_content_hash(pdu: &CanonicalJsonObject) -> Result<(), PduError> {
    if content_hash_matches(pdu)? {
        Ok(())
    } else {
        Err(PduError::ContentHashMismatch)
    }
}

/// Checks the signatures the room version requires (the sender's server,
/// plus `join_authorised_via_users_server`'s for restricted joins) and the
/// content hash. `Verified::Signatures` means the hash failed: use the
/// redacted form (server-server-api "Validating hashes and signatures").
pub fn verify_pdu(
    pdu: &CanonicalJsonObject,
    version: RoomVersion,
    keys: &PublicKeyMap,
) -> Result<Verified, PduError> {
    signatures::verify_event(keys, pdu, version.rules()).map_err(PduError::Signature)
}

/// The redaction algorithm of the room version (v10: rooms/v9 redactions;
/// v11+: rooms/v11 redactions). Drops `unsigned`.
pub fn redact(
    pdu: &CanonicalJsonObject,
    version: RoomVersion,
) -> Result<CanonicalJsonObject, PduError> {
    require_object_content(pdu)?;
    Ok(canonical_json::redact(
        pdu.clone(),
        version.redaction_rules(),
        None,
    )?)
}

/// [`redact`], then sets `unsigned.redacted_because` to the redaction event
/// (how servers serve redacted events to clients).
pub fn redact_because(
    pdu: &CanonicalJsonObject,
    version: RoomVersion,
    redaction_event: CanonicalJsonObject,
) -> Result<CanonicalJsonObject, PduError> {
    require_object_content(pdu)?;
    Ok(canonical_json::redact(
        pdu.clone(),
        version.redaction_rules(),
        Some(RedactedBecause::from_json(redaction_event)),
    )?)
}

/// Content of a new `m.room.create` event: `room_version`, `creator` where the
/// version still has it (v10), `additional_creators` where supported (v12).
pub fn create_event_content(
    version: RoomVersion,
    sender: &UserId,
    additional_creators: &[OwnedUserId],
) -> Result<CanonicalJsonObject, PduError> {
    let mut content = CanonicalJsonObject::new();
    content.insert(
        "room_version".to_owned(),
        CanonicalJsonValue::String(version.as_str().to_owned()),
    );
    if version.create_content_has_creator() {
        content.insert(
            "creator".to_owned(),
            CanonicalJsonValue::String(sender.to_string()),
        );
    }
    if !additional_creators.is_empty() {
        if !version.supports_additional_creators() {
            return Err(PduError::Invalid(format!(
                "additional_creators needs room version 12, not {version}"
            )));
        }
        content.insert(
            "additional_creators".to_owned(),
            CanonicalJsonValue::Array(
                additional_creators
                    .iter()
                    .map(|u| CanonicalJsonValue::String(u.to_string()))
                    .collect(),
            ),
        );
    }
    Ok(content)
}

/// ruma keeps a non-object `content` as it is when redacting; such an event
/// is malformed, and must not pass through redaction with its data intact.
fn require_object_content(pdu: &CanonicalJsonObject) -> Result<(), PduError> {
    match pdu.get("content") {
        None | Some(CanonicalJsonValue::Object(_)) => Ok(()),
        Some(_) => Err(PduError::Malformed("content is not an object".to_owned())),
    }
}

fn int(n: u64, field: &str) -> Result<Int, PduError> {
    // Canonical JSON integers are limited to ±(2^53 − 1) (rooms v6+).
    Int::try_from(n).map_err(|_| PduError::Invalid(format!("{field} {n} exceeds 2^53-1")))
}

fn validate_new_event(ev: &NewEvent, key: &ServerKey) -> Result<(), PduError> {
    let invalid = |s: String| Err(PduError::Invalid(s));
    let version = ev.room_version;
    if ev.sender.server_name() != key.server_name {
        return invalid(format!(
            "sender {} is not on {}",
            ev.sender, key.server_name
        ));
    }
    if ev.event_type.len() > MAX_TYPE_OR_STATE_KEY_BYTES {
        return invalid("type is longer than 255 bytes".to_owned());
    }
    if ev
        .state_key
        .as_ref()
        .is_some_and(|k| k.len() > MAX_TYPE_OR_STATE_KEY_BYTES)
    {
        return invalid("state_key is longer than 255 bytes".to_owned());
    }
    if ev.prev_events.len() > MAX_PREV_EVENTS {
        return invalid(format!(
            "{} prev_events (max {MAX_PREV_EVENTS})",
            ev.prev_events.len()
        ));
    }
    if ev.auth_events.len() > MAX_AUTH_EVENTS {
        return invalid(format!(
            "{} auth_events (max {MAX_AUTH_EVENTS})",
            ev.auth_events.len()
        ));
    }
    let is_create = ev.event_type == CREATE;
    if is_create && (!ev.prev_events.is_empty() || !ev.auth_events.is_empty()) {
        // Auth rule 1.1 (all versions): a create event has no prev_events.
        return invalid("m.room.create must have no prev_events or auth_events".to_owned());
    }
    match (
        &ev.room_id,
        is_create && version.room_id_from_create_event(),
    ) {
        (Some(_), true) => return invalid("a v12 m.room.create has no room_id".to_owned()),
        (None, false) => return invalid("room_id is required".to_owned()),
        (Some(room_id), false) if !version.create_event_in_auth_events() => {
            // v12: the create event is implied by the room id and MUST NOT
            // be listed in auth_events.
            let create_id = format!("${}", room_id.strip_sigil());
            if ev.auth_events.iter().any(|id| id.as_str() == create_id) {
                return invalid("v12 auth_events must not include the create event".to_owned());
            }
        }
        _ => {}
    }
    if is_create && version.supports_additional_creators() {
        // v12 auth rule 1.4: additional_creators must be valid user ids.
        if let Some(list) = ev.content.get("additional_creators") {
            let ok = list.as_array().is_some_and(|a| {
                a.iter()
                    .all(|v| v.as_str().is_some_and(|s| <&UserId>::try_from(s).is_ok()))
            });
            if !ok {
                return invalid("additional_creators must be an array of user ids".to_owned());
            }
        }
    }
    match (&ev.redacts, ev.event_type == REDACTION) {
        (Some(_), false) => return invalid("redacts is only for m.room.redaction".to_owned()),
        (None, true) if !(version.redacts_in_content() && ev.content.contains_key("redacts")) => {
            return invalid("m.room.redaction needs redacts".to_owned());
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
#[path = "pdu_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "pdu_redaction_tests.rs"]
mod redaction_tests;
