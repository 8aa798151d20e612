//! A room event in memory: the federation-format JSON plus the parsed fields
//! auth and state need, implementing ruma's state-res `Event` trait so the
//! spec's authorization rules can run on it.
//!
//! [`Pdu::from_json`] parses events hearth built or stored and PDUs other
//! servers sent, so it never panics and says which field was wrong
//! ([`PduParseError`]); the caller decides whether that is hearth's fault
//! (a stored event) or the sender's (a received one).

use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::events::TimelineEventType;
use ruma::state_res::Event;
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde_json::value::RawValue;

use super::pdu::{room_id_of, PduError};
use super::room_version::RoomVersion;

/// Why a PDU's JSON does not parse into a [`Pdu`].
#[derive(Debug, thiserror::Error)]
pub enum PduParseError {
    /// A field the PDU format requires is absent.
    #[error("PDU field `{field}` is missing")]
    Missing { field: &'static str },
    /// A field is present but of the wrong type or syntax (e.g. an
    /// `auth_events` entry that is not an event id).
    #[error("PDU field `{field}` is malformed")]
    Malformed { field: &'static str },
    /// The room could not be determined (`room_id` missing, malformed, or
    /// present on a v12 create event).
    #[error("PDU room: {0}")]
    Room(#[source] PduError),
}

/// A parsed PDU.
#[derive(Debug, Clone)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    /// The room the event belongs to (derived for a v12 create event).
    pub room_id: OwnedRoomId,
    /// The `room_id` field as present in the JSON (absent for a v12 create).
    room_field: Option<OwnedRoomId>,
    pub sender: OwnedUserId,
    pub kind: TimelineEventType,
    pub state_key: Option<String>,
    pub content: Box<RawValue>,
    pub origin_server_ts: u64,
    pub depth: u64,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub redacts: Option<OwnedEventId>,
    /// The full federation-format event.
    pub json: CanonicalJsonObject,
}

/// The field `field` of `json`, which the PDU format requires.
fn required<'a>(
    json: &'a CanonicalJsonObject,
    field: &'static str,
) -> Result<&'a CanonicalJsonValue, PduParseError> {
    json.get(field).ok_or(PduParseError::Missing { field })
}

/// A required string field.
fn string<'a>(
    json: &'a CanonicalJsonObject,
    field: &'static str,
) -> Result<&'a str, PduParseError> {
    required(json, field)?
        .as_str()
        .ok_or(PduParseError::Malformed { field })
}

/// A required non-negative integer field.
fn uint(json: &CanonicalJsonObject, field: &'static str) -> Result<u64, PduParseError> {
    match required(json, field)? {
        CanonicalJsonValue::Integer(i) => {
            u64::try_from(i64::from(*i)).map_err(|_| PduParseError::Malformed { field })
        }
        _ => Err(PduParseError::Malformed { field }),
    }
}

/// A required array of event ids (`prev_events`, `auth_events`).
fn ids(
    json: &CanonicalJsonObject,
    field: &'static str,
) -> Result<Vec<OwnedEventId>, PduParseError> {
    let CanonicalJsonValue::Array(a) = required(json, field)? else {
        return Err(PduParseError::Malformed { field });
    };
    a.iter()
        .map(|v| {
            v.as_str()
                .and_then(|s| OwnedEventId::try_from(s).ok())
                .ok_or(PduParseError::Malformed { field })
        })
        .collect()
}

impl Pdu {
    /// Parses a PDU: one hearth built or stored, or one received from
    /// another server (after its format, signatures and hashes were
    /// checked). Only the shape is checked here, not auth.
    pub fn from_json(
        event_id: OwnedEventId,
        json: CanonicalJsonObject,
        version: RoomVersion,
    ) -> Result<Pdu, PduParseError> {
        let room_id = room_id_of(&json, version).map_err(PduParseError::Room)?;
        let room_field = match json.get("room_id") {
            Some(v) => Some(room_id.clone()).filter(|_| v.as_str().is_some()),
            None => None,
        };
        let sender = OwnedUserId::try_from(string(&json, "sender")?)
            .map_err(|_| PduParseError::Malformed { field: "sender" })?;
        let kind = TimelineEventType::from(string(&json, "type")?);
        // A state_key of the wrong type must not turn a state event into a
        // message event.
        let state_key = match json.get("state_key") {
            None => None,
            Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
            Some(_) => return Err(PduParseError::Malformed { field: "state_key" }),
        };
        let content = match required(&json, "content")? {
            c @ CanonicalJsonValue::Object(_) => serde_json::value::to_raw_value(c)
                .map_err(|_| PduParseError::Malformed { field: "content" })?,
            _ => return Err(PduParseError::Malformed { field: "content" }),
        };
        let origin_server_ts = uint(&json, "origin_server_ts")?;
        let depth = uint(&json, "depth")?;
        // Top-level before v11, in `content` from v11.
        let redacts = json
            .get("redacts")
            .or_else(|| match json.get("content") {
                Some(CanonicalJsonValue::Object(c)) => c.get("redacts"),
                _ => None,
            })
            .and_then(|v| v.as_str())
            .and_then(|s| OwnedEventId::try_from(s).ok());
        Ok(Pdu {
            prev_events: ids(&json, "prev_events")?,
            auth_events: ids(&json, "auth_events")?,
            event_id,
            room_id,
            room_field,
            sender,
            kind,
            state_key,
            content,
            origin_server_ts,
            depth,
            redacts,
            json,
        })
    }

    /// The event in the client-server API's "ClientEvent" format.
    pub fn client_format(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "event_id": self.event_id,
            "room_id": self.room_id,
            "sender": self.sender,
            "type": self.kind.to_string(),
            "content": serde_json::from_str::<serde_json::Value>(self.content.get())
                .unwrap_or_else(|_| serde_json::json!({})),
            "origin_server_ts": self.origin_server_ts,
            "unsigned": {},
        });
        if let (Some(k), Some(obj)) = (&self.state_key, v.as_object_mut()) {
            obj.insert("state_key".into(), k.clone().into());
        }
        v
    }

    /// The federation JSON as a `serde_json::Value` (for storage).
    pub fn json_value(&self) -> serde_json::Value {
        serde_json::to_value(&self.json).unwrap_or(serde_json::Value::Null)
    }

    /// `content.membership` of an `m.room.member` event.
    pub fn membership(&self) -> Option<String> {
        if self.kind != TimelineEventType::RoomMember {
            return None;
        }
        serde_json::from_str::<serde_json::Value>(self.content.get())
            .ok()?
            .get("membership")?
            .as_str()
            .map(str::to_owned)
    }
}

impl Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.room_field.as_deref()
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        MilliSecondsSinceUnixEpoch(UInt::try_from(self.origin_server_ts).unwrap_or_default())
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        // Only accepted events are persisted.
        false
    }
}

#[cfg(test)]
#[path = "parsed_tests.rs"]
mod tests;
