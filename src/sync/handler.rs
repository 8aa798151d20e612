//! The `/sync` flow on the user's shard: validate, resolve the filter,
//! take **the cheap path** when nothing changed for the user since the
//! token (answered from the notifier's memory: no database, no cross-shard
//! call), park on the notifier for long polls, then compute the response
//! room by room (concurrently: the database client pipelines).

use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

use futures_util::future::join_all;
use ruma::OwnedRoomId;

use crate::auth::Requester;
use crate::shard_state::ShardState;
use crate::stream::{Notifier, ShardPos, StreamToken};

use super::cache::{self, SyncCache};
use super::response::{RoomEntry, SyncResponse, SyncRooms};
use super::timeline::{self, MemberChange};
use super::{extensions, filter_store, remote, response, SyncContext, SyncError};

/// Longest long poll we honour; longer timeouts are shortened to it.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(180);

/// A validated `/sync` request (`Send`: it crosses to the user's shard).
#[derive(Debug, Clone, Default)]
pub struct SyncParams {
    pub since: Option<StreamToken>,
    pub timeout: Duration,
    pub full_state: bool,
    /// `filter=`: inline JSON or a stored filter id.
    pub filter: Option<String>,
    pub set_presence: Option<String>,
}

/// What the handler answers (`Send`).
#[derive(Debug)]
pub struct SyncOutcome {
    /// The serialised response body (serialised on the user's shard: the
    /// cheap path renders it from a template without building a `Value`).
    pub body: Vec<u8>,
    /// `cheap` (memory only) or `computed`: for metrics and tests.
    pub path: &'static str,
    /// Timeline window use while computing (`hits,misses`; may include
    /// concurrent syncs of the shard).
    pub window: Option<(u64, u64)>,
}

/// Brings a client's token into this server's range: at most `current`
/// on every shard (a token from the future, e.g. after a database reset,
/// must not hide what comes next forever), exactly `current.len()` shards
/// (a token of another shard count: missing shards read as 0, extra ones
/// are dropped).
pub fn clamp(since: &StreamToken, current: &StreamToken) -> StreamToken {
    StreamToken::from_positions(
        (0..current.len())
            .map(|s| {
                let (a, b) = (since.get(s), current.get(s));
                ShardPos {
                    persisted: a.persisted.min(b.persisted),
                    ephemeral: a.ephemeral.min(b.ephemeral),
                }
            })
            .collect(),
    )
}

/// Serves one sync; runs on the user's shard.
pub async fn sync(
    state: Rc<ShardState>,
    who: Requester,
    p: SyncParams,
) -> Result<SyncOutcome, SyncError> {
    let filter = filter_store::resolve(&state.db, &who.user_id, p.filter.as_deref()).await?;
    let notifier = state.notifier.clone();
    let cache = cache::local(&notifier);
    let user = who.user_id.clone();
    let mut ctx = SyncContext {
        user: who.user_id,
        device_id: who.device_id,
        since: None,
        current: notifier.current(),
        full_state: p.full_state,
        filter,
        db: state.db.clone(),
    };
    ctx.since = p.since.as_ref().map(|s| clamp(s, &ctx.current));
    // Spec `/sync` `set_presence`: absent means `online`; syncing is what
    // keeps a user online (the presence timers take them offline).
    extensions::set_presence(&ctx, p.set_presence.as_deref().unwrap_or("online")).await?;
    extensions::acknowledge(&ctx).await?;
    if let (Some(since), false) = (ctx.since.as_ref(), p.full_state) {
        if !notifier.user_changed_since(&user, since) {
            if !p.timeout.is_zero() {
                notifier
                    .wait_for_user(&user, since, p.timeout.min(MAX_TIMEOUT))
                    .await;
            }
            // Checked and read with no await in between: nothing for the
            // user up to the token returned.
            if !notifier.user_changed_since(&user, since) {
                cache.count_cheap();
                return Ok(SyncOutcome {
                    body: response::empty_bytes(&notifier.current().max(since)),
                    path: "cheap",
                    window: None,
                });
            }
        }
    }
    // Boxed: the computing future is large, and inline it made every
    // sync's future as large, copied whole into the router's box even
    // when the cheap path answered (4 % of an idle sync's profile).
    Box::pin(computed(&state, ctx, &cache, &notifier)).await
}

