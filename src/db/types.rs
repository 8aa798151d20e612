//! Typed parameters and rows.
//!
//! Parameters are always sent in binary with the type OID the Rust value
//! declares (so statements are prepared with explicit parameter types), and
//! results are requested in binary: no text parsing on the hot path. The
//! types here are the ones hearth stores: bool, int2/4/8, text, bytea,
//! jsonb, text[] and int8[]; `Option<T>` is NULL-able. Cast anything else in
//! SQL (`x::text`).

use std::ops::Range;
use std::rc::Rc;

use bytes::{BufMut, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::DataRowBody;
use postgres_protocol::types as pgt;
use postgres_protocol::{IsNull, Oid};

use super::error::DbError;

/// PostgreSQL type OIDs we handle (from `pg_type.dat`).
pub mod oid {
    use postgres_protocol::Oid;
    pub const BOOL: Oid = 16;
    pub const BYTEA: Oid = 17;
    pub const NAME: Oid = 19;
    pub const INT8: Oid = 20;
    pub const INT2: Oid = 21;
    pub const INT4: Oid = 23;
    pub const TEXT: Oid = 25;
    pub const OID: Oid = 26;
    pub const JSON: Oid = 114;
    pub const BPCHAR: Oid = 1042;
    pub const VARCHAR: Oid = 1043;
    pub const JSONB: Oid = 3802;
    pub const TEXT_ARRAY: Oid = 1009;
    pub const VARCHAR_ARRAY: Oid = 1015;
    pub const INT8_ARRAY: Oid = 1016;
    pub const UNKNOWN: Oid = 705;
}

fn is_text_like(ty: Oid) -> bool {
    matches!(
        ty,
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::UNKNOWN
    )
}

/// A Rust value that can be sent as a query parameter.
pub trait ToSql {
    /// The PostgreSQL type this value is sent as.
    fn sql_type(&self) -> Oid;
    /// Append the binary encoding to `buf` (or say it is NULL).
    fn to_sql(&self, buf: &mut BytesMut) -> Result<IsNull, DbError>;
}

/// The SQL type of a non-null Rust type, so `Option<T>::None` still has one.
pub trait SqlType {
    const OID: Oid;
}

macro_rules! simple_to_sql {
    ($t:ty, $oid:expr, |$v:ident, $buf:ident| $body:expr) => {
        impl SqlType for $t {
            const OID: Oid = $oid;
        }
        impl ToSql for $t {
            fn sql_type(&self) -> Oid {
                $oid
            }
            fn to_sql(&self, $buf: &mut BytesMut) -> Result<IsNull, DbError> {
                let $v = self;
                $body;
                Ok(IsNull::No)
            }
        }
    };
}

simple_to_sql!(bool, oid::BOOL, |v, buf| pgt::bool_to_sql(*v, buf));
simple_to_sql!(i16, oid::INT2, |v, buf| pgt::int2_to_sql(*v, buf));
simple_to_sql!(i32, oid::INT4, |v, buf| pgt::int4_to_sql(*v, buf));
simple_to_sql!(i64, oid::INT8, |v, buf| pgt::int8_to_sql(*v, buf));
simple_to_sql!(str, oid::TEXT, |v, buf| pgt::text_to_sql(v, buf));
simple_to_sql!(String, oid::TEXT, |v, buf| pgt::text_to_sql(v, buf));
simple_to_sql!([u8], oid::BYTEA, |v, buf| pgt::bytea_to_sql(v, buf));
simple_to_sql!(Vec<u8>, oid::BYTEA, |v, buf| pgt::bytea_to_sql(v, buf));
simple_to_sql!(serde_json::Value, oid::JSONB, |v, buf| json_to_sql(v, buf)?);
simple_to_sql!([String], oid::TEXT_ARRAY, |v, buf| text_array_to_sql(
    v.iter().map(|s| s.as_str()),
    buf
)?);
simple_to_sql!(Vec<String>, oid::TEXT_ARRAY, |v, buf| text_array_to_sql(
    v.iter().map(|s| s.as_str()),
    buf
)?);
simple_to_sql!([&str], oid::TEXT_ARRAY, |v, buf| text_array_to_sql(
    v.iter().copied(),
    buf
)?);
simple_to_sql!(Vec<&str>, oid::TEXT_ARRAY, |v, buf| text_array_to_sql(
    v.iter().copied(),
    buf
)?);
simple_to_sql!([i64], oid::INT8_ARRAY, |v, buf| int8_array_to_sql(v, buf)?);
simple_to_sql!(Vec<i64>, oid::INT8_ARRAY, |v, buf| int8_array_to_sql(
    v, buf
)?);

impl<T: ToSql + ?Sized> ToSql for &T {
    fn sql_type(&self) -> Oid {
        (**self).sql_type()
    }
    fn to_sql(&self, buf: &mut BytesMut) -> Result<IsNull, DbError> {
        (**self).to_sql(buf)
    }
}

impl<T: ToSql + SqlType> ToSql for Option<T> {
    fn sql_type(&self) -> Oid {
        T::OID
    }
    fn to_sql(&self, buf: &mut BytesMut) -> Result<IsNull, DbError> {
        match self {
            Some(v) => v.to_sql(buf),
            None => Ok(IsNull::Yes),
        }
    }
}

fn json_to_sql(v: &serde_json::Value, buf: &mut BytesMut) -> Result<(), DbError> {
    // jsonb binary format: a version byte (1) then the JSON text.
    buf.put_u8(1);
    serde_json::to_writer((&mut *buf).writer(), v).map_err(|e| DbError::Type(e.to_string()))
}

fn conv(e: Box<dyn std::error::Error + Sync + Send>) -> DbError {
    DbError::Type(e.to_string())
}

fn text_array_to_sql<'a>(
    items: impl ExactSizeIterator<Item = &'a str>,
    buf: &mut BytesMut,
) -> Result<(), DbError> {
    let len = i32::try_from(items.len()).map_err(|_| DbError::Type("array too long".into()))?;
    let dims = [pgt::ArrayDimension {
        len,
        lower_bound: 1,
    }];
    pgt::array_to_sql(
        dims.into_iter().filter(|d| d.len > 0),
        oid::TEXT,
        items,
        |s, buf| {
            pgt::text_to_sql(s, buf);
            Ok(IsNull::No)
        },
        buf,
    )
    .map_err(conv)
}

