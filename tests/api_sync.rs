//! End-to-end: `/sync` over HTTP against the real binary (2 shards) and
//! real PostgreSQL: initial and incremental content, long polls woken
//! across shards, invites, leave and rejoin, `limited`/`prev_batch`, state
//! at the start of the timeline, filters, tokens across a restart,
//! malformed parameters, the cheap path.

mod common;

use std::time::{Duration, Instant};

use common::{assert_err, call, enc, json_request, ok, register, request, Hearth, Opts, Resp, V3};
use hearth::db::testing::{TestCluster, TestDb};
use hearth::mesh::{shard_for_room, shard_for_user};
use ruma::{RoomId, UserId};
use serde_json::{json, Value};

fn sync_raw(h: &Hearth, token: &str, query: &str) -> Resp {
    call(h, "GET", &format!("/sync?{query}"), token, None)
}

fn sync(h: &Hearth, token: &str, since: Option<&str>, extra: &str) -> Value {
    let mut q = String::from("timeout=0");
    if let Some(s) = since {
        q.push_str(&format!("&since={}", enc(s)));
    }
    if !extra.is_empty() {
        q.push('&');
        q.push_str(extra);
    }
    ok(sync_raw(h, token, &q))
}

fn create_room(h: &Hearth, token: &str, body: Value) -> String {
    ok(call(h, "POST", "/createRoom", token, Some(body)))["room_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn send(h: &Hearth, token: &str, room: &str, txn: &str, body: &str) -> String {
    ok(call(
        h,
        "PUT",
        &format!("/rooms/{room}/send/m.room.message/{txn}"),
        token,
        Some(json!({"msgtype": "m.text", "body": body})),
    ))["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn set_name(h: &Hearth, token: &str, room: &str, name: &str) -> String {
    ok(call(
        h,
        "PUT",
        &format!("/rooms/{room}/state/m.room.name"),
        token,
        Some(json!({"name": name})),
    ))["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn membership(h: &Hearth, token: &str, room: &str, action: &str, body: Value) {
    ok(call(
        h,
        "POST",
        &format!("/rooms/{room}/{action}"),
        token,
        Some(body),
    ));
}

fn next_batch(v: &Value) -> String {
    v["next_batch"].as_str().unwrap().to_owned()
}

fn timeline<'a>(v: &'a Value, section: &str, room: &str) -> &'a Vec<Value> {
    v["rooms"][section][room]["timeline"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no {section} timeline for {room}: {v:#}"))
}

fn bodies(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
        .collect()
}

fn state_of<'a>(v: &'a Value, section: &str, room: &str) -> &'a Vec<Value> {
    v["rooms"][section][room]["state"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no {section} state for {room}: {v:#}"))
}

fn find_state<'a>(events: &'a [Value], ty: &str, key: &str) -> Option<&'a Value> {
    events
        .iter()
        .find(|e| e["type"] == ty && e["state_key"] == key)
}

/// The fields every response must have, even empty.
fn assert_shape(v: &Value) {
    for s in ["join", "invite", "leave", "knock"] {
        assert!(v["rooms"][s].is_object(), "rooms.{s}: {v:#}");
    }
    for k in ["account_data", "presence", "to_device"] {
        assert!(v[k]["events"].is_array(), "{k}: {v:#}");
    }
    assert!(v["device_lists"]["changed"].is_array());
    assert!(v["device_lists"]["left"].is_array());
    // Absent on the cheap path (= unchanged); real values when computed.
    if let Some(c) = v.get("device_one_time_keys_count") {
        assert_eq!(c["signed_curve25519"], 0);
        assert!(v["device_unused_fallback_key_types"].is_array());
    }
    assert!(v["next_batch"].as_str().unwrap().starts_with('s'));
}

fn start() -> (Hearth, Opts, TestDb) {
    let db = TestCluster::shared().fresh_database();
    let opts = Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url());
    (Hearth::start(opts.clone()), opts, db)
}

/// Registers `prefix0`, `prefix1`… until one lives on another shard than
/// `room`'s owner: its syncs are then woken across shards.
/// (With one shard, the first.)
fn register_off_shard(h: &Hearth, n: usize, prefix: &str, room: &str) -> (String, String) {
    let owner = shard_for_room(&RoomId::parse(room).unwrap(), n);
    for i in 0.. {
        let name = format!("{prefix}{i}");
        let uid = UserId::parse(format!("@{name}:localhost")).unwrap();
        if n == 1 || shard_for_user(&uid, n) != owner {
            return (register(h, &name), uid.to_string());
        }
    }
    unreachable!()
}

