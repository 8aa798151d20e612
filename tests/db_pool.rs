//! The pool against a real PostgreSQL: spreading, the in-flight bound, and
//! recovery after backends are killed mid-load.

mod db_support;

use std::time::{Duration, Instant};

use db_support::{fresh_db, run};
use futures_util::future::join_all;
use hearth::db::{Connection, DbError, Pool, PoolConfig};

#[test]
fn spreads_queries_and_bounds_in_flight() {
    run(async {
        let cfg = fresh_db().await;
        let pool = Pool::connect(
            cfg,
            PoolConfig {
                size: 3,
                max_in_flight: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        // Let the supervisors open the other connections.
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.live_connections() < 3 && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(pool.live_connections(), 3);
        let queries = (0..50i64).map(|i| {
            let pool = &pool;
            async move {
                pool.query_one("SELECT pg_backend_pid(), $1::int8", &[&i])
                    .await
            }
        });
        let results = join_all(queries).await;
        let busy = results
            .iter()
            .filter(|r| matches!(r, Err(DbError::Busy)))
            .count();
        assert_eq!(busy, 40, "beyond max_in_flight callers get Busy");
        let mut pids: Vec<i32> = results
            .iter()
            .flatten()
            .map(|r| r.get(0).unwrap())
            .collect();
        pids.sort();
        pids.dedup();
        assert_eq!(
            pids.len(),
            3,
            "least-in-flight spreads over every connection"
        );
        assert_eq!(pool.in_flight(), 0);
    })
}

#[test]
fn killed_backends_fail_callers_and_pool_recovers() {
    run(async {
        let cfg = fresh_db().await;
        let admin = Connection::connect(&cfg).await.unwrap();
        let pool = Pool::connect(
            cfg,
            PoolConfig {
                size: 2,
                backoff_initial: Duration::from_millis(10),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.live_connections() < 2 && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        let pids = pool.backend_pids();
        assert_eq!(pids.len(), 2);
        // Load: slow-ish queries in flight on both connections.
        let load: Vec<_> = (0..200i64)
            .map(|i| {
                let pool = pool.clone();
                monoio::spawn(async move {
                    let params: [&dyn hearth::db::ToSql; 1] = [&i];
                    let q = pool.query_one("SELECT pg_sleep(0.01), $1::int8", &params);
                    // Never a hang: every caller must resolve.
                    monoio::time::timeout(Duration::from_secs(20), q)
                        .await
                        .map(|r| r.is_ok())
                })
            })
            .collect();
        monoio::time::sleep(Duration::from_millis(30)).await;
        for pid in &pids {
            admin
                .execute("SELECT pg_terminate_backend($1)", &[pid])
                .await
                .unwrap();
        }
        let mut failed = 0;
        for t in load {
            match t.await {
                Ok(true) => {}
                Ok(false) => failed += 1,
                Err(_) => panic!("a caller hung after its backend was killed"),
            }
        }
        assert!(
            failed > 0,
            "killing the backends must fail some in-flight callers"
        );
        // Recovery: new backends, queries work again.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let new = pool.backend_pids();
            if new.len() == 2 && new.iter().all(|p| !pids.contains(p)) {
                break;
            }
            assert!(Instant::now() < deadline, "pool did not reconnect");
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(pool.reconnects() >= 2);
        let v: i64 = pool
            .query_one("SELECT 41::int8 + 1", &[])
            .await
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(v, 42);
    })
}

#[test]
fn lost_connection_errors_every_waiter_at_once() {
    run(async {
        let cfg = fresh_db().await;
        let admin = Connection::connect(&cfg).await.unwrap();
        let c = Connection::connect(&cfg).await.unwrap();
        let pid = c.process_id();
        let waiters: Vec<_> = (0..100)
            .map(|_| {
                let c = c.clone();
                monoio::spawn(async move { c.query("SELECT pg_sleep(10)", &[]).await })
            })
            .collect();
        monoio::time::sleep(Duration::from_millis(50)).await;
        admin
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
        let started = Instant::now();
        for w in waiters {
            assert!(w.await.is_err());
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(c.is_closed());
        assert!(matches!(
            c.query("SELECT 1", &[]).await,
            Err(DbError::Closed(_))
        ));
    })
}

/// A server that is down fails callers at once with `Unavailable` (the
/// HTTP edge answers 503), instead of each waiting `acquire_timeout`.
#[test]
fn a_down_server_fails_callers_at_once() {
    let cluster = hearth::db::testing::TestCluster::start().expect("private cluster");
    let url = cluster.fresh_database().url();
    run(async move {
        let cfg = hearth::db::ConnectConfig::from_url(&url).unwrap();
        let pool = Pool::connect(
            cfg,
            PoolConfig {
                size: 2,
                acquire_timeout: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(!pool.is_down());
        cluster.shutdown();
        // The supervisors notice the lost connections and fail to reconnect.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pool.is_down() {
            assert!(
                Instant::now() < deadline,
                "the pool never saw the server down"
            );
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        let started = Instant::now();
        for _ in 0..50 {
            assert!(matches!(
                pool.query("SELECT 1", &[]).await,
                Err(DbError::Unavailable)
            ));
        }
        // Far below the 30 s acquire timeout: nothing waited.
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    })
}
