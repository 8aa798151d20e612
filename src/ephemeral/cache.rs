//! Per-shard memory of the ephemeral and per-user streams, fed only by the
//! notifier's `apply` (announcements from every shard, in each writer's
//! position order), read by `/sync` on this shard:
//!
//! - each room's current typing set with its ephemeral position (typing is
//!   memory-only, so this *is* the data);
//! - every user's last announced presence (memory-only too), indexed by
//!   position so an incremental sync finds what changed without a scan;
//! - "last changed" persisted positions of each room's receipts and each
//!   user's account data and to-device inbox, so a sync skips the database
//!   query for streams with nothing new.
//!
//! A key with no entry counts as changed "at startup" (what happened before
//! this process started is unknown), like the notifier's own maps.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use crate::stream::{Change, Pos, PresenceUpdate, RoomChange, StreamToken, UserChange};

/// A room's typing set as last announced by its owner shard.
#[derive(Debug, Clone)]
pub struct TypingEntry {
    pub shard: usize,
    /// Ephemeral position of the announcement.
    pub pos: i64,
    pub user_ids: Arc<Vec<OwnedUserId>>,
}

/// A user's presence as last announced by their shard.
#[derive(Debug, Clone)]
pub struct PresenceEntry {
    pub shard: usize,
    pub pos: i64,
    pub update: Arc<PresenceUpdate>,
}

/// See the module doc. One per shard, inside its `Notifier`.
pub struct EphemeralCache {
    startup: StreamToken,
    typing: RefCell<HashMap<OwnedRoomId, TypingEntry>>,
    receipts: RefCell<HashMap<OwnedRoomId, (usize, i64)>>,
    account_data: RefCell<HashMap<OwnedUserId, (usize, i64)>>,
    to_device: RefCell<HashMap<OwnedUserId, (usize, i64)>>,
    presence: RefCell<HashMap<OwnedUserId, PresenceEntry>>,
    presence_by_pos: RefCell<BTreeMap<(usize, i64), OwnedUserId>>,
    /// Last change of a user's data *in one room* that only they see (room
    /// account data, tags, read marker, private receipts): such a room has
    /// something new for them although the room itself did not change.
    user_room: RefCell<HashMap<(OwnedUserId, OwnedRoomId), (usize, i64)>>,
}

impl EphemeralCache {
    /// `startup`: the notifier's token at start (stand-in for keys never seen).
    pub fn new(startup: StreamToken) -> EphemeralCache {
        EphemeralCache {
            startup,
            typing: RefCell::default(),
            receipts: RefCell::default(),
            account_data: RefCell::default(),
            to_device: RefCell::default(),
            presence: RefCell::default(),
            presence_by_pos: RefCell::default(),
            user_room: RefCell::default(),
        }
    }

    /// Records one announced change from writer shard `shard`.
    pub fn apply(&self, shard: usize, change: &Change) {
        match change {
            Change::Room {
                room_id,
                pos: Pos::Ephemeral(pos),
                what: RoomChange::Typing(user_ids),
            } => {
                self.typing.borrow_mut().insert(
                    room_id.clone(),
                    TypingEntry {
                        shard,
                        pos: *pos,
                        user_ids: user_ids.clone(),
                    },
                );
            }
            Change::Room {
                room_id,
                pos: Pos::Persisted(pos),
                what: RoomChange::Receipt,
            } => {
                self.receipts
                    .borrow_mut()
                    .insert(room_id.clone(), (shard, *pos));
            }
            Change::User {
                user_id,
                pos: Pos::Persisted(pos),
                what: UserChange::PrivateReceipt { room_id },
            } => {
                self.receipts
                    .borrow_mut()
                    .insert(room_id.clone(), (shard, *pos));
                self.user_room
                    .borrow_mut()
                    .insert((user_id.clone(), room_id.clone()), (shard, *pos));
            }
            Change::User {
                user_id,
                pos: Pos::Persisted(pos),
                what: UserChange::AccountData { room_id },
            } => {
                self.account_data
                    .borrow_mut()
                    .insert(user_id.clone(), (shard, *pos));
                if let Some(room_id) = room_id {
                    self.user_room
                        .borrow_mut()
                        .insert((user_id.clone(), room_id.clone()), (shard, *pos));
                }
            }
            Change::User {
                user_id,
                pos: Pos::Persisted(pos),
                what: UserChange::ToDevice,
            } => {
                self.to_device
                    .borrow_mut()
                    .insert(user_id.clone(), (shard, *pos));
            }
            Change::User {
                user_id,
                pos: Pos::Ephemeral(pos),
                what: UserChange::Presence(update),
            } => {
                let mut by_pos = self.presence_by_pos.borrow_mut();
                let old = self.presence.borrow_mut().insert(
                    user_id.clone(),
                    PresenceEntry {
                        shard,
                        pos: *pos,
                        update: update.clone(),
                    },
                );
                if let Some(old) = old {
                    by_pos.remove(&(old.shard, old.pos));
                }
                by_pos.insert((shard, *pos), user_id.clone());
            }
            _ => {}
        }
    }

    fn changed(&self, entry: Option<(usize, i64)>, since: &StreamToken) -> bool {
        match entry {
            Some((s, p)) => p > since.persisted(s),
            None => self.startup.is_after(since),
        }
    }

