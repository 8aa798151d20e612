//! End-to-end: server-side key backups over HTTP against the real binary
//! (2 shards, or 1 under `HEARTH_TEST_SHARDS=1`) and a real PostgreSQL —
//! `/room_keys/version` (create, get, update, delete) and
//! `/room_keys/keys[/{roomId}[/{sessionId}]]` (put, get, delete; `etag`,
//! `count`, `M_WRONG_ROOM_KEYS_VERSION`, the spec's rule for which of two
//! keys of a session is kept).

mod common;

use common::{assert_err, call, ok, Hearth, Opts, Registered};
use hearth::db::testing::TestCluster;
use serde_json::{json, Value};

const ALG: &str = "m.megolm_backup.v1.curve25519-aes-sha2";
const ROOM: &str = "!room:localhost";

fn start() -> Hearth {
    let db = TestCluster::shared().fresh_database();
    Hearth::start(Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url()))
}

fn create(h: &Hearth, r: &Registered, public_key: &str) -> String {
    let v = ok(call(
        h,
        "POST",
        "/room_keys/version",
        &r.token,
        Some(json!({"algorithm": ALG, "auth_data": {"public_key": public_key}})),
    ));
    v["version"].as_str().unwrap().to_owned()
}

fn data(fmi: i64, fwd: i64, verified: bool, tag: &str) -> Value {
    json!({"first_message_index": fmi, "forwarded_count": fwd, "is_verified": verified,
           "session_data": {"ciphertext": tag, "ephemeral": "e", "mac": "m"}})
}

fn keys_path(version: &str, room: Option<&str>, session: Option<&str>) -> String {
    let mut p = "/room_keys/keys".to_owned();
    if let Some(r) = room {
        p += &format!("/{}", common::enc(r));
    }
    if let Some(s) = session {
        p += &format!("/{}", common::enc(s));
    }
    format!("{p}?version={version}")
}

fn put_session(h: &Hearth, r: &Registered, v: &str, session: &str, d: Value) -> common::Resp {
    call(
        h,
        "PUT",
        &keys_path(v, Some(ROOM), Some(session)),
        &r.token,
        Some(d),
    )
}

fn get_session(h: &Hearth, r: &Registered, v: &str, session: &str) -> Value {
    ok(call(
        h,
        "GET",
        &keys_path(v, Some(ROOM), Some(session)),
        &r.token,
        None,
    ))
}

#[test]
fn versions_are_created_read_updated_and_deleted() {
    let h = start();
    let alice = common::register_user(&h, "alice");
    let bob = common::register_user(&h, "bob");

    let r = call(&h, "GET", "/room_keys/version", &alice.token, None);
    assert_err(&r, 404, "M_NOT_FOUND");
    let r = call(
        &h,
        "POST",
        "/room_keys/version",
        &alice.token,
        Some(json!({"auth_data": {}})),
    );
    assert_err(&r, 400, "M_MISSING_PARAM");

    let v1 = create(&h, &alice, "k1");
    assert_eq!(v1, "1");
    let got = ok(call(&h, "GET", "/room_keys/version", &alice.token, None));
    assert_eq!(got["version"], "1");
    assert_eq!(got["algorithm"], ALG);
    assert_eq!(got["auth_data"], json!({"public_key": "k1"}));
    assert_eq!(got["count"], 0);
    assert!(got["etag"].is_string());
    // Backups are per user.
    assert_err(
        &call(&h, "GET", "/room_keys/version", &bob.token, None),
        404,
        "M_NOT_FOUND",
    );

    let v2 = create(&h, &alice, "k2");
    assert_eq!(v2, "2");
    let got = ok(call(&h, "GET", "/room_keys/version", &alice.token, None));
    assert_eq!(got["version"], "2", "the newest is current");
    let got = ok(call(&h, "GET", "/room_keys/version/1", &alice.token, None));
    assert_eq!(got["auth_data"]["public_key"], "k1");

    // Update: new auth_data; the algorithm and the body's version must match.
    let put = |path: &str, body: Value| call(&h, "PUT", path, &alice.token, Some(body));
    ok(put(
        "/room_keys/version/2",
        json!({"algorithm": ALG, "auth_data": {"public_key": "k2", "signatures": {}}, "version": "2"}),
    ));
    let got = ok(call(&h, "GET", "/room_keys/version/2", &alice.token, None));
    assert_eq!(got["auth_data"]["signatures"], json!({}));
    assert_err(
        &put(
            "/room_keys/version/2",
            json!({"algorithm": "other", "auth_data": {}}),
        ),
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &put(
            "/room_keys/version/2",
            json!({"algorithm": ALG, "auth_data": {}, "version": "1"}),
        ),
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &put(
            "/room_keys/version/9",
            json!({"algorithm": ALG, "auth_data": {}}),
        ),
        404,
        "M_NOT_FOUND",
    );

    // Delete: the previous version is current again; numbers are not reused.
    ok(call(
        &h,
        "DELETE",
        "/room_keys/version/2",
        &alice.token,
        None,
    ));
    assert_err(
        &call(&h, "GET", "/room_keys/version/2", &alice.token, None),
        404,
        "M_NOT_FOUND",
    );
    let got = ok(call(&h, "GET", "/room_keys/version", &alice.token, None));
    assert_eq!(got["version"], "1");
    assert_err(
        &call(&h, "DELETE", "/room_keys/version/2", &alice.token, None),
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &call(
            &h,
            "GET",
            "/room_keys/version/notanumber",
            &alice.token,
            None,
        ),
        404,
        "M_NOT_FOUND",
    );
    assert_eq!(create(&h, &alice, "k3"), "3");
}

