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