/// The response computed room by room (anything changed for the user, or
/// no token, or `full_state`).
async fn computed(
    state: &ShardState,
    mut ctx: SyncContext,
    cache: &SyncCache,
    notifier: &Notifier,
) -> Result<SyncOutcome, SyncError> {
    // An initial or full-state sync builds every joined room's state and
    // timeline in memory: at most a few per shard at once, one turn per
    // user (`admission`). Incremental syncs are small and never wait here.
    let _permit = if ctx.since.is_none() || ctx.full_state {
        Some(
            state
                .admission
                .enter(crate::admission::Work::InitialSync, ctx.user.as_str())
                .await?,
        )
    } else {
        None
    };
    ctx.current = notifier.current();
    let before = cache.stats();
    let body = compute(&ctx, cache, notifier).await?;
    let after = cache.stats();
    let mut bytes = Vec::with_capacity(4096);
    serde_json::to_writer(&mut bytes, &body)
        .map_err(|e| SyncError::Internal(format!("failed to serialise sync: {e}")))?;
    drop(body);
    let body = bytes;
    Ok(SyncOutcome {
        body,
        path: "computed",
        window: Some((
            after.window_hits - before.window_hits,
            after.window_misses - before.window_misses,
        )),
    })
}

enum Section {
    Join,
    Invite,
    Leave,
    Knock,
}

async fn compute(
    ctx: &SyncContext,
    cache: &SyncCache,
    notifier: &Notifier,
) -> Result<SyncResponse, SyncError> {
    let rooms = notifier.rooms_of(&ctx.user);
    let forgotten = forgotten(ctx, notifier, &rooms).await?;
    // Rooms where the user's own membership event is current here: a
    // kept remote invite of such a room is not listed on its own.
    let active: HashSet<OwnedRoomId> = rooms
        .iter()
        .filter(|(_, m)| matches!(m.as_str(), "join" | "invite" | "knock"))
        .map(|(r, _)| r.clone())
        .collect();
    let (partial, resynced) = partial_rooms(ctx, &rooms).await?;
    let work = rooms
        .into_iter()
        .filter(|(r, _)| ctx.filter.allows_room(r.as_str()))
        .filter(|(r, _)| !forgotten.contains(r.as_str()))
        .filter(|(r, m)| !(m == "join" && partial.contains(r.as_str())))
        .map(|(room, m)| {
            let forced = m == "join" && resynced.contains(room.as_str());
            one_room(ctx, cache, notifier, room, m, forced)
        });
    let mut out = SyncRooms::default();
    for r in join_all(work).await {
        let Some((section, room, v)) = r? else {
            continue;
        };
        let map = match section {
            Section::Join => &mut out.join,
            Section::Invite => &mut out.invite,
            Section::Leave => &mut out.leave,
            Section::Knock => &mut out.knock,
        };
        map.insert(room.to_string(), v);
    }
    for (room, entry) in remote::entries(ctx).await? {
        if active.contains(&room) || forgotten.contains(room.as_str()) {
            continue;
        }
        let key = room.to_string();
        match entry {
            remote::Entry::Invite(v) => {
                out.leave.remove(&key);
                out.invite.insert(key, v);
            }
            remote::Entry::Leave(v) => {
                out.leave.insert(key, v);
            }
        }
    }
    response::assemble(ctx, out).await
}

