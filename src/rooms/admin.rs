//! Room reads of the admin API (Synapse's `/_synapse/admin/v1/rooms`):
//! every room this server knows, with the facts an operator sorts and
//! searches by, one room's details, its joined members. Reads only; the
//! writes (deletion, purges) are `rooms::purge`.

use serde_json::{json, Map, Value};

use super::RoomError;
use crate::db::{Pool, Row};

/// Sort keys of `GET /v1/rooms?order_by=` (Synapse's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomOrder {
    Name,
    CanonicalAlias,
    JoinedMembers,
    JoinedLocalMembers,
    Version,
    Creator,
    Encryption,
    Federatable,
    Public,
    JoinRules,
    GuestAccess,
    HistoryVisibility,
    StateEvents,
}

impl RoomOrder {
    pub fn parse(s: &str) -> Option<RoomOrder> {
        use RoomOrder::*;
        Some(match s {
            "name" | "alphabetical" => Name,
            "canonical_alias" => CanonicalAlias,
            "joined_members" | "size" => JoinedMembers,
            "joined_local_members" => JoinedLocalMembers,
            "version" => Version,
            "creator" => Creator,
            "encryption" => Encryption,
            "federatable" => Federatable,
            "public" => Public,
            "join_rules" => JoinRules,
            "guest_access" => GuestAccess,
            "history_visibility" => HistoryVisibility,
            "state_events" => StateEvents,
            _ => return None,
        })
    }

    /// A fixed column of [`ROOMS`]: never text from the request.
    fn column(self) -> &'static str {
        use RoomOrder::*;
        match self {
            Name => "name",
            CanonicalAlias => "canonical_alias",
            JoinedMembers => "joined_members",
            JoinedLocalMembers => "joined_local_members",
            Version => "room_version",
            Creator => "creator",
            Encryption => "encryption",
            Federatable => "federatable",
            Public => "is_public",
            JoinRules => "join_rules",
            GuestAccess => "guest_access",
            HistoryVisibility => "history_visibility",
            StateEvents => "state_events",
        }
    }

    /// Synapse sorts sizes and counts largest first unless `dir=b`.
    fn largest_first(self) -> bool {
        matches!(
            self,
            RoomOrder::JoinedMembers | RoomOrder::JoinedLocalMembers | RoomOrder::StateEvents
        )
    }
}

/// Every room with its listing facts; `$1` is `:server_name` (what ends
/// a local user id).
const ROOMS: &str = "
WITH base AS (
    SELECT r.room_id, r.room_version, r.creator, r.is_public,
        (SELECT count(*) FROM current_state s WHERE s.room_id = r.room_id) AS state_events,
        (SELECT count(*) FROM current_state m WHERE m.room_id = r.room_id
            AND m.type = 'm.room.member' AND m.membership = 'join') AS joined_members,
        (SELECT count(*) FROM current_state m WHERE m.room_id = r.room_id
            AND m.type = 'm.room.member' AND m.membership = 'join'
            AND right(m.state_key, length($1)) = $1) AS joined_local_members,
        (SELECT coalesce(jsonb_object_agg(s.type, e.json -> 'content'), '{}'::jsonb)
            FROM current_state s JOIN events e ON e.event_id = s.event_id
            WHERE s.room_id = r.room_id AND s.state_key = '' AND s.type IN
            ('m.room.create', 'm.room.name', 'm.room.topic', 'm.room.canonical_alias',
             'm.room.avatar', 'm.room.join_rules', 'm.room.history_visibility',
             'm.room.guest_access', 'm.room.encryption', 'm.room.tombstone')) AS st
    FROM rooms r
), listed AS (
    SELECT room_id, room_version, creator, is_public, state_events, joined_members,
        joined_local_members, st,
        st -> 'm.room.name' ->> 'name' AS name,
        st -> 'm.room.canonical_alias' ->> 'alias' AS canonical_alias,
        st -> 'm.room.encryption' ->> 'algorithm' AS encryption,
        coalesce((st -> 'm.room.create' ->> 'm.federate')::boolean, true) AS federatable,
        st -> 'm.room.join_rules' ->> 'join_rule' AS join_rules,
        st -> 'm.room.guest_access' ->> 'guest_access' AS guest_access,
        st -> 'm.room.history_visibility' ->> 'history_visibility' AS history_visibility
    FROM base
)";

const COLS: &str = "room_id, room_version, creator, is_public, state_events, joined_members, \
     joined_local_members, st, federatable";

/// One room as the admin listing shows it (Synapse's keys).
fn listing_of(r: &Row) -> Result<(Map<String, Value>, Value), RoomError> {
    let st: Value = r.get(7)?;
    let s = |ty: &str, key: &str| match st[ty][key].as_str() {
        Some(v) => json!(v),
        None => Value::Null,
    };
    let mut m = Map::new();
    m.insert("room_id".into(), json!(r.get::<String>(0)?));
    m.insert("name".into(), s("m.room.name", "name"));
    m.insert(
        "canonical_alias".into(),
        s("m.room.canonical_alias", "alias"),
    );
    m.insert("joined_members".into(), json!(r.get::<i64>(5)?));
    m.insert("joined_local_members".into(), json!(r.get::<i64>(6)?));
    m.insert("version".into(), json!(r.get::<String>(1)?));
    m.insert("creator".into(), json!(r.get::<String>(2)?));
    m.insert("encryption".into(), s("m.room.encryption", "algorithm"));
    m.insert("federatable".into(), json!(r.get::<bool>(8)?));
    m.insert("public".into(), json!(r.get::<bool>(3)?));
    m.insert("join_rules".into(), s("m.room.join_rules", "join_rule"));
    m.insert(
        "guest_access".into(),
        s("m.room.guest_access", "guest_access"),
    );
    m.insert(
        "history_visibility".into(),
        s("m.room.history_visibility", "history_visibility"),
    );
    m.insert("state_events".into(), json!(r.get::<i64>(4)?));
    m.insert("room_type".into(), s("m.room.create", "type"));
    Ok((m, st))
}