fn int8_array_to_sql(items: &[i64], buf: &mut BytesMut) -> Result<(), DbError> {
    let len = i32::try_from(items.len()).map_err(|_| DbError::Type("array too long".into()))?;
    let dims = [pgt::ArrayDimension {
        len,
        lower_bound: 1,
    }];
    pgt::array_to_sql(
        dims.into_iter().filter(|d| d.len > 0),
        oid::INT8,
        items.iter(),
        |v, buf| {
            pgt::int8_to_sql(*v, buf);
            Ok(IsNull::No)
        },
        buf,
    )
    .map_err(conv)
}

/// An owned parameter, for queuing writes (group commit) beyond the
/// lifetime of the caller's borrowed values.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// NULL of the given type.
    Null(Oid),
    Bool(bool),
    Int2(i16),
    Int4(i32),
    Int8(i64),
    Text(String),
    Bytea(Vec<u8>),
    Jsonb(serde_json::Value),
    TextArray(Vec<String>),
    Int8Array(Vec<i64>),
}

impl ToSql for SqlValue {
    fn sql_type(&self) -> Oid {
        match self {
            SqlValue::Null(t) => *t,
            SqlValue::Bool(_) => oid::BOOL,
            SqlValue::Int2(_) => oid::INT2,
            SqlValue::Int4(_) => oid::INT4,
            SqlValue::Int8(_) => oid::INT8,
            SqlValue::Text(_) => oid::TEXT,
            SqlValue::Bytea(_) => oid::BYTEA,
            SqlValue::Jsonb(_) => oid::JSONB,
            SqlValue::TextArray(_) => oid::TEXT_ARRAY,
            SqlValue::Int8Array(_) => oid::INT8_ARRAY,
        }
    }
    fn to_sql(&self, buf: &mut BytesMut) -> Result<IsNull, DbError> {
        match self {
            SqlValue::Null(_) => Ok(IsNull::Yes),
            SqlValue::Bool(v) => v.to_sql(buf),
            SqlValue::Int2(v) => v.to_sql(buf),
            SqlValue::Int4(v) => v.to_sql(buf),
            SqlValue::Int8(v) => v.to_sql(buf),
            SqlValue::Text(v) => v.to_sql(buf),
            SqlValue::Bytea(v) => v.to_sql(buf),
            SqlValue::Jsonb(v) => v.to_sql(buf),
            SqlValue::TextArray(v) => v.to_sql(buf),
            SqlValue::Int8Array(v) => v.to_sql(buf),
        }
    }
}

