//! Where history fetched from other servers goes (server-server
//! "Backfilling and retrieving missing events"): the room's backward
//! extremities (the events our timeline names but lacks), the servers
//! that had nothing older for them, and the place — depth and stream
//! position — of each event of a `/backfill` answer. Storing happens
//! through the entry point (`Rooms::apply_pdu` with `Received::backfill`);
//! fetching is `federation::backfill`. See docs/ARCHITECTURE.md "Backfill".

use std::collections::HashMap;

use ruma::OwnedEventId;

use crate::db::Pool;

use super::service::Rooms;
use super::RoomError;

/// An event our timeline names as a prev event but does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackwardExtremity {
    pub event_id: String,
    /// Lowest depth of a stored event naming it.
    pub child_depth: i64,
    /// Servers that answered nothing older for it.
    pub tried: Vec<String>,
}

/// Most backward extremities one `/backfill` request names.
pub const MAX_EXTREMITIES: i64 = 20;

/// The room's backward extremities whose children are at `min_depth` or
/// deeper (a page of history reaching down to `min_depth` may have a hole
/// at each), deepest first (nearest to what a client is reading), at most
/// [`MAX_EXTREMITIES`]. `i64::MIN`: all of them.
pub async fn backward_extremities(
    db: &Pool,
    room_id: &str,
    min_depth: i64,
) -> Result<Vec<BackwardExtremity>, RoomError> {
    let rows = db
        .query(
            "SELECT event_id, child_depth, tried FROM backward_extremities WHERE room_id = $1 \
             AND child_depth >= $3 ORDER BY child_depth DESC, event_id LIMIT $2",
            &[&room_id, &MAX_EXTREMITIES, &min_depth],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(BackwardExtremity {
            event_id: r.get(0)?,
            child_depth: r.get(1)?,
            tried: r.get(2)?,
        });
    }
    Ok(out)
}

/// The child depths of those of `ids` that are backward extremities.
pub async fn child_depths(
    db: &Pool,
    room_id: &str,
    ids: &[String],
) -> Result<HashMap<String, i64>, RoomError> {
    let rows = db
        .query(
            "SELECT event_id, child_depth FROM backward_extremities \
             WHERE room_id = $1 AND event_id = ANY($2)",
            &[&room_id, &ids],
        )
        .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        out.insert(r.get(0)?, r.get(1)?);
    }
    Ok(out)
}

/// Remembers that `server` had nothing older than `ids`: it is not asked
/// for them again (Synapse keeps the same per backward extremity).
pub async fn mark_tried(
    db: &Pool,
    room_id: &str,
    ids: &[String],
    server: &str,
) -> Result<(), RoomError> {
    db.execute(
        "UPDATE backward_extremities SET tried = array_append(tried, $3) \
         WHERE room_id = $1 AND event_id = ANY($2) AND NOT ($3 = ANY(tried))",
        &[&room_id, &ids, &server],
    )
    .await?;
    Ok(())
}

/// One event of a `/backfill` answer, for [`plan`].
#[derive(Debug, Clone)]
pub struct Incoming {
    pub event_id: OwnedEventId,
    pub prev_events: Vec<OwnedEventId>,
    /// Our depth for it if it is stored already (in the timeline).
    pub stored_depth: Option<i64>,
    /// Its child depth if it is one of our backward extremities.
    pub extremity_depth: Option<i64>,
}

/// Where the new events of an answer go: `(index into the answer, our
/// depth)`, parents before children (the order to apply them in).
///
/// An event's depth is one below its lowest child's — a child in the
/// answer or an event we hold (`extremity_depth`) — and at least 1. So
/// every backfilled event sorts before its children in room order, and
/// equal depths (forks, or the floor of 1) are ordered by the stream
/// positions the caller gives in the reverse of this order (children
/// higher). Events that are no ancestor of what we hold (no child at
/// all), stored already, or on a cycle (a hostile answer) are left out.
pub fn plan(batch: &[Incoming]) -> Vec<(usize, i64)> {
    let index: HashMap<&OwnedEventId, usize> = batch
        .iter()
        .enumerate()
        .map(|(i, e)| (&e.event_id, i))
        .collect();
    // In-answer children of each event, and how many are not placed yet.
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); batch.len()];
    for (i, e) in batch.iter().enumerate() {
        let mut prevs: Vec<usize> = e
            .prev_events
            .iter()
            .filter_map(|p| index.get(p).copied())
            .collect();
        prevs.sort_unstable();
        prevs.dedup();
        for p in prevs {
            if p != i {
                children[p].push(i);
            }
        }
    }
    let mut waiting: Vec<usize> = children.iter().map(Vec::len).collect();
    let mut ready: Vec<usize> = (0..batch.len()).filter(|i| waiting[*i] == 0).collect();
    let mut depth: Vec<Option<i64>> = vec![None; batch.len()];
    let mut children_first = Vec::with_capacity(batch.len());
    while let Some(i) = ready.pop() {
        let e = &batch[i];
        depth[i] = match e.stored_depth {
            Some(d) => Some(d),
            None => children[i]
                .iter()
                .filter_map(|c| depth[*c])
                .chain(e.extremity_depth)
                .min()
                .map(|d| d.saturating_sub(1).max(1)),
        };
        if e.stored_depth.is_none() && depth[i].is_some() {
            children_first.push(i);
        }
        let mut prevs: Vec<usize> = e
            .prev_events
            .iter()
            .filter_map(|p| index.get(p).copied())
            .collect();
        prevs.sort_unstable();
        prevs.dedup();
        for p in prevs.into_iter().filter(|p| *p != i) {
            waiting[p] -= 1;
            if waiting[p] == 0 {
                ready.push(p);
            }
        }
    }
    children_first
        .into_iter()
        .rev()
        .filter_map(|i| Some((i, depth[i]?)))
        .collect()
}

