//! Group commit against a real PostgreSQL.

mod db_support;

use std::time::{Duration, Instant};

use db_support::{fresh_db, run};
use futures_util::future::join_all;
use hearth::db::{
    Connection, DbError, GroupCommit, GroupCommitConfig, Pool, PoolConfig, Rows, SqlValue, Write,
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

/// Every write succeeded but the 21st, which hit a unique key.
fn only_write_20_collided(results: &[Result<Vec<hearth::db::QueryResult>, DbError>]) {
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
}

async fn count_g(observer: &Connection) -> i64 {
    observer
        .query_one("SELECT count(*) FROM g", &[])
        .await
        .unwrap()
        .get(0)
        .unwrap()
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
        only_write_20_collided(&join_all(writes).await);
        let n = count_g(&observer).await;
        assert_eq!(n, 1 + 39, "the bad write left nothing behind");
        assert!(gc.stats().split_retries >= 1);
    })
}

/// Rows of a kind; `s` is drawn once per execution of the statement, so
/// rows sharing an `s` were inserted by one statement.
static R_ROWS: Rows = Rows {
    sql: "INSERT INTO r (id, note, s) SELECT x.id, x.note, n.s \
          FROM unnest($1, $2) AS x(id, note), (SELECT nextval('r_stmt') AS s) AS n",
    columns: &[hearth::db::types::oid::INT8, hearth::db::types::oid::TEXT],
};

async fn rows_table(observer: &Connection) {
    observer
        .batch_execute(
            "CREATE SEQUENCE r_stmt; \
             CREATE TABLE r (id int8 PRIMARY KEY, note text, s int8 NOT NULL)",
        )
        .await
        .unwrap();
}

fn row(id: i64, note: Option<&str>) -> Vec<SqlValue> {
    vec![id.into(), note.map(str::to_owned).into()]
}

#[test]
fn a_batchs_rows_of_a_kind_go_as_one_statement() {
    run(async {
        let (observer, gc) = setup(GroupCommitConfig {
            max_in_flight: 1,
            ..Default::default()
        })
        .await;
        rows_table(&observer).await;
        // Each write: a statement, two rows, a statement; the results are
        // per step, in order.
        let writes = (0..300i64).map(|i| {
            let gc = &gc;
            async move {
                let w = insert(i)
                    .rows(&R_ROWS, row(2 * i, Some("a")))
                    .rows(&R_ROWS, row(2 * i + 1, None))
                    .statement(
                        "UPDATE g SET xid = xid + 1 WHERE id = $1",
                        vec![SqlValue::Int8(i)],
                    );
                gc.submit(w).await.unwrap()
            }
        });
        for res in join_all(writes).await {
            let affected: Vec<u64> = res.iter().map(|r| r.rows_affected).collect();
            assert_eq!(affected, [1, 1, 1, 1]);
            assert_eq!(res[3].command, "UPDATE 1");
        }
        let stats = gc.stats();
        assert!(stats.largest_batch > 1, "{stats:?}");
        let q = |sql: &'static str| {
            let observer = &observer;
            async move {
                observer
                    .query_one(sql, &[])
                    .await
                    .unwrap()
                    .get::<i64>(0)
                    .unwrap()
            }
        };
        assert_eq!(q("SELECT count(*) FROM r").await, 600);
        assert_eq!(q("SELECT count(*) FROM r WHERE note IS NULL").await, 300);
        assert_eq!(
            q("SELECT count(DISTINCT s) FROM r").await as u64,
            stats.batches,
            "one statement per batch for the kind"
        );
    })
}

#[test]
fn a_colliding_row_fails_only_its_write() {
    run(async {
        let (observer, gc) = setup(GroupCommitConfig {
            max_in_flight: 1,
            ..Default::default()
        })
        .await;
        rows_table(&observer).await;
        gc.submit(Write::new().rows(&R_ROWS, row(7, None)))
            .await
            .unwrap();
        let writes = (0..40i64).map(|i| {
            let gc = &gc;
            async move {
                let id = if i == 20 { 7 } else { 100 + i };
                gc.submit(insert(1000 + i).rows(&R_ROWS, row(id, None)))
                    .await
            }
        });
        only_write_20_collided(&join_all(writes).await);
        let n = count_g(&observer).await;
        assert_eq!(n, 39, "the colliding write left nothing behind");
    })
}

#[test]
fn a_row_that_does_not_fit_its_kind_fails_its_write_at_submit() {
    run(async {
        let (_observer, gc) = setup(GroupCommitConfig::default()).await;
        let w = insert(1).rows(&R_ROWS, vec![SqlValue::Text("x".into())]);
        assert!(matches!(gc.submit(w).await, Err(DbError::Type(_))));
        let w = insert(2).rows(&R_ROWS, vec!["x".into(), "y".into()]);
        assert!(matches!(gc.submit(w).await, Err(DbError::Type(_))));
        assert_eq!(gc.stats().writes, 0, "never queued");
    })
}
