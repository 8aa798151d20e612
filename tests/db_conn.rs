//! The wire client against a real PostgreSQL: queries, types, pipelining,
//! errors, statement cache, cancellation safety, transactions, COPY.

mod db_support;

use db_support::{connect_fresh, run};
use hearth::db::{DbError, SqlValue, ToSql};

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
    })
}
