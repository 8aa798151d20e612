//! Shared helpers for the `db_*` tests: a monoio runtime and a fresh
//! database per test on a real PostgreSQL.
//!
//! The cluster is `HEARTH_TEST_PG_URL` (an admin URL) if set, else the
//! throwaway cluster of this test binary from `hearth::db::testing`.
#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};

use std::sync::OnceLock;

use hearth::db::cluster::AuthMethod;
use hearth::db::testing::{TestCluster, TestDb, SUPERUSER};
use hearth::db::{ConnectConfig, Connection, Host};

/// A wire-client config for a harness database, over TCP.
fn config_for(db: &TestDb) -> ConnectConfig {
    ConnectConfig {
        host: Host::Tcp(db.host.to_string()),
        port: db.port,
        user: db.user.clone(),
        password: db.password.clone(),
        dbname: db.dbname.clone(),
        ..ConnectConfig::default()
    }
}

/// Run `f` on a fresh single-threaded monoio runtime with timers.
pub fn run<F: Future>(f: F) -> F::Output {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("build monoio runtime");
    rt.block_on(f)
}

pub fn admin_config() -> ConnectConfig {
    match std::env::var("HEARTH_TEST_PG_URL") {
        Ok(url) => ConnectConfig::from_url(&url).expect("HEARTH_TEST_PG_URL"),
        Err(_) => ConnectConfig {
            host: Host::Tcp("127.0.0.1".into()),
            port: TestCluster::shared().port(),
            user: SUPERUSER.into(),
            dbname: "postgres".into(),
            ..ConnectConfig::default()
        },
    }
}

/// Directory of the cluster's unix socket.
pub fn socket_dir() -> std::path::PathBuf {
    match std::env::var_os("HEARTH_TEST_PG_SOCKET_DIR") {
        Some(d) => d.into(),
        None => TestCluster::shared().cluster().info().socket_dir.clone(),
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Create an empty database and return a config pointing at it.
pub async fn fresh_db() -> ConnectConfig {
    let admin = admin_config();
    let conn = Connection::connect(&admin).await.expect("connect admin");
    let name = format!(
        "t_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    conn.batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let mut cfg = admin;
    cfg.dbname = name;
    cfg
}

pub async fn connect_fresh() -> Connection {
    let cfg = fresh_db().await;
    Connection::connect(&cfg).await.expect("connect")
}

/// A config for a password role authenticated with `method` (`password`,
/// `md5` or `scram-sha-256`) on a fresh database of a cluster whose
/// `pg_hba.conf` requires that method over TCP (one cluster per method).
pub async fn auth_config(method: &str) -> ConnectConfig {
    static CLUSTERS: [OnceLock<TestCluster>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let (slot, m) = match method {
        "password" => (0, AuthMethod::Password),
        "md5" => (1, AuthMethod::Md5),
        "scram-sha-256" => (2, AuthMethod::ScramSha256),
        other => panic!("unknown auth method {other}"),
    };
    let cluster = CLUSTERS[slot].get_or_init(|| {
        TestCluster::start_with_auth(m).unwrap_or_else(|e| panic!("{method} cluster: {e}"))
    });
    config_for(&cluster.fresh_database())
}

#[allow(unused_imports)]
pub use hearth::primitives::yield_now;
