//! The seam between `/sync` and the ephemeral / per-user streams (typing,
//! receipts, read markers, account data, tags, presence, to-device), which
//! live in `crate::ephemeral` (see `ephemeral::sync`). Each function returns
//! what goes in its section of the response, filtered by the relevant part
//! of `ctx.filter`.
//!
//! Contract: only what changed after `ctx.since` (everything current when
//! `ctx.since` is `None`) and at or before `ctx.current`; every change is
//! announced through the stream writer, so the cheap path answers "nothing
//! new" without calling these at all.

use std::rc::Rc;

use ruma::RoomId;
use serde_json::Value;

use crate::ephemeral::{sync as eph, EphError};
use crate::shard_state::{current_shard, ShardState};

use super::{SyncContext, SyncError};

fn shard() -> Result<Rc<ShardState>, SyncError> {
    current_shard().ok_or_else(|| SyncError::Internal("sync outside a shard".into()))
}

fn err(e: EphError) -> SyncError {
    SyncError::Ephemeral(e)
}

fn limit(evs: Vec<Value>, limit: Option<u64>) -> Vec<Value> {
    match limit.and_then(|l| usize::try_from(l).ok()) {
        Some(l) => evs.into_iter().take(l).collect(),
        None => evs,
    }
}

/// `rooms.join.{room}.ephemeral.events`: `m.typing` (when the room's typing
/// set changed since `ctx.since`) and `m.receipt` (receipts since
/// `ctx.since`, `m.read.private` only the user's own). Filtered by
/// `ctx.filter.room.ephemeral`.
pub async fn room_ephemeral(ctx: &SyncContext, room_id: &RoomId) -> Result<Vec<Value>, SyncError> {
    let state = shard()?;
    let evs = eph::room_ephemeral_of(&state, &ctx.user, room_id, ctx.since.as_ref(), &ctx.current)
        .await
        .map_err(err)?;
    let f = &ctx.filter.room.ephemeral;
    let evs = evs
        .into_iter()
        .filter(|ev| f.allows_event(room_id.as_str(), ev))
        .collect();
    Ok(limit(evs, f.base.limit))
}

/// `rooms.{join,leave}.{room}.account_data.events` (`m.tag`, `m.fully_read`
/// included). Filtered by `ctx.filter.room.account_data`.
pub async fn room_account_data(
    ctx: &SyncContext,
    room_id: &RoomId,
) -> Result<Vec<Value>, SyncError> {
    let state = shard()?;
    let evs =
        eph::room_account_data_of(&state, &ctx.user, room_id, ctx.since.as_ref(), &ctx.current)
            .await
            .map_err(err)?;
    let f = &ctx.filter.room.account_data;
    let evs = evs
        .into_iter()
        .filter(|ev| f.allows_event(room_id.as_str(), ev))
        .collect();
    Ok(limit(evs, f.base.limit))
}

/// Top-level `account_data.events`. Filtered by `ctx.filter.account_data`.
pub async fn account_data(ctx: &SyncContext) -> Result<Vec<Value>, SyncError> {
    let state = shard()?;
    let evs = eph::global_account_data(&state, &ctx.user, ctx.since.as_ref(), &ctx.current)
        .await
        .map_err(err)?;
    let f = &ctx.filter.account_data;
    let evs = evs.into_iter().filter(|ev| f.allows_event(ev)).collect();
    Ok(limit(evs, f.limit))
}

/// Top-level `to_device.events` for `ctx.device_id`: delivered until a
/// sync with `since` past the response carrying them acknowledges them.
pub async fn to_device(ctx: &SyncContext) -> Result<Vec<Value>, SyncError> {
    let state = shard()?;
    eph::to_device(
        &state,
        &ctx.user,
        &ctx.device_id,
        ctx.since.as_ref(),
        &ctx.current,
    )
    .await
    .map_err(err)
}

/// Top-level `presence.events`. Filtered by `ctx.filter.presence`.
pub async fn presence(ctx: &SyncContext) -> Result<Vec<Value>, SyncError> {
    let state = shard()?;
    let evs = eph::presence(&state, &ctx.user, ctx.since.as_ref());
    let f = &ctx.filter.presence;
    let evs = evs.into_iter().filter(|ev| f.allows_event(ev)).collect();
    Ok(limit(evs, f.limit))
}

/// `set_presence` of the sync request (validated; default `online`).
pub async fn set_presence(ctx: &SyncContext, presence: &str) -> Result<(), SyncError> {
    let state = shard()?;
    eph::set_presence(&state, &ctx.user, Some(presence))
        .await
        .map_err(err)
}

/// The to-device acknowledgement of an incremental sync: deletes what
/// earlier responses delivered at or before `ctx.since`. Called before the
/// cheap path too (memory only unless something is acknowledged), so a
/// message never comes back once the client synced past it.
pub async fn acknowledge(ctx: &SyncContext) -> Result<(), SyncError> {
    let Some(since) = &ctx.since else {
        return Ok(());
    };
    let state = shard()?;
    eph::acknowledge_to_device(&state, &ctx.user, &ctx.device_id, since)
        .await
        .map_err(err)
}

/// `device_one_time_keys_count` and `device_unused_fallback_key_types` of
/// the requesting device (every upload and claim pokes the user, so a
/// sync after a change never takes the cheap path, nor `key_counts`'
/// memory).
pub async fn key_counts(
    ctx: &SyncContext,
) -> Result<(crate::keys::KeyCounts, Vec<String>), SyncError> {
    let state = shard()?;
    super::key_counts::get(&ctx.db, &state.notifier, &ctx.user, &ctx.device_id)
        .await
        .map_err(|e| SyncError::Internal(e.to_string()))
}

/// `device_lists` (`changed`, `left`): users sharing a joined room with
/// the requester whose device or cross-signing keys changed since
/// `ctx.since`, or who newly share one; users who share none any more
/// (nothing on an initial sync: the client queries everyone then). A key
/// upload pokes every such user and a membership change wakes the room, so
/// this never hides behind the cheap path.
pub async fn device_lists(ctx: &SyncContext) -> Result<(Vec<String>, Vec<String>), SyncError> {
    let Some(since) = &ctx.since else {
        return Ok((Vec::new(), Vec::new()));
    };
    let n = ctx.current.len();
    let (from, to) = (since.persisted_vec(n), ctx.current.persisted_vec(n));
    let state = shard()?;
    crate::keys::store::device_list_changes(&ctx.db, &state.notifier, ctx.user.as_str(), &from, &to)
        .await
        .map_err(|e| SyncError::Internal(e.to_string()))
}
