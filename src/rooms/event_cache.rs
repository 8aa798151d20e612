//! The owner shard's cache of graph events by id, for auth, state and the
//! few lookups of recent events (a redaction's or a receipt's target, a
//! build in the room's pipeline before its commit). Never for serving.
//!
//! **State events and the rest are kept apart.** Auth and state reads hit
//! state events again and again for as long as they are current, so those
//! get the big LRU. Other events (messages) are looked up again only
//! while recent. When every committed message went into the one
//! 50,000-entry LRU, a parsed message (~3 KB of JSON tree) made a busy shard
//! grow ~150 MB over its first 30,000 sends, and filling fresh pages for
//! them was ~7 % of a send profile's samples; the throughput change was
//! within the rig's noise (bench/RESULTS.md, "cut 7"). So non-state events
//! get a small LRU of their own. A pipeline's uncommitted event is
//! committed within milliseconds, far sooner than [`RECENT`] later sends
//! on the shard push it out.

use std::cell::RefCell;
use std::num::NonZeroUsize;
use std::rc::Rc;

use lru::LruCache;
use ruma::{OwnedEventId, OwnedRoomId};

use crate::events::Pdu;

/// State events kept per shard.
pub const STATE: usize = 50_000;
/// Other (timeline) events kept per shard.
pub const RECENT: usize = 4_096;

type Lru = RefCell<LruCache<OwnedEventId, Rc<Pdu>>>;

#[derive(Debug)]
pub struct EventCache {
    state: Lru,
    recent: Lru,
}

impl Default for EventCache {
    fn default() -> Self {
        EventCache::new(STATE, RECENT)
    }
}

impl EventCache {
    pub fn new(state: usize, recent: usize) -> EventCache {
        let lru = |n| {
            RefCell::new(LruCache::new(
                NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN),
            ))
        };
        EventCache {
            state: lru(state),
            recent: lru(recent),
        }
    }

    fn of(&self, pdu: &Pdu) -> &Lru {
        if pdu.state_key.is_some() {
            &self.state
        } else {
            &self.recent
        }
    }

    pub fn get(&self, id: &OwnedEventId) -> Option<Rc<Pdu>> {
        if let Some(p) = self.state.borrow_mut().get(id) {
            return Some(Rc::clone(p));
        }
        self.recent.borrow_mut().get(id).cloned()
    }

    pub fn put(&self, pdu: Rc<Pdu>) {
        self.of(&pdu).borrow_mut().put(pdu.event_id.clone(), pdu);
    }

    pub fn pop(&self, id: &OwnedEventId) {
        self.state.borrow_mut().pop(id);
        self.recent.borrow_mut().pop(id);
    }

    /// Drops every cached event of `room` (purged or forgotten).
    pub fn forget_room(&self, room: &OwnedRoomId) {
        for lru in [&self.state, &self.recent] {
            lru.borrow_mut().retain(|_, pdu| pdu.room_id != *room);
        }
    }

    /// Events held: (state, recent).
    #[cfg(test)]
    pub fn len(&self) -> (usize, usize) {
        (self.state.borrow().len(), self.recent.borrow().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::RoomVersion;
    use ruma::canonical_json::CanonicalJsonObject;

    fn pdu(n: usize, room: &str, state_key: Option<&str>) -> Rc<Pdu> {
        let mut j = serde_json::json!({
            "room_id": room, "sender": "@a:h", "type": "m.room.message",
            "content": {"body": n.to_string()}, "origin_server_ts": 1, "depth": 2,
            "prev_events": [], "auth_events": [],
        });
        if let Some(k) = state_key {
            j["type"] = "m.room.member".into();
            j["state_key"] = k.into();
        }
        let serde_json::Value::Object(m) = j else {
            unreachable!()
        };
        let json: CanonicalJsonObject = ruma::canonical_json::try_from_json_map(m).unwrap();
        let id = OwnedEventId::try_from(format!("$e{n}")).unwrap();
        Rc::new(Pdu::from_json(id, json, RoomVersion::V11).unwrap())
    }

    #[test]
    fn messages_do_not_push_out_state() {
        let c = EventCache::new(10, 4);
        let s = pdu(0, "!r:h", Some("@a:h"));
        c.put(s.clone());
        for n in 1..=100 {
            c.put(pdu(n, "!r:h", None));
        }
        assert_eq!(c.len(), (1, 4));
        assert!(c.get(&s.event_id).is_some());
        // The most recent messages are still there; older ones are not.
        assert!(c.get(&pdu(100, "!r:h", None).event_id).is_some());
        assert!(c.get(&pdu(1, "!r:h", None).event_id).is_none());
    }

    #[test]
    fn pop_and_forget_room_reach_both_parts() {
        let c = EventCache::new(10, 10);
        let (s, m) = (pdu(1, "!r:h", Some("")), pdu(2, "!r:h", None));
        let other = pdu(3, "!o:h", None);
        for p in [&s, &m, &other] {
            c.put(Rc::clone(p));
        }
        c.pop(&m.event_id);
        assert!(c.get(&m.event_id).is_none());
        c.forget_room(&s.room_id);
        assert!(c.get(&s.event_id).is_none());
        assert!(c.get(&other.event_id).is_some());
    }
}
