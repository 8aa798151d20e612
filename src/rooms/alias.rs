//! Room aliases (client-server API "Room aliases"): `#localpart:server`
//! names mapped to room ids in the `room_aliases` table.
//!
//! Aliases are global data, not room data: they are read and written
//! through the calling shard's pool, with no room lock and no mesh hop.
//! The table's primary key is what keeps an alias unique when two shards
//! race to create it.

use ruma::{OwnedRoomAliasId, OwnedRoomId, RoomAliasId};
use serde_json::{Map, Value};

use crate::db::error::UNIQUE_VIOLATION;
use crate::db::Pool;

use super::RoomError;

/// Why a string is not an alias we can host (mapped to Matrix errors by
/// [`AliasError::into_room_error`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AliasError {
    /// Not `#localpart:server` (spec appendices "Room aliases").
    #[error("Invalid room alias {0:?}")]
    Syntax(String),
    /// Valid, but on another server: we cannot create or delete it.
    #[error("Room alias must be local")]
    NotLocal,
}

impl AliasError {
    pub fn into_room_error(self) -> RoomError {
        match self {
            AliasError::Syntax(_) => RoomError::InvalidParam(self.to_string()),
            // Synapse: 400 M_UNKNOWN "Room alias must be local".
            AliasError::NotLocal => RoomError::BadRequest(self.to_string()),
        }
    }
}

/// Longest alias accepted (spec appendices: identifiers are at most 255
/// bytes including the sigil and domain).
pub const MAX_ALIAS_LEN: usize = 255;

/// Checks a local part as `createRoom`'s `room_alias_name` gives it (as
/// Synapse: no whitespace, no `:`, not empty).
pub fn check_localpart(localpart: &str) -> Result<(), AliasError> {
    if localpart.is_empty()
        || localpart.contains(':')
        || localpart
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(AliasError::Syntax(format!("#{localpart}")));
    }
    Ok(())
}

/// Parses an alias (any server).
pub fn parse(raw: &str) -> Result<OwnedRoomAliasId, AliasError> {
    let bad = || AliasError::Syntax(raw.to_owned());
    if raw.len() > MAX_ALIAS_LEN {
        return Err(bad());
    }
    let alias = RoomAliasId::parse(raw).map_err(|_| bad())?;
    check_localpart(alias.alias()).map_err(|_| bad())?;
    Ok(alias)
}

/// Parses an alias that must be on `server_name`.
pub fn parse_local(raw: &str, server_name: &str) -> Result<OwnedRoomAliasId, AliasError> {
    let alias = parse(raw)?;
    if alias.server_name().as_str() != server_name {
        return Err(AliasError::NotLocal);
    }
    Ok(alias)
}

/// `#localpart:server_name`, checked.
pub fn local_alias(localpart: &str, server_name: &str) -> Result<OwnedRoomAliasId, AliasError> {
    check_localpart(localpart)?;
    parse(&format!("#{localpart}:{server_name}"))
}

/// One stored alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasEntry {
    pub room_id: OwnedRoomId,
    pub creator: String,
}

/// Inserts `alias → room_id`; `Ok(false)` if the alias is taken.
pub async fn insert(
    db: &Pool,
    alias: &RoomAliasId,
    room_id: &OwnedRoomId,
    creator: &str,
) -> Result<bool, RoomError> {
    let now = crate::primitives::unix_ms_i64();
    match db
        .execute(
            "INSERT INTO room_aliases (room_alias, room_id, creator, created_ts) \
             VALUES ($1, $2, $3, $4)",
            &[&alias.as_str(), &room_id.as_str(), &creator, &now],
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some(UNIQUE_VIOLATION) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The room an alias points to (local aliases only: no federation yet).
pub async fn lookup(db: &Pool, alias: &RoomAliasId) -> Result<Option<AliasEntry>, RoomError> {
    let Some(row) = db
        .query_opt(
            "SELECT room_id, creator FROM room_aliases WHERE room_alias = $1",
            &[&alias.as_str()],
        )
        .await?
    else {
        return Ok(None);
    };
    let room_id: String = row.get(0)?;
    let room_id = OwnedRoomId::try_from(room_id)
        .map_err(|e| RoomError::Internal(format!("stored alias target: {e}")))?;
    Ok(Some(AliasEntry {
        room_id,
        creator: row.get(1)?,
    }))
}

/// Removes an alias if it still points to `room_id`; whether it did.
pub async fn delete(
    db: &Pool,
    alias: &RoomAliasId,
    room_id: &OwnedRoomId,
) -> Result<bool, RoomError> {
    let n = db
        .execute(
            "DELETE FROM room_aliases WHERE room_alias = $1 AND room_id = $2",
            &[&alias.as_str(), &room_id.as_str()],
        )
        .await?;
    Ok(n > 0)
}

/// Every local alias of a room, sorted.
pub async fn for_room(db: &Pool, room_id: &OwnedRoomId) -> Result<Vec<String>, RoomError> {
    let rows = db
        .query(
            "SELECT room_alias FROM room_aliases WHERE room_id = $1 ORDER BY room_alias",
            &[&room_id.as_str()],
        )
        .await?;
    rows.iter()
        .map(|r| r.get::<String>(0).map_err(RoomError::from))
        .collect()
}

/// The aliases an `m.room.canonical_alias` content names: `alias` and
/// `alt_aliases`. Wrong types or bad syntax are 400 `M_INVALID_PARAM`
/// (spec: `PUT /rooms/{roomId}/state/{eventType}/{stateKey}` errors).
pub fn canonical_aliases(content: &Map<String, Value>) -> Result<Vec<String>, RoomError> {
    let invalid = |m: String| RoomError::InvalidParam(m);
    let mut out = Vec::new();
    match content.get("alias") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            parse(s).map_err(|e| invalid(e.to_string()))?;
            out.push(s.clone());
        }
        Some(_) => return Err(invalid("'alias' must be a string".into())),
    }
    match content.get("alt_aliases") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for v in a {
                let Value::String(s) = v else {
                    return Err(invalid("'alt_aliases' must hold strings".into()));
                };
                parse(s).map_err(|e| invalid(e.to_string()))?;
                out.push(s.clone());
            }
        }
        Some(_) => return Err(invalid("'alt_aliases' must be a list".into())),
    }
    Ok(out)
}

