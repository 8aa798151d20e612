//! End-to-end: push rules evaluated for new events — notification counts
//! in `/sync` (per room and per thread) and their reset by read receipts,
//! `/notifications`, delivery to a real HTTP push gateway run by the test
//! (retries, `event_id_only`, rejected pushkeys), a gateway that is down,
//! and pushers dying with their device. Real binary (2 shards, or 1 under
//! `HEARTH_TEST_SHARDS=1`) over real TCP, real PostgreSQL.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use common::{call, enc, json_request, ok, register_user, Hearth, Opts, Registered, V3};
use hearth::db::testing::TestCluster;
use serde_json::{json, Value};

fn start() -> Hearth {
    let db = TestCluster::shared().fresh_database();
    Hearth::start(Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url()))
}

fn create_room(h: &Hearth, u: &Registered) -> String {
    ok(call(
        h,
        "POST",
        "/createRoom",
        &u.token,
        Some(json!({"preset": "public_chat"})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn join(h: &Hearth, u: &Registered, room: &str) {
    ok(call(
        h,
        "POST",
        &format!("/join/{room}"),
        &u.token,
        Some(json!({})),
    ));
}

fn send(h: &Hearth, u: &Registered, room: &str, txn: &str, content: Value) -> String {
    ok(call(
        h,
        "PUT",
        &format!("/rooms/{room}/send/m.room.message/{txn}"),
        &u.token,
        Some(content),
    ))["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn text(body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body})
}

fn sync(h: &Hearth, u: &Registered, since: Option<&str>, filter: Option<Value>) -> Value {
    let mut q = String::from("timeout=0");
    if let Some(s) = since {
        q.push_str(&format!("&since={}", enc(s)));
    }
    if let Some(f) = filter {
        q.push_str(&format!("&filter={}", enc(&f.to_string())));
    }
    ok(call(h, "GET", &format!("/sync?{q}"), &u.token, None))
}

/// `(notification_count, highlight_count)` of a joined room in a sync.
fn counts(s: &Value, room: &str) -> (u64, u64) {
    let c = &s["rooms"]["join"][room]["unread_notifications"];
    (
        c["notification_count"].as_u64().expect("counts present"),
        c["highlight_count"].as_u64().expect("counts present"),
    )
}

fn receipt(h: &Hearth, u: &Registered, room: &str, kind: &str, event: &str, body: Value) {
    ok(call(
        h,
        "POST",
        &format!("/rooms/{room}/receipt/{kind}/{}", enc(event)),
        &u.token,
        Some(body),
    ));
}

fn pusher(h: &Hearth, u: &Registered, pushkey: &str, url: &str, format: Option<&str>) {
    let mut data = json!({"url": url});
    if let Some(f) = format {
        data["format"] = json!(f);
    }
    ok(call(
        h,
        "POST",
        "/pushers/set",
        &u.token,
        Some(json!({
            "kind": "http", "app_id": "org.example.app", "pushkey": pushkey,
            "app_display_name": "App", "device_display_name": "Phone", "lang": "en",
            "data": data,
        })),
    ));
}

fn pushkeys(h: &Hearth, u: &Registered) -> Vec<String> {
    ok(call(h, "GET", "/pushers", &u.token, None))["pushers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pushkey"].as_str().unwrap().to_owned())
        .collect()
}

/// A tiny real push gateway: answers each POST with the next of `answers`
/// (status, body), the last one repeated, and hands the request bodies out.
struct Gateway {
    url: String,
    bodies: mpsc::Receiver<Value>,
}

fn gateway(answers: Vec<(u16, &'static str)>) -> Gateway {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/_matrix/push/v1/notify",
        listener.local_addr().unwrap()
    );
    let (tx, bodies) = mpsc::channel();
    std::thread::spawn(move || {
        let mut n = 0;
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
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
            let (status, answer) = answers[n.min(answers.len() - 1)];
            n += 1;
            write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                answer.len()
            )
            .unwrap();
            conn.flush().unwrap();
            if tx.send(serde_json::from_slice(&body).unwrap()).is_err() {
                return;
            }
        }
    });
    Gateway { url, bodies }
}

impl Gateway {
    fn next(&self) -> Value {
        self.bodies
            .recv_timeout(Duration::from_secs(15))
            .expect("a notification at the gateway")
    }
}

#[test]
fn counts_move_with_messages_and_mentions_and_receipts_reset_them() {
    let h = start();
    let alice = register_user(&h, "alice");
    let bob = register_user(&h, "bob");
    let room = create_room(&h, &alice);
    join(&h, &bob, &room);
    let first = sync(&h, &bob, None, None);
    assert_eq!(counts(&first, &room), (0, 0));
    let since = first["next_batch"].as_str().unwrap().to_owned();

    // One to one (two members): a plain message notifies; a mention
    // highlights. Counts are there in the very first sync showing them.
    let e1 = send(&h, &alice, &room, "1", text("hello"));
    let s = sync(&h, &bob, Some(&since), None);
    assert_eq!(counts(&s, &room), (1, 0));
    let mut mention = text("hey bob");
    mention["m.mentions"] = json!({"user_ids": [bob.id]});
    let e2 = send(&h, &alice, &room, "2", mention);
    assert_eq!(counts(&sync(&h, &bob, None, None), &room), (2, 1));
    // The sender is never notified of their own events.
    assert_eq!(counts(&sync(&h, &alice, None, None), &room), (0, 0));

    // A receipt on the first: only the second is left.
    let before = sync(&h, &bob, None, None)["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    receipt(&h, &bob, &room, "m.read", &e1, json!({}));
    let s = sync(&h, &bob, Some(&before), None);
    assert_eq!(counts(&s, &room), (1, 1));
    // A private receipt on the second clears everything; an older public
    // receipt afterwards does not bring anything back.
    receipt(&h, &bob, &room, "m.read.private", &e2, json!({}));
    assert_eq!(counts(&sync(&h, &bob, None, None), &room), (0, 0));
    receipt(&h, &bob, &room, "m.read", &e1, json!({}));
    assert_eq!(counts(&sync(&h, &bob, None, None), &room), (0, 0));

    // Bob's own message does not count for him, but does for alice.
    send(&h, &bob, &room, "b1", text("hi alice"));
    assert_eq!(counts(&sync(&h, &bob, None, None), &room), (0, 0));
    assert_eq!(counts(&sync(&h, &alice, None, None), &room), (1, 0));

    // Threads: with `unread_thread_notifications` the thread's counts are
    // apart from the main timeline's, and a receipt in the main timeline
    // leaves the thread unread.
    let threaded = json!({"msgtype": "m.text", "body": "in thread",
        "m.relates_to": {"rel_type": "m.thread", "event_id": e1}});
    send(&h, &alice, &room, "t1", threaded);
    let e3 = send(&h, &alice, &room, "3", text("main again"));
    let f = json!({"room": {"timeline": {"unread_thread_notifications": true}}});
    let s = sync(&h, &bob, None, Some(f.clone()));
    let joined = &s["rooms"]["join"][&room];
    assert_eq!(counts(&s, &room), (1, 0));
    assert_eq!(
        joined["unread_thread_notifications"],
        json!({ &e1: {"notification_count": 1, "highlight_count": 0} })
    );
    // Without the filter flag: one total, no per-thread map.
    let s = sync(&h, &bob, None, None);
    assert_eq!(counts(&s, &room), (2, 0));
    assert!(s["rooms"]["join"][&room]
        .get("unread_thread_notifications")
        .is_none());
    receipt(&h, &bob, &room, "m.read", &e3, json!({"thread_id": "main"}));
    let s = sync(&h, &bob, None, Some(f));
    assert_eq!(counts(&s, &room), (0, 0));
    assert_eq!(
        s["rooms"]["join"][&room]["unread_thread_notifications"][&e1]["notification_count"],
        1
    );
    // The unthreaded receipt covers every thread.
    receipt(&h, &bob, &room, "m.read", &e3, json!({}));
    assert_eq!(counts(&sync(&h, &bob, None, None), &room), (0, 0));

    // A bigger room: `.m.rule.message` still notifies everyone else,
    // `@room` from a member without the power is no highlight, a notice
    // does not notify.
    let carol = register_user(&h, "carol");
    join(&h, &carol, &room);
    send(&h, &bob, &room, "b2", text("hi all"));
    send(
        &h,
        &bob,
        &room,
        "b3",
        json!({"msgtype": "m.text", "body": "@room", "m.mentions": {"room": true}}),
    );
    send(
        &h,
        &bob,
        &room,
        "b4",
        json!({"msgtype": "m.notice", "body": "bot"}),
    );
    assert_eq!(counts(&sync(&h, &carol, None, None), &room), (2, 0));
    // Alice (the creator, power 100) may notify the room: a highlight.
    send(
        &h,
        &alice,
        &room,
        "4",
        json!({"msgtype": "m.text", "body": "@room", "m.mentions": {"room": true}}),
    );
    assert_eq!(counts(&sync(&h, &carol, None, None), &room), (3, 1));
}

#[test]
fn notifications_list_actions_read_flags_and_pages() {
    let h = start();
    let alice = register_user(&h, "alice");
    let bob = register_user(&h, "bob");
    let room = create_room(&h, &alice);
    join(&h, &bob, &room);
    let e1 = send(&h, &alice, &room, "1", text("one"));
    let mut mention = text("two");
    mention["m.mentions"] = json!({"user_ids": [bob.id]});
    let e2 = send(&h, &alice, &room, "2", mention);
    let e3 = send(&h, &alice, &room, "3", text("three"));
    receipt(&h, &bob, &room, "m.read", &e1, json!({}));

    let all = ok(call(&h, "GET", "/notifications", &bob.token, None));
    let list = all["notifications"].as_array().unwrap();
    let ids: Vec<&str> = list
        .iter()
        .map(|n| n["event"]["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [e3.as_str(), e2.as_str(), e1.as_str()]);
    let read: Vec<bool> = list.iter().map(|n| n["read"].as_bool().unwrap()).collect();
    assert_eq!(read, [false, false, true]);
    for n in list {
        assert_eq!(n["room_id"], room);
        assert!(n["ts"].as_u64().unwrap() > 0);
        assert!(n["actions"].as_array().unwrap().contains(&json!("notify")));
        assert_eq!(n["event"]["sender"], alice.id);
        assert!(n["event"].get("room_id").is_none());
    }
    assert_eq!(list[0]["event"]["content"]["body"], "three");
    assert!(list[1]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["set_tweak"] == "highlight"));
    assert!(all.get("next_token").is_none());

    let hl = ok(call(
        &h,
        "GET",
        "/notifications?only=highlight",
        &bob.token,
        None,
    ));
    let hl = hl["notifications"].as_array().unwrap();
    assert_eq!(hl.len(), 1);
    assert_eq!(hl[0]["event"]["event_id"], e2);

    // Pages of one.
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let q = match &from {
            Some(f) => format!("/notifications?limit=1&from={f}"),
            None => "/notifications?limit=1".to_owned(),
        };
        let page = ok(call(&h, "GET", &q, &bob.token, None));
        for n in page["notifications"].as_array().unwrap() {
            seen.push(n["event"]["event_id"].as_str().unwrap().to_owned());
        }
        match page["next_token"].as_str() {
            Some(t) => from = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, [e3, e2, e1]);
    // Alice was notified of nothing; a bad token is refused.
    let none = ok(call(&h, "GET", "/notifications", &alice.token, None));
    assert_eq!(none["notifications"], json!([]));
    let r = call(&h, "GET", "/notifications?from=nope", &bob.token, None);
    common::assert_err(&r, 400, "M_INVALID_PARAM");
}

#[test]
fn pushers_receive_notify_posts_retried_and_rejected() {
    let h = start();
    let alice = register_user(&h, "alice");
    let bob = register_user(&h, "bob");
    let room = create_room(&h, &alice);
    join(&h, &bob, &room);
    ok(call(
        &h,
        "PUT",
        &format!("/rooms/{room}/state/m.room.name"),
        &alice.token,
        Some(json!({"name": "Tea"})),
    ));

    // The gateway fails once (503), then accepts: the push is retried.
    let gw = gateway(vec![(503, "{}"), (200, "{}")]);
    pusher(&h, &bob, "full-key", &gw.url, None);
    let e1 = send(&h, &alice, &room, "1", text("hello bob"));
    let first = gw.next();
    let again = gw.next();
    assert_eq!(first, again);
    let n = &again["notification"];
    assert_eq!(n["event_id"], e1);
    assert_eq!(n["room_id"], room);
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["sender"], alice.id);
    assert_eq!(n["content"]["body"], "hello bob");
    assert_eq!(n["room_name"], "Tea");
    assert_eq!(n["counts"]["unread"], 1);
    assert_eq!(n["prio"], "high"); // one to one: a sound
    let d = &n["devices"][0];
    assert_eq!(d["app_id"], "org.example.app");
    assert_eq!(d["pushkey"], "full-key");
    assert!(d["pushkey_ts"].as_i64().unwrap() > 0);
    assert_eq!(d["tweaks"]["sound"], "default");
    assert!(d["data"].get("url").is_none());

    // `event_id_only`: no content leaves the server.
    let gw2 = gateway(vec![(200, "{}")]);
    ok(call(
        &h,
        "POST",
        "/pushers/set",
        &bob.token,
        Some(json!({"kind": null, "app_id": "org.example.app", "pushkey": "full-key"})),
    ));
    pusher(&h, &bob, "lean-key", &gw2.url, Some("event_id_only"));
    let e2 = send(&h, &alice, &room, "2", text("secret"));
    let n = gw2.next()["notification"].clone();
    assert_eq!(n["event_id"], e2);
    assert_eq!(n["counts"]["unread"], 2);
    assert!(n.get("content").is_none() && n.get("sender").is_none());
    assert_eq!(n["devices"][0]["data"], json!({"format": "event_id_only"}));

    // A gateway rejecting the pushkey removes the pusher.
    let gw3 = gateway(vec![(200, r#"{"rejected": ["gone-key"]}"#)]);
    pusher(&h, &bob, "gone-key", &gw3.url, None);
    assert!(pushkeys(&h, &bob).contains(&"gone-key".to_owned()));
    send(&h, &alice, &room, "3", text("are you there"));
    gw3.next();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pushkeys(&h, &bob).contains(&"gone-key".to_owned()) {
        assert!(std::time::Instant::now() < deadline, "rejected pusher kept");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// hearth skips the pusher lookup while the server has no HTTP pusher
/// (`push::gateway::HttpPushers`): a pusher set after messages already
/// notified without one, and one found in the table after a restart, must
/// still get their pushes.
#[test]
fn pushers_set_after_pushless_messages_and_after_a_restart_get_pushes() {
    let db = TestCluster::shared().fresh_database();
    let opts = || Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url());
    let h = Hearth::start(opts());
    let alice = register_user(&h, "alice");
    let bob = register_user(&h, "bob");
    let room = create_room(&h, &alice);
    join(&h, &bob, &room);
    for i in 0..3 {
        send(
            &h,
            &alice,
            &room,
            &format!("before{i}"),
            text("nobody pushed"),
        );
    }
    let gw = gateway(vec![(200, "{}"), (200, "{}")]);
    pusher(&h, &bob, "late-key", &gw.url, None);
    let e = send(&h, &alice, &room, "after", text("now pushed"));
    assert_eq!(gw.next()["notification"]["event_id"], e);
    drop(h);

    let h = Hearth::start(opts());
    let e = send(&h, &alice, &room, "restarted", text("pushed after restart"));
    assert_eq!(gw.next()["notification"]["event_id"], e);
}

#[test]
fn a_gateway_that_is_down_hurts_nothing() {
    let h = start();
    let alice = register_user(&h, "alice");
    let bob = register_user(&h, "bob");
    let room = create_room(&h, &alice);
    join(&h, &bob, &room);
    // A port with nobody listening, and an https URL (unsupported yet).
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/_matrix/push/v1/notify", l.local_addr().unwrap())
    };
    pusher(&h, &bob, "dead", &dead, None);
    pusher(
        &h,
        &bob,
        "tls",
        "https://push.example.invalid/_matrix/push/v1/notify",
        None,
    );
    for i in 0..20 {
        send(&h, &alice, &room, &format!("t{i}"), text("ping"));
    }
    assert_eq!(counts(&sync(&h, &bob, None, None), &room), (20, 0));
    // A working gateway beside the dead one still gets its pushes.
    let gw = gateway(vec![(200, "{}")]);
    pusher(&h, &bob, "alive", &gw.url, None);
    let e = send(&h, &alice, &room, "last", text("still here"));
    assert_eq!(gw.next()["notification"]["event_id"], e);
    assert_eq!(pushkeys(&h, &bob).len(), 3);
}

#[test]
fn pushers_die_with_their_device() {
    let h = start();
    let bob = register_user(&h, "bob");
    let login = |h: &Hearth| -> Registered {
        let v = ok(json_request(
            h,
            "POST",
            &format!("{V3}/login"),
            None,
            Some(&json!({"type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "bob"}, "password": "pw"})),
        ));
        Registered {
            token: v["access_token"].as_str().unwrap().to_owned(),
            id: v["user_id"].as_str().unwrap().to_owned(),
            device: v["device_id"].as_str().unwrap().to_owned(),
        }
    };
    let phone = login(&h);
    let tablet = login(&h);
    pusher(
        &h,
        &phone,
        "phone-key",
        "http://127.0.0.1:9/_matrix/push/v1/notify",
        None,
    );
    pusher(
        &h,
        &tablet,
        "tablet-key",
        "http://127.0.0.1:9/_matrix/push/v1/notify",
        None,
    );
    pusher(
        &h,
        &bob,
        "main-key",
        "http://127.0.0.1:9/_matrix/push/v1/notify",
        None,
    );
    assert_eq!(pushkeys(&h, &bob).len(), 3);
    // Logging out removes the device's pusher.
    ok(call(&h, "POST", "/logout", &phone.token, Some(json!({}))));
    let mut keys = pushkeys(&h, &bob);
    keys.sort();
    assert_eq!(keys, ["main-key", "tablet-key"]);
    // Deleting a device (behind UIA) too.
    let path = format!("/devices/{}", tablet.device);
    let r = call(&h, "DELETE", &path, &bob.token, Some(json!({})));
    assert_eq!(r.status, 401);
    let session = r.json()["session"].as_str().unwrap().to_owned();
    ok(call(
        &h,
        "DELETE",
        &path,
        &bob.token,
        Some(
            json!({"auth": {"type": "m.login.password", "session": session,
            "identifier": {"type": "m.id.user", "user": "bob"}, "password": "pw"}}),
        ),
    ));
    assert_eq!(pushkeys(&h, &bob), ["main-key"]);
}

/// Members notified alike share one `push_actions` row (migration 33):
/// each still gets their own counts, read flags and pages, also when the
/// counts are read from the table (after a restart, the per-shard memory
/// is empty).
#[test]
fn members_sharing_an_action_set_keep_their_own_counts_after_a_restart() {
    let db = TestCluster::shared().fresh_database();
    let opts = || Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url());
    let h = Hearth::start(opts());
    let alice = register_user(&h, "alice");
    let bob = register_user(&h, "bob");
    let carol = register_user(&h, "carol");
    let room = create_room(&h, &alice);
    join(&h, &bob, &room);
    join(&h, &carol, &room);
    let e1 = send(&h, &alice, &room, "1", text("one"));
    let mut mention = text("two");
    mention["m.mentions"] = json!({"user_ids": [carol.id]});
    let e2 = send(&h, &alice, &room, "2", mention);
    let e3 = send(&h, &alice, &room, "3", text("three"));
    receipt(&h, &bob, &room, "m.read", &e1, json!({}));
    let listed = |h: &Hearth, u: &Registered| -> Vec<(String, bool)> {
        ok(call(h, "GET", "/notifications", &u.token, None))["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["event"]["event_id"].as_str().unwrap().to_owned(),
                    n["read"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let check = |h: &Hearth| {
        assert_eq!(counts(&sync(h, &bob, None, None), &room), (2, 0));
        assert_eq!(counts(&sync(h, &carol, None, None), &room), (3, 1));
        assert_eq!(counts(&sync(h, &alice, None, None), &room), (0, 0));
        assert_eq!(
            listed(h, &bob),
            [(e3.clone(), false), (e2.clone(), false), (e1.clone(), true)]
        );
        assert_eq!(
            listed(h, &carol),
            [
                (e3.clone(), false),
                (e2.clone(), false),
                (e1.clone(), false)
            ]
        );
        assert!(listed(h, &alice).is_empty());
    };
    check(&h);
    drop(h);
    let h = Hearth::start(opts());
    check(&h);
    receipt(&h, &carol, &room, "m.read", &e2, json!({}));
    assert_eq!(counts(&sync(&h, &carol, None, None), &room), (1, 0));
    assert_eq!(counts(&sync(&h, &bob, None, None), &room), (2, 0));
}
