//! End-to-end: inbound transactions (`PUT /_matrix/federation/v1/send`).
//! A real hearth (TLS federation listener on loopback) and a federation
//! server of the tests' own (`common::fake_server`: its own key, served
//! over TLS; it answers hearth's `/event_auth`, `/get_missing_events`,
//! `/state_ids` and `/event` as each test says). The fake server's users
//! join a hearth room and talk through `/send`; checked over the client
//! API: the answer per PDU, idempotence, EDUs, refusals, missing events
//! fetched, and staged PDUs surviving a kill -9.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fake_server::FakeServer;
use common::fed::{
    client_of, event_visible, eventually, id_of, latest, membership, now, pdu, runtime, send_txn,
    start_home, state, Home,
};
use common::{call, enc, ok, register_user, Hearth, Registered};
use serde_json::{json, Value};

/// hearth, the fake server, alice's public room, and bob (of the fake
/// server) joined to it through `/send`.
struct World {
    home: Home,
    fake: FakeServer,
    alice: Registered,
    room: String,
    bob: String,
}

fn world() -> World {
    let home = start_home();
    let fake = FakeServer::start(7);
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
    let st = state(&home, &alice, &room);
    let prev = latest(&home, &alice, &room);
    let (join, join_pdu) = pdu(
        &fake,
        &room,
        &st,
        &bob,
        "m.room.member",
        Some(&bob),
        json!({"membership": "join"}),
        &[&prev],
        &[],
    );
    let (status, answer) = send_txn(&home, &fake, "join-1", &[join_pdu], &[]);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pdus"][&join], json!({}), "{answer}");
    let w = World {
        home,
        fake,
        alice,
        room,
        bob,
    };
    eventually("bob joined", || {
        membership(&w.home, &w.alice, &w.room, &w.bob).as_deref() == Some("join")
    });
    w
}

impl World {
    fn state(&self) -> Vec<Value> {
        state(&self.home, &self.alice, &self.room)
    }
    fn latest(&self) -> String {
        latest(&self.home, &self.alice, &self.room)
    }
    fn message(&self, body: &str, prev: &[&str]) -> (String, Value) {
        pdu(
            &self.fake,
            &self.room,
            &self.state(),
            &self.bob,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": body}),
            prev,
            &[],
        )
    }
    fn visible(&self, id: &str) -> bool {
        event_visible(&self.home, &self.alice, &self.room, id)
    }
}

#[test]
fn a_remote_user_joins_and_talks_and_transactions_are_idempotent() {
    let w = world();
    let (m1, p1) = w.message("hello from afar", &[&w.latest()]);
    let (status, answer) = send_txn(&w.home, &w.fake, "t1", std::slice::from_ref(&p1), &[]);
    assert_eq!(status, 200);
    assert_eq!(answer, json!({"pdus": {m1.clone(): {}}}));
    eventually("the message is served", || w.visible(&m1));
    let got = ok(call(
        &w.home.h,
        "GET",
        &format!("/rooms/{}/event/{}", w.room, enc(&m1)),
        &w.alice.token,
        None,
    ));
    assert_eq!(got["content"]["body"], "hello from afar");
    assert_eq!(got["sender"], w.bob);

    // The same transaction id again, even with other content: the stored
    // answer, and nothing of the new body applied.
    let (m2, p2) = w.message("never applied", &[&m1]);
    let (status, again) = send_txn(&w.home, &w.fake, "t1", &[p2], &[]);
    assert_eq!(status, 200);
    assert_eq!(again, answer);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!w.visible(&m2));

    // A PDU sent twice in two transactions is applied once.
    let (status, dup) = send_txn(&w.home, &w.fake, "t2", &[p1], &[]);
    assert_eq!(status, 200);
    assert_eq!(dup["pdus"][&m1], json!({}));
    assert_eq!(w.latest(), m1);

    // EDUs: typing, a read receipt and presence reach alice's sync.
    let edus = [
        json!({"edu_type": "m.typing", "content": {"room_id": w.room, "user_id": w.bob, "typing": true}}),
        json!({"edu_type": "m.receipt", "content": {w.room.clone(): {"m.read": {w.bob.clone(): {"event_ids": [m1], "data": {"ts": now()}}}}}}),
        json!({"edu_type": "m.presence", "content": {"push": [{"user_id": w.bob, "presence": "online", "last_active_ago": 10, "currently_active": true}]}}),
        // Another server's user: dropped.
        json!({"edu_type": "m.typing", "content": {"room_id": w.room, "user_id": "@eve:elsewhere.test", "typing": true}}),
    ];
    let (status, _) = send_txn(&w.home, &w.fake, "t3", &[], &edus);
    assert_eq!(status, 200);
    let sync = ok(call(
        &w.home.h,
        "GET",
        "/sync?timeout=0",
        &w.alice.token,
        None,
    ));
    let eph = &sync["rooms"]["join"][&w.room]["ephemeral"]["events"];
    let typing = eph
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.typing")
        .expect("typing EDU");
    assert_eq!(typing["content"]["user_ids"], json!([w.bob]));
    let receipt = eph
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.receipt")
        .expect("receipt EDU");
    assert!(
        receipt["content"][&m1]["m.read"][&w.bob].is_object(),
        "{receipt}"
    );
    let presence = sync["presence"]["events"].as_array().unwrap();
    assert!(
        presence
            .iter()
            .any(|p| p["sender"] == w.bob && p["content"]["presence"] == "online"),
        "{presence:?}"
    );
}

