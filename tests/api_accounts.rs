//! End-to-end: accounts, login, devices and profiles against the real binary
//! (2 shards) and real PostgreSQL (a fresh database on the shared test
//! cluster per server; the restart test uses the embedded cluster).

mod common;

use std::time::Duration;

use common::{json_request, request, Hearth, Opts, Resp};
use hearth::db::testing::TestCluster;
use serde_json::{json, Value};

const V3: &str = "/_matrix/client/v3";

fn start(opts: Opts) -> Hearth {
    let db = TestCluster::shared().fresh_database();
    Hearth::start(opts.env("HEARTH_DATABASE__URL", &db.url()))
}

fn post(h: &Hearth, path: &str, token: Option<&str>, body: Value) -> Resp {
    json_request(h, "POST", &format!("{V3}{path}"), token, Some(&body))
}

fn get(h: &Hearth, path: &str, token: Option<&str>) -> Resp {
    json_request(h, "GET", &format!("{V3}{path}"), token, None)
}

fn assert_err(r: &Resp, status: u16, errcode: &str) {
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, status, "{body}");
    assert_eq!(r.json()["errcode"], errcode, "{body}");
}

/// Register through the dummy UIA flow; returns (user_id, token, device_id).
fn register(h: &Hearth, user: &str, password: &str) -> (String, String, String) {
    let body = json!({"username": user, "password": password});
    let r = post(h, "/register", None, body.clone());
    assert_eq!(r.status, 401, "{:?}", r.json());
    let session = r.json()["session"].as_str().unwrap().to_owned();
    let mut body = body;
    body["auth"] = json!({"type": "m.login.dummy", "session": session});
    let r = post(h, "/register", None, body);
    assert_eq!(r.status, 200, "{:?}", r.json());
    let v = r.json();
    (
        v["user_id"].as_str().unwrap().to_owned(),
        v["access_token"].as_str().unwrap().to_owned(),
        v["device_id"].as_str().unwrap().to_owned(),
    )
}

fn login(h: &Hearth, user: &str, password: &str) -> Resp {
    post(
        h,
        "/login",
        None,
        json!({"type": "m.login.password",
               "identifier": {"type": "m.id.user", "user": user},
               "password": password}),
    )
}

fn login_ok(h: &Hearth, user: &str, password: &str) -> (String, String) {
    let r = login(h, user, password);
    assert_eq!(r.status, 200, "{:?}", r.json());
    let v = r.json();
    (
        v["access_token"].as_str().unwrap().to_owned(),
        v["device_id"].as_str().unwrap().to_owned(),
    )
}

/// Many requests on fresh connections: with SO_REUSEPORT spreading
/// connections by their source port, 16 of them reach both shards with
/// probability 1 - 2^-15.
fn whoami_everywhere(h: &Hearth, token: &str) -> Vec<u16> {
    (0..16)
        .map(|_| get(h, "/account/whoami", Some(token)).status)
        .collect()
}

/// A UIA `m.login.password` stage dict.
fn password_auth(user: &str, password: &str, session: &str) -> Value {
    json!({"type": "m.login.password", "session": session,
           "identifier": {"type": "m.id.user", "user": user}, "password": password})
}

