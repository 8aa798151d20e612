//! Invites to rooms hosted elsewhere in `/sync` (client-server "Syncing",
//! `rooms.invite` / `rooms.leave`): rooms no user of ours is in have no
//! events here, only the invite we keep (`remote_invites`, written by
//! `federation::invites`). Each row carries the stream position of its last
//! change, so an incremental sync lists it exactly once; a rejected or
//! retracted invite is listed in `rooms.leave` with the leave event as its
//! timeline (Synapse's out-of-band membership).

use std::collections::BTreeMap;

use ruma::OwnedRoomId;
use serde_json::{json, Value};

use super::response::RoomEntry;
use super::timeline::client_event;
use super::{SyncContext, SyncError};

/// One kept invite's sync entry.
pub enum Entry {
    Invite(RoomEntry),
    Leave(RoomEntry),
}

/// The entries changed in `(since, current]` (everything up to `current`
/// for an initial sync: pending invites, and rejections only with
/// `include_leave`), by room.
pub async fn entries(ctx: &SyncContext) -> Result<BTreeMap<OwnedRoomId, Entry>, SyncError> {
    // Every write of a row pokes its user at the row's position, so with
    // no poke (and no unexplained position) since `since` there is none.
    if let (Some(since), Some(state)) = (&ctx.since, crate::shard_state::current_shard()) {
        if !state.notifier.maybe_poked_since(&ctx.user, since) {
            return Ok(BTreeMap::new());
        }
    }
    let rows = ctx
        .db
        .query(
            "SELECT room_id, event_id, event, invite_room_state, membership, \
             leave_event_id, leave_event, stream_shard, stream_ordering \
             FROM remote_invites WHERE user_id = $1",
            &[&ctx.user.as_str()],
        )
        .await?;
    let mut out = BTreeMap::new();
    for r in &rows {
        let shard = usize::try_from(r.get::<i32>(7)?).unwrap_or(usize::MAX);
        let pos: i64 = r.get(8)?;
        if shard >= ctx.current.len() || pos > ctx.current.get(shard).persisted {
            continue;
        }
        if ctx
            .since
            .as_ref()
            .is_some_and(|s| pos <= s.get(shard).persisted)
        {
            continue;
        }
        let Ok(room) = OwnedRoomId::try_from(r.get::<String>(0)?) else {
            continue;
        };
        if !ctx.filter.allows_room(room.as_str()) {
            continue;
        }
        let membership: String = r.get(4)?;
        let entry = if membership == "invite" {
            let event_id: String = r.get(1)?;
            let event: Value = r.get(2)?;
            let given: Value = r.get(3)?;
            Entry::Invite(RoomEntry::Tree(invite_entry(
                room.as_str(),
                &event_id,
                &event,
                &given,
            )))
        } else {
            if ctx.is_initial() && !ctx.filter.room.include_leave {
                continue;
            }
            let (Some(id), Some(leave)) = (r.get::<Option<String>>(5)?, r.get::<Option<Value>>(6)?)
            else {
                continue;
            };
            Entry::Leave(RoomEntry::Tree(leave_entry(
                ctx,
                room.as_str(),
                &id,
                &leave,
            )))
        };
        out.insert(room, entry);
    }
    Ok(out)
}

/// `invite_state`: the stripped state the inviting server gave (spec
/// "Stripped state": type, state_key, sender, content of each), then the
/// invite itself in client format (as for local invites).
fn invite_entry(room: &str, event_id: &str, event: &Value, given: &Value) -> Value {
    let mut events: Vec<Value> = given
        .as_array()
        .map(|a| a.iter().filter_map(stripped).collect())
        .unwrap_or_default();
    events.push(client_event(event_id, room, event));
    json!({ "invite_state": { "events": events } })
}

/// A stripped state event of another server's list; malformed ones are
/// left out (the list comes from the inviting server unchecked).
fn stripped(e: &Value) -> Option<Value> {
    let kind = e.get("type")?.as_str()?;
    let key = e.get("state_key")?.as_str()?;
    let sender = e.get("sender")?.as_str()?;
    let content = e.get("content").filter(|c| c.is_object())?;
    Some(json!({ "type": kind, "state_key": key, "sender": sender, "content": content }))
}

fn leave_entry(ctx: &SyncContext, room: &str, id: &str, leave: &Value) -> Value {
    json!({
        "account_data": { "events": [] },
        "state": { "events": [] },
        "timeline": {
            "events": [client_event(id, room, leave)],
            "limited": false,
            "prev_batch": ctx.current.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_state_is_stripped_and_ends_with_the_invite() {
        let given = json!([
            {"type": "m.room.name", "state_key": "", "sender": "@a:x", "content": {"name": "N"},
             "signatures": {}, "origin_server_ts": 1},
            {"type": "m.room.join_rules", "content": {}},
            "junk",
        ]);
        let invite = json!({"type": "m.room.member", "state_key": "@b:y", "sender": "@a:x",
            "content": {"membership": "invite"}, "origin_server_ts": 5, "signatures": {}});
        let v = invite_entry("!r:x", "$i", &invite, &given);
        let evs = v["invite_state"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(evs.len(), 2);
        assert_eq!(
            evs[0],
            json!({"type": "m.room.name", "state_key": "", "sender": "@a:x", "content": {"name": "N"}})
        );
        assert_eq!(evs[1]["event_id"], "$i");
        assert_eq!(evs[1]["room_id"], "!r:x");
        assert_eq!(evs[1]["content"]["membership"], "invite");
        assert!(evs[1].get("signatures").is_none());
    }
}
