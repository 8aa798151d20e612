//! End-to-end: an `https://` pusher. A tiny TLS push gateway run by the
//! test (self-signed certificate made with rcgen, rustls server) receives
//! the `/notify` POST; with certificate checks on (the default) the same
//! gateway gets nothing. Real binary over real TCP, real PostgreSQL.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::{call, ok, register_user, Hearth, Opts, Registered};
use hearth::db::testing::TestCluster;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};

fn start(verify: bool) -> Hearth {
    let db = TestCluster::shared().fresh_database();
    Hearth::start(
        Opts::shards(2)
            .env("HEARTH_DATABASE__URL", &db.url())
            .env("HEARTH_PUSH__VERIFY_GATEWAY_TLS", &verify.to_string()),
    )
}

/// A TLS gateway on loopback answering every POST with `200 {}` and
/// handing the request bodies out.
fn tls_gateway() -> (String, mpsc::Receiver<Value>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("self-signed certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let cfg = Arc::new(cfg);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://{}/_matrix/push/v1/notify",
        listener.local_addr().unwrap()
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let Ok(conn) = rustls::ServerConnection::new(cfg.clone()) else {
                continue;
            };
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            // A client refusing the certificate fails the handshake here.
            let mut r = BufReader::new(&mut tls);
            let mut line = String::new();
            if r.read_line(&mut line).is_err() || line.is_empty() {
                continue;
            }
            assert!(
                line.starts_with("POST /_matrix/push/v1/notify HTTP/1.1"),
                "{line}"
            );
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            drop(r);
            tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                .unwrap();
            tls.flush().unwrap();
            tls.conn.send_close_notify();
            let _ = tls.flush();
            if tx.send(serde_json::from_slice(&body).unwrap()).is_err() {
                return;
            }
        }
    });
    (url, rx)
}

fn room_with_bob_pushing_to(h: &Hearth, url: &str) -> (Registered, String) {
    let alice = register_user(h, "alice");
    let bob = register_user(h, "bob");
    let room = ok(call(
        h,
        "POST",
        "/createRoom",
        &alice.token,
        Some(json!({"preset": "public_chat"})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(call(
        h,
        "POST",
        &format!("/join/{room}"),
        &bob.token,
        Some(json!({})),
    ));
    ok(call(
        h,
        "POST",
        "/pushers/set",
        &bob.token,
        Some(json!({
            "kind": "http", "app_id": "org.example.app", "pushkey": "tls-key",
            "app_display_name": "App", "device_display_name": "Phone", "lang": "en",
            "data": {"url": url},
        })),
    ));
    (alice, room)
}

fn send(h: &Hearth, u: &Registered, room: &str, txn: &str, body: &str) -> String {
    ok(call(
        h,
        "PUT",
        &format!("/rooms/{room}/send/m.room.message/{txn}"),
        &u.token,
        Some(json!({"msgtype": "m.text", "body": body})),
    ))["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn an_https_gateway_receives_the_notify_post() {
    let (url, bodies) = tls_gateway();
    let h = start(false);
    let (alice, room) = room_with_bob_pushing_to(&h, &url);
    let event = send(&h, &alice, &room, "1", "hello over tls");
    let got = bodies
        .recv_timeout(Duration::from_secs(15))
        .expect("a notification at the TLS gateway");
    let n = &got["notification"];
    assert_eq!(n["event_id"], event);
    assert_eq!(n["room_id"], room);
    assert_eq!(n["content"]["body"], "hello over tls");
    assert_eq!(n["devices"][0]["pushkey"], "tls-key");
    assert_eq!(n["counts"]["unread"], 1);
}

#[test]
fn an_untrusted_certificate_is_refused_by_default() {
    let (url, bodies) = tls_gateway();
    let h = start(true);
    let (alice, room) = room_with_bob_pushing_to(&h, &url);
    send(&h, &alice, &room, "1", "not for an unknown certificate");
    // The handshake fails (and is retried with backoff): nothing arrives.
    assert!(bodies.recv_timeout(Duration::from_secs(4)).is_err());
}
