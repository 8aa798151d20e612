//! Rate limits (client-server API "Rate limiting"; Synapse's `rc_*`) end to
//! end: the real binary with low limits switched on, real sockets, real
//! PostgreSQL. The bucket arithmetic has unit tests in `src/ratelimit/`.

mod common;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{assert_err, call, ok, read_response, register_user, Hearth, Opts, Resp, V3};
use hearth::db::testing::TestCluster;
use serde_json::json;

/// hearth with rate limits on (the harness switches them off) plus `env`.
fn limited(shards: usize, env: &[(&str, &str)]) -> Hearth {
    let db = TestCluster::shared().fresh_database();
    let mut o = Opts {
        shards,
        ..Opts::default()
    }
    .env("HEARTH_DATABASE__URL", &db.url())
    .env("HEARTH_RATE_LIMITS__ENABLED", "true");
    for (k, v) in env {
        o = o.env(k, v);
    }
    Hearth::start(o)
}

/// A JSON request from source address `from` (any 127.x.y.z works on
/// loopback), on a fresh connection.
fn request_from(
    from: &str,
    h: &Hearth,
    method: &str,
    path: &str,
    body: &serde_json::Value,
) -> Resp {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let ip: IpAddr = from.parse().unwrap();
    sock.bind(&SocketAddr::new(ip, 0).into()).unwrap();
    sock.connect(&h.addr.into()).unwrap();
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.to_string();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    read_response(&mut s, false)
}

fn login_from(from: &str, h: &Hearth, user: &str, pw: &str) -> Resp {
    let body = json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": pw,
    });
    request_from(from, h, "POST", &format!("{V3}/login"), &body)
}

/// The 429's `retry_after_ms`, after checking the whole shape.
#[track_caller]
fn limit_exceeded(r: &Resp) -> u64 {
    assert_err(r, 429, "M_LIMIT_EXCEEDED");
    let ms = r.json()["retry_after_ms"]
        .as_u64()
        .expect("retry_after_ms is an integer");
    assert!(ms > 0, "{ms}");
    let secs: u64 = r
        .header("Retry-After")
        .expect("Retry-After header")
        .parse()
        .unwrap();
    assert_eq!(secs, ms.div_ceil(1000).max(1));
    ms
}

fn send(h: &Hearth, token: &str, room: &str, txn: &str) -> Resp {
    call(
        h,
        "PUT",
        &format!("/rooms/{}/send/m.room.message/{txn}", common::enc(room)),
        token,
        Some(json!({"msgtype": "m.text", "body": txn})),
    )
}

