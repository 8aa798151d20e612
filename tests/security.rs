//! Security basics (issue "[5/6]", item 6) against the real binary and a
//! real PostgreSQL: access tokens are stored hashed, and a signing key file
//! other users can read is refused.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{json_request, register_user, Hearth, Opts};
use hearth::db::testing::TestCluster;

const V3: &str = "/_matrix/client/v3";

#[test]
fn access_tokens_are_stored_as_hashes_and_still_work() {
    let cluster = TestCluster::shared();
    let db = cluster.fresh_database();
    let h = Hearth::start(Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url()));
    let alice = register_user(&h, "alice");
    let r = json_request(
        &h,
        "GET",
        &format!("{V3}/account/whoami"),
        Some(&alice.token),
        None,
    );
    assert_eq!(r.status, 200);
    let stored = cluster
        .psql(&db.dbname, "SELECT token_hash FROM access_tokens")
        .unwrap();
    assert!(
        !stored.contains(&alice.token),
        "the table holds no usable token: {stored}"
    );
    assert!(
        stored.contains(&hearth::auth::tokens::hash_token(&alice.token)),
        "{stored}"
    );
    // Logout deletes by hash and every shard forgets it.
    let r = json_request(
        &h,
        "POST",
        &format!("{V3}/logout"),
        Some(&alice.token),
        None,
    );
    assert_eq!(r.status, 200);
    for _ in 0..4 {
        let r = json_request(
            &h,
            "GET",
            &format!("{V3}/account/whoami"),
            Some(&alice.token),
            None,
        );
        assert_eq!(r.status, 401);
    }
}

#[test]
fn a_signing_key_others_can_read_is_refused_at_start() {
    let db = TestCluster::shared().fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing.key");
    std::fs::write(
        &key,
        "ed25519 a_1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1\n",
    )
    .unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .arg("serve")
        .env("HEARTH_SERVER_NAME", "localhost")
        .env("HEARTH_DATA_DIR", dir.path())
        .env("HEARTH_DATABASE__URL", db.url())
        .env("HEARTH_LISTENERS__0__PORT", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    assert_eq!(
        err.matches("readable by other users").count(),
        1,
        "said once: {err}"
    );
}

/// Nothing secret reaches a log line: with the access log on and every
/// hearth target at debug, a registration (with a registration token),
/// a password login, tokens in the header and in `?access_token=`, and a
/// UIA password stage leave no password or token in stdout or stderr.
#[test]
fn no_password_or_token_reaches_the_log() {
    use common::{ok, V3};
    use serde_json::json;

    let db = TestCluster::shared().fresh_database();
    let pw = "Pass-word-4c1d7e";
    let new_pw = "Next-pass-9b2f31";
    let reg_token = "regtok-7f3a9c";
    let mut h = Hearth::start(Opts {
        capture_stderr: true,
        ..Opts::shards(2)
            .env("HEARTH_DATABASE__URL", &db.url())
            .env("HEARTH_LOG__LEVEL", "debug")
            .env("HEARTH_LOG__ACCESS_LOG", "true")
            .env("HEARTH_REGISTRATION__TOKEN", reg_token)
    });
    let register = |auth: serde_json::Value| {
        json_request(
            &h,
            "POST",
            &format!("{V3}/register"),
            None,
            Some(&json!({"username": "leaky", "password": pw, "auth": auth})),
        )
    };
    let challenge = register(json!({}));
    assert_eq!(challenge.status, 401);
    let session = challenge.json()["session"].as_str().unwrap().to_owned();
    let reg = ok(register(json!({
        "type": "m.login.registration_token", "token": reg_token, "session": session
    })));
    let t1 = reg["access_token"].as_str().unwrap().to_owned();
    let login = ok(json_request(
        &h,
        "POST",
        &format!("{V3}/login"),
        None,
        Some(&json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "leaky"},
            "password": pw,
        })),
    ));
    let t2 = login["access_token"].as_str().unwrap().to_owned();
    // In the header, then in the query string (alone and among others).
    ok(json_request(
        &h,
        "GET",
        &format!("{V3}/account/whoami"),
        Some(&t1),
        None,
    ));
    ok(json_request(
        &h,
        "GET",
        &format!("{V3}/account/whoami?access_token={t2}"),
        None,
        None,
    ));
    ok(json_request(
        &h,
        "GET",
        &format!("{V3}/sync?timeout=0&access_token={t2}&full_state=false"),
        None,
        None,
    ));
    // A wrong token is a secret too (a typo'd real one).
    let bad = format!("{t2}x");
    let r = json_request(
        &h,
        "GET",
        &format!("{V3}/account/whoami?access_token={bad}"),
        None,
        None,
    );
    assert_eq!(r.status, 401);
    let openid = ok(json_request(
        &h,
        "POST",
        &format!(
            "{V3}/user/{}/openid/request_token",
            common::enc("@leaky:localhost")
        ),
        Some(&t1),
        Some(&json!({})),
    ));
    let openid_token = openid["access_token"].as_str().unwrap().to_owned();
    // UIA with the password: change it (the new one is secret as well).
    let change = |auth: serde_json::Value| {
        json_request(
            &h,
            "POST",
            &format!("{V3}/account/password"),
            Some(&t1),
            Some(&json!({"new_password": new_pw, "logout_devices": false, "auth": auth})),
        )
    };
    let challenge = change(json!({}));
    assert_eq!(challenge.status, 401);
    let session = challenge.json()["session"].as_str().unwrap().to_owned();
    ok(change(json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "leaky"},
        "password": pw,
        "session": session,
    })));
    // A failed login with the new password as the wrong one's neighbour.
    let r = json_request(
        &h,
        "POST",
        &format!("{V3}/login"),
        None,
        Some(&json!({"type": "m.login.password", "user": "leaky", "password": pw})),
    );
    assert_eq!(r.status, 403);

    std::thread::sleep(std::time::Duration::from_millis(300));
    h.lines_seen_until_now();
    assert!(
        h.log.iter().any(
            |l| l.contains("hearth::access") || (l.contains("request") && l.contains("whoami"))
        ),
        "the access log was on: {:#?}",
        h.log
    );
    for secret in [pw, new_pw, reg_token, &t1, &t2, &bad, &openid_token] {
        let hits: Vec<&String> = h.log.iter().filter(|l| l.contains(secret)).collect();
        assert!(hits.is_empty(), "{secret:?} logged: {hits:#?}");
    }
}
