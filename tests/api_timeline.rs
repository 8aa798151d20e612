//! End-to-end: reading room history over HTTP against the real binary (2
//! shards) and real PostgreSQL: `/messages` pagination round trips over a
//! 500-event room with stable tokens (after more sends and a restart),
//! sync tokens as `from`, redactions (v10 and v12), history visibility,
//! filters, `/context`, `timestamp_to_event`, forget, `/members?at=`,
//! `unsigned`, and malformed input.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{assert_err, call, enc, json_request, ok, register, Hearth, Opts, Resp, V3};
use hearth::db::testing::TestCluster;
use serde_json::{json, Value};

fn create(h: &Hearth, token: &str, body: Value) -> String {
    ok(call(h, "POST", "/createRoom", token, Some(body)))["room_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn send(h: &Hearth, token: &str, room: &str, txn: &str, content: Value) -> String {
    send_type(h, token, room, "m.room.message", txn, content)
}

fn send_type(h: &Hearth, token: &str, room: &str, ty: &str, txn: &str, content: Value) -> String {
    let r = call(
        h,
        "PUT",
        &format!("/rooms/{room}/send/{ty}/{txn}"),
        token,
        Some(content),
    );
    ok(r)["event_id"].as_str().unwrap().to_owned()
}

/// `PUT /send` over a fresh connection to `addr`.
fn send_to(addr: std::net::SocketAddr, token: &str, room: &str, txn: &str, content: &Value) {
    use std::io::Write;
    let body = content.to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "PUT {V3}/rooms/{room}/send/m.room.message/{txn} HTTP/1.1\r\nHost: x\r\n\
         Connection: close\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    ok(common::read_response(&mut s, false));
}

fn text(body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body})
}

fn put_state(h: &Hearth, token: &str, room: &str, ty: &str, content: Value) -> String {
    let r = call(
        h,
        "PUT",
        &format!("/rooms/{room}/state/{ty}"),
        token,
        Some(content),
    );
    ok(r)["event_id"].as_str().unwrap().to_owned()
}

fn join(h: &Hearth, token: &str, room: &str) {
    ok(call(
        h,
        "POST",
        &format!("/join/{room}"),
        token,
        Some(json!({})),
    ));
}

fn messages(h: &Hearth, token: &str, room: &str, query: &str) -> Value {
    ok(call(
        h,
        "GET",
        &format!("/rooms/{room}/messages?{query}"),
        token,
        None,
    ))
}

