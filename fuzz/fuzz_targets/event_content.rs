//! A client's event, as `PUT /send` and `PUT /state` take it, up to the
//! room's auth rules: the body parsed as canonical content, a redaction's
//! target normalised (`rooms::redaction::prepare`), the event built, hashed
//! and signed (`build_pdu`, which validates type, state key and size), the
//! typed parse (`Pdu::from_json`), then the room version's authorization
//! rules (`rooms::template::check_auth`) against a small room: create, the
//! sender's join, power levels. Any body, type and state key must give an
//! event or an error, never a panic.
//!
//! Input: one byte choosing the room version and whether the event is a
//! state event, the event type up to the first NUL, then the body.
#![no_main]

use std::collections::HashMap;
use std::rc::Rc;

use hearth::api::client::event_content;
use hearth::events::{build_pdu, create_event_content, NewEvent, Pdu, RoomVersion, ServerKey};
use hearth::rooms::redaction::prepare;
use hearth::rooms::template::check_auth;
use hearth::rooms::EventRequest;
use libfuzzer_sys::fuzz_target;
use ruma::canonical_json::CanonicalJsonObject;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::json;

type AuthPdus = HashMap<(String, String), Rc<Pdu>>;

fn key() -> ServerKey {
    ServerKey::from_seed("domain".try_into().unwrap(), "1", &[7u8; 32]).unwrap()
}

fn obj(v: serde_json::Value) -> CanonicalJsonObject {
    serde_json::from_value(v).unwrap()
}

/// The room an event is sent to: its id, its auth events, and the events
/// the next one names as `auth_events` and `prev_events`.
struct Room {
    id: OwnedRoomId,
    auth: AuthPdus,
    auth_ids: Vec<OwnedEventId>,
    prev: OwnedEventId,
}

fn room(version: RoomVersion, key: &ServerKey, alice: &OwnedUserId) -> Room {
    let mut auth = AuthPdus::new();
    let mut add = |p: Pdu| {
        let k = (p.kind.to_string(), p.state_key.clone().unwrap_or_default());
        let id = p.event_id.clone();
        auth.insert(k, Rc::new(p));
        id
    };
    let build = |room_id: Option<OwnedRoomId>,
                 kind: &str,
                 content: CanonicalJsonObject,
                 prev: Vec<OwnedEventId>,
                 auth_events: Vec<OwnedEventId>,
                 depth: u64| {
        let signed = build_pdu(
            NewEvent {
                room_version: version,
                room_id,
                sender: alice.clone(),
                event_type: kind.to_owned(),
                state_key: Some(if kind == "m.room.member" {
                    alice.to_string()
                } else {
                    String::new()
                }),
                content,
                prev_events: prev,
                auth_events,
                depth,
                origin_server_ts: 1,
                redacts: None,
            },
            key,
        )
        .unwrap();
        let room_id = signed.room_id.clone();
        (
            room_id,
            Pdu::from_json(signed.event_id, signed.pdu, version).unwrap(),
        )
    };
    let v12 = version.room_id_from_create_event();
    let create_content = create_event_content(version, alice, &[]).unwrap();
    let (room_id, create) = build(
        (!v12).then(|| "!room:domain".try_into().unwrap()),
        "m.room.create",
        create_content,
        vec![],
        vec![],
        1,
    );
    let create_id = add(create);
    // From v12 the create event is implied by the room id, never listed.
    let base: Vec<OwnedEventId> = if v12 { vec![] } else { vec![create_id.clone()] };
    let (_, join) = build(
        Some(room_id.clone()),
        "m.room.member",
        obj(json!({"membership": "join"})),
        vec![create_id],
        base.clone(),
        2,
    );
    let join_id = add(join);
    let mut with_join = base.clone();
    with_join.push(join_id.clone());
    let (_, pl) = build(
        Some(room_id.clone()),
        "m.room.power_levels",
        obj(json!({"users": {alice.as_str(): 100}, "events_default": 0})),
        vec![join_id],
        with_join.clone(),
        3,
    );
    let pl_id = add(pl);
    let mut auth_ids = with_join;
    auth_ids.push(pl_id.clone());
    Room {
        id: room_id,
        auth,
        auth_ids,
        prev: pl_id,
    }
}

thread_local! {
    static SETUP: (ServerKey, OwnedUserId, Vec<(RoomVersion, Room)>) = {
        let key = key();
        let alice: OwnedUserId = "@alice:domain".try_into().unwrap();
        let rooms = RoomVersion::SUPPORTED
            .iter()
            .map(|&v| (v, room(v, &key, &alice)))
            .collect();
        (key, alice, rooms)
    };
}

fuzz_target!(|input: &[u8]| {
    let Some((&sel, rest)) = input.split_first() else {
        return;
    };
    let (kind, body) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&b"m.room.message"[..], rest),
    };
    let Ok(kind) = std::str::from_utf8(kind) else {
        return;
    };
    let Ok(content) = event_content(body) else {
        return;
    };
    SETUP.with(|(key, alice, rooms)| {
        let (version, room) = &rooms[usize::from(sel % 3)];
        let state_key = match sel / 3 % 3 {
            0 => None,
            1 => Some(String::new()),
            _ => Some(alice.to_string()),
        };
        let mut req = EventRequest {
            room_id: room.id.clone(),
            sender: alice.clone(),
            event_type: kind.to_owned(),
            state_key,
            content,
            txn: None,
            redacts: None,
        };
        if prepare(&mut req).is_err() {
            return;
        }
        let Ok(signed) = build_pdu(
            NewEvent {
                room_version: *version,
                room_id: Some(req.room_id),
                sender: req.sender,
                event_type: req.event_type,
                state_key: req.state_key,
                content: req.content,
                prev_events: vec![room.prev.clone()],
                auth_events: room.auth_ids.clone(),
                depth: 4,
                origin_server_ts: 2,
                redacts: req.redacts,
            },
            key,
        ) else {
            return;
        };
        // hearth's own event, just built: its typed parse cannot fail.
        let pdu = Pdu::from_json(signed.event_id, signed.pdu, *version)
            .expect("an event build_pdu made parses");
        let _ = check_auth(*version, &pdu, &room.auth);
    });
});
