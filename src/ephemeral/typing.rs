//! Typing notifications (client-server API "Typing Notifications"), kept in
//! memory on the room's owner shard: per room, who is typing and until
//! when. One expiry task per shard sleeps until the earliest deadline (a
//! deadline-ordered map, i.e. a timer wheel with exact slots) and announces
//! the rooms whose set shrank. Announcing is a callback so tests can drive
//! it with a [`FakeClock`](crate::primitives::FakeClock).
//!
//! As Synapse: a user already typing who sends `typing: true` again only
//! moves the deadline (no announcement); `typing: false` for a user who is
//! not typing announces nothing.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use ruma::{OwnedRoomId, OwnedUserId};

use crate::primitives::{ClockHandle, Notify};

/// Longest typing timeout honoured (Synapse caps `timeout` at 120 s).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// Timeout when a client sends `typing: true` without one (Synapse: 30 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Called with a room and its new typing set (sorted) whenever it changes.
pub type Announce = Box<dyn Fn(&OwnedRoomId, Vec<OwnedUserId>)>;

/// One shard's typing state for the rooms it owns.
pub struct Typing {
    clock: ClockHandle,
    rooms: RefCell<HashMap<OwnedRoomId, HashMap<OwnedUserId, Instant>>>,
    /// Every deadline ever set and not yet passed; stale ones (refreshed or
    /// stopped) are recognised on expiry by comparing with `rooms`.
    deadlines: RefCell<BTreeMap<(Instant, u64), (OwnedRoomId, OwnedUserId)>>,
    seq: Cell<u64>,
    /// Wakes the expiry task when a deadline earlier than its sleep appears.
    earlier: Notify,
    announce: Announce,
}

impl Typing {
    pub fn new(clock: ClockHandle, announce: Announce) -> Rc<Typing> {
        Rc::new(Typing {
            clock,
            rooms: RefCell::default(),
            deadlines: RefCell::default(),
            seq: Cell::new(0),
            earlier: Notify::new(),
            announce,
        })
    }