#[test]
fn bad_transactions_and_bad_pdus_are_refused() {
    let w = world();
    let fed = client_of(&w.fake);
    let path = "/_matrix/federation/v1/send/bad-1";
    let body = json!({"origin": w.fake.name, "origin_server_ts": now(), "pdus": [], "edus": []});
    runtime().block_on(async {
        // Unsigned.
        let bytes = serde_json::to_vec(&body).unwrap();
        let r = fed
            .send_raw(&w.home.name, "PUT", path, &[], Some(&bytes), 1 << 20)
            .await
            .unwrap();
        assert_eq!(r.status, 401);
        // Signed for another destination.
        let auth = hearth::federation::x_matrix::sign_request(
            &w.fake.key,
            "other.test",
            "PUT",
            path,
            Some(body.clone().try_into().unwrap()),
        )
        .unwrap();
        let r = fed
            .send_raw(
                &w.home.name,
                "PUT",
                path,
                &[("Authorization", &auth)],
                Some(&bytes),
                1 << 20,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 401);
    });
    // Too many PDUs.
    let many: Vec<Value> = (0..51).map(|_| json!({})).collect();
    let (status, answer) = send_txn(&w.home, &w.fake, "bad-2", &many, &[]);
    assert_eq!(status, 400, "{answer}");

    let st = w.state();
    let head = w.latest();
    // A bad signature: signed by a key the fake server does not publish.
    let (bad_sig, mut p_bad_sig) = w.message("forged", &[&head]);
    p_bad_sig["signatures"][&w.fake.name] = json!({"ed25519:fake7": "AAAA"});
    // A sender of another server.
    let (_, mut p_other) = w.message("x", &[&head]);
    p_other["sender"] = json!("@eve:elsewhere.test");
    let other = id_of(&p_other);
    // Over 64 KiB.
    let (_, mut p_big) = w.message("small", &[&head]);
    p_big["content"]["body"] = json!("x".repeat(70_000));
    let big = id_of(&p_big);
    // A sender who never joined (rejected when applied).
    let carol = format!("@carol:{}", w.fake.name);
    let (unjoined, p_unjoined) = pdu(
        &w.fake,
        &w.room,
        &st,
        &carol,
        "m.room.message",
        None,
        json!({"body": "hi"}),
        &[&head],
        &[],
    );
    // Not allowed by power levels: bob makes himself admin.
    let (pl, p_pl) = pdu(
        &w.fake,
        &w.room,
        &st,
        &w.bob,
        "m.room.power_levels",
        Some(""),
        json!({"users": {w.bob.clone(): 100}}),
        &[&head],
        &[],
    );
    // A wrong content hash: kept, redacted.
    let (tampered, mut p_tampered) = w.message("original", &[&head]);
    p_tampered["content"]["body"] = json!("tampered");
    let (status, answer) = send_txn(
        &w.home,
        &w.fake,
        "bad-3",
        &[p_bad_sig, p_other, p_big, p_unjoined, p_pl, p_tampered],
        &[],
    );
    assert_eq!(status, 200, "{answer}");
    let res = &answer["pdus"];
    for refused in [&bad_sig, &other, &big] {
        assert!(res[refused]["error"].is_string(), "{refused}: {answer}");
    }
    assert_eq!(res[&unjoined], json!({}));
    assert_eq!(res[&pl], json!({}));
    assert_eq!(res[&tampered], json!({}));
    eventually("the tampered event is served redacted", || {
        w.visible(&tampered)
    });
    let t = ok(call(
        &w.home.h,
        "GET",
        &format!("/rooms/{}/event/{}", w.room, enc(&tampered)),
        &w.alice.token,
        None,
    ));
    assert_eq!(t["content"], json!({}), "{t}");
    for never in [&bad_sig, &other, &big, &unjoined, &pl] {
        assert!(!w.visible(never), "{never} must not be served");
    }
    assert_eq!(
        w.state()
            .iter()
            .find(|e| e["type"] == "m.room.power_levels")
            .unwrap()["content"]["users"][&w.bob],
        Value::Null
    );

    // A server ACL denying the fake server: its PDUs get an error.
    ok(call(
        &w.home.h,
        "PUT",
        &format!("/rooms/{}/state/m.room.server_acl/", w.room),
        &w.alice.token,
        Some(json!({"allow": ["*"], "deny": ["localhost"]})),
    ));
    let (m, p) = w.message("denied", &[&w.latest()]);
    let (status, answer) = send_txn(&w.home, &w.fake, "bad-4", &[p], &[]);
    assert_eq!(status, 200);
    assert!(answer["pdus"][&m]["error"].is_string(), "{answer}");
}

