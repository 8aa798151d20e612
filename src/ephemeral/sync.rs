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
//! Memory first: typing and presence come from the shard's `SyncCache`;
//! receipts, account data and to-device are read from PostgreSQL only for
//! rooms/users whose cached "last changed" position is after `since`.

use std::collections::{BTreeMap, HashSet};

use ruma::{OwnedRoomId, UserId};
use serde_json::{json, Value};

use crate::server::ShardState;
use crate::stream::StreamToken;

use super::account_data::{self, AccountDataSync};
use super::{now_ms, presence as presence_mod, receipts, to_device as td, EphError};

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
    for (room, ev) in
        receipts::receipts_between(&state.db, user.as_str(), &changed, since, current, n).await?
    {
        out.entry(room).or_default().push(ev);
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

/// Applies `/sync`'s `set_presence` (absent = online).
pub async fn set_presence(
    state: &ShardState,
    user: &UserId,
    set_presence: Option<&str>,
) -> Result<(), EphError> {
    let p = set_presence.map(str::to_owned);
    presence_mod::set_from_sync(&state.mesh, user.to_owned(), p.as_deref()).await
}
