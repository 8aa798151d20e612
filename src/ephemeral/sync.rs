//! What this module contributes to a `/sync` response, for the sync
//! handler (which runs on the syncing user's shard). Every function takes
//! the `since` token (`None`: initial sync) and the `current` token (the
//! response's `next_batch`) and returns the JSON pieces to place:
//!
//! | function            | goes to                                        |
//! |---------------------|------------------------------------------------|
//! | [`room_ephemeral`]  | `rooms.join.{room}.ephemeral.events`           |
//! | [`account_data`]    | `account_data.events`, `rooms.join.{room}.account_data.events` |
//! | [`presence`]        | `presence.events`                              |
//! | [`to_device`]       | `to_device.events`                             |
//! | [`set_presence`]    | the `set_presence` query parameter             |
//!
//! Memory first: typing and presence come from the shard's `EphemeralCache`;
//! receipts, account data and to-device are read from PostgreSQL only for
//! rooms/users whose cached "last changed" position is after `since`.
//!
//! The sync builder asks per room ([`room_ephemeral_of`],
//! [`room_account_data_of`]); one query answers every room of a response
//! and is remembered for the other rooms of the same `(user, since,
//! current)` in a small per-shard memo (data at or before `current` does
//! not change, so a memo entry never goes stale in a way that matters).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::num::NonZeroUsize;
use std::rc::Rc;

use lru::LruCache;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{json, Value};

use crate::mesh::shard_for_user;
use crate::primitives::SharedFuture;
use crate::shard_state::ShardState;
use crate::stream::StreamToken;

use super::account_data::{self, AccountDataSync};
use super::{presence as presence_mod, receipts, to_device as td, EphError};
use crate::primitives::unix_ms as now_ms;

/// `m.typing` events of `rooms` whose typing set changed after `since` (on
/// an initial sync: rooms where someone is typing).
pub fn typing(
    state: &ShardState,
    rooms: &[OwnedRoomId],
    since: Option<&StreamToken>,
) -> Vec<(OwnedRoomId, Value)> {
    let cache = &state.notifier.ephemeral;
    rooms
        .iter()
        .filter_map(|room| {
            let t = cache.typing(room)?;
            let show = match since {
                None => !t.user_ids.is_empty(),
                Some(since) => t.pos > since.ephemeral(t.shard),
            };
            show.then(|| {
                (
                    room.clone(),
                    json!({"type": "m.typing", "content": {"user_ids": *t.user_ids}}),
                )
            })
        })
        .collect()
}

/// Whether the sync builder must visit `room` for `user` although the
/// room itself did not change after `since`: the user's own room account
/// data, tags, read marker or private receipt there did.
pub fn user_room_changed(
    state: &ShardState,
    user: &UserId,
    room: &RoomId,
    since: &StreamToken,
) -> bool {
    state
        .notifier
        .ephemeral
        .user_room_changed(user, room, since)
}

/// `ephemeral.events` per joined room: `m.typing` and `m.receipt` (the
/// receipts stored after `since`, the user's own private ones included).
/// Rooms with nothing are absent.
pub async fn room_ephemeral(
    state: &ShardState,
    user: &UserId,
    rooms: &[OwnedRoomId],
    since: Option<&StreamToken>,
    current: &StreamToken,
) -> Result<BTreeMap<OwnedRoomId, Vec<Value>>, EphError> {
    let mut out: BTreeMap<OwnedRoomId, Vec<Value>> = BTreeMap::new();
    for (room, ev) in typing(state, rooms, since) {
        out.entry(room).or_default().push(ev);
    }
    for (room, evs) in room_receipts_only(state, user, rooms, since, current).await? {
        out.entry(room).or_default().extend(evs);
    }
    Ok(out)
}

/// Account data changed after `since` (all of it on an initial sync).
pub async fn account_data(
    state: &ShardState,
    user: &UserId,
    since: Option<&StreamToken>,
    current: &StreamToken,
) -> Result<AccountDataSync, EphError> {
    if let Some(since) = since {
        if !state.notifier.ephemeral.account_data_changed(user, since) {
            return Ok(AccountDataSync::default());
        }
    }
    account_data::changed_between(&state.db, user, since, current, state.mesh.n_shards()).await
}

