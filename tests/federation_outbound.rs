//! End-to-end: hearth's outbound federation. A federation server of the
//! tests' own (`common::fake_server`, its own key) joins a hearth room
//! (make_join / send_join) and records the transactions hearth sends it:
//! local events, typing, receipts and to-device EDUs arrive; while it is
//! down hearth backs off and then catches up with the newest event per
//! room; events committed before a kill -9 are delivered after the
//! restart; a local user's invite of the fake server's user is co-signed
//! there first (invite v2).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fake_server::FakeServer;
use common::fed::{eventually, fed_call, membership, sign_template, start_home_with, Home};
use common::{call, enc, ok, register_user, Hearth, Registered};
use hearth::events::RoomVersion;
use serde_json::{json, Value};

const V12: RoomVersion = RoomVersion::V12;
const FAST_RETRY: [(&str, &str); 2] = [
    ("HEARTH_FEDERATION__RETRY_MIN_MS", "200"),
    ("HEARTH_FEDERATION__RETRY_MAX_MS", "1000"),
];

static TXN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct World {
    home: Home,
    fake: FakeServer,
    alice: Registered,
    room: String,
    bob: String,
    /// Whether the fake server answers `/send` (else 500).
    up: Arc<Mutex<bool>>,
}

/// Every transaction body the fake server received (answered or not).
fn transactions(fake: &FakeServer) -> Vec<Value> {
    fake.requests("/_matrix/federation/v1/send/")
        .into_iter()
        .map(|r| r.body)
        .collect()
}

fn pdu_ids(fake: &FakeServer) -> Vec<String> {
    transactions(fake)
        .iter()
        .flat_map(|t| t["pdus"].as_array().cloned().unwrap_or_default())
        .map(|p| {
            let Value::Object(m) = p else { panic!() };
            let obj = ruma::canonical_json::try_from_json_map(m).unwrap();
            hearth::events::event_id_of(&obj, V12).unwrap().to_string()
        })
        .collect()
}

fn edus(fake: &FakeServer, kind: &str) -> Vec<Value> {
    transactions(fake)
        .iter()
        .flat_map(|t| t["edus"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["edu_type"] == kind)
        .collect()
}

fn world() -> World {
    let home = start_home_with(&FAST_RETRY);
    let fake = FakeServer::start(11);
    let up = Arc::new(Mutex::new(true));
    {
        let up = up.clone();
        let key = fake.key.clone();
        fake.handle(move |r| {
            if r.path.starts_with("/_matrix/federation/v1/send/") {
                return Some(if *up.lock().unwrap() {
                    (200, json!({"pdus": {}}))
                } else {
                    (500, json!({"errcode": "M_UNKNOWN", "error": "down"}))
                });
            }
            if r.path.starts_with("/_matrix/federation/v2/invite/") {
                let Value::Object(m) = r.body["event"].clone() else {
                    return Some((400, json!({})));
                };
                let mut ev = ruma::canonical_json::try_from_json_map(m).unwrap();
                hearth::events::add_signature(&mut ev, V12, &key).unwrap();
                return Some((200, json!({ "event": ev })));
            }
            None
        });
    }
    let alice = register_user(&home.h, "alice");
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
        &home,
        &fake,
        "GET",
        &format!(
            "/_matrix/federation/v1/make_join/{}/{}?ver=12",
            enc(&room),
            enc(&bob)
        ),
        None,
    );
    assert_eq!(status, 200, "{made}");
    let (id, ev) = sign_template(&fake, &made["event"], V12);
    let (status, answer) = fed_call(
        &home,
        &fake,
        "PUT",
        &format!(
            "/_matrix/federation/v2/send_join/{}/{}",
            enc(&room),
            enc(&id)
        ),
        Some(ev),
    );
    assert_eq!(status, 200, "{answer}");
    World {
        home,
        fake,
        alice,
        room,
        bob,
        up,
    }
}