/// The fake server answers hearth's fetches from `events` (id → PDU).
fn serve_events(fake: &FakeServer, events: Arc<Mutex<Vec<(String, Value)>>>, gme: Vec<Value>) {
    fake.handle(move |r| {
        let events = events.lock().unwrap();
        if r.path
            .starts_with("/_matrix/federation/v1/get_missing_events/")
        {
            return Some((200, json!({ "events": gme })));
        }
        if let Some(rest) = r.path.strip_prefix("/_matrix/federation/v1/event/") {
            let id = percent_encoding::percent_decode_str(rest)
                .decode_utf8()
                .unwrap();
            let found = events.iter().find(|(i, _)| *i == id)?;
            return Some((
                200,
                json!({"origin": "x", "origin_server_ts": 0, "pdus": [found.1]}),
            ));
        }
        None
    });
}

#[test]
fn missing_prev_events_are_fetched_from_the_origin() {
    let w = world();
    let head = w.latest();
    let (a, pa) = w.message("a", &[&head]);
    let (b, pb) = w.message("b", &[&a]);
    let (c, pc) = w.message("c", &[&b]);
    serve_events(&w.fake, Arc::new(Mutex::new(Vec::new())), vec![pa, pb]);
    let (status, answer) = send_txn(&w.home, &w.fake, "gap-1", &[pc], &[]);
    assert_eq!(status, 200);
    assert_eq!(answer["pdus"][&c], json!({}));
    eventually("the gap is closed", || {
        w.visible(&c) && w.visible(&a) && w.visible(&b)
    });
    let asked = w
        .fake
        .requests("/_matrix/federation/v1/get_missing_events/");
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].body["latest_events"], json!([c]));
    assert_eq!(asked[0].body["earliest_events"], json!([head]));
    let msgs = ok(call(
        &w.home.h,
        "GET",
        &format!("/rooms/{}/messages?dir=b&limit=3", w.room),
        &w.alice.token,
        None,
    ));
    let order: Vec<&str> = msgs["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(order, [c.as_str(), b.as_str(), a.as_str()]);

    // A gap get_missing_events does not close: the state after the missing
    // prev event comes from /state_ids and /event.
    let (d, pd) = w.message("d, never sent", &[&c]);
    let (e, pe) = w.message("e", &[&d]);
    let st = w.state();
    let ids: Vec<String> = st
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    let events = Arc::new(Mutex::new(vec![(d.clone(), pd)]));
    serve_events(&w.fake, events.clone(), Vec::new());
    {
        let (ids, d) = (ids.clone(), d.clone());
        let prev = w.fake.handler_snapshot();
        w.fake.handle(move |r| {
            if r.path.starts_with("/_matrix/federation/v1/state_ids/") {
                let path = percent_encoding::percent_decode_str(&r.path)
                    .decode_utf8()
                    .unwrap();
                assert!(path.contains(d.as_str()), "{path}");
                return Some((200, json!({"pdu_ids": ids, "auth_chain_ids": []})));
            }
            (prev.as_ref())(r)
        });
    }
    let (status, answer) = send_txn(&w.home, &w.fake, "gap-2", &[pe], &[]);
    assert_eq!(status, 200);
    assert_eq!(answer["pdus"][&e], json!({}));
    eventually("placed across the gap", || w.visible(&e));
    assert_eq!(w.latest(), e);
    assert_eq!(
        w.fake.requests("/_matrix/federation/v1/state_ids/").len(),
        1
    );
}

