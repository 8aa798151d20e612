//! Framing backend messages out of a read buffer.
//!
//! `postgres_protocol::Message::parse` trusts the length header and reserves
//! that much memory; we check the header first (known tag, sane length) so a
//! hostile or corrupt stream gives an error instead of a huge allocation, and
//! only hand complete frames to the parser.

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;

use super::error::DbError;

/// Largest backend message we accept. A single field can be up to 1 GiB in
/// PostgreSQL; hearth never stores anything near that, so a bound well
/// below protects the shard's memory from a corrupt length.
pub const MAX_MESSAGE_LEN: usize = 256 * 1024 * 1024;

/// How much buffer to reserve ahead while waiting for a large frame: grow
/// as bytes actually arrive rather than trusting the header up front.
const RESERVE_CHUNK: usize = 64 * 1024;

const KNOWN_TAGS: &[u8] = b"123AcCdDEGHIKnNRsStTZ";

/// Try to take one complete message from the front of `buf`.
///
/// `Ok(None)` means more bytes are needed. Any malformed input is an error;
/// this function must never panic, whatever the bytes (see the proptest).
pub fn decode(buf: &mut BytesMut) -> Result<Option<Message>, DbError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    if !KNOWN_TAGS.contains(&tag) {
        return Err(DbError::Protocol(format!(
            "unknown backend message tag {tag:#04x}"
        )));
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(DbError::Protocol(format!(
            "backend message length {len} < 4"
        )));
    }
    if len > MAX_MESSAGE_LEN {
        return Err(DbError::Protocol(format!(
            "backend message length {len} too large"
        )));
    }
    let total = len + 1;
    if buf.len() < total {
        buf.reserve((total - buf.len()).min(RESERVE_CHUNK));
        return Ok(None);
    }
    match Message::parse(buf) {
        Ok(Some(m)) => Ok(Some(m)),
        // Cannot happen with a complete frame, but never trust it.
        Ok(None) => Err(DbError::Protocol(
            "incomplete frame after length check".into(),
        )),
        // `parse` has already taken the frame off `buf`; the caller closes
        // the connection on a protocol error anyway.
        Err(e) => Err(DbError::protocol(format!("malformed backend message: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fallible_iterator::FallibleIterator;
    use proptest::prelude::*;

    #[test]
    fn partial_then_complete() {
        // ReadyForQuery 'I'
        let full = [b'Z', 0, 0, 0, 5, b'I'];
        let mut buf = BytesMut::from(&full[..3]);
        assert!(decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&full[3..]);
        match decode(&mut buf).unwrap() {
            Some(Message::ReadyForQuery(b)) => assert_eq!(b.status(), b'I'),
            _ => panic!("expected ReadyForQuery"),
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_garbage_and_huge_lengths() {
        let mut buf = BytesMut::from(&b"\xffxxxxxx"[..]);
        assert!(decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&[b'D', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&[b'Z', 0, 0, 0, 2][..]);
        assert!(decode(&mut buf).is_err());
        // Right tag, wrong body size.
        let mut buf = BytesMut::from(&[b'Z', 0, 0, 0, 6, b'I', b'I'][..]);
        assert!(decode(&mut buf).is_err());
    }

    /// Walk every lazily-parsed part of a message, like the reader does.
    fn exercise(m: Message) {
        match m {
            Message::DataRow(body) => {
                let mut r = body.ranges();
                while let Ok(Some(range)) = r.next() {
                    if let Some(range) = range {
                        let _ = body.buffer().get(range);
                    }
                }
            }
            Message::ErrorResponse(body) => {
                let _ = DbError::from_fields(body.fields());
            }
            Message::NoticeResponse(body) => {
                let _ = DbError::from_fields(body.fields());
            }
            Message::RowDescription(body) => {
                let mut f = body.fields();
                while let Ok(Some(field)) = f.next() {
                    let _ = (field.name(), field.type_oid(), field.format());
                }
            }
            Message::ParameterDescription(body) => {
                let mut p = body.parameters();
                while let Ok(Some(_)) = p.next() {}
            }
            Message::CommandComplete(body) => {
                let _ = body.tag().map(super::super::conn::rows_affected);
            }
            Message::ParameterStatus(body) => {
                let _ = (body.name(), body.value());
            }
            Message::AuthenticationSasl(body) => {
                let mut m = body.mechanisms();
                while let Ok(Some(_)) = m.next() {}
            }
            _ => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Arbitrary bytes: errors, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&data[..]);
            for _ in 0..1024 {
                match decode(&mut buf) {
                    Ok(Some(m)) => exercise(m),
                    Ok(None) | Err(_) => break,
                }
            }
        }

        /// Well-framed messages with a known tag and random bodies: this
        /// gets past the header check into the body parsers.
        #[test]
        fn framed_random_bodies_never_panic(
            frames in proptest::collection::vec(
                (proptest::sample::select(KNOWN_TAGS.to_vec()),
                 proptest::collection::vec(any::<u8>(), 0..64)),
                1..16)
        ) {
            let mut buf = BytesMut::new();
            for (tag, body) in &frames {
                buf.extend_from_slice(&[*tag]);
                buf.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
                buf.extend_from_slice(body);
            }
            // Every frame is complete and well-framed, so each decode
            // either yields a message or an error for that one frame.
            for _ in 0..frames.len() {
                match decode(&mut buf) {
                    Ok(Some(m)) => exercise(m),
                    Ok(None) => panic!("complete frame reported as partial"),
                    Err(_) => {}
                }
            }
            prop_assert!(buf.is_empty());
        }
    }
}