/// `presence.events`: the user's own presence and that of users sharing a
/// joined room with them, announced after `since` (all known on an
/// initial sync).
pub fn presence(state: &ShardState, user: &UserId, since: Option<&StreamToken>) -> Vec<Value> {
    let cache = &state.notifier.ephemeral;
    let changed = cache.presence_since(since);
    if changed.is_empty() {
        return Vec::new();
    }
    let mine: HashSet<OwnedRoomId> = state
        .notifier
        .rooms_of(user)
        .into_iter()
        .filter(|(_, m)| m == "join")
        .map(|(r, _)| r)
        .collect();
    let now = now_ms();
    let mut out: Vec<Value> = changed
        .into_iter()
        .filter(|(other, p)| other == user || p.rooms.iter().any(|r| mine.contains(r)))
        .map(|(other, p)| {
            json!({"type": "m.presence", "sender": other, "content": presence_mod::content(&p, now)})
        })
        .collect();
    out.sort_by(|a, b| a["sender"].as_str().cmp(&b["sender"].as_str()));
    out
}

/// `to_device.events` for the syncing device (see `to_device` for the
/// exactly-once semantics).
pub async fn to_device(
    state: &ShardState,
    user: &UserId,
    device: &str,
    since: Option<&StreamToken>,
    current: &StreamToken,
) -> Result<Vec<Value>, EphError> {
    td::for_sync(
        &state.mesh,
        user.to_owned(),
        device.to_owned(),
        since.cloned(),
        current.clone(),
    )
    .await
}

/// The to-device acknowledgement of a sync with `since`: to be called on
/// every incremental sync, the cheap path included (memory only unless
/// messages delivered earlier are now acknowledged).
pub async fn acknowledge_to_device(
    state: &ShardState,
    user: &UserId,
    device: &str,
    since: &StreamToken,
) -> Result<(), EphError> {
    // On the user's shard (where `/sync` runs) with nothing delivered
    // unacknowledged: nothing to do, no allocation, no task.
    if shard_for_user(user, state.mesh.n_shards()) == state.info.id
        && !td::may_have_outstanding(state, user)
    {
        return Ok(());
    }
    td::acknowledge(
        &state.mesh,
        user.to_owned(),
        device.to_owned(),
        since.clone(),
    )
    .await
}

/// Applies `/sync`'s `set_presence` (absent = online).
pub async fn set_presence(
    state: &ShardState,
    user: &UserId,
    set_presence: Option<&str>,
) -> Result<(), EphError> {
    let p = set_presence.map(str::to_owned);
    presence_mod::set_from_sync(&state.mesh, user.to_owned(), p.as_deref()).await
}

type MemoKey = (OwnedUserId, Option<StreamToken>, StreamToken);
type Shared<T> = SharedFuture<Result<Rc<T>, Rc<EphError>>>;

/// Receipts (per room) and account data of one sync, computed once even
/// when the builder asks for many rooms concurrently.
#[derive(Default)]
struct Memo {
    receipts: Option<Shared<BTreeMap<OwnedRoomId, Vec<Value>>>>,
    account_data: Option<Shared<AccountDataSync>>,
}

/// Syncs in flight on one shard at once, roughly: enough to keep each
/// response's entry until all its rooms are built.
const MEMO_SIZE: usize = 256;

thread_local! {
    static MEMO: RefCell<LruCache<MemoKey, Memo>> =
        RefCell::new(LruCache::new(NonZeroUsize::new(MEMO_SIZE).unwrap_or(NonZeroUsize::MIN)));
}

fn memo_key(user: &UserId, since: Option<&StreamToken>, current: &StreamToken) -> MemoKey {
    (user.to_owned(), since.cloned(), current.clone())
}

/// The memo entry's computation picked by `field`, started with `start` if
/// there is none yet.
async fn memoized<T: 'static>(
    key: MemoKey,
    field: fn(&mut Memo) -> &mut Option<Shared<T>>,
    start: impl FnOnce() -> Shared<T>,
) -> Result<Rc<T>, EphError> {
    let shared = MEMO.with(|m| {
        let mut m = m.borrow_mut();
        let entry = m.get_or_insert_mut(key.clone(), Memo::default);
        field(entry).get_or_insert_with(start).clone()
    });
    let r = shared.observe().await;
    if r.is_err() {
        // Not remembered: a retry computes afresh.
        MEMO.with(|m| m.borrow_mut().pop(&key));
    }
    r.map_err(|e| EphError::Internal(e.to_string()))
}

fn joined_rooms(state: &ShardState, user: &UserId) -> Vec<OwnedRoomId> {
    state
        .notifier
        .rooms_of(user)
        .into_iter()
        .filter(|(_, m)| m == "join")
        .map(|(r, _)| r)
        .collect()
}

