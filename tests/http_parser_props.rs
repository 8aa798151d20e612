//! Property tests: the request parser and chunked decoder take arbitrary
//! bytes, in arbitrary read splits, and answer with a value or an error —
//! never a panic.

use bytes::BytesMut;
use hearth::http::parser::{parse_head, ChunkedDecoder, Limits};
use proptest::prelude::*;

const LIMITS: Limits = Limits {
    max_header_bytes: 2048,
    max_body_bytes: 4096,
};

/// Byte strings biased towards HTTP-looking input, so the fuzzing gets past
/// the request line often.
fn http_ish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"GET ".to_vec()),
        Just(b"POST /a/b?c=d HTTP/1.1\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"Content-Length: ".to_vec()),
        Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
        Just(b"Connection: close\r\n".to_vec()),
        Just(b"Expect: 100-continue\r\n".to_vec()),
        "[0-9a-fA-F]{1,20}".prop_map(|s| s.into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..16),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

fn feed_head(input: &[u8], split: usize) {
    let mut buf = BytesMut::new();
    for part in input.chunks(split.max(1)) {
        buf.extend_from_slice(part);
        match parse_head(&mut buf, LIMITS) {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn parse_head_never_panics(input in proptest::collection::vec(any::<u8>(), 0..4096), split in 1usize..64) {
        feed_head(&input, split);
    }

    #[test]
    fn parse_head_http_ish_never_panics(input in http_ish(), split in 1usize..64) {
        feed_head(&input, split);
    }

    #[test]
    fn chunked_never_panics(input in http_ish(), split in 1usize..64) {
        let mut dec = ChunkedDecoder::new(LIMITS);
        let mut buf = BytesMut::new();
        for part in input.chunks(split) {
            buf.extend_from_slice(part);
            match dec.decode(&mut buf) {
                Ok(true) | Err(_) => break,
                Ok(false) => {}
            }
        }
    }

    /// However a valid request is split across reads, it parses the same.
    #[test]
    fn split_reads_agree(split in 1usize..80, len in 0usize..200) {
        let body = "x".repeat(len);
        let req = format!("POST /r/%21x?y=1 HTTP/1.1\r\nHost: h\r\nContent-Length: {len}\r\n\r\n{body}");
        let mut buf = BytesMut::new();
        let mut parsed = None;
        for part in req.as_bytes().chunks(split) {
            buf.extend_from_slice(part);
            if parsed.is_none() {
                parsed = parse_head(&mut buf, LIMITS).unwrap();
            }
        }
        let head = parsed.expect("complete request");
        prop_assert_eq!(head.path, "/r/%21x");
        prop_assert_eq!(head.query.as_deref(), Some("y=1"));
        prop_assert_eq!(&buf[..], body.as_bytes());
    }

    /// Chunked encoding of any body decodes back to it.
    #[test]
    fn chunked_roundtrip(body in proptest::collection::vec(any::<u8>(), 0..3000), chunk in 1usize..500, split in 1usize..64) {
        let mut enc = Vec::new();
        for c in body.chunks(chunk) {
            enc.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            enc.extend_from_slice(c);
            enc.extend_from_slice(b"\r\n");
        }
        enc.extend_from_slice(b"0\r\nT: v\r\n\r\n");
        let mut dec = ChunkedDecoder::new(LIMITS);
        let mut buf = BytesMut::new();
        let mut done = false;
        for part in enc.chunks(split) {
            buf.extend_from_slice(part);
            if dec.decode(&mut buf).unwrap() {
                done = true;
            }
        }
        prop_assert!(done);
        prop_assert_eq!(&dec.into_body()[..], &body[..]);
    }
}
