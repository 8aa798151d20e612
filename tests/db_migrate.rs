//! Migrations against a real PostgreSQL.

mod db_support;

use db_support::{connect_fresh, fresh_db, run};
use hearth::db::migrate::{
    self, latest_version, migrate, migrate_with, schema_version, Migration, MIGRATIONS,
};
use hearth::db::{Connection, DbError};

#[test]
fn applies_in_order_once() {
    run(async {
        let c = connect_fresh().await;
        assert_eq!(schema_version(&c).await.unwrap(), 0);
        let r = migrate(&c).await.unwrap();
        assert_eq!((r.from, r.to), (0, latest_version()));
        let r = migrate(&c).await.unwrap();
        assert_eq!((r.from, r.to), (latest_version(), latest_version()));
        let n: i64 = c
            .query_one("SELECT count(*) FROM schema_version", &[])
            .await
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(n as usize, MIGRATIONS.len());
        c.execute(
            "INSERT INTO events VALUES (1, '!r:h', '$e', '@u:h', 'm.room.message', $1)",
            &[&serde_json::json!({"body": "hi"})],
        )
        .await
        .unwrap();
    })
}

#[test]
fn concurrent_migrators_apply_once() {
    run(async {
        let cfg = fresh_db().await;
        let a = Connection::connect(&cfg).await.unwrap();
        let b = Connection::connect(&cfg).await.unwrap();
        // A slow migration makes the two attempts overlap for sure.
        let ms = [
            MIGRATIONS[0],
            Migration {
                version: 2,
                name: "slow",
                sql: "CREATE TABLE slow (x int); SELECT pg_sleep(0.3);",
            },
        ];
        let (ra, rb) =
            futures_util::future::join(migrate_with(&a, &ms), migrate_with(&b, &ms)).await;
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let mut froms = [ra.from, rb.from];
        froms.sort();
        assert_eq!(froms, [0, 2], "one migrated, the other found it done");
        let n: i64 = a
            .query_one("SELECT count(*) FROM schema_version", &[])
            .await
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(n, 2);
    })
}

