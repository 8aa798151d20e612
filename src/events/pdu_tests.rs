//! Tests of `pdu.rs`. Known answers were computed once by an independent
//! route (Python: hashlib + json with sorted keys/compact separators +
//! `cryptography`'s ed25519, a hand-written redaction), which also reproduces
//! the spec's own vectors.

use std::collections::BTreeSet;

use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::serde::{base64::Standard, Base64};
use ruma::signatures::{PublicKeyMap, PublicKeySet, Verified};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::json;

use super::*;
use crate::events::room_version::RoomVersion::{self, V10, V11, V12};
use crate::events::signing_key::ServerKey;

const SPEC_SEED: &str = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1";

/// The spec's test key: server `domain`, key id `ed25519:1`.
fn key() -> ServerKey {
    key_for("domain")
}

fn key_for(server: &str) -> ServerKey {
    let seed = Base64::<Standard, [u8; 32]>::parse(SPEC_SEED).unwrap();
    ServerKey::from_seed(server.try_into().unwrap(), "1", seed.as_inner()).unwrap()
}

fn keys_of(servers: &[&ServerKey]) -> PublicKeyMap {
    servers
        .iter()
        .map(|k| {
            let set = PublicKeySet::from([(
                k.key_id.to_string(),
                Base64::parse(k.public_key_base64()).unwrap(),
            )]);
            (k.server_name.to_string(), set)
        })
        .collect()
}

pub(super) fn obj(v: serde_json::Value) -> CanonicalJsonObject {
    serde_json::from_value(v).unwrap()
}

fn eid(s: &str) -> OwnedEventId {
    s.try_into().unwrap()
}

fn user(s: &str) -> OwnedUserId {
    s.try_into().unwrap()
}

fn room(s: &str) -> OwnedRoomId {
    s.try_into().unwrap()
}

fn message(version: RoomVersion) -> NewEvent {
    NewEvent {
        room_version: version,
        room_id: Some(room("!room:domain")),
        sender: user("@alice:domain"),
        event_type: "m.room.message".to_owned(),
        state_key: None,
        content: obj(json!({"body": "h\u{e9}llo \u{2603} \"q\"", "msgtype": "m.text"})),
        prev_events: vec![eid("$prev")],
        auth_events: vec![eid("$a1"), eid("$a2")],
        depth: 5,
        origin_server_ts: 1_700_000_000_000,
        redacts: None,
    }
}

fn v12_create() -> NewEvent {
    NewEvent {
        room_version: V12,
        room_id: None,
        sender: user("@alice:domain"),
        event_type: "m.room.create".to_owned(),
        state_key: Some(String::new()),
        content: create_event_content(V12, &user("@alice:domain"), &[user("@bob:other.example")])
            .unwrap(),
        prev_events: vec![],
        auth_events: vec![],
        depth: 1,
        origin_server_ts: 1_700_000_000_000,
        redacts: None,
    }
}

fn v10_redaction() -> NewEvent {
    NewEvent {
        room_version: V10,
        event_type: "m.room.redaction".to_owned(),
        content: obj(json!({"reason": "spam"})),
        prev_events: vec![eid("$prev")],
        auth_events: vec![eid("$a1")],
        depth: 7,
        origin_server_ts: 1_700_000_000_001,
        redacts: Some(eid("$target")),
        ..message(V10)
    }
}