#[test]
fn keys_are_stored_by_the_spec_rule_with_etag_and_count() {
    let h = start();
    let alice = common::register_user(&h, "alice");
    let v = create(&h, &alice, "k");

    let r = ok(put_session(&h, &alice, &v, "s1", data(5, 1, false, "a")));
    assert_eq!(r["count"], 1);
    let etag1 = r["etag"].as_str().unwrap().to_owned();
    assert_eq!(get_session(&h, &alice, &v, "s1"), data(5, 1, false, "a"));

    // Worse keys (higher index; same index but more forwards) are ignored
    // and leave the etag alone.
    let r = ok(put_session(&h, &alice, &v, "s1", data(6, 0, false, "b")));
    assert_eq!(r["etag"], etag1.as_str());
    let r = ok(put_session(&h, &alice, &v, "s1", data(5, 2, false, "c")));
    assert_eq!(r["etag"], etag1.as_str());
    assert_eq!(
        get_session(&h, &alice, &v, "s1")["session_data"]["ciphertext"],
        "a"
    );
    // Fewer forwards at the same index replace it.
    let r = ok(put_session(&h, &alice, &v, "s1", data(5, 0, false, "d")));
    assert_ne!(r["etag"], etag1.as_str());
    assert_eq!(
        get_session(&h, &alice, &v, "s1")["session_data"]["ciphertext"],
        "d"
    );
    // A verified key wins even with a higher index; then an unverified one
    // never replaces it.
    ok(put_session(&h, &alice, &v, "s1", data(9, 3, true, "e")));
    ok(put_session(&h, &alice, &v, "s1", data(0, 0, false, "f")));
    assert_eq!(
        get_session(&h, &alice, &v, "s1")["session_data"]["ciphertext"],
        "e"
    );
    // A lower index among verified keys replaces it.
    ok(put_session(&h, &alice, &v, "s1", data(2, 3, true, "g")));
    assert_eq!(
        get_session(&h, &alice, &v, "s1")["session_data"]["ciphertext"],
        "g"
    );

    // Whole-room and all-rooms uploads.
    let r = ok(call(
        &h,
        "PUT",
        &keys_path(&v, Some(ROOM), None),
        &alice.token,
        Some(json!({"sessions": {"s2": data(0, 0, false, "s2")}})),
    ));
    assert_eq!(r["count"], 2);
    let r = ok(call(
        &h,
        "PUT",
        &keys_path(&v, None, None),
        &alice.token,
        Some(json!({"rooms": {
            "!other:localhost": {"sessions": {"s3": data(0, 0, false, "s3")}},
            ROOM: {"sessions": {"s4": data(0, 0, false, "s4")}},
        }})),
    ));
    assert_eq!(r["count"], 4);
    let all = ok(call(
        &h,
        "GET",
        &keys_path(&v, None, None),
        &alice.token,
        None,
    ));
    assert_eq!(all["rooms"][ROOM]["sessions"].as_object().unwrap().len(), 3);
    assert_eq!(
        all["rooms"]["!other:localhost"]["sessions"]["s3"],
        data(0, 0, false, "s3")
    );
    let room = ok(call(
        &h,
        "GET",
        &keys_path(&v, Some(ROOM), None),
        &alice.token,
        None,
    ));
    assert_eq!(room["sessions"].as_object().unwrap().len(), 3);
    let empty = ok(call(
        &h,
        "GET",
        &keys_path(&v, Some("!none:localhost"), None),
        &alice.token,
        None,
    ));
    assert_eq!(empty, json!({"sessions": {}}));
    let got = ok(call(&h, "GET", "/room_keys/version", &alice.token, None));
    assert_eq!(got["count"], 4);

    // Deletes: a session, a room, everything.
    let r = ok(call(
        &h,
        "DELETE",
        &keys_path(&v, Some(ROOM), Some("s1")),
        &alice.token,
        None,
    ));
    assert_eq!(r["count"], 3);
    assert_err(
        &call(
            &h,
            "GET",
            &keys_path(&v, Some(ROOM), Some("s1")),
            &alice.token,
            None,
        ),
        404,
        "M_NOT_FOUND",
    );
    let r = ok(call(
        &h,
        "DELETE",
        &keys_path(&v, Some(ROOM), None),
        &alice.token,
        None,
    ));
    assert_eq!(r["count"], 1);
    let r = ok(call(
        &h,
        "DELETE",
        &keys_path(&v, None, None),
        &alice.token,
        None,
    ));
    assert_eq!(r["count"], 0);
}