#[test]
fn refuses_newer_schema() {
    run(async {
        let c = connect_fresh().await;
        migrate(&c).await.unwrap();
        let future = latest_version() + 1;
        c.execute(
            "INSERT INTO schema_version (version, name) VALUES ($1, 'future')",
            &[&future],
        )
        .await
        .unwrap();
        match migrate(&c).await {
            Err(DbError::SchemaTooNew { found, known }) => {
                assert_eq!((found, known), (future, latest_version()))
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
        // The connection is usable afterwards (transaction rolled back).
        assert_eq!(schema_version(&c).await.unwrap(), future);
    })
}

#[test]
fn failed_migration_rolls_back_everything() {
    run(async {
        let c = connect_fresh().await;
        let ms = [
            MIGRATIONS[0],
            Migration {
                version: 2,
                name: "broken",
                sql: "CREATE TABLE ok (x int); SELEC nonsense;",
            },
        ];
        match migrate_with(&c, &ms).await {
            Err(e @ DbError::Migration { version: 2, .. }) => assert_eq!(e.code(), Some("42601")),
            other => panic!("expected a migration error, got {other:?}"),
        }
        assert_eq!(migrate::schema_version(&c).await.unwrap(), 0);
    })
}

/// Branches can land a lower-numbered migration after a higher one was
/// applied somewhere: it must still run (once), not be skipped.
#[test]
fn applies_a_lower_version_that_landed_late() {
    run(async {
        let c = connect_fresh().await;
        let first = [
            Migration {
                version: 1,
                name: "one",
                sql:
                    "CREATE TABLE schema_version (version bigint PRIMARY KEY, name text NOT NULL, \
                      applied_at timestamptz NOT NULL DEFAULT now()); CREATE TABLE a (x int);",
            },
            Migration {
                version: 3,
                name: "three",
                sql: "CREATE TABLE c (x int);",
            },
        ];
        migrate_with(&c, &first).await.unwrap();
        let later = [
            first[0],
            Migration {
                version: 2,
                name: "two",
                sql: "CREATE TABLE b (x int);",
            },
            first[1],
        ];
        let r = migrate_with(&c, &later).await.unwrap();
        assert_eq!((r.from, r.to), (3, 3));
        c.execute("INSERT INTO b VALUES (1)", &[]).await.unwrap();
        migrate_with(&c, &later).await.unwrap();
        let n: i64 = c
            .query_one("SELECT count(*) FROM schema_version", &[])
            .await
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(n, 3);
    })
}

/// `txn_ids` rows expire after a day (migration 8 + `rooms::txn::expire`).
#[test]
fn transaction_ids_expire() {
    run(async {
        let cfg = fresh_db().await;
        let c = Connection::connect(&cfg).await.unwrap();
        migrate(&c).await.unwrap();
        c.batch_execute(
            "INSERT INTO txn_ids (user_id, device_id, room_id, txn_id, event_id, created_at) \
             VALUES ('@a:h', 'D', '!r:h', 'old', '$old', now() - interval '25 hours'), \
                    ('@a:h', 'D', '!r:h', 'new', '$new', now())",
        )
        .await
        .unwrap();
        let pool = hearth::db::Pool::connect(cfg, hearth::db::PoolConfig::default())
            .await
            .unwrap();
        let n = hearth::rooms::txn::expire(&pool, hearth::rooms::txn::KEEP_HOURS)
            .await
            .unwrap();
        assert_eq!(n, 1);
        let left: String = c
            .query_one("SELECT string_agg(txn_id, ',') FROM txn_ids", &[])
            .await
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(left, "new");
    })
}

/// Migration 33 folds v14's per-user `push_actions` rows into one row per
/// (event, action set), keeping the page order (`id`) and continuing it.
#[test]
fn push_actions_fold_into_action_sets() {
    run(async {
        let c = connect_fresh().await;
        let before: Vec<Migration> = MIGRATIONS
            .iter()
            .copied()
            .filter(|m| m.version < 33)
            .collect();
        migrate_with(&c, &before).await.unwrap();
        c.batch_execute(
            "INSERT INTO push_actions (user_id, room_id, event_id, stream_ordering, thread_id, \
             highlight, actions, ts) VALUES \
             ('@b:h', '!r:h', '$1', 5, 'main', false, '[\"notify\"]', 10), \
             ('@a:h', '!r:h', '$1', 5, 'main', false, '[\"notify\"]', 10), \
             ('@c:h', '!r:h', '$1', 5, 'main', true, '[\"notify\",{\"set_tweak\":\"highlight\"}]', 10), \
             ('@a:h', '!r:h', '$2', 6, 'main', false, '[\"notify\"]', 11)",
        )
        .await
        .unwrap();
        migrate(&c).await.unwrap();
        let rows = c
            .query(
                "SELECT id, event_id, highlight, array_to_string(users, ',') FROM push_actions \
                 ORDER BY id",
                &[],
            )
            .await
            .unwrap();
        let got: Vec<(i64, String, bool, String)> = rows
            .iter()
            .map(|r| {
                (
                    r.get(0).unwrap(),
                    r.get(1).unwrap(),
                    r.get(2).unwrap(),
                    r.get(3).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "$1".into(), false, "@a:h,@b:h".into()),
                (3, "$1".into(), true, "@c:h".into()),
                (4, "$2".into(), false, "@a:h".into()),
            ]
        );
        let next: i64 = c
            .query_one(
                "INSERT INTO push_actions (room_id, event_id, stream_ordering, thread_id, \
                 highlight, actions, ts, users) VALUES ('!r:h', '$3', 7, 'main', false, '[]', 12, \
                 ARRAY['@a:h']) RETURNING id",
                &[],
            )
            .await
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(next, 5);
    })
}
