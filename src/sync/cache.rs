//! Per-shard `/sync` caches, fed by the stream announcements (a notifier
//! batch hook), touched by this shard's thread only:
//!
//! - **room windows**: each room's most recent events in client format, so
//!   an incremental sync of a busy room reads its timeline from memory. A
//!   window knows the position after which it is complete
//!   (`complete_after`): a range `(lower, upper]` is served from it only if
//!   `lower >= complete_after`.
//! - **membership changes** of local users per room (the position of their
//!   latest member event), so a sync knows without a query whether a room
//!   must move between join/invite/leave.
//! - **state snapshots** by id (immutable: cached without invalidation) and
//!   **state events** by id as `rooms::serve` serves them to nobody in
//!   particular (redaction applied, `prev_content`): a redaction's
//!   announcement drops its room's window, the redacted id and the served
//!   events whose `prev_content` came from it, and bumps an epoch so a read
//!   that raced with it is not cached.
//!
//! What is cached is viewer-independent; `age` and `transaction_id` are
//! added per request (`sync::serve`).
//!
//! Everything is bounded (LRU); counters say how often each is used.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::sync::Arc;

use lru::LruCache;
use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde_json::Value;

use super::serve::RawServed;
use crate::db::Pool;
use crate::primitives::FutureCache;
use crate::rooms::state::StateMap;
use crate::rooms::timeline::TimelineEvent;
use crate::stream::writer::Batch;
use crate::stream::{Change, Notifier, Pos, RoomChange, ShardPos, StreamToken};

/// Events kept per room window.
pub const WINDOW_EVENTS: usize = 64;
/// Rooms with a window (only rooms with local members get one).
pub const WINDOW_ROOMS: usize = 2_000;
const SNAPSHOTS: usize = 2_000;
/// State events by id (timeline events live in the windows).
const EVENTS: usize = 20_000;
const MEMBER_CHANGES: usize = 200_000;

/// A room event as sync serves it.
#[derive(Debug, Clone)]
pub struct TlEvent {
    pub shard: usize,
    pub pos: i64,
    pub event_id: String,
    pub event_type: String,
    pub state_key: Option<String>,
    pub sender: String,
    pub membership: Option<String>,
    /// Client format as stored (for filter matching).
    pub event: Arc<Value>,
    /// A resolution changed state beyond this event (`EventChange::resolved`).
    pub resolved: bool,
    /// The stored event with what visibility and serving need, when it was
    /// read from the database (window events are loaded on demand).
    pub full: OnceCell<TimelineEvent>,
    /// `rooms::serve::client_events` output for no particular viewer, once
    /// known: set from the announcement for message events (nothing to
    /// add), computed on first use for state events (`prev_content`).
    pub served: OnceCell<Arc<Value>>,
    /// `served` serialised once for every viewer (`sync::serve::RawServed`;
    /// `None` inside: this event always takes the per-viewer path).
    pub raw: OnceCell<Option<Rc<RawServed>>>,
}

/// A served state event and the id its `prev_content` came from.
type ServedState = (Arc<Value>, Option<String>);

struct Window {
    shard: usize,
    /// Every event of the room with a position in `(complete_after, ∞)` on
    /// `shard` that was announced is in `events`.
    complete_after: i64,
    events: VecDeque<Rc<TlEvent>>,
}

/// How often the caches answered (for tests and metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub window_hits: u64,
    pub window_misses: u64,
    pub snapshot_hits: u64,
    pub snapshot_misses: u64,
    pub event_hits: u64,
    pub event_misses: u64,
    /// Incremental syncs answered from memory with nothing new.
    pub cheap_syncs: u64,
}

/// Which users and rooms this shard serves syncs for.
pub trait Local {
    fn is_local_user(&self, user: &UserId) -> bool;
    fn has_local_members(&self, room: &OwnedRoomId) -> bool;
}

struct Interest<'a>(&'a Notifier);

impl Local for Interest<'_> {
    fn is_local_user(&self, user: &UserId) -> bool {
        self.0.is_local(user)
    }
    fn has_local_members(&self, room: &OwnedRoomId) -> bool {
        self.0.has_local_members(room)
    }
}

