//! The published room directory (client-server API "Published room
//! directory"): a room's visibility, `/publicRooms` with its pagination
//! tokens, and the "may this user edit the room list entry" check shared
//! with alias deletion.
//!
//! Everything here reads `rooms`, `current_state` and `events` straight
//! from PostgreSQL on the calling shard: the directory is global data, and
//! committed state is what it must show, so no mesh hop is needed.

use ruma::events::room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent};
use ruma::events::StateEventType;
use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde_json::{json, Map, Value};

use crate::db::Pool;
use crate::events::RoomVersion;

use super::RoomError;

/// What the permission checks need of a room's current state.
#[derive(Debug, Clone)]
pub struct RoomAccess {
    pub version: RoomVersion,
    /// The user's membership (`None`: never a member).
    pub membership: Option<String>,
    pub history_visibility: Option<String>,
    create_sender: Option<OwnedUserId>,
    create_content: Value,
    power_levels: Option<Value>,
}

/// Loads the state bits for `user`'s checks; `None` if the room is unknown.
pub async fn room_access(
    db: &Pool,
    room_id: &OwnedRoomId,
    user: &str,
) -> Result<Option<RoomAccess>, RoomError> {
    let Some(room) = db
        .query_opt(
            "SELECT room_version FROM rooms WHERE room_id = $1",
            &[&room_id.as_str()],
        )
        .await?
    else {
        return Ok(None);
    };
    let version = RoomVersion::parse(room.get::<&str>(0)?)?;
    let rows = db
        .query(
            "SELECT s.type, e.json FROM current_state s JOIN events e ON e.event_id = s.event_id \
             WHERE s.room_id = $1 AND ((s.state_key = '' AND s.type IN \
             ('m.room.create', 'm.room.power_levels', 'm.room.history_visibility')) \
             OR (s.type = 'm.room.member' AND s.state_key = $2))",
            &[&room_id.as_str(), &user],
        )
        .await?;
    let mut access = RoomAccess {
        version,
        membership: None,
        history_visibility: None,
        create_sender: None,
        create_content: Value::Null,
        power_levels: None,
    };
    for r in rows {
        let ty: String = r.get(0)?;
        let ev: Value = r.get(1)?;
        let content = ev.get("content").cloned().unwrap_or(Value::Null);
        match ty.as_str() {
            "m.room.create" => {
                access.create_sender = ev
                    .get("sender")
                    .and_then(Value::as_str)
                    .and_then(|s| OwnedUserId::try_from(s).ok());
                access.create_content = content;
            }
            "m.room.power_levels" => access.power_levels = Some(content),
            "m.room.history_visibility" => {
                access.history_visibility = content
                    .get("history_visibility")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            }
            _ => {
                access.membership = content
                    .get("membership")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            }
        }
    }
    Ok(Some(access))
}

impl RoomAccess {
    pub fn is_joined(&self) -> bool {
        self.membership.as_deref() == Some("join")
    }

    /// The room's creators: the create event's sender, plus
    /// `additional_creators` in versions that privilege creators (v12).
    fn creators(&self) -> Vec<OwnedUserId> {
        let mut out: Vec<OwnedUserId> = self.create_sender.iter().cloned().collect();
        if self.version.creators_have_infinite_power() {
            if let Some(extra) = self.create_content["additional_creators"].as_array() {
                out.extend(
                    extra
                        .iter()
                        .filter_map(|v| v.as_str())
                        .filter_map(|s| OwnedUserId::try_from(s).ok()),
                );
            }
        }
        out
    }

    /// Whether `user` may send state of `event_type` by the power levels
    /// (spec "Permissions"; in v12 creators have infinite power).
    pub fn can_send_state(&self, user: &UserId, event_type: &str) -> bool {
        let content = match &self.power_levels {
            None => None,
            Some(v) => match serde_json::from_value::<RoomPowerLevelsEventContent>(v.clone()) {
                Ok(c) => Some(c),
                // A content that does not parse grants nothing.
                Err(_) => return false,
            },
        };
        let levels = RoomPowerLevels::new(
            content.into(),
            &self.version.rules().authorization,
            self.creators(),
        );
        levels.user_can_send_state(user, StateEventType::from(event_type))
    }

