//! Fault: a hostile federation peer, against the real binary over real
//! TLS sockets. Outbound (hearth's client, `federation::client`): a peer
//! that stalls before or inside its answer, resets, answers non-HTTP
//! bytes, invalid JSON, a short body, or an endless one (plain and
//! chunked) makes hearth's request fail in bounded time
//! (`federation.request_timeout_ms` / `connect_timeout_ms`) with the body
//! capped (`federation.max_response_bytes`); the transaction sender backs
//! off for that destination; and a normal client of hearth is answered
//! promptly throughout. Inbound (hearth's federation listener): a huge
//! `/send` body gets 413 before it is read, a trickled one or a trickled
//! head 408 at the deadline, a peer that never starts TLS is dropped.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fake_server::{hostile, FakeServer, Hostile};
use common::faults::{read_until_closed, rss_kib, timed, within};
use common::fed::{fed_call, sign_template, start_home_with, Home};
use common::{call, enc, ok, read_response, register_user, Registered};
use hearth::events::RoomVersion;
use serde_json::json;

/// hearth's federation timeouts in these tests (defaults: 60 s and 10 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// hearth's HTTP deadlines for inbound requests (defaults 10 s and 30 s).
const HEAD_TIMEOUT: Duration = Duration::from_secs(3);
const BODY_TIMEOUT: Duration = Duration::from_secs(3);
/// Slack on every "bounded time" check: scheduling on a loaded CI box.
const SLACK: Duration = Duration::from_secs(3);
/// What "promptly" means for a normal client's request.
const PROMPT: Duration = Duration::from_secs(2);
const MAX_RESPONSE: u64 = 50 * 1024 * 1024;

fn home() -> Home {
    start_home_with(&[
        ("HEARTH_FEDERATION__REQUEST_TIMEOUT_MS", "3000"),
        ("HEARTH_FEDERATION__CONNECT_TIMEOUT_MS", "2000"),
        ("HEARTH_FEDERATION__RETRY_MIN_MS", "500"),
        ("HEARTH_FEDERATION__RETRY_MAX_MS", "8000"),
        ("HEARTH_HTTP__HEADER_TIMEOUT_MS", "3000"),
        ("HEARTH_HTTP__BODY_TIMEOUT_MS", "3000"),
        ("HEARTH_LOG__ACCESS_LOG", "false"),
    ])
}

/// A normal client of hearth, asking `/versions` and `/sync` in a loop
/// until stopped; each must be answered within [`PROMPT`]. Returns the
/// worst latency seen when joined.
struct Probe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Duration>,
}

impl Probe {
    fn start(addr: SocketAddr, token: String) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            while !s.load(Ordering::SeqCst) {
                worst = worst.max(timed(addr, "/_matrix/client/versions", None, 200, PROMPT));
                worst = worst.max(timed(
                    addr,
                    "/_matrix/client/v3/sync?timeout=0",
                    Some(&token),
                    200,
                    PROMPT,
                ));
                std::thread::sleep(Duration::from_millis(20));
            }
            worst
        });
        Probe { stop, thread }
    }

    fn finish(self) -> Duration {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .expect("a normal request was not answered promptly")
    }
}

/// A TCP listener that accepts and then never says a word (not even TLS).
fn silent_peer() -> (u16, Arc<Mutex<Vec<TcpStream>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            h.lock().unwrap().push(c);
        }
    });
    (port, held)
}

/// Asks hearth for `user`'s profile; returns (status, time taken).
fn profile(home: &Home, alice: &Registered, user: &str) -> (u16, Duration) {
    let start = Instant::now();
    let r = call(
        &home.h,
        "GET",
        &format!("/profile/{}", enc(user)),
        &alice.token,
        None,
    );
    (r.status, start.elapsed())
}

