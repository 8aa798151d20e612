//! A room's history in order: positions, pagination tokens, and the
//! queries that walk it.
//!
//! **Room order** is `(depth, stream_shard, stream_ordering)`. History is
//! linear today (depth strictly grows), but the order stays total and
//! stable if depths ever repeat (forks after federation): ties fall back to
//! the writer shard and its stream position, both fixed once persisted.
//!
//! **Tokens name a position between events**: a token covers the events
//! at or before it in room order. Room tokens are `t{depth}_{shard}_{stream}`
//! ([`RoomToken`]); sync tokens (`s…`, [`StreamToken`]) are accepted too: an
//! event is at/before a sync token when `stream_ordering <=
//! token.persisted(stream_shard)`, and such a token is turned into the room
//! position of the latest event it covers ([`resolve_stream_token`]). Since a
//! token names a position, not "the n-th event", a token taken earlier gives
//! the same page later, after more sends and across restarts.

use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

use ruma::canonical_json;
use ruma::OwnedEventId;

use crate::db::{DbError, Pool, Row};
use crate::events::RoomVersion;
use crate::stream::StreamToken;

use super::RoomError;
use crate::events::Pdu;
use crate::filter::RoomEventFilter;

/// A position in room order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoomPos {
    pub depth: i64,
    pub shard: i32,
    pub stream: i64,
}

impl RoomPos {
    /// Before every event (depths start at 1).
    pub const START: RoomPos = RoomPos {
        depth: 0,
        shard: 0,
        stream: 0,
    };
    /// After every event.
    pub const END: RoomPos = RoomPos {
        depth: i64::MAX,
        shard: i32::MAX,
        stream: i64::MAX,
    };

    /// The greatest position strictly before `self` (so a token at it
    /// covers everything before the event at `self`, not the event).
    /// Stream positions may be negative (backfilled events).
    pub fn predecessor(self) -> RoomPos {
        if self <= RoomPos::START {
            RoomPos::START
        } else if self.stream > i64::MIN {
            RoomPos {
                stream: self.stream - 1,
                ..self
            }
        } else if self.shard > 0 {
            RoomPos {
                shard: self.shard - 1,
                stream: i64::MAX,
                ..self
            }
        } else if self.depth > 0 {
            RoomPos {
                depth: self.depth - 1,
                shard: i32::MAX,
                stream: i64::MAX,
            }
        } else {
            RoomPos::START
        }
    }
}

/// A room pagination token: covers the events at or before `pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoomToken(pub RoomPos);

/// A token a client sent that we cannot read (400 `M_INVALID_PARAM`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pagination token")]
pub struct BadToken;

impl RoomToken {
    /// Parses `t{depth}_{shard}_{stream}` (decimal; only the stream
    /// position may be negative: backfilled events').
    pub fn parse(s: &str) -> Result<RoomToken, BadToken> {
        let body = s.strip_prefix('t').ok_or(BadToken)?;
        let mut parts = body.split('_');
        let mut num = |signed: bool| -> Result<i64, BadToken> {
            let p = parts.next().ok_or(BadToken)?;
            let (neg, digits) = match p.strip_prefix('-') {
                Some(d) if signed => (true, d),
                _ => (false, p),
            };
            if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(BadToken);
            }
            let n = digits.parse::<i64>().map_err(|_| BadToken)?;
            Ok(if neg { -n } else { n })
        };
        let depth = num(false)?;
        let shard = i32::try_from(num(false)?).map_err(|_| BadToken)?;
        let stream = num(true)?;
        if parts.next().is_some() {
            return Err(BadToken);
        }
        Ok(RoomToken(RoomPos {
            depth,
            shard,
            stream,
        }))
    }
}

impl fmt::Display for RoomToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}_{}_{}", self.0.depth, self.0.shard, self.0.stream)
    }
}

/// A `from`/`to`/`at` token as clients send them: ours or a sync token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageToken {
    Room(RoomToken),
    Stream(StreamToken),
}

impl PageToken {
    pub fn parse(s: &str) -> Result<PageToken, BadToken> {
        match s.as_bytes().first() {
            Some(b't') => RoomToken::parse(s).map(PageToken::Room),
            Some(b's') => StreamToken::parse(s)
                .map(PageToken::Stream)
                .map_err(|_| BadToken),
            _ => Err(BadToken),
        }
    }

