//! Matrix identity and events: the server signing key, supported room
//! versions, building/signing/identifying/redacting PDUs, and parsing them
//! into [`Pdu`] for auth and state.
//!
//! Everything cryptographic (canonical JSON, sha256, ed25519) is ruma's; this
//! module holds hearth's rules around it.

pub mod old_keys;
pub mod parsed;
pub mod pdu;
pub mod room_version;
pub mod signing_key;

pub use parsed::{Pdu, PduParseError};
pub use pdu::{
    add_signature, build_pdu, check_size, content_hash_matches, create_event_content, event_id_of,
    hash_and_sign, redact, redact_because, room_id_from_event_id, room_id_of, verify_content_hash,
    verify_pdu, NewEvent, PduError, SignedPdu, MAX_PDU_BYTES,
};
pub use room_version::{IncompatibleRoomVersion, RoomVersion, UnsupportedRoomVersion};
pub use signing_key::{KeyError, ServerKey, DEFAULT_KEY_VALIDITY_MS};