    /// The room's typing set as last announced, if any.
    pub fn typing(&self, room: &RoomId) -> Option<TypingEntry> {
        self.typing.borrow().get(room).cloned()
    }

    /// Whether a receipt in `room` may have been stored after `since`.
    pub fn receipts_changed(&self, room: &RoomId, since: &StreamToken) -> bool {
        self.changed(self.receipts.borrow().get(room).copied(), since)
    }

    /// Whether `user`'s account data may have changed after `since`.
    pub fn account_data_changed(&self, user: &UserId, since: &StreamToken) -> bool {
        self.changed(self.account_data.borrow().get(user).copied(), since)
    }

    /// Whether a to-device message for `user` may have arrived after `since`.
    pub fn to_device_changed(&self, user: &UserId, since: &StreamToken) -> bool {
        self.changed(self.to_device.borrow().get(user).copied(), since)
    }

    /// Whether `user`'s own data in `room` (room account data, tags, read
    /// marker, private receipts) changed after `since`, while the room
    /// itself may not have: the sync builder must visit the room then.
    /// Unknown pairs count as unchanged (a token from before the start
    /// makes the builder visit every room anyway).
    pub fn user_room_changed(&self, user: &UserId, room: &RoomId, since: &StreamToken) -> bool {
        self.user_room
            .borrow()
            .get(&(user.to_owned(), room.to_owned()))
            .is_some_and(|&(s, p)| p > since.persisted(s))
    }

    /// `user`'s presence as last announced.
    pub fn presence(&self, user: &UserId) -> Option<PresenceEntry> {
        self.presence.borrow().get(user).cloned()
    }

    /// Users whose presence was announced after `since` (every known one
    /// when `since` is `None`), with their presence.
    pub fn presence_since(
        &self,
        since: Option<&StreamToken>,
    ) -> Vec<(OwnedUserId, Arc<PresenceUpdate>)> {
        let presence = self.presence.borrow();
        let pick = |u: &OwnedUserId| presence.get(u).map(|e| (u.clone(), e.update.clone()));
        let Some(since) = since else {
            return presence
                .iter()
                .map(|(u, e)| (u.clone(), e.update.clone()))
                .collect();
        };
        let by_pos = self.presence_by_pos.borrow();
        let shards = by_pos.last_key_value().map_or(0, |((s, _), _)| s + 1);
        let mut out = Vec::new();
        for s in 0..shards {
            let from = since.ephemeral(s).saturating_add(1);
            out.extend(
                by_pos
                    .range((s, from)..=(s, i64::MAX))
                    .filter_map(|(_, u)| pick(u)),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::ShardPos;

    fn tok(v: &[(i64, i64)]) -> StreamToken {
        StreamToken::from_positions(
            v.iter()
                .map(|&(persisted, ephemeral)| ShardPos {
                    persisted,
                    ephemeral,
                })
                .collect(),
        )
    }

    fn uid(s: &str) -> OwnedUserId {
        OwnedUserId::try_from(s).unwrap()
    }

    fn presence(user: &str, pos: i64, state: &str) -> Change {
        Change::User {
            user_id: uid(user),
            pos: Pos::Ephemeral(pos),
            what: UserChange::Presence(Arc::new(PresenceUpdate {
                presence: state.into(),
                status_msg: None,
                last_active_ts: 0,
                currently_active: false,
                rooms: vec![],
            })),
        }
    }

    #[test]
    fn presence_since_uses_positions_per_shard() {
        let c = EphemeralCache::new(tok(&[(0, 0), (0, 0)]));
        c.apply(0, &presence("@a:x", 10, "online"));
        c.apply(1, &presence("@b:x", 5, "online"));
        c.apply(0, &presence("@a:x", 12, "unavailable"));
        let all = c.presence_since(None);
        assert_eq!(all.len(), 2);
        let since = tok(&[(0, 11), (0, 5)]);
        let changed = c.presence_since(Some(&since));
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].0, uid("@a:x"));
        assert_eq!(changed[0].1.presence, "unavailable");
        assert!(c.presence_since(Some(&tok(&[(0, 12), (0, 5)]))).is_empty());
    }

    #[test]
    fn unknown_keys_count_as_changed_at_startup() {
        let c = EphemeralCache::new(tok(&[(7, 0)]));
        let room = OwnedRoomId::try_from("!r:x").unwrap();
        assert!(c.receipts_changed(&room, &tok(&[(6, 0)])));
        assert!(!c.receipts_changed(&room, &tok(&[(7, 0)])));
        c.apply(
            0,
            &Change::Room {
                room_id: room.clone(),
                pos: Pos::Persisted(9),
                what: RoomChange::Receipt,
            },
        );
        assert!(c.receipts_changed(&room, &tok(&[(8, 0)])));
        assert!(!c.receipts_changed(&room, &tok(&[(9, 0)])));
        let u = uid("@u:x");
        c.apply(
            0,
            &Change::User {
                user_id: u.clone(),
                pos: Pos::Persisted(11),
                what: UserChange::ToDevice,
            },
        );
        assert!(c.to_device_changed(&u, &tok(&[(10, 0)])));
        assert!(c.account_data_changed(&u, &tok(&[(6, 0)])));
        assert!(!c.account_data_changed(&u, &tok(&[(10, 0)])));
    }
}
