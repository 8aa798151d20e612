//! Per shard, the last persisted position at which a kind of change was
//! applied: lets a `/sync` skip a database query over a window of the
//! stream that provably holds no row of that kind (`device_lists` asks
//! "any membership event?" and "any device list change?" on every woken
//! sync, and in a big room nearly every answer is no).
//!
//! The answer is exact only for what this shard has applied; a window
//! starting before startup, or reaching past what was applied, may hold
//! anything. Both count as "changed", so a skip is never wrong, only
//! missed.

use std::cell::RefCell;

use super::change::{Change, Pos, UserChange};
use super::token::StreamToken;
use super::writer::Batch;

pub struct LastSeen {
    /// Per shard; starts at the startup position (before it, unknown).
    last: RefCell<Vec<i64>>,
}

impl LastSeen {
    pub fn new(startup: &StreamToken, n_shards: usize) -> LastSeen {
        LastSeen {
            last: RefCell::new((0..n_shards).map(|s| startup.get(s).persisted).collect()),
        }
    }

    /// A change of the kind at `pos` on `shard`.
    pub fn saw(&self, shard: usize, pos: i64) {
        if let Some(last) = self.last.borrow_mut().get_mut(shard) {
            *last = (*last).max(pos);
        }
    }

    /// Whether a change of the kind may lie after `from` and at or before
    /// `to` (per-shard persisted positions), given everything up to
    /// `applied` was seen.
    pub fn maybe_between(&self, from: &[i64], to: &[i64], applied: &StreamToken) -> bool {
        let last = self.last.borrow();
        (0..last.len()).any(|s| {
            let lo = from.get(s).copied().unwrap_or(0);
            let hi = to.get(s).copied().unwrap_or(0);
            hi > lo && (hi > applied.get(s).persisted || last[s] > lo)
        })
    }
}

/// Whether `batch` (its shard had reached `before`) holds a persisted
/// poke, and whether a persisted position in it is explained by no change
/// (announced empty, or a ticket dropped after its commit).
pub fn persisted_pokes_and_gaps(batch: &Batch, before: i64) -> (bool, bool) {
    let mut poked = false;
    let mut explained: Vec<i64> = Vec::new();
    for change in &batch.changes {
        if let Pos::Persisted(p) = change.pos() {
            poked |= matches!(
                change,
                Change::User {
                    what: UserChange::Poke,
                    ..
                }
            );
            if p > before {
                explained.push(p);
            }
        }
    }
    explained.sort_unstable();
    explained.dedup();
    let span = batch.upto.persisted.saturating_sub(before).max(0);
    let gap = usize::try_from(span).map_or(true, |span| span > explained.len());
    (poked, gap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::ShardPos;

    fn tok(p: &[i64]) -> StreamToken {
        StreamToken::from_positions(
            p.iter()
                .map(|&persisted| ShardPos {
                    persisted,
                    ephemeral: 0,
                })
                .collect(),
        )
    }

    #[test]
    fn exact_only_where_applied() {
        let seen = LastSeen::new(&tok(&[4, 6]), 2);
        let applied = tok(&[4, 7]);
        assert!(
            seen.maybe_between(&[3, 6], &[4, 6], &applied),
            "before startup"
        );
        assert!(
            !seen.maybe_between(&[4, 6], &[4, 6], &applied),
            "empty window"
        );
        assert!(
            !seen.maybe_between(&[4, 6], &[4, 7], &applied),
            "nothing seen"
        );
        assert!(
            seen.maybe_between(&[4, 6], &[4, 8], &applied),
            "past what was applied"
        );
        seen.saw(0, 5);
        let applied = tok(&[5, 7]);
        assert!(seen.maybe_between(&[4, 6], &[5, 7], &applied));
        assert!(!seen.maybe_between(&[5, 6], &[5, 7], &applied), "after it");
        seen.saw(0, 3);
        assert!(
            !seen.maybe_between(&[5, 6], &[5, 7], &applied),
            "never moves back"
        );
        seen.saw(9, 1);
    }
}