fn ids(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

fn bodies(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// Walks the whole room in `dir` with `limit`, returning (from-token,
/// page ids) per page.
fn walk(
    h: &Hearth,
    token: &str,
    room: &str,
    dir: &str,
    limit: usize,
) -> Vec<(Option<String>, Vec<String>)> {
    let mut pages = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..1000 {
        let q = match &from {
            Some(f) => format!("dir={dir}&limit={limit}&from={f}"),
            None => format!("dir={dir}&limit={limit}"),
        };
        let page = messages(h, token, room, &q);
        let got = ids(&page["chunk"]);
        assert!(got.len() <= limit);
        pages.push((from.clone(), got));
        match page.get("end").and_then(Value::as_str) {
            Some(end) => from = Some(end.to_owned()),
            None => return pages,
        }
    }
    panic!("pagination did not end");
}

fn flat(pages: &[(Option<String>, Vec<String>)]) -> Vec<String> {
    pages.iter().flat_map(|(_, p)| p.iter().cloned()).collect()
}

#[test]
fn pagination_round_trips_with_stable_tokens() {
    let db = TestCluster::shared().fresh_database();
    let opts = Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url());
    let mut h = Hearth::start(opts.clone());
    let alice = register(&h, "alice");
    let room = create(&h, &alice, json!({"preset": "public_chat"}));

    // 500 messages over 8 concurrent connections.
    // (`Hearth` is not `Sync`: the threads talk to its address.)
    let addr = h.addr;
    std::thread::scope(|s| {
        for t in 0..8 {
            let (alice, room) = (&alice, &room);
            s.spawn(move || {
                for i in (t..500).step_by(8) {
                    send_to(addr, alice, room, &format!("m{i}"), &text(&format!("m{i}")));
                }
            });
        }
    });

    let back = walk(&h, &alice, &room, "b", 37);
    let back_ids = flat(&back);
    let fwd = walk(&h, &alice, &room, "f", 37);
    let fwd_ids = flat(&fwd);
    let mut reversed = back_ids.clone();
    reversed.reverse();
    assert_eq!(fwd_ids, reversed, "forward walk = backward walk reversed");
    let unique: HashSet<&String> = back_ids.iter().collect();
    assert_eq!(unique.len(), back_ids.len(), "no duplicates");
    // Every message, plus the room's initial state events.
    let page_all = messages(&h, &alice, &room, "dir=f&limit=1000");
    let all_bodies = bodies(&page_all["chunk"]);
    assert_eq!(all_bodies.len(), 500);
    assert!(back_ids.len() > 500);
    assert_eq!(ids(&page_all["chunk"]), fwd_ids);
    assert_eq!(page_all["chunk"][0]["type"], "m.room.create");
    assert!(page_all.get("end").is_none());

    // Tokens are stable: the same page after more sends...
    let probe = |h: &Hearth| -> Vec<Vec<String>> {
        [3usize, 7, 11]
            .iter()
            .map(|&i| {
                let from = back[i].0.as_ref().unwrap();
                ids(&messages(h, &alice, &room, &format!("dir=b&limit=37&from={from}"))["chunk"])
            })
            .collect()
    };
    let head = messages(&h, &alice, &room, "dir=b&limit=1")["start"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..20 {
        send(&h, &alice, &room, &format!("late{i}"), text("late"));
    }
    let expected: Vec<Vec<String>> = [3usize, 7, 11].iter().map(|&i| back[i].1.clone()).collect();
    assert_eq!(probe(&h), expected);
    // Forward from the old head: exactly the late messages, oldest first.
    let after = messages(&h, &alice, &room, &format!("dir=f&limit=37&from={head}"));
    assert_eq!(bodies(&after["chunk"]), vec!["late"; 20]);
    assert!(after.get("end").is_none());
    // Forward from a back-walk token: that page's events come next, in order.
    let from = back[1].0.as_ref().unwrap();
    let next = ids(&messages(&h, &alice, &room, &format!("dir=f&limit=37&from={from}"))["chunk"]);
    let mut first_page = back[0].1.clone();
    first_page.reverse();
    assert_eq!(next, first_page);

    // Sync tokens: `s…` covers events with stream_ordering <= its shard's
    // position. Take a room token at an event (t{depth}_{shard}_{stream}).
    let page = messages(&h, &alice, &room, "dir=f&limit=100");
    let end = page["end"].as_str().unwrap();
    let last = ids(&page["chunk"]).pop().unwrap();
    let parts: Vec<i64> = end[1..].split('_').map(|p| p.parse().unwrap()).collect();
    let (shard, stream) = (parts[1] as usize, parts[2]);
    let mut pos = vec!["0.0".to_owned(); 2];
    pos[shard] = format!("{stream}.7");
    let sync_token = format!("s{}", pos.join("_"));
    let page = messages(
        &h,
        &alice,
        &room,
        &format!("dir=b&limit=3&from={sync_token}"),
    );
    assert_eq!(ids(&page["chunk"])[0], last, "at/before the token included");
    pos[shard] = format!("{}.0", stream - 1);
    let page = messages(
        &h,
        &alice,
        &room,
        &format!("dir=b&limit=3&from=s{}", pos.join("_")),
    );
    assert_ne!(ids(&page["chunk"])[0], last, "after the token excluded");
    let page = messages(&h, &alice, &room, "dir=b&limit=3&from=s0.0_0.0");
    assert_eq!(page["chunk"], json!([]));
    assert!(page.get("end").is_none());
    // dir=f from a sync token: strictly after it.
    pos[shard] = format!("{stream}.0");
    let page = messages(
        &h,
        &alice,
        &room,
        &format!("dir=f&limit=1&from=s{}", pos.join("_")),
    );
    let next = ids(&page["chunk"]);
    assert_eq!(next.len(), 1);
    assert_ne!(next[0], last);

    // ...and after a restart.
    h.signal(libc::SIGTERM);
    assert_eq!(h.wait_exit(Duration::from_secs(60)), Some(0));
    let data_dir = std::mem::replace(&mut h.data_dir, tempfile::tempdir().unwrap());
    drop(h);
    let h = Hearth::start_in(opts, data_dir);
    assert_eq!(probe(&h), expected);
}

fn get_event(h: &Hearth, token: &str, room: &str, id: &str) -> Resp {
    call(h, "GET", &format!("/rooms/{room}/event/{id}"), token, None)
}

fn redact(h: &Hearth, token: &str, room: &str, id: &str, txn: &str) -> Resp {
    call(
        h,
        "PUT",
        &format!("/rooms/{room}/redact/{id}/{txn}"),
        token,
        Some(json!({"reason": "spam"})),
    )
}

fn check_redactions(h: &Hearth, alice: &str, bob: &str, version: &str) {
    let room = create(
        h,
        alice,
        json!({"preset": "public_chat", "room_version": version, "topic": "old topic"}),
    );
    join(h, bob, &room);
    let a1 = send(h, alice, &room, "a1", text("alice one"));
    let a2 = send(h, alice, &room, "a2", text("alice two"));
    let b1 = send(h, bob, &room, "b1", text("bob one"));
    let b2 = send(h, bob, &room, "b2", text("bob two"));

    // Own event: fine, idempotent per txn id.
    let r1 = ok(redact(h, alice, &room, &a1, "r1"))["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(ok(redact(h, alice, &room, &a1, "r1"))["event_id"], r1);
    // Someone else's without the redact power level: 403; own: ok.
    assert_err(&redact(h, bob, &room, &a2, "x"), 403, "M_FORBIDDEN");
    // Also through PUT /send with content.redacts.
    let r = call(
        h,
        "PUT",
        &format!("/rooms/{room}/send/m.room.redaction/x2"),
        bob,
        Some(json!({"redacts": a2})),
    );
    assert_err(&r, 403, "M_FORBIDDEN");
    ok(redact(h, bob, &room, &b1, "rb1"));
    // With power (the creator): ok.
    ok(redact(h, alice, &room, &b2, "r2"));
    // Unknown event, event of another room, malformed id.
    let fake = "$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    assert_err(&redact(h, alice, &room, fake, "r3"), 404, "M_NOT_FOUND");
    let other = create(h, alice, json!({}));
    let o1 = send(h, alice, &other, "o1", text("elsewhere"));
    assert_err(&redact(h, alice, &room, &o1, "r4"), 404, "M_NOT_FOUND");

    // Served redacted in /event, with redacted_because.
    let ev = ok(get_event(h, alice, &room, &a1));
    assert_eq!(ev["content"], json!({}), "{ev}");
    let because = &ev["unsigned"]["redacted_because"];
    assert_eq!(because["event_id"], r1.as_str());
    assert_eq!(because["type"], "m.room.redaction");
    assert_eq!(because["content"]["reason"], "spam");
    assert_eq!(because["redacts"], a1.as_str());
    let red = ok(get_event(h, alice, &room, &r1));
    assert_eq!(red["redacts"], a1.as_str());
    if version == "10" {
        assert!(red["content"].get("redacts").is_none(), "{red}");
    } else {
        assert_eq!(red["content"]["redacts"], a1.as_str());
    }
    // The original stays untouched for others' events not redacted.
    assert_eq!(
        ok(get_event(h, bob, &room, &a2))["content"]["body"],
        "alice two"
    );

    // /messages and /context serve the redacted form too.
    let page = messages(h, bob, &room, "dir=b&limit=20");
    let chunk = page["chunk"].as_array().unwrap();
    let find = |id: &str| chunk.iter().find(|e| e["event_id"] == id).unwrap().clone();
    assert_eq!(find(&a1)["content"], json!({}));
    assert_eq!(find(&b1)["content"], json!({}));
    assert_eq!(
        find(&b2)["unsigned"]["redacted_because"]["sender"],
        "@alice:localhost"
    );
    assert_eq!(find(&a2)["content"]["body"], "alice two");
    let ctx = ok(call(
        h,
        "GET",
        &format!("/rooms/{room}/context/{a1}?limit=4"),
        bob,
        None,
    ));
    assert_eq!(ctx["event"]["content"], json!({}));
    assert_eq!(
        ctx["event"]["unsigned"]["redacted_because"]["event_id"],
        r1.as_str()
    );

    // Redacting a state event strips it in /state (topic is not kept by
    // either algorithm), prev_content of the next topic is redacted too.
    let topic = ok(call(
        h,
        "GET",
        &format!("/rooms/{room}/state/m.room.topic"),
        alice,
        None,
    ));
    assert_eq!(topic["topic"], "old topic");
    let state = ok(call(h, "GET", &format!("/rooms/{room}/state"), alice, None));
    let topic_id = state
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.topic")
        .unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(redact(h, alice, &room, &topic_id, "rt"));
    let topic = ok(call(
        h,
        "GET",
        &format!("/rooms/{room}/state/m.room.topic"),
        alice,
        None,
    ));
    assert_eq!(topic, json!({}));
    let t2 = put_state(h, alice, &room, "m.room.topic", json!({"topic": "new"}));
    let t2 = ok(get_event(h, alice, &room, &t2));
    assert_eq!(t2["unsigned"]["replaces_state"], topic_id.as_str());
    assert_eq!(t2["unsigned"]["prev_content"], json!({}));
    // A redacted member event keeps its membership (both algorithms).
    let members = ok(call(
        h,
        "GET",
        &format!("/rooms/{room}/members"),
        alice,
        None,
    ));
    let bob_member = members["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["state_key"] == "@bob:localhost")
        .unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(redact(h, alice, &room, &bob_member, "rm"));
    let members = ok(call(
        h,
        "GET",
        &format!("/rooms/{room}/members"),
        alice,
        None,
    ));
    let m = members["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["state_key"] == "@bob:localhost")
        .unwrap()
        .clone();
    assert_eq!(m["content"], json!({"membership": "join"}), "{m}");
    assert!(m["unsigned"]["redacted_because"].is_object());
}

#[test]
fn redactions_v10_and_v12() {
    let db = TestCluster::shared().fresh_database();
    let h = Hearth::start(Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url()));
    let alice = register(&h, "alice");
    let bob = register(&h, "bob");
    check_redactions(&h, &alice, &bob, "10");
    check_redactions(&h, &alice, &bob, "12");
}

fn members_of(h: &Hearth, token: &str, room: &str, query: &str) -> Vec<String> {
    let r = ok(call(
        h,
        "GET",
        &format!("/rooms/{room}/members?{query}"),
        token,
        None,
    ));
    let mut m: Vec<String> = r["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state_key"].as_str().unwrap().to_owned())
        .collect();
    m.sort();
    m
}

#[test]
fn history_visibility_forget_and_members_at() {
    let db = TestCluster::shared().fresh_database();
    let h = Hearth::start(Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url()));
    let alice = register(&h, "alice");
    let bob = register(&h, "bob");
    let carol = register(&h, "carol");
    let hv = |room: &str, v: &str| {
        put_state(
            &h,
            &alice,
            room,
            "m.room.history_visibility",
            json!({"history_visibility": v}),
        )
    };
    let all =
        |token: &str, room: &str| bodies(&messages(&h, token, room, "dir=b&limit=100")["chunk"]);

    // joined: a later joiner sees nothing from before their join.
    let joined = create(&h, &alice, json!({"preset": "public_chat"}));
    hv(&joined, "joined");
    let secret = send(&h, &alice, &joined, "s1", text("secret"));
    join(&h, &bob, &joined);
    send(&h, &alice, &joined, "s2", text("after join"));
    let page = messages(&h, &bob, &joined, "dir=b&limit=100");
    assert_eq!(bodies(&page["chunk"]), vec!["after join"]);
    let seen = ids(&page["chunk"]);
    assert!(!seen.contains(&secret));
    assert_eq!(
        page["chunk"][1]["state_key"], "@bob:localhost",
        "own join visible"
    );
    // (Events from while the room was `shared`, and the change to
    // `joined` itself, stay visible: the spec's boundary rule.)
    assert!(page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.history_visibility"
            && e["content"]["history_visibility"] == "joined"));
    assert_err(&get_event(&h, &bob, &joined, &secret), 404, "M_NOT_FOUND");
    let r = call(
        &h,
        "GET",
        &format!("/rooms/{joined}/context/{secret}"),
        &bob,
        None,
    );
    assert_err(&r, 404, "M_NOT_FOUND");
    assert_eq!(
        ok(get_event(&h, &alice, &joined, &secret))["content"]["body"],
        "secret"
    );
    // Non-members of a non-world-readable room: 403.
    let r = call(
        &h,
        "GET",
        &format!("/rooms/{joined}/messages?dir=b"),
        &carol,
        None,
    );
    assert_err(&r, 403, "M_FORBIDDEN");

    // shared (the default): history before the join is readable.
    let shared = create(&h, &alice, json!({"preset": "public_chat"}));
    send(&h, &alice, &shared, "h1", text("before bob"));
    let before_bob = messages(&h, &alice, &shared, "dir=b&limit=1")["start"]
        .as_str()
        .unwrap()
        .to_owned();
    join(&h, &bob, &shared);
    assert_eq!(all(&bob, &shared), vec!["before bob"]);

    // invited: from the invite on.
    let invited = create(&h, &alice, json!({"preset": "private_chat"}));
    hv(&invited, "invited");
    send(&h, &alice, &invited, "i0", text("x0"));
    ok(call(
        &h,
        "POST",
        &format!("/rooms/{invited}/invite"),
        &alice,
        Some(json!({"user_id": "@bob:localhost"})),
    ));
    send(&h, &alice, &invited, "i1", text("x1"));
    join(&h, &bob, &invited);
    send(&h, &alice, &invited, "i2", text("x2"));
    assert_eq!(all(&bob, &invited), vec!["x2", "x1"]);

    // world_readable: a non-member reads /messages (not the earlier
    // shared part), and /event of visible events.
    let world = create(&h, &alice, json!({"preset": "public_chat"}));
    send(&h, &alice, &world, "w0", text("w-shared"));
    hv(&world, "world_readable");
    let w1 = send(&h, &alice, &world, "w1", text("w-public"));
    assert_eq!(all(&carol, &world), vec!["w-public"]);
    assert_eq!(
        ok(get_event(&h, &carol, &world, &w1))["content"]["body"],
        "w-public"
    );

    // members?at: before bob joined he is not a member.
    assert_eq!(
        members_of(&h, &alice, &shared, &format!("at={before_bob}")),
        vec!["@alice:localhost"]
    );
    assert_eq!(
        members_of(&h, &alice, &shared, ""),
        vec!["@alice:localhost", "@bob:localhost"]
    );
    assert_eq!(
        members_of(
            &h,
            &alice,
            &shared,
            &format!("at={before_bob}&membership=leave")
        ),
        Vec::<String>::new()
    );
    let r = call(
        &h,
        "GET",
        &format!("/rooms/{shared}/members?at=bogus"),
        &alice,
        None,
    );
    assert_err(&r, 400, "M_INVALID_PARAM");

    // Departed: history up to the leave, nothing after.
    ok(call(
        &h,
        "POST",
        &format!("/rooms/{shared}/leave"),
        &bob,
        Some(json!({})),
    ));
    send(&h, &alice, &shared, "h2", text("after bob left"));
    assert_eq!(all(&bob, &shared), vec!["before bob"]);
    let fwd = bodies(&messages(&h, &bob, &shared, "dir=f&limit=100")["chunk"]);
    assert_eq!(fwd, vec!["before bob"]);
    // members?at for a departed user: as of their leave at the latest.
    assert_eq!(
        members_of(&h, &bob, &shared, "at=t9999_0_99999"),
        vec!["@alice:localhost", "@bob:localhost"]
    );

    // Forget: only after leaving (400 M_UNKNOWN while joined); afterwards
    // the history is closed, and rejoining un-forgets.
    let r = call(
        &h,
        "POST",
        &format!("/rooms/{joined}/forget"),
        &bob,
        Some(json!({})),
    );
    assert_err(&r, 400, "M_UNKNOWN");
    ok(call(
        &h,
        "POST",
        &format!("/rooms/{shared}/forget"),
        &bob,
        Some(json!({})),
    ));
    let r = call(
        &h,
        "GET",
        &format!("/rooms/{shared}/messages?dir=b"),
        &bob,
        None,
    );
    assert_err(&r, 403, "M_FORBIDDEN");
    join(&h, &bob, &shared);
    assert_eq!(all(&bob, &shared)[0], "after bob left");
}

#[test]
fn filters_context_timestamps_unsigned_and_errors() {
    let db = TestCluster::shared().fresh_database();
    let h = Hearth::start(Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url()));
    let alice = register(&h, "alice");
    let bob = register(&h, "bob");
    let room = create(&h, &alice, json!({"preset": "public_chat"}));
    join(&h, &bob, &room);
    let mut sent = Vec::new();
    for i in 0..10 {
        let (who, name) = if i % 2 == 0 {
            (&alice, "a")
        } else {
            (&bob, "b")
        };
        sent.push(send(
            &h,
            who,
            &room,
            &format!("f{i}"),
            text(&format!("{name}{i}")),
        ));
    }
    send(
        &h,
        &alice,
        &room,
        "img",
        json!({"msgtype": "m.image", "body": "pic", "url": "mxc://localhost/x"}),
    );
    send_type(&h, &bob, &room, "org.example.custom", "c1", json!({"k": 1}));

    let filtered = |f: Value, extra: &str| {
        messages(
            &h,
            &alice,
            &room,
            &format!("dir=b&limit=50&filter={}{extra}", enc(&f.to_string())),
        )
    };
    let page = filtered(
        json!({"senders": ["@bob:localhost"], "types": ["m.room.message"]}),
        "",
    );
    assert_eq!(bodies(&page["chunk"]), vec!["b9", "b7", "b5", "b3", "b1"]);
    let page = filtered(
        json!({"not_senders": ["@bob:localhost"], "not_types": ["m.room.member"], "types": ["m.*"]}),
        "",
    );
    assert_eq!(bodies(&page["chunk"])[..3], ["pic", "a8", "a6"]);
    assert!(page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["sender"] == "@alice:localhost"));
    let page = filtered(json!({"contains_url": true}), "");
    assert_eq!(bodies(&page["chunk"]), vec!["pic"]);
    let page = filtered(json!({"types": ["org.example.*"]}), "");
    assert_eq!(page["chunk"][0]["content"]["k"], 1);
    assert_eq!(page["chunk"].as_array().unwrap().len(), 1);
    let page = filtered(json!({"types": []}), "");
    assert_eq!(page["chunk"], json!([]));
    // The filter's limit caps the query's; filtered pagination has no gaps.
    let page = filtered(
        json!({"limit": 2, "types": ["m.room.message"], "senders": ["@alice:localhost"]}),
        "",
    );
    assert_eq!(bodies(&page["chunk"]), vec!["pic", "a8"]);
    let end = page["end"].as_str().unwrap().to_owned();
    let page = filtered(
        json!({"limit": 2, "types": ["m.room.message"], "senders": ["@alice:localhost"]}),
        &format!("&from={end}"),
    );
    assert_eq!(bodies(&page["chunk"]), vec!["a6", "a4"]);
    // lazy_load_members: the senders' member events in `state`.
    let page = filtered(
        json!({"lazy_load_members": true, "senders": ["@bob:localhost"]}),
        "",
    );
    let state = page["state"].as_array().unwrap();
    assert_eq!(state.len(), 1);
    assert_eq!(state[0]["state_key"], "@bob:localhost");

    // unsigned: age; transaction_id only for the sending device.
    let page = messages(&h, &alice, &room, "dir=b&limit=20");
    let a8 = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["content"]["body"] == "a8")
        .unwrap()
        .clone();
    assert!(a8["unsigned"]["age"].as_u64().is_some());
    assert_eq!(a8["unsigned"]["transaction_id"], "f8");
    let b9 = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["content"]["body"] == "b9")
        .unwrap()
        .clone();
    assert!(b9["unsigned"].get("transaction_id").is_none());
    let ev = ok(get_event(&h, &alice, &room, &sent[0]));
    assert_eq!(ev["unsigned"]["transaction_id"], "f0");
    let login = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw"});
    let other_device = ok(json_request(
        &h,
        "POST",
        &format!("{V3}/login"),
        None,
        Some(&login),
    ))["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let ev = ok(get_event(&h, &other_device, &room, &sent[0]));
    assert!(ev["unsigned"].get("transaction_id").is_none(), "{ev}");
    // prev_content on state changes.
    put_state(&h, &alice, &room, "m.room.topic", json!({"topic": "one"}));
    let t2 = put_state(&h, &alice, &room, "m.room.topic", json!({"topic": "two"}));
    let t2 = ok(get_event(&h, &alice, &room, &t2));
    assert_eq!(t2["unsigned"]["prev_content"]["topic"], "one");
    assert_eq!(t2["unsigned"]["prev_sender"], "@alice:localhost");

    // /context: half the limit before, the rest after, tokens continue.
    let mid = &sent[5];
    let ctx = ok(call(
        &h,
        "GET",
        &format!("/rooms/{room}/context/{mid}?limit=4"),
        &alice,
        None,
    ));
    assert_eq!(ctx["event"]["content"]["body"], "b5");
    assert_eq!(bodies(&ctx["events_before"]), vec!["a4", "b3"]);
    assert_eq!(bodies(&ctx["events_after"]), vec!["a6", "b7"]);
    assert!(ctx["state"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.create"));
    let start = ctx["start"].as_str().unwrap();
    let back = messages(&h, &alice, &room, &format!("dir=b&limit=2&from={start}"));
    assert_eq!(bodies(&back["chunk"]), vec!["a2", "b1"]);
    let end = ctx["end"].as_str().unwrap();
    let fwd = messages(&h, &alice, &room, &format!("dir=f&limit=2&from={end}"));
    assert_eq!(bodies(&fwd["chunk"]), vec!["a8", "b9"]);
    let f = enc(&json!({"senders": ["@alice:localhost"], "lazy_load_members": true}).to_string());
    let ctx = ok(call(
        &h,
        "GET",
        &format!("/rooms/{room}/context/{mid}?limit=4&filter={f}"),
        &alice,
        None,
    ));
    assert_eq!(bodies(&ctx["events_before"]), vec!["a4", "a2"]);
    let members: Vec<&str> = ctx["state"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    assert_eq!(
        members.len(),
        2,
        "senders of the event and the returned events"
    );

    // timestamp_to_event.
    let e3 = ok(get_event(&h, &alice, &room, &sent[3]));
    let ts = e3["origin_server_ts"].as_i64().unwrap();
    let tte = |ts: i64, dir: &str| {
        call(
            &h,
            "GET",
            &format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?ts={ts}&dir={dir}"),
            &alice,
            None,
        )
    };
    let r = ok(tte(ts, "f"));
    assert!(r["origin_server_ts"].as_i64().unwrap() >= ts);
    let r = ok(tte(ts, "b"));
    assert!(r["origin_server_ts"].as_i64().unwrap() <= ts);
    let first = ok(tte(0, "f"));
    let create_ev = messages(&h, &alice, &room, "dir=f&limit=1");
    assert_eq!(first["event_id"], create_ev["chunk"][0]["event_id"]);
    assert_err(&tte(0, "b"), 404, "M_NOT_FOUND");
    let r = call(
        &h,
        "GET",
        &format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?dir=f"),
        &alice,
        None,
    );
    assert_err(&r, 400, "M_MISSING_PARAM");
    assert_err(&tte(ts, "x"), 400, "M_INVALID_PARAM");

    // Malformed input.
    let bad = |q: &str, code: &str| {
        let r = call(
            &h,
            "GET",
            &format!("/rooms/{room}/messages?{q}"),
            &alice,
            None,
        );
        assert_err(&r, 400, code);
    };
    bad("dir=b&from=garbage", "M_INVALID_PARAM");
    bad("dir=b&from=t1_2", "M_INVALID_PARAM");
    bad("dir=b&from=s1", "M_INVALID_PARAM");
    bad("dir=b&to=x", "M_INVALID_PARAM");
    bad("dir=x", "M_INVALID_PARAM");
    bad("dir=b&limit=-1", "M_INVALID_PARAM");
    bad("dir=b&limit=ten", "M_INVALID_PARAM");
    bad(&format!("dir=b&filter={}", enc("{nope")), "M_NOT_JSON");
    bad(&format!("dir=b&filter={}", enc("[1]")), "M_BAD_JSON");
    bad(
        &format!("dir=b&filter={}", enc(r#"{"types":"m.room.message"}"#)),
        "M_BAD_JSON",
    );
    let r = call(&h, "GET", "/rooms/not-a-room/messages?dir=b", &alice, None);
    assert_err(&r, 400, "M_INVALID_PARAM");
    let r = call(
        &h,
        "GET",
        &format!("/rooms/{room}/context/not-an-event"),
        &alice,
        None,
    );
    assert_err(&r, 404, "M_NOT_FOUND");
    let r = call(
        &h,
        "GET",
        &format!("/rooms/{room}/context/$nope"),
        &alice,
        None,
    );
    assert_err(&r, 404, "M_NOT_FOUND");
    let r = call(
        &h,
        "GET",
        "/rooms/!nope:localhost/messages?dir=b",
        &alice,
        None,
    );
    assert_err(&r, 403, "M_FORBIDDEN");
    // Limit 0: an empty chunk; huge limits are capped.
    let page = messages(&h, &alice, &room, "dir=b&limit=0");
    assert_eq!(page["chunk"], json!([]));
    let page = messages(&h, &alice, &room, "dir=f&limit=100000");
    assert!(page.get("end").is_none());
    // Still serving.
    assert_eq!(
        messages(&h, &alice, &room, "dir=b&limit=1")["chunk"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
