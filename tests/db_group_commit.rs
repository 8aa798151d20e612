//! Group commit against a real PostgreSQL.

mod db_support;

use std::time::{Duration, Instant};

use db_support::{fresh_db, run};
use futures_util::future::join_all;
use hearth::db::{
    Connection, DbError, GroupCommit, GroupCommitConfig, Pool, PoolConfig, SqlValue, Write,
};

async fn setup(gc: GroupCommitConfig) -> (Connection, GroupCommit) {
    let cfg = fresh_db().await;
    let observer = Connection::connect(&cfg).await.unwrap();
    observer
        .batch_execute("CREATE TABLE g (id int8 PRIMARY KEY, xid int8 NOT NULL)")
        .await
        .unwrap();
    let pool = Pool::connect(
        cfg,
        PoolConfig {
            size: 2,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    (observer, GroupCommit::new(pool, gc))
}

fn insert(id: i64) -> Write {
    Write::new().statement(
        "INSERT INTO g (id, xid) VALUES ($1, txid_current())",
        vec![SqlValue::Int8(id)],
    )
}

#[test]
fn callers_resolve_after_commit_in_shared_batches() {
    run(async {
        let (observer, gc) = setup(GroupCommitConfig {
            max_in_flight: 1,
            ..Default::default()
        })
        .await;
        let writers = (0..500i64).map(|id| {
            let (gc, observer) = (&gc, &observer);
            async move {
                let res = gc.submit(insert(id)).await.unwrap();
                assert_eq!(res[0].rows_affected, 1);
                // Resolved only after COMMIT: another connection sees it.
                let n: i64 = observer
                    .query_one("SELECT count(*) FROM g WHERE id = $1", &[&id])
                    .await
                    .unwrap()
                    .get(0)
                    .unwrap();
                assert_eq!(n, 1, "row {id} not visible when its caller resolved");
            }
        });
        join_all(writers).await;
        let stats = gc.stats();
        assert_eq!(stats.writes, 500);
        assert!(stats.batches < 50, "expected big batches, got {stats:?}");
        assert!(stats.largest_batch >= 100, "{stats:?}");
        let xids: i64 = observer
            .query_one("SELECT count(DISTINCT xid) FROM g", &[])
            .await
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(xids as u64, stats.batches, "one transaction per batch");
    })
}

#[test]
fn idle_write_is_flushed_immediately() {
    run(async {
        let (_observer, gc) = setup(GroupCommitConfig {
            max_delay: Duration::from_secs(30),
            ..Default::default()
        })
        .await;
        for id in 0..5 {
            let started = Instant::now();
            gc.submit(insert(id)).await.unwrap();
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "idle write waited for max_delay"
            );
        }
        assert_eq!(gc.stats().batches, 5);
    })
}

#[test]
fn one_bad_write_does_not_fail_its_neighbours() {
    run(async {
        let (observer, gc) = setup(GroupCommitConfig {
            max_in_flight: 1,
            ..Default::default()
        })
        .await;
        gc.submit(insert(7)).await.unwrap();
        // 7 again is a duplicate; the multi-statement write is atomic.
        let writes = (0..40i64).map(|i| {
            let gc = &gc;
            async move {
                let w = if i == 20 {
                    insert(1000).statement(
                        "INSERT INTO g (id, xid) VALUES ($1, 0)",
                        vec![SqlValue::Int8(7)],
                    )
                } else {
                    insert(100 + i)
                };
                gc.submit(w).await
            }
        });
        let results = join_all(writes).await;
        for (i, r) in results.iter().enumerate() {
            if i == 20 {
                assert!(
                    matches!(r, Err(DbError::Server { code, .. }) if code == "23505"),
                    "{r:?}"
                );
            } else {
                assert!(r.is_ok(), "write {i} failed: {r:?}");
            }
        }
        let n: i64 = observer
            .query_one("SELECT count(*) FROM g", &[])
            .await
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(n, 1 + 39, "the bad write left nothing behind");
        assert!(gc.stats().split_retries >= 1);
    })
}
