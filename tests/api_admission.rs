//! Admission of expensive requests (`src/admission.rs`) end to end: the
//! real binary on one shard with tiny caps, real sockets, real PostgreSQL.
//! Past a full queue a client gets 503 `M_LIMIT_EXCEEDED` with a retry
//! hint and nothing stays stuck; a queued user waits its turn behind one
//! of another user's requests, not all of them. The gate's own logic has
//! unit tests in `src/primitives/fair_gate.rs`.

mod common;

use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use common::{assert_err, call, enc, ok, register, request_to, Hearth, Opts, Resp, V3};
use hearth::db::testing::TestCluster;
use serde_json::json;

/// One shard (the gates are per shard), admission caps from `env`.
fn capped(env: &[(&str, &str)]) -> Hearth {
    let db = TestCluster::shared().fresh_database();
    let mut o = Opts {
        shards: 1,
        ..Opts::default()
    }
    .env("HEARTH_DATABASE__URL", &db.url());
    for (k, v) in env {
        o = o.env(k, v);
    }
    Hearth::start(o)
}

/// A user in `rooms` rooms of `messages` messages each: an initial sync of
/// it takes long enough for concurrent ones to overlap.
fn busy_user(h: &Hearth, name: &str, rooms: usize, messages: usize) -> (String, Vec<String>) {
    let token = register(h, name);
    let mut ids = Vec::new();
    for r in 0..rooms {
        let room = ok(call(h, "POST", "/createRoom", &token, Some(json!({}))))["room_id"]
            .as_str()
            .unwrap()
            .to_owned();
        for m in 0..messages {
            ok(call(
                h,
                "PUT",
                &format!("/rooms/{}/send/m.room.message/t{r}-{m}", enc(&room)),
                &token,
                Some(json!({"msgtype": "m.text", "body": format!("message {m}")})),
            ));
        }
        ids.push(room);
    }
    (token, ids)
}

