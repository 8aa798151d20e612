//! Account data (client-server API "Client Config"), global and per room,
//! with room tags ("Room Tagging", stored as the room's `m.tag`) and the
//! fully read marker ("Read and unread markers", the room's `m.fully_read`).
//! Written on the user's shard, one row per (user, room or '', type) in
//! `account_data`, numbered by that shard's stream; read from any shard.

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, UserId};
use serde_json::{json, Value};

use crate::db::{Pool, SqlValue, Write};
use crate::mesh::{shard_for_user, MeshEndpoint};
use crate::stream::{Change, Pos, StreamToken, UserChange};

use super::{on_shard, shard_i32, EphError};

/// Types the server manages: setting them directly is refused with 405
/// (spec "Client Config", Server Behaviour: `m.fully_read`, and since
/// v1.10 `m.push_rules`, for global and room account data alike).
pub const SERVER_MANAGED: &[&str] = &["m.fully_read", "m.push_rules"];

/// Longest tag name (spec "Room Tagging": MUST NOT exceed 255 bytes).
pub const MAX_TAG_BYTES: usize = 255;

/// One account-data change, applied on the user's shard.
#[derive(Debug, Clone)]
pub enum Update {
    /// `PUT …/account_data/{type}`: replace the content.
    Replace { kind: String, content: Value },
    /// `PUT …/tags/{tag}`: set one tag of the room's `m.tag`.
    PutTag { tag: String, content: Value },
    /// `DELETE …/tags/{tag}`.
    DeleteTag { tag: String },
    /// `/read_markers` `m.fully_read`: only moves forward (as Synapse).
    FullyRead { event_id: OwnedEventId },
}

/// Checks a client-set type: not empty, not server-managed.
pub fn check_settable(kind: &str) -> Result<(), EphError> {
    if kind.is_empty() || kind.len() > 255 {
        return Err(EphError::InvalidParam("invalid account data type".into()));
    }
    if SERVER_MANAGED.contains(&kind) {
        return Err(EphError::NotAllowed(format!(
            "Cannot set {kind} through this API"
        )));
    }
    Ok(())
}

/// Checks a tag name and its content (spec: `order` is a number 0..1).
pub fn check_tag(tag: &str, content: &Value) -> Result<(), EphError> {
    if tag.is_empty() || tag.len() > MAX_TAG_BYTES {
        return Err(EphError::InvalidParam(format!(
            "tag names must be 1 to {MAX_TAG_BYTES} bytes"
        )));
    }
    if !content.is_object() {
        return Err(EphError::BadJson("tag content must be an object".into()));
    }
    match content.get("order") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(n)) if n.as_f64().is_some_and(|o| (0.0..=1.0).contains(&o)) => Ok(()),
        Some(_) => Err(EphError::InvalidParam(
            "order must be a number between 0 and 1".into(),
        )),
    }
}

const UPSERT_TAIL: &str = " ON CONFLICT (user_id, room_id, type) DO UPDATE SET ";
const POS_SET: &str =
    "stream_shard = excluded.stream_shard, stream_ordering = excluded.stream_ordering";
/// The stored `m.tag` content as an object with a `tags` object.
const TAGS_OF_OLD: &str = "(CASE WHEN jsonb_typeof(account_data.content -> 'tags') = 'object' \
     THEN account_data.content -> 'tags' ELSE '{}'::jsonb END)";
const OLD_OBJECT: &str = "(CASE WHEN jsonb_typeof(account_data.content) = 'object' \
     THEN account_data.content ELSE '{}'::jsonb END)";

fn statement(
    user: &UserId,
    room: &str,
    shard: i32,
    pos: i64,
    update: Update,
) -> (String, Vec<SqlValue>) {
    let insert = "INSERT INTO account_data (user_id, room_id, stream_shard, stream_ordering, \
                  type, content) VALUES ($1, $2, $3, $4, ";
    let mut params: Vec<SqlValue> =
        vec![user.as_str().into(), room.into(), shard.into(), pos.into()];
    let sql = match update {
        Update::Replace { kind, content } => {
            params.push(kind.into());
            params.push(SqlValue::Jsonb(content));
            format!("{insert}$5, $6){UPSERT_TAIL}content = excluded.content, {POS_SET}")
        }
        Update::PutTag { tag, content } => {
            params.push(tag.into());
            params.push(SqlValue::Jsonb(content));
            format!(
                "{insert}'m.tag', jsonb_build_object('tags', jsonb_build_object($5::text, $6::jsonb)))\
                 {UPSERT_TAIL}content = {OLD_OBJECT} || jsonb_build_object('tags', \
                 {TAGS_OF_OLD} || jsonb_build_object($5::text, $6::jsonb)), {POS_SET}"
            )
        }
        Update::DeleteTag { tag } => {
            params.push(tag.into());
            format!(
                "{insert}'m.tag', '{{\"tags\": {{}}}}'::jsonb){UPSERT_TAIL}content = {OLD_OBJECT} || jsonb_build_object('tags', \
                 {TAGS_OF_OLD} - $5::text), {POS_SET}"
            )
        }
        Update::FullyRead { event_id } => {
            params.push(event_id.as_str().into());
            format!(
                "{insert}'m.fully_read', jsonb_build_object('event_id', $5::text)){UPSERT_TAIL}\
                 content = excluded.content, {POS_SET} \
                 WHERE coalesce((SELECT e.stream_ordering FROM events e \
                                 WHERE e.event_id = account_data.content ->> 'event_id'), -1) \
                     < coalesce((SELECT e.stream_ordering FROM events e \
                                 WHERE e.event_id = $5::text), -1)"
            )
        }
    };
    (sql, params)
}