impl Rooms {
    /// `n` fresh stream positions for backfilled events, below every one
    /// this shard has used (negative: `/sync` reads positive positions
    /// only), highest first. Owner shard only; never reused.
    pub async fn backfill_positions(&self, n: usize) -> Result<Vec<i64>, RoomError> {
        if self.backfill_floor.get().is_none() {
            let shard =
                i32::try_from(self.shard).map_err(|_| RoomError::Internal("shard".into()))?;
            let row = self
                .db
                .query_one(
                    "SELECT least(coalesce(min(stream_ordering), 0), 0) FROM events \
                     WHERE stream_shard = $1",
                    &[&shard],
                )
                .await?;
            let floor: i64 = row.get(0)?;
            // Another task may have set it while we read.
            if self.backfill_floor.get().is_none() {
                self.backfill_floor.set(Some(floor));
            }
        }
        let floor = self.backfill_floor.get().unwrap_or(0);
        let n = i64::try_from(n).map_err(|_| RoomError::Internal("too many".into()))?;
        self.backfill_floor.set(Some(floor - n));
        Ok((1..=n).map(|k| floor - k).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> OwnedEventId {
        OwnedEventId::try_from(format!("${s}")).unwrap()
    }

    fn ev(name: &str, prevs: &[&str], ext: Option<i64>) -> Incoming {
        Incoming {
            event_id: id(name),
            prev_events: prevs.iter().map(|p| id(p)).collect(),
            stored_depth: None,
            extremity_depth: ext,
        }
    }

    fn named(batch: &[Incoming], plan: &[(usize, i64)]) -> Vec<(String, i64)> {
        plan.iter()
            .map(|(i, d)| (batch[*i].event_id.as_str()[1..].to_owned(), *d))
            .collect()
    }

    #[test]
    fn a_linear_answer_goes_below_our_oldest_parents_first() {
        // We hold J (depth 40) naming c; the answer is c <- b <- a (newest
        // first, as /backfill answers).
        let batch = vec![
            ev("c", &["b"], Some(40)),
            ev("b", &["a"], None),
            ev("a", &["z"], None),
        ];
        let p = plan(&batch);
        assert_eq!(
            named(&batch, &p),
            vec![("a".into(), 37), ("b".into(), 38), ("c".into(), 39)]
        );
    }

    #[test]
    fn a_fork_takes_the_lowest_child_and_strangers_are_left_out() {
        // m has children x (via ext 10) and y (depth 7 via ext): below both.
        let batch = vec![
            ev("x", &["m"], Some(10)),
            ev("y", &["m"], Some(7)),
            ev("m", &["r"], None),
            ev("stranger", &["r"], None),
        ];
        let p = plan(&batch);
        let got = named(&batch, &p);
        assert_eq!(got.first(), Some(&("m".to_owned(), 5)));
        assert!(got.contains(&("x".into(), 9)) && got.contains(&("y".into(), 6)));
        assert!(!got.iter().any(|(n, _)| n == "stranger"), "{got:?}");
    }

    #[test]
    fn depths_stop_at_one_stored_events_count_and_cycles_are_dropped() {
        let mut stored = ev("s", &["a"], None);
        stored.stored_depth = Some(2);
        let batch = vec![stored, ev("a", &["b"], None), ev("b", &[], None)];
        let got = named(&batch, &plan(&batch));
        assert_eq!(got, vec![("b".into(), 1), ("a".into(), 1)]);
        let cycle = vec![ev("p", &["q"], None), ev("q", &["p"], Some(5))];
        assert!(plan(&cycle).is_empty());
    }
}