#[test]
fn uploads_to_an_old_or_unknown_version_are_refused() {
    let h = start();
    let alice = common::register_user(&h, "alice");
    let bob = common::register_user(&h, "bob");

    // No backup at all.
    let r = put_session(&h, &alice, "1", "s", data(0, 0, false, "x"));
    assert_err(&r, 404, "M_NOT_FOUND");
    let v1 = create(&h, &alice, "k1");
    let v2 = create(&h, &alice, "k2");

    // The old version: 403 with the current one.
    let r = put_session(&h, &alice, &v1, "s", data(0, 0, false, "x"));
    assert_err(&r, 403, "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(r.json()["current_version"], v2.as_str());
    ok(put_session(&h, &alice, &v2, "s", data(0, 0, false, "x")));
    // Someone else's version number is not yours.
    assert_err(
        &put_session(&h, &bob, &v2, "s", data(0, 0, false, "x")),
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &call(&h, "GET", &keys_path(&v2, None, None), &bob.token, None),
        404,
        "M_NOT_FOUND",
    );
    // Bad bodies and parameters.
    let r = put_session(&h, &alice, &v2, "s", json!({"first_message_index": 0}));
    assert_err(&r, 400, "M_INVALID_PARAM");
    let r = call(
        &h,
        "PUT",
        &format!("/room_keys/keys/{}/s", common::enc(ROOM)),
        &alice.token,
        Some(data(0, 0, false, "x")),
    );
    assert_err(&r, 400, "M_MISSING_PARAM");
    let r = call(
        &h,
        "PUT",
        &keys_path(&v2, None, None),
        &alice.token,
        Some(json!({"rooms": []})),
    );
    assert_err(&r, 400, "M_BAD_JSON");
    // Deleting the current version takes its keys; the old one is current.
    ok(call(
        &h,
        "DELETE",
        &format!("/room_keys/version/{v2}"),
        &alice.token,
        None,
    ));
    assert_err(
        &call(&h, "GET", &keys_path(&v2, None, None), &alice.token, None),
        404,
        "M_NOT_FOUND",
    );
    ok(put_session(&h, &alice, &v1, "s", data(0, 0, false, "x")));
}

#[test]
fn racing_uploads_of_one_session_keep_the_best_key() {
    let h = start();
    let alice = common::register_user(&h, "alice");
    let v = create(&h, &alice, "k");
    // Eight uploads at once (on whichever shard each connection lands),
    // first_message_index 1 to 8: whatever the order, index 1 is kept.
    let addr = h.addr;
    let path = format!("{}{}", common::V3, keys_path(&v, Some(ROOM), Some("s")));
    std::thread::scope(|s| {
        for fmi in 1..=8 {
            let (path, token) = (&path, &alice.token);
            s.spawn(move || {
                let body = data(fmi, 0, false, &fmi.to_string()).to_string();
                ok(common::request_to(
                    addr,
                    "PUT",
                    path,
                    Some(token),
                    body.as_bytes(),
                ))
            });
        }
    });
    let got = get_session(&h, &alice, &v, "s");
    assert_eq!(got["first_message_index"], 1, "{got}");
    assert_eq!(got["session_data"]["ciphertext"], "1");
    let info = ok(call(&h, "GET", "/room_keys/version", &alice.token, None));
    assert_eq!(info["count"], 1);
}
