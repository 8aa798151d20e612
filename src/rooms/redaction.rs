//! Redactions: who may redact what, and recording accepted redactions.
//!
//! The room versions we support (10–12) dropped the redaction auth rule of
//! v1–v2 ("Authorization rules" only check the `m.room.redaction` event's
//! own power level), leaving the sender check to the receiving server
//! (rooms v3+ "Handling redactions"). We run it before an event is built:
//! a user may redact their own events; redacting someone else's needs the
//! room's `redact` power level (client-server "Redactions", redaction.yaml).
//! Accepted redactions are recorded in `redactions`; the original event is
//! kept, and `rooms::serve` applies the room version's algorithm when
//! serving it.

use ruma::canonical_json::CanonicalJsonValue;
use ruma::state_res::events::{RoomCreateEvent, RoomPowerLevelsEvent, RoomPowerLevelsIntField};
use ruma::OwnedEventId;

use crate::db::Write;

use super::service::{EventRequest, RoomHead, Rooms};
use super::RoomError;
use crate::events::Pdu;

const REDACTION: &str = "m.room.redaction";
/// Default `users` power of a creator with no power levels event yet.
const DEFAULT_CREATOR_LEVEL: i64 = 100;

/// Normalises where a redaction names its target: `req.redacts`, or
/// `content.redacts` as clients may send through `PUT /send` (room_send.yaml:
/// the server moves it top-level for versions before 11). Afterwards the
/// target is in `req.redacts` only; `build_pdu` places it per room version.
pub fn prepare(req: &mut EventRequest) -> Result<(), RoomError> {
    if req.event_type != REDACTION {
        return Ok(());
    }
    let in_content = match req.content.remove("redacts") {
        None => None,
        Some(CanonicalJsonValue::String(s)) => Some(
            OwnedEventId::try_from(s)
                .map_err(|_| RoomError::BadJson("redacts is not an event id".into()))?,
        ),
        Some(_) => return Err(RoomError::BadJson("redacts must be a string".into())),
    };
    if req.redacts.is_none() {
        req.redacts = in_content;
    }
    if req.redacts.is_none() {
        return Err(RoomError::BadJson(
            "m.room.redaction needs the event to redact (redacts)".into(),
        ));
    }
    Ok(())
}