#[test]
fn register_login_whoami_and_errors() {
    let h = start(Opts::shards(2));

    // The UIA shape of the first call.
    let r = post(
        &h,
        "/register",
        None,
        json!({"username": "alice", "password": "pw1"}),
    );
    assert_eq!(r.status, 401);
    let v = r.json();
    assert_eq!(v["flows"], json!([{"stages": ["m.login.dummy"]}]));
    assert_eq!(v["params"], json!({}));
    assert!(v["session"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(v.get("errcode").is_none());

    let r = get(&h, "/register/available?username=alice", None);
    assert_eq!(
        (r.status, r.json()["available"].clone()),
        (200, json!(true))
    );

    let (alice, token, device) = register(&h, "alice", "pw1");
    assert_eq!(alice, "@alice:localhost");
    let r = get(&h, "/account/whoami", Some(&token));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"user_id": alice, "device_id": device, "is_guest": false})
    );
    // Default display name: the localpart.
    let r = get(&h, "/profile/@alice:localhost/displayname", None);
    assert_eq!(r.json(), json!({"displayname": "alice"}));

    // Taken, invalid, availability.
    let r = post(
        &h,
        "/register",
        None,
        json!({"username": "alice", "password": "x"}),
    );
    assert_err(&r, 400, "M_USER_IN_USE");
    assert_err(
        &get(&h, "/register/available?username=alice", None),
        400,
        "M_USER_IN_USE",
    );
    for bad in ["Alice", "al ice", "_bot", "12345", ""] {
        let r = post(
            &h,
            "/register",
            None,
            json!({"username": bad, "password": "x"}),
        );
        assert_err(&r, 400, "M_INVALID_USERNAME");
    }
    assert_err(
        &get(&h, "/register/available?username=B%C3%B6b", None),
        400,
        "M_INVALID_USERNAME",
    );
    assert_err(
        &get(&h, "/register/available", None),
        400,
        "M_MISSING_PARAM",
    );
    assert_err(
        &post(&h, "/register?kind=guest", None, json!({})),
        403,
        "M_FORBIDDEN",
    );

    // inhibit_login, chosen device id and name, the r0 alias.
    let r = post(
        &h,
        "/register",
        None,
        json!({"username": "bob", "password": "pw"}),
    );
    let session = r.json()["session"].as_str().unwrap().to_owned();
    let r = json_request(
        &h,
        "POST",
        "/_matrix/client/r0/register",
        None,
        Some(
            &json!({"username": "bob", "password": "pw", "inhibit_login": true,
                     "auth": {"type": "m.login.dummy", "session": session}}),
        ),
    );
    // A session is bound to its endpoint: r0 and v3 paths differ.
    assert_err(&r, 403, "M_FORBIDDEN");
    let r = json_request(
        &h,
        "POST",
        "/_matrix/client/r0/register",
        None,
        Some(
            &json!({"username": "bob", "password": "pw", "inhibit_login": true,
                     "auth": {"type": "m.login.dummy"}}),
        ),
    );
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["user_id"], "@bob:localhost");
    assert!(r.json().get("access_token").is_none());

    // Login: GET flows, localpart, full id, deprecated `user`, device reuse.
    let r = get(&h, "/login", None);
    assert_eq!(r.json()["flows"][0]["type"], "m.login.password");
    let (t1, d1) = login_ok(&h, "alice", "pw1");
    let (t2, _) = login_ok(&h, "@alice:localhost", "pw1");
    assert_ne!(t1, t2);
    let r = post(
        &h,
        "/login",
        None,
        json!({"type": "m.login.password", "user": "bob",
        "password": "pw", "device_id": "MYPHONE", "initial_device_display_name": "Phone"}),
    );
    assert_eq!(r.status, 200, "{:?}", r.json());
    let v = r.json();
    assert_eq!(
        (
            v["user_id"].as_str(),
            v["device_id"].as_str(),
            v["home_server"].as_str()
        ),
        (Some("@bob:localhost"), Some("MYPHONE"), Some("localhost"))
    );
    let bob_token = v["access_token"].as_str().unwrap().to_owned();
    let r = get(&h, "/devices/MYPHONE", Some(&bob_token));
    assert_eq!(r.json()["display_name"], "Phone");
    assert_err(&login(&h, "alice", "wrong"), 403, "M_FORBIDDEN");
    assert_err(&login(&h, "nobody", "pw1"), 403, "M_FORBIDDEN");
    assert_err(
        &login(&h, "@alice:elsewhere.org", "pw1"),
        403,
        "M_FORBIDDEN",
    );
    let r = post(
        &h,
        "/login",
        None,
        json!({"type": "m.login.token", "token": "x"}),
    );
    assert_eq!(r.status, 400);

    // Tokens: header, query parameter, missing, unknown.
    assert_eq!(
        get(&h, "/account/whoami", Some(&t1)).json()["device_id"],
        d1
    );
    let r = get(&h, &format!("/account/whoami?access_token={t2}"), None);
    assert_eq!(r.json()["user_id"], alice);
    assert_err(&get(&h, "/account/whoami", None), 401, "M_MISSING_TOKEN");
    let r = get(&h, "/account/whoami", Some("hth_nope"));
    assert_err(&r, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(r.json()["soft_logout"], false);

    // Malformed bodies get Matrix errors.
    let r = request(&h, "POST", &format!("{V3}/login"), None, b"{not json");
    assert_err(&r, 400, "M_NOT_JSON");
    let r = request(&h, "POST", &format!("{V3}/register"), None, b"");
    assert_err(&r, 400, "M_NOT_JSON");
    assert_err(
        &post(&h, "/register", None, json!({"username": 5})),
        400,
        "M_BAD_JSON",
    );
    assert_err(
        &post(&h, "/register", None, json!([1, 2])),
        400,
        "M_BAD_JSON",
    );
    assert_err(
        &post(
            &h,
            "/login",
            None,
            json!({"type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": ["x"]}, "password": "p"}),
        ),
        400,
        "M_BAD_JSON",
    );
    assert_err(
        &post(&h, "/login", None, json!({"type": 1})),
        400,
        "M_BAD_JSON",
    );
    let r = post(
        &h,
        "/register",
        None,
        json!({"username": "carol", "password": "p", "auth": 7}),
    );
    assert_err(&r, 400, "M_BAD_JSON");
    let r = post(
        &h,
        "/register",
        None,
        json!({"username": "carol", "password": "p",
        "auth": {"type": "m.login.dummy", "session": "no-such-session"}}),
    );
    assert_eq!(r.status, 400);
    let r = json_request(
        &h,
        "PUT",
        &format!("{V3}/profile/{alice}/displayname"),
        Some(&t1),
        Some(&json!({"displayname": {"x": 1}})),
    );
    assert_err(&r, 400, "M_BAD_JSON");
    // The server is still fine.
    assert_eq!(get(&h, "/account/whoami", Some(&t1)).status, 200);
}