    /// The room position this token names in `room`.
    pub async fn resolve(
        &self,
        db: &Pool,
        room_id: &str,
        n_shards: usize,
    ) -> Result<RoomPos, RoomError> {
        match self {
            PageToken::Room(t) => Ok(t.0),
            PageToken::Stream(t) => resolve_stream_token(db, room_id, t, n_shards).await,
        }
    }
}

impl fmt::Display for PageToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PageToken::Room(t) => t.fmt(f),
            PageToken::Stream(t) => t.fmt(f),
        }
    }
}

/// Pagination direction (`dir=b|f`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Back,
    Forward,
}

/// A room event with what reading needs besides its JSON.
#[derive(Debug, Clone)]
pub struct TimelineEvent {
    pub pdu: Rc<Pdu>,
    pub version: RoomVersion,
    pub pos: RoomPos,
    /// The room state after this event (`rooms::state`).
    pub snapshot_id: i64,
    /// For a state event: the state event it replaced, if any.
    pub prev_state: Option<String>,
}

/// Columns [`TimelineEvent::from_row`] reads, for `events e JOIN rooms r`.
pub const EVENT_COLUMNS: &str = "e.event_id, e.json, e.depth, e.stream_shard, \
     e.stream_ordering, e.snapshot_id, e.prev_state_event_id, r.room_version";

impl TimelineEvent {
    /// Parses a row selected with [`EVENT_COLUMNS`].
    pub fn from_row(row: &Row) -> Result<TimelineEvent, RoomError> {
        let internal = |e: String| RoomError::Internal(format!("stored event: {e}"));
        let id: String = row.get(0)?;
        let event_id = OwnedEventId::try_from(id).map_err(|e| internal(e.to_string()))?;
        let serde_json::Value::Object(map) = row.get::<serde_json::Value>(1)? else {
            return Err(internal("not an object".into()));
        };
        let json = canonical_json::try_from_json_map(map).map_err(|e| internal(e.to_string()))?;
        let version = RoomVersion::parse(row.get::<&str>(7)?)?;
        Ok(TimelineEvent {
            pdu: Rc::new(Pdu::from_json(event_id, json, version)?),
            version,
            pos: RoomPos {
                depth: row.get(2)?,
                shard: row.get(3)?,
                stream: row.get(4)?,
            },
            snapshot_id: row.get::<Option<i64>>(5)?.unwrap_or_default(),
            prev_state: row.get(6)?,
        })
    }
}

/// Loads timeline events by id (any rooms), keyed by id: no outliers, for
/// what a client asks for by event id (`/event`, `/context`).
pub async fn load_timeline_by_ids(
    db: &Pool,
    ids: &[String],
) -> Result<HashMap<String, TimelineEvent>, RoomError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events e JOIN rooms r USING (room_id) \
         WHERE e.event_id = ANY($1)"
    );
    let rows = db.query(&sql, &[&ids]).await?;
    rows.iter()
        .map(|r| TimelineEvent::from_row(r).map(|e| (e.pdu.event_id.to_string(), e)))
        .collect()
}

/// Loads events by id (any rooms), keyed by id; unknown ids are absent.
pub async fn load_by_ids(
    db: &Pool,
    ids: &[String],
) -> Result<HashMap<String, TimelineEvent>, RoomError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    // Outliers too: a state map may name one (state a resident server gave
    // us on a join, or across a gap), and it is served like any state
    // event. Soft-failed events never are.
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events e JOIN rooms r USING (room_id) \
         WHERE e.event_id = ANY($1) \
         UNION ALL \
         SELECT g.event_id, g.json, g.depth, g.stream_shard, g.stream_ordering, g.snapshot_id, \
                NULL::text, r.room_version FROM graph_events g JOIN rooms r USING (room_id) \
         WHERE g.event_id = ANY($1) AND g.status = 'outlier'"
    );
    let rows = db.query(&sql, &[&ids]).await?;
    rows.iter()
        .map(|r| TimelineEvent::from_row(r).map(|e| (e.pdu.event_id.to_string(), e)))
        .collect()
}

/// Loads events by id, keeping the order of `ids` and skipping unknown ones.
pub async fn load_ordered(db: &Pool, ids: &[String]) -> Result<Vec<TimelineEvent>, RoomError> {
    let mut map = load_by_ids(db, ids).await?;
    Ok(ids.iter().filter_map(|id| map.remove(id)).collect())
}

fn pos_of(row: &Row) -> Result<RoomPos, DbError> {
    Ok(RoomPos {
        depth: row.get(0)?,
        shard: row.get(1)?,
        stream: row.get(2)?,
    })
}

