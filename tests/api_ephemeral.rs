//! End-to-end: typing, receipts, read markers, account data, tags,
//! presence and send-to-device over HTTP against the real binary (2
//! shards) and real PostgreSQL, with their failure cases, and a restart
//! keeping receipts, account data, tags and undelivered to-device messages.

mod common;

use std::time::Duration;

use common::{assert_err, call, json_request, ok, request, Hearth, Opts, V3};
use hearth::db::testing::{TestCluster, TestDb};
use serde_json::{json, Value};

/// A registered user (token, id, device).
type User = common::Registered;

fn register(h: &Hearth, name: &str) -> User {
    common::register_user(h, name)
}

fn psql(db: &TestDb, sql: &str) -> String {
    TestCluster::shared().psql(&db.dbname, sql).expect("psql")
}

fn send_text(h: &Hearth, u: &User, room: &str, txn: &str) -> String {
    ok(call(
        h,
        "PUT",
        &format!("/rooms/{room}/send/m.room.message/{txn}"),
        &u.token,
        Some(json!({"msgtype": "m.text", "body": txn})),
    ))["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn ephemeral_endpoints_end_to_end_and_restart() {
    let db = TestCluster::shared().fresh_database();
    let opts = Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url());
    let mut h = Hearth::start(opts.clone());
    let alice = register(&h, "alice");
    let bob = register(&h, "bob");
    let carol = register(&h, "carol");
    let room = ok(call(
        &h,
        "POST",
        "/createRoom",
        &alice.token,
        Some(json!({"preset": "public_chat"})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(call(
        &h,
        "POST",
        &format!("/rooms/{room}/join"),
        &bob.token,
        Some(json!({})),
    ));
    let e1 = send_text(&h, &alice, &room, "t1");
    let e2 = send_text(&h, &alice, &room, "t2");

    typing(&h, &room, &alice, &bob, &carol);
    receipts(&h, &db, &room, &alice, &bob, &carol, &e1, &e2);
    account_data(&h, &room, &alice, &bob);
    tags(&h, &room, &alice, &bob);
    presence(&h, &alice, &bob, &carol);
    to_device(&h, &db, &alice, &bob);

    // Restart: durable data survives, positions resume past it.
    h.signal(libc::SIGTERM);
    assert_eq!(h.wait_exit(Duration::from_secs(60)), Some(0));
    let data_dir = std::mem::replace(&mut h.data_dir, tempfile::tempdir().unwrap());
    drop(h);
    let h = Hearth::start_in(opts, data_dir);
    let path = format!("/user/{}/account_data/org.example.settings", alice.id);
    assert_eq!(
        ok(call(&h, "GET", &path, &alice.token, None)),
        json!({"theme": "dark"})
    );
    let tags_path = format!("/user/{}/rooms/{room}/tags", alice.id);
    assert_eq!(
        ok(call(&h, "GET", &tags_path, &alice.token, None))["tags"],
        json!({"m.favourite": {"order": 0.25}})
    );
    let marker = format!("/user/{}/rooms/{room}/account_data/m.fully_read", bob.id);
    assert_eq!(
        ok(call(&h, "GET", &marker, &bob.token, None)),
        json!({"event_id": e2})
    );
    assert_eq!(
        psql(&db, "SELECT count(*) FROM receipts"),
        "3",
        "receipts kept across the restart"
    );
    assert_eq!(psql(&db, "SELECT count(*) FROM device_inbox"), "2");
    // New writes after the restart get positions past every stored one.
    let shard_of = psql(
        &db,
        "SELECT stream_shard FROM account_data WHERE type = 'org.example.settings' AND room_id = ''",
    );
    let max_of_shard: i64 = psql(
        &db,
        &format!(
            "SELECT max(m) FROM (\
               SELECT max(stream_ordering) m FROM events WHERE stream_shard = {shard_of} \
               UNION ALL SELECT max(stream_ordering) FROM receipts WHERE stream_shard = {shard_of} \
               UNION ALL SELECT max(stream_ordering) FROM to_device_txns WHERE stream_shard = {shard_of} \
               UNION ALL SELECT max(stream_ordering) FROM account_data WHERE stream_shard = {shard_of}) x"
        ),
    )
    .parse()
    .unwrap();
    ok(call(
        &h,
        "PUT",
        &path,
        &alice.token,
        Some(json!({"theme": "light"})),
    ));
    let new_pos: i64 = psql(
        &db,
        "SELECT stream_ordering FROM account_data WHERE type = 'org.example.settings' AND room_id = ''",
    )
    .parse()
    .unwrap();
    assert!(new_pos > max_of_shard, "{new_pos} > {max_of_shard}");
}

fn typing(h: &Hearth, room: &str, alice: &User, bob: &User, carol: &User) {
    let path = |u: &User| format!("/rooms/{room}/typing/{}", u.id);
    ok(call(
        h,
        "PUT",
        &path(alice),
        &alice.token,
        Some(json!({"typing": true, "timeout": 30000})),
    ));
    ok(call(
        h,
        "PUT",
        &path(alice),
        &alice.token,
        Some(json!({"typing": false})),
    ));
    // Someone else's typing state: 403.
    assert_err(
        &call(
            h,
            "PUT",
            &path(bob),
            &alice.token,
            Some(json!({"typing": true})),
        ),
        403,
        "M_FORBIDDEN",
    );
    // Not in the room: 403.
    assert_err(
        &call(
            h,
            "PUT",
            &path(carol),
            &carol.token,
            Some(json!({"typing": true})),
        ),
        403,
        "M_FORBIDDEN",
    );
    // Bad bodies.
    assert_err(
        &call(h, "PUT", &path(alice), &alice.token, Some(json!({}))),
        400,
        "M_BAD_JSON",
    );
    assert_err(
        &call(
            h,
            "PUT",
            &path(alice),
            &alice.token,
            Some(json!({"typing": "yes"})),
        ),
        400,
        "M_BAD_JSON",
    );
    let r = request(
        h,
        "PUT",
        &format!("{V3}{}", path(alice)),
        Some(&alice.token),
        b"{not json",
    );
    assert_err(&r, 400, "M_NOT_JSON");
    assert_err(
        &call(
            h,
            "PUT",
            &format!("/rooms/!nope:localhost/typing/{}", alice.id),
            &alice.token,
            Some(json!({"typing": true})),
        ),
        403,
        "M_FORBIDDEN",
    );
}

#[allow(clippy::too_many_arguments)]
fn receipts(
    h: &Hearth,
    db: &TestDb,
    room: &str,
    alice: &User,
    bob: &User,
    carol: &User,
    e1: &str,
    e2: &str,
) {
    let post = |u: &User, kind: &str, ev: &str, body: Value| {
        call(
            h,
            "POST",
            &format!("/rooms/{room}/receipt/{kind}/{ev}"),
            &u.token,
            Some(body),
        )
    };
    ok(post(bob, "m.read", e2, json!({})));
    // An older event does not move the receipt back (as Synapse).
    ok(post(bob, "m.read", e1, json!({})));
    assert_eq!(
        psql(
            db,
            &format!(
                "SELECT event_id FROM receipts WHERE user_id = '{}' AND receipt_type = 'm.read'",
                bob.id
            )
        ),
        e2
    );
    ok(post(bob, "m.read.private", e1, json!({})));
    ok(post(alice, "m.read", e1, json!({"thread_id": "main"})));
    assert_eq!(
        psql(
            db,
            &format!(
                "SELECT thread_id FROM receipts WHERE user_id = '{}'",
                alice.id
            )
        ),
        "main"
    );
    // Failure cases.
    assert_err(
        &post(bob, "m.read", "$unknown", json!({})),
        404,
        "M_NOT_FOUND",
    );
    assert_err(&post(bob, "m.bogus", e1, json!({})), 400, "M_INVALID_PARAM");
    assert_err(&post(carol, "m.read", e1, json!({})), 403, "M_FORBIDDEN");
    assert_err(
        &post(bob, "m.read", e1, json!({"thread_id": ""})),
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &post(bob, "m.read", e1, json!({"thread_id": 5})),
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &post(bob, "m.fully_read", e1, json!({"thread_id": "main"})),
        400,
        "M_INVALID_PARAM",
    );
    // m.fully_read through /receipt = the read marker (room account data).
    ok(post(bob, "m.fully_read", e1, json!({})));
    let marker = format!("/user/{}/rooms/{room}/account_data/m.fully_read", bob.id);
    assert_eq!(
        ok(call(h, "GET", &marker, &bob.token, None)),
        json!({"event_id": e1})
    );

    // /read_markers: marker forward, plus a receipt in the same call.
    let rm = |u: &User, body: Value| {
        call(
            h,
            "POST",
            &format!("/rooms/{room}/read_markers"),
            &u.token,
            Some(body),
        )
    };
    ok(rm(bob, json!({"m.fully_read": e2, "m.read.private": e2})));
    assert_eq!(
        ok(call(h, "GET", &marker, &bob.token, None)),
        json!({"event_id": e2})
    );
    // The marker does not move back.
    ok(rm(bob, json!({"m.fully_read": e1})));
    assert_eq!(
        ok(call(h, "GET", &marker, &bob.token, None)),
        json!({"event_id": e2})
    );
    assert_eq!(
        psql(db, &format!("SELECT event_id FROM receipts WHERE user_id = '{}' AND receipt_type = 'm.read.private'", bob.id)),
        e2
    );
    assert_err(&rm(bob, json!({"m.fully_read": 3})), 400, "M_BAD_JSON");
    assert_err(
        &rm(bob, json!({"m.fully_read": "$missing"})),
        404,
        "M_NOT_FOUND",
    );
    assert_err(&rm(carol, json!({"m.fully_read": e1})), 403, "M_FORBIDDEN");
}

fn account_data(h: &Hearth, room: &str, alice: &User, bob: &User) {
    let global = |u: &User, kind: &str| format!("/user/{}/account_data/{kind}", u.id);
    let in_room = |u: &User, kind: &str| format!("/user/{}/rooms/{room}/account_data/{kind}", u.id);
    let p = global(alice, "org.example.settings");
    assert_err(&call(h, "GET", &p, &alice.token, None), 404, "M_NOT_FOUND");
    ok(call(
        h,
        "PUT",
        &p,
        &alice.token,
        Some(json!({"theme": "dark"})),
    ));
    assert_eq!(
        ok(call(h, "GET", &p, &alice.token, None)),
        json!({"theme": "dark"})
    );
    // Room account data is separate from global (no inheritance).
    let rp = in_room(alice, "org.example.settings");
    assert_err(&call(h, "GET", &rp, &alice.token, None), 404, "M_NOT_FOUND");
    ok(call(
        h,
        "PUT",
        &rp,
        &alice.token,
        Some(json!({"pinned": true})),
    ));
    assert_eq!(
        ok(call(h, "GET", &rp, &alice.token, None)),
        json!({"pinned": true})
    );
    assert_eq!(
        ok(call(h, "GET", &p, &alice.token, None)),
        json!({"theme": "dark"})
    );
    // Other users' account data: 403 both ways.
    assert_err(&call(h, "GET", &p, &bob.token, None), 403, "M_FORBIDDEN");
    assert_err(
        &call(h, "PUT", &p, &bob.token, Some(json!({}))),
        403,
        "M_FORBIDDEN",
    );
    assert_err(&call(h, "GET", &rp, &bob.token, None), 403, "M_FORBIDDEN");
    // Server-managed types: 405.
    for kind in ["m.fully_read", "m.push_rules"] {
        assert_err(
            &call(
                h,
                "PUT",
                &global(alice, kind),
                &alice.token,
                Some(json!({})),
            ),
            405,
            "M_BAD_JSON",
        );
        assert_err(
            &call(
                h,
                "PUT",
                &in_room(alice, kind),
                &alice.token,
                Some(json!({})),
            ),
            405,
            "M_BAD_JSON",
        );
    }
    // Bodies: not JSON, not an object.
    let r = request(h, "PUT", &format!("{V3}{p}"), Some(&alice.token), b"nope");
    assert_err(&r, 400, "M_NOT_JSON");
    let r = request(h, "PUT", &format!("{V3}{p}"), Some(&alice.token), b"");
    assert_err(&r, 400, "M_NOT_JSON");
    assert_err(
        &call(h, "PUT", &p, &alice.token, Some(json!([1, 2]))),
        400,
        "M_BAD_JSON",
    );
    // Bad room id.
    let bad = format!("/user/{}/rooms/not-a-room/account_data/x", alice.id);
    assert_err(
        &call(h, "GET", &bad, &alice.token, None),
        400,
        "M_INVALID_PARAM",
    );
    // No token.
    let r = json_request(h, "GET", &format!("{V3}{p}"), None, None);
    assert_err(&r, 401, "M_MISSING_TOKEN");
}

fn tags(h: &Hearth, room: &str, alice: &User, bob: &User) {
    let list = format!("/user/{}/rooms/{room}/tags", alice.id);
    let tag = |t: &str| format!("/user/{}/rooms/{room}/tags/{t}", alice.id);
    assert_eq!(
        ok(call(h, "GET", &list, &alice.token, None)),
        json!({"tags": {}})
    );
    ok(call(
        h,
        "PUT",
        &tag("m.favourite"),
        &alice.token,
        Some(json!({"order": 0.25})),
    ));
    ok(call(
        h,
        "PUT",
        &tag("u.work"),
        &alice.token,
        Some(json!({})),
    ));
    assert_eq!(
        ok(call(h, "GET", &list, &alice.token, None))["tags"],
        json!({"m.favourite": {"order": 0.25}, "u.work": {}})
    );
    // Tags are the room's m.tag account data.
    let mtag = format!("/user/{}/rooms/{room}/account_data/m.tag", alice.id);
    assert_eq!(
        ok(call(h, "GET", &mtag, &alice.token, None))["tags"]["m.favourite"],
        json!({"order": 0.25})
    );
    ok(call(h, "DELETE", &tag("u.work"), &alice.token, None));
    ok(call(h, "DELETE", &tag("u.never-set"), &alice.token, None));
    assert_eq!(
        ok(call(h, "GET", &list, &alice.token, None))["tags"],
        json!({"m.favourite": {"order": 0.25}})
    );
    // Failures: bad order, too long a name, someone else's tags, bad body.
    assert_err(
        &call(
            h,
            "PUT",
            &tag("u.x"),
            &alice.token,
            Some(json!({"order": 2})),
        ),
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &call(
            h,
            "PUT",
            &tag("u.x"),
            &alice.token,
            Some(json!({"order": "high"})),
        ),
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &call(
            h,
            "PUT",
            &tag(&"x".repeat(256)),
            &alice.token,
            Some(json!({})),
        ),
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &call(h, "PUT", &tag("u.x"), &alice.token, Some(json!(7))),
        400,
        "M_BAD_JSON",
    );
    assert_err(&call(h, "GET", &list, &bob.token, None), 403, "M_FORBIDDEN");
    assert_err(
        &call(h, "PUT", &tag("u.x"), &bob.token, Some(json!({}))),
        403,
        "M_FORBIDDEN",
    );
    assert_err(
        &call(h, "DELETE", &tag("m.favourite"), &bob.token, None),
        403,
        "M_FORBIDDEN",
    );
}

fn presence(h: &Hearth, alice: &User, bob: &User, carol: &User) {
    let status = |u: &User| format!("/presence/{}/status", u.id);
    // Never set: offline.
    assert_eq!(
        ok(call(h, "GET", &status(alice), &alice.token, None)),
        json!({"presence": "offline"})
    );
    ok(call(
        h,
        "PUT",
        &status(alice),
        &alice.token,
        Some(json!({"presence": "online", "status_msg": "hi"})),
    ));
    let p = ok(call(h, "GET", &status(alice), &bob.token, None));
    assert_eq!(p["presence"], "online");
    assert_eq!(p["status_msg"], "hi");
    assert_eq!(p["currently_active"], true);
    assert!(p["last_active_ago"].as_u64().unwrap() < 60_000);
    ok(call(
        h,
        "PUT",
        &status(alice),
        &alice.token,
        Some(json!({"presence": "unavailable"})),
    ));
    let p = ok(call(h, "GET", &status(alice), &alice.token, None));
    assert_eq!(p["presence"], "unavailable");
    assert!(p.get("status_msg").is_none(), "{p}");
    // A plain /sync (no set_presence) marks the user online (spec default).
    ok(call(h, "GET", "/sync?timeout=0", &bob.token, None));
    assert_eq!(
        ok(call(h, "GET", &status(bob), &alice.token, None))["presence"],
        "online"
    );
    // Carol shares no room with alice: 403.
    assert_err(
        &call(h, "GET", &status(alice), &carol.token, None),
        403,
        "M_FORBIDDEN",
    );
    // Someone else's presence, bad state, bad body.
    assert_err(
        &call(
            h,
            "PUT",
            &status(bob),
            &alice.token,
            Some(json!({"presence": "online"})),
        ),
        403,
        "M_FORBIDDEN",
    );
    assert_err(
        &call(
            h,
            "PUT",
            &status(alice),
            &alice.token,
            Some(json!({"presence": "asleep"})),
        ),
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &call(h, "PUT", &status(alice), &alice.token, Some(json!({}))),
        400,
        "M_BAD_JSON",
    );
    assert_err(
        &call(h, "GET", "/presence/not-a-user/status", &alice.token, None),
        400,
        "M_INVALID_PARAM",
    );
}

fn to_device(h: &Hearth, db: &TestDb, alice: &User, bob: &User) {
    let send = |txn: &str, body: Value| {
        call(
            h,
            "PUT",
            &format!("/sendToDevice/m.test/{txn}"),
            &alice.token,
            Some(body),
        )
    };
    let body = json!({"messages": {
        bob.id.clone(): {bob.device.clone(): {"n": 1}},
        alice.id.clone(): {"*": {"n": 2}},
        "@nobody:localhost": {"X": {"n": 3}},
        "@remote:elsewhere.example": {"X": {"n": 4}},
    }});
    ok(send("txn1", body.clone()));
    // Retried transaction: stored once.
    ok(send("txn1", body));
    assert_eq!(
        psql(
            db,
            "SELECT user_id || '|' || sender || '|' || type || '|' || content::text \
                  FROM device_inbox ORDER BY user_id"
        ),
        format!(
            "{a}|{a}|m.test|{{\"n\": 2}}\n{b}|{a}|m.test|{{\"n\": 1}}",
            a = alice.id,
            b = bob.id
        )
    );
    // Unknown device: nothing stored.
    ok(send(
        "txn2",
        json!({"messages": {bob.id.clone(): {"NOSUCHDEVICE": {}}}}),
    ));
    assert_eq!(psql(db, "SELECT count(*) FROM device_inbox"), "2");
    // Failures.
    assert_err(&send("txn3", json!({})), 400, "M_BAD_JSON");
    assert_err(
        &send("txn3", json!({"messages": {"not-a-user": {"X": {}}}})),
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &send("txn3", json!({"messages": {bob.id.clone(): {"X": 5}}})),
        400,
        "M_BAD_JSON",
    );
    let r = request(
        h,
        "PUT",
        &format!("{V3}/sendToDevice/m.test/txn4"),
        Some(&alice.token),
        b"{",
    );
    assert_err(&r, 400, "M_NOT_JSON");
}

// ---- /sync ----------------------------------------------------------------

fn sync_at(addr: std::net::SocketAddr, token: &str, since: Option<&str>, timeout_ms: u64) -> Value {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let since = since.map(|t| format!("&since={t}")).unwrap_or_default();
    write!(
        s,
        "GET {V3}/sync?timeout={timeout_ms}{since} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    ok(common::read_response(&mut s, false))
}

/// Parks a `timeout=30000` sync of `u` since `since`, runs `trigger`, and
/// returns the sync's response and the time from the trigger to it.
fn woken_by(h: &Hearth, u: &User, since: &str, trigger: impl FnOnce()) -> (Value, Duration) {
    let (addr, token, since) = (h.addr, u.token.clone(), since.to_owned());
    let parked = std::thread::spawn(move || sync_at(addr, &token, Some(&since), 30_000));
    std::thread::sleep(Duration::from_millis(300)); // let it park
    let fired = std::time::Instant::now();
    trigger();
    let v = parked.join().expect("sync thread");
    (v, fired.elapsed())
}

fn next(v: &Value) -> String {
    v["next_batch"].as_str().unwrap().to_owned()
}

fn room_ephemeral<'a>(v: &'a Value, room: &str, kind: &str) -> Option<&'a Value> {
    v["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == kind)
}

#[test]
fn sync_wakeups_and_exactly_once_to_device() {
    let db = TestCluster::shared().fresh_database();
    let h = Hearth::start(Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url()));
    let alice = register(&h, "alice");
    let bob = register(&h, "bob");
    let room = ok(call(
        &h,
        "POST",
        "/createRoom",
        &alice.token,
        Some(json!({"preset": "public_chat"})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(call(
        &h,
        "POST",
        &format!("/rooms/{room}/join"),
        &bob.token,
        Some(json!({})),
    ));
    let e1 = send_text(&h, &alice, &room, "t1");

    // Initial sync: all account data, global and per room.
    ok(call(
        &h,
        "PUT",
        &format!("/user/{}/account_data/org.example.a", bob.id),
        &bob.token,
        Some(json!({"a": 1})),
    ));
    ok(call(
        &h,
        "PUT",
        &format!("/user/{}/rooms/{room}/tags/u.work", bob.id),
        &bob.token,
        Some(json!({"order": 0.5})),
    ));
    let a0 = next(&sync_at(h.addr, &alice.token, None, 0));
    let s = sync_at(h.addr, &bob.token, None, 0);
    assert_eq!(
        s["account_data"]["events"],
        json!([{"type": "org.example.a", "content": {"a": 1}}])
    );
    assert_eq!(
        s["rooms"]["join"][&room]["account_data"]["events"],
        json!([{"type": "m.tag", "content": {"tags": {"u.work": {"order": 0.5}}}}])
    );
    let mut since = next(&s);

    // Typing wakes a parked sync.
    let typing_path = format!("/rooms/{room}/typing/{}", alice.id);
    let (v, took) = woken_by(&h, &bob, &since, || {
        ok(call(
            &h,
            "PUT",
            &typing_path,
            &alice.token,
            Some(json!({"typing": true, "timeout": 30000})),
        ));
    });
    assert!(
        took < Duration::from_millis(900),
        "typing wake-up took {took:?}"
    );
    assert_eq!(
        room_ephemeral(&v, &room, "m.typing").unwrap()["content"]["user_ids"],
        json!([alice.id])
    );
    since = next(&v);

    // A receipt wakes it.
    let (v, took) = woken_by(&h, &bob, &since, || {
        ok(call(
            &h,
            "POST",
            &format!("/rooms/{room}/receipt/m.read/{e1}"),
            &alice.token,
            Some(json!({})),
        ));
    });
    assert!(
        took < Duration::from_millis(900),
        "receipt wake-up took {took:?}"
    );
    let r = room_ephemeral(&v, &room, "m.receipt").expect("m.receipt");
    assert!(r["content"][&e1]["m.read"][&alice.id]["ts"].is_u64(), "{r}");
    assert!(
        room_ephemeral(&v, &room, "m.typing").is_none(),
        "typing did not change: {v}"
    );
    since = next(&v);

    // Bob's private receipt: his sync shows it, alice's does not.
    ok(call(
        &h,
        "POST",
        &format!("/rooms/{room}/receipt/m.read.private/{e1}"),
        &bob.token,
        Some(json!({})),
    ));
    let v = sync_at(h.addr, &bob.token, Some(&since), 0);
    let r = room_ephemeral(&v, &room, "m.receipt").expect("own private receipt");
    assert!(
        r["content"][&e1]["m.read.private"][&bob.id].is_object(),
        "{r}"
    );
    since = next(&v);
    let va = sync_at(h.addr, &alice.token, Some(&a0), 0);
    let ra = room_ephemeral(&va, &room, "m.receipt").expect("alice's own receipt");
    assert!(ra["content"][&e1].get("m.read.private").is_none(), "{ra}");

    // A to-device message wakes it, and is delivered until acknowledged.
    let send_td = |txn: &str, n: u64| {
        ok(call(
            &h,
            "PUT",
            &format!("/sendToDevice/m.test/{txn}"),
            &alice.token,
            Some(json!({"messages": {bob.id.clone(): {bob.device.clone(): {"n": n}}}})),
        ));
    };
    let before_td = since.clone();
    let (v, took) = woken_by(&h, &bob, &since, || send_td("td1", 1));
    assert!(
        took < Duration::from_millis(900),
        "to-device wake-up took {took:?}"
    );
    let expected = json!([{"sender": alice.id, "type": "m.test", "content": {"n": 1}}]);
    assert_eq!(v["to_device"]["events"], expected);
    // The response was lost: the retry with the old token gets it again.
    let v = sync_at(h.addr, &bob.token, Some(&before_td), 0);
    assert_eq!(v["to_device"]["events"], expected);
    since = next(&v);
    // Syncing past it acknowledges it: never again, whichever token.
    for t in [since.clone(), since.clone(), before_td.clone()] {
        let v = sync_at(h.addr, &bob.token, Some(&t), 0);
        assert_eq!(
            v["to_device"]["events"].as_array().map_or(0, Vec::len),
            0,
            "{v}"
        );
    }
    assert_eq!(psql(&db, "SELECT count(*) FROM device_inbox"), "0");

    // Account data (set from another device) wakes it.
    let (v, took) = woken_by(&h, &bob, &since, || {
        ok(call(
            &h,
            "PUT",
            &format!("/user/{}/account_data/org.example.b", bob.id),
            &bob.token,
            Some(json!({"b": 2})),
        ));
    });
    assert!(
        took < Duration::from_millis(900),
        "account data wake-up took {took:?}"
    );
    assert_eq!(
        v["account_data"]["events"],
        json!([{"type": "org.example.b", "content": {"b": 2}}])
    );
    since = next(&v);

    // Presence of someone sharing a room wakes it.
    let (v, took) = woken_by(&h, &bob, &since, || {
        ok(call(
            &h,
            "PUT",
            &format!("/presence/{}/status", alice.id),
            &alice.token,
            Some(json!({"presence": "online", "status_msg": "here"})),
        ));
    });
    assert!(
        took < Duration::from_millis(900),
        "presence wake-up took {took:?}"
    );
    let p = v["presence"]["events"].as_array().unwrap();
    let pa = p
        .iter()
        .find(|e| e["sender"] == alice.id.as_str())
        .expect("alice's presence");
    assert_eq!(pa["content"]["presence"], "online");
    assert_eq!(pa["content"]["status_msg"], "here");
    since = next(&v);

    // Typing expires: the parked sync wakes with an empty set.
    ok(call(
        &h,
        "PUT",
        &typing_path,
        &alice.token,
        Some(json!({"typing": false})),
    ));
    let v = sync_at(h.addr, &bob.token, Some(&since), 0);
    assert_eq!(
        room_ephemeral(&v, &room, "m.typing").unwrap()["content"]["user_ids"],
        json!([])
    );
    since = next(&v);
    ok(call(
        &h,
        "PUT",
        &typing_path,
        &alice.token,
        Some(json!({"typing": true, "timeout": 800})),
    ));
    let v = sync_at(h.addr, &bob.token, Some(&since), 0);
    assert_eq!(
        room_ephemeral(&v, &room, "m.typing").unwrap()["content"]["user_ids"],
        json!([alice.id])
    );
    since = next(&v);
    let started = std::time::Instant::now();
    let v = sync_at(h.addr, &bob.token, Some(&since), 30_000);
    let took = started.elapsed();
    assert!(
        took > Duration::from_millis(400) && took < Duration::from_secs(5),
        "expiry after {took:?}"
    );
    assert_eq!(
        room_ephemeral(&v, &room, "m.typing").unwrap()["content"]["user_ids"],
        json!([])
    );
    since = next(&v);

    // More than a response carries: 100, then the rest, each exactly once.
    for i in 0..105 {
        send_td(&format!("bulk{i}"), i);
    }
    let v1 = sync_at(h.addr, &bob.token, Some(&since), 0);
    let first: Vec<u64> = v1["to_device"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(first, (0..100).collect::<Vec<_>>());
    let v2 = sync_at(h.addr, &bob.token, Some(&next(&v1)), 0);
    let rest: Vec<u64> = v2["to_device"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(rest, (100..105).collect::<Vec<_>>());
    // A retry of that second sync does not lose the rest...
    let v2b = sync_at(h.addr, &bob.token, Some(&next(&v1)), 0);
    assert_eq!(v2b["to_device"]["events"].as_array().unwrap().len(), 5);
    // ...and once past it, nothing comes back.
    let v3 = sync_at(h.addr, &bob.token, Some(&next(&v2b)), 0);
    assert_eq!(
        v3["to_device"]["events"].as_array().map_or(0, Vec::len),
        0,
        "{v3}"
    );
}