    /// Synapse's `check_can_change_room_list`: a joined member with the
    /// power to send `m.room.canonical_alias` may edit the room's
    /// directory entry (visibility) and delete its aliases.
    pub fn can_change_room_list(&self, user: &UserId) -> bool {
        self.is_joined() && self.can_send_state(user, "m.room.canonical_alias")
    }
}

/// The servers with a joined member in the room's current state, `ours`
/// first, then by name: the `servers` of an alias lookup, which a joining
/// server tries in order (client-server "GET /directory/room", federation
/// "Querying for information").
pub async fn joined_servers(
    db: &Pool,
    room_id: &OwnedRoomId,
    ours: &str,
) -> Result<Vec<String>, RoomError> {
    let rows = db
        .query(
            "SELECT DISTINCT substring(state_key from position(':' in state_key) + 1) \
             FROM current_state WHERE room_id = $1 AND type = 'm.room.member' \
             AND membership = 'join'",
            &[&room_id.as_str()],
        )
        .await?;
    let mut servers = Vec::with_capacity(rows.len() + 1);
    for r in rows {
        let s: String = r.get(0)?;
        if s != ours {
            servers.push(s);
        }
    }
    servers.sort();
    servers.insert(0, ours.to_owned());
    Ok(servers)
}

/// `GET /directory/list/room/{roomId}`: `Some(is_public)`, `None` if unknown.
pub async fn visibility(db: &Pool, room_id: &OwnedRoomId) -> Result<Option<bool>, RoomError> {
    let row = db
        .query_opt(
            "SELECT is_public FROM rooms WHERE room_id = $1",
            &[&room_id.as_str()],
        )
        .await?;
    row.map(|r| r.get::<bool>(0).map_err(RoomError::from))
        .transpose()
}

/// Publishes or unpublishes a room (the caller checked the permission).
pub async fn set_visibility(
    db: &Pool,
    room_id: &OwnedRoomId,
    public: bool,
) -> Result<(), RoomError> {
    db.execute(
        "UPDATE rooms SET is_public = $2 WHERE room_id = $1",
        &[&room_id.as_str(), &public],
    )
    .await?;
    Ok(())
}

/// A `/publicRooms` pagination token: the position after (forward) or
/// before (backward) the entry `(joined, room_id)` in the listing order.
/// Opaque to clients and stable: the same position always gives the same
/// token (as Synapse's `RoomListNextBatch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListToken {
    pub joined: i64,
    pub room_id: String,
    pub forward: bool,
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if s.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok()))
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

impl ListToken {
    /// `f|b` + joined count + `_` + hex room id: URL-safe as it is.
    pub fn encode(&self) -> String {
        let dir = if self.forward { 'f' } else { 'b' };
        format!("{dir}{}_{}", self.joined, hex(&self.room_id))
    }

    pub fn decode(s: &str) -> Option<ListToken> {
        let forward = match s.get(..1)? {
            "f" => true,
            "b" => false,
            _ => return None,
        };
        let (joined, room) = s.get(1..)?.split_once('_')?;
        let joined: i64 = joined.parse().ok().filter(|n| *n >= 0)?;
        let room_id = unhex(room).filter(|r| !r.is_empty())?;
        Some(ListToken {
            joined,
            room_id,
            forward,
        })
    }
}

/// What `/publicRooms` was asked for.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Page size; `None` means "all" (capped at [`MAX_LIMIT`]).
    pub limit: Option<usize>,
    pub since: Option<ListToken>,
    pub search: Option<String>,
    /// `filter.room_types`: `None` for "any"; `Some(None)` entries match
    /// rooms without a type.
    pub room_types: Option<Vec<Option<String>>>,
}

/// Most rooms returned in one page, even without a limit.
pub const MAX_LIMIT: usize = 500;

/// One listed room as the database gives it.
#[derive(Debug, Clone)]
pub struct ListedRoom {
    pub room_id: String,
    pub joined: i64,
    /// `{event type: content}` of the directory's state events.
    pub state: Value,
}