#[test]
fn logout_invalidates_every_shard_and_password_change() {
    let h = start(Opts::shards(2));
    let (_, t0, d0) = register(&h, "dave", "old-pw");
    let (t1, _) = login_ok(&h, "dave", "old-pw");
    let (t2, _) = login_ok(&h, "dave", "old-pw");
    let (t3, _) = login_ok(&h, "dave", "old-pw");
    // Warm both shards' caches.
    assert!(whoami_everywhere(&h, &t1).iter().all(|&s| s == 200));
    assert!(whoami_everywhere(&h, &t2).iter().all(|&s| s == 200));

    // Logout: the token dies everywhere, the others live.
    assert_eq!(post(&h, "/logout", Some(&t1), json!({})).status, 200);
    assert!(whoami_everywhere(&h, &t1).iter().all(|&s| s == 401));
    assert_err(
        &get(&h, "/account/whoami", Some(&t1)),
        401,
        "M_UNKNOWN_TOKEN",
    );
    assert_eq!(get(&h, "/account/whoami", Some(&t2)).status, 200);
    let devices = get(&h, "/devices", Some(&t0)).json()["devices"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(devices, 3, "logout deleted its device");

    // Password change: UIA with the old password; other devices logged out.
    let body = json!({"new_password": "new-pw"});
    let r = post(&h, "/account/password", Some(&t0), body.clone());
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["flows"], json!([{"stages": ["m.login.password"]}]));
    let session = r.json()["session"].as_str().unwrap().to_owned();
    let mut wrong = body.clone();
    wrong["auth"] = password_auth("dave", "nope", &session);
    let r = post(&h, "/account/password", Some(&t0), wrong);
    assert_err(&r, 401, "M_FORBIDDEN");
    assert_eq!(r.json()["session"], session.as_str());
    let mut right = body;
    right["auth"] = password_auth("@dave:localhost", "old-pw", &session);
    let r = post(&h, "/account/password", Some(&t0), right);
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_err(&login(&h, "dave", "old-pw"), 403, "M_FORBIDDEN");
    login_ok(&h, "dave", "new-pw");
    assert!(whoami_everywhere(&h, &t2).iter().all(|&s| s == 401));
    assert_eq!(get(&h, "/account/whoami", Some(&t3)).status, 401);
    assert_eq!(
        get(&h, "/account/whoami", Some(&t0)).json()["device_id"],
        d0
    );

    // logout/all: every token, including the caller's.
    let (t4, _) = login_ok(&h, "dave", "new-pw");
    assert!(whoami_everywhere(&h, &t4).iter().all(|&s| s == 200));
    assert_eq!(post(&h, "/logout/all", Some(&t0), json!({})).status, 200);
    assert!(whoami_everywhere(&h, &t0).iter().all(|&s| s == 401));
    assert!(whoami_everywhere(&h, &t4).iter().all(|&s| s == 401));
}

