//! Request bodies as canonical JSON: the path a client's event content
//! takes (`api::client::event_content`: size bound, JSON object, canonical
//! JSON). Any bytes give content or an error, never a panic; accepted
//! content written out canonically is a fixed point (it parses back to the
//! same content and is written the same way), which is what hashes and
//! signatures over it rely on.
#![no_main]

use hearth::api::client::event_content;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(content) = event_content(data) else {
        return;
    };
    // serde_json's compact output of a canonical object is the canonical
    // encoding (sorted keys, no insignificant whitespace).
    let canonical = serde_json::to_string(&content).expect("canonical JSON serialises");
    let again = event_content(canonical.as_bytes());
    // Re-encoding can grow the text (escapes); only a size refusal may differ.
    if canonical.len() <= 65_536 {
        let again = again.expect("canonical JSON parses back");
        assert_eq!(again, content, "canonical JSON did not round-trip");
        let twice = serde_json::to_string(&again).expect("canonical JSON serialises");
        assert_eq!(twice, canonical, "canonical encoding is not a fixed point");
    }
});