macro_rules! sql_value_from {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for SqlValue {
            fn from(x: $t) -> SqlValue { SqlValue::$v(x.into()) }
        }
    )*};
}
sql_value_from!(bool => Bool, i16 => Int2, i32 => Int4, i64 => Int8, String => Text,
    &str => Text, Vec<u8> => Bytea, serde_json::Value => Jsonb, Vec<String> => TextArray,
    Vec<i64> => Int8Array);

impl<T: Into<SqlValue> + SqlType> From<Option<T>> for SqlValue {
    fn from(x: Option<T>) -> SqlValue {
        match x {
            Some(v) => v.into(),
            None => SqlValue::Null(T::OID),
        }
    }
}

/// A Rust value that can be read from a (binary) result column.
pub trait FromSql<'a>: Sized {
    fn from_sql(ty: Oid, raw: &'a [u8]) -> Result<Self, DbError>;
    /// What a SQL NULL becomes: an error unless the type is `Option`.
    fn from_null(ty: Oid) -> Result<Self, DbError> {
        Err(DbError::Type(format!(
            "unexpected NULL in column of type {ty}: read it as Option<_>"
        )))
    }
}

fn wrong_type<T>(ty: Oid, rust: &str) -> Result<T, DbError> {
    Err(DbError::Type(format!(
        "cannot read SQL type oid {ty} as {rust}"
    )))
}

impl<'a> FromSql<'a> for bool {
    fn from_sql(ty: Oid, raw: &'a [u8]) -> Result<Self, DbError> {
        match ty {
            oid::BOOL => pgt::bool_from_sql(raw).map_err(conv),
            _ => wrong_type(ty, "bool"),
        }
    }
}

impl<'a> FromSql<'a> for i16 {
    fn from_sql(ty: Oid, raw: &'a [u8]) -> Result<Self, DbError> {
        match ty {
            oid::INT2 => pgt::int2_from_sql(raw).map_err(conv),
            _ => wrong_type(ty, "i16"),
        }
    }
}

impl<'a> FromSql<'a> for i32 {
    fn from_sql(ty: Oid, raw: &'a [u8]) -> Result<Self, DbError> {
        match ty {
            oid::INT2 => pgt::int2_from_sql(raw).map(i32::from).map_err(conv),
            oid::INT4 => pgt::int4_from_sql(raw).map_err(conv),
            oid::OID => pgt::oid_from_sql(raw)
                .map_err(conv)
                .and_then(|v| i32::try_from(v).map_err(|e| DbError::Type(e.to_string()))),
            _ => wrong_type(ty, "i32"),
        }
    }
}

impl<'a> FromSql<'a> for i64 {
    /// Widening from int2/int4 is allowed (e.g. `count(*)` vs `max(int4)`).
    fn from_sql(ty: Oid, raw: &'a [u8]) -> Result<Self, DbError> {
        match ty {
            oid::INT2 => pgt::int2_from_sql(raw).map(i64::from).map_err(conv),
            oid::INT4 => pgt::int4_from_sql(raw).map(i64::from).map_err(conv),
            oid::INT8 => pgt::int8_from_sql(raw).map_err(conv),
            oid::OID => pgt::oid_from_sql(raw).map(i64::from).map_err(conv),
            _ => wrong_type(ty, "i64"),
        }
    }
}

impl<'a> FromSql<'a> for &'a str {
    fn from_sql(ty: Oid, raw: &'a [u8]) -> Result<Self, DbError> {
        if is_text_like(ty) || ty == oid::JSON {
            pgt::text_from_sql(raw).map_err(conv)
        } else {
            wrong_type(ty, "&str")
        }
    }
}

