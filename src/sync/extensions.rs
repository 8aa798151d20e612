//! The seam between `/sync` and the ephemeral / per-user streams (typing,
//! receipts, read markers, account data, tags, presence, to-device), which
//! live in their own module. The sync response builder calls exactly these
//! functions; each returns what goes in its section of the response, already
//! filtered by the relevant part of `ctx.filter`. They start out empty.
//!
//! Contract for implementers:
//! - Return only what changed after `ctx.since` (everything current when
//!   `ctx.since` is `None`, i.e. an initial sync) and at or before
//!   `ctx.current` — the positions of your streams are in the token
//!   (`persisted` for what you store in PostgreSQL, `ephemeral` for what
//!   lives only in memory).
//! - Announce every change through the stream writer (a `Change::Room` for
//!   room-scoped data, `Change::User` for one user) so the notifier wakes
//!   parked syncs and `user_changed_since` stays truthful: the cheap path
//!   answers "nothing new" without calling these functions at all.
//! - Never panic on stored data; return `SyncError` instead.

use ruma::RoomId;
use serde_json::Value;

use super::{SyncContext, SyncError};

/// `rooms.join.{room}.ephemeral.events` of a joined room: `m.typing` (the
/// room's current typing users, when it changed since `ctx.since`) and
/// `m.receipt` (receipts since `ctx.since`, `m.read.private` only the
/// user's own). Filtered by `ctx.filter.room.ephemeral`.
pub async fn room_ephemeral(ctx: &SyncContext, room_id: &RoomId) -> Result<Vec<Value>, SyncError> {
    let _ = (ctx, room_id);
    Ok(Vec::new())
}

/// `rooms.{join,leave}.{room}.account_data.events`: the user's per-room
/// account data changed since `ctx.since` (including `m.tag` and
/// `m.fully_read`). Filtered by `ctx.filter.room.account_data`.
pub async fn room_account_data(
    ctx: &SyncContext,
    room_id: &RoomId,
) -> Result<Vec<Value>, SyncError> {
    let _ = (ctx, room_id);
    Ok(Vec::new())
}

/// Top-level `account_data.events`: the user's global account data changed
/// since `ctx.since`. Filtered by `ctx.filter.account_data`.
pub async fn account_data(ctx: &SyncContext) -> Result<Vec<Value>, SyncError> {
    let _ = ctx;
    Ok(Vec::new())
}

/// Top-level `to_device.events`: messages for `ctx.device_id` queued after
/// `ctx.since` up to `ctx.current`. Receiving a sync with `since` past a
/// message acknowledges it (delete those at or before `ctx.since`).
pub async fn to_device(ctx: &SyncContext) -> Result<Vec<Value>, SyncError> {
    let _ = ctx;
    Ok(Vec::new())
}

/// Top-level `presence.events`: `m.presence` of users sharing a room with
/// `ctx.user` that changed since `ctx.since`. Filtered by
/// `ctx.filter.presence`.
pub async fn presence(ctx: &SyncContext) -> Result<Vec<Value>, SyncError> {
    let _ = ctx;
    Ok(Vec::new())
}

/// `set_presence` of the sync request (`online`, `offline`,
/// `unavailable`; already validated): record it for `ctx.user` before the
/// response is computed. Default when absent: `online`.
pub async fn set_presence(ctx: &SyncContext, presence: &str) -> Result<(), SyncError> {
    let _ = (ctx, presence);
    Ok(())
}