/// `rooms.join.{room}.ephemeral.events` of one room: its `m.typing` if it
/// changed, and its receipts (one query for all the user's joined rooms,
/// shared by the rest of this sync).
pub async fn room_ephemeral_of(
    state: &Rc<ShardState>,
    user: &UserId,
    room: &RoomId,
    since: Option<&StreamToken>,
    current: &StreamToken,
) -> Result<Vec<Value>, EphError> {
    let typing_of = || -> Vec<Value> {
        typing(state, &[room.to_owned()], since)
            .into_iter()
            .map(|(_, ev)| ev)
            .collect()
    };
    // No receipt here since `since` (the shared query would skip the room
    // too): no memo entry, no task.
    if let Some(since) = since {
        if !state.notifier.ephemeral.receipts_changed(room, since) {
            return Ok(typing_of());
        }
    }
    let all = memoized(
        memo_key(user, since, current),
        |m| &mut m.receipts,
        || {
            let (state, user) = (state.clone(), user.to_owned());
            let (since, current) = (since.cloned(), current.clone());
            SharedFuture::spawn(async move {
                let rooms = joined_rooms(&state, &user);
                room_receipts_only(&state, &user, &rooms, since.as_ref(), &current)
                    .await
                    .map(Rc::new)
                    .map_err(Rc::new)
            })
        },
    )
    .await?;
    let room = room.to_owned();
    let mut out = typing_of();
    match all.get(&room) {
        Some(evs) => out.extend(evs.iter().cloned()),
        None if !joined_rooms(state, user).contains(&room) => {}
        // Joined after the shared query was made: ask for this room alone.
        None => {
            let one = room_receipts_only(state, user, std::slice::from_ref(&room), since, current)
                .await?;
            out.extend(one.into_values().flatten());
        }
    }
    Ok(out)
}

async fn room_receipts_only(
    state: &ShardState,
    user: &UserId,
    rooms: &[OwnedRoomId],
    since: Option<&StreamToken>,
    current: &StreamToken,
) -> Result<BTreeMap<OwnedRoomId, Vec<Value>>, EphError> {
    let cache = &state.notifier.ephemeral;
    let changed: Vec<OwnedRoomId> = match since {
        None => rooms.to_vec(),
        Some(since) => rooms
            .iter()
            .filter(|r| cache.receipts_changed(r, since))
            .cloned()
            .collect(),
    };
    let n = state.mesh.n_shards();
    let mut out: BTreeMap<OwnedRoomId, Vec<Value>> = BTreeMap::new();
    for (room, ev) in
        receipts::receipts_between(&state.db, user.as_str(), &changed, since, current, n).await?
    {
        out.entry(room).or_default().push(ev);
    }
    Ok(out)
}

async fn memo_account_data(
    state: &Rc<ShardState>,
    user: &UserId,
    since: Option<&StreamToken>,
    current: &StreamToken,
) -> Result<Rc<AccountDataSync>, EphError> {
    // Nothing changed (nearly every woken sync): no memo entry, no task.
    if let Some(since) = since {
        if !state.notifier.ephemeral.account_data_changed(user, since) {
            return Ok(Rc::new(AccountDataSync::default()));
        }
    }
    memoized(
        memo_key(user, since, current),
        |m| &mut m.account_data,
        || {
            let (state, user) = (state.clone(), user.to_owned());
            let (since, current) = (since.cloned(), current.clone());
            SharedFuture::spawn(async move {
                account_data(&state, &user, since.as_ref(), &current)
                    .await
                    .map(Rc::new)
                    .map_err(Rc::new)
            })
        },
    )
    .await
}

/// `rooms.*.{room}.account_data.events` of one room (one query per sync).
pub async fn room_account_data_of(
    state: &Rc<ShardState>,
    user: &UserId,
    room: &RoomId,
    since: Option<&StreamToken>,
    current: &StreamToken,
) -> Result<Vec<Value>, EphError> {
    let a = memo_account_data(state, user, since, current).await?;
    Ok(a.rooms
        .iter()
        .find(|(r, _)| r == room)
        .map(|(_, evs)| evs.clone())
        .unwrap_or_default())
}

/// Top-level `account_data.events` (one query per sync, shared with the
/// rooms' account data).
pub async fn global_account_data(
    state: &Rc<ShardState>,
    user: &UserId,
    since: Option<&StreamToken>,
    current: &StreamToken,
) -> Result<Vec<Value>, EphError> {
    Ok(memo_account_data(state, user, since, current)
        .await?
        .global
        .clone())
}