impl<'a> FromSql<'a> for String {
    fn from_sql(ty: Oid, raw: &'a [u8]) -> Result<Self, DbError> {
        <&str>::from_sql(ty, raw).map(str::to_owned)
    }
}

impl<'a> FromSql<'a> for &'a [u8] {
    fn from_sql(ty: Oid, raw: &'a [u8]) -> Result<Self, DbError> {
        match ty {
            oid::BYTEA => Ok(pgt::bytea_from_sql(raw)),
            _ => wrong_type(ty, "&[u8]"),
        }
    }
}

impl<'a> FromSql<'a> for Vec<u8> {
    fn from_sql(ty: Oid, raw: &'a [u8]) -> Result<Self, DbError> {
        <&[u8]>::from_sql(ty, raw).map(<[u8]>::to_vec)
    }
}

impl<'a> FromSql<'a> for serde_json::Value {
    fn from_sql(ty: Oid, raw: &'a [u8]) -> Result<Self, DbError> {
        let text = match ty {
            oid::JSONB => match raw.split_first() {
                Some((1, rest)) => rest,
                _ => return Err(DbError::Type("unsupported jsonb binary version".into())),
            },
            oid::JSON => raw,
            _ => return wrong_type(ty, "serde_json::Value"),
        };
        serde_json::from_slice(text)
            .map_err(|e| DbError::Type(format!("bad json from database: {e}")))
    }
}

/// Decode a one-dimensional array (or an empty one) of `elem` values.
fn array_from_sql<'a, T>(
    raw: &'a [u8],
    elem_ok: impl Fn(Oid) -> bool,
    mut elem: impl FnMut(Oid, Option<&'a [u8]>) -> Result<T, DbError>,
) -> Result<Vec<T>, DbError> {
    let array = pgt::array_from_sql(raw).map_err(conv)?;
    let elem_ty = array.element_type();
    if !elem_ok(elem_ty) {
        return wrong_type(elem_ty, "array element");
    }
    let mut dims = array.dimensions();
    let mut ndims = 0;
    while dims.next().map_err(conv)?.is_some() {
        ndims += 1;
    }
    if ndims > 1 {
        return Err(DbError::Type(
            "multi-dimensional arrays are not supported".into(),
        ));
    }
    let mut values = array.values();
    let mut out = Vec::new();
    while let Some(v) = values.next().map_err(conv)? {
        out.push(elem(elem_ty, v)?);
    }
    Ok(out)
}

impl<'a> FromSql<'a> for Vec<String> {
    fn from_sql(ty: Oid, raw: &'a [u8]) -> Result<Self, DbError> {
        if !matches!(ty, oid::TEXT_ARRAY | oid::VARCHAR_ARRAY) {
            return wrong_type(ty, "Vec<String>");
        }
        array_from_sql(raw, is_text_like, |t, v| match v {
            Some(v) => String::from_sql(t, v),
            None => String::from_null(t),
        })
    }
}

impl<'a> FromSql<'a> for Vec<i64> {
    fn from_sql(ty: Oid, raw: &'a [u8]) -> Result<Self, DbError> {
        if ty != oid::INT8_ARRAY {
            return wrong_type(ty, "Vec<i64>");
        }
        array_from_sql(
            raw,
            |t| t == oid::INT8,
            |t, v| match v {
                Some(v) => i64::from_sql(t, v),
                None => i64::from_null(t),
            },
        )
    }
}

impl<'a, T: FromSql<'a>> FromSql<'a> for Option<T> {
    fn from_sql(ty: Oid, raw: &'a [u8]) -> Result<Self, DbError> {
        T::from_sql(ty, raw).map(Some)
    }
    fn from_null(_ty: Oid) -> Result<Self, DbError> {
        Ok(None)
    }
}

/// A result column: name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: Oid,
}

/// One result row, holding the raw DataRow bytes (no copying per field).
#[derive(Debug, Clone)]
pub struct Row {
    columns: Rc<[Column]>,
    body: DataRowBody,
    ranges: Vec<Option<Range<usize>>>,
}

/// Something that selects a column: an index or a name.
pub trait RowIndex {
    fn index(&self, columns: &[Column]) -> Option<usize>;
    fn describe(&self) -> String;
}

