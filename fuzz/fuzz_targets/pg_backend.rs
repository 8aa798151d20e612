//! PostgreSQL backend messages: the framing (`db::codec::decode`) over an
//! arbitrary byte stream, looping until it wants more bytes or fails, and
//! every message decoded field by field as the connection's reader does
//! (`db::BackendInspector`). A server, a proxy or a corrupt stream may
//! send anything: the answer must be an error, never a panic or a huge
//! allocation.
#![no_main]

use bytes::BytesMut;
use hearth::db::codec::decode;
use hearth::db::BackendInspector;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut inspector = BackendInspector::default();
    // Each Ok(Some) consumes a whole frame (at least 5 bytes), so this ends.
    while let Ok(Some(msg)) = decode(&mut buf) {
        let _ = inspector.feed(msg);
    }
});