#[test]
fn messages_are_limited_per_user_and_recover_after_the_wait() {
    // Message buckets are shard-local: one shard makes the count exact.
    let h = limited(
        1,
        &[
            ("HEARTH_RATE_LIMITS__MESSAGE__BURST_COUNT", "3"),
            ("HEARTH_RATE_LIMITS__MESSAGE__PER_SECOND", "2"),
        ],
    );
    let alice = register_user(&h, "alice");
    let bob = register_user(&h, "bob");
    let room = ok(call(
        &h,
        "POST",
        "/createRoom",
        &alice.token,
        Some(json!({})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..3 {
        ok(send(&h, &alice.token, &room, &format!("t{i}")));
    }
    let r = send(&h, &alice.token, &room, "t3");
    let wait = limit_exceeded(&r);
    assert!(wait <= 500, "one token at 2/s: {wait}");
    // Another user has their own bucket.
    let bob_room = ok(call(&h, "POST", "/createRoom", &bob.token, Some(json!({}))))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(send(&h, &bob.token, &bob_room, "b0"));
    // After the wait, alice may send again.
    std::thread::sleep(Duration::from_millis(wait + 50));
    ok(send(&h, &alice.token, &room, "t4"));
}

#[test]
fn registration_is_limited_per_ip() {
    let h = limited(
        2,
        &[
            ("HEARTH_RATE_LIMITS__REGISTRATION__BURST_COUNT", "2"),
            ("HEARTH_RATE_LIMITS__REGISTRATION__PER_SECOND", "0.01"),
        ],
    );
    // Each takes two requests (the UIA challenge, then the dummy stage):
    // only created accounts count.
    register_user(&h, "one");
    register_user(&h, "two");
    let body = json!({"username": "three", "password": "pw", "auth": {"type": "m.login.dummy"}});
    let r = request_from("127.0.0.1", &h, "POST", &format!("{V3}/register"), &body);
    let wait = limit_exceeded(&r);
    assert!(wait > 90_000, "1 / 0.01 per second: {wait}");
    // Another address has its own bucket (whatever shard it lands on).
    let r = request_from("127.0.0.2", &h, "POST", &format!("{V3}/register"), &body);
    assert!(
        r.status == 200 || r.status == 401,
        "registered or challenged, not limited: {}",
        String::from_utf8_lossy(&r.body)
    );
}

#[test]
fn failed_logins_lock_the_account_whatever_the_ip() {
    let h = limited(
        2,
        &[
            (
                "HEARTH_RATE_LIMITS__LOGIN__FAILED_ATTEMPTS__BURST_COUNT",
                "2",
            ),
            (
                "HEARTH_RATE_LIMITS__LOGIN__FAILED_ATTEMPTS__PER_SECOND",
                "0.5",
            ),
            ("HEARTH_RATE_LIMITS__LOGIN__ADDRESS__ENABLED", "false"),
        ],
    );
    register_user(&h, "victim");
    register_user(&h, "bystander");
    for _ in 0..2 {
        assert_err(
            &login_from("127.0.0.1", &h, "victim", "wrong"),
            403,
            "M_FORBIDDEN",
        );
    }
    // Locked: even the right password, even from another address.
    let wait = limit_exceeded(&login_from("127.0.0.3", &h, "victim", "pw"));
    assert!(wait <= 2000, "{wait}");
    limit_exceeded(&login_from("127.0.0.1", &h, "victim", "pw"));
    // Other accounts are not locked, from the same address.
    ok(login_from("127.0.0.1", &h, "bystander", "pw"));
    std::thread::sleep(Duration::from_millis(wait + 100));
    ok(login_from("127.0.0.3", &h, "victim", "pw"));
}

#[test]
fn logins_are_limited_per_ip() {
    let h = limited(
        2,
        &[
            ("HEARTH_RATE_LIMITS__LOGIN__ADDRESS__BURST_COUNT", "2"),
            ("HEARTH_RATE_LIMITS__LOGIN__ADDRESS__PER_SECOND", "0.01"),
        ],
    );
    register_user(&h, "carol");
    ok(login_from("127.0.0.1", &h, "carol", "pw"));
    ok(login_from("127.0.0.1", &h, "carol", "pw"));
    limit_exceeded(&login_from("127.0.0.1", &h, "carol", "pw"));
    ok(login_from("127.0.0.4", &h, "carol", "pw"));
}

#[test]
fn the_switches_turn_limits_off() {
    // One limiter off, the others on.
    let h = limited(
        2,
        &[
            ("HEARTH_RATE_LIMITS__MESSAGE__BURST_COUNT", "1"),
            ("HEARTH_RATE_LIMITS__MESSAGE__ENABLED", "false"),
            ("HEARTH_RATE_LIMITS__LOGIN__ADDRESS__BURST_COUNT", "1"),
        ],
    );
    let dave = register_user(&h, "dave");
    let room = ok(call(
        &h,
        "POST",
        "/createRoom",
        &dave.token,
        Some(json!({})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..15 {
        ok(send(&h, &dave.token, &room, &format!("d{i}")));
    }
    ok(login_from("127.0.0.1", &h, "dave", "pw"));
    limit_exceeded(&login_from("127.0.0.1", &h, "dave", "pw"));
    drop(h);

    // The one switch for all: what the test harness uses by default.
    let db = TestCluster::shared().fresh_database();
    let h = Hearth::start(
        Opts::shards(2)
            .env("HEARTH_DATABASE__URL", &db.url())
            .env("HEARTH_RATE_LIMITS__MESSAGE__BURST_COUNT", "1")
            .env(
                "HEARTH_RATE_LIMITS__LOGIN__FAILED_ATTEMPTS__BURST_COUNT",
                "1",
            ),
    );
    let erin = register_user(&h, "erin");
    let room = ok(call(
        &h,
        "POST",
        "/createRoom",
        &erin.token,
        Some(json!({})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..15 {
        ok(send(&h, &erin.token, &room, &format!("e{i}")));
    }
    for _ in 0..5 {
        assert_err(
            &login_from("127.0.0.1", &h, "erin", "wrong"),
            403,
            "M_FORBIDDEN",
        );
    }
    ok(login_from("127.0.0.1", &h, "erin", "pw"));
}

#[test]
fn bad_limits_stop_hearth_at_start() {
    let db = TestCluster::shared().fresh_database();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HEARTH_SERVER_NAME", "localhost")
        .env("HEARTH_DATABASE__URL", db.url())
        .env("HEARTH_LISTENERS__0__PORT", "0")
        .env("HEARTH_RATE_LIMITS__MESSAGE__PER_SECOND", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("rate_limits.message.per_second"),
        "the key is named: {text}"
    );
}
