//! Shared helpers for the `db_*` tests: a monoio runtime and a fresh
//! database per test on a real PostgreSQL.
//!
//! The cluster is `HEARTH_TEST_PG_URL` (an admin URL) if set, else a
//! throwaway cluster started for this test binary (see `cluster.rs`).
#![allow(dead_code)]

pub mod cluster;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};

use hearth::db::{ConnectConfig, Connection};

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
        Err(_) => cluster::TestCluster::shared().admin_config(),
    }
}

/// Directory of the cluster's unix socket.
pub fn socket_dir() -> std::path::PathBuf {
    match std::env::var_os("HEARTH_TEST_PG_SOCKET_DIR") {
        Some(d) => d.into(),
        None => cluster::TestCluster::shared().socket_dir().to_owned(),
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

/// A config for a password user authenticated with `method` (`password`,
/// `md5` or `scram-sha-256`) on a fresh database. The role is created with
/// its password stored the way the method needs.
pub async fn auth_config(method: &str) -> ConnectConfig {
    let cfg = fresh_db().await;
    let admin = Connection::connect(&cfg).await.expect("connect admin");
    let user = match method {
        "password" => "hearth_password",
        "md5" => "hearth_md5",
        "scram-sha-256" => "hearth_scram",
        other => panic!("unknown auth method {other}"),
    };
    let encryption = if method == "md5" {
        "md5"
    } else {
        "scram-sha-256"
    };
    admin
        .batch_execute(&format!(
            "SET password_encryption = '{encryption}';
             DO $$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{user}') THEN
                 CREATE ROLE {user} LOGIN;
               END IF;
             END $$;
             ALTER ROLE {user} PASSWORD 's3cr3t pa$$';"
        ))
        .await
        .expect("create role");
    let mut cfg = cfg;
    cfg.host = hearth::db::Host::Tcp("127.0.0.1".into());
    cfg.user = user.to_owned();
    cfg.password = Some("s3cr3t pa$$".to_owned());
    cfg
}

/// Yield once to the runtime so spawned tasks get polled.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}