#[test]
fn devices_profiles_and_deactivation() {
    let h = start(Opts::shards(2));
    let (erin, t0, d0) = register(&h, "erin", "pw");
    let (t1, d1) = login_ok(&h, "erin", "pw");
    register(&h, "frank", "pw");

    // List, get, rename.
    let r = get(&h, "/devices", Some(&t0));
    let mut ids: Vec<String> = r.json()["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut want = vec![d0.clone(), d1.clone()];
    want.sort();
    assert_eq!(ids, want);
    let r = json_request(
        &h,
        "PUT",
        &format!("{V3}/devices/{d1}"),
        Some(&t0),
        Some(&json!({"display_name": "Laptop"})),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        get(&h, &format!("/devices/{d1}"), Some(&t0)).json()["display_name"],
        "Laptop"
    );
    assert_err(&get(&h, "/devices/NOPE", Some(&t0)), 404, "M_NOT_FOUND");
    let r = json_request(
        &h,
        "PUT",
        &format!("{V3}/devices/NOPE"),
        Some(&t0),
        Some(&json!({"display_name": "x"})),
    );
    assert_err(&r, 404, "M_NOT_FOUND");

    // Delete behind UIA (no body first, as clients do).
    let path = format!("{V3}/devices/{d1}");
    let r = json_request(&h, "DELETE", &path, Some(&t0), None);
    assert_eq!(r.status, 401);
    let session = r.json()["session"].as_str().unwrap().to_owned();
    // Someone else's credentials are refused.
    let r = json_request(
        &h,
        "DELETE",
        &path,
        Some(&t0),
        Some(&json!({"auth": password_auth("frank", "pw", &session)})),
    );
    assert_err(&r, 403, "M_FORBIDDEN");
    let r = json_request(
        &h,
        "DELETE",
        &path,
        Some(&t0),
        Some(&json!({"auth": password_auth("erin", "pw", &session)})),
    );
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert!(whoami_everywhere(&h, &t1).iter().all(|&s| s == 401));
    assert_err(
        &get(&h, &format!("/devices/{d1}"), Some(&t0)),
        404,
        "M_NOT_FOUND",
    );

    // delete_devices.
    let (t2, d2) = login_ok(&h, "erin", "pw");
    let body = json!({"devices": [d2]});
    let r = post(&h, "/delete_devices", Some(&t0), body.clone());
    let session = r.json()["session"].as_str().unwrap().to_owned();
    let mut body = body;
    body["auth"] = password_auth("erin", "pw", &session);
    assert_eq!(post(&h, "/delete_devices", Some(&t0), body).status, 200);
    assert_eq!(get(&h, "/account/whoami", Some(&t2)).status, 401);
    assert_err(
        &post(&h, "/delete_devices", Some(&t0), json!({"devices": "x"})),
        400,
        "M_BAD_JSON",
    );

    // Profiles.
    let url = format!("{V3}/profile/{erin}");
    let r = json_request(
        &h,
        "PUT",
        &format!("{url}/displayname"),
        Some(&t0),
        Some(&json!({"displayname": "Erin E."})),
    );
    assert_eq!(r.status, 200);
    let r = json_request(
        &h,
        "PUT",
        &format!("{url}/avatar_url"),
        Some(&t0),
        Some(&json!({"avatar_url": "mxc://localhost/abc"})),
    );
    assert_eq!(r.status, 200);
    let r = get(&h, &format!("/profile/{erin}"), None);
    assert_eq!(
        r.json(),
        json!({"displayname": "Erin E.", "avatar_url": "mxc://localhost/abc"})
    );
    assert_eq!(
        get(&h, &format!("/profile/{erin}/avatar_url"), None).json(),
        json!({"avatar_url": "mxc://localhost/abc"})
    );
    let (frank_token, _) = login_ok(&h, "frank", "pw");
    let r = json_request(
        &h,
        "PUT",
        &format!("{url}/displayname"),
        Some(&frank_token),
        Some(&json!({"displayname": "pwned"})),
    );
    assert_err(&r, 403, "M_FORBIDDEN");
    let r = json_request(
        &h,
        "PUT",
        &format!("{url}/displayname"),
        None,
        Some(&json!({"displayname": "x"})),
    );
    assert_err(&r, 401, "M_MISSING_TOKEN");
    assert_err(
        &get(&h, "/profile/@ghost:localhost", None),
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &get(&h, "/profile/@ghost:localhost/displayname", None),
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &get(&h, "/profile/not-a-user", None),
        400,
        "M_INVALID_PARAM",
    );

    // Deactivation: UIA, then token dead, login refused, id not reusable.
    assert!(whoami_everywhere(&h, &t0).iter().all(|&s| s == 200));
    let r = post(&h, "/account/deactivate", Some(&t0), json!({}));
    let session = r.json()["session"].as_str().unwrap().to_owned();
    let r = post(
        &h,
        "/account/deactivate",
        Some(&t0),
        json!({"auth": password_auth("erin", "pw", &session)}),
    );
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert!(whoami_everywhere(&h, &t0).iter().all(|&s| s == 401));
    assert_eq!(login(&h, "erin", "pw").status, 403);
    let r = post(
        &h,
        "/register",
        None,
        json!({"username": "erin", "password": "pw"}),
    );
    assert_err(&r, 400, "M_USER_IN_USE");
}

#[test]
fn registration_disabled_and_token_required() {
    let h = start(Opts::shards(2).env("HEARTH_REGISTRATION__ENABLED", "false"));
    let r = post(
        &h,
        "/register",
        None,
        json!({"username": "x", "password": "p"}),
    );
    assert_err(&r, 403, "M_FORBIDDEN");
    assert_err(
        &get(&h, "/register/available?username=x", None),
        403,
        "M_FORBIDDEN",
    );
    drop(h);

    let h = start(Opts::shards(2).env("HEARTH_REGISTRATION__TOKEN", "letmein"));
    let validity = "/_matrix/client/v1/register/m.login.registration_token/validity";
    let r = json_request(&h, "GET", &format!("{validity}?token=letmein"), None, None);
    assert_eq!(r.json(), json!({"valid": true}));
    let r = json_request(&h, "GET", &format!("{validity}?token=nope"), None, None);
    assert_eq!(r.json(), json!({"valid": false}));

    let body = json!({"username": "tok", "password": "p"});
    let r = post(&h, "/register", None, body.clone());
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json()["flows"],
        json!([{"stages": ["m.login.registration_token"]}])
    );
    let session = r.json()["session"].as_str().unwrap().to_owned();
    // Dummy is not offered.
    let mut b = body.clone();
    b["auth"] = json!({"type": "m.login.dummy", "session": session});
    assert_eq!(post(&h, "/register", None, b).status, 400);
    // Wrong token: retry allowed, with the flows again.
    let mut b = body.clone();
    b["auth"] = json!({"type": "m.login.registration_token", "token": "bad", "session": session});
    let r = post(&h, "/register", None, b);
    assert_err(&r, 401, "M_UNAUTHORIZED");
    assert_eq!(r.json()["session"], session.as_str());
    let mut b = body;
    b["auth"] =
        json!({"type": "m.login.registration_token", "token": "letmein", "session": session});
    let r = post(&h, "/register", None, b);
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["user_id"], "@tok:localhost");
}

