//! End-to-end: `hearth serve` and its database — the embedded default
//! (initdb on first start, clean stop, restart on the same data dir) and an
//! external server given by `database.url`.

mod common;

use std::time::Duration;

use common::{get, Hearth, Opts};
use hearth::db::testing::TestCluster;

fn postmaster_pid(data_dir: &std::path::Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postgres/postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn embedded_default_initdb_clean_stop_and_restart() {
    let mut h = Hearth::start(Opts::shards(2));
    let dir = h.data_dir.path().to_owned();
    assert!(
        dir.join("postgres/PG_VERSION").exists(),
        "cluster initialised"
    );
    h.wait_for_log("schema migrated", Duration::from_secs(5));
    let pid = postmaster_pid(&dir).expect("postmaster running");
    assert!(alive(pid));
    if unsafe { libc::geteuid() } == 0 {
        // PostgreSQL refuses root: the cluster runs as the postgres user.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(
            !uid_line.split_whitespace().nth(1).unwrap().eq("0"),
            "{uid_line}"
        );
    }
    assert_eq!(get(&h, "/health").status, 200);

    h.signal(libc::SIGTERM);
    assert_eq!(h.wait_exit(Duration::from_secs(60)), Some(0));
    assert!(!alive(pid), "embedded PostgreSQL stopped with hearth");
    assert!(
        postmaster_pid(&dir).is_none(),
        "clean shutdown leaves no pid file"
    );

    // Second start on the same data dir: no initdb, no migration, same data.
    let data_dir = std::mem::replace(&mut h.data_dir, tempfile::tempdir().unwrap());
    drop(h);
    let mut again = Hearth::start_in(Opts::shards(1), data_dir);
    assert_eq!(get(&again, "/_matrix/client/versions").status, 200);
    assert!(
        !again.log.iter().any(|l| l.contains("schema migrated")),
        "schema already current"
    );
    again.signal(libc::SIGTERM);
    assert_eq!(again.wait_exit(Duration::from_secs(60)), Some(0));
}

#[test]
fn database_url_points_at_an_external_server() {
    let cluster = TestCluster::shared();
    let db = cluster.fresh_database();
    let mut h = Hearth::start(Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url()));
    assert_eq!(get(&h, "/health").status, 200);
    assert!(
        !h.data_dir.path().join("postgres").exists(),
        "no embedded cluster when database.url is set"
    );
    let version = cluster
        .psql(&db.dbname, "SELECT max(version) FROM schema_version")
        .expect("psql");
    assert!(version.trim().parse::<i64>().unwrap() >= 1, "{version}");
    h.signal(libc::SIGTERM);
    assert_eq!(h.wait_exit(Duration::from_secs(30)), Some(0));
}

#[test]
fn unreachable_database_url_fails_start_with_a_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    drop(taken);
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("serve")
        .env("HEARTH_SERVER_NAME", "localhost")
        .env("HEARTH_DATA_DIR", dir.path())
        .env("HEARTH_LISTENERS__0__PORT", "0")
        .env(
            "HEARTH_DATABASE__URL",
            format!("postgres://nobody@127.0.0.1:{port}/none"),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("database"), "{err}");
}
