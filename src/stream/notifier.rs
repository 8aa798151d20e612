//! The per-shard notifier: what this shard knows of every shard's stream,
//! the memberships of its local users, and the parked `/sync`s to wake.
//!
//! Fed only by announcements ([`apply_local`]), never by polling. It is
//! what makes an idle incremental sync cheap: "has anything changed for
//! this user since the token?" is answered from `user_changed` here, with
//! no database round trip and no cross-shard call.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use ruma::{OwnedRoomId, OwnedUserId, UserId};

use crate::db::{DbError, Pool};
use crate::mesh::shard_for_user;
use crate::primitives::Notify;

use super::change::{Change, Pos, RoomChange, UserChange};
use super::last_seen::{persisted_pokes_and_gaps, LastSeen};
use super::token::{ShardPos, StreamToken};
use super::writer::{Batch, POSITION_TABLES};

/// One shard's notifier (thread-local, see [`install`]).
pub struct Notifier {
    shard: usize,
    n_shards: usize,
    /// Everything applied so far: the `next_batch` of a sync served now.
    current: RefCell<StreamToken>,
    /// Stand-in for "last changed" of users and rooms with no entry: the
    /// token at start, since what happened before we started is unknown.
    startup: StreamToken,
    user_changed: RefCell<HashMap<OwnedUserId, StreamToken>>,
    room_changed: RefCell<HashMap<OwnedRoomId, StreamToken>>,
    /// Local users' memberships (every membership, including leave/ban).
    memberships: RefCell<HashMap<OwnedUserId, HashMap<OwnedRoomId, String>>>,
    /// Local users who are joined to or invited into each room.
    room_local: RefCell<HashMap<OwnedRoomId, HashSet<OwnedUserId>>>,
    waiters: RefCell<HashMap<OwnedUserId, Notify>>,
    /// `/sync`s parked in [`Notifier::wait_for_user`] now (metrics).
    parked: std::cell::Cell<usize>,
    stopping: std::cell::Cell<bool>,
    /// What `/sync` needs of the ephemeral and per-user streams (typing
    /// sets, presence, receipt/account-data positions), fed by `apply`.
    pub ephemeral: crate::ephemeral::EphemeralCache,
    /// Observers of every applied batch (e.g. `/sync`'s timeline cache).
    hooks: RefCell<Vec<BatchHook>>,
    /// Where the last `m.room.member` event was applied (`device_lists`
    /// skips its membership query when none is in the window).
    last_member: LastSeen,
    /// Where the last change that may have been a device list change was
    /// applied: a persisted poke, or a position announced with nothing
    /// (a federation update no local user shares a room with, a gap).
    last_device_list: LastSeen,
    /// Where the last position no change in its batch explains was applied
    /// (announced empty, or a ticket dropped after its commit).
    last_gap: LastSeen,
    /// Local users' last generic poke (`UserChange::Poke`: key uploads and
    /// claims, remote invites, device list changes), for the caches of
    /// what a poke stands for.
    user_poked: RefCell<HashMap<OwnedUserId, StreamToken>>,
}

/// Called with each batch as it is applied, and the position its shard had
/// reached before it (`current` is advanced right after the hooks run).
pub type BatchHook = Rc<dyn Fn(&Batch, ShardPos)>;

thread_local! {
    static LOCAL: RefCell<Option<Rc<Notifier>>> = const { RefCell::new(None) };
}

/// Makes `n` this shard's notifier (at shard start, before the mesh
/// receiver starts).
pub fn install(n: Rc<Notifier>) {
    LOCAL.with(|l| *l.borrow_mut() = Some(n));
}

/// This shard's notifier, if started.
pub fn local() -> Option<Rc<Notifier>> {
    LOCAL.with(|l| l.borrow().clone())
}

