//! End-to-end: membership across servers, seen from hearth's users. A
//! federation server of the tests' own (`common::fake_server`) invites a
//! hearth user to rooms it hosts: the invite shows in initial and
//! incremental `/sync` with the stripped state the fake sent, wakes a
//! parked sync, and moves to `rooms.leave` once rejected (through the
//! fake's `make_leave`/`send_leave`, or locally when the fake refuses) or
//! retracted by the fake. A hearth room's kick, ban and unban of the
//! fake's users reach the fake. A hearth user leaving a room hosted by
//! another hearth (the last local member) sends the leave there.

mod common;

use std::time::Duration;

use common::fake_server::FakeServer;
use common::fed::{
    eventually, fed_call, membership, now, send_txn, sign_template, start_home, Home,
};
use common::{call, enc, ok, register_user, request_to, Registered};
use hearth::events::{build_pdu, NewEvent, RoomVersion};
use serde_json::{json, Value};

const V10: RoomVersion = RoomVersion::V10;
const V12: RoomVersion = RoomVersion::V12;

fn sync(home: &Home, who: &Registered, since: Option<&str>) -> Value {
    let q = match since {
        Some(s) => format!("/sync?timeout=0&since={}", enc(s)),
        None => "/sync?timeout=0".to_owned(),
    };
    ok(call(&home.h, "GET", &q, &who.token, None))
}

/// A v10 member event of the fake's room, signed by the fake.
fn member_pdu(
    fake: &FakeServer,
    room: &str,
    sender: &str,
    target: &str,
    membership: &str,
    depth: u64,
) -> (String, Value) {
    let content = ruma::canonical_json::try_from_json_map(
        json!({"membership": membership})
            .as_object()
            .unwrap()
            .clone(),
    )
    .unwrap();
    let signed = build_pdu(
        NewEvent {
            room_version: V10,
            room_id: Some(room.try_into().unwrap()),
            sender: sender.try_into().unwrap(),
            event_type: "m.room.member".into(),
            state_key: Some(target.into()),
            content,
            prev_events: vec!["$prev:x".try_into().unwrap()],
            auth_events: vec!["$auth:x".try_into().unwrap()],
            depth,
            origin_server_ts: now(),
            redacts: None,
        },
        &fake.key,
    )
    .unwrap();
    (
        signed.event_id.to_string(),
        serde_json::to_value(&signed.pdu).unwrap(),
    )
}

/// The fake invites `user` to its `room` (v2, with a room name in the
/// stripped state); returns the invite's id.
fn invite(home: &Home, fake: &FakeServer, room: &str, user: &str, name: &str) -> String {
    let host = format!("@host:{}", fake.name);
    let (id, event) = member_pdu(fake, room, &host, user, "invite", 5);
    let stripped = json!([
        {"type": "m.room.name", "state_key": "", "sender": host, "content": {"name": name}},
        {"type": "m.room.join_rules", "state_key": "", "sender": host,
         "content": {"join_rule": "invite"}},
    ]);
    let (status, answer) = fed_call(
        home,
        fake,
        "PUT",
        &format!("/_matrix/federation/v2/invite/{}/{}", enc(room), enc(&id)),
        Some(json!({"room_version": "10", "event": event, "invite_room_state": stripped})),
    );
    assert_eq!(status, 200, "{answer}");
    id
}