/// A `PublishedRoomsChunk` entry (spec `public_rooms_chunk.yaml`).
pub fn chunk_entry(room: &ListedRoom) -> Value {
    let st = &room.state;
    let field = |ty: &str, key: &str| st[ty][key].as_str().map(str::to_owned);
    let mut out = Map::new();
    out.insert("room_id".into(), json!(room.room_id));
    out.insert("num_joined_members".into(), json!(room.joined));
    out.insert(
        "world_readable".into(),
        json!(
            field("m.room.history_visibility", "history_visibility").as_deref()
                == Some("world_readable")
        ),
    );
    out.insert(
        "guest_can_join".into(),
        json!(field("m.room.guest_access", "guest_access").as_deref() == Some("can_join")),
    );
    for (key, ty, content_key) in [
        ("name", "m.room.name", "name"),
        ("topic", "m.room.topic", "topic"),
        ("canonical_alias", "m.room.canonical_alias", "alias"),
        ("avatar_url", "m.room.avatar", "url"),
        ("join_rule", "m.room.join_rules", "join_rule"),
        ("room_type", "m.room.create", "type"),
    ] {
        if let Some(v) = field(ty, content_key).filter(|v| !v.is_empty()) {
            out.insert(key.into(), json!(v));
        }
    }
    Value::Object(out)
}

/// Published rooms that may be listed (as Synapse): joinable without an
/// invite (public or knock rules) or world-readable, and not empty.
const LISTED: &str = "
WITH pub AS (
    SELECT r.room_id,
        (SELECT count(*) FROM current_state m WHERE m.room_id = r.room_id
            AND m.type = 'm.room.member' AND m.membership = 'join') AS joined,
        (SELECT coalesce(jsonb_object_agg(s.type, e.json -> 'content'), '{}'::jsonb)
            FROM current_state s JOIN events e ON e.event_id = s.event_id
            WHERE s.room_id = r.room_id AND s.state_key = '' AND s.type IN
            ('m.room.create', 'm.room.name', 'm.room.topic', 'm.room.canonical_alias',
             'm.room.avatar', 'm.room.join_rules', 'm.room.history_visibility',
             'm.room.guest_access')) AS st
    FROM rooms r WHERE r.is_public
), listed AS (
    SELECT room_id, joined, st FROM pub
    WHERE joined > 0 AND (
        coalesce(st -> 'm.room.join_rules' ->> 'join_rule', 'public')
            IN ('public', 'knock', 'knock_restricted')
        OR st -> 'm.room.history_visibility' ->> 'history_visibility' = 'world_readable')
)";

/// One page of the listing and the tokens around it.
#[derive(Debug, Clone)]
pub struct ListPage {
    pub rooms: Vec<ListedRoom>,
    pub next_batch: Option<ListToken>,
    pub prev_batch: Option<ListToken>,
    pub total: i64,
}