#[test]
fn hostile_answers_fail_in_bounded_time_with_bodies_capped() {
    let home = home();
    let pid = home.h.pid();
    within(Duration::from_secs(240), &[pid], move || {
        let alice = register_user(&home.h, "alice");
        let probe = Probe::start(home.h.addr, alice.token.clone());
        let fake = FakeServer::start(21);
        let mode = Arc::new(Mutex::new(Hostile::Stall));
        {
            let mode = mode.clone();
            fake.handle(move |r| {
                let how = *mode.lock().unwrap();
                (r.path.contains("/query/profile") || r.path.contains("/user/keys/query"))
                    .then(|| hostile(how))
            });
        }
        let rss_before = rss_kib(pid);
        let modes = [
            (Hostile::Stall, REQUEST_TIMEOUT),
            (Hostile::StallBody, REQUEST_TIMEOUT),
            (Hostile::Reset, Duration::ZERO),
            (Hostile::Garbage, Duration::ZERO),
            (Hostile::BadJson, Duration::ZERO),
            (Hostile::ShortBody, Duration::ZERO),
            (Hostile::Endless, Duration::ZERO),
            (Hostile::EndlessChunked, Duration::ZERO),
        ];
        for (i, (how, expected)) in modes.into_iter().enumerate() {
            *mode.lock().unwrap() = how;
            fake.hostile_bytes.store(0, Ordering::SeqCst);
            let user = format!("@bob{i}:{}", fake.name);
            let (status, took) = profile(&home, &alice, &user);
            eprintln!("{how:?}: profile answered {status} in {took:?}");
            assert_eq!(status, 502, "{how:?}");
            assert!(took <= expected + SLACK, "{how:?} took {took:?}");
            if matches!(how, Hostile::Endless | Hostile::EndlessChunked) {
                let sent = fake.hostile_bytes.load(Ordering::SeqCst);
                // What hearth read, plus what the socket buffers held.
                assert!(
                    sent <= MAX_RESPONSE + 16 * 1024 * 1024,
                    "{how:?}: hearth took {sent} bytes"
                );
            }
            // The same through /keys/query: the server is a `failure`, in
            // bounded time, and the answer is still 200.
            let start = Instant::now();
            let v = ok(call(
                &home.h,
                "POST",
                "/keys/query",
                &alice.token,
                Some(json!({"device_keys": {user.clone(): []}, "timeout": 10_000})),
            ));
            let took = start.elapsed();
            assert!(v["failures"].get(&fake.name).is_some(), "{how:?}: {v}");
            assert!(
                took <= expected + SLACK,
                "{how:?}: keys/query took {took:?}"
            );
        }
        // Bodies were dropped, not kept: resident memory comes back near
        // where it was (four 50 MB reads happened). The allocator gives
        // freed pages back on a shard's next collection
        // (`shard::allocator`, every 2 s), so this waits for one.
        std::thread::sleep(Duration::from_secs(5));
        let rss_after = rss_kib(pid);
        eprintln!("hearth RSS {rss_before} KiB → {rss_after} KiB");
        assert!(
            rss_after < rss_before + 60 * 1024,
            "RSS grew {rss_before} → {rss_after} KiB"
        );

        // A peer that accepts TCP and never speaks TLS: the handshake
        // deadline.
        let (port, _held) = silent_peer();
        let (status, took) = profile(&home, &alice, &format!("@x:localhost:{port}"));
        assert_eq!(status, 502);
        assert!(took <= CONNECT_TIMEOUT + SLACK, "silent peer took {took:?}");

        let worst = probe.finish();
        eprintln!("worst normal request meanwhile: {worst:?}");
    });
}

