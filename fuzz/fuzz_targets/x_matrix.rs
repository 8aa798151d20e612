//! The `Authorization: X-Matrix …` header of inbound federation requests:
//! any header value parses or is refused, never panics; what parses
//! survives being written out again and re-parsed; and checking its
//! signature over a request never panics either.
#![no_main]

use hearth::federation::x_matrix::{request_json, verify_signature, XMatrix};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = XMatrix::parse(data) else {
        return;
    };
    // What hearth writes for a parsed header reads back as the same header
    // (that is how outbound requests are signed).
    // (Escaping can push a value past the parser's length cap: not a bug.)
    let written = h.to_header();
    if written.len() <= 8 * 1024 {
        let again = XMatrix::parse(written.as_bytes());
        assert_eq!(again.as_ref(), Ok(&h), "header did not round-trip");
    }
    let obj = request_json(
        "GET",
        "/_matrix/federation/v1/version",
        &h.origin,
        h.destination.as_deref().unwrap_or("hearth.example"),
        None,
    );
    // Whatever the signature, checking it against a key that did not make
    // it says no (an all-zero key, and a key of the wrong length).
    assert!(!verify_signature(&obj, &[0u8; 32], &h.sig));
    assert!(!verify_signature(&obj, &[], &h.sig));
});