/// The sender's power level, per the room version's rules (v12: creators
/// are above every level).
fn user_level(rooms_head: &RoomHead, create: &Pdu, pl: Option<&Pdu>, user: &ruma::UserId) -> Level {
    let rules = &rooms_head.version.rules().authorization;
    let creators = RoomCreateEvent::new(create)
        .creators(rules)
        .unwrap_or_default();
    if rules.explicitly_privilege_room_creators && creators.contains(user) {
        return Level::Infinite;
    }
    match pl {
        Some(pl) => RoomPowerLevelsEvent::new(pl)
            .user_power_level(user, rules)
            .map(|i| Level::Int(i64::from(i)))
            .unwrap_or(Level::Int(0)),
        None if creators.contains(user) => Level::Int(DEFAULT_CREATOR_LEVEL),
        None => Level::Int(0),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Int(i64),
    Infinite,
}

/// Checks a redaction before it is built: the target must be an event of
/// this room (404 otherwise), and a target sent by someone else needs the
/// `redact` power level (403). The caller holds the room's lock.
pub(crate) async fn authorize(
    rooms: &Rooms,
    head: &RoomHead,
    req: &EventRequest,
) -> Result<(), RoomError> {
    if req.event_type != REDACTION {
        return Ok(());
    }
    let not_found = || RoomError::NotFound("event to redact not found".into());
    let target_id = req.redacts.as_ref().ok_or_else(not_found)?;
    let target = rooms.event(target_id).await?.ok_or_else(not_found)?;
    if target.room_id != req.room_id {
        return Err(not_found());
    }
    if target.sender == req.sender {
        // Own events: only the m.room.redaction event level applies,
        // which the room version's auth rules check.
        return Ok(());
    }
    let state_event = |t: &str| head.state.get(&(t.to_owned(), String::new())).cloned();
    let load = |id: Option<String>| async move {
        match id.and_then(|i| OwnedEventId::try_from(i).ok()) {
            Some(id) => rooms.event(&id).await,
            None => Ok(None),
        }
    };
    let create = load(state_event("m.room.create"))
        .await?
        .ok_or_else(|| RoomError::Internal("room has no create event".into()))?;
    let pl = load(state_event("m.room.power_levels")).await?;
    let rules = &head.version.rules().authorization;
    let redact_level = match &pl {
        Some(pl) => RoomPowerLevelsEvent::new(pl.as_ref())
            .get_as_int_or_default(RoomPowerLevelsIntField::Redact, rules)
            .map_err(RoomError::Forbidden)?,
        None => RoomPowerLevelsIntField::Redact.default_value(),
    };
    let level = user_level(head, &create, pl.as_deref(), &req.sender);
    if level >= Level::Int(i64::from(redact_level)) {
        Ok(())
    } else {
        Err(RoomError::Forbidden(format!(
            "redacting others' events needs power level {}",
            redact_level
        )))
    }
}

/// Adds the `redactions` row of an accepted redaction to its event's write
/// (same transaction as the event row).
pub(crate) fn record(w: Write, pdu: &Pdu) -> Write {
    match (&pdu.redacts, pdu.kind.to_string() == REDACTION) {
        (Some(target), true) => w.statement(
            "INSERT INTO redactions (event_id, redacts, room_id) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
            vec![
                pdu.event_id.to_string().into(),
                target.to_string().into(),
                pdu.room_id.to_string().into(),
            ],
        ),
        _ => w,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::canonical_json::CanonicalJsonObject;

    fn req(content: CanonicalJsonObject, redacts: Option<&str>) -> EventRequest {
        EventRequest {
            room_id: "!r:h".try_into().unwrap(),
            sender: "@a:h".try_into().unwrap(),
            event_type: REDACTION.into(),
            state_key: None,
            content,
            txn: None,
            redacts: redacts.map(|r| r.try_into().unwrap()),
        }
    }

    #[test]
    fn prepare_moves_content_redacts_out() {
        let mut c = CanonicalJsonObject::new();
        c.insert("redacts".into(), "$x".to_owned().into());
        c.insert("reason".into(), "spam".to_owned().into());
        let mut r = req(c, None);
        prepare(&mut r).unwrap();
        assert_eq!(r.redacts.as_ref().map(|e| e.as_str()), Some("$x"));
        assert!(!r.content.contains_key("redacts"));
        assert!(r.content.contains_key("reason"));
    }

    #[test]
    fn prepare_needs_a_target() {
        let mut r = req(CanonicalJsonObject::new(), None);
        assert!(matches!(prepare(&mut r), Err(RoomError::BadJson(_))));
        let mut c = CanonicalJsonObject::new();
        c.insert("redacts".into(), CanonicalJsonValue::Bool(true));
        let mut r = req(c, None);
        assert!(matches!(prepare(&mut r), Err(RoomError::BadJson(_))));
        let mut r = req(CanonicalJsonObject::new(), Some("$y"));
        prepare(&mut r).unwrap();
        assert_eq!(r.redacts.as_ref().map(|e| e.as_str()), Some("$y"));
    }

    #[test]
    fn other_events_are_untouched() {
        let mut c = CanonicalJsonObject::new();
        c.insert("redacts".into(), "$x".to_owned().into());
        let mut r = req(c, None);
        r.event_type = "m.room.message".into();
        prepare(&mut r).unwrap();
        assert!(r.redacts.is_none());
        assert!(r.content.contains_key("redacts"));
    }

    #[test]
    fn infinite_beats_every_level() {
        assert!(Level::Infinite > Level::Int(i64::MAX));
        assert!(Level::Int(50) >= Level::Int(50));
    }
}