/// Applies an announcement batch on this shard (the mesh job body).
/// Synchronous on purpose: batches from one writer are applied in order.
pub fn apply_local(batch: &Batch) {
    match local() {
        Some(n) => n.apply(batch),
        None => tracing::warn!(
            from = batch.shard,
            "announcement before the notifier started"
        ),
    }
}

/// The highest persisted position of every shard, from the database.
pub async fn persisted_positions(db: &Pool, n_shards: usize) -> Result<Vec<i64>, DbError> {
    let mut out = vec![0i64; n_shards];
    for table in POSITION_TABLES {
        let sql =
            format!("SELECT stream_shard, max(stream_ordering) FROM {table} GROUP BY stream_shard");
        for row in db.query(&sql, &[]).await? {
            let shard: i32 = row.get(0)?;
            let max: Option<i64> = row.get(1)?;
            if let (Ok(s), Some(m)) = (usize::try_from(shard), max) {
                if s < n_shards {
                    out[s] = out[s].max(m);
                }
            }
        }
    }
    Ok(out)
}

impl Notifier {
    /// Loads the memberships of this shard's users and the stream
    /// positions every shard had reached before this start.
    pub async fn load(
        db: &Pool,
        shard: usize,
        n_shards: usize,
        persisted: &[i64],
    ) -> Result<Notifier, DbError> {
        let startup = StreamToken::from_positions(
            (0..n_shards)
                .map(|s| ShardPos {
                    persisted: persisted.get(s).copied().unwrap_or(0),
                    ephemeral: 0,
                })
                .collect(),
        );
        let n = Notifier::new(shard, n_shards, startup);
        let rows = db
            .query(
                "SELECT room_id, state_key, membership FROM current_state \
                 WHERE type = 'm.room.member' AND membership IS NOT NULL",
                &[],
            )
            .await?;
        for row in rows {
            let (room, user, m): (String, String, String) = (row.get(0)?, row.get(1)?, row.get(2)?);
            let (Ok(room), Ok(user)) = (OwnedRoomId::try_from(room), OwnedUserId::try_from(user))
            else {
                continue;
            };
            if n.is_local(&user) {
                n.set_membership(&room, &user, &m);
            }
        }
        Ok(n)
    }

