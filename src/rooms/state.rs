//! State storage that grows with state *changes*, not state size × events.
//!
//! Every event row points at a snapshot: the room state after it. A
//! snapshot is either full (every `(type, state_key) → event_id`) or a
//! delta against a parent snapshot holding only the changed keys; delta
//! chains are bounded (`MAX_CHAIN`), after which a full snapshot is written,
//! so reading any state walks at most `MAX_CHAIN` rows of `state_snapshots`
//! in one recursive query. Non-state events reuse the previous snapshot id:
//! no rows. See docs/ARCHITECTURE.md "State storage".

use std::collections::BTreeMap;

use crate::db::{DbError, Pool, SqlValue, Write};

/// Room state: `(type, state_key) → event_id`.
pub type StateMap = BTreeMap<(String, String), String>;

/// Longest delta chain before a full snapshot is written.
pub const MAX_CHAIN: i32 = 50;
/// A delta with more changed keys than this is written as a full snapshot.
pub const MAX_DELTA: usize = 100;

/// The room's latest snapshot, to delta against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHead {
    pub id: i64,
    pub chain_len: i32,
}

/// Rows to write for one new snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSnapshot {
    pub id: i64,
    pub parent: Option<i64>,
    pub chain_len: i32,
    /// `(type, state_key, event_id)`; `event_id == ""` removes the key.
    pub entries: Vec<(String, String, String)>,
}

impl NewSnapshot {
    pub fn head(&self) -> SnapshotHead {
        SnapshotHead {
            id: self.id,
            chain_len: self.chain_len,
        }
    }
}

/// Snapshot ids are unique without a round trip: the creating event's
/// stream writer (shard) and its position on that writer's stream.
pub fn snapshot_id(shard: usize, stream_ordering: i64) -> i64 {
    ((shard as i64) << 48) | stream_ordering
}

/// The id of a current-state snapshot written with the event at
/// `stream_ordering` when the resolved state is no event's own state (bit
/// 47 apart from the event's id; stream positions stay far below it).
pub fn current_snapshot_id(shard: usize, stream_ordering: i64) -> i64 {
    snapshot_id(shard, stream_ordering) | (1 << 47)
}

/// The id of the snapshot of a backfilled event at (negative) stream
/// position `pos`: bit 46 set, `-pos` below it, so it meets neither the
/// ids of positive positions nor the current-state ids (bit 47).
pub fn backfill_snapshot_id(shard: usize, pos: i64) -> i64 {
    ((shard as i64) << 48) | (1 << 46) | (pos.unsigned_abs() as i64 & ((1 << 46) - 1))
}

/// Decides between a delta against `parent` and a full snapshot.
pub fn plan(
    id: i64,
    parent: Option<SnapshotHead>,
    before: &StateMap,
    after: &StateMap,
) -> NewSnapshot {
    let mut delta: Vec<(String, String, String)> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|((t, s), e)| (t.clone(), s.clone(), e.clone()))
        .collect();
    delta.extend(
        before
            .keys()
            .filter(|k| !after.contains_key(*k))
            .map(|(t, s)| (t.clone(), s.clone(), String::new())),
    );
    match parent {
        Some(p) if p.chain_len + 1 < MAX_CHAIN && delta.len() <= MAX_DELTA => NewSnapshot {
            id,
            parent: Some(p.id),
            chain_len: p.chain_len + 1,
            entries: delta,
        },
        _ => NewSnapshot {
            id,
            parent: None,
            chain_len: 0,
            entries: after
                .iter()
                .map(|((t, s), e)| (t.clone(), s.clone(), e.clone()))
                .collect(),
        },
    }
}

/// Appends the statements persisting `snap` to `w`.
pub fn write(w: Write, room_id: &str, snap: &NewSnapshot) -> Write {
    let mut types = Vec::with_capacity(snap.entries.len());
    let mut keys = Vec::with_capacity(snap.entries.len());
    let mut ids = Vec::with_capacity(snap.entries.len());
    for (t, k, e) in &snap.entries {
        types.push(t.clone());
        keys.push(k.clone());
        ids.push(e.clone());
    }
    w.statement(
        "INSERT INTO state_snapshots (snapshot_id, room_id, parent_id, chain_len) \
         VALUES ($1, $2, $3, $4)",
        vec![
            snap.id.into(),
            room_id.into(),
            snap.parent.into(),
            snap.chain_len.into(),
        ],
    )
    .statement(
        "INSERT INTO state_snapshot_entries (snapshot_id, type, state_key, event_id) \
         SELECT $1, t, k, e FROM unnest($2::text[], $3::text[], $4::text[]) AS x(t, k, e)",
        vec![
            snap.id.into(),
            SqlValue::TextArray(types),
            SqlValue::TextArray(keys),
            SqlValue::TextArray(ids),
        ],
    )
}

/// The full state of snapshot `id`: the nearest entry for each key along
/// the chain from `id` up to its full snapshot.
pub async fn load(pool: &Pool, id: i64) -> Result<StateMap, DbError> {
    load_keys(pool, id, None).await
}