/// The fake server joins a hearth room (make_join / send_join).
fn join_room(home: &Home, fake: &FakeServer, alice: &Registered) -> String {
    let room = ok(call(
        &home.h,
        "POST",
        "/createRoom",
        &alice.token,
        Some(json!({"preset": "public_chat", "room_version": "12"})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob = format!("@bob:{}", fake.name);
    let (status, made) = fed_call(
        home,
        fake,
        "GET",
        &format!(
            "/_matrix/federation/v1/make_join/{}/{}?ver=12",
            enc(&room),
            enc(&bob)
        ),
        None,
    );
    assert_eq!(status, 200, "{made}");
    let (id, ev) = sign_template(fake, &made["event"], RoomVersion::V12);
    let (status, answer) = fed_call(
        home,
        fake,
        "PUT",
        &format!(
            "/_matrix/federation/v2/send_join/{}/{}",
            enc(&room),
            enc(&id)
        ),
        Some(ev),
    );
    assert_eq!(status, 200, "{answer}");
    room
}

/// Transactions to a peer answering garbage are retried with growing
/// gaps (`retry_min_ms` doubling up to `retry_max_ms`), not in a loop;
/// and while its transactions stall, hearth still serves its clients.
#[test]
fn the_sender_backs_off_from_a_hostile_destination() {
    let home = home();
    let pid = home.h.pid();
    within(Duration::from_secs(180), &[pid], move || {
        let alice = register_user(&home.h, "alice");
        let fake = FakeServer::start(22);
        let attempts: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let mode: Arc<Mutex<Option<Hostile>>> = Arc::default();
        {
            let (attempts, mode) = (attempts.clone(), mode.clone());
            fake.handle(move |r| {
                if !r.path.starts_with("/_matrix/federation/v1/send/") {
                    return None;
                }
                match *mode.lock().unwrap() {
                    None => Some((200, json!({"pdus": {}}))),
                    Some(how) => {
                        attempts.lock().unwrap().push(Instant::now());
                        Some(hostile(how))
                    }
                }
            });
        }
        let room = join_room(&home, &fake, &alice);
        let probe = Probe::start(home.h.addr, alice.token.clone());
        *mode.lock().unwrap() = Some(Hostile::Garbage);
        let say = |n: u32| {
            ok(call(
                &home.h,
                "PUT",
                &format!("/rooms/{room}/send/m.room.message/t{n}"),
                &alice.token,
                Some(json!({"msgtype": "m.text", "body": format!("m{n}")})),
            ));
        };
        say(1);
        let window = Duration::from_secs(9);
        std::thread::sleep(window);
        let seen = attempts.lock().unwrap().clone();
        let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1] - w[0]).collect();
        eprintln!("{} attempts in {window:?}, gaps {gaps:?}", seen.len());
        // 500 ms doubling: attempts at about 0, 0.5, 1.5, 3.5, 7.5 s.
        assert!(seen.len() >= 3, "not retried: {}", seen.len());
        assert!(seen.len() <= 7, "no backoff: {} attempts", seen.len());
        let (first, last) = (gaps[0], gaps[gaps.len() - 1]);
        assert!(last >= first * 2, "gaps do not grow: {gaps:?}");

        // A destination whose transactions stall costs only its sender.
        *mode.lock().unwrap() = Some(Hostile::Stall);
        say(2);
        std::thread::sleep(REQUEST_TIMEOUT * 2);
        let worst = probe.finish();
        eprintln!("worst normal request meanwhile: {worst:?}");
    });
}

/// A TLS connection to hearth's federation listener.
fn tls_to(home: &Home) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let port: u16 = home.name.rsplit(':').next().unwrap().parse().unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    tcp.set_nodelay(true).unwrap();
    let cfg = hearth::federation::tls::client_config(false).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(cfg, name).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

fn send_head(len: usize) -> String {
    format!(
        "PUT /_matrix/federation/v1/send/t1 HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    )
}

#[test]
fn inbound_huge_or_trickled_transactions_get_413_or_408() {
    let home = home();
    let pid = home.h.pid();
    within(Duration::from_secs(180), &[pid], move || {
        let alice = register_user(&home.h, "alice");
        let probe = Probe::start(home.h.addr, alice.token.clone());
        let rss_before = rss_kib(pid);

        // Huge: refused from its Content-Length, before any of it is read,
        // and what the peer sends anyway is thrown away, not buffered.
        let mut s = tls_to(&home);
        s.write_all(send_head(1 << 30).as_bytes()).unwrap();
        s.flush().unwrap();
        let r = read_response(&mut s, false);
        assert_eq!(r.status, 413);
        assert_eq!(r.json()["errcode"], "M_TOO_LARGE");
        let junk = vec![b'x'; 1 << 20];
        for _ in 0..200 {
            if s.write_all(&junk).is_err() {
                break;
            }
        }
        drop(s);
        // Just over the limit, sent whole: 413 as well.
        let mut s = tls_to(&home);
        let len = 32 * 1024 * 1024 + 1;
        s.write_all(send_head(len).as_bytes()).unwrap();
        s.flush().unwrap();
        assert_eq!(read_response(&mut s, false).status, 413);
        drop(s);
        let rss_after = rss_kib(pid);
        eprintln!("hearth RSS {rss_before} KiB → {rss_after} KiB");
        assert!(
            rss_after < rss_before + 100 * 1024,
            "RSS grew {rss_before} → {rss_after} KiB"
        );

        // Trickled body: 408 at the body deadline.
        let mut s = tls_to(&home);
        s.write_all(send_head(1000).as_bytes()).unwrap();
        s.flush().unwrap();
        let start = Instant::now();
        let answer = trickle_until_answered(&mut s, b"{\"pdus\": [");
        let took = start.elapsed();
        assert!(
            answer.starts_with(b"HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
        assert!(took <= BODY_TIMEOUT + SLACK, "trickled body took {took:?}");

        // Trickled head: 408 at the head deadline.
        let mut s = tls_to(&home);
        let start = Instant::now();
        let answer = trickle_until_answered(&mut s, send_head(1000).as_bytes());
        let took = start.elapsed();
        assert!(
            answer.starts_with(b"HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
        assert!(took <= HEAD_TIMEOUT + SLACK, "trickled head took {took:?}");

        // No TLS at all: dropped at the handshake deadline.
        let port: u16 = home.name.rsplit(':').next().unwrap().parse().unwrap();
        let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let start = Instant::now();
        read_until_closed(&mut raw, HEAD_TIMEOUT + SLACK * 2);
        let took = start.elapsed();
        assert!(
            took <= HEAD_TIMEOUT + SLACK,
            "silent TLS client held {took:?}"
        );

        let worst = probe.finish();
        eprintln!("worst normal request meanwhile: {worst:?}");
    });
}

/// Sends `bytes` one at a time, 200 ms apart (then spaces), until hearth
/// answers or closes; returns what it answered.
fn trickle_until_answered(
    s: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    bytes: &[u8],
) -> Vec<u8> {
    s.sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        let b = bytes.get(i).copied().unwrap_or(b' ');
        i += 1;
        if s.write_all(&[b]).and_then(|_| s.flush()).is_err() {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    got
}
