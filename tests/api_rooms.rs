//! End-to-end: rooms over HTTP against the real binary (2 shards) and real
//! PostgreSQL: create, send, read state and events, join, forbidden sends,
//! txn idempotency, and a restart keeping the room.

mod common;

use std::time::Duration;

use common::{json_request, request, Hearth, Opts, Resp};
use hearth::db::testing::TestCluster;
use serde_json::{json, Value};

const V3: &str = "/_matrix/client/v3";

fn call(h: &Hearth, m: &str, path: &str, token: &str, body: Option<Value>) -> Resp {
    json_request(h, m, &format!("{V3}{path}"), Some(token), body.as_ref())
}

fn ok(r: Resp) -> Value {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn assert_err(r: &Resp, status: u16, errcode: &str) {
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, status, "{body}");
    assert_eq!(r.json()["errcode"], errcode, "{body}");
}

fn register(h: &Hearth, user: &str) -> String {
    let body = json!({"username": user, "password": "pw", "auth": {"type": "m.login.dummy"}});
    let r = json_request(h, "POST", &format!("{V3}/register"), None, Some(&body));
    let r = if r.status == 401 {
        let mut body = body;
        body["auth"]["session"] = r.json()["session"].clone();
        json_request(h, "POST", &format!("{V3}/register"), None, Some(&body))
    } else {
        r
    };
    ok(r)["access_token"].as_str().unwrap().to_owned()
}