/// One shard's sync caches.
pub struct SyncCache {
    /// The notifier's token when the cache started: what happened before
    /// is unknown to the membership tracker.
    startup: StreamToken,
    windows: RefCell<LruCache<OwnedRoomId, Window>>,
    member_changes: RefCell<LruCache<(OwnedUserId, OwnedRoomId), (usize, i64)>>,
    /// Deduplicates concurrent loads: a fan-out wakes hundreds of syncs that
    /// want the same snapshot at once (one query, not hundreds).
    snapshots: FutureCache<i64, Rc<StateMap>, String>,
    /// Served state events by id.
    events: RefCell<LruCache<String, ServedState>>,
    /// Bumped on every redaction: a served form read before it may be stale.
    redactions: Cell<u64>,
    stats: Cell<CacheStats>,
}

thread_local! {
    static LOCAL: RefCell<Option<Rc<SyncCache>>> = const { RefCell::new(None) };
}

fn cap(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

/// This shard's cache, created (and hooked to `notifier`) on first use.
pub fn local(notifier: &Rc<Notifier>) -> Rc<SyncCache> {
    if let Some(c) = LOCAL.with(|l| l.borrow().clone()) {
        return c;
    }
    let cache = Rc::new(SyncCache::new(notifier.current()));
    let weak = Rc::downgrade(&cache);
    let n = Rc::downgrade(notifier);
    notifier.add_batch_hook(Rc::new(move |batch, before| {
        if let (Some(c), Some(n)) = (weak.upgrade(), n.upgrade()) {
            c.apply(batch, before, &Interest(&n));
        }
    }));
    LOCAL.with(|l| *l.borrow_mut() = Some(cache.clone()));
    cache
}

impl SyncCache {
    pub fn new(startup: StreamToken) -> SyncCache {
        SyncCache {
            startup,
            windows: RefCell::new(LruCache::new(cap(WINDOW_ROOMS))),
            member_changes: RefCell::new(LruCache::new(cap(MEMBER_CHANGES))),
            snapshots: FutureCache::new("sync-snapshots", SNAPSHOTS),
            events: RefCell::new(LruCache::new(cap(EVENTS))),
            redactions: Cell::new(0),
            stats: Cell::new(CacheStats::default()),
        }
    }

    pub fn stats(&self) -> CacheStats {
        self.stats.get()
    }

    fn bump(&self, f: impl FnOnce(&mut CacheStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    pub fn count_cheap(&self) {
        self.bump(|s| s.cheap_syncs += 1);
    }

    /// Feeds one announcement batch (`before`: its shard's position
    /// before it; `local`: the notifier's view *before* the batch).
    pub fn apply(&self, batch: &Batch, before: ShardPos, local: &dyn Local) {
        // Rooms of this batch with an event left out of the windows: a
        // window created later in the batch is complete only after it.
        let mut skipped: Vec<&OwnedRoomId> = Vec::new();
        for change in &batch.changes {
            let Change::Room {
                room_id,
                pos: Pos::Persisted(pos),
                what,
            } = change
            else {
                continue;
            };
            #[allow(unreachable_patterns)]
            let ev = match what {
                RoomChange::Event(ev) => ev,
                _ => continue,
            };
            let mut local_member = false;
            if let (Some(_), Some(target)) = (&ev.membership, &ev.state_key) {
                if let Ok(user) = OwnedUserId::try_from(target.as_str()) {
                    if local.is_local_user(&user) {
                        local_member = true;
                        self.member_changes
                            .borrow_mut()
                            .put((user, room_id.clone()), (batch.shard, *pos));
                    }
                }
            }
            if ev.event_type == "m.room.redaction" {
                // The redacted event's cached copies are stale: forget
                // the room's window (refilled from the database) and it.
                self.windows.borrow_mut().pop(room_id);
                skipped.push(room_id);
                let target = ev.event["content"]["redacts"]
                    .as_str()
                    .or_else(|| ev.event["redacts"].as_str());
                self.forget_redacted(target);
                continue;
            }
            let has_window = self.windows.borrow().contains(room_id);
            if !has_window && !local_member && !local.has_local_members(room_id) {
                skipped.push(room_id);
                continue;
            }
            let served = OnceCell::new();
            if ev.state_key.is_none() {
                // A message event is served exactly as announced (plus
                // `age`): no redaction yet (it would drop the window), no
                // `prev_content`; redactions never enter a window.
                let _ = served.set(ev.event.clone());
            }
            let tl = Rc::new(TlEvent {
                shard: batch.shard,
                pos: *pos,
                event_id: ev.event_id.to_string(),
                event_type: ev.event_type.clone(),
                state_key: ev.state_key.clone(),
                sender: ev.sender.to_string(),
                membership: ev.membership.clone(),
                event: ev.event.clone(),
                resolved: ev.resolved,
                full: OnceCell::new(),
                served,
                raw: OnceCell::new(),
            });
            let horizon = if skipped.contains(&room_id) {
                *pos - 1
            } else {
                before.persisted
            };
            self.push_window(room_id, tl, horizon);
        }
    }

    fn push_window(&self, room: &OwnedRoomId, ev: Rc<TlEvent>, horizon: i64) {
        let mut windows = self.windows.borrow_mut();
        let fresh = || Window {
            shard: ev.shard,
            // Every event of this room in (horizon, ev.pos) was announced
            // in this batch before it and would have created the window.
            complete_after: horizon.min(ev.pos - 1),
            events: VecDeque::new(),
        };
        let w = windows.get_or_insert_mut(room.clone(), fresh);
        if w.shard != ev.shard {
            // A room written by another shard now: start over from here.
            *w = Window {
                shard: ev.shard,
                complete_after: ev.pos - 1,
                events: VecDeque::new(),
            };
        }
        w.events.push_back(ev);
        while w.events.len() > WINDOW_EVENTS {
            if let Some(old) = w.events.pop_front() {
                w.complete_after = old.pos;
            }
        }
    }

    /// Every event of `room` in `(lower, upper]` (chronological), if the
    /// window covers the range.
    pub fn range(
        &self,
        room: &OwnedRoomId,
        lower: &StreamToken,
        upper: &StreamToken,
    ) -> Option<Vec<Rc<TlEvent>>> {
        let mut windows = self.windows.borrow_mut();
        let hit = windows.get(room).and_then(|w| {
            let (lo, hi) = (lower.persisted(w.shard), upper.persisted(w.shard));
            (lo >= w.complete_after).then(|| {
                w.events
                    .iter()
                    .filter(|e| e.pos > lo && e.pos <= hi)
                    .cloned()
                    .collect()
            })
        });
        drop(windows);
        self.bump(|s| match hit {
            Some(_) => s.window_hits += 1,
            None => s.window_misses += 1,
        });
        hit
    }

    /// Whether `user`'s membership in `room` may have changed after
    /// `since` (memory only; `true` when unknown).
    pub fn membership_changed_since(
        &self,
        user: &UserId,
        room: &OwnedRoomId,
        since: &StreamToken,
    ) -> bool {
        match self
            .member_changes
            .borrow_mut()
            .get(&(user.to_owned(), room.clone()))
        {
            Some(&(s, p)) => p > since.persisted(s),
            None => self.startup.is_after(since),
        }
    }

    pub fn snapshot(&self, id: i64) -> Option<Rc<StateMap>> {
        let hit = self.snapshots.get_if_present(&id);
        self.bump(|s| match hit {
            Some(_) => s.snapshot_hits += 1,
            None => s.snapshot_misses += 1,
        });
        hit
    }

    pub fn put_snapshot(&self, id: i64, state: Rc<StateMap>) {
        self.snapshots.insert(id, state);
    }

    /// Snapshot `id`, loaded once however many syncs ask at the same time.
    pub async fn load_snapshot(&self, db: &Pool, id: i64) -> Result<Rc<StateMap>, String> {
        if let Some(s) = self.snapshot(id) {
            return Ok(s);
        }
        let db = db.clone();
        self.snapshots
            .get_or_load(id, move || async move {
                crate::rooms::state::load(&db, id)
                    .await
                    .map(Rc::new)
                    .map_err(|e| e.to_string())
            })
            .await
    }

    /// Drops what a redaction of `target` makes stale (unknown target:
    /// every served state event).
    fn forget_redacted(&self, target: Option<&str>) {
        self.redactions.set(self.redactions.get() + 1);
        let mut events = self.events.borrow_mut();
        let Some(t) = target else {
            events.clear();
            return;
        };
        events.pop(t);
        let dependents: Vec<String> = events
            .iter()
            .filter(|(_, (_, prev))| prev.as_deref() == Some(t))
            .map(|(id, _)| id.clone())
            .collect();
        for id in dependents {
            events.pop(&id);
        }
    }

    /// Changes whenever a redaction is applied: compare before and after a
    /// database read to know whether its result may be cached.
    pub fn redaction_epoch(&self) -> u64 {
        self.redactions.get()
    }

    pub fn event(&self, id: &str) -> Option<Arc<Value>> {
        let hit = self.events.borrow_mut().get(id).map(|(v, _)| v.clone());
        self.bump(|s| match hit {
            Some(_) => s.event_hits += 1,
            None => s.event_misses += 1,
        });
        hit
    }

    /// Caches a served state event (`prev`: the event its `prev_content`
    /// came from) unless a redaction was applied since `epoch`.
    pub fn put_event(&self, id: String, ev: Arc<Value>, prev: Option<String>, epoch: u64) {
        if epoch == self.redaction_epoch() {
            self.events.borrow_mut().put(id, (ev, prev));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::EventChange;
    use serde_json::json;

    /// A batch holding one redaction of `redacts` at `pos` in `!r:h`.
    fn redaction_batch(pos: i64, redacts: &str) -> Batch {
        let mut b = batch(0, "!r:h", pos, None);
        if let Change::Room {
            what: RoomChange::Event(ev),
            ..
        } = &mut b.changes[0]
        {
            let ev = Arc::make_mut(ev);
            ev.event_type = "m.room.redaction".into();
            ev.event = Arc::new(json!({ "content": { "redacts": redacts } }));
        }
        b
    }

    fn batch(shard: usize, room: &str, pos: i64, member: Option<&str>) -> Batch {
        let ev = EventChange {
            event_id: format!("$e{pos}").try_into().unwrap(),
            sender: "@a:h".try_into().unwrap(),
            event_type: if member.is_some() {
                "m.room.member"
            } else {
                "m.room.message"
            }
            .into(),
            state_key: member.map(|_| "@a:h".to_owned()),
            membership: member.map(str::to_owned),
            event: Arc::new(json!({"type": "x"})),
            resolved: false,
        };
        Batch {
            shard,
            upto: ShardPos {
                persisted: pos,
                ephemeral: 0,
            },
            changes: vec![Change::Room {
                room_id: room.try_into().unwrap(),
                pos: Pos::Persisted(pos),
                what: RoomChange::Event(Arc::new(ev)),
            }],
        }
    }

    struct All;
    impl Local for All {
        fn is_local_user(&self, _: &UserId) -> bool {
            true
        }
        fn has_local_members(&self, _: &OwnedRoomId) -> bool {
            true
        }
    }
    struct Nobody;
    impl Local for Nobody {
        fn is_local_user(&self, _: &UserId) -> bool {
            false
        }
        fn has_local_members(&self, _: &OwnedRoomId) -> bool {
            false
        }
    }

    fn tok(p: i64) -> StreamToken {
        StreamToken::from_positions(vec![ShardPos {
            persisted: p,
            ephemeral: 0,
        }])
    }

    fn before(p: i64) -> ShardPos {
        ShardPos {
            persisted: p,
            ephemeral: 0,
        }
    }

    #[test]
    fn window_serves_covered_ranges_only() {
        let c = SyncCache::new(tok(0));
        let room: OwnedRoomId = "!r:h".try_into().unwrap();
        c.apply(&batch(0, "!r:h", 5, None), before(3), &All);
        c.apply(&batch(0, "!other:h", 6, None), before(5), &All);
        c.apply(&batch(0, "!r:h", 7, None), before(6), &All);
        let got = c.range(&room, &tok(3), &tok(7)).unwrap();
        assert_eq!(got.iter().map(|e| e.pos).collect::<Vec<_>>(), vec![5, 7]);
        assert_eq!(c.range(&room, &tok(5), &tok(6)).unwrap().len(), 0);
        assert!(
            c.range(&room, &tok(2), &tok(7)).is_none(),
            "before the window"
        );
        assert_eq!(c.stats().window_hits, 2);
        assert_eq!(c.stats().window_misses, 1);
    }

    #[test]
    fn window_is_bounded_and_moves_its_horizon() {
        let c = SyncCache::new(tok(0));
        let room: OwnedRoomId = "!r:h".try_into().unwrap();
        for p in 1..=(WINDOW_EVENTS as i64 + 10) {
            c.apply(&batch(0, "!r:h", p, None), before(p - 1), &All);
        }
        assert!(c.range(&room, &tok(5), &tok(200)).is_none());
        let got = c.range(&room, &tok(10), &tok(200)).unwrap();
        assert_eq!(got.len(), WINDOW_EVENTS);
    }

    #[test]
    fn rooms_without_local_members_get_no_window() {
        let c = SyncCache::new(tok(0));
        let room: OwnedRoomId = "!r:h".try_into().unwrap();
        c.apply(&batch(0, "!r:h", 5, None), before(3), &Nobody);
        assert!(c.range(&room, &tok(3), &tok(5)).is_none());
        // Within one batch: skipped at 5, window from 6 on is complete
        // only after 5.
        let mut b = batch(0, "!r:h", 8, None);
        let mut second = batch(0, "!r:h", 9, Some("join"));
        b.changes.append(&mut second.changes);
        b.upto = second.upto;
        c.apply(&b, before(7), &MemberOnly);
        assert!(c.range(&room, &tok(7), &tok(9)).is_none(), "8 was skipped");
        let got = c.range(&room, &tok(8), &tok(9)).unwrap();
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn redaction_drops_the_window() {
        let c = SyncCache::new(tok(0));
        let room: OwnedRoomId = "!r:h".try_into().unwrap();
        c.apply(&batch(0, "!r:h", 5, None), before(4), &All);
        assert!(c.range(&room, &tok(4), &tok(5)).is_some());
        let b = redaction_batch(6, "$e5");
        c.apply(&b, before(5), &All);
        assert!(c.range(&room, &tok(4), &tok(6)).is_none());
        c.apply(&batch(0, "!r:h", 7, None), before(6), &All);
        assert!(c.range(&room, &tok(5), &tok(7)).is_none(), "6 is not in it");
        assert_eq!(c.range(&room, &tok(6), &tok(7)).unwrap().len(), 1);
    }

    #[test]
    fn redaction_drops_served_state_and_its_dependents() {
        let c = SyncCache::new(tok(0));
        let v = |s: &str| Arc::new(json!({ "event_id": s }));
        let e0 = c.redaction_epoch();
        c.put_event("$name1".into(), v("$name1"), None, e0);
        c.put_event("$name2".into(), v("$name2"), Some("$name1".into()), e0);
        c.put_event("$topic".into(), v("$topic"), None, e0);
        let b = redaction_batch(6, "$name1");
        c.apply(&b, before(5), &All);
        assert!(c.event("$name1").is_none(), "the target");
        assert!(c.event("$name2").is_none(), "its prev_content came from it");
        assert!(c.event("$topic").is_some());
        // A read that started before the redaction is not cached.
        c.put_event("$name1".into(), v("$name1"), None, e0);
        assert!(c.event("$name1").is_none());
        c.put_event("$name1".into(), v("$name1"), None, c.redaction_epoch());
        assert!(c.event("$name1").is_some());
        // Unknown target (no `redacts` in what was announced): all of them.
        let mut b = batch(0, "!r:h", 7, None);
        if let Change::Room {
            what: RoomChange::Event(ev),
            ..
        } = &mut b.changes[0]
        {
            Arc::make_mut(ev).event_type = "m.room.redaction".into();
        }
        c.apply(&b, before(6), &All);
        assert!(c.event("$topic").is_none() && c.event("$name1").is_none());
    }

    #[test]
    fn message_events_are_cached_served_state_events_are_not() {
        let c = SyncCache::new(tok(0));
        let room: OwnedRoomId = "!r:h".try_into().unwrap();
        c.apply(&batch(0, "!r:h", 5, None), before(4), &All);
        c.apply(&batch(0, "!r:h", 6, Some("join")), before(5), &All);
        let got = c.range(&room, &tok(4), &tok(6)).unwrap();
        assert!(got[0].served.get().is_some());
        assert!(
            got[1].served.get().is_none(),
            "prev_content comes from serving"
        );
    }

    /// Only member events of local users are interesting.
    struct MemberOnly;
    impl Local for MemberOnly {
        fn is_local_user(&self, _: &UserId) -> bool {
            true
        }
        fn has_local_members(&self, _: &OwnedRoomId) -> bool {
            false
        }
    }

    #[test]
    fn membership_changes_are_tracked() {
        let c = SyncCache::new(tok(2));
        let room: OwnedRoomId = "!r:h".try_into().unwrap();
        let user: OwnedUserId = "@a:h".try_into().unwrap();
        assert!(c.membership_changed_since(&user, &room, &tok(1)), "unknown");
        assert!(!c.membership_changed_since(&user, &room, &tok(2)));
        c.apply(&batch(0, "!r:h", 4, Some("join")), before(2), &All);
        assert!(c.membership_changed_since(&user, &room, &tok(3)));
        assert!(!c.membership_changed_since(&user, &room, &tok(4)));
    }
}
