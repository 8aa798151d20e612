//! Stored filters (`POST/GET /user/{userId}/filter`), in PostgreSQL, with
//! a per-shard cache of parsed filters: a filter never changes once
//! stored, so the cache needs no invalidation, and a sync naming a filter
//! id costs no database round trip after the first.

use std::cell::RefCell;
use std::num::NonZeroUsize;
use std::rc::Rc;

use lru::LruCache;
use ruma::{OwnedUserId, UserId};
use serde_json::Value;

use crate::db::Pool;

use super::SyncError;
use crate::filter::Filter;

const CACHE: usize = 20_000;

thread_local! {
    static PARSED: RefCell<LruCache<(OwnedUserId, i64), Rc<Filter>>> =
        RefCell::new(LruCache::new(NonZeroUsize::new(CACHE).unwrap_or(NonZeroUsize::MIN)));
    /// The filter of a sync without `filter=` (most syncs): shared, not
    /// rebuilt per request.
    static DEFAULT: Rc<Filter> = Rc::new(Filter::default());
}

/// Stores `json` (already validated) for `user`; returns its id. Storing
/// the same filter twice returns the first id, as Synapse does.
pub async fn create(db: &Pool, user: &UserId, json: &Value) -> Result<i64, SyncError> {
    if let Some(r) = db
        .query_opt(
            "SELECT filter_id FROM user_filters WHERE user_id = $1 AND filter_json = $2 \
             ORDER BY filter_id LIMIT 1",
            &[&user.as_str(), json],
        )
        .await?
    {
        return Ok(r.get(0)?);
    }
    let mut tries = 0;
    loop {
        let r = db
            .query_one(
                "INSERT INTO user_filters (user_id, filter_id, filter_json) \
                 SELECT $1, coalesce(max(filter_id) + 1, 0), $2 \
                 FROM user_filters WHERE user_id = $1 RETURNING filter_id",
                &[&user.as_str(), json],
            )
            .await;
        match r {
            Ok(row) => return Ok(row.get(0)?),
            // Two concurrent creations for one user: take the next id.
            Err(e) if e.code() == Some("23505") && tries < 5 => tries += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The stored JSON of `user`'s filter `id`.
pub async fn get(db: &Pool, user: &UserId, id: i64) -> Result<Option<Value>, SyncError> {
    let row = db
        .query_opt(
            "SELECT filter_json FROM user_filters WHERE user_id = $1 AND filter_id = $2",
            &[&user.as_str(), &id],
        )
        .await?;
    Ok(row.map(|r| r.get(0)).transpose()?)
}

/// Parses a filter id as the API hands them out (a non-negative integer).
pub fn parse_id(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The filter a sync asks for (`filter=`: inline JSON or a stored id).
/// Errors as Synapse answers them: 400 `M_NOT_JSON`/`M_BAD_JSON` for bad
/// inline JSON, 400 `M_INVALID_PARAM` for an unknown or malformed id.
pub async fn resolve(
    db: &Pool,
    user: &UserId,
    param: Option<&str>,
) -> Result<Rc<Filter>, SyncError> {
    let Some(p) = param else {
        return Ok(DEFAULT.with(Rc::clone));
    };
    if p.trim_start().starts_with('{') {
        let (f, _) = Filter::from_slice(p.as_bytes())?;
        return Ok(Rc::new(f));
    }
    let id = parse_id(p).ok_or_else(|| SyncError::UnknownFilter("Invalid filter id".into()))?;
    let key = (user.to_owned(), id);
    if let Some(f) = PARSED.with(|c| c.borrow_mut().get(&key).cloned()) {
        return Ok(f);
    }
    let json = get(db, user, id)
        .await?
        .ok_or_else(|| SyncError::UnknownFilter("No such filter".into()))?;
    let f = Rc::new(Filter::from_value(&json)?);
    PARSED.with(|c| c.borrow_mut().put(key, f.clone()));
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_ids() {
        assert_eq!(parse_id("0"), Some(0));
        assert_eq!(parse_id("42"), Some(42));
        for bad in ["", "-1", "x", "1.0", " 1", "99999999999999999999"] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }
}