#[test]
fn rooms_end_to_end_and_restart() {
    let db = TestCluster::shared().fresh_database();
    let opts = Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url());
    let mut h = Hearth::start(opts.clone());
    let alice = register(&h, "alice");
    let bob = register(&h, "bob");

    let room = ok(call(
        &h,
        "POST",
        "/createRoom",
        &alice,
        Some(json!({"preset": "public_chat", "name": "Lobby", "topic": "hello"})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Send (idempotent per txn id) and read back.
    let send = |txn: &str, body: &str| {
        call(
            &h,
            "PUT",
            &format!("/rooms/{room}/send/m.room.message/{txn}"),
            &alice,
            Some(json!({"msgtype": "m.text", "body": body})),
        )
    };
    let e1 = ok(send("t1", "first"))["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(ok(send("t1", "first"))["event_id"], e1);
    let ev = ok(call(
        &h,
        "GET",
        &format!("/rooms/{room}/event/{e1}"),
        &alice,
        None,
    ));
    assert_eq!(ev["content"]["body"], "first");
    assert_eq!(ev["room_id"], room);
    assert_eq!(ev["sender"], "@alice:localhost");
    assert_eq!(ev["type"], "m.room.message");

    let name = ok(call(
        &h,
        "GET",
        &format!("/rooms/{room}/state/m.room.name/"),
        &alice,
        None,
    ));
    assert_eq!(name["name"], "Lobby");
    let topic = ok(call(
        &h,
        "GET",
        &format!("/rooms/{room}/state/m.room.topic"),
        &alice,
        None,
    ));
    assert_eq!(topic["topic"], "hello");
    let state = ok(call(
        &h,
        "GET",
        &format!("/rooms/{room}/state"),
        &alice,
        None,
    ));
    let types: Vec<&str> = state
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for t in [
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.join_rules",
    ] {
        assert!(types.contains(&t), "{types:?}");
    }

    // Bob is not a member: forbidden to send, to read state.
    let r = call(
        &h,
        "PUT",
        &format!("/rooms/{room}/send/m.room.message/b1"),
        &bob,
        Some(json!({"msgtype": "m.text", "body": "hi"})),
    );
    assert_err(&r, 403, "M_FORBIDDEN");
    assert_err(
        &call(&h, "GET", &format!("/rooms/{room}/state"), &bob, None),
        403,
        "M_FORBIDDEN",
    );
    // Bob joins the public room and talks.
    ok(call(
        &h,
        "POST",
        &format!("/join/{room}"),
        &bob,
        Some(json!({})),
    ));
    let r = call(
        &h,
        "PUT",
        &format!("/rooms/{room}/send/m.room.message/b1"),
        &bob,
        Some(json!({"msgtype": "m.text", "body": "hi"})),
    );
    ok(r);
    let joined = ok(call(&h, "GET", "/joined_rooms", &bob, None));
    assert_eq!(joined["joined_rooms"], json!([room]));
    // Bob may not change the name (power level 50 needed).
    let r = call(
        &h,
        "PUT",
        &format!("/rooms/{room}/state/m.room.name"),
        &bob,
        Some(json!({"name": "mine"})),
    );
    assert_err(&r, 403, "M_FORBIDDEN");

    // Unknown room, oversize event.
    let r = call(
        &h,
        "PUT",
        "/rooms/!nope:localhost/send/m.room.message/x",
        &alice,
        Some(json!({"body": "x"})),
    );
    assert_err(&r, 404, "M_NOT_FOUND");
    let big = json!({"body": "x".repeat(70_000)}).to_string();
    let r = request(
        &h,
        "PUT",
        &format!("{V3}/rooms/{room}/send/m.room.message/big"),
        Some(&alice),
        big.as_bytes(),
    );
    assert_err(&r, 413, "M_TOO_LARGE");

    // Restart: the room, its events and the txn id survive.
    h.signal(libc::SIGTERM);
    assert_eq!(h.wait_exit(Duration::from_secs(60)), Some(0));
    let data_dir = std::mem::replace(&mut h.data_dir, tempfile::tempdir().unwrap());
    drop(h);
    let h = Hearth::start_in(opts, data_dir);
    let ev = ok(call(
        &h,
        "GET",
        &format!("/rooms/{room}/event/{e1}"),
        &alice,
        None,
    ));
    assert_eq!(ev["content"]["body"], "first");
    let again = call(
        &h,
        "PUT",
        &format!("/rooms/{room}/send/m.room.message/t1"),
        &alice,
        Some(json!({"msgtype": "m.text", "body": "first"})),
    );
    assert_eq!(ok(again)["event_id"], e1);
    let e2 = ok(call(
        &h,
        "PUT",
        &format!("/rooms/{room}/send/m.room.message/t2"),
        &alice,
        Some(json!({"msgtype": "m.text", "body": "second"})),
    ))["event_id"]
        .clone();
    assert_ne!(e2, json!(e1));
    ok(call(
        &h,
        "POST",
        &format!("/rooms/{room}/leave"),
        &bob,
        Some(json!({})),
    ));
    let joined = ok(call(&h, "GET", "/joined_rooms", &bob, None));
    assert_eq!(joined["joined_rooms"], json!([]));
}

#[test]
fn kick_ban_unban_follow_power_levels() {
    let db = TestCluster::shared().fresh_database();
    let h = Hearth::start(Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url()));
    let alice = register(&h, "alice");
    let bob = register(&h, "bob");
    let room = ok(call(
        &h,
        "POST",
        "/createRoom",
        &alice,
        Some(json!({"preset": "public_chat"})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob_id = "@bob:localhost";
    let alice_id = "@alice:localhost";
    let join = |token: &str| call(&h, "POST", &format!("/rooms/{room}/join"), token, None);
    let act = |what: &str, token: &str, target: &str| {
        call(
            &h,
            "POST",
            &format!("/rooms/{room}/{what}"),
            token,
            Some(json!({"user_id": target, "reason": "testing"})),
        )
    };
    let bob_membership = || {
        ok(call(
            &h,
            "GET",
            &format!("/rooms/{room}/state/m.room.member/{bob_id}"),
            &alice,
            None,
        ))
    };

    ok(join(&bob));
    // Bob (power 0) may neither kick nor ban the creator.
    assert_err(&act("kick", &bob, alice_id), 403, "M_FORBIDDEN");
    assert_err(&act("ban", &bob, alice_id), 403, "M_FORBIDDEN");

    ok(act("kick", &alice, bob_id));
    let m = bob_membership();
    assert_eq!(m["membership"], "leave");
    assert_eq!(m["reason"], "testing");
    ok(join(&bob)); // a kick is not a ban: the public room takes him back

    ok(act("ban", &alice, bob_id));
    assert_eq!(bob_membership()["membership"], "ban");
    assert_err(&join(&bob), 403, "M_FORBIDDEN");

    ok(act("unban", &alice, bob_id));
    assert_eq!(bob_membership()["membership"], "leave");
    ok(join(&bob));

    // Bad input: not JSON, missing user_id, invalid id.
    let r = common::request(
        &h,
        "POST",
        &format!("{V3}/rooms/{room}/kick"),
        Some(&alice),
        b"{nope",
    );
    assert_err(&r, 400, "M_NOT_JSON");
    assert_err(
        &call(
            &h,
            "POST",
            &format!("/rooms/{room}/kick"),
            &alice,
            Some(json!({})),
        ),
        400,
        "M_BAD_JSON",
    );
    assert_err(&act("ban", &alice, "not-a-user"), 400, "M_INVALID_PARAM");
}

#[test]
fn members_and_joined_members_with_filters() {
    let db = TestCluster::shared().fresh_database();
    let h = Hearth::start(Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url()));
    let alice = register(&h, "alice");
    let bob = register(&h, "bob");
    let carol = register(&h, "carol");
    let room = ok(call(
        &h,
        "POST",
        "/createRoom",
        &alice,
        Some(json!({"preset": "private_chat", "invite": ["@bob:localhost"]})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(call(&h, "POST", &format!("/rooms/{room}/join"), &bob, None));
    ok(call(
        &h,
        "POST",
        &format!("/rooms/{room}/invite"),
        &alice,
        Some(json!({"user_id": "@carol:localhost"})),
    ));

    let members = |q: &str| {
        let v = ok(call(
            &h,
            "GET",
            &format!("/rooms/{room}/members{q}"),
            &alice,
            None,
        ));
        let mut ids: Vec<String> = v["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                assert_eq!(e["type"], "m.room.member");
                e["state_key"].as_str().unwrap().to_owned()
            })
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        members(""),
        ["@alice:localhost", "@bob:localhost", "@carol:localhost"]
    );
    assert_eq!(
        members("?membership=join"),
        ["@alice:localhost", "@bob:localhost"]
    );
    assert_eq!(members("?not_membership=join"), ["@carol:localhost"]);
    assert_err(
        &call(
            &h,
            "GET",
            &format!("/rooms/{room}/members?membership=bogus"),
            &alice,
            None,
        ),
        400,
        "M_INVALID_PARAM",
    );

    let joined = ok(call(
        &h,
        "GET",
        &format!("/rooms/{room}/joined_members"),
        &bob,
        None,
    ));
    let joined = joined["joined"].as_object().unwrap();
    assert_eq!(joined.len(), 2);
    assert!(joined.contains_key("@alice:localhost") && joined.contains_key("@bob:localhost"));

    // Only members may list members: carol is merely invited.
    assert_err(
        &call(
            &h,
            "GET",
            &format!("/rooms/{room}/joined_members"),
            &carol,
            None,
        ),
        403,
        "M_FORBIDDEN",
    );
}

/// Bug found by the bench rig: concurrent createRooms by one user built the
/// same v12 create event (same sender and millisecond), hence the same room
/// id, and all but one failed with 500.
#[test]
fn concurrent_create_rooms_by_one_user_all_succeed() {
    let db = TestCluster::shared().fresh_database();
    let h = Hearth::start(Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url()));
    let alice = register(&h, "alice");
    let addr = h.addr;
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|_| {
                let alice = alice.clone();
                s.spawn(move || {
                    let r = common::request_to(
                        addr,
                        "POST",
                        &format!("{V3}/createRoom"),
                        Some(&alice),
                        b"{}",
                    );
                    ok(r)["room_id"].as_str().unwrap().to_owned()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
}
