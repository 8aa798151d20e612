//! Tests of the redaction algorithm per room version (`pdu::redact`):
//! exactly which keys v10 keeps versus v11/v12 (rooms v9/v11 "Redactions").

use std::collections::BTreeSet;

use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use serde_json::json;

use super::tests::{content, keys, obj};
use super::{redact, redact_because};
use crate::events::room_version::RoomVersion::{V10, V11, V12};

/// A PDU with every field that v10 and v11 redaction treat differently.
fn redactable(event_type: &str, content: serde_json::Value) -> CanonicalJsonObject {
    obj(json!({
        "type": event_type, "state_key": "", "content": content,
        "room_id": "!r:domain", "sender": "@u:domain", "origin": "domain",
        "membership": "join", "prev_state": [], "redacts": "$x", "origin_server_ts": 1,
        "depth": 2, "prev_events": [], "auth_events": [], "hashes": {"sha256": "AAAA"},
        "signatures": {}, "unsigned": {"age": 1}, "extra": true
    }))
}

#[test]
fn redaction_top_level_keys_v10_vs_v11() {
    let ev = redactable("m.room.message", json!({"body": "b"}));
    let common = [
        "auth_events",
        "content",
        "depth",
        "hashes",
        "origin_server_ts",
        "prev_events",
        "room_id",
        "sender",
        "signatures",
        "state_key",
        "type",
    ];
    let v10 = redact(&ev, V10).unwrap();
    let mut expected: BTreeSet<&str> = common.into();
    expected.extend(["origin", "membership", "prev_state"]);
    assert_eq!(keys(&v10), expected);
    for version in [V11, V12] {
        assert_eq!(keys(&redact(&ev, version).unwrap()), BTreeSet::from(common));
    }
}

#[test]
fn redaction_content_v10_vs_v11() {
    let cases = [
        (
            "m.room.create",
            json!({"creator": "@u:domain", "room_version": "10", "m.federate": false}),
            json!({"creator": "@u:domain"}),
            json!({"creator": "@u:domain", "room_version": "10", "m.federate": false}),
        ),
        (
            "m.room.power_levels",
            json!({"ban": 50, "events": {}, "events_default": 0, "invite": 0, "kick": 50,
                   "redact": 50, "state_default": 50, "users": {}, "users_default": 0,
                   "notifications": {"room": 50}}),
            json!({"ban": 50, "events": {}, "events_default": 0, "kick": 50,
                   "redact": 50, "state_default": 50, "users": {}, "users_default": 0}),
            json!({"ban": 50, "events": {}, "events_default": 0, "invite": 0, "kick": 50,
                   "redact": 50, "state_default": 50, "users": {}, "users_default": 0}),
        ),
        (
            "m.room.redaction",
            json!({"redacts": "$x", "reason": "r"}),
            json!({}),
            json!({"redacts": "$x"}),
        ),
        (
            "m.room.member",
            json!({"membership": "invite", "displayname": "U",
                   "join_authorised_via_users_server": "@a:domain",
                   "third_party_invite": {"display_name": "d", "signed": {"token": "t"}}}),
            json!({"membership": "invite", "join_authorised_via_users_server": "@a:domain"}),
            json!({"membership": "invite", "join_authorised_via_users_server": "@a:domain",
                   "third_party_invite": {"signed": {"token": "t"}}}),
        ),
        (
            "m.room.join_rules",
            json!({"join_rule": "restricted", "allow": [], "x": 1}),
            json!({"join_rule": "restricted", "allow": []}),
            json!({"join_rule": "restricted", "allow": []}),
        ),
        (
            "m.room.history_visibility",
            json!({"history_visibility": "shared", "x": 1}),
            json!({"history_visibility": "shared"}),
            json!({"history_visibility": "shared"}),
        ),
        ("m.room.name", json!({"name": "n"}), json!({}), json!({})),
    ];
    for (event_type, full, want_v10, want_v11) in cases {
        let ev = redactable(event_type, full);
        let got = |v| serde_json::to_value(content(&redact(&ev, v).unwrap())).unwrap();
        assert_eq!(got(V10), want_v10, "{event_type} v10");
        assert_eq!(got(V11), want_v11, "{event_type} v11");
        assert_eq!(got(V12), want_v11, "{event_type} v12");
    }
}

#[test]
fn redact_because_sets_unsigned() {
    let ev = redactable("m.room.message", json!({"body": "b"}));
    let because = obj(json!({"type": "m.room.redaction", "content": {"redacts": "$x"}}));
    let red = redact_because(&ev, V11, because.clone()).unwrap();
    assert_eq!(
        red.get("unsigned"),
        Some(&CanonicalJsonValue::Object(obj(
            json!({"redacted_because": because})
        )))
    );
}