/// Partial-state rooms as Synapse's sync handles them (synapse
/// `handlers/sync.py`): a sync without lazy-loaded members leaves them out
/// (their member list is incomplete), and sends one whose resync finished
/// after `since` as newly joined (its `forced_newly_joined_room_ids`), so
/// the client gets its full state. A lazy-loading sync shows them at once.
/// Returns (rooms to leave out, rooms to send as newly joined).
async fn partial_rooms(
    ctx: &SyncContext,
    rooms: &[(OwnedRoomId, String)],
) -> Result<(HashSet<String>, HashSet<String>), SyncError> {
    let none = || Ok((HashSet::new(), HashSet::new()));
    if ctx.filter.lazy_load_members() || !crate::rooms::partial::any_since_start() {
        return none();
    }
    let joined: Vec<String> = rooms
        .iter()
        .filter(|(_, m)| m == "join")
        .map(|(r, _)| r.to_string())
        .collect();
    if joined.is_empty() {
        return none();
    }
    let internal = |e: crate::db::DbError| SyncError::Internal(format!("partial rooms: {e}"));
    let rows = ctx
        .db
        .query(
            "SELECT room_id, NULL::int, NULL::bigint FROM partial_state_rooms \
             WHERE room_id = ANY($1) UNION ALL \
             SELECT room_id, stream_shard, stream_ordering FROM partial_state_resynced \
             WHERE room_id = ANY($1)",
            &[&joined],
        )
        .await
        .map_err(internal)?;
    let (mut partial, mut resynced) = (HashSet::new(), HashSet::new());
    for r in rows {
        let room: String = r.get(0).map_err(internal)?;
        match (
            r.get::<Option<i32>>(1).map_err(internal)?,
            r.get::<Option<i64>>(2).map_err(internal)?,
        ) {
            (Some(shard), Some(pos)) => {
                let shard = usize::try_from(shard).unwrap_or(usize::MAX);
                let before = ctx
                    .since
                    .as_ref()
                    .is_some_and(|s| shard < s.len() && s.persisted(shard) < pos);
                if before {
                    resynced.insert(room);
                }
            }
            _ => {
                partial.insert(room);
            }
        }
    }
    Ok((partial, resynced))
}

/// The rooms the user forgot (`POST /forget`), left out of every section
/// as Synapse does. Only a room the user is out of can be forgotten (a new
/// membership un-forgets it), so the database is asked only when such a
/// room could appear in this response.
async fn forgotten(
    ctx: &SyncContext,
    notifier: &Notifier,
    rooms: &[(OwnedRoomId, String)],
) -> Result<HashSet<String>, SyncError> {
    let candidate = rooms.iter().any(|(r, m)| {
        matches!(m.as_str(), "leave" | "ban")
            && match &ctx.since {
                None => ctx.filter.room.include_leave,
                Some(since) => notifier.room_changed_since(r, since),
            }
    });
    if !candidate {
        return Ok(HashSet::new());
    }
    Ok(crate::rooms::forgotten_rooms(&ctx.db, ctx.user.as_str()).await?)
}