/// The state of snapshot `id`, only `keys` if given: the one recursive
/// walk of a delta chain (the keyed form serves visibility and lazy
/// loading, which need a few keys of many snapshots).
pub async fn load_keys(
    pool: &Pool,
    id: i64,
    keys: Option<&[(String, String)]>,
) -> Result<StateMap, DbError> {
    let (types, skeys): (Option<Vec<String>>, Option<Vec<String>>) = match keys {
        Some(k) => {
            let (t, s) = k.iter().cloned().unzip();
            (Some(t), Some(s))
        }
        None => (None, None),
    };
    let rows = pool
        .query(
            "WITH RECURSIVE chain(id, parent, hop) AS ( \
                 SELECT snapshot_id, parent_id, 0 FROM state_snapshots WHERE snapshot_id = $1 \
                 UNION ALL \
                 SELECT s.snapshot_id, s.parent_id, c.hop + 1 \
                 FROM state_snapshots s JOIN chain c ON s.snapshot_id = c.parent) \
             SELECT type, state_key, event_id FROM ( \
                 SELECT DISTINCT ON (e.type, e.state_key) e.type, e.state_key, e.event_id \
                 FROM chain c JOIN state_snapshot_entries e ON e.snapshot_id = c.id \
                 WHERE $2::text[] IS NULL \
                    OR (e.type, e.state_key) IN (SELECT * FROM unnest($2::text[], $3::text[])) \
                 ORDER BY e.type, e.state_key, c.hop) latest \
             WHERE event_id <> ''",
            &[&id, &types, &skeys],
        )
        .await?;
    let mut map = StateMap::new();
    for r in rows {
        map.insert((r.get(0)?, r.get(1)?), r.get(2)?);
    }
    Ok(map)
}

/// The head of snapshot `id` (its chain length), if it exists.
pub async fn head(pool: &Pool, id: i64) -> Result<Option<SnapshotHead>, DbError> {
    let row = pool
        .query_opt(
            "SELECT chain_len FROM state_snapshots WHERE snapshot_id = $1",
            &[&id],
        )
        .await?;
    row.map(|r| {
        Ok(SnapshotHead {
            id,
            chain_len: r.get(0)?,
        })
    })
    .transpose()
}

/// The state after `event_id` (including it, if it is a state event).
pub async fn state_after_event(pool: &Pool, event_id: &str) -> Result<Option<StateMap>, DbError> {
    let row = pool
        .query_opt(
            "SELECT snapshot_id FROM events WHERE event_id = $1",
            &[&event_id],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let id: Option<i64> = row.get(0)?;
    match id {
        Some(id) => load(pool, id).await.map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str, &str)]) -> StateMap {
        entries
            .iter()
            .map(|(t, k, e)| ((t.to_string(), k.to_string()), e.to_string()))
            .collect()
    }

    #[test]
    fn first_snapshot_is_full() {
        let after = map(&[("m.room.create", "", "$c")]);
        let s = plan(1, None, &StateMap::new(), &after);
        assert_eq!(s.parent, None);
        assert_eq!(s.chain_len, 0);
        assert_eq!(s.entries.len(), 1);
    }

    #[test]
    fn delta_holds_only_changes_and_removals() {
        let before = map(&[("a", "", "$1"), ("b", "", "$2"), ("c", "", "$3")]);
        let after = map(&[("a", "", "$1"), ("b", "", "$9"), ("d", "", "$4")]);
        let p = SnapshotHead {
            id: 7,
            chain_len: 3,
        };
        let s = plan(8, Some(p), &before, &after);
        assert_eq!(s.parent, Some(7));
        assert_eq!(s.chain_len, 4);
        let mut e = s.entries.clone();
        e.sort();
        assert_eq!(
            e,
            vec![
                ("b".into(), "".into(), "$9".into()),
                ("c".into(), "".into(), "".into()),
                ("d".into(), "".into(), "$4".into()),
            ]
        );
    }

    #[test]
    fn chain_is_bounded() {
        let before = map(&[("a", "", "$1")]);
        let after = map(&[("a", "", "$2")]);
        let p = SnapshotHead {
            id: 7,
            chain_len: MAX_CHAIN - 1,
        };
        let s = plan(8, Some(p), &before, &after);
        assert_eq!((s.parent, s.chain_len), (None, 0));
        assert_eq!(s.entries, vec![("a".into(), "".into(), "$2".into())]);
    }

    #[test]
    fn big_delta_becomes_full() {
        let before = StateMap::new();
        let after: StateMap = (0..=MAX_DELTA)
            .map(|i| {
                (
                    ("m.room.member".to_string(), format!("@u{i}:h")),
                    format!("$e{i}"),
                )
            })
            .collect();
        let p = SnapshotHead {
            id: 1,
            chain_len: 0,
        };
        assert_eq!(plan(2, Some(p), &before, &after).parent, None);
    }

    #[test]
    fn snapshot_ids_do_not_collide_across_shards() {
        assert_ne!(snapshot_id(0, 5), snapshot_id(1, 5));
        assert_eq!(snapshot_id(0, 5), 5);
    }
}
