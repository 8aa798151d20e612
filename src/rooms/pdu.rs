//! A persisted room event in memory: the federation-format JSON plus the
//! parsed fields auth and state need, implementing ruma's state-res
//! `Event` trait so the spec's authorization rules can run on it.

use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::events::TimelineEventType;
use ruma::state_res::Event;
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde_json::value::RawValue;

use crate::events::{room_id_of, RoomVersion};

use super::RoomError;

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

fn malformed(what: &str) -> RoomError {
    RoomError::Internal(format!("stored event malformed: {what}"))
}

fn ids(v: Option<&CanonicalJsonValue>, what: &str) -> Result<Vec<OwnedEventId>, RoomError> {
    let Some(CanonicalJsonValue::Array(a)) = v else {
        return Err(malformed(what));
    };
    a.iter()
        .map(|v| {
            v.as_str()
                .and_then(|s| OwnedEventId::try_from(s).ok())
                .ok_or_else(|| malformed(what))
        })
        .collect()
}

impl Pdu {
    /// Parses a PDU we built or stored.
    pub fn from_json(
        event_id: OwnedEventId,
        json: CanonicalJsonObject,
        version: RoomVersion,
    ) -> Result<Pdu, RoomError> {
        let room_id = room_id_of(&json, version).map_err(|e| malformed(&e.to_string()))?;
        let room_field = match json.get("room_id") {
            Some(v) => Some(room_id.clone()).filter(|_| v.as_str().is_some()),
            None => None,
        };
        let str_field = |k: &str| json.get(k).and_then(|v| v.as_str());
        let sender = str_field("sender")
            .and_then(|s| OwnedUserId::try_from(s).ok())
            .ok_or_else(|| malformed("sender"))?;
        let kind = TimelineEventType::from(str_field("type").ok_or_else(|| malformed("type"))?);
        let state_key = str_field("state_key").map(str::to_owned);
        let content = json
            .get("content")
            .and_then(|c| serde_json::value::to_raw_value(c).ok())
            .ok_or_else(|| malformed("content"))?;
        let int = |k: &str| match json.get(k) {
            Some(CanonicalJsonValue::Integer(i)) => u64::try_from(i64::from(*i)).ok(),
            _ => None,
        };
        let origin_server_ts = int("origin_server_ts").ok_or_else(|| malformed("ts"))?;
        let depth = int("depth").ok_or_else(|| malformed("depth"))?;
        let redacts = json
            .get("redacts")
            .or_else(|| match json.get("content") {
                Some(CanonicalJsonValue::Object(c)) => c.get("redacts"),
                _ => None,
            })
            .and_then(|v| v.as_str())
            .and_then(|s| OwnedEventId::try_from(s).ok());
        Ok(Pdu {
            prev_events: ids(json.get("prev_events"), "prev_events")?,
            auth_events: ids(json.get("auth_events"), "auth_events")?,
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