    /// Users typing in `room`, sorted.
    pub fn typing_in(&self, room: &OwnedRoomId) -> Vec<OwnedUserId> {
        let mut v: Vec<OwnedUserId> = self
            .rooms
            .borrow()
            .get(room)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// `PUT /rooms/{roomId}/typing/{userId}` after the checks: starts
    /// (`Some(timeout)`, capped at [`MAX_TIMEOUT`]) or stops (`None`).
    pub fn set(&self, room: &OwnedRoomId, user: &OwnedUserId, timeout: Option<Duration>) {
        let changed = match timeout {
            Some(t) => {
                let deadline = self.clock.now() + t.min(MAX_TIMEOUT);
                let was = self
                    .rooms
                    .borrow_mut()
                    .entry(room.clone())
                    .or_default()
                    .insert(user.clone(), deadline);
                let seq = self.seq.get();
                self.seq.set(seq + 1);
                let mut deadlines = self.deadlines.borrow_mut();
                let is_first = deadlines
                    .first_key_value()
                    .is_none_or(|((d, _), _)| deadline < *d);
                deadlines.insert((deadline, seq), (room.clone(), user.clone()));
                drop(deadlines);
                if is_first {
                    self.earlier.notify_all();
                }
                was.is_none()
            }
            None => self.remove(room, user),
        };
        if changed {
            (self.announce)(room, self.typing_in(room));
        }
    }

    fn remove(&self, room: &OwnedRoomId, user: &OwnedUserId) -> bool {
        let mut rooms = self.rooms.borrow_mut();
        let Some(users) = rooms.get_mut(room) else {
            return false;
        };
        let removed = users.remove(user).is_some();
        if users.is_empty() {
            rooms.remove(room);
        }
        removed
    }

    /// Removes every user whose deadline has passed and announces each
    /// room that changed. Returns the number of users removed.
    pub fn expire_due(&self) -> usize {
        let now = self.clock.now();
        let mut changed_rooms: Vec<OwnedRoomId> = Vec::new();
        let mut removed = 0;
        loop {
            let due = {
                let mut d = self.deadlines.borrow_mut();
                match d.first_key_value() {
                    Some(((t, _), _)) if *t <= now => d.pop_first(),
                    _ => None,
                }
            };
            let Some(((t, _), (room, user))) = due else {
                break;
            };
            // Only the user's current deadline counts (a refresh moved it).
            let current = self
                .rooms
                .borrow()
                .get(&room)
                .and_then(|m| m.get(&user).copied());
            if current == Some(t) && self.remove(&room, &user) {
                removed += 1;
                if !changed_rooms.contains(&room) {
                    changed_rooms.push(room);
                }
            }
        }
        for room in &changed_rooms {
            (self.announce)(room, self.typing_in(room));
        }
        removed
    }

    /// The expiry task: sleeps until the earliest deadline (or until an
    /// earlier one is set), expires, repeats. Runs for the shard's life.
    pub async fn run_expiry(self: Rc<Self>) {
        loop {
            let next = self
                .deadlines
                .borrow()
                .first_key_value()
                .map(|((t, _), _)| *t);
            let earlier = self.earlier.notified();
            match next {
                None => earlier.await,
                Some(t) => {
                    let wait = t.saturating_duration_since(self.clock.now());
                    // Either the deadline passed or an earlier one came.
                    let _ = crate::primitives::timeout(&*self.clock, wait, earlier).await;
                }
            }
            self.expire_due();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primitives::clock::test_util::{block_on, settle};
    use crate::primitives::FakeClock;

    type Log = Rc<RefCell<Vec<(String, Vec<String>)>>>;

    fn setup() -> (FakeClock, Rc<Typing>, Log) {
        let clock = FakeClock::new(0);
        let log: Log = Rc::default();
        let l = log.clone();
        let t = Typing::new(
            clock.handle(),
            Box::new(move |room, users| {
                l.borrow_mut().push((
                    room.to_string(),
                    users.iter().map(|u| u.to_string()).collect(),
                ))
            }),
        );
        (clock, t, log)
    }

    fn ids() -> (OwnedRoomId, OwnedUserId, OwnedUserId) {
        (
            OwnedRoomId::try_from("!r:x").unwrap(),
            OwnedUserId::try_from("@a:x").unwrap(),
            OwnedUserId::try_from("@b:x").unwrap(),
        )
    }

    #[test]
    fn start_refresh_stop_announce_only_changes() {
        let (_clock, t, log) = setup();
        let (room, a, b) = ids();
        t.set(&room, &a, Some(Duration::from_secs(10)));
        t.set(&room, &a, Some(Duration::from_secs(10))); // refresh: silent
        t.set(&room, &b, Some(Duration::from_secs(10)));
        t.set(&room, &a, None);
        t.set(&room, &a, None); // not typing: silent
        let log = log.borrow();
        assert_eq!(log.len(), 3, "{log:?}");
        assert_eq!(log[1].1, vec!["@a:x", "@b:x"]);
        assert_eq!(log[2].1, vec!["@b:x"]);
    }

    #[test]
    fn expiry_task_removes_users_at_their_deadline() {
        block_on(async {
            let (clock, t, log) = setup();
            let (room, a, b) = ids();
            monoio::spawn(t.clone().run_expiry());
            t.set(&room, &a, Some(Duration::from_secs(5)));
            t.set(&room, &b, Some(Duration::from_secs(10)));
            settle().await;
            clock.advance(Duration::from_secs(4));
            settle().await;
            assert_eq!(t.typing_in(&room).len(), 2);
            // A refresh moves a's deadline past the old one.
            t.set(&room, &a, Some(Duration::from_secs(5)));
            clock.advance(Duration::from_secs(2)); // t = 6: old deadline of a
            settle().await;
            assert_eq!(t.typing_in(&room), vec![a.clone(), b.clone()]);
            clock.advance(Duration::from_secs(3)); // t = 9: a's new deadline
            settle().await;
            assert_eq!(t.typing_in(&room), vec![b.clone()]);
            assert_eq!(log.borrow().last().unwrap().1, vec!["@b:x"]);
            clock.advance(Duration::from_secs(1)); // t = 10: b
            settle().await;
            assert!(t.typing_in(&room).is_empty());
            assert_eq!(log.borrow().last().unwrap().1, Vec::<String>::new());
            assert_eq!(log.borrow().len(), 4, "two starts, two expiries");
        });
    }

    #[test]
    fn timeouts_are_capped() {
        block_on(async {
            let (clock, t, _log) = setup();
            let (room, a, _) = ids();
            monoio::spawn(t.clone().run_expiry());
            t.set(&room, &a, Some(Duration::from_secs(3600)));
            settle().await;
            clock.advance(MAX_TIMEOUT);
            settle().await;
            assert!(t.typing_in(&room).is_empty());
        });
    }

    #[test]
    fn an_earlier_deadline_wakes_the_sleeping_task() {
        block_on(async {
            let (clock, t, _log) = setup();
            let (room, a, b) = ids();
            monoio::spawn(t.clone().run_expiry());
            t.set(&room, &a, Some(Duration::from_secs(60)));
            settle().await;
            t.set(&room, &b, Some(Duration::from_secs(1)));
            settle().await;
            clock.advance(Duration::from_secs(1));
            settle().await;
            assert_eq!(t.typing_in(&room), vec![a.clone()]);
        });
    }
}