#[test]
fn sync_end_to_end() {
    let (h, opts, _db) = start();
    let alice = register(&h, "alice");
    let room = create_room(
        &h,
        &alice,
        json!({"preset": "private_chat", "name": "Lobby", "topic": "t"}),
    );
    let (bob, bob_id) = register_off_shard(&h, opts.shards, "bob", &room);

    // Initial sync: Alice's room with its state; Bob has nothing.
    let a0 = sync(&h, &alice, None, "");
    assert_shape(&a0);
    let st = state_of(&a0, "join", &room);
    let tl = timeline(&a0, "join", &room);
    assert!(
        find_state(st, "m.room.create", "").is_some()
            || tl.iter().any(|e| e["type"] == "m.room.create")
    );
    let summary = &a0["rooms"]["join"][&room]["summary"];
    assert_eq!(summary["m.joined_member_count"], 1, "{summary}");
    assert_eq!(
        a0["rooms"]["join"][&room]["unread_notifications"]["notification_count"],
        0
    );
    let b0 = sync(&h, &bob, None, "");
    assert_shape(&b0);
    assert!(b0["rooms"]["join"].as_object().unwrap().is_empty());
    let b0_next = next_batch(&b0);

    // The cheap path: nothing new, answered from memory.
    let r = sync_raw(&h, &bob, &format!("timeout=0&since={}", enc(&b0_next)));
    assert_eq!(r.header("X-Hearth-Sync"), Some("cheap"));
    let v = r.json();
    assert_shape(&v);
    assert_eq!(next_batch(&v), b0_next);

    // Wake-up on invite: Bob's long poll returns with the invite.
    let t = {
        let addr = h.addr;
        let (bob, since) = (bob.clone(), b0_next.clone());
        std::thread::spawn(move || long_poll(addr, &bob, &since, 20_000))
    };
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    membership(&h, &alice, &room, "invite", json!({"user_id": bob_id}));
    let (b1, waited) = t.join().unwrap();
    let latency = b1.1.saturating_duration_since(sent);
    eprintln!("invite wake-up after {latency:?} (parked {waited:?})");
    assert!(latency < Duration::from_secs(3), "{latency:?}");
    let b1 = b1.0;
    let inv = b1["rooms"]["invite"][&room]["invite_state"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{b1:#}"));
    assert!(inv
        .iter()
        .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Lobby"));
    assert!(inv.iter().any(|e| e["type"] == "m.room.create"));
    assert!(inv.iter().any(|e| e["type"] == "m.room.join_rules"));
    assert!(inv
        .iter()
        .any(|e| e["type"] == "m.room.member" && e["state_key"] == "@alice:localhost"));
    assert!(inv.iter().any(|e| e["type"] == "m.room.member"
        && e["state_key"] == bob_id.as_str()
        && e["content"]["membership"] == "invite"));

    // Bob joins: the room moves to `join` with full state.
    ok(call(
        &h,
        "POST",
        &format!("/join/{room}"),
        &bob,
        Some(json!({})),
    ));
    let b2 = sync(&h, &bob, Some(&next_batch(&b1)), "");
    assert!(b2["rooms"]["invite"].as_object().unwrap().is_empty());
    let st = state_of(&b2, "join", &room);
    let tl = timeline(&b2, "join", &room);
    let all: Vec<&Value> = st.iter().chain(tl.iter()).collect();
    assert!(all.iter().any(|e| e["type"] == "m.room.create"), "{b2:#}");
    assert!(all.iter().any(|e| e["type"] == "m.room.name"));
    assert!(tl
        .iter()
        .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob_id.as_str()));

    // A long poll woken within milliseconds by Alice's message: Bob's sync
    // runs on his shard, the event is written on the room's owner shard.
    let since = next_batch(&b2);
    let t = {
        let addr = h.addr;
        let (bob, since) = (bob.clone(), since.clone());
        std::thread::spawn(move || long_poll(addr, &bob, &since, 20_000))
    };
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    let e1 = send(&h, &alice, &room, "a1", "hello bob");
    let ((b3, returned), _) = t.join().unwrap();
    let latency = returned.saturating_duration_since(sent);
    eprintln!("message wake-up after {latency:?}");
    assert!(latency < Duration::from_secs(3), "{latency:?}");
    let tl = timeline(&b3, "join", &room);
    assert_eq!(bodies(tl), vec!["hello bob"]);
    assert_eq!(tl[0]["event_id"], e1.as_str());
    assert!(tl[0]["unsigned"]["age"].is_i64());
    assert!(
        tl[0]["unsigned"].get("transaction_id").is_none(),
        "not Bob's"
    );
    assert_eq!(b3["rooms"]["join"][&room]["timeline"]["limited"], false);

    // Alice's own event carries her transaction id (local echo).
    let a1 = sync(&h, &alice, Some(&next_batch(&a0)), "");
    let mine = timeline(&a1, "join", &room)
        .iter()
        .find(|e| e["event_id"] == e1.as_str())
        .unwrap()
        .clone();
    assert_eq!(mine["unsigned"]["transaction_id"], "a1");

    // limited + prev_batch: 15 messages, default limit 10.
    let since = next_batch(&b3);
    for i in 0..15 {
        send(&h, &alice, &room, &format!("m{i}"), &format!("m{i}"));
    }
    let b4 = sync(&h, &bob, Some(&since), "");
    let j = &b4["rooms"]["join"][&room];
    assert_eq!(j["timeline"]["limited"], true);
    let tl = timeline(&b4, "join", &room);
    assert_eq!(
        bodies(tl),
        (5..15).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    let prev = j["timeline"]["prev_batch"].as_str().unwrap().to_owned();
    // A sync from prev_batch starts exactly at the first timeline event:
    // prev_batch is "just before it" on the room's shard.
    let from_prev = sync(&h, &bob, Some(&prev), "");
    let again = timeline(&from_prev, "join", &room);
    assert_eq!(again[0]["event_id"], tl[0]["event_id"], "{prev}");
    assert_eq!(bodies(again), bodies(tl));
    // Paging `/messages` back from prev_batch: `limited_gap_backfilled_by_messages`.

    // Incremental, unlimited: no state.
    let since = next_batch(&b4);
    send(&h, &alice, &room, "x1", "x1");
    let r = sync_raw(&h, &bob, &format!("timeout=0&since={}", enc(&since)));
    // Served from the shard's timeline window: no database read for it.
    assert_eq!(r.header("X-Hearth-Sync-Window"), Some("hits=1,misses=0"));
    let b5 = ok(r);
    assert!(state_of(&b5, "join", &room).is_empty());
    assert_eq!(bodies(timeline(&b5, "join", &room)), vec!["x1"]);

    // State at the start of the timeline: renamed twice inside it.
    let since = next_batch(&b5);
    set_name(&h, &alice, &room, "A");
    for i in 0..3 {
        send(&h, &alice, &room, &format!("r{i}"), &format!("r{i}"));
    }
    set_name(&h, &alice, &room, "B");
    send(&h, &alice, &room, "r3", "r3");
    set_name(&h, &alice, &room, "C");
    send(&h, &alice, &room, "r4", "r4");
    let filter = enc(&json!({"room": {"timeline": {"limit": 6}}}).to_string());
    for (label, v) in [
        ("initial", sync(&h, &bob, None, &format!("filter={filter}"))),
        (
            "incremental",
            sync(&h, &bob, Some(&since), &format!("filter={filter}")),
        ),
    ] {
        let tl = timeline(&v, "join", &room);
        assert_eq!(tl.len(), 6, "{label}");
        let names: Vec<&str> = tl
            .iter()
            .filter(|e| e["type"] == "m.room.name")
            .map(|e| e["content"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["B", "C"], "{label}");
        let st = state_of(&v, "join", &room);
        let name = find_state(st, "m.room.name", "").unwrap_or_else(|| panic!("{label}: {v:#}"));
        assert_eq!(
            name["content"]["name"], "A",
            "{label}: state is at the timeline start"
        );
        assert_eq!(v["rooms"]["join"][&room]["timeline"]["limited"], true);
    }

    // Leave: the room moves to `leave`, with the events up to the leave.
    let since = next_batch(&sync(&h, &bob, None, ""));
    send(&h, &alice, &room, "l0", "before leave");
    membership(&h, &bob, &room, "leave", json!({}));
    send(&h, &alice, &room, "l1", "after leave");
    let b6 = sync(&h, &bob, Some(&since), "");
    assert!(b6["rooms"]["join"].get(&room).is_none(), "{b6:#}");
    let tl = timeline(&b6, "leave", &room);
    assert_eq!(bodies(tl), vec!["before leave"]);
    let last = tl.last().unwrap();
    assert_eq!(last["type"], "m.room.member");
    assert_eq!(last["content"]["membership"], "leave");
    // Left rooms are absent from an initial sync unless asked for.
    let init = sync(&h, &bob, None, "");
    assert!(init["rooms"]["leave"].get(&room).is_none());
    let f = enc(&json!({"room": {"include_leave": true}}).to_string());
    let init = sync(&h, &bob, None, &format!("filter={f}"));
    assert_eq!(
        timeline(&init, "leave", &room).last().unwrap()["content"]["membership"],
        "leave"
    );
    // Later activity in the left room is not Bob's business.
    let since = next_batch(&b6);
    send(&h, &alice, &room, "l2", "still gone");
    let b7 = sync(&h, &bob, Some(&since), "");
    assert!(b7["rooms"]["leave"].get(&room).is_none(), "{b7:#}");
    assert!(b7["rooms"]["join"].get(&room).is_none());

    // Rejoin (after a new invite: the room is private): full state again.
    membership(&h, &alice, &room, "invite", json!({"user_id": bob_id}));
    ok(call(
        &h,
        "POST",
        &format!("/join/{room}"),
        &bob,
        Some(json!({})),
    ));
    let b8 = sync(&h, &bob, Some(&next_batch(&b7)), "");
    let st = state_of(&b8, "join", &room);
    assert!(find_state(st, "m.room.create", "").is_some(), "{b8:#}");
    let name = find_state(st, "m.room.name", "").unwrap();
    assert_eq!(name["content"]["name"], "C");
    assert!(b8["rooms"]["leave"].get(&room).is_none());
}

/// A sync with `timeout` on its own connection; returns the body, the
/// instant it returned, and how long it was parked.
fn long_poll(
    addr: std::net::SocketAddr,
    token: &str,
    since: &str,
    timeout_ms: u64,
) -> ((Value, Instant), Duration) {
    use std::io::Write;
    let start = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {V3}/sync?timeout={timeout_ms}&since={} HTTP/1.1\r\nHost: x\r\n\
         Connection: close\r\nAuthorization: Bearer {token}\r\n\r\n",
        enc(since)
    )
    .unwrap();
    let r = common::read_response(&mut s, false);
    let done = Instant::now();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    ((r.json(), done), done - start)
}

#[test]
fn filters_end_to_end() {
    let (h, _, _db) = start();
    let alice = register(&h, "alice");
    let bob = register(&h, "bob");
    let carol = register(&h, "carol");

    // Store, read back, own user only.
    let f = json!({"room": {"timeline": {"limit": 2, "types": ["m.room.message"]}}});
    let id = ok(call(
        &h,
        "POST",
        "/user/@alice:localhost/filter",
        &alice,
        Some(f.clone()),
    ))["filter_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let got = ok(call(
        &h,
        "GET",
        &format!("/user/@alice:localhost/filter/{id}"),
        &alice,
        None,
    ));
    assert_eq!(got, f);
    let id2 = ok(call(
        &h,
        "POST",
        "/user/@alice:localhost/filter",
        &alice,
        Some(json!({})),
    ))["filter_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(id, id2);
    assert_err(
        &call(
            &h,
            "GET",
            &format!("/user/@alice:localhost/filter/{id}"),
            &bob,
            None,
        ),
        403,
        "M_FORBIDDEN",
    );
    assert_err(
        &call(
            &h,
            "POST",
            "/user/@alice:localhost/filter",
            &bob,
            Some(json!({})),
        ),
        403,
        "M_FORBIDDEN",
    );
    assert_err(
        &call(&h, "GET", "/user/@alice:localhost/filter/999", &alice, None),
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &call(&h, "GET", "/user/@alice:localhost/filter/abc", &alice, None),
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &call(
            &h,
            "POST",
            "/user/@alice:localhost/filter",
            &alice,
            Some(json!({"room": {"timeline": {"limit": "ten"}}})),
        ),
        400,
        "M_BAD_JSON",
    );
    let r = request(
        &h,
        "POST",
        &format!("{V3}/user/@alice:localhost/filter"),
        Some(&alice),
        b"{not json",
    );
    assert_err(&r, 400, "M_NOT_JSON");

    // A room with three members where only Alice talks lately.
    let room = create_room(&h, &alice, json!({"preset": "public_chat"}));
    ok(call(
        &h,
        "POST",
        &format!("/join/{room}"),
        &bob,
        Some(json!({})),
    ));
    ok(call(
        &h,
        "POST",
        &format!("/join/{room}"),
        &carol,
        Some(json!({})),
    ));
    send(&h, &carol, &room, "c0", "carol speaks");
    for i in 0..3 {
        send(&h, &alice, &room, &format!("a{i}"), &format!("a{i}"));
    }
    // Stored filter: only messages, 2 of them.
    let v = sync(&h, &alice, None, &format!("filter={id}"));
    let tl = timeline(&v, "join", &room);
    assert_eq!(bodies(tl), vec!["a1", "a2"]);
    assert!(tl.iter().all(|e| e["type"] == "m.room.message"));
    assert_eq!(v["rooms"]["join"][&room]["timeline"]["limited"], true);
    // Inline, with not_senders and a state type filter.
    let inline = json!({"room": {"timeline": {"not_senders": ["@alice:localhost"]},
                                 "state": {"types": ["m.room.join_rules"]}}});
    let v = sync(
        &h,
        &alice,
        None,
        &format!("filter={}", enc(&inline.to_string())),
    );
    let tl = timeline(&v, "join", &room);
    assert!(
        tl.iter().all(|e| e["sender"] != "@alice:localhost"),
        "{v:#}"
    );
    assert_eq!(bodies(tl), vec!["carol speaks"]);
    assert!(state_of(&v, "join", &room)
        .iter()
        .all(|e| e["type"] == "m.room.join_rules"));
    // Rooms exclusion.
    let ex = json!({"room": {"not_rooms": [room]}});
    let v = sync(
        &h,
        &alice,
        None,
        &format!("filter={}", enc(&ex.to_string())),
    );
    assert!(v["rooms"]["join"].get(&room).is_none());

    // lazy_load_members: members of the timeline's senders and the user.
    let lazy = json!({"room": {"timeline": {"limit": 2}, "state": {"lazy_load_members": true}}});
    let v = sync(
        &h,
        &bob,
        None,
        &format!("filter={}", enc(&lazy.to_string())),
    );
    let members: Vec<&str> = state_of(&v, "join", &room)
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    let mut sorted = members.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["@alice:localhost", "@bob:localhost"], "{v:#}");
    assert!(find_state(state_of(&v, "join", &room), "m.room.create", "").is_some());
    // Incremental lazy sync: Carol talks, her member event comes along.
    let since = next_batch(&v);
    send(&h, &carol, &room, "c1", "carol again");
    let v = sync(
        &h,
        &bob,
        Some(&since),
        &format!("filter={}", enc(&lazy.to_string())),
    );
    assert!(
        find_state(
            state_of(&v, "join", &room),
            "m.room.member",
            "@carol:localhost"
        )
        .is_some(),
        "{v:#}"
    );

    // Bad filters on /sync.
    assert_err(
        &sync_raw(&h, &alice, "filter=12345"),
        400,
        "M_INVALID_PARAM",
    );
    assert_err(&sync_raw(&h, &alice, "filter=abc"), 400, "M_INVALID_PARAM");
    assert_err(
        &sync_raw(&h, &alice, &format!("filter={}", enc("{bad"))),
        400,
        "M_NOT_JSON",
    );
    let bad = json!({"room": {"timeline": {"limit": "x"}}}).to_string();
    assert_err(
        &sync_raw(&h, &alice, &format!("filter={}", enc(&bad))),
        400,
        "M_BAD_JSON",
    );
    // Bob cannot use Alice's stored filter id.
    assert_err(
        &sync_raw(&h, &bob, &format!("filter={id}")),
        400,
        "M_INVALID_PARAM",
    );
}

#[test]
fn malformed_params() {
    let (h, _, _db) = start();
    let alice = register(&h, "alice");
    for q in [
        "since=garbage",
        "since=s",
        "since=s1.2_",
        "since=s-1.0",
        "timeout=-1",
        "timeout=abc",
        "full_state=maybe",
        "set_presence=away",
    ] {
        assert_err(&sync_raw(&h, &alice, q), 400, "M_INVALID_PARAM");
    }
    let r = json_request(&h, "GET", &format!("{V3}/sync"), None, None);
    assert_err(&r, 401, "M_MISSING_TOKEN");
    // Well-formed tokens from the future or another shard count: clamped.
    let room = create_room(&h, &alice, json!({"name": "r"}));
    let cur = next_batch(&sync(&h, &alice, None, ""));
    for t in ["s999999.0_999999.0", "s1.0", "s0.0_0.0_0.0_0.0", &cur] {
        let v = sync(&h, &alice, Some(t), "");
        assert_shape(&v);
    }
    // From the future: nothing is lost after it either.
    let v = sync(&h, &alice, Some("s999999.0_999999.0"), "");
    let since = next_batch(&v);
    send(&h, &alice, &room, "f1", "after future token");
    let v = sync(&h, &alice, Some(&since), "");
    assert_eq!(
        bodies(timeline(&v, "join", &room)),
        vec!["after future token"]
    );
    // A token of another shard count reads missing shards as 0: full history.
    let v = sync(
        &h,
        &alice,
        Some("s0.0"),
        "full_state=true&set_presence=online",
    );
    assert!(v["rooms"]["join"].get(&room).is_some());
}

#[test]
fn tokens_survive_restart() {
    let (mut h, opts, _db) = start();
    let alice = register(&h, "alice");
    let bob = register(&h, "bob");
    let room = create_room(&h, &alice, json!({"preset": "public_chat"}));
    ok(call(
        &h,
        "POST",
        &format!("/join/{room}"),
        &bob,
        Some(json!({})),
    ));
    send(&h, &alice, &room, "p0", "before token");
    let since = next_batch(&sync(&h, &bob, None, ""));
    send(&h, &alice, &room, "p1", "one");
    send(&h, &alice, &room, "p2", "two");

    h.signal(libc::SIGTERM);
    assert_eq!(h.wait_exit(Duration::from_secs(60)), Some(0));
    let data_dir = std::mem::replace(&mut h.data_dir, tempfile::tempdir().unwrap());
    drop(h);
    let h = Hearth::start_in(opts, data_dir);

    // Nothing new since a post-restart token.
    let now = next_batch(&sync(&h, &bob, None, ""));
    let r = sync_raw(&h, &bob, &format!("timeout=0&since={}", enc(&now)));
    assert_eq!(r.header("X-Hearth-Sync"), Some("cheap"));
    send(&h, &alice, &room, "p3", "three");
    let v = sync(&h, &bob, Some(&since), "");
    assert_eq!(
        bodies(timeline(&v, "join", &room)),
        vec!["one", "two", "three"]
    );
    let v = sync(&h, &bob, Some(&now), "");
    assert_eq!(bodies(timeline(&v, "join", &room)), vec!["three"]);
}

/// Room events of a sync response's room, checked the way Element relies
/// on them: `state` never repeats an event of the timeline.
fn assert_state_disjoint(v: &Value, section: &str, room: &str) {
    let tl: Vec<&Value> = timeline(v, section, room)
        .iter()
        .map(|e| &e["event_id"])
        .collect();
    for e in state_of(v, section, room) {
        assert!(
            !tl.contains(&&e["event_id"]),
            "state repeats a timeline event {}: {v:#}",
            e["event_id"]
        );
    }
}

/// `GET /messages` pages (dir=b, limit 10) from `from` down to `to`.
fn page_back(h: &Hearth, token: &str, room: &str, from: &str, to: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut from = from.to_owned();
    for _ in 0..100 {
        let r = ok(call(
            h,
            "GET",
            &format!(
                "/rooms/{room}/messages?dir=b&limit=10&from={}&to={}",
                enc(&from),
                enc(to)
            ),
            token,
            None,
        ));
        let chunk = r["chunk"].as_array().unwrap();
        assert!(chunk.len() <= 10);
        out.extend(chunk.iter().cloned());
        match r["end"].as_str() {
            Some(end) => from = end.to_owned(),
            None => return out,
        }
    }
    panic!("/messages never reached {to}");
}

/// Issue #5: `limited`/`prev_batch` then `/messages?dir=b&from=prev_batch`
/// back-fills the gap exactly: 30 events while Bob's token is old, a sync
/// with timeline limit 5, then pages of 10 down to his old token give
/// exactly the 30 events, none twice, in order.
#[test]
fn limited_gap_backfilled_by_messages() {
    let (h, opts, _db) = start();
    let alice = register(&h, "alice");
    let room = create_room(&h, &alice, json!({"preset": "public_chat"}));
    let (bob, _) = register_off_shard(&h, opts.shards, "bob", &room);
    ok(call(
        &h,
        "POST",
        &format!("/join/{room}"),
        &bob,
        Some(json!({})),
    ));
    send(&h, &alice, &room, "before", "before");
    let since = next_batch(&sync(&h, &bob, None, ""));
    let sent: Vec<String> = (0..30)
        .map(|i| send(&h, &alice, &room, &format!("g{i}"), &format!("g{i}")))
        .collect();
    let f = enc(&json!({"room": {"timeline": {"limit": 5}}}).to_string());
    let v = sync(&h, &bob, Some(&since), &format!("filter={f}"));
    let j = &v["rooms"]["join"][&room];
    assert_eq!(j["timeline"]["limited"], true, "{v:#}");
    let tl = timeline(&v, "join", &room);
    assert_eq!(
        bodies(tl),
        (25..30).map(|i| format!("g{i}")).collect::<Vec<_>>()
    );
    assert_state_disjoint(&v, "join", &room);
    let prev = j["timeline"]["prev_batch"].as_str().unwrap();
    let older = page_back(&h, &bob, &room, prev, &since);
    // Newest first from /messages; the timeline is chronological.
    let mut ids: Vec<String> = older
        .iter()
        .rev()
        .chain(tl.iter())
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, sent, "the gap, exactly and in order");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 30, "no duplicates");
}