/// The room's current `m.room.canonical_alias` content, from the database.
pub async fn current_canonical(
    db: &Pool,
    room_id: &OwnedRoomId,
) -> Result<Option<Map<String, Value>>, RoomError> {
    let row = db
        .query_opt(
            "SELECT e.json -> 'content' FROM current_state s \
             JOIN events e ON e.event_id = s.event_id \
             WHERE s.room_id = $1 AND s.type = 'm.room.canonical_alias' AND s.state_key = ''",
            &[&room_id.as_str()],
        )
        .await?;
    Ok(row
        .map(|r| r.get::<Value>(0))
        .transpose()?
        .and_then(|v| v.as_object().cloned()))
}

/// Spec `m.room.canonical_alias`: the aliases an event *adds* (compared to
/// the previous content, as Synapse checks) must point to `room_id`, else
/// 400 `M_BAD_ALIAS`. Aliases on other servers cannot be resolved without
/// federation, so they count as not pointing here.
pub async fn check_canonical(
    db: &Pool,
    room_id: &OwnedRoomId,
    new: &Map<String, Value>,
    previous: Option<&Map<String, Value>>,
) -> Result<(), RoomError> {
    let wanted = canonical_aliases(new)?;
    // Previous content was accepted once; a malformed old one adds nothing.
    let before = previous
        .and_then(|p| canonical_aliases(p).ok())
        .unwrap_or_default();
    for a in wanted.iter().filter(|a| !before.contains(a)) {
        let points_here = match parse(a) {
            Ok(alias) => lookup(db, &alias)
                .await?
                .is_some_and(|e| &e.room_id == room_id),
            Err(_) => false,
        };
        if !points_here {
            return Err(RoomError::BadAlias(format!(
                "Room alias {a} does not point to the room"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_aliases() {
        assert!(parse("#room:localhost").is_ok());
        assert!(parse("#room:example.org:8448").is_ok());
        for bad in [
            "room:localhost",
            "#room",
            "#:localhost",
            "#ro om:localhost",
            "#room:bad host",
            "!room:localhost",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let long = format!("#{}:localhost", "a".repeat(250));
        assert!(parse(&long).is_err());
    }

    #[test]
    fn local_aliases_only() {
        assert!(parse_local("#a:localhost", "localhost").is_ok());
        assert_eq!(
            parse_local("#a:elsewhere.org", "localhost"),
            Err(AliasError::NotLocal)
        );
        assert!(matches!(
            parse_local("#a b:localhost", "localhost"),
            Err(AliasError::Syntax(_))
        ));
    }

    #[test]
    fn localparts_from_create_room() {
        assert_eq!(
            local_alias("lobby", "localhost").unwrap().as_str(),
            "#lobby:localhost"
        );
        for bad in ["", "a:b", "a b", "a\tb", "a\nb"] {
            assert!(local_alias(bad, "localhost").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn canonical_alias_content() {
        let c = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(
            canonical_aliases(&c(json!({"alias": "#a:x", "alt_aliases": ["#b:x"]}))).unwrap(),
            vec!["#a:x".to_owned(), "#b:x".to_owned()]
        );
        assert!(canonical_aliases(&c(json!({}))).unwrap().is_empty());
        assert!(canonical_aliases(&c(json!({"alias": null})))
            .unwrap()
            .is_empty());
        for bad in [
            json!({"alias": 3}),
            json!({"alias": "nope"}),
            json!({"alt_aliases": "#a:x"}),
            json!({"alt_aliases": [1]}),
            json!({"alt_aliases": ["bad"]}),
        ] {
            assert!(
                matches!(
                    canonical_aliases(&c(bad.clone())),
                    Err(RoomError::InvalidParam(_))
                ),
                "{bad}"
            );
        }
    }
}