    /// A notifier knowing no memberships, at `startup` (tests; `load`).
    pub fn new(shard: usize, n_shards: usize, startup: StreamToken) -> Notifier {
        let startup_for_cache = startup.clone();
        Notifier {
            shard,
            n_shards,
            current: RefCell::new(startup.clone()),
            startup,
            user_changed: RefCell::default(),
            room_changed: RefCell::default(),
            memberships: RefCell::default(),
            room_local: RefCell::default(),
            waiters: RefCell::default(),
            parked: std::cell::Cell::new(0),
            stopping: std::cell::Cell::new(false),
            last_member: LastSeen::new(&startup_for_cache, n_shards),
            last_device_list: LastSeen::new(&startup_for_cache, n_shards),
            last_gap: LastSeen::new(&startup_for_cache, n_shards),
            user_poked: RefCell::default(),
            ephemeral: crate::ephemeral::EphemeralCache::new(startup_for_cache.clone()),
            hooks: RefCell::default(),
        }
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Shutdown: parked syncs return now (with what they have) instead of
    /// holding the drain until their timeout.
    pub fn shutdown(&self) {
        self.stopping.set(true);
        for n in self.waiters.borrow().values() {
            n.notify_all();
        }
    }

    /// Whether `user`'s per-user data lives on this shard.
    pub fn is_local(&self, user: &UserId) -> bool {
        shard_for_user(user, self.n_shards) == self.shard
    }

    /// The token of everything applied here so far.
    pub fn current(&self) -> StreamToken {
        self.current.borrow().clone()
    }

    /// Whether anything for `user` happened after `since` (memory only).
    pub fn user_changed_since(&self, user: &UserId, since: &StreamToken) -> bool {
        match self.user_changed.borrow().get(user) {
            Some(t) => t.is_after(since),
            None => self.startup.is_after(since),
        }
    }

    /// Whether an `m.room.member` event may have been persisted after
    /// `from` and at or before `to` (per-shard positions; memory only).
    /// Every member event with a stream position is announced (backfill's
    /// are negative, outliers and soft-failed events are not in `events`).
    pub fn members_changed_between(&self, from: &[i64], to: &[i64]) -> bool {
        self.last_member
            .maybe_between(from, to, &self.current.borrow())
    }

    /// Whether an `e2e_device_list_changes` row may lie in the window
    /// (every one is announced with persisted pokes at its position, or
    /// with none: see `last_device_list`).
    pub fn device_lists_changed_between(&self, from: &[i64], to: &[i64]) -> bool {
        self.last_device_list
            .maybe_between(from, to, &self.current.borrow())
    }

    /// Whether a stream position in the window was announced with no
    /// change (or dropped): what it wrote, if anything, is unknown.
    fn gap_between(&self, from: &[i64], to: &[i64]) -> bool {
        self.last_gap
            .maybe_between(from, to, &self.current.borrow())
    }

    /// Whether the local `user` was poked after `since` (memory only;
    /// before startup, unknown: `true`).
    fn user_poked_since(&self, user: &UserId, since: &StreamToken) -> bool {
        match self.user_poked.borrow().get(user) {
            Some(t) => t.is_after(since),
            None => self.startup.is_after(since),
        }
    }

    /// Whether what a poke of `user` stands for (their key counts, remote
    /// invites) may have changed after `since`: they were poked, a
    /// position since was left unexplained, or they are not this shard's
    /// user (whose pokes are not tracked here).
    pub fn maybe_poked_since(&self, user: &UserId, since: &StreamToken) -> bool {
        let n = self.n_shards;
        let now = self.current().persisted_vec(n);
        !self.is_local(user)
            || self.user_poked_since(user, since)
            || self.gap_between(&since.persisted_vec(n), &now)
    }

    /// Whether anything in `room` happened after `since` (memory only;
    /// tracked for rooms with local members).
    pub fn room_changed_since(&self, room: &OwnedRoomId, since: &StreamToken) -> bool {
        match self.room_changed.borrow().get(room) {
            Some(t) => t.is_after(since),
            None => self.startup.is_after(since),
        }
    }

    /// A local user's rooms and membership in each (join, invite, leave,
    /// ban, knock).
    pub fn rooms_of(&self, user: &UserId) -> Vec<(OwnedRoomId, String)> {
        self.memberships
            .borrow()
            .get(user)
            .map(|m| m.iter().map(|(r, m)| (r.clone(), m.clone())).collect())
            .unwrap_or_default()
    }

    /// Whether any local user is joined to or invited into `room`.
    pub fn has_local_members(&self, room: &OwnedRoomId) -> bool {
        self.room_local.borrow().contains_key(room)
    }

    /// Local users joined to or invited into `room`.
    pub fn local_members(&self, room: &OwnedRoomId) -> Vec<OwnedUserId> {
        self.room_local
            .borrow()
            .get(room)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether `user` has a sync parked on this shard now (presence).
    pub fn is_waiting(&self, user: &UserId) -> bool {
        self.waiters
            .borrow()
            .get(user)
            .is_some_and(|n| n.waiters() > 0)
    }

    /// Syncs parked on this shard now.
    pub fn parked_syncs(&self) -> usize {
        self.parked.get()
    }

    /// Parks until something for `user` happens after `since`, or
    /// `timeout` passes. Returns whether something happened.
    pub async fn wait_for_user(
        &self,
        user: &UserId,
        since: &StreamToken,
        timeout: Duration,
    ) -> bool {
        if self.user_changed_since(user, since) {
            return true;
        }
        let notify = self
            .waiters
            .borrow_mut()
            .entry(user.to_owned())
            .or_default()
            .clone();
        let wait = async {
            loop {
                if self.user_changed_since(user, since) {
                    return true;
                }
                if self.stopping.get() {
                    return false;
                }
                notify.notified().await;
            }
        };
        // Counted down by a guard: a client that leaves drops this future.
        struct Parked<'a>(&'a std::cell::Cell<usize>);
        impl Drop for Parked<'_> {
            fn drop(&mut self) {
                self.0.set(self.0.get().saturating_sub(1));
            }
        }
        self.parked.set(self.parked.get() + 1);
        let parked = Parked(&self.parked);
        let woke = monoio::time::timeout(timeout, wait).await.unwrap_or(false);
        drop(parked);
        if notify.waiters() == 0 {
            self.waiters.borrow_mut().remove(user);
        }
        woke
    }