/// Sync serves events like `/messages` does (`rooms::serve`): a redaction
/// shows on the next sync (also of a range the shard's window had served),
/// state events carry `prev_content`; history visibility `joined` hides
/// what came before a join; invitees see only `invite_state`; forgotten
/// rooms are left out; Element's expectations (own `transaction_id`,
/// `state` disjoint from `timeline`, heroes without the user).
#[test]
fn serving_visibility_forget() {
    let (h, opts, _db) = start();
    let alice = register(&h, "alice");
    let room = create_room(
        &h,
        &alice,
        json!({"preset": "private_chat", "name": "Secrets",
               "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                                  "content": {"history_visibility": "joined"}}]}),
    );
    let (bob, bob_id) = register_off_shard(&h, opts.shards, "bob", &room);
    membership(&h, &alice, &room, "invite", json!({"user_id": bob_id}));
    ok(call(
        &h,
        "POST",
        &format!("/join/{room}"),
        &bob,
        Some(json!({})),
    ));
    let s0 = next_batch(&sync(&h, &bob, None, ""));

    // Redaction: the window served the event, then the redaction arrives.
    let victim = send(&h, &alice, &room, "v", "oops");
    let first = sync(&h, &bob, Some(&s0), "");
    assert_eq!(bodies(timeline(&first, "join", &room)), vec!["oops"]);
    let redaction = ok(call(
        &h,
        "PUT",
        &format!("/rooms/{room}/redact/{}/r1", enc(&victim)),
        &alice,
        Some(json!({"reason": "typo"})),
    ))["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let next = sync(&h, &bob, Some(&next_batch(&first)), "");
    let tl = timeline(&next, "join", &room);
    assert_eq!(tl.len(), 1, "{next:#}");
    assert_eq!(tl[0]["event_id"], redaction.as_str());
    assert_eq!(tl[0]["type"], "m.room.redaction");
    assert_eq!(tl[0]["redacts"], victim.as_str());
    // The same range as before, now with the event redacted.
    let again = sync(&h, &bob, Some(&s0), "");
    let tl = timeline(&again, "join", &room);
    let v = tl
        .iter()
        .find(|e| e["event_id"] == victim.as_str())
        .unwrap();
    assert_eq!(v["content"], json!({}), "{v:#}");
    assert_eq!(
        v["unsigned"]["redacted_because"]["event_id"],
        redaction.as_str()
    );
    assert!(v["unsigned"]["age"].is_i64());
    // Identical to what /messages serves.
    let msgs = ok(call(
        &h,
        "GET",
        &format!("/rooms/{room}/messages?dir=b&limit=5"),
        &bob,
        None,
    ));
    let m = msgs["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == victim.as_str())
        .unwrap();
    assert_eq!(m["content"], v["content"]);
    assert_eq!(
        m["unsigned"]["redacted_because"]["event_id"],
        v["unsigned"]["redacted_because"]["event_id"]
    );

    // prev_content on state events; Alice's own event has her txn id;
    // Bob is Alice's hero, not his own.
    let s1 = next_batch(&again);
    set_name(&h, &alice, &room, "Renamed");
    let mine = send(&h, &alice, &room, "a-txn", "from alice");
    let b = sync(&h, &bob, Some(&s1), "");
    let name = timeline(&b, "join", &room)
        .iter()
        .find(|e| e["type"] == "m.room.name")
        .unwrap();
    assert_eq!(
        name["unsigned"]["prev_content"]["name"], "Secrets",
        "{name:#}"
    );
    assert!(name["unsigned"]["replaces_state"].is_string());
    assert_state_disjoint(&b, "join", &room);
    let a = sync(&h, &alice, None, "");
    let own = timeline(&a, "join", &room)
        .iter()
        .find(|e| e["event_id"] == mine.as_str())
        .unwrap();
    assert_eq!(own["unsigned"]["transaction_id"], "a-txn");
    assert_state_disjoint(&a, "join", &room);
    let heroes = &a["rooms"]["join"][&room]["summary"]["m.heroes"];
    assert_eq!(heroes, &json!([bob_id]), "{heroes}");
    // Another device of Alice's gets no transaction id.
    let login = ok(json_request(
        &h,
        "POST",
        &format!("{V3}/login"),
        None,
        Some(&json!({"type": "m.login.password", "identifier":
            {"type": "m.id.user", "user": "alice"}, "password": "pw"})),
    ));
    let other = login["access_token"].as_str().unwrap();
    let o = sync(&h, other, None, "");
    let own = timeline(&o, "join", &room)
        .iter()
        .find(|e| e["event_id"] == mine.as_str())
        .unwrap();
    assert!(own["unsigned"].get("transaction_id").is_none(), "{own:#}");

    // History visibility `joined`: Carol, invited then joined, sees
    // nothing from before her join; while invited only `invite_state`.
    let (carol, carol_id) = register_off_shard(&h, opts.shards, "carol", &room);
    let c0 = next_batch(&sync(&h, &carol, None, ""));
    send(&h, &alice, &room, "s1", "secret before invite");
    membership(&h, &alice, &room, "invite", json!({"user_id": carol_id}));
    send(&h, &alice, &room, "s2", "secret while invited");
    let ci = sync(&h, &carol, Some(&c0), "");
    let inv = &ci["rooms"]["invite"][&room];
    assert!(inv["invite_state"]["events"].is_array(), "{ci:#}");
    assert!(inv.get("timeline").is_none() && inv.get("state").is_none());
    assert!(ci["rooms"]["join"].get(&room).is_none());
    ok(call(
        &h,
        "POST",
        &format!("/join/{room}"),
        &carol,
        Some(json!({})),
    ));
    send(&h, &alice, &room, "s3", "welcome carol");
    let f = enc(&json!({"room": {"timeline": {"limit": 50}}}).to_string());
    let joined_sync = sync(&h, &carol, Some(&next_batch(&ci)), &format!("filter={f}"));
    let initial = sync(&h, &carol, None, &format!("filter={f}"));
    for (label, v) in [("join sync", &joined_sync), ("initial", &initial)] {
        let tl = timeline(v, "join", &room);
        assert_eq!(bodies(tl), vec!["welcome carol"], "{label}: {v:#}");
        assert!(tl.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == carol_id.as_str()
            && e["content"]["membership"] == "join"));
        // Nothing of what was sent under `joined` before her join (the
        // room's first events predate the visibility setting: `shared`).
        for e in tl {
            assert!(e["type"] != "m.room.name", "{label}: {e:#}");
            assert!(e["content"]["membership"] != "invite", "{label}: {e:#}");
        }
        // The hidden state still reaches her through `state`.
        let st = state_of(v, "join", &room);
        assert!(st.iter().all(|e| e["type"] != "m.room.message"));
        let name = find_state(st, "m.room.name", "").unwrap_or_else(|| panic!("{label}"));
        assert_eq!(name["content"]["name"], "Renamed");
        assert_state_disjoint(v, "join", &room);
    }
    // The sync where the join arrives starts right at her join.
    let tl = timeline(&joined_sync, "join", &room);
    assert_eq!(tl[0]["type"], "m.room.member", "{joined_sync:#}");
    assert_eq!(tl[0]["state_key"], carol_id.as_str());
    let me = find_state(
        state_of(&joined_sync, "join", &room),
        "m.room.member",
        &carol_id,
    );
    assert_eq!(me.unwrap()["content"]["membership"], "invite");
    // /messages agrees: nothing before her join.
    let msgs = ok(call(
        &h,
        "GET",
        &format!("/rooms/{room}/messages?dir=b&limit=50"),
        &carol,
        None,
    ));
    assert_eq!(
        bodies(msgs["chunk"].as_array().unwrap()),
        vec!["welcome carol"]
    );

    // Forget: once left and forgotten, the room is in no section.
    let c1 = next_batch(&joined_sync);
    send(&h, &alice, &room, "f1", "bye soon");
    membership(&h, &carol, &room, "leave", json!({}));
    let include_leave = enc(&json!({"room": {"include_leave": true}}).to_string());
    let before_forget = sync(&h, &carol, Some(&c1), "");
    assert!(before_forget["rooms"]["leave"].get(&room).is_some());
    assert!(
        sync(&h, &carol, None, &format!("filter={include_leave}"))["rooms"]["leave"]
            .get(&room)
            .is_some()
    );
    membership(&h, &carol, &room, "forget", json!({}));
    for v in [
        sync(&h, &carol, Some(&c1), ""),
        sync(&h, &carol, None, &format!("filter={include_leave}")),
    ] {
        for s in ["join", "invite", "leave", "knock"] {
            assert!(v["rooms"][s].get(&room).is_none(), "{s}: {v:#}");
        }
    }
    // A new invite un-forgets it.
    membership(&h, &alice, &room, "invite", json!({"user_id": carol_id}));
    let v = sync(&h, &carol, Some(&c1), "");
    assert!(v["rooms"]["invite"].get(&room).is_some(), "{v:#}");
}