fn register_user_cli(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("register-user")
        .arg("--config")
        .arg(config)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("run hearth register-user")
}

#[test]
fn cli_register_user_and_restart_keeps_users() {
    let mut h = Hearth::start(Opts::shards(2));
    let (_, _, _) = register(&h, "grace", "pw-g");
    h.signal(libc::SIGTERM);
    assert_eq!(h.wait_exit(Duration::from_secs(60)), Some(0));
    let data_dir = std::mem::replace(&mut h.data_dir, tempfile::tempdir().unwrap());
    drop(h);

    // The CLI on the same (now stopped) embedded cluster.
    let config = data_dir.path().join("hearth.toml");
    std::fs::write(
        &config,
        format!(
            "server_name = \"localhost\"\ndata_dir = \"{}\"\n",
            data_dir.path().display()
        ),
    )
    .unwrap();
    let pw_file = data_dir.path().join("pw");
    std::fs::write(&pw_file, "pw-h\n").unwrap();
    let out = register_user_cli(
        &config,
        &[
            "--user",
            "heidi",
            "--password-file",
            pw_file.to_str().unwrap(),
            "--admin",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("@heidi:localhost"));
    let out = register_user_cli(&config, &["--user", "@heidi:localhost", "--password", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = register_user_cli(&config, &["--user", "Bad Name", "--password", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid user name"));

    // Restart on the same data dir: both users log in.
    let mut again = Hearth::start_in(Opts::shards(2), data_dir);
    let (t, _) = login_ok(&again, "grace", "pw-g");
    assert_eq!(
        get(&again, "/account/whoami", Some(&t)).json()["user_id"],
        "@grace:localhost"
    );
    login_ok(&again, "heidi", "pw-h");
    again.signal(libc::SIGTERM);
    assert_eq!(again.wait_exit(Duration::from_secs(60)), Some(0));
}