    fn set_membership(&self, room: &OwnedRoomId, user: &OwnedUserId, membership: &str) {
        self.memberships
            .borrow_mut()
            .entry(user.clone())
            .or_default()
            .insert(room.clone(), membership.to_owned());
        let mut local = self.room_local.borrow_mut();
        if matches!(membership, "join" | "invite") {
            local.entry(room.clone()).or_default().insert(user.clone());
        } else if let Some(set) = local.get_mut(room) {
            set.remove(user);
            if set.is_empty() {
                local.remove(room);
            }
        }
    }

    fn touch_user(&self, user: &UserId, shard: usize, pos: ShardPos) {
        let mut changed = self.user_changed.borrow_mut();
        let t = changed
            .entry(user.to_owned())
            .or_insert_with(|| self.startup.clone());
        t.advance(shard, pos);
        if let Some(n) = self.waiters.borrow().get(user) {
            n.notify_all();
        }
    }

    /// Registers a hook run synchronously for every batch applied from now
    /// on (so it sees changes in the same order as `current`).
    pub fn add_batch_hook(&self, hook: BatchHook) {
        self.hooks.borrow_mut().push(hook);
    }

    /// Applies one batch from `batch.shard`'s writer, in order.
    pub fn apply(&self, batch: &Batch) {
        let s = batch.shard;
        let (poked, gap) = persisted_pokes_and_gaps(batch, self.current.borrow().get(s).persisted);
        if poked || gap {
            self.last_device_list.saw(s, batch.upto.persisted);
        }
        if gap {
            self.last_gap.saw(s, batch.upto.persisted);
        }
        let hooks = self.hooks.borrow().clone();
        if !hooks.is_empty() {
            let before = self.current.borrow().get(s);
            for h in hooks {
                h(batch, before);
            }
        }
        for change in &batch.changes {
            let pos = match change.pos() {
                Pos::Persisted(p) => ShardPos {
                    persisted: p,
                    ephemeral: 0,
                },
                Pos::Ephemeral(e) => ShardPos {
                    persisted: 0,
                    ephemeral: e,
                },
            };
            match change {
                Change::Room { room_id, what, .. } => {
                    if let RoomChange::Event(ev) = what {
                        if ev.event_type == "m.room.member" {
                            self.last_member.saw(s, pos.persisted);
                        }
                        if let (Some(m), Some(target)) = (&ev.membership, &ev.state_key) {
                            if let Ok(target) = OwnedUserId::try_from(target.as_str()) {
                                if self.is_local(&target) {
                                    self.set_membership(room_id, &target, m);
                                    // Woken even when leaving: a kicked user's
                                    // sync must move the room to `leave`.
                                    self.touch_user(&target, s, pos);
                                }
                            }
                        }
                    }
                    self.ephemeral.apply(s, change);
                    self.room_changed
                        .borrow_mut()
                        .entry(room_id.clone())
                        .or_insert_with(|| self.startup.clone())
                        .advance(s, pos);
                    for user in self.local_members(room_id) {
                        self.touch_user(&user, s, pos);
                    }
                }
                Change::User { user_id, what, .. } => {
                    self.ephemeral.apply(s, change);
                    if matches!(what, UserChange::Poke) && self.is_local(user_id) {
                        self.user_poked
                            .borrow_mut()
                            .entry(user_id.clone())
                            .or_insert_with(|| self.startup.clone())
                            .advance(s, pos);
                    }
                    if self.is_local(user_id) {
                        self.touch_user(user_id, s, pos);
                    }
                    // Presence reaches whoever shares a room with the user.
                    if let UserChange::Presence(p) = what {
                        for room in &p.rooms {
                            for user in self.local_members(room) {
                                self.touch_user(&user, s, pos);
                            }
                        }
                    }
                }
            }
        }
        self.current.borrow_mut().advance(s, batch.upto);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::change::{EventChange, RoomChange, UserChange};
    use std::sync::Arc;

    fn uid(s: &str) -> OwnedUserId {
        OwnedUserId::try_from(s).unwrap()
    }

    fn member_event(room: &OwnedRoomId, pos: i64, target: &str, m: &str) -> Change {
        Change::Room {
            room_id: room.clone(),
            pos: Pos::Persisted(pos),
            what: RoomChange::Event(Arc::new(EventChange {
                event_id: ruma::OwnedEventId::try_from(format!("$e{pos}")).unwrap(),
                sender: uid(target),
                event_type: "m.room.member".into(),
                state_key: Some(target.into()),
                membership: Some(m.into()),
                event: Arc::new(serde_json::Value::Null),
                resolved: false,
            })),
        }
    }

    fn batch(shard: usize, persisted: i64, changes: Vec<Change>) -> Batch {
        Batch {
            shard,
            upto: ShardPos {
                persisted,
                ephemeral: 0,
            },
            changes,
        }
    }

    #[test]
    fn memberships_and_changes_follow_announcements() {
        // One shard: every user is local.
        let n = Notifier::new(0, 1, StreamToken::zero(1));
        let room = OwnedRoomId::try_from("!r:x").unwrap();
        let (a, b) = (uid("@a:x"), uid("@b:x"));
        let t0 = n.current();
        n.apply(&batch(0, 1, vec![member_event(&room, 1, "@a:x", "join")]));
        assert!(n.user_changed_since(&a, &t0));
        assert!(!n.user_changed_since(&b, &t0), "b is not in the room");
        let t1 = n.current();
        assert_eq!(t1.persisted(0), 1);
        n.apply(&batch(0, 2, vec![member_event(&room, 2, "@b:x", "invite")]));
        assert!(n.user_changed_since(&a, &t1) && n.user_changed_since(&b, &t1));
        assert_eq!(n.rooms_of(&b), vec![(room.clone(), "invite".to_owned())]);
        n.apply(&batch(0, 3, vec![member_event(&room, 3, "@b:x", "leave")]));
        assert_eq!(n.local_members(&room), vec![a.clone()]);
        let t3 = n.current();
        // A gap-only batch moves the token without touching anyone.
        n.apply(&batch(0, 5, vec![]));
        assert!(!n.user_changed_since(&a, &t3));
        assert_eq!(n.current().persisted(0), 5);
        n.apply(&batch(
            0,
            5,
            vec![Change::User {
                user_id: b.clone(),
                pos: Pos::Ephemeral(7),
                what: UserChange::Poke,
            }],
        ));
        assert!(n.user_changed_since(&b, &t3) && !n.user_changed_since(&a, &t3));
    }

    #[test]
    fn member_windows_are_exact_only_where_applied() {
        let start = |p| ShardPos {
            persisted: p,
            ephemeral: 0,
        };
        let n = Notifier::new(0, 2, StreamToken::from_positions(vec![start(4), start(6)]));
        let room = OwnedRoomId::try_from("!r:x").unwrap();
        // Before startup nothing is known.
        assert!(n.members_changed_between(&[3, 6], &[4, 6]));
        assert!(!n.members_changed_between(&[4, 6], &[4, 6]), "empty window");
        let message = Change::Room {
            room_id: room.clone(),
            pos: Pos::Persisted(7),
            what: RoomChange::Event(Arc::new(EventChange {
                event_id: ruma::OwnedEventId::try_from("$m").unwrap(),
                sender: uid("@a:x"),
                event_type: "m.room.message".into(),
                state_key: None,
                membership: None,
                event: Arc::new(serde_json::Value::Null),
                resolved: false,
            })),
        };
        n.apply(&batch(1, 7, vec![message]));
        assert!(
            !n.members_changed_between(&[4, 6], &[4, 7]),
            "a message only"
        );
        assert!(
            n.members_changed_between(&[4, 6], &[4, 8]),
            "past what was applied"
        );
        n.apply(&batch(0, 5, vec![member_event(&room, 5, "@b:x", "join")]));
        assert!(n.members_changed_between(&[4, 6], &[5, 7]));
        assert!(
            !n.members_changed_between(&[5, 6], &[5, 7]),
            "after the join"
        );
    }

    #[test]
    fn device_list_windows_see_pokes_and_unexplained_positions() {
        let start = ShardPos {
            persisted: 4,
            ephemeral: 0,
        };
        let n = Notifier::new(0, 1, StreamToken::from_positions(vec![start]));
        let room = OwnedRoomId::try_from("!r:x").unwrap();
        // A member event accounts for its position: no device list change.
        n.apply(&batch(0, 5, vec![member_event(&room, 5, "@a:x", "join")]));
        assert!(!n.device_lists_changed_between(&[4], &[5]));
        let poke = |pos| Change::User {
            user_id: uid("@a:x"),
            pos,
            what: UserChange::Poke,
        };
        // An ephemeral poke is not a device list change.
        n.apply(&batch(0, 5, vec![poke(Pos::Ephemeral(1))]));
        assert!(!n.device_lists_changed_between(&[4], &[5]));
        n.apply(&batch(0, 6, vec![poke(Pos::Persisted(6))]));
        assert!(n.device_lists_changed_between(&[5], &[6]));
        assert!(!n.device_lists_changed_between(&[6], &[6]));
        // Position 8 is explained, 7 is not (announced empty or a gap).
        n.apply(&batch(0, 8, vec![member_event(&room, 8, "@b:x", "join")]));
        assert!(n.device_lists_changed_between(&[6], &[8]));
        n.apply(&batch(0, 9, vec![]));
        assert!(n.device_lists_changed_between(&[8], &[9]));
        // Gaps alone (only the last one is kept: older windows count as
        // holding one, which is only conservative).
        assert!(n.gap_between(&[8], &[9]));
        assert!(n.gap_between(&[4], &[6]), "conservative");
        n.apply(&batch(0, 10, vec![poke(Pos::Persisted(10))]));
        assert!(!n.gap_between(&[9], &[10]), "a poke explains its position");
        // Pokes per user, ephemeral or persisted.
        let t = StreamToken::from_positions(vec![start]);
        assert!(n.user_poked_since(&uid("@a:x"), &t));
        assert!(!n.user_poked_since(&uid("@b:x"), &t), "never poked");
        let after = StreamToken::from_positions(vec![ShardPos {
            persisted: 10,
            ephemeral: 1,
        }]);
        assert!(!n.user_poked_since(&uid("@a:x"), &after));
    }

    #[test]
    fn unknown_users_count_as_changed_before_startup() {
        let n = Notifier::new(
            0,
            1,
            StreamToken::from_positions(vec![ShardPos {
                persisted: 9,
                ephemeral: 0,
            }]),
        );
        let u = uid("@u:x");
        assert!(n.user_changed_since(&u, &StreamToken::zero(1)));
        assert!(!n.user_changed_since(&u, &n.current()));
    }
}
