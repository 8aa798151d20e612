//! The HTTP/1.1 request parser: `parse_head` and the chunked body decoder,
//! fed arbitrary bytes in one piece and split in two at an arbitrary point.
//! Neither may panic, and the split must not change the outcome: the
//! connection loop hands them whatever a read returned.
#![no_main]

use bytes::BytesMut;
use hearth::http::parser::{parse_head, BodyFraming, ChunkedDecoder, Limits, ParseError};
use libfuzzer_sys::fuzz_target;

/// Small limits, so the fuzzer reaches the "too large" paths.
const LIMITS: Limits = Limits {
    max_header_bytes: 2048,
    max_body_bytes: 4096,
};

/// What parsing a head gave, comparable across feeds.
type HeadOutcome = Result<Option<(String, BodyFraming)>, ParseError>;

/// Parses the head of `data` fed as `data[..split]` then the rest; returns
/// the outcome and the bytes left in the buffer (the body).
fn head(data: &[u8], split: usize) -> (HeadOutcome, BytesMut) {
    let mut buf = BytesMut::from(&data[..split]);
    let mut out = parse_head(&mut buf, LIMITS);
    // The rest arrives by the next read, whether or not the head was
    // complete already (then it is the start of the body).
    buf.extend_from_slice(&data[split..]);
    if matches!(out, Ok(None)) && split < data.len() {
        out = parse_head(&mut buf, LIMITS);
    }
    (out.map(|h| h.map(|h| (format!("{h:?}"), h.framing))), buf)
}

/// Decodes a chunked body fed in two pieces; the outcome and the body.
fn chunked(data: &[u8], split: usize) -> (Result<bool, ParseError>, Vec<u8>, usize) {
    let mut dec = ChunkedDecoder::new(LIMITS);
    let mut buf = BytesMut::from(&data[..split]);
    let mut out = dec.decode(&mut buf);
    buf.extend_from_slice(&data[split..]);
    if matches!(out, Ok(false)) {
        out = dec.decode(&mut buf);
    }
    let left = buf.len();
    let body = match out {
        Ok(true) => dec.into_body().to_vec(),
        _ => Vec::new(),
    };
    (out, body, left)
}

fuzz_target!(|input: &[u8]| {
    let Some((&sel, data)) = input.split_first() else {
        return;
    };
    let split = if data.is_empty() {
        0
    } else {
        usize::from(sel) * data.len() / 255
    };
    let (whole, body) = head(data, data.len());
    let (parts, body2) = head(data, split);
    assert_eq!(whole, parts, "splitting the head changed the outcome");
    if whole.is_ok() {
        assert_eq!(body, body2, "splitting the head changed what is left");
    }

    // The chunked decoder over what follows a chunked head, or over the
    // raw input when there is none (it is fed bytes straight off the socket).
    let is_chunked = matches!(&whole, Ok(Some((_, BodyFraming::Chunked))));
    let body: &[u8] = if is_chunked { &body } else { data };
    let split = usize::from(sel) * body.len() / 255;
    let (a, body_a, left_a) = chunked(body, body.len());
    let (b, body_b, left_b) = chunked(body, split);
    assert_eq!(a, b, "splitting a chunked body changed the outcome");
    if a == Ok(true) {
        assert_eq!(body_a, body_b);
        assert_eq!(left_a, left_b);
        assert!(body_a.len() <= LIMITS.max_body_bytes);
    }
});