fn hash_and_sig(pdu: &CanonicalJsonObject) -> (String, String) {
    let v = serde_json::to_value(pdu).unwrap();
    (
        v["hashes"]["sha256"].as_str().unwrap().to_owned(),
        v["signatures"]["domain"]["ed25519:1"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

pub(super) fn keys(o: &CanonicalJsonObject) -> BTreeSet<&str> {
    o.keys().map(String::as_str).collect()
}

pub(super) fn content(o: &CanonicalJsonObject) -> &CanonicalJsonObject {
    o.get("content")
        .and_then(CanonicalJsonValue::as_object)
        .unwrap()
}

#[test]
fn spec_event_signing_vectors() {
    // appendices "Cryptographic Test Vectors" / "Event Signing". These events
    // carry v1-era fields (origin, event_id) that v10 redaction still keeps.
    let mut minimal = obj(json!({
        "room_id": "!x:domain", "sender": "@a:domain", "origin": "domain",
        "origin_server_ts": 1000000, "signatures": {}, "hashes": {}, "type": "X",
        "content": {}, "prev_events": [], "auth_events": [], "depth": 3,
        "unsigned": {"age_ts": 1000000}
    }));
    hash_and_sign(&mut minimal, V10, &key()).unwrap();
    assert_eq!(
        minimal,
        obj(json!({
            "auth_events": [], "content": {}, "depth": 3,
            "hashes": {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"},
            "origin": "domain", "origin_server_ts": 1000000, "prev_events": [],
            "room_id": "!x:domain", "sender": "@a:domain",
            "signatures": {"domain": {"ed25519:1": "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"}},
            "type": "X", "unsigned": {"age_ts": 1000000}
        }))
    );

    let mut redactable = obj(json!({
        "content": {"body": "Here is the message content"}, "event_id": "$0:domain",
        "origin": "domain", "origin_server_ts": 1000000, "type": "m.room.message",
        "room_id": "!r:domain", "sender": "@u:domain", "signatures": {},
        "unsigned": {"age_ts": 1000000}
    }));
    hash_and_sign(&mut redactable, V10, &key()).unwrap();
    assert_eq!(
        redactable,
        obj(json!({
            "content": {"body": "Here is the message content"}, "event_id": "$0:domain",
            "hashes": {"sha256": "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"},
            "origin": "domain", "origin_server_ts": 1000000, "type": "m.room.message",
            "room_id": "!r:domain", "sender": "@u:domain",
            "signatures": {"domain": {"ed25519:1": "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"}},
            "unsigned": {"age_ts": 1000000}
        }))
    );
}

#[test]
fn known_answer_v11_message() {
    let built = build_pdu(message(V11), &key()).unwrap();
    assert_eq!(
        hash_and_sig(&built.pdu),
        (
            "NRmGhcgWvz/Z6wq++sGo0aDrSRwEcfdaqJXr7mxyyR0".to_owned(),
            "Bd6a4SIAuDDVDU/3wNeMpDcMFtBZpgvdc1Wcm76EvoSr+iMg2Ik1YvTWhtm95YalmTifW95ZXpfHSPsLJFosDw"
                .to_owned()
        )
    );
    assert_eq!(
        built.event_id.as_str(),
        "$qUojp-ESuanhq1A4BzYsJrJNrK-BkEsGgzXczXuVzd0"
    );
    assert_eq!(built.room_id.as_str(), "!room:domain");
    // Federation format of v4+ rooms: no event_id, no origin.
    assert_eq!(
        keys(&built.pdu),
        BTreeSet::from([
            "auth_events",
            "content",
            "depth",
            "hashes",
            "origin_server_ts",
            "prev_events",
            "room_id",
            "sender",
            "signatures",
            "type"
        ])
    );
}

#[test]
fn known_answer_v12_create_derives_room_id() {
    let built = build_pdu(v12_create(), &key()).unwrap();
    assert_eq!(
        hash_and_sig(&built.pdu),
        (
            "00DwXHFsIc2ZI9Y2V6Z96QEAHtj8CM6bz0qTMkQ5iMs".to_owned(),
            "C/xyeKYJ5R1MQrkgPnawKX/bQCLlA9fyqmJi9vg2ThzYdHA+Ll8DfTQ936vewFtXI5j9vVtOo+oEFvJPwbeICg"
                .to_owned()
        )
    );
    assert_eq!(
        built.event_id.as_str(),
        "$eaM40VD4ktjNCSz9J_OoLruHlQQtWPb_dyu3eDFdw8U"
    );
    assert_eq!(
        built.room_id.as_str(),
        "!eaM40VD4ktjNCSz9J_OoLruHlQQtWPb_dyu3eDFdw8U"
    );
    assert!(!built.pdu.contains_key("room_id"));
    assert_eq!(room_id_of(&built.pdu, V12).unwrap(), built.room_id);
    // v12 create content: no creator, additional_creators kept.
    assert_eq!(
        serde_json::to_value(content(&built.pdu)).unwrap(),
        json!({"room_version": "12", "additional_creators": ["@bob:other.example"]})
    );
}

#[test]
fn known_answer_v10_redaction_has_top_level_redacts() {
    let built = build_pdu(v10_redaction(), &key()).unwrap();
    assert_eq!(
        hash_and_sig(&built.pdu),
        (
            "PLwQLt7+mezLu1buV39V1kCtBLsDYaTru+1k7KcY+uo".to_owned(),
            "hJrqf+AjqK2iyEHg5o5l/9+B2xQrVinyUfxP1P0Vn5LtdJbRFAd8nKwcD+VA7f4UCgDVKthOHuKar+Q9lqiOAg"
                .to_owned()
        )
    );
    assert_eq!(
        built.event_id.as_str(),
        "$A_yfKDyEdvOV9cs6362kFHSRO3QhBRcmwakqvBwenWo"
    );
    assert_eq!(
        built.pdu.get("redacts").and_then(|v| v.as_str()),
        Some("$target")
    );
    assert!(!content(&built.pdu).contains_key("redacts"));
}

#[test]
fn v11_redaction_has_redacts_in_content() {
    for version in [V11, V12] {
        let ev = NewEvent {
            room_version: version,
            ..v10_redaction()
        };
        let built = build_pdu(ev, &key()).unwrap();
        assert!(!built.pdu.contains_key("redacts"));
        assert_eq!(
            content(&built.pdu).get("redacts").and_then(|v| v.as_str()),
            Some("$target")
        );
        // A client may already have put it in content (v11+).
        let ev = NewEvent {
            room_version: version,
            redacts: None,
            content: obj(json!({"redacts": "$target"})),
            ..v10_redaction()
        };
        assert!(build_pdu(ev, &key()).is_ok());
    }
}

#[test]
fn round_trip_verify_for_every_version() {
    let k = key();
    let keys = keys_of(&[&k]);
    for version in RoomVersion::SUPPORTED {
        let built = build_pdu(message(version), &k).unwrap();
        assert!(matches!(
            verify_pdu(&built.pdu, version, &keys),
            Ok(Verified::All)
        ));
        verify_content_hash(&built.pdu).unwrap();
        assert_eq!(event_id_of(&built.pdu, version).unwrap(), built.event_id);
        assert_eq!(room_id_of(&built.pdu, version).unwrap(), built.room_id);
        check_size(&built.pdu).unwrap();

        // Changed content: signature (over the redacted form) still holds,
        // the content hash does not; the event id is unchanged.
        let mut tampered = built.pdu.clone();
        tampered.insert(
            "content".to_owned(),
            CanonicalJsonValue::Object(obj(json!({"body": "x"}))),
        );
        assert!(matches!(
            verify_pdu(&tampered, version, &keys),
            Ok(Verified::Signatures)
        ));
        assert!(!content_hash_matches(&tampered).unwrap());
        assert!(matches!(
            verify_content_hash(&tampered),
            Err(PduError::ContentHashMismatch)
        ));
        assert_eq!(event_id_of(&tampered, version).unwrap(), built.event_id);

        // Changed essential field: signature fails, and the id changes.
        let mut forged = built.pdu.clone();
        forged.insert(
            "depth".to_owned(),
            CanonicalJsonValue::Integer(99u32.into()),
        );
        assert!(matches!(
            verify_pdu(&forged, version, &keys),
            Err(PduError::Signature(_))
        ));
        assert_ne!(event_id_of(&forged, version).unwrap(), built.event_id);

        // Unknown key: no key for the sender's server.
        assert!(verify_pdu(&built.pdu, version, &PublicKeyMap::new()).is_err());
    }
}

#[test]
fn redaction_keeps_event_id_and_signature() {
    let k = key();
    let keys = keys_of(&[&k]);
    for version in RoomVersion::SUPPORTED {
        let built = build_pdu(message(version), &k).unwrap();
        let redacted = redact(&built.pdu, version).unwrap();
        assert!(content(&redacted).is_empty());
        assert_eq!(event_id_of(&redacted, version).unwrap(), built.event_id);
        assert!(matches!(
            verify_pdu(&redacted, version, &keys),
            Ok(Verified::Signatures)
        ));
        assert!(!content_hash_matches(&redacted).unwrap());
    }
    let create = build_pdu(v12_create(), &k).unwrap();
    let redacted = redact(&create.pdu, V12).unwrap();
    assert_eq!(redacted, create.pdu, "v12 create keeps everything");
    assert_eq!(room_id_of(&redacted, V12).unwrap(), create.room_id);
}

#[test]
fn size_limit_is_65536_bytes_including_signatures() {
    let with_body = |n: usize| NewEvent {
        content: obj(json!({"body": "a".repeat(n)})),
        ..message(V12)
    };
    let base = build_pdu(with_body(0), &key()).unwrap();
    let overhead = check_size(&base.pdu).unwrap();
    // Signatures and hashes have fixed lengths: size grows 1:1 with the body.
    let exact = build_pdu(with_body(MAX_PDU_BYTES - overhead), &key()).unwrap();
    assert_eq!(check_size(&exact.pdu).unwrap(), MAX_PDU_BYTES);
    match build_pdu(with_body(MAX_PDU_BYTES - overhead + 1), &key()) {
        Err(PduError::TooLarge { size }) => assert_eq!(size, MAX_PDU_BYTES + 1),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(matches!(
        build_pdu(with_body(200_000), &key()),
        Err(PduError::TooLarge { .. })
    ));
}

#[test]
fn builder_rejects_what_the_version_forbids() {
    let k = key();
    let invalid = |ev: NewEvent| match build_pdu(ev, &k) {
        Err(PduError::Invalid(_)) => {}
        other => panic!("expected Invalid, got {other:?}"),
    };
    // v12 create with a room id; non-create without one; v11 create without one.
    invalid(NewEvent {
        room_id: Some(room("!r:domain")),
        ..v12_create()
    });
    invalid(NewEvent {
        room_id: None,
        ..message(V12)
    });
    invalid(NewEvent {
        room_version: V11,
        content: obj(json!({})),
        ..v12_create()
    });
    // Create events have no prev/auth events.
    invalid(NewEvent {
        prev_events: vec![eid("$p")],
        ..v12_create()
    });
    invalid(NewEvent {
        auth_events: vec![eid("$p")],
        ..v12_create()
    });
    // v12: the create event must not be listed in auth_events.
    invalid(NewEvent {
        room_id: Some(room("!abc")),
        auth_events: vec![eid("$abc")],
        ..message(V12)
    });
    // additional_creators must be user ids.
    invalid(NewEvent {
        content: obj(json!({"room_version": "12", "additional_creators": ["bob"]})),
        ..v12_create()
    });
    invalid(NewEvent {
        content: obj(json!({"room_version": "12", "additional_creators": "@b:x"})),
        ..v12_create()
    });
    // redacts only on redactions; v10 redactions need it.
    invalid(NewEvent {
        redacts: Some(eid("$t")),
        ..message(V11)
    });
    invalid(NewEvent {
        redacts: None,
        ..v10_redaction()
    });
    // Limits.
    invalid(NewEvent {
        sender: user("@alice:elsewhere"),
        ..message(V11)
    });
    invalid(NewEvent {
        event_type: "t".repeat(256),
        ..message(V11)
    });
    invalid(NewEvent {
        state_key: Some("s".repeat(256)),
        ..message(V11)
    });
    invalid(NewEvent {
        prev_events: vec![eid("$p"); 21],
        ..message(V11)
    });
    invalid(NewEvent {
        auth_events: vec![eid("$a"); 11],
        ..message(V11)
    });
    invalid(NewEvent {
        depth: 1 << 53,
        ..message(V11)
    });
    // The boundaries themselves are fine.
    assert!(build_pdu(
        NewEvent {
            prev_events: vec![eid("$p"); 20],
            ..message(V11)
        },
        &k
    )
    .is_ok());
    assert!(build_pdu(
        NewEvent {
            depth: (1 << 53) - 1,
            ..message(V11)
        },
        &k
    )
    .is_ok());
}

#[test]
fn create_event_content_per_version() {
    let alice = user("@alice:domain");
    let v = |c: CanonicalJsonObject| serde_json::to_value(c).unwrap();
    assert_eq!(
        v(create_event_content(V10, &alice, &[]).unwrap()),
        json!({"room_version": "10", "creator": "@alice:domain"})
    );
    assert_eq!(
        v(create_event_content(V11, &alice, &[]).unwrap()),
        json!({"room_version": "11"})
    );
    assert!(create_event_content(V11, &alice, &[user("@b:x")]).is_err());
    let built = build_pdu(
        NewEvent {
            room_version: V10,
            room_id: Some(room("!r:domain")),
            content: create_event_content(V10, &alice, &[]).unwrap(),
            ..v12_create()
        },
        &key(),
    )
    .unwrap();
    assert_eq!(built.room_id.as_str(), "!r:domain");
    assert_eq!(room_id_of(&built.pdu, V10).unwrap(), built.room_id);
}

#[test]
fn add_signature_keeps_hashes() {
    let origin = key();
    let resident = key_for("resident.example");
    let built = build_pdu(message(V11), &origin).unwrap();
    let mut pdu = built.pdu.clone();
    add_signature(&mut pdu, V11, &resident).unwrap();
    assert_eq!(pdu.get("hashes"), built.pdu.get("hashes"));
    let sigs = pdu
        .get("signatures")
        .and_then(CanonicalJsonValue::as_object)
        .unwrap();
    assert_eq!(keys(sigs), BTreeSet::from(["domain", "resident.example"]));
    assert_eq!(event_id_of(&pdu, V11).unwrap(), built.event_id);
    let keys = keys_of(&[&origin, &resident]);
    assert!(matches!(verify_pdu(&pdu, V11, &keys), Ok(Verified::All)));
}

#[test]
fn malformed_pdus_are_errors_not_panics() {
    let no_type = obj(json!({"content": {}, "room_id": "!r:d"}));
    assert!(matches!(
        event_id_of(&no_type, V11),
        Err(PduError::Malformed(_))
    ));
    assert!(matches!(redact(&no_type, V11), Err(PduError::Malformed(_))));
    assert!(matches!(
        content_hash_matches(&no_type),
        Err(PduError::Malformed(_))
    ));
    let bad_hash = obj(json!({"type": "x", "hashes": {"sha256": "!!"}}));
    assert!(matches!(
        content_hash_matches(&bad_hash),
        Err(PduError::Malformed(_))
    ));
    let short_hash = obj(json!({"type": "x", "hashes": {"sha256": "AAAA"}}));
    assert!(matches!(
        content_hash_matches(&short_hash),
        Err(PduError::Malformed(_))
    ));
    let bad_content = obj(json!({"type": "m.room.member", "content": "x"}));
    assert!(redact(&bad_content, V11).is_err());
    assert!(room_id_of(&obj(json!({"type": "x"})), V11).is_err());
    assert!(room_id_of(&obj(json!({"type": "x", "room_id": 5})), V11).is_err());
    assert!(room_id_of(&obj(json!({"type": "x", "room_id": "nope"})), V11).is_err());
    // A v12 create event that claims a room id is malformed.
    let create = obj(json!({"type": "m.room.create", "room_id": "!r"}));
    assert!(matches!(
        room_id_of(&create, V12),
        Err(PduError::Malformed(_))
    ));
    assert!(verify_pdu(&no_type, V11, &PublicKeyMap::new()).is_err());
}
