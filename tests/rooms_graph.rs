//! End-to-end: the event graph through the one entry point for PDUs built
//! elsewhere. A fake remote server ("remote.test", its own ed25519 key)
//! signs events; they reach the real binary through the test-only door
//! `POST /_hearth/test/pdu` (enabled by HEARTHTEST_INJECT_PDUS=1; see
//! src/api/client/inject.rs), which fills the remote key store and calls
//! `rooms::client::apply_pdu`. Checked over HTTP: forks and their
//! resolution in /state, /members, /sync and /messages; soft-failed events
//! never reach a client; rejected events stay out (and are remembered);
//! pagination tokens across an older event's insertion; a restart.

mod common;

use std::time::Duration;

use common::{call, enc, json_request, ok, register_user, Hearth, Opts};
use hearth::db::testing::TestCluster;
use hearth::events::{build_pdu, NewEvent, RoomVersion, ServerKey};
use ruma::canonical_json::CanonicalJsonObject;
use serde_json::{json, Value};

/// The test door to `rooms::client::apply_pdu`.
const DOOR: &str = "/_hearth/test/pdu";

/// The fake remote server.
struct Remote {
    key: ServerKey,
}

impl Remote {
    fn new() -> Remote {
        let name = ruma::OwnedServerName::try_from("remote.test").unwrap();
        Remote {
            key: ServerKey::from_seed(name, "1", &[42; 32]).unwrap(),
        }
    }

    /// A signed PDU of `room` (v12) from `sender` on top of `prev`, with
    /// auth events chosen from `state` (the /state of the room).
    #[allow(clippy::too_many_arguments)]
    fn pdu(
        &self,
        room: &str,
        state: &[Value],
        sender: &str,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
        prev: &[&str],
        ts: u64,
    ) -> (String, Value) {
        let find = |t: &str, k: &str| {
            state
                .iter()
                .find(|e| e["type"] == t && e["state_key"] == k)
                .map(|e| e["event_id"].as_str().unwrap().to_owned())
        };
        let mut auth: Vec<String> = Vec::new();
        auth.extend(find("m.room.power_levels", ""));
        auth.extend(find("m.room.member", sender));
        if kind == "m.room.member" {
            let target = state_key.unwrap();
            auth.extend(find("m.room.member", target));
            if content["membership"] == "join" || content["membership"] == "invite" {
                auth.extend(find("m.room.join_rules", ""));
            }
        }
        auth.sort();
        auth.dedup();
        let Value::Object(c) = content else { panic!() };
        let content: CanonicalJsonObject = ruma::canonical_json::try_from_json_map(c).unwrap();
        let signed = build_pdu(
            NewEvent {
                room_version: RoomVersion::V12,
                room_id: Some(room.try_into().unwrap()),
                sender: sender.try_into().unwrap(),
                event_type: kind.into(),
                state_key: state_key.map(Into::into),
                content,
                prev_events: prev.iter().map(|p| (*p).try_into().unwrap()).collect(),
                auth_events: auth
                    .iter()
                    .map(|a| a.as_str().try_into().unwrap())
                    .collect(),
                depth: 1000,
                origin_server_ts: ts,
                redacts: None,
            },
            &self.key,
        )
        .unwrap();
        (
            signed.event_id.to_string(),
            serde_json::to_value(&signed.pdu).unwrap(),
        )
    }

