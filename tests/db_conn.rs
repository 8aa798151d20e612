//! The wire client against a real PostgreSQL: queries, types, pipelining,
//! errors, statement cache, cancellation safety, transactions, COPY, auth.

mod db_support;

use std::pin::pin;
use std::rc::Rc;

use db_support::{auth_config, connect_fresh, fresh_db, run, yield_now};
use futures_util::future::join_all;
use hearth::db::{Connection, CopyText, DbError, SqlValue, ToSql};

#[test]
fn simple_and_extended_queries() {
    run(async {
        let c = connect_fresh().await;
        assert_eq!(c.parameter("server_encoding").as_deref(), Some("UTF8"));
        let rows = c.simple_query("SELECT 1, NULL::text, 'x'").await.unwrap();
        assert_eq!(rows[0].get(0), Some("1"));
        assert_eq!(rows[0].get(1), None);
        let row = c
            .query_one("SELECT $1::int8 + 1 AS n", &[&41i64])
            .await
            .unwrap();
        assert_eq!(row.get::<i64>("n").unwrap(), 42);
        assert_eq!(row.get::<i64>(0).unwrap(), 42);
        assert!(row.get::<String>(0).is_err());
        assert!(row.get::<i64>(5).is_err());
        assert!(c
            .query_opt("SELECT 1 WHERE false", &[])
            .await
            .unwrap()
            .is_none());
        assert!(c.query_one("SELECT 1 WHERE false", &[]).await.is_err());
        // Empty query and a statement without rows.
        assert_eq!(c.execute("", &[]).await.unwrap(), 0);
        assert_eq!(c.execute("SET search_path = public", &[]).await.unwrap(), 0);
    })
}