async fn one_room(
    ctx: &SyncContext,
    cache: &SyncCache,
    notifier: &Notifier,
    room: OwnedRoomId,
    membership: String,
    resynced: bool,
) -> Result<Option<(Section, OwnedRoomId, RoomEntry)>, SyncError> {
    let user = ctx.user.as_str();
    let Some(since) = &ctx.since else {
        // Initial sync.
        let out = match membership.as_str() {
            "join" => response::joined(ctx, cache, &room, false, true)
                .await?
                .map(|v| (Section::Join, v)),
            "invite" | "knock" | "leave" | "ban" => {
                let all =
                    timeline::member_changes(&ctx.db, &room, user, None, &ctx.current).await?;
                match (membership.as_str(), all.last()) {
                    ("invite", Some(c)) => Some((
                        Section::Invite,
                        RoomEntry::Tree(response::invited(ctx, cache, c).await?),
                    )),
                    ("knock", Some(c)) => Some((
                        Section::Knock,
                        RoomEntry::Tree(response::knocked(ctx, cache, c).await?),
                    )),
                    (_, Some(c)) if ctx.filter.room.include_leave => Some((
                        Section::Leave,
                        response::left(ctx, cache, &room, c, true).await?,
                    )),
                    _ => None,
                }
            }
            _ => None,
        };
        return Ok(out.map(|(s, v)| (s, room, v)));
    };
    let room_changed = notifier.room_changed_since(&room, since);
    // The user's own data in the room (account data, tags, read marker,
    // private receipt) changed although the room did not.
    let own_changed = crate::shard_state::current_shard().is_some_and(|state| {
        crate::ephemeral::sync::user_room_changed(&state, &ctx.user, &room, since)
    });
    if !(room_changed || own_changed || resynced || ctx.full_state && membership == "join") {
        return Ok(None);
    }
    let changes: Vec<MemberChange> =
        if room_changed && cache.membership_changed_since(&ctx.user, &room, since) {
            timeline::member_changes(&ctx.db, &room, user, Some(since), &ctx.current).await?
        } else {
            Vec::new()
        };
    let out = match (membership.as_str(), changes.last()) {
        ("join", _) => {
            let newly = resynced || newly_joined(ctx, &room, since, &changes).await?;
            response::joined(ctx, cache, &room, newly, !changes.is_empty())
                .await?
                .map(|v| (Section::Join, v))
        }
        ("invite", Some(c)) if c.membership == "invite" => Some((
            Section::Invite,
            RoomEntry::Tree(response::invited(ctx, cache, c).await?),
        )),
        ("knock", Some(c)) if c.membership == "knock" => Some((
            Section::Knock,
            RoomEntry::Tree(response::knocked(ctx, cache, c).await?),
        )),
        ("leave" | "ban", Some(c)) if c.membership == "leave" || c.membership == "ban" => {
            // Joined within the range: the client never had its state.
            let full = ctx.full_state || changes.iter().any(|c| c.membership == "join");
            Some((
                Section::Leave,
                response::left(ctx, cache, &room, c, full).await?,
            ))
        }
        _ => None,
    };
    Ok(out.map(|(s, v)| (s, room, v)))
}

/// Whether the user (joined now) joined after `since`: a join in the range
/// not preceded by a join (a profile change is a join after a join).
async fn newly_joined(
    ctx: &SyncContext,
    room: &OwnedRoomId,
    since: &StreamToken,
    changes: &[MemberChange],
) -> Result<bool, SyncError> {
    let Some(i) = changes.iter().rposition(|c| c.membership == "join") else {
        return Ok(false);
    };
    // The first join of the run of joins ending at `i`.
    let mut j = i;
    while j > 0 && changes[j - 1].membership == "join" {
        j -= 1;
    }
    if j > 0 {
        return Ok(true);
    }
    let before = timeline::member_changes(&ctx.db, room, ctx.user.as_str(), None, since).await?;
    Ok(before.last().is_none_or(|c| c.membership != "join"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(v: &[(i64, i64)]) -> StreamToken {
        StreamToken::from_positions(
            v.iter()
                .map(|&(p, e)| ShardPos {
                    persisted: p,
                    ephemeral: e,
                })
                .collect(),
        )
    }

    #[test]
    fn clamp_limits_to_current_and_shard_count() {
        let cur = tok(&[(10, 5), (20, 7)]);
        assert_eq!(
            clamp(&tok(&[(3, 1), (25, 9)]), &cur),
            tok(&[(3, 1), (20, 7)])
        );
        assert_eq!(clamp(&tok(&[(3, 1)]), &cur), tok(&[(3, 1), (0, 0)]));
        assert_eq!(
            clamp(&tok(&[(3, 1), (4, 1), (99, 99)]), &cur),
            tok(&[(3, 1), (4, 1)])
        );
    }
}
