//! PDUs from other servers: arbitrary bytes parsed as JSON, turned into
//! canonical JSON as the transaction path does, then for each room version
//! hearth understands: size check, event id (reference hash), room id,
//! content hash, redaction, the typed parse (`Pdu::from_json`), and the
//! signature check against a fixed key. All of it must answer with an
//! error on bad input, never panic. Where hearth signs the event itself,
//! the result must check out.
#![no_main]

use hearth::events::pdu::{
    content_hash_matches, event_id_of, hash_and_sign, redact, room_id_of, verify_pdu,
};
use hearth::events::{check_size, Pdu, RoomVersion, ServerKey};
use libfuzzer_sys::fuzz_target;
use ruma::canonical_json::{try_from_json_map, CanonicalJsonObject};
use ruma::serde::Base64;
use ruma::signatures::{PublicKeyMap, PublicKeySet};
use ruma::OwnedEventId;
use std::sync::OnceLock;

/// The spec's test key (server `domain`, key id `ed25519:1`).
fn key() -> &'static (ServerKey, PublicKeyMap) {
    static KEY: OnceLock<(ServerKey, PublicKeyMap)> = OnceLock::new();
    KEY.get_or_init(|| {
        let seed = [7u8; 32];
        let key = ServerKey::from_seed("domain".try_into().unwrap(), "1", &seed).unwrap();
        let set = PublicKeySet::from([(
            key.key_id.to_string(),
            Base64::parse(key.public_key_base64()).unwrap(),
        )]);
        let map = PublicKeyMap::from([(key.server_name.to_string(), set)]);
        (key, map)
    })
}

fn check(pdu: &CanonicalJsonObject, version: RoomVersion) {
    let (key, keys) = key();
    let _ = check_size(pdu);
    let id = event_id_of(pdu, version);
    let _ = room_id_of(pdu, version);
    let _ = content_hash_matches(pdu);
    let _ = verify_pdu(pdu, version, keys);
    if let Ok(redacted) = redact(pdu, version) {
        // The event id is over the redacted event: redacting keeps it.
        if let Ok(id) = &id {
            assert_eq!(event_id_of(&redacted, version).ok().as_ref(), Some(id));
        }
        // Redaction is idempotent.
        assert_eq!(redact(&redacted, version).ok().as_ref(), Some(&redacted));
    }
    let event_id = id.unwrap_or_else(|_| OwnedEventId::try_from("$fuzz").unwrap());
    if let Ok(p) = Pdu::from_json(event_id, pdu.clone(), version) {
        let _ = p.client_format();
        let _ = p.membership();
    }
    // Signed by hearth, the event's content hash matches.
    let mut signed = pdu.clone();
    if hash_and_sign(&mut signed, version, key).is_ok() {
        assert_eq!(content_hash_matches(&signed).ok(), Some(true));
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(data) else {
        return;
    };
    let Ok(pdu) = try_from_json_map(map) else {
        return;
    };
    for version in RoomVersion::UNDERSTOOD {
        check(&pdu, version);
    }
});
