//! End-to-end: the small client-API gaps over HTTP against the real binary
//! (2 shards, or 1 under `HEARTH_TEST_SHARDS=1`) and a real PostgreSQL:
//! `reason` on every membership change, `M_NOT_JSON` on an empty body where
//! the spec requires JSON (and none needed for join/leave), the deprecated
//! `GET /events/{eventId}`, `/voip/turnServer` and `/thirdparty/protocols`.

mod common;

use base64::Engine;
use common::{assert_err, call, enc, json_request, ok, request, Hearth, Opts, V3};
use hearth::db::testing::TestCluster;
use hmac::{KeyInit, Mac};
use serde_json::{json, Value};

fn start_with(env: &[(&str, &str)]) -> Hearth {
    let db = TestCluster::shared().fresh_database();
    let mut opts = Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url());
    for (k, v) in env {
        opts = opts.env(k, v);
    }
    Hearth::start(opts)
}

fn start() -> Hearth {
    start_with(&[])
}

fn create_room(h: &Hearth, token: &str, body: Value) -> String {
    ok(call(h, "POST", "/createRoom", token, Some(body)))["room_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The content of `user`'s member event in `room`, as `reader` sees it.
fn member(h: &Hearth, reader: &str, room: &str, user: &str) -> Value {
    ok(call(
        h,
        "GET",
        &format!("/rooms/{}/state/m.room.member/{}", enc(room), enc(user)),
        reader,
        None,
    ))
}

#[track_caller]
fn assert_member(h: &Hearth, reader: &str, room: &str, user: &str, m: &str, reason: Option<&str>) {
    let c = member(h, reader, room, user);
    assert_eq!(c["membership"], m, "{c}");
    match reason {
        Some(r) => assert_eq!(c["reason"], r, "{c}"),
        None => assert!(c.get("reason").is_none(), "{c}"),
    }
}

#[test]
fn reason_is_kept_on_every_membership_change() {
    let h = start();
    let alice = common::register(&h, "alice");
    let bob = common::register_user(&h, "bob");
    let room = create_room(&h, &alice, json!({"preset": "public_chat"}));
    let r = |path: &str| format!("/rooms/{}/{path}", enc(&room));
    let b = bob.id.as_str();

    ok(call(
        &h,
        "POST",
        &r("join"),
        &bob.token,
        Some(json!({"reason": "hello"})),
    ));
    assert_member(&h, &alice, &room, b, "join", Some("hello"));
    ok(call(
        &h,
        "POST",
        &r("leave"),
        &bob.token,
        Some(json!({"reason": "bye"})),
    ));
    assert_member(&h, &alice, &room, b, "leave", Some("bye"));
    ok(call(
        &h,
        "POST",
        &r("invite"),
        &alice,
        Some(json!({"user_id": b, "reason": "come back"})),
    ));
    assert_member(&h, &alice, &room, b, "invite", Some("come back"));
    // `POST /join/{roomIdOrAlias}` takes the reason too.
    ok(call(
        &h,
        "POST",
        &format!("/join/{}", enc(&room)),
        &bob.token,
        Some(json!({"reason": "ok"})),
    ));
    assert_member(&h, &alice, &room, b, "join", Some("ok"));
    ok(call(
        &h,
        "POST",
        &r("kick"),
        &alice,
        Some(json!({"user_id": b, "reason": "spam"})),
    ));
    assert_member(&h, &alice, &room, b, "leave", Some("spam"));
    ok(call(
        &h,
        "POST",
        &r("ban"),
        &alice,
        Some(json!({"user_id": b, "reason": "more spam"})),
    ));
    assert_member(&h, &alice, &room, b, "ban", Some("more spam"));
    ok(call(
        &h,
        "POST",
        &r("unban"),
        &alice,
        Some(json!({"user_id": b, "reason": "second chance"})),
    ));
    assert_member(&h, &alice, &room, b, "leave", Some("second chance"));

    // Join and leave with no body at all: no reason in the event.
    let p = format!("{V3}/rooms/{}/join", enc(&room));
    ok(request(&h, "POST", &p, Some(&bob.token), b""));
    assert_member(&h, &alice, &room, b, "join", None);
    let p = format!("{V3}/rooms/{}/leave", enc(&room));
    ok(request(&h, "POST", &p, Some(&bob.token), b""));
    assert_member(&h, &alice, &room, b, "leave", None);
    // `POST /join/{roomIdOrAlias}` with no body too.
    let p = format!("{V3}/join/{}", enc(&room));
    ok(request(&h, "POST", &p, Some(&bob.token), b""));
    assert_member(&h, &alice, &room, b, "join", None);

    // A reason that is not a string is a bad request, not a dropped field.
    let r = call(
        &h,
        "POST",
        &r("leave"),
        &bob.token,
        Some(json!({"reason": 5})),
    );
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn empty_body_is_not_json_where_the_spec_requires_json() {
    let h = start();
    let alice = common::register(&h, "alice");
    let r = request(&h, "POST", &format!("{V3}/createRoom"), Some(&alice), b"");
    assert_err(&r, 400, "M_NOT_JSON");
    let r = request(
        &h,
        "POST",
        &format!("{V3}/createRoom"),
        Some(&alice),
        b"  \r\n",
    );
    assert_err(&r, 400, "M_NOT_JSON");
    let room = create_room(&h, &alice, json!({}));
    let send = format!("{V3}/rooms/{}/send/m.room.message/t1", enc(&room));
    let r = request(&h, "PUT", &send, Some(&alice), b"");
    assert_err(&r, 400, "M_NOT_JSON");
    let r = request(&h, "PUT", &send, Some(&alice), b"{not json");
    assert_err(&r, 400, "M_NOT_JSON");
    // The refused transaction id is still free.
    let r = request(
        &h,
        "PUT",
        &send,
        Some(&alice),
        br#"{"msgtype":"m.text","body":"hi"}"#,
    );
    assert!(ok(r)["event_id"].is_string());
}

#[test]
fn deprecated_get_event_by_id_checks_visibility() {
    let h = start();
    let alice = common::register(&h, "alice");
    let eve = common::register(&h, "eve");
    let room = create_room(&h, &alice, json!({"preset": "private_chat"}));
    let sent = ok(call(
        &h,
        "PUT",
        &format!("/rooms/{}/send/m.room.message/t1", enc(&room)),
        &alice,
        Some(json!({"msgtype": "m.text", "body": "secret"})),
    ));
    let event_id = sent["event_id"].as_str().unwrap();
    let path = format!("/events/{}", enc(event_id));

    let mut ev = ok(call(&h, "GET", &path, &alice, None));
    assert_eq!(ev["event_id"], event_id);
    assert_eq!(ev["room_id"], room);
    assert_eq!(ev["content"]["body"], "secret");
    // The same as the room-scoped endpoint answers.
    let mut scoped = ok(call(
        &h,
        "GET",
        &format!("/rooms/{}/event/{}", enc(&room), enc(event_id)),
        &alice,
        None,
    ));
    // `unsigned.age` moves between the two calls.
    for e in [&mut ev, &mut scoped] {
        e["unsigned"].as_object_mut().unwrap().remove("age");
    }
    assert_eq!(ev, scoped);
    // r0 alias.
    let r0 = ok(call(
        &h,
        "GET",
        &format!("/_matrix/client/r0/events/{}", enc(event_id)),
        &alice,
        None,
    ));
    assert_eq!(r0["event_id"], event_id);

    // Unknown and malformed ids are 404.
    let r = call(&h, "GET", "/events/%24nope", &alice, None);
    assert_err(&r, 404, "M_NOT_FOUND");
    let r = call(&h, "GET", "/events/not-an-event-id", &alice, None);
    assert_err(&r, 404, "M_NOT_FOUND");
    // Someone who never was in the private room is refused with the 404
    // the room-scoped endpoint gives ("not found or no permission"), so
    // the answer does not tell whether the event exists.
    let refused = call(&h, "GET", &path, &eve, None);
    assert_err(&refused, 404, "M_NOT_FOUND");
    assert!(!String::from_utf8_lossy(&refused.body).contains("secret"));
    let scoped = call(
        &h,
        "GET",
        &format!("/rooms/{}/event/{}", enc(&room), enc(event_id)),
        &eve,
        None,
    );
    assert_eq!(refused.status, scoped.status);
    assert_eq!(refused.json()["errcode"], scoped.json()["errcode"]);
    // Authentication is required.
    let r = json_request(&h, "GET", &format!("{V3}{path}"), None, None);
    assert_err(&r, 401, "M_MISSING_TOKEN");
}

#[test]
fn turn_server_empty_when_unset_and_thirdparty_protocols_empty() {
    let h = start();
    let alice = common::register(&h, "alice");
    assert_eq!(
        ok(call(&h, "GET", "/voip/turnServer", &alice, None)),
        json!({})
    );
    assert_eq!(
        ok(call(&h, "GET", "/thirdparty/protocols", &alice, None)),
        json!({})
    );
    let r = json_request(&h, "GET", &format!("{V3}/voip/turnServer"), None, None);
    assert_err(&r, 401, "M_MISSING_TOKEN");
    let r = json_request(&h, "GET", &format!("{V3}/thirdparty/protocols"), None, None);
    assert_err(&r, 401, "M_MISSING_TOKEN");
}

#[test]
fn turn_server_with_shared_secret_hands_out_turn_rest_credentials() {
    let uri = "turn:turn.example:3478?transport=udp";
    let h = start_with(&[
        ("HEARTH_VOIP__TURN_URIS", &format!("[\"{uri}\"]")),
        ("HEARTH_VOIP__TURN_SHARED_SECRET", "s3cret"),
        ("HEARTH_VOIP__TURN_USER_LIFETIME_MS", "3600000"),
    ]);
    let alice = common::register_user(&h, "alice");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t = ok(call(&h, "GET", "/voip/turnServer", &alice.token, None));
    assert_eq!(t["uris"], json!([uri]));
    assert_eq!(t["ttl"], 3600);
    let username = t["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, alice.id);
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        (before + 3600 - 5..=before + 3600 + 60).contains(&expiry),
        "{expiry}"
    );
    // The password is what coturn (`use-auth-secret`) computes.
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(b"s3cret").unwrap();
    mac.update(username.as_bytes());
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(t["password"], want);
}