/// Applies `update` to `user`'s account data (global when `room` is
/// `None`) on the user's shard; returns after COMMIT and announcement.
pub async fn update(
    mesh: &MeshEndpoint,
    user: OwnedUserId,
    room: Option<OwnedRoomId>,
    update: Update,
) -> Result<(), EphError> {
    let target = shard_for_user(&user, mesh.n_shards());
    on_shard(mesh, target, move |state| async move {
        let ticket = state.stream.allocate();
        let pos = ticket.pos();
        let room_key = room.as_ref().map(|r| r.as_str()).unwrap_or_default();
        let (sql, params) = statement(
            &user,
            room_key,
            shard_i32(state.stream.shard())?,
            pos,
            update,
        );
        let res = state
            .writer
            .submit(Write::new().statement(sql, params))
            .await?;
        let changes = if res.first().is_some_and(|r| r.rows_affected > 0) {
            vec![Change::User {
                user_id: user,
                pos: Pos::Persisted(pos),
                what: UserChange::AccountData { room_id: room },
            }]
        } else {
            Vec::new()
        };
        ticket.publish(changes).await;
        Ok(())
    })
    .await
}

/// The content of one account-data type (`None` if never set).
pub async fn get(
    db: &Pool,
    user: &UserId,
    room: Option<&OwnedRoomId>,
    kind: &str,
) -> Result<Option<Value>, EphError> {
    let room_key = room.map(|r| r.as_str()).unwrap_or_default();
    let row = db
        .query_opt(
            "SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3",
            &[&user.as_str(), &room_key, &kind],
        )
        .await?;
    Ok(row.map(|r| r.get::<Value>(0)).transpose()?)
}

/// The room's tags (`{}` when none), as `GET …/tags` answers them.
pub async fn tags(db: &Pool, user: &UserId, room: &OwnedRoomId) -> Result<Value, EphError> {
    Ok(get(db, user, Some(room), "m.tag")
        .await?
        .and_then(|c| c.get("tags").filter(|t| t.is_object()).cloned())
        .unwrap_or_else(|| json!({})))
}

/// Account data for `/sync`: what changed after `since` (everything when
/// `None`) up to `current`, as `(global events, [(room, events)])`.
pub async fn changed_between(
    db: &Pool,
    user: &UserId,
    since: Option<&StreamToken>,
    current: &StreamToken,
    n_shards: usize,
) -> Result<AccountDataSync, EphError> {
    let since = since
        .map(|t| t.persisted_vec(n_shards))
        .unwrap_or_else(|| vec![0; n_shards]);
    let upto = current.persisted_vec(n_shards);
    let rows = db
        .query(
            "SELECT room_id, type, content FROM account_data WHERE user_id = $1 \
             AND stream_ordering > coalesce(($2::bigint[])[stream_shard + 1], 0) \
             AND stream_ordering <= coalesce(($3::bigint[])[stream_shard + 1], 0) \
             ORDER BY room_id, type",
            &[&user.as_str(), &since, &upto],
        )
        .await?;
    let mut out = AccountDataSync::default();
    for row in rows {
        let room: String = row.get(0)?;
        let kind: String = row.get(1)?;
        let content: Value = row.get(2)?;
        let ev = json!({"type": kind, "content": content});
        if room.is_empty() {
            out.global.push(ev);
        } else if let Ok(r) = OwnedRoomId::try_from(room) {
            match out.rooms.last_mut() {
                Some((last, evs)) if *last == r => evs.push(ev),
                _ => out.rooms.push((r, vec![ev])),
            }
        }
    }
    Ok(out)
}

/// Account data events for a sync response.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AccountDataSync {
    /// `account_data.events`.
    pub global: Vec<Value>,
    /// `rooms.*.{room}.account_data.events`, per room.
    pub rooms: Vec<(OwnedRoomId, Vec<Value>)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_managed_types_are_refused() {
        assert!(matches!(
            check_settable("m.fully_read"),
            Err(EphError::NotAllowed(_))
        ));
        assert!(matches!(
            check_settable("m.push_rules"),
            Err(EphError::NotAllowed(_))
        ));
        assert!(check_settable("org.example.x").is_ok());
        assert!(check_settable("").is_err());
    }

    #[test]
    fn tag_checks() {
        assert!(check_tag("u.work", &json!({"order": 0.5})).is_ok());
        assert!(check_tag("u.work", &json!({})).is_ok());
        assert!(check_tag("u.work", &json!({"order": 1})).is_ok());
        assert!(check_tag("u.work", &json!({"order": 1.5})).is_err());
        assert!(check_tag("u.work", &json!({"order": "0.5"})).is_err());
        assert!(check_tag("u.work", &json!([1])).is_err());
        assert!(check_tag(&"x".repeat(256), &json!({})).is_err());
        assert!(check_tag("", &json!({})).is_err());
    }
}