/// `n` concurrent GETs of `path` with `token`, released together.
fn burst(h: &Hearth, n: usize, path: &str, token: &str) -> Vec<Resp> {
    let barrier = Arc::new(Barrier::new(n));
    let addr = h.addr;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let barrier = barrier.clone();
                s.spawn(move || {
                    barrier.wait();
                    request_to(addr, "GET", path, Some(token), b"")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Every answer is a 200 or a well-formed 503; returns how many of each.
#[track_caller]
fn count_refused(rs: &[Resp]) -> (usize, usize) {
    let mut refused = 0;
    for r in rs {
        if r.status == 200 {
            continue;
        }
        assert_err(r, 503, "M_LIMIT_EXCEEDED");
        assert!(r.json()["retry_after_ms"].as_u64().unwrap() > 0);
        assert!(r.header("Retry-After").is_some());
        refused += 1;
    }
    (rs.len() - refused, refused)
}

#[test]
fn initial_syncs_past_a_full_queue_are_refused_with_a_retry_hint() {
    let h = capped(&[
        ("HEARTH_ADMISSION__INITIAL_SYNCS", "1"),
        ("HEARTH_ADMISSION__MAX_QUEUED", "1"),
    ]);
    let (token, _) = busy_user(&h, "alice", 8, 10);
    let path = format!("{V3}/sync?timeout=0");
    let rs = burst(&h, 24, &path, &token);
    let (served, refused) = count_refused(&rs);
    // At most one runs and one waits at any time: 24 at once cannot all fit.
    assert!(
        served >= 1 && refused >= 1,
        "{served} served, {refused} refused"
    );
    // Permits were released: the gate is free again.
    ok(call(&h, "GET", "/sync?timeout=0", &token, None));
    // Incremental syncs never go through the gate.
    let since = ok(call(&h, "GET", "/sync?timeout=0", &token, None))["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let rs = burst(
        &h,
        24,
        &format!("{V3}/sync?timeout=0&since={}", enc(&since)),
        &token,
    );
    assert_eq!(count_refused(&rs), (24, 0));
}

/// `hearth_admission_queued` of `gate` on shard 0, read from the metrics
/// listener: the gate's own count, so the test waits on what the server
/// has seen rather than on a sleep.
fn queued(metrics: std::net::SocketAddr, gate: &str) -> usize {
    let r = request_to(metrics, "GET", "/metrics", None, b"");
    let text = String::from_utf8_lossy(&r.body).into_owned();
    let want = format!("gate=\"{gate}\"");
    text.lines()
        .filter(|l| l.starts_with("hearth_admission_queued{") && l.contains(&want))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as usize)
        .sum()
}

fn wait_queued(metrics: std::net::SocketAddr, gate: &str, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while queued(metrics, gate) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "never saw {n} queued at {gate}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_user_waits_behind_one_of_anothers_initial_syncs_not_all() {
    let m = common::fed::free_port();
    let h = capped(&[
        ("HEARTH_ADMISSION__INITIAL_SYNCS", "1"),
        ("HEARTH_LISTENERS__1__ADDRESS", "127.0.0.1"),
        ("HEARTH_LISTENERS__1__PORT", &m.to_string()),
        ("HEARTH_LISTENERS__1__KIND", "metrics"),
    ]);
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{m}").parse().unwrap();
    // Long enough per sync that a metrics poll fits well inside one turn.
    let (greedy, _) = busy_user(&h, "greedy", 12, 10);
    let (polite, _) = busy_user(&h, "polite", 1, 1);
    let done = Arc::new(Mutex::new(Vec::new()));
    let addr = h.addr;
    let path = format!("{V3}/sync?timeout=0");
    let mut before = 0;
    std::thread::scope(|s| {
        for i in 0..10 {
            let (done, path, greedy) = (done.clone(), path.clone(), greedy.clone());
            s.spawn(move || {
                let r = request_to(addr, "GET", &path, Some(&greedy), b"");
                assert_eq!(r.status, 200);
                done.lock().unwrap().push(format!("greedy{i}"));
            });
        }
        // The greedy user's ten are in: at least eight still waiting (one
        // running, one may have finished while we looked).
        wait_queued(metrics, "initial_sync", 8);
        before = done.lock().unwrap().len();
        let (done, path) = (done.clone(), path.clone());
        s.spawn(move || {
            let r = request_to(addr, "GET", &path, Some(&polite), b"");
            assert_eq!(r.status, 200);
            done.lock().unwrap().push("polite".into());
        });
    });
    let order = done.lock().unwrap().clone();
    let at = order.iter().position(|n| n == "polite").unwrap();
    // Turns alternate between users: after the greedy syncs already done
    // when polite was sent come the one running, at most one more of
    // greedy's, and one of slack for polite's own way to the gate; in
    // arrival order it would come eleventh.
    assert!(
        at <= before + 3,
        "polite finished at {at} ({before} done when sent) of {order:?}"
    );
}

#[test]
fn large_pages_and_room_state_take_turns_small_pages_do_not() {
    let h = capped(&[
        ("HEARTH_ADMISSION__LARGE_MESSAGES", "1"),
        ("HEARTH_ADMISSION__ROOM_STATE", "1"),
        ("HEARTH_ADMISSION__MAX_QUEUED", "0"),
    ]);
    let (token, rooms) = busy_user(&h, "reader", 1, 150);
    let room = enc(&rooms[0]);
    let large = format!("{V3}/rooms/{room}/messages?dir=b&limit=1000");
    let (served, refused) = count_refused(&burst(&h, 16, &large, &token));
    assert!(
        served >= 1 && refused >= 1,
        "{served} served, {refused} refused"
    );
    // A page at or under `large_messages_limit` (100) never waits.
    let small = format!("{V3}/rooms/{room}/messages?dir=b&limit=100");
    assert_eq!(count_refused(&burst(&h, 16, &small, &token)), (16, 0));
    // `/members` and `/state` share the room-state gate; with no queue,
    // concurrent ones beyond the first may be refused, and each refusal is
    // well formed.
    for p in ["members", "state"] {
        let path = format!("{V3}/rooms/{room}/{p}");
        let (served, _) = count_refused(&burst(&h, 16, &path, &token));
        assert!(served >= 1);
    }
    // And nothing is held afterwards.
    let v = ok(call(
        &h,
        "GET",
        &format!("/rooms/{room}/messages?dir=b&limit=1000"),
        &token,
        None,
    ));
    assert!(v["chunk"].as_array().unwrap().len() > 100);
}

#[test]
fn switched_off_nothing_is_refused() {
    let h = capped(&[
        ("HEARTH_ADMISSION__ENABLED", "false"),
        ("HEARTH_ADMISSION__INITIAL_SYNCS", "1"),
        ("HEARTH_ADMISSION__MAX_QUEUED", "0"),
    ]);
    let (token, _) = busy_user(&h, "free", 4, 5);
    let rs = burst(&h, 16, &format!("{V3}/sync?timeout=0"), &token);
    assert_eq!(count_refused(&rs), (16, 0));
}