fn invite_events(v: &Value, room: &str) -> Vec<Value> {
    v["rooms"]["invite"][room]["invite_state"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn remote_invites_in_sync_until_rejected_or_retracted() {
    let home = start_home();
    let fake = FakeServer::start(21);
    let alice = register_user(&home.h, "alice");
    let room1 = format!("!one:{}", fake.name);
    let room2 = format!("!two:{}", fake.name);
    let room3 = format!("!three:{}", fake.name);
    // The fake answers make_leave / send_leave for room one only.
    {
        let (room1, alice_id) = (room1.clone(), alice.id.clone());
        fake.handle(move |r| {
            if r.path.starts_with(&format!(
                "/_matrix/federation/v1/make_leave/{}/",
                enc(&room1)
            )) {
                return Some((
                    200,
                    json!({"room_version": "10", "event": {
                        "type": "m.room.member", "room_id": room1, "sender": alice_id,
                        "state_key": alice_id, "content": {"membership": "leave"},
                        "prev_events": ["$prev:x"], "auth_events": ["$auth:x"], "depth": 7,
                        "origin_server_ts": 1,
                    }}),
                ));
            }
            if r.path.starts_with(&format!(
                "/_matrix/federation/v2/send_leave/{}/",
                enc(&room1)
            )) {
                return Some((200, json!({})));
            }
            if r.path.starts_with("/_matrix/federation/v1/send/") {
                return Some((200, json!({"pdus": {}})));
            }
            None
        });
    }

    let first = sync(&home, &alice, None);
    let since = first["next_batch"].as_str().unwrap().to_owned();
    assert!(first["rooms"]["invite"].as_object().unwrap().is_empty());

    // A parked sync is woken by the invite.
    let addr = home.h.addr;
    let (tok, since2) = (alice.token.clone(), since.clone());
    let parked = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let r = request_to(
            addr,
            "GET",
            &format!(
                "/_matrix/client/v3/sync?timeout=8000&since={}",
                enc(&since2)
            ),
            Some(&tok),
            b"",
        );
        (r.json(), started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    let inv1 = invite(&home, &fake, &room1, &alice.id, "Room one");
    let (woken, took) = parked.join().unwrap();
    assert!(took < Duration::from_secs(7), "not woken: {took:?}");
    let evs = invite_events(&woken, &room1);
    assert_eq!(evs.len(), 3, "{woken}");
    assert_eq!(evs[0]["type"], "m.room.name");
    assert_eq!(evs[0]["content"]["name"], "Room one");
    assert_eq!(evs[2]["event_id"], inv1.as_str());
    assert_eq!(evs[2]["content"]["membership"], "invite");
    assert_eq!(evs[2]["state_key"], alice.id.as_str());

    // Listed once: the next incremental sync has nothing; an initial one has it.
    let next = woken["next_batch"].as_str().unwrap().to_owned();
    let again = sync(&home, &alice, Some(&next));
    assert!(again["rooms"]["invite"].get(&room1).is_none(), "{again}");
    let initial = sync(&home, &alice, None);
    assert_eq!(invite_events(&initial, &room1).len(), 3, "{initial}");

    // Two more invites; one retracted by the fake over /send.
    let _inv2 = invite(&home, &fake, &room2, &alice.id, "Room two");
    let _inv3 = invite(&home, &fake, &room3, &alice.id, "Room three");
    let s2 = sync(&home, &alice, Some(&next));
    assert!(!invite_events(&s2, &room2).is_empty(), "{s2}");
    assert!(!invite_events(&s2, &room3).is_empty(), "{s2}");
    let next = s2["next_batch"].as_str().unwrap().to_owned();
    let host = format!("@host:{}", fake.name);
    let (kick_id, kick) = member_pdu(&fake, &room2, &host, &alice.id, "leave", 6);
    let (status, body) = send_txn(&home, &fake, "retract-1", &[kick], &[]);
    assert_eq!(status, 200, "{body}");

    // Rejected through the fake (room one) and locally (room three: the
    // fake has no make_leave for it).
    ok(call(
        &home.h,
        "POST",
        &format!("/rooms/{}/leave", enc(&room1)),
        &alice.token,
        Some(json!({"reason": "no thanks"})),
    ));
    let sent = fake.requests("/_matrix/federation/v2/send_leave/");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body["content"]["membership"], "leave");
    assert_eq!(sent[0].body["content"]["reason"], "no thanks");
    assert_eq!(sent[0].body["sender"], alice.id.as_str());
    ok(call(
        &home.h,
        "POST",
        &format!("/rooms/{}/leave", enc(&room3)),
        &alice.token,
        None,
    ));

    let s3 = sync(&home, &alice, Some(&next));
    for room in [&room1, &room2, &room3] {
        let left = &s3["rooms"]["leave"][room.as_str()];
        let tl = left["timeline"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(tl.len(), 1, "{room}: {s3}");
        assert_eq!(tl[0]["content"]["membership"], "leave");
        assert_eq!(tl[0]["state_key"], alice.id.as_str());
        assert!(s3["rooms"]["invite"].get(room.as_str()).is_none(), "{s3}");
    }
    assert_eq!(
        s3["rooms"]["leave"][room2.as_str()]["timeline"]["events"][0]["event_id"],
        kick_id.as_str()
    );
    // Gone from an initial sync's invites; in its leave only on request.
    let initial = sync(&home, &alice, None);
    assert!(
        initial["rooms"]["invite"].as_object().unwrap().is_empty(),
        "{initial}"
    );
    let with_leave = ok(call(
        &home.h,
        "GET",
        &format!(
            "/sync?timeout=0&filter={}",
            enc(r#"{"room":{"include_leave":true}}"#)
        ),
        &alice.token,
        None,
    ));
    assert!(
        with_leave["rooms"]["leave"].get(&room1).is_some(),
        "{with_leave}"
    );

    // A new invite replaces the rejection.
    let inv4 = invite(&home, &fake, &room1, &alice.id, "Room one again");
    let initial = sync(&home, &alice, None);
    let evs = invite_events(&initial, &room1);
    assert_eq!(evs.last().unwrap()["event_id"], inv4.as_str(), "{initial}");
}

struct Hosted {
    home: Home,
    fake: FakeServer,
    alice: Registered,
    room: String,
    bob: String,
}

/// A hearth room the fake's bob joined (make_join / send_join).
fn hosted() -> Hosted {
    let home = start_home();
    let fake = FakeServer::start(22);
    fake.handle(|r| {
        r.path
            .starts_with("/_matrix/federation/v1/send/")
            .then(|| (200, json!({"pdus": {}})))
    });
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
    Hosted {
        home,
        fake,
        alice,
        room,
        bob,
    }
}

/// Whether the fake received a member event for `target` with `membership`.
fn fake_got_member(fake: &FakeServer, target: &str, membership: &str) -> bool {
    fake.requests("/_matrix/federation/v1/send/")
        .iter()
        .flat_map(|t| t.body["pdus"].as_array().cloned().unwrap_or_default())
        .any(|p| {
            p["type"] == "m.room.member"
                && p["state_key"] == target
                && p["content"]["membership"] == membership
        })
}

#[test]
fn kicks_bans_and_unbans_of_remote_users_reach_their_server() {
    let w = hosted();
    ok(call(
        &w.home.h,
        "POST",
        &format!("/rooms/{}/kick", w.room),
        &w.alice.token,
        Some(json!({"user_id": w.bob, "reason": "out"})),
    ));
    assert_eq!(
        membership(&w.home, &w.alice, &w.room, &w.bob).as_deref(),
        Some("leave")
    );
    eventually("the kick reaches the fake", || {
        fake_got_member(&w.fake, &w.bob, "leave")
    });
    // The fake has no member left: a ban of its other user reaches it
    // as the target's server, and so does the unban.
    let carol = format!("@carol:{}", w.fake.name);
    ok(call(
        &w.home.h,
        "POST",
        &format!("/rooms/{}/ban", w.room),
        &w.alice.token,
        Some(json!({"user_id": carol})),
    ));
    eventually("the ban reaches the fake", || {
        fake_got_member(&w.fake, &carol, "ban")
    });
    ok(call(
        &w.home.h,
        "POST",
        &format!("/rooms/{}/unban", w.room),
        &w.alice.token,
        Some(json!({"user_id": carol})),
    ));
    eventually("the unban reaches the fake", || {
        fake_got_member(&w.fake, &carol, "leave")
    });
    // A ban of the kicked member too.
    ok(call(
        &w.home.h,
        "POST",
        &format!("/rooms/{}/ban", w.room),
        &w.alice.token,
        Some(json!({"user_id": w.bob})),
    ));
    eventually("bob's ban reaches the fake", || {
        fake_got_member(&w.fake, &w.bob, "ban")
    });
}

#[test]
fn leaving_a_room_hosted_elsewhere_reaches_its_server() {
    let host = start_home();
    let guest = start_home();
    let alice = register_user(&host.h, "alice");
    let bob = register_user(&guest.h, "bob");
    let room = ok(call(
        &host.h,
        "POST",
        "/createRoom",
        &alice.token,
        Some(json!({"preset": "public_chat", "room_version": "12"})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(call(
        &guest.h,
        "POST",
        &format!("/join/{}?server_name={}", enc(&room), enc(&host.name)),
        &bob.token,
        Some(json!({})),
    ));
    eventually("bob's join reaches the host", || {
        membership(&host, &alice, &room, &bob.id).as_deref() == Some("join")
    });
    // Bob is the guest server's last member: the leave still goes out.
    ok(call(
        &guest.h,
        "POST",
        &format!("/rooms/{}/leave", enc(&room)),
        &bob.token,
        None,
    ));
    eventually("bob's leave reaches the host", || {
        membership(&host, &alice, &room, &bob.id).as_deref() == Some("leave")
    });
}