/// `GET /v1/rooms`' parameters.
#[derive(Debug, Clone)]
pub struct RoomQuery {
    pub from: i64,
    pub limit: i64,
    pub order_by: RoomOrder,
    /// `dir=b`.
    pub backwards: bool,
    /// Name, canonical alias or room id contains (case-insensitive).
    pub search_term: Option<String>,
}

/// One page of rooms and how many match.
pub async fn list_rooms(
    db: &Pool,
    server_name: &str,
    q: &RoomQuery,
) -> Result<(Vec<Value>, i64), RoomError> {
    let suffix = format!(":{server_name}");
    let filter = "($2::text IS NULL OR strpos(lower(coalesce(name, '')), lower($2)) > 0 \
         OR strpos(lower(coalesce(canonical_alias, '')), lower($2)) > 0 \
         OR strpos(lower(room_id), lower($2)) > 0)";
    let search = q.search_term.clone().filter(|s| !s.is_empty());
    let descending = q.order_by.largest_first() != q.backwards;
    let dir = if descending { "DESC" } else { "ASC" };
    let sql = format!(
        "{ROOMS} SELECT {COLS} FROM listed WHERE {filter} \
         ORDER BY {} {dir} NULLS LAST, room_id ASC LIMIT $3 OFFSET $4",
        q.order_by.column()
    );
    let rows = db
        .query(&sql, &[&suffix, &search, &q.limit, &q.from])
        .await?;
    let rooms = rows
        .iter()
        .map(|r| listing_of(r).map(|(m, _)| Value::Object(m)))
        .collect::<Result<Vec<_>, _>>()?;
    let total: i64 = db
        .query_one(
            &format!("{ROOMS} SELECT count(*) FROM listed WHERE {filter}"),
            &[&suffix, &search],
        )
        .await?
        .get(0)?;
    Ok((rooms, total))
}

/// `GET /v1/rooms/{roomId}`: the listing plus avatar, topic, local
/// devices, tombstone. `None`: unknown room.
pub async fn room_details(
    db: &Pool,
    server_name: &str,
    room_id: &str,
) -> Result<Option<Value>, RoomError> {
    let suffix = format!(":{server_name}");
    let row = db
        .query_opt(
            &format!("{ROOMS} SELECT {COLS} FROM listed WHERE room_id = $2"),
            &[&suffix, &room_id],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let (mut m, st) = listing_of(&row)?;
    let s = |ty: &str, key: &str| match st[ty][key].as_str() {
        Some(v) => json!(v),
        None => Value::Null,
    };
    m.insert("avatar".into(), s("m.room.avatar", "url"));
    m.insert("topic".into(), s("m.room.topic", "topic"));
    let devices: i64 = db
        .query_one(
            "SELECT count(*) FROM devices d JOIN current_state m ON m.state_key = d.user_id \
             WHERE m.room_id = $1 AND m.type = 'm.room.member' AND m.membership = 'join'",
            &[&room_id],
        )
        .await?
        .get(0)?;
    m.insert("joined_local_devices".into(), json!(devices));
    // Forgotten: no local member left, and one forgot it.
    let forgotten: bool = db
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM room_forgotten WHERE room_id = $1)",
            &[&room_id],
        )
        .await?
        .get(0)?;
    let local_joined = m["joined_local_members"].as_i64().unwrap_or(0);
    m.insert("forgotten".into(), json!(forgotten && local_joined == 0));
    let tombstone = &st["m.room.tombstone"];
    m.insert("tombstoned".into(), json!(tombstone.is_object()));
    m.insert(
        "replacement_room".into(),
        s("m.room.tombstone", "replacement_room"),
    );
    Ok(Some(Value::Object(m)))
}

/// Whether this server knows the room.
pub async fn exists(db: &Pool, room_id: &str) -> Result<bool, RoomError> {
    Ok(db
        .query_opt("SELECT 1::int8 FROM rooms WHERE room_id = $1", &[&room_id])
        .await?
        .is_some())
}

/// Joined members (local and remote), sorted.
pub async fn joined_members(db: &Pool, room_id: &str) -> Result<Vec<String>, RoomError> {
    let rows = db
        .query(
            "SELECT state_key FROM current_state WHERE room_id = $1 \
             AND type = 'm.room.member' AND membership = 'join' ORDER BY state_key",
            &[&room_id],
        )
        .await?;
    rows.iter()
        .map(|r| r.get::<String>(0).map_err(RoomError::from))
        .collect()
}

/// Local users joined to or invited into the room: who a deletion makes
/// leave.
pub async fn local_members(
    db: &Pool,
    server_name: &str,
    room_id: &str,
) -> Result<Vec<String>, RoomError> {
    let suffix = format!(":{server_name}");
    let rows = db
        .query(
            "SELECT state_key FROM current_state WHERE room_id = $1 \
             AND type = 'm.room.member' AND membership IN ('join', 'invite', 'knock') \
             AND right(state_key, length($2)) = $2 ORDER BY state_key",
            &[&room_id, &suffix],
        )
        .await?;
    rows.iter()
        .map(|r| r.get::<String>(0).map_err(RoomError::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_keys() {
        assert_eq!(RoomOrder::parse("name"), Some(RoomOrder::Name));
        assert_eq!(RoomOrder::parse("size"), Some(RoomOrder::JoinedMembers));
        assert_eq!(RoomOrder::parse("x; --"), None);
        assert!(RoomOrder::StateEvents.largest_first());
        assert!(!RoomOrder::Name.largest_first());
    }
}