#[test]
fn every_type_and_null_round_trips() {
    run(async {
        let c = connect_fresh().await;
        c.batch_execute(
            "CREATE TABLE t (b bool, s int2, i int4, l int8, t text, by bytea,
                             j jsonb, ta text[], la int8[])",
        )
        .await
        .unwrap();
        let json = serde_json::json!({"k": ["v", 1, null, {"n": true}], "é": "ü"});
        let texts = vec!["a".to_owned(), "".to_owned(), "with,comma \"q\"".to_owned()];
        let longs = vec![i64::MIN, 0, i64::MAX];
        let n = c
            .execute(
                "INSERT INTO t VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
                &[
                    &true,
                    &-7i16,
                    &123456i32,
                    &(1i64 << 40),
                    &"héllo\n",
                    &vec![0u8, 1, 255],
                    &json,
                    &texts,
                    &longs,
                ],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
        let nulls: [&dyn ToSql; 9] = [
            &None::<bool>,
            &None::<i16>,
            &None::<i32>,
            &None::<i64>,
            &None::<String>,
            &None::<Vec<u8>>,
            &None::<serde_json::Value>,
            &None::<Vec<String>>,
            &None::<Vec<i64>>,
        ];
        c.execute("INSERT INTO t VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)", &nulls)
            .await
            .unwrap();
        let rows = c
            .query("SELECT * FROM t ORDER BY b NULLS LAST", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        let r = &rows[0];
        assert!(r.get::<bool>("b").unwrap());
        assert_eq!(r.get::<i16>("s").unwrap(), -7);
        assert_eq!(r.get::<i32>("i").unwrap(), 123456);
        assert_eq!(r.get::<i64>("l").unwrap(), 1 << 40);
        assert_eq!(r.get::<&str>("t").unwrap(), "héllo\n");
        assert_eq!(r.get::<Vec<u8>>("by").unwrap(), vec![0, 1, 255]);
        assert_eq!(r.get::<serde_json::Value>("j").unwrap(), json);
        assert_eq!(r.get::<Vec<String>>("ta").unwrap(), texts);
        assert_eq!(r.get::<Vec<i64>>("la").unwrap(), longs);
        let r = &rows[1];
        for col in ["b", "s", "i", "l", "t", "by", "j", "ta", "la"] {
            assert!(
                r.get::<Option<i64>>(col).map_or(true, |v| v.is_none()),
                "{col}"
            );
        }
        assert_eq!(r.get::<Option<bool>>("b").unwrap(), None);
        assert_eq!(r.get::<Option<String>>("t").unwrap(), None);
        assert_eq!(r.get::<Option<Vec<String>>>("ta").unwrap(), None);
        assert!(
            r.get::<String>("t").is_err(),
            "NULL into non-Option is an error"
        );
        // Empty arrays and owned SqlValues.
        let row = c
            .query_one(
                "SELECT $1::text[], $2::int8[], $3::jsonb",
                &[
                    &Vec::<String>::new(),
                    &SqlValue::Int8Array(vec![]),
                    &SqlValue::Null(3802),
                ],
            )
            .await
            .unwrap();
        assert!(row.get::<Vec<String>>(0).unwrap().is_empty());
        assert!(row.get::<Vec<i64>>(1).unwrap().is_empty());
        assert_eq!(row.get::<Option<serde_json::Value>>(2).unwrap(), None);
    })
}

#[test]
fn thousand_pipelined_queries_answer_in_order() {
    run(async {
        let c = connect_fresh().await;
        let queries = (0..1000i64).map(|i| {
            let c = &c;
            async move {
                let row = c
                    .query_one("SELECT $1::int8 * 2, $2::text", &[&i, &i.to_string()])
                    .await?;
                Ok::<_, DbError>((row.get::<i64>(0)?, row.get::<String>(1)?))
            }
        });
        // `join` polls the queries first (each sends its request), then
        // reads the in-flight count before any answer could be read.
        let (results, in_flight) =
            futures_util::future::join(join_all(queries), async { c.in_flight() }).await;
        assert_eq!(
            in_flight, 1000,
            "all sent before any answer: really pipelined"
        );
        for (i, r) in results.into_iter().enumerate() {
            let (n, s) = r.unwrap();
            assert_eq!(n, 2 * i as i64);
            assert_eq!(s, i.to_string());
        }
        assert_eq!(c.in_flight(), 0);
        assert_eq!(c.parse_count(), 1, "one statement prepared for all");
    })
}

#[test]
fn error_mid_pipeline_only_fails_its_query() {
    run(async {
        let c = connect_fresh().await;
        let futs = (0..9i32).map(|i| {
            let c = &c;
            async move {
                if i == 4 {
                    c.query_one("SELECT 1 / $1", &[&0i32]).await.map(|_| 0)
                } else if i == 6 {
                    c.query_one("SELEC broken", &[]).await.map(|_| 0)
                } else {
                    c.query_one("SELECT $1::int4", &[&i]).await?.get::<i32>(0)
                }
            }
        });
        let results = join_all(futs).await;
        for (i, r) in results.into_iter().enumerate() {
            match i {
                4 => match r {
                    Err(DbError::Server { code, .. }) => assert_eq!(code, "22012"),
                    other => panic!("expected division_by_zero, got {other:?}"),
                },
                6 => assert_eq!(r.unwrap_err().code(), Some("42601")),
                _ => assert_eq!(r.unwrap(), i as i32),
            }
        }
        // The syntax error's statement was evicted; the connection is fine.
        assert_eq!(
            c.query_one("SELECT 5", &[])
                .await
                .unwrap()
                .get::<i32>(0)
                .unwrap(),
            5
        );
    })
}

#[test]
fn server_error_fields() {
    run(async {
        let c = connect_fresh().await;
        c.batch_execute("CREATE TABLE u (id int PRIMARY KEY)")
            .await
            .unwrap();
        c.execute("INSERT INTO u VALUES (1)", &[]).await.unwrap();
        match c.execute("INSERT INTO u VALUES (1)", &[]).await {
            Err(DbError::Server {
                code,
                message,
                detail,
                constraint,
            }) => {
                assert_eq!(code, "23505");
                assert!(message.contains("duplicate key"), "{message}");
                assert!(detail.unwrap().contains("(id)=(1)"));
                assert_eq!(constraint.as_deref(), Some("u_pkey"));
            }
            other => panic!("expected unique violation, got {other:?}"),
        }
    })
}

#[test]
fn statement_cache_reuses_prepared_statements() {
    run(async {
        let c = connect_fresh().await;
        for i in 0..20i64 {
            c.query_one("SELECT $1::int8", &[&i]).await.unwrap();
            c.query_one("SELECT $1::int8 + 1", &[&i]).await.unwrap();
        }
        assert_eq!(c.parse_count(), 2);
        let n: i64 = c
            .query_one("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE 'SELECT $1::int8%'", &[])
            .await
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(n, 2);
        // Same SQL with a different parameter type prepares a new statement.
        c.query_one("SELECT $1::int8", &[&5i32]).await.unwrap();
        assert_eq!(c.parse_count(), 4);
    })
}

#[test]
fn dropped_futures_do_not_desynchronise() {
    run(async {
        let c = connect_fresh().await;
        for round in 0..50i64 {
            // Submit and abandon a slow query and a fast one.
            {
                let params: [&dyn ToSql; 1] = [&round];
                let mut slow = pin!(c.query("SELECT pg_sleep(0.001), $1::int8", &params));
                assert!(futures_util::poll!(slow.as_mut()).is_pending());
                let mut fast = pin!(c.query("SELECT generate_series(1, 100)", &[]));
                let _ = futures_util::poll!(fast.as_mut());
            }
            let v: i64 = c
                .query_one("SELECT $1::int8 + 1000", &[&round])
                .await
                .unwrap()
                .get(0)
                .unwrap();
            assert_eq!(v, round + 1000);
        }
        // A dropped interactive transaction is rolled back.
        c.batch_execute("CREATE TABLE d (x int)").await.unwrap();
        {
            let tx = c.begin().await.unwrap();
            tx.execute("INSERT INTO d VALUES (1)", &[]).await.unwrap();
        }
        let n: i64 = c
            .query_one("SELECT count(*) FROM d", &[])
            .await
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(n, 0);
    })
}

#[test]
fn transactions_commit_roll_back_and_are_exclusive() {
    run(async {
        let c = connect_fresh().await;
        c.batch_execute("CREATE TABLE acct (id int PRIMARY KEY, bal int8)")
            .await
            .unwrap();
        c.execute("INSERT INTO acct VALUES (1, 100)", &[])
            .await
            .unwrap();
        // Rolled back on error.
        let r: Result<(), DbError> = c
            .transaction(async |tx| {
                tx.execute("UPDATE acct SET bal = bal - 50 WHERE id = 1", &[])
                    .await?;
                tx.execute("INSERT INTO acct VALUES (1, 0)", &[]).await?;
                Ok(())
            })
            .await;
        assert_eq!(r.unwrap_err().code(), Some("23505"));
        let bal: i64 = c
            .query_one("SELECT bal FROM acct", &[])
            .await
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(bal, 100);
        // Committed; a concurrent query waits for the transaction.
        let c2 = c.clone();
        let outside = monoio::spawn(async move { c2.query_one("SELECT bal FROM acct", &[]).await });
        let v = c
            .transaction(async |tx| {
                yield_now().await;
                tx.execute("UPDATE acct SET bal = bal + 1 WHERE id = 1", &[])
                    .await?;
                tx.query_one("SELECT bal FROM acct", &[])
                    .await?
                    .get::<i64>(0)
            })
            .await
            .unwrap();
        assert_eq!(v, 101);
        let seen: i64 = outside.await.unwrap().get(0).unwrap();
        assert_eq!(
            seen, 101,
            "the outside query ran after the commit, not inside"
        );
        // COMMIT after a failed statement reports the rollback.
        let tx = c.begin().await.unwrap();
        assert!(tx.execute("SELECT 1/0", &[]).await.is_err());
        assert!(matches!(tx.commit().await, Err(DbError::RolledBack)));
        // The atomic pipelined batch: all or nothing.
        let stmts: [(&str, &[&dyn ToSql]); 2] = [
            ("UPDATE acct SET bal = 0 WHERE id = 1", &[]),
            ("INSERT INTO acct VALUES (1, 0)", &[]),
        ];
        assert!(c.pipeline_transaction(&stmts).await.is_err());
        let bal: i64 = c
            .query_one("SELECT bal FROM acct", &[])
            .await
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(bal, 101);
        let ok: [(&str, &[&dyn ToSql]); 2] = [
            ("UPDATE acct SET bal = $1 WHERE id = 1", &[&7i64]),
            ("SELECT bal FROM acct", &[]),
        ];
        let res = c.pipeline_transaction(&ok).await.unwrap();
        assert_eq!(res[0].rows_affected, 1);
        assert_eq!(res[1].rows[0].get::<i64>(0).unwrap(), 7);
    })
}

#[test]
fn transaction_retries_serialization_failures() {
    run(async {
        let cfg = fresh_db().await;
        let a = Connection::connect(&cfg).await.unwrap();
        let b = Connection::connect(&cfg).await.unwrap();
        a.batch_execute("CREATE TABLE k (id int PRIMARY KEY, v int)")
            .await
            .unwrap();
        a.execute("INSERT INTO k VALUES (1, 0)", &[]).await.unwrap();
        let attempts = Rc::new(std::cell::Cell::new(0));
        let at = attempts.clone();
        let v = a
            .transaction(async |tx| {
                at.set(at.get() + 1);
                tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", &[])
                    .await?;
                tx.query_one("SELECT v FROM k WHERE id = 1", &[]).await?;
                if at.get() == 1 {
                    // A concurrent committed update makes ours fail with 40001.
                    b.execute("UPDATE k SET v = v + 10 WHERE id = 1", &[])
                        .await?;
                }
                tx.execute("UPDATE k SET v = v + 1 WHERE id = 1", &[])
                    .await?;
                tx.query_one("SELECT v FROM k WHERE id = 1", &[])
                    .await?
                    .get::<i32>(0)
            })
            .await
            .unwrap();
        assert_eq!(attempts.get(), 2);
        assert_eq!(v, 11);
    })
}

#[test]
fn copy_in_bulk_load() {
    run(async {
        let c = connect_fresh().await;
        c.batch_execute("CREATE TABLE bulk (id int8, name text, note text)")
            .await
            .unwrap();
        let mut data = CopyText::new();
        let names: Vec<String> = (0..5000).map(|i| format!("name\t{i}\\x\n")).collect();
        for (i, n) in names.iter().enumerate() {
            let id = i.to_string();
            data.row(&[
                Some(&id),
                Some(n),
                if i % 2 == 0 { None } else { Some("n") },
            ]);
        }
        let n = c
            .copy_in("COPY bulk (id, name, note) FROM STDIN", data.as_bytes())
            .await
            .unwrap();
        assert_eq!(n, 5000);
        let row = c
            .query_one(
                "SELECT count(*), count(note), max(name) FILTER (WHERE id = 7) FROM bulk",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<i64>(0).unwrap(), 5000);
        assert_eq!(row.get::<i64>(1).unwrap(), 2500);
        assert_eq!(row.get::<String>(2).unwrap(), names[7]);
        // Bad data and a bad table: errors, and the connection stays in sync.
        assert!(c
            .copy_in("COPY bulk (id) FROM STDIN", b"notanumber\n")
            .await
            .is_err());
        assert!(c.copy_in("COPY nosuch FROM STDIN", b"1\n").await.is_err());
        assert_eq!(
            c.query_one("SELECT 3", &[])
                .await
                .unwrap()
                .get::<i32>(0)
                .unwrap(),
            3
        );
    })
}

#[test]
fn authentication_methods() {
    run(async {
        // trust (the admin user) is covered by every other test.
        for method in ["password", "md5", "scram-sha-256"] {
            let cfg = auth_config(method).await;
            let c = Connection::connect(&cfg)
                .await
                .unwrap_or_else(|e| panic!("{method}: {e}"));
            let who: String = c
                .query_one("SELECT current_user::text", &[])
                .await
                .unwrap()
                .get(0)
                .unwrap();
            assert_eq!(who, cfg.user);
            let mut bad = cfg.clone();
            bad.password = Some("wrong".into());
            assert!(
                matches!(Connection::connect(&bad).await, Err(DbError::Auth(_))),
                "{method}"
            );
            let mut none = cfg.clone();
            none.password = None;
            assert!(
                matches!(Connection::connect(&none).await, Err(DbError::Auth(_))),
                "{method}"
            );
        }
    })
}

#[test]
fn unix_socket_and_url() {
    run(async {
        let cfg = fresh_db().await;
        let url = format!(
            "postgres:///{}?host={}&port={}&user={}",
            cfg.dbname,
            db_support::socket_dir().display(),
            cfg.port,
            cfg.user
        );
        let ucfg = hearth::db::ConnectConfig::from_url(&url).unwrap();
        assert!(matches!(ucfg.host, hearth::db::Host::Unix(_)));
        let c = Connection::connect(&ucfg).await.unwrap();
        let db: String = c
            .query_one("SELECT current_database()::text", &[])
            .await
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(db, cfg.dbname);
    })
}