#[test]
fn unknown_auth_events_are_fetched_with_event_auth() {
    let w = world();
    let st = w.state();
    let head = w.latest();
    // bob changes his display name in an event hearth never receives...
    let (rename, p_rename) = pdu(
        &w.fake,
        &w.room,
        &st,
        &w.bob,
        "m.room.member",
        Some(&w.bob),
        json!({"membership": "join", "displayname": "Bob"}),
        &[&head],
        &[],
    );
    // ...and his next message is authorised by it.
    let mut st2 = st.clone();
    st2.retain(|e| !(e["type"] == "m.room.member" && e["state_key"] == w.bob));
    let (msg, p_msg) = pdu(
        &w.fake,
        &w.room,
        &st2,
        &w.bob,
        "m.room.message",
        None,
        json!({"body": "as Bob"}),
        &[&rename],
        &[&rename],
    );
    let chain: Vec<Value> = vec![p_rename.clone()];
    let gme = vec![p_rename];
    w.fake.handle(move |r| {
        if r.path.starts_with("/_matrix/federation/v1/event_auth/") {
            return Some((200, json!({ "auth_chain": chain })));
        }
        if r.path
            .starts_with("/_matrix/federation/v1/get_missing_events/")
        {
            return Some((200, json!({ "events": gme })));
        }
        None
    });
    let (status, answer) = send_txn(&w.home, &w.fake, "auth-1", &[p_msg], &[]);
    assert_eq!(status, 200);
    assert_eq!(answer["pdus"][&msg], json!({}));
    eventually("the message and its auth event", || {
        w.visible(&msg) && w.visible(&rename)
    });
    assert_eq!(
        w.fake.requests("/_matrix/federation/v1/event_auth/").len(),
        1
    );
}

#[test]
fn a_staged_pdu_survives_a_kill_before_it_is_applied() {
    let mut w = world();
    let head = w.latest();
    let (a, pa) = w.message("a", &[&head]);
    let (b, pb) = w.message("b", &[&a]);
    // get_missing_events stalls: b stays staged while hearth is killed.
    let stall = Arc::new(Mutex::new(true));
    {
        let stall = stall.clone();
        let pa = pa.clone();
        w.fake.handle(move |r| {
            if r.path
                .starts_with("/_matrix/federation/v1/get_missing_events/")
            {
                while *stall.lock().unwrap() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return Some((200, json!({ "events": [pa] })));
            }
            None
        });
    }
    let (status, answer) = send_txn(&w.home, &w.fake, "crash-1", &[pb], &[]);
    assert_eq!(status, 200);
    assert_eq!(answer["pdus"][&b], json!({}));
    eventually("hearth asks for the gap", || {
        !w.fake
            .requests("/_matrix/federation/v1/get_missing_events/")
            .is_empty()
    });
    // While the origin stalls, the room's write path is free: a local
    // send to the same room commits at once, and the shards serve.
    let t0 = std::time::Instant::now();
    let local = ok(call(
        &w.home.h,
        "PUT",
        &format!("/rooms/{}/send/m.room.message/during-stall", w.room),
        &w.alice.token,
        Some(json!({"msgtype": "m.text", "body": "not blocked"})),
    ));
    assert!(local["event_id"].is_string());
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    w.home.h.signal(libc::SIGKILL);
    w.home.h.wait_exit(Duration::from_secs(30));
    *stall.lock().unwrap() = false;
    let dir = std::mem::replace(&mut w.home.h.data_dir, tempfile::tempdir().unwrap());
    w.home.h = Hearth::start_in(w.home.opts.clone(), dir);
    eventually("b applied after the restart", || {
        w.visible(&b) && w.visible(&a)
    });
}
