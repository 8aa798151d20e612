//! Multi-row writes: the rows of one kind from every write in a
//! group-commit batch go to PostgreSQL as ONE statement.
//!
//! A durable send writes a row into `events` (and often `txn_ids` and
//! `push_actions`). Sent as a statement per event, a batch of 200 sends is
//! 200 Bind/Execute pairs per table, each planned, each with its own
//! executor start-up and index-insertion call chain; PostgreSQL spent more
//! CPU per event on that than on the rows (bench/RESULTS.md "durable
//! send"). A [`Rows`] kind names a statement that takes one array
//! parameter per column (`INSERT … SELECT … FROM unnest($1, $2, …)`);
//! `Write::rows` adds a row of it, and the batch sends all rows of a kind
//! as one execution, at the place of the kind's first row in the batch.
//!
//! When merging is safe: moving a write's rows to an earlier place in the
//! batch must not change what they do. So a kind's statement reads no
//! table the batch writes, and nothing (no constraint, no trigger) ties its
//! rows to rows written by the statements they are moved ahead of. Rows of
//! one kind from different writes may still collide (a unique key): the
//! batch then fails as a whole and is retried write by write (group
//! commit's rule), so only the colliding write fails, as without merging.
//! A kind's statement result is not per row, so a write is told the number
//! of rows it submitted, not the number inserted.

use bytes::BytesMut;
use postgres_protocol::types as pgt;
use postgres_protocol::{IsNull, Oid};

use super::error::DbError;
use super::types::{oid, SqlValue, ToSql};

/// A kind of row: the statement (`$n` is the array of column `n`) and the
/// element type of each column.
#[derive(Debug)]
pub struct Rows {
    pub sql: &'static str,
    pub columns: &'static [Oid],
}

impl Rows {
    /// Why `row` cannot be a row of this kind, if it cannot.
    pub(crate) fn check(&self, row: &[SqlValue]) -> Result<(), DbError> {
        if row.len() != self.columns.len() {
            return Err(DbError::Type(format!(
                "{} values for {} columns",
                row.len(),
                self.columns.len()
            )));
        }
        for (i, (v, &ty)) in row.iter().zip(self.columns).enumerate() {
            if v.sql_type() != ty {
                return Err(DbError::Type(format!(
                    "column {}: type {} for {}",
                    i + 1,
                    v.sql_type(),
                    ty
                )));
            }
            if array_of(ty).is_none() {
                return Err(DbError::Type(format!(
                    "column {}: type {ty} unsupported",
                    i + 1
                )));
            }
        }
        Ok(())
    }

    /// The statement's parameters: one array per column of `rows` (each
    /// row already [`check`](Self::check)ed).
    pub(crate) fn columns<'a>(&self, rows: &[&'a [SqlValue]]) -> Vec<Column<'a>> {
        (0..self.columns.len())
            .map(|c| Column {
                element: self.columns[c],
                values: rows.iter().filter_map(|r| r.get(c)).collect(),
            })
            .collect()
    }
}

/// The array type of element type `ty`, for the ones rows carry.
fn array_of(ty: Oid) -> Option<Oid> {
    Some(match ty {
        oid::BOOL => 1000,
        oid::BYTEA => 1001,
        oid::INT2 => 1005,
        oid::INT4 => 1007,
        oid::TEXT => oid::TEXT_ARRAY,
        oid::INT8 => oid::INT8_ARRAY,
        oid::JSONB => 3807,
        _ => return None,
    })
}

/// One column of a batch's rows of a kind, sent as a one-dimensional
/// array (NULLs kept), borrowing the writes' values.
pub(crate) struct Column<'a> {
    element: Oid,
    values: Vec<&'a SqlValue>,
}

impl ToSql for Column<'_> {
    fn sql_type(&self) -> Oid {
        array_of(self.element).unwrap_or(oid::UNKNOWN)
    }

    fn to_sql(&self, buf: &mut BytesMut) -> Result<IsNull, DbError> {
        let len =
            i32::try_from(self.values.len()).map_err(|_| DbError::Type("too many rows".into()))?;
        let dims = [pgt::ArrayDimension {
            len,
            lower_bound: 1,
        }];
        pgt::array_to_sql(
            dims.into_iter().filter(|d| d.len > 0),
            self.element,
            self.values.iter(),
            |v, buf| v.to_sql(buf).map_err(|e| e.to_string().into()),
            buf,
        )
        .map_err(|e| DbError::Type(e.to_string()))?;
        Ok(IsNull::No)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static KIND: Rows = Rows {
        sql: "INSERT INTO t (a, b) SELECT * FROM unnest($1, $2)",
        columns: &[oid::TEXT, oid::INT8],
    };

    #[test]
    fn rows_must_match_the_kind() {
        assert!(KIND.check(&["x".into(), 1i64.into()]).is_ok());
        assert!(KIND.check(&["x".into(), SqlValue::Null(oid::INT8)]).is_ok());
        assert!(KIND.check(&["x".into()]).is_err());
        assert!(KIND.check(&[1i64.into(), "x".into()]).is_err());
        static ODD: Rows = Rows {
            sql: "",
            columns: &[oid::TEXT_ARRAY],
        };
        assert!(ODD.check(&[SqlValue::TextArray(vec![])]).is_err());
    }

    #[test]
    fn a_column_is_a_one_dimensional_array_with_its_nulls() {
        let a: Vec<SqlValue> = vec!["x".into(), 1i64.into()];
        let b: Vec<SqlValue> = vec!["y".into(), SqlValue::Null(oid::INT8)];
        let cols = KIND.columns(&[&a, &b]);
        assert_eq!(cols[0].sql_type(), oid::TEXT_ARRAY);
        let mut buf = BytesMut::new();
        cols[1].to_sql(&mut buf).unwrap();
        let arr = pgt::array_from_sql(&buf).unwrap();
        assert_eq!(arr.element_type(), oid::INT8);
        use fallible_iterator::FallibleIterator;
        let items: Vec<Option<&[u8]>> = arr.values().collect().unwrap();
        assert_eq!(items.len(), 2);
        assert!(items[1].is_none());
        // No rows: an empty array (no dimensions), which unnest reads as no rows.
        let mut buf = BytesMut::new();
        KIND.columns(&[])[0].to_sql(&mut buf).unwrap();
        assert_eq!(
            pgt::array_from_sql(&buf)
                .unwrap()
                .dimensions()
                .count()
                .unwrap(),
            0
        );
    }
}