/// The position of the room's latest event (`None`: unknown room).
pub async fn latest_pos(db: &Pool, room_id: &str) -> Result<Option<RoomPos>, RoomError> {
    let row = db
        .query_opt(
            "SELECT depth, stream_shard, stream_ordering FROM events WHERE room_id = $1 \
             ORDER BY depth DESC, stream_shard DESC, stream_ordering DESC LIMIT 1",
            &[&room_id],
        )
        .await?;
    Ok(row.map(|r| pos_of(&r)).transpose()?)
}

/// The room position equivalent to a sync token: that of the latest event
/// of the room the token covers (`stream_ordering <=
/// token.persisted(stream_shard)`), or [`RoomPos::START`] if none.
pub async fn resolve_stream_token(
    db: &Pool,
    room_id: &str,
    token: &StreamToken,
    n_shards: usize,
) -> Result<RoomPos, RoomError> {
    let row = db
        .query_opt(
            "SELECT depth, stream_shard, stream_ordering FROM events WHERE room_id = $1 \
             AND stream_ordering <= coalesce(($2::bigint[])[stream_shard + 1], 0) \
             ORDER BY depth DESC, stream_shard DESC, stream_ordering DESC LIMIT 1",
            &[&room_id, &token.persisted_vec(n_shards)],
        )
        .await?;
    Ok(row
        .map(|r| pos_of(&r))
        .transpose()?
        .unwrap_or(RoomPos::START))
}

/// Up to `limit` events of the room matching `filter`, walking from `from`
/// towards `to`. `Back`: events in `(to, from]`, newest first; `Forward`:
/// events in `(from, to]`, oldest first. (Visibility is the caller's.)
pub async fn page(
    db: &Pool,
    room_id: &str,
    dir: Dir,
    from: RoomPos,
    to: RoomPos,
    filter: &RoomEventFilter,
    limit: usize,
) -> Result<Vec<TimelineEvent>, RoomError> {
    // One SQL text per direction (prepared once per connection); the
    // filter's parts are NULL/empty when unused.
    let (hi, lo, order) = match dir {
        Dir::Back => (from, to, "DESC"),
        Dir::Forward => (to, from, "ASC"),
    };
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events e JOIN rooms r USING (room_id) \
         WHERE e.room_id = $1 \
         AND (e.depth, e.stream_shard, e.stream_ordering) <= ($2, $3, $4) \
         AND (e.depth, e.stream_shard, e.stream_ordering) > ($5, $6, $7) \
         AND ($8::text[] IS NULL OR e.type LIKE ANY($8)) \
         AND NOT (e.type LIKE ANY($9::text[])) \
         AND ($10::text[] IS NULL OR e.sender = ANY($10)) \
         AND NOT (e.sender = ANY($11::text[])) \
         AND ($12::bool IS NULL \
              OR (coalesce(jsonb_typeof(e.json->'content'->'url'), '') = 'string') = $12) \
         ORDER BY e.depth {order}, e.stream_shard {order}, e.stream_ordering {order} \
         LIMIT $13"
    );
    let types = filter.base.types.as_ref().map(|t| like_patterns(t));
    let not_types = like_patterns(&filter.base.not_types);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = db
        .query(
            &sql,
            &[
                &room_id,
                &hi.depth,
                &hi.shard,
                &hi.stream,
                &lo.depth,
                &lo.shard,
                &lo.stream,
                &types,
                &not_types,
                &filter.base.senders,
                &filter.base.not_senders,
                &filter.contains_url,
                &limit,
            ],
        )
        .await?;
    rows.iter().map(TimelineEvent::from_row).collect()
}

/// For `/sync`: the newest `limit` events of `room_id` after `since` and
/// at/before `upto` (sync tokens; `since = None`: from the start), oldest
/// first, and whether more such events exist (`limited`). For a limited
/// timeline, `RoomToken(events[0].pos.predecessor())` is the exact
/// `prev_batch` (an `s…` token covering `since` would repeat nothing but
/// cannot name a point inside the gap). Visibility is the caller's.
pub async fn recent_events(
    db: &Pool,
    room_id: &str,
    since: Option<&StreamToken>,
    upto: &StreamToken,
    n_shards: usize,
    limit: usize,
) -> Result<(Vec<TimelineEvent>, bool), RoomError> {
    let since = since.map_or_else(|| vec![0; n_shards], |t| t.persisted_vec(n_shards));
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events e JOIN rooms r USING (room_id) \
         WHERE e.room_id = $1 \
         AND e.stream_ordering <= coalesce(($2::bigint[])[e.stream_shard + 1], 0) \
         AND e.stream_ordering > coalesce(($3::bigint[])[e.stream_shard + 1], 0) \
         ORDER BY e.depth DESC, e.stream_shard DESC, e.stream_ordering DESC LIMIT $4"
    );
    let want = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
    let rows = db
        .query(
            &sql,
            &[&room_id, &upto.persisted_vec(n_shards), &since, &want],
        )
        .await?;
    let mut events = rows
        .iter()
        .map(TimelineEvent::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let limited = events.len() > limit;
    events.truncate(limit);
    events.reverse();
    Ok((events, limited))
}