impl World {
    fn say(&self, body: &str) -> String {
        let v = ok(call(
            &self.home.h,
            "PUT",
            &format!(
                "/rooms/{}/send/m.room.message/{}",
                self.room,
                TXN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            &self.alice.token,
            Some(json!({"msgtype": "m.text", "body": body})),
        ));
        v["event_id"].as_str().unwrap().to_owned()
    }
}

#[test]
fn local_events_and_edus_reach_the_rooms_servers() {
    let w = world();
    let m1 = w.say("hello, remote");
    eventually("the message is delivered", || {
        pdu_ids(&w.fake).contains(&m1)
    });
    let tx = &transactions(&w.fake)[0];
    assert_eq!(tx["origin"], w.home.name);

    ok(call(
        &w.home.h,
        "PUT",
        &format!("/rooms/{}/typing/{}", w.room, enc(&w.alice.id)),
        &w.alice.token,
        Some(json!({"typing": true, "timeout": 10000})),
    ));
    eventually("typing EDU", || !edus(&w.fake, "m.typing").is_empty());
    let t = &edus(&w.fake, "m.typing")[0];
    assert_eq!(t["content"]["user_id"], w.alice.id);
    assert_eq!(t["content"]["typing"], true);

    ok(call(
        &w.home.h,
        "POST",
        &format!("/rooms/{}/receipt/m.read/{}", w.room, enc(&m1)),
        &w.alice.token,
        Some(json!({})),
    ));
    eventually("receipt EDU", || !edus(&w.fake, "m.receipt").is_empty());
    let r = &edus(&w.fake, "m.receipt")[0];
    assert_eq!(
        r["content"][&w.room]["m.read"][&w.alice.id]["event_ids"],
        json!([m1])
    );

    ok(call(
        &w.home.h,
        "PUT",
        "/sendToDevice/m.test/txn-1",
        &w.alice.token,
        Some(json!({"messages": {w.bob.clone(): {"*": {"hi": 1}}}})),
    ));
    eventually("to-device EDU", || {
        !edus(&w.fake, "m.direct_to_device").is_empty()
    });
    let d = &edus(&w.fake, "m.direct_to_device")[0];
    assert_eq!(d["content"]["sender"], w.alice.id);
    assert_eq!(d["content"]["message_id"], "txn-1");
    assert_eq!(d["content"]["messages"][&w.bob]["*"]["hi"], 1);

    ok(call(
        &w.home.h,
        "PUT",
        &format!("/presence/{}/status", enc(&w.alice.id)),
        &w.alice.token,
        Some(json!({"presence": "unavailable", "status_msg": "away"})),
    ));
    eventually("presence EDU", || {
        edus(&w.fake, "m.presence")
            .iter()
            .any(|e| e["content"]["push"][0]["presence"] == "unavailable")
    });
    let p = edus(&w.fake, "m.presence");
    let p = p.last().unwrap();
    assert_eq!(p["content"]["push"][0]["user_id"], w.alice.id);
    assert_eq!(p["content"]["push"][0]["status_msg"], "away");

    // Inviting the fake server's user: co-signed there first (invite v2),
    // then the invite is in the room and sent out.
    let carol = format!("@carol:{}", w.fake.name);
    ok(call(
        &w.home.h,
        "POST",
        &format!("/rooms/{}/invite", w.room),
        &w.alice.token,
        Some(json!({"user_id": carol})),
    ));
    let invites = w.fake.requests("/_matrix/federation/v2/invite/");
    assert_eq!(invites.len(), 1);
    assert_eq!(invites[0].body["room_version"], "12");
    assert_eq!(invites[0].body["event"]["state_key"], carol);
    assert_eq!(
        membership(&w.home, &w.alice, &w.room, &carol).as_deref(),
        Some("invite")
    );
}

#[test]
fn an_unreachable_server_is_retried_and_caught_up() {
    let w = world();
    let first = w.say("first");
    eventually("first delivered", || pdu_ids(&w.fake).contains(&first));
    *w.up.lock().unwrap() = false;
    let down: Vec<String> = (0..3).map(|i| w.say(&format!("while down {i}"))).collect();
    eventually("hearth retried", || transactions(&w.fake).len() >= 3);
    *w.up.lock().unwrap() = true;
    let newest = down.last().unwrap().clone();
    let before = transactions(&w.fake).len();
    eventually("caught up", || {
        let t = transactions(&w.fake);
        t.len() > before && pdu_ids(&w.fake).contains(&newest)
    });
    // Catch-up sent the newest event of the room, not the whole backlog
    // (the first failed transaction may have carried the older ones).
    std::thread::sleep(Duration::from_millis(1500));
    let after: Vec<Value> = transactions(&w.fake).split_off(before);
    let ids_after: Vec<String> = after
        .iter()
        .flat_map(|t| t["pdus"].as_array().cloned().unwrap_or_default())
        .map(|p| p["content"]["body"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        !ids_after.contains(&"while down 0".to_owned()),
        "{ids_after:?}"
    );
}

#[test]
fn queued_events_survive_a_kill() {
    let mut w = world();
    *w.up.lock().unwrap() = false;
    let m = w.say("sent before the crash");
    eventually("hearth tried", || !transactions(&w.fake).is_empty());
    w.home.h.signal(libc::SIGKILL);
    w.home.h.wait_exit(Duration::from_secs(30));
    *w.up.lock().unwrap() = true;
    let dir = std::mem::replace(&mut w.home.h.data_dir, tempfile::tempdir().unwrap());
    w.home.h = Hearth::start_in(w.home.opts.clone(), dir);
    eventually("delivered after the restart", || {
        pdu_ids(&w.fake).contains(&m)
    });
}