impl RowIndex for usize {
    fn index(&self, columns: &[Column]) -> Option<usize> {
        (*self < columns.len()).then_some(*self)
    }
    fn describe(&self) -> String {
        format!("#{self}")
    }
}

impl RowIndex for &str {
    fn index(&self, columns: &[Column]) -> Option<usize> {
        columns.iter().position(|c| c.name == *self)
    }
    fn describe(&self) -> String {
        format!("{self:?}")
    }
}

impl Row {
    /// Build a row, validating the field framing against the columns.
    pub(crate) fn new(columns: Rc<[Column]>, body: DataRowBody) -> Result<Row, DbError> {
        let ranges: Vec<_> = body.ranges().collect().map_err(DbError::protocol)?;
        if ranges.len() != columns.len() {
            return Err(DbError::Protocol(format!(
                "row has {} fields, description has {}",
                ranges.len(),
                columns.len()
            )));
        }
        Ok(Row {
            columns,
            body,
            ranges,
        })
    }

    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Read column `idx` as `T`; a type mismatch or unexpected NULL is an
    /// error (values come from the database: never panic on them).
    pub fn get<'a, T: FromSql<'a>>(&'a self, idx: impl RowIndex) -> Result<T, DbError> {
        let i = idx
            .index(&self.columns)
            .ok_or_else(|| DbError::Type(format!("no column {}", idx.describe())))?;
        let ty = self.columns[i].type_oid;
        match &self.ranges[i] {
            None => T::from_null(ty),
            Some(r) => {
                let raw = self
                    .body
                    .buffer()
                    .get(r.clone())
                    .ok_or_else(|| DbError::Protocol("field out of bounds".into()))?;
                T::from_sql(ty, raw)
            }
        }
    }
}

/// A row of a simple (text-protocol) query: every value is text or NULL.
#[derive(Debug, Clone)]
pub struct SimpleRow {
    pub(crate) values: Vec<Option<String>>,
}

impl SimpleRow {
    pub fn get(&self, idx: usize) -> Option<&str> {
        self.values.get(idx).and_then(|v| v.as_deref())
    }
    pub fn len(&self) -> usize {
        self.values.len()
    }
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<T>(v: T) -> T
    where
        T: ToSql + for<'a> FromSql<'a>,
    {
        let mut buf = BytesMut::new();
        match v.to_sql(&mut buf).unwrap() {
            IsNull::No => T::from_sql(v.sql_type(), &buf).unwrap(),
            IsNull::Yes => T::from_null(v.sql_type()).unwrap(),
        }
    }

    #[test]
    fn scalar_roundtrips() {
        assert!(roundtrip(true));
        assert_eq!(roundtrip(-5i16), -5);
        assert_eq!(roundtrip(i32::MIN), i32::MIN);
        assert_eq!(roundtrip(i64::MAX), i64::MAX);
        assert_eq!(roundtrip("héllo".to_owned()), "héllo");
        assert_eq!(roundtrip(vec![0u8, 255]), vec![0, 255]);
        let j = serde_json::json!({"a": [1, "x", null]});
        assert_eq!(roundtrip(j.clone()), j);
        assert_eq!(
            roundtrip(vec!["a".to_owned(), "".to_owned()]),
            vec!["a", ""]
        );
        assert_eq!(roundtrip(Vec::<String>::new()), Vec::<String>::new());
        assert_eq!(roundtrip(vec![1i64, -2]), vec![1, -2]);
        assert_eq!(roundtrip(None::<i64>), None);
        assert_eq!(roundtrip(Some(3i64)), Some(3));
    }

    #[test]
    fn mismatches_are_errors() {
        assert!(i16::from_sql(oid::INT8, &[0; 8]).is_err());
        assert!(i64::from_sql(oid::INT8, &[0; 3]).is_err());
        assert!(i64::from_null(oid::INT8).is_err());
        assert!(serde_json::Value::from_sql(oid::JSONB, &[2, b'1']).is_err());
        assert!(Vec::<String>::from_sql(oid::TEXT_ARRAY, &[0, 0, 0, 9]).is_err());
    }
}
