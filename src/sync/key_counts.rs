//! `device_one_time_keys_count` and `device_unused_fallback_key_types` of a
//! syncing device, remembered per shard between its syncs.
//!
//! Every sync must carry them (clients top up their one-time keys from
//! them), but they change only on an upload or a claim, and both poke the
//! device's user after their commit (`api::client::keys`). So a read taken
//! when the notifier stood at `read_at` is still what the database holds
//! while the user has had no poke since `read_at` and no stream position
//! since was left unexplained (an upload whose announcement was dropped
//! after its commit). In a fan-out this saves two statements per woken
//! sync.

use std::cell::RefCell;
use std::num::NonZeroUsize;
use std::rc::Rc;

use lru::LruCache;
use ruma::{OwnedUserId, UserId};

use crate::db::Pool;
use crate::keys::{store, KeyCounts, KeysError};
use crate::stream::notifier::Notifier;
use crate::stream::StreamToken;

/// Devices remembered per shard (a few hundred bytes each).
const DEVICES: usize = 16_384;

#[derive(Clone)]
struct Read {
    counts: KeyCounts,
    fallback: Vec<String>,
    read_at: StreamToken,
}

thread_local! {
    static READS: RefCell<LruCache<(OwnedUserId, String), Rc<Read>>> =
        RefCell::new(LruCache::new(NonZeroUsize::new(DEVICES).unwrap_or(NonZeroUsize::MIN)));
}

/// The device's key counts and unused fallback key algorithms.
pub async fn get(
    db: &Pool,
    n: &Notifier,
    user: &UserId,
    device: &str,
) -> Result<(KeyCounts, Vec<String>), KeysError> {
    let key = (user.to_owned(), device.to_owned());
    if let Some(r) = READS.with(|c| c.borrow_mut().get(&key).cloned()) {
        if !n.maybe_poked_since(user, &r.read_at) {
            return Ok((r.counts.clone(), r.fallback.clone()));
        }
    }
    // Taken before reading: a change committed after it pokes later.
    let read_at = n.current();
    let (counts, fallback) = futures_util::future::join(
        store::counts(db, user.as_str(), device),
        store::unused_fallback(db, user.as_str(), device),
    )
    .await;
    let (counts, fallback) = (counts?, fallback?);
    let read = Rc::new(Read {
        counts: counts.clone(),
        fallback: fallback.clone(),
        read_at,
    });
    READS.with(|c| c.borrow_mut().put(key, read));
    Ok((counts, fallback))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::change::{Change, Pos, UserChange};
    use crate::stream::writer::Batch;
    use crate::stream::ShardPos;

    fn at(persisted: i64, ephemeral: i64) -> ShardPos {
        ShardPos {
            persisted,
            ephemeral,
        }
    }

    #[test]
    fn a_read_holds_until_a_poke_or_a_gap() {
        let n = Notifier::new(0, 1, StreamToken::from_positions(vec![at(3, 0)]));
        let me = UserId::parse("@me:x").unwrap();
        let read_at = n.current();
        assert!(!n.maybe_poked_since(&me, &read_at));
        // Someone else's poke does not matter; a gap does.
        let poke = |user: &str, e| Change::User {
            user_id: UserId::parse(user).unwrap(),
            pos: Pos::Ephemeral(e),
            what: UserChange::Poke,
        };
        n.apply(&Batch {
            shard: 0,
            upto: at(3, 1),
            changes: vec![poke("@other:x", 1)],
        });
        assert!(!n.maybe_poked_since(&me, &read_at));
        n.apply(&Batch {
            shard: 0,
            upto: at(3, 2),
            changes: vec![poke("@me:x", 2)],
        });
        assert!(n.maybe_poked_since(&me, &read_at), "claimed");
        let read_at = n.current();
        n.apply(&Batch {
            shard: 0,
            upto: at(4, 2),
            changes: vec![],
        });
        assert!(n.maybe_poked_since(&me, &read_at), "a gap");
    }
}
