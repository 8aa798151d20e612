//! Per-shard memory of users' unread counts, so a woken `/sync` does not
//! query `push_actions` for a count nothing changed.
//!
//! Without it every computed sync of a joined room ran two queries on the
//! room's owner shard (receipt bounds, then every unread row), and a member
//! who never sends receipts has ever more unread rows: in `sync-fanout`
//! (200 members parked, one message per round) PostgreSQL spent ~0.5 ms per
//! delivered sync on them, more than hearth did (bench/RESULTS.md, issue 15
//! "fan-out").
//!
//! Kept on the room's owner shard, which runs every write of the rows it
//! counts: the push engine's `push_actions` rows, receipts, purges and the
//! resync's deletions. A notification committed by the engine is added to
//! the cached counts (when after the cached receipt bounds); anything else
//! that changes them (a receipt, a delete, a write whose outcome is
//! unknown) drops the room's or the user's entry, and the next sync reads
//! the database. A read and a change can interleave (the read awaits), so a
//! read's result is kept only if no change happened meanwhile (`epoch`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::rc::Rc;

use lru::LruCache;

use super::counts::Counts;

/// Rooms kept per shard.
const ROOMS: usize = 4096;

/// One user's counts in a room and the receipt bounds they were read with.
#[derive(Debug, Clone, Default)]
pub struct Unread {
    /// Per thread (`main` for the main timeline); absent = nothing unread.
    pub counts: BTreeMap<String, Counts>,
    /// Latest receipt position per thread (`""` = unthreaded), -1 if none.
    pub read: HashMap<String, i64>,
}

impl Unread {
    /// Whether a notification at `pos` in `thread` is unread (the rule of
    /// `counts::room_counts`).
    fn unread(&self, thread: &str, pos: i64) -> bool {
        let get = |t: &str| self.read.get(t).copied().unwrap_or(-1);
        pos > get("").max(get(thread))
    }
}

/// One notification committed: its users, thread, position, highlight.
pub struct Notified<'a> {
    pub users: &'a [String],
    pub thread: &'a str,
    pub pos: i64,
    pub highlight: bool,
}

pub struct UnreadCache {
    rooms: RefCell<LruCache<String, HashMap<String, Unread>>>,
    /// Bumped by every change: a read that saw another value is not kept.
    epoch: Cell<u64>,
}

impl Default for UnreadCache {
    fn default() -> Self {
        UnreadCache {
            rooms: RefCell::new(LruCache::new(
                NonZeroUsize::new(ROOMS).unwrap_or(NonZeroUsize::MIN),
            )),
            epoch: Cell::new(0),
        }
    }
}

thread_local! {
    static CACHE: Rc<UnreadCache> = Rc::new(UnreadCache::default());
}

/// This shard's cache.
pub fn local() -> Rc<UnreadCache> {
    CACHE.with(Rc::clone)
}

impl UnreadCache {
    /// The cached counts of `user` in `room`.
    pub fn get(&self, room: &str, user: &str) -> Option<BTreeMap<String, Counts>> {
        let mut rooms = self.rooms.borrow_mut();
        rooms.get(room)?.get(user).map(|u| u.counts.clone())
    }

    /// The epoch to pass to [`put`](Self::put) after reading the database.
    pub fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// Keeps `value`, read from the database since `epoch`, unless
    /// something changed meanwhile.
    pub fn put(&self, room: &str, user: &str, value: Unread, epoch: u64) {
        if epoch != self.epoch.get() {
            return;
        }
        let mut rooms = self.rooms.borrow_mut();
        if !rooms.contains(room) {
            rooms.put(room.to_owned(), HashMap::new());
        }
        if let Some(users) = rooms.get_mut(room) {
            users.insert(user.to_owned(), value);
        }
    }

    /// Notifications of `room` just committed: added to cached counts.
    pub fn notified(&self, room: &str, list: &[Notified<'_>]) {
        self.bump();
        let mut rooms = self.rooms.borrow_mut();
        let Some(users) = rooms.get_mut(room) else {
            return;
        };
        for n in list {
            for u in n.users {
                let Some(entry) = users.get_mut(u) else {
                    continue;
                };
                if entry.unread(n.thread, n.pos) {
                    let c = entry.counts.entry(n.thread.to_owned()).or_default();
                    c.notifications += 1;
                    c.highlights += u64::from(n.highlight);
                }
            }
        }
    }

    /// `user`'s counts in `room` may have changed (a receipt).
    pub fn forget_user(&self, room: &str, user: &str) {
        self.bump();
        if let Some(users) = self.rooms.borrow_mut().get_mut(room) {
            users.remove(user);
        }
    }

    /// Counts in `room` may have changed for anyone (rows deleted, or a
    /// write of unknown outcome).
    pub fn forget_room(&self, room: &str) {
        self.bump();
        self.rooms.borrow_mut().pop(room);
    }

    fn bump(&self) {
        self.epoch.set(self.epoch.get().wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(n: u64) -> Unread {
        let mut u = Unread::default();
        if n > 0 {
            u.counts.insert(
                "main".into(),
                Counts {
                    notifications: n,
                    highlights: 0,
                },
            );
        }
        u.read.insert(String::new(), 10);
        u
    }

    fn main_count(c: &UnreadCache, user: &str) -> Option<u64> {
        c.get("!r", user)
            .map(|m| m.get("main").map_or(0, |c| c.notifications))
    }

    #[test]
    fn committed_notifications_add_to_cached_counts_after_the_receipt() {
        let c = UnreadCache::default();
        c.put("!r", "@a", one(1), c.epoch());
        let users = ["@a".to_owned(), "@b".to_owned()];
        c.notified(
            "!r",
            &[
                Notified {
                    users: &users,
                    thread: "main",
                    pos: 11,
                    highlight: true,
                },
                // At or before the receipt: already read.
                Notified {
                    users: &users,
                    thread: "main",
                    pos: 9,
                    highlight: false,
                },
            ],
        );
        assert_eq!(main_count(&c, "@a"), Some(2));
        assert_eq!(c.get("!r", "@a").unwrap()["main"].highlights, 1);
        assert_eq!(main_count(&c, "@b"), None, "not cached: read next time");
    }

    #[test]
    fn a_read_overtaken_by_a_change_is_not_kept() {
        let c = UnreadCache::default();
        let e = c.epoch();
        c.notified("!r", &[]);
        c.put("!r", "@a", one(1), e);
        assert_eq!(main_count(&c, "@a"), None);
        c.put("!r", "@a", one(1), c.epoch());
        assert_eq!(main_count(&c, "@a"), Some(1));
    }

    #[test]
    fn receipts_and_deletes_drop_entries() {
        let c = UnreadCache::default();
        c.put("!r", "@a", one(1), c.epoch());
        c.put("!r", "@b", one(2), c.epoch());
        c.forget_user("!r", "@a");
        assert_eq!(main_count(&c, "@a"), None);
        assert_eq!(main_count(&c, "@b"), Some(2));
        c.forget_room("!r");
        assert_eq!(main_count(&c, "@b"), None);
    }
}