/// Filter types as SQL `LIKE` patterns: `*` matches any sequence (spec
/// "Filtering": "A '*' can be used as a wildcard"); `%`, `_`, `\` literal.
pub fn like_patterns(types: &[String]) -> Vec<String> {
    types
        .iter()
        .map(|t| {
            let mut p = String::with_capacity(t.len() + 2);
            for c in t.chars() {
                match c {
                    '\\' | '%' | '_' => {
                        p.push('\\');
                        p.push(c);
                    }
                    '*' => p.push('%'),
                    c => p.push(c),
                }
            }
            p
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(depth: i64, shard: i32, stream: i64) -> RoomPos {
        RoomPos {
            depth,
            shard,
            stream,
        }
    }

    #[test]
    fn room_tokens_round_trip() {
        for p in [pos(0, 0, 0), pos(12, 1, 345), pos(3, 0, -17), RoomPos::END] {
            let t = RoomToken(p);
            assert_eq!(RoomToken::parse(&t.to_string()), Ok(t));
        }
        assert_eq!(RoomToken(pos(12, 1, 345)).to_string(), "t12_1_345");
    }

    #[test]
    fn malformed_room_tokens() {
        for bad in [
            "",
            "t",
            "t1",
            "t1_2",
            "t1_2_",
            "t1_2_3_4",
            "t-1_2_3",
            "t1_-2_3",
            "t1_2_-",
            "t1_2_--3",
            "t1_2_x",
            "s1_2_3",
            "t1__3",
            "t+1_2_3",
            "t 1_2_3",
            "t1_99999999999_3",
            "t99999999999999999999_0_0",
        ] {
            assert_eq!(RoomToken::parse(bad), Err(BadToken), "{bad:?}");
        }
    }

    #[test]
    fn page_tokens_accept_both_kinds() {
        assert!(matches!(PageToken::parse("t1_0_5"), Ok(PageToken::Room(_))));
        assert!(matches!(
            PageToken::parse("s5.0_3.1"),
            Ok(PageToken::Stream(_))
        ));
        for bad in ["", "x", "s", "s1", "t1_2", "5", "$event"] {
            assert_eq!(PageToken::parse(bad), Err(BadToken), "{bad:?}");
        }
    }

    #[test]
    fn order_is_lexicographic() {
        assert!(pos(1, 5, 100) < pos(2, 0, 1));
        assert!(pos(2, 0, 9) < pos(2, 1, 1));
        assert!(pos(2, 1, 1) < pos(2, 1, 2));
        assert!(RoomPos::START < pos(1, 0, 1) && pos(1, 0, 1) < RoomPos::END);
    }

    #[test]
    fn predecessor_is_the_greatest_smaller_position() {
        assert_eq!(pos(5, 1, 10).predecessor(), pos(5, 1, 9));
        // Backfilled events have negative stream positions.
        assert_eq!(pos(5, 1, 0).predecessor(), pos(5, 1, -1));
        assert_eq!(pos(5, 1, -7).predecessor(), pos(5, 1, -8));
        assert_eq!(pos(5, 1, i64::MIN).predecessor(), pos(5, 0, i64::MAX));
        assert_eq!(
            pos(5, 0, i64::MIN).predecessor(),
            pos(4, i32::MAX, i64::MAX)
        );
        assert_eq!(RoomPos::START.predecessor(), RoomPos::START);
        for p in [
            pos(5, 1, 10),
            pos(5, 1, 0),
            pos(5, 0, i64::MIN),
            pos(1, 0, -3),
        ] {
            assert!(p.predecessor() < p);
            // Nothing lies strictly between: the next event position after
            // the predecessor at the same depth/shard is `p` itself.
        }
    }

    #[test]
    fn wildcards_become_like_patterns() {
        let p = like_patterns(&["m.room.*".into(), "a_b%c\\".into(), "*".into()]);
        assert_eq!(p, vec!["m.room.%", "a\\_b\\%c\\\\", "%"]);
    }
}