/// `/publicRooms`: ordered by joined members, then room id, both
/// descending (Synapse's order, spec: "largest first recommended").
pub async fn public_rooms(db: &Pool, q: &ListQuery) -> Result<ListPage, RoomError> {
    let forward = q.since.as_ref().is_none_or(|t| t.forward);
    let bound = match (&q.since, forward) {
        (None, _) => "",
        (Some(_), true) => "AND (joined < $5 OR (joined = $5 AND room_id < $6))",
        (Some(_), false) => "AND (joined > $5 OR (joined = $5 AND room_id > $6))",
    };
    let order = if forward { "DESC" } else { "ASC" };
    let sql = format!(
        "{LISTED} SELECT room_id, joined, st FROM listed WHERE \
         ($1::text IS NULL OR strpos(lower(coalesce(st -> 'm.room.name' ->> 'name', '')), lower($1)) > 0 \
          OR strpos(lower(coalesce(st -> 'm.room.topic' ->> 'topic', '')), lower($1)) > 0 \
          OR strpos(lower(coalesce(st -> 'm.room.canonical_alias' ->> 'alias', '')), lower($1)) > 0) \
         AND (NOT $2 OR (st -> 'm.room.create' ->> 'type') = ANY($3) \
              OR ((st -> 'm.room.create' ->> 'type') IS NULL AND $4)) \
         {bound} ORDER BY joined {order}, room_id {order} LIMIT $7"
    );
    let limit = q.limit.unwrap_or(MAX_LIMIT).min(MAX_LIMIT);
    // One more than asked: whether there is a page after this one.
    let probe = i64::try_from(limit + 1).unwrap_or(i64::MAX);
    let search = q.search.clone().filter(|s| !s.is_empty());
    let types_given = q.room_types.is_some();
    let types: Vec<String> = q
        .room_types
        .iter()
        .flatten()
        .filter_map(|t| t.clone())
        .collect();
    let untyped = q.room_types.as_ref().is_some_and(|t| t.contains(&None));
    let (b_joined, b_room) = q
        .since
        .as_ref()
        .map_or((0, String::new()), |t| (t.joined, t.room_id.clone()));
    let rows = db
        .query(
            &sql,
            &[
                &search,
                &types_given,
                &types,
                &untyped,
                &b_joined,
                &b_room,
                &probe,
            ],
        )
        .await?;
    let mut rooms = rows
        .iter()
        .map(|r| {
            Ok(ListedRoom {
                room_id: r.get(0)?,
                joined: r.get(1)?,
                state: r.get(2)?,
            })
        })
        .collect::<Result<Vec<_>, RoomError>>()?;
    let more = rooms.len() > limit;
    rooms.truncate(limit);
    if !forward {
        rooms.reverse();
    }
    let total: i64 = db
        .query_one(&format!("{LISTED} SELECT count(*) FROM listed"), &[])
        .await?
        .get(0)?;
    let token = |r: &ListedRoom, forward| ListToken {
        joined: r.joined,
        room_id: r.room_id.clone(),
        forward,
    };
    let (first, last) = (rooms.first(), rooms.last());
    let since = q.since.is_some();
    // Synapse's rule: a `next_batch` when more follow (or, going back,
    // always: we came from there); a `prev_batch` when this is not the
    // first page.
    let (next_batch, prev_batch) = if forward {
        (
            last.filter(|_| more).map(|r| token(r, true)),
            first.filter(|_| since).map(|r| token(r, false)),
        )
    } else {
        (
            last.filter(|_| since).map(|r| token(r, true)),
            first.filter(|_| more).map(|r| token(r, false)),
        )
    };
    Ok(ListPage {
        rooms,
        next_batch,
        prev_batch,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for t in [
            ListToken {
                joined: 0,
                room_id: "!a:localhost".into(),
                forward: true,
            },
            ListToken {
                joined: 12345,
                room_id: "!Zz_9-ü:example.org:8448".into(),
                forward: false,
            },
        ] {
            let s = t.encode();
            assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
            assert_eq!(ListToken::decode(&s), Some(t.clone()));
            // Stable: same position, same token.
            assert_eq!(t.encode(), s);
        }
    }

    #[test]
    fn bad_tokens_are_rejected() {
        for bad in [
            "", "f", "x1_21", "f1", "f-1_21", "fa_21", "f1_2", "f1_zz", "f1_", "b1_ff",
        ] {
            assert_eq!(ListToken::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn chunk_entries() {
        let room = ListedRoom {
            room_id: "!r:x".into(),
            joined: 3,
            state: json!({
                "m.room.name": {"name": "Lobby"},
                "m.room.topic": {"topic": "talk"},
                "m.room.canonical_alias": {"alias": "#lobby:x"},
                "m.room.avatar": {"url": "mxc://x/y"},
                "m.room.join_rules": {"join_rule": "public"},
                "m.room.history_visibility": {"history_visibility": "world_readable"},
                "m.room.guest_access": {"guest_access": "can_join"},
                "m.room.create": {"type": "m.space"},
            }),
        };
        assert_eq!(
            chunk_entry(&room),
            json!({
                "room_id": "!r:x", "num_joined_members": 3, "world_readable": true,
                "guest_can_join": true, "name": "Lobby", "topic": "talk",
                "canonical_alias": "#lobby:x", "avatar_url": "mxc://x/y",
                "join_rule": "public", "room_type": "m.space",
            })
        );
        let bare = ListedRoom {
            room_id: "!r:x".into(),
            joined: 1,
            state: json!({"m.room.name": {"name": ""}, "m.room.guest_access": {"guest_access": "forbidden"}}),
        };
        assert_eq!(
            chunk_entry(&bare),
            json!({"room_id": "!r:x", "num_joined_members": 1,
                   "world_readable": false, "guest_can_join": false})
        );
    }
}
