//! Answers of other servers that hearth reads: key server responses
//! (`/key/v2/server`, and a notary's `server_keys` list), `make_join` and
//! `send_join` answers, PDU lists (transactions, backfill, `get_missing_events`,
//! `state`, auth chains), `m.device_list_update` EDUs and `/user/devices`
//! answers. Every reader runs on every input: a peer can answer anything,
//! and each must answer with an error or a value, never a panic.
#![no_main]

use hearth::events::RoomVersion;
use hearth::federation::device_lists::{parse_device_list_update, parse_user_devices};
use hearth::federation::ingest::parse_pdus;
use hearth::federation::join::{check_make_join, read_send_join};
use hearth::federation::keys::check_key_response;
use libfuzzer_sys::fuzz_target;
use ruma::canonical_json::CanonicalJsonObject;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::Value;

/// A fixed "now" (2024-01-01), so runs are reproducible.
const NOW_MS: u64 = 1_704_067_200_000;

fn keys(v: &Value) {
    let Ok(signed) = serde_json::from_value::<CanonicalJsonObject>(v.clone()) else {
        return;
    };
    if let Ok(k) = check_key_response(signed, "domain", NOW_MS) {
        // The spec's cap: never trusted for more than 7 days.
        assert!(k.valid_until_ts <= NOW_MS + 7 * 24 * 3600 * 1000);
        assert!(!k.verify_keys.is_empty());
    }
    // A notary's answer is a list of such objects.
    for s in v
        .get("server_keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Ok(s) = serde_json::from_value::<CanonicalJsonObject>(s.clone()) {
            let _ = check_key_response(s, "domain", NOW_MS);
        }
    }
}

fn joins(v: &Value) {
    let user: OwnedUserId = "@alice:hearth.example".try_into().unwrap();
    let room: OwnedRoomId = "!room:domain".try_into().unwrap();
    let _ = check_make_join(v, &user, &room);
    let join_id: OwnedEventId = "$join".try_into().unwrap();
    for version in RoomVersion::SUPPORTED {
        if let Ok(a) = read_send_join(
            v,
            version,
            &join_id,
            CanonicalJsonObject::new(),
            "domain",
            "hearth.example",
        ) {
            assert!(a.events.len() >= a.state_ids.len());
            if let Some(servers) = &a.partial {
                // The answering server first, never ourselves.
                assert_eq!(servers.first().map(String::as_str), Some("domain"));
                assert!(!servers.iter().any(|s| s == "hearth.example"));
            }
        }
    }
}

fn pdu_lists(v: &Value) {
    let lists = ["pdus", "auth_chain", "state", "events"]
        .iter()
        .filter_map(|k| v.get(k))
        .chain(std::iter::once(v))
        .filter_map(Value::as_array);
    for list in lists {
        for version in RoomVersion::UNDERSTOOD {
            let parsed = parse_pdus(list.clone(), version);
            assert!(parsed.len() <= list.len());
        }
    }
}

fn devices(v: &Value) {
    let _ = parse_device_list_update(v);
    if let Some(content) = v.get("content") {
        let _ = parse_device_list_update(content);
    }
    if let Value::Object(m) = v {
        let _ = parse_user_devices("@bob:domain", m.clone());
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    keys(&v);
    joins(&v);
    pdu_lists(&v);
    devices(&v);
});
