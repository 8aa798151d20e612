//! End-to-end: the admin API (Synapse's `/_synapse/admin` paths) against
//! the real binary (2 shards) and real PostgreSQL: every call, its effect
//! seen through the client API, and the 403 a non-admin gets from each.
//! The admin is made with `hearth register-user --admin`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{assert_err, enc, json_request, ok, register_user, Hearth, Opts, Resp};
use hearth::db::testing::TestCluster;
use serde_json::{json, Value};

const V1: &str = "/_synapse/admin/v1";
const V2: &str = "/_synapse/admin/v2";

/// `common::call`, but `/_synapse/...` paths are taken as they are.
fn call(h: &Hearth, m: &str, path: &str, token: &str, body: Option<Value>) -> Resp {
    if path.starts_with("/_synapse") {
        json_request(h, m, path, Some(token), body.as_ref())
    } else {
        common::call(h, m, path, token, body)
    }
}

struct Setup {
    h: Hearth,
    admin: String,
}

/// hearth plus an admin made from the command line, logged in.
fn setup(opts: Opts) -> Setup {
    let db = TestCluster::shared().fresh_database();
    let url = db.url();
    let h = Hearth::start(opts.env("HEARTH_DATABASE__URL", &url));
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args([
            "register-user",
            "--user",
            "admin",
            "--password",
            "adminpw",
            "--admin",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HEARTH_SERVER_NAME", "localhost")
        .env("HEARTH_DATA_DIR", h.data_dir.path())
        .env("HEARTH_DATABASE__URL", &url)
        .output()
        .expect("run hearth register-user");
    assert!(
        out.status.success(),
        "register-user: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("(admin)"));
    let admin = login(&h, "admin", "adminpw");
    Setup { h, admin }
}

fn login(h: &Hearth, user: &str, password: &str) -> String {
    let r = login_resp(h, user, password);
    ok(r)["access_token"].as_str().unwrap().to_owned()
}

fn login_resp(h: &Hearth, user: &str, password: &str) -> Resp {
    json_request(
        h,
        "POST",
        "/_matrix/client/v3/login",
        None,
        Some(&json!({"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user}, "password": password})),
    )
}

fn admin(s: &Setup, m: &str, path: &str, body: Option<Value>) -> Resp {
    call(&s.h, m, path, &s.admin, body)
}

fn create_room(s: &Setup, token: &str, body: Value) -> String {
    ok(call(&s.h, "POST", "/createRoom", token, Some(body)))["room_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn send(s: &Setup, token: &str, room: &str, txn: &str, body: &str) -> String {
    ok(call(
        &s.h,
        "PUT",
        &format!("/rooms/{}/send/m.room.message/{txn}", enc(room)),
        token,
        Some(json!({"msgtype": "m.text", "body": body})),
    ))["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn bodies(s: &Setup, token: &str, room: &str) -> Vec<String> {
    let v = ok(call(
        &s.h,
        "GET",
        &format!("/rooms/{}/messages?dir=b&limit=100", enc(room)),
        token,
        None,
    ));
    v["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// Polls a task's status until it is not `active`.
fn wait_status(s: &Setup, path: &str) -> Value {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let v = ok(admin(s, "GET", path, None));
        if v["status"] != "active" && v["status"] != "scheduled" {
            return v;
        }
        assert!(Instant::now() < until, "task did not finish: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn users_list_query_create_modify_reset_deactivate_whois() {
    let s = setup(Opts::shards(2));
    let bob = register_user(&s.h, "bob");
    let v = ok(json_request(
        &s.h,
        "GET",
        &format!("{V1}/server_version"),
        None,
        None,
    ));
    assert!(v["server_version"].as_str().unwrap().starts_with("hearth "));

    // Create (201), then modify (200).
    let r = admin(
        &s,
        "PUT",
        &format!("{V2}/users/@carol:localhost"),
        Some(json!({"password": "carolpw", "displayname": "Carol"})),
    );
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(r.json()["name"], "@carol:localhost");
    assert_eq!(r.json()["displayname"], "Carol");
    assert_eq!(r.json()["admin"], false);
    let carol = login(&s.h, "carol", "carolpw");
    let r = admin(
        &s,
        "PUT",
        &format!("{V2}/users/@carol:localhost"),
        Some(json!({"displayname": "Carol B", "admin": true})),
    );
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["displayname"], "Carol B");
    assert_eq!(r.json()["admin"], true);
    // Carol is an admin now: her token passes the gate.
    ok(call(&s.h, "GET", &format!("{V2}/users"), &carol, None));
    let prof = ok(call(
        &s.h,
        "GET",
        "/profile/@carol:localhost",
        &bob.token,
        None,
    ));
    assert_eq!(prof["displayname"], "Carol B");
    assert_err(
        &admin(
            &s,
            "PUT",
            &format!("{V2}/users/@admin:localhost"),
            Some(json!({"admin": false})),
        ),
        400,
        "M_UNKNOWN",
    );
    assert_err(
        &admin(
            &s,
            "PUT",
            &format!("{V2}/users/@x:elsewhere.org"),
            Some(json!({})),
        ),
        400,
        "M_UNKNOWN",
    );

    // List: paging, filters, order.
    let v = ok(admin(&s, "GET", &format!("{V2}/users?limit=2"), None));
    assert_eq!(v["total"], 3);
    assert_eq!(v["users"].as_array().unwrap().len(), 2);
    assert_eq!(v["users"][0]["name"], "@admin:localhost");
    assert_eq!(v["next_token"], "2");
    let v = ok(admin(&s, "GET", &format!("{V2}/users?from=2"), None));
    assert_eq!(v["users"][0]["name"], "@carol:localhost");
    assert!(v.get("next_token").is_none());
    let v = ok(admin(&s, "GET", &format!("{V2}/users?name=car"), None));
    assert_eq!(v["total"], 1);
    let v = ok(admin(
        &s,
        "GET",
        &format!("{V2}/users?admins=true&dir=b"),
        None,
    ));
    let names: Vec<&str> = v["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["@carol:localhost", "@admin:localhost"]);
    let v = ok(admin(
        &s,
        "GET",
        &format!("{V2}/users?order_by=creation_ts&dir=b"),
        None,
    ));
    assert_eq!(v["users"][0]["name"], "@carol:localhost");
    assert_err(
        &admin(&s, "GET", &format!("{V2}/users?order_by=bogus"), None),
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &admin(&s, "GET", &format!("{V2}/users?from=-1"), None),
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &admin(&s, "GET", &format!("{V2}/users?guests=maybe"), None),
        400,
        "M_INVALID_PARAM",
    );

    // Query.
    let v = ok(admin(
        &s,
        "GET",
        &format!("{V2}/users/@bob:localhost"),
        None,
    ));
    assert_eq!(v["name"], "@bob:localhost");
    assert_eq!(v["threepids"], json!([]));
    assert!(v["creation_ts"].as_i64().unwrap() > 1_000_000_000);
    assert_err(
        &admin(&s, "GET", &format!("{V2}/users/@nobody:localhost"), None),
        404,
        "M_NOT_FOUND",
    );

    // Whois: admin API, and the client-server one (self or admin only).
    let v = ok(admin(
        &s,
        "GET",
        &format!("{V1}/whois/@bob:localhost"),
        None,
    ));
    assert_eq!(v["user_id"], "@bob:localhost");
    let conns = &v["devices"][""]["sessions"][0]["connections"];
    assert_eq!(conns[0]["ip"], "127.0.0.1", "{v}");
    ok(call(
        &s.h,
        "GET",
        "/admin/whois/@bob:localhost",
        &bob.token,
        None,
    ));
    ok(call(
        &s.h,
        "GET",
        "/admin/whois/@bob:localhost",
        &s.admin,
        None,
    ));
    assert_err(
        &call(
            &s.h,
            "GET",
            "/admin/whois/@admin:localhost",
            &bob.token,
            None,
        ),
        403,
        "M_FORBIDDEN",
    );

    // Reset password: the old one stops working, devices are logged out.
    ok(admin(
        &s,
        "POST",
        &format!("{V1}/reset_password/@bob:localhost"),
        Some(json!({"new_password": "newpw"})),
    ));
    assert_err(
        &call(&s.h, "GET", "/account/whoami", &bob.token, None),
        401,
        "M_UNKNOWN_TOKEN",
    );
    assert_eq!(login_resp(&s.h, "bob", "pw").status, 403);
    let bob2 = login(&s.h, "bob", "newpw");
    ok(admin(
        &s,
        "POST",
        &format!("{V1}/reset_password/@bob:localhost"),
        Some(json!({"new_password": "newpw2", "logout_devices": false})),
    ));
    ok(call(&s.h, "GET", "/account/whoami", &bob2, None));
    assert_err(
        &admin(
            &s,
            "POST",
            &format!("{V1}/reset_password/@nobody:localhost"),
            Some(json!({"new_password": "x"})),
        ),
        404,
        "M_NOT_FOUND",
    );

    // Admin flag endpoints.
    assert_eq!(
        ok(admin(
            &s,
            "GET",
            &format!("{V1}/users/@bob:localhost/admin"),
            None
        ))["admin"],
        false
    );

    // Deactivate: the user leaves its rooms, loses its tokens, and is
    // listed only with deactivated=true.
    let room = create_room(&s, &s.admin, json!({"preset": "public_chat"}));
    ok(call(
        &s.h,
        "POST",
        &format!("/join/{}", enc(&room)),
        &bob2,
        Some(json!({})),
    ));
    let v = ok(admin(
        &s,
        "POST",
        &format!("{V1}/deactivate/@bob:localhost"),
        Some(json!({"erase": true})),
    ));
    assert_eq!(v["id_server_unbind_result"], "success");
    assert_err(
        &call(&s.h, "GET", "/account/whoami", &bob2, None),
        401,
        "M_UNKNOWN_TOKEN",
    );
    let members = ok(admin(
        &s,
        "GET",
        &format!("{V1}/rooms/{}/members", enc(&room)),
        None,
    ));
    assert_eq!(members["members"], json!(["@admin:localhost"]));
    let v = ok(admin(
        &s,
        "GET",
        &format!("{V2}/users/@bob:localhost"),
        None,
    ));
    assert_eq!(v["deactivated"], true);
    assert_eq!(
        ok(admin(&s, "GET", &format!("{V2}/users"), None))["total"],
        2
    );
    assert_eq!(
        ok(admin(
            &s,
            "GET",
            &format!("{V2}/users?deactivated=true"),
            None
        ))["total"],
        3
    );
    // Reactivation needs a password.
    assert_err(
        &admin(
            &s,
            "PUT",
            &format!("{V2}/users/@bob:localhost"),
            Some(json!({"deactivated": false})),
        ),
        400,
        "M_UNKNOWN",
    );
    let r = admin(
        &s,
        "PUT",
        &format!("{V2}/users/@bob:localhost"),
        Some(json!({"deactivated": false, "password": "back"})),
    );
    assert_eq!(r.status, 200, "{:?}", r.json());
    login(&s.h, "bob", "back");
}

#[test]
fn rooms_list_details_members_delete_purge() {
    let s = setup(Opts::shards(2));
    let bob = register_user(&s.h, "bob");
    let r1 = create_room(
        &s,
        &s.admin,
        json!({"name": "Alpha", "topic": "first", "preset": "public_chat",
               "room_alias_name": "alpha", "visibility": "public"}),
    );
    let r2 = create_room(&s, &bob.token, json!({"name": "Beta"}));
    ok(call(
        &s.h,
        "POST",
        &format!("/join/{}", enc(&r1)),
        &bob.token,
        Some(json!({})),
    ));

    let v = ok(admin(&s, "GET", &format!("{V1}/rooms"), None));
    assert_eq!(v["total_rooms"], 2);
    assert_eq!(v["offset"], 0);
    assert_eq!(v["rooms"][0]["name"], "Alpha");
    assert_eq!(v["rooms"][0]["joined_members"], 2);
    assert_eq!(v["rooms"][0]["joined_local_members"], 2);
    assert_eq!(v["rooms"][0]["canonical_alias"], "#alpha:localhost");
    assert_eq!(v["rooms"][0]["public"], true);
    assert_eq!(v["rooms"][0]["join_rules"], "public");
    assert_eq!(v["rooms"][1]["name"], "Beta");
    let v = ok(admin(&s, "GET", &format!("{V1}/rooms?limit=1"), None));
    assert_eq!(v["next_batch"], 1);
    let v = ok(admin(
        &s,
        "GET",
        &format!("{V1}/rooms?from=1&limit=1"),
        None,
    ));
    assert_eq!(v["rooms"][0]["name"], "Beta");
    assert_eq!(v["prev_batch"], 0);
    let v = ok(admin(
        &s,
        "GET",
        &format!("{V1}/rooms?search_term=bet"),
        None,
    ));
    assert_eq!(v["total_rooms"], 1);
    let v = ok(admin(
        &s,
        "GET",
        &format!("{V1}/rooms?order_by=joined_members"),
        None,
    ));
    assert_eq!(v["rooms"][0]["room_id"], r1.as_str());
    let v = ok(admin(
        &s,
        "GET",
        &format!("{V1}/rooms?order_by=name&dir=b"),
        None,
    ));
    assert_eq!(v["rooms"][0]["name"], "Beta");
    assert_err(
        &admin(&s, "GET", &format!("{V1}/rooms?order_by=x"), None),
        400,
        "M_INVALID_PARAM",
    );

    let v = ok(admin(&s, "GET", &format!("{V1}/rooms/{}", enc(&r1)), None));
    assert_eq!(v["topic"], "first");
    assert_eq!(v["creator"], "@admin:localhost");
    assert_eq!(v["tombstoned"], false);
    assert!(v["joined_local_devices"].as_i64().unwrap() >= 2);
    assert_err(
        &admin(
            &s,
            "GET",
            &format!("{V1}/rooms/{}", enc("!nope:localhost")),
            None,
        ),
        404,
        "M_NOT_FOUND",
    );
    let v = ok(admin(
        &s,
        "GET",
        &format!("{V1}/rooms/{}/members", enc(&r1)),
        None,
    ));
    assert_eq!(v["members"], json!(["@admin:localhost", "@bob:localhost"]));
    assert_eq!(v["total"], 2);

    // Purge history up to an event: earlier messages go, the rest and
    // the room's state stay.
    for i in 0..3 {
        send(&s, &bob.token, &r1, &format!("old{i}"), &format!("old {i}"));
    }
    let keep = send(&s, &bob.token, &r1, "keep", "keep");
    send(&s, &bob.token, &r1, "new", "new");
    let v = ok(admin(
        &s,
        "POST",
        &format!("{V1}/purge_history/{}", enc(&r1)),
        Some(json!({"delete_local_events": true, "purge_up_to_event_id": keep})),
    ));
    let purge_id = v["purge_id"].as_str().unwrap().to_owned();
    let st = wait_status(&s, &format!("{V1}/purge_history_status/{purge_id}"));
    assert_eq!(st["status"], "complete", "{st}");
    assert_eq!(bodies(&s, &bob.token, &r1), ["new", "keep"]);
    let v = ok(call(
        &s.h,
        "GET",
        &format!("/rooms/{}/state/m.room.name", enc(&r1)),
        &bob.token,
        None,
    ));
    assert_eq!(v["name"], "Alpha");
    // Without delete_local_events, local messages stay.
    let v = ok(admin(
        &s,
        "POST",
        &format!("{V1}/purge_history/{}/{}", enc(&r1), enc(&keep)),
        Some(json!({})),
    ));
    let purge_id = v["purge_id"].as_str().unwrap().to_owned();
    wait_status(&s, &format!("{V1}/purge_history_status/{purge_id}"));
    assert_eq!(bodies(&s, &bob.token, &r1), ["new", "keep"]);
    // By timestamp: everything older than now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 1000;
    let v = ok(admin(
        &s,
        "POST",
        &format!("{V1}/purge_history/{}", enc(&r1)),
        Some(json!({"delete_local_events": true, "purge_up_to_ts": now})),
    ));
    let purge_id = v["purge_id"].as_str().unwrap().to_owned();
    wait_status(&s, &format!("{V1}/purge_history_status/{purge_id}"));
    // The newest event is a forward extremity: kept.
    assert_eq!(bodies(&s, &bob.token, &r1), ["new"]);
    assert_err(
        &admin(&s, "GET", &format!("{V1}/purge_history_status/nope"), None),
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &admin(
            &s,
            "POST",
            &format!("{V1}/purge_history/{}", enc(&r1)),
            Some(json!({})),
        ),
        400,
        "M_BAD_JSON",
    );
    assert_err(
        &admin(
            &s,
            "POST",
            &format!("{V1}/purge_history/{}", enc(&r1)),
            Some(json!({"purge_up_to_event_id": "$nope"})),
        ),
        404,
        "M_NOT_FOUND",
    );

    // Delete (v1) with block and purge: members leave, the alias goes,
    // the room is gone from the listing, and it cannot be joined again.
    let v = ok(admin(
        &s,
        "DELETE",
        &format!("{V1}/rooms/{}", enc(&r1)),
        Some(json!({"block": true, "purge": true})),
    ));
    assert_eq!(
        v["kicked_users"],
        json!(["@admin:localhost", "@bob:localhost"])
    );
    assert_eq!(v["failed_to_kick_users"], json!([]));
    assert_eq!(v["local_aliases"], json!(["#alpha:localhost"]));
    assert_eq!(v["new_room_id"], Value::Null);
    let joined = ok(call(&s.h, "GET", "/joined_rooms", &bob.token, None));
    assert!(!joined["joined_rooms"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r == r1.as_str()));
    assert_err(
        &admin(&s, "GET", &format!("{V1}/rooms/{}", enc(&r1)), None),
        404,
        "M_NOT_FOUND",
    );
    assert_eq!(
        ok(admin(&s, "GET", &format!("{V1}/rooms"), None))["total_rooms"],
        1
    );
    assert_err(
        &call(
            &s.h,
            "GET",
            &format!("/directory/room/{}", enc("#alpha:localhost")),
            &bob.token,
            None,
        ),
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &call(
            &s.h,
            "POST",
            &format!("/join/{}", enc(&r1)),
            &bob.token,
            Some(json!({})),
        ),
        403,
        "M_FORBIDDEN",
    );
    // The members' /sync still works after their room vanished.
    ok(call(&s.h, "GET", "/sync?timeout=0", &bob.token, None));

    // Delete (v2): a task to poll, by id and by room.
    let v = ok(admin(
        &s,
        "DELETE",
        &format!("{V2}/rooms/{}", enc(&r2)),
        Some(json!({})),
    ));
    let id = v["delete_id"].as_str().unwrap().to_owned();
    let st = wait_status(&s, &format!("{V2}/rooms/delete_status/{id}"));
    assert_eq!(st["status"], "complete", "{st}");
    assert_eq!(st["room_id"], r2.as_str());
    assert_eq!(
        st["shutdown_room"]["kicked_users"],
        json!(["@bob:localhost"])
    );
    let v = ok(admin(
        &s,
        "GET",
        &format!("{V2}/rooms/{}/delete_status", enc(&r2)),
        None,
    ));
    assert_eq!(v["results"][0]["delete_id"], id.as_str());
    assert_err(
        &admin(&s, "GET", &format!("{V2}/rooms/delete_status/nope"), None),
        404,
        "M_NOT_FOUND",
    );
    assert_eq!(
        ok(admin(&s, "GET", &format!("{V1}/rooms"), None))["total_rooms"],
        0
    );
    assert_err(
        &admin(
            &s,
            "DELETE",
            &format!("{V1}/rooms/{}", enc("!nope:localhost")),
            Some(json!({})),
        ),
        404,
        "M_NOT_FOUND",
    );
    // Rooms can still be made and used afterwards.
    let r3 = create_room(&s, &bob.token, json!({"name": "Gamma"}));
    send(&s, &bob.token, &r3, "g", "gamma");
    assert_eq!(bodies(&s, &bob.token, &r3), ["gamma"]);
}

#[test]
fn registration_tokens_and_event_reports() {
    let s = setup(Opts::shards(2));
    let base = format!("{V1}/registration_tokens");
    let v = ok(admin(&s, "POST", &format!("{base}/new"), Some(json!({}))));
    assert_eq!(v["token"].as_str().unwrap().len(), 16);
    let unlimited = v["token"].as_str().unwrap().to_owned();
    assert_eq!(v["uses_allowed"], Value::Null);
    let v = ok(admin(
        &s,
        "POST",
        &format!("{base}/new"),
        Some(json!({"token": "abcd", "uses_allowed": 1})),
    ));
    assert_eq!(
        v,
        json!({"token": "abcd", "uses_allowed": 1, "pending": 0, "completed": 0, "expiry_time": null})
    );
    assert_err(
        &admin(
            &s,
            "POST",
            &format!("{base}/new"),
            Some(json!({"token": "abcd"})),
        ),
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &admin(
            &s,
            "POST",
            &format!("{base}/new"),
            Some(json!({"token": "a b"})),
        ),
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &admin(
            &s,
            "POST",
            &format!("{base}/new"),
            Some(json!({"uses_allowed": -1})),
        ),
        400,
        "M_INVALID_PARAM",
    );
    let v = ok(admin(&s, "GET", &base, None));
    assert_eq!(v["registration_tokens"].as_array().unwrap().len(), 2);
    let v = ok(admin(&s, "GET", &format!("{base}/abcd"), None));
    assert_eq!(v["completed"], 0);

    // A token an admin made opens registration (once: uses_allowed 1).
    let validity = "/_matrix/client/v1/register/m.login.registration_token/validity";
    let r = json_request(&s.h, "GET", &format!("{validity}?token=abcd"), None, None);
    assert_eq!(ok(r)["valid"], true);
    let reg = |name: &str, token: &str| {
        let body = json!({"username": name, "password": "pw"});
        let r = json_request(
            &s.h,
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(&body),
        );
        assert_eq!(r.status, 401, "{:?}", r.json());
        assert_eq!(
            r.json()["flows"],
            json!([{"stages": ["m.login.registration_token"]}])
        );
        let session = r.json()["session"].clone();
        let mut body = body;
        body["auth"] =
            json!({"type": "m.login.registration_token", "token": token, "session": session});
        json_request(
            &s.h,
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(&body),
        )
    };
    let r = reg("dave", "abcd");
    assert_eq!(r.status, 200, "{:?}", r.json());
    let dave = r.json()["access_token"].as_str().unwrap().to_owned();
    let v = ok(admin(&s, "GET", &format!("{base}/abcd"), None));
    assert_eq!(v["completed"], 1);
    assert_eq!(reg("erin", "abcd").status, 401);
    let v = ok(admin(&s, "GET", &format!("{base}?valid=false"), None));
    assert_eq!(v["registration_tokens"][0]["token"], "abcd");
    let v = ok(admin(
        &s,
        "PUT",
        &format!("{base}/abcd"),
        Some(json!({"uses_allowed": null, "expiry_time": 4_102_444_800_000i64})),
    ));
    assert_eq!(v["uses_allowed"], Value::Null);
    assert_eq!(v["expiry_time"], 4_102_444_800_000i64);
    assert_eq!(reg("erin", "abcd").status, 200);
    assert_err(
        &admin(
            &s,
            "PUT",
            &format!("{base}/abcd"),
            Some(json!({"expiry_time": 1})),
        ),
        400,
        "M_INVALID_PARAM",
    );
    ok(admin(&s, "DELETE", &format!("{base}/abcd"), None));
    assert_err(
        &admin(&s, "GET", &format!("{base}/abcd"), None),
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &admin(&s, "DELETE", &format!("{base}/abcd"), None),
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &admin(&s, "PUT", &format!("{base}/abcd"), Some(json!({}))),
        404,
        "M_NOT_FOUND",
    );

    // Event reports: a member reports, the admin lists, reads, deletes.
    let room = create_room(
        &s,
        &s.admin,
        json!({"name": "Reports", "preset": "public_chat"}),
    );
    ok(call(
        &s.h,
        "POST",
        &format!("/join/{}", enc(&room)),
        &dave,
        Some(json!({})),
    ));
    let ev = send(&s, &s.admin, &room, "r1", "bad words");
    let path = format!("/rooms/{}/report/{}", enc(&room), enc(&ev));
    ok(call(
        &s.h,
        "POST",
        &path,
        &dave,
        Some(json!({"reason": "spam", "score": -100})),
    ));
    // Not a member of the room: as if the event did not exist.
    // While a token is valid, registration asks for one.
    let r = reg("outsider", &unlimited);
    let outsider = ok(r)["access_token"].as_str().unwrap().to_owned();
    let r = call(&s.h, "POST", &path, &outsider, Some(json!({})));
    assert_err(&r, 404, "M_NOT_FOUND");
    let v = ok(admin(&s, "GET", &format!("{V1}/event_reports"), None));
    assert_eq!(v["total"], 1);
    let rep = &v["event_reports"][0];
    assert_eq!(rep["reason"], "spam");
    assert_eq!(rep["score"], -100);
    assert_eq!(rep["sender"], "@admin:localhost");
    assert_eq!(rep["user_id"], "@dave:localhost");
    assert_eq!(rep["name"], "Reports");
    let id = rep["id"].as_i64().unwrap();
    let v = ok(admin(&s, "GET", &format!("{V1}/event_reports/{id}"), None));
    assert_eq!(v["event_json"]["content"]["body"], "bad words");
    let v = ok(admin(
        &s,
        "GET",
        &format!("{V1}/event_reports?user_id=@nobody:localhost"),
        None,
    ));
    assert_eq!(v["total"], 0);
    assert_err(
        &admin(&s, "GET", &format!("{V1}/event_reports/x"), None),
        400,
        "M_INVALID_PARAM",
    );
    ok(admin(
        &s,
        "DELETE",
        &format!("{V1}/event_reports/{id}"),
        None,
    ));
    assert_err(
        &admin(&s, "GET", &format!("{V1}/event_reports/{id}"), None),
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &admin(&s, "DELETE", &format!("{V1}/event_reports/{id}"), None),
        404,
        "M_NOT_FOUND",
    );
}

/// Every admin call answers a non-admin 403 "You are not a server admin"
/// (and no token 401), before looking at anything else.
#[test]
fn non_admins_are_refused_everywhere() {
    let s = setup(Opts::shards(1));
    let bob = register_user(&s.h, "bob");
    let room = enc("!r:localhost");
    let calls: Vec<(&str, String)> = vec![
        ("GET", format!("{V2}/users")),
        ("GET", format!("{V2}/users/@bob:localhost")),
        ("PUT", format!("{V2}/users/@bob:localhost")),
        ("POST", format!("{V1}/deactivate/@bob:localhost")),
        ("POST", format!("{V1}/reset_password/@bob:localhost")),
        ("GET", format!("{V1}/whois/@bob:localhost")),
        ("GET", format!("{V1}/users/@bob:localhost/admin")),
        ("PUT", format!("{V1}/users/@bob:localhost/admin")),
        ("GET", format!("{V1}/rooms")),
        ("GET", format!("{V1}/rooms/{room}")),
        ("GET", format!("{V1}/rooms/{room}/members")),
        ("DELETE", format!("{V1}/rooms/{room}")),
        ("DELETE", format!("{V2}/rooms/{room}")),
        ("GET", format!("{V2}/rooms/{room}/delete_status")),
        ("GET", format!("{V2}/rooms/delete_status/x")),
        ("POST", format!("{V1}/purge_history/{room}")),
        ("POST", format!("{V1}/purge_history/{room}/{}", enc("$e"))),
        ("GET", format!("{V1}/purge_history_status/x")),
        ("GET", format!("{V1}/registration_tokens")),
        ("POST", format!("{V1}/registration_tokens/new")),
        ("GET", format!("{V1}/registration_tokens/abcd")),
        ("PUT", format!("{V1}/registration_tokens/abcd")),
        ("DELETE", format!("{V1}/registration_tokens/abcd")),
        ("GET", format!("{V1}/event_reports")),
        ("GET", format!("{V1}/event_reports/1")),
        ("DELETE", format!("{V1}/event_reports/1")),
    ];
    for (m, path) in &calls {
        let r = call(&s.h, m, path, &bob.token, Some(json!({})));
        assert_err(&r, 403, "M_FORBIDDEN");
        assert_eq!(
            r.json()["error"],
            "You are not a server admin",
            "{m} {path}"
        );
        let r = json_request(&s.h, m, path, None, Some(&json!({})));
        assert_err(&r, 401, "M_MISSING_TOKEN");
    }
    // Nothing changed for the non-admin's attempts.
    let v = ok(admin(
        &s,
        "GET",
        &format!("{V2}/users/@bob:localhost"),
        None,
    ));
    assert_eq!(v["admin"], false);
}