    /// Sends `pdu` through the test door; returns `outcome`.
    fn inject(&self, h: &Hearth, token: &str, room: &str, pdu: &Value) -> Value {
        let body = json!({
            "key": {
                "server": "remote.test",
                "key_id": self.key.key_id.to_string(),
                "public_key": self.key.public_key_base64(),
            },
            "room_id": room,
            "pdu": pdu,
        });
        ok(json_request(h, "POST", DOOR, Some(token), Some(&body)))
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn state(h: &Hearth, token: &str, room: &str) -> Vec<Value> {
    ok(call(h, "GET", &format!("/rooms/{room}/state"), token, None))
        .as_array()
        .unwrap()
        .clone()
}

fn state_id(state: &[Value], t: &str, k: &str) -> Option<String> {
    state
        .iter()
        .find(|e| e["type"] == t && e["state_key"] == k)
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
}

fn members(h: &Hearth, token: &str, room: &str) -> Vec<(String, String)> {
    let v = ok(call(
        h,
        "GET",
        &format!("/rooms/{room}/members"),
        token,
        None,
    ));
    let mut m: Vec<(String, String)> = v["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["state_key"].as_str().unwrap().to_owned(),
                e["content"]["membership"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    m.sort();
    m
}

/// Every event id of the room, newest first, walking /messages back from
/// `from` (or the end) in pages of 3.
fn walk_back(h: &Hearth, token: &str, room: &str, from: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = from.map(str::to_owned);
    loop {
        let q = match &from {
            Some(f) => format!("dir=b&limit=3&from={f}"),
            None => "dir=b&limit=3".to_owned(),
        };
        let v = ok(call(
            h,
            "GET",
            &format!("/rooms/{room}/messages?{q}"),
            token,
            None,
        ));
        for e in v["chunk"].as_array().unwrap() {
            out.push(e["event_id"].as_str().unwrap().to_owned());
        }
        match v["end"].as_str() {
            Some(e) => from = Some(e.to_owned()),
            None => return out,
        }
    }
}

fn latest(h: &Hearth, token: &str, room: &str) -> String {
    let v = ok(call(
        h,
        "GET",
        &format!("/rooms/{room}/messages?dir=b&limit=1"),
        token,
        None,
    ));
    v["chunk"][0]["event_id"].as_str().unwrap().to_owned()
}

fn send(h: &Hearth, token: &str, room: &str, ty: &str, txn: &str, content: Value) -> String {
    let path = format!("/rooms/{room}/send/{ty}/{txn}");
    ok(call(h, "PUT", &path, token, Some(content)))["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn put_state(h: &Hearth, token: &str, room: &str, ty: &str, key: &str, content: Value) -> String {
    let path = format!("/rooms/{room}/state/{ty}/{}", enc(key));
    ok(call(h, "PUT", &path, token, Some(content)))["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The room's timeline and state in an initial /sync.
fn sync_room(h: &Hearth, token: &str, room: &str) -> (Vec<String>, Vec<Value>) {
    let v = ok(call(h, "GET", "/sync?timeout=0", token, None));
    let r = &v["rooms"]["join"][room];
    let ids = r["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    let mut st: Vec<Value> = r["state"]["events"].as_array().cloned().unwrap_or_default();
    st.extend(r["timeline"]["events"].as_array().unwrap().iter().cloned());
    (ids, st)
}

#[test]
fn the_event_graph_end_to_end() {
    let db = TestCluster::shared().fresh_database();
    let opts = Opts::shards(2)
        .env("HEARTH_DATABASE__URL", &db.url())
        .env("HEARTHTEST_INJECT_PDUS", "1");
    let mut h = Hearth::start(opts.clone());
    let alice = register_user(&h, "alice");
    let a = alice.token.as_str();
    let remote = Remote::new();
    let bob = "@bob:remote.test";
    let dave = "@dave:remote.test";
    let room = ok(call(
        &h,
        "POST",
        "/createRoom",
        a,
        Some(json!({"preset": "public_chat"})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Without its key the remote's PDU is dropped (signature check).
    let st = state(&h, a, &room);
    let (_, join) = remote.pdu(
        &room,
        &st,
        bob,
        "m.room.member",
        Some(bob),
        json!({"membership": "join"}),
        &[&latest(&h, a, &room)],
        now(),
    );
    let r = json_request(
        &h,
        "POST",
        DOOR,
        Some(a),
        Some(&json!({"room_id": room, "pdu": join})),
    );
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));

    // bob joins from remote.test.
    let out = remote.inject(&h, a, &room, &join);
    assert_eq!(out["outcome"], "accepted", "{out}");
    let _bob_join = out["event_id"].as_str().unwrap().to_owned();
    assert_eq!(
        remote.inject(&h, a, &room, &join)["outcome"],
        "already_known"
    );
    assert!(members(&h, a, &room).contains(&(bob.to_owned(), "join".to_owned())));
    // bob may set state: power 50 = state_default.
    let pl = put_state(
        &h,
        a,
        &room,
        "m.room.power_levels",
        "",
        json!({"users": {bob: 50}}),
    );

    // A fork: alice's topic and bob's, both on top of `pl`. bob's is later
    // (origin_server_ts), so it wins the resolution; the next local event
    // has both as prev_events and closes the fork.
    let st = state(&h, a, &room);
    let t_alice = put_state(
        &h,
        a,
        &room,
        "m.room.topic",
        "",
        json!({"topic": "alice's"}),
    );
    let (t_bob, topic) = remote.pdu(
        &room,
        &st,
        bob,
        "m.room.topic",
        Some(""),
        json!({"topic": "bob's"}),
        &[&pl],
        now() + 60_000,
    );
    assert_eq!(remote.inject(&h, a, &room, &topic)["outcome"], "accepted");
    let st = state(&h, a, &room);
    assert_eq!(
        state_id(&st, "m.room.topic", "").as_deref(),
        Some(t_bob.as_str())
    );
    let closing = send(
        &h,
        a,
        &room,
        "m.room.message",
        "m1",
        json!({"msgtype": "m.text", "body": "after the fork"}),
    );
    // Unknown prev events: an outlier, never served.
    let (gap, g) = remote.pdu(
        &room,
        &state(&h, a, &room),
        bob,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "gap"}),
        &["$unknownunknownunknownunknownunknownunknown0"],
        now(),
    );
    let out = remote.inject(&h, a, &room, &g);
    assert_eq!(out["outcome"], "outlier", "{out}");
    assert!(!walk_back(&h, a, &room, None).contains(&gap));

    let ids = walk_back(&h, a, &room, None);
    assert_eq!(ids[0], closing);
    assert!(ids.contains(&t_alice) && ids.contains(&t_bob));

    // Concurrent: dave joins (public) while bob makes the room invite-only,
    // both on top of `closing`. Each passes when received, but the
    // resolution applies the join rule first and dave's join fails: he is
    // not a member, though his join stays in the timeline.
    let st = state(&h, a, &room);
    let (dave_join, dj) = remote.pdu(
        &room,
        &st,
        dave,
        "m.room.member",
        Some(dave),
        json!({"membership": "join"}),
        &[&closing],
        now(),
    );
    let (invite_only, jr) = remote.pdu(
        &room,
        &st,
        bob,
        "m.room.join_rules",
        Some(""),
        json!({"join_rule": "invite"}),
        &[&closing],
        now(),
    );
    assert_eq!(remote.inject(&h, a, &room, &dj)["outcome"], "accepted");
    assert!(members(&h, a, &room).contains(&(dave.to_owned(), "join".to_owned())));
    assert_eq!(remote.inject(&h, a, &room, &jr)["outcome"], "accepted");
    let m = members(&h, a, &room);
    assert!(!m.iter().any(|(u, _)| u == dave), "{m:?}");
    let st = state(&h, a, &room);
    assert_eq!(
        state_id(&st, "m.room.join_rules", "").as_deref(),
        Some(invite_only.as_str())
    );
    assert!(walk_back(&h, a, &room, None).contains(&dave_join));

    // A ban races bob's message: alice bans bob; bob's message on top of
    // the event before the ban passes the state before it, fails the
    // current state: soft-failed, never served.
    let before_ban = latest(&h, a, &room);
    let st = state(&h, a, &room);
    let ban = ok(call(
        &h,
        "POST",
        &format!("/rooms/{room}/ban"),
        a,
        Some(json!({"user_id": bob})),
    ));
    assert!(ban.is_object());
    let (soft, msg) = remote.pdu(
        &room,
        &st,
        bob,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "too late"}),
        &[&before_ban],
        now(),
    );
    assert_eq!(remote.inject(&h, a, &room, &msg)["outcome"], "soft_failed");
    assert!(!walk_back(&h, a, &room, None).contains(&soft));
    let (sync_ids, _) = sync_room(&h, a, &room);
    assert!(!sync_ids.contains(&soft));
    let r = call(
        &h,
        "GET",
        &format!("/rooms/{room}/event/{}", enc(&soft)),
        a,
        None,
    );
    assert_eq!(r.status, 404);
    assert_eq!(
        members(&h, a, &room)
            .iter()
            .find(|(u, _)| u == bob)
            .map(|(_, m)| m.as_str()),
        Some("ban")
    );

    // Rejected: carol was never in the room. Remembered as rejected.
    let st = state(&h, a, &room);
    let (rejected, bad) = remote.pdu(
        &room,
        &st,
        "@carol:remote.test",
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "uninvited"}),
        &[&latest(&h, a, &room)],
        now(),
    );
    assert_eq!(remote.inject(&h, a, &room, &bad)["outcome"], "rejected");
    assert_eq!(remote.inject(&h, a, &room, &bad)["outcome"], "rejected");
    assert!(!walk_back(&h, a, &room, None).contains(&rejected));

    // /sync shows the resolved state.
    let (_, sync_state) = sync_room(&h, a, &room);
    let ids_of = |t: &str, k: &str| {
        sync_state
            .iter()
            .filter(|e| e["type"] == t && e["state_key"] == k)
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert!(ids_of("m.room.join_rules", "").contains(&invite_only));

    let expected_state = state(&h, a, &room);
    let expected_members = members(&h, a, &room);
    let expected_history = walk_back(&h, a, &room, None);

    // A restart keeps it all.
    h.signal(libc::SIGTERM);
    assert_eq!(h.wait_exit(Duration::from_secs(60)), Some(0));
    let data_dir = std::mem::replace(&mut h.data_dir, tempfile::tempdir().unwrap());
    drop(h);
    let h = Hearth::start_in(opts, data_dir);
    let a = alice.token.as_str();
    let mut got = state(&h, a, &room);
    let mut want = expected_state;
    let key = |e: &Value| (e["type"].to_string(), e["state_key"].to_string());
    got.sort_by_key(key);
    want.sort_by_key(key);
    let ids = |v: &[Value]| v.iter().map(|e| e["event_id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&got), ids(&want));
    assert_eq!(members(&h, a, &room), expected_members);
    assert_eq!(walk_back(&h, a, &room, None), expected_history);
    assert_eq!(remote.inject(&h, a, &room, &bad)["outcome"], "rejected");
    assert_eq!(
        remote.inject(&h, a, &room, &msg)["outcome"],
        "already_known"
    );
}

/// A pagination token taken before an older event is inserted (a remote
/// event whose prev event is deep in history) still pages correctly: the
/// walk from it is the old walk with the new event in its topological
/// place, nothing repeated or lost.
#[test]
fn tokens_stay_valid_when_older_events_arrive() {
    let db = TestCluster::shared().fresh_database();
    let opts = Opts::shards(2)
        .env("HEARTH_DATABASE__URL", &db.url())
        .env("HEARTHTEST_INJECT_PDUS", "1");
    let h = Hearth::start(opts);
    let alice = register_user(&h, "alice");
    let a = alice.token.as_str();
    let remote = Remote::new();
    let bob = "@bob:remote.test";
    let room = ok(call(
        &h,
        "POST",
        "/createRoom",
        a,
        Some(json!({"preset": "public_chat"})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let st = state(&h, a, &room);
    let (_, join) = remote.pdu(
        &room,
        &st,
        bob,
        "m.room.member",
        Some(bob),
        json!({"membership": "join"}),
        &[&latest(&h, a, &room)],
        now(),
    );
    assert_eq!(remote.inject(&h, a, &room, &join)["outcome"], "accepted");
    let mut msgs = Vec::new();
    for i in 0..8 {
        msgs.push(send(
            &h,
            a,
            &room,
            "m.room.message",
            &format!("t{i}"),
            json!({"msgtype": "m.text", "body": format!("m{i}")}),
        ));
    }
    // Tokens: at the end, and in the middle (after two pages of 3).
    let first = ok(call(
        &h,
        "GET",
        &format!("/rooms/{room}/messages?dir=b&limit=3"),
        a,
        None,
    ));
    let end_token = first["start"].as_str().unwrap().to_owned();
    let mid = ok(call(
        &h,
        "GET",
        &format!(
            "/rooms/{room}/messages?dir=b&limit=3&from={}",
            first["end"].as_str().unwrap()
        ),
        a,
        None,
    ));
    let mid_token = mid["end"].as_str().unwrap().to_owned();
    let before_end = walk_back(&h, a, &room, Some(&end_token));
    let before_mid = walk_back(&h, a, &room, Some(&mid_token));

    // bob answers m1 late: prev_events = [m1], so its place is just after
    // m1 in topological order (depth m1 + 1), far below the tokens.
    let st = state(&h, a, &room);
    let (late, pdu) = remote.pdu(
        &room,
        &st,
        bob,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "late reply to m1"}),
        &[&msgs[1]],
        now(),
    );
    assert_eq!(remote.inject(&h, a, &room, &pdu)["outcome"], "accepted");
    let after_end = walk_back(&h, a, &room, Some(&end_token));
    let after_mid = walk_back(&h, a, &room, Some(&mid_token));
    let with_late = |old: &[String]| {
        let mut v = old.to_vec();
        // Newest first: the late event comes right before (above) m2.
        let at = v.iter().position(|id| *id == msgs[2]).unwrap();
        v.insert(at, late.clone());
        v
    };
    // Equal depths order by stream position: m2 (depth m1+1 too) was
    // written first, so the late event sits just after m2.
    assert_eq!(after_end, with_late(&before_end));
    // The middle token lies between m3 and m2: the late event (at m2's
    // depth, after it in stream order) is above it, so that walk is as before.
    assert!(!before_mid.contains(&msgs[2]));
    assert_eq!(after_mid, before_mid);
    // /sync (stream order) shows it as the newest event.
    let (sync_ids, _) = sync_room(&h, a, &room);
    assert_eq!(sync_ids.last(), Some(&late));
    // The fork closes with the next local event.
    let next = send(
        &h,
        a,
        &room,
        "m.room.message",
        "close",
        json!({"msgtype": "m.text", "body": "close"}),
    );
    assert_eq!(walk_back(&h, a, &room, None)[0], next);
}

/// A resolution can change current state without the winning event in the
/// timeline: dave (power 100, remote) demotes bob on a fork beside bob's
/// topic, so the resolution drops bob's topic and the room's topic reverts
/// to alice's older one. An incremental /sync whose timeline is just
/// dave's power levels must carry the reverted topic in `state`, or the
/// client keeps bob's.
#[test]
fn incremental_sync_carries_state_changed_by_a_resolution() {
    let db = TestCluster::shared().fresh_database();
    let opts = Opts::shards(2)
        .env("HEARTH_DATABASE__URL", &db.url())
        .env("HEARTHTEST_INJECT_PDUS", "1");
    let mut h = Hearth::start(opts.clone());
    let alice = register_user(&h, "alice");
    let a = alice.token.as_str();
    let remote = Remote::new();
    let (bob, dave) = ("@bob:remote.test", "@dave:remote.test");
    let room = ok(call(
        &h,
        "POST",
        "/createRoom",
        a,
        Some(json!({"preset": "public_chat"})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for user in [bob, dave] {
        let (_, join) = remote.pdu(
            &room,
            &state(&h, a, &room),
            user,
            "m.room.member",
            Some(user),
            json!({"membership": "join"}),
            &[&latest(&h, a, &room)],
            now(),
        );
        assert_eq!(remote.inject(&h, a, &room, &join)["outcome"], "accepted");
    }
    let pl = json!({"users": {bob: 50, dave: 100}});
    put_state(&h, a, &room, "m.room.power_levels", "", pl);
    let t0 = put_state(
        &h,
        a,
        &room,
        "m.room.topic",
        "",
        json!({"topic": "alice's"}),
    );

    // bob's topic, then a sync: the client has it.
    let fork_point = latest(&h, a, &room);
    let st = state(&h, a, &room);
    let (t_bob, topic) = remote.pdu(
        &room,
        &st,
        bob,
        "m.room.topic",
        Some(""),
        json!({"topic": "bob's"}),
        &[&fork_point],
        now(),
    );
    assert_eq!(remote.inject(&h, a, &room, &topic)["outcome"], "accepted");
    let v = ok(call(&h, "GET", "/sync?timeout=0", a, None));
    let since = v["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(
        state_id(&state(&h, a, &room), "m.room.topic", "").as_deref(),
        Some(t_bob.as_str())
    );

    // dave demotes bob on a fork beside bob's topic.
    let (demote, d) = remote.pdu(
        &room,
        &st,
        dave,
        "m.room.power_levels",
        Some(""),
        json!({"users": {bob: 0, dave: 100}}),
        &[&fork_point],
        now() + 1,
    );
    assert_eq!(remote.inject(&h, a, &room, &d)["outcome"], "accepted");
    assert_eq!(
        state_id(&state(&h, a, &room), "m.room.topic", "").as_deref(),
        Some(t0.as_str()),
        "the resolution reverts the topic"
    );

    let check = |h: &Hearth| {
        let v = ok(call(
            h,
            "GET",
            &format!("/sync?timeout=0&since={}", enc(&since)),
            a,
            None,
        ));
        let r = &v["rooms"]["join"][&room];
        let timeline: Vec<&str> = r["timeline"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap())
            .collect();
        assert_eq!(timeline, vec![demote.as_str()], "{r}");
        let state_ids: Vec<&str> = r["state"]["events"]
            .as_array()
            .map(|a| a.iter().map(|e| e["event_id"].as_str().unwrap()).collect())
            .unwrap_or_default();
        assert!(state_ids.contains(&t0.as_str()), "{r}");
    };
    // From the shards' timeline caches (fed by the announcement)...
    check(&h);
    // ...and from the database after a restart (cold caches).
    h.signal(libc::SIGTERM);
    assert_eq!(h.wait_exit(Duration::from_secs(60)), Some(0));
    let data_dir = std::mem::replace(&mut h.data_dir, tempfile::tempdir().unwrap());
    drop(h);
    let h = Hearth::start_in(opts, data_dir);
    check(&h);
}
