//! Fuzz-style: a server that answers a query with arbitrary bytes. The
//! client must turn whatever arrives into an answer or an error — never a
//! panic, never a hang — over a real socket pair.

use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::UnixStream;
use proptest::prelude::*;

use hearth::db::{ConnectConfig, Connection};

/// AuthenticationOk, then ReadyForQuery(idle).
const STARTUP_OK: &[u8] = &[b'R', 0, 0, 0, 8, 0, 0, 0, 0, b'Z', 0, 0, 0, 5, b'I'];

fn frames(parts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, body) in parts {
        out.push(*tag);
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(body);
    }
    out
}

fn exchange(reply: Vec<u8>) {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let (client, mut server) = UnixStream::pair().expect("socket pair");
        monoio::spawn(async move {
            let (r, _) = server.read(vec![0u8; 4096]).await;
            if r.is_err() {
                return;
            }
            let _ = server.write_all(STARTUP_OK.to_vec()).await;
            let (r, _) = server.read(vec![0u8; 4096]).await;
            if r.is_err() {
                return;
            }
            let _ = server.write_all(reply).await;
            // Dropping the socket closes it: the client sees EOF.
        });
        let conn = Connection::connect_stream(client, &ConnectConfig::default())
            .await
            .expect("startup");
        let q = conn.query("SELECT $1::int8", &[&1i64]);
        let second = conn.execute("SELECT 2", &[]);
        let both = futures_util::future::join(q, second);
        let (a, b) = monoio::time::timeout(Duration::from_secs(10), both)
            .await
            .expect("a caller hung on garbage input");
        // Whatever happened, the rows we got are safe to read.
        if let Ok(rows) = a {
            for row in rows {
                let _ = row.get::<i64>(0);
                let _ = row.get::<String>(0);
            }
        }
        let _ = b;
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_reply_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        exchange(bytes);
    }

    #[test]
    fn framed_reply_messages(parts in proptest::collection::vec(
        (proptest::sample::select(b"123CDEIKnNSTtZ".to_vec()),
         proptest::collection::vec(any::<u8>(), 0..48)),
        0..12)) {
        exchange(frames(&parts));
    }
}
