//! Malformed PDUs, as another server might send them: a typed error naming
//! the field, never a panic.

use super::*;
use proptest::prelude::*;
use serde_json::{json, Value};

fn canonical(v: Value) -> CanonicalJsonObject {
    let Value::Object(m) = v else {
        panic!("test JSON is an object")
    };
    ruma::canonical_json::try_from_json_map(m).expect("test JSON is canonical")
}

fn good() -> Value {
    json!({
        "room_id": "!r:a.test", "sender": "@a:a.test", "type": "m.room.message",
        "content": {"body": "hi"}, "origin_server_ts": 1, "depth": 2,
        "prev_events": ["$p"], "auth_events": ["$a1", "$a2"],
        "hashes": {"sha256": "x"}, "signatures": {},
    })
}

fn parse(v: Value) -> Result<Pdu, PduParseError> {
    let id = OwnedEventId::try_from("$e").expect("valid id");
    Pdu::from_json(id, canonical(v), RoomVersion::V11)
}

fn with(field: &str, value: Value) -> Value {
    let mut v = good();
    v[field] = value;
    v
}

fn without(field: &str) -> Value {
    let mut v = good();
    v.as_object_mut().map(|o| o.remove(field));
    v
}

#[test]
fn a_well_formed_pdu_parses() {
    let pdu = parse(good()).expect("parses");
    assert_eq!(pdu.sender, "@a:a.test");
    assert_eq!(pdu.prev_events.len(), 1);
    assert_eq!(pdu.auth_events.len(), 2);
    assert_eq!(pdu.depth, 2);
    assert_eq!(pdu.state_key, None);
}

#[test]
fn missing_sender() {
    assert!(matches!(
        parse(without("sender")),
        Err(PduParseError::Missing { field: "sender" })
    ));
}

#[test]
fn sender_not_a_user_id() {
    assert!(matches!(
        parse(with("sender", json!("not-a-user"))),
        Err(PduParseError::Malformed { field: "sender" })
    ));
}

#[test]
fn prev_events_not_an_array() {
    assert!(matches!(
        parse(with("prev_events", json!("$p"))),
        Err(PduParseError::Malformed {
            field: "prev_events"
        })
    ));
    assert!(matches!(
        parse(without("prev_events")),
        Err(PduParseError::Missing {
            field: "prev_events"
        })
    ));
}

#[test]
fn bad_event_id_in_auth_events() {
    for bad in [json!(["not-an-event-id"]), json!(["$a1", 7])] {
        assert!(matches!(
            parse(with("auth_events", bad)),
            Err(PduParseError::Malformed {
                field: "auth_events"
            })
        ));
    }
}

#[test]
fn content_not_an_object() {
    for bad in [json!("text"), json!([1]), json!(3), json!(null)] {
        assert!(matches!(
            parse(with("content", bad)),
            Err(PduParseError::Malformed { field: "content" })
        ));
    }
}

#[test]
fn state_key_not_a_string() {
    assert!(matches!(
        parse(with("state_key", json!(5))),
        Err(PduParseError::Malformed { field: "state_key" })
    ));
}

#[test]
fn negative_or_non_integer_depth_and_ts() {
    assert!(matches!(
        parse(with("depth", json!(-1))),
        Err(PduParseError::Malformed { field: "depth" })
    ));
    assert!(matches!(
        parse(with("origin_server_ts", json!("1"))),
        Err(PduParseError::Malformed {
            field: "origin_server_ts"
        })
    ));
}

#[test]
fn bad_room_id() {
    assert!(matches!(
        parse(without("room_id")),
        Err(PduParseError::Room(_))
    ));
    assert!(matches!(
        parse(with("room_id", json!(1))),
        Err(PduParseError::Room(_))
    ));
}

/// Arbitrary JSON values, up to a few levels deep (no floats: canonical
/// JSON has none, so they could not reach `from_json`).
fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-(1i64 << 53) + 1..(1i64 << 53)).prop_map(Value::from),
        "[$!@a-z:.]{0,12}".prop_map(Value::from),
        // Reaches the v12 create path (room id from the event id).
        Just(Value::from("m.room.create")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: &[&str] = &[
    "room_id",
    "sender",
    "type",
    "state_key",
    "content",
    "origin_server_ts",
    "depth",
    "prev_events",
    "auth_events",
    "redacts",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary values in the fields it reads: a result, never a panic.
    #[test]
    fn arbitrary_fields_never_panic(
        fields in proptest::collection::vec(
            (proptest::sample::select(FIELDS), arb_value()), 0..8),
        drop in proptest::collection::vec(proptest::sample::select(FIELDS), 0..3),
        version in proptest::sample::select(&[RoomVersion::V10, RoomVersion::V11, RoomVersion::V12][..]),
    ) {
        let mut v = good();
        for (k, x) in fields {
            v[k] = x;
        }
        for k in drop {
            v.as_object_mut().map(|o| o.remove(k));
        }
        let id = OwnedEventId::try_from("$e").expect("valid id");
        let _ = Pdu::from_json(id, canonical(v), version);
    }

    /// Arbitrary objects: a result, never a panic.
    #[test]
    fn arbitrary_objects_never_panic(
        m in proptest::collection::btree_map("[a-z_]{1,16}", arb_value(), 0..10),
    ) {
        let v = Value::Object(m.into_iter().collect());
        let id = OwnedEventId::try_from("$e").expect("valid id");
        let _ = Pdu::from_json(id, canonical(v), RoomVersion::V11);
    }
}
