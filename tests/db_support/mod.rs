//! Shared helpers for the `db_*` tests: a monoio runtime and a fresh
//! database per test on a real PostgreSQL.
//!
//! The cluster comes from `HEARTH_TEST_PG_URL` (an admin URL) until the
//! throwaway-cluster harness `hearth::db::testing` is merged; then this file
//! becomes a thin wrapper over it.
#![allow(dead_code)]

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
    let url = std::env::var("HEARTH_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:54329/postgres".to_owned());
    ConnectConfig::from_url(&url).expect("HEARTH_TEST_PG_URL")
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
